//! The runner's TLS listener with real TLS clients (tokio-rustls, ring provider) speaking raw
//! MQTT bytes: token auth over TLS, X.509 device auth, refusals, handshake failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{connack, disconnect, puback, V311, V5};
use gateway_emulator::{
    x509, ClientAuth, EmulatorConfig, EmulatorHandle, NewDevice, StartError, TlsConfig, TlsError,
    X509ChainProfile,
};
use gateway_proto::wire::{self, Connect, Packet, Publish, QoS};
use gateway_proto::ProtocolVersion;
use gateway_testkit::pki::{CaKey, ClientCert, TestPki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

const TOKEN: &str = "TLS_TOKEN";

/// A client TLS configuration trusting `ca_pem`, presenting `cert` if given.
fn client_config(ca_pem: &str, cert: Option<&ClientCert>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Raw MQTT over any stream, with the workspace's codec.
struct Client<S> {
    stream: S,
    version: ProtocolVersion,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S, version: ProtocolVersion) -> Self {
        Self {
            stream,
            version,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, p: Packet) -> io::Result<()> {
        let mut out = BytesMut::new();
        wire::encode(&p, self.version, &mut out, usize::MAX).unwrap();
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    async fn connect(&mut self, username: Option<&str>) -> io::Result<()> {
        self.send(Packet::Connect(Connect {
            client_id: "tls-test".into(),
            keep_alive: 30,
            clean_session: true,
            username: username.map(str::to_owned),
            password: None,
        }))
        .await
    }

    async fn publish(&mut self, topic: &str, payload: Value, pkid: u16) -> io::Result<()> {
        self.send(Packet::Publish(Publish {
            topic: topic.into(),
            payload: Bytes::from(payload.to_string()),
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid,
        }))
        .await
    }

    /// The next packet; `None` at EOF or on a transport error (a TLS alert, a reset).
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = wire::decode(&mut self.buf, self.version, usize::MAX).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            let read = timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("server answered in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

type TlsClient = Client<tokio_rustls::client::TlsStream<TcpStream>>;

/// A TLS connection to `addr` verified as `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    version: ProtocolVersion,
) -> io::Result<TlsClient> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let stream = timeout(
        Duration::from_secs(5),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake finished in time")?;
    Ok(Client::new(stream, version))
}

async fn start(pki: &TestPki, client_auth: ClientAuth) -> EmulatorHandle {
    let tls =
        TlsConfig::new(&pki.server().cert_pem, &pki.server().key_pem).with_client_auth(client_auth);
    let emu = EmulatorHandle::start_tls(EmulatorConfig::default(), tls)
        .await
        .unwrap();
    emu.create_device(NewDevice::device("Token Device", TOKEN))
        .unwrap();
    emu
}

/// A token client over TLS connects, publishes and is acknowledged; the data is stored.
async fn token_round_trip(emu: &EmulatorHandle, pki: &TestPki, value: i64) {
    let config = client_config(pki.ca_pem(), None);
    let mut c = tls_connect(emu.tls_addr().unwrap(), config, V311)
        .await
        .unwrap();
    c.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0)));
    c.publish("v1/devices/me/telemetry", json!({ "n": value }), 1)
        .await
        .unwrap();
    assert_eq!(c.recv().await, Some(puback(1, 0)));
    assert_eq!(
        emu.latest_telemetry("Token Device").unwrap()["n"].value,
        json!(value)
    );
}

#[tokio::test]
async fn token_auth_works_over_tls_and_the_plain_port_stays() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    assert_ne!(emu.tls_addr(), Some(emu.addr()));
    assert!(emu.tls_addr().unwrap().ip().is_loopback());
    token_round_trip(&emu, &pki, 1).await;

    // v5 over TLS, and the session is reported as TLS without a client certificate.
    let mut c = tls_connect(
        emu.tls_addr().unwrap(),
        client_config(pki.ca_pem(), None),
        V5,
    )
    .await
    .unwrap();
    c.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0)));
    let s = emu.sessions();
    assert_eq!(s.len(), 1, "the v5 session took over the device");
    assert!(s[0].tls && !s[0].client_certificate);

    // Plain MQTT on the plain port.
    let mut plain = Client::new(TcpStream::connect(emu.addr()).await.unwrap(), V311);
    plain.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(plain.recv().await, Some(connack(0)));
    assert!(emu.sessions().iter().any(|s| !s.tls));
    emu.shutdown();
}

#[tokio::test]
async fn x509_client_certificate_authenticates_its_device() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    let cert = pki.client("meter-7").unwrap();
    emu.create_device(NewDevice::x509("Meter 7", &cert.cert_pem))
        .unwrap();
    for version in [V311, V5] {
        let config = client_config(pki.ca_pem(), Some(&cert));
        let mut c = tls_connect(emu.tls_addr().unwrap(), config, version)
            .await
            .unwrap();
        // The user name is ignored when a certificate is presented.
        c.connect(Some("whatever")).await.unwrap();
        assert_eq!(c.recv().await, Some(connack(0)), "{version:?}");
        c.publish("v1/devices/me/telemetry", json!({"kwh": 42}), 3)
            .await
            .unwrap();
        assert_eq!(c.recv().await, Some(puback(3, 0)));
        let s = emu.sessions();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].device.as_deref(), Some("Meter 7"));
        assert!(s[0].tls && s[0].client_certificate);
    }
    assert_eq!(
        emu.latest_telemetry("Meter 7").unwrap()["kwh"].value,
        json!(42)
    );
    assert!(emu.latest_telemetry("Token Device").unwrap().is_empty());
    emu.shutdown();
}

#[tokio::test]
async fn x509_gateway_over_tls() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    let cert = pki.client("gateway").unwrap();
    emu.create_device(NewDevice::x509_gateway("Cert GW", &cert.cert_pem))
        .unwrap();
    let config = client_config(pki.ca_pem(), Some(&cert));
    let mut gw = tls_connect(emu.tls_addr().unwrap(), config, V5)
        .await
        .unwrap();
    gw.connect(None).await.unwrap();
    assert_eq!(gw.recv().await, Some(connack(0)));
    gw.publish("v1/gateway/telemetry", json!({"Pump": [{"rpm": 900}]}), 9)
        .await
        .unwrap();
    assert_eq!(gw.recv().await, Some(puback(9, 0)));
    assert_eq!(
        emu.latest_telemetry("Pump").unwrap()["rpm"].value,
        json!(900)
    );
    assert_eq!(emu.connected_children("Cert GW").unwrap(), vec!["Pump"]);
    emu.shutdown();
}

#[tokio::test]
async fn unknown_client_certificate_is_refused_with_thingsboards_codes() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    let stranger = pki.client("stranger").unwrap();
    let config = client_config(pki.ca_pem(), Some(&stranger));

    let mut v3 = tls_connect(emu.tls_addr().unwrap(), config.clone(), V311)
        .await
        .unwrap();
    // A valid token does not rescue an unknown certificate.
    v3.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(v3.recv().await, Some(connack(5)));
    assert_eq!(v3.recv().await, None, "closed after the refusal");

    let mut v5 = tls_connect(emu.tls_addr().unwrap(), config, V5)
        .await
        .unwrap();
    v5.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(v5.recv().await, Some(connack(0x87)));
    assert_eq!(v5.recv().await, Some(disconnect(0x87)));
    assert_eq!(v5.recv().await, None);
    assert!(emu.sessions().is_empty());
    emu.shutdown();
}

#[tokio::test]
async fn thingsboard_mode_accepts_self_signed_and_foreign_certificates_at_the_tls_level() {
    let pki = TestPki::generate().unwrap();
    let other = TestPki::generate_named("Other CA").unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    // Registered self-signed certificate: ThingsBoard's usual X.509 device set-up.
    let own = TestPki::self_signed_client("self-made").unwrap();
    emu.create_device(NewDevice::x509("Self Made", &own.cert_pem))
        .unwrap();
    let mut c = tls_connect(
        emu.tls_addr().unwrap(),
        client_config(pki.ca_pem(), Some(&own)),
        V311,
    )
    .await
    .unwrap();
    c.connect(None).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0)));

    // A certificate from an unrelated CA completes the handshake and is refused at CONNECT.
    let foreign = other.client("foreign").unwrap();
    let mut c = tls_connect(
        emu.tls_addr().unwrap(),
        client_config(pki.ca_pem(), Some(&foreign)),
        V5,
    )
    .await
    .unwrap();
    c.connect(None).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0x87)));
    emu.shutdown();
}

#[tokio::test]
async fn expired_client_certificate_is_refused_at_connect() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    let old = pki.expired_client("old").unwrap();
    emu.create_device(NewDevice::x509("Old", &old.cert_pem))
        .unwrap();
    let mut c = tls_connect(
        emu.tls_addr().unwrap(),
        client_config(pki.ca_pem(), Some(&old)),
        V311,
    )
    .await
    .unwrap();
    c.connect(None).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(5)));
    emu.shutdown();
}

/// The handshake fails (on connect or, with TLS 1.3 client auth, on the first read): no CONNACK.
async fn assert_rejected(addr: SocketAddr, config: Arc<ClientConfig>) {
    match tls_connect(addr, config, V311).await {
        Err(_) => {}
        Ok(mut c) => {
            let _ = c.connect(Some(TOKEN)).await;
            assert_eq!(
                c.recv().await,
                None,
                "no MQTT answer after a failed handshake"
            );
        }
    }
}

#[tokio::test]
async fn verified_mode_rejects_certificates_the_ca_did_not_issue() {
    let pki = TestPki::generate().unwrap();
    let other = TestPki::generate_named("Other CA").unwrap();
    let emu = start(
        &pki,
        ClientAuth::VerifiedBy {
            ca_pem: pki.ca_pem().to_owned(),
        },
    )
    .await;
    let good = pki.client("good").unwrap();
    let own = TestPki::self_signed_client("own").unwrap();
    let foreign = other.client("foreign").unwrap();
    emu.create_device(NewDevice::x509("Good", &good.cert_pem))
        .unwrap();
    // Even registered, a certificate outside the CA fails the handshake in this mode.
    emu.create_device(NewDevice::x509("Own", &own.cert_pem))
        .unwrap();
    let addr = emu.tls_addr().unwrap();
    assert_rejected(addr, client_config(pki.ca_pem(), Some(&own))).await;
    assert_rejected(addr, client_config(pki.ca_pem(), Some(&foreign))).await;
    assert_rejected(
        addr,
        client_config(pki.ca_pem(), Some(&pki.expired_client("old").unwrap())),
    )
    .await;
    assert!(
        emu.sessions().is_empty(),
        "no session for a failed handshake"
    );

    let mut c = tls_connect(addr, client_config(pki.ca_pem(), Some(&good)), V5)
        .await
        .unwrap();
    c.connect(None).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0)));
    // Client certificates stay optional: token clients still get in.
    token_round_trip(&emu, &pki, 2).await;
    emu.shutdown();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_and_others_are_served() {
    let pki = TestPki::generate().unwrap();
    let other = TestPki::generate_named("Other CA").unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    let addr = emu.tls_addr().unwrap();
    for _ in 0..3 {
        let err = tls_connect(addr, client_config(other.ca_pem(), None), V311).await;
        assert!(err.is_err(), "the server certificate must not verify");
    }
    token_round_trip(&emu, &pki, 3).await;
    emu.shutdown();
}

#[tokio::test]
async fn plain_mqtt_on_the_tls_port_is_dropped_and_nothing_breaks() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    let mut plain = Client::new(
        TcpStream::connect(emu.tls_addr().unwrap()).await.unwrap(),
        V311,
    );
    plain.connect(Some(TOKEN)).await.unwrap();
    // Whatever comes back (a TLS alert at most) is no MQTT packet; then the connection ends.
    let mut junk = Vec::new();
    let read = timeout(Duration::from_secs(5), plain.stream.read_to_end(&mut junk))
        .await
        .expect("the emulator closed the connection");
    assert!(
        read.is_err() || junk.first() != Some(&0x20),
        "no CONNACK: {junk:?}"
    );
    // A client that connects and says nothing does not block others either.
    let _silent = TcpStream::connect(emu.tls_addr().unwrap()).await.unwrap();
    token_round_trip(&emu, &pki, 4).await;
    let mut c = Client::new(TcpStream::connect(emu.addr()).await.unwrap(), V311);
    c.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0)));
    emu.shutdown();
}

#[tokio::test]
async fn client_auth_off_does_not_ask_for_certificates() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::Off).await;
    let cert = pki.client("unasked").unwrap();
    emu.create_device(NewDevice::x509("Unasked", &cert.cert_pem))
        .unwrap();
    // The client has a certificate, but the server never requests it: token auth decides.
    let mut c = tls_connect(
        emu.tls_addr().unwrap(),
        client_config(pki.ca_pem(), Some(&cert)),
        V311,
    )
    .await
    .unwrap();
    c.connect(Some(TOKEN)).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0)));
    let s = emu.sessions();
    assert_eq!(s[0].device.as_deref(), Some("Token Device"));
    assert!(!s[0].client_certificate);
    emu.shutdown();
}

#[tokio::test]
async fn unusable_tls_settings_are_typed_errors() {
    let pki = TestPki::generate().unwrap();
    let cases = [
        (TlsConfig::new("", &pki.server().key_pem), "no certificate"),
        (TlsConfig::new(&pki.server().cert_pem, "garbage"), "key"),
        (
            // A key that does not belong to the certificate.
            TlsConfig::new(&pki.server().cert_pem, &pki.client("x").unwrap().key_pem),
            "rustls",
        ),
        (
            TlsConfig::new(&pki.server().cert_pem, &pki.server().key_pem).with_client_ca(""),
            "client ca",
        ),
    ];
    for (tls, what) in cases {
        match EmulatorHandle::start_tls(EmulatorConfig::default(), tls).await {
            Err(StartError::Tls(e)) => {
                let ok = match what {
                    "no certificate" => e == TlsError::NoCertificate,
                    "key" => matches!(e, TlsError::KeyPem(_)),
                    "rustls" => matches!(e, TlsError::Rustls(_)),
                    _ => matches!(e, TlsError::ClientCa(_)),
                };
                assert!(ok, "{what}: {e}");
                assert!(!e.to_string().is_empty());
            }
            other => panic!("{what}: expected a TLS error, got {other:?}"),
        }
    }
}

/// A client presenting `chain` (DER, leaf first) with the leaf's key `key_pem`, trusting the
/// server's CA `ca_pem`.
fn presenting(ca_pem: &str, chain: Vec<Vec<u8>>, key_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                chain.into_iter().map(CertificateDer::from).collect(),
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
    Arc::new(config)
}

/// A client presenting its leaf plus the CA (the chain a device uses with ThingsBoard's
/// X.509 chain provisioning).
fn chain_client_config(pki: &TestPki, cert: &ClientCert) -> Arc<ClientConfig> {
    presenting(pki.ca_pem(), pki.chain_der(cert), &cert.key_pem)
}

#[tokio::test]
async fn x509_chain_provisioning_end_to_end() {
    let pki = TestPki::generate().unwrap();
    let emu = start(&pki, ClientAuth::AnyCertificate).await;
    emu.add_x509_chain_profile(X509ChainProfile::new(
        "meters",
        pki.ca_pem(),
        r"^meter-(\d+)$",
    ))
    .unwrap();
    let cert = pki.client("meter-314").unwrap();
    for (version, pkid) in [(V5, 1), (V311, 2)] {
        let mut c = tls_connect(
            emu.tls_addr().unwrap(),
            chain_client_config(&pki, &cert),
            version,
        )
        .await
        .unwrap();
        c.connect(None).await.unwrap();
        assert_eq!(c.recv().await, Some(connack(0)), "{version:?}");
        c.publish("v1/devices/me/telemetry", json!({"n": pkid}), pkid)
            .await
            .unwrap();
        assert_eq!(c.recv().await, Some(puback(pkid, 0)));
    }
    let device = emu.device("314").expect("created from the CN");
    assert_eq!(device.device_type, "meters");
    assert_eq!(emu.latest_telemetry("314").unwrap()["n"].value, json!(2));

    // A leaf whose CN the regex does not match: the handshake succeeds, CONNECT is refused.
    let odd = pki.client("sensor-1").unwrap();
    let mut c = tls_connect(emu.tls_addr().unwrap(), chain_client_config(&pki, &odd), V5)
        .await
        .unwrap();
    c.connect(None).await.unwrap();
    assert_eq!(c.recv().await, Some(connack(0x87)));
    assert_eq!(c.recv().await, Some(disconnect(0x87)));
    emu.shutdown();
}

const CA_KEYS: [CaKey; 4] = [
    CaKey::EcdsaP256,
    CaKey::EcdsaP384,
    CaKey::Ed25519,
    CaKey::Rsa2048,
];

/// The alert a client receives when the server fails its handshake: on `connect` (TLS 1.2)
/// or, since a TLS 1.3 client finishes before the server has checked its certificate, on the
/// first read after sending a CONNECT. `None` if the connection carried an MQTT answer.
async fn handshake_alert(addr: SocketAddr, config: Arc<ClientConfig>) -> Option<AlertDescription> {
    fn alert(e: &io::Error) -> Option<AlertDescription> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(a) => Some(*a),
            _ => None,
        }
    }
    let mut c = match tls_connect(addr, config, V311).await {
        Err(e) => return alert(&e),
        Ok(c) => c,
    };
    let _ = c.connect(Some(TOKEN)).await;
    let mut chunk = [0u8; 64];
    match timeout(Duration::from_secs(5), c.stream.read(&mut chunk))
        .await
        .expect("the server answered in time")
    {
        Err(e) => alert(&e),
        Ok(_) => None,
    }
}

/// ThingsBoard's trust manager sends every multi-certificate chain through
/// `validateCertificateChain`: each certificate signed by the next one's key. A chain whose
/// links verify completes the handshake (no trust anchor involved: the CA need not be known
/// to the server) and the leaf authenticates at CONNECT, for every CA key type.
#[tokio::test]
async fn a_chain_whose_links_verify_is_accepted_for_every_ca_key_type() {
    let server = TestPki::generate().unwrap();
    let emu = start(&server, ClientAuth::AnyCertificate).await;
    let addr = emu.tls_addr().unwrap();
    for (i, key) in CA_KEYS.into_iter().enumerate() {
        let pki = TestPki::generate_with("Device CA", key).unwrap();
        let leaf = pki.client(&format!("linked-{i}")).unwrap();
        emu.create_device(NewDevice::x509(format!("Linked {i}"), &leaf.cert_pem))
            .unwrap();
        // Leaf + CA, and leaf + CA + CA (a self-signed root verifies against itself).
        let mut long = pki.chain_der(&leaf);
        long.push(pki.ca_der().to_vec());
        for chain in [pki.chain_der(&leaf), long] {
            let n = chain.len();
            let mut c = tls_connect(addr, presenting(server.ca_pem(), chain, &leaf.key_pem), V5)
                .await
                .unwrap();
            c.connect(None).await.unwrap();
            assert_eq!(
                c.recv().await,
                Some(connack(0)),
                "{key:?}, {n} certificates"
            );
            let s = emu.sessions();
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].device, Some(format!("Linked {i}")), "{key:?}");
        }
    }
    emu.shutdown();
}

/// A leaf presented with a CA that did not sign it, a leaf whose signature was altered, or a
/// chain whose second link is broken: the handshake fails with `certificate_unknown` (JSSE's
/// alert for a trust-manager `CertificateException`), no session is opened, nothing is created
/// (even with a chain profile that would provision the leaf) and a registered leaf does not
/// authenticate. For every CA key type (RSA's foreign CA is ECDSA: all RSA test CAs share one
/// key).
#[tokio::test]
async fn a_broken_link_fails_the_handshake_and_nothing_is_created_or_authenticated() {
    let server = TestPki::generate().unwrap();
    let emu = start(&server, ClientAuth::AnyCertificate).await;
    let addr = emu.tls_addr().unwrap();
    for (i, key) in CA_KEYS.into_iter().enumerate() {
        let pki = TestPki::generate_with("Device CA", key).unwrap();
        let foreign = match key {
            CaKey::Rsa2048 => TestPki::generate_named("Foreign CA").unwrap(),
            _ => TestPki::generate_with("Foreign CA", key).unwrap(),
        };
        // Without the link check, this profile would provision `chain-<i>` from the CN.
        emu.add_x509_chain_profile(X509ChainProfile::new(
            format!("foreign-{i}"),
            foreign.ca_pem(),
            r"^(chain-\d+)$",
        ))
        .unwrap();
        let known = pki.client(&format!("known-{i}")).unwrap();
        emu.create_device(NewDevice::x509(format!("Known {i}"), &known.cert_pem))
            .unwrap();
        let fresh = pki.client(&format!("chain-{i}")).unwrap();
        // A flipped bit in the last byte of the leaf's signature; registered as it is sent.
        let mut mutated = known.cert_der.clone();
        *mutated.last_mut().unwrap() ^= 0x01;
        emu.create_device(NewDevice::x509(
            format!("Mutated {i}"),
            &x509::credentials_value_from_der(&mutated),
        ))
        .unwrap();

        let cases: [(&str, Vec<Vec<u8>>, &str); 4] = [
            (
                "known leaf with a foreign CA",
                vec![known.cert_der.clone(), foreign.ca_der().to_vec()],
                &known.key_pem,
            ),
            (
                "provisionable leaf with the profile's (foreign) CA",
                vec![fresh.cert_der.clone(), foreign.ca_der().to_vec()],
                &fresh.key_pem,
            ),
            (
                "altered signature",
                vec![mutated.clone(), pki.ca_der().to_vec()],
                &known.key_pem,
            ),
            (
                "second link broken",
                vec![
                    known.cert_der.clone(),
                    pki.ca_der().to_vec(),
                    foreign.ca_der().to_vec(),
                ],
                &known.key_pem,
            ),
        ];
        for (what, chain, key_pem) in cases {
            assert_eq!(
                handshake_alert(addr, presenting(server.ca_pem(), chain, key_pem)).await,
                Some(AlertDescription::CertificateUnknown),
                "{key:?}: {what}"
            );
        }
        assert!(emu.sessions().is_empty(), "{key:?}: no session");
        assert!(
            emu.device(&format!("chain-{i}")).is_none(),
            "{key:?}: nothing provisioned"
        );

        // The same altered leaf alone is no chain: accepted at the TLS level, and it
        // authenticates its device at CONNECT.
        let mut c = tls_connect(
            addr,
            presenting(server.ca_pem(), vec![mutated], &known.key_pem),
            V311,
        )
        .await
        .unwrap();
        c.connect(None).await.unwrap();
        assert_eq!(c.recv().await, Some(connack(0)), "{key:?}");
        assert_eq!(
            emu.sessions()[0].device,
            Some(format!("Mutated {i}")),
            "{key:?}"
        );
        for s in emu.sessions() {
            emu.drop_session(s.id).unwrap();
        }
    }
    // The listener still serves everyone else.
    token_round_trip(&emu, &server, 5).await;
    emu.shutdown();
}

/// A single certificate is never link-checked: a self-signed one and a CA-issued leaf without
/// its CA both complete the handshake and are decided at CONNECT (known: accepted; unknown:
/// refused), as before the check.
#[tokio::test]
async fn a_single_certificate_is_not_link_checked() {
    let server = TestPki::generate().unwrap();
    let emu = start(&server, ClientAuth::AnyCertificate).await;
    let addr = emu.tls_addr().unwrap();
    let pki = TestPki::generate_with("Device CA", CaKey::Rsa2048).unwrap();
    let leaf = pki.client("alone").unwrap();
    let own = TestPki::self_signed_client("own").unwrap();
    emu.create_device(NewDevice::x509("Alone", &leaf.cert_pem))
        .unwrap();
    for (cert, expected) in [(&leaf, 0), (&own, 5)] {
        let mut c = tls_connect(
            addr,
            presenting(server.ca_pem(), vec![cert.cert_der.clone()], &cert.key_pem),
            V311,
        )
        .await
        .unwrap();
        c.connect(None).await.unwrap();
        assert_eq!(c.recv().await, Some(connack(expected)));
    }
    emu.shutdown();
}
