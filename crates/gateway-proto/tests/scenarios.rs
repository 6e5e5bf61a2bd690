//! Scenario tests: a `Connection` against a scripted broker on a virtual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, publishes, server_publish, Harness};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    Command, CommandError, Config, ConnectRefusal, Credentials, DisconnectReason, Event, Input,
    ProtocolError, QoS, ReasonCode, RequestError, RequestId, State, Subscription, Warning,
};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn publish(h: &mut Harness, topic: &str, payload: &'static [u8], qos: QoS) -> RequestId {
    let id = h
        .conn
        .command(
            h.now,
            Command::Publish {
                topic: topic.into(),
                payload: Bytes::from_static(payload),
                qos,
            },
        )
        .expect("command accepted");
    h.drain();
    id
}

fn puback(h: &mut Harness, pkid: u16, code: u8) {
    h.send(Packet::PubAck(wire::PubAck { pkid, code }));
}

fn disconnected_reason(events: &[Event]) -> Vec<DisconnectReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

// ----- CONNECT ----------------------------------------------------------------------------

#[test]
fn connect_carries_the_access_token_as_username_without_password() {
    for version in [V3, V5] {
        let mut h = Harness::new(config(version));
        assert!(h.open_requested, "first output asks for a transport");
        assert_eq!(h.conn.state(), State::Connecting);
        h.open();
        let packets = h.client_packets();
        assert_eq!(
            packets,
            vec![Packet::Connect(wire::Connect {
                client_id: "gw-1".into(),
                keep_alive: 60,
                clean_session: true,
                username: Some("TOKEN".into()),
                password: None,
            })]
        );
    }
}

#[test]
fn basic_and_x509_credentials_shape_the_connect() {
    let mut c = config(V5);
    c.credentials = Credentials::Basic {
        username: Some("user".into()),
        password: Some("pw".into()),
    };
    let mut h = Harness::new(c);
    h.open();
    match &h.client_packets()[..] {
        [Packet::Connect(c)] => {
            assert_eq!(c.client_id, "gw-1");
            assert_eq!(c.username.as_deref(), Some("user"));
            assert_eq!(c.password.as_deref(), Some("pw"));
        }
        other => panic!("{other:?}"),
    }
    let mut c = config(V3);
    c.credentials = Credentials::X509;
    let mut h = Harness::new(c);
    h.open();
    match &h.client_packets()[..] {
        [Packet::Connect(c)] => {
            assert_eq!(c.username, None);
            assert_eq!(c.password, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nothing_but_connect_goes_out_before_connack_then_queued_publishes_follow() {
    let mut c = config(V5);
    c.subscriptions = vec![Subscription::new(
        "v1/devices/me/rpc/request/+",
        QoS::AtLeastOnce,
    )];
    let mut h = Harness::new(c);
    let a = publish(
        &mut h,
        "v1/devices/me/telemetry",
        b"{\"a\":1}",
        QoS::AtLeastOnce,
    );
    let b = publish(
        &mut h,
        "v1/devices/me/telemetry",
        b"{\"b\":2}",
        QoS::AtMostOnce,
    );
    h.open();
    assert!(matches!(h.client_packets()[..], [Packet::Connect(_)]));
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    let packets = h.client_packets();
    // SUBSCRIBE first, then the queued publishes in command order.
    match &packets[..] {
        [Packet::Subscribe(s), Packet::Publish(p1), Packet::Publish(p2)] => {
            assert_eq!(
                s.filters,
                vec![(
                    "v1/devices/me/rpc/request/+".to_string(),
                    wire::QoS::AtLeastOnce
                )]
            );
            assert_eq!(&p1.payload[..], b"{\"a\":1}");
            assert_eq!(p1.qos, wire::QoS::AtLeastOnce);
            assert!(!p1.dup);
            assert_eq!(&p2.payload[..], b"{\"b\":2}");
            assert_eq!(p2.qos, wire::QoS::AtMostOnce);
        }
        other => panic!("{other:?}"),
    }
    let events = h.take_events();
    assert_eq!(
        events[0],
        Event::Connected {
            session_present: false
        }
    );
    assert!(events.contains(&Event::Sent(b)));
    assert!(!events.contains(&Event::Delivered(a)), "no PUBACK yet");
    assert_eq!(h.conn.state(), State::Connected);
}

// ----- CONNACK refusals -------------------------------------------------------------------

#[test]
fn bad_token_on_v311_is_refusal_5_and_backs_off_for_the_refused_delay() {
    let mut h = Harness::new(config(V3));
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 5,
    }));
    let events = h.take_events();
    let reasons = disconnected_reason(&events);
    let DisconnectReason::Refused(refusal) = &reasons[0] else {
        panic!("{events:?}")
    };
    assert_eq!(refusal.reason, ReasonCode::NotAuthorized);
    assert_eq!(refusal.raw, 5);
    assert!(refusal.is_permanent());
    assert_eq!(h.closed_by_client, 1);
    assert!(!h.open_requested);
    // It must not spin: the next attempt waits at least `refused_delay` (60 s).
    let waited = h.advance_to_timeout();
    assert!(waited >= Duration::from_secs(60), "waited {waited:?}");
    assert!(h.open_requested);
    // Refused again: still at least 60 s, and still an event each time.
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 5,
    }));
    assert_eq!(disconnected_reason(&h.take_events()).len(), 1);
    assert!(h.advance_to_timeout() >= Duration::from_secs(60));
}

#[test]
fn v5_refusal_followed_by_disconnect_yields_one_typed_event() {
    let mut h = Harness::new(config(V5));
    h.open();
    h.client_packets();
    // ThingsBoard: CONNACK 0x86 then DISCONNECT 0x86, in one read; sessionPresent set anyway.
    let mut bytes = h
        .encode(&Packet::ConnAck(wire::ConnAck {
            session_present: true,
            code: 0x86,
        }))
        .to_vec();
    bytes.extend_from_slice(&h.encode(&Packet::Disconnect(wire::Disconnect { code: 0x86 })));
    h.send_bytes(&bytes);
    let events = h.take_events();
    assert_eq!(events.len(), 1, "{events:?}");
    match &events[0] {
        Event::Disconnected {
            reason: DisconnectReason::Refused(r),
            reconnect_at: Some(at),
        } => {
            assert_eq!(r.reason, ReasonCode::BadUserNameOrPassword);
            assert!(*at >= h.now + Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn transient_refusal_retries_on_the_normal_backoff() {
    let mut h = Harness::new(config(V5));
    for expected in [1, 2, 4] {
        h.open();
        h.client_packets();
        h.send(Packet::ConnAck(wire::ConnAck {
            session_present: false,
            code: 0x88,
        }));
        let reasons = disconnected_reason(&h.take_events());
        assert_eq!(reasons, vec![DisconnectReason::Refused(refused(V5, 0x88))]);
        assert_eq!(h.advance_to_timeout(), Duration::from_secs(expected));
    }
}

fn refused(version: ProtocolVersion, code: u8) -> ConnectRefusal {
    // Build the expected refusal through a real connection so the test does not depend on
    // private constructors.
    let mut h = Harness::new(config(version));
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code,
    }));
    match disconnected_reason(&h.take_events()).pop() {
        Some(DisconnectReason::Refused(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_connack_in_time_is_a_typed_timeout() {
    let mut h = Harness::new(config(V3));
    h.open();
    h.client_packets();
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(15));
    assert_eq!(
        disconnected_reason(&h.take_events()),
        vec![DisconnectReason::ConnectTimeout]
    );
    assert_eq!(h.closed_by_client, 1);
    // A transport that never opens times out the same way.
    h.advance_to_timeout();
    assert!(h.open_requested);
    h.advance_to_timeout();
    assert_eq!(
        disconnected_reason(&h.take_events()),
        vec![DisconnectReason::ConnectTimeout]
    );
}

// ----- keep-alive -------------------------------------------------------------------------

#[test]
fn keep_alive_pings_when_idle_and_reconnects_without_pingresp() {
    let mut h = Harness::new(config(V3));
    h.connect();
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(60));
    assert_eq!(h.client_packets(), vec![Packet::PingReq]);
    h.advance(Duration::from_secs(5));
    h.send(Packet::PingResp);
    // Next ping 60 s after the PINGREQ (the last thing sent).
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(55));
    assert_eq!(h.client_packets(), vec![Packet::PingReq]);
    // No PINGRESP: dead link after ping_timeout.
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(20));
    assert_eq!(
        disconnected_reason(&h.take_events()),
        vec![DisconnectReason::PingTimeout]
    );
    assert_eq!(h.closed_by_client, 1);
    assert!(matches!(h.conn.state(), State::WaitingToReconnect(_)));
}

#[test]
fn traffic_postpones_the_ping() {
    let mut h = Harness::new(config(V3));
    h.connect();
    h.advance(Duration::from_secs(50));
    publish(&mut h, "t", b"1", QoS::AtLeastOnce);
    let p = publishes(&h.client_packets())[0].pkid;
    puback(&mut h, p, 0);
    // Sent and received at t=50: next ping at t=110.
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(60));
    assert_eq!(h.client_packets(), vec![Packet::PingReq]);
}

#[test]
fn a_silent_server_is_pinged_even_while_the_client_keeps_sending() {
    // QoS 0 traffic gets no answer: a half-open link would go unnoticed if only the client's
    // own sends counted as activity.
    let mut h = Harness::new(config(V3));
    h.connect();
    for _ in 0..2 {
        h.advance(Duration::from_secs(25));
        publish(&mut h, "t", b"x", QoS::AtMostOnce);
        assert_eq!(publishes(&h.client_packets()).len(), 1);
    }
    // 60 s after the CONNACK, the last thing received.
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(10));
    assert_eq!(h.client_packets(), vec![Packet::PingReq]);
}

#[test]
fn zero_keep_alive_never_pings() {
    let mut c = config(V3);
    c.keep_alive = Duration::ZERO;
    c.publish_timeout = None;
    c.sub_device_keepalive = None;
    let mut h = Harness::new(c);
    h.connect();
    assert_eq!(h.conn.poll_timeout(), None);
}

// ----- QoS 1 outcomes ---------------------------------------------------------------------

#[test]
fn every_qos1_publish_gets_exactly_one_outcome_and_duplicate_pubacks_are_harmless() {
    let mut h = Harness::new(config(V3));
    h.connect();
    let ids: Vec<RequestId> = (0..3)
        .map(|_| publish(&mut h, "v1/gateway/telemetry", b"{}", QoS::AtLeastOnce))
        .collect();
    let pkids: Vec<u16> = publishes(&h.client_packets())
        .iter()
        .map(|p| p.pkid)
        .collect();
    assert_eq!(pkids.len(), 3);
    for &p in &pkids {
        // Older ThingsBoard sends one PUBACK per device entry: three for one publish.
        puback(&mut h, p, 0);
        puback(&mut h, p, 0);
        puback(&mut h, p, 0);
    }
    let delivered: Vec<_> = h
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::Delivered(_)))
        .collect();
    assert_eq!(
        delivered,
        ids.iter().map(|&i| Event::Delivered(i)).collect::<Vec<_>>()
    );
    assert_eq!(h.conn.state(), State::Connected);
    assert_eq!(h.conn.stats().unexpected_acks, 6);
    assert_eq!(h.conn.stats().buffered_bytes, 0);
}

#[test]
fn v5_puback_failure_codes_fail_the_request_with_the_typed_reason() {
    let mut h = Harness::new(config(V5));
    h.connect();
    let cases = [
        (0x97, ReasonCode::QuotaExceeded),
        (0x99, ReasonCode::PayloadFormatInvalid),
        (0x90, ReasonCode::TopicNameInvalid),
        (0x83, ReasonCode::ImplementationSpecificError),
        (0x80, ReasonCode::UnspecifiedError),
    ];
    for (code, reason) in cases {
        let id = publish(
            &mut h,
            "v1/gateway/connect",
            b"{\"device\":\"D\"}",
            QoS::AtLeastOnce,
        );
        let p = publishes(&h.client_packets())[0].pkid;
        puback(&mut h, p, code);
        assert_eq!(
            h.take_events(),
            vec![Event::Failed {
                request: id,
                error: RequestError::Rejected(reason)
            }]
        );
    }
    // 0x10 (no matching subscribers) is a success.
    let id = publish(&mut h, "t", b"x", QoS::AtLeastOnce);
    let p = publishes(&h.client_packets())[0].pkid;
    puback(&mut h, p, 0x10);
    assert_eq!(h.take_events(), vec![Event::Delivered(id)]);
}

#[test]
fn inflight_window_holds_back_the_rest_until_pubacks_arrive() {
    let mut c = config(V3);
    c.max_inflight = 100;
    let mut h = Harness::new(c);
    h.connect();
    for _ in 0..150 {
        publish(&mut h, "t", b"x", QoS::AtLeastOnce);
    }
    let first = h.client_packets();
    assert_eq!(publishes(&first).len(), 100);
    assert_eq!(h.conn.stats().inflight, 100);
    let mut pkids: Vec<u16> = publishes(&first).iter().map(|p| p.pkid).collect();
    pkids.sort_unstable();
    pkids.dedup();
    assert_eq!(pkids.len(), 100, "packet ids unique");
    assert!(!pkids.contains(&0));
    for p in &pkids[..30] {
        puback(&mut h, *p, 0);
    }
    assert_eq!(publishes(&h.client_packets()).len(), 30);
    assert_eq!(h.conn.stats().inflight, 100);
}

#[test]
fn packet_ids_wrap_past_65535_without_zero_or_reuse() {
    let mut c = config(V3);
    c.max_inflight = 1;
    c.keep_alive = Duration::ZERO;
    let mut h = Harness::new(c);
    h.connect();
    let mut last = 0u16;
    let mut wrapped = false;
    for _ in 0..70_000u32 {
        publish(&mut h, "t", b"x", QoS::AtLeastOnce);
        let p = publishes(&h.client_packets())[0].pkid;
        assert_ne!(p, 0);
        if p < last {
            wrapped = true;
        }
        last = p;
        puback(&mut h, p, 0);
        h.events.clear();
    }
    assert!(wrapped);
}

#[test]
fn timeout_is_never_reported_as_success_and_late_puback_is_ignored() {
    let mut c = config(V5);
    c.publish_timeout = Some(Duration::from_secs(10));
    c.keep_alive = Duration::ZERO;
    c.max_inflight = 1;
    let mut h = Harness::new(c);
    h.connect();
    let id = publish(&mut h, "t", b"x", QoS::AtLeastOnce);
    let p = publishes(&h.client_packets())[0].pkid;
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(10));
    assert_eq!(
        h.take_events(),
        vec![Event::Failed {
            request: id,
            error: RequestError::Timeout
        }]
    );
    // The packet id stays reserved (and holds its window slot) until the late PUBACK: with a
    // window of 1 the next publish waits, so the late PUBACK cannot complete it.
    let id2 = publish(&mut h, "t", b"y", QoS::AtLeastOnce);
    assert!(
        publishes(&h.client_packets()).is_empty(),
        "window held by the tombstone"
    );
    puback(&mut h, p, 0);
    assert!(h.take_events().is_empty(), "late PUBACK completes nothing");
    assert_eq!(h.conn.stats().late_acks, 1);
    let p2 = publishes(&h.client_packets())[0].pkid;
    puback(&mut h, p2, 0);
    assert_eq!(h.take_events(), vec![Event::Delivered(id2)]);
}

#[test]
fn queued_publishes_time_out_while_disconnected() {
    let mut c = config(V3);
    c.publish_timeout = Some(Duration::from_secs(30));
    let mut h = Harness::new(c);
    let id = publish(&mut h, "t", b"x", QoS::AtLeastOnce);
    // Never connects: the transport keeps failing.
    for _ in 0..10 {
        if h.open_requested {
            h.open_requested = false;
            h.input(Input::TransportClosed);
        }
        h.advance_to_timeout();
        if h.events.iter().any(|e| matches!(e, Event::Failed { .. })) {
            break;
        }
    }
    let failed: Vec<_> = h
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert_eq!(
        failed,
        vec![Event::Failed {
            request: id,
            error: RequestError::Timeout
        }]
    );
}

// ----- reconnect --------------------------------------------------------------------------

#[test]
fn reconnect_resubscribes_and_retransmits_unacked_publishes_with_dup_in_order() {
    let mut c = config(V5);
    c.subscriptions = vec![
        Subscription::new("v1/devices/me/attributes", QoS::AtLeastOnce),
        Subscription::new("v1/devices/me/rpc/request/+", QoS::AtLeastOnce),
    ];
    let mut h = Harness::new(c);
    h.connect();
    let ids: Vec<RequestId> = (0..4)
        .map(|i| {
            let payload: &'static [u8] = [b"0", b"1", b"2", b"3"][i];
            publish(&mut h, "v1/devices/me/telemetry", payload, QoS::AtLeastOnce)
        })
        .collect();
    let first = h.client_packets();
    // The first one is acknowledged, the others are lost with the connection.
    puback(&mut h, publishes(&first)[0].pkid, 0);
    h.drop_transport();
    let events = h.take_events();
    assert_eq!(events[0], Event::Delivered(ids[0]));
    assert_eq!(
        disconnected_reason(&events),
        vec![DisconnectReason::TransportClosed]
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Failed { .. })));
    // Backoff, then a new transport.
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(1));
    h.open();
    assert!(matches!(h.client_packets()[..], [Packet::Connect(_)]));
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    let again = h.client_packets();
    match &again[0] {
        Packet::Subscribe(s) => assert_eq!(s.filters.len(), 2),
        other => panic!("expected SUBSCRIBE first, got {other:?}"),
    }
    let resent = publishes(&again);
    let payloads: Vec<&[u8]> = resent.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [b"1", b"2", b"3"]);
    assert!(resent.iter().all(|p| p.dup));
    for p in resent.iter().map(|p| p.pkid).collect::<Vec<_>>() {
        puback(&mut h, p, 0);
    }
    let delivered: Vec<_> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, ids[1..]);
    assert_eq!(h.conn.stats().retransmitted, 3);
}

#[test]
fn a_message_that_keeps_killing_the_connection_fails_after_max_attempts() {
    let mut c = config(V3);
    c.max_publish_attempts = 2;
    let mut h = Harness::new(c);
    h.connect();
    let id = publish(&mut h, "t", b"poison", QoS::AtLeastOnce);
    assert_eq!(publishes(&h.client_packets()).len(), 1);
    h.drop_transport();
    h.advance_to_timeout();
    assert_eq!(publishes(&h.connect()).len(), 1, "second attempt");
    h.drop_transport();
    let failed: Vec<_> = h
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert_eq!(
        failed,
        vec![Event::Failed {
            request: id,
            error: RequestError::ConnectionLost
        }]
    );
    h.advance_to_timeout();
    assert!(publishes(&h.connect()).is_empty(), "not sent a third time");
}

#[test]
fn backoff_grows_and_resets_after_a_stable_session() {
    let mut h = Harness::new(config(V3));
    let mut waits = Vec::new();
    for _ in 0..4 {
        h.connect();
        h.drop_transport();
        waits.push(h.advance_to_timeout());
    }
    assert_eq!(
        waits,
        [1, 2, 4, 8].map(Duration::from_secs),
        "a session that ends at once does not reset the backoff"
    );
    h.connect();
    h.advance(Duration::from_secs(31));
    h.drop_transport();
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(1));
}

#[test]
fn reconnects_replay_exactly_from_the_seed() {
    fn waits(seed: u64) -> Vec<Duration> {
        let mut c = config(V3);
        c.reconnect.jitter_percent = 50;
        c.reconnect.seed = seed;
        let mut h = Harness::new(c);
        (0..6)
            .map(|_| {
                h.connect();
                h.drop_transport();
                h.advance_to_timeout()
            })
            .collect()
    }
    assert_eq!(waits(42), waits(42));
    assert_ne!(waits(42), waits(43));
}

// ----- server DISCONNECT and bad input ----------------------------------------------------

#[test]
fn v5_server_disconnect_reason_codes_are_typed() {
    for (code, reason) in [
        (0x8E, ReasonCode::SessionTakenOver),
        (0x83, ReasonCode::ImplementationSpecificError),
        (0x97, ReasonCode::QuotaExceeded),
        (0x98, ReasonCode::AdministrativeAction),
        (0x81, ReasonCode::MalformedPacket),
        (0xA0, ReasonCode::MaximumConnectTime),
    ] {
        let mut h = Harness::new(config(V5));
        h.connect();
        h.take_events();
        h.send(Packet::Disconnect(wire::Disconnect { code }));
        assert_eq!(
            disconnected_reason(&h.take_events()),
            vec![DisconnectReason::ServerDisconnect(reason)]
        );
        assert_eq!(h.closed_by_client, 1);
        assert!(matches!(h.conn.state(), State::WaitingToReconnect(_)));
    }
}

#[test]
fn netty_short_disconnect_forms_are_understood() {
    // E0 00 (normal, no reason byte) and E0 01 8E (reason only).
    for (bytes, reason) in [
        (&[0xE0u8, 0x00][..], ReasonCode::Success),
        (&[0xE0, 0x01, 0x8E][..], ReasonCode::SessionTakenOver),
    ] {
        let mut h = Harness::new(config(V5));
        h.connect();
        h.take_events();
        h.send_bytes(bytes);
        assert_eq!(
            disconnected_reason(&h.take_events()),
            vec![DisconnectReason::ServerDisconnect(reason)]
        );
    }
}

#[test]
fn malformed_packet_ends_the_session_with_disconnect_0x81_on_v5() {
    let mut h = Harness::new(config(V5));
    h.connect();
    h.take_events();
    // A PUBACK whose remaining length says 1: too short for a packet id.
    h.send_bytes(&[0x40, 0x01, 0x00]);
    let events = h.take_events();
    assert!(matches!(
        disconnected_reason(&events)[..],
        [DisconnectReason::Protocol(ProtocolError::Malformed(_))]
    ));
    // The DISCONNECT went out before the close.
    assert_eq!(
        h.transmits.last().map(|b| b.to_vec()),
        Some(vec![0xE0, 0x02, 0x81, 0x00])
    );
    assert_eq!(h.closed_by_client, 1);
}

#[test]
fn packets_a_server_must_not_send_end_the_session() {
    let mut h = Harness::new(config(V3));
    h.connect();
    h.take_events();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    assert!(matches!(
        disconnected_reason(&h.take_events())[..],
        [DisconnectReason::Protocol(ProtocolError::UnexpectedPacket(
            _
        ))]
    ));
}

#[test]
fn inbound_qos1_publish_is_acknowledged_and_delivered() {
    let mut h = Harness::new(config(V3));
    h.connect();
    h.take_events();
    h.send(server_publish(
        "example/downlink",
        Bytes::from_static(b"{\"device\":\"D\",\"data\":{\"id\":0}}"),
        Some(7),
    ));
    assert_eq!(
        h.take_events(),
        vec![Event::Message {
            topic: "example/downlink".into(),
            payload: Bytes::from_static(b"{\"device\":\"D\",\"data\":{\"id\":0}}"),
        }]
    );
    // Exact bytes: PUBACK for packet id 7.
    assert_eq!(
        h.transmits.last().map(|b| b.to_vec()),
        Some(vec![0x40, 0x02, 0x00, 0x07])
    );
}

#[test]
fn thingsboard_packet_id_zero_is_delivered_without_ack_or_disconnect() {
    for version in [V3, V5] {
        let mut h = Harness::new(config(version));
        h.connect();
        h.take_events();
        let sent_before = h.transmits.len();
        // QoS 1 PUBLISH, topic "a", packet id 0, payload "x".
        let bytes: &[u8] = match version {
            ProtocolVersion::V311 => &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, b'x'],
            ProtocolVersion::V5 => &[0x32, 0x07, 0x00, 0x01, b'a', 0x00, 0x00, 0x00, b'x'],
        };
        h.send_bytes(bytes);
        assert_eq!(
            h.take_events(),
            vec![Event::Message {
                topic: "a".into(),
                payload: Bytes::from_static(b"x")
            }]
        );
        assert_eq!(h.transmits.len(), sent_before, "no PUBACK for id 0");
        assert_eq!(h.conn.state(), State::Connected);
        assert_eq!(h.conn.stats().inbound_packet_id_zero, 1);
    }
}

#[test]
fn oversize_packets_are_skipped_as_they_stream_in() {
    let mut c = config(V3);
    c.max_incoming_packet = 1024;
    let mut h = Harness::new(c);
    h.connect();
    h.take_events();
    let big = h.encode(&server_publish("example/downlink", vec![b'x'; 5000], None));
    let small = h.encode(&server_publish(
        "example/downlink",
        Bytes::from_static(b"{\"ok\":1}"),
        None,
    ));
    let mut stream = big.to_vec();
    stream.extend_from_slice(&small);
    for chunk in stream.chunks(300) {
        h.send_bytes(chunk);
        assert!(h.conn.stats().receive_buffer <= 1024 + 5 + 300);
    }
    assert_eq!(
        h.take_events(),
        vec![
            Event::Warning(Warning::OversizePacketSkipped { size: big.len() }),
            Event::Message {
                topic: "example/downlink".into(),
                payload: Bytes::from_static(b"{\"ok\":1}")
            }
        ]
    );
    assert_eq!(h.conn.state(), State::Connected);
}

#[test]
fn rejected_subscription_is_a_warning_not_a_disconnect() {
    let mut c = config(V5);
    c.subscriptions = vec![
        Subscription::new("v1/devices/me/attributes", QoS::AtLeastOnce),
        Subscription::new("v1/devices/me/#", QoS::AtLeastOnce),
    ];
    let mut h = Harness::new(c);
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    let Packet::Subscribe(s) = h.client_packets().remove(0) else {
        panic!("expected SUBSCRIBE")
    };
    h.send(Packet::SubAck(wire::SubAck {
        pkid: s.pkid,
        codes: vec![1, 0x8F],
    }));
    let events = h.take_events();
    assert!(
        events.contains(&Event::Warning(Warning::SubscriptionRejected {
            filter: "v1/devices/me/#".into(),
            code: 0x8F
        }))
    );
    assert_eq!(h.conn.state(), State::Connected);
}

#[test]
fn inputs_from_a_dead_transport_are_ignored() {
    let mut h = Harness::new(config(V3));
    h.connect();
    h.drop_transport();
    h.take_events();
    let ping = h.encode(&Packet::PingResp);
    h.conn.handle_input(h.now, Input::Bytes(&ping));
    h.conn.handle_input(h.now, Input::TransportClosed);
    h.conn.handle_input(h.now, Input::TransportOpened);
    h.drain();
    assert!(h.take_events().is_empty());
    assert_eq!(h.conn.stats().ignored_inputs, 3);
}

// ----- commands ---------------------------------------------------------------------------

#[test]
fn commands_are_checked_synchronously() {
    let mut c = config(V3);
    c.max_buffered_bytes = 5 * (107 + gateway_proto::PER_MESSAGE_OVERHEAD) + 100;
    let mut h = Harness::new(c);
    let too_big = Command::Publish {
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; 70_000]),
        qos: QoS::AtLeastOnce,
    };
    assert!(matches!(
        h.conn.command(h.now, too_big),
        Err(CommandError::TooLarge { max: 65_536, .. })
    ));
    for bad in ["", "a/+/b", "a/#", "a\0b"] {
        assert_eq!(
            h.conn.command(h.now, Command::publish(bad, "x")),
            Err(CommandError::InvalidTopic(bad.into()))
        );
    }
    // Fill the buffer while disconnected: each publish costs its encoded size (107 bytes)
    // plus the per-message overhead, and five of them fit.
    let mut accepted = 0;
    let err = loop {
        match h.conn.command(h.now, Command::publish("t", vec![0u8; 100])) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(accepted, 5);
    assert!(matches!(err, CommandError::QueueFull { .. }));
    assert_eq!(
        h.conn.stats().buffered_bytes,
        5 * (107 + gateway_proto::PER_MESSAGE_OVERHEAD)
    );
    assert!(h.take_events().is_empty(), "refusals are not events");
}

#[test]
fn a_full_buffer_frees_up_as_outcomes_arrive() {
    let mut c = config(V3);
    // Room for two 100-byte publishes on "t" (107 bytes encoded at QoS 1), not three.
    c.max_buffered_bytes = 2 * (107 + gateway_proto::PER_MESSAGE_OVERHEAD) + 50;
    let mut h = Harness::new(c);
    h.connect();
    publish(&mut h, "t", &[0u8; 100], QoS::AtLeastOnce);
    publish(&mut h, "t", &[0u8; 100], QoS::AtLeastOnce);
    assert!(h
        .conn
        .command(h.now, Command::publish("t", vec![0u8; 100]))
        .is_err());
    let p = publishes(&h.client_packets())[0].pkid;
    puback(&mut h, p, 0);
    assert!(h
        .conn
        .command(h.now, Command::publish("t", vec![0u8; 100]))
        .is_ok());
}

#[test]
fn close_sends_disconnect_fails_pending_requests_and_refuses_commands() {
    let mut h = Harness::new(config(V5));
    h.connect();
    let a = publish(&mut h, "t", b"x", QoS::AtLeastOnce);
    h.client_packets();
    h.take_events();
    h.conn.close(h.now);
    h.drain();
    assert_eq!(
        h.client_packets(),
        vec![Packet::Disconnect(wire::Disconnect { code: 0 })]
    );
    assert_eq!(h.closed_by_client, 1);
    assert_eq!(
        h.take_events(),
        vec![
            Event::Disconnected {
                reason: DisconnectReason::Local,
                reconnect_at: None
            },
            Event::Failed {
                request: a,
                error: RequestError::Closed
            }
        ]
    );
    assert_eq!(h.conn.state(), State::Closed);
    assert_eq!(h.conn.poll_timeout(), None);
    assert_eq!(
        h.conn.command(h.now, Command::publish("t", "x")),
        Err(CommandError::Closed)
    );
}

#[test]
fn config_is_validated_at_construction() {
    let mut c = Config::new(Credentials::AccessToken("provision".into()));
    c.protocol = V3;
    assert!(gateway_proto::Connection::new(c, std::time::Instant::now()).is_err());
}
