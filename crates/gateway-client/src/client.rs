//! The handles applications talk to: [`Client`] (async, any runtime) and [`BlockingClient`].
//!
//! Both have the same methods, generated from one list, in ThingsBoard's words. Each method
//! puts one request on the driver's bounded queue (waiting for room, so a fast producer is
//! slowed down instead of growing memory) and returns a [`Pending`] outcome.

use std::sync::Arc;

use async_channel::Sender;
use gateway_proto::payload::{Claim, ClientRpcResponse};
use gateway_proto::{AttributeScope, Command, OtaKind, Stats};
use serde_json::{Map, Value};

use crate::error::ClientError;
use crate::request::{
    to_answer, to_attributes, to_batch, to_delivery, to_raw, to_rpc, Answer, AttributeValues,
    BatchAnswers, Convert, Delivery, Pending, Reply, Request, RequestKind,
};

/// Called after each request is queued, for drivers that cannot wait on the queue itself
/// (the blocking adapter's thread waits on its own channel).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A handle to one ThingsBoard connection, for async code on any runtime. Cheap to clone;
/// the connection closes gracefully when the last handle is dropped or [`close`](Self::close)
/// is called.
///
/// Methods return once the request is queued (waiting for room if the queue is full); the
/// returned [`Pending`] resolves to its outcome.
#[derive(Clone)]
pub struct Client {
    // Field order matters: fields drop in declaration order, so when the last handle goes,
    // the queue is closed *before* the wake closure is dropped. An adapter may wake its
    // driver from that closure's drop and must then find the queue closed.
    tx: Sender<Request>,
    wake: Option<Wake>,
}

/// The same handle for blocking code: every method blocks the calling thread until the
/// request is queued; [`Pending::wait`] blocks until its outcome.
#[derive(Clone)]
pub struct BlockingClient {
    inner: Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.tx.is_closed())
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlockingClient").field(&self.inner).finish()
    }
}

/// The batch request for `commands`, or why it cannot be one.
fn batch_request(
    commands: Vec<Command>,
) -> Result<(RequestKind, Pending<BatchAnswers>), ClientError> {
    if commands.len() > Client::MAX_BATCH {
        return Err(ClientError::BatchTooLarge {
            len: commands.len(),
            max: Client::MAX_BATCH,
        });
    }
    let (reply, pending) = Reply::new(to_batch);
    Ok((RequestKind::Batch { commands, reply }, pending))
}

impl Client {
    /// The most commands one [`send_batch`](Self::send_batch) takes. It bounds the work of
    /// one wake-up of the driver, and with
    /// [`ClientOptions::command_capacity`](crate::ClientOptions::command_capacity) the
    /// commands a full request queue holds.
    pub const MAX_BATCH: usize = 1024;

    pub(crate) fn new(tx: Sender<Request>, wake: Option<Wake>) -> Self {
        Self { tx, wake }
    }

    /// The blocking form of this handle (same connection).
    pub fn blocking(&self) -> BlockingClient {
        BlockingClient {
            inner: self.clone(),
        }
    }

    async fn enqueue(&self, request: RequestKind) -> Result<(), ClientError> {
        self.tx
            .send(Request(request))
            .await
            .map_err(|_| ClientError::Closed)?;
        if let Some(wake) = &self.wake {
            wake();
        }
        Ok(())
    }

    async fn submit<T>(
        &self,
        command: Command,
        convert: Convert<T>,
    ) -> Result<Pending<T>, ClientError> {
        let (reply, pending) = Reply::new(convert);
        self.enqueue(RequestKind::Command { command, reply })
            .await?;
        Ok(pending)
    }

    /// Several commands as one request: they take one place in the request queue, reach the
    /// connection together and in this order (nothing else is handled between them), and
    /// one [`Pending`] resolves once every one of them has its outcome, with an answer per
    /// command in the same order. Each command is handled as if sent alone: the core may
    /// refuse one ([`ClientError::Refused`]) and accept the next, and each is retried,
    /// acknowledged or failed on its own.
    ///
    /// For producers with many messages at once (a poll cycle of many sub-devices): a
    /// request, its queue slot and its outcome slot are paid once per batch instead of once
    /// per command. More than [`MAX_BATCH`](Self::MAX_BATCH) commands are refused with
    /// [`ClientError::BatchTooLarge`] and nothing is queued; an empty batch resolves to an
    /// empty list.
    pub async fn send_batch(
        &self,
        commands: Vec<Command>,
    ) -> Result<Pending<BatchAnswers>, ClientError> {
        let (request, pending) = batch_request(commands)?;
        self.enqueue(request).await?;
        Ok(pending)
    }

    /// Counters and buffer levels of the connection.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let (reply, rx) = async_channel::bounded(1);
        self.enqueue(RequestKind::Stats(reply)).await?;
        rx.recv().await.map_err(|_| ClientError::Closed)
    }

    /// Closes the connection for good (an MQTT DISCONNECT if a session is up); unfinished
    /// requests fail with [`RequestError::Closed`](gateway_proto::RequestError::Closed).
    /// Returns when the driver has stopped.
    pub async fn close(&self) {
        let (done, rx) = async_channel::bounded::<()>(1);
        if self.enqueue(RequestKind::Close { done }).await.is_ok() {
            // The driver drops `done` when it stops; nothing is ever sent on it.
            let _ = rx.recv().await;
        }
    }

    /// Whether the connection is closed (its driver has stopped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl BlockingClient {
    fn enqueue(&self, request: RequestKind) -> Result<(), ClientError> {
        self.inner
            .tx
            .send_blocking(Request(request))
            .map_err(|_| ClientError::Closed)?;
        if let Some(wake) = &self.inner.wake {
            wake();
        }
        Ok(())
    }

    fn submit<T>(&self, command: Command, convert: Convert<T>) -> Result<Pending<T>, ClientError> {
        let (reply, pending) = Reply::new(convert);
        self.enqueue(RequestKind::Command { command, reply })?;
        Ok(pending)
    }

    /// Several commands as one request, answered together; see [`Client::send_batch`].
    pub fn send_batch(&self, commands: Vec<Command>) -> Result<Pending<BatchAnswers>, ClientError> {
        let (request, pending) = batch_request(commands)?;
        self.enqueue(request)?;
        Ok(pending)
    }

    /// Counters and buffer levels of the connection.
    pub fn stats(&self) -> Result<Stats, ClientError> {
        let (reply, rx) = async_channel::bounded(1);
        self.enqueue(RequestKind::Stats(reply))?;
        rx.recv_blocking().map_err(|_| ClientError::Closed)
    }

    /// Closes the connection for good (an MQTT DISCONNECT if a session is up); unfinished
    /// requests fail with [`RequestError::Closed`](gateway_proto::RequestError::Closed).
    /// Returns when the driver has stopped.
    pub fn close(&self) {
        let (done, rx) = async_channel::bounded::<()>(1);
        if self.enqueue(RequestKind::Close { done }).is_ok() {
            let _ = rx.recv_blocking();
        }
    }

    /// Whether the connection is closed (its driver has stopped).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The async form of this handle (same connection).
    pub fn to_async(&self) -> Client {
        self.inner.clone()
    }
}

/// Generates each request method twice: `async` on [`Client`], blocking on [`BlockingClient`].
macro_rules! request_methods {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty = $command:expr, $convert:expr;
    )*) => {
        impl Client {$(
            $(#[$doc])*
            pub async fn $name(&self, $($arg: $ty),*) -> Result<Pending<$out>, ClientError> {
                self.submit($command, $convert).await
            }
        )*}
        impl BlockingClient {$(
            $(#[$doc])*
            pub fn $name(&self, $($arg: $ty),*) -> Result<Pending<$out>, ClientError> {
                self.submit($command, $convert)
            }
        )*}
    };
}

request_methods! {
    /// Any command, including [`Command::Publish`] on a topic of your choice.
    fn send(command: Command) -> Answer = command, to_answer;

    /// Gateway API: announce a sub-device (`v1/gateway/connect`), optionally with its device
    /// profile. The connection re-announces it after every reconnect.
    fn connect_device(device: impl Into<String>, device_type: Option<&str>) -> Delivery =
        Command::connect_device(device, device_type), to_delivery;

    /// Gateway API: a sub-device went away (`v1/gateway/disconnect`); it is no longer
    /// re-announced.
    fn disconnect_device(device: impl Into<String>) -> Delivery =
        Command::disconnect_device(device), to_delivery;

    /// Gateway API: telemetry of a sub-device, stamped with the server's time.
    fn device_telemetry(device: impl Into<String>, values: Map<String, Value>) -> Delivery =
        Command::device_telemetry(device, values), to_delivery;

    /// Gateway API: client-side attributes of a sub-device.
    fn device_attributes(device: impl Into<String>, values: Map<String, Value>) -> Delivery =
        Command::device_attributes(device, values), to_delivery;

    /// Gateway API: ask for a sub-device's client or shared attributes.
    fn request_device_attributes(
        device: impl Into<String>,
        scope: AttributeScope,
        keys: Vec<String>
    ) -> AttributeValues =
        Command::request_device_attributes(device, scope, keys), to_attributes;

    /// Gateway API: answer a server-side RPC addressed to a sub-device.
    fn device_rpc_reply(device: impl Into<String>, id: u64, data: Value) -> Delivery =
        Command::device_rpc_reply(device, id, data), to_delivery;

    /// Gateway API: let a user claim a sub-device with this secret key and duration.
    fn claim_device(device: impl Into<String>, claim: Claim) -> Delivery =
        Command::Gateway(gateway_proto::GatewayCommand::Claim { device: device.into(), claim }),
        to_delivery;

    /// Device API: telemetry of this connection's own device, stamped with the server's time.
    fn telemetry(values: Map<String, Value>) -> Delivery = Command::telemetry(values), to_delivery;

    /// Device API: client-side attributes of this connection's own device.
    fn attributes(values: Map<String, Value>) -> Delivery = Command::attributes(values), to_delivery;

    /// Device API: ask for this device's client and shared attributes.
    fn request_attributes(client_keys: Vec<String>, shared_keys: Vec<String>) -> AttributeValues =
        Command::request_attributes(client_keys, shared_keys), to_attributes;

    /// Device API: answer a server-side RPC addressed to this device.
    fn rpc_reply(id: u64, data: Value) -> Delivery = Command::rpc_reply(id, data), to_delivery;

    /// Device API: call a client-side RPC (e.g. `getCurrentTime`, `getSessionLimits`).
    fn rpc(method: impl Into<String>, params: Value) -> ClientRpcResponse =
        Command::rpc(method, params), to_rpc;

    /// Device API: let a user claim this device with this secret key and duration.
    fn claim(claim: Claim) -> Delivery =
        Command::Device(gateway_proto::DeviceCommand::Claim(claim)), to_delivery;

    /// OTA: download the assigned firmware or software (reports `DOWNLOADING`); the image
    /// arrives on the event stream as [`OtaEvent`](gateway_proto::OtaEvent)s. Refused unless
    /// [`Config::ota`](gateway_proto::Config::ota) is set and a verifiable package is
    /// assigned.
    fn ota_download(kind: OtaKind) -> Delivery = Command::ota_download(kind), to_delivery;

    /// OTA: the verified image is being installed (reports `UPDATING`).
    fn ota_updating(kind: OtaKind) -> Delivery = Command::ota_updating(kind), to_delivery;

    /// OTA: this version is installed now (reports `UPDATED` with `current_*_title` and
    /// `current_*_version`); an assignment of it is no longer announced.
    fn ota_updated(kind: OtaKind, title: impl Into<String>, version: impl Into<String>) -> Delivery =
        Command::ota_updated(kind, title, version), to_delivery;

    /// OTA: the update failed (reports `FAILED` with this error) and a running download of
    /// this kind stops.
    fn ota_failed(kind: OtaKind, error: impl Into<String>) -> Delivery =
        Command::ota_failed(kind, error), to_delivery;

    /// A raw QoS 1 publish on any topic ([`Command::publish`]).
    fn publish(topic: impl Into<String>, payload: bytes::Bytes) -> Delivery =
        Command::publish(topic, payload), to_delivery;

    /// Device API: telemetry encoded by the application (protobuf on `v2/t/p` with
    /// [`Config::device_topics`](gateway_proto::Config::device_topics) set to `V2Proto`),
    /// carrying `data_points` key-value pairs (ThingsBoard's data-point limit counts them).
    fn telemetry_bytes(payload: bytes::Bytes, data_points: u64) -> Delivery =
        Command::telemetry_bytes(payload, data_points), to_delivery;

    /// Device API: client attributes encoded by the application.
    fn attributes_bytes(payload: bytes::Bytes, data_points: u64) -> Delivery =
        Command::attributes_bytes(payload, data_points), to_delivery;

    /// Device API: an attribute request encoded by the application; the answer's bytes.
    fn request_attributes_bytes(payload: bytes::Bytes) -> bytes::Bytes =
        Command::request_attributes_bytes(payload), to_raw;

    /// Device API: a client-side RPC encoded by the application; the answer's bytes.
    fn rpc_bytes(payload: bytes::Bytes) -> bytes::Bytes = Command::rpc_bytes(payload), to_raw;

    /// Device API: the reply to server-side RPC `id` (received as
    /// [`RawDownlink::RpcRequest`](gateway_proto::raw::RawDownlink::RpcRequest)), encoded by
    /// the application.
    fn rpc_reply_bytes(id: u64, payload: bytes::Bytes) -> Delivery =
        Command::rpc_reply_bytes(id, payload), to_delivery;
}
