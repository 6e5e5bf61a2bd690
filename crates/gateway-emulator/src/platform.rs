//! The platform model: devices, credentials, attributes, telemetry, server-side RPC, claims,
//! limits, provisioning and OTA packages. Plain data and rules, no I/O; time is passed in.
//!
//! Sessions talk to the platform through method calls; what the platform has to tell *other*
//! sessions (a takeover, a shared-attribute update, an RPC) goes into an outbox of
//! [`Notice`]s that [`crate::Emulator`] routes right after each call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use gateway_proto::payload::{
    AttributeUpdate, CredentialsType, CredentialsValue, ProvisionRequest, ProvisionResponse,
    TelemetryEntry,
};
use gateway_proto::wire::Connect;
use gateway_proto::PROVISION_IDENTITY;
use serde_json::{Map, Value};

use crate::config::EmulatorConfig;
use crate::convert::typed_map;
use crate::error::ControlError;
use crate::gateway_metrics::{GatewayMetrics, Sample, GATEWAY_METRICS_KEY};
use crate::model::{
    ClaimOutcome, ClientRpcAnswer, ClientRpcCall, ClientRpcHandler, Credentials, DeviceId,
    DeviceInfo, Event, LimitedApi, NewDevice, OtaPackage, ProvisionProfile, ProvisionStrategy,
    RpcCall, RpcOutcome, RpcTicket, SessionId, Stats, TsValue, X509ChainProfile,
};
use crate::profile_topics::ProfileTopics;
use crate::proto::ProtoSchemas;
use crate::ratelimit::{EntityLimits, TenantLimits};

/// ThingsBoard's default claim duration when `durationMs` is 0 or absent (`security.claim.duration`).
const DEFAULT_CLAIM_MS: i64 = 86_400_000;
/// Expiry of the persistent gateway notifications (deleted / renamed): one day.
const NOTIFICATION_EXPIRY: Duration = Duration::from_secs(86_400);

/// A message for one session, produced by a platform change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) enum Notice {
    /// A newer session took over `device` (direct: DISCONNECT 0x8E; child: silently dropped).
    TakenOver {
        /// The device.
        device: DeviceId,
    },
    /// Shared attributes of `device` changed.
    Attributes {
        /// The device.
        device: DeviceId,
        /// Values and deleted keys.
        update: AttributeUpdate,
    },
    /// Server-side RPC for `device`.
    Rpc {
        /// The device.
        device: DeviceId,
        /// Per-device id.
        id: u32,
        /// Method.
        method: String,
        /// Parameters.
        params: Value,
    },
    /// `device` was deleted (direct: DISCONNECT 0x98; child: silently dropped).
    Deleted {
        /// The device.
        device: DeviceId,
    },
    /// The credentials of `device` were replaced (direct: DISCONNECT 0x98; child: silently
    /// dropped, as `DeviceActorMessageProcessor.processCredentialsUpdate` closes every
    /// session of the device).
    CredentialsUpdated {
        /// The device.
        device: DeviceId,
    },
    /// `device` was renamed (a gateway keeps the child under its old name until it is
    /// re-announced; the emulator drops the child session).
    Renamed {
        /// The device.
        device: DeviceId,
    },
    /// The control API closes the connection.
    Drop,
}

/// Which session holds a device, and what it subscribed to. ThingsBoard allows one session
/// per device (`max_concurrent_sessions_per_device` = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) session: SessionId,
    /// The gateway, for a child session.
    pub(crate) gateway: Option<DeviceId>,
    pub(crate) attributes: bool,
    pub(crate) rpc: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct PendingRpc {
    id: u32,
    method: String,
    params: Value,
    oneway: bool,
    expires: Instant,
    sent: bool,
    /// Direct sessions mark the RPC delivered when written; gateway children never do (no PUBACK
    /// tracking on the gateway path), so their RPCs are re-sent when the child comes back.
    delivered: bool,
    ticket: Option<RpcTicket>,
}

#[derive(Debug, Clone, PartialEq)]
struct ClaimRecord {
    secret: String,
    expires_ms: i64,
}

/// An `X509_CERTIFICATE_CHAIN` profile as stored: its certificate's text (the
/// `provisionDeviceKey` is that text's SHA3, so comparing texts is comparing keys) and the
/// compiled `certificateRegExPattern`.
#[derive(Debug, Clone)]
struct ChainProfile {
    device_type: String,
    certificate: String,
    regex: regex::Regex,
    allow_create_new: bool,
}

/// What the handshake-time chain walk (`validateOrCreateDeviceX509Certificate`) found. Like
/// ThingsBoard's trust manager, the emulator only logs it: the CONNECT decides by the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainOutcome {
    /// A certificate of the chain is this device's X.509 credential.
    Known(DeviceId),
    /// A chain profile provisioned (created, or found and possibly re-keyed) this device.
    Provisioned(DeviceId),
    /// A chain profile matched but provisioning failed.
    Failed,
    /// No certificate of the chain is a credential or a chain profile's certificate.
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Device {
    pub(crate) id: DeviceId,
    pub(crate) name: String,
    pub(crate) device_type: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) gateway: bool,
    pub(crate) overwrite_activity_time: bool,
    created_by_gateway: Option<DeviceId>,
    last_connected_gateway: Option<DeviceId>,
    client_attributes: Map<String, Value>,
    shared_attributes: Map<String, Value>,
    /// Wall-clock ms of each attribute's last update (`lastUpdateTs`), by key.
    client_attribute_ts: HashMap<String, i64>,
    shared_attribute_ts: HashMap<String, i64>,
    telemetry: BTreeMap<String, VecDeque<TsValue>>,
    rpc_seq: u32,
    rpcs: VecDeque<PendingRpc>,
    claim: Option<ClaimRecord>,
    claimed: bool,
    provisioned: bool,
    firmware: Option<OtaPackage>,
    software: Option<OtaPackage>,
}

/// Why a gateway could not get or create a child device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateError {
    /// "Maximum number of devices reached!" (PUBACK 0x97).
    DeviceLimit,
}

/// Why authentication failed (mapped to CONNACK and DISCONNECT codes by the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    BadUsernameOrPassword,
    ClientIdNotValid,
    /// Nothing matched, or (X.509) the certificate is unknown, expired or not yet valid.
    NotAuthorized,
    /// The credential check failed on the token/basic path (DISCONNECT 0x89 SERVER_BUSY).
    ServerUnavailable,
    /// The credential check failed on the X.509 path (DISCONNECT 0x83).
    X509ServerUnavailable,
}

/// Result of checking a CONNECT's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Device(DeviceId),
    Provision,
    Refused(Refusal),
}

/// Which rate limits apply to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// A plain device's own traffic.
    Device(DeviceId),
    /// A gateway's own device-API traffic.
    GatewayItself(DeviceId),
    /// A child's traffic (or its get-or-create) through `gateway`.
    Child { gateway: DeviceId },
}

/// Verdict of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateCheck {
    Ok,
    Limited(LimitedApi),
}

/// The platform: everything ThingsBoard keeps in its database and actors.
pub struct Platform {
    pub(crate) config: EmulatorConfig,
    start: Instant,
    epoch_ms: i64,
    next_device: u64,
    next_ticket: u64,
    next_generated: u64,
    devices: HashMap<DeviceId, Device>,
    by_name: HashMap<String, DeviceId>,
    bindings: HashMap<DeviceId, Binding>,
    max_devices: Option<usize>,
    limits: TenantLimits,
    tenant_bucket: EntityLimits,
    device_buckets: HashMap<DeviceId, EntityLimits>,
    gateway_buckets: HashMap<DeviceId, EntityLimits>,
    gateway_device_buckets: HashMap<DeviceId, EntityLimits>,
    provision_profiles: Vec<ProvisionProfile>,
    /// `X509_CERTIFICATE_CHAIN` device profiles, keyed by their certificate.
    x509_chain_profiles: Vec<ChainProfile>,
    client_rpc_handler: Option<ClientRpcHandler>,
    auth_unavailable: bool,
    /// `sendAckOnValidationException` of the device profiles that set it, by profile name.
    profile_ack_on_validation: HashMap<String, bool>,
    /// Device profiles whose transport payload type is PROTOBUF, by profile name.
    profile_protobuf: HashMap<String, ProtoSchemas>,
    /// Device profiles with their own telemetry and attributes topics, by profile name.
    profile_topics: HashMap<String, ProfileTopics>,
    /// The latest instant an input carried: the clock of control calls that carry none.
    latest: Instant,
    pub(crate) outbox: VecDeque<(SessionId, Notice)>,
    events: VecDeque<Event>,
    /// Gateway latency metrics awaiting their report.
    gateway_metrics: GatewayMetrics,
    pub(crate) stats: Stats,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("devices", &self.devices.len())
            .field("bindings", &self.bindings.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// An empty platform. `epoch_ms` is the wall-clock time (ms since the Unix epoch) at
    /// `now`; receive timestamps are derived from it.
    pub(crate) fn new(config: EmulatorConfig, now: Instant, epoch_ms: i64) -> Self {
        let gateway_metrics = GatewayMetrics::new(
            now,
            config.gateway_metrics_report_interval,
            config.bounds.max_keys_per_device,
        );
        Self {
            config,
            start: now,
            epoch_ms,
            next_device: 1,
            next_ticket: 1,
            next_generated: 1,
            devices: HashMap::new(),
            by_name: HashMap::new(),
            bindings: HashMap::new(),
            max_devices: None,
            limits: TenantLimits::default(),
            tenant_bucket: EntityLimits::default(),
            device_buckets: HashMap::new(),
            gateway_buckets: HashMap::new(),
            gateway_device_buckets: HashMap::new(),
            provision_profiles: Vec::new(),
            x509_chain_profiles: Vec::new(),
            client_rpc_handler: None,
            auth_unavailable: false,
            profile_ack_on_validation: HashMap::new(),
            profile_protobuf: HashMap::new(),
            profile_topics: HashMap::new(),
            latest: now,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            gateway_metrics,
            stats: Stats::default(),
        }
    }

    /// An input arrived at `now`: the platform's clock moves forward (never back).
    pub(crate) fn observe(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
    }

    /// Wall-clock milliseconds at the latest input.
    pub(crate) fn now_ms(&self) -> i64 {
        self.wall_ms(self.latest)
    }

    /// Wall-clock milliseconds at `now`.
    pub(crate) fn wall_ms(&self, now: Instant) -> i64 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        self.epoch_ms
            .saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }

    // ---- events ---------------------------------------------------------------------------

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.bounds.max_events {
            self.events.pop_front();
            self.stats.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn notify(&mut self, session: SessionId, notice: Notice) {
        self.outbox.push_back((session, notice));
    }

    // ---- devices --------------------------------------------------------------------------

    pub(crate) fn device(&self, id: DeviceId) -> Option<&Device> {
        self.devices.get(&id)
    }

    pub(crate) fn device_id(&self, name: &str) -> Option<DeviceId> {
        self.by_name.get(name).copied()
    }

    fn lookup(&self, name: &str) -> Result<DeviceId, ControlError> {
        self.device_id(name)
            .ok_or_else(|| ControlError::UnknownDevice(name.to_owned()))
    }

    pub(crate) fn name_of(&self, id: DeviceId) -> Option<&str> {
        self.devices.get(&id).map(|d| d.name.as_str())
    }

    fn at_device_limit(&self) -> bool {
        let n = self.devices.len();
        n >= self.config.bounds.max_devices || self.max_devices.is_some_and(|max| n >= max)
    }

    pub(crate) fn set_max_devices(&mut self, max: Option<usize>) {
        self.max_devices = max;
    }

    fn credentials_taken(&self, credentials: &Credentials) -> bool {
        self.devices
            .values()
            .any(|d| d.credentials.as_ref() == Some(credentials))
    }

    pub(crate) fn create_device(&mut self, new: NewDevice) -> Result<DeviceId, ControlError> {
        if self.by_name.contains_key(&new.name) {
            return Err(ControlError::DeviceExists(new.name));
        }
        if self.at_device_limit() {
            return Err(ControlError::DeviceLimitReached);
        }
        if let Some(c) = &new.credentials {
            if self.credentials_taken(c) {
                return Err(ControlError::CredentialsInUse);
            }
        }
        Ok(self.insert_device(new, None))
    }

    fn insert_device(&mut self, new: NewDevice, created_by: Option<DeviceId>) -> DeviceId {
        let id = DeviceId(self.next_device);
        self.next_device += 1;
        self.by_name.insert(new.name.clone(), id);
        self.devices.insert(
            id,
            Device {
                id,
                name: new.name,
                device_type: new.device_type,
                credentials: new.credentials,
                gateway: new.gateway,
                overwrite_activity_time: new.overwrite_activity_time,
                created_by_gateway: created_by,
                last_connected_gateway: created_by,
                client_attributes: Map::new(),
                shared_attributes: Map::new(),
                client_attribute_ts: HashMap::new(),
                shared_attribute_ts: HashMap::new(),
                telemetry: BTreeMap::new(),
                rpc_seq: 0,
                rpcs: VecDeque::new(),
                claim: None,
                claimed: false,
                provisioned: false,
                firmware: None,
                software: None,
            },
        );
        id
    }

    /// The gateway's get-or-create of a child by name (DTAS `GetOrCreateDeviceFromGatewayRequestMsg`):
    /// an existing device is adopted as-is; otherwise one is created with `device_type`.
    pub(crate) fn get_or_create_child(
        &mut self,
        gateway: DeviceId,
        name: &str,
        device_type: Option<&str>,
    ) -> Result<DeviceId, CreateError> {
        let id = match self.device_id(name) {
            Some(id) => id,
            None => {
                if self.at_device_limit() {
                    return Err(CreateError::DeviceLimit);
                }
                let new = NewDevice {
                    name: name.to_owned(),
                    device_type: device_type.unwrap_or("default").to_owned(),
                    credentials: None,
                    gateway: false,
                    overwrite_activity_time: false,
                };
                self.insert_device(new, Some(gateway))
            }
        };
        if let Some(d) = self.devices.get_mut(&id) {
            d.last_connected_gateway = Some(gateway);
        }
        Ok(id)
    }

    pub(crate) fn info(&self, id: DeviceId) -> Option<DeviceInfo> {
        let d = self.devices.get(&id)?;
        let name = |g: Option<DeviceId>| g.and_then(|g| self.name_of(g)).map(str::to_owned);
        Some(DeviceInfo {
            id,
            name: d.name.clone(),
            device_type: d.device_type.clone(),
            gateway: d.gateway,
            credentials: d.credentials.clone(),
            created_by_gateway: name(d.created_by_gateway),
            last_connected_gateway: name(d.last_connected_gateway),
            claimed: d.claimed,
        })
    }

    pub(crate) fn device_infos(&self) -> Vec<DeviceInfo> {
        let mut ids: Vec<_> = self.devices.keys().copied().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.info(id)).collect()
    }

    /// Deletes a device: pending RPCs fail, its session is told, and the gateway it last
    /// connected through gets a `gateway_device_deleted` notification.
    pub(crate) fn delete_device(&mut self, name: &str, now: Instant) -> Result<(), ControlError> {
        let id = self.lookup(name)?;
        let Some(device) = self.devices.remove(&id) else {
            return Err(ControlError::UnknownDevice(name.to_owned()));
        };
        self.by_name.remove(name);
        self.gateway_metrics.remove(id);
        self.device_buckets.remove(&id);
        self.gateway_buckets.remove(&id);
        self.gateway_device_buckets.remove(&id);
        for rpc in device.rpcs {
            if let Some(ticket) = rpc.ticket {
                self.push_event(Event::RpcCompleted {
                    ticket,
                    device: device.name.clone(),
                    outcome: RpcOutcome::DeviceDeleted,
                });
            }
        }
        if let Some(binding) = self.bindings.remove(&id) {
            self.notify(binding.session, Notice::Deleted { device: id });
        }
        if let Some(gw) = device.last_connected_gateway {
            let params = Value::String(device.name.clone());
            self.send_notification(gw, "gateway_device_deleted", params, now);
        }
        Ok(())
    }

    /// Replaces a device's credentials (REST `POST /api/device/credentials`). As in
    /// ThingsBoard the device's session is closed (`CREDENTIALS_UPDATED`): a direct session
    /// gets DISCONNECT 0x98, a gateway forgets the child until it is announced again.
    pub(crate) fn update_credentials(
        &mut self,
        name: &str,
        credentials: Credentials,
    ) -> Result<(), ControlError> {
        let id = self.lookup(name)?;
        // `DeviceCredentialsValidator`: credentials are unique across devices.
        if self
            .devices
            .values()
            .any(|d| d.id != id && d.credentials.as_ref() == Some(&credentials))
        {
            return Err(ControlError::CredentialsInUse);
        }
        let Some(device) = self.devices.get_mut(&id) else {
            return Err(ControlError::UnknownDevice(name.to_owned()));
        };
        device.credentials = Some(credentials);
        self.close_for_credentials(id);
        Ok(())
    }

    /// The device actor's answer to a credentials update: its session is told to close and
    /// its subscriptions are forgotten.
    fn close_for_credentials(&mut self, id: DeviceId) {
        if let Some(binding) = self.bindings.remove(&id) {
            self.notify(binding.session, Notice::CredentialsUpdated { device: id });
        }
    }

    /// Renames a device; the gateway it last connected through is notified.
    pub(crate) fn rename_device(
        &mut self,
        old: &str,
        new: &str,
        now: Instant,
    ) -> Result<(), ControlError> {
        let id = self.lookup(old)?;
        if self.by_name.contains_key(new) {
            return Err(ControlError::DeviceExists(new.to_owned()));
        }
        self.by_name.remove(old);
        self.by_name.insert(new.to_owned(), id);
        let mut gateway = None;
        if let Some(d) = self.devices.get_mut(&id) {
            d.name = new.to_owned();
            gateway = d.last_connected_gateway;
        }
        if let Some(binding) = self.bindings.get(&id).copied() {
            if binding.gateway.is_some() {
                self.bindings.remove(&id);
                self.notify(binding.session, Notice::Renamed { device: id });
            }
        }
        if let Some(gw) = gateway {
            let mut m = Map::new();
            m.insert(old.to_owned(), Value::String(new.to_owned()));
            self.send_notification(gw, "gateway_device_renamed", Value::Object(m), now);
        }
        Ok(())
    }

    fn send_notification(&mut self, gateway: DeviceId, method: &str, params: Value, now: Instant) {
        let call = RpcCall {
            method: method.to_owned(),
            params,
            oneway: true,
            timeout: NOTIFICATION_EXPIRY,
        };
        // A full RPC queue only loses this notification, as an expired one would be.
        let _ = self.queue_rpc(gateway, call, None, now);
    }

    // ---- authentication ----------------------------------------------------------------------

    /// Sets a device profile's `sendAckOnValidationException`.
    pub(crate) fn set_profile_ack_on_validation(&mut self, profile: &str, on: bool) {
        self.profile_ack_on_validation
            .insert(profile.to_owned(), on);
    }

    /// `sendAckOnValidationException` of `device`'s profile (DSC reads it from the device
    /// profile's MQTT transport configuration); the configured default for other profiles.
    pub(crate) fn ack_on_validation(&self, device: Option<DeviceId>) -> bool {
        device
            .and_then(|d| self.devices.get(&d))
            .and_then(|d| self.profile_ack_on_validation.get(&d.device_type))
            .copied()
            .unwrap_or(self.config.send_ack_on_validation_exception)
    }

    /// Makes a device profile PROTOBUF with `schemas`, or JSON again with `None`.
    pub(crate) fn set_profile_protobuf(&mut self, profile: &str, schemas: Option<ProtoSchemas>) {
        set_or_clear(&mut self.profile_protobuf, profile, schemas);
    }

    /// The schemas of `device`'s profile when its payload type is PROTOBUF (DSC
    /// `updateDynamicMessageDescriptors`); `None` for a JSON profile.
    pub(crate) fn proto_schemas(&self, device: DeviceId) -> Option<&ProtoSchemas> {
        self.of_profile(&self.profile_protobuf, device)
    }

    /// Gives a device profile its own telemetry and attributes topics, or the defaults again
    /// with `None`.
    pub(crate) fn set_profile_topics(&mut self, profile: &str, topics: Option<ProfileTopics>) {
        set_or_clear(&mut self.profile_topics, profile, topics);
    }

    /// The topic filters of `device`'s profile, when it has its own.
    pub(crate) fn profile_topics(&self, device: DeviceId) -> Option<&ProfileTopics> {
        self.of_profile(&self.profile_topics, device)
    }

    /// A per-profile setting for `device`, looked up by its profile (device type).
    fn of_profile<'a, T>(
        &'a self,
        settings: &'a HashMap<String, T>,
        device: DeviceId,
    ) -> Option<&'a T> {
        self.devices
            .get(&device)
            .and_then(|d| settings.get(&d.device_type))
    }

    /// When an attribute was last updated (wall-clock ms), 0 if unknown.
    pub(crate) fn attribute_ts(&self, device: DeviceId, shared: bool, key: &str) -> i64 {
        self.devices
            .get(&device)
            .and_then(|d| {
                if shared {
                    d.shared_attribute_ts.get(key)
                } else {
                    d.client_attribute_ts.get(key)
                }
            })
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn set_auth_unavailable(&mut self, on: bool) {
        self.auth_unavailable = on;
    }

    /// MQTT CONNECT credential check (MTH `processConnect`; DTAS `validateCredentials`).
    ///
    /// Order as in MTH `processConnect`: a `provision` user name or client id first (even with
    /// a client certificate); then, if the TLS client presented a certificate, X.509 alone
    /// (`processX509CertConnect`: user name and password are not looked at, an unknown
    /// certificate is refused with NOT_AUTHORIZED, never retried as a token); otherwise the
    /// token / MQTT-basic lookup.
    pub(crate) fn authenticate(
        &self,
        connect: &Connect,
        client_cert: Option<&[u8]>,
        now: Instant,
    ) -> Auth {
        let username = connect.username.as_deref();
        let password = connect.password.as_deref();
        if username == Some(PROVISION_IDENTITY) || connect.client_id == PROVISION_IDENTITY {
            return Auth::Provision;
        }
        if let Some(der) = client_cert {
            return self.authenticate_x509(der, now);
        }
        if self.auth_unavailable {
            return Auth::Refused(Refusal::ServerUnavailable);
        }
        if let Some(id) = self.find_credentials(&connect.client_id, username, password) {
            return Auth::Device(id);
        }
        let has_user = username.is_some();
        let has_pass = password.is_some();
        let has_client = !connect.client_id.trim().is_empty();
        Auth::Refused(
            if (has_user && has_pass && has_client) || (has_user != has_pass) {
                Refusal::BadUsernameOrPassword
            } else if !has_user && !has_pass && has_client {
                Refusal::ClientIdNotValid
            } else {
                Refusal::NotAuthorized
            },
        )
    }

    /// MTH `processX509CertConnect`: validity check, then the lookup by certificate.
    fn authenticate_x509(&self, der: &[u8], now: Instant) -> Auth {
        if !self.config.skip_validity_check_for_client_cert {
            // `cert.checkValidity()` throws for an expired or not-yet-valid certificate; any
            // exception there is a NOT_AUTHORIZED refusal. An unreadable certificate is
            // refused the same way.
            let wall = self.wall_ms(now);
            match crate::x509::validity(der) {
                Some((from, until)) if from <= wall && wall <= until => {}
                _ => return Auth::Refused(Refusal::NotAuthorized),
            }
        }
        if self.auth_unavailable {
            return Auth::Refused(Refusal::X509ServerUnavailable);
        }
        let value = crate::x509::credentials_value_from_der(der);
        self.devices
            .values()
            .find(|d| match &d.credentials {
                Some(Credentials::X509 { certificate }) => *certificate == value,
                _ => false,
            })
            .map_or(Auth::Refused(Refusal::NotAuthorized), |d| {
                Auth::Device(d.id)
            })
    }

    fn find_credentials(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Option<DeviceId> {
        let password_ok = |want: &Option<String>| match want {
            None => true,
            Some(p) if p.is_empty() => true,
            Some(p) => password == Some(p.as_str()),
        };
        let find = |pred: &dyn Fn(&Credentials) -> bool| {
            self.devices
                .values()
                .find(|d| d.credentials.as_ref().is_some_and(pred))
        };
        match username.filter(|u| !u.is_empty()) {
            None => {
                let d = find(
                    &|c| matches!(c, Credentials::Basic { client_id: Some(c), username: None, .. } if c == client_id),
                )?;
                match &d.credentials {
                    Some(Credentials::Basic { password: p, .. }) if password_ok(p) => Some(d.id),
                    _ => None,
                }
            }
            Some(user) => {
                let pair = find(&|c| {
                    matches!(c, Credentials::Basic { client_id: Some(c), username: Some(u), .. }
                        if c == client_id && u == user)
                });
                if let Some(d) = pair {
                    return match &d.credentials {
                        Some(Credentials::Basic { password: p, .. }) if password_ok(p) => {
                            Some(d.id)
                        }
                        _ => None,
                    };
                }
                let d = find(&|c| match c {
                    Credentials::AccessToken(t) => t == user,
                    Credentials::Basic {
                        client_id: None,
                        username: Some(u),
                        ..
                    } => u == user,
                    _ => false,
                })?;
                match &d.credentials {
                    Some(Credentials::AccessToken(_)) => Some(d.id),
                    Some(Credentials::Basic { password: p, .. }) if password_ok(p) => Some(d.id),
                    _ => None,
                }
            }
        }
    }

    // ---- sessions ------------------------------------------------------------------------------

    /// Registers `device` with `session`. An older session holding the device is told it was
    /// taken over. Returns true if `device` was already bound to this session.
    pub(crate) fn bind(
        &mut self,
        device: DeviceId,
        session: SessionId,
        gateway: Option<DeviceId>,
        now: Instant,
    ) -> bool {
        if let Some(old) = self.bindings.get(&device).copied() {
            if old.session == session && old.gateway == gateway {
                return true;
            }
            if old.session != session {
                self.notify(old.session, Notice::TakenOver { device });
            }
        }
        // A child is subscribed to attributes and RPC as soon as its session exists.
        let child = gateway.is_some();
        self.bindings.insert(
            device,
            Binding {
                session,
                gateway,
                attributes: child,
                rpc: child,
            },
        );
        if child {
            self.send_pending_rpcs(device, now);
        }
        false
    }

    /// Removes the binding of `device` if `session` holds it.
    pub(crate) fn unbind(&mut self, device: DeviceId, session: SessionId) {
        if self
            .bindings
            .get(&device)
            .is_some_and(|b| b.session == session)
        {
            self.bindings.remove(&device);
        }
    }

    pub(crate) fn is_bound(&self, device: DeviceId, session: SessionId) -> bool {
        self.bindings
            .get(&device)
            .is_some_and(|b| b.session == session)
    }

    pub(crate) fn subscribe_attributes(&mut self, device: DeviceId, session: SessionId, on: bool) {
        if let Some(b) = self.bindings.get_mut(&device) {
            if b.session == session {
                b.attributes = on;
            }
        }
    }

    pub(crate) fn subscribe_rpc(
        &mut self,
        device: DeviceId,
        session: SessionId,
        on: bool,
        now: Instant,
    ) {
        let mut push = false;
        if let Some(b) = self.bindings.get_mut(&device) {
            if b.session == session {
                b.rpc = on;
                push = on;
            }
        }
        if push {
            self.send_pending_rpcs(device, now);
        }
    }

    // ---- telemetry and attributes ---------------------------------------------------------

    /// Stores telemetry points (typed, numeric strings cast to numbers when `type_cast`;
    /// nulls dropped) at `ts`.
    pub(crate) fn store_telemetry(
        &mut self,
        device: DeviceId,
        ts: i64,
        values: &Map<String, Value>,
        type_cast: bool,
    ) {
        let typed = typed_map(values, type_cast);
        let history = self.config.bounds.history_per_key;
        let max_keys = self.config.bounds.max_keys_per_device;
        let Some(d) = self.devices.get_mut(&device) else {
            return;
        };
        for (key, value) in typed {
            if !d.telemetry.contains_key(&key) && d.telemetry.len() >= max_keys {
                self.stats.dropped_keys += 1;
                continue;
            }
            let series = d.telemetry.entry(key).or_default();
            let at = series.partition_point(|p| p.ts <= ts);
            series.insert(at, TsValue { ts, value });
            while series.len() > history {
                series.pop_front();
            }
        }
    }

    /// `GatewayMetricsService.process`: the `metadata` of one device's converted telemetry
    /// elements, sent through `gateway` and received at `now`.
    pub(crate) fn record_gateway_metrics(
        &mut self,
        gateway: DeviceId,
        entries: &[TelemetryEntry],
        now: Instant,
    ) {
        let server_ms = self.wall_ms(now);
        let samples = entries.iter().filter_map(|e| {
            e.metadata.as_ref().map(|m| Sample {
                connector: &m.connector,
                received_ts: m.received_ts,
                published_ts: m.published_ts,
            })
        });
        let dropped = self
            .gateway_metrics
            .record(gateway, samples, server_ms, now);
        self.stats.dropped_keys += dropped;
    }

    /// Stores client-side attributes (typed, numeric strings cast to numbers when
    /// `type_cast`; nulls dropped).
    pub(crate) fn store_client_attributes(
        &mut self,
        device: DeviceId,
        values: &Map<String, Value>,
        type_cast: bool,
    ) {
        let typed = typed_map(values, type_cast);
        let max_keys = self.config.bounds.max_keys_per_device;
        let now_ms = self.now_ms();
        let Some(d) = self.devices.get_mut(&device) else {
            return;
        };
        for (key, value) in typed {
            if !d.client_attributes.contains_key(&key) && d.client_attributes.len() >= max_keys {
                self.stats.dropped_keys += 1;
                continue;
            }
            d.client_attribute_ts.insert(key.clone(), now_ms);
            d.client_attributes.insert(key, value);
        }
    }

    pub(crate) fn telemetry(&self, device: DeviceId) -> BTreeMap<String, Vec<TsValue>> {
        self.devices
            .get(&device)
            .map(|d| {
                d.telemetry
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn client_attributes(&self, device: DeviceId) -> Map<String, Value> {
        self.devices
            .get(&device)
            .map(|d| d.client_attributes.clone())
            .unwrap_or_default()
    }

    pub(crate) fn shared_attributes(&self, device: DeviceId) -> Map<String, Value> {
        self.devices
            .get(&device)
            .map(|d| d.shared_attributes.clone())
            .unwrap_or_default()
    }

    /// Attribute lookup as the device actor does it (DAMP `getAttributesKvEntries`): no keys in
    /// either scope → everything in both; otherwise only the scopes that name keys.
    pub(crate) fn get_attributes(
        &self,
        device: DeviceId,
        client_keys: &[String],
        shared_keys: &[String],
    ) -> (Map<String, Value>, Map<String, Value>) {
        let Some(d) = self.devices.get(&device) else {
            return (Map::new(), Map::new());
        };
        let pick = |from: &Map<String, Value>, keys: &[String]| {
            keys.iter()
                .filter_map(|k| from.get(k).map(|v| (k.clone(), v.clone())))
                .collect::<Map<_, _>>()
        };
        if client_keys.is_empty() && shared_keys.is_empty() {
            (d.client_attributes.clone(), d.shared_attributes.clone())
        } else {
            (
                pick(&d.client_attributes, client_keys),
                pick(&d.shared_attributes, shared_keys),
            )
        }
    }

    /// Sets shared attributes and pushes the update to the device's session if it listens.
    pub(crate) fn set_shared_attributes(
        &mut self,
        name: &str,
        values: Map<String, Value>,
    ) -> Result<(), ControlError> {
        let id = self.lookup(name)?;
        let max_keys = self.config.bounds.max_keys_per_device;
        let now_ms = self.now_ms();
        let mut stored = Map::new();
        if let Some(d) = self.devices.get_mut(&id) {
            for (k, v) in values {
                if v.is_null() {
                    continue;
                }
                if !d.shared_attributes.contains_key(&k) && d.shared_attributes.len() >= max_keys {
                    self.stats.dropped_keys += 1;
                    continue;
                }
                d.shared_attribute_ts.insert(k.clone(), now_ms);
                d.shared_attributes.insert(k.clone(), v.clone());
                stored.insert(k, v);
            }
        }
        if !stored.is_empty() {
            self.push_attributes(
                id,
                AttributeUpdate {
                    values: stored,
                    deleted: Vec::new(),
                },
            );
        }
        Ok(())
    }

    /// Deletes shared attributes; the session gets `{"deleted":[..]}` for the keys that existed.
    pub(crate) fn delete_shared_attributes(
        &mut self,
        name: &str,
        keys: &[String],
    ) -> Result<(), ControlError> {
        let id = self.lookup(name)?;
        let mut deleted = Vec::new();
        if let Some(d) = self.devices.get_mut(&id) {
            for k in keys {
                d.shared_attribute_ts.remove(k);
                if d.shared_attributes.remove(k).is_some() {
                    deleted.push(k.clone());
                }
            }
        }
        if !deleted.is_empty() {
            self.push_attributes(
                id,
                AttributeUpdate {
                    values: Map::new(),
                    deleted,
                },
            );
        }
        Ok(())
    }

    fn push_attributes(&mut self, device: DeviceId, update: AttributeUpdate) {
        if let Some(b) = self.bindings.get(&device).copied() {
            if b.attributes {
                self.notify(b.session, Notice::Attributes { device, update });
            }
        }
    }

    // ---- rate limits ---------------------------------------------------------------------------

    pub(crate) fn set_limits(&mut self, limits: TenantLimits) -> Result<(), ControlError> {
        self.tenant_bucket = EntityLimits::new(&limits.tenant)?;
        for l in [&limits.device, &limits.gateway, &limits.gateway_device] {
            EntityLimits::new(l)?;
        }
        self.limits = limits;
        self.device_buckets.clear();
        self.gateway_buckets.clear();
        self.gateway_device_buckets.clear();
        Ok(())
    }

    pub(crate) fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// DTRLS `checkLimits`: tenant first, then the sender's own bucket.
    pub(crate) fn check_rate(
        &mut self,
        sender: Sender,
        device_name: &str,
        data_points: u64,
        now: Instant,
    ) -> RateCheck {
        let verdict = self.check_rate_inner(sender, data_points, now);
        if let RateCheck::Limited(api) = verdict {
            self.push_event(Event::RateLimited {
                device: device_name.to_owned(),
                api,
            });
        }
        verdict
    }

    /// A regular message nobody waits for (a child session's open, a session's close, an
    /// attribute or RPC subscription): ThingsBoard sends it with a `null` callback, so a
    /// refusal only raises the notification, but the tokens are taken all the same (DTS
    /// `process(..)` runs `checkLimits` first). Uses the platform's clock (closes carry no
    /// instant).
    pub(crate) fn charge_silently(&mut self, sender: Sender, device_name: &str) {
        let now = self.latest;
        let _ = self.check_rate(sender, device_name, 0, now);
    }

    /// [`charge_silently`](Self::charge_silently) for a device's own session (its close, a
    /// subscription), named as the notification names it.
    pub(crate) fn charge_own_silently(&mut self, device: DeviceId, gateway: bool) {
        let name = self.name_of(device).unwrap_or_default().to_owned();
        self.charge_silently(Self::own_sender(device, gateway), &name);
    }

    /// The rate-limit sender of a device's own session.
    pub(crate) fn own_sender(device: DeviceId, gateway: bool) -> Sender {
        if gateway {
            Sender::GatewayItself(device)
        } else {
            Sender::Device(device)
        }
    }

    fn check_rate_inner(&mut self, sender: Sender, data_points: u64, now: Instant) -> RateCheck {
        if !self.tenant_bucket.check(data_points, now) {
            return RateCheck::Limited(LimitedApi::Tenant);
        }
        let (map, key, config, api) = match sender {
            Sender::Device(d) => (
                &mut self.device_buckets,
                d,
                &self.limits.device,
                LimitedApi::Device,
            ),
            Sender::GatewayItself(g) => (
                &mut self.gateway_device_buckets,
                g,
                &self.limits.gateway_device,
                LimitedApi::GatewayDevice,
            ),
            Sender::Child { gateway, .. } => (
                &mut self.gateway_buckets,
                gateway,
                &self.limits.gateway,
                LimitedApi::Gateway,
            ),
        };
        let bucket = map
            .entry(key)
            .or_insert_with(|| EntityLimits::new(config).unwrap_or_default());
        if bucket.check(data_points, now) {
            RateCheck::Ok
        } else {
            RateCheck::Limited(api)
        }
    }

    // ---- server-side RPC ------------------------------------------------------------------------

    pub(crate) fn send_rpc(
        &mut self,
        name: &str,
        call: RpcCall,
        now: Instant,
    ) -> Result<RpcTicket, ControlError> {
        let id = self.lookup(name)?;
        let ticket = RpcTicket(self.next_ticket);
        self.next_ticket += 1;
        self.queue_rpc(id, call, Some(ticket), now)?;
        Ok(ticket)
    }

    fn queue_rpc(
        &mut self,
        device: DeviceId,
        call: RpcCall,
        ticket: Option<RpcTicket>,
        now: Instant,
    ) -> Result<(), ControlError> {
        let max = self.config.bounds.max_pending_rpcs_per_device;
        let Some(d) = self.devices.get_mut(&device) else {
            return Err(ControlError::UnknownDevice(device.to_string()));
        };
        if d.rpcs.len() >= max {
            return Err(ControlError::TooManyPendingRpcs);
        }
        let id = d.rpc_seq;
        d.rpc_seq = d.rpc_seq.wrapping_add(1);
        d.rpcs.push_back(PendingRpc {
            id,
            method: call.method,
            params: call.params,
            oneway: call.oneway,
            expires: now + call.timeout,
            sent: false,
            delivered: false,
            ticket,
        });
        self.send_pending_rpcs(device, now);
        Ok(())
    }

    /// Pushes every unexpired, undelivered RPC of `device` to its RPC-subscribed session
    /// (ThingsBoard's BURST submit strategy). One-way RPCs complete as soon as they are handed
    /// over.
    fn send_pending_rpcs(&mut self, device: DeviceId, now: Instant) {
        let Some(binding) = self.bindings.get(&device).copied() else {
            return;
        };
        if !binding.rpc {
            return;
        }
        let Some(d) = self.devices.get_mut(&device) else {
            return;
        };
        let direct = binding.gateway.is_none();
        let name = d.name.clone();
        let mut notices = Vec::new();
        let mut completed = Vec::new();
        d.rpcs.retain_mut(|rpc| {
            if rpc.delivered || rpc.expires <= now {
                return true;
            }
            notices.push(Notice::Rpc {
                device,
                id: rpc.id,
                method: rpc.method.clone(),
                params: rpc.params.clone(),
            });
            rpc.sent = true;
            rpc.delivered = direct;
            if rpc.oneway {
                if let Some(ticket) = rpc.ticket {
                    completed.push(ticket);
                }
                return false;
            }
            true
        });
        for notice in notices {
            self.notify(binding.session, notice);
        }
        for ticket in completed {
            self.push_event(Event::RpcCompleted {
                ticket,
                device: name.clone(),
                outcome: RpcOutcome::Delivered,
            });
        }
    }

    /// A device's (or child's) reply to RPC `id`. Unknown or expired ids are stale and dropped.
    pub(crate) fn rpc_reply(&mut self, device: DeviceId, id: u64, data: Value) {
        let Some(d) = self.devices.get_mut(&device) else {
            return;
        };
        let pos = d
            .rpcs
            .iter()
            .position(|r| u64::from(r.id) == id && r.sent && !r.oneway);
        let Some(rpc) = pos.and_then(|p| d.rpcs.remove(p)) else {
            self.stats.stale_rpc_replies += 1;
            return;
        };
        let name = d.name.clone();
        if let Some(ticket) = rpc.ticket {
            self.push_event(Event::RpcCompleted {
                ticket,
                device: name,
                outcome: RpcOutcome::Reply(data),
            });
        }
    }

    // ---- client-side RPC -----------------------------------------------------------------------

    pub(crate) fn set_client_rpc_handler(&mut self, handler: Option<ClientRpcHandler>) {
        self.client_rpc_handler = handler;
    }

    pub(crate) fn client_rpc(&mut self, call: &ClientRpcCall) -> ClientRpcAnswer {
        match self.client_rpc_handler.as_mut() {
            Some(h) => h(call),
            None => ClientRpcAnswer::NoAnswer,
        }
    }

    // ---- claims --------------------------------------------------------------------------------

    /// A device announces it may be claimed (`v1/devices/me/claim`, `v1/gateway/claim`).
    pub(crate) fn allow_claim(
        &mut self,
        device: DeviceId,
        secret: Option<String>,
        duration_ms: Option<i64>,
        now: Instant,
    ) {
        let duration = duration_ms.filter(|d| *d > 0).unwrap_or(DEFAULT_CLAIM_MS);
        let expires_ms = self.wall_ms(now).saturating_add(duration);
        if let Some(d) = self.devices.get_mut(&device) {
            d.claim = Some(ClaimRecord {
                secret: secret.unwrap_or_default(),
                expires_ms,
            });
        }
    }

    /// A customer claims a device (REST `/api/customer/device/{name}/claim`).
    pub(crate) fn claim_device(
        &mut self,
        name: &str,
        secret: &str,
        now: Instant,
    ) -> Result<ClaimOutcome, ControlError> {
        let id = self.lookup(name)?;
        let wall = self.wall_ms(now);
        let Some(d) = self.devices.get_mut(&id) else {
            return Err(ControlError::UnknownDevice(name.to_owned()));
        };
        if d.claimed {
            return Ok(ClaimOutcome::AlreadyClaimed);
        }
        match &d.claim {
            Some(c) if c.expires_ms > wall && c.secret == secret => {
                d.claimed = true;
                d.claim = None;
                Ok(ClaimOutcome::Success)
            }
            _ => Ok(ClaimOutcome::Failure),
        }
    }

    // ---- provisioning --------------------------------------------------------------------------

    pub(crate) fn add_provision_profile(&mut self, profile: ProvisionProfile) {
        self.provision_profiles.retain(|p| p.key != profile.key);
        self.provision_profiles.push(profile);
    }

    /// Adds (or, for the same device type, replaces) an `X509_CERTIFICATE_CHAIN` profile.
    pub(crate) fn add_x509_chain_profile(
        &mut self,
        profile: X509ChainProfile,
    ) -> Result<(), ControlError> {
        let certificate = crate::x509::first_certificate_value(&profile.certificate_pem)
            .ok_or(ControlError::InvalidCertificate)?;
        let regex = regex::Regex::new(&profile.certificate_regex)
            .map_err(|e| ControlError::InvalidRegex(e.to_string()))?;
        // `provisionDeviceKey` is unique: the same certificate cannot key two profiles.
        if let Some(other) = self
            .x509_chain_profiles
            .iter()
            .find(|p| p.certificate == certificate && p.device_type != profile.device_type)
        {
            return Err(ControlError::ProfileCertificateInUse(
                other.device_type.clone(),
            ));
        }
        self.x509_chain_profiles
            .retain(|p| p.device_type != profile.device_type);
        self.x509_chain_profiles.push(ChainProfile {
            device_type: profile.device_type,
            certificate,
            regex,
            allow_create_new: profile.allow_create_new,
        });
        Ok(())
    }

    /// DTAS `validateOrCreateDeviceX509Certificate`, run by ThingsBoard's trust manager during
    /// the TLS handshake for every chain a client presents (`chain`: DER, leaf first). Walks
    /// the chain leaf first: a certificate that is a device's X.509 credential ends the walk;
    /// one that is a chain profile's certificate runs `provisionDeviceViaX509Chain` for the
    /// leaf and ends it too. With the backend unavailable (fault injection) the request fails
    /// and nothing happens, as ThingsBoard only logs it.
    pub(crate) fn validate_or_create_x509(&mut self, chain: &[&[u8]]) -> ChainOutcome {
        if self.auth_unavailable {
            return ChainOutcome::NotFound;
        }
        let values: Vec<String> = chain
            .iter()
            .map(|der| crate::x509::credentials_value_from_der(der))
            .collect();
        let Some(leaf) = values.first() else {
            return ChainOutcome::NotFound;
        };
        for value in &values {
            if let Some(d) = self.devices.values().find(|d| {
                matches!(&d.credentials, Some(Credentials::X509 { certificate }) if certificate == value)
            }) {
                return ChainOutcome::Known(d.id);
            }
            if let Some(profile) = self
                .x509_chain_profiles
                .iter()
                .find(|p| p.certificate == *value)
                .cloned()
            {
                let leaf_der = chain.first().copied().unwrap_or_default();
                return match self.provision_via_x509_chain(&profile, leaf, leaf_der) {
                    Some(id) => ChainOutcome::Provisioned(id),
                    None => ChainOutcome::Failed,
                };
            }
        }
        ChainOutcome::NotFound
    }

    /// `DeviceProvisionServiceImpl.provisionDeviceViaX509Chain` for the leaf (`leaf`: its
    /// credentials value, `leaf_der`: its DER). `None` is a `ProvisionFailedException`.
    fn provision_via_x509_chain(
        &mut self,
        profile: &ChainProfile,
        leaf: &str,
        leaf_der: &[u8],
    ) -> Option<DeviceId> {
        // `parseCommonName` throwing gives a null CN, and matching null throws: failure.
        let cn = crate::x509::common_name(leaf_der)?;
        // `matcher.find()` then `group(1)`: no match or no group 1 in the pattern fails; a
        // group 1 that took no part in the match is null, i.e. no name.
        if profile.regex.captures_len() < 2 {
            return None;
        }
        let captures = profile.regex.captures(&cn)?;
        let name = captures
            .get(1)
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let existing = self.by_name.get(&name).copied().filter(|id| {
            self.devices
                .get(id)
                .is_some_and(|d| d.device_type == profile.device_type)
        });
        if let Some(id) = existing {
            // The device keeps its identity; X.509 credentials are replaced by the leaf
            // (`updateDeviceCredentials`), any other credentials stay as they are.
            let leaf_credentials = Credentials::X509 {
                certificate: leaf.to_owned(),
            };
            // Saving X.509 credentials over X.509 ones publishes `CREDENTIALS_UPDATED`, which
            // closes the device's open session (the one being opened is not bound yet).
            let rekeyed = match self.devices.get_mut(&id) {
                Some(d) if matches!(d.credentials, Some(Credentials::X509 { .. })) => {
                    d.credentials = Some(leaf_credentials);
                    true
                }
                _ => false,
            };
            if rekeyed {
                self.close_for_credentials(id);
            }
            return Some(id);
        }
        if !profile.allow_create_new {
            return None;
        }
        // `processCreateDevice`: an empty name gets a random 20-character one; saving fails
        // when the name is taken (by a device of another profile) or at the device limit.
        let name = if name.is_empty() {
            self.generated("")
        } else {
            name
        };
        let credentials = Credentials::X509 {
            certificate: leaf.to_owned(),
        };
        if self.by_name.contains_key(&name)
            || self.at_device_limit()
            || self.credentials_taken(&credentials)
        {
            return None;
        }
        let id = self.insert_device(
            NewDevice {
                name,
                device_type: profile.device_type.clone(),
                credentials: Some(credentials),
                gateway: false,
                overwrite_activity_time: false,
            },
            None,
        );
        if let Some(d) = self.devices.get_mut(&id) {
            d.provisioned = true;
        }
        Some(id)
    }

    fn generated(&mut self, prefix: &str) -> String {
        let n = self.next_generated;
        self.next_generated += 1;
        format!("{prefix}{n:020}")
    }

    /// DeviceProvisionServiceImpl: check key/secret, then create or claim the pre-provisioned
    /// device.
    pub(crate) fn provision(&mut self, req: &ProvisionRequest) -> ProvisionResponse {
        let not_found = || ProvisionResponse::NotFound {
            error_msg: "Provision data was not found!".to_owned(),
        };
        let failure = || ProvisionResponse::Failure {
            error_msg: "Failed to provision device!".to_owned(),
        };
        let Some(profile) = self
            .provision_profiles
            .iter()
            .find(|p| p.key == req.provision_device_key && p.secret == req.provision_device_secret)
            .cloned()
        else {
            return not_found();
        };
        match profile.strategy {
            ProvisionStrategy::AllowCreateNew => {
                let name = match &req.device_name {
                    Some(n) if !n.is_empty() => n.clone(),
                    _ => self.generated("provisioned-"),
                };
                if self.by_name.contains_key(&name) || self.at_device_limit() {
                    return failure();
                }
                let credentials = match req.credentials_type.unwrap_or(CredentialsType::AccessToken)
                {
                    CredentialsType::AccessToken => Credentials::AccessToken(match &req.token {
                        Some(t) if !t.is_empty() => t.clone(),
                        _ => self.generated("token"),
                    }),
                    CredentialsType::MqttBasic
                        if [&req.client_id, &req.username, &req.password]
                            .iter()
                            .all(|f| f.as_deref().is_none_or(str::is_empty)) =>
                    {
                        // No credential data at all: the device keeps the random access token
                        // it got on creation (DeviceServiceImpl `saveDevice(ProvisionRequest,..)`).
                        Credentials::AccessToken(self.generated("token"))
                    }
                    CredentialsType::MqttBasic => Credentials::Basic {
                        client_id: req.client_id.clone(),
                        username: req.username.clone(),
                        password: req.password.clone(),
                    },
                    // The request's `hash` carries the certificate itself (PEM or base64); it is
                    // stored trimmed and looked up by its SHA3 like any X.509 credential.
                    CredentialsType::X509Certificate => match req.hash.as_deref() {
                        Some(cert) if !cert.is_empty() => Credentials::x509_pem(cert),
                        _ => Credentials::AccessToken(self.generated("token")),
                    },
                };
                if self.credentials_taken(&credentials) {
                    return failure();
                }
                let new = NewDevice {
                    name,
                    device_type: profile.device_type.clone(),
                    credentials: Some(credentials.clone()),
                    gateway: req.gateway.unwrap_or(false),
                    overwrite_activity_time: false,
                };
                let id = self.insert_device(new, None);
                if let Some(d) = self.devices.get_mut(&id) {
                    d.provisioned = true;
                }
                success(&credentials)
            }
            ProvisionStrategy::CheckPreProvisioned => {
                let Some(id) = req.device_name.as_deref().and_then(|n| self.device_id(n)) else {
                    return failure();
                };
                let Some(d) = self.devices.get_mut(&id) else {
                    return failure();
                };
                if d.provisioned || d.device_type != profile.device_type {
                    return failure();
                }
                let Some(credentials) = d.credentials.clone() else {
                    return failure();
                };
                d.provisioned = true;
                success(&credentials)
            }
        }
    }

    // ---- OTA -----------------------------------------------------------------------------------

    /// Assigns a package and sets the `fw_*` / `sw_*` shared attributes like ThingsBoard does.
    pub(crate) fn assign_ota(
        &mut self,
        name: &str,
        firmware: bool,
        package: OtaPackage,
    ) -> Result<(), ControlError> {
        let id = self.lookup(name)?;
        let prefix = if firmware { "fw" } else { "sw" };
        let mut attrs = Map::new();
        attrs.insert(
            format!("{prefix}_title"),
            Value::from(package.title.clone()),
        );
        attrs.insert(
            format!("{prefix}_version"),
            Value::from(package.version.clone()),
        );
        attrs.insert(format!("{prefix}_size"), Value::from(package.data.len()));
        attrs.insert(
            format!("{prefix}_checksum_algorithm"),
            Value::from(package.checksum_algorithm.clone()),
        );
        attrs.insert(
            format!("{prefix}_checksum"),
            Value::from(package.checksum.clone()),
        );
        if let Some(d) = self.devices.get_mut(&id) {
            if firmware {
                d.firmware = Some(package);
            } else {
                d.software = Some(package);
            }
        }
        self.set_shared_attributes(name, attrs)
    }

    pub(crate) fn ota(&self, device: DeviceId, firmware: bool) -> Option<&OtaPackage> {
        let d = self.devices.get(&device)?;
        if firmware {
            d.firmware.as_ref()
        } else {
            d.software.as_ref()
        }
    }

    // ---- time ----------------------------------------------------------------------------------

    /// Expires RPCs whose deadline passed; reports gateway metrics when due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let ts = self.wall_ms(now);
        let type_cast = self.config.type_cast_enabled;
        for (gateway, value) in self.gateway_metrics.take_due(now) {
            let mut kv = Map::new();
            kv.insert(GATEWAY_METRICS_KEY.to_owned(), value);
            self.store_telemetry(gateway, ts, &kv, type_cast);
        }
        let mut done = Vec::new();
        for d in self.devices.values_mut() {
            d.rpcs.retain(|rpc| {
                if rpc.expires > now {
                    return true;
                }
                if let Some(ticket) = rpc.ticket {
                    let outcome = if rpc.sent {
                        RpcOutcome::Timeout
                    } else {
                        RpcOutcome::NoActiveConnection
                    };
                    done.push((ticket, d.name.clone(), outcome));
                }
                false
            });
        }
        done.sort_by_key(|(t, _, _)| *t);
        for (ticket, device, outcome) in done {
            self.push_event(Event::RpcCompleted {
                ticket,
                device,
                outcome,
            });
        }
    }

    /// The earliest RPC expiry or gateway metrics report.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.devices
            .values()
            .flat_map(|d| d.rpcs.iter().map(|r| r.expires))
            .chain(self.gateway_metrics.poll_timeout())
            .min()
    }
}

/// Sets a per-profile setting, or removes it with `None` (the profile's default again).
fn set_or_clear<T>(settings: &mut HashMap<String, T>, profile: &str, value: Option<T>) {
    match value {
        Some(v) => {
            settings.insert(profile.to_owned(), v);
        }
        None => {
            settings.remove(profile);
        }
    }
}

fn success(credentials: &Credentials) -> ProvisionResponse {
    let (credentials_type, credentials) = match credentials {
        Credentials::AccessToken(t) => (
            CredentialsType::AccessToken,
            CredentialsValue::Text(t.clone()),
        ),
        Credentials::Basic {
            client_id,
            username,
            password,
        } => (
            CredentialsType::MqttBasic,
            CredentialsValue::MqttBasic {
                client_id: client_id.clone(),
                user_name: username.clone(),
                password: password.clone(),
            },
        ),
        // JC `toJson(ProvisionDeviceResponseMsg)`: the stored (trimmed) certificate text.
        Credentials::X509 { certificate } => (
            CredentialsType::X509Certificate,
            CredentialsValue::Text(certificate.clone()),
        ),
    };
    ProvisionResponse::Success {
        credentials_type,
        credentials,
    }
}
