//! The protobuf wire format, just enough for ThingsBoard's fixed messages: varints, fixed-width
//! numbers and length-delimited fields, written in field order with proto3 defaults left out.
//!
//! Shared by [`protobuf`](super::protobuf) (device API),
//! [`gateway_protobuf`](super::gateway_protobuf) (gateway API) and
//! [`provision_protobuf`](super::provision_protobuf) (provisioning). Reading never panics: malformed
//! bytes are a [`PayloadError::InvalidProtobuf`].

use super::PayloadError;

pub(super) const WIRE_VARINT: u8 = 0;
pub(super) const WIRE_I64: u8 = 1;
pub(super) const WIRE_LEN: u8 = 2;
pub(super) const WIRE_I32: u8 = 5;

/// One field's value, as the wire gives it.
pub(super) enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 2: strings, bytes, embedded messages, packed scalars.
    Len(&'a [u8]),
    /// Wire type 1, little-endian (`double`, `fixed64`, `sfixed64`).
    I64(u64),
    /// Wire type 5 (`float`, `fixed32`, `sfixed32`): no message here has one, so only skipped.
    I32,
}

pub(super) fn invalid(reason: &'static str) -> PayloadError {
    PayloadError::InvalidProtobuf(reason)
}

/// A `string` field: proto3 requires UTF-8 (protobuf-java refuses anything else).
pub(super) fn utf8(bytes: &[u8]) -> Result<String, PayloadError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid("string field is not UTF-8"))
}

/// An `int32` (or enum) field from its varint: the low 32 bits, as protobuf-java reads it.
pub(super) fn int32(v: u64) -> i32 {
    v as u32 as i32
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// A `string` field; empty strings are the proto3 default and left out.
pub(super) fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if s.is_empty() {
        return;
    }
    put_len(out, field, s.as_bytes());
}

/// A length-delimited field, written even when empty (an embedded message that is set).
pub(super) fn put_len(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field (`uint64`, `bool`, enum as a raw number); zero is left out.
pub(super) fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, WIRE_VARINT);
        put_varint(out, v);
    }
}

/// An `int64` field: negative values are ten-byte two's-complement varints.
pub(super) fn put_int64(out: &mut Vec<u8>, field: u32, v: i64) {
    put_uint(out, field, v as u64);
}

/// An `int32` field: sign-extended to 64 bits, so negative values take ten bytes too.
pub(super) fn put_int32(out: &mut Vec<u8>, field: u32, v: i32) {
    put_int64(out, field, i64::from(v));
}

pub(super) fn put_bool(out: &mut Vec<u8>, field: u32, v: bool) {
    put_uint(out, field, u64::from(v));
}

/// A `double` field (wire type 1); left out only when its bits are zero, so `-0.0` is written
/// as protobuf-java writes it.
pub(super) fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    if v.to_bits() != 0 {
        put_key(out, field, WIRE_I64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads a varint at `*at`; at most 10 bytes.
pub(super) fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, PayloadError> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let Some(&b) = bytes.get(*at) else {
            return Err(invalid("truncated varint"));
        };
        *at += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(invalid("varint longer than 10 bytes"))
}

/// Takes `n` bytes at `*at`.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], PayloadError> {
    let end = at.checked_add(n).ok_or(invalid("length too large"))?;
    let value = bytes.get(*at..end).ok_or(invalid("truncated field"))?;
    *at = end;
    Ok(value)
}

/// Calls `f` with each field of a message, in wire order.
pub(super) fn for_each_field<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(u64, Value<'a>) -> Result<(), PayloadError>,
) -> Result<(), PayloadError> {
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let field = key >> 3;
        if field == 0 {
            return Err(invalid("field number 0"));
        }
        let value = match (key & 7) as u8 {
            WIRE_VARINT => Value::Varint(varint(bytes, &mut at)?),
            WIRE_I64 => {
                let b = take(bytes, &mut at, 8)?;
                let b = <[u8; 8]>::try_from(b).map_err(|_| invalid("truncated field"))?;
                Value::I64(u64::from_le_bytes(b))
            }
            WIRE_I32 => {
                take(bytes, &mut at, 4)?;
                Value::I32
            }
            WIRE_LEN => {
                let len = varint(bytes, &mut at)?;
                let len = usize::try_from(len).map_err(|_| invalid("length too large"))?;
                Value::Len(take(bytes, &mut at, len)?)
            }
            _ => return Err(invalid("unsupported wire type")),
        };
        f(field, value)?;
    }
    Ok(())
}
