//! ThingsBoard JSON payloads, both directions: every message a client sends can be built and
//! parsed, and so can every message the server sends.
//!
//! Builders write JSON straight into a [`JsonSink`] (`Vec<u8>` or `BytesMut`) without building
//! intermediate `serde_json::Value` trees. Parsers take the raw network bytes and never panic;
//! they follow the server's acceptance rules (see the docs on each type) and report problems as
//! a typed [`PayloadError`]. They are stricter than the server's Gson in one respect: a number
//! sent as a string (`"id":"5"`) is a type error here.
//!
//! Maps are `serde_json::Map`, i.e. sorted by key, so builders emit keys in sorted order.

use std::fmt;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

pub mod device;
pub mod gateway;
pub mod gateway_protobuf;
pub mod protobuf;
mod protobuf_wire;
pub mod provision_protobuf;
mod writer;

pub use device::{
    ClientAttributes, ClientRpcResponse, CredentialsType, CredentialsValue, DeviceAttributeRequest,
    DeviceAttributeResponse, DeviceTelemetry, ProvisionRequest, ProvisionResponse, RateLimitWindow,
    RateLimits, SessionLimits,
};
pub(crate) use writer::{ObjWriter, WriteJson};

pub use gateway::{
    AttributeResult, Connect, Disconnect, DisconnectNotice, GatewayAttributeRequest,
    GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes, GatewayClaim,
    GatewayNotification, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, RequestedKeys,
};

/// Why a payload could not be parsed (or, for a few builders, built).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not valid JSON (syntax error, truncated input, invalid UTF-8). The server answers this
    /// with PUBACK 0x99 (v5) or closes the connection (v3).
    InvalidJson {
        /// 1-based line of the error (0 if unknown).
        line: usize,
        /// 1-based column of the error (0 if unknown).
        column: usize,
    },
    /// Valid JSON, but the top-level value (or a nested container) has the wrong shape, e.g.
    /// `[]` or `42` where an object is required. An empty payload counts as this (the server
    /// reads it as JSON null).
    WrongShape {
        /// What was expected.
        expected: &'static str,
    },
    /// A required field is absent.
    MissingField(&'static str),
    /// A field is present but has the wrong JSON type (or is out of range).
    WrongType {
        /// The field.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// A gateway message names a device with an empty string (the server rejects it).
    EmptyDeviceName,
    /// A multi-device gateway message has no usable device entry (the server's "message is
    /// empty" error: `{}`, or every per-device value of the wrong JSON type).
    NoDeviceEntries,
    /// A per-device entry of a gateway message failed conversion (array element that is not
    /// an object, bad `ts`, bad `metadata`...).
    DeviceEntry {
        /// Device whose entry failed.
        device: String,
        /// The underlying problem.
        error: Box<PayloadError>,
    },
    /// An attribute key cannot be encoded (device attribute requests use comma-separated
    /// strings, so keys must be non-empty and comma-free).
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A rate-limit string entry is not `capacity:seconds`.
    InvalidRateLimit(String),
    /// Protobuf bytes that do not decode (see [`protobuf`]).
    InvalidProtobuf(&'static str),
    /// A string field holds a value outside its known set (e.g. provisioning `status`).
    UnknownValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: String,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson { line, column } => {
                write!(f, "invalid JSON at line {line}, column {column}")
            }
            Self::WrongShape { expected } => write!(f, "wrong payload shape: expected {expected}"),
            Self::MissingField(field) => write!(f, "missing field `{field}`"),
            Self::WrongType { field, expected } => {
                write!(f, "field `{field}` has the wrong type: expected {expected}")
            }
            Self::EmptyDeviceName => f.write_str("empty device name"),
            Self::InvalidProtobuf(why) => write!(f, "invalid protobuf: {why}"),
            Self::NoDeviceEntries => f.write_str("no usable device entry in gateway message"),
            Self::DeviceEntry { device, error } => {
                write!(f, "entry for device {device:?}: {error}")
            }
            Self::InvalidKey { key, reason } => {
                write!(f, "invalid attribute key {key:?}: {reason}")
            }
            Self::InvalidRateLimit(entry) => {
                write!(
                    f,
                    "invalid rate limit entry {entry:?}: expected `capacity:seconds`"
                )
            }
            Self::UnknownValue { field, value } => {
                write!(f, "unknown value {value:?} for field `{field}`")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// A byte buffer builders can write JSON into.
pub trait JsonSink {
    /// Appends raw bytes.
    fn put(&mut self, bytes: &[u8]);
}

impl JsonSink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl JsonSink for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A message with a JSON wire form: build it with [`Payload::encode_into`] / [`Payload::to_vec`]
/// / [`Payload::to_bytes`], read it with [`Payload::parse`].
pub trait Payload: Sized {
    /// Appends the JSON form of `self` to `out`.
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S);

    /// Parses the payload bytes of an MQTT PUBLISH.
    fn parse(bytes: &[u8]) -> Result<Self, PayloadError>;

    /// The JSON form as a new `Vec<u8>`.
    fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The JSON form as `Bytes` (no copy beyond the encode).
    fn to_bytes(&self) -> Bytes {
        Bytes::from(self.to_vec())
    }
}

/// Any JSON value: used for device replies to server RPCs (the server stores them verbatim) and
/// other free-form bodies.
impl Payload for Value {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        self.write_json(out);
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        parse_value(bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------------------------

/// Parses any JSON value.
pub(crate) fn parse_value(bytes: &[u8]) -> Result<Value, PayloadError> {
    serde_json::from_slice(bytes).map_err(|e| PayloadError::InvalidJson {
        line: e.line(),
        column: e.column(),
    })
}

/// Parses a payload that must be a JSON object. Whitespace-only input is a shape error (the
/// server sees JSON null), not a syntax error.
pub(crate) fn parse_object(
    bytes: &[u8],
    expected: &'static str,
) -> Result<Map<String, Value>, PayloadError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::WrongShape { expected });
    }
    into_object(parse_value(bytes)?, expected)
}

pub(crate) fn into_object(
    value: Value,
    expected: &'static str,
) -> Result<Map<String, Value>, PayloadError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(PayloadError::WrongShape { expected }),
    }
}

pub(crate) fn take(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Value, PayloadError> {
    obj.remove(field).ok_or(PayloadError::MissingField(field))
}

pub(crate) fn req_str(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, PayloadError> {
    match take(obj, field)? {
        Value::String(s) => Ok(s),
        _ => Err(PayloadError::WrongType {
            field,
            expected: "string",
        }),
    }
}

/// Optional string: absent or `null` → `None`.
pub(crate) fn opt_str(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, PayloadError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(PayloadError::WrongType {
            field,
            expected: "string",
        }),
    }
}

pub(crate) fn as_u64(value: &Value, field: &'static str) -> Result<u64, PayloadError> {
    value.as_u64().ok_or(PayloadError::WrongType {
        field,
        expected: "unsigned integer",
    })
}

pub(crate) fn as_i64(value: &Value, field: &'static str) -> Result<i64, PayloadError> {
    value.as_i64().ok_or(PayloadError::WrongType {
        field,
        expected: "integer",
    })
}

pub(crate) fn req_u64(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<u64, PayloadError> {
    as_u64(&take(obj, field)?, field)
}

pub(crate) fn req_i64(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<i64, PayloadError> {
    as_i64(&take(obj, field)?, field)
}

/// Optional integer: absent or `null` → `None`.
pub(crate) fn opt_i64(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<i64>, PayloadError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_i64(&v, field).map(Some),
    }
}

/// Optional boolean: absent or `null` → `None`.
pub(crate) fn opt_bool(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<bool>, PayloadError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(PayloadError::WrongType {
            field,
            expected: "boolean",
        }),
    }
}

pub(crate) fn req_object(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Map<String, Value>, PayloadError> {
    match take(obj, field)? {
        Value::Object(m) => Ok(m),
        _ => Err(PayloadError::WrongType {
            field,
            expected: "object",
        }),
    }
}

pub(crate) fn string_array(value: Value, field: &'static str) -> Result<Vec<String>, PayloadError> {
    let wrong = PayloadError::WrongType {
        field,
        expected: "array of strings",
    };
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(wrong.clone()),
            })
            .collect(),
        _ => Err(wrong),
    }
}

/// The required, non-empty `device` field of gateway messages.
pub(crate) fn req_device(obj: &mut Map<String, Value>) -> Result<String, PayloadError> {
    let device = req_str(obj, "device")?;
    if device.is_empty() {
        return Err(PayloadError::EmptyDeviceName);
    }
    Ok(device)
}

// ---------------------------------------------------------------------------------------------
// Pieces shared by the device and gateway APIs
// ---------------------------------------------------------------------------------------------

/// Gateway latency metadata attached to a telemetry element:
/// `"metadata":{"connector":..,"receivedTs":..,"publishedTs":..}`. The server strips it from the
/// values and feeds it to its gateway metrics; all three fields are required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryMetadata {
    /// Connector name.
    pub connector: String,
    /// When the gateway received the data (ms).
    pub received_ts: i64,
    /// When the gateway published it (ms).
    pub published_ts: i64,
}

impl TelemetryMetadata {
    fn write<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("connector", &self.connector);
        o.field("receivedTs", &self.received_ts);
        o.field("publishedTs", &self.published_ts);
        o.close();
    }

    fn from_value(value: Value) -> Result<Self, PayloadError> {
        let mut obj = match value {
            Value::Object(m) => m,
            _ => {
                return Err(PayloadError::WrongType {
                    field: "metadata",
                    expected: "object",
                })
            }
        };
        Ok(Self {
            connector: req_str(&mut obj, "connector")?,
            received_ts: req_i64(&mut obj, "receivedTs")?,
            published_ts: req_i64(&mut obj, "publishedTs")?,
        })
    }
}

/// One telemetry element: `{"ts":ms,"values":{..}}` when `ts` is set, otherwise the values
/// themselves `{k:v,..}` (the server stamps them with its receive time).
///
/// The plain form cannot carry values whose keys make it look like the timestamped form (both
/// `ts` and `values`), nor (on gateway telemetry) a value named `metadata`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryEntry {
    /// Timestamp in ms since the epoch; `None` = server time.
    pub ts: Option<i64>,
    /// The values (`null` values are dropped by the server when storing).
    pub values: Map<String, Value>,
    /// Gateway latency metadata (only interpreted on gateway telemetry).
    pub metadata: Option<TelemetryMetadata>,
}

impl TelemetryEntry {
    /// An entry with server-side time.
    pub fn now(values: Map<String, Value>) -> Self {
        Self {
            ts: None,
            values,
            metadata: None,
        }
    }

    /// An entry with an explicit timestamp.
    pub fn at(ts: i64, values: Map<String, Value>) -> Self {
        Self {
            ts: Some(ts),
            values,
            metadata: None,
        }
    }

    pub(crate) fn write<S: JsonSink + ?Sized>(&self, out: &mut S) {
        write_entry(out, self.ts, &self.values, self.metadata.as_ref());
    }

    /// Parses one element following the server's rule: both `ts` and `values` present →
    /// timestamped; otherwise every key is a value. With `metadata` set (gateway API), a
    /// `metadata` key is removed and must be valid.
    pub(crate) fn from_value(value: Value, with_metadata: bool) -> Result<Self, PayloadError> {
        let mut obj = match value {
            Value::Object(m) => m,
            _ => {
                return Err(PayloadError::WrongShape {
                    expected: "telemetry element object",
                })
            }
        };
        let metadata = if with_metadata {
            obj.remove("metadata")
                .map(TelemetryMetadata::from_value)
                .transpose()?
        } else {
            None
        };
        if obj.contains_key("ts") && obj.contains_key("values") {
            let ts = req_i64(&mut obj, "ts")?;
            let values = req_object(&mut obj, "values")?;
            Ok(Self {
                ts: Some(ts),
                values,
                metadata,
            })
        } else {
            Ok(Self {
                ts: None,
                values: obj,
                metadata,
            })
        }
    }
}

/// Writes one telemetry element without building a `Value`.
pub(crate) fn write_entry<S: JsonSink + ?Sized>(
    out: &mut S,
    ts: Option<i64>,
    values: &Map<String, Value>,
    metadata: Option<&TelemetryMetadata>,
) {
    let mut o = ObjWriter::open(out);
    match ts {
        Some(ts) => {
            o.field("ts", &ts);
            o.field("values", values);
        }
        None => o.entries(values),
    }
    if let Some(m) = metadata {
        m.write(o.key("metadata"));
    }
    o.close();
}

/// Claim parameters: `{"secretKey":"..","durationMs":..}`, both optional (the server defaults
/// them to `""` and `0`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    /// Secret the customer must present to claim the device.
    pub secret_key: Option<String>,
    /// How long the claim stays possible, in ms.
    pub duration_ms: Option<i64>,
}

impl Claim {
    pub(crate) fn write<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        if let Some(secret) = &self.secret_key {
            o.field("secretKey", secret);
        }
        if let Some(d) = self.duration_ms {
            o.field("durationMs", &d);
        }
        o.close();
    }

    pub(crate) fn from_map(mut obj: Map<String, Value>) -> Result<Self, PayloadError> {
        Ok(Self {
            secret_key: opt_str(&mut obj, "secretKey")?,
            duration_ms: opt_i64(&mut obj, "durationMs")?,
        })
    }
}

/// A shared-attribute update pushed by the server: updated values plus the names of deleted
/// attributes (`{"k":v,..,"deleted":["x"]}`).
///
/// `deleted` is recognised only when it is an array of strings; any other `deleted` value is
/// kept as an ordinary attribute. An attribute literally named `deleted` cannot be encoded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttributeUpdate {
    /// Updated attributes.
    pub values: Map<String, Value>,
    /// Deleted attribute names.
    pub deleted: Vec<String>,
}

impl AttributeUpdate {
    pub(crate) fn write<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.entries(&self.values);
        if !self.deleted.is_empty() {
            o.field("deleted", &self.deleted);
        }
        o.close();
    }

    pub(crate) fn from_map(mut obj: Map<String, Value>) -> Self {
        let mut deleted = Vec::new();
        if let Some(v) = obj.remove("deleted") {
            match string_array(v.clone(), "deleted") {
                Ok(keys) => deleted = keys,
                Err(_) => {
                    obj.insert("deleted".to_owned(), v);
                }
            }
        }
        Self {
            values: obj,
            deleted,
        }
    }
}

/// An RPC request body `{"method":"m","params":<any>}`: a server-side RPC to a device (the id is
/// in the topic), or a client-side RPC from the device. `method` is required (a client RPC
/// without it makes the server drop the connection); missing `params` reads as `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// Method name.
    pub method: String,
    /// Parameters, any JSON.
    pub params: Value,
}

impl RpcRequest {
    /// A request with the given method and params.
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        Self {
            method: method.into(),
            params,
        }
    }
}

impl Payload for RpcRequest {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("method", &self.method);
        o.field("params", &self.params);
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "RPC request object")?;
        Ok(Self {
            method: req_str(&mut obj, "method")?,
            params: obj.remove("params").unwrap_or(Value::Null),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rpc_request_round_trip_and_errors() {
        let r = RpcRequest::new("getSessionLimits", json!({}));
        assert_eq!(r.to_vec(), br#"{"method":"getSessionLimits","params":{}}"#);
        assert_eq!(RpcRequest::parse(&r.to_vec()), Ok(r));
        assert_eq!(
            RpcRequest::parse(br#"{"method":"m"}"#),
            Ok(RpcRequest::new("m", Value::Null))
        );
        assert_eq!(
            RpcRequest::parse(br#"{"params":1}"#),
            Err(PayloadError::MissingField("method"))
        );
        assert_eq!(
            RpcRequest::parse(br#"{"method":1}"#),
            Err(PayloadError::WrongType {
                field: "method",
                expected: "string"
            })
        );
        assert!(matches!(
            RpcRequest::parse(b"{"),
            Err(PayloadError::InvalidJson { .. })
        ));
        assert!(matches!(
            RpcRequest::parse(b""),
            Err(PayloadError::WrongShape { .. })
        ));
        assert!(matches!(
            RpcRequest::parse(b"[]"),
            Err(PayloadError::WrongShape { .. })
        ));
    }

    #[test]
    fn bytes_mut_sink() {
        let mut b = BytesMut::new();
        RpcRequest::new("m", json!(true)).encode_into(&mut b);
        assert_eq!(&b[..], br#"{"method":"m","params":true}"#);
        assert_eq!(
            &RpcRequest::new("m", json!(1)).to_bytes()[..],
            br#"{"method":"m","params":1}"#
        );
    }

    #[test]
    fn any_json_payload() {
        assert_eq!(Value::parse(b"\"x\""), Ok(json!("x")));
        assert_eq!(json!({"a":[1]}).to_vec(), br#"{"a":[1]}"#);
    }

    #[test]
    fn errors_display() {
        let e = PayloadError::DeviceEntry {
            device: "D".into(),
            error: Box::new(PayloadError::MissingField("ts")),
        };
        assert_eq!(e.to_string(), "entry for device \"D\": missing field `ts`");
    }
}
