//! Token buckets that pace publishes to ThingsBoard's transport rate limits.
//!
//! ThingsBoard checks every uplink against bucket4j buckets built from strings such as
//! `"100:1,3000:60"`: each `capacity:seconds` window refills greedily (continuously, at
//! `capacity / seconds`), starts full, and a message passes only if every window has room.
//! The client keeps the same buckets on its side, fed by the injected clock, and holds a
//! publish back until all of its buckets have room, so the server's never run dry.
//!
//! Arithmetic is exact: a window's level is kept in integer units of one hundredth of a token
//! times one nanosecond, so refill, the share the client allows itself and the wait until the
//! next publish never drift through rounding. Values from the network are clamped first.
//!
//! Per [`Scope`] (the connection's own device, or all sub-devices together) there are three
//! buckets, like on the server: regular messages, telemetry messages and telemetry data
//! points. A publish's [`Charge`] says how much of each it takes. Events the server counts
//! without a publish of ours are taken too: the session's open and subscriptions on CONNACK,
//! and, when a session ends, its close and one close per child session, which only ever
//! empty a bucket (the server refuses them when empty, without a debt).

use std::time::{Duration, Instant};

use crate::payload::{
    ClientAttributes, DeviceTelemetry, GatewayAttributes, GatewayTelemetry, Payload, PayloadError,
    RateLimitWindow, RateLimits,
};
use crate::topic::{classify_uplink, TopicFamily, UplinkTopic};

/// Largest window capacity taken from the server (more is treated as this much).
const MAX_CAPACITY: u64 = 1_000_000_000_000;
/// Longest window taken from the server, in seconds (about 115 days).
const MAX_WINDOW_SECS: u64 = 10_000_000;
/// Largest single charge (data points of one message), so products stay in range. A
/// message has fewer data points than bytes, and MQTT's largest packet fewer bytes than
/// this; charges are kept in `u32` so that an unfinished publish stays small.
const MAX_CHARGE: u64 = u32::MAX as u64;
/// Longest wait for tokens (a window clamped to `MAX_WINDOW_SECS`, slowed down 16 times,
/// fits), so adding it to an `Instant` cannot overflow.
const MAX_WAIT_NS: u128 = 16 * MAX_WINDOW_SECS as u128 * 1_000_000_000;
/// Push-back halves the rate at most this many times (down to 1/16).
pub(crate) const MAX_SLOWDOWN_SHIFT: u8 = 4;

/// Whose traffic a limit applies to. ThingsBoard keeps separate buckets for the gateway's
/// own Device API messages and for the aggregate of all its sub-devices' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// The connection's own device (for a gateway: its `rateLimits`, ThingsBoard's
    /// `transportGatewayDevice*` tenant-profile limits; for a device: `transportDevice*`).
    Device,
    /// All sub-devices of this gateway together (`gatewayRateLimits`, ThingsBoard's
    /// `transportGateway*` limits), i.e. everything on `v1/gateway/*`.
    Gateway,
}

impl Scope {
    /// The scope of a publish on `topic`: `v1/gateway/...` is sub-device traffic.
    pub(crate) fn of_topic(topic: &str) -> Self {
        if topic.starts_with("v1/gateway/") {
            Self::Gateway
        } else {
            Self::Device
        }
    }
}

/// What one publish takes from its scope's buckets, mirroring the server's check: a message
/// with data points takes one token per telemetry message plus its data points; any other
/// message one regular token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Charge {
    pub(crate) scope: Scope,
    /// Regular-message tokens.
    pub(crate) messages: u32,
    /// Telemetry-message tokens.
    pub(crate) telemetry: u32,
    /// Data-point tokens.
    pub(crate) points: u32,
}

impl Charge {
    /// One regular message.
    pub(crate) fn message(scope: Scope) -> Self {
        Self {
            scope,
            messages: 1,
            telemetry: 0,
            points: 0,
        }
    }

    /// `n` regular messages.
    pub(crate) fn messages(scope: Scope, n: u64) -> Self {
        Self {
            messages: tokens(n),
            ..Self::message(scope)
        }
    }

    /// Telemetry: `messages` telemetry messages (one per device entry on the gateway API)
    /// with `points` data points; without data points the server counts a regular message.
    pub(crate) fn telemetry(scope: Scope, messages: u64, points: u64) -> Self {
        if points == 0 {
            return Self {
                messages: tokens(messages.max(1)),
                ..Self::message(scope)
            };
        }
        Self {
            scope,
            messages: 0,
            telemetry: tokens(messages.max(1)),
            points: tokens(points),
        }
    }

    /// Client attributes, charged as ThingsBoard charges them: `process(PostAttributeMsg)`
    /// passes the key count as data points to `checkLimits`, which takes telemetry-message
    /// and data-point tokens (a regular message when there are no keys), exactly as for
    /// telemetry. `null` values, which the server drops, are still counted: a little early
    /// pacing, never a limit hit.
    pub(crate) fn attributes(scope: Scope, messages: u64, points: u64) -> Self {
        Self::telemetry(scope, messages, points)
    }

    /// A sub-device's `v1/gateway/connect`: ThingsBoard's get-or-create and the child's
    /// session-open event are two regular messages of the gateway's bucket
    /// (`MqttGatewayRateLimitsTest`). A child the server already holds in this session
    /// costs nothing there; counting it anyway only paces a little early.
    pub(crate) fn sub_device_connect() -> Self {
        Self {
            messages: 2,
            ..Self::message(Scope::Gateway)
        }
    }

    /// Whether this charge concerns the telemetry buckets.
    pub(crate) fn is_telemetry(&self) -> bool {
        self.telemetry > 0
    }
}

/// `n` tokens as a charge holds them (at most [`MAX_CHARGE`]).
fn tokens(n: u64) -> u32 {
    u32::try_from(n.min(MAX_CHARGE)).unwrap_or(u32::MAX)
}

/// The charge of a publish the application built itself ([`Command::Publish`]): telemetry
/// and attribute topics are parsed to count data points as the server will; a payload that
/// does not parse (protobuf) counts as one data point.
///
/// [`Command::Publish`]: crate::Command::Publish
pub(crate) fn charge_of_publish(topic: &str, payload: &[u8]) -> Charge {
    let scope = Scope::of_topic(topic);
    let count = |entries: &[crate::payload::TelemetryEntry]| {
        entries.iter().map(|e| e.values.len() as u64).sum::<u64>()
    };
    match classify_uplink(topic) {
        Some(UplinkTopic::GatewayTelemetry) => match GatewayTelemetry::parse(payload) {
            Ok(t) => Charge::telemetry(
                scope,
                t.devices.len() as u64,
                t.devices.values().map(|e| count(e)).sum(),
            ),
            Err(_) => Charge::telemetry(scope, 1, 1),
        },
        Some(UplinkTopic::GatewayAttributes) => match GatewayAttributes::parse(payload) {
            Ok(a) => Charge::attributes(
                scope,
                a.devices.len() as u64,
                a.devices.values().map(|v| v.len() as u64).sum(),
            ),
            Err(_) => Charge::attributes(scope, 1, 1),
        },
        Some(UplinkTopic::DeviceTelemetry { family }) => {
            match (family, DeviceTelemetry::parse(payload)) {
                (TopicFamily::V2Proto, _) | (_, Err(_)) => Charge::telemetry(scope, 1, 1),
                (_, Ok(t)) => Charge::telemetry(scope, 1, count(&t.entries)),
            }
        }
        Some(UplinkTopic::DeviceAttributes { family }) => {
            match (family, ClientAttributes::parse(payload)) {
                (TopicFamily::V2Proto, _) | (_, Err(_)) => Charge::attributes(scope, 1, 1),
                (_, Ok(a)) => Charge::attributes(scope, 1, a.values.len() as u64),
            }
        }
        Some(UplinkTopic::GatewayConnect) => Charge::sub_device_connect(),
        _ => Charge::message(scope),
    }
}

/// One `capacity:seconds` window with its level.
#[derive(Debug, Clone)]
struct Window {
    /// Capacity as the server gave it (clamped).
    capacity: u64,
    period_ns: u128,
    /// Refill the client allows itself: hundredths of a token per window (at least 1).
    rate: u128,
    /// Capacity the client allows itself, in hundredths of a token: the refill of one
    /// window, but at least one token, so that a message can always pass.
    cap: u128,
    /// Hundredths of a token times nanoseconds; negative after a charge above capacity.
    level: i128,
    at: Instant,
}

impl Window {
    fn new(w: RateLimitWindow, share: u8, shift: u8, now: Instant) -> Self {
        let capacity = w.capacity.min(MAX_CAPACITY);
        let secs = w.window_secs.min(MAX_WINDOW_SECS);
        let period_ns = u128::from(secs) * 1_000_000_000;
        let rate = scale(capacity, share, shift);
        let mut window = Self {
            capacity,
            period_ns,
            rate,
            cap: rate.max(100),
            level: 0,
            at: now,
        };
        window.level = window.max_level();
        window
    }

    fn max_level(&self) -> i128 {
        i128::try_from(self.cap.saturating_mul(self.period_ns)).unwrap_or(i128::MAX)
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.at {
            return;
        }
        let elapsed = now.duration_since(self.at).as_nanos();
        let gained = i128::try_from(elapsed.saturating_mul(self.rate)).unwrap_or(i128::MAX);
        self.level = self.level.saturating_add(gained).min(self.max_level());
        self.at = now;
    }

    /// Units `n` tokens take.
    fn need(&self, n: u64) -> i128 {
        let units = u128::from(n.min(MAX_CHARGE))
            .saturating_mul(100)
            .saturating_mul(self.period_ns);
        i128::try_from(units).unwrap_or(i128::MAX)
    }

    /// When `n` tokens are available (a charge above the capacity waits for a full
    /// window); `now` if they are.
    fn ready_at(&mut self, n: u64, now: Instant) -> Instant {
        self.refill(now);
        let want = self.need(n).min(self.max_level());
        if self.level >= want {
            return now;
        }
        let deficit = u128::try_from(want - self.level).unwrap_or(u128::MAX);
        let wait_ns = deficit.div_ceil(self.rate.max(1)).min(MAX_WAIT_NS);
        let wait = Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX));
        now.checked_add(wait).unwrap_or(now)
    }

    fn take(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = self.level.saturating_sub(self.need(n));
    }

    /// Takes up to `n` tokens without going below empty: what the server's bucket does for
    /// an event nobody waits for (refused when empty, no debt).
    fn drain(&mut self, n: u64, now: Instant) {
        self.refill(now);
        if self.level > 0 {
            self.level = self.level.saturating_sub(self.need(n)).max(0);
        }
    }

    fn set_scale(&mut self, share: u8, shift: u8, now: Instant) {
        self.refill(now);
        self.rate = scale(self.capacity, share, shift);
        self.cap = self.rate.max(100);
        self.level = self.level.min(self.max_level());
    }

    /// The share of a full window this one holds now (0..=1, for carrying over).
    fn fill(&self) -> (i128, i128) {
        (self.level, self.max_level())
    }
}

/// `capacity × share% ÷ 2^shift`, in hundredths of a token (at least one hundredth).
fn scale(capacity: u64, share: u8, shift: u8) -> u128 {
    let hundredths = u128::from(capacity) * u128::from(share.clamp(1, 100));
    (hundredths >> shift.min(MAX_SLOWDOWN_SHIFT)).max(1)
}

/// A rate limit of several windows; none means unlimited.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bucket {
    windows: Vec<Window>,
}

impl Bucket {
    fn new(windows: &[RateLimitWindow], share: u8, shift: u8, now: Instant) -> Self {
        Self {
            windows: windows
                .iter()
                .filter(|w| !w.is_unlimited())
                .map(|&w| Window::new(w, share, shift, now))
                .collect(),
        }
    }

    /// New windows that keep the fill of old windows of the same length, so a reconnect
    /// (or a changed limit) does not hand out a fresh burst the server never refilled.
    fn replace(&mut self, windows: &[RateLimitWindow], share: u8, shift: u8, now: Instant) {
        let mut next = Self::new(windows, share, shift, now);
        for w in &mut self.windows {
            w.refill(now);
        }
        for new in &mut next.windows {
            if let Some(old) = self.windows.iter().find(|o| o.period_ns == new.period_ns) {
                let (level, max) = old.fill();
                if max > 0 {
                    // Carry the fill over in millionths (debt included), rounding down.
                    let ppm = level.clamp(-max, max).saturating_mul(1_000_000) / max;
                    new.level = (new.max_level() / 1_000_000)
                        .saturating_mul(ppm)
                        .min(new.max_level());
                }
            }
        }
        *self = next;
    }

    pub(crate) fn is_limited(&self) -> bool {
        !self.windows.is_empty()
    }

    fn ready_at(&mut self, n: u64, now: Instant) -> Instant {
        self.windows
            .iter_mut()
            .map(|w| w.ready_at(n, now))
            .max()
            .unwrap_or(now)
    }

    fn take(&mut self, n: u64, now: Instant) {
        for w in &mut self.windows {
            w.take(n, now);
        }
    }

    fn empty(&mut self, now: Instant) {
        for w in &mut self.windows {
            w.refill(now);
            w.level = w.level.min(0);
        }
    }

    fn set_scale(&mut self, share: u8, shift: u8, now: Instant) {
        for w in &mut self.windows {
            w.set_scale(share, shift, now);
        }
    }
}

/// The three buckets of one scope.
#[derive(Debug, Clone, Default)]
pub(crate) struct BucketSet {
    pub(crate) messages: Bucket,
    pub(crate) telemetry: Bucket,
    pub(crate) points: Bucket,
}

impl BucketSet {
    fn is_limited(&self) -> bool {
        self.messages.is_limited() || self.telemetry.is_limited() || self.points.is_limited()
    }
}

/// Parsed windows of one `rateLimits` object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ParsedLimits {
    messages: Vec<RateLimitWindow>,
    telemetry: Vec<RateLimitWindow>,
    points: Vec<RateLimitWindow>,
}

impl ParsedLimits {
    pub(crate) fn parse(limits: &RateLimits) -> Result<Self, PayloadError> {
        Ok(Self {
            messages: limits.messages_windows()?,
            telemetry: limits.telemetry_messages_windows()?,
            points: limits.telemetry_data_points_windows()?,
        })
    }
}

/// Both scopes' buckets, the share of the limits the client uses, and the slow-down after
/// server push-back.
#[derive(Debug)]
pub(crate) struct Pacer {
    share: u8,
    /// First pause after a push-back; doubles with each push-back in a row.
    pause: Duration,
    max_pause: Duration,
    /// Quiet time after which a halved rate doubles again (one step per period).
    recovery: Duration,
    device: ScopeState,
    gateway: ScopeState,
}

#[derive(Debug, Default)]
struct ScopeState {
    buckets: BucketSet,
    /// How many times the rate is halved (push-back).
    shift: u8,
    /// No publish of this scope before this instant (push-back).
    paused_until: Option<Instant>,
    /// Push-backs since the rate was last back to full (the pause doubles with each).
    strikes: u32,
    /// When the rate is doubled again (one step).
    recover_at: Option<Instant>,
}

/// What the pacer did after a push-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlowDown {
    pub(crate) rate_percent: u8,
    pub(crate) paused_until: Instant,
    pub(crate) limits_known: bool,
}

impl Pacer {
    pub(crate) fn new(share: u8, pause: Duration, max_pause: Duration, recovery: Duration) -> Self {
        Self {
            share: share.clamp(1, 100),
            pause,
            max_pause: max_pause.max(pause),
            recovery,
            device: ScopeState::default(),
            gateway: ScopeState::default(),
        }
    }

    fn scope(&mut self, scope: Scope) -> &mut ScopeState {
        match scope {
            Scope::Device => &mut self.device,
            Scope::Gateway => &mut self.gateway,
        }
    }

    /// Installs learned limits for `scope` (`None`: unlimited), keeping the fill of
    /// windows of the same length.
    pub(crate) fn install(&mut self, scope: Scope, limits: Option<&ParsedLimits>, now: Instant) {
        let share = self.share;
        let state = self.scope(scope);
        let shift = state.shift;
        let empty = ParsedLimits::default();
        let limits = limits.unwrap_or(&empty);
        state
            .buckets
            .messages
            .replace(&limits.messages, share, shift, now);
        state
            .buckets
            .telemetry
            .replace(&limits.telemetry, share, shift, now);
        state
            .buckets
            .points
            .replace(&limits.points, share, shift, now);
    }

    /// Whether `scope` has learned limits.
    pub(crate) fn is_limited(&self, scope: Scope) -> bool {
        match scope {
            Scope::Device => self.device.buckets.is_limited(),
            Scope::Gateway => self.gateway.buckets.is_limited(),
        }
    }

    /// The data points one message of `scope` may carry (the smallest full data-point
    /// window); `None` when unlimited.
    pub(crate) fn max_points(&self, scope: Scope) -> Option<u64> {
        let state = match scope {
            Scope::Device => &self.device,
            Scope::Gateway => &self.gateway,
        };
        // Capacity at the full rate: a slow-down makes a big message wait for a full
        // bucket instead of splitting it further.
        let share = self.share;
        state
            .buckets
            .points
            .windows
            .iter()
            .map(|w| {
                u64::try_from(scale(w.capacity, share, 0) / 100)
                    .unwrap_or(u64::MAX)
                    .max(1)
            })
            .min()
    }

    /// When `charge` can be taken; `now` if it can.
    pub(crate) fn ready_at(&mut self, charge: &Charge, now: Instant) -> Instant {
        self.recover(now);
        let state = self.scope(charge.scope);
        let mut at = now;
        if let Some(p) = state.paused_until {
            if p > now {
                at = p;
            } else {
                state.paused_until = None;
            }
        }
        let b = &mut state.buckets;
        if charge.messages > 0 {
            at = at.max(b.messages.ready_at(u64::from(charge.messages), now));
        }
        if charge.telemetry > 0 {
            at = at.max(b.telemetry.ready_at(u64::from(charge.telemetry), now));
        }
        if charge.points > 0 {
            at = at.max(b.points.ready_at(u64::from(charge.points), now));
        }
        at
    }

    /// Takes `charge` (possibly below zero: a message larger than a bucket goes out once
    /// the bucket is full, and the next waits for the debt to refill).
    pub(crate) fn take(&mut self, charge: &Charge, now: Instant) {
        let b = &mut self.scope(charge.scope).buckets;
        if charge.messages > 0 {
            b.messages.take(u64::from(charge.messages), now);
        }
        if charge.telemetry > 0 {
            b.telemetry.take(u64::from(charge.telemetry), now);
        }
        if charge.points > 0 {
            b.points.take(u64::from(charge.points), now);
        }
    }

    /// Takes `charge` from events the server counts but nobody waits for (session closes):
    /// each window goes down to empty at most, as the server's does.
    pub(crate) fn drain(&mut self, charge: &Charge, now: Instant) {
        let b = &mut self.scope(charge.scope).buckets;
        for (bucket, n) in [
            (&mut b.messages, charge.messages),
            (&mut b.telemetry, charge.telemetry),
            (&mut b.points, charge.points),
        ] {
            if n > 0 {
                for w in &mut bucket.windows {
                    w.drain(u64::from(n), now);
                }
            }
        }
    }

    /// The server pushed back on `scope`: its buckets are emptied (the server's are), the
    /// rate is halved (down to 1/16) and doubles back one step per recovery period without
    /// another push-back, and nothing of the scope goes out for the pause (doubling with
    /// each push-back in a row, bounded).
    pub(crate) fn push_back(&mut self, scope: Scope, now: Instant) -> SlowDown {
        self.recover(now);
        let (share, pause, max_pause, recovery) =
            (self.share, self.pause, self.max_pause, self.recovery);
        let state = self.scope(scope);
        // Signals during a pause come from the burst that caused it (the PUBACK 0x97, then
        // the disconnect notice, then the refusals of what was already in flight): one
        // slow-down for all of them.
        let same_burst = state.paused_until.is_some_and(|p| p > now);
        if !same_burst {
            state.shift = (state.shift + 1).min(MAX_SLOWDOWN_SHIFT);
            state.strikes = state.strikes.saturating_add(1);
        }
        let b = &mut state.buckets;
        for bucket in [&mut b.messages, &mut b.telemetry, &mut b.points] {
            bucket.set_scale(share, state.shift, now);
            bucket.empty(now);
        }
        if !same_burst {
            let factor = 1u32 << state.strikes.saturating_sub(1).min(16);
            let pause = pause.saturating_mul(factor).min(max_pause);
            state.paused_until = Some(now + pause);
            state.recover_at = Some(now + recovery);
        }
        let until = state.paused_until.unwrap_or(now);
        SlowDown {
            rate_percent: rate_percent(state.shift),
            paused_until: until,
            limits_known: state.buckets.is_limited(),
        }
    }

    /// Steps the rate back up where the recovery time has passed.
    pub(crate) fn recover(&mut self, now: Instant) {
        let (share, recovery) = (self.share, self.recovery);
        for state in [&mut self.device, &mut self.gateway] {
            while let Some(at) = state.recover_at {
                if at > now {
                    break;
                }
                state.shift = state.shift.saturating_sub(1);
                let b = &mut state.buckets;
                for bucket in [&mut b.messages, &mut b.telemetry, &mut b.points] {
                    bucket.set_scale(share, state.shift, at);
                }
                if state.shift == 0 {
                    state.recover_at = None;
                    state.strikes = 0;
                } else {
                    state.recover_at = Some(at + recovery.max(Duration::from_millis(1)));
                }
            }
        }
    }

    /// When the rate of a slowed-down scope steps up next.
    pub(crate) fn next_recovery(&self) -> Option<Instant> {
        [self.device.recover_at, self.gateway.recover_at]
            .into_iter()
            .flatten()
            .min()
    }
}

fn rate_percent(shift: u8) -> u8 {
    100u8 >> shift.min(MAX_SLOWDOWN_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(capacity: u64, window_secs: u64) -> RateLimitWindow {
        RateLimitWindow {
            capacity,
            window_secs,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn windows_start_full_refill_greedily_and_all_must_have_room() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(2, 1), w(3, 10)], 100, 0, t0);
        assert_eq!(b.ready_at(1, t0), t0);
        b.take(1, t0);
        b.take(1, t0);
        // 2:1 is empty: one token back after 500 ms.
        assert_eq!(b.ready_at(1, t0), t0 + ms(500));
        let t1 = t0 + Duration::from_secs(1);
        b.take(1, t1);
        // 3:10 now has 0.3 tokens left (3 − 3 + 1 s × 0.3/s): 0.7 more take 2⅓ s.
        assert_eq!(b.ready_at(1, t1), t1 + Duration::from_nanos(2_333_333_334));
    }

    #[test]
    fn exact_rate_over_a_long_run() {
        // 7 tokens per 3 s, sent as soon as allowed for 10 minutes: exactly the burst plus
        // the refill, never more.
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(7, 3)], 100, 0, t0);
        let mut now = t0;
        let mut sent = 0u64;
        let end = t0 + Duration::from_secs(600);
        loop {
            let at = b.ready_at(1, now);
            if at > end {
                break;
            }
            now = at;
            b.take(1, now);
            sent += 1;
        }
        assert_eq!(sent, 7 + 600 * 7 / 3);
    }

    #[test]
    fn the_share_scales_capacity_and_rate_but_keeps_one_token() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(10, 1)], 80, 0, t0);
        for _ in 0..8 {
            assert_eq!(b.ready_at(1, t0), t0);
            b.take(1, t0);
        }
        assert_eq!(b.ready_at(1, t0), t0 + ms(125), "8 tokens per second");
        // A 1:1 limit at 80 % still lets one message through, at 0.8 per second.
        let mut one = Bucket::new(&[w(1, 1)], 80, 0, t0);
        assert_eq!(one.ready_at(1, t0), t0);
        one.take(1, t0);
        assert_eq!(one.ready_at(1, t0), t0 + ms(1250));
    }

    #[test]
    fn a_charge_above_capacity_waits_for_a_full_bucket_then_goes_into_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(10, 1)], 100, 0, t0);
        b.take(5, t0);
        // 25 points never fit 10: wait until full (500 ms), then take all 25.
        assert_eq!(b.ready_at(25, t0), t0 + ms(500));
        let t1 = t0 + ms(500);
        b.take(25, t1);
        // −15 tokens: the next single token is 1.6 s away.
        assert_eq!(b.ready_at(1, t1), t1 + ms(1600));
    }

    #[test]
    fn unlimited_and_zero_windows_never_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(0, 0), w(0, 60), w(10, 0)], 80, 0, t0);
        assert!(!b.is_limited());
        b.take(1_000_000, t0);
        assert_eq!(b.ready_at(1_000_000, t0), t0);
    }

    #[test]
    fn huge_server_values_are_clamped_without_overflow() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(u64::MAX, u64::MAX), w(1, u64::MAX)], 100, 0, t0);
        b.take(u64::MAX, t0);
        let at = b.ready_at(u64::MAX, t0);
        assert!(at > t0);
        assert!(at <= t0 + Duration::from_nanos(MAX_WAIT_NS as u64));
        let later = t0 + Duration::from_secs(3600 * 24 * 365 * 100);
        b.take(1, later);
    }

    #[test]
    fn replacing_limits_keeps_the_fill_of_windows_of_the_same_length() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&[w(10, 1), w(100, 60)], 100, 0, t0);
        b.take(10, t0);
        // Same 1 s window with capacity 20: still empty; a new 10 s window starts full.
        b.replace(&[w(20, 1), w(50, 10)], 100, 0, t0);
        assert_eq!(b.ready_at(1, t0), t0 + ms(50));
    }

    fn pacer() -> Pacer {
        Pacer::new(
            100,
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(60),
        )
    }

    fn limits(messages: &str, telemetry: &str, points: &str) -> ParsedLimits {
        ParsedLimits::parse(&RateLimits {
            messages: messages.into(),
            telemetry_messages: telemetry.into(),
            telemetry_data_points: points.into(),
        })
        .unwrap_or_default()
    }

    #[test]
    fn charges_pick_buckets_like_the_server_and_scopes_are_separate() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.install(Scope::Gateway, Some(&limits("1:1", "2:1", "5:1")), t0);
        let telemetry = Charge::telemetry(Scope::Gateway, 1, 3);
        let message = Charge::message(Scope::Gateway);
        assert_eq!(p.ready_at(&telemetry, t0), t0);
        p.take(&telemetry, t0);
        // 2 data points left: the next 3-point message waits 200 ms for the third.
        assert_eq!(p.ready_at(&telemetry, t0), t0 + ms(200));
        // The message bucket is untouched by telemetry.
        assert_eq!(p.ready_at(&message, t0), t0);
        // Telemetry without data points is a regular message.
        assert_eq!(Charge::telemetry(Scope::Gateway, 1, 0), message);
        // Attributes are charged as telemetry (`checkLimits` with the key count), no regular
        // message; without keys they are one regular message.
        let attrs = Charge::attributes(Scope::Gateway, 1, 2);
        assert_eq!((attrs.messages, attrs.telemetry, attrs.points), (0, 1, 2));
        assert_eq!(Charge::attributes(Scope::Gateway, 1, 0), message);
        // The device's own scope knows no limits.
        p.take(&Charge::telemetry(Scope::Device, 1, 1000), t0);
        assert_eq!(p.ready_at(&Charge::message(Scope::Device), t0), t0);
        assert_eq!(p.max_points(Scope::Gateway), Some(5));
        assert_eq!(p.max_points(Scope::Device), None);
    }

    #[test]
    fn push_back_empties_halves_pauses_and_recovers_step_by_step() {
        let t0 = Instant::now();
        let mut p = pacer();
        p.install(Scope::Gateway, Some(&limits("10:1", "", "")), t0);
        let m = Charge::message(Scope::Gateway);
        let slow = p.push_back(Scope::Gateway, t0);
        assert_eq!(slow.rate_percent, 50);
        assert_eq!(slow.paused_until, t0 + Duration::from_secs(1));
        assert!(slow.limits_known);
        // A second signal of the same burst (during the pause) changes nothing.
        let t_half = t0 + ms(500);
        let again = p.push_back(Scope::Gateway, t_half);
        assert_eq!(again.rate_percent, 50);
        assert_eq!(again.paused_until, t0 + Duration::from_secs(1));
        // Paused for 1 s, and the bucket (now 5 per second) was emptied again at 500 ms: it
        // holds 2.5 tokens after the pause, then refills at 5 per second.
        assert_eq!(p.ready_at(&m, t0), t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..2 {
            assert_eq!(p.ready_at(&m, t1), t1);
            p.take(&m, t1);
        }
        assert_eq!(p.ready_at(&m, t1), t1 + ms(100));
        // A new push-back later halves again and doubles the pause.
        let t2 = t0 + Duration::from_secs(10);
        let slow = p.push_back(Scope::Gateway, t2);
        assert_eq!(slow.rate_percent, 25);
        assert_eq!(slow.paused_until, t2 + Duration::from_secs(2));
        assert_eq!(p.next_recovery(), Some(t2 + Duration::from_secs(60)));
        // 60 s quiet: 50 %; 120 s: back to 100 %.
        let t3 = t2 + Duration::from_secs(60);
        p.ready_at(&m, t3);
        assert_eq!(p.next_recovery(), Some(t2 + Duration::from_secs(120)));
        let t4 = t2 + Duration::from_secs(120);
        p.ready_at(&m, t4);
        assert_eq!(p.next_recovery(), None);
        // The level carries over the step up; one second later the bucket is full again.
        let t5 = t4 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(p.ready_at(&m, t5), t5);
            p.take(&m, t5);
        }
        assert_eq!(p.ready_at(&m, t5), t5 + ms(100), "10 per second again");
        // The other scope was never touched.
        assert_eq!(p.ready_at(&Charge::message(Scope::Device), t0), t0);
    }

    #[test]
    fn push_back_without_known_limits_only_pauses_and_the_pause_is_bounded() {
        let t0 = Instant::now();
        let mut p = pacer();
        let mut now = t0;
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            let slow = p.push_back(Scope::Device, now);
            assert!(!slow.limits_known);
            last = slow.paused_until - now;
            now = slow.paused_until + ms(1);
        }
        assert_eq!(last, Duration::from_secs(8), "doubles up to the maximum");
        assert_eq!(p.ready_at(&Charge::message(Scope::Device), now), now);
    }

    #[test]
    fn charges_keep_their_counts_and_clip_only_past_u32() {
        let c = Charge::telemetry(Scope::Gateway, 3, 70_000);
        assert_eq!((c.messages, c.telemetry, c.points), (0, 3, 70_000));
        let c = Charge::telemetry(Scope::Device, u64::MAX, u64::MAX);
        assert_eq!((c.telemetry, c.points), (u32::MAX, u32::MAX));
        let c = Charge::messages(Scope::Gateway, 5_000_000_000);
        assert_eq!(
            (c.scope, c.messages, c.points),
            (Scope::Gateway, u32::MAX, 0)
        );
        assert_eq!(Charge::telemetry(Scope::Device, 0, 0).messages, 1);
    }

    #[test]
    fn drain_empties_a_window_at_most_and_keeps_a_debt() {
        let t0 = Instant::now();
        let mut p = Pacer::new(
            100,
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(60),
        );
        p.install(Scope::Gateway, Some(&limits("10:10", "", "")), t0);
        let one = Charge::message(Scope::Gateway);
        let n = |n| Charge { messages: n, ..one };
        // 4 of 10 drained: 6 pass at once, the 7th waits a second.
        p.drain(&n(4), t0);
        for _ in 0..6 {
            assert_eq!(p.ready_at(&one, t0), t0);
            p.take(&one, t0);
        }
        assert_eq!(p.ready_at(&one, t0), t0 + Duration::from_secs(1));
        // Draining more than is left stops at empty: after 3 s, 3 tokens, not fewer.
        p.drain(&n(100), t0);
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(p.ready_at(&n(3), t3), t3);
        // A debt (a charge above the level) is not deepened, nor paid, by a drain.
        p.take(&n(5), t3);
        p.drain(&n(100), t3);
        assert_eq!(p.ready_at(&one, t3), t3 + Duration::from_secs(3));
    }

    #[test]
    fn publish_charges_count_data_points_of_raw_payloads() {
        let c = charge_of_publish(
            "v1/gateway/telemetry",
            br#"{"A":[{"a":1,"b":2}],"B":[{"c":3}]}"#,
        );
        assert_eq!((c.scope, c.telemetry, c.points), (Scope::Gateway, 2, 3));
        let c = charge_of_publish(
            "v1/devices/me/telemetry",
            br#"[{"ts":1,"values":{"a":1}},{"b":2}]"#,
        );
        assert_eq!((c.scope, c.telemetry, c.points), (Scope::Device, 1, 2));
        let c = charge_of_publish("v2/t/p", &[0x08, 0x01]);
        assert_eq!((c.telemetry, c.points), (1, 1));
        let c = charge_of_publish("v1/gateway/attributes", br#"{"A":{"x":1,"y":2}}"#);
        assert_eq!((c.messages, c.telemetry, c.points), (0, 1, 2));
        // A child's get-or-create and its session-open event.
        assert_eq!(
            charge_of_publish("v1/gateway/connect", b"{}"),
            Charge {
                messages: 2,
                ..Charge::message(Scope::Gateway)
            }
        );
        assert_eq!(
            charge_of_publish("v1/gateway/disconnect", b"{}"),
            Charge::message(Scope::Gateway)
        );
        assert_eq!(
            charge_of_publish("custom/topic", b"x"),
            Charge::message(Scope::Device)
        );
    }
}
