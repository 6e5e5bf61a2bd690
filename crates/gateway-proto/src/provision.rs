//! Device provisioning: a connection that asks ThingsBoard for credentials and closes.
//!
//! A CONNECT whose username (or client id) is `provision` gets a provisioning-only session
//! without any credential check (spec §3.6, `MqttTransportHandler.processConnect`). The
//! client publishes `{"deviceName":..,"provisionDeviceKey":..,"provisionDeviceSecret":..}`
//! (plus the optional credentials it wants) on `/provision/request`, and the answer comes on
//! `/provision/response`. ThingsBoard closes the session 60 s after answering.
//!
//! ThingsBoard also takes the request as a protobuf `ProvisionDeviceRequestMsg` and then
//! answers with a protobuf `ProvisionDeviceResponseMsg` (it tries JSON first, protobuf when
//! the payload is not JSON; the device profile plays no part). Set
//! [`Config::protobuf_profile`] on the provisioning configuration to provision that way: the
//! request goes out in protobuf ([`ProvisionRequest::to_protobuf`]) and the answer is read as
//! protobuf, or as JSON if it is not protobuf (a JSON answer starts with `{`, which no
//! protobuf message does). A protobuf answer has no `errorMsg`, so
//! [`ProvisionError::NotFound`] and [`ProvisionError::Failure`] then carry an empty message.
//! The result is the same [`Event::Provisioned`](crate::Event::Provisioned) either way. See
//! [`payload::provision_protobuf`](crate::payload::provision_protobuf) for the mapping.
//!
//! ```
//! use gateway_proto::payload::ProvisionRequest;
//! use gateway_proto::Config;
//!
//! let mut config = Config::provisioning(ProvisionRequest::new("KEY", "SECRET"));
//! config.protobuf_profile = true; // request and answer in protobuf
//! assert_eq!(config.validate(), Ok(()));
//! ```
//!
//! Build one with [`Config::provisioning`]; the [`Connection`](crate::Connection) then
//! subscribes to `/provision/response` only, sends the request once, reports
//! [`Event::Provisioned`](crate::Event::Provisioned) and closes itself: after the answer,
//! after [`Config::provision_timeout`] without one, or when the session ends first. It
//! never reconnects: a request that reached the server may have created the device, and
//! asking again would fail with "device already exists".

use std::fmt;

use crate::config::{Config, Credentials};
use crate::event::DisconnectReason;
use crate::payload::{
    CredentialsValue, Payload, PayloadError, ProvisionRequest, ProvisionResponse,
};
use crate::reason::ReasonCode;

/// The credentials ThingsBoard issued. `Debug` never prints secrets.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionedCredentials {
    /// `ACCESS_TOKEN`: connect with it as the MQTT username.
    AccessToken(String),
    /// `MQTT_BASIC`: client id, user name and password (each may be absent).
    Basic {
        /// MQTT client id.
        client_id: Option<String>,
        /// MQTT user name.
        username: Option<String>,
        /// MQTT password.
        password: Option<String>,
    },
    /// `X509_CERTIFICATE`: the certificate (or hash) the request named was accepted; connect
    /// over mutual TLS with that certificate.
    X509 {
        /// The certificate text as ThingsBoard stored it.
        certificate: String,
    },
}

impl fmt::Debug for ProvisionedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
            Self::Basic {
                client_id,
                username,
                password,
            } => f
                .debug_struct("Basic")
                .field("client_id", client_id)
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::X509 { .. } => f.write_str("X509"),
        }
    }
}

impl ProvisionedCredentials {
    /// A configuration for a normal session with these credentials (defaults otherwise;
    /// [`Config::role`] is a gateway unless changed). For X.509 the adapter must present the
    /// certificate in the TLS handshake.
    pub fn to_config(&self) -> Config {
        match self {
            Self::AccessToken(token) => Config::new(Credentials::AccessToken(token.clone())),
            Self::Basic {
                client_id,
                username,
                password,
            } => {
                let mut c = Config::new(Credentials::Basic {
                    username: username.clone(),
                    password: password.clone(),
                });
                c.client_id = client_id.clone().unwrap_or_default();
                c
            }
            Self::X509 { .. } => Config::new(Credentials::X509),
        }
    }

    /// Reads a response. `Ok(Err(..))` is the server's refusal.
    pub(crate) fn from_response(response: ProvisionResponse) -> Result<Self, ProvisionError> {
        use crate::payload::CredentialsType as T;
        match response {
            ProvisionResponse::Success {
                credentials_type,
                credentials,
            } => Ok(match (credentials_type, credentials) {
                (
                    _,
                    CredentialsValue::MqttBasic {
                        client_id,
                        user_name,
                        password,
                    },
                ) => Self::Basic {
                    client_id,
                    username: user_name,
                    password,
                },
                (T::X509Certificate, CredentialsValue::Text(certificate)) => {
                    Self::X509 { certificate }
                }
                (_, CredentialsValue::Text(token)) => Self::AccessToken(token),
            }),
            ProvisionResponse::NotFound { error_msg } => {
                Err(ProvisionError::NotFound { message: error_msg })
            }
            ProvisionResponse::Failure { error_msg } => {
                Err(ProvisionError::Failure { message: error_msg })
            }
        }
    }
}

/// The request's payload: protobuf when `protobuf` ([`Config::protobuf_profile`]), else JSON.
pub(crate) fn request_payload(request: &ProvisionRequest, protobuf: bool) -> Vec<u8> {
    if protobuf {
        request.to_protobuf()
    } else {
        request.to_vec()
    }
}

/// Reads the answer on `/provision/response`. A protobuf request's answer is read as
/// protobuf and, failing that, as JSON (the error reported is the protobuf one); a JSON
/// request's answer as JSON only.
pub(crate) fn read_response(
    payload: &[u8],
    protobuf: bool,
) -> Result<ProvisionedCredentials, ProvisionError> {
    let response = if protobuf {
        ProvisionResponse::parse_protobuf(payload)
            .or_else(|e| ProvisionResponse::parse(payload).map_err(|_| e))
    } else {
        ProvisionResponse::parse(payload)
    };
    match response {
        Ok(response) => ProvisionedCredentials::from_response(response),
        Err(e) => Err(ProvisionError::InvalidResponse(e)),
    }
}

/// Why provisioning gave no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionError {
    /// `NOT_FOUND`: wrong provision key or secret, or provisioning disabled on the profile.
    NotFound {
        /// The server's `errorMsg` (e.g. "Provision data was not found!"); empty for a
        /// protobuf answer, which has none.
        message: String,
    },
    /// `FAILURE`: e.g. the device exists already, or the pre-provisioned device is missing
    /// or was provisioned before.
    Failure {
        /// The server's `errorMsg` (e.g. "Failed to provision device!"); empty for a
        /// protobuf answer, which has none.
        message: String,
    },
    /// The server refused the request's publish (MQTT 5 PUBACK failure code; 0x83 when key
    /// or secret is missing).
    Rejected(ReasonCode),
    /// The response could not be read.
    InvalidResponse(PayloadError),
    /// No response within [`Config::provision_timeout`] of the session starting.
    Timeout,
    /// The session ended (or never started) before the answer.
    ConnectionEnded(DisconnectReason),
    /// The application closed the connection first.
    Closed,
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { message } => write!(f, "provisioning data not found: {message}"),
            Self::Failure { message } => write!(f, "provisioning failed: {message}"),
            Self::Rejected(code) => write!(f, "provisioning request rejected: {code}"),
            Self::InvalidResponse(e) => write!(f, "invalid provisioning response: {e}"),
            Self::Timeout => f.write_str("no provisioning response in time"),
            Self::ConnectionEnded(reason) => {
                write!(
                    f,
                    "connection ended before the provisioning response: {reason}"
                )
            }
            Self::Closed => f.write_str("closed by the application before the response"),
        }
    }
}

impl std::error::Error for ProvisionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidResponse(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Payload;

    #[test]
    fn responses_become_credentials_or_typed_failures() {
        let parse = |s: &str| {
            ProvisionedCredentials::from_response(
                ProvisionResponse::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            )
        };
        assert_eq!(
            parse(
                r#"{"credentialsValue":"T0K","credentialsType":"ACCESS_TOKEN","status":"SUCCESS"}"#
            ),
            Ok(ProvisionedCredentials::AccessToken("T0K".into()))
        );
        assert_eq!(
            parse(
                r#"{"credentialsValue":{"clientId":"c","userName":"u","password":"p"},"credentialsType":"MQTT_BASIC","status":"SUCCESS"}"#
            ),
            Ok(ProvisionedCredentials::Basic {
                client_id: Some("c".into()),
                username: Some("u".into()),
                password: Some("p".into())
            })
        );
        assert_eq!(
            parse(
                r#"{"credentialsValue":"CERT","credentialsType":"X509_CERTIFICATE","status":"SUCCESS"}"#
            ),
            Ok(ProvisionedCredentials::X509 {
                certificate: "CERT".into()
            })
        );
        assert_eq!(
            parse(r#"{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}"#),
            Err(ProvisionError::NotFound {
                message: "Provision data was not found!".into()
            })
        );
        assert_eq!(
            parse(r#"{"errorMsg":"Failed to provision device!","status":"FAILURE"}"#),
            Err(ProvisionError::Failure {
                message: "Failed to provision device!".into()
            })
        );
    }

    #[test]
    fn debug_redacts_and_configs_follow_the_credentials() {
        let token = ProvisionedCredentials::AccessToken("SECRET".into());
        assert!(!format!("{token:?}").contains("SECRET"));
        assert_eq!(
            token.to_config().credentials,
            Credentials::AccessToken("SECRET".into())
        );
        let basic = ProvisionedCredentials::Basic {
            client_id: Some("cid".into()),
            username: Some("u".into()),
            password: Some("SECRET".into()),
        };
        assert!(!format!("{basic:?}").contains("SECRET"));
        let c = basic.to_config();
        assert_eq!(c.client_id, "cid");
        assert_eq!(c.validate(), Ok(()));
    }
}
