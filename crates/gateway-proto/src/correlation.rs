//! Matching answers to questions, in both directions.
//!
//! [`PendingRequests`]: attribute requests and client-side RPCs the client sent, awaiting a
//! response. Each gets a wire id (the `id` in the JSON or the topic) from one counter that
//! never repeats while an id is pending and stays below 2^31 (ThingsBoard reads these ids as
//! a Java `int`). A response is matched by wire id *and* by kind and device, so a late or
//! misaddressed answer cannot complete the wrong request.
//!
//! [`ServerRpcs`]: server-side RPCs received and not yet replied to, keyed by (device, id):
//! ThingsBoard numbers RPCs per device from 0, so two sub-devices often share an id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::command::AttributeScope;
use crate::idmap::IdMap;
use crate::topic::TopicFamily;

/// The largest wire id: ThingsBoard parses request ids as a Java `int`.
const MAX_WIRE_ID: u32 = i32::MAX as u32;

/// What answer a pending request expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// `v1/gateway/attributes/response` for this device.
    GatewayAttributes {
        device: String,
        scope: AttributeScope,
        /// The key, when exactly one was asked for (the answer then carries a bare `value`).
        single_key: Option<String>,
    },
    /// `v1/devices/me/attributes/response/{id}`.
    DeviceAttributes,
    /// `v1/devices/me/rpc/response/{id}`.
    ClientRpc,
    /// The answer to a sub-device keep-alive; consumed silently.
    Keepalive { device: String },
    /// The answer to a raw attribute request (passed on as bytes).
    RawAttributes,
    /// The answer to a raw client-side RPC (passed on as bytes).
    RawRpc,
    /// The transport's answer to the connection's own `getSessionLimits`.
    SessionLimits,
    /// `v1/devices/me/attributes/response/{id}` with the OTA package attributes; consumed
    /// by the OTA state machine.
    OtaInfo,
}

/// One request awaiting its response.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The application's request id (`None` for keep-alives).
    pub(crate) request: Option<u64>,
    pub(crate) expect: Expect,
    pub(crate) deadline: Instant,
    /// The server acknowledged the publish; only the answer is missing.
    pub(crate) acked: bool,
}

/// Bounds: application requests by `max` (a command past it is refused); keep-alives by the
/// sub-device registry, since a device is queued for one only after a silent interval and
/// keep-alives vanish with their deadline or the connection.
#[derive(Debug)]
pub(crate) struct PendingRequests {
    by_wire: BTreeMap<u32, Pending>,
    by_request: IdMap<u64, u32>,
    deadlines: BTreeSet<(Instant, u32)>,
    next_wire: u32,
    /// Application requests (keep-alives excluded) counted against `max`.
    user: usize,
    max: usize,
}

impl PendingRequests {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            by_wire: BTreeMap::new(),
            by_request: IdMap::default(),
            deadlines: BTreeSet::new(),
            next_wire: 0,
            user: 0,
            max,
        }
    }

    /// Room for one more application request.
    pub(crate) fn has_room(&self) -> bool {
        self.user < self.max
    }

    /// Application requests awaiting an answer.
    pub(crate) fn len(&self) -> usize {
        self.user
    }

    /// The bound on application requests.
    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    /// Registers a request under `wire`, an id from [`allocate`](Self::allocate) with no
    /// other allocation in between.
    pub(crate) fn insert_at(
        &mut self,
        wire: u32,
        request: Option<u64>,
        expect: Expect,
        deadline: Instant,
    ) {
        if let Some(r) = request {
            self.by_request.insert(r, wire);
            self.user += 1;
        }
        self.deadlines.insert((deadline, wire));
        self.by_wire.insert(
            wire,
            Pending {
                request,
                expect,
                deadline,
                acked: false,
            },
        );
    }

    #[cfg(test)]
    fn insert(&mut self, request: Option<u64>, expect: Expect, deadline: Instant) -> u32 {
        let wire = self.allocate();
        self.insert_at(wire, request, expect, deadline);
        wire
    }

    /// Whether application request `request` awaits a response (so its PUBACK is not its
    /// outcome).
    pub(crate) fn tracks(&self, request: u64) -> bool {
        self.by_request.contains_key(&request)
    }

    /// The publish of `request` was acknowledged.
    pub(crate) fn mark_acked(&mut self, request: u64) {
        if let Some(p) = self
            .by_request
            .get(&request)
            .and_then(|w| self.by_wire.get_mut(w))
        {
            p.acked = true;
        }
    }

    /// The publish of keep-alive `wire` was acknowledged.
    pub(crate) fn mark_wire_acked(&mut self, wire: u32) {
        if let Some(p) = self.by_wire.get_mut(&wire) {
            p.acked = true;
        }
    }

    /// Looks at the request a response with `wire` id would complete.
    pub(crate) fn get(&self, wire: u64) -> Option<&Pending> {
        u32::try_from(wire).ok().and_then(|w| self.by_wire.get(&w))
    }

    /// Removes the request with this wire id.
    pub(crate) fn take(&mut self, wire: u64) -> Option<Pending> {
        let wire = u32::try_from(wire).ok()?;
        let p = self.by_wire.remove(&wire)?;
        self.forget(wire, &p);
        Some(p)
    }

    /// Removes application request `request` (its publish failed).
    pub(crate) fn take_request(&mut self, request: u64) -> Option<Pending> {
        let wire = *self.by_request.get(&request)?;
        self.take(u64::from(wire))
    }

    fn forget(&mut self, wire: u32, p: &Pending) {
        self.deadlines.remove(&(p.deadline, wire));
        if let Some(r) = p.request {
            self.by_request.remove(&r);
            self.user -= 1;
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns every request whose deadline has passed, earliest first.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let mut expired = Vec::new();
        while let Some(&(at, wire)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.by_wire.remove(&wire) {
                self.forget(wire, &p);
                expired.push(p);
            }
        }
        expired
    }

    /// The connection ended. Answers are routed to the session that asked, so requests the
    /// server already acknowledged can no longer be answered, and keep-alives are dropped
    /// with their lane: both are removed and returned in wire-id order. Unacknowledged
    /// requests stay; their publishes are retransmitted.
    pub(crate) fn connection_lost(&mut self) -> Vec<Pending> {
        let lost: Vec<u32> = self
            .by_wire
            .iter()
            .filter(|(_, p)| p.acked || p.request.is_none())
            .map(|(w, _)| *w)
            .collect();
        lost.into_iter()
            .filter_map(|w| self.take(u64::from(w)))
            .collect()
    }

    /// Everything, in wire-id order (the application closed the connection).
    pub(crate) fn drain_all(&mut self) -> Vec<Pending> {
        self.by_request.clear();
        self.deadlines.clear();
        self.user = 0;
        std::mem::take(&mut self.by_wire).into_values().collect()
    }

    /// A sub-device was renamed: its pending requests now expect answers under the new name.
    pub(crate) fn rename(&mut self, old: &str, new: &str) {
        for p in self.by_wire.values_mut() {
            match &mut p.expect {
                Expect::GatewayAttributes { device, .. } | Expect::Keepalive { device }
                    if device == old =>
                {
                    new.clone_into(device);
                }
                _ => {}
            }
        }
    }

    /// The next free wire id in 1..=2^31-1, wrapping and skipping pending ones. Ids are
    /// handed out in order, so one is not handed out again before 2^31-1 others.
    pub(crate) fn allocate(&mut self) -> u32 {
        loop {
            self.next_wire = if self.next_wire >= MAX_WIRE_ID {
                1
            } else {
                self.next_wire + 1
            };
            if !self.by_wire.contains_key(&self.next_wire) {
                return self.next_wire;
            }
        }
    }
}

/// Server-side RPCs awaiting the application's reply.
#[derive(Debug)]
pub(crate) struct ServerRpcs {
    pending: BTreeMap<(Option<String>, u64), (u64, TopicFamily)>,
    /// Arrival order, to forget the oldest when full.
    order: BTreeMap<u64, (Option<String>, u64)>,
    next_seq: u64,
    max: usize,
}

impl ServerRpcs {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            pending: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Records an RPC (a repeat of a pending one replaces it). Returns the one forgotten to
    /// make room, if any.
    pub(crate) fn insert(
        &mut self,
        device: Option<String>,
        id: u64,
        family: TopicFamily,
    ) -> Option<(Option<String>, u64)> {
        let key = (device, id);
        if let Some((seq, _)) = self.pending.remove(&key) {
            self.order.remove(&seq);
        }
        let mut evicted = None;
        if self.pending.len() >= self.max {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.pending.remove(&oldest);
                evicted = Some(oldest);
            }
        }
        if self.max > 0 {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.order.insert(seq, key.clone());
            self.pending.insert(key, (seq, family));
        }
        evicted
    }

    /// Whether a reply to (device, id) would be accepted.
    pub(crate) fn contains(&self, device: Option<&str>, id: u64) -> bool {
        self.pending.contains_key(&(device.map(str::to_owned), id))
    }

    /// The topic family (device, id) arrived on, if it is pending.
    pub(crate) fn family(&self, device: Option<&str>, id: u64) -> Option<TopicFamily> {
        self.pending
            .get(&(device.map(str::to_owned), id))
            .map(|(_, f)| *f)
    }

    /// Removes (device, id) and returns the topic family it arrived on.
    pub(crate) fn take(&mut self, device: Option<&str>, id: u64) -> Option<TopicFamily> {
        let (seq, family) = self.pending.remove(&(device.map(str::to_owned), id))?;
        self.order.remove(&seq);
        Some(family)
    }

    /// Forgets every RPC of a sub-device.
    pub(crate) fn remove_device(&mut self, device: &str) {
        let keys: Vec<_> = self
            .pending
            .keys()
            .filter(|(d, _)| d.as_deref() == Some(device))
            .cloned()
            .collect();
        for key in keys {
            if let Some((seq, _)) = self.pending.remove(&key) {
                self.order.remove(&seq);
            }
        }
    }

    /// Moves a sub-device's RPCs to its new name.
    pub(crate) fn rename(&mut self, old: &str, new: &str) {
        let keys: Vec<_> = self
            .pending
            .keys()
            .filter(|(d, _)| d.as_deref() == Some(old))
            .cloned()
            .collect();
        for key in keys {
            if let Some(v) = self.pending.remove(&key) {
                let new_key = (Some(new.to_owned()), key.1);
                self.order.insert(v.0, new_key.clone());
                if let Some((old_seq, _)) = self.pending.insert(new_key, v) {
                    self.order.remove(&old_seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wire_ids_skip_pending_and_wrap_below_2_pow_31() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new(10);
        p.next_wire = MAX_WIRE_ID - 1;
        let a = p.insert(Some(1), Expect::ClientRpc, t0);
        assert_eq!(a, MAX_WIRE_ID);
        let b = p.insert(Some(2), Expect::ClientRpc, t0);
        assert_eq!(b, 1);
        p.next_wire = MAX_WIRE_ID;
        let c = p.insert(Some(3), Expect::ClientRpc, t0);
        assert_eq!(c, 2, "1 is still pending");
    }

    #[test]
    fn expiry_is_in_deadline_order_and_updates_counts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = PendingRequests::new(2);
        p.insert(Some(1), Expect::ClientRpc, t0 + s(5));
        p.insert(Some(2), Expect::DeviceAttributes, t0 + s(3));
        assert!(!p.has_room());
        p.insert(None, Expect::Keepalive { device: "d".into() }, t0 + s(1));
        assert_eq!(p.next_deadline(), Some(t0 + s(1)));
        let e = p.expire(t0 + s(4));
        assert_eq!(
            e.iter().map(|p| p.request).collect::<Vec<_>>(),
            [None, Some(2)]
        );
        assert!(p.has_room());
        assert!(p.tracks(1) && !p.tracks(2));
        assert_eq!(p.next_deadline(), Some(t0 + s(5)));
    }

    #[test]
    fn connection_lost_takes_acked_and_keepalives_only() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new(10);
        p.insert(Some(1), Expect::ClientRpc, t0);
        p.insert(Some(2), Expect::ClientRpc, t0);
        let k = p.insert(None, Expect::Keepalive { device: "d".into() }, t0);
        p.mark_acked(2);
        let lost = p.connection_lost();
        assert_eq!(
            lost.iter().map(|p| p.request).collect::<Vec<_>>(),
            [Some(2), None]
        );
        assert!(p.tracks(1));
        assert!(p.get(u64::from(k)).is_none());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn server_rpcs_are_keyed_by_device_and_id_and_bounded() {
        let mut r = ServerRpcs::new(2);
        assert_eq!(r.insert(Some("a".into()), 0, TopicFamily::V1), None);
        assert_eq!(r.insert(Some("b".into()), 0, TopicFamily::V1), None);
        // Repeat: replaced, nothing evicted.
        assert_eq!(r.insert(Some("a".into()), 0, TopicFamily::V1), None);
        assert_eq!(
            r.insert(None, 0, TopicFamily::V1),
            Some((Some("b".into()), 0))
        );
        assert!(r.contains(Some("a"), 0) && r.contains(None, 0));
        assert!(!r.contains(Some("b"), 0));
        r.rename("a", "c");
        assert_eq!(r.take(Some("c"), 0), Some(TopicFamily::V1));
        assert_eq!(r.take(Some("c"), 0), None);
        r.insert(Some("d".into()), 7, TopicFamily::V1);
        r.remove_device("d");
        assert_eq!(r.len(), 1);
    }
}
