//! Device API payloads the application encodes itself: protobuf on the `/p` topics.
//!
//! ThingsBoard's short topics come in three families besides v1 (see
//! [`Config::device_topics`](crate::Config::device_topics)): `v2/...` (payload type from the
//! device profile), `v2/.../j` (JSON) and `v2/.../p` (protobuf). Protobuf payloads follow the
//! schemas of the device's profile (telemetry and attributes) or ThingsBoard's
//! `transport.proto` (attribute requests, RPCs), which this crate does not know, so on `/p`
//! the API takes and yields bytes: [`RawUplink`] commands, [`RawDownlink`] events. Encode and
//! decode them with any protobuf library (prost, protobuf, quick-protobuf...); the core adds
//! no dependency for it.
//!
//! Raw commands work on every family. A device whose profile's payload type is PROTOBUF
//! (set [`Config::protobuf_profile`](crate::Config::protobuf_profile)) takes protobuf on the
//! v1 and plain v2 topics too, and its `getSessionLimits` request must be protobuf as well.
//! Typed JSON commands are refused wherever ThingsBoard reads protobuf (`/p`, and v1/v2 with
//! such a profile) with
//! [`CommandError::JsonOnProtobufTopic`](crate::CommandError::JsonOnProtobufTopic).
//! Downlinks there become [`Event::Raw`](crate::Event::Raw) when they arrive on the family
//! the connection uses; otherwise they are passed on as
//! [`Event::Message`](crate::Event::Message). An answer to a raw request is raw whatever its
//! topic. `cargo run -p gateway-tokio --example protobuf_device` is a complete device with
//! prost against the emulator, which serves ThingsBoard's protobuf Device API.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use gateway_proto::raw::RawDownlink;
//! use gateway_proto::topic::TopicFamily;
//! use gateway_proto::{Command, Config, Connection, Credentials, Event, Role};
//!
//! let now = Instant::now();
//! let mut config = Config::new(Credentials::AccessToken("DEVICE_TOKEN".into()));
//! config.role = Role::Device;
//! config.device_topics = TopicFamily::V2Proto; // v2/t/p, v2/a/p, v2/r/req/p/+ ...
//! config.protobuf_profile = true; // the device profile's payload type is PROTOBUF
//! let mut conn = Connection::new(config, now)?;
//!
//! // The bytes of a profile message `{ temperature: 150 }` (field 1, varint), as any protobuf
//! // encoder writes them, e.g. prost's `Message::encode_to_vec`. ThingsBoard counts data
//! // points against its rate limits; the core cannot read protobuf, so it is told: one.
//! let payload = Bytes::from_static(&[0x08, 0x96, 0x01]);
//! conn.command(now, Command::telemetry_bytes(payload, 1))?; // published on v2/t/p
//!
//! // Downlinks arrive as bytes to decode with the same schemas.
//! fn on_event(conn: &mut Connection, now: Instant, event: Event) {
//!     match event {
//!         Event::Raw(RawDownlink::AttributeUpdate(bytes)) => println!("update {bytes:02x?}"),
//!         Event::Raw(RawDownlink::RpcRequest { id, payload }) => {
//!             // Decode the request, act, encode the reply.
//!             let _ = (payload, conn.command(now, Command::rpc_reply_bytes(id, Bytes::new())));
//!         }
//!         _ => {}
//!     }
//! }
//! # let _ = on_event;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytes::Bytes;

use crate::command::{Command, DeviceCommand};
use crate::event::RequestId;

/// A Device API message whose payload the application encoded, published on the
/// connection's topic family ([`Config::device_topics`](crate::Config::device_topics)).
/// Raw messages are never split: one too large for the packet limit is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawUplink {
    /// Telemetry (`v2/t/p`, `v2/t`, `v1/devices/me/telemetry` ...).
    Telemetry {
        /// The encoded payload.
        payload: Bytes,
        /// Key-value pairs it carries: ThingsBoard charges them against its data-point
        /// rate limit, and the core paces by it.
        data_points: u64,
    },
    /// Client attributes (`v2/a/p` ...).
    Attributes {
        /// The encoded payload.
        payload: Bytes,
        /// Key-value pairs it carries (paced like telemetry data points).
        data_points: u64,
    },
    /// An attribute request (`v2/a/req/p/{id}` ...); the connection picks the id and the
    /// answer arrives as [`RawDownlink::AttributeResponse`].
    RequestAttributes(Bytes),
    /// A client-side RPC (`v2/r/req/p/{id}` ...); the answer arrives as
    /// [`RawDownlink::RpcResponse`].
    Rpc(Bytes),
    /// The reply to server-side RPC `id` (received as [`RawDownlink::RpcRequest`] or
    /// [`Event::RpcRequest`](crate::Event::RpcRequest)), on the family it came on.
    RpcReply {
        /// RPC id, as in the request.
        id: u64,
        /// The encoded reply.
        payload: Bytes,
    },
}

/// A Device API downlink on a `/p` topic, or the answer to a [`RawUplink`] request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawDownlink {
    /// Shared attributes changed (`v2/a/p`).
    AttributeUpdate(Bytes),
    /// A server-side RPC (`v2/r/req/p/{id}`). Reply with [`Command::rpc_reply_bytes`].
    RpcRequest {
        /// RPC id from the topic.
        id: u64,
        /// The encoded request.
        payload: Bytes,
    },
    /// The answer to [`RawUplink::RequestAttributes`]: that request's outcome.
    AttributeResponse {
        /// Which request.
        request: RequestId,
        /// The encoded response.
        payload: Bytes,
    },
    /// The answer to [`RawUplink::Rpc`]: that request's outcome.
    RpcResponse {
        /// Which request.
        request: RequestId,
        /// The encoded response.
        payload: Bytes,
    },
}

impl RawDownlink {
    /// The request this downlink answers, if it is an outcome.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Self::AttributeResponse { request, .. } | Self::RpcResponse { request, .. } => {
                Some(*request)
            }
            Self::AttributeUpdate(_) | Self::RpcRequest { .. } => None,
        }
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Self::AttributeUpdate(payload)
            | Self::RpcRequest { payload, .. }
            | Self::AttributeResponse { payload, .. }
            | Self::RpcResponse { payload, .. } => payload,
        }
    }
}

impl Command {
    /// The connection's own telemetry, encoded by the application (e.g. protobuf on
    /// `v2/t/p`), carrying `data_points` key-value pairs.
    pub fn telemetry_bytes(payload: impl Into<Bytes>, data_points: u64) -> Self {
        Self::Device(DeviceCommand::Raw(RawUplink::Telemetry {
            payload: payload.into(),
            data_points,
        }))
    }

    /// The connection's own client attributes, encoded by the application.
    pub fn attributes_bytes(payload: impl Into<Bytes>, data_points: u64) -> Self {
        Self::Device(DeviceCommand::Raw(RawUplink::Attributes {
            payload: payload.into(),
            data_points,
        }))
    }

    /// An attribute request encoded by the application.
    pub fn request_attributes_bytes(payload: impl Into<Bytes>) -> Self {
        Self::Device(DeviceCommand::Raw(RawUplink::RequestAttributes(
            payload.into(),
        )))
    }

    /// A client-side RPC encoded by the application.
    pub fn rpc_bytes(payload: impl Into<Bytes>) -> Self {
        Self::Device(DeviceCommand::Raw(RawUplink::Rpc(payload.into())))
    }

    /// The reply to server-side RPC `id`, encoded by the application.
    pub fn rpc_reply_bytes(id: u64, payload: impl Into<Bytes>) -> Self {
        Self::Device(DeviceCommand::Raw(RawUplink::RpcReply {
            id,
            payload: payload.into(),
        }))
    }
}
