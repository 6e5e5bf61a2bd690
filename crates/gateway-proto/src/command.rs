//! What the application asks the connection to do.
//!
//! Commands are in ThingsBoard's own vocabulary: connect a sub-device, send telemetry,
//! request attributes, reply to an RPC... Each accepted command gets a
//! [`RequestId`](crate::RequestId) and ends in exactly one outcome event (see
//! [`Command`]'s variants for which).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::codec::QoS;
use crate::ota::{OtaCommand, OtaKind, OtaVersion};
use crate::payload::{Claim, GatewayTelemetry, TelemetryEntry};
use crate::raw::RawUplink;

/// An application request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// Publish `payload` on `topic`: the escape hatch for anything the typed commands do not
    /// cover.
    ///
    /// QoS 1 ends in [`Event::Delivered`](crate::Event::Delivered) when ThingsBoard
    /// acknowledged it (meaning: accepted by its transport queue), or
    /// [`Event::Failed`](crate::Event::Failed). QoS 0 ends in
    /// [`Event::Sent`](crate::Event::Sent) once its bytes were handed to the transport, or
    /// `Failed` if it timed out or the connection was closed before that.
    Publish {
        /// Topic name, e.g. `v1/devices/me/telemetry`.
        topic: String,
        /// Payload bytes (ThingsBoard expects JSON unless the device profile says protobuf).
        payload: Bytes,
        /// QoS 0 or 1. ThingsBoard acknowledges QoS 2 with a PUBACK, so it is not offered.
        qos: QoS,
    },
    /// A Gateway API request on behalf of a sub-device.
    Gateway(GatewayCommand),
    /// A Device API request for the connection's own device.
    Device(DeviceCommand),
    /// A firmware or software update step (see [`crate::ota`]): each publishes the OTA
    /// state telemetry and ends like a QoS 1 publish.
    Ota(OtaCommand),
}

/// Scope of a gateway attribute request: ThingsBoard answers one scope per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeScope {
    /// Client-side attributes (the ones the device or gateway reports).
    Client,
    /// Shared attributes (set on the server).
    Shared,
}

/// Gateway API requests (`v1/gateway/*`). Refused with
/// [`CommandError::NotAGateway`](crate::CommandError::NotAGateway) on a device connection.
///
/// Every variant that names a device registers it with the connection (bounded by
/// [`Config::max_sub_devices`](crate::Config::max_sub_devices)) so it is re-announced after
/// every reconnect, except [`GatewayCommand::Disconnect`], which forgets it.
///
/// Data for a sub-device not tracked yet is an implicit connect on the server. At QoS 1, a
/// refusal of that message (an MQTT 5 PUBACK failure code, e.g. 0x97 at the tenant's device
/// limit) forgets the device again, as for a refused [`GatewayCommand::Connect`]; at QoS 0,
/// which nothing acknowledges, the connection first announces the device itself with a QoS 1
/// `v1/gateway/connect`, and a refusal of that announce forgets it
/// ([`Warning::ReannounceRejected`](crate::Warning::ReannounceRejected)).
///
/// Outcomes: [`GatewayCommand::RequestAttributes`] ends in
/// [`Event::AttributeResponse`](crate::Event::AttributeResponse) or `Failed`; every other
/// variant ends like a [`Command::Publish`] at QoS 1 (`Delivered` / `Failed`), except
/// telemetry and attributes, which use [`Config::telemetry_qos`](crate::Config::telemetry_qos).
///
/// Telemetry and attributes larger than the packet limit, or with more data points than the
/// sub-devices' data-point limit, are split into several publishes (see
/// [`LimitsConfig::split`](crate::LimitsConfig::split)); the command keeps its one outcome,
/// reported when its last part finishes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GatewayCommand {
    /// `v1/gateway/connect`: announce a sub-device so that ThingsBoard routes its RPCs and
    /// attribute updates to this gateway. `device_type` picks the device profile when the
    /// device is created (an existing device keeps its own). An MQTT 5 server answers
    /// PUBACK 0x97 when the tenant's device limit is reached; the session stays up, the
    /// command fails with that code, and the device is forgotten.
    Connect {
        /// Device name.
        device: String,
        /// Device profile name; ThingsBoard uses `default` when absent.
        device_type: Option<String>,
    },
    /// `v1/gateway/disconnect`: stop routing the sub-device's downlinks to this gateway, and
    /// forget it (no re-announce after reconnect).
    Disconnect {
        /// Device name.
        device: String,
    },
    /// `v1/gateway/telemetry` for one device: `{"Dev":[{"ts":..,"values":{..}},..]}`, or the
    /// server-time form `{"Dev":[{..}]}` for entries without `ts`.
    Telemetry {
        /// Device name.
        device: String,
        /// One or more entries.
        entries: Vec<TelemetryEntry>,
    },
    /// Telemetry of several devices in one message. Opt-in: ThingsBoard acknowledges the
    /// message once for all devices, and one device over its rate limit closes the whole
    /// gateway session.
    TelemetryBatch(GatewayTelemetry),
    /// `v1/gateway/attributes`: client attributes `{"Dev":{..}}`.
    Attributes {
        /// Device name.
        device: String,
        /// Attribute values.
        values: Map<String, Value>,
    },
    /// `v1/gateway/claim`: `{"Dev":{"secretKey":..,"durationMs":..}}`.
    Claim {
        /// Device name.
        device: String,
        /// Claim parameters (both optional).
        claim: Claim,
    },
    /// `v1/gateway/attributes/request`: `{"id":..,"device":..,"client":bool,"keys":[..]}`.
    /// The connection picks the id, correlates the response by (device, id) and fails the
    /// request after [`Config::attribute_request_timeout`](crate::Config::attribute_request_timeout).
    RequestAttributes {
        /// Device name.
        device: String,
        /// Client or shared scope.
        scope: AttributeScope,
        /// Keys to fetch; at least one (ThingsBoard requires `key` or `keys`). Sent as
        /// `"key"` when there is exactly one.
        keys: Vec<String>,
    },
    /// `v1/gateway/rpc`: `{"device":..,"id":..,"data":..}`, the reply to a server-side RPC
    /// received as [`Event::RpcRequest`](crate::Event::RpcRequest). A reply to an RPC that
    /// was never received (or already answered) is refused with
    /// [`CommandError::UnknownRpc`](crate::CommandError::UnknownRpc).
    RpcReply {
        /// Device name, as in the request.
        device: String,
        /// RPC id, as in the request.
        id: u64,
        /// The response body (any JSON); ThingsBoard hands it to the RPC caller verbatim.
        data: Value,
    },
}

/// Device API requests (`v1/devices/me/*`, or the short `v2/*` topics of
/// [`Config::device_topics`](crate::Config::device_topics)), for the connection's own device
/// (a gateway is a device too).
///
/// Outcomes: [`DeviceCommand::RequestAttributes`] ends in
/// [`Event::AttributeResponse`](crate::Event::AttributeResponse) or `Failed`;
/// [`DeviceCommand::Rpc`] in [`Event::RpcResponse`](crate::Event::RpcResponse) or `Failed`;
/// the others like a [`Command::Publish`].
///
/// Telemetry and attributes larger than the packet limit, or with more data points than the
/// server's data-point limit, are split into several publishes (see
/// [`LimitsConfig::split`](crate::LimitsConfig::split)); the command still ends in one outcome.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DeviceCommand {
    /// `v1/devices/me/telemetry`: one entry is sent as an object (`{"ts":..,"values":..}` or
    /// plain values), several as an array.
    Telemetry(Vec<TelemetryEntry>),
    /// `v1/devices/me/attributes`: client attributes.
    Attributes(Map<String, Value>),
    /// `v1/devices/me/claim`.
    Claim(Claim),
    /// `v1/devices/me/attributes/request/{id}` with `{"clientKeys":"a,b","sharedKeys":"c"}`;
    /// both lists empty asks for every attribute. Keys must be non-empty and comma-free.
    RequestAttributes {
        /// Client-scope keys.
        client_keys: Vec<String>,
        /// Shared-scope keys.
        shared_keys: Vec<String>,
    },
    /// `v1/devices/me/rpc/response/{id}`: the reply to a server-side RPC received as
    /// [`Event::RpcRequest`](crate::Event::RpcRequest) with `device: None`.
    RpcReply {
        /// RPC id, as in the request.
        id: u64,
        /// The response body (any JSON).
        data: Value,
    },
    /// `v1/devices/me/rpc/request/{id}` with `{"method":..,"params":..}`: a client-side RPC
    /// to the server's rule engine. Waits up to [`Config::rpc_timeout`](crate::Config::rpc_timeout).
    Rpc {
        /// Method name.
        method: String,
        /// Parameters (any JSON).
        params: Value,
    },
    /// A message whose payload the application encoded (protobuf on the `/p` topics): see
    /// [`raw`](crate::raw). Ends like the typed command of the same kind.
    Raw(RawUplink),
}

impl Command {
    /// A QoS 1 publish.
    pub fn publish(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
        }
    }

    /// Announce a sub-device (`v1/gateway/connect`), with an optional device profile.
    pub fn connect_device(device: impl Into<String>, device_type: Option<&str>) -> Self {
        Self::Gateway(GatewayCommand::Connect {
            device: device.into(),
            device_type: device_type.map(str::to_owned),
        })
    }

    /// Disconnect a sub-device (`v1/gateway/disconnect`).
    pub fn disconnect_device(device: impl Into<String>) -> Self {
        Self::Gateway(GatewayCommand::Disconnect {
            device: device.into(),
        })
    }

    /// Sub-device telemetry with server time (`{"Dev":[{..values..}]}`).
    pub fn device_telemetry(device: impl Into<String>, values: Map<String, Value>) -> Self {
        Self::Gateway(GatewayCommand::Telemetry {
            device: device.into(),
            entries: vec![TelemetryEntry::now(values)],
        })
    }

    /// Sub-device client attributes.
    pub fn device_attributes(device: impl Into<String>, values: Map<String, Value>) -> Self {
        Self::Gateway(GatewayCommand::Attributes {
            device: device.into(),
            values,
        })
    }

    /// Request sub-device attributes of one scope.
    pub fn request_device_attributes<I, K>(
        device: impl Into<String>,
        scope: AttributeScope,
        keys: I,
    ) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        Self::Gateway(GatewayCommand::RequestAttributes {
            device: device.into(),
            scope,
            keys: keys.into_iter().map(Into::into).collect(),
        })
    }

    /// Reply to a server-side RPC addressed to a sub-device.
    pub fn device_rpc_reply(device: impl Into<String>, id: u64, data: Value) -> Self {
        Self::Gateway(GatewayCommand::RpcReply {
            device: device.into(),
            id,
            data,
        })
    }

    /// The connection's own telemetry with server time.
    pub fn telemetry(values: Map<String, Value>) -> Self {
        Self::Device(DeviceCommand::Telemetry(vec![TelemetryEntry::now(values)]))
    }

    /// The connection's own client attributes.
    pub fn attributes(values: Map<String, Value>) -> Self {
        Self::Device(DeviceCommand::Attributes(values))
    }

    /// Request the connection's own attributes.
    pub fn request_attributes<I, J, K>(client_keys: I, shared_keys: J) -> Self
    where
        I: IntoIterator<Item = K>,
        J: IntoIterator<Item = K>,
        K: Into<String>,
    {
        Self::Device(DeviceCommand::RequestAttributes {
            client_keys: client_keys.into_iter().map(Into::into).collect(),
            shared_keys: shared_keys.into_iter().map(Into::into).collect(),
        })
    }

    /// Reply to a server-side RPC addressed to the connection's own device.
    pub fn rpc_reply(id: u64, data: Value) -> Self {
        Self::Device(DeviceCommand::RpcReply { id, data })
    }

    /// Download the assigned firmware or software ([`OtaCommand::Download`]).
    pub fn ota_download(kind: OtaKind) -> Self {
        Self::Ota(OtaCommand::Download { kind })
    }

    /// Report that the update is being installed ([`OtaCommand::Updating`]).
    pub fn ota_updating(kind: OtaKind) -> Self {
        Self::Ota(OtaCommand::Updating { kind })
    }

    /// Report that this version is installed now ([`OtaCommand::Updated`]).
    pub fn ota_updated(
        kind: OtaKind,
        title: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        Self::Ota(OtaCommand::Updated {
            kind,
            version: OtaVersion::new(title, version),
        })
    }

    /// Report that the update failed ([`OtaCommand::Failed`]).
    pub fn ota_failed(kind: OtaKind, error: impl Into<String>) -> Self {
        Self::Ota(OtaCommand::Failed {
            kind,
            error: error.into(),
        })
    }

    /// A client-side RPC.
    pub fn rpc(method: impl Into<String>, params: Value) -> Self {
        Self::Device(DeviceCommand::Rpc {
            method: method.into(),
            params,
        })
    }
}
