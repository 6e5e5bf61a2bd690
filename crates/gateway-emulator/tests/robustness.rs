//! Arbitrary client bytes never panic the emulator, and what it buffers stays bounded.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use gateway_proto::wire::{self, Packet, Publish, QoS};
use proptest::prelude::*;

fn connect_bytes(v5: bool, token: &str) -> Vec<u8> {
    let version = if v5 { V5 } else { V311 };
    let mut out = BytesMut::new();
    wire::encode(
        &Packet::Connect(wire::Connect {
            client_id: "c".into(),
            keep_alive: 10,
            clean_session: true,
            username: Some(token.into()),
            password: None,
        }),
        version,
        &mut out,
        usize::MAX,
    )
    .unwrap();
    out.to_vec()
}

fn publish_bytes(v5: bool, topic: &str, payload: &[u8], pkid: u16) -> Vec<u8> {
    let version = if v5 { V5 } else { V311 };
    let mut out = BytesMut::new();
    let _ = wire::encode(
        &Packet::Publish(Publish {
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload),
            qos: if pkid == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            dup: false,
            retain: false,
            pkid,
        }),
        version,
        &mut out,
        usize::MAX,
    );
    out.to_vec()
}

const TOPICS: &[&str] = &[
    "v1/gateway/telemetry",
    "v1/gateway/attributes",
    "v1/gateway/connect",
    "v1/gateway/disconnect",
    "v1/gateway/rpc",
    "v1/gateway/claim",
    "v1/gateway/attributes/request",
    "v1/devices/me/telemetry",
    "v1/devices/me/attributes/request/1",
    "v1/devices/me/rpc/request/1",
    "v1/devices/me/rpc/response/0",
    "v2/fw/request/1/chunk/0",
    "/provision/request",
];

/// Payloads that reach deep paths: JSON fragments glued at random.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"Dev\"",
        ":",
        ",",
        "1",
        "null",
        "\"ts\"",
        "\"values\"",
        "\"device\"",
        "\"id\"",
        "\"client\"",
        "true",
        "\"keys\"",
        "\"method\"",
        "{}",
        "[{}]",
        "\"\"",
        "\"metadata\"",
        "\"secretKey\"",
        "-1",
        "1e400",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn chunk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (
            any::<bool>(),
            prop::sample::select(TOPICS.to_vec()),
            payload(),
            0u16..4
        )
            .prop_map(|(v5, t, p, pkid)| publish_bytes(v5, t, &p, pkid)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        v5 in any::<bool>(),
        token in prop::sample::select(vec![GW_TOKEN, DEV_TOKEN, "provision", "bad"]),
        with_connect in any::<bool>(),
        chunks in prop::collection::vec(chunk(), 0..12),
        splits in prop::collection::vec(1usize..40, 1..4),
    ) {
        let mut h = Harness::new();
        let id = h.open(if v5 { V5 } else { V311 });
        let mut stream = Vec::new();
        if with_connect {
            stream.extend(connect_bytes(v5, token));
        }
        for c in &chunks {
            stream.extend_from_slice(c);
        }
        // Feed the stream split at arbitrary points.
        let mut rest = stream.as_slice();
        let mut i = 0;
        while !rest.is_empty() {
            let n = splits[i % splits.len()].min(rest.len());
            h.emu.handle_bytes(id, h.now, &rest[..n]);
            rest = &rest[n..];
            i += 1;
            for s in h.emu.sessions() {
                prop_assert!(s.buffered_bytes <= 65_536 + 5 + 40);
            }
        }
        h.advance(std::time::Duration::from_secs(3600));
        // Everything was drained and the session is gone after the idle timeout.
        prop_assert!(h.emu.sessions().is_empty());
        prop_assert!(h.emu.poll_output().is_none());
    }
}

#[test]
fn a_slowly_streamed_oversize_packet_is_refused_at_its_header() {
    let mut h = Harness::new();
    let id = h.gateway(V5);
    // Fixed header announcing 1 MiB: refused as soon as the header is complete.
    h.send_raw(id, b"\x32\x80\x80\x40");
    assert_eq!(h.take(id), vec![disconnect(0x81)]);
    assert!(h.emu.sessions().iter().all(|s| s.buffered_bytes == 0));
}
