//! What travels from a client handle to the driver, and the typed outcome that comes back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use async_channel::Sender;
use gateway_proto::payload::ClientRpcResponse;
use gateway_proto::{Command, Event, Stats};
use serde_json::{Map, Value};

use crate::error::ClientError;

/// One message from a [`Client`](crate::Client) to the driver. Adapters receive it from
/// [`Commands`](crate::Commands) and hand it to [`Driver::handle_request`](crate::Driver::handle_request)
/// without looking inside.
#[derive(Debug)]
pub struct Request(pub(crate) RequestKind);

#[derive(Debug)]
pub(crate) enum RequestKind {
    /// A command; its outcome goes to `reply` (if the caller still waits).
    Command { command: Command, reply: Reply },
    /// Commands handed to the core together, in order; one outcome for all of them goes to
    /// `reply` once each has its own. At most [`Client::MAX_BATCH`](crate::Client::MAX_BATCH).
    Batch {
        commands: Vec<Command>,
        reply: Reply,
    },
    /// A snapshot of the connection's counters.
    Stats(Sender<Stats>),
    /// Close the connection for good; `done` is dropped when the driver stops.
    Close { done: Sender<()> },
}

/// The outcome of a publish-like request (telemetry, attributes, connect/disconnect of a
/// sub-device, claim, RPC reply, raw publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// QoS 1: the server acknowledged it with a success code.
    Acknowledged,
    /// QoS 0: handed to the transport; MQTT gives no further feedback.
    Transmitted,
}

/// The answer to an attribute request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttributeValues {
    /// The sub-device (`None`: the connection's own device).
    pub device: Option<String>,
    /// Client-scope attributes found (missing keys are absent).
    pub client: Map<String, Value>,
    /// Shared attributes found (missing keys are absent).
    pub shared: Map<String, Value>,
}

/// Any outcome, for [`Client::send`](crate::Client::send) with an arbitrary command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Answer {
    /// A publish-like request finished.
    Delivered(Delivery),
    /// An attribute request was answered.
    Attributes(AttributeValues),
    /// A client-side RPC was answered.
    Rpc(ClientRpcResponse),
    /// A raw request (attribute request or client-side RPC with an application-encoded
    /// payload, e.g. protobuf on the `/p` topics) was answered with these bytes.
    Raw(bytes::Bytes),
}

/// The answer to each command of a batch, in the order the commands were given.
pub type BatchAnswers = Vec<Result<Answer, ClientError>>;

/// What the driver resolves a request with.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// The core's outcome event for one command.
    Event(Event),
    /// Every command of a batch, answered.
    Batch(BatchAnswers),
}

/// Turns what the driver resolved a request with into a typed result.
pub(crate) type Convert<T> = fn(Resolved) -> Result<T, ClientError>;

pub(crate) fn to_batch(resolved: Resolved) -> Result<BatchAnswers, ClientError> {
    match resolved {
        Resolved::Batch(answers) => Ok(answers),
        // A batch request is always resolved with a batch.
        Resolved::Event(_) => Err(ClientError::Closed),
    }
}

pub(crate) fn to_answer(resolved: Resolved) -> Result<Answer, ClientError> {
    match resolved {
        Resolved::Event(event) => event_to_answer(event),
        // A single command is always resolved with its event.
        Resolved::Batch(_) => Err(ClientError::Closed),
    }
}

/// The typed answer of one command's outcome event.
pub(crate) fn event_to_answer(event: Event) -> Result<Answer, ClientError> {
    match event {
        Event::Delivered(_) => Ok(Answer::Delivered(Delivery::Acknowledged)),
        Event::Sent(_) => Ok(Answer::Delivered(Delivery::Transmitted)),
        Event::AttributeResponse {
            device,
            client,
            shared,
            ..
        } => Ok(Answer::Attributes(AttributeValues {
            device,
            client,
            shared,
        })),
        Event::RpcResponse { response, .. } => Ok(Answer::Rpc(response)),
        Event::Raw(raw) if raw.request().is_some() => Ok(Answer::Raw(raw.payload().clone())),
        Event::Failed { error, .. } => Err(ClientError::Failed(error)),
        // Only outcome events are routed to a request (`Event::request()` is `Some`).
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_delivery(resolved: Resolved) -> Result<Delivery, ClientError> {
    match to_answer(resolved)? {
        Answer::Delivered(d) => Ok(d),
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_attributes(resolved: Resolved) -> Result<AttributeValues, ClientError> {
    match to_answer(resolved)? {
        Answer::Attributes(a) => Ok(a),
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_raw(resolved: Resolved) -> Result<bytes::Bytes, ClientError> {
    match to_answer(resolved)? {
        Answer::Raw(b) => Ok(b),
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_rpc(resolved: Resolved) -> Result<ClientRpcResponse, ClientError> {
    match to_answer(resolved)? {
        Answer::Rpc(r) => Ok(r),
        _ => Err(ClientError::Closed),
    }
}

/// What a request's outcome slot holds.
pub(crate) type Outcome = Result<Resolved, ClientError>;

/// One request's outcome, shared by the driver's [`Reply`] and the caller's [`Pending`]: a
/// one-shot slot (a mutex, the async waiter's waker, and a condition variable for a blocking
/// waiter), one allocation per request. Cheaper than a channel per request: no queue, and no
/// wake-up unless someone waits.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Outcome>,
    /// The driver dropped its [`Reply`] without an outcome (it stopped).
    closed: bool,
    waker: Option<Waker>,
    /// A thread waits in [`Pending::wait`].
    blocked: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the outcome (or marks the slot closed) and wakes whoever waits.
    fn finish(&self, outcome: Option<Outcome>) {
        let mut state = self.lock();
        match outcome {
            Some(o) => state.outcome = Some(o),
            None => state.closed = true,
        }
        let waker = state.waker.take();
        let blocked = state.blocked;
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        if blocked {
            self.ready.notify_all();
        }
    }
}

/// The driver's end of one request's outcome. Dropping it unsent resolves the [`Pending`]
/// with [`ClientError::Closed`].
#[derive(Debug)]
pub(crate) struct Reply(Option<Arc<Slot>>);

impl Reply {
    /// A new outcome slot: the driver's end and the caller's end.
    pub(crate) fn new<T>(convert: Convert<T>) -> (Self, Pending<T>) {
        let slot = Arc::new(Slot::default());
        (
            Self(Some(Arc::clone(&slot))),
            Pending {
                slot: Some(slot),
                convert,
            },
        )
    }

    /// Delivers the outcome (a no-op if the caller stopped waiting).
    pub(crate) fn send(mut self, outcome: Outcome) {
        if let Some(slot) = self.0.take() {
            // Nobody waits any more when the caller's end is gone.
            if Arc::strong_count(&slot) > 1 {
                slot.finish(Some(outcome));
            }
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.finish(None);
        }
    }
}

/// The outcome of one accepted request, to `.await` (any runtime) or [`wait`](Self::wait)
/// for (blocking).
///
/// Every accepted request ends in exactly one outcome, so awaiting never hangs for longer
/// than the connection's own timeouts. Dropping a `Pending` does not cancel the request;
/// its outcome is then discarded.
#[must_use = "the outcome says whether the request succeeded"]
pub struct Pending<T> {
    /// `None` once the outcome was taken.
    slot: Option<Arc<Slot>>,
    convert: Convert<T>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    fn resolve(&self, outcome: Outcome) -> Result<T, ClientError> {
        match outcome {
            Ok(resolved) => (self.convert)(resolved),
            Err(e) => Err(e),
        }
    }

    /// Blocks the calling thread until the outcome arrives. Do not call it inside an async
    /// task; `.await` the `Pending` there.
    pub fn wait(mut self) -> Result<T, ClientError> {
        let Some(slot) = self.slot.take() else {
            return Err(ClientError::Closed);
        };
        let mut state = slot.lock();
        loop {
            if let Some(outcome) = state.outcome.take() {
                drop(state);
                return self.resolve(outcome);
            }
            if state.closed {
                return Err(ClientError::Closed);
            }
            state.blocked = true;
            state = slot
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(slot) = this.slot.as_ref() else {
            return Poll::Ready(Err(ClientError::Closed));
        };
        let mut state = slot.lock();
        if let Some(outcome) = state.outcome.take() {
            drop(state);
            this.slot = None;
            return Poll::Ready(this.resolve(outcome));
        }
        if state.closed {
            drop(state);
            this.slot = None;
            return Poll::Ready(Err(ClientError::Closed));
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
