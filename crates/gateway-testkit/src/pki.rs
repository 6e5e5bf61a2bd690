//! A throw-away public key infrastructure for TLS tests, generated with `rcgen` at test time.
//!
//! [`TestPki::generate`] creates a certificate authority and a server certificate for
//! `localhost` and `127.0.0.1` signed by it; [`TestPki::client`] issues client certificates
//! from the same CA. For negative tests there is [`TestPki::generate`] again (a second,
//! unrelated CA: its certificates are trusted by nobody who trusts the first),
//! [`TestPki::self_signed_client`] (a client certificate no CA issued) and
//! [`TestPki::expired_client`] (issued by the CA, validity over long ago).
//!
//! Everything is PEM text, ready for rustls (`rustls-pki-types`' `PemObject`) or for a broker
//! such as mosquitto after [`TestPki::write_to`]. Keys are ECDSA P-256 (rcgen's default);
//! [`TestPki::generate_with`] makes a CA with another key type ([`CaKey`]: P-384, Ed25519, or
//! RSA from one fixed test key, since *ring* cannot generate RSA keys), so every signature the
//! CA makes uses that algorithm.
//! Certificates are valid from 1 January 2000 to 1 January 2100 unless stated otherwise.
//!
//! ```
//! use gateway_testkit::pki::TestPki;
//!
//! let pki = TestPki::generate()?;
//! let device = pki.client("sensor-1")?;
//! assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(device.key_pem.contains("PRIVATE KEY"));
//! # Ok::<(), gateway_testkit::pki::PkiError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519,
};

/// Host name the server certificate is issued for (a DNS subject alternative name).
pub const SERVER_DNS_NAME: &str = "localhost";
/// IP address the server certificate is issued for (an IP subject alternative name).
pub const SERVER_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Why a certificate could not be generated.
#[derive(Debug)]
#[non_exhaustive]
pub enum PkiError {
    /// `rcgen` refused the parameters or failed to sign.
    Rcgen(rcgen::Error),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rcgen(e) => write!(f, "certificate generation failed: {e}"),
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rcgen(e) => Some(e),
        }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Rcgen(e)
    }
}

/// The key of a CA made by [`TestPki::generate_with`], and so the signature algorithm of every
/// certificate it issues (the server's and clients' own keys stay ECDSA P-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaKey {
    /// ECDSA P-256, signatures ecdsa-with-SHA256 (rcgen's default; [`TestPki::generate`]).
    EcdsaP256,
    /// ECDSA P-384, signatures ecdsa-with-SHA384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048, signatures sha256WithRSAEncryption. *ring* cannot generate RSA keys, so this
    /// is one fixed throw-away test key committed with the crate: every RSA CA has the same
    /// key, so two RSA CAs are *not* unrelated (use another key type for "foreign CA" tests).
    Rsa2048,
}

/// The fixed RSA test key behind [`CaKey::Rsa2048`] (PKCS#8, made with `openssl genpkey`);
/// it protects nothing.
const TEST_RSA_CA_KEY: &str = include_str!("test_rsa_ca_key.pem");

impl CaKey {
    fn key_pair(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            Self::EcdsaP256 => KeyPair::generate(),
            Self::EcdsaP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
            Self::Ed25519 => KeyPair::generate_for(&PKCS_ED25519),
            Self::Rsa2048 => KeyPair::from_pem(TEST_RSA_CA_KEY),
        }
    }
}

/// A certificate with its private key, as PEM (plus the certificate's DER bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate, one PEM block.
    pub cert_pem: String,
    /// The certificate's DER encoding (what a TLS peer presents on the wire).
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// The server's certificate and key.
pub type ServerCert = CertifiedKey;
/// A client's certificate and key.
pub type ClientCert = CertifiedKey;

/// Where [`TestPki::write_to`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// `ca.pem`: the CA certificate (a client's trust anchor; a broker's `cafile`).
    pub ca: PathBuf,
    /// `server.pem`: the server certificate (a broker's `certfile`).
    pub server_cert: PathBuf,
    /// `server.key`: the server's private key (a broker's `keyfile`), mode 0600 on Unix.
    pub server_key: PathBuf,
}

/// Where [`CertifiedKey::write_to`] put a certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `<name>.pem`: the certificate.
    pub cert: PathBuf,
    /// `<name>.key`: the private key, mode 0600 on Unix.
    pub key: PathBuf,
}

/// A certificate authority plus a server certificate it signed. Each call of
/// [`TestPki::generate`] makes a new CA with a new key, unrelated to every other one.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    server: ServerCert,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_pem", &self.ca_pem)
            .field("server", &self.server.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Validity used for every certificate unless a helper says otherwise.
fn long_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tb-gateway-rs tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parameters of an end-entity (non-CA) client certificate.
fn client_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    long_validity(&mut params);
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

impl TestPki {
    /// A new CA (`CN=tb-gateway-rs test CA`) and a server certificate for `localhost` and
    /// `127.0.0.1` signed by it.
    pub fn generate() -> Result<Self, PkiError> {
        Self::generate_named("tb-gateway-rs test CA")
    }

    /// Like [`TestPki::generate`] with the CA's common name chosen by the caller (handy to
    /// tell two unrelated CAs apart in a failing test's output).
    pub fn generate_named(ca_common_name: &str) -> Result<Self, PkiError> {
        Self::generate_with(ca_common_name, CaKey::EcdsaP256)
    }

    /// Like [`TestPki::generate_named`] with a CA key of type `ca_key`: the CA certificate,
    /// the server certificate and every client certificate are signed with that algorithm.
    pub fn generate_with(ca_common_name: &str, ca_key: CaKey) -> Result<Self, PkiError> {
        let mut ca_params = CertificateParams::default();
        long_validity(&mut ca_params);
        ca_params.distinguished_name = dn(ca_common_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key.key_pair()?)?;
        let ca_pem = ca.pem();

        let mut server_params = CertificateParams::default();
        long_validity(&mut server_params);
        server_params.distinguished_name = dn(SERVER_DNS_NAME);
        server_params.subject_alt_names = vec![
            SanType::DnsName(SERVER_DNS_NAME.try_into()?),
            SanType::IpAddress(SERVER_IP),
        ];
        server_params.is_ca = IsCa::ExplicitNoCa;
        server_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;
        let server = CertifiedKey {
            cert_pem: server_cert.pem(),
            cert_der: server_cert.der().to_vec(),
            key_pem: server_key.serialize_pem(),
        };
        Ok(Self { ca, ca_pem, server })
    }

    /// The CA certificate (PEM): what clients trust, and what a server verifying client
    /// certificates uses as its root.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate's DER encoding.
    pub fn ca_der(&self) -> &[u8] {
        self.ca.der()
    }

    /// The server certificate (for `localhost` and `127.0.0.1`) and its key.
    pub fn server(&self) -> &ServerCert {
        &self.server
    }

    /// A client certificate with subject `CN=<common_name>`, issued by this CA, for TLS client
    /// authentication.
    pub fn client(&self, common_name: &str) -> Result<ClientCert, PkiError> {
        self.issue(client_params(common_name))
    }

    /// A client certificate issued by this CA whose validity ended on 1 January 2001.
    pub fn expired_client(&self, common_name: &str) -> Result<ClientCert, PkiError> {
        let mut params = client_params(common_name);
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        self.issue(params)
    }

    /// A self-signed client certificate (its own issuer, not a CA): no CA vouches for it.
    /// ThingsBoard accepts such certificates when they are registered as a device's X.509
    /// credentials; a server that verifies clients against a CA rejects them.
    pub fn self_signed_client(common_name: &str) -> Result<ClientCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = client_params(common_name).self_signed(&key)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The chain a client holding `leaf` (issued by this CA) presents for X.509
    /// certificate-chain provisioning: the leaf's DER, then this CA's DER.
    pub fn chain_der(&self, leaf: &CertifiedKey) -> Vec<Vec<u8>> {
        vec![leaf.cert_der.clone(), self.ca_der().to_vec()]
    }

    fn issue(&self, params: CertificateParams) -> Result<ClientCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir` (which must exist) and returns
    /// their paths. Existing files are replaced.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<PkiFiles> {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem)?;
        let server = self.server.write_to(dir, "server")?;
        Ok(PkiFiles {
            ca,
            server_cert: server.cert,
            server_key: server.key,
        })
    }
}

impl CertifiedKey {
    /// Writes `<name>.pem` (certificate) and `<name>.key` (private key, mode 0600 on Unix)
    /// into `dir` and returns their paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> std::io::Result<KeyFiles> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok(KeyFiles { cert, key })
    }

    /// The certificate followed by `issuer_pem`: a chain for a peer to present when its
    /// verifier only knows the root (not needed for chains one level deep).
    pub fn chain_pem(&self, issuer_pem: &str) -> String {
        format!("{}{}", self.cert_pem, issuer_pem)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` only applies to new files; tighten an existing one too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn one_block(pem: &str, label: &str) {
        assert!(
            pem.starts_with(&format!("-----BEGIN {label}-----")),
            "{pem}"
        );
        assert_eq!(pem.matches("-----BEGIN").count(), 1, "{pem}");
        assert!(pem.trim_end().ends_with(&format!("-----END {label}-----")));
    }

    #[test]
    fn generates_pem_ca_server_and_clients() {
        let pki = TestPki::generate().unwrap();
        one_block(pki.ca_pem(), "CERTIFICATE");
        one_block(&pki.server().cert_pem, "CERTIFICATE");
        one_block(&pki.server().key_pem, "PRIVATE KEY");
        let client = pki.client("device-1").unwrap();
        one_block(&client.cert_pem, "CERTIFICATE");
        one_block(&client.key_pem, "PRIVATE KEY");
        assert!(!client.cert_der.is_empty());
        assert_ne!(client.cert_der, pki.server().cert_der);
    }

    #[test]
    fn every_generation_is_a_new_unrelated_ca() {
        let a = TestPki::generate().unwrap();
        let b = TestPki::generate().unwrap();
        assert_ne!(a.ca_pem(), b.ca_pem());
        assert_ne!(a.server().key_pem, b.server().key_pem);
        let named = TestPki::generate_named("Other CA").unwrap();
        assert_ne!(named.ca_der(), a.ca_der());
    }

    #[test]
    fn clients_differ_by_key_and_subject() {
        let pki = TestPki::generate().unwrap();
        let one = pki.client("one").unwrap();
        let two = pki.client("one").unwrap();
        assert_ne!(one.cert_der, two.cert_der);
        assert_ne!(one.key_pem, two.key_pem);
        let own = TestPki::self_signed_client("rogue").unwrap();
        assert_ne!(own.cert_der, one.cert_der);
        let old = pki.expired_client("old").unwrap();
        assert_ne!(old.cert_der, one.cert_der);
    }

    #[test]
    fn der_matches_pem_body() {
        // The PEM body is the base64 of the DER bytes; check the first line's worth.
        let pki = TestPki::generate().unwrap();
        let c = pki.client("x").unwrap();
        let body: String = c
            .cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(body.len() >= c.cert_der.len() * 4 / 3);
        // DER of a certificate starts with a SEQUENCE: 0x30 → base64 "M".
        assert!(body.starts_with('M'));
        assert_eq!(c.cert_der[0], 0x30);
    }

    #[test]
    fn write_to_writes_the_files_a_broker_needs() {
        let dir = std::env::temp_dir().join(format!("tb-pki-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = TestPki::generate().unwrap();
        let files = pki.write_to(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), pki.ca_pem());
        assert_eq!(
            std::fs::read_to_string(&files.server_cert).unwrap(),
            pki.server().cert_pem
        );
        assert_eq!(
            std::fs::read_to_string(&files.server_key).unwrap(),
            pki.server().key_pem
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.server_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let client = pki.client("c").unwrap().write_to(&dir, "client").unwrap();
        assert!(client.cert.ends_with("client.pem"));
        assert!(client.key.ends_with("client.key"));
        // Writing again replaces the files.
        pki.write_to(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chain_der_is_leaf_then_ca() {
        let pki = TestPki::generate().unwrap();
        let leaf = pki.client("dev").unwrap();
        let chain = pki.chain_der(&leaf);
        assert_eq!(chain, vec![leaf.cert_der.clone(), pki.ca_der().to_vec()]);
    }

    #[test]
    fn chain_pem_concatenates() {
        let pki = TestPki::generate().unwrap();
        let c = pki.client("c").unwrap();
        let chain = c.chain_pem(pki.ca_pem());
        assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    }

    #[test]
    fn ca_key_types_sign_with_their_algorithm() {
        // The DER of each signature AlgorithmIdentifier's OID as it appears in the certificate.
        let cases: [(CaKey, &[u8]); 4] = [
            (
                CaKey::EcdsaP256,
                &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02],
            ),
            (
                CaKey::EcdsaP384,
                &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03],
            ),
            (CaKey::Ed25519, &[0x06, 0x03, 0x2B, 0x65, 0x70]),
            (
                CaKey::Rsa2048,
                &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B],
            ),
        ];
        for (key, oid) in cases {
            let pki = TestPki::generate_with("typed CA", key).unwrap();
            let leaf = pki.client("typed").unwrap();
            for der in [pki.ca_der(), &leaf.cert_der, &pki.server().cert_der] {
                assert!(der.windows(oid.len()).any(|w| w == oid), "{key:?}");
            }
            assert_eq!(pki.chain_der(&leaf)[1], pki.ca_der());
        }
        // Fresh keys except RSA (one fixed key).
        let a = TestPki::generate_with("a", CaKey::Ed25519).unwrap();
        let b = TestPki::generate_with("b", CaKey::Ed25519).unwrap();
        assert_ne!(a.ca_der(), b.ca_der());
    }
}
