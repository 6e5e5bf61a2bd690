//! Provisioning over protobuf on the sans-IO emulator (spec §3.6; ThingsBoard's
//! `MqttTransportHandler.processProvisionSessionMsg` and `DeviceProvisionCallback`): a request
//! that is not JSON is read as a `transport.ProvisionDeviceRequestMsg` and answered with a
//! `ProvisionDeviceResponseMsg`. Requests are built and answers decoded with prost structs
//! derived here by hand from `queue.proto`, independently of `gateway_proto`'s codec.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use gateway_emulator::{x509, Credentials, ProvisionProfile, ProvisionStrategy, SessionId};
use gateway_proto::wire::{Packet, QoS};
use gateway_testkit::pki::TestPki;
use prost::Message;
use serde_json::{json, Value};

// ---- queue.proto, package transport -----------------------------------------------------------

/// `transport.CredentialsType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
enum CredentialsType {
    AccessToken = 0,
    X509Certificate = 1,
    MqttBasic = 2,
    Lwm2mCredentials = 3,
}

/// `transport.ResponseStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
enum ResponseStatus {
    Unknown = 0,
    Success = 1,
    NotFound = 2,
    Failure = 3,
}

#[derive(Clone, PartialEq, Message)]
struct ProvisionDeviceRequestMsg {
    #[prost(string, tag = "1")]
    device_name: String,
    #[prost(enumeration = "CredentialsType", tag = "2")]
    credentials_type: i32,
    #[prost(message, optional, tag = "3")]
    provision_device_credentials_msg: Option<ProvisionDeviceCredentialsMsg>,
    #[prost(message, optional, tag = "4")]
    credentials_data_proto: Option<CredentialsDataProto>,
    #[prost(bool, tag = "5")]
    gateway: bool,
}

#[derive(Clone, PartialEq, Message)]
struct ProvisionDeviceCredentialsMsg {
    #[prost(string, tag = "1")]
    provision_device_key: String,
    #[prost(string, tag = "2")]
    provision_device_secret: String,
}

#[derive(Clone, PartialEq, Message)]
struct CredentialsDataProto {
    #[prost(message, optional, tag = "1")]
    validate_device_token_request_msg: Option<ValidateDeviceTokenRequestMsg>,
    #[prost(message, optional, tag = "2")]
    validate_device_x509_cert_request_msg: Option<ValidateDeviceX509CertRequestMsg>,
    #[prost(message, optional, tag = "3")]
    validate_basic_mqtt_cred_request_msg: Option<ValidateBasicMqttCredRequestMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct ValidateDeviceTokenRequestMsg {
    #[prost(string, tag = "1")]
    token: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValidateDeviceX509CertRequestMsg {
    #[prost(string, tag = "1")]
    hash: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValidateBasicMqttCredRequestMsg {
    #[prost(string, tag = "1")]
    client_id: String,
    #[prost(string, tag = "2")]
    user_name: String,
    #[prost(string, tag = "3")]
    password: String,
}

#[derive(Clone, PartialEq, Message)]
struct ProvisionDeviceResponseMsg {
    #[prost(enumeration = "ResponseStatus", tag = "1")]
    status: i32,
    #[prost(enumeration = "CredentialsType", tag = "2")]
    credentials_type: i32,
    #[prost(string, tag = "3")]
    credentials_value: String,
}

// ---- helpers -----------------------------------------------------------------------------------

const KEY: &str = "KEY";
const SECRET: &str = "SECRET";

fn harness() -> Harness {
    let mut h = Harness::new();
    h.emu.add_provision_profile(ProvisionProfile {
        device_type: "sensor".into(),
        key: KEY.into(),
        secret: SECRET.into(),
        strategy: ProvisionStrategy::AllowCreateNew,
    });
    h
}

/// A request with the profile's key and secret (or `secret`).
fn request(name: &str, secret: &str) -> ProvisionDeviceRequestMsg {
    ProvisionDeviceRequestMsg {
        device_name: name.into(),
        provision_device_credentials_msg: Some(ProvisionDeviceCredentialsMsg {
            provision_device_key: KEY.into(),
            provision_device_secret: secret.into(),
        }),
        ..ProvisionDeviceRequestMsg::default()
    }
}

/// A provision-only session subscribed to `/provision/response`.
fn provision_session(h: &mut Harness, version: gateway_proto::ProtocolVersion) -> SessionId {
    let (id, p) = h.connect_with(version, "provision", None, None);
    assert_eq!(p, vec![connack(0)]);
    assert_eq!(
        h.subscribe(id, &[("/provision/response", QoS::AtLeastOnce)]),
        vec![1]
    );
    id
}

/// Publishes `payload` on `/provision/request` and expects PUBACK 0 then the answer; returns
/// the answer's raw bytes.
fn ask(h: &mut Harness, id: SessionId, payload: &[u8], pkid: u16) -> Vec<u8> {
    h.publish(id, "/provision/request", payload, pkid);
    match h.take(id).as_slice() {
        [ack, Packet::Publish(answer)] => {
            assert_eq!(*ack, puback(pkid, 0), "PUBACK first");
            assert_eq!(answer.topic, "/provision/response");
            assert_eq!(answer.qos, QoS::AtLeastOnce);
            answer.payload.to_vec()
        }
        other => panic!("expected PUBACK and the answer, got {other:?}"),
    }
}

fn decode(answer: &[u8]) -> ProvisionDeviceResponseMsg {
    ProvisionDeviceResponseMsg::decode(answer).expect("a protobuf ProvisionDeviceResponseMsg")
}

fn success(ty: CredentialsType, value: &str) -> ProvisionDeviceResponseMsg {
    ProvisionDeviceResponseMsg {
        status: ResponseStatus::Success as i32,
        credentials_type: ty as i32,
        credentials_value: value.into(),
    }
}

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn a_protobuf_request_gets_a_protobuf_access_token_and_the_session_closes_60_s_later() {
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    // The server generates the token: no credentials data at all.
    let answer = ask(&mut h, id, &request("Generated", SECRET).encode_to_vec(), 1);
    let token = match h.emu.device("Generated").unwrap().credentials {
        Some(Credentials::AccessToken(t)) => t,
        other => panic!("{other:?}"),
    };
    assert!(!token.is_empty());
    assert_eq!(
        decode(&answer),
        success(CredentialsType::AccessToken, &token)
    );
    // The exact bytes: status = 1 SUCCESS; ACCESS_TOKEN (0) left out; credentialsValue = 3.
    let mut expected = vec![0x08, 0x01, 0x1a, u8::try_from(token.len()).unwrap()];
    expected.extend_from_slice(token.as_bytes());
    assert_eq!(answer, expected);
    assert_eq!(h.emu.device("Generated").unwrap().device_type, "sensor");
    assert!(!h.emu.device("Generated").unwrap().gateway);
    // Closed 60 s after the answer, as for JSON.
    h.advance(Duration::from_secs(59));
    assert!(!h.closed(id));
    h.advance(Duration::from_secs(1));
    assert!(h.closed(id));
    // The token works.
    h.connect(V311, &token);
}

#[test]
fn a_protobuf_request_with_its_own_token_and_as_a_gateway() {
    let mut h = harness();
    let id = provision_session(&mut h, V311);
    let mut req = request("Chosen", SECRET);
    req.credentials_type = CredentialsType::AccessToken as i32;
    req.credentials_data_proto = Some(CredentialsDataProto {
        validate_device_token_request_msg: Some(ValidateDeviceTokenRequestMsg {
            token: "CHOSEN_TOKEN".into(),
        }),
        ..CredentialsDataProto::default()
    });
    req.gateway = true;
    let answer = ask(&mut h, id, &req.encode_to_vec(), 1);
    assert_eq!(
        decode(&answer),
        success(CredentialsType::AccessToken, "CHOSEN_TOKEN")
    );
    assert!(h.emu.device("Chosen").unwrap().gateway);
    h.connect(V5, "CHOSEN_TOKEN");
}

#[test]
fn a_protobuf_request_for_mqtt_basic_gets_the_credentials_as_json_text() {
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    let mut req = request("Basic", SECRET);
    req.credentials_type = CredentialsType::MqttBasic as i32;
    req.credentials_data_proto = Some(CredentialsDataProto {
        validate_basic_mqtt_cred_request_msg: Some(ValidateBasicMqttCredRequestMsg {
            client_id: "cid".into(),
            user_name: "user".into(),
            password: "pass".into(),
        }),
        ..CredentialsDataProto::default()
    });
    let answer = decode(&ask(&mut h, id, &req.encode_to_vec(), 1));
    assert_eq!(answer.status, ResponseStatus::Success as i32);
    assert_eq!(answer.credentials_type, CredentialsType::MqttBasic as i32);
    // The JSON response's object, as text.
    assert_eq!(
        serde_json::from_str::<Value>(&answer.credentials_value).unwrap(),
        json!({"clientId": "cid", "userName": "user", "password": "pass"})
    );
    assert_eq!(
        h.emu.device("Basic").unwrap().credentials,
        Some(Credentials::Basic {
            client_id: Some("cid".into()),
            username: Some("user".into()),
            password: Some("pass".into()),
        })
    );
    let (_, p) = h.connect_with(V5, "cid", Some("user"), Some("pass"));
    assert_eq!(p, vec![connack(0)]);
}

#[test]
fn a_protobuf_request_for_x509_stores_the_certificate_from_the_hash_field() {
    let pki = TestPki::generate().unwrap();
    let cert = pki.client("proto-device").unwrap();
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    let mut req = request("Cert", SECRET);
    req.credentials_type = CredentialsType::X509Certificate as i32;
    req.credentials_data_proto = Some(CredentialsDataProto {
        validate_device_x509_cert_request_msg: Some(ValidateDeviceX509CertRequestMsg {
            hash: cert.cert_pem.clone(),
        }),
        ..CredentialsDataProto::default()
    });
    let answer = decode(&ask(&mut h, id, &req.encode_to_vec(), 1));
    let stored = x509::credentials_value_from_der(&cert.cert_der);
    assert_eq!(answer, success(CredentialsType::X509Certificate, &stored));
    let (_, p) = h.connect_peer(
        V5,
        gateway_emulator::PeerIdentity::tls(Some(cert.cert_der.clone())),
        "x",
        None,
        None,
    );
    assert_eq!(p, vec![connack(0)]);
}

#[test]
fn protobuf_failures_are_a_status_only() {
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    // Bad secret: NOT_FOUND, nothing created.
    let answer = ask(&mut h, id, &request("Nope", "WRONG").encode_to_vec(), 1);
    assert_eq!(answer, [0x08, 0x02]);
    assert_eq!(
        decode(&answer),
        ProvisionDeviceResponseMsg {
            status: ResponseStatus::NotFound as i32,
            ..ProvisionDeviceResponseMsg::default()
        }
    );
    assert!(h.emu.device("Nope").is_none());
    // An existing name: FAILURE.
    let answer = ask(&mut h, id, &request("Device", SECRET).encode_to_vec(), 2);
    assert_eq!(answer, [0x08, 0x03]);
    assert_eq!(decode(&answer).status, ResponseStatus::Failure as i32);
    // An empty payload is JSON null to Gson, not an object: read as protobuf, an empty
    // message, whose empty key finds no profile.
    let answer = ask(&mut h, id, b"", 3);
    assert_eq!(answer, [0x08, 0x02]);
}

/// The JSON provisioning request for device "J" with the profile's key and secret.
fn json_request_for_j() -> Vec<u8> {
    json!({"deviceName": "J", "provisionDeviceKey": KEY, "provisionDeviceSecret": SECRET,
           "token": "J_TOKEN"})
    .to_string()
    .into_bytes()
}

#[test]
fn a_json_request_still_gets_json() {
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    let answer = ask(&mut h, id, &json_request_for_j(), 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"credentialsValue": "J_TOKEN", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"})
    );
    // NOT_FOUND in JSON keeps its message.
    let answer = ask(
        &mut h,
        id,
        json!({"provisionDeviceKey": KEY, "provisionDeviceSecret": "WRONG"})
            .to_string()
            .as_bytes(),
        2,
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"})
    );
}

#[test]
fn after_a_protobuf_request_the_session_answers_in_protobuf() {
    // ThingsBoard sets the session's provision payload type to PROTOBUF on the fallback and
    // never back: a later JSON request on the same session is read as JSON but answered in
    // protobuf.
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    let answer = ask(&mut h, id, &request("P", "WRONG").encode_to_vec(), 1);
    assert_eq!(answer, [0x08, 0x02]);
    let answer = ask(&mut h, id, &json_request_for_j(), 2);
    assert_eq!(
        decode(&answer),
        success(CredentialsType::AccessToken, "J_TOKEN")
    );
}

#[test]
fn neither_json_nor_protobuf_is_an_adaptor_error() {
    // Not JSON (a syntax error, or JSON that is not an object) and not protobuf either.
    for garbage in [&b"\xff\xff"[..], b"{nope", b"42", b"[1]", b" "] {
        let mut h = harness();
        // MQTT 5, QoS 1: PUBACK 0x99 and the session stays.
        let id = provision_session(&mut h, V5);
        h.publish(id, "/provision/request", garbage, 1);
        assert_eq!(h.take(id), vec![puback(1, 0x99)], "{garbage:?}");
        assert!(!h.closed(id));
        // It still provisions afterwards.
        let answer = ask(&mut h, id, &request("After", "WRONG").encode_to_vec(), 2);
        assert_eq!(answer, [0x08, 0x02]);
        // MQTT 5, QoS 0: DISCONNECT 0x99.
        let id = provision_session(&mut h, V5);
        h.publish(id, "/provision/request", garbage, 0);
        assert_eq!(h.take(id), vec![disconnect(0x99)], "{garbage:?}");
        assert!(h.closed(id));
        // MQTT 3.1.1: closed, no PUBACK (a provision session has no device profile, so no
        // `sendAckOnValidationException`).
        let id = provision_session(&mut h, V311);
        h.publish(id, "/provision/request", garbage, 1);
        assert_eq!(h.take(id), vec![], "{garbage:?}");
        assert!(h.closed(id));
    }
    // Not UTF-8 in a protobuf string: protobuf-java refuses it too.
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    h.publish(id, "/provision/request", b"\x0a\x01\xff", 1);
    assert_eq!(h.take(id), vec![puback(1, 0x99)]);
}

#[test]
fn a_json_object_without_key_or_secret_is_not_retried_as_protobuf() {
    // Both a JSON object (after a newline) and a valid protobuf message: 0x0a is field 1
    // (deviceName) and `{` (123) its length, covering the rest. JSON parses, the key is
    // missing: a plain RuntimeException, PUBACK 0x83 + DISCONNECT, no protobuf retry.
    let mut object = String::from(r#""deviceName":"Q","pad":""#);
    while object.len() < 123 - 2 {
        object.push('x');
    }
    object.push_str("\"}");
    let mut payload = b"\n{".to_vec();
    payload.extend_from_slice(object.as_bytes());
    assert!(serde_json::from_slice::<Value>(&payload)
        .unwrap()
        .is_object());
    let as_proto = ProvisionDeviceRequestMsg::decode(payload.as_slice()).unwrap();
    assert_eq!(as_proto.device_name.len(), 123);

    for version in [V5, V311] {
        let mut h = harness();
        let id = provision_session(&mut h, version);
        h.publish(id, "/provision/request", &payload, 1);
        let expected = if version == V5 {
            vec![puback(1, 0x83), disconnect(0x83)]
        } else {
            vec![puback(1, 0)]
        };
        assert_eq!(h.take(id), expected, "{version:?}");
        assert!(h.closed(id));
    }
    // A plain one too.
    let mut h = harness();
    let id = provision_session(&mut h, V5);
    h.publish_json(id, "/provision/request", json!({"deviceName": "Q"}), 1);
    assert_eq!(h.take(id), vec![puback(1, 0x83), disconnect(0x83)]);
}
