//! The tokio adapter against the emulator over real TCP: the shared Gateway and Device API
//! round trip, reconnect with re-announce, and typed first-connect failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway_proto::{ConnectRefusal, DisconnectReason, Event, ReasonCode};
use gateway_testkit::scenario::{self, Platform};
use gateway_tokio::{connect, ClientEvent, ConnectError, TransportError};

#[tokio::test]
async fn gateway_and_device_round_trip() {
    let platform = Platform::start();
    let (client, events) = connect(platform.gateway_options()).await.unwrap();
    scenario::gateway_and_device_round_trip(&platform, &client, &events).await;
    client.close().await;
    assert!(client.is_closed());
    let mut last = None;
    while let Some(event) = events.recv().await {
        last = Some(event);
    }
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

#[tokio::test]
async fn reconnects_and_reannounces_after_the_server_drops_the_connection() {
    let platform = Platform::start();
    let (client, events) = connect(platform.gateway_options()).await.unwrap();
    scenario::reconnect_and_reannounce(&platform, &client, &events).await;
}

#[tokio::test]
async fn a_wrong_token_is_a_typed_refusal() {
    let platform = Platform::start();
    match connect(scenario::wrong_token_options(&platform)).await {
        Err(ConnectError::Refused(ConnectRefusal { reason, raw, .. })) => {
            assert_eq!((reason, raw), (ReasonCode::BadUserNameOrPassword, 0x86));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nobody_listening_is_a_typed_transport_error() {
    let platform = Platform::start();
    let mut options = platform.gateway_options();
    // A port that was free a moment ago.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    options.port = free.local_addr().unwrap().port();
    drop(free);
    match connect(options).await {
        Err(ConnectError::Transport(TransportError::Connect { kind, .. })) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn round_trip_over_mutual_tls_with_x509_authentication() {
    let platform = Platform::start_x509();
    let (client, events) = connect(platform.x509_gateway_options()).await.unwrap();
    scenario::gateway_and_device_round_trip(&platform, &client, &events).await;
    scenario::reconnect_and_reannounce(&platform, &client, &events).await;
    let sessions = platform.emu.sessions();
    assert!(sessions
        .iter()
        .any(|s| s.tls && s.device.as_deref() == Some(scenario::GATEWAY_NAME)));
}

#[tokio::test]
async fn provisions_then_connects_and_takes_a_firmware_update() {
    let platform = Platform::start();
    let device = "Provisioned Tokio";
    let (_provisioning, events) = connect(scenario::provisioning_options(&platform, device))
        .await
        .unwrap();
    let credentials = scenario::provisioned(&platform, device, &events).await;
    let (client, events) = connect(scenario::device_options(&platform, &credentials))
        .await
        .unwrap();
    scenario::firmware_update(&platform, device, &client, &events).await;
    client.close().await;
}

/// A peer that stops reading: the write stall timeout fails the transport instead of the
/// connection hanging in its write.
#[tokio::test]
async fn a_stalled_write_fails_the_transport() {
    let peer = gateway_testkit::stalled_peer::StalledPeer::start(true).unwrap();
    let (client, events) = connect(scenario::stalled_peer_options(&peer))
        .await
        .unwrap();
    scenario::write_stall_fails_the_transport(&client, &events).await;
}

/// The last close loses nothing written before it, even when the server reads late and
/// speaks after the DISCONNECT (`ClientOptions::close_linger`).
#[tokio::test]
async fn the_last_close_loses_nothing_written() {
    let peer = gateway_testkit::late_reader_peer::LateReaderPeer::start(true).unwrap();
    let (client, _events) = connect(scenario::late_reader_options(&peer)).await.unwrap();
    scenario::close_delivers_everything_written(&client, peer).await;
}

/// A QoS 1 burst through a small in-flight window with read coalescing on: everything is
/// delivered in order and a request made meanwhile is answered.
#[tokio::test]
async fn a_qos1_burst_with_read_coalescing_is_delivered_in_order() {
    let platform = Platform::start();
    let (client, _events) = connect(scenario::coalescing_options(&platform))
        .await
        .unwrap();
    scenario::coalesced_qos1_burst(&platform, &client).await;
    client.close().await;
}

/// Sub-device telemetry in batches through a small in-flight window: one answer per command,
/// in order, and everything stored once.
#[tokio::test]
async fn batches_are_answered_per_command_and_stored_in_order() {
    let platform = Platform::start();
    let (client, _events) = connect(scenario::coalescing_options(&platform))
        .await
        .unwrap();
    scenario::batched_uplink(&platform, &client).await;
    client.close().await;
}
