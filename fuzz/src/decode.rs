//! Target `decode`: the MQTT codec wrapper (`gateway_proto::wire`), 3.1.1 and 5.
//!
//! Input: one selector byte, then the bytes a peer sent.
//!
//! * bit 0: protocol version (0 = 3.1.1, 1 = 5);
//! * bits 1–2: the remaining-length limit (128, 1,024, 65,536, MQTT's maximum);
//! * bit 3: decode the first packet as a server does (`decode_first_connect`, version sniffed);
//! * bits 4–7: where to split the input in two reads (sixteenths of its length).
//!
//! Checks: no panic; decoding the whole input and decoding it in two reads give the same
//! packets and the same error (framing never depends on how bytes arrive); an incomplete frame
//! leaves the buffer untouched; every decoded packet that encodes again decodes to itself.

use bytes::BytesMut;
use gateway_proto::wire::{self, DecodeError, Packet, ProtocolVersion};

const LIMITS: [usize; 4] = [128, 1024, 65_536, 268_435_455];

/// What one decode step gave.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Packet(Packet),
    Connect(ProtocolVersion, wire::Connect),
    Error(DecodeError),
}

/// Decodes everything `buf` holds, appending to `steps`; stops at the first error (the
/// connection would end) or when the rest is incomplete. Returns false after an error.
fn drain(
    buf: &mut BytesMut,
    version: &mut ProtocolVersion,
    first: &mut bool,
    max: usize,
    steps: &mut Vec<Step>,
) -> bool {
    loop {
        let before = buf.clone();
        let step = if *first {
            match wire::decode_first_connect(buf, max) {
                Ok(None) => None,
                Ok(Some((v, c))) => {
                    *version = v;
                    *first = false;
                    Some(Step::Connect(v, c))
                }
                Err(e) => Some(Step::Error(e)),
            }
        } else {
            match wire::decode(buf, *version, max) {
                Ok(None) => None,
                Ok(Some(p)) => Some(Step::Packet(p)),
                Err(e) => Some(Step::Error(e)),
            }
        };
        match step {
            None => {
                assert_eq!(
                    *buf, before,
                    "an incomplete frame must leave the buffer untouched"
                );
                return true;
            }
            Some(Step::Error(e)) => {
                if matches!(e, DecodeError::TooLarge { .. }) {
                    assert_eq!(*buf, before, "TooLarge consumes nothing");
                }
                steps.push(Step::Error(e));
                return false;
            }
            Some(s) => {
                assert!(buf.len() < before.len(), "a decoded packet consumes bytes");
                steps.push(s);
            }
        }
    }
}

fn decode_in_reads(
    reads: &[&[u8]],
    version: ProtocolVersion,
    first: bool,
    max: usize,
) -> Vec<Step> {
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    let mut version = version;
    let mut first = first;
    for read in reads {
        buf.extend_from_slice(read);
        if !drain(&mut buf, &mut version, &mut first, max, &mut steps) {
            break;
        }
    }
    steps
}

/// The target body.
pub fn run(data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let version = if sel & 1 == 0 {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let max = LIMITS[usize::from((sel >> 1) & 3)];
    let first = sel & 8 != 0;
    let split = bytes.len() * usize::from(sel >> 4) / 16;

    let whole = decode_in_reads(&[bytes], version, first, max);
    let (a, b) = bytes.split_at(split);
    let chunked = decode_in_reads(&[a, b], version, first, max);
    assert_eq!(
        whole, chunked,
        "decoding must not depend on how bytes arrive"
    );

    // Round trip: what decodes and encodes again decodes to the same packet.
    let mut v = version;
    for step in &whole {
        let (packet, ver) = match step {
            Step::Packet(p) => (p.clone(), v),
            Step::Connect(cv, c) => {
                v = *cv;
                (Packet::Connect(c.clone()), *cv)
            }
            Step::Error(_) => continue,
        };
        let mut out = BytesMut::new();
        if wire::encode(&packet, ver, &mut out, LIMITS[3]).is_err() {
            assert!(out.is_empty(), "a failed encode appends nothing");
            continue;
        }
        let again = wire::decode(&mut out, ver, LIMITS[3]);
        assert_eq!(
            again,
            Ok(Some(packet)),
            "re-encoded packet decodes to itself"
        );
        assert!(out.is_empty(), "the re-encoded frame is consumed whole");
    }
}
