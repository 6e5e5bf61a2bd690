//! A minimal counting subscriber: raw MQTT 3.1.1 over a std TCP socket on its own thread,
//! subscribed at QoS 0, counting PUBLISH packets by their frame headers (a few nanoseconds
//! each, so it takes little of the machine's two cores from the publisher and the broker).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::raw_mqtt::{connect_packet, put_remaining_length};
use crate::stats::wall_ns;

#[derive(Default)]
struct Counts {
    /// PUBLISH packets since the last reset.
    publishes: u64,
    /// Wall clock (ns) when the last of them arrived.
    last_ns: u64,
    /// Total length on the wire of the first PUBLISH after the last reset.
    first_frame_len: usize,
    /// Its payload.
    first_payload: Vec<u8>,
    closed: Option<String>,
}

pub(crate) struct Subscriber {
    shared: Arc<(Mutex<Counts>, Condvar)>,
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

/// What a round saw.
pub(crate) struct Seen {
    pub(crate) publishes: u64,
    pub(crate) last_ns: u64,
    pub(crate) first_frame_len: usize,
    pub(crate) first_payload: Vec<u8>,
}

fn subscribe_packet(topic: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.push(0);
    let mut p = vec![0x82];
    put_remaining_length(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

/// One frame at the start of `buf`: (first byte, header length, body length), if whole.
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    for i in 1..5 {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return (buf.len() >= i + 1 + len).then_some((buf[0], i + 1, len));
        }
    }
    None
}

impl Subscriber {
    /// Connects to `127.0.0.1:port`, subscribes to `topic` and waits for the SUBACK.
    pub(crate) fn start(port: u16, topic: &str) -> Result<Self, String> {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("subscriber: {e}"))?;
        stream.set_nodelay(true).ok();
        stream
            .write_all(&connect_packet("bench-counter", None, 0))
            .and_then(|()| stream.write_all(&subscribe_packet(topic)))
            .map_err(|e| format!("subscriber: {e}"))?;
        // CONNACK (4 bytes) and SUBACK (5 bytes).
        let mut head = [0u8; 9];
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        stream
            .read_exact(&mut head)
            .map_err(|e| format!("subscriber handshake: {e}"))?;
        if head[0] != 0x20 || head[3] != 0 || head[4] != 0x90 || head[8] > 2 {
            return Err(format!("subscriber refused: {head:?}"));
        }
        stream.set_read_timeout(None).ok();
        let shared = Arc::new((Mutex::new(Counts::default()), Condvar::new()));
        let reader = stream.try_clone().map_err(|e| format!("subscriber: {e}"))?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("counter".into())
            .spawn(move || read_loop(reader, &thread_shared))
            .map_err(|e| format!("subscriber thread: {e}"))?;
        Ok(Self {
            shared,
            stream,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets what arrived so far (call when the previous round is quiet).
    pub(crate) fn reset(&self) {
        let mut c = self.lock();
        c.publishes = 0;
        c.last_ns = 0;
        c.first_frame_len = 0;
        c.first_payload.clear();
    }

    /// Waits until `n` PUBLISHes arrived, or `idle` passed without a new one.
    pub(crate) fn wait_for(&self, n: u64, idle: Duration) -> Result<Seen, String> {
        let mut c = self.lock();
        let mut seen = c.publishes;
        let mut progress = Instant::now();
        while c.publishes < n {
            if let Some(e) = &c.closed {
                return Err(format!("subscriber connection ended: {e}"));
            }
            if c.publishes != seen {
                seen = c.publishes;
                progress = Instant::now();
            } else if progress.elapsed() >= idle {
                break;
            }
            c = self
                .shared
                .1
                .wait_timeout(c, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(Seen {
            publishes: c.publishes,
            last_ns: c.last_ns,
            first_frame_len: c.first_frame_len,
            first_payload: c.first_payload.clone(),
        })
    }

    /// Waits until nothing has arrived for `quiet` (bounded by `max`).
    pub(crate) fn wait_quiet(&self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        let mut last = self.lock().publishes;
        while start.elapsed() < max {
            std::thread::sleep(quiet);
            let now = self.lock().publishes;
            if now == last {
                return;
            }
            last = now;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.stream.write_all(&[0xe0, 0x00]);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(mut stream: TcpStream, shared: &(Mutex<Counts>, Condvar)) {
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0usize;
    loop {
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                shared
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .closed = Some("closed by the broker".into());
                shared.1.notify_all();
                return;
            }
            Ok(n) => n,
            Err(e) => {
                shared
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .closed = Some(e.to_string());
                shared.1.notify_all();
                return;
            }
        };
        let now = wall_ns();
        filled += n;
        let mut at = 0;
        let mut publishes = 0u64;
        let mut first: Option<(usize, Vec<u8>)> = None;
        while let Some((kind, head, len)) = frame(&buf[at..filled]) {
            if kind >> 4 == 3 {
                publishes += 1;
                if first.is_none() {
                    let body = &buf[at + head..at + head + len];
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let pkid = if (kind >> 1) & 3 > 0 { 2 } else { 0 };
                    first = Some((head + len, body[2 + topic_len + pkid..].to_vec()));
                }
            }
            at += head + len;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        if publishes > 0 {
            let mut c = shared.0.lock().unwrap_or_else(PoisonError::into_inner);
            if c.publishes == 0 {
                if let Some((len, payload)) = first {
                    c.first_frame_len = len;
                    c.first_payload = payload;
                }
            }
            c.publishes += publishes;
            c.last_ns = now;
            drop(c);
            shared.1.notify_all();
        }
    }
}
