//! Errors of the client handle and of the transport.

use std::fmt;
use std::io;

use gateway_proto::{CommandError, ConfigError, ConnectRefusal, DisconnectReason, RequestError};

use crate::tls::TlsError;

/// Why a transport could not be opened or broke.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TransportError {
    /// The TCP connection could not be made (name resolution, refused, unreachable, ...).
    Connect {
        /// `host:port` as dialled.
        address: String,
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// The I/O error text.
        message: String,
    },
    /// TLS failed: configuration, PEM files or the handshake.
    Tls(TlsError),
    /// Reading or writing an open transport failed.
    Io {
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// The I/O error text.
        message: String,
    },
}

impl TransportError {
    /// A failed dial of `address`; a TLS error inside the I/O error is kept as
    /// [`TransportError::Tls`].
    pub fn connect(address: impl Into<String>, error: &io::Error) -> Self {
        match crate::tls::handshake_error(error) {
            Some(tls) => Self::Tls(tls),
            None => Self::Connect {
                address: address.into(),
                kind: error.kind(),
                message: error.to_string(),
            },
        }
    }

    /// A failed read or write; a TLS error inside the I/O error is kept as
    /// [`TransportError::Tls`].
    pub fn io(error: &io::Error) -> Self {
        match crate::tls::handshake_error(error) {
            Some(tls) => Self::Tls(tls),
            None => Self::Io {
                kind: error.kind(),
                message: error.to_string(),
            },
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect {
                address, message, ..
            } => write!(f, "cannot connect to {address}: {message}"),
            Self::Tls(e) => e.fmt(f),
            Self::Io { message, .. } => write!(f, "transport failed: {message}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TlsError> for TransportError {
    fn from(e: TlsError) -> Self {
        Self::Tls(e)
    }
}

/// Why a request made through a [`Client`](crate::Client) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection refused the command before sending anything (queue full, too large,
    /// not a gateway, unknown RPC id, ...).
    Refused(CommandError),
    /// The request was accepted and then failed (rejected by the server, timed out,
    /// connection lost after the last attempt, closed).
    Failed(RequestError),
    /// The connection is closed or its driver has stopped.
    Closed,
    /// A batch had more commands than [`Client::MAX_BATCH`](crate::Client::MAX_BATCH);
    /// none of them was queued.
    BatchTooLarge {
        /// Commands in the batch.
        len: usize,
        /// The most a batch may hold.
        max: usize,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "command refused: {e}"),
            Self::Failed(e) => write!(f, "request failed: {e}"),
            Self::Closed => f.write_str("the connection is closed"),
            Self::BatchTooLarge { len, max } => {
                write!(f, "a batch of {len} commands is over the limit of {max}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Refused(e) => Some(e),
            Self::Failed(e) => Some(e),
            Self::Closed | Self::BatchTooLarge { .. } => None,
        }
    }
}

/// Why the first connection could not be made.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection settings are invalid.
    Config(ConfigError),
    /// The TCP or TLS connection failed.
    Transport(TransportError),
    /// The server refused the CONNECT (bad token, not authorized, ...). The code is the
    /// MQTT 3.1.1 return code or the MQTT 5 reason code.
    Refused(ConnectRefusal),
    /// The attempt ended another way (no CONNACK in time, server DISCONNECT, protocol
    /// violation).
    Disconnected(DisconnectReason),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Transport(e) => e.fmt(f),
            Self::Refused(r) => r.fmt(f),
            Self::Disconnected(r) => write!(f, "connection failed: {r}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for ConnectError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<TlsError> for ConnectError {
    fn from(e: TlsError) -> Self {
        Self::Transport(TransportError::Tls(e))
    }
}
