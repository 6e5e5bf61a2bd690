//! What the connection tells the application.

use std::fmt;
use std::time::Instant;

use bytes::Bytes;

use crate::codec::EncodeError;
use crate::error::ProtocolError;
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(code) => write!(f, "rejected by the server: {code}"),
            Self::Timeout => f.write_str("timed out"),
            Self::ConnectionLost => f.write_str("connection lost after the last allowed attempt"),
            Self::Closed => f.write_str("connection closed by the application"),
            Self::Encode(e) => write!(f, "could not encode the message: {e}"),
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
}
