//! Provisioning and firmware/software OTA against a scripted ThingsBoard: the exact packets
//! the client sends, the events it reports, and what it does when the server is slow, wrong
//! or gone (spec §1.1 OTA topics, §3.6 provisioning and OTA chunks).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, server_publish, Harness};
use gateway_proto::checksum::ChecksumAlgorithm;
use gateway_proto::ota::{OtaCommandError, OtaError, OtaState};
use gateway_proto::payload::{CredentialsType, Payload, ProvisionRequest};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    Command, CommandError, Config, ConfigError, DisconnectReason, Event, OtaConfig, OtaEvent,
    OtaKind, OtaPackage, OtaVersion, ProvisionError, ProvisionedCredentials, ReasonCode, Role,
    State, Warning,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V311;

/// A publish the client sent, payload as text.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    topic: String,
    payload: String,
    /// The payload's bytes (protobuf is not text).
    raw: Bytes,
    pkid: u16,
}

fn sent(h: &mut Harness) -> Vec<Sent> {
    publishes_of(h.client_packets())
}

fn publishes_of(packets: Vec<Packet>) -> Vec<Sent> {
    packets
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(Sent {
                topic: p.topic,
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                raw: p.payload,
                pkid: p.pkid,
            }),
            _ => None,
        })
        .collect()
}

fn puback(h: &mut Harness, pkid: u16, code: u8) {
    h.send(Packet::PubAck(wire::PubAck { pkid, code }));
}

/// Acknowledges every QoS 1 publish in `sent`.
fn ack_all(h: &mut Harness, sent: &[Sent]) {
    for s in sent {
        puback(h, s.pkid, 0);
    }
}

fn push(h: &mut Harness, topic: &str, payload: impl Into<Bytes>) {
    h.send(server_publish(topic, payload, Some(77)));
}

// =============================================================================================
// Provisioning
// =============================================================================================

fn request() -> ProvisionRequest {
    ProvisionRequest {
        device_name: Some("Sensor 9".into()),
        provision_device_key: "KEY".into(),
        provision_device_secret: "SECRET".into(),
        ..ProvisionRequest::default()
    }
}

/// [`request`] asking for an access token of its own choosing, `WANTED`.
fn token_request() -> ProvisionRequest {
    ProvisionRequest {
        credentials_type: Some(CredentialsType::AccessToken),
        token: Some("WANTED".into()),
        ..request()
    }
}

fn provisioning(version: ProtocolVersion, request: ProvisionRequest) -> Harness {
    let mut c = Config::provisioning(request);
    c.protocol = version;
    c.reconnect.jitter_percent = 0;
    Harness::new(c)
}

/// The same, provisioning over protobuf ([`Config::protobuf_profile`]).
fn provisioning_protobuf(version: ProtocolVersion, request: ProvisionRequest) -> Harness {
    let mut c = Config::provisioning(request);
    c.protocol = version;
    c.reconnect.jitter_percent = 0;
    c.protobuf_profile = true;
    Harness::new(c)
}

/// A length-delimited protobuf field, assembled by hand (lengths < 128).
fn pb_len(field: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2, u8::try_from(body.len()).unwrap()];
    out.extend_from_slice(body);
    out
}

/// Opens the transport, checks the CONNECT and the SUBSCRIBE, accepts both and returns the
/// request publish.
fn provision_session(h: &mut Harness) -> Sent {
    h.open();
    let packets = h.client_packets();
    let [Packet::Connect(connect)] = packets.as_slice() else {
        panic!("expected CONNECT, got {packets:?}");
    };
    assert_eq!(connect.username.as_deref(), Some("provision"));
    assert_eq!(connect.password, None);
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    assert_eq!(
        h.take_events(),
        [Event::Connected {
            session_present: false
        }]
    );
    let packets = h.client_packets();
    let Packet::Subscribe(sub) = &packets[0] else {
        panic!("expected SUBSCRIBE first, got {packets:?}");
    };
    assert_eq!(
        sub.filters,
        vec![("/provision/response".to_owned(), wire::QoS::AtLeastOnce)],
        "a provisioning session may subscribe to nothing else"
    );
    let sub_pkid = sub.pkid;
    let mut publishes = publishes_of(packets);
    h.send(Packet::SubAck(wire::SubAck {
        pkid: sub_pkid,
        codes: vec![1],
    }));
    // The limits are on (Config::provisioning keeps the defaults), yet no getSessionLimits:
    // a provisioning connection only provisions.
    assert_eq!(publishes.len(), 1, "{publishes:?}");
    let req = publishes.remove(0);
    assert_eq!(req.topic, "/provision/request");
    req
}

fn provisioned(h: &mut Harness) -> Result<ProvisionedCredentials, ProvisionError> {
    let events = h.take_events();
    let mut results = events.iter().filter_map(|e| match e {
        Event::Provisioned(r) => Some(r.clone()),
        _ => None,
    });
    let result = results.next().expect("a Provisioned event");
    assert!(results.next().is_none(), "exactly one: {events:?}");
    assert!(
        matches!(
            events.last(),
            Some(Event::Disconnected {
                reconnect_at: None,
                ..
            })
        ),
        "closed for good after the answer: {events:?}"
    );
    result
}

/// After the connection closed itself it asks for nothing more, ever.
fn assert_finished(h: &mut Harness) {
    assert_eq!(h.conn.state(), State::Closed);
    assert_eq!(h.conn.poll_timeout(), None);
    h.advance(Duration::from_secs(3600));
    assert!(
        !h.open_requested,
        "a provisioning connection never reconnects"
    );
}

#[test]
fn provisioning_sends_one_request_reports_the_token_and_closes() {
    for version in [V5, V3] {
        let req = token_request();
        let mut h = provisioning(version, req.clone());
        let sent = provision_session(&mut h);
        assert_eq!(
            serde_json::from_str::<Value>(&sent.payload).unwrap(),
            json!({"deviceName":"Sensor 9","provisionDeviceKey":"KEY",
                   "provisionDeviceSecret":"SECRET","credentialsType":"ACCESS_TOKEN",
                   "token":"WANTED"})
        );
        puback(&mut h, sent.pkid, 0);
        assert!(
            h.take_events().is_empty(),
            "the request's PUBACK is not an application outcome"
        );
        push(
            &mut h,
            "/provision/response",
            r#"{"credentialsValue":"WANTED","credentialsType":"ACCESS_TOKEN","status":"SUCCESS"}"#,
        );
        // The response's PUBACK, then a graceful DISCONNECT, then the close.
        let packets = h.client_packets();
        assert!(
            matches!(
                packets.as_slice(),
                [Packet::PubAck(_), Packet::Disconnect(_)]
            ),
            "{packets:?}"
        );
        assert_eq!(h.closed_by_client, 1);
        assert_eq!(
            provisioned(&mut h),
            Ok(ProvisionedCredentials::AccessToken("WANTED".into()))
        );
        assert_finished(&mut h);
    }
}

#[test]
fn provisioning_failures_are_typed() {
    let cases = [
        (
            r#"{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}"#,
            Err(ProvisionError::NotFound {
                message: "Provision data was not found!".into(),
            }),
        ),
        (
            r#"{"errorMsg":"Failed to provision device!","status":"FAILURE"}"#,
            Err(ProvisionError::Failure {
                message: "Failed to provision device!".into(),
            }),
        ),
        (
            r#"{"credentialsValue":{"clientId":"c1","userName":"u1","password":"p1"},"credentialsType":"MQTT_BASIC","status":"SUCCESS"}"#,
            Ok(ProvisionedCredentials::Basic {
                client_id: Some("c1".into()),
                username: Some("u1".into()),
                password: Some("p1".into()),
            }),
        ),
        (
            r#"{"credentialsValue":"-----BEGIN CERTIFICATE-----","credentialsType":"X509_CERTIFICATE","status":"SUCCESS"}"#,
            Ok(ProvisionedCredentials::X509 {
                certificate: "-----BEGIN CERTIFICATE-----".into(),
            }),
        ),
    ];
    for (response, expected) in cases {
        let mut h = provisioning(V5, request());
        let sent = provision_session(&mut h);
        puback(&mut h, sent.pkid, 0);
        push(&mut h, "/provision/response", response);
        assert_eq!(provisioned(&mut h), expected, "{response}");
        assert_finished(&mut h);
    }
    // Not JSON: typed, and the connection still closes.
    let mut h = provisioning(V5, request());
    provision_session(&mut h);
    push(&mut h, "/provision/response", "{nope");
    assert!(matches!(
        provisioned(&mut h),
        Err(ProvisionError::InvalidResponse(_))
    ));
    assert_finished(&mut h);
}

#[test]
fn provisioning_over_protobuf_sends_protobuf_and_reads_the_protobuf_answer() {
    for version in [V5, V3] {
        let req = token_request();
        let mut h = provisioning_protobuf(version, req.clone());
        let sent = provision_session(&mut h);
        // ProvisionDeviceRequestMsg: deviceName = 1, credentials message = 3 {key = 1,
        // secret = 2}, credentialsDataProto = 4 {validateDeviceTokenRequestMsg = 1
        // {token = 1}}; ACCESS_TOKEN is enum 0 and left out.
        let mut expected = pb_len(1, b"Sensor 9");
        expected.extend(pb_len(
            3,
            &[pb_len(1, b"KEY"), pb_len(2, b"SECRET")].concat(),
        ));
        expected.extend(pb_len(4, &pb_len(1, &pb_len(1, b"WANTED"))));
        assert_eq!(sent.raw.as_ref(), expected.as_slice());
        assert_eq!(sent.raw.as_ref(), req.to_protobuf().as_slice());
        puback(&mut h, sent.pkid, 0);
        assert!(h.take_events().is_empty());
        // ProvisionDeviceResponseMsg: status = 1 SUCCESS, credentialsValue = 3.
        let mut answer = vec![0x08, 1];
        answer.extend(pb_len(3, b"WANTED"));
        push(&mut h, "/provision/response", answer);
        let packets = h.client_packets();
        assert!(
            matches!(
                packets.as_slice(),
                [Packet::PubAck(_), Packet::Disconnect(_)]
            ),
            "{packets:?}"
        );
        assert_eq!(
            provisioned(&mut h),
            Ok(ProvisionedCredentials::AccessToken("WANTED".into()))
        );
        assert_finished(&mut h);
    }
}

#[test]
fn provisioning_over_protobuf_answers_of_every_kind() {
    let with_value = |head: &[u8], value: &[u8]| [head.to_vec(), pb_len(3, value)].concat();
    let cases: Vec<(Vec<u8>, Result<ProvisionedCredentials, ProvisionError>)> = vec![
        (
            vec![0x08, 2],
            Err(ProvisionError::NotFound {
                message: String::new(),
            }),
        ),
        (
            vec![0x08, 3],
            Err(ProvisionError::Failure {
                message: String::new(),
            }),
        ),
        (
            // MQTT_BASIC (2): the value is the JSON form's object, as text.
            with_value(
                &[0x08, 1, 0x10, 2],
                br#"{"clientId":"c1","userName":"u1","password":"p1"}"#,
            ),
            Ok(ProvisionedCredentials::Basic {
                client_id: Some("c1".into()),
                username: Some("u1".into()),
                password: Some("p1".into()),
            }),
        ),
        (
            with_value(&[0x08, 1, 0x10, 1], b"MIIB"),
            Ok(ProvisionedCredentials::X509 {
                certificate: "MIIB".into(),
            }),
        ),
        (
            // Defensively, a JSON answer is still understood.
            br#"{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}"#.to_vec(),
            Err(ProvisionError::NotFound {
                message: "Provision data was not found!".into(),
            }),
        ),
        (
            br#"{"credentialsValue":"T","credentialsType":"ACCESS_TOKEN","status":"SUCCESS"}"#
                .to_vec(),
            Ok(ProvisionedCredentials::AccessToken("T".into())),
        ),
    ];
    for (answer, expected) in cases {
        let mut h = provisioning_protobuf(V5, request());
        let sent = provision_session(&mut h);
        puback(&mut h, sent.pkid, 0);
        push(&mut h, "/provision/response", answer.clone());
        assert_eq!(provisioned(&mut h), expected, "{answer:02x?}");
        assert_finished(&mut h);
    }
    // Neither protobuf nor JSON: the protobuf error, typed.
    let mut h = provisioning_protobuf(V5, request());
    provision_session(&mut h);
    push(&mut h, "/provision/response", &b"\x0a\x05ab"[..]);
    assert!(matches!(
        provisioned(&mut h),
        Err(ProvisionError::InvalidResponse(
            gateway_proto::payload::PayloadError::InvalidProtobuf(_)
        ))
    ));
    assert_finished(&mut h);
    // A JSON provisioning connection does not read protobuf: ThingsBoard answers a JSON
    // request in JSON.
    let mut h = provisioning(V5, request());
    provision_session(&mut h);
    push(&mut h, "/provision/response", &[0x08, 2][..]);
    assert!(matches!(
        provisioned(&mut h),
        Err(ProvisionError::InvalidResponse(
            gateway_proto::payload::PayloadError::InvalidJson { .. }
        ))
    ));
}

#[test]
fn provisioning_times_out_and_never_reconnects_after_a_loss() {
    // No answer: the timeout, counted from CONNACK.
    let mut h = provisioning(V5, request());
    let sent = provision_session(&mut h);
    puback(&mut h, sent.pkid, 0);
    h.advance(Duration::from_secs(29));
    assert!(h.take_events().is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(provisioned(&mut h), Err(ProvisionError::Timeout));
    assert_eq!(h.closed_by_client, 1);
    assert_finished(&mut h);

    // The server closes the connection first (as it does 60 s after answering, or at once
    // after a malformed request on MQTT 3.1.1).
    let mut h = provisioning(V3, request());
    provision_session(&mut h);
    h.drop_transport();
    assert_eq!(
        provisioned(&mut h),
        Err(ProvisionError::ConnectionEnded(
            DisconnectReason::TransportClosed
        ))
    );
    assert_eq!(h.closed_by_client, 0, "nothing to close: it closed itself");
    assert_finished(&mut h);

    // A refused CONNECT.
    let mut h = provisioning(V5, request());
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0x87,
    }));
    assert!(matches!(
        provisioned(&mut h),
        Err(ProvisionError::ConnectionEnded(DisconnectReason::Refused(
            _
        )))
    ));
    assert_finished(&mut h);
}

#[test]
fn provisioning_request_refused_by_puback_and_commands_refused() {
    let mut h = provisioning(V5, request());
    assert_eq!(
        h.conn
            .command(h.now, Command::publish("v1/devices/me/telemetry", "{}")),
        Err(CommandError::ProvisioningOnly)
    );
    let sent = provision_session(&mut h);
    // ThingsBoard's answer to a request without key or secret: PUBACK 0x83, DISCONNECT.
    puback(&mut h, sent.pkid, 0x83);
    assert_eq!(
        provisioned(&mut h),
        Err(ProvisionError::Rejected(
            ReasonCode::ImplementationSpecificError
        ))
    );
    assert_finished(&mut h);

    // Closing it early says so.
    let mut h = provisioning(V5, request());
    provision_session(&mut h);
    h.conn.close(h.now);
    h.drain();
    assert_eq!(provisioned(&mut h), Err(ProvisionError::Closed));
}

#[test]
fn provisioning_config_is_checked() {
    let mut r = request();
    r.provision_device_secret.clear();
    assert!(matches!(
        Config::provisioning(r).validate(),
        Err(ConfigError::InvalidProvisionRequest(_))
    ));
    let mut r = request();
    r.provision_device_key.clear();
    assert!(matches!(
        Config::provisioning(r).validate(),
        Err(ConfigError::InvalidProvisionRequest(_))
    ));
    let mut c = Config::provisioning(request());
    c.client_id = "provision".into();
    assert_eq!(
        c.validate(),
        Ok(()),
        "the reserved identity is the point here"
    );
    let mut r = request();
    r.device_name = Some("x".repeat(70_000));
    assert!(matches!(
        Config::provisioning(r).validate(),
        Err(ConfigError::InvalidProvisionRequest(_))
    ));
    // The size check is on the payload that goes out: a name that fits in protobuf but not
    // in JSON (which adds the key names).
    let mut r = request();
    r.device_name = Some("x".repeat(65_480));
    let mut c = Config::provisioning(r);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::InvalidProvisionRequest(_))
    ));
    c.protobuf_profile = true;
    assert_eq!(c.validate(), Ok(()));
    // Secrets stay out of Debug.
    let s = format!("{:?}", Config::provisioning(request()));
    assert!(!s.contains("SECRET"), "{s}");
}

// =============================================================================================
// OTA
// =============================================================================================

const FW_KEYS: &str = "fw_title,fw_version,fw_size,fw_checksum_algorithm,fw_checksum,fw_url";

fn ota_config(ota: OtaConfig) -> Config {
    let mut c = config(V5);
    c.role = Role::Device;
    c.subscribe_api = true;
    c.ota = Some(ota);
    c
}

fn small_chunks() -> OtaConfig {
    let mut o = OtaConfig::new();
    o.software = false;
    o.chunk_size = 4;
    o.chunk_timeout = Duration::from_secs(10);
    o.chunk_attempts = 3;
    o
}

/// A device connection with OTA on; returns it and the wire id of its attribute request.
fn ota_device(ota: OtaConfig) -> (Harness, u64) {
    let mut h = Harness::new(ota_config(ota));
    let after = publishes_of(h.connect());
    h.take_events();
    let [info] = after.as_slice() else {
        panic!("expected the OTA attribute request alone, got {after:?}");
    };
    let id = info
        .topic
        .strip_prefix("v1/devices/me/attributes/request/")
        .expect("attribute request topic")
        .parse()
        .unwrap();
    puback(&mut h, info.pkid, 0);
    (h, id)
}

fn fw_attrs(image: &[u8], algorithm: ChecksumAlgorithm, version: &str) -> Value {
    json!({
        "fw_title": "cam-fw",
        "fw_version": version,
        "fw_size": image.len(),
        "fw_checksum_algorithm": algorithm.as_str(),
        "fw_checksum": algorithm.checksum(image),
    })
}

fn answer_info(h: &mut Harness, id: u64, shared: Value) {
    push(
        h,
        &format!("v1/devices/me/attributes/response/{id}"),
        json!({ "shared": shared }).to_string(),
    );
}

fn ota_events(h: &mut Harness) -> Vec<OtaEvent> {
    h.take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Ota(o) => Some(o),
            Event::Delivered(_)
            | Event::AttributeUpdate { .. }
            | Event::Connected { .. }
            | Event::Disconnected { .. } => None,
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

/// Checks that `p` is the package [`fw_attrs`] describes.
fn assert_package(p: &OtaPackage, image: &[u8], algorithm: ChecksumAlgorithm, version: &str) {
    assert_eq!(p.kind, OtaKind::Firmware);
    assert_eq!(p.version(), OtaVersion::new("cam-fw", version));
    assert_eq!(p.size, Some(image.len() as u64));
    assert_eq!(p.checksum_algorithm.as_deref(), Some(algorithm.as_str()));
    assert_eq!(p.checksum, Some(algorithm.checksum(image)));
    assert_eq!(p.url, None);
}

/// The state telemetry among `sent`, as `fw_state` values (with `fw_error` if any).
fn states(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .filter(|s| s.topic == "v1/devices/me/telemetry")
        .map(|s| {
            let v: Value = serde_json::from_str(&s.payload).unwrap();
            let state = v["fw_state"].as_str().or(v["sw_state"].as_str()).unwrap();
            match v["fw_error"].as_str().or(v["sw_error"].as_str()) {
                Some(e) => format!("{state}: {e}"),
                None => state.to_owned(),
            }
        })
        .collect()
}

/// The chunk requests among `sent`: (topic, payload).
fn chunk_requests(sent: &[Sent]) -> Vec<(String, String)> {
    sent.iter()
        .filter(|s| s.topic.starts_with("v2/"))
        .map(|s| (s.topic.clone(), s.payload.clone()))
        .collect()
}

/// Serves chunk requests from `image` until the client stops asking; returns everything the
/// client sent meanwhile, and the chunk events.
fn serve(h: &mut Harness, image: &[u8], pending: Vec<Sent>) -> (Vec<Sent>, Vec<OtaEvent>) {
    serve_both(h, image, image, pending)
}

/// [`serve`] with a firmware and a software image.
fn serve_both(
    h: &mut Harness,
    fw: &[u8],
    sw: &[u8],
    mut pending: Vec<Sent>,
) -> (Vec<Sent>, Vec<OtaEvent>) {
    let mut all = Vec::new();
    let mut events = Vec::new();
    loop {
        ack_all(h, &pending);
        events.extend(ota_events(h));
        let Some(req) = pending.iter().find(|s| s.topic.starts_with("v2/")).cloned() else {
            all.extend(pending);
            return (all, events);
        };
        all.extend(pending);
        let image = if req.topic.starts_with("v2/sw/") {
            sw
        } else {
            fw
        };
        let size: usize = req.payload.parse().unwrap();
        let n: usize = req.topic.rsplit('/').next().unwrap().parse().unwrap();
        let start = (n * size).min(image.len());
        let end = (start + size).min(image.len());
        let response = req.topic.replacen("/request/", "/response/", 1);
        push(h, &response, Bytes::copy_from_slice(&image[start..end]));
        pending = sent(h);
    }
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn concat(events: &[OtaEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let OtaEvent::Chunk { offset, data, .. } = e {
            assert_eq!(*offset as usize, out.len(), "chunks arrive in order");
            out.extend_from_slice(data);
        }
    }
    out
}

#[test]
fn ota_filters_and_the_attribute_request_follow_every_connack() {
    let mut h = Harness::new(ota_config(OtaConfig::new()));
    h.open();
    h.client_packets();
    h.send(Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    }));
    let packets = h.client_packets();
    let Packet::Subscribe(sub) = &packets[0] else {
        panic!("{packets:?}")
    };
    let filters: Vec<&str> = sub.filters.iter().map(|(f, _)| f.as_str()).collect();
    assert!(filters.ends_with(&["v2/fw/response/+/chunk/+", "v2/sw/response/+/chunk/+"]));
    let publishes = publishes_of(packets);
    assert_eq!(publishes.len(), 1);
    assert_eq!(
        publishes[0].payload,
        format!(
            r#"{{"sharedKeys":"{FW_KEYS},{}"}}"#,
            FW_KEYS.replace("fw_", "sw_")
        )
    );
}

#[test]
fn firmware_is_announced_downloaded_in_chunks_verified_and_installed() {
    let img = image(10);
    let (mut h, id) = ota_device(small_chunks());
    answer_info(&mut h, id, fw_attrs(&img, ChecksumAlgorithm::Sha256, "2.0"));
    let events = ota_events(&mut h);
    let [OtaEvent::Available(expected)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_package(expected, &img, ChecksumAlgorithm::Sha256, "2.0");
    assert!(sent(&mut h).is_empty(), "nothing starts without a command");

    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    assert_eq!(states(&first), ["DOWNLOADING"]);
    assert_eq!(
        chunk_requests(&first),
        [("v2/fw/request/1/chunk/0".to_owned(), "4".to_owned())]
    );
    let (rest, events) = serve(&mut h, &img, first);
    assert_eq!(
        chunk_requests(&rest)
            .into_iter()
            .map(|(t, _)| t)
            .collect::<Vec<_>>(),
        [
            "v2/fw/request/1/chunk/0",
            "v2/fw/request/1/chunk/1",
            "v2/fw/request/1/chunk/2"
        ],
        "10 bytes in chunks of 4: the size ends it, no empty chunk asked for"
    );
    assert_eq!(states(&rest), ["DOWNLOADING", "DOWNLOADED", "VERIFIED"]);
    assert_eq!(events.first(), Some(&OtaEvent::Started(expected.clone())));
    assert_eq!(events.last(), Some(&OtaEvent::Verified(expected.clone())));
    assert_eq!(concat(&events), img);
    assert_eq!(h.conn.stats().ota_chunks, 3);

    // The application installs it.
    h.conn
        .command(h.now, Command::ota_updating(OtaKind::Firmware))
        .unwrap();
    h.conn
        .command(
            h.now,
            Command::ota_updated(OtaKind::Firmware, "cam-fw", "2.0"),
        )
        .unwrap();
    h.drain();
    let last = sent(&mut h);
    assert_eq!(
        last.iter().map(|s| s.payload.as_str()).collect::<Vec<_>>(),
        [
            r#"{"fw_state":"UPDATING"}"#,
            r#"{"current_fw_title":"cam-fw","current_fw_version":"2.0","fw_state":"UPDATED"}"#
        ]
    );
    ack_all(&mut h, &last);
    // The same assignment again (e.g. after a reconnect) is installed: not announced.
    h.drop_transport();
    h.advance_to_timeout();
    let after = publishes_of(h.connect());
    let id = after[0].topic.rsplit('/').next().unwrap().parse().unwrap();
    answer_info(&mut h, id, fw_attrs(&img, ChecksumAlgorithm::Sha256, "2.0"));
    h.events
        .retain(|e| !matches!(e, Event::Disconnected { .. } | Event::Delivered(_)));
    assert_eq!(ota_events(&mut h), vec![]);
}

#[test]
fn every_algorithm_verifies_and_a_wrong_checksum_fails() {
    let img = image(23);
    for algorithm in ChecksumAlgorithm::ALL {
        let (mut h, id) = ota_device(small_chunks());
        answer_info(&mut h, id, fw_attrs(&img, algorithm, "3"));
        h.conn
            .command(h.now, Command::ota_download(OtaKind::Firmware))
            .unwrap();
        h.drain();
        let first = sent(&mut h);
        let (all, events) = serve(&mut h, &img, first);
        assert!(
            matches!(events.last(), Some(OtaEvent::Verified(_))),
            "{algorithm}: {events:?}"
        );
        assert_eq!(states(&all).last().map(String::as_str), Some("VERIFIED"));
    }

    // A checksum that does not match: FAILED with fw_error, and the image is not offered.
    let (mut h, id) = ota_device(small_chunks());
    let mut attrs = fw_attrs(&img, ChecksumAlgorithm::Crc32, "3");
    attrs["fw_checksum"] = json!("deadbeef");
    answer_info(&mut h, id, attrs);
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    let (all, events) = serve(&mut h, &img, first);
    let actual = ChecksumAlgorithm::Crc32.checksum(&img);
    let Some(OtaEvent::Failed { error, .. }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        error,
        &OtaError::ChecksumMismatch {
            expected: "deadbeef".into(),
            actual: actual.clone()
        }
    );
    assert_eq!(
        states(&all),
        [
            "DOWNLOADING".to_owned(),
            "DOWNLOADED".to_owned(),
            format!("FAILED: Checksum verification failed: expected deadbeef, got {actual}")
        ]
    );
}

#[test]
fn a_late_chunk_is_requested_again_and_too_many_misses_fail() {
    let img = image(10);
    let (mut h, id) = ota_device(small_chunks());
    answer_info(&mut h, id, fw_attrs(&img, ChecksumAlgorithm::Md5, "2"));
    ota_events(&mut h);
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    ack_all(&mut h, &first);
    // Chunk 0 never comes: asked again after the chunk timeout, same request id and chunk.
    h.advance(Duration::from_secs(9));
    assert!(sent(&mut h).is_empty());
    h.advance(Duration::from_secs(1));
    let again = sent(&mut h);
    assert_eq!(
        chunk_requests(&again),
        [("v2/fw/request/1/chunk/0".to_owned(), "4".to_owned())]
    );
    assert_eq!(h.conn.stats().ota_chunk_retries, 1);
    // Both answers arrive: the second is a duplicate and is dropped with a warning.
    ack_all(&mut h, &again);
    push(
        &mut h,
        "v2/fw/response/1/chunk/0",
        Bytes::copy_from_slice(&img[..4]),
    );
    let next = sent(&mut h);
    push(
        &mut h,
        "v2/fw/response/1/chunk/0",
        Bytes::copy_from_slice(&img[..4]),
    );
    let events = h.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Warning(Warning::UnmatchedResponse { id: 0, .. }))));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Ota(OtaEvent::Chunk { .. })))
            .count(),
        1,
        "a chunk is passed on once"
    );
    assert_eq!(
        chunk_requests(&next),
        [("v2/fw/request/1/chunk/1".to_owned(), "4".to_owned())]
    );
    ack_all(&mut h, &next);
    // Chunk 1 never comes: 3 requests, then FAILED.
    h.advance(Duration::from_secs(10));
    let r2 = sent(&mut h);
    ack_all(&mut h, &r2);
    h.advance(Duration::from_secs(10));
    let r3 = sent(&mut h);
    ack_all(&mut h, &r3);
    assert_eq!(chunk_requests(&r2).len() + chunk_requests(&r3).len(), 2);
    h.advance(Duration::from_secs(10));
    let failed = sent(&mut h);
    assert_eq!(
        states(&failed),
        ["FAILED: chunk 1 did not arrive after 3 requests"]
    );
    assert!(chunk_requests(&failed).is_empty());
    assert!(matches!(
        ota_events(&mut h).last(),
        Some(OtaEvent::Failed {
            error: OtaError::ChunkTimeout {
                chunk: 1,
                attempts: 3
            },
            ..
        })
    ));
    assert!(h.conn.poll_timeout().is_some(), "keep-alive only");
    h.advance(Duration::from_secs(60));
    assert!(
        chunk_requests(&sent(&mut h)).is_empty(),
        "given up for good"
    );
}

#[test]
fn a_download_resumes_after_a_reconnect_from_the_next_missing_chunk() {
    let img = image(10);
    let (mut h, id) = ota_device(small_chunks());
    answer_info(
        &mut h,
        id,
        fw_attrs(&img, ChecksumAlgorithm::Murmur3_128, "2"),
    );
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    ack_all(&mut h, &first);
    push(
        &mut h,
        "v2/fw/response/1/chunk/0",
        Bytes::copy_from_slice(&img[..4]),
    );
    let pending = sent(&mut h);
    assert_eq!(chunk_requests(&pending)[0].0, "v2/fw/request/1/chunk/1");
    assert!(matches!(
        ota_events(&mut h).as_slice(),
        [
            OtaEvent::Available(_),
            OtaEvent::Started(_),
            OtaEvent::Chunk { offset: 0, .. }
        ]
    ));
    // The link dies with chunk 1 outstanding.
    h.drop_transport();
    h.advance_to_timeout();
    // After CONNACK: the attribute request first, no chunk request until it is answered.
    let after = publishes_of(h.connect());
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0]
        .topic
        .starts_with("v1/devices/me/attributes/request/"));
    ack_all(&mut h, &after);
    let id: u64 = after[0].topic.rsplit('/').next().unwrap().parse().unwrap();
    answer_info(
        &mut h,
        id,
        fw_attrs(&img, ChecksumAlgorithm::Murmur3_128, "2"),
    );
    let resumed = sent(&mut h);
    assert_eq!(
        chunk_requests(&resumed),
        [("v2/fw/request/1/chunk/1".to_owned(), "4".to_owned())],
        "the size is sent again: the new session knows nothing"
    );
    let (all, events) = serve(&mut h, &img, resumed);
    assert!(
        matches!(events.last(), Some(OtaEvent::Verified(_))),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, OtaEvent::Started(_))));
    assert_eq!(states(&all), ["DOWNLOADED", "VERIFIED"]);
    // The first chunk came before the outage; the rest continues at offset 4.
    let tail: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            OtaEvent::Chunk { offset, data, .. } => Some((offset, data)),
            _ => None,
        })
        .flat_map(|(o, d)| {
            assert!(*o >= 4);
            d.to_vec()
        })
        .collect();
    assert_eq!(tail, img[4..]);
}

#[test]
fn a_new_assignment_during_an_outage_replaces_the_download() {
    let img = image(10);
    let mut ota = small_chunks();
    ota.auto_download = true;
    let (mut h, id) = ota_device(ota);
    answer_info(&mut h, id, fw_attrs(&img, ChecksumAlgorithm::Sha512, "2"));
    let events = ota_events(&mut h);
    assert!(matches!(
        events.as_slice(),
        [OtaEvent::Available(_), OtaEvent::Started(_)]
    ));
    let first = sent(&mut h);
    assert_eq!(
        states(&first),
        ["DOWNLOADING"],
        "reported by the connection itself"
    );
    ack_all(&mut h, &first);
    push(
        &mut h,
        "v2/fw/response/1/chunk/0",
        Bytes::copy_from_slice(&img[..4]),
    );
    sent(&mut h);
    assert!(matches!(
        ota_events(&mut h).as_slice(),
        [OtaEvent::Chunk { offset: 0, .. }]
    ));
    h.drop_transport();
    h.advance_to_timeout();
    let after = publishes_of(h.connect());
    ack_all(&mut h, &after);
    h.events
        .retain(|e| !matches!(e, Event::Disconnected { .. }));
    let id: u64 = after[0].topic.rsplit('/').next().unwrap().parse().unwrap();
    let img3 = image(7);
    answer_info(&mut h, id, fw_attrs(&img3, ChecksumAlgorithm::Sha512, "3"));
    let events = ota_events(&mut h);
    let [OtaEvent::Withdrawn {
        package: old,
        interrupted: true,
    }, OtaEvent::Available(new), OtaEvent::Started(started)] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(old.version, "2");
    assert_eq!(new, started);
    assert_eq!(new.version, "3");
    let next = sent(&mut h);
    assert_eq!(
        chunk_requests(&next),
        [("v2/fw/request/2/chunk/0".to_owned(), "4".to_owned())],
        "a new request id, from the start"
    );
    let (_, events) = serve(&mut h, &img3, next);
    assert_eq!(concat(&events), img3);
    assert!(matches!(events.last(), Some(OtaEvent::Verified(p)) if p.version == "3"));
}

#[test]
fn unknown_size_ends_on_a_short_chunk_and_server_errors_fail() {
    let img = image(8);
    let (mut h, id) = ota_device(small_chunks());
    let mut attrs = fw_attrs(&img, ChecksumAlgorithm::Murmur3_32, "2");
    attrs.as_object_mut().unwrap().remove("fw_size");
    answer_info(&mut h, id, attrs);
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    let (all, events) = serve(&mut h, &img, first);
    // 8 bytes in chunks of 4: the empty third chunk ends it.
    assert_eq!(chunk_requests(&all).len(), 3);
    assert!(matches!(events.last(), Some(OtaEvent::Verified(_))));

    // An image longer than fw_size fails at once.
    let (mut h, id) = ota_device(small_chunks());
    let mut attrs = fw_attrs(&img, ChecksumAlgorithm::Sha256, "2");
    attrs["fw_size"] = json!(6);
    answer_info(&mut h, id, attrs);
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    let (all, events) = serve(&mut h, &img, first);
    assert!(matches!(
        events.last(),
        Some(OtaEvent::Failed {
            error: OtaError::SizeMismatch {
                expected: 6,
                received: 8
            },
            ..
        })
    ));
    assert_eq!(states(&all).len(), 2, "{:?}", states(&all));

    // ThingsBoard's error topic (also for software), then it closes the connection.
    let (mut h, id) = ota_device(small_chunks());
    answer_info(&mut h, id, fw_attrs(&img, ChecksumAlgorithm::Sha256, "2"));
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    h.drain();
    let s0 = sent(&mut h);
    ack_all(&mut h, &s0);
    push(&mut h, "v2/fw/error", "NOT_FOUND");
    assert!(matches!(
        ota_events(&mut h).last(),
        Some(OtaEvent::Failed { error: OtaError::Server(s), .. }) if s == "NOT_FOUND"
    ));
    assert_eq!(states(&sent(&mut h)), ["FAILED: server error: NOT_FOUND"]);
}

#[test]
fn software_uses_its_own_topics_and_keys() {
    let img = image(9);
    let mut ota = OtaConfig::new();
    ota.firmware = false;
    ota.chunk_size = 5;
    ota.current_software = Some(OtaVersion::new("app", "1"));
    let (mut h, id) = ota_device(ota);
    let alg = ChecksumAlgorithm::Sha384;
    let shared = json!({"sw_title":"app","sw_version":"1","sw_size":9,
        "sw_checksum_algorithm":"SHA384","sw_checksum":alg.checksum(&img)});
    answer_info(&mut h, id, shared);
    assert!(
        ota_events(&mut h).is_empty(),
        "the installed version is not announced"
    );
    // The server assigns version 2 (one attribute update with every key).
    push(
        &mut h,
        "v1/devices/me/attributes",
        json!({"sw_title":"app","sw_version":"2","sw_size":9,
            "sw_checksum_algorithm":"sha384","sw_checksum":alg.checksum(&img)})
        .to_string(),
    );
    assert!(matches!(
        ota_events(&mut h).as_slice(),
        [OtaEvent::Available(p)] if p.kind == OtaKind::Software && p.version == "2"
    ));
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Software))
        .unwrap();
    h.drain();
    let first = sent(&mut h);
    assert_eq!(first[0].payload, r#"{"sw_state":"DOWNLOADING"}"#);
    assert_eq!(first[1].topic, "v2/sw/request/1/chunk/0");
    let (all, events) = serve(&mut h, &img, first);
    assert_eq!(concat(&events), img);
    assert_eq!(states(&all), ["DOWNLOADING", "DOWNLOADED", "VERIFIED"]);
    // Deleting the attributes withdraws the assignment.
    push(
        &mut h,
        "v1/devices/me/attributes",
        json!({"deleted":["sw_title","sw_version","sw_size","sw_checksum","sw_checksum_algorithm"]})
            .to_string(),
    );
    assert!(matches!(
        ota_events(&mut h).as_slice(),
        [OtaEvent::Withdrawn {
            interrupted: false,
            ..
        }]
    ));
}

#[test]
fn ota_commands_are_refused_when_they_cannot_work() {
    let refused = |h: &mut Harness, c: Command| h.conn.command(h.now, c).unwrap_err();
    // Not configured.
    let mut h = Harness::new(config(V5));
    assert_eq!(
        refused(&mut h, Command::ota_download(OtaKind::Firmware)),
        CommandError::Ota(OtaCommandError::NotWatched(OtaKind::Firmware))
    );
    let (mut h, id) = ota_device(small_chunks());
    assert_eq!(
        refused(&mut h, Command::ota_download(OtaKind::Software)),
        CommandError::Ota(OtaCommandError::NotWatched(OtaKind::Software))
    );
    assert_eq!(
        refused(&mut h, Command::ota_download(OtaKind::Firmware)),
        CommandError::Ota(OtaCommandError::NothingAssigned(OtaKind::Firmware))
    );
    // A package hosted at a URL.
    answer_info(
        &mut h,
        id,
        json!({"fw_title":"t","fw_version":"1","fw_url":"https://x/y"}),
    );
    assert_eq!(
        refused(&mut h, Command::ota_download(OtaKind::Firmware)),
        CommandError::Ota(OtaCommandError::ExternalUrl(OtaKind::Firmware))
    );
    // No checksum, or an unknown algorithm.
    push(
        &mut h,
        "v1/devices/me/attributes",
        r#"{"fw_title":"t","fw_version":"2","fw_checksum_algorithm":"SHA1","fw_checksum":"ab"}"#,
    );
    push(
        &mut h,
        "v1/devices/me/attributes",
        r#"{"deleted":["fw_url"]}"#,
    );
    assert_eq!(
        refused(&mut h, Command::ota_download(OtaKind::Firmware)),
        CommandError::Ota(OtaCommandError::Unverifiable(
            OtaError::UnsupportedAlgorithm("SHA1".into())
        ))
    );
    // One download at a time.
    let img = image(6);
    push(
        &mut h,
        "v1/devices/me/attributes",
        fw_attrs(&img, ChecksumAlgorithm::Sha256, "3").to_string(),
    );
    h.conn
        .command(h.now, Command::ota_download(OtaKind::Firmware))
        .unwrap();
    assert_eq!(
        refused(&mut h, Command::ota_download(OtaKind::Firmware)),
        CommandError::Ota(OtaCommandError::Busy {
            active: OtaKind::Firmware
        })
    );
    // The application gives up: reported, and the download stops.
    h.drain();
    let s0 = sent(&mut h);
    ack_all(&mut h, &s0);
    h.conn
        .command(h.now, Command::ota_failed(OtaKind::Firmware, "no space"))
        .unwrap();
    h.drain();
    let s = sent(&mut h);
    assert_eq!(states(&s), ["FAILED: no space"]);
    push(
        &mut h,
        "v2/fw/response/1/chunk/0",
        Bytes::from_static(b"abcd"),
    );
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Warning(Warning::UnmatchedResponse { .. }))));
}

#[test]
fn ota_config_is_checked() {
    let mut c = ota_config(OtaConfig::new());
    c.ota.as_mut().unwrap().chunk_size = 0;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::OtaChunkSize { .. })
    ));
    c.ota.as_mut().unwrap().chunk_size = 65_537;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::OtaChunkSize { .. })
    ));
    c.ota.as_mut().unwrap().chunk_size = 65_536;
    assert_eq!(c.validate(), Ok(()));
    c.max_incoming_packet = 1024;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::OtaChunkSize { max: 960, .. })
    ));
    let mut c = ota_config(OtaConfig::new());
    c.ota.as_mut().unwrap().chunk_attempts = 0;
    assert_eq!(c.validate(), Err(ConfigError::ZeroAttempts));
}

/// An unchanged package state string for `OtaState` keeps its wire name.
#[test]
fn state_names() {
    assert_eq!(OtaState::Downloading.as_str(), "DOWNLOADING");
    assert_eq!(OtaState::Failed.as_str(), "FAILED");
    let _ = ProvisionRequest::default().to_vec();
}

#[test]
fn one_download_at_a_time_the_other_kind_waits_its_turn() {
    let fw = image(6);
    let sw = image(5);
    let mut ota = OtaConfig::new();
    ota.auto_download = true;
    ota.chunk_size = 4;
    let (mut h, id) = ota_device(ota);
    let mut shared = fw_attrs(&fw, ChecksumAlgorithm::Sha256, "2");
    let sw_alg = ChecksumAlgorithm::Crc32;
    for (k, v) in [
        ("sw_title", json!("app")),
        ("sw_version", json!("9")),
        ("sw_size", json!(sw.len())),
        ("sw_checksum_algorithm", json!(sw_alg.as_str())),
        ("sw_checksum", json!(sw_alg.checksum(&sw))),
    ] {
        shared[k] = v;
    }
    answer_info(&mut h, id, shared);
    let events = ota_events(&mut h);
    assert!(
        matches!(
            events.as_slice(),
            [OtaEvent::Available(a), OtaEvent::Started(b), OtaEvent::Available(c)]
                if a.kind == OtaKind::Firmware && b.kind == OtaKind::Firmware
                    && c.kind == OtaKind::Software
        ),
        "{events:?}"
    );
    let first = sent(&mut h);
    assert!(chunk_requests(&first)
        .iter()
        .all(|(t, _)| t.starts_with("v2/fw/")));
    // Firmware done: software starts by itself, with a new request id.
    let (all, events) = serve_both(&mut h, &fw, &sw, first);
    let kinds: Vec<(OtaKind, &str)> = events
        .iter()
        .filter_map(|e| match e {
            OtaEvent::Started(p) => Some((p.kind, "started")),
            OtaEvent::Verified(p) => Some((p.kind, "verified")),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (OtaKind::Firmware, "verified"),
            (OtaKind::Software, "started"),
            (OtaKind::Software, "verified")
        ]
    );
    assert!(chunk_requests(&all)
        .iter()
        .any(|(t, _)| t == "v2/sw/request/2/chunk/1"));
    assert_eq!(
        states(&all),
        [
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED"
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives on `/provision/response`, the connection reports exactly one outcome
    /// and closes.
    #[test]
    fn any_provisioning_response_ends_the_connection(
        payload in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            Just(br#"{"status":"SUCCESS","credentialsType":"ACCESS_TOKEN","credentialsValue":"t"}"#.to_vec()),
            Just(br#"{"status":"SUCCESS","credentialsType":"MQTT_BASIC","credentialsValue":7}"#.to_vec()),
            Just(br#"{"status":"NOT_FOUND"}"#.to_vec()),
        ],
        protobuf in any::<bool>(),
    ) {
        let mut h = if protobuf {
            provisioning_protobuf(V5, request())
        } else {
            provisioning(V5, request())
        };
        provision_session(&mut h);
        push(&mut h, "/provision/response", payload);
        let events = h.take_events();
        prop_assert_eq!(
            events.iter().filter(|e| matches!(e, Event::Provisioned(_))).count(),
            1
        );
        prop_assert_eq!(h.conn.state(), State::Closed);
    }

    /// Any image, any chunk size, any algorithm: the chunks put together are the image and
    /// the download verifies.
    #[test]
    fn any_image_downloads_and_verifies(
        img in proptest::collection::vec(any::<u8>(), 0..200),
        chunk in 1usize..40,
        alg in 0usize..7,
    ) {
        let algorithm = ChecksumAlgorithm::ALL[alg];
        let mut ota = small_chunks();
        ota.chunk_size = chunk;
        let (mut h, id) = ota_device(ota);
        answer_info(&mut h, id, fw_attrs(&img, algorithm, "9"));
        h.conn.command(h.now, Command::ota_download(OtaKind::Firmware)).unwrap();
        h.drain();
        let first = sent(&mut h);
        let (_, events) = serve(&mut h, &img, first);
        prop_assert_eq!(concat(&events), img);
        prop_assert!(matches!(events.last(), Some(OtaEvent::Verified(_))), "{:?}", events.last());
    }

    /// Junk on the OTA topics and in the package attributes never breaks the session.
    #[test]
    fn junk_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        rid in 0u64..4,
        n in 0u64..4,
        attrs in proptest::collection::btree_map(
            prop_oneof![Just("fw_title"), Just("fw_version"), Just("fw_size"),
                Just("fw_checksum"), Just("fw_checksum_algorithm"), Just("fw_url")],
            prop_oneof![Just(json!(null)), Just(json!(-1)), Just(json!("x")), Just(json!([1])),
                Just(json!({"a":1})), Just(json!(1.5)), Just(json!(true))],
            0..6),
    ) {
        let (mut h, id) = ota_device(small_chunks());
        let attrs: serde_json::Map<String, Value> =
            attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        answer_info(&mut h, id, Value::Object(attrs.clone()));
        push(&mut h, "v1/devices/me/attributes", Value::Object(attrs).to_string());
        let _ = h.conn.command(h.now, Command::ota_download(OtaKind::Firmware));
        h.drain();
        push(&mut h, &format!("v2/fw/response/{rid}/chunk/{n}"), payload.clone());
        push(&mut h, "v2/fw/error", payload);
        h.advance(Duration::from_secs(40));
        prop_assert_eq!(h.conn.state(), State::Connected);
    }
}

#[test]
fn protobuf_profile_config_is_checked() {
    let mut c = config(ProtocolVersion::V5);
    c.protobuf_profile = true;
    // The gateway role (the default) speaks the Gateway API in protobuf then
    // (`tests/gateway_protobuf.rs`); so may a plain device.
    assert_eq!(c.validate(), Ok(()));
    c.role = Role::Device;
    assert_eq!(c.validate(), Ok(()));
    c.ota = Some(OtaConfig::default());
    assert!(matches!(c.validate(), Err(ConfigError::ProtobufProfile(_))));
}

/// A PROTOBUF profile on v1 topics: `getSessionLimits` leaves as a protobuf `RpcRequest`;
/// a `ToServerRpcResponseMsg` answer with an `error` is reported as invalid, and typed JSON
/// device commands are refused on v1 and accepted on `/j`.
#[test]
fn protobuf_profile_asks_session_limits_in_protobuf() {
    use gateway_proto::limits::LimitsReport;
    use gateway_proto::payload::protobuf::{ProtoRpcRequest, ProtoRpcResponse};
    let mut c = config(ProtocolVersion::V5);
    c.role = Role::Device;
    c.protobuf_profile = true;
    c.limits = gateway_proto::LimitsConfig::default();
    let mut h = Harness::new(c);
    let out = publishes_of(h.connect());
    let [request] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(request.topic, "v1/devices/me/rpc/request/1");
    assert_eq!(
        ProtoRpcRequest::parse(request.payload.as_bytes()).unwrap(),
        ProtoRpcRequest::new("getSessionLimits", "{}")
    );
    puback(&mut h, request.pkid, 0);
    let answer = ProtoRpcResponse {
        request_id: 1,
        payload: String::new(),
        error: "no".into(),
    };
    push(&mut h, "v1/devices/me/rpc/response/1", answer.to_vec());
    let events = h.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SessionLimits(LimitsReport::Invalid(_)))),
        "{events:?}"
    );
    let values = json!({"t": 1}).as_object().cloned().unwrap();
    assert_eq!(
        h.conn.command(h.now, Command::telemetry(values.clone())),
        Err(CommandError::JsonOnProtobufTopic)
    );
    let mut c = config(ProtocolVersion::V5);
    c.role = Role::Device;
    c.protobuf_profile = true;
    c.device_topics = gateway_proto::topic::TopicFamily::V2Json;
    let mut h = Harness::new(c);
    h.connect();
    assert!(h.conn.command(h.now, Command::telemetry(values)).is_ok());
}
