//! ThingsBoard's fixed protobuf messages of the device API, whatever the profile's schemas:
//! `transportapi.AttributesRequest` and `ClaimDevice` from the device
//! (`common/proto/src/main/proto/transport.proto`), and `transport.GetAttributeResponseMsg`,
//! `AttributeUpdateNotificationMsg` with their `TsKvProto` / `KeyValueProto` to the device
//! (`queue.proto`). The client-RPC pair (`RpcRequest`, `ToServerRpcResponseMsg`) is shared
//! with the client: `gateway_proto::payload::protobuf`. Decoding skips unknown fields and fields of
//! an unexpected wire type as protobuf-java does; encoding writes fields in number order and
//! leaves proto3 defaults out, as `toByteArray` does.

use serde_json::{Map, Value};

use super::wire::{put_len_delimited, put_tag, put_varint_field, Reader, WireError, WireType};

/// `transportapi.AttributesRequest { string clientKeys = 1; string sharedKeys = 2; }`, with the
/// keys split as `ProtoConverter.convertToGetAttributeRequestMessage` splits them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AttributesRequest {
    pub(crate) client_keys: Vec<String>,
    pub(crate) shared_keys: Vec<String>,
}

/// `transportapi.ClaimDevice { string secretKey = 1; int64 durationMs = 2; }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ClaimDevice {
    pub(crate) secret_key: String,
    pub(crate) duration_ms: i64,
}

/// Walks the fields of `bytes`; `on_field` consumes the value of the fields it knows (with
/// the expected wire type) and returns `false` for the others, which are skipped.
fn read_fields(
    bytes: &[u8],
    mut on_field: impl FnMut(u32, WireType, &mut Reader<'_>) -> Result<bool, WireError>,
) -> Result<(), WireError> {
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let (field, wire) = r.tag()?;
        if !on_field(field, wire, &mut r)? {
            r.skip(field, wire, 0)?;
        }
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<String, WireError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| WireError::InvalidUtf8)
}

/// Java's `String.split(",")`: trailing empty strings are dropped.
fn split_keys(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut keys: Vec<String> = text.split(',').map(str::to_owned).collect();
    while keys.last().is_some_and(String::is_empty) {
        keys.pop();
    }
    keys
}

impl AttributesRequest {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (mut client, mut shared) = (String::new(), String::new());
        read_fields(bytes, |field, wire, r| {
            match (field, wire) {
                (1, WireType::Len) => client = utf8(r.len_delimited()?)?,
                (2, WireType::Len) => shared = utf8(r.len_delimited()?)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Self {
            client_keys: split_keys(&client),
            shared_keys: split_keys(&shared),
        })
    }
}

impl ClaimDevice {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut out = Self::default();
        read_fields(bytes, |field, wire, r| {
            match (field, wire) {
                (1, WireType::Len) => out.secret_key = utf8(r.len_delimited()?)?,
                (2, WireType::Varint) => out.duration_ms = r.varint()? as i64,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(out)
    }
}

/// `KeyValueType` numbers.
mod kv_type {
    pub(super) const LONG_V: u64 = 1;
    pub(super) const DOUBLE_V: u64 = 2;
    pub(super) const STRING_V: u64 = 3;
    pub(super) const JSON_V: u64 = 4;
}

/// `KeyValueProto { key = 1; type = 2; bool_v = 3; long_v = 4; double_v = 5; string_v = 6;
/// json_v = 7; }` for a stored value (`KvProtoUtil.toKeyValueProto`); `None` for `null`,
/// which the platform never stores.
fn key_value(key: &str, value: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if !key.is_empty() {
        put_len_delimited(&mut out, 1, key.as_bytes());
    }
    let string = |out: &mut Vec<u8>, kind: u64, field: u32, text: &str| {
        put_varint_field(out, 2, kind);
        if !text.is_empty() {
            put_len_delimited(out, field, text.as_bytes());
        }
    };
    match value {
        Value::Null => return None,
        Value::Bool(b) => {
            // BOOLEAN_V is 0, the default: not written.
            if *b {
                put_varint_field(&mut out, 3, 1);
            }
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                put_varint_field(&mut out, 2, kv_type::LONG_V);
                if i != 0 {
                    put_varint_field(&mut out, 4, i as u64);
                }
            } else if n.is_u64() {
                // Beyond a long: ThingsBoard keeps such numbers as strings.
                string(&mut out, kv_type::STRING_V, 6, &n.to_string());
            } else {
                let d = n.as_f64().unwrap_or(0.0);
                put_varint_field(&mut out, 2, kv_type::DOUBLE_V);
                if d.to_bits() != 0 {
                    put_tag(&mut out, 5, WireType::Fixed64);
                    out.extend_from_slice(&d.to_le_bytes());
                }
            }
        }
        Value::String(s) => string(&mut out, kv_type::STRING_V, 6, s),
        Value::Array(_) | Value::Object(_) => {
            string(&mut out, kv_type::JSON_V, 7, &value.to_string());
        }
    }
    Some(out)
}

/// `TsKvProto { int64 ts = 1; KeyValueProto kv = 2; }`.
fn ts_kv(ts: i64, key: &str, value: &Value) -> Option<Vec<u8>> {
    let kv = key_value(key, value)?;
    let mut out = Vec::new();
    if ts != 0 {
        put_varint_field(&mut out, 1, ts as u64);
    }
    put_len_delimited(&mut out, 2, &kv);
    Some(out)
}

/// An attribute with the time it was last updated.
pub(crate) type TimedValue<'a> = (&'a str, &'a Value, i64);

fn put_ts_kvs(out: &mut Vec<u8>, field: u32, entries: &[TimedValue<'_>]) {
    for (key, value, ts) in entries {
        if let Some(entry) = ts_kv(*ts, key, value) {
            put_len_delimited(out, field, &entry);
        }
    }
}

/// `GetAttributeResponseMsg { int32 requestId = 1; repeated TsKvProto clientAttributeList = 2;
/// repeated TsKvProto sharedAttributeList = 3; bool isMultipleAttributesRequest = 4; ... }`.
pub(crate) fn attribute_response(
    request_id: i32,
    client: &[TimedValue<'_>],
    shared: &[TimedValue<'_>],
    multiple: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    if request_id != 0 {
        put_varint_field(&mut out, 1, i64::from(request_id) as u64);
    }
    put_ts_kvs(&mut out, 2, client);
    put_ts_kvs(&mut out, 3, shared);
    if multiple {
        put_varint_field(&mut out, 4, 1);
    }
    out
}

/// `AttributeUpdateNotificationMsg { repeated TsKvProto sharedUpdated = 1;
/// repeated string sharedDeleted = 2; }`.
pub(crate) fn attribute_update(updated: &[TimedValue<'_>], deleted: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    put_ts_kvs(&mut out, 1, updated);
    for key in deleted {
        put_len_delimited(&mut out, 2, key.as_bytes());
    }
    out
}

/// Pairs each value of `values` with its update time from `times` (0 when unknown).
pub(crate) fn timed<'a>(
    values: &'a Map<String, Value>,
    times: &dyn Fn(&str) -> i64,
) -> Vec<TimedValue<'a>> {
    values
        .iter()
        .map(|(k, v)| (k.as_str(), v, times(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::put_varint;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn requests_decode_with_java_splitting_and_skip_unknown_fields() {
        let mut bytes = Vec::new();
        put_len_delimited(&mut bytes, 1, b"a,,b,");
        put_varint_field(&mut bytes, 9, 5); // unknown
        put_varint_field(&mut bytes, 2, 5); // wrong wire type for sharedKeys: skipped
        let req = AttributesRequest::decode(&bytes).unwrap();
        assert_eq!(req.client_keys, vec!["a", "", "b"]);
        assert!(req.shared_keys.is_empty());
        assert_eq!(
            AttributesRequest::decode(&[]).unwrap(),
            AttributesRequest::default()
        );
        let mut claim = Vec::new();
        put_len_delimited(&mut claim, 1, b"s3cret");
        put_tag(&mut claim, 2, WireType::Varint);
        put_varint(&mut claim, 60_000);
        assert_eq!(
            ClaimDevice::decode(&claim).unwrap(),
            ClaimDevice {
                secret_key: "s3cret".into(),
                duration_ms: 60_000
            }
        );
    }

    #[test]
    fn key_values_leave_proto3_defaults_out() {
        assert_eq!(key_value("", &json!(false)).unwrap(), Vec::<u8>::new());
        assert_eq!(
            key_value("k", &json!(0)).unwrap(),
            vec![0x0A, 1, b'k', 0x10, 1]
        );
        assert_eq!(
            key_value("k", &json!({"a":1})).unwrap(),
            [&[0x0A, 1, b'k', 0x10, 4, 0x3A, 7][..], br#"{"a":1}"#].concat()
        );
        assert_eq!(key_value("k", &Value::Null), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_fixed_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = AttributesRequest::decode(&bytes);
            let _ = ClaimDevice::decode(&bytes);
        }
    }
}
