//! Test harness: the sans-IO emulator on a virtual clock, with clients that speak raw MQTT
//! bytes through `gateway_proto::wire`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway_emulator::{
    Emulator, EmulatorConfig, Event, NewDevice, Output, PeerIdentity, RpcOutcome, SessionId,
};
use gateway_proto::wire::{self, Connect, Packet, Publish, QoS, Subscribe};
use gateway_proto::ProtocolVersion;
use serde_json::{Map, Value};

pub use gateway_proto::ProtocolVersion::{V311, V5};

pub const EPOCH_MS: i64 = 1_700_000_000_000;
pub const GW_TOKEN: &str = "GW_TOKEN";
pub const DEV_TOKEN: &str = "DEV_TOKEN";

#[derive(Default)]
struct Inbox {
    bytes: BytesMut,
    closed: bool,
    version: Option<ProtocolVersion>,
}

pub struct Harness {
    pub emu: Emulator,
    pub start: Instant,
    pub now: Instant,
    inbox: HashMap<SessionId, Inbox>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(EmulatorConfig::default())
    }

    pub fn with_config(config: EmulatorConfig) -> Self {
        let start = Instant::now();
        let mut emu = Emulator::new(config, start, EPOCH_MS);
        emu.create_device(NewDevice::gateway("Gateway", GW_TOKEN))
            .unwrap();
        emu.create_device(NewDevice::device("Device", DEV_TOKEN))
            .unwrap();
        Self {
            emu,
            start,
            now: start,
            inbox: HashMap::new(),
        }
    }

    pub fn pump(&mut self) {
        while let Some((id, out)) = self.emu.poll_output() {
            let inbox = self.inbox.entry(id).or_default();
            assert!(!inbox.closed, "output after close for {id}");
            match out {
                Output::Transmit(b) => inbox.bytes.extend_from_slice(&b),
                Output::Close => inbox.closed = true,
            }
        }
    }

    pub fn open(&mut self, version: ProtocolVersion) -> SessionId {
        let id = self.emu.open_session(self.now).unwrap();
        self.inbox.entry(id).or_default().version = Some(version);
        id
    }

    /// Opens a session as the transport would for `peer` (TLS, client certificate).
    pub fn open_with_peer(&mut self, version: ProtocolVersion, peer: PeerIdentity) -> SessionId {
        let id = self.emu.open_session_with_peer(self.now, peer).unwrap();
        self.inbox.entry(id).or_default().version = Some(version);
        id
    }

    /// Opens a session for `peer`, sends CONNECT; returns the id and the server's answer.
    pub fn connect_peer(
        &mut self,
        version: ProtocolVersion,
        peer: PeerIdentity,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> (SessionId, Vec<Packet>) {
        let id = self.open_with_peer(version, peer);
        self.send_connect(id, client_id, username, password);
        let packets = self.take(id);
        (id, packets)
    }

    pub fn send_connect(
        &mut self,
        id: SessionId,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) {
        self.send(
            id,
            Packet::Connect(Connect {
                client_id: client_id.to_owned(),
                keep_alive: 60,
                clean_session: true,
                username: username.map(str::to_owned),
                password: password.map(str::to_owned),
            }),
        );
    }

    pub fn send_raw(&mut self, id: SessionId, bytes: &[u8]) {
        self.emu.handle_bytes(id, self.now, bytes);
        self.pump();
    }

    pub fn send(&mut self, id: SessionId, packet: Packet) {
        let version = self.version(id);
        let mut out = BytesMut::new();
        wire::encode(&packet, version, &mut out, usize::MAX).unwrap();
        self.send_raw(id, &out);
    }

    fn version(&self, id: SessionId) -> ProtocolVersion {
        self.inbox.get(&id).and_then(|i| i.version).unwrap_or(V311)
    }

    /// Every complete packet the server sent to `id` since the last call.
    pub fn take(&mut self, id: SessionId) -> Vec<Packet> {
        self.pump();
        let version = self.version(id);
        let inbox = self.inbox.entry(id).or_default();
        let mut packets = Vec::new();
        while let Some(p) = wire::decode(&mut inbox.bytes, version, usize::MAX).unwrap() {
            packets.push(p);
        }
        assert!(inbox.bytes.is_empty(), "partial packet left");
        packets
    }

    /// Every byte the server sent to `id` since the last call, undecoded.
    pub fn take_raw(&mut self, id: SessionId) -> Vec<u8> {
        self.pump();
        let inbox = self.inbox.entry(id).or_default();
        inbox.bytes.split().to_vec()
    }

    pub fn closed(&self, id: SessionId) -> bool {
        self.inbox.get(&id).is_some_and(|i| i.closed)
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.emu.handle_timeout(self.now);
        self.pump();
    }

    /// Opens a session and sends CONNECT; returns the id and the server's answer.
    pub fn connect_with(
        &mut self,
        version: ProtocolVersion,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> (SessionId, Vec<Packet>) {
        let id = self.open(version);
        self.send_connect(id, client_id, username, password);
        let packets = self.take(id);
        (id, packets)
    }

    /// Connects with an access token and asserts CONNACK 0.
    pub fn connect(&mut self, version: ProtocolVersion, token: &str) -> SessionId {
        let (id, packets) = self.connect_with(version, "client", Some(token), None);
        assert_eq!(packets, vec![connack(0)], "connect with {token}");
        id
    }

    pub fn gateway(&mut self, version: ProtocolVersion) -> SessionId {
        self.connect(version, GW_TOKEN)
    }

    pub fn publish(&mut self, id: SessionId, topic: &str, payload: &[u8], pkid: u16) {
        let qos = if pkid == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.send(
            id,
            Packet::Publish(Publish {
                topic: topic.to_owned(),
                payload: Bytes::copy_from_slice(payload),
                qos,
                dup: false,
                retain: false,
                pkid,
            }),
        );
    }

    pub fn publish_json(&mut self, id: SessionId, topic: &str, payload: Value, pkid: u16) {
        self.publish(id, topic, payload.to_string().as_bytes(), pkid);
    }

    /// Sends a SUBSCRIBE and returns everything the server answered (SUBACK and, e.g.,
    /// pending RPCs pushed on subscription).
    pub fn subscribe_all(&mut self, id: SessionId, filters: &[(&str, QoS)]) -> Vec<Packet> {
        self.send(
            id,
            Packet::Subscribe(Subscribe {
                pkid: 77,
                filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
            }),
        );
        self.take(id)
    }

    pub fn subscribe(&mut self, id: SessionId, filters: &[(&str, QoS)]) -> Vec<u8> {
        self.send(
            id,
            Packet::Subscribe(Subscribe {
                pkid: 77,
                filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
            }),
        );
        match self.take(id).as_slice() {
            [Packet::SubAck(s)] => {
                assert_eq!(s.pkid, 77);
                s.codes.clone()
            }
            other => panic!("expected one SUBACK, got {other:?}"),
        }
    }
}

pub fn connack(code: u8) -> Packet {
    Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code,
    })
}

pub fn puback(pkid: u16, code: u8) -> Packet {
    Packet::PubAck(wire::PubAck { pkid, code })
}

pub fn disconnect(code: u8) -> Packet {
    Packet::Disconnect(wire::Disconnect { code })
}

/// The (topic, JSON payload, QoS) of a server PUBLISH.
pub fn published(packet: &Packet) -> (String, Value, QoS) {
    match packet {
        Packet::Publish(p) => (
            p.topic.clone(),
            serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
            p.qos,
        ),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// A JSON object's map (empty for anything else).
pub fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The outcome of the next completed server-side RPC among the pending events.
pub fn rpc_outcome(h: &mut Harness) -> Option<RpcOutcome> {
    while let Some(e) = h.emu.poll_event() {
        if let Event::RpcCompleted { outcome, .. } = e {
            return Some(outcome);
        }
    }
    None
}
