//! Session limits, pacing, push-back, splitting, the Device API topic families and raw
//! (`/p`) payloads, against a scripted broker on a virtual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, publishes, server_publish, Harness};
use gateway_proto::checksum::ChecksumAlgorithm;
use gateway_proto::limits::{LimitsReport, PushBack, Scope, Traffic};
use gateway_proto::payload::{
    DeviceTelemetry, GatewayTelemetry, Payload, RpcRequest, TelemetryEntry,
};
use gateway_proto::raw::RawDownlink;
use gateway_proto::topic::TopicFamily;
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    Command, CommandError, Config, DisconnectReason, Event, LimitsConfig, OtaConfig, ReasonCode,
    RequestError, Role,
};
use serde_json::{json, Map, Value};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// Limits on as by default, but the full share of each limit so numbers are exact.
fn limits_config(role: Role) -> Config {
    let mut c = config(V5);
    c.role = role;
    c.sub_device_keepalive = None;
    c.limits = LimitsConfig::default();
    c.limits.rate_share_percent = 100;
    c
}

/// Only splitting on (no `getSessionLimits`, no pacing).
fn split_config(max_packet: usize) -> Config {
    let mut c = config(V5);
    c.max_outgoing_packet = max_packet;
    c.limits = LimitsConfig::disabled();
    c.limits.split = true;
    c
}

fn limits_json(gateway_dp: &str, gateway_telemetry: &str) -> String {
    json!({
        "maxPayloadSize": 2048,
        "maxInflightMessages": 7,
        "rateLimits": {"messages": "100:1", "telemetryMessages": "100:1", "telemetryDataPoints": "1000:1"},
        "gatewayRateLimits": {
            "messages": "100:1",
            "telemetryMessages": gateway_telemetry,
            "telemetryDataPoints": gateway_dp
        }
    })
    .to_string()
}

/// The `getSessionLimits` request among `packets`: (packet id, wire id).
fn limits_request(packets: &[Packet]) -> (u16, u64) {
    let p = publishes(packets)
        .into_iter()
        .find(|p| p.topic.starts_with("v1/devices/me/rpc/request/"))
        .expect("a getSessionLimits request");
    let rpc = RpcRequest::parse(&p.payload).unwrap();
    assert_eq!(rpc.method, "getSessionLimits");
    assert_eq!(rpc.params, json!({}));
    let id = p.topic.rsplit('/').next().unwrap().parse().unwrap();
    (p.pkid, id)
}

fn puback(h: &mut Harness, pkid: u16, code: u8) {
    h.send(Packet::PubAck(wire::PubAck { pkid, code }));
}

/// Connects, answers the `getSessionLimits` request with `answer`, and returns the packets
/// the client sent after the answer.
fn connect_with_limits(h: &mut Harness, answer: &str) -> Vec<Packet> {
    let after = h.connect();
    let (pkid, id) = limits_request(&after);
    assert_eq!(
        publishes(&after).len(),
        1,
        "only the request before the answer"
    );
    puback(h, pkid, 0);
    h.send(server_publish(
        &format!("v1/devices/me/rpc/response/{id}"),
        answer.to_owned(),
        Some(900),
    ));
    h.client_packets()
}

fn acks_all(h: &mut Harness, packets: &[Packet]) {
    for p in publishes(packets) {
        if p.qos == wire::QoS::AtLeastOnce {
            puback(h, p.pkid, 0);
        }
    }
}

// ----- session limits ----------------------------------------------------------------------

#[test]
fn session_limits_are_asked_first_and_queued_data_waits_for_the_answer() {
    let mut h = Harness::new(limits_config(Role::Gateway));
    let t = h
        .conn
        .command(h.now, Command::device_telemetry("D", map(json!({"t": 1}))))
        .unwrap();
    let after = h.connect();
    let (pkid, id) = limits_request(&after);
    assert_eq!(publishes(&after).len(), 1);
    h.advance(Duration::from_secs(1));
    assert!(publishes(&h.client_packets()).is_empty(), "held");
    puback(&mut h, pkid, 0);
    h.send(server_publish(
        &format!("v1/devices/me/rpc/response/{id}"),
        limits_json("1000:1", "100:1"),
        Some(900),
    ));
    let sent = h.client_packets();
    let sent = publishes(&sent);
    // The sub-device the command named is announced first, then its data.
    let topics: Vec<&str> = sent.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["v1/gateway/connect", "v1/gateway/telemetry"]);
    let events = h.take_events();
    let applied = events.iter().find_map(|e| match e {
        Event::SessionLimits(LimitsReport::Applied(a)) => Some(a.clone()),
        _ => None,
    });
    let applied = applied.expect("limits applied");
    assert_eq!(applied.max_outgoing_packet, 2048);
    assert_eq!(applied.max_inflight, 7);
    assert_eq!(
        applied
            .server
            .gateway_rate_limits
            .unwrap()
            .telemetry_messages,
        "100:1"
    );
    assert_eq!(h.conn.max_outgoing_packet(), 2048);
    puback(&mut h, sent[0].pkid, 0);
    puback(&mut h, sent[1].pkid, 0);
    // The answer was consumed: no RPC response event, no warning.
    assert_eq!(h.take_events(), vec![Event::Delivered(t)]);
}

#[test]
fn the_packet_limit_and_window_follow_the_server() {
    let mut h = Harness::new(limits_config(Role::Device));
    connect_with_limits(&mut h, &limits_json("1000:1", "100:1"));
    h.take_events();
    // 2048 bytes of remaining length: a bigger raw publish is refused synchronously.
    let big = Command::publish("custom/topic", vec![b'x'; 2100]);
    assert!(matches!(
        h.conn.command(h.now, big),
        Err(CommandError::TooLarge { max: 2048, .. })
    ));
    // Window of 7: the eighth waits for a PUBACK.
    for i in 0..8 {
        h.conn
            .command(h.now, Command::publish("custom/topic", format!("{i}")))
            .unwrap();
    }
    h.drain();
    let sent = h.client_packets();
    assert_eq!(publishes(&sent).len(), 7);
    puback(&mut h, publishes(&sent)[0].pkid, 0);
    assert_eq!(publishes(&h.client_packets()).len(), 1);
}

#[test]
fn without_an_answer_queued_data_goes_out_after_the_bounded_wait() {
    let mut h = Harness::new(limits_config(Role::Gateway));
    h.conn
        .command(h.now, Command::device_telemetry("D", map(json!({"t": 1}))))
        .unwrap();
    let after = h.connect();
    let (pkid, id) = limits_request(&after);
    puback(&mut h, pkid, 0);
    h.take_events();
    h.advance(Duration::from_millis(4999));
    assert!(publishes(&h.client_packets()).is_empty());
    assert_eq!(
        h.conn.poll_timeout(),
        Some(h.now + Duration::from_millis(1))
    );
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.take_events(),
        vec![Event::SessionLimits(LimitsReport::NoAnswer)]
    );
    assert_eq!(publishes(&h.client_packets()).len(), 2, "carried on");
    // A late answer still applies.
    h.send(server_publish(
        &format!("v1/devices/me/rpc/response/{id}"),
        limits_json("1000:1", "100:1"),
        None,
    ));
    assert!(matches!(
        h.take_events().as_slice(),
        [Event::SessionLimits(LimitsReport::Applied(_))]
    ));
}

#[test]
fn a_plain_broker_reflecting_the_request_means_nobody_answers() {
    let mut c = limits_config(Role::Device);
    c.subscribe_api = true;
    let mut h = Harness::new(c);
    h.conn
        .command(h.now, Command::telemetry(map(json!({"t": 1}))))
        .unwrap();
    let after = h.connect();
    let (pkid, id) = limits_request(&after);
    puback(&mut h, pkid, 0);
    // What mosquitto does: we subscribed to v1/devices/me/rpc/request/+.
    h.send(server_publish(
        &format!("v1/devices/me/rpc/request/{id}"),
        r#"{"method":"getSessionLimits","params":{}}"#,
        Some(5),
    ));
    assert_eq!(
        h.take_events(),
        vec![Event::SessionLimits(LimitsReport::NoAnswer)],
        "no RpcRequest for our own request"
    );
    let sent = h.client_packets();
    assert_eq!(publishes(&sent).len(), 1, "carried on at once");
    assert_eq!(publishes(&sent)[0].topic, "v1/devices/me/telemetry");
}

#[test]
fn an_error_answer_or_a_refused_request_carries_on() {
    let mut h = Harness::new(limits_config(Role::Device));
    let after = h.connect();
    let (pkid, id) = limits_request(&after);
    puback(&mut h, pkid, 0);
    h.send(server_publish(
        &format!("v1/devices/me/rpc/response/{id}"),
        r#"{"error":"timeout"}"#,
        None,
    ));
    assert!(matches!(
        h.take_events().as_slice(),
        [Event::SessionLimits(LimitsReport::Invalid(_))]
    ));
    // Next session: the request is refused.
    h.drop_transport();
    h.advance_to_timeout();
    let after = h.connect();
    let (pkid, _) = limits_request(&after);
    h.take_events();
    puback(&mut h, pkid, 0x80);
    assert_eq!(
        h.take_events(),
        vec![Event::SessionLimits(LimitsReport::NoAnswer)]
    );
}

#[test]
fn limits_are_asked_again_on_every_connect_and_bad_rate_strings_are_invalid() {
    let mut h = Harness::new(limits_config(Role::Device));
    connect_with_limits(&mut h, &limits_json("1000:1", "100:1"));
    h.drop_transport();
    h.advance_to_timeout();
    let after = h.connect();
    let (pkid, id) = limits_request(&after);
    puback(&mut h, pkid, 0);
    h.take_events();
    h.send(server_publish(
        &format!("v1/devices/me/rpc/response/{id}"),
        r#"{"maxPayloadSize":1,"maxInflightMessages":0,"rateLimits":{"messages":"x:1"}}"#,
        None,
    ));
    assert!(matches!(
        h.take_events().as_slice(),
        [Event::SessionLimits(LimitsReport::Invalid(_))]
    ));
}

// ----- pacing --------------------------------------------------------------------------------

#[test]
fn sub_device_telemetry_is_paced_by_the_gateway_limits_on_the_virtual_clock() {
    let mut c = limits_config(Role::Gateway);
    c.max_inflight = 100;
    let mut h = Harness::new(c);
    connect_with_limits(&mut h, &limits_json("1000:1", "5:1,8:2"));
    h.take_events();
    let t0 = h.now;
    let ids: Vec<_> = (0..20)
        .map(|i| {
            h.conn
                .command(h.now, Command::device_telemetry("D", map(json!({"n": i}))))
                .unwrap()
        })
        .collect();
    h.drain();
    let mut times = Vec::new();
    loop {
        let sent = h.client_packets();
        for _ in publishes(&sent) {
            times.push(h.now - t0);
        }
        acks_all(&mut h, &sent);
        if times.len() == 20 {
            break;
        }
        h.advance_to_timeout();
    }
    // What the server's greedy buckets accept: from publish j to publish k, at most
    // `capacity + capacity × elapsed / window` for each window (5:1 and 8:2).
    let ms = |n: u64| Duration::from_millis(n);
    for k in 0..times.len() {
        for j in 0..=k {
            let elapsed = (times[k] - times[j]).as_nanos();
            let n = (k - j + 1) as u128;
            for (cap, window_ns) in [(5u128, 1_000_000_000u128), (8, 2_000_000_000)] {
                assert!(
                    n * window_ns <= cap * window_ns + cap * elapsed,
                    "publishes {j}..={k}: {times:?}"
                );
            }
        }
    }
    // And no later than needed: 5 at once, then one per 200 ms (the 8:2 window's three
    // spare tokens and its 4 per second keep up), the 20th exactly when both allow it.
    assert_eq!(&times[..5], &[Duration::ZERO; 5]);
    assert_eq!(times[5], ms(200));
    assert_eq!(*times.last().unwrap(), ms(3000), "{times:?}");
    let events = h.take_events();
    for id in ids {
        assert!(events.contains(&Event::Delivered(id)));
    }
    assert!(h.conn.stats().paced > 0);
}

#[test]
fn the_devices_own_traffic_is_paced_separately_from_its_sub_devices() {
    let mut c = limits_config(Role::Gateway);
    c.max_inflight = 100;
    let mut h = Harness::new(c);
    // Own telemetry 100:1; children 1:10.
    connect_with_limits(&mut h, &limits_json("1000:1", "1:10"));
    h.take_events();
    h.conn
        .command(h.now, Command::device_telemetry("D", map(json!({"n": 1}))))
        .unwrap();
    h.conn
        .command(h.now, Command::telemetry(map(json!({"own": 1}))))
        .unwrap();
    h.conn
        .command(h.now, Command::device_telemetry("D", map(json!({"n": 2}))))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let topics: Vec<&str> = publishes(&sent).iter().map(|p| p.topic.as_str()).collect();
    // The second sub-device message waits 10 s; order is kept, so nothing passes it.
    assert_eq!(topics, ["v1/gateway/telemetry", "v1/devices/me/telemetry"]);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    h.advance(Duration::from_secs(10));
    assert_eq!(publishes(&h.client_packets()).len(), 1);
}

#[test]
fn a_raw_publish_on_a_telemetry_topic_is_paced_by_its_data_points() {
    let mut c = limits_config(Role::Gateway);
    c.max_inflight = 100;
    let mut h = Harness::new(c);
    // Sub-devices: 3 data points per second.
    connect_with_limits(&mut h, &limits_json("3:1", "100:1"));
    h.take_events();
    for _ in 0..2 {
        h.conn
            .command(
                h.now,
                Command::publish("v1/gateway/telemetry", r#"{"D":[{"a":1,"b":2,"c":3}]}"#),
            )
            .unwrap();
    }
    h.drain();
    assert_eq!(publishes(&h.client_packets()).len(), 1);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(1)));
    h.advance(Duration::from_secs(1));
    assert_eq!(publishes(&h.client_packets()).len(), 1);
}

// ----- push-back -----------------------------------------------------------------------------

#[test]
fn a_quota_puback_slows_down_and_resends_the_message_later() {
    let mut c = limits_config(Role::Gateway);
    c.max_publish_attempts = 2;
    let mut h = Harness::new(c);
    connect_with_limits(&mut h, &limits_json("1000:1", "100:1"));
    h.take_events();
    let t = h
        .conn
        .command(h.now, Command::device_telemetry("D", map(json!({"t": 1}))))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let first = publishes(&sent)[0].clone();
    puback(&mut h, first.pkid, 0x97);
    let events = h.take_events();
    let [Event::RateLimited(notice)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(notice.scope, Scope::Gateway);
    assert_eq!(
        notice.signal,
        PushBack::PubAck {
            request: t,
            code: ReasonCode::QuotaExceeded,
            resent: true
        }
    );
    assert_eq!(notice.traffic, Some(Traffic::Telemetry));
    assert!(notice.limits_known);
    assert_eq!(notice.rate_percent, 50);
    assert_eq!(notice.paused_until, h.now + Duration::from_secs(1));
    assert!(!notice.to_string().is_empty());
    // Paused: nothing for a second, then the same message again.
    h.advance(Duration::from_millis(999));
    assert!(publishes(&h.client_packets()).is_empty());
    h.advance(Duration::from_millis(1));
    let again = h.client_packets();
    let again = publishes(&again);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, first.payload);
    assert!(again[0].dup);
    // Refused again: attempts are used up, so the request fails with the code.
    puback(&mut h, again[0].pkid, 0x97);
    let events = h.take_events();
    assert!(matches!(
        events.as_slice(),
        [
            Event::RateLimited(_),
            Event::Failed {
                error: RequestError::Rejected(ReasonCode::QuotaExceeded),
                ..
            }
        ]
    ));
    assert_eq!(h.conn.stats().resent_after_push_back, 1);
}

#[test]
fn a_quota_puback_on_a_connect_is_the_device_limit_not_a_rate_limit() {
    let mut h = Harness::new(limits_config(Role::Gateway));
    connect_with_limits(&mut h, &limits_json("1000:1", "100:1"));
    h.take_events();
    let c = h
        .conn
        .command(h.now, Command::connect_device("D", None))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    puback(&mut h, publishes(&sent)[0].pkid, 0x97);
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: c,
            error: RequestError::Rejected(ReasonCode::QuotaExceeded)
        }]
    );
}

#[test]
fn a_rate_limit_disconnect_and_a_sub_device_notice_are_push_back() {
    let mut c = limits_config(Role::Gateway);
    c.subscribe_api = true;
    let mut h = Harness::new(c);
    connect_with_limits(&mut h, &limits_json("1000:1", "100:1"));
    h.take_events();
    h.send(server_publish(
        "v1/gateway/disconnect",
        r#"{"device":"Noisy","reason":150}"#,
        Some(3),
    ));
    let events = h.take_events();
    assert!(matches!(events[0], Event::SubDeviceDisconnected { .. }));
    assert!(matches!(
        &events[1],
        Event::RateLimited(n) if n.scope == Scope::Gateway
            && n.signal == PushBack::SubDeviceDisconnected { device: "Noisy".into() }
    ));
    // The gateway's own traffic over its limit: DISCONNECT 0x83.
    h.send(Packet::Disconnect(wire::Disconnect { code: 0x83 }));
    let events = h.take_events();
    assert!(matches!(
        &events[0],
        Event::RateLimited(n) if n.scope == Scope::Device
            && n.signal == PushBack::Disconnect(ReasonCode::ImplementationSpecificError)
    ));
    assert!(matches!(
        events[1],
        Event::Disconnected {
            reason: DisconnectReason::ServerDisconnect(ReasonCode::ImplementationSpecificError),
            ..
        }
    ));
    assert_eq!(h.conn.stats().push_backs, 2);
}

#[test]
fn push_back_without_known_limits_pauses_the_scope() {
    // Nothing learned (no getSessionLimits): only the pause applies.
    let mut c = config(V5);
    c.limits = LimitsConfig::default();
    c.limits.session_limits_wait = None;
    let mut h = Harness::new(c);
    h.connect();
    let a = h
        .conn
        .command(h.now, Command::device_telemetry("D", map(json!({"t": 1}))))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    puback(&mut h, publishes(&sent)[0].pkid, 0x96);
    let events = h.take_events();
    assert!(matches!(&events[..], [Event::RateLimited(n)] if !n.limits_known));
    h.conn
        .command(h.now, Command::telemetry(map(json!({"own": 1}))))
        .unwrap();
    h.drain();
    // The own scope is not paused, but it queues behind the paused sub-device message.
    assert!(publishes(&h.client_packets()).is_empty());
    h.advance(Duration::from_secs(1));
    let sent = h.client_packets();
    assert_eq!(publishes(&sent).len(), 2);
    acks_all(&mut h, &sent);
    assert!(h.take_events().contains(&Event::Delivered(a)));
}

// ----- splitting -----------------------------------------------------------------------------

/// All telemetry data (device, ts, key, value) in `packets`, in order.
fn gateway_data(packets: &[Packet]) -> Vec<(String, Option<i64>, String, Value)> {
    let mut data = Vec::new();
    for p in publishes(packets) {
        let t = GatewayTelemetry::parse(&p.payload).unwrap();
        for (d, entries) in t.devices {
            for e in entries {
                for (k, v) in e.values {
                    data.push((d.clone(), e.ts, k, v));
                }
            }
        }
    }
    data
}

#[test]
fn telemetry_over_the_packet_limit_is_split_and_reported_once() {
    let mut h = Harness::new(split_config(200));
    h.connect();
    let values: Map<String, Value> = (0..30)
        .map(|i| (format!("key{i:02}"), json!(i * 1000)))
        .collect();
    let entries = vec![
        TelemetryEntry::at(1_700_000_000_000, values.clone()),
        TelemetryEntry::at(1_700_000_001_000, values.clone()),
    ];
    let id = h
        .conn
        .command(
            h.now,
            Command::Gateway(gateway_proto::GatewayCommand::Telemetry {
                device: "Dev".into(),
                entries: entries.clone(),
            }),
        )
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let parts = publishes(&sent);
    assert!(parts.len() > 2, "{}", parts.len());
    for p in &parts {
        // Remaining length: 2 + topic + 2 (packet id) + 1 (v5 properties) + payload.
        assert!(2 + p.topic.len() + 2 + 1 + p.payload.len() <= 200);
    }
    let mut expected = Vec::new();
    for e in &entries {
        for (k, v) in &e.values {
            expected.push(("Dev".to_owned(), e.ts, k.clone(), v.clone()));
        }
    }
    assert_eq!(gateway_data(&sent), expected);
    assert_eq!(h.conn.stats().split_requests, 1);
    // Acknowledge all but the last: no outcome yet.
    for p in &parts[..parts.len() - 1] {
        puback(&mut h, p.pkid, 0);
    }
    assert!(h.take_events().is_empty());
    puback(&mut h, parts.last().unwrap().pkid, 0);
    assert_eq!(h.take_events(), vec![Event::Delivered(id)]);
    assert_eq!(h.conn.stats().split_requests, 0);

    // A part refused: the command fails once, saying how many parts got through.
    let id = h
        .conn
        .command(h.now, Command::device_telemetry("Dev", values))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let parts = publishes(&sent);
    let n = parts.len();
    puback(&mut h, parts[1].pkid, 0x99);
    for p in parts.iter().filter(|p| p.pkid != parts[1].pkid) {
        puback(&mut h, p.pkid, 0);
    }
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: id,
            error: RequestError::Partial {
                delivered: n - 1,
                parts: n,
                error: Box::new(RequestError::Rejected(ReasonCode::PayloadFormatInvalid)),
            }
        }]
    );
}

#[test]
fn a_value_that_cannot_fit_alone_is_refused_before_anything_is_sent() {
    let mut h = Harness::new(split_config(200));
    h.connect();
    let values = map(json!({"small": 1, "big": "x".repeat(300)}));
    let err = h
        .conn
        .command(h.now, Command::device_telemetry("Dev", values.clone()))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CommandError::ValueTooLarge { device: Some(d), key: Some(k), max: 200, size }
                if d == "Dev" && k == "big" && *size > 200
        ),
        "{err:?}"
    );
    assert!(!err.to_string().is_empty());
    assert!(publishes(&h.client_packets()).is_empty());
    assert_eq!(h.conn.stats().unfinished_requests, 0);
    // Without splitting the whole message is simply too large.
    let mut c = split_config(200);
    c.limits.split = false;
    let mut h = Harness::new(c);
    assert!(matches!(
        h.conn
            .command(h.now, Command::device_telemetry("Dev", values)),
        Err(CommandError::TooLarge { .. })
    ));
}

#[test]
fn the_data_point_limit_splits_seven_points_into_three_three_one() {
    let mut c = limits_config(Role::Gateway);
    c.max_inflight = 100;
    let mut h = Harness::new(c);
    connect_with_limits(&mut h, &limits_json("3:1", "100:1"));
    h.take_events();
    let values = map(json!({"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}));
    let id = h
        .conn
        .command(h.now, Command::device_telemetry("D", values))
        .unwrap();
    let mut counts = Vec::new();
    let mut delivered = false;
    for _ in 0..5 {
        let sent = h.client_packets();
        for p in publishes(&sent) {
            let t = GatewayTelemetry::parse(&p.payload).unwrap();
            counts.push(t.devices["D"][0].values.len());
        }
        acks_all(&mut h, &sent);
        delivered |= h.take_events().contains(&Event::Delivered(id));
        if delivered {
            break;
        }
        h.advance_to_timeout();
    }
    assert_eq!(counts, [3, 3, 1]);
    assert!(delivered);
}

#[test]
fn device_telemetry_and_attributes_split_too() {
    let mut c = split_config(150);
    c.role = Role::Device;
    let mut h = Harness::new(c);
    h.connect();
    let values: Map<String, Value> = (0..20).map(|i| (format!("k{i}"), json!(i))).collect();
    h.conn
        .command(
            h.now,
            Command::Device(gateway_proto::DeviceCommand::Telemetry(vec![
                TelemetryEntry::at(5, values.clone()),
                TelemetryEntry::now(values.clone()),
            ])),
        )
        .unwrap();
    h.conn
        .command(h.now, Command::attributes(values.clone()))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let mut telemetry = 0;
    let mut attributes = Map::new();
    for p in publishes(&sent) {
        assert!(2 + p.topic.len() + 3 + p.payload.len() <= 150);
        if p.topic == "v1/devices/me/telemetry" {
            telemetry += DeviceTelemetry::parse(&p.payload)
                .unwrap()
                .entries
                .iter()
                .map(|e| e.values.len())
                .sum::<usize>();
        } else {
            attributes.extend(map(serde_json::from_slice(&p.payload).unwrap()));
        }
    }
    assert_eq!(telemetry, 40);
    assert_eq!(attributes, values);
}

// ----- topic families and raw payloads ----------------------------------------------------------

fn family_config(family: TopicFamily) -> Config {
    let mut c = config(V5);
    c.role = Role::Device;
    c.subscribe_api = true;
    c.device_topics = family;
    c.limits = LimitsConfig::disabled();
    c
}

/// Connects; returns the filters of the SUBSCRIBE (answered) and the packets after it.
fn subscribed(h: &mut Harness) -> (Vec<String>, Vec<Packet>) {
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    let packets = h.client_packets();
    let Some(Packet::Subscribe(s)) = packets.first() else {
        panic!("{packets:?}");
    };
    let filters = s.filters.iter().map(|(f, _)| f.clone()).collect();
    let codes = s.filters.iter().map(|_| 1).collect();
    let rest = packets[1..].to_vec();
    h.send(Packet::SubAck(wire::SubAck {
        pkid: s.pkid,
        codes,
    }));
    (filters, rest)
}

#[test]
fn subscriptions_and_uplinks_follow_the_topic_family() {
    for (family, sfx) in [
        (TopicFamily::V1, None),
        (TopicFamily::V2, Some("")),
        (TopicFamily::V2Json, Some("/j")),
    ] {
        let mut h = Harness::new(family_config(family));
        let (filters, _) = subscribed(&mut h);
        h.take_events();
        let expected: Vec<String> = match sfx {
            None => vec![
                "v1/devices/me/attributes".into(),
                "v1/devices/me/attributes/response/+".into(),
                "v1/devices/me/rpc/request/+".into(),
                "v1/devices/me/rpc/response/+".into(),
            ],
            Some(s) => vec![
                format!("v2/a{s}"),
                format!("v2/a/res{s}/+"),
                format!("v2/r/req{s}/+"),
                format!("v2/r/res{s}/+"),
            ],
        };
        assert_eq!(filters, expected, "{family:?}");
        h.conn
            .command(h.now, Command::telemetry(map(json!({"t": 1}))))
            .unwrap();
        h.conn
            .command(h.now, Command::attributes(map(json!({"a": 1}))))
            .unwrap();
        let r = h
            .conn
            .command(h.now, Command::request_attributes(["a"], ["b"]))
            .unwrap();
        let rpc = h
            .conn
            .command(h.now, Command::rpc("getTime", json!({})))
            .unwrap();
        h.drain();
        let sent = h.client_packets();
        let topics: Vec<String> = publishes(&sent).iter().map(|p| p.topic.clone()).collect();
        let (req_id, rpc_id) = (
            topics[2].rsplit('/').next().unwrap().to_owned(),
            topics[3].rsplit('/').next().unwrap().to_owned(),
        );
        let expected: Vec<String> = match sfx {
            None => vec![
                "v1/devices/me/telemetry".into(),
                "v1/devices/me/attributes".into(),
                format!("v1/devices/me/attributes/request/{req_id}"),
                format!("v1/devices/me/rpc/request/{rpc_id}"),
            ],
            Some(s) => vec![
                format!("v2/t{s}"),
                format!("v2/a{s}"),
                format!("v2/a/req{s}/{req_id}"),
                format!("v2/r/req{s}/{rpc_id}"),
            ],
        };
        assert_eq!(topics, expected, "{family:?}");
        acks_all(&mut h, &sent);
        h.take_events();
        // Answers on the family's topics complete the requests; a server RPC is replied to
        // on the family it came on.
        let (res, rpc_res, rpc_req) = match sfx {
            None => (
                format!("v1/devices/me/attributes/response/{req_id}"),
                format!("v1/devices/me/rpc/response/{rpc_id}"),
                "v1/devices/me/rpc/request/4".to_owned(),
            ),
            Some(s) => (
                format!("v2/a/res{s}/{req_id}"),
                format!("v2/r/res{s}/{rpc_id}"),
                format!("v2/r/req{s}/4"),
            ),
        };
        h.send(server_publish(&res, r#"{"client":{"a":1}}"#, None));
        h.send(server_publish(&rpc_res, r#"{"time":1}"#, None));
        h.send(server_publish(
            &rpc_req,
            r#"{"method":"m","params":{}}"#,
            None,
        ));
        let events = h.take_events();
        assert!(events.iter().any(|e| e.request() == Some(r)), "{events:?}");
        assert!(
            events.iter().any(|e| e.request() == Some(rpc)),
            "{events:?}"
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::RpcRequest { id: 4, .. })));
        h.conn
            .command(h.now, Command::rpc_reply(4, json!("ok")))
            .unwrap();
        h.drain();
        let sent = h.client_packets();
        let expected = match sfx {
            None => "v1/devices/me/rpc/response/4".to_owned(),
            Some(s) => format!("v2/r/res{s}/4"),
        };
        assert_eq!(publishes(&sent)[0].topic, expected);
    }
}

#[test]
fn on_v2_topics_session_limits_are_still_asked_and_answered_on_v1() {
    let mut c = family_config(TopicFamily::V2);
    c.limits = LimitsConfig::default();
    let mut h = Harness::new(c);
    let (filters, rest) = subscribed(&mut h);
    assert!(filters.contains(&"v1/devices/me/rpc/response/+".to_owned()));
    let (pkid, id) = limits_request(&rest);
    puback(&mut h, pkid, 0);
    h.send(server_publish(
        &format!("v1/devices/me/rpc/response/{id}"),
        limits_json("1000:1", "100:1"),
        None,
    ));
    assert!(matches!(
        h.take_events().last(),
        Some(Event::SessionLimits(LimitsReport::Applied(_)))
    ));
}

#[test]
fn protobuf_topics_take_and_yield_bytes() {
    let mut h = Harness::new(family_config(TopicFamily::V2Proto));
    let (filters, _) = subscribed(&mut h);
    assert_eq!(
        filters,
        ["v2/a/p", "v2/a/res/p/+", "v2/r/req/p/+", "v2/r/res/p/+"]
    );
    h.take_events();
    // JSON commands cannot go to /p topics.
    assert_eq!(
        h.conn
            .command(h.now, Command::telemetry(map(json!({"t": 1})))),
        Err(CommandError::JsonOnProtobufTopic)
    );
    let bytes = Bytes::from_static(&[0x08, 0x96, 0x01]);
    let t = h
        .conn
        .command(h.now, Command::telemetry_bytes(bytes.clone(), 1))
        .unwrap();
    let a = h
        .conn
        .command(h.now, Command::attributes_bytes(&b"\x0a\x01x"[..], 1))
        .unwrap();
    let r = h
        .conn
        .command(h.now, Command::request_attributes_bytes(&b"\x0a\x01a"[..]))
        .unwrap();
    let rpc = h
        .conn
        .command(h.now, Command::rpc_bytes(&b"\x0a\x01m"[..]))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let p = publishes(&sent);
    assert_eq!(p[0].topic, "v2/t/p");
    assert_eq!(p[0].payload, bytes);
    assert_eq!(p[1].topic, "v2/a/p");
    assert!(p[2].topic.starts_with("v2/a/req/p/"));
    assert!(p[3].topic.starts_with("v2/r/req/p/"));
    let req_id = p[2].topic.rsplit('/').next().unwrap().to_owned();
    let rpc_id = p[3].topic.rsplit('/').next().unwrap().to_owned();
    acks_all(&mut h, &sent);
    assert_eq!(
        h.take_events(),
        vec![Event::Delivered(t), Event::Delivered(a)]
    );
    // Answers are bytes, and they are the requests' outcomes.
    h.send(server_publish(
        &format!("v2/a/res/p/{req_id}"),
        &b"\x01"[..],
        None,
    ));
    h.send(server_publish(
        &format!("v2/r/res/p/{rpc_id}"),
        &b"\x02"[..],
        None,
    ));
    assert_eq!(
        h.take_events(),
        vec![
            Event::Raw(RawDownlink::AttributeResponse {
                request: r,
                payload: Bytes::from_static(b"\x01")
            }),
            Event::Raw(RawDownlink::RpcResponse {
                request: rpc,
                payload: Bytes::from_static(b"\x02")
            }),
        ]
    );
    // Downlinks on /p are bytes; a server RPC is replied to with bytes on /p.
    h.send(server_publish("v2/a/p", &b"\x03"[..], None));
    h.send(server_publish("v2/r/req/p/5", &b"\x04"[..], None));
    assert_eq!(
        h.take_events(),
        vec![
            Event::Raw(RawDownlink::AttributeUpdate(Bytes::from_static(b"\x03"))),
            Event::Raw(RawDownlink::RpcRequest {
                id: 5,
                payload: Bytes::from_static(b"\x04")
            }),
        ]
    );
    assert_eq!(
        h.conn.command(h.now, Command::rpc_reply(5, json!("ok"))),
        Err(CommandError::JsonOnProtobufTopic)
    );
    h.conn
        .command(h.now, Command::rpc_reply_bytes(5, &b"\x05"[..]))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    assert_eq!(publishes(&sent)[0].topic, "v2/r/res/p/5");
    // JSON downlinks on other families are still understood.
    h.send(server_publish(
        "v1/devices/me/attributes",
        r#"{"x":1}"#,
        None,
    ));
    assert!(matches!(
        h.take_events().as_slice(),
        [Event::AttributeUpdate { device: None, .. }]
    ));
    // A late raw answer is a warning, not an outcome.
    h.send(server_publish(
        &format!("v2/a/res/p/{req_id}"),
        &b"\x01"[..],
        None,
    ));
    assert!(matches!(
        h.take_events().as_slice(),
        [Event::Warning(
            gateway_proto::Warning::UnmatchedResponse { .. }
        )]
    ));
}

#[test]
fn raw_requests_get_raw_answers_on_any_family() {
    // A device whose profile is protobuf on the v1 topics.
    let mut h = Harness::new(family_config(TopicFamily::V1));
    subscribed(&mut h);
    let r = h
        .conn
        .command(h.now, Command::request_attributes_bytes(&b"\x0a"[..]))
        .unwrap();
    h.drain();
    let sent = h.client_packets();
    let p = publishes(&sent);
    assert!(p[0].topic.starts_with("v1/devices/me/attributes/request/"));
    let id = p[0].topic.rsplit('/').next().unwrap().to_owned();
    h.take_events();
    h.send(server_publish(
        &format!("v1/devices/me/attributes/response/{id}"),
        &b"\xff"[..],
        None,
    ));
    assert_eq!(
        h.take_events(),
        vec![Event::Raw(RawDownlink::AttributeResponse {
            request: r,
            payload: Bytes::from_static(b"\xff")
        })]
    );
}

// ----- with OTA ----------------------------------------------------------------------------

#[test]
fn ota_requests_wait_for_the_limits_and_chunks_fit_the_servers_payload_limit() {
    let mut c = limits_config(Role::Device);
    c.subscribe_api = true;
    let mut ota = OtaConfig::new();
    ota.software = false;
    ota.auto_download = true;
    assert!(
        ota.chunk_size > 2048,
        "the default chunk is above the answer's limit"
    );
    c.ota = Some(ota);
    let mut h = Harness::new(c);
    // `connect_with_limits` checks that only the request goes before the answer: the OTA
    // attribute request is held like queued data.
    let after = connect_with_limits(&mut h, &limits_json("1000:1", "100:1"));
    let info = publishes(&after)
        .into_iter()
        .find(|p| p.topic.starts_with("v1/devices/me/attributes/request/"))
        .expect("the OTA attribute request once the limits are known");
    puback(&mut h, info.pkid, 0);
    let id: u64 = info.topic.rsplit('/').next().unwrap().parse().unwrap();
    let image = vec![7u8; 5000];
    let algorithm = ChecksumAlgorithm::Sha256;
    let shared = json!({
        "fw_title": "cam-fw",
        "fw_version": "2.0",
        "fw_size": image.len(),
        "fw_checksum_algorithm": algorithm.as_str(),
        "fw_checksum": algorithm.checksum(&image),
    });
    h.send(server_publish(
        &format!("v1/devices/me/attributes/response/{id}"),
        json!({ "shared": shared }).to_string(),
        Some(901),
    ));
    let sent = h.client_packets();
    let chunk = publishes(&sent)
        .into_iter()
        .find(|p| p.topic.starts_with("v2/fw/request/"))
        .expect("a chunk request");
    assert!(chunk.topic.ends_with("/chunk/0"), "{}", chunk.topic);
    assert_eq!(
        &chunk.payload[..],
        b"2048",
        "ThingsBoard refuses a chunk above its maxPayloadSize (PAYLOAD_TOO_LARGE)"
    );
}
