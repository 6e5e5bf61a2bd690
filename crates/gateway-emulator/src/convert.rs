//! ThingsBoard's value typing for telemetry and attributes (`JsonConverter`).

use serde_json::{Map, Number, Value};

/// The stored form of one JSON value, or `None` when ThingsBoard drops it (`null`).
///
/// Booleans, integers, doubles and JSON objects/arrays keep their type; a string that looks
/// like a number becomes that number when `type_cast` is on (an integer that overflows `i64`
/// stays a string).
pub fn typed_value(value: &Value, type_cast: bool) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) if type_cast && is_parsable(s) => Some(parse_number(s)),
        other => Some(other.clone()),
    }
}

/// Applies [`typed_value`] to every entry, dropping nulls.
pub fn typed_map(values: &Map<String, Value>, type_cast: bool) -> Map<String, Value> {
    values
        .iter()
        .filter_map(|(k, v)| typed_value(v, type_cast).map(|v| (k.clone(), v)))
        .collect()
}

/// `JsonConverter.parseProtoValues` / `parseValues` with `maxStringValueLength`: every
/// string value of `values` (top level only) is at most `max` UTF-16 units long (`max` 0: no
/// limit).
pub fn strings_within(values: &Map<String, Value>, max: usize) -> bool {
    max == 0
        || values.values().all(|v| match v {
            // UTF-8 is never shorter in bytes than UTF-16 in units, so short strings need no
            // count.
            Value::String(s) => s.len() <= max || s.encode_utf16().count() <= max,
            _ => true,
        })
}

/// Apache `NumberUtils.isParsable`: optional leading `-`, digits, at most one `.` that is
/// neither first nor last.
fn is_parsable(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.starts_with('.') || digits.ends_with('.') {
        return false;
    }
    let mut dots = 0;
    digits.bytes().all(|b| {
        if b == b'.' {
            dots += 1;
            dots == 1
        } else {
            b.is_ascii_digit()
        }
    })
}

fn parse_number(s: &str) -> Value {
    if s.contains('.') {
        match s.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(s.to_owned()),
        }
    } else {
        match s.parse::<i64>() {
            Ok(n) => Value::Number(n.into()),
            Err(_) => Value::String(s.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typing_follows_json_converter() {
        assert_eq!(typed_value(&json!(null), true), None);
        assert_eq!(typed_value(&json!("42"), true), Some(json!(42)));
        assert_eq!(typed_value(&json!("42"), false), Some(json!("42")));
        assert_eq!(typed_value(&json!("-4.5"), true), Some(json!(-4.5)));
        assert_eq!(typed_value(&json!("4."), true), Some(json!("4.")));
        assert_eq!(typed_value(&json!("1e3"), true), Some(json!("1e3")));
        assert_eq!(
            typed_value(&json!("99999999999999999999"), true),
            Some(json!("99999999999999999999"))
        );
        assert_eq!(typed_value(&json!({"a":1}), true), Some(json!({"a":1})));
        assert_eq!(typed_value(&json!(true), true), Some(json!(true)));
    }

    #[test]
    fn string_length_counts_utf16_units_of_top_level_strings() {
        let values = |v: Value| v.as_object().cloned().unwrap();
        let v = values(json!({"a": "abcd", "n": 123456, "o": {"long": "xxxxxxxxxx"}}));
        assert!(strings_within(&v, 0));
        assert!(strings_within(&v, 4));
        assert!(!strings_within(&v, 3));
        // "é" is 2 bytes but 1 unit; "😀" is 4 bytes and 2 units.
        assert!(strings_within(&values(json!({"s": "éé"})), 2));
        assert!(strings_within(&values(json!({"s": "😀"})), 2));
        assert!(!strings_within(&values(json!({"s": "😀😀"})), 3));
        // Numeric strings are checked before any type cast.
        assert!(!strings_within(&values(json!({"s": "12345"})), 4));
    }
}
