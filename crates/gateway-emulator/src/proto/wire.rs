//! The protobuf wire format: varints, tags, fixed-width and length-delimited values, read
//! from untrusted bytes without panicking and written for the emulator's downlinks.
//!
//! Reading follows protobuf-java's `CodedInputStream` where it is observable: a varint takes
//! at most ten bytes (bits past 64 are dropped), field number 0 and wire types 6 and 7 are
//! invalid, an end-group tag must close the group that is open, and nesting is bounded (the
//! default recursion limit there is 100).

use std::fmt;

/// Deepest nesting of messages and groups accepted (protobuf-java's default recursion limit).
pub(crate) const MAX_DEPTH: usize = 100;
/// Largest field number protobuf allows (2^29 - 1).
pub(crate) const MAX_FIELD_NUMBER: u32 = (1 << 29) - 1;

/// How a field's value is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    /// 0: a varint.
    Varint,
    /// 1: eight little-endian bytes.
    Fixed64,
    /// 2: a varint length, then that many bytes.
    Len,
    /// 3: start of a (deprecated) group.
    StartGroup,
    /// 4: end of a group.
    EndGroup,
    /// 5: four little-endian bytes.
    Fixed32,
}

impl WireType {
    fn from_bits(bits: u8) -> Result<Self, WireError> {
        Ok(match bits {
            0 => Self::Varint,
            1 => Self::Fixed64,
            2 => Self::Len,
            3 => Self::StartGroup,
            4 => Self::EndGroup,
            5 => Self::Fixed32,
            other => return Err(WireError::InvalidWireType(other)),
        })
    }

    fn bits(self) -> u64 {
        match self {
            Self::Varint => 0,
            Self::Fixed64 => 1,
            Self::Len => 2,
            Self::StartGroup => 3,
            Self::EndGroup => 4,
            Self::Fixed32 => 5,
        }
    }
}

/// Why bytes are not a protobuf message (protobuf-java's `InvalidProtocolBufferException`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended inside a value.
    Truncated,
    /// A varint ran past ten bytes.
    MalformedVarint,
    /// A tag with field number 0 or above 2^29 - 1.
    InvalidTag(u64),
    /// Wire type 6 or 7.
    InvalidWireType(u8),
    /// An end-group tag that closes no open group, or a group closed by another field's tag.
    UnmatchedEndGroup,
    /// Messages or groups nested deeper than the recursion limit.
    TooDeep,
    /// A string field that is not UTF-8 (proto3 strings are checked).
    InvalidUtf8,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("the input ended in the middle of a field"),
            Self::MalformedVarint => f.write_str("malformed varint"),
            Self::InvalidTag(tag) => write!(f, "invalid tag {tag}"),
            Self::InvalidWireType(t) => write!(f, "invalid wire type {t}"),
            Self::UnmatchedEndGroup => f.write_str("end-group tag did not match"),
            Self::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH}"),
            Self::InvalidUtf8 => f.write_str("string field is not valid UTF-8"),
        }
    }
}

impl std::error::Error for WireError {}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// A varint of up to ten bytes; bits beyond 64 are dropped as protobuf-java does.
    pub(crate) fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7F).checked_shl(7 * i).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::MalformedVarint)
    }

    /// The next tag: field number and wire type.
    pub(crate) fn tag(&mut self) -> Result<(u32, WireType), WireError> {
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 || field > u64::from(MAX_FIELD_NUMBER) {
            return Err(WireError::InvalidTag(tag));
        }
        // Bounded above, so the conversion cannot fail.
        let field = u32::try_from(field).map_err(|_| WireError::InvalidTag(tag))?;
        Ok((field, WireType::from_bits((tag & 7) as u8)?))
    }

    pub(crate) fn fixed32(&mut self) -> Result<u32, WireError> {
        let bytes = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(a))
    }

    pub(crate) fn fixed64(&mut self) -> Result<u64, WireError> {
        let bytes = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(a))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    /// A length-delimited value's bytes.
    pub(crate) fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        self.take(len)
    }

    /// Skips the value of a field whose tag was just read. `depth` counts the groups and
    /// messages already open.
    pub(crate) fn skip(
        &mut self,
        field: u32,
        wire: WireType,
        depth: usize,
    ) -> Result<(), WireError> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.take(8).map(drop),
            WireType::Fixed32 => self.take(4).map(drop),
            WireType::Len => self.len_delimited().map(drop),
            WireType::StartGroup => self.skip_group(field, depth + 1),
            WireType::EndGroup => Err(WireError::UnmatchedEndGroup),
        }
    }

    /// Skips to the end-group tag of `field` (the start tag was read).
    fn skip_group(&mut self, field: u32, depth: usize) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep);
        }
        loop {
            let (f, wire) = self.tag()?;
            if wire == WireType::EndGroup {
                return if f == field {
                    Ok(())
                } else {
                    Err(WireError::UnmatchedEndGroup)
                };
            }
            self.skip(f, wire, depth)?;
        }
    }
}

/// Appends a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a tag.
pub(crate) fn put_tag(out: &mut Vec<u8>, field: u32, wire: WireType) {
    put_varint(out, (u64::from(field) << 3) | wire.bits());
}

/// Appends a length-delimited field.
pub(crate) fn put_len_delimited(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, WireType::Len);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a varint field.
pub(crate) fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_tag(out, field, WireType::Varint);
    put_varint(out, value);
}

/// ZigZag encoding of `sint32` / `sint64`.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// ZigZag decoding.
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_round_trip_and_reject_eleven_bytes() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader::new(&out).varint(), Ok(v));
        }
        assert_eq!(
            Reader::new(&[0xFF; 11]).varint(),
            Err(WireError::MalformedVarint)
        );
        assert_eq!(Reader::new(&[0x80]).varint(), Err(WireError::Truncated));
    }

    #[test]
    fn tags_reject_field_zero_and_wire_types_six_and_seven() {
        assert_eq!(Reader::new(&[0x00]).tag(), Err(WireError::InvalidTag(0)));
        assert_eq!(
            Reader::new(&[0x0E]).tag(),
            Err(WireError::InvalidWireType(6))
        );
        assert_eq!(Reader::new(&[0x08]).tag(), Ok((1, WireType::Varint)));
    }

    #[test]
    fn groups_are_skipped_and_must_match() {
        // field 1 start group, field 2 varint 5, field 1 end group.
        let mut r = Reader::new(&[0x0B, 0x10, 0x05, 0x0C]);
        let (f, w) = r.tag().unwrap();
        assert_eq!(r.skip(f, w, 0), Ok(()));
        assert!(r.is_empty());
        // Closed by field 2's end tag.
        let mut r = Reader::new(&[0x0B, 0x14]);
        let (f, w) = r.tag().unwrap();
        assert_eq!(r.skip(f, w, 0), Err(WireError::UnmatchedEndGroup));
        // Nested past the limit.
        let deep = vec![0x0B; MAX_DEPTH + 2];
        let mut r = Reader::new(&deep);
        let (f, w) = r.tag().unwrap();
        assert_eq!(r.skip(f, w, 0), Err(WireError::TooDeep));
    }

    #[test]
    fn zigzag_matches_the_spec() {
        for (v, z) in [(0i64, 0u64), (-1, 1), (1, 2), (-2, 3), (i64::MIN, u64::MAX)] {
            assert_eq!(zigzag(v), z);
            assert_eq!(unzigzag(z), v);
        }
    }

    proptest! {
        #[test]
        fn skipping_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = Reader::new(&bytes);
            while !r.is_empty() {
                let Ok((f, w)) = r.tag() else { break };
                if r.skip(f, w, 0).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn varint_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert!(out.len() <= 10);
            prop_assert_eq!(Reader::new(&out).varint(), Ok(v));
        }
    }
}
