//! The blocking adapter's TLS path against the emulator's TLS port: the shared scenario over
//! mutual TLS with X.509 authentication (the gateway is identified by its certificate), a
//! reconnect through TLS, and a burst larger than rustls buffers per write. Typed handshake
//! failures (untrusted server, missing client certificate) are in `tests/mosquitto.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use futures_lite::future::block_on;
use gateway_blocking::{connect, ClientEvent};
use gateway_proto::{DisconnectReason, Event};
use gateway_testkit::scenario::{self, Platform};

#[test]
fn round_trip_and_reconnect_over_mutual_tls() {
    let platform = Platform::start_x509();
    let (client, events) = connect(platform.x509_gateway_options()).unwrap();
    block_on(scenario::gateway_and_device_round_trip(
        &platform,
        &client.to_async(),
        &events,
    ));
    // The emulator drops the session; the client dials and handshakes again.
    block_on(scenario::reconnect_and_reannounce(
        &platform,
        &client.to_async(),
        &events,
    ));
    assert!(platform
        .emu
        .sessions()
        .iter()
        .any(|s| s.tls && s.device.as_deref() == Some(scenario::GATEWAY_NAME)));
    client.close();
    let last = events.iter().last();
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
}

#[test]
fn a_burst_larger_than_the_tls_buffer_is_delivered() {
    let platform = Platform::start_x509();
    let (client, _events) = connect(platform.x509_gateway_options()).unwrap();
    // Each write merges up to 256 requests: about 256 KiB here, well over the 64 KiB rustls
    // buffers per write call.
    let filler = "x".repeat(1_000);
    let started = Instant::now();
    let pending: Vec<_> = (0..1_000)
        .map(|i| {
            let values = serde_json::json!({"n": i, "filler": filler});
            client
                .telemetry(values.as_object().cloned().unwrap())
                .unwrap()
        })
        .collect();
    for outcome in pending {
        assert_eq!(outcome.wait(), Ok(gateway_blocking::Delivery::Acknowledged));
    }
    eprintln!(
        "1,000 acknowledged 1 KB telemetry requests over TLS in {:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().unwrap().delivered, 1_000);
    client.close();
}
