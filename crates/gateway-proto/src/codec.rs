#![cfg_attr(not(feature = "wire"), allow(dead_code))]
//! MQTT 3.1.1 / 5 packet codec used by the connection core.
//!
//! This module wraps `mqttbytes` 0.6 (framing, and the decoding of PUBLISH, SUBSCRIBE and v3
//! UNSUBSCRIBE) behind types of its own; no `mqttbytes` type appears in a public signature.
//! It works around the `mqttbytes` bugs listed in the design notes (rust-notes §1.4):
//!
//! * Framing: an incomplete frame is `Ok(None)` with the buffer untouched; once a frame is
//!   complete, any error is [`DecodeError::Malformed`] (never "need more bytes").
//! * CONNECT, CONNACK, PUBACK, SUBACK, UNSUBACK, DISCONNECT, PINGREQ/PINGRESP and v5 UNSUBSCRIBE
//!   are decoded by this module: reason codes stay raw `u8` (an unknown code is not an error),
//!   the v5 short forms (`E0 00`, `E0 01 rc`, `40 02 ..`, `40 03 ..`) decode (B1, B2), empty
//!   usernames/passwords are kept apart from absent ones, and v5 UNSUBSCRIBE avoids the `dbg!`
//!   in `mqttbytes` (B8).
//! * An inbound QoS 1 PUBLISH with packet id 0 (ThingsBoard never wraps its counter) is decoded
//!   by this module when `mqttbytes` rejects it.
//! * Every packet is encoded by this module: all fields are validated before the first byte is
//!   written, so an error leaves the output buffer unchanged (B5, B6, B7), and v5 CONNACK carries
//!   its property length (B4).
//!
//! QoS 2 is not supported: ThingsBoard answers a QoS 2 PUBLISH with PUBACK, so the client never
//! uses it. An inbound PUBLISH or SUBSCRIBE at QoS 2, and any PUBREC/PUBREL/PUBCOMP, decodes as
//! [`DecodeError::Malformed`].
//!
//! v5 properties are not modelled: the packets written here carry an empty property block and
//! inbound properties are skipped (their length is checked, their content is not interpreted by
//! the packets this module decodes itself).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Longest UTF-8 string or binary field MQTT can carry (two-byte length prefix).
const MAX_FIELD_LEN: usize = 65_535;

/// Largest remaining length a four-byte variable byte integer can express.
const MAX_VARINT: usize = 268_435_455;

/// MQTT protocol version spoken on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Quality of service of a PUBLISH or subscription. QoS 2 is deliberately absent: ThingsBoard
/// never uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QoS {
    /// QoS 0: fire and forget, no packet id.
    AtMostOnce,
    /// QoS 1: acknowledged with PUBACK, carries a packet id.
    AtLeastOnce,
}

impl QoS {
    fn bits(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
        }
    }
}

/// CONNECT packet (client to server). Last-will messages and v5 properties are not modelled:
/// encoding never writes them and decoding skips them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Keep-alive interval in seconds (0 disables it).
    pub keep_alive: u16,
    /// Clean session (v3.1.1) / clean start (v5) flag.
    pub clean_session: bool,
    /// User name; `Some("")` sets the user-name flag with an empty string, `None` clears it.
    pub username: Option<String>,
    /// Password; `Some("")` sets the password flag with an empty value, `None` clears it.
    /// On MQTT 3.1.1 a password requires a user name.
    pub password: Option<String>,
}

/// CONNACK packet (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// Raw return code (v3.1.1) or reason code (v5); 0 is success.
    pub code: u8,
}

/// PUBLISH packet (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic name. Encoding rejects an empty topic and one containing `+`, `#` or NUL.
    pub topic: String,
    /// Application payload.
    pub payload: Bytes,
    /// Delivery QoS.
    pub qos: QoS,
    /// DUP flag.
    pub dup: bool,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet id; ignored (and not written) at QoS 0. Decoding accepts 0 at QoS 1 (ThingsBoard
    /// wraps its 16-bit counter through 0); encoding rejects it.
    pub pkid: u16,
}

/// PUBACK packet (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// Packet id of the acknowledged PUBLISH.
    pub pkid: u16,
    /// Raw v5 reason code; always 0 on v3.1.1.
    pub code: u8,
}

/// SUBSCRIBE packet (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id (non-zero).
    pub pkid: u16,
    /// Topic filters with their requested QoS (at least one).
    pub filters: Vec<(String, QoS)>,
}

/// SUBACK packet (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet id of the acknowledged SUBSCRIBE.
    pub pkid: u16,
    /// Raw return/reason codes, one per filter: 0 or 1 is the granted QoS, `>= 0x80` a failure.
    pub codes: Vec<u8>,
}

/// UNSUBSCRIBE packet (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id (non-zero).
    pub pkid: u16,
    /// Topic filters to remove (at least one).
    pub filters: Vec<String>,
}

/// UNSUBACK packet (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet id of the acknowledged UNSUBSCRIBE.
    pub pkid: u16,
    /// Raw v5 reason codes, one per filter; always empty on v3.1.1.
    pub codes: Vec<u8>,
}

/// DISCONNECT packet (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Raw v5 reason code; always 0 on v3.1.1.
    pub code: u8,
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Connect),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
}

/// Why a complete frame (or a fixed header) is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedKind {
    /// The remaining-length variable byte integer is longer than four bytes.
    RemainingLength,
    /// Reserved packet type (0, or 15 which is AUTH on v5 and not supported).
    ReservedPacketType(u8),
    /// PUBREC, PUBREL or PUBCOMP: QoS 2 is never used by this client.
    QoS2Flow(u8),
    /// The fixed-header flags are not the ones the packet type requires.
    Flags(u8),
    /// QoS 2 in a PUBLISH or SUBSCRIBE (not supported).
    QoS2,
    /// QoS value 3.
    InvalidQoS,
    /// The frame ended before a field was complete.
    Truncated,
    /// Bytes left over after the last field.
    TrailingBytes,
    /// A string field is not valid UTF-8.
    NotUtf8,
    /// CONNECT protocol name is not "MQTT" or its level does not match the connection's version.
    Protocol,
    /// CONNECT flags are inconsistent (reserved bit set, will bits without will flag,
    /// or a v3.1.1 password without user name).
    ConnectFlags,
    /// CONNACK acknowledge flags other than Session Present are set.
    ConnAckFlags,
    /// SUBSCRIBE/UNSUBSCRIBE with packet id 0.
    PacketIdZero,
    /// SUBSCRIBE/UNSUBSCRIBE without filters, or SUBACK/v5 UNSUBACK without codes.
    EmptyList,
    /// Another defect reported by the underlying parser.
    Invalid,
    /// The first packet of a server-side connection is not a CONNECT (see [`decode_first_connect`]).
    ExpectedConnect(u8),
}

impl fmt::Display for MalformedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MalformedKind::RemainingLength => f.write_str("remaining length longer than 4 bytes"),
            MalformedKind::ReservedPacketType(t) => write!(f, "reserved packet type {t}"),
            MalformedKind::QoS2Flow(t) => write!(f, "QoS 2 flow packet type {t} not supported"),
            MalformedKind::Flags(b) => write!(f, "invalid fixed header flags in byte {b:#04x}"),
            MalformedKind::QoS2 => f.write_str("QoS 2 not supported"),
            MalformedKind::InvalidQoS => f.write_str("invalid QoS 3"),
            MalformedKind::Truncated => f.write_str("field runs past the end of the packet"),
            MalformedKind::TrailingBytes => f.write_str("unexpected bytes after the last field"),
            MalformedKind::NotUtf8 => f.write_str("string is not valid UTF-8"),
            MalformedKind::Protocol => f.write_str("unexpected protocol name or level"),
            MalformedKind::ConnectFlags => f.write_str("inconsistent CONNECT flags"),
            MalformedKind::ConnAckFlags => f.write_str("reserved CONNACK flags set"),
            MalformedKind::PacketIdZero => f.write_str("packet id 0"),
            MalformedKind::EmptyList => f.write_str("empty filter or reason code list"),
            MalformedKind::Invalid => f.write_str("invalid packet"),
            MalformedKind::ExpectedConnect(t) => {
                write!(f, "expected CONNECT first, got packet type {t}")
            }
        }
    }
}

/// Error returned when decoding a packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The fixed header announces a remaining length above the limit. Nothing was consumed;
    /// the whole frame (fixed header included) is `frame_len` bytes long.
    TooLarge {
        /// Fixed header length plus remaining length.
        frame_len: usize,
    },
    /// The packet is invalid. The frame was consumed, unless the fixed header itself was invalid
    /// (then nothing was consumed). Either way the connection cannot continue.
    Malformed(MalformedKind),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { frame_len } => {
                write!(
                    f,
                    "incoming packet of {frame_len} bytes exceeds the size limit"
                )
            }
            DecodeError::Malformed(kind) => write!(f, "malformed packet: {kind}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Error returned when encoding a packet. Nothing is written when it is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    StringTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// PUBLISH at QoS 1, SUBSCRIBE or UNSUBSCRIBE with packet id 0.
    PacketIdZero,
    /// The remaining length would exceed the limit (the caller's, or MQTT's 268,435,455).
    TooLarge {
        /// Remaining length the packet would have.
        remaining: usize,
        /// Effective limit.
        max: usize,
    },
    /// PUBLISH topic is empty or contains `+`, `#` or NUL.
    InvalidTopic,
    /// Topic filter is empty or contains NUL.
    InvalidFilter,
    /// SUBSCRIBE/UNSUBSCRIBE without filters, or SUBACK/v5 UNSUBACK without codes.
    EmptyList,
    /// The field cannot be expressed in this protocol version (a non-zero reason code on
    /// v3.1.1 PUBACK/DISCONNECT, UNSUBACK codes on v3.1.1, a password without user name on
    /// v3.1.1).
    NotInVersion {
        /// Which field.
        field: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::StringTooLong { field, len } => {
                write!(f, "{field} is {len} bytes long, MQTT allows at most 65535")
            }
            EncodeError::PacketIdZero => f.write_str("packet id 0 is not allowed here"),
            EncodeError::TooLarge { remaining, max } => {
                write!(
                    f,
                    "packet remaining length {remaining} exceeds the limit {max}"
                )
            }
            EncodeError::InvalidTopic => {
                f.write_str("topic name is empty or contains '+', '#' or NUL")
            }
            EncodeError::InvalidFilter => f.write_str("topic filter is empty or contains NUL"),
            EncodeError::EmptyList => f.write_str("filter or reason code list is empty"),
            EncodeError::NotInVersion { field } => {
                write!(f, "{field} cannot be encoded in MQTT 3.1.1")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

// ------------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------------

/// Decode one packet from the front of `buf`.
///
/// * `Ok(None)`: the frame is incomplete; `buf` is untouched.
/// * `Ok(Some(packet))`: the frame was consumed.
/// * `Err(DecodeError::TooLarge { frame_len })`: the fixed header announces a remaining length
///   above `max_remaining`; nothing was consumed (the caller skips `frame_len` bytes itself).
/// * `Err(DecodeError::Malformed(_))`: the complete frame was consumed and is invalid, or the
///   fixed header itself is invalid (then nothing was consumed).
///
/// `max_remaining` limits the remaining length (ThingsBoard's default limit is 65,536).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_remaining: usize,
) -> Result<Option<Packet>, DecodeError> {
    if let Some(ack) = short_puback(buf, max_remaining) {
        return Ok(Some(Packet::PubAck(ack)));
    }
    decode_any(buf, version, max_remaining)
}

/// The packet a publisher receives most, taken without framing a `Bytes`: a PUBACK whose
/// body is just its packet id (every PUBACK on MQTT 3.1.1; on MQTT 5 a success without
/// properties). Anything else, including a PUBACK with a reason code, goes through
/// [`decode_any`], which gives the same result for these four bytes.
fn short_puback(buf: &mut BytesMut, max_remaining: usize) -> Option<PubAck> {
    match **buf {
        [0x40, 0x02, hi, lo, ..] if max_remaining >= 2 => {
            buf.advance(4);
            Some(PubAck {
                pkid: u16::from_be_bytes([hi, lo]),
                code: 0,
            })
        }
        _ => None,
    }
}

/// [`decode`] for any packet.
fn decode_any(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_remaining: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let packet_type = byte1 >> 4;
    if packet_type == 0 || packet_type == 15 {
        return Err(DecodeError::Malformed(MalformedKind::ReservedPacketType(
            packet_type,
        )));
    }
    let header = match mqttbytes::check(buf.iter(), max_remaining) {
        Ok(header) => header,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(remaining)) => {
            return match fixed_header_len(buf) {
                Some(header_len) => Err(DecodeError::TooLarge {
                    frame_len: header_len.saturating_add(remaining),
                }),
                None => Err(DecodeError::Malformed(MalformedKind::RemainingLength)),
            };
        }
        Err(_) => return Err(DecodeError::Malformed(MalformedKind::RemainingLength)),
    };
    let frame_len = header.frame_length();
    let header_len = match fixed_header_len(buf) {
        Some(len) if len <= frame_len && frame_len <= buf.len() => len,
        // `check` succeeded, so this cannot happen; stay panic-free regardless.
        _ => return Err(DecodeError::Malformed(MalformedKind::RemainingLength)),
    };
    let frame = buf.split_to(frame_len).freeze();
    decode_frame(header, byte1, frame, header_len, version)
        .map(Some)
        .map_err(DecodeError::Malformed)
}

/// Server side: decode the first packet of a connection, which must be a CONNECT, without
/// knowing the protocol version up front. The protocol level byte is sniffed (4 = MQTT 3.1.1,
/// 5 = MQTT 5) and the frame is then decoded as [`decode`] does for that version.
///
/// * `Ok(None)`: the frame is incomplete; `buf` is untouched.
/// * `Ok(Some((version, connect)))`: the frame was consumed.
/// * `Err(DecodeError::Malformed(MalformedKind::ExpectedConnect(t)))`: the first packet has
///   type `t`, not CONNECT; nothing was consumed.
/// * `Err(DecodeError::Malformed(MalformedKind::Protocol))`: the protocol name is not `MQTT`
///   or the level is neither 4 nor 5 (MQTT 3.1 `MQIsdp` is not supported); the frame was
///   consumed.
/// * Other errors as for [`decode`].
pub fn decode_first_connect(
    buf: &mut BytesMut,
    max_remaining: usize,
) -> Result<Option<(ProtocolVersion, Connect)>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let packet_type = byte1 >> 4;
    if packet_type != 1 {
        return Err(DecodeError::Malformed(MalformedKind::ExpectedConnect(
            packet_type,
        )));
    }
    let header = match mqttbytes::check(buf.iter(), max_remaining) {
        Ok(header) => header,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        // Let `decode` report size and varint errors exactly as it always does.
        Err(_) => return decode(buf, ProtocolVersion::V311, max_remaining).map(|_| None),
    };
    let frame_len = header.frame_length();
    let level = fixed_header_len(buf).and_then(|header_len| {
        let name_len = usize::from(u16::from_be_bytes([
            *buf.get(header_len)?,
            *buf.get(header_len + 1)?,
        ]));
        let at = header_len + 2 + name_len;
        if at < frame_len {
            buf.get(at).copied()
        } else {
            None
        }
    });
    let version = match level {
        Some(5) => ProtocolVersion::V5,
        Some(4) => ProtocolVersion::V311,
        _ => {
            // Consume the frame: the connection cannot continue anyway.
            let _ = buf.split_to(frame_len.min(buf.len()));
            return Err(DecodeError::Malformed(MalformedKind::Protocol));
        }
    };
    match decode(buf, version, max_remaining)? {
        Some(Packet::Connect(connect)) => Ok(Some((version, connect))),
        // The type was checked above; stay panic-free regardless.
        Some(_) => Err(DecodeError::Malformed(MalformedKind::ExpectedConnect(
            packet_type,
        ))),
        None => Ok(None),
    }
}

/// Length of the fixed header at the front of `buf` (1 + remaining-length bytes), if its
/// remaining-length varint is complete and at most 4 bytes long.
fn fixed_header_len(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map(|pos| pos + 2)
}

fn decode_frame(
    header: mqttbytes::FixedHeader,
    byte1: u8,
    frame: Bytes,
    header_len: usize,
    version: ProtocolVersion,
) -> Result<Packet, MalformedKind> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(MalformedKind::Flags(byte1))
        }
    };
    let body = frame.slice(header_len.min(frame.len())..);
    match packet_type {
        1 => {
            expect_flags(0)?;
            decode_connect(body, version).map(Packet::Connect)
        }
        2 => {
            expect_flags(0)?;
            decode_connack(body, version).map(Packet::ConnAck)
        }
        3 => decode_publish(header, byte1, frame, body, version).map(Packet::Publish),
        4 => {
            expect_flags(0)?;
            decode_puback(body, version).map(Packet::PubAck)
        }
        5..=7 => Err(MalformedKind::QoS2Flow(packet_type)),
        8 => {
            expect_flags(2)?;
            decode_subscribe(header, frame, version).map(Packet::Subscribe)
        }
        9 => {
            expect_flags(0)?;
            decode_suback(body, version).map(Packet::SubAck)
        }
        10 => {
            expect_flags(2)?;
            decode_unsubscribe(header, frame, body, version).map(Packet::Unsubscribe)
        }
        11 => {
            expect_flags(0)?;
            decode_unsuback(body, version).map(Packet::UnsubAck)
        }
        12 | 13 => {
            expect_flags(0)?;
            if !body.is_empty() {
                return Err(MalformedKind::TrailingBytes);
            }
            Ok(if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            })
        }
        14 => {
            expect_flags(0)?;
            decode_disconnect(body, version).map(Packet::Disconnect)
        }
        other => Err(MalformedKind::ReservedPacketType(other)),
    }
}

fn read_u8(b: &mut Bytes) -> Result<u8, MalformedKind> {
    if b.is_empty() {
        return Err(MalformedKind::Truncated);
    }
    Ok(b.get_u8())
}

fn read_u16(b: &mut Bytes) -> Result<u16, MalformedKind> {
    if b.len() < 2 {
        return Err(MalformedKind::Truncated);
    }
    Ok(b.get_u16())
}

fn read_binary(b: &mut Bytes) -> Result<Bytes, MalformedKind> {
    let len = usize::from(read_u16(b)?);
    if len > b.len() {
        return Err(MalformedKind::Truncated);
    }
    Ok(b.split_to(len))
}

fn read_string(b: &mut Bytes) -> Result<String, MalformedKind> {
    let raw = read_binary(b)?;
    std::str::from_utf8(&raw)
        .map(str::to_owned)
        .map_err(|_| MalformedKind::NotUtf8)
}

fn read_varint(b: &mut Bytes) -> Result<usize, MalformedKind> {
    let mut value = 0usize;
    for shift in [0u32, 7, 14, 21] {
        let byte = read_u8(b)?;
        value |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(MalformedKind::Invalid)
}

/// Skip a v5 property block (length-checked, content not interpreted).
fn skip_properties(b: &mut Bytes) -> Result<(), MalformedKind> {
    let len = read_varint(b)?;
    if len > b.len() {
        return Err(MalformedKind::Truncated);
    }
    b.advance(len);
    Ok(())
}

fn expect_end(b: &Bytes) -> Result<(), MalformedKind> {
    if b.is_empty() {
        Ok(())
    } else {
        Err(MalformedKind::TrailingBytes)
    }
}

fn qos_from_bits(bits: u8) -> Result<QoS, MalformedKind> {
    match bits {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Err(MalformedKind::QoS2),
        _ => Err(MalformedKind::InvalidQoS),
    }
}

fn map_qos(qos: mqttbytes::QoS) -> Result<QoS, MalformedKind> {
    match qos {
        mqttbytes::QoS::AtMostOnce => Ok(QoS::AtMostOnce),
        mqttbytes::QoS::AtLeastOnce => Ok(QoS::AtLeastOnce),
        mqttbytes::QoS::ExactlyOnce => Err(MalformedKind::QoS2),
    }
}

fn map_error(error: mqttbytes::Error) -> MalformedKind {
    use mqttbytes::Error as E;
    match error {
        E::InvalidQoS(_) => MalformedKind::InvalidQoS,
        E::TopicNotUtf8 => MalformedKind::NotUtf8,
        E::PacketIdZero => MalformedKind::PacketIdZero,
        E::MalformedPacket | E::BoundaryCrossed(_) | E::InsufficientBytes(_) => {
            MalformedKind::Truncated
        }
        _ => MalformedKind::Invalid,
    }
}

fn decode_connect(mut b: Bytes, version: ProtocolVersion) -> Result<Connect, MalformedKind> {
    let name = read_binary(&mut b)?;
    let level = read_u8(&mut b)?;
    let want_level = match version {
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    };
    if name.as_ref() != b"MQTT" || level != want_level {
        return Err(MalformedKind::Protocol);
    }
    let flags = read_u8(&mut b)?;
    let has_username = flags & 0x80 != 0;
    let has_password = flags & 0x40 != 0;
    let will = flags & 0x04 != 0;
    let will_bits = flags & 0x38;
    if flags & 0x01 != 0
        || (!will && will_bits != 0)
        || (version == ProtocolVersion::V311 && has_password && !has_username)
    {
        return Err(MalformedKind::ConnectFlags);
    }
    let keep_alive = read_u16(&mut b)?;
    if version == ProtocolVersion::V5 {
        skip_properties(&mut b)?;
    }
    let client_id = read_string(&mut b)?;
    if will {
        // Will messages are not modelled: validate and skip.
        if (flags >> 3) & 0x03 == 3 {
            return Err(MalformedKind::InvalidQoS);
        }
        if version == ProtocolVersion::V5 {
            skip_properties(&mut b)?;
        }
        read_string(&mut b)?;
        read_binary(&mut b)?;
    }
    let username = if has_username {
        Some(read_string(&mut b)?)
    } else {
        None
    };
    let password = if has_password {
        let raw = read_binary(&mut b)?;
        Some(String::from_utf8(raw.to_vec()).map_err(|_| MalformedKind::NotUtf8)?)
    } else {
        None
    };
    expect_end(&b)?;
    Ok(Connect {
        client_id,
        keep_alive,
        clean_session: flags & 0x02 != 0,
        username,
        password,
    })
}

fn decode_connack(mut b: Bytes, version: ProtocolVersion) -> Result<ConnAck, MalformedKind> {
    let flags = read_u8(&mut b)?;
    if flags & 0xFE != 0 {
        return Err(MalformedKind::ConnAckFlags);
    }
    let code = read_u8(&mut b)?;
    // v5: the property block is mandatory, but a missing one (as `mqttbytes` writes it) is
    // accepted.
    if version == ProtocolVersion::V5 && !b.is_empty() {
        skip_properties(&mut b)?;
    }
    expect_end(&b)?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code,
    })
}

fn decode_publish(
    header: mqttbytes::FixedHeader,
    byte1: u8,
    frame: Bytes,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Publish, MalformedKind> {
    let parsed = match version {
        ProtocolVersion::V311 => mqttbytes::v4::Publish::read(header, frame)
            .map(|p| (p.topic, p.payload, p.qos, p.dup, p.retain, p.pkid)),
        ProtocolVersion::V5 => mqttbytes::v5::Publish::read(header, frame)
            .map(|p| (p.topic, p.payload, p.qos, p.dup, p.retain, p.pkid)),
    };
    match parsed {
        Ok((topic, payload, qos, dup, retain, pkid)) => Ok(Publish {
            topic,
            payload,
            qos: map_qos(qos)?,
            dup,
            retain,
            pkid,
        }),
        // ThingsBoard sends packet id 0 at QoS 1 once every 65,536 publishes.
        Err(mqttbytes::Error::PacketIdZero) => decode_publish_pkid_zero(byte1, body, version),
        Err(error) => Err(map_error(error)),
    }
}

/// Decode a QoS > 0 PUBLISH whose packet id is 0 (rejected by `mqttbytes`).
fn decode_publish_pkid_zero(
    byte1: u8,
    mut b: Bytes,
    version: ProtocolVersion,
) -> Result<Publish, MalformedKind> {
    let qos = qos_from_bits((byte1 >> 1) & 0x03)?;
    let topic = read_string(&mut b)?;
    let pkid = if qos == QoS::AtLeastOnce {
        read_u16(&mut b)?
    } else {
        0
    };
    if version == ProtocolVersion::V5 {
        skip_properties(&mut b)?;
    }
    Ok(Publish {
        topic,
        payload: b,
        qos,
        dup: byte1 & 0x08 != 0,
        retain: byte1 & 0x01 != 0,
        pkid,
    })
}

fn decode_puback(mut b: Bytes, version: ProtocolVersion) -> Result<PubAck, MalformedKind> {
    let pkid = read_u16(&mut b)?;
    let mut code = 0;
    if version == ProtocolVersion::V5 && !b.is_empty() {
        code = read_u8(&mut b)?;
        if !b.is_empty() {
            skip_properties(&mut b)?;
        }
    }
    expect_end(&b)?;
    Ok(PubAck { pkid, code })
}

fn decode_subscribe(
    header: mqttbytes::FixedHeader,
    frame: Bytes,
    version: ProtocolVersion,
) -> Result<Subscribe, MalformedKind> {
    let (pkid, raw) = match version {
        ProtocolVersion::V311 => mqttbytes::v4::Subscribe::read(header, frame).map(|s| {
            let filters: Vec<_> = s.filters.into_iter().map(|f| (f.path, f.qos)).collect();
            (s.pkid, filters)
        }),
        ProtocolVersion::V5 => mqttbytes::v5::Subscribe::read(header, frame).map(|s| {
            let filters: Vec<_> = s.filters.into_iter().map(|f| (f.path, f.qos)).collect();
            (s.pkid, filters)
        }),
    }
    .map_err(map_error)?;
    if pkid == 0 {
        return Err(MalformedKind::PacketIdZero);
    }
    if raw.is_empty() {
        return Err(MalformedKind::EmptyList);
    }
    let filters = raw
        .into_iter()
        .map(|(path, qos)| map_qos(qos).map(|qos| (path, qos)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Subscribe { pkid, filters })
}

fn decode_suback(mut b: Bytes, version: ProtocolVersion) -> Result<SubAck, MalformedKind> {
    let pkid = read_u16(&mut b)?;
    if version == ProtocolVersion::V5 {
        skip_properties(&mut b)?;
    }
    if b.is_empty() {
        return Err(MalformedKind::EmptyList);
    }
    Ok(SubAck {
        pkid,
        codes: b.to_vec(),
    })
}

fn decode_unsubscribe(
    header: mqttbytes::FixedHeader,
    frame: Bytes,
    mut body: Bytes,
    version: ProtocolVersion,
) -> Result<Unsubscribe, MalformedKind> {
    let (pkid, filters) = match version {
        ProtocolVersion::V311 => mqttbytes::v4::Unsubscribe::read(header, frame)
            .map(|u| (u.pkid, u.topics))
            .map_err(map_error)?,
        // Not `mqttbytes::v5::Unsubscribe::read`: it contains a `dbg!` (B8).
        ProtocolVersion::V5 => {
            let pkid = read_u16(&mut body)?;
            skip_properties(&mut body)?;
            let mut filters = Vec::new();
            while !body.is_empty() {
                filters.push(read_string(&mut body)?);
            }
            (pkid, filters)
        }
    };
    if pkid == 0 {
        return Err(MalformedKind::PacketIdZero);
    }
    if filters.is_empty() {
        return Err(MalformedKind::EmptyList);
    }
    Ok(Unsubscribe { pkid, filters })
}

fn decode_unsuback(mut b: Bytes, version: ProtocolVersion) -> Result<UnsubAck, MalformedKind> {
    let pkid = read_u16(&mut b)?;
    let codes = match version {
        ProtocolVersion::V311 => {
            expect_end(&b)?;
            Vec::new()
        }
        ProtocolVersion::V5 => {
            skip_properties(&mut b)?;
            if b.is_empty() {
                return Err(MalformedKind::EmptyList);
            }
            b.to_vec()
        }
    };
    Ok(UnsubAck { pkid, codes })
}

fn decode_disconnect(mut b: Bytes, version: ProtocolVersion) -> Result<Disconnect, MalformedKind> {
    let mut code = 0;
    // v5 short forms: `E0 00` (success, no properties) and `E0 01 rc` (no property length).
    if version == ProtocolVersion::V5 && !b.is_empty() {
        code = read_u8(&mut b)?;
        if !b.is_empty() {
            skip_properties(&mut b)?;
        }
    }
    expect_end(&b)?;
    Ok(Disconnect { code })
}

// ------------------------------------------------------------------------------------------------
// Encoding
// ------------------------------------------------------------------------------------------------

/// Number of bytes of the variable byte integer encoding `n` (`n` at most 268,435,455).
fn varint_len(n: usize) -> usize {
    if n < 128 {
        1
    } else if n < 16_384 {
        2
    } else if n < 2_097_152 {
        3
    } else {
        4
    }
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Write a length-prefixed field; `bytes.len()` was checked to be at most 65,535.
fn put_field(out: &mut BytesMut, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.extend_from_slice(bytes);
}

fn check_field(field: &'static str, value: &str) -> Result<usize, EncodeError> {
    let len = value.len();
    if len > MAX_FIELD_LEN {
        return Err(EncodeError::StringTooLong { field, len });
    }
    Ok(2 + len)
}

fn check_filter(filter: &str) -> Result<usize, EncodeError> {
    let size = check_field("topic filter", filter)?;
    if filter.is_empty() || filter.as_bytes().contains(&0) {
        return Err(EncodeError::InvalidFilter);
    }
    Ok(size)
}

fn check_remaining(remaining: usize, max_remaining: usize) -> Result<(), EncodeError> {
    let max = max_remaining.min(MAX_VARINT);
    if remaining > max {
        return Err(EncodeError::TooLarge { remaining, max });
    }
    Ok(())
}

/// Reserve, write the fixed header; returns the total frame length.
fn start_frame(out: &mut BytesMut, byte1: u8, remaining: usize) -> usize {
    let total = 1 + varint_len(remaining) + remaining;
    out.reserve(total);
    out.put_u8(byte1);
    put_varint(out, remaining);
    total
}

/// Remaining length of a PUBLISH (saturating: callers check it against the limit).
fn publish_remaining(
    version: ProtocolVersion,
    topic_len: usize,
    payload_len: usize,
    qos: QoS,
) -> usize {
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 2,
    };
    let props = match version {
        ProtocolVersion::V311 => 0,
        ProtocolVersion::V5 => 1,
    };
    topic_len
        .saturating_add(2 + pkid + props)
        .saturating_add(payload_len)
}

/// Exact encoded size (fixed header + remaining length) of a PUBLISH with this topic length,
/// payload length and QoS, as [`encode`] writes it for `version` (a v5 PUBLISH carries an empty
/// property block). Only meaningful for packets that [`encode`] accepts; beyond MQTT's maximum
/// remaining length the result is not an encodable size.
pub fn publish_size(
    version: ProtocolVersion,
    topic_len: usize,
    payload_len: usize,
    qos: QoS,
) -> usize {
    let remaining = publish_remaining(version, topic_len, payload_len, qos);
    remaining.saturating_add(1 + varint_len(remaining))
}

/// Append the encoding of `packet` to `out` and return the number of bytes written.
///
/// Every field is validated first; on error nothing is appended. `max_remaining` limits the
/// remaining length of the packet (MQTT's own limit of 268,435,455 always applies). v5 packets
/// carry an empty property block.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
    max_remaining: usize,
) -> Result<usize, EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    let props = usize::from(v5);
    match packet {
        Packet::Publish(p) => encode_publish(
            &PublishRef {
                topic: &p.topic,
                payload: &p.payload,
                qos: p.qos,
                dup: p.dup,
                retain: p.retain,
                pkid: p.pkid,
            },
            version,
            out,
            max_remaining,
        ),
        Packet::Connect(c) => encode_connect(c, version, out, max_remaining),
        Packet::ConnAck(c) => {
            let remaining = 2 + props;
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0x20, remaining);
            out.put_u8(u8::from(c.session_present));
            out.put_u8(c.code);
            if v5 {
                out.put_u8(0);
            }
            Ok(total)
        }
        Packet::PubAck(a) => {
            if !v5 && a.code != 0 {
                return Err(EncodeError::NotInVersion {
                    field: "PUBACK reason code",
                });
            }
            let remaining = if v5 { 4 } else { 2 };
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0x40, remaining);
            out.put_u16(a.pkid);
            if v5 {
                out.put_u8(a.code);
                out.put_u8(0);
            }
            Ok(total)
        }
        Packet::Subscribe(s) => {
            let mut remaining = 2 + props;
            for (filter, _) in &s.filters {
                remaining = remaining.saturating_add(check_filter(filter)? + 1);
            }
            if s.filters.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            if s.pkid == 0 {
                return Err(EncodeError::PacketIdZero);
            }
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0x82, remaining);
            out.put_u16(s.pkid);
            if v5 {
                out.put_u8(0);
            }
            for (filter, qos) in &s.filters {
                put_field(out, filter.as_bytes());
                out.put_u8(qos.bits());
            }
            Ok(total)
        }
        Packet::SubAck(s) => {
            if s.codes.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            let remaining = (2 + props).saturating_add(s.codes.len());
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0x90, remaining);
            out.put_u16(s.pkid);
            if v5 {
                out.put_u8(0);
            }
            out.extend_from_slice(&s.codes);
            Ok(total)
        }
        Packet::Unsubscribe(u) => {
            let mut remaining = 2 + props;
            for filter in &u.filters {
                remaining = remaining.saturating_add(check_filter(filter)?);
            }
            if u.filters.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            if u.pkid == 0 {
                return Err(EncodeError::PacketIdZero);
            }
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0xA2, remaining);
            out.put_u16(u.pkid);
            if v5 {
                out.put_u8(0);
            }
            for filter in &u.filters {
                put_field(out, filter.as_bytes());
            }
            Ok(total)
        }
        Packet::UnsubAck(u) => {
            if v5 && u.codes.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            if !v5 && !u.codes.is_empty() {
                return Err(EncodeError::NotInVersion {
                    field: "UNSUBACK reason codes",
                });
            }
            let remaining = (2 + props).saturating_add(u.codes.len());
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0xB0, remaining);
            out.put_u16(u.pkid);
            if v5 {
                out.put_u8(0);
                out.extend_from_slice(&u.codes);
            }
            Ok(total)
        }
        Packet::PingReq => Ok(start_frame(out, 0xC0, 0)),
        Packet::PingResp => Ok(start_frame(out, 0xD0, 0)),
        Packet::Disconnect(d) => {
            if !v5 && d.code != 0 {
                return Err(EncodeError::NotInVersion {
                    field: "DISCONNECT reason code",
                });
            }
            let remaining = if v5 { 2 } else { 0 };
            check_remaining(remaining, max_remaining)?;
            let total = start_frame(out, 0xE0, remaining);
            if v5 {
                out.put_u8(d.code);
                out.put_u8(0);
            }
            Ok(total)
        }
    }
}

/// A PUBLISH to encode, borrowing its topic and payload (the client's hot path: no copy into
/// an owned [`Publish`] first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRef<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// QoS 0 or 1.
    pub qos: QoS,
    /// DUP flag (a retransmission).
    pub dup: bool,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet id; must be non-zero at QoS 1, ignored at QoS 0.
    pub pkid: u16,
}

/// Append a PUBLISH to `out`, validated first and then written straight into `out`; on error
/// nothing is appended. Same rules as [`encode`] with [`Packet::Publish`].
pub fn encode_publish(
    p: &PublishRef<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
    max_remaining: usize,
) -> Result<usize, EncodeError> {
    encode_publish_inner(p, version, out, max_remaining, false)
}

/// Server-side quirk: like [`encode_publish`], but a QoS 1 PUBLISH with packet id 0 is written
/// instead of rejected. ThingsBoard never wraps its outgoing packet-id counter, so every
/// 65,536th downlink carries id 0; an emulator uses this to reproduce that.
pub fn encode_publish_allowing_pkid_zero(
    p: &PublishRef<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
    max_remaining: usize,
) -> Result<usize, EncodeError> {
    encode_publish_inner(p, version, out, max_remaining, true)
}

fn encode_publish_inner(
    p: &PublishRef<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
    max_remaining: usize,
    allow_pkid_zero: bool,
) -> Result<usize, EncodeError> {
    check_field("topic", p.topic)?;
    if p.topic.is_empty()
        || p.topic
            .as_bytes()
            .iter()
            .any(|&b| b == b'+' || b == b'#' || b == 0)
    {
        return Err(EncodeError::InvalidTopic);
    }
    if p.qos == QoS::AtLeastOnce && p.pkid == 0 && !allow_pkid_zero {
        return Err(EncodeError::PacketIdZero);
    }
    let remaining = publish_remaining(version, p.topic.len(), p.payload.len(), p.qos);
    check_remaining(remaining, max_remaining)?;
    let byte1 = 0x30 | (u8::from(p.dup) << 3) | (p.qos.bits() << 1) | u8::from(p.retain);
    let total = start_frame(out, byte1, remaining);
    put_field(out, p.topic.as_bytes());
    if p.qos == QoS::AtLeastOnce {
        out.put_u16(p.pkid);
    }
    if version == ProtocolVersion::V5 {
        out.put_u8(0);
    }
    out.extend_from_slice(p.payload);
    Ok(total)
}

/// CONNECT. Written by this module rather than `mqttbytes::Connect::write`, which corrupts a
/// non-empty buffer (B5) and cannot express an empty user name or password (its `Login` treats
/// "" as absent). Only relative writes after validation, so appending to existing bytes is safe.
fn encode_connect(
    c: &Connect,
    version: ProtocolVersion,
    out: &mut BytesMut,
    max_remaining: usize,
) -> Result<usize, EncodeError> {
    let mut remaining = 2 + 4 + 1 + 1 + 2; // "MQTT", level, flags, keep alive
    if version == ProtocolVersion::V5 {
        remaining += 1; // empty property block
    }
    remaining += check_field("client id", &c.client_id)?;
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(username) = &c.username {
        remaining += check_field("username", username)?;
        flags |= 0x80;
    }
    if let Some(password) = &c.password {
        remaining += check_field("password", password)?;
        flags |= 0x40;
    }
    if version == ProtocolVersion::V311 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::NotInVersion {
            field: "password without username",
        });
    }
    check_remaining(remaining, max_remaining)?;
    let total = start_frame(out, 0x10, remaining);
    put_field(out, b"MQTT");
    out.put_u8(match version {
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    });
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if version == ProtocolVersion::V5 {
        out.put_u8(0);
    }
    put_field(out, c.client_id.as_bytes());
    if let Some(username) = &c.username {
        put_field(out, username.as_bytes());
    }
    if let Some(password) = &c.password {
        put_field(out, password.as_bytes());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::{V311, V5};

    const MAX: usize = 65_536;

    /// Decode from `bytes`; returns the result and the number of bytes left in the buffer.
    fn dec(bytes: &[u8], version: ProtocolVersion) -> (Result<Option<Packet>, DecodeError>, usize) {
        dec_max(bytes, version, MAX)
    }

    fn dec_max(
        bytes: &[u8],
        version: ProtocolVersion,
        max: usize,
    ) -> (Result<Option<Packet>, DecodeError>, usize) {
        let mut buf = BytesMut::from(bytes);
        let result = decode(&mut buf, version, max);
        (result, buf.len())
    }

    #[test]
    fn the_short_puback_path_decodes_as_the_general_path() {
        // Every packet id, with nothing or another packet after it, both versions, and a
        // limit below the body's two bytes; plus the PUBACK shapes it must leave alone.
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for pkid in 0..=u16::MAX {
            let [hi, lo] = pkid.to_be_bytes();
            inputs.push(vec![0x40, 0x02, hi, lo]);
            if pkid % 251 == 0 {
                inputs.push(vec![0x40, 0x02, hi, lo, 0x40, 0x02, lo, hi]);
                inputs.push(vec![0x40, 0x02, hi]);
                inputs.push(vec![0x40, 0x03, hi, lo, 0x10]);
                inputs.push(vec![0x41, 0x02, hi, lo]);
            }
        }
        for bytes in &inputs {
            for version in [V311, V5] {
                for max in [0, 1, 2, MAX] {
                    let mut fast = BytesMut::from(&bytes[..]);
                    let mut general = fast.clone();
                    let got = decode(&mut fast, version, max);
                    let want = decode_any(&mut general, version, max);
                    assert_eq!(got, want, "{bytes:02x?} {version:?} max {max}");
                    assert_eq!(fast, general, "{bytes:02x?} {version:?} max {max}");
                }
            }
        }
    }

    fn ok(packet: Packet) -> (Result<Option<Packet>, DecodeError>, usize) {
        (Ok(Some(packet)), 0)
    }

    fn malformed(kind: MalformedKind, left: usize) -> (Result<Option<Packet>, DecodeError>, usize) {
        (Err(DecodeError::Malformed(kind)), left)
    }

    fn enc(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
        let mut out = BytesMut::new();
        let n = encode(packet, version, &mut out, MAX)?;
        assert_eq!(n, out.len());
        Ok(out.to_vec())
    }

    /// Encoding must fail and leave a non-empty buffer untouched.
    fn enc_err(packet: &Packet, version: ProtocolVersion, max: usize) -> EncodeError {
        let mut out = BytesMut::from(&b"\xc0\x00"[..]);
        let result = encode(packet, version, &mut out, max);
        assert_eq!(&out[..], b"\xc0\x00", "buffer modified on error");
        match result {
            Err(e) => e,
            Ok(n) => panic!("expected an error, wrote {n} bytes"),
        }
    }

    fn publish(topic: &str, payload: &'static [u8], qos: QoS, pkid: u16) -> Packet {
        Packet::Publish(Publish {
            topic: topic.to_owned(),
            payload: Bytes::from_static(payload),
            qos,
            dup: false,
            retain: false,
            pkid,
        })
    }

    fn connect(username: Option<&str>, password: Option<&str>) -> Packet {
        Packet::Connect(Connect {
            client_id: "c".to_owned(),
            keep_alive: 60,
            clean_session: true,
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
        })
    }

    // ---- 1. framing ---------------------------------------------------------------------------

    #[test]
    fn incomplete_frames_are_none_and_untouched() {
        for v in [V311, V5] {
            assert_eq!(dec(b"", v), (Ok(None), 0));
            assert_eq!(dec(b"\x30", v), (Ok(None), 1));
            assert_eq!(dec(b"\x30\xff", v), (Ok(None), 2));
            assert_eq!(dec(b"\x30\xff\xff\xff", v), (Ok(None), 4));
            assert_eq!(dec(b"\x30\x0a\x00", v), (Ok(None), 3));
            assert_eq!(dec(b"\xe0", v), (Ok(None), 1));
        }
    }

    #[test]
    fn oversized_frame_reports_frame_len_and_consumes_nothing() {
        // 0xff 0xff 0x03 = 65,535 remaining, 4-byte fixed header.
        let too_large = |frame_len| (Err(DecodeError::TooLarge { frame_len }), 4);
        assert_eq!(
            dec_max(b"\x30\xff\xff\x03", V311, 65_534),
            too_large(65_539)
        );
        assert_eq!(
            dec_max(b"\x30\xff\xff\x03\x00\x01", V5, 65_534),
            (too_large(65_539).0, 6)
        );
        assert_eq!(dec_max(b"\x30\xff\xff\x03", V311, 65_535), (Ok(None), 4));
        // 65,536 = ThingsBoard's default limit (remaining length).
        assert_eq!(dec_max(b"\x30\x80\x80\x04", V5, 65_536), (Ok(None), 4));
        assert_eq!(dec_max(b"\x30\x80\x80\x04", V5, 65_535), too_large(65_540));
        // 2-byte and 5-byte fixed headers.
        assert_eq!(
            dec_max(b"\x30\x81\x01", V311, 100),
            (Err(DecodeError::TooLarge { frame_len: 132 }), 3)
        );
        assert_eq!(
            dec_max(b"\x30\x80\x80\x80\x01", V311, MAX),
            (
                Err(DecodeError::TooLarge {
                    frame_len: 2_097_157
                }),
                5
            )
        );
        assert_eq!(
            dec_max(b"\x30\xff\xff\xff\x7f", V311, MAX),
            (
                Err(DecodeError::TooLarge {
                    frame_len: 268_435_460
                }),
                5
            )
        );
    }

    #[test]
    fn invalid_fixed_header_is_malformed_and_consumes_nothing() {
        for v in [V311, V5] {
            assert_eq!(
                dec(b"\x30\xff\xff\xff\xff\x7f", v),
                malformed(MalformedKind::RemainingLength, 6)
            );
            assert_eq!(
                dec(b"\x00\x00", v),
                malformed(MalformedKind::ReservedPacketType(0), 2)
            );
            assert_eq!(
                dec(b"\xf0\x00", v),
                malformed(MalformedKind::ReservedPacketType(15), 2)
            );
            assert_eq!(
                dec(b"\xf0", v),
                malformed(MalformedKind::ReservedPacketType(15), 1)
            );
        }
    }

    #[test]
    fn error_after_complete_frame_is_malformed_and_consumes_the_frame() {
        // v5 SUBACK without property length: mqttbytes would say InsufficientBytes(1).
        assert_eq!(
            dec(b"\x90\x02\x00\x01", V5),
            malformed(MalformedKind::Truncated, 0)
        );
        assert_eq!(
            dec(b"\x90\x02\x00\x01\xc0\x00", V5),
            malformed(MalformedKind::Truncated, 2)
        );
        // v5 PUBLISH without property length.
        assert_eq!(
            dec(b"\x30\x03\x00\x01\x61", V5),
            malformed(MalformedKind::Truncated, 0)
        );
        // Topic length runs past the frame.
        assert_eq!(
            dec(b"\x30\x03\x00\x05\x61\xc0\x00", V311),
            malformed(MalformedKind::Truncated, 2)
        );
        // Wrong fixed-header flags.
        assert_eq!(
            dec(b"\x80\x06\x00\x01\x00\x01\x61\x00", V311),
            malformed(MalformedKind::Flags(0x80), 0)
        );
        assert_eq!(
            dec(b"\xc1\x00", V311),
            malformed(MalformedKind::Flags(0xc1), 0)
        );
        // PINGRESP with a body.
        assert_eq!(
            dec(b"\xd0\x01\x00", V5),
            malformed(MalformedKind::TrailingBytes, 0)
        );
        // The next frame is still decodable.
        let mut buf = BytesMut::from(&b"\x90\x02\x00\x01\xd0\x00"[..]);
        assert!(matches!(
            decode(&mut buf, V5, MAX),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PingResp)));
        assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
    }

    // ---- 2./3. DISCONNECT ----------------------------------------------------------------------

    #[test]
    fn v5_disconnect_short_forms_b1_b2() {
        let disc = |code| ok(Packet::Disconnect(Disconnect { code }));
        assert_eq!(dec(b"\xe0\x00", V5), disc(0));
        assert_eq!(dec(b"\xe0\x01\x8e", V5), disc(0x8e));
        assert_eq!(dec(b"\xe0\x02\x8e\x00", V5), disc(0x8e));
        // Reason string property "hi".
        assert_eq!(dec(b"\xe0\x07\x98\x05\x1f\x00\x02hi", V5), disc(0x98));
        // Code outside any table.
        assert_eq!(dec(b"\xe0\x01\x42", V5), disc(0x42));
        // Property length running past the frame.
        assert_eq!(
            dec(b"\xe0\x02\x8e\x05", V5),
            malformed(MalformedKind::Truncated, 0)
        );
    }

    #[test]
    fn v3_disconnect() {
        assert_eq!(
            dec(b"\xe0\x00", V311),
            ok(Packet::Disconnect(Disconnect { code: 0 }))
        );
        assert_eq!(
            dec(b"\xe0\x01\x8e", V311),
            malformed(MalformedKind::TrailingBytes, 0)
        );
    }

    // ---- 4./5. inbound PUBLISH -----------------------------------------------------------------

    #[test]
    fn publish_qos1_with_packet_id_zero_decodes() {
        let expected = ok(publish("a/b", b"hi", QoS::AtLeastOnce, 0));
        assert_eq!(dec(b"\x32\x09\x00\x03a/b\x00\x00hi", V311), expected);
        assert_eq!(dec(b"\x32\x0a\x00\x03a/b\x00\x00\x00hi", V5), expected);
        // v5 with a property (payload format indicator) that must not end up in the payload.
        assert_eq!(
            dec(b"\x32\x0c\x00\x03a/b\x00\x00\x02\x01\x01hi", V5),
            expected
        );
        // Flags are kept.
        let Packet::Publish(mut p) = publish("a/b", b"hi", QoS::AtLeastOnce, 0) else {
            unreachable!()
        };
        p.dup = true;
        p.retain = true;
        assert_eq!(
            dec(b"\x3b\x09\x00\x03a/b\x00\x00hi", V311),
            ok(Packet::Publish(p))
        );
        // Truncated packet id.
        assert_eq!(
            dec(b"\x32\x06\x00\x03a/b\x00", V311),
            malformed(MalformedKind::Truncated, 0)
        );
    }

    #[test]
    fn publish_decodes_normally() {
        assert_eq!(
            dec(b"\x32\x09\x00\x03a/b\x00\x07hi", V311),
            ok(publish("a/b", b"hi", QoS::AtLeastOnce, 7))
        );
        assert_eq!(
            dec(b"\x30\x07\x00\x03a/bhi", V311),
            ok(publish("a/b", b"hi", QoS::AtMostOnce, 0))
        );
        assert_eq!(
            dec(b"\x30\x08\x00\x03a/b\x00hi", V5),
            ok(publish("a/b", b"hi", QoS::AtMostOnce, 0))
        );
        assert_eq!(
            dec(b"\x30\x07\x00\x03a/\xffhi", V311),
            malformed(MalformedKind::NotUtf8, 0)
        );
    }

    #[test]
    fn qos2_and_qos3_are_malformed() {
        for v in [V311, V5] {
            assert_eq!(
                dec(b"\x34\x0a\x00\x03a/b\x00\x07\x00hi", v),
                malformed(MalformedKind::QoS2, 0)
            );
            assert_eq!(
                dec(b"\x34\x0a\x00\x03a/b\x00\x00\x00hi", v),
                malformed(MalformedKind::QoS2, 0)
            );
            assert_eq!(
                dec(b"\x36\x0a\x00\x03a/b\x00\x07\x00hi", v),
                malformed(MalformedKind::InvalidQoS, 0)
            );
            assert_eq!(
                dec(b"\x50\x02\x00\x01", v),
                malformed(MalformedKind::QoS2Flow(5), 0)
            );
            assert_eq!(
                dec(b"\x62\x02\x00\x01", v),
                malformed(MalformedKind::QoS2Flow(6), 0)
            );
            assert_eq!(
                dec(b"\x70\x02\x00\x01", v),
                malformed(MalformedKind::QoS2Flow(7), 0)
            );
            // QoS 2 subscription.
            assert!(matches!(
                dec(b"\x82\x07\x00\x01\x00\x01a\x02\x00", v).0,
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    // ---- 6. CONNACK / PUBACK with raw codes ----------------------------------------------------

    #[test]
    fn v5_connack_codes_are_raw() {
        let connack = |session_present, code| {
            ok(Packet::ConnAck(ConnAck {
                session_present,
                code,
            }))
        };
        assert_eq!(dec(b"\x20\x03\x00\x00\x00", V5), connack(false, 0));
        assert_eq!(dec(b"\x20\x03\x00\x86\x00", V5), connack(false, 0x86));
        assert_eq!(dec(b"\x20\x03\x01\x87\x00", V5), connack(true, 0x87));
        assert_eq!(dec(b"\x20\x03\x00\x42\x00", V5), connack(false, 0x42));
        // With a property (receive maximum = 10), and without property length (mqttbytes B4).
        assert_eq!(
            dec(b"\x20\x06\x00\x00\x03\x21\x00\x0a", V5),
            connack(false, 0)
        );
        assert_eq!(dec(b"\x20\x02\x00\x00", V5), connack(false, 0));
        assert_eq!(
            dec(b"\x20\x03\x02\x00\x00", V5),
            malformed(MalformedKind::ConnAckFlags, 0)
        );
    }

    #[test]
    fn v3_connack() {
        let connack = |session_present, code| {
            ok(Packet::ConnAck(ConnAck {
                session_present,
                code,
            }))
        };
        assert_eq!(dec(b"\x20\x02\x00\x05", V311), connack(false, 5));
        assert_eq!(dec(b"\x20\x02\x01\x00", V311), connack(true, 0));
        assert_eq!(
            dec(b"\x20\x03\x00\x00\x00", V311),
            malformed(MalformedKind::TrailingBytes, 0)
        );
        assert_eq!(
            dec(b"\x20\x01\x00", V311),
            malformed(MalformedKind::Truncated, 0)
        );
    }

    #[test]
    fn puback_forms() {
        let puback = |pkid, code| ok(Packet::PubAck(PubAck { pkid, code }));
        assert_eq!(dec(b"\x40\x02\x00\x01", V5), puback(1, 0));
        assert_eq!(dec(b"\x40\x03\x00\x01\x10", V5), puback(1, 0x10));
        assert_eq!(dec(b"\x40\x04\x00\x01\x99\x00", V5), puback(1, 0x99));
        assert_eq!(dec(b"\x40\x03\x00\x01\x42", V5), puback(1, 0x42));
        assert_eq!(
            dec(b"\x40\x08\x00\x01\x97\x04\x1f\x00\x01x", V5),
            puback(1, 0x97)
        );
        assert_eq!(dec(b"\x40\x02\xff\xff", V311), puback(0xffff, 0));
        assert_eq!(dec(b"\x40\x02\x00\x00", V311), puback(0, 0));
        assert_eq!(
            dec(b"\x40\x03\x00\x01\x10", V311),
            malformed(MalformedKind::TrailingBytes, 0)
        );
    }

    #[test]
    fn suback_unsuback_codes_are_raw() {
        let suback = |codes: &[u8]| {
            ok(Packet::SubAck(SubAck {
                pkid: 1,
                codes: codes.to_vec(),
            }))
        };
        assert_eq!(dec(b"\x90\x04\x00\x01\x01\x80", V311), suback(&[1, 0x80]));
        assert_eq!(dec(b"\x90\x05\x00\x01\x00\x01\x8f", V5), suback(&[1, 0x8f]));
        assert_eq!(dec(b"\x90\x04\x00\x01\x00\x42", V5), suback(&[0x42]));
        assert_eq!(
            dec(b"\x90\x02\x00\x01", V311),
            malformed(MalformedKind::EmptyList, 0)
        );
        assert_eq!(
            dec(b"\xb0\x02\x00\x01", V311),
            ok(Packet::UnsubAck(UnsubAck {
                pkid: 1,
                codes: vec![]
            }))
        );
        assert_eq!(
            dec(b"\xb0\x05\x00\x01\x00\x00\x11", V5),
            ok(Packet::UnsubAck(UnsubAck {
                pkid: 1,
                codes: vec![0, 0x11]
            }))
        );
        assert_eq!(
            dec(b"\xb0\x03\x00\x01\x00", V5),
            malformed(MalformedKind::EmptyList, 0)
        );
    }

    // ---- 7./8./9. encoding ---------------------------------------------------------------------

    #[test]
    fn connect_exact_bytes_and_login_flags() {
        assert_eq!(
            enc(&connect(Some("tok"), None), V311),
            Ok(b"\x10\x12\x00\x04MQTT\x04\x82\x00\x3c\x00\x01c\x00\x03tok".to_vec())
        );
        assert_eq!(
            enc(&connect(Some("tok"), None), V5),
            Ok(b"\x10\x13\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x01c\x00\x03tok".to_vec())
        );
        assert_eq!(
            enc(&connect(None, None), V311),
            Ok(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c".to_vec())
        );
        // Password Some("") sets the password flag with an empty value (mqttbytes would drop it).
        assert_eq!(
            enc(&connect(Some("u"), Some("")), V311),
            Ok(b"\x10\x12\x00\x04MQTT\x04\xc2\x00\x3c\x00\x01c\x00\x01u\x00\x00".to_vec())
        );
        // Empty username is still a username.
        assert_eq!(
            enc(&connect(Some(""), None), V311),
            Ok(b"\x10\x0f\x00\x04MQTT\x04\x82\x00\x3c\x00\x01c\x00\x00".to_vec())
        );
        // v5 allows a password without a username, v3.1.1 does not.
        assert_eq!(
            enc(&connect(None, Some("p")), V5),
            Ok(b"\x10\x11\x00\x04MQTT\x05\x42\x00\x3c\x00\x00\x01c\x00\x01p".to_vec())
        );
        assert_eq!(
            enc_err(&connect(None, Some("p")), V311, MAX),
            EncodeError::NotInVersion {
                field: "password without username"
            }
        );
    }

    #[test]
    fn connect_after_existing_bytes_round_trips_b5() {
        for v in [V311, V5] {
            for packet in [
                connect(Some("tok"), None),
                connect(Some("u"), Some("")),
                connect(None, None),
            ] {
                let mut buf = BytesMut::from(&b"\xc0\x00\xd0\x00"[..]);
                let n = encode(&packet, v, &mut buf, MAX);
                assert_eq!(n, Ok(buf.len() - 4));
                assert_eq!(&buf[..4], b"\xc0\x00\xd0\x00");
                assert_eq!(decode(&mut buf, v, MAX), Ok(Some(Packet::PingReq)));
                assert_eq!(decode(&mut buf, v, MAX), Ok(Some(Packet::PingResp)));
                assert_eq!(decode(&mut buf, v, MAX), Ok(Some(packet.clone())));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn long_strings_are_rejected_before_writing_b6() {
        let long = "x".repeat(65_536);
        let too_long = |field| EncodeError::StringTooLong { field, len: 65_536 };
        for v in [V311, V5] {
            let p = Packet::Publish(Publish {
                topic: long.clone(),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                dup: false,
                retain: false,
                pkid: 0,
            });
            assert_eq!(enc_err(&p, v, usize::MAX), too_long("topic"));
            let c = |id: &str, u: Option<&str>, pw: Option<&str>| {
                Packet::Connect(Connect {
                    client_id: id.to_owned(),
                    keep_alive: 0,
                    clean_session: true,
                    username: u.map(str::to_owned),
                    password: pw.map(str::to_owned),
                })
            };
            assert_eq!(
                enc_err(&c(&long, None, None), v, usize::MAX),
                too_long("client id")
            );
            assert_eq!(
                enc_err(&c("c", Some(&long), None), v, usize::MAX),
                too_long("username")
            );
            assert_eq!(
                enc_err(&c("c", Some("u"), Some(&long)), v, usize::MAX),
                too_long("password")
            );
            let s = Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![(long.clone(), QoS::AtMostOnce)],
            });
            assert_eq!(enc_err(&s, v, usize::MAX), too_long("topic filter"));
            let u = Packet::Unsubscribe(Unsubscribe {
                pkid: 1,
                filters: vec!["a".to_owned(), long.clone()],
            });
            assert_eq!(enc_err(&u, v, usize::MAX), too_long("topic filter"));
        }
        // Exactly 65,535 bytes is fine.
        let max_topic = "x".repeat(65_535);
        let p = Packet::Publish(Publish {
            topic: max_topic,
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            dup: false,
            retain: false,
            pkid: 0,
        });
        let mut out = BytesMut::new();
        assert_eq!(encode(&p, V311, &mut out, usize::MAX), Ok(65_541));
        assert_eq!(decode(&mut out, V311, 65_537), Ok(Some(p)));
    }

    #[test]
    fn packet_id_zero_is_rejected_before_writing_b7() {
        for v in [V311, V5] {
            assert_eq!(
                enc_err(&publish("a/b", b"x", QoS::AtLeastOnce, 0), v, MAX),
                EncodeError::PacketIdZero
            );
            let s = Packet::Subscribe(Subscribe {
                pkid: 0,
                filters: vec![("a".to_owned(), QoS::AtLeastOnce)],
            });
            assert_eq!(enc_err(&s, v, MAX), EncodeError::PacketIdZero);
            let u = Packet::Unsubscribe(Unsubscribe {
                pkid: 0,
                filters: vec!["a".to_owned()],
            });
            assert_eq!(enc_err(&u, v, MAX), EncodeError::PacketIdZero);
            // pkid is irrelevant at QoS 0.
            assert!(enc(&publish("a/b", b"x", QoS::AtMostOnce, 0), v).is_ok());
            // Acks may carry 0 (answering ThingsBoard's wrapped id).
            assert!(enc(&Packet::PubAck(PubAck { pkid: 0, code: 0 }), v).is_ok());
        }
    }

    #[test]
    fn too_large_and_invalid_topics_are_rejected_before_writing() {
        // v3 QoS 1: remaining = 2 + 3 + 2 + payload.
        let p = Packet::Publish(Publish {
            topic: "a/b".to_owned(),
            payload: Bytes::from(vec![0u8; 65_530]),
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid: 1,
        });
        assert_eq!(
            enc_err(&p, V311, 65_536),
            EncodeError::TooLarge {
                remaining: 65_537,
                max: 65_536
            }
        );
        assert_eq!(
            enc_err(&p, V5, 65_537),
            EncodeError::TooLarge {
                remaining: 65_538,
                max: 65_537
            }
        );
        let mut out = BytesMut::new();
        assert_eq!(encode(&p, V311, &mut out, 65_537), Ok(65_541));
        // MQTT's own limit applies whatever the caller says.
        let huge = Packet::SubAck(SubAck {
            pkid: 1,
            codes: vec![0; MAX_VARINT],
        });
        assert_eq!(
            enc_err(&huge, V311, usize::MAX),
            EncodeError::TooLarge {
                remaining: MAX_VARINT + 2,
                max: MAX_VARINT
            }
        );
        for topic in ["", "a/+", "a/#", "#", "a\0b"] {
            for v in [V311, V5] {
                assert_eq!(
                    enc_err(&publish(topic, b"", QoS::AtMostOnce, 0), v, MAX),
                    EncodeError::InvalidTopic
                );
            }
        }
        for filter in ["", "a\0"] {
            let s = Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![(filter.to_owned(), QoS::AtMostOnce)],
            });
            assert_eq!(enc_err(&s, V5, MAX), EncodeError::InvalidFilter);
        }
        let s = Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![],
        });
        assert_eq!(enc_err(&s, V311, MAX), EncodeError::EmptyList);
        let u = Packet::Unsubscribe(Unsubscribe {
            pkid: 1,
            filters: vec![],
        });
        assert_eq!(enc_err(&u, V5, MAX), EncodeError::EmptyList);
        let sa = Packet::SubAck(SubAck {
            pkid: 1,
            codes: vec![],
        });
        assert_eq!(enc_err(&sa, V5, MAX), EncodeError::EmptyList);
        let ua = Packet::UnsubAck(UnsubAck {
            pkid: 1,
            codes: vec![],
        });
        assert_eq!(enc_err(&ua, V5, MAX), EncodeError::EmptyList);
        let ua = Packet::UnsubAck(UnsubAck {
            pkid: 1,
            codes: vec![0],
        });
        assert_eq!(
            enc_err(&ua, V311, MAX),
            EncodeError::NotInVersion {
                field: "UNSUBACK reason codes"
            }
        );
        let pa = Packet::PubAck(PubAck {
            pkid: 1,
            code: 0x10,
        });
        assert_eq!(
            enc_err(&pa, V311, MAX),
            EncodeError::NotInVersion {
                field: "PUBACK reason code"
            }
        );
        let d = Packet::Disconnect(Disconnect { code: 0x8e });
        assert_eq!(
            enc_err(&d, V311, MAX),
            EncodeError::NotInVersion {
                field: "DISCONNECT reason code"
            }
        );
    }

    #[test]
    fn publish_exact_bytes_and_size() {
        let p = publish("a/b", b"hi", QoS::AtLeastOnce, 7);
        assert_eq!(enc(&p, V311), Ok(b"\x32\x09\x00\x03a/b\x00\x07hi".to_vec()));
        assert_eq!(
            enc(&p, V5),
            Ok(b"\x32\x0a\x00\x03a/b\x00\x07\x00hi".to_vec())
        );
        assert_eq!(publish_size(V311, 3, 2, QoS::AtLeastOnce), 11);
        assert_eq!(publish_size(V5, 3, 2, QoS::AtLeastOnce), 12);
        let Packet::Publish(mut q) = publish("a/b", b"hi", QoS::AtMostOnce, 0) else {
            unreachable!()
        };
        q.dup = true;
        q.retain = true;
        assert_eq!(
            enc(&Packet::Publish(q), V311),
            Ok(b"\x39\x07\x00\x03a/bhi".to_vec())
        );
        assert_eq!(publish_size(V311, 3, 2, QoS::AtMostOnce), 9);
        // Remaining length 128 needs two length bytes.
        assert_eq!(publish_size(V311, 1, 125, QoS::AtMostOnce), 131);
        assert_eq!(publish_size(V311, 1, 124, QoS::AtMostOnce), 129);
        // Absurd sizes saturate instead of overflowing.
        assert_eq!(
            publish_size(V5, usize::MAX, usize::MAX, QoS::AtLeastOnce),
            usize::MAX
        );
        // Appends after existing bytes, writing straight into `out`.
        let mut out = BytesMut::from(&b"xy"[..]);
        assert_eq!(encode(&p, V311, &mut out, MAX), Ok(11));
        assert_eq!(&out[..], b"xy\x32\x09\x00\x03a/b\x00\x07hi");
    }

    #[test]
    fn other_packets_exact_bytes() {
        let cases: Vec<(Packet, &[u8], &[u8])> = vec![
            (
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    code: 0x86,
                }),
                b"\x20\x02\x01\x86",
                b"\x20\x03\x01\x86\x00",
            ),
            (
                Packet::PubAck(PubAck { pkid: 1, code: 0 }),
                b"\x40\x02\x00\x01",
                b"\x40\x04\x00\x01\x00\x00",
            ),
            (
                Packet::Subscribe(Subscribe {
                    pkid: 1,
                    filters: vec![("a/b".to_owned(), QoS::AtLeastOnce)],
                }),
                b"\x82\x08\x00\x01\x00\x03a/b\x01",
                b"\x82\x09\x00\x01\x00\x00\x03a/b\x01",
            ),
            (
                Packet::SubAck(SubAck {
                    pkid: 1,
                    codes: vec![1, 0x80],
                }),
                b"\x90\x04\x00\x01\x01\x80",
                b"\x90\x05\x00\x01\x00\x01\x80",
            ),
            (
                Packet::Unsubscribe(Unsubscribe {
                    pkid: 2,
                    filters: vec!["a".to_owned()],
                }),
                b"\xa2\x05\x00\x02\x00\x01a",
                b"\xa2\x06\x00\x02\x00\x00\x01a",
            ),
            (Packet::PingReq, b"\xc0\x00", b"\xc0\x00"),
            (Packet::PingResp, b"\xd0\x00", b"\xd0\x00"),
            (
                Packet::Disconnect(Disconnect { code: 0 }),
                b"\xe0\x00",
                b"\xe0\x02\x00\x00",
            ),
        ];
        for (packet, v3, v5) in cases {
            assert_eq!(enc(&packet, V311), Ok(v3.to_vec()), "{packet:?}");
            assert_eq!(enc(&packet, V5), Ok(v5.to_vec()), "{packet:?}");
            assert_eq!(dec(v3, V311), ok(packet.clone()));
            assert_eq!(dec(v5, V5), ok(packet.clone()));
        }
        let ua = Packet::UnsubAck(UnsubAck {
            pkid: 1,
            codes: vec![],
        });
        assert_eq!(enc(&ua, V311), Ok(b"\xb0\x02\x00\x01".to_vec()));
        let ua = Packet::UnsubAck(UnsubAck {
            pkid: 1,
            codes: vec![0x11],
        });
        assert_eq!(enc(&ua, V5), Ok(b"\xb0\x04\x00\x01\x00\x11".to_vec()));
        let d = Packet::Disconnect(Disconnect { code: 0x8e });
        assert_eq!(enc(&d, V5), Ok(b"\xe0\x02\x8e\x00".to_vec()));
        // v5 CONNACK carries its property length (mqttbytes B4 omits it).
        let c = Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
        });
        assert_eq!(enc(&c, V5), Ok(b"\x20\x03\x00\x00\x00".to_vec()));
    }

    // ---- 10. client packets decode (for the emulator) ------------------------------------------

    #[test]
    fn client_packets_decode() {
        let c = connect(Some("tok"), None);
        assert_eq!(
            dec(
                b"\x10\x12\x00\x04MQTT\x04\x82\x00\x3c\x00\x01c\x00\x03tok",
                V311
            ),
            ok(c.clone())
        );
        assert_eq!(
            dec(
                b"\x10\x13\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x01c\x00\x03tok",
                V5
            ),
            ok(c.clone())
        );
        // v5 CONNECT with properties (session expiry 0) still decodes.
        assert_eq!(
            dec(
                b"\x10\x18\x00\x04MQTT\x05\x82\x00\x3c\x05\x11\x00\x00\x00\x00\x00\x01c\x00\x03tok",
                V5
            ),
            ok(c.clone())
        );
        // A will is skipped.
        assert_eq!(
            dec(
                b"\x10\x19\x00\x04MQTT\x04\x8e\x00\x3c\x00\x01c\x00\x01w\x00\x02wm\x00\x03tok",
                V311
            ),
            ok(c.clone())
        );
        // Protocol level must match the connection's version.
        assert_eq!(
            dec(
                b"\x10\x12\x00\x04MQTT\x04\x82\x00\x3c\x00\x01c\x00\x03tok",
                V5
            ),
            malformed(MalformedKind::Protocol, 0)
        );
        assert_eq!(
            dec(
                b"\x10\x12\x00\x04MQTT\x05\x82\x00\x3c\x00\x01c\x00\x03tok",
                V311
            ),
            malformed(MalformedKind::Protocol, 0)
        );
        // Reserved flag bit, and v3 password without username.
        assert_eq!(
            dec(b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c", V311),
            malformed(MalformedKind::ConnectFlags, 0)
        );
        assert_eq!(
            dec(
                b"\x10\x10\x00\x04MQTT\x04\x42\x00\x3c\x00\x01c\x00\x01p",
                V311
            ),
            malformed(MalformedKind::ConnectFlags, 0)
        );
        // Subscribe / unsubscribe / pingreq.
        let s = Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![
                ("a/b".to_owned(), QoS::AtLeastOnce),
                ("c".to_owned(), QoS::AtMostOnce),
            ],
        });
        assert_eq!(
            dec(b"\x82\x0c\x00\x01\x00\x03a/b\x01\x00\x01c\x00", V311),
            ok(s.clone())
        );
        assert_eq!(
            dec(b"\x82\x0d\x00\x01\x00\x00\x03a/b\x01\x00\x01c\x00", V5),
            ok(s)
        );
        assert_eq!(
            dec(b"\x82\x06\x00\x00\x00\x01a\x00", V311),
            malformed(MalformedKind::PacketIdZero, 0)
        );
        assert_eq!(
            dec(b"\x82\x02\x00\x01", V311),
            malformed(MalformedKind::EmptyList, 0)
        );
        let u = Packet::Unsubscribe(Unsubscribe {
            pkid: 3,
            filters: vec!["a".to_owned(), "bc".to_owned()],
        });
        assert_eq!(
            dec(b"\xa2\x09\x00\x03\x00\x01a\x00\x02bc", V311),
            ok(u.clone())
        );
        assert_eq!(dec(b"\xa2\x0a\x00\x03\x00\x00\x01a\x00\x02bc", V5), ok(u));
        assert_eq!(
            dec(b"\xa2\x03\x00\x03\x00", V5),
            malformed(MalformedKind::EmptyList, 0)
        );
        assert_eq!(
            dec(b"\xa2\x05\x00\x00\x00\x01a", V311),
            malformed(MalformedKind::PacketIdZero, 0)
        );
        for v in [V311, V5] {
            assert_eq!(dec(b"\xc0\x00", v), ok(Packet::PingReq));
        }
    }

    #[test]
    fn errors_display() {
        let e = DecodeError::Malformed(MalformedKind::Truncated);
        assert_eq!(
            e.to_string(),
            "malformed packet: field runs past the end of the packet"
        );
        let e = DecodeError::TooLarge { frame_len: 70_000 };
        assert!(e.to_string().contains("70000"));
        let e: Box<dyn std::error::Error> = Box::new(EncodeError::StringTooLong {
            field: "topic",
            len: 70_000,
        });
        assert!(e.to_string().contains("topic"));
    }

    // ---- server-side helpers ------------------------------------------------------------------

    #[test]
    fn decode_connect_sniffs_the_protocol_level() {
        let v3 = b"\x10\x12\x00\x04MQTT\x04\x82\x00\x3c\x00\x01c\x00\x03tok";
        let v5 = b"\x10\x13\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x01c\x00\x03tok";
        let Packet::Connect(c) = connect(Some("tok"), None) else {
            unreachable!()
        };
        for (bytes, version) in [(&v3[..], V311), (&v5[..], V5)] {
            let mut buf = BytesMut::from(bytes);
            buf.extend_from_slice(b"\xc0\x00");
            assert_eq!(
                decode_first_connect(&mut buf, MAX),
                Ok(Some((version, c.clone())))
            );
            assert_eq!(&buf[..], b"\xc0\x00");
            // Every strict prefix is incomplete and untouched.
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(decode_first_connect(&mut buf, MAX), Ok(None), "cut {cut}");
                assert_eq!(buf.len(), cut);
            }
        }
    }

    #[test]
    fn decode_connect_rejects_other_levels_and_packets() {
        // MQTT 3.1 (level 3, "MQIsdp") and level 6: consumed, Protocol.
        let mut buf =
            BytesMut::from(&b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c\x00\x01x"[..]);
        assert_eq!(
            decode_first_connect(&mut buf, MAX),
            Err(DecodeError::Malformed(MalformedKind::Protocol))
        );
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01c"[..]);
        assert_eq!(
            decode_first_connect(&mut buf, MAX),
            Err(DecodeError::Malformed(MalformedKind::Protocol))
        );
        // A PINGREQ first: not consumed.
        let mut buf = BytesMut::from(&b"\xc0\x00"[..]);
        assert_eq!(
            decode_first_connect(&mut buf, MAX),
            Err(DecodeError::Malformed(MalformedKind::ExpectedConnect(12)))
        );
        assert_eq!(buf.len(), 2);
        // Too large: as `decode`.
        let mut buf = BytesMut::from(&b"\x10\xff\xff\x03"[..]);
        assert_eq!(
            decode_first_connect(&mut buf, 100),
            Err(DecodeError::TooLarge { frame_len: 65_539 })
        );
        // Truncated name inside a complete frame.
        let mut buf = BytesMut::from(&b"\x10\x02\x00\x04"[..]);
        assert_eq!(
            decode_first_connect(&mut buf, MAX),
            Err(DecodeError::Malformed(MalformedKind::Protocol))
        );
    }

    #[test]
    fn publish_with_packet_id_zero_only_on_opt_in() {
        let p = PublishRef {
            topic: "a/b",
            payload: b"hi",
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid: 0,
        };
        let mut out = BytesMut::new();
        assert_eq!(
            encode_publish(&p, V311, &mut out, MAX),
            Err(EncodeError::PacketIdZero)
        );
        assert!(out.is_empty());
        for v in [V311, V5] {
            let mut out = BytesMut::new();
            let n = encode_publish_allowing_pkid_zero(&p, v, &mut out, MAX).unwrap();
            assert_eq!(n, out.len());
            let mut buf = out.clone();
            assert_eq!(
                decode(&mut buf, v, MAX),
                Ok(Some(publish("a/b", b"hi", QoS::AtLeastOnce, 0)))
            );
        }
        let mut out = BytesMut::new();
        encode_publish_allowing_pkid_zero(&p, V311, &mut out, MAX).unwrap();
        assert_eq!(&out[..], b"\x32\x09\x00\x03a/b\x00\x00hi");
    }
}
