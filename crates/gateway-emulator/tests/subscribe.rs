//! SUBSCRIBE / UNSUBSCRIBE (spec §1.2, `MqttV5ClientSubscriptionTest`, `MqttV5ClientUnsubscribeTest`).

mod common;

use common::*;
use gateway_proto::wire::{Packet, QoS, UnsubAck, Unsubscribe};

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;

#[test]
fn accepted_filters_get_granted_qos_and_others_fail_per_entry() {
    let mut h = Harness::new();
    let id = h.connect(V5, GW_TOKEN);
    let codes = h.subscribe(
        id,
        &[
            ("v1/devices/me/attributes", Q1),
            ("wrong/topic/+", Q1),
            ("v1/gateway/rpc", Q0),
            ("v1/gateway/#", Q1),
            ("v1/gateway/disconnect", Q1),
            ("v2/r/req/j/+", Q1),
        ],
    );
    assert_eq!(codes, vec![1, 0x8F, 0, 0x8F, 0x8F, 1]);
    assert!(!h.closed(id));

    let id = h.connect(V311, DEV_TOKEN);
    let codes = h.subscribe(
        id,
        &[
            ("#", Q1),
            ("v1/devices/me/rpc/request/+", Q1),
            ("v1/devices/me/telemetry", Q0),
        ],
    );
    assert_eq!(codes, vec![0x80, 1, 0x80]);
    assert!(!h.closed(id));
}

#[test]
fn provision_session_accepts_only_the_provision_response_filter() {
    let mut h = Harness::new();
    let (id, _) = h.connect_with(V5, "provision", None, None);
    let codes = h.subscribe(
        id,
        &[
            ("/provision/response", Q1),
            ("v1/devices/me/attributes", Q1),
        ],
    );
    assert_eq!(codes, vec![1, 0x8F]);
}

#[test]
fn unsuback_carries_codes_only_on_v5() {
    let mut h = Harness::new();
    let id = h.connect(V5, DEV_TOKEN);
    h.subscribe(id, &[("v1/devices/me/attributes", Q1)]);
    h.send(
        id,
        Packet::Unsubscribe(Unsubscribe {
            pkid: 9,
            filters: vec![
                "v1/devices/me/attributes".into(),
                "v1/devices/me/attributes".into(),
                "wrong/+".into(),
            ],
        }),
    );
    assert_eq!(
        h.take(id),
        vec![Packet::UnsubAck(UnsubAck {
            pkid: 9,
            codes: vec![0x00, 0x11, 0x11]
        })]
    );
    let id = h.connect(V311, GW_TOKEN);
    h.send(
        id,
        Packet::Unsubscribe(Unsubscribe {
            pkid: 3,
            filters: vec!["x".into()],
        }),
    );
    assert_eq!(
        h.take(id),
        vec![Packet::UnsubAck(UnsubAck {
            pkid: 3,
            codes: vec![]
        })]
    );
}
