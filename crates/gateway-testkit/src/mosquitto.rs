//! A real mosquitto broker on 127.0.0.1 for tests, and a counting subscriber.
//!
//! [`Mosquitto::start`] writes a mosquitto.conf into a fresh temporary directory, picks a free
//! ephemeral port on 127.0.0.1, starts `mosquitto -c <file>` with its log in that directory,
//! and returns once the port accepts connections. The broker can be stopped gracefully
//! ([`stop`](Mosquitto::stop), SIGTERM: mosquitto saves its persistence database), killed
//! ([`kill`](Mosquitto::kill), SIGKILL: a crash) and [`restart`](Mosquitto::restart)ed on the
//! same port. Dropping it kills the process and removes the directory, also when the test
//! panics.
//!
//! [`CountingSubscriber`] runs `mosquitto_sub` with a persistent session and records every
//! message it prints, restarting `mosquitto_sub` with the same client id whenever it exits.
//!
//! Every wait is bounded, and a missing mosquitto program is a [`BrokerError::NotInstalled`]
//! error telling how to install it, never a silent skip.
//!
//! ```no_run
//! use std::time::Duration;
//! use gateway_testkit::mosquitto::{BrokerConfig, CountingSubscriber, Mosquitto};
//!
//! # fn main() -> Result<(), gateway_testkit::mosquitto::BrokerError> {
//! let mut broker = Mosquitto::start(BrokerConfig::new().persistence(true))?;
//! let sub = CountingSubscriber::start(&broker, "v1/devices/me/telemetry", 1, "counter")?;
//! // ... point the client under test at broker.addr() ...
//! broker.publish("v1/devices/me/telemetry", br#"{"t":1}"#, 1)?;
//! broker.restart()?; // SIGTERM, then start again on the same port; sessions survive
//! broker.publish("v1/devices/me/telemetry", br#"{"t":2}"#, 1)?;
//! sub.wait_for_count(2, Duration::from_secs(10))?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Facts about mosquitto this relies on (checked with mosquitto 2.0.11)
//!
//! * Started as root, mosquitto switches to the `mosquitto` user unless the configuration
//!   says `user root`; that user could not write the persistence database into our
//!   directory, so the harness writes `user root` when it runs as root.
//! * On SIGTERM mosquitto writes its persistence database; after SIGKILL only what the last
//!   autosave wrote survives (`autosave_interval`, 1800 s unless
//!   [`BrokerConfig::autosave_interval_secs`] says otherwise).
//! * `mosquitto_sub` reconnects by itself when an established connection is lost, but exits
//!   when the first connection is refused; its output is block-buffered except that every
//!   message is flushed.
//! * `mosquitto_passwd -c -b FILE USER PASSWORD` creates the file and `-b` adds users; `-U`
//!   (hash a plain `user:password` file in place) also works but cuts a password at its next
//!   `:`, so the harness uses `-b`.
//!
//! ## Using it from async tests
//!
//! Everything here blocks (for at most the documented timeouts). From a tokio test, call
//! it before entering async code or through `spawn_blocking`; the waits of
//! [`CountingSubscriber`] block the calling thread.
//!
//! Processes are killed on drop; if the test process itself is killed with SIGKILL, the
//! broker and `mosquitto_sub` outlive it (std has no way to tie a child's life to ours).

mod client;
mod config;
mod error;
mod subscriber;
mod temp;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use client::{ClientOptions, ClientTls, DEFAULT_CLIENT_TIMEOUT};
pub use config::{BrokerConfig, BrokerTls, DEFAULT_STARTUP_TIMEOUT};
pub use error::BrokerError;
pub use subscriber::{CountingSubscriber, Message, SubscriberOptions};
pub use temp::{PemFile, TempDir};

use client::{find_mosquitto_program, find_program, run_checked, wait_bounded};
use config::ConfigFiles;

/// How long [`Mosquitto::stop`] waits for the broker to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How many ports [`Mosquitto::start`] tries when the picked port is taken meanwhile.
const PORT_ATTEMPTS: u32 = 5;

/// How many log lines errors carry.
const LOG_TAIL_LINES: usize = 30;

/// The loopback address everything listens on.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A mosquitto broker process listening on `127.0.0.1:`[`port`](Mosquitto::port).
///
/// Owns its temporary directory (configuration, password file, certificates written from
/// PEM text, persistence database, log). Dropping it kills the broker and removes the
/// directory.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    program: PathBuf,
    config: BrokerConfig,
    client_defaults: ClientOptions,
    conf_path: PathBuf,
    log_path: PathBuf,
    persistence_dir: Option<PathBuf>,
    // Last, so that the process is gone before the directory is removed.
    dir: TempDir,
}

/// How one launch of the broker process ended.
enum Launch {
    /// Listening.
    Ready(Child),
    /// The port was taken.
    PortInUse,
}

impl Mosquitto {
    /// Starts a broker with `config` on a free port of 127.0.0.1 and waits (at most
    /// [`BrokerConfig::startup_timeout`]) until it accepts connections.
    ///
    /// If another process takes the picked port before mosquitto binds it, another port is
    /// tried, a few times.
    pub fn start(config: BrokerConfig) -> Result<Mosquitto, BrokerError> {
        config.validate()?;
        let program = find_mosquitto_program("mosquitto")?;
        let dir = TempDir::new("gateway-testkit-mosquitto")
            .map_err(|e| BrokerError::io("creating a temporary directory", e))?;
        let files = prepare_files(&config, &dir)?;
        let mut client_defaults = ClientOptions::new();
        if let Some([ca, _, _]) = &files.tls {
            client_defaults.tls = Some(ClientTls::new(PemFile::Path(ca.clone())));
        }
        let mut broker = Mosquitto {
            child: None,
            port: 0,
            program,
            client_defaults,
            conf_path: dir.path().join("mosquitto.conf"),
            log_path: dir.path().join("mosquitto.log"),
            persistence_dir: files.persistence_dir.clone(),
            config,
            dir,
        };
        let as_root = running_as_root();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            broker.port = port;
            let text = config::render(&broker.config, port, &files, as_root)?;
            fs::write(&broker.conf_path, text).map_err(|e| {
                BrokerError::io(format!("writing {}", broker.conf_path.display()), e)
            })?;
            let deadline = Instant::now() + broker.config.startup_timeout;
            match broker.launch(deadline)? {
                Launch::Ready(child) => {
                    broker.child = Some(child);
                    return Ok(broker);
                }
                Launch::PortInUse => continue,
            }
        }
        Err(BrokerError::PortUnavailable {
            port: broker.port,
            attempts: PORT_ATTEMPTS,
            log_tail: broker.log_tail(),
        })
    }

    /// The port the broker listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOOPBACK, self.port))
    }

    /// The host to connect to: `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The configuration the broker was started with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The temporary directory holding the configuration, log and persistence database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The persistence directory, when persistence is on.
    pub fn persistence_dir(&self) -> Option<&Path> {
        self.persistence_dir.as_deref()
    }

    /// The process id, while the broker runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is alive (it may have died on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            Some(Err(_)) | None => false,
        }
    }

    /// The whole log of the broker, over all its runs.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL_LINES)
    }

    /// Options for command-line clients of this broker: 127.0.0.1, and the broker's CA
    /// when it serves TLS. Add credentials or a client certificate as needed.
    pub fn client_options(&self) -> ClientOptions {
        self.client_defaults.clone()
    }

    /// Publishes one message with `mosquitto_pub` and [`client_options`](Self::client_options);
    /// fails if `mosquitto_pub` exits non-zero (e.g. refused) or takes longer than
    /// [`DEFAULT_CLIENT_TIMEOUT`].
    pub fn publish(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        qos: u8,
    ) -> Result<(), BrokerError> {
        self.publish_with(&self.client_defaults, topic, payload.as_ref(), qos, false)
    }

    /// Publishes one message with `mosquitto_pub` and the given client options.
    pub fn publish_with(
        &self,
        client: &ClientOptions,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
    ) -> Result<(), BrokerError> {
        let program = find_mosquitto_program("mosquitto_pub")?;
        let connection = client.args(self.port, &self.dir)?;
        let command =
            client::publish_command(&program, connection, &self.dir, topic, payload, qos, retain)?;
        run_checked(command, "mosquitto_pub", &self.dir, client.timeout).map(drop)
    }

    /// Stops the broker gracefully: SIGTERM, then waits (at most [`STOP_TIMEOUT`]) for it to
    /// exit. mosquitto saves its persistence database on the way out. Does nothing if it is
    /// not running. If it does not exit in time it is killed and this is an error.
    pub fn stop(&mut self) -> Result<(), BrokerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        // std can only send SIGKILL; `kill` sends SIGTERM without unsafe code. The child is
        // not reaped yet, so its pid cannot have been reused.
        let sent = find_program("kill", "install procps (it provides `kill`)").and_then(|kill| {
            let mut command = Command::new(kill);
            command.args(["-TERM", &child.id().to_string()]);
            run_checked(command, "kill", &self.dir, DEFAULT_CLIENT_TIMEOUT)
        });
        if let Err(e) = sent {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        match wait_bounded(&mut child, STOP_TIMEOUT) {
            Ok(Some(_)) => Ok(()),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BrokerError::StopTimeout {
                    timeout: STOP_TIMEOUT,
                    log_tail: self.log_tail(),
                })
            }
        }
    }

    /// Kills the broker with SIGKILL, like a crash: nothing is saved. Does nothing if it is
    /// not running.
    pub fn kill(&mut self) -> Result<(), BrokerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        child
            .kill()
            .map_err(|e| BrokerError::io("killing mosquitto", e))?;
        child
            .wait()
            .map_err(|e| BrokerError::io("waiting for mosquitto", e))?;
        Ok(())
    }

    /// Starts the broker again on the same port, with the same configuration and
    /// persistence directory, after [`stop`](Self::stop)ping it if it runs. Waits until it
    /// accepts connections (at most [`BrokerConfig::startup_timeout`], also while the port
    /// is briefly taken by someone else).
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop()?;
        let deadline = Instant::now() + self.config.startup_timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.launch(deadline)? {
                Launch::Ready(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Launch::PortInUse if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Launch::PortInUse => {
                    return Err(BrokerError::PortUnavailable {
                        port: self.port,
                        attempts,
                        log_tail: self.log_tail(),
                    })
                }
            }
        }
    }

    /// Spawns mosquitto with the written configuration and waits until it listens on
    /// `self.port`, or exits, or `deadline` passes.
    fn launch(&self, deadline: Instant) -> Result<Launch, BrokerError> {
        let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| BrokerError::io(format!("opening {}", self.log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| BrokerError::io("duplicating a file handle", e))?;
        let mut command = Command::new(&self.program);
        command
            .arg("-c")
            .arg(&self.conf_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let mut child = client::spawn(&mut command, "mosquitto")?;
        let addr = self.addr();
        loop {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    if self
                        .log_since(log_offset)
                        .contains("Address already in use")
                    {
                        return Ok(Launch::PortInUse);
                    }
                    return Err(BrokerError::Exited {
                        status: status.to_string(),
                        log_tail: self.log_tail(),
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BrokerError::io("waiting for mosquitto", e));
                }
            }
            // "mosquitto version X running" comes after the listener is bound: a connection
            // before it could reach another process that holds the port.
            let running = self
                .log_since(log_offset)
                .lines()
                .any(|line| line.trim_end().ends_with(" running"));
            if running && TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
                return Ok(Launch::Ready(child));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BrokerError::StartTimeout {
                    port: self.port,
                    timeout: self.config.startup_timeout,
                    log_tail: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log written after `offset` bytes.
    fn log_since(&self, offset: u64) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = file.read_to_end(&mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes the password file, the TLS files given as text, and the persistence directory.
fn prepare_files(config: &BrokerConfig, dir: &TempDir) -> Result<ConfigFiles, BrokerError> {
    let mut files = ConfigFiles::default();
    if !config.users.is_empty() {
        let path = dir.path().join("passwd");
        let program = find_mosquitto_program("mosquitto_passwd")?;
        // `-b` (batch) rather than `-U` (hash a plain file in place): mosquitto 2.0.11's `-U`
        // cuts a password at its next ':'. `-c` creates the file for the first user.
        for (i, (name, password)) in config.users.iter().enumerate() {
            let mut command = Command::new(&program);
            if i == 0 {
                command.arg("-c");
            }
            command.arg("-b").arg(&path).arg(name).arg(password);
            run_checked(command, "mosquitto_passwd", dir, DEFAULT_CLIENT_TIMEOUT)?;
        }
        files.password_file = Some(path);
    }
    if let Some(tls) = &config.tls {
        files.tls = Some([
            tls.cafile.materialize(dir, "broker-ca")?,
            tls.certfile.materialize(dir, "broker-cert")?,
            tls.keyfile.materialize(dir, "broker-key")?,
        ]);
    }
    if config.persistence {
        let path = dir.path().join("persistence");
        fs::create_dir(&path)
            .map_err(|e| BrokerError::io(format!("creating {}", path.display()), e))?;
        files.persistence_dir = Some(path);
    }
    Ok(files)
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, BrokerError> {
    let listener = TcpListener::bind((LOOPBACK, 0))
        .map_err(|e| BrokerError::io("binding 127.0.0.1:0 to pick a port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| BrokerError::io("reading the picked port", e))?
        .port();
    drop(listener);
    Ok(port)
}

/// Whether this process runs as root (the owner of /proc/self is the effective user).
fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or_else(|_| std::env::var("USER").is_ok_and(|u| u == "root"))
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn free_ports_are_on_loopback_and_nonzero() -> Result<(), BrokerError> {
        assert_ne!(free_port()?, 0);
        Ok(())
    }
}
