//! `tbgw gateway`: a simulated gateway that announces N sub-devices and sends their
//! telemetry at a fixed total rate, pipelined: requests are queued on pace and their
//! outcomes collected concurrently, so one slow acknowledgement never slows the sender.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice};
use gateway_proto::{Credentials, Event, ProtocolVersion, QoS};
use gateway_tokio::{
    connect, Client, ClientError, ClientEvent, ClientOptions, ConnectError, Delivery, Events,
    TlsError, TlsOptions, TransportError,
};
use serde_json::{json, Map, Value};
use tokio::time::{timeout, timeout_at, Instant, MissedTickBehavior};

use crate::args::{Auth, GatewayArgs, Target};
use crate::report::{rate, Outcomes};
use crate::BoxError;

/// The gateway device of `--emulator`.
const EMULATOR_GATEWAY: &str = "tbgw load gateway";
const EMULATOR_TOKEN: &str = "TBGW_LOAD_TOKEN";
/// How often the sender wakes up to queue what is due.
const TICK: Duration = Duration::from_millis(10);
/// The shortest wait for the sub-devices' announce outcomes (else `--drain`).
const MIN_ANNOUNCE_WAIT: Duration = Duration::from_secs(5);
/// The bound on closing the connection at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs the load generator.
pub async fn run(args: GatewayArgs) -> Result<(), BoxError> {
    let (options, target, emulator) = prepare(&args).await?;
    let result = load(&args, options, &target, emulator.as_ref()).await;
    if let Some(emu) = emulator {
        emu.shutdown();
    }
    result
}

/// Client options for the target, a description of it, and the in-process emulator if any.
async fn prepare(
    args: &GatewayArgs,
) -> Result<(ClientOptions, String, Option<EmulatorHandle>), BoxError> {
    let (mut options, target, emulator) = match &args.target {
        Target::Emulator => {
            let emu = EmulatorHandle::start(EmulatorConfig::default())
                .await
                .map_err(|e| format!("cannot start the emulator: {e}"))?;
            emu.create_device(NewDevice::gateway(EMULATOR_GATEWAY, EMULATOR_TOKEN))
                .map_err(|e| format!("cannot create the emulator's gateway device: {e}"))?;
            let addr = emu.addr();
            let options = ClientOptions::new(
                addr.ip().to_string(),
                addr.port(),
                Credentials::AccessToken(EMULATOR_TOKEN.into()),
            );
            (
                options,
                format!("the in-process emulator at {addr}"),
                Some(emu),
            )
        }
        Target::Server {
            host,
            port,
            auth,
            tls,
            ca,
        } => {
            let credentials = match auth {
                Auth::Token(token) => Credentials::AccessToken(token.clone()),
                Auth::Basic { username, password } => Credentials::Basic {
                    username: username.clone(),
                    password: password.clone(),
                },
                Auth::X509 { .. } => Credentials::X509,
            };
            let mut options = ClientOptions::new(host.clone(), *port, credentials);
            if *tls {
                let mut tls = match ca {
                    Some(ca) => TlsOptions::with_ca_file(ca),
                    None => TlsOptions::system_roots(),
                };
                if let Auth::X509 { cert, key } = auth {
                    tls = tls.client_identity_files(cert, key);
                }
                options = options.tls(tls);
                // Unreadable PEM files are a local problem: say so before dialling.
                options
                    .tls_setup()
                    .map_err(|e| format!("cannot set up TLS: {e}"))?;
            }
            let target = format!("{}{}", options.address(), if *tls { " (TLS)" } else { "" });
            (options, target, None)
        }
    };
    let config = &mut options.config;
    config.protocol = args.mqtt;
    config.telemetry_qos = args.qos;
    if let Some(id) = &args.client_id {
        config.client_id.clone_from(id);
    }
    config.max_sub_devices = config.max_sub_devices.max(args.devices);
    Ok((options, target, emulator))
}

/// Outcomes recorded by the tasks awaiting them.
#[derive(Default)]
struct Collected {
    outcomes: Mutex<Outcomes>,
    sent: AtomicU64,
}

impl Collected {
    fn outcomes(&self) -> MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the event task saw.
#[derive(Default)]
struct Sessions {
    connected: AtomicU64,
    lost: AtomicU64,
    failed_attempts: AtomicU64,
    rpcs: AtomicU64,
}

async fn load(
    args: &GatewayArgs,
    options: ClientOptions,
    target: &str,
    emulator: Option<&EmulatorHandle>,
) -> Result<(), BoxError> {
    let address = options.address();
    eprintln!("tbgw gateway: connecting to {target} ...");
    let bound = options.config.connect_timeout + Duration::from_secs(5);
    let (client, events) = match timeout(bound, connect(options)).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => return Err(connect_failed(&address, &e, &args.target).into()),
        Err(_) => {
            return Err(format!(
                "could not connect to {address}: no session within {} s",
                bound.as_secs()
            )
            .into())
        }
    };
    let sessions = Arc::new(Sessions::default());
    let event_task = tokio::spawn(watch_events(client.clone(), events, sessions.clone()));

    let result = drive(args, &client, target, emulator, &sessions).await;
    if timeout(CLOSE_WAIT, client.close()).await.is_err() {
        eprintln!(
            "tbgw gateway: the connection did not close within {} s",
            CLOSE_WAIT.as_secs()
        );
    }
    event_task.abort();
    result
}

/// One clear line for a failed first connection, with a hint where the cause is likely.
fn connect_failed(address: &str, e: &ConnectError, target: &Target) -> String {
    let (ca, x509) = match target {
        Target::Server { ca, auth, .. } => (ca.as_deref(), matches!(auth, Auth::X509 { .. })),
        Target::Emulator => (None, false),
    };
    match e {
        // "connection refused: <reason>" already.
        ConnectError::Refused(refusal) if x509 => format!(
            "{address}: {refusal} (is the certificate given with --cert registered as the \
             gateway's X.509 credentials?)"
        ),
        ConnectError::Refused(refusal) => format!("{address}: {refusal}"),
        ConnectError::Transport(TransportError::Tls(tls @ TlsError::Handshake(cause))) => {
            let hint = match cause {
                rustls::Error::InvalidCertificate(_) => match ca {
                    Some(ca) => format!(
                        " (the server's certificate must be issued by the CA in {} and name \
                         the host)",
                        ca.display()
                    ),
                    None => " (the server's certificate must be trusted by the system roots \
                             and name the host; give its CA with --ca)"
                        .to_owned(),
                },
                rustls::Error::AlertReceived(_) if x509 => " (the server refused the \
                    handshake: does it accept client certificates issued like --cert?)"
                    .to_owned(),
                rustls::Error::AlertReceived(_) => " (the server refused the handshake: does \
                    it require a client certificate? see --cert and --key)"
                    .to_owned(),
                _ => String::new(),
            };
            format!("could not connect to {address}: {tls}{hint}")
        }
        other => {
            let text = other.to_string();
            if text.contains(address) {
                text
            } else {
                format!("could not connect to {address}: {text}")
            }
        }
    }
}

/// Counts sessions, reports connection losses, and answers server-side RPCs to the
/// simulated sub-devices.
async fn watch_events(client: Client, events: Events, sessions: Arc<Sessions>) {
    // The first session is the one `connect` waited for.
    let mut up = true;
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Proto(Event::Connected { .. }) => {
                up = true;
                let before = sessions.connected.fetch_add(1, Ordering::Relaxed);
                if before > 0 {
                    notice("connected again");
                }
            }
            ClientEvent::Proto(Event::Disconnected { reason, .. })
                if reason != gateway_proto::DisconnectReason::Local =>
            {
                if up {
                    up = false;
                    sessions.lost.fetch_add(1, Ordering::Relaxed);
                    notice(&format!("connection lost ({reason}); reconnecting"));
                } else {
                    sessions.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if !matches!(reason, gateway_proto::DisconnectReason::TransportClosed) {
                        notice(&format!("reconnect attempt failed ({reason})"));
                    }
                }
            }
            ClientEvent::TransportFailed(e) => notice(&format!("reconnect attempt failed: {e}")),
            ClientEvent::Proto(Event::RpcRequest {
                device: Some(device),
                id,
                method,
                ..
            }) => {
                sessions.rpcs.fetch_add(1, Ordering::Relaxed);
                let client = client.clone();
                // Not awaited here: the event stream must keep flowing.
                tokio::spawn(async move {
                    let reply = json!({"ok": true, "method": method, "simulated": true});
                    if let Ok(pending) = client.device_rpc_reply(device, id, reply).await {
                        let _ = pending.await;
                    }
                });
            }
            _ => {}
        }
    }
}

/// A line on stderr, clearing a progress line first on a terminal.
fn notice(text: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\r\x1b[2Ktbgw gateway: {text}");
    } else {
        eprintln!("tbgw gateway: {text}");
    }
}

/// Announces the sub-devices, waiting at most `wait`; returns how many were acknowledged
/// and the failures.
async fn announce(client: &Client, names: &[String], wait: Duration) -> (usize, Outcomes) {
    let deadline = Instant::now() + wait;
    let mut pending = Vec::with_capacity(names.len());
    let mut failures = Outcomes::default();
    for name in names {
        match timeout_at(
            deadline,
            client.connect_device(name.as_str(), Some("tbgw-sim")),
        )
        .await
        {
            Ok(Ok(p)) => pending.push(p),
            Ok(Err(e)) => failures.failure(e.to_string(), None),
            Err(_) => failures.failure("not queued before the announce deadline", None),
        }
    }
    let mut ok = 0;
    for p in pending {
        match timeout_at(deadline, p).await {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => failures.failure(e.to_string(), None),
            Err(_) => failures.failure("no outcome before the announce deadline", None),
        }
    }
    (ok, failures)
}

/// The telemetry of message `seq`.
fn telemetry(seq: u64) -> Map<String, Value> {
    let mut values = Map::new();
    values.insert("seq".into(), json!(seq));
    // A slow sawtooth between 20.0 and 29.9.
    #[allow(clippy::cast_precision_loss)]
    let temperature = 20.0 + (seq % 100) as f64 / 10.0;
    values.insert("temperature".into(), json!(temperature));
    values
}

/// Messages due at `elapsed` of a run of `total` at `rate` per second: message `k` is due at
/// `k / rate`, all of them once the duration is over.
pub fn due(elapsed: Duration, rate: f64, total: u64, over: bool) -> u64 {
    if over {
        return total;
    }
    // Non-negative and far below 2^53 (rate and duration are bounded by the parser).
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let due = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
    due.min(total)
}

fn planned_total(rate: f64, duration: Duration) -> u64 {
    // Bounded by the parser: at most 10^6 per second for a day.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = (rate * duration.as_secs_f64()).round() as u64;
    total.max(1)
}

async fn drive(
    args: &GatewayArgs,
    client: &Client,
    target: &str,
    emulator: Option<&EmulatorHandle>,
    sessions: &Sessions,
) -> Result<(), BoxError> {
    let names: Vec<String> = (1..=args.devices)
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    eprintln!(
        "tbgw gateway: connected; announcing {} sub-devices ...",
        names.len()
    );
    let wait = args.drain.max(MIN_ANNOUNCE_WAIT);
    let (announced, announce_failures) = announce(client, &names, wait).await;
    if announced == 0 {
        let reasons: Vec<String> = announce_failures
            .failures
            .iter()
            .map(|(reason, count)| format!("{count}x {reason}"))
            .collect();
        return Err(format!(
            "none of the {} sub-devices was announced ({}); is the device a gateway? \
             ThingsBoard ignores the gateway API of other devices",
            names.len(),
            reasons.join("; ")
        )
        .into());
    }
    let qos = match args.qos {
        QoS::AtMostOnce => 0,
        _ => 1,
    };
    let mqtt = match args.mqtt {
        ProtocolVersion::V311 => "3.1.1",
        _ => "5",
    };
    let total = planned_total(args.rate, args.duration);
    eprintln!(
        "tbgw gateway: {announced} announced; sending {total} messages at {} msg/s for {:.1} s \
         (QoS {qos}, MQTT {mqtt})",
        args.rate,
        args.duration.as_secs_f64()
    );

    let collected = Arc::new(Collected::default());
    let start = Instant::now();
    let done = if qos == 0 {
        "transmitted"
    } else {
        "acknowledged"
    };
    let progress = tokio::spawn(progress(collected.clone(), start, done));
    let (sent, stopped) = send(args, client, &names, total, start, &collected).await;
    let send_time = start.elapsed();

    // Wait for the outstanding outcomes, bounded by --drain.
    let drain_until = Instant::now() + args.drain;
    while collected.outcomes().finished() < sent && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();
    let _ = progress.await;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let outcomes = collected.outcomes().clone();
    let stats = client.stats().await.ok();

    // The report.
    println!("tbgw gateway report");
    println!(
        "  target        {target}, {} sub-devices ({announced} announced), QoS {qos}, MQTT {mqtt}",
        args.devices
    );
    for (reason, count) in &announce_failures.failures {
        println!("    announce failed {count}x: {reason}");
    }
    println!(
        "  planned       {total} messages at {} msg/s over {:.1} s",
        args.rate,
        args.duration.as_secs_f64()
    );
    println!(
        "  sent          {sent} in {:.2} s ({:.1} msg/s achieved)",
        send_time.as_secs_f64(),
        rate(sent, send_time)
    );
    if let Some(why) = &stopped {
        println!("  stopped early {why}");
    }
    println!("  acknowledged  {}", outcomes.acknowledged);
    if qos == 0 {
        println!(
            "  transmitted   {} (QoS 0: no acknowledgement exists)",
            outcomes.transmitted
        );
    }
    println!("  failed        {}", outcomes.failed());
    for (reason, count) in &outcomes.failures {
        println!("    {count:>6}  {reason}");
    }
    let missing = sent.saturating_sub(outcomes.finished());
    if missing > 0 {
        println!(
            "  no outcome    {missing} (still queued or in flight after waiting {:.1} s)",
            args.drain.as_secs_f64()
        );
    }
    match outcomes.latency() {
        Some(l) => println!(
            "  latency       {l}  (send to outcome, {} samples)",
            l.count
        ),
        None => println!("  latency       no outcomes"),
    }
    let lost = sessions.lost.load(Ordering::Relaxed);
    match stats {
        Some(s) => println!(
            "  connection    {}, {lost} lost, {}, {} retransmitted, {} bytes sent, {} \
             received, {} RPCs answered",
            plural(s.connections, "session"),
            plural(
                sessions.failed_attempts.load(Ordering::Relaxed),
                "failed reconnect attempt"
            ),
            s.retransmitted,
            s.bytes_sent,
            s.bytes_received,
            sessions.rpcs.load(Ordering::Relaxed)
        ),
        None => println!(
            "  connection    {}, {lost} lost",
            plural(sessions.connected.load(Ordering::Relaxed), "session")
        ),
    }
    if let Some(emu) = emulator {
        let stored: usize = names
            .iter()
            .filter_map(|n| emu.telemetry(n).ok())
            .filter_map(|t| t.get("seq").map(Vec::len))
            .sum();
        println!(
            "  platform      {stored} messages stored by the emulator (it keeps the last 1000 \
             per sub-device)"
        );
    }
    Ok(())
}

/// Queues the messages on pace. Returns how many were queued and why sending stopped early,
/// if it did.
async fn send(
    args: &GatewayArgs,
    client: &Client,
    names: &[String],
    total: u64,
    start: Instant,
    collected: &Arc<Collected>,
) -> (u64, Option<String>) {
    // Sending never goes on past the duration plus the drain time, even if the client's
    // queue stays full.
    let deadline = start + args.duration + args.drain;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent: u64 = 0;
    let devices = names.len() as u64;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let over = elapsed >= args.duration;
        let due = due(elapsed, args.rate, total, over);
        while sent < due {
            let index = usize::try_from(sent % devices).unwrap_or(0);
            let device = names[index].as_str();
            let sent_at = Instant::now();
            match timeout_at(deadline, client.device_telemetry(device, telemetry(sent))).await {
                Ok(Ok(pending)) => {
                    let collected = collected.clone();
                    tokio::spawn(async move {
                        let outcome = pending.await;
                        let latency = sent_at.elapsed();
                        let mut outcomes = collected.outcomes();
                        match outcome {
                            Ok(Delivery::Acknowledged) => outcomes.success(true, latency),
                            Ok(_) => outcomes.success(false, latency),
                            Err(e) => outcomes.failure(reason(&e), Some(latency)),
                        }
                    });
                }
                Ok(Err(e)) => return (sent, Some(format!("the client stopped: {e}"))),
                Err(_) => {
                    return (
                        sent,
                        Some("the client's request queue stayed full until the deadline".into()),
                    )
                }
            }
            sent += 1;
            collected.sent.store(sent, Ordering::Relaxed);
        }
        if over {
            return (sent, None);
        }
    }
}

/// "1 session", "2 sessions".
fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The reason a failure is grouped under: the error's own text.
fn reason(e: &ClientError) -> String {
    e.to_string()
}

/// Prints a progress line on stderr about once a second (overwriting itself on a terminal).
async fn progress(collected: Arc<Collected>, start: Instant, done: &'static str) {
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tick.tick().await;
    let mut last_sent = 0;
    let mut last_at = start;
    loop {
        tick.tick().await;
        let sent = collected.sent.load(Ordering::Relaxed);
        let (ok, failed, finished) = {
            let o = collected.outcomes();
            (o.acknowledged + o.transmitted, o.failed(), o.finished())
        };
        let now = Instant::now();
        let line = format!(
            "{:6.1} s  sent {sent}  {done} {ok}  failed {failed}  in flight {}  {:.0} msg/s",
            (now - start).as_secs_f64(),
            sent.saturating_sub(finished),
            rate(sent - last_sent, now - last_at)
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        last_sent = sent;
        last_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_connections_get_a_hint_where_the_cause_is_likely() {
        let server = |auth, ca: Option<&str>| Target::Server {
            host: "127.0.0.1".into(),
            port: 8883,
            auth,
            tls: true,
            ca: ca.map(Into::into),
        };
        let x509 = Auth::X509 {
            cert: "gw.pem".into(),
            key: "gw.key".into(),
        };
        let handshake = |e| ConnectError::Transport(TransportError::Tls(TlsError::Handshake(e)));
        let untrusted = handshake(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let refused = handshake(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        let text = connect_failed("h:1", &untrusted, &server(x509.clone(), Some("ca.pem")));
        assert!(
            text.starts_with("could not connect to h:1: TLS handshake failed")
                && text.ends_with("issued by the CA in ca.pem and name the host)"),
            "{text}"
        );
        let text = connect_failed("h:1", &untrusted, &server(Auth::Token("T".into()), None));
        assert!(text.contains("system roots"), "{text}");
        let text = connect_failed("h:1", &refused, &server(x509.clone(), None));
        assert!(
            text.contains("client certificates issued like --cert"),
            "{text}"
        );
        let text = connect_failed("h:1", &refused, &server(Auth::Token("T".into()), None));
        assert!(text.contains("require a client certificate"), "{text}");
    }

    #[test]
    fn pacing() {
        let total = planned_total(200.0, Duration::from_secs(2));
        assert_eq!(total, 400);
        assert_eq!(due(Duration::ZERO, 200.0, total, false), 1);
        assert_eq!(due(Duration::from_millis(10), 200.0, total, false), 3);
        assert_eq!(due(Duration::from_millis(1999), 200.0, total, false), 400);
        assert_eq!(due(Duration::from_millis(1990), 200.0, total, false), 399);
        assert_eq!(due(Duration::from_secs(5), 200.0, total, false), 400);
        assert_eq!(due(Duration::from_millis(1990), 200.0, total, true), 400);
        assert_eq!(planned_total(0.1, Duration::from_secs(1)), 1);
    }
}
