//! The QoS 0 fast path ([`Connection::send_at_once`]) must be invisible: the same random
//! session run with and without it gives the same bytes on the wire, the same events in
//! the same places, and the same statistics.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{Connection, Input};
use crate::codec::{self, ConnAck, Packet, ProtocolVersion, PubAck, QoS, SubAck};
use crate::command::Command;
use crate::config::{Config, Credentials};
use crate::limits::LimitsConfig;
use crate::output::Output;
use crate::payload::TelemetryEntry;

#[derive(Debug, Clone)]
enum Op {
    /// Gateway telemetry (QoS 0 by configuration) for one of a few sub-devices.
    Telemetry(u8),
    /// A raw publish at this QoS.
    Publish(bool),
    /// Announce a sub-device.
    Announce(u8),
    /// The broker acknowledges the oldest unacknowledged publish or subscribe.
    Ack,
    /// The transport dies.
    Drop,
    /// Time passes; timers fire; a requested transport opens and the broker accepts.
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6).prop_map(Op::Telemetry),
        2 => any::<bool>().prop_map(Op::Publish),
        1 => (0u8..6).prop_map(Op::Announce),
        4 => Just(Op::Ack),
        1 => Just(Op::Drop),
        1 => (0u16..5000).prop_map(Op::Advance),
    ]
}

/// Everything observable: wire bytes, and each event with how many bytes preceded it.
#[derive(Debug, PartialEq, Eq, Default)]
struct Trace {
    wire: Vec<u8>,
    events: Vec<(usize, String)>,
    stats: String,
}

struct Broker {
    conn: Connection,
    now: Instant,
    open: bool,
    open_requested: bool,
    to_server: BytesMut,
    /// Packet ids the client is waiting on, oldest first (publishes and subscribes).
    unacked: VecDeque<(u16, bool)>,
    trace: Trace,
}

const V: ProtocolVersion = ProtocolVersion::V311;

impl Broker {
    fn new(direct: bool, now: Instant) -> Self {
        let mut config = Config::new(Credentials::AccessToken("T".into()));
        config.protocol = V;
        config.client_id = "gw".into();
        config.reconnect.jitter_percent = 0;
        config.telemetry_qos = QoS::AtMostOnce;
        config.max_inflight = 2;
        config.limits = LimitsConfig::disabled();
        let mut conn = Connection::new(config, now).expect("valid config");
        conn.direct_qos0 = direct;
        let mut b = Self {
            conn,
            now,
            open: false,
            open_requested: false,
            to_server: BytesMut::new(),
            unacked: VecDeque::new(),
            trace: Trace::default(),
        };
        b.drain();
        b.serve();
        b
    }

    fn drain(&mut self) {
        while let Some(out) = self.conn.poll_output() {
            match out {
                Output::Transmit(bytes) => {
                    self.trace.wire.extend_from_slice(&bytes);
                    if self.open {
                        self.to_server.extend_from_slice(&bytes);
                    }
                }
                Output::Event(e) => self
                    .trace
                    .events
                    .push((self.trace.wire.len(), format!("{e:?}"))),
                Output::OpenTransport => self.open_requested = true,
                Output::CloseTransport => {
                    self.open = false;
                    self.to_server.clear();
                    self.unacked.clear();
                }
            }
        }
    }

    fn input(&mut self, input: Input<'_>) {
        self.conn.handle_input(self.now, input);
        self.drain();
    }

    fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        codec::encode(&packet, V, &mut out, 1 << 20).expect("encodes");
        self.input(Input::Bytes(&out));
    }

    /// Opens a requested transport and answers what the client wrote (CONNECT → CONNACK).
    fn serve(&mut self) {
        if self.open_requested && !self.open {
            self.open_requested = false;
            self.open = true;
            self.input(Input::TransportOpened);
        }
        while let Ok(Some(p)) = codec::decode(&mut self.to_server, V, 1 << 20) {
            match p {
                Packet::Connect(_) => self.send(Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: 0,
                })),
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce => {
                    self.unacked.push_back((p.pkid, false));
                }
                Packet::Subscribe(s) => self.unacked.push_back((s.pkid, true)),
                _ => {}
            }
        }
    }

    fn step(&mut self, op: &Op) {
        let command = match op {
            Op::Telemetry(d) => Some(Command::Gateway(crate::GatewayCommand::Telemetry {
                device: format!("Device {d}"),
                entries: vec![TelemetryEntry::now(
                    [("t".to_owned(), serde_json::json!(1))]
                        .into_iter()
                        .collect(),
                )],
            })),
            Op::Publish(qos1) => Some(Command::Publish {
                topic: "v1/devices/me/telemetry".into(),
                payload: Bytes::from_static(b"{\"a\":1}"),
                qos: if *qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                },
            }),
            Op::Announce(d) => Some(Command::connect_device(format!("Device {d}"), None)),
            Op::Ack => {
                if let Some((pkid, subscribe)) = self.unacked.pop_front() {
                    if subscribe {
                        self.send(Packet::SubAck(SubAck {
                            pkid,
                            codes: vec![1; 8],
                        }));
                    } else {
                        self.send(Packet::PubAck(PubAck { pkid, code: 0 }));
                    }
                }
                None
            }
            Op::Drop => {
                if self.open {
                    self.open = false;
                    self.to_server.clear();
                    self.unacked.clear();
                    self.input(Input::TransportClosed);
                }
                None
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.conn.handle_timeout(self.now);
                self.drain();
                None
            }
        };
        if let Some(command) = command {
            let result = self.conn.command(self.now, command);
            self.trace
                .events
                .push((self.trace.wire.len(), format!("command {result:?}")));
            self.drain();
        }
        self.serve();
    }
}

fn run(ops: &[Op], direct: bool, t0: Instant) -> Trace {
    let mut b = Broker::new(direct, t0);
    for op in ops {
        b.step(op);
    }
    let mut stats = b.conn.stats();
    stats.pending_outputs = 0;
    b.trace.stats = format!("{stats:?}");
    b.trace
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn qos0_fast_path_changes_nothing_observable(ops in proptest::collection::vec(op(), 1..120)) {
        // One start instant for both: events carry instants.
        let t0 = Instant::now();
        let queued = run(&ops, false, t0);
        let direct = run(&ops, true, t0);
        prop_assert_eq!(queued, direct);
    }
}

#[test]
fn the_fast_path_is_taken() {
    // Connected, nothing queued, a known device: the message leaves without the store.
    let ops = [
        Op::Advance(0),
        Op::Ack,
        Op::Announce(1),
        Op::Ack,
        Op::Telemetry(1),
        Op::Telemetry(1),
    ];
    let mut b = Broker::new(true, Instant::now());
    for op in &ops {
        b.step(op);
    }
    assert_eq!(b.conn.stats().sent_qos0, 2);
    assert_eq!(b.conn.direct_qos0_sent, 2);
}
