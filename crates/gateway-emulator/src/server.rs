//! The tokio runner: a TCP listener on 127.0.0.1 (and optionally a TLS listener beside it, like
//! ThingsBoard's 1883 and 8883) that drives one [`Emulator`] for every connection, plus a
//! cloneable [`EmulatorHandle`] exposing the control API.
//!
//! A TLS connection opens its session only after the handshake, with the client certificate
//! the peer presented ([`PeerIdentity`]); a failed or stalled handshake (10 s, Netty
//! `SslHandler`'s default) ends that connection only.
//!
//! One `std::sync::Mutex` guards the emulator; it is never held across an `.await`. After
//! every input the runner drains the emulator's outputs into per-connection channels and its
//! events into the waiting RPC callers. A timer task sleeps until the emulator's next deadline.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::config::EmulatorConfig;
use crate::emulator::Emulator;
use crate::error::{ControlError, StartError};
use crate::model::{
    ClaimOutcome, ClientRpcHandler, Credentials, DeviceInfo, Event, NewDevice, OtaPackage,
    PeerIdentity, ProvisionProfile, RpcCall, RpcOutcome, RpcTicket, SessionId, TsValue,
    X509ChainProfile,
};
use crate::profile_topics::ProfileTopics;
use crate::proto::ProtoSchemas;
use crate::ratelimit::TenantLimits;
use crate::session::{Output, SessionInfo};
use crate::tls::TlsConfig;

/// Outputs queued per connection. A client that does not read fills it; the connection is
/// then closed (ThingsBoard would buffer without bound; the emulator does not).
const CONNECTION_QUEUE: usize = 4_096;
/// Events other than RPC outcomes kept for [`EmulatorHandle::take_events`]; oldest dropped.
const MAX_KEPT_EVENTS: usize = 1_024;
/// Extra time an RPC caller waits beyond the RPC's own timeout before giving up.
const RPC_GRACE: Duration = Duration::from_secs(1);
/// Longest TLS handshake before the connection is dropped (Netty `SslHandler`'s default
/// `handshakeTimeoutMillis`, 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct State {
    emu: Emulator,
    conns: HashMap<SessionId, mpsc::Sender<Output>>,
    waiters: HashMap<RpcTicket, oneshot::Sender<RpcOutcome>>,
    events: VecDeque<Event>,
    shut: bool,
}

struct Shared {
    state: Mutex<State>,
    timer_wake: Notify,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A running emulator: cheap to clone, usable from any task. Dropping handles does not stop
/// the server; call [`EmulatorHandle::shutdown`].
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.shared.addr)
            .field("tls_addr", &self.shared.tls_addr)
            .finish_non_exhaustive()
    }
}

fn epoch_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl EmulatorHandle {
    /// Starts the emulator on an ephemeral port of 127.0.0.1. Must be called inside a tokio
    /// runtime.
    pub async fn start(config: EmulatorConfig) -> io::Result<Self> {
        Self::start_on(config, 0).await
    }

    /// Starts the emulator on `port` of 127.0.0.1 (0 = ephemeral).
    pub async fn start_on(config: EmulatorConfig, port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        Self::launch(config, listener, None)
    }

    /// Starts the emulator with a plain listener and a TLS listener, both on ephemeral ports of
    /// 127.0.0.1 ([`EmulatorHandle::addr`], [`EmulatorHandle::tls_addr`]). Must be called
    /// inside a tokio runtime.
    pub async fn start_tls(config: EmulatorConfig, tls: TlsConfig) -> Result<Self, StartError> {
        Self::start_tls_on(config, tls, 0, 0).await
    }

    /// Like [`EmulatorHandle::start_tls`] on the given ports of 127.0.0.1 (0 = ephemeral).
    /// The TLS settings are checked before anything is bound.
    pub async fn start_tls_on(
        config: EmulatorConfig,
        tls: TlsConfig,
        port: u16,
        tls_port: u16,
    ) -> Result<Self, StartError> {
        let acceptor = TlsAcceptor::from(tls.server_config()?);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let tls_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, tls_port)).await?;
        Ok(Self::launch(
            config,
            listener,
            Some((tls_listener, acceptor)),
        )?)
    }

    fn launch(
        config: EmulatorConfig,
        listener: TcpListener,
        tls: Option<(TcpListener, TlsAcceptor)>,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let tls_addr = match &tls {
            Some((l, _)) => Some(l.local_addr()?),
            None => None,
        };
        let emu = Emulator::new(config, Instant::now(), epoch_ms_now());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                emu,
                conns: HashMap::new(),
                waiters: HashMap::new(),
                events: VecDeque::new(),
                shut: false,
            }),
            timer_wake: Notify::new(),
            addr,
            tls_addr,
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        let timer = tokio::spawn(timer_loop(shared.clone()));
        let mut tasks = vec![accept.abort_handle(), timer.abort_handle()];
        if let Some((tls_listener, acceptor)) = tls {
            let tls_accept = tokio::spawn(tls_accept_loop(shared.clone(), tls_listener, acceptor));
            tasks.push(tls_accept.abort_handle());
        }
        lock_tasks(&shared).extend(tasks);
        Ok(Self { shared })
    }

    /// The plain MQTT listening address (ThingsBoard's 1883).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The MQTT-over-TLS listening address (ThingsBoard's 8883), if started with TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.shared.tls_addr
    }

    /// Runs `f` on the emulator under the lock (with the current instant), then delivers what
    /// it produced. The escape hatch for anything the typed methods below do not cover.
    pub fn with<R>(&self, f: impl FnOnce(&mut Emulator, Instant) -> R) -> R {
        let mut state = lock(&self.shared);
        let r = f(&mut state.emu, Instant::now());
        flush(&self.shared, &mut state);
        r
    }

    /// Creates a device.
    pub fn create_device(&self, device: NewDevice) -> Result<DeviceInfo, ControlError> {
        self.with(|e, _| e.create_device(device))
    }

    /// Deletes a device (sessions and gateways are told, see [`Emulator::delete_device`]).
    pub fn delete_device(&self, name: &str) -> Result<(), ControlError> {
        self.with(|e, now| e.delete_device(name, now))
    }

    /// Replaces a device's credentials; its open session is closed (see
    /// [`Emulator::update_device_credentials`]).
    pub fn update_device_credentials(
        &self,
        name: &str,
        credentials: Credentials,
    ) -> Result<(), ControlError> {
        self.with(|e, now| e.update_device_credentials(name, credentials, now))
    }

    /// A snapshot of one device.
    pub fn device(&self, name: &str) -> Option<DeviceInfo> {
        self.with(|e, _| e.device(name))
    }

    /// Sets shared attributes and pushes them to a listening session.
    pub fn set_shared_attributes(
        &self,
        name: &str,
        values: Map<String, Value>,
    ) -> Result<(), ControlError> {
        self.with(|e, _| e.set_shared_attributes(name, values))
    }

    /// Deletes shared attributes (`{"deleted":[..]}` to a listening session).
    pub fn delete_shared_attributes(
        &self,
        name: &str,
        keys: &[String],
    ) -> Result<(), ControlError> {
        self.with(|e, _| e.delete_shared_attributes(name, keys))
    }

    /// Stored telemetry of a device.
    pub fn telemetry(
        &self,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<TsValue>>, ControlError> {
        self.with(|e, _| e.telemetry(name))
    }

    /// Latest telemetry value per key.
    pub fn latest_telemetry(
        &self,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, TsValue>, ControlError> {
        self.with(|e, _| e.latest_telemetry(name))
    }

    /// Client-side attributes.
    pub fn client_attributes(&self, name: &str) -> Result<Map<String, Value>, ControlError> {
        self.with(|e, _| e.client_attributes(name))
    }

    /// Shared attributes.
    pub fn shared_attributes(&self, name: &str) -> Result<Map<String, Value>, ControlError> {
        self.with(|e, _| e.shared_attributes(name))
    }

    /// Sends a server-side RPC and waits for its outcome (reply, delivery, timeout).
    pub async fn rpc(&self, name: &str, call: RpcCall) -> Result<RpcOutcome, ControlError> {
        let wait = call.timeout + RPC_GRACE;
        let rx = {
            let mut state = lock(&self.shared);
            if state.shut {
                return Err(ControlError::Shutdown);
            }
            let ticket = state.emu.send_rpc(name, call, Instant::now())?;
            let (tx, rx) = oneshot::channel();
            state.waiters.insert(ticket, tx);
            flush(&self.shared, &mut state);
            rx
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(ControlError::Shutdown),
            Err(_) => Err(ControlError::NoOutcome),
        }
    }

    /// Installs the client-side RPC handler (see [`Emulator::set_client_rpc_handler`]).
    pub fn set_client_rpc_handler(&self, handler: Option<ClientRpcHandler>) {
        self.with(|e, _| e.set_client_rpc_handler(handler));
    }

    /// A device profile's `sendAckOnValidationException` (see
    /// [`Emulator::set_profile_send_ack_on_validation_exception`]).
    pub fn set_profile_send_ack_on_validation_exception(&self, profile: &str, on: bool) {
        self.with(|e, _| e.set_profile_send_ack_on_validation_exception(profile, on));
    }

    /// Gives a device profile its own telemetry and attributes topics (see
    /// [`Emulator::set_profile_topics`]).
    pub fn set_profile_topics(&self, profile: &str, topics: ProfileTopics) {
        self.with(|e, _| e.set_profile_topics(profile, topics));
    }

    /// The default topics again for `profile` (see [`Emulator::set_profile_default_topics`]).
    pub fn set_profile_default_topics(&self, profile: &str) {
        self.with(|e, _| e.set_profile_default_topics(profile));
    }

    /// Makes a device profile PROTOBUF (see [`Emulator::set_profile_protobuf`]).
    pub fn set_profile_protobuf(&self, profile: &str, schemas: ProtoSchemas) {
        self.with(|e, _| e.set_profile_protobuf(profile, schemas));
    }

    /// Makes a device profile JSON again (see [`Emulator::set_profile_json`]).
    pub fn set_profile_json(&self, profile: &str) {
        self.with(|e, _| e.set_profile_json(profile));
    }

    /// Tenant device limit.
    pub fn set_max_devices(&self, max: Option<usize>) {
        self.with(|e, _| e.set_max_devices(max));
    }

    /// Tenant transport rate limits.
    pub fn set_rate_limits(&self, limits: TenantLimits) -> Result<(), ControlError> {
        self.with(|e, _| e.set_rate_limits(limits))
    }

    /// A customer claims a device.
    pub fn claim_device(&self, name: &str, secret: &str) -> Result<ClaimOutcome, ControlError> {
        self.with(|e, now| e.claim_device(name, secret, now))
    }

    /// Adds a provisioning profile.
    pub fn add_provision_profile(&self, profile: ProvisionProfile) {
        self.with(|e, _| e.add_provision_profile(profile));
    }

    /// Adds an `X509_CERTIFICATE_CHAIN` device profile; see
    /// [`Emulator::add_x509_chain_profile`](crate::Emulator::add_x509_chain_profile).
    pub fn add_x509_chain_profile(&self, profile: X509ChainProfile) -> Result<(), ControlError> {
        self.with(|e, _| e.add_x509_chain_profile(profile))
    }

    /// Assigns an OTA package.
    pub fn assign_ota(
        &self,
        name: &str,
        firmware: bool,
        package: OtaPackage,
    ) -> Result<(), ControlError> {
        self.with(|e, _| e.assign_ota(name, firmware, package))
    }

    /// Children connected through the gateway's current session.
    pub fn connected_children(&self, gateway: &str) -> Result<Vec<String>, ControlError> {
        self.with(|e, _| e.connected_children(gateway))
    }

    /// Open sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.with(|e, _| e.sessions())
    }

    /// Closes a connection (no DISCONNECT packet).
    pub fn drop_session(&self, id: SessionId) -> Result<(), ControlError> {
        self.with(|e, _| e.drop_session(id))
    }

    /// Events other than RPC outcomes (rate-limit notifications) since the last call.
    pub fn take_events(&self) -> Vec<Event> {
        lock(&self.shared).events.drain(..).collect()
    }

    /// Stops accepting, closes every connection and fails waiting RPC calls with
    /// [`ControlError::Shutdown`].
    pub fn shutdown(&self) {
        for task in lock_tasks(&self.shared).drain(..) {
            task.abort();
        }
        let mut state = lock(&self.shared);
        state.shut = true;
        state.waiters.clear();
        for (_, tx) in state.conns.drain() {
            let _ = tx.try_send(Output::Close);
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the emulator half-updated in a way that
    // matters more than stopping every connection would; keep going.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_tasks(shared: &Shared) -> MutexGuard<'_, Vec<AbortHandle>> {
    shared.tasks.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delivers outputs and events; closes connections whose queue is full.
fn flush(shared: &Shared, state: &mut State) {
    loop {
        let mut overflowed = Vec::new();
        while let Some((id, out)) = state.emu.poll_output() {
            let close = out == Output::Close;
            let delivered = match state.conns.get(&id) {
                Some(tx) => tx.try_send(out).is_ok(),
                None => true,
            };
            if close {
                state.conns.remove(&id);
            } else if !delivered {
                overflowed.push(id);
            }
        }
        while let Some(event) = state.emu.poll_event() {
            match event {
                Event::RpcCompleted {
                    ticket, outcome, ..
                } => {
                    if let Some(tx) = state.waiters.remove(&ticket) {
                        let _ = tx.send(outcome);
                    }
                }
                other => {
                    if state.events.len() >= MAX_KEPT_EVENTS {
                        state.events.pop_front();
                    }
                    state.events.push_back(other);
                }
            }
        }
        if overflowed.is_empty() {
            break;
        }
        for id in overflowed {
            // Dropping the sender ends the writer, which closes the socket.
            state.conns.remove(&id);
            state.emu.transport_closed(id, Instant::now());
        }
    }
    shared.timer_wake.notify_one();
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    // Connection tasks live in the set: aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    let (rd, wr) = stream.into_split();
                    connections.spawn(serve(shared.clone(), rd, wr, PeerIdentity::plain()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = lock(&shared).emu.poll_timeout();
        let sleep = match deadline {
            Some(d) => tokio::time::sleep_until(d.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {
                let mut state = lock(&shared);
                state.emu.handle_timeout(Instant::now());
                flush(&shared, &mut state);
            }
            _ = shared.timer_wake.notified() => {}
        }
    }
}

async fn tls_accept_loop(shared: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) {
    // As in `accept_loop`: aborting this task aborts every handshake and connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_tls(shared.clone(), acceptor.clone(), stream));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Completes the handshake, then serves the connection with the client's certificate. A
/// failed handshake (wrong CA, plain MQTT on the TLS port, a rejected client certificate) or
/// one that takes too long only drops this connection; no session is opened for it.
async fn serve_tls(shared: Arc<Shared>, acceptor: TlsAcceptor, stream: tokio::net::TcpStream) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) | Err(_) => return,
    };
    // The whole chain as the client sent it, leaf first: ThingsBoard's trust manager walks it
    // for X.509 chain provisioning; the CONNECT then uses the leaf.
    let chain: Vec<Vec<u8>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    let (rd, wr) = tokio::io::split(stream);
    serve(shared, rd, wr, PeerIdentity::tls_chain(chain)).await;
}

async fn serve<R, W>(shared: Arc<Shared>, mut rd: R, mut wr: W, peer: PeerIdentity)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Output>(CONNECTION_QUEUE);
    let id = {
        let mut state = lock(&shared);
        if state.shut {
            return;
        }
        match state.emu.open_session_with_peer(Instant::now(), peer) {
            Ok(id) => {
                state.conns.insert(id, tx);
                id
            }
            // Too many sessions: refuse by closing.
            Err(_) => return,
        }
    };
    let writer_done = Arc::new(Notify::new());
    let done = writer_done.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Output::Transmit(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Output::Close => break,
            }
        }
        let _ = wr.shutdown().await;
        done.notify_one();
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => {
                let mut state = lock(&shared);
                match read {
                    Ok(0) | Err(_) => {
                        state.emu.transport_closed(id, Instant::now());
                        state.conns.remove(&id);
                        flush(&shared, &mut state);
                        break;
                    }
                    Ok(n) => {
                        state.emu.handle_bytes(id, Instant::now(), &buf[..n]);
                        flush(&shared, &mut state);
                    }
                }
            }
            _ = writer_done.notified() => break,
        }
    }
    // The writer failed while the session was still open: tell the emulator.
    {
        let mut state = lock(&shared);
        if state.conns.remove(&id).is_some() {
            state.emu.transport_closed(id, Instant::now());
            flush(&shared, &mut state);
        }
    }
    let _ = writer.await;
}
