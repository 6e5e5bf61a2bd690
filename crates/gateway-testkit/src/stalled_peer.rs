//! A peer that accepts one MQTT connection, answers its CONNECT and then never reads again,
//! keeping the socket open: what a hung broker or a black-holed link looks like to a client.
//! Its writes fill the socket buffers and block, and only the adapter's write stall timeout
//! (`ClientOptions::write_stall_timeout`) gets it out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A listening stalled peer on 127.0.0.1; stops when dropped.
pub struct StalledPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The longest the peer keeps a connection; tests end well before.
const HOLD: Duration = Duration::from_secs(60);

impl StalledPeer {
    /// Starts listening. `v5`: answer with an MQTT 5 CONNACK, else 3.1.1.
    pub fn start(v5: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let until = Instant::now() + HOLD;
            let mut held = Vec::new();
            while !stopped.load(Ordering::Relaxed) && Instant::now() < until {
                if let Ok((mut socket, _)) = listener.accept() {
                    let _ = socket.set_nonblocking(false);
                    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
                    // The CONNECT (small: one read holds it), then a CONNACK, then silence.
                    let mut connect = [0u8; 1024];
                    if matches!(socket.read(&mut connect), Ok(n) if n > 0) {
                        let connack: &[u8] = if v5 {
                            &[0x20, 0x03, 0x00, 0x00, 0x00]
                        } else {
                            &[0x20, 0x02, 0x00, 0x00]
                        };
                        let _ = socket.write_all(connack);
                    }
                    held.push(socket);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StalledPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
