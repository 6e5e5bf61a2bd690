//! The gateway API's protobuf payloads (device profile with payload type PROTOBUF), both
//! directions, mapped onto the same typed structs as the JSON forms in [`gateway`](super::gateway)
//! so that a message means the same whichever way it travelled.
//!
//! The messages are ThingsBoard's `transportapi.*Msg` (`transport.proto`) around
//! `transport.PostTelemetryMsg`, `PostAttributeMsg`, `GetAttributeResponseMsg`,
//! `AttributeUpdateNotificationMsg`, `ToDeviceRpcRequestMsg` and the MQTT 5 per-device
//! `GatewayDisconnectDeviceMsg` (`queue.proto`). Each type gets
//! `to_protobuf` and `parse_protobuf`; decoding follows protobuf's rules (fields in any order,
//! the last scalar wins, repeated fields append, an embedded message seen twice is merged,
//! unknown fields and fields of an unexpected wire type are skipped) and reports malformed
//! bytes as [`PayloadError::InvalidProtobuf`], never a panic.
//!
//! # Server behaviour this module follows
//!
//! - Device names: `AbstractGatewaySessionHandler.checkDeviceName` refuses an empty
//!   `deviceName` in every uplink (the JSON forms' rule too): [`PayloadError::EmptyDeviceName`].
//!   `onDeviceConnectProto` reads an empty `deviceType` as the `default` profile, so it parses as
//!   `None`.
//! - An uplink with an empty repeated `msg` list is refused ("... messages is empty",
//!   `onDeviceTelemetryProto` / `onDeviceAttributesProto` / `onDeviceClaimProto`):
//!   [`PayloadError::NoDeviceEntries`], as for `{}` in JSON.
//! - Telemetry: `ProtoConverter.validatePostTelemetryMsg` refuses an empty `tsKvList`;
//!   `validateTsKvListProto` replaces `ts == 0` with the server's clock and refuses an empty
//!   `kv` list. So `ts: None` is written as 0, a parsed 0 is `None`, and `Some(0)` cannot be
//!   sent. Attributes: `validatePostAttributeMsg` refuses an empty `kv` list.
//! - Values, uplink (`ProtoConverter.validateKeyValueProtos`): the key must be non-empty, a
//!   `STRING_V` must be non-empty, a `JSON_V` must parse (Gson), an unknown type is refused.
//!   The JSON form's conversion (`JsonConverter.parseProtoValues` /
//!   `buildNumericKeyValueProto`) gives: boolean → `BOOLEAN_V`; integer → `LONG_V`, or
//!   `STRING_V` with its digits when it does not fit a long; other number → `DOUBLE_V`;
//!   string → `STRING_V`; object or array → `JSON_V` with its text; `null` → skipped.
//! - Values, downlink (`JsonConverter.getJsonObjectForGateway` / `addValueToJson`, `toJson` of an
//!   attribute update): `JSON_V` text is parsed back into JSON; an unknown type adds nothing.
//! - Attribute requests: `onDeviceAttributesRequestProto` takes `id` as an int, `client` picks
//!   the scope, `keys` becomes a set; no keys asks for every attribute of both scopes
//!   (`DeviceActorMessageProcessor.getAttributesKvEntries`).
//! - Attribute responses: `DeviceActorMessageProcessor.handleGetAttributesRequest` fills the
//!   client and shared lists and sets `isMultipleAttributesRequest` when more than one key was
//!   asked for; `ProtoMqttAdaptor.convertToGatewayPublish` sends nothing when `error` is set.
//!   The JSON form (`getJsonObjectForGateway` / `addValues`) gives `"value"` for a list of one
//!   without `isMultipleAttributesRequest`, else merges the list into `"values"`.
//! - RPC: `ProtoMqttAdaptor.convertToGatewayPublish` sends the `ToDeviceRpcRequestMsg` as it is;
//!   its `params` is the JSON text the JSON form parses (`JsonConverter.toJson` of a
//!   `ToDeviceRpcRequestMsg`, Gson, lenient). `onDeviceRpcResponseProto` hands the reply's
//!   `data` text on as the RPC result, where the JSON form sends `data` as JSON text
//!   (`onDeviceRpcResponseJson`: `jsonObj.get("data").toString()`).
//!
//! # Where the two forms differ (normalisations)
//!
//! - `null` values are left out (the server stores none); an element, device entry or
//!   attribute map left with no value at all is left out too, since the server refuses empty
//!   lists. A telemetry element's `metadata` has no protobuf field and is dropped.
//! - An empty string value is sent upstream as `JSON_V` `""` (an empty `STRING_V` is refused);
//!   it reads back as `""`. Strings that look like numbers stay `STRING_V`: the JSON form's
//!   optional type cast (`isTypeCastEnabled`) does not apply to protobuf.
//! - Doubles are always `DOUBLE_V`; integers beyond `i64` are `STRING_V` digits (as the JSON
//!   form stores them) and read back as strings.
//! - Claims: `secret_key: Some("")` and `duration_ms: Some(0)` read back as `None` (the server's
//!   defaults are the same). `Connect::device_type: Some("")` reads back as `None`.
//! - A `key` attribute request ([`RequestedKeys::Key`]) reads back as a one-key
//!   [`RequestedKeys::Keys`]; the server treats both alike.
//! - Ids are `int32` on the wire: the low 32 bits of the `u64` are sent (keep them below
//!   2^31); a negative id is refused on parse, as in JSON.
//! - `JSON_V`, RPC `params` and RPC reply `data` text: empty reads as `null`; text that is not
//!   JSON reads as a string holding it (what Gson's lenient parse gives for a bare word), except
//!   in uplink values, where the server refuses it ([`PayloadError::InvalidJson`]).
//! - Attribute timestamps (`TsKvProto.ts`), `PostAttributeMsg.shared`, `sharedStateMsg` and the
//!   RPC's `expirationTime`/`oneway`/`persisted`/UUID fields are not modelled: written as
//!   defaults, ignored on parse.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value as Json};

use super::protobuf_wire::{
    for_each_field, int32, put_bool, put_double, put_int32, put_int64, put_len, put_string, utf8,
    Value,
};
use super::{
    AttributeResult, AttributeUpdate, Claim, Connect, Disconnect, DisconnectNotice,
    GatewayAttributeRequest, GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes,
    GatewayClaim, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, PayloadError,
    RequestedKeys, TelemetryEntry,
};

// `transport.KeyValueType`.
const BOOLEAN_V: i32 = 0;
const LONG_V: i32 = 1;
const DOUBLE_V: i32 = 2;
const STRING_V: i32 = 3;
const JSON_V: i32 = 4;

/// Which way a value travels: the server validates uplink values and only converts downlink
/// ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

fn device_name(name: String) -> Result<String, PayloadError> {
    if name.is_empty() {
        return Err(PayloadError::EmptyDeviceName);
    }
    Ok(name)
}

/// An `int32` id as the typed structs hold it; negative ids are refused as in JSON.
fn parse_id(v: i32) -> Result<u64, PayloadError> {
    u64::try_from(v).map_err(|_| PayloadError::WrongType {
        field: "id",
        expected: "unsigned integer",
    })
}

/// The low 32 bits: what Java's `int` keeps.
fn wire_id(id: u64) -> i32 {
    id as u32 as i32
}

/// Semantic errors of one device's entry are [`PayloadError::DeviceEntry`]; malformed bytes
/// stay [`PayloadError::InvalidProtobuf`] (protobuf-java fails the whole message then).
fn in_device(device: &str, error: PayloadError) -> PayloadError {
    match error {
        PayloadError::InvalidProtobuf(_) => error,
        error => PayloadError::DeviceEntry {
            device: device.to_owned(),
            error: Box::new(error),
        },
    }
}

/// JSON text from the wire: empty is `null` (Gson's empty document); text that is not JSON is
/// an error when `strict`, else a string holding it.
fn from_json_text(text: String, strict: bool) -> Result<Json, PayloadError> {
    if text.bytes().all(|b| b.is_ascii_whitespace()) {
        return Ok(Json::Null);
    }
    match serde_json::from_str(&text) {
        Ok(value) => Ok(value),
        Err(e) if strict => Err(PayloadError::InvalidJson {
            line: e.line(),
            column: e.column(),
        }),
        Err(_) => Ok(Json::String(text)),
    }
}

/// Reads `deviceName = 1` and the (merged) embedded message `field` of a per-device message.
fn read_named(bytes: &[u8], field: u64) -> Result<(String, Vec<u8>), PayloadError> {
    let mut name = String::new();
    let mut inner = Vec::new();
    for_each_field(bytes, |f, v| {
        match (f, v) {
            (1, Value::Len(b)) => name = utf8(b)?,
            (f, Value::Len(b)) if f == field => inner.extend_from_slice(b),
            _ => {}
        }
        Ok(())
    })?;
    Ok((device_name(name)?, inner))
}

/// Writes `deviceName = 1` and the embedded message `inner` as `field`.
fn put_named(out: &mut Vec<u8>, field: u32, device: &str, inner: &[u8]) {
    let mut msg = Vec::with_capacity(device.len() + inner.len() + 8);
    put_string(&mut msg, 1, device);
    put_len(&mut msg, field, inner);
    put_len(out, 1, &msg);
}

/// `KeyValueProto { key = 1; type = 2; bool_v = 3; long_v = 4; double_v = 5; string_v = 6;
/// json_v = 7; }` for `value`, as the JSON form's conversion would type it; `None` for `null`.
fn key_value(key: &str, value: &Json, dir: Dir) -> Option<Vec<u8>> {
    let mut kv = Vec::with_capacity(key.len() + 16);
    put_string(&mut kv, 1, key);
    let text = |kv: &mut Vec<u8>, ty: i32, field: u32, s: &str| {
        put_int32(kv, 2, ty);
        put_string(kv, field, s);
    };
    match value {
        Json::Null => return None,
        // BOOLEAN_V is 0, the default: only the value is written.
        Json::Bool(b) => put_bool(&mut kv, 3, *b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                put_int32(&mut kv, 2, LONG_V);
                put_int64(&mut kv, 4, i);
            } else if let Some(u) = n.as_u64() {
                // Beyond a long: the JSON form stores the digits as a string.
                text(&mut kv, STRING_V, 6, &u.to_string());
            } else {
                put_int32(&mut kv, 2, DOUBLE_V);
                put_double(&mut kv, 5, n.as_f64().unwrap_or(0.0));
            }
        }
        // The server refuses an empty STRING_V upstream; JSON `""` is accepted and reads back
        // as the same string.
        Json::String(s) if s.is_empty() && dir == Dir::Up => text(&mut kv, JSON_V, 7, "\"\""),
        Json::String(s) => text(&mut kv, STRING_V, 6, s),
        Json::Array(_) | Json::Object(_) => text(&mut kv, JSON_V, 7, &value.to_string()),
    }
    Some(kv)
}

/// Reads a `KeyValueProto`. Uplink values are validated as the server validates them;
/// downlink values of an unknown type are `None` (skipped, as the JSON form skips them).
fn read_kv(bytes: &[u8], dir: Dir) -> Result<Option<(String, Json)>, PayloadError> {
    let mut key = String::new();
    let mut ty = BOOLEAN_V;
    let mut bool_v = false;
    let mut long_v = 0i64;
    let mut double_v = 0f64;
    let mut string_v = String::new();
    let mut json_v = String::new();
    for_each_field(bytes, |f, v| {
        match (f, v) {
            (1, Value::Len(b)) => key = utf8(b)?,
            (2, Value::Varint(v)) => ty = int32(v),
            (3, Value::Varint(v)) => bool_v = v != 0,
            (4, Value::Varint(v)) => long_v = v as i64,
            (5, Value::I64(v)) => double_v = f64::from_bits(v),
            (6, Value::Len(b)) => string_v = utf8(b)?,
            (7, Value::Len(b)) => json_v = utf8(b)?,
            _ => {}
        }
        Ok(())
    })?;
    let up = dir == Dir::Up;
    if up && key.is_empty() {
        return Err(PayloadError::InvalidKey {
            key,
            reason: "empty key",
        });
    }
    let value = match ty {
        BOOLEAN_V => Json::Bool(bool_v),
        LONG_V => Json::from(long_v),
        DOUBLE_V => Json::Number(Number::from_f64(double_v).ok_or(PayloadError::WrongType {
            field: "double_v",
            expected: "finite number",
        })?),
        STRING_V if up && string_v.is_empty() => {
            return Err(PayloadError::WrongType {
                field: "string_v",
                expected: "non-empty string",
            })
        }
        STRING_V => Json::String(string_v),
        JSON_V => from_json_text(json_v, up)?,
        other if up => {
            return Err(PayloadError::UnknownValue {
                field: "type",
                value: other.to_string(),
            })
        }
        _ => return Ok(None),
    };
    Ok(Some((key, value)))
}

/// Appends each non-null value of `values` as a `KeyValueProto` field; true if any was.
fn put_kvs(out: &mut Vec<u8>, field: u32, values: &Map<String, Json>, dir: Dir) -> bool {
    let mut any = false;
    for (key, value) in values {
        if let Some(kv) = key_value(key, value, dir) {
            put_len(out, field, &kv);
            any = true;
        }
    }
    any
}

/// Appends each non-null value as a `TsKvProto { int64 ts = 1; KeyValueProto kv = 2; }` field
/// (no timestamp: the typed model has none).
fn put_ts_kvs(out: &mut Vec<u8>, field: u32, values: &Map<String, Json>) {
    for (key, value) in values {
        if let Some(kv) = key_value(key, value, Dir::Down) {
            let mut ts_kv = Vec::with_capacity(kv.len() + 2);
            put_len(&mut ts_kv, 2, &kv);
            put_len(out, field, &ts_kv);
        }
    }
}

/// Reads a downlink `TsKvProto`'s value (the timestamp is not modelled).
fn read_ts_kv(bytes: &[u8]) -> Result<Option<(String, Json)>, PayloadError> {
    let mut kv = Vec::new();
    for_each_field(bytes, |f, v| {
        if let (2, Value::Len(b)) = (f, v) {
            kv.extend_from_slice(b);
        }
        Ok(())
    })?;
    read_kv(&kv, Dir::Down)
}

/// Reads an uplink message's repeated `msg = 1` items with `item`; none is the server's
/// "messages is empty" error.
fn read_msgs<'a>(
    bytes: &'a [u8],
    mut item: impl FnMut(&'a [u8]) -> Result<(), PayloadError>,
) -> Result<(), PayloadError> {
    let mut any = false;
    for_each_field(bytes, |f, v| {
        if let (1, Value::Len(b)) = (f, v) {
            any = true;
            item(b)?;
        }
        Ok(())
    })?;
    if !any {
        return Err(PayloadError::NoDeviceEntries);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Uplinks
// ---------------------------------------------------------------------------------------------

impl Connect {
    /// `ConnectMsg { string deviceName = 1; string deviceType = 2; }`.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        put_string(&mut out, 2, self.device_type.as_deref().unwrap_or(""));
        out
    }

    /// Reads a `ConnectMsg`; an empty `deviceType` is `None` (the `default` profile).
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut device = String::new();
        let mut device_type = String::new();
        for_each_field(bytes, |f, v| {
            match (f, v) {
                (1, Value::Len(b)) => device = utf8(b)?,
                (2, Value::Len(b)) => device_type = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(Self {
            device: device_name(device)?,
            device_type: (!device_type.is_empty()).then_some(device_type),
        })
    }
}

impl Disconnect {
    /// `DisconnectMsg { string deviceName = 1; }`.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        out
    }

    /// Reads a `DisconnectMsg`.
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut device = String::new();
        for_each_field(bytes, |f, v| {
            if let (1, Value::Len(b)) = (f, v) {
                device = utf8(b)?;
            }
            Ok(())
        })?;
        Ok(Self {
            device: device_name(device)?,
        })
    }
}

impl DisconnectNotice {
    /// `transport.GatewayDisconnectDeviceMsg { string deviceName = 1; int32 reasonCode = 2; }`
    /// (`queue.proto`), which `ProtoMqttAdaptor.convertToGatewayDeviceDisconnectPublish`
    /// sends on `v1/gateway/disconnect`.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        put_int32(&mut out, 2, i32::from(self.reason));
        out
    }

    /// Reads a `GatewayDisconnectDeviceMsg`; as in JSON, the name must not be empty and the
    /// reason must be a reason code (0..=255; absent reads as 0).
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut device = String::new();
        let mut reason = 0i32;
        for_each_field(bytes, |f, v| {
            match (f, v) {
                (1, Value::Len(b)) => device = utf8(b)?,
                (2, Value::Varint(n)) => reason = int32(n),
                _ => {}
            }
            Ok(())
        })?;
        let reason = u8::try_from(reason).map_err(|_| PayloadError::WrongType {
            field: "reason",
            expected: "reason code 0..=255",
        })?;
        Ok(Self {
            device: device_name(device)?,
            reason,
        })
    }
}

/// `TsKvListProto { int64 ts = 1; repeated KeyValueProto kv = 2; }`, validated as
/// `ProtoConverter.validateTsKvListProto` does.
fn read_ts_kv_list(bytes: &[u8]) -> Result<TelemetryEntry, PayloadError> {
    let mut ts = 0i64;
    let mut values = Map::new();
    let mut any = false;
    for_each_field(bytes, |f, v| {
        match (f, v) {
            (1, Value::Varint(v)) => ts = v as i64,
            (2, Value::Len(b)) => {
                any = true;
                if let Some((key, value)) = read_kv(b, Dir::Up)? {
                    values.insert(key, value);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    if !any {
        return Err(PayloadError::MissingField("kv"));
    }
    Ok(TelemetryEntry {
        ts: (ts != 0).then_some(ts),
        values,
        metadata: None,
    })
}

/// `PostTelemetryMsg { repeated TsKvListProto tsKvList = 1; }`, refused when empty
/// (`ProtoConverter.validatePostTelemetryMsg`).
fn read_post_telemetry(bytes: &[u8]) -> Result<Vec<TelemetryEntry>, PayloadError> {
    let mut entries = Vec::new();
    for_each_field(bytes, |f, v| {
        if let (1, Value::Len(b)) = (f, v) {
            entries.push(read_ts_kv_list(b)?);
        }
        Ok(())
    })?;
    if entries.is_empty() {
        return Err(PayloadError::MissingField("tsKvList"));
    }
    Ok(entries)
}

/// `PostAttributeMsg { repeated KeyValueProto kv = 1; bool shared = 2; }`, refused when empty
/// (`ProtoConverter.validatePostAttributeMsg`); `shared` is not modelled.
fn read_post_attributes(bytes: &[u8]) -> Result<Map<String, Json>, PayloadError> {
    let mut values = Map::new();
    let mut any = false;
    for_each_field(bytes, |f, v| {
        if let (1, Value::Len(b)) = (f, v) {
            any = true;
            if let Some((key, value)) = read_kv(b, Dir::Up)? {
                values.insert(key, value);
            }
        }
        Ok(())
    })?;
    if !any {
        return Err(PayloadError::MissingField("kv"));
    }
    Ok(values)
}

impl GatewayTelemetry {
    /// `GatewayTelemetryMsg { repeated TelemetryMsg msg = 1; }`, one `TelemetryMsg { deviceName
    /// = 1; PostTelemetryMsg msg = 3; }` per device with one `TsKvListProto` per element.
    /// `null` values, then empty elements and devices, are left out (see the module docs).
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (device, entries) in &self.devices {
            let mut post = Vec::new();
            for entry in entries {
                let mut list = Vec::new();
                put_int64(&mut list, 1, entry.ts.unwrap_or(0));
                if put_kvs(&mut list, 2, &entry.values, Dir::Up) {
                    put_len(&mut post, 1, &list);
                }
            }
            if !post.is_empty() {
                put_named(&mut out, 3, device, &post);
            }
        }
        out
    }

    /// Reads a `GatewayTelemetryMsg` with the server's checks; a device named twice gets the
    /// elements of both, in order.
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut devices: BTreeMap<String, Vec<TelemetryEntry>> = BTreeMap::new();
        read_msgs(bytes, |msg| {
            let (device, post) = read_named(msg, 3)?;
            let entries = read_post_telemetry(&post).map_err(|e| in_device(&device, e))?;
            devices.entry(device).or_default().extend(entries);
            Ok(())
        })?;
        Ok(Self { devices })
    }
}

impl GatewayAttributes {
    /// `GatewayAttributesMsg { repeated AttributesMsg msg = 1; }`, one `AttributesMsg {
    /// deviceName = 1; PostAttributeMsg msg = 2; }` per device (`shared` left false). `null`
    /// values, then devices without values, are left out.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (device, values) in &self.devices {
            let mut post = Vec::new();
            if put_kvs(&mut post, 1, values, Dir::Up) {
                put_named(&mut out, 2, device, &post);
            }
        }
        out
    }

    /// Reads a `GatewayAttributesMsg` with the server's checks; a device named twice gets the
    /// values of both (the later one wins a key).
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut devices: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
        read_msgs(bytes, |msg| {
            let (device, post) = read_named(msg, 2)?;
            let values = read_post_attributes(&post).map_err(|e| in_device(&device, e))?;
            devices.entry(device).or_default().extend(values);
            Ok(())
        })?;
        Ok(Self { devices })
    }
}

impl GatewayClaim {
    /// `GatewayClaimMsg { repeated ClaimDeviceMsg msg = 1; }`, one `ClaimDeviceMsg { deviceName
    /// = 1; ClaimDevice claimRequest = 2; }` per device, `ClaimDevice { string secretKey = 1;
    /// int64 durationMs = 2; }` always present (`None` fields are the defaults).
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (device, claim) in &self.devices {
            let mut request = Vec::new();
            put_string(&mut request, 1, claim.secret_key.as_deref().unwrap_or(""));
            put_int64(&mut request, 2, claim.duration_ms.unwrap_or(0));
            put_named(&mut out, 2, device, &request);
        }
        out
    }

    /// Reads a `GatewayClaimMsg`; an empty secret or zero duration is `None` (the server's
    /// defaults). A device named twice keeps its last claim.
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut devices = BTreeMap::new();
        read_msgs(bytes, |msg| {
            let (device, request) = read_named(msg, 2)?;
            let mut secret = String::new();
            let mut duration = 0i64;
            for_each_field(&request, |f, v| {
                match (f, v) {
                    (1, Value::Len(b)) => secret = utf8(b)?,
                    (2, Value::Varint(v)) => duration = v as i64,
                    _ => {}
                }
                Ok(())
            })?;
            let claim = Claim {
                secret_key: (!secret.is_empty()).then_some(secret),
                duration_ms: (duration != 0).then_some(duration),
            };
            devices.insert(device, claim);
            Ok(())
        })?;
        Ok(Self { devices })
    }
}

impl GatewayAttributeRequest {
    /// `GatewayAttributesRequestMsg { int32 id = 1; string deviceName = 2; bool client = 3;
    /// repeated string keys = 4; }`; a single `key` is a one-element `keys`.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_int32(&mut out, 1, wire_id(self.id));
        put_string(&mut out, 2, &self.device);
        put_bool(&mut out, 3, self.client);
        let keys = match &self.keys {
            RequestedKeys::Key(key) => std::slice::from_ref(key),
            RequestedKeys::Keys(keys) => keys.as_slice(),
        };
        for key in keys {
            // Repeated strings are written even when empty.
            put_len(&mut out, 4, key.as_bytes());
        }
        out
    }

    /// Reads a `GatewayAttributesRequestMsg`; the keys are always [`RequestedKeys::Keys`] (none
    /// asks for every attribute).
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut id = 0i32;
        let mut device = String::new();
        let mut client = false;
        let mut keys = Vec::new();
        for_each_field(bytes, |f, v| {
            match (f, v) {
                (1, Value::Varint(v)) => id = int32(v),
                (2, Value::Len(b)) => device = utf8(b)?,
                (3, Value::Varint(v)) => client = v != 0,
                (4, Value::Len(b)) => keys.push(utf8(b)?),
                _ => {}
            }
            Ok(())
        })?;
        Ok(Self {
            device: device_name(device)?,
            id: parse_id(id)?,
            client,
            keys: RequestedKeys::Keys(keys),
        })
    }
}

impl GatewayRpcResponse {
    /// `GatewayRpcResponseMsg { string deviceName = 1; int32 id = 2; string data = 3; }`,
    /// `data` being the JSON text of the result, as the JSON form hands it on.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        put_int32(&mut out, 2, wire_id(self.id));
        put_string(&mut out, 3, &self.data.to_string());
        out
    }

    /// Reads a `GatewayRpcResponseMsg`; `data` that is not JSON is a string, empty is `null`.
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut device = String::new();
        let mut id = 0i32;
        let mut data = String::new();
        for_each_field(bytes, |f, v| {
            match (f, v) {
                (1, Value::Len(b)) => device = utf8(b)?,
                (2, Value::Varint(v)) => id = int32(v),
                (3, Value::Len(b)) => data = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(Self {
            device: device_name(device)?,
            id: parse_id(id)?,
            data: from_json_text(data, false)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Downlinks
// ---------------------------------------------------------------------------------------------

impl GatewayAttributeResponse {
    /// `GatewayAttributeResponseMsg { string deviceName = 1; GetAttributeResponseMsg
    /// responseMsg = 2; }` answering `request`: the values go to the client or shared list by
    /// `request.client`, `isMultipleAttributesRequest` is set when more than one key was asked
    /// for (or a one-entry [`AttributeResult::Values`] must stay `values`), and a single
    /// [`AttributeResult::Value`] is keyed by the requested key. `null` values are left out.
    pub fn to_protobuf(&self, request: &GatewayAttributeRequest) -> Vec<u8> {
        let mut found = Map::new();
        let multiple = match &self.result {
            AttributeResult::Value(value) => {
                let key = match &request.keys {
                    RequestedKeys::Key(key) => key.as_str(),
                    RequestedKeys::Keys(keys) => keys.first().map_or("", String::as_str),
                };
                found.insert(key.to_owned(), value.clone());
                request.keys.count() > 1
            }
            AttributeResult::Values(values) => {
                found.clone_from(values);
                request.keys.count() > 1 || values.len() == 1
            }
            AttributeResult::NotFound => request.keys.count() > 1,
        };
        let mut response = Vec::new();
        put_int32(&mut response, 1, wire_id(self.id));
        put_ts_kvs(&mut response, if request.client { 2 } else { 3 }, &found);
        put_bool(&mut response, 4, multiple);
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        put_len(&mut out, 2, &response);
        out
    }

    /// Reads a `GatewayAttributeResponseMsg` into what the JSON form would carry: a list of one
    /// without `isMultipleAttributesRequest` is a `Value`, other values merge into `Values`
    /// (client list first), nothing is `NotFound`. A set `error` (never sent by the server) is
    /// [`PayloadError::UnknownValue`].
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let (device, response) = read_named(bytes, 2)?;
        let mut id = 0i32;
        let mut lists: [Vec<&[u8]>; 2] = [Vec::new(), Vec::new()];
        let mut multiple = false;
        let mut error = String::new();
        for_each_field(&response, |f, v| {
            match (f, v) {
                (1, Value::Varint(v)) => id = int32(v),
                (2, Value::Len(b)) => lists[0].push(b),
                (3, Value::Len(b)) => lists[1].push(b),
                (4, Value::Varint(v)) => multiple = v != 0,
                (5, Value::Len(b)) => error = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        if !error.is_empty() {
            return Err(PayloadError::UnknownValue {
                field: "error",
                value: error,
            });
        }
        let mut value = None;
        let mut values: Option<Map<String, Json>> = None;
        for list in &lists {
            match list.as_slice() {
                [] => {}
                [one] if !multiple => {
                    if let Some((_, v)) = read_ts_kv(one)? {
                        value = Some(v);
                    }
                }
                items => {
                    let values = values.get_or_insert_with(Map::new);
                    for item in items {
                        if let Some((k, v)) = read_ts_kv(item)? {
                            values.insert(k, v);
                        }
                    }
                }
            }
        }
        let result = match (value, values) {
            (Some(v), _) => AttributeResult::Value(v),
            (None, Some(m)) => AttributeResult::Values(m),
            (None, None) => AttributeResult::NotFound,
        };
        Ok(Self {
            id: parse_id(id)?,
            device,
            result,
        })
    }
}

impl GatewayAttributeUpdate {
    /// `GatewayAttributeUpdateNotificationMsg { string deviceName = 1;
    /// AttributeUpdateNotificationMsg notificationMsg = 2; }` with `sharedUpdated = 1` (one
    /// `TsKvProto` per non-null value) and `sharedDeleted = 2`.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut notification = Vec::new();
        put_ts_kvs(&mut notification, 1, &self.update.values);
        for key in &self.update.deleted {
            put_len(&mut notification, 2, key.as_bytes());
        }
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        put_len(&mut out, 2, &notification);
        out
    }

    /// Reads a `GatewayAttributeUpdateNotificationMsg`.
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let (device, notification) = read_named(bytes, 2)?;
        let mut update = AttributeUpdate::default();
        for_each_field(&notification, |f, v| {
            match (f, v) {
                (1, Value::Len(b)) => {
                    if let Some((k, v)) = read_ts_kv(b)? {
                        update.values.insert(k, v);
                    }
                }
                (2, Value::Len(b)) => update.deleted.push(utf8(b)?),
                _ => {}
            }
            Ok(())
        })?;
        Ok(Self { device, update })
    }
}

impl GatewayRpcRequest {
    /// `GatewayDeviceRpcRequestMsg { string deviceName = 1; ToDeviceRpcRequestMsg rpcRequestMsg =
    /// 2; }` with `requestId = 1`, `methodName = 2` and `params = 3` (the JSON text).
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut rpc = Vec::new();
        put_int32(&mut rpc, 1, wire_id(self.id));
        put_string(&mut rpc, 2, &self.method);
        put_string(&mut rpc, 3, &self.params.to_string());
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.device);
        put_len(&mut out, 2, &rpc);
        out
    }

    /// Reads a `GatewayDeviceRpcRequestMsg`; `params` that is not JSON is a string, empty is
    /// `null`, as the JSON form's lenient parse gives them.
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let (device, rpc) = read_named(bytes, 2)?;
        let mut id = 0i32;
        let mut method = String::new();
        let mut params = String::new();
        for_each_field(&rpc, |f, v| {
            match (f, v) {
                (1, Value::Varint(v)) => id = int32(v),
                (2, Value::Len(b)) => method = utf8(b)?,
                (3, Value::Len(b)) => params = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(Self {
            device,
            id: parse_id(id)?,
            method,
            params: from_json_text(params, false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::protobuf_wire::varint;
    use super::super::{Payload, TelemetryMetadata};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// A length-delimited field: key, length, bytes.
    fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(field << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A `KeyValueProto` as the server would write it, for hand-built messages.
    fn kv_long(key: &str, v: u8) -> Vec<u8> {
        cat(&[&ld(1, key.as_bytes()), &[0x10, 0x01, 0x20, v]])
    }

    // -----------------------------------------------------------------------------------------
    // Golden bytes (hand-computed from the .proto field numbers and wire types)
    // -----------------------------------------------------------------------------------------

    #[test]
    fn golden_connect() {
        let c = Connect {
            device: "Dev".into(),
            device_type: Some("Type".into()),
        };
        let expected = b"\x0a\x03Dev\x12\x04Type";
        assert_eq!(c.to_protobuf(), expected);
        assert_eq!(Connect::parse_protobuf(expected), Ok(c));
        let d = Disconnect {
            device: "Dev".into(),
        };
        assert_eq!(d.to_protobuf(), b"\x0a\x03Dev");
    }

    #[test]
    fn golden_telemetry_one_device_one_long() {
        let mut t = GatewayTelemetry::default();
        t.devices.insert(
            "D".into(),
            vec![TelemetryEntry::at(1000, map(json!({"t":5})))],
        );
        let expected: &[u8] = &[
            0x0a, 0x13, // GatewayTelemetryMsg.msg (1), 19 bytes
            0x0a, 0x01, b'D', // TelemetryMsg.deviceName (1)
            0x1a, 0x0e, // TelemetryMsg.msg (3!), 14 bytes
            0x0a, 0x0c, // PostTelemetryMsg.tsKvList (1), 12 bytes
            0x08, 0xe8, 0x07, // TsKvListProto.ts (1) = 1000
            0x12, 0x07, // TsKvListProto.kv (2), 7 bytes
            0x0a, 0x01, b't', // KeyValueProto.key (1)
            0x10, 0x01, // type (2) = LONG_V
            0x20, 0x05, // long_v (4) = 5
        ];
        assert_eq!(t.to_protobuf(), expected);
        assert_eq!(GatewayTelemetry::parse_protobuf(expected), Ok(t));
    }

    #[test]
    fn golden_attribute_request_two_keys() {
        let r = GatewayAttributeRequest {
            id: 5,
            device: "D".into(),
            client: true,
            keys: RequestedKeys::Keys(vec!["a".into(), "b".into()]),
        };
        let expected = b"\x08\x05\x12\x01D\x18\x01\x22\x01a\x22\x01b";
        assert_eq!(r.to_protobuf(), expected);
        assert_eq!(GatewayAttributeRequest::parse_protobuf(expected), Ok(r));
    }

    #[test]
    fn golden_key_values_of_every_type() {
        let kv = |v: Json| key_value("k", &v, Dir::Up);
        let key = b"\x0a\x01k";
        // BOOLEAN_V is 0: only bool_v (3) is written, and not even that for false.
        assert_eq!(kv(json!(true)), Some(cat(&[key, b"\x18\x01"])));
        assert_eq!(kv(json!(false)), Some(key.to_vec()));
        // LONG_V: negative int64 is a ten-byte varint.
        assert_eq!(
            kv(json!(-1)),
            Some(cat(&[key, b"\x10\x01\x20", &[0xff; 9], b"\x01"]))
        );
        assert_eq!(kv(json!(0)), Some(cat(&[key, b"\x10\x01"])));
        // DOUBLE_V: wire type 1, eight bytes little-endian.
        assert_eq!(
            kv(json!(1.5)),
            Some(cat(&[key, b"\x10\x02\x29", &1.5f64.to_le_bytes()]))
        );
        assert_eq!(
            kv(json!(-0.0)),
            Some(cat(&[key, b"\x10\x02\x29", &(-0.0f64).to_le_bytes()]))
        );
        assert_eq!(kv(json!("hi")), Some(cat(&[key, b"\x10\x03\x32\x02hi"])));
        assert_eq!(
            kv(json!({"a":[1]})),
            Some(cat(&[key, b"\x10\x04\x3a\x09{\"a\":[1]}"]))
        );
        // Upstream an empty string is JSON `""`; downstream the server's empty STRING_V.
        assert_eq!(kv(json!("")), Some(cat(&[key, b"\x10\x04\x3a\x02\"\""])));
        assert_eq!(
            key_value("k", &json!(""), Dir::Down),
            Some(cat(&[key, b"\x10\x03"]))
        );
        // Beyond i64: the digits as STRING_V.
        assert_eq!(
            kv(json!(u64::MAX)),
            Some(cat(&[key, b"\x10\x03\x32\x1418446744073709551615"]))
        );
        assert_eq!(kv(Json::Null), None);
    }

    #[test]
    fn golden_disconnect_notice() {
        let n = DisconnectNotice {
            device: "Dev".into(),
            reason: DisconnectNotice::REASON_RATE_LIMIT,
        };
        // deviceName = 1, reasonCode = 2 (int32 150 is a two-byte varint).
        let bytes = cat(&[&ld(1, b"Dev"), b"\x10\x96\x01"]);
        assert_eq!(n.to_protobuf(), bytes);
        assert_eq!(DisconnectNotice::parse_protobuf(&bytes), Ok(n));
        // Fields in any order; an absent reason is 0.
        assert_eq!(
            DisconnectNotice::parse_protobuf(&cat(&[b"\x10\x80\x01", &ld(1, b"D")])),
            Ok(DisconnectNotice {
                device: "D".into(),
                reason: 128
            })
        );
        assert_eq!(
            DisconnectNotice::parse_protobuf(&ld(1, b"D")).map(|n| n.reason),
            Ok(0)
        );
        assert_eq!(
            DisconnectNotice::parse_protobuf(b"\x10\x96\x01"),
            Err(PayloadError::EmptyDeviceName)
        );
        // A reason beyond a byte (here 256, and -1 as a ten-byte varint) is refused.
        assert!(matches!(
            DisconnectNotice::parse_protobuf(&cat(&[&ld(1, b"D"), b"\x10\x80\x02"])),
            Err(PayloadError::WrongType {
                field: "reason",
                ..
            })
        ));
        assert!(matches!(
            DisconnectNotice::parse_protobuf(&cat(&[&ld(1, b"D"), b"\x10", &[0xff; 9], b"\x01"])),
            Err(PayloadError::WrongType {
                field: "reason",
                ..
            })
        ));
        // The JSON form is not a GatewayDisconnectDeviceMsg.
        assert!(DisconnectNotice::parse_protobuf(br#"{"device":"D","reason":150}"#).is_err());
    }

    #[test]
    fn golden_downlinks() {
        let r = GatewayRpcRequest {
            device: "D".into(),
            id: 1,
            method: "m".into(),
            params: json!({"p":1}),
        };
        let rpc = cat(&[b"\x08\x01", &ld(2, b"m"), &ld(3, b"{\"p\":1}")]);
        let expected = cat(&[&ld(1, b"D"), &ld(2, &rpc)]);
        assert_eq!(r.to_protobuf(), expected);

        let u = GatewayAttributeUpdate {
            device: "D".into(),
            update: AttributeUpdate {
                values: map(json!({"a":5})),
                deleted: vec!["x".into(), String::new()],
            },
        };
        let ts_kv = ld(2, &kv_long("a", 5));
        let notification = cat(&[&ld(1, &ts_kv), &ld(2, b"x"), &ld(2, b"")]);
        assert_eq!(u.to_protobuf(), cat(&[&ld(1, b"D"), &ld(2, &notification)]));

        let req = GatewayAttributeRequest {
            id: 7,
            device: "D".into(),
            client: false,
            keys: RequestedKeys::Key("a".into()),
        };
        let resp = GatewayAttributeResponse::for_request(&req, map(json!({"a":5})));
        // Shared scope: sharedAttributeList (3); one key asked: no isMultipleAttributesRequest.
        let response = cat(&[b"\x08\x07", &ld(3, &ts_kv)]);
        assert_eq!(
            resp.to_protobuf(&req),
            cat(&[&ld(1, b"D"), &ld(2, &response)])
        );
    }

    // -----------------------------------------------------------------------------------------
    // Server rules
    // -----------------------------------------------------------------------------------------

    fn telemetry_of(device: &[u8], lists: &[Vec<u8>]) -> Vec<u8> {
        let post: Vec<u8> = lists.iter().flat_map(|l| ld(1, l)).collect();
        ld(1, &cat(&[&ld(1, device), &ld(3, &post)]))
    }

    fn entry_error(bytes: &[u8]) -> Result<GatewayTelemetry, PayloadError> {
        GatewayTelemetry::parse_protobuf(bytes)
    }

    fn in_d(error: PayloadError) -> PayloadError {
        PayloadError::DeviceEntry {
            device: "D".into(),
            error: Box::new(error),
        }
    }

    #[test]
    fn uplinks_follow_the_servers_checks() {
        assert_eq!(
            Connect::parse_protobuf(b"\x12\x01T"),
            Err(PayloadError::EmptyDeviceName)
        );
        assert_eq!(
            Connect::parse_protobuf(b"\x0a\x01D"),
            Ok(Connect {
                device: "D".into(),
                device_type: None
            })
        );
        assert_eq!(
            Disconnect::parse_protobuf(b""),
            Err(PayloadError::EmptyDeviceName)
        );
        for parse in [
            |b: &[u8]| GatewayTelemetry::parse_protobuf(b).map(drop),
            |b: &[u8]| GatewayAttributes::parse_protobuf(b).map(drop),
            |b: &[u8]| GatewayClaim::parse_protobuf(b).map(drop),
        ] {
            assert_eq!(parse(b""), Err(PayloadError::NoDeviceEntries));
            assert_eq!(parse(b"\x0a\x00"), Err(PayloadError::EmptyDeviceName));
        }
        // ts 0 (absent) is server time.
        let now = telemetry_of(b"D", &[ld(2, &kv_long("k", 1))]);
        assert_eq!(entry_error(&now).map(|t| t.devices["D"][0].ts), Ok(None));
        // No msg, no tsKvList, an empty kv list: refused.
        assert_eq!(
            entry_error(&ld(1, &ld(1, b"D"))),
            Err(in_d(PayloadError::MissingField("tsKvList")))
        );
        assert_eq!(
            entry_error(&telemetry_of(b"D", &[b"\x08\x01".to_vec()])),
            Err(in_d(PayloadError::MissingField("kv")))
        );
        let attrs = ld(1, &cat(&[&ld(1, b"D"), &ld(2, b"\x10\x01")]));
        assert_eq!(
            GatewayAttributes::parse_protobuf(&attrs),
            Err(in_d(PayloadError::MissingField("kv")))
        );
        // validateKeyValueProtos: empty key, empty STRING_V, bad JSON_V, unknown type.
        let with_kv = |kv: &[u8]| entry_error(&telemetry_of(b"D", &[ld(2, kv)]));
        assert_eq!(
            with_kv(b"\x10\x01\x20\x01"),
            Err(in_d(PayloadError::InvalidKey {
                key: String::new(),
                reason: "empty key"
            }))
        );
        assert_eq!(
            with_kv(b"\x0a\x01k\x10\x03"),
            Err(in_d(PayloadError::WrongType {
                field: "string_v",
                expected: "non-empty string"
            }))
        );
        assert!(matches!(
            with_kv(b"\x0a\x01k\x10\x04\x3a\x01{"),
            Err(PayloadError::DeviceEntry { error, .. })
                if matches!(*error, PayloadError::InvalidJson { .. })
        ));
        assert_eq!(
            with_kv(b"\x0a\x01k\x10\x09"),
            Err(in_d(PayloadError::UnknownValue {
                field: "type",
                value: "9".into()
            }))
        );
        let nan = cat(&[b"\x0a\x01k\x10\x02\x29", &f64::NAN.to_le_bytes()]);
        assert_eq!(
            with_kv(&nan),
            Err(in_d(PayloadError::WrongType {
                field: "double_v",
                expected: "finite number"
            }))
        );
        // A negative id is refused, as in JSON.
        assert_eq!(
            GatewayRpcResponse::parse_protobuf(
                b"\x0a\x01D\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
            ),
            Err(PayloadError::WrongType {
                field: "id",
                expected: "unsigned integer"
            })
        );
    }

    #[test]
    fn rpc_reply_data_reads_as_the_json_form_would_carry_it() {
        let reply = |data: &[u8]| {
            GatewayRpcResponse::parse_protobuf(&cat(&[&ld(1, b"D"), b"\x10\x02", &ld(3, data)]))
                .map(|r| (r.id, r.data))
        };
        assert_eq!(reply(b"{\"ok\":true}"), Ok((2, json!({"ok":true}))));
        assert_eq!(reply(b"\"s\""), Ok((2, json!("s"))));
        assert_eq!(reply(b"plain text"), Ok((2, json!("plain text"))));
        assert_eq!(reply(b""), Ok((2, Json::Null)));
    }

    #[test]
    fn server_rpc_request_reads_like_its_json_form() {
        // What ThingsBoard sends: every ToDeviceRpcRequestMsg field set.
        let rpc = cat(&[
            b"\x08\x03",
            &ld(2, b"toggle"),
            &ld(3, b"{\"pin\":1}"),
            b"\x20\xe8\x07",     // expirationTime
            b"\x28\x01\x30\x02", // requestIdMSB, requestIdLSB
            b"\x38\x01\x40\x01", // oneway, persisted
        ]);
        let bytes = cat(&[&ld(1, b"Dev"), &ld(2, &rpc)]);
        let json = GatewayRpcRequest::parse(
            br#"{"device":"Dev","data":{"id":3,"method":"toggle","params":{"pin":1}}}"#,
        );
        assert_eq!(GatewayRpcRequest::parse_protobuf(&bytes), json);
        // Params that are not JSON are a string (Gson's lenient reading); empty is null.
        let with_params = |p: &[u8]| {
            let rpc = cat(&[&ld(2, b"m"), &ld(3, p)]);
            GatewayRpcRequest::parse_protobuf(&cat(&[&ld(1, b"D"), &ld(2, &rpc)])).map(|r| r.params)
        };
        assert_eq!(with_params(b"on"), Ok(json!("on")));
        assert_eq!(with_params(b"42"), Ok(json!(42)));
        assert_eq!(with_params(b""), Ok(Json::Null));
    }

    #[test]
    fn attribute_responses_read_as_get_json_object_for_gateway() {
        let response = |body: &[u8]| {
            GatewayAttributeResponse::parse_protobuf(&cat(&[&ld(1, b"D"), &ld(2, body)]))
                .map(|r| (r.id, r.result))
        };
        let a = ld(2, &kv_long("a", 1));
        let b = ld(2, &kv_long("b", 2));
        // One value, one key asked: `value`.
        assert_eq!(
            response(&cat(&[b"\x08\x09", &ld(2, &a)])),
            Ok((9, AttributeResult::Value(json!(1))))
        );
        // One value of several keys asked: `values`.
        assert_eq!(
            response(&cat(&[&ld(3, &a), b"\x20\x01"])),
            Ok((0, AttributeResult::Values(map(json!({"a":1})))))
        );
        // Two values: `values`, whichever list they came in.
        assert_eq!(
            response(&cat(&[&ld(2, &a), &ld(2, &b)])),
            Ok((0, AttributeResult::Values(map(json!({"a":1,"b":2})))))
        );
        assert_eq!(response(b"\x08\x01"), Ok((1, AttributeResult::NotFound)));
        // A JSON_V value is parsed back into JSON; an unknown type adds nothing.
        let j = ld(2, b"\x0a\x01j\x10\x04\x3a\x07{\"x\":1}");
        let odd = ld(2, b"\x0a\x01o\x10\x07");
        assert_eq!(
            response(&cat(&[&ld(2, &j), &ld(2, &odd), b"\x20\x01"])),
            Ok((0, AttributeResult::Values(map(json!({"j":{"x":1}})))))
        );
        assert_eq!(
            response(&cat(&[&ld(3, &odd)])),
            Ok((0, AttributeResult::NotFound))
        );
        // Downlink values are not validated: an empty STRING_V is "".
        assert_eq!(
            response(&ld(3, &ld(2, b"\x0a\x01s\x10\x03"))),
            Ok((0, AttributeResult::Value(json!(""))))
        );
        assert_eq!(
            response(&cat(&[b"\x08\x01", &ld(5, b"boom")])),
            Err(PayloadError::UnknownValue {
                field: "error",
                value: "boom".into()
            })
        );
    }

    // -----------------------------------------------------------------------------------------
    // Normalisations
    // -----------------------------------------------------------------------------------------

    #[test]
    fn documented_normalisations() {
        let mut t = GatewayTelemetry::default();
        t.devices.insert(
            "D".into(),
            vec![
                TelemetryEntry {
                    ts: Some(0),
                    values: map(json!({"a":1,"n":null,"big":u64::MAX,"e":""})),
                    metadata: Some(TelemetryMetadata {
                        connector: "c".into(),
                        received_ts: 1,
                        published_ts: 2,
                    }),
                },
                TelemetryEntry::at(5, map(json!({"only":null}))),
            ],
        );
        t.devices.insert(
            "E".into(),
            vec![TelemetryEntry::now(map(json!({"n":null})))],
        );
        let mut expected = GatewayTelemetry::default();
        expected.devices.insert(
            "D".into(),
            vec![TelemetryEntry::now(map(
                json!({"a":1,"big":"18446744073709551615","e":""}),
            ))],
        );
        assert_eq!(
            GatewayTelemetry::parse_protobuf(&t.to_protobuf()),
            Ok(expected)
        );

        let mut a = GatewayAttributes::default();
        a.devices.insert("D".into(), map(json!({"k":"v","n":null})));
        a.devices.insert("E".into(), map(json!({"n":null})));
        let mut expected = GatewayAttributes::default();
        expected.devices.insert("D".into(), map(json!({"k":"v"})));
        assert_eq!(
            GatewayAttributes::parse_protobuf(&a.to_protobuf()),
            Ok(expected)
        );

        let mut c = GatewayClaim::default();
        c.devices.insert(
            "D".into(),
            Claim {
                secret_key: Some(String::new()),
                duration_ms: Some(0),
            },
        );
        let mut expected = GatewayClaim::default();
        expected.devices.insert("D".into(), Claim::default());
        assert_eq!(GatewayClaim::parse_protobuf(&c.to_protobuf()), Ok(expected));

        let r = GatewayAttributeRequest {
            id: 1,
            device: "D".into(),
            client: true,
            keys: RequestedKeys::Key("k".into()),
        };
        assert_eq!(
            GatewayAttributeRequest::parse_protobuf(&r.to_protobuf()).map(|r| r.keys),
            Ok(RequestedKeys::Keys(vec!["k".into()]))
        );
        let c = Connect {
            device: "D".into(),
            device_type: Some(String::new()),
        };
        assert_eq!(
            Connect::parse_protobuf(&c.to_protobuf()).map(|c| c.device_type),
            Ok(None)
        );
        // An id above i32::MAX keeps its low 32 bits, as Java's int would.
        let big = GatewayRpcResponse {
            device: "D".into(),
            id: (1 << 32) + 7,
            data: Json::Null,
        };
        assert_eq!(
            GatewayRpcResponse::parse_protobuf(&big.to_protobuf()).map(|r| r.id),
            Ok(7)
        );
        // ... so 2^32 - 1 goes out as int32 -1: a ten-byte varint, refused on parse.
        let minus_one = GatewayRpcResponse {
            id: u64::from(u32::MAX),
            ..big
        };
        assert_eq!(
            minus_one.to_protobuf(),
            b"\x0a\x01D\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x1a\x04null"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Protobuf decoding rules
    // -----------------------------------------------------------------------------------------

    #[test]
    fn any_order_last_wins_unknown_skipped_messages_merged() {
        // Type before name, name twice (last wins), unknown fields of every wire type, and a
        // known field with the wrong wire type (skipped, as protobuf-java does).
        let bytes = cat(&[
            &ld(2, b"T"),
            &ld(1, b"first"),
            b"\x48\x96\x01",
            b"\x51",
            &[0; 8],
            &ld(11, b"\xff"),
            b"\x65\x01\x02\x03\x04",
            b"\x08\x05",
            &ld(1, b"last"),
        ]);
        assert_eq!(
            Connect::parse_protobuf(&bytes),
            Ok(Connect {
                device: "last".into(),
                device_type: Some("T".into())
            })
        );
        // TelemetryMsg.msg in two pieces: merged, so both lists are kept.
        let l1 = ld(1, &cat(&[b"\x08\x01", &ld(2, &kv_long("a", 1))]));
        let l2 = ld(1, &cat(&[b"\x08\x02", &ld(2, &kv_long("b", 2))]));
        let msg = cat(&[&ld(3, &l1), &ld(1, b"D"), &ld(3, &l2)]);
        let t = GatewayTelemetry::parse_protobuf(&ld(1, &msg));
        assert_eq!(
            t.map(|t| t.devices["D"].clone()),
            Ok(vec![
                TelemetryEntry::at(1, map(json!({"a":1}))),
                TelemetryEntry::at(2, map(json!({"b":2})))
            ])
        );
        // Malformed input is a typed error.
        for bad in [
            &b"\x0a"[..],
            b"\x0a\x05D",
            b"\x0b",
            b"\x0a\x01\xff",
            b"\x00\x00",
            &[0x80; 11],
        ] {
            assert!(
                matches!(
                    Connect::parse_protobuf(bad),
                    Err(PayloadError::InvalidProtobuf(_))
                ),
                "{bad:02x?}"
            );
        }
        // Malformed bytes inside a device's entry fail the message, not just the entry.
        assert!(matches!(
            GatewayTelemetry::parse_protobuf(&telemetry_of(b"D", &[b"\x12\x05".to_vec()])),
            Err(PayloadError::InvalidProtobuf(_))
        ));
    }

    // -----------------------------------------------------------------------------------------
    // Property tests
    // -----------------------------------------------------------------------------------------

    fn scalar() -> impl Strategy<Value = Json> {
        prop_oneof![
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Json::Number)),
            ".{0,12}".prop_map(Json::String),
        ]
    }

    /// A non-null value: scalar or small object/array.
    fn value() -> impl Strategy<Value = Json> {
        prop_oneof![
            4 => scalar(),
            1 => prop::collection::btree_map("[a-z]{1,4}", scalar(), 0..3)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
            1 => prop::collection::vec(scalar(), 0..3).prop_map(Json::Array),
        ]
    }

    /// Keys the JSON telemetry form reads as plain values too.
    fn key() -> impl Strategy<Value = String> {
        ".{1,8}".prop_filter("JSON form keywords", |k| {
            !matches!(k.as_str(), "ts" | "values" | "metadata")
        })
    }

    fn values(min: usize) -> impl Strategy<Value = Map<String, Json>> {
        prop::collection::btree_map(key(), value(), min..5).prop_map(|m| m.into_iter().collect())
    }

    fn device() -> impl Strategy<Value = String> {
        ".{1,12}"
    }

    fn id() -> impl Strategy<Value = u64> {
        0..=i32::MAX as u64
    }

    fn telemetry() -> impl Strategy<Value = GatewayTelemetry> {
        let entry = (
            prop::option::of(any::<i64>().prop_filter("0 is now", |t| *t != 0)),
            values(1),
        )
            .prop_map(|(ts, values)| TelemetryEntry {
                ts,
                values,
                metadata: None,
            });
        prop::collection::btree_map(device(), prop::collection::vec(entry, 1..3), 1..3)
            .prop_map(|devices| GatewayTelemetry { devices })
    }

    fn attributes() -> impl Strategy<Value = GatewayAttributes> {
        prop::collection::btree_map(device(), values(1), 1..3)
            .prop_map(|devices| GatewayAttributes { devices })
    }

    fn claim() -> impl Strategy<Value = GatewayClaim> {
        let claim = (
            prop::option::of(".{1,8}"),
            prop::option::of(any::<i64>().prop_filter("0 is default", |d| *d != 0)),
        )
            .prop_map(|(secret_key, duration_ms)| Claim {
                secret_key,
                duration_ms,
            });
        prop::collection::btree_map(device(), claim, 1..3)
            .prop_map(|devices| GatewayClaim { devices })
    }

    fn attribute_request() -> impl Strategy<Value = GatewayAttributeRequest> {
        let keys = prop_oneof![
            ".{0,6}".prop_map(RequestedKeys::Key),
            prop::collection::vec(".{0,6}", 0..4).prop_map(RequestedKeys::Keys),
        ];
        (id(), device(), any::<bool>(), keys).prop_map(|(id, device, client, keys)| {
            GatewayAttributeRequest {
                id,
                device,
                client,
                keys,
            }
        })
    }

    fn any_json() -> impl Strategy<Value = Json> {
        prop_oneof![1 => Just(Json::Null), 5 => value()]
    }

    /// Every parser, for the robustness properties.
    fn parse_all(bytes: &[u8]) {
        let _ = Connect::parse_protobuf(bytes);
        let _ = Disconnect::parse_protobuf(bytes);
        let _ = GatewayTelemetry::parse_protobuf(bytes);
        let _ = GatewayAttributes::parse_protobuf(bytes);
        let _ = GatewayClaim::parse_protobuf(bytes);
        let _ = GatewayAttributeRequest::parse_protobuf(bytes);
        let _ = GatewayRpcResponse::parse_protobuf(bytes);
        let _ = GatewayAttributeResponse::parse_protobuf(bytes);
        let _ = GatewayAttributeUpdate::parse_protobuf(bytes);
        let _ = GatewayRpcRequest::parse_protobuf(bytes);
        let _ = DisconnectNotice::parse_protobuf(bytes);
    }

    /// Where each top-level field of a well-formed message ends.
    fn field_ends(bytes: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let Ok(key) = varint(bytes, &mut at) else {
                break;
            };
            match key & 7 {
                0 => {
                    let _ = varint(bytes, &mut at);
                }
                1 => at += 8,
                5 => at += 4,
                _ => {
                    let len = varint(bytes, &mut at).unwrap_or(0);
                    at += len as usize;
                }
            }
            ends.push(at);
        }
        ends
    }

    /// Cutting a valid message inside any top-level field must be `InvalidProtobuf`.
    fn check_truncations<T: std::fmt::Debug>(
        bytes: &[u8],
        parse: impl Fn(&[u8]) -> Result<T, PayloadError>,
    ) -> Result<(), TestCaseError> {
        let ends = field_ends(bytes);
        prop_assert_eq!(ends.last().copied().unwrap_or(0), bytes.len());
        for cut in 1..bytes.len() {
            if ends.contains(&cut) {
                continue;
            }
            let r = parse(&bytes[..cut]);
            prop_assert!(
                matches!(r, Err(PayloadError::InvalidProtobuf(_))),
                "cut at {}: {:?}",
                cut,
                r
            );
        }
        Ok(())
    }

    /// `$value` round-trips through protobuf, its protobuf and JSON forms read back alike, and
    /// every cut inside a field of its protobuf form is malformed.
    macro_rules! same_message {
        ($t:ty, $value:expr) => {{
            let value = $value;
            let bytes = value.to_protobuf();
            prop_assert_eq!(<$t>::parse_protobuf(&bytes), Ok(value.clone()));
            prop_assert_eq!(<$t>::parse(&value.to_vec()), Ok(value));
            check_truncations(&bytes, <$t>::parse_protobuf)?;
        }};
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            parse_all(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(
            t in telemetry(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = t.to_protobuf();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            parse_all(&bytes);
        }

        #[test]
        fn disconnect_notices_round_trip_and_match_json(device in device(), reason in any::<u8>()) {
            same_message!(DisconnectNotice, DisconnectNotice { device, reason });
        }

        #[test]
        fn telemetry_round_trips_and_matches_json(t in telemetry()) {
            same_message!(GatewayTelemetry, t);
        }

        #[test]
        fn attributes_round_trip_and_match_json(a in attributes()) {
            same_message!(GatewayAttributes, a);
        }

        #[test]
        fn claim_round_trips_and_matches_json(c in claim()) {
            same_message!(GatewayClaim, c);
        }

        #[test]
        fn connect_and_disconnect_round_trip(
            device in device(),
            device_type in prop::option::of(".{1,8}"),
        ) {
            let c = Connect { device: device.clone(), device_type };
            let bytes = c.to_protobuf();
            prop_assert_eq!(Connect::parse_protobuf(&bytes), Ok(c));
            check_truncations(&bytes, Connect::parse_protobuf)?;
            let d = Disconnect { device };
            let bytes = d.to_protobuf();
            prop_assert_eq!(Disconnect::parse_protobuf(&bytes), Ok(d));
            check_truncations(&bytes, Disconnect::parse_protobuf)?;
        }

        #[test]
        fn attribute_request_round_trips(r in attribute_request()) {
            let bytes = r.to_protobuf();
            let keys = match &r.keys {
                RequestedKeys::Key(k) => vec![k.clone()],
                RequestedKeys::Keys(ks) => ks.clone(),
            };
            let expected = GatewayAttributeRequest { keys: RequestedKeys::Keys(keys), ..r };
            prop_assert_eq!(GatewayAttributeRequest::parse_protobuf(&bytes), Ok(expected));
            check_truncations(&bytes, GatewayAttributeRequest::parse_protobuf)?;
        }

        #[test]
        fn rpc_reply_round_trips_and_matches_json(
            device in device(),
            id in id(),
            data in any_json(),
        ) {
            let r = GatewayRpcResponse { device, id, data };
            let bytes = r.to_protobuf();
            prop_assert_eq!(GatewayRpcResponse::parse_protobuf(&bytes), Ok(r.clone()));
            prop_assert_eq!(GatewayRpcResponse::parse(&r.to_vec()), Ok(r));
            check_truncations(&bytes, GatewayRpcResponse::parse_protobuf)?;
        }

        #[test]
        fn attribute_response_round_trips_and_matches_json(
            request in attribute_request(),
            found in values(0),
        ) {
            let r = GatewayAttributeResponse::for_request(&request, found);
            let bytes = r.to_protobuf(&request);
            prop_assert_eq!(GatewayAttributeResponse::parse_protobuf(&bytes), Ok(r.clone()));
            prop_assert_eq!(GatewayAttributeResponse::parse(&r.to_vec()), Ok(r));
            check_truncations(&bytes, GatewayAttributeResponse::parse_protobuf)?;
        }

        #[test]
        fn attribute_update_round_trips(
            device in device(),
            values in values(0),
            deleted in prop::collection::vec(".{0,6}", 0..3),
        ) {
            let u = GatewayAttributeUpdate { device, update: AttributeUpdate { values, deleted } };
            let bytes = u.to_protobuf();
            prop_assert_eq!(GatewayAttributeUpdate::parse_protobuf(&bytes), Ok(u.clone()));
            // The JSON form cannot carry an attribute named `deleted` next to deletions.
            if !u.update.values.contains_key("deleted") {
                prop_assert_eq!(GatewayAttributeUpdate::parse(&u.to_vec()), Ok(u));
            }
            check_truncations(&bytes, GatewayAttributeUpdate::parse_protobuf)?;
        }

        #[test]
        fn rpc_request_round_trips_and_matches_json(
            device in device(),
            id in id(),
            method in ".{1,10}",
            params in any_json(),
        ) {
            let r = GatewayRpcRequest { device, id, method, params };
            let bytes = r.to_protobuf();
            prop_assert_eq!(GatewayRpcRequest::parse_protobuf(&bytes), Ok(r.clone()));
            prop_assert_eq!(GatewayRpcRequest::parse(&r.to_vec()), Ok(r));
            check_truncations(&bytes, GatewayRpcRequest::parse_protobuf)?;
        }
    }
}
