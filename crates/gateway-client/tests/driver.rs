//! The driver between a client handle and the sans-IO emulator, on a virtual clock: outcomes
//! reach the request that asked, events reach the stream, pending bytes leave in one write,
//! and the first attempt decides the fate of a `MustSucceed` connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::{Duration, Instant};

use gateway_client::{
    Action, AttributeValues, ClientError, ClientEvent, ClientOptions, ConnectError, Delivery,
    Driver, FirstAttempt, Parts, Queue, TransportError,
};
use gateway_emulator::RpcCall;
use gateway_proto::{
    AttributeScope, CommandError, ConnectRefusal, Credentials, DisconnectReason, Event, ReasonCode,
    RequestError, Role,
};
use harness::{values, Harness};
use serde_json::{json, Map, Value};

#[test]
fn outcomes_reach_their_request_and_everything_else_the_event_stream() {
    let mut h = Harness::connected(|_| {});

    let sent = h
        .client()
        .device_telemetry("Boiler", values(json!({"t": 21.5})))
        .unwrap();
    let attrs = h
        .client()
        .device_attributes("Boiler", values(json!({"model": "X1"})))
        .unwrap();
    h.settle();
    assert_eq!(sent.wait(), Ok(Delivery::Acknowledged));
    assert_eq!(attrs.wait(), Ok(Delivery::Acknowledged));

    let asked = h
        .client()
        .request_device_attributes("Boiler", AttributeScope::Client, vec!["model".into()])
        .unwrap();
    h.settle();
    let AttributeValues { device, client, .. } = asked.wait().unwrap();
    assert_eq!(device.as_deref(), Some("Boiler"));
    assert_eq!(client.get("model"), Some(&json!("X1")));

    h.emu
        .send_rpc("Boiler", RpcCall::two_way("reboot", json!({})), h.now)
        .unwrap();
    h.settle();
    let events = h.drain_events();
    assert!(
        matches!(
            events.first(),
            Some(ClientEvent::Proto(Event::Connected { .. }))
        ),
        "{events:?}"
    );
    // No outcome leaked into the stream; the RPC is there.
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, ClientEvent::Proto(ev) if ev.request().is_some())),
        "{events:?}"
    );
    let rpc = events.iter().find_map(|e| match e {
        ClientEvent::Proto(Event::RpcRequest {
            device: Some(d),
            id,
            method,
            ..
        }) => Some((d.clone(), *id, method.clone())),
        _ => None,
    });
    assert_eq!(rpc, Some(("Boiler".into(), 0, "reboot".into())));
    assert_eq!(
        h.emu.latest_telemetry("Boiler").unwrap()["t"].value,
        json!(21.5)
    );
}

#[test]
fn everything_pending_leaves_in_one_write() {
    let mut h = Harness::connected(|o| o.config.subscribe_api = false);
    h.writes.clear();
    // Queue 50 requests before the driver runs once: one wake-up, one write.
    let pending: Vec<_> = (0..50)
        .map(|i| {
            h.client()
                .device_telemetry(format!("D{i}"), values(json!({"n": i})))
                .unwrap()
        })
        .collect();
    h.settle();
    assert_eq!(h.writes.len(), 1, "writes: {:?}", h.writes);
    for p in pending {
        assert_eq!(p.wait(), Ok(Delivery::Acknowledged));
    }
}

#[test]
fn a_refused_first_attempt_is_a_typed_error_and_closes() {
    let mut h = Harness::new("WRONG", FirstAttempt::MustSucceed, |_| {});
    let err = h.startup.take().unwrap().wait_blocking().unwrap_err();
    match err {
        ConnectError::Refused(ConnectRefusal { reason, raw, .. }) => {
            assert_eq!(reason, ReasonCode::BadUserNameOrPassword);
            assert_eq!(raw, 0x86);
        }
        other => panic!("{other:?}"),
    }
    h.settle();
    assert!(h.driver.is_finished());
    let client = h.client.take().unwrap();
    drop(h);
    assert_eq!(
        client.device_telemetry("D", Map::new()).unwrap_err(),
        ClientError::Closed
    );
}

#[test]
fn a_failed_first_dial_is_a_transport_error() {
    let now = Instant::now();
    let options = ClientOptions::new("emulator", 1883, Credentials::AccessToken("T".into()));
    let mut parts = Driver::build(&options, now, FirstAttempt::MustSucceed, None).unwrap();
    assert_eq!(parts.driver.poll_action(), Some(Action::Open));
    let err = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    parts
        .driver
        .transport_failed(now, TransportError::connect("emulator:1883", &err));
    match parts.startup.wait_blocking() {
        Err(ConnectError::Transport(TransportError::Connect { kind, address, .. })) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
            assert_eq!(address, "emulator:1883");
        }
        other => panic!("{other:?}"),
    }
    parts.driver.flush_events_blocking();
    assert!(parts.driver.is_finished(), "the connection stopped");
}

#[test]
fn retry_mode_keeps_trying_and_reports_transport_failures_as_events() {
    let mut h = Harness::new("GW_TOKEN", FirstAttempt::Retry, |_| {});
    // Connected at once; now make the next dials fail and drop the session.
    h.go_offline();
    h.advance(Duration::from_secs(5));
    let events = h.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::TransportFailed(TransportError::Connect { .. })
        )),
        "{events:?}"
    );
    // A request made meanwhile waits, and is delivered once dialling works again.
    let p = h
        .client()
        .device_telemetry("Late", values(json!({"v": 1})))
        .unwrap();
    h.refuse_dial = false;
    h.advance(Duration::from_secs(120));
    assert_eq!(p.wait(), Ok(Delivery::Acknowledged));
    assert!(!h.driver.is_finished());
}

#[test]
fn raw_requests_resolve_to_the_answers_bytes() {
    let mut h = Harness::connected(|_| {});
    // Application-encoded payloads; JSON here, since the emulator speaks no protobuf.
    let sent = h
        .client()
        .attributes_bytes(bytes::Bytes::from_static(br#"{"serial":"S-1"}"#), 1)
        .unwrap();
    let asked = h
        .client()
        .request_attributes_bytes(bytes::Bytes::from_static(br#"{"clientKeys":"serial"}"#))
        .unwrap();
    h.settle();
    assert_eq!(sent.wait(), Ok(Delivery::Acknowledged));
    let answer: Value = serde_json::from_slice(&asked.wait().unwrap()).unwrap();
    assert_eq!(answer, json!({"client": {"serial": "S-1"}}));
}

#[test]
fn refusals_by_the_core_come_back_on_the_pending() {
    let mut h = Harness::new("GW_TOKEN", FirstAttempt::MustSucceed, |o| {
        o.config.role = Role::Device
    });
    let p = h.client().device_telemetry("Boiler", Map::new()).unwrap();
    h.settle();
    assert_eq!(
        p.wait(),
        Err(ClientError::Refused(CommandError::NotAGateway))
    );
}

#[test]
fn dropping_every_handle_closes_gracefully_and_ends_the_stream() {
    let mut h = Harness::connected(|_| {});
    let p = h
        .client()
        .device_telemetry("Boiler", values(json!({"t": 1})))
        .unwrap();
    h.client = None;
    h.settle();
    assert!(h.driver.is_finished());
    // The request made before the close was either delivered or failed as closed, never lost.
    assert!(matches!(
        p.wait(),
        Ok(Delivery::Acknowledged) | Err(ClientError::Failed(RequestError::Closed))
    ));
    let events = h.drain_events();
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Proto(Event::Disconnected {
            reason: DisconnectReason::Local,
            ..
        })
    )));
    assert!(h.emu.sessions().is_empty(), "the emulator saw the close");
}

#[test]
fn close_fails_unfinished_requests_and_the_stream_ends_after_the_driver() {
    let mut h = Harness::new("GW_TOKEN", FirstAttempt::Retry, |_| {});
    h.go_offline();
    let p = h
        .client()
        .device_telemetry("Boiler", values(json!({"t": 1})))
        .unwrap();
    let client = h.client().to_async();
    // `close` waits for the driver to stop: run it on another thread while we drive.
    let closer = std::thread::spawn(move || client.blocking().close());
    while !h.driver.is_finished() {
        h.settle();
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(h);
    closer.join().unwrap();
    assert_eq!(p.wait(), Err(ClientError::Failed(RequestError::Closed)));
}

#[test]
fn take_requests_is_bounded_per_wakeup_and_notices_when_clients_are_gone() {
    let now = Instant::now();
    let options = ClientOptions::new("emulator", 1883, Credentials::AccessToken("T".into()));
    let Parts {
        mut driver,
        commands,
        client,
        ..
    } = Driver::build(&options, now, FirstAttempt::Retry, None).unwrap();
    let async_client = client;
    let client = async_client.blocking();
    drop(async_client);
    let pending: Vec<_> = (0..Driver::REQUESTS_PER_WAKEUP + 10)
        .map(|i| client.telemetry(values(json!({"n": i}))).unwrap())
        .collect();
    assert_eq!(
        driver.take_requests(now, &commands, None),
        Queue::MoreWaiting
    );
    assert_eq!(
        driver.connection().stats().requests,
        Driver::REQUESTS_PER_WAKEUP as u64
    );
    assert_eq!(driver.take_requests(now, &commands, None), Queue::Empty);
    assert_eq!(driver.connection().stats().requests, pending.len() as u64);
    drop(client);
    assert_eq!(
        driver.take_requests(now, &commands, None),
        Queue::ClientsGone
    );
    assert_eq!(driver.connection().state(), gateway_proto::State::Closed);
}
