//! `bench-e2e run`: mosquitto, a counting subscriber, interleaved rounds, the table.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_benches::TELEMETRY_TOPIC;
use gateway_testkit::mosquitto::{BrokerConfig, Mosquitto};

use crate::publishers::EMULATOR_TOKEN;
use crate::stats::{median, min_max, pid_cpu_ns};
use crate::subscriber::Subscriber;
use crate::Args;

/// How long one publisher run may take before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The subscriber gives up after this long without a new message.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    Ours,
    /// Our adapter with `ClientOptions::read_coalescing`.
    OursCoalesced,
    /// Our adapter with read coalescing, the application submitting with
    /// `Client::send_batch` (same messages on the wire).
    OursBatched,
    Rumqttc,
    Sdk,
    /// Our adapter publishing into the emulator instead of mosquitto.
    OursToEmulator,
    /// [`Client::OursBatched`] with glibc's per-thread cache enlarged (`--glibc-tcache`).
    OursBatchedTcache,
    /// [`Client::Rumqttc`] with the same allocator setting.
    RumqttcTcache,
    /// The wire floor (`floor.rs`): hand-written MQTT, no library; at QoS 1 with the same
    /// read coalescing as ours. What a publisher that costs next to nothing gets out of the
    /// broker.
    Floor,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Ours => "ours (gateway-tokio)",
            Client::OursCoalesced => "ours, read coalescing 1 ms",
            Client::OursBatched => "ours, send_batch 256 + coalescing 1 ms",
            Client::Rumqttc => "rumqttc 0.25.1",
            Client::Sdk => "Python SDK tb-mqtt-client 1.13.14",
            Client::OursToEmulator => "ours → emulator (ingest)",
            Client::OursBatchedTcache => "ours, send_batch 256 + coalescing, large tcache",
            Client::RumqttcTcache => "rumqttc 0.25.1, large tcache",
            Client::Floor => "wire floor (no library)",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug)]
struct Run {
    client: Client,
    qos: u8,
    count: u64,
    received: u64,
    /// Messages per second, from the publisher's first publish to the last arrival.
    rate: f64,
    /// Publisher CPU per message, µs.
    cpu_us: f64,
    /// The part of `cpu_us` spent in the kernel (system calls), µs.
    sys_us: f64,
    peak_rss_mib: f64,
    /// Receiver (broker or emulator) CPU per message, µs.
    receiver_cpu_us: f64,
    /// Receiver CPU time over the run's wall time (1.0 = one core busy).
    receiver_load: f64,
    frame_len: usize,
    payload: Vec<u8>,
}

/// A publisher's `RESULT` line.
#[derive(Default, Debug)]
struct Report {
    start_ns: u64,
    end_ns: u64,
    cpu_ns: u64,
    sys_ns: u64,
    finished: u64,
    peak_rss_kib: u64,
}

fn parse_report(line: &str) -> Option<Report> {
    let rest = line.strip_prefix("RESULT ")?;
    let mut r = Report::default();
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "start_ns" => r.start_ns = v,
            "end_ns" => r.end_ns = v,
            "cpu_ns" => r.cpu_ns = v,
            "sys_ns" => r.sys_ns = v,
            "finished" => r.finished = v,
            "peak_rss_kib" => r.peak_rss_kib = v,
            _ => {}
        }
    }
    Some(r)
}

/// Reads a child's stdout lines on a thread.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the child to exit within `limit`, killing it otherwise; returns its `RESULT`.
fn finish(
    mut child: Child,
    out: &mpsc::Receiver<String>,
    limit: Duration,
) -> Result<Report, String> {
    let deadline = Instant::now() + limit;
    let mut report = None;
    loop {
        while let Ok(line) = out.try_recv() {
            if let Some(r) = parse_report(&line) {
                report = Some(r);
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                while let Ok(line) = out.recv_timeout(Duration::from_millis(200)) {
                    if let Some(r) = parse_report(&line) {
                        report = Some(r);
                    }
                }
                return match (status.success(), report) {
                    (true, Some(r)) => Ok(r),
                    (_, _) => Err(format!("publisher exited with {status} and no result")),
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("publisher killed after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for the publisher: {e}")),
        }
    }
}

struct Setup {
    exe: PathBuf,
    python: Option<PathBuf>,
    sdk_script: PathBuf,
    inflight: u16,
    /// `--coalesce-us` for our publisher (0: off).
    coalesce_us: u64,
    /// `--batch` for [`Client::OursBatched`].
    batch: usize,
    /// `glibc.malloc.tcache_count` for the `*Tcache` variants (0: they do not run).
    tcache: u64,
}

impl Setup {
    fn publisher(&self, client: Client, port: u16, qos: u8, count: u64) -> Command {
        let common = [
            "--port".to_string(),
            port.to_string(),
            "--qos".into(),
            qos.to_string(),
            "--count".into(),
            count.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
        ];
        let mut cmd = match client {
            Client::Ours
            | Client::OursCoalesced
            | Client::OursBatched
            | Client::OursBatchedTcache
            | Client::OursToEmulator => {
                let mut c = Command::new(&self.exe);
                c.arg("ours");
                if matches!(
                    client,
                    Client::OursCoalesced | Client::OursBatched | Client::OursBatchedTcache
                ) {
                    c.args(["--coalesce-us", &self.coalesce_us.to_string()]);
                }
                if matches!(client, Client::OursBatched | Client::OursBatchedTcache) {
                    c.args(["--batch", &self.batch.to_string()]);
                }
                if client == Client::OursToEmulator {
                    c.args(["--token", EMULATOR_TOKEN]);
                }
                c
            }
            Client::Rumqttc | Client::RumqttcTcache => {
                let mut c = Command::new(&self.exe);
                c.arg("rumqttc");
                c
            }
            Client::Floor => {
                let mut c = Command::new(&self.exe);
                c.args(["floor", "--coalesce-us", &self.coalesce_us.to_string()]);
                c
            }
            Client::Sdk => {
                let mut c = Command::new(self.python.as_ref().expect("python checked"));
                c.arg(&self.sdk_script);
                c
            }
        };
        if matches!(client, Client::OursBatchedTcache | Client::RumqttcTcache) {
            // glibc's per-thread cache keeps 7 chunks per size by default; a publisher that
            // builds many messages before they are freed overflows it (BENCHMARKS.md).
            cmd.env(
                "GLIBC_TUNABLES",
                format!("glibc.malloc.tcache_count={}", self.tcache),
            );
        }
        cmd.args(common)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }
}

fn run_broker(
    setup: &Setup,
    broker: &Mosquitto,
    sub: &Subscriber,
    client: Client,
    qos: u8,
    count: u64,
) -> Result<Run, String> {
    sub.wait_quiet(Duration::from_millis(300), Duration::from_secs(15));
    sub.reset();
    let pid = broker.pid().ok_or("mosquitto is not running")?;
    let broker0 = pid_cpu_ns(pid).unwrap_or(0);
    let mut child = setup
        .publisher(client, broker.port(), qos, count)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", client.name()))?;
    let out = lines(child.stdout.take().ok_or("no stdout")?);
    let report = finish(child, &out, RUN_LIMIT);
    let seen = sub.wait_for(count, IDLE_LIMIT)?;
    let broker1 = pid_cpu_ns(pid).unwrap_or(0);
    let report = report?;
    let wall_ns = seen.last_ns.saturating_sub(report.start_ns).max(1) as f64;
    Ok(Run {
        client,
        qos,
        count,
        received: seen.publishes,
        rate: seen.publishes as f64 / (wall_ns / 1e9),
        cpu_us: report.cpu_ns as f64 / 1e3 / count as f64,
        sys_us: report.sys_ns as f64 / 1e3 / count as f64,
        peak_rss_mib: report.peak_rss_kib as f64 / 1024.0,
        receiver_cpu_us: (broker1 - broker0) as f64 / 1e3 / count as f64,
        receiver_load: (broker1 - broker0) as f64 / wall_ns,
        frame_len: seen.first_frame_len,
        payload: seen.first_payload,
    })
}

/// Our adapter into a fresh emulator process (QoS 1): the emulator's ingest rate, counted by
/// the telemetry points it stored.
fn run_emulator(setup: &Setup, count: u64) -> Result<Run, String> {
    let mut emu = Command::new(&setup.exe)
        .arg("emulator-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the emulator: {e}"))?;
    let emu_out = lines(emu.stdout.take().ok_or("no stdout")?);
    let mut emu_in = emu.stdin.take().ok_or("no stdin")?;
    let result = (|| {
        let port: u16 = emu_out
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|l| l.strip_prefix("PORT ").and_then(|p| p.parse().ok()))
            .ok_or("the emulator did not report its port")?;
        let emu0 = pid_cpu_ns(emu.id()).unwrap_or(0);
        let mut child = setup
            .publisher(Client::OursToEmulator, port, 1, count)
            .spawn()
            .map_err(|e| format!("starting the publisher: {e}"))?;
        let out = lines(child.stdout.take().ok_or("no stdout")?);
        let report = finish(child, &out, RUN_LIMIT)?;
        let emu1 = pid_cpu_ns(emu.id()).unwrap_or(0);
        writeln!(emu_in, "count").map_err(|e| format!("emulator: {e}"))?;
        let stored: u64 = emu_out
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .and_then(|l| l.strip_prefix("COUNT ").and_then(|p| p.parse().ok()))
            .ok_or("the emulator did not report its count")?;
        let wall_ns = report.end_ns.saturating_sub(report.start_ns).max(1) as f64;
        Ok(Run {
            client: Client::OursToEmulator,
            qos: 1,
            count,
            received: stored,
            rate: report.finished as f64 / (wall_ns / 1e9),
            cpu_us: report.cpu_ns as f64 / 1e3 / count as f64,
            sys_us: report.sys_ns as f64 / 1e3 / count as f64,
            peak_rss_mib: report.peak_rss_kib as f64 / 1024.0,
            receiver_cpu_us: (emu1 - emu0) as f64 / 1e3 / count as f64,
            receiver_load: (emu1 - emu0) as f64 / wall_ns,
            frame_len: 0,
            payload: Vec::new(),
        })
    })();
    let _ = writeln!(emu_in, "quit");
    drop(emu_in);
    let _ = finish(emu, &emu_out, Duration::from_secs(10));
    result
}

fn find_python(args: &Args) -> Option<PathBuf> {
    if let Some(p) = args.string("python") {
        return Some(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("TB_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-sdk/bin/python");
    root.exists().then_some(root)
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let count: u64 = args.get("count", 200_000)?;
    let rounds: usize = args.get("rounds", 5)?;
    let sdk_count: u64 = args.get("sdk-count", 50_000)?;
    let inflight: u16 = args.get("inflight", 1000)?;
    let python = if args.flag("no-sdk") {
        None
    } else {
        Some(find_python(args).ok_or(
            "no Python with the SDK: create .venv-sdk (see .ci/run), pass --python, or --no-sdk",
        )?)
    };
    let setup = Setup {
        exe: std::env::current_exe().map_err(|e| format!("own path: {e}"))?,
        sdk_script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/sdk_publisher.py"),
        python,
        inflight,
        coalesce_us: args.get("coalesce-us", 1000)?,
        batch: args.get("batch", 256)?,
        tcache: args.get("glibc-tcache", 0)?,
    };
    let broker = Mosquitto::start(BrokerConfig::new().max_queued_messages(0))
        .map_err(|e| format!("mosquitto: {e}"))?;
    let sub = Subscriber::start(broker.port(), TELEMETRY_TOPIC)?;
    eprintln!(
        "mosquitto on port {}, {rounds} rounds of {count} messages ({sdk_count} for the SDK), in-flight window {inflight}, read coalescing variant {} µs",
        broker.port(),
        setup.coalesce_us
    );

    let mut plan: Vec<(Client, u8)> = vec![
        (Client::Ours, 1),
        (Client::Rumqttc, 1),
        (Client::OursCoalesced, 1),
        (Client::OursBatched, 1),
        (Client::Floor, 1),
    ];
    if setup.tcache > 0 {
        eprintln!(
            "with --glibc-tcache: two more QoS 1 variants under GLIBC_TUNABLES=glibc.malloc.tcache_count={}",
            setup.tcache
        );
        plan.extend([(Client::OursBatchedTcache, 1), (Client::RumqttcTcache, 1)]);
    }
    if setup.python.is_some() {
        plan.push((Client::Sdk, 1));
    }
    plan.extend([
        (Client::Ours, 0),
        (Client::Rumqttc, 0),
        (Client::OursBatched, 0),
        (Client::Floor, 0),
    ]);
    if !args.flag("no-emulator") {
        plan.push((Client::OursToEmulator, 1));
    }

    let mut runs: Vec<Vec<Run>> = Vec::new();
    for round in 0..rounds {
        let mut order = plan.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this = Vec::new();
        for (client, qos) in order {
            let n = if client == Client::Sdk {
                sdk_count
            } else {
                count
            };
            let run = match client {
                Client::OursToEmulator => run_emulator(&setup, n),
                _ => run_broker(&setup, &broker, &sub, client, qos, n),
            }
            .map_err(|e| format!("round {}, {} QoS {qos}: {e}", round + 1, client.name()))?;
            eprintln!(
                "round {} {:<36} QoS {}: {:>9.0} msg/s, {:>6.2} µs CPU/msg, received {}/{}, receiver {:.2} µs/msg",
                round + 1,
                client.name(),
                qos,
                run.rate,
                run.cpu_us,
                run.received,
                run.count,
                run.receiver_cpu_us,
            );
            this.push(run);
        }
        runs.push(this);
    }
    print_tables(&runs);
    // A measurement is only worth its numbers if every message arrived: a loss is a finding
    // (session 11 found the adapters' close losing the tail this way), so the run fails.
    let lost: Vec<String> = runs
        .iter()
        .flatten()
        .filter(|r| r.received < r.count)
        .map(|r| {
            format!(
                "{} QoS {}: {} of {}",
                r.client.name(),
                r.qos,
                r.received,
                r.count
            )
        })
        .collect();
    if lost.is_empty() {
        Ok(())
    } else {
        Err(format!("messages were lost: {}", lost.join("; ")))
    }
}

fn find(round: &[Run], client: Client, qos: u8) -> Option<&Run> {
    round.iter().find(|r| r.client == client && r.qos == qos)
}

fn print_tables(runs: &[Vec<Run>]) {
    let all: Vec<&Run> = runs.iter().flatten().collect();
    println!(
        "\n### Medians over {} rounds (min–max in brackets)\n",
        runs.len()
    );
    println!("| client | QoS | messages | received | msg/s | publisher CPU µs/msg | of which kernel | peak RSS MiB | receiver CPU µs/msg | receiver load (cores) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cases = [
        (Client::Ours, 1),
        (Client::OursCoalesced, 1),
        (Client::OursBatched, 1),
        (Client::Rumqttc, 1),
        (Client::OursBatchedTcache, 1),
        (Client::RumqttcTcache, 1),
        (Client::Sdk, 1),
        (Client::Floor, 1),
        (Client::Ours, 0),
        (Client::OursBatched, 0),
        (Client::Rumqttc, 0),
        (Client::Floor, 0),
        (Client::OursToEmulator, 1),
    ];
    for (client, qos) in cases {
        let rs: Vec<&&Run> = all
            .iter()
            .filter(|r| r.client == client && r.qos == qos)
            .collect();
        if rs.is_empty() {
            continue;
        }
        let col = |f: &dyn Fn(&Run) -> f64, digits: usize| {
            let v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
            let (lo, hi) = min_max(&v);
            format!("{:.d$} ({:.d$}–{:.d$})", median(&v), lo, hi, d = digits)
        };
        let received: u64 = rs.iter().map(|r| r.received).min().unwrap_or(0);
        println!(
            "| {} | {qos} | {} | {}{} | {} | {} | {} | {} | {} | {} |",
            client.name(),
            rs[0].count,
            received,
            if rs.iter().all(|r| r.received >= r.count) {
                ""
            } else {
                " (LOST)"
            },
            col(&|r| r.rate, 0),
            col(&|r| r.cpu_us, 2),
            col(&|r| r.sys_us, 2),
            col(&|r| r.peak_rss_mib, 1),
            col(&|r| r.receiver_cpu_us, 2),
            col(&|r| r.receiver_load, 2),
        );
    }

    println!("\n### Paired ratios (per round, then median and min–max)\n");
    println!("| ratio | target | median | min–max | rounds |");
    println!("|---|---|---:|---|---:|");
    let ratio = |name: &str, target: &str, f: &dyn Fn(&[Run]) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
        if v.is_empty() {
            return;
        }
        let (lo, hi) = min_max(&v);
        println!(
            "| {name} | {target} | {:.2}× | {:.2}–{:.2}× | {} |",
            median(&v),
            lo,
            hi,
            v.len()
        );
    };
    let rate = |c, q| move |r: &[Run]| find(r, c, q).map(|x| x.rate);
    let cpu = |c, q| move |r: &[Run]| find(r, c, q).map(|x| x.cpu_us);
    ratio("QoS 1 msg/s: ours / rumqttc", "≥ 1.5×", &|r| {
        Some(rate(Client::Ours, 1)(r)? / rate(Client::Rumqttc, 1)(r)?)
    });
    ratio("QoS 1 CPU/msg: rumqttc / ours", "≥ 4×", &|r| {
        Some(cpu(Client::Rumqttc, 1)(r)? / cpu(Client::Ours, 1)(r)?)
    });
    ratio(
        "QoS 1 msg/s: ours coalescing / rumqttc",
        "≥ 1.5×",
        &|r| Some(rate(Client::OursCoalesced, 1)(r)? / rate(Client::Rumqttc, 1)(r)?),
    );
    ratio(
        "QoS 1 CPU/msg: rumqttc / ours coalescing",
        "≥ 4×",
        &|r| Some(cpu(Client::Rumqttc, 1)(r)? / cpu(Client::OursCoalesced, 1)(r)?),
    );
    ratio("QoS 1 msg/s: ours batched / rumqttc", "≥ 1.5×", &|r| {
        Some(rate(Client::OursBatched, 1)(r)? / rate(Client::Rumqttc, 1)(r)?)
    });
    ratio("QoS 1 CPU/msg: rumqttc / ours batched", "≥ 4×", &|r| {
        Some(cpu(Client::Rumqttc, 1)(r)? / cpu(Client::OursBatched, 1)(r)?)
    });
    // The same split in user space and kernel: where the difference comes from.
    let user = |c, q| move |r: &[Run]| find(r, c, q).map(|x| x.cpu_us - x.sys_us);
    ratio("QoS 1 user CPU/msg: rumqttc / ours batched", "–", &|r| {
        Some(user(Client::Rumqttc, 1)(r)? / user(Client::OursBatched, 1)(r)?)
    });
    ratio(
        "QoS 1 CPU/msg: rumqttc / ours batched, both with a large tcache",
        "≥ 4×",
        &|r| Some(cpu(Client::RumqttcTcache, 1)(r)? / cpu(Client::OursBatchedTcache, 1)(r)?),
    );
    ratio("QoS 0 msg/s: ours / rumqttc", "≥ 1.2×", &|r| {
        Some(rate(Client::Ours, 0)(r)? / rate(Client::Rumqttc, 0)(r)?)
    });
    ratio("QoS 0 CPU/msg: rumqttc / ours", "–", &|r| {
        Some(cpu(Client::Rumqttc, 0)(r)? / cpu(Client::Ours, 0)(r)?)
    });
    ratio("QoS 0 msg/s: ours batched / rumqttc", "≥ 1.2×", &|r| {
        Some(rate(Client::OursBatched, 0)(r)? / rate(Client::Rumqttc, 0)(r)?)
    });
    ratio("QoS 0 CPU/msg: rumqttc / ours batched", "–", &|r| {
        Some(cpu(Client::Rumqttc, 0)(r)? / cpu(Client::OursBatched, 0)(r)?)
    });
    ratio("QoS 1 msg/s: ours / Python SDK", "≥ 20×", &|r| {
        Some(rate(Client::Ours, 1)(r)? / rate(Client::Sdk, 1)(r)?)
    });
    ratio("QoS 1 CPU/msg: Python SDK / ours", "–", &|r| {
        Some(cpu(Client::Sdk, 1)(r)? / cpu(Client::Ours, 1)(r)?)
    });
    ratio(
        "QoS 1 msg/s: rumqttc / Python SDK",
        "(anchor 4.2×)",
        &|r| Some(rate(Client::Rumqttc, 1)(r)? / rate(Client::Sdk, 1)(r)?),
    );
    // The wire floor spends next to no CPU: what it reaches through the broker shows what the
    // broker allows, and each client's CPU is compared with the bare wire cost.
    ratio("QoS 1 msg/s: wire floor / rumqttc", "–", &|r| {
        Some(rate(Client::Floor, 1)(r)? / rate(Client::Rumqttc, 1)(r)?)
    });
    ratio("QoS 0 msg/s: wire floor / rumqttc", "–", &|r| {
        Some(rate(Client::Floor, 0)(r)? / rate(Client::Rumqttc, 0)(r)?)
    });
    ratio("QoS 1 msg/s: wire floor / Python SDK", "–", &|r| {
        Some(rate(Client::Floor, 1)(r)? / rate(Client::Sdk, 1)(r)?)
    });
    ratio("QoS 1 CPU/msg: rumqttc / wire floor", "–", &|r| {
        Some(cpu(Client::Rumqttc, 1)(r)? / cpu(Client::Floor, 1)(r)?)
    });
    ratio("QoS 1 CPU/msg: ours batched / wire floor", "–", &|r| {
        Some(cpu(Client::OursBatched, 1)(r)? / cpu(Client::Floor, 1)(r)?)
    });
    ratio(
        "QoS 1 msg/s: emulator ingest / mosquitto (same client)",
        "≥ 1× not required; see note",
        &|r| Some(rate(Client::OursToEmulator, 1)(r)? / rate(Client::Ours, 1)(r)?),
    );

    // What went over the wire, from the first message each client's round delivered.
    println!("\n### First message as the subscriber received it (QoS 0 subscription)\n");
    for (client, qos) in cases {
        if let Some(r) = all
            .iter()
            .find(|r| r.client == client && r.qos == qos && r.frame_len > 0)
        {
            println!(
                "- {} QoS {qos}: {} B frame, payload {} B `{}`",
                client.name(),
                r.frame_len,
                r.payload.len(),
                String::from_utf8_lossy(&r.payload)
            );
        }
    }
}
