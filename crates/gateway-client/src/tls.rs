//! TLS settings for every adapter: which servers to trust and, for mutual TLS (ThingsBoard's
//! X.509 device authentication), which certificate to present.
//!
//! The adapters only wrap a socket with the `rustls` configuration built here, so the three
//! of them verify servers the same way. The crypto provider is always *ring*, chosen
//! explicitly: rustls would otherwise pick one from crate features, and panic when both of
//! its providers end up in a dependency graph. Verification is never turned off and a TLS
//! failure never falls back to plain TCP.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// Which certificate authorities a client trusts for the server's certificate.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustAnchors {
    /// The operating system's trust store (what a public ThingsBoard Cloud or a server with a
    /// certificate from a public CA needs).
    System,
    /// The CA certificates in this PEM text (one or more `CERTIFICATE` blocks): a private CA.
    Pem(Vec<u8>),
    /// The CA certificates in this PEM file.
    PemFile(PathBuf),
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("System"),
            Self::Pem(pem) => write!(f, "Pem({} bytes)", pem.len()),
            Self::PemFile(path) => f.debug_tuple("PemFile").field(path).finish(),
        }
    }
}

/// The client certificate chain and private key for mutual TLS.
///
/// `Debug` shows where they come from, never the key.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientIdentity {
    /// PEM text: the certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or
    /// SEC1).
    Pem {
        /// Certificate chain, leaf first.
        chain: Vec<u8>,
        /// Private key.
        key: Vec<u8>,
    },
    /// PEM files with the same contents.
    PemFiles {
        /// Certificate chain file, leaf first.
        chain: PathBuf,
        /// Private key file.
        key: PathBuf,
    },
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { chain, .. } => {
                write!(f, "Pem {{ chain: {} bytes, key: <redacted> }}", chain.len())
            }
            Self::PemFiles { chain, key } => f
                .debug_struct("PemFiles")
                .field("chain", chain)
                .field("key", key)
                .finish(),
        }
    }
}

/// How to secure a connection with TLS.
///
/// ```
/// use gateway_client::TlsOptions;
///
/// // A private CA and a device certificate (ThingsBoard X.509 authentication):
/// let tls = TlsOptions::with_ca_file("ca.pem").client_identity_files("device.pem", "device.key");
/// assert!(format!("{tls:?}").contains("device.key")); // paths are shown, keys never
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Who may sign the server's certificate. Default: the system trust store.
    pub trust: TrustAnchors,
    /// A client certificate for mutual TLS, if any.
    pub identity: Option<ClientIdentity>,
    /// The name the server's certificate must carry. Default: the host the client dials
    /// (a DNS name or an IP address).
    pub server_name: Option<String>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self::system_roots()
    }
}

impl TlsOptions {
    /// Trust the operating system's certificate store.
    pub fn system_roots() -> Self {
        Self {
            trust: TrustAnchors::System,
            identity: None,
            server_name: None,
        }
    }

    /// Trust only the CAs in this PEM text.
    pub fn with_ca_pem(pem: impl Into<Vec<u8>>) -> Self {
        Self {
            trust: TrustAnchors::Pem(pem.into()),
            ..Self::system_roots()
        }
    }

    /// Trust only the CAs in this PEM file.
    pub fn with_ca_file(path: impl Into<PathBuf>) -> Self {
        Self {
            trust: TrustAnchors::PemFile(path.into()),
            ..Self::system_roots()
        }
    }

    /// Present this certificate chain and key (PEM text).
    #[must_use]
    pub fn client_identity_pem(
        mut self,
        chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some(ClientIdentity::Pem {
            chain: chain.into(),
            key: key.into(),
        });
        self
    }

    /// Present the certificate chain and key from these PEM files.
    #[must_use]
    pub fn client_identity_files(
        mut self,
        chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.identity = Some(ClientIdentity::PemFiles {
            chain: chain.into(),
            key: key.into(),
        });
        self
    }

    /// Check the server's certificate against this name instead of the dialled host.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Builds the rustls client configuration (ring provider, TLS 1.2 and 1.3, safe
    /// defaults). Reads the PEM files now, so a missing or bad file is reported before any
    /// connection is made.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = self.root_store()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = load_identity(identity)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(TlsError::Config)?
            }
        };
        Ok(Arc::new(config))
    }

    /// The name to verify the server's certificate against when dialling `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::InvalidServerName(name.to_owned()))
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        let certs = match &self.trust {
            TrustAnchors::System => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    let detail = found
                        .errors
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "the system trust store is empty".to_owned());
                    return Err(TlsError::SystemRoots(detail));
                }
                // Unparsable entries in a system store are skipped, as browsers do.
                let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
                return Ok(roots);
            }
            TrustAnchors::Pem(pem) => {
                certificates_from_pem(pem, PemSource::Text("CA certificates"))?
            }
            TrustAnchors::PemFile(path) => certificates_from_file(path)?,
        };
        for cert in certs {
            roots.add(cert).map_err(TlsError::Config)?;
        }
        Ok(roots)
    }
}

fn load_identity(
    identity: &ClientIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match identity {
        ClientIdentity::Pem { chain, key } => {
            let chain = certificates_from_pem(chain, PemSource::Text("client certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
                source: "client key".to_owned(),
                detail: e.to_string(),
            })?;
            Ok((chain, key))
        }
        ClientIdentity::PemFiles { chain, key } => {
            let chain = certificates_from_file(chain)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
                source: key.display().to_string(),
                detail: e.to_string(),
            })?;
            Ok((chain, key))
        }
    }
}

enum PemSource<'a> {
    Text(&'a str),
    File(&'a Path),
}

impl PemSource<'_> {
    fn describe(&self) -> String {
        match self {
            Self::Text(what) => (*what).to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

fn certificates_from_pem(
    pem: &[u8],
    source: PemSource<'_>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            source: source.describe(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates(source.describe()));
    }
    Ok(certs)
}

fn certificates_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Pem {
        source: path.display().to_string(),
        detail: e.to_string(),
    })?;
    certificates_from_pem(&pem, PemSource::File(path))
}

/// Why TLS could not be set up or the handshake failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file or text could not be read or parsed.
    Pem {
        /// The file, or what the text was.
        source: String,
        /// What went wrong.
        detail: String,
    },
    /// The PEM input holds no certificate.
    NoCertificates(String),
    /// The system trust store could not be loaded.
    SystemRoots(String),
    /// The server name is neither a DNS name nor an IP address.
    InvalidServerName(String),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    Config(rustls::Error),
    /// The handshake failed: an untrusted or mismatching server certificate, a client
    /// certificate the server refused, no common protocol version, ...
    Handshake(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { source, detail } => write!(f, "cannot read PEM from {source}: {detail}"),
            Self::NoCertificates(source) => write!(f, "no certificate in {source}"),
            Self::SystemRoots(detail) => write!(f, "cannot load the system trust store: {detail}"),
            Self::InvalidServerName(name) => write!(f, "invalid TLS server name {name:?}"),
            Self::Config(e) => write!(f, "invalid TLS configuration: {e}"),
            Self::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) | Self::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

/// Tells a TLS failure apart from a plain I/O failure in an error returned by tokio-rustls,
/// futures-rustls or a rustls stream, which wrap `rustls::Error` in `std::io::Error`.
pub fn handshake_error(error: &std::io::Error) -> Option<TlsError> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|e| TlsError::Handshake(e.clone()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn debug_never_shows_key_material() {
        let tls = TlsOptions::with_ca_pem("ca").client_identity_pem("CHAIN", "SECRET-KEY");
        let text = format!("{tls:?}");
        assert!(!text.contains("SECRET-KEY"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }

    #[test]
    fn bad_pem_is_a_typed_error() {
        let err = TlsOptions::with_ca_pem("not a certificate")
            .client_config()
            .unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates(_)), "{err}");
        let err = TlsOptions::with_ca_file("/nonexistent/ca.pem")
            .client_config()
            .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }

    #[test]
    fn server_name_defaults_to_the_host_and_rejects_garbage() {
        let tls = TlsOptions::system_roots();
        assert!(tls.server_name_for("127.0.0.1").is_ok());
        assert!(tls.server_name_for("example.com").is_ok());
        assert!(matches!(
            tls.server_name_for("bad name!"),
            Err(TlsError::InvalidServerName(_))
        ));
        let tls = tls.server_name("localhost");
        assert_eq!(
            tls.server_name_for("10.0.0.1").unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
    }
}
