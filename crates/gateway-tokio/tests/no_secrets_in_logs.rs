//! Credentials never reach the logs: a whole session (connect, telemetry, a refused
//! connect, a TLS failure) logged at TRACE level is captured and searched for the secrets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use gateway_proto::Credentials;
use gateway_testkit::scenario::{self, Platform};
use gateway_tokio::{connect, TlsOptions};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_session_never_logs_credentials() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Global: the connection runs on other worker threads. (One test in this file.)
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let platform = Platform::start();
    // The gateway's own token, used for a whole session.
    let (client, _events) = connect(platform.gateway_options()).await.unwrap();
    let values = json!({"t": 1}).as_object().cloned().unwrap();
    client.telemetry(values).await.unwrap().await.unwrap();
    client.close().await;
    // A refused token and refused basic credentials.
    let _ = connect(scenario::wrong_token_options(&platform)).await;
    let mut basic = platform.gateway_options();
    basic.config.credentials = Credentials::Basic {
        username: Some("user-SECRET-1".into()),
        password: Some("pass-SECRET-2".into()),
    };
    let _ = connect(basic).await;
    // A TLS failure with a client key configured (the emulator's plain port speaks no TLS).
    let pki = gateway_testkit::pki::TestPki::generate().unwrap();
    let cert = pki.client("device").unwrap();
    let tls = platform.gateway_options().tls(
        TlsOptions::with_ca_pem(pki.ca_pem())
            .client_identity_pem(cert.cert_pem, cert.key_pem.clone()),
    );
    let _ = connect(tls).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("connected") && text.contains("transport failed"),
        "the capture works: {text}"
    );
    for secret in [
        scenario::GATEWAY_TOKEN,
        "WRONG",
        "pass-SECRET-2",
        "PRIVATE KEY",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in the logs:\n{text}"
        );
    }
    let key_body: String = cert.key_pem.lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        !text.contains(&key_body),
        "key material appears in the logs"
    );
}
