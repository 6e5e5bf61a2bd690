//! X.509 certificate-chain provisioning (`X509_CERTIFICATE_CHAIN` device profiles) on the
//! sans-IO emulator: the chain a TLS client presents ([`PeerIdentity::tls_chain`]) is walked when
//! the session opens (ThingsBoard: during the handshake, `validateOrCreateDeviceX509Certificate`),
//! and the CONNECT authenticates by the leaf (`processX509CertConnect`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gateway_emulator::{
    x509, ControlError, Credentials, EmulatorConfig, NewDevice, PeerIdentity, X509ChainProfile,
};
use gateway_testkit::pki::TestPki;
use proptest::prelude::*;
use serde_json::json;
use std::sync::OnceLock;

/// One PKI and leaf for the property tests (key generation per case would dominate).
fn shared() -> &'static (TestPki, Vec<u8>) {
    static SHARED: OnceLock<(TestPki, Vec<u8>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let pki = TestPki::generate().unwrap();
        let der = pki.client("DEV-fuzz").unwrap().cert_der;
        (pki, der)
    })
}

const REGEX: &str = r"^DEV-(\w+)$";

fn profile(pki: &TestPki) -> X509ChainProfile {
    X509ChainProfile::new("meters", pki.ca_pem(), REGEX)
}

fn chain_peer(chain: Vec<Vec<u8>>) -> PeerIdentity {
    PeerIdentity::tls_chain(chain)
}

fn leaf_credentials(der: &[u8]) -> Option<Credentials> {
    Some(Credentials::X509 {
        certificate: x509::credentials_value_from_der(der),
    })
}

#[test]
fn an_unknown_leaf_signed_by_the_profile_ca_creates_its_device_named_by_group_one() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("DEV-meter42").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    assert!(h.emu.device("meter42").is_none());

    for version in [V311, V5] {
        let (id, p) = h.connect_peer(version, chain_peer(pki.chain_der(&leaf)), "c", None, None);
        assert_eq!(p, vec![connack(0)], "{version:?}");
        h.publish_json(id, "v1/devices/me/telemetry", json!({"kwh": 7}), 1);
        assert_eq!(h.take(id), vec![puback(1, 0)]);
    }
    // Group 1 only, not the whole CN or the whole match.
    let info = h.emu.device("meter42").expect("created from the CN");
    assert_eq!(info.device_type, "meters");
    assert_eq!(info.credentials, leaf_credentials(&leaf.cert_der));
    assert!(h.emu.device("DEV-meter42").is_none());
    assert_eq!(h.emu.devices().len(), 3, "the harness's two plus one");
    assert_eq!(
        h.emu.latest_telemetry("meter42").unwrap()["kwh"].value,
        json!(7)
    );
    // The leaf is now an ordinary X.509 credential: presented alone it authenticates.
    let (_, p) = h.connect_peer(
        V311,
        PeerIdentity::tls(Some(leaf.cert_der.clone())),
        "c",
        None,
        None,
    );
    assert_eq!(p, vec![connack(0)]);
    assert_eq!(h.emu.devices().len(), 3);
}

#[test]
fn the_device_is_created_at_the_handshake_even_without_a_connect() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("DEV-early").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let id = h.open_with_peer(V5, chain_peer(pki.chain_der(&leaf)));
    assert!(h.emu.device("early").is_some());
    assert!(h.take(id).is_empty());
}

#[test]
fn a_cn_the_regex_does_not_match_is_refused_with_not_authorized() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("SENSOR-meter42").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let (id, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    assert!(h.closed(id));
    let (id, p) = h.connect_peer(V311, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(5)]);
    assert!(h.closed(id));
    assert_eq!(h.emu.devices().len(), 2, "nothing created");
}

#[test]
fn a_regex_without_a_group_fails_and_find_is_unanchored() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("site7/DEV-abc/x").unwrap();
    let mut h = Harness::new();
    // No capturing group: Java's group(1) throws, provisioning fails.
    h.emu
        .add_x509_chain_profile(X509ChainProfile::new("meters", pki.ca_pem(), "DEV-.*"))
        .unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    assert_eq!(h.emu.devices().len(), 2);
    // `find()`: the first match anywhere in the CN; its group 1.
    h.emu
        .add_x509_chain_profile(X509ChainProfile::new(
            "meters",
            pki.ca_pem(),
            "DEV-([a-z]+)",
        ))
        .unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0)]);
    assert!(h.emu.device("abc").is_some());
}

#[test]
fn creation_not_allowed_refuses_an_unknown_name_but_rekeys_a_device_of_the_profile() {
    let pki = TestPki::generate().unwrap();
    let mut h = Harness::new();
    h.emu
        .add_x509_chain_profile(profile(&pki).with_create_new(false))
        .unwrap();
    let newcomer = pki.client("DEV-newcomer").unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&newcomer)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    let (_, p) = h.connect_peer(V311, chain_peer(pki.chain_der(&newcomer)), "c", None, None);
    assert_eq!(p, vec![connack(5)]);
    assert!(h.emu.device("newcomer").is_none());

    // A pre-provisioned device of the profile with an (old) X.509 credential: its credential
    // becomes the new leaf (certificate rotation), even with creation off.
    let old = pki.client("DEV-rotating").unwrap();
    h.emu
        .create_device(NewDevice::x509("rotating", &old.cert_pem).with_type("meters"))
        .unwrap();
    let new = pki.client("DEV-rotating").unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&new)), "c", None, None);
    assert_eq!(p, vec![connack(0)]);
    assert_eq!(
        h.emu.device("rotating").unwrap().credentials,
        leaf_credentials(&new.cert_der)
    );
    // The old certificate no longer authenticates.
    let (_, p) = h.connect_peer(V5, PeerIdentity::tls(Some(old.cert_der)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
}

/// Saving the new leaf over the old X.509 credential publishes `CREDENTIALS_UPDATED`, and the
/// device actor closes the session of the old certificate (0x98), not a takeover (0x8E).
#[test]
fn rekeying_closes_the_session_of_the_old_certificate() {
    let pki = TestPki::generate().unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let old = pki.client("DEV-rotating").unwrap();
    h.emu
        .create_device(NewDevice::x509("rotating", &old.cert_pem).with_type("meters"))
        .unwrap();
    for version in [V5, V311] {
        let old_peer = PeerIdentity::tls(Some(old.cert_der.clone()));
        let (old_session, p) = h.connect_peer(version, old_peer, "c", None, None);
        assert_eq!(p, vec![connack(0)], "{version:?}");
        let new = pki.client("DEV-rotating").unwrap();
        let (new_session, p) =
            h.connect_peer(version, chain_peer(pki.chain_der(&new)), "c", None, None);
        assert_eq!(p, vec![connack(0)], "{version:?}");
        let expected = if version == V5 {
            vec![disconnect(0x98)]
        } else {
            vec![]
        };
        assert_eq!(h.take(old_session), expected, "{version:?}");
        assert!(h.closed(old_session));
        h.publish_json(new_session, "v1/devices/me/telemetry", json!({"kwh": 1}), 1);
        assert_eq!(h.take(new_session), vec![puback(1, 0)]);
        // Back to the old certificate for the next round.
        h.emu
            .update_device_credentials("rotating", Credentials::x509_pem(&old.cert_pem), h.now)
            .unwrap();
        h.pump();
        assert!(h.closed(new_session));
    }
}

#[test]
fn an_existing_name_with_other_credentials_or_in_another_profile_is_not_taken_over() {
    let pki = TestPki::generate().unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    // Same profile, access token: "success" without a credential change, so the CONNECT by
    // the leaf is refused.
    h.emu
        .create_device(NewDevice::device("tokened", "T1").with_type("meters"))
        .unwrap();
    let leaf = pki.client("DEV-tokened").unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    assert_eq!(
        h.emu.device("tokened").unwrap().credentials,
        Some(Credentials::AccessToken("T1".into()))
    );
    // Another profile's device of that name: creating fails (names are unique).
    let other = pki.client("DEV-other").unwrap();
    h.emu
        .create_device(NewDevice::device("other", "T2").with_type("default"))
        .unwrap();
    let (_, p) = h.connect_peer(V311, chain_peer(pki.chain_der(&other)), "c", None, None);
    assert_eq!(p, vec![connack(5)]);
    assert_eq!(h.emu.device("other").unwrap().device_type, "default");
}

#[test]
fn a_chain_whose_ca_is_no_profiles_is_refused() {
    let pki = TestPki::generate_named("profile CA").unwrap();
    let foreign = TestPki::generate_named("foreign CA").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let leaf = foreign.client("DEV-intruder").unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(foreign.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    let (_, p) = h.connect_peer(V311, chain_peer(foreign.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(5)]);
    assert!(h.emu.device("intruder").is_none());
    // Without any profile at all, the same.
    let mut h = Harness::new();
    let leaf = pki.client("DEV-x").unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
}

#[test]
fn a_known_leaf_still_authenticates_directly_and_wins_over_the_profile() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("DEV-known").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    h.emu
        .create_device(NewDevice::x509("Registered", &leaf.cert_pem))
        .unwrap();
    let (id, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0)]);
    h.publish_json(id, "v1/devices/me/telemetry", json!({"a": 1}), 1);
    assert_eq!(h.take(id), vec![puback(1, 0)]);
    assert_eq!(
        h.emu.latest_telemetry("Registered").unwrap()["a"].value,
        json!(1)
    );
    assert!(h.emu.device("known").is_none(), "the leaf was found first");
}

#[test]
fn a_provision_connect_still_walks_the_chain() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("DEV-prov").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let (_, p) = h.connect_peer(
        V311,
        chain_peer(pki.chain_der(&leaf)),
        "provision",
        None,
        None,
    );
    assert_eq!(p, vec![connack(0)]);
    assert!(h.emu.device("prov").is_some());
}

#[test]
fn an_expired_leaf_is_provisioned_at_the_handshake_but_refused_at_connect() {
    let pki = TestPki::generate().unwrap();
    let old = pki.expired_client("DEV-expired").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&old)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    assert!(h.emu.device("expired").is_some());
    // With the validity check skipped, the same chain connects.
    let mut config = EmulatorConfig::default();
    config.skip_validity_check_for_client_cert = true;
    let mut h = Harness::with_config(config);
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&old)), "c", None, None);
    assert_eq!(p, vec![connack(0)]);
}

#[test]
fn the_device_limit_makes_provisioning_fail() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("DEV-limited").unwrap();
    let mut h = Harness::new();
    h.emu.add_x509_chain_profile(profile(&pki)).unwrap();
    h.emu.set_max_devices(Some(2));
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    assert!(h.emu.device("limited").is_none());
}

#[test]
fn profile_settings_are_checked_when_added() {
    let pki = TestPki::generate().unwrap();
    let mut h = Harness::new();
    assert_eq!(
        h.emu
            .add_x509_chain_profile(X509ChainProfile::new("a", "\n\n", REGEX)),
        Err(ControlError::InvalidCertificate)
    );
    assert!(matches!(
        h.emu
            .add_x509_chain_profile(X509ChainProfile::new("a", pki.ca_pem(), "(unclosed")),
        Err(ControlError::InvalidRegex(_))
    ));
    h.emu
        .add_x509_chain_profile(X509ChainProfile::new("a", pki.ca_pem(), REGEX))
        .unwrap();
    assert_eq!(
        h.emu
            .add_x509_chain_profile(X509ChainProfile::new("b", pki.ca_pem(), REGEX)),
        Err(ControlError::ProfileCertificateInUse("a".into()))
    );
    // The same profile may be replaced (here: its regex changed).
    h.emu
        .add_x509_chain_profile(X509ChainProfile::new("a", pki.ca_pem(), "(.*)"))
        .unwrap();
    let leaf = pki.client("whole-cn").unwrap();
    let (_, p) = h.connect_peer(V5, chain_peer(pki.chain_der(&leaf)), "c", None, None);
    assert_eq!(p, vec![connack(0)]);
    assert_eq!(h.emu.device("whole-cn").unwrap().device_type, "a");
}

#[test]
fn common_name_reads_the_subject_cn() {
    let pki = TestPki::generate().unwrap();
    let leaf = pki.client("DEV-cn").unwrap();
    assert_eq!(x509::common_name(&leaf.cert_der).as_deref(), Some("DEV-cn"));
    // The issuer's CN is not the subject's.
    assert_eq!(
        x509::common_name(pki.ca_der()).as_deref(),
        Some("tb-gateway-rs test CA")
    );
    // RFC 4514 escaping as BouncyCastle's IETFUtils.valueToString prints it.
    let odd = pki.client("a,b+c").unwrap();
    assert_eq!(
        x509::common_name(&odd.cert_der).as_deref(),
        Some(r"a\,b\+c")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn common_name_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = x509::common_name(&bytes);
        let _ = x509::first_certificate_value(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn common_name_never_panics_on_mutated_certificates(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut der = shared().1.clone();
        for (at, byte) in flips {
            let i = at % der.len();
            der[i] = byte;
        }
        der.truncate(cut % (der.len() + 1));
        let _ = x509::common_name(&der);
    }

    #[test]
    fn garbage_chains_never_panic_the_session(
        chain in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..4),
    ) {
        let pki = &shared().0;
        let mut h = Harness::new();
        h.emu.add_x509_chain_profile(profile(pki)).unwrap();
        let mut chain = chain;
        chain.push(pki.ca_der().to_vec());
        let (_, p) = h.connect_peer(V5, chain_peer(chain), "c", None, None);
        prop_assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
    }
}
