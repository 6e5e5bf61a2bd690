//! # gateway-client: the runtime-neutral half of every adapter
//!
//! The protocol lives in [`gateway_proto`], which does no I/O. The adapters
//! (`gateway-tokio`, `gateway-async-std` for async-std and smol, `gateway-blocking`) only
//! move bytes, time and requests. This crate holds what they share, so the three behave and
//! read the same:
//!
//! * [`Client`] and [`BlockingClient`]: the application's handle, with one method per
//!   ThingsBoard operation (connect a sub-device, telemetry, attributes, attribute requests,
//!   RPC replies, client RPCs, claims). Each returns a [`Pending`] outcome to `.await` or
//!   [`wait`](Pending::wait) for. [`Client::send_batch`] hands many commands over as one
//!   request and answers them together, each with its own outcome.
//! * [`Events`]: server-side RPCs, attribute updates, sessions coming and going, warnings,
//!   transport failures; a `Stream`, or a blocking iterator.
//! * [`ClientOptions`] and [`TlsOptions`]: host, port, credentials, TLS (rustls with the
//!   *ring* provider; system roots or a private CA; mutual TLS from PEM).
//! * [`Driver`]: for adapter authors. It wraps the core [`Connection`](gateway_proto::Connection),
//!   merges all pending bytes into one write per wake-up, routes each outcome to the request
//!   that asked, and queues events for the application with backpressure.
//!
//! ## An adapter's loop
//!
//! This is the whole job of an adapter, here with a blocking `std::net` socket and no TLS
//! (the real adapters also wait on [`Commands`] while reading):
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use std::time::Instant;
//!
//! use gateway_client::{Action, ClientOptions, Driver, FirstAttempt, TransportError};
//! use gateway_proto::Credentials;
//!
//! let options = ClientOptions::new("127.0.0.1", 1883, Credentials::AccessToken("TOKEN".into()));
//! let parts = Driver::build(&options, Instant::now(), FirstAttempt::MustSucceed, None)?;
//! let mut driver = parts.driver;
//! let mut socket: Option<TcpStream> = None;
//! let mut buf = vec![0; options.read_buffer];
//! while !driver.is_finished() {
//!     while let Some(action) = driver.poll_action() {
//!         match action {
//!             Action::Write(bytes) => {
//!                 if let Some(s) = socket.as_mut() {
//!                     if let Err(e) = s.write_all(&bytes) {
//!                         socket = None;
//!                         driver.transport_failed(Instant::now(), TransportError::io(&e));
//!                     }
//!                 }
//!             }
//!             Action::Open => match TcpStream::connect(options.address()) {
//!                 Ok(s) => {
//!                     socket = Some(s);
//!                     driver.transport_opened(Instant::now());
//!                 }
//!                 Err(e) => driver.transport_failed(Instant::now(), TransportError::connect(options.address(), &e)),
//!             },
//!             Action::Close => socket = None,
//!             _ => {}
//!         }
//!     }
//!     driver.flush_events_blocking();
//!     // Wait for bytes, a request or the deadline; feed what happened:
//!     let now = Instant::now();
//!     match socket.as_mut().map(|s| s.read(&mut buf)) {
//!         Some(Ok(0)) | Some(Err(_)) => { socket = None; driver.transport_closed(now) }
//!         Some(Ok(n)) => driver.handle_bytes(now, &buf[..n]),
//!         None => driver.handle_timeout(now),
//!     }
//! }
//! # Ok::<(), gateway_client::ConnectError>(())
//! ```
#![forbid(unsafe_code)]

mod client;
mod driver;
mod error;
mod events;
mod options;
mod request;
mod tls;

pub use client::{BlockingClient, Client, Wake};
pub use driver::{Action, Commands, Driver, FirstAttempt, Parts, Queue, Startup};
pub use error::{ClientError, ConnectError, TransportError};
pub use events::{ClientEvent, Events};
pub use options::{ClientOptions, TlsSetup};
pub use request::{Answer, AttributeValues, BatchAnswers, Delivery, Pending, Request};
pub use tls::{handshake_error, ClientIdentity, TlsError, TlsOptions, TrustAnchors};

pub use gateway_proto;
