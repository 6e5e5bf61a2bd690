//! The built `tbgw` binary, run as a user would: the demo, the load generator against an
//! in-process emulator, usage errors, and the emulator server accepting a real gateway
//! client. Every wait is bounded; child processes are killed on the way out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_proto::Credentials;
use gateway_tokio::{connect, ClientOptions, Delivery};

const TBGW: &str = env!("CARGO_BIN_EXE_tbgw");

/// Kills the child when dropped (a failed assertion must not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `tbgw args...` to completion, killing it (and failing) after `limit`.
fn tbgw(args: &[&str], limit: Duration) -> Finished {
    let child = Command::new(TBGW)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tbgw starts");
    let mut running = Running(child);
    let mut stdout = running.0.stdout.take().unwrap();
    let mut stderr = running.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < limit,
            "tbgw {args:?} still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn demo_succeeds_and_narrates_the_reannounce_and_summary() {
    let run = tbgw(&["demo"], Duration::from_secs(60));
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let out = &run.stdout;
    for needle in [
        "announce",
        "platform stored the same values",
        "platform got the reply",
        "gateway received the push",
        "connected again",
        "re-announced its 3 sub-devices by itself",
        "an RPC reached Meter M1 after the reconnect",
        "summary",
        "demo finished OK",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// The number after `label` on its report line.
fn report_number(report: &str, label: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number on {line:?}"))
}

#[test]
fn load_generator_against_the_in_process_emulator() {
    let run = tbgw(
        &[
            "gateway",
            "--emulator",
            "--devices",
            "5",
            "--rate",
            "200",
            "--duration",
            "2",
            "--qos",
            "1",
        ],
        Duration::from_secs(60),
    );
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let report = &run.stdout;
    let sent = report_number(report, "sent");
    let acknowledged = report_number(report, "acknowledged");
    assert!((380..=400).contains(&sent), "{report}");
    assert_eq!(acknowledged, sent, "{report}");
    assert_eq!(report_number(report, "failed"), 0, "{report}");
    assert!(report.contains("latency       p50 "), "{report}");
    assert!(report.contains("msg/s achieved"), "{report}");
    // Progress went to stderr.
    assert!(run.stderr.contains("in flight"), "{}", run.stderr);
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for (args, needle, usage) in [
        (&[][..], "no command given", "Usage: tbgw <COMMAND>"),
        (
            &["launch"][..],
            "unknown command 'launch'",
            "Usage: tbgw <COMMAND>",
        ),
        (
            &["gateway", "--emulator", "--rate", "fast"][..],
            "invalid value 'fast' for --rate",
            "Usage: tbgw gateway",
        ),
        (
            &["gateway", "--token", "T"][..],
            "missing --host",
            "Usage: tbgw gateway",
        ),
        (
            &["gateway", "--emulator", "--host", "tb"][..],
            "--emulator cannot be used with --host",
            "Usage: tbgw gateway",
        ),
        (
            &["emulator", "--listen", "0.0.0.0:1883"][..],
            "invalid value '0.0.0.0:1883' for --listen",
            "Usage: tbgw emulator",
        ),
        (
            &["demo", "--fast"][..],
            "unknown option '--fast'",
            "Usage: tbgw demo",
        ),
    ] {
        let run = tbgw(args, Duration::from_secs(10));
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(usage), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    for args in [
        &["--help"][..],
        &["help", "emulator"][..],
        &["demo", "--help"][..],
        &["gateway", "-h"][..],
    ] {
        let run = tbgw(args, Duration::from_secs(10));
        assert!(run.status.success(), "{args:?}");
        assert!(
            run.stdout.contains("Usage: tbgw"),
            "{args:?}: {}",
            run.stdout
        );
    }
}

#[test]
fn emulator_server_accepts_a_gateway() {
    let child = Command::new(TBGW)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "GW=TOKEN",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tbgw starts");
    let mut running = Running(child);
    let stdout = running.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; got {seen:#?}"),
            }
        }
    };
    let listening = wait_for("listening on ");
    let addr: SocketAddr = listening
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    wait_for("created gateway \"GW\"");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bound = Duration::from_secs(10);
    let client = runtime.block_on(async {
        let options = ClientOptions::new(
            addr.ip().to_string(),
            addr.port(),
            Credentials::AccessToken("TOKEN".into()),
        );
        let (client, events) = tokio::time::timeout(bound, connect(options))
            .await
            .expect("connects in time")
            .expect("the emulator accepts the gateway");
        let pending = client
            .connect_device("Child", Some("sensor"))
            .await
            .unwrap();
        let delivery = tokio::time::timeout(bound, pending)
            .await
            .expect("announced in time")
            .unwrap();
        assert_eq!(delivery, Delivery::Acknowledged);
        (client, events)
    });
    // The emulator reports the session and its sub-device (it looks twice a second).
    wait_for("\"GW\" connected");
    wait_for("1 sub-device(s): Child");
    runtime.block_on(async {
        tokio::time::timeout(bound, client.0.close())
            .await
            .expect("closes in time");
    });
    wait_for("\"GW\" disconnected");
    drop(running);
}
