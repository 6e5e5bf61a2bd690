//! ThingsBoard's Device and Gateway APIs on top of the MQTT session: commands become
//! publishes, server publishes become typed events, and everything that must be remembered
//! between the two (sub-devices, pending requests, pending server RPCs) lives here.
//!
//! The [`Connection`](crate::Connection) owns one [`Api`] and calls it at four points: when
//! a command is accepted ([`Api::prepare`] then [`Api::commit`]), when a publish ends
//! ([`Api::on_outcome`]), when a server PUBLISH arrives ([`Api::on_message`]), and around the
//! session's life (connect, loss, close, timers).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::codec::{ProtocolVersion, QoS};
use crate::command::{AttributeScope, Command, DeviceCommand, GatewayCommand};
use crate::config::{Config, Role, KEEPALIVE_KEY};
use crate::connection::publish_remaining_len;
use crate::correlation::{Expect, Pending, PendingRequests, ServerRpcs};
use crate::error::CommandError;
use crate::event::{Event, RequestError, RequestId, Warning};
use crate::idmap::{self, IdMap};
use crate::ota::{
    state_telemetry, Ota, OtaCommand, OtaCommandError, OtaKind, OtaState, OtaVersion,
};
use crate::outbound::ControlTag;
use crate::output::OutputQueue;
use crate::pacing::{Charge, Scope};
use crate::payload::device::write_device_telemetry;
use crate::payload::gateway::{
    write_gateway_attributes, write_gateway_claim, write_gateway_telemetry_entries,
};
use crate::payload::protobuf::{ProtoRpcRequest, ProtoRpcResponse};
use crate::payload::{
    AttributeResult, AttributeUpdate, ClientRpcResponse, Connect, DeviceAttributeRequest,
    DeviceAttributeResponse, Disconnect, DisconnectNotice, GatewayAttributeRequest,
    GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes, GatewayClaim,
    GatewayNotification, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry, Payload,
    PayloadError, RequestedKeys, RpcRequest, SessionLimits, TelemetryEntry,
};
use crate::raw::{RawDownlink, RawUplink};
use crate::reason::ReasonCode;
use crate::registry::{Registry, Slot};
use crate::split::{Budget, Message, Size};
use crate::stats::Stats;
use crate::topic::{self, IdTopicKind, InboundTopic, TopicFamily};

/// A command turned into a publish, with what to remember once it is accepted.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// API topics are static; only per-request device topics are built.
    pub(crate) topic: Cow<'static, str>,
    pub(crate) payload: PreparedPayload,
    pub(crate) qos: QoS,
    pub(crate) commit: Commit,
    /// What `payload` takes from the rate-limit buckets (`None`: worked out from the payload
    /// when it is about to be sent, for publishes the application built itself).
    pub(crate) charge: Option<Charge>,
    /// Further parts, when the message was split to fit the limits; `payload` is the first.
    pub(crate) more: Vec<(Bytes, Charge)>,
}

/// Where the payload of a [`Prepared`] publish is.
#[derive(Debug)]
pub(crate) enum PreparedPayload {
    /// Still in the API's scratch buffer ([`Api::payload_bytes`]), valid until the next
    /// command: a publish that goes straight to the wire is never copied;
    /// [`Api::own_payload`] copies it out at its exact size for the outbound store.
    Scratch,
    /// Its own bytes.
    Owned(Bytes),
}

/// Largest scratch buffer kept between commands (bytes); a larger one is freed.
const SCRATCH_KEEP: usize = 64 * 1024;

/// What shaping a publish to the limits needs to know about the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fit {
    pub(crate) protocol: ProtocolVersion,
    /// Largest PUBLISH (remaining length) now.
    pub(crate) max_packet: usize,
    /// Split telemetry and attributes that do not fit.
    pub(crate) split: bool,
    /// Data points per message: own device, sub-devices.
    pub(crate) device_points: Option<u64>,
    pub(crate) gateway_points: Option<u64>,
}

/// A payload with its charge and any further parts.
struct Body {
    payload: PreparedPayload,
    charge: Charge,
    more: Vec<(Bytes, Charge)>,
}

impl Body {
    /// One regular message on `topic`, its payload in the scratch buffer.
    fn message(topic: &str) -> Self {
        Self {
            payload: PreparedPayload::Scratch,
            charge: Charge::message(Scope::of_topic(topic)),
            more: Vec::new(),
        }
    }
}

/// How a telemetry-like message is charged.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Telemetry,
    Attributes,
}

impl Counted {
    fn charge(self, scope: Scope, messages: u64, points: u64) -> Charge {
        match self {
            Self::Telemetry => Charge::telemetry(scope, messages, points),
            Self::Attributes => Charge::attributes(scope, messages, points),
        }
    }
}

/// The encoded message `whole` (in `buf`) if it fits the packet and data-point limits;
/// otherwise `msg` cut into parts that do (or the typed error of a value that cannot fit).
fn fit<'m>(
    size: Size,
    msg: impl FnOnce() -> Message<'m>,
    counted: Counted,
    topic: &str,
    qos: QoS,
    buf: &[u8],
    fit: &Fit,
) -> Result<Body, CommandError> {
    let scope = Scope::of_topic(topic);
    let overhead = publish_remaining_len(fit.protocol, topic, 0, qos);
    let budget = Budget {
        payload: fit.max_packet.saturating_sub(overhead),
        points: match scope {
            Scope::Device => fit.device_points,
            Scope::Gateway => fit.gateway_points,
        },
    };
    if !fit.split
        || (buf.len() <= budget.payload && budget.points.is_none_or(|max| size.points <= max))
    {
        return Ok(Body {
            payload: PreparedPayload::Scratch,
            charge: counted.charge(scope, size.devices, size.points),
            more: Vec::new(),
        });
    }
    let msg = msg();
    debug_assert_eq!(msg.size(), size);
    let parts = msg
        .split(&budget)
        .map_err(|u| CommandError::ValueTooLarge {
            device: u.device,
            key: u.key,
            size: u.size.saturating_add(overhead),
            max: fit.max_packet,
        })?;
    let mut parts = parts
        .into_iter()
        .map(|p| (p.payload, counted.charge(scope, p.devices, p.points)));
    let Some((payload, charge)) = parts.next() else {
        return Err(CommandError::Payload(PayloadError::NoDeviceEntries));
    };
    Ok(Body {
        payload: PreparedPayload::Owned(payload),
        charge,
        more: parts.collect(),
    })
}

/// Something the connection must act on, found while handling a downlink or an ack.
#[derive(Debug)]
pub(crate) enum Signal {
    /// The answer to `getSessionLimits` (or why it is unusable).
    Limits(Result<SessionLimits, String>),
    /// No answer will come on this session: the request was refused, or a plain broker
    /// reflected it back as an RPC request.
    LimitsUnanswered,
    /// `v1/gateway/disconnect` with reason 150 for this sub-device.
    SubDeviceRateLimited(String),
}

/// Bookkeeping deferred until the publish is admitted, so a refused command changes nothing.
#[derive(Debug)]
pub(crate) enum Commit {
    Nothing,
    /// Data for this sub-device: track it, record the uplink.
    TouchOne {
        device: String,
        /// Its registry slot if it was tracked when the command was prepared (nothing
        /// changes the registry between preparing and committing one command).
        known: Option<Slot>,
    },
    /// Data for these sub-devices: track them, record the uplink.
    Touch(Vec<String>),
    Connect {
        device: String,
        device_type: Option<String>,
    },
    Disconnect(String),
    Request {
        wire: u32,
        expect: Expect,
        timeout: Duration,
        /// Sub-device whose uplink this is.
        device: Option<String>,
    },
    RpcReply {
        device: Option<String>,
        id: u64,
    },
    /// The download of this kind starts.
    OtaDownload(OtaKind),
    /// This version is installed now.
    OtaUpdated {
        kind: OtaKind,
        version: OtaVersion,
    },
    /// The application gave up on this kind.
    OtaFailed(OtaKind),
}

impl Commit {
    /// Committing changes nothing the send order depends on (no announce gets queued).
    pub(crate) fn is_quiet(&self) -> bool {
        matches!(self, Self::Nothing | Self::TouchOne { known: Some(_), .. })
    }
}

/// A publish the connection makes on its own, served before the application's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LaneItem {
    /// `v1/gateway/connect` after a (re)connect.
    Announce(String),
    /// An attribute request that counts as activity for a silent sub-device.
    Keepalive(String),
}

#[derive(Debug)]
pub(crate) struct Api {
    role: Role,
    registry: Registry,
    requests: PendingRequests,
    server_rpcs: ServerRpcs,
    /// Announces and keep-alives waiting for the in-flight window. At most one entry per
    /// tracked sub-device (the registry's `queued` mark); cleared when the session ends.
    lane: VecDeque<LaneItem>,
    /// Requests not finished yet that (may) have put sub-devices on the server: an
    /// application connect (its device), or data that started tracking new sub-devices
    /// (those). A rejection (MQTT 5 PUBACK failure code, e.g. 0x97 at the device limit)
    /// means the server did not connect them: they are forgotten. Bounded like the publishes
    /// they belong to (`max_buffered_bytes`); entries leave with their outcome.
    connects: IdMap<u64, Vec<String>>,
    /// Application disconnect commands not finished yet: request id → device. If the device
    /// is tracked again when its disconnect finishes (a later command named it, and the
    /// re-announce after a reconnect may have gone out before this older disconnect), it is
    /// announced once more so the server's last word is a connect. Bounded like `connects`.
    disconnects: IdMap<u64, String>,
    keepalive_after: Option<Duration>,
    attribute_timeout: Duration,
    rpc_timeout: Duration,
    /// When the next idle sweep is due (while connected).
    next_sweep: Option<Instant>,
    /// Topic family of the Device API.
    family: TopicFamily,
    /// The device profile is PROTOBUF ([`Config::protobuf_profile`]).
    protobuf: bool,
    /// What the connection must act on (taken after each downlink or ack).
    signals: Vec<Signal>,
    /// Firmware/software updates, when configured.
    ota: Option<Ota>,
    /// Reused buffer payloads are encoded into before being copied out at their exact size.
    scratch: Vec<u8>,
}

impl Api {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            role: config.role,
            registry: Registry::new(config.max_sub_devices),
            requests: PendingRequests::new(config.max_pending_requests),
            server_rpcs: ServerRpcs::new(config.max_pending_server_rpcs),
            lane: VecDeque::new(),
            connects: IdMap::default(),
            disconnects: IdMap::default(),
            keepalive_after: config.sub_device_keepalive,
            attribute_timeout: config.attribute_request_timeout,
            rpc_timeout: config.rpc_timeout,
            next_sweep: None,
            family: config.device_topics,
            protobuf: config.protobuf_profile,
            signals: Vec::new(),
            ota: if config.is_provisioning() {
                None
            } else {
                config.ota.as_ref().map(Ota::new)
            },
            scratch: Vec::new(),
        }
    }

    /// Keeps `buf` for the next command unless a large message grew it (the scratch buffer
    /// never holds more than [`SCRATCH_KEEP`] bytes between commands); a payload still in a
    /// buffer that is not kept is copied out.
    fn keep_scratch(&mut self, buf: Vec<u8>, payload: PreparedPayload) -> PreparedPayload {
        if buf.capacity() <= SCRATCH_KEEP {
            self.scratch = buf;
            return payload;
        }
        self.scratch = Vec::new();
        match payload {
            PreparedPayload::Scratch => PreparedPayload::Owned(Bytes::copy_from_slice(&buf)),
            owned => owned,
        }
    }

    /// The bytes of a prepared payload.
    pub(crate) fn payload_bytes<'a>(&'a self, payload: &'a PreparedPayload) -> &'a [u8] {
        match payload {
            PreparedPayload::Scratch => &self.scratch,
            PreparedPayload::Owned(bytes) => bytes,
        }
    }

    /// A prepared payload as its own bytes, copied out of the scratch buffer at its exact
    /// size if it is there (no message keeps the slack of the buffer's growth steps).
    pub(crate) fn own_payload(&self, payload: PreparedPayload) -> Bytes {
        match payload {
            PreparedPayload::Scratch => Bytes::copy_from_slice(&self.scratch),
            PreparedPayload::Owned(bytes) => bytes,
        }
    }

    /// Whether ThingsBoard reads (and writes) `family`'s topics as protobuf: `/p` always,
    /// v1 and plain v2 when the device profile is PROTOBUF.
    fn reads_protobuf(&self, family: TopicFamily) -> bool {
        match family {
            TopicFamily::V2Proto => true,
            TopicFamily::V1 | TopicFamily::V2 => self.protobuf,
            _ => false,
        }
    }

    /// Signals found since the last call.
    pub(crate) fn take_signals(&mut self) -> Vec<Signal> {
        std::mem::take(&mut self.signals)
    }

    /// Registers the connection's own `getSessionLimits` request, writes its payload and
    /// returns its wire id (the topic is `v1/devices/me/rpc/request/{id}`: ThingsBoard
    /// answers it on the v1 topic only).
    pub(crate) fn session_limits_request(&mut self, now: Instant, payload: &mut Vec<u8>) -> u32 {
        payload.clear();
        if self.protobuf {
            // The v1 topic is read with the profile's adaptor (see `Config::protobuf_profile`).
            ProtoRpcRequest::new(SessionLimits::METHOD, "{}").encode_into(payload);
        } else {
            RpcRequest::new(SessionLimits::METHOD, Value::Object(Map::new())).encode_into(payload);
        }
        let wire = self.requests.allocate();
        self.requests
            .insert_at(wire, None, Expect::SessionLimits, now + self.rpc_timeout);
        wire
    }

    /// Forgets a request registered but not sent.
    pub(crate) fn forget_request(&mut self, wire: u32) {
        self.requests.take(u64::from(wire));
    }

    pub(crate) fn fill_stats(&self, stats: &mut Stats) {
        stats.sub_devices = self.registry.len();
        stats.pending_requests = self.requests.len();
        stats.pending_server_rpcs = self.server_rpcs.len();
        if let Some(ota) = &self.ota {
            stats.ota_chunks = ota.chunks_received;
            stats.ota_chunk_retries = ota.chunk_retries;
        }
    }

    /// Whether `device` is tracked (for tests and invariant checks).
    pub(crate) fn is_registered(&self, device: &str) -> bool {
        self.registry.contains(device)
    }

    // ----- commands ---------------------------------------------------------------------

    /// Validates a command and builds its publish (or publishes, when it must be split to
    /// fit `fit`). Changes nothing but the wire-id counter.
    pub(crate) fn prepare(
        &mut self,
        command: Command,
        telemetry_qos: QoS,
        fit: &Fit,
    ) -> Result<Prepared, CommandError> {
        match command {
            Command::Publish {
                topic,
                payload,
                qos,
            } => Ok(Prepared {
                charge: None,
                topic: topic.into(),
                payload: PreparedPayload::Owned(payload),
                qos,
                commit: Commit::Nothing,
                more: Vec::new(),
            }),
            Command::Gateway(cmd) => {
                if self.role != Role::Gateway {
                    return Err(CommandError::NotAGateway);
                }
                self.prepare_gateway(cmd, telemetry_qos, fit)
            }
            Command::Device(cmd) => self.prepare_device(cmd, telemetry_qos, fit),
            Command::Ota(cmd) => self.prepare_ota(cmd),
        }
    }

    fn prepare_ota(&mut self, cmd: OtaCommand) -> Result<Prepared, CommandError> {
        let (payload, commit) = match cmd {
            OtaCommand::Download { kind } => {
                let ota = self
                    .ota
                    .as_ref()
                    .ok_or(CommandError::Ota(OtaCommandError::NotWatched(kind)))?;
                ota.check_download(kind).map_err(CommandError::Ota)?;
                (
                    state_telemetry(kind, OtaState::Downloading, None, None),
                    Commit::OtaDownload(kind),
                )
            }
            OtaCommand::Updating { kind } => (
                state_telemetry(kind, OtaState::Updating, None, None),
                Commit::Nothing,
            ),
            OtaCommand::Updated { kind, version } => (
                state_telemetry(kind, OtaState::Updated, None, Some(&version)),
                Commit::OtaUpdated { kind, version },
            ),
            OtaCommand::Failed { kind, error } => (
                state_telemetry(kind, OtaState::Failed, Some(&error), None),
                Commit::OtaFailed(kind),
            ),
        };
        Ok(Prepared {
            topic: topic::DEVICE_TELEMETRY.into(),
            payload: PreparedPayload::Owned(payload),
            qos: QoS::AtLeastOnce,
            commit,
            // State telemetry: charged by its data points when it is about to go (only if
            // the device is paced); never split (a few small keys).
            charge: None,
            more: Vec::new(),
        })
    }

    fn prepare_gateway(
        &mut self,
        cmd: GatewayCommand,
        telemetry_qos: QoS,
        fit_to: &Fit,
    ) -> Result<Prepared, CommandError> {
        let qos1 = QoS::AtLeastOnce;
        // With a PROTOBUF profile every gateway topic carries protobuf (see
        // `payload::gateway_protobuf`), and a message is never split: one that does not fit is
        // refused when it is admitted (`CommandError::TooLarge`).
        let proto = self.protobuf;
        let whole;
        let fit_to = if proto {
            whole = Fit {
                split: false,
                ..*fit_to
            };
            &whole
        } else {
            fit_to
        };
        // The reused scratch buffer: each payload is copied out at its exact size, so no
        // message keeps the slack of the buffer's growth steps. An early error return
        // drops it (the next command starts a new one).
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let (topic, qos, commit, body) = match cmd {
            GatewayCommand::Connect {
                device,
                device_type,
            } => {
                self.registry.check([device.as_str()])?;
                let connect = Connect {
                    device: device.clone(),
                    device_type: device_type.clone(),
                };
                if proto {
                    buf.extend_from_slice(&connect.to_protobuf());
                } else {
                    connect.encode_into(&mut buf);
                }
                (
                    topic::GATEWAY_CONNECT,
                    qos1,
                    Commit::Connect {
                        device,
                        device_type,
                    },
                    Body {
                        charge: Charge::sub_device_connect(),
                        ..Body::message(topic::GATEWAY_CONNECT)
                    },
                )
            }
            GatewayCommand::Disconnect { device } => {
                if device.is_empty() {
                    return Err(CommandError::EmptyDeviceName);
                }
                let disconnect = Disconnect {
                    device: device.clone(),
                };
                if proto {
                    buf.extend_from_slice(&disconnect.to_protobuf());
                } else {
                    disconnect.encode_into(&mut buf);
                }
                (
                    topic::GATEWAY_DISCONNECT,
                    qos1,
                    Commit::Disconnect(device),
                    Body::message(topic::GATEWAY_DISCONNECT),
                )
            }
            GatewayCommand::Telemetry { device, entries } => {
                let known = self.registry.check_one(&device)?;
                check_entries(&entries)?;
                let size = Size::entries(&entries);
                let entries = if proto {
                    let one = GatewayTelemetry {
                        devices: BTreeMap::from([(device.clone(), entries)]),
                    };
                    buf.extend_from_slice(&one.to_protobuf());
                    // Only read to split, which protobuf messages never are.
                    Vec::new()
                } else {
                    write_gateway_telemetry_entries(&mut buf, &device, &entries);
                    entries
                };
                let body = fit(
                    size,
                    || Message::gateway_telemetry(&device, &entries),
                    Counted::Telemetry,
                    topic::GATEWAY_TELEMETRY,
                    telemetry_qos,
                    &buf,
                    fit_to,
                )?;
                (
                    topic::GATEWAY_TELEMETRY,
                    telemetry_qos,
                    Commit::TouchOne { device, known },
                    body,
                )
            }
            GatewayCommand::TelemetryBatch(batch) => {
                if batch.devices.is_empty() {
                    return Err(CommandError::Payload(PayloadError::NoDeviceEntries));
                }
                self.registry
                    .check(batch.devices.keys().map(String::as_str))?;
                for entries in batch.devices.values() {
                    check_entries(entries)?;
                }
                if proto {
                    buf.extend_from_slice(&batch.to_protobuf());
                } else {
                    batch.encode_into(&mut buf);
                }
                let body = fit(
                    Size::batch(&batch),
                    || Message::gateway_batch(&batch),
                    Counted::Telemetry,
                    topic::GATEWAY_TELEMETRY,
                    telemetry_qos,
                    &buf,
                    fit_to,
                )?;
                let devices = batch.devices.into_keys().collect();
                (
                    topic::GATEWAY_TELEMETRY,
                    telemetry_qos,
                    Commit::Touch(devices),
                    body,
                )
            }
            GatewayCommand::Attributes { device, values } => {
                let known = self.registry.check_one(&device)?;
                let size = Size::values(&values);
                let values = if proto {
                    let one = GatewayAttributes {
                        devices: BTreeMap::from([(device.clone(), values)]),
                    };
                    buf.extend_from_slice(&one.to_protobuf());
                    // Only read to split, which protobuf messages never are.
                    Map::new()
                } else {
                    write_gateway_attributes(&mut buf, &device, &values);
                    values
                };
                let body = fit(
                    size,
                    || Message::gateway_attributes(&device, &values),
                    Counted::Attributes,
                    topic::GATEWAY_ATTRIBUTES,
                    telemetry_qos,
                    &buf,
                    fit_to,
                )?;
                (
                    topic::GATEWAY_ATTRIBUTES,
                    telemetry_qos,
                    Commit::TouchOne { device, known },
                    body,
                )
            }
            GatewayCommand::Claim { device, claim } => {
                let known = self.registry.check_one(&device)?;
                if proto {
                    let one = GatewayClaim {
                        devices: BTreeMap::from([(device.clone(), claim)]),
                    };
                    buf.extend_from_slice(&one.to_protobuf());
                } else {
                    write_gateway_claim(&mut buf, &device, &claim);
                }
                (
                    topic::GATEWAY_CLAIM,
                    qos1,
                    Commit::TouchOne { device, known },
                    Body::message(topic::GATEWAY_CLAIM),
                )
            }
            GatewayCommand::RequestAttributes {
                device,
                scope,
                keys,
            } => {
                self.registry.check([device.as_str()])?;
                if keys.is_empty() {
                    return Err(CommandError::Payload(PayloadError::MissingField("keys")));
                }
                if !self.requests.has_room() {
                    return Err(CommandError::TooManyRequests {
                        max: self.requests.capacity(),
                    });
                }
                let wire = self.requests.allocate();
                let single_key = match keys.as_slice() {
                    [one] => Some(one.clone()),
                    _ => None,
                };
                let request = GatewayAttributeRequest {
                    id: u64::from(wire),
                    device: device.clone(),
                    client: scope == AttributeScope::Client,
                    keys: match &single_key {
                        Some(k) => RequestedKeys::Key(k.clone()),
                        None => RequestedKeys::Keys(keys),
                    },
                };
                if proto {
                    buf.extend_from_slice(&request.to_protobuf());
                } else {
                    request.encode_into(&mut buf);
                }
                (
                    topic::GATEWAY_ATTRIBUTES_REQUEST,
                    qos1,
                    Commit::Request {
                        wire,
                        expect: Expect::GatewayAttributes {
                            device: device.clone(),
                            scope,
                            single_key,
                        },
                        timeout: self.attribute_timeout,
                        device: Some(device),
                    },
                    Body::message(topic::GATEWAY_ATTRIBUTES_REQUEST),
                )
            }
            GatewayCommand::RpcReply { device, id, data } => {
                if !self.server_rpcs.contains(Some(&device), id) {
                    return Err(CommandError::UnknownRpc {
                        device: Some(device),
                        id,
                    });
                }
                let reply = GatewayRpcResponse {
                    device: device.clone(),
                    id,
                    data,
                };
                if proto {
                    buf.extend_from_slice(&reply.to_protobuf());
                } else {
                    reply.encode_into(&mut buf);
                }
                (
                    topic::GATEWAY_RPC,
                    qos1,
                    Commit::RpcReply {
                        device: Some(device),
                        id,
                    },
                    Body::message(topic::GATEWAY_RPC),
                )
            }
        };
        let payload = self.keep_scratch(buf, body.payload);
        Ok(Prepared {
            topic: Cow::Borrowed(topic),
            payload,
            qos,
            commit,
            charge: Some(body.charge),
            more: body.more,
        })
    }

    fn prepare_device(
        &mut self,
        cmd: DeviceCommand,
        telemetry_qos: QoS,
        fit_to: &Fit,
    ) -> Result<Prepared, CommandError> {
        let qos1 = QoS::AtLeastOnce;
        let family = self.family;
        let protobuf = self.reads_protobuf(family);
        let json_family = || {
            if protobuf {
                Err(CommandError::JsonOnProtobufTopic)
            } else {
                Ok(family)
            }
        };
        // The reused scratch buffer: each payload is copied out at its exact size, so no
        // message keeps the slack of the buffer's growth steps. An early error return
        // drops it (the next command starts a new one).
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let (topic, qos, commit, body) = match cmd {
            DeviceCommand::Telemetry(entries) => {
                let family = json_family()?;
                check_entries(&entries)?;
                match entries.as_slice() {
                    [one] => write_device_telemetry(&mut buf, one.ts, &one.values),
                    _ => {
                        // The array form of `DeviceTelemetry`, without moving the entries.
                        buf.extend_from_slice(b"[");
                        for (i, e) in entries.iter().enumerate() {
                            if i > 0 {
                                buf.extend_from_slice(b",");
                            }
                            e.write(&mut buf);
                        }
                        buf.extend_from_slice(b"]");
                    }
                }
                let topic = family.telemetry_topic();
                let body = fit(
                    Size::entries(&entries),
                    || Message::device_telemetry(&entries),
                    Counted::Telemetry,
                    topic,
                    telemetry_qos,
                    &buf,
                    fit_to,
                )?;
                (topic.to_owned(), telemetry_qos, Commit::Nothing, body)
            }
            DeviceCommand::Attributes(values) => {
                let family = json_family()?;
                // The form of `ClientAttributes`, without moving the values.
                crate::payload::WriteJson::write_json(&values, &mut buf);
                let topic = family.attributes_topic();
                let body = fit(
                    Size::values(&values),
                    || Message::device_attributes(&values),
                    Counted::Attributes,
                    topic,
                    telemetry_qos,
                    &buf,
                    fit_to,
                )?;
                (topic.to_owned(), telemetry_qos, Commit::Nothing, body)
            }
            DeviceCommand::Claim(claim) => {
                // The claim topic is read with the profile's adaptor.
                if self.protobuf {
                    return Err(CommandError::JsonOnProtobufTopic);
                }
                claim.encode_into(&mut buf);
                (
                    topic::DEVICE_CLAIM.to_owned(),
                    qos1,
                    Commit::Nothing,
                    Body::message(topic::DEVICE_CLAIM),
                )
            }
            DeviceCommand::RequestAttributes {
                client_keys,
                shared_keys,
            } => {
                let family = json_family()?;
                let request = DeviceAttributeRequest::new(client_keys, shared_keys)
                    .map_err(CommandError::Payload)?;
                if !self.requests.has_room() {
                    return Err(CommandError::TooManyRequests {
                        max: self.requests.capacity(),
                    });
                }
                request.encode_into(&mut buf);
                let wire = self.requests.allocate();
                let topic =
                    topic::topic_with_id(IdTopicKind::AttributeRequest, family, u64::from(wire));
                let body = Body::message(&topic);
                (
                    topic,
                    qos1,
                    Commit::Request {
                        wire,
                        expect: Expect::DeviceAttributes,
                        timeout: self.attribute_timeout,
                        device: None,
                    },
                    body,
                )
            }
            DeviceCommand::RpcReply { id, data } => {
                let Some(family) = self.server_rpcs.family(None, id) else {
                    return Err(CommandError::UnknownRpc { device: None, id });
                };
                if self.reads_protobuf(family) {
                    return Err(CommandError::JsonOnProtobufTopic);
                }
                data.encode_into(&mut buf);
                let topic = topic::rpc_response_topic_v2(family, id);
                let body = Body::message(&topic);
                (topic, qos1, Commit::RpcReply { device: None, id }, body)
            }
            DeviceCommand::Rpc { method, params } => {
                let family = json_family()?;
                if !self.requests.has_room() {
                    return Err(CommandError::TooManyRequests {
                        max: self.requests.capacity(),
                    });
                }
                RpcRequest { method, params }.encode_into(&mut buf);
                let wire = self.requests.allocate();
                let topic = topic::topic_with_id(IdTopicKind::RpcRequest, family, u64::from(wire));
                let body = Body::message(&topic);
                (
                    topic,
                    qos1,
                    Commit::Request {
                        wire,
                        expect: Expect::ClientRpc,
                        timeout: self.rpc_timeout,
                        device: None,
                    },
                    body,
                )
            }
            DeviceCommand::Raw(raw) => return self.prepare_raw(raw, telemetry_qos),
        };
        let payload = self.keep_scratch(buf, body.payload);
        Ok(Prepared {
            topic: topic.into(),
            payload,
            qos,
            commit,
            charge: Some(body.charge),
            more: body.more,
        })
    }

    /// A wire id for a raw request, if there is room for one more pending request.
    fn raw_request_wire(&mut self) -> Result<u32, CommandError> {
        if !self.requests.has_room() {
            return Err(CommandError::TooManyRequests {
                max: self.requests.capacity(),
            });
        }
        Ok(self.requests.allocate())
    }

    /// A Device API message the application encoded: published as is on the family's topic.
    fn prepare_raw(
        &mut self,
        raw: RawUplink,
        telemetry_qos: QoS,
    ) -> Result<Prepared, CommandError> {
        let family = self.family;
        let qos1 = QoS::AtLeastOnce;
        let (topic, payload, qos, commit, charge) = match raw {
            RawUplink::Telemetry {
                payload,
                data_points,
            } => (
                family.telemetry_topic().to_owned(),
                payload,
                telemetry_qos,
                Commit::Nothing,
                Charge::telemetry(Scope::Device, 1, data_points),
            ),
            RawUplink::Attributes {
                payload,
                data_points,
            } => (
                family.attributes_topic().to_owned(),
                payload,
                telemetry_qos,
                Commit::Nothing,
                Charge::attributes(Scope::Device, 1, data_points),
            ),
            RawUplink::RequestAttributes(payload) => {
                let wire = self.raw_request_wire()?;
                (
                    topic::topic_with_id(IdTopicKind::AttributeRequest, family, u64::from(wire)),
                    payload,
                    qos1,
                    Commit::Request {
                        wire,
                        expect: Expect::RawAttributes,
                        timeout: self.attribute_timeout,
                        device: None,
                    },
                    Charge::message(Scope::Device),
                )
            }
            RawUplink::Rpc(payload) => {
                let wire = self.raw_request_wire()?;
                (
                    topic::topic_with_id(IdTopicKind::RpcRequest, family, u64::from(wire)),
                    payload,
                    qos1,
                    Commit::Request {
                        wire,
                        expect: Expect::RawRpc,
                        timeout: self.rpc_timeout,
                        device: None,
                    },
                    Charge::message(Scope::Device),
                )
            }
            RawUplink::RpcReply { id, payload } => {
                let Some(family) = self.server_rpcs.family(None, id) else {
                    return Err(CommandError::UnknownRpc { device: None, id });
                };
                (
                    topic::rpc_response_topic_v2(family, id),
                    payload,
                    qos1,
                    Commit::RpcReply { device: None, id },
                    Charge::message(Scope::Device),
                )
            }
        };
        Ok(Prepared {
            topic: topic.into(),
            payload: PreparedPayload::Owned(payload),
            qos,
            commit,
            charge: Some(charge),
            more: Vec::new(),
        })
    }

    /// The publish of `prepared` was admitted as request `id`: record what it implies.
    pub(crate) fn commit(
        &mut self,
        now: Instant,
        id: u64,
        commit: Commit,
        qos: QoS,
        out: &mut OutputQueue,
    ) {
        match commit {
            Commit::Nothing => {}
            Commit::OtaDownload(kind) => {
                if let Some(ota) = &mut self.ota {
                    ota.start_download(kind, out);
                }
            }
            Commit::OtaUpdated { kind, version } => {
                if let Some(ota) = &mut self.ota {
                    ota.on_updated(kind, version);
                }
            }
            Commit::OtaFailed(kind) => {
                if let Some(ota) = &mut self.ota {
                    ota.on_app_failed(kind, out);
                }
            }
            Commit::TouchOne { device, known } => match known {
                Some(slot) => self.registry.touch_slot(slot, now),
                None => {
                    self.registry.touch(&device, None, now);
                    self.track_new(id, qos, vec![device]);
                }
            },
            Commit::Touch(devices) => {
                let mut new = Vec::new();
                for device in devices {
                    if !self.registry.contains(&device) {
                        new.push(device.clone());
                    }
                    self.registry.touch(&device, None, now);
                }
                self.track_new(id, qos, new);
            }
            Commit::Connect {
                device,
                device_type,
            } => {
                self.registry.touch(&device, device_type.as_deref(), now);
                self.connects.insert(id, vec![device]);
            }
            Commit::Disconnect(device) => {
                self.registry.remove(&device);
                self.disconnects.insert(id, device);
            }
            Commit::Request {
                wire,
                expect,
                timeout,
                device,
            } => {
                if let Some(device) = device {
                    let new = !self.registry.contains(&device);
                    self.registry.touch(&device, None, now);
                    if new {
                        self.track_new(id, qos, vec![device]);
                    }
                }
                self.requests
                    .insert_at(wire, Some(id), expect, now + timeout);
            }
            Commit::RpcReply { device, id: rpc } => {
                // A reply is activity for a tracked sub-device, but does not start tracking
                // one: the server routed the RPC here, the application never announced it,
                // and the registry bound must hold.
                if let Some(d) = &device {
                    self.registry.touch_if_tracked(d, now);
                }
                self.server_rpcs.take(device.as_deref(), rpc);
            }
        }
    }

    /// Data just started tracking the sub-devices `new` (an implicit connect on the server).
    /// At QoS 1 its PUBACK tells whether the server could connect them (`on_outcome`); at
    /// QoS 0 nothing would, so they are announced explicitly (a QoS 1 `v1/gateway/connect`
    /// from the lane, ahead of the data), whose refusal forgets them like a re-announce's.
    /// Without this, a device the server refused (device limit) stayed tracked, and the
    /// gateway believed it reachable until the next reconnect.
    fn track_new(&mut self, id: u64, qos: QoS, new: Vec<String>) {
        if new.is_empty() || self.role != Role::Gateway {
            return;
        }
        if qos == QoS::AtMostOnce {
            for device in new {
                if self.registry.mark_queued(&device) {
                    self.lane.push_back(LaneItem::Announce(device));
                }
            }
        } else {
            self.connects.insert(id, new);
        }
    }

    /// A publish ended: `Ok` = acknowledged (or sent, at QoS 0). Returns whether that is the
    /// request's outcome; `false` when the request still awaits its answer, or when it had
    /// already ended (its answer or response deadline came first).
    pub(crate) fn on_outcome(&mut self, id: u64, result: Result<(), &RequestError>) -> bool {
        if let Some(devices) = idmap::take(&mut self.connects, &id) {
            match result {
                Err(RequestError::Rejected(_)) => {
                    // Not connected on the server (device limit or another failure): forget
                    // them, or the gateway would believe them reachable and every reconnect
                    // would announce them again.
                    for device in devices {
                        self.registry.remove(&device);
                    }
                }
                Err(RequestError::Timeout) => {
                    // Whether the server connected them is unknown (a late refusal is not
                    // matched to a finished request): announce them, whose answer settles it.
                    for device in devices {
                        if self.registry.mark_queued(&device) {
                            self.lane.push_back(LaneItem::Announce(device));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(device) = idmap::take(&mut self.disconnects, &id) {
            if self.role == Role::Gateway && self.registry.mark_queued(&device) {
                self.lane.push_back(LaneItem::Announce(device));
            }
        }
        match result {
            Ok(()) if self.requests.tracks(id) => {
                self.requests.mark_acked(id);
                false
            }
            Ok(()) => true,
            Err(_) => {
                self.requests.take_request(id);
                true
            }
        }
    }

    /// Response deadlines passed: the requests to fail with `Timeout` (keep-alives vanish;
    /// an unanswered OTA attribute request is the OTA state machine's business).
    pub(crate) fn expire(&mut self, now: Instant, out: &mut OutputQueue) -> Vec<u64> {
        let mut failed = Vec::new();
        for p in self.requests.expire(now) {
            match (p.request, p.expect) {
                (Some(id), _) => failed.push(id),
                (None, Expect::OtaInfo) => {
                    if let Some(ota) = &mut self.ota {
                        ota.on_info_timeout(out);
                    }
                }
                (None, _) => {}
            }
        }
        failed
    }

    /// When the outstanding OTA chunk is due.
    pub(crate) fn ota_deadline(&self) -> Option<Instant> {
        self.ota.as_ref().and_then(Ota::next_deadline)
    }

    /// The OTA chunk deadline passed.
    pub(crate) fn ota_timeout(&mut self, now: Instant, out: &mut OutputQueue) {
        if let Some(ota) = &mut self.ota {
            ota.on_timeout(now, out);
        }
    }

    /// OTA state telemetry the connection must publish on its own, oldest first.
    pub(crate) fn take_ota_report(&mut self) -> Option<(OtaKind, Bytes)> {
        self.ota.as_mut().and_then(Ota::take_report)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.requests.next_deadline()
    }

    // ----- session life -------------------------------------------------------------------

    /// A CONNACK arrived: every sub-device is announced again, ahead of queued data.
    pub(crate) fn on_connected(&mut self, now: Instant) {
        self.lane.clear();
        if self.role == Role::Gateway {
            self.lane.extend(
                self.registry
                    .queue_all()
                    .into_iter()
                    .map(LaneItem::Announce),
            );
        }
        self.next_sweep = self.keepalive_after.map(|after| now + after);
        if let Some(ota) = &mut self.ota {
            ota.on_connected();
        }
    }

    /// The session ended. Returns the requests whose answers can no longer arrive.
    pub(crate) fn on_connection_lost(&mut self) -> Vec<u64> {
        if let Some(ota) = &mut self.ota {
            ota.on_connection_lost();
        }
        self.lane.clear();
        self.registry.clear_queued();
        self.next_sweep = None;
        self.requests
            .connection_lost()
            .into_iter()
            .filter_map(|p| p.request)
            .collect()
    }

    /// The application closed the connection: requests awaiting an answer (whose publishes
    /// already finished) are returned to be failed.
    pub(crate) fn on_close(&mut self) -> Vec<u64> {
        if let Some(ota) = &mut self.ota {
            ota.on_connection_lost();
        }
        self.lane.clear();
        self.next_sweep = None;
        self.connects.clear();
        self.disconnects.clear();
        self.requests
            .drain_all()
            .into_iter()
            .filter_map(|p| p.request)
            .collect()
    }

    /// When the idle sweep is due.
    pub(crate) fn next_sweep(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Queues keep-alives for sub-devices silent for too long and schedules the next sweep.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let Some(after) = self.keepalive_after else {
            return;
        };
        let (due, next) = self.registry.take_idle(now, after);
        self.lane.extend(due.into_iter().map(LaneItem::Keepalive));
        let granularity = after / 16;
        self.next_sweep = Some(match next {
            Some(at) => at.max(now + granularity),
            None => now + after,
        });
    }

    /// Sub-devices tracked (each has a child session on the server while connected).
    pub(crate) fn sub_device_count(&self) -> usize {
        self.registry.len()
    }

    /// Whether connection-made publishes are waiting (they go before the queue).
    pub(crate) fn lane_pending(&self) -> bool {
        !self.lane.is_empty()
    }

    /// What the next connection-made publish takes from the gateway's buckets: an announce
    /// creates and opens a child session on the server, a keep-alive is one request.
    /// Items for devices forgotten meanwhile are dropped first, so the charge is that of
    /// the publish [`next_lane`](Self::next_lane) then makes.
    pub(crate) fn lane_charge(&mut self) -> Option<Charge> {
        loop {
            let item = self.lane.front()?;
            let (LaneItem::Announce(device) | LaneItem::Keepalive(device)) = item;
            if self.registry.device_type(device).is_some() {
                return Some(match item {
                    LaneItem::Announce(_) => Charge::sub_device_connect(),
                    LaneItem::Keepalive(_) => Charge::message(Scope::Gateway),
                });
            }
            self.lane.pop_front();
        }
    }

    /// The server's payload limit (`maxPayloadSize`) was learned: OTA chunk requests stay
    /// within it.
    pub(crate) fn cap_ota_chunk(&mut self, cap: Option<usize>) {
        if let Some(ota) = &mut self.ota {
            ota.set_chunk_cap(cap);
        }
    }

    /// Whether an OTA request waits (served after the queue).
    pub(crate) fn ota_pending(&self) -> bool {
        self.ota.as_ref().is_some_and(Ota::wants_send)
    }

    /// Takes the next connection-made publish and writes its topic and payload. Items for
    /// devices forgotten meanwhile are skipped. The returned tag goes into the packet-id slot.
    pub(crate) fn next_lane(
        &mut self,
        now: Instant,
        topic_out: &mut String,
        payload: &mut Vec<u8>,
    ) -> Option<ControlTag> {
        topic_out.clear();
        payload.clear();
        loop {
            let item = self.lane.pop_front()?;
            if self.lane.is_empty() && self.lane.capacity() > 1024 {
                // A re-announce of many sub-devices grew the lane; do not keep that memory
                // (32 bytes per sub-device) for the rest of the session.
                self.lane = VecDeque::new();
            }
            let (LaneItem::Announce(device) | LaneItem::Keepalive(device)) = &item;
            let Some(device_type) = self.registry.device_type(device) else {
                continue;
            };
            payload.clear();
            let result = match &item {
                LaneItem::Announce(device) => {
                    Connect {
                        device: device.clone(),
                        device_type: device_type.map(str::to_owned),
                    }
                    .encode_into(payload);
                    (topic::GATEWAY_CONNECT, ControlTag::Announce(device.clone()))
                }
                LaneItem::Keepalive(device) => {
                    let wire = self.requests.allocate();
                    GatewayAttributeRequest {
                        id: u64::from(wire),
                        device: device.clone(),
                        client: true,
                        keys: RequestedKeys::Key(KEEPALIVE_KEY.to_owned()),
                    }
                    .encode_into(payload);
                    self.requests.insert_at(
                        wire,
                        None,
                        Expect::Keepalive {
                            device: device.clone(),
                        },
                        now + self.attribute_timeout,
                    );
                    (
                        topic::GATEWAY_ATTRIBUTES_REQUEST,
                        ControlTag::Keepalive(wire),
                    )
                }
            };
            self.registry.dequeued(device);
            // A new child session (or one kept alive) counts from now.
            self.registry.touch(device, None, now);
            topic_out.push_str(result.0);
            return Some(result.1);
        }
    }

    /// Takes the OTA attribute request, or the next chunk request, and writes its topic and
    /// payload.
    pub(crate) fn next_ota(
        &mut self,
        now: Instant,
        topic_out: &mut String,
        payload: &mut Vec<u8>,
    ) -> Option<ControlTag> {
        topic_out.clear();
        payload.clear();
        let ota = self.ota.as_mut()?;
        if ota.take_info() {
            let keys = ota.info_keys();
            let Ok(request) = DeviceAttributeRequest::new(Vec::new(), keys) else {
                return None;
            };
            let wire = self.requests.allocate();
            request.encode_into(payload);
            self.requests
                .insert_at(wire, None, Expect::OtaInfo, now + self.attribute_timeout);
            topic_out.push_str(&topic::attribute_request_topic(u64::from(wire)));
            return Some(ControlTag::OtaInfo(wire));
        }
        let chunk = ota.take_chunk(now)?;
        payload.extend_from_slice(ota.chunk_size_text(chunk.kind).as_bytes());
        topic_out.push_str(&topic::ota_chunk_request_topic(
            chunk.kind,
            u64::from(chunk.request_id),
            u64::from(chunk.chunk),
        ));
        Some(ControlTag::OtaChunk(chunk))
    }

    /// The window had no room after all: put the item back at the front.
    pub(crate) fn unpop_lane(&mut self, tag: ControlTag) {
        match tag {
            ControlTag::OtaInfo(wire) => {
                self.requests.take(u64::from(wire));
                if let Some(ota) = &mut self.ota {
                    ota.untake_info();
                }
            }
            ControlTag::OtaChunk(chunk) => {
                if let Some(ota) = &mut self.ota {
                    ota.untake_chunk(chunk.kind);
                }
            }
            ControlTag::Announce(device) => self.lane.push_front(LaneItem::Announce(device)),
            ControlTag::Keepalive(wire) => {
                if let Some(Pending {
                    expect: Expect::Keepalive { device },
                    ..
                }) = self.requests.take(u64::from(wire))
                {
                    self.lane.push_front(LaneItem::Keepalive(device));
                }
            }
            // Not a lane item.
            ControlTag::SessionLimits(_) => {}
        }
    }

    /// A connection-made publish was acknowledged with `code`.
    pub(crate) fn on_control_ack(
        &mut self,
        tag: ControlTag,
        code: ReasonCode,
        out: &mut OutputQueue,
    ) {
        match tag {
            ControlTag::OtaInfo(wire) => {
                if code.is_success() {
                    self.requests.mark_wire_acked(wire);
                } else if self.requests.take(u64::from(wire)).is_some() {
                    if let Some(ota) = &mut self.ota {
                        ota.on_info_timeout(out);
                    }
                }
            }
            // ThingsBoard acknowledges chunk requests with success or not at all (errors
            // come on `v2/fw/error`); the chunk's deadline covers both.
            ControlTag::OtaChunk(_) => {}
            ControlTag::Announce(device) => {
                if !code.is_success() && self.registry.remove(&device) {
                    out.event(Event::Warning(Warning::ReannounceRejected { device, code }));
                }
            }
            ControlTag::Keepalive(wire) => {
                if code.is_success() {
                    self.requests.mark_wire_acked(wire);
                } else {
                    self.requests.take(u64::from(wire));
                }
            }
            ControlTag::SessionLimits(wire) => {
                if code.is_success() {
                    self.requests.mark_wire_acked(wire);
                } else if self.requests.take(u64::from(wire)).is_some() {
                    self.signals.push(Signal::LimitsUnanswered);
                }
            }
        }
    }

    // ----- downlinks ----------------------------------------------------------------------

    /// A PUBLISH from the server. API topics become typed events (or a warning when the
    /// payload makes no sense); anything else is passed on as [`Event::Message`]. Returns the
    /// request whose answer this was, so the connection can retire its publish if the PUBACK
    /// is still outstanding.
    pub(crate) fn on_message(
        &mut self,
        topic: String,
        payload: Bytes,
        out: &mut OutputQueue,
    ) -> Option<u64> {
        let gateway = self.role == Role::Gateway;
        let Some(kind) = topic::classify(&topic) else {
            out.event(Event::Message { topic, payload });
            return None;
        };
        match kind {
            InboundTopic::DeviceRpcResponse { id, .. }
                if self.requests.get(id).map(|p| &p.expect) == Some(&Expect::SessionLimits) =>
            {
                self.on_session_limits(id, &payload);
                return None;
            }
            InboundTopic::DeviceRpcRequest {
                family: TopicFamily::V1,
                id,
            } if self.requests.get(id).map(|p| &p.expect) == Some(&Expect::SessionLimits)
                && self.is_own_limits_request(&payload) =>
            {
                // A plain MQTT broker hands our own request back (we subscribe to the RPC
                // request filter): nobody is going to answer it.
                self.requests.take(id);
                self.signals.push(Signal::LimitsUnanswered);
                return None;
            }
            InboundTopic::DeviceAttributesResponse { id, .. }
                if self.requests.get(id).map(|p| &p.expect) == Some(&Expect::RawAttributes) =>
            {
                return self.complete_raw(
                    id,
                    payload,
                    |request, payload| RawDownlink::AttributeResponse { request, payload },
                    out,
                );
            }
            InboundTopic::DeviceRpcResponse { id, .. }
                if self.requests.get(id).map(|p| &p.expect) == Some(&Expect::RawRpc) =>
            {
                return self.complete_raw(
                    id,
                    payload,
                    |request, payload| RawDownlink::RpcResponse { request, payload },
                    out,
                );
            }
            _ => {}
        }
        if kind.is_device_api() && self.reads_protobuf(kind.family()) {
            // Protobuf payloads follow the device profile's schema: the application decodes.
            // Typed as raw downlinks on the family the connection uses, passed on otherwise.
            if kind.family() == self.family {
                self.on_raw(topic, kind, payload, out);
            } else {
                out.event(Event::Message { topic, payload });
            }
            return None;
        }
        match kind {
            InboundTopic::GatewayAttributes if gateway => {
                let parsed = if self.protobuf {
                    GatewayAttributeUpdate::parse_protobuf(&payload)
                } else {
                    GatewayAttributeUpdate::parse(&payload)
                };
                match parsed {
                    Ok(u) => out.event(Event::AttributeUpdate {
                        device: Some(u.device),
                        values: u.update.values,
                        deleted: u.update.deleted,
                    }),
                    Err(error) => invalid(out, topic, error),
                }
                None
            }
            InboundTopic::GatewayAttributesResponse if gateway => {
                let parsed = if self.protobuf {
                    GatewayAttributeResponse::parse_protobuf(&payload)
                } else {
                    GatewayAttributeResponse::parse(&payload)
                };
                match parsed {
                    Ok(r) => self.on_gateway_attributes(topic, r, out),
                    Err(error) => {
                        invalid(out, topic, error);
                        None
                    }
                }
            }
            InboundTopic::GatewayRpc if gateway => {
                let parsed = if self.protobuf {
                    GatewayRpcRequest::parse_protobuf(&payload)
                } else {
                    GatewayRpcRequest::parse(&payload)
                };
                match parsed {
                    Ok(r) => self.on_rpc_request(
                        Some(r.device),
                        r.id,
                        TopicFamily::V1,
                        r.method,
                        r.params,
                        out,
                    ),
                    Err(error) => invalid(out, topic, error),
                }
                None
            }
            InboundTopic::GatewayDisconnect if gateway => {
                let parsed = if self.protobuf {
                    DisconnectNotice::parse_protobuf(&payload)
                } else {
                    DisconnectNotice::parse(&payload)
                };
                match parsed {
                    Ok(n) => {
                        if n.is_rate_limit() {
                            self.signals
                                .push(Signal::SubDeviceRateLimited(n.device.clone()));
                        }
                        out.event(Event::SubDeviceDisconnected {
                            device: n.device,
                            reason: ReasonCode::from_u8(n.reason),
                        })
                    }
                    Err(error) => invalid(out, topic, error),
                }
                None
            }
            InboundTopic::DeviceAttributes { .. } => {
                match AttributeUpdate::parse(&payload) {
                    Ok(u) => {
                        // The OTA keys are read after the application saw the update.
                        let ota_part = self
                            .ota
                            .as_ref()
                            .map(|_| (u.values.clone(), u.deleted.clone()));
                        out.event(Event::AttributeUpdate {
                            device: None,
                            values: u.values,
                            deleted: u.deleted,
                        });
                        if let (Some(ota), Some((values, deleted))) = (&mut self.ota, ota_part) {
                            ota.on_attributes(&values, &deleted, out);
                        }
                    }
                    Err(error) => invalid(out, topic, error),
                }
                None
            }
            InboundTopic::DeviceAttributesResponse { id, .. }
                if self
                    .requests
                    .get(id)
                    .is_some_and(|p| p.expect == Expect::OtaInfo) =>
            {
                match DeviceAttributeResponse::parse(&payload) {
                    Ok(r) => {
                        self.requests.take(id);
                        if let Some(ota) = &mut self.ota {
                            ota.on_info(&r.shared, out);
                        }
                    }
                    Err(error) => invalid(out, topic, error),
                }
                None
            }
            InboundTopic::OtaChunk {
                kind,
                request_id,
                chunk,
            } if self.ota.is_some() => {
                let matched = self
                    .ota
                    .as_mut()
                    .is_some_and(|ota| ota.on_chunk(kind, request_id, chunk, payload, out));
                if !matched {
                    out.event(Event::Warning(Warning::UnmatchedResponse {
                        topic,
                        id: chunk,
                    }));
                }
                None
            }
            InboundTopic::OtaError { .. } if self.ota.is_some() => {
                let text = String::from_utf8_lossy(&payload).into_owned();
                let consumed = self
                    .ota
                    .as_mut()
                    .is_some_and(|ota| ota.on_error(&text, out));
                if !consumed {
                    out.event(Event::Message { topic, payload });
                }
                None
            }
            InboundTopic::DeviceAttributesResponse { id, .. } => self.complete(
                topic,
                id,
                &payload,
                Expect::DeviceAttributes,
                out,
                |request, r: DeviceAttributeResponse| Event::AttributeResponse {
                    request,
                    device: None,
                    client: r.client,
                    shared: r.shared,
                },
            ),
            InboundTopic::DeviceRpcRequest { family, id } => {
                match RpcRequest::parse(&payload) {
                    Ok(rpc) => {
                        let notification = if gateway {
                            GatewayNotification::from_rpc(&rpc)
                        } else {
                            None
                        };
                        match notification {
                            Some(n) => self.on_notification(n, out),
                            None => {
                                self.on_rpc_request(None, id, family, rpc.method, rpc.params, out)
                            }
                        }
                    }
                    Err(error) => invalid(out, topic, error),
                }
                None
            }
            InboundTopic::DeviceRpcResponse { id, .. } => self.complete(
                topic,
                id,
                &payload,
                Expect::ClientRpc,
                out,
                |request, response| Event::RpcResponse { request, response },
            ),
            _ => {
                out.event(Event::Message { topic, payload });
                None
            }
        }
    }

    /// The transport's answer to `getSessionLimits` (wire id `id`).
    fn on_session_limits(&mut self, id: u64, payload: &[u8]) {
        self.requests.take(id);
        let unwrapped;
        let payload = if self.protobuf {
            match ProtoRpcResponse::parse(payload) {
                Ok(r) if r.error.is_empty() => {
                    unwrapped = r.payload;
                    unwrapped.as_bytes()
                }
                Ok(r) => {
                    let answer = Err(format!("the server answered {:?}", r.error));
                    return self.signals.push(Signal::Limits(answer));
                }
                Err(e) => return self.signals.push(Signal::Limits(Err(e.to_string()))),
            }
        } else {
            payload
        };
        let answer = match ClientRpcResponse::parse(payload) {
            Ok(ClientRpcResponse::Ok(value)) => {
                SessionLimits::from_value(value).map_err(|e| e.to_string())
            }
            Ok(ClientRpcResponse::Error(e)) => Err(format!("the server answered {e:?}")),
            Err(e) => Err(e.to_string()),
        };
        self.signals.push(Signal::Limits(answer));
    }

    /// Whether `payload` is this connection's own `getSessionLimits` request, reflected back
    /// by a plain MQTT broker.
    fn is_own_limits_request(&self, payload: &[u8]) -> bool {
        if self.protobuf {
            ProtoRpcRequest::parse(payload).is_ok_and(|r| r.method == SessionLimits::METHOD)
        } else {
            RpcRequest::parse(payload).is_ok_and(|r| r.method == SessionLimits::METHOD)
        }
    }

    /// The answer to a raw request: its outcome, as bytes.
    fn complete_raw(
        &mut self,
        id: u64,
        payload: Bytes,
        done: impl FnOnce(RequestId, Bytes) -> RawDownlink,
        out: &mut OutputQueue,
    ) -> Option<u64> {
        let request = self.requests.take(id)?.request?;
        out.event(Event::Raw(done(RequestId(request), payload)));
        Some(request)
    }

    /// A downlink on a `/p` topic of the family the connection uses.
    fn on_raw(&mut self, topic: String, kind: InboundTopic, payload: Bytes, out: &mut OutputQueue) {
        match kind {
            InboundTopic::DeviceAttributes { .. } => {
                out.event(Event::Raw(RawDownlink::AttributeUpdate(payload)));
            }
            InboundTopic::DeviceRpcRequest { family, id } => {
                if let Some((device, id)) = self.server_rpcs.insert(None, id, family) {
                    out.event(Event::Warning(Warning::ServerRpcForgotten { device, id }));
                }
                out.event(Event::Raw(RawDownlink::RpcRequest { id, payload }));
            }
            InboundTopic::DeviceAttributesResponse { id, .. }
            | InboundTopic::DeviceRpcResponse { id, .. } => {
                // Raw answers were matched before; nothing else waits on a `/p` topic.
                out.event(Event::Warning(Warning::UnmatchedResponse { topic, id }));
            }
            _ => out.event(Event::Message { topic, payload }),
        }
    }

    /// A device-API answer on `topic` for wire id `id`: if a request of kind `expect` waits
    /// for it and the payload parses as `P`, the request ends with the event `done` builds.
    /// Otherwise a warning, and the request keeps waiting.
    fn complete<P: Payload>(
        &mut self,
        topic: String,
        id: u64,
        payload: &[u8],
        expect: Expect,
        out: &mut OutputQueue,
        done: impl FnOnce(RequestId, P) -> Event,
    ) -> Option<u64> {
        if !self.requests.get(id).is_some_and(|p| p.expect == expect) {
            out.event(Event::Warning(Warning::UnmatchedResponse { topic, id }));
            return None;
        }
        match P::parse(payload) {
            Ok(answer) => {
                let request = self.requests.take(id)?.request?;
                out.event(done(RequestId(request), answer));
                Some(request)
            }
            Err(error) => {
                invalid(out, topic, error);
                None
            }
        }
    }

    fn on_gateway_attributes(
        &mut self,
        topic: String,
        response: GatewayAttributeResponse,
        out: &mut OutputQueue,
    ) -> Option<u64> {
        let id = response.id;
        let expected = match self.requests.get(id) {
            Some(Pending {
                expect: Expect::GatewayAttributes { device, .. } | Expect::Keepalive { device },
                ..
            }) => device == &response.device,
            _ => false,
        };
        if !expected {
            out.event(Event::Warning(Warning::UnmatchedResponse { topic, id }));
            return None;
        }
        let pending = self.requests.take(id)?;
        let Expect::GatewayAttributes {
            device,
            scope,
            single_key,
        } = pending.expect
        else {
            // A keep-alive's answer: consumed.
            return None;
        };
        let request = pending.request?;
        let found = match (response.result, single_key) {
            (AttributeResult::Values(values), _) => values,
            (AttributeResult::Value(value), Some(key)) => {
                let mut m = Map::new();
                m.insert(key, value);
                m
            }
            // A bare `value` for a multi-key request breaks ThingsBoard's own rule; the key
            // it belongs to is unknown, so nothing usable came back.
            (AttributeResult::Value(_), None) | (AttributeResult::NotFound, _) => Map::new(),
        };
        let (client, shared) = match scope {
            AttributeScope::Client => (found, Map::new()),
            AttributeScope::Shared => (Map::new(), found),
        };
        out.event(Event::AttributeResponse {
            request: RequestId(request),
            device: Some(device),
            client,
            shared,
        });
        Some(request)
    }

    fn on_rpc_request(
        &mut self,
        device: Option<String>,
        id: u64,
        family: TopicFamily,
        method: String,
        params: Value,
        out: &mut OutputQueue,
    ) {
        if let Some((device, id)) = self.server_rpcs.insert(device.clone(), id, family) {
            out.event(Event::Warning(Warning::ServerRpcForgotten { device, id }));
        }
        out.event(Event::RpcRequest {
            device,
            id,
            method,
            params,
        });
    }

    fn on_notification(&mut self, notification: GatewayNotification, out: &mut OutputQueue) {
        match notification {
            GatewayNotification::DeviceDeleted { device } => {
                self.registry.remove(&device);
                self.server_rpcs.remove_device(&device);
                out.event(Event::SubDeviceDeleted { device });
            }
            GatewayNotification::DeviceRenamed { old_name, new_name } => {
                self.registry.rename(&old_name, &new_name);
                self.server_rpcs.rename(&old_name, &new_name);
                self.requests.rename(&old_name, &new_name);
                for item in &mut self.lane {
                    let (LaneItem::Announce(d) | LaneItem::Keepalive(d)) = item;
                    if *d == old_name {
                        new_name.clone_into(d);
                    }
                }
                out.event(Event::SubDeviceRenamed { old_name, new_name });
            }
        }
    }
}

fn invalid(out: &mut OutputQueue, topic: String, error: PayloadError) {
    out.event(Event::Warning(Warning::InvalidMessage { topic, error }));
}

/// Telemetry needs at least one entry: `[]` is not data, and `{"Dev":[]}` may be refused.
fn check_entries(entries: &[TelemetryEntry]) -> Result<(), CommandError> {
    if entries.is_empty() {
        Err(CommandError::Payload(PayloadError::WrongShape {
            expected: "at least one telemetry entry",
        }))
    } else {
        Ok(())
    }
}
