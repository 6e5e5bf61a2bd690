//! The connection state machine: one MQTT session to ThingsBoard at a time, reconnecting
//! for ever, with nothing lost in between.
//!
//! Phases: waiting for a transport → waiting for CONNACK → connected → (session ends) →
//! waiting to reconnect → waiting for a transport … until [`Connection::close`].

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use crate::api::{Api, Commit, Fit, Prepared, PreparedPayload, Signal};
use crate::backoff::Backoff;
use crate::codec::{self, DecodeError, Packet, ProtocolVersion, QoS};
use crate::command::Command;
use crate::config::{Config, Credentials, PER_MESSAGE_OVERHEAD, PROVISION_IDENTITY};
use crate::error::{CommandError, ConfigError, ProtocolError};
use crate::event::{DisconnectReason, Event, RequestError, RequestId, Warning};
use crate::idmap::{self, IdMap};
use crate::limits::{self, Limits, PushBack, Traffic};
use crate::ota::OtaKind;
use crate::outbound::{Acked, ControlTag, Outbound, Ready};
use crate::output::{Output, OutputQueue};
use crate::pacing::{charge_of_publish, Charge, Scope};
use crate::provision::{self, ProvisionError, ProvisionedCredentials};
use crate::reason::{ConnectRefusal, ReasonCode};
use crate::split::{Groups, PartDone, Settled};
use crate::stats::Stats;
use crate::timer::{Timer, TimerTable};
use crate::topic;

/// Something that happened to the transport, or the passing of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input<'a> {
    /// The transport asked for by [`Output::OpenTransport`] is open (TCP connected, TLS
    /// handshake done). The CONNECT goes out now.
    TransportOpened,
    /// Bytes read from the transport, split anywhere.
    Bytes(&'a [u8]),
    /// The transport closed or failed, or could not be opened.
    TransportClosed,
    /// The deadline from [`Connection::poll_timeout`] has passed. Spurious calls are
    /// harmless.
    Timeout,
}

/// Where the connection is, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Waiting for a transport or for CONNACK.
    Connecting,
    /// The session is up.
    Connected,
    /// The last session ended; the next attempt starts at this instant.
    WaitingToReconnect(Instant),
    /// [`Connection::close`] was called. Terminal.
    Closed,
}

/// A publish the connection made on its own; its outcome is not an application event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
    /// The request of a provisioning connection.
    ProvisionRequest,
    /// OTA state telemetry.
    OtaReport(OtaKind),
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    AwaitTransport,
    AwaitConnAck,
    Connected {
        since: Instant,
        ping_outstanding: bool,
    },
    Backoff {
        until: Instant,
    },
    Closed,
}

/// A ThingsBoard MQTT client connection, without I/O.
///
/// Feed it with [`handle_input`](Self::handle_input) and [`command`](Self::command), then
/// drain [`poll_output`](Self::poll_output) until `None` and sleep until
/// [`poll_timeout`](Self::poll_timeout). The crate documentation shows the loop.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    phase: Phase,
    timers: TimerTable,
    outbound: Outbound,
    out: OutputQueue,
    /// Received bytes not yet forming a whole packet.
    rx: BytesMut,
    /// Bytes of an oversize packet still to be discarded as they arrive.
    skip: usize,
    backoff: Backoff,
    /// The ThingsBoard APIs: sub-devices, pending requests, typed downlinks.
    api: Api,
    /// Reused buffers for connection-made topics and payloads.
    scratch_topic: String,
    scratch: Vec<u8>,
    /// Publishes in `outbound` the connection made on its own, by request id. Bound: the
    /// buffered-bytes bound of `outbound`, which holds each of them.
    /// Tests run sessions with the QoS 0 fast path off to compare (see
    /// `connection_fast_path_tests.rs`), and count how often it was taken.
    #[cfg(test)]
    pub(crate) direct_qos0: bool,
    #[cfg(test)]
    pub(crate) direct_qos0_sent: u64,
    internal: IdMap<u64, Internal>,
    /// A provisioning connection reported its outcome.
    provision_done: bool,
    next_request: u64,
    last_tx: Instant,
    last_rx: Instant,
    stats: Stats,
    /// Session limits, pacing and push-back.
    limits: Limits,
    /// Commands split into several publishes, until their last part finishes.
    groups: Groups,
}

impl Connection {
    /// Creates a connection; its first output asks for a transport.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut conn = Self {
            backoff: Backoff::new(config.reconnect.clone()),
            api: Api::new(&config),
            limits: Limits::new(&config),
            groups: Groups::default(),
            scratch_topic: String::new(),
            scratch: Vec::new(),
            internal: IdMap::default(),
            #[cfg(test)]
            direct_qos0: true,
            #[cfg(test)]
            direct_qos0_sent: 0,
            provision_done: false,
            outbound: Outbound::new(config.max_buffered_bytes),
            config,
            phase: Phase::AwaitTransport,
            timers: TimerTable::default(),
            out: OutputQueue::default(),
            rx: BytesMut::new(),
            skip: 0,
            next_request: 1,
            last_tx: now,
            last_rx: now,
            stats: Stats::default(),
        };
        if let Credentials::Provision(request) = &conn.config.credentials {
            let payload = provision::request_payload(request, conn.config.protobuf_profile).into();
            let id = conn
                .accept_publish(
                    now,
                    topic::PROVISION_REQUEST.into(),
                    payload,
                    QoS::AtLeastOnce,
                    // One message; a provisioning connection is never paced anyway.
                    Some(Charge::message(Scope::Device)),
                )
                .map_err(|_| {
                    ConfigError::InvalidProvisionRequest("the request does not fit the send buffer")
                })?;
            conn.internal.insert(id.0, Internal::ProvisionRequest);
        }
        conn.open_transport(now);
        Ok(conn)
    }

    /// Feeds one input. Never fails: a server that breaks the protocol ends the session,
    /// which shows up as [`Event::Disconnected`] followed by a reconnect.
    ///
    /// Drain [`poll_output`](Self::poll_output) afterwards.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::TransportOpened => {
                if matches!(self.phase, Phase::AwaitTransport) {
                    self.send_connect(now);
                } else {
                    self.stats.ignored_inputs += 1;
                }
            }
            Input::Bytes(data) => {
                if self.transport_active() {
                    self.receive(now, data);
                } else {
                    self.stats.ignored_inputs += 1;
                }
            }
            Input::TransportClosed => {
                if self.transport_wanted() {
                    self.end_session(now, DisconnectReason::TransportClosed, false);
                } else {
                    self.stats.ignored_inputs += 1;
                }
            }
            Input::Timeout => self.handle_timeout(now),
        }
        self.refresh_timers();
    }

    /// Accepts an application request. It is checked now, so a request that cannot work is
    /// refused here; an accepted one ends in exactly one outcome event, identified by the
    /// returned id. While disconnected, requests wait (bounded by
    /// [`Config::max_buffered_bytes`]) and go out after the next CONNACK.
    ///
    /// Drain [`poll_output`](Self::poll_output) afterwards.
    pub fn command(&mut self, now: Instant, command: Command) -> Result<RequestId, CommandError> {
        if matches!(self.phase, Phase::Closed) {
            return Err(CommandError::Closed);
        }
        if self.config.is_provisioning() {
            return Err(CommandError::ProvisioningOnly);
        }
        let fit = Fit {
            protocol: self.config.protocol,
            max_packet: self.limits.max_packet(),
            split: self.limits.split_enabled(),
            device_points: self.limits.max_points(Scope::Device),
            gateway_points: self.limits.max_points(Scope::Gateway),
        };
        let Prepared {
            topic,
            payload,
            qos,
            commit,
            charge,
            more,
        } = self.api.prepare(command, self.config.telemetry_qos, &fit)?;
        if qos == QoS::AtMostOnce && more.is_empty() && commit.is_quiet() {
            let charge = self.charge_of(&topic, self.api.payload_bytes(&payload), charge);
            if self.sends_at_once(&charge, now) {
                return self.send_at_once(now, topic, &payload, commit, charge);
            }
        }
        let payload = self.api.own_payload(payload);
        let id = if more.is_empty() {
            self.accept_publish(now, topic, payload, qos, charge)?
        } else {
            let first = (
                payload,
                charge.unwrap_or(Charge::message(Scope::of_topic(&topic))),
            );
            self.accept_parts(now, topic, first, more, qos)?
        };
        self.api.commit(now, id.0, commit, qos, &mut self.out);
        self.pump(now);
        self.refresh_timers();
        Ok(id)
    }

    /// Ends the connection for good: a DISCONNECT if a session is up, then
    /// [`Output::CloseTransport`]. Unfinished requests fail with [`RequestError::Closed`].
    /// Later commands are refused with [`CommandError::Closed`].
    pub fn close(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if self.config.is_provisioning() && !self.provision_done {
            self.provision_done = true;
            self.out
                .event(Event::Provisioned(Err(ProvisionError::Closed)));
        }
        let transport = self.transport_wanted();
        self.shut_down(now, DisconnectReason::Local, true, transport);
    }

    /// Ends the connection for good: a DISCONNECT if `graceful` and a session is up,
    /// [`Output::CloseTransport`] if `close_transport`, then [`Event::Disconnected`] and the
    /// failure of everything unfinished.
    fn shut_down(
        &mut self,
        now: Instant,
        reason: DisconnectReason,
        graceful: bool,
        close_transport: bool,
    ) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if graceful && matches!(self.phase, Phase::Connected { .. }) {
            let disconnect = Packet::Disconnect(codec::Disconnect { code: 0 });
            // A DISCONNECT always fits: encoding cannot fail.
            let _ = self.send(now, &disconnect);
        }
        if close_transport {
            self.out.push(Output::CloseTransport);
        }
        self.phase = Phase::Closed;
        self.timers = TimerTable::default();
        self.rx = BytesMut::new();
        self.skip = 0;
        self.out.event(Event::Disconnected {
            reason,
            reconnect_at: None,
        });
        for id in self.outbound.drain_all() {
            self.fail(now, id, RequestError::Closed);
        }
        for id in self.api.on_close() {
            self.fail(now, id, RequestError::Closed);
        }
    }

    /// A provisioning connection reports its outcome and closes for good.
    fn finish_provisioning(
        &mut self,
        now: Instant,
        result: Result<ProvisionedCredentials, ProvisionError>,
        reason: DisconnectReason,
        graceful: bool,
        close_transport: bool,
    ) {
        if self.provision_done {
            return;
        }
        self.provision_done = true;
        self.out.event(Event::Provisioned(result));
        self.shut_down(now, reason, graceful, close_transport);
    }

    /// The next action for the adapter, in order; `None` when there is nothing to do until
    /// the next input, command or timeout.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// When to call [`handle_input`](Self::handle_input) with [`Input::Timeout`] at the
    /// latest; `None` if no timer is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::AwaitTransport | Phase::AwaitConnAck => State::Connecting,
            Phase::Connected { .. } => State::Connected,
            Phase::Backoff { until } => State::WaitingToReconnect(until),
            Phase::Closed => State::Closed,
        }
    }

    /// Counters and current buffer levels.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            buffered_bytes: self.outbound.buffered_bytes(),
            unfinished_requests: self.outbound.len(),
            inflight: self.outbound.inflight(),
            pending_outputs: self.out.len(),
            receive_buffer: self.rx.len(),
            ..self.stats.clone()
        };
        self.api.fill_stats(&mut stats);
        stats.split_requests = self.groups.len();
        stats
    }

    /// QoS 1 publishes (and timed-out tombstones) awaiting their PUBACK now; the same number
    /// as [`Stats::inflight`], without building the whole snapshot.
    pub fn inflight(&self) -> usize {
        self.outbound.inflight()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The largest PUBLISH (MQTT remaining length) the connection sends now:
    /// [`Config::max_outgoing_packet`], lowered by the server's `maxPayloadSize` once known.
    pub fn max_outgoing_packet(&self) -> usize {
        self.limits.max_packet()
    }

    /// Packet ids awaiting an answer on the current connection (for invariant checks).
    #[doc(hidden)]
    pub fn pkids_in_use(&self) -> Vec<u16> {
        self.outbound.pkids_in_use().collect()
    }

    /// Whether a sub-device is tracked for re-announcing (for invariant checks).
    #[doc(hidden)]
    pub fn is_sub_device_registered(&self, device: &str) -> bool {
        self.api.is_registered(device)
    }

    /// Whether connection-made publishes (re-announces, keep-alives) wait to go out, for
    /// instance for rate-limit tokens (for invariant checks).
    #[doc(hidden)]
    pub fn has_connection_publishes_waiting(&self) -> bool {
        self.api.lane_pending()
    }

    // ----- inputs -----------------------------------------------------------------------

    /// A transport is open and bytes from it are expected.
    fn transport_active(&self) -> bool {
        matches!(self.phase, Phase::AwaitConnAck | Phase::Connected { .. })
    }

    /// A transport is open or being opened.
    fn transport_wanted(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitTransport | Phase::AwaitConnAck | Phase::Connected { .. }
        )
    }

    fn receive(&mut self, now: Instant, mut data: &[u8]) {
        self.stats.bytes_received += data.len() as u64;
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
        }
        self.rx.extend_from_slice(data);
        while self.transport_active() {
            match codec::decode(
                &mut self.rx,
                self.config.protocol,
                self.config.max_incoming_packet,
            ) {
                Ok(None) => break,
                Ok(Some(packet)) => {
                    self.last_rx = now;
                    self.stats.packets_received += 1;
                    self.handle_packet(now, packet);
                }
                Err(DecodeError::TooLarge { frame_len }) => {
                    let n = frame_len.min(self.rx.len());
                    self.rx.advance(n);
                    self.skip = frame_len - n;
                    self.stats.oversize_skipped += 1;
                    self.out
                        .event(Event::Warning(Warning::OversizePacketSkipped {
                            size: frame_len,
                        }));
                }
                Err(e) => {
                    self.protocol_error(now, ProtocolError::Malformed(e));
                    break;
                }
            }
        }
        // PUBACKs may have opened the window.
        self.pump(now);
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) {
        let connected = matches!(self.phase, Phase::Connected { .. });
        match packet {
            Packet::ConnAck(ack) if matches!(self.phase, Phase::AwaitConnAck) => {
                if ack.code == 0 {
                    self.on_connected(now, ack.session_present);
                } else {
                    let refusal = ConnectRefusal::new(self.config.protocol, ack.code);
                    self.end_session(now, DisconnectReason::Refused(refusal), true);
                }
            }
            Packet::Disconnect(d) => {
                let code = ReasonCode::from_u8(d.code);
                if connected && self.limits.push_back_enabled() {
                    if let Some(scope) = limits::disconnect_scope(code) {
                        let scope = match self.config.role {
                            crate::config::Role::Device => Scope::Device,
                            _ => scope,
                        };
                        self.push_back(now, scope, PushBack::Disconnect(code), None);
                    }
                }
                let reason = DisconnectReason::ServerDisconnect(code);
                self.end_session(now, reason, true);
            }
            Packet::PubAck(ack) if connected => self.on_puback(now, ack.pkid, ack.code),
            Packet::Publish(publish) if connected => self.on_publish(now, publish),
            Packet::SubAck(ack) if connected => self.on_suback(ack.pkid, &ack.codes),
            Packet::UnsubAck(_) if connected => self.stats.unexpected_acks += 1,
            Packet::PingResp if connected => {
                if let Phase::Connected {
                    ping_outstanding, ..
                } = &mut self.phase
                {
                    *ping_outstanding = false;
                }
                self.timers.clear(Timer::PingResponse);
            }
            other => {
                let what = match other {
                    Packet::ConnAck(_) => "CONNACK after the session started",
                    Packet::Connect(_) => "CONNECT",
                    Packet::Subscribe(_) => "SUBSCRIBE",
                    Packet::Unsubscribe(_) => "UNSUBSCRIBE",
                    Packet::PingReq => "PINGREQ",
                    _ => "packet before CONNACK",
                };
                self.protocol_error(now, ProtocolError::UnexpectedPacket(what));
            }
        }
    }

    fn on_connected(&mut self, now: Instant, session_present: bool) {
        self.phase = Phase::Connected {
            since: now,
            ping_outstanding: false,
        };
        self.timers.clear(Timer::Connect);
        self.stats.connections += 1;
        self.out.event(Event::Connected { session_present });
        self.api.on_connected(now);
        if self.config.is_provisioning() {
            self.timers
                .set(Timer::Provision, now + self.config.provision_timeout);
        }
        let subscriptions = self.config.effective_subscriptions();
        // ThingsBoard counts the session's opening and each attribute or RPC subscription
        // against the device's message limit.
        let counted =
            1 + limits::counted_subscriptions(subscriptions.iter().map(|s| s.filter.as_str()));
        self.limits.on_connected(now, counted);
        if !subscriptions.is_empty() {
            let filters: Vec<String> = subscriptions.iter().map(|s| s.filter.clone()).collect();
            let Some(pkid) = self.outbound.reserve_subscribe(filters) else {
                // Unreachable: a fresh connection has every packet id free.
                return;
            };
            let subscribe = Packet::Subscribe(codec::Subscribe {
                pkid,
                filters: subscriptions
                    .into_iter()
                    .map(|s| (s.filter, s.qos))
                    .collect(),
            });
            if let Err(e) = self.send(now, &subscribe) {
                // Validated in `Config::validate`; kept as a session error, not a panic.
                self.protocol_error(now, ProtocolError::Encode(e));
                return;
            }
        }
        self.pump(now);
    }

    fn on_puback(&mut self, now: Instant, pkid: u16, code: u8) {
        let reason = ReasonCode::from_u8(code);
        if self.limits.push_back_enabled() && limits::is_rate_refusal(reason) {
            let refused = self
                .outbound
                .in_flight(pkid)
                .filter(|(_, entry)| entry.topic != topic::GATEWAY_CONNECT)
                .map(|(id, entry)| {
                    let charge = entry
                        .charge
                        .unwrap_or_else(|| charge_of_publish(&entry.topic, &entry.payload));
                    (id, charge)
                });
            if let Some((id, charge)) = refused {
                // Not stored by the server: send it again (paced) while attempts remain.
                let resent = self
                    .outbound
                    .requeue(pkid, self.config.max_publish_attempts);
                let signal = PushBack::PubAck {
                    request: RequestId(self.groups.request_of(id)),
                    code: reason,
                    resent,
                };
                let traffic = if charge.is_telemetry() {
                    Traffic::Telemetry
                } else {
                    Traffic::Messages
                };
                self.push_back(now, charge.scope, signal, Some(traffic));
                if resent {
                    self.stats.resent_after_push_back += 1;
                    return;
                }
            }
        }
        match self.outbound.ack(pkid) {
            Acked::Publish(id) => {
                if !reason.is_success() {
                    self.fail(now, id, RequestError::Rejected(reason));
                } else {
                    self.finished(id, PartDone::Delivered);
                }
            }
            Acked::Control(tag) => {
                self.api.on_control_ack(tag, reason, &mut self.out);
                self.handle_signals(now);
            }
            Acked::TimedOut => self.stats.late_acks += 1,
            Acked::Unknown | Acked::WrongKind => self.stats.unexpected_acks += 1,
        }
    }

    fn on_publish(&mut self, now: Instant, publish: codec::Publish) {
        if publish.qos == QoS::AtLeastOnce {
            if publish.pkid == 0 {
                // ThingsBoard's packet id counter never wraps: every 65,536th message has
                // id 0. Deliver it; a PUBACK with id 0 would be invalid.
                self.stats.inbound_packet_id_zero += 1;
            } else {
                let ack = Packet::PubAck(codec::PubAck {
                    pkid: publish.pkid,
                    code: 0,
                });
                // A PUBACK always fits: encoding cannot fail.
                let _ = self.send(now, &ack);
            }
        }
        self.stats.messages_received += 1;
        if self.config.is_provisioning() {
            if publish.topic == topic::PROVISION_RESPONSE {
                let result =
                    provision::read_response(&publish.payload, self.config.protobuf_profile);
                self.finish_provisioning(
                    now,
                    result,
                    DisconnectReason::ProvisioningEnded,
                    true,
                    true,
                );
            } else {
                self.out.event(Event::Message {
                    topic: publish.topic,
                    payload: publish.payload,
                });
            }
            return;
        }
        if let Some(answered) = self
            .api
            .on_message(publish.topic, publish.payload, &mut self.out)
        {
            // The answer overtook the request's PUBACK: the request is finished.
            self.outbound.cancel(answered);
        }
        self.handle_signals(now);
    }

    /// Acts on what the API found in a downlink or an acknowledgement.
    fn handle_signals(&mut self, now: Instant) {
        for signal in self.api.take_signals() {
            match signal {
                Signal::Limits(answer) => {
                    let report = self.limits.on_answer(answer, now);
                    self.api.cap_ota_chunk(self.limits.server_max_payload());
                    self.out.event(Event::SessionLimits(report));
                }
                Signal::LimitsUnanswered => {
                    if self.limits.holding() {
                        let report = self.limits.give_up();
                        self.out.event(Event::SessionLimits(report));
                    }
                }
                Signal::SubDeviceRateLimited(device) => {
                    if self.limits.push_back_enabled() {
                        let signal = PushBack::SubDeviceDisconnected { device };
                        self.push_back(now, Scope::Gateway, signal, None);
                    }
                }
            }
        }
    }

    /// The server pushed back: slow the scope down and say so.
    fn push_back(
        &mut self,
        now: Instant,
        scope: Scope,
        signal: PushBack,
        traffic: Option<Traffic>,
    ) {
        self.stats.push_backs += 1;
        let notice = self.limits.push_back(scope, signal, traffic, now);
        self.out.event(Event::RateLimited(notice));
    }

    fn on_suback(&mut self, pkid: u16, codes: &[u8]) {
        let Some(filters) = self.outbound.take_subscribe(pkid) else {
            self.stats.unexpected_acks += 1;
            return;
        };
        for (filter, &code) in filters.into_iter().zip(codes) {
            if code >= 0x80 {
                self.out
                    .event(Event::Warning(Warning::SubscriptionRejected {
                        filter,
                        code,
                    }));
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            self.timers.clear(timer);
            match timer {
                Timer::Connect => {
                    if matches!(self.phase, Phase::AwaitTransport | Phase::AwaitConnAck) {
                        self.end_session(now, DisconnectReason::ConnectTimeout, true);
                    }
                }
                Timer::PingResponse => {
                    if matches!(self.phase, Phase::Connected { .. }) {
                        self.end_session(now, DisconnectReason::PingTimeout, true);
                    }
                }
                Timer::KeepAlive => self.send_ping(now),
                Timer::PublishDeadline => {
                    for id in self.outbound.expire(now, self.config.publish_timeout) {
                        self.fail(now, id, RequestError::Timeout);
                    }
                }
                Timer::ResponseDeadline => {
                    for id in self.api.expire(now, &mut self.out) {
                        self.outbound.cancel(id);
                        self.fail(now, id, RequestError::Timeout);
                    }
                }
                Timer::OtaChunk => self.api.ota_timeout(now, &mut self.out),
                Timer::Provision => {
                    let transport = self.transport_wanted();
                    self.finish_provisioning(
                        now,
                        Err(ProvisionError::Timeout),
                        DisconnectReason::ProvisioningEnded,
                        true,
                        transport,
                    );
                }
                Timer::SubDeviceSweep => {
                    self.api.sweep(now);
                    self.pump(now);
                }
                Timer::Reconnect => {
                    if matches!(self.phase, Phase::Backoff { .. }) {
                        self.open_transport(now);
                    }
                }
                Timer::Limits => {
                    if let Some(report) = self.limits.on_deadline(now) {
                        self.out.event(Event::SessionLimits(report));
                    }
                }
            }
        }
        // Expired publishes and requests may have been what queued messages waited behind.
        self.pump(now);
    }

    // ----- commands ---------------------------------------------------------------------

    fn accept_publish(
        &mut self,
        now: Instant,
        topic: std::borrow::Cow<'static, str>,
        payload: bytes::Bytes,
        qos: QoS,
        charge: Option<Charge>,
    ) -> Result<RequestId, CommandError> {
        check_topic(&topic)?;
        let cost = self.publish_cost(&topic, payload.len(), qos)?;
        let id = self.next_request;
        self.outbound
            .admit(id, topic, payload, qos, now, cost, charge)?;
        self.next_request += 1;
        self.stats.requests += 1;
        Ok(RequestId(id))
    }

    /// The charge of a publish: the one its command computed, else a plain message where
    /// its scope is not paced, else what its payload holds.
    fn charge_of(&self, topic: &str, payload: &[u8], charge: Option<Charge>) -> Charge {
        if let Some(charge) = charge {
            return charge;
        }
        let scope = Scope::of_topic(topic);
        if self.limits.is_paced(scope) {
            charge_of_publish(topic, payload)
        } else {
            Charge::message(scope)
        }
    }

    /// Whether a QoS 0 publish would leave at once if queued now: the session is up and
    /// not held, nothing waits ahead of it (announces, queued or resent publishes) and the
    /// rate limits allow it. Then [`send_at_once`](Self::send_at_once) does exactly what
    /// [`pump`](Self::pump) would, without a trip through the outbound store.
    fn sends_at_once(&mut self, charge: &Charge, now: Instant) -> bool {
        #[cfg(test)]
        if !self.direct_qos0 {
            return false;
        }
        matches!(self.phase, Phase::Connected { .. })
            && !self.limits.wants_request()
            && !self.limits.holding()
            && !self.api.lane_pending()
            && !self.api.ota_pending()
            && self.outbound.head().is_none()
            && self.limits.ready_at(charge, now) <= now
    }

    /// The QoS 0 fast path (see [`sends_at_once`](Self::sends_at_once)): encoded straight
    /// into the transmit buffer; the request is accepted, committed and `Sent` in the same
    /// order as through the queue.
    fn send_at_once(
        &mut self,
        now: Instant,
        topic: std::borrow::Cow<'static, str>,
        payload: &PreparedPayload,
        commit: Commit,
        charge: Charge,
    ) -> Result<RequestId, CommandError> {
        check_topic(&topic)?;
        let payload = self.api.payload_bytes(payload);
        self.publish_cost(&topic, payload.len(), QoS::AtMostOnce)?;
        let id = self.next_request;
        self.next_request += 1;
        self.stats.requests += 1;
        let publish = codec::PublishRef {
            topic: &topic,
            payload,
            qos: QoS::AtMostOnce,
            dup: false,
            retain: false,
            pkid: 0,
        };
        let max = self.limits.max_packet();
        let result = codec::encode_publish(
            &publish,
            self.config.protocol,
            self.out.transmit_buffer(),
            max,
        );
        self.api
            .commit(now, id, commit, QoS::AtMostOnce, &mut self.out);
        match result {
            Ok(n) => {
                self.limits.take(&charge, now);
                self.count_sent(now, n);
                self.stats.sent_qos0 += 1;
                #[cfg(test)]
                {
                    self.direct_qos0_sent += 1;
                }
                self.finished(id, PartDone::Sent);
            }
            Err(e) => self.fail(now, id, encode_failure(e)),
        }
        self.refresh_timers();
        Ok(RequestId(id))
    }

    /// Bytes a publish is accounted at, if it fits the packet limit.
    fn publish_cost(&self, topic: &str, payload: usize, qos: QoS) -> Result<usize, CommandError> {
        let max = self.limits.max_packet();
        let remaining = publish_remaining_len(self.config.protocol, topic, payload, qos);
        if remaining > max {
            return Err(CommandError::TooLarge {
                size: remaining,
                max,
            });
        }
        Ok(
            codec::publish_size(self.config.protocol, topic.len(), payload, qos)
                + PER_MESSAGE_OVERHEAD,
        )
    }

    /// Admits the parts of a split command, all or none: the request id is the first
    /// part's, the others take the ids after it.
    fn accept_parts(
        &mut self,
        now: Instant,
        topic: std::borrow::Cow<'static, str>,
        first: (bytes::Bytes, Charge),
        more: Vec<(bytes::Bytes, Charge)>,
        qos: QoS,
    ) -> Result<RequestId, CommandError> {
        check_topic(&topic)?;
        let parts: Vec<(bytes::Bytes, Charge)> = std::iter::once(first).chain(more).collect();
        let mut costs = Vec::with_capacity(parts.len());
        for (payload, _) in &parts {
            costs.push(self.publish_cost(&topic, payload.len(), qos)?);
        }
        let needed: usize = costs.iter().sum();
        let available = self.outbound.available();
        if needed > available {
            return Err(CommandError::QueueFull { needed, available });
        }
        let first_id = self.next_request;
        let mut ids = Vec::with_capacity(parts.len());
        for ((payload, charge), cost) in parts.into_iter().zip(costs) {
            let id = self.next_request;
            self.outbound
                .admit(id, topic.clone(), payload, qos, now, cost, Some(charge))?;
            self.next_request += 1;
            ids.push(id);
        }
        self.groups.add(&ids);
        self.stats.requests += 1;
        self.stats.split_requests_total += 1;
        self.stats.split_parts += ids.len() as u64;
        Ok(RequestId(first_id))
    }

    // ----- outputs ----------------------------------------------------------------------

    fn open_transport(&mut self, now: Instant) {
        self.phase = Phase::AwaitTransport;
        self.timers.clear(Timer::Reconnect);
        self.timers
            .set(Timer::Connect, now + self.config.connect_timeout);
        self.stats.connect_attempts += 1;
        self.out.push(Output::OpenTransport);
    }

    fn send_connect(&mut self, now: Instant) {
        let (username, password) = match &self.config.credentials {
            Credentials::AccessToken(token) => (Some(token.clone()), None),
            Credentials::Basic { username, password } => (username.clone(), password.clone()),
            Credentials::X509 => (None, None),
            Credentials::Provision(_) => (Some(PROVISION_IDENTITY.to_owned()), None),
        };
        let connect = Packet::Connect(codec::Connect {
            client_id: self.config.client_id.clone(),
            keep_alive: self.config.keep_alive_secs(),
            clean_session: self.config.clean_session,
            username,
            password,
        });
        self.phase = Phase::AwaitConnAck;
        self.last_rx = now;
        if let Err(e) = self.send(now, &connect) {
            self.protocol_error(now, ProtocolError::Encode(e));
        }
    }

    fn send_ping(&mut self, now: Instant) {
        if let Phase::Connected {
            ping_outstanding, ..
        } = &mut self.phase
        {
            if *ping_outstanding {
                return;
            }
            *ping_outstanding = true;
            self.timers
                .set(Timer::PingResponse, now + self.config.ping_timeout);
            // A PINGREQ always fits: encoding cannot fail.
            let _ = self.send(now, &Packet::PingReq);
        }
    }

    /// Moves queued publishes onto the wire as far as the in-flight window and the rate
    /// limits allow. Order: the `getSessionLimits` request, then (once it is answered or
    /// the wait is over) connection-made publishes, then the queue, then OTA requests
    /// (which keep one slot of the window for themselves while they wait). A queued publish
    /// that must wait for tokens holds back everything behind it, so order is kept; the
    /// instant it may go becomes the `Limits` deadline.
    fn pump(&mut self, now: Instant) {
        self.limits.set_pace(None);
        self.queue_ota_reports(now);
        if !matches!(self.phase, Phase::Connected { .. }) {
            return;
        }
        let window = self.limits.window();
        let protocol = self.config.protocol;
        let max = self.limits.max_packet();
        if self.limits.wants_request() && !self.send_limits_request(now, window, max) {
            return;
        }
        // The session-limits hold applies to everything after the request: connection-made
        // publishes, queued data and OTA requests.
        if self.limits.holding() {
            return;
        }
        // Connection-made publishes (re-announces, keep-alives) go first: after a reconnect
        // every sub-device is connected again before any queued data for it.
        // The lane is looked at only with the window open: `lane_charge` drops items of
        // devices forgotten meanwhile, exactly when `next_lane` would have (earlier, a device
        // that comes back would lose its announce).
        while self.api.lane_pending() && self.outbound.window_open(window) {
            let Some(lane_charge) = self.api.lane_charge() else {
                break;
            };
            if !self.paced(&lane_charge, now) {
                return;
            }
            let Some(tag) = self
                .api
                .next_lane(now, &mut self.scratch_topic, &mut self.scratch)
            else {
                break;
            };
            if !self.send_control(now, window, tag, &lane_charge) {
                break;
            }
        }
        if self.api.lane_pending() {
            return;
        }
        // OTA requests (one at a time) go after the queue, which may not take the last free
        // slot of the window while one waits: a download never starves, and the state
        // telemetry of a command goes out before the requests it starts.
        let queue_window = if self.api.ota_pending() {
            window - 1
        } else {
            window
        };
        while let Some(charge) = self.head_charge() {
            if !self.paced(&charge, now) {
                break;
            }
            let Some(ready) = self.outbound.next_ready(queue_window) else {
                break;
            };
            let (entry, qos, dup, pkid) = match &ready {
                Ready::AtMostOnce(_, entry) => (&**entry, QoS::AtMostOnce, false, 0),
                Ready::AtLeastOnce { id, pkid, dup } => match self.outbound.get(*id) {
                    Some(entry) => (entry, QoS::AtLeastOnce, *dup, *pkid),
                    None => continue,
                },
            };
            let publish = codec::PublishRef {
                topic: &entry.topic,
                payload: &entry.payload,
                qos,
                dup,
                retain: false,
                pkid,
            };
            let result = codec::encode_publish(&publish, protocol, self.out.transmit_buffer(), max);
            if result.is_ok() {
                self.limits.take(&charge, now);
            }
            match (result, ready) {
                (Ok(n), Ready::AtMostOnce(id, _)) => {
                    self.count_sent(now, n);
                    self.stats.sent_qos0 += 1;
                    self.finished(id, PartDone::Sent);
                }
                (Ok(n), Ready::AtLeastOnce { dup, .. }) => {
                    self.count_sent(now, n);
                    if dup {
                        self.stats.retransmitted += 1;
                    }
                }
                (Err(e), Ready::AtMostOnce(id, _)) => self.fail(now, id, encode_failure(e)),
                (Err(e), Ready::AtLeastOnce { id, pkid, .. }) => {
                    // Checked when the command was accepted (unless the server's limit
                    // shrank since); the request still gets its one outcome.
                    self.outbound.ack(pkid);
                    self.fail(now, id, encode_failure(e));
                }
            }
        }
        // OTA requests are paced like any message of the device; one that must wait for
        // tokens sets the `Limits` deadline like a queued publish.
        let ota_charge = Charge::message(Scope::Device);
        while self.api.ota_pending() && self.outbound.window_open(window) {
            if !self.paced(&ota_charge, now) {
                break;
            }
            let Some(tag) = self
                .api
                .next_ota(now, &mut self.scratch_topic, &mut self.scratch)
            else {
                break;
            };
            if !self.send_control(now, window, tag, &ota_charge) {
                break;
            }
        }
    }

    /// Sends the connection-made publish in the scratch buffers, taking `charge` from the
    /// rate-limit buckets. Returns false (and puts it back) when no packet id is free.
    fn send_control(
        &mut self,
        now: Instant,
        window: usize,
        tag: ControlTag,
        charge: &Charge,
    ) -> bool {
        let Some(pkid) = self.outbound.reserve_control(window, tag.clone()) else {
            // Every packet id is taken: wait for acknowledgements.
            self.api.unpop_lane(tag);
            return false;
        };
        let publish = codec::PublishRef {
            topic: &self.scratch_topic,
            payload: &self.scratch,
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid,
        };
        let (protocol, max) = (self.config.protocol, self.limits.max_packet());
        match codec::encode_publish(&publish, protocol, self.out.transmit_buffer(), max) {
            Ok(n) => {
                self.count_sent(now, n);
                self.limits.take(charge, now);
                match tag {
                    ControlTag::Announce(_) => self.stats.reannounced += 1,
                    ControlTag::Keepalive(_) => self.stats.keepalives_sent += 1,
                    ControlTag::OtaInfo(_)
                    | ControlTag::OtaChunk(_)
                    | ControlTag::SessionLimits(_) => {}
                }
            }
            Err(_) => {
                // Only a device name near the packet limit gets here; the application's
                // own commands for it are refused the same way. (OTA requests are small.)
                self.outbound.ack(pkid);
            }
        }
        true
    }

    /// The charge of the next queued publish. One the application built itself is parsed
    /// for its data points only once its scope has learned limits (and then remembered).
    fn head_charge(&mut self) -> Option<Charge> {
        let limits = &self.limits;
        let entry = self.outbound.head()?;
        if let Some(charge) = entry.charge {
            return Some(charge);
        }
        let scope = Scope::of_topic(&entry.topic);
        if !limits.is_paced(scope) {
            return Some(Charge::message(scope));
        }
        let charge = charge_of_publish(&entry.topic, &entry.payload);
        entry.charge = Some(charge);
        Some(charge)
    }

    /// Whether `charge` may be published now; if not, when becomes the pacing deadline.
    fn paced(&mut self, charge: &Charge, now: Instant) -> bool {
        let at = self.limits.ready_at(charge, now);
        if at > now {
            self.stats.paced += 1;
            self.limits.set_pace(Some(at));
            false
        } else {
            true
        }
    }

    /// Publishes this session's `getSessionLimits` request; `false` while it must wait
    /// (window or rate).
    fn send_limits_request(&mut self, now: Instant, window: usize, max: usize) -> bool {
        let charge = Charge::message(Scope::Device);
        if !self.outbound.window_open(window) || !self.paced(&charge, now) {
            return false;
        }
        let wire = self.api.session_limits_request(now, &mut self.scratch);
        let Some(pkid) = self
            .outbound
            .reserve_control(window, ControlTag::SessionLimits(wire))
        else {
            self.api.forget_request(wire);
            return false;
        };
        let topic = topic::rpc_request_topic(u64::from(wire));
        let publish = codec::PublishRef {
            topic: &topic,
            payload: &self.scratch,
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid,
        };
        match codec::encode_publish(
            &publish,
            self.config.protocol,
            self.out.transmit_buffer(),
            max,
        ) {
            Ok(n) => {
                self.count_sent(now, n);
                self.limits.request_sent(wire, now);
            }
            Err(_) => {
                // Cannot happen with a packet limit of at least 128 bytes; carry on without.
                self.outbound.ack(pkid);
                self.api.forget_request(wire);
                let report = self.limits.give_up();
                self.out.event(Event::SessionLimits(report));
            }
        }
        true
    }

    fn send(&mut self, now: Instant, packet: &Packet) -> Result<(), codec::EncodeError> {
        let n = codec::encode(
            packet,
            self.config.protocol,
            self.out.transmit_buffer(),
            self.config.max_outgoing_packet,
        )?;
        self.count_sent(now, n);
        Ok(())
    }

    fn count_sent(&mut self, now: Instant, bytes: usize) {
        self.last_tx = now;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes as u64;
    }

    /// Queues the OTA state telemetry the connection reports on its own.
    fn queue_ota_reports(&mut self, now: Instant) {
        while let Some((kind, payload)) = self.api.take_ota_report() {
            let topic = topic::DEVICE_TELEMETRY.into();
            // Charged by its data points when it is about to go (if the device is paced).
            match self.accept_publish(now, topic, payload, QoS::AtLeastOnce, None) {
                Ok(id) => {
                    self.internal.insert(id.0, Internal::OtaReport(kind));
                }
                Err(error) => self
                    .out
                    .event(Event::Warning(Warning::OtaReportDropped { kind, error })),
            }
        }
    }

    /// Publish `id` failed: the request fails (a part of a split command fails its
    /// command once the last part is finished; a publish the connection made on its own
    /// is handled here).
    fn fail(&mut self, now: Instant, id: u64, error: RequestError) {
        if let Some(internal) = idmap::take(&mut self.internal, &id) {
            match internal {
                Internal::OtaReport(_) if error == RequestError::Closed => {}
                Internal::OtaReport(kind) => self
                    .out
                    .event(Event::Warning(Warning::OtaReportFailed { kind, error })),
                Internal::ProvisionRequest => {
                    let error = match error {
                        RequestError::Rejected(code) => ProvisionError::Rejected(code),
                        RequestError::Timeout => ProvisionError::Timeout,
                        RequestError::Closed => ProvisionError::Closed,
                        _ => ProvisionError::ConnectionEnded(DisconnectReason::TransportClosed),
                    };
                    let transport = self.transport_wanted();
                    self.finish_provisioning(
                        now,
                        Err(error),
                        DisconnectReason::ProvisioningEnded,
                        true,
                        transport,
                    );
                }
            }
            return;
        }
        match self.groups.settle(id, Err(error)) {
            Settled::Single(result) => self.report(id, result),
            Settled::Waiting => {}
            Settled::Done { request, result } => self.report(request, result),
        }
    }

    /// Publish `id` finished well.
    fn finished(&mut self, id: u64, done: PartDone) {
        if idmap::take(&mut self.internal, &id).is_some() {
            // A publish of the connection's own was acknowledged.
            if done == PartDone::Delivered {
                self.stats.delivered += 1;
            }
            return;
        }
        match self.groups.settle(id, Ok(done)) {
            Settled::Single(result) => self.report(id, result),
            Settled::Waiting => {}
            Settled::Done { request, result } => self.report(request, result),
        }
    }

    /// The outcome of request `id`, unless it still awaits an answer.
    fn report(&mut self, id: u64, result: Result<PartDone, RequestError>) {
        match result {
            Ok(done) => {
                if self.api.on_outcome(id, Ok(())) {
                    let event = match done {
                        PartDone::Delivered => {
                            self.stats.delivered += 1;
                            Event::Delivered(RequestId(id))
                        }
                        PartDone::Sent => Event::Sent(RequestId(id)),
                    };
                    self.out.event(event);
                }
            }
            Err(error) => {
                self.api.on_outcome(id, Err(&error));
                self.stats.failed += 1;
                self.out.event(Event::Failed {
                    request: RequestId(id),
                    error,
                });
            }
        }
    }

    // ----- session end ------------------------------------------------------------------

    fn protocol_error(&mut self, now: Instant, error: ProtocolError) {
        if self.config.protocol == ProtocolVersion::V5 && self.transport_active() {
            let code = match error {
                ProtocolError::Malformed(_) => ReasonCode::MalformedPacket,
                _ => ReasonCode::ProtocolError,
            };
            let disconnect = Packet::Disconnect(codec::Disconnect { code: code.code() });
            let _ = self.send(now, &disconnect);
        }
        self.stats.protocol_errors += 1;
        self.end_session(now, DisconnectReason::Protocol(error), true);
    }

    /// Ends the current attempt or session and schedules the next one.
    fn end_session(&mut self, now: Instant, reason: DisconnectReason, close_transport: bool) {
        if self.config.is_provisioning() {
            // Never again: the request may have created the device already.
            let error = ProvisionError::ConnectionEnded(reason.clone());
            self.finish_provisioning(now, Err(error), reason, false, close_transport);
            return;
        }
        let was_up = matches!(self.phase, Phase::Connected { .. });
        let lasted = match self.phase {
            Phase::Connected { since, .. } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        if close_transport {
            self.out.push(Output::CloseTransport);
        }
        self.rx = BytesMut::new();
        self.skip = 0;
        self.timers.clear(Timer::Connect);
        self.timers.clear(Timer::KeepAlive);
        self.timers.clear(Timer::PingResponse);
        let permanent = matches!(&reason, DisconnectReason::Refused(r) if r.is_permanent());
        let delay = self.backoff.next_delay(lasted, permanent);
        let until = now + delay;
        self.phase = Phase::Backoff { until };
        self.timers.set(Timer::Reconnect, until);
        self.stats.disconnects += 1;
        self.limits
            .on_connection_lost(now, was_up, self.api.sub_device_count() as u64);
        self.out.event(Event::Disconnected {
            reason,
            reconnect_at: Some(until),
        });
        for id in self
            .outbound
            .connection_lost(self.config.max_publish_attempts)
        {
            self.fail(now, id, RequestError::ConnectionLost);
        }
        for id in self.api.on_connection_lost() {
            self.fail(now, id, RequestError::ConnectionLost);
        }
    }

    /// Re-arms the timers that follow from the current state.
    fn refresh_timers(&mut self) {
        let keep_alive = match self.phase {
            Phase::Connected {
                ping_outstanding: false,
                ..
            } if !self.config.keep_alive.is_zero() => {
                Some(self.last_tx.min(self.last_rx) + self.config.keep_alive)
            }
            _ => None,
        };
        self.timers.set_or_clear(Timer::KeepAlive, keep_alive);
        let deadline = self.outbound.next_deadline(self.config.publish_timeout);
        self.timers.set_or_clear(Timer::PublishDeadline, deadline);
        self.timers
            .set_or_clear(Timer::ResponseDeadline, self.api.next_deadline());
        self.timers
            .set_or_clear(Timer::OtaChunk, self.api.ota_deadline());
        let sweep = match self.phase {
            Phase::Connected { .. } => self.api.next_sweep(),
            _ => None,
        };
        self.timers.set_or_clear(Timer::SubDeviceSweep, sweep);
        let limits = match self.phase {
            Phase::Connected { .. } => self.limits.next_deadline(),
            _ => None,
        };
        self.timers.set_or_clear(Timer::Limits, limits);
    }
}

/// A publish that could not be encoded: over the packet limit (the server's, learned after
/// the command was accepted) is its own error.
fn encode_failure(e: codec::EncodeError) -> RequestError {
    match e {
        codec::EncodeError::TooLarge { remaining, max } => RequestError::TooLarge {
            size: remaining,
            max,
        },
        other => RequestError::Encode(other),
    }
}

/// A publish topic the application chose must be a valid topic name. The API's own topics
/// (`Cow::Borrowed`, the constants of [`topic`]) are, and the codec checks every topic again
/// when it encodes, so they skip the scan.
#[allow(clippy::ptr_arg)] // The variant is what this looks at.
fn check_topic(topic: &std::borrow::Cow<'static, str>) -> Result<(), CommandError> {
    match topic {
        std::borrow::Cow::Owned(t) if !valid_topic_name(t) => {
            Err(CommandError::InvalidTopic(t.clone()))
        }
        _ => Ok(()),
    }
}

/// MQTT topic-name rules plus ThingsBoard's: non-empty, no wildcards, no NUL, fits a
/// 16-bit length.
fn valid_topic_name(topic: &str) -> bool {
    // Bytes, not chars: no byte of a multi-byte UTF-8 sequence is ASCII.
    !topic.is_empty()
        && topic.len() <= usize::from(u16::MAX)
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// MQTT remaining length of a PUBLISH (what packet-size limits measure).
pub(crate) fn publish_remaining_len(
    protocol: ProtocolVersion,
    topic: &str,
    payload: usize,
    qos: QoS,
) -> usize {
    let pkid = if qos == QoS::AtLeastOnce { 2 } else { 0 };
    let properties = if protocol == ProtocolVersion::V5 {
        1
    } else {
        0
    };
    2 + topic.len() + pkid + properties + payload
}

#[cfg(test)]
#[path = "connection_fast_path_tests.rs"]
mod fast_path_tests;
