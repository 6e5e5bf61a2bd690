//! # gateway-async-std: the ThingsBoard gateway client on smol, async-std or any executor
//!
//! A thin adapter written only on the `futures-io` traits (through `futures-lite`),
//! [`async-io`](async_io) (`Async<TcpStream>`, `Timer`) and `futures-rustls`: one future
//! owns the socket (TCP, or TLS with rustls and the *ring* provider) and a
//! [`Driver`] around the sans-IO core, and waits on three things at
//! once: bytes from the server, requests from [`Client`] handles, and the core's next
//! deadline. Every protocol decision (reconnect and backoff, retransmission, re-announcing
//! sub-devices, timeouts) is the core's; this crate dials when told to and writes all
//! pending bytes in one write per wake-up.
//!
//! ## smol, async-std, or anything else
//!
//! Nothing here depends on an executor. async-io drives its own reactor (on the thread
//! calling `async_io::block_on`, or on its fallback thread), so the same code runs under
//! `smol` (which *is* async-io plus `async-executor`), under `async-std` (built on
//! async-io and `async-global-executor`) and under any other executor. async-std has been
//! discontinued (RUSTSEC-2025-0052) and this crate does not depend on it; its tests run
//! every scenario under both `smol::block_on` and `async_std::task::block_on`, with
//! async-std as a dev-dependency only. For new code, prefer smol.
//!
//! There is no executor-neutral way to spawn a task, so there are two ways to run the
//! connection:
//!
//! * [`connect`] and [`spawn`] run it on a dedicated thread with `async_io::block_on`;
//!   nothing else is needed.
//! * [`driver`] hands back the connection future to spawn on your own executor:
//!   `smol::spawn(future).detach()` or `async_std::task::spawn(future)`.
//!
//! ```no_run
//! use gateway_async_std::{connect, ClientEvent, ClientOptions, TlsOptions};
//! use gateway_async_std::gateway_proto::{Credentials, Event};
//! use serde_json::{json, Map};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     // Mutual TLS: a private CA and the gateway's X.509 certificate.
//!     let options = ClientOptions::new("tb.example.com", 8883, Credentials::X509).tls(
//!         TlsOptions::with_ca_file("ca.pem").client_identity_files("gateway.pem", "gateway.key"),
//!     );
//!     let (client, events) = connect(options).await?;
//!
//!     client.connect_device("Boiler 7", Some("boiler")).await?.await?;
//!     let mut values = Map::new();
//!     values.insert("temperature".into(), json!(71.5));
//!     client.device_telemetry("Boiler 7", values).await?.await?;
//!
//!     while let Some(event) = events.recv().await {
//!         if let ClientEvent::Proto(Event::RpcRequest { device: Some(device), id, .. }) = event {
//!             client.device_rpc_reply(device, id, json!({"ok": true})).await?;
//!         }
//!     }
//!     Ok(())
//! })
//! # }
//! ```
//!
//! The connection on your own executor instead of a thread:
//!
//! ```no_run
//! use gateway_async_std::{driver, ClientOptions, FirstAttempt};
//! use gateway_async_std::gateway_proto::Credentials;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let options =
//!         ClientOptions::new("127.0.0.1", 1883, Credentials::AccessToken("TOKEN".into()));
//!     let (client, events, startup, connection) = driver(options, FirstAttempt::MustSucceed)?;
//!     smol::spawn(connection).detach(); // or: async_std::task::spawn(connection);
//!     startup.wait().await?;
//!     client.telemetry(serde_json::Map::new()).await?.await?;
//!     # drop(events);
//!     Ok(())
//! })
//! # }
//! ```
//!
//! ## Name resolution
//!
//! An IP literal is used as is. A DNS name is resolved with the standard library's resolver
//! (`std::net::ToSocketAddrs`) on the `blocking` crate's thread pool, so the core's connect
//! timeout fires even while a resolver hangs; each resolved address is then dialled in turn.
//! A lookup that outlives its attempt keeps its pool thread until the system resolver gives
//! up (the pool is bounded: 500 threads by default).
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use gateway_client::{Action, Commands, Driver, Parts, Queue, Request, TlsSetup};

pub use gateway_client::{
    gateway_proto, Answer, AttributeValues, BatchAnswers, BlockingClient, Client, ClientError,
    ClientEvent, ClientOptions, ConnectError, Delivery, Events, FirstAttempt, Pending, Startup,
    TlsError, TlsOptions, TransportError,
};

/// Connects and waits for the first session. A refusal (bad credentials), a TLS failure or an
/// unreachable server is returned as the error and nothing keeps running; after the first
/// session the connection reconnects by itself.
///
/// The connection runs on a dedicated thread (see [`spawn`]), so this works under any
/// executor; it ends when the last [`Client`] is dropped or [`Client::close`] is called.
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
    /// The connection's thread; it ends when the connection is closed.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the connection on a dedicated thread (running it with `async_io::block_on`)
/// without waiting. With [`FirstAttempt::Retry`] it keeps trying from the start (for a
/// service that may come up before its server).
///
/// Fails at once only for an invalid configuration, unreadable TLS files, or when the
/// operating system refuses a new thread (reported as [`TransportError::Io`]).
pub fn spawn(options: ClientOptions, first_attempt: FirstAttempt) -> Result<Spawned, ConnectError> {
    let (client, events, startup, connection) = driver(options, first_attempt)?;
    let thread = std::thread::Builder::new()
        .name("tb-gateway-connection".into())
        .spawn(move || async_io::block_on(connection))
        .map_err(|e| ConnectError::Transport(TransportError::io(&e)))?;
    Ok(Spawned {
        client,
        events,
        startup,
        thread,
    })
}

/// Builds the connection without starting it: the handles, and the future that runs the
/// connection, to spawn on an executor of your choice (`smol::spawn(future).detach()`,
/// `async_std::task::spawn(future)`, ...). Nothing happens until the future is polled; it
/// completes when the connection is closed for good.
///
/// Fails at once only for an invalid configuration or unreadable TLS files.
pub fn driver(
    options: ClientOptions,
    first_attempt: FirstAttempt,
) -> Result<
    (
        Client,
        Events,
        Startup,
        impl Future<Output = ()> + Send + 'static,
    ),
    ConnectError,
> {
    let tls = options.tls_setup()?;
    let Parts {
        driver,
        commands,
        startup,
        client,
        events,
        ..
    } = Driver::build(&options, Instant::now(), first_attempt, None)?;
    Ok((client, events, startup, run(driver, commands, options, tls)))
}

/// A transport: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// Shuts the socket's sending side (a FIN after what was written). `close` does not:
    /// async-io's `poll_close` only flushes, and futures-rustls only adds its close_notify.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Io for Async<TcpStream> {
    fn shutdown_write(&self) -> io::Result<()> {
        self.get_ref().shutdown(std::net::Shutdown::Write)
    }
}

impl Io for futures_rustls::client::TlsStream<Async<TcpStream>> {
    fn shutdown_write(&self) -> io::Result<()> {
        self.get_ref().0.shutdown_write()
    }
}

/// Resolves `host` (see the crate documentation) and dials each address in turn.
async fn dial_tcp(host: &str, port: u16) -> io::Result<Async<TcpStream>> {
    let mut last_error = None;
    // Name resolution blocks: on a thread of its own, so the connect deadline the caller
    // races this future against still fires while a resolver hangs.
    let name = host.to_owned();
    let addresses = blocking::unblock(move || {
        (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>)
    })
    .await?;
    for address in addresses {
        match Async::<TcpStream>::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                tracing::debug!(%address, error = %e, "dial failed");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

/// Opens TCP, then TLS if configured. Never falls back to plain TCP.
async fn dial(
    options: &ClientOptions,
    tls: Option<&TlsSetup>,
) -> Result<Box<dyn Io>, TransportError> {
    let address = options.address();
    tracing::debug!(%address, tls = tls.is_some(), "dialling");
    let tcp = dial_tcp(
        options.host.trim_start_matches('[').trim_end_matches(']'),
        options.port,
    )
    .await
    .map_err(|e| TransportError::connect(&address, &e))?;
    // MQTT packets are small and already batched per wake-up: no Nagle delay.
    if let Err(e) = tcp.get_ref().set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    match tls {
        None => Ok(Box::new(tcp)),
        Some(setup) => {
            let connector = futures_rustls::TlsConnector::from(setup.config.clone());
            let stream = connector
                .connect(setup.server_name.clone(), tcp)
                .await
                .map_err(|e| TransportError::connect(&address, &e))?;
            Ok(Box::new(stream))
        }
    }
}

/// Writes all of `bytes` and flushes, failing with `TimedOut` when one step makes no
/// progress for `stall` (see `ClientOptions::write_stall_timeout`). A write abandoned there
/// leaves the stream mid-packet: the caller drops the transport.
async fn write_all_or_stall(
    stream: &mut Box<dyn Io>,
    mut bytes: &[u8],
    stall: std::time::Duration,
) -> io::Result<()> {
    async fn within<T>(
        stall: std::time::Duration,
        step: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        future::or(step, async {
            Timer::after(stall).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled"))
        })
        .await
    }
    while !bytes.is_empty() {
        match within(stall, stream.write(bytes)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => bytes = bytes.get(n..).unwrap_or_default(),
        }
    }
    within(stall, stream.flush()).await
}

/// After the sending side is closed: reads and discards until the server closes its side (or
/// fails), for at most `linger`, so that dropping the stream does not reset a connection
/// whose last bytes the server has not read yet (`ClientOptions::close_linger`).
async fn linger(stream: &mut Box<dyn Io>, buf: &mut [u8], linger: std::time::Duration) {
    let drain = async { while matches!(stream.read(buf).await, Ok(n) if n > 0) {} };
    future::or(drain, async {
        Timer::after(linger).await;
    })
    .await;
}

/// Reads from the transport; pending forever when there is none. Cancel-safe: dropped
/// before it completes, it has read nothing.
async fn read_some(io: &mut Option<Box<dyn Io>>, buf: &mut [u8]) -> io::Result<usize> {
    match io {
        Some(stream) => stream.read(buf).await,
        None => future::pending().await,
    }
}

/// Which input woke the connection.
enum Woke {
    /// The core's deadline passed.
    Deadline,
    /// A read finished (0 bytes: end of stream).
    Read(io::Result<usize>),
    /// A request arrived, or (`None`) every client handle is gone.
    Request(Option<Request>),
}

/// The connection future: perform the driver's actions, hand over events, then wait for the
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
                            driver.transport_failed(Instant::now(), TransportError::io(&e));
                        }
                    }
                }
                Action::Open => {
                    io = None;
                    // The core's connect timeout bounds the dial too.
                    let deadline = driver.poll_timeout();
                    let dialled =
                        future::or(async { Some(dial(&options, tls.as_ref()).await) }, async {
                            deadline.map_or_else(Timer::never, Timer::at).await;
                            None
                        });
                    match dialled.await {
                        Some(Ok(stream)) => {
                            io = Some(stream);
                            driver.transport_opened(Instant::now());
                        }
                        Some(Err(e)) => driver.transport_failed(Instant::now(), e),
                        None => driver.handle_timeout(Instant::now()),
                    }
                }
                Action::Close => {
                    if let Some(mut stream) = io.take() {
                        // Best effort: the peer may already be gone. The TLS close_notify,
                        // then the FIN.
                        let _ = stream.close().await;
                        let _ = stream.shutdown_write();
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
            let deadline = driver.poll_timeout();
            future::or(
                Timer::after(wait),
                deadline.map_or_else(Timer::never, Timer::at),
            )
            .await;
        }
        // Only cancel-safe futures race: the timer, a read and a receive. The deadline is
        // polled first so a busy socket or request queue cannot starve it (the core acts on
        // time only when told); reads and requests are polled in random order so neither
        // starves the other.
        let deadline = driver.poll_timeout();
        let timer = async {
            deadline.map_or_else(Timer::never, Timer::at).await;
            Woke::Deadline
        };
        let read = async { Woke::Read(read_some(&mut io, &mut buf).await) };
        let request = async {
            if clients_gone {
                future::pending().await
            } else {
                Woke::Request(commands.recv().await)
            }
        };
        match future::or(timer, future::race(read, request)).await {
            Woke::Deadline => driver.handle_timeout(Instant::now()),
            Woke::Read(Ok(0)) => {
                io = None;
                driver.transport_closed(Instant::now());
            }
            Woke::Read(Ok(n)) => {
                driver.handle_bytes(Instant::now(), &buf[..n]);
                coalesce = driver.window_mostly_full();
            }
            Woke::Read(Err(e)) => {
                io = None;
                driver.transport_failed(Instant::now(), TransportError::io(&e));
            }
            Woke::Request(Some(request)) => {
                if driver.take_requests(Instant::now(), &commands, Some(request))
                    == Queue::ClientsGone
                {
                    clients_gone = true;
                }
            }
            Woke::Request(None) => {
                clients_gone = true;
                driver.handle_clients_gone(Instant::now());
            }
        }
    }
    tracing::debug!("connection finished");
}
