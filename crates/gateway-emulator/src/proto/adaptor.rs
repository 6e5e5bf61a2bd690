//! What ThingsBoard's `ProtoMqttAdaptor` does with the profile's dynamic schemas, reduced to
//! the emulator's needs: uplink bytes to the JSON the JSON path then stores, and server-side
//! RPC requests to bytes.
//!
//! A device whose profile is not PROTOBUF has no descriptors: `ProtoConverter
//! .validateDescriptor` throws, which is an `AdaptorException` like undecodable bytes.

use std::fmt;

use serde_json::{json, Value};

use super::dynamic::DynMessage;
use super::json::{from_json, to_json, JsonError};
use super::profile::{ProtoSchemas, SchemaRole};
use super::wire::WireError;

/// Why a protobuf payload could not be converted (an `AdaptorException` in ThingsBoard).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdaptorError {
    /// The device's profile is not PROTOBUF: "Failed to get dynamic message descriptor!".
    NoDescriptor,
    /// The bytes are not a message of the schema.
    Wire(WireError),
    /// The JSON does not fit the schema (server-side RPC requests).
    Json(JsonError),
}

impl fmt::Display for AdaptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDescriptor => f.write_str("Failed to get dynamic message descriptor!"),
            Self::Wire(e) => e.fmt(f),
            Self::Json(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AdaptorError {}

fn decode(
    schemas: Option<&ProtoSchemas>,
    role: SchemaRole,
    bytes: &[u8],
) -> Result<Value, AdaptorError> {
    let schema = schemas.ok_or(AdaptorError::NoDescriptor)?.schema(role);
    let msg = DynMessage::decode(schema, schema.root, bytes).map_err(AdaptorError::Wire)?;
    Ok(to_json(schema, schema.root, &msg))
}

/// Telemetry bytes as the JSON text ThingsBoard hands to `JsonConverter.convertToTelemetryProto`.
/// Gson's `getAsLong` reads a `"ts"` printed as a string (int64), so it becomes a number here.
pub(crate) fn telemetry_json(
    schemas: Option<&ProtoSchemas>,
    bytes: &[u8],
) -> Result<Vec<u8>, AdaptorError> {
    let mut value = decode(schemas, SchemaRole::Telemetry, bytes)?;
    if let Value::Object(obj) = &mut value {
        if obj.contains_key("values") {
            if let Some(Value::String(ts)) = obj.get("ts") {
                if let Ok(n) = ts.parse::<i64>() {
                    obj.insert("ts".into(), json!(n));
                }
            }
        }
    }
    Ok(value.to_string().into_bytes())
}

/// Attribute bytes as the JSON text ThingsBoard hands to `convertToAttributesProto`.
pub(crate) fn attributes_json(
    schemas: Option<&ProtoSchemas>,
    bytes: &[u8],
) -> Result<Vec<u8>, AdaptorError> {
    Ok(decode(schemas, SchemaRole::Attributes, bytes)?
        .to_string()
        .into_bytes())
}

/// A reply to a server-side RPC: the JSON ThingsBoard passes on as the RPC's response.
pub(crate) fn rpc_response(
    schemas: Option<&ProtoSchemas>,
    bytes: &[u8],
) -> Result<Value, AdaptorError> {
    decode(schemas, SchemaRole::RpcResponse, bytes)
}

/// A server-side RPC request encoded with the RPC-request schema (`ProtoConverter
/// .convertToRpcRequest`): `{"method", "requestId", "params"}` merged into the message by
/// JSON name, unknown names ignored.
pub(crate) fn rpc_request(
    schemas: Option<&ProtoSchemas>,
    method: &str,
    request_id: u32,
    params: &Value,
) -> Result<Vec<u8>, AdaptorError> {
    let schema = schemas
        .ok_or(AdaptorError::NoDescriptor)?
        .schema(SchemaRole::RpcRequest);
    let request = json!({"method": method, "requestId": request_id, "params": params});
    let msg = from_json(schema, schema.root, &request).map_err(AdaptorError::Json)?;
    Ok(msg.encode(schema, schema.root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{put_len_delimited, put_tag, WireType};
    use proptest::prelude::*;

    fn defaults() -> ProtoSchemas {
        ProtoSchemas::thingsboard_defaults()
    }

    #[test]
    fn default_telemetry_becomes_json_without_unset_optionals() {
        let mut bytes = Vec::new();
        put_tag(&mut bytes, 1, WireType::Fixed64);
        bytes.extend_from_slice(&42.5f64.to_le_bytes());
        let mut inner = Vec::new();
        put_len_delimited(&mut inner, 1, b"v");
        put_len_delimited(&mut bytes, 3, &inner);
        let json: Value =
            serde_json::from_slice(&telemetry_json(Some(&defaults()), &bytes).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"temperature":42.5,"innerObject":{"key1":"v"}})
        );
        assert_eq!(
            telemetry_json(None, &bytes),
            Err(AdaptorError::NoDescriptor)
        );
    }

    #[test]
    fn int64_ts_with_values_reads_as_a_number() {
        let s = ProtoSchemas::new(
            "syntax = \"proto3\"; message V { optional int32 t = 1; } message T { int64 ts = 1; V values = 2; }",
            ProtoSchemas::DEFAULT_ATTRIBUTES,
            "",
            "",
        )
        .unwrap();
        let bytes = [0x08, 0x05, 0x12, 0x02, 0x08, 0x07];
        let json: Value =
            serde_json::from_slice(&telemetry_json(Some(&s), &bytes).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"ts":5,"values":{"t":7}}));
    }

    #[test]
    fn rpc_requests_with_the_default_schema_take_only_primitive_params() {
        let bytes = rpc_request(Some(&defaults()), "setMode", 3, &json!("eco")).unwrap();
        let mut want = Vec::new();
        put_len_delimited(&mut want, 1, b"setMode");
        want.extend_from_slice(&[0x10, 0x03]);
        put_len_delimited(&mut want, 3, b"eco");
        assert_eq!(bytes, want);
        assert!(matches!(
            rpc_request(Some(&defaults()), "set", 0, &json!({"a":1})),
            Err(AdaptorError::Json(_))
        ));
        assert_eq!(
            rpc_request(None, "set", 0, &json!(1)),
            Err(AdaptorError::NoDescriptor)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_dynamic_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let d = defaults();
            let _ = telemetry_json(Some(&d), &bytes);
            let _ = attributes_json(Some(&d), &bytes);
            let _ = rpc_response(Some(&d), &bytes);
        }
    }
}
