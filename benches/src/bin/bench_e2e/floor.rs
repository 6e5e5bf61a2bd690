//! The wire floor: the least a publisher can do for the same messages.
//!
//! A blocking MQTT 3.1.1 publisher on one thread with no library and no state beyond a
//! counter: each PUBLISH is written by hand (the same topic and payload bytes as the other
//! publishers) into one reused buffer, the buffer goes out in writes of up to 64 KiB, and at
//! QoS 1 the PUBACKs are only counted. It keeps the same in-flight window as the others and,
//! with `--coalesce-us`, waits like our read coalescing after a read while at least ¾ of the
//! window is in flight.
//!
//! No client that keeps a session, tracks outcomes or checks limits can spend less CPU, so
//! it answers two questions of BENCHMARKS.md: what rate the broker allows a publisher that
//! costs next to nothing (the msg/s ratios are the broker's), and how far above the bare
//! wire cost our publisher's CPU per message sits.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gateway_benches::{DEVICES, TELEMETRY_TOPIC, TS0};

use crate::publishers::{common, report, Start};
use crate::raw_mqtt::{connect_packet, put_remaining_length};
use crate::Args;

/// Bytes gathered before a write.
const WRITE_CHUNK: usize = 64 * 1024;

pub(crate) fn floor(args: &Args) -> Result<(), String> {
    let c = common(args)?;
    let coalesce = Duration::from_micros(args.get("coalesce-us", 0u64)?);
    let window = u64::from(c.inflight.max(1));
    let mut stream =
        TcpStream::connect(("127.0.0.1", c.port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("read timeout: {e}"))?;
    connect(&mut stream)?;

    let start = Start::now();
    let mut out = Vec::with_capacity(WRITE_CHUNK + 256);
    let mut acks = AckReader::default();
    let (mut next, mut acked) = (0u64, 0u64);
    loop {
        while next < c.count && (c.qos == 0 || next - acked < window) && out.len() < WRITE_CHUNK {
            put_publish(&mut out, next, c.qos);
            next += 1;
        }
        if !out.is_empty() {
            stream.write_all(&out).map_err(|e| format!("write: {e}"))?;
            out.clear();
        }
        if c.qos == 0 {
            if next == c.count {
                break;
            }
            continue;
        }
        if acked == c.count {
            break;
        }
        // Block for acknowledgements while the window is full or everything is written;
        // otherwise only take what is already there.
        let must_wait = next - acked >= window || next == c.count;
        acked += acks.read(&mut stream, must_wait)?;
        if !coalesce.is_zero() && (next - acked) * 4 >= window * 3 && next < c.count {
            std::thread::sleep(coalesce);
            acked += acks.read(&mut stream, false)?;
        }
    }
    // DISCONNECT, then wait for the broker to close: everything before it has been read.
    stream
        .write_all(&[0xE0, 0x00])
        .map_err(|e| format!("disconnect: {e}"))?;
    let _ = stream.set_nonblocking(false);
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    report(&start, c.count, if c.qos == 0 { next } else { acked });
    Ok(())
}

/// CONNECT (3.1.1, clean session, keep-alive 60 s, user name = the bench token), then the
/// CONNACK.
fn connect(stream: &mut TcpStream) -> Result<(), String> {
    stream
        .write_all(&connect_packet("bench-floor", Some("BENCH_TOKEN"), 60))
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .map_err(|e| format!("CONNACK: {e}"))?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(format!("refused: CONNACK {connack:02x?}"));
    }
    Ok(())
}

/// Message `i`: `{"Device N":[{"ts":T,"values":{"humidity":61,"temperature":23.5}}]}` on the
/// telemetry topic, the bytes the other publishers send.
fn put_publish(out: &mut Vec<u8>, i: u64, qos: u8) {
    let mut payload = [0u8; 128];
    let mut p = Cursor {
        buf: &mut payload,
        at: 0,
    };
    p.put(b"{\"Device ");
    p.put_u64(i % DEVICES);
    p.put(b"\":[{\"ts\":");
    p.put_u64((TS0 + i as i64) as u64);
    p.put(b",\"values\":{\"humidity\":61,\"temperature\":23.5}}]}");
    let len = p.at;
    let payload = &payload[..len];
    let topic = TELEMETRY_TOPIC.as_bytes();
    let id_len = if qos == 1 { 2 } else { 0 };
    out.push(0x30 | (qos << 1));
    put_remaining_length(out, 2 + topic.len() + id_len + payload.len());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic);
    if qos == 1 {
        // Packet identifiers 1..=65535, cycled; at most `window` (≤ 65535) are in flight.
        out.extend_from_slice(&((i % 65_535 + 1) as u16).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A fixed buffer written front to back (the payload is under 128 bytes).
struct Cursor<'a> {
    buf: &'a mut [u8; 128],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn put_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        loop {
            k -= 1;
            digits[k] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[k..]);
    }
}

/// Counts PUBACKs (`40 02 id id`) across reads that may split them.
#[derive(Default)]
struct AckReader {
    /// Bytes of an acknowledgement cut by the previous read.
    partial: usize,
    /// Whether the socket is in non-blocking mode now (switched only when it changes).
    nonblocking: bool,
}

impl AckReader {
    /// Reads what is there (blocking for at least one byte when `block`); returns how many
    /// acknowledgements completed.
    fn read(&mut self, stream: &mut TcpStream, block: bool) -> Result<u64, String> {
        let mut buf = [0u8; 16 * 1024];
        if self.nonblocking == block {
            stream
                .set_nonblocking(!block)
                .map_err(|e| format!("nonblocking: {e}"))?;
            self.nonblocking = !block;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err("the broker closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(format!("read: {e}")),
        };
        let mut done = 0;
        for (k, &b) in buf[..n].iter().enumerate() {
            if self.partial == 0 && b != 0x40 {
                return Err(format!("unexpected packet byte {b:#04x} at {k}"));
            }
            self.partial += 1;
            if self.partial == 4 {
                self.partial = 0;
                done += 1;
            }
        }
        Ok(done)
    }
}
