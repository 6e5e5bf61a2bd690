//! Session limits and rate limiting: what the connection learns from ThingsBoard's
//! `getSessionLimits` answer, how it paces its publishes, and how it reacts when the server
//! pushes back anyway.
//!
//! ThingsBoard's MQTT transport sends no limits in its CONNACK (no Maximum Packet Size, no
//! Receive Maximum). It answers the client-side RPC `getSessionLimits` itself (on the v1 RPC
//! topic only), with
//!
//! ```json
//! {"maxPayloadSize":65536,"maxInflightMessages":100,
//!  "rateLimits":{"messages":"..","telemetryMessages":"..","telemetryDataPoints":".."},
//!  "gatewayRateLimits":{..}}
//! ```
//!
//! where the rate-limit strings are `"capacity:seconds,capacity:seconds"`, `rateLimits` are the
//! session's own limits and `gatewayRateLimits` (gateways only) the aggregate limit of all
//! sub-device traffic. A message over a limit is not stored and the whole connection is closed
//! (sub-device traffic: PUBACK 0x97 first; own traffic: DISCONNECT 0x83), so a client that
//! does not pace itself loses its session, and the official Python SDK silently drops what
//! waited too long for its own limiter.
//!
//! With [`LimitsConfig`] at its defaults the connection, after every CONNACK:
//!
//! 1. asks `getSessionLimits` and holds queued data (and sub-device re-announces) until the
//!    answer arrives or [`LimitsConfig::session_limits_wait`] passes: a plain MQTT broker
//!    never answers, so it then carries on with what it knew before ([`Event::SessionLimits`]
//!    says which);
//! 2. applies the answer: `maxPayloadSize` lowers the outgoing packet limit,
//!    `maxInflightMessages` the in-flight window, and the rate limits fill token buckets that
//!    pace every publish (sub-device traffic and the connection's own separately), using
//!    [`LimitsConfig::rate_share_percent`] of each limit. Publishes waiting for tokens stay
//!    queued in order, bounded by [`Config::max_buffered_bytes`](crate::Config::max_buffered_bytes)
//!    and [`Config::publish_timeout`](crate::Config::publish_timeout): never dropped, never
//!    reported sent;
//! 3. splits telemetry and attributes that exceed the packet limit or the data-point limit
//!    (see [`Command`](crate::Command) and [`RequestError::Partial`](crate::RequestError::Partial));
//! 4. slows down when the server pushes back (a PUBACK 0x97/0x96, a DISCONNECT that follows a
//!    rate limit, a `v1/gateway/disconnect` notice with reason 150), reporting
//!    [`Event::RateLimited`].
//!
//! [`Event::SessionLimits`]: crate::Event::SessionLimits
//! [`Event::RateLimited`]: crate::Event::RateLimited

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::event::RequestId;
use crate::pacing::{Charge, Pacer, ParsedLimits};
use crate::payload::SessionLimits;
use crate::reason::ReasonCode;
use crate::topic::{IdTopicKind, TopicFamily};

pub use crate::pacing::Scope;

/// How the connection learns and honours ThingsBoard's session limits and rate limits.
/// [`LimitsConfig::disabled`] turns all of it off.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Ask `getSessionLimits` after every CONNACK and hold queued data until the answer, at
    /// most this long; `None` never asks (nothing is paced until limits are known). Default
    /// 5 s. ThingsBoard's transport answers at once; a plain MQTT broker never does (when it
    /// reflects the request back, the connection notices and carries on immediately).
    pub session_limits_wait: Option<Duration>,
    /// Share of each server rate limit the client uses, 1..=100. Default 80, like the
    /// official SDK: it leaves room for messages the server counts that the client cannot
    /// time exactly (network jitter, session events, subscriptions).
    pub rate_share_percent: u8,
    /// Pace publishes with the learned rate limits. Default true.
    pub pacing: bool,
    /// Split telemetry and attributes that exceed the packet or data-point limit into
    /// several publishes. Default true; when false such commands are refused with
    /// [`CommandError::TooLarge`](crate::CommandError::TooLarge) as before.
    pub split: bool,
    /// React to server push-back (slow down, pause, resend a publish refused with 0x97 or
    /// 0x96). Default true.
    pub push_back: bool,
    /// Pause of a scope's traffic after a push-back; doubles with each push-back in a row.
    /// Default 1 s.
    pub push_back_pause: Duration,
    /// Longest pause. Default 60 s.
    pub max_push_back_pause: Duration,
    /// After a push-back the rate is halved; each quiet period of this length doubles it
    /// back, up to the full share. Default 60 s.
    pub push_back_recovery: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            session_limits_wait: Some(Duration::from_secs(5)),
            rate_share_percent: 80,
            pacing: true,
            split: true,
            push_back: true,
            push_back_pause: Duration::from_secs(1),
            max_push_back_pause: Duration::from_secs(60),
            push_back_recovery: Duration::from_secs(60),
        }
    }
}

impl LimitsConfig {
    /// Nothing of this module: no `getSessionLimits`, no pacing, no splitting, no reaction
    /// to push-back (a PUBACK failure code fails its request at once).
    pub fn disabled() -> Self {
        Self {
            session_limits_wait: None,
            pacing: false,
            split: false,
            push_back: false,
            ..Self::default()
        }
    }
}

/// What came of asking `getSessionLimits` after a CONNACK ([`Event::SessionLimits`](crate::Event::SessionLimits)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitsReport {
    /// The server answered; these limits are in force from now on. Boxed: it is rare and
    /// large, and every [`Event`](crate::Event) is as large as its largest variant.
    Applied(Box<AppliedLimits>),
    /// No answer within [`LimitsConfig::session_limits_wait`] (or the server refused the
    /// request, or a plain broker reflected it back): queued data goes out with the limits
    /// known before, if any. A late answer is still applied.
    NoAnswer,
    /// The server answered with something that is not session limits (e.g. an `error`);
    /// the limits known before stay in force.
    Invalid(String),
}

/// Session limits the connection applies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedLimits {
    /// The server's answer as received.
    pub server: SessionLimits,
    /// Largest PUBLISH now sent (MQTT remaining length): the smaller of
    /// [`Config::max_outgoing_packet`](crate::Config::max_outgoing_packet) and `maxPayloadSize`.
    pub max_outgoing_packet: usize,
    /// In-flight window now used: the smaller of
    /// [`Config::max_inflight`](crate::Config::max_inflight) and `maxInflightMessages`.
    pub max_inflight: u16,
}

impl fmt::Display for LimitsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied(a) => write!(
                f,
                "session limits applied: packets up to {} bytes, {} in flight",
                a.max_outgoing_packet, a.max_inflight
            ),
            Self::NoAnswer => f.write_str("no session limits from the server; carrying on"),
            Self::Invalid(why) => write!(f, "unusable session limits answer: {why}"),
        }
    }
}

/// The server signal that showed a rate limit was hit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushBack {
    /// A PUBACK with 0x97 (quota exceeded) or 0x96 (message rate too high) for a publish
    /// (ThingsBoard: a sub-device message over the gateway's limit, followed by the close
    /// of the connection).
    PubAck {
        /// The request the publish belongs to.
        request: RequestId,
        /// The reason code.
        code: ReasonCode,
        /// The refused publish was put back in the queue to be sent again; `false` once
        /// [`Config::max_publish_attempts`](crate::Config::max_publish_attempts) is used up,
        /// and the request then fails with the code.
        resent: bool,
    },
    /// A DISCONNECT of the kind ThingsBoard sends after a rate limit: 0x83 (the connection's
    /// own Device API traffic over its limit), 0x8B (a sub-device creation refused by the
    /// limit), 0x96 or 0x97.
    Disconnect(ReasonCode),
    /// `v1/gateway/disconnect` with reason 150: the server dropped this sub-device's
    /// session for exceeding the gateway's rate limit.
    SubDeviceDisconnected {
        /// The sub-device.
        device: String,
    },
}

/// What kind of traffic a refused message was, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Traffic {
    /// Telemetry or attributes: ThingsBoard's telemetry-message and data-point limits.
    Telemetry,
    /// Anything else: ThingsBoard's message limit.
    Messages,
}

/// The server pushed back, and what the connection did about it
/// ([`Event::RateLimited`](crate::Event::RateLimited)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitNotice {
    /// Whose limit: the connection's own traffic or the sub-devices' aggregate.
    pub scope: Scope,
    /// What the server did.
    pub signal: PushBack,
    /// The kind of traffic refused, when the signal names a message.
    pub traffic: Option<Traffic>,
    /// Whether the server's limits for this scope are known (from `getSessionLimits`). If
    /// not, only the pause applies; the limit that was hit may be the tenant's, which the
    /// server never reports.
    pub limits_known: bool,
    /// Share of the client's usual rate now used for this scope, in percent (halved with
    /// each push-back, at least 6; it doubles back after quiet periods).
    pub rate_percent: u8,
    /// Nothing of this scope is published before this instant.
    pub paused_until: Instant,
}

impl fmt::Display for RateLimitNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.scope {
            Scope::Device => "the device's own",
            Scope::Gateway => "the sub-devices'",
        };
        match &self.signal {
            PushBack::PubAck { request, code, .. } => {
                write!(f, "{request} refused by the server ({code})")?
            }
            PushBack::Disconnect(code) => write!(f, "server disconnected ({code})")?,
            PushBack::SubDeviceDisconnected { device } => write!(
                f,
                "server dropped sub-device {device:?} for its message rate"
            )?,
        }
        write!(
            f,
            ": {whose} rate limit; sending at {}% of it",
            self.rate_percent
        )?;
        if let PushBack::PubAck { resent: true, .. } = self.signal {
            f.write_str(", the message will be sent again")?;
        }
        Ok(())
    }
}

/// Where the `getSessionLimits` exchange of the current session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Not asking (disabled, or not connected).
    Idle,
    /// To be published.
    ToSend,
    /// Published with this wire id; waiting for the answer.
    Sent(u32),
    /// Answered, given up or refused: data flows.
    Done,
}

/// The connection's limits state: effective packet limit and window, the pacer, and the
/// `getSessionLimits` exchange.
#[derive(Debug)]
pub(crate) struct Limits {
    cfg: LimitsConfig,
    pacer: Pacer,
    config_max_packet: usize,
    config_window: u16,
    max_packet: usize,
    window: u16,
    ask: Ask,
    /// Queued data waits until the answer or this instant.
    hold_until: Option<Instant>,
    /// When the publish at the head of the queue may go (set by the last pump).
    pace_at: Option<Instant>,
    /// Whether rate limits were ever installed.
    learned: bool,
    /// The server's `maxPayloadSize`, once learned (and usable).
    server_max_payload: Option<usize>,
    /// Own-scope messages the server counted this session before any limits were known
    /// (session open, subscriptions, the request itself): charged when they arrive.
    precharge: u64,
}

/// ThingsBoard's smallest useful payload limit; a smaller `maxPayloadSize` is ignored.
const MIN_SERVER_PACKET: u64 = 128;

impl Limits {
    pub(crate) fn new(config: &Config) -> Self {
        // A provisioning connection sends its one request and nothing else: no
        // `getSessionLimits` (ThingsBoard's provisioning session answers only the
        // provisioning topic), no pacing, no push-back.
        let cfg = if config.is_provisioning() {
            LimitsConfig::disabled()
        } else {
            config.limits.clone()
        };
        Self {
            pacer: Pacer::new(
                cfg.rate_share_percent,
                cfg.push_back_pause,
                cfg.max_push_back_pause,
                cfg.push_back_recovery,
            ),
            cfg,
            config_max_packet: config.max_outgoing_packet,
            config_window: config.max_inflight,
            max_packet: config.max_outgoing_packet,
            window: config.max_inflight,
            ask: Ask::Idle,
            hold_until: None,
            pace_at: None,
            learned: false,
            server_max_payload: None,
            precharge: 0,
        }
    }

    /// Largest PUBLISH (remaining length) to send.
    pub(crate) fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// The server's `maxPayloadSize`, once learned (`None`: not known, or none usable).
    pub(crate) fn server_max_payload(&self) -> Option<usize> {
        self.server_max_payload
    }

    /// In-flight window.
    pub(crate) fn window(&self) -> usize {
        usize::from(self.window)
    }

    pub(crate) fn split_enabled(&self) -> bool {
        self.cfg.split
    }

    /// Data points one message of `scope` may carry.
    pub(crate) fn max_points(&self, scope: Scope) -> Option<u64> {
        if self.cfg.pacing {
            self.pacer.max_points(scope)
        } else {
            None
        }
    }

    /// A CONNACK arrived. `server_counted` own-scope messages already went to the server
    /// with it (session open, subscriptions).
    pub(crate) fn on_connected(&mut self, now: Instant, server_counted: u64) {
        self.pace_at = None;
        match self.cfg.session_limits_wait {
            Some(wait) => {
                self.ask = Ask::ToSend;
                self.hold_until = Some(now + wait);
            }
            None => {
                self.ask = Ask::Idle;
                self.hold_until = None;
            }
        }
        self.count_own(now, server_counted);
    }

    fn count_own(&mut self, now: Instant, n: u64) {
        if n == 0 || !self.cfg.pacing {
            return;
        }
        if self.learned {
            self.pacer.take(&Charge::messages(Scope::Device, n), now);
        } else {
            self.precharge = self.precharge.saturating_add(n);
        }
    }

    /// The session ended. A session that was up is closed on the server too, and
    /// ThingsBoard counts each close as a regular message nobody waits for: the session's
    /// own against the device's buckets and one per child session (`sub_devices`, every
    /// tracked one: an overestimate only paces early) against the gateway's, each bucket
    /// going down to empty at most. The buckets carry over to the next session, so its
    /// re-announce waits for what the server really has.
    pub(crate) fn on_connection_lost(&mut self, now: Instant, was_up: bool, sub_devices: u64) {
        if was_up && self.cfg.pacing {
            self.pacer.drain(&Charge::message(Scope::Device), now);
            if sub_devices > 0 {
                self.pacer
                    .drain(&Charge::messages(Scope::Gateway, sub_devices), now);
            }
        }
        self.ask = Ask::Idle;
        self.hold_until = None;
        self.pace_at = None;
        self.precharge = 0;
    }

    /// Whether the `getSessionLimits` request is to be published now.
    pub(crate) fn wants_request(&self) -> bool {
        self.ask == Ask::ToSend
    }

    /// The request went out with wire id `wire`.
    pub(crate) fn request_sent(&mut self, wire: u32, now: Instant) {
        self.ask = Ask::Sent(wire);
        self.count_own(now, 1);
    }

    /// Whether queued data must wait for the answer.
    pub(crate) fn holding(&self) -> bool {
        self.hold_until.is_some()
    }

    /// The `Limits` deadline passed: step up the rate of a slowed-down scope that is due
    /// (even with nothing queued to pace, so the deadline moves on), and end the hold if
    /// it passed without an answer (the report, once).
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Option<LimitsReport> {
        self.pacer.recover(now);
        self.check_hold(now)
    }

    /// The hold passed without an answer: carry on. Returns the report, once.
    pub(crate) fn check_hold(&mut self, now: Instant) -> Option<LimitsReport> {
        match self.hold_until {
            Some(until) if until <= now => Some(self.give_up()),
            _ => None,
        }
    }

    /// Stop waiting (no answer will come on this session, or it came back refused).
    pub(crate) fn give_up(&mut self) -> LimitsReport {
        self.hold_until = None;
        self.ask = Ask::Done;
        self.precharge = 0;
        LimitsReport::NoAnswer
    }

    /// The server answered (possibly late: it still applies).
    pub(crate) fn on_answer(
        &mut self,
        answer: Result<SessionLimits, String>,
        now: Instant,
    ) -> LimitsReport {
        self.hold_until = None;
        self.ask = Ask::Done;
        let limits = match answer {
            Ok(limits) => limits,
            Err(why) => {
                self.precharge = 0;
                return LimitsReport::Invalid(why);
            }
        };
        let own = ParsedLimits::parse(&limits.rate_limits);
        let gateway = limits
            .gateway_rate_limits
            .as_ref()
            .map(ParsedLimits::parse)
            .transpose();
        let (own, gateway) = match (own, gateway) {
            (Ok(own), Ok(gateway)) => (own, gateway),
            (Err(e), _) | (_, Err(e)) => {
                self.precharge = 0;
                return LimitsReport::Invalid(e.to_string());
            }
        };
        if self.cfg.pacing {
            self.pacer.install(Scope::Device, Some(&own), now);
            self.pacer.install(Scope::Gateway, gateway.as_ref(), now);
            self.learned = true;
            let precharge = std::mem::take(&mut self.precharge);
            self.count_own(now, precharge);
        }
        self.server_max_payload = (limits.max_payload_size >= MIN_SERVER_PACKET)
            .then(|| usize::try_from(limits.max_payload_size).unwrap_or(usize::MAX));
        self.max_packet = self
            .server_max_payload
            .map_or(self.config_max_packet, |server| {
                self.config_max_packet.min(server)
            });
        self.window = match u16::try_from(limits.max_inflight_messages) {
            Ok(0) => self.config_window,
            Ok(n) => self.config_window.min(n),
            Err(_) => self.config_window,
        };
        LimitsReport::Applied(Box::new(AppliedLimits {
            server: limits,
            max_outgoing_packet: self.max_packet,
            max_inflight: self.window,
        }))
    }

    /// When `charge` may be published; `now` if it may.
    pub(crate) fn ready_at(&mut self, charge: &Charge, now: Instant) -> Instant {
        if self.cfg.pacing || self.cfg.push_back {
            self.pacer.ready_at(charge, now)
        } else {
            now
        }
    }

    /// Whether publishes of `scope` are paced by learned limits.
    pub(crate) fn is_paced(&self, scope: Scope) -> bool {
        self.cfg.pacing && self.pacer.is_limited(scope)
    }

    /// `charge` was published.
    pub(crate) fn take(&mut self, charge: &Charge, now: Instant) {
        if self.cfg.pacing {
            self.pacer.take(charge, now);
        }
    }

    /// The head of the queue waits until `at` (the last pump's verdict).
    pub(crate) fn set_pace(&mut self, at: Option<Instant>) {
        // Several lanes may wait for tokens in one pump: the earliest instant wins.
        self.pace_at = match (self.pace_at, at) {
            (Some(old), Some(new)) => Some(old.min(new)),
            (_, at) => at,
        };
    }

    /// The next instant the connection must look at its limits again.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [self.hold_until, self.pace_at, self.pacer.next_recovery()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether push-back handling is on.
    pub(crate) fn push_back_enabled(&self) -> bool {
        self.cfg.push_back
    }

    /// The server pushed back on `scope`.
    pub(crate) fn push_back(
        &mut self,
        scope: Scope,
        signal: PushBack,
        traffic: Option<Traffic>,
        now: Instant,
    ) -> RateLimitNotice {
        let slow = self.pacer.push_back(scope, now);
        RateLimitNotice {
            scope,
            signal,
            traffic,
            limits_known: slow.limits_known,
            rate_percent: slow.rate_percent,
            paused_until: slow.paused_until,
        }
    }
}

/// How many own-scope messages ThingsBoard counts for a SUBSCRIBE of `filters`: one per
/// attribute-update or RPC-request subscription (its transport service checks the rate
/// limit for each).
pub(crate) fn counted_subscriptions<'a>(filters: impl IntoIterator<Item = &'a str>) -> u64 {
    filters
        .into_iter()
        .filter(|f| {
            TopicFamily::ALL.iter().any(|family| {
                *f == family.attributes_topic()
                    || *f == family.subscription_filter(IdTopicKind::RpcRequest)
            })
        })
        .count() as u64
}

/// Whether a DISCONNECT with `code` is what ThingsBoard sends after a rate limit, and whose.
pub(crate) fn disconnect_scope(code: ReasonCode) -> Option<Scope> {
    match code {
        ReasonCode::ImplementationSpecificError
        | ReasonCode::MessageRateTooHigh
        | ReasonCode::QuotaExceeded => Some(Scope::Device),
        ReasonCode::ServerShuttingDown => Some(Scope::Gateway),
        _ => None,
    }
}

/// Whether a PUBACK `code` says the publish was refused for a rate limit.
pub(crate) fn is_rate_refusal(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::QuotaExceeded | ReasonCode::MessageRateTooHigh
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::Credentials;

    /// A slow-down recovers on its deadline even with nothing queued to pace, so the
    /// `Limits` deadline moves past the instant just handled (found by the simulation).
    #[test]
    fn a_recovery_step_moves_the_deadline_on_with_nothing_queued() {
        let config = Config::new(Credentials::AccessToken("t".into()));
        let mut limits = Limits::new(&config);
        let start = Instant::now();
        let signal = PushBack::SubDeviceDisconnected { device: "d".into() };
        let _ = limits.push_back(Scope::Gateway, signal, None, start);
        let mut now = start;
        for _ in 0..64 {
            let Some(at) = limits.next_deadline() else {
                return;
            };
            assert!(at >= now, "deadline {at:?} before {now:?}");
            now = at;
            let _ = limits.on_deadline(now);
            assert!(
                limits.next_deadline().is_none_or(|next| next > now),
                "the deadline did not move on"
            );
        }
        panic!("still slowed down after 64 steps ({:?})", now - start);
    }

    /// A provisioning connection never asks for `getSessionLimits`.
    #[test]
    fn a_provisioning_connection_asks_for_no_limits() {
        let request = crate::payload::ProvisionRequest::new("key", "secret");
        let config = Config::provisioning(request);
        let mut limits = Limits::new(&config);
        limits.on_connected(Instant::now(), 1);
        assert!(!limits.wants_request());
        assert!(!limits.holding());
        assert!(limits.next_deadline().is_none());
    }
}
