//! X.509 authentication on the sans-IO emulator: the client certificate a TLS transport
//! reports ([`PeerIdentity`]) decides the device, as in ThingsBoard's
//! `MqttTransportHandler.processX509CertConnect`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gateway_emulator::{
    x509, Credentials, EmulatorConfig, NewDevice, PeerIdentity, ProvisionProfile, ProvisionStrategy,
};
use gateway_proto::wire::{Packet, QoS};
use gateway_testkit::pki::TestPki;
use serde_json::json;

fn tls(cert: &[u8]) -> PeerIdentity {
    PeerIdentity::tls(Some(cert.to_vec()))
}

#[test]
fn a_known_certificate_authenticates_whatever_the_connect_says() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("sensor").unwrap();
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::x509("Sensor", &cert.cert_pem))
        .unwrap();
    for (version, user, pass) in [
        (V311, None, None),
        (V5, Some("not-a-token"), Some("pw")),
        // Even another device's valid token is not looked at.
        (V311, Some(DEV_TOKEN), None),
    ] {
        let (id, p) = h.connect_peer(version, tls(&cert.cert_der), "c", user, pass);
        assert_eq!(p, vec![connack(0)], "{version:?} {user:?}");
        h.publish_json(id, "v1/devices/me/telemetry", json!({"t": 1}), 1);
        assert_eq!(h.take(id), vec![puback(1, 0)]);
    }
    assert_eq!(
        h.emu.latest_telemetry("Sensor").unwrap()["t"].value,
        json!(1)
    );
    assert!(h.emu.latest_telemetry("Device").unwrap().is_empty());
    let info = h
        .emu
        .sessions()
        .into_iter()
        .find(|s| s.device.as_deref() == Some("Sensor"))
        .unwrap();
    assert!(info.tls && info.client_certificate);
}

#[test]
fn an_unknown_certificate_is_refused_and_never_retried_as_a_token() {
    let pki = TestPki::generate().unwrap();
    let stranger = pki.client("stranger").unwrap();
    let mut h = Harness::new();
    // v3.1.1: CONNACK 5, close. The valid token in the user name does not help.
    let (id, p) = h.connect_peer(V311, tls(&stranger.cert_der), "c", Some(DEV_TOKEN), None);
    assert_eq!(p, vec![connack(5)]);
    assert!(h.closed(id));
    // v5: CONNACK 0x87 NOT_AUTHORIZED and DISCONNECT 0x87 (never 0x86 or 0x85 with a cert).
    let (id, p) = h.connect_peer(V5, tls(&stranger.cert_der), "cid", Some("u"), Some("p"));
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    assert!(h.closed(id));
    let (_, p) = h.connect_peer(V5, tls(&stranger.cert_der), "cid", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
}

#[test]
fn without_a_certificate_tls_clients_use_tokens() {
    let mut h = Harness::new();
    let (id, p) = h.connect_peer(V5, PeerIdentity::tls(None), "c", Some(DEV_TOKEN), None);
    assert_eq!(p, vec![connack(0)]);
    let info = h.emu.sessions().into_iter().find(|s| s.id == id).unwrap();
    assert!(info.tls && !info.client_certificate);
    // The usual refusal codes apply again.
    let (_, p) = h.connect_peer(V5, PeerIdentity::tls(None), "c", Some("WRONG"), None);
    assert_eq!(p, vec![connack(0x86), disconnect(0x86)]);
}

#[test]
fn provision_identity_wins_over_a_certificate() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("any").unwrap();
    let mut h = Harness::new();
    let (id, p) = h.connect_peer(V311, tls(&cert.cert_der), "c", Some("provision"), None);
    assert_eq!(p, vec![connack(0)]);
    let info = h.emu.sessions().into_iter().find(|s| s.id == id).unwrap();
    assert!(info.provision);
}

#[test]
fn certificates_outside_their_validity_are_refused_unless_the_check_is_skipped() {
    let pki = TestPki::generate().unwrap();
    let old = pki.expired_client("old").unwrap();
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::x509("Old", &old.cert_pem))
        .unwrap();
    let (_, p) = h.connect_peer(V5, tls(&old.cert_der), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);

    let mut config = EmulatorConfig::default();
    config.skip_validity_check_for_client_cert = true;
    let mut h = Harness::with_config(config);
    h.emu
        .create_device(NewDevice::x509("Old", &old.cert_pem))
        .unwrap();
    let (_, p) = h.connect_peer(V311, tls(&old.cert_der), "c", None, None);
    assert_eq!(p, vec![connack(0)]);
}

#[test]
fn unreadable_certificate_bytes_are_refused() {
    let mut h = Harness::new();
    let (_, p) = h.connect_peer(V311, tls(b"\x30\x03junk"), "c", None, None);
    assert_eq!(p, vec![connack(5)]);
    let (_, p) = h.connect_peer(V5, tls(&[]), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
}

#[test]
fn backend_failure_on_the_x509_path() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("s").unwrap();
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::x509("S", &cert.cert_pem))
        .unwrap();
    h.emu.set_auth_unavailable(true);
    let (_, p) = h.connect_peer(V311, tls(&cert.cert_der), "c", None, None);
    assert_eq!(p, vec![connack(3)]);
    // CONNACK SERVER_UNAVAILABLE, DISCONNECT IMPLEMENTATION_SPECIFIC_ERROR on this path.
    let (_, p) = h.connect_peer(V5, tls(&cert.cert_der), "c", None, None);
    assert_eq!(p, vec![connack(0x88), disconnect(0x83)]);
}

#[test]
fn an_x509_gateway_gets_the_gateway_api_and_takes_over_its_older_session() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("gw").unwrap();
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::x509_gateway("Cert Gateway", &cert.cert_pem))
        .unwrap();
    let (old, p) = h.connect_peer(V5, tls(&cert.cert_der), "a", None, None);
    assert_eq!(p, vec![connack(0)]);
    let (id, p) = h.connect_peer(V5, tls(&cert.cert_der), "b", None, None);
    assert_eq!(p, vec![connack(0)]);
    assert_eq!(h.take(old), vec![disconnect(0x8E)]);
    h.publish_json(id, "v1/gateway/telemetry", json!({"Child": [{"v": 2}]}), 5);
    assert_eq!(h.take(id), vec![puback(5, 0)]);
    assert_eq!(
        h.emu.latest_telemetry("Child").unwrap()["v"].value,
        json!(2)
    );
    assert_eq!(
        h.emu.connected_children("Cert Gateway").unwrap(),
        vec!["Child"]
    );
}

#[test]
fn credentials_are_stored_and_hashed_like_thingsboard() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("h").unwrap();
    let from_pem = Credentials::x509_pem(&cert.cert_pem);
    let from_der = Credentials::x509_der(&cert.cert_der);
    assert_eq!(from_pem, from_der);
    let Credentials::X509 { certificate } = &from_pem else {
        panic!("not X.509")
    };
    assert!(!certificate.contains('\n') && !certificate.contains("BEGIN"));
    let id = from_pem.x509_credentials_id().unwrap();
    assert_eq!(id, x509::credentials_id(certificate));
    assert_eq!(id.len(), 64);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(
        Credentials::AccessToken("t".into()).x509_credentials_id(),
        None
    );

    // The same certificate cannot belong to two devices.
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::x509("One", &cert.cert_pem))
        .unwrap();
    assert!(h
        .emu
        .create_device(NewDevice::x509("Two", &cert.cert_pem))
        .is_err());
}

#[test]
fn a_certificate_provisioned_over_mqtt_then_authenticates() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("new-device").unwrap();
    let mut h = Harness::new();
    h.emu.add_provision_profile(ProvisionProfile {
        device_type: "sensors".into(),
        key: "KEY".into(),
        secret: "SECRET".into(),
        strategy: ProvisionStrategy::AllowCreateNew,
    });
    let (id, p) = h.connect_with(V311, "c", Some("provision"), None);
    assert_eq!(p, vec![connack(0)]);
    assert_eq!(
        h.subscribe(id, &[("/provision/response", QoS::AtLeastOnce)]),
        vec![1]
    );
    h.publish_json(
        id,
        "/provision/request",
        json!({
            "deviceName": "Provisioned",
            "provisionDeviceKey": "KEY",
            "provisionDeviceSecret": "SECRET",
            "credentialsType": "X509_CERTIFICATE",
            "hash": cert.cert_pem,
        }),
        1,
    );
    let packets = h.take(id);
    assert_eq!(packets[0], puback(1, 0));
    let (topic, body, _) = published(&packets[1]);
    assert_eq!(topic, "/provision/response");
    assert_eq!(body["status"], json!("SUCCESS"));
    assert_eq!(body["credentialsType"], json!("X509_CERTIFICATE"));
    // The stored value: the certificate without markers and line breaks.
    assert_eq!(
        body["credentialsValue"],
        json!(x509::credentials_value_from_der(&cert.cert_der))
    );

    let (dev, p) = h.connect_peer(V5, tls(&cert.cert_der), "x", None, None);
    assert_eq!(p, vec![connack(0)]);
    h.publish_json(dev, "v1/devices/me/attributes", json!({"fw": "v1"}), 2);
    assert_eq!(h.take(dev), vec![puback(2, 0)]);
    assert_eq!(
        h.emu.client_attributes("Provisioned").unwrap()["fw"],
        json!("v1")
    );
    assert_eq!(h.emu.device("Provisioned").unwrap().device_type, "sensors");
}

#[test]
fn provisioning_x509_without_a_certificate_falls_back_to_a_token() {
    let mut h = Harness::new();
    h.emu.add_provision_profile(ProvisionProfile {
        device_type: "default".into(),
        key: "K".into(),
        secret: "S".into(),
        strategy: ProvisionStrategy::AllowCreateNew,
    });
    let (id, _) = h.connect_with(V311, "provision", None, None);
    h.publish_json(
        id,
        "/provision/request",
        json!({"deviceName": "NoCert", "provisionDeviceKey": "K",
               "provisionDeviceSecret": "S", "credentialsType": "X509_CERTIFICATE"}),
        1,
    );
    let packets = h.take(id);
    let (_, body, _) = published(&packets[1]);
    assert_eq!(body["credentialsType"], json!("ACCESS_TOKEN"));
    let token = body["credentialsValue"].as_str().unwrap().to_owned();
    assert!(matches!(
        h.emu.device("NoCert").unwrap().credentials,
        Some(Credentials::AccessToken(t)) if t == token
    ));
    let (_, p) = h.connect_with(V311, "c", Some(&token), None);
    assert!(matches!(p.as_slice(), [Packet::ConnAck(a)] if a.code == 0));
}
