//! The stream of things the connection tells the application.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_channel::Receiver;
use futures_core::Stream;
use gateway_proto::{Event, ProvisionError, ProvisionedCredentials};

use crate::error::TransportError;

/// Something the application should know about, in order.
///
/// Outcomes of requests made through a [`Client`](crate::Client) go to their
/// [`Pending`](crate::Pending), not here; everything else does: sessions coming and going,
/// server-side RPCs, attribute updates, sub-device notices, warnings, and transport
/// failures the connection recovers from by reconnecting.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// An event of the protocol core ([`gateway_proto::Event`]).
    Proto(Event),
    /// Opening or using the transport failed (TCP, TLS); the connection reconnects after its
    /// backoff.
    TransportFailed(TransportError),
}

/// Receives [`ClientEvent`]s: `.recv().await` or as a [`Stream`] in async code,
/// [`recv_blocking`](Self::recv_blocking) or [`iter`](Self::iter) in blocking code.
///
/// The queue is bounded ([`ClientOptions::event_capacity`](crate::ClientOptions::event_capacity)).
/// When it is full the driver waits for room, which pauses the connection, so keep
/// consuming events; drop the `Events` if you do not want them (they are then discarded).
#[derive(Debug)]
pub struct Events {
    rx: Pin<Box<Receiver<ClientEvent>>>,
}

impl Events {
    pub(crate) fn new(rx: Receiver<ClientEvent>) -> Self {
        Self { rx: Box::pin(rx) }
    }

    /// The next event; `None` once the connection is closed and every event was received.
    pub async fn recv(&self) -> Option<ClientEvent> {
        self.rx.recv().await.ok()
    }

    /// The next event, blocking the calling thread.
    pub fn recv_blocking(&self) -> Option<ClientEvent> {
        self.rx.recv_blocking().ok()
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }

    /// For a provisioning connection ([`Config::provisioning`](gateway_proto::Config::provisioning)):
    /// skips other events until the answer; `None` if the stream ended without one.
    pub async fn provisioned(&self) -> Option<Result<ProvisionedCredentials, ProvisionError>> {
        while let Some(event) = self.recv().await {
            if let ClientEvent::Proto(Event::Provisioned(result)) = event {
                return Some(result);
            }
        }
        None
    }

    /// The same as [`provisioned`](Self::provisioned), blocking the calling thread.
    pub fn provisioned_blocking(&self) -> Option<Result<ProvisionedCredentials, ProvisionError>> {
        self.iter().find_map(|event| match event {
            ClientEvent::Proto(Event::Provisioned(result)) => Some(result),
            _ => None,
        })
    }

    /// Events as a blocking iterator, ending when the connection is closed.
    pub fn iter(&self) -> impl Iterator<Item = ClientEvent> + '_ {
        std::iter::from_fn(move || self.recv_blocking())
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.get_mut().rx.as_mut().poll_next(cx)
    }
}
