//! Target `connection`: a client `Connection` fed an arbitrary sequence of transport events,
//! server packets, application commands and time steps.
//!
//! Input: a setup byte, a little-endian `u16` giving the length of the op region, the op
//! region (a sequence of [`Op`]s decoded with `arbitrary`), then a byte pool that
//! [`Op::Raw`] and [`Body::Pool`] take server bytes and payloads from (so real transcripts can
//! be seeds).
//!
//! Checks after every op: no panic; the client only transmits valid MQTT, and only with a
//! transport open; every request gets at most one outcome, only accepted requests get one, and
//! after `close()` every accepted request has exactly one; QoS 1 packet ids in use are
//! non-zero and unique; `stats()` stays within the configured bounds; after a timeout at `now`
//! the next deadline is later than `now` (no busy loop).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use gateway_proto::payload::{
    AttributeResult, Claim, DisconnectNotice, GatewayAttributeRequest, GatewayAttributeResponse,
    GatewayAttributeUpdate, GatewayNotification, GatewayRpcRequest, GatewayTelemetry, Payload,
    TelemetryEntry, TelemetryMetadata,
};
use gateway_proto::topic::{self, IdTopicKind, TopicFamily};
use gateway_proto::wire::{self, Packet, ProtocolVersion, QoS};
use gateway_proto::{
    AttributeScope, Command, Config, Connection, Credentials, DeviceCommand, Event, GatewayCommand,
    Input, RequestId, Role, State,
};
use serde_json::{json, Map, Value};

use crate::script::{server_bytes, Server};

/// Sub-device names (more than `MAX_SUB_DEVICES`, with JSON and MQTT special characters).
pub const DEVICES: [&str; 6] = ["A", "B", "C", "say \"hi\"", "floor/1", "+"];
const MAX_SUB_DEVICES: usize = 4;
const MAX_PENDING: usize = 4;
const SMALL_BUFFER: usize = 4_000;

/// What the fuzzer does next.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Open the transport the client asked for (no-op if none).
    Open,
    /// Report the asked-for transport as failed, or the open one as closed.
    Drop,
    /// Let this many 100 ms pass, then deliver a timeout.
    Advance(u16),
    /// Jump to the client's next deadline and fire it.
    Fire,
    /// A spurious timeout at the current time.
    Timeout,
    /// CONNACK.
    ConnAck {
        /// Return / reason code.
        code: u8,
        /// Session present.
        session_present: bool,
    },
    /// PUBACK for one of the client's unacknowledged packet ids (or a stale one).
    PubAck {
        /// Which id (modulo the ids awaiting one; past them: id `pick`).
        pick: u8,
        /// Reason code (MQTT 5).
        code: u8,
        /// Send it twice.
        duplicate: bool,
    },
    /// SUBACK for the last SUBSCRIBE (or a wrong id).
    SubAck {
        /// Granted codes.
        codes: Vec<u8>,
        /// Use a packet id nobody asked for.
        wrong_id: bool,
    },
    /// A server PUBLISH.
    Publish {
        /// Topic selector (see [`crate::payload::topic_for`]).
        topic: u8,
        /// Id for id topics.
        id: u8,
        /// The payload.
        body: Body,
        /// QoS 1 (else 0).
        qos1: bool,
        /// Packet id (0 is ThingsBoard's wrap-around).
        pkid: u16,
    },
    /// Server DISCONNECT with a reason code.
    Disconnect(u8),
    /// PINGRESP.
    PingResp,
    /// Raw server bytes from the pool.
    Raw(u8),
    /// An application command.
    Cmd(Cmd),
    /// `Connection::close`.
    Close,
}

/// A server payload.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Bytes from the pool.
    Pool(u8),
    /// A correct answer to a request the client sent (attribute request or client RPC).
    Answer(u8),
    /// A gateway RPC to a sub-device.
    GatewayRpc {
        /// Device index.
        device: u8,
        /// RPC id.
        id: u8,
    },
    /// A shared attribute update for a sub-device.
    Update(u8),
    /// The v5 disconnect notice for a sub-device.
    Notice {
        /// Device index.
        device: u8,
        /// Reason.
        reason: u8,
    },
    /// A delete (even) or rename (odd) notification.
    Notification {
        /// Device index.
        device: u8,
        /// Kind and rename target.
        kind: u8,
    },
}

/// An application command.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// A raw publish of this many bytes.
    Publish {
        /// QoS 1 (else 0).
        qos1: bool,
        /// Payload length.
        len: u16,
    },
    /// Connect a sub-device.
    Connect(u8),
    /// Disconnect a sub-device.
    Disconnect(u8),
    /// Sub-device telemetry.
    Telemetry(u8),
    /// Telemetry of several sub-devices (bit mask).
    Batch(u8),
    /// Sub-device attributes.
    Attributes(u8),
    /// Sub-device claim.
    Claim(u8),
    /// Sub-device attribute request.
    RequestAttributes {
        /// Device index.
        device: u8,
        /// Shared scope.
        shared: bool,
    },
    /// Reply to a received server RPC.
    RpcReply(u8),
    /// Reply to an RPC that was never received.
    BogusReply(u8),
    /// Own telemetry.
    DeviceTelemetry,
    /// Own attributes.
    DeviceAttributes,
    /// Own attribute request.
    DeviceRequestAttributes,
    /// Client-side RPC.
    DeviceRpc,
}

/// Decodes a whole input: setup byte, ops, pool.
pub fn parse(data: &[u8]) -> Option<(u8, Vec<Op>, &[u8])> {
    let (&setup, rest) = data.split_first()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (ops, pool) = rest.split_at(len);
    let mut u = Unstructured::new(ops);
    let mut list = Vec::new();
    while !u.is_empty() && list.len() < 512 {
        match Op::arbitrary(&mut u) {
            Ok(op) => list.push(op),
            Err(_) => break,
        }
    }
    Some((setup, list, pool))
}

/// The configuration a setup byte selects.
pub fn config(setup: u8) -> Config {
    let mut c = Config::new(Credentials::AccessToken("GW_TOKEN".into()));
    c.protocol = if setup & 1 == 0 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    if setup & 2 != 0 {
        c.role = Role::Device;
    }
    if setup & 4 != 0 {
        c.telemetry_qos = QoS::AtMostOnce;
    }
    c.max_inflight = [1, 2, 4, 100][usize::from((setup >> 3) & 3)];
    if setup & 32 != 0 {
        c.max_buffered_bytes = SMALL_BUFFER;
    }
    if setup & 64 != 0 {
        c.publish_timeout = None;
        c.max_publish_attempts = 2;
    }
    c.keep_alive = if setup & 128 != 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    c.max_sub_devices = MAX_SUB_DEVICES;
    c.max_pending_requests = MAX_PENDING;
    c.max_pending_server_rpcs = MAX_PENDING;
    c.sub_device_keepalive = Some(Duration::from_secs(60));
    c.reconnect.seed = u64::from(setup);
    c
}

/// The application command an op stands for; `n` numbers the values, `rpcs` are the server
/// RPCs received so far. `None`: nothing to do (no RPC to reply to).
pub fn command_for(cmd: &Cmd, n: usize, rpcs: &[(Option<String>, u64)]) -> Option<Command> {
    let command = match *cmd {
        Cmd::Publish { qos1, len } => Command::Publish {
            topic: "v1/devices/me/telemetry".into(),
            payload: Bytes::from(vec![b'x'; usize::from(len)]),
            qos: if qos1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
        },
        Cmd::Connect(d) => Command::connect_device(device(d), Some("thermo")),
        Cmd::Disconnect(d) => Command::disconnect_device(device(d)),
        Cmd::Telemetry(d) => Command::device_telemetry(device(d), values(n)),
        Cmd::Batch(mask) => {
            let mut devices = std::collections::BTreeMap::new();
            for (i, name) in DEVICES.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    // With gateway latency metadata: the emulator feeds its gateway metrics.
                    let mut entry = TelemetryEntry::now(values(n));
                    entry.metadata = Some(TelemetryMetadata {
                        connector: format!("connector {i}"),
                        received_ts: n as i64,
                        published_ts: n as i64 + 5,
                    });
                    devices.insert((*name).to_owned(), vec![entry]);
                }
            }
            Command::Gateway(GatewayCommand::TelemetryBatch(GatewayTelemetry { devices }))
        }
        Cmd::Attributes(d) => Command::device_attributes(device(d), values(n)),
        Cmd::Claim(d) => Command::Gateway(GatewayCommand::Claim {
            device: device(d),
            claim: Claim {
                secret_key: Some("s".into()),
                duration_ms: Some(1000),
            },
        }),
        Cmd::RequestAttributes { device: d, shared } => {
            let scope = if shared {
                AttributeScope::Shared
            } else {
                AttributeScope::Client
            };
            Command::request_device_attributes(device(d), scope, ["k"])
        }
        Cmd::RpcReply(pick) => {
            if rpcs.is_empty() {
                return None;
            }
            let (dev, id) = rpcs[usize::from(pick) % rpcs.len()].clone();
            match dev {
                Some(d) => Command::device_rpc_reply(d, id, json!({"ok": n})),
                None => Command::rpc_reply(id, json!({"ok": n})),
            }
        }
        Cmd::BogusReply(d) => Command::device_rpc_reply(device(d), 1000 + u64::from(d), json!(1)),
        Cmd::DeviceTelemetry => Command::telemetry(values(n)),
        Cmd::DeviceAttributes => Command::attributes(values(n)),
        Cmd::DeviceRequestAttributes => Command::request_attributes(["c"], ["s"]),
        Cmd::DeviceRpc => Command::Device(DeviceCommand::Rpc {
            method: "getTime".into(),
            params: json!({}),
        }),
    };
    Some(command)
}

struct Pool<'a>(&'a [u8]);

impl<'a> Pool<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

struct Fuzz<'a> {
    conn: Connection,
    server: Server,
    now: Instant,
    pool: Pool<'a>,
    config: Config,
    accepted: BTreeSet<RequestId>,
    closed: bool,
    /// Server RPCs the client reported: (device, id).
    rpcs: Vec<(Option<String>, u64)>,
    /// Answers the server could give: (topic, payload).
    answers: Vec<(String, Vec<u8>)>,
    seen_published: usize,
}

fn values(tag: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("v".into(), json!(tag));
    m
}

fn device(i: u8) -> String {
    DEVICES[usize::from(i) % DEVICES.len()].to_owned()
}

impl Fuzz<'_> {
    fn feed(&mut self, bytes: &[u8]) {
        if self.server.open {
            self.conn.handle_input(self.now, Input::Bytes(bytes));
        }
    }

    fn packet(&mut self, p: &Packet) {
        let bytes = server_bytes(p, self.server.version);
        self.feed(&bytes);
    }

    fn command(&mut self, cmd: Cmd) {
        let Some(command) = command_for(&cmd, self.accepted.len(), &self.rpcs) else {
            return;
        };
        if let Ok(id) = self.conn.command(self.now, command) {
            assert!(!self.closed, "command accepted after close");
            assert!(self.accepted.insert(id), "request id {id} reused");
        }
    }

    fn body(&mut self, body: Body, topic: &str) -> Vec<u8> {
        match body {
            Body::Pool(n) => self.pool.take(usize::from(n)).to_vec(),
            Body::Answer(pick) => {
                if self.answers.is_empty() {
                    return b"{}".to_vec();
                }
                let (_, payload) = self.answers[usize::from(pick) % self.answers.len()].clone();
                payload
            }
            Body::GatewayRpc { device: d, id } => GatewayRpcRequest {
                device: device(d),
                id: u64::from(id),
                method: "m".into(),
                params: json!({"topic": topic}),
            }
            .to_vec(),
            Body::Update(d) => {
                let u = gateway_proto::payload::AttributeUpdate {
                    values: values(1),
                    deleted: vec!["old".into()],
                };
                GatewayAttributeUpdate {
                    device: device(d),
                    update: u,
                }
                .to_vec()
            }
            Body::Notice { device: d, reason } => DisconnectNotice {
                device: device(d),
                reason,
            }
            .to_vec(),
            Body::Notification { device: d, kind } => {
                let n = if kind % 2 == 0 {
                    GatewayNotification::DeviceDeleted { device: device(d) }
                } else {
                    GatewayNotification::DeviceRenamed {
                        old_name: device(d),
                        new_name: device(kind / 2),
                    }
                };
                n.to_rpc().to_vec()
            }
        }
    }

    /// Topic and payload of a correct answer to what the client just published.
    fn learn_answers(&mut self) {
        let published = &self.server.published[self.seen_published..];
        for (t, payload) in published {
            if t == topic::GATEWAY_ATTRIBUTES_REQUEST {
                if let Ok(r) = GatewayAttributeRequest::parse(payload) {
                    let mut found = Map::new();
                    found.insert("k".into(), json!(1));
                    let mut resp = GatewayAttributeResponse::for_request(&r, found);
                    if r.id % 3 == 0 {
                        resp.result = AttributeResult::NotFound;
                    }
                    self.answers
                        .push((topic::GATEWAY_ATTRIBUTES_RESPONSE.into(), resp.to_vec()));
                }
            } else if let Some(id) = t.strip_prefix(topic::DEVICE_ATTRIBUTES_REQUEST_PREFIX) {
                if let Ok(id) = id.parse::<u64>() {
                    let topic =
                        topic::topic_with_id(IdTopicKind::AttributeResponse, TopicFamily::V1, id);
                    self.answers
                        .push((topic, br#"{"client":{"c":1},"shared":{"s":2}}"#.to_vec()));
                }
            } else if let Some(id) = t.strip_prefix(topic::DEVICE_RPC_REQUEST_PREFIX) {
                if let Ok(id) = id.parse::<u64>() {
                    let topic = topic::topic_with_id(IdTopicKind::RpcResponse, TopicFamily::V1, id);
                    self.answers.push((topic, br#"{"time":1}"#.to_vec()));
                }
            }
        }
        self.seen_published = self.server.published.len();
        if self.answers.len() > 64 {
            self.answers.drain(..32);
        }
    }

    fn step(&mut self, op: Op) {
        let mut fired = false;
        match op {
            Op::Open => self.server.open(&mut self.conn, self.now),
            Op::Drop => {
                if self.server.open || self.server.wanted {
                    self.server.reset();
                    self.conn.handle_input(self.now, Input::TransportClosed);
                }
            }
            Op::Advance(n) => {
                self.now += Duration::from_millis(100 * u64::from(n));
                self.conn.handle_input(self.now, Input::Timeout);
                fired = true;
            }
            Op::Fire => {
                if let Some(t) = self.conn.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.conn.handle_input(self.now, Input::Timeout);
                fired = true;
            }
            Op::Timeout => {
                self.conn.handle_input(self.now, Input::Timeout);
                fired = true;
            }
            Op::ConnAck {
                code,
                session_present,
            } => self.packet(&Packet::ConnAck(wire::ConnAck {
                session_present,
                code,
            })),
            Op::PubAck {
                pick,
                code,
                duplicate,
            } => {
                let ids: Vec<u16> = self.server.unacked.iter().copied().collect();
                let pkid = if ids.is_empty() {
                    u16::from(pick)
                } else {
                    ids[usize::from(pick) % ids.len()]
                };
                self.server.unacked.remove(&pkid);
                let ack = Packet::PubAck(wire::PubAck { pkid, code });
                self.packet(&ack);
                if duplicate {
                    self.packet(&ack);
                }
            }
            Op::SubAck { codes, wrong_id } => {
                let (pkid, n) = self.server.subscribe.unwrap_or((1, 1));
                let pkid = if wrong_id {
                    pkid.wrapping_add(1000)
                } else {
                    pkid
                };
                let codes = if codes.is_empty() { vec![1; n] } else { codes };
                self.packet(&Packet::SubAck(wire::SubAck { pkid, codes }));
            }
            Op::Publish {
                topic,
                id,
                body,
                qos1,
                pkid,
            } => {
                let mut t = crate::payload::topic_for(topic, u64::from(id));
                if let Body::Answer(pick) = body {
                    if let Some((answer_topic, _)) = self
                        .answers
                        .get(usize::from(pick) % self.answers.len().max(1))
                    {
                        t = answer_topic.clone();
                    }
                }
                let payload = self.body(body, &t);
                let publish = wire::Publish {
                    topic: t,
                    payload: Bytes::from(payload),
                    qos: if qos1 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                    dup: false,
                    retain: false,
                    pkid: if qos1 { pkid } else { 0 },
                };
                self.packet(&Packet::Publish(publish));
            }
            Op::Disconnect(code) => self.packet(&Packet::Disconnect(wire::Disconnect { code })),
            Op::PingResp => self.packet(&Packet::PingResp),
            Op::Raw(n) => {
                let bytes = self.pool.take(usize::from(n));
                self.feed(bytes);
            }
            Op::Cmd(cmd) => self.command(cmd),
            Op::Close => {
                self.conn.close(self.now);
                self.closed = true;
            }
        }
        self.server.drain(&mut self.conn);
        self.learn_answers();
        for e in &self.server.events {
            if let Event::RpcRequest { device, id, .. } = e {
                self.rpcs.push((device.clone(), *id));
            }
        }
        self.server.events.clear();
        if self.rpcs.len() > 64 {
            self.rpcs.drain(..32);
        }
        self.check(fired);
    }

    fn check(&self, fired: bool) {
        for id in self.server.outcomes.keys() {
            assert!(
                self.accepted.contains(id),
                "outcome for {id}, never accepted"
            );
        }
        if self.closed {
            for id in &self.accepted {
                assert_eq!(
                    self.server.outcomes.get(id),
                    Some(&1),
                    "{id} has no outcome after close"
                );
            }
            assert_eq!(self.conn.state(), State::Closed);
            assert_eq!(
                self.conn.poll_timeout(),
                None,
                "a closed connection arms no timer"
            );
        }
        let pkids = self.conn.pkids_in_use();
        let unique: BTreeSet<u16> = pkids.iter().copied().collect();
        assert_eq!(unique.len(), pkids.len(), "packet id used twice: {pkids:?}");
        assert!(!unique.contains(&0), "packet id 0 in use");
        let s = self.conn.stats();
        assert!(s.buffered_bytes <= self.config.max_buffered_bytes, "{s:?}");
        assert!(s.sub_devices <= MAX_SUB_DEVICES, "{s:?}");
        assert!(s.pending_requests <= MAX_PENDING, "{s:?}");
        assert!(s.pending_server_rpcs <= MAX_PENDING, "{s:?}");
        assert_eq!(s.pending_outputs, 0, "outputs left after a drain");
        assert!(
            s.receive_buffer <= self.config.max_incoming_packet + 5 + 256,
            "receive buffer {} past one packet plus one input",
            s.receive_buffer
        );
        if fired {
            if let Some(t) = self.conn.poll_timeout() {
                assert!(
                    t > self.now,
                    "deadline {t:?} not after the timeout just handled ({:?})",
                    self.now
                );
            }
        }
    }
}

/// The target body.
pub fn run(data: &[u8]) {
    let Some((setup, ops, pool)) = parse(data) else {
        return;
    };
    let config = config(setup);
    let now = Instant::now();
    let mut conn = match Connection::new(config.clone(), now) {
        Ok(c) => c,
        Err(e) => panic!("config: {e}"),
    };
    let mut server = Server::new(config.protocol);
    server.drain(&mut conn);
    let mut f = Fuzz {
        conn,
        server,
        now,
        pool: Pool(pool),
        config,
        accepted: BTreeSet::new(),
        closed: false,
        rpcs: Vec::new(),
        answers: Vec::new(),
        seen_published: 0,
    };
    for op in ops {
        f.step(op);
    }
    // The end: close, and every accepted request must have its outcome.
    f.step(Op::Close);
}
