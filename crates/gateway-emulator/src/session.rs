//! One client connection, sans-IO: bytes and time in, bytes and "close" out, platform calls in
//! between. Follows the MQTT transport of ThingsBoard (`MqttTransportHandler` and the gateway
//! session handler) as described in `shared/spec/server-behaviour.md`; section numbers below
//! refer to that document.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use gateway_proto::payload::device::SessionLimits;
use gateway_proto::payload::protobuf::{ProtoRpcRequest, ProtoRpcResponse};
use gateway_proto::payload::{
    self as pl, ClientAttributes, ClientRpcResponse, DeviceAttributeRequest,
    DeviceAttributeResponse, DeviceTelemetry, DisconnectNotice, GatewayAttributeRequest,
    GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes, GatewayClaim,
    GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, Payload, PayloadError,
    ProvisionRequest, RequestedKeys,
};
use gateway_proto::topic::{self, IdTopicKind, OtaKind, TopicFamily, UplinkTopic};
use gateway_proto::wire::{
    self, ConnAck, Connect, DecodeError, Packet, Publish, PublishRef, QoS, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use gateway_proto::ProtocolVersion;
use serde_json::{json, Map, Value};

use crate::convert::strings_within;
use crate::model::{ClientRpcAnswer, ClientRpcCall, DeviceId, PeerIdentity, SessionId};
use crate::platform::{Auth, CreateError, Notice, Platform, RateCheck, Refusal, Sender};
use crate::profile_topics::ProfileTopics;
use crate::proto::{self, JsonCompatibility};

/// MQTT's own limit on the remaining length; outgoing packets have no other limit (§5).
const MAX_OUTGOING: usize = 268_435_455;
/// Bound of the remembered OTA chunk sizes per connection; the map is cleared on overflow.
const MAX_OTA_REQUESTS: usize = 1_024;

/// MQTT 5 reason codes the transport uses (§6).
mod rc {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
}

/// What a session wants done with its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes, in order.
    Transmit(Bytes),
    /// Close the connection after writing everything before this.
    Close,
}

/// Read-only view of a session for the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// Protocol version, once CONNECT arrived.
    pub version: Option<ProtocolVersion>,
    /// Authenticated device name (`None` before CONNECT and for provisioning sessions).
    pub device: Option<String>,
    /// The device is a gateway.
    pub gateway: bool,
    /// A provision-only session.
    pub provision: bool,
    /// Names of the children connected through this gateway session, sorted.
    pub children: Vec<String>,
    /// Received bytes not yet decoded (at most one packet of the size limit plus one input).
    pub buffered_bytes: usize,
    /// The connection is TLS.
    pub tls: bool,
    /// The TLS client presented a certificate.
    pub client_certificate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitConnect,
    Device { device: DeviceId, gateway: bool },
    Provision,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Child {
    device: DeviceId,
    last_activity: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingClientRpc {
    id: u64,
    family: TopicFamily,
    deadline: Instant,
}

/// Why a gateway could not get a child session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildError {
    /// Rate limit on the get-or-create call: the server throws synchronously (§2.1).
    RateLimited,
    /// Tenant device limit.
    DeviceLimit,
}

/// What went wrong with one PUBLISH, by ThingsBoard's error class (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// AdaptorException: invalid JSON (device API: also a wrong shape).
    Adaptor,
    /// Valid JSON of the wrong shape on a gateway topic.
    Shape,
    /// Per-device conversion failure on a gateway topic.
    Entry,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Session {
    id: SessionId,
    peer: PeerIdentity,
    version: ProtocolVersion,
    state: State,
    buf: BytesMut,
    subs: Vec<(String, QoS)>,
    attr_family: TopicFamily,
    rpc_family: TopicFamily,
    children: HashMap<String, Child>,
    next_pkid: u32,
    last_activity: Instant,
    client_rpcs: VecDeque<PendingClientRpc>,
    ota_sizes: HashMap<u64, u64>,
    provision_close_at: Option<Instant>,
    /// The session's provision payload type is PROTOBUF: set by the first request read as
    /// protobuf, never reset (MTH `setProvisionPayloadType`).
    provision_protobuf: bool,
    out: VecDeque<Output>,
}

impl Session {
    pub(crate) fn new(id: SessionId, now: Instant, peer: PeerIdentity) -> Self {
        Self {
            id,
            peer,
            version: ProtocolVersion::V311,
            state: State::AwaitConnect,
            buf: BytesMut::new(),
            subs: Vec::new(),
            attr_family: TopicFamily::V1,
            rpc_family: TopicFamily::V1,
            children: HashMap::new(),
            next_pkid: 0,
            last_activity: now,
            client_rpcs: VecDeque::new(),
            ota_sizes: HashMap::new(),
            provision_close_at: None,
            provision_protobuf: false,
            out: VecDeque::new(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub(crate) fn take_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub(crate) fn info(&self, platform: &Platform) -> SessionInfo {
        let (device, gateway) = match self.state {
            State::Device { device, gateway } => {
                (platform.name_of(device).map(str::to_owned), gateway)
            }
            _ => (None, false),
        };
        let mut children: Vec<String> = self.children.keys().cloned().collect();
        children.sort();
        SessionInfo {
            id: self.id,
            version: (self.state != State::AwaitConnect).then_some(self.version),
            device,
            gateway,
            provision: self.state == State::Provision,
            children,
            buffered_bytes: self.buf.len(),
            tls: self.peer.tls,
            client_certificate: self.peer.client_cert.is_some(),
        }
    }

    pub(crate) fn device(&self) -> Option<DeviceId> {
        match self.state {
            State::Device { device, .. } => Some(device),
            _ => None,
        }
    }

    // ---- inputs ------------------------------------------------------------------------------

    /// Bytes from the client, split anywhere.
    pub(crate) fn handle_bytes(&mut self, now: Instant, bytes: &[u8], p: &mut Platform) {
        if self.is_closed() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        let max = p.config.max_packet_size;
        while !self.is_closed() {
            if self.state == State::AwaitConnect {
                match wire::decode_first_connect(&mut self.buf, max) {
                    Ok(None) => break,
                    Ok(Some((version, connect))) => {
                        self.version = version;
                        self.on_connect(now, &connect, p);
                    }
                    // No session yet: no CONNACK, no DISCONNECT.
                    Err(_) => self.close(p),
                }
                continue;
            }
            if crate::qos2::adapt_front_frame(&mut self.buf, self.version, max)
                == crate::qos2::Adapted::Dropped
            {
                continue;
            }
            match wire::decode(&mut self.buf, self.version, max) {
                Ok(None) => break,
                Ok(Some(packet)) => self.on_packet(now, packet, p),
                // §5: oversize or undecodable → DISCONNECT 0x81 (v5) / close.
                Err(DecodeError::TooLarge { .. } | DecodeError::Malformed(_)) | Err(_) => {
                    self.disconnect(rc::MALFORMED, p)
                }
            }
        }
    }

    /// The client closed the connection (or the transport failed).
    pub(crate) fn transport_closed(&mut self, p: &mut Platform) {
        if !self.is_closed() {
            self.cleanup(p);
            self.state = State::Closed;
        }
    }

    /// A platform notice for this session.
    pub(crate) fn on_notice(&mut self, notice: Notice, p: &mut Platform) {
        if self.is_closed() {
            return;
        }
        let own = self.device();
        match notice {
            Notice::Drop => self.close(p),
            Notice::TakenOver { device }
            | Notice::Deleted { device }
            | Notice::CredentialsUpdated { device }
            | Notice::Renamed { device }
                if Some(device) != own =>
            {
                self.children.retain(|_, c| c.device != device);
            }
            Notice::TakenOver { .. } => self.disconnect(rc::SESSION_TAKEN_OVER, p),
            Notice::Deleted { .. } | Notice::CredentialsUpdated { .. } => {
                self.disconnect(rc::ADMINISTRATIVE_ACTION, p)
            }
            Notice::Renamed { .. } => {}
            Notice::Attributes { device, update } => {
                if Some(device) == own {
                    let topic = self.attr_family.attributes_topic();
                    let body = if downlink_uses_proto(self.attr_family, p, device) {
                        // AttributeUpdateNotificationMsg with each key's lastUpdateTs.
                        let ts = |k: &str| p.attribute_ts(device, true, k);
                        let updated = proto::transport::timed(&update.values, &ts);
                        proto::transport::attribute_update(&updated, &update.deleted)
                    } else {
                        update.to_vec()
                    };
                    self.publish(topic, &body, p);
                } else if let Some(name) = self.child_name(device) {
                    let msg = GatewayAttributeUpdate {
                        device: name,
                        update,
                    };
                    // The gateway's own profile picks the form (`getPayloadAdaptor`).
                    let body = match own {
                        Some(gw) if p.proto_schemas(gw).is_some() => msg.to_protobuf(),
                        _ => msg.to_vec(),
                    };
                    self.publish(topic::GATEWAY_ATTRIBUTES, &body, p);
                }
            }
            Notice::Rpc {
                device,
                id,
                method,
                params,
            } => {
                if Some(device) == own {
                    let topic =
                        topic::topic_with_id(IdTopicKind::RpcRequest, self.rpc_family, id.into());
                    if !downlink_uses_proto(self.rpc_family, p, device) {
                        let body = pl::RpcRequest::new(method, params);
                        return self.publish(&topic, &body.to_vec(), p);
                    }
                    let schemas = p.proto_schemas(device);
                    match proto::adaptor::rpc_request(schemas, &method, id, &params) {
                        Ok(bytes) => self.publish(&topic, &bytes, p),
                        // MTH `onToDeviceRpcRequest`: an RPC the adaptor cannot encode (no
                        // schema, or params that do not fit it) is answered with an error.
                        Err(_) => {
                            let error = json!({
                                "result": "INVALID_ARGUMENTS",
                                "error": format!(
                                    "Failed to convert device RPC command to MQTT msg: {method}{params}"
                                ),
                            });
                            p.rpc_reply(device, id.into(), error);
                        }
                    }
                } else if let Some(name) = self.child_name(device) {
                    let msg = GatewayRpcRequest {
                        device: name,
                        id: id.into(),
                        method,
                        params,
                    };
                    let body = match own {
                        Some(gw) if p.proto_schemas(gw).is_some() => msg.to_protobuf(),
                        _ => msg.to_vec(),
                    };
                    self.publish(topic::GATEWAY_RPC, &body, p);
                }
            }
        }
    }

    fn child_name(&self, device: DeviceId) -> Option<String> {
        self.children
            .iter()
            .find(|(_, c)| c.device == device)
            .map(|(n, _)| n.clone())
    }

    /// Time passed: inactivity, client-RPC timeouts, the provisioning close.
    pub(crate) fn handle_timeout(&mut self, now: Instant, p: &mut Platform) {
        if self.is_closed() {
            return;
        }
        let idle = p.config.inactivity_timeout;
        if now >= self.last_activity + idle {
            // §8: TAM onStateExpiry → DISCONNECT 0x83.
            self.disconnect(rc::IMPLEMENTATION_SPECIFIC, p);
            return;
        }
        if self.provision_close_at.is_some_and(|t| now >= t) {
            self.close(p);
            return;
        }
        let mut expired = Vec::new();
        self.children.retain(|_, c| {
            let keep = now < c.last_activity + idle;
            if !keep {
                expired.push(c.device);
            }
            keep
        });
        for device in expired {
            p.unbind(device, self.id);
        }
        while let Some(rpc) = self.client_rpcs.front().copied() {
            if rpc.deadline > now {
                break;
            }
            self.client_rpcs.pop_front();
            let timeout = Err(ClientRpcResponse::TIMEOUT.to_owned());
            self.client_rpc_reply(rpc.family, rpc.id, timeout, p);
        }
    }

    /// The earliest instant at which [`Session::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self, p: &Platform) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let idle = p.config.inactivity_timeout;
        let children = self.children.values().map(|c| c.last_activity + idle);
        let rpcs = self.client_rpcs.front().map(|r| r.deadline);
        std::iter::once(self.last_activity + idle)
            .chain(children)
            .chain(rpcs)
            .chain(self.provision_close_at)
            .min()
    }

    // ---- output helpers -------------------------------------------------------------------------

    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        // Packets built here are valid by construction; an encode error would only mean an
        // oversize topic, which is skipped rather than panicking.
        if wire::encode(packet, self.version, &mut out, MAX_OUTGOING).is_ok() {
            self.out.push_back(Output::Transmit(out.freeze()));
        }
    }

    /// v5 codes only exist on MQTT 5; v3 packets carry 0.
    fn v5(&self, code: u8) -> u8 {
        if self.version == ProtocolVersion::V5 {
            code
        } else {
            0
        }
    }

    /// PUBACK as Netty's `MqttEncoder.encodePubReplyMessage` writes it: the two-byte short
    /// form (`40 02 id`) on MQTT 3.1.1 and for a v5 success; `40 04 id rc 00` for a v5 failure
    /// (reason code plus an empty property block).
    fn puback(&mut self, pkid: u16, code: u8) {
        // MTH `ack`: only for msgId > 0, i.e. never for QoS 0.
        if pkid > 0 {
            let code = self.v5(code);
            let [hi, lo] = pkid.to_be_bytes();
            let bytes = if code == rc::SUCCESS {
                Bytes::copy_from_slice(&[0x40, 0x02, hi, lo])
            } else {
                Bytes::copy_from_slice(&[0x40, 0x04, hi, lo, code, 0x00])
            };
            self.out.push_back(Output::Transmit(bytes));
        }
    }

    /// A v5 DISCONNECT as Netty's `encodeReasonCodePlusPropertiesMessage` writes it: `E0 00`
    /// for NORMAL_DISCONNECT, `E0 02 rc 00` otherwise.
    fn send_disconnect(&mut self, code: u8) {
        let bytes = if code == rc::SUCCESS {
            Bytes::from_static(&[0xE0, 0x00])
        } else {
            Bytes::copy_from_slice(&[0xE0, 0x02, code, 0x00])
        };
        self.out.push_back(Output::Transmit(bytes));
    }

    /// Close: on MQTT 5 a DISCONNECT with `code` first.
    fn disconnect(&mut self, code: u8, p: &mut Platform) {
        if self.version == ProtocolVersion::V5 && self.state != State::AwaitConnect {
            self.send_disconnect(code);
        }
        self.close(p);
    }

    fn close(&mut self, p: &mut Platform) {
        if self.is_closed() {
            return;
        }
        self.cleanup(p);
        self.state = State::Closed;
        self.out.push_back(Output::Close);
    }

    /// Deregisters the device and every child (§8 "Gateway disconnect"). Each closed
    /// session is a session event that takes a regular-message token (MTH `doDisconnect`,
    /// then AGSH `deregisterSession` per child, in name order here), refused silently.
    fn cleanup(&mut self, p: &mut Platform) {
        if let State::Device { device, gateway } = self.state {
            p.unbind(device, self.id);
            p.charge_own_silently(device, gateway);
            let mut children: Vec<(String, Child)> = self.children.drain().collect();
            children.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, child) in children {
                p.unbind(child.device, self.id);
                p.charge_silently(Sender::Child { gateway: device }, &name);
            }
        }
        self.children.clear();
        self.client_rpcs.clear();
    }

    fn next_packet_id(&mut self, p: &Platform) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1);
        if p.config.quirks.packet_id_zero {
            // §5: `incrementAndGet` written as a short: id 0 every 65,536 publishes.
            (self.next_pkid & 0xFFFF) as u16
        } else {
            if self.next_pkid > 65_535 {
                self.next_pkid = 1;
            }
            self.next_pkid as u16
        }
    }

    /// QoS of the first stored filter matching `topic`, else QoS 1 (§1.3).
    fn qos_for(&self, topic: &str) -> QoS {
        self.subs
            .iter()
            .find(|(f, _)| filter_matches(f, topic))
            .map_or(QoS::AtLeastOnce, |(_, q)| *q)
    }

    fn publish(&mut self, topic: &str, payload: &[u8], p: &Platform) {
        let qos = self.qos_for(topic);
        let pkid = match qos {
            QoS::AtLeastOnce => self.next_packet_id(p),
            QoS::AtMostOnce => 0,
        };
        let publish = PublishRef {
            topic,
            payload,
            qos,
            dup: false,
            retain: false,
            pkid,
        };
        let mut out = BytesMut::new();
        let written = if p.config.quirks.packet_id_zero {
            wire::encode_publish_allowing_pkid_zero(&publish, self.version, &mut out, MAX_OUTGOING)
        } else {
            wire::encode_publish(&publish, self.version, &mut out, MAX_OUTGOING)
        };
        if written.is_ok() {
            self.out.push_back(Output::Transmit(out.freeze()));
        }
    }

    // ---- CONNECT ------------------------------------------------------------------------------

    fn on_connect(&mut self, now: Instant, connect: &Connect, p: &mut Platform) {
        self.last_activity = now;
        // §6.1 quirk: Session Present echoes !cleanSession, even on refusal.
        let session_present = !connect.clean_session;
        match p.authenticate(connect, self.peer.client_cert.as_deref(), now) {
            Auth::Provision => {
                self.state = State::Provision;
                self.send(&Packet::ConnAck(ConnAck {
                    session_present,
                    code: 0,
                }));
            }
            Auth::Device(device) => {
                let gateway = p.device(device).is_some_and(|d| d.gateway);
                // MTH `onValidateDeviceResponse`: the session-open event goes through
                // `checkLimits` (a regular message of the device's own bucket, after the
                // tenant's); refused, the CONNACK says CONNECTION_RATE_EXCEEDED (3 on
                // MQTT 3.1.1) and a v5 session also gets DISCONNECT 0x96 before the close.
                let name = p.name_of(device).unwrap_or_default().to_owned();
                let sender = Platform::own_sender(device, gateway);
                if p.check_rate(sender, &name, 0, now) != RateCheck::Ok {
                    let v5_session = self.version == ProtocolVersion::V5;
                    self.send(&Packet::ConnAck(ConnAck {
                        session_present,
                        code: if v5_session {
                            rc::CONNECTION_RATE_EXCEEDED
                        } else {
                            3
                        },
                    }));
                    if v5_session {
                        self.send_disconnect(rc::MESSAGE_RATE_TOO_HIGH);
                    }
                    self.close(p);
                    return;
                }
                self.state = State::Device { device, gateway };
                self.send(&Packet::ConnAck(ConnAck {
                    session_present,
                    code: 0,
                }));
                p.bind(device, self.id, None, now);
            }
            Auth::Refused(refusal) => {
                // (v5 CONNACK, v3 CONNACK, v5 DISCONNECT). MTH `closeCtx`: a refused lookup
                // repeats the CONNACK code; a failed credential check sends SERVER_BUSY on the
                // token path (`processAuthTokenConnect`) and IMPLEMENTATION_SPECIFIC_ERROR on
                // the X.509 path (`processX509CertConnect`).
                let (v5, v3, disconnect) = match refusal {
                    Refusal::BadUsernameOrPassword => (
                        rc::BAD_USERNAME_OR_PASSWORD,
                        5,
                        rc::BAD_USERNAME_OR_PASSWORD,
                    ),
                    Refusal::ClientIdNotValid => {
                        (rc::CLIENT_ID_NOT_VALID, 2, rc::CLIENT_ID_NOT_VALID)
                    }
                    Refusal::NotAuthorized => (rc::NOT_AUTHORIZED, 5, rc::NOT_AUTHORIZED),
                    Refusal::ServerUnavailable => (rc::SERVER_UNAVAILABLE, 3, rc::SERVER_BUSY),
                    Refusal::X509ServerUnavailable => {
                        (rc::SERVER_UNAVAILABLE, 3, rc::IMPLEMENTATION_SPECIFIC)
                    }
                };
                let v5_session = self.version == ProtocolVersion::V5;
                let code = if v5_session { v5 } else { v3 };
                self.send(&Packet::ConnAck(ConnAck {
                    session_present,
                    code,
                }));
                // §6.1: a v5 refusal is followed by a DISCONNECT.
                if v5_session {
                    self.send_disconnect(disconnect);
                }
                self.close(p);
            }
        }
    }

    // ---- packets ------------------------------------------------------------------------------

    fn on_packet(&mut self, now: Instant, packet: Packet, p: &mut Platform) {
        self.last_activity = now;
        match packet {
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                // §8: with overwriteActivityTime a gateway ping refreshes every child.
                if let State::Device { device, .. } = self.state {
                    if p.device(device).is_some_and(|d| d.overwrite_activity_time) {
                        for c in self.children.values_mut() {
                            c.last_activity = now;
                        }
                    }
                }
            }
            Packet::Publish(publish) => self.on_publish(now, publish, p),
            Packet::Subscribe(s) => self.on_subscribe(now, s, p),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, p),
            Packet::Disconnect(_) => self.disconnect(rc::SUCCESS, p),
            // A second CONNECT is a protocol violation.
            Packet::Connect(_) => self.close(p),
            // Client PUBACKs only mark direct-device RPCs delivered in ThingsBoard; the emulator
            // marks them delivered when written. Server-to-client packet types are ignored.
            _ => {}
        }
    }

    fn on_subscribe(&mut self, now: Instant, s: Subscribe, p: &mut Platform) {
        // §1.2: v5 TOPIC_FILTER_INVALID, v3 the generic failure 0x80.
        let failure = if self.version == ProtocolVersion::V5 {
            rc::TOPIC_FILTER_INVALID
        } else {
            rc::UNSPECIFIED
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut rpc_subscribed = false;
        for (filter, qos) in s.filters {
            let accepted = match self.state {
                State::Provision => filter == topic::PROVISION_RESPONSE,
                // MTH `processSubscribe`: each attribute or RPC subscription is a
                // `Subscribe*Msg` through `checkLimits` without a callback (granted even
                // when refused).
                State::Device { device, gateway } => match subscription_kind(&filter) {
                    Some(SubKind::Attributes(family)) => {
                        self.attr_family = family;
                        p.subscribe_attributes(device, self.id, true);
                        p.charge_own_silently(device, gateway);
                        true
                    }
                    Some(SubKind::Rpc(family)) => {
                        self.rpc_family = family;
                        rpc_subscribed = true;
                        p.charge_own_silently(device, gateway);
                        true
                    }
                    Some(SubKind::QosOnly) => true,
                    None => false,
                },
                _ => false,
            };
            if accepted {
                self.subs.retain(|(f, _)| *f != filter);
                self.subs.push((filter, qos));
                codes.push(match qos {
                    QoS::AtMostOnce => 0,
                    QoS::AtLeastOnce => 1,
                });
            } else {
                codes.push(failure);
            }
        }
        self.send(&Packet::SubAck(SubAck {
            pkid: s.pkid,
            codes,
        }));
        // Pending RPCs are pushed on subscription (§4); they go out after the SUBACK.
        if let (true, Some(device)) = (rpc_subscribed, self.device()) {
            p.subscribe_rpc(device, self.id, true, now);
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, p: &mut Platform) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in u.filters {
            let before = self.subs.len();
            self.subs.retain(|(f, _)| *f != filter);
            if self.subs.len() < before {
                codes.push(rc::SUCCESS);
                if let Some(device) = self.device() {
                    match subscription_kind(&filter) {
                        Some(SubKind::Attributes(_)) => {
                            p.subscribe_attributes(device, self.id, false)
                        }
                        Some(SubKind::Rpc(_)) => {
                            p.subscribe_rpc(device, self.id, false, self.last_activity)
                        }
                        _ => {}
                    }
                }
            } else {
                codes.push(rc::NO_SUBSCRIPTION_EXISTED);
            }
        }
        // §1.2: only v5 UNSUBACK carries codes.
        if self.version != ProtocolVersion::V5 {
            codes.clear();
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            codes,
        }));
    }

    // ---- PUBLISH ------------------------------------------------------------------------------

    fn on_publish(&mut self, now: Instant, publish: Publish, p: &mut Platform) {
        let Publish {
            topic: name,
            payload,
            qos,
            pkid,
            ..
        } = publish;
        // §1.2: Netty rejects wildcards in a PUBLISH topic and QoS > 0 with packet id 0.
        if name.contains(['+', '#']) || (qos == QoS::AtLeastOnce && pkid == 0) {
            self.disconnect(rc::MALFORMED, p);
            return;
        }
        match self.state {
            State::Provision => self.on_provision_publish(now, &name, qos, pkid, &payload, p),
            State::Device { device, gateway } => {
                if name.starts_with("v1/gateway") {
                    // §2: a non-gateway's gateway publish is dropped silently, no PUBACK.
                    if gateway {
                        self.on_gateway_publish(now, device, &name, qos, pkid, &payload, p);
                    }
                } else {
                    self.on_device_publish(now, device, gateway, &name, qos, pkid, &payload, p);
                }
            }
            _ => {}
        }
    }

    /// Reacts to a payload error by ThingsBoard's error class (§2.1, §6.2).
    fn fail(&mut self, failure: Failure, qos: QoS, pkid: u16, p: &mut Platform) {
        let v5 = self.version == ProtocolVersion::V5;
        match failure {
            Failure::Adaptor => {
                if v5 {
                    if qos == QoS::AtMostOnce {
                        self.disconnect(rc::PAYLOAD_FORMAT_INVALID, p);
                    } else {
                        self.puback(pkid, rc::PAYLOAD_FORMAT_INVALID);
                    }
                } else if p.ack_on_validation(self.device()) && pkid > 0 {
                    self.puback(pkid, 0);
                } else {
                    self.close(p);
                }
            }
            Failure::Shape => {
                self.puback(pkid, rc::IMPLEMENTATION_SPECIFIC);
                self.disconnect(rc::IMPLEMENTATION_SPECIFIC, p);
            }
            Failure::Entry => {
                if v5 {
                    self.puback(pkid, rc::PAYLOAD_FORMAT_INVALID);
                } else {
                    self.close(p);
                }
            }
        }
    }

    /// A get-or-create that the rate limit refused: the exception escapes (§2.1) → 0x8B.
    fn fail_child_creation(&mut self, p: &mut Platform) {
        self.disconnect(rc::SERVER_SHUTTING_DOWN, p);
    }

    /// A rate-limited child message: PUBACK 0x97 (v3: plain), then TCP close (§2.1, §7).
    fn fail_child_rate(&mut self, pkid: u16, p: &mut Platform) {
        self.puback(pkid, rc::QUOTA_EXCEEDED);
        self.close(p);
    }

    /// A rate-limited device-API message: no PUBACK, DISCONNECT 0x83 (§6.2, §7).
    fn fail_device_rate(&mut self, p: &mut Platform) {
        self.disconnect(rc::IMPLEMENTATION_SPECIFIC, p);
    }

    /// Get (cached) or create a child session by name (AGSH `getDeviceCreationFuture`).
    fn child(
        &mut self,
        now: Instant,
        gateway: DeviceId,
        name: &str,
        device_type: Option<&str>,
        p: &mut Platform,
    ) -> Result<DeviceId, ChildError> {
        if let Some(c) = self.children.get_mut(name) {
            if p.is_bound(c.device, self.id) {
                c.last_activity = now;
                return Ok(c.device);
            }
        }
        if p.check_rate(Sender::Child { gateway }, name, 0, now) != RateCheck::Ok {
            return Err(ChildError::RateLimited);
        }
        let device = p
            .get_or_create_child(gateway, name, device_type)
            .map_err(|CreateError::DeviceLimit| ChildError::DeviceLimit)?;
        self.children.insert(
            name.to_owned(),
            Child {
                device,
                last_activity: now,
            },
        );
        p.bind(device, self.id, Some(gateway), now);
        // AGSH `getDeviceCreationFuture`: the new child's session-open event, sent without a
        // callback (a refusal is not reported to the gateway; the child stays usable here).
        p.charge_silently(Sender::Child { gateway }, name);
        Ok(device)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_gateway_publish(
        &mut self,
        now: Instant,
        gateway: DeviceId,
        name: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        p: &mut Platform,
    ) {
        let Some(kind) = topic::classify_uplink(name).filter(UplinkTopic::is_gateway) else {
            self.puback(pkid, rc::TOPIC_NAME_INVALID);
            return;
        };
        // AGSH `isJsonPayloadType()`: the gateway's own profile picks JSON or protobuf for
        // every gateway topic. The `on*Proto` handlers wrap every exception (malformed bytes,
        // an empty device name, an empty message list) in an AdaptorException (§2.1 row 1).
        let proto = p.proto_schemas(gateway).is_some();
        let error = |e: &PayloadError| {
            if proto {
                Failure::Adaptor
            } else {
                classify_gateway_error(e)
            }
        };
        // Syntax first: an AdaptorException (§2.1 row 1) whatever the topic.
        if !proto
            && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err()
            && !payload.iter().all(u8::is_ascii_whitespace)
        {
            self.fail(Failure::Adaptor, qos, pkid, p);
            return;
        }
        let connect = if proto {
            pl::Connect::parse_protobuf
        } else {
            pl::Connect::parse
        };
        let disconnect = if proto {
            pl::Disconnect::parse_protobuf
        } else {
            pl::Disconnect::parse
        };
        let attribute_request = if proto {
            GatewayAttributeRequest::parse_protobuf
        } else {
            GatewayAttributeRequest::parse
        };
        let rpc_response = if proto {
            GatewayRpcResponse::parse_protobuf
        } else {
            GatewayRpcResponse::parse
        };
        match kind {
            UplinkTopic::GatewayConnect => match connect(payload) {
                Err(e) => self.fail(error(&e), qos, pkid, p),
                Ok(c) => match self.child(now, gateway, &c.device, c.device_type.as_deref(), p) {
                    Ok(_) => self.puback(pkid, rc::SUCCESS),
                    Err(ChildError::RateLimited) => self.fail_child_creation(p),
                    Err(ChildError::DeviceLimit) => {
                        if !p.config.quirks.no_puback_on_connect_failure {
                            self.puback(pkid, rc::QUOTA_EXCEEDED);
                        }
                    }
                },
            },
            UplinkTopic::GatewayDisconnect => match disconnect(payload) {
                Err(e) => self.fail(error(&e), qos, pkid, p),
                Ok(d) => {
                    if let Some(c) = self.children.remove(&d.device) {
                        p.unbind(c.device, self.id);
                        // AGSH `deregisterSession`: the child's session-close event.
                        p.charge_silently(Sender::Child { gateway }, &d.device);
                    }
                    self.puback(pkid, rc::SUCCESS);
                }
            },
            UplinkTopic::GatewayTelemetry => {
                let parsed = if proto {
                    parse_per_device_proto(payload, GatewayTelemetry::parse_protobuf, |t| t.devices)
                } else {
                    parse_per_device(payload, GatewayTelemetry::parse, |t| t.devices)
                };
                match parsed {
                    Err(e) => self.fail(error(&e), qos, pkid, p),
                    Ok(devices) => {
                        let max = p.config.max_string_value_length;
                        let items = devices.into_iter().map(|(device, entries)| {
                            // The JSON adaptor's string limit fails that device's conversion.
                            let entries = entries.filter(|entries| {
                                proto || entries.iter().all(|e| strings_within(&e.values, max))
                            });
                            let points = entries.as_ref().map_or(0, |entries| {
                                entries.iter().map(|e| data_points(&e.values)).sum::<u64>()
                            });
                            (device, points, entries.map(Stored::Telemetry))
                        });
                        self.per_device(now, gateway, qos, pkid, items.collect(), p);
                    }
                }
            }
            UplinkTopic::GatewayAttributes => {
                let parsed = if proto {
                    parse_per_device_proto(payload, GatewayAttributes::parse_protobuf, |a| {
                        a.devices
                    })
                } else {
                    parse_per_device(payload, GatewayAttributes::parse, |a| a.devices)
                };
                match parsed {
                    Err(e) => self.fail(error(&e), qos, pkid, p),
                    Ok(devices) => {
                        // DTS `process(PostAttributeMsg)`: each device's key count is
                        // charged as data points, like telemetry.
                        let max = p.config.max_string_value_length;
                        let items = devices.into_iter().map(|(d, m)| {
                            let m = m.filter(|m| proto || strings_within(m, max));
                            let points = m.as_ref().map_or(0, data_points);
                            (d, points, m.map(Stored::Attributes))
                        });
                        self.per_device(now, gateway, qos, pkid, items.collect(), p);
                    }
                }
            }
            UplinkTopic::GatewayClaim => {
                let parsed = if proto {
                    parse_per_device_proto(payload, GatewayClaim::parse_protobuf, |c| c.devices)
                } else {
                    parse_per_device(payload, GatewayClaim::parse, |c| c.devices)
                };
                match parsed {
                    Err(e) => self.fail(error(&e), qos, pkid, p),
                    Ok(devices) => {
                        let items = devices
                            .into_iter()
                            .map(|(d, c)| (d, 0, c.map(Stored::Claim)));
                        self.per_device(now, gateway, qos, pkid, items.collect(), p);
                    }
                }
            }
            UplinkTopic::GatewayAttributesRequest => {
                match attribute_request(payload) {
                    Err(e) => self.fail(error(&e), qos, pkid, p),
                    Ok(req) => {
                        let child = match self.child(now, gateway, &req.device, None, p) {
                            Ok(c) => c,
                            Err(ChildError::RateLimited) => return self.fail_child_creation(p),
                            // §2.6: a failed implicit creation is acknowledged with 0x83 here.
                            Err(ChildError::DeviceLimit) => {
                                return self.puback(pkid, rc::IMPLEMENTATION_SPECIFIC)
                            }
                        };
                        if p.check_rate(Sender::Child { gateway }, &req.device, 0, now)
                            != RateCheck::Ok
                        {
                            return self.fail_child_rate(pkid, p);
                        }
                        let keys = match &req.keys {
                            RequestedKeys::Key(k) => vec![k.clone()],
                            RequestedKeys::Keys(ks) => ks.clone(),
                        };
                        let (client, shared) = if req.client {
                            p.get_attributes(child, &keys, &[])
                        } else {
                            p.get_attributes(child, &[], &keys)
                        };
                        let mut found = client.clone();
                        found.extend(shared.clone());
                        self.puback(pkid, rc::SUCCESS);
                        let response = GatewayAttributeResponse::for_request(&req, found);
                        // The device actor never reports an error here, so there is no
                        // response that `ProtoMqttAdaptor` would refuse to send.
                        let body = if proto {
                            proto_attribute_response(&response, &req, &client, &shared)
                        } else {
                            response.to_vec()
                        };
                        self.publish(topic::GATEWAY_ATTRIBUTES_RESPONSE, &body, p);
                    }
                }
            }
            UplinkTopic::GatewayRpc => match rpc_response(payload) {
                Err(e) => self.fail(error(&e), qos, pkid, p),
                Ok(reply) => {
                    let child = match self.child(now, gateway, &reply.device, None, p) {
                        Ok(c) => c,
                        Err(ChildError::RateLimited) => return self.fail_child_creation(p),
                        Err(ChildError::DeviceLimit) => {
                            return self.puback(pkid, rc::QUOTA_EXCEEDED)
                        }
                    };
                    if p.check_rate(Sender::Child { gateway }, &reply.device, 0, now)
                        != RateCheck::Ok
                    {
                        return self.fail_child_rate(pkid, p);
                    }
                    p.rpc_reply(child, reply.id, reply.data);
                    self.puback(pkid, rc::SUCCESS);
                }
            },
            _ => self.puback(pkid, rc::TOPIC_NAME_INVALID),
        }
    }

    /// Multi-device gateway messages (AGSH `onDevice{Telemetry,Attributes,Claim}Json` and
    /// `getAggregatePubAckCallback`), entry by entry in key order as if every callback
    /// completed in that order: get-or-create the child, convert, rate-check, store. The first
    /// outcome that acknowledges wins (`ackSent`): a device-limit failure (0x97, session kept),
    /// a conversion failure (v5 0x99, session kept; v3 close), a rate limit (0x97, then close),
    /// or the last success (0x00). After a close the remaining entries are still stored, but
    /// nothing more reaches the client.
    ///
    /// The v5 per-device notice on `v1/gateway/disconnect` (`closeDeviceSession`, §3.4) goes
    /// out after a rate limit (reason 150, lost when that failure closed the connection,
    /// which the first one always does) and, at QoS 0, after every successful entry that does
    /// not complete the message (reason 129 MALFORMED_PACKET: the callback sees packet id -1);
    /// the entry that completes a QoS 0 message tries to build a PUBACK for id -1, which
    /// throws, so neither an ack nor a notice follows it.
    /// `None` items failed conversion: their device is still looked up or created.
    fn per_device(
        &mut self,
        now: Instant,
        gateway: DeviceId,
        qos: QoS,
        pkid: u16,
        items: Vec<(String, u64, Option<Stored>)>,
        p: &mut Platform,
    ) {
        if p.config.quirks.per_device_pubacks {
            return self.per_device_legacy(now, gateway, qos, pkid, items, p);
        }
        let v5 = self.version == ProtocolVersion::V5;
        let wall_ms = p.wall_ms(now);
        let cast = gateway_type_cast(p, gateway);
        let mut remaining = items.len();
        let mut ack_sent = false;
        // The channel is closing: outputs are lost, entries are still processed.
        let mut lost = false;
        for (name, points, stored) in items {
            let child = match self.child(now, gateway, &name, None, p) {
                Ok(c) => c,
                Err(ChildError::RateLimited) => {
                    // A synchronous exception: the remaining entries are not processed.
                    return if lost {
                        self.close(p)
                    } else {
                        self.fail_child_creation(p)
                    };
                }
                Err(ChildError::DeviceLimit) => {
                    if !ack_sent && !lost {
                        self.puback(pkid, rc::QUOTA_EXCEEDED);
                    }
                    ack_sent = true;
                    continue;
                }
            };
            let Some(stored) = stored else {
                // AGSH `ackOrClose`.
                if v5 {
                    if !ack_sent && !lost {
                        self.puback(pkid, rc::PAYLOAD_FORMAT_INVALID);
                    }
                    ack_sent = true;
                } else {
                    lost = true;
                }
                continue;
            };
            // `processPostTelemetryMsg`: metrics are fed right after conversion, before the
            // transport service (and its rate limits) sees the message.
            if let Stored::Telemetry(entries) = &stored {
                p.record_gateway_metrics(gateway, entries, now);
            }
            if p.check_rate(Sender::Child { gateway }, &name, points, now) != RateCheck::Ok {
                if !ack_sent && !lost {
                    self.puback(pkid, rc::QUOTA_EXCEEDED);
                    lost = true;
                }
                ack_sent = true;
                if !lost {
                    self.device_disconnect_notice(&name, DisconnectNotice::REASON_RATE_LIMIT, p);
                }
                continue;
            }
            match stored {
                Stored::Telemetry(entries) => {
                    for e in entries {
                        p.store_telemetry(child, e.ts.unwrap_or(wall_ms), &e.values, cast);
                    }
                }
                Stored::Attributes(values) => p.store_client_attributes(child, &values, cast),
                Stored::Claim(c) => p.allow_claim(child, c.secret_key, c.duration_ms, now),
            }
            remaining -= 1;
            if remaining == 0 && !ack_sent {
                ack_sent = true;
                if pkid == 0 {
                    continue;
                }
                if !lost {
                    self.puback(pkid, rc::SUCCESS);
                }
            }
            if pkid == 0 && !lost {
                self.device_disconnect_notice(&name, rc::MALFORMED, p);
            }
        }
        if lost {
            self.close(p);
        }
    }

    /// AGSH `closeDeviceSession`: on MQTT 5, `{"device":..,"reason":..}` on
    /// `v1/gateway/disconnect` (not subscribable, so QoS 1 unless a filter matches); a
    /// `GatewayDisconnectDeviceMsg` to a gateway whose profile is PROTOBUF
    /// (`ProtoMqttAdaptor.convertToGatewayDeviceDisconnectPublish`), and none when that
    /// profile has JSON compatibility on.
    fn device_disconnect_notice(&mut self, device: &str, reason: u8, p: &mut Platform) {
        if self.version != ProtocolVersion::V5 || self.is_closed() {
            return;
        }
        let notice = DisconnectNotice {
            device: device.to_owned(),
            reason,
        };
        let body = match self.device().and_then(|gw| p.proto_schemas(gw)) {
            None => notice.to_vec(),
            Some(s) if s.json_compatibility() == JsonCompatibility::Off => notice.to_protobuf(),
            // `BackwardCompatibilityAdaptor.convertToGatewayDeviceDisconnectPublish` sends
            // nothing.
            Some(_) => return,
        };
        self.publish(topic::GATEWAY_DISCONNECT, &body, p);
    }

    /// Multi-device gateway messages before v4.2.1 (`per_device_pubacks` quirk): one PUBACK
    /// per stored entry. `None` items failed conversion: their device is still looked up or
    /// created.
    fn per_device_legacy(
        &mut self,
        now: Instant,
        gateway: DeviceId,
        qos: QoS,
        pkid: u16,
        items: Vec<(String, u64, Option<Stored>)>,
        p: &mut Platform,
    ) {
        let per_entry = p.config.quirks.per_device_pubacks;
        let wall_ms = p.wall_ms(now);
        let cast = gateway_type_cast(p, gateway);
        let mut entry_failed = false;
        let mut first_failure: Option<u8> = None;
        for (name, points, stored) in items {
            let child = match self.child(now, gateway, &name, None, p) {
                Ok(c) => c,
                Err(ChildError::RateLimited) => return self.fail_child_creation(p),
                Err(ChildError::DeviceLimit) => {
                    if per_entry {
                        if !p.config.quirks.no_puback_on_connect_failure {
                            self.puback(pkid, rc::QUOTA_EXCEEDED);
                        }
                    } else {
                        first_failure.get_or_insert(rc::QUOTA_EXCEEDED);
                    }
                    continue;
                }
            };
            let Some(stored) = stored else {
                entry_failed = true;
                continue;
            };
            if let Stored::Telemetry(entries) = &stored {
                p.record_gateway_metrics(gateway, entries, now);
            }
            if p.check_rate(Sender::Child { gateway }, &name, points, now) != RateCheck::Ok {
                return self.fail_child_rate(pkid, p);
            }
            match stored {
                Stored::Telemetry(entries) => {
                    for e in entries {
                        p.store_telemetry(child, e.ts.unwrap_or(wall_ms), &e.values, cast);
                    }
                }
                Stored::Attributes(values) => p.store_client_attributes(child, &values, cast),
                Stored::Claim(c) => p.allow_claim(child, c.secret_key, c.duration_ms, now),
            }
            if per_entry {
                self.puback(pkid, rc::SUCCESS);
            }
        }
        if entry_failed {
            return self.fail(Failure::Entry, qos, pkid, p);
        }
        if !per_entry {
            self.puback(pkid, first_failure.unwrap_or(rc::SUCCESS));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_device_publish(
        &mut self,
        now: Instant,
        device: DeviceId,
        gateway: bool,
        name: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        p: &mut Platform,
    ) {
        let sender = if gateway {
            Sender::GatewayItself(device)
        } else {
            Sender::Device(device)
        };
        let device_name = p.name_of(device).unwrap_or_default().to_owned();
        let Some(kind) = device_uplink(p.profile_topics(device), name) else {
            // §6.2: unknown topic → PUBACK 0x90 (plain on v3), session kept.
            return self.puback(pkid, rc::TOPIC_NAME_INVALID);
        };
        // The adaptor: `/p` protobuf, `/j` JSON, v1 and plain v2 the profile's (§1.1); with
        // the profile's JSON compatibility, protobuf and then JSON on v1 and plain v2.
        let proto = uses_proto(kind_family(&kind), p, device);
        let json_fallback = proto
            && kind_family(&kind) != Some(TopicFamily::V2Proto)
            && p.proto_schemas(device)
                .is_some_and(|s| s.json_compatibility() != JsonCompatibility::Off);
        let adaptor_error = |_| ();
        // Which adaptor took the payload: the JSON one applies `max_string_value_length`.
        let mut via_json = !proto;
        macro_rules! parse_or_fail {
            ($ty:ty, $proto_json:expr) => {{
                let mut parsed = if proto {
                    $proto_json(p.proto_schemas(device), payload)
                        .map_err(adaptor_error)
                        .and_then(|json: Vec<u8>| <$ty>::parse(&json).map_err(|_| ()))
                } else {
                    <$ty>::parse(payload).map_err(|_| ())
                };
                if parsed.is_err() && json_fallback {
                    parsed = <$ty>::parse(payload).map_err(|_| ());
                    via_json = parsed.is_ok();
                }
                match parsed {
                    Ok(v) => v,
                    Err(()) => return self.fail(Failure::Adaptor, qos, pkid, p),
                }
            }};
        }
        let max_string = p.config.max_string_value_length;
        macro_rules! or_fail {
            ($result:expr) => {
                match $result {
                    Ok(v) => v,
                    Err(_) => return self.fail(Failure::Adaptor, qos, pkid, p),
                }
            };
        }
        macro_rules! rate {
            ($points:expr) => {
                if p.check_rate(sender, &device_name, $points, now) != RateCheck::Ok {
                    return self.fail_device_rate(p);
                }
            };
        }
        match kind {
            UplinkTopic::DeviceTelemetry { .. } => {
                let t = parse_or_fail!(DeviceTelemetry, proto::adaptor::telemetry_json);
                if via_json
                    && !t
                        .entries
                        .iter()
                        .all(|e| strings_within(&e.values, max_string))
                {
                    return self.fail(Failure::Adaptor, qos, pkid, p);
                }
                let points = t
                    .entries
                    .iter()
                    .map(|e| data_points(&e.values))
                    .sum::<u64>();
                rate!(points);
                let wall = p.wall_ms(now);
                for e in t.entries {
                    p.store_telemetry(
                        device,
                        e.ts.unwrap_or(wall),
                        &e.values,
                        p.config.type_cast_enabled,
                    );
                }
                self.puback(pkid, rc::SUCCESS);
            }
            UplinkTopic::DeviceAttributes { .. } => {
                let a = parse_or_fail!(ClientAttributes, proto::adaptor::attributes_json);
                if via_json && !strings_within(&a.values, max_string) {
                    return self.fail(Failure::Adaptor, qos, pkid, p);
                }
                // DTS `process(PostAttributeMsg)`: the key count is charged as data points.
                rate!(data_points(&a.values));
                p.store_client_attributes(device, &a.values, p.config.type_cast_enabled);
                self.puback(pkid, rc::SUCCESS);
            }
            UplinkTopic::DeviceAttributesRequest { family, id } => {
                let from_proto =
                    proto.then(|| proto::transport::AttributesRequest::decode(payload));
                let (client_keys, shared_keys) = match from_proto {
                    Some(Ok(req)) => (req.client_keys, req.shared_keys),
                    Some(Err(_)) if !json_fallback => {
                        return self.fail(Failure::Adaptor, qos, pkid, p)
                    }
                    _ => {
                        let req = or_fail!(DeviceAttributeRequest::parse(payload));
                        (req.client_keys().to_vec(), req.shared_keys().to_vec())
                    }
                };
                rate!(0);
                self.puback(pkid, rc::SUCCESS);
                let (client, shared) = p.get_attributes(device, &client_keys, &shared_keys);
                let topic = topic::topic_with_id(IdTopicKind::AttributeResponse, family, id);
                if downlink_uses_proto(family, p, device) {
                    // ProtoMqttAdaptor: only request ids ≥ 0 (an int) are answered.
                    let Ok(request_id) = i32::try_from(id) else {
                        return;
                    };
                    let client_ts = |k: &str| p.attribute_ts(device, false, k);
                    let shared_ts = |k: &str| p.attribute_ts(device, true, k);
                    let body = proto::transport::attribute_response(
                        request_id,
                        &proto::transport::timed(&client, &client_ts),
                        &proto::transport::timed(&shared, &shared_ts),
                        client_keys.len() + shared_keys.len() > 1,
                    );
                    self.publish(&topic, &body, p);
                } else {
                    let response = DeviceAttributeResponse { client, shared };
                    self.publish(&topic, &response.to_vec(), p);
                }
            }
            UplinkTopic::DeviceRpcResponse { id, .. } => {
                // Decoded with the profile's RPC-response schema, passed on as JSON.
                let from_proto =
                    proto.then(|| proto::adaptor::rpc_response(p.proto_schemas(device), payload));
                let data = match from_proto {
                    Some(Ok(data)) => data,
                    Some(Err(_)) if !json_fallback => {
                        return self.fail(Failure::Adaptor, qos, pkid, p)
                    }
                    // Stored verbatim, not validated as JSON (§3.6).
                    _ => serde_json::from_slice(payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(payload).into_owned())
                    }),
                };
                rate!(0);
                p.rpc_reply(device, id, data);
                self.puback(pkid, rc::SUCCESS);
            }
            UplinkTopic::DeviceRpcRequest { family, id } => {
                // `transportapi.RpcRequest`: a missing method is just "".
                let from_proto = proto.then(|| ProtoRpcRequest::parse(payload));
                let request = match from_proto {
                    Some(Ok(r)) => {
                        let params = if r.params.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_str(&r.params).unwrap_or(Value::String(r.params))
                        };
                        pl::RpcRequest::new(r.method, params)
                    }
                    Some(Err(_)) if !json_fallback => {
                        return self.fail(Failure::Adaptor, qos, pkid, p)
                    }
                    _ => match pl::RpcRequest::parse(payload) {
                        Ok(r) => r,
                        // §3.6: a missing method is an uncaught NPE → DISCONNECT 0x8B.
                        Err(PayloadError::MissingField("method")) => {
                            return self.disconnect(rc::SERVER_SHUTTING_DOWN, p)
                        }
                        Err(_) => return self.fail(Failure::Adaptor, qos, pkid, p),
                    },
                };
                // MTH answers `getSessionLimits` itself, before any `transportService`
                // call: it takes no token.
                if !(request.method == SessionLimits::METHOD && family == TopicFamily::V1) {
                    rate!(0);
                }
                self.puback(pkid, rc::SUCCESS);
                self.client_rpc(now, device, &device_name, gateway, family, id, request, p);
            }
            UplinkTopic::DeviceClaim => {
                let from_proto = proto.then(|| proto::transport::ClaimDevice::decode(payload));
                let (secret, duration) = match from_proto {
                    // An empty secret is ThingsBoard's default secret, as when JSON omits it.
                    Some(Ok(c)) => (
                        Some(c.secret_key).filter(|s| !s.is_empty()),
                        Some(c.duration_ms),
                    ),
                    Some(Err(_)) if !json_fallback => {
                        return self.fail(Failure::Adaptor, qos, pkid, p)
                    }
                    _ => {
                        let c = or_fail!(pl::Claim::parse(payload));
                        (c.secret_key, c.duration_ms)
                    }
                };
                rate!(0);
                p.allow_claim(device, secret, duration, now);
                self.puback(pkid, rc::SUCCESS);
            }
            UplinkTopic::OtaChunkRequest {
                kind,
                request_id,
                chunk,
            } => self.ota_chunk(device, kind, request_id, chunk, pkid, payload, p),
            // Provisioning and gateway topics are not device-API topics.
            _ => self.puback(pkid, rc::TOPIC_NAME_INVALID),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn client_rpc(
        &mut self,
        now: Instant,
        device: DeviceId,
        device_name: &str,
        gateway: bool,
        family: TopicFamily,
        id: u64,
        request: pl::RpcRequest,
        p: &mut Platform,
    ) {
        // §3.6: `getSessionLimits` on the v1 topic is answered by the transport itself.
        if request.method == SessionLimits::METHOD && family == TopicFamily::V1 {
            let limits = p.limits();
            let (own, gateway_limits) = if gateway {
                (
                    limits.gateway_device.to_payload(),
                    Some(limits.gateway.to_payload()),
                )
            } else {
                (limits.device.to_payload(), None)
            };
            let answer = SessionLimits {
                max_payload_size: p.config.max_packet_size as u64,
                max_inflight_messages: p.config.max_inflight_messages,
                rate_limits: own,
                gateway_rate_limits: gateway_limits,
            };
            let text = String::from_utf8_lossy(&answer.to_vec()).into_owned();
            return self.client_rpc_reply(family, id, Ok(text), p);
        }
        let _ = device;
        let call = ClientRpcCall {
            device: device_name.to_owned(),
            id,
            method: request.method,
            params: request.params,
        };
        let reply = match p.client_rpc(&call) {
            ClientRpcAnswer::Reply(v) => Ok(ClientRpcResponse::Ok(v).to_vec()),
            ClientRpcAnswer::Error(e) => Err(e),
            ClientRpcAnswer::NoAnswer => {
                if self.client_rpcs.len() < p.config.bounds.max_pending_client_rpcs {
                    self.client_rpcs.push_back(PendingClientRpc {
                        id,
                        family,
                        deadline: now + p.config.client_rpc_timeout,
                    });
                    return;
                }
                Err(ClientRpcResponse::TIMEOUT.to_owned())
            }
        };
        let reply = reply.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        self.client_rpc_reply(family, id, reply, p);
    }

    /// Publishes the answer to client-side RPC `id` (the result's JSON text, or an error) with
    /// the adaptor of `family` (MTH `onToServerRpcResponse`): the JSON result or
    /// `{"error":..}`, or `ToServerRpcResponseMsg` bytes with `payload` or `error` set.
    fn client_rpc_reply(
        &mut self,
        family: TopicFamily,
        id: u64,
        reply: Result<String, String>,
        p: &Platform,
    ) {
        let topic = topic::topic_with_id(IdTopicKind::RpcResponse, family, id);
        let proto = self
            .device()
            .is_some_and(|d| downlink_uses_proto(family, p, d));
        if !proto {
            let body = match reply {
                Ok(text) => text.into_bytes(),
                Err(e) => ClientRpcResponse::Error(e).to_vec(),
            };
            return self.publish(&topic, &body, p);
        }
        // `requestId` is an int32: ThingsBoard never reads a larger id from the topic.
        let Ok(request_id) = i32::try_from(id) else {
            return;
        };
        let (payload, error) = match reply {
            Ok(text) => (text, String::new()),
            Err(e) => (String::new(), e),
        };
        let body = ProtoRpcResponse {
            request_id,
            payload,
            error,
        };
        self.publish(&topic, &body.to_vec(), p);
    }

    #[allow(clippy::too_many_arguments)]
    fn ota_chunk(
        &mut self,
        device: DeviceId,
        kind: OtaKind,
        request_id: u64,
        chunk: u64,
        pkid: u16,
        payload: &[u8],
        p: &mut Platform,
    ) {
        let text = String::from_utf8_lossy(payload);
        let size = if text.is_empty() {
            self.ota_sizes.get(&request_id).copied().unwrap_or(0)
        } else {
            match text.parse::<u64>() {
                Ok(n) => {
                    if self.ota_sizes.len() >= MAX_OTA_REQUESTS {
                        self.ota_sizes.clear();
                    }
                    self.ota_sizes.insert(request_id, n);
                    n
                }
                // §3.6: uncaught NumberFormatException → 0x8B.
                Err(_) => return self.disconnect(rc::SERVER_SHUTTING_DOWN, p),
            }
        };
        let error_topic = OtaKind::Firmware.error_topic();
        if size > p.config.max_packet_size as u64 {
            self.publish(error_topic, b"PAYLOAD_TOO_LARGE", p);
            return self.disconnect(rc::IMPLEMENTATION_SPECIFIC, p);
        }
        let Some(data) = p
            .ota(device, kind == OtaKind::Firmware)
            .map(|pkg| pkg.data.clone())
        else {
            // §3.6: errors go to v2/fw/error even for software.
            self.publish(error_topic, b"NOT_FOUND", p);
            return self.disconnect(rc::IMPLEMENTATION_SPECIFIC, p);
        };
        self.puback(pkid, rc::SUCCESS);
        let bytes = if size == 0 {
            data
        } else {
            let start = chunk.saturating_mul(size);
            let start = usize::try_from(start).unwrap_or(usize::MAX).min(data.len());
            let end = usize::try_from(size)
                .map_or(data.len(), |s| start.saturating_add(s))
                .min(data.len());
            data.slice(start..end)
        };
        let topic = topic::ota_chunk_response_topic(kind, request_id, chunk);
        self.publish(&topic, &bytes, p);
    }

    /// MTH `processProvisionSessionMsg` (§3.6): JSON first; only when the payload is not
    /// JSON at all (a syntax error, or a JSON value that is not an object: Gson's
    /// `JsonParseException`) protobuf (`ProvisionDeviceRequestMsg`). That makes the session's
    /// provision payload type PROTOBUF for good, and `DeviceProvisionCallback` answers in
    /// that type: a protobuf request gets a protobuf answer, and so does a JSON request sent
    /// after one on the same session.
    fn on_provision_publish(
        &mut self,
        now: Instant,
        name: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        p: &mut Platform,
    ) {
        if name != topic::PROVISION_REQUEST {
            // §3.6: any other topic → PUBACK 0x90 + DISCONNECT 0x90.
            self.puback(pkid, rc::TOPIC_NAME_INVALID);
            return self.disconnect(rc::TOPIC_NAME_INVALID, p);
        }
        let request = match ProvisionRequest::parse(payload) {
            Ok(request) => request,
            Err(PayloadError::InvalidJson { .. } | PayloadError::WrongShape { .. }) => {
                match ProvisionRequest::parse_protobuf(payload) {
                    Ok(request) => {
                        self.provision_protobuf = true;
                        request
                    }
                    // AdaptorException(InvalidProtocolBufferException) →
                    // `sendResponseForAdaptorErrorOrCloseContext`. A provision session has no
                    // device profile, so no `sendAckOnValidationException`.
                    Err(_) => {
                        if self.version != ProtocolVersion::V5 {
                            return self.close(p);
                        }
                        if qos == QoS::AtMostOnce {
                            return self.disconnect(rc::PAYLOAD_FORMAT_INVALID, p);
                        }
                        return self.puback(pkid, rc::PAYLOAD_FORMAT_INVALID);
                    }
                }
            }
            // A JSON object without key or secret (or with a bad value): a plain
            // RuntimeException, not a parse error, so no protobuf retry.
            Err(_) => {
                self.puback(pkid, rc::IMPLEMENTATION_SPECIFIC);
                return self.disconnect(rc::IMPLEMENTATION_SPECIFIC, p);
            }
        };
        let response = p.provision(&request);
        self.puback(pkid, rc::SUCCESS);
        let body = if self.provision_protobuf {
            response.to_protobuf()
        } else {
            response.to_vec()
        };
        self.publish(topic::PROVISION_RESPONSE, &body, p);
        self.provision_close_at = Some(now + p.config.provision_close_delay);
    }
}

/// What a gateway message stores per device.
enum Stored {
    Telemetry(Vec<pl::TelemetryEntry>),
    Attributes(Map<String, Value>),
    Claim(pl::Claim),
}

/// What a device's PUBLISH on `topic` is (`processDevicePublish`): the profile's attributes
/// filter first, then its telemetry filter (both v1-family: the profile's payload format),
/// then the fixed topics, of which the default v1 telemetry and attributes topics only count
/// while the profile has no filters of its own.
fn device_uplink(filters: Option<&ProfileTopics>, topic: &str) -> Option<UplinkTopic> {
    let Some(filters) = filters else {
        return topic::classify_uplink(topic);
    };
    let family = TopicFamily::V1;
    if filters.attributes.matches(topic) {
        return Some(UplinkTopic::DeviceAttributes { family });
    }
    if filters.telemetry.matches(topic) {
        return Some(UplinkTopic::DeviceTelemetry { family });
    }
    match topic::classify_uplink(topic)? {
        UplinkTopic::DeviceAttributes {
            family: TopicFamily::V1,
        }
        | UplinkTopic::DeviceTelemetry {
            family: TopicFamily::V1,
        } => None,
        other => Some(other),
    }
}

/// Parses a multi-device gateway message. On a per-device conversion failure the other devices
/// are still processed (§2.1 row 4), so the message is re-parsed one device at a time; a
/// device whose entry failed comes back as `None` (ThingsBoard gets or creates the device
/// before converting its entry).
fn parse_per_device<T, I>(
    payload: &[u8],
    parse: fn(&[u8]) -> Result<T, PayloadError>,
    devices: fn(T) -> std::collections::BTreeMap<String, I>,
) -> Result<Vec<(String, Option<I>)>, PayloadError> {
    match parse(payload) {
        Ok(t) => Ok(devices(t).into_iter().map(|(d, i)| (d, Some(i))).collect()),
        Err(PayloadError::DeviceEntry { .. }) => {
            let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(payload) else {
                return Err(PayloadError::NoDeviceEntries);
            };
            let mut items = Vec::new();
            for (device, value) in obj {
                let mut one = Map::new();
                one.insert(device.clone(), value);
                let Ok(bytes) = serde_json::to_vec(&Value::Object(one)) else {
                    continue;
                };
                match parse(&bytes) {
                    Ok(t) => items.extend(devices(t).into_iter().map(|(d, i)| (d, Some(i)))),
                    Err(PayloadError::DeviceEntry { .. }) => items.push((device, None)),
                    Err(PayloadError::EmptyDeviceName) => {
                        return Err(PayloadError::EmptyDeviceName)
                    }
                    // An entry of the wrong JSON type is skipped, as by the server.
                    Err(_) => {}
                }
            }
            Ok(items)
        }
        Err(e) => Err(e),
    }
}

/// [`parse_per_device`] for a PROTOBUF gateway: the repeated `msg` field (number 1) of
/// `Gateway{Telemetry,Attributes,Claim}Msg`, one device entry at a time in payload order, as
/// AGSH `onDevice{Telemetry,Attributes,Claim}Proto` walk it. Bytes protobuf-java would not
/// parse, an empty device name or an empty list fail the whole message (returned as the
/// error; the caller makes it an AdaptorException). An entry whose conversion fails comes back
/// as `None` for its device.
fn parse_per_device_proto<T, I>(
    payload: &[u8],
    parse: fn(&[u8]) -> Result<T, PayloadError>,
    devices: fn(T) -> std::collections::BTreeMap<String, I>,
) -> Result<Vec<(String, Option<I>)>, PayloadError> {
    use proto::wire::{put_len_delimited, Reader, WireType};
    let malformed = |_| PayloadError::InvalidProtobuf("malformed gateway message");
    let mut msgs = Vec::new();
    let mut reader = Reader::new(payload);
    while !reader.is_empty() {
        let (field, wire) = reader.tag().map_err(malformed)?;
        if (field, wire) == (1, WireType::Len) {
            msgs.push(reader.len_delimited().map_err(malformed)?);
        } else {
            reader.skip(field, wire, 0).map_err(malformed)?;
        }
    }
    if msgs.is_empty() {
        return Err(PayloadError::NoDeviceEntries);
    }
    // protobuf-java parses the whole message before any entry is handled.
    let mut parsed = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let mut one = Vec::with_capacity(msg.len() + 6);
        put_len_delimited(&mut one, 1, msg);
        match parse(&one) {
            Ok(t) => parsed.extend(devices(t).into_iter().map(|(d, i)| (d, Some(i)))),
            Err(PayloadError::DeviceEntry { device, .. }) => parsed.push((device, None)),
            Err(e) => return Err(e),
        }
    }
    Ok(parsed)
}

/// The protobuf attribute response (`ProtoMqttAdaptor.convertToGatewayPublish`) for the
/// attributes found in each scope. A request without keys asks for every attribute of both
/// scopes; when that finds exactly one, it goes under its own key in the list of its scope,
/// as the device actor fills them (the codec would key a lone value by the requested key).
fn proto_attribute_response(
    response: &GatewayAttributeResponse,
    request: &GatewayAttributeRequest,
    client: &Map<String, Value>,
    shared: &Map<String, Value>,
) -> Vec<u8> {
    if request.keys.count() == 0 {
        if let Some(key) = client.keys().chain(shared.keys()).next() {
            let keyed = GatewayAttributeRequest {
                client: client.contains_key(key),
                keys: RequestedKeys::Keys(vec![key.clone()]),
                ..request.clone()
            };
            if let pl::AttributeResult::Value(_) = response.result {
                return response.to_protobuf(&keyed);
            }
        }
    }
    response.to_protobuf(request)
}

/// Gateway payload errors: syntax → AdaptorException; per-device conversion → entry failure;
/// everything else (wrong shape, missing field, empty name, no entries) → RuntimeException.
fn classify_gateway_error(e: &PayloadError) -> Failure {
    match e {
        PayloadError::InvalidJson { .. } => Failure::Adaptor,
        PayloadError::DeviceEntry { .. } => Failure::Entry,
        _ => Failure::Shape,
    }
}

/// Whether numeric strings in a gateway's telemetry and attributes become numbers: the JSON
/// form's `transport.json.type_cast_enabled` (`JsonConverter`); protobuf `KeyValueProto`s are
/// stored as typed (`ProtoConverter` has no cast).
fn gateway_type_cast(p: &Platform, gateway: DeviceId) -> bool {
    p.config.type_cast_enabled && p.proto_schemas(gateway).is_none()
}

/// Whether a message of `family` on `device`'s session goes through ThingsBoard's protobuf
/// adaptor: `/p` always, `/j` never, v1, plain v2 and the claim topic when the device's
/// profile is PROTOBUF (DSC `getPayloadAdaptor` for uplinks, `getAdaptor` for downlinks).
fn uses_proto(family: Option<TopicFamily>, p: &Platform, device: DeviceId) -> bool {
    match family {
        Some(TopicFamily::V2Proto) => true,
        Some(TopicFamily::V2Json) => false,
        _ => p.proto_schemas(device).is_some(),
    }
}

/// Whether a downlink on `family` is protobuf (`DeviceSessionCtx.getAdaptor`): as for
/// uplinks, except that a PROTOBUF profile with `useJsonPayloadFormatForDefaultDownlinkTopics`
/// sends JSON on the v1 topics.
fn downlink_uses_proto(family: TopicFamily, p: &Platform, device: DeviceId) -> bool {
    match family {
        TopicFamily::V1 => p
            .proto_schemas(device)
            .is_some_and(|s| s.json_compatibility() != JsonCompatibility::UplinksAndV1Downlinks),
        family => uses_proto(Some(family), p, device),
    }
}

/// The key-value entries ThingsBoard charges as data points: the values it keeps (`null`s
/// are dropped by `JsonConverter`).
fn data_points(values: &Map<String, Value>) -> u64 {
    values.values().filter(|v| !v.is_null()).count() as u64
}

fn kind_family(kind: &UplinkTopic) -> Option<TopicFamily> {
    match *kind {
        UplinkTopic::DeviceTelemetry { family }
        | UplinkTopic::DeviceAttributes { family }
        | UplinkTopic::DeviceAttributesRequest { family, .. }
        | UplinkTopic::DeviceRpcRequest { family, .. }
        | UplinkTopic::DeviceRpcResponse { family, .. } => Some(family),
        _ => None,
    }
}

/// What an accepted subscription filter does (§1.2).
enum SubKind {
    Attributes(TopicFamily),
    Rpc(TopicFamily),
    QosOnly,
}

/// The exact filters ThingsBoard accepts (Java `switch` on the string: no general wildcards).
fn subscription_kind(filter: &str) -> Option<SubKind> {
    for family in TopicFamily::ALL {
        if filter == family.attributes_topic() {
            return Some(SubKind::Attributes(family));
        }
        if filter == family.subscription_filter(IdTopicKind::RpcRequest) {
            return Some(SubKind::Rpc(family));
        }
        if filter == family.subscription_filter(IdTopicKind::AttributeResponse)
            || filter == family.subscription_filter(IdTopicKind::RpcResponse)
        {
            return Some(SubKind::QosOnly);
        }
    }
    match filter {
        topic::GATEWAY_ATTRIBUTES
        | topic::GATEWAY_RPC
        | topic::GATEWAY_ATTRIBUTES_RESPONSE
        | topic::FW_RESPONSE_SUB
        | topic::SW_RESPONSE_SUB
        | topic::FW_ERROR
        | topic::SW_ERROR => Some(SubKind::QosOnly),
        _ => None,
    }
}

/// MQTT filter matching as ThingsBoard's `MqttTopicMatcher` (`+` = one level, `#` = rest).
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), Some(_)) => return true,
            (Some("+"), Some(level)) if !level.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_the_server() {
        assert!(filter_matches(
            "v1/devices/me/rpc/request/+",
            "v1/devices/me/rpc/request/7"
        ));
        assert!(!filter_matches(
            "v1/devices/me/rpc/request/+",
            "v1/devices/me/rpc/request/7/x"
        ));
        assert!(filter_matches("v1/gateway/rpc", "v1/gateway/rpc"));
        assert!(!filter_matches("v1/gateway/rpc", "v1/gateway/attributes"));
        assert!(filter_matches(
            "v2/fw/response/+/chunk/+",
            "v2/fw/response/1/chunk/0"
        ));
    }

    #[test]
    fn only_the_exact_filter_list_is_accepted() {
        for ok in [
            "v1/devices/me/attributes",
            "v2/a/p",
            "v1/devices/me/rpc/request/+",
            "v2/r/req/j/+",
            "v1/devices/me/attributes/response/+",
            "v2/r/res/+",
            "v1/gateway/attributes",
            "v1/gateway/rpc",
            "v1/gateway/attributes/response",
            "v2/fw/response/+/chunk/+",
            "v2/sw/error",
        ] {
            assert!(subscription_kind(ok).is_some(), "{ok}");
        }
        for bad in [
            "#",
            "v1/devices/me/#",
            "v1/gateway/#",
            "v1/devices/me/rpc/request/#",
            "v1/gateway/disconnect",
            "v1/gateway/connect",
            "v1/gateway/telemetry",
            "v1/gateway/claim",
            "v1/devices/me/telemetry",
            "wrong/topic/+",
            "/provision/response",
        ] {
            assert!(subscription_kind(bad).is_none(), "{bad}");
        }
    }
}
