//! # gateway-blocking: the ThingsBoard gateway client on plain threads
//!
//! A thin adapter with blocking `std::net` I/O and no async runtime. One *driver thread* owns
//! the socket's write half, the rustls connection (when TLS is on) and a
//! [`Driver`] around the sans-IO core. It sleeps on one channel until
//! something happens: bytes (or the end of the stream) from the connection's *reader thread*,
//! a request from a [`BlockingClient`] (or its async form), or the core's next deadline.
//! Every protocol decision (reconnect and backoff, retransmission, re-announcing sub-devices,
//! timeouts) is the core's; this crate dials when told to and writes all pending bytes in one
//! write per wake-up.
//!
//! ```no_run
//! use gateway_blocking::{connect, ClientEvent, ClientOptions, TlsOptions};
//! use gateway_blocking::gateway_proto::{Credentials, Event};
//! use serde_json::{json, Map};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Mutual TLS: a private CA and the gateway's X.509 certificate.
//! let options = ClientOptions::new("tb.example.com", 8883, Credentials::X509)
//!     .tls(TlsOptions::with_ca_file("ca.pem").client_identity_files("gateway.pem", "gateway.key"));
//! let (client, events) = connect(options)?;
//!
//! client.connect_device("Boiler 7", Some("boiler"))?.wait()?;
//! let mut values = Map::new();
//! values.insert("temperature".into(), json!(71.5));
//! client.device_telemetry("Boiler 7", values)?.wait()?;
//!
//! // Ends when the connection is closed (`client.close()` from another thread, or every
//! // handle dropped).
//! for event in events.iter() {
//!     if let ClientEvent::Proto(Event::RpcRequest { device: Some(device), id, .. }) = event {
//!         // Do not `wait()` here for long: events are not read meanwhile.
//!         client.device_rpc_reply(device, id, json!({"ok": true}))?;
//!     }
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod resolve;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use gateway_client::TransportError;
use gateway_client::{Action, Commands, Driver, Parts, Queue, TlsSetup};

use crate::resolve::Resolver;

pub use gateway_client::{
    gateway_proto, Answer, AttributeValues, BatchAnswers, BlockingClient, Client, ClientError,
    ClientEvent, ClientOptions, ConnectError, Delivery, Events, FirstAttempt, Pending, Startup,
    TlsError, TlsOptions,
};

/// Wake-ups queued for the driver thread before the reader thread waits: while the driver
/// thread is busy (e.g. waiting for the application to take events) at most this many reads
/// are buffered, then reading pauses, as in the async adapters.
const WAKE_CAPACITY: usize = 16;

/// Bounds dialling when the core has no deadline (it always has one while connecting).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects and waits for the first session. A refusal (bad credentials), a TLS failure or an
/// unreachable server is returned as the error and nothing keeps running (the connection's
/// thread has ended); after the first session the connection reconnects by itself.
///
/// The connection runs on its own thread; it ends when the last [`BlockingClient`] (or
/// [`Client`]) is dropped or [`BlockingClient::close`] is called.
pub fn connect(options: ClientOptions) -> Result<(BlockingClient, Events), ConnectError> {
    let Spawned {
        client,
        events,
        startup,
        thread,
    } = spawn(options, FirstAttempt::MustSucceed)?;
    match startup.wait_blocking() {
        Ok(()) => Ok((client, events)),
        Err(error) => {
            // The first attempt had to succeed, so the connection is already closing.
            drop((client, events));
            if thread.join().is_err() {
                tracing::error!("connection thread panicked");
            }
            Err(error)
        }
    }
}

/// What [`spawn`] starts.
#[derive(Debug)]
#[non_exhaustive]
pub struct Spawned {
    /// The handle for requests.
    pub client: BlockingClient,
    /// The event stream.
    pub events: Events,
    /// Resolves with the first session (or, with [`FirstAttempt::MustSucceed`], the first
    /// failure); [`Startup::wait_blocking`] waits for it.
    pub startup: Startup,
    /// The connection's thread; it ends when the connection is closed and its reader threads
    /// have stopped.
    pub thread: JoinHandle<()>,
}

/// Starts the connection thread without waiting. With [`FirstAttempt::Retry`] it keeps trying
/// from the start (for a service that may come up before its server).
///
/// Fails at once only for an invalid configuration, unreadable TLS files or when the thread
/// cannot be started.
pub fn spawn(options: ClientOptions, first_attempt: FirstAttempt) -> Result<Spawned, ConnectError> {
    let tls = options.tls_setup()?;
    let (wake_tx, wakes) = mpsc::sync_channel(WAKE_CAPACITY);
    let waker = RequestWaker {
        tx: wake_tx.clone(),
    };
    let Parts {
        driver,
        commands,
        startup,
        client,
        events,
        ..
    } = Driver::build(
        &options,
        Instant::now(),
        first_attempt,
        Some(Arc::new(move || waker.wake())),
    )?;
    let runner = Runner {
        driver,
        commands,
        tls,
        resolver: Resolver::default(),
        wakes,
        wake_tx,
        transport: None,
        generation: 0,
        readers: Vec::new(),
        clients_gone: false,
        more_requests: false,
        coalesce: false,
        scratch: vec![0; options.read_buffer.max(1024)],
        options,
    };
    let thread = thread::Builder::new()
        .name("tb-gateway".into())
        .spawn(move || runner.run())
        .map_err(|e| ConnectError::Transport(TransportError::io(&e)))?;
    Ok(Spawned {
        client: client.blocking(),
        events,
        startup,
        thread,
    })
}

/// Why the driver thread woke up.
enum Wake {
    /// A client handle queued a request, or the last handle was dropped.
    Requests,
    /// Bytes read from the transport of this generation (ciphertext when TLS is on).
    Bytes(u64, Vec<u8>),
    /// The transport of this generation reached the end of its stream.
    Closed(u64),
    /// Reading the transport of this generation failed.
    Failed(u64, io::Error),
}

/// The wake-up the client handles call after queuing a request. It is owned by the handles
/// (inside the `Arc` they share), so it is dropped with the last one, which wakes the driver
/// thread once more to notice that every handle is gone.
struct RequestWaker {
    tx: SyncSender<Wake>,
}

impl RequestWaker {
    fn wake(&self) {
        match self.tx.try_send(Wake::Requests) {
            // Full: wake-ups are queued, and the driver thread takes requests on each one.
            // Disconnected: the driver thread has stopped.
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for RequestWaker {
    fn drop(&mut self) {
        // A client handle drops its queue sender before this (fields drop in declaration
        // order), so the driver thread finds the queue closed when it looks.
        self.wake();
    }
}

/// An open transport: the socket (shared with the reader thread through `try_clone`) and the
/// TLS session, if any.
struct Transport {
    socket: TcpStream,
    tls: Option<rustls::ClientConnection>,
}

impl Transport {
    /// Writes `bytes` completely (encrypted when TLS is on).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return self.socket.write_all(bytes);
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            // rustls buffers a bounded amount: hand over what fits, send it, go on.
            let n = tls.writer().write(rest)?;
            rest = &rest[n..];
            let flushed = flush_tls(tls, &mut self.socket)?;
            if n == 0 && !flushed {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Ends the transport: a TLS close_notify (best effort), then both directions of the
    /// socket, which makes the reader thread's blocked read return.
    fn shutdown(mut self) {
        self.close_sending();
        if let Err(e) = self.socket.shutdown(Shutdown::Both) {
            tracing::debug!(error = %e, "socket shutdown");
        }
    }

    /// Ends the sending side only: a TLS close_notify (best effort), then the socket's write
    /// half; the reader thread keeps reading until the server closes its side.
    fn close_sending(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = flush_tls(tls, &mut self.socket);
        }
        if let Err(e) = self.socket.shutdown(Shutdown::Write) {
            tracing::debug!(error = %e, "socket shutdown");
        }
    }
}

/// Writes every pending TLS record to the socket; whether anything was written.
fn flush_tls(tls: &mut rustls::ClientConnection, socket: &mut TcpStream) -> io::Result<bool> {
    let mut wrote = false;
    while tls.wants_write() {
        if tls.write_tls(socket)? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        wrote = true;
    }
    Ok(wrote)
}

/// How a dial ended without a transport.
enum DialError {
    /// The core's deadline passed first.
    TimedOut,
    /// TCP or TLS failed.
    Failed(TransportError),
}

/// Time left until `deadline`, `None` if it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Opens TCP (each resolved address in turn), then TLS if configured, all before `deadline`.
/// Never falls back to plain TCP.
fn dial(
    options: &ClientOptions,
    tls: Option<&TlsSetup>,
    resolver: &mut Resolver,
    deadline: Instant,
) -> Result<Transport, DialError> {
    let address = options.address();
    let failed = |e: &io::Error| DialError::Failed(TransportError::connect(&address, e));
    let host = options.host.trim_start_matches('[').trim_end_matches(']');
    let mut last_error = None;
    let mut socket = None;
    for addr in resolver.resolve(host, options.port, deadline)? {
        let Some(left) = remaining(deadline) else {
            return Err(DialError::TimedOut);
        };
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "TCP connect failed");
                last_error = Some(e);
            }
        }
    }
    let mut socket = match (socket, last_error) {
        (Some(socket), _) => socket,
        (None, Some(e)) if is_timeout(&e) && remaining(deadline).is_none() => {
            return Err(DialError::TimedOut)
        }
        (None, Some(e)) => return Err(failed(&e)),
        (None, None) => {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any address",
            );
            return Err(failed(&e));
        }
    };
    // MQTT packets are small and already batched per wake-up: no Nagle delay.
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    // A write that makes no progress this long fails the transport (SO_SNDTIMEO bounds each
    // `write` call, so a slow but moving write is fine).
    let stall = Some(options.write_stall_timeout.max(Duration::from_millis(1)));
    let Some(setup) = tls else {
        socket.set_write_timeout(stall).map_err(|e| failed(&e))?;
        return Ok(Transport { socket, tls: None });
    };
    let mut conn = rustls::ClientConnection::new(setup.config.clone(), setup.server_name.clone())
        .map_err(|e| DialError::Failed(TransportError::Tls(TlsError::Config(e))))?;
    // The handshake is bounded by the same deadline, through socket timeouts.
    while conn.is_handshaking() || conn.wants_write() {
        let Some(left) = remaining(deadline) else {
            return Err(DialError::TimedOut);
        };
        let timeouts = socket
            .set_read_timeout(Some(left))
            .and_then(|()| socket.set_write_timeout(Some(left)));
        if let Err(e) = timeouts {
            return Err(failed(&e));
        }
        match conn.complete_io(&mut socket) {
            Ok(_) => {}
            // Checked against the deadline at the top of the loop.
            Err(e) if is_timeout(&e) => {}
            // A rustls error comes wrapped in the I/O error (after the alert was sent);
            // `TransportError::connect` keeps it as a TLS handshake error.
            Err(e) => return Err(failed(&e)),
        }
    }
    let cleared = socket
        .set_read_timeout(None)
        .and_then(|()| socket.set_write_timeout(stall));
    if let Err(e) = cleared {
        return Err(failed(&e));
    }
    Ok(Transport {
        socket,
        tls: Some(conn),
    })
}

/// The reader thread of one transport: blocking reads, each handed to the driver thread.
/// Ends at the end of the stream, on an error, or when the driver thread has stopped.
fn read_loop(mut socket: TcpStream, generation: u64, wakes: SyncSender<Wake>, capacity: usize) {
    let mut buf = vec![0u8; capacity];
    loop {
        let wake = match socket.read(&mut buf) {
            Ok(0) => Wake::Closed(generation),
            Ok(n) => Wake::Bytes(generation, buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Wake::Failed(generation, e),
        };
        let last = !matches!(wake, Wake::Bytes(..));
        // Waits while the driver thread is behind: reading pauses (backpressure).
        if wakes.send(wake).is_err() || last {
            break;
        }
    }
    tracing::trace!(generation, "reader thread finished");
}

/// What reading a TLS session's records came to.
enum TlsRead {
    /// Still open.
    Open,
    /// The server sent close_notify.
    Closed,
    /// TLS or the socket failed.
    Failed(TransportError),
}

/// Feeds `ciphertext` to the TLS session and appends what it decrypts to `plaintext`; sends
/// what the session wants to send (alerts, key updates). `buf` is scratch space.
fn read_tls(
    transport: &mut Transport,
    mut ciphertext: &[u8],
    plaintext: &mut Vec<u8>,
    buf: &mut [u8],
) -> TlsRead {
    let Some(tls) = transport.tls.as_mut() else {
        plaintext.extend_from_slice(ciphertext);
        return TlsRead::Open;
    };
    let mut state = TlsRead::Open;
    loop {
        if !ciphertext.is_empty() {
            match tls.read_tls(&mut ciphertext) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return TlsRead::Failed(TransportError::io(&e)),
            }
            if let Err(e) = tls.process_new_packets() {
                // Best effort: the alert describing the error.
                let _ = flush_tls(tls, &mut transport.socket);
                let e = io::Error::new(io::ErrorKind::InvalidData, e);
                return TlsRead::Failed(TransportError::io(&e));
            }
        }
        loop {
            match tls.reader().read(buf) {
                Ok(0) => {
                    state = TlsRead::Closed;
                    break;
                }
                Ok(n) => plaintext.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return TlsRead::Failed(TransportError::io(&e)),
            }
        }
        if ciphertext.is_empty() || matches!(state, TlsRead::Closed) {
            break;
        }
    }
    if let Err(e) = flush_tls(tls, &mut transport.socket) {
        return TlsRead::Failed(TransportError::io(&e));
    }
    state
}

/// The driver thread's state.
struct Runner {
    driver: Driver,
    commands: Commands,
    options: ClientOptions,
    tls: Option<TlsSetup>,
    /// Name lookups; a hanging one is waited for by the next dial rather than repeated.
    resolver: Resolver,
    wakes: Receiver<Wake>,
    /// Cloned into each reader thread. Holding it here also means `wakes` never reports
    /// disconnection while the loop runs.
    wake_tx: SyncSender<Wake>,
    transport: Option<Transport>,
    /// Identifies the current transport; wake-ups from an older one are ignored.
    generation: u64,
    /// Reader threads not known to have ended; joined when the driver thread ends.
    readers: Vec<JoinHandle<()>>,
    clients_gone: bool,
    /// The last wake-up left requests in the queue: look again without waiting.
    more_requests: bool,
    /// Set after a read while the in-flight window is mostly full (`read_coalescing`).
    coalesce: bool,
    /// Scratch space for decrypted bytes; its length is also each read's size.
    scratch: Vec<u8>,
}

impl Runner {
    /// Perform the driver's actions, hand over events, then wait for the next input.
    fn run(mut self) {
        loop {
            while let Some(action) = self.driver.poll_action() {
                match action {
                    Action::Write(bytes) => self.write(&bytes),
                    Action::Open => self.open(),
                    Action::Close if self.driver.closed_for_good() => self.linger_and_close(),
                    Action::Close => self.drop_transport(),
                    _ => {}
                }
            }
            self.driver.flush_events_blocking();
            if self.driver.is_finished() {
                break;
            }
            self.wait();
        }
        self.finish();
    }

    /// Sleeps until a wake-up or the core's deadline, then feeds the driver what happened.
    fn wait(&mut self) {
        let coalesced = self.pause_for_coalescing();
        let deadline = self.driver.poll_timeout();
        let wake = if self.more_requests {
            self.wakes.try_recv().ok()
        } else {
            match deadline {
                Some(at) => self
                    .wakes
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                    .ok(),
                // Cannot fail: `self.wake_tx` keeps the channel open.
                None => self.wakes.recv().ok(),
            }
        };
        if let Some(wake) = wake {
            self.handle_wake(wake);
            if coalesced {
                // Everything the reader thread queued during the pause, in this wake-up: its
                // acknowledgements make room for publishes that then leave in one write.
                // Bounded, as the reader thread keeps sending meanwhile.
                for _ in 0..WAKE_CAPACITY {
                    let Ok(wake) = self.wakes.try_recv() else {
                        break;
                    };
                    self.handle_wake(wake);
                }
            }
        }
        // Requests are taken on every wake-up: a client's own wake-up may have been
        // skipped while the queue of wake-ups was full.
        self.take_requests();
        if deadline.is_some_and(|at| Instant::now() >= at) {
            self.driver.handle_timeout(Instant::now());
        }
    }

    /// `ClientOptions::read_coalescing`: after a read that left the in-flight window mostly
    /// full, sleeps for the configured wait (cut short by the core's deadline) before taking
    /// the next wake-up. The reader thread keeps reading meanwhile and queues what arrives
    /// (up to `WAKE_CAPACITY` reads, then it waits), so the wake-ups after the pause carry
    /// several reads' worth of acknowledgements, which [`wait`](Self::wait) then handles
    /// together. Requests and end-of-stream wait for the pause too, as they do in the async
    /// adapters. Whether it paused.
    fn pause_for_coalescing(&mut self) -> bool {
        let Some(wait) = self.options.read_coalescing else {
            return false;
        };
        if !std::mem::take(&mut self.coalesce) {
            return false;
        }
        let pause = match self.driver.poll_timeout() {
            Some(at) => wait.min(at.saturating_duration_since(Instant::now())),
            None => wait,
        };
        thread::sleep(pause);
        true
    }

    fn handle_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Requests => {}
            Wake::Bytes(generation, bytes) if generation == self.generation => {
                self.received(&bytes);
                self.coalesce = self.transport.is_some() && self.driver.window_mostly_full();
            }
            Wake::Closed(generation) if generation == self.generation => {
                self.drop_transport();
                self.driver.transport_closed(Instant::now());
            }
            Wake::Failed(generation, e) if generation == self.generation => {
                self.drop_transport();
                self.driver
                    .transport_failed(Instant::now(), TransportError::io(&e));
            }
            Wake::Bytes(generation, _) | Wake::Closed(generation) | Wake::Failed(generation, _) => {
                tracing::trace!(generation, "wake-up from an old transport ignored");
            }
        }
    }

    /// Bytes from the reader thread: straight to the driver, or through TLS first.
    fn received(&mut self, bytes: &[u8]) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        if transport.tls.is_none() {
            self.driver.handle_bytes(Instant::now(), bytes);
            return;
        }
        let mut plaintext = Vec::new();
        let state = read_tls(transport, bytes, &mut plaintext, &mut self.scratch);
        let now = Instant::now();
        if !plaintext.is_empty() {
            self.driver.handle_bytes(now, &plaintext);
        }
        match state {
            TlsRead::Open => {}
            TlsRead::Closed => {
                self.drop_transport();
                self.driver.transport_closed(now);
            }
            TlsRead::Failed(e) => {
                self.drop_transport();
                self.driver.transport_failed(now, e);
            }
        }
    }

    /// Takes queued requests (a bounded number per wake-up).
    fn take_requests(&mut self) {
        self.more_requests = false;
        if self.clients_gone {
            return;
        }
        match self
            .driver
            .take_requests(Instant::now(), &self.commands, None)
        {
            Queue::Empty => {}
            Queue::MoreWaiting => self.more_requests = true,
            Queue::ClientsGone => self.clients_gone = true,
            _ => {}
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        if let Err(e) = transport.write(bytes) {
            self.drop_transport();
            self.driver
                .transport_failed(Instant::now(), TransportError::io(&e));
        }
    }

    /// Dials (TCP, then TLS) bounded by the core's deadline, starts the reader thread and
    /// reports the outcome.
    fn open(&mut self) {
        self.drop_transport();
        self.readers.retain(|reader| !reader.is_finished());
        let deadline = self
            .driver
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + OPEN_TIMEOUT);
        let transport = match dial(
            &self.options,
            self.tls.as_ref(),
            &mut self.resolver,
            deadline,
        ) {
            Ok(transport) => transport,
            Err(DialError::TimedOut) => return self.driver.handle_timeout(Instant::now()),
            Err(DialError::Failed(e)) => return self.driver.transport_failed(Instant::now(), e),
        };
        if let Err(e) = self.start_reader(&transport) {
            transport.shutdown();
            return self
                .driver
                .transport_failed(Instant::now(), TransportError::io(&e));
        }
        self.transport = Some(transport);
        self.driver.transport_opened(Instant::now());
        // Application data that arrived with the end of the handshake, if any.
        if self.transport.as_ref().is_some_and(|t| t.tls.is_some()) {
            self.received(&[]);
        }
    }

    fn start_reader(&mut self, transport: &Transport) -> io::Result<()> {
        let socket = transport.socket.try_clone()?;
        let (generation, wakes) = (self.generation, self.wake_tx.clone());
        let capacity = self.scratch.len();
        let reader = thread::Builder::new()
            .name("tb-gateway-reader".into())
            .spawn(move || read_loop(socket, generation, wakes, capacity))?;
        self.readers.push(reader);
        Ok(())
    }

    /// The last close (`ClientOptions::close_linger`): the sending side is shut down, then
    /// what the reader thread still delivers is discarded until the server closes its side,
    /// the read fails or the linger ends; only then is the socket dropped, so that the
    /// kernel does not reset a connection whose last bytes the server has not read yet.
    fn linger_and_close(&mut self) {
        let Some(mut transport) = self.transport.take() else {
            return;
        };
        transport.close_sending();
        let generation = self.generation;
        self.generation = self.generation.wrapping_add(1);
        let until = Instant::now() + self.options.close_linger;
        while let Some(left) = remaining(until) {
            match self.wakes.recv_timeout(left) {
                Ok(Wake::Closed(g) | Wake::Failed(g, _)) if g == generation => break,
                // The server's last bytes, older transports' wake-ups and requests (the
                // connection is closed for good: they get their answer when it stops).
                Ok(_) => {}
                Err(_) => break,
            }
        }
        transport.shutdown();
    }

    /// Ends the current transport, if any; its reader thread then ends and whatever it still
    /// sends is ignored.
    fn drop_transport(&mut self) {
        if let Some(transport) = self.transport.take() {
            transport.shutdown();
            self.generation = self.generation.wrapping_add(1);
        }
    }

    fn finish(mut self) {
        self.drop_transport();
        let Runner {
            driver,
            commands,
            wakes,
            wake_tx,
            readers,
            ..
        } = self;
        // The queue first, so that handles report closed once `close` returns; then the
        // driver, which ends the event stream and wakes `close` callers.
        drop(commands);
        drop(driver);
        // A reader waiting for room in the channel gives up once it is gone; one blocked
        // in `read` returns since its socket was shut down.
        drop((wakes, wake_tx));
        for reader in readers {
            if reader.join().is_err() {
                tracing::error!("reader thread panicked");
            }
        }
        tracing::debug!("connection thread finished");
    }
}
