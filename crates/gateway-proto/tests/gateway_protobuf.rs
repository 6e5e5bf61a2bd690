//! The Gateway API with a PROTOBUF gateway profile, against a scripted ThingsBoard: every
//! typed gateway command leaves as the protobuf message ThingsBoard reads on its topic, and
//! the protobuf downlinks become the same events as their JSON forms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{config, publishes, server_publish, Harness};
use gateway_proto::payload::{
    AttributeUpdate, Claim, Connect, Disconnect, DisconnectNotice, GatewayAttributeRequest,
    GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes, GatewayClaim,
    GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, Payload, RequestedKeys,
    TelemetryEntry,
};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    AttributeScope, Command, CommandError, ConfigError, Event, GatewayCommand, ReasonCode, Role,
    Warning,
};
use serde_json::{json, Map, Value};

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A gateway whose profile is PROTOBUF, connected and subscribed.
fn proto_gateway() -> Harness {
    let mut c = config(ProtocolVersion::V5);
    c.role = Role::Gateway;
    c.subscribe_api = true;
    c.sub_device_keepalive = None;
    c.protobuf_profile = true;
    let mut h = Harness::new(c);
    h.connect();
    h.take_events();
    h
}

/// The one publish `command` produced: its topic and payload. PUBACKed.
fn send(h: &mut Harness, command: Command) -> (String, Bytes) {
    h.conn.command(h.now, command).expect("command accepted");
    h.drain();
    let packets = h.client_packets();
    let sent = publishes(&packets);
    let [p] = sent.as_slice() else {
        panic!("expected one publish, got {packets:?}")
    };
    let (topic, payload, pkid) = (p.topic.clone(), p.payload.clone(), p.pkid);
    h.send(Packet::PubAck(wire::PubAck { pkid, code: 0 }));
    (topic, payload)
}

fn push(h: &mut Harness, topic: &str, payload: Vec<u8>) {
    h.send(server_publish(topic, Bytes::from(payload), Some(9)));
}

#[test]
fn a_gateway_may_have_a_protobuf_profile_but_not_with_ota() {
    let mut c = config(ProtocolVersion::V5);
    c.role = Role::Gateway;
    c.protobuf_profile = true;
    assert_eq!(c.validate(), Ok(()));
    c.ota = Some(Default::default());
    assert!(matches!(c.validate(), Err(ConfigError::ProtobufProfile(_))));
}

#[test]
fn every_gateway_uplink_is_the_protobuf_message_of_its_topic() {
    let mut h = proto_gateway();

    let (topic, payload) = send(&mut h, Command::connect_device("Boiler", Some("boilers")));
    assert_eq!(topic, "v1/gateway/connect");
    assert_eq!(
        Connect::parse_protobuf(&payload).unwrap(),
        Connect {
            device: "Boiler".into(),
            device_type: Some("boilers".into()),
        }
    );
    // Not JSON: ThingsBoard would refuse JSON here.
    assert!(Connect::parse(&payload).is_err());

    let values = map(json!({"temperature": 71.5, "on": true, "count": 3}));
    let (topic, payload) = send(
        &mut h,
        Command::Gateway(GatewayCommand::Telemetry {
            device: "Boiler".into(),
            entries: vec![TelemetryEntry::at(1_700_000_000_000, values.clone())],
        }),
    );
    assert_eq!(topic, "v1/gateway/telemetry");
    assert_eq!(
        GatewayTelemetry::parse_protobuf(&payload).unwrap(),
        GatewayTelemetry {
            devices: BTreeMap::from([(
                "Boiler".to_owned(),
                vec![TelemetryEntry::at(1_700_000_000_000, values)],
            )]),
        }
    );

    let batch = GatewayTelemetry {
        devices: BTreeMap::from([
            (
                "A".to_owned(),
                vec![TelemetryEntry::at(5, map(json!({"x": 1})))],
            ),
            (
                "B".to_owned(),
                vec![TelemetryEntry::at(6, map(json!({"y": "z"})))],
            ),
        ]),
    };
    let (topic, payload) = send(
        &mut h,
        Command::Gateway(GatewayCommand::TelemetryBatch(batch.clone())),
    );
    assert_eq!(topic, "v1/gateway/telemetry");
    assert_eq!(GatewayTelemetry::parse_protobuf(&payload).unwrap(), batch);

    let attrs = map(json!({"firmware": "1.2", "limits": {"max": 90}}));
    let (topic, payload) = send(&mut h, Command::device_attributes("Boiler", attrs.clone()));
    assert_eq!(topic, "v1/gateway/attributes");
    assert_eq!(
        GatewayAttributes::parse_protobuf(&payload).unwrap(),
        GatewayAttributes {
            devices: BTreeMap::from([("Boiler".to_owned(), attrs)]),
        }
    );

    let claim = Claim {
        secret_key: Some("s3cret".into()),
        duration_ms: Some(60_000),
    };
    let (topic, payload) = send(
        &mut h,
        Command::Gateway(GatewayCommand::Claim {
            device: "Boiler".into(),
            claim: claim.clone(),
        }),
    );
    assert_eq!(topic, "v1/gateway/claim");
    assert_eq!(
        GatewayClaim::parse_protobuf(&payload).unwrap(),
        GatewayClaim {
            devices: BTreeMap::from([("Boiler".to_owned(), claim)]),
        }
    );

    let (topic, payload) = send(&mut h, Command::disconnect_device("Boiler"));
    assert_eq!(topic, "v1/gateway/disconnect");
    assert_eq!(
        Disconnect::parse_protobuf(&payload).unwrap(),
        Disconnect {
            device: "Boiler".into()
        }
    );
}

#[test]
fn attribute_requests_and_their_protobuf_responses_correlate() {
    let mut h = proto_gateway();
    let several = h
        .conn
        .command(
            h.now,
            Command::request_device_attributes("D", AttributeScope::Client, ["a", "b"]),
        )
        .unwrap();
    let single = h
        .conn
        .command(
            h.now,
            Command::request_device_attributes("D", AttributeScope::Shared, ["target"]),
        )
        .unwrap();
    h.drain();
    let packets = h.client_packets();
    let sent = publishes(&packets);
    assert_eq!(sent.len(), 2, "{packets:?}");
    let requests: Vec<GatewayAttributeRequest> = sent
        .iter()
        .map(|p| {
            assert_eq!(p.topic, "v1/gateway/attributes/request");
            GatewayAttributeRequest::parse_protobuf(&p.payload).unwrap()
        })
        .collect();
    assert_eq!(requests[0].device, "D");
    assert!(requests[0].client);
    assert_eq!(
        requests[0].keys,
        RequestedKeys::Keys(vec!["a".into(), "b".into()])
    );
    assert!(!requests[1].client);
    assert_ne!(requests[0].id, requests[1].id);
    for p in &sent {
        let pkid = p.pkid;
        h.send(Packet::PubAck(wire::PubAck { pkid, code: 0 }));
    }
    // The answers, as the server builds them, in the other order.
    let found = map(json!({"target": 22.5}));
    let answer = GatewayAttributeResponse::for_request(&requests[1], found);
    push(
        &mut h,
        "v1/gateway/attributes/response",
        answer.to_protobuf(&requests[1]),
    );
    let found = map(json!({"a": "x", "b": [1, 2]}));
    let answer = GatewayAttributeResponse::for_request(&requests[0], found);
    push(
        &mut h,
        "v1/gateway/attributes/response",
        answer.to_protobuf(&requests[0]),
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
                client: map(json!({"a": "x", "b": [1, 2]})),
                shared: Map::new(),
            },
        ]
    );
}

#[test]
fn protobuf_rpc_requests_and_attribute_updates_become_events_and_replies_go_out_in_protobuf() {
    let mut h = proto_gateway();
    let request = GatewayRpcRequest {
        device: "Valve".into(),
        id: 4,
        method: "setOpen".into(),
        params: json!({"open": true}),
    };
    push(&mut h, "v1/gateway/rpc", request.to_protobuf());
    let update = GatewayAttributeUpdate {
        device: "Valve".into(),
        update: AttributeUpdate {
            values: map(json!({"mode": "eco"})),
            deleted: vec!["old".into()],
        },
    };
    push(&mut h, "v1/gateway/attributes", update.to_protobuf());
    assert_eq!(
        h.take_events(),
        vec![
            Event::RpcRequest {
                device: Some("Valve".into()),
                id: 4,
                method: "setOpen".into(),
                params: json!({"open": true}),
            },
            Event::AttributeUpdate {
                device: Some("Valve".into()),
                values: map(json!({"mode": "eco"})),
                deleted: vec!["old".into()],
            },
        ]
    );
    let (topic, payload) = send(
        &mut h,
        Command::device_rpc_reply("Valve", 4, json!({"done": 1})),
    );
    assert_eq!(topic, "v1/gateway/rpc");
    assert_eq!(
        GatewayRpcResponse::parse_protobuf(&payload).unwrap(),
        GatewayRpcResponse {
            device: "Valve".into(),
            id: 4,
            data: json!({"done": 1}),
        }
    );
}

/// ThingsBoard's `GatewayDisconnectDeviceMsg` on `v1/gateway/disconnect` (MQTT 5): the same
/// event as the JSON notice.
#[test]
fn a_protobuf_disconnect_notice_is_a_sub_device_disconnect() {
    let mut h = proto_gateway();
    let notice = |device: &str, reason| {
        DisconnectNotice {
            device: device.into(),
            reason,
        }
        .to_protobuf()
    };
    push(&mut h, "v1/gateway/disconnect", notice("Pump", 128));
    assert_eq!(
        h.take_events(),
        vec![Event::SubDeviceDisconnected {
            device: "Pump".into(),
            reason: ReasonCode::UnspecifiedError,
        }]
    );
    push(&mut h, "v1/gateway/disconnect", notice("Noisy", 150));
    assert_eq!(
        h.take_events(),
        vec![Event::SubDeviceDisconnected {
            device: "Noisy".into(),
            reason: ReasonCode::MessageRateTooHigh,
        }]
    );
    // The JSON notice is not what a PROTOBUF gateway gets.
    push(
        &mut h,
        "v1/gateway/disconnect",
        br#"{"device":"Pump","reason":128}"#.to_vec(),
    );
    let events = h.take_events();
    assert!(
        matches!(
            events.as_slice(),
            [Event::Warning(Warning::InvalidMessage { topic, .. })] if topic == "v1/gateway/disconnect"
        ),
        "{events:?}"
    );
}

#[test]
fn json_downlinks_on_a_protobuf_gateway_are_invalid_messages() {
    let mut h = proto_gateway();
    push(
        &mut h,
        "v1/gateway/rpc",
        br#"{"device":"Valve","data":{"id":1,"method":"m","params":{}}}"#.to_vec(),
    );
    let events = h.take_events();
    assert!(
        matches!(
            events.as_slice(),
            [Event::Warning(Warning::InvalidMessage { topic, .. })] if topic == "v1/gateway/rpc"
        ),
        "{events:?}"
    );
}

#[test]
fn a_protobuf_message_is_never_split_and_one_too_large_is_refused() {
    let mut values = Map::new();
    for i in 0..100 {
        values.insert(format!("key{i}"), json!(i));
    }
    for protobuf in [false, true] {
        let mut c = config(ProtocolVersion::V5);
        c.role = Role::Gateway;
        c.subscribe_api = true;
        c.sub_device_keepalive = None;
        c.protobuf_profile = protobuf;
        c.limits.split = true;
        c.max_outgoing_packet = 512;
        let mut h = Harness::new(c);
        h.connect();
        let result = h
            .conn
            .command(h.now, Command::device_telemetry("Big", values.clone()));
        if protobuf {
            assert!(
                matches!(result, Err(CommandError::TooLarge { .. })),
                "{result:?}"
            );
        } else {
            // The JSON form of the same message is cut into parts that fit.
            assert!(result.is_ok(), "{result:?}");
            h.drain();
            let packets = h.client_packets();
            assert!(publishes(&packets).len() > 1, "{packets:?}");
        }
    }
}
