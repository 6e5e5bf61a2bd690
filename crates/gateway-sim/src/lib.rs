//! # gateway-sim: deterministic simulation of the client core against the emulator
//!
//! One client [`Connection`](gateway_proto::Connection) (a gateway) and the sans-IO
//! [`Emulator`](gateway_emulator::Emulator), wired by an in-memory transport on one virtual
//! clock. A seed picks the configuration (MQTT 3.1.1 or 5, window, buffer, timeouts), a
//! random workload (sub-devices connected and disconnected, telemetry at QoS 0 and 1,
//! attributes, attribute requests, claims, RPCs both ways, shared attribute updates) and a
//! fault plan (connections cut mid-packet, reads and writes split at random offsets, stalls,
//! refused transports, server drops, DISCONNECTs with reason codes, takeover by a second
//! session with the same token, rate-limit closes, device-limit refusals, duplicate PUBACKs,
//! QoS 1 PUBLISHes with packet id 0, emulator restarts that keep the platform, credential
//! backend outages).
//!
//! Invariants, checked after every step (and the liveness ones after every heal):
//!
//! 1. no panic, on either side;
//! 2. every request gets at most one outcome, only accepted requests get one, and after a heal
//!    (faults off, time for every deadline) every accepted request has exactly one: no QoS 1
//!    message vanishes without a failure outcome;
//! 3. every QoS 1 message the client reports [`Delivered`](gateway_proto::Event::Delivered)
//!    is stored by the emulator (telemetry key, client attribute, connected sub-device);
//! 4. after a heal, every sub-device the client has registered is connected on the emulator
//!    and reachable: an RPC to it and a shared attribute update for it arrive;
//! 5. client memory within its configured bounds (`Stats`), emulator memory within its own
//!    (session receive buffers, session count);
//! 6. the client only writes valid MQTT (the emulator would close the connection otherwise,
//!    which the heal check catches) and never asks for a second transport while one is open.
//!
//! A run is a pure function of its seed: [`run`] replays it exactly. A failure names its seed
//! and prints the last actions; `SIM_SEED=n cargo test -p gateway-sim --test sim --
//! --nocapture` replays it, `SIM_SEEDS=100000` (or `scripts/sim.sh 100000`) runs more.
//!
//! ## Limitations (documented, not checked)
//!
//! * On MQTT 3.1.1 a PUBACK carries no reason code, and ThingsBoard acknowledges a gateway
//!   message it dropped (sub-device not created at the tenant's device limit; child message over
//!   a rate limit, followed by a close) like any other. The client cannot tell, so on 3.1.1 a
//!   `Delivered` for such a message, and a registered sub-device the platform refused to
//!   create, are counted (`Report::v311_unconfirmed`) instead of failing invariants 3 and 4.
//!   MQTT 5 (PUBACK 0x97) is checked strictly.
//! * The emulator restart is [`Emulator::restart`](gateway_emulator::Emulator::restart):
//!   connections close, the platform stays; a restart that loses platform state is not
//!   modelled.
//! * QoS 0 messages have no delivery guarantee and are only checked for their one outcome.

#![forbid(unsafe_code)]

mod sim;

pub use sim::{run, Failure, Options, Report};

/// A tiny deterministic PRNG (splitmix64): the whole simulation draws from one.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// A uniformly chosen element (`None` for an empty slice).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}
