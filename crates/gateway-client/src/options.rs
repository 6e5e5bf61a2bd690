//! Where to connect and how: the settings every adapter takes.

use std::sync::Arc;

use gateway_proto::{Config, Credentials};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::tls::{TlsError, TlsOptions};

/// Where and how to connect. `Debug` never prints credentials or keys.
///
/// ```
/// use gateway_client::{ClientOptions, TlsOptions};
/// use gateway_proto::Credentials;
///
/// let plain = ClientOptions::new("127.0.0.1", 1883, Credentials::AccessToken("TOKEN".into()));
/// let mtls = ClientOptions::new("tb.example.com", 8883, Credentials::X509)
///     .tls(TlsOptions::with_ca_file("ca.pem").client_identity_files("gw.pem", "gw.key"));
/// assert!(!format!("{plain:?}").contains("TOKEN"));
/// # let _ = mtls;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Host name or IP address of ThingsBoard's MQTT transport.
    pub host: String,
    /// TCP port (ThingsBoard: 1883 plain, 8883 TLS).
    pub port: u16,
    /// TLS settings; `None` means plain TCP. A connection with TLS set never falls back to
    /// plain TCP.
    pub tls: Option<TlsOptions>,
    /// The protocol core's settings (credentials, MQTT version, role, timeouts, bounds).
    pub config: Config,
    /// Requests queued from client handles to the driver before senders wait. Default 1,024.
    pub command_capacity: usize,
    /// Events queued for the application before the driver waits for it. Default 1,024.
    pub event_capacity: usize,
    /// Size of the buffer each read from the transport fills. Default 64 KiB.
    pub read_buffer: usize,
    /// Acknowledgement coalescing under load: when at least three quarters of the in-flight
    /// window ([`Config::max_inflight`](gateway_proto::Config::max_inflight)) await their
    /// PUBACK, the adapter waits this long after handling a read before reading again, so
    /// one wake-up handles many acknowledgements (and sends the publishes they make room for
    /// in one write) instead of a few. Saves CPU per message at high rates with a large
    /// window, at the cost of up to this much extra latency for outcomes and downlinks while
    /// the window is that full. The wait ends early at the core's next deadline. `None`
    /// (the default) never waits. Honoured by every adapter.
    pub read_coalescing: Option<std::time::Duration>,
    /// Longest a write may make no progress before the transport counts as failed (then
    /// the core reconnects after its backoff). A peer that stops reading without closing,
    /// or a link that drops every packet, otherwise blocks the write until the kernel gives
    /// up (minutes), and with it every timer of the connection. Progress, not total time,
    /// is bounded: a large write over a slow link is fine while bytes move. Default 30 s;
    /// honoured by every adapter.
    pub write_stall_timeout: std::time::Duration,
    /// After the last close (`close`, or every client handle dropped), how long the adapter
    /// keeps reading, and discarding, what the server still sends until it closes its side.
    /// A socket closed while received bytes wait unread is reset by the kernel, and a reset
    /// throws away whatever the kernel had not sent yet: without this wait, the tail of what
    /// was written just before the DISCONNECT (QoS 0 messages whose outcome already said
    /// sent, the DISCONNECT itself) could be lost whenever the server was slower to read than
    /// the client to write. ThingsBoard and mosquitto close their side on DISCONNECT, so the
    /// wait usually lasts one round trip; this bounds it for a server that does not. Zero:
    /// close at once. Default 2 s; honoured by every adapter.
    pub close_linger: std::time::Duration,
}

impl ClientOptions {
    /// Connect to `host:port` with these credentials and the core's defaults (MQTT 5,
    /// gateway role).
    pub fn new(host: impl Into<String>, port: u16, credentials: Credentials) -> Self {
        Self::with_config(host, port, Config::new(credentials))
    }

    /// Connect to `host:port` with a complete core configuration.
    pub fn with_config(host: impl Into<String>, port: u16, config: Config) -> Self {
        Self {
            host: host.into(),
            port,
            tls: None,
            config,
            command_capacity: 1024,
            event_capacity: 1024,
            read_buffer: 64 * 1024,
            read_coalescing: None,
            write_stall_timeout: std::time::Duration::from_secs(30),
            close_linger: std::time::Duration::from_secs(2),
        }
    }

    /// Use TLS.
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `host:port`, as dialled.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The rustls configuration and the server name to verify, if TLS is on. Built once per
    /// connection, so bad PEM files fail before the first dial.
    pub fn tls_setup(&self) -> Result<Option<TlsSetup>, TlsError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        Ok(Some(TlsSetup {
            config: tls.client_config()?,
            server_name: tls
                .server_name_for(self.host.trim_start_matches('[').trim_end_matches(']'))?,
        }))
    }
}

/// A ready rustls client configuration plus the name the server's certificate must carry.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// Hand this to `tokio_rustls::TlsConnector`, `futures_rustls::TlsConnector` or
    /// `rustls::ClientConnection`.
    pub config: Arc<ClientConfig>,
    /// The server name for SNI and certificate verification.
    pub server_name: ServerName<'static>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_secrets() {
        let options = ClientOptions::new(
            "h",
            1,
            Credentials::Basic {
                username: Some("user-name".into()),
                password: Some("pass-WORD-1".into()),
            },
        )
        .tls(TlsOptions::with_ca_pem("ca").client_identity_pem("chain", "KEY-MATERIAL"));
        let text = format!("{options:?}");
        assert!(
            !text.contains("pass-WORD-1") && !text.contains("KEY-MATERIAL"),
            "{text}"
        );
        let token = format!(
            "{:?}",
            ClientOptions::new("h", 1, Credentials::AccessToken("TOK-123".into()))
        );
        assert!(!token.contains("TOK-123"), "{token}");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let options = ClientOptions::new("::1", 1883, Credentials::X509);
        assert_eq!(options.address(), "[::1]:1883");
        assert_eq!(
            ClientOptions::new("localhost", 8883, Credentials::X509).address(),
            "localhost:8883"
        );
    }
}
