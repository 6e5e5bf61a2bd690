//! Memory, measured with a counting global allocator (bytes requested from the allocator,
//! live and peak; the allocator's own per-block overhead is not included).
//!
//! * Bytes per tracked sub-device with 100,000 sub-devices (`Device 0` … `Device 99999`,
//!   ~11 bytes per name), in steady state, at the peak of the registration, and around a
//!   reconnect that re-announces all of them.
//! * The offline buffer is bounded in bytes: telemetry commands on a connection that never
//!   connects are refused with `QueueFull` once `Config::max_buffered_bytes` is reached, and
//!   the heap stops growing there.
//!
//! Run: `cargo bench -p gateway-benches --bench memory`. It prints; it asserts nothing about
//! speed or size.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use gateway_benches::counting::{live, peak, reset_peak, Counting};
use gateway_benches::{answer_acks, bench_config, connack, connected, fill_offline_buffer};
use gateway_proto::wire::ProtocolVersion;
use gateway_proto::{Command, Connection, Input, Output};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const DEVICES: usize = 100_000;

/// Drains outputs, answering QoS 1 publishes into `acks`.
fn drain(conn: &mut Connection, acks: &mut Vec<u8>) {
    while let Some(o) = conn.poll_output() {
        if let Output::Transmit(bytes) = o {
            answer_acks(&bytes, acks);
        }
    }
}

fn settle(conn: &mut Connection, now: Instant, acks: &mut Vec<u8>) {
    while !acks.is_empty() {
        let batch = std::mem::take(acks);
        conn.handle_input(now, Input::Bytes(&batch));
        drain(conn, acks);
    }
}

fn per_device(bytes: usize) -> String {
    format!("{:.1}", bytes as f64 / DEVICES as f64)
}

fn sub_devices() {
    let now = Instant::now();
    let mut config = bench_config();
    config.max_sub_devices = DEVICES;
    let base = live();
    let mut conn = connected(config, now);
    let empty = live();
    let mut acks = Vec::new();

    reset_peak();
    for i in 0..DEVICES {
        conn.command(now, Command::connect_device(format!("Device {i}"), None))
            .unwrap();
        drain(&mut conn, &mut acks);
        if i % 100 == 99 {
            settle(&mut conn, now, &mut acks);
        }
    }
    settle(&mut conn, now, &mut acks);
    let registered_peak = peak();
    let stats = conn.stats();
    assert_eq!(stats.sub_devices, DEVICES);
    assert_eq!(stats.unfinished_requests, 0);
    let tracked = live();

    // A reconnect: every sub-device announced again, acknowledged a window at a time.
    reset_peak();
    conn.handle_input(now, Input::TransportClosed);
    while conn.poll_output().is_some() {}
    let later = conn.poll_timeout().unwrap().max(now);
    conn.handle_input(later, Input::Timeout);
    while conn.poll_output().is_some() {}
    conn.handle_input(later, Input::TransportOpened);
    while conn.poll_output().is_some() {}
    conn.handle_input(later, Input::Bytes(&connack(ProtocolVersion::V311)));
    drain(&mut conn, &mut acks);
    settle(&mut conn, later, &mut acks);
    assert_eq!(conn.stats().reannounced, DEVICES as u64);
    let reannounce_peak = peak();
    let after_reannounce = live();

    let name_bytes: usize = (0..DEVICES).map(|i| format!("Device {i}").len()).sum();
    println!(
        "## Sub-devices tracked: {DEVICES} (names average {:.1} bytes)",
        name_bytes as f64 / DEVICES as f64
    );
    println!();
    println!("| what | heap bytes | bytes per sub-device |");
    println!("|---|---:|---:|");
    println!(
        "| connected connection, no sub-device | {} | – |",
        empty - base
    );
    println!(
        "| {DEVICES} tracked, steady state (all announced and acknowledged) | {} | **{}** |",
        tracked - empty,
        per_device(tracked - empty)
    );
    println!(
        "| peak while registering (window of 100 unacknowledged connects) | {} | {} |",
        registered_peak - empty,
        per_device(registered_peak - empty)
    );
    println!(
        "| peak during the re-announce after a reconnect | {} | {} |",
        reannounce_peak - empty,
        per_device(reannounce_peak - empty)
    );
    println!(
        "| steady state after the re-announce | {} | {} |",
        after_reannounce - empty,
        per_device(after_reannounce - empty)
    );
    println!();
    drop(conn);
}

fn offline_buffer() {
    println!("## Offline buffer (never connected), anchor telemetry messages at QoS 1");
    println!();
    println!("| device names | max_buffered_bytes | accepted | refused (QueueFull) | stats.buffered_bytes | heap growth after accepting | heap growth after 100,000 more refused commands |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for devices in [gateway_benches::DEVICES, 1] {
        for bound in [64 * 1024usize, 1 << 20, 16 << 20] {
            let f = fill_offline_buffer(bound, devices, 100_000);
            println!(
                "| {devices} | {bound} | {} | {} | {} | {} ({:.2}× the bound) | {} |",
                f.accepted,
                f.refused,
                f.buffered_bytes,
                f.growth,
                f.growth as f64 / bound as f64,
                f.growth_after,
            );
        }
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    sub_devices();
    offline_buffer();
}
