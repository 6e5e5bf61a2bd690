//! Reconnect delays: exponential, capped, with seeded jitter so runs replay exactly.

use std::time::Duration;

use crate::config::ReconnectPolicy;

/// Tracks consecutive failed connections and computes the next delay.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    failures: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        let rng = SplitMix64(policy.seed);
        Self {
            policy,
            failures: 0,
            rng,
        }
    }

    /// The connection that just ended lasted `lasted` (zero if it never got a CONNACK).
    /// Returns how long to wait before the next attempt.
    pub(crate) fn next_delay(&mut self, lasted: Duration, permanent_refusal: bool) -> Duration {
        if lasted >= self.policy.stable_after {
            self.failures = 0;
        }
        let exp = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .policy
            .initial_delay
            .saturating_mul(1u32 << exp)
            .min(self.policy.max_delay);
        let jitter_share = u128::from(self.policy.jitter_percent.min(100));
        // A random fraction in [0, 1) with 16 bits of resolution.
        let fraction = u128::from(self.rng.next() >> 48);
        let base_nanos = base.as_nanos();
        let cut = base_nanos * jitter_share * fraction / (100 * 65_536);
        let delay = nanos_to_duration(base_nanos - cut);
        if permanent_refusal {
            delay.max(self.policy.refused_delay)
        } else {
            delay
        }
    }
}

fn nanos_to_duration(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9 and so fits u32.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

/// A tiny, well-known PRNG (SplitMix64): enough for jitter, no dependency.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: u8) -> ReconnectPolicy {
        ReconnectPolicy {
            jitter_percent: jitter,
            ..ReconnectPolicy::default()
        }
    }

    #[test]
    fn grows_exponentially_to_the_cap_without_jitter() {
        let mut b = Backoff::new(policy(0));
        let secs: Vec<u64> = (0..9)
            .map(|_| b.next_delay(Duration::ZERO, false).as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_its_share_and_replays_from_the_seed() {
        let mut a = Backoff::new(policy(50));
        let mut b = Backoff::new(policy(50));
        let mut seen_distinct = std::collections::HashSet::new();
        for attempt in 0..200 {
            let d = a.next_delay(Duration::ZERO, false);
            assert_eq!(d, b.next_delay(Duration::ZERO, false));
            // Base delay 1, 2, 4, .. capped at 60 s; up to half of it is taken off.
            let base = Duration::from_secs((1u64 << attempt.min(6)).min(60));
            assert!(d <= base && d >= base / 2, "attempt {attempt}: {d:?}");
            seen_distinct.insert(d);
        }
        assert!(seen_distinct.len() > 50, "jitter is not random enough");
        let mut other = Backoff::new(ReconnectPolicy {
            seed: 7,
            ..policy(50)
        });
        let mut a = Backoff::new(policy(50));
        let differs = (0..10).any(|_| {
            a.next_delay(Duration::ZERO, false) != other.next_delay(Duration::ZERO, false)
        });
        assert!(differs);
    }

    #[test]
    fn a_stable_connection_resets_the_count() {
        let mut b = Backoff::new(policy(0));
        for _ in 0..5 {
            b.next_delay(Duration::ZERO, false);
        }
        assert_eq!(
            b.next_delay(Duration::from_secs(1), false),
            Duration::from_secs(32)
        );
        assert_eq!(
            b.next_delay(Duration::from_secs(30), false),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn permanent_refusals_wait_at_least_the_refused_delay() {
        let mut b = Backoff::new(policy(50));
        for _ in 0..20 {
            assert!(b.next_delay(Duration::ZERO, true) >= Duration::from_secs(60));
        }
    }

    #[test]
    fn huge_policies_do_not_overflow() {
        let mut b = Backoff::new(ReconnectPolicy {
            initial_delay: Duration::MAX,
            max_delay: Duration::MAX,
            jitter_percent: 100,
            ..ReconnectPolicy::default()
        });
        for _ in 0..40 {
            let _ = b.next_delay(Duration::ZERO, false);
        }
    }
}
