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
    let (cert, _) = read_tlv(der, 0x30)?;
    let (mut tbs, _) = read_tlv(cert, 0x30)?;
    // version [0] EXPLICIT, optional
    if tbs.first() == Some(&0xA0) {
        tbs = read_tlv(tbs, 0xA0)?.1;
    }
    tbs = read_tlv(tbs, 0x02)?.1; // serialNumber
    tbs = read_tlv(tbs, 0x30)?.1; // signature AlgorithmIdentifier
    tbs = read_tlv(tbs, 0x30)?.1; // issuer Name
    let (validity, _) = read_tlv(tbs, 0x30)?;
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
    let (cert, _) = read_tlv(der, 0x30)?;
    let (mut tbs, _) = read_tlv(cert, 0x30)?;
    if tbs.first() == Some(&0xA0) {
        tbs = read_tlv(tbs, 0xA0)?.1;
    }
    tbs = read_tlv(tbs, 0x02)?.1; // serialNumber
    tbs = read_tlv(tbs, 0x30)?.1; // signature AlgorithmIdentifier
    tbs = read_tlv(tbs, 0x30)?.1; // issuer Name
    tbs = read_tlv(tbs, 0x30)?.1; // validity
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
}
