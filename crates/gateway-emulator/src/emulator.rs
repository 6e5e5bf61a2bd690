//! The sans-IO emulator: the platform plus every session, with notices routed between them.
//!
//! Every input (bytes, a closed transport, a timeout, a control call) takes the current
//! [`Instant`]; after it, drain [`Emulator::poll_output`] and [`Emulator::poll_event`], and
//! wait until [`Emulator::poll_timeout`]. Nothing here reads a clock or touches a socket, so a
//! test can drive it on a virtual clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::config::EmulatorConfig;
use crate::error::ControlError;
use crate::model::{
    ClaimOutcome, ClientRpcHandler, Credentials, DeviceInfo, Event, NewDevice, OtaPackage,
    PeerIdentity, ProvisionProfile, RpcCall, RpcTicket, SessionId, Stats, TsValue,
    X509ChainProfile,
};
use crate::platform::{Notice, Platform};
use crate::profile_topics::ProfileTopics;
use crate::proto::ProtoSchemas;
use crate::ratelimit::TenantLimits;
use crate::session::{Output, Session, SessionInfo};

/// Upper bound on notice-routing rounds after one input. Routing a notice never produces
/// another one today; the bound only guards against a future loop.
const MAX_ROUTING_ROUNDS: usize = 16;

/// The emulated ThingsBoard: platform model and MQTT sessions, without I/O.
#[derive(Debug)]
pub struct Emulator {
    platform: Platform,
    sessions: BTreeMap<SessionId, Session>,
    next_session: u64,
    /// Outputs in the order they were produced; drained by [`Emulator::poll_output`]. It only
    /// grows by what one input produces, since the caller drains it after every input.
    outputs: VecDeque<(SessionId, Output)>,
}

impl Emulator {
    /// A new emulator. `epoch_ms` is the wall-clock time (ms since the Unix epoch) at `now`;
    /// telemetry without a `ts` is stamped from it.
    pub fn new(config: EmulatorConfig, now: Instant, epoch_ms: i64) -> Self {
        Self {
            platform: Platform::new(config, now, epoch_ms),
            sessions: BTreeMap::new(),
            next_session: 1,
            outputs: VecDeque::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &EmulatorConfig {
        &self.platform.config
    }

    // ---- connection inputs ---------------------------------------------------------------------

    /// A client connected over plain TCP; returns the id to feed its bytes with.
    pub fn open_session(&mut self, now: Instant) -> Result<SessionId, ControlError> {
        self.open_session_with_peer(now, PeerIdentity::plain())
    }

    /// A client connected; `peer` says whether over TLS and with which client certificate.
    /// A session with a client certificate authenticates by it alone (X.509), whatever its
    /// CONNECT carries, unless it asks for provisioning.
    pub fn open_session_with_peer(
        &mut self,
        now: Instant,
        peer: PeerIdentity,
    ) -> Result<SessionId, ControlError> {
        if self.sessions.len() >= self.platform.config.bounds.max_sessions {
            return Err(ControlError::TooManySessions);
        }
        if peer.tls && peer.client_cert.is_some() {
            // ThingsBoard's trust manager hands every presented chain to
            // `validateOrCreateDeviceX509Certificate` during the handshake, which may provision
            // a device through an X.509 chain profile; its outcome is only logged.
            self.platform.observe(now);
            let _ = self.platform.validate_or_create_x509(&peer.chain());
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(id, Session::new(id, now, peer));
        Ok(id)
    }

    /// Bytes received from a client (split anywhere).
    pub fn handle_bytes(&mut self, id: SessionId, now: Instant, bytes: &[u8]) {
        self.platform.observe(now);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.handle_bytes(now, bytes, &mut self.platform);
        }
        self.settle([id]);
    }

    /// The client's transport closed. The session and its children are deregistered.
    pub fn transport_closed(&mut self, id: SessionId, now: Instant) {
        self.platform.observe(now);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.transport_closed(&mut self.platform);
        }
        self.settle([id]);
    }

    /// Time passed: session and child inactivity, client-RPC timeouts, RPC expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.platform.observe(now);
        self.platform.handle_timeout(now);
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in &ids {
            if let Some(s) = self.sessions.get_mut(id) {
                s.handle_timeout(now, &mut self.platform);
            }
        }
        self.settle(ids);
    }

    /// The earliest instant at which [`Emulator::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self
            .sessions
            .values()
            .filter_map(|s| s.poll_timeout(&self.platform));
        sessions.chain(self.platform.poll_timeout()).min()
    }

    /// The next thing to do with a connection, in production order.
    pub fn poll_output(&mut self) -> Option<(SessionId, Output)> {
        self.outputs.pop_front()
    }

    /// The next event (RPC outcomes, rate-limit notifications).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.platform.poll_event()
    }

    /// Routes platform notices to sessions, collects outputs, forgets closed sessions.
    fn settle(&mut self, touched: impl IntoIterator<Item = SessionId>) {
        let mut dirty: BTreeSet<SessionId> = touched.into_iter().collect();
        for _ in 0..MAX_ROUTING_ROUNDS {
            if self.platform.outbox.is_empty() {
                break;
            }
            let notices: Vec<_> = self.platform.outbox.drain(..).collect();
            for (id, notice) in notices {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.on_notice(notice, &mut self.platform);
                    dirty.insert(id);
                }
            }
        }
        self.platform.outbox.clear();
        for id in dirty {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            while let Some(out) = s.take_output() {
                self.outputs.push_back((id, out));
            }
            if s.is_closed() {
                self.sessions.remove(&id);
            }
        }
    }

    // ---- control API: devices ----------------------------------------------------------------

    /// Creates a device (REST `POST /api/device`).
    pub fn create_device(&mut self, device: NewDevice) -> Result<DeviceInfo, ControlError> {
        let id = self.platform.create_device(device)?;
        self.platform
            .info(id)
            .ok_or(ControlError::UnknownDevice(id.to_string()))
    }

    /// Deletes a device: its direct session gets DISCONNECT 0x98, a gateway drops the child
    /// silently and receives a `gateway_device_deleted` RPC.
    pub fn delete_device(&mut self, name: &str, now: Instant) -> Result<(), ControlError> {
        self.platform.observe(now);
        self.platform.delete_device(name, now)?;
        self.settle([]);
        Ok(())
    }

    /// Replaces a device's credentials (REST `POST /api/device/credentials`). As in
    /// ThingsBoard, the device's open session is closed: a direct session gets DISCONNECT
    /// 0x98 (MQTT 5; a plain close on 3.1.1), a gateway's session forgets the child until the
    /// gateway announces it again. Credentials another device uses are refused with
    /// [`ControlError::CredentialsInUse`].
    pub fn update_device_credentials(
        &mut self,
        name: &str,
        credentials: Credentials,
        now: Instant,
    ) -> Result<(), ControlError> {
        self.platform.observe(now);
        self.platform.update_credentials(name, credentials)?;
        self.settle([]);
        Ok(())
    }

    /// Renames a device; its gateway receives a `gateway_device_renamed` RPC.
    pub fn rename_device(
        &mut self,
        old: &str,
        new: &str,
        now: Instant,
    ) -> Result<(), ControlError> {
        self.platform.observe(now);
        self.platform.rename_device(old, new, now)?;
        self.settle([]);
        Ok(())
    }

    /// A snapshot of one device.
    pub fn device(&self, name: &str) -> Option<DeviceInfo> {
        self.platform
            .device_id(name)
            .and_then(|id| self.platform.info(id))
    }

    /// Snapshots of every device, in creation order.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.platform.device_infos()
    }

    /// Tenant device limit (`maxDevices`); `None` = unlimited.
    pub fn set_max_devices(&mut self, max: Option<usize>) {
        self.platform.set_max_devices(max);
    }

    /// Tenant-profile transport rate limits.
    pub fn set_rate_limits(&mut self, limits: TenantLimits) -> Result<(), ControlError> {
        self.platform.set_limits(limits)
    }

    /// Sets `sendAckOnValidationException` for the device profile (device type) `profile`:
    /// on MQTT 3.1.1 a payload that fails validation is then acknowledged with a plain PUBACK
    /// instead of closing the connection. For a gateway's topics its own profile counts.
    /// Profiles never set use [`EmulatorConfig::send_ack_on_validation_exception`].
    pub fn set_profile_send_ack_on_validation_exception(&mut self, profile: &str, on: bool) {
        self.platform.set_profile_ack_on_validation(profile, on);
    }

    /// Gives the device profile (device type) `profile` its own telemetry and attributes
    /// topics, as an MQTT device profile's `deviceTelemetryTopic` and `deviceAttributesTopic`
    /// do in ThingsBoard. Its devices' publishes are then checked against the attributes
    /// filter first, then the telemetry filter, before any other Device API topic (a filter
    /// that matches an RPC topic takes it); `v1/devices/me/telemetry` and
    /// `v1/devices/me/attributes` are unknown topics for them unless a filter matches. The
    /// payload is the profile's format (JSON, or protobuf with [`Self::set_profile_protobuf`]).
    /// The attributes subscription topic stays `v1/devices/me/attributes`, and the v2 topics
    /// are unaffected. Sessions already open follow the change.
    pub fn set_profile_topics(&mut self, profile: &str, topics: ProfileTopics) {
        self.platform.set_profile_topics(profile, Some(topics));
    }

    /// The ThingsBoard default topics again for `profile` (see [`Self::set_profile_topics`]).
    pub fn set_profile_default_topics(&mut self, profile: &str) {
        self.platform.set_profile_topics(profile, None);
    }

    /// Makes the device profile (device type) `profile` PROTOBUF with `schemas`, as
    /// ThingsBoard's `ProtoTransportPayloadConfiguration`: its devices' payloads on the v1 and
    /// plain v2 topics are then protobuf (telemetry and attributes with the profile's schemas,
    /// attribute requests, RPCs and claims with ThingsBoard's fixed messages), and the
    /// `v2/.../p` topics can decode their telemetry, attributes and RPC replies. Sessions
    /// already open follow the change, as ThingsBoard's do on a profile update. A gateway of
    /// this profile speaks the gateway API (`v1/gateway/*`, both ways) in ThingsBoard's
    /// `transportapi.Gateway*Msg` protobuf messages instead of JSON; its children's own
    /// profiles play no part there. The schemas' [`JsonCompatibility`](crate::JsonCompatibility)
    /// (see [`ProtoSchemas::with_json_compatibility`]) lets the device API's default topics
    /// take JSON too.
    pub fn set_profile_protobuf(&mut self, profile: &str, schemas: ProtoSchemas) {
        self.platform.set_profile_protobuf(profile, Some(schemas));
    }

    /// Makes the device profile `profile` JSON again (the default payload type).
    pub fn set_profile_json(&mut self, profile: &str) {
        self.platform.set_profile_protobuf(profile, None);
    }

    /// Fault injection: the credential check fails with a backend error (CONNACK 3 / 0x88).
    pub fn set_auth_unavailable(&mut self, on: bool) {
        self.platform.set_auth_unavailable(on);
    }

    // ---- control API: data -------------------------------------------------------------------

    /// Stored telemetry of a device: every key with its points, oldest first.
    pub fn telemetry(&self, name: &str) -> Result<BTreeMap<String, Vec<TsValue>>, ControlError> {
        let id = self.id(name)?;
        Ok(self.platform.telemetry(id))
    }

    /// The latest value of every telemetry key.
    pub fn latest_telemetry(&self, name: &str) -> Result<BTreeMap<String, TsValue>, ControlError> {
        Ok(self
            .telemetry(name)?
            .into_iter()
            .filter_map(|(k, mut v)| v.pop().map(|p| (k, p)))
            .collect())
    }

    /// Client-side attributes of a device.
    pub fn client_attributes(&self, name: &str) -> Result<Map<String, Value>, ControlError> {
        Ok(self.platform.client_attributes(self.id(name)?))
    }

    /// Shared attributes of a device.
    pub fn shared_attributes(&self, name: &str) -> Result<Map<String, Value>, ControlError> {
        Ok(self.platform.shared_attributes(self.id(name)?))
    }

    /// Sets shared attributes; a connected session that listens gets the update.
    pub fn set_shared_attributes(
        &mut self,
        name: &str,
        values: Map<String, Value>,
    ) -> Result<(), ControlError> {
        self.platform.set_shared_attributes(name, values)?;
        self.settle([]);
        Ok(())
    }

    /// Deletes shared attributes; a listening session gets `{"deleted":[..]}`.
    pub fn delete_shared_attributes(
        &mut self,
        name: &str,
        keys: &[String],
    ) -> Result<(), ControlError> {
        self.platform.delete_shared_attributes(name, keys)?;
        self.settle([]);
        Ok(())
    }

    fn id(&self, name: &str) -> Result<crate::model::DeviceId, ControlError> {
        self.platform
            .device_id(name)
            .ok_or_else(|| ControlError::UnknownDevice(name.to_owned()))
    }

    // ---- control API: RPC, claims, provisioning, OTA ---------------------------------------

    /// Sends a server-side RPC; its outcome arrives as [`Event::RpcCompleted`] with the ticket.
    pub fn send_rpc(
        &mut self,
        name: &str,
        call: RpcCall,
        now: Instant,
    ) -> Result<RpcTicket, ControlError> {
        self.platform.observe(now);
        let ticket = self.platform.send_rpc(name, call, now)?;
        self.settle([]);
        Ok(ticket)
    }

    /// Installs the stand-in for the rule engine's client-side RPC handling; `None` restores
    /// the default (no answer: `{"error":"timeout"}` after the client-RPC timeout).
    pub fn set_client_rpc_handler(&mut self, handler: Option<ClientRpcHandler>) {
        self.platform.set_client_rpc_handler(handler);
    }

    /// A customer claims a device with `secret`.
    pub fn claim_device(
        &mut self,
        name: &str,
        secret: &str,
        now: Instant,
    ) -> Result<ClaimOutcome, ControlError> {
        self.platform.observe(now);
        self.platform.claim_device(name, secret, now)
    }

    /// Adds (or replaces, by key) a provisioning profile.
    pub fn add_provision_profile(&mut self, profile: ProvisionProfile) {
        self.platform.add_provision_profile(profile);
    }

    /// Adds an `X509_CERTIFICATE_CHAIN` device profile (or replaces the one of the same device
    /// type). From then on a TLS client presenting a chain that contains the profile's
    /// certificate gets its device found, re-keyed or created when the session opens, before
    /// its CONNECT; see [`X509ChainProfile`] for the rules. Fails when the PEM holds no
    /// certificate, the regex does not compile, or another profile has the same certificate.
    pub fn add_x509_chain_profile(
        &mut self,
        profile: X509ChainProfile,
    ) -> Result<(), ControlError> {
        self.platform.add_x509_chain_profile(profile)
    }

    /// Assigns a firmware (`firmware` = true) or software package and sets its shared attributes.
    pub fn assign_ota(
        &mut self,
        name: &str,
        firmware: bool,
        package: OtaPackage,
    ) -> Result<(), ControlError> {
        self.platform.assign_ota(name, firmware, package)?;
        self.settle([]);
        Ok(())
    }

    // ---- control API: sessions -----------------------------------------------------------------

    /// Every open session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .values()
            .map(|s| s.info(&self.platform))
            .collect()
    }

    /// Names of the children connected through the gateway's current session, sorted.
    pub fn connected_children(&self, gateway: &str) -> Result<Vec<String>, ControlError> {
        let id = self.id(gateway)?;
        Ok(self
            .sessions
            .values()
            .find(|s| s.device() == Some(id))
            .map(|s| s.info(&self.platform).children)
            .unwrap_or_default())
    }

    /// Closes a connection without a DISCONNECT packet.
    pub fn drop_session(&mut self, id: SessionId) -> Result<(), ControlError> {
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(ControlError::UnknownSession(id.0))?;
        s.on_notice(Notice::Drop, &mut self.platform);
        self.settle([id]);
        Ok(())
    }

    /// A server restart that keeps the platform: every connection is closed without a
    /// DISCONNECT (as when the process dies) and all per-connection state goes with it (child
    /// sessions, pending client-side RPCs, subscriptions), while devices, credentials,
    /// attributes, telemetry, claims, limits and pending server-side RPCs stay, as ThingsBoard
    /// keeps them in its database. Returns the sessions closed; drain
    /// [`Emulator::poll_output`] for their `Close`s.
    pub fn restart(&mut self, _now: Instant) -> Vec<SessionId> {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in &ids {
            if let Some(s) = self.sessions.get_mut(id) {
                s.on_notice(Notice::Drop, &mut self.platform);
            }
        }
        self.settle(ids.clone());
        ids
    }

    /// What the emulator dropped or ignored.
    pub fn stats(&self) -> Stats {
        self.platform.stats
    }
}
