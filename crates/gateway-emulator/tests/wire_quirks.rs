//! What ThingsBoard's transport and Netty put on the wire in corner cases: QoS 2 handled as
//! QoS 1, Netty's short acknowledgement forms, the v5 per-device disconnect notice of the
//! gateway API, and `sendAckOnValidationException` per device profile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gateway_emulator::{LimitConfig, NewDevice, TenantLimits};
use gateway_proto::wire::{Packet, QoS};
use serde_json::json;

const TELEMETRY: &str = "v1/gateway/telemetry";

/// A raw PUBLISH at QoS 2 (the shared codec cannot write one).
fn qos2_publish(topic: &str, payload: &[u8], pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut frame = vec![0x34, body.len() as u8];
    frame.extend(body);
    frame
}

fn qos2_publish_v5(topic: &str, payload: &[u8], pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(payload);
    let mut frame = vec![0x34, body.len() as u8];
    frame.extend(body);
    frame
}

#[test]
fn qos2_publish_is_answered_with_puback() {
    let mut h = Harness::new();
    let dev = h.connect(V311, DEV_TOKEN);
    h.send_raw(
        dev,
        &qos2_publish("v1/devices/me/telemetry", br#"{"q":2}"#, 9),
    );
    assert_eq!(h.take(dev), vec![puback(9, 0)]);
    assert_eq!(
        h.emu.latest_telemetry("Device").unwrap()["q"].value,
        json!(2)
    );

    let gw = h.gateway(V5);
    h.send_raw(gw, &qos2_publish_v5(TELEMETRY, br#"{"C":[{"q":2}]}"#, 10));
    assert_eq!(h.take(gw), vec![puback(10, 0)]);
    assert_eq!(h.emu.latest_telemetry("C").unwrap()["q"].value, json!(2));
    // An invalid payload at QoS 2 is treated like QoS 1 (PUBACK 0x99, session kept).
    h.send_raw(gw, &qos2_publish_v5(TELEMETRY, b"{oops", 11));
    assert_eq!(h.take(gw), vec![puback(11, 0x99)]);
    assert!(!h.closed(gw));
}

#[test]
fn qos2_flow_packets_are_ignored_and_qos2_subscriptions_granted_qos1() {
    let mut h = Harness::new();
    let dev = h.connect(V311, DEV_TOKEN);
    // PUBREC, PUBREL, PUBCOMP, then a PINGREQ: only the PINGRESP comes back.
    h.send_raw(
        dev,
        &[
            0x50, 0x02, 0, 1, 0x62, 0x02, 0, 1, 0x70, 0x02, 0, 1, 0xC0, 0x00,
        ],
    );
    assert_eq!(h.take(dev), vec![Packet::PingResp]);
    assert!(!h.closed(dev));
    // SUBSCRIBE "v1/devices/me/attributes" at QoS 2 → granted 1.
    let topic = b"v1/devices/me/attributes";
    let mut frame = vec![0x82, (2 + 2 + topic.len() + 1) as u8, 0, 5];
    frame.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    frame.extend_from_slice(topic);
    frame.push(2);
    h.send_raw(dev, &frame);
    match h.take(dev).as_slice() {
        [Packet::SubAck(s)] => assert_eq!(s.codes, vec![1]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // The subscription is recorded at QoS 1: an update arrives at QoS 1.
    let mut m = serde_json::Map::new();
    m.insert("k".into(), json!(1));
    h.emu.set_shared_attributes("Device", m).unwrap();
    let (_, _, qos) = published(&h.take(dev)[0]);
    assert_eq!(qos, QoS::AtLeastOnce);
}

#[test]
fn acknowledgements_use_nettys_short_forms() {
    let mut h = Harness::new();
    let v3 = h.connect(V311, DEV_TOKEN);
    h.publish_json(v3, "v1/devices/me/telemetry", json!({"a": 1}), 0x0102);
    assert_eq!(h.take_raw(v3), vec![0x40, 0x02, 0x01, 0x02]);

    let gw = h.gateway(V5);
    // v5 success: no reason code, no property length.
    h.publish_json(gw, TELEMETRY, json!({"A": [{"a": 1}]}), 7);
    assert_eq!(h.take_raw(gw), vec![0x40, 0x02, 0x00, 0x07]);
    // v5 failure: reason code and an empty property block.
    h.publish(gw, "v1/gateway/nope", b"{}", 8);
    assert_eq!(h.take_raw(gw), vec![0x40, 0x04, 0x00, 0x08, 0x90, 0x00]);
    // A client DISCONNECT is answered with the two-byte NORMAL_DISCONNECT.
    h.send(
        gw,
        Packet::Disconnect(gateway_proto::wire::Disconnect { code: 0 }),
    );
    assert_eq!(h.take_raw(gw), vec![0xE0, 0x00]);
    assert!(h.closed(gw));
    // Other DISCONNECTs carry the reason code and an empty property block.
    let dev = h.connect(V5, DEV_TOKEN);
    let _new = h.connect(V5, DEV_TOKEN);
    assert_eq!(h.take_raw(dev), vec![0xE0, 0x02, 0x8E, 0x00]);
}

#[test]
fn v5_qos0_multi_device_messages_send_malformed_notices_for_all_but_the_last_entry() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    // QoS 0: packet id -1 on the server; entries complete in key order A, B, C.
    h.publish_json(
        gw,
        TELEMETRY,
        json!({"A": [{"t": 1}], "B": [{"t": 2}], "C": [{"t": 3}]}),
        0,
    );
    let notices: Vec<_> = h.take(gw).iter().map(published).collect();
    assert_eq!(
        notices,
        vec![
            (
                "v1/gateway/disconnect".to_owned(),
                json!({"device": "A", "reason": 129}),
                QoS::AtLeastOnce
            ),
            (
                "v1/gateway/disconnect".to_owned(),
                json!({"device": "B", "reason": 129}),
                QoS::AtLeastOnce
            ),
        ]
    );
    assert!(!h.closed(gw));
    for (d, v) in [("A", 1), ("B", 2), ("C", 3)] {
        assert_eq!(h.emu.latest_telemetry(d).unwrap()["t"].value, json!(v));
    }
    // A single device, or MQTT 3.1.1: nothing at all.
    h.publish_json(gw, TELEMETRY, json!({"A": [{"t": 4}]}), 0);
    assert_eq!(h.take(gw), vec![]);
    let v3 = h.gateway(V311);
    h.publish_json(v3, TELEMETRY, json!({"A": [{"t": 5}], "B": [{"t": 5}]}), 0);
    assert_eq!(h.take(v3), vec![]);
    assert_eq!(h.emu.latest_telemetry("B").unwrap()["t"].value, json!(5));
}

#[test]
fn v5_rate_limit_notice_reaches_the_client_only_when_the_connection_survives() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            gateway: LimitConfig::new("100:60", "1:60", "100:60"),
            ..TenantLimits::default()
        })
        .unwrap();
    let gw = h.gateway(V5);
    for (i, d) in ["A", "B", "C"].iter().enumerate() {
        h.publish_json(
            gw,
            "v1/gateway/connect",
            json!({ "device": d }),
            i as u16 + 1,
        );
    }
    assert_eq!(h.take(gw).len(), 3);
    // A fails conversion (PUBACK 0x99 acknowledges the message, the session stays), B takes the
    // only telemetry token, C is rate-limited: its failure cannot ack or close any more, so the
    // notice with reason 150 MESSAGE_RATE_TOO_HIGH is written and the session goes on.
    h.publish_json(
        gw,
        TELEMETRY,
        json!({"A": [1], "B": [{"t": 1}], "C": [{"t": 1}]}),
        4,
    );
    let packets = h.take(gw);
    assert_eq!(packets[0], puback(4, 0x99));
    assert_eq!(
        published(&packets[1]),
        (
            "v1/gateway/disconnect".to_owned(),
            json!({"device": "C", "reason": 150}),
            QoS::AtLeastOnce
        )
    );
    assert_eq!(packets.len(), 2);
    assert!(!h.closed(gw));
    assert_eq!(h.emu.latest_telemetry("B").unwrap()["t"].value, json!(1));
    assert!(h.emu.latest_telemetry("C").unwrap().is_empty());

    // The usual case: the rate limit acknowledges with 0x97 and closes first, so the notice is
    // lost (as on ThingsBoard, where it is written after `ctx.close()`).
    h.advance(std::time::Duration::from_secs(61));
    let gw = h.gateway(V5);
    h.publish_json(gw, TELEMETRY, json!({"B": [{"t": 2}], "C": [{"t": 2}]}), 5);
    assert_eq!(h.take(gw), vec![puback(5, 0x97)]);
    assert!(h.closed(gw));
}

#[test]
fn send_ack_on_validation_exception_is_per_device_profile() {
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::gateway("Lenient GW", "LENIENT").with_type("lenient"))
        .unwrap();
    h.emu
        .set_profile_send_ack_on_validation_exception("lenient", true);
    // The lenient profile's gateway gets a plain PUBACK on v3.1.1 ...
    let lenient = h.connect(V311, "LENIENT");
    h.publish(lenient, TELEMETRY, b"{not json", 3);
    assert_eq!(h.take(lenient), vec![puback(3, 0)]);
    h.publish(lenient, "v1/devices/me/telemetry", b"{not json", 4);
    assert_eq!(h.take(lenient), vec![puback(4, 0)]);
    assert!(!h.closed(lenient));
    // ... a gateway of the default profile is still closed.
    let strict = h.gateway(V311);
    h.publish(strict, TELEMETRY, b"{not json", 5);
    assert_eq!(h.take(strict), vec![]);
    assert!(h.closed(strict));
    // Turning the profile off again restores the close.
    h.emu
        .set_profile_send_ack_on_validation_exception("lenient", false);
    let lenient = h.connect(V311, "LENIENT");
    h.publish(lenient, TELEMETRY, b"{not json", 6);
    assert!(h.closed(lenient));
}
