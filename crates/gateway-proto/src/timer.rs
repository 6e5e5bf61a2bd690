//! Every deadline the connection waits for, in one table.
//!
//! The connection sets and clears slots as its state changes; [`TimerTable::next`] is what
//! [`Connection::poll_timeout`](crate::Connection::poll_timeout) reports, and
//! [`TimerTable::expired`] tells which timers a `Timeout` input fires.

use std::time::Instant;

/// A kind of deadline. At most one of each is armed at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// From asking for a transport until CONNACK.
    Connect,
    /// When to send the next PINGREQ if the link stays idle.
    KeepAlive,
    /// How long a PINGREQ may wait for its PINGRESP.
    PingResponse,
    /// When the oldest unfinished publish times out.
    PublishDeadline,
    /// When the earliest attribute request or client RPC stops waiting for its answer.
    ResponseDeadline,
    /// When to look for sub-devices that need a keep-alive.
    SubDeviceSweep,
    /// When to ask for a new transport after a disconnect.
    Reconnect,
    /// Session limits and pacing: the end of the wait for `getSessionLimits`, the instant
    /// the next paced publish may go, or the next step of a rate recovery.
    Limits,
    /// When the outstanding OTA chunk is due.
    OtaChunk,
    /// When a provisioning connection stops waiting for its answer.
    Provision,
}

impl Timer {
    /// Firing order when several expire at once: the session-ending ones first, so a
    /// publish deadline that coincides with a dead link still sees the link as dead.
    pub(crate) const ALL: [Timer; 10] = [
        Timer::Connect,
        Timer::PingResponse,
        Timer::Provision,
        Timer::KeepAlive,
        Timer::PublishDeadline,
        Timer::ResponseDeadline,
        Timer::OtaChunk,
        Timer::SubDeviceSweep,
        Timer::Limits,
        Timer::Reconnect,
    ];

    fn index(self) -> usize {
        match self {
            Timer::Connect => 0,
            Timer::KeepAlive => 1,
            Timer::PingResponse => 2,
            Timer::PublishDeadline => 3,
            Timer::Reconnect => 4,
            Timer::ResponseDeadline => 5,
            Timer::SubDeviceSweep => 6,
            Timer::Limits => 7,
            Timer::OtaChunk => 8,
            Timer::Provision => 9,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Default, Clone)]
pub(crate) struct TimerTable {
    slots: [Option<Instant>; 10],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.slots[timer.index()] = Some(at);
    }

    pub(crate) fn set_or_clear(&mut self, timer: Timer, at: Option<Instant>) {
        self.slots[timer.index()] = at;
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.slots[timer.index()] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.slots[timer.index()]
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }

    /// Whether `timer` is armed and due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_is_the_minimum_and_clear_works() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::KeepAlive, t0 + Duration::from_secs(5));
        t.set(Timer::Connect, t0 + Duration::from_secs(3));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(3)));
        assert!(!t.is_expired(Timer::Connect, t0));
        assert!(t.is_expired(Timer::Connect, t0 + Duration::from_secs(3)));
        t.clear(Timer::Connect);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(5)));
        t.set_or_clear(Timer::KeepAlive, None);
        assert_eq!(t.next(), None);
    }
}
