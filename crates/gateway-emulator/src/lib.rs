//! # gateway-emulator: an in-process ThingsBoard MQTT transport
//!
//! A faithful imitation of what ThingsBoard's server does on the wire for the MQTT device API
//! and the gateway API, for tests, demos and users who want a platform without running one.
//! Its contract is `shared/spec/server-behaviour.md` (taken from the server source); the
//! section numbers in this crate's comments refer to it. Topics and payloads come from
//! [`gateway_proto::topic`] and [`gateway_proto::payload`], and MQTT packets from
//! `gateway_proto::wire`, so the client and the emulator share one definition.
//!
//! Two layers:
//!
//! * [`Emulator`]: sans-IO. The platform model (devices, credentials, attributes, telemetry,
//!   RPC, claims, limits, provisioning, OTA) plus one MQTT session per connection. Feed it
//!   bytes, closed transports and timeouts with an [`Instant`](std::time::Instant) you choose;
//!   drain [`Emulator::poll_output`] and [`Emulator::poll_event`]; wait until
//!   [`Emulator::poll_timeout`]. Tests drive it on a virtual clock.
//! * [`EmulatorHandle`]: a tokio TCP listener on 127.0.0.1 driving an [`Emulator`], optionally
//!   with a TLS listener beside it (ThingsBoard's 1883 and 8883), and the control API (create
//!   devices, push shared attributes, send RPCs and await the reply, read telemetry and
//!   attributes, list sessions and a gateway's children, drop a connection, shut down).
//!
//! ## Starting it from a test
//!
//! ```no_run
//! use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice, RpcCall, RpcOutcome};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let emu = EmulatorHandle::start(EmulatorConfig::default()).await?;
//! emu.create_device(NewDevice::gateway("My Gateway", "GATEWAY_TOKEN"))?;
//! println!("MQTT on {}", emu.addr()); // point the client at this, token as user name
//!
//! // ... the gateway connects and publishes {"Sensor":[{"t":21.5}]} on v1/gateway/telemetry ...
//!
//! let latest = emu.latest_telemetry("Sensor")?;
//! assert_eq!(latest["t"].value, json!(21.5));
//! let mut attrs = serde_json::Map::new();
//! attrs.insert("interval".into(), json!(5));
//! emu.set_shared_attributes("Sensor", attrs)?; // → {"device":"Sensor","data":{"interval":5}}
//! match emu.rpc("Sensor", RpcCall::two_way("reboot", json!({}))).await? {
//!     RpcOutcome::Reply(data) => println!("reply {data}"),
//!     other => println!("no reply: {other:?}"),
//! }
//! emu.shutdown();
//! # Ok(()) }
//! ```
//!
//! ## With TLS and X.509 device certificates
//!
//! [`EmulatorHandle::start_tls`] opens a second listener speaking MQTT over TLS (rustls, *ring*
//! provider), on 127.0.0.1 like the first. As on ThingsBoard's SSL port, access tokens and
//! MQTT-basic credentials work over TLS unchanged, and a client may present a certificate: if
//! it does, that certificate alone decides the device (the CONNECT's user name is ignored; an
//! unknown, expired or not-yet-valid certificate is refused with CONNACK 5 on MQTT 3.1.1 and
//! 0x87 + DISCONNECT 0x87 on MQTT 5). Devices get X.509 credentials with [`NewDevice::x509`]
//! (or [`Credentials::x509_pem`]), or by provisioning with `credentialsType`
//! `X509_CERTIFICATE`. [`ClientAuth`] chooses how client certificates are checked during the
//! handshake: ThingsBoard trusts no CA but checks that each certificate of a presented chain
//! is signed by the next ([`ClientAuth::AnyCertificate`], the default), or they can be
//! required to chain to a CA ([`ClientAuth::VerifiedBy`]). The test PKI of the
//! `gateway-testkit` crate makes the certificates.
//!
//! ```no_run
//! use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice, TlsConfig};
//!
//! # async fn demo(ca_pem: &str, server_pem: &str, server_key_pem: &str, device_pem: &str)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! // Server certificate for "localhost"/127.0.0.1; clients trust `ca_pem`.
//! let tls = TlsConfig::new(server_pem, server_key_pem);
//! let emu = EmulatorHandle::start_tls(EmulatorConfig::default(), tls).await?;
//! emu.create_device(NewDevice::x509("Meter", device_pem))?; // the device's certificate
//! emu.create_device(NewDevice::device("Sensor", "SENSOR_TOKEN"))?; // tokens work over TLS too
//! let plain = emu.addr(); // MQTT, like port 1883
//! let tls = emu.tls_addr().expect("started with TLS"); // MQTT over TLS, like port 8883
//! println!("mqtt://{plain} mqtts://localhost:{}", tls.port());
//! // A client presenting the device certificate (and its key) gets CONNACK 0 as "Meter".
//! # Ok(()) }
//! ```
//!
//! On the sans-IO [`Emulator`], [`Emulator::open_session_with_peer`] takes the same facts from
//! any transport: a [`PeerIdentity`] with the client certificate's DER (and, with
//! [`PeerIdentity::tls_chain`], the rest of the chain the client sent).
//!
//! Device profiles with the `X509_CERTIFICATE_CHAIN` provisioning strategy
//! ([`Emulator::add_x509_chain_profile`] / [`EmulatorHandle::add_x509_chain_profile`] with an
//! [`X509ChainProfile`]: the profile's CA certificate, a CN regex, whether new devices may be
//! created) provision devices from the chain a TLS client presents, as ThingsBoard 3.5+ does.
//! As there, it happens during the handshake, i.e. when the session opens
//! (`MqttSslHandlerProvider`'s trust manager → `validateOrCreateDeviceX509Certificate` →
//! `provisionDeviceViaX509Chain`): the chain is walked leaf first, a known certificate ends
//! it, a certificate equal to a chain profile's provisions the leaf (device name = group 1 of
//! the regex in the leaf's CN; an existing device of the profile is re-keyed to the leaf, a
//! missing one created if allowed), and any failure is only logged. The CONNECT then
//! authenticates by the leaf as usual, so whatever was not provisioned is refused with
//! CONNACK 5 / 0x87. See [`X509ChainProfile`] for the rules.
//!
//! ## Checked by a client nobody here wrote
//!
//! `tests/python_sdk.rs` runs the official ThingsBoard Python SDK (`tb-mqtt-client`, pinned in
//! `tests/python_sdk/requirements.txt`) against an [`EmulatorHandle`]: gateway and device APIs,
//! `getSessionLimits`, provisioning and the SDK's firmware flow, asserting both the SDK's view
//! and the platform's. It needs the venv: `python3 -m venv .venv-sdk &&
//! .venv-sdk/bin/pip install -r crates/gateway-emulator/tests/python_sdk/requirements.txt`
//! (or `$TB_SDK_PYTHON`).
//!
//! ## What is faithful
//!
//! * CONNECT: access token, MQTT basic credentials with ThingsBoard's lookup order, X.509
//!   client certificates over TLS (looked up like ThingsBoard: by the certificate's base64 DER,
//!   whose SHA3-256 is the `credentialsId`, see [`x509`]; validity checked unless
//!   [`EmulatorConfig::skip_validity_check_for_client_cert`]); CONNACK codes per version (bad
//!   token 5 / 0x86, unknown client id 2 / 0x85, nothing or an unknown certificate 5 / 0x87,
//!   backend error 3 / 0x88 by fault injection); a v5 refusal followed by DISCONNECT (the same
//!   code, or 0x89 / 0x83 after a backend error); Session Present echoing `!cleanSession`;
//!   `provision` user name or client id → provision-only session, even with a certificate; one
//!   session per device, the older one evicted (v5 DISCONNECT 0x8E).
//! * TLS ([`TlsConfig`]): client certificates requested but optional; no trust store, but
//!   ThingsBoard's chain-link check (`MqttSslHandlerProvider`'s trust manager,
//!   `validateCertificateChain`): in a chain of two or more certificates each must be signed by
//!   the next one's public key, or the handshake fails with a `certificate_unknown` alert and
//!   no session opens (so nothing is provisioned); a single certificate, names, validity and
//!   CA flags are not checked there ([`x509::verify_issued_by`]); a failed or stalled (10 s)
//!   handshake ends only that connection.
//! * X.509 certificate-chain provisioning ([`X509ChainProfile`]): the chain walk at session
//!   open (credential first, then profile certificate, per certificate, leaf first), the
//!   leaf's subject CN read like BouncyCastle (`getRDNs(CN)[0].getFirst()`, RFC 4514
//!   escaping, [`x509::common_name`]), `Matcher.find()` + group 1, re-keying of an existing
//!   X.509 device of the profile, creation only when allowed (generated name for an empty
//!   group, failure on a name of another profile or at the device limit), and NOT_AUTHORIZED
//!   at CONNECT for everything not provisioned (also an expired leaf, which is still
//!   provisioned at the handshake).
//! * MQTT device profiles' own telemetry and attributes topics ([`ProfileTopics`],
//!   [`Emulator::set_profile_topics`]): `MqttTopicFilterFactory`'s matching (`#`, `+`, `/#`,
//!   no other escaping, whole-topic match), the attributes filter before the telemetry filter
//!   before every fixed topic, and the default v1 data topics unknown while a profile has its
//!   own.
//! * `transport.json.max_string_value_length`
//!   ([`EmulatorConfig::max_string_value_length`], off by default as in ThingsBoard): a longer
//!   top-level string value, counted in UTF-16 units before any numeric cast, fails the JSON
//!   conversion of device telemetry and attributes, or of that one device on the gateway API
//!   (the protobuf adaptors are not limited here).
//! * Gateway latency metrics (`GatewayMetricsService`): the `metadata` of gateway telemetry
//!   elements, per gateway and connector, stored every
//!   [`EmulatorConfig::gateway_metrics_report_interval`] as the gateway's `gatewayMetrics`
//!   telemetry with ThingsBoard's arithmetic (see the `gateway_metrics` module).
//! * Credentials updates ([`Emulator::update_device_credentials`], and a chain profile
//!   re-keying a device): as `processCredentialsUpdate`, the device's open session is closed
//!   (v5 DISCONNECT 0x98; a gateway silently forgets the child until it is announced again);
//!   credentials of another device are refused.
//! * Wire forms: PUBACK and DISCONNECT as Netty writes them (`40 02 id` for success, `40 04 id
//!   rc 00` for a v5 failure, `E0 00` for a normal v5 DISCONNECT); QoS 2 PUBLISH answered with
//!   PUBACK, QoS 2 subscriptions granted QoS 1, PUBREC/PUBREL/PUBCOMP ignored.
//! * SUBSCRIBE: the exact filter list (no wildcards), granted QoS ≤ 1, 0x80 / 0x8F per failed
//!   filter; v5 UNSUBACK 0x00 / 0x11. The last attribute/RPC subscription decides the v1/v2
//!   topic family of downlinks; downlinks go out at QoS 1 when nothing matches.
//! * Gateway API: all seven topics; silently dropped for non-gateways; implicit get-or-create
//!   of children (existing devices adopted; `type` only); one aggregated PUBACK; every error
//!   class of §2.1 (0x99 kept, 0x83 + DISCONNECT, per-device failure, 0x97 device limit kept,
//!   0x97 + close for rate limits, no PUBACK + 0x8B for a rate-limited creation, 0x90) and the
//!   v3.1.1 equivalents, `sendAckOnValidationException` per device profile
//!   ([`Emulator::set_profile_send_ack_on_validation_exception`]); the v5 per-device notice on
//!   `v1/gateway/disconnect` (reason 150 after a rate limit when the connection survives it,
//!   reason 129 after the non-final entries of a QoS 0 multi-device message); value typing
//!   with type cast and null dropping; attribute responses with the `value`/`values` rule; shared attribute updates
//!   with `deleted`; server RPC with per-device ids from 0, one-way/two-way, expiry, pending
//!   delivery when a child comes back; `gateway_device_deleted` / `gateway_device_renamed`.
//! * Device API: telemetry, attributes, attribute requests (`clientKeys`/`sharedKeys` strings),
//!   RPC both ways on v1 and v2 topics, client RPC `{"error":"timeout"}`, `getSessionLimits`,
//!   claims, provisioning (create-new and pre-provisioned, all credential types), OTA chunks.
//! * Provisioning in JSON or protobuf, as `processProvisionSessionMsg`: a request is read as
//!   JSON first and, only when it is not JSON at all (a syntax error, or a value that is not
//!   an object), as a protobuf `ProvisionDeviceRequestMsg` (`gateway_proto`'s
//!   `ProvisionRequest::parse_protobuf`). That makes the session's provision payload type
//!   PROTOBUF for good: the answer is a `ProvisionDeviceResponseMsg` (status only for
//!   `NOT_FOUND` / `FAILURE`; MQTT_BASIC credentials as the JSON form's object text), for that
//!   request and any later one on the session. PUBACK, answer and the close 60 s later as for
//!   JSON. A JSON object without key or secret is not retried as protobuf (PUBACK 0x83 +
//!   DISCONNECT, as before); bytes that are neither JSON nor protobuf are an
//!   `AdaptorException` (v5 PUBACK 0x99, or DISCONNECT 0x99 at QoS 0; v3.1.1 close: a
//!   provision session has no profile, so no `sendAckOnValidationException`).
//! * Protobuf device API ([`Emulator::set_profile_protobuf`] with [`ProtoSchemas`], ThingsBoard's
//!   defaults or your own four `.proto` schemas, checked like a profile save): the `v2/.../p`
//!   topics, and the v1 and plain v2 topics of a PROTOBUF profile (`/j` stays JSON).
//!   Telemetry, attributes and RPC replies are decoded with the profile's schema (its last
//!   top-level message), printed as `JsonFormat` with default values does (camelCase names,
//!   64-bit integers as strings, enum names, nested messages and lists as JSON values) and
//!   stored through the JSON path; attribute requests, client RPCs and claims use
//!   `transportapi.AttributesRequest`, `RpcRequest`, `ClaimDevice`. Downlinks on the proto
//!   family: `AttributeUpdateNotificationMsg`, `GetAttributeResponseMsg` and
//!   `ToServerRpcResponseMsg` bytes, server RPCs built with the RPC-request schema from
//!   `{"method","requestId","params"}`; one that does not fit (e.g. object params with the
//!   default string `params`, or a JSON profile subscribed on `/p`) completes with
//!   ThingsBoard's `{"result":"INVALID_ARGUMENTS","error":..}` reply. A JSON profile's
//!   telemetry, attributes or RPC replies on `/p`, and undecodable bytes, fail like any
//!   payload (`AdaptorException`). The codec is hand-written, bounded and panic-free.
//!   The profile's JSON compatibility ([`JsonCompatibility`], ThingsBoard's
//!   `enableCompatibilityWithJsonPayloadFormat` and `useJsonPayloadFormatForDefaultDownlinkTopics`):
//!   on v1 and plain v2, an uplink the protobuf adaptor refuses is read as JSON, and with the
//!   second flag the v1 downlinks are JSON; `/j`, `/p` and the gateway API are unaffected.
//! * Protobuf on the gateway API: a gateway whose own profile is PROTOBUF speaks every
//!   `v1/gateway/*` topic, uplink and downlink, in `transportapi` messages (`ConnectMsg`,
//!   `DisconnectMsg`, `GatewayTelemetryMsg`, `GatewayAttributesMsg`, `GatewayClaimMsg`,
//!   `GatewayAttributesRequestMsg`, `GatewayRpcResponseMsg`; `GatewayAttributeUpdateNotificationMsg`,
//!   `GatewayAttributeResponseMsg`, `GatewayDeviceRpcRequestMsg`, and on MQTT 5 the
//!   per-device `GatewayDisconnectDeviceMsg` notice), with `gateway_proto`'s codec
//!   (`to_protobuf` / `parse_protobuf`, whose docs list the server rules and normalisations).
//!   Device creation, storage, RPC correlation, acknowledgements and rate-limit charging are
//!   those of the JSON form. As in AGSH `on*Proto`, bytes protobuf-java would not parse, an
//!   empty device name and an empty device list are all an `AdaptorException` (v5 PUBACK
//!   0x99, or DISCONNECT 0x99 at QoS 0; v3.1.1 close, or a plain PUBACK with
//!   `sendAckOnValidationException`), never the JSON form's 0x83 + DISCONNECT; a device
//!   entry that fails validation (e.g. an empty `kv` list) is the per-device failure of
//!   §2.1. Entries are handled in payload order, one `msg` at a time. Values are stored as
//!   typed on the wire: the JSON form's type cast of numeric strings does not apply.
//! * Limits: tenant device limit; tenant/device/gateway/gateway-device rate-limit buckets with
//!   ThingsBoard's greedy refill and bucket choice: telemetry and attribute posts take a
//!   telemetry message plus one data point per key (`checkLimits(.., kvCount)`), everything
//!   else (and a post without keys) a regular message. Session events are regular messages
//!   too: opening a session (refused: CONNACK 0x9F and DISCONNECT 0x96 on MQTT 5, CONNACK 3
//!   on 3.1.1), closing one, each attribute or RPC subscription, and a child's open (after
//!   its get-or-create, so a new child takes two tokens) and close (`v1/gateway/disconnect`,
//!   or its gateway's session ending); all but the first are refused silently with only the
//!   notification, as ThingsBoard sends them without a callback.
//! * Sessions: keep-alive not enforced; 10 min inactivity (pings count) for sessions and child
//!   sessions, `overwriteActivityTime`; 65,536-byte packet limit (DISCONNECT 0x81); wildcard
//!   topics and QoS 1 packet id 0 refused; outgoing packet ids passing 65,535 to 0.
//! * Restarts: [`Emulator::restart`] closes every connection without a DISCONNECT and keeps the
//!   platform (devices, attributes, telemetry, claims, limits, pending server-side RPCs), as a
//!   ThingsBoard restart keeps its database.
//! * Version quirks ([`Quirks`]): per-entry PUBACKs before 4.2.1, no PUBACK on a failed
//!   connect before 4.2.1.1, packet-id wrap.
//!
//! ## What is not (yet)
//!
//! * The TLS-level chain-link check verifies with rustls' *ring* algorithms only (ECDSA P-256
//!   and P-384 with SHA-256/384, Ed25519, RSA 2048–8192 bits PKCS#1 v1.5 or PSS with
//!   SHA-256/384/512): a link Java would verify with another algorithm (SHA-1 or MD5 with
//!   RSA, RSA under 2048 bits, DSA, P-521, Ed448, brainpool curves) fails the handshake here.
//!   JSSE's own algorithm constraints on the chain (`jdk.certpath.disabledAlgorithms`) are not
//!   modelled.
//! * X.509 chain provisioning: the `certificateRegExPattern` runs on Rust's `regex` engine (no
//!   look-around or back-references, Unicode classes) instead of `java.util.regex`; no
//!   well-known-root-CA check on the profile certificate; a provisioning request
//!   (`/provision`) naming such a profile's key gets NOT_FOUND, which is ThingsBoard's answer
//!   for a profile without a provision secret (with one, its `Invalid provision strategy
//!   type!` failure is not modelled).
//! * Provisioning edge cases: the JSON step uses serde_json, stricter than Gson's lenient
//!   parser, so JSON that only Gson accepts (unquoted names, single quotes) takes the
//!   protobuf path here; a protobuf request with `credentialsType` `LWM2M_CREDENTIALS` or an
//!   unknown number is refused as undecodable (0x99), where ThingsBoard parses it and
//!   fails later in a way not modelled.
//! * For a PROTOBUF gateway: a message with an empty device name after valid entries
//!   is refused whole (ThingsBoard has already handed the earlier entries on when
//!   `checkDeviceName` throws); negative ids are refused (`AdaptorException`) where
//!   ThingsBoard takes any `int32`.
//! * Persistent RPC states, RPC
//!   delivery-timeout close (0x98), per-IP blocking, the
//!   pre-CONNACK queue, a custom attributes subscription topic, MQTT 3.1
//!   (`MQIsdp`). A child whose session-open event, or a subscription that, was refused by a
//!   rate limit stays fully usable here; in ThingsBoard the device actor never learns of it.
//! * JSON multi-device messages are processed in key order (serde_json maps are sorted), not
//!   payload order; this only matters when a failure hits in the middle.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod convert;
mod emulator;
mod error;
mod gateway_metrics;
mod model;
mod platform;
mod profile_topics;
mod proto;
mod qos2;
mod ratelimit;
mod server;
mod session;
mod tls;
pub mod x509;

pub use config::{Bounds, EmulatorConfig, Quirks};
pub use emulator::Emulator;
pub use error::{ControlError, StartError, TlsError};
pub use model::{
    ClaimOutcome, ClientRpcAnswer, ClientRpcCall, ClientRpcHandler, Credentials, DeviceId,
    DeviceInfo, Event, LimitedApi, NewDevice, OtaPackage, PeerIdentity, ProvisionProfile,
    ProvisionStrategy, RpcCall, RpcOutcome, RpcTicket, SessionId, Stats, TsValue, X509ChainProfile,
};
pub use profile_topics::ProfileTopics;
pub use proto::{JsonCompatibility, ProtoSchemas, SchemaError, SchemaErrorKind, SchemaRole};
pub use ratelimit::{LimitConfig, TenantLimits};
pub use server::EmulatorHandle;
pub use session::{Output, SessionInfo};
pub use tls::{ClientAuth, TlsConfig};
