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
//! * [`EmulatorHandle`]: a tokio TCP listener on 127.0.0.1 driving an [`Emulator`], with the
//!   control API (create devices, push shared attributes, send RPCs and await the reply, read
//!   telemetry and attributes, list sessions and a gateway's children, drop a connection,
//!   shut down).
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
//! * CONNECT: access token, MQTT basic credentials with ThingsBoard's lookup order; CONNACK
//!   codes per version (bad token 5 / 0x86, unknown client id 2 / 0x85, nothing 5 / 0x87,
//!   backend error 3 / 0x88 by fault injection); a v5 refusal followed by DISCONNECT;
//!   Session Present echoing `!cleanSession`; `provision` user name or client id →
//!   provision-only session; one session per device, the older one evicted (v5 DISCONNECT 0x8E).
//! * SUBSCRIBE: the exact filter list (no wildcards), granted QoS ≤ 1, 0x80 / 0x8F per failed
//!   filter; v5 UNSUBACK 0x00 / 0x11. The last attribute/RPC subscription decides the v1/v2
//!   topic family of downlinks; downlinks go out at QoS 1 when nothing matches.
//! * Gateway API: all seven topics; silently dropped for non-gateways; implicit get-or-create
//!   of children (existing devices adopted; `type` only); one aggregated PUBACK; every error
//!   class of §2.1 (0x99 kept, 0x83 + DISCONNECT, per-device failure, 0x97 device limit kept,
//!   0x97 + close for rate limits, no PUBACK + 0x8B for a rate-limited creation, 0x90) and the
//!   v3.1.1 equivalents, `sendAckOnValidationException`; value typing with type cast and null
//!   dropping; attribute responses with the `value`/`values` rule; shared attribute updates
//!   with `deleted`; server RPC with per-device ids from 0, one-way/two-way, expiry, pending
//!   delivery when a child comes back; `gateway_device_deleted` / `gateway_device_renamed`.
//! * Device API: telemetry, attributes, attribute requests (`clientKeys`/`sharedKeys` strings),
//!   RPC both ways on v1 and v2 topics, client RPC `{"error":"timeout"}`, `getSessionLimits`,
//!   claims, provisioning (create-new and pre-provisioned, all credential types), OTA chunks.
//! * Limits: tenant device limit; tenant/device/gateway/gateway-device rate-limit buckets with
//!   ThingsBoard's greedy refill and bucket choice (telemetry + data points vs messages).
//! * Sessions: keep-alive not enforced; 10 min inactivity (pings count) for sessions and child
//!   sessions, `overwriteActivityTime`; 65,536-byte packet limit (DISCONNECT 0x81); wildcard
//!   topics and QoS 1 packet id 0 refused; outgoing packet ids passing 65,535 to 0.
//! * Version quirks ([`Quirks`]): per-entry PUBACKs before 4.2.1, no PUBACK on a failed
//!   connect before 4.2.1.1, packet-id wrap.
//!
//! ## What is not (yet)
//!
//! * TLS and X.509 authentication (the credential type exists; such devices cannot connect).
//! * Protobuf payloads (`v2/.../p` topics treat JSON as a parse failure, as the server would).
//! * QoS 2 PUBLISH: the server answers with PUBACK; the emulator's codec refuses QoS 2 and
//!   closes (DISCONNECT 0x81).
//! * Gateway latency metrics (`metadata` → `gatewayMetrics`), persistent RPC states, RPC
//!   delivery-timeout close (0x98), device credentials updates, per-IP blocking, the
//!   pre-CONNACK queue, `max_string_value_length`, custom device-profile topics, MQTT 3.1
//!   (`MQIsdp`), the v5 `v1/gateway/disconnect` notice after a forwarding failure (the server
//!   usually loses it anyway), short-form v5 PUBACK/DISCONNECT encodings.
//! * `sendAckOnValidationException` is global here; ThingsBoard sets it per device profile.
//! * Multi-device messages are processed in key order (serde_json maps are sorted), not
//!   payload order; this only matters when a failure hits in the middle.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod convert;
mod emulator;
mod error;
mod model;
mod platform;
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
    ProvisionStrategy, RpcCall, RpcOutcome, RpcTicket, SessionId, Stats, TsValue,
};
pub use ratelimit::{LimitConfig, TenantLimits};
pub use server::EmulatorHandle;
pub use session::{Output, SessionInfo};
pub use tls::{ClientAuth, TlsConfig};
