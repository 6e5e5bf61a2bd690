//! The Gateway and Device APIs against a scripted ThingsBoard: exact bytes out for every
//! command, exact events for every server message (shapes from the server's source, spec
//! §2-§4), and the scenarios where sessions, requests and sub-devices interact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, publishes, server_publish, Harness};
use gateway_proto::payload::{ClientRpcResponse, GatewayTelemetry, PayloadError, TelemetryEntry};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    AttributeScope, Command, CommandError, Config, DeviceCommand, Event, GatewayCommand, QoS,
    ReasonCode, RequestError, RequestId, Role, Warning, KEEPALIVE_KEY,
};
use serde_json::{json, Map, Value};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V311;

/// A publish the client sent, payload as text.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    topic: String,
    payload: String,
    qos: wire::QoS,
    pkid: u16,
}

fn api_config(version: ProtocolVersion, role: Role) -> Config {
    let mut c = config(version);
    c.role = role;
    c.subscribe_api = true;
    c.sub_device_keepalive = None;
    c
}

fn gateway(version: ProtocolVersion) -> Harness {
    let mut h = Harness::new(api_config(version, Role::Gateway));
    h.connect();
    h.take_events();
    h
}

fn device(version: ProtocolVersion) -> Harness {
    let mut h = Harness::new(api_config(version, Role::Device));
    h.connect();
    h.take_events();
    h
}

fn sent(h: &mut Harness) -> Vec<Sent> {
    h.client_packets()
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(Sent {
                topic: p.topic,
                payload: String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload"),
                qos: p.qos,
                pkid: p.pkid,
            }),
            _ => None,
        })
        .collect()
}

/// The one publish a command produced.
fn one(h: &mut Harness) -> Sent {
    let mut all = sent(h);
    assert_eq!(all.len(), 1, "expected one publish, got {all:?}");
    all.remove(0)
}

fn puback(h: &mut Harness, pkid: u16, code: u8) {
    h.send(Packet::PubAck(wire::PubAck { pkid, code }));
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn cmd(h: &mut Harness, command: Command) -> RequestId {
    let id = h.conn.command(h.now, command).expect("command accepted");
    h.drain();
    id
}

fn push(h: &mut Harness, topic: &str, payload: &str) {
    h.send(server_publish(
        topic,
        Bytes::from(payload.to_owned()),
        Some(9),
    ));
}

// ----- subscriptions ---------------------------------------------------------------------

#[test]
fn api_filters_are_subscribed_after_every_connack() {
    for (role, expected) in [
        (
            Role::Gateway,
            vec![
                "v1/devices/me/attributes",
                "v1/devices/me/attributes/response/+",
                "v1/devices/me/rpc/request/+",
                "v1/devices/me/rpc/response/+",
                "v1/gateway/attributes",
                "v1/gateway/attributes/response",
                "v1/gateway/rpc",
            ],
        ),
        (
            Role::Device,
            vec![
                "v1/devices/me/attributes",
                "v1/devices/me/attributes/response/+",
                "v1/devices/me/rpc/request/+",
                "v1/devices/me/rpc/response/+",
            ],
        ),
    ] {
        let mut h = Harness::new(api_config(V5, role));
        h.open();
        h.client_packets();
        h.send(Packet::ConnAck(wire::ConnAck {
            session_present: false,
            code: 0,
        }));
        let packets = h.client_packets();
        let [Packet::Subscribe(s)] = packets.as_slice() else {
            panic!("expected one SUBSCRIBE, got {packets:?}");
        };
        let filters: Vec<(&str, QoS)> = s.filters.iter().map(|(f, q)| (f.as_str(), *q)).collect();
        let want: Vec<(&str, QoS)> = expected.iter().map(|f| (*f, QoS::AtLeastOnce)).collect();
        assert_eq!(filters, want, "{role:?}");
    }
}

// ----- Gateway API: bytes out ------------------------------------------------------------

#[test]
fn gateway_commands_produce_the_servers_shapes() {
    let mut h = gateway(V5);
    let ts = |ts, v: Value| TelemetryEntry::at(ts, map(v));
    let now = |v: Value| TelemetryEntry::now(map(v));
    let cases: Vec<(Command, &str, &str, wire::QoS)> = vec![
        (
            Command::connect_device("Dev A", Some("thermometer")),
            "v1/gateway/connect",
            r#"{"device":"Dev A","type":"thermometer"}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::connect_device("Dev B", None),
            "v1/gateway/connect",
            r#"{"device":"Dev B"}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::Gateway(GatewayCommand::Telemetry {
                device: "Dev A".into(),
                entries: vec![ts(1000, json!({"t": 21.5})), ts(2000, json!({"t": 22}))],
            }),
            "v1/gateway/telemetry",
            r#"{"Dev A":[{"ts":1000,"values":{"t":21.5}},{"ts":2000,"values":{"t":22}}]}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::device_telemetry("Dev A", map(json!({"on": true}))),
            "v1/gateway/telemetry",
            r#"{"Dev A":[{"on":true}]}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::Gateway(GatewayCommand::TelemetryBatch(GatewayTelemetry {
                devices: [
                    ("A".to_owned(), vec![now(json!({"x": 1}))]),
                    ("B".to_owned(), vec![ts(5, json!({"y": "s"}))]),
                ]
                .into_iter()
                .collect(),
            })),
            "v1/gateway/telemetry",
            r#"{"A":[{"x":1}],"B":[{"ts":5,"values":{"y":"s"}}]}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::device_attributes("Dev A", map(json!({"fw": "1.2", "n": 3}))),
            "v1/gateway/attributes",
            r#"{"Dev A":{"fw":"1.2","n":3}}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::Gateway(GatewayCommand::Claim {
                device: "Dev A".into(),
                claim: gateway_proto::payload::Claim {
                    secret_key: Some("s3cr3t".into()),
                    duration_ms: Some(60_000),
                },
            }),
            "v1/gateway/claim",
            r#"{"Dev A":{"secretKey":"s3cr3t","durationMs":60000}}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::Gateway(GatewayCommand::Claim {
                device: "Dev A".into(),
                claim: Default::default(),
            }),
            "v1/gateway/claim",
            r#"{"Dev A":{}}"#,
            wire::QoS::AtLeastOnce,
        ),
        (
            Command::disconnect_device("Dev B"),
            "v1/gateway/disconnect",
            r#"{"device":"Dev B"}"#,
            wire::QoS::AtLeastOnce,
        ),
    ];
    for (command, topic, payload, qos) in cases {
        let what = format!("{command:?}");
        cmd(&mut h, command);
        let s = one(&mut h);
        assert_eq!(
            (s.topic.as_str(), s.payload.as_str(), s.qos),
            (topic, payload, qos),
            "{what}"
        );
        puback(&mut h, s.pkid, 0);
    }
    assert!(h
        .take_events()
        .iter()
        .all(|e| matches!(e, Event::Delivered(_))));
}

#[test]
fn gateway_attribute_requests_use_key_for_one_and_keys_for_several_with_fresh_ids() {
    let mut h = gateway(V5);
    cmd(
        &mut h,
        Command::request_device_attributes("Dev A", AttributeScope::Client, ["model"]),
    );
    let first = one(&mut h);
    assert_eq!(first.topic, "v1/gateway/attributes/request");
    assert_eq!(
        first.payload,
        r#"{"id":1,"device":"Dev A","client":true,"key":"model"}"#
    );
    cmd(
        &mut h,
        Command::request_device_attributes("Dev A", AttributeScope::Shared, ["a", "b"]),
    );
    assert_eq!(
        one(&mut h).payload,
        r#"{"id":2,"device":"Dev A","client":false,"keys":["a","b"]}"#
    );
}

#[test]
fn telemetry_qos_follows_the_config() {
    let mut c = api_config(V5, Role::Gateway);
    c.telemetry_qos = QoS::AtMostOnce;
    let mut h = Harness::new(c);
    h.connect();
    h.take_events();
    cmd(&mut h, Command::connect_device("D", None));
    // Connects stay at QoS 1 whatever the telemetry QoS.
    assert_eq!(one(&mut h).qos, wire::QoS::AtLeastOnce);
    let id = cmd(&mut h, Command::device_telemetry("D", map(json!({"k": 1}))));
    assert_eq!(one(&mut h).qos, wire::QoS::AtMostOnce);
    assert_eq!(h.take_events(), vec![Event::Sent(id)]);
}

/// Found by the simulation (gateway-sim): QoS 0 data for a sub-device the gateway did not
/// track yet registered it silently; when the server could not connect it (tenant device
/// limit) nothing said so, and the gateway kept believing it reachable. Now the connection
/// announces such a device itself at QoS 1, ahead of the data, and a refusal forgets it.
#[test]
fn qos0_data_for_a_new_sub_device_announces_it_and_a_refusal_forgets_it() {
    let mut c = api_config(V5, Role::Gateway);
    c.telemetry_qos = QoS::AtMostOnce;
    let mut h = Harness::new(c);
    h.connect();
    h.take_events();
    let id = cmd(&mut h, Command::device_telemetry("D", map(json!({"k": 1}))));
    let sent = sent(&mut h);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        (
            sent[0].topic.as_str(),
            sent[0].payload.as_str(),
            sent[0].qos
        ),
        (
            "v1/gateway/connect",
            r#"{"device":"D"}"#,
            wire::QoS::AtLeastOnce
        )
    );
    assert_eq!(
        (sent[1].topic.as_str(), sent[1].qos),
        ("v1/gateway/telemetry", wire::QoS::AtMostOnce)
    );
    assert_eq!(h.take_events(), vec![Event::Sent(id)]);
    puback(&mut h, sent[0].pkid, 0x97);
    assert_eq!(
        h.take_events(),
        vec![Event::Warning(Warning::ReannounceRejected {
            device: "D".into(),
            code: ReasonCode::QuotaExceeded,
        })]
    );
    assert!(!h.conn.is_sub_device_registered("D"));
    // Known devices are not announced again with their data.
    cmd(&mut h, Command::connect_device("E", None));
    let ack = one(&mut h);
    puback(&mut h, ack.pkid, 0);
    cmd(&mut h, Command::device_telemetry("E", map(json!({"k": 2}))));
    assert_eq!(one(&mut h).topic, "v1/gateway/telemetry");
}

/// Found by the simulation (gateway-sim), the QoS 1 side of the same hole: data that started
/// tracking a sub-device was refused (MQTT 5 PUBACK 0x97, device limit), the request failed,
/// but the device stayed tracked as if connected. Now it is forgotten like a refused connect;
/// a device tracked before keeps its place when one of its messages is refused.
#[test]
fn refused_data_forgets_the_sub_devices_it_started_tracking() {
    let mut h = gateway(V5);
    cmd(&mut h, Command::connect_device("Known", None));
    let ack = one(&mut h);
    puback(&mut h, ack.pkid, 0);
    h.take_events();
    let id = cmd(
        &mut h,
        Command::device_telemetry("New", map(json!({"k": 1}))),
    );
    let p = one(&mut h);
    assert!(h.conn.is_sub_device_registered("New"));
    puback(&mut h, p.pkid, 0x97);
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: id,
            error: RequestError::Rejected(ReasonCode::QuotaExceeded),
        }]
    );
    assert!(!h.conn.is_sub_device_registered("New"));
    let id = cmd(
        &mut h,
        Command::request_device_attributes("Other", AttributeScope::Shared, ["k"]),
    );
    let p = one(&mut h);
    puback(&mut h, p.pkid, 0x97);
    assert!(
        matches!(h.take_events().as_slice(), [Event::Failed { request, .. }] if *request == id)
    );
    assert!(!h.conn.is_sub_device_registered("Other"));
    let id = cmd(
        &mut h,
        Command::device_telemetry("Known", map(json!({"k": 1}))),
    );
    let p = one(&mut h);
    puback(&mut h, p.pkid, 0x97);
    assert!(
        matches!(h.take_events().as_slice(), [Event::Failed { request, .. }] if *request == id)
    );
    assert!(
        h.conn.is_sub_device_registered("Known"),
        "tracked before: kept"
    );
}

// ----- Device API: bytes out -------------------------------------------------------------

#[test]
fn device_commands_produce_the_servers_shapes() {
    let mut h = device(V5);
    let cases: Vec<(Command, &str, &str)> = vec![
        (
            Command::telemetry(map(json!({"temp": 21.5}))),
            "v1/devices/me/telemetry",
            r#"{"temp":21.5}"#,
        ),
        (
            Command::Device(DeviceCommand::Telemetry(vec![
                TelemetryEntry::at(1, map(json!({"a": 1}))),
                TelemetryEntry::at(2, map(json!({"a": 2}))),
            ])),
            "v1/devices/me/telemetry",
            r#"[{"ts":1,"values":{"a":1}},{"ts":2,"values":{"a":2}}]"#,
        ),
        (
            Command::Device(DeviceCommand::Telemetry(vec![TelemetryEntry::at(
                7,
                map(json!({"a": 1})),
            )])),
            "v1/devices/me/telemetry",
            r#"{"ts":7,"values":{"a":1}}"#,
        ),
        (
            Command::attributes(map(json!({"fw_version": "1.0"}))),
            "v1/devices/me/attributes",
            r#"{"fw_version":"1.0"}"#,
        ),
        (
            Command::Device(DeviceCommand::Claim(gateway_proto::payload::Claim {
                secret_key: Some("k".into()),
                duration_ms: None,
            })),
            "v1/devices/me/claim",
            r#"{"secretKey":"k"}"#,
        ),
        (
            Command::request_attributes(["a", "b"], ["c"]),
            "v1/devices/me/attributes/request/1",
            r#"{"clientKeys":"a,b","sharedKeys":"c"}"#,
        ),
        (
            Command::request_attributes(Vec::<String>::new(), Vec::new()),
            "v1/devices/me/attributes/request/2",
            "{}",
        ),
        (
            Command::rpc("getCurrentTime", json!({})),
            "v1/devices/me/rpc/request/3",
            r#"{"method":"getCurrentTime","params":{}}"#,
        ),
    ];
    for (command, topic, payload) in cases {
        let what = format!("{command:?}");
        cmd(&mut h, command);
        let s = one(&mut h);
        assert_eq!(
            (s.topic.as_str(), s.payload.as_str()),
            (topic, payload),
            "{what}"
        );
        assert_eq!(s.qos, wire::QoS::AtLeastOnce);
    }
}

#[test]
fn device_rpc_reply_goes_to_the_id_the_request_came_with() {
    let mut h = device(V3);
    push(
        &mut h,
        "v1/devices/me/rpc/request/42",
        r#"{"method":"setGpio","params":{"pin":4,"value":1}}"#,
    );
    assert_eq!(
        h.take_events(),
        vec![Event::RpcRequest {
            device: None,
            id: 42,
            method: "setGpio".into(),
            params: json!({"pin": 4, "value": 1}),
        }]
    );
    cmd(&mut h, Command::rpc_reply(42, json!({"done": true})));
    let s = one(&mut h);
    assert_eq!(
        (s.topic.as_str(), s.payload.as_str()),
        ("v1/devices/me/rpc/response/42", r#"{"done":true}"#)
    );
    assert_eq!(
        h.conn.command(h.now, Command::rpc_reply(42, json!(1))),
        Err(CommandError::UnknownRpc {
            device: None,
            id: 42
        }),
        "a second reply to the same RPC"
    );
}

// ----- command errors --------------------------------------------------------------------

#[test]
fn commands_that_cannot_work_are_refused_synchronously() {
    let mut d = device(V5);
    assert_eq!(
        d.conn.command(d.now, Command::connect_device("X", None)),
        Err(CommandError::NotAGateway)
    );
    assert!(matches!(
        d.conn.command(
            d.now,
            Command::request_attributes(["a,b"], Vec::<&str>::new())
        ),
        Err(CommandError::Payload(PayloadError::InvalidKey { .. }))
    ));
    assert!(matches!(
        d.conn
            .command(d.now, Command::Device(DeviceCommand::Telemetry(vec![]))),
        Err(CommandError::Payload(_))
    ));
    assert_eq!(
        d.conn.command(d.now, Command::rpc_reply(0, json!(null))),
        Err(CommandError::UnknownRpc {
            device: None,
            id: 0
        })
    );

    let mut c = api_config(V5, Role::Gateway);
    c.max_sub_devices = 2;
    c.max_pending_requests = 1;
    let mut g = Harness::new(c);
    g.connect();
    assert_eq!(
        g.conn.command(g.now, Command::connect_device("", None)),
        Err(CommandError::EmptyDeviceName)
    );
    cmd(&mut g, Command::connect_device("A", None));
    cmd(&mut g, Command::device_telemetry("B", Map::new()));
    assert_eq!(
        g.conn
            .command(g.now, Command::device_attributes("C", Map::new())),
        Err(CommandError::TooManyDevices { max: 2 }),
        "implicit registration counts against the bound"
    );
    assert_eq!(
        g.conn.command(
            g.now,
            Command::Gateway(GatewayCommand::TelemetryBatch(GatewayTelemetry::default()))
        ),
        Err(CommandError::Payload(PayloadError::NoDeviceEntries)),
        "an empty batch would make ThingsBoard drop the session"
    );
    let keys: [&str; 0] = [];
    assert!(matches!(
        g.conn.command(
            g.now,
            Command::request_device_attributes("A", AttributeScope::Client, keys)
        ),
        Err(CommandError::Payload(_))
    ));
    cmd(
        &mut g,
        Command::request_device_attributes("A", AttributeScope::Client, ["k"]),
    );
    assert_eq!(
        g.conn.command(
            g.now,
            Command::request_device_attributes("A", AttributeScope::Client, ["k"])
        ),
        Err(CommandError::TooManyRequests { max: 1 })
    );
    assert_eq!(
        g.conn
            .command(g.now, Command::device_rpc_reply("A", 0, json!({}))),
        Err(CommandError::UnknownRpc {
            device: Some("A".into()),
            id: 0
        }),
        "a reply to an RPC never received"
    );
    // Disconnect frees a slot.
    cmd(&mut g, Command::disconnect_device("B"));
    cmd(&mut g, Command::device_attributes("C", Map::new()));
    assert_eq!(g.conn.stats().sub_devices, 2);
}

// ----- downlinks: bytes in, events out ---------------------------------------------------

#[test]
fn gateway_downlinks_become_typed_events() {
    let mut h = gateway(V5);
    push(
        &mut h,
        "v1/gateway/attributes",
        r#"{"device":"Dev A","data":{"target":21,"deleted":["old"]}}"#,
    );
    push(
        &mut h,
        "v1/gateway/rpc",
        r#"{"device":"Dev A","data":{"id":0,"method":"toggle_gpio","params":{"pin":1}}}"#,
    );
    push(
        &mut h,
        "v1/gateway/disconnect",
        r#"{"device":"Dev A","reason":150}"#,
    );
    push(
        &mut h,
        "v1/devices/me/attributes",
        r#"{"interval":5,"deleted":["x","y"]}"#,
    );
    assert_eq!(
        h.take_events(),
        vec![
            Event::AttributeUpdate {
                device: Some("Dev A".into()),
                values: map(json!({"target": 21})),
                deleted: vec!["old".into()],
            },
            Event::RpcRequest {
                device: Some("Dev A".into()),
                id: 0,
                method: "toggle_gpio".into(),
                params: json!({"pin": 1}),
            },
            Event::SubDeviceDisconnected {
                device: "Dev A".into(),
                reason: ReasonCode::MessageRateTooHigh,
            },
            Event::AttributeUpdate {
                device: None,
                values: map(json!({"interval": 5})),
                deleted: vec!["x".into(), "y".into()],
            },
        ]
    );
    cmd(
        &mut h,
        Command::device_rpc_reply("Dev A", 0, json!({"success": true})),
    );
    let s = one(&mut h);
    assert_eq!(
        (s.topic.as_str(), s.payload.as_str()),
        (
            "v1/gateway/rpc",
            r#"{"device":"Dev A","id":0,"data":{"success":true}}"#
        )
    );
}

#[test]
fn attribute_response_in_all_three_shapes() {
    let mut h = gateway(V5);
    let single = cmd(
        &mut h,
        Command::request_device_attributes("D", AttributeScope::Shared, ["target"]),
    );
    let several = cmd(
        &mut h,
        Command::request_device_attributes("D", AttributeScope::Client, ["a", "missing"]),
    );
    let nothing = cmd(
        &mut h,
        Command::request_device_attributes("D", AttributeScope::Client, ["missing"]),
    );
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    assert!(
        h.take_events().is_empty(),
        "a PUBACK is not a request's outcome"
    );
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":1,"device":"D","value":22.5}"#,
    );
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":2,"device":"D","values":{"a":"x"}}"#,
    );
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":3,"device":"D"}"#,
    );
    assert_eq!(
        h.take_events(),
        vec![
            Event::AttributeResponse {
                request: single,
                device: Some("D".into()),
                client: Map::new(),
                shared: map(json!({"target": 22.5})),
            },
            Event::AttributeResponse {
                request: several,
                device: Some("D".into()),
                client: map(json!({"a": "x"})),
                shared: Map::new(),
            },
            Event::AttributeResponse {
                request: nothing,
                device: Some("D".into()),
                client: Map::new(),
                shared: Map::new(),
            },
        ]
    );
    assert_eq!(h.conn.stats().pending_requests, 0);
}

#[test]
fn device_attribute_response_and_client_rpc_response_complete_their_requests() {
    let mut h = device(V5);
    let attrs = cmd(&mut h, Command::request_attributes(["a"], ["b"]));
    let rpc = cmd(&mut h, Command::rpc("getTime", json!(null)));
    let slow = cmd(&mut h, Command::rpc("slow", json!(null)));
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    push(
        &mut h,
        "v1/devices/me/attributes/response/1",
        r#"{"client":{"a":1},"shared":{"b":"two"}}"#,
    );
    push(
        &mut h,
        "v1/devices/me/rpc/response/2",
        r#"{"time":1700000000}"#,
    );
    push(
        &mut h,
        "v1/devices/me/rpc/response/3",
        r#"{"error":"timeout"}"#,
    );
    assert_eq!(
        h.take_events(),
        vec![
            Event::AttributeResponse {
                request: attrs,
                device: None,
                client: map(json!({"a": 1})),
                shared: map(json!({"b": "two"})),
            },
            Event::RpcResponse {
                request: rpc,
                response: ClientRpcResponse::Ok(json!({"time": 1700000000})),
            },
            Event::RpcResponse {
                request: slow,
                response: ClientRpcResponse::Error("timeout".into()),
            },
        ]
    );
}

#[test]
fn responses_on_the_wrong_topic_kind_or_device_do_not_complete_requests() {
    let mut h = gateway(V5);
    let req = cmd(
        &mut h,
        Command::request_device_attributes("A", AttributeScope::Client, ["k"]),
    );
    let rpc = cmd(&mut h, Command::rpc("m", json!(1)));
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    // Right id, wrong device; an RPC response for the attribute request's id; an attribute
    // response for the RPC's id.
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":1,"device":"B","value":1}"#,
    );
    push(&mut h, "v1/devices/me/rpc/response/1", r#"{"x":1}"#);
    push(&mut h, "v1/devices/me/attributes/response/2", r#"{}"#);
    let events = h.take_events();
    assert_eq!(
        events,
        vec![
            Event::Warning(Warning::UnmatchedResponse {
                topic: "v1/gateway/attributes/response".into(),
                id: 1
            }),
            Event::Warning(Warning::UnmatchedResponse {
                topic: "v1/devices/me/rpc/response/1".into(),
                id: 1
            }),
            Event::Warning(Warning::UnmatchedResponse {
                topic: "v1/devices/me/attributes/response/2".into(),
                id: 2
            }),
        ]
    );
    // The right answers still work afterwards.
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":1,"device":"A","value":1}"#,
    );
    push(&mut h, "v1/devices/me/rpc/response/2", r#"7"#);
    let events = h.take_events();
    assert!(matches!(&events[0], Event::AttributeResponse { request, .. } if *request == req));
    assert!(matches!(&events[1], Event::RpcResponse { request, .. } if *request == rpc));
}

#[test]
fn bad_server_input_is_a_warning_never_a_disconnect() {
    for version in [V5, V3] {
        let mut h = gateway(version);
        let cases = [
            ("v1/gateway/rpc", "{not json"),
            ("v1/gateway/rpc", r#"{"device":"A","data":{"method":"m"}}"#),
            ("v1/gateway/attributes", "[]"),
            ("v1/gateway/attributes", r#"{"device":"","data":{}}"#),
            ("v1/gateway/attributes/response", r#"{"device":"A"}"#),
            ("v1/gateway/disconnect", r#"{"device":"A","reason":"x"}"#),
            ("v1/devices/me/attributes", "42"),
            ("v1/devices/me/rpc/request/5", r#"{"params":1}"#),
            ("v1/devices/me/rpc/request/5", ""),
        ];
        for (topic, payload) in cases {
            push(&mut h, topic, payload);
            let events = h.take_events();
            assert!(
                matches!(
                    events.as_slice(),
                    [Event::Warning(Warning::InvalidMessage { topic: t, .. })] if t == topic
                ),
                "{topic} {payload:?} gave {events:?}"
            );
        }
        // Unknown ids on response topics.
        push(&mut h, "v1/devices/me/rpc/response/77", "{}");
        push(
            &mut h,
            "v1/devices/me/attributes/response/99999999999",
            "{}",
        );
        let events = h.take_events();
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Event::Warning(Warning::UnmatchedResponse { .. }))),
            "{events:?}"
        );
        assert_eq!(events.len(), 2);
        assert_eq!(h.conn.stats().disconnects, 0);
        assert!(h.conn.stats().protocol_errors == 0);
    }
}

#[test]
fn unknown_topics_and_protobuf_payloads_are_passed_on_raw() {
    let mut h = device(V5);
    push(&mut h, "v2/a/p", "\u{8}\u{1}");
    push(&mut h, "custom/topic", "raw");
    assert_eq!(
        h.take_events(),
        vec![
            Event::Message {
                topic: "v2/a/p".into(),
                payload: Bytes::from_static(b"\x08\x01"),
            },
            Event::Message {
                topic: "custom/topic".into(),
                payload: Bytes::from_static(b"raw"),
            },
        ]
    );
}

// ----- correlation scenarios -------------------------------------------------------------

#[test]
fn rpc_ids_are_per_device_so_replies_correlate_by_device_and_id() {
    let mut h = gateway(V5);
    for device in ["A", "B"] {
        push(
            &mut h,
            "v1/gateway/rpc",
            &format!(r#"{{"device":"{device}","data":{{"id":0,"method":"m","params":null}}}}"#),
        );
    }
    assert_eq!(h.take_events().len(), 2);
    cmd(&mut h, Command::device_rpc_reply("B", 0, json!("b")));
    cmd(&mut h, Command::device_rpc_reply("A", 0, json!("a")));
    let replies: Vec<String> = sent(&mut h).into_iter().map(|s| s.payload).collect();
    assert_eq!(
        replies,
        [
            r#"{"device":"B","id":0,"data":"b"}"#,
            r#"{"device":"A","id":0,"data":"a"}"#
        ]
    );
    for device in ["A", "B"] {
        assert_eq!(
            h.conn
                .command(h.now, Command::device_rpc_reply(device, 0, json!(1))),
            Err(CommandError::UnknownRpc {
                device: Some(device.into()),
                id: 0
            })
        );
    }
}

#[test]
fn attribute_request_times_out_and_its_late_answer_is_ignored() {
    let mut c = api_config(V5, Role::Gateway);
    c.attribute_request_timeout = Duration::from_secs(10);
    let mut h = Harness::new(c);
    h.connect();
    h.take_events();
    let id = cmd(
        &mut h,
        Command::request_device_attributes("A", AttributeScope::Client, ["k"]),
    );
    let s = one(&mut h);
    puback(&mut h, s.pkid, 0);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: id,
            error: RequestError::Timeout
        }]
    );
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":1,"device":"A","value":5}"#,
    );
    assert_eq!(
        h.take_events(),
        vec![Event::Warning(Warning::UnmatchedResponse {
            topic: "v1/gateway/attributes/response".into(),
            id: 1
        })]
    );
    // The next request gets a new id, so the late answer could not have matched it either.
    cmd(
        &mut h,
        Command::request_device_attributes("A", AttributeScope::Client, ["k"]),
    );
    assert!(one(&mut h).payload.starts_with(r#"{"id":2,"#));
}

#[test]
fn a_request_times_out_even_while_offline_and_its_publish_is_not_sent_later() {
    let mut c = api_config(V5, Role::Device);
    c.rpc_timeout = Duration::from_secs(5);
    let mut h = Harness::new(c);
    h.connect();
    h.drop_transport();
    h.take_events();
    let id = cmd(&mut h, Command::rpc("m", json!(null)));
    h.now += Duration::from_secs(5);
    h.input(gateway_proto::Input::Timeout);
    assert!(h.take_events().contains(&Event::Failed {
        request: id,
        error: RequestError::Timeout
    }));
    while h.conn.poll_timeout().is_some_and(|t| t > h.now) && !h.open_requested {
        h.advance_to_timeout();
    }
    let after = h.connect();
    assert!(common::publishes(&after).is_empty(), "{after:?}");
}

#[test]
fn an_answer_before_the_puback_completes_the_request_once() {
    let mut h = device(V5);
    let id = cmd(&mut h, Command::rpc("m", json!(null)));
    let s = one(&mut h);
    push(&mut h, "v1/devices/me/rpc/response/1", "true");
    puback(&mut h, s.pkid, 0);
    assert_eq!(
        h.take_events(),
        vec![Event::RpcResponse {
            request: id,
            response: ClientRpcResponse::Ok(json!(true))
        }]
    );
    assert_eq!(h.conn.stats().late_acks, 1);
    assert_eq!(h.conn.stats().inflight, 0);
}

#[test]
fn rejected_request_fails_with_the_reason_code() {
    let mut h = gateway(V5);
    let id = cmd(
        &mut h,
        Command::request_device_attributes("A", AttributeScope::Client, ["k"]),
    );
    let s = one(&mut h);
    puback(&mut h, s.pkid, 0x83);
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: id,
            error: RequestError::Rejected(ReasonCode::ImplementationSpecificError)
        }]
    );
    assert_eq!(h.conn.stats().pending_requests, 0);
}

#[test]
fn acknowledged_requests_fail_on_connection_loss_and_unacknowledged_ones_are_resent() {
    let mut h = device(V5);
    let answered_lost = cmd(&mut h, Command::rpc("a", json!(null)));
    let unacked = cmd(
        &mut h,
        Command::request_attributes(["k"], Vec::<&str>::new()),
    );
    let packets = sent(&mut h);
    puback(&mut h, packets[0].pkid, 0);
    h.drop_transport();
    let events = h.take_events();
    assert!(events.contains(&Event::Failed {
        request: answered_lost,
        error: RequestError::ConnectionLost
    }));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Failed { request, .. } if *request == unacked)));
    h.advance_to_timeout();
    let after = h.connect();
    let resent = common::publishes(&after);
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].topic, "v1/devices/me/attributes/request/2");
    assert!(resent[0].dup);
    push(
        &mut h,
        "v1/devices/me/attributes/response/2",
        r#"{"client":{"k":1}}"#,
    );
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::AttributeResponse { request, .. } if *request == unacked)));
}

#[test]
fn close_fails_every_pending_request_once() {
    let mut h = device(V5);
    let acked = cmd(&mut h, Command::rpc("a", json!(null)));
    let queued = cmd(&mut h, Command::rpc("b", json!(null)));
    let packets = sent(&mut h);
    puback(&mut h, packets[0].pkid, 0);
    h.take_events();
    h.conn.close(h.now);
    h.drain();
    let failed: Vec<RequestId> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Failed {
                request,
                error: RequestError::Closed,
            } => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [queued, acked]);
    assert_eq!(h.conn.stats().pending_requests, 0);
}

#[test]
fn pending_server_rpcs_are_bounded_and_the_oldest_is_forgotten() {
    let mut c = api_config(V5, Role::Gateway);
    c.max_pending_server_rpcs = 2;
    let mut h = Harness::new(c);
    h.connect();
    for id in 0..3 {
        push(
            &mut h,
            "v1/gateway/rpc",
            &format!(r#"{{"device":"A","data":{{"id":{id},"method":"m"}}}}"#),
        );
    }
    let events = h.take_events();
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[2],
        Event::Warning(Warning::ServerRpcForgotten {
            device: Some("A".into()),
            id: 0
        })
    );
    assert_eq!(h.conn.stats().pending_server_rpcs, 2);
    assert!(h
        .conn
        .command(h.now, Command::device_rpc_reply("A", 0, json!(1)))
        .is_err());
    cmd(&mut h, Command::device_rpc_reply("A", 2, json!(1)));
}

// ----- sub-device registry ---------------------------------------------------------------

/// Parses a gateway uplink and names the device(s) it is about.
fn devices_in(s: &Sent) -> Vec<String> {
    let v: Value = serde_json::from_str(&s.payload).unwrap();
    match s.topic.as_str() {
        "v1/gateway/connect"
        | "v1/gateway/disconnect"
        | "v1/gateway/attributes/request"
        | "v1/gateway/rpc" => vec![v["device"].as_str().unwrap().to_owned()],
        _ => map(v).keys().cloned().collect(),
    }
}

#[test]
fn reconnect_reannounces_every_sub_device_before_queued_data() {
    for version in [V5, V3] {
        let mut h = gateway(version);
        cmd(&mut h, Command::connect_device("Zeta", Some("pump")));
        cmd(
            &mut h,
            Command::device_telemetry("Alpha", map(json!({"v": 1}))),
        );
        for s in sent(&mut h) {
            puback(&mut h, s.pkid, 0);
        }
        h.drop_transport();
        // Data queued while offline.
        cmd(
            &mut h,
            Command::device_telemetry("Zeta", map(json!({"v": 2}))),
        );
        cmd(
            &mut h,
            Command::device_telemetry("Alpha", map(json!({"v": 3}))),
        );
        h.advance_to_timeout();
        let after = h.connect();
        let order: Vec<(String, String)> = common::publishes(&after)
            .iter()
            .map(|p| {
                (
                    p.topic.clone(),
                    String::from_utf8(p.payload.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                ("v1/gateway/connect".into(), r#"{"device":"Alpha"}"#.into()),
                (
                    "v1/gateway/connect".into(),
                    r#"{"device":"Zeta","type":"pump"}"#.into()
                ),
                (
                    "v1/gateway/telemetry".into(),
                    r#"{"Zeta":[{"v":2}]}"#.into()
                ),
                (
                    "v1/gateway/telemetry".into(),
                    r#"{"Alpha":[{"v":3}]}"#.into()
                ),
            ],
            "{version:?}"
        );
        assert_eq!(h.conn.stats().reannounced, 2);
        // Re-announces are not application requests: acknowledging them yields no event.
        h.take_events();
        for p in common::publishes(&after).iter().take(2) {
            puback(&mut h, p.pkid, 0);
        }
        assert!(h.take_events().is_empty());
    }
}

#[test]
fn reannounce_respects_the_inflight_window_and_data_waits_for_it() {
    let mut c = api_config(V5, Role::Gateway);
    c.max_inflight = 2;
    let mut h = Harness::new(c);
    h.connect();
    for n in 0..5 {
        cmd(&mut h, Command::connect_device(format!("D{n}"), None));
    }
    // Acknowledge everything until the five connects are through.
    loop {
        let s = sent(&mut h);
        if s.is_empty() {
            break;
        }
        for p in s {
            puback(&mut h, p.pkid, 0);
        }
    }
    h.drop_transport();
    cmd(
        &mut h,
        Command::device_telemetry("D0", map(json!({"x": 1}))),
    );
    h.advance_to_timeout();
    let mut seen = Vec::new();
    let mut publishes: Vec<wire::Publish> = common::publishes(&h.connect())
        .into_iter()
        .cloned()
        .collect();
    while !publishes.is_empty() {
        assert!(publishes.len() <= 2, "window of 2 exceeded: {publishes:?}");
        for p in &publishes {
            seen.push(p.topic.clone());
            puback(&mut h, p.pkid, 0);
        }
        publishes = common::publishes(&h.client_packets())
            .into_iter()
            .cloned()
            .collect();
    }
    assert_eq!(
        seen,
        [
            "v1/gateway/connect",
            "v1/gateway/connect",
            "v1/gateway/connect",
            "v1/gateway/connect",
            "v1/gateway/connect",
            "v1/gateway/telemetry"
        ]
    );
}

#[test]
fn connect_refused_for_device_limit_fails_keeps_the_session_and_forgets_the_device() {
    let mut h = gateway(V5);
    let id = cmd(&mut h, Command::connect_device("Overflow", None));
    let s = one(&mut h);
    puback(&mut h, s.pkid, 0x97);
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: id,
            error: RequestError::Rejected(ReasonCode::QuotaExceeded)
        }]
    );
    assert!(!h.conn.is_sub_device_registered("Overflow"));
    assert_eq!(h.conn.stats().disconnects, 0);
    h.drop_transport();
    h.advance_to_timeout();
    assert!(common::publishes(&h.connect()).is_empty());
}

#[test]
fn reannounce_refused_is_a_warning_and_the_device_is_forgotten() {
    let mut h = gateway(V5);
    cmd(&mut h, Command::connect_device("A", None));
    let s = one(&mut h);
    puback(&mut h, s.pkid, 0);
    h.drop_transport();
    h.advance_to_timeout();
    let after = h.connect();
    let p = common::publishes(&after)[0].clone();
    h.take_events();
    puback(&mut h, p.pkid, 0x97);
    assert_eq!(
        h.take_events(),
        vec![Event::Warning(Warning::ReannounceRejected {
            device: "A".into(),
            code: ReasonCode::QuotaExceeded
        })]
    );
    assert!(!h.conn.is_sub_device_registered("A"));
}

#[test]
fn rename_keeps_type_pending_rpcs_and_requests_under_the_new_name() {
    let mut h = gateway(V5);
    cmd(&mut h, Command::connect_device("Old", Some("meter")));
    let req = cmd(
        &mut h,
        Command::request_device_attributes("Old", AttributeScope::Shared, ["k"]),
    );
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    push(
        &mut h,
        "v1/gateway/rpc",
        r#"{"device":"Old","data":{"id":3,"method":"m"}}"#,
    );
    push(
        &mut h,
        "v1/devices/me/rpc/request/1",
        r#"{"method":"gateway_device_renamed","params":{"Old":"New"}}"#,
    );
    let events = h.take_events();
    assert_eq!(
        events.last(),
        Some(&Event::SubDeviceRenamed {
            old_name: "Old".into(),
            new_name: "New".into()
        })
    );
    assert!(h.conn.is_sub_device_registered("New") && !h.conn.is_sub_device_registered("Old"));
    assert_eq!(
        h.conn
            .command(h.now, Command::device_rpc_reply("Old", 3, json!(1))),
        Err(CommandError::UnknownRpc {
            device: Some("Old".into()),
            id: 3
        })
    );
    cmd(&mut h, Command::device_rpc_reply("New", 3, json!(1)));
    // The server answers under the name the device has now.
    push(
        &mut h,
        "v1/gateway/attributes/response",
        r#"{"id":1,"device":"New","value":1}"#,
    );
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::AttributeResponse { request, device: Some(d), .. } if *request == req && d == "New")));
    // The notification is not a pending RPC of the gateway itself.
    assert!(h
        .conn
        .command(h.now, Command::rpc_reply(1, json!(1)))
        .is_err());
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    h.drop_transport();
    h.advance_to_timeout();
    let after = h.connect();
    let announced: Vec<String> = common::publishes(&after)
        .iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(announced, [r#"{"device":"New","type":"meter"}"#]);
}

#[test]
fn deleted_device_is_forgotten_with_its_rpcs() {
    let mut h = gateway(V5);
    cmd(&mut h, Command::connect_device("Gone", None));
    cmd(&mut h, Command::connect_device("Kept", None));
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    push(
        &mut h,
        "v1/gateway/rpc",
        r#"{"device":"Gone","data":{"id":0,"method":"m"}}"#,
    );
    push(
        &mut h,
        "v1/devices/me/rpc/request/7",
        r#"{"method":"gateway_device_deleted","params":"Gone"}"#,
    );
    assert_eq!(
        h.take_events().last(),
        Some(&Event::SubDeviceDeleted {
            device: "Gone".into()
        })
    );
    assert!(h
        .conn
        .command(h.now, Command::device_rpc_reply("Gone", 0, json!(1)))
        .is_err());
    h.drop_transport();
    h.advance_to_timeout();
    let after = h.connect();
    let announced: Vec<&str> = common::publishes(&after)
        .iter()
        .map(|p| std::str::from_utf8(&p.payload).unwrap())
        .collect();
    assert_eq!(announced, [r#"{"device":"Kept"}"#]);
}

#[test]
fn a_device_connection_treats_notification_methods_as_ordinary_rpcs() {
    let mut h = device(V5);
    push(
        &mut h,
        "v1/devices/me/rpc/request/1",
        r#"{"method":"gateway_device_deleted","params":"X"}"#,
    );
    assert!(matches!(
        h.take_events().as_slice(),
        [Event::RpcRequest {
            device: None,
            id: 1,
            ..
        }]
    ));
}

#[test]
fn silent_sub_devices_get_a_keepalive_that_counts_as_activity() {
    let mut c = api_config(V5, Role::Gateway);
    c.sub_device_keepalive = Some(Duration::from_secs(480));
    // No MQTT pings: this broker script does not answer them.
    c.keep_alive = Duration::ZERO;
    let mut h = Harness::new(c);
    h.connect();
    cmd(&mut h, Command::connect_device("Quiet", None));
    cmd(&mut h, Command::connect_device("Busy", None));
    for s in sent(&mut h) {
        puback(&mut h, s.pkid, 0);
    }
    h.take_events();
    // Busy sends telemetry every minute; Quiet sends nothing.
    for _ in 0..7 {
        h.now += Duration::from_secs(60);
        h.input(gateway_proto::Input::Timeout);
        cmd(
            &mut h,
            Command::device_telemetry("Busy", map(json!({"x": 1}))),
        );
        for s in sent(&mut h) {
            assert_eq!(devices_in(&s), ["Busy"], "{s:?}");
            puback(&mut h, s.pkid, 0);
        }
    }
    // Eight minutes after its last uplink (the connect), Quiet gets a keep-alive.
    h.advance(Duration::from_secs(60));
    let keepalives = sent(&mut h);
    assert_eq!(keepalives.len(), 1, "{keepalives:?}");
    let k = &keepalives[0];
    assert_eq!(k.topic, "v1/gateway/attributes/request");
    let body: Value = serde_json::from_str(&k.payload).unwrap();
    assert_eq!(body["device"], "Quiet");
    assert_eq!(body["key"], KEEPALIVE_KEY);
    assert_eq!(body["client"], true);
    puback(&mut h, k.pkid, 0);
    let before = h.take_events();
    assert!(
        before.iter().all(|e| matches!(e, Event::Delivered(_))),
        "only Busy's telemetry outcomes: {before:?}"
    );
    let id = body["id"].as_u64().unwrap();
    push(
        &mut h,
        "v1/gateway/attributes/response",
        &format!(r#"{{"id":{id},"device":"Quiet"}}"#),
    );
    assert!(
        h.take_events().is_empty(),
        "the keep-alive's answer is consumed"
    );
    assert_eq!(h.conn.stats().keepalives_sent, 1);
    assert_eq!(h.conn.stats().pending_requests, 0);
    // Not again until another 8 minutes of silence.
    h.advance(Duration::from_secs(400));
    assert!(sent(&mut h).is_empty());
}

#[test]
fn qos0_data_also_waits_behind_the_reannounce() {
    let mut c = api_config(V5, Role::Gateway);
    c.max_inflight = 1;
    c.telemetry_qos = QoS::AtMostOnce;
    let mut h = Harness::new(c);
    h.connect();
    for n in ["A", "B"] {
        cmd(&mut h, Command::connect_device(n, None));
        let s = one(&mut h);
        puback(&mut h, s.pkid, 0);
    }
    h.drop_transport();
    cmd(&mut h, Command::device_telemetry("A", map(json!({"x": 1}))));
    h.advance_to_timeout();
    let after = h.connect();
    let first = common::publishes(&after);
    assert_eq!(first.len(), 1, "QoS 0 data must not overtake: {first:?}");
    assert_eq!(first[0].topic, "v1/gateway/connect");
    puback(&mut h, first[0].pkid, 0);
    let mut rest = Vec::new();
    for _ in 0..3 {
        for p in sent(&mut h) {
            rest.push(p.topic.clone());
            if p.qos == wire::QoS::AtLeastOnce {
                puback(&mut h, p.pkid, 0);
            }
        }
    }
    assert_eq!(rest, ["v1/gateway/connect", "v1/gateway/telemetry"]);
}

mod names {
    use super::*;
    use gateway_proto::payload::{
        Connect, GatewayAttributeRequest, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry,
        Payload,
    };
    use proptest::prelude::*;

    fn device_name() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\"\\\\/+#a-zé\u{1F600}\u{0}-\u{1f} ,:{}\\[\\]]{1,12}",
        ]
        .prop_filter("non-empty", |s| !s.is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any device name (Unicode, quotes, slashes, `+`/`#`, control characters) goes
        /// through the connection into JSON and comes back unchanged, both directions.
        #[test]
        fn device_names_survive_both_directions(name in device_name(), id in 0u64..1000) {
            let mut h = gateway(V5);
            cmd(&mut h, Command::connect_device(name.clone(), Some("t")));
            cmd(&mut h, Command::device_telemetry(name.clone(), map(json!({"k": 1}))));
            cmd(&mut h, Command::request_device_attributes(name.clone(), AttributeScope::Client, ["k"]));
            let out = sent(&mut h);
            prop_assert_eq!(out.len(), 3);
            prop_assert_eq!(Connect::parse(out[0].payload.as_bytes()).unwrap().device, name.clone());
            let t = GatewayTelemetry::parse(out[1].payload.as_bytes()).unwrap();
            prop_assert_eq!(t.devices.keys().collect::<Vec<_>>(), vec![&name]);
            let r = GatewayAttributeRequest::parse(out[2].payload.as_bytes()).unwrap();
            prop_assert_eq!(&r.device, &name);
            for s in &out {
                puback(&mut h, s.pkid, 0);
            }
            h.take_events();
            let rpc = GatewayRpcRequest {
                device: name.clone(),
                id,
                method: "m".into(),
                params: Value::Null,
            };
            h.send(server_publish("v1/gateway/rpc", rpc.to_bytes(), Some(3)));
            let events = h.take_events();
            prop_assert_eq!(
                events,
                vec![Event::RpcRequest { device: Some(name.clone()), id, method: "m".into(), params: Value::Null }]
            );
            cmd(&mut h, Command::device_rpc_reply(name.clone(), id, json!(1)));
            let reply = one(&mut h);
            prop_assert_eq!(
                GatewayRpcResponse::parse(reply.payload.as_bytes()).unwrap(),
                GatewayRpcResponse { device: name.clone(), id, data: json!(1) }
            );
            prop_assert!(h.conn.is_sub_device_registered(&name));
        }
    }
}

/// Found by the simulation (gateway-sim): a disconnect queued while offline, then a command
/// naming the same device again (tracking it anew). After the reconnect the re-announce went
/// out first and the older disconnect after it, so the server dropped a device the gateway
/// kept tracking: RPCs and attribute updates for it stopped. Now a disconnect that finishes
/// while its device is tracked again is followed by one more announce.
#[test]
fn a_queued_disconnect_does_not_undo_a_later_reregistration() {
    for version in [V5, V3] {
        let mut h = gateway(version);
        cmd(&mut h, Command::connect_device("D", None));
        let ack = one(&mut h);
        puback(&mut h, ack.pkid, 0);
        h.drop_transport();
        cmd(&mut h, Command::disconnect_device("D"));
        cmd(
            &mut h,
            Command::request_device_attributes("D", AttributeScope::Shared, ["k"]),
        );
        assert!(h.conn.is_sub_device_registered("D"));
        h.advance_to_timeout();
        let after = h.connect();
        let topics: Vec<&str> = publishes(&after).iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "v1/gateway/connect",
                "v1/gateway/disconnect",
                "v1/gateway/attributes/request"
            ],
            "{version:?}"
        );
        let disconnect = publishes(&after)[1].pkid;
        puback(&mut h, disconnect, 0);
        let again = sent(&mut h);
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(
            (again[0].topic.as_str(), again[0].payload.as_str()),
            ("v1/gateway/connect", r#"{"device":"D"}"#),
            "{version:?}"
        );
        // A disconnect of a device that stays forgotten is not followed by anything.
        cmd(&mut h, Command::disconnect_device("D"));
        let p = one(&mut h);
        puback(&mut h, p.pkid, 0);
        assert!(sent(&mut h).is_empty());
    }
}

/// Found by the simulation (gateway-sim): data that started tracking a sub-device timed out
/// (network stalled) and the server's 0x97 refusal came after the timeout, matched to no
/// request. The device stayed tracked though the server never connected it. Now a timed-out
/// request announces the devices it started tracking, and that announce's answer settles it.
#[test]
fn a_timed_out_implicit_connect_is_settled_by_an_announce() {
    let mut h = gateway(V5);
    let id = cmd(
        &mut h,
        Command::request_device_attributes("New", AttributeScope::Shared, ["k"]),
    );
    let request = one(&mut h);
    h.advance(Duration::from_secs(31));
    let events = h.take_events();
    assert_eq!(
        events,
        vec![Event::Failed {
            request: id,
            error: RequestError::Timeout
        }]
    );
    let announce = one(&mut h);
    assert_eq!(
        (announce.topic.as_str(), announce.payload.as_str()),
        ("v1/gateway/connect", r#"{"device":"New"}"#)
    );
    puback(&mut h, request.pkid, 0x97);
    assert!(
        h.take_events().is_empty(),
        "a late refusal completes nothing"
    );
    puback(&mut h, announce.pkid, 0x97);
    assert_eq!(
        h.take_events(),
        vec![Event::Warning(Warning::ReannounceRejected {
            device: "New".into(),
            code: ReasonCode::QuotaExceeded,
        })]
    );
    assert!(!h.conn.is_sub_device_registered("New"));
}
