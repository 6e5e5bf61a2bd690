//! Target `emulator`: an emulator session fed arbitrary client bytes.
//!
//! Input: a flags byte, then the client's byte stream. The platform holds a gateway
//! (`GW_TOKEN`), a device (`DEV_TOKEN`), a device with MQTT basic credentials
//! (`cid`/`user`/`pw`), a child `Child` and a provisioning profile (`key`/`secret`). The flags
//! seed a small PRNG that splits the stream into reads, lets time pass between them (session
//! and child inactivity, client-RPC and RPC expiry fire) and interleaves control calls (server
//! RPCs, shared attribute changes, renames, rate limits, a device limit). Flag bit 0 replays
//! the whole stream on a second session afterwards (a takeover when it authenticates as the
//! same device).
//!
//! Checks: no panic; outputs only for sessions that exist and nothing after a session's
//! `Close`; every byte the emulator transmits decodes as valid MQTT of the session's version
//! that a server may send; a session buffers at most one packet of the size limit plus one
//! read; after a timeout at `now` the next deadline is later than `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gateway_emulator::{
    ClientRpcAnswer, Credentials, Emulator, EmulatorConfig, LimitConfig, NewDevice, Output,
    ProfileTopics, ProvisionProfile, ProvisionStrategy, RpcCall, SessionId, TenantLimits,
};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use serde_json::{json, Map};

/// A tiny deterministic PRNG (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The platform every run starts from.
pub fn platform(now: Instant) -> Emulator {
    let mut emu = Emulator::new(EmulatorConfig::default(), now, 1_700_000_000_000);
    let devices = [
        NewDevice::gateway("Gateway", "GW_TOKEN"),
        NewDevice::device("Dev", "DEV_TOKEN"),
        NewDevice::device("Basic", "").with_credentials(Some(
            gateway_emulator::Credentials::Basic {
                client_id: Some("cid".into()),
                username: Some("user".into()),
                password: Some("pw".into()),
            },
        )),
    ];
    for d in devices {
        if let Err(e) = emu.create_device(d) {
            panic!("setup: {e}");
        }
    }
    emu.add_provision_profile(ProvisionProfile {
        device_type: "prov".into(),
        key: "key".into(),
        secret: "secret".into(),
        strategy: ProvisionStrategy::AllowCreateNew,
    });
    emu.set_client_rpc_handler(Some(Box::new(|call| match call.method.as_str() {
        "getTime" => ClientRpcAnswer::Reply(json!({"time": 1})),
        "fail" => ClientRpcAnswer::Error("nope".into()),
        _ => ClientRpcAnswer::NoAnswer,
    })));
    emu
}

struct Fuzz {
    emu: Emulator,
    now: Instant,
    rng: Rng,
    /// Sessions opened and not closed, with what the client side decodes from them.
    open: BTreeMap<SessionId, BytesMut>,
    closed: BTreeSet<SessionId>,
    versions: BTreeMap<SessionId, ProtocolVersion>,
}

impl Fuzz {
    fn drain(&mut self) {
        for info in self.emu.sessions() {
            if let Some(v) = info.version {
                self.versions.insert(info.id, v);
            }
        }
        while let Some((id, out)) = self.emu.poll_output() {
            assert!(
                !self.closed.contains(&id),
                "output for {id} after its close"
            );
            let Some(rx) = self.open.get_mut(&id) else {
                panic!("output for a session never opened: {id}");
            };
            match out {
                Output::Transmit(bytes) => {
                    rx.extend_from_slice(&bytes);
                    let version = self
                        .versions
                        .get(&id)
                        .copied()
                        .unwrap_or(ProtocolVersion::V311);
                    loop {
                        match wire::decode(rx, version, 268_435_455) {
                            Ok(None) => break,
                            Ok(Some(p)) => check_server_packet(&p),
                            Err(e) => panic!("emulator sent an undecodable packet: {e} (session {id}, {version:?}, bytes {:?})", &bytes[..bytes.len().min(64)]),
                        }
                    }
                }
                Output::Close => {
                    self.open.remove(&id);
                    self.closed.insert(id);
                    self.emu.transport_closed(id, self.now);
                }
            }
        }
        while self.emu.poll_event().is_some() {}
    }

    fn check(&self, max_read: usize) {
        for info in self.emu.sessions() {
            assert!(
                info.buffered_bytes <= self.emu.config().max_packet_size + 5 + max_read,
                "{info:?}"
            );
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.emu.handle_timeout(self.now);
        self.drain();
        if let Some(t) = self.emu.poll_timeout() {
            assert!(
                t > self.now,
                "emulator deadline {t:?} not after {:?}",
                self.now
            );
        }
    }

    fn control(&mut self) {
        let now = self.now;
        let _ = match self.rng.below(14) {
            0 | 1 => self
                .emu
                .send_rpc("Child", RpcCall::two_way("m", json!({"a": 1})), now)
                .map(|_| ()),
            2 => self
                .emu
                .send_rpc("Dev", RpcCall::one_way("m", json!(null)), now)
                .map(|_| ()),
            3 => self
                .emu
                .send_rpc("Gateway", RpcCall::two_way("g", json!(1)), now)
                .map(|_| ()),
            4 | 5 => {
                let mut m = Map::new();
                m.insert("s".into(), json!(self.rng.below(100)));
                let name = ["Child", "Dev", "Gateway"][self.rng.below(3) as usize];
                self.emu.set_shared_attributes(name, m)
            }
            6 => self
                .emu
                .delete_shared_attributes("Child", &["s".to_owned()]),
            7 => self.emu.rename_device("Child", "Child2", now),
            8 => self.emu.rename_device("Child2", "Child", now),
            9 => {
                let limit = LimitConfig::new("3:1", "", "5:1");
                self.emu.set_rate_limits(TenantLimits {
                    gateway: limit.clone(),
                    device: limit,
                    ..TenantLimits::default()
                })
            }
            10 => {
                self.emu.set_max_devices(Some(4));
                Ok(())
            }
            12 => {
                // The devices' profile gets its own topics, or the defaults back.
                if self.rng.below(2) == 0 {
                    if let Ok(topics) = ProfileTopics::new("+/+/telemetry", "v1/devices/me/#") {
                        self.emu.set_profile_topics("default", topics);
                    }
                } else {
                    self.emu.set_profile_default_topics("default");
                }
                Ok(())
            }
            11 => {
                // A credentials update closes the device's session (direct or child).
                let token = ["DEV_TOKEN", "DEV_TOKEN_2"][self.rng.below(2) as usize];
                let name = ["Dev", "Child"][self.rng.below(2) as usize];
                self.emu.update_device_credentials(
                    name,
                    Credentials::AccessToken(token.into()),
                    now,
                )
            }
            _ => {
                let ids: Vec<SessionId> = self.open.keys().copied().collect();
                match ids.first() {
                    Some(id) if self.rng.below(4) == 0 => self.emu.drop_session(*id),
                    _ => Ok(()),
                }
            }
        };
        self.drain();
    }

    fn feed(&mut self, stream: &[u8]) -> usize {
        let id = match self.emu.open_session(self.now) {
            Ok(id) => id,
            Err(e) => panic!("open_session: {e}"),
        };
        self.open.insert(id, BytesMut::new());
        // The version the session will speak (it may close before `sessions()` shows it).
        if let Ok(Some((v, _))) =
            wire::decode_first_connect(&mut BytesMut::from(stream), 268_435_455)
        {
            self.versions.insert(id, v);
        }
        let mut rest = stream;
        let mut max_read = 0;
        while !rest.is_empty() && self.open.contains_key(&id) {
            let n = match self.rng.below(4) {
                0 => rest.len(),
                1 => 1 + self.rng.below(4) as usize,
                _ => 1 + self.rng.below(64) as usize,
            }
            .min(rest.len());
            let (read, tail) = rest.split_at(n);
            rest = tail;
            max_read = max_read.max(n);
            self.emu.handle_bytes(id, self.now, read);
            self.drain();
            self.check(max_read);
            match self.rng.below(16) {
                0 => {
                    let by = Duration::from_secs(self.rng.below(700));
                    self.advance(by);
                }
                1 | 2 => {
                    let by = Duration::from_millis(self.rng.below(2000));
                    self.advance(by);
                }
                3 | 4 => self.control(),
                _ => {}
            }
        }
        max_read
    }
}

/// A packet a server may send to a client.
fn check_server_packet(p: &Packet) {
    assert!(
        matches!(
            p,
            Packet::ConnAck(_)
                | Packet::Publish(_)
                | Packet::PubAck(_)
                | Packet::SubAck(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp
                | Packet::Disconnect(_)
        ),
        "emulator sent a packet a server must not send: {p:?}"
    );
}

/// The target body.
pub fn run(data: &[u8]) {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut f = Fuzz {
        emu: platform(now),
        now,
        rng: Rng(u64::from(flags)),
        open: BTreeMap::new(),
        closed: BTreeSet::new(),
        versions: BTreeMap::new(),
    };
    f.feed(stream);
    if flags & 1 != 0 {
        f.feed(stream);
    }
    f.advance(Duration::from_secs(3600));
    let ids: Vec<SessionId> = f.open.keys().copied().collect();
    for id in ids {
        f.emu.transport_closed(id, f.now);
        f.drain();
    }
    f.advance(Duration::from_secs(1));
    assert!(
        f.emu.sessions().is_empty(),
        "sessions left after every transport closed"
    );
}
