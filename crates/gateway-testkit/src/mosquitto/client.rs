//! Finding and running the mosquitto programs, and the options of the command-line clients.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::MOSQUITTO_HINT;
use super::{BrokerError, PemFile, TempDir};

/// How long a one-shot client (`mosquitto_pub`, `mosquitto_passwd`, `kill`) may run.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Directories searched after `PATH`: Debian installs the broker in /usr/sbin, which is not
/// on every user's `PATH`.
const EXTRA_DIRS: [&str; 5] = [
    "/usr/sbin",
    "/usr/local/sbin",
    "/sbin",
    "/usr/bin",
    "/usr/local/bin",
];

/// Finds `program` on `PATH` or in the usual system directories.
pub(crate) fn find_program(program: &str, hint: &'static str) -> Result<PathBuf, BrokerError> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| BrokerError::NotInstalled {
            program: program.to_string(),
            hint,
        })
}

/// Finds one of the mosquitto programs.
pub(crate) fn find_mosquitto_program(program: &str) -> Result<PathBuf, BrokerError> {
    find_program(program, MOSQUITTO_HINT)
}

/// Spawns `command`, turning "no such file" into [`BrokerError::NotInstalled`].
pub(crate) fn spawn(command: &mut Command, program: &str) -> Result<Child, BrokerError> {
    command.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            BrokerError::NotInstalled {
                program: program.to_string(),
                hint: MOSQUITTO_HINT,
            }
        } else {
            BrokerError::io(format!("starting {program}"), e)
        }
    })
}

/// Waits for `child` up to `timeout`, polling; `None` when it is still running.
pub(crate) fn wait_bounded(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs `command` to completion within `timeout`, with its output in a scratch file.
/// Returns the exit status and the output; kills it on timeout.
pub(crate) fn run_bounded(
    mut command: Command,
    program: &str,
    scratch: &TempDir,
    timeout: Duration,
) -> Result<(ExitStatus, String), BrokerError> {
    let out_path = scratch.unique_path(program, "out");
    let out = File::create(&out_path)
        .map_err(|e| BrokerError::io(format!("creating {}", out_path.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| BrokerError::io("duplicating a file handle", e))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = spawn(&mut command, program)?;
    let waited = wait_bounded(&mut child, timeout);
    let status = match waited {
        Ok(Some(status)) => Some(status),
        Ok(None) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let output = fs::read(&out_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    match (status, waited) {
        (Some(status), _) => Ok((status, output)),
        (None, Err(e)) => Err(BrokerError::io(format!("waiting for {program}"), e)),
        (None, Ok(_)) => Err(BrokerError::CommandTimeout {
            program: program.to_string(),
            timeout,
            output,
        }),
    }
}

/// Like [`run_bounded`], and a non-zero exit is a [`BrokerError::CommandFailed`].
pub(crate) fn run_checked(
    command: Command,
    program: &str,
    scratch: &TempDir,
    timeout: Duration,
) -> Result<String, BrokerError> {
    let (status, output) = run_bounded(command, program, scratch, timeout)?;
    if status.success() {
        Ok(output)
    } else {
        Err(BrokerError::CommandFailed {
            program: program.to_string(),
            status: status.to_string(),
            output,
        })
    }
}

/// Connection options shared by [`Mosquitto::publish_with`](super::Mosquitto::publish_with)
/// and [`CountingSubscriber`](super::CountingSubscriber): host, credentials, TLS.
///
/// [`Mosquitto::client_options`](super::Mosquitto::client_options) gives the options that
/// fit a broker (its CA when it serves TLS); add credentials or a client certificate to them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Host to connect to (`-h`); `127.0.0.1` by default. The port is the broker's.
    pub host: String,
    /// `-u`.
    pub username: Option<String>,
    /// `-P`.
    pub password: Option<String>,
    /// TLS options; plain TCP when `None`.
    pub tls: Option<ClientTls>,
    /// How long a one-shot `mosquitto_pub` may take.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            host: "127.0.0.1".to_string(),
            username: None,
            password: None,
            tls: None,
            timeout: DEFAULT_CLIENT_TIMEOUT,
        }
    }
}

impl ClientOptions {
    /// Plain TCP to 127.0.0.1, no credentials.
    pub fn new() -> ClientOptions {
        ClientOptions::default()
    }

    /// Sets the host name to connect to (e.g. `localhost` to match a DNS name in the
    /// server certificate).
    pub fn host(mut self, host: impl Into<String>) -> ClientOptions {
        self.host = host.into();
        self
    }

    /// Sets user name and password.
    pub fn credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> ClientOptions {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the user name only.
    pub fn username(mut self, username: impl Into<String>) -> ClientOptions {
        self.username = Some(username.into());
        self
    }

    /// Connects with TLS.
    pub fn tls(mut self, tls: ClientTls) -> ClientOptions {
        self.tls = Some(tls);
        self
    }

    /// Sets the time limit of one-shot clients.
    pub fn timeout(mut self, timeout: Duration) -> ClientOptions {
        self.timeout = timeout;
        self
    }

    /// The connection arguments for `mosquitto_pub`/`mosquitto_sub`, writing PEM text into
    /// `scratch`.
    pub(crate) fn args(&self, port: u16, scratch: &TempDir) -> Result<Vec<OsString>, BrokerError> {
        let mut args: Vec<OsString> = vec![
            "-h".into(),
            self.host.clone().into(),
            "-p".into(),
            port.to_string().into(),
        ];
        if let Some(user) = &self.username {
            args.extend(["-u".into(), user.into()]);
        }
        if let Some(password) = &self.password {
            args.extend(["-P".into(), password.into()]);
        }
        if let Some(tls) = &self.tls {
            let ca = tls.cafile.materialize(scratch, "client-ca")?;
            args.extend(["--cafile".into(), ca.into()]);
            if let Some(cert) = &tls.cert {
                let cert = cert.materialize(scratch, "client-cert")?;
                args.extend(["--cert".into(), cert.into()]);
            }
            if let Some(key) = &tls.key {
                let key = key.materialize(scratch, "client-key")?;
                args.extend(["--key".into(), key.into()]);
            }
            if tls.insecure {
                args.push("--insecure".into());
            }
        }
        Ok(args)
    }
}

/// TLS options of the command-line clients (`--cafile`, `--cert`, `--key`, `--insecure`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTls {
    /// The CA that signed the server certificate.
    pub cafile: PemFile,
    /// Client certificate, for mutual TLS.
    pub cert: Option<PemFile>,
    /// Client private key, for mutual TLS.
    pub key: Option<PemFile>,
    /// Skip the check that the server certificate names the host (`--insecure`).
    pub insecure: bool,
}

impl ClientTls {
    /// Trust `cafile`, no client certificate.
    pub fn new(cafile: PemFile) -> ClientTls {
        ClientTls {
            cafile,
            cert: None,
            key: None,
            insecure: false,
        }
    }

    /// Presents a client certificate and key.
    pub fn identity(mut self, cert: PemFile, key: PemFile) -> ClientTls {
        self.cert = Some(cert);
        self.key = Some(key);
        self
    }

    /// Sets `--insecure` (no host name check).
    pub fn insecure(mut self, on: bool) -> ClientTls {
        self.insecure = on;
        self
    }
}

/// Builds a `mosquitto_pub` command that sends `payload` once and exits.
pub(crate) fn publish_command(
    program: &Path,
    connection: Vec<OsString>,
    scratch: &TempDir,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
) -> Result<Command, BrokerError> {
    let mut command = Command::new(program);
    command
        .args(connection)
        .args(["-t", topic, "-q", &qos.to_string()]);
    if retain {
        command.arg("-r");
    }
    if payload.is_empty() {
        command.arg("-n");
    } else {
        // A file carries any bytes; an argument could not hold NUL.
        let file = scratch.unique_path("payload", "bin");
        fs::write(&file, payload)
            .map_err(|e| BrokerError::io(format!("writing {}", file.display()), e))?;
        command.arg("-f").arg(file);
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_is_an_error_with_the_install_hint() {
        let e = find_mosquitto_program("mosquitto-that-does-not-exist");
        match e {
            Err(e @ BrokerError::NotInstalled { .. }) => assert_eq!(
                e.to_string(),
                "mosquitto-that-does-not-exist not found: install it with \
                 `apt-get install -y mosquitto mosquitto-clients` (.ci/run does)"
            ),
            other => panic!("{other:?}"),
        }
        let mut command = Command::new("/nonexistent/mosquitto");
        assert!(matches!(
            spawn(&mut command, "mosquitto"),
            Err(BrokerError::NotInstalled { .. })
        ));
    }

    #[test]
    fn client_arguments() -> Result<(), BrokerError> {
        let scratch = TempDir::new("gateway-testkit-unit").map_err(|e| BrokerError::io("", e))?;
        let args = ClientOptions::new()
            .credentials("u", "p")
            .tls(
                ClientTls::new(PemFile::path("/ca.pem"))
                    .identity(PemFile::path("/c.pem"), PemFile::contents("KEY"))
                    .insecure(true),
            )
            .args(1883, &scratch)?;
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &args[..12],
            [
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-u",
                "u",
                "-P",
                "p",
                "--cafile",
                "/ca.pem",
                "--cert",
                "/c.pem"
            ]
        );
        assert_eq!(args[12], "--key");
        assert_eq!(fs::read_to_string(&args[13]).ok().as_deref(), Some("KEY"));
        assert_eq!(args[14], "--insecure");
        assert_eq!(args.len(), 15);
        Ok(())
    }

    #[test]
    fn bounded_run_reports_timeouts_and_failures() -> Result<(), BrokerError> {
        let scratch = TempDir::new("gateway-testkit-unit").map_err(|e| BrokerError::io("", e))?;
        let mut sleep = Command::new("sleep");
        sleep.arg("5");
        let started = Instant::now();
        let e = run_bounded(sleep, "sleep", &scratch, Duration::from_millis(100));
        assert!(
            matches!(e, Err(BrokerError::CommandTimeout { .. })),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut fail = Command::new("sh");
        fail.args(["-c", "echo oops >&2; exit 3"]);
        match run_checked(fail, "sh", &scratch, Duration::from_secs(5)) {
            Err(BrokerError::CommandFailed { output, .. }) => assert_eq!(output, "oops\n"),
            other => panic!("{other:?}"),
        }
        Ok(())
    }
}
