//! Property tests over random sequences of commands, transport events, server packets and
//! time steps, checking the connection's invariants after every step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use common::{server_publish, Harness};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{Command, Config, Credentials, Event, Input, QoS, RequestId, Subscription};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        qos1: bool,
        len: usize,
    },
    Open,
    DropTransport,
    ConnAck(u8),
    /// PUBACK for the n-th outstanding packet id (or a random id if none).
    PubAck {
        pick: usize,
        code: u8,
    },
    /// PUBACK for a packet id acknowledged before.
    DuplicatePubAck {
        pick: usize,
    },
    UnknownPubAck(u16),
    SubAck,
    Publish2Client {
        qos1: bool,
        pkid: u16,
        len: usize,
    },
    PingResp,
    Disconnect(u8),
    Garbage(Vec<u8>),
    Advance(u64),
    AdvanceToTimeout,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), 0usize..3000).prop_map(|(qos1, len)| Op::Publish { qos1, len }),
        4 => Just(Op::Open),
        1 => Just(Op::DropTransport),
        4 => prop_oneof![Just(0u8), Just(0), Just(0), Just(5), Just(0x86), Just(0x88), Just(0x9F)]
            .prop_map(Op::ConnAck),
        8 => (any::<usize>(), prop_oneof![Just(0u8), Just(0), Just(0), Just(0x10), Just(0x97), Just(0x99)])
            .prop_map(|(pick, code)| Op::PubAck { pick, code }),
        2 => any::<usize>().prop_map(|pick| Op::DuplicatePubAck { pick }),
        1 => any::<u16>().prop_map(Op::UnknownPubAck),
        2 => Just(Op::SubAck),
        2 => (any::<bool>(), prop_oneof![Just(0u16), 1u16..10], 0usize..200)
            .prop_map(|(qos1, pkid, len)| Op::Publish2Client { qos1, pkid, len }),
        1 => Just(Op::PingResp),
        1 => prop_oneof![Just(0x8Eu8), Just(0x83), Just(0x97), Just(0x00)].prop_map(Op::Disconnect),
        1 => proptest::collection::vec(any::<u8>(), 1..12).prop_map(Op::Garbage),
        4 => (0u64..90_000).prop_map(Op::Advance),
        4 => Just(Op::AdvanceToTimeout),
        1 => Just(Op::Close),
    ]
}

const MAX_INFLIGHT: u16 = 5;
const MAX_BUFFERED: usize = 20_000;
const MAX_INCOMING: usize = 4096;

fn model_config(version: ProtocolVersion, seed: u64) -> Config {
    let mut c = Config::new(Credentials::AccessToken("TOKEN".into()));
    c.protocol = version;
    c.max_inflight = MAX_INFLIGHT;
    c.max_buffered_bytes = MAX_BUFFERED;
    c.max_incoming_packet = MAX_INCOMING;
    c.max_publish_attempts = 3;
    c.publish_timeout = Some(Duration::from_secs(200));
    c.reconnect.seed = seed;
    c.subscriptions = vec![Subscription::new(
        "v1/devices/me/rpc/request/+",
        QoS::AtLeastOnce,
    )];
    // The model is of the MQTT session; session limits, pacing and push-back are modelled
    // separately (`tests/limits.rs`).
    c.limits = gateway_proto::LimitsConfig::disabled();
    c
}

/// What the scripted broker knows about the current transport.
#[derive(Default)]
struct Wire {
    connect_seen: bool,
    connack_sent: bool,
    /// Packet ids of client PUBLISH (QoS 1) not yet acknowledged by us.
    outstanding: Vec<u16>,
    acked: Vec<u16>,
    subscribe: Option<u16>,
    /// Garbage was sent: later packets may be read as part of it.
    garbage: bool,
    /// Request ids whose PUBLISH we acknowledged with success, by packet id at the time.
    publish_pkid_to_payload_len: HashMap<u16, usize>,
}

struct Model {
    h: Harness,
    wire: Wire,
    qos_of: HashMap<RequestId, bool>,
    outcomes: HashMap<RequestId, u32>,
}

impl Model {
    fn absorb_client_bytes(&mut self) {
        for p in self.h.client_packets() {
            if !self.wire.connack_sent {
                assert!(
                    matches!(p, Packet::Connect(_)) && !self.wire.connect_seen,
                    "only one CONNECT may precede CONNACK, got {p:?}"
                );
                self.wire.connect_seen = true;
                continue;
            }
            match p {
                Packet::Publish(p) if p.qos == wire::QoS::AtLeastOnce => {
                    assert_ne!(p.pkid, 0, "QoS 1 publish with packet id 0");
                    assert!(
                        !self.wire.outstanding.contains(&p.pkid)
                            && self.wire.subscribe != Some(p.pkid),
                        "packet id {} reused while outstanding",
                        p.pkid
                    );
                    self.wire.outstanding.push(p.pkid);
                    self.wire
                        .publish_pkid_to_payload_len
                        .insert(p.pkid, p.payload.len());
                }
                Packet::Subscribe(s) => {
                    assert_ne!(s.pkid, 0);
                    assert!(!self.wire.outstanding.contains(&s.pkid));
                    self.wire.subscribe = Some(s.pkid);
                }
                Packet::Connect(_) => panic!("CONNECT after CONNACK"),
                _ => {}
            }
        }
        assert!(
            self.wire.outstanding.len() <= usize::from(MAX_INFLIGHT),
            "in-flight window exceeded on the wire"
        );
    }

    fn absorb_events(&mut self) {
        for e in self.h.take_events() {
            let id = match e {
                Event::Delivered(id) => {
                    assert_eq!(self.qos_of.get(&id), Some(&true), "Delivered for QoS 0");
                    id
                }
                Event::Sent(id) => {
                    assert_eq!(self.qos_of.get(&id), Some(&false), "Sent for QoS 1");
                    id
                }
                Event::Failed { request, .. } => request,
                _ => continue,
            };
            let n = self.outcomes.entry(id).or_insert(0);
            *n += 1;
            assert_eq!(*n, 1, "request {id} got a second outcome");
        }
    }

    fn transport_changed(&mut self) {
        if !self.h.transport_open {
            self.wire = Wire::default();
        }
    }

    fn step(&mut self, op: Op) {
        let open = self.h.transport_open;
        let mut fired_timeout = false;
        match op {
            Op::Publish { qos1, len } => {
                let qos = if qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                let cmd = Command::Publish {
                    topic: "v1/gateway/telemetry".into(),
                    payload: Bytes::from(vec![b'x'; len]),
                    qos,
                };
                if let Ok(id) = self.h.conn.command(self.h.now, cmd) {
                    assert!(self.qos_of.insert(id, qos1).is_none(), "request id reused");
                }
                self.h.drain();
            }
            Op::Open if self.h.open_requested => {
                self.h.open();
                self.wire = Wire::default();
            }
            Op::DropTransport if open || self.h.open_requested => {
                self.h.open_requested = false;
                self.h.drop_transport();
            }
            Op::ConnAck(code) if open && self.wire.connect_seen => {
                let first = !self.wire.connack_sent;
                self.wire.connack_sent = true;
                self.h.send(Packet::ConnAck(wire::ConnAck {
                    session_present: false,
                    code,
                }));
                if (!first || code != 0) && !self.wire.garbage {
                    // Refused, or a second CONNACK (a protocol error): the transport ends.
                    assert!(!self.h.transport_open);
                }
            }
            Op::PubAck { pick, code } if open && self.wire.connack_sent => {
                let pkid = if self.wire.outstanding.is_empty() {
                    (pick % 7) as u16 + 1
                } else {
                    self.wire
                        .outstanding
                        .remove(pick % self.wire.outstanding.len())
                };
                self.wire.acked.push(pkid);
                self.h.send(Packet::PubAck(wire::PubAck { pkid, code }));
            }
            Op::DuplicatePubAck { pick }
                if open && self.wire.connack_sent && !self.wire.acked.is_empty() =>
            {
                let pkid = self.wire.acked[pick % self.wire.acked.len()];
                // Only a true duplicate: an id not in use again.
                if !self.wire.outstanding.contains(&pkid) {
                    self.h.send(Packet::PubAck(wire::PubAck { pkid, code: 0 }));
                }
            }
            Op::UnknownPubAck(pkid)
                if open
                    && self.wire.connack_sent
                    && pkid != 0
                    && !self.wire.outstanding.contains(&pkid)
                    && self.wire.subscribe != Some(pkid) =>
            {
                self.h.send(Packet::PubAck(wire::PubAck { pkid, code: 0 }));
            }
            Op::SubAck if open && self.wire.connack_sent => {
                if let Some(pkid) = self.wire.subscribe.take() {
                    self.h.send(Packet::SubAck(wire::SubAck {
                        pkid,
                        codes: vec![1],
                    }));
                }
            }
            Op::Publish2Client { qos1, pkid, len } if open && self.wire.connack_sent => {
                self.h.send(server_publish(
                    "v1/devices/me/rpc/request/1",
                    vec![b'{'; len],
                    qos1.then_some(pkid),
                ));
            }
            Op::PingResp if open && self.wire.connack_sent => self.h.send(Packet::PingResp),
            Op::Disconnect(code) if open && self.wire.connack_sent => {
                let code = if self.h.version == ProtocolVersion::V311 {
                    0
                } else {
                    code
                };
                self.h.send(Packet::Disconnect(wire::Disconnect { code }));
            }
            Op::Garbage(bytes) if open => {
                self.wire.garbage = true;
                self.h.send_bytes(&bytes);
            }
            Op::Advance(ms) => {
                self.h.advance(Duration::from_millis(ms));
                fired_timeout = true;
            }
            Op::AdvanceToTimeout if self.h.conn.poll_timeout().is_some() => {
                self.h.advance_to_timeout();
                fired_timeout = true;
            }
            Op::Close => {
                self.h.conn.close(self.h.now);
                self.h.drain();
            }
            _ => {}
        }
        if self.h.transport_open {
            self.absorb_client_bytes();
        } else {
            self.h.to_server.clear();
        }
        self.transport_changed();
        self.absorb_events();
        self.check(fired_timeout);
    }

    fn check(&self, fired_timeout: bool) {
        let stats = self.h.conn.stats();
        assert!(stats.inflight <= usize::from(MAX_INFLIGHT));
        assert!(stats.buffered_bytes <= MAX_BUFFERED);
        assert!(stats.receive_buffer <= MAX_INCOMING + 5 + 4096);
        let pkids = self.h.conn.pkids_in_use();
        assert!(!pkids.contains(&0));
        assert_eq!(pkids.iter().collect::<HashSet<_>>().len(), pkids.len());
        if fired_timeout {
            if let Some(t) = self.h.conn.poll_timeout() {
                assert!(t > self.h.now, "a fired timer is still due");
            }
        }
        // Every accepted request is either finished or still accounted for.
        let finished = self.outcomes.len();
        assert_eq!(self.qos_of.len(), finished + stats.unfinished_requests);
    }
}

fn run(version: ProtocolVersion, seed: u64, ops: Vec<Op>) {
    let mut m = Model {
        h: Harness::new(model_config(version, seed)),
        wire: Wire::default(),
        qos_of: HashMap::new(),
        outcomes: HashMap::new(),
    };
    for op in ops {
        m.step(op);
    }
    // Closing finishes everything: every request ends in exactly one outcome.
    m.h.conn.close(m.h.now);
    m.h.drain();
    m.absorb_events();
    for id in m.qos_of.keys() {
        assert_eq!(m.outcomes.get(id), Some(&1), "request {id} has no outcome");
    }
    assert_eq!(m.h.conn.stats().buffered_bytes, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_keep_every_invariant_v5(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..250)) {
        run(ProtocolVersion::V5, seed, ops);
    }

    #[test]
    fn random_sessions_keep_every_invariant_v311(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..250)) {
        run(ProtocolVersion::V311, seed, ops);
    }
}

// ----- split invariance -------------------------------------------------------------------

fn server_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (
            any::<bool>(),
            1u16..20,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(qos1, pkid, payload)| server_publish(
                "v1/gateway/attributes",
                payload,
                qos1.then_some(pkid)
            )),
        (1u16..40, prop_oneof![Just(0u8), Just(0x97)])
            .prop_map(|(pkid, code)| Packet::PubAck(wire::PubAck { pkid, code })),
        Just(Packet::PingResp),
    ]
}

/// Feeds CONNACK + `packets` to a fresh connected client, split at `cuts`; returns the
/// events and the bytes the client wrote afterwards.
fn feed(version: ProtocolVersion, packets: &[Packet], cuts: &[usize]) -> (Vec<Event>, Vec<u8>) {
    let mut c = model_config(version, 1);
    c.max_inflight = 50;
    c.subscriptions.clear();
    let mut h = Harness::new(c);
    h.open();
    h.client_packets();
    for _ in 0..30 {
        h.conn
            .command(h.now, Command::publish("t", "x"))
            .expect("accepted");
    }
    let mut stream = h
        .encode(&Packet::ConnAck(wire::ConnAck {
            session_present: false,
            code: 0,
        }))
        .to_vec();
    for p in packets {
        stream.extend_from_slice(&h.encode(p));
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    for w in points.windows(2) {
        h.conn
            .handle_input(h.now, Input::Bytes(&stream[w[0]..w[1]]));
        h.drain();
    }
    let written: Vec<u8> = h.to_server.to_vec();
    (h.take_events(), written)
}

proptest! {
    #[test]
    fn inbound_bytes_split_anywhere_give_the_same_events_and_answers(
        packets in proptest::collection::vec(server_packet(), 0..25),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let whole = feed(version, &packets, &[]);
        let split = feed(version, &packets, &cuts);
        prop_assert_eq!(whole, split);
    }
}
