//! Property tests of the MQTT wire layer: round trips, chunking invariance, robustness on
//! arbitrary input, and `publish_size`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use gateway_proto::wire::*;
use proptest::prelude::*;
use proptest::sample::select;

const MAX: usize = 65_536;
const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

/// Any Unicode string (NUL and control characters included), up to 100 chars / 400 bytes.
fn text() -> impl Strategy<Value = String> {
    "(?s).{0,100}"
}

/// A valid PUBLISH topic: non-empty, no `+`, `#` or NUL.
fn topic() -> impl Strategy<Value = String> {
    "[^+#\u{0}]{1,100}"
}

/// A valid topic filter: non-empty, no NUL (wildcards allowed).
fn filter() -> impl Strategy<Value = String> {
    "[^\u{0}]{1,60}"
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        text(),
        any::<u16>(),
        any::<bool>(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(
            move |(client_id, keep_alive, clean_session, username, password)| {
                // MQTT 3.1.1 allows a password only together with a user name.
                let password = if v == ProtocolVersion::V311 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Connect {
                    client_id,
                    keep_alive,
                    clean_session,
                    username,
                    password,
                })
            },
        )
}

fn connack_code(v: ProtocolVersion) -> impl Strategy<Value = u8> {
    match v {
        ProtocolVersion::V311 => select(vec![0u8, 1, 2, 3, 4, 5]),
        ProtocolVersion::V5 => select(vec![
            0x00u8, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
            0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
        ]),
    }
}

fn puback_code(v: ProtocolVersion) -> impl Strategy<Value = u8> {
    match v {
        ProtocolVersion::V311 => select(vec![0u8]),
        ProtocolVersion::V5 => select(vec![0x00u8, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]),
    }
}

fn disconnect_code(v: ProtocolVersion) -> impl Strategy<Value = u8> {
    match v {
        ProtocolVersion::V311 => select(vec![0u8]),
        ProtocolVersion::V5 => select(vec![
            0x00u8, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
            0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
            0xA2,
        ]),
    }
}

fn suback_code(v: ProtocolVersion) -> impl Strategy<Value = u8> {
    match v {
        ProtocolVersion::V311 => select(vec![0u8, 1, 2, 0x80]),
        ProtocolVersion::V5 => select(vec![
            0u8, 1, 2, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ]),
    }
}

fn unsuback_codes(v: ProtocolVersion) -> BoxedStrategy<Vec<u8>> {
    match v {
        ProtocolVersion::V311 => Just(Vec::new()).boxed(),
        ProtocolVersion::V5 => {
            proptest::collection::vec(select(vec![0u8, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]), 1..10)
                .boxed()
        }
    }
}

fn publish() -> impl Strategy<Value = Packet> {
    (
        topic(),
        payload(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        1..=u16::MAX,
    )
        .prop_map(|(topic, payload, qos, dup, retain, pkid)| {
            Packet::Publish(Publish {
                topic,
                payload,
                qos,
                dup,
                retain,
                // The packet id is only on the wire at QoS 1.
                pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
            })
        })
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    prop_oneof![
        connect(v),
        (any::<bool>(), connack_code(v)).prop_map(|(session_present, code)| {
            Packet::ConnAck(ConnAck {
                session_present,
                code,
            })
        }),
        publish(),
        (any::<u16>(), puback_code(v))
            .prop_map(|(pkid, code)| Packet::PubAck(PubAck { pkid, code })),
        (
            1..=u16::MAX,
            proptest::collection::vec((filter(), qos()), 1..6)
        )
            .prop_map(|(pkid, filters)| Packet::Subscribe(Subscribe { pkid, filters })),
        (
            any::<u16>(),
            proptest::collection::vec(suback_code(v), 1..10)
        )
            .prop_map(|(pkid, codes)| Packet::SubAck(SubAck { pkid, codes })),
        (1..=u16::MAX, proptest::collection::vec(filter(), 1..6))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
        (any::<u16>(), unsuback_codes(v))
            .prop_map(|(pkid, codes)| Packet::UnsubAck(UnsubAck { pkid, codes })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect_code(v).prop_map(|code| Packet::Disconnect(Disconnect { code })),
    ]
    .boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

fn versioned_packets() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(|v| (Just(v), proptest::collection::vec(packet(v), 1..8)))
}

/// Decode everything currently decodable, checking the buffer contract on every call.
fn drain(
    buf: &mut BytesMut,
    v: ProtocolVersion,
    max: usize,
    out: &mut Vec<Packet>,
) -> Result<(), TestCaseError> {
    loop {
        let before = buf.len();
        match decode(buf, v, max) {
            Ok(Some(p)) => {
                prop_assert!(buf.len() < before, "Ok(Some) without consuming");
                out.push(p);
            }
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("decode error {e}"))),
        }
    }
}

/// Feed arbitrary input to `decode` until it stops, checking the buffer contract.
fn feed_arbitrary(bytes: &[u8], v: ProtocolVersion, max: usize) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        match decode(&mut buf, v, max) {
            Ok(Some(_)) => prop_assert!(buf.len() < before, "Ok(Some) without consuming"),
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(DecodeError::TooLarge { frame_len }) => {
                prop_assert_eq!(buf.len(), before, "TooLarge consumed bytes");
                prop_assert!(frame_len > max);
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

proptest! {
    #[test]
    fn round_trip(
        (v, packet) in versioned_packet(),
        prefix in proptest::collection::vec(any::<u8>(), 0..64),
        suffix in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        // Encoding after arbitrary existing bytes leaves them intact.
        let mut out = BytesMut::from(&prefix[..]);
        let written = encode(&packet, v, &mut out, MAX);
        prop_assert_eq!(written, Ok(out.len() - prefix.len()));
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        let frame = out.split_off(prefix.len());

        // Decoding gives the same packet and consumes exactly the encoded bytes.
        let mut buf = frame.clone();
        buf.extend_from_slice(&suffix);
        prop_assert_eq!(decode(&mut buf, v, MAX), Ok(Some(packet.clone())));
        prop_assert_eq!(&buf[..], &suffix[..]);

        // Every strict prefix of the frame is incomplete and left untouched.
        for cut in [0, 1, frame.len() / 2, frame.len() - 1] {
            let mut partial = BytesMut::from(&frame[..cut]);
            prop_assert_eq!(decode(&mut partial, v, MAX), Ok(None));
            prop_assert_eq!(partial.len(), cut);
        }
    }

    #[test]
    fn chunking_invariance(
        (v, packets) in versioned_packets(),
        cuts in proptest::collection::vec(0usize..200, 0..40),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            prop_assert!(encode(p, v, &mut stream, MAX).is_ok());
        }
        let stream = stream.freeze();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        for cut in cuts {
            let end = (pos + cut).min(stream.len());
            buf.extend_from_slice(&stream[pos..end]);
            pos = end;
            drain(&mut buf, v, MAX, &mut decoded)?;
        }
        buf.extend_from_slice(&stream[pos..]);
        drain(&mut buf, v, MAX, &mut decoded)?;
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        max in select(vec![0usize, 3, 64, 300, MAX]),
    ) {
        for v in VERSIONS {
            feed_arbitrary(&bytes, v, max)?;
        }
    }

    #[test]
    fn mutated_packets_never_panic(
        (v, packet) in versioned_packet(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in any::<prop::sample::Index>(),
    ) {
        let mut out = BytesMut::new();
        prop_assert!(encode(&packet, v, &mut out, MAX).is_ok());
        let mut bytes = out.to_vec();
        for (index, value) in edits {
            let i = index.index(bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b = value;
            }
        }
        for other in VERSIONS {
            feed_arbitrary(&bytes, other, MAX)?;
            feed_arbitrary(&bytes[..truncate.index(bytes.len() + 1)], other, MAX)?;
        }
    }

    #[test]
    fn publish_size_matches_encoding(
        v in version(),
        topic in topic(),
        len in prop_oneof![0usize..300, 16_000usize..16_600, 2_096_900usize..2_097_300],
        qos in qos(),
        pkid in 1..=u16::MAX,
    ) {
        let packet = Packet::Publish(Publish {
            topic: topic.clone(),
            payload: Bytes::from(vec![0u8; len]),
            qos,
            dup: false,
            retain: false,
            pkid,
        });
        let mut out = BytesMut::new();
        let written = encode(&packet, v, &mut out, usize::MAX);
        let expected = publish_size(v, topic.len(), len, qos);
        prop_assert_eq!(written, Ok(expected));
        prop_assert_eq!(out.len(), expected);
    }
}
