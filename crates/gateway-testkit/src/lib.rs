//! Test fixtures shared by the workspace's test suites (not a published crate).
//!
//! * [`pki`]: a certificate authority, server and client certificates generated at test time,
//!   as PEM, for TLS and mutual-TLS tests.
//! * [`mosquitto`]: a real mosquitto broker started on 127.0.0.1 with an ephemeral port, with
//!   password files and TLS, that can be stopped and restarted, plus a counting subscriber.
//! * [`scenario`] (feature `scenario`): the Gateway and Device API round trip every adapter
//!   runs against the emulator, written once on the runtime-neutral client handle.
//! * [`broker_suite`] (feature `scenario`): the checks every adapter runs against a real
//!   mosquitto (protocol versions, password refusal, TLS, mutual TLS, broker restart).
//! * [`stalled_peer`]: a peer that answers CONNECT and then never reads again; with
//!   [`scenario::write_stall_fails_the_transport`] every adapter shows it does not hang on it.
//! * [`late_reader_peer`]: a peer that reads late and sends a byte after the client closed;
//!   with [`scenario::close_delivers_everything_written`] every adapter shows that its last
//!   close loses nothing it wrote.
#![forbid(unsafe_code)]

#[cfg(feature = "scenario")]
pub mod broker_suite;
pub mod late_reader_peer;
pub mod mosquitto;
pub mod pki;
#[cfg(feature = "scenario")]
pub mod scenario;
pub mod stalled_peer;
