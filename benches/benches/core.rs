//! The core's hot paths, measured with criterion. One command: `cargo bench -p gateway-benches`.
//!
//! * `gateway_telemetry`: a gateway telemetry command turned into wire bytes by a connected
//!   `Connection`, beside the bare floor (serde_json + mqttbytes `Publish::write` of the same
//!   message) in the same group, so the ratio is measured side by side. Every variant builds
//!   its input from scratch per message (device name, values map), as an application does.
//! * `gateway_inbound`: a server RPC's bytes → `Event::RpcRequest` (and its PUBACK), the RPC
//!   round trip (request bytes → event → reply on the wire → PUBACK → outcome), and attribute
//!   response correlation with 512 requests outstanding.
//! * `registry_100k`: sub-device operations with 100,000 sub-devices tracked.
//! * `reannounce_100k`: a reconnect that re-announces 100,000 sub-devices, acknowledged in
//!   windows of `max_inflight` (100) as a broker would.
//!
//! Throughput is per message (`elem/s`); the re-announce is per reconnect.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use gateway_benches::{
    answer_acks, bench_config, connack, connected, connected_with_devices, encode,
    telemetry_command, telemetry_json, TELEMETRY_TOPIC, TS0,
};
use gateway_proto::payload::{GatewayAttributeResponse, GatewayRpcRequest, Payload};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{AttributeScope, Command, Connection, Event, Input, Output, QoS};
use serde_json::{json, Map, Value};

const V311: ProtocolVersion = ProtocolVersion::V311;

/// Drains every output; answers QoS 1 publishes and subscribes into `acks`; returns the
/// number of events.
fn drain(conn: &mut Connection, acks: &mut Vec<u8>) -> usize {
    let mut events = 0;
    while let Some(o) = conn.poll_output() {
        match o {
            Output::Transmit(bytes) => {
                answer_acks(&bytes, acks);
            }
            Output::Event(_) => events += 1,
            _ => {}
        }
    }
    events
}

/// Feeds `acks` back and drains.
fn ack(conn: &mut Connection, now: Instant, acks: &mut Vec<u8>) {
    if !acks.is_empty() {
        conn.handle_input(now, Input::Bytes(acks));
        acks.clear();
        let mut more = Vec::new();
        drain(conn, &mut more);
        debug_assert!(more.is_empty());
    }
}

/// A server PUBLISH (QoS 1) of `payload` on `topic`.
fn server_publish(topic: &str, payload: Vec<u8>, pkid: u16) -> BytesMut {
    let mut out = BytesMut::new();
    encode(
        &Packet::Publish(wire::Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid,
        }),
        V311,
        &mut out,
    );
    out
}

fn telemetry(c: &mut Criterion) {
    let mut group = c.benchmark_group("gateway_telemetry");
    group.throughput(Throughput::Elements(1));

    // Floor: build the JSON value, serialize it, write one PUBLISH with mqttbytes. Nothing else.
    let mut i = 0u64;
    let mut out = BytesMut::with_capacity(1 << 16);
    group.bench_function("floor_serde_json_mqttbytes", |b| {
        b.iter(|| {
            i += 1;
            let payload = serde_json::to_vec(&telemetry_json(i)).unwrap();
            let mut p =
                mqttbytes::v4::Publish::new(TELEMETRY_TOPIC, mqttbytes::QoS::AtLeastOnce, payload);
            p.pkid = (i % 65_535 + 1) as u16;
            if out.len() > 1 << 15 {
                out.clear();
            }
            p.write(&mut out).unwrap();
        })
    });

    // Core, QoS 0: typed command → checks → JSON → queue → PUBLISH bytes → `Sent` outcome.
    let now = Instant::now();
    let mut config = bench_config();
    config.telemetry_qos = QoS::AtMostOnce;
    let mut conn = connected_with_devices(config, now);
    let mut acks = Vec::new();
    let mut j = 0u64;
    group.bench_function("core_qos0_command_to_wire", |b| {
        b.iter(|| {
            j += 1;
            conn.command(now, telemetry_command(j)).unwrap();
            drain(&mut conn, &mut acks)
        })
    });

    // Core, QoS 1, the whole life of a message: command → PUBLISH bytes → PUBACK bytes in →
    // `Delivered` outcome.
    let mut conn = connected_with_devices(bench_config(), now);
    let mut k = 0u64;
    group.bench_function("core_qos1_command_to_wire_to_outcome", |b| {
        b.iter(|| {
            k += 1;
            conn.command(now, telemetry_command(k)).unwrap();
            drain(&mut conn, &mut acks);
            ack(&mut conn, now, &mut acks);
        })
    });

    // The same with the PUBACKs of 100 messages coming back in one read, as on a busy link.
    let mut conn = connected_with_devices(bench_config(), now);
    let mut m = 0u64;
    group.bench_function("core_qos1_pipelined_100", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                m += 1;
                conn.command(now, telemetry_command(m)).unwrap();
                drain(&mut conn, &mut acks);
                if m.is_multiple_of(100) {
                    ack(&mut conn, now, &mut acks);
                }
            }
            let elapsed = start.elapsed();
            ack(&mut conn, now, &mut acks);
            elapsed
        })
    });
    group.finish();
}

fn inbound(c: &mut Criterion) {
    let mut group = c.benchmark_group("gateway_inbound");
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();

    // 512 different RPCs (device, id), cycled: the pending-RPC table (bound 1,024) holds them
    // without evictions, and a repeat replaces its entry.
    let rpcs: Vec<BytesMut> = (0..512u64)
        .map(|n| {
            let mut payload = Vec::new();
            GatewayRpcRequest {
                device: format!("Device {n}"),
                id: n,
                method: "setValue".into(),
                params: json!({"pin": 7, "value": true}),
            }
            .encode_into(&mut payload);
            server_publish("v1/gateway/rpc", payload, (n + 1) as u16)
        })
        .collect();
    let mut conn = connected(bench_config(), now);
    let mut acks = Vec::new();
    let mut n = 0usize;
    group.bench_function("rpc_bytes_to_event", |b| {
        b.iter(|| {
            n += 1;
            conn.handle_input(now, Input::Bytes(&rpcs[n % rpcs.len()]));
            let events = drain(&mut conn, &mut acks);
            acks.clear();
            events
        })
    });

    let mut conn = connected(bench_config(), now);
    group.bench_function("rpc_round_trip", |b| {
        b.iter(|| {
            n += 1;
            let k = n % rpcs.len();
            conn.handle_input(now, Input::Bytes(&rpcs[k]));
            let mut request = None;
            while let Some(o) = conn.poll_output() {
                if let Output::Event(Event::RpcRequest {
                    device: Some(device),
                    id,
                    ..
                }) = o
                {
                    request = Some((device, id));
                }
            }
            let (device, id) = request.unwrap();
            conn.command(
                now,
                Command::device_rpc_reply(device, id, json!({"ok": true})),
            )
            .unwrap();
            drain(&mut conn, &mut acks);
            ack(&mut conn, now, &mut acks);
        })
    });

    // Attribute response correlation: 512 requests stay outstanding (issued and acknowledged);
    // the timed part is the response bytes → `Event::AttributeResponse`. Requests are issued
    // (untimed) in chunks of 1,000 and answered oldest first.
    let mut config = bench_config();
    config.max_pending_requests = 4096;
    let mut conn = connected(config, now);
    let mut outstanding = VecDeque::new();
    issue_requests(&mut conn, now, 512, &mut outstanding);
    let mut pkid = 0u16;
    group.bench_function("attribute_response_correlation_512_pending", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(1000);
                left -= chunk;
                issue_requests(&mut conn, now, chunk, &mut outstanding);
                let responses: Vec<BytesMut> = (0..chunk)
                    .map(|_| {
                        pkid = pkid % 65_000 + 1;
                        let (wire_id, device) = outstanding.pop_front().unwrap();
                        let mut payload = Vec::new();
                        GatewayAttributeResponse {
                            id: wire_id,
                            device,
                            result: gateway_proto::payload::AttributeResult::Value(json!(21.5)),
                        }
                        .encode_into(&mut payload);
                        server_publish("v1/gateway/attributes/response", payload, pkid)
                    })
                    .collect();
                let start = Instant::now();
                let mut answered = 0;
                for r in &responses {
                    conn.handle_input(now, Input::Bytes(r));
                    while let Some(o) = conn.poll_output() {
                        if matches!(o, Output::Event(Event::AttributeResponse { .. })) {
                            answered += 1;
                        }
                    }
                }
                total += start.elapsed();
                assert_eq!(answered, chunk, "every response matched its request");
            }
            total
        })
    });
    group.finish();
}

/// A connected connection tracking `count` sub-devices (`Device 0` …), all announced and
/// acknowledged.
/// Issues `count` shared-attribute requests, acknowledges their publishes, and records each
/// one's wire id (read back from the bytes sent) and device.
fn issue_requests(
    conn: &mut Connection,
    now: Instant,
    count: u64,
    outstanding: &mut VecDeque<(u64, String)>,
) {
    let mut acks = Vec::new();
    for n in 0..count {
        let device = format!("Device {}", n % 1000);
        conn.command(
            now,
            Command::request_device_attributes(&device, AttributeScope::Shared, ["setpoint"]),
        )
        .unwrap();
        while let Some(o) = conn.poll_output() {
            if let Output::Transmit(bytes) = o {
                answer_acks(&bytes, &mut acks);
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(Packet::Publish(p))) = wire::decode(&mut buf, V311, 1 << 20) {
                    let body: Value = serde_json::from_slice(&p.payload).unwrap();
                    outstanding.push_back((body["id"].as_u64().unwrap(), device.clone()));
                }
            }
        }
        ack(conn, now, &mut acks);
    }
}

fn with_devices(count: u64, now: Instant) -> Connection {
    let mut config = bench_config();
    config.max_sub_devices = count as usize + 1000;
    config.max_inflight = 1000;
    let mut conn = connected(config, now);
    let mut acks = Vec::new();
    for i in 0..count {
        conn.command(now, Command::connect_device(format!("Device {i}"), None))
            .unwrap();
        drain(&mut conn, &mut acks);
        if i % 500 == 499 {
            ack(&mut conn, now, &mut acks);
        }
    }
    ack(&mut conn, now, &mut acks);
    assert_eq!(conn.stats().sub_devices, count as usize);
    conn
}

fn registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry_100k");
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let mut acks = Vec::new();

    for devices in [1_000u64, 100_000] {
        // Telemetry for a tracked sub-device: the registry lookup and touch on the hot path.
        let mut conn = with_devices(devices, now);
        let mut i = 0u64;
        group.bench_function(format!("telemetry_tracked_device/{devices}"), |b| {
            b.iter(|| {
                i += 1;
                let command = Command::Gateway(gateway_proto::GatewayCommand::Telemetry {
                    device: format!("Device {}", (i * 7919) % devices),
                    entries: vec![gateway_proto::payload::TelemetryEntry::at(
                        TS0,
                        telemetry_values_small(),
                    )],
                });
                conn.command(now, command).unwrap();
                drain(&mut conn, &mut acks);
                ack(&mut conn, now, &mut acks);
            })
        });
    }

    // A new sub-device connected, then disconnected (insert + remove), each acknowledged.
    let mut conn = with_devices(100_000, now);
    let mut i = 0u64;
    group.bench_function("connect_then_disconnect_new_device/100000", |b| {
        b.iter(|| {
            i += 1;
            let name = format!("New {i}");
            conn.command(now, Command::connect_device(name.clone(), Some("sensor")))
                .unwrap();
            conn.command(now, Command::disconnect_device(name)).unwrap();
            drain(&mut conn, &mut acks);
            ack(&mut conn, now, &mut acks);
        })
    });

    // The server renames a tracked sub-device (an RPC-shaped notification), back and forth.
    let renames: Vec<BytesMut> = [("Device 5", "Renamed 5"), ("Renamed 5", "Device 5")]
        .iter()
        .map(|(old, new)| {
            let payload = serde_json::to_vec(&json!({
                "id": 1,
                "method": "gateway_device_renamed",
                "params": {(*old): *new},
            }))
            .unwrap();
            server_publish("v1/devices/me/rpc/request/1", payload, 9)
        })
        .collect();
    let mut r = 0usize;
    group.bench_function("server_renames_tracked_device/100000", |b| {
        b.iter(|| {
            r += 1;
            conn.handle_input(now, Input::Bytes(&renames[r % 2]));
            let events = drain(&mut conn, &mut acks);
            acks.clear();
            events
        })
    });
    group.finish();
}

fn telemetry_values_small() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("temperature".into(), Value::from(23.5));
    m
}

fn reannounce(c: &mut Criterion) {
    let mut group = c.benchmark_group("reannounce_100k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(100_000));
    group.measurement_time(Duration::from_secs(20));
    let t0 = Instant::now();
    let mut config = bench_config();
    config.max_sub_devices = 100_000;
    let mut conn = connected(config, t0);
    let mut acks = Vec::new();
    for i in 0..100_000u64 {
        conn.command(t0, Command::connect_device(format!("Device {i}"), None))
            .unwrap();
        drain(&mut conn, &mut acks);
        ack(&mut conn, t0, &mut acks);
    }
    let mut now = t0;
    let connack = connack(V311);
    // Per iteration: the link drops, the backoff passes, a new transport opens, CONNACK; then
    // every sub-device is announced again, acknowledged a window (100) at a time.
    group.bench_function("reconnect_and_reannounce_all", |b| {
        b.iter_batched(
            || (),
            |()| {
                conn.handle_input(now, Input::TransportClosed);
                while conn.poll_output().is_some() {}
                now = conn.poll_timeout().unwrap().max(now);
                conn.handle_input(now, Input::Timeout);
                while conn.poll_output().is_some() {}
                conn.handle_input(now, Input::TransportOpened);
                while conn.poll_output().is_some() {}
                let before = conn.stats().reannounced;
                conn.handle_input(now, Input::Bytes(&connack));
                drain(&mut conn, &mut acks);
                while !acks.is_empty() {
                    conn.handle_input(now, Input::Bytes(&acks));
                    acks.clear();
                    drain(&mut conn, &mut acks);
                }
                assert_eq!(conn.stats().reannounced - before, 100_000);
                // The next iteration's backoff: the session lasted long enough to reset it.
                now += Duration::from_secs(60);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The floor and the core in alternating batches (A B C A B C …), so that the machine's
/// noise (other processes on its two cores) hits every variant alike; one ratio per round.
fn interleaved_ratios() {
    const ROUNDS: usize = 101;
    const BATCH: u64 = 5_000;
    let now = Instant::now();
    let mut out = BytesMut::with_capacity(1 << 16);
    let mut acks = Vec::new();
    let mut config = bench_config();
    config.telemetry_qos = QoS::AtMostOnce;
    let mut qos0 = connected_with_devices(config, now);
    let mut qos1 = connected_with_devices(bench_config(), now);
    let mut config = bench_config();
    config.max_inflight = u16::MAX;
    let mut split = connected_with_devices(config, now);
    let mut split_acks = Vec::new();
    let mut i = 0u64;
    let floor = |i: u64, out: &mut BytesMut| {
        let payload = serde_json::to_vec(&telemetry_json(i)).unwrap();
        let mut p =
            mqttbytes::v4::Publish::new(TELEMETRY_TOPIC, mqttbytes::QoS::AtLeastOnce, payload);
        p.pkid = (i % 65_535 + 1) as u16;
        if out.len() > 1 << 15 {
            out.clear();
        }
        p.write(out).unwrap();
    };
    let mut r0 = Vec::new();
    let mut r1 = Vec::new();
    let mut r2 = Vec::new();
    let mut r3 = Vec::new();
    let mut ns = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..BATCH {
            i += 1;
            floor(i, &mut out);
        }
        let f = t.elapsed().as_nanos() as f64 / BATCH as f64;
        let t = Instant::now();
        let mut sent = 0;
        for _ in 0..BATCH {
            i += 1;
            qos0.command(now, telemetry_command(i)).unwrap();
            sent += drain(&mut qos0, &mut acks);
        }
        let c0 = t.elapsed().as_nanos() as f64 / BATCH as f64;
        // One `Sent` outcome per message: the bytes really left (nothing held back).
        assert_eq!(sent as u64, BATCH);
        let t = Instant::now();
        for _ in 0..BATCH {
            i += 1;
            qos1.command(now, telemetry_command(i)).unwrap();
            drain(&mut qos1, &mut acks);
            ack(&mut qos1, now, &mut acks);
        }
        let c1 = t.elapsed().as_nanos() as f64 / BATCH as f64;
        // QoS 1 split in two: the batch's commands → PUBLISH bytes, then all its PUBACKs in
        // one input → `Delivered` outcomes.
        let t = Instant::now();
        for _ in 0..BATCH {
            i += 1;
            split.command(now, telemetry_command(i)).unwrap();
            drain(&mut split, &mut split_acks);
        }
        let c2 = t.elapsed().as_nanos() as f64 / BATCH as f64;
        let t = Instant::now();
        split.handle_input(now, Input::Bytes(&split_acks));
        let delivered = drain(&mut split, &mut acks);
        let c3 = t.elapsed().as_nanos() as f64 / BATCH as f64;
        assert_eq!(delivered as u64, BATCH);
        split_acks.clear();
        r0.push(c0 / f);
        r1.push(c1 / f);
        r2.push(c2 / f);
        r3.push(c3 / f);
        ns[0].push(f);
        ns[1].push(c0);
        ns[2].push(c1);
        ns[3].push(c2);
        ns[4].push(c3);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!("\ngateway telemetry, interleaved: {ROUNDS} rounds of {BATCH} messages per variant");
    println!("| variant | ns/message, median (min–max) | per-round ratio to the floor, median (min–max) | fastest round / fastest floor round |");
    println!("|---|---:|---:|---:|");
    let (floor_m, floor_lo, floor_hi) = med(&mut ns[0]);
    println!(
        "| floor: serde_json + mqttbytes | {floor_m:.0} ({floor_lo:.0}–{floor_hi:.0}) | 1 | 1 |"
    );
    let (m, lo, hi) = med(&mut ns[1]);
    let (rm, rlo, rhi) = med(&mut r0);
    println!(
        "| core, QoS 0: command → wire bytes | {m:.0} ({lo:.0}–{hi:.0}) | {rm:.2}× ({rlo:.2}–{rhi:.2}) | {:.2}× |",
        lo / floor_lo
    );
    let (m, lo, hi) = med(&mut ns[2]);
    let (rm, rlo, rhi) = med(&mut r1);
    println!(
        "| core, QoS 1: command → wire bytes → PUBACK → outcome | {m:.0} ({lo:.0}–{hi:.0}) | {rm:.2}× ({rlo:.2}–{rhi:.2}) | {:.2}× |",
        lo / floor_lo
    );
    let (m, lo, hi) = med(&mut ns[3]);
    let (rm, rlo, rhi) = med(&mut r2);
    println!(
        "| core, QoS 1: command → wire bytes (PUBACKs later) | {m:.0} ({lo:.0}–{hi:.0}) | {rm:.2}× ({rlo:.2}–{rhi:.2}) | {:.2}× |",
        lo / floor_lo
    );
    let (m, lo, hi) = med(&mut ns[4]);
    let (rm, rlo, rhi) = med(&mut r3);
    println!(
        "| core, QoS 1: {BATCH} PUBACKs in one read → outcomes, per message | {m:.0} ({lo:.0}–{hi:.0}) | {rm:.2}× ({rlo:.2}–{rhi:.2}) | {:.2}× |",
        lo / floor_lo
    );
}

criterion_group!(benches, telemetry, inbound, registry, reannounce);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Not when only listing or smoke-testing (`cargo test --benches`) or profiling.
    let quick = std::env::args().any(|a| a == "--list" || a == "--test" || a == "--profile-time");
    if !quick {
        interleaved_ratios();
    }
}
