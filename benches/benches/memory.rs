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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use gateway_benches::{answer_acks, bench_config, connack, connected, telemetry_command};
use gateway_proto::wire::ProtocolVersion;
use gateway_proto::{Command, CommandError, Connection, Input, Output};

/// Counts live and peak bytes requested through the global allocator, then delegates to
/// the system allocator.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it
// upholds `GlobalAlloc`'s contract exactly as `System` does; the counters are side effects.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Starts a peak measurement from the current level.
fn reset_peak() {
    PEAK.store(live(), Relaxed);
}

fn peak() -> usize {
    PEAK.load(Relaxed)
}

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
    let now = Instant::now();
    println!("## Offline buffer (never connected), anchor telemetry messages at QoS 1");
    println!();
    println!("| max_buffered_bytes | accepted | refused (QueueFull) | stats.buffered_bytes | heap growth after accepting | heap growth after 100,000 more refused commands |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for bound in [64 * 1024usize, 1 << 20, 16 << 20] {
        let mut config = bench_config();
        config.max_buffered_bytes = bound;
        config.publish_timeout = Some(Duration::from_secs(300));
        let mut conn = Connection::new(config, now).unwrap();
        while conn.poll_output().is_some() {}
        let before = live();
        let mut accepted = 0u64;
        let mut i = 0u64;
        loop {
            i += 1;
            match conn.command(now, telemetry_command(i)) {
                Ok(_) => accepted += 1,
                Err(CommandError::QueueFull { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            while conn.poll_output().is_some() {}
        }
        let full = live() - before;
        let mut refused = 1u64;
        for _ in 0..100_000 {
            i += 1;
            if conn.command(now, telemetry_command(i)).is_err() {
                refused += 1;
            }
            while conn.poll_output().is_some() {}
        }
        let after = live() - before;
        println!(
            "| {bound} | {accepted} | {refused} | {} | {full} ({:.2}× the bound) | {after} |",
            conn.stats().buffered_bytes,
            full as f64 / bound as f64,
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    sub_devices();
    offline_buffer();
}
