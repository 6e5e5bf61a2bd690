//! What the broker is started with, and the mosquitto.conf text written for it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BrokerError, PemFile};

/// How long [`Mosquitto::start`](super::Mosquitto::start) and
/// [`Mosquitto::restart`](super::Mosquitto::restart) wait for the port by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the broker is configured: authentication, TLS, persistence and logging.
///
/// The broker always has exactly one listener, on `127.0.0.1` and a port the harness picks.
/// The default allows anonymous clients, without TLS or persistence:
///
/// ```
/// use gateway_testkit::mosquitto::{BrokerConfig, BrokerTls, PemFile};
///
/// let plain = BrokerConfig::new();
/// let locked = BrokerConfig::new().user("alice", "secret"); // no anonymous clients any more
/// let durable = BrokerConfig::new().persistence(true).autosave_interval_secs(1);
/// let mtls = BrokerConfig::new().tls(
///     BrokerTls::new(
///         PemFile::path("ca.pem"),
///         PemFile::path("server.pem"),
///         PemFile::path("server.key"),
///     )
///     .require_certificate(true),
/// );
/// # let _ = (plain, locked, durable, mtls);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// `allow_anonymous`: whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// Users of the password file as (name, password); no password file when empty.
    pub users: Vec<(String, String)>,
    /// TLS on the listener; plain TCP when `None`.
    pub tls: Option<BrokerTls>,
    /// `persistence`: keep sessions, subscriptions, retained and queued messages in a
    /// database in the temporary directory, across [`restart`](super::Mosquitto::restart).
    ///
    /// mosquitto writes the database when it exits on SIGTERM
    /// ([`stop`](super::Mosquitto::stop)) and every `autosave_interval` seconds; a
    /// [`kill`](super::Mosquitto::kill) loses what changed since the last save.
    pub persistence: bool,
    /// `autosave_interval` in seconds (mosquitto's default is 1800; 0 saves only on exit).
    pub autosave_interval_secs: Option<u32>,
    /// `max_queued_messages` per client (mosquitto's default is 1000; 0 means no limit).
    pub max_queued_messages: Option<u32>,
    /// Log every packet (`log_type all`) instead of errors, warnings, notices and
    /// information.
    pub verbose_log: bool,
    /// More lines appended to the configuration as they are (no newlines inside).
    pub extra_lines: Vec<String>,
    /// How long to wait for the broker to accept connections.
    pub startup_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            allow_anonymous: true,
            users: Vec::new(),
            tls: None,
            persistence: false,
            autosave_interval_secs: None,
            max_queued_messages: None,
            verbose_log: false,
            extra_lines: Vec::new(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl BrokerConfig {
    /// Anonymous clients allowed, no TLS, no persistence.
    pub fn new() -> BrokerConfig {
        BrokerConfig::default()
    }

    /// Adds a user to the password file and disallows anonymous clients (call
    /// [`allow_anonymous`](Self::allow_anonymous) afterwards to allow both).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> BrokerConfig {
        self.users.push((name.into(), password.into()));
        self.allow_anonymous = false;
        self
    }

    /// Sets `allow_anonymous`.
    pub fn allow_anonymous(mut self, allow: bool) -> BrokerConfig {
        self.allow_anonymous = allow;
        self
    }

    /// Serves TLS on the listener.
    pub fn tls(mut self, tls: BrokerTls) -> BrokerConfig {
        self.tls = Some(tls);
        self
    }

    /// Turns persistence on or off.
    pub fn persistence(mut self, on: bool) -> BrokerConfig {
        self.persistence = on;
        self
    }

    /// Sets `autosave_interval` (seconds; only meaningful with persistence).
    pub fn autosave_interval_secs(mut self, secs: u32) -> BrokerConfig {
        self.autosave_interval_secs = Some(secs);
        self
    }

    /// Sets `max_queued_messages`.
    pub fn max_queued_messages(mut self, count: u32) -> BrokerConfig {
        self.max_queued_messages = Some(count);
        self
    }

    /// Logs every packet.
    pub fn verbose_log(mut self, on: bool) -> BrokerConfig {
        self.verbose_log = on;
        self
    }

    /// Appends a raw configuration line.
    pub fn extra_line(mut self, line: impl Into<String>) -> BrokerConfig {
        self.extra_lines.push(line.into());
        self
    }

    /// Sets how long to wait for the broker to accept connections.
    pub fn startup_timeout(mut self, timeout: Duration) -> BrokerConfig {
        self.startup_timeout = timeout;
        self
    }

    /// Rejects values that cannot be written to mosquitto.conf or the password file.
    pub(crate) fn validate(&self) -> Result<(), BrokerError> {
        for (name, password) in &self.users {
            if name.is_empty() || name.contains([':', '\n', '\r']) {
                return Err(BrokerError::invalid(format!(
                    "user name {name:?} must be non-empty, without ':' or line breaks"
                )));
            }
            if password.contains(['\n', '\r']) {
                return Err(BrokerError::invalid(format!(
                    "the password of {name:?} contains a line break"
                )));
            }
        }
        for line in &self.extra_lines {
            if line.contains(['\n', '\r']) {
                return Err(BrokerError::invalid(format!(
                    "extra line {line:?} contains a line break"
                )));
            }
        }
        Ok(())
    }
}

/// TLS on the broker's listener (`cafile`, `certfile`, `keyfile`, `require_certificate`,
/// `use_identity_as_username`).
///
/// Clients must trust `cafile`'s CA for the server certificate, and connect to `127.0.0.1`,
/// so the server certificate needs that IP address among its subject alternative names
/// (or the client must skip the host name check).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerTls {
    /// CA certificates: the one clients are told to trust, and the ones that client
    /// certificates must chain to when `require_certificate` is set.
    pub cafile: PemFile,
    /// The server certificate (chain).
    pub certfile: PemFile,
    /// The server's private key.
    pub keyfile: PemFile,
    /// Mutual TLS: refuse clients without a certificate signed by `cafile`.
    pub require_certificate: bool,
    /// Use the client certificate's common name as the MQTT user name.
    pub use_identity_as_username: bool,
}

impl BrokerTls {
    /// Server-side TLS only (no client certificate required).
    pub fn new(cafile: PemFile, certfile: PemFile, keyfile: PemFile) -> BrokerTls {
        BrokerTls {
            cafile,
            certfile,
            keyfile,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }

    /// Sets `require_certificate`.
    pub fn require_certificate(mut self, on: bool) -> BrokerTls {
        self.require_certificate = on;
        self
    }

    /// Sets `use_identity_as_username`.
    pub fn use_identity_as_username(mut self, on: bool) -> BrokerTls {
        self.use_identity_as_username = on;
        self
    }
}

/// The files a configuration refers to, once written to disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigFiles {
    /// The hashed password file, when there are users.
    pub password_file: Option<PathBuf>,
    /// `cafile`, `certfile`, `keyfile`, when TLS is on.
    pub tls: Option<[PathBuf; 3]>,
    /// The persistence directory, when persistence is on.
    pub persistence_dir: Option<PathBuf>,
}

fn path_text(path: &Path) -> Result<&str, BrokerError> {
    let text = path
        .to_str()
        .ok_or_else(|| BrokerError::invalid(format!("path {} is not UTF-8", path.display())))?;
    if text.contains(['\n', '\r']) {
        return Err(BrokerError::invalid(format!(
            "path {text:?} contains a line break"
        )));
    }
    Ok(text)
}

/// The mosquitto.conf text for `config` listening on `127.0.0.1:port`.
///
/// `run_as_root`: mosquitto started as root switches to the `mosquitto` user unless told
/// `user root`, and could then not write the persistence database in our directory.
pub(crate) fn render(
    config: &BrokerConfig,
    port: u16,
    files: &ConfigFiles,
    run_as_root: bool,
) -> Result<String, BrokerError> {
    config.validate()?;
    let mut out = String::new();
    // `fmt::Write` for String cannot fail; the results are ignored on purpose.
    let _ = writeln!(out, "# written by gateway-testkit for one test run");
    let _ = writeln!(out, "listener {port} 127.0.0.1");
    if let Some(tls) = &config.tls {
        let [ca, cert, key] = files
            .tls
            .as_ref()
            .ok_or_else(|| BrokerError::invalid("TLS configured but its files are missing"))?;
        let _ = writeln!(out, "cafile {}", path_text(ca)?);
        let _ = writeln!(out, "certfile {}", path_text(cert)?);
        let _ = writeln!(out, "keyfile {}", path_text(key)?);
        let _ = writeln!(out, "require_certificate {}", tls.require_certificate);
        if tls.use_identity_as_username {
            let _ = writeln!(out, "use_identity_as_username true");
        }
    }
    let _ = writeln!(out, "allow_anonymous {}", config.allow_anonymous);
    if !config.users.is_empty() {
        let file = files.password_file.as_ref().ok_or_else(|| {
            BrokerError::invalid("users configured but the password file is missing")
        })?;
        let _ = writeln!(out, "password_file {}", path_text(file)?);
    }
    if config.persistence {
        let dir = files.persistence_dir.as_ref().ok_or_else(|| {
            BrokerError::invalid("persistence configured but its directory is missing")
        })?;
        let _ = writeln!(out, "persistence true");
        // mosquitto appends the file name to this; the trailing slash keeps older
        // versions, which concatenate, in the directory.
        let _ = writeln!(
            out,
            "persistence_location {}/",
            path_text(dir)?.trim_end_matches('/')
        );
        if let Some(secs) = config.autosave_interval_secs {
            let _ = writeln!(out, "autosave_interval {secs}");
        }
    } else {
        let _ = writeln!(out, "persistence false");
    }
    if let Some(count) = config.max_queued_messages {
        let _ = writeln!(out, "max_queued_messages {count}");
    }
    if run_as_root {
        let _ = writeln!(out, "user root");
    }
    // stderr is unbuffered and goes to the log file; stdout would be block-buffered.
    let _ = writeln!(out, "log_dest stderr");
    if config.verbose_log {
        let _ = writeln!(out, "log_type all");
    } else {
        for kind in ["error", "warning", "notice", "information"] {
            let _ = writeln!(out, "log_type {kind}");
        }
    }
    let _ = writeln!(out, "connection_messages true");
    let _ = writeln!(out, "log_timestamp true");
    for line in &config.extra_lines {
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn default_config_is_anonymous_plain_tcp_on_loopback() -> Result<(), BrokerError> {
        let text = render(&BrokerConfig::new(), 18830, &ConfigFiles::default(), false)?;
        assert_eq!(
            lines(&text),
            [
                "listener 18830 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                "log_timestamp true",
            ]
        );
        Ok(())
    }

    #[test]
    fn users_tls_persistence_and_root() -> Result<(), BrokerError> {
        let config = BrokerConfig::new()
            .user("alice", "secret")
            .tls(
                BrokerTls::new(
                    PemFile::contents("CA"),
                    PemFile::contents("CERT"),
                    PemFile::contents("KEY"),
                )
                .require_certificate(true)
                .use_identity_as_username(true),
            )
            .persistence(true)
            .autosave_interval_secs(1)
            .max_queued_messages(0)
            .verbose_log(true)
            .extra_line("max_inflight_messages 5");
        let files = ConfigFiles {
            password_file: Some("/t/passwd".into()),
            tls: Some([
                "/t/ca.pem".into(),
                "/t/cert.pem".into(),
                "/t/key.pem".into(),
            ]),
            persistence_dir: Some("/t/persist".into()),
        };
        let text = render(&config, 40000, &files, true)?;
        assert_eq!(
            lines(&text),
            [
                "listener 40000 127.0.0.1",
                "cafile /t/ca.pem",
                "certfile /t/cert.pem",
                "keyfile /t/key.pem",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                "password_file /t/passwd",
                "persistence true",
                "persistence_location /t/persist/",
                "autosave_interval 1",
                "max_queued_messages 0",
                "user root",
                "log_dest stderr",
                "log_type all",
                "connection_messages true",
                "log_timestamp true",
                "max_inflight_messages 5",
            ]
        );
        Ok(())
    }

    #[test]
    fn server_only_tls_writes_require_certificate_false() -> Result<(), BrokerError> {
        let config = BrokerConfig::new().tls(BrokerTls::new(
            PemFile::path("/ca"),
            PemFile::path("/c"),
            PemFile::path("/k"),
        ));
        let files = ConfigFiles {
            tls: Some(["/ca".into(), "/c".into(), "/k".into()]),
            ..ConfigFiles::default()
        };
        let text = render(&config, 1, &files, false)?;
        assert!(text.contains("\nrequire_certificate false\n"), "{text}");
        assert!(!text.contains("use_identity_as_username"), "{text}");
        assert!(text.contains("\nallow_anonymous true\n"), "{text}");
        Ok(())
    }

    #[test]
    fn values_that_would_break_the_files_are_rejected() {
        let bad = [
            BrokerConfig::new().user("a:b", "x"),
            BrokerConfig::new().user("", "x"),
            BrokerConfig::new().user("a", "x\ny"),
            BrokerConfig::new().extra_line("a\nb"),
        ];
        for config in bad {
            let files = ConfigFiles {
                password_file: Some("/p".into()),
                ..ConfigFiles::default()
            };
            assert!(
                matches!(
                    render(&config, 1, &files, false),
                    Err(BrokerError::InvalidConfig { .. })
                ),
                "{config:?}"
            );
        }
        let files = ConfigFiles {
            password_file: Some("/p\nq".into()),
            ..ConfigFiles::default()
        };
        assert!(render(&BrokerConfig::new().user("a", "b"), 1, &files, false).is_err());
    }
}
