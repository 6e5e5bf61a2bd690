//! Gateway latency metrics: ThingsBoard's `GatewayMetricsService`.
//!
//! A gateway telemetry element may carry `"metadata":{"connector","receivedTs","publishedTs"}`.
//! For every device whose elements convert, the server feeds those to the gateway's metrics
//! with its own receive time, per connector: the gateway latency (`publishedTs − receivedTs`)
//! and the transport latency (receive time − `publishedTs`). Every
//! `transport.mqtt.gateway_metrics_report_interval_sec` (60 s, at a fixed rate from start-up)
//! each gateway with data gets one telemetry point `gatewayMetrics`, a JSON object by connector
//! name of `{avgGwLatency, minGwLatency, maxGwLatency, avgTransportLatency,
//! minTransportLatency, maxTransportLatency}`, and its data starts over.
//!
//! `GatewayMetricsState`'s arithmetic is kept, quirks included: a minimum of 0 counts as
//! "not set yet" (so a latency of 0 is replaced by the next one), maxima start at 0 (negative
//! latencies never become a maximum), sums wrap like Java's `long`, averages truncate.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::model::DeviceId;

/// The telemetry key of the report.
pub(crate) const GATEWAY_METRICS_KEY: &str = "gatewayMetrics";

/// One `metadata` object of a telemetry element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample<'a> {
    pub(crate) connector: &'a str,
    pub(crate) received_ts: i64,
    pub(crate) published_ts: i64,
}

/// `ConnectorMetricsState`: what one connector of one gateway reported since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Connector {
    count: i64,
    gw_sum: i64,
    transport_sum: i64,
    min_gw: i64,
    max_gw: i64,
    min_transport: i64,
    max_transport: i64,
}

impl Connector {
    fn update(&mut self, s: &Sample<'_>, server_ms: i64) {
        let gw = s.published_ts.wrapping_sub(s.received_ts);
        let transport = server_ms.wrapping_sub(s.published_ts);
        self.count = self.count.wrapping_add(1);
        self.gw_sum = self.gw_sum.wrapping_add(gw);
        self.transport_sum = self.transport_sum.wrapping_add(transport);
        if self.min_gw == 0 || self.min_gw > gw {
            self.min_gw = gw;
        }
        self.max_gw = self.max_gw.max(gw);
        if self.min_transport == 0 || self.min_transport > transport {
            self.min_transport = transport;
        }
        self.max_transport = self.max_transport.max(transport);
    }

    /// `ConnectorMetricsResult` as Jackson writes the record.
    fn result(&self) -> Value {
        // `count` is at least 1: a connector exists only once a sample updated it.
        let count = self.count.max(1);
        let mut o = Map::new();
        o.insert(
            "avgGwLatency".into(),
            Value::from(self.gw_sum.wrapping_div(count)),
        );
        o.insert("minGwLatency".into(), Value::from(self.min_gw));
        o.insert("maxGwLatency".into(), Value::from(self.max_gw));
        o.insert(
            "avgTransportLatency".into(),
            Value::from(self.transport_sum.wrapping_div(count)),
        );
        o.insert(
            "minTransportLatency".into(),
            Value::from(self.min_transport),
        );
        o.insert(
            "maxTransportLatency".into(),
            Value::from(self.max_transport),
        );
        Value::Object(o)
    }
}

/// Every gateway's metrics since the last report, and the report schedule.
#[derive(Debug)]
pub(crate) struct GatewayMetrics {
    /// The scheduler's start: reports fall on `start + k × interval`, k ≥ 1.
    start: Instant,
    interval: Duration,
    /// Connectors per gateway beyond this are not tracked (the emulator's memory bound).
    max_connectors: usize,
    gateways: HashMap<DeviceId, BTreeMap<String, Connector>>,
    /// The next report, while there is something to report.
    due: Option<Instant>,
}

impl GatewayMetrics {
    pub(crate) fn new(start: Instant, interval: Duration, max_connectors: usize) -> Self {
        Self {
            start,
            // A zero interval would make every instant a report time.
            interval: interval.max(Duration::from_millis(1)),
            max_connectors,
            gateways: HashMap::new(),
            due: None,
        }
    }

    /// The first report time strictly after `t`.
    fn next_tick_after(&self, t: Instant) -> Instant {
        let elapsed = t.saturating_duration_since(self.start).as_nanos();
        let step = self.interval.as_nanos().max(1);
        let ticks = u32::try_from(elapsed / step + 1).unwrap_or(u32::MAX);
        self.start + self.interval.saturating_mul(ticks)
    }

    /// `GatewayMetricsService.process`: `samples` of one device's telemetry, received by the
    /// server at `server_ms`. Returns how many samples were dropped by the connector bound.
    pub(crate) fn record<'a>(
        &mut self,
        gateway: DeviceId,
        samples: impl IntoIterator<Item = Sample<'a>>,
        server_ms: i64,
        now: Instant,
    ) -> u64 {
        // Telemetry without metadata (the usual case) touches nothing.
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return 0;
        }
        let mut dropped = 0;
        let max = self.max_connectors;
        let connectors = self.gateways.entry(gateway).or_default();
        for s in samples {
            if !connectors.contains_key(s.connector) {
                if connectors.len() >= max {
                    dropped += 1;
                    continue;
                }
                connectors.insert(s.connector.to_owned(), Connector::default());
            }
            if let Some(c) = connectors.get_mut(s.connector) {
                c.update(&s, server_ms);
            }
        }
        if connectors.is_empty() {
            self.gateways.remove(&gateway);
        } else if self.due.is_none() {
            self.due = Some(self.next_tick_after(now));
        }
        dropped
    }

    /// `onDeviceDelete`: a deleted gateway's metrics are dropped unreported.
    pub(crate) fn remove(&mut self, gateway: DeviceId) {
        self.gateways.remove(&gateway);
        if self.gateways.is_empty() {
            self.due = None;
        }
    }

    /// When [`GatewayMetrics::take_due`] next has a report.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// `reportMetrics`: at a report time, every gateway's `gatewayMetrics` value (by gateway,
    /// in id order), and the data starts over.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(DeviceId, Value)> {
        match self.due {
            Some(due) if due <= now => {}
            _ => return Vec::new(),
        }
        self.due = None;
        let mut reports: Vec<(DeviceId, Value)> = self
            .gateways
            .drain()
            .map(|(gw, connectors)| {
                let by_name: Map<String, Value> = connectors
                    .iter()
                    .map(|(name, c)| (name.clone(), c.result()))
                    .collect();
                (gw, Value::Object(by_name))
            })
            .collect();
        reports.sort_by_key(|(gw, _)| *gw);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample(connector: &str, received_ts: i64, published_ts: i64) -> Sample<'_> {
        Sample {
            connector,
            received_ts,
            published_ts,
        }
    }

    #[test]
    fn averages_minima_and_maxima_per_connector() {
        let t0 = Instant::now();
        let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 10);
        let gw = DeviceId(1);
        // Gateway latencies 10 and 30, transport latencies 5 and 15.
        m.record(gw, [sample("modbus", 0, 10)], 15, t0);
        m.record(
            gw,
            [sample("modbus", 100, 130), sample("opcua", 0, 1)],
            145,
            t0,
        );
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert!(m.take_due(t0 + Duration::from_secs(59)).is_empty());
        let reports = m.take_due(t0 + Duration::from_secs(60));
        assert_eq!(
            reports,
            vec![(
                gw,
                json!({
                    "modbus": {"avgGwLatency": 20, "minGwLatency": 10, "maxGwLatency": 30,
                               "avgTransportLatency": 10, "minTransportLatency": 5,
                               "maxTransportLatency": 15},
                    "opcua": {"avgGwLatency": 1, "minGwLatency": 1, "maxGwLatency": 1,
                              "avgTransportLatency": 144, "minTransportLatency": 144,
                              "maxTransportLatency": 144}
                })
            )]
        );
        // Reported data starts over; nothing more is due.
        assert_eq!(m.poll_timeout(), None);
        assert!(m.take_due(t0 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn java_quirks_zero_minimum_and_non_negative_maximum() {
        let t0 = Instant::now();
        let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 10);
        let gw = DeviceId(7);
        // A gateway latency of 0 is "unset" and replaced by the next (5); a negative one
        // (-3) never becomes the maximum, which stays 5.
        m.record(
            gw,
            [sample("c", 10, 10), sample("c", 0, 5), sample("c", 8, 5)],
            5,
            t0,
        );
        let reports = m.take_due(t0 + Duration::from_secs(60));
        let c = &reports[0].1["c"];
        assert_eq!(c["minGwLatency"], json!(-3));
        assert_eq!(c["maxGwLatency"], json!(5));
        // (0 + 5 - 3) / 3 truncates to 0.
        assert_eq!(c["avgGwLatency"], json!(0));
        // Transport latencies -5, 0, 0: the 0s are "unset" minima, -5 stays the minimum; the
        // maximum starts at 0.
        assert_eq!(c["minTransportLatency"], json!(-5));
        assert_eq!(c["maxTransportLatency"], json!(0));
        assert_eq!(c["avgTransportLatency"], json!(-1));
    }

    #[test]
    fn reports_fall_on_the_fixed_rate_schedule() {
        let t0 = Instant::now();
        let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 10);
        m.record(
            DeviceId(1),
            [sample("c", 0, 1)],
            2,
            t0 + Duration::from_secs(61),
        );
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        // Exactly on a tick: the next one.
        let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 10);
        m.record(
            DeviceId(1),
            [sample("c", 0, 1)],
            2,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(120)));
    }

    #[test]
    fn connectors_are_bounded_and_deleted_gateways_forgotten() {
        let t0 = Instant::now();
        let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 2);
        let dropped = m.record(
            DeviceId(1),
            [
                sample("a", 0, 1),
                sample("b", 0, 1),
                sample("c", 0, 1),
                sample("a", 0, 2),
            ],
            3,
            t0,
        );
        assert_eq!(dropped, 1);
        m.remove(DeviceId(1));
        assert_eq!(m.poll_timeout(), None);
        assert!(m.take_due(t0 + Duration::from_secs(60)).is_empty());
        // Nothing tracked at all (bound 0): nothing is scheduled either.
        let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 0);
        assert_eq!(m.record(DeviceId(1), [sample("a", 0, 1)], 3, t0), 1);
        assert_eq!(m.poll_timeout(), None);
    }

    proptest! {
        /// Any timestamps (overflowing differences included) never panic, the connector bound
        /// holds, and maxima never fall below their starting 0.
        #[test]
        fn any_samples_never_panic(
            samples in proptest::collection::vec((0u8..4, any::<i64>(), any::<i64>()), 1..50),
            server_ms in any::<i64>(),
        ) {
            let t0 = Instant::now();
            let mut m = GatewayMetrics::new(t0, Duration::from_secs(60), 3);
            let names = ["a", "b", "c", "d"];
            let dropped = m.record(
                DeviceId(1),
                samples.iter().map(|&(c, r, p)| sample(names[usize::from(c)], r, p)),
                server_ms,
                t0,
            );
            let reports = m.take_due(t0 + Duration::from_secs(60));
            let tracked: usize = reports.iter().map(|(_, v)| v.as_object().map_or(0, |o| o.len())).sum();
            prop_assert!(tracked <= 3);
            prop_assert!(dropped as usize <= samples.len());
            for (_, v) in &reports {
                for c in v.as_object().into_iter().flat_map(|o| o.values()) {
                    prop_assert!(c["maxGwLatency"].as_i64() >= Some(0));
                    prop_assert!(c["maxTransportLatency"].as_i64() >= Some(0));
                }
            }
        }
    }
}
