//! Every error class of spec §2.1 and the PUBACK/DISCONNECT codes of §6, on both versions.

mod common;

use common::*;
use gateway_emulator::{EmulatorConfig, LimitConfig, TenantLimits};
use serde_json::json;

const TELEMETRY: &str = "v1/gateway/telemetry";

#[test]
fn invalid_json_is_0x99_and_kept_on_v5() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    for topic in [
        TELEMETRY,
        "v1/gateway/connect",
        "v1/gateway/attributes/request",
    ] {
        h.publish(gw, topic, b"{not json", 5);
        assert_eq!(h.take(gw), vec![puback(5, 0x99)], "{topic}");
    }
    assert!(!h.closed(gw));
}

#[test]
fn invalid_json_at_qos0_is_disconnect_0x99_on_v5() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.publish(gw, TELEMETRY, b"{not json", 0);
    assert_eq!(h.take(gw), vec![disconnect(0x99)]);
    assert!(h.closed(gw));
}

#[test]
fn invalid_json_closes_v3_unless_send_ack_on_validation_exception() {
    let mut h = Harness::new();
    let gw = h.gateway(V311);
    h.publish(gw, TELEMETRY, b"{not json", 5);
    assert_eq!(h.take(gw), vec![]);
    assert!(h.closed(gw));

    let mut config = EmulatorConfig::default();
    config.send_ack_on_validation_exception = true;
    let mut h = Harness::with_config(config);
    let gw = h.gateway(V311);
    h.publish(gw, TELEMETRY, b"{not json", 5);
    assert_eq!(h.take(gw), vec![puback(5, 0)]);
    assert!(!h.closed(gw));
    // The device API follows the same switch (`testPushTelemetryGatewayWithMalformedPayload...`).
    h.publish(gw, "v1/devices/me/telemetry", b"{not json", 6);
    assert_eq!(h.take(gw), vec![puback(6, 0)]);
}

#[test]
fn valid_json_of_the_wrong_shape_is_0x83_then_disconnect_0x83() {
    let cases: &[(&str, &[u8])] = &[
        (TELEMETRY, b"[]"),
        (TELEMETRY, b"\"x\""),
        (TELEMETRY, b"42"),
        (TELEMETRY, b""),
        (TELEMETRY, b"{}"),
        // Every per-device value of the wrong JSON type: "message is empty".
        (TELEMETRY, br#"{"Dev":{"k":1}}"#),
        ("v1/gateway/attributes", br#"{"Dev":[1]}"#),
        ("v1/gateway/connect", br#"{"type":"t"}"#),
        ("v1/gateway/connect", br#"{"device":""}"#),
        ("v1/gateway/disconnect", b"{}"),
        ("v1/gateway/rpc", br#"{"device":"D","id":1}"#),
        // The newer documented request shape is refused by the server (§10.1).
        (
            "v1/gateway/attributes/request",
            br#"{"id":1,"device":"D","client":["a","b"],"shared":["c"]}"#,
        ),
        ("v1/gateway/claim", b"{}"),
    ];
    for (topic, payload) in cases {
        let mut h = Harness::new();
        let gw = h.gateway(V5);
        h.publish(gw, topic, payload, 3);
        assert_eq!(
            h.take(gw),
            vec![puback(3, 0x83), disconnect(0x83)],
            "{topic} {:?}",
            String::from_utf8_lossy(payload)
        );
        assert!(h.closed(gw));

        let gw = h.gateway(V311);
        h.publish(gw, topic, payload, 3);
        assert_eq!(h.take(gw), vec![puback(3, 0)], "v3 {topic}");
        assert!(h.closed(gw));
    }
}

#[test]
fn per_device_conversion_failure_is_0x99_once_on_v5_and_close_on_v3() {
    let payload = json!({"Good": [{"k": 1}], "Bad": [1, 2]});
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.publish_json(gw, TELEMETRY, payload.clone(), 4);
    assert_eq!(h.take(gw), vec![puback(4, 0x99)]);
    assert!(!h.closed(gw));
    // The valid entry was still processed.
    assert!(h.emu.latest_telemetry("Good").unwrap().contains_key("k"));
    assert!(h.emu.device("Bad").is_some(), "created before conversion");

    let mut h = Harness::new();
    let gw = h.gateway(V311);
    h.publish_json(gw, TELEMETRY, payload, 4);
    assert_eq!(h.take(gw), vec![]);
    assert!(h.closed(gw));
}

#[test]
fn device_limit_on_auto_create_is_0x97_and_the_session_is_kept() {
    let mut h = Harness::new();
    h.emu.set_max_devices(Some(3));
    let gw = h.gateway(V5);
    h.publish_json(gw, TELEMETRY, json!({"A": [{"t": 1}]}), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    // `testAckIsReceivedOnFailedPublishMessage`: the 4th device cannot be created.
    h.publish_json(gw, TELEMETRY, json!({"B": [{"t": 1}]}), 2);
    assert_eq!(h.take(gw), vec![puback(2, 0x97)]);
    assert!(h.emu.device("B").is_none());
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "C"}), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0x97)]);
    assert!(!h.closed(gw));

    let gw3 = h.gateway(V311);
    h.publish_json(gw3, TELEMETRY, json!({"B": [{"t": 1}]}), 2);
    assert_eq!(h.take(gw3), vec![puback(2, 0)]);
    assert!(!h.closed(gw3));
}

#[test]
fn pre_4_2_1_1_sends_no_puback_on_connect_failure() {
    let mut config = EmulatorConfig::default();
    config.quirks.no_puback_on_connect_failure = true;
    let mut h = Harness::with_config(config);
    h.emu.set_max_devices(Some(2));
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "C"}), 3);
    assert_eq!(h.take(gw), vec![]);
}

fn gateway_limits(gateway: LimitConfig) -> TenantLimits {
    TenantLimits {
        gateway,
        ..TenantLimits::default()
    }
}

#[test]
fn rate_limited_child_traffic_is_0x97_then_tcp_close() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(gateway_limits(LimitConfig::new("100:60", "1:60", "100:60")))
        .unwrap();
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "B"}), 2);
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0)]);
    h.publish_json(gw, TELEMETRY, json!({"A": [{"t": 1}]}), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0)]);
    h.publish_json(gw, TELEMETRY, json!({"B": [{"t": 1}]}), 4);
    // No DISCONNECT packet: the channel is just closed after the PUBACK.
    assert_eq!(h.take(gw), vec![puback(4, 0x97)]);
    assert!(h.closed(gw));
    assert!(h.emu.latest_telemetry("B").unwrap().is_empty());

    let gw = h.gateway(V311);
    h.publish_json(gw, TELEMETRY, json!({"A": [{"t": 1}]}), 5);
    assert_eq!(h.take(gw), vec![puback(5, 0)]);
    assert!(h.closed(gw));
}

#[test]
fn rate_limited_child_creation_is_disconnect_0x8b_without_puback() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(gateway_limits(LimitConfig::new("1:60", "", "")))
        .unwrap();
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    h.publish_json(gw, TELEMETRY, json!({"B": [{"t": 1}]}), 2);
    assert_eq!(h.take(gw), vec![disconnect(0x8B)]);
    assert!(h.closed(gw));
}

/// `MqttGatewayRateLimitsTest.transportGatewayMsgRateLimitTest` ("3:600"): a new child
/// takes two regular tokens of the gateway's bucket, its get-or-create and its session-open
/// event. The open event has no callback: refused, the gateway hears nothing (the PUBACK
/// is a success) and a notification names the child; the next creation is refused.
#[test]
fn new_children_take_two_tokens_and_a_refused_open_is_silent() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(gateway_limits(LimitConfig::new("3:600", "", "")))
        .unwrap();
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "B"}), 2);
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0)]);
    let limited: Vec<String> = std::iter::from_fn(|| h.emu.poll_event())
        .filter_map(|e| match e {
            gateway_emulator::Event::RateLimited { device, .. } => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(limited, vec!["B".to_owned()]);
    // A known child costs nothing; a new one is refused at creation.
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0)]);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "C"}), 4);
    assert_eq!(h.take(gw), vec![disconnect(0x8B)]);
}

/// A child's session-close event (`v1/gateway/disconnect`, or the gateway's session ending)
/// takes a token too, so the bucket ThingsBoard keeps per gateway is lower on reconnect.
#[test]
fn closing_children_takes_tokens_across_sessions() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(gateway_limits(LimitConfig::new("6:600", "", "")))
        .unwrap();
    let gw = h.gateway(V311);
    // A: create + open (2), disconnect (3); B: create + open (5).
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    h.publish_json(gw, "v1/gateway/disconnect", json!({"device": "A"}), 2);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "B"}), 3);
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0), puback(3, 0)]);
    // The gateway's session ends: B's close (6) empties the bucket.
    h.send(
        gw,
        gateway_proto::wire::Packet::Disconnect(gateway_proto::wire::Disconnect { code: 0 }),
    );
    assert!(h.closed(gw));
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 4);
    assert_eq!(h.take(gw), vec![disconnect(0x8B)]);
}

#[test]
fn rate_limited_device_api_is_disconnect_0x83_without_puback() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            device: LimitConfig::new("", "1:60", ""),
            ..TenantLimits::default()
        })
        .unwrap();
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish(dev, "v1/devices/me/telemetry", br#"{"t":1}"#, 1);
    h.publish(dev, "v1/devices/me/telemetry", br#"{"t":2}"#, 2);
    assert_eq!(h.take(dev), vec![puback(1, 0), disconnect(0x83)]);
    assert!(h.closed(dev));
}

#[test]
fn unknown_gateway_topic_is_0x90_and_kept() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.publish(gw, "v1/gateway/unknown", b"{}", 8);
    assert_eq!(h.take(gw), vec![puback(8, 0x90)]);
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish(dev, "wrong/topic/", b"{}", 9);
    assert_eq!(h.take(dev), vec![puback(9, 0x90)]);
    let dev3 = h.connect(V311, GW_TOKEN);
    h.publish(dev3, "wrong/topic/", b"{}", 9);
    assert_eq!(h.take(dev3), vec![puback(9, 0)]);
    assert!(!h.closed(dev3));
}

#[test]
fn gateway_topics_from_a_non_gateway_are_dropped_without_puback() {
    let mut h = Harness::new();
    let dev = h.connect(V5, DEV_TOKEN);
    h.publish_json(dev, TELEMETRY, json!({"A": [{"t": 1}]}), 1);
    h.publish(dev, TELEMETRY, b"{garbage", 2);
    assert_eq!(h.take(dev), vec![]);
    assert!(!h.closed(dev));
    assert!(h.emu.device("A").is_none());
}

#[test]
fn decoder_failures_are_disconnect_0x81() {
    // Wildcard in a PUBLISH topic.
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.send_raw(gw, b"\x32\x0a\x00\x03a/+\x00\x01\x00{}");
    assert_eq!(h.take(gw), vec![disconnect(0x81)]);
    assert!(h.closed(gw));
    // Packet larger than 65,536 bytes of remaining length.
    let gw = h.gateway(V5);
    let big = vec![b' '; 65_600];
    h.publish(gw, TELEMETRY, &big, 1);
    assert_eq!(h.take(gw), vec![disconnect(0x81)]);
    // QoS 1 with packet id 0 (hand-made: the encoder refuses it).
    let gw = h.gateway(V5);
    h.send_raw(gw, b"\x32\x0a\x00\x03a/b\x00\x00\x00hi");
    assert_eq!(h.take(gw), vec![disconnect(0x81)]);
    // v3: just closed.
    let gw = h.gateway(V311);
    h.send_raw(gw, b"\x32\x09\x00\x03a/b\x00\x00hi");
    assert_eq!(h.take(gw), vec![]);
    assert!(h.closed(gw));
}

#[test]
fn qos0_gateway_uplink_is_processed_without_ack() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.publish_json(gw, TELEMETRY, json!({"A": [{"t": 7}]}), 0);
    assert_eq!(h.take(gw), vec![]);
    assert_eq!(h.emu.latest_telemetry("A").unwrap()["t"].value, json!(7));
}
