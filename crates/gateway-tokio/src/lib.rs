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
    gateway_proto, Answer, AttributeValues, BatchAnswers, BlockingClient, Client, ClientError,
    ClientEvent, ClientOptions, ConnectError, Delivery, Events, FirstAttempt, Pending, Startup,
    TlsError, TlsOptions,
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

/// Opens TCP, then TLS if configured. Never falls back to plain TCP. A host name is resolved
/// by tokio on its blocking pool: the core's connect timeout drops this future even while a
/// resolver hangs, and the lookup keeps its pool thread (a bounded pool) until the system
/// resolver gives up.
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

/// Writes all of `bytes` and flushes, failing with `TimedOut` when one step makes no
/// progress for `stall` (see `ClientOptions::write_stall_timeout`). An abandoned write leaves
/// the stream mid-packet: the caller drops the transport.
async fn write_all_or_stall(
    stream: &mut Box<dyn Io>,
    mut bytes: &[u8],
    stall: std::time::Duration,
) -> std::io::Result<()> {
    let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, "write stalled");
    while !bytes.is_empty() {
        match tokio::time::timeout(stall, stream.write(bytes)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => bytes = bytes.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled()),
        }
    }
    tokio::time::timeout(stall, stream.flush())
        .await
        .map_err(|_| stalled())?
}

/// After the sending side is shut down: reads and discards until the server closes its side
/// (or fails), for at most `linger`, so that dropping the stream does not reset a connection
/// whose last bytes the server has not read yet (`ClientOptions::close_linger`).
async fn linger(stream: &mut Box<dyn Io>, buf: &mut [u8], linger: std::time::Duration) {
    let drain = async { while matches!(stream.read(buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(linger, drain).await;
}

/// Reads from the transport; pending forever when there is none.
async fn read_some(io: &mut Option<Box<dyn Io>>, buf: &mut [u8]) -> std::io::Result<usize> {
    match io {
        Some(stream) => stream.read(buf).await,
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
    // One timer for the core's deadline, re-armed only when the deadline changes (a new
    // timer per wake-up costs a timer-wheel insertion and removal each time).
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // Set after a read while the in-flight window is mostly full (`read_coalescing`).
    let mut coalesce = false;
    loop {
        while let Some(action) = driver.poll_action() {
            match action {
                Action::Write(bytes) => {
                    if let Some(stream) = io.as_mut() {
                        let stall = options.write_stall_timeout;
                        if let Err(e) = write_all_or_stall(stream, &bytes, stall).await {
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
                        if driver.closed_for_good() {
                            linger(&mut stream, &mut buf, options.close_linger).await;
                        }
                    }
                }
                _ => {}
            }
        }
        driver.flush_events().await;
        if driver.is_finished() {
            break;
        }
        if let (true, Some(wait)) = (coalesce, options.read_coalescing) {
            coalesce = false;
            // Let more acknowledgements arrive; the core's own deadline still comes first.
            // A wait too long to represent is a wait for the deadline alone.
            let until = tokio::time::Instant::now().checked_add(wait);
            let until = match (until, driver.poll_timeout()) {
                (Some(until), Some(at)) => Some(until.min(at.into())),
                (until, None) => until,
                (None, Some(at)) => Some(at.into()),
            };
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        }
        let deadline = driver.poll_timeout();
        if deadline != armed {
            if let Some(at) = deadline {
                timer.as_mut().reset(at.into());
            }
            armed = deadline;
        }
        tokio::select! {
            read = read_some(&mut io, &mut buf) => match read {
                Ok(0) => {
                    io = None;
                    driver.transport_closed(now());
                }
                Ok(n) => {
                    driver.handle_bytes(now(), &buf[..n]);
                    coalesce = driver.window_mostly_full();
                }
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
            () = &mut timer, if armed.is_some() => {
                armed = None;
                driver.handle_timeout(now());
            }
        }
    }
    tracing::debug!("connection task finished");
}
