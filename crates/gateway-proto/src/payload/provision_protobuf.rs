//! Provisioning over protobuf: [`ProvisionRequest`] and [`ProvisionResponse`] as ThingsBoard's
//! `transport.ProvisionDeviceRequestMsg` and `ProvisionDeviceResponseMsg` (`queue.proto`), both
//! directions, so the client core and the platform emulator share one codec.
//!
//! ```proto
//! message ProvisionDeviceRequestMsg {
//!   string deviceName = 1;
//!   CredentialsType credentialsType = 2;
//!   ProvisionDeviceCredentialsMsg provisionDeviceCredentialsMsg = 3;
//!   CredentialsDataProto credentialsDataProto = 4;
//!   bool gateway = 5;
//! }
//! message ProvisionDeviceCredentialsMsg { string provisionDeviceKey = 1; string provisionDeviceSecret = 2; }
//! message CredentialsDataProto {
//!   ValidateDeviceTokenRequestMsg validateDeviceTokenRequestMsg = 1;     // { string token = 1; }
//!   ValidateDeviceX509CertRequestMsg validateDeviceX509CertRequestMsg = 2; // { string hash = 1; }
//!   ValidateBasicMqttCredRequestMsg validateBasicMqttCredRequestMsg = 3;   // { clientId = 1; userName = 2; password = 3; }
//! }
//! enum CredentialsType { ACCESS_TOKEN = 0; X509_CERTIFICATE = 1; MQTT_BASIC = 2; LWM2M_CREDENTIALS = 3; }
//! message ProvisionDeviceResponseMsg { ResponseStatus status = 1; CredentialsType credentialsType = 2; string credentialsValue = 3; }
//! enum ResponseStatus { UNKNOWN = 0; SUCCESS = 1; NOT_FOUND = 2; FAILURE = 3; }
//! ```
//!
//! ThingsBoard's provision session reads a request as JSON first and, only when that is not
//! JSON at all (a syntax error, or a JSON value that is not an object), as this protobuf
//! message; it then answers in protobuf too (`MqttTransportHandler.processProvisionSessionMsg`,
//! `DeviceProvisionCallback`).
//!
//! Decoding follows protobuf's rules: fields in any order, the last scalar wins, an embedded
//! message seen twice is merged, unknown fields and fields of an unexpected wire type are
//! skipped. Malformed bytes (truncation, a bad varint, wire types 3/4/6/7, a `string` that is
//! not UTF-8) are a [`PayloadError::InvalidProtobuf`], never a panic.
//!
//! # How the typed structs map onto the messages
//!
//! - Request: the JSON form's `token`, `hash` and `clientId`/`username`/`password` go into
//!   `validateDeviceTokenRequestMsg.token`, `validateDeviceX509CertRequestMsg.hash` and
//!   `validateBasicMqttCredRequestMsg` (`userName` there), where ThingsBoard's JSON converter
//!   puts them too. `hash` carries the certificate itself (PEM or its base64 body), as in JSON.
//!   `provisionDeviceCredentialsMsg` is always written; a sub-message of
//!   `credentialsDataProto` only when it holds something, and `credentialsDataProto` only when
//!   one of them is written.
//! - proto3 cannot tell an absent field from its default, so a parsed request is in canonical
//!   form: an empty string is `None`, `credentialsType` `ACCESS_TOKEN` (0, also the server's
//!   default) is `None`, `gateway` false is `None`. `Some("")`, `Some(AccessToken)` and
//!   `Some(false)` therefore read back as `None`; the server treats both alike.
//! - Response: `credentialsValue` is the access token or the certificate text; for
//!   `MQTT_BASIC` it is the JSON document that the JSON response carries as an object
//!   (`{"clientId":..,"userName":..,"password":..}`, absent fields left out). On parse its form
//!   follows `credentialsType`: `MQTT_BASIC` text must be a JSON object
//!   ([`CredentialsValue::MqttBasic`]), anything else is [`CredentialsValue::Text`]. A
//!   [`ProvisionResponse::Success`] whose value does not match its type does not round-trip.
//! - `NOT_FOUND` and `FAILURE` are a status only (the message has no `errorMsg`): they are
//!   written without the message and read with an empty `error_msg`.
//! - Refused: `credentialsType` `LWM2M_CREDENTIALS` or an unknown number, and a `status` that
//!   is `UNKNOWN` or unknown, are [`PayloadError::UnknownValue`] (the typed structs have no
//!   such values).

use serde_json::Value as Json;

use super::protobuf_wire::{
    for_each_field, int32, put_bool, put_key, put_len, put_string, put_varint, utf8, Value,
    WIRE_VARINT,
};
use super::{
    parse_value, CredentialsType, CredentialsValue, PayloadError, ProvisionRequest,
    ProvisionResponse,
};

// `transport.CredentialsType`.
const ACCESS_TOKEN: i32 = 0;
const X509_CERTIFICATE: i32 = 1;
const MQTT_BASIC: i32 = 2;
const LWM2M_CREDENTIALS: i32 = 3;

// `transport.ResponseStatus`.
const UNKNOWN: i32 = 0;
const SUCCESS: i32 = 1;
const NOT_FOUND: i32 = 2;
const FAILURE: i32 = 3;

fn type_number(t: CredentialsType) -> i32 {
    match t {
        CredentialsType::AccessToken => ACCESS_TOKEN,
        CredentialsType::X509Certificate => X509_CERTIFICATE,
        CredentialsType::MqttBasic => MQTT_BASIC,
    }
}

fn type_from_number(n: i32) -> Result<CredentialsType, PayloadError> {
    match n {
        ACCESS_TOKEN => Ok(CredentialsType::AccessToken),
        X509_CERTIFICATE => Ok(CredentialsType::X509Certificate),
        MQTT_BASIC => Ok(CredentialsType::MqttBasic),
        LWM2M_CREDENTIALS => Err(PayloadError::UnknownValue {
            field: "credentialsType",
            value: "LWM2M_CREDENTIALS".to_owned(),
        }),
        n => Err(PayloadError::UnknownValue {
            field: "credentialsType",
            value: n.to_string(),
        }),
    }
}

/// An enum field: an `int32` on the wire (negative numbers sign-extended); 0 is left out.
fn put_enum(out: &mut Vec<u8>, field: u32, n: i32) {
    if n != 0 {
        put_key(out, field, WIRE_VARINT);
        put_varint(out, i64::from(n) as u64);
    }
}

/// An optional string as a proto3 one: absent is empty.
fn text(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// A proto3 string read back as an optional one: empty is absent.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Reads the `string` fields numbered 1..=N of a message (the last occurrence wins).
fn read_strings<const N: usize>(bytes: &[u8]) -> Result<[String; N], PayloadError> {
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for_each_field(bytes, |f, v| {
        if let Value::Len(b) = v {
            let slot = usize::try_from(f)
                .ok()
                .and_then(|f| f.checked_sub(1))
                .and_then(|i| out.get_mut(i));
            if let Some(slot) = slot {
                *slot = utf8(b)?;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

impl ProvisionRequest {
    /// The request as a `ProvisionDeviceRequestMsg` (see the [module docs](self) for the
    /// mapping).
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, 1, text(&self.device_name));
        put_enum(&mut out, 2, self.credentials_type.map_or(0, type_number));

        let mut credentials = Vec::new();
        put_string(&mut credentials, 1, &self.provision_device_key);
        put_string(&mut credentials, 2, &self.provision_device_secret);
        put_len(&mut out, 3, &credentials);

        let mut token = Vec::new();
        put_string(&mut token, 1, text(&self.token));
        let mut x509 = Vec::new();
        put_string(&mut x509, 1, text(&self.hash));
        let mut basic = Vec::new();
        put_string(&mut basic, 1, text(&self.client_id));
        put_string(&mut basic, 2, text(&self.username));
        put_string(&mut basic, 3, text(&self.password));
        let mut data = Vec::new();
        for (field, msg) in [(1, &token), (2, &x509), (3, &basic)] {
            if !msg.is_empty() {
                put_len(&mut data, field, msg);
            }
        }
        if !data.is_empty() {
            put_len(&mut out, 4, &data);
        }

        put_bool(&mut out, 5, self.gateway.unwrap_or(false));
        out
    }

    /// Reads a `ProvisionDeviceRequestMsg` into canonical form (see the [module docs](self)).
    /// Empty bytes are a valid message: every field at its default, so key and secret are
    /// empty (ThingsBoard answers that `NOT_FOUND`).
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut name = String::new();
        let mut credentials_type = ACCESS_TOKEN;
        let mut credentials = Vec::new();
        let mut data = Vec::new();
        let mut gateway = false;
        for_each_field(bytes, |f, v| {
            match (f, v) {
                (1, Value::Len(b)) => name = utf8(b)?,
                (2, Value::Varint(v)) => credentials_type = int32(v),
                (3, Value::Len(b)) => credentials.extend_from_slice(b),
                (4, Value::Len(b)) => data.extend_from_slice(b),
                (5, Value::Varint(v)) => gateway = v != 0,
                _ => {}
            }
            Ok(())
        })?;
        let [key, secret] = read_strings::<2>(&credentials)?;

        let (mut token, mut x509, mut basic) = (Vec::new(), Vec::new(), Vec::new());
        for_each_field(&data, |f, v| {
            match (f, v) {
                (1, Value::Len(b)) => token.extend_from_slice(b),
                (2, Value::Len(b)) => x509.extend_from_slice(b),
                (3, Value::Len(b)) => basic.extend_from_slice(b),
                _ => {}
            }
            Ok(())
        })?;
        let [token] = read_strings::<1>(&token)?;
        let [hash] = read_strings::<1>(&x509)?;
        let [client_id, username, password] = read_strings::<3>(&basic)?;

        let credentials_type = match type_from_number(credentials_type)? {
            CredentialsType::AccessToken => None,
            t => Some(t),
        };
        Ok(Self {
            device_name: non_empty(name),
            provision_device_key: key,
            provision_device_secret: secret,
            credentials_type,
            token: non_empty(token),
            client_id: non_empty(client_id),
            username: non_empty(username),
            password: non_empty(password),
            hash: non_empty(hash),
            gateway: gateway.then_some(true),
        })
    }
}

impl ProvisionResponse {
    /// The response as a `ProvisionDeviceResponseMsg` (see the [module docs](self)):
    /// `NOT_FOUND` and `FAILURE` carry their status only.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Success {
                credentials_type,
                credentials,
            } => {
                put_enum(&mut out, 1, SUCCESS);
                put_enum(&mut out, 2, type_number(*credentials_type));
                match credentials {
                    CredentialsValue::Text(text) => put_string(&mut out, 3, text),
                    CredentialsValue::MqttBasic { .. } => {
                        let mut json = Vec::new();
                        credentials.write_basic(&mut json);
                        put_len(&mut out, 3, &json);
                    }
                }
            }
            Self::NotFound { .. } => put_enum(&mut out, 1, NOT_FOUND),
            Self::Failure { .. } => put_enum(&mut out, 1, FAILURE),
        }
        out
    }

    /// Reads a `ProvisionDeviceResponseMsg` (see the [module docs](self)).
    pub fn parse_protobuf(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut status = UNKNOWN;
        let mut credentials_type = ACCESS_TOKEN;
        let mut value = String::new();
        for_each_field(bytes, |f, v| {
            match (f, v) {
                (1, Value::Varint(v)) => status = int32(v),
                (2, Value::Varint(v)) => credentials_type = int32(v),
                (3, Value::Len(b)) => value = utf8(b)?,
                _ => {}
            }
            Ok(())
        })?;
        match status {
            SUCCESS => {
                let credentials_type = type_from_number(credentials_type)?;
                let credentials = if credentials_type == CredentialsType::MqttBasic {
                    match parse_value(value.as_bytes())? {
                        Json::Object(object) => CredentialsValue::basic_from_map(object)?,
                        _ => {
                            return Err(PayloadError::WrongType {
                                field: "credentialsValue",
                                expected: "JSON object text",
                            })
                        }
                    }
                } else {
                    CredentialsValue::Text(value)
                };
                Ok(Self::Success {
                    credentials_type,
                    credentials,
                })
            }
            NOT_FOUND => Ok(Self::NotFound {
                error_msg: String::new(),
            }),
            FAILURE => Ok(Self::Failure {
                error_msg: String::new(),
            }),
            UNKNOWN => Err(PayloadError::UnknownValue {
                field: "status",
                value: "UNKNOWN".to_owned(),
            }),
            n => Err(PayloadError::UnknownValue {
                field: "status",
                value: n.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A length-delimited field, assembled by hand (lengths < 128).
    fn len(field: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![(field << 3) | 2, u8::try_from(body.len()).unwrap()];
        out.extend_from_slice(body);
        out
    }

    fn full_request() -> ProvisionRequest {
        ProvisionRequest {
            device_name: Some("Dev".into()),
            provision_device_key: "k".into(),
            provision_device_secret: "s".into(),
            credentials_type: Some(CredentialsType::MqttBasic),
            token: Some("T".into()),
            client_id: Some("c".into()),
            username: Some("u".into()),
            password: Some("p".into()),
            hash: Some("H".into()),
            gateway: Some(true),
        }
    }

    /// The bytes of [`full_request`], per the field numbers of `queue.proto`.
    fn full_request_bytes() -> Vec<u8> {
        let mut expected = len(1, b"Dev"); // deviceName = 1
        expected.extend_from_slice(&[0x10, 2]); // credentialsType = 2: MQTT_BASIC
        expected.extend(len(3, &[len(1, b"k"), len(2, b"s")].concat()));
        let data = [
            len(1, &len(1, b"T")),                                        // token
            len(2, &len(1, b"H")),                                        // x509 hash
            len(3, &[len(1, b"c"), len(2, b"u"), len(3, b"p")].concat()), // basic
        ]
        .concat();
        expected.extend(len(4, &data)); // credentialsDataProto = 4
        expected.extend_from_slice(&[0x28, 1]); // gateway = 5
        expected
    }

    #[test]
    fn full_request_golden_bytes() {
        let bytes = full_request().to_protobuf();
        assert_eq!(bytes, full_request_bytes());
        assert_eq!(ProvisionRequest::parse_protobuf(&bytes), Ok(full_request()));
    }

    #[test]
    fn minimal_requests_leave_defaults_out() {
        let r = ProvisionRequest::new("k", "s");
        let expected = len(3, &[len(1, b"k"), len(2, b"s")].concat());
        assert_eq!(r.to_protobuf(), expected);
        assert_eq!(ProvisionRequest::parse_protobuf(&expected), Ok(r));

        // ACCESS_TOKEN is enum 0: not written, read back as the default (None).
        let r = ProvisionRequest::new("k", "s").with_access_token("T");
        let mut expected = len(3, &[len(1, b"k"), len(2, b"s")].concat());
        expected.extend(len(4, &len(1, &len(1, b"T"))));
        assert_eq!(r.to_protobuf(), expected);
        let back = ProvisionRequest::parse_protobuf(&expected).unwrap();
        assert_eq!(back.credentials_type, None);
        assert_eq!(back.token.as_deref(), Some("T"));

        // X.509: type 1, the certificate in validateDeviceX509CertRequestMsg.hash.
        let r = ProvisionRequest::new("k", "s").with_x509("PEM");
        let mut expected = vec![0x10, 1];
        expected.extend(len(3, &[len(1, b"k"), len(2, b"s")].concat()));
        expected.extend(len(4, &len(2, &len(1, b"PEM"))));
        assert_eq!(r.to_protobuf(), expected);
        assert_eq!(ProvisionRequest::parse_protobuf(&expected), Ok(r));

        // Empty bytes: every field at its default.
        assert_eq!(
            ProvisionRequest::parse_protobuf(&[]),
            Ok(ProvisionRequest::default())
        );
    }

    #[test]
    fn request_parse_follows_protobuf_rules() {
        // Out of order, repeated scalar (last wins), embedded messages merged, unknown fields
        // of every wire type and a field of the wrong wire type skipped.
        let mut bytes = vec![0x28, 1]; // gateway first
        bytes.extend(len(3, &len(1, b"k")));
        bytes.extend(len(1, b"first"));
        bytes.extend(len(1, b"Dev"));
        bytes.extend(len(3, &len(2, b"s"))); // merged into the first credentials message
        bytes.extend(len(4, &len(3, &len(2, b"u"))));
        bytes.extend(len(4, &len(3, &len(3, b"p"))));
        bytes.extend_from_slice(&[0x10, 2]);
        bytes.extend_from_slice(&[0x08, 5]); // deviceName as a varint: skipped
        bytes.extend_from_slice(&[0x48, 0x96, 0x01]); // 9: varint
        bytes.extend_from_slice(&[0x51, 0, 0, 0, 0, 0, 0, 0, 0]); // 10: fixed64
        bytes.extend(len(11, b"xyz")); // 11: bytes
        bytes.extend_from_slice(&[0x65, 1, 2, 3, 4]); // 12: fixed32
        let r = ProvisionRequest::parse_protobuf(&bytes).unwrap();
        assert_eq!(r.device_name.as_deref(), Some("Dev"));
        assert_eq!(r.provision_device_key, "k");
        assert_eq!(r.provision_device_secret, "s");
        assert_eq!(r.credentials_type, Some(CredentialsType::MqttBasic));
        assert_eq!(r.client_id, None);
        assert_eq!(r.username.as_deref(), Some("u"));
        assert_eq!(r.password.as_deref(), Some("p"));
        assert_eq!(r.gateway, Some(true));
        // gateway = false written explicitly reads as the default.
        assert_eq!(
            ProvisionRequest::parse_protobuf(&[0x28, 0])
                .unwrap()
                .gateway,
            None
        );
    }

    #[test]
    fn unknown_credentials_types_are_refused() {
        for (bytes, value) in [
            (&[0x10, 3][..], "LWM2M_CREDENTIALS"),
            (&[0x10, 9][..], "9"),
            (
                &[
                    0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ][..],
                "-1",
            ),
        ] {
            assert_eq!(
                ProvisionRequest::parse_protobuf(bytes),
                Err(PayloadError::UnknownValue {
                    field: "credentialsType",
                    value: value.into()
                })
            );
        }
    }

    #[test]
    fn response_golden_bytes() {
        let token = ProvisionResponse::Success {
            credentials_type: CredentialsType::AccessToken,
            credentials: CredentialsValue::Text("T0K".into()),
        };
        // status = 1: SUCCESS; credentialsType ACCESS_TOKEN (0) left out.
        let mut expected = vec![0x08, 1];
        expected.extend(len(3, b"T0K"));
        assert_eq!(token.to_protobuf(), expected);
        assert_eq!(ProvisionResponse::parse_protobuf(&expected), Ok(token));

        let x509 = ProvisionResponse::Success {
            credentials_type: CredentialsType::X509Certificate,
            credentials: CredentialsValue::Text("CERT".into()),
        };
        let mut expected = vec![0x08, 1, 0x10, 1];
        expected.extend(len(3, b"CERT"));
        assert_eq!(x509.to_protobuf(), expected);
        assert_eq!(ProvisionResponse::parse_protobuf(&expected), Ok(x509));

        let basic = ProvisionResponse::Success {
            credentials_type: CredentialsType::MqttBasic,
            credentials: CredentialsValue::MqttBasic {
                client_id: Some("c".into()),
                user_name: Some("u".into()),
                password: None,
            },
        };
        let mut expected = vec![0x08, 1, 0x10, 2];
        expected.extend(len(3, br#"{"clientId":"c","userName":"u"}"#));
        assert_eq!(basic.to_protobuf(), expected);
        assert_eq!(ProvisionResponse::parse_protobuf(&expected), Ok(basic));

        let not_found = ProvisionResponse::NotFound {
            error_msg: "Provision data was not found!".into(),
        };
        assert_eq!(not_found.to_protobuf(), [0x08, 2]);
        assert_eq!(
            ProvisionResponse::parse_protobuf(&[0x08, 2]),
            Ok(ProvisionResponse::NotFound {
                error_msg: String::new()
            })
        );
        let failure = ProvisionResponse::Failure {
            error_msg: "Failed to provision device!".into(),
        };
        assert_eq!(failure.to_protobuf(), [0x08, 3]);
        assert_eq!(
            ProvisionResponse::parse_protobuf(&[0x08, 3]),
            Ok(ProvisionResponse::Failure {
                error_msg: String::new()
            })
        );
    }

    #[test]
    fn bad_responses_are_typed_errors() {
        // No status, or UNKNOWN, or a number outside the enum.
        for (bytes, value) in [
            (&[][..], "UNKNOWN"),
            (&[0x08, 0][..], "UNKNOWN"),
            (&[0x08, 7][..], "7"),
        ] {
            assert_eq!(
                ProvisionResponse::parse_protobuf(bytes),
                Err(PayloadError::UnknownValue {
                    field: "status",
                    value: value.into()
                })
            );
        }
        assert_eq!(
            ProvisionResponse::parse_protobuf(&[0x08, 1, 0x10, 3]),
            Err(PayloadError::UnknownValue {
                field: "credentialsType",
                value: "LWM2M_CREDENTIALS".into()
            })
        );
        // MQTT_BASIC whose value is not a JSON object.
        let mut bytes = vec![0x08, 1, 0x10, 2];
        bytes.extend(len(3, b"[1]"));
        assert_eq!(
            ProvisionResponse::parse_protobuf(&bytes),
            Err(PayloadError::WrongType {
                field: "credentialsValue",
                expected: "JSON object text"
            })
        );
        let mut bytes = vec![0x08, 1, 0x10, 2];
        bytes.extend(len(3, b"{"));
        assert!(matches!(
            ProvisionResponse::parse_protobuf(&bytes),
            Err(PayloadError::InvalidJson { .. })
        ));
        // A JSON response is not protobuf (`{` is field 15 with wire type 3).
        assert!(matches!(
            ProvisionResponse::parse_protobuf(br#"{"status":"NOT_FOUND"}"#),
            Err(PayloadError::InvalidProtobuf(_))
        ));
    }

    #[test]
    fn truncation_is_an_error_at_every_cut() {
        let request = full_request_bytes();
        let mut response = vec![0x08, 1, 0x10, 1];
        response.extend(len(3, b"CERT"));
        for (bytes, is_request) in [(&request, true), (&response, false)] {
            for cut in 1..bytes.len() {
                let part = bytes.get(..cut).unwrap();
                // A cut between two fields leaves a shorter valid message; any other cut
                // is malformed.
                let result = if is_request {
                    ProvisionRequest::parse_protobuf(part).map(|_| ())
                } else {
                    ProvisionResponse::parse_protobuf(part).map(|_| ())
                };
                if let Err(e) = result {
                    assert!(
                        matches!(
                            e,
                            PayloadError::InvalidProtobuf(_) | PayloadError::UnknownValue { .. }
                        ),
                        "{cut}: {e}"
                    );
                }
            }
        }
        // Cuts inside a field are always errors.
        for cut in [1, 2, 4, 6, 9, request.len() - 1] {
            assert!(
                matches!(
                    ProvisionRequest::parse_protobuf(request.get(..cut).unwrap()),
                    Err(PayloadError::InvalidProtobuf(_))
                ),
                "{cut}"
            );
        }
        for cut in [1, 3, 5, 6, response.len() - 1] {
            assert!(
                matches!(
                    ProvisionResponse::parse_protobuf(response.get(..cut).unwrap()),
                    Err(PayloadError::InvalidProtobuf(_))
                ),
                "{cut}"
            );
        }
    }

    #[test]
    fn malformed_bytes_are_typed_errors() {
        let invalid =
            |r: Result<(), PayloadError>| matches!(r, Err(PayloadError::InvalidProtobuf(_)));
        let request = |b: &[u8]| ProvisionRequest::parse_protobuf(b).map(|_| ());
        let response = |b: &[u8]| ProvisionResponse::parse_protobuf(b).map(|_| ());
        // Malformed for any message.
        for bad in [
            &[0x0a][..],          // key without its length
            &[0x0a, 5, b'a'][..], // truncated string
            &[0x0b][..],          // start group
            &[0x10, 0x80][..],    // truncated varint
            &[0x22, 5, 0x0a][..], // truncated field
            &[0x00, 0x00][..],    // field number 0
            &[0x80; 11][..],      // varint longer than 10 bytes
            &[0x0d, 1, 2][..],    // truncated fixed32
        ] {
            assert!(invalid(request(bad)), "{bad:02x?}");
            assert!(invalid(response(bad)), "{bad:02x?}");
        }
        // Strings that are not UTF-8, and malformed embedded messages, of the request.
        for bad in [
            &[0x0a, 1, 0xff][..],                   // deviceName
            &[0x1a, 3, 0x0a, 1, 0xff][..],          // provisionDeviceKey
            &[0x1a, 3, 0x12, 1, 0xc3][..],          // provisionDeviceSecret
            &[0x22, 5, 0x0a, 3, 0x0a, 1, 0xff][..], // token
            &[0x22, 5, 0x12, 3, 0x0a, 1, 0xff][..], // hash
            &[0x22, 5, 0x1a, 3, 0x1a, 1, 0xff][..], // password
            &[0x1a, 2, 0x0a, 5][..],                // truncated inside the credentials
            &[0x22, 4, 0x1a, 2, 0x12, 7][..],       // truncated inside the basic message
        ] {
            assert!(invalid(request(bad)), "{bad:02x?}");
        }
        // credentialsValue not UTF-8.
        assert!(invalid(response(&[0x08, 1, 0x1a, 1, 0xff])));
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{1,12}")
    }

    fn any_request() -> impl Strategy<Value = ProvisionRequest> {
        (
            (opt_text(), ".{0,12}", ".{0,12}", 0..3u8, opt_text()),
            (
                opt_text(),
                opt_text(),
                opt_text(),
                opt_text(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (device_name, key, secret, ty, token),
                    (client_id, username, password, hash, gw),
                )| {
                    ProvisionRequest {
                        device_name,
                        provision_device_key: key,
                        provision_device_secret: secret,
                        credentials_type: match ty {
                            1 => Some(CredentialsType::X509Certificate),
                            2 => Some(CredentialsType::MqttBasic),
                            _ => None,
                        },
                        token,
                        client_id,
                        username,
                        password,
                        hash,
                        gateway: gw.then_some(true),
                    }
                },
            )
    }

    fn any_response() -> impl Strategy<Value = ProvisionResponse> {
        prop_oneof![
            (0..2u8, ".{0,20}").prop_map(|(t, text)| ProvisionResponse::Success {
                credentials_type: if t == 0 {
                    CredentialsType::AccessToken
                } else {
                    CredentialsType::X509Certificate
                },
                credentials: CredentialsValue::Text(text),
            }),
            (opt_text(), opt_text(), opt_text()).prop_map(|(client_id, user_name, password)| {
                ProvisionResponse::Success {
                    credentials_type: CredentialsType::MqttBasic,
                    credentials: CredentialsValue::MqttBasic {
                        client_id,
                        user_name,
                        password,
                    },
                }
            }),
            Just(ProvisionResponse::NotFound {
                error_msg: String::new()
            }),
            Just(ProvisionResponse::Failure {
                error_msg: String::new()
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in any_request()) {
            prop_assert_eq!(ProvisionRequest::parse_protobuf(&r.to_protobuf()), Ok(r));
        }

        #[test]
        fn responses_round_trip(r in any_response()) {
            prop_assert_eq!(ProvisionResponse::parse_protobuf(&r.to_protobuf()), Ok(r));
        }

        #[test]
        fn both_forms_read_the_same(r in any_request(), a in any_response()) {
            use crate::payload::Payload;
            prop_assert_eq!(
                ProvisionRequest::parse(&r.to_vec()),
                ProvisionRequest::parse_protobuf(&r.to_protobuf())
            );
            prop_assert_eq!(
                ProvisionResponse::parse(&a.to_vec()),
                ProvisionResponse::parse_protobuf(&a.to_protobuf())
            );
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = ProvisionRequest::parse_protobuf(&bytes);
            let _ = ProvisionResponse::parse_protobuf(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(
            r in any_request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = r.to_protobuf();
            let i = at.index(bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b = byte;
            }
            let _ = ProvisionRequest::parse_protobuf(&bytes);
            let _ = ProvisionResponse::parse_protobuf(&bytes);
        }
    }
}
