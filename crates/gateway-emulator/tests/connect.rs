//! CONNECT, CONNACK and session takeover (spec §6.1, §8; `MqttV5ClientConnectionTest`).

use std::time::Duration;

mod common;

use common::*;
use gateway_emulator::{
    Credentials, Event as EmuEvent, LimitConfig, LimitedApi, NewDevice, TenantLimits,
};
use gateway_proto::wire::{Connect, Packet, QoS};

#[test]
fn good_token_is_accepted_on_both_versions() {
    let mut h = Harness::new();
    for v in [V311, V5] {
        let id = h.connect(v, DEV_TOKEN);
        assert!(!h.closed(id));
    }
}

#[test]
fn bad_token_is_5_on_v3_and_0x86_plus_disconnect_on_v5() {
    let mut h = Harness::new();
    let (id, p) = h.connect_with(V311, "client", Some("WRONG"), None);
    assert_eq!(p, vec![connack(5)]);
    assert!(h.closed(id));
    let (id, p) = h.connect_with(V5, "client", Some("WRONG"), None);
    assert_eq!(p, vec![connack(0x86), disconnect(0x86)]);
    assert!(h.closed(id));
}

#[test]
fn unknown_client_id_without_credentials_is_2_or_0x85() {
    let mut h = Harness::new();
    let (_, p) = h.connect_with(V311, "someClient", None, None);
    assert_eq!(p, vec![connack(2)]);
    let (_, p) = h.connect_with(V5, "someClient", None, None);
    assert_eq!(p, vec![connack(0x85), disconnect(0x85)]);
}

#[test]
fn no_credentials_at_all_is_5_or_0x87() {
    let mut h = Harness::new();
    let (_, p) = h.connect_with(V311, "", None, None);
    assert_eq!(p, vec![connack(5)]);
    let (_, p) = h.connect_with(V5, "", None, None);
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
}

#[test]
fn username_password_and_client_id_all_set_but_unknown_is_bad_credentials() {
    let mut h = Harness::new();
    let (_, p) = h.connect_with(V5, "cid", Some("user"), Some("pw"));
    assert_eq!(p, vec![connack(0x86), disconnect(0x86)]);
    // Both user and password but a blank client id: the "otherwise" row.
    let (_, p) = h.connect_with(V5, "", Some("user"), Some("pw"));
    assert_eq!(p, vec![connack(0x87), disconnect(0x87)]);
}

#[test]
fn backend_failure_is_3_or_0x88() {
    let mut h = Harness::new();
    h.emu.set_auth_unavailable(true);
    let (_, p) = h.connect_with(V311, "c", Some(DEV_TOKEN), None);
    assert_eq!(p, vec![connack(3)]);
    // MTH `processAuthTokenConnect` onError: CONNACK SERVER_UNAVAILABLE, then
    // `closeCtx(ctx, SERVER_BUSY)`: the DISCONNECT carries 0x89, not the CONNACK's code.
    let (_, p) = h.connect_with(V5, "c", Some(DEV_TOKEN), None);
    assert_eq!(p, vec![connack(0x88), disconnect(0x89)]);
}

#[test]
fn session_present_echoes_not_clean_session_even_on_refusal() {
    let mut h = Harness::new();
    for (token, code) in [(DEV_TOKEN, 0), ("WRONG", 5)] {
        let id = h.open(V311);
        h.send(
            id,
            Packet::Connect(Connect {
                client_id: "c".into(),
                keep_alive: 0,
                clean_session: false,
                username: Some(token.into()),
                password: None,
            }),
        );
        assert_eq!(
            h.take(id),
            vec![Packet::ConnAck(gateway_proto::wire::ConnAck {
                session_present: true,
                code
            })]
        );
    }
}

#[test]
fn mqtt_basic_credentials_follow_the_lookup_order() {
    let mut h = Harness::new();
    let basic = |cid: Option<&str>, user: Option<&str>, pw: Option<&str>| {
        Some(Credentials::Basic {
            client_id: cid.map(Into::into),
            username: user.map(Into::into),
            password: pw.map(Into::into),
        })
    };
    h.emu
        .create_device(NewDevice::device("B1", "x").with_credentials(basic(
            Some("cid1"),
            None,
            None,
        )))
        .unwrap();
    h.emu
        .create_device(NewDevice::device("B2", "x").with_credentials(basic(
            Some("cid2"),
            Some("u2"),
            Some("p2"),
        )))
        .unwrap();
    h.emu
        .create_device(NewDevice::device("B3", "x").with_credentials(basic(
            None,
            Some("u3"),
            Some("p3"),
        )))
        .unwrap();
    // Client id only.
    let (_, p) = h.connect_with(V311, "cid1", None, None);
    assert_eq!(p, vec![connack(0)]);
    // Client id + user + password.
    let (_, p) = h.connect_with(V311, "cid2", Some("u2"), Some("p2"));
    assert_eq!(p, vec![connack(0)]);
    // Password mismatch on the (client id, user) pair: not found, no fallback.
    let (_, p) = h.connect_with(V5, "cid2", Some("u2"), Some("bad"));
    assert_eq!(p, vec![connack(0x86), disconnect(0x86)]);
    // User name only credentials, any client id.
    let (_, p) = h.connect_with(V311, "whatever", Some("u3"), Some("p3"));
    assert_eq!(p, vec![connack(0)]);
    let (_, p) = h.connect_with(V311, "whatever", Some("u3"), Some("nope"));
    assert_eq!(p, vec![connack(5)]);
}

#[test]
fn provision_identity_gets_a_provision_session_without_credential_check() {
    let mut h = Harness::new();
    let (id, p) = h.connect_with(V5, "provision", None, None);
    assert_eq!(p, vec![connack(0)]);
    assert!(h.emu.sessions().iter().any(|s| s.id == id && s.provision));
    let (id, p) = h.connect_with(V311, "x", Some("provision"), None);
    assert_eq!(p, vec![connack(0)]);
    assert!(h.emu.sessions().iter().any(|s| s.id == id && s.provision));
}

#[test]
fn second_session_for_the_same_device_takes_over() {
    let mut h = Harness::new();
    let old = h.connect(V5, DEV_TOKEN);
    let new = h.connect(V5, DEV_TOKEN);
    assert_eq!(h.take(old), vec![disconnect(0x8E)]);
    assert!(h.closed(old));
    assert!(!h.closed(new));
    // v3: the older one is just closed.
    let old3 = h.connect(V311, GW_TOKEN);
    let _new3 = h.connect(V311, GW_TOKEN);
    assert_eq!(h.take(old3), vec![]);
    assert!(h.closed(old3));
}

#[test]
fn first_packet_other_than_connect_closes_silently() {
    let mut h = Harness::new();
    let id = h.open(V311);
    h.send_raw(id, b"\xc0\x00");
    assert!(h.closed(id));
    assert_eq!(h.take(id), vec![]);
}

#[test]
fn client_disconnect_is_answered_with_disconnect_0_on_v5() {
    let mut h = Harness::new();
    let id = h.connect(V5, DEV_TOKEN);
    h.send(id, disconnect(0));
    assert_eq!(h.take(id), vec![disconnect(0)]);
    assert!(h.closed(id));
    let id = h.connect(V311, DEV_TOKEN);
    h.send(id, disconnect(0));
    assert_eq!(h.take(id), vec![]);
    assert!(h.closed(id));
}

/// MTH `onValidateDeviceResponse`: opening a session is a regular message of the device's
/// own bucket (after the tenant's), and so is closing one. Refused: CONNACK 0x9F then
/// DISCONNECT 0x96 on v5, CONNACK 3 on v3.1.1; the session that is up stays up.
#[test]
fn session_open_over_the_rate_limit_is_refused_0x9f_or_3() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            device: LimitConfig::new("3:60", "", ""),
            ..TenantLimits::default()
        })
        .unwrap();
    // Open (1 token) and close (2).
    let first = h.connect(V5, DEV_TOKEN);
    h.send(
        first,
        Packet::Disconnect(gateway_proto::wire::Disconnect { code: 0 }),
    );
    assert!(h.closed(first));
    // Open (3): the last token.
    let up = h.connect(V311, DEV_TOKEN);
    let (id, p) = h.connect_with(V5, "client", Some(DEV_TOKEN), None);
    assert_eq!(p, vec![connack(0x9F), disconnect(0x96)]);
    assert!(h.closed(id));
    let (id, p) = h.connect_with(V311, "client", Some(DEV_TOKEN), None);
    assert_eq!(p, vec![connack(3)]);
    assert!(h.closed(id));
    // The refused sessions never took the device over.
    assert!(!h.closed(up));
    h.publish(up, "v1/devices/me/telemetry", br#"{"t":1}"#, 1);
    assert_eq!(h.take(up), vec![puback(1, 0)]);
    let events: Vec<EmuEvent> = std::iter::from_fn(|| h.emu.poll_event()).collect();
    let limited = events
        .iter()
        .filter(|e| {
            matches!(e, EmuEvent::RateLimited { device, api: LimitedApi::Device } if device == "Device")
        })
        .count();
    assert_eq!(limited, 2, "{events:?}");
    // Tokens come back: 3 a minute.
    h.advance(Duration::from_secs(20));
    let again = h.connect(V5, DEV_TOKEN);
    assert!(!h.closed(again));
}

/// A gateway's own sessions take from its `transportGatewayDevice*` bucket, not from the
/// bucket its sub-devices share.
#[test]
fn gateway_session_open_takes_the_gateway_device_bucket() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            gateway: LimitConfig::new("1:60", "", ""),
            gateway_device: LimitConfig::new("1:60", "", ""),
            ..TenantLimits::default()
        })
        .unwrap();
    let gw = h.gateway(V5);
    // The children's bucket is untouched: one child can still be created.
    h.publish(gw, "v1/gateway/connect", br#"{"device":"A"}"#, 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    let (id, p) = h.connect_with(V5, "client", Some(GW_TOKEN), None);
    assert_eq!(p, vec![connack(0x9F), disconnect(0x96)]);
    assert!(h.closed(id));
    assert!(!h.closed(gw));
}

/// MTH `processSubscribe`: an attribute or RPC subscription is a regular message of the
/// device's bucket, sent without a callback: granted even when refused, but the tokens are
/// gone for what follows.
#[test]
fn attribute_and_rpc_subscriptions_take_regular_tokens() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            device: LimitConfig::new("4:60", "", ""),
            ..TenantLimits::default()
        })
        .unwrap();
    // Open (1), two subscriptions (3), a response-topic filter that costs nothing.
    let dev = h.connect(V5, DEV_TOKEN);
    let granted = h.subscribe(
        dev,
        &[
            ("v1/devices/me/attributes", QoS::AtLeastOnce),
            ("v1/devices/me/rpc/request/+", QoS::AtLeastOnce),
            ("v1/devices/me/attributes/response/+", QoS::AtLeastOnce),
        ],
    );
    assert_eq!(granted, vec![1, 1, 1]);
    // One regular message left: the empty attribute post; the next is refused.
    h.publish(dev, "v1/devices/me/attributes", b"{}", 1);
    h.publish(dev, "v1/devices/me/attributes", b"{}", 2);
    assert_eq!(h.take(dev), vec![puback(1, 0), disconnect(0x83)]);
}
