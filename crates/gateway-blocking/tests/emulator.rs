//! The blocking adapter against the emulator over real TCP: the shared Gateway and Device API
//! round trip (driven through the async form of the handle with `block_on`), reconnect with
//! re-announce, typed first-connect failures, and the blocking API itself: `wait()`, an event
//! loop on its own thread, `close()`, dropping the handles, a burst of requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use gateway_blocking::{
    connect, spawn, ClientEvent, ConnectError, Delivery, FirstAttempt, TransportError,
};
use gateway_emulator::{RpcCall, RpcOutcome};
use gateway_proto::{ConnectRefusal, DisconnectReason, Event, ReasonCode};
use gateway_testkit::scenario::{self, Platform, GATEWAY_NAME};
use serde_json::{json, Map, Value};

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Joins `thread`, failing the test if it does not end within `limit`.
fn join_within(thread: JoinHandle<()>, limit: Duration) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(thread.join()));
    match rx.recv_timeout(limit) {
        Ok(joined) => joined.expect("the thread did not panic"),
        Err(_) => panic!("the thread did not end within {limit:?}"),
    }
}

/// Polls `check` every 10 ms for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn gateway_and_device_round_trip() {
    let platform = Platform::start();
    let (client, events) = connect(platform.gateway_options()).unwrap();
    block_on(scenario::gateway_and_device_round_trip(
        &platform,
        &client.to_async(),
        &events,
    ));
    client.close();
    assert!(client.is_closed());
    let last = events.iter().last();
    assert!(
        matches!(
            last,
            Some(ClientEvent::Proto(Event::Disconnected {
                reason: DisconnectReason::Local,
                ..
            }))
        ),
        "the stream ends with the local close: {last:?}"
    );
}

#[test]
fn reconnects_and_reannounces_after_the_server_drops_the_connection() {
    let platform = Platform::start();
    let (client, events) = connect(platform.gateway_options()).unwrap();
    block_on(scenario::reconnect_and_reannounce(
        &platform,
        &client.to_async(),
        &events,
    ));
}

#[test]
fn a_wrong_token_is_a_typed_refusal() {
    let platform = Platform::start();
    match connect(scenario::wrong_token_options(&platform)) {
        Err(ConnectError::Refused(ConnectRefusal { reason, raw, .. })) => {
            assert_eq!((reason, raw), (ReasonCode::BadUserNameOrPassword, 0x86));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nobody_listening_is_a_typed_transport_error() {
    let platform = Platform::start();
    let mut options = platform.gateway_options();
    // A port that was free a moment ago.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    options.port = free.local_addr().unwrap().port();
    drop(free);
    match connect(options) {
        Err(ConnectError::Transport(TransportError::Connect { kind, .. })) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn blocking_requests_wait_for_their_outcome() {
    let platform = Platform::start();
    let (client, _events) = connect(platform.gateway_options()).unwrap();
    let sensor = "Blocking Sensor";
    assert_eq!(
        client.connect_device(sensor, Some("meter")).unwrap().wait(),
        Ok(Delivery::Acknowledged)
    );
    assert_eq!(
        client
            .device_telemetry(sensor, map(json!({"power": 3.5})))
            .unwrap()
            .wait(),
        Ok(Delivery::Acknowledged)
    );
    // Acknowledged means stored.
    assert_eq!(
        platform.emu.latest_telemetry(sensor).unwrap()["power"].value,
        json!(3.5)
    );
    let own = client
        .attributes(map(json!({"firmware": "v2"})))
        .unwrap()
        .wait();
    assert_eq!(own, Ok(Delivery::Acknowledged));
    let values = client
        .request_attributes(vec!["firmware".into()], vec![])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(values.client["firmware"], json!("v2"));
    let stats = client.stats().unwrap();
    assert!(stats.packets_sent > 0, "{stats:?}");
    client.close();
}

#[test]
fn a_burst_of_requests_is_delivered() {
    let platform = Platform::start();
    let (client, _events) = connect(platform.gateway_options()).unwrap();
    let started = Instant::now();
    // More than one wake-up's worth of requests (256) and more than the queue (1,024).
    let pending: Vec<_> = (0..2_000)
        .map(|i| client.telemetry(map(json!({"n": i}))).unwrap())
        .collect();
    for outcome in pending {
        assert_eq!(outcome.wait(), Ok(Delivery::Acknowledged));
    }
    // The emulator keeps the last 1,000 values per key; the newest is the last request's.
    let stored = &platform.emu.telemetry(GATEWAY_NAME).unwrap()["n"];
    assert_eq!(stored.len(), 1_000);
    assert_eq!(
        platform.emu.latest_telemetry(GATEWAY_NAME).unwrap()["n"].value,
        json!(1_999)
    );
    assert_eq!(client.stats().unwrap().delivered, 2_000);
    eprintln!(
        "2,000 acknowledged telemetry requests in {:?}",
        started.elapsed()
    );
    client.close();
}

#[test]
fn an_rpc_is_answered_from_an_event_loop_on_another_thread() {
    let platform = Platform::start();
    let (client, events) = connect(platform.gateway_options()).unwrap();
    let valve = "Blocking Valve";
    client.connect_device(valve, None).unwrap().wait().unwrap();

    let responder = client.clone();
    let (acks, acked) = mpsc::channel();
    let event_loop = thread::spawn(move || {
        let mut answered = 0;
        // Ends when the connection is closed.
        for event in events.iter() {
            if let ClientEvent::Proto(Event::RpcRequest {
                device: Some(device),
                id,
                method,
                params,
            }) = event
            {
                let reply = json!({"method": method, "echo": params});
                let done = responder
                    .device_rpc_reply(device, id, reply)
                    .unwrap()
                    .wait();
                acks.send(done).unwrap();
                answered += 1;
            }
        }
        answered
    });

    for i in 0..3 {
        let outcome = block_on(platform.rpc(valve, RpcCall::two_way("setValve", json!({"i": i}))));
        assert_eq!(
            outcome,
            RpcOutcome::Reply(json!({"method": "setValve", "echo": {"i": i}}))
        );
        // The server has the reply; the gateway also sees its acknowledgement.
        let ack = acked.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ack, Ok(Delivery::Acknowledged));
    }

    // `close` returns once the connection's thread has stopped, which ends the event loop.
    client.close();
    assert!(client.is_closed());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(event_loop.join()));
    let answered = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the event loop ends after close")
        .expect("the event loop did not panic");
    assert_eq!(answered, 3);
}

#[test]
fn dropping_every_handle_stops_the_connection_thread() {
    let platform = Platform::start();
    let spawned = spawn(platform.gateway_options(), FirstAttempt::MustSucceed).unwrap();
    spawned.startup.wait_blocking().unwrap();
    let client = spawned.client;
    let other = client.clone();
    let async_form = client.to_async();
    assert_eq!(
        other.telemetry(map(json!({"up": true}))).unwrap().wait(),
        Ok(Delivery::Acknowledged)
    );
    drop((client, other, async_form));
    join_within(spawned.thread, Duration::from_secs(5));
    // The stream ends with the graceful close; the server saw the session go.
    let last = spawned.events.iter().last();
    assert!(
        matches!(
            last,
            Some(ClientEvent::Proto(Event::Disconnected {
                reason: DisconnectReason::Local,
                ..
            }))
        ),
        "{last:?}"
    );
    eventually("the server has no session left", || {
        platform.emu.sessions().is_empty()
    });
}

#[test]
fn a_closed_connection_refuses_requests() {
    let platform = Platform::start();
    let (client, events) = connect(platform.gateway_options()).unwrap();
    client.close();
    // Closing twice is harmless.
    client.close();
    assert!(client.is_closed());
    assert!(events.iter().count() > 0);
    assert!(client.telemetry(Map::new()).is_err());
}

#[test]
fn retry_keeps_trying_until_the_server_is_reachable() {
    // Nobody listens on the port at first; with `FirstAttempt::Retry` the thread keeps
    // dialling and reports each failure as an event.
    let platform = Platform::start();
    let mut options = platform.gateway_options();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    options.port = free.local_addr().unwrap().port();
    drop(free);
    let spawned = spawn(options, FirstAttempt::Retry).unwrap();
    let mut failures = 0;
    while failures < 2 {
        match spawned.events.recv_blocking() {
            Some(ClientEvent::TransportFailed(TransportError::Connect { kind, .. })) => {
                assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
                failures += 1;
            }
            Some(_) => {}
            None => panic!("the event stream ended"),
        }
    }
    drop(spawned.client);
    join_within(spawned.thread, Duration::from_secs(5));
}

#[test]
fn an_idle_connection_is_kept_alive_by_the_core_deadline() {
    let platform = Platform::start();
    let mut options = platform.gateway_options();
    options.config.keep_alive = Duration::from_secs(1);
    let (client, _events) = connect(options).unwrap();
    let before = client.stats().unwrap();
    // Nothing but the core's deadline wakes the driver thread now: PINGREQ, PINGRESP.
    thread::sleep(Duration::from_millis(2_500));
    let after = client.stats().unwrap();
    assert!(
        after.packets_sent >= before.packets_sent + 2,
        "{before:?} {after:?}"
    );
    assert!(after.packets_received >= before.packets_received + 2);
    assert_eq!((after.connections, after.disconnects), (1, 0));
    assert_eq!(
        client
            .telemetry(map(json!({"alive": true})))
            .unwrap()
            .wait(),
        Ok(Delivery::Acknowledged)
    );
    client.close();
}

#[test]
fn provisions_then_connects_and_takes_a_firmware_update() {
    let platform = Platform::start();
    let device = "Provisioned Blocking";
    let (_provisioning, events) =
        connect(scenario::provisioning_options(&platform, device)).unwrap();
    let credentials = block_on(scenario::provisioned(&platform, device, &events));
    let (client, events) = connect(scenario::device_options(&platform, &credentials)).unwrap();
    block_on(scenario::firmware_update(
        &platform,
        device,
        &client.to_async(),
        &events,
    ));
    client.close();
}

/// A peer that stops reading: the write stall timeout (SO_SNDTIMEO here) fails the transport
/// instead of the driver thread hanging in its write.
#[test]
fn a_stalled_write_fails_the_transport() {
    let peer = gateway_testkit::stalled_peer::StalledPeer::start(true).unwrap();
    let (client, events) = connect(scenario::stalled_peer_options(&peer)).unwrap();
    block_on(scenario::write_stall_fails_the_transport(
        &client.to_async(),
        &events,
    ));
}

/// The last close loses nothing written before it, even when the server reads late and
/// speaks after the DISCONNECT (`ClientOptions::close_linger`).
#[test]
fn the_last_close_loses_nothing_written() {
    let peer = gateway_testkit::late_reader_peer::LateReaderPeer::start(true).unwrap();
    let (client, _events) = connect(scenario::late_reader_options(&peer)).unwrap();
    block_on(scenario::close_delivers_everything_written(
        &client.to_async(),
        peer,
    ));
}

/// A QoS 1 burst through a small in-flight window with read coalescing on (the driver thread
/// pauses before taking the next wake-up): everything is delivered in order and a request
/// made meanwhile is answered.
#[test]
fn a_qos1_burst_with_read_coalescing_is_delivered_in_order() {
    let platform = Platform::start();
    let (client, _events) = connect(scenario::coalescing_options(&platform)).unwrap();
    block_on(scenario::coalesced_qos1_burst(
        &platform,
        &client.to_async(),
    ));
    client.close();
}

/// Sub-device telemetry in batches through a small in-flight window: one answer per command,
/// in order, and everything stored once.
#[test]
fn batches_are_answered_per_command_and_stored_in_order() {
    let platform = Platform::start();
    let (client, _events) = connect(scenario::coalescing_options(&platform)).unwrap();
    block_on(scenario::batched_uplink(&platform, &client.to_async()));
    client.close();
}
