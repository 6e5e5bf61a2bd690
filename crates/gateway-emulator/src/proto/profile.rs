//! A device profile's protobuf transport payload configuration: the four schemas.

use std::fmt;
use std::sync::Arc;

use super::schema::{Schema, SchemaErrorKind};

/// Which of a profile's four schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SchemaRole {
    /// `deviceTelemetryProtoSchema`.
    Telemetry,
    /// `deviceAttributesProtoSchema`.
    Attributes,
    /// `deviceRpcRequestProtoSchema` (server-side RPC requests sent to the device).
    RpcRequest,
    /// `deviceRpcResponseProtoSchema` (the device's replies to them).
    RpcResponse,
}

impl fmt::Display for SchemaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Telemetry => "telemetry proto schema",
            Self::Attributes => "attributes proto schema",
            Self::RpcRequest => "rpc request proto schema",
            Self::RpcResponse => "rpc response proto schema",
        })
    }
}

/// A schema ThingsBoard would refuse when saving the device profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The schema at fault.
    pub role: SchemaRole,
    /// What is wrong with it.
    pub kind: SchemaErrorKind,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[Transport Configuration] invalid {}: {}",
            self.role, self.kind
        )
    }
}

impl std::error::Error for SchemaError {}

#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    texts: [String; 4],
    telemetry: Schema,
    attributes: Schema,
    rpc_request: Schema,
    rpc_response: Schema,
}

/// The protobuf payload configuration of a device profile (ThingsBoard's
/// `ProtoTransportPayloadConfiguration`): four `.proto` schemas, each used through its last
/// top-level message, and the JSON compatibility flags ([`JsonCompatibility`], off unless
/// set with [`with_json_compatibility`](Self::with_json_compatibility)). Give it to
/// [`crate::Emulator::set_profile_protobuf`].
///
/// Cloning is cheap (the parsed schemas are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoSchemas {
    parsed: Arc<Parsed>,
    json: JsonCompatibility,
}

/// A PROTOBUF profile's `enableCompatibilityWithJsonPayloadFormat` and
/// `useJsonPayloadFormatForDefaultDownlinkTopics` (the second only counts with the first),
/// for fleets moving from JSON to protobuf. They apply to the device API's default topics
/// (v1 and plain v2), never to `/j` and `/p` topics nor to the gateway API, whose uplinks
/// follow the gateway profile alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JsonCompatibility {
    /// Both flags off (ThingsBoard's default).
    #[default]
    Off,
    /// `enableCompatibilityWithJsonPayloadFormat`: an uplink that the protobuf adaptor
    /// refuses is read as JSON (`BackwardCompatibilityAdaptor`: protobuf first, JSON only
    /// after an `AdaptorException`, so bytes that parse as protobuf never reach JSON).
    /// Downlinks stay protobuf. A gateway gets no per-device disconnect notice
    /// (the adaptor has no such message).
    Uplinks,
    /// Both flags: as [`Uplinks`](Self::Uplinks), and the downlinks of the v1 topics are
    /// JSON (`DeviceSessionCtx.getAdaptor(V1)`): attribute updates when subscribed on
    /// `v1/devices/me/attributes`, answers to attribute requests and client RPCs made on v1,
    /// RPC requests when subscribed on `v1/devices/me/rpc/request/+`. Plain v2 downlinks stay
    /// protobuf.
    UplinksAndV1Downlinks,
}

impl ProtoSchemas {
    /// ThingsBoard's default telemetry schema (the device profile UI's `defaultTelemetrySchema`).
    pub const DEFAULT_TELEMETRY: &'static str = r#"syntax ="proto3";
package telemetry;

message SensorDataReading {

  optional double temperature = 1;
  optional double humidity = 2;
  InnerObject innerObject = 3;

  message InnerObject {
    optional string key1 = 1;
    optional bool key2 = 2;
    optional double key3 = 3;
    optional int32 key4 = 4;
    optional string key5 = 5;
  }
}
"#;

    /// ThingsBoard's default attributes schema.
    pub const DEFAULT_ATTRIBUTES: &'static str = r#"syntax ="proto3";
package attributes;

message SensorConfiguration {
  optional string firmwareVersion = 1;
  optional string serialNumber = 2;
}"#;

    /// ThingsBoard's default RPC request schema (also the server's fallback when the profile
    /// leaves it empty). `params` is a string: only primitive RPC params fit it.
    pub const DEFAULT_RPC_REQUEST: &'static str = r#"syntax ="proto3";
package rpc;

message RpcRequestMsg {
  optional string method = 1;
  optional int32 requestId = 2;
  optional string params = 3;
}"#;

    /// ThingsBoard's default RPC response schema.
    pub const DEFAULT_RPC_RESPONSE: &'static str = r#"syntax ="proto3";
package rpc;

message RpcResponseMsg {
  optional string payload = 1;
}"#;

    /// The schemas a new PROTOBUF device profile gets in ThingsBoard.
    pub fn thingsboard_defaults() -> Self {
        match Self::new(
            Self::DEFAULT_TELEMETRY,
            Self::DEFAULT_ATTRIBUTES,
            Self::DEFAULT_RPC_REQUEST,
            Self::DEFAULT_RPC_RESPONSE,
        ) {
            Ok(schemas) => schemas,
            // The defaults are constants covered by a unit test.
            Err(e) => unreachable!("ThingsBoard's default schemas parse: {e}"),
        }
    }

    /// Parses the four schemas, refusing what ThingsBoard refuses when the profile is saved.
    /// An empty RPC schema falls back to ThingsBoard's default, as the server does.
    pub fn new(
        telemetry: &str,
        attributes: &str,
        rpc_request: &str,
        rpc_response: &str,
    ) -> Result<Self, SchemaError> {
        let rpc_request = if rpc_request.is_empty() {
            Self::DEFAULT_RPC_REQUEST
        } else {
            rpc_request
        };
        let rpc_response = if rpc_response.is_empty() {
            Self::DEFAULT_RPC_RESPONSE
        } else {
            rpc_response
        };
        let parse =
            |role, text: &str| Schema::parse(text).map_err(|kind| SchemaError { role, kind });
        Ok(Self::from_parsed(Parsed {
            telemetry: parse(SchemaRole::Telemetry, telemetry)?,
            attributes: parse(SchemaRole::Attributes, attributes)?,
            rpc_request: parse(SchemaRole::RpcRequest, rpc_request)?,
            rpc_response: parse(SchemaRole::RpcResponse, rpc_response)?,
            texts: [
                telemetry.to_owned(),
                attributes.to_owned(),
                rpc_request.to_owned(),
                rpc_response.to_owned(),
            ],
        }))
    }

    fn from_parsed(parsed: Parsed) -> Self {
        Self {
            parsed: Arc::new(parsed),
            json: JsonCompatibility::Off,
        }
    }

    /// The same schemas with the profile's JSON compatibility flags set.
    #[must_use]
    pub fn with_json_compatibility(mut self, json: JsonCompatibility) -> Self {
        self.json = json;
        self
    }

    /// The profile's JSON compatibility flags.
    pub fn json_compatibility(&self) -> JsonCompatibility {
        self.json
    }

    /// The text of one schema.
    pub fn text(&self, role: SchemaRole) -> &str {
        let [t, a, req, res] = &self.parsed.texts;
        match role {
            SchemaRole::Telemetry => t,
            SchemaRole::Attributes => a,
            SchemaRole::RpcRequest => req,
            SchemaRole::RpcResponse => res,
        }
    }

    pub(crate) fn schema(&self, role: SchemaRole) -> &Schema {
        match role {
            SchemaRole::Telemetry => &self.parsed.telemetry,
            SchemaRole::Attributes => &self.parsed.attributes,
            SchemaRole::RpcRequest => &self.parsed.rpc_request,
            SchemaRole::RpcResponse => &self.parsed.rpc_response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse_and_bad_schemas_name_their_role() {
        let d = ProtoSchemas::thingsboard_defaults();
        assert_eq!(
            d.text(SchemaRole::Attributes),
            ProtoSchemas::DEFAULT_ATTRIBUTES
        );
        let err = ProtoSchemas::new(
            ProtoSchemas::DEFAULT_TELEMETRY,
            "syntax = \"proto3\"; message A { required int32 x = 1; }",
            "",
            "",
        )
        .unwrap_err();
        assert_eq!(err.role, SchemaRole::Attributes);
        assert!(err.to_string().contains("required labels"), "{err}");
        let fallback = ProtoSchemas::new(
            ProtoSchemas::DEFAULT_TELEMETRY,
            ProtoSchemas::DEFAULT_ATTRIBUTES,
            "",
            "",
        )
        .unwrap();
        assert_eq!(fallback, d);
    }
}
