//! The sub-devices a gateway speaks for.
//!
//! ThingsBoard keeps a gateway's child sessions only as long as the gateway's MQTT session
//! lives, and drops a child that has been silent for 10 minutes. The registry remembers
//! every sub-device the application connected or sent data for, so the connection can
//! announce them all again after each reconnect and keep silent ones alive.
//!
//! Bounded by [`Config::max_sub_devices`](crate::Config::max_sub_devices): adding one more
//! fails, nothing is evicted. Lookups (on every command that names a device) go through a
//! hash map from name to a slot; a data command looks its device up once when it is checked
//! and records the uplink through the slot when it is committed. The rare walks over every
//! device (the re-announce after a CONNACK, the idle sweep) sort what they return, so the
//! order stays deterministic: by name.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::CommandError;

/// One tracked sub-device.
#[derive(Debug)]
struct SubDevice {
    /// Profile name given with the last explicit connect.
    device_type: Option<String>,
    /// When the connection last sent something for it (what keeps its server session alive).
    last_uplink: Instant,
    /// Waiting in the connection's announce or keep-alive lane.
    queued: bool,
}

/// Where a tracked device's state is, valid until the registry next changes (nothing
/// changes it between preparing and committing one command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

#[derive(Debug)]
pub(crate) struct Registry {
    /// Name → index into `slots`.
    index: HashMap<String, u32>,
    /// Device state; `None` is a free slot (listed in `free`). Never longer than the most
    /// devices tracked at once, so bounded by `max`.
    slots: Vec<Option<SubDevice>>,
    free: Vec<u32>,
    max: usize,
}

impl Registry {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            // Slots are `u32`; more devices than that would not fit in memory anyway.
            max: max.min(u32::MAX as usize),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut SubDevice> {
        let slot = *self.index.get(name)?;
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// [`check`](Self::check) for one name, returning its slot if it is already tracked
    /// (one lookup: committing the command goes through the slot,
    /// [`touch_slot`](Self::touch_slot)).
    pub(crate) fn check_one(&self, name: &str) -> Result<Option<Slot>, CommandError> {
        if name.is_empty() {
            return Err(CommandError::EmptyDeviceName);
        }
        let known = self.index.get(name).map(|&i| Slot(i));
        if known.is_none() && self.index.len() >= self.max {
            return Err(CommandError::TooManyDevices { max: self.max });
        }
        Ok(known)
    }

    /// Records an uplink for the device in `slot` (from [`check_one`](Self::check_one),
    /// with nothing removed since).
    pub(crate) fn touch_slot(&mut self, slot: Slot, now: Instant) {
        if let Some(Some(d)) = self.slots.get_mut(slot.0 as usize) {
            d.last_uplink = now;
        }
    }

    /// Checks that `names` can be tracked: each is non-empty, and the unknown ones fit the
    /// bound. Nothing changes.
    pub(crate) fn check<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), CommandError> {
        let mut new = 0usize;
        for name in names {
            if name.is_empty() {
                return Err(CommandError::EmptyDeviceName);
            }
            if !self.index.contains_key(name) {
                new += 1;
            }
        }
        if self.index.len() + new > self.max {
            return Err(CommandError::TooManyDevices { max: self.max });
        }
        Ok(())
    }

    /// Records an uplink for `name`, tracking it if it is new (call [`check`](Self::check)
    /// first). `device_type` is kept when given (explicit connect).
    pub(crate) fn touch(&mut self, name: &str, device_type: Option<&str>, now: Instant) {
        if let Some(d) = self.get_mut(name) {
            d.last_uplink = now;
            if let Some(t) = device_type {
                d.device_type = Some(t.to_owned());
            }
            return;
        }
        let device = SubDevice {
            device_type: device_type.map(str::to_owned),
            last_uplink: now,
            queued: false,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = Some(device);
                }
                i
            }
            None => {
                // No free slot: every slot is in use, and fewer than `max` (≤ u32::MAX) are.
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(device));
                i
            }
        };
        self.index.insert(name.to_owned(), slot);
    }

    /// Records an uplink for `name` if it is tracked; never adds it.
    pub(crate) fn touch_if_tracked(&mut self, name: &str, now: Instant) {
        if let Some(d) = self.get_mut(name) {
            d.last_uplink = now;
        }
    }

    /// Frees a slot whose name was removed from the index.
    fn release(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = None;
            self.free.push(slot);
        }
        if self.index.is_empty() {
            // Nothing tracked: give the memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Forgets `name`; true if it was tracked.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        match self.index.remove(name) {
            Some(slot) => {
                self.release(slot);
                true
            }
            None => false,
        }
    }

    /// Moves `old`'s state to `new` (replacing any entry under `new`); true if `old` was
    /// tracked.
    pub(crate) fn rename(&mut self, old: &str, new: &str) -> bool {
        match self.index.remove(old) {
            Some(slot) => {
                if let Some(replaced) = self.index.insert(new.to_owned(), slot) {
                    self.release(replaced);
                }
                true
            }
            None => false,
        }
    }

    /// Profile of a tracked device, and whether it is tracked at all.
    pub(crate) fn device_type(&self, name: &str) -> Option<Option<&str>> {
        let slot = *self.index.get(name)?;
        let device = self.slots.get(slot as usize)?.as_ref()?;
        Some(device.device_type.as_deref())
    }

    /// Every tracked device, marked queued, in name order (for the re-announce after a
    /// CONNACK).
    pub(crate) fn queue_all(&mut self) -> Vec<String> {
        for d in self.slots.iter_mut().flatten() {
            d.queued = true;
        }
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Marks a tracked device queued for the lane; false if it is unknown or already queued.
    pub(crate) fn mark_queued(&mut self, name: &str) -> bool {
        match self.get_mut(name) {
            Some(d) if !d.queued => {
                d.queued = true;
                true
            }
            _ => false,
        }
    }

    /// The device left the announce/keep-alive lane (sent, or the lane was cleared).
    pub(crate) fn dequeued(&mut self, name: &str) {
        if let Some(d) = self.get_mut(name) {
            d.queued = false;
        }
    }

    /// Clears every queued mark (the lane was dropped with the connection).
    pub(crate) fn clear_queued(&mut self) {
        for d in self.slots.iter_mut().flatten() {
            d.queued = false;
        }
    }

    /// Devices silent for at least `after` and not already queued, marked queued, in name
    /// order; and when the next one falls due. One pass over the registry.
    pub(crate) fn take_idle(
        &mut self,
        now: Instant,
        after: Duration,
    ) -> (Vec<String>, Option<Instant>) {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (name, &slot) in &self.index {
            let Some(Some(d)) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            if d.queued {
                continue;
            }
            let at = d.last_uplink + after;
            if at <= now {
                d.queued = true;
                due.push(name.clone());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        due.sort_unstable();
        (due, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_counts_only_new_names() {
        let t0 = Instant::now();
        let mut r = Registry::new(2);
        r.check(["a", "b"]).unwrap();
        r.touch("a", None, t0);
        r.touch("b", Some("sensor"), t0);
        assert_eq!(
            r.check(["a", "c"]),
            Err(CommandError::TooManyDevices { max: 2 })
        );
        r.check(["a", "b", "a"]).unwrap();
        assert_eq!(r.check([""]), Err(CommandError::EmptyDeviceName));
        assert!(r.remove("a"));
        assert!(!r.remove("a"));
        r.check(["c"]).unwrap();
    }

    #[test]
    fn type_is_kept_across_touches_and_renames() {
        let t0 = Instant::now();
        let mut r = Registry::new(10);
        r.touch("a", Some("thermo"), t0);
        r.touch("a", None, t0);
        assert_eq!(r.device_type("a"), Some(Some("thermo")));
        assert!(r.rename("a", "b"));
        assert_eq!(r.device_type("a"), None);
        assert_eq!(r.device_type("b"), Some(Some("thermo")));
        assert!(!r.rename("zz", "y"));
    }

    #[test]
    fn idle_devices_are_taken_once_until_dequeued() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Registry::new(10);
        r.touch("a", None, t0);
        r.touch("b", None, t0 + s(5));
        let (due, next) = r.take_idle(t0 + s(9), s(10));
        assert!(due.is_empty());
        assert_eq!(next, Some(t0 + s(10)));
        let (due, next) = r.take_idle(t0 + s(10), s(10));
        assert_eq!(due, ["a"]);
        assert_eq!(next, Some(t0 + s(15)));
        // Still queued: not taken again.
        let (due, _) = r.take_idle(t0 + s(20), s(10));
        assert_eq!(due, ["b"]);
        r.dequeued("a");
        r.touch("a", None, t0 + s(20));
        let (due, next) = r.take_idle(t0 + s(20), s(10));
        assert!(due.is_empty());
        assert_eq!(next, Some(t0 + s(30)));
    }

    #[test]
    fn queue_all_marks_everything() {
        let t0 = Instant::now();
        let mut r = Registry::new(10);
        for n in ["c", "a", "b"] {
            r.touch(n, None, t0);
        }
        assert_eq!(r.queue_all(), ["a", "b", "c"]);
        let (due, next) = r.take_idle(t0 + Duration::from_secs(100), Duration::from_secs(1));
        assert!(due.is_empty() && next.is_none());
        r.clear_queued();
        let (due, _) = r.take_idle(t0 + Duration::from_secs(100), Duration::from_secs(1));
        assert_eq!(due.len(), 3);
    }

    #[test]
    fn slots_are_reused_and_stay_attached_to_their_name() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Registry::new(10);
        r.touch("a", None, t0);
        r.touch("b", None, t0);
        assert!(r.remove("a"));
        r.touch("c", None, t0);
        assert_eq!(r.slots.len(), 2, "a's slot was reused for c");
        let b = r.check_one("b").unwrap().unwrap();
        let c = r.check_one("c").unwrap().unwrap();
        assert_ne!(b, c);
        r.touch_slot(c, t0 + s(50));
        let (due, _) = r.take_idle(t0 + s(20), s(10));
        assert_eq!(due, ["b"], "c's touch went to c, not b");
        // A rename onto a tracked name frees the replaced one's slot.
        assert!(r.rename("c", "b"));
        assert_eq!(r.len(), 1);
        assert_eq!(r.free.len(), 1);
        assert!(r.remove("b"));
        assert!(r.slots.is_empty() && r.free.is_empty(), "memory given back");
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Touch(u8, Option<u8>, u8),
        TouchChecked(u8, u8),
        TouchIfTracked(u8, u8),
        Remove(u8),
        Rename(u8, u8),
        MarkQueued(u8),
        Dequeued(u8),
        QueueAll,
        ClearQueued,
        TakeIdle(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = 0u8..6;
        prop_oneof![
            (name.clone(), proptest::option::of(0u8..3), 0u8..40)
                .prop_map(|(n, t, at)| Op::Touch(n, t, at)),
            (name.clone(), 0u8..40).prop_map(|(n, at)| Op::TouchChecked(n, at)),
            (name.clone(), 0u8..40).prop_map(|(n, at)| Op::TouchIfTracked(n, at)),
            name.clone().prop_map(Op::Remove),
            (name.clone(), name.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
            name.clone().prop_map(Op::MarkQueued),
            name.prop_map(Op::Dequeued),
            Just(Op::QueueAll),
            Just(Op::ClearQueued),
            (0u8..60).prop_map(Op::TakeIdle),
        ]
    }

    /// The plain map the registry used to be: name → (type, last uplink, queued).
    type Model = BTreeMap<String, (Option<String>, Instant, bool)>;

    proptest! {
        /// The slot-based registry behaves like a plain map under any sequence of
        /// operations (slot reuse never mixes two devices' state up).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 0..80)) {
            let t0 = Instant::now();
            let at = |s: u8| t0 + Duration::from_secs(u64::from(s));
            let name = |n: u8| format!("d{n}");
            let after = Duration::from_secs(10);
            let mut r = Registry::new(4);
            let mut m = Model::new();
            for op in ops {
                match op {
                    Op::Touch(n, t, s) => {
                        if r.check([name(n).as_str()]).is_ok() {
                            let t = t.map(|t| format!("type{t}"));
                            r.touch(&name(n), t.as_deref(), at(s));
                            let e = m.entry(name(n)).or_insert((None, at(s), false));
                            e.1 = at(s);
                            if t.is_some() {
                                e.0 = t;
                            }
                        } else {
                            prop_assert!(!m.contains_key(&name(n)) && m.len() >= 4);
                        }
                    }
                    Op::TouchChecked(n, s) => match r.check_one(&name(n)) {
                        Ok(Some(slot)) => {
                            r.touch_slot(slot, at(s));
                            m.get_mut(&name(n)).unwrap().1 = at(s);
                        }
                        Ok(None) => prop_assert!(!m.contains_key(&name(n))),
                        Err(_) => prop_assert!(!m.contains_key(&name(n)) && m.len() >= 4),
                    },
                    Op::TouchIfTracked(n, s) => {
                        r.touch_if_tracked(&name(n), at(s));
                        if let Some(e) = m.get_mut(&name(n)) {
                            e.1 = at(s);
                        }
                    }
                    Op::Remove(n) => {
                        prop_assert_eq!(r.remove(&name(n)), m.remove(&name(n)).is_some());
                    }
                    Op::Rename(a, b) => {
                        let moved = m.remove(&name(a));
                        prop_assert_eq!(r.rename(&name(a), &name(b)), moved.is_some());
                        if let Some(e) = moved {
                            m.insert(name(b), e);
                        }
                    }
                    Op::MarkQueued(n) => {
                        let expect = m.get_mut(&name(n)).is_some_and(|e| !std::mem::replace(&mut e.2, true));
                        prop_assert_eq!(r.mark_queued(&name(n)), expect);
                    }
                    Op::Dequeued(n) => {
                        r.dequeued(&name(n));
                        if let Some(e) = m.get_mut(&name(n)) {
                            e.2 = false;
                        }
                    }
                    Op::QueueAll => {
                        let names: Vec<String> = m.keys().cloned().collect();
                        m.values_mut().for_each(|e| e.2 = true);
                        prop_assert_eq!(r.queue_all(), names);
                    }
                    Op::ClearQueued => {
                        r.clear_queued();
                        m.values_mut().for_each(|e| e.2 = false);
                    }
                    Op::TakeIdle(s) => {
                        let now = at(s);
                        let mut due = Vec::new();
                        let mut next: Option<Instant> = None;
                        for (n, e) in &mut m {
                            if e.2 {
                                continue;
                            }
                            if e.1 + after <= now {
                                e.2 = true;
                                due.push(n.clone());
                            } else {
                                next = Some(next.map_or(e.1 + after, |x| x.min(e.1 + after)));
                            }
                        }
                        prop_assert_eq!(r.take_idle(now, after), (due, next));
                    }
                }
                prop_assert_eq!(r.len(), m.len());
                for (n, e) in &m {
                    prop_assert_eq!(r.device_type(n), Some(e.0.as_deref()));
                }
                prop_assert!(r.slots.len() <= 4, "slots never outnumber the bound");
            }
        }
    }
}
