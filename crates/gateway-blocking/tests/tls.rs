//! The blocking adapter's TLS path: the shared scenario over mutual TLS, a reconnect through
//! TLS, and typed handshake failures.
//!
//! Until the shared test PKI and the TLS emulator land in gateway-testkit, this file makes
//! its own certificates with rcgen and puts a small TLS-terminating proxy (rustls, blocking
//! std::net, test-only polling) in front of the plain emulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use gateway_blocking::{
    connect, ClientEvent, ClientOptions, ConnectError, TlsError, TlsOptions, TransportError,
};
use gateway_proto::{DisconnectReason, Event};
use gateway_testkit::scenario::{self, Platform};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// A CA, a server certificate for `localhost` and a client certificate, all PEM.
struct Pki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    ca_der: CertificateDer<'static>,
    client_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["gateway".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server_chain: vec![server.der().clone()],
        server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        client_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// Server TLS settings; with `client_ca`, a client certificate signed by it is required.
fn server_config(pki: &Pki, client_ca: Option<&CertificateDer<'static>>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(
        builder
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .unwrap(),
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Accepts TLS on 127.0.0.1 and forwards the plaintext to `upstream` (the emulator), one
/// thread per connection. When the upstream side closes, the client gets close_notify.
fn tls_proxy(config: Arc<ServerConfig>, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || serve(tcp, config, upstream));
        }
    });
    addr
}

fn serve(mut tcp: TcpStream, config: Arc<ServerConfig>, upstream: SocketAddr) {
    let tick = Some(Duration::from_millis(2));
    tcp.set_read_timeout(tick).unwrap();
    let mut tls = ServerConnection::new(config).unwrap();
    while tls.is_handshaking() {
        match tls.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                // The alert is written; let the client read it before the socket goes
                // (closing with unread data would reset the connection).
                let _ = tcp.shutdown(Shutdown::Write);
                let until = Instant::now() + Duration::from_secs(1);
                let mut sink = [0u8; 4096];
                while Instant::now() < until {
                    match tcp.read(&mut sink) {
                        Ok(0) => break,
                        Err(e) if !is_timeout(&e) => break,
                        _ => {}
                    }
                }
                return;
            }
        }
    }
    let mut server = TcpStream::connect(upstream).unwrap();
    server.set_read_timeout(tick).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Client to server (plaintext may also be left over from the handshake).
        match tls.read_tls(&mut tcp) {
            Ok(0) => break,
            Ok(_) => {
                if tls.process_new_packets().is_err() {
                    let _ = tls.write_tls(&mut tcp);
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
        let mut plain = Vec::new();
        let client_done = match tls.reader().read_to_end(&mut plain) {
            // close_notify from the client.
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        if server.write_all(&plain).is_err() || client_done {
            break;
        }
        // Server to client.
        match server.read(&mut buf) {
            Ok(0) => {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut tcp);
                break;
            }
            Ok(n) => tls.writer().write_all(&buf[..n]).unwrap(),
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
        while tls.wants_write() {
            if tls.write_tls(&mut tcp).is_err() {
                return;
            }
        }
    }
}

/// The platform's gateway options, pointed at the proxy, verifying `localhost`.
fn tls_options(platform: &Platform, proxy: SocketAddr, tls: TlsOptions) -> ClientOptions {
    let mut options = platform.gateway_options();
    options.host = proxy.ip().to_string();
    options.port = proxy.port();
    options.tls(tls.server_name("localhost"))
}

#[test]
fn round_trip_and_reconnect_over_mutual_tls() {
    let platform = Platform::start();
    let pki = pki();
    let proxy = tls_proxy(server_config(&pki, Some(&pki.ca_der)), platform.emu.addr());
    let tls = TlsOptions::with_ca_pem(pki.ca_pem.clone())
        .client_identity_pem(pki.client_pem.clone(), pki.client_key_pem.clone());
    let (client, events) = connect(tls_options(&platform, proxy, tls)).unwrap();
    block_on(scenario::gateway_and_device_round_trip(
        &platform,
        &client.to_async(),
        &events,
    ));
    // The emulator drops the session, the proxy ends TLS with close_notify, the client
    // dials and handshakes again.
    block_on(scenario::reconnect_and_reannounce(
        &platform,
        &client.to_async(),
        &events,
    ));
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
fn an_untrusted_server_certificate_is_a_typed_tls_error() {
    let platform = Platform::start();
    let pki = pki();
    let other = self::pki();
    let proxy = tls_proxy(server_config(&pki, None), platform.emu.addr());
    let tls = TlsOptions::with_ca_pem(other.ca_pem.clone());
    match connect(tls_options(&platform, proxy, tls)) {
        Err(ConnectError::Transport(TransportError::Tls(TlsError::Handshake(e)))) => {
            assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_client_certificate_is_a_typed_tls_error() {
    let platform = Platform::start();
    let pki = pki();
    let proxy = tls_proxy(server_config(&pki, Some(&pki.ca_der)), platform.emu.addr());
    // With TLS 1.3 the client finishes its side of the handshake before the server refuses;
    // the refusal (an alert) then arrives through the reader thread.
    let tls = TlsOptions::with_ca_pem(pki.ca_pem.clone());
    match connect(tls_options(&platform, proxy, tls)) {
        Err(ConnectError::Transport(TransportError::Tls(TlsError::Handshake(e)))) => {
            assert!(matches!(e, rustls::Error::AlertReceived(_)), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_burst_larger_than_the_tls_buffer_is_delivered() {
    let platform = Platform::start();
    let pki = pki();
    let proxy = tls_proxy(server_config(&pki, None), platform.emu.addr());
    let tls = TlsOptions::with_ca_pem(pki.ca_pem.clone());
    let (client, _events) = connect(tls_options(&platform, proxy, tls)).unwrap();
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
