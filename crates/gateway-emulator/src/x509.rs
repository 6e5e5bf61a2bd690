//! X.509 device credentials as ThingsBoard stores and looks them up.
//!
//! ThingsBoard keeps an `X509_CERTIFICATE` credential as text: the certificate's base64 DER with
//! the PEM markers and line breaks removed (`EncryptionUtil.certTrimNewLines`, applied by
//! `DeviceCredentialsServiceImpl.formatCertData`). That text is the `credentialsValue`; its
//! `credentialsId` is the lower-case hex SHA3-256 of the text's bytes
//! (`EncryptionUtil.getSha3Hash`). On an MQTT CONNECT over TLS the transport takes the client's
//! leaf certificate, turns its DER into the same text (`SslUtil.getCertificateString`: base64
//! of `getEncoded()`, trimmed), hashes it and looks the device up by that id
//! (`MqttTransportHandler.processX509CertConnect`, `ValidateDeviceX509CertRequestMsg`).
//!
//! Two certificates therefore match exactly when their texts are equal, which is how the
//! emulator compares them; [`credentials_id`] gives the id ThingsBoard would show.
//!
//! [`validity`] reads a certificate's validity period: ThingsBoard calls `checkValidity()` on
//! the client certificate before the lookup (unless
//! `transport.mqtt.ssl.skip_validity_check_for_client_cert`).
//!
//! [`verify_issued_by`] is the chain-link check of ThingsBoard's MQTT trust manager
//! (`validateCertificateChain`: `chain[i].verify(chain[i + 1].getPublicKey())`), built on
//! [`certificate_parts`] and a `rustls_pki_types::SignatureVerificationAlgorithm` list; the TLS
//! listener runs it on every presented chain of two or more certificates.

use sha3::{Digest, Sha3_256};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The `credentialsValue` ThingsBoard stores for a certificate given as PEM (or as bare
/// base64): the PEM markers and every `\n` / `\r` removed, nothing else changed.
pub fn credentials_value_from_pem(pem: &str) -> String {
    pem.replace(BEGIN, "")
        .replace(END, "")
        .replace(['\n', '\r'], "")
}

/// The `credentialsValue` of a certificate given as DER: its standard base64 (with padding),
/// which is what the transport derives from the certificate a TLS client presented.
pub fn credentials_value_from_der(der: &[u8]) -> String {
    let mut out = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(BASE64[((n >> shift) & 0x3F) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// The `credentialsId` of a stored `credentialsValue`: lower-case hex SHA3-256 of its bytes
/// (ThingsBoard trims the markers and line breaks again first, which is a no-op for a value
/// this module produced).
pub fn credentials_id(credentials_value: &str) -> String {
    let trimmed = credentials_value_from_pem(credentials_value);
    let digest = Sha3_256::digest(trimmed.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0F)]));
    }
    hex
}

/// A certificate's validity period in milliseconds since the Unix epoch (`notBefore`,
/// `notAfter`), or `None` if the DER is not a certificate this reader understands.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (validity, _) = read_tlv(from_validity(tbs_contents(der)?)?, 0x30)?;
    let (not_before, rest) = read_time(validity)?;
    let (not_after, _) = read_time(rest)?;
    Some((not_before, not_after))
}

/// The text of the first certificate in `pem` as ThingsBoard keys an `X509_CERTIFICATE_CHAIN`
/// device profile by it (`DeviceProfileServiceImpl.formatDeviceProfileCertificate`: the
/// profile's `provisionDeviceKey` is the SHA3 of the first certificate of the uploaded PEM,
/// trimmed like a credential). Bare base64 without PEM markers is taken whole. `None` if
/// nothing is left.
pub fn first_certificate_value(pem: &str) -> Option<String> {
    let block = match pem.find(BEGIN) {
        Some(start) => {
            let body = pem.get(start + BEGIN.len()..)?;
            match body.find(END) {
                Some(end) => body.get(..end)?,
                None => body,
            }
        }
        None => pem,
    };
    let value = credentials_value_from_pem(block);
    (!value.trim().is_empty()).then_some(value)
}

/// The subject common name of a certificate (DER) as ThingsBoard reads it for X.509
/// certificate-chain provisioning (`SslUtil.parseCommonName`): BouncyCastle's
/// `X500Name.getRDNs(BCStyle.CN)[0].getFirst()` (the first RDN holding a CN attribute, then the
/// *first* attribute of that RDN, which in a multi-valued RDN may be another type), printed by
/// `IETFUtils.valueToString` (RFC 4514-style escaping; a value that is not a string type, or
/// is a UniversalString, as `#` and the hex of its DER).
///
/// `None` when the DER is not a certificate this bounded reader understands or the subject
/// has no CN: ThingsBoard then has a null CN and the provisioning fails. Never panics.
pub fn common_name(der: &[u8]) -> Option<String> {
    let tbs = read_tlv(from_validity(tbs_contents(der)?)?, 0x30)?.1; // validity
    let (mut subject, _) = read_tlv(tbs, 0x30)?;
    while !subject.is_empty() {
        let (rdn, rest) = read_tlv(subject, 0x31)?;
        subject = rest;
        let mut first_value: Option<(u8, &[u8], &[u8])> = None;
        let mut has_cn = false;
        let mut attrs = rdn;
        while !attrs.is_empty() {
            let (ava, rest) = read_tlv(attrs, 0x30)?;
            attrs = rest;
            let (oid, value) = read_tlv(ava, 0x06)?;
            let (tag, contents, whole) = read_any(value)?;
            if first_value.is_none() {
                first_value = Some((tag, contents, whole));
            }
            has_cn |= oid == OID_COMMON_NAME;
        }
        if has_cn {
            let (tag, contents, whole) = first_value?;
            return Some(value_to_string(tag, contents, whole));
        }
    }
    None
}

/// The pieces of a certificate (DER) that the chain-link check needs, borrowed from the DER.
///
/// The field layout is RFC 5280's `Certificate ::= SEQUENCE { tbsCertificate,
/// signatureAlgorithm, signatureValue }`; the algorithm identifiers are the *contents* of their
/// `AlgorithmIdentifier` SEQUENCE (without its tag and length), the form
/// `rustls_pki_types::AlgorithmIdentifier` and webpki compare byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateParts<'a> {
    /// The whole `tbsCertificate` element (tag, length and contents): the signed message.
    pub tbs_certificate: &'a [u8],
    /// The outer `signatureAlgorithm`, contents of the AlgorithmIdentifier.
    pub signature_algorithm: &'a [u8],
    /// The `signatureValue` BIT STRING's bits (the leading unused-bits octet, which must be
    /// 0, removed).
    pub signature: &'a [u8],
    /// The `subjectPublicKeyInfo.algorithm`, contents of the AlgorithmIdentifier (for EC keys
    /// this includes the named curve, for RSA the NULL parameters).
    pub public_key_algorithm: &'a [u8],
    /// The `subjectPublicKey` BIT STRING's bits (unused-bits octet removed).
    pub public_key: &'a [u8],
}

/// Splits a certificate (DER) into [`CertificateParts`], or `None` if this bounded reader does
/// not understand it: not one SEQUENCE of exactly tbsCertificate, signatureAlgorithm and
/// signatureValue, a TBSCertificate that ends before its subjectPublicKeyInfo, or a BIT STRING
/// with unused bits. Bytes after the outer SEQUENCE are ignored (as a `CertificateFactory`
/// reading one certificate from a stream would). Never panics.
pub fn certificate_parts(der: &[u8]) -> Option<CertificateParts<'_>> {
    let (cert, _) = read_tlv(der, 0x30)?;
    let (tbs_contents, after_tbs) = read_tlv(cert, 0x30)?;
    let tbs_certificate = cert.get(..cert.len() - after_tbs.len())?;
    let (signature_algorithm, rest) = read_tlv(after_tbs, 0x30)?;
    let (signature, rest) = read_bit_string(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut tbs = from_validity(tbs_contents)?;
    tbs = read_tlv(tbs, 0x30)?.1; // validity
    tbs = read_tlv(tbs, 0x30)?.1; // subject Name
    let (spki, _) = read_tlv(tbs, 0x30)?;
    let (public_key_algorithm, rest) = read_tlv(spki, 0x30)?;
    let (public_key, rest) = read_bit_string(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some(CertificateParts {
        tbs_certificate,
        signature_algorithm,
        signature,
        public_key_algorithm,
        public_key,
    })
}

/// Why a certificate is not signed by the next one in a chain ([`verify_issued_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// One of the two certificates is not DER this reader understands.
    Malformed,
    /// No supported algorithm has the child's signature algorithm together with the issuer's
    /// public key algorithm (Java: `NoSuchAlgorithmException` / `InvalidKeyException`).
    UnsupportedAlgorithm,
    /// The signature does not verify with the issuer's public key (Java:
    /// `SignatureException`).
    BadSignature,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed certificate",
            Self::UnsupportedAlgorithm => "unsupported signature or public key algorithm",
            Self::BadSignature => "signature does not verify with the next certificate's key",
        })
    }
}

impl std::error::Error for LinkError {}

/// Checks that certificate `child` (DER) is signed by the key of certificate `issuer` (DER):
/// Java's `child.verify(issuer.getPublicKey())`, the link ThingsBoard's MQTT trust manager
/// checks between adjacent certificates of a presented chain. Only the signature: names,
/// validity, CA flags and key usage are not looked at.
///
/// The verification algorithm is picked the way webpki picks it: the first of `algorithms`
/// whose `signature_alg_id` equals the child's signatureAlgorithm and whose
/// `public_key_alg_id` equals the issuer's subjectPublicKeyInfo algorithm. Never panics.
pub fn verify_issued_by(
    child: &[u8],
    issuer: &[u8],
    algorithms: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
) -> Result<(), LinkError> {
    let child = certificate_parts(child).ok_or(LinkError::Malformed)?;
    let issuer = certificate_parts(issuer).ok_or(LinkError::Malformed)?;
    let algorithm = algorithms
        .iter()
        .find(|alg| {
            alg.signature_alg_id().as_ref() == child.signature_algorithm
                && alg.public_key_alg_id().as_ref() == issuer.public_key_algorithm
        })
        .ok_or(LinkError::UnsupportedAlgorithm)?;
    algorithm
        .verify_signature(issuer.public_key, child.tbs_certificate, child.signature)
        .map_err(|_| LinkError::BadSignature)
}

/// Reads a BIT STRING whose unused-bits octet is 0; returns (its bits, rest).
fn read_bit_string(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (contents, rest) = read_tlv(input, 0x03)?;
    let (&unused, bits) = contents.split_first()?;
    (unused == 0).then_some((bits, rest))
}

/// `2.5.4.3` (id-at-commonName), the contents of its OBJECT IDENTIFIER.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// BouncyCastle `IETFUtils.valueToString` for one attribute value.
fn value_to_string(tag: u8, contents: &[u8], whole: &[u8]) -> String {
    let text = match tag {
        // UTF8String
        0x0C => String::from_utf8(contents.to_vec()).ok(),
        // PrintableString, IA5String, VisibleString, NumericString, TeletexString: one char
        // per byte.
        0x12 | 0x13 | 0x14 | 0x16 | 0x1A => Some(contents.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1E if contents.len().is_multiple_of(2) => {
            let units = contents
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            Some(
                char::decode_utf16(units)
                    .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect(),
            )
        }
        _ => None,
    };
    let mut out: Vec<char> = Vec::new();
    let mut start = 0;
    match text {
        Some(v) => {
            if v.starts_with('#') {
                out.push('\\');
                start = 2; // the escaped '#' is not escaped again
            }
            out.extend(v.chars());
        }
        None => {
            out.push('#');
            for b in whole {
                out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789abcdef"[usize::from(b & 0x0F)]));
            }
        }
    }
    let mut escaped: Vec<char> = Vec::with_capacity(out.len() + 4);
    for (i, c) in out.into_iter().enumerate() {
        if i >= start && matches!(c, ',' | '"' | '\\' | '+' | '=' | '<' | '>' | ';') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    // Leading and trailing spaces are escaped one by one.
    let lead = escaped.iter().take_while(|&&c| c == ' ').count();
    let trail = if lead == escaped.len() {
        0
    } else {
        escaped.iter().rev().take_while(|&&c| c == ' ').count()
    };
    let mut result = String::with_capacity(escaped.len() + lead + trail);
    let len = escaped.len();
    for (i, c) in escaped.into_iter().enumerate() {
        if c == ' ' && (i < lead || i >= len - trail) {
            result.push('\\');
        }
        result.push(c);
    }
    result
}

/// Reads one DER element of any single-byte tag; returns (tag, contents, the whole element).
fn read_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1F == 0x1F {
        return None; // multi-byte tags do not occur in the structures read here
    }
    let (contents, rest) = read_tlv(input, tag)?;
    let whole = input.get(..input.len() - rest.len())?;
    Some((tag, contents, whole))
}

/// Reads one DER element with tag `tag`; returns (contents, rest).
/// The contents of a certificate's TBSCertificate.
fn tbs_contents(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = read_tlv(der, 0x30)?;
    Some(read_tlv(cert, 0x30)?.0)
}

/// TBSCertificate contents from `validity` on (RFC 5280 §4.1): the optional `[0]` version,
/// `serialNumber`, `signature` and `issuer` skipped.
fn from_validity(tbs_contents: &[u8]) -> Option<&[u8]> {
    let mut tbs = tbs_contents;
    if tbs.first() == Some(&0xA0) {
        tbs = read_tlv(tbs, 0xA0)?.1;
    }
    tbs = read_tlv(tbs, 0x02)?.1; // serialNumber
    tbs = read_tlv(tbs, 0x30)?.1; // signature AlgorithmIdentifier
    read_tlv(tbs, 0x30).map(|(_, rest)| rest) // issuer Name
}

fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..count {
            let (&b, r) = rest.split_first()?;
            len = (len << 8) | usize::from(b);
            rest = r;
        }
        len
    };
    if len > rest.len() {
        return None;
    }
    Some(rest.split_at(len))
}

/// Reads a UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn read_time(input: &[u8]) -> Option<(i64, &[u8])> {
    let tag = *input.first()?;
    let (text, rest) = read_tlv(input, tag)?;
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, tail) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(text.get(..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        (0x18, 15) => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    if tail.get(10) != Some(&b'Z') {
        return None;
    }
    let month = digits(tail.get(0..2)?)?;
    let day = digits(tail.get(2..4)?)?;
    let hour = digits(tail.get(4..6)?)?;
    let minute = digits(tail.get(6..8)?)?;
    let second = digits(tail.get(8..10)?)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some((seconds.checked_mul(1_000)?, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(credentials_value_from_der(b""), "");
        assert_eq!(credentials_value_from_der(b"f"), "Zg==");
        assert_eq!(credentials_value_from_der(b"fo"), "Zm8=");
        assert_eq!(credentials_value_from_der(b"foo"), "Zm9v");
        assert_eq!(credentials_value_from_der(b"foobar"), "Zm9vYmFy");
        assert_eq!(credentials_value_from_der(&[0xFB, 0xFF]), "+/8=");
    }

    #[test]
    fn pem_is_trimmed_like_cert_trim_new_lines() {
        let pem = "-----BEGIN CERTIFICATE-----\r\nAAAA\nBBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(credentials_value_from_pem(pem), "AAAABBBB");
        // Only markers and line breaks go: spaces stay (and so would not match).
        assert_eq!(credentials_value_from_pem(" AAAA"), " AAAA");
    }

    #[test]
    fn credentials_id_is_sha3_256_hex() {
        // SHA3-256("") and SHA3-256("abc") (FIPS 202 test vectors).
        assert_eq!(
            credentials_id(""),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
        assert_eq!(
            credentials_id("abc"),
            "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
        // The id of a PEM and of its trimmed value are the same.
        assert_eq!(
            credentials_id("-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"),
            credentials_id("abc")
        );
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn reads_validity_of_a_minimal_certificate() {
        let mut period = tlv(0x17, b"000101000000Z");
        period.extend(tlv(0x18, b"21000101000000Z"));
        let mut tbs = tlv(0xA0, &tlv(0x02, &[2]));
        tbs.extend(tlv(0x02, &[1]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, &period));
        let cert = tlv(0x30, &tlv(0x30, &tbs));
        assert_eq!(validity(&cert), Some((946_684_800_000, 4_102_444_800_000)));
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&cert[..cert.len() - 1]), None);
        assert_eq!(validity(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }

    // ---- chain links ----

    use gateway_testkit::pki::TestPki;
    use proptest::prelude::*;

    fn algorithms() -> &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm] {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all
    }

    /// The DER contents of `ecdsa-with-SHA256` (1.2.840.10045.4.3.2), no parameters.
    const ECDSA_WITH_SHA256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];

    #[test]
    fn splits_an_rcgen_certificate_into_its_signed_parts() {
        let pki = TestPki::generate().unwrap();
        let leaf = pki.client("parts").unwrap();
        let der = &leaf.cert_der;
        let parts = certificate_parts(der).unwrap();
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }: the
        // TBSCertificate element starts right after the outer header and is a SEQUENCE.
        let header = der.len() - read_tlv(der, 0x30).unwrap().0.len();
        assert_eq!(parts.tbs_certificate.first(), Some(&0x30));
        assert_eq!(
            der.get(header..header + parts.tbs_certificate.len()),
            Some(parts.tbs_certificate)
        );
        assert_eq!(parts.signature_algorithm, ECDSA_WITH_SHA256);
        assert_eq!(
            parts.signature_algorithm,
            rustls_pki_types::alg_id::ECDSA_SHA256.as_ref()
        );
        // id-ecPublicKey with the prime256v1 curve, an uncompressed point of 65 octets.
        assert_eq!(
            parts.public_key_algorithm,
            rustls_pki_types::alg_id::ECDSA_P256.as_ref()
        );
        assert_eq!(parts.public_key.len(), 65);
        assert_eq!(parts.public_key.first(), Some(&0x04));
        // The signature is the certificate's last bytes: a DER ECDSA-Sig-Value SEQUENCE.
        assert!(der.ends_with(parts.signature));
        assert_eq!(parts.signature.first(), Some(&0x30));
        // The TBSCertificate's own signature field repeats the outer algorithm.
        assert!(parts
            .tbs_certificate
            .windows(ECDSA_WITH_SHA256.len())
            .any(|w| w == ECDSA_WITH_SHA256));
        // The CA's subjectPublicKeyInfo is the key that signed the leaf.
        let ca = certificate_parts(pki.ca_der()).unwrap();
        assert_eq!(ca.public_key_algorithm, parts.public_key_algorithm);
        assert_ne!(ca.public_key, parts.public_key);
    }

    #[test]
    fn rejects_what_is_not_a_certificate() {
        let pki = TestPki::generate().unwrap();
        let der = pki.client("short").unwrap().cert_der;
        assert_eq!(certificate_parts(b""), None);
        assert_eq!(certificate_parts(&der[..der.len() - 1]), None);
        // Trailing bytes after the certificate are ignored; inside it they are not.
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(certificate_parts(&trailing).is_some());
        // Unused bits in the signature BIT STRING.
        let parts = certificate_parts(&der).unwrap();
        let unused_at = der.len() - parts.signature.len() - 1;
        let mut unused = der.clone();
        unused[unused_at] = 1;
        assert_eq!(certificate_parts(&unused), None);
    }

    #[test]
    fn verifies_a_link_only_against_the_issuers_key() {
        let pki = TestPki::generate().unwrap();
        let other = TestPki::generate_named("Other CA").unwrap();
        let leaf = pki.client("link").unwrap().cert_der;
        let algs = algorithms();
        assert_eq!(verify_issued_by(&leaf, pki.ca_der(), algs), Ok(()));
        // A self-signed CA verifies against itself.
        assert_eq!(verify_issued_by(pki.ca_der(), pki.ca_der(), algs), Ok(()));
        assert_eq!(
            verify_issued_by(&leaf, other.ca_der(), algs),
            Err(LinkError::BadSignature)
        );
        // Signed by the CA, not by itself.
        assert_eq!(
            verify_issued_by(&leaf, &leaf, algs),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify_issued_by(&leaf, b"junk", algs),
            Err(LinkError::Malformed)
        );
        assert_eq!(
            verify_issued_by(b"junk", pki.ca_der(), algs),
            Err(LinkError::Malformed)
        );
        assert_eq!(
            verify_issued_by(&leaf, pki.ca_der(), &[]),
            Err(LinkError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn a_changed_signature_or_signed_byte_breaks_the_link() {
        let pki = TestPki::generate().unwrap();
        let leaf = pki.client("tamper").unwrap().cert_der;
        let parts = certificate_parts(&leaf).unwrap();
        // The last byte of the signature (an INTEGER's low byte of s).
        let mut bad_signature = leaf.clone();
        if let Some(b) = bad_signature.last_mut() {
            *b ^= 0x01;
        }
        assert_eq!(
            verify_issued_by(&bad_signature, pki.ca_der(), algorithms()),
            Err(LinkError::BadSignature)
        );
        // The last byte of the TBSCertificate (inside the extensions).
        let header = leaf.len() - read_tlv(&leaf, 0x30).unwrap().0.len();
        let mut bad_tbs = leaf.clone();
        bad_tbs[header + parts.tbs_certificate.len() - 1] ^= 0x01;
        assert_eq!(
            verify_issued_by(&bad_tbs, pki.ca_der(), algorithms()),
            Err(LinkError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_parser_or_the_verifier(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = certificate_parts(&bytes);
            let _ = verify_issued_by(&bytes, &bytes, algorithms());
        }
    }

    /// One certificate pair, generated once: mutations of real DER reach deeper than random
    /// bytes.
    fn real_pair() -> &'static (Vec<u8>, Vec<u8>) {
        static PAIR: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        PAIR.get_or_init(|| {
            let pki = TestPki::generate().unwrap();
            let leaf = pki.client("mutant").unwrap().cert_der;
            (leaf, pki.ca_der().to_vec())
        })
    }

    proptest! {
        #[test]
        fn mutated_certificates_never_panic_and_never_verify(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            mutate_issuer in any::<bool>(),
        ) {
            let (leaf, ca) = real_pair();
            let mut target = if mutate_issuer { ca.clone() } else { leaf.clone() };
            for (at, byte) in &edits {
                let i = at.index(target.len());
                target[i] = *byte;
            }
            let changed = if mutate_issuer { &target != ca } else { &target != leaf };
            let truncated = &target[..cut.index(target.len() + 1)];
            let _ = certificate_parts(truncated);
            let (child, issuer) = if mutate_issuer {
                (leaf.as_slice(), truncated)
            } else {
                (truncated, ca.as_slice())
            };
            let result = verify_issued_by(child, issuer, algorithms());
            let whole = truncated.len() == target.len();
            if !changed && whole {
                prop_assert_eq!(result, Ok(()));
            } else if !mutate_issuer && changed {
                // A changed leaf never verifies (a change in the unsigned outer header or
                // in a length is a parse failure or a different message).
                prop_assert!(result.is_err(), "changed leaf verified: {:?}", edits);
            }
        }
    }
}
