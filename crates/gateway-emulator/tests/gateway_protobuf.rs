//! The gateway API over protobuf: a gateway whose own device profile is PROTOBUF speaks every
//! `v1/gateway/*` topic in `transportapi.Gateway*Msg` messages (AGSH `isJsonPayloadType()`).
//! Raw MQTT against the sans-IO emulator; uplinks are encoded and downlinks decoded with
//! `gateway_proto`'s `to_protobuf` / `parse_protobuf`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use gateway_emulator::{ClaimOutcome, NewDevice, ProtoSchemas, RpcCall, RpcOutcome, SessionId};
use gateway_proto::payload::{
    AttributeResult, AttributeUpdate, Claim, Connect, Disconnect, DisconnectNotice,
    GatewayAttributeRequest, GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes,
    GatewayClaim, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, RequestedKeys,
    TelemetryEntry,
};
use gateway_proto::wire::{Packet, QoS};
use gateway_proto::ProtocolVersion;
use serde_json::{json, Map, Value};

const TELEMETRY: &str = "v1/gateway/telemetry";
const PROTO_GW: &str = "Proto Gateway";
const PROTO_GW_TOKEN: &str = "PROTO_GW_TOKEN";
const PROTO_PROFILE: &str = "protobuf-gateways";

/// A harness with a second gateway, `PROTO_GW`, whose profile is PROTOBUF; the harness's
/// own `Gateway` keeps the JSON `default` profile.
fn harness() -> Harness {
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::gateway(PROTO_GW, PROTO_GW_TOKEN).with_type(PROTO_PROFILE))
        .unwrap();
    h.emu
        .set_profile_protobuf(PROTO_PROFILE, ProtoSchemas::thingsboard_defaults());
    h
}

fn proto_gateway(h: &mut Harness, version: ProtocolVersion) -> SessionId {
    h.connect(version, PROTO_GW_TOKEN)
}

fn entry(ts: Option<i64>, values: Value) -> TelemetryEntry {
    TelemetryEntry {
        ts,
        values: map(values),
        metadata: None,
    }
}

/// The (topic, raw payload) of a server PUBLISH.
fn publish_of(packet: &Packet) -> (String, Vec<u8>) {
    match packet {
        Packet::Publish(p) => (p.topic.clone(), p.payload.to_vec()),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Connects `device` through the gateway with a protobuf `ConnectMsg`.
fn connect_child(h: &mut Harness, gw: SessionId, device: &str, pkid: u16) {
    let connect = Connect {
        device: device.to_owned(),
        device_type: None,
    };
    h.publish(gw, "v1/gateway/connect", &connect.to_protobuf(), pkid);
    assert_eq!(h.take(gw), vec![puback(pkid, 0)]);
}

/// `testPushTelemetryGateway` (Proto variant): two devices, explicit timestamps and server
/// time, typed values, one aggregated PUBACK; `ConnectMsg.deviceType` picks the profile.
#[test]
fn connect_and_telemetry_for_two_devices_are_stored() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V5);
    let connect = Connect {
        device: "Device A".into(),
        device_type: Some("thermometer".into()),
    };
    h.publish(gw, "v1/gateway/connect", &connect.to_protobuf(), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    let a = h.emu.device("Device A").unwrap();
    assert_eq!(a.device_type, "thermometer");
    assert_eq!(a.created_by_gateway.as_deref(), Some(PROTO_GW));

    h.advance(Duration::from_millis(250));
    let values =
        json!({"key1": "value1", "key2": true, "key3": 3.5, "key4": 4, "key5": {"n": [1, 2]}});
    let telemetry = GatewayTelemetry {
        devices: BTreeMap::from([
            (
                "Device A".to_owned(),
                vec![
                    entry(Some(10_000), values.clone()),
                    entry(Some(20_000), json!({"key4": 5})),
                ],
            ),
            (
                "Device B".to_owned(),
                vec![entry(None, json!({"t": -7, "s": "x", "num": "12"}))],
            ),
        ]),
    };
    h.publish(gw, TELEMETRY, &telemetry.to_protobuf(), 2);
    assert_eq!(h.take(gw), vec![puback(2, 0)], "one aggregated PUBACK");

    let t = h.emu.telemetry("Device A").unwrap();
    assert_eq!(t.len(), 5);
    assert_eq!(t["key1"][0].value, json!("value1"));
    assert_eq!(t["key2"][0].value, json!(true));
    assert_eq!(t["key3"][0].value, json!(3.5));
    assert_eq!(t["key5"][0].value, json!({"n": [1, 2]}));
    let key4: Vec<_> = t["key4"].iter().map(|p| (p.ts, p.value.clone())).collect();
    assert_eq!(key4, vec![(10_000, json!(4)), (20_000, json!(5))]);
    assert_eq!(t["key1"][0].ts, 10_000);

    // ts 0 (absent) is the server's receive time.
    let b = h.emu.telemetry("Device B").unwrap();
    assert_eq!(b["t"].len(), 1);
    assert_eq!(b["t"][0].value, json!(-7));
    assert_eq!(b["t"][0].ts, EPOCH_MS + 250);
    assert_eq!(b["s"][0].value, json!("x"));
    // A STRING_V stays a string: the JSON form's type cast does not apply to protobuf.
    assert_eq!(b["num"][0].value, json!("12"));
    assert_eq!(h.emu.device("Device B").unwrap().device_type, "default");
    let children = h.emu.connected_children(PROTO_GW).unwrap();
    assert_eq!(children, vec!["Device A".to_owned(), "Device B".to_owned()]);

    // DisconnectMsg removes the child.
    let disconnect = Disconnect {
        device: "Device A".into(),
    };
    h.publish(gw, "v1/gateway/disconnect", &disconnect.to_protobuf(), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0)]);
    let children = h.emu.connected_children(PROTO_GW).unwrap();
    assert_eq!(children, vec!["Device B".to_owned()]);
}

/// `testPushAttributesGateway` (Proto variant).
#[test]
fn attributes_are_stored_as_client_attributes() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V311);
    let attributes = GatewayAttributes {
        devices: BTreeMap::from([
            ("A".to_owned(), map(json!({"fw": "1.2", "on": false}))),
            ("B".to_owned(), map(json!({"n": 12, "cfg": {"x": 1.5}}))),
        ]),
    };
    h.publish(gw, "v1/gateway/attributes", &attributes.to_protobuf(), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    assert_eq!(
        Value::Object(h.emu.client_attributes("A").unwrap()),
        json!({"fw": "1.2", "on": false})
    );
    assert_eq!(
        Value::Object(h.emu.client_attributes("B").unwrap()),
        json!({"n": 12, "cfg": {"x": 1.5}})
    );
    assert!(h.emu.shared_attributes("A").unwrap().is_empty());
}

fn request_attributes(
    h: &mut Harness,
    gw: SessionId,
    request: &GatewayAttributeRequest,
    pkid: u16,
) -> (Vec<u8>, GatewayAttributeResponse) {
    h.publish(
        gw,
        "v1/gateway/attributes/request",
        &request.to_protobuf(),
        pkid,
    );
    let packets = h.take(gw);
    assert_eq!(packets.len(), 2, "{packets:?}");
    assert_eq!(packets[0], puback(pkid, 0));
    let (topic, body) = publish_of(&packets[1]);
    assert_eq!(topic, "v1/gateway/attributes/response");
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "not JSON");
    let response = GatewayAttributeResponse::parse_protobuf(&body).unwrap();
    (body, response)
}

/// `testRequestAttributesValuesFromTheServerGateway` (Proto variant): the stored values come
/// back as a `GatewayAttributeResponseMsg`, one key as a value, several as values.
#[test]
fn attribute_requests_get_protobuf_responses_with_the_stored_values() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V5);
    let attributes = GatewayAttributes {
        devices: BTreeMap::from([("Dev".to_owned(), map(json!({"c1": 1, "c2": "two"})))]),
    };
    h.publish(gw, "v1/gateway/attributes", &attributes.to_protobuf(), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    h.emu
        .set_shared_attributes("Dev", map(json!({"s1": true, "s2": {"a": [1]}})))
        .unwrap();
    h.take(gw);

    let request = |id, client, keys: &[&str]| GatewayAttributeRequest {
        id,
        device: "Dev".into(),
        client,
        keys: RequestedKeys::Keys(keys.iter().map(|k| k.to_string()).collect()),
    };
    let cases = [
        (request(1, true, &["c1"]), AttributeResult::Value(json!(1))),
        (
            request(2, true, &["c1", "c2"]),
            AttributeResult::Values(map(json!({"c1": 1, "c2": "two"}))),
        ),
        (
            request(3, true, &["c2", "missing"]),
            AttributeResult::Values(map(json!({"c2": "two"}))),
        ),
        (
            request(4, false, &["s1"]),
            AttributeResult::Value(json!(true)),
        ),
        (
            request(5, false, &["s1", "s2"]),
            AttributeResult::Values(map(json!({"s1": true, "s2": {"a": [1]}}))),
        ),
        // Scopes are exclusive.
        (request(6, false, &["c1"]), AttributeResult::NotFound),
        // No keys: every attribute of both scopes.
        (
            request(7, true, &[]),
            AttributeResult::Values(map(
                json!({"c1": 1, "c2": "two", "s1": true, "s2": {"a": [1]}}),
            )),
        ),
    ];
    for (i, (request, result)) in cases.into_iter().enumerate() {
        let pkid = 10 + i as u16;
        let (_, response) = request_attributes(&mut h, gw, &request, pkid);
        assert_eq!(
            response,
            GatewayAttributeResponse {
                id: request.id,
                device: "Dev".into(),
                result,
            },
            "request {}",
            request.id
        );
    }
}

/// A keyless request that finds one attribute: the value travels under its own key.
#[test]
fn a_keyless_request_finding_one_attribute_sends_it_under_its_key() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V5);
    connect_child(&mut h, gw, "Solo", 1);
    h.emu
        .set_shared_attributes("Solo", map(json!({"only": 42})))
        .unwrap();
    h.take(gw);
    let request = GatewayAttributeRequest {
        id: 9,
        device: "Solo".into(),
        client: true,
        keys: RequestedKeys::Keys(vec![]),
    };
    let (body, response) = request_attributes(&mut h, gw, &request, 2);
    assert_eq!(response.result, AttributeResult::Value(json!(42)));
    assert!(body.windows(4).any(|w| w == b"only"), "keyed by name");
}

/// `testJsonSubscribeToAttributesUpdatesFromTheServerGateway` (Proto variant), subscribed and
/// not: the update and the deletion arrive as `GatewayAttributeUpdateNotificationMsg`.
#[test]
fn shared_attribute_updates_arrive_as_protobuf() {
    for subscribe in [Some(QoS::AtMostOnce), None] {
        let mut h = harness();
        let gw = proto_gateway(&mut h, V5);
        if let Some(q) = subscribe {
            assert_eq!(h.subscribe(gw, &[("v1/gateway/attributes", q)]), vec![0]);
        }
        connect_child(&mut h, gw, "Dev", 1);
        h.emu
            .set_shared_attributes("Dev", map(json!({"sharedJson": {"a": 1}, "n": 5})))
            .unwrap();
        let packets = h.take(gw);
        assert_eq!(packets.len(), 1);
        let (topic, body) = publish_of(&packets[0]);
        assert_eq!(topic, "v1/gateway/attributes");
        assert_eq!(
            GatewayAttributeUpdate::parse_protobuf(&body).unwrap(),
            GatewayAttributeUpdate {
                device: "Dev".into(),
                update: AttributeUpdate {
                    values: map(json!({"sharedJson": {"a": 1}, "n": 5})),
                    deleted: vec![],
                },
            }
        );
        h.emu
            .delete_shared_attributes("Dev", &["sharedJson".to_owned()])
            .unwrap();
        let (_, body) = publish_of(&h.take(gw)[0]);
        assert_eq!(
            GatewayAttributeUpdate::parse_protobuf(&body).unwrap(),
            GatewayAttributeUpdate {
                device: "Dev".into(),
                update: AttributeUpdate {
                    values: Map::new(),
                    deleted: vec!["sharedJson".into()],
                },
            }
        );
    }
}

/// `testGatewayServerMqttTwoWayRpc` (Proto variant): the request is a
/// `GatewayDeviceRpcRequestMsg`, a `GatewayRpcResponseMsg` completes it.
#[test]
fn server_rpc_arrives_as_protobuf_and_a_protobuf_reply_completes_it() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V311);
    connect_child(&mut h, gw, "Dev", 1);
    h.subscribe(gw, &[("v1/gateway/rpc", QoS::AtLeastOnce)]);

    h.emu
        .send_rpc(
            "Dev",
            RpcCall::one_way("toggle_gpio", json!({"pin": 1})),
            h.now,
        )
        .unwrap();
    let (topic, body) = publish_of(&h.take(gw)[0]);
    assert_eq!(topic, "v1/gateway/rpc");
    assert_eq!(
        GatewayRpcRequest::parse_protobuf(&body).unwrap(),
        GatewayRpcRequest {
            device: "Dev".into(),
            id: 0,
            method: "toggle_gpio".into(),
            params: json!({"pin": 1}),
        }
    );
    assert_eq!(rpc_outcome(&mut h), Some(RpcOutcome::Delivered));

    h.emu
        .send_rpc("Dev", RpcCall::two_way("getValue", json!("x")), h.now)
        .unwrap();
    let (_, body) = publish_of(&h.take(gw)[0]);
    let request = GatewayRpcRequest::parse_protobuf(&body).unwrap();
    assert_eq!((request.id, request.params), (1, json!("x")));
    assert_eq!(rpc_outcome(&mut h), None);
    let reply = GatewayRpcResponse {
        device: "Dev".into(),
        id: 1,
        data: json!({"success": true}),
    };
    h.publish(gw, "v1/gateway/rpc", &reply.to_protobuf(), 2);
    assert_eq!(h.take(gw), vec![puback(2, 0)]);
    assert_eq!(
        rpc_outcome(&mut h),
        Some(RpcOutcome::Reply(json!({"success": true})))
    );
}

/// `testGatewayClaimingDevice` (Proto variant).
#[test]
fn claim_is_accepted() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V311);
    let claim = GatewayClaim {
        devices: BTreeMap::from([(
            "Dev".to_owned(),
            Claim {
                secret_key: Some("value".into()),
                duration_ms: Some(60_000),
            },
        )]),
    };
    h.publish(gw, "v1/gateway/claim", &claim.to_protobuf(), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    assert_eq!(
        h.emu.claim_device("Dev", "wrong", h.now),
        Ok(ClaimOutcome::Failure)
    );
    assert_eq!(
        h.emu.claim_device("Dev", "value", h.now),
        Ok(ClaimOutcome::Success)
    );
}

/// What the server sends back on `v5` / `v3` for `payload` on `topic` at QoS 1 and, on v5, at
/// QoS 0, and whether each connection was closed.
fn reactions(
    h: &mut Harness,
    connect: fn(&mut Harness, ProtocolVersion) -> SessionId,
    topic: &str,
    payload: &[u8],
) -> Vec<(Vec<Packet>, bool)> {
    let mut out = Vec::new();
    for (version, pkid) in [(V5, 5), (V5, 0), (V311, 5)] {
        let gw = connect(h, version);
        h.publish(gw, topic, payload, pkid);
        out.push((h.take(gw), h.closed(gw)));
    }
    out
}

/// Malformed protobuf is an AdaptorException, exactly like malformed JSON on a JSON gateway:
/// v5 PUBACK 0x99 (kept), DISCONNECT 0x99 at QoS 0, v3.1.1 close.
#[test]
fn malformed_protobuf_gets_the_reaction_of_malformed_json() {
    let mut h = harness();
    let json_gateway = |h: &mut Harness, v| h.gateway(v);
    let expected = vec![
        (vec![puback(5, 0x99)], false),
        (vec![disconnect(0x99)], true),
        (vec![], true),
    ];
    assert_eq!(
        reactions(&mut h, json_gateway, TELEMETRY, b"{not json"),
        expected
    );
    // Truncated: field 1 announces 9 bytes, 2 follow; a bad varint; wire type 7.
    let malformed: [&[u8]; 3] = [b"\x0a\x09\x0a\x01", &[0x0a, 0xff, 0xff], b"\x0f"];
    for bytes in malformed {
        for topic in [TELEMETRY, "v1/gateway/attributes", "v1/gateway/connect"] {
            assert_eq!(
                reactions(&mut h, proto_gateway, topic, bytes),
                expected,
                "{topic} {bytes:?}"
            );
        }
    }
    // What the JSON form refuses with 0x83 + DISCONNECT (an empty list, an empty device
    // name) is an AdaptorException too in protobuf (AGSH `on*Proto` wrap every exception).
    let empty_name = Connect {
        device: String::new(),
        device_type: None,
    };
    let mut empty_name = empty_name.to_protobuf();
    empty_name.extend_from_slice(b"\x12\x01t");
    for (topic, payload) in [(TELEMETRY, Vec::new()), ("v1/gateway/connect", empty_name)] {
        assert_eq!(
            reactions(&mut h, proto_gateway, topic, &payload),
            expected,
            "{topic}"
        );
    }
    // JSON is not protobuf.
    assert_eq!(
        reactions(&mut h, proto_gateway, TELEMETRY, br#"{"A":[{"t":1}]}"#),
        expected
    );
    assert!(h.emu.device("A").is_none());
}

/// A device entry that fails validation (`validatePostTelemetryMsg`: an element without
/// values) is the per-device failure of §2.1: the other entries are stored, 0x99 once on v5.
#[test]
fn an_invalid_device_entry_is_a_per_device_failure() {
    // GatewayTelemetryMsg { msg: [ {deviceName "Bad", msg: PostTelemetryMsg { tsKvList:
    // [{ts 5}] }} ] }: a TsKvListProto without kv.
    let bad = b"\x0a\x0b\x0a\x03Bad\x1a\x04\x0a\x02\x08\x05";
    let good = GatewayTelemetry {
        devices: BTreeMap::from([("Good".to_owned(), vec![entry(Some(9), json!({"k": 1}))])]),
    };
    let mut payload = good.to_protobuf();
    payload.extend_from_slice(bad);

    let mut h = harness();
    let gw = proto_gateway(&mut h, V5);
    h.publish(gw, TELEMETRY, &payload, 4);
    assert_eq!(h.take(gw), vec![puback(4, 0x99)]);
    assert!(!h.closed(gw));
    assert_eq!(h.emu.latest_telemetry("Good").unwrap()["k"].value, json!(1));
    assert!(h.emu.device("Bad").is_some(), "created before conversion");
    assert!(h.emu.telemetry("Bad").unwrap().is_empty());

    let gw = proto_gateway(&mut h, V311);
    h.publish(gw, TELEMETRY, &payload, 4);
    assert_eq!(h.take(gw), vec![]);
    assert!(h.closed(gw));
}

/// The v5 per-device notices (here the QoS 0 ones of a multi-device message) reach a
/// protobuf gateway as `GatewayDisconnectDeviceMsg`s; the data is still stored.
#[test]
fn a_protobuf_gateway_gets_protobuf_disconnect_notices() {
    let mut h = harness();
    let gw = proto_gateway(&mut h, V5);
    let telemetry = GatewayTelemetry {
        devices: BTreeMap::from([
            ("A".to_owned(), vec![entry(None, json!({"t": 1}))]),
            ("B".to_owned(), vec![entry(None, json!({"t": 2}))]),
        ]),
    };
    h.publish(gw, TELEMETRY, &telemetry.to_protobuf(), 0);
    let notices: Vec<_> = h.take(gw).iter().map(publish_of).collect();
    let notice = |device: &str| DisconnectNotice {
        device: device.into(),
        reason: DisconnectNotice::REASON_MALFORMED,
    };
    // Only the first of two entries completes with packet id -1 before the last one.
    assert_eq!(
        notices,
        vec![(
            "v1/gateway/disconnect".to_owned(),
            notice("A").to_protobuf()
        )]
    );
    assert_eq!(
        DisconnectNotice::parse_protobuf(&notices[0].1),
        Ok(notice("A"))
    );
    assert_eq!(h.emu.latest_telemetry("A").unwrap()["t"].value, json!(1));
    assert_eq!(h.emu.latest_telemetry("B").unwrap()["t"].value, json!(2));
}

/// The JSON gateway beside it is unaffected: JSON works, protobuf bytes are malformed JSON,
/// and its downlinks stay JSON.
#[test]
fn a_json_gateway_is_unaffected() {
    let mut h = harness();
    let gw = h.gateway(V5);
    h.publish_json(
        gw,
        TELEMETRY,
        json!({"J": [{"ts": 3, "values": {"v": 1}}]}),
        1,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    assert_eq!(h.emu.telemetry("J").unwrap()["v"][0].ts, 3);

    let telemetry = GatewayTelemetry {
        devices: BTreeMap::from([("P".to_owned(), vec![entry(Some(3), json!({"v": 1}))])]),
    };
    h.publish(gw, TELEMETRY, &telemetry.to_protobuf(), 2);
    assert_eq!(h.take(gw), vec![puback(2, 0x99)]);
    assert!(h.emu.device("P").is_none());
    let connect = Connect {
        device: "P".into(),
        device_type: None,
    };
    h.publish(gw, "v1/gateway/connect", &connect.to_protobuf(), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0x99)]);

    h.emu
        .set_shared_attributes("J", map(json!({"n": 5})))
        .unwrap();
    let (topic, body, _) = published(&h.take(gw)[0]);
    assert_eq!(topic, "v1/gateway/attributes");
    assert_eq!(body, json!({"device": "J", "data": {"n": 5}}));
    h.emu
        .send_rpc("J", RpcCall::one_way("m", json!({"p": 1})), h.now)
        .unwrap();
    let (topic, body, _) = published(&h.take(gw)[0]);
    assert_eq!(topic, "v1/gateway/rpc");
    assert_eq!(
        body,
        json!({"device": "J", "data": {"id": 0, "method": "m", "params": {"p": 1}}})
    );
}
