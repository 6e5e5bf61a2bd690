//! Property tests of the Gateway and Device APIs over random sequences of application
//! commands, server answers (right, misaddressed, unknown, late, malformed), notifications,
//! PUBACKs, transport events and time, on MQTT 5 and 3.1.1, as a gateway (mostly) or a
//! plain device.
//!
//! A model of what was asked, what the broker saw on the wire and what the server sent
//! predicts the events of every step. Checked after every step (and after `close()`):
//!
//! 1. no panic;
//! 2. every accepted request gets at most one outcome (Delivered, Sent, Failed,
//!    AttributeResponse, RpcResponse), exactly one once closed; PUBACKs, answers and server
//!    messages produce exactly the outcomes and events the model predicts;
//! 3. a response only completes a pending request of its own kind, and a gateway
//!    AttributeResponse names the device the request (renames applied) expects;
//! 4. `stats()` stays within the configured bounds and agrees with the model (sub-devices,
//!    pending requests, pending server RPCs, buffered bytes);
//! 5. after a successful CONNACK, no telemetry / attributes / claim / attribute request
//!    naming a sub-device registered at that moment goes out before its `v1/gateway/connect`;
//! 6. bad server input never ends the session nor finishes a request: warnings (or raw
//!    messages for unknown topics) only.
//!
//! Also: application publishes go out in command order within a session, none skipped
//! unless finished; with room in the in-flight window nothing waits (no pending
//! re-announce, no unsent request); payloads name the right devices and RPC ids.
//!
//! How the broker tells publishes apart: each command's payload carries a `tag-N` string;
//! re-announces (which repeat the last connect's payload) are the first `v1/gateway/connect`
//! publishes of a pump (connection-made publishes precede queued ones), counted with
//! `Stats::reannounced`; untagged publishes (disconnects, untyped connects) are the next
//! request in command order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use common::{server_publish, Harness};
use gateway_proto::payload::{
    AttributeResult, AttributeUpdate, Claim, ClientRpcResponse, Connect, DeviceAttributeRequest,
    DeviceAttributeResponse, Disconnect, DisconnectNotice, GatewayAttributeRequest,
    GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes, GatewayClaim,
    GatewayNotification, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, Payload,
    RequestedKeys, RpcRequest, TelemetryEntry,
};
use gateway_proto::topic::{self, TopicFamily};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    AttributeScope, Command, CommandError, Config, DeviceCommand, Event, GatewayCommand, QoS,
    ReasonCode, RequestError, RequestId, Role, Warning, KEEPALIVE_KEY,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// ----- configuration ----------------------------------------------------------------------

const MAX_SUB_DEVICES: usize = 4;
const MAX_PENDING_REQUESTS: usize = 3;
const MAX_PENDING_RPCS: usize = 3;
/// Below `MAX_SUB_DEVICES`, so re-announces queue up behind the window after a CONNACK.
const MAX_INFLIGHT: u16 = 2;
const MAX_BUFFERED: usize = 6_000;

/// Sub-device names: more than `MAX_SUB_DEVICES`, with quotes, slashes, MQTT wildcards,
/// a backslash and non-ASCII text. None starts with `tag-`.
const POOL: [&str; 8] = [
    "A",
    "B",
    "say \"hi\"",
    "floor/1/room",
    "+",
    "#",
    "Ünïcødé 温度 🌡",
    "back\\slash",
];

/// Topics `ServerMsg::Bad` sends malformed payloads on (see `Model::bad_input`).
const BAD_TOPICS: usize = 12;

/// Wire ids the client never allocates (it counts up from 1).
const UNKNOWN_WIRE_BASE: u64 = 1_000_000;

fn name(i: usize) -> String {
    POOL[i % POOL.len()].to_owned()
}

fn api_config(version: ProtocolVersion, seed: u64, telemetry_qos0: bool) -> Config {
    let mut c = common::config(version);
    c.subscribe_api = true;
    c.role = Role::Gateway;
    c.reconnect.seed = seed;
    c.max_inflight = MAX_INFLIGHT;
    c.max_buffered_bytes = MAX_BUFFERED;
    c.publish_timeout = Some(Duration::from_secs(200));
    c.max_publish_attempts = 3;
    c.telemetry_qos = if telemetry_qos0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    c.max_sub_devices = MAX_SUB_DEVICES;
    c.max_pending_requests = MAX_PENDING_REQUESTS;
    c.max_pending_server_rpcs = MAX_PENDING_RPCS;
    c.sub_device_keepalive = Some(Duration::from_secs(45));
    c.attribute_request_timeout = Duration::from_secs(30);
    c.rpc_timeout = Duration::from_secs(75);
    c
}

// ----- operations -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum How {
    /// Right id, the device the request currently expects.
    Right,
    /// Right id, another device.
    WrongDevice(usize),
    /// An id the client never used.
    UnknownId(u64),
}

#[derive(Debug, Clone)]
enum ServerMsg {
    /// `v1/gateway/attributes/response` for a request the broker saw: `targeted` picks among
    /// unfinished gateway attribute requests and keep-alives, otherwise among all (device-API
    /// ids included). `result`: 0 nothing found, 1 `value`, 2 `values`.
    GatewayAnswer {
        pick: usize,
        targeted: bool,
        how: How,
        result: u8,
    },
    /// `v1/devices/me/attributes/response/{id}` for a seen request (`targeted`: an unfinished
    /// device attribute request; otherwise any kind) or an unknown id.
    DeviceAnswer {
        pick: usize,
        targeted: bool,
        unknown: Option<u64>,
    },
    /// `v1/devices/me/rpc/response/{id}`, a result or `{"error":"timeout"}`; ids as for
    /// `DeviceAnswer`.
    RpcAnswer {
        pick: usize,
        targeted: bool,
        unknown: Option<u64>,
        timeout: bool,
    },
    /// Server RPC to a sub-device: the device's next id (from 0), or a repeat of an old one.
    GatewayRpc {
        dev: usize,
        repeat: Option<usize>,
    },
    /// Server RPC to the gateway itself, on the v1 or v2 topic.
    DeviceRpc {
        repeat: Option<usize>,
        v2: bool,
    },
    GatewayAttributeUpdate {
        dev: usize,
        deleted: bool,
    },
    DeviceAttributeUpdate,
    DisconnectNotice {
        dev: usize,
        rate: bool,
    },
    /// `busy`: a device with work in flight (waiting for its re-announce, or with an
    /// unfinished attribute request), if any.
    Deleted {
        dev: usize,
        busy: bool,
    },
    Renamed {
        from: usize,
        to: usize,
        busy: bool,
    },
    /// A malformed payload on an API topic.
    Bad {
        topic: usize,
        payload: usize,
        pick: usize,
    },
    /// A topic the API does not know (or a malformed id): a raw message.
    UnknownTopic {
        which: usize,
    },
}

#[derive(Debug, Clone)]
enum Op {
    // application
    Connect {
        dev: usize,
        typed: bool,
    },
    Disconnect {
        dev: usize,
    },
    Telemetry {
        dev: usize,
        timestamped: bool,
    },
    TelemetryBatch {
        a: usize,
        b: usize,
    },
    Attributes {
        dev: usize,
    },
    Claim {
        dev: usize,
    },
    RequestAttributes {
        dev: usize,
        shared: bool,
        extra: usize,
    },
    EmptyName {
        what: u8,
    },
    DeviceData {
        what: u8,
    },
    DeviceRequest {
        client: bool,
        shared: bool,
    },
    ClientRpc,
    RpcReply {
        pick: usize,
    },
    RpcReplyUnknown {
        retired: Option<usize>,
        dev: Option<usize>,
        id: u64,
    },
    Raw {
        which: u8,
        dev: usize,
        qos1: bool,
    },
    // transport and MQTT
    /// Open the transport the client asked for and accept the CONNECT.
    Reconnect,
    Open,
    DropTransport,
    ConnAck {
        refuse: bool,
    },
    SubAck {
        reject: Option<usize>,
    },
    PingResp,
    ServerDisconnect(u8),
    PubAck {
        pick: usize,
        code: u8,
    },
    DuplicatePubAck {
        pick: usize,
    },
    /// Successful PUBACKs, one step each, until nothing is outstanding (at most 8).
    AckAll,
    // server API messages (only while a session is up)
    Server {
        msg: ServerMsg,
        qos1: bool,
    },
    // time
    Advance(u64),
    AdvanceToTimeout,
}

fn targeted() -> impl Strategy<Value = bool> {
    proptest::bool::weighted(0.8)
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    let dev = 0..POOL.len();
    let how = prop_oneof![
        6 => Just(How::Right),
        2 => (0..POOL.len()).prop_map(How::WrongDevice),
        1 => prop_oneof![UNKNOWN_WIRE_BASE..UNKNOWN_WIRE_BASE + 1000, Just(1u64 << 31), Just(u64::MAX)]
            .prop_map(How::UnknownId),
    ];
    let unknown = prop_oneof![
        4 => Just(None),
        1 => (UNKNOWN_WIRE_BASE..UNKNOWN_WIRE_BASE + 1000).prop_map(Some),
    ];
    prop_oneof![
        8 => (any::<usize>(), targeted(), how, 0u8..3).prop_map(|(pick, targeted, how, result)| {
            ServerMsg::GatewayAnswer { pick, targeted, how, result }
        }),
        4 => (any::<usize>(), targeted(), unknown.clone())
            .prop_map(|(pick, targeted, unknown)| ServerMsg::DeviceAnswer { pick, targeted, unknown }),
        4 => (any::<usize>(), targeted(), unknown, any::<bool>()).prop_map(
            |(pick, targeted, unknown, timeout)| ServerMsg::RpcAnswer { pick, targeted, unknown, timeout }
        ),
        4 => (dev.clone(), proptest::option::weighted(0.2, any::<usize>()))
            .prop_map(|(dev, repeat)| ServerMsg::GatewayRpc { dev, repeat }),
        2 => (proptest::option::weighted(0.2, any::<usize>()), any::<bool>())
            .prop_map(|(repeat, v2)| ServerMsg::DeviceRpc { repeat, v2 }),
        1 => (dev.clone(), any::<bool>())
            .prop_map(|(dev, deleted)| ServerMsg::GatewayAttributeUpdate { dev, deleted }),
        1 => Just(ServerMsg::DeviceAttributeUpdate),
        1 => (dev.clone(), any::<bool>()).prop_map(|(dev, rate)| ServerMsg::DisconnectNotice { dev, rate }),
        1 => (dev.clone(), any::<bool>())
            .prop_map(|(dev, busy)| ServerMsg::Deleted { dev, busy }),
        1 => (dev.clone(), dev, any::<bool>())
            .prop_map(|(from, to, busy)| ServerMsg::Renamed { from, to, busy }),
        4 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(topic, payload, pick)| ServerMsg::Bad { topic, payload, pick }),
        1 => any::<usize>().prop_map(|which| ServerMsg::UnknownTopic { which }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..POOL.len();
    prop_oneof![
        3 => (dev.clone(), any::<bool>()).prop_map(|(dev, typed)| Op::Connect { dev, typed }),
        1 => dev.clone().prop_map(|dev| Op::Disconnect { dev }),
        3 => (dev.clone(), any::<bool>())
            .prop_map(|(dev, timestamped)| Op::Telemetry { dev, timestamped }),
        1 => (dev.clone(), dev.clone()).prop_map(|(a, b)| Op::TelemetryBatch { a, b }),
        2 => dev.clone().prop_map(|dev| Op::Attributes { dev }),
        1 => dev.clone().prop_map(|dev| Op::Claim { dev }),
        4 => (dev.clone(), any::<bool>(), 0usize..3)
            .prop_map(|(dev, shared, extra)| Op::RequestAttributes { dev, shared, extra }),
        1 => (0u8..6).prop_map(|what| Op::EmptyName { what }),
        2 => (0u8..3).prop_map(|what| Op::DeviceData { what }),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(client, shared)| Op::DeviceRequest { client, shared }),
        2 => Just(Op::ClientRpc),
        4 => any::<usize>().prop_map(|pick| Op::RpcReply { pick }),
        1 => (proptest::option::of(any::<usize>()), proptest::option::of(dev.clone()), 0u64..1000)
            .prop_map(|(retired, dev, id)| Op::RpcReplyUnknown { retired, dev, id }),
        1 => (0u8..4, dev, any::<bool>()).prop_map(|(which, dev, qos1)| Op::Raw { which, dev, qos1 }),
        5 => Just(Op::Reconnect),
        2 => Just(Op::Open),
        1 => Just(Op::DropTransport),
        3 => prop_oneof![3 => Just(false), 1 => Just(true)].prop_map(|refuse| Op::ConnAck { refuse }),
        2 => proptest::option::weighted(0.2, any::<usize>()).prop_map(|reject| Op::SubAck { reject }),
        1 => Just(Op::PingResp),
        1 => prop_oneof![Just(0x00u8), Just(0x8E), Just(0x97), Just(0x98)].prop_map(Op::ServerDisconnect),
        10 => (any::<usize>(), prop_oneof![6 => Just(0u8), 1 => Just(0x10), 1 => Just(0x80), 1 => Just(0x97), 1 => Just(0x99)])
            .prop_map(|(pick, code)| Op::PubAck { pick, code }),
        1 => any::<usize>().prop_map(|pick| Op::DuplicatePubAck { pick }),
        3 => Just(Op::AckAll),
        20 => (server_msg(), prop_oneof![3 => Just(true), 1 => Just(false)])
            .prop_map(|(msg, qos1)| Op::Server { msg, qos1 }),
        3 => prop_oneof![4 => 0u64..3_000, 1 => 0u64..40_000].prop_map(Op::Advance),
        2 => Just(Op::AdvanceToTimeout),
    ]
}

// ----- model ------------------------------------------------------------------------------

/// What a request is, as far as its outcome is concerned.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Ends in Delivered/Sent or Failed.
    Plain,
    /// `v1/gateway/connect`: a rejection forgets the device.
    Connect { device: String },
    /// Ends in AttributeResponse (for `device`, its current name) or Failed.
    GwAttr {
        device: String,
        client: bool,
        single_key: Option<String>,
    },
    /// Ends in AttributeResponse (own device) or Failed.
    DevAttr,
    /// Ends in RpcResponse or Failed.
    ClientRpc,
}

impl Kind {
    fn awaits_response(&self) -> bool {
        matches!(self, Kind::GwAttr { .. } | Kind::DevAttr | Kind::ClientRpc)
    }
}

#[derive(Debug, Clone)]
enum TopicRule {
    Exact(String),
    Prefix(&'static str),
}

#[derive(Debug)]
struct Req {
    kind: Kind,
    qos1: bool,
    topic: TopicRule,
    outcomes: u32,
    /// Whether its payload carries its `tag-N` (disconnects and untyped connects do not).
    tagged: bool,
    /// Its outcome, once there is one (for messages).
    ended: Option<String>,
    /// Sub-devices its payload names (gateway commands), sorted.
    devices: Vec<String>,
    /// The server RPC a gateway reply answers.
    rpc: Option<(String, u64)>,
    what: String,
}

/// What a QoS 1 packet id on the current session carries.
#[derive(Debug, Clone)]
enum WireItem {
    App(RequestId),
    Announce(String),
    Keepalive,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SeenKind {
    GwAttr,
    DevAttr,
    ClientRpc,
    Keepalive,
}

/// A request the broker saw on the wire (any session), by wire id.
#[derive(Debug, Clone)]
struct Seen {
    wire: u64,
    kind: SeenKind,
    /// Device named on the wire (renames applied for keep-alives); empty for device API.
    device: String,
    request: Option<RequestId>,
}

/// The broker's view of the current transport.
#[derive(Debug, Default)]
struct Session {
    connect_seen: bool,
    connack_sent: bool,
    /// A successful CONNACK was sent.
    up: bool,
    outstanding: Vec<u16>,
    acked: Vec<u16>,
    items: HashMap<u16, WireItem>,
    subscribe: Option<(u16, Vec<String>)>,
    next_pkid: u16,
    /// Sub-devices registered at CONNACK not yet announced on this session.
    obligations: BTreeSet<String>,
    /// The last application request sent on this session.
    last_app: u64,
}

/// Which outcome events a step may produce (`Sent` is allowed too, except for bad input).
#[derive(Debug)]
enum Outcomes {
    Exactly(Vec<Event>),
    Failures(Vec<RequestError>),
}

/// Which other (non-connection, non-outcome) events a step may produce.
#[derive(Debug)]
enum Api {
    Exactly(Vec<Event>),
    NothingOrUnmatched {
        topic: String,
        id: u64,
    },
    /// Exactly one warning about this topic (invalid message, or unmatched response).
    OneWarning {
        topic: String,
    },
}

#[derive(Debug)]
struct Expect {
    what: String,
    outcomes: Outcomes,
    api: Api,
    may_connect: bool,
    may_disconnect: bool,
    bad_input: bool,
    /// Registration states the step must leave behind.
    registered_after: Vec<(String, bool)>,
}

impl Expect {
    fn quiet(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            outcomes: Outcomes::Failures(Vec::new()),
            api: Api::Exactly(Vec::new()),
            may_connect: false,
            may_disconnect: false,
            bad_input: false,
            registered_after: Vec::new(),
        }
    }

    fn server(what: impl Into<String>, api: Vec<Event>) -> Self {
        Self {
            outcomes: Outcomes::Exactly(Vec::new()),
            api: Api::Exactly(api),
            ..Self::quiet(what)
        }
    }

    fn bad(what: impl Into<String>, api: Api) -> Self {
        Self {
            outcomes: Outcomes::Exactly(Vec::new()),
            api,
            bad_input: true,
            ..Self::quiet(what)
        }
    }

    fn disconnecting(what: impl Into<String>, errors: Vec<RequestError>) -> Self {
        Self {
            outcomes: Outcomes::Failures(errors),
            may_disconnect: true,
            ..Self::quiet(what)
        }
    }
}

struct Model {
    h: Harness,
    /// `Role::Gateway` (else `Role::Device`).
    gateway: bool,
    v5: bool,
    telemetry_qos1: bool,
    s: Session,
    seen: Vec<Seen>,
    reqs: HashMap<RequestId, Req>,
    tags: HashMap<u64, RequestId>,
    next_tag: u64,
    last_id: u64,
    /// Server RPCs awaiting a reply, oldest first, as the client should hold them.
    rpcs: Vec<(Option<String>, u64, TopicFamily)>,
    /// Server RPCs replied to or forgotten.
    retired: Vec<(Option<String>, u64)>,
    rpc_next: HashMap<Option<String>, u64>,
    closed: bool,
    last_reannounced: u64,
    step_no: usize,
}

fn tagged_values(tag: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(tag.to_owned(), json!(1));
    m.insert("temperature".to_owned(), json!(21.5));
    m
}

/// The `tag-N` in a client payload (any string or key, or a comma-separated part of one).
fn find_tag(payload: &[u8]) -> Option<u64> {
    fn check(s: &str, out: &mut Option<u64>) {
        for part in s.split(',') {
            if let Some(n) = part.strip_prefix("tag-").and_then(|r| r.parse().ok()) {
                *out = Some(n);
            }
        }
    }
    fn walk(v: &Value, out: &mut Option<u64>) {
        match v {
            Value::String(s) => check(s, out),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => {
                for (k, x) in m {
                    check(k, out);
                    walk(x, out);
                }
            }
            _ => {}
        }
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let mut out = None;
    walk(&v, &mut out);
    out
}

fn id_in(topic: &str, prefix: &str) -> u64 {
    topic[prefix.len()..]
        .parse()
        .unwrap_or_else(|_| panic!("client published on {topic:?}: no numeric id"))
}

impl Model {
    fn new(version: ProtocolVersion, seed: u64, telemetry_qos0: bool, gateway: bool) -> Self {
        let mut config = api_config(version, seed, telemetry_qos0);
        if !gateway {
            config.role = Role::Device;
        }
        Self {
            h: Harness::new(config),
            gateway,
            v5: version == ProtocolVersion::V5,
            telemetry_qos1: !telemetry_qos0,
            s: Session::default(),
            seen: Vec::new(),
            reqs: HashMap::new(),
            tags: HashMap::new(),
            next_tag: 0,
            last_id: 0,
            rpcs: Vec::new(),
            retired: Vec::new(),
            rpc_next: HashMap::new(),
            closed: false,
            last_reannounced: 0,
            step_no: 0,
        }
    }

    fn registered(&self, device: &str) -> bool {
        self.h.conn.is_sub_device_registered(device)
    }

    fn registered_set(&self) -> BTreeSet<String> {
        POOL.iter()
            .filter(|d| self.registered(d))
            .map(|d| (*d).to_owned())
            .collect()
    }

    /// What the registry bound predicts for a command naming `devices`.
    fn device_check(&self, devices: &[&str]) -> Result<(), CommandError> {
        let set: BTreeSet<&str> = devices.iter().copied().collect();
        let new = set.iter().filter(|d| !self.registered(d)).count();
        if self.registered_set().len() + new > MAX_SUB_DEVICES {
            Err(CommandError::TooManyDevices {
                max: MAX_SUB_DEVICES,
            })
        } else {
            Ok(())
        }
    }

    fn request_room(&self) -> Result<(), CommandError> {
        if self.h.conn.stats().pending_requests >= MAX_PENDING_REQUESTS {
            Err(CommandError::TooManyRequests {
                max: MAX_PENDING_REQUESTS,
            })
        } else {
            Ok(())
        }
    }

    fn tag(&mut self) -> (u64, String) {
        self.next_tag += 1;
        (self.next_tag, format!("tag-{}", self.next_tag))
    }

    /// Issues a command; `predicted` is `Ok` when it must be accepted (or refused for a full
    /// buffer), or the exact refusal.
    #[allow(clippy::too_many_arguments)]
    fn command(
        &mut self,
        cmd: Command,
        tag: u64,
        kind: Kind,
        qos1: bool,
        topic: TopicRule,
        predicted: Result<(), CommandError>,
    ) -> Option<RequestId> {
        let what = format!("{cmd:?}");
        let predicted = if !self.gateway && matches!(cmd, Command::Gateway(_)) {
            Err(CommandError::NotAGateway)
        } else {
            predicted
        };
        let result = self.h.conn.command(self.h.now, cmd);
        self.h.drain();
        let predicted = if self.closed {
            Err(CommandError::Closed)
        } else {
            predicted
        };
        match (&result, &predicted) {
            (Ok(_), Ok(())) | (Err(CommandError::QueueFull { .. }), Ok(())) => {}
            (Err(e), Err(p)) if e == p => {}
            _ => panic!("command {what}: got {result:?}, the model predicted {predicted:?}"),
        }
        let id = result.ok()?;
        assert!(
            id.get() > self.last_id,
            "request id {id} not above the previous {}",
            self.last_id
        );
        self.last_id = id.get();
        self.tags.insert(tag, id);
        self.reqs.insert(
            id,
            Req {
                kind,
                qos1,
                topic,
                outcomes: 0,
                tagged: true,
                ended: None,
                devices: Vec::new(),
                rpc: None,
                what,
            },
        );
        Some(id)
    }

    /// A request the broker saw: when `targeted`, one of `kinds` whose request is unfinished
    /// (keep-alives always qualify), else (or if there is none) any.
    fn pick_seen(&self, pick: usize, targeted: bool, kinds: &[SeenKind]) -> Option<Seen> {
        let wanted: Vec<&Seen> = self
            .seen
            .iter()
            .filter(|s| {
                targeted
                    && kinds.contains(&s.kind)
                    && s.request.is_none_or(|r| self.reqs[&r].outcomes == 0)
            })
            .collect();
        let pool: Vec<&Seen> = if wanted.is_empty() {
            self.seen.iter().collect()
        } else {
            wanted
        };
        (!pool.is_empty()).then(|| pool[pick % pool.len()].clone())
    }

    /// Records what the payload of accepted request `id` must name.
    fn annotate(&mut self, id: Option<RequestId>, devices: &[&str], rpc: Option<(String, u64)>) {
        if let Some(req) = id.and_then(|id| self.reqs.get_mut(&id)) {
            let set: BTreeSet<String> = devices.iter().map(|d| (*d).to_owned()).collect();
            req.devices = set.into_iter().collect();
            req.rpc = rpc;
        }
    }

    fn next_rpc_id(&mut self, device: &Option<String>, repeat: Option<usize>) -> u64 {
        let counter = self.rpc_next.entry(device.clone()).or_insert(0);
        match repeat {
            Some(r) if *counter > 0 => r as u64 % *counter,
            _ => {
                let id = *counter;
                *counter += 1;
                id
            }
        }
    }

    /// Mirrors the client's table of pending server RPCs; returns the one it must forget.
    fn rpc_insert(
        &mut self,
        device: Option<String>,
        id: u64,
        family: TopicFamily,
    ) -> Option<(Option<String>, u64)> {
        if let Some(i) = self
            .rpcs
            .iter()
            .position(|(d, x, _)| *d == device && *x == id)
        {
            self.rpcs.remove(i);
        }
        let mut evicted = None;
        if self.rpcs.len() >= MAX_PENDING_RPCS {
            let (d, x, _) = self.rpcs.remove(0);
            self.retired.push((d.clone(), x));
            evicted = Some((d, x));
        }
        self.rpcs.push((device, id, family));
        evicted
    }

    // ----- steps ------------------------------------------------------------------------

    fn step(&mut self, op: Op) {
        if let Op::AckAll = op {
            for _ in 0..8 {
                if !self.s.up || self.s.outstanding.is_empty() {
                    break;
                }
                self.step(Op::PubAck { pick: 0, code: 0 });
            }
            return;
        }
        self.step_no += 1;
        let what = format!("step {} {op:?}", self.step_no);
        let ex = self.act(op, what);
        let events = self.h.take_events();
        // Requests that end in this step without being sent in it may be skipped on the wire.
        let finishing: HashSet<RequestId> = events
            .iter()
            .filter_map(|e| match e {
                Event::Delivered(r)
                | Event::Failed { request: r, .. }
                | Event::AttributeResponse { request: r, .. }
                | Event::RpcResponse { request: r, .. } => Some(*r),
                _ => None,
            })
            .collect();
        if self.h.transport_open {
            self.absorb_client(&finishing);
        } else {
            self.h.to_server.clear();
            self.s = Session::default();
            self.last_reannounced = self.h.conn.stats().reannounced;
        }
        self.absorb_events(events, &ex);
        for (device, want) in &ex.registered_after {
            assert_eq!(
                self.registered(device),
                *want,
                "{}: sub-device {device:?} should {}be registered afterwards",
                ex.what,
                if *want { "" } else { "no longer " }
            );
        }
        self.check(&ex.what);
    }

    fn act(&mut self, op: Op, what: String) -> Expect {
        let up = self.s.up && self.h.transport_open;
        match op {
            Op::Connect { dev, typed } => {
                let device = name(dev);
                let (n, tag) = self.tag();
                let predicted = self.device_check(&[&device]);
                let cmd = Command::connect_device(device.clone(), typed.then_some(tag.as_str()));
                let ok = self.command(
                    cmd,
                    n,
                    Kind::Connect {
                        device: device.clone(),
                    },
                    true,
                    TopicRule::Exact(topic::GATEWAY_CONNECT.into()),
                    predicted,
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&device], None);
                if let Some(id) = ok {
                    self.reqs.get_mut(&id).unwrap().tagged = typed;
                    ex.registered_after.push((device, true));
                }
                ex
            }
            Op::Disconnect { dev } => {
                let device = name(dev);
                let (n, _) = self.tag();
                let ok = self.command(
                    Command::disconnect_device(device.clone()),
                    n,
                    Kind::Plain,
                    true,
                    TopicRule::Exact(topic::GATEWAY_DISCONNECT.into()),
                    Ok(()),
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&device], None);
                if let Some(id) = ok {
                    self.reqs.get_mut(&id).unwrap().tagged = false;
                    ex.registered_after.push((device, false));
                }
                ex
            }
            Op::Telemetry { dev, timestamped } => {
                let device = name(dev);
                let (n, tag) = self.tag();
                let values = tagged_values(&tag);
                let entry = if timestamped {
                    TelemetryEntry::at(1_700_000_000_000 + n as i64, values)
                } else {
                    TelemetryEntry::now(values)
                };
                let predicted = self.device_check(&[&device]);
                let qos1 = self.telemetry_qos1;
                let ok = self.command(
                    Command::Gateway(GatewayCommand::Telemetry {
                        device: device.clone(),
                        entries: vec![entry],
                    }),
                    n,
                    Kind::Plain,
                    qos1,
                    TopicRule::Exact(topic::GATEWAY_TELEMETRY.into()),
                    predicted,
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&device], None);
                if ok.is_some() {
                    ex.registered_after.push((device, true));
                }
                ex
            }
            Op::TelemetryBatch { a, b } => {
                let (da, db) = (name(a), name(b));
                let (n, tag) = self.tag();
                let mut devices = BTreeMap::new();
                devices.insert(da.clone(), vec![TelemetryEntry::now(tagged_values(&tag))]);
                devices.insert(db.clone(), vec![TelemetryEntry::now(tagged_values(&tag))]);
                let predicted = self.device_check(&[&da, &db]);
                let qos1 = self.telemetry_qos1;
                let ok = self.command(
                    Command::Gateway(GatewayCommand::TelemetryBatch(GatewayTelemetry { devices })),
                    n,
                    Kind::Plain,
                    qos1,
                    TopicRule::Exact(topic::GATEWAY_TELEMETRY.into()),
                    predicted,
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&da, &db], None);
                if ok.is_some() {
                    ex.registered_after.push((da, true));
                    ex.registered_after.push((db, true));
                }
                ex
            }
            Op::Attributes { dev } => {
                let device = name(dev);
                let (n, tag) = self.tag();
                let predicted = self.device_check(&[&device]);
                let qos1 = self.telemetry_qos1;
                let ok = self.command(
                    Command::device_attributes(device.clone(), tagged_values(&tag)),
                    n,
                    Kind::Plain,
                    qos1,
                    TopicRule::Exact(topic::GATEWAY_ATTRIBUTES.into()),
                    predicted,
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&device], None);
                if ok.is_some() {
                    ex.registered_after.push((device, true));
                }
                ex
            }
            Op::Claim { dev } => {
                let device = name(dev);
                let (n, tag) = self.tag();
                let predicted = self.device_check(&[&device]);
                let ok = self.command(
                    Command::Gateway(GatewayCommand::Claim {
                        device: device.clone(),
                        claim: Claim {
                            secret_key: Some(tag),
                            duration_ms: Some(60_000),
                        },
                    }),
                    n,
                    Kind::Plain,
                    true,
                    TopicRule::Exact(topic::GATEWAY_CLAIM.into()),
                    predicted,
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&device], None);
                if ok.is_some() {
                    ex.registered_after.push((device, true));
                }
                ex
            }
            Op::RequestAttributes { dev, shared, extra } => {
                let device = name(dev);
                let (n, tag) = self.tag();
                let mut keys = vec![tag.clone()];
                keys.extend((0..extra).map(|i| format!("key{i}")));
                let predicted = self.device_check(&[&device]).and(self.request_room());
                let scope = if shared {
                    AttributeScope::Shared
                } else {
                    AttributeScope::Client
                };
                let ok = self.command(
                    Command::request_device_attributes(device.clone(), scope, keys),
                    n,
                    Kind::GwAttr {
                        device: device.clone(),
                        client: !shared,
                        single_key: (extra == 0).then_some(tag),
                    },
                    true,
                    TopicRule::Exact(topic::GATEWAY_ATTRIBUTES_REQUEST.into()),
                    predicted,
                );
                let mut ex = Expect::quiet(what);
                self.annotate(ok, &[&device], None);
                if ok.is_some() {
                    ex.registered_after.push((device, true));
                }
                ex
            }
            Op::EmptyName { what: which } => {
                let (n, tag) = self.tag();
                let d = String::new();
                let cmd = match which {
                    0 => Command::connect_device(d, None),
                    1 => Command::disconnect_device(d),
                    2 => Command::device_telemetry(d, tagged_values(&tag)),
                    3 => Command::device_attributes(d, tagged_values(&tag)),
                    4 => Command::Gateway(GatewayCommand::Claim {
                        device: d,
                        claim: Claim::default(),
                    }),
                    _ => Command::request_device_attributes(d, AttributeScope::Client, [tag]),
                };
                self.command(
                    cmd,
                    n,
                    Kind::Plain,
                    true,
                    TopicRule::Prefix(""),
                    Err(CommandError::EmptyDeviceName),
                );
                Expect::quiet(what)
            }
            Op::DeviceData { what: which } => {
                let (n, tag) = self.tag();
                let (cmd, qos1, t) = match which {
                    0 => (
                        Command::telemetry(tagged_values(&tag)),
                        self.telemetry_qos1,
                        topic::DEVICE_TELEMETRY,
                    ),
                    1 => (
                        Command::attributes(tagged_values(&tag)),
                        self.telemetry_qos1,
                        topic::DEVICE_ATTRIBUTES,
                    ),
                    _ => (
                        Command::Device(DeviceCommand::Claim(Claim {
                            secret_key: Some(tag),
                            duration_ms: None,
                        })),
                        true,
                        topic::DEVICE_CLAIM,
                    ),
                };
                self.command(
                    cmd,
                    n,
                    Kind::Plain,
                    qos1,
                    TopicRule::Exact(t.into()),
                    Ok(()),
                );
                Expect::quiet(what)
            }
            Op::DeviceRequest { client, shared } => {
                let (n, tag) = self.tag();
                let (client_keys, shared_keys) = if client {
                    (
                        vec![tag],
                        if shared {
                            vec!["sk".to_owned()]
                        } else {
                            vec![]
                        },
                    )
                } else {
                    (vec![], vec![tag, "sk".to_owned()])
                };
                let predicted = self.request_room();
                self.command(
                    Command::request_attributes(client_keys, shared_keys),
                    n,
                    Kind::DevAttr,
                    true,
                    TopicRule::Prefix(topic::DEVICE_ATTRIBUTES_REQUEST_PREFIX),
                    predicted,
                );
                Expect::quiet(what)
            }
            Op::ClientRpc => {
                let (n, tag) = self.tag();
                let predicted = self.request_room();
                self.command(
                    Command::rpc(tag, json!({ "n": n })),
                    n,
                    Kind::ClientRpc,
                    true,
                    TopicRule::Prefix(topic::DEVICE_RPC_REQUEST_PREFIX),
                    predicted,
                );
                Expect::quiet(what)
            }
            Op::RpcReply { pick } => {
                if self.rpcs.is_empty() {
                    return Expect::quiet(what);
                }
                let (device, id, family) = self.rpcs[pick % self.rpcs.len()].clone();
                // A reply keeps a tracked sub-device alive but never starts tracking one.
                let was_registered = device.as_ref().map(|d| self.registered(d));
                let (n, tag) = self.tag();
                let (cmd, rule) = match &device {
                    Some(d) => (
                        Command::device_rpc_reply(d.clone(), id, json!(tag)),
                        TopicRule::Exact(topic::GATEWAY_RPC.into()),
                    ),
                    None => (
                        Command::rpc_reply(id, json!(tag)),
                        TopicRule::Exact(topic::rpc_response_topic_v2(family, id)),
                    ),
                };
                let ok = self.command(cmd, n, Kind::Plain, true, rule, Ok(()));
                let mut ex = Expect::quiet(what);
                if let Some(d) = &device {
                    self.annotate(ok, &[d], Some((d.clone(), id)));
                }
                if ok.is_some() {
                    self.rpcs.retain(|(d, x, _)| !(*d == device && *x == id));
                    self.retired.push((device.clone(), id));
                    if let (Some(d), Some(was)) = (device, was_registered) {
                        ex.registered_after.push((d, was));
                    }
                }
                ex
            }
            Op::RpcReplyUnknown { retired, dev, id } => {
                let (device, id) = match retired {
                    Some(r) if !self.retired.is_empty() => {
                        self.retired[r % self.retired.len()].clone()
                    }
                    _ => (dev.map(name), 1000 + id),
                };
                if self.rpcs.iter().any(|(d, x, _)| *d == device && *x == id) {
                    return Expect::quiet(what);
                }
                let (n, tag) = self.tag();
                let cmd = match &device {
                    Some(d) => Command::device_rpc_reply(d.clone(), id, json!(tag)),
                    None => Command::rpc_reply(id, json!(tag)),
                };
                self.command(
                    cmd,
                    n,
                    Kind::Plain,
                    true,
                    TopicRule::Prefix(""),
                    Err(CommandError::UnknownRpc { device, id }),
                );
                Expect::quiet(what)
            }
            Op::Raw { which, dev, qos1 } => {
                let (n, tag) = self.tag();
                let (t, payload): (String, Vec<u8>) = match which {
                    0 => (
                        topic::DEVICE_TELEMETRY.into(),
                        Value::Object(tagged_values(&tag)).to_vec(),
                    ),
                    1 => ("app/custom/uplink".into(), json!(tag).to_vec()),
                    2 => {
                        let mut devices = BTreeMap::new();
                        devices.insert(name(dev), vec![TelemetryEntry::now(tagged_values(&tag))]);
                        (
                            topic::GATEWAY_TELEMETRY.into(),
                            GatewayTelemetry { devices }.to_vec(),
                        )
                    }
                    _ => ("bad/+/topic".into(), json!(tag).to_vec()),
                };
                let predicted = if t.contains('+') {
                    Err(CommandError::InvalidTopic(t.clone()))
                } else {
                    Ok(())
                };
                let cmd = Command::Publish {
                    topic: t.clone(),
                    payload: Bytes::from(payload),
                    qos: if qos1 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                };
                let ok = self.command(cmd, n, Kind::Plain, qos1, TopicRule::Exact(t), predicted);
                if which == 2 {
                    self.annotate(ok, &[&name(dev)], None);
                }
                Expect::quiet(what)
            }
            Op::Reconnect => {
                if !self.h.open_requested {
                    return Expect::quiet(what);
                }
                self.h.open();
                self.s = Session::default();
                self.absorb_client(&HashSet::new());
                self.act(Op::ConnAck { refuse: false }, what)
            }
            Op::Open => {
                if self.h.open_requested {
                    self.h.open();
                    self.s = Session::default();
                }
                Expect::quiet(what)
            }
            Op::DropTransport => {
                if self.h.transport_open || self.h.open_requested {
                    self.h.open_requested = false;
                    self.h.drop_transport();
                }
                Expect::disconnecting(what, vec![RequestError::ConnectionLost])
            }
            Op::ConnAck { refuse } => {
                if !(self.h.transport_open && self.s.connect_seen && !self.s.connack_sent) {
                    return Expect::quiet(what);
                }
                let code = match (refuse, self.v5) {
                    (false, _) => 0,
                    (true, true) => 0x86,
                    (true, false) => 5,
                };
                let registered = self.registered_set();
                self.s.connack_sent = true;
                self.h.send(Packet::ConnAck(wire::ConnAck {
                    session_present: false,
                    code,
                }));
                if code == 0 {
                    self.s.up = true;
                    self.s.obligations = registered;
                    Expect {
                        may_connect: true,
                        ..Expect::quiet(what)
                    }
                } else {
                    Expect::disconnecting(what, vec![RequestError::ConnectionLost])
                }
            }
            Op::SubAck { reject } => {
                let mut ex = Expect::quiet(what);
                if !up {
                    return ex;
                }
                if let Some((pkid, filters)) = self.s.subscribe.take() {
                    let mut codes = vec![1u8; filters.len()];
                    let mut api = Vec::new();
                    if let Some(r) = reject {
                        let i = r % filters.len();
                        codes[i] = 0x80;
                        api.push(Event::Warning(Warning::SubscriptionRejected {
                            filter: filters[i].clone(),
                            code: 0x80,
                        }));
                    }
                    self.h.send(Packet::SubAck(wire::SubAck { pkid, codes }));
                    ex.api = Api::Exactly(api);
                }
                ex
            }
            Op::PingResp => {
                if up {
                    self.h.send(Packet::PingResp);
                }
                Expect::quiet(what)
            }
            Op::ServerDisconnect(code) => {
                if up {
                    let code = if self.v5 { code } else { 0 };
                    self.h.send(Packet::Disconnect(wire::Disconnect { code }));
                }
                Expect::disconnecting(what, vec![RequestError::ConnectionLost])
            }
            Op::PubAck { pick, code } => self.puback(up, pick, code, what),
            Op::AckAll => unreachable!("expanded in step()"),
            Op::DuplicatePubAck { pick } => {
                if up && !self.s.acked.is_empty() {
                    let pkid = self.s.acked[pick % self.s.acked.len()];
                    let in_use = self.s.outstanding.contains(&pkid)
                        || self.s.subscribe.as_ref().is_some_and(|(p, _)| *p == pkid);
                    if !in_use {
                        self.h.send(Packet::PubAck(wire::PubAck { pkid, code: 0 }));
                    }
                }
                Expect {
                    outcomes: Outcomes::Exactly(Vec::new()),
                    ..Expect::quiet(what)
                }
            }
            Op::Server { msg, qos1 } => {
                if !up {
                    return Expect::quiet(what);
                }
                let (t, payload, ex) = self.server_message(msg, what);
                let pkid = if qos1 {
                    self.s.next_pkid = self.s.next_pkid.checked_add(1).unwrap_or(1);
                    Some(self.s.next_pkid)
                } else {
                    None
                };
                self.h.send(server_publish(&t, payload, pkid));
                ex
            }
            Op::Advance(ms) => {
                self.h.advance(Duration::from_millis(ms));
                Expect::disconnecting(
                    what,
                    vec![RequestError::Timeout, RequestError::ConnectionLost],
                )
            }
            Op::AdvanceToTimeout => {
                if self.h.conn.poll_timeout().is_some() {
                    self.h.advance_to_timeout();
                }
                Expect::disconnecting(
                    what,
                    vec![RequestError::Timeout, RequestError::ConnectionLost],
                )
            }
        }
    }

    fn puback(&mut self, up: bool, pick: usize, code: u8, what: String) -> Expect {
        let mut ex = Expect {
            outcomes: Outcomes::Exactly(Vec::new()),
            ..Expect::quiet(what)
        };
        if !up || self.s.outstanding.is_empty() {
            return ex;
        }
        let code = if self.v5 { code } else { 0 };
        let rc = ReasonCode::from_u8(code);
        let pkid = self.s.outstanding.remove(pick % self.s.outstanding.len());
        self.s.acked.push(pkid);
        let item = self.s.items.remove(&pkid);
        match item.expect("every outstanding packet id carries something") {
            WireItem::App(r) => {
                let req = &self.reqs[&r];
                if req.outcomes == 0 {
                    if !rc.is_success() {
                        ex.outcomes = Outcomes::Exactly(vec![Event::Failed {
                            request: r,
                            error: RequestError::Rejected(rc),
                        }]);
                    } else if !req.kind.awaits_response() {
                        ex.outcomes = Outcomes::Exactly(vec![Event::Delivered(r)]);
                    }
                }
            }
            WireItem::Announce(device) => {
                if !rc.is_success() && self.registered(&device) {
                    ex.api = Api::Exactly(vec![Event::Warning(Warning::ReannounceRejected {
                        device: device.clone(),
                        code: rc,
                    })]);
                    ex.registered_after.push((device, false));
                }
            }
            WireItem::Keepalive => {}
        }
        self.h.send(Packet::PubAck(wire::PubAck { pkid, code }));
        ex
    }

    /// Builds a server PUBLISH and what it must produce.
    fn server_message(&mut self, msg: ServerMsg, what: String) -> (String, Vec<u8>, Expect) {
        if !self.gateway {
            if let Some((t, payload)) = self.gateway_only(&msg) {
                let ex = Expect::bad(
                    what,
                    Api::Exactly(vec![Event::Message {
                        topic: t.clone(),
                        payload: Bytes::from(payload.clone()),
                    }]),
                );
                return (t, payload, ex);
            }
            let notification = match &msg {
                ServerMsg::Deleted { dev, .. } => {
                    Some(GatewayNotification::DeviceDeleted { device: name(*dev) })
                }
                ServerMsg::Renamed { from, to, .. } => Some(GatewayNotification::DeviceRenamed {
                    old_name: name(*from),
                    new_name: name(*to),
                }),
                _ => None,
            };
            if let Some(n) = notification {
                // A device is not told about children: an ordinary server RPC.
                let id = self.next_rpc_id(&None, None);
                let rpc = n.to_rpc();
                let api = self.own_rpc(id, TopicFamily::V1, &rpc);
                return (
                    topic::rpc_request_topic(id),
                    rpc.to_vec(),
                    Expect::server(what, api),
                );
            }
        }
        match msg {
            ServerMsg::GatewayAnswer {
                pick,
                targeted,
                how,
                result,
            } => {
                let t = topic::GATEWAY_ATTRIBUTES_RESPONSE.to_owned();
                let target =
                    self.pick_seen(pick, targeted, &[SeenKind::GwAttr, SeenKind::Keepalive]);
                let pending = target
                    .as_ref()
                    .and_then(|s| s.request)
                    .filter(|r| self.reqs[r].outcomes == 0);
                let (wire_id, right) = match &target {
                    Some(s) => {
                        let right = match pending.map(|r| &self.reqs[&r].kind) {
                            Some(Kind::GwAttr { device, .. }) => device.clone(),
                            _ if s.device.is_empty() => name(0),
                            _ => s.device.clone(),
                        };
                        (s.wire, right)
                    }
                    None => (UNKNOWN_WIRE_BASE + 7, name(0)),
                };
                let (id, device) = match how {
                    How::Right => (wire_id, right.clone()),
                    How::WrongDevice(i) => {
                        let d = if name(i) == right {
                            name(i + 1)
                        } else {
                            name(i)
                        };
                        (wire_id, d)
                    }
                    How::UnknownId(x) => (x, right.clone()),
                };
                let found: Map<String, Value> =
                    [("x".to_owned(), json!(1)), ("y".to_owned(), json!("two"))]
                        .into_iter()
                        .collect();
                let result = match result {
                    0 => AttributeResult::NotFound,
                    1 => AttributeResult::Value(json!(7)),
                    _ => AttributeResult::Values(found),
                };
                let payload = GatewayAttributeResponse {
                    id,
                    device: device.clone(),
                    result: result.clone(),
                }
                .to_vec();
                let right_answer = matches!(how, How::Right) || device == right;
                let unmatched = vec![Event::Warning(Warning::UnmatchedResponse {
                    topic: t.clone(),
                    id,
                })];
                let ex = match (target.as_ref().map(|s| s.kind), pending, right_answer) {
                    (Some(SeenKind::GwAttr), Some(r), true) if id == wire_id => {
                        let Kind::GwAttr {
                            client, single_key, ..
                        } = &self.reqs[&r].kind
                        else {
                            unreachable!()
                        };
                        let values = match (result, single_key) {
                            (AttributeResult::Values(m), _) => m,
                            (AttributeResult::Value(v), Some(k)) => {
                                [(k.clone(), v)].into_iter().collect()
                            }
                            _ => Map::new(),
                        };
                        let (client_map, shared_map) = if *client {
                            (values, Map::new())
                        } else {
                            (Map::new(), values)
                        };
                        Expect {
                            outcomes: Outcomes::Exactly(vec![Event::AttributeResponse {
                                request: r,
                                device: Some(device),
                                client: client_map,
                                shared: shared_map,
                            }]),
                            ..Expect::server(what, Vec::new())
                        }
                    }
                    (Some(SeenKind::Keepalive), _, true) if id == wire_id => Expect::bad(
                        what,
                        Api::NothingOrUnmatched {
                            topic: t.clone(),
                            id,
                        },
                    ),
                    _ => Expect::bad(what, Api::Exactly(unmatched)),
                };
                (t, payload, ex)
            }
            ServerMsg::DeviceAnswer {
                pick,
                targeted,
                unknown,
            } => {
                let target = match unknown {
                    None => self.pick_seen(pick, targeted, &[SeenKind::DevAttr]),
                    Some(_) => None,
                };
                let id = target
                    .as_ref()
                    .map_or(unknown.unwrap_or(UNKNOWN_WIRE_BASE), |s| s.wire);
                let t = topic::attribute_response_topic(id);
                let response = DeviceAttributeResponse {
                    client: [("c".to_owned(), json!(1))].into_iter().collect(),
                    shared: [("s".to_owned(), json!("x"))].into_iter().collect(),
                };
                let pending = target
                    .as_ref()
                    .filter(|s| s.kind == SeenKind::DevAttr)
                    .and_then(|s| s.request)
                    .filter(|r| self.reqs[r].outcomes == 0);
                let ex = match pending {
                    Some(r) => Expect {
                        outcomes: Outcomes::Exactly(vec![Event::AttributeResponse {
                            request: r,
                            device: None,
                            client: response.client.clone(),
                            shared: response.shared.clone(),
                        }]),
                        ..Expect::server(what, Vec::new())
                    },
                    None => Expect::bad(
                        what,
                        Api::Exactly(vec![Event::Warning(Warning::UnmatchedResponse {
                            topic: t.clone(),
                            id,
                        })]),
                    ),
                };
                (t, response.to_vec(), ex)
            }
            ServerMsg::RpcAnswer {
                pick,
                targeted,
                unknown,
                timeout,
            } => {
                let target = match unknown {
                    None => self.pick_seen(pick, targeted, &[SeenKind::ClientRpc]),
                    Some(_) => None,
                };
                let id = target
                    .as_ref()
                    .map_or(unknown.unwrap_or(UNKNOWN_WIRE_BASE), |s| s.wire);
                let t = topic::rpc_response_topic(id);
                let response = if timeout {
                    ClientRpcResponse::Error(ClientRpcResponse::TIMEOUT.into())
                } else {
                    ClientRpcResponse::Ok(json!({ "result": 42 }))
                };
                let pending = target
                    .as_ref()
                    .filter(|s| s.kind == SeenKind::ClientRpc)
                    .and_then(|s| s.request)
                    .filter(|r| self.reqs[r].outcomes == 0);
                let ex = match pending {
                    Some(r) => Expect {
                        outcomes: Outcomes::Exactly(vec![Event::RpcResponse {
                            request: r,
                            response: response.clone(),
                        }]),
                        ..Expect::server(what, Vec::new())
                    },
                    None => Expect::bad(
                        what,
                        Api::Exactly(vec![Event::Warning(Warning::UnmatchedResponse {
                            topic: t.clone(),
                            id,
                        })]),
                    ),
                };
                (t, response.to_vec(), ex)
            }
            ServerMsg::GatewayRpc { dev, repeat } => {
                let device = name(dev);
                let key = Some(device.clone());
                let id = self.next_rpc_id(&key, repeat);
                let params = json!({ "v": id });
                let payload = GatewayRpcRequest {
                    device: device.clone(),
                    id,
                    method: "setValue".into(),
                    params: params.clone(),
                }
                .to_vec();
                let mut api = Vec::new();
                if let Some((d, x)) = self.rpc_insert(key, id, TopicFamily::V1) {
                    api.push(Event::Warning(Warning::ServerRpcForgotten {
                        device: d,
                        id: x,
                    }));
                }
                api.push(Event::RpcRequest {
                    device: Some(device),
                    id,
                    method: "setValue".into(),
                    params,
                });
                (
                    topic::GATEWAY_RPC.to_owned(),
                    payload,
                    Expect::server(what, api),
                )
            }
            ServerMsg::DeviceRpc { repeat, v2 } => {
                let id = self.next_rpc_id(&None, repeat);
                let family = if v2 { TopicFamily::V2 } else { TopicFamily::V1 };
                let rpc = RpcRequest::new("getTime", Value::Null);
                let api = self.own_rpc(id, family, &rpc);
                (
                    topic::rpc_request_topic_v2(family, id),
                    rpc.to_vec(),
                    Expect::server(what, api),
                )
            }
            ServerMsg::GatewayAttributeUpdate { dev, deleted } => {
                let device = name(dev);
                let update = AttributeUpdate {
                    values: [("shared1".to_owned(), json!({"nested": [1, 2]}))]
                        .into_iter()
                        .collect(),
                    deleted: if deleted {
                        vec!["old".into()]
                    } else {
                        Vec::new()
                    },
                };
                let payload = GatewayAttributeUpdate {
                    device: device.clone(),
                    update: update.clone(),
                }
                .to_vec();
                (
                    topic::GATEWAY_ATTRIBUTES.to_owned(),
                    payload,
                    Expect::server(
                        what,
                        vec![Event::AttributeUpdate {
                            device: Some(device),
                            values: update.values,
                            deleted: update.deleted,
                        }],
                    ),
                )
            }
            ServerMsg::DeviceAttributeUpdate => {
                let update = AttributeUpdate {
                    values: [("mode".to_owned(), json!("eco"))].into_iter().collect(),
                    deleted: vec!["gone".into()],
                };
                (
                    topic::DEVICE_ATTRIBUTES.to_owned(),
                    update.to_vec(),
                    Expect::server(
                        what,
                        vec![Event::AttributeUpdate {
                            device: None,
                            values: update.values,
                            deleted: update.deleted,
                        }],
                    ),
                )
            }
            ServerMsg::DisconnectNotice { dev, rate } => {
                let device = name(dev);
                let reason = if rate {
                    DisconnectNotice::REASON_RATE_LIMIT
                } else {
                    DisconnectNotice::REASON_UNSPECIFIED
                };
                let payload = DisconnectNotice {
                    device: device.clone(),
                    reason,
                }
                .to_vec();
                (
                    topic::GATEWAY_DISCONNECT.to_owned(),
                    payload,
                    Expect::server(
                        what,
                        vec![Event::SubDeviceDisconnected {
                            device,
                            reason: ReasonCode::from_u8(reason),
                        }],
                    ),
                )
            }
            ServerMsg::Deleted { dev, busy } => {
                let device = self.notified_device(dev, busy);
                let id = self.next_rpc_id(&None, None);
                let payload = GatewayNotification::DeviceDeleted {
                    device: device.clone(),
                }
                .to_rpc()
                .to_vec();
                let key = Some(device.clone());
                let (gone, kept): (Vec<_>, Vec<_>) =
                    self.rpcs.drain(..).partition(|(d, _, _)| *d == key);
                self.rpcs = kept;
                self.retired
                    .extend(gone.into_iter().map(|(d, x, _)| (d, x)));
                self.s.obligations.remove(&device);
                let mut ex = Expect::server(
                    what,
                    vec![Event::SubDeviceDeleted {
                        device: device.clone(),
                    }],
                );
                ex.registered_after.push((device, false));
                (topic::rpc_request_topic(id), payload, ex)
            }
            ServerMsg::Renamed { from, to, busy } => {
                let (old, new) = (self.notified_device(from, busy), name(to));
                if old == new {
                    // A rename to the same name changes nothing.
                    let id = self.next_rpc_id(&None, None);
                    let n = GatewayNotification::DeviceRenamed {
                        old_name: old.clone(),
                        new_name: new.clone(),
                    };
                    let mut ex = Expect::server(
                        what,
                        vec![Event::SubDeviceRenamed {
                            old_name: old.clone(),
                            new_name: new,
                        }],
                    );
                    ex.registered_after
                        .push((old.clone(), self.registered(&old)));
                    return (topic::rpc_request_topic(id), n.to_rpc().to_vec(), ex);
                }
                let id = self.next_rpc_id(&None, None);
                let payload = GatewayNotification::DeviceRenamed {
                    old_name: old.clone(),
                    new_name: new.clone(),
                }
                .to_rpc()
                .to_vec();
                let old_registered = self.registered(&old);
                let new_registered = self.registered(&new);
                // Pending requests now expect answers under the new name.
                for req in self.reqs.values_mut() {
                    if req.outcomes == 0 {
                        if let Kind::GwAttr { device, .. } = &mut req.kind {
                            if *device == old {
                                device.clone_from(&new);
                            }
                        }
                    }
                }
                for s in &mut self.seen {
                    if s.kind == SeenKind::Keepalive && s.device == old {
                        s.device.clone_from(&new);
                    }
                }
                // Pending server RPCs move; one of the new name with the same id is dropped.
                let (old_key, new_key) = (Some(old.clone()), Some(new.clone()));
                let moving: BTreeSet<u64> = self
                    .rpcs
                    .iter()
                    .filter(|(d, _, _)| *d == old_key)
                    .map(|(_, x, _)| *x)
                    .collect();
                let mut dropped = Vec::new();
                self.rpcs.retain(|(d, x, _)| {
                    let drop = *d == new_key && moving.contains(x);
                    if drop {
                        dropped.push((d.clone(), *x));
                    }
                    !drop
                });
                self.retired.extend(dropped);
                for (d, _, _) in &mut self.rpcs {
                    if *d == old_key {
                        d.clone_from(&new_key);
                    }
                }
                if self.s.obligations.remove(&old) {
                    self.s.obligations.insert(new.clone());
                }
                let mut ex = Expect::server(
                    what,
                    vec![Event::SubDeviceRenamed {
                        old_name: old.clone(),
                        new_name: new.clone(),
                    }],
                );
                if old_registered {
                    ex.registered_after.push((old, false));
                    ex.registered_after.push((new, true));
                } else {
                    ex.registered_after.push((new, new_registered));
                }
                (topic::rpc_request_topic(id), payload, ex)
            }
            ServerMsg::Bad {
                topic: which,
                payload,
                pick,
            } => {
                let (t, p) = self.bad_input(which, payload, pick);
                (
                    t.clone(),
                    p,
                    Expect::bad(what, Api::OneWarning { topic: t }),
                )
            }
            ServerMsg::UnknownTopic { which } => {
                const TOPICS: [&str; 6] = [
                    "v1/devices/me/rpc/request/12x",
                    "v1/devices/me/attributes/response/-1",
                    "v1/devices/me/rpc/response/99999999999999999999999",
                    "v1/gateway/unknown",
                    "custom/downlink",
                    "v2/r/req/p/5",
                ];
                let t = TOPICS[which % TOPICS.len()].to_owned();
                let payload = br#"{"method":"m","params":1}"#.to_vec();
                let ex = Expect::bad(
                    what,
                    Api::Exactly(vec![Event::Message {
                        topic: t.clone(),
                        payload: Bytes::from(payload.clone()),
                    }]),
                );
                (t, payload, ex)
            }
        }
    }

    /// The device a delete/rename notification names: with `busy`, one waiting for its
    /// re-announce on this session or with an unfinished attribute request (if any).
    fn notified_device(&self, dev: usize, busy: bool) -> String {
        let mut candidates: BTreeSet<&String> = self.s.obligations.iter().collect();
        for req in self.reqs.values() {
            if let (0, Kind::GwAttr { device, .. }) = (req.outcomes, &req.kind) {
                candidates.insert(device);
            }
        }
        let candidates: Vec<&String> = candidates.into_iter().collect();
        if busy && !candidates.is_empty() {
            candidates[dev % candidates.len()].clone()
        } else {
            name(dev)
        }
    }

    /// What a server RPC to the connection's own device must produce.
    fn own_rpc(&mut self, id: u64, family: TopicFamily, rpc: &RpcRequest) -> Vec<Event> {
        let mut api = Vec::new();
        if let Some((d, x)) = self.rpc_insert(None, id, family) {
            api.push(Event::Warning(Warning::ServerRpcForgotten {
                device: d,
                id: x,
            }));
        }
        api.push(Event::RpcRequest {
            device: None,
            id,
            method: rpc.method.clone(),
            params: rpc.params.clone(),
        });
        api
    }

    /// On a device connection, a Gateway API downlink is just a message.
    fn gateway_only(&self, msg: &ServerMsg) -> Option<(String, Vec<u8>)> {
        Some(match msg {
            ServerMsg::GatewayAnswer { .. } => (
                topic::GATEWAY_ATTRIBUTES_RESPONSE.into(),
                GatewayAttributeResponse {
                    id: 1,
                    device: name(0),
                    result: AttributeResult::NotFound,
                }
                .to_vec(),
            ),
            ServerMsg::GatewayRpc { dev, .. } => (
                topic::GATEWAY_RPC.into(),
                GatewayRpcRequest {
                    device: name(*dev),
                    id: 0,
                    method: "setValue".into(),
                    params: Value::Null,
                }
                .to_vec(),
            ),
            ServerMsg::GatewayAttributeUpdate { dev, .. } => (
                topic::GATEWAY_ATTRIBUTES.into(),
                GatewayAttributeUpdate {
                    device: name(*dev),
                    update: AttributeUpdate {
                        values: [("k".to_owned(), json!(1))].into_iter().collect(),
                        deleted: Vec::new(),
                    },
                }
                .to_vec(),
            ),
            ServerMsg::DisconnectNotice { dev, .. } => (
                topic::GATEWAY_DISCONNECT.into(),
                DisconnectNotice {
                    device: name(*dev),
                    reason: DisconnectNotice::REASON_RATE_LIMIT,
                }
                .to_vec(),
            ),
            ServerMsg::Bad {
                topic: which,
                payload,
                pick,
            } if which % BAD_TOPICS < 4 => self.bad_input(*which, *payload, *pick),
            _ => return None,
        })
    }

    /// A malformed payload on an API topic; ids in topics and payloads point at requests
    /// the broker saw, so "matching id, unreadable body" is covered.
    fn bad_input(&self, which: usize, payload: usize, pick: usize) -> (String, Vec<u8>) {
        const GENERIC: [&[u8]; 9] = [
            b"{",
            b"not json",
            b"\xff\xfe",
            b"",
            b"[]",
            b"42",
            b"\"s\"",
            b"null",
            br#"{"a":"#,
        ];
        const SYNTAX: [&[u8]; 4] = [b"{", b"not json", b"\xff\xfe", br#"{"a":"#];
        let seen_of = |kind: SeenKind| -> Option<&Seen> {
            let v: Vec<&Seen> = self.seen.iter().filter(|s| s.kind == kind).collect();
            (!v.is_empty()).then(|| v[pick % v.len()])
        };
        let quoted = |s: &str| serde_json::to_string(s).unwrap();
        let pick_list = |specific: Vec<Vec<u8>>, generic: &[&[u8]]| -> Vec<u8> {
            let n = specific.len() + generic.len();
            let i = payload % n;
            if i < specific.len() {
                specific[i].clone()
            } else {
                generic[i - specific.len()].to_vec()
            }
        };
        match which % BAD_TOPICS {
            0 => (
                topic::GATEWAY_ATTRIBUTES.into(),
                pick_list(
                    vec![
                        br#"{"device":"A"}"#.to_vec(),
                        br#"{"device":"A","data":5}"#.to_vec(),
                        br#"{"device":"","data":{"k":1}}"#.to_vec(),
                        br#"{"data":{"k":1}}"#.to_vec(),
                    ],
                    &GENERIC,
                ),
            ),
            1 => {
                let (id, device) = match seen_of(SeenKind::GwAttr) {
                    Some(s) => {
                        let current = s
                            .request
                            .and_then(|r| match &self.reqs[&r].kind {
                                Kind::GwAttr { device, .. } => Some(device.clone()),
                                _ => None,
                            })
                            .unwrap_or_else(|| s.device.clone());
                        (s.wire, current)
                    }
                    None => (1, name(0)),
                };
                let d = quoted(&device);
                (
                    topic::GATEWAY_ATTRIBUTES_RESPONSE.into(),
                    pick_list(
                        vec![
                            format!(r#"{{"id":{id},"device":{d},"values":5}}"#).into_bytes(),
                            format!(r#"{{"id":"{id}","device":{d}}}"#).into_bytes(),
                            format!(r#"{{"id":-1,"device":{d}}}"#).into_bytes(),
                            format!(r#"{{"id":{id},"device":""}}"#).into_bytes(),
                            format!(r#"{{"id":{id}}}"#).into_bytes(),
                            format!(r#"{{"device":{d},"value":1}}"#).into_bytes(),
                        ],
                        &GENERIC,
                    ),
                )
            }
            2 => (
                topic::GATEWAY_RPC.into(),
                pick_list(
                    vec![
                        br#"{"device":"A","data":{"method":"m"}}"#.to_vec(),
                        br#"{"device":"A","data":{"id":0}}"#.to_vec(),
                        br#"{"device":"","data":{"id":0,"method":"m"}}"#.to_vec(),
                        br#"{"device":"A","data":[]}"#.to_vec(),
                        br#"{"device":"A","data":{"id":-5,"method":"m"}}"#.to_vec(),
                        br#"{"device":"A","data":{"id":1.5,"method":"m"}}"#.to_vec(),
                        br#"{"data":{"id":0,"method":"m"}}"#.to_vec(),
                    ],
                    &GENERIC,
                ),
            ),
            3 => (
                topic::GATEWAY_DISCONNECT.into(),
                pick_list(
                    vec![
                        br#"{"device":"A","reason":999}"#.to_vec(),
                        br#"{"device":"A"}"#.to_vec(),
                        br#"{"device":"A","reason":"x"}"#.to_vec(),
                        br#"{"reason":150}"#.to_vec(),
                    ],
                    &GENERIC,
                ),
            ),
            4 => (
                topic::DEVICE_ATTRIBUTES.into(),
                pick_list(Vec::new(), &GENERIC),
            ),
            5 => {
                let id = seen_of(SeenKind::DevAttr).map_or(1, |s| s.wire);
                (
                    topic::attribute_response_topic(id),
                    pick_list(
                        vec![br#"{"client":5}"#.to_vec(), br#"{"shared":[]}"#.to_vec()],
                        &GENERIC,
                    ),
                )
            }
            6 => {
                let id = self.rpc_next.get(&None).copied().unwrap_or(0) + 500;
                (
                    topic::rpc_request_topic(id),
                    pick_list(
                        vec![br#"{"params":1}"#.to_vec(), br#"{"method":5}"#.to_vec()],
                        &GENERIC,
                    ),
                )
            }
            7 => {
                let id = seen_of(SeenKind::ClientRpc).map_or(1, |s| s.wire);
                (
                    topic::rpc_response_topic(id),
                    pick_list(Vec::new(), &SYNTAX),
                )
            }
            // The JSON v2 families go through the same parsers.
            8 => ("v2/a".into(), pick_list(Vec::new(), &GENERIC)),
            9 => {
                let id = self.rpc_next.get(&None).copied().unwrap_or(0) + 500;
                (
                    topic::rpc_request_topic_v2(TopicFamily::V2Json, id),
                    pick_list(vec![br#"{"params":1}"#.to_vec()], &GENERIC),
                )
            }
            10 => {
                let id = seen_of(SeenKind::DevAttr).map_or(1, |s| s.wire);
                (
                    topic::attribute_response_topic_v2(TopicFamily::V2, id),
                    pick_list(vec![br#"{"client":[]}"#.to_vec()], &GENERIC),
                )
            }
            _ => {
                let id = seen_of(SeenKind::ClientRpc).map_or(1, |s| s.wire);
                (
                    topic::rpc_response_topic_v2(TopicFamily::V2Json, id),
                    pick_list(Vec::new(), &SYNTAX),
                )
            }
        }
    }

    // ----- what the broker receives -------------------------------------------------------

    fn absorb_client(&mut self, finishing: &HashSet<RequestId>) {
        let reannounced = self.h.conn.stats().reannounced;
        let mut announces = reannounced - self.last_reannounced;
        self.last_reannounced = reannounced;
        for p in self.h.client_packets() {
            if !self.s.connack_sent {
                assert!(
                    matches!(p, Packet::Connect(_)) && !self.s.connect_seen,
                    "only one CONNECT may precede CONNACK, got {p:?}"
                );
                self.s.connect_seen = true;
                continue;
            }
            match p {
                Packet::Publish(p) => self.on_client_publish(p, &mut announces, finishing),
                Packet::Subscribe(s) => {
                    assert!(
                        self.s.subscribe.is_none(),
                        "a second SUBSCRIBE in one session"
                    );
                    self.s.subscribe =
                        Some((s.pkid, s.filters.into_iter().map(|(f, _)| f).collect()));
                }
                Packet::Connect(_) => panic!("CONNECT after CONNACK"),
                _ => {}
            }
        }
        assert_eq!(
            announces, 0,
            "stats count {announces} more re-announces than v1/gateway/connect publishes on the wire"
        );
        assert!(
            self.s.outstanding.len() <= usize::from(MAX_INFLIGHT),
            "in-flight window exceeded on the wire"
        );
    }

    fn on_client_publish(
        &mut self,
        p: wire::Publish,
        announces: &mut u64,
        finishing: &HashSet<RequestId>,
    ) {
        let qos1 = p.qos == wire::QoS::AtLeastOnce;
        let t = p.topic.as_str();
        let app = find_tag(&p.payload).and_then(|n| self.tags.get(&n).copied());
        // Connection-made publishes; anything else is the application's.
        let mut control = None;
        let parse_err = |e: &dyn std::fmt::Debug| -> ! {
            panic!(
                "client published an unreadable {t} payload {:?}: {e:?}",
                String::from_utf8_lossy(&p.payload)
            )
        };
        // Devices the payload names: `named` carry data (re-announce rule), `devices` all.
        let mut named: Vec<String> = Vec::new();
        let mut devices: Vec<String> = Vec::new();
        let mut rpc_reply = None;
        let mut scope_and_keys = None;
        match t {
            topic::GATEWAY_CONNECT => {
                let c = Connect::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                devices.push(c.device.clone());
                if *announces > 0 {
                    assert!(!p.dup, "a re-announce of {:?} carries DUP", c.device);
                    assert!(
                        self.registered(&c.device),
                        "re-announce of {:?}, which is not registered",
                        c.device
                    );
                    *announces -= 1;
                    control = Some(WireItem::Announce(c.device.clone()));
                }
                self.s.obligations.remove(&c.device);
            }
            topic::GATEWAY_TELEMETRY => {
                let m = GatewayTelemetry::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                named.extend(m.devices.into_keys());
            }
            topic::GATEWAY_ATTRIBUTES => {
                let m = GatewayAttributes::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                named.extend(m.devices.into_keys());
            }
            topic::GATEWAY_CLAIM => {
                let m = GatewayClaim::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                named.extend(m.devices.into_keys());
            }
            topic::GATEWAY_DISCONNECT => {
                let d = Disconnect::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                devices.push(d.device);
            }
            topic::GATEWAY_RPC => {
                let r = GatewayRpcResponse::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                devices.push(r.device.clone());
                rpc_reply = Some((r.device, r.id));
            }
            topic::GATEWAY_ATTRIBUTES_REQUEST => {
                let r =
                    GatewayAttributeRequest::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                assert!(
                    r.id > 0 && r.id <= i32::MAX as u64,
                    "gateway attribute request id {} outside 1..=2^31-1",
                    r.id
                );
                named.push(r.device.clone());
                scope_and_keys = Some((r.client, r.keys.count()));
                let (kind, request) = if r.keys == RequestedKeys::Key(KEEPALIVE_KEY.into()) {
                    assert!(r.client, "a keep-alive asks for client scope");
                    assert!(
                        self.registered(&r.device),
                        "keep-alive for {:?}, which is not registered",
                        r.device
                    );
                    control = Some(WireItem::Keepalive);
                    (SeenKind::Keepalive, None)
                } else {
                    let r_id = app.unwrap_or_else(|| {
                        panic!("gateway attribute request {r:?} matches no command")
                    });
                    (SeenKind::GwAttr, Some(r_id))
                };
                self.note_seen(r.id, kind, r.device, request);
            }
            _ if t.starts_with(topic::DEVICE_ATTRIBUTES_REQUEST_PREFIX) => {
                let id = id_in(t, topic::DEVICE_ATTRIBUTES_REQUEST_PREFIX);
                DeviceAttributeRequest::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                let r = app.unwrap_or_else(|| {
                    panic!("device attribute request on {t} matches no command")
                });
                self.note_seen(id, SeenKind::DevAttr, String::new(), Some(r));
            }
            _ if t.starts_with(topic::DEVICE_RPC_REQUEST_PREFIX) => {
                let id = id_in(t, topic::DEVICE_RPC_REQUEST_PREFIX);
                RpcRequest::parse(&p.payload).unwrap_or_else(|e| parse_err(&e));
                let r = app.unwrap_or_else(|| panic!("client RPC on {t} matches no command"));
                self.note_seen(id, SeenKind::ClientRpc, String::new(), Some(r));
            }
            _ => {}
        }
        let item = if let Some(c) = control {
            c
        } else {
            let r = self.next_app(app, finishing, t);
            let req = &self.reqs[&r];
            devices.extend(named.iter().cloned());
            devices.sort();
            devices.dedup();
            if t.starts_with("v1/gateway/") {
                assert_eq!(
                    devices, req.devices,
                    "request {r} ({}) went out naming other sub-devices",
                    req.what
                );
            }
            if req.rpc.is_some() {
                assert_eq!(
                    rpc_reply, req.rpc,
                    "request {r} ({}) replies to another server RPC",
                    req.what
                );
            }
            if let Kind::GwAttr {
                client, single_key, ..
            } = &req.kind
            {
                let (wire_client, count) = scope_and_keys.expect("attribute request parsed");
                assert!(
                    wire_client == *client && (count == 1) == single_key.is_some(),
                    "request {r} ({}) went out with client = {wire_client} and {count} keys",
                    req.what
                );
            }
            WireItem::App(r)
        };
        for d in named {
            assert!(
                !self.s.obligations.contains(&d),
                "re-announce: {t} publish naming {d:?} went out before v1/gateway/connect for it \
                 (it was registered at this session's CONNACK)"
            );
        }
        if let WireItem::App(r) = &item {
            let req = &self.reqs[r];
            let topic_ok = match &req.topic {
                TopicRule::Exact(x) => x == t,
                TopicRule::Prefix(x) => t.starts_with(x),
            };
            assert!(
                topic_ok,
                "request {r} ({}) went out on {t}, expected {:?}",
                req.what, req.topic
            );
            assert_eq!(
                req.qos1, qos1,
                "request {r} ({}) went out at the wrong QoS",
                req.what
            );
        }
        if qos1 {
            assert_ne!(p.pkid, 0, "QoS 1 publish with packet id 0");
            assert!(
                !self.s.outstanding.contains(&p.pkid)
                    && self.s.subscribe.as_ref().is_none_or(|(s, _)| *s != p.pkid),
                "packet id {} reused while outstanding",
                p.pkid
            );
            self.s.outstanding.push(p.pkid);
            self.s.items.insert(p.pkid, item);
        } else {
            assert!(
                matches!(item, WireItem::App(_)),
                "a QoS 0 publish on {t} the application did not ask for"
            );
        }
    }

    /// The application request a publish carries. Within a session the client sends requests
    /// in command order, each once, skipping only those that ended (so an untagged publish is
    /// the next unfinished untagged request).
    fn next_app(
        &mut self,
        tagged: Option<RequestId>,
        finishing: &HashSet<RequestId>,
        t: &str,
    ) -> RequestId {
        let last = self.s.last_app;
        let mut candidates: Vec<RequestId> = self
            .reqs
            .iter()
            .filter(|(r, q)| r.get() > last && q.outcomes == 0)
            .map(|(r, _)| *r)
            .collect();
        candidates.sort();
        let untagged = |c: &&RequestId| !self.reqs[c].tagged;
        let chosen = match tagged {
            Some(r) => r,
            None => *candidates
                .iter()
                .filter(untagged)
                .find(|c| !finishing.contains(c))
                .or_else(|| candidates.iter().find(untagged))
                .unwrap_or_else(|| {
                    panic!("an untagged publish on {t} matches no unfinished untagged request")
                }),
        };
        assert!(
            candidates.contains(&chosen),
            "request {chosen} ({}) went out on {t} although it finished, or was already sent in \
             this session after request #{last}",
            self.reqs[&chosen].what
        );
        for c in candidates.iter().take_while(|c| **c < chosen) {
            assert!(
                finishing.contains(c),
                "request {c} ({}) was skipped: {chosen} ({}) went out on {t} before it",
                self.reqs[c].what,
                self.reqs[&chosen].what
            );
        }
        self.s.last_app = chosen.get();
        chosen
    }

    fn note_seen(&mut self, wire: u64, kind: SeenKind, device: String, request: Option<RequestId>) {
        match self.seen.iter().find(|s| s.wire == wire) {
            Some(s) => assert!(
                s.kind == kind && s.request == request,
                "wire id {wire} reused: {s:?}, now {kind:?} for {request:?}"
            ),
            None => self.seen.push(Seen {
                wire,
                kind,
                device,
                request,
            }),
        }
    }

    // ----- what the application is told -------------------------------------------------

    fn absorb_events(&mut self, events: Vec<Event>, ex: &Expect) {
        let mut outcomes = Vec::new();
        let mut api = Vec::new();
        for e in events {
            match &e {
                Event::Connected { .. } => {
                    assert!(ex.may_connect, "{}: unexpected {e:?}", ex.what);
                }
                Event::Disconnected { reason, .. } => {
                    assert!(
                        !ex.bad_input,
                        "{}: bad server input ended the session: {reason:?}",
                        ex.what
                    );
                    assert!(ex.may_disconnect, "{}: unexpected {e:?}", ex.what);
                }
                Event::Delivered(_)
                | Event::Sent(_)
                | Event::Failed { .. }
                | Event::AttributeResponse { .. }
                | Event::RpcResponse { .. } => {
                    self.record_outcome(&e, &ex.what);
                    outcomes.push(e);
                }
                _ => api.push(e),
            }
        }
        if ex.bad_input {
            assert!(
                outcomes.is_empty(),
                "{}: bad server input produced outcome events {outcomes:?}",
                ex.what
            );
            for e in &api {
                assert!(
                    matches!(e, Event::Warning(_) | Event::Message { .. }),
                    "{}: bad server input produced {e:?}, not a warning",
                    ex.what
                );
            }
        }
        let decisive: Vec<&Event> = outcomes
            .iter()
            .filter(|e| !matches!(e, Event::Sent(_)))
            .collect();
        match &ex.outcomes {
            Outcomes::Exactly(want) => assert_eq!(
                decisive,
                want.iter().collect::<Vec<_>>(),
                "{}: outcome events differ from the model's",
                ex.what
            ),
            Outcomes::Failures(errors) => {
                for e in decisive {
                    assert!(
                        matches!(e, Event::Failed { error, .. } if errors.contains(error)),
                        "{}: unexpected outcome {e:?} (only failures {errors:?} may happen here)",
                        ex.what
                    );
                }
            }
        }
        match &ex.api {
            Api::Exactly(want) => {
                assert_eq!(&api, want, "{}: events differ from the model's", ex.what)
            }
            Api::NothingOrUnmatched { topic, id } => {
                let unmatched = [Event::Warning(Warning::UnmatchedResponse {
                    topic: topic.clone(),
                    id: *id,
                })];
                assert!(
                    api.is_empty() || api == unmatched,
                    "{}: a keep-alive answer produced {api:?}",
                    ex.what
                );
            }
            Api::OneWarning { topic } => {
                assert!(
                    matches!(api.as_slice(), [Event::Warning(
                        Warning::InvalidMessage { topic: t, .. }
                        | Warning::UnmatchedResponse { topic: t, .. }
                    )] if t == topic),
                    "{}: expected one warning about {topic}, got {api:?}",
                    ex.what
                );
            }
        }
    }

    fn record_outcome(&mut self, e: &Event, what: &str) {
        let id = match e {
            Event::Delivered(id) | Event::Sent(id) => *id,
            Event::Failed { request, .. }
            | Event::AttributeResponse { request, .. }
            | Event::RpcResponse { request, .. } => *request,
            _ => unreachable!(),
        };
        let req = self
            .reqs
            .get_mut(&id)
            .unwrap_or_else(|| panic!("{what}: {e:?} for a request that was never accepted"));
        req.outcomes += 1;
        assert_eq!(
            req.outcomes, 1,
            "{what}: request {id} ({}) got a second outcome {e:?} after {:?}",
            req.what, req.ended
        );
        req.ended = Some(format!("{e:?}"));
        match e {
            Event::Delivered(_) => assert!(
                req.qos1 && !req.kind.awaits_response(),
                "{what}: Delivered completed request {id} ({}), which is QoS 0 or awaits a response",
                req.what
            ),
            Event::Sent(_) => assert!(
                !req.qos1,
                "{what}: Sent for QoS 1 request {id} ({})",
                req.what
            ),
            Event::AttributeResponse { device, .. } => match &req.kind {
                Kind::GwAttr { device: asked, .. } => assert_eq!(
                    device.as_deref(),
                    Some(asked.as_str()),
                    "{what}: AttributeResponse for {id} names another device than the request ({})",
                    req.what
                ),
                Kind::DevAttr => assert_eq!(
                    device, &None,
                    "{what}: own-device AttributeResponse names a sub-device"
                ),
                _ => panic!(
                    "{what}: AttributeResponse completed request {id} ({}), not an attribute request",
                    req.what
                ),
            },
            Event::RpcResponse { .. } => assert!(
                req.kind == Kind::ClientRpc,
                "{what}: RpcResponse completed request {id} ({}), not a client RPC",
                req.what
            ),
            _ => {}
        }
        if let (
            Event::Failed {
                error: RequestError::Rejected(_),
                ..
            },
            Kind::Connect { device },
        ) = (e, &req.kind)
        {
            let device = device.clone();
            assert!(
                !self.registered(&device),
                "{what}: rejected connect of {device:?} left it registered"
            );
        }
    }

    fn check(&mut self, what: &str) {
        let st = self.h.conn.stats();
        assert!(
            st.sub_devices <= MAX_SUB_DEVICES,
            "{what}: {} sub-devices tracked, above max_sub_devices = {MAX_SUB_DEVICES}",
            st.sub_devices
        );
        assert!(
            st.pending_requests <= MAX_PENDING_REQUESTS,
            "{what}: {} pending requests, above max_pending_requests",
            st.pending_requests
        );
        assert!(
            st.pending_server_rpcs <= MAX_PENDING_RPCS,
            "{what}: {} pending server RPCs, above max_pending_server_rpcs",
            st.pending_server_rpcs
        );
        assert!(
            st.buffered_bytes <= MAX_BUFFERED,
            "{what}: {} buffered bytes, above max_buffered_bytes",
            st.buffered_bytes
        );
        assert!(st.inflight <= usize::from(MAX_INFLIGHT));
        let registered = self.registered_set();
        assert_eq!(
            registered.len(),
            st.sub_devices,
            "{what}: stats count sub-devices the pool does not explain (registered: {registered:?})"
        );
        let unfinished = |f: &dyn Fn(&Req) -> bool| {
            self.reqs
                .values()
                .filter(|r| r.outcomes == 0 && f(r))
                .count()
        };
        let awaiting = unfinished(&|r| r.kind.awaits_response());
        let plain = unfinished(&|r| !r.kind.awaits_response());
        assert_eq!(
            awaiting, st.pending_requests,
            "{what}: the model has {awaiting} unfinished attribute requests / client RPCs, stats {}",
            st.pending_requests
        );
        assert!(
            plain <= st.unfinished_requests && st.unfinished_requests <= plain + awaiting,
            "{what}: {} unfinished publishes, the model has {plain} plain + {awaiting} awaiting",
            st.unfinished_requests
        );
        assert_eq!(
            self.rpcs.len(),
            st.pending_server_rpcs,
            "{what}: pending server RPCs differ from the model's {:?}",
            self.rpcs
        );
        let pkids = self.h.conn.pkids_in_use();
        assert!(!pkids.contains(&0));
        self.s.obligations.retain(|d| registered.contains(d));
        // Liveness: with room in the window, nothing waits.
        if self.s.up && self.h.transport_open && st.inflight < usize::from(MAX_INFLIGHT) {
            assert!(
                self.s.obligations.is_empty(),
                "{what}: the window has room, yet {:?} are not re-announced",
                self.s.obligations
            );
            let last = self.s.last_app;
            let waiting: Vec<&str> = self
                .reqs
                .iter()
                .filter(|(r, q)| r.get() > last && q.outcomes == 0)
                .map(|(_, q)| q.what.as_str())
                .collect();
            assert!(
                waiting.is_empty(),
                "{what}: the window has room, yet requests wait unsent: {waiting:?}"
            );
        }
    }

    fn close(&mut self) {
        self.step_no += 1;
        let ex = Expect::disconnecting(
            format!("step {} close", self.step_no),
            vec![RequestError::Closed],
        );
        self.h.conn.close(self.h.now);
        self.h.drain();
        self.closed = true;
        self.h.to_server.clear();
        self.s = Session::default();
        let events = self.h.take_events();
        self.absorb_events(events, &ex);
        self.check(&ex.what);
    }
}

fn run(
    version: ProtocolVersion,
    seed: u64,
    telemetry_qos0: bool,
    gateway: bool,
    ops: Vec<Op>,
    close_at: Option<usize>,
) {
    let mut m = Model::new(version, seed, telemetry_qos0, gateway);
    for (i, op) in ops.into_iter().enumerate() {
        if close_at == Some(i) {
            m.close();
        }
        m.step(op);
    }
    m.close();
    for (id, req) in &m.reqs {
        assert_eq!(
            req.outcomes, 1,
            "after close: request {id} ({}) has {} outcomes",
            req.what, req.outcomes
        );
    }
    let st = m.h.conn.stats();
    assert_eq!(st.buffered_bytes, 0, "after close: bytes still buffered");
    assert_eq!(
        st.pending_requests, 0,
        "after close: requests still pending"
    );
    assert_eq!(
        st.unfinished_requests, 0,
        "after close: publishes unfinished"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn gateway_and_device_api_keep_every_invariant_v5(
        seed in any::<u64>(),
        telemetry_qos0 in proptest::bool::weighted(0.25),
        gateway in proptest::bool::weighted(0.85),
        ops in proptest::collection::vec(op(), 1..200),
        close_at in proptest::option::weighted(0.15, 0usize..200),
    ) {
        run(ProtocolVersion::V5, seed, telemetry_qos0, gateway, ops, close_at);
    }

    #[test]
    fn gateway_and_device_api_keep_every_invariant_v311(
        seed in any::<u64>(),
        telemetry_qos0 in proptest::bool::weighted(0.25),
        gateway in proptest::bool::weighted(0.85),
        ops in proptest::collection::vec(op(), 1..200),
        close_at in proptest::option::weighted(0.15, 0usize..200),
    ) {
        run(ProtocolVersion::V311, seed, telemetry_qos0, gateway, ops, close_at);
    }
}

// ----- regressions: minimal reproducers of bugs this model found ---------------------------

fn connected_gateway(max_sub_devices: usize) -> Harness {
    let mut c = api_config(ProtocolVersion::V5, 0, false);
    c.max_sub_devices = max_sub_devices;
    let mut h = Harness::new(c);
    h.connect();
    h
}

#[test]
fn rpc_reply_to_an_untracked_sub_device_respects_max_sub_devices() {
    let mut h = connected_gateway(1);
    h.conn
        .command(h.now, Command::connect_device("A", None))
        .expect("first sub-device fits");
    h.drain();
    // ThingsBoard delivers RPCs for any child it routes to this gateway, tracked or not
    // (e.g. one disconnected by the application a moment ago).
    let rpc = GatewayRpcRequest {
        device: "B".into(),
        id: 0,
        method: "setValue".into(),
        params: json!(1),
    };
    h.send(server_publish(topic::GATEWAY_RPC, rpc.to_vec(), Some(1)));
    let reply = h
        .conn
        .command(h.now, Command::device_rpc_reply("B", 0, json!("ok")));
    h.drain();
    let tracked = h.conn.stats().sub_devices;
    assert!(
        tracked <= 1,
        "max_sub_devices = 1, but after the reply ({reply:?}) {tracked} sub-devices are tracked \
         (A and B, so B is re-announced after every reconnect)"
    );
}

#[test]
fn qos0_publish_behind_a_timed_out_request_goes_out_at_the_timeout() {
    let mut c = api_config(ProtocolVersion::V5, 0, false);
    c.max_inflight = 1;
    let mut h = Harness::new(c);
    h.connect();
    // Fills the window of 1 and is never acknowledged.
    h.conn
        .command(h.now, Command::publish("app/a", "1"))
        .expect("accepted");
    // Waits for the window...
    let request = h
        .conn
        .command(
            h.now,
            Command::request_attributes(["k"], Vec::<&str>::new()),
        )
        .expect("accepted");
    // ...and this QoS 0 publish waits behind it, to keep order.
    let qos0 = h
        .conn
        .command(
            h.now,
            Command::Publish {
                topic: "app/b".into(),
                payload: Bytes::from_static(b"2"),
                qos: QoS::AtMostOnce,
            },
        )
        .expect("accepted");
    h.drain();
    h.take_events();
    // The attribute request times out while still queued: nothing blocks the QoS 0 publish.
    h.advance(Duration::from_secs(30));
    let events = h.take_events();
    assert!(
        events.contains(&Event::Failed {
            request,
            error: RequestError::Timeout
        }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Sent(qos0)),
        "the QoS 0 publish no longer waits for anything, yet it was not sent at the timeout: \
         {events:?}"
    );
}
