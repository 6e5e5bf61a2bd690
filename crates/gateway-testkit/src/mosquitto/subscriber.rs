//! A `mosquitto_sub` process that counts what it receives, restarted whenever it exits.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::client::{
    find_mosquitto_program, publish_command, run_bounded, spawn, wait_bounded, ClientOptions,
};
use super::{tail, BrokerError, Mosquitto, TempDir};

/// How long [`CountingSubscriber::start`] waits until the subscription works, by default.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between an exit of `mosquitto_sub` and its restart.
const RESPAWN_DELAY: Duration = Duration::from_millis(200);

/// How long an exiting `mosquitto_sub` may take before it is killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`CountingSubscriber::pause`] waits for the process to be gone.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one probe may take to come back before the next is sent.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// `mosquitto_sub`'s output format: a marker, QoS, retain flag, payload in hex, topic last
/// (a topic may contain spaces; hex keeps any payload on one line).
const FORMAT: &str = "M %q %r %x %t";

/// How many lines of `mosquitto_sub`'s error output errors carry.
const LOG_TAIL_LINES: usize = 20;

/// One message received by a [`CountingSubscriber`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The QoS it was delivered with.
    pub qos: u8,
    /// The retain flag as delivered.
    pub retain: bool,
}

impl Message {
    /// The payload as text (invalid UTF-8 replaced).
    pub fn payload_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// What a [`CountingSubscriber`] subscribes to and how it connects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberOptions {
    /// Topic filters (`-t`), at least one.
    pub topics: Vec<String>,
    /// Subscription QoS (`-q`).
    pub qos: u8,
    /// Client id (`-i`), kept across restarts of `mosquitto_sub`.
    pub client_id: String,
    /// Clean session; `false` (the default) passes `-c`, so the broker keeps the session and
    /// queues QoS 1/2 messages while the subscriber is away.
    pub clean_session: bool,
    /// Host, credentials, TLS.
    pub client: ClientOptions,
    /// More `mosquitto_sub` arguments (e.g. `-V mqttv5`, `-k 5`).
    pub extra_args: Vec<String>,
    /// How long [`CountingSubscriber::start_with`] waits until the subscription works.
    pub ready_timeout: Duration,
}

impl SubscriberOptions {
    /// One topic filter, persistent session, default client options (plain TCP to
    /// 127.0.0.1; use [`client`](Self::client) with
    /// [`Mosquitto::client_options`] for a TLS broker).
    pub fn new(topic: impl Into<String>, qos: u8, client_id: impl Into<String>) -> Self {
        SubscriberOptions {
            topics: vec![topic.into()],
            qos,
            client_id: client_id.into(),
            clean_session: false,
            client: ClientOptions::new(),
            extra_args: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// Adds a topic filter.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Sets clean session (no `-c`).
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    /// Sets host, credentials and TLS.
    pub fn client(mut self, client: ClientOptions) -> Self {
        self.client = client;
        self
    }

    /// Adds a raw `mosquitto_sub` argument.
    pub fn extra_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Sets how long starting waits until the subscription works.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), BrokerError> {
        if self.topics.is_empty() {
            return Err(BrokerError::invalid("a subscriber needs a topic filter"));
        }
        if self.qos > 2 {
            return Err(BrokerError::invalid(format!("QoS {} > 2", self.qos)));
        }
        if self.client_id.is_empty() {
            return Err(BrokerError::invalid(
                "a subscriber needs a client id (its session is kept under it)",
            ));
        }
        Ok(())
    }
}

/// A `mosquitto_sub` with a persistent session that records every message it receives.
///
/// A reader thread parses `mosquitto_sub`'s output. `mosquitto_sub` reconnects by itself
/// when the broker goes away, and when it exits anyway (its first connection refused, the
/// broker down at a restart), the thread starts it again with the same client id after
/// 200 ms, until the subscriber is dropped or [`pause`](Self::pause)d. With `-c` the broker
/// queues QoS 1/2 messages for the session meanwhile.
///
/// [`start`](Self::start) returns once the subscription demonstrably works: it publishes
/// QoS 0 probes to a private topic (`gateway-testkit/probe/<hex of the client id>`, also
/// subscribed) until one comes back. Probes are never counted. Call
/// [`wait_subscribed`](Self::wait_subscribed) after a broker restart to know it is back.
///
/// Dropping it kills `mosquitto_sub` and joins the thread.
pub struct CountingSubscriber {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    pub_program: PathBuf,
    connection: Vec<OsString>,
    probe_topic: String,
    probes_sent: AtomicU64,
    client_timeout: Duration,
    stderr_path: PathBuf,
    client_id: String,
    // Last, so that the process is gone before its files are removed.
    dir: TempDir,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

#[derive(Default)]
struct State {
    messages: Vec<Message>,
    last_probe: u64,
    child: Option<Child>,
    stopping: bool,
    paused: bool,
    spawns: u64,
    last_spawn_error: Option<String>,
}

/// Starts `mosquitto_sub` processes, all alike.
struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
    stderr_path: PathBuf,
}

impl Launcher {
    fn spawn(&self) -> Result<(Child, ChildStdout), BrokerError> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| BrokerError::io(format!("opening {}", self.stderr_path.display()), e))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = spawn(&mut command, "mosquitto_sub")?;
        match child.stdout.take() {
            Some(stdout) => Ok((child, stdout)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BrokerError::io(
                    "mosquitto_sub has no stdout pipe",
                    std::io::Error::other("missing pipe"),
                ))
            }
        }
    }
}

impl CountingSubscriber {
    /// Subscribes to `topic` with `qos` as `client_id` (persistent session), with
    /// [`Mosquitto::client_options`], and waits until the subscription works.
    pub fn start(
        broker: &Mosquitto,
        topic: &str,
        qos: u8,
        client_id: &str,
    ) -> Result<CountingSubscriber, BrokerError> {
        let options = SubscriberOptions::new(topic, qos, client_id).client(broker.client_options());
        CountingSubscriber::start_with(broker, options)
    }

    /// Starts with explicit options (credentials, TLS, several topics, clean session) and
    /// waits (at most [`SubscriberOptions::ready_timeout`]) until the subscription works.
    pub fn start_with(
        broker: &Mosquitto,
        options: SubscriberOptions,
    ) -> Result<CountingSubscriber, BrokerError> {
        options.validate()?;
        let sub_program = find_mosquitto_program("mosquitto_sub")?;
        let pub_program = find_mosquitto_program("mosquitto_pub")?;
        let dir = TempDir::new("gateway-testkit-sub")
            .map_err(|e| BrokerError::io("creating a temporary directory", e))?;
        let connection = options.client.args(broker.port(), &dir)?;
        let probe_topic = format!(
            "gateway-testkit/probe/{}",
            hex(options.client_id.as_bytes())
        );
        let stderr_path = dir.path().join("mosquitto_sub.log");

        let mut args = connection.clone();
        for topic in options.topics.iter().chain([&probe_topic]) {
            args.extend(["-t".into(), topic.into()]);
        }
        args.extend([
            "-q".into(),
            options.qos.to_string().into(),
            "-i".into(),
            options.client_id.clone().into(),
            "-F".into(),
            FORMAT.into(),
        ]);
        if !options.clean_session {
            args.push("-c".into());
        }
        args.extend(options.extra_args.iter().map(OsString::from));
        let launcher = Launcher {
            program: sub_program,
            args,
            stderr_path: stderr_path.clone(),
        };

        let (child, stdout) = launcher.spawn()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                child: Some(child),
                spawns: 1,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread_probe_topic = probe_topic.clone();
        let spawned = thread::Builder::new()
            .name(format!("mosquitto_sub {}", options.client_id))
            .spawn(move || read_loop(&thread_shared, &launcher, &thread_probe_topic, stdout));
        let reader = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                if let Some(mut child) = shared.lock().child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(BrokerError::io("starting the subscriber thread", e));
            }
        };
        let subscriber = CountingSubscriber {
            shared,
            reader: Some(reader),
            pub_program,
            connection,
            probe_topic,
            probes_sent: AtomicU64::new(0),
            client_timeout: options.client.timeout,
            stderr_path,
            client_id: options.client_id,
            dir,
        };
        subscriber.wait_subscribed(options.ready_timeout)?;
        Ok(subscriber)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How many messages arrived (duplicates included, probes excluded).
    pub fn count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    /// Every message so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().messages.clone()
    }

    /// Every payload so far, in arrival order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.shared
            .lock()
            .messages
            .iter()
            .map(|m| m.payload.clone())
            .collect()
    }

    /// The distinct payloads so far (QoS 1 redeliveries collapse).
    pub fn distinct_payloads(&self) -> BTreeSet<Vec<u8>> {
        self.shared
            .lock()
            .messages
            .iter()
            .map(|m| m.payload.clone())
            .collect()
    }

    /// How many times `mosquitto_sub` was started again after exiting.
    pub fn restarts(&self) -> u64 {
        self.shared.lock().spawns.saturating_sub(1)
    }

    /// `mosquitto_sub`'s error output (all runs), e.g. connection errors.
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `predicate` holds for the messages so far; at most `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&[Message]) -> bool,
    ) -> Result<(), BrokerError> {
        self.wait_until(timeout, "messages satisfying the condition", |state| {
            predicate(&state.messages)
        })
    }

    /// Waits until at least `n` messages arrived; returns the count.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> Result<usize, BrokerError> {
        self.wait_until(timeout, &format!("{n} messages"), |state| {
            state.messages.len() >= n
        })?;
        Ok(self.count())
    }

    /// Waits until at least `n` distinct payloads arrived; returns their number.
    pub fn wait_for_distinct(&self, n: usize, timeout: Duration) -> Result<usize, BrokerError> {
        let distinct = |state: &State| {
            state
                .messages
                .iter()
                .map(|m| &m.payload)
                .collect::<BTreeSet<_>>()
                .len()
        };
        self.wait_until(timeout, &format!("{n} distinct payloads"), |state| {
            distinct(state) >= n
        })?;
        Ok(distinct(&self.shared.lock()))
    }

    /// Waits until a message with exactly this payload arrived.
    pub fn wait_for_payload(
        &self,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let payload = payload.as_ref();
        self.wait_until(
            timeout,
            &format!("payload {:?}", String::from_utf8_lossy(payload)),
            |state| state.messages.iter().any(|m| m.payload == payload),
        )
    }

    /// Waits until the subscription works: publishes QoS 0 probes to the private probe
    /// topic every 250 ms until one comes back. Use after a broker restart to know that
    /// `mosquitto_sub` has reconnected.
    pub fn wait_subscribed(&self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let probe = self.probes_sent.fetch_add(1, Ordering::Relaxed) + 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let command = publish_command(
                &self.pub_program,
                self.connection.clone(),
                &self.dir,
                &self.probe_topic,
                probe.to_string().as_bytes(),
                0,
                false,
            )?;
            let sent = run_bounded(
                command,
                "mosquitto_pub",
                &self.dir,
                self.client_timeout.min(remaining),
            );
            // A refused or slow probe (the broker may be restarting) is simply retried.
            if let Err(e @ BrokerError::NotInstalled { .. }) = sent {
                return Err(e);
            }
            let round = (Instant::now() + PROBE_INTERVAL).min(deadline);
            if self.wait_state(round, |state| state.last_probe >= probe) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(
                    "working subscription (no probe came back)".to_string(),
                    timeout,
                ));
            }
        }
    }

    /// Kills `mosquitto_sub` and keeps it down until [`resume`](Self::resume); returns once
    /// the process is gone. With a persistent session the broker queues QoS 1/2 messages
    /// meanwhile. A message in flight at the moment of the kill may be lost to the count.
    pub fn pause(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut state = self.shared.lock();
        state.paused = true;
        if let Some(child) = state.child.as_mut() {
            let _ = child.kill();
        }
        while state.child.is_some() {
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(self.timeout_error("exit of mosquitto_sub".to_string(), PAUSE_TIMEOUT));
            }
            state = self.shared.wait_timeout(state, deadline - now);
        }
        Ok(())
    }

    /// Lets the reader thread start `mosquitto_sub` again (same client id and session).
    /// Returns at once; use [`wait_subscribed`](Self::wait_subscribed) to wait for it.
    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }

    fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl FnMut(&State) -> bool,
    ) -> Result<(), BrokerError> {
        if self.wait_state(Instant::now() + timeout, done) {
            Ok(())
        } else {
            Err(self.timeout_error(what.to_string(), timeout))
        }
    }

    /// Waits until `done` holds or `deadline` passes; whether it holds.
    fn wait_state(&self, deadline: Instant, mut done: impl FnMut(&State) -> bool) -> bool {
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.shared.wait_timeout(state, deadline - now);
        }
    }

    fn timeout_error(&self, what: String, timeout: Duration) -> BrokerError {
        let (received, spawn_error) = {
            let state = self.shared.lock();
            (state.messages.len(), state.last_spawn_error.clone())
        };
        let mut log_tail = tail(&self.stderr(), LOG_TAIL_LINES);
        if let Some(e) = spawn_error {
            log_tail.push_str(&format!("\n(last restart failed: {e})"));
        }
        BrokerError::WaitTimeout {
            what,
            timeout,
            received,
            log_tail,
        }
    }
}

impl std::fmt::Debug for CountingSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingSubscriber")
            .field("client_id", &self.client_id)
            .field("count", &self.count())
            .field("restarts", &self.restarts())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for CountingSubscriber {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            if let Some(child) = state.child.as_mut() {
                let _ = child.kill();
            }
        }
        self.shared.changed.notify_all();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // Only if the thread died early: do not leave a process behind.
        if let Some(mut child) = self.shared.lock().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The reader thread: records the output of the running `mosquitto_sub`, reaps it when its
/// output ends, and starts it again unless paused or stopping.
fn read_loop(shared: &Shared, launcher: &Launcher, probe_topic: &str, first: ChildStdout) {
    let mut stdout = Some(first);
    loop {
        if let Some(out) = stdout.take() {
            read_messages(out, shared, probe_topic);
        }
        let mut state = shared.lock();
        // The output ended: the process exited or is exiting. Reaped under the lock so
        // that `pause` sees the process gone only once it is.
        if let Some(mut child) = state.child.take() {
            if !matches!(wait_bounded(&mut child, REAP_TIMEOUT), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        shared.changed.notify_all();
        let respawn_at = Instant::now() + RESPAWN_DELAY;
        loop {
            if state.stopping {
                return;
            }
            let now = Instant::now();
            if !state.paused && now >= respawn_at {
                break;
            }
            let wait = if state.paused {
                Duration::from_secs(1)
            } else {
                respawn_at - now
            };
            state = shared.wait_timeout(state, wait);
        }
        match launcher.spawn() {
            Ok((child, out)) => {
                state.child = Some(child);
                state.spawns += 1;
                stdout = Some(out);
            }
            // Tried again after the delay; the error shows in wait timeouts.
            Err(e) => state.last_spawn_error = Some(e.to_string()),
        }
    }
}

/// Records every message line of one `mosquitto_sub` run until its output ends.
fn read_messages(out: ChildStdout, shared: &Shared, probe_topic: &str) {
    for line in BufReader::new(out).split(b'\n') {
        let Ok(line) = line else { break };
        let Some(message) = parse_line(&line) else {
            continue;
        };
        let mut state = shared.lock();
        if message.topic == probe_topic {
            let probe = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(0);
            state.last_probe = state.last_probe.max(probe);
        } else {
            state.messages.push(message);
        }
        drop(state);
        shared.changed.notify_all();
    }
}

/// Parses one line printed with [`FORMAT`].
fn parse_line(line: &[u8]) -> Option<Message> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.splitn(5, ' ');
    if parts.next()? != "M" {
        return None;
    }
    let qos = parts.next()?.parse().ok()?;
    let retain = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let payload = unhex(parts.next()?)?;
    let topic = parts.next()?.to_string();
    Some(Message {
        topic,
        payload,
        qos,
        retain,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_messages() {
        assert_eq!(
            parse_line(b"M 1 0 6869207468657265 a b"),
            Some(Message {
                topic: "a b".into(),
                payload: b"hi there".to_vec(),
                qos: 1,
                retain: false
            })
        );
        assert_eq!(
            parse_line(b"M 0 1  t"),
            Some(Message {
                topic: "t".into(),
                payload: Vec::new(),
                qos: 0,
                retain: true
            })
        );
        assert_eq!(
            parse_line(b"M 0 0 780a79 t").map(|m| m.payload),
            Some(b"x\ny".to_vec())
        );
        assert_eq!(parse_line(b"Client x received PUBLISH"), None);
        assert_eq!(parse_line(b"M 0 0 7 t"), None);
        assert_eq!(parse_line(b"M 0 2 00 t"), None);
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0xff, b'a'];
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn options_are_validated() {
        assert!(SubscriberOptions::new("t", 3, "id").validate().is_err());
        assert!(SubscriberOptions::new("t", 1, "").validate().is_err());
        assert!(SubscriberOptions::new("t", 1, "id").validate().is_ok());
    }
}
