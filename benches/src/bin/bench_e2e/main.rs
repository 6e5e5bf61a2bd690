//! `bench-e2e`: the end-to-end comparison through a real mosquitto on 127.0.0.1.
//!
//! ```text
//! bench-e2e run [--count N] [--rounds R] [--sdk-count N] [--python PATH] [--no-sdk]
//!               [--inflight N] [--no-emulator] [--coalesce-us N] [--batch N]
//!               [--glibc-tcache N]
//!     Starts mosquitto and a counting subscriber, runs interleaved rounds of every publisher
//!     (each a separate process of this binary, or the Python SDK script), prints the table.
//!     `--glibc-tcache N` adds our batched publisher and rumqttc at QoS 1 again, both with
//!     `GLIBC_TUNABLES=glibc.malloc.tcache_count=N` (the allocator's share, BENCHMARKS.md).
//! bench-e2e ours    --port P --qos 0|1 --count N [--inflight N] [--token T]
//!                   [--coalesce-us N] [--batch N]
//! bench-e2e rumqttc --port P --qos 0|1 --count N [--inflight N]
//! bench-e2e floor   --port P --qos 0|1 --count N [--inflight N] [--coalesce-us N]
//!     One publisher run; prints one `RESULT key=value ...` line. `floor` is the wire floor:
//!     hand-written MQTT and JSON on a blocking socket, no library (see `floor.rs`).
//! bench-e2e emulator-server
//!     The platform emulator on an ephemeral port, for the ingest measurement; prints
//!     `PORT <port>`, then answers `count` on stdin with the telemetry points it stored.
//! ```
//!
//! Every run is bounded: a publisher that has not finished within its time limit is killed
//! and reported, and the subscriber gives up after 10 s without progress. `run` exits with
//! an error, after its tables, when any run lost a message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod floor;
mod publishers;
mod raw_mqtt;
mod runner;
mod stats;
mod subscriber;

use std::process::ExitCode;

/// Parsed `--key value` options.
pub(crate) struct Args {
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().cloned(),
                _ => None,
            };
            pairs.push((key.to_owned(), value));
        }
        Ok(Self { pairs })
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.pairs.iter().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, Some(v))) => v.parse().map_err(|_| format!("--{key}: bad value {v:?}")),
            Some((_, None)) => Err(format!("--{key} needs a value")),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Option<String> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!(
            "usage: bench-e2e run|ours|rumqttc|floor|emulator-server [--options]; see the source header"
        );
        return ExitCode::from(2);
    };
    let args = match Args::parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-e2e: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command.as_str() {
        "run" => runner::run(&args),
        "ours" => publishers::ours(&args),
        "rumqttc" => publishers::rumqttc(&args),
        "floor" => floor::floor(&args),
        "emulator-server" => publishers::emulator_server(),
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-e2e {command}: {e}");
            ExitCode::FAILURE
        }
    }
}
