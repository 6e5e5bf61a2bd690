//! Writing JSON into a [`JsonSink`] without serde's serializer machinery.
//!
//! Every uplink message is written here, so this is the hot half of the payload layer. The
//! output is byte for byte what `serde_json::to_writer` produces for the same value (the tests
//! below check it on random values): strings without characters to escape, integers, `null`,
//! booleans, arrays and objects are written directly; strings that need escaping and
//! non-integer numbers are handed to serde_json, so its escaping and float formatting stay the
//! only ones in the crate.

use std::io;

use serde::Serialize;
use serde_json::{Map, Number, Value};

use super::JsonSink;

/// A value with a JSON form this module writes directly.
pub(crate) trait WriteJson {
    /// Appends the compact JSON form of `self`.
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S);
}

impl<T: WriteJson + ?Sized> WriteJson for &T {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        (**self).write_json(out);
    }
}

impl WriteJson for str {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        put_str(out, self);
    }
}

impl WriteJson for String {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        put_str(out, self);
    }
}

impl WriteJson for bool {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        out.put(if *self { b"true" } else { b"false" });
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl WriteJson for $t {
            fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
                put_u64(out, u64::from(*self));
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64);

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl WriteJson for $t {
            fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
                put_i64(out, i64::from(*self));
            }
        }
    )*};
}
signed!(i8, i16, i32, i64);

impl WriteJson for usize {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        // usize is at most 64 bits on every target Rust supports.
        put_u64(out, *self as u64);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        match self {
            Some(v) => v.write_json(out),
            None => out.put(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        out.put(b"[");
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.put(b",");
            }
            v.write_json(out);
        }
        out.put(b"]");
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        self.as_slice().write_json(out);
    }
}

impl WriteJson for Number {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        if let Some(u) = self.as_u64() {
            put_u64(out, u);
        } else if let Some(i) = self.as_i64() {
            put_i64(out, i);
        } else {
            // Floats: serde_json's own shortest round-trip formatting.
            put_json(out, self);
        }
    }
}

impl WriteJson for Value {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        match self {
            Value::Null => out.put(b"null"),
            Value::Bool(b) => b.write_json(out),
            Value::Number(n) => n.write_json(out),
            Value::String(s) => put_str(out, s),
            Value::Array(a) => a.write_json(out),
            Value::Object(m) => m.write_json(out),
        }
    }
}

impl WriteJson for Map<String, Value> {
    fn write_json<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.entries(self);
        o.close();
    }
}

/// Whether serde_json escapes something in `bytes`: `"`, `\` or a control character below
/// 0x20 (DEL and non-ASCII pass through). No early exit, so the loop vectorizes; names and
/// keys are short.
fn must_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Writes `s` as a JSON string.
pub(crate) fn put_str<S: JsonSink + ?Sized>(out: &mut S, s: &str) {
    if must_escape(s.as_bytes()) {
        put_json(out, s);
    } else {
        out.put(b"\"");
        out.put(s.as_bytes());
        out.put(b"\"");
    }
}

/// "00" to "99", two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `n` in decimal, two digits per step.
pub(crate) fn put_u64<S: JsonSink + ?Sized>(out: &mut S, mut n: u64) {
    // u64::MAX has 20 digits.
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    while n >= 100 {
        // n % 100 < 100, so the pair index is below 200.
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    // n < 100 here.
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    out.put(&buf[at..]);
}

/// Writes `n` in decimal, with a `-` when negative.
pub(crate) fn put_i64<S: JsonSink + ?Sized>(out: &mut S, n: i64) {
    if n < 0 {
        out.put(b"-");
    }
    put_u64(out, n.unsigned_abs());
}

/// Adapts a [`JsonSink`] to `io::Write` for serde_json; never fails.
struct SinkWriter<'a, S: ?Sized>(&'a mut S);

impl<S: JsonSink + ?Sized> io::Write for SinkWriter<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serializes `value` as compact JSON into `out` with serde_json (for what [`WriteJson`] does
/// not cover).
pub(crate) fn put_json<S: JsonSink + ?Sized, T: Serialize + ?Sized>(out: &mut S, value: &T) {
    // Cannot fail: the sink never reports an I/O error, and every type passed here (str,
    // integers, bool, serde_json::Value / Map) serializes infallibly.
    let _ = serde_json::to_writer(SinkWriter(out), value);
}

/// Writes the body of a JSON object field by field, handling the commas.
pub(crate) struct ObjWriter<'a, S: ?Sized> {
    out: &'a mut S,
    first: bool,
}

impl<'a, S: JsonSink + ?Sized> ObjWriter<'a, S> {
    /// Writes `{`.
    pub(crate) fn open(out: &'a mut S) -> Self {
        out.put(b"{");
        ObjWriter { out, first: true }
    }

    /// Writes the separator and `"key":`.
    pub(crate) fn key(&mut self, key: &str) -> &mut S {
        if !self.first {
            self.out.put(b",");
        }
        self.first = false;
        put_str(self.out, key);
        self.out.put(b":");
        self.out
    }

    /// Writes `"key":value`.
    pub(crate) fn field<T: WriteJson + ?Sized>(&mut self, key: &str, value: &T) {
        let out = self.key(key);
        value.write_json(out);
    }

    /// Writes every entry of `map` as a field of this object.
    pub(crate) fn entries(&mut self, map: &Map<String, Value>) {
        for (k, v) in map {
            self.field(k, v);
        }
    }

    /// Writes `}`.
    pub(crate) fn close(self) {
        self.out.put(b"}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours<T: WriteJson + ?Sized>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.write_json(&mut out);
        out
    }

    fn theirs<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap_or_default()
    }

    #[test]
    fn every_ascii_character_is_escaped_as_serde_json_does() {
        for b in 0u8..0x80 {
            let s = format!("a{}b", char::from(b));
            assert_eq!(ours(s.as_str()), theirs(s.as_str()), "byte {b:#04x}");
        }
        for s in ["", "é", "\u{2028}", "\u{7f}", "日本", "\"\\\"", "\u{1f600}"] {
            assert_eq!(ours(s), theirs(s), "{s:?}");
        }
    }

    #[test]
    fn integer_edges_are_written_as_serde_json_does() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(ours(&n), theirs(&n));
        }
        for n in [i64::MIN, i64::MIN + 1, -10, -9, -1, 0, 1, i64::MAX] {
            assert_eq!(ours(&n), theirs(&n));
        }
        for n in [0u8, u8::MAX] {
            assert_eq!(ours(&n), theirs(&n));
        }
        assert_eq!(ours(&i8::MIN), theirs(&i8::MIN));
        assert_eq!(ours(&i16::MIN), theirs(&i16::MIN));
        assert_eq!(ours(&i32::MIN), theirs(&i32::MIN));
        assert_eq!(ours(&usize::MAX), theirs(&usize::MAX));
    }

    #[test]
    fn containers_and_options_are_written_as_serde_json_does() {
        let v = serde_json::json!({
            "b": [true, false, null, 1.5, -0.0, 1e300, -7, "x\ny"],
            "a": {"": {}, "k": []},
            "z": 18446744073709551615u64
        });
        assert_eq!(ours(&v), theirs(&v));
        let keys = vec!["a".to_string(), "b\"".to_string()];
        assert_eq!(ours(&keys), theirs(&keys));
        assert_eq!(ours(&Some(3u32)), theirs(&Some(3u32)));
        assert_eq!(ours(&None::<u32>), theirs(&None::<u32>));
    }

    fn any_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any_number(),
            any::<String>().prop_map(Value::String),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_is_written_as_serde_json_writes_it(v in any_value()) {
            prop_assert_eq!(ours(&v), theirs(&v));
        }

        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(ours(s.as_str()), theirs(s.as_str()));
        }
    }
}
