//! The deterministic simulation over many seeds.
//!
//! * `cargo test -p gateway-sim --test sim`: the default seed range (a few thousand seeds).
//! * `SIM_SEEDS=100000`: that many seeds; `SIM_SEED_START=n` moves the range.
//! * `SIM_SEED=n`: replays exactly one seed and prints its trace.
//! * `SIM_STEPS=n`: steps per seed (default 120); `SIM_TRACE=n`: actions a failure prints
//!   (default 80).

use std::time::Instant;

use gateway_sim::{run, Options};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn simulated_seeds_keep_every_invariant() {
    let mut options = Options::default();
    if let Some(steps) = env("SIM_STEPS") {
        options.steps = steps as usize;
    }
    if let Some(trace) = env("SIM_TRACE") {
        options.trace = trace as usize;
    }
    let (start, count) = match env("SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env("SIM_SEED_START").unwrap_or(0),
            env("SIM_SEEDS").unwrap_or(2_500),
        ),
    };
    let began = Instant::now();
    let mut total = gateway_sim::Report::default();
    let mut failures = Vec::new();
    for seed in start..start + count {
        match run(seed, &options) {
            Ok(r) => {
                total.requests += r.requests;
                total.delivered_checked += r.delivered_checked;
                total.connections += r.connections;
                total.faults += r.faults;
                total.reachability_checks += r.reachability_checks;
                total.virtual_time += r.virtual_time;
                total.v311_unconfirmed += r.v311_unconfirmed;
                total.inbound_packet_id_zero += r.inbound_packet_id_zero;
                total.unexpected_acks += r.unexpected_acks;
                total.retransmitted += r.retransmitted;
                total.reannounced += r.reannounced;
            }
            Err(f) => {
                eprintln!("{f}\n");
                failures.push(f.seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "{count} seeds from {start} in {:.1?}: {} requests, {} deliveries checked against the \
         emulator, {} sessions, {} faults, {} reachability checks, {:.1} virtual hours, {} 3.1.1 acks not checkable; client saw {} packet-id-0 PUBLISHes, {} duplicate/unknown \
         PUBACKs, retransmitted {} and re-announced {} times",
        began.elapsed(),
        total.requests,
        total.delivered_checked,
        total.connections,
        total.faults,
        total.reachability_checks,
        total.virtual_time.as_secs_f64() / 3600.0,
        total.v311_unconfirmed,
        total.inbound_packet_id_zero,
        total.unexpected_acks,
        total.retransmitted,
        total.reannounced
    );
    assert!(
        failures.is_empty(),
        "failing seeds: {failures:?} (replay with SIM_SEED=n)"
    );
}

/// Seeds that found bugs, kept whatever the default range becomes (each message names the
/// regression test in `gateway-proto/tests/api.rs`).
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    let found = [
        (
            63,
            "qos0_data_for_a_new_sub_device_announces_it_and_a_refusal_forgets_it",
        ),
        (
            497,
            "a_queued_disconnect_does_not_undo_a_later_reregistration",
        ),
        (
            1365,
            "a_timed_out_implicit_connect_is_settled_by_an_announce",
        ),
        (
            23,
            "a_recovery_step_moves_the_deadline_on_with_nothing_queued",
        ),
    ];
    for (seed, test) in found {
        if let Err(f) = run(seed, &Options::default()) {
            panic!("{f}\n(first found with {test})");
        }
    }
}
