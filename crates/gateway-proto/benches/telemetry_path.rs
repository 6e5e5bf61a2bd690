//! The client's hot path beside its floor, in one criterion group so the ratio is measured
//! side by side: a gateway telemetry command turned into wire bytes by the `Connection`
//! (command → queue → PUBLISH encode → output drain → PUBACK → outcome event), against the bare
//! floor of serde_json + mqttbytes `Publish::write` for the same message.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{Command, Config, Connection, Credentials, Input, Output, QoS};
use serde_json::json;

const TOPIC: &str = "v1/gateway/telemetry";

fn message(i: u64) -> serde_json::Value {
    json!({ format!("Device {}", i % 1000): [{ "ts": 1_700_000_000_000u64 + i, "values": { "temperature": 23.5, "humidity": 61 } }] })
}

fn connected(version: ProtocolVersion) -> (Connection, Instant) {
    let now = Instant::now();
    let mut c = Config::new(Credentials::AccessToken("TOKEN".into()));
    c.protocol = version;
    c.max_inflight = u16::MAX;
    c.publish_timeout = None;
    // This peer never answers `getSessionLimits`; without learned limits nothing is paced,
    // so this measures the path to the wire (pacing itself is a few integer operations).
    c.limits.session_limits_wait = None;
    let mut conn = Connection::new(c, now).unwrap();
    while conn.poll_output().is_some() {}
    conn.handle_input(now, Input::TransportOpened);
    while conn.poll_output().is_some() {}
    let mut connack = BytesMut::new();
    wire::encode(
        &Packet::ConnAck(wire::ConnAck {
            session_present: false,
            code: 0,
        }),
        version,
        &mut connack,
        1 << 20,
    )
    .unwrap();
    conn.handle_input(now, Input::Bytes(&connack));
    while conn.poll_output().is_some() {}
    (conn, now)
}

fn bench(c: &mut Criterion) {
    let version = ProtocolVersion::V311;
    let mut group = c.benchmark_group("gateway_telemetry_qos1");
    group.throughput(Throughput::Elements(1));

    // Floor: serialize the JSON and write one PUBLISH with mqttbytes, nothing else.
    let mut i = 0u64;
    let mut out = BytesMut::with_capacity(1 << 16);
    group.bench_function("floor_serde_json_mqttbytes", |b| {
        b.iter(|| {
            i += 1;
            let payload = serde_json::to_vec(&message(i)).unwrap();
            let mut p = mqttbytes::v4::Publish::new(TOPIC, mqttbytes::QoS::AtLeastOnce, payload);
            p.pkid = (i % 65_535 + 1) as u16;
            if out.len() > 1 << 15 {
                out.clear();
            }
            p.write(&mut out).unwrap();
        })
    });

    // Core: the same JSON, through a connected Connection, drained, then acknowledged.
    let (mut conn, now) = connected(version);
    let mut j = 0u64;
    group.bench_function("core_command_to_wire_and_outcome", |b| {
        b.iter_batched_ref(
            || (),
            |_| {
                j += 1;
                let payload = Bytes::from(serde_json::to_vec(&message(j)).unwrap());
                conn.command(
                    now,
                    Command::Publish {
                        topic: TOPIC.into(),
                        payload,
                        qos: QoS::AtLeastOnce,
                    },
                )
                .unwrap();
                let mut pkid = 0;
                while let Some(o) = conn.poll_output() {
                    if let Output::Transmit(bytes) = o {
                        // Packet id sits after the fixed header (2 bytes here) and the topic.
                        let at = 2 + 2 + TOPIC.len();
                        pkid = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
                    }
                }
                let ack = [0x40, 0x02, (pkid >> 8) as u8, pkid as u8];
                conn.handle_input(now, Input::Bytes(&ack));
                while conn.poll_output().is_some() {}
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
