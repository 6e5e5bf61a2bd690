//! TLS for the runner's second listener, the counterpart of ThingsBoard's MQTT SSL port (8883).
//!
//! rustls with the *ring* provider. ThingsBoard's listener (`MqttSslHandlerProvider`) asks every
//! client for a certificate but does not require one (`setWantClientAuth(true)`), so access-token
//! and MQTT-basic clients work over TLS unchanged. Its trust manager does not check the client's
//! chain against a CA. `ThingsboardMqttX509TrustManager.checkClientTrusted` first runs
//! `validateCertificateChain`: when the chain has more than one certificate, each must verify
//! with the next one's public key (`chain[i].verify(chain[i + 1].getPublicKey())`), and any
//! failure throws a `CertificateException`, which fails the handshake (JSSE: fatal
//! `certificate_unknown` alert). A single certificate is not checked, nor are validity, names
//! or CA flags. Then it looks the chain up (`validateOrCreateDeviceX509Certificate`) and merely
//! logs an unknown one; the device is chosen at CONNECT by the leaf certificate's hash (see
//! [`crate::x509`]). The runner hands the whole presented chain to the session
//! ([`crate::PeerIdentity`]), which runs that lookup (X.509 chain provisioning,
//! [`crate::X509ChainProfile`]).
//! [`ClientAuth::AnyCertificate`] reproduces that, the link check included
//! ([`crate::x509::verify_issued_by`] with the *ring* provider's signature algorithms);
//! [`ClientAuth::VerifiedBy`] verifies client certificates against a CA like a broker
//! configured with a CA file would; [`ClientAuth::Off`] never asks.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, UnixTime};

use crate::error::TlsError;
use crate::x509::{self, LinkError};

/// Which client certificates the TLS listener asks for and accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// No client certificate is requested: clients authenticate by their CONNECT only.
    Off,
    /// ThingsBoard's behaviour: a certificate is requested but optional, and no CA is
    /// consulted. A presented chain of two or more certificates must link (each signed by the
    /// next one's key) or the handshake fails with a `certificate_unknown` alert; otherwise
    /// any certificate is accepted at the TLS level, expired or self-signed alike (the client
    /// must still prove it holds the key). At CONNECT a known certificate authenticates its
    /// device and an unknown one is refused (CONNACK 5 / 0x87).
    AnyCertificate,
    /// A certificate is requested but optional; one that is presented must chain to this CA
    /// (PEM, one or more certificates) and be within its validity, or the handshake fails.
    VerifiedBy {
        /// Trusted root(s) for client certificates, PEM.
        ca_pem: String,
    },
}

/// The TLS listener's settings: the server's certificate chain and key, and client
/// authentication.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The server certificate first, then any intermediates, PEM.
    pub cert_chain_pem: String,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_pem: String,
    /// Client certificates.
    pub client_auth: ClientAuth,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("TlsConfig")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// A server certificate chain and key (PEM), with ThingsBoard's client authentication
    /// ([`ClientAuth::AnyCertificate`]).
    pub fn new(cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            client_auth: ClientAuth::AnyCertificate,
        }
    }

    /// Sets client authentication.
    pub fn with_client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Client certificates must chain to `ca_pem` ([`ClientAuth::VerifiedBy`]).
    pub fn with_client_ca(self, ca_pem: impl Into<String>) -> Self {
        self.with_client_auth(ClientAuth::VerifiedBy {
            ca_pem: ca_pem.into(),
        })
    }

    /// Builds the rustls server configuration (ring provider, TLS 1.2 and 1.3).
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::CertificatePem(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::KeyPem(e.to_string()))?;
        let verifier: Arc<dyn ClientCertVerifier> = match &self.client_auth {
            ClientAuth::Off => WebPkiClientVerifier::no_client_auth(),
            ClientAuth::AnyCertificate => Arc::new(AnyClientCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
            ClientAuth::VerifiedBy { ca_pem } => {
                let mut roots = RootCertStore::empty();
                let mut any = false;
                for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                    let cert = cert.map_err(|e| TlsError::ClientCa(e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                    any = true;
                }
                if !any {
                    return Err(TlsError::ClientCa("no certificate in the PEM".to_owned()));
                }
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?
            }
        };
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// Requests a client certificate (optional), checks the links of a presented chain
/// (ThingsBoard's `validateCertificateChain`) and the handshake signature, i.e. that the client
/// holds the certificate's private key; nothing else.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// ThingsBoard's `validateCertificateChain`: with more than one certificate, each must be
    /// signed by the next one's public key; a single certificate is not checked. No trust
    /// anchor, no validity, no CA flag.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain_links(end_entity, intermediates, self.algorithms.all)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks every link of the presented chain (leaf, then the intermediates in the order sent):
/// certificate `i` must be signed by certificate `i + 1`'s key. A broken link fails the
/// handshake. JSSE answers a `CertificateException` from the trust manager with a fatal
/// `certificate_unknown` alert (`CertificateMessage`: `fatal(Alert.CERTIFICATE_UNKNOWN, ce)`),
/// which is the alert rustls sends for [`CertificateError::Other`].
fn verify_chain_links(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    algorithms: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), rustls::Error> {
    let mut child: &[u8] = end_entity.as_ref();
    for (position, issuer) in intermediates.iter().enumerate() {
        x509::verify_issued_by(child, issuer.as_ref(), algorithms).map_err(|reason| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                BrokenChain { position, reason },
            ))))
        })?;
        child = issuer.as_ref();
    }
    Ok(())
}

/// ThingsBoard's "Invalid Chain of X509 Certificates": certificate `position` (0 = the leaf)
/// is not signed by the certificate after it.
#[derive(Debug)]
struct BrokenChain {
    position: usize,
    reason: LinkError,
}

impl std::fmt::Display for BrokenChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid chain of X509 certificates: certificate {} is not signed by certificate {}: {}",
            self.position,
            self.position + 1,
            self.reason
        )
    }
}

impl std::error::Error for BrokenChain {}
