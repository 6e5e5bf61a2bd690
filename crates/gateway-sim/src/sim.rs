//! The simulation: world state, workload, faults, invariants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway_emulator::{
    ClientRpcAnswer, Emulator, EmulatorConfig, LimitConfig, NewDevice, Output as EmuOutput,
    RpcCall, SessionId, TenantLimits,
};
use gateway_proto::payload::Claim;
use gateway_proto::wire::{self, Packet};
use gateway_proto::{
    AttributeScope, Command, Config, Connection, Credentials, Event, GatewayCommand, Input, Output,
    ProtocolVersion, QoS, RequestId, State,
};
use serde_json::{json, Map, Value};

use crate::Rng;

/// Sub-device names: more than `MAX_SUB_DEVICES`, with JSON and topic special characters.
const DEVICES: [&str; 8] = [
    "S0",
    "S1",
    "S2",
    "S3",
    "S4",
    "say \"hi\"",
    "floor/1/+",
    "Ünïcødé",
];
const GATEWAY: &str = "Gateway";
const TOKEN: &str = "GW_TOKEN";
const MAX_SUB_DEVICES: usize = 6;
const MAX_PENDING_REQUESTS: usize = 8;
const MAX_PENDING_SERVER_RPCS: usize = 8;
/// Largest single read or write the transport delivers.
const MAX_CHUNK: usize = 2048;
/// MQTT's largest remaining length, for decoding what the emulator sends.
const MQTT_MAX: usize = 268_435_455;

/// How long a run is.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workload and fault steps per seed.
    pub steps: usize,
    /// A heal-and-check every this many steps (and always at the end).
    pub heal_every: usize,
    /// Actions kept for the failure report.
    pub trace: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            steps: 120,
            heal_every: 60,
            trace: 80,
        }
    }
}

/// What a successful run did (for the totals a test prints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Requests accepted.
    pub requests: u64,
    /// Delivered outcomes checked against the emulator's store.
    pub delivered_checked: u64,
    /// Sessions the client established.
    pub connections: u64,
    /// Faults injected.
    pub faults: u64,
    /// Sub-devices proven reachable after heals.
    pub reachability_checks: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// MQTT 3.1.1 deliveries (and registered sub-devices) for a sub-device the platform
    /// refused to create: ThingsBoard acknowledges those like any other message on 3.1.1
    /// (see the crate docs, "Limitations").
    pub v311_unconfirmed: u64,
    /// QoS 1 PUBLISHes with packet id 0 the client received (from the client's stats).
    pub inbound_packet_id_zero: u64,
    /// Duplicate or unknown PUBACKs the client ignored.
    pub unexpected_acks: u64,
    /// QoS 1 publishes the client retransmitted after reconnects.
    pub retransmitted: u64,
    /// Sub-device re-announces the client sent.
    pub reannounced: u64,
}

/// A failed run: its seed, where, what, and the last actions.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed (replay with `SIM_SEED`).
    pub seed: u64,
    /// The step it failed at.
    pub step: usize,
    /// The broken invariant or the panic message.
    pub message: String,
    /// The last actions before it.
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(f, "last actions:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: SIM_SEED={} cargo test -p gateway-sim --test sim -- --nocapture",
            self.seed
        )
    }
}

/// Runs one seed. Deterministic: the same seed and options give the same run.
pub fn run(seed: u64, options: &Options) -> Result<Report, Failure> {
    let mut sim = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let s = sim.insert(Sim::new(seed, options.trace));
        s.run(options)
    }));
    let (step, trace) = sim
        .as_ref()
        .map(|s| (s.step, s.trace.iter().cloned().collect()))
        .unwrap_or_default();
    match result {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(message)) => Err(Failure {
            seed,
            step,
            message,
            trace,
        }),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            Err(Failure {
                seed,
                step,
                message: format!("panic: {message}"),
                trace,
            })
        }
    }
}

/// What an accepted request was, to check its outcome against the emulator.
#[derive(Debug, Clone)]
enum Req {
    /// Telemetry under a unique key (`None`: the gateway's own).
    Telemetry { device: Option<String>, key: String },
    /// A client attribute under a unique key.
    Attribute { device: String, key: String },
    /// `v1/gateway/connect`.
    Connect(String),
    /// Anything else (disconnect, claim, request, RPC reply, client RPC).
    Other(#[allow(dead_code)] &'static str),
}

/// The in-memory transport between the two.
#[derive(Debug, Default)]
struct Link {
    /// The emulator session of the client's current transport.
    session: Option<SessionId>,
    /// The client asked for a transport that is not open yet.
    want_open: bool,
    /// The client holds an open transport (until it is told it closed, or closes it).
    client_open: bool,
    /// Client bytes on the way to the emulator.
    c2s: VecDeque<u8>,
    /// Emulator bytes on the way to the client (whole frames appended).
    s2c: VecDeque<u8>,
    /// Emulator bytes not yet forming a whole frame.
    partial: Vec<u8>,
    /// The server closed: the client learns it once `s2c` is delivered.
    server_closed: bool,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: Instant,
    start: Instant,
    step: usize,
    config: Config,
    conn: Connection,
    emu: Emulator,
    link: Link,
    /// A second session authenticating with the gateway's token.
    intruder: Option<SessionId>,
    /// No bytes move until then.
    stalled_until: Instant,
    /// Duplicate each PUBACK the emulator sends.
    duplicate_pubacks: bool,
    requests: BTreeMap<RequestId, Req>,
    outcomes: BTreeMap<RequestId, String>,
    /// Server RPCs the client reported and has not replied to.
    server_rpcs: Vec<(Option<String>, u64)>,
    /// MQTT 3.1.1 requests a platform rate limit may have dropped after a plain PUBACK.
    rate_limited: BTreeSet<RequestId>,
    /// Probes seen: RPC methods and attribute values per device.
    probes: BTreeSet<(String, String)>,
    tag: u64,
    trace: VecDeque<String>,
    trace_len: usize,
    known_devices: usize,
    known_children: Vec<String>,
    report: Report,
}

fn values(key: &str, tag: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_owned(), json!(tag));
    m
}

/// Length of the first whole MQTT frame in `buf`, if it is complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + len;
            return (buf.len() >= total).then_some(total);
        }
    }
    // An invalid length: hand the rest over as one piece; the client rejects it.
    Some(buf.len())
}

impl Sim {
    fn new(seed: u64, trace_len: usize) -> Self {
        let mut rng = Rng::new(seed);
        let now = Instant::now();
        let mut config = Config::new(Credentials::AccessToken(TOKEN.into()));
        config.protocol = if rng.chance(1, 3) {
            ProtocolVersion::V311
        } else {
            ProtocolVersion::V5
        };
        config.max_inflight = [1, 2, 4, 16][rng.below(4) as usize];
        config.max_buffered_bytes = [3_000, 20_000, 1 << 20][rng.below(3) as usize];
        config.publish_timeout = [
            None,
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(300)),
        ][rng.below(3) as usize];
        config.max_publish_attempts = 1 + rng.below(5) as u32;
        config.telemetry_qos = if rng.chance(1, 4) {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        config.keep_alive = Duration::from_secs([10, 30, 60][rng.below(3) as usize]);
        config.ping_timeout = Duration::from_secs(10);
        config.connect_timeout = Duration::from_secs(10);
        config.max_sub_devices = MAX_SUB_DEVICES;
        config.max_pending_requests = MAX_PENDING_REQUESTS;
        config.max_pending_server_rpcs = MAX_PENDING_SERVER_RPCS;
        config.sub_device_keepalive = Some(Duration::from_secs(120 + rng.below(360)));
        config.reconnect.seed = seed;
        config.reconnect.initial_delay = Duration::from_millis(200 + rng.below(2000));
        config.reconnect.max_delay = Duration::from_secs(30);
        config.reconnect.refused_delay = Duration::from_secs(30);
        let conn = match Connection::new(config.clone(), now) {
            Ok(c) => c,
            Err(e) => panic!("config: {e}"),
        };
        let mut emu_config = EmulatorConfig::default();
        emu_config.inactivity_timeout = Duration::from_secs(600);
        let mut emu = Emulator::new(emu_config, now, 1_700_000_000_000);
        if let Err(e) = emu.create_device(NewDevice::gateway(GATEWAY, TOKEN)) {
            panic!("setup: {e}");
        }
        emu.set_client_rpc_handler(Some(Box::new(|call| match call.method.as_str() {
            "getTime" => ClientRpcAnswer::Reply(json!({"time": 1})),
            _ => ClientRpcAnswer::NoAnswer,
        })));
        Self {
            seed,
            rng,
            now,
            start: now,
            step: 0,
            config,
            conn,
            emu,
            link: Link::default(),
            intruder: None,
            stalled_until: now,
            duplicate_pubacks: false,
            requests: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            server_rpcs: Vec::new(),
            rate_limited: BTreeSet::new(),
            probes: BTreeSet::new(),
            tag: 0,
            trace: VecDeque::new(),
            trace_len,
            known_devices: 1,
            known_children: Vec::new(),
            report: Report::default(),
        }
    }

    fn log(&mut self, what: impl Into<String>) {
        let t = self.now.saturating_duration_since(self.start);
        self.trace
            .push_back(format!("[{:>9.3}s] {}", t.as_secs_f64(), what.into()));
        if self.trace.len() > self.trace_len {
            self.trace.pop_front();
        }
    }

    fn run(&mut self, options: &Options) -> Result<Report, String> {
        self.log(format!(
            "seed {} config {:?} inflight {} buffer {} publish_timeout {:?} attempts {} qos {:?} keep_alive {:?}",
            self.seed,
            self.config.protocol,
            self.config.max_inflight,
            self.config.max_buffered_bytes,
            self.config.publish_timeout,
            self.config.max_publish_attempts,
            self.config.telemetry_qos,
            self.config.keep_alive,
        ));
        self.client_out()?;
        for step in 0..options.steps {
            self.step = step;
            match self.rng.below(100) {
                0..=44 => self.workload()?,
                45..=54 => self.fault()?,
                _ => self.network()?,
            }
            self.check_bounds()?;
            if options.heal_every > 0 && step % options.heal_every == options.heal_every - 1 {
                self.heal_and_check()?;
            }
        }
        self.step = options.steps;
        self.heal_and_check()?;
        self.finish()?;
        self.report.requests = self.requests.len() as u64;
        let stats = self.conn.stats();
        self.report.connections = stats.connections;
        self.report.inbound_packet_id_zero = stats.inbound_packet_id_zero;
        self.report.unexpected_acks = stats.unexpected_acks;
        self.report.retransmitted = stats.retransmitted;
        self.report.reannounced = stats.reannounced;
        self.report.virtual_time = self.now.saturating_duration_since(self.start);
        Ok(self.report.clone())
    }

    // ----- the client's side ----------------------------------------------------------------

    /// Drains the client's outputs into the transport and the bookkeeping.
    fn client_out(&mut self) -> Result<(), String> {
        while let Some(out) = self.conn.poll_output() {
            match out {
                Output::Transmit(bytes) => {
                    if !self.link.client_open {
                        return Err(format!(
                            "client transmitted {} bytes without an open transport",
                            bytes.len()
                        ));
                    }
                    self.link.c2s.extend(bytes.iter());
                }
                Output::OpenTransport => {
                    if self.link.client_open || self.link.want_open {
                        return Err("client asked for a second transport".into());
                    }
                    self.link.want_open = true;
                }
                Output::CloseTransport => self.client_closed_transport(),
                Output::Event(e) => self.on_event(e)?,
                other => return Err(format!("unexpected output {other:?}")),
            }
        }
        Ok(())
    }

    fn client_closed_transport(&mut self) {
        self.link.want_open = false;
        self.link.client_open = false;
        // What it wrote before closing still arrives (a FIN after the data), or a prefix of it
        // (a reset).
        if let Some(sid) = self.link.session.take() {
            let n = if self.rng.chance(3, 4) {
                self.link.c2s.len()
            } else {
                self.rng.below(self.link.c2s.len() as u64 + 1) as usize
            };
            let bytes: Vec<u8> = self.link.c2s.drain(..n).collect();
            if !bytes.is_empty() {
                self.emu.handle_bytes(sid, self.now, &bytes);
            }
            self.emu.transport_closed(sid, self.now);
        }
        self.link.c2s.clear();
        self.link.s2c.clear();
        self.link.partial.clear();
        self.link.server_closed = false;
    }

    fn on_event(&mut self, e: Event) -> Result<(), String> {
        if let Some(id) = e.request() {
            let Some(req) = self.requests.get(&id).cloned() else {
                return Err(format!("outcome for a request never accepted: {e:?}"));
            };
            if let Some(first) = self.outcomes.get(&id) {
                return Err(format!("second outcome for {id}: {e:?} (first {first})"));
            }
            self.outcomes.insert(id, format!("{e:?}"));
            if let Event::Delivered(_) = e {
                self.check_stored(id, &req)?;
            }
        }
        match &e {
            Event::RpcRequest {
                device, id, method, ..
            } => {
                if let Some(d) = device {
                    self.probes.insert((d.clone(), format!("rpc:{method}")));
                }
                self.server_rpcs.push((device.clone(), *id));
                if self.server_rpcs.len() > 32 {
                    self.server_rpcs.remove(0);
                }
            }
            Event::AttributeUpdate {
                device: Some(d),
                values,
                ..
            } => {
                if let Some(v) = values.get("probe") {
                    self.probes.insert((d.clone(), format!("attr:{v}")));
                }
            }
            _ => {}
        }
        let short = format!("{e:?}");
        self.log(format!("client: {}", &short[..short.len().min(160)]));
        Ok(())
    }

    /// Invariant 3: a Delivered QoS 1 message is stored by the emulator.
    fn check_stored(&mut self, id: RequestId, req: &Req) -> Result<(), String> {
        let sub_device = match req {
            Req::Telemetry {
                device: Some(d), ..
            }
            | Req::Attribute { device: d, .. }
            | Req::Connect(d) => Some(d.as_str()),
            _ => None,
        };
        if self.rate_limited.contains(&id) {
            self.report.v311_unconfirmed += 1;
            return Ok(());
        }
        if let Some(d) = sub_device {
            if self.config.protocol == ProtocolVersion::V311 && self.emu.device(d).is_none() {
                // Limitation: a 3.1.1 PUBACK cannot say "device limit" (ThingsBoard acks it).
                self.report.v311_unconfirmed += 1;
                return Ok(());
            }
        }
        let stored = match req {
            Req::Telemetry { device, key } => {
                let name = device.as_deref().unwrap_or(GATEWAY);
                self.emu
                    .telemetry(name)
                    .map(|t| t.contains_key(key))
                    .unwrap_or(false)
            }
            Req::Attribute { device, key } => self
                .emu
                .client_attributes(device)
                .map(|a| a.contains_key(key))
                .unwrap_or(false),
            Req::Connect(device) => self.emu.device(device).is_some(),
            Req::Other(_) => true,
        };
        self.report.delivered_checked += 1;
        if stored {
            Ok(())
        } else {
            Err(format!(
                "{id} reported Delivered but the emulator did not store it: {req:?}"
            ))
        }
    }

    fn command(&mut self, command: Command, req: Req) -> Result<(), String> {
        let what = format!("{command:?}");
        match self.conn.command(self.now, command) {
            Ok(id) => {
                if self.requests.insert(id, req).is_some() {
                    return Err(format!("request id {id} reused"));
                }
                self.log(format!("command {id}: {}", &what[..what.len().min(140)]));
            }
            Err(e) => self.log(format!(
                "command refused ({e}): {}",
                &what[..what.len().min(100)]
            )),
        }
        self.client_out()
    }

    fn next_tag(&mut self) -> u64 {
        self.tag += 1;
        self.tag
    }

    fn device(&mut self) -> String {
        DEVICES[self.rng.below(DEVICES.len() as u64) as usize].to_owned()
    }

    // ----- workload -------------------------------------------------------------------------

    fn workload(&mut self) -> Result<(), String> {
        let tag = self.next_tag();
        match self.rng.below(15) {
            0 | 1 => {
                let d = self.device();
                self.command(
                    Command::connect_device(d.clone(), Some("sensor")),
                    Req::Connect(d),
                )
            }
            2 => {
                let d = self.device();
                self.command(Command::disconnect_device(d), Req::Other("disconnect"))
            }
            3..=5 => {
                let d = self.device();
                let key = format!("t{tag}");
                let cmd = Command::device_telemetry(d.clone(), values(&key, tag));
                let req = match self.config.telemetry_qos {
                    QoS::AtLeastOnce => Req::Telemetry {
                        device: Some(d),
                        key,
                    },
                    _ => Req::Other("telemetry qos 0"),
                };
                self.command(cmd, req)
            }
            6 => {
                // The gateway's own telemetry as a raw publish at QoS 0 or 1.
                let key = format!("o{tag}");
                let qos1 = self.rng.chance(1, 2);
                let cmd = Command::Publish {
                    topic: "v1/devices/me/telemetry".into(),
                    payload: Bytes::from(format!("{{\"{key}\":{tag}}}")),
                    qos: if qos1 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                };
                let req = if qos1 {
                    Req::Telemetry { device: None, key }
                } else {
                    Req::Other("own telemetry qos 0")
                };
                self.command(cmd, req)
            }
            7 => {
                let d = self.device();
                let key = format!("a{tag}");
                let cmd = Command::device_attributes(d.clone(), values(&key, tag));
                let req = match self.config.telemetry_qos {
                    QoS::AtLeastOnce => Req::Attribute { device: d, key },
                    _ => Req::Other("attributes qos 0"),
                };
                self.command(cmd, req)
            }
            8 => {
                let d = self.device();
                let scope = if self.rng.chance(1, 2) {
                    AttributeScope::Shared
                } else {
                    AttributeScope::Client
                };
                self.command(
                    Command::request_device_attributes(d, scope, ["probe", "k"]),
                    Req::Other("gateway attribute request"),
                )
            }
            9 => self.command(
                Command::request_attributes(["c"], ["probe"]),
                Req::Other("device attribute request"),
            ),
            10 => {
                let d = self.device();
                let claim = Claim {
                    secret_key: Some(format!("secret{tag}")),
                    duration_ms: Some(60_000),
                };
                self.command(
                    Command::Gateway(GatewayCommand::Claim { device: d, claim }),
                    Req::Other("claim"),
                )
            }
            11 => {
                let method = if self.rng.chance(3, 4) {
                    "getTime"
                } else {
                    "silent"
                };
                self.command(Command::rpc(method, json!({})), Req::Other("client rpc"))
            }
            12 => {
                // Reply to a server RPC the client received.
                if self.server_rpcs.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.server_rpcs.len() as u64) as usize;
                let (device, id) = self.server_rpcs.remove(i);
                let cmd = match device {
                    Some(d) => Command::device_rpc_reply(d, id, json!({"ok": tag})),
                    None => Command::rpc_reply(id, json!({"ok": tag})),
                };
                self.command(cmd, Req::Other("rpc reply"))
            }
            13 => {
                let d = if self.rng.chance(1, 5) {
                    GATEWAY.to_owned()
                } else {
                    self.device()
                };
                let call = RpcCall::two_way("work", json!({"tag": tag}))
                    .with_timeout(Duration::from_secs(5 + self.rng.below(60)));
                let r = self.emu.send_rpc(&d, call, self.now);
                self.log(format!("platform: rpc to {d:?}: {r:?}"));
                self.emu_out()
            }
            _ => {
                let d = self.device();
                let r = self.emu.set_shared_attributes(&d, values("shared", tag));
                self.log(format!("platform: shared attribute of {d:?}: {r:?}"));
                self.emu_out()
            }
        }
    }

    // ----- faults ---------------------------------------------------------------------------

    fn fault(&mut self) -> Result<(), String> {
        self.report.faults += 1;
        match self.rng.below(14) {
            0 | 1 => {
                // Cut the connection mid-stream: a prefix of each direction arrives.
                if self.link.client_open {
                    let c = self.rng.below(self.link.c2s.len() as u64 + 1) as usize;
                    let s = self.rng.below(self.link.s2c.len() as u64 + 1) as usize;
                    self.log(format!(
                        "fault: connection cut ({c} bytes up, {s} down arrive)"
                    ));
                    self.deliver_up(c)?;
                    self.deliver_down(s)?;
                    self.cut()?;
                }
            }
            2 => {
                let secs = 1 + self.rng.below(40);
                self.log(format!("fault: network stalls for {secs}s"));
                self.stalled_until = self.now + Duration::from_secs(secs);
            }
            3 => {
                if let Some(sid) = self.link.session {
                    self.log("fault: the platform drops the session");
                    let _ = self.emu.drop_session(sid);
                    self.emu_out()?;
                }
            }
            4 => {
                // A second client with the same token: ThingsBoard evicts the first (0x8E).
                if self.intruder.is_none() {
                    if let Ok(sid) = self.emu.open_session(self.now) {
                        self.log("fault: takeover by a second session with the same token");
                        let mut connect = BytesMut::new();
                        let packet = Packet::Connect(wire::Connect {
                            client_id: "intruder".into(),
                            keep_alive: 0,
                            clean_session: true,
                            username: Some(TOKEN.into()),
                            password: None,
                        });
                        let _ = wire::encode(&packet, self.config.protocol, &mut connect, MQTT_MAX);
                        self.intruder = Some(sid);
                        self.emu.handle_bytes(sid, self.now, &connect);
                        self.emu_out()?;
                    }
                }
            }
            5 => {
                if self.config.protocol == ProtocolVersion::V5 && self.link.session.is_some() {
                    // A server DISCONNECT with a reason code, then the close.
                    let code = *self
                        .rng
                        .pick(&[
                            0x80u8, 0x81, 0x83, 0x87, 0x89, 0x8B, 0x8E, 0x93, 0x96, 0x97, 0x98,
                            0x9C, 0x00,
                        ])
                        .unwrap_or(&0x80);
                    self.log(format!("fault: server DISCONNECT {code:#04x}"));
                    let mut out = BytesMut::new();
                    let _ = wire::encode(
                        &Packet::Disconnect(wire::Disconnect { code }),
                        ProtocolVersion::V5,
                        &mut out,
                        MQTT_MAX,
                    );
                    self.link.s2c.extend(out.iter());
                    if let Some(sid) = self.link.session {
                        let _ = self.emu.drop_session(sid);
                    }
                    self.emu_out()?;
                }
            }
            6 => {
                let on = self.rng.chance(1, 2);
                self.log(format!(
                    "fault: rate limits {}",
                    if on { "on" } else { "off" }
                ));
                let limits = if on {
                    let l = LimitConfig::new("5:1,20:60", "", "");
                    TenantLimits {
                        gateway: l.clone(),
                        gateway_device: l,
                        ..TenantLimits::default()
                    }
                } else {
                    TenantLimits::default()
                };
                let _ = self.emu.set_rate_limits(limits);
            }
            7 => {
                let max = if self.rng.chance(1, 2) {
                    Some(self.emu.devices().len() + self.rng.below(2) as usize)
                } else {
                    None
                };
                self.log(format!("fault: device limit {max:?}"));
                self.emu.set_max_devices(max);
            }
            8 => {
                self.duplicate_pubacks = !self.duplicate_pubacks;
                self.log(format!(
                    "fault: duplicate PUBACKs {}",
                    self.duplicate_pubacks
                ));
            }
            9 => {
                // ThingsBoard's wrapped packet id: a QoS 1 PUBLISH with id 0.
                if self.link.session.is_some() {
                    let d = self.device();
                    let tag = self.next_tag();
                    let payload = format!(
                        "{{\"device\":{},\"data\":{{\"pkid0\":{tag}}}}}",
                        Value::String(d.clone())
                    );
                    let publish = wire::PublishRef {
                        topic: "v1/gateway/attributes",
                        payload: payload.as_bytes(),
                        qos: QoS::AtLeastOnce,
                        dup: false,
                        retain: false,
                        pkid: 0,
                    };
                    let mut out = BytesMut::new();
                    let _ = wire::encode_publish_allowing_pkid_zero(
                        &publish,
                        self.config.protocol,
                        &mut out,
                        MQTT_MAX,
                    );
                    self.log(format!("fault: QoS 1 PUBLISH with packet id 0 for {d:?}"));
                    if self.link.partial.is_empty() {
                        self.link.s2c.extend(out.iter());
                    }
                }
            }
            10 => {
                self.log("fault: emulator restart (platform kept)");
                let closed = self.emu.restart(self.now);
                if closed.contains(&self.intruder.unwrap_or(SessionId(0))) {
                    self.intruder = None;
                }
                self.emu_out()?;
            }
            11 => {
                let on = self.rng.chance(1, 3);
                self.log(format!("fault: credential backend unavailable {on}"));
                self.emu.set_auth_unavailable(on);
            }
            12 => {
                if let Some(sid) = self.intruder.take() {
                    self.log("fault: the second session leaves");
                    self.emu.transport_closed(sid, self.now);
                    self.emu_out()?;
                }
            }
            _ => {
                let secs = 60 + self.rng.below(600);
                self.log(format!("fault: silence for {secs}s"));
                self.advance(Duration::from_secs(secs))?;
            }
        }
        Ok(())
    }

    /// The connection breaks: both sides learn it, nothing more arrives.
    fn cut(&mut self) -> Result<(), String> {
        if let Some(sid) = self.link.session.take() {
            self.emu.transport_closed(sid, self.now);
            self.emu_out()?;
        }
        self.link.c2s.clear();
        self.link.s2c.clear();
        self.link.partial.clear();
        self.link.server_closed = false;
        if self.link.client_open {
            self.link.client_open = false;
            self.conn.handle_input(self.now, Input::TransportClosed);
            self.client_out()?;
        }
        Ok(())
    }

    // ----- the emulator's side --------------------------------------------------------------

    fn emu_out(&mut self) -> Result<(), String> {
        while let Some((sid, out)) = self.emu.poll_output() {
            if Some(sid) == self.intruder {
                if out == EmuOutput::Close {
                    self.intruder = None;
                    self.emu.transport_closed(sid, self.now);
                }
                continue;
            }
            if Some(sid) != self.link.session {
                if out == EmuOutput::Close {
                    self.emu.transport_closed(sid, self.now);
                }
                continue;
            }
            match out {
                EmuOutput::Transmit(bytes) => {
                    self.link.partial.extend_from_slice(&bytes);
                    while let Some(n) = frame_len(&self.link.partial) {
                        let frame: Vec<u8> = self.link.partial.drain(..n).collect();
                        let duplicate = self.duplicate_pubacks
                            && frame.first().is_some_and(|b| b >> 4 == 4)
                            && self.rng.chance(1, 2);
                        self.link.s2c.extend(frame.iter());
                        if duplicate {
                            self.link.s2c.extend(frame.iter());
                        }
                    }
                }
                EmuOutput::Close => {
                    self.log("emulator: closes the connection");
                    self.link.session = None;
                    self.emu.transport_closed(sid, self.now);
                    // Either the rest arrives before the FIN, or the connection is reset.
                    if self.rng.chance(1, 5) {
                        self.link.s2c.clear();
                    }
                    self.link.partial.clear();
                    self.link.server_closed = true;
                }
            }
        }
        let devices = self.emu.devices();
        if devices.len() != self.known_devices {
            for d in devices.iter().skip(self.known_devices) {
                self.trace.push_back(format!(
                    "            platform: device {:?} created ({})",
                    d.name, d.device_type
                ));
            }
            self.known_devices = devices.len();
        }
        let children = self.emu.connected_children(GATEWAY).unwrap_or_default();
        if children != self.known_children {
            let line = format!("            platform: children {children:?}");
            self.trace.push_back(line);
            self.known_children = children;
        }
        while let Some(e) = self.emu.poll_event() {
            if let gateway_emulator::Event::RateLimited { device, .. } = &e {
                if self.config.protocol == ProtocolVersion::V311 {
                    // ThingsBoard acks a rate-limited child message with a plain PUBACK on
                    // 3.1.1 before closing: what is unfinished for it may look delivered.
                    let own = device == GATEWAY;
                    let hit: Vec<RequestId> = self
                        .requests
                        .iter()
                        .filter(|(id, _)| !self.outcomes.contains_key(id))
                        .filter(|(_, r)| match r {
                            Req::Telemetry { device: d, .. } => {
                                d.as_deref() == Some(device.as_str()) || (own && d.is_none())
                            }
                            Req::Attribute { device: d, .. } | Req::Connect(d) => d == device,
                            Req::Other(_) => false,
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    self.rate_limited.extend(hit);
                }
            }
            let s = format!("{e:?}");
            self.log(format!("platform event: {}", &s[..s.len().min(140)]));
        }
        Ok(())
    }

    // ----- the network ----------------------------------------------------------------------

    fn stalled(&self) -> bool {
        self.now < self.stalled_until
    }

    /// Client → emulator, `n` bytes (split into reads of random size).
    fn deliver_up(&mut self, mut n: usize) -> Result<(), String> {
        n = n.min(self.link.c2s.len());
        while n > 0 {
            let Some(sid) = self.link.session else {
                self.link.c2s.clear();
                return Ok(());
            };
            let k = (1 + self.rng.below(MAX_CHUNK as u64) as usize).min(n);
            let chunk: Vec<u8> = self.link.c2s.drain(..k).collect();
            n -= k;
            self.emu.handle_bytes(sid, self.now, &chunk);
            self.emu_out()?;
        }
        Ok(())
    }

    /// Emulator → client, `n` bytes (split into reads of random size); then the close if
    /// the server closed and everything arrived.
    fn deliver_down(&mut self, mut n: usize) -> Result<(), String> {
        n = n.min(self.link.s2c.len());
        while n > 0 && self.link.client_open {
            let k = (1 + self.rng.below(MAX_CHUNK as u64) as usize).min(n);
            let chunk: Vec<u8> = self.link.s2c.drain(..k).collect();
            n -= k;
            self.conn.handle_input(self.now, Input::Bytes(&chunk));
            self.client_out()?;
        }
        if self.link.server_closed && self.link.s2c.is_empty() && self.link.client_open {
            self.link.server_closed = false;
            self.link.client_open = false;
            self.conn.handle_input(self.now, Input::TransportClosed);
            self.client_out()?;
        }
        Ok(())
    }

    /// Opens (or refuses) the transport the client asked for.
    fn open_transport(&mut self) -> Result<(), String> {
        if !self.link.want_open {
            return Ok(());
        }
        self.link.want_open = false;
        if self.rng.chance(1, 10) {
            self.log("network: transport refused");
            self.conn.handle_input(self.now, Input::TransportClosed);
            return self.client_out();
        }
        match self.emu.open_session(self.now) {
            Ok(sid) => {
                self.log(format!("network: transport open ({sid})"));
                self.link.session = Some(sid);
                self.link.client_open = true;
                self.conn.handle_input(self.now, Input::TransportOpened);
            }
            Err(e) => {
                self.log(format!("network: emulator refused a session: {e}"));
                self.conn.handle_input(self.now, Input::TransportClosed);
            }
        }
        self.client_out()
    }

    /// Moves everything that can move (unless stalled).
    fn flush(&mut self) -> Result<(), String> {
        for _ in 0..64 {
            if self.stalled() {
                return Ok(());
            }
            self.open_transport()?;
            let up = self.link.c2s.len();
            let down = self.link.s2c.len();
            let closing = self.link.server_closed && self.link.client_open;
            if up == 0 && down == 0 && !closing && !self.link.want_open {
                return Ok(());
            }
            self.deliver_up(up)?;
            self.deliver_down(down)?;
        }
        Ok(())
    }

    /// One random network step: a partial delivery, a delay, or both.
    fn network(&mut self) -> Result<(), String> {
        if !self.stalled() {
            self.open_transport()?;
            let up = self.rng.below(self.link.c2s.len() as u64 + 1) as usize;
            let up = if self.rng.chance(1, 2) {
                self.link.c2s.len()
            } else {
                up
            };
            self.deliver_up(up)?;
            let down = self.rng.below(self.link.s2c.len() as u64 + 1) as usize;
            let down = if self.rng.chance(1, 2) {
                self.link.s2c.len()
            } else {
                down
            };
            self.deliver_down(down)?;
        }
        let ms = match self.rng.below(10) {
            0..=6 => self.rng.below(300),
            7 | 8 => self.rng.below(5_000),
            _ => self.rng.below(40_000),
        };
        self.advance(Duration::from_millis(ms))
    }

    /// Lets `by` pass, firing both sides' deadlines on the way; between deadlines the network
    /// moves everything (unless stalled).
    fn advance(&mut self, by: Duration) -> Result<(), String> {
        let end = self.now + by;
        for _ in 0..100_000 {
            let next = [self.conn.poll_timeout(), self.emu.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            self.fire()?;
            self.flush()?;
        }
        self.now = end;
        self.fire()?;
        self.flush()
    }

    fn fire(&mut self) -> Result<(), String> {
        self.conn.handle_input(self.now, Input::Timeout);
        self.client_out()?;
        self.emu.handle_timeout(self.now);
        self.emu_out()?;
        if let Some(t) = self.conn.poll_timeout() {
            if t <= self.now {
                return Err(format!(
                    "client deadline {:?} not after the timeout just handled",
                    t.saturating_duration_since(self.start)
                ));
            }
        }
        if let Some(t) = self.emu.poll_timeout() {
            if t <= self.now {
                return Err("emulator deadline not after the timeout just handled".into());
            }
        }
        Ok(())
    }

    // ----- invariants -----------------------------------------------------------------------

    /// Invariant 5: memory bounds on both sides.
    fn check_bounds(&self) -> Result<(), String> {
        let s = self.conn.stats();
        let c = &self.config;
        let bound = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("client bound broken: {what}: {s:?}"))
            }
        };
        bound(s.buffered_bytes <= c.max_buffered_bytes, "buffered_bytes")?;
        bound(s.sub_devices <= MAX_SUB_DEVICES, "sub_devices")?;
        bound(
            s.pending_requests <= MAX_PENDING_REQUESTS,
            "pending_requests",
        )?;
        bound(
            s.pending_server_rpcs <= MAX_PENDING_SERVER_RPCS,
            "pending_server_rpcs",
        )?;
        bound(s.pending_outputs == 0, "outputs left undrained")?;
        bound(
            s.receive_buffer <= c.max_incoming_packet + 5 + MAX_CHUNK,
            "receive_buffer",
        )?;
        let sessions = self.emu.sessions();
        if sessions.len() > 3 {
            return Err(format!(
                "emulator holds {} sessions: {sessions:?}",
                sessions.len()
            ));
        }
        for info in sessions {
            if info.buffered_bytes > self.emu.config().max_packet_size + 5 + MAX_CHUNK {
                return Err(format!("emulator session buffer past its bound: {info:?}"));
            }
        }
        Ok(())
    }

    /// Faults off, then time for everything to finish; then invariants 2 and 4.
    fn heal_and_check(&mut self) -> Result<(), String> {
        self.log("heal: faults off");
        self.stalled_until = self.now;
        self.duplicate_pubacks = false;
        self.emu.set_auth_unavailable(false);
        self.emu.set_max_devices(None);
        let _ = self.emu.set_rate_limits(TenantLimits::default());
        if let Some(sid) = self.intruder.take() {
            self.emu.transport_closed(sid, self.now);
            self.emu_out()?;
        }
        // Longer than every deadline: publish timeout, RPC timeout, backoff.
        let horizon = self.now + Duration::from_secs(400);
        while self.now < horizon {
            self.advance(Duration::from_secs(1))?;
            let s = self.conn.stats();
            if self.conn.state() == State::Connected
                && s.unfinished_requests == 0
                // Re-announces paced by the limits the client learned (the server's or its
                // own slow-down after push-backs) may still wait for tokens.
                && !self.conn.has_connection_publishes_waiting()
                && s.pending_requests == 0
                && self.link.c2s.is_empty()
                && self.link.s2c.is_empty()
                && self
                    .requests
                    .keys()
                    .all(|id| self.outcomes.contains_key(id))
            {
                break;
            }
        }
        // Let the re-announces settle.
        self.advance(Duration::from_secs(2))?;
        if self.conn.state() != State::Connected {
            return Err(format!(
                "not connected after a heal: {:?}",
                self.conn.state()
            ));
        }
        // Invariant 2 (liveness): every accepted request has its outcome.
        let missing: Vec<String> = self
            .requests
            .iter()
            .filter(|(id, _)| !self.outcomes.contains_key(id))
            .map(|(id, r)| format!("{id} {r:?}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "requests without an outcome after a heal: {missing:?}; stats {:?}",
                self.conn.stats()
            ));
        }
        // Invariant 4: every registered sub-device is connected and reachable.
        for name in DEVICES {
            if !self.conn.is_sub_device_registered(name) {
                continue;
            }
            // Fresh each time: a keep-alive may have connected one meanwhile.
            let children = self.emu.connected_children(GATEWAY).unwrap_or_default();
            if self.config.protocol == ProtocolVersion::V311 && self.emu.device(name).is_none() {
                // The same 3.1.1 limitation: the refused announce looked acknowledged.
                self.report.v311_unconfirmed += 1;
                continue;
            }
            if !children.iter().any(|c| c == name) {
                return Err(format!(
                    "sub-device {name:?} registered but not connected on the platform (children \
                     {children:?}; platform device {:?})",
                    self.emu.device(name)
                ));
            }
            let tag = self.next_tag();
            let method = format!("probe{tag}");
            let call = RpcCall::one_way(method.clone(), Value::Null);
            if let Err(e) = self.emu.send_rpc(name, call, self.now) {
                return Err(format!("send_rpc to {name:?}: {e}"));
            }
            self.emu_out()?;
            let _ = self.emu.set_shared_attributes(name, values("probe", tag));
            self.emu_out()?;
            self.advance(Duration::from_millis(500))?;
            let rpc = (name.to_owned(), format!("rpc:{method}"));
            let attr = (name.to_owned(), format!("attr:{tag}"));
            if !self.probes.contains(&rpc) {
                return Err(format!(
                    "RPC {method} to registered sub-device {name:?} did not arrive"
                ));
            }
            if !self.probes.contains(&attr) {
                return Err(format!(
                    "attribute update for registered sub-device {name:?} did not arrive"
                ));
            }
            self.report.reachability_checks += 1;
        }
        self.log("heal: checked");
        Ok(())
    }

    /// Close, then every accepted request has exactly one outcome.
    fn finish(&mut self) -> Result<(), String> {
        self.conn.close(self.now);
        self.client_out()?;
        self.flush()?;
        for id in self.requests.keys() {
            if !self.outcomes.contains_key(id) {
                return Err(format!("{id} has no outcome after close"));
            }
        }
        if self.conn.poll_timeout().is_some() {
            return Err("a closed connection still arms a timer".into());
        }
        Ok(())
    }
}
