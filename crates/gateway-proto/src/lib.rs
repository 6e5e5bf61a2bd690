//! # gateway-proto: a sans-IO ThingsBoard MQTT client core
//!
//! This crate holds the protocol logic of a ThingsBoard device or gateway client and nothing
//! else: it never opens a socket, never reads a clock and never spawns a task. An adapter
//! (tokio, async-std/smol, blocking `std::net`, or your own runtime) moves bytes, time and
//! commands between it and the world.
//!
//! One [`Connection`] turns inputs into ordered outputs:
//!
//! * **inputs**: [`Input::TransportOpened`], [`Input::Bytes`] (split anywhere),
//!   [`Input::TransportClosed`] and [`Input::Timeout`], each with the current [`Instant`](std::time::Instant);
//!   and application [`Command`]s, checked synchronously;
//! * **outputs**, drained in order with [`Connection::poll_output`]:
//!   [`Output::Transmit`] bytes, [`Output::Event`]s for the application,
//!   [`Output::OpenTransport`] (after a backoff) and [`Output::CloseTransport`];
//! * **the next deadline**: [`Connection::poll_timeout`].
//!
//! The connection reconnects by itself: after a session ends it waits (exponential backoff
//! with seeded jitter), asks for a new transport, resubscribes, and retransmits every
//! unacknowledged QoS 1 publish. Every accepted publish ends in exactly one outcome event
//! ([`Event::Delivered`], [`Event::Sent`] or [`Event::Failed`]); nothing is dropped
//! silently, and every buffer has a bound.
//!
//! ThingsBoard's topics and payloads, in both directions (client and server), live in
//! [`topic`] and [`payload`]; the platform emulator uses the same definitions.
//!
//! ## The drive loop
//!
//! After *one* mutation (an input, a command, a timeout), drain every output, then wait for
//! the next thing to happen. A blocking adapter over `std::net` looks like this:
//!
//! ```no_run
//! use std::io::{ErrorKind, Read, Write};
//! use std::net::TcpStream;
//! use std::time::{Duration, Instant};
//!
//! use gateway_proto::{Command, Config, Connection, Credentials, Event, Input, Output};
//!
//! let config = Config::new(Credentials::AccessToken("A1_TEST_TOKEN".into()));
//! let mut conn = Connection::new(config, Instant::now()).expect("valid config");
//! conn.command(Instant::now(), Command::publish("v1/devices/me/telemetry", r#"{"t":21.5}"#))
//!     .expect("accepted");
//!
//! let mut socket: Option<TcpStream> = None;
//! let mut buf = [0u8; 8192];
//! loop {
//!     // 1. Drain everything the connection wants done, in order.
//!     while let Some(output) = conn.poll_output() {
//!         match output {
//!             Output::Transmit(bytes) => {
//!                 if let Some(s) = socket.as_mut() {
//!                     if s.write_all(&bytes).is_err() {
//!                         socket = None;
//!                         conn.handle_input(Instant::now(), Input::TransportClosed);
//!                     }
//!                 }
//!             }
//!             Output::OpenTransport => match TcpStream::connect("127.0.0.1:1883") {
//!                 Ok(s) => {
//!                     socket = Some(s);
//!                     conn.handle_input(Instant::now(), Input::TransportOpened);
//!                 }
//!                 Err(_) => conn.handle_input(Instant::now(), Input::TransportClosed),
//!             },
//!             Output::CloseTransport => socket = None,
//!             Output::Event(Event::Delivered(id)) => println!("{id} delivered"),
//!             Output::Event(event) => println!("{event:?}"),
//!             _ => {}
//!         }
//!     }
//!     // 2. Wait for bytes or the next deadline, whichever comes first.
//!     let now = Instant::now();
//!     let wait = conn
//!         .poll_timeout()
//!         .map(|t| t.saturating_duration_since(now).max(Duration::from_millis(1)));
//!     match socket.as_mut() {
//!         Some(s) => {
//!             s.set_read_timeout(wait).ok();
//!             match s.read(&mut buf) {
//!                 Ok(0) => {
//!                     socket = None;
//!                     conn.handle_input(Instant::now(), Input::TransportClosed);
//!                 }
//!                 Ok(n) => conn.handle_input(Instant::now(), Input::Bytes(&buf[..n])),
//!                 Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
//!                     conn.handle_input(Instant::now(), Input::Timeout)
//!                 }
//!                 Err(_) => {
//!                     socket = None;
//!                     conn.handle_input(Instant::now(), Input::TransportClosed);
//!                 }
//!             }
//!         }
//!         None => {
//!             std::thread::sleep(wait.unwrap_or(Duration::from_millis(100)));
//!             conn.handle_input(Instant::now(), Input::Timeout);
//!         }
//!     }
//! }
//! ```
//!
//! ## The Gateway API
//!
//! A gateway holds one MQTT session and speaks for many sub-devices. Commands name the
//! sub-device; the connection remembers every one it has seen (bounded by
//! [`Config::max_sub_devices`]), announces them all again after each reconnect *before* any
//! queued data, and keeps silent ones alive before ThingsBoard's 10-minute idle expiry
//! ([`Config::sub_device_keepalive`]). Without that, ThingsBoard stops routing RPCs and
//! attribute updates to a sub-device after every reconnect.
//!
//! ```
//! use std::time::Instant;
//! use gateway_proto::{AttributeScope, Command, CommandError, Config, Connection, Credentials, Event};
//! use serde_json::{json, Map, Value};
//!
//! let now = Instant::now();
//! let config = Config::new(Credentials::AccessToken("GATEWAY_TOKEN".into()));
//! let mut conn = Connection::new(config, now)?;
//!
//! // Announce a sub-device with its device profile.
//! conn.command(now, Command::connect_device("Boiler 7", Some("boiler")))?;
//! // Telemetry with server time (a sub-device is also registered by its first data).
//! let mut values = Map::new();
//! values.insert("temperature".into(), json!(71.5));
//! let sent = conn.command(now, Command::device_telemetry("Boiler 7", values))?;
//! // A shared attribute; the answer arrives as `Event::AttributeResponse { request: asked, .. }`.
//! let asked = conn.command(
//!     now,
//!     Command::request_device_attributes("Boiler 7", AttributeScope::Shared, ["setpoint"]),
//! )?;
//! assert!(asked > sent);
//!
//! // In the drive loop, for each `Output::Event`:
//! fn on_event(conn: &mut Connection, now: Instant, event: Event) -> Result<(), CommandError> {
//!     match event {
//!         // Server-side RPC to a sub-device: ids count per device, so reply with both.
//!         Event::RpcRequest { device: Some(device), id, method, .. } if method == "reboot" => {
//!             conn.command(now, Command::device_rpc_reply(device, id, json!({"ok": true})))?;
//!         }
//!         Event::AttributeUpdate { device: Some(device), values, deleted } => {
//!             println!("{device}: {values:?}, deleted {deleted:?}");
//!         }
//!         Event::AttributeResponse { request, device, shared, .. } => {
//!             println!("{request} for {device:?}: {shared:?}");
//!         }
//!         Event::SubDeviceRenamed { old_name, new_name } => println!("{old_name} is now {new_name}"),
//!         Event::Failed { request, error } => println!("{request} failed: {error}"),
//!         _ => {}
//!     }
//!     Ok(())
//! }
//! # let _ = on_event;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## The Device API
//!
//! Every connection is also a device (a gateway is one too): its own telemetry, attributes,
//! attribute requests, server-side RPCs (`device: None` in events) and client-side RPCs.
//! Set [`Config::role`] to [`Role::Device`] for a plain device.
//!
//! ```
//! use std::time::Instant;
//! use gateway_proto::payload::ClientRpcResponse;
//! use gateway_proto::{Command, Config, Connection, Credentials, Event, Role};
//! use serde_json::{json, Map};
//!
//! let now = Instant::now();
//! let mut config = Config::new(Credentials::AccessToken("DEVICE_TOKEN".into()));
//! config.role = Role::Device;
//! let mut conn = Connection::new(config, now)?;
//!
//! let mut values = Map::new();
//! values.insert("humidity".into(), json!(40));
//! conn.command(now, Command::telemetry(values))?;
//! // `{"clientKeys":"model","sharedKeys":"interval"}` on attributes/request/{id}.
//! conn.command(now, Command::request_attributes(["model"], ["interval"]))?;
//! // A client-side RPC; ThingsBoard's own timeout comes back as an error response.
//! let rpc = conn.command(now, Command::rpc("getCurrentTime", json!({})))?;
//!
//! fn on_event(conn: &mut Connection, now: Instant, rpc: gateway_proto::RequestId, event: Event) {
//!     match event {
//!         Event::RpcResponse { request, response: ClientRpcResponse::Ok(time) } if request == rpc => {
//!             println!("server time {time}");
//!         }
//!         Event::RpcResponse { response, .. } if response.is_timeout() => println!("no answer"),
//!         Event::RpcRequest { device: None, id, .. } => {
//!             let _ = conn.command(now, Command::rpc_reply(id, json!("done")));
//!         }
//!         _ => {}
//!     }
//! }
//! # let _ = (on_event, rpc);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Provisioning
//!
//! A device that has only its device profile's provision key and secret asks ThingsBoard for
//! credentials on a provisioning-only connection ([`Config::provisioning`]). It is driven like
//! any other connection, refuses commands, reports [`Event::Provisioned`] and closes itself;
//! it never reconnects (see [`provision`]). The request is JSON; with
//! [`Config::protobuf_profile`] set on the provisioning configuration it is a protobuf
//! `ProvisionDeviceRequestMsg` instead, and ThingsBoard answers in protobuf
//! ([`payload::provision_protobuf`]).
//!
//! ```
//! use std::time::Instant;
//! use gateway_proto::payload::ProvisionRequest;
//! use gateway_proto::{Config, Connection, Event, Role};
//!
//! let request = ProvisionRequest::new("PROFILE_KEY", "PROFILE_SECRET").with_device_name("Sensor 7");
//! let conn = Connection::new(Config::provisioning(request), Instant::now())?;
//!
//! // In the drive loop: the answer, then `Event::Disconnected` and the end.
//! fn on_event(event: Event) -> Option<Config> {
//!     match event {
//!         Event::Provisioned(Ok(credentials)) => {
//!             // Store the credentials, then connect for real with them.
//!             let mut config = credentials.to_config();
//!             config.role = Role::Device;
//!             Some(config)
//!         }
//!         Event::Provisioned(Err(e)) => {
//!             eprintln!("{e}");
//!             None
//!         }
//!         _ => None,
//!     }
//! }
//! # let _ = (conn, on_event);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Firmware and software updates
//!
//! With [`Config::ota`] set, the connection watches the `fw_*` / `sw_*` shared attributes,
//! announces a new package, downloads it chunk by chunk on command (or by itself), hands
//! every chunk to the application and verifies the checksum incrementally, reporting the
//! `fw_state` telemetry ThingsBoard's dashboards follow (see [`ota`]).
//!
//! ```
//! use std::time::Instant;
//! use gateway_proto::{Command, Config, Connection, Credentials, Event, OtaConfig, OtaEvent, OtaVersion, Role};
//!
//! let mut config = Config::new(Credentials::AccessToken("DEVICE_TOKEN".into()));
//! config.role = Role::Device;
//! let mut ota = OtaConfig::new();
//! ota.current_firmware = Some(OtaVersion::new("cam-fw", "1.4"));
//! config.ota = Some(ota);
//! let conn = Connection::new(config, Instant::now())?;
//!
//! fn on_event(conn: &mut Connection, now: Instant, event: Event, image: &mut Vec<u8>) {
//!     match event {
//!         Event::Ota(OtaEvent::Available(package)) => {
//!             let _ = conn.command(now, Command::ota_download(package.kind));
//!         }
//!         // Write each chunk out; the connection keeps nothing.
//!         Event::Ota(OtaEvent::Chunk { data, .. }) => image.extend_from_slice(&data),
//!         Event::Ota(OtaEvent::Verified(package)) => {
//!             let _ = conn.command(now, Command::ota_updating(package.kind));
//!             // ... install `image` ...
//!             let updated = Command::ota_updated(package.kind, &package.title, &package.version);
//!             let _ = conn.command(now, updated);
//!         }
//!         Event::Ota(OtaEvent::Failed { error, .. }) => eprintln!("update failed: {error}"),
//!         _ => {}
//!     }
//! }
//! # let _ = (conn, on_event);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Anything the typed commands do not cover goes through [`Command::Publish`]; downlinks on
//! topics the connection does not know arrive as [`Event::Message`].
//!
//! ## Session limits, rate limits and big messages
//!
//! ThingsBoard closes the whole connection when a message exceeds its packet limit or one of
//! its rate limits, and a gateway's sub-devices share one limit. By default
//! ([`Config::limits`], see [`limits`]) the connection asks `getSessionLimits` after every
//! CONNACK and holds queued data until the answer (a plain broker never answers: it carries
//! on after a bounded wait), then paces every publish with token buckets mirroring the
//! server's (the connection's own traffic and the sub-devices' aggregate separately), splits
//! telemetry and attributes to the packet and data-point limits, and slows down when the
//! server pushes back. Waiting messages stay queued in order: never dropped, never reported
//! sent.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use gateway_proto::limits::PushBack;
//! use gateway_proto::{Command, Config, Connection, Credentials, Event, LimitsReport, RequestError};
//! use serde_json::{json, Map, Value};
//!
//! let now = Instant::now();
//! let mut config = Config::new(Credentials::AccessToken("GATEWAY_TOKEN".into()));
//! config.limits.session_limits_wait = Some(Duration::from_secs(3));
//! config.limits.rate_share_percent = 90; // of each server limit (default 80)
//! let mut conn = Connection::new(config, now)?;
//!
//! // Any size: split to fit, paced, and still one outcome for the command.
//! let values: Map<String, Value> = (0..5_000).map(|i| (format!("k{i}"), json!(i))).collect();
//! let id = conn.command(now, Command::device_telemetry("Meter 1", values))?;
//!
//! fn on_event(event: Event) {
//!     match event {
//!         Event::SessionLimits(LimitsReport::Applied(limits)) => {
//!             println!("server limits: {:?}", limits.server.gateway_rate_limits);
//!         }
//!         Event::SessionLimits(other) => println!("{other}"),
//!         // Which limit (own or sub-devices'), what the server did, and what the client did.
//!         Event::RateLimited(notice) => {
//!             if let PushBack::PubAck { request, resent: true, .. } = notice.signal {
//!                 println!("{request} refused; sent again after {:?}", notice.paused_until);
//!             }
//!         }
//!         Event::Failed { request, error: RequestError::Partial { delivered, parts, error } } => {
//!             println!("{request}: {delivered}/{parts} parts delivered, then {error}");
//!         }
//!         _ => {}
//!     }
//! }
//! # let _ = (on_event, id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The Device API can also use ThingsBoard's short topics ([`Config::device_topics`]:
//! `v2/t`, `v2/a`, `v2/a/req/{id}`, `v2/r/req/{id}` ..., forced JSON with `/j`, protobuf
//! with `/p`). On `/p` the application encodes and decodes the payloads with its device
//! profile's schemas: see [`raw`]. A gateway whose own profile is PROTOBUF
//! ([`Config::protobuf_profile`]) keeps its typed Gateway API commands and events; they
//! travel as ThingsBoard's gateway protobuf messages ([`payload::gateway_protobuf`]).
//!
//! ## Contract
//!
//! * Pass a monotonic `now`; the connection never reads the clock itself.
//! * Drain [`Connection::poll_output`] until `None` after every call that feeds it, and write
//!   [`Output::Transmit`] bytes in order before acting on a later output.
//! * After [`Output::CloseTransport`], or after reporting [`Input::TransportClosed`], feed
//!   nothing more from that transport. The next transport is the one the next
//!   [`Output::OpenTransport`] asks for.
//! * Spurious [`Input::Timeout`]s are harmless; late ones only delay timers.
//!
//! ## What the core guarantees
//!
//! * Nothing but CONNECT is sent before CONNACK; subscriptions go out right after it, then
//!   (with [`LimitsConfig::session_limits_wait`]) the `getSessionLimits` request, and once it
//!   is answered or the wait is over, retransmissions (with DUP) and queued publishes, in
//!   command order, each when the rate-limit buckets allow it.
//! * At most [`Config::max_inflight`] QoS 1 publishes await PUBACK; their packet ids are
//!   non-zero and unique, and wrap from 65,535 to 1.
//! * A PUBACK with an MQTT 5 failure code fails its request with the typed
//!   [`ReasonCode`]; duplicate and unknown PUBACKs are ignored; a publish that times out is
//!   never reported as delivered, and its packet id stays reserved so a late PUBACK
//!   cannot complete another message.
//! * Inbound QoS 1 PUBLISHes are acknowledged; ThingsBoard's packet id 0 is delivered
//!   without an acknowledgement and without dropping the session. Packets above
//!   [`Config::max_incoming_packet`] are skipped as they stream in.
//! * Refusals that retrying cannot heal (bad credentials) wait at least
//!   [`ReconnectPolicy::refused_delay`] between attempts.
//! * Memory is bounded: unfinished publishes by [`Config::max_buffered_bytes`], the receive
//!   buffer by one packet of [`Config::max_incoming_packet`] plus one input, sub-devices by
//!   [`Config::max_sub_devices`], requests awaiting answers by
//!   [`Config::max_pending_requests`], server RPCs awaiting replies by
//!   [`Config::max_pending_server_rpcs`].
//! * Every command ends in exactly one outcome: [`Event::Delivered`], [`Event::Sent`],
//!   [`Event::Failed`], or for requests with an answer [`Event::AttributeResponse`] /
//!   [`Event::RpcResponse`] (or [`Event::Raw`] for raw ones). A command split into several
//!   publishes keeps its one outcome, reported when its last part finishes: success only if
//!   every part succeeded, else the first failure ([`RequestError::Partial`] if some parts
//!   got through). Answers are matched by wire id, kind and device; request ids
//!   are never reused, so a late answer is a [`Warning::UnmatchedResponse`], never the
//!   answer to another request. A request whose publish the server acknowledged fails with
//!   [`RequestError::ConnectionLost`] if the session drops before the answer (ThingsBoard
//!   routes answers to the session that asked).
//! * After every CONNACK, every tracked sub-device is re-announced (`v1/gateway/connect`,
//!   in name order, within the in-flight window) before any queued publish goes out.
//! * Bad server input on an API topic (invalid JSON, wrong shape, unknown id) is a
//!   [`Warning`] event; it never ends the session and never completes a request.
//! * An OTA download holds one chunk request and an incremental hash, never the image: each
//!   chunk leaves as [`OtaEvent::Chunk`] as it arrives, in order, exactly once.
//! * A provisioning connection sends its request once and ends with exactly one
//!   [`Event::Provisioned`]; it never reconnects.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod backoff;
pub mod checksum;
mod codec;
mod command;
mod config;
mod connection;
mod correlation;
mod error;
mod event;
mod idmap;
pub mod limits;
pub mod ota;
mod outbound;
mod output;
mod pacing;
pub mod payload;
pub mod provision;
pub mod raw;
mod reason;
mod registry;
mod split;
mod stats;
mod timer;
pub mod topic;

pub use codec::{ProtocolVersion, QoS};
pub use command::{AttributeScope, Command, DeviceCommand, GatewayCommand};
pub use config::{
    Config, Credentials, ReconnectPolicy, Role, Subscription, KEEPALIVE_KEY, PER_MESSAGE_OVERHEAD,
    PROVISION_IDENTITY,
};
pub use connection::{Connection, Input, State};
pub use error::{CommandError, ConfigError, ProtocolError};
pub use event::{DisconnectReason, Event, RequestError, RequestId, Warning};
pub use limits::{LimitsConfig, LimitsReport, RateLimitNotice};
pub use ota::{OtaCommand, OtaConfig, OtaEvent, OtaKind, OtaPackage, OtaVersion};
pub use output::Output;
pub use provision::{ProvisionError, ProvisionedCredentials};
pub use reason::{ConnectRefusal, ReasonCode};
pub use stats::Stats;

/// Codec errors that appear inside [`ProtocolError`] and [`RequestError`].
pub use codec::{DecodeError, EncodeError};

/// Low-level MQTT wire layer shared with peers such as the platform emulator. The
/// `Connection` API never needs it.
#[cfg(feature = "wire")]
pub mod wire {
    pub use crate::codec::*;
}
