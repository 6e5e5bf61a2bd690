//! The bookkeeping every adapter needs around a [`Connection`], with no I/O of its own.
//!
//! An adapter owns a [`Driver`] and a socket. Each time something happens (bytes read, a
//! request from a client handle, the deadline passed, a dial finished) it calls one
//! `handle_*` method, performs the [`Action`]s from [`Driver::poll_action`] in order (all
//! bytes pending at that moment come as *one* write), hands the queued events to the
//! application ([`Driver::flush_events`] or [`Driver::flush_events_blocking`]), and waits
//! again until [`Driver::poll_timeout`]. Every protocol decision (reconnect, backoff,
//! retransmission, timeouts) is the core's; the driver only routes outcomes to the request
//! that asked and events to the application.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use async_channel::{Receiver, Sender};
use bytes::{Bytes, BytesMut};
use gateway_proto::{
    Command, Connection, DisconnectReason, Event, Input, Output, RequestId, State,
};

use crate::client::{Client, Wake};
use crate::error::{ClientError, ConnectError, TransportError};
use crate::events::{ClientEvent, Events};
use crate::options::ClientOptions;
use crate::request::{
    event_to_answer, Answer, BatchAnswers, Reply, Request, RequestKind, Resolved,
};

/// Something the adapter must do to the transport, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Write these bytes (everything pending, merged), then go on.
    Write(Bytes),
    /// Dial a new transport (TCP, then TLS if configured) and report the result with
    /// [`Driver::transport_opened`] or [`Driver::transport_failed`].
    Open,
    /// Close the transport (after the writes before it). Nothing read from it any more goes
    /// to the driver; when [`Driver::closed_for_good`], shut down the sending side and read
    /// and discard until the server closes, for at most [`ClientOptions::close_linger`], so
    /// that the kernel does not reset the connection over unread bytes.
    Close,
}

/// Requests from the client handles, for the adapter to wait on. Receiving is
/// cancel-safe: a `recv` future dropped in a `select!` loses nothing.
#[derive(Debug)]
pub struct Commands {
    rx: Receiver<Request>,
}

impl Commands {
    /// The next request; `None` when every client handle is gone (then call
    /// [`Driver::handle_clients_gone`]).
    pub async fn recv(&self) -> Option<Request> {
        self.rx.recv().await.ok()
    }

    /// The next request if one is queued. `Err(())` when every client handle is gone.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&self) -> Result<Option<Request>, ()> {
        match self.rx.try_recv() {
            Ok(r) => Ok(Some(r)),
            Err(async_channel::TryRecvError::Empty) => Ok(None),
            Err(async_channel::TryRecvError::Closed) => Err(()),
        }
    }
}

/// What [`Driver::take_requests`] left in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Queue {
    /// Nothing is queued any more.
    Empty,
    /// [`Driver::REQUESTS_PER_WAKEUP`] commands were taken and more wait: take them after
    /// the writes, without sleeping.
    MoreWaiting,
    /// Every client handle is gone; the connection is closing
    /// ([`Driver::handle_clients_gone`] was called).
    ClientsGone,
}

/// Resolves once the first session is up, or with why the first attempt failed.
#[derive(Debug)]
pub struct Startup {
    rx: Receiver<Result<(), ConnectError>>,
}

impl Startup {
    /// Waits for the first CONNACK or the first failure.
    pub async fn wait(self) -> Result<(), ConnectError> {
        self.rx
            .recv()
            .await
            .unwrap_or(Err(ConnectError::Disconnected(DisconnectReason::Local)))
    }

    /// The same, blocking the calling thread.
    pub fn wait_blocking(self) -> Result<(), ConnectError> {
        self.rx
            .recv_blocking()
            .unwrap_or(Err(ConnectError::Disconnected(DisconnectReason::Local)))
    }
}

/// Whether the first connection attempt decides the fate of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirstAttempt {
    /// A failure of the first attempt closes the connection and is reported through
    /// [`Startup`]: bad credentials or a TLS mistake surface at once.
    MustSucceed,
    /// Keep trying from the start (a service that comes up before its server).
    Retry,
}

/// Everything [`Driver::build`] makes: the driver for the adapter, the handles for the
/// application.
#[derive(Debug)]
#[non_exhaustive]
pub struct Parts {
    /// For the adapter's loop.
    pub driver: Driver,
    /// Requests for the adapter's loop to wait on.
    pub commands: Commands,
    /// Resolves with the first session (see [`FirstAttempt`]).
    pub startup: Startup,
    /// The application's handle.
    pub client: Client,
    /// The application's event stream.
    pub events: Events,
}

/// Routes outcomes and events between a [`Connection`] and the application; see the module
/// documentation for the loop around it.
#[derive(Debug)]
pub struct Driver {
    conn: Connection,
    /// Where the outcome of each request still in the core goes. Bound: one per unfinished
    /// request, which the core bounds (buffered bytes, pending requests).
    routes: HashMap<RequestId, Route, BuildHasherDefault<IdHasher>>,
    /// Batches with commands still unanswered, by batch number. Bound: one per batch with a
    /// request in `routes`, each at most [`Client::MAX_BATCH`] answers.
    batches: HashMap<u64, Batch, BuildHasherDefault<IdHasher>>,
    next_batch: u64,
    actions: VecDeque<Action>,
    write: BytesMut,
    /// Events waiting for room in the application's queue. Bound: what one call produced.
    backlog: VecDeque<ClientEvent>,
    events: Sender<ClientEvent>,
    startup: Option<Sender<Result<(), ConnectError>>>,
    first_attempt: FirstAttempt,
    /// The last dial or I/O failure, to explain a following `TransportClosed`.
    last_transport_error: Option<TransportError>,
    /// Dropped when the driver is, which wakes [`Client::close`] callers.
    close_waiters: Vec<Sender<()>>,
    address: String,
}

impl Driver {
    /// Creates the core connection (its first action asks for a transport) and the handles.
    /// `wake` is called after every request a handle queues (for adapters that cannot wait
    /// on [`Commands`] directly).
    pub fn build(
        options: &ClientOptions,
        now: Instant,
        first_attempt: FirstAttempt,
        wake: Option<Wake>,
    ) -> Result<Parts, ConnectError> {
        let conn = Connection::new(options.config.clone(), now)?;
        let (command_tx, command_rx) = async_channel::bounded(options.command_capacity.max(1));
        let (event_tx, event_rx) = async_channel::bounded(options.event_capacity.max(1));
        let (startup_tx, startup_rx) = async_channel::bounded(1);
        let mut driver = Driver {
            conn,
            routes: HashMap::default(),
            batches: HashMap::default(),
            next_batch: 0,
            actions: VecDeque::new(),
            write: BytesMut::new(),
            backlog: VecDeque::new(),
            events: event_tx,
            startup: Some(startup_tx),
            first_attempt,
            last_transport_error: None,
            close_waiters: Vec::new(),
            address: options.address(),
        };
        driver.drain(now);
        Ok(Parts {
            driver,
            commands: Commands { rx: command_rx },
            startup: Startup { rx: startup_rx },
            client: Client::new(command_tx, wake),
            events: Events::new(event_rx),
        })
    }

    /// A request from a client handle.
    pub fn handle_request(&mut self, now: Instant, request: Request) {
        self.handle(now, request);
    }

    /// Handles one request; how many commands it carried.
    fn handle(&mut self, now: Instant, request: Request) -> usize {
        match request.0 {
            RequestKind::Command { command, reply } => {
                match self.conn.command(now, command) {
                    Ok(id) => {
                        self.routes.insert(id, Route::One(reply));
                    }
                    Err(e) => {
                        // The caller may have stopped waiting; then nobody needs the error.
                        reply.send(Err(ClientError::Refused(e)));
                    }
                }
                self.drain(now);
                1
            }
            RequestKind::Batch { commands, reply } => self.handle_batch(now, commands, reply),
            RequestKind::Stats(reply) => {
                let _ = reply.try_send(self.conn.stats());
                0
            }
            RequestKind::Close { done } => {
                self.close_waiters.push(done);
                self.conn.close(now);
                self.drain(now);
                0
            }
        }
    }

    /// Hands a batch's commands to the core in order, each drained before the next (an
    /// outcome may come at once), and answers the batch once every command has an answer.
    fn handle_batch(&mut self, now: Instant, commands: Vec<Command>, reply: Reply) -> usize {
        let count = commands.len();
        let batch = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        // Every answer starts as "closed" and is overwritten once known; `unanswered` counts
        // the commands not handed in yet too, so the batch cannot finish half-way.
        self.batches.insert(
            batch,
            Batch {
                answers: vec![Err(ClientError::Closed); count],
                unanswered: count,
                reply,
            },
        );
        for (index, command) in commands.into_iter().enumerate() {
            match self.conn.command(now, command) {
                Ok(id) => {
                    self.routes.insert(id, Route::Batch { batch, index });
                    self.drain(now);
                }
                Err(e) => self.answer(batch, index, Err(ClientError::Refused(e))),
            }
        }
        self.drain(now);
        if count == 0 {
            self.finish_batch(batch);
        }
        count
    }

    /// Records the answer of command `index` of `batch`; the batch resolves with its last.
    fn answer(&mut self, batch: u64, index: usize, answer: Result<Answer, ClientError>) {
        let Some(b) = self.batches.get_mut(&batch) else {
            return;
        };
        if let Some(slot) = b.answers.get_mut(index) {
            *slot = answer;
        }
        b.unanswered = b.unanswered.saturating_sub(1);
        if b.unanswered == 0 {
            self.finish_batch(batch);
        }
    }

    fn finish_batch(&mut self, batch: u64) {
        if let Some(b) = self.batches.remove(&batch) {
            b.reply.send(Ok(Resolved::Batch(b.answers)));
        }
    }

    /// Commands taken per wake-up: a burst becomes one write, and reads are not starved by
    /// a producer that never stops. A batch counts as its commands and is always taken
    /// whole, so a wake-up handles at most this plus [`Client::MAX_BATCH`] commands.
    pub const REQUESTS_PER_WAKEUP: usize = 256;

    /// Handles `first` (a request the adapter already received, if any) and then what is
    /// queued, until [`REQUESTS_PER_WAKEUP`](Self::REQUESTS_PER_WAKEUP) commands are
    /// handled.
    pub fn take_requests(
        &mut self,
        now: Instant,
        commands: &Commands,
        first: Option<Request>,
    ) -> Queue {
        let mut taken = 0;
        if let Some(request) = first {
            taken += self.handle(now, request).max(1);
        }
        while taken < Self::REQUESTS_PER_WAKEUP {
            match commands.try_recv() {
                Ok(Some(request)) => taken += self.handle(now, request).max(1),
                Ok(None) => return Queue::Empty,
                Err(()) => {
                    self.handle_clients_gone(now);
                    return Queue::ClientsGone;
                }
            }
        }
        Queue::MoreWaiting
    }

    /// Every client handle was dropped: close the connection gracefully.
    pub fn handle_clients_gone(&mut self, now: Instant) {
        self.conn.close(now);
        self.drain(now);
    }

    /// The transport asked for by [`Action::Open`] is ready (TCP and TLS handshakes done).
    pub fn transport_opened(&mut self, now: Instant) {
        self.last_transport_error = None;
        self.feed(now, Input::TransportOpened);
    }

    /// Dialling failed, or reading/writing the open transport failed.
    pub fn transport_failed(&mut self, now: Instant, error: TransportError) {
        tracing::warn!(address = %self.address, %error, "transport failed");
        self.last_transport_error = Some(error.clone());
        if self.startup.is_none() || self.first_attempt == FirstAttempt::Retry {
            self.backlog.push_back(ClientEvent::TransportFailed(error));
        }
        self.feed(now, Input::TransportClosed);
    }

    /// The peer closed the transport (end of stream).
    pub fn transport_closed(&mut self, now: Instant) {
        self.feed(now, Input::TransportClosed);
    }

    /// Bytes read from the transport.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.feed(now, Input::Bytes(bytes));
    }

    /// The deadline from [`poll_timeout`](Self::poll_timeout) passed (spurious calls are
    /// harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.feed(now, Input::Timeout);
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) at the latest.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// The next thing to do to the transport.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        // Bytes after the last queued action stay in `write` until asked for, so the
        // output of many calls since the last wake-up leaves in one write.
        self.actions.pop_front().or_else(|| {
            (!self.write.is_empty()).then(|| Action::Write(self.write.split().freeze()))
        })
    }

    /// Hands queued events to the application, waiting for room in its queue. If the
    /// application dropped its [`Events`], they are discarded.
    pub async fn flush_events(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            if self.events.send(event).await.is_err() {
                self.backlog.clear();
            }
        }
    }

    /// The same as [`flush_events`](Self::flush_events), blocking the calling thread.
    pub fn flush_events_blocking(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            if self.events.send_blocking(event).is_err() {
                self.backlog.clear();
            }
        }
    }

    /// Whether the connection is closed for good and nothing is left to do: the adapter's
    /// loop ends (dropping the driver ends the event stream and wakes `close` callers).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.conn.state() == State::Closed
            && self.actions.is_empty()
            && self.write.is_empty()
            && self.backlog.is_empty()
    }

    /// Whether the core has closed the connection for good (no reconnect follows): a
    /// transport close polled now is the last one, and the adapter lingers on it (see
    /// [`ClientOptions::close_linger`]) instead of dropping the transport at once.
    #[must_use]
    pub fn closed_for_good(&self) -> bool {
        self.conn.state() == State::Closed
    }

    /// Whether at least three quarters of the in-flight window await their PUBACK (see
    /// [`ClientOptions::read_coalescing`]).
    #[must_use]
    pub fn window_mostly_full(&self) -> bool {
        let window = usize::from(self.conn.config().max_inflight);
        self.conn.inflight() * 4 >= window * 3
    }

    /// The core connection, for inspection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn feed(&mut self, now: Instant, input: Input<'_>) {
        self.conn.handle_input(now, input);
        self.drain(now);
    }

    /// Moves every core output into actions (bytes merged into `write`) and events
    /// (outcomes routed).
    fn drain(&mut self, now: Instant) {
        let mut close_now = false;
        while let Some(output) = self.conn.poll_output() {
            match output {
                Output::Transmit(bytes) => self.write.extend_from_slice(&bytes),
                Output::OpenTransport => self.push_action(Action::Open),
                Output::CloseTransport => self.push_action(Action::Close),
                Output::Event(event) => close_now |= self.route(event),
                _ => {}
            }
            if close_now && self.conn.state() != State::Closed {
                // The first attempt failed and it had to succeed: stop for good.
                self.conn.close(now);
            }
        }
    }

    fn push_action(&mut self, action: Action) {
        if !self.write.is_empty() {
            let bytes = self.write.split().freeze();
            self.actions.push_back(Action::Write(bytes));
        }
        self.actions.push_back(action);
    }

    /// Returns true when the connection must close because the first attempt failed.
    fn route(&mut self, event: Event) -> bool {
        if let Some(id) = event.request() {
            match self.routes.remove(&id) {
                Some(Route::One(reply)) => {
                    reply.send(Ok(Resolved::Event(event)));
                    return false;
                }
                Some(Route::Batch { batch, index }) => {
                    self.answer(batch, index, event_to_answer(event));
                    return false;
                }
                None => {}
            }
        }
        let mut close = false;
        match &event {
            Event::Connected { .. } => {
                tracing::info!(address = %self.address, "connected");
                if let Some(startup) = self.startup.take() {
                    let _ = startup.try_send(Ok(()));
                }
            }
            Event::Disconnected { reason, .. } => {
                tracing::info!(address = %self.address, %reason, "disconnected");
                if self.first_attempt == FirstAttempt::MustSucceed {
                    if let Some(startup) = self.startup.take() {
                        let error = match (reason, self.last_transport_error.take()) {
                            (DisconnectReason::Refused(r), _) => ConnectError::Refused(*r),
                            (DisconnectReason::TransportClosed, Some(e)) => {
                                ConnectError::Transport(e)
                            }
                            (other, _) => ConnectError::Disconnected(other.clone()),
                        };
                        let _ = startup.try_send(Err(error));
                        close = true;
                    }
                }
            }
            Event::Warning(w) => tracing::debug!(warning = %w, "connection warning"),
            _ => {}
        }
        self.backlog.push_back(ClientEvent::Proto(event));
        close
    }
}

/// Where a request's outcome goes.
#[derive(Debug)]
enum Route {
    /// The request's own outcome slot.
    One(Reply),
    /// Command `index` of a batch.
    Batch { batch: u64, index: usize },
}

/// A batch some of whose commands are still unanswered.
#[derive(Debug)]
struct Batch {
    /// One per command, in order; `Err(Closed)` until answered.
    answers: BatchAnswers,
    /// Commands not answered yet.
    unanswered: usize,
    reply: Reply,
}

/// Hashes request ids with one multiplication (Fibonacci hashing). The core hands them out
/// in sequence, so SipHash's resistance to chosen keys buys nothing, and the route table is
/// touched twice per request.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
