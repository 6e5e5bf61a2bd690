//! Device API (spec §3.6, §4, §8): telemetry, attributes, RPC both ways, claim, provisioning,
//! OTA, inactivity.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use gateway_emulator::{
    ClientRpcAnswer, ControlError, Credentials, EmulatorConfig, Event, NewDevice, OtaPackage,
    ProfileTopics, ProvisionProfile, ProvisionStrategy, RpcCall, RpcOutcome,
};
use gateway_proto::wire::{Packet, QoS};
use serde_json::{json, Map, Value};

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[test]
fn telemetry_and_attributes_are_stored_and_acked() {
    let mut h = Harness::new();
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish(
        dev,
        "v1/devices/me/telemetry",
        br#"[{"ts":5,"values":{"t":1}},{"t":2}]"#,
        1,
    );
    h.publish(dev, "v2/t/j", br#"{"h":3}"#, 2);
    h.publish(dev, "v1/devices/me/attributes", br#"{"fw":"v1.0"}"#, 3);
    assert_eq!(h.take(dev), vec![puback(1, 0), puback(2, 0), puback(3, 0)]);
    let t = h.emu.telemetry("Device").unwrap();
    assert_eq!(t["t"].len(), 2);
    assert_eq!(t["t"][0].ts, 5);
    assert_eq!(
        h.emu.client_attributes("Device").unwrap()["fw"],
        json!("v1.0")
    );
    // Device API: a wrong shape is an AdaptorException like bad JSON (0x99, kept).
    h.publish(dev, "v1/devices/me/telemetry", b"42", 4);
    h.publish(dev, "v1/devices/me/attributes", b"[]", 5);
    // JSON on the protobuf topic fails the protobuf parser.
    h.publish(dev, "v2/t/p", br#"{"a":1}"#, 6);
    assert_eq!(
        h.take(dev),
        vec![puback(4, 0x99), puback(5, 0x99), puback(6, 0x99)]
    );
    assert!(!h.closed(dev));
}

#[test]
fn attribute_request_and_updates_on_v1_and_v2() {
    let mut h = Harness::new();
    let dev = h.connect(V311, DEV_TOKEN);
    h.publish(dev, "v1/devices/me/attributes", br#"{"c1":1,"c2":2}"#, 1);
    h.emu
        .set_shared_attributes("Device", map(json!({"s1": "x"})))
        .unwrap();
    assert_eq!(h.take(dev), vec![puback(1, 0)], "not subscribed: no update");
    let cases = [
        (
            "v1/devices/me/attributes/request/1",
            json!({}),
            "v1/devices/me/attributes/response/1",
            json!({"client":{"c1":1,"c2":2},"shared":{"s1":"x"}}),
        ),
        (
            "v2/a/req/j/2",
            json!({"clientKeys":"c1"}),
            "v2/a/res/j/2",
            json!({"client":{"c1":1}}),
        ),
        (
            "v1/devices/me/attributes/request/3",
            json!({"sharedKeys":"s1,nope"}),
            "v1/devices/me/attributes/response/3",
            json!({"shared":{"s1":"x"}}),
        ),
        (
            "v1/devices/me/attributes/request/4",
            json!({"clientKeys":"zz"}),
            "v1/devices/me/attributes/response/4",
            json!({}),
        ),
    ];
    for (i, (topic, req, resp_topic, resp)) in cases.into_iter().enumerate() {
        let pkid = 10 + i as u16;
        h.publish_json(dev, topic, req, pkid);
        let packets = h.take(dev);
        assert_eq!(packets[0], puback(pkid, 0));
        let (t, body, _) = published(&packets[1]);
        assert_eq!((t.as_str(), body), (resp_topic, resp));
    }
    // Subscribing on v2/a makes updates arrive there, with `deleted`.
    assert_eq!(h.subscribe(dev, &[("v2/a", QoS::AtMostOnce)]), vec![0]);
    h.emu
        .set_shared_attributes("Device", map(json!({"s2": 2})))
        .unwrap();
    h.emu
        .delete_shared_attributes("Device", &["s1".to_owned()])
        .unwrap();
    let packets = h.take(dev);
    assert_eq!(
        published(&packets[0]),
        ("v2/a".into(), json!({"s2": 2}), QoS::AtMostOnce)
    );
    assert_eq!(published(&packets[1]).1, json!({"deleted": ["s1"]}));
}

#[test]
fn server_rpc_to_a_device_uses_the_subscribed_family_and_ids_from_0() {
    let mut h = Harness::new();
    let dev = h.connect(V5, DEV_TOKEN);
    h.emu
        .send_rpc("Device", RpcCall::two_way("m", json!({"a": 1})), h.now)
        .unwrap();
    assert_eq!(h.take(dev), vec![], "not subscribed: pending");
    let packets = h.subscribe_all(dev, &[("v2/r/req/+", QoS::AtLeastOnce)]);
    assert!(
        matches!(&packets[0], Packet::SubAck(s) if s.codes == [1]),
        "SUBACK first"
    );
    let (topic, body, qos) = published(&packets[1]);
    assert_eq!(topic, "v2/r/req/0");
    assert_eq!(body, json!({"method": "m", "params": {"a": 1}}));
    assert_eq!(qos, QoS::AtLeastOnce);
    // Any payload is a reply, stored verbatim.
    h.publish(dev, "v2/r/res/0", b"not json", 3);
    assert_eq!(h.take(dev), vec![puback(3, 0)]);
    assert_eq!(
        h.emu.poll_event(),
        Some(Event::RpcCompleted {
            ticket: gateway_emulator::RpcTicket(1),
            device: "Device".into(),
            outcome: RpcOutcome::Reply(json!("not json"))
        })
    );
}

#[test]
fn client_side_rpc_handler_and_timeout() {
    let mut h = Harness::new();
    h.emu.set_client_rpc_handler(Some(Box::new(|call| {
        if call.method == "echo" {
            ClientRpcAnswer::Reply(call.params.clone())
        } else if call.method == "fail" {
            ClientRpcAnswer::Error("nope".into())
        } else {
            ClientRpcAnswer::NoAnswer
        }
    })));
    let dev = h.connect(V311, DEV_TOKEN);
    h.publish(
        dev,
        "v1/devices/me/rpc/request/1",
        br#"{"method":"echo","params":{"x":1}}"#,
        1,
    );
    let p = h.take(dev);
    assert_eq!(p[0], puback(1, 0));
    assert_eq!(
        published(&p[1]),
        (
            "v1/devices/me/rpc/response/1".into(),
            json!({"x": 1}),
            QoS::AtLeastOnce
        )
    );
    h.publish(
        dev,
        "v1/devices/me/rpc/request/2",
        br#"{"method":"fail"}"#,
        2,
    );
    assert_eq!(published(&h.take(dev)[1]).1, json!({"error": "nope"}));
    h.publish(dev, "v2/r/req/3", br#"{"method":"slow"}"#, 3);
    assert_eq!(h.take(dev), vec![puback(3, 0)]);
    h.advance(Duration::from_secs(59));
    assert_eq!(h.take(dev), vec![]);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        published(&h.take(dev)[0]),
        (
            "v2/r/res/3".into(),
            json!({"error": "timeout"}),
            QoS::AtLeastOnce
        )
    );
    // A request without `method` is an uncaught NPE on the server → DISCONNECT 0x8B.
    let dev5 = h.connect(V5, DEV_TOKEN);
    h.publish(dev5, "v1/devices/me/rpc/request/4", br#"{"params":1}"#, 4);
    assert_eq!(h.take(dev5), vec![disconnect(0x8B)]);
}

#[test]
fn device_deleted_is_disconnect_0x98() {
    let mut h = Harness::new();
    let dev = h.connect(V5, DEV_TOKEN);
    h.emu.delete_device("Device", h.now).unwrap();
    assert_eq!(h.take(dev), vec![disconnect(0x98)]);
    assert!(h.closed(dev));
}

/// `processCredentialsUpdate`: the device's session is closed (0x98 on MQTT 5, a plain close on
/// 3.1.1); the old token is refused afterwards and the new one connects. Credentials of
/// another device are refused and leave the session alone.
#[test]
fn credentials_update_closes_the_session_and_rekeys() {
    let mut h = Harness::new();
    for (version, new_token) in [(V5, "NEW_TOKEN_5"), (V311, "NEW_TOKEN_3")] {
        let dev = h.connect(version, DEV_TOKEN);
        assert_eq!(
            h.emu.update_device_credentials(
                "Device",
                Credentials::AccessToken(GW_TOKEN.into()),
                h.now
            ),
            Err(ControlError::CredentialsInUse)
        );
        assert_eq!(h.take(dev), vec![]);
        assert!(!h.closed(dev));

        h.emu
            .update_device_credentials("Device", Credentials::AccessToken(new_token.into()), h.now)
            .unwrap();
        let expected = if version == V5 {
            vec![disconnect(0x98)]
        } else {
            vec![]
        };
        assert_eq!(h.take(dev), expected, "{version:?}");
        assert!(h.closed(dev));
        let (_, refused) = h.connect_with(version, "client", Some(DEV_TOKEN), None);
        assert_ne!(refused.first(), Some(&connack(0)), "{version:?}");
        let dev = h.connect(version, new_token);
        h.publish_json(dev, "v1/devices/me/telemetry", json!({"t": 1}), 1);
        assert_eq!(h.take(dev), vec![puback(1, 0)]);
        // Back to the original token for the next round (closes this session too).
        h.emu
            .update_device_credentials("Device", Credentials::AccessToken(DEV_TOKEN.into()), h.now)
            .unwrap();
        h.pump();
        assert!(h.closed(dev));
    }
    assert_eq!(
        h.emu
            .update_device_credentials("Nobody", Credentials::AccessToken("x".into()), h.now),
        Err(ControlError::UnknownDevice("Nobody".into()))
    );
}

/// `transport.json.max_string_value_length`: a longer string value fails the JSON conversion
/// (v5: PUBACK 0x99; 3.1.1: the connection closes), counted in UTF-16 units; nested strings
/// and other types are not limited.
#[test]
fn max_string_value_length_fails_the_conversion() {
    let mut config = EmulatorConfig::default();
    config.max_string_value_length = 5;
    let mut h = Harness::with_config(config);
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish_json(
        dev,
        "v1/devices/me/telemetry",
        json!({"s": "12345", "o": {"x": "long string"}}),
        1,
    );
    h.publish_json(dev, "v1/devices/me/telemetry", json!({"s": "123456"}), 2);
    h.publish_json(dev, "v1/devices/me/attributes", json!({"a": "abcdef"}), 3);
    h.publish_json(dev, "v1/devices/me/attributes", json!({"a": "ééééé"}), 4);
    assert_eq!(
        h.take(dev),
        vec![puback(1, 0), puback(2, 0x99), puback(3, 0x99), puback(4, 0)]
    );
    // The string was checked before the numeric cast: "12345" stored as a number.
    assert_eq!(
        h.emu.latest_telemetry("Device").unwrap()["s"].value,
        json!(12345)
    );
    assert_eq!(
        h.emu.client_attributes("Device").unwrap()["a"],
        json!("ééééé")
    );

    let dev3 = h.connect(V311, DEV_TOKEN);
    h.publish_json(dev3, "v1/devices/me/telemetry", json!({"s": "😀😀😀"}), 5);
    assert_eq!(h.take(dev3), vec![]);
    assert!(h.closed(dev3));
}

/// An MQTT device profile's own topics (`deviceTelemetryTopic` / `deviceAttributesTopic`):
/// matched with wildcards, attributes first, then telemetry, before the fixed topics (so
/// `v1/devices/me/telemetry` is an unknown topic for such a device, and a catch-all filter
/// takes even an RPC topic); the v2 topics are unaffected; back to the defaults on request.
#[test]
fn profile_topics_replace_the_v1_data_topics() {
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::device("Meter", "METER_TOKEN").with_type("meters"))
        .unwrap();
    h.emu.set_profile_topics(
        "meters",
        ProfileTopics::new("sensors/+/telemetry", "sensors/+/attributes").unwrap(),
    );
    let dev = h.connect(V5, "METER_TOKEN");
    h.publish_json(dev, "sensors/m1/telemetry", json!({"kwh": 1}), 1);
    h.publish_json(dev, "sensors/m1/attributes", json!({"model": "X"}), 2);
    h.publish_json(dev, "v1/devices/me/telemetry", json!({"kwh": 2}), 3);
    h.publish_json(dev, "sensors/a/b/telemetry", json!({"kwh": 3}), 4);
    h.publish_json(dev, "v2/t", json!({"kwh": 4}), 5);
    // The profile's filter decides, and its payload checks apply as on the v1 topic.
    h.publish(dev, "sensors/m1/telemetry", b"not json", 6);
    assert_eq!(
        h.take(dev),
        vec![
            puback(1, 0),
            puback(2, 0),
            puback(3, 0x90),
            puback(4, 0x90),
            puback(5, 0),
            puback(6, 0x99)
        ]
    );
    let kwh: Vec<Value> = h.emu.telemetry("Meter").unwrap()["kwh"]
        .iter()
        .map(|p| p.value.clone())
        .collect();
    assert_eq!(kwh, vec![json!(1), json!(4)]);
    assert_eq!(
        h.emu.client_attributes("Meter").unwrap()["model"],
        json!("X")
    );
    // Another profile's devices keep the default topics.
    let other = h.connect(V5, DEV_TOKEN);
    h.publish_json(other, "v1/devices/me/telemetry", json!({"t": 1}), 1);
    h.publish_json(other, "sensors/m1/telemetry", json!({"t": 2}), 2);
    assert_eq!(h.take(other), vec![puback(1, 0), puback(2, 0x90)]);

    // A catch-all telemetry filter comes before the RPC topics: a client-side RPC request
    // is stored as telemetry and never answered.
    h.emu
        .set_profile_topics("meters", ProfileTopics::new("#", "attrs").unwrap());
    h.publish_json(
        dev,
        "v1/devices/me/rpc/request/7",
        json!({"method": "getTime", "params": {}}),
        7,
    );
    // The attributes filter is checked first, so `#` does not take its topic.
    h.publish_json(dev, "attrs", json!({"colour": "red"}), 10);
    assert_eq!(h.take(dev), vec![puback(7, 0), puback(10, 0)]);
    assert_eq!(
        h.emu.client_attributes("Meter").unwrap()["colour"],
        json!("red")
    );
    assert_eq!(
        h.emu.latest_telemetry("Meter").unwrap()["method"].value,
        json!("getTime")
    );

    h.emu.set_profile_default_topics("meters");
    h.publish_json(dev, "v1/devices/me/telemetry", json!({"kwh": 5}), 8);
    h.publish_json(dev, "sensors/m1/telemetry", json!({"kwh": 6}), 9);
    assert_eq!(h.take(dev), vec![puback(8, 0), puback(9, 0x90)]);
}

fn provision_profile(strategy: ProvisionStrategy) -> ProvisionProfile {
    ProvisionProfile {
        device_type: "sensor".into(),
        key: "KEY".into(),
        secret: "SECRET".into(),
        strategy,
    }
}

#[test]
fn provisioning_create_new_gateway_device_and_errors() {
    let mut h = Harness::new();
    h.emu
        .add_provision_profile(provision_profile(ProvisionStrategy::AllowCreateNew));
    let (id, _) = h.connect_with(V5, "provision", None, None);
    h.subscribe(id, &[("/provision/response", QoS::AtLeastOnce)]);
    h.publish_json(
        id,
        "/provision/request",
        json!({"deviceName":"NewGw","provisionDeviceKey":"KEY","provisionDeviceSecret":"SECRET","token":"NEW_TOKEN","gateway":true}),
        1,
    );
    let p = h.take(id);
    assert_eq!(p[0], puback(1, 0));
    assert_eq!(
        published(&p[1]),
        (
            "/provision/response".into(),
            json!({"credentialsValue":"NEW_TOKEN","credentialsType":"ACCESS_TOKEN","status":"SUCCESS"}),
            QoS::AtLeastOnce
        )
    );
    let info = h.emu.device("NewGw").unwrap();
    assert!(info.gateway);
    assert_eq!(info.device_type, "sensor");
    // Closed 60 s later.
    h.advance(Duration::from_secs(60));
    assert!(h.closed(id));
    let gw = h.connect(V311, "NEW_TOKEN");
    assert!(!h.closed(gw));

    // Same name again → FAILURE; bad secret → NOT_FOUND; basic credentials as an object.
    let (id, _) = h.connect_with(V311, "x", Some("provision"), None);
    for (req, resp) in [
        (
            json!({"deviceName":"NewGw","provisionDeviceKey":"KEY","provisionDeviceSecret":"SECRET"}),
            json!({"errorMsg":"Failed to provision device!","status":"FAILURE"}),
        ),
        (
            json!({"deviceName":"Z","provisionDeviceKey":"KEY","provisionDeviceSecret":"bad"}),
            json!({"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}),
        ),
        (
            json!({"deviceName":"B","provisionDeviceKey":"KEY","provisionDeviceSecret":"SECRET",
                "credentialsType":"MQTT_BASIC","clientId":"cid","username":"u","password":"p"}),
            json!({"credentialsValue":{"clientId":"cid","userName":"u","password":"p"},"credentialsType":"MQTT_BASIC","status":"SUCCESS"}),
        ),
    ] {
        h.publish_json(id, "/provision/request", req, 2);
        let p = h.take(id);
        assert_eq!(published(&p[1]).1, resp);
    }
    assert_eq!(
        h.emu.device("B").unwrap().credentials,
        Some(Credentials::Basic {
            client_id: Some("cid".into()),
            username: Some("u".into()),
            password: Some("p".into())
        })
    );
    // Missing key → 0x83 + DISCONNECT; other topic → 0x90 + DISCONNECT.
    let (id, _) = h.connect_with(V5, "provision", None, None);
    h.publish_json(id, "/provision/request", json!({"deviceName":"Q"}), 3);
    assert_eq!(h.take(id), vec![puback(3, 0x83), disconnect(0x83)]);
    let (id, _) = h.connect_with(V5, "provision", None, None);
    h.publish_json(id, "v1/devices/me/telemetry", json!({"a":1}), 4);
    assert_eq!(h.take(id), vec![puback(4, 0x90), disconnect(0x90)]);
}

#[test]
fn provisioning_pre_provisioned_device() {
    let mut h = Harness::new();
    h.emu
        .add_provision_profile(provision_profile(ProvisionStrategy::CheckPreProvisioned));
    h.emu
        .create_device(NewDevice::device("Pre", "PRE_TOKEN").with_type("sensor"))
        .unwrap();
    let (id, _) = h.connect_with(V311, "provision", None, None);
    let req =
        json!({"deviceName":"Pre","provisionDeviceKey":"KEY","provisionDeviceSecret":"SECRET"});
    h.publish_json(id, "/provision/request", req.clone(), 1);
    assert_eq!(
        published(&h.take(id)[1]).1["credentialsValue"],
        json!("PRE_TOKEN")
    );
    h.publish_json(id, "/provision/request", req, 2);
    assert_eq!(published(&h.take(id)[1]).1["status"], json!("FAILURE"));
}

#[test]
fn ota_chunks_and_errors() {
    let mut h = Harness::new();
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish(dev, "v2/fw/request/1/chunk/0", b"4", 1);
    let p = h.take(dev);
    assert_eq!(published(&p[0]).0, "v2/fw/error");
    assert!(matches!(&p[0], Packet::Publish(x) if x.payload == "NOT_FOUND"));
    assert_eq!(p[1], disconnect(0x83));

    h.emu
        .assign_ota(
            "Device",
            true,
            OtaPackage {
                title: "fw".into(),
                version: "1.1".into(),
                data: Bytes::from_static(b"0123456789"),
                checksum_algorithm: "SHA256".into(),
                checksum: "abc".into(),
            },
        )
        .unwrap();
    assert_eq!(
        h.emu.shared_attributes("Device").unwrap()["fw_size"],
        json!(10)
    );
    let dev = h.connect(V5, DEV_TOKEN);
    let chunk = |h: &mut Harness, topic: &str, size: &[u8], pkid| {
        h.publish(dev, topic, size, pkid);
        match h.take(dev).as_slice() {
            [ack, Packet::Publish(p)] => {
                assert_eq!(*ack, puback(pkid, 0));
                (p.topic.clone(), p.payload.clone())
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        chunk(&mut h, "v2/fw/request/7/chunk/0", b"4", 1),
        (
            "v2/fw/response/7/chunk/0".into(),
            Bytes::from_static(b"0123")
        )
    );
    // Empty payload reuses the remembered size.
    assert_eq!(
        chunk(&mut h, "v2/fw/request/7/chunk/2", b"", 2).1,
        Bytes::from_static(b"89")
    );
    assert_eq!(
        chunk(&mut h, "v2/fw/request/7/chunk/3", b"", 3).1,
        Bytes::new()
    );
    // Never given a size: the whole image.
    assert_eq!(
        chunk(&mut h, "v2/fw/request/8/chunk/0", b"", 4).1,
        Bytes::from_static(b"0123456789")
    );
    h.publish(dev, "v2/fw/request/9/chunk/0", b"70000", 5);
    let p = h.take(dev);
    assert!(
        matches!(&p[0], Packet::Publish(x) if x.topic == "v2/fw/error" && x.payload == "PAYLOAD_TOO_LARGE")
    );
    assert_eq!(p[1], disconnect(0x83));
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish(dev, "v2/fw/request/9/chunk/0", b"abc", 6);
    assert_eq!(h.take(dev), vec![disconnect(0x8B)]);
}

#[test]
fn inactivity_closes_sessions_pings_count_keep_alive_is_not_enforced() {
    let mut h = Harness::new();
    let idle = h.connect(V5, DEV_TOKEN);
    let pinging = h.connect(V5, GW_TOKEN);
    for _ in 0..3 {
        h.advance(Duration::from_secs(300));
        h.send(pinging, Packet::PingReq);
        assert_eq!(h.take(pinging), vec![Packet::PingResp]);
    }
    assert_eq!(h.take(idle), vec![disconnect(0x83)]);
    assert!(h.closed(idle));
    assert!(
        !h.closed(pinging),
        "keep-alive 60 s is not enforced; pings count"
    );
}

#[test]
fn child_sessions_expire_silently_and_come_back_on_the_next_message() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "C"}), 1);
    h.take(gw);
    for _ in 0..3 {
        h.advance(Duration::from_secs(250));
        h.send(gw, Packet::PingReq);
    }
    assert!(h.emu.connected_children("Gateway").unwrap().is_empty());
    assert!(!h.closed(gw));
    h.publish_json(gw, "v1/gateway/telemetry", json!({"C": [{"a": 1}]}), 2);
    assert_eq!(h.emu.connected_children("Gateway").unwrap(), vec!["C"]);
}
