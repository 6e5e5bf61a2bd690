//! The built `tbgw` binary, run as a user would: the demo, the load generator against an
//! in-process emulator, usage errors, the emulator server accepting a real gateway client,
//! and `tbgw gateway` with an X.509 certificate over mutual TLS against `tbgw emulator`'s TLS
//! listener. Every wait is bounded; child processes are killed on the way out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_proto::Credentials;
use gateway_testkit::mosquitto::TempDir;
use gateway_testkit::pki::TestPki;
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

/// `tbgw emulator ...` running in the background, its stdout read line by line.
struct EmulatorProcess {
    /// Kept only to kill the process when the test ends.
    _running: Running,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl EmulatorProcess {
    fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let child = Command::new(TBGW)
            .arg("emulator")
            .args(args)
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
        Self {
            _running: running,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line containing `needle`, waiting at most 10 s.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; got {:#?}", self.seen),
            }
        }
    }

    /// The loopback address at the end of the next line containing `needle`.
    fn address(&mut self, needle: &str) -> SocketAddr {
        let line = self.wait_for(needle);
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        addr
    }
}

#[test]
fn emulator_server_accepts_a_gateway() {
    let mut emulator =
        EmulatorProcess::start(&["--listen", "127.0.0.1:0", "--gateway", "GW=TOKEN"]);
    let addr = emulator.address("listening on ");
    emulator.wait_for("created gateway \"GW\"");

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
    emulator.wait_for("\"GW\" connected");
    emulator.wait_for("1 sub-device(s): Child");
    runtime.block_on(async {
        tokio::time::timeout(bound, client.0.close())
            .await
            .expect("closes in time");
    });
    emulator.wait_for("\"GW\" disconnected");
    drop(emulator);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// `tbgw gateway` against `port` of 127.0.0.1 with an X.509 certificate and a CA file,
/// sending 100 messages for 3 sub-devices within a second.
fn x509_gateway(port: u16, cert: &Path, key: &Path, ca: &Path) -> Finished {
    tbgw(
        &[
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--cert",
            path(cert),
            "--key",
            path(key),
            "--ca",
            path(ca),
            "--devices",
            "3",
            "--rate",
            "100",
            "--duration",
            "1",
            "--qos",
            "1",
        ],
        Duration::from_secs(60),
    )
}

fn assert_all_acknowledged(run: &Finished) {
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let report = &run.stdout;
    assert!(
        report.contains("(TLS), 3 sub-devices (3 announced)"),
        "{report}"
    );
    assert_eq!(report_number(report, "sent"), 100, "{report}");
    assert_eq!(report_number(report, "acknowledged"), 100, "{report}");
    assert_eq!(report_number(report, "failed"), 0, "{report}");
}

fn assert_tls_failure(run: &Finished, needle: &str) {
    assert_eq!(
        run.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("tbgw gateway: error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{}", run.stderr));
    assert!(
        error.contains("TLS") && error.to_lowercase().contains("certificate"),
        "{error}"
    );
    assert!(error.contains(needle), "{error}");
    assert!(!run.stdout.contains("report"), "{}", run.stdout);
}

#[test]
fn gateway_with_an_x509_certificate_over_mutual_tls_against_the_emulator_server() {
    let dir = TempDir::new("tbgw-cli-tls").unwrap();
    let pki = TestPki::generate_named("tbgw CLI test CA").unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let gw = pki
        .client("GW")
        .unwrap()
        .write_to(dir.path(), "gw")
        .unwrap();
    // A CA that signed nothing the emulator presents.
    let unrelated = dir.path().join("unrelated");
    std::fs::create_dir(&unrelated).unwrap();
    let unrelated_ca = TestPki::generate_named("unrelated CA")
        .unwrap()
        .write_to(&unrelated)
        .unwrap()
        .ca;

    let mut emulator = EmulatorProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        path(&files.server_cert),
        "--tls-key",
        path(&files.server_key),
        "--x509-gateway",
        &format!("GW={}", path(&gw.cert)),
    ]);
    let plain = emulator.address("tbgw emulator: listening on ");
    let tls = emulator.address("tbgw emulator: TLS listening on ");
    assert_ne!(plain, tls);
    emulator.wait_for("created gateway \"GW\" (type default), X.509 certificate");

    let run = x509_gateway(tls.port(), &gw.cert, &gw.key, &files.ca);
    assert_all_acknowledged(&run);
    // The emulator knew the session by the certificate's device.
    emulator.wait_for("\"GW\" connected");

    let run = x509_gateway(tls.port(), &gw.cert, &gw.key, &unrelated_ca);
    assert_tls_failure(&run, "must be issued by the CA in");
    drop(emulator);
}

#[test]
fn emulator_with_a_client_ca_refuses_certificates_it_did_not_issue() {
    let dir = TempDir::new("tbgw-cli-client-ca").unwrap();
    let pki = TestPki::generate_named("tbgw CLI test CA").unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let gw = pki
        .client("GW")
        .unwrap()
        .write_to(dir.path(), "gw")
        .unwrap();
    // Registered as a gateway's credentials, but no CA issued it.
    let own = TestPki::self_signed_client("Own")
        .unwrap()
        .write_to(dir.path(), "own")
        .unwrap();

    let mut emulator = EmulatorProcess::start(&[
        "--listen",
        "0",
        "--tls-listen",
        "0",
        "--tls-cert",
        path(&files.server_cert),
        "--tls-key",
        path(&files.server_key),
        "--client-ca",
        path(&files.ca),
        "--x509-gateway",
        &format!("GW={}", path(&gw.cert)),
        "--x509-gateway",
        &format!("Own={}", path(&own.cert)),
    ]);
    let tls = emulator.address("TLS listening on ");
    emulator.wait_for("must be issued by");
    emulator.wait_for("created gateway \"Own\"");

    assert_all_acknowledged(&x509_gateway(tls.port(), &gw.cert, &gw.key, &files.ca));
    let run = x509_gateway(tls.port(), &own.cert, &own.key, &files.ca);
    assert_tls_failure(&run, "the server refused the handshake");
    drop(emulator);
}
