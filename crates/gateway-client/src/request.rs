//! What travels from a client handle to the driver, and the typed outcome that comes back.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use futures_core::Stream;
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
    Command {
        command: Command,
        reply: Sender<Result<Event, ClientError>>,
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

/// Turns the core's outcome event into a typed result.
pub(crate) type Convert<T> = fn(Event) -> Result<T, ClientError>;

pub(crate) fn to_answer(event: Event) -> Result<Answer, ClientError> {
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

pub(crate) fn to_delivery(event: Event) -> Result<Delivery, ClientError> {
    match to_answer(event)? {
        Answer::Delivered(d) => Ok(d),
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_attributes(event: Event) -> Result<AttributeValues, ClientError> {
    match to_answer(event)? {
        Answer::Attributes(a) => Ok(a),
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_raw(event: Event) -> Result<bytes::Bytes, ClientError> {
    match to_answer(event)? {
        Answer::Raw(b) => Ok(b),
        _ => Err(ClientError::Closed),
    }
}

pub(crate) fn to_rpc(event: Event) -> Result<ClientRpcResponse, ClientError> {
    match to_answer(event)? {
        Answer::Rpc(r) => Ok(r),
        _ => Err(ClientError::Closed),
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
    rx: Pin<Box<Receiver<Result<Event, ClientError>>>>,
    convert: Convert<T>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    pub(crate) fn new(rx: Receiver<Result<Event, ClientError>>, convert: Convert<T>) -> Self {
        Self {
            rx: Box::pin(rx),
            convert,
        }
    }

    /// Blocks the calling thread until the outcome arrives. Do not call it inside an async
    /// task; `.await` the `Pending` there.
    pub fn wait(self) -> Result<T, ClientError> {
        match self.rx.recv_blocking() {
            Ok(Ok(event)) => (self.convert)(event),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.rx.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(event))) => Poll::Ready((this.convert)(event)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(None) => Poll::Ready(Err(ClientError::Closed)),
        }
    }
}
