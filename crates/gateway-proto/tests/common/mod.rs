//! A scripted broker with a virtual clock: it reads what the client writes with the same
//! wire codec and answers with packets the test chooses.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{Config, Connection, Credentials, Event, Input, LimitsConfig, Output};

/// Remaining-length limit the scripted broker reads with (larger than any test packet).
const SERVER_MAX: usize = 16 * 1024 * 1024;

pub struct Harness {
    pub conn: Connection,
    pub now: Instant,
    pub version: ProtocolVersion,
    /// The client asked for a transport and we have not answered yet.
    pub open_requested: bool,
    /// A transport is open.
    pub transport_open: bool,
    /// The client asked to close the current transport.
    pub closed_by_client: u32,
    /// Bytes the client wrote and the broker has not decoded yet.
    pub to_server: BytesMut,
    /// Every raw transmit, in order.
    pub transmits: Vec<Bytes>,
    pub events: Vec<Event>,
}

pub fn config(version: ProtocolVersion) -> Config {
    let mut c = Config::new(Credentials::AccessToken("TOKEN".into()));
    c.protocol = version;
    c.client_id = "gw-1".into();
    c.reconnect.jitter_percent = 0;
    // MQTT-level scenarios script their own SUBSCRIBEs; the API tests turn this back on.
    c.subscribe_api = false;
    // These peers script MQTT and API mechanics and never answer `getSessionLimits`: the
    // limits machinery (asking, holding, pacing, splitting, push-back) is off here and has
    // its own scripted tests in `tests/limits.rs`.
    c.limits = LimitsConfig::disabled();
    c
}

impl Harness {
    pub fn new(config: Config) -> Self {
        let version = config.protocol;
        let now = Instant::now();
        let conn = Connection::new(config, now).expect("valid config");
        let mut h = Self {
            conn,
            now,
            version,
            open_requested: false,
            transport_open: false,
            closed_by_client: 0,
            to_server: BytesMut::new(),
            transmits: Vec::new(),
            events: Vec::new(),
        };
        h.drain();
        h
    }

    /// Drains the client's outputs, routing each to the broker side.
    pub fn drain(&mut self) {
        while let Some(out) = self.conn.poll_output() {
            match out {
                Output::Transmit(bytes) => {
                    assert!(
                        self.transport_open,
                        "client transmitted {bytes:02x?} with no transport open"
                    );
                    self.to_server.extend_from_slice(&bytes);
                    self.transmits.push(bytes);
                }
                Output::Event(e) => self.events.push(e),
                Output::OpenTransport => {
                    assert!(
                        !self.transport_open,
                        "OpenTransport while a transport is open"
                    );
                    self.open_requested = true;
                }
                Output::CloseTransport => {
                    self.transport_open = false;
                    self.open_requested = false;
                    self.closed_by_client += 1;
                }
                other => panic!("unknown output {other:?}"),
            }
        }
    }

    pub fn input(&mut self, input: Input<'_>) {
        self.conn.handle_input(self.now, input);
        self.drain();
    }

    pub fn open(&mut self) {
        assert!(self.open_requested, "client did not ask for a transport");
        self.open_requested = false;
        self.transport_open = true;
        self.to_server.clear();
        self.input(Input::TransportOpened);
    }

    /// The transport dies under the client.
    pub fn drop_transport(&mut self) {
        self.transport_open = false;
        self.to_server.clear();
        self.input(Input::TransportClosed);
    }

    /// Packets the client has written since the last call.
    pub fn client_packets(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(p) = wire::decode(&mut self.to_server, self.version, SERVER_MAX)
            .expect("client bytes decode")
        {
            packets.push(p);
        }
        assert!(self.to_server.is_empty(), "client wrote a partial packet");
        packets
    }

    /// Encodes a broker packet. MQTT 3.1.1 has no PUBACK/DISCONNECT reason codes, so on v3
    /// they are dropped, as ThingsBoard does.
    pub fn encode(&self, packet: &Packet) -> Bytes {
        let mut packet = packet.clone();
        if self.version == ProtocolVersion::V311 {
            match &mut packet {
                Packet::PubAck(a) => a.code = 0,
                Packet::Disconnect(d) => d.code = 0,
                _ => {}
            }
        }
        let mut buf = BytesMut::new();
        wire::encode(&packet, self.version, &mut buf, SERVER_MAX).expect("server packet encodes");
        buf.freeze()
    }

    /// The broker sends `packet`. A QoS 1 PUBLISH with packet id 0 is written the way
    /// ThingsBoard's unwrapped counter writes it (the codec itself refuses to).
    pub fn send(&mut self, packet: Packet) {
        let bytes = match &packet {
            Packet::Publish(p) if p.qos == wire::QoS::AtLeastOnce && p.pkid == 0 => {
                let mut with_id = p.clone();
                with_id.pkid = 1;
                let mut bytes = self.encode(&Packet::Publish(with_id)).to_vec();
                // Fixed header: type byte plus the remaining-length varint.
                let header = (1..5).find(|i| bytes[*i] & 0x80 == 0).map_or(2, |i| i + 1);
                let at = header + 2 + p.topic.len();
                bytes[at] = 0;
                bytes[at + 1] = 0;
                Bytes::from(bytes)
            }
            _ => self.encode(&packet),
        };
        self.input(Input::Bytes(&bytes));
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.input(Input::Bytes(bytes));
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.input(Input::Timeout);
    }

    /// Jumps to the client's next deadline and fires it.
    pub fn advance_to_timeout(&mut self) -> Duration {
        let at = self.conn.poll_timeout().expect("a timer is armed");
        let by = at.saturating_duration_since(self.now);
        self.now = self.now.max(at);
        self.input(Input::Timeout);
        by
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Opens the transport, checks the CONNECT, accepts it and answers the SUBSCRIBE if
    /// there is one. Returns the packets the client sent after CONNACK (SUBSCRIBE excluded).
    pub fn connect(&mut self) -> Vec<Packet> {
        self.open();
        let packets = self.client_packets();
        assert!(
            matches!(packets.as_slice(), [Packet::Connect(_)]),
            "expected only CONNECT before CONNACK, got {packets:?}"
        );
        self.send(Packet::ConnAck(wire::ConnAck {
            session_present: false,
            code: 0,
        }));
        let mut after = Vec::new();
        for p in self.client_packets() {
            match p {
                Packet::Subscribe(s) => {
                    let codes = s.filters.iter().map(|_| 1).collect();
                    self.send(Packet::SubAck(wire::SubAck {
                        pkid: s.pkid,
                        codes,
                    }));
                }
                other => after.push(other),
            }
        }
        after.extend(self.client_packets());
        let before = self.events.len();
        self.events
            .retain(|e| !matches!(e, Event::Connected { .. }));
        assert_eq!(before - self.events.len(), 1, "exactly one Connected event");
        after
    }
}

pub fn publishes(packets: &[Packet]) -> Vec<&wire::Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// A PUBLISH from the broker: QoS 1 with `pkid`, or QoS 0 (packet id ignored) when `pkid` is
/// `None`.
pub fn server_publish(topic: &str, payload: impl Into<Bytes>, pkid: Option<u16>) -> Packet {
    Packet::Publish(wire::Publish {
        topic: topic.into(),
        payload: payload.into(),
        qos: if pkid.is_some() {
            wire::QoS::AtLeastOnce
        } else {
            wire::QoS::AtMostOnce
        },
        dup: false,
        retain: false,
        pkid: pkid.unwrap_or(0),
    })
}
