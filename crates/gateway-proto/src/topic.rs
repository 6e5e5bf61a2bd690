//! ThingsBoard MQTT topic names: constants, builders for topics that carry an id, and
//! classifiers for both directions (what the server publishes to a client, and what a client
//! publishes to the server).
//!
//! The server compares subscription filters by exact string equality, so the `*_SUB` constants
//! are the only filters it accepts; `#` and other wildcard forms are refused.

use std::borrow::Cow;
use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------------
// Device API v1
// ---------------------------------------------------------------------------------------------

/// Device telemetry publish topic.
pub const DEVICE_TELEMETRY: &str = "v1/devices/me/telemetry";
/// Device client-attribute publish topic; also the topic on which the server pushes shared
/// attribute updates once the client subscribed to it.
pub const DEVICE_ATTRIBUTES: &str = "v1/devices/me/attributes";
/// Prefix of the device attribute request topic; the request id follows.
pub const DEVICE_ATTRIBUTES_REQUEST_PREFIX: &str = "v1/devices/me/attributes/request/";
/// Prefix of the device attribute response topic; the id of the request follows.
pub const DEVICE_ATTRIBUTES_RESPONSE_PREFIX: &str = "v1/devices/me/attributes/response/";
/// Subscription filter for device attribute responses.
pub const DEVICE_ATTRIBUTES_RESPONSE_SUB: &str = "v1/devices/me/attributes/response/+";
/// Prefix of the device RPC request topic. The server publishes server-side RPCs here, and the
/// device publishes its own (client-side) RPC requests here too; only the publisher differs.
pub const DEVICE_RPC_REQUEST_PREFIX: &str = "v1/devices/me/rpc/request/";
/// Subscription filter for server-side RPC requests to the device.
pub const DEVICE_RPC_REQUEST_SUB: &str = "v1/devices/me/rpc/request/+";
/// Prefix of the device RPC response topic: the device's reply to a server RPC, and the
/// server's reply to a client-side RPC.
pub const DEVICE_RPC_RESPONSE_PREFIX: &str = "v1/devices/me/rpc/response/";
/// Subscription filter for replies to client-side RPCs.
pub const DEVICE_RPC_RESPONSE_SUB: &str = "v1/devices/me/rpc/response/+";
/// Device claim publish topic.
pub const DEVICE_CLAIM: &str = "v1/devices/me/claim";
/// Provisioning request topic (only valid in a provision-only session).
pub const PROVISION_REQUEST: &str = "/provision/request";
/// Provisioning response topic (the only filter a provision-only session may subscribe to).
pub const PROVISION_RESPONSE: &str = "/provision/response";

// ---------------------------------------------------------------------------------------------
// Gateway API
// ---------------------------------------------------------------------------------------------

/// Gateway: announce (connect) a child device.
pub const GATEWAY_CONNECT: &str = "v1/gateway/connect";
/// Gateway: disconnect a child device (uplink). The server also publishes per-device disconnect
/// notices here (MQTT 5 only), although the topic cannot be subscribed to.
pub const GATEWAY_DISCONNECT: &str = "v1/gateway/disconnect";
/// Gateway: telemetry of one or more child devices.
pub const GATEWAY_TELEMETRY: &str = "v1/gateway/telemetry";
/// Gateway: client attributes of child devices (uplink) and shared attribute updates
/// (downlink, delivered whether or not the gateway subscribed).
pub const GATEWAY_ATTRIBUTES: &str = "v1/gateway/attributes";
/// Gateway: attribute request for a child device.
pub const GATEWAY_ATTRIBUTES_REQUEST: &str = "v1/gateway/attributes/request";
/// Gateway: attribute responses for child devices.
pub const GATEWAY_ATTRIBUTES_RESPONSE: &str = "v1/gateway/attributes/response";
/// Gateway: server-side RPC to a child (downlink) and the gateway's reply (uplink).
pub const GATEWAY_RPC: &str = "v1/gateway/rpc";
/// Gateway: claim child devices.
pub const GATEWAY_CLAIM: &str = "v1/gateway/claim";

// ---------------------------------------------------------------------------------------------
// Device API v2 (short topics; `j` forces JSON, `p` forces protobuf)
// ---------------------------------------------------------------------------------------------

/// v2 telemetry, payload type from the device profile.
pub const V2_TELEMETRY: &str = "v2/t";
/// v2 telemetry, JSON.
pub const V2_TELEMETRY_JSON: &str = "v2/t/j";
/// v2 telemetry, protobuf.
pub const V2_TELEMETRY_PROTO: &str = "v2/t/p";
/// v2 attributes publish / attribute updates subscription, profile payload type.
pub const V2_ATTRIBUTES: &str = "v2/a";
/// v2 attributes publish / attribute updates subscription, JSON.
pub const V2_ATTRIBUTES_JSON: &str = "v2/a/j";
/// v2 attributes publish / attribute updates subscription, protobuf.
pub const V2_ATTRIBUTES_PROTO: &str = "v2/a/p";
/// Prefix of the v2 attribute request topic (profile payload type); id follows.
pub const V2_ATTRIBUTES_REQUEST_PREFIX: &str = "v2/a/req/";
/// Prefix of the v2 attribute request topic (JSON); id follows.
pub const V2_ATTRIBUTES_REQUEST_JSON_PREFIX: &str = "v2/a/req/j/";
/// Prefix of the v2 attribute request topic (protobuf); id follows.
pub const V2_ATTRIBUTES_REQUEST_PROTO_PREFIX: &str = "v2/a/req/p/";
/// Prefix of the v2 attribute response topic (profile payload type); id follows.
pub const V2_ATTRIBUTES_RESPONSE_PREFIX: &str = "v2/a/res/";
/// Prefix of the v2 attribute response topic (JSON); id follows.
pub const V2_ATTRIBUTES_RESPONSE_JSON_PREFIX: &str = "v2/a/res/j/";
/// Prefix of the v2 attribute response topic (protobuf); id follows.
pub const V2_ATTRIBUTES_RESPONSE_PROTO_PREFIX: &str = "v2/a/res/p/";
/// Subscription filter for v2 attribute responses (profile payload type).
pub const V2_ATTRIBUTES_RESPONSE_SUB: &str = "v2/a/res/+";
/// Subscription filter for v2 attribute responses (JSON).
pub const V2_ATTRIBUTES_RESPONSE_JSON_SUB: &str = "v2/a/res/j/+";
/// Subscription filter for v2 attribute responses (protobuf).
pub const V2_ATTRIBUTES_RESPONSE_PROTO_SUB: &str = "v2/a/res/p/+";
/// Prefix of the v2 RPC request topic (server RPC and client RPC), profile payload type.
pub const V2_RPC_REQUEST_PREFIX: &str = "v2/r/req/";
/// Prefix of the v2 RPC request topic, JSON.
pub const V2_RPC_REQUEST_JSON_PREFIX: &str = "v2/r/req/j/";
/// Prefix of the v2 RPC request topic, protobuf.
pub const V2_RPC_REQUEST_PROTO_PREFIX: &str = "v2/r/req/p/";
/// Subscription filter for v2 server RPC requests, profile payload type.
pub const V2_RPC_REQUEST_SUB: &str = "v2/r/req/+";
/// Subscription filter for v2 server RPC requests, JSON.
pub const V2_RPC_REQUEST_JSON_SUB: &str = "v2/r/req/j/+";
/// Subscription filter for v2 server RPC requests, protobuf.
pub const V2_RPC_REQUEST_PROTO_SUB: &str = "v2/r/req/p/+";
/// Prefix of the v2 RPC response topic (reply to server RPC and client-RPC reply), profile type.
pub const V2_RPC_RESPONSE_PREFIX: &str = "v2/r/res/";
/// Prefix of the v2 RPC response topic, JSON.
pub const V2_RPC_RESPONSE_JSON_PREFIX: &str = "v2/r/res/j/";
/// Prefix of the v2 RPC response topic, protobuf.
pub const V2_RPC_RESPONSE_PROTO_PREFIX: &str = "v2/r/res/p/";
/// Subscription filter for v2 client-RPC replies, profile payload type.
pub const V2_RPC_RESPONSE_SUB: &str = "v2/r/res/+";
/// Subscription filter for v2 client-RPC replies, JSON.
pub const V2_RPC_RESPONSE_JSON_SUB: &str = "v2/r/res/j/+";
/// Subscription filter for v2 client-RPC replies, protobuf.
pub const V2_RPC_RESPONSE_PROTO_SUB: &str = "v2/r/res/p/+";

// ---------------------------------------------------------------------------------------------
// OTA (firmware / software)
// ---------------------------------------------------------------------------------------------

/// Prefix of a firmware chunk request: `v2/fw/request/{requestId}/chunk/{chunk}`.
pub const FW_REQUEST_PREFIX: &str = "v2/fw/request/";
/// Prefix of a software chunk request: `v2/sw/request/{requestId}/chunk/{chunk}`.
pub const SW_REQUEST_PREFIX: &str = "v2/sw/request/";
/// Prefix of a firmware chunk response: `v2/fw/response/{requestId}/chunk/{chunk}`.
pub const FW_RESPONSE_PREFIX: &str = "v2/fw/response/";
/// Prefix of a software chunk response: `v2/sw/response/{requestId}/chunk/{chunk}`.
pub const SW_RESPONSE_PREFIX: &str = "v2/sw/response/";
/// Subscription filter for firmware chunks (the server publishes them even without it).
pub const FW_RESPONSE_SUB: &str = "v2/fw/response/+/chunk/+";
/// Subscription filter for software chunks (the server publishes them even without it).
pub const SW_RESPONSE_SUB: &str = "v2/sw/response/+/chunk/+";
/// Firmware error topic. The server reports software-update errors here too.
pub const FW_ERROR: &str = "v2/fw/error";
/// Software error topic (defined by the server, but its errors actually go to [`FW_ERROR`]).
pub const SW_ERROR: &str = "v2/sw/error";

/// The topic family a device-API topic belongs to. Downlinks are published on the family of
/// the client's last matching subscription, so the client must remember it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicFamily {
    /// `v1/devices/me/...` (and all gateway and provisioning topics).
    V1,
    /// `v2/...` without a suffix: payload type from the device profile.
    V2,
    /// `v2/.../j`: forced JSON.
    V2Json,
    /// `v2/.../p`: forced protobuf.
    V2Proto,
}

impl TopicFamily {
    /// All four families.
    pub const ALL: [TopicFamily; 4] = [Self::V1, Self::V2, Self::V2Json, Self::V2Proto];

    /// Telemetry publish topic of this family.
    pub fn telemetry_topic(self) -> &'static str {
        match self {
            Self::V1 => DEVICE_TELEMETRY,
            Self::V2 => V2_TELEMETRY,
            Self::V2Json => V2_TELEMETRY_JSON,
            Self::V2Proto => V2_TELEMETRY_PROTO,
        }
    }

    /// Attributes publish / attribute-update subscription topic of this family.
    pub fn attributes_topic(self) -> &'static str {
        match self {
            Self::V1 => DEVICE_ATTRIBUTES,
            Self::V2 => V2_ATTRIBUTES,
            Self::V2Json => V2_ATTRIBUTES_JSON,
            Self::V2Proto => V2_ATTRIBUTES_PROTO,
        }
    }

    /// Subscription filter for topics of `kind` in this family (e.g. `v2/r/req/j/+`).
    pub fn subscription_filter(self, kind: IdTopicKind) -> &'static str {
        use IdTopicKind as K;
        match (kind, self) {
            (K::AttributeRequest, Self::V1) => "v1/devices/me/attributes/request/+",
            (K::AttributeRequest, Self::V2) => "v2/a/req/+",
            (K::AttributeRequest, Self::V2Json) => "v2/a/req/j/+",
            (K::AttributeRequest, Self::V2Proto) => "v2/a/req/p/+",
            (K::AttributeResponse, Self::V1) => DEVICE_ATTRIBUTES_RESPONSE_SUB,
            (K::AttributeResponse, Self::V2) => V2_ATTRIBUTES_RESPONSE_SUB,
            (K::AttributeResponse, Self::V2Json) => V2_ATTRIBUTES_RESPONSE_JSON_SUB,
            (K::AttributeResponse, Self::V2Proto) => V2_ATTRIBUTES_RESPONSE_PROTO_SUB,
            (K::RpcRequest, Self::V1) => DEVICE_RPC_REQUEST_SUB,
            (K::RpcRequest, Self::V2) => V2_RPC_REQUEST_SUB,
            (K::RpcRequest, Self::V2Json) => V2_RPC_REQUEST_JSON_SUB,
            (K::RpcRequest, Self::V2Proto) => V2_RPC_REQUEST_PROTO_SUB,
            (K::RpcResponse, Self::V1) => DEVICE_RPC_RESPONSE_SUB,
            (K::RpcResponse, Self::V2) => V2_RPC_RESPONSE_SUB,
            (K::RpcResponse, Self::V2Json) => V2_RPC_RESPONSE_JSON_SUB,
            (K::RpcResponse, Self::V2Proto) => V2_RPC_RESPONSE_PROTO_SUB,
        }
    }
}

/// The device-API topics that end in a numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdTopicKind {
    /// Attribute request (client → server).
    AttributeRequest,
    /// Attribute response (server → client), id of the request.
    AttributeResponse,
    /// RPC request: server RPC (server → client) or client-side RPC (client → server).
    RpcRequest,
    /// RPC response: reply to a server RPC (client → server) or to a client-side RPC
    /// (server → client).
    RpcResponse,
}

impl IdTopicKind {
    /// All four kinds.
    pub const ALL: [IdTopicKind; 4] = [
        Self::AttributeRequest,
        Self::AttributeResponse,
        Self::RpcRequest,
        Self::RpcResponse,
    ];

    /// The topic prefix (ending in `/`) for this kind in `family`; the id follows it.
    pub fn prefix(self, family: TopicFamily) -> &'static str {
        use TopicFamily as F;
        match (self, family) {
            (Self::AttributeRequest, F::V1) => DEVICE_ATTRIBUTES_REQUEST_PREFIX,
            (Self::AttributeRequest, F::V2) => V2_ATTRIBUTES_REQUEST_PREFIX,
            (Self::AttributeRequest, F::V2Json) => V2_ATTRIBUTES_REQUEST_JSON_PREFIX,
            (Self::AttributeRequest, F::V2Proto) => V2_ATTRIBUTES_REQUEST_PROTO_PREFIX,
            (Self::AttributeResponse, F::V1) => DEVICE_ATTRIBUTES_RESPONSE_PREFIX,
            (Self::AttributeResponse, F::V2) => V2_ATTRIBUTES_RESPONSE_PREFIX,
            (Self::AttributeResponse, F::V2Json) => V2_ATTRIBUTES_RESPONSE_JSON_PREFIX,
            (Self::AttributeResponse, F::V2Proto) => V2_ATTRIBUTES_RESPONSE_PROTO_PREFIX,
            (Self::RpcRequest, F::V1) => DEVICE_RPC_REQUEST_PREFIX,
            (Self::RpcRequest, F::V2) => V2_RPC_REQUEST_PREFIX,
            (Self::RpcRequest, F::V2Json) => V2_RPC_REQUEST_JSON_PREFIX,
            (Self::RpcRequest, F::V2Proto) => V2_RPC_REQUEST_PROTO_PREFIX,
            (Self::RpcResponse, F::V1) => DEVICE_RPC_RESPONSE_PREFIX,
            (Self::RpcResponse, F::V2) => V2_RPC_RESPONSE_PREFIX,
            (Self::RpcResponse, F::V2Json) => V2_RPC_RESPONSE_JSON_PREFIX,
            (Self::RpcResponse, F::V2Proto) => V2_RPC_RESPONSE_PROTO_PREFIX,
        }
    }
}

/// Firmware or software OTA package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtaKind {
    /// Firmware (`fw`).
    Firmware,
    /// Software (`sw`).
    Software,
}

impl OtaKind {
    fn key(self) -> &'static str {
        match self {
            Self::Firmware => "fw",
            Self::Software => "sw",
        }
    }

    /// ThingsBoard's key prefix for this kind (`OtaPackageType.keyPrefix`): `fw` or `sw`, as in
    /// the `fw_title` attribute and the `v2/fw/...` topics.
    pub fn prefix(self) -> &'static str {
        self.key()
    }

    fn from_key(key: &str) -> Option<Self> {
        match key {
            "fw" => Some(Self::Firmware),
            "sw" => Some(Self::Software),
            _ => None,
        }
    }

    /// The error topic for this kind (`v2/fw/error` or `v2/sw/error`).
    pub fn error_topic(self) -> &'static str {
        match self {
            Self::Firmware => FW_ERROR,
            Self::Software => SW_ERROR,
        }
    }

    /// The chunk-response subscription filter for this kind.
    pub fn response_filter(self) -> &'static str {
        match self {
            Self::Firmware => FW_RESPONSE_SUB,
            Self::Software => SW_RESPONSE_SUB,
        }
    }
}

/// Maximum decimal length of a `u64`.
const MAX_U64_DIGITS: usize = 20;

/// Appends `prefix` followed by the decimal `id` to `out`.
fn push_id(out: &mut String, prefix: &str, id: u64) {
    out.push_str(prefix);
    // Writing into a String cannot fail.
    let _ = write!(out, "{id}");
}

/// Builds `prefix` + `id` with a single, exactly sized allocation.
fn with_id(prefix: &str, id: u64) -> String {
    let mut s = String::with_capacity(prefix.len() + MAX_U64_DIGITS);
    push_id(&mut s, prefix, id);
    s
}

/// Builds an id-carrying device topic of any kind and family, e.g. `v2/a/req/j/7`.
pub fn topic_with_id(kind: IdTopicKind, family: TopicFamily, id: u64) -> String {
    with_id(kind.prefix(family), id)
}

/// Appends an id-carrying device topic to `out` (lets a caller reuse one buffer).
pub fn write_topic_with_id(out: &mut String, kind: IdTopicKind, family: TopicFamily, id: u64) {
    push_id(out, kind.prefix(family), id);
}

/// `v1/devices/me/attributes/request/{id}`.
pub fn attribute_request_topic(id: u64) -> String {
    with_id(DEVICE_ATTRIBUTES_REQUEST_PREFIX, id)
}

/// `v1/devices/me/attributes/response/{id}` (server side).
pub fn attribute_response_topic(id: u64) -> String {
    with_id(DEVICE_ATTRIBUTES_RESPONSE_PREFIX, id)
}

/// `v1/devices/me/rpc/request/{id}`: a client-side RPC request (or, published by the server,
/// a server-side RPC).
pub fn rpc_request_topic(id: u64) -> String {
    with_id(DEVICE_RPC_REQUEST_PREFIX, id)
}

/// `v1/devices/me/rpc/response/{id}`: the reply to server RPC `id` (or, published by the
/// server, the reply to client-side RPC `id`).
pub fn rpc_response_topic(id: u64) -> String {
    with_id(DEVICE_RPC_RESPONSE_PREFIX, id)
}

/// v2 attribute request topic in `family` (`V1` gives the v1 topic).
pub fn attribute_request_topic_v2(family: TopicFamily, id: u64) -> String {
    topic_with_id(IdTopicKind::AttributeRequest, family, id)
}

/// v2 attribute response topic in `family` (server side).
pub fn attribute_response_topic_v2(family: TopicFamily, id: u64) -> String {
    topic_with_id(IdTopicKind::AttributeResponse, family, id)
}

/// v2 RPC request topic in `family`.
pub fn rpc_request_topic_v2(family: TopicFamily, id: u64) -> String {
    topic_with_id(IdTopicKind::RpcRequest, family, id)
}

/// v2 RPC response topic in `family`.
pub fn rpc_response_topic_v2(family: TopicFamily, id: u64) -> String {
    topic_with_id(IdTopicKind::RpcResponse, family, id)
}

fn ota_topic(kind: OtaKind, dir: &str, request_id: u64, chunk: u64) -> String {
    let mut s = String::with_capacity(3 + 2 + dir.len() + 2 * MAX_U64_DIGITS + 8);
    s.push_str("v2/");
    s.push_str(kind.key());
    s.push('/');
    s.push_str(dir);
    push_id(&mut s, "/", request_id);
    push_id(&mut s, "/chunk/", chunk);
    s
}

/// `v2/{fw|sw}/request/{request_id}/chunk/{chunk}`; the payload is the chunk size as decimal text.
pub fn ota_chunk_request_topic(kind: OtaKind, request_id: u64, chunk: u64) -> String {
    ota_topic(kind, "request", request_id, chunk)
}

/// `v2/{fw|sw}/response/{request_id}/chunk/{chunk}` (server side).
pub fn ota_chunk_response_topic(kind: OtaKind, request_id: u64, chunk: u64) -> String {
    ota_topic(kind, "response", request_id, chunk)
}

/// Parses a topic id: ASCII digits only (no sign, no spaces), fits in `u64`.
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Matches `topic` against every (family, prefix) of `kind` and parses the id.
fn match_id(topic: &str, kind: IdTopicKind) -> Option<(TopicFamily, u64)> {
    TopicFamily::ALL.iter().find_map(|&family| {
        let rest = topic.strip_prefix(kind.prefix(family))?;
        parse_id(rest).map(|id| (family, id))
    })
}

/// Parses `v2/{fw|sw}/{dir}/{rid}/chunk/{n}`.
fn match_ota(topic: &str, dir: &str) -> Option<(OtaKind, u64, u64)> {
    let rest = topic.strip_prefix("v2/")?;
    let (key, rest) = rest.split_once('/')?;
    let kind = OtaKind::from_key(key)?;
    let rest = rest.strip_prefix(dir)?.strip_prefix('/')?;
    let (rid, chunk) = rest.split_once("/chunk/")?;
    Some((kind, parse_id(rid)?, parse_id(chunk)?))
}

fn family_of_attributes(topic: &str) -> Option<TopicFamily> {
    TopicFamily::ALL
        .into_iter()
        .find(|f| f.attributes_topic() == topic)
}

/// A topic the server publishes to a client, as recognised by [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InboundTopic {
    /// `v1/gateway/attributes`: shared attribute update for a child device.
    GatewayAttributes,
    /// `v1/gateway/attributes/response`: attribute response for a child device.
    GatewayAttributesResponse,
    /// `v1/gateway/rpc`: server RPC to a child device.
    GatewayRpc,
    /// `v1/gateway/disconnect`: the server dropped a child session (MQTT 5 only).
    GatewayDisconnect,
    /// Shared attribute update to the device itself (`v1/devices/me/attributes`, `v2/a[/j|/p]`).
    DeviceAttributes {
        /// Topic family it arrived on.
        family: TopicFamily,
    },
    /// Attribute response to the device's request `id`.
    DeviceAttributesResponse {
        /// Topic family it arrived on.
        family: TopicFamily,
        /// Request id from the topic.
        id: u64,
    },
    /// Server-side RPC request `id` to the device.
    DeviceRpcRequest {
        /// Topic family it arrived on.
        family: TopicFamily,
        /// RPC id from the topic (the payload carries none).
        id: u64,
    },
    /// The server's reply to the device's client-side RPC `id`.
    DeviceRpcResponse {
        /// Topic family it arrived on.
        family: TopicFamily,
        /// RPC id from the topic.
        id: u64,
    },
    /// An OTA chunk (raw bytes; empty payload = past the end).
    OtaChunk {
        /// Firmware or software.
        kind: OtaKind,
        /// Request id chosen by the client.
        request_id: u64,
        /// Chunk number.
        chunk: u64,
    },
    /// An OTA error (payload is a status name as text, e.g. `NOT_FOUND`).
    OtaError {
        /// Which error topic it came on (the server uses `fw` even for software).
        kind: OtaKind,
    },
    /// `/provision/response`.
    ProvisionResponse,
}

impl InboundTopic {
    /// A Device API downlink (attribute update or response, RPC request or response): the
    /// topics whose payload type follows the family and the device profile.
    pub fn is_device_api(&self) -> bool {
        matches!(
            self,
            Self::DeviceAttributes { .. }
                | Self::DeviceAttributesResponse { .. }
                | Self::DeviceRpcRequest { .. }
                | Self::DeviceRpcResponse { .. }
        )
    }

    /// The topic family this topic belongs to: gateway and provisioning topics report `V1`,
    /// OTA topics `V2`.
    pub fn family(&self) -> TopicFamily {
        match *self {
            Self::DeviceAttributes { family }
            | Self::DeviceAttributesResponse { family, .. }
            | Self::DeviceRpcRequest { family, .. }
            | Self::DeviceRpcResponse { family, .. } => family,
            Self::OtaChunk { .. } | Self::OtaError { .. } => TopicFamily::V2,
            _ => TopicFamily::V1,
        }
    }

    /// The topic string (server side: where to publish this).
    pub fn to_topic(&self) -> Cow<'static, str> {
        match *self {
            Self::GatewayAttributes => Cow::Borrowed(GATEWAY_ATTRIBUTES),
            Self::GatewayAttributesResponse => Cow::Borrowed(GATEWAY_ATTRIBUTES_RESPONSE),
            Self::GatewayRpc => Cow::Borrowed(GATEWAY_RPC),
            Self::GatewayDisconnect => Cow::Borrowed(GATEWAY_DISCONNECT),
            Self::DeviceAttributes { family } => Cow::Borrowed(family.attributes_topic()),
            Self::DeviceAttributesResponse { family, id } => {
                Cow::Owned(topic_with_id(IdTopicKind::AttributeResponse, family, id))
            }
            Self::DeviceRpcRequest { family, id } => {
                Cow::Owned(topic_with_id(IdTopicKind::RpcRequest, family, id))
            }
            Self::DeviceRpcResponse { family, id } => {
                Cow::Owned(topic_with_id(IdTopicKind::RpcResponse, family, id))
            }
            Self::OtaChunk {
                kind,
                request_id,
                chunk,
            } => Cow::Owned(ota_chunk_response_topic(kind, request_id, chunk)),
            Self::OtaError { kind } => Cow::Borrowed(kind.error_topic()),
            Self::ProvisionResponse => Cow::Borrowed(PROVISION_RESPONSE),
        }
    }
}

/// Classifies a topic the server publishes to a client. Unknown topics and malformed ids
/// (non-digits, sign, overflow, empty) give `None`.
pub fn classify(topic: &str) -> Option<InboundTopic> {
    use InboundTopic as T;
    let t = match topic {
        GATEWAY_ATTRIBUTES => T::GatewayAttributes,
        GATEWAY_ATTRIBUTES_RESPONSE => T::GatewayAttributesResponse,
        GATEWAY_RPC => T::GatewayRpc,
        GATEWAY_DISCONNECT => T::GatewayDisconnect,
        PROVISION_RESPONSE => T::ProvisionResponse,
        FW_ERROR => T::OtaError {
            kind: OtaKind::Firmware,
        },
        SW_ERROR => T::OtaError {
            kind: OtaKind::Software,
        },
        _ => {
            if let Some(family) = family_of_attributes(topic) {
                T::DeviceAttributes { family }
            } else if let Some((family, id)) = match_id(topic, IdTopicKind::AttributeResponse) {
                T::DeviceAttributesResponse { family, id }
            } else if let Some((family, id)) = match_id(topic, IdTopicKind::RpcRequest) {
                T::DeviceRpcRequest { family, id }
            } else if let Some((family, id)) = match_id(topic, IdTopicKind::RpcResponse) {
                T::DeviceRpcResponse { family, id }
            } else {
                let (kind, request_id, chunk) = match_ota(topic, "response")?;
                T::OtaChunk {
                    kind,
                    request_id,
                    chunk,
                }
            }
        }
    };
    Some(t)
}

/// A topic a client publishes to the server, as recognised by [`classify_uplink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UplinkTopic {
    /// Device telemetry (`v1/devices/me/telemetry`, `v2/t[/j|/p]`).
    DeviceTelemetry {
        /// Topic family.
        family: TopicFamily,
    },
    /// Device client attributes (`v1/devices/me/attributes`, `v2/a[/j|/p]`).
    DeviceAttributes {
        /// Topic family.
        family: TopicFamily,
    },
    /// Device attribute request `id`.
    DeviceAttributesRequest {
        /// Topic family (the response goes to the same family).
        family: TopicFamily,
        /// Request id.
        id: u64,
    },
    /// Client-side RPC request `id`.
    DeviceRpcRequest {
        /// Topic family.
        family: TopicFamily,
        /// Request id.
        id: u64,
    },
    /// Reply to server RPC `id`.
    DeviceRpcResponse {
        /// Topic family.
        family: TopicFamily,
        /// RPC id being answered.
        id: u64,
    },
    /// `v1/devices/me/claim`.
    DeviceClaim,
    /// `/provision/request`.
    ProvisionRequest,
    /// OTA chunk request; payload is the chunk size as decimal text (or empty).
    OtaChunkRequest {
        /// Firmware or software.
        kind: OtaKind,
        /// Request id.
        request_id: u64,
        /// Chunk number.
        chunk: u64,
    },
    /// `v1/gateway/connect`.
    GatewayConnect,
    /// `v1/gateway/disconnect`.
    GatewayDisconnect,
    /// `v1/gateway/telemetry`.
    GatewayTelemetry,
    /// `v1/gateway/attributes`.
    GatewayAttributes,
    /// `v1/gateway/attributes/request`.
    GatewayAttributesRequest,
    /// `v1/gateway/rpc` (reply to a server RPC).
    GatewayRpc,
    /// `v1/gateway/claim`.
    GatewayClaim,
}

impl UplinkTopic {
    /// The topic string (client side: where to publish this).
    pub fn to_topic(&self) -> Cow<'static, str> {
        match *self {
            Self::DeviceTelemetry { family } => Cow::Borrowed(family.telemetry_topic()),
            Self::DeviceAttributes { family } => Cow::Borrowed(family.attributes_topic()),
            Self::DeviceAttributesRequest { family, id } => {
                Cow::Owned(topic_with_id(IdTopicKind::AttributeRequest, family, id))
            }
            Self::DeviceRpcRequest { family, id } => {
                Cow::Owned(topic_with_id(IdTopicKind::RpcRequest, family, id))
            }
            Self::DeviceRpcResponse { family, id } => {
                Cow::Owned(topic_with_id(IdTopicKind::RpcResponse, family, id))
            }
            Self::DeviceClaim => Cow::Borrowed(DEVICE_CLAIM),
            Self::ProvisionRequest => Cow::Borrowed(PROVISION_REQUEST),
            Self::OtaChunkRequest {
                kind,
                request_id,
                chunk,
            } => Cow::Owned(ota_chunk_request_topic(kind, request_id, chunk)),
            Self::GatewayConnect => Cow::Borrowed(GATEWAY_CONNECT),
            Self::GatewayDisconnect => Cow::Borrowed(GATEWAY_DISCONNECT),
            Self::GatewayTelemetry => Cow::Borrowed(GATEWAY_TELEMETRY),
            Self::GatewayAttributes => Cow::Borrowed(GATEWAY_ATTRIBUTES),
            Self::GatewayAttributesRequest => Cow::Borrowed(GATEWAY_ATTRIBUTES_REQUEST),
            Self::GatewayRpc => Cow::Borrowed(GATEWAY_RPC),
            Self::GatewayClaim => Cow::Borrowed(GATEWAY_CLAIM),
        }
    }

    /// True for the `v1/gateway/...` topics (the server drops them silently, without a
    /// PUBACK, when the session's device is not a gateway).
    pub fn is_gateway(&self) -> bool {
        matches!(
            self,
            Self::GatewayConnect
                | Self::GatewayDisconnect
                | Self::GatewayTelemetry
                | Self::GatewayAttributes
                | Self::GatewayAttributesRequest
                | Self::GatewayRpc
                | Self::GatewayClaim
        )
    }
}

/// Classifies a topic a client publishes (server/emulator side). Unknown topics and malformed
/// ids give `None`.
pub fn classify_uplink(topic: &str) -> Option<UplinkTopic> {
    use UplinkTopic as U;
    let t = match topic {
        GATEWAY_CONNECT => U::GatewayConnect,
        GATEWAY_DISCONNECT => U::GatewayDisconnect,
        GATEWAY_TELEMETRY => U::GatewayTelemetry,
        GATEWAY_ATTRIBUTES => U::GatewayAttributes,
        GATEWAY_ATTRIBUTES_REQUEST => U::GatewayAttributesRequest,
        GATEWAY_RPC => U::GatewayRpc,
        GATEWAY_CLAIM => U::GatewayClaim,
        DEVICE_CLAIM => U::DeviceClaim,
        PROVISION_REQUEST => U::ProvisionRequest,
        _ => {
            if let Some(family) = TopicFamily::ALL
                .into_iter()
                .find(|f| f.telemetry_topic() == topic)
            {
                U::DeviceTelemetry { family }
            } else if let Some(family) = family_of_attributes(topic) {
                U::DeviceAttributes { family }
            } else if let Some((family, id)) = match_id(topic, IdTopicKind::AttributeRequest) {
                U::DeviceAttributesRequest { family, id }
            } else if let Some((family, id)) = match_id(topic, IdTopicKind::RpcRequest) {
                U::DeviceRpcRequest { family, id }
            } else if let Some((family, id)) = match_id(topic, IdTopicKind::RpcResponse) {
                U::DeviceRpcResponse { family, id }
            } else {
                let (kind, request_id, chunk) = match_ota(topic, "request")?;
                U::OtaChunkRequest {
                    kind,
                    request_id,
                    chunk,
                }
            }
        }
    };
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_produce_exact_strings() {
        assert_eq!(
            attribute_request_topic(1),
            "v1/devices/me/attributes/request/1"
        );
        assert_eq!(rpc_response_topic(0), "v1/devices/me/rpc/response/0");
        assert_eq!(
            rpc_request_topic(u64::MAX),
            "v1/devices/me/rpc/request/18446744073709551615"
        );
        assert_eq!(
            attribute_response_topic(5),
            "v1/devices/me/attributes/response/5"
        );
        assert_eq!(
            attribute_request_topic_v2(TopicFamily::V2Json, 7),
            "v2/a/req/j/7"
        );
        assert_eq!(
            attribute_response_topic_v2(TopicFamily::V2Proto, 7),
            "v2/a/res/p/7"
        );
        assert_eq!(rpc_request_topic_v2(TopicFamily::V2, 3), "v2/r/req/3");
        assert_eq!(
            rpc_response_topic_v2(TopicFamily::V2Json, 3),
            "v2/r/res/j/3"
        );
        assert_eq!(
            ota_chunk_request_topic(OtaKind::Firmware, 1, 2),
            "v2/fw/request/1/chunk/2"
        );
        assert_eq!(
            ota_chunk_response_topic(OtaKind::Software, 10, 0),
            "v2/sw/response/10/chunk/0"
        );
        let mut buf = String::from("x:");
        write_topic_with_id(&mut buf, IdTopicKind::RpcRequest, TopicFamily::V1, 9);
        assert_eq!(buf, "x:v1/devices/me/rpc/request/9");
    }

    #[test]
    fn subscription_filters() {
        assert_eq!(
            TopicFamily::V2Json.subscription_filter(IdTopicKind::RpcRequest),
            "v2/r/req/j/+"
        );
        assert_eq!(
            TopicFamily::V1.subscription_filter(IdTopicKind::AttributeResponse),
            DEVICE_ATTRIBUTES_RESPONSE_SUB
        );
        assert_eq!(OtaKind::Software.response_filter(), SW_RESPONSE_SUB);
    }

    #[test]
    fn classify_server_topics() {
        use InboundTopic as T;
        use TopicFamily as F;
        let cases = [
            ("v1/gateway/attributes", T::GatewayAttributes),
            (
                "v1/gateway/attributes/response",
                T::GatewayAttributesResponse,
            ),
            ("v1/gateway/rpc", T::GatewayRpc),
            ("v1/gateway/disconnect", T::GatewayDisconnect),
            (
                "v1/devices/me/attributes",
                T::DeviceAttributes { family: F::V1 },
            ),
            ("v2/a", T::DeviceAttributes { family: F::V2 }),
            ("v2/a/j", T::DeviceAttributes { family: F::V2Json }),
            ("v2/a/p", T::DeviceAttributes { family: F::V2Proto }),
            (
                "v1/devices/me/attributes/response/12",
                T::DeviceAttributesResponse {
                    family: F::V1,
                    id: 12,
                },
            ),
            (
                "v2/a/res/3",
                T::DeviceAttributesResponse {
                    family: F::V2,
                    id: 3,
                },
            ),
            (
                "v2/a/res/j/3",
                T::DeviceAttributesResponse {
                    family: F::V2Json,
                    id: 3,
                },
            ),
            (
                "v2/a/res/p/4",
                T::DeviceAttributesResponse {
                    family: F::V2Proto,
                    id: 4,
                },
            ),
            (
                "v1/devices/me/rpc/request/0",
                T::DeviceRpcRequest {
                    family: F::V1,
                    id: 0,
                },
            ),
            (
                "v2/r/req/j/8",
                T::DeviceRpcRequest {
                    family: F::V2Json,
                    id: 8,
                },
            ),
            (
                "v1/devices/me/rpc/response/5",
                T::DeviceRpcResponse {
                    family: F::V1,
                    id: 5,
                },
            ),
            (
                "v2/r/res/p/5",
                T::DeviceRpcResponse {
                    family: F::V2Proto,
                    id: 5,
                },
            ),
            (
                "v2/fw/response/1/chunk/0",
                T::OtaChunk {
                    kind: OtaKind::Firmware,
                    request_id: 1,
                    chunk: 0,
                },
            ),
            (
                "v2/sw/response/2/chunk/33",
                T::OtaChunk {
                    kind: OtaKind::Software,
                    request_id: 2,
                    chunk: 33,
                },
            ),
            (
                "v2/fw/error",
                T::OtaError {
                    kind: OtaKind::Firmware,
                },
            ),
            (
                "v2/sw/error",
                T::OtaError {
                    kind: OtaKind::Software,
                },
            ),
            ("/provision/response", T::ProvisionResponse),
        ];
        for (topic, expected) in cases {
            assert_eq!(classify(topic), Some(expected), "{topic}");
            assert_eq!(expected.to_topic(), topic);
        }
    }

    #[test]
    fn classify_rejects_malformed() {
        for topic in [
            "",
            "v1/devices/me/rpc/request/",
            "v1/devices/me/rpc/request/+",
            "v1/devices/me/rpc/request/abc",
            "v1/devices/me/rpc/request/-1",
            "v1/devices/me/rpc/request/+1",
            "v1/devices/me/rpc/request/ 1",
            "v1/devices/me/rpc/request/1/2",
            "v1/devices/me/rpc/request/18446744073709551616",
            "v2/a/res/x/1",
            "v2/fw/response/1/chunk/",
            "v2/fw/response/a/chunk/1",
            "v2/xw/response/1/chunk/1",
            "v2/fw/response/1/chunk/1/extra",
            "v1/gateway/telemetry",
            "v1/devices/me/telemetry",
            "v1/devices/me/attributes/request/1",
            "v1/gateway/#",
            "v1/gateway/rpc/",
        ] {
            assert_eq!(classify(topic), None, "{topic:?}");
        }
        assert_eq!(
            classify("v1/devices/me/rpc/request/007"),
            Some(InboundTopic::DeviceRpcRequest {
                family: TopicFamily::V1,
                id: 7
            })
        );
    }

    #[test]
    fn classify_client_topics() {
        use TopicFamily as F;
        use UplinkTopic as U;
        let cases = [
            (
                "v1/devices/me/telemetry",
                U::DeviceTelemetry { family: F::V1 },
            ),
            ("v2/t", U::DeviceTelemetry { family: F::V2 }),
            ("v2/t/j", U::DeviceTelemetry { family: F::V2Json }),
            ("v2/t/p", U::DeviceTelemetry { family: F::V2Proto }),
            (
                "v1/devices/me/attributes",
                U::DeviceAttributes { family: F::V1 },
            ),
            ("v2/a/j", U::DeviceAttributes { family: F::V2Json }),
            (
                "v1/devices/me/attributes/request/1",
                U::DeviceAttributesRequest {
                    family: F::V1,
                    id: 1,
                },
            ),
            (
                "v2/a/req/p/2",
                U::DeviceAttributesRequest {
                    family: F::V2Proto,
                    id: 2,
                },
            ),
            (
                "v1/devices/me/rpc/request/3",
                U::DeviceRpcRequest {
                    family: F::V1,
                    id: 3,
                },
            ),
            (
                "v2/r/req/4",
                U::DeviceRpcRequest {
                    family: F::V2,
                    id: 4,
                },
            ),
            (
                "v1/devices/me/rpc/response/5",
                U::DeviceRpcResponse {
                    family: F::V1,
                    id: 5,
                },
            ),
            (
                "v2/r/res/j/6",
                U::DeviceRpcResponse {
                    family: F::V2Json,
                    id: 6,
                },
            ),
            ("v1/devices/me/claim", U::DeviceClaim),
            ("/provision/request", U::ProvisionRequest),
            (
                "v2/fw/request/9/chunk/1",
                U::OtaChunkRequest {
                    kind: OtaKind::Firmware,
                    request_id: 9,
                    chunk: 1,
                },
            ),
            (
                "v2/sw/request/9/chunk/2",
                U::OtaChunkRequest {
                    kind: OtaKind::Software,
                    request_id: 9,
                    chunk: 2,
                },
            ),
            ("v1/gateway/connect", U::GatewayConnect),
            ("v1/gateway/disconnect", U::GatewayDisconnect),
            ("v1/gateway/telemetry", U::GatewayTelemetry),
            ("v1/gateway/attributes", U::GatewayAttributes),
            ("v1/gateway/attributes/request", U::GatewayAttributesRequest),
            ("v1/gateway/rpc", U::GatewayRpc),
            ("v1/gateway/claim", U::GatewayClaim),
        ];
        for (topic, expected) in cases {
            assert_eq!(classify_uplink(topic), Some(expected), "{topic}");
            assert_eq!(expected.to_topic(), topic);
        }
        assert!(UplinkTopic::GatewayClaim.is_gateway());
        assert!(!UplinkTopic::DeviceClaim.is_gateway());
        for topic in [
            "wrong/topic/",
            "v1/gateway/attributes/response",
            "v1/devices/me/attributes/response/1",
            "v2/fw/response/1/chunk/1",
            "v2/fw/error",
            "/provision/response",
            "v1/devices/me/attributes/request/x",
        ] {
            assert_eq!(classify_uplink(topic), None, "{topic:?}");
        }
    }
}
