//! MQTT reason codes with the meanings ThingsBoard gives them.
//!
//! MQTT 5 reports why a connection was refused (CONNACK), why a publish was not accepted
//! (PUBACK) and why the server closed the session (DISCONNECT) with one shared table of
//! codes. MQTT 3.1.1 only has CONNACK return codes 1–5, which [`ConnectRefusal`] maps onto
//! the same vocabulary.

use std::fmt;

use crate::codec::ProtocolVersion;

/// An MQTT 5 reason code (also used for the few MQTT 3.1.1 codes, see [`ConnectRefusal`]).
///
/// The named variants are the codes ThingsBoard sends or a client is likely to meet; any
/// other byte is kept as [`ReasonCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonCode {
    /// 0x00: success / normal disconnection.
    Success,
    /// 0x10: publish accepted, no matching subscribers (a success).
    NoMatchingSubscribers,
    /// 0x80: unspecified error. ThingsBoard: gateway child creation or forwarding failed.
    UnspecifiedError,
    /// 0x81: the peer could not decode a packet.
    MalformedPacket,
    /// 0x82: protocol error.
    ProtocolError,
    /// 0x83: implementation-specific error. ThingsBoard: a gateway message of the wrong
    /// shape (followed by DISCONNECT), a device-API rate limit, an expired session.
    ImplementationSpecificError,
    /// 0x84: unsupported protocol version (3.1.1 return code 1).
    UnsupportedProtocolVersion,
    /// 0x85: client identifier not valid (3.1.1 return code 2). ThingsBoard: no
    /// credentials were given and the client id matched nothing.
    ClientIdentifierNotValid,
    /// 0x86: bad user name or password (3.1.1 return code 4). ThingsBoard: unknown access
    /// token or basic credentials.
    BadUserNameOrPassword,
    /// 0x87: not authorized (3.1.1 return code 5, which ThingsBoard also sends for a bad
    /// token on 3.1.1). Also an X.509 failure.
    NotAuthorized,
    /// 0x88: server unavailable (3.1.1 return code 3).
    ServerUnavailable,
    /// 0x89: server busy.
    ServerBusy,
    /// 0x8A: banned.
    Banned,
    /// 0x8B: server shutting down. ThingsBoard: an unexpected server-side exception, e.g.
    /// a gateway child creation refused by a rate limit.
    ServerShuttingDown,
    /// 0x8C: bad authentication method.
    BadAuthenticationMethod,
    /// 0x8D: keep-alive timeout.
    KeepAliveTimeout,
    /// 0x8E: session taken over: another connection with the same credentials arrived.
    SessionTakenOver,
    /// 0x8F: topic filter invalid (SUBACK).
    TopicFilterInvalid,
    /// 0x90: topic name invalid: ThingsBoard does not know the topic.
    TopicNameInvalid,
    /// 0x91: packet identifier in use.
    PacketIdentifierInUse,
    /// 0x95: packet too large.
    PacketTooLarge,
    /// 0x96: message rate too high.
    MessageRateTooHigh,
    /// 0x97: quota exceeded. ThingsBoard: tenant device limit (session kept) or a gateway
    /// rate limit (connection closed next).
    QuotaExceeded,
    /// 0x98: administrative action: credentials changed, device deleted, RPC delivery
    /// timeout.
    AdministrativeAction,
    /// 0x99: payload format invalid: the payload was not valid JSON (or protobuf).
    PayloadFormatInvalid,
    /// 0x9F: connection rate exceeded.
    ConnectionRateExceeded,
    /// 0xA0: maximum connect time: ThingsBoard's device-actor session timeout.
    MaximumConnectTime,
    /// Any other code.
    Other(u8),
}

impl ReasonCode {
    /// The code for a raw byte.
    pub fn from_u8(code: u8) -> Self {
        match code {
            0x00 => Self::Success,
            0x10 => Self::NoMatchingSubscribers,
            0x80 => Self::UnspecifiedError,
            0x81 => Self::MalformedPacket,
            0x82 => Self::ProtocolError,
            0x83 => Self::ImplementationSpecificError,
            0x84 => Self::UnsupportedProtocolVersion,
            0x85 => Self::ClientIdentifierNotValid,
            0x86 => Self::BadUserNameOrPassword,
            0x87 => Self::NotAuthorized,
            0x88 => Self::ServerUnavailable,
            0x89 => Self::ServerBusy,
            0x8A => Self::Banned,
            0x8B => Self::ServerShuttingDown,
            0x8C => Self::BadAuthenticationMethod,
            0x8D => Self::KeepAliveTimeout,
            0x8E => Self::SessionTakenOver,
            0x8F => Self::TopicFilterInvalid,
            0x90 => Self::TopicNameInvalid,
            0x91 => Self::PacketIdentifierInUse,
            0x95 => Self::PacketTooLarge,
            0x96 => Self::MessageRateTooHigh,
            0x97 => Self::QuotaExceeded,
            0x98 => Self::AdministrativeAction,
            0x99 => Self::PayloadFormatInvalid,
            0x9F => Self::ConnectionRateExceeded,
            0xA0 => Self::MaximumConnectTime,
            other => Self::Other(other),
        }
    }

    /// The raw byte.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0x00,
            Self::NoMatchingSubscribers => 0x10,
            Self::UnspecifiedError => 0x80,
            Self::MalformedPacket => 0x81,
            Self::ProtocolError => 0x82,
            Self::ImplementationSpecificError => 0x83,
            Self::UnsupportedProtocolVersion => 0x84,
            Self::ClientIdentifierNotValid => 0x85,
            Self::BadUserNameOrPassword => 0x86,
            Self::NotAuthorized => 0x87,
            Self::ServerUnavailable => 0x88,
            Self::ServerBusy => 0x89,
            Self::Banned => 0x8A,
            Self::ServerShuttingDown => 0x8B,
            Self::BadAuthenticationMethod => 0x8C,
            Self::KeepAliveTimeout => 0x8D,
            Self::SessionTakenOver => 0x8E,
            Self::TopicFilterInvalid => 0x8F,
            Self::TopicNameInvalid => 0x90,
            Self::PacketIdentifierInUse => 0x91,
            Self::PacketTooLarge => 0x95,
            Self::MessageRateTooHigh => 0x96,
            Self::QuotaExceeded => 0x97,
            Self::AdministrativeAction => 0x98,
            Self::PayloadFormatInvalid => 0x99,
            Self::ConnectionRateExceeded => 0x9F,
            Self::MaximumConnectTime => 0xA0,
            Self::Other(code) => code,
        }
    }

    /// Whether the code reports success (below 0x80).
    pub fn is_success(self) -> bool {
        self.code() < 0x80
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(code) => write!(f, "reason code 0x{code:02X}"),
            named => write!(f, "{named:?} (0x{:02X})", named.code()),
        }
    }
}

/// Why the server refused a CONNECT, in both protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectRefusal {
    /// The refusal as an MQTT 5 reason code; 3.1.1 return codes are mapped onto their MQTT 5
    /// equivalents (1→0x84, 2→0x85, 3→0x88, 4→0x86, 5→0x87).
    pub reason: ReasonCode,
    /// The byte that was on the wire.
    pub raw: u8,
    /// The protocol version the CONNACK was read with.
    pub protocol: ProtocolVersion,
}

impl ConnectRefusal {
    pub(crate) fn new(protocol: ProtocolVersion, raw: u8) -> Self {
        let reason = match protocol {
            ProtocolVersion::V5 => ReasonCode::from_u8(raw),
            ProtocolVersion::V311 => match raw {
                1 => ReasonCode::UnsupportedProtocolVersion,
                2 => ReasonCode::ClientIdentifierNotValid,
                3 => ReasonCode::ServerUnavailable,
                4 => ReasonCode::BadUserNameOrPassword,
                5 => ReasonCode::NotAuthorized,
                other => ReasonCode::Other(other),
            },
        };
        Self {
            reason,
            raw,
            protocol,
        }
    }

    /// Whether retrying with the same configuration cannot succeed until someone changes
    /// something on the server or in the configuration (credentials, identity, ban,
    /// protocol version). Reconnects after such a refusal wait at least
    /// [`ReconnectPolicy::refused_delay`](crate::ReconnectPolicy::refused_delay).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.reason,
            ReasonCode::UnsupportedProtocolVersion
                | ReasonCode::ClientIdentifierNotValid
                | ReasonCode::BadUserNameOrPassword
                | ReasonCode::NotAuthorized
                | ReasonCode::Banned
                | ReasonCode::BadAuthenticationMethod
        )
    }
}

impl fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            ProtocolVersion::V5 => write!(f, "connection refused: {}", self.reason),
            ProtocolVersion::V311 => write!(
                f,
                "connection refused: return code {} ({:?})",
                self.raw, self.reason
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for b in 0..=u8::MAX {
            assert_eq!(ReasonCode::from_u8(b).code(), b);
        }
    }

    #[test]
    fn thingsboard_refusals_map_to_their_meaning() {
        // ThingsBoard answers a bad token with 5 on 3.1.1 and 0x86 on MQTT 5.
        let v3 = ConnectRefusal::new(ProtocolVersion::V311, 5);
        assert_eq!(v3.reason, ReasonCode::NotAuthorized);
        assert!(v3.is_permanent());
        let v5 = ConnectRefusal::new(ProtocolVersion::V5, 0x86);
        assert_eq!(v5.reason, ReasonCode::BadUserNameOrPassword);
        assert!(v5.is_permanent());
        for (raw, reason) in [
            (2, ReasonCode::ClientIdentifierNotValid),
            (3, ReasonCode::ServerUnavailable),
            (4, ReasonCode::BadUserNameOrPassword),
        ] {
            assert_eq!(
                ConnectRefusal::new(ProtocolVersion::V311, raw).reason,
                reason
            );
        }
        // Transient refusals heal by themselves.
        for raw in [0x88, 0x89, 0x9F] {
            assert!(!ConnectRefusal::new(ProtocolVersion::V5, raw).is_permanent());
        }
        assert!(!ConnectRefusal::new(ProtocolVersion::V311, 3).is_permanent());
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(
            ReasonCode::SessionTakenOver.to_string(),
            "SessionTakenOver (0x8E)"
        );
        assert_eq!(ReasonCode::Other(0xA2).to_string(), "reason code 0xA2");
    }
}
