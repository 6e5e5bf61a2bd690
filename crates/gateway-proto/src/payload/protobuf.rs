//! The two fixed protobuf messages the connection exchanges itself when the device profile's
//! payload type is PROTOBUF ([`Config::protobuf_profile`](crate::Config::protobuf_profile)).
//!
//! ThingsBoard reads the v1 Device API topics with the profile's adaptor. For a PROTOBUF
//! profile, the `getSessionLimits` client RPC (answered on the v1 topic only) must then be a
//! `transportapi.RpcRequest { string method = 1; string params = 2; }`, and the answer is a
//! `ToServerRpcResponseMsg { int32 requestId = 1; string payload = 2; string error = 3; }`
//! whose `payload` is the usual JSON text. Everything else protobuf is the application's (see
//! [`raw`](crate::raw)). The platform emulator uses these definitions too.
//!
//! Decoding follows protobuf's rules for these messages: fields in any order, the last
//! occurrence wins, unknown fields of any wire type skipped; malformed bytes are a
//! [`PayloadError::InvalidProtobuf`], never a panic.

use super::PayloadError;

/// `transportapi.RpcRequest`: a client-side RPC on a protobuf topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProtoRpcRequest {
    /// Field 1: the method name.
    pub method: String,
    /// Field 2: the parameters as text (ThingsBoard parses it as JSON when it can).
    pub params: String,
}

/// `ToServerRpcResponseMsg`: the answer to a client-side RPC on a protobuf topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProtoRpcResponse {
    /// Field 1: the request id.
    pub request_id: i32,
    /// Field 2: the answer, JSON text.
    pub payload: String,
    /// Field 3: an error, empty if none.
    pub error: String,
}

impl ProtoRpcRequest {
    /// A request for `method` with `params` text.
    pub fn new(method: impl Into<String>, params: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            params: params.into(),
        }
    }

    /// The message's bytes (proto3: empty strings are left out).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the message's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_string(out, 1, &self.method);
        put_string(out, 2, &self.params);
    }

    /// Reads the message.
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut out = Self::default();
        for_each_field(bytes, |field, value| {
            match (field, value) {
                (1, Value::Len(b)) => out.method = utf8(b)?,
                (2, Value::Len(b)) => out.params = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl ProtoRpcResponse {
    /// The message's bytes (proto3: zero and empty fields are left out).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.request_id != 0 {
            put_key(&mut out, 1, WIRE_VARINT);
            // int32 is sign-extended to 64 bits on the wire.
            put_varint(&mut out, i64::from(self.request_id) as u64);
        }
        put_string(&mut out, 2, &self.payload);
        put_string(&mut out, 3, &self.error);
        out
    }

    /// Reads the message.
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut out = Self::default();
        for_each_field(bytes, |field, value| {
            match (field, value) {
                // int32 keeps the low 32 bits of the varint.
                (1, Value::Varint(v)) => out.request_id = v as u32 as i32,
                (2, Value::Len(b)) => out.payload = utf8(b)?,
                (3, Value::Len(b)) => out.error = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(out)
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// One field's value, as the wire gives it.
enum Value<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Fixed,
}

fn invalid(reason: &'static str) -> PayloadError {
    PayloadError::InvalidProtobuf(reason)
}

fn utf8(bytes: &[u8]) -> Result<String, PayloadError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid("string field is not UTF-8"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if s.is_empty() {
        return;
    }
    put_key(out, field, WIRE_LEN);
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads a varint at `*at`; at most 10 bytes.
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, PayloadError> {
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

/// Calls `f` with each field of a message.
fn for_each_field<'a>(
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
            WIRE_I64 | WIRE_I32 => {
                let n = if (key & 7) as u8 == WIRE_I64 { 8 } else { 4 };
                if bytes.len() - at < n {
                    return Err(invalid("truncated fixed-width field"));
                }
                at += n;
                Value::Fixed
            }
            WIRE_LEN => {
                let len = varint(bytes, &mut at)?;
                let len = usize::try_from(len).map_err(|_| invalid("length too large"))?;
                if bytes.len() - at < len {
                    return Err(invalid("truncated length-delimited field"));
                }
                let value = &bytes[at..at + len];
                at += len;
                Value::Len(value)
            }
            _ => return Err(invalid("unsupported wire type")),
        };
        f(field, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rpc_request_bytes_are_what_protobuf_writes() {
        // protoc --encode: method: "getSessionLimits" params: "{}"
        let bytes = ProtoRpcRequest::new("getSessionLimits", "{}").to_vec();
        let mut expected = vec![0x0a, 16];
        expected.extend_from_slice(b"getSessionLimits");
        expected.extend_from_slice(&[0x12, 2, b'{', b'}']);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn response_skips_unknown_fields_and_reads_a_negative_id() {
        let mut bytes = ProtoRpcResponse {
            request_id: -1,
            payload: "{\"a\":1}".into(),
            error: String::new(),
        }
        .to_vec();
        // Unknown fields of every wire type: 9 varint, 10 fixed64, 11 bytes, 12 fixed32.
        bytes.extend_from_slice(&[0x48, 0x96, 0x01, 0x51, 0, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0x5a, 1, 0xff, 0x65, 1, 2, 3, 4]);
        let r = ProtoRpcResponse::parse(&bytes).unwrap();
        assert_eq!(r.request_id, -1);
        assert_eq!(r.payload, "{\"a\":1}");
        assert_eq!(r.error, "");
    }

    #[test]
    fn malformed_bytes_are_typed_errors() {
        for bad in [
            &[0x0a][..],          // key without its length
            &[0x12, 5, b'a'][..], // truncated string
            &[0x0b][..],          // start group: not a proto3 wire type
            &[0x08, 0x80][..],    // truncated varint
            &[0x12, 1, 0xff][..], // payload that is not UTF-8
            &[0x00, 0x00][..],    // field number 0
            &[0x80; 11][..],      // varint longer than 10 bytes
            &[0x0d, 1, 2][..],    // truncated fixed32
        ] {
            assert!(
                matches!(
                    ProtoRpcResponse::parse(bad),
                    Err(PayloadError::InvalidProtobuf(_))
                ),
                "{bad:02x?}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ProtoRpcRequest::parse(&bytes);
            let _ = ProtoRpcResponse::parse(&bytes);
        }

        #[test]
        fn messages_round_trip(id in any::<i32>(), a in ".{0,40}", b in ".{0,40}") {
            let r = ProtoRpcResponse { request_id: id, payload: a.clone(), error: b.clone() };
            prop_assert_eq!(ProtoRpcResponse::parse(&r.to_vec()).unwrap(), r);
            let q = ProtoRpcRequest::new(a, b);
            prop_assert_eq!(ProtoRpcRequest::parse(&q.to_vec()).unwrap(), q);
        }
    }
}
