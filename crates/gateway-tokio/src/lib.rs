//! # gateway-tokio: the ThingsBoard gateway client on tokio
//!
//! A thin adapter: one task owns the socket (TCP, or TLS with rustls) and a
//! [`Driver`] around the sans-IO core, and waits on three things at
//! once: bytes from the server, requests from [`Client`] handles, and the core's next
//! deadline. Every protocol decision (reconnect and backoff, retransmission, re-announcing
//! sub-devices, timeouts) is the core's; this crate dials when told to and writes all
//! pending bytes in one write per wake-up.
//!
//! ```no_run
//! use gateway_tokio::{connect, ClientEvent, ClientOptions, TlsOptions};
//! use gateway_tokio::gateway_proto::{Credentials, Event};
//! use serde_json::{json, Map};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Mutual TLS: a private CA and the gateway's X.509 certificate.
//! let options = ClientOptions::new("tb.example.com", 8883, Credentials::X509)
//!     .tls(TlsOptions::with_ca_file("ca.pem").client_identity_files("gateway.pem", "gateway.key"));
//! let (client, events) = connect(options).await?;
//!
//! client.connect_device("Boiler 7", Some("boiler")).await?.await?;
//! let mut values = Map::new();
//! values.insert("temperature".into(), json!(71.5));
//! client.device_telemetry("Boiler 7", values).await?.await?;
//!
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::Proto(Event::RpcRequest { device: Some(device), id, .. }) = event {
//!         client.device_rpc_reply(device, id, json!({"ok": true})).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::time::Instant;

pub use gateway_client::TransportError;
use gateway_client::{Action, Commands, Driver, Parts, Queue, TlsSetup};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub use gateway_client::{
    gateway_proto, Answer, AttributeValues, BlockingClient, Client, ClientError, ClientEvent,
    ClientOptions, ConnectError, Delivery, Events, FirstAttempt, Pending, Startup, TlsError,
    TlsOptions,
};

/// Connects and waits for the first session. A refusal (bad credentials), a TLS failure or an
/// unreachable server is returned as the error and nothing keeps running; after the first
/// session the connection reconnects by itself.
///
/// The connection runs on a task spawned on the current tokio runtime; it ends when the last
/// [`Client`] is dropped or [`Client::close`] is called.
pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ConnectError> {
    let spawned = spawn(options, FirstAttempt::MustSucceed)?;
    spawned.startup.wait().await?;
    Ok((spawned.client, spawned.events))
}

/// What [`spawn`] starts.
#[derive(Debug)]
#[non_exhaustive]
pub struct Spawned {
    /// The handle for requests.
    pub client: Client,
    /// The event stream.
    pub events: Events,
    /// Resolves with the first session (or, with [`FirstAttempt::MustSucceed`], the first
    /// failure).
    pub startup: Startup,
    /// The connection's task; it ends when the connection is closed.
    pub task: JoinHandle<()>,
}

/// Starts the connection task without waiting. With [`FirstAttempt::Retry`] it keeps trying
/// from the start (for a service that may come up before its server).
///
/// Fails at once only for an invalid configuration or unreadable TLS files.
pub fn spawn(options: ClientOptions, first_attempt: FirstAttempt) -> Result<Spawned, ConnectError> {
    let tls = options.tls_setup()?;
    let Parts {
        driver,
        commands,
        startup,
        client,
        events,
        ..
    } = Driver::build(&options, now(), first_attempt, None)?;
    let task = tokio::spawn(run(driver, commands, options, tls));
    Ok(Spawned {
        client,
        events,
        startup,
        task,
    })
}

/// The clock the core sees: tokio's, so tests with a paused clock stay consistent.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens TCP, then TLS if configured. Never falls back to plain TCP.
async fn dial(
    options: &ClientOptions,
    tls: Option<&TlsSetup>,
) -> Result<Box<dyn Io>, TransportError> {
    let address = options.address();
    let tcp = TcpStream::connect((
        options.host.trim_start_matches('[').trim_end_matches(']'),
        options.port,
    ))
    .await
    .map_err(|e| TransportError::connect(&address, &e))?;
    // MQTT packets are small and already batched per wake-up: no Nagle delay.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    match tls {
        None => Ok(Box::new(tcp)),
        Some(setup) => {
            let connector = tokio_rustls::TlsConnector::from(setup.config.clone());
            let stream = connector
                .connect(setup.server_name.clone(), tcp)
                .await
                .map_err(|e| TransportError::connect(&address, &e))?;
            Ok(Box::new(stream))
        }
    }
}

/// Reads from the transport; pending forever when there is none.
async fn read_some(io: &mut Option<Box<dyn Io>>, buf: &mut [u8]) -> std::io::Result<usize> {
    match io {
        Some(stream) => stream.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The connection task: perform the driver's actions, hand over events, then wait for the
/// next input.
async fn run(
    mut driver: Driver,
    commands: Commands,
    options: ClientOptions,
    tls: Option<TlsSetup>,
) {
    let mut io: Option<Box<dyn Io>> = None;
    let mut buf = vec![0u8; options.read_buffer.max(1024)];
    let mut clients_gone = false;
    loop {
        while let Some(action) = driver.poll_action() {
            match action {
                Action::Write(bytes) => {
                    if let Some(stream) = io.as_mut() {
                        let written = async {
                            stream.write_all(&bytes).await?;
                            stream.flush().await
                        };
                        if let Err(e) = written.await {
                            io = None;
                            driver.transport_failed(now(), TransportError::io(&e));
                        }
                    }
                }
                Action::Open => {
                    io = None;
                    // The core's connect timeout bounds the dial too.
                    let deadline = driver.poll_timeout();
                    let dialled = async {
                        match deadline {
                            Some(at) => {
                                tokio::time::timeout_at(at.into(), dial(&options, tls.as_ref()))
                                    .await
                                    .ok()
                            }
                            None => Some(dial(&options, tls.as_ref()).await),
                        }
                    };
                    match dialled.await {
                        Some(Ok(stream)) => {
                            io = Some(stream);
                            driver.transport_opened(now());
                        }
                        Some(Err(e)) => driver.transport_failed(now(), e),
                        None => driver.handle_timeout(now()),
                    }
                }
                Action::Close => {
                    if let Some(mut stream) = io.take() {
                        // Best effort: the peer may already be gone.
                        let _ = stream.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        driver.flush_events().await;
        if driver.is_finished() {
            break;
        }
        let deadline = driver.poll_timeout();
        tokio::select! {
            read = read_some(&mut io, &mut buf) => match read {
                Ok(0) => {
                    io = None;
                    driver.transport_closed(now());
                }
                Ok(n) => driver.handle_bytes(now(), &buf[..n]),
                Err(e) => {
                    io = None;
                    driver.transport_failed(now(), TransportError::io(&e));
                }
            },
            request = commands.recv(), if !clients_gone => match request {
                Some(request) => {
                    if driver.take_requests(now(), &commands, Some(request)) == Queue::ClientsGone {
                        clients_gone = true;
                    }
                }
                None => {
                    clients_gone = true;
                    driver.handle_clients_gone(now());
                }
            },
            () = sleep_until(deadline) => driver.handle_timeout(now()),
        }
    }
    tracing::debug!("connection task finished");
}
