//! Errors returned synchronously by the core: configuration and command validation, and the
//! protocol violations that end a session.

use std::fmt;
use std::time::Duration;

use crate::codec::{DecodeError, EncodeError};
use crate::ota::OtaCommandError;
use crate::payload::PayloadError;

/// A [`Config`](crate::Config) value the protocol or ThingsBoard cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Client id or username is `provision`: ThingsBoard would open a provisioning-only
    /// session.
    ReservedIdentity,
    /// An access token must not be empty.
    EmptyAccessToken,
    /// A string field is longer than MQTT's 65,535-byte limit.
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// Keep-alive does not fit MQTT's 16-bit seconds field.
    KeepAliveTooLong(Duration),
    /// Keep-alive travels in whole seconds.
    KeepAliveNotWholeSeconds(Duration),
    /// `max_inflight` must be at least 1.
    ZeroInflight,
    /// `max_publish_attempts` must be at least 1.
    ZeroAttempts,
    /// A packet-size limit is outside 128..=268,435,455.
    PacketLimitOutOfRange {
        /// Which limit.
        name: &'static str,
        /// The value given.
        value: usize,
    },
    /// `jitter_percent` is above 100.
    JitterOutOfRange(u8),
    /// A subscription filter breaks MQTT's topic-filter rules.
    InvalidFilter(String),
    /// The SUBSCRIBE for all configured filters would exceed `max_outgoing_packet`.
    SubscriptionsTooLarge(usize),
    /// A duration that must be positive is zero.
    ZeroDuration(&'static str),
    /// `limits.rate_share_percent` is outside 1..=100.
    ShareOutOfRange(u8),
    /// A provisioning request that cannot work (empty key or secret, too large).
    InvalidProvisionRequest(&'static str),
    /// [`OtaConfig::chunk_size`](crate::OtaConfig::chunk_size) is zero, above ThingsBoard's
    /// payload limit, or does not fit `max_incoming_packet` with its topic.
    OtaChunkSize {
        /// The value given.
        value: usize,
        /// The largest allowed with this configuration.
        max: usize,
    },
    /// [`Config::protobuf_profile`](crate::Config::protobuf_profile) with something it does
    /// not support.
    ProtobufProfile(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedIdentity => f.write_str(
                "client id or username \"provision\" is reserved by ThingsBoard for provisioning sessions",
            ),
            Self::EmptyAccessToken => f.write_str("access token is empty"),
            Self::FieldTooLong { field, len } => {
                write!(f, "{field} is {len} bytes long; MQTT allows at most 65535")
            }
            Self::KeepAliveTooLong(d) => write!(f, "keep-alive {d:?} exceeds 65535 s"),
            Self::KeepAliveNotWholeSeconds(d) => {
                write!(f, "keep-alive {d:?} is not a whole number of seconds")
            }
            Self::ZeroInflight => f.write_str("max_inflight must be at least 1"),
            Self::ZeroAttempts => {
                f.write_str("max_publish_attempts and ota.chunk_attempts must be at least 1")
            }
            Self::PacketLimitOutOfRange { name, value } => {
                write!(f, "{name} = {value} is outside 128..=268435455")
            }
            Self::JitterOutOfRange(p) => write!(f, "jitter_percent {p} is above 100"),
            Self::InvalidFilter(filter) => write!(f, "invalid topic filter {filter:?}"),
            Self::SubscriptionsTooLarge(len) => write!(
                f,
                "the SUBSCRIBE for all configured filters needs {len} bytes, above max_outgoing_packet"
            ),
            Self::ZeroDuration(name) => write!(f, "{name} must be longer than zero"),
            Self::ShareOutOfRange(p) => {
                write!(f, "limits.rate_share_percent {p} is outside 1..=100")
            }
            Self::InvalidProvisionRequest(why) => write!(f, "invalid provisioning request: {why}"),
            Self::OtaChunkSize { value, max } => {
                write!(f, "ota.chunk_size {value} is outside 1..={max}")
            }
            Self::ProtobufProfile(why) => write!(f, "protobuf device profile: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a command was refused. Nothing was queued or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// Accepting it would pass [`Config::max_buffered_bytes`](crate::Config::max_buffered_bytes).
    /// Retry after some outcomes have arrived.
    QueueFull {
        /// Bytes the command would add.
        needed: usize,
        /// Bytes still free.
        available: usize,
    },
    /// The encoded PUBLISH would exceed [`Config::max_outgoing_packet`](crate::Config::max_outgoing_packet).
    TooLarge {
        /// Its remaining length.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The topic is empty, contains `+`, `#` or NUL, or is longer than 65,535 bytes.
    InvalidTopic(String),
    /// The connection was closed with [`Connection::close`](crate::Connection::close).
    Closed,
    /// A Gateway API command on a connection configured as [`Role::Device`](crate::Role::Device).
    NotAGateway,
    /// A sub-device name is empty (ThingsBoard rejects it and closes the session).
    EmptyDeviceName,
    /// The command would track one more sub-device than
    /// [`Config::max_sub_devices`](crate::Config::max_sub_devices) allows.
    TooManyDevices {
        /// The bound.
        max: usize,
    },
    /// [`Config::max_pending_requests`](crate::Config::max_pending_requests) attribute
    /// requests and client RPCs already await a response.
    TooManyRequests {
        /// The bound.
        max: usize,
    },
    /// A reply to a server-side RPC that was not received, was already answered, or was
    /// forgotten (see [`Config::max_pending_server_rpcs`](crate::Config::max_pending_server_rpcs)).
    UnknownRpc {
        /// The sub-device it was addressed to (`None`: the connection's own device).
        device: Option<String>,
        /// The RPC id.
        id: u64,
    },
    /// The payload cannot be built (e.g. an attribute key with a comma in a device
    /// attribute request).
    Payload(PayloadError),
    /// One value of a telemetry or attributes command is too large for the packet limit
    /// even alone in a message, so the command cannot be split to fit.
    ValueTooLarge {
        /// Its sub-device (`None`: the connection's own device).
        device: Option<String>,
        /// Its key (`None`: an entry without values).
        key: Option<String>,
        /// Remaining length of the smallest message carrying it.
        size: usize,
        /// The packet limit.
        max: usize,
    },
    /// A typed (JSON) Device API command on a connection using the `/p` (protobuf) topics:
    /// send the encoded payload with a [`DeviceCommand::Raw`](crate::DeviceCommand::Raw)
    /// command instead.
    JsonOnProtobufTopic,
    /// A provisioning connection takes no commands: it sends its one request by itself.
    ProvisioningOnly,
    /// An OTA command that cannot be carried out now.
    Ota(OtaCommandError),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull { needed, available } => write!(
                f,
                "send buffer full: command needs {needed} bytes, {available} free"
            ),
            Self::TooLarge { size, max } => {
                write!(
                    f,
                    "message of {size} bytes exceeds the {max}-byte packet limit"
                )
            }
            Self::InvalidTopic(topic) => write!(f, "invalid topic {topic:?}"),
            Self::Closed => f.write_str("connection is closed"),
            Self::NotAGateway => f.write_str("Gateway API command on a device connection"),
            Self::EmptyDeviceName => f.write_str("empty sub-device name"),
            Self::TooManyDevices { max } => write!(f, "more than {max} sub-devices"),
            Self::TooManyRequests { max } => {
                write!(f, "{max} requests already await a response")
            }
            Self::UnknownRpc {
                device: Some(device),
                id,
            } => write!(f, "no pending RPC {id} for sub-device {device:?}"),
            Self::UnknownRpc { device: None, id } => write!(f, "no pending RPC {id}"),
            Self::Payload(e) => write!(f, "cannot build the payload: {e}"),
            Self::ValueTooLarge {
                device,
                key,
                size,
                max,
            } => {
                f.write_str("value")?;
                if let Some(key) = key {
                    write!(f, " {key:?}")?;
                }
                if let Some(device) = device {
                    write!(f, " of sub-device {device:?}")?;
                }
                write!(
                    f,
                    " needs a {size}-byte message alone, above the {max}-byte packet limit"
                )
            }
            Self::JsonOnProtobufTopic => {
                f.write_str("JSON command on the protobuf (/p) topics: send encoded bytes")
            }
            Self::ProvisioningOnly => f.write_str("a provisioning connection takes no commands"),
            Self::Ota(e) => write!(f, "OTA command refused: {e}"),
        }
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Payload(e) => Some(e),
            Self::Ota(e) => Some(e),
            _ => None,
        }
    }
}

/// A protocol violation by the server. It ends the session (the client reconnects).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A packet could not be decoded.
    Malformed(DecodeError),
    /// A packet a server must not send, or one out of order (e.g. a second CONNACK).
    UnexpectedPacket(&'static str),
    /// The client could not encode a packet it had to send (a bug or an impossible
    /// configuration).
    Encode(EncodeError),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed packet from server: {e}"),
            Self::UnexpectedPacket(what) => write!(f, "unexpected packet from server: {what}"),
            Self::Encode(e) => write!(f, "could not encode a packet: {e}"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Malformed(e) => Some(e),
            Self::Encode(e) => Some(e),
            Self::UnexpectedPacket(_) => None,
        }
    }
}
