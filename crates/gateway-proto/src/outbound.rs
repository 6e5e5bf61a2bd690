//! Publishes the application asked for and that have not finished yet.
//!
//! Every accepted publish lives in `entries`, keyed by its request id, from the command until
//! its outcome. Ids grow monotonically and the queue is FIFO, so the oldest entry always has
//! the earliest deadline and every in-flight entry is older than every queued one. That keeps
//! timeouts O(1) per expired message and lets a reconnect rebuild the send order from the
//! entries alone. The entries are a hash map (several lookups per publish, O(1) however many
//! wait) with a cursor on the oldest id ([`Entries`]).
//!
//! Packet ids are unique among the PUBLISHes and SUBSCRIBEs awaiting an answer on the current
//! connection. A publish that timed out while in flight leaves a tombstone on its packet id
//! until the PUBACK arrives or the connection ends, so a late PUBACK can never complete a
//! newer message that reused the id.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::QoS;
use crate::error::CommandError;
use crate::idmap::IdMap;
use crate::pacing::Charge;

/// The heap an unfinished publish holds besides its encoded bytes (which cover its payload
/// as copied by the typed commands; a raw publish's `Bytes` is counted at its length): its
/// boxed [`Entry`]; its slot in the entries table (id, pointer and a control byte), which
/// is at most 7/16 full just after it doubled; and its id in the send queue, at most half
/// full just after it doubled.
pub(crate) const ENTRY_HEAP: usize = std::mem::size_of::<Entry>()
    + (std::mem::size_of::<(u64, Box<Entry>)>() + 1) * 16 / 7
    + 2 * std::mem::size_of::<u64>();

/// One unfinished publish.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) topic: Cow<'static, str>,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) accepted_at: Instant,
    /// Transmissions so far (a retransmission after reconnect carries DUP).
    pub(crate) attempts: u32,
    /// Bytes charged against the buffer bound.
    cost: usize,
    /// What sending it takes from the rate-limit buckets; `None` until worked out from the
    /// payload (a publish the application built itself, see [`Outbound::head`]).
    pub(crate) charge: Option<Charge>,
    /// Packet id while in flight on the current connection.
    pkid: Option<u16>,
}

/// What a packet id awaiting an answer belongs to.
#[derive(Debug)]
enum Slot {
    Publish(u64),
    /// The publish timed out while in flight; the id stays reserved until its PUBACK.
    TimedOut,
    /// A SUBSCRIBE for these filters.
    Subscribe(Vec<String>),
    /// A publish the connection made on its own (not an application request).
    Control(ControlTag),
}

/// What a connection-made publish was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ControlTag {
    /// Re-announce of a sub-device (`v1/gateway/connect`).
    Announce(String),
    /// Keep-alive attribute request with this wire id.
    Keepalive(u32),
    /// The `getSessionLimits` request with this wire id.
    SessionLimits(u32),
    /// The OTA package attribute request with this wire id.
    OtaInfo(u32),
    /// An OTA chunk request.
    OtaChunk(crate::ota::ChunkRequest),
}

/// What a PUBACK's packet id referred to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acked {
    /// This publish finished; its entry is removed.
    Publish(u64),
    /// A publish already reported as timed out.
    TimedOut,
    /// Nothing in flight has this id (a duplicate PUBACK, or from an old server that sends
    /// one per device entry).
    Unknown,
    /// The id belongs to a SUBSCRIBE, not a PUBLISH.
    WrongKind,
    /// A publish the connection made on its own.
    Control(ControlTag),
}

/// The next publish to transmit.
#[derive(Debug)]
pub(crate) enum Ready {
    /// QoS 0: removed from the store; report `Sent` once encoded.
    AtMostOnce(u64, Box<Entry>),
    /// QoS 1: stays in the store, in flight with this packet id. `dup` when retransmitted.
    AtLeastOnce { id: u64, pkid: u16, dup: bool },
}

#[derive(Debug)]
pub(crate) struct Outbound {
    entries: Entries,
    /// Ids waiting for transmission, oldest first. May hold ids that already finished
    /// (timed out); they are skipped, and the queue is compacted when they pile up.
    queue: VecDeque<u64>,
    stale_in_queue: usize,
    slots: IdMap<u16, Slot>,
    /// Publishes in flight plus tombstones: what the window limits.
    inflight: usize,
    next_pkid: u16,
    buffered: usize,
    max_buffered: usize,
}

impl Outbound {
    pub(crate) fn new(max_buffered: usize) -> Self {
        Self {
            entries: Entries::default(),
            queue: VecDeque::new(),
            stale_in_queue: 0,
            slots: IdMap::default(),
            inflight: 0,
            next_pkid: 0,
            buffered: 0,
            max_buffered,
        }
    }

    /// Bytes still free under the buffer bound.
    pub(crate) fn available(&self) -> usize {
        self.max_buffered.saturating_sub(self.buffered)
    }

    /// Accepts a publish if it fits the buffer bound.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn admit(
        &mut self,
        id: u64,
        topic: Cow<'static, str>,
        payload: Bytes,
        qos: QoS,
        now: Instant,
        cost: usize,
        charge: Option<Charge>,
    ) -> Result<(), CommandError> {
        let available = self.available();
        if cost > available {
            return Err(CommandError::QueueFull {
                needed: cost,
                available,
            });
        }
        self.buffered += cost;
        self.entries.insert(
            id,
            Box::new(Entry {
                topic,
                payload,
                qos,
                accepted_at: now,
                attempts: 0,
                cost,
                charge,
                pkid: None,
            }),
        );
        self.queue.push_back(id);
        Ok(())
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The next publish to transmit (stale queue ids are dropped on the way), to look at
    /// or complete its charge.
    pub(crate) fn head(&mut self) -> Option<&mut Entry> {
        loop {
            let id = *self.queue.front()?;
            if self.entries.contains(id) {
                return self.entries.get_mut(id);
            }
            self.queue.pop_front();
            self.stale_in_queue = self.stale_in_queue.saturating_sub(1);
        }
    }

    /// The publish in flight with `pkid`, if any.
    pub(crate) fn in_flight(&self, pkid: u16) -> Option<(u64, &Entry)> {
        match self.slots.get(&pkid) {
            Some(Slot::Publish(id)) => self.entries.get(*id).map(|e| (*id, e)),
            _ => None,
        }
    }

    /// The server refused the publish in flight with `pkid` without processing it: it goes
    /// back to the queue, in id order, unless it used up its `max_attempts` transmissions.
    /// Returns whether it was requeued (if not, resolve the PUBACK with [`ack`](Self::ack)).
    pub(crate) fn requeue(&mut self, pkid: u16, max_attempts: u32) -> bool {
        let Some(Slot::Publish(id)) = self.slots.get(&pkid) else {
            return false;
        };
        let id = *id;
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        if entry.attempts >= max_attempts {
            return false;
        }
        entry.pkid = None;
        self.slots.remove(&pkid);
        self.inflight -= 1;
        let at = self.queue.partition_point(|&queued| queued < id);
        self.queue.insert(at, id);
        true
    }

    /// Takes the next publish off the queue, if the window allows. QoS 0 messages wait
    /// behind a QoS 1 message that waits for the window, so order is kept.
    pub(crate) fn next_ready(&mut self, max_inflight: usize) -> Option<Ready> {
        loop {
            let id = *self.queue.front()?;
            let Some(entry) = self.entries.get_mut(id) else {
                self.queue.pop_front();
                self.stale_in_queue = self.stale_in_queue.saturating_sub(1);
                continue;
            };
            match entry.qos {
                QoS::AtMostOnce => {
                    self.queue.pop_front();
                    let entry = self.entries.remove(id)?;
                    self.buffered -= entry.cost;
                    return Some(Ready::AtMostOnce(id, entry));
                }
                QoS::AtLeastOnce => {
                    if self.inflight >= max_inflight {
                        return None;
                    }
                    let pkid = allocate_pkid(&mut self.next_pkid, &self.slots)?;
                    self.queue.pop_front();
                    let dup = entry.attempts > 0;
                    entry.attempts += 1;
                    entry.pkid = Some(pkid);
                    self.slots.insert(pkid, Slot::Publish(id));
                    self.inflight += 1;
                    return Some(Ready::AtLeastOnce { id, pkid, dup });
                }
            }
        }
    }

    /// Reserves a packet id for a SUBSCRIBE of `filters`.
    pub(crate) fn reserve_subscribe(&mut self, filters: Vec<String>) -> Option<u16> {
        let pkid = allocate_pkid(&mut self.next_pkid, &self.slots)?;
        self.slots.insert(pkid, Slot::Subscribe(filters));
        Some(pkid)
    }

    /// Resolves a SUBACK's packet id to the filters it answers.
    pub(crate) fn take_subscribe(&mut self, pkid: u16) -> Option<Vec<String>> {
        match self.slots.remove(&pkid) {
            Some(Slot::Subscribe(filters)) => Some(filters),
            Some(other) => {
                self.slots.insert(pkid, other);
                None
            }
            None => None,
        }
    }

    /// Resolves a PUBACK.
    pub(crate) fn ack(&mut self, pkid: u16) -> Acked {
        match self.slots.remove(&pkid) {
            Some(Slot::Publish(id)) => {
                self.inflight -= 1;
                if let Some(entry) = self.entries.remove(id) {
                    self.buffered -= entry.cost;
                }
                Acked::Publish(id)
            }
            Some(Slot::TimedOut) => {
                self.inflight -= 1;
                Acked::TimedOut
            }
            Some(Slot::Control(tag)) => {
                self.inflight -= 1;
                Acked::Control(tag)
            }
            Some(sub @ Slot::Subscribe(_)) => {
                self.slots.insert(pkid, sub);
                Acked::WrongKind
            }
            None => Acked::Unknown,
        }
    }

    /// Reserves a packet id for a connection-made publish, if the window allows.
    pub(crate) fn reserve_control(&mut self, max_inflight: usize, tag: ControlTag) -> Option<u16> {
        if self.inflight >= max_inflight {
            return None;
        }
        let pkid = allocate_pkid(&mut self.next_pkid, &self.slots)?;
        self.slots.insert(pkid, Slot::Control(tag));
        self.inflight += 1;
        Some(pkid)
    }

    /// Whether the window has room for one more QoS 1 publish.
    pub(crate) fn window_open(&self, max_inflight: usize) -> bool {
        self.inflight < max_inflight
    }

    /// Finishes publish `id` without an acknowledgement (its answer arrived first, or its
    /// response deadline passed). In flight, its packet id stays reserved as a tombstone
    /// until the PUBACK. Returns whether it was unfinished.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        let Some(entry) = self.entries.remove(id) else {
            return false;
        };
        self.buffered -= entry.cost;
        match entry.pkid {
            Some(pkid) => {
                self.slots.insert(pkid, Slot::TimedOut);
            }
            None => self.stale_in_queue += 1,
        }
        self.compact();
        true
    }

    /// When the oldest unfinished publish times out.
    pub(crate) fn next_deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        let timeout = timeout?;
        let (_, oldest) = self.entries.oldest()?;
        oldest.accepted_at.checked_add(timeout)
    }

    /// Removes every publish whose deadline has passed and returns their ids, oldest first.
    pub(crate) fn expire(&mut self, now: Instant, timeout: Option<Duration>) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(deadline) = self.next_deadline(timeout) {
            if deadline > now {
                break;
            }
            let Some((id, _)) = self.entries.oldest() else {
                break;
            };
            self.cancel(id);
            expired.push(id);
        }
        expired
    }

    /// Drops finished ids from the queue once they make up most of it.
    fn compact(&mut self) {
        if self.entries.is_empty() {
            self.queue.clear();
            self.stale_in_queue = 0;
        } else if self.stale_in_queue > 64 && self.stale_in_queue > self.queue.len() / 2 {
            let entries = &self.entries;
            self.queue.retain(|&id| entries.contains(id));
            self.stale_in_queue = 0;
        }
    }

    /// The connection ended: every in-flight publish goes back to the queue for a DUP
    /// retransmission, unless it used up its attempts, in which case its id is returned as
    /// failed. Packet ids start afresh on the next connection.
    pub(crate) fn connection_lost(&mut self, max_attempts: u32) -> Vec<u64> {
        self.slots.clear();
        self.inflight = 0;
        let mut failed = Vec::new();
        self.entries.retain(|id, entry| {
            if entry.pkid.take().is_some() && entry.attempts >= max_attempts {
                failed.push(id);
                false
            } else {
                true
            }
        });
        failed.sort_unstable();
        self.recount();
        self.queue = self.entries.sorted_ids().into();
        self.stale_in_queue = 0;
        failed
    }

    /// Removes everything (the application closed the connection); returns the ids.
    pub(crate) fn drain_all(&mut self) -> Vec<u64> {
        let ids = self.entries.sorted_ids();
        self.entries.clear();
        self.queue.clear();
        self.slots.clear();
        self.stale_in_queue = 0;
        self.inflight = 0;
        self.buffered = 0;
        ids
    }

    fn recount(&mut self) {
        self.buffered = self.entries.map.values().map(|e| e.cost).sum();
    }

    /// Bytes charged against the buffer bound.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Unfinished publishes.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Publishes and tombstones awaiting a PUBACK.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight
    }

    /// Packet ids awaiting an answer (publishes, tombstones, subscribes).
    pub(crate) fn pkids_in_use(&self) -> impl Iterator<Item = u16> + '_ {
        self.slots.keys().copied()
    }
}

/// The unfinished publishes by request id, and the oldest id, kept current on every change
/// so that the publish timer costs nothing per command.
#[derive(Debug, Default)]
struct Entries {
    /// Boxed: the table's slots stay small (an id and a pointer), so growing it moves 16
    /// bytes per entry rather than ~100.
    map: IdMap<u64, Box<Entry>>,
    /// No entry has a smaller id; the entry with this id exists unless the map is empty.
    oldest: u64,
}

impl Entries {
    fn insert(&mut self, id: u64, entry: Box<Entry>) {
        if self.map.is_empty() || id < self.oldest {
            self.oldest = id;
        }
        self.map.insert(id, entry);
    }

    fn contains(&self, id: u64) -> bool {
        self.map.contains_key(&id)
    }

    fn get(&self, id: u64) -> Option<&Entry> {
        self.map.get(&id).map(|e| &**e)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        self.map.get_mut(&id).map(|e| &mut **e)
    }

    fn remove(&mut self, id: u64) -> Option<Box<Entry>> {
        let entry = self.map.remove(&id)?;
        if id == self.oldest {
            self.find_oldest();
        }
        self.shrink();
        Some(entry)
    }

    /// The oldest entry.
    fn oldest(&self) -> Option<(u64, &Entry)> {
        self.map.get(&self.oldest).map(|e| (self.oldest, &**e))
    }

    /// Moves the cursor to the oldest remaining entry: forward one id at a time while that
    /// is cheaper than looking at every entry (ids the store never held, such as QoS 0
    /// publishes sent at once, leave gaps), else the smallest key. A call costs at most
    /// twice the number of ids it moves past, so the cursor costs O(1) per request overall.
    fn find_oldest(&mut self) {
        if self.map.is_empty() {
            return;
        }
        for _ in 0..self.map.len() {
            self.oldest += 1;
            if self.map.contains_key(&self.oldest) {
                return;
            }
        }
        if let Some(&min) = self.map.keys().min() {
            self.oldest = min;
        }
    }

    /// Gives memory back after a large backlog drained (a table keeps its size otherwise).
    fn shrink(&mut self) {
        let capacity = self.map.capacity();
        if capacity > 1024 && self.map.len() * 8 < capacity {
            self.map.shrink_to(self.map.len() * 2);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(u64, &mut Entry) -> bool) {
        self.map.retain(|&id, e| keep(id, e));
        if let Some(&min) = self.map.keys().min() {
            self.oldest = min;
        }
        self.shrink();
    }

    /// Every id, oldest first.
    fn sorted_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.map.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn clear(&mut self) {
        self.map = IdMap::default();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The next free packet id after `next`, wrapping 65,535 → 1 and never 0.
fn allocate_pkid(next: &mut u16, slots: &IdMap<u16, Slot>) -> Option<u16> {
    for _ in 0..u16::MAX {
        *next = if *next == u16::MAX { 1 } else { *next + 1 };
        if !slots.contains_key(next) {
            return Some(*next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(o: &mut Outbound, id: u64, qos: QoS, now: Instant) {
        o.admit(
            id,
            "t".into(),
            Bytes::from_static(b"x"),
            qos,
            now,
            100,
            Some(charge()),
        )
        .unwrap_or_else(|e| panic!("admit {id}: {e}"));
    }

    fn charge() -> Charge {
        Charge::message(crate::pacing::Scope::Device)
    }

    fn pkid_of(r: Option<Ready>) -> u16 {
        match r {
            Some(Ready::AtLeastOnce { pkid, .. }) => pkid,
            other => panic!("expected a QoS 1 publish, got {other:?}"),
        }
    }

    #[test]
    fn buffer_bound_refuses_without_side_effects() {
        let now = Instant::now();
        let mut o = Outbound::new(250);
        admit(&mut o, 1, QoS::AtLeastOnce, now);
        admit(&mut o, 2, QoS::AtLeastOnce, now);
        let err = o
            .admit(
                3,
                "t".into(),
                Bytes::new(),
                QoS::AtLeastOnce,
                now,
                100,
                Some(charge()),
            )
            .unwrap_err();
        assert_eq!(
            err,
            CommandError::QueueFull {
                needed: 100,
                available: 50
            }
        );
        assert_eq!(o.len(), 2);
        assert_eq!(o.buffered_bytes(), 200);
    }

    #[test]
    fn window_limits_inflight_and_acks_free_it() {
        let now = Instant::now();
        let mut o = Outbound::new(10_000);
        for id in 1..=3 {
            admit(&mut o, id, QoS::AtLeastOnce, now);
        }
        let a = pkid_of(o.next_ready(2));
        let b = pkid_of(o.next_ready(2));
        assert!(o.next_ready(2).is_none(), "window of 2 is full");
        assert_ne!(a, b);
        assert_eq!(o.ack(a), Acked::Publish(1));
        assert_eq!(o.ack(a), Acked::Unknown, "duplicate PUBACK is harmless");
        let c = pkid_of(o.next_ready(2));
        assert!(c != 0 && c != b);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn pkids_wrap_and_skip_ids_in_use() {
        let now = Instant::now();
        let mut o = Outbound::new(usize::MAX);
        o.next_pkid = u16::MAX - 1;
        admit(&mut o, 1, QoS::AtLeastOnce, now);
        admit(&mut o, 2, QoS::AtLeastOnce, now);
        admit(&mut o, 3, QoS::AtLeastOnce, now);
        assert_eq!(pkid_of(o.next_ready(10)), u16::MAX);
        assert_eq!(pkid_of(o.next_ready(10)), 1, "wraps past 0");
        // Force the counter back so the next candidate (1) is taken.
        o.next_pkid = 0;
        assert_eq!(pkid_of(o.next_ready(10)), 2, "skips the id still in flight");
    }

    #[test]
    fn timeout_in_flight_leaves_a_tombstone_until_the_late_puback() {
        let t0 = Instant::now();
        let timeout = Some(Duration::from_secs(10));
        let mut o = Outbound::new(10_000);
        admit(&mut o, 1, QoS::AtLeastOnce, t0);
        admit(&mut o, 2, QoS::AtLeastOnce, t0 + Duration::from_secs(5));
        let p1 = pkid_of(o.next_ready(1));
        assert_eq!(o.next_deadline(timeout), Some(t0 + Duration::from_secs(10)));
        assert_eq!(o.expire(t0 + Duration::from_secs(10), timeout), vec![1]);
        // The tombstone still occupies the window of 1.
        assert!(o.next_ready(1).is_none());
        assert_eq!(o.ack(p1), Acked::TimedOut);
        let p2 = pkid_of(o.next_ready(1));
        assert_eq!(o.ack(p2), Acked::Publish(2));
        assert_eq!(o.buffered_bytes(), 0);
    }

    #[test]
    fn expiry_of_queued_messages_compacts_the_queue() {
        let t0 = Instant::now();
        let timeout = Some(Duration::from_secs(1));
        let mut o = Outbound::new(usize::MAX);
        for id in 0..1000 {
            admit(&mut o, id, QoS::AtLeastOnce, t0);
        }
        assert_eq!(o.expire(t0 + Duration::from_secs(1), timeout).len(), 1000);
        assert!(o.queue.is_empty(), "stale ids are compacted");
        assert_eq!(o.len(), 0);
        assert!(o.next_ready(10).is_none());
    }

    #[test]
    fn connection_loss_requeues_in_order_with_dup_and_gives_up_after_max_attempts() {
        let now = Instant::now();
        let mut o = Outbound::new(10_000);
        for id in 1..=4 {
            admit(&mut o, id, QoS::AtLeastOnce, now);
        }
        pkid_of(o.next_ready(2));
        pkid_of(o.next_ready(2));
        assert_eq!(o.connection_lost(2), Vec::<u64>::new());
        let order: Vec<(u64, bool)> = std::iter::from_fn(|| match o.next_ready(10) {
            Some(Ready::AtLeastOnce { id, dup, .. }) => Some((id, dup)),
            _ => None,
        })
        .collect();
        assert_eq!(order, [(1, true), (2, true), (3, false), (4, false)]);
        // 1 and 2 have now been sent twice: a second loss fails them.
        assert_eq!(o.connection_lost(2), vec![1, 2]);
        assert_eq!(o.len(), 2);
        assert_eq!(o.buffered_bytes(), 200);
    }

    #[test]
    fn qos0_waits_behind_a_blocked_qos1_to_keep_order() {
        let now = Instant::now();
        let mut o = Outbound::new(10_000);
        admit(&mut o, 1, QoS::AtLeastOnce, now);
        admit(&mut o, 2, QoS::AtLeastOnce, now);
        admit(&mut o, 3, QoS::AtMostOnce, now);
        assert_eq!(pkid_of(o.next_ready(1)), 1);
        // 2 waits for the window, and 3 must not overtake it.
        assert!(o.next_ready(1).is_none());
        assert_eq!(o.ack(1), Acked::Publish(1));
        assert_eq!(pkid_of(o.next_ready(1)), 2);
        // Once 2 is on the wire, 3 follows it without waiting for 2's PUBACK.
        assert!(matches!(o.next_ready(1), Some(Ready::AtMostOnce(3, _))));
        assert_eq!(o.buffered_bytes(), 100);
    }

    #[test]
    fn subscribe_ids_share_the_space_and_are_not_pubacks() {
        let now = Instant::now();
        let mut o = Outbound::new(10_000);
        let s = o.reserve_subscribe(vec!["a".into()]).unwrap_or(0);
        assert_ne!(s, 0);
        admit(&mut o, 1, QoS::AtLeastOnce, now);
        assert_ne!(pkid_of(o.next_ready(10)), s);
        assert_eq!(o.ack(s), Acked::WrongKind);
        assert_eq!(o.take_subscribe(s), Some(vec!["a".to_string()]));
        assert_eq!(o.take_subscribe(s), None);
    }

    fn entry() -> Box<Entry> {
        Box::new(Entry {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            accepted_at: Instant::now(),
            attempts: 0,
            cost: 1,
            charge: None,
            pkid: None,
        })
    }

    proptest::proptest! {
        /// The oldest-id cursor always names the smallest id left, whatever the gaps
        /// between ids and the order of removals.
        #[test]
        fn the_cursor_names_the_smallest_id(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..3000), 0..300)
        ) {
            let mut e = Entries::default();
            let mut model = std::collections::BTreeSet::new();
            let mut next = 0u64;
            for (insert, n) in ops {
                if insert || model.is_empty() {
                    next += 1 + n % 50;
                    e.insert(next, entry());
                    model.insert(next);
                } else {
                    let id = *model.iter().nth(n as usize % model.len()).unwrap();
                    model.remove(&id);
                    proptest::prop_assert!(e.remove(id).is_some());
                }
                proptest::prop_assert_eq!(e.oldest().map(|(id, _)| id), model.first().copied());
                proptest::prop_assert_eq!(e.len(), model.len());
            }
            e.retain(|id, _| id % 2 == 0);
            model.retain(|id| id % 2 == 0);
            proptest::prop_assert_eq!(e.oldest().map(|(id, _)| id), model.first().copied());
            proptest::prop_assert_eq!(e.sorted_ids(), model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_drained_backlog_gives_its_table_back() {
        let mut e = Entries::default();
        for id in 0..100_000 {
            e.insert(id, entry());
        }
        let big = e.map.capacity();
        for id in 0..99_990 {
            e.remove(id);
        }
        assert!(
            e.map.capacity() * 100 < big,
            "{} of {big}",
            e.map.capacity()
        );
        assert_eq!(e.oldest().map(|(id, _)| id), Some(99_990));
    }
}
