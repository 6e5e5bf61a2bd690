//! Errors of the control API and of starting the runner.

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
    /// An X.509 chain profile's certificate PEM holds no certificate.
    InvalidCertificate,
    /// An X.509 chain profile's `certificateRegExPattern` does not compile (the message).
    InvalidRegex(String),
    /// Another device profile already has this certificate ("Device profile with such
    /// certificate already exists!"); the name of that profile.
    ProfileCertificateInUse(String),
    /// A device profile topic filter is empty or does not convert to a regular expression
    /// (the message).
    InvalidTopicFilter(String),
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
            Self::InvalidCertificate => f.write_str("no certificate in the PEM"),
            Self::InvalidRegex(e) => write!(f, "invalid certificate regex: {e}"),
            Self::ProfileCertificateInUse(profile) => {
                write!(f, "device profile {profile:?} already has this certificate")
            }
            Self::InvalidTopicFilter(e) => write!(f, "invalid topic filter: {e}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// Why the TLS settings could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate chain PEM contains no certificate.
    NoCertificate,
    /// The certificate chain PEM could not be read.
    CertificatePem(String),
    /// The private key PEM holds no usable key or could not be read.
    KeyPem(String),
    /// The client CA PEM is empty, unreadable or not a usable trust anchor.
    ClientCa(String),
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    Rustls(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCertificate => f.write_str("no certificate in the certificate chain PEM"),
            Self::CertificatePem(e) => write!(f, "invalid certificate chain PEM: {e}"),
            Self::KeyPem(e) => write!(f, "invalid private key PEM: {e}"),
            Self::ClientCa(e) => write!(f, "invalid client CA: {e}"),
            Self::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Why [`crate::EmulatorHandle::start_tls`] could not start the emulator.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// Binding a listener failed.
    Io(std::io::Error),
    /// The TLS settings are unusable.
    Tls(TlsError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot listen: {e}"),
            Self::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Tls(e) => Some(e),
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<TlsError> for StartError {
    fn from(e: TlsError) -> Self {
        Self::Tls(e)
    }
}
