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

use super::protobuf_wire::{for_each_field, int32, put_int32, put_string, utf8, Value};
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
        // int32 is sign-extended to 64 bits on the wire.
        put_int32(&mut out, 1, self.request_id);
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
                (1, Value::Varint(v)) => out.request_id = int32(v),
                (2, Value::Len(b)) => out.payload = utf8(b)?,
                (3, Value::Len(b)) => out.error = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(out)
    }
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
