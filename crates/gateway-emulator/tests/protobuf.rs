//! The protobuf Device API (`v2/.../p`, and v1/v2 for a PROTOBUF device profile) end to end:
//! the real client core (`gateway_proto::Connection` with `TopicFamily::V2Proto` and its raw
//! commands) against the sans-IO emulator, with payloads encoded and decoded by prost structs
//! derived here by hand from ThingsBoard's default profile schemas and its fixed transport
//! messages, independently of the emulator's own codec. Error paths are driven with raw MQTT.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use gateway_emulator::{
    ClaimOutcome, ClientRpcAnswer, Event as EmuEvent, JsonCompatibility, NewDevice, ProtoSchemas,
    RpcCall, RpcOutcome, SchemaRole,
};
use gateway_proto::limits::LimitsReport;
use gateway_proto::raw::RawDownlink;
use gateway_proto::topic::TopicFamily;
use gateway_proto::wire::QoS;
use gateway_proto::{Command, Config, Credentials, Event, ProtocolVersion, RequestId, Role};
use proptest::prelude::*;
use prost::Message;
use serde_json::{json, Map, Value};

mod common;
mod link;

use common::{puback, Harness, V311, V5};
use link::Link;

// ---- the default profile schemas (ProtoTransportPayloadConfiguration / the profile UI) --------

/// `telemetry.SensorDataReading`.
#[derive(Clone, PartialEq, Message)]
struct SensorDataReading {
    #[prost(double, optional, tag = "1")]
    temperature: Option<f64>,
    #[prost(double, optional, tag = "2")]
    humidity: Option<f64>,
    #[prost(message, optional, tag = "3")]
    inner_object: Option<InnerObject>,
}

/// `telemetry.SensorDataReading.InnerObject`.
#[derive(Clone, PartialEq, Message)]
struct InnerObject {
    #[prost(string, optional, tag = "1")]
    key1: Option<String>,
    #[prost(bool, optional, tag = "2")]
    key2: Option<bool>,
    #[prost(double, optional, tag = "3")]
    key3: Option<f64>,
    #[prost(int32, optional, tag = "4")]
    key4: Option<i32>,
    #[prost(string, optional, tag = "5")]
    key5: Option<String>,
}

/// `attributes.SensorConfiguration`.
#[derive(Clone, PartialEq, Message)]
struct SensorConfiguration {
    #[prost(string, optional, tag = "1")]
    firmware_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    serial_number: Option<String>,
}

/// `rpc.RpcRequestMsg`.
#[derive(Clone, PartialEq, Message)]
struct RpcRequestMsg {
    #[prost(string, optional, tag = "1")]
    method: Option<String>,
    #[prost(int32, optional, tag = "2")]
    request_id: Option<i32>,
    #[prost(string, optional, tag = "3")]
    params: Option<String>,
}

/// `rpc.RpcResponseMsg`.
#[derive(Clone, PartialEq, Message)]
struct RpcResponseMsg {
    #[prost(string, optional, tag = "1")]
    payload: Option<String>,
}

// ---- ThingsBoard's fixed messages (transport.proto "transportapi", queue.proto "transport") ---

/// `transportapi.AttributesRequest`.
#[derive(Clone, PartialEq, Message)]
struct AttributesRequest {
    #[prost(string, tag = "1")]
    client_keys: String,
    #[prost(string, tag = "2")]
    shared_keys: String,
}

/// `transportapi.RpcRequest`.
#[derive(Clone, PartialEq, Message)]
struct RpcRequest {
    #[prost(string, tag = "1")]
    method: String,
    #[prost(string, tag = "2")]
    params: String,
}

/// `transportapi.ClaimDevice`.
#[derive(Clone, PartialEq, Message)]
struct ClaimDevice {
    #[prost(string, tag = "1")]
    secret_key: String,
    #[prost(int64, tag = "2")]
    duration_ms: i64,
}

/// `transport.KeyValueType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
enum KeyValueType {
    BooleanV = 0,
    LongV = 1,
    DoubleV = 2,
    StringV = 3,
    JsonV = 4,
}

/// `transport.KeyValueProto`.
#[derive(Clone, PartialEq, Message)]
struct KeyValueProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(enumeration = "KeyValueType", tag = "2")]
    r#type: i32,
    #[prost(bool, tag = "3")]
    bool_v: bool,
    #[prost(int64, tag = "4")]
    long_v: i64,
    #[prost(double, tag = "5")]
    double_v: f64,
    #[prost(string, tag = "6")]
    string_v: String,
    #[prost(string, tag = "7")]
    json_v: String,
}

/// `transport.TsKvProto`.
#[derive(Clone, PartialEq, Message)]
struct TsKvProto {
    #[prost(int64, tag = "1")]
    ts: i64,
    #[prost(message, optional, tag = "2")]
    kv: Option<KeyValueProto>,
}

/// `transport.GetAttributeResponseMsg`.
#[derive(Clone, PartialEq, Message)]
struct GetAttributeResponseMsg {
    #[prost(int32, tag = "1")]
    request_id: i32,
    #[prost(message, repeated, tag = "2")]
    client_attribute_list: Vec<TsKvProto>,
    #[prost(message, repeated, tag = "3")]
    shared_attribute_list: Vec<TsKvProto>,
    #[prost(bool, tag = "4")]
    is_multiple_attributes_request: bool,
    #[prost(string, tag = "5")]
    error: String,
}

/// `transport.AttributeUpdateNotificationMsg`.
#[derive(Clone, PartialEq, Message)]
struct AttributeUpdateNotificationMsg {
    #[prost(message, repeated, tag = "1")]
    shared_updated: Vec<TsKvProto>,
    #[prost(string, repeated, tag = "2")]
    shared_deleted: Vec<String>,
}

/// `transport.ToServerRpcResponseMsg`.
#[derive(Clone, PartialEq, Message)]
struct ToServerRpcResponseMsg {
    #[prost(int32, tag = "1")]
    request_id: i32,
    #[prost(string, tag = "2")]
    payload: String,
    #[prost(string, tag = "3")]
    error: String,
}

/// A `TsKvProto` list as key → (typed JSON value, ts).
fn kvs(list: &[TsKvProto]) -> BTreeMap<String, (Value, i64)> {
    list.iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap();
            let value = match KeyValueType::try_from(kv.r#type).unwrap() {
                KeyValueType::BooleanV => json!(kv.bool_v),
                KeyValueType::LongV => json!(kv.long_v),
                KeyValueType::DoubleV => json!(kv.double_v),
                KeyValueType::StringV => json!(kv.string_v),
                KeyValueType::JsonV => serde_json::from_str(&kv.json_v).unwrap(),
            };
            (kv.key, (value, e.ts))
        })
        .collect()
}

// ---- harness ----------------------------------------------------------------------------------

const EPOCH_MS: i64 = 1_700_000_000_000;
const PROFILE: &str = "proto-sensor";

fn values(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// A device connection on the `/p` family that does not ask `getSessionLimits` (the two
/// `..._session_limits_...` tests cover it, with and without `Config::protobuf_profile`).
fn proto_config() -> Config {
    let mut c = Config::new(Credentials::AccessToken("SENSOR".into()));
    c.role = Role::Device;
    c.device_topics = TopicFamily::V2Proto;
    c.limits.session_limits_wait = None;
    c.reconnect.jitter_percent = 0;
    c
}

fn sensor_link(schemas: ProtoSchemas) -> Link {
    let mut link = Link::new(proto_config(), |emu| {
        emu.create_device(NewDevice::device("Sensor", "SENSOR").with_type(PROFILE))
            .unwrap();
        emu.set_profile_protobuf(PROFILE, schemas);
    });
    assert!(link
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Connected { .. })));
    link
}

impl Link {
    fn command(&mut self, command: Command) -> RequestId {
        let id = self.conn.command(self.now, command).unwrap();
        self.settle();
        id
    }

    fn raw_events(&mut self) -> Vec<RawDownlink> {
        self.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Raw(raw) => Some(raw),
                _ => None,
            })
            .collect()
    }

    fn rpc_outcomes(&mut self) -> Vec<RpcOutcome> {
        std::mem::take(&mut self.emu_events)
            .into_iter()
            .filter_map(|e| match e {
                EmuEvent::RpcCompleted { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    }
}

// ---- uplinks ----------------------------------------------------------------------------------

#[test]
fn telemetry_and_attributes_are_decoded_with_the_profile_schemas() {
    let mut l = sensor_link(ProtoSchemas::thingsboard_defaults());
    let reading = SensorDataReading {
        temperature: Some(21.5),
        humidity: None,
        inner_object: Some(InnerObject {
            key1: Some("a".into()),
            key4: Some(7),
            ..InnerObject::default()
        }),
    };
    let t = l.command(Command::telemetry_bytes(reading.encode_to_vec(), 2));
    let config = SensorConfiguration {
        firmware_version: Some("1.2".into()),
        serial_number: None,
    };
    let a = l.command(Command::attributes_bytes(config.encode_to_vec(), 1));
    assert_eq!(
        l.take_events(),
        vec![Event::Delivered(t), Event::Delivered(a)]
    );
    let latest = l.emu.latest_telemetry("Sensor").unwrap();
    // Unset `optional` fields are left out; the nested message is one JSON value.
    assert_eq!(
        latest.keys().collect::<Vec<_>>(),
        vec!["innerObject", "temperature"]
    );
    assert_eq!(latest["temperature"].value, json!(21.5));
    assert!(latest["temperature"].value.is_f64());
    assert_eq!(latest["innerObject"].value, json!({"key1": "a", "key4": 7}));
    // Stored like JSON: ThingsBoard's type cast turns the numeric string into a double.
    assert_eq!(
        l.emu.client_attributes("Sensor").unwrap(),
        values(json!({"firmwareVersion": 1.2}))
    );
}

#[test]
fn a_custom_schema_prints_defaults_int64_as_text_and_json_names() {
    // Unlabelled proto3 fields have no presence: printed at their default when unset.
    let telemetry = "syntax = \"proto3\"; enum Mode { IDLE = 0; RUN = 1; }\n\
        message Reading { int64 total_count = 1; Mode mode = 2; repeated int32 samples = 3; bool ok = 4; }";
    let schemas = ProtoSchemas::new(
        telemetry,
        ProtoSchemas::DEFAULT_ATTRIBUTES,
        ProtoSchemas::DEFAULT_RPC_REQUEST,
        ProtoSchemas::DEFAULT_RPC_RESPONSE,
    )
    .unwrap();
    assert_eq!(schemas.text(SchemaRole::Telemetry), telemetry);
    let mut l = sensor_link(schemas);

    #[derive(Clone, PartialEq, Message)]
    struct Reading {
        #[prost(int64, tag = "1")]
        total_count: i64,
        #[prost(int32, tag = "2")]
        mode: i32,
        #[prost(int32, repeated, tag = "3")]
        samples: Vec<i32>,
        #[prost(bool, tag = "4")]
        ok: bool,
    }
    let r = Reading {
        total_count: 9_000_000_000,
        mode: 1,
        samples: vec![3, -4],
        ok: false,
    };
    let t = l.command(Command::telemetry_bytes(r.encode_to_vec(), 4));
    assert_eq!(l.take_events(), vec![Event::Delivered(t)]);
    let latest = l.emu.latest_telemetry("Sensor").unwrap();
    // int64 is printed as a JSON string and type-cast back to a long by ThingsBoard.
    assert_eq!(latest["totalCount"].value, json!(9_000_000_000i64));
    assert_eq!(latest["mode"].value, json!("RUN"));
    assert_eq!(latest["samples"].value, json!([3, -4]));
    assert_eq!(latest["ok"].value, json!(false), "default printed");
}

// ---- downlinks --------------------------------------------------------------------------------

#[test]
fn shared_attribute_updates_arrive_as_attribute_update_notification_msg() {
    let mut l = sensor_link(ProtoSchemas::thingsboard_defaults());
    l.advance(Duration::from_secs(3));
    l.emu
        .set_shared_attributes(
            "Sensor",
            values(
                json!({"mode": "eco", "interval": 5, "ratio": 0.5, "on": true, "cfg": {"a": 1}}),
            ),
        )
        .unwrap();
    l.settle();
    let raw = l.raw_events();
    let [RawDownlink::AttributeUpdate(bytes)] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    let msg = AttributeUpdateNotificationMsg::decode(bytes.clone()).unwrap();
    let updated = kvs(&msg.shared_updated);
    let at = EPOCH_MS + 3_000;
    assert_eq!(updated["mode"], (json!("eco"), at));
    assert_eq!(updated["interval"], (json!(5), at));
    assert_eq!(updated["ratio"], (json!(0.5), at));
    assert_eq!(updated["on"], (json!(true), at));
    assert_eq!(updated["cfg"], (json!({"a": 1}), at));
    assert!(msg.shared_deleted.is_empty());

    l.emu
        .delete_shared_attributes("Sensor", &["mode".to_owned()])
        .unwrap();
    l.settle();
    let raw = l.raw_events();
    let [RawDownlink::AttributeUpdate(bytes)] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    let msg = AttributeUpdateNotificationMsg::decode(bytes.clone()).unwrap();
    assert!(msg.shared_updated.is_empty());
    assert_eq!(msg.shared_deleted, vec!["mode".to_owned()]);
}

#[test]
fn attribute_requests_are_answered_with_get_attribute_response_msg() {
    let mut l = sensor_link(ProtoSchemas::thingsboard_defaults());
    let config = SensorConfiguration {
        firmware_version: Some("v1.2".into()),
        serial_number: Some("S-9".into()),
    };
    l.command(Command::attributes_bytes(config.encode_to_vec(), 2));
    l.emu
        .set_shared_attributes("Sensor", values(json!({"mode": "eco"})))
        .unwrap();
    l.settle();
    l.take_events();
    let request = AttributesRequest {
        client_keys: "firmwareVersion".into(),
        shared_keys: "mode,nope".into(),
    };
    let r = l.command(Command::request_attributes_bytes(request.encode_to_vec()));
    let raw = l.raw_events();
    let [RawDownlink::AttributeResponse { request, payload }] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    assert_eq!(*request, r);
    let msg = GetAttributeResponseMsg::decode(payload.clone()).unwrap();
    assert_eq!(
        kvs(&msg.client_attribute_list)
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect::<Vec<_>>(),
        vec![("firmwareVersion".to_owned(), json!("v1.2"))]
    );
    assert_eq!(kvs(&msg.shared_attribute_list)["mode"].0, json!("eco"));
    assert!(msg.is_multiple_attributes_request);
    assert!(msg.error.is_empty());

    // An empty request: every attribute of both scopes.
    let all = l.command(Command::request_attributes_bytes(Bytes::new()));
    let raw = l.raw_events();
    let [RawDownlink::AttributeResponse { request, payload }] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    assert_eq!(*request, all);
    let msg = GetAttributeResponseMsg::decode(payload.clone()).unwrap();
    assert_eq!(msg.client_attribute_list.len(), 2);
    assert_eq!(msg.shared_attribute_list.len(), 1);
}

#[test]
fn server_rpc_uses_the_rpc_request_schema_and_the_reply_is_stored() {
    let mut l = sensor_link(ProtoSchemas::thingsboard_defaults());
    let ticket = l
        .emu
        .send_rpc("Sensor", RpcCall::two_way("setMode", json!("eco")), l.now)
        .unwrap();
    l.settle();
    let raw = l.raw_events();
    let [RawDownlink::RpcRequest { id, payload }] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    let request = RpcRequestMsg::decode(payload.clone()).unwrap();
    assert_eq!(
        request,
        RpcRequestMsg {
            method: Some("setMode".into()),
            request_id: Some(i32::try_from(*id).unwrap()),
            params: Some("eco".into()),
        }
    );
    let reply = RpcResponseMsg {
        payload: Some("done".into()),
    };
    l.command(Command::rpc_reply_bytes(*id, reply.encode_to_vec()));
    assert!(l.emu_events.iter().any(|e| matches!(
        e,
        EmuEvent::RpcCompleted { ticket: t, outcome: RpcOutcome::Reply(v), .. }
            if *t == ticket && *v == json!({"payload": "done"})
    )));
}

#[test]
fn object_params_do_not_fit_the_default_schema_and_the_rpc_fails_like_thingsboard() {
    let mut l = sensor_link(ProtoSchemas::thingsboard_defaults());
    l.emu
        .send_rpc("Sensor", RpcCall::two_way("set", json!({"pin": 7})), l.now)
        .unwrap();
    l.settle();
    assert!(l.raw_events().is_empty(), "nothing is published");
    assert_eq!(
        l.rpc_outcomes(),
        vec![RpcOutcome::Reply(json!({
            "result": "INVALID_ARGUMENTS",
            "error": "Failed to convert device RPC command to MQTT msg: set{\"pin\":7}"
        }))]
    );
}

#[test]
fn object_params_fit_a_schema_with_a_params_message() {
    // The RPC-request schema of ThingsBoard's own MQTT RPC proto tests.
    let rpc_request = "syntax =\"proto3\";\npackage rpc;\n\nmessage RpcRequestMsg {\n\
        optional string method = 1;\n  optional int32 requestId = 2;\n  Params params = 3;\n\n\
        message Params {\n      optional string pin = 1;\n      optional int32 value = 2;\n   }\n}";
    let schemas = ProtoSchemas::new(
        ProtoSchemas::DEFAULT_TELEMETRY,
        ProtoSchemas::DEFAULT_ATTRIBUTES,
        rpc_request,
        "",
    )
    .unwrap();
    let mut l = sensor_link(schemas);

    #[derive(Clone, PartialEq, Message)]
    struct Params {
        #[prost(string, optional, tag = "1")]
        pin: Option<String>,
        #[prost(int32, optional, tag = "2")]
        value: Option<i32>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Request {
        #[prost(string, optional, tag = "1")]
        method: Option<String>,
        #[prost(int32, optional, tag = "2")]
        request_id: Option<i32>,
        #[prost(message, optional, tag = "3")]
        params: Option<Params>,
    }
    l.emu
        .send_rpc(
            "Sensor",
            RpcCall::two_way("setGpio", json!({"pin": "23", "value": 1, "extra": true})),
            l.now,
        )
        .unwrap();
    l.settle();
    let raw = l.raw_events();
    let [RawDownlink::RpcRequest { payload, .. }] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    let request = Request::decode(payload.clone()).unwrap();
    assert_eq!(request.method.as_deref(), Some("setGpio"));
    assert_eq!(
        request.params,
        Some(Params {
            pin: Some("23".into()),
            value: Some(1)
        })
    );
}

#[test]
fn client_rpc_is_answered_with_to_server_rpc_response_msg() {
    let mut l = sensor_link(ProtoSchemas::thingsboard_defaults());
    l.emu
        .set_client_rpc_handler(Some(Box::new(|call| match call.method.as_str() {
            "getTime" if call.params == json!({"tz": "UTC"}) => {
                ClientRpcAnswer::Reply(json!({"time": 42}))
            }
            "fail" => ClientRpcAnswer::Error("no".into()),
            _ => ClientRpcAnswer::NoAnswer,
        })));
    let call = RpcRequest {
        method: "getTime".into(),
        params: r#"{"tz":"UTC"}"#.into(),
    };
    let r = l.command(Command::rpc_bytes(call.encode_to_vec()));
    let raw = l.raw_events();
    let [RawDownlink::RpcResponse { request, payload }] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    assert_eq!(*request, r);
    let answer = ToServerRpcResponseMsg::decode(payload.clone()).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&answer.payload).unwrap(),
        json!({"time": 42})
    );
    assert!(answer.error.is_empty());

    let fail = RpcRequest {
        method: "fail".into(),
        params: String::new(),
    };
    l.command(Command::rpc_bytes(fail.encode_to_vec()));
    let raw = l.raw_events();
    let [RawDownlink::RpcResponse { payload, .. }] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    let answer = ToServerRpcResponseMsg::decode(payload.clone()).unwrap();
    assert_eq!((answer.payload.as_str(), answer.error.as_str()), ("", "no"));
}

// ---- failures, with raw MQTT ------------------------------------------------------------------

fn proto_harness() -> Harness {
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::device("Sensor", "SENSOR").with_type(PROFILE))
        .unwrap();
    h.emu
        .set_profile_protobuf(PROFILE, ProtoSchemas::thingsboard_defaults());
    h
}

fn reading(t: f64) -> Vec<u8> {
    SensorDataReading {
        temperature: Some(t),
        ..SensorDataReading::default()
    }
    .encode_to_vec()
}

#[test]
fn a_json_profile_devices_protobuf_telemetry_fails_like_thingsboard() {
    let mut h = proto_harness();
    // "Device" keeps the default JSON profile: no descriptor → AdaptorException.
    let dev = h.connect(V5, common::DEV_TOKEN);
    h.publish(dev, "v2/t/p", &reading(1.0), 1);
    h.publish(
        dev,
        "v2/a/p",
        &SensorConfiguration::default().encode_to_vec(),
        2,
    );
    assert_eq!(h.take(dev), vec![puback(1, 0x99), puback(2, 0x99)]);
    assert!(h.emu.telemetry("Device").unwrap().is_empty());
    // The fixed messages need no descriptor: on `/p` they work for a JSON profile too, and
    // the answer is protobuf.
    let request = AttributesRequest {
        client_keys: String::new(),
        shared_keys: "mode".into(),
    };
    h.publish(dev, "v2/a/req/p/7", &request.encode_to_vec(), 3);
    let packets = h.take(dev);
    assert_eq!(packets.first(), Some(&puback(3, 0)));
    let Some(gateway_proto::wire::Packet::Publish(answer)) = packets.get(1) else {
        panic!("{packets:?}")
    };
    assert_eq!(answer.topic, "v2/a/res/p/7");
    let msg = GetAttributeResponseMsg::decode(answer.payload.clone()).unwrap();
    assert_eq!(msg.request_id, 7);
    // A protobuf claim on v1 is read with the JSON profile's adaptor: it fails.
    let claim = ClaimDevice {
        secret_key: "s3".into(),
        duration_ms: 60_000,
    };
    h.publish(dev, "v1/devices/me/claim", &claim.encode_to_vec(), 4);
    assert_eq!(h.take(dev), vec![puback(4, 0x99)]);
    // On MQTT 3.1.1 the failure closes the connection.
    let dev = h.connect(V311, common::DEV_TOKEN);
    h.publish(dev, "v2/t/p", &reading(1.0), 5);
    assert_eq!(h.take(dev), vec![]);
    assert!(h.closed(dev));
}

#[test]
fn a_protobuf_profile_uses_protobuf_on_v1_and_plain_v2_and_json_on_j() {
    let mut h = proto_harness();
    let dev = h.connect(V5, "SENSOR");
    h.publish(dev, "v1/devices/me/telemetry", &reading(1.0), 1);
    h.publish(dev, "v2/t", &reading(2.0), 2);
    h.publish(dev, "v2/t/j", br#"{"temperature":3.0}"#, 3);
    // JSON where the profile says protobuf is an AdaptorException.
    h.publish(dev, "v1/devices/me/telemetry", br#"{"temperature":4.0}"#, 4);
    assert_eq!(
        h.take(dev),
        vec![puback(1, 0), puback(2, 0), puback(3, 0), puback(4, 0x99)]
    );
    let points: Vec<Value> = h.emu.telemetry("Sensor").unwrap()["temperature"]
        .iter()
        .map(|p| p.value.clone())
        .collect();
    assert_eq!(points.len(), 3);
    // The claim topic follows the profile too.
    let claim = ClaimDevice {
        secret_key: "s3".into(),
        duration_ms: 60_000,
    };
    h.publish(dev, "v1/devices/me/claim", &claim.encode_to_vec(), 5);
    assert_eq!(h.take(dev), vec![puback(5, 0)]);
    assert_eq!(
        h.emu.claim_device("Sensor", "s3", h.now).unwrap(),
        ClaimOutcome::Success
    );
    // Back to JSON: the same session follows the profile change.
    h.emu.set_profile_json(PROFILE);
    h.publish(dev, "v1/devices/me/telemetry", br#"{"temperature":5.0}"#, 6);
    h.publish(dev, "v2/t/p", &reading(6.0), 7);
    assert_eq!(h.take(dev), vec![puback(6, 0), puback(7, 0x99)]);
}

#[test]
fn garbage_on_protobuf_topics_fails_without_panicking() {
    let mut h = proto_harness();
    let dev = h.connect(V5, "SENSOR");
    // Wire type 7; a truncated length; an end-group tag; field number 0; bad UTF-8.
    let cases: [&[u8]; 5] = [
        &[0x0F],
        &[0x1A, 0x05, 0x00],
        &[0x0C],
        &[0x00],
        &[0x1A, 0x03, 0x0A, 0x01, 0xFF],
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let pkid = u16::try_from(i + 1).unwrap();
        h.publish(dev, "v2/t/p", bytes, pkid);
        assert_eq!(h.take(dev), vec![puback(pkid, 0x99)], "{bytes:02x?}");
    }
    for topic in ["v2/a/p", "v2/a/req/p/1", "v2/r/req/p/2", "v2/r/res/p/3"] {
        h.publish(dev, topic, &[0x0F], 9);
        assert_eq!(h.take(dev), vec![puback(9, 0x99)], "{topic}");
    }
    assert!(!h.closed(dev));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes on every protobuf topic: never a panic, only a success or 0x99, and the
    /// session stays up.
    #[test]
    fn random_bytes_on_protobuf_topics_never_panic(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)
    ) {
        let mut h = proto_harness();
        let dev = h.connect(V5, "SENSOR");
        let topics = ["v2/t/p", "v2/a/p", "v2/a/req/p/1", "v2/r/req/p/2", "v2/r/res/p/3", "v1/devices/me/telemetry"];
        for (i, payload) in payloads.iter().enumerate() {
            let pkid = u16::try_from(i + 1).unwrap();
            let topic = topics[i % topics.len()];
            h.publish(dev, topic, payload, pkid);
            let packets = h.take(dev);
            prop_assert!(
                packets.first() == Some(&puback(pkid, 0)) || packets == vec![puback(pkid, 0x99)],
                "{topic} {payload:02x?} → {packets:?}"
            );
        }
        prop_assert!(!h.closed(dev));
    }
}

/// A device of the PROTOBUF profile that asks `getSessionLimits` on every connect (the
/// default), with or without `Config::protobuf_profile`; its events over 10 s.
fn asking_session_limits(version: ProtocolVersion, protobuf_profile: bool) -> (Link, Vec<Event>) {
    let mut c = proto_config();
    c.limits = gateway_proto::LimitsConfig::default();
    c.protobuf_profile = protobuf_profile;
    c.protocol = version;
    let mut l = Link::new(c, |emu| {
        emu.create_device(NewDevice::device("Sensor", "SENSOR").with_type(PROFILE))
            .unwrap();
        emu.set_profile_protobuf(PROFILE, ProtoSchemas::thingsboard_defaults());
    });
    l.advance(Duration::from_secs(10));
    let events = l.take_events();
    (l, events)
}

/// Without `Config::protobuf_profile` the client core asks `getSessionLimits` in JSON on
/// `v1/devices/me/rpc/request/{id}`. For a PROTOBUF profile ThingsBoard reads that topic with
/// the protobuf adaptor, which fails on JSON (an `AdaptorException`): MQTT 5 gets PUBACK 0x99
/// and no limits, MQTT 3.1.1 a closed connection after every CONNACK. The next test is the
/// same session with the option set.
#[test]
fn a_json_session_limits_request_fails_on_a_protobuf_profile() {
    for version in [V5, V311] {
        let (_, events) = asking_session_limits(version, false);
        let drops = events
            .iter()
            .filter(|e| matches!(e, Event::Disconnected { .. }))
            .count();
        if version == V5 {
            assert_eq!(drops, 0, "{events:?}");
            assert!(events.contains(&Event::SessionLimits(LimitsReport::NoAnswer)));
        } else {
            assert!(drops >= 2, "{events:?}");
        }
    }
}

/// With `Config::protobuf_profile` the request is a `transportapi.RpcRequest` and the answer,
/// a `ToServerRpcResponseMsg` carrying the JSON, is applied: no disconnect on either version.
#[test]
fn a_protobuf_profile_gets_its_session_limits_in_protobuf() {
    for version in [V5, V311] {
        let (mut l, events) = asking_session_limits(version, true);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::Disconnected { .. })),
            "{version:?}: {events:?}"
        );
        let applied = events.iter().find_map(|e| match e {
            Event::SessionLimits(LimitsReport::Applied(a)) => Some(a),
            _ => None,
        });
        let applied = applied.unwrap_or_else(|| panic!("{version:?}: {events:?}"));
        assert_eq!(applied.server.max_payload_size, 65_536, "{version:?}");
        // Data queued behind the limits still flows, in protobuf.
        let reading = SensorDataReading {
            temperature: Some(3.5),
            ..SensorDataReading::default()
        };
        let t = l.command(Command::telemetry_bytes(reading.encode_to_vec(), 1));
        assert_eq!(l.take_events(), vec![Event::Delivered(t)], "{version:?}");
        assert_eq!(
            l.emu.latest_telemetry("Sensor").unwrap()["temperature"].value,
            json!(3.5)
        );
    }
}

/// A PROTOBUF profile on the v1 topics: raw uplinks are read with the profile's schemas, the
/// typed JSON commands are refused before anything is sent, and downlinks on the v1 topics
/// are raw protobuf.
#[test]
fn a_protobuf_profile_on_v1_topics_speaks_protobuf_both_ways() {
    let mut c = proto_config();
    c.device_topics = TopicFamily::V1;
    c.protobuf_profile = true;
    let mut l = Link::new(c, |emu| {
        emu.create_device(NewDevice::device("Sensor", "SENSOR").with_type(PROFILE))
            .unwrap();
        emu.set_profile_protobuf(PROFILE, ProtoSchemas::thingsboard_defaults());
    });
    l.take_events();
    let reading = SensorDataReading {
        humidity: Some(40.0),
        ..SensorDataReading::default()
    };
    let t = l.command(Command::telemetry_bytes(reading.encode_to_vec(), 1));
    assert_eq!(l.take_events(), vec![Event::Delivered(t)]);
    assert_eq!(
        l.emu.latest_telemetry("Sensor").unwrap()["humidity"].value,
        json!(40.0)
    );
    assert_eq!(
        l.conn
            .command(l.now, Command::telemetry(values(json!({"t": 1})))),
        Err(gateway_proto::CommandError::JsonOnProtobufTopic)
    );
    l.emu
        .set_shared_attributes("Sensor", values(json!({"mode": "eco"})))
        .unwrap();
    l.settle();
    let raw = l.raw_events();
    let [RawDownlink::AttributeUpdate(bytes)] = raw.as_slice() else {
        panic!("{raw:?}")
    };
    let msg = AttributeUpdateNotificationMsg::decode(bytes.clone()).unwrap();
    assert_eq!(kvs(&msg.shared_updated)["mode"].0, json!("eco"));
}

// ---- enableCompatibilityWithJsonPayloadFormat / useJsonPayloadFormatForDefaultDownlinkTopics ---

fn compat_harness(json: JsonCompatibility) -> Harness {
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::device("Sensor", "SENSOR").with_type(PROFILE))
        .unwrap();
    h.emu.set_profile_protobuf(
        PROFILE,
        ProtoSchemas::thingsboard_defaults().with_json_compatibility(json),
    );
    h
}

/// The one PUBLISH among `packets`: its topic and payload.
fn the_publish(packets: &[gateway_proto::wire::Packet]) -> (String, Bytes) {
    let publishes: Vec<_> = packets
        .iter()
        .filter_map(|p| match p {
            gateway_proto::wire::Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
            _ => None,
        })
        .collect();
    let [one] = publishes.as_slice() else {
        panic!("{packets:?}")
    };
    one.clone()
}

/// `BackwardCompatibilityAdaptor`: on v1 and plain v2 an uplink the protobuf adaptor refuses is
/// read as JSON; `/p` and `/j` keep one format; bytes neither can read still fail.
#[test]
fn json_compatibility_reads_json_after_protobuf_on_the_default_topics_only() {
    let mut h = compat_harness(JsonCompatibility::Uplinks);
    let dev = h.connect(V5, "SENSOR");
    h.publish(dev, "v1/devices/me/telemetry", &reading(1.0), 1);
    h.publish(dev, "v1/devices/me/telemetry", br#"{"temperature":2.0}"#, 2);
    h.publish(dev, "v2/t", br#"{"ts":5,"values":{"temperature":3.0}}"#, 3);
    h.publish(dev, "v2/t/p", br#"{"temperature":4.0}"#, 4);
    h.publish(dev, "v1/devices/me/telemetry", &[0x0F], 5);
    h.publish(
        dev,
        "v1/devices/me/attributes",
        br#"{"firmwareVersion":"j1","x":1}"#,
        6,
    );
    assert_eq!(
        h.take(dev),
        vec![
            puback(1, 0),
            puback(2, 0),
            puback(3, 0),
            puback(4, 0x99),
            puback(5, 0x99),
            puback(6, 0)
        ]
    );
    let points: Vec<Value> = h.emu.telemetry("Sensor").unwrap()["temperature"]
        .iter()
        .map(|p| p.value.clone())
        .collect();
    assert_eq!(points.len(), 3, "{points:?}");
    assert!(points.contains(&json!(2.0)) && points.contains(&json!(3.0)));
    assert_eq!(h.emu.client_attributes("Sensor").unwrap()["x"], json!(1));

    // A JSON claim, and a JSON attribute request whose answer stays protobuf (downlinks
    // follow the profile while only the first flag is on).
    h.publish(
        dev,
        "v1/devices/me/claim",
        br#"{"secretKey":"s9","durationMs":60000}"#,
        7,
    );
    assert_eq!(h.take(dev), vec![puback(7, 0)]);
    assert_eq!(
        h.emu.claim_device("Sensor", "s9", h.now).unwrap(),
        ClaimOutcome::Success
    );
    h.emu
        .set_shared_attributes("Sensor", values(json!({"mode": "eco"})))
        .unwrap();
    h.take(dev);
    h.publish(
        dev,
        "v1/devices/me/attributes/request/3",
        br#"{"sharedKeys":"mode"}"#,
        8,
    );
    let packets = h.take(dev);
    assert_eq!(packets.first(), Some(&puback(8, 0)));
    let (topic, payload) = the_publish(&packets);
    assert_eq!(topic, "v1/devices/me/attributes/response/3");
    let msg = GetAttributeResponseMsg::decode(payload).unwrap();
    assert_eq!(kvs(&msg.shared_attribute_list)["mode"].0, json!("eco"));

    // Without the flag the same JSON fails (the profile's protobuf adaptor alone).
    let mut h = compat_harness(JsonCompatibility::Off);
    let dev = h.connect(V5, "SENSOR");
    h.publish(dev, "v1/devices/me/telemetry", br#"{"temperature":2.0}"#, 1);
    h.publish(dev, "v1/devices/me/claim", br#"{"secretKey":"s9"}"#, 2);
    assert_eq!(h.take(dev), vec![puback(1, 0x99), puback(2, 0x99)]);
}

/// With `useJsonPayloadFormatForDefaultDownlinkTopics` the v1 downlinks are JSON; plain v2
/// and `/p` stay protobuf. With the first flag alone v1 stays protobuf.
#[test]
fn json_downlinks_on_v1_topics_only_with_the_second_flag() {
    for json_v1 in [true, false] {
        let mut h = compat_harness(if json_v1 {
            JsonCompatibility::UplinksAndV1Downlinks
        } else {
            JsonCompatibility::Uplinks
        });
        let dev = h.connect(V5, "SENSOR");
        h.subscribe(dev, &[("v1/devices/me/attributes", QoS::AtLeastOnce)]);
        h.emu
            .set_shared_attributes("Sensor", values(json!({"mode": "eco"})))
            .unwrap();
        let (topic, payload) = the_publish(&h.take(dev));
        assert_eq!(topic, "v1/devices/me/attributes");
        if json_v1 {
            assert_eq!(
                serde_json::from_slice::<Value>(&payload).unwrap(),
                json!({"mode": "eco"})
            );
        } else {
            let msg = AttributeUpdateNotificationMsg::decode(payload).unwrap();
            assert_eq!(kvs(&msg.shared_updated)["mode"].0, json!("eco"));
        }
        // Answers follow the topic the request came on.
        h.publish(
            dev,
            "v1/devices/me/attributes/request/1",
            br#"{"sharedKeys":"mode"}"#,
            2,
        );
        let (topic, payload) = the_publish(&h.take(dev));
        assert_eq!(topic, "v1/devices/me/attributes/response/1");
        if json_v1 {
            assert_eq!(
                serde_json::from_slice::<Value>(&payload).unwrap(),
                json!({"shared": {"mode": "eco"}})
            );
        } else {
            assert!(GetAttributeResponseMsg::decode(payload).is_ok());
        }
        h.publish(dev, "v2/a/req/4", br#"{"sharedKeys":"mode"}"#, 3);
        let (topic, payload) = the_publish(&h.take(dev));
        assert_eq!(topic, "v2/a/res/4");
        let msg = GetAttributeResponseMsg::decode(payload).unwrap();
        assert_eq!(kvs(&msg.shared_attribute_list)["mode"].0, json!("eco"));
        // Server RPC when subscribed on v1, then on plain v2.
        h.subscribe(dev, &[("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)]);
        h.emu
            .send_rpc("Sensor", RpcCall::one_way("setMode", json!("eco")), h.now)
            .unwrap();
        let (topic, payload) = the_publish(&h.take(dev));
        assert!(topic.starts_with("v1/devices/me/rpc/request/"), "{topic}");
        if json_v1 {
            assert_eq!(
                serde_json::from_slice::<Value>(&payload).unwrap(),
                json!({"method": "setMode", "params": "eco"})
            );
        } else {
            let msg = RpcRequestMsg::decode(payload).unwrap();
            assert_eq!(msg.method.as_deref(), Some("setMode"));
        }
        h.subscribe(dev, &[("v2/r/req/+", QoS::AtLeastOnce)]);
        h.emu
            .send_rpc("Sensor", RpcCall::one_way("setMode", json!("off")), h.now)
            .unwrap();
        let (topic, payload) = the_publish(&h.take(dev));
        assert!(topic.starts_with("v2/r/req/"), "{topic}");
        let msg = RpcRequestMsg::decode(payload).unwrap();
        assert_eq!(msg.params.as_deref(), Some("off"));
    }
}

/// The migration the flags are for: a device still on the JSON client, with its profile
/// switched to PROTOBUF with both flags, keeps working on the v1 topics with typed commands.
#[test]
fn a_json_client_keeps_working_against_a_protobuf_profile_with_both_flags() {
    let mut c = proto_config();
    c.device_topics = TopicFamily::V1;
    c.subscribe_api = true;
    let mut l = Link::new(c, |emu| {
        emu.create_device(NewDevice::device("Sensor", "SENSOR").with_type(PROFILE))
            .unwrap();
        emu.set_profile_protobuf(
            PROFILE,
            ProtoSchemas::thingsboard_defaults()
                .with_json_compatibility(JsonCompatibility::UplinksAndV1Downlinks),
        );
    });
    l.take_events();
    let t = l.command(Command::telemetry(values(json!({"temperature": 7.5}))));
    let a = l.command(Command::attributes(values(json!({"serial": "S-1"}))));
    l.settle();
    let events = l.take_events();
    assert!(events.contains(&Event::Delivered(t)), "{events:?}");
    assert!(events.contains(&Event::Delivered(a)), "{events:?}");
    assert_eq!(
        l.emu.latest_telemetry("Sensor").unwrap()["temperature"].value,
        json!(7.5)
    );
    l.emu
        .set_shared_attributes("Sensor", values(json!({"mode": "eco"})))
        .unwrap();
    l.settle();
    let events = l.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::AttributeUpdate { device: None, values, .. } if values.get("mode") == Some(&json!("eco"))
        )),
        "{events:?}"
    );
    let ticket = l
        .emu
        .send_rpc("Sensor", RpcCall::two_way("getTemp", json!({})), l.now)
        .unwrap();
    l.settle();
    let events = l.take_events();
    let Some(Event::RpcRequest { id, method, .. }) = events
        .iter()
        .find(|e| matches!(e, Event::RpcRequest { .. }))
        .cloned()
    else {
        panic!("{events:?}")
    };
    assert_eq!(method, "getTemp");
    l.command(Command::rpc_reply(id, json!({"t": 7.5})));
    l.settle();
    assert!(l.emu_events.iter().any(|e| matches!(
        e,
        EmuEvent::RpcCompleted { ticket: t, outcome: RpcOutcome::Reply(v), .. }
            if *t == ticket && *v == json!({"t": 7.5})
    )));
}

/// The flags do not reach the gateway API: a PROTOBUF gateway with them on still refuses JSON
/// gateway messages, and gets no per-device disconnect notice
/// (`BackwardCompatibilityAdaptor` has none).
#[test]
fn json_compatibility_does_not_apply_to_the_gateway_api() {
    let mut h = Harness::new();
    h.emu.set_profile_protobuf(
        "default",
        ProtoSchemas::thingsboard_defaults().with_json_compatibility(JsonCompatibility::Uplinks),
    );
    let gw = h.gateway(V5);
    h.publish(
        gw,
        "v1/gateway/telemetry",
        br#"{"A":[{"ts":1,"values":{"t":1}}]}"#,
        1,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0x99)]);
    assert!(h.emu.device("A").is_none());
    // Two devices at QoS 0: a plain PROTOBUF gateway would get one notice (see
    // gateway_protobuf.rs); this one gets none.
    let mut telemetry = gateway_proto::payload::GatewayTelemetry {
        devices: BTreeMap::new(),
    };
    for d in ["A", "B"] {
        telemetry.devices.insert(
            d.to_owned(),
            vec![gateway_proto::payload::TelemetryEntry::at(
                1,
                values(json!({"t": 1})),
            )],
        );
    }
    h.publish(gw, "v1/gateway/telemetry", &telemetry.to_protobuf(), 0);
    assert_eq!(h.take(gw), vec![]);
    assert!(h.emu.device("A").is_some() && h.emu.device("B").is_some());
}
