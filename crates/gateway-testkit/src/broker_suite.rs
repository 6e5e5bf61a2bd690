//! The checks every adapter runs against a real mosquitto, written once on the
//! runtime-neutral [`Client`] and parameterised by the adapter's `connect`.
//!
//! The broker harness blocks (it runs mosquitto programs), so async callers must run these
//! where blocking a thread does not stall the connection: a multi-threaded tokio runtime,
//! or an adapter whose connection runs on its own thread.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use gateway_client::{
    Client, ClientOptions, ConnectError, Delivery, Events, TlsError, TlsOptions, TransportError,
};
use gateway_proto::{ConnectRefusal, Credentials, ProtocolVersion, ReasonCode, Role};
use serde_json::{json, Map};

use crate::mosquitto::{BrokerConfig, BrokerTls, CountingSubscriber, Mosquitto, PemFile};
use crate::pki::TestPki;

const TELEMETRY: &str = "v1/devices/me/telemetry";

/// Client options for a broker: 127.0.0.1, device role, fast reconnects, and no
/// `getSessionLimits` (a plain broker has no ThingsBoard limits to tell).
pub fn options_for(
    broker: &Mosquitto,
    credentials: Credentials,
    protocol: ProtocolVersion,
) -> ClientOptions {
    let mut options = ClientOptions::new("127.0.0.1", broker.port(), credentials);
    options.config.protocol = protocol;
    options.config.role = Role::Device;
    options.config.limits.session_limits_wait = None;
    options.config.reconnect.initial_delay = Duration::from_millis(50);
    options.config.reconnect.max_delay = Duration::from_millis(300);
    options.config.reconnect.refused_delay = Duration::from_millis(300);
    options
}

fn reading(n: usize) -> Map<String, serde_json::Value> {
    json!({ "n": n }).as_object().cloned().unwrap_or_default()
}

/// Connect with MQTT 3.1.1 and with MQTT 5; a QoS 1 telemetry message reaches a subscriber
/// through the broker each time.
pub async fn connects_with_v311_and_v5<C, F>(connect: C)
where
    C: Fn(ClientOptions) -> F,
    F: Future<Output = Result<(Client, Events), ConnectError>>,
{
    let broker = Mosquitto::start(BrokerConfig::new()).expect("mosquitto");
    let sub =
        CountingSubscriber::start(&broker, TELEMETRY, 1, "versions-counter").expect("subscriber");
    for (i, protocol) in [ProtocolVersion::V311, ProtocolVersion::V5]
        .into_iter()
        .enumerate()
    {
        let options = options_for(
            &broker,
            Credentials::AccessToken(format!("token-{i}")),
            protocol,
        );
        let (client, _events) = connect(options).await.expect("connects");
        let sent = client.telemetry(reading(i)).await.unwrap().await;
        assert_eq!(sent, Ok(Delivery::Acknowledged), "{protocol:?}");
        client.close().await;
    }
    sub.wait_for_count(2, Duration::from_secs(10))
        .expect("both messages counted");
}

/// A password file: the wrong password is a typed refusal with mosquitto's code for each
/// protocol version; the right one connects.
pub async fn wrong_password_is_a_typed_refusal<C, F>(connect: C)
where
    C: Fn(ClientOptions) -> F,
    F: Future<Output = Result<(Client, Events), ConnectError>>,
{
    let broker =
        Mosquitto::start(BrokerConfig::new().user("gateway", "right password")).expect("mosquitto");
    let basic = |password: &str| Credentials::Basic {
        username: Some("gateway".into()),
        password: Some(password.into()),
    };
    // mosquitto answers a failed password check with "not authorized": 3.1.1 return code 5,
    // MQTT 5 reason code 0x87.
    for (protocol, raw, reason) in [
        (ProtocolVersion::V311, 5, ReasonCode::NotAuthorized),
        (ProtocolVersion::V5, 0x87, ReasonCode::NotAuthorized),
    ] {
        match connect(options_for(&broker, basic("wrong"), protocol)).await {
            Err(ConnectError::Refused(ConnectRefusal {
                raw: got,
                reason: why,
                ..
            })) => {
                assert_eq!((got, why), (raw, reason), "{protocol:?}");
            }
            other => panic!("{protocol:?}: expected a refusal, got {other:?}"),
        }
        let (client, _events) = connect(options_for(&broker, basic("right password"), protocol))
            .await
            .expect("the right password connects");
        client.close().await;
    }
}

fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "kill {signal} {pid}"
    );
}

/// The broker crashes in the middle of a QoS 1 stream, with messages sent and not yet
/// acknowledged, and comes back: every message reaches a subscriber at least once, and every
/// send reports an outcome (all of them success, since the core retransmits what was not
/// acknowledged).
pub async fn broker_restart_during_qos1_stream<C, F>(connect: C)
where
    C: Fn(ClientOptions) -> F,
    F: Future<Output = Result<(Client, Events), ConnectError>>,
{
    const MESSAGES: usize = 400;
    let mut broker = Mosquitto::start(BrokerConfig::new().persistence(true)).expect("mosquitto");
    let sub =
        CountingSubscriber::start(&broker, TELEMETRY, 1, "restart-counter").expect("subscriber");
    let (client, _events) = connect(options_for(
        &broker,
        Credentials::AccessToken("streamer".into()),
        ProtocolVersion::V5,
    ))
    .await
    .expect("connects");

    let mut pending = Vec::with_capacity(MESSAGES);
    pending.push(client.telemetry(reading(0)).await.unwrap());
    // Have the broker save its database now (SIGUSR1), so the subscriber's persistent
    // session survives the crash below: mosquitto_sub does not subscribe again by itself.
    let pid = broker.pid().expect("broker running").to_string();
    signal(&pid, "-USR1");
    // The log line comes when the save starts; mosquitto writes `mosquitto.db.new` and renames
    // it when done, so wait for the renamed file too: a SIGSTOP/SIGKILL in the middle of the
    // save would leave no database, and the subscriber's session (and subscription) with it.
    let db = broker
        .persistence_dir()
        .expect("persistence is on")
        .join("mosquitto.db");
    let saved = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        broker.log().contains("Saving in-memory database") && db.exists()
    });
    assert!(
        saved,
        "the broker saved its database:\n{}",
        broker.log_tail()
    );
    // Freeze the broker (SIGSTOP) so that what follows is sent but never acknowledged, then
    // kill it (SIGKILL, a crash) and start it again on the same port: the first half only
    // arrives if the client retransmits it on the new connection.
    signal(&pid, "-STOP");
    for n in 1..MESSAGES / 2 {
        pending.push(client.telemetry(reading(n)).await.unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    broker.kill().expect("kill");
    broker.restart().expect("restart");
    for n in MESSAGES / 2..MESSAGES {
        pending.push(client.telemetry(reading(n)).await.unwrap());
    }
    for (n, outcome) in pending.into_iter().enumerate() {
        assert_eq!(outcome.await, Ok(Delivery::Acknowledged), "message {n}");
    }
    sub.wait_for_distinct(MESSAGES, Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "{e}; counted {} distinct; subscriber restarts {}; broker log:\n{}",
                sub.distinct_payloads().len(),
                sub.restarts(),
                broker.log()
            )
        });
    let stats = client.stats().await.unwrap();
    assert!(stats.connections >= 2, "the client reconnected: {stats:?}");
    assert!(
        stats.retransmitted >= 1,
        "unacknowledged messages were sent again: {stats:?}"
    );
    client.close().await;
}

fn tls_broker(pki: &TestPki, require_certificate: bool) -> Mosquitto {
    let server = pki.server();
    let tls = BrokerTls::new(
        PemFile::contents(pki.ca_pem()),
        PemFile::contents(server.cert_pem.clone()),
        PemFile::contents(server.key_pem.clone()),
    )
    .require_certificate(require_certificate);
    Mosquitto::start(BrokerConfig::new().tls(tls)).expect("mosquitto with TLS")
}

/// TLS with a CA generated at test time: the client verifies the broker's certificate
/// (issued for 127.0.0.1) and publishes through it.
pub async fn tls_with_a_test_ca<C, F>(connect: C)
where
    C: Fn(ClientOptions) -> F,
    F: Future<Output = Result<(Client, Events), ConnectError>>,
{
    let pki = TestPki::generate().expect("pki");
    let broker = tls_broker(&pki, false);
    let options = options_for(
        &broker,
        Credentials::AccessToken("tls".into()),
        ProtocolVersion::V5,
    )
    .tls(TlsOptions::with_ca_pem(pki.ca_pem()));
    let (client, _events) = connect(options).await.expect("connects over TLS");
    let sent = client.telemetry(reading(1)).await.unwrap().await;
    assert_eq!(sent, Ok(Delivery::Acknowledged));
    client.close().await;
}

/// Mutual TLS with `require_certificate`: a client certificate from the CA connects
/// (ThingsBoard's X.509 credentials: no user name or password in the CONNECT); without one
/// the broker ends the handshake, which is a typed TLS error and no connection.
pub async fn mutual_tls_required<C, F>(connect: C)
where
    C: Fn(ClientOptions) -> F,
    F: Future<Output = Result<(Client, Events), ConnectError>>,
{
    let pki = TestPki::generate().expect("pki");
    let broker = tls_broker(&pki, true);
    let device = pki.client("device-7").expect("client certificate");
    let with_cert = options_for(&broker, Credentials::X509, ProtocolVersion::V311).tls(
        TlsOptions::with_ca_pem(pki.ca_pem())
            .client_identity_pem(device.cert_pem.clone(), device.key_pem.clone()),
    );
    let (client, _events) = connect(with_cert)
        .await
        .expect("connects with a certificate");
    let sent = client.telemetry(reading(1)).await.unwrap().await;
    assert_eq!(sent, Ok(Delivery::Acknowledged));
    client.close().await;

    let without = options_for(&broker, Credentials::X509, ProtocolVersion::V311)
        .tls(TlsOptions::with_ca_pem(pki.ca_pem()));
    match connect(without).await {
        // TLS 1.3: the client finishes its side of the handshake first and then reads the
        // broker's alert; TLS 1.2: the handshake itself fails. Both are TLS errors.
        Err(ConnectError::Transport(TransportError::Tls(TlsError::Handshake(e)))) => {
            assert!(
                matches!(e, rustls::Error::AlertReceived(_)),
                "a certificate alert from the broker: {e:?}"
            );
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

/// A client that trusts another CA refuses the broker's certificate: a typed TLS error, and
/// nothing is sent in clear.
pub async fn wrong_ca_is_a_tls_error<C, F>(connect: C)
where
    C: Fn(ClientOptions) -> F,
    F: Future<Output = Result<(Client, Events), ConnectError>>,
{
    let pki = TestPki::generate().expect("pki");
    let other = TestPki::generate().expect("another pki");
    let broker = tls_broker(&pki, false);
    let options = options_for(
        &broker,
        Credentials::AccessToken("tls".into()),
        ProtocolVersion::V5,
    )
    .tls(TlsOptions::with_ca_pem(other.ca_pem()));
    match connect(options).await {
        Err(ConnectError::Transport(TransportError::Tls(TlsError::Handshake(e)))) => {
            assert!(
                matches!(e, rustls::Error::InvalidCertificate(_)),
                "the broker's certificate is rejected: {e:?}"
            );
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // The broker never saw an MQTT CONNECT.
    assert!(
        !broker.log().contains("New client connected"),
        "{}",
        broker.log_tail()
    );
}
