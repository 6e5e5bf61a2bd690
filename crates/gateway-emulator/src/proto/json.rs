//! Dynamic messages to and from JSON the way ThingsBoard uses protobuf-java's `JsonFormat`.
//!
//! Uplink (`DynamicProtoUtils.dynamicMsgToJson`): `JsonFormat.printer()
//! .includingDefaultValueFields()`, so keys are the lowerCamelCase JSON names; fields without
//! presence are printed even when unset (`0`, `false`, `""`, the first enum name, `[]` for
//! repeated fields) while unset `optional`, `oneof` and message fields are left out; 64-bit
//! integers are JSON strings; bytes are base64; enums are names (a number outside the enum is
//! printed as the number); NaN and infinities are the strings `"NaN"`, `"Infinity"`,
//! `"-Infinity"`. ThingsBoard then re-parses that text with Gson and types each value by its
//! text (`JsonConverter`): a Java double printed in scientific notation (|v| ≥ 10^7 or
//! < 10^-3) without a fraction becomes a long, so [`to_json`] hands such values over as
//! integers to keep the emulator's JSON path faithful.
//!
//! Downlink (`DynamicProtoUtils.jsonToDynamicMessage`): `JsonFormat.parser()
//! .ignoringUnknownFields()`: keys match the JSON or the proto field name, unknown keys are
//! skipped, `null` leaves a field unset, a string field takes any JSON primitive as its text
//! (Gson `getAsString`; a one-element array too) but not an object, numbers must fit their
//! type, a message field takes an object and a repeated field an array.

use std::fmt;

use serde_json::{Map, Number, Value};

use super::dynamic::{DynMessage, DynValue};
use super::schema::{FieldDef, FieldKind, Scalar, Schema};
use super::wire::MAX_DEPTH;

/// Why a JSON value does not fit a message (protobuf-java's `InvalidProtocolBufferException`
/// from the JSON parser).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonError {
    /// The JSON value cannot become this field's type.
    WrongType {
        /// The field's proto name.
        field: String,
        /// What was found.
        found: String,
    },
    /// Two members of one `oneof` were given.
    MultipleOneofMembers(String),
    /// The top-level JSON value is not an object, or nesting exceeded the limit.
    NotAnObject,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongType { field, found } => write!(f, "field {field:?} cannot take {found}"),
            Self::MultipleOneofMembers(field) => {
                write!(
                    f,
                    "field {field:?}: another member of its oneof is already set"
                )
            }
            Self::NotAnObject => f.write_str("expected a JSON object"),
        }
    }
}

impl std::error::Error for JsonError {}

// ---- printing -------------------------------------------------------------------------------

/// The JSON object ThingsBoard prints for `msg`, a message `index` of `schema`.
pub(crate) fn to_json(schema: &Schema, index: usize, msg: &DynMessage) -> Value {
    Value::Object(print_message(schema, index, msg, 0))
}

fn print_message(
    schema: &Schema,
    index: usize,
    msg: &DynMessage,
    depth: usize,
) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(def) = schema.message(index) else {
        return out;
    };
    if depth > MAX_DEPTH {
        return out;
    }
    for field in &def.fields {
        let values = msg.fields.get(&field.number);
        let printed = match values {
            Some(values) if field.is_repeated() => Value::Array(
                values
                    .iter()
                    .map(|v| print_value(schema, field, v, depth))
                    .collect(),
            ),
            Some(values) => match values.last() {
                Some(v) => print_value(schema, field, v, depth),
                None => continue,
            },
            None if field.is_repeated() => Value::Array(Vec::new()),
            None if field.has_presence() => continue,
            None => default_json(schema, field),
        };
        out.insert(field.json_name.clone(), printed);
    }
    out
}

fn default_json(schema: &Schema, field: &FieldDef) -> Value {
    match field.kind {
        FieldKind::Enum(e) => Value::String(
            schema
                .enums
                .get(e)
                .map_or("", |e| e.default_name())
                .to_owned(),
        ),
        FieldKind::Message(_) => Value::Null,
        FieldKind::Scalar(s) => match s {
            Scalar::Bool => Value::Bool(false),
            Scalar::String | Scalar::Bytes => Value::String(String::new()),
            Scalar::Int64
            | Scalar::Uint64
            | Scalar::Sint64
            | Scalar::Fixed64
            | Scalar::Sfixed64 => Value::String("0".into()),
            Scalar::Double | Scalar::Float => java_double(0.0),
            _ => Value::Number(0.into()),
        },
    }
}

fn print_value(schema: &Schema, field: &FieldDef, v: &DynValue, depth: usize) -> Value {
    match v {
        DynValue::Bool(b) => Value::Bool(*b),
        DynValue::I32(n) => Value::Number((*n).into()),
        DynValue::U32(n) => Value::Number((*n).into()),
        DynValue::I64(n) => Value::String(n.to_string()),
        DynValue::U64(n) => Value::String(n.to_string()),
        DynValue::F32(f) => {
            if f.is_finite() {
                // Java prints the shortest digits of the float; Gson reads them as a decimal.
                match format!("{f}").parse::<f64>() {
                    Ok(d) => java_double(d),
                    Err(_) => java_double(f64::from(*f)),
                }
            } else {
                java_double(f64::from(*f))
            }
        }
        DynValue::F64(d) => java_double(*d),
        DynValue::String(s) => Value::String(s.clone()),
        DynValue::Bytes(b) => Value::String(base64(b)),
        DynValue::Enum(n) => {
            let name = match field.kind {
                FieldKind::Enum(e) => schema.enums.get(e).and_then(|e| e.name_of(*n)),
                _ => None,
            };
            match name {
                Some(name) => Value::String(name.to_owned()),
                None => Value::Number((*n).into()),
            }
        }
        DynValue::Message(m) => match field.kind {
            FieldKind::Message(sub) => Value::Object(print_message(schema, sub, m, depth + 1)),
            _ => Value::Null,
        },
    }
}

/// A double as ThingsBoard ends up typing it after `Double.toString` and `JsonConverter`:
/// non-finite values are strings; values Java prints in scientific notation with no
/// fractional part are longs (or their plain digits when beyond a long); the rest doubles.
fn java_double(d: f64) -> Value {
    if d.is_nan() {
        return Value::String("NaN".into());
    }
    if d.is_infinite() {
        return Value::String(if d > 0.0 { "Infinity" } else { "-Infinity" }.into());
    }
    let scientific = d != 0.0 && !(1e-3..1e7).contains(&d.abs());
    if scientific && d.fract() == 0.0 {
        if let Some(digits) = shortest_integer_digits(d) {
            return match digits.parse::<i64>() {
                Ok(n) => Value::Number(n.into()),
                // BigDecimal.longValueExact overflows: the plain digits stay a string.
                Err(_) => Value::String(digits),
            };
        }
    }
    Number::from_f64(d).map_or(Value::Null, Value::Number)
}

/// The integer a decimal reader gets from the shortest digits of an integral double (for
/// 2^60 that is 1152921504606847000, not 2^60), as plain decimal text.
fn shortest_integer_digits(d: f64) -> Option<String> {
    let text = format!("{d:e}");
    let (mantissa, exp) = text.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let zeros = exp.checked_sub(i32::try_from(frac.len()).ok()?)?;
    let zeros = usize::try_from(zeros).ok()?;
    Some(format!("{sign}{int}{frac}{}", "0".repeat(zeros)))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Guava's `BaseEncoding.base64()`, used by `JsonFormat`).
pub(crate) fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(BASE64.get(idx).copied().unwrap_or(b'A')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard or URL-safe base64, padded or not (`JsonFormat` tries both alphabets).
fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---- parsing --------------------------------------------------------------------------------

/// Merges a JSON object into a new message `index` of `schema`, as `JsonFormat.parser()
/// .ignoringUnknownFields().merge` does.
pub(crate) fn from_json(
    schema: &Schema,
    index: usize,
    json: &Value,
) -> Result<DynMessage, JsonError> {
    let Value::Object(obj) = json else {
        return Err(JsonError::NotAnObject);
    };
    parse_message(schema, index, obj, 0)
}

fn parse_message(
    schema: &Schema,
    index: usize,
    obj: &Map<String, Value>,
    depth: usize,
) -> Result<DynMessage, JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::NotAnObject);
    }
    let mut msg = DynMessage::default();
    let Some(def) = schema.message(index) else {
        return Ok(msg);
    };
    let mut oneofs_set: Vec<usize> = Vec::new();
    for (key, value) in obj {
        let Some(field) = def
            .fields
            .iter()
            .find(|f| f.json_name == *key || f.name == *key)
        else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        if let Some(oneof) = field.oneof {
            if oneofs_set.contains(&oneof) {
                return Err(JsonError::MultipleOneofMembers(field.name.clone()));
            }
            oneofs_set.push(oneof);
        }
        let values = if field.is_repeated() {
            let Value::Array(items) = value else {
                return Err(wrong(field, value));
            };
            items
                .iter()
                .map(|item| parse_value(schema, field, item, depth))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![parse_value(schema, field, value, depth)?]
        };
        msg.fields.insert(field.number, values);
    }
    Ok(msg)
}

fn wrong(field: &FieldDef, value: &Value) -> JsonError {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    JsonError::WrongType {
        field: field.name.clone(),
        found: found.to_owned(),
    }
}

/// Gson's `JsonElement.getAsString`: primitives as their text, a one-element array as its
/// element's, anything else fails.
fn gson_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) if items.len() == 1 => items.first().and_then(gson_string),
        _ => None,
    }
}

/// Java's `Long.parseLong`, then `new BigDecimal(text).longValueExact()`.
fn parse_integer(text: &str) -> Option<i128> {
    if let Ok(n) = text.parse::<i128>() {
        return Some(n);
    }
    let d = text.parse::<f64>().ok()?;
    (d.is_finite() && d.fract() == 0.0 && d.abs() < 1.9e19).then_some(d as i128)
}

fn parse_value(
    schema: &Schema,
    field: &FieldDef,
    value: &Value,
    depth: usize,
) -> Result<DynValue, JsonError> {
    let bad = || wrong(field, value);
    match field.kind {
        FieldKind::Message(sub) => match value {
            Value::Object(obj) => Ok(DynValue::Message(parse_message(
                schema,
                sub,
                obj,
                depth + 1,
            )?)),
            _ => Err(bad()),
        },
        FieldKind::Enum(e) => {
            let def = schema.enums.get(e).ok_or_else(bad)?;
            match value {
                Value::String(name) => def.number_of(name).map(DynValue::Enum).ok_or_else(bad),
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .map(DynValue::Enum)
                    .ok_or_else(bad),
                _ => Err(bad()),
            }
        }
        FieldKind::Scalar(s) => {
            if matches!(value, Value::Object(_)) {
                return Err(bad());
            }
            let text = gson_string(value).ok_or_else(bad)?;
            match s {
                Scalar::String => Ok(DynValue::String(text)),
                Scalar::Bytes => unbase64(&text).map(DynValue::Bytes).ok_or_else(bad),
                Scalar::Bool => match text.as_str() {
                    "true" => Ok(DynValue::Bool(true)),
                    "false" => Ok(DynValue::Bool(false)),
                    _ => Err(bad()),
                },
                Scalar::Double | Scalar::Float => {
                    let d = match text.as_str() {
                        "NaN" => f64::NAN,
                        "Infinity" => f64::INFINITY,
                        "-Infinity" => f64::NEG_INFINITY,
                        t => t.parse::<f64>().map_err(|_| bad())?,
                    };
                    if s == Scalar::Double {
                        Ok(DynValue::F64(d))
                    } else if d.is_finite() && d.abs() > f64::from(f32::MAX) {
                        Err(bad())
                    } else {
                        Ok(DynValue::F32(d as f32))
                    }
                }
                Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => parse_integer(&text)
                    .and_then(|n| i32::try_from(n).ok())
                    .map(DynValue::I32)
                    .ok_or_else(bad),
                Scalar::Int64 | Scalar::Sint64 | Scalar::Sfixed64 => parse_integer(&text)
                    .and_then(|n| i64::try_from(n).ok())
                    .map(DynValue::I64)
                    .ok_or_else(bad),
                Scalar::Uint32 | Scalar::Fixed32 => parse_integer(&text)
                    .and_then(|n| u32::try_from(n).ok())
                    .map(DynValue::U32)
                    .ok_or_else(bad),
                Scalar::Uint64 | Scalar::Fixed64 => parse_integer(&text)
                    .and_then(|n| u64::try_from(n).ok())
                    .map(DynValue::U64)
                    .ok_or_else(bad),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(text: &str) -> Schema {
        Schema::parse(text).unwrap()
    }

    #[test]
    fn printing_includes_defaults_of_fields_without_presence_only() {
        let s = schema(
            "syntax = \"proto3\"; enum Mode { AUTO = 0; MANUAL = 1; }\n\
             message M { int32 a = 1; optional int32 b = 2; int64 big = 3; repeated string tags = 4;\n\
               Mode mode = 5; M2 sub = 6; bytes raw = 7; string snake_case = 8; bool flag = 9; double d = 10; }\n\
             message M2 { int32 z = 1; }\n\
             message Root { M m = 1; }",
        );
        let m_index = s.messages.iter().position(|m| m.name == "M").unwrap();
        let empty = DynMessage::default();
        assert_eq!(
            to_json(&s, m_index, &empty),
            json!({"a":0,"big":"0","tags":[],"mode":"AUTO","raw":"","snakeCase":"","flag":false,"d":0.0})
        );
        let mut m = DynMessage::default();
        m.fields.insert(2, vec![DynValue::I32(0)]);
        m.fields.insert(3, vec![DynValue::I64(-5)]);
        m.fields.insert(5, vec![DynValue::Enum(7)]);
        m.fields.insert(7, vec![DynValue::Bytes(b"hi!?".to_vec())]);
        m.fields.insert(10, vec![DynValue::F64(f64::NAN)]);
        let out = to_json(&s, m_index, &m);
        assert_eq!(out["b"], json!(0), "explicit presence: printed when set");
        assert_eq!(out["big"], json!("-5"));
        assert_eq!(
            out["mode"],
            json!(7),
            "unknown enum numbers print as numbers"
        );
        assert_eq!(out["raw"], json!("aGkhPw=="));
        assert_eq!(out["d"], json!("NaN"));
    }

    #[test]
    fn doubles_are_typed_as_thingsboard_types_their_java_text() {
        assert_eq!(java_double(21.5), json!(21.5));
        assert_eq!(java_double(21.0), json!(21.0));
        assert_eq!(
            java_double(12_345_678.0),
            json!(12_345_678),
            "1.2345678E7 → long"
        );
        assert_eq!(java_double(1.5e7), json!(15_000_000));
        assert_eq!(java_double(12_345_678.5), json!(12_345_678.5));
        assert_eq!(java_double(1e20), json!("100000000000000000000"));
        assert_eq!(java_double(-3e7), json!(-30_000_000));
        assert_eq!(
            java_double(2f64.powi(60)),
            json!(1_152_921_504_606_847_000i64)
        );
        assert_eq!(java_double(0.0001), json!(0.0001));
        assert_eq!(java_double(f64::NEG_INFINITY), json!("-Infinity"));
    }

    #[test]
    fn base64_round_trips() {
        for b in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\x00\x10"] {
            assert_eq!(unbase64(&base64(b)).unwrap(), b);
        }
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn parsing_follows_json_format_parser() {
        let s = schema(
            "syntax = \"proto3\"; message P { optional string pin = 1; optional int32 value = 2; }\n\
             message R { optional string method = 1; optional int32 requestId = 2; P params = 3; repeated uint32 xs = 4; }",
        );
        let root = s.root;
        let m = from_json(
            &s,
            root,
            &json!({"method":"m","requestId":3,"params":{"pin":"7","value":"1"},"other":1}),
        )
        .unwrap();
        assert_eq!(m.fields[&1], vec![DynValue::String("m".into())]);
        assert_eq!(m.fields[&2], vec![DynValue::I32(3)]);
        let DynValue::Message(p) = &m.fields[&3][0] else {
            panic!()
        };
        assert_eq!(p.fields[&2], vec![DynValue::I32(1)]);
        assert!(from_json(&s, root, &json!({"requestId": 1.5})).is_err());
        assert!(from_json(&s, root, &json!({"requestId": 3_000_000_000u64})).is_err());
        assert!(from_json(&s, root, &json!({"params": "x"})).is_err());
        assert!(from_json(&s, root, &json!({"xs": 1})).is_err());
        assert!(from_json(&s, root, &json!({"xs": [-1]})).is_err());
        assert!(from_json(&s, root, &json!([1])).is_err());
        let strings = schema("syntax = \"proto3\"; message S { optional string params = 3; }");
        let ok = from_json(&strings, strings.root, &json!({"params": 42})).unwrap();
        assert_eq!(ok.fields[&3], vec![DynValue::String("42".into())]);
        let one = from_json(&strings, strings.root, &json!({"params": ["x"]})).unwrap();
        assert_eq!(one.fields[&3], vec![DynValue::String("x".into())]);
        assert!(from_json(&strings, strings.root, &json!({"params": {"a":1}})).is_err());
        assert!(from_json(&strings, strings.root, &json!({"params": []})).is_err());
    }
}
