//! Errors of the control API.

use std::fmt;

/// Why a control-API call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// No device with this name exists.
    UnknownDevice(String),
    /// A device with this name already exists.
    DeviceExists(String),
    /// The credentials are already used by another device.
    CredentialsInUse,
    /// The tenant's device limit (or the emulator's own bound) is reached.
    DeviceLimitReached,
    /// Too many server-side RPCs are already waiting for this device.
    TooManyPendingRpcs,
    /// Too many sessions are open.
    TooManySessions,
    /// A rate-limit string is not `capacity:seconds[,capacity:seconds...]`.
    InvalidRateLimit(String),
    /// No session with this id exists.
    UnknownSession(u64),
    /// The emulator was shut down.
    Shutdown,
    /// The RPC outcome did not arrive (the emulator stopped before answering).
    NoOutcome,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownDevice(name) => write!(f, "unknown device {name:?}"),
            Self::DeviceExists(name) => write!(f, "device {name:?} already exists"),
            Self::CredentialsInUse => f.write_str("credentials already used by another device"),
            Self::DeviceLimitReached => f.write_str("maximum number of devices reached"),
            Self::TooManyPendingRpcs => f.write_str("too many pending RPCs for this device"),
            Self::TooManySessions => f.write_str("too many sessions"),
            Self::InvalidRateLimit(s) => write!(f, "invalid rate limit {s:?}"),
            Self::UnknownSession(id) => write!(f, "unknown session {id}"),
            Self::Shutdown => f.write_str("the emulator was shut down"),
            Self::NoOutcome => f.write_str("the RPC outcome never arrived"),
        }
    }
}

impl std::error::Error for ControlError {}
