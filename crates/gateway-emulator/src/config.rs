//! Emulator settings: ThingsBoard's defaults, version quirks and the emulator's own memory bounds.

use std::time::Duration;

/// How the emulated server behaves. `Default` gives ThingsBoard 4.2.1+ with its shipped
/// `thingsboard.yml` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Largest accepted remaining length of an incoming packet (`transport.mqtt.netty.max_payload_size`,
    /// 65,536). Larger packets close the connection (MQTT 5: DISCONNECT 0x81 first).
    pub max_packet_size: usize,
    /// Idle time after which a session, or a gateway child session, is dropped
    /// (`transport.sessions.inactivity_timeout`, 10 min). PINGREQ counts as activity.
    pub inactivity_timeout: Duration,
    /// How long a client-side RPC waits for the handler before `{"error":"timeout"}`
    /// (`transport.client_side_rpc.timeout`, 60 s).
    pub client_rpc_timeout: Duration,
    /// How long after a provisioning response the server closes the connection (60 s).
    pub provision_close_delay: Duration,
    /// `maxInflightMessages` reported by `getSessionLimits` (100).
    pub max_inflight_messages: u64,
    /// `transport.mqtt.gateway_metrics_report_interval_sec` (60 s): how often the latency
    /// metrics gateways send in telemetry `metadata` are stored as the gateway's
    /// `gatewayMetrics` telemetry (at a fixed rate from start-up).
    pub gateway_metrics_report_interval: Duration,
    /// `transport.json.type_cast_enabled` (true): numeric strings in telemetry and attributes
    /// are stored as numbers.
    pub type_cast_enabled: bool,
    /// `transport.json.max_string_value_length` (0 = no limit): a JSON telemetry or attribute
    /// value that is a string longer than this (in UTF-16 units, Java's `String.length()`)
    /// fails the conversion, like any other invalid payload (a gateway: that device only).
    pub max_string_value_length: usize,
    /// The device profile's `sendAckOnValidationException` (false): on MQTT 3.1.1 an invalid
    /// payload is acknowledged with a plain PUBACK instead of closing the connection.
    /// ThingsBoard sets this per device profile: this is the value for every profile that
    /// [`crate::Emulator::set_profile_send_ack_on_validation_exception`] did not set.
    pub send_ack_on_validation_exception: bool,
    /// `transport.mqtt.ssl.skip_validity_check_for_client_cert` (false): when false, a TLS
    /// client certificate outside its validity period is refused at CONNECT (CONNACK 5 /
    /// 0x87), as `X509Certificate.checkValidity()` makes ThingsBoard do.
    pub skip_validity_check_for_client_cert: bool,
    /// Behaviour of older server versions and wire oddities.
    pub quirks: Quirks,
    /// The emulator's own memory bounds.
    pub bounds: Bounds,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 65_536,
            inactivity_timeout: Duration::from_secs(600),
            client_rpc_timeout: Duration::from_secs(60),
            provision_close_delay: Duration::from_secs(60),
            max_inflight_messages: 100,
            gateway_metrics_report_interval: Duration::from_secs(60),
            type_cast_enabled: true,
            max_string_value_length: 0,
            send_ack_on_validation_exception: false,
            skip_validity_check_for_client_cert: false,
            quirks: Quirks::default(),
            bounds: Bounds::default(),
        }
    }
}

/// Switches for behaviour that differs between ThingsBoard versions, or that a test may want to
/// turn off.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quirks {
    /// Before v4.2.1 a multi-device gateway PUBLISH got one PUBACK *per device entry* (same
    /// packet id) and none when no entry was valid. Default false (one aggregated PUBACK).
    pub per_device_pubacks: bool,
    /// Before v4.2.1.1 a failed gateway connect (device limit...) got no PUBACK at all.
    /// Default false (PUBACK 0x97 / 0x80).
    pub no_puback_on_connect_failure: bool,
    /// ThingsBoard never wraps its outgoing packet-id counter: after 65,535 the client sees
    /// packet id 0 at QoS 1. Default true; false wraps from 65,535 to 1 like a textbook broker.
    pub packet_id_zero: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Self {
            per_device_pubacks: false,
            no_puback_on_connect_failure: false,
            packet_id_zero: true,
        }
    }
}

/// Memory bounds of the emulator itself (ThingsBoard has a database behind it; the emulator
/// keeps everything in memory and caps it). Each bound documents what happens on overflow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bounds {
    /// Devices the platform can hold regardless of the tenant limit; auto-creation beyond it
    /// fails like the tenant limit (PUBACK 0x97).
    pub max_devices: usize,
    /// Stored telemetry points per key; the oldest point is dropped on overflow.
    pub history_per_key: usize,
    /// Telemetry keys, and attribute keys per scope, per device; new keys beyond it are not
    /// stored (counted in [`crate::Stats::dropped_keys`]).
    pub max_keys_per_device: usize,
    /// Server-side RPCs waiting per device; [`crate::Emulator::send_rpc`] fails beyond it.
    pub max_pending_rpcs_per_device: usize,
    /// Client-side RPCs awaiting the handler per session; beyond it a request is answered
    /// `{"error":"timeout"}` at once.
    pub max_pending_client_rpcs: usize,
    /// Concurrent sessions; [`crate::Emulator::open_session`] fails beyond it.
    pub max_sessions: usize,
    /// Events (RPC outcomes) not yet taken with [`crate::Emulator::poll_event`]; the oldest
    /// is dropped on overflow (counted in [`crate::Stats::dropped_events`]).
    pub max_events: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_devices: 100_000,
            history_per_key: 1_000,
            max_keys_per_device: 10_000,
            max_pending_rpcs_per_device: 1_000,
            max_pending_client_rpcs: 1_000,
            max_sessions: 4_096,
            max_events: 100_000,
        }
    }
}
