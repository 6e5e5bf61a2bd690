//! Connection configuration and its validation.

use std::fmt;
use std::time::Duration;

use crate::codec::{ProtocolVersion, QoS};
use crate::error::ConfigError;
use crate::limits::LimitsConfig;
use crate::ota::{OtaConfig, MAX_OTA_CHUNK_SIZE, OTA_CHUNK_OVERHEAD};
use crate::payload::ProvisionRequest;
use crate::topic::{self, IdTopicKind, TopicFamily};

/// The username and client id ThingsBoard reserves for provisioning-only sessions.
///
/// A CONNECT with either set to this value gets a session that can only provision, so
/// [`Config::validate`] refuses it for a normal session.
pub const PROVISION_IDENTITY: &str = "provision";

/// How the client proves who it is.
///
/// `Debug` never prints secrets.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// ThingsBoard access token: sent as the MQTT username, with no password.
    AccessToken(String),
    /// ThingsBoard "MQTT Basic" credentials. The client id is [`Config::client_id`].
    Basic {
        /// MQTT username, if the device's basic credentials set one.
        username: Option<String>,
        /// MQTT password, if the device's basic credentials set one.
        password: Option<String>,
    },
    /// X.509 client certificate: authentication happens in the TLS handshake (the adapter's
    /// job), so the CONNECT carries no username or password.
    X509,
    /// A provisioning-only connection ([`Config::provisioning`]): the CONNECT carries the
    /// username [`PROVISION_IDENTITY`], and this request, with the device profile's
    /// provision key and secret, goes to `/provision/request`.
    Provision(Box<ProvisionRequest>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
            Self::Basic { username, password } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::X509 => f.write_str("X509"),
            Self::Provision(request) => f
                .debug_struct("Provision")
                .field("device_name", &request.device_name)
                .field("credentials_type", &request.credentials_type)
                .finish_non_exhaustive(),
        }
    }
}

/// A topic filter subscribed after every successful CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter, e.g. `v1/devices/me/rpc/request/+`.
    pub filter: String,
    /// Requested QoS. ThingsBoard grants at most QoS 1.
    pub qos: QoS,
}

impl Subscription {
    /// A subscription to `filter` at `qos`.
    pub fn new(filter: impl Into<String>, qos: QoS) -> Self {
        Self {
            filter: filter.into(),
            qos,
        }
    }
}

/// When and how fast to reconnect after a connection ends.
///
/// The delay before attempt `n` (counting consecutive failures from 0) is
/// `min(initial_delay * 2^n, max_delay)`, reduced by a random share of up to `jitter_percent`
/// percent. The randomness comes from `seed`, so a run replays exactly. The failure count
/// resets once a connection has stayed up for `stable_after`; a session that the server
/// closes right after accepting it therefore still backs off instead of looping.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Delay before the first reconnect attempt. Default 1 s.
    pub initial_delay: Duration,
    /// Upper bound of the exponential delay. Default 60 s.
    pub max_delay: Duration,
    /// Share of the delay (0–100 %) that is randomly taken off. Default 50.
    pub jitter_percent: u8,
    /// Seed of the jitter generator. Default 0; give each client its own to spread reconnects.
    pub seed: u64,
    /// Minimum delay after a refusal that retrying cannot heal (bad credentials, not
    /// authorized, banned). Default 60 s.
    pub refused_delay: Duration,
    /// A connection that lasted at least this long resets the failure count. Default 30 s.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter_percent: 50,
            seed: 0,
            refused_delay: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Everything a [`Connection`](crate::Connection) needs to know up front.
///
/// Build it with [`Config::new`] and adjust the public fields; [`Connection::new`]
/// validates it.
///
/// [`Connection::new`]: crate::Connection::new
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// MQTT client id. Default empty (ThingsBoard identifies tokens and certificates without
    /// it); required for [`Credentials::Basic`] when the device's credentials name one.
    pub client_id: String,
    /// How the client authenticates.
    pub credentials: Credentials,
    /// MQTT 3.1.1 or 5. Default 5: only MQTT 5 tells the client *why* ThingsBoard refused a
    /// publish (PUBACK reason codes) or closed the session (DISCONNECT reason codes).
    pub protocol: ProtocolVersion,
    /// Keep-alive interval sent in CONNECT; a PINGREQ goes out when nothing was sent or
    /// received for this long. Zero disables pings. At most 65,535 s. Default 60 s.
    pub keep_alive: Duration,
    /// How long to wait for PINGRESP before the link is declared dead. Default 20 s.
    pub ping_timeout: Duration,
    /// How long from asking for a transport until CONNACK (TCP, TLS and MQTT handshakes
    /// together). Default 15 s.
    pub connect_timeout: Duration,
    /// MQTT clean session / clean start. ThingsBoard keeps no session state either way.
    /// Default true.
    pub clean_session: bool,
    /// QoS 1 publishes awaiting PUBACK at once (1–65,535). Default 100, ThingsBoard's
    /// `maxInflightMessages`.
    pub max_inflight: u16,
    /// Bound on the bytes of publishes accepted but not yet finished (queued, in flight or
    /// waiting for a reconnect). A command that would pass it fails with
    /// [`CommandError::QueueFull`](crate::CommandError::QueueFull). Each publish is
    /// accounted at its encoded size plus [`PER_MESSAGE_OVERHEAD`], what the connection
    /// holds for it besides its bytes, so the bound is on the heap the buffer takes (the
    /// adapters' per-request outcome state, and sub-devices, are bounded apart). Default
    /// 16 MiB.
    pub max_buffered_bytes: usize,
    /// Largest PUBLISH the client will send, as MQTT remaining length. Larger commands fail
    /// synchronously. Default 65,536: ThingsBoard's `max_payload_size`, past which it drops
    /// the connection.
    pub max_outgoing_packet: usize,
    /// Largest packet accepted from the server, as MQTT remaining length. Larger packets are
    /// skipped as they stream in (never buffered whole) and reported as a warning.
    /// Default 1 MiB.
    pub max_incoming_packet: usize,
    /// A publish that is not finished this long after its command fails with
    /// [`RequestError::Timeout`](crate::RequestError::Timeout); `None` waits forever
    /// (bounded by `max_buffered_bytes`). Default 5 minutes.
    pub publish_timeout: Option<Duration>,
    /// How many times a QoS 1 publish is transmitted before a connection loss fails it with
    /// [`RequestError::ConnectionLost`](crate::RequestError::ConnectionLost) instead of
    /// resending it. Guards against a message that makes the server drop the connection.
    /// Default 5, minimum 1.
    pub max_publish_attempts: u32,
    /// Reconnect timing.
    pub reconnect: ReconnectPolicy,
    /// Filters subscribed after every successful CONNACK, in one SUBSCRIBE, after the API's
    /// own filters (see [`Config::subscribe_api`]).
    pub subscriptions: Vec<Subscription>,
    /// Whether this connection is a gateway (Gateway API allowed) or a plain device.
    /// Default [`Role::Gateway`].
    pub role: Role,
    /// Subscribe, after every CONNACK, to the Device API downlinks (shared attribute updates,
    /// attribute responses, server RPC requests, client RPC responses) and, for a gateway, to
    /// the Gateway API downlinks. ThingsBoard pushes gateway downlinks even without a
    /// subscription, but device downlinks only after one. Default true.
    pub subscribe_api: bool,
    /// QoS of telemetry and client attributes (gateway and device). Default 1. ThingsBoard
    /// processes QoS 0 gateway uplinks but never acknowledges them, so QoS 0 means no
    /// delivery feedback at all. Every other API message is sent at QoS 1.
    pub telemetry_qos: QoS,
    /// Bound on tracked sub-devices (explicitly connected or implicitly, by sending data for
    /// them). A command that would add one more fails with
    /// [`CommandError::TooManyDevices`](crate::CommandError::TooManyDevices). Default 10,000.
    pub max_sub_devices: usize,
    /// Keep silent sub-devices alive: a sub-device that sent nothing for this long gets a
    /// keep-alive (an attribute request for [`KEEPALIVE_KEY`], which the server counts as
    /// activity; a repeated connect does not). ThingsBoard drops child sessions after
    /// 10 minutes of inactivity, after which RPCs and attribute updates for the child stop
    /// until its next message. `None` disables it. Default 8 minutes; checked with a
    /// granularity of 1/16 of the interval.
    pub sub_device_keepalive: Option<Duration>,
    /// How long an attribute request may wait for its response. Default 30 s.
    pub attribute_request_timeout: Duration,
    /// How long a client-side RPC may wait for its response. Default 75 s, longer than
    /// ThingsBoard's own 60 s after which it answers `{"error":"timeout"}`.
    pub rpc_timeout: Duration,
    /// Bound on attribute requests and client-side RPCs awaiting a response. Past it, the
    /// command fails with [`CommandError::TooManyRequests`](crate::CommandError::TooManyRequests).
    /// Default 1,024.
    pub max_pending_requests: usize,
    /// Bound on server-side RPCs received and not yet replied to. When it is reached, the
    /// oldest is forgotten (a later reply to it is refused) and a
    /// [`Warning::ServerRpcForgotten`](crate::Warning::ServerRpcForgotten) reported.
    /// Default 1,024.
    pub max_pending_server_rpcs: usize,
    /// Topic family of the Device API (the connection's own telemetry, attributes, attribute
    /// requests, RPCs): [`TopicFamily::V1`] (`v1/devices/me/...`, the default),
    /// [`TopicFamily::V2`] (`v2/t`, `v2/a`, `v2/a/req/{id}`, `v2/r/req/{id}` ...: payload type
    /// from the device profile), [`TopicFamily::V2Json`] (`v2/.../j`) or
    /// [`TopicFamily::V2Proto`] (`v2/.../p`, protobuf: see [`raw`](crate::raw)). Subscriptions
    /// follow it (ThingsBoard publishes downlinks on the family of the last subscription);
    /// downlinks are understood on every family. Claims and `getSessionLimits` have v1 topics
    /// only; the Gateway API is always `v1/gateway/*`.
    pub device_topics: TopicFamily,
    /// The device profile's transport payload type is PROTOBUF. Default false (JSON).
    ///
    /// ThingsBoard then reads the v1 and plain v2 Device API topics (and the claim topic) as
    /// protobuf with the profile's schemas, so on [`TopicFamily::V1`] and [`TopicFamily::V2`]
    /// the typed JSON device commands are refused with
    /// [`CommandError::JsonOnProtobufTopic`](crate::CommandError::JsonOnProtobufTopic) and
    /// downlinks arrive as [`Event::Raw`](crate::Event::Raw), as on [`TopicFamily::V2Proto`];
    /// [`TopicFamily::V2Json`] keeps JSON. `getSessionLimits`, which ThingsBoard answers on
    /// the v1 topic only, goes out as a protobuf `RpcRequest` and its answer is read as a
    /// `ToServerRpcResponseMsg` (see [`payload::protobuf`](crate::payload::protobuf)).
    /// A gateway's typed Gateway API commands and downlinks are then protobuf too (ThingsBoard
    /// reads every `v1/gateway/*` topic with the gateway's profile; see
    /// [`payload::gateway_protobuf`](crate::payload::gateway_protobuf)); such messages are
    /// never split, so one larger than the packet limit is refused with
    /// [`CommandError::TooLarge`](crate::CommandError::TooLarge); the MQTT 5 per-device
    /// disconnect notice is read as a `GatewayDisconnectDeviceMsg`. A device whose PROTOBUF
    /// profile has both of ThingsBoard's JSON compatibility flags
    /// (`enableCompatibilityWithJsonPayloadFormat`, `useJsonPayloadFormatForDefaultDownlinkTopics`)
    /// can leave this off and keep JSON on [`TopicFamily::V1`]: the server then reads JSON
    /// uplinks and sends JSON downlinks there (plain v2 downlinks stay protobuf). Not supported with it:
    /// [`ota`](Self::ota), whose requests and reports are JSON on v1 topics
    /// ([`ConfigError::ProtobufProfile`](crate::ConfigError::ProtobufProfile)).
    ///
    /// On a provisioning connection ([`Config::provisioning`]), which has no device profile,
    /// it chooses the provisioning format instead: the request goes out as a protobuf
    /// `ProvisionDeviceRequestMsg`, which ThingsBoard answers in protobuf (see
    /// [`crate::provision`]).
    pub protobuf_profile: bool,
    /// Session limits, pacing, splitting and push-back (see [`limits`](crate::limits)).
    pub limits: LimitsConfig,
    /// Firmware and software updates over the air (see [`crate::ota`]). `None` (the default)
    /// leaves the `fw_*` / `sw_*` attributes to the application.
    pub ota: Option<OtaConfig>,
    /// How long a provisioning connection ([`Config::provisioning`]) waits for its answer
    /// once the session is up. Default 30 s.
    pub provision_timeout: Duration,
}

/// What the connection authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// A device: Device API only.
    Device,
    /// A gateway: Device API for itself plus the Gateway API for its sub-devices.
    Gateway,
}

/// The attribute key that sub-device keep-alives request (client scope). Nothing needs to
/// exist under it: the response is expected to be empty and is consumed by the connection.
pub const KEEPALIVE_KEY: &str = "tbgw.keepalive";

/// Bytes added to every buffered publish's encoded size when checking
/// [`Config::max_buffered_bytes`]: what the connection holds for an unfinished publish
/// besides its bytes (its entry, and its slots in the store's table and send queue, counted
/// as they are just after those grew). With it the bound is a bound on the heap the buffer
/// takes, not only on message bytes, and many tiny messages are bounded too. The value
/// follows the target's pointer size (166 on 64-bit targets).
pub const PER_MESSAGE_OVERHEAD: usize = crate::outbound::ENTRY_HEAP;

impl Config {
    /// A configuration with the defaults documented on each field.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            client_id: String::new(),
            credentials,
            protocol: ProtocolVersion::V5,
            keep_alive: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(15),
            clean_session: true,
            max_inflight: 100,
            max_buffered_bytes: 16 * 1024 * 1024,
            max_outgoing_packet: 65_536,
            max_incoming_packet: 1024 * 1024,
            publish_timeout: Some(Duration::from_secs(300)),
            max_publish_attempts: 5,
            reconnect: ReconnectPolicy::default(),
            subscriptions: Vec::new(),
            role: Role::Gateway,
            subscribe_api: true,
            telemetry_qos: QoS::AtLeastOnce,
            max_sub_devices: 10_000,
            sub_device_keepalive: Some(Duration::from_secs(480)),
            attribute_request_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(75),
            max_pending_requests: 1024,
            max_pending_server_rpcs: 1024,
            device_topics: TopicFamily::V1,
            protobuf_profile: false,
            limits: LimitsConfig::default(),
            ota: None,
            provision_timeout: Duration::from_secs(30),
        }
    }

    /// A provisioning-only connection: it sends `request` once, reports
    /// [`Event::Provisioned`](crate::Event::Provisioned) and closes itself (see
    /// [`crate::provision`]). It refuses every command and never reconnects. The request is
    /// JSON; set [`protobuf_profile`](Self::protobuf_profile) to provision in protobuf.
    pub fn provisioning(request: ProvisionRequest) -> Self {
        let mut config = Self::new(Credentials::Provision(Box::new(request)));
        config.role = Role::Device;
        config
    }

    /// Whether this is a provisioning-only connection.
    pub fn is_provisioning(&self) -> bool {
        matches!(self.credentials, Credentials::Provision(_))
    }

    /// The filters subscribed after every CONNACK: the API's own (if
    /// [`subscribe_api`](Self::subscribe_api)) followed by [`subscriptions`](Self::subscriptions).
    /// A provisioning connection subscribes to `/provision/response` only (ThingsBoard
    /// refuses anything else there). With [`ota`](Self::ota) set, the API filters include the
    /// OTA chunk filters (ThingsBoard pushes chunks without them, but they document the
    /// session and set the QoS).
    pub fn effective_subscriptions(&self) -> Vec<Subscription> {
        if self.is_provisioning() {
            return vec![Subscription::new(
                topic::PROVISION_RESPONSE,
                QoS::AtLeastOnce,
            )];
        }
        let mut subs = Vec::new();
        if self.subscribe_api {
            let family = self.device_topics;
            let device = [
                family.attributes_topic(),
                family.subscription_filter(IdTopicKind::AttributeResponse),
                family.subscription_filter(IdTopicKind::RpcRequest),
                family.subscription_filter(IdTopicKind::RpcResponse),
            ];
            let gateway = [
                topic::GATEWAY_ATTRIBUTES,
                topic::GATEWAY_ATTRIBUTES_RESPONSE,
                topic::GATEWAY_RPC,
            ];
            subs.extend(
                device
                    .iter()
                    .map(|f| Subscription::new(*f, QoS::AtLeastOnce)),
            );
            if family != TopicFamily::V1 && self.limits.session_limits_wait.is_some() {
                // `getSessionLimits` is answered on the v1 RPC response topic only.
                subs.push(Subscription::new(
                    topic::DEVICE_RPC_RESPONSE_SUB,
                    QoS::AtLeastOnce,
                ));
            }
            if self.role == Role::Gateway {
                subs.extend(
                    gateway
                        .iter()
                        .map(|f| Subscription::new(*f, QoS::AtLeastOnce)),
                );
            }
            if let Some(ota) = &self.ota {
                let filters = [
                    (ota.firmware, topic::FW_RESPONSE_SUB),
                    (ota.software, topic::SW_RESPONSE_SUB),
                ];
                subs.extend(
                    filters
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, f)| Subscription::new(*f, QoS::AtLeastOnce)),
                );
            }
        }
        subs.extend(self.subscriptions.iter().cloned());
        subs
    }

    /// Checks the configuration for values the protocol or ThingsBoard cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.client_id == PROVISION_IDENTITY && !self.is_provisioning() {
            return Err(ConfigError::ReservedIdentity);
        }
        check_len("client_id", &self.client_id)?;
        match &self.credentials {
            Credentials::AccessToken(token) => {
                if token.is_empty() {
                    return Err(ConfigError::EmptyAccessToken);
                }
                if token == PROVISION_IDENTITY {
                    return Err(ConfigError::ReservedIdentity);
                }
                check_len("access token", token)?;
            }
            Credentials::Basic { username, password } => {
                if username.as_deref() == Some(PROVISION_IDENTITY) {
                    return Err(ConfigError::ReservedIdentity);
                }
                if let Some(u) = username {
                    check_len("username", u)?;
                }
                if let Some(p) = password {
                    check_len("password", p)?;
                }
            }
            Credentials::X509 => {}
            Credentials::Provision(request) => {
                if request.provision_device_key.is_empty() {
                    return Err(ConfigError::InvalidProvisionRequest(
                        "provision device key is empty",
                    ));
                }
                if request.provision_device_secret.is_empty() {
                    return Err(ConfigError::InvalidProvisionRequest(
                        "provision device secret is empty",
                    ));
                }
                // Topic, packet id and (MQTT 5) properties length on top of the payload.
                let payload = crate::provision::request_payload(request, self.protobuf_profile);
                let len = payload.len() + topic::PROVISION_REQUEST.len() + 5;
                if len > self.max_outgoing_packet {
                    return Err(ConfigError::InvalidProvisionRequest(
                        "provision request exceeds max_outgoing_packet",
                    ));
                }
            }
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return Err(ConfigError::KeepAliveTooLong(self.keep_alive));
        }
        if self.keep_alive.subsec_nanos() != 0 {
            return Err(ConfigError::KeepAliveNotWholeSeconds(self.keep_alive));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::ZeroInflight);
        }
        if self.max_publish_attempts == 0 {
            return Err(ConfigError::ZeroAttempts);
        }
        for (name, value) in [
            ("max_outgoing_packet", self.max_outgoing_packet),
            ("max_incoming_packet", self.max_incoming_packet),
        ] {
            if !(MIN_PACKET_LIMIT..=MAX_REMAINING_LENGTH).contains(&value) {
                return Err(ConfigError::PacketLimitOutOfRange { name, value });
            }
        }
        if self.reconnect.jitter_percent > 100 {
            return Err(ConfigError::JitterOutOfRange(self.reconnect.jitter_percent));
        }
        if self.sub_device_keepalive.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDuration("sub_device_keepalive"));
        }
        if !(1..=100).contains(&self.limits.rate_share_percent) {
            return Err(ConfigError::ShareOutOfRange(self.limits.rate_share_percent));
        }
        if self.limits.session_limits_wait.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDuration("limits.session_limits_wait"));
        }
        if self.protobuf_profile && self.ota.is_some() {
            return Err(ConfigError::ProtobufProfile(
                "OTA updates use JSON on v1 topics, which a protobuf profile does not read",
            ));
        }
        if let Some(ota) = &self.ota {
            let max =
                MAX_OTA_CHUNK_SIZE.min(self.max_incoming_packet.saturating_sub(OTA_CHUNK_OVERHEAD));
            if ota.chunk_size == 0 || ota.chunk_size > max {
                return Err(ConfigError::OtaChunkSize {
                    value: ota.chunk_size,
                    max,
                });
            }
            if ota.chunk_timeout.is_zero() {
                return Err(ConfigError::ZeroDuration("ota.chunk_timeout"));
            }
            if ota.chunk_attempts == 0 {
                return Err(ConfigError::ZeroAttempts);
            }
        }
        for (name, d) in [
            ("attribute_request_timeout", self.attribute_request_timeout),
            ("rpc_timeout", self.rpc_timeout),
            ("limits.push_back_recovery", self.limits.push_back_recovery),
            ("provision_timeout", self.provision_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for sub in &self.subscriptions {
            if !valid_filter(&sub.filter) {
                return Err(ConfigError::InvalidFilter(sub.filter.clone()));
            }
        }
        // The one SUBSCRIBE sent after CONNACK must itself fit the outgoing limit.
        let subscribe_len: usize = self
            .effective_subscriptions()
            .iter()
            .map(|s| s.filter.len() + 3)
            .sum::<usize>()
            + 3;
        if subscribe_len > self.max_outgoing_packet {
            return Err(ConfigError::SubscriptionsTooLarge(subscribe_len));
        }
        Ok(())
    }

    pub(crate) fn keep_alive_secs(&self) -> u16 {
        u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX)
    }
}

/// The smallest packet limit accepted: room for a CONNECT or SUBSCRIBE of sensible size.
const MIN_PACKET_LIMIT: usize = 128;
/// MQTT's own ceiling on the remaining length.
const MAX_REMAINING_LENGTH: usize = 268_435_455;

fn check_len(field: &'static str, s: &str) -> Result<(), ConfigError> {
    if s.len() > usize::from(u16::MAX) {
        Err(ConfigError::FieldTooLong {
            field,
            len: s.len(),
        })
    } else {
        Ok(())
    }
}

/// MQTT topic-filter rules: non-empty, no NUL, `#` only as the last whole level, `+` only
/// as a whole level.
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == last,
        "+" => true,
        other => !other.contains('+') && !other.contains('#'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(
            Config::new(Credentials::AccessToken("t".into())).validate(),
            Ok(())
        );
    }

    #[test]
    fn provision_identity_is_refused_for_normal_sessions() {
        let mut c = Config::new(Credentials::AccessToken("provision".into()));
        assert_eq!(c.validate(), Err(ConfigError::ReservedIdentity));
        c.credentials = Credentials::AccessToken("tok".into());
        c.client_id = "provision".into();
        assert_eq!(c.validate(), Err(ConfigError::ReservedIdentity));
        c.client_id = "gw".into();
        c.credentials = Credentials::Basic {
            username: Some("provision".into()),
            password: None,
        };
        assert_eq!(c.validate(), Err(ConfigError::ReservedIdentity));
    }

    #[test]
    fn limits_are_checked() {
        let base = Config::new(Credentials::X509);
        let mut c = base.clone();
        c.keep_alive = Duration::from_secs(70_000);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::KeepAliveTooLong(_))
        ));
        let mut c = base.clone();
        c.keep_alive = Duration::from_millis(1500);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::KeepAliveNotWholeSeconds(_))
        ));
        let mut c = base.clone();
        c.max_inflight = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroInflight));
        let mut c = base.clone();
        c.max_outgoing_packet = 10;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PacketLimitOutOfRange { .. })
        ));
        let mut c = base.clone();
        c.reconnect.jitter_percent = 101;
        assert_eq!(c.validate(), Err(ConfigError::JitterOutOfRange(101)));
        let mut c = base.clone();
        c.credentials = Credentials::AccessToken(String::new());
        assert_eq!(c.validate(), Err(ConfigError::EmptyAccessToken));
        let mut c = base;
        c.client_id = "x".repeat(70_000);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::FieldTooLong { .. })
        ));
    }

    #[test]
    fn filters() {
        for ok in ["a", "a/+/b", "+", "#", "a/#", "v1/devices/me/rpc/request/+"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#", "#/a", "a\0b"] {
            assert!(!valid_filter(bad), "{bad:?}");
        }
        let mut c = Config::new(Credentials::X509);
        c.subscriptions
            .push(Subscription::new("a/#/b", QoS::AtLeastOnce));
        assert!(matches!(c.validate(), Err(ConfigError::InvalidFilter(_))));
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = format!("{:?}", Credentials::AccessToken("SECRET".into()));
        assert!(!s.contains("SECRET"));
        let s = format!(
            "{:?}",
            Config::new(Credentials::Basic {
                username: Some("user".into()),
                password: Some("SECRET".into())
            })
        );
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("user"));
    }
}
