//! Messages of a profile schema read from and written to bytes without generated code, as
//! protobuf-java's `DynamicMessage` does for ThingsBoard.
//!
//! Decoding follows `DynamicMessage.parseFrom`: unknown fields and fields whose wire type does
//! not match their declaration are skipped; a repeated numeric field takes packed and unpacked
//! values alike; the last value of a singular field wins and singular messages merge; setting
//! a `oneof` member clears the others; proto3 strings must be UTF-8; enum numbers outside the
//! enum are kept (proto3 enums are open).

use std::collections::BTreeMap;

use super::schema::{FieldDef, FieldKind, Scalar, Schema};
use super::wire::{
    put_len_delimited, put_tag, put_varint, unzigzag, zigzag, Reader, WireError, WireType,
    MAX_DEPTH,
};

/// One value of a field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DynValue {
    Bool(bool),
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    String(String),
    Bytes(Vec<u8>),
    /// An enum number (possibly not a declared value).
    Enum(i32),
    Message(DynMessage),
}

/// The fields set in a message, by field number.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct DynMessage {
    /// Singular fields hold one value, repeated fields their elements in order.
    pub(crate) fields: BTreeMap<u32, Vec<DynValue>>,
}

impl DynMessage {
    /// Decodes `bytes` as message `index` of `schema`.
    pub(crate) fn decode(schema: &Schema, index: usize, bytes: &[u8]) -> Result<Self, WireError> {
        let mut msg = Self::default();
        msg.merge(schema, index, bytes, 0)?;
        Ok(msg)
    }

    fn merge(
        &mut self,
        schema: &Schema,
        index: usize,
        bytes: &[u8],
        depth: usize,
    ) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep);
        }
        let Some(def) = schema.message(index) else {
            return Ok(());
        };
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            let (number, wire) = r.tag()?;
            let Some(field) = def.field(number) else {
                r.skip(number, wire, depth)?;
                continue;
            };
            let expected = wire_type_of(field.kind);
            if wire == expected {
                match (field.kind, field.is_repeated()) {
                    (FieldKind::Message(sub), false) => {
                        let bytes = r.len_delimited()?;
                        let mut existing =
                            match self.fields.remove(&number).and_then(|mut v| v.pop()) {
                                Some(DynValue::Message(m)) => m,
                                _ => DynMessage::default(),
                            };
                        existing.merge(schema, sub, bytes, depth + 1)?;
                        self.set(def.fields.as_slice(), field, DynValue::Message(existing));
                    }
                    (FieldKind::Message(sub), true) => {
                        let bytes = r.len_delimited()?;
                        let mut m = DynMessage::default();
                        m.merge(schema, sub, bytes, depth + 1)?;
                        self.fields
                            .entry(number)
                            .or_default()
                            .push(DynValue::Message(m));
                    }
                    (kind, repeated) => {
                        let v = read_value(&mut r, kind)?;
                        if repeated {
                            self.fields.entry(number).or_default().push(v);
                        } else {
                            self.set(def.fields.as_slice(), field, v);
                        }
                    }
                }
            } else if wire == WireType::Len && field.is_repeated() && is_packable(field.kind) {
                let mut packed = Reader::new(r.len_delimited()?);
                let values = self.fields.entry(number).or_default();
                while !packed.is_empty() {
                    values.push(read_value(&mut packed, field.kind)?);
                }
            } else {
                // A wire type that does not fit the declaration: an unknown field.
                r.skip(number, wire, depth)?;
            }
        }
        Ok(())
    }

    /// Sets a singular field, clearing the other members of its `oneof`.
    fn set(&mut self, all: &[FieldDef], field: &FieldDef, value: DynValue) {
        if let Some(oneof) = field.oneof {
            for other in all.iter().filter(|f| f.oneof == Some(oneof)) {
                self.fields.remove(&other.number);
            }
        }
        self.fields.insert(field.number, vec![value]);
    }

    /// Encodes as message `index` of `schema` the way protobuf-java's `toByteArray` does: in
    /// field-number order, proto3 fields without presence skipped at their default, repeated
    /// numeric fields packed.
    pub(crate) fn encode(&self, schema: &Schema, index: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(schema, index, &mut out, 0);
        out
    }

    fn encode_into(&self, schema: &Schema, index: usize, out: &mut Vec<u8>, depth: usize) {
        let Some(def) = schema.message(index) else {
            return;
        };
        if depth > MAX_DEPTH {
            return;
        }
        for field in &def.fields {
            let Some(values) = self.fields.get(&field.number) else {
                continue;
            };
            if field.is_repeated() && is_packable(field.kind) {
                if values.is_empty() {
                    continue;
                }
                let mut packed = Vec::new();
                for v in values {
                    write_value(&mut packed, field.kind, v);
                }
                put_len_delimited(out, field.number, &packed);
                continue;
            }
            for v in values {
                if !field.has_presence() && !field.is_repeated() && is_default(v) {
                    continue;
                }
                match v {
                    DynValue::Message(m) => {
                        let sub = match field.kind {
                            FieldKind::Message(i) => i,
                            _ => continue,
                        };
                        let mut body = Vec::new();
                        m.encode_into(schema, sub, &mut body, depth + 1);
                        put_len_delimited(out, field.number, &body);
                    }
                    other => {
                        put_tag(out, field.number, wire_type_of(field.kind));
                        write_value(out, field.kind, other);
                    }
                }
            }
        }
    }
}

fn is_default(v: &DynValue) -> bool {
    match v {
        DynValue::Bool(b) => !b,
        DynValue::I32(n) | DynValue::Enum(n) => *n == 0,
        DynValue::I64(n) => *n == 0,
        DynValue::U32(n) => *n == 0,
        DynValue::U64(n) => *n == 0,
        // protobuf-java compares raw bits: -0.0 is written.
        DynValue::F32(f) => f.to_bits() == 0,
        DynValue::F64(f) => f.to_bits() == 0,
        DynValue::String(s) => s.is_empty(),
        DynValue::Bytes(b) => b.is_empty(),
        DynValue::Message(_) => false,
    }
}

fn is_packable(kind: FieldKind) -> bool {
    !matches!(
        kind,
        FieldKind::Message(_) | FieldKind::Scalar(Scalar::String | Scalar::Bytes)
    )
}

/// The wire type of one (unpacked) value of `kind`.
pub(crate) fn wire_type_of(kind: FieldKind) -> WireType {
    match kind {
        FieldKind::Message(_) => WireType::Len,
        FieldKind::Enum(_) => WireType::Varint,
        FieldKind::Scalar(s) => match s {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => WireType::Fixed64,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => WireType::Fixed32,
            Scalar::String | Scalar::Bytes => WireType::Len,
            _ => WireType::Varint,
        },
    }
}

fn read_value(r: &mut Reader<'_>, kind: FieldKind) -> Result<DynValue, WireError> {
    Ok(match kind {
        FieldKind::Enum(_) => DynValue::Enum(r.varint()? as i32),
        FieldKind::Message(_) => DynValue::Message(DynMessage::default()),
        FieldKind::Scalar(s) => match s {
            Scalar::Double => DynValue::F64(f64::from_bits(r.fixed64()?)),
            Scalar::Float => DynValue::F32(f32::from_bits(r.fixed32()?)),
            // int32 and enum: the low 32 bits (`readRawVarint32`).
            Scalar::Int32 => DynValue::I32(r.varint()? as i32),
            Scalar::Int64 => DynValue::I64(r.varint()? as i64),
            Scalar::Uint32 => DynValue::U32(r.varint()? as u32),
            Scalar::Uint64 => DynValue::U64(r.varint()?),
            Scalar::Sint32 => DynValue::I32(unzigzag(u64::from(r.varint()? as u32)) as i32),
            Scalar::Sint64 => DynValue::I64(unzigzag(r.varint()?)),
            Scalar::Fixed32 => DynValue::U32(r.fixed32()?),
            Scalar::Fixed64 => DynValue::U64(r.fixed64()?),
            Scalar::Sfixed32 => DynValue::I32(r.fixed32()? as i32),
            Scalar::Sfixed64 => DynValue::I64(r.fixed64()? as i64),
            Scalar::Bool => DynValue::Bool(r.varint()? != 0),
            Scalar::String => DynValue::String(
                std::str::from_utf8(r.len_delimited()?)
                    .map_err(|_| WireError::InvalidUtf8)?
                    .to_owned(),
            ),
            Scalar::Bytes => DynValue::Bytes(r.len_delimited()?.to_vec()),
        },
    })
}

/// Writes one value's payload (no tag) as `kind` lays it out. A value of another shape than
/// the kind's (which the producers in this crate never build) writes nothing.
fn write_value(out: &mut Vec<u8>, kind: FieldKind, v: &DynValue) {
    let scalar = match kind {
        FieldKind::Scalar(s) => s,
        FieldKind::Enum(_) => Scalar::Int32,
        FieldKind::Message(_) => return,
    };
    match (scalar, v) {
        (Scalar::Bool, DynValue::Bool(b)) => put_varint(out, u64::from(*b)),
        // Negative int32 and enum values are sign-extended to ten bytes.
        (Scalar::Int32, DynValue::I32(n) | DynValue::Enum(n)) => {
            put_varint(out, i64::from(*n) as u64)
        }
        (Scalar::Int64, DynValue::I64(n)) => put_varint(out, *n as u64),
        (Scalar::Uint32, DynValue::U32(n)) => put_varint(out, u64::from(*n)),
        (Scalar::Uint64, DynValue::U64(n)) => put_varint(out, *n),
        (Scalar::Sint32, DynValue::I32(n)) => put_varint(out, zigzag(i64::from(*n)) & 0xFFFF_FFFF),
        (Scalar::Sint64, DynValue::I64(n)) => put_varint(out, zigzag(*n)),
        (Scalar::Fixed32, DynValue::U32(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Scalar::Fixed64, DynValue::U64(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Scalar::Sfixed32, DynValue::I32(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Scalar::Sfixed64, DynValue::I64(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Scalar::Float, DynValue::F32(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Scalar::Double, DynValue::F64(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Scalar::String, DynValue::String(s)) => {
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        (Scalar::Bytes, DynValue::Bytes(b)) => {
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::json::to_json;
    use crate::proto::wire::put_varint_field;
    use proptest::prelude::*;

    const ALL_TYPES: &str = "syntax = \"proto3\";\n\
        enum Color { RED = 0; GREEN = 1; BLUE = -2; }\n\
        message Inner { optional string s = 1; repeated sint64 zs = 2; Inner next = 3; }\n\
        message All {\n\
          double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;\n\
          sint32 s32 = 7; sint64 s64 = 8; fixed32 x32 = 9; fixed64 x64 = 10; sfixed32 sx32 = 11;\n\
          sfixed64 sx64 = 12; bool b = 13; string s = 14; bytes raw = 15; Color c = 16;\n\
          optional int32 o = 17; repeated int32 ri = 18; repeated string rs = 19; Inner inner = 20;\n\
          repeated Inner inners = 21; repeated double rd = 22; repeated Color rc = 23;\n\
        }";

    fn schema() -> Schema {
        Schema::parse(ALL_TYPES).unwrap()
    }

    /// A field number and its values.
    type FieldEntry = (u32, Vec<DynValue>);

    fn scalar_strategy(kind: FieldKind) -> BoxedStrategy<DynValue> {
        match kind {
            FieldKind::Enum(_) => prop_oneof![Just(0), Just(1), Just(-2), any::<i32>()]
                .prop_map(DynValue::Enum)
                .boxed(),
            FieldKind::Message(_) => Just(DynValue::Message(DynMessage::default())).boxed(),
            FieldKind::Scalar(s) => match s {
                Scalar::Double => any::<f64>().prop_map(DynValue::F64).boxed(),
                Scalar::Float => any::<f32>().prop_map(DynValue::F32).boxed(),
                Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => {
                    any::<i32>().prop_map(DynValue::I32).boxed()
                }
                Scalar::Int64 | Scalar::Sint64 | Scalar::Sfixed64 => {
                    any::<i64>().prop_map(DynValue::I64).boxed()
                }
                Scalar::Uint32 | Scalar::Fixed32 => any::<u32>().prop_map(DynValue::U32).boxed(),
                Scalar::Uint64 | Scalar::Fixed64 => any::<u64>().prop_map(DynValue::U64).boxed(),
                Scalar::Bool => any::<bool>().prop_map(DynValue::Bool).boxed(),
                Scalar::String => ".{0,8}".prop_map(DynValue::String).boxed(),
                Scalar::Bytes => proptest::collection::vec(any::<u8>(), 0..8)
                    .prop_map(DynValue::Bytes)
                    .boxed(),
            },
        }
    }

    /// A random message `index` of `schema`, nested up to `depth` levels.
    fn message_strategy(schema: Schema, index: usize, depth: u32) -> BoxedStrategy<DynMessage> {
        let fields = schema
            .message(index)
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        let per_field: Vec<BoxedStrategy<Option<FieldEntry>>> = fields
            .into_iter()
            .map(|f| {
                let number = f.number;
                let one: BoxedStrategy<DynValue> = match f.kind {
                    FieldKind::Message(sub) if depth > 0 => {
                        message_strategy(schema.clone(), sub, depth - 1)
                            .prop_map(DynValue::Message)
                            .boxed()
                    }
                    FieldKind::Message(_) => Just(DynValue::Message(DynMessage::default())).boxed(),
                    kind => scalar_strategy(kind),
                };
                let values = if f.is_repeated() {
                    proptest::collection::vec(one, 0..3).boxed()
                } else {
                    one.prop_map(|v| vec![v]).boxed()
                };
                proptest::option::of(values.prop_map(move |v| (number, v))).boxed()
            })
            .collect();
        per_field
            .prop_map(|entries| DynMessage {
                fields: entries.into_iter().flatten().collect(),
            })
            .boxed()
    }

    #[test]
    fn last_value_wins_messages_merge_and_oneof_members_clear_each_other() {
        let s = Schema::parse(
            "syntax = \"proto3\"; message In { int32 a = 1; int32 b = 2; }\n\
             message M { int32 x = 1; In in = 2; oneof pick { string t = 3; int32 n = 4; } }",
        )
        .unwrap();
        let mut bytes = Vec::new();
        put_varint_field(&mut bytes, 1, 1);
        put_varint_field(&mut bytes, 1, 2);
        put_len_delimited(&mut bytes, 2, &[0x08, 0x05]);
        put_len_delimited(&mut bytes, 2, &[0x10, 0x06]);
        put_len_delimited(&mut bytes, 3, b"t");
        put_varint_field(&mut bytes, 4, 9);
        // Wrong wire type for x: skipped as unknown.
        put_len_delimited(&mut bytes, 1, b"zz");
        let m = DynMessage::decode(&s, s.root, &bytes).unwrap();
        assert_eq!(
            to_json(&s, s.root, &m),
            serde_json::json!({"x":2,"in":{"a":5,"b":6},"n":9})
        );
    }

    #[test]
    fn packed_and_unpacked_repeated_values_both_decode() {
        let s = schema();
        let mut bytes = Vec::new();
        put_varint_field(&mut bytes, 18, 1);
        put_len_delimited(&mut bytes, 18, &[0x02, 0x03]);
        let m = DynMessage::decode(&s, s.root, &bytes).unwrap();
        assert_eq!(
            m.fields[&18],
            vec![DynValue::I32(1), DynValue::I32(2), DynValue::I32(3)]
        );
        assert_eq!(
            DynMessage::decode(&s, s.root, &[0x72, 0x01, 0xFF]),
            Err(WireError::InvalidUtf8)
        );
    }

    #[test]
    fn nesting_past_the_limit_fails_cleanly() {
        let s = schema();
        let inner = s.messages.iter().position(|m| m.name == "Inner").unwrap();
        let mut bytes = Vec::new();
        for _ in 0..(MAX_DEPTH + 5) {
            let mut outer = Vec::new();
            put_len_delimited(&mut outer, 3, &bytes);
            bytes = outer;
        }
        assert_eq!(
            DynMessage::decode(&s, inner, &bytes),
            Err(WireError::TooDeep)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let s = schema();
            if let Ok(m) = DynMessage::decode(&s, s.root, &bytes) {
                let _ = to_json(&s, s.root, &m);
                // What decodes re-encodes to something that decodes to the same message.
                let again = DynMessage::decode(&s, s.root, &m.encode(&s, s.root));
                prop_assert_eq!(again.map(|a| to_json(&s, s.root, &a)), Ok(to_json(&s, s.root, &m)));
            }
        }

        #[test]
        fn encode_then_decode_round_trips(m in message_strategy(schema(), schema().root, 2)) {
            let s = schema();
            let bytes = m.encode(&s, s.root);
            let back = DynMessage::decode(&s, s.root, &bytes);
            prop_assert_eq!(back.map(|b| to_json(&s, s.root, &b)), Ok(to_json(&s, s.root, &m)));
        }
    }
}
