//! QoS 2 the way ThingsBoard handles it, on raw frames before the shared codec sees them (the
//! codec, written for the client, refuses QoS 2 outright).
//!
//! ThingsBoard's transport never speaks the QoS 2 flow (§5): a QoS 2 PUBLISH is processed like a
//! QoS 1 one and answered with a PUBACK (MTH `processPublish` acks every packet id > 0); a QoS 2
//! subscription is granted QoS 1 (`getMinSupportedQos`); PUBREC, PUBREL and PUBCOMP from a client
//! are ignored (no case for them in MTH `processRegularSessionMsg`).
//!
//! [`adapt_front_frame`] looks at the first frame of the receive buffer once it is complete:
//! it lowers QoS 2 to QoS 1 in a PUBLISH's fixed header and in a SUBSCRIBE's options bytes, and
//! removes a PUBREC/PUBREL/PUBCOMP frame. Anything it does not understand is left for the
//! codec to judge.

use bytes::{Buf, BytesMut};
use gateway_proto::ProtocolVersion;

const PUBLISH: u8 = 3;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;

/// What [`adapt_front_frame`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adapted {
    /// The frame (if any) is left for the codec, possibly with QoS 2 lowered to 1.
    Keep,
    /// A QoS 2 flow packet was removed from the buffer.
    Dropped,
}

/// Fixed-header length and remaining length of the first frame, if its header is complete
/// and well formed.
fn frame_header(buf: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, remaining));
        }
    }
    None
}

/// Adapts the first frame of `buf` (see the module docs). `max_remaining` is the packet size
/// limit: a larger frame is left alone for the codec to refuse.
pub(crate) fn adapt_front_frame(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_remaining: usize,
) -> Adapted {
    let Some(&byte1) = buf.first() else {
        return Adapted::Keep;
    };
    let Some((header_len, remaining)) = frame_header(buf) else {
        return Adapted::Keep;
    };
    if remaining > max_remaining {
        return Adapted::Keep;
    }
    let frame_len = header_len.saturating_add(remaining);
    if buf.len() < frame_len {
        return Adapted::Keep;
    }
    match byte1 >> 4 {
        PUBLISH if (byte1 >> 1) & 0x03 == 2 => {
            if let Some(b) = buf.first_mut() {
                *b = (byte1 & !0x06) | 0x02;
            }
            Adapted::Keep
        }
        // PUBREL must carry flags 0b0010 (Netty refuses other flags as a decoding failure).
        PUBREC | PUBCOMP if byte1 & 0x0F == 0 => {
            buf.advance(frame_len);
            Adapted::Dropped
        }
        PUBREL if byte1 & 0x0F == 0x02 => {
            buf.advance(frame_len);
            Adapted::Dropped
        }
        SUBSCRIBE => {
            if let Some(frame) = buf.get_mut(header_len..frame_len) {
                lower_subscription_qos(frame, version);
            }
            Adapted::Keep
        }
        _ => Adapted::Keep,
    }
}

/// Lowers every QoS 2 request of a SUBSCRIBE body to QoS 1, if the body walks cleanly.
fn lower_subscription_qos(body: &mut [u8], version: ProtocolVersion) {
    let mut at = 2; // packet id
    if version == ProtocolVersion::V5 {
        let Some((len_bytes, props)) = varint(body.get(at..).unwrap_or_default()) else {
            return;
        };
        at = at.saturating_add(len_bytes).saturating_add(props);
    }
    let mut options = Vec::new();
    while at < body.len() {
        let (Some(&hi), Some(&lo)) = (body.get(at), body.get(at + 1)) else {
            return;
        };
        let opt = at + 2 + usize::from(u16::from_be_bytes([hi, lo]));
        if opt >= body.len() {
            return;
        }
        options.push(opt);
        at = opt + 1;
    }
    for opt in options {
        if let Some(b) = body.get_mut(opt) {
            if *b & 0x03 == 2 {
                *b = (*b & !0x03) | 0x01;
            }
        }
    }
}

/// A variable byte integer: (bytes used, value).
fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *b.get(i)?;
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((i + 1, value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::ProtocolVersion::{V311, V5};

    fn adapt(bytes: &[u8], version: ProtocolVersion) -> (Adapted, Vec<u8>) {
        let mut buf = BytesMut::from(bytes);
        let a = adapt_front_frame(&mut buf, version, 65_536);
        (a, buf.to_vec())
    }

    #[test]
    fn qos2_publish_becomes_qos1() {
        // PUBLISH QoS 2, retain: topic "a", id 7, payload "x".
        let frame = [0x35, 0x06, 0x00, 0x01, b'a', 0x00, 0x07, b'x'];
        let (a, out) = adapt(&frame, V311);
        assert_eq!(a, Adapted::Keep);
        assert_eq!(out[0], 0x33);
        assert_eq!(&out[1..], &frame[1..]);
        // QoS 1 and QoS 0 are untouched; an incomplete frame waits.
        assert_eq!(
            adapt(&[0x32, 0x06, 0, 1, b'a', 0, 7, b'x'], V311).1[0],
            0x32
        );
        assert_eq!(adapt(&[0x34, 0x06, 0, 1], V311).1[0], 0x34);
    }

    #[test]
    fn qos2_flow_packets_are_dropped() {
        let (a, out) = adapt(&[0x50, 0x02, 0x00, 0x01, 0xC0, 0x00], V311);
        assert_eq!((a, out), (Adapted::Dropped, vec![0xC0, 0x00]));
        assert_eq!(adapt(&[0x62, 0x02, 0, 1], V5).0, Adapted::Dropped);
        assert_eq!(adapt(&[0x70, 0x03, 0, 1, 0x92], V5).0, Adapted::Dropped);
        // Wrong PUBREL flags stay for the codec to refuse.
        assert_eq!(adapt(&[0x60, 0x02, 0, 1], V5).0, Adapted::Keep);
        // Incomplete: wait.
        assert_eq!(adapt(&[0x50, 0x02, 0x00], V311).0, Adapted::Keep);
    }

    #[test]
    fn qos2_subscriptions_become_qos1() {
        // v3.1.1 SUBSCRIBE id 1: "a" QoS 2, "b" QoS 0.
        let frame = [0x82, 0x0A, 0, 1, 0, 1, b'a', 2, 0, 1, b'b', 0];
        let (_, out) = adapt(&frame, V311);
        assert_eq!(out[7], 1);
        assert_eq!(out[11], 0);
        // v5 with a property block of 2 bytes and option flags beside QoS 2.
        let frame = [0x82, 0x0A, 0, 1, 2, 0x0B, 5, 0, 1, b'a', 0x2E];
        let mut frame = frame.to_vec();
        frame[1] = (frame.len() - 2) as u8;
        let (_, out) = adapt(&frame, V5);
        assert_eq!(out[10], 0x2D);
        // A body that does not walk is left alone.
        let frame = [0x82, 0x05, 0, 1, 0, 9, b'a'];
        assert_eq!(adapt(&frame, V311).1, frame.to_vec());
    }
}
