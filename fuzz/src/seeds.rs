//! Seed inputs for every target, built from real transcripts: a client `Connection` run
//! against the emulator (gateway and device APIs, MQTT 5 and 3.1.1, a device-limit refusal,
//! a dropped connection and the reconnect), plus hand-made packets for the wire quirks.
//!
//! `tests/seeds.rs` writes them to `fuzz/seeds/<target>/` (`FUZZ_WRITE_SEEDS=1`) and
//! otherwise checks that the committed files are current.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use gateway_emulator::{Emulator, Output as EmuOutput, RpcCall, SessionId};
use gateway_proto::payload::{
    AttributeResult, AttributeUpdate, DeviceAttributeResponse, DisconnectNotice,
    GatewayAttributeRequest, GatewayAttributeResponse, GatewayAttributeUpdate, GatewayNotification,
    GatewayRpcRequest, GatewayTelemetry, Payload, RequestedKeys, RpcRequest, TelemetryEntry,
};
use gateway_proto::wire::{self, Packet, ProtocolVersion, QoS};
use gateway_proto::{Connection, Event, Input, Output};
use serde_json::{json, Map};

use crate::connection::{command_for, config, Body, Cmd, Op};

/// One seed: target, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// What the generator does at one step of a transcript.
#[derive(Debug, Clone)]
enum Step {
    /// An op the fuzz target replays as is.
    Op(Op),
    /// The platform sends a two-way RPC to a device.
    Rpc(&'static str),
    /// The platform changes a shared attribute.
    Shared(&'static str),
    /// The platform's tenant device limit.
    MaxDevices(usize),
    /// The platform drops the session.
    DropSession,
}

/// A client/emulator transcript and the op sequence that replays it in `connection`.
struct Transcript {
    client_bytes: Vec<u8>,
    server_bytes: Vec<u8>,
    ops: Vec<Op>,
}

struct Recorder {
    conn: Connection,
    emu: Emulator,
    now: Instant,
    session: Option<SessionId>,
    wanted: bool,
    accepted: usize,
    rpcs: Vec<(Option<String>, u64)>,
    t: Transcript,
}

impl Recorder {
    fn client_out(&mut self) {
        while let Some(out) = self.conn.poll_output() {
            match out {
                Output::Transmit(b) => {
                    self.t.client_bytes.extend_from_slice(&b);
                    if let Some(s) = self.session {
                        self.emu.handle_bytes(s, self.now, &b);
                    }
                }
                Output::OpenTransport => self.wanted = true,
                Output::CloseTransport => {
                    if let Some(s) = self.session.take() {
                        self.emu.transport_closed(s, self.now);
                    }
                }
                Output::Event(Event::RpcRequest { device, id, .. }) => self.rpcs.push((device, id)),
                _ => {}
            }
        }
    }

    /// Moves bytes both ways; server bytes become `Raw` ops over the pool.
    fn settle(&mut self) {
        loop {
            self.client_out();
            let mut moved = false;
            while let Some((sid, out)) = self.emu.poll_output() {
                moved = true;
                if Some(sid) != self.session {
                    continue;
                }
                match out {
                    EmuOutput::Transmit(b) => {
                        for chunk in b.chunks(255) {
                            self.t.server_bytes.extend_from_slice(chunk);
                            self.t.ops.push(Op::Raw(chunk.len() as u8));
                            self.conn.handle_input(self.now, Input::Bytes(chunk));
                        }
                    }
                    EmuOutput::Close => {
                        self.session = None;
                        self.emu.transport_closed(sid, self.now);
                        self.t.ops.push(Op::Drop);
                        self.conn.handle_input(self.now, Input::TransportClosed);
                    }
                }
            }
            while self.emu.poll_event().is_some() {}
            if !moved {
                self.client_out();
                return;
            }
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Op(op) => {
                self.t.ops.push(op.clone());
                match op {
                    Op::Open => {
                        if self.wanted {
                            self.wanted = false;
                            self.session = self.emu.open_session(self.now).ok();
                            self.conn.handle_input(self.now, Input::TransportOpened);
                        }
                    }
                    Op::Cmd(c) => {
                        if let Some(cmd) = command_for(&c, self.accepted, &self.rpcs) {
                            if self.conn.command(self.now, cmd).is_ok() {
                                self.accepted += 1;
                            }
                        }
                    }
                    Op::Advance(n) => {
                        // The emulator's deadlines on the way; the client's at the end, as the
                        // target does. Server bytes produced meanwhile are fed after.
                        let end = self.now + Duration::from_millis(100 * u64::from(n));
                        while let Some(t) = self.emu.poll_timeout().filter(|t| *t <= end) {
                            self.now = self.now.max(t);
                            self.emu.handle_timeout(self.now);
                        }
                        self.now = end;
                        self.emu.handle_timeout(self.now);
                        self.conn.handle_input(self.now, Input::Timeout);
                    }
                    other => panic!("not recorded: {other:?}"),
                }
            }
            Step::Rpc(device) => {
                let call = RpcCall::two_way("setValve", json!({"open": true}));
                let _ = self.emu.send_rpc(device, call, self.now);
            }
            Step::Shared(device) => {
                let mut m = Map::new();
                m.insert("setpoint".into(), json!(21.5));
                let _ = self.emu.set_shared_attributes(device, m);
            }
            Step::MaxDevices(n) => self.emu.set_max_devices(Some(n)),
            Step::DropSession => {
                if let Some(s) = self.session {
                    let _ = self.emu.drop_session(s);
                }
            }
        }
        self.settle();
    }
}

fn record(setup: u8, steps: &[Step]) -> Transcript {
    let now = Instant::now();
    let conn = match Connection::new(config(setup), now) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let mut r = Recorder {
        conn,
        emu: crate::emulator::platform(now),
        now,
        session: None,
        wanted: false,
        accepted: 0,
        rpcs: Vec::new(),
        t: Transcript {
            client_bytes: Vec::new(),
            server_bytes: Vec::new(),
            ops: Vec::new(),
        },
    };
    r.settle();
    for s in steps {
        r.step(s.clone());
    }
    r.t
}

fn gateway_steps() -> Vec<Step> {
    use Cmd::*;
    let op = |c| Step::Op(Op::Cmd(c));
    vec![
        Step::Op(Op::Open),
        op(Connect(0)),
        op(Telemetry(1)),
        op(Attributes(0)),
        op(Claim(0)),
        op(RequestAttributes {
            device: 0,
            shared: true,
        }),
        Step::Rpc("A"),
        op(RpcReply(0)),
        Step::Shared("A"),
        op(Batch(0b11)),
        op(DeviceTelemetry),
        op(DeviceAttributes),
        op(DeviceRequestAttributes),
        op(DeviceRpc),
        Step::MaxDevices(4),
        op(Connect(2)),
        Step::Op(Op::Advance(650)),
        Step::DropSession,
        Step::Op(Op::Advance(30)),
        Step::Op(Op::Open),
        op(Telemetry(0)),
        Step::Rpc("B"),
        op(RpcReply(1)),
    ]
}

fn device_steps() -> Vec<Step> {
    use Cmd::*;
    let op = |c| Step::Op(Op::Cmd(c));
    vec![
        Step::Op(Op::Open),
        op(DeviceTelemetry),
        op(DeviceAttributes),
        op(DeviceRequestAttributes),
        op(DeviceRpc),
        Step::Rpc("Gateway"),
        op(RpcReply(0)),
        Step::Op(Op::Advance(650)),
    ]
}

/// The variant index bytes `derive(Arbitrary)` reads for variant `i` of `n`.
fn variant(out: &mut Vec<u8>, i: u64, n: u64) {
    let x = (i << 32).div_ceil(n);
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

fn encode_cmd(c: &Cmd, out: &mut Vec<u8>) {
    const N: u64 = 14;
    match c {
        Cmd::Publish { qos1, len } => {
            variant(out, 0, N);
            out.push(u8::from(*qos1));
            out.extend_from_slice(&len.to_le_bytes());
        }
        Cmd::Connect(d) => variant_u8(out, 1, N, *d),
        Cmd::Disconnect(d) => variant_u8(out, 2, N, *d),
        Cmd::Telemetry(d) => variant_u8(out, 3, N, *d),
        Cmd::Batch(d) => variant_u8(out, 4, N, *d),
        Cmd::Attributes(d) => variant_u8(out, 5, N, *d),
        Cmd::Claim(d) => variant_u8(out, 6, N, *d),
        Cmd::RequestAttributes { device, shared } => {
            variant(out, 7, N);
            out.push(*device);
            out.push(u8::from(*shared));
        }
        Cmd::RpcReply(p) => variant_u8(out, 8, N, *p),
        Cmd::BogusReply(p) => variant_u8(out, 9, N, *p),
        Cmd::DeviceTelemetry => variant(out, 10, N),
        Cmd::DeviceAttributes => variant(out, 11, N),
        Cmd::DeviceRequestAttributes => variant(out, 12, N),
        Cmd::DeviceRpc => variant(out, 13, N),
    }
}

fn variant_u8(out: &mut Vec<u8>, i: u64, n: u64, v: u8) {
    variant(out, i, n);
    out.push(v);
}

/// Encodes the ops the recorder produces, in the format `arbitrary` decodes.
fn encode_op(op: &Op, out: &mut Vec<u8>) {
    const N: u64 = 14;
    match op {
        Op::Open => variant(out, 0, N),
        Op::Drop => variant(out, 1, N),
        Op::Advance(n) => {
            variant(out, 2, N);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Op::Fire => variant(out, 3, N),
        Op::Raw(n) => variant_u8(out, 11, N, *n),
        Op::Cmd(c) => {
            variant(out, 12, N);
            encode_cmd(c, out);
        }
        Op::Close => variant(out, 13, N),
        other => panic!("no seed encoding for {other:?}"),
    }
}

/// A `connection` input: setup byte, op region, pool.
fn connection_input(setup: u8, ops: &[Op], pool: &[u8]) -> Vec<u8> {
    let mut region = Vec::new();
    for op in ops {
        encode_op(op, &mut region);
    }
    let mut out = vec![setup];
    out.extend_from_slice(&(region.len() as u16).to_le_bytes());
    out.extend_from_slice(&region);
    out.extend_from_slice(pool);
    // Self-check: the target decodes exactly these ops.
    let Some((s, decoded, rest)) = crate::connection::parse(&out) else {
        panic!("seed does not parse");
    };
    assert_eq!((s, decoded.as_slice(), rest), (setup, ops, pool));
    out
}

fn packet(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    crate::script::server_bytes(p, v)
}

/// Hand-made server packets: ThingsBoard's wire quirks and v5 reason codes.
fn quirks() -> Vec<(String, u8, Vec<u8>)> {
    let v5 = ProtocolVersion::V5;
    let publish0 = Packet::Publish(wire::Publish {
        topic: "v1/gateway/rpc".into(),
        payload: Bytes::from_static(br#"{"device":"A","data":{"id":0,"method":"m","params":{}}}"#),
        qos: QoS::AtLeastOnce,
        dup: false,
        retain: false,
        pkid: 0,
    });
    let mut v5_acks = Vec::new();
    for (pkid, code) in [
        (1u16, 0x00u8),
        (2, 0x10),
        (3, 0x80),
        (4, 0x83),
        (5, 0x90),
        (6, 0x97),
        (7, 0x99),
    ] {
        v5_acks.extend(packet(&Packet::PubAck(wire::PubAck { pkid, code }), v5));
    }
    let suback = packet(
        &Packet::SubAck(wire::SubAck {
            pkid: 1,
            codes: vec![0, 1, 0x80, 0x8F],
        }),
        v5,
    );
    vec![
        ("v5-pubacks".into(), 1, v5_acks),
        (
            "v5-netty-short-puback".into(),
            1,
            vec![0x40, 0x02, 0x00, 0x01, 0x40, 0x03, 0x00, 0x02, 0x97],
        ),
        (
            "v5-disconnect-forms".into(),
            1,
            vec![0xE0, 0x00, 0xE0, 0x01, 0x8E, 0xE0, 0x02, 0x96, 0x00],
        ),
        ("v5-suback-codes".into(), 1, suback),
        ("v5-publish-pkid0".into(), 1, packet(&publish0, v5)),
        (
            "v311-publish-pkid0".into(),
            0,
            packet(&publish0, ProtocolVersion::V311),
        ),
        (
            "v311-connack-refusals".into(),
            0,
            [0u8, 1, 2, 3, 4, 5]
                .iter()
                .flat_map(|&code| {
                    packet(
                        &Packet::ConnAck(wire::ConnAck {
                            session_present: false,
                            code,
                        }),
                        ProtocolVersion::V311,
                    )
                })
                .collect(),
        ),
    ]
}

fn payload_seeds() -> Vec<(String, u8, u8, Vec<u8>)> {
    let mut values = Map::new();
    values.insert("setpoint".into(), json!(21.5));
    let update = AttributeUpdate {
        values: values.clone(),
        deleted: vec!["old".into()],
    };
    vec![
        (
            "gateway-attribute-update".into(),
            0,
            0,
            GatewayAttributeUpdate {
                device: "A".into(),
                update: update.clone(),
            }
            .to_vec(),
        ),
        (
            "gateway-attribute-response-value".into(),
            1,
            0,
            GatewayAttributeResponse {
                id: 0,
                device: "A".into(),
                result: AttributeResult::Value(json!(1)),
            }
            .to_vec(),
        ),
        (
            "gateway-attribute-response-values".into(),
            1,
            0,
            GatewayAttributeResponse {
                id: 1,
                device: "B".into(),
                result: AttributeResult::Values(values.clone()),
            }
            .to_vec(),
        ),
        (
            "gateway-rpc".into(),
            2,
            0,
            GatewayRpcRequest {
                device: "A".into(),
                id: 0,
                method: "setValve".into(),
                params: json!({"open": true}),
            }
            .to_vec(),
        ),
        (
            "gateway-disconnect-notice".into(),
            3,
            0,
            DisconnectNotice {
                device: "A".into(),
                reason: 150,
            }
            .to_vec(),
        ),
        ("device-attribute-update".into(), 4, 0, br#"{"setpoint":21.5,"deleted":["old"]}"#.to_vec()),
        (
            "device-attribute-response".into(),
            7,
            2,
            DeviceAttributeResponse {
                client: values.clone(),
                shared: values,
            }
            .to_vec(),
        ),
        (
            "device-rpc-request".into(),
            9,
            0,
            RpcRequest::new("reboot", json!({"delay": 1})).to_vec(),
        ),
        (
            "gateway-device-renamed".into(),
            9,
            1,
            GatewayNotification::DeviceRenamed {
                old_name: "A".into(),
                new_name: "A2".into(),
            }
            .to_rpc()
            .to_vec(),
        ),
        (
            "gateway-device-deleted".into(),
            9,
            2,
            GatewayNotification::DeviceDeleted { device: "B".into() }
                .to_rpc()
                .to_vec(),
        ),
        ("client-rpc-response".into(), 11, 3, br#"{"time":1700000000000}"#.to_vec()),
        ("client-rpc-timeout".into(), 11, 3, br#"{"error":"timeout"}"#.to_vec()),
        (
            "session-limits".into(),
            11,
            3,
            br#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":"100:1","telemetryMessages":"","telemetryDataPoints":""}}"#.to_vec(),
        ),
        (
            "provision-response".into(),
            16,
            0,
            br#"{"status":"SUCCESS","credentialsType":"ACCESS_TOKEN","credentialsValue":"tok"}"#.to_vec(),
        ),
        (
            "gateway-telemetry".into(),
            19,
            0,
            br#"{"A":[{"ts":1700000000000,"values":{"t":1}},{"h":2}],"B":[{"x":"3"}]}"#.to_vec(),
        ),
        (
            "gateway-attribute-request".into(),
            19,
            0,
            br#"{"id":1,"device":"A","client":false,"keys":["a","b"]}"#.to_vec(),
        ),
        ("gateway-connect".into(), 17, 0, br#"{"device":"A","type":"thermo"}"#.to_vec()),
        (
            "provision-request".into(),
            19,
            0,
            br#"{"deviceName":"P1","provisionDeviceKey":"key","provisionDeviceSecret":"secret"}"#.to_vec(),
        ),
        // The gateway protobuf forms (a PROTOBUF gateway profile), on the topics they use.
        (
            "proto-gateway-attribute-update".into(),
            0x80,
            0,
            GatewayAttributeUpdate {
                device: "A".into(),
                update: update.clone(),
            }
            .to_protobuf(),
        ),
        (
            "proto-gateway-rpc-request".into(),
            0x82,
            0,
            GatewayRpcRequest {
                device: "A".into(),
                id: 0,
                method: "m".into(),
                params: json!({"x": [1, 2.5, "s", true]}),
            }
            .to_protobuf(),
        ),
        (
            "proto-gateway-telemetry".into(),
            17,
            0,
            GatewayTelemetry {
                devices: BTreeMap::from([(
                    "A".to_owned(),
                    vec![TelemetryEntry::at(10_000, update.values.clone())],
                )]),
            }
            .to_protobuf(),
        ),
        (
            "proto-gateway-attribute-request".into(),
            1,
            0,
            GatewayAttributeRequest {
                id: 1,
                device: "A".into(),
                client: true,
                keys: RequestedKeys::Keys(vec!["a".into(), "b".into()]),
            }
            .to_protobuf(),
        ),
    ]
}

/// A provisioning session's client bytes (the client core refuses that identity).
fn provision_stream() -> Vec<u8> {
    let mut out = BytesMut::new();
    let v = ProtocolVersion::V311;
    let connect = Packet::Connect(wire::Connect {
        client_id: "provision".into(),
        keep_alive: 60,
        clean_session: true,
        username: Some("provision".into()),
        password: None,
    });
    let sub = Packet::Subscribe(wire::Subscribe {
        pkid: 1,
        filters: vec![("/provision/response".into(), QoS::AtLeastOnce)],
    });
    let publish = Packet::Publish(wire::Publish {
        topic: "/provision/request".into(),
        payload: Bytes::from_static(
            br#"{"deviceName":"P1","provisionDeviceKey":"key","provisionDeviceSecret":"secret"}"#,
        ),
        qos: QoS::AtLeastOnce,
        dup: false,
        retain: false,
        pkid: 2,
    });
    for p in [connect, sub, publish] {
        let _ = wire::encode(&p, v, &mut out, 268_435_455);
    }
    out.to_vec()
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = Vec::new();
    // setup: bits 3-4 = 3 (in-flight window 100); bit 0 = MQTT 3.1.1; bit 1 = device role.
    let runs: [(&str, u8, Vec<Step>); 3] = [
        ("gateway-v5", 0b1_1000, gateway_steps()),
        ("gateway-v311", 0b1_1001, gateway_steps()),
        ("device-v5", 0b1_1010, device_steps()),
    ];
    for (name, setup, steps) in runs {
        let t = record(setup, &steps);
        let v5 = setup & 1 == 0;
        seeds.push((
            "connection",
            name.to_owned(),
            connection_input(setup, &t.ops, &t.server_bytes),
        ));
        let mut d = vec![u8::from(v5) | 0b0100_0100];
        d.extend_from_slice(&t.server_bytes);
        seeds.push(("decode", format!("{name}-server"), d));
        let mut d = vec![u8::from(v5) | 0b1000_1100];
        d.extend_from_slice(&t.client_bytes);
        seeds.push(("decode", format!("{name}-client"), d));
        for flags in [0u8, 1] {
            let mut e = vec![flags | 0b1000_0000];
            e.extend_from_slice(&t.client_bytes);
            seeds.push(("emulator", format!("{name}-{flags}"), e));
        }
    }
    let mut e = vec![0u8];
    e.extend(provision_stream());
    seeds.push(("emulator", "provision".into(), e));
    for (name, sel, bytes) in quirks() {
        let mut d = vec![sel | 0b0100_0100];
        d.extend(bytes);
        seeds.push(("decode", name, d));
    }
    for (name, topic, id, payload) in payload_seeds() {
        let mut p = vec![topic, id];
        p.extend(payload);
        seeds.push(("payload", name, p));
    }
    // Bodies the connection target builds itself, for a quick start.
    let built = [Op::Open, Op::Cmd(Cmd::Connect(0)), Op::Fire, Op::Close];
    seeds.push((
        "connection",
        "bare".into(),
        connection_input(0b1_1000, &built, &[]),
    ));
    let _ = Body::Pool(0);
    seeds
}
