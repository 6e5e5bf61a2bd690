//! A scripted server for the client-side targets: it decodes everything the client transmits
//! (checking that the client only ever writes valid MQTT) and remembers what awaits an answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::BytesMut;
use gateway_proto::wire::{self, Packet, ProtocolVersion, QoS};
use gateway_proto::{Connection, Event, Input, Output, RequestId};

/// The server's view of one transport, and the client's outcome bookkeeping.
#[derive(Debug)]
pub struct Server {
    /// Protocol of the client's config.
    pub version: ProtocolVersion,
    /// Bytes of the current transport not yet decoded.
    rx: BytesMut,
    /// Whether the client's CONNECT has been seen on this transport.
    connected: bool,
    /// A transport is open (the client asked for one and it was opened).
    pub open: bool,
    /// A transport was asked for and not yet opened or refused.
    pub wanted: bool,
    /// QoS 1 packet ids the client sent on this transport, not yet acknowledged.
    pub unacked: BTreeSet<u16>,
    /// The last SUBSCRIBE's packet id and filter count.
    pub subscribe: Option<(u16, usize)>,
    /// Every PUBLISH the client sent (topic, payload), in order, all transports.
    pub published: Vec<(String, Vec<u8>)>,
    /// Outcome events per request id.
    pub outcomes: BTreeMap<RequestId, usize>,
    /// Every event, for the checks of a target.
    pub events: Vec<Event>,
}

impl Server {
    /// A server for a client speaking `version`.
    pub fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            rx: BytesMut::new(),
            connected: false,
            open: false,
            wanted: false,
            unacked: BTreeSet::new(),
            subscribe: None,
            published: Vec::new(),
            outcomes: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Drains the client's outputs: decodes transmitted bytes, tracks transports and counts
    /// outcomes (panicking on a second outcome for one request).
    pub fn drain(&mut self, conn: &mut Connection) {
        while let Some(out) = conn.poll_output() {
            match out {
                Output::Transmit(bytes) => {
                    assert!(self.open, "bytes transmitted without an open transport");
                    self.rx.extend_from_slice(&bytes);
                    self.decode();
                }
                Output::OpenTransport => {
                    assert!(!self.open, "a second transport asked for while one is open");
                    self.wanted = true;
                }
                Output::CloseTransport => self.reset(),
                Output::Event(e) => {
                    if let Some(id) = e.request() {
                        let n = self.outcomes.entry(id).or_insert(0);
                        *n += 1;
                        assert_eq!(*n, 1, "second outcome for {id}: {e:?}");
                    }
                    if matches!(e, Event::Disconnected { .. }) {
                        self.reset();
                    }
                    self.events.push(e);
                }
                _ => {}
            }
        }
    }

    /// The transport is gone: nothing of it is decoded any more.
    pub fn reset(&mut self) {
        self.rx.clear();
        self.connected = false;
        self.open = false;
        self.wanted = false;
        self.unacked.clear();
        self.subscribe = None;
    }

    /// Opens the transport the client asked for.
    pub fn open(&mut self, conn: &mut Connection, now: Instant) {
        if self.wanted {
            self.wanted = false;
            self.open = true;
            conn.handle_input(now, Input::TransportOpened);
            self.drain(conn);
        }
    }

    fn decode(&mut self) {
        loop {
            if !self.connected {
                match wire::decode_first_connect(&mut self.rx, 268_435_455) {
                    Ok(None) => return,
                    Ok(Some((v, _))) => {
                        assert_eq!(v, self.version, "CONNECT names the configured version");
                        self.connected = true;
                    }
                    Err(e) => panic!("client sent an invalid CONNECT: {e}"),
                }
                continue;
            }
            let packet = match wire::decode(&mut self.rx, self.version, 268_435_455) {
                Ok(None) => return,
                Ok(Some(p)) => p,
                Err(e) => panic!("client sent an undecodable packet: {e}"),
            };
            match packet {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        assert_ne!(p.pkid, 0, "client QoS 1 publish with packet id 0");
                        self.unacked.insert(p.pkid);
                    }
                    self.published.push((p.topic, p.payload.to_vec()));
                }
                Packet::Subscribe(s) => self.subscribe = Some((s.pkid, s.filters.len())),
                Packet::PubAck(_) | Packet::PingReq | Packet::Disconnect(_) => {}
                other => panic!("client sent a packet a client must not send: {other:?}"),
            }
        }
    }
}

/// Encodes a server packet for the client.
pub fn server_bytes(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    match packet {
        Packet::Publish(p) => {
            let r = wire::PublishRef {
                topic: &p.topic,
                payload: &p.payload,
                qos: p.qos,
                dup: p.dup,
                retain: p.retain,
                pkid: p.pkid,
            };
            let _ = wire::encode_publish_allowing_pkid_zero(&r, version, &mut out, 268_435_455);
        }
        other => {
            let _ = wire::encode(other, version, &mut out, 268_435_455);
        }
    }
    out.to_vec()
}
