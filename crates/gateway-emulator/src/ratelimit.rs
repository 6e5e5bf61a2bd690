//! Token buckets for ThingsBoard's transport rate limits (`"cap:secs,cap:secs"`).
//!
//! ThingsBoard uses bucket4j `Bandwidth.simple(capacity, secs)`: greedy refill, i.e. tokens come
//! back continuously at `capacity / secs`, and a message passes only if every window has room.

use std::time::{Duration, Instant};

use gateway_proto::payload::device::parse_rate_limits;

use crate::error::ControlError;

/// One `capacity:seconds` window with its current fill.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    capacity: f64,
    period: Duration,
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl Window {
    fn refill(&mut self, now: Instant) {
        let last = *self.refilled_at.get_or_insert(now);
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let period = self.period.as_secs_f64();
        if period > 0.0 {
            self.tokens = (self.tokens + elapsed * self.capacity / period).min(self.capacity);
        } else {
            self.tokens = self.capacity;
        }
        self.refilled_at = Some(now);
    }
}

/// A rate limit made of several windows; empty means unlimited.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimit {
    windows: Vec<Window>,
}

impl RateLimit {
    /// Parses `"cap:secs,cap:secs"`; `""` is unlimited.
    pub fn parse(config: &str) -> Result<Self, ControlError> {
        let windows = parse_rate_limits(config)
            .map_err(|_| ControlError::InvalidRateLimit(config.to_owned()))?
            .into_iter()
            .filter(|w| !w.is_unlimited())
            .map(|w| Window {
                capacity: w.capacity as f64,
                period: Duration::from_secs(w.window_secs),
                tokens: w.capacity as f64,
                refilled_at: None,
            })
            .collect();
        Ok(Self { windows })
    }

    /// Takes `n` tokens from every window if all have them; otherwise takes none.
    pub fn try_consume(&mut self, n: u64, now: Instant) -> bool {
        let n = n as f64;
        for w in &mut self.windows {
            w.refill(now);
        }
        if self.windows.iter().any(|w| w.tokens + 1e-9 < n) {
            return false;
        }
        for w in &mut self.windows {
            w.tokens -= n;
        }
        true
    }
}

/// The three buckets ThingsBoard keeps per limited entity.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityLimits {
    /// Non-telemetry messages (and telemetry without data points).
    pub messages: RateLimit,
    /// Telemetry messages.
    pub telemetry_messages: RateLimit,
    /// Telemetry data points (key-value entries).
    pub telemetry_data_points: RateLimit,
}

impl EntityLimits {
    /// Limits from the three configuration strings.
    pub fn new(config: &LimitConfig) -> Result<Self, ControlError> {
        Ok(Self {
            messages: RateLimit::parse(&config.messages)?,
            telemetry_messages: RateLimit::parse(&config.telemetry_messages)?,
            telemetry_data_points: RateLimit::parse(&config.telemetry_data_points)?,
        })
    }

    /// ThingsBoard's `checkEntityRateLimit`: data points > 0 checks the telemetry-message
    /// bucket then the data-point bucket (short-circuit); otherwise the message bucket.
    pub fn check(&mut self, data_points: u64, now: Instant) -> bool {
        if data_points > 0 {
            self.telemetry_messages.try_consume(1, now)
                && self.telemetry_data_points.try_consume(data_points, now)
        } else {
            self.messages.try_consume(1, now)
        }
    }
}

/// Three rate-limit strings (`""` = unlimited), as in a tenant profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitConfig {
    /// e.g. `transportDeviceMsgRateLimit`.
    pub messages: String,
    /// e.g. `transportDeviceTelemetryMsgRateLimit`.
    pub telemetry_messages: String,
    /// e.g. `transportDeviceTelemetryDataPointsRateLimit`.
    pub telemetry_data_points: String,
}

impl LimitConfig {
    /// Shorthand for three strings.
    pub fn new(messages: &str, telemetry_messages: &str, telemetry_data_points: &str) -> Self {
        Self {
            messages: messages.to_owned(),
            telemetry_messages: telemetry_messages.to_owned(),
            telemetry_data_points: telemetry_data_points.to_owned(),
        }
    }

    /// The `getSessionLimits` form of these strings.
    pub fn to_payload(&self) -> gateway_proto::payload::RateLimits {
        gateway_proto::payload::RateLimits {
            messages: self.messages.clone(),
            telemetry_messages: self.telemetry_messages.clone(),
            telemetry_data_points: self.telemetry_data_points.clone(),
        }
    }
}

/// The tenant profile's transport limits (`transportTenant*`, `transportDevice*`,
/// `transportGateway*`, `transportGatewayDevice*`). Note ThingsBoard's naming: "gateway" limits
/// are shared by all children of one gateway; "gateway device" limits apply to the gateway's
/// own device-API traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantLimits {
    /// Shared by every device of the tenant.
    pub tenant: LimitConfig,
    /// Per plain (non-gateway) device.
    pub device: LimitConfig,
    /// Per gateway, for all of its children's traffic together.
    pub gateway: LimitConfig,
    /// Per gateway, for its own device-API traffic.
    pub gateway_device: LimitConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_refill_greedily_and_all_must_pass() {
        let t0 = Instant::now();
        let mut l = RateLimit::parse("2:1,3:10").unwrap();
        assert!(l.try_consume(1, t0));
        assert!(l.try_consume(1, t0));
        assert!(!l.try_consume(1, t0));
        // After 1 s the 2:1 window is full again but 3:10 has only 1 + 0.3 tokens.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.try_consume(1, t1));
        assert!(!l.try_consume(1, t1));
        assert!(RateLimit::parse("").unwrap().try_consume(1_000_000, t0));
        assert!(RateLimit::parse("x:1").is_err());
        // n larger than the capacity never passes.
        assert!(!RateLimit::parse("5:1").unwrap().try_consume(6, t0));
    }

    #[test]
    fn entity_limits_pick_buckets_by_data_points() {
        let t0 = Instant::now();
        let mut l = EntityLimits::new(&LimitConfig::new("1:60", "10:60", "3:60")).unwrap();
        assert!(l.check(0, t0));
        assert!(!l.check(0, t0));
        assert!(l.check(2, t0));
        assert!(!l.check(2, t0), "only one data point left");
        assert!(l.check(1, t0));
    }
}
