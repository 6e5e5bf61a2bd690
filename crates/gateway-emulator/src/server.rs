//! The tokio runner: a TCP listener on 127.0.0.1 that drives one [`Emulator`] for every
//! connection, plus a cloneable [`EmulatorHandle`] exposing the control API.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinSet};

use crate::config::EmulatorConfig;
use crate::emulator::Emulator;
use crate::error::ControlError;
use crate::model::{
    ClaimOutcome, ClientRpcHandler, DeviceInfo, Event, NewDevice, OtaPackage, ProvisionProfile,
    RpcCall, RpcOutcome, RpcTicket, SessionId, TsValue,
};
use crate::ratelimit::TenantLimits;
use crate::session::{Output, SessionInfo};

/// Outputs queued per connection. A client that does not read fills it; the connection is
/// then closed (ThingsBoard would buffer without bound; the emulator does not).
const CONNECTION_QUEUE: usize = 4_096;
/// Events other than RPC outcomes kept for [`EmulatorHandle::take_events`]; oldest dropped.
const MAX_KEPT_EVENTS: usize = 1_024;
/// Extra time an RPC caller waits beyond the RPC's own timeout before giving up.
const RPC_GRACE: Duration = Duration::from_secs(1);

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
        let addr = listener.local_addr()?;
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
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        let timer = tokio::spawn(timer_loop(shared.clone()));
        lock_tasks(&shared).extend([accept.abort_handle(), timer.abort_handle()]);
        Ok(Self { shared })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
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
                    connections.spawn(serve(shared.clone(), stream));
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

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Output>(CONNECTION_QUEUE);
    let id = {
        let mut state = lock(&shared);
        if state.shut {
            return;
        }
        match state.emu.open_session(Instant::now()) {
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
