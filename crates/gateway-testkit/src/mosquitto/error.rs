//! The harness's error type.

use std::fmt;
use std::io;
use std::time::Duration;

/// The install hint for the mosquitto programs.
pub(crate) const MOSQUITTO_HINT: &str =
    "install it with `apt-get install -y mosquitto mosquitto-clients` (.ci/run does)";

/// Why the broker harness or one of its clients failed.
///
/// Errors that involve the broker carry the tail of its log; errors from client programs
/// carry what they printed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BrokerError {
    /// A program is not installed (never a silent skip: the tests need it).
    NotInstalled {
        /// The program that was looked for, e.g. `mosquitto`.
        program: String,
        /// How to install it.
        hint: &'static str,
    },
    /// A file or process operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The configuration cannot be expressed (a newline in a value, a colon in a user name, ...).
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The broker exited while starting.
    Exited {
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The broker did not accept connections in time.
    StartTimeout {
        /// The port it was to listen on.
        port: u16,
        /// How long the harness waited.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The port stayed taken by another process.
    PortUnavailable {
        /// The last port tried.
        port: u16,
        /// How many times the harness tried.
        attempts: u32,
        /// The last lines of the broker's log.
        log_tail: String,
    },
    /// The broker did not exit in time after SIGTERM; it was then killed.
    StopTimeout {
        /// How long the harness waited.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The broker is not running (stopped or killed and not restarted).
    NotRunning,
    /// A helper program (`mosquitto_pub`, `mosquitto_passwd`, `kill`) exited unsuccessfully.
    CommandFailed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A helper program did not finish in time; it was killed.
    CommandTimeout {
        /// The program.
        program: String,
        /// How long the harness waited.
        timeout: Duration,
        /// What it printed.
        output: String,
    },
    /// A [`CountingSubscriber`](super::CountingSubscriber) wait ran out of time.
    WaitTimeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
        /// Messages received so far (probes not counted).
        received: usize,
        /// The last lines of the subscriber's error output.
        log_tail: String,
    },
}

impl BrokerError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> BrokerError {
        BrokerError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> BrokerError {
        BrokerError::InvalidConfig {
            reason: reason.into(),
        }
    }
}

fn write_tail(f: &mut fmt::Formatter<'_>, what: &str, tail: &str) -> fmt::Result {
    if tail.trim().is_empty() {
        write!(f, " ({what} is empty)")
    } else {
        write!(f, "\n--- last lines of {what} ---\n{}", tail.trim_end())
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::NotInstalled { program, hint } => write!(f, "{program} not found: {hint}"),
            BrokerError::Io { context, source } => write!(f, "{context}: {source}"),
            BrokerError::InvalidConfig { reason } => {
                write!(f, "invalid mosquitto configuration: {reason}")
            }
            BrokerError::Exited { status, log_tail } => {
                write!(f, "mosquitto exited while starting ({status})")?;
                write_tail(f, "the mosquitto log", log_tail)
            }
            BrokerError::StartTimeout {
                port,
                timeout,
                log_tail,
            } => {
                write!(
                    f,
                    "mosquitto did not accept connections on 127.0.0.1:{port} within {timeout:?}"
                )?;
                write_tail(f, "the mosquitto log", log_tail)
            }
            BrokerError::PortUnavailable {
                port,
                attempts,
                log_tail,
            } => {
                write!(
                    f,
                    "mosquitto could not listen (last port {port}, {attempts} attempts): address in use"
                )?;
                write_tail(f, "the mosquitto log", log_tail)
            }
            BrokerError::StopTimeout { timeout, log_tail } => {
                write!(
                    f,
                    "mosquitto did not exit within {timeout:?} after SIGTERM (killed)"
                )?;
                write_tail(f, "the mosquitto log", log_tail)
            }
            BrokerError::NotRunning => write!(f, "mosquitto is not running"),
            BrokerError::CommandFailed {
                program,
                status,
                output,
            } => {
                write!(f, "{program} failed ({status})")?;
                write_tail(f, "its output", output)
            }
            BrokerError::CommandTimeout {
                program,
                timeout,
                output,
            } => {
                write!(f, "{program} did not finish within {timeout:?} (killed)")?;
                write_tail(f, "its output", output)
            }
            BrokerError::WaitTimeout {
                what,
                timeout,
                received,
                log_tail,
            } => {
                write!(
                    f,
                    "subscriber: no {what} within {timeout:?} ({received} messages received)"
                )?;
                write_tail(f, "mosquitto_sub's error output", log_tail)
            }
        }
    }
}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BrokerError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_installed_names_the_fix() {
        let e = BrokerError::NotInstalled {
            program: "mosquitto".into(),
            hint: MOSQUITTO_HINT,
        };
        assert_eq!(
            e.to_string(),
            "mosquitto not found: install it with `apt-get install -y mosquitto mosquitto-clients` (.ci/run does)"
        );
    }

    #[test]
    fn log_tails_are_shown() {
        let e = BrokerError::Exited {
            status: "exit status: 1".into(),
            log_tail: "Error: Unable to open pwfile\n".into(),
        };
        let text = e.to_string();
        assert!(text.contains("exit status: 1"), "{text}");
        assert!(text.ends_with("Error: Unable to open pwfile"), "{text}");
    }
}
