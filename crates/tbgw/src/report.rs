//! What the load generator measured: outcomes, failures grouped by reason, latency
//! percentiles, and how it is printed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Outcomes of the telemetry requests of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes {
    /// QoS 1: acknowledged by the server.
    pub acknowledged: u64,
    /// QoS 0: handed to the transport (no acknowledgement exists).
    pub transmitted: u64,
    /// Failed, by reason (the error's text).
    pub failures: BTreeMap<String, u64>,
    /// Send → outcome, for every request that had an outcome (success or failure).
    latencies: Vec<Duration>,
}

impl Outcomes {
    /// Records a successful outcome.
    pub fn success(&mut self, acknowledged: bool, latency: Duration) {
        if acknowledged {
            self.acknowledged += 1;
        } else {
            self.transmitted += 1;
        }
        self.latencies.push(latency);
    }

    /// Records a failed outcome (`latency` is `None` when the request was refused before
    /// anything was sent).
    pub fn failure(&mut self, reason: impl Into<String>, latency: Option<Duration>) {
        *self.failures.entry(reason.into()).or_default() += 1;
        if let Some(latency) = latency {
            self.latencies.push(latency);
        }
    }

    /// Failed requests, all reasons together.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Requests with an outcome.
    pub fn finished(&self) -> u64 {
        self.acknowledged + self.transmitted + self.failed()
    }

    /// Latency percentiles, `None` if nothing finished.
    pub fn latency(&self) -> Option<Percentiles> {
        Percentiles::of(self.latencies.clone())
    }
}

/// Latency percentiles (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
    /// Samples.
    pub count: usize,
}

impl Percentiles {
    /// Percentiles of these samples; `None` if there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            p50: percentile(&samples, 50.0)?,
            p90: percentile(&samples, 90.0)?,
            p99: percentile(&samples, 99.0)?,
            max: *samples.last()?,
            count: samples.len(),
        })
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  max {}",
            Latency(self.p50),
            Latency(self.p90),
            Latency(self.p99),
            Latency(self.max)
        )
    }
}

/// The `p`th percentile (0 < p ≤ 100) of sorted samples by the nearest-rank method: the
/// smallest sample with at least `p` % of the samples at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let n = sorted.len();
    // Ranks are small enough for f64 to be exact.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// A latency for people: µs below 1 ms, ms below 10 s, then s.
#[derive(Debug, Clone, Copy)]
pub struct Latency(pub Duration);

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_millis(1) {
            write!(f, "{} µs", d.as_micros())
        } else if d < Duration::from_secs(10) {
            write!(f, "{:.1} ms", d.as_secs_f64() * 1000.0)
        } else {
            write!(f, "{:.1} s", d.as_secs_f64())
        }
    }
}

/// Messages per second over `elapsed` (0 for no time).
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        // Counts stay far below 2^52.
        #[allow(clippy::cast_precision_loss)]
        let count = count as f64;
        count / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 90.0), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.1), Some(Duration::from_millis(1)));

        let one = ms(&[7]);
        for p in [1.0, 50.0, 99.0, 100.0] {
            assert_eq!(percentile(&one, p), Some(Duration::from_millis(7)));
        }
        let four = ms(&[10, 20, 30, 40]);
        assert_eq!(percentile(&four, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&four, 51.0), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&four, 90.0), Some(Duration::from_millis(40)));

        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&four, 0.0), None);
        assert_eq!(percentile(&four, 101.0), None);
        assert_eq!(percentile(&four, f64::NAN), None);
    }

    #[test]
    fn percentiles_sort_their_samples() {
        let p = Percentiles::of(ms(&[5, 1, 4, 2, 3])).unwrap();
        assert_eq!(p.p50, Duration::from_millis(3));
        assert_eq!(p.p90, Duration::from_millis(5));
        assert_eq!(p.max, Duration::from_millis(5));
        assert_eq!(p.count, 5);
        assert_eq!(Percentiles::of(Vec::new()), None);
    }

    #[test]
    fn outcomes_group_failures_by_reason() {
        let mut o = Outcomes::default();
        o.success(true, Duration::from_millis(2));
        o.success(false, Duration::from_millis(1));
        o.failure("request failed: timed out", Some(Duration::from_secs(1)));
        o.failure("request failed: timed out", Some(Duration::from_secs(2)));
        o.failure("command refused: queue full", None);
        assert_eq!((o.acknowledged, o.transmitted, o.failed()), (1, 1, 3));
        assert_eq!(o.finished(), 5);
        assert_eq!(o.failures["request failed: timed out"], 2);
        assert_eq!(o.failures["command refused: queue full"], 1);
        let l = o.latency().unwrap();
        assert_eq!((l.count, l.max), (4, Duration::from_secs(2)));
    }

    #[test]
    fn formatting() {
        assert_eq!(Latency(Duration::from_micros(420)).to_string(), "420 µs");
        assert_eq!(Latency(Duration::from_micros(1500)).to_string(), "1.5 ms");
        assert_eq!(Latency(Duration::from_secs(12)).to_string(), "12.0 s");
        assert!((rate(400, Duration::from_secs(2)) - 200.0).abs() < 1e-9);
        assert!(rate(5, Duration::ZERO).abs() < f64::EPSILON);
    }
}
