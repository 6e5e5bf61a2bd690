//! What the connection tells the application.

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::codec::EncodeError;
use crate::error::{CommandError, ProtocolError};
use crate::limits::{LimitsReport, RateLimitNotice};
use crate::ota::{OtaEvent, OtaKind};
use crate::payload::{ClientRpcResponse, PayloadError};
use crate::provision::{ProvisionError, ProvisionedCredentials};
use crate::raw::RawDownlink;
use crate::reason::{ConnectRefusal, ReasonCode};

/// Identifies an accepted command. Ids grow monotonically and are never reused, not even
/// across reconnects, so a late answer cannot complete the wrong request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The numeric id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Something the application should know about, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The server accepted the CONNECT. Subscriptions, then queued and retransmitted
    /// publishes, follow.
    Connected {
        /// The CONNACK's session-present flag (ThingsBoard echoes `!clean_session` and keeps
        /// nothing, so it means little there).
        session_present: bool,
    },
    /// A connection attempt or session ended. Unless the connection was closed by the
    /// application, a reconnect is scheduled at `reconnect_at`.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// When the next attempt starts (an [`Output::OpenTransport`](crate::Output::OpenTransport)).
        reconnect_at: Option<Instant>,
    },
    /// A QoS 1 publish was acknowledged with a success code.
    ///
    /// On MQTT 3.1.1 a PUBACK carries no code, and ThingsBoard acknowledges a gateway message
    /// it dropped, because the sub-device could not be created (tenant device limit) or a rate
    /// limit refused it (the connection closes right after), like any other; only MQTT 5
    /// (PUBACK 0x97) tells them apart.
    Delivered(RequestId),
    /// A QoS 0 publish was handed to the transport (QoS 0 has no acknowledgement).
    Sent(RequestId),
    /// A request ended without success.
    Failed {
        /// Which request.
        request: RequestId,
        /// Why.
        error: RequestError,
    },
    /// A PUBLISH from the server. ThingsBoard sends attribute updates and RPCs whether or
    /// not the client subscribed, so these can arrive on any topic.
    Message {
        /// Topic name.
        topic: String,
        /// Payload bytes.
        payload: Bytes,
    },
    /// Something odd the connection survived.
    Warning(Warning),
    /// The answer to an attribute request
    /// ([`GatewayCommand::RequestAttributes`](crate::GatewayCommand::RequestAttributes) or
    /// [`DeviceCommand::RequestAttributes`](crate::DeviceCommand::RequestAttributes)): its
    /// outcome. Keys that do not exist are simply absent.
    AttributeResponse {
        /// Which request.
        request: RequestId,
        /// The sub-device (`None`: the connection's own device).
        device: Option<String>,
        /// Client-scope attributes found.
        client: Map<String, Value>,
        /// Shared attributes found.
        shared: Map<String, Value>,
    },
    /// Shared attributes changed on the server (pushed whether or not anything was asked).
    AttributeUpdate {
        /// The sub-device (`None`: the connection's own device).
        device: Option<String>,
        /// New values.
        values: Map<String, Value>,
        /// Names of deleted attributes.
        deleted: Vec<String>,
    },
    /// A server-side RPC. Reply with
    /// [`Command::device_rpc_reply`](crate::Command::device_rpc_reply) (sub-device) or
    /// [`Command::rpc_reply`](crate::Command::rpc_reply) (own device) if it is two-way;
    /// ThingsBoard ignores replies to one-way RPCs.
    RpcRequest {
        /// The sub-device (`None`: the connection's own device).
        device: Option<String>,
        /// RPC id: per device, starting at 0, so only (device, id) is unique.
        id: u64,
        /// Method name.
        method: String,
        /// Parameters (any JSON).
        params: Value,
    },
    /// The answer to a client-side RPC ([`DeviceCommand::Rpc`](crate::DeviceCommand::Rpc)): its
    /// outcome. ThingsBoard's own timeout arrives as `ClientRpcResponse::Error("timeout")`.
    RpcResponse {
        /// Which request.
        request: RequestId,
        /// The result or the server's error.
        response: ClientRpcResponse,
    },
    /// The server dropped a sub-device's session (`v1/gateway/disconnect`, MQTT 5 only):
    /// its downlinks stop until it is announced again, which happens on the next reconnect
    /// or with the next command for it. Usually followed by the close of the whole
    /// connection.
    SubDeviceDisconnected {
        /// Device name.
        device: String,
        /// Why: 0x96 (150) = message rate too high, 0x80 = unspecified error.
        reason: ReasonCode,
    },
    /// A sub-device this gateway connected was deleted on the server; it is forgotten
    /// (pending RPCs included).
    SubDeviceDeleted {
        /// Device name.
        device: String,
    },
    /// A sub-device this gateway connected was renamed on the server; it is tracked under
    /// the new name, with its pending RPCs and requests.
    SubDeviceRenamed {
        /// Previous name.
        old_name: String,
        /// New name.
        new_name: String,
    },
    /// A downlink on a `/p` (protobuf) topic, or the answer to a raw request (an outcome):
    /// see [`raw`](crate::raw).
    Raw(RawDownlink),
    /// What came of asking ThingsBoard's `getSessionLimits` after a CONNACK (see
    /// [`limits`](crate::limits)).
    SessionLimits(LimitsReport),
    /// The server pushed back on the message rate, and the connection slowed down.
    RateLimited(RateLimitNotice),
    /// The answer of a provisioning connection ([`Config::provisioning`](crate::Config::provisioning)),
    /// or why there is none. The connection closes right after it.
    Provisioned(Result<ProvisionedCredentials, ProvisionError>),
    /// Firmware or software update news ([`Config::ota`](crate::Config::ota)).
    Ota(OtaEvent),
}

impl Event {
    /// The request this event ends, if it is an outcome ([`Event::Delivered`],
    /// [`Event::Sent`], [`Event::Failed`], [`Event::AttributeResponse`],
    /// [`Event::RpcResponse`]). Each accepted command gets exactly one such event, so an
    /// adapter can route it to whoever waits for that request and pass every other event on.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Self::Delivered(id) | Self::Sent(id) => Some(*id),
            Self::Failed { request, .. }
            | Self::AttributeResponse { request, .. }
            | Self::RpcResponse { request, .. } => Some(*request),
            Self::Raw(raw) => raw.request(),
            _ => None,
        }
    }
}

/// Why a connection attempt or session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server refused the CONNECT.
    Refused(ConnectRefusal),
    /// No CONNACK within [`Config::connect_timeout`](crate::Config::connect_timeout) of asking
    /// for a transport.
    ConnectTimeout,
    /// No PINGRESP within [`Config::ping_timeout`](crate::Config::ping_timeout).
    PingTimeout,
    /// The transport reported that it closed (EOF, reset, TLS failure, ...).
    TransportClosed,
    /// The server sent an MQTT 5 DISCONNECT with this reason code.
    ServerDisconnect(ReasonCode),
    /// The server broke the protocol; the client closed the connection.
    Protocol(ProtocolError),
    /// The application called [`Connection::close`](crate::Connection::close).
    Local,
    /// A provisioning connection closed itself: its answer arrived, or it gave up waiting
    /// (see [`Event::Provisioned`]).
    ProvisioningEnded,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(r) => r.fmt(f),
            Self::ConnectTimeout => f.write_str("no CONNACK in time"),
            Self::PingTimeout => f.write_str("no PINGRESP in time"),
            Self::TransportClosed => f.write_str("transport closed"),
            Self::ServerDisconnect(code) => write!(f, "server disconnected: {code}"),
            Self::Protocol(e) => e.fmt(f),
            Self::Local => f.write_str("closed by the application"),
            Self::ProvisioningEnded => f.write_str("provisioning connection finished"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered the publish with an MQTT 5 PUBACK failure code (0x80 and up),
    /// e.g. 0x97 (device limit or rate limit), 0x99 (invalid JSON), 0x90 (unknown topic).
    Rejected(ReasonCode),
    /// Not finished within [`Config::publish_timeout`](crate::Config::publish_timeout). A
    /// timeout is never reported as success; the message may still have arrived.
    Timeout,
    /// The connection dropped after the publish had been sent
    /// [`Config::max_publish_attempts`](crate::Config::max_publish_attempts) times, so it
    /// is not sent again. It may or may not have arrived.
    ConnectionLost,
    /// The application closed the connection before the request finished.
    Closed,
    /// The message could not be encoded. Commands are checked when accepted, so this
    /// signals a bug rather than bad input.
    Encode(EncodeError),
    /// The server's `maxPayloadSize`, learned after the command was accepted, is below the
    /// size of this publish, so it was not sent.
    TooLarge {
        /// Its remaining length.
        size: usize,
        /// The packet limit now in force.
        max: usize,
    },
    /// A command split into several publishes (see [`limits`](crate::limits)) had some of
    /// them delivered and at least one fail: `error` is the first failure.
    Partial {
        /// Parts that succeeded.
        delivered: usize,
        /// Parts in all.
        parts: usize,
        /// The first failure.
        error: Box<RequestError>,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(code) => write!(f, "rejected by the server: {code}"),
            Self::Timeout => f.write_str("timed out"),
            Self::ConnectionLost => f.write_str("connection lost after the last allowed attempt"),
            Self::Closed => f.write_str("connection closed by the application"),
            Self::Encode(e) => write!(f, "could not encode the message: {e}"),
            Self::TooLarge { size, max } => write!(
                f,
                "message of {size} bytes exceeds the server's {max}-byte packet limit"
            ),
            Self::Partial {
                delivered,
                parts,
                error,
            } => write!(
                f,
                "{delivered} of {parts} parts delivered, then a part failed: {error}"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// Something unusual that did not end the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// A packet larger than [`Config::max_incoming_packet`](crate::Config::max_incoming_packet)
    /// was skipped without being buffered.
    OversizePacketSkipped {
        /// Its full size in bytes.
        size: usize,
    },
    /// The server refused one of the configured subscriptions.
    SubscriptionRejected {
        /// The filter.
        filter: String,
        /// The SUBACK code (0x80 on MQTT 3.1.1; 0x8F etc. on MQTT 5).
        code: u8,
    },
    /// A message on a ThingsBoard API topic could not be understood (invalid JSON, wrong
    /// shape, bad id in the topic). It was dropped.
    InvalidMessage {
        /// Topic it arrived on.
        topic: String,
        /// What was wrong.
        error: PayloadError,
    },
    /// A response matched no pending request: unknown id, already answered, timed out, or
    /// addressed to a different device than the request. It was dropped.
    UnmatchedResponse {
        /// Topic it arrived on.
        topic: String,
        /// The id it carried.
        id: u64,
    },
    /// The server refused to re-announce a sub-device (MQTT 5 PUBACK failure code, e.g.
    /// 0x97 when the tenant's device limit is reached). The device is forgotten.
    ReannounceRejected {
        /// Device name.
        device: String,
        /// The PUBACK reason code.
        code: ReasonCode,
    },
    /// [`Config::max_pending_server_rpcs`](crate::Config::max_pending_server_rpcs) was
    /// reached: the oldest pending server RPC was forgotten and can no longer be replied to.
    ServerRpcForgotten {
        /// Its device (`None`: the connection's own device).
        device: Option<String>,
        /// Its id.
        id: u64,
    },
    /// OTA state telemetry the connection reports by itself (`DOWNLOADED`, `VERIFIED`,
    /// `FAILED`, ...) could not be queued (e.g. the send buffer is full); it was dropped.
    OtaReportDropped {
        /// Firmware or software.
        kind: OtaKind,
        /// Why it was not queued.
        error: CommandError,
    },
    /// OTA state telemetry the connection reported by itself was not delivered.
    OtaReportFailed {
        /// Firmware or software.
        kind: OtaKind,
        /// Why.
        error: RequestError,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OversizePacketSkipped { size } => {
                write!(f, "skipped a {size}-byte packet over the size limit")
            }
            Self::SubscriptionRejected { filter, code } => {
                write!(f, "subscription {filter:?} refused with code {code:#04x}")
            }
            Self::InvalidMessage { topic, error } => {
                write!(f, "dropped message on {topic}: {error}")
            }
            Self::UnmatchedResponse { topic, id } => {
                write!(
                    f,
                    "dropped response {id} on {topic}: no such pending request"
                )
            }
            Self::ReannounceRejected { device, code } => {
                write!(f, "re-announce of sub-device {device:?} refused: {code}")
            }
            Self::ServerRpcForgotten {
                device: Some(d),
                id,
            } => {
                write!(
                    f,
                    "forgot pending RPC {id} of sub-device {d:?} (table full)"
                )
            }
            Self::ServerRpcForgotten { device: None, id } => {
                write!(f, "forgot pending RPC {id} (table full)")
            }
            Self::OtaReportDropped { kind, error } => {
                write!(f, "{kind:?} state report dropped: {error}")
            }
            Self::OtaReportFailed { kind, error } => {
                write!(f, "{kind:?} state report failed: {error}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_events_name_their_request_and_others_do_not() {
        let r = RequestId(7);
        for e in [
            Event::Delivered(r),
            Event::Sent(r),
            Event::Failed {
                request: r,
                error: RequestError::Timeout,
            },
            Event::AttributeResponse {
                request: r,
                device: None,
                client: Map::new(),
                shared: Map::new(),
            },
            Event::RpcResponse {
                request: r,
                response: ClientRpcResponse::Ok(Value::Null),
            },
        ] {
            assert_eq!(e.request(), Some(r), "{e:?}");
        }
        for e in [
            Event::Connected {
                session_present: false,
            },
            Event::RpcRequest {
                device: None,
                id: 7,
                method: "m".into(),
                params: Value::Null,
            },
            Event::SubDeviceDeleted { device: "d".into() },
        ] {
            assert_eq!(e.request(), None, "{e:?}");
        }
    }
}
