//! Shared pieces of the workspace's benchmarks.
//!
//! * `benches/core.rs` (criterion): the core's hot paths beside their floor.
//! * `benches/memory.rs`: bytes per tracked sub-device, with a counting allocator, and the
//!   offline buffer's byte bound.
//! * `src/bin/bench_e2e`: the end-to-end comparison through a real mosquitto (our tokio
//!   adapter, rumqttc, the official Python SDK) and the emulator's ingest rate.
//!
//! * `tests/offline_buffer_heap.rs`: the offline buffer's heap stays within its configured
//!   bytes (a size, asserted; never a speed).
//!
//! Everything here measures; nothing asserts a speed. See BENCHMARKS.md at the top level.

pub mod counting;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use gateway_proto::payload::TelemetryEntry;
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    Command, CommandError, Config, Connection, Credentials, GatewayCommand, Input,
};
use serde_json::{Map, Value};

/// The topic of the workload.
pub const TELEMETRY_TOPIC: &str = "v1/gateway/telemetry";

/// Device names the workload cycles over (the anchor's 1000).
pub const DEVICES: u64 = 1000;

/// The first timestamp; message `i` carries `TS0 + i`.
pub const TS0: i64 = 1_700_000_000_000;

/// The name of the `i`-th device of the workload, `Device {i % 1000}`.
pub fn device_name(i: u64) -> String {
    format!("Device {}", i % DEVICES)
}

/// The values of every message: `{"temperature":23.5,"humidity":61}`.
pub fn telemetry_values() -> Map<String, Value> {
    let mut values = Map::new();
    values.insert("temperature".into(), Value::from(23.5));
    values.insert("humidity".into(), Value::from(61));
    values
}

/// The anchor's message `i` as a typed gateway command:
/// `{"Device 17":[{"ts":1700000000017,"values":{..}}]}` on `v1/gateway/telemetry`.
pub fn telemetry_command(i: u64) -> Command {
    Command::Gateway(GatewayCommand::Telemetry {
        device: device_name(i),
        entries: vec![TelemetryEntry::at(TS0 + i as i64, telemetry_values())],
    })
}

/// The same message as a JSON value, for clients that take bytes (rumqttc, the floor).
pub fn telemetry_json(i: u64) -> Value {
    let mut entry = Map::new();
    entry.insert("ts".into(), Value::from(TS0 + i as i64));
    entry.insert("values".into(), Value::Object(telemetry_values()));
    let mut message = Map::new();
    message.insert(device_name(i), Value::Array(vec![Value::Object(entry)]));
    Value::Object(message)
}

/// A core configuration for benchmarks: MQTT 3.1.1 (what rumqttc and the Python SDK speak),
/// no publish timeout, no `getSessionLimits` wait, everything else at its default (pacing,
/// splitting and push-back stay on: their per-message checks are part of what is measured).
///
/// Without a ThingsBoard server nobody answers `getSessionLimits`: with the default wait the
/// first messages would sit out its 5 s (the e2e rate would include it, and the core benches,
/// where time never moves, would never send data at all).
pub fn bench_config() -> Config {
    let mut c = Config::new(Credentials::AccessToken("BENCH_TOKEN".into()));
    c.protocol = ProtocolVersion::V311;
    c.publish_timeout = None;
    c.limits.session_limits_wait = None;
    c
}

/// A connection whose session is up (transport opened, CONNACK fed, SUBACK fed), all outputs
/// drained. Time does not move unless the caller moves it.
pub fn connected(config: Config, now: Instant) -> Connection {
    let version = config.protocol;
    let mut conn = Connection::new(config, now).unwrap_or_else(|e| panic!("config: {e}"));
    while conn.poll_output().is_some() {}
    conn.handle_input(now, Input::TransportOpened);
    while conn.poll_output().is_some() {}
    conn.handle_input(now, Input::Bytes(&connack(version)));
    let mut sent = BytesMut::new();
    while let Some(o) = conn.poll_output() {
        if let gateway_proto::Output::Transmit(b) = o {
            sent.extend_from_slice(&b);
        }
    }
    // Acknowledge the SUBSCRIBE (packet id 1 on a fresh session) so nothing stays pending.
    let mut acks = Vec::new();
    answer_acks(&sent, &mut acks);
    conn.handle_input(now, Input::Bytes(&acks));
    while conn.poll_output().is_some() {}
    conn
}

/// [`connected`], with the workload's [`DEVICES`] sub-devices announced and acknowledged,
/// as a gateway does before its data flows. Without it the first message for each device
/// also sends its implicit `v1/gateway/connect` (QoS 1), and a benchmark that never answers
/// those would stall once they fill the in-flight window.
pub fn connected_with_devices(config: Config, now: Instant) -> Connection {
    let mut conn = connected(config, now);
    let mut acks = Vec::new();
    for d in 0..DEVICES {
        conn.command(now, Command::connect_device(device_name(d), None))
            .unwrap_or_else(|e| panic!("announce: {e}"));
        while let Some(o) = conn.poll_output() {
            if let gateway_proto::Output::Transmit(b) = o {
                answer_acks(&b, &mut acks);
            }
        }
        conn.handle_input(now, Input::Bytes(&acks));
        acks.clear();
        while conn.poll_output().is_some() {}
    }
    assert_eq!(
        conn.stats().sub_devices,
        DEVICES as usize,
        "every device announced"
    );
    assert_eq!(conn.stats().inflight, 0, "every announce acknowledged");
    conn
}

/// The broker's CONNACK to a fresh session.
pub fn connack(version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(
        &Packet::ConnAck(wire::ConnAck {
            session_present: false,
            code: 0,
        }),
        version,
        &mut out,
    );
    out
}

/// Encodes a packet (benchmark packets always fit).
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    wire::encode(packet, version, out, 1 << 24).unwrap_or_else(|e| panic!("encode: {e}"));
}

/// What a broker answers to client bytes, as cheaply as possible: for every QoS 1 PUBLISH a
/// PUBACK, for every SUBSCRIBE a SUBACK granting QoS 1 to one filter (MQTT 3.1.1 framing).
/// Returns how many PUBLISH packets the bytes held. Scans frame headers only.
pub fn answer_acks(mut bytes: &[u8], acks: &mut Vec<u8>) -> usize {
    let mut publishes = 0;
    while !bytes.is_empty() {
        let kind = bytes[0];
        let mut len = 0usize;
        let mut shift = 0;
        let mut at = 1;
        loop {
            let b = bytes[at];
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let body = &bytes[at..at + len];
        match kind >> 4 {
            3 => {
                publishes += 1;
                if (kind >> 1) & 3 == 1 {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let pkid = &body[2 + topic_len..4 + topic_len];
                    acks.extend_from_slice(&[0x40, 0x02, pkid[0], pkid[1]]);
                }
            }
            8 => acks.extend_from_slice(&[0x90, 0x03, body[0], body[1], 0x01]),
            _ => {}
        }
        bytes = &bytes[at + len..];
    }
    publishes
}

/// What filling the offline buffer did: see [`fill_offline_buffer`].
#[derive(Debug, Clone, Copy)]
pub struct OfflineFill {
    /// Commands accepted before the first `QueueFull`.
    pub accepted: u64,
    /// Commands refused with `QueueFull` (the first one, and every one after it).
    pub refused: u64,
    /// `Stats::buffered_bytes` once full.
    pub buffered_bytes: usize,
    /// Heap growth (bytes requested, see [`counting`]) from the empty connection to full.
    pub growth: usize,
    /// Heap growth after `refuse_more` further commands, all refused.
    pub growth_after: usize,
}

/// Fills the offline buffer of a connection that never connects, bounded at `bound` bytes,
/// with the anchor's telemetry messages at QoS 1 over `devices` device names, until a
/// command is refused with `QueueFull`; then offers `refuse_more` more. Heap figures are
/// only meaningful in a binary that installed [`counting::Counting`] as its allocator.
pub fn fill_offline_buffer(bound: usize, devices: u64, refuse_more: u64) -> OfflineFill {
    let now = Instant::now();
    let mut config = bench_config();
    config.max_buffered_bytes = bound;
    config.publish_timeout = Some(Duration::from_secs(300));
    let mut conn = Connection::new(config, now).unwrap_or_else(|e| panic!("config: {e}"));
    while conn.poll_output().is_some() {}
    let command = |i: u64| {
        let device = i % devices;
        let Command::Gateway(GatewayCommand::Telemetry { entries, .. }) = telemetry_command(i)
        else {
            unreachable!("telemetry_command builds gateway telemetry")
        };
        Command::Gateway(GatewayCommand::Telemetry {
            device: device_name(device),
            entries,
        })
    };
    let before = counting::live();
    let mut accepted = 0u64;
    let mut i = 0u64;
    loop {
        match conn.command(now, command(i)) {
            Ok(_) => accepted += 1,
            Err(CommandError::QueueFull { .. }) => break,
            Err(e) => panic!("command {i}: {e}"),
        }
        i += 1;
        while conn.poll_output().is_some() {}
    }
    let growth = counting::live().saturating_sub(before);
    let mut refused = 1u64;
    for _ in 0..refuse_more {
        i += 1;
        if let Err(CommandError::QueueFull { .. }) = conn.command(now, command(i)) {
            refused += 1;
        }
        while conn.poll_output().is_some() {}
    }
    OfflineFill {
        accepted,
        refused,
        buffered_bytes: conn.stats().buffered_bytes,
        growth,
        growth_after: counting::live().saturating_sub(before),
    }
}
