//! The end-to-end round trip every adapter runs against the emulator, written once on the
//! runtime-neutral [`Client`], so the tokio, async-std/smol and blocking adapters are held to
//! exactly the same behaviour.
//!
//! The emulator runs on its own tokio runtime ([`Platform`]), so the scenario can be driven
//! from any executor (or from `futures_lite::future::block_on` in blocking tests).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use gateway_client::{
    Answer, Client, ClientEvent, ClientOptions, Delivery, Events, TlsOptions, TransportError,
};
use gateway_emulator::{
    ClaimOutcome, ClientRpcAnswer, EmulatorConfig, EmulatorHandle, NewDevice, OtaPackage,
    ProvisionProfile, ProvisionStrategy, RpcCall, RpcOutcome, TlsConfig,
};
use gateway_proto::checksum::ChecksumAlgorithm;
use gateway_proto::payload::{Claim, ClientRpcResponse, ProvisionRequest};
use gateway_proto::{
    AttributeScope, Command, Config, Credentials, DisconnectReason, Event, OtaConfig, OtaEvent,
    OtaKind, ProvisionedCredentials, QoS, Role,
};
use serde_json::{json, Map, Value};

use crate::late_reader_peer::{LateReaderPeer, Received};
use crate::stalled_peer::StalledPeer;

/// The gateway's access token in [`Platform::start`].
pub const GATEWAY_TOKEN: &str = "SCENARIO_GATEWAY_TOKEN";
/// The gateway's device name.
pub const GATEWAY_NAME: &str = "Scenario Gateway";

/// An emulator on its own tokio runtime (so any executor can use it).
pub struct Platform {
    /// The emulator's control handle.
    pub emu: EmulatorHandle,
    /// With [`Platform::start_x509`]: the test CA and the gateway's client certificate.
    pub x509: Option<(crate::pki::TestPki, crate::pki::ClientCert)>,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Platform {
    /// Starts an emulator on 127.0.0.1 with a gateway device ([`GATEWAY_NAME`],
    /// [`GATEWAY_TOKEN`]) and a client-RPC handler answering `getCurrentTime`.
    pub fn start() -> Self {
        Self::start_with(EmulatorConfig::default())
    }

    /// The same with a custom emulator configuration.
    pub fn start_with(config: EmulatorConfig) -> Self {
        Self::launch(config, None)
    }

    /// An emulator with a TLS port (certificate from a CA made now, for 127.0.0.1) whose
    /// gateway ([`GATEWAY_NAME`]) authenticates by an X.509 client certificate, as
    /// ThingsBoard's X.509 device credentials do; connect with
    /// [`x509_gateway_options`](Self::x509_gateway_options).
    pub fn start_x509() -> Self {
        let pki = crate::pki::TestPki::generate().expect("test pki");
        let cert = pki.client(GATEWAY_NAME).expect("gateway certificate");
        let server = pki.server();
        let tls = TlsConfig::new(server.cert_pem.clone(), server.key_pem.clone());
        Self::launch(EmulatorConfig::default(), Some((tls, pki, cert)))
    }

    fn launch(
        config: EmulatorConfig,
        x509: Option<(TlsConfig, crate::pki::TestPki, crate::pki::ClientCert)>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime for the emulator");
        // Started from a plain thread: the caller may itself be inside a tokio runtime.
        let handle = runtime.handle().clone();
        let tls = x509.as_ref().map(|(tls, _, _)| tls.clone());
        let emu = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    handle.block_on(async move {
                        match tls {
                            None => EmulatorHandle::start(config)
                                .await
                                .map_err(|e| e.to_string()),
                            Some(tls) => EmulatorHandle::start_tls(config, tls)
                                .await
                                .map_err(|e| e.to_string()),
                        }
                    })
                })
                .join()
                .expect("emulator start thread")
        })
        .expect("emulator starts");
        let gateway = match &x509 {
            None => NewDevice::gateway(GATEWAY_NAME, GATEWAY_TOKEN),
            Some((_, _, cert)) => NewDevice::x509_gateway(GATEWAY_NAME, &cert.cert_pem),
        };
        emu.create_device(gateway).expect("gateway device");
        emu.set_client_rpc_handler(Some(Box::new(|call| match call.method.as_str() {
            "getCurrentTime" => ClientRpcAnswer::Reply(json!(1_700_000_000_000_i64)),
            _ => ClientRpcAnswer::NoAnswer,
        })));
        Self {
            emu,
            x509: x509.map(|(_, pki, cert)| (pki, cert)),
            runtime: Some(runtime),
        }
    }

    /// Client options for the X.509 gateway of [`start_x509`](Self::start_x509): mutual TLS
    /// to the emulator's TLS port, trusting only the test CA, no token.
    pub fn x509_gateway_options(&self) -> ClientOptions {
        let (pki, cert) = self.x509.as_ref().expect("started with start_x509");
        let addr = self.emu.tls_addr().expect("TLS port");
        let mut options = ClientOptions::new(addr.ip().to_string(), addr.port(), Credentials::X509)
            .tls(
                TlsOptions::with_ca_pem(pki.ca_pem())
                    .client_identity_pem(cert.cert_pem.clone(), cert.key_pem.clone()),
            );
        options.config.reconnect.initial_delay = Duration::from_millis(50);
        options.config.reconnect.max_delay = Duration::from_millis(500);
        options
    }

    /// Client options for the gateway, plain TCP to the emulator, with short reconnect
    /// delays so tests stay fast.
    pub fn gateway_options(&self) -> ClientOptions {
        let addr = self.emu.addr();
        let mut options = ClientOptions::new(
            addr.ip().to_string(),
            addr.port(),
            Credentials::AccessToken(GATEWAY_TOKEN.into()),
        );
        options.config.reconnect.initial_delay = Duration::from_millis(50);
        options.config.reconnect.max_delay = Duration::from_millis(500);
        options
    }

    /// Sends a server-side RPC from the emulator and waits for its outcome; runs on the
    /// emulator's runtime, awaitable from any executor.
    pub fn rpc(&self, device: &str, call: RpcCall) -> impl Future<Output = RpcOutcome> + 'static {
        let emu = self.emu.clone();
        let device = device.to_owned();
        let runtime = self
            .runtime
            .as_ref()
            .expect("runtime lives as long as the platform");
        let task = runtime.spawn(async move { emu.rpc(&device, call).await });
        async move { task.await.expect("rpc task").expect("rpc outcome") }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.emu.shutdown();
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime blocks, which is not allowed inside another runtime.
            runtime.shutdown_background();
        }
    }
}

/// Waits (at most 10 s, on any executor) for the first event that `pick` accepts, skipping
/// the others.
pub async fn next_event<T>(events: &Events, mut pick: impl FnMut(&ClientEvent) -> Option<T>) -> T {
    let wait = async {
        loop {
            let event = events.recv().await.expect("event stream ended");
            if let Some(found) = pick(&event) {
                return Some(found);
            }
        }
    };
    let timeout = async {
        async_io::Timer::after(Duration::from_secs(10)).await;
        None
    };
    futures_lite::future::or(wait, timeout)
        .await
        .expect("no matching event within 10 s")
}

/// Polls `check` every 10 ms for up to 10 s (any executor).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The whole Gateway API and Device API round trip, asserted on both sides: the client's
/// outcomes and events, and what the emulator stored or answered.
pub async fn gateway_and_device_round_trip(platform: &Platform, client: &Client, events: &Events) {
    let emu = &platform.emu;
    let sensor = "Scenario Sensor";

    // Gateway API: connect, telemetry, attributes.
    let ok = client
        .connect_device(sensor, Some("thermometer"))
        .await
        .unwrap();
    assert_eq!(ok.await, Ok(Delivery::Acknowledged));
    assert_eq!(
        emu.device(sensor).expect("created").device_type,
        "thermometer"
    );
    let t = client
        .device_telemetry(sensor, map(json!({"temperature": 21.5})))
        .await
        .unwrap();
    let a = client
        .device_attributes(sensor, map(json!({"model": "T-1000"})))
        .await
        .unwrap();
    assert_eq!(t.await, Ok(Delivery::Acknowledged));
    assert_eq!(a.await, Ok(Delivery::Acknowledged));
    assert_eq!(
        emu.latest_telemetry(sensor).unwrap()["temperature"].value,
        json!(21.5)
    );
    assert_eq!(
        emu.client_attributes(sensor).unwrap()["model"],
        json!("T-1000")
    );
    assert!(emu
        .connected_children(GATEWAY_NAME)
        .unwrap()
        .contains(&sensor.to_owned()));

    // Shared attribute push to the sub-device.
    emu.set_shared_attributes(sensor, map(json!({"interval": 5})))
        .unwrap();
    let pushed = next_event(events, |e| match e {
        ClientEvent::Proto(Event::AttributeUpdate {
            device: Some(d),
            values,
            ..
        }) if d == sensor => Some(values.clone()),
        _ => None,
    })
    .await;
    assert_eq!(pushed["interval"], json!(5));

    // Attribute requests, client and shared scope.
    let client_scope = client
        .request_device_attributes(sensor, AttributeScope::Client, vec!["model".into()])
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(client_scope.client["model"], json!("T-1000"));
    let shared_scope = client
        .request_device_attributes(
            sensor,
            AttributeScope::Shared,
            vec!["interval".into(), "missing".into()],
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(shared_scope.shared["interval"], json!(5));
    assert!(!shared_scope.shared.contains_key("missing"));

    // A two-way server RPC to the sub-device, answered by the gateway.
    let outcome = platform.rpc(sensor, RpcCall::two_way("setValve", json!({"open": true})));
    let (device, id, params) = next_event(events, |e| match e {
        ClientEvent::Proto(Event::RpcRequest {
            device: Some(d),
            id,
            method,
            params,
        }) if method == "setValve" => Some((d.clone(), *id, params.clone())),
        _ => None,
    })
    .await;
    assert_eq!((device.as_str(), params), (sensor, json!({"open": true})));
    let replied = client
        .device_rpc_reply(sensor, id, json!({"valve": "open"}))
        .await
        .unwrap();
    assert_eq!(replied.await, Ok(Delivery::Acknowledged));
    assert_eq!(outcome.await, RpcOutcome::Reply(json!({"valve": "open"})));

    // Claim of the sub-device.
    let claim = Claim {
        secret_key: Some("s3cret".into()),
        duration_ms: Some(60_000),
    };
    assert_eq!(
        client.claim_device(sensor, claim).await.unwrap().await,
        Ok(Delivery::Acknowledged)
    );
    assert_eq!(
        emu.claim_device(sensor, "s3cret").unwrap(),
        ClaimOutcome::Success
    );

    // Device API on the gateway's own device.
    let t = client.telemetry(map(json!({"cpu": 12}))).await.unwrap();
    let a = client
        .attributes(map(json!({"firmware": "v1.0"})))
        .await
        .unwrap();
    assert_eq!(t.await, Ok(Delivery::Acknowledged));
    assert_eq!(a.await, Ok(Delivery::Acknowledged));
    assert_eq!(
        emu.latest_telemetry(GATEWAY_NAME).unwrap()["cpu"].value,
        json!(12)
    );
    emu.set_shared_attributes(GATEWAY_NAME, map(json!({"mode": "eco"})))
        .unwrap();
    let own = client
        .request_attributes(vec!["firmware".into()], vec!["mode".into()])
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        (own.client["firmware"].clone(), own.shared["mode"].clone()),
        (json!("v1.0"), json!("eco"))
    );
    let time = client
        .rpc("getCurrentTime", json!({}))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(time, ClientRpcResponse::Ok(json!(1_700_000_000_000_i64)));

    // A server RPC to the gateway itself.
    let outcome = platform.rpc(GATEWAY_NAME, RpcCall::two_way("ping", json!(null)));
    let id = next_event(events, |e| match e {
        ClientEvent::Proto(Event::RpcRequest {
            device: None,
            id,
            method,
            ..
        }) if method == "ping" => Some(*id),
        _ => None,
    })
    .await;
    client
        .rpc_reply(id, json!("pong"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome.await, RpcOutcome::Reply(json!("pong")));

    // Disconnect of the sub-device.
    let gone = client.disconnect_device(sensor).await.unwrap();
    assert_eq!(gone.await, Ok(Delivery::Acknowledged));
    eventually("the sub-device is disconnected", || {
        !emu.connected_children(GATEWAY_NAME)
            .unwrap()
            .contains(&sensor.to_owned())
    })
    .await;
}

/// The emulator drops the gateway's connection; the adapter dials again and the core
/// re-announces the sub-device, which gets an RPC without sending anything first.
pub async fn reconnect_and_reannounce(platform: &Platform, client: &Client, events: &Events) {
    let emu = &platform.emu;
    let child = "Reconnect Child";
    client
        .connect_device(child, None)
        .await
        .unwrap()
        .await
        .unwrap();
    let session = emu
        .sessions()
        .into_iter()
        .find(|s| s.device.as_deref() == Some(GATEWAY_NAME))
        .expect("gateway session");
    emu.drop_session(session.id).unwrap();
    next_event(events, |e| {
        matches!(e, ClientEvent::Proto(Event::Disconnected { .. })).then_some(())
    })
    .await;
    next_event(events, |e| {
        matches!(e, ClientEvent::Proto(Event::Connected { .. })).then_some(())
    })
    .await;
    eventually("the child is announced again", || {
        emu.connected_children(GATEWAY_NAME)
            .unwrap()
            .contains(&child.to_owned())
    })
    .await;
    let outcome = platform.rpc(child, RpcCall::two_way("hello", json!({})));
    let id = next_event(events, |e| match e {
        ClientEvent::Proto(Event::RpcRequest {
            device: Some(d),
            id,
            ..
        }) if d == child => Some(*id),
        _ => None,
    })
    .await;
    client
        .device_rpc_reply(child, id, json!("hi"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome.await, RpcOutcome::Reply(json!("hi")));
}

/// A wrong token: the first connect fails with the emulator's refusal.
pub fn wrong_token_options(platform: &Platform) -> ClientOptions {
    let mut options = platform.gateway_options();
    options.config.credentials = Credentials::AccessToken("WRONG".into());
    options
}

/// The provision key of the profile [`provisioning_options`] adds.
pub const PROVISION_KEY: &str = "SCENARIO_PROVISION_KEY";
/// Its secret.
pub const PROVISION_SECRET: &str = "SCENARIO_PROVISION_SECRET";

/// Adds a create-new provisioning profile to the emulator and returns options for a
/// provisioning connection that asks for a device named `device`.
pub fn provisioning_options(platform: &Platform, device: &str) -> ClientOptions {
    platform.emu.add_provision_profile(ProvisionProfile {
        device_type: "provisioned".into(),
        key: PROVISION_KEY.into(),
        secret: PROVISION_SECRET.into(),
        strategy: ProvisionStrategy::AllowCreateNew,
    });
    let addr = platform.emu.addr();
    let request = ProvisionRequest::new(PROVISION_KEY, PROVISION_SECRET).with_device_name(device);
    ClientOptions::with_config(
        addr.ip().to_string(),
        addr.port(),
        Config::provisioning(request),
    )
}

/// The answer on the provisioning connection's events: an access token for `device`, which
/// now exists; the stream then ends (the connection closed itself).
pub async fn provisioned(
    platform: &Platform,
    device: &str,
    events: &Events,
) -> ProvisionedCredentials {
    let credentials = events
        .provisioned()
        .await
        .expect("an answer before the stream ends")
        .expect("provisioned");
    assert!(matches!(
        credentials,
        ProvisionedCredentials::AccessToken(_)
    ));
    assert_eq!(
        platform.emu.device(device).expect("created").device_type,
        "provisioned"
    );
    let next = recv_within(events).await;
    assert!(
        matches!(
            next,
            Some(ClientEvent::Proto(Event::Disconnected {
                reason: DisconnectReason::ProvisioningEnded,
                reconnect_at: None
            }))
        ),
        "{next:?}"
    );
    assert_eq!(
        recv_within(events).await,
        None,
        "the provisioning connection is over"
    );
    credentials
}

/// The next event, or `None` when the stream ended; panics after 10 s.
async fn recv_within(events: &Events) -> Option<ClientEvent> {
    let timeout = async {
        async_io::Timer::after(Duration::from_secs(10)).await;
        panic!("no event and no end of the stream within 10 s");
    };
    futures_lite::future::or(events.recv(), timeout).await
}

/// Device options with the provisioned credentials and firmware updates on.
pub fn device_options(platform: &Platform, credentials: &ProvisionedCredentials) -> ClientOptions {
    let addr = platform.emu.addr();
    let mut config = credentials.to_config();
    config.role = Role::Device;
    let mut ota = OtaConfig::new();
    ota.chunk_size = 1500;
    config.ota = Some(ota);
    ClientOptions::with_config(addr.ip().to_string(), addr.port(), config)
}

/// A firmware package is assigned to `device` (connected with [`device_options`]); the
/// client downloads it in chunks, it verifies, and the client reports it installed. Both
/// sides are checked: the bytes the events carried, and the states the emulator stored.
pub async fn firmware_update(platform: &Platform, device: &str, client: &Client, events: &Events) {
    let image: Vec<u8> = (0..12_345u32).map(|i| (i % 241) as u8).collect();
    platform
        .emu
        .assign_ota(
            device,
            true,
            OtaPackage {
                title: "scenario-fw".into(),
                version: "v7".into(),
                checksum: ChecksumAlgorithm::Murmur3_32.checksum(&image),
                checksum_algorithm: "MURMUR3_32".into(),
                data: image.clone().into(),
            },
        )
        .unwrap();
    let kind = next_event(events, |e| match e {
        ClientEvent::Proto(Event::Ota(OtaEvent::Available(p))) => Some(p.kind),
        _ => None,
    })
    .await;
    assert_eq!(kind, OtaKind::Firmware);
    assert_eq!(
        client.ota_download(kind).await.unwrap().await.unwrap(),
        Delivery::Acknowledged
    );
    let mut received = Vec::new();
    loop {
        let ota = next_event(events, |e| match e {
            ClientEvent::Proto(Event::Ota(o)) => Some(o.clone()),
            _ => None,
        })
        .await;
        match ota {
            OtaEvent::Started(_) => {}
            OtaEvent::Chunk { offset, data, .. } => {
                assert_eq!(offset as usize, received.len());
                received.extend_from_slice(&data);
            }
            OtaEvent::Verified(p) => {
                assert_eq!(
                    (p.title.as_str(), p.version.as_str()),
                    ("scenario-fw", "v7")
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, image);
    client.ota_updating(kind).await.unwrap().await.unwrap();
    client
        .ota_updated(kind, "scenario-fw", "v7")
        .await
        .unwrap()
        .await
        .unwrap();
    let states: Vec<Value> = platform.emu.telemetry(device).unwrap()["fw_state"]
        .iter()
        .map(|p| p.value.clone())
        .collect();
    assert_eq!(
        states,
        [
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
    assert_eq!(
        platform.emu.latest_telemetry(device).unwrap()["current_fw_version"].value,
        json!("v7")
    );
}

/// Options for a gateway at `peer` that gives up on a write after 300 ms without progress
/// (and does not wait for `getSessionLimits`, which the peer never answers).
pub fn stalled_peer_options(peer: &StalledPeer) -> ClientOptions {
    let mut config = Config::new(Credentials::AccessToken("STALL_TOKEN".into()));
    config.limits.session_limits_wait = None;
    let mut options = ClientOptions::with_config("127.0.0.1", peer.addr().port(), config);
    options.write_stall_timeout = Duration::from_millis(300);
    options
}

/// Publishes 32 KiB QoS 0 messages to a peer that stopped reading (see [`StalledPeer`]) until
/// the socket buffers are full and the write blocks; within 10 s the adapter must report the
/// stalled write as a transport failure (a time-out, not the peer going away) instead of
/// hanging in it.
pub async fn write_stall_fails_the_transport(client: &Client, events: &Events) {
    let payload = Bytes::from(vec![b'x'; 32 * 1024]);
    let publishing = async {
        // 128 MiB at most: far more than loopback socket buffers hold.
        for _ in 0..4096 {
            let command = Command::Publish {
                topic: "v1/devices/me/telemetry".into(),
                payload: payload.clone(),
                qos: QoS::AtMostOnce,
            };
            if client.send(command).await.is_err() {
                break;
            }
        }
        futures_lite::future::pending::<std::io::ErrorKind>().await
    };
    let failed = next_event(events, |event| match event {
        ClientEvent::TransportFailed(TransportError::Io { kind, .. }) => Some(*kind),
        _ => None,
    });
    let kind = futures_lite::future::or(failed, publishing).await;
    // SO_SNDTIMEO (blocking adapter) reports `WouldBlock`, the async adapters `TimedOut`.
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "the transport failed with {kind:?}, not a write stall"
    );
}

/// How long a client of [`LateReaderPeer`] lingers after its last close: far longer than the
/// close takes when the client shuts its sending side, as it must.
const LATE_READER_LINGER: Duration = Duration::from_secs(20);

/// Options for a client of `peer` (no `getSessionLimits` wait: the peer never answers it;
/// a long [`ClientOptions::close_linger`]).
pub fn late_reader_options(peer: &LateReaderPeer) -> ClientOptions {
    let mut config = Config::new(Credentials::AccessToken("LATE_TOKEN".into()));
    config.limits.session_limits_wait = None;
    let mut options = ClientOptions::with_config("127.0.0.1", peer.addr().port(), config);
    options.close_linger = LATE_READER_LINGER;
    options
}

/// Writes 64 QoS 0 messages of 1 KiB, far more than [`LateReaderPeer`]'s receive window, and
/// closes while the peer is not reading yet; the peer then sends a byte. Every message and
/// the DISCONNECT must still arrive: an adapter that drops its socket right after the
/// DISCONNECT gets its unsent bytes thrown away by the reset its kernel answers that byte
/// with (`ClientOptions::close_linger`).
pub async fn close_delivers_everything_written(client: &Client, peer: LateReaderPeer) {
    const MESSAGES: usize = 64;
    let payload = Bytes::from(vec![b'x'; 1024]);
    for _ in 0..MESSAGES {
        let outcome = client
            .send(Command::Publish {
                topic: "v1/devices/me/telemetry".into(),
                payload: payload.clone(),
                qos: QoS::AtMostOnce,
            })
            .await
            .unwrap();
        assert_eq!(
            within("a QoS 0 outcome", outcome).await,
            Ok(Answer::Delivered(Delivery::Transmitted))
        );
    }
    let closing = std::time::Instant::now();
    within("close", client.close()).await;
    // The peer closes once it has read the client's end of stream: a client that never shuts
    // its sending side waits out its whole linger instead.
    assert!(
        closing.elapsed() < LATE_READER_LINGER / 4,
        "close took {:?}: the client did not end its sending side",
        closing.elapsed()
    );
    let received = peer.received().unwrap();
    assert_eq!(
        received,
        Received {
            publishes: MESSAGES,
            disconnect: true,
            error: None,
        },
        "what the peer got after the client closed"
    );
}

/// Options for [`coalesced_qos1_burst`]: the platform's gateway with an in-flight window of
/// 8 and 20 ms of read coalescing ([`ClientOptions::read_coalescing`]).
pub fn coalescing_options(platform: &Platform) -> ClientOptions {
    let mut options = platform.gateway_options();
    options.config.max_inflight = 8;
    options.read_coalescing = Some(Duration::from_millis(20));
    options
}

/// Awaits `future`, panicking after 10 s (any executor).
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    let timeout = async {
        async_io::Timer::after(Duration::from_secs(10)).await;
        panic!("timed out waiting for: {what}");
    };
    futures_lite::future::or(future, timeout).await
}

/// A burst of QoS 1 telemetry far larger than the in-flight window of
/// [`coalescing_options`], so the window stays full and the adapter coalesces after every
/// read: every outcome is an acknowledgement, the platform stored every value once and in
/// order, and a client-side RPC made in the middle of the burst gets its answer. An adapter
/// whose coalescing wait never ends fails here on a time-out.
pub async fn coalesced_qos1_burst(platform: &Platform, client: &Client) {
    const BURST: u64 = 300;
    let mut pending = Vec::new();
    for seq in 0..BURST {
        pending.push(client.telemetry(map(json!({ "seq": seq }))).await.unwrap());
    }
    let mut outcomes = pending.into_iter();
    if let Some(first) = outcomes.next() {
        assert_eq!(
            within("the burst's first outcome", first).await,
            Ok(Delivery::Acknowledged)
        );
    }
    // The window is full now and the rest of the burst waits behind it.
    let time = within("a client-side RPC during the burst", async {
        client.rpc("getCurrentTime", json!({})).await.unwrap().await
    })
    .await;
    assert_eq!(
        time,
        Ok(ClientRpcResponse::Ok(json!(1_700_000_000_000_i64)))
    );
    for (seq, outcome) in (1..).zip(outcomes) {
        assert_eq!(
            within("a burst outcome", outcome).await,
            Ok(Delivery::Acknowledged),
            "publish {seq}"
        );
    }
    let stored: Vec<Value> = platform.emu.telemetry(GATEWAY_NAME).unwrap()["seq"]
        .iter()
        .map(|point| point.value.clone())
        .collect();
    let sent: Vec<Value> = (0..BURST).map(|seq| json!(seq)).collect();
    assert_eq!(
        stored, sent,
        "the platform stored every value once, in order"
    );
    // One session throughout: nothing was sent twice.
    let stats = client.stats().await.unwrap();
    assert_eq!(
        (stats.disconnects, stats.retransmitted),
        (0, 0),
        "{stats:?}"
    );
}

/// Sub-device telemetry in batches ([`Client::send_batch`]) through the small in-flight
/// window of [`coalescing_options`]: 300 messages for five sub-devices in three batches, then
/// a batch with a command the core refuses between two it accepts. Every command gets its
/// own answer in its place, the sub-devices are announced on the way, and the platform
/// stored every value once and in order.
pub async fn batched_uplink(platform: &Platform, client: &Client) {
    use gateway_client::{Answer, ClientError};
    use gateway_proto::CommandError;
    const DEVICES: u64 = 5;
    let device = |seq: u64| format!("Batch Device {}", seq % DEVICES);
    let mut batches = Vec::new();
    for chunk in 0..3u64 {
        let commands = (chunk * 100..(chunk + 1) * 100)
            .map(|seq| Command::device_telemetry(device(seq), map(json!({ "seq": seq }))))
            .collect();
        batches.push(client.send_batch(commands).await.unwrap());
    }
    let mixed = client
        .send_batch(vec![
            Command::device_telemetry(device(300), map(json!({ "seq": 300 }))),
            Command::device_telemetry("", map(json!({ "seq": -1 }))),
            Command::device_telemetry(device(301), map(json!({ "seq": 301 }))),
        ])
        .await
        .unwrap();
    let acknowledged = Ok(Answer::Delivered(Delivery::Acknowledged));
    for batch in batches {
        let answers = within("a batch's answers", batch).await.unwrap();
        assert_eq!(answers.len(), 100);
        assert!(answers.iter().all(|a| *a == acknowledged), "{answers:?}");
    }
    assert_eq!(
        within("the mixed batch's answers", mixed).await.unwrap(),
        vec![
            acknowledged.clone(),
            Err(ClientError::Refused(CommandError::EmptyDeviceName)),
            acknowledged,
        ]
    );
    for d in 0..DEVICES {
        let stored: Vec<Value> = platform.emu.telemetry(&device(d)).unwrap()["seq"]
            .iter()
            .map(|point| point.value.clone())
            .collect();
        let sent: Vec<Value> = (0..302)
            .filter(|seq| seq % DEVICES == d)
            .map(|seq| json!(seq))
            .collect();
        assert_eq!(stored, sent, "{}: every value once, in order", device(d));
    }
}
