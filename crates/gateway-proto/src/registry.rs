//! The sub-devices a gateway speaks for.
//!
//! ThingsBoard keeps a gateway's child sessions only as long as the gateway's MQTT session
//! lives, and drops a child that has been silent for 10 minutes. The registry remembers
//! every sub-device the application connected or sent data for, so the connection can
//! announce them all again after each reconnect and keep silent ones alive.
//!
//! Bounded by [`Config::max_sub_devices`](crate::Config::max_sub_devices): adding one more
//! fails, nothing is evicted. Lookups (on every command that names a device) go through a
//! hash map; the rare walks over every device (the re-announce after a CONNACK, the idle
//! sweep) sort what they return, so the order stays deterministic: by name.

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

#[derive(Debug)]
pub(crate) struct Registry {
    devices: HashMap<String, SubDevice>,
    max: usize,
}

impl Registry {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            devices: HashMap::new(),
            max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.devices.len()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.devices.contains_key(name)
    }

    /// [`check`](Self::check) for one name, saying whether it is already tracked (one lookup,
    /// so that committing the command need not look it up again).
    pub(crate) fn check_one(&self, name: &str) -> Result<bool, CommandError> {
        if name.is_empty() {
            return Err(CommandError::EmptyDeviceName);
        }
        let known = self.devices.contains_key(name);
        if !known && self.devices.len() >= self.max {
            return Err(CommandError::TooManyDevices { max: self.max });
        }
        Ok(known)
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
            if !self.devices.contains_key(name) {
                new += 1;
            }
        }
        if self.devices.len() + new > self.max {
            return Err(CommandError::TooManyDevices { max: self.max });
        }
        Ok(())
    }

    /// Records an uplink for `name`, tracking it if it is new (call [`check`](Self::check)
    /// first). `device_type` is kept when given (explicit connect).
    pub(crate) fn touch(&mut self, name: &str, device_type: Option<&str>, now: Instant) {
        match self.devices.get_mut(name) {
            Some(d) => {
                d.last_uplink = now;
                if let Some(t) = device_type {
                    d.device_type = Some(t.to_owned());
                }
            }
            None => {
                self.devices.insert(
                    name.to_owned(),
                    SubDevice {
                        device_type: device_type.map(str::to_owned),
                        last_uplink: now,
                        queued: false,
                    },
                );
            }
        }
    }

    /// Records an uplink for `name` if it is tracked; never adds it.
    pub(crate) fn touch_if_tracked(&mut self, name: &str, now: Instant) {
        if let Some(d) = self.devices.get_mut(name) {
            d.last_uplink = now;
        }
    }

    /// Forgets `name`; true if it was tracked.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        self.devices.remove(name).is_some()
    }

    /// Moves `old`'s state to `new` (replacing any entry under `new`); true if `old` was
    /// tracked.
    pub(crate) fn rename(&mut self, old: &str, new: &str) -> bool {
        match self.devices.remove(old) {
            Some(d) => {
                self.devices.insert(new.to_owned(), d);
                true
            }
            None => false,
        }
    }

    /// Profile of a tracked device, and whether it is tracked at all.
    pub(crate) fn device_type(&self, name: &str) -> Option<Option<&str>> {
        self.devices.get(name).map(|d| d.device_type.as_deref())
    }

    /// Every tracked device, marked queued, in name order (for the re-announce after a
    /// CONNACK).
    pub(crate) fn queue_all(&mut self) -> Vec<String> {
        let mut names: Vec<String> = self
            .devices
            .iter_mut()
            .map(|(name, d)| {
                d.queued = true;
                name.clone()
            })
            .collect();
        names.sort_unstable();
        names
    }

    /// Marks a tracked device queued for the lane; false if it is unknown or already queued.
    pub(crate) fn mark_queued(&mut self, name: &str) -> bool {
        match self.devices.get_mut(name) {
            Some(d) if !d.queued => {
                d.queued = true;
                true
            }
            _ => false,
        }
    }

    /// The device left the announce/keep-alive lane (sent, or the lane was cleared).
    pub(crate) fn dequeued(&mut self, name: &str) {
        if let Some(d) = self.devices.get_mut(name) {
            d.queued = false;
        }
    }

    /// Clears every queued mark (the lane was dropped with the connection).
    pub(crate) fn clear_queued(&mut self) {
        for d in self.devices.values_mut() {
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
        for (name, d) in &mut self.devices {
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
}
