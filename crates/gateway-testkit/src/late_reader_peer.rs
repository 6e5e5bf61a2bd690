//! A peer that reads late and speaks after the client has finished: the case where a client
//! that drops its socket at once loses the tail of what it wrote.
//!
//! It answers one CONNECT, then reads nothing for a while through a receive buffer of a few
//! KiB, so what the client writes meanwhile waits in the client's own send buffer. Then it
//! sends one PINGRESP, as a server may send anything at any time. A client that has already
//! closed its socket makes its kernel answer that byte with a reset, which throws away the
//! client's unsent bytes and the peer's connection with them; a client that lingers after
//! its DISCONNECT (`ClientOptions::close_linger`) reads the byte, and every packet arrives.
//! Finally the peer reads everything until the client's end of stream, and reports what it
//! got.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// How long the peer reads nothing after its CONNACK: the client writes and closes meanwhile.
pub const QUIET: Duration = Duration::from_millis(400);

/// The peer's receive buffer: far smaller than what the tests write.
const RECEIVE_BUFFER: usize = 4096;

/// What the peer received after the CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// PUBLISH packets.
    pub publishes: usize,
    /// Whether a DISCONNECT came (the client's last packet).
    pub disconnect: bool,
    /// How reading ended when it did not end with the client's end of stream.
    pub error: Option<io::ErrorKind>,
}

/// A listening late-reader peer on 127.0.0.1 for one connection.
pub struct LateReaderPeer {
    addr: SocketAddr,
    thread: JoinHandle<io::Result<Received>>,
}

impl LateReaderPeer {
    /// Starts listening. `v5`: answer with an MQTT 5 CONNACK, else 3.1.1.
    pub fn start(v5: bool) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        // Set before listening, so accepted sockets inherit it and advertise a small window.
        socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        socket.listen(1)?;
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let thread = thread::spawn(move || serve(&listener, v5));
        Ok(Self { addr, thread })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the peer to finish (the client's end of stream, a reset, or 10 s) and tells
    /// what it received.
    pub fn received(self) -> io::Result<Received> {
        self.thread
            .join()
            .map_err(|_| io::Error::other("the peer thread panicked"))?
    }
}

fn serve(listener: &TcpListener, v5: bool) -> io::Result<Received> {
    listener.set_nonblocking(true)?;
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut socket = loop {
        match listener.accept() {
            Ok((socket, _)) => break socket,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < give_up => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = Stream::default();
    // The CONNECT, then the CONNACK.
    while stream.packets.is_empty() {
        if !stream.read_from(&mut socket)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let connack: &[u8] = if v5 {
        &[0x20, 0x03, 0x00, 0x00, 0x00]
    } else {
        &[0x20, 0x02, 0x00, 0x00]
    };
    socket.write_all(connack)?;
    thread::sleep(QUIET);
    // A PINGRESP nobody asked for: a closed client socket answers it with a reset.
    socket.write_all(&[0xD0, 0x00])?;
    thread::sleep(Duration::from_millis(50));
    let mut received = Received::default();
    loop {
        match stream.read_from(&mut socket) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                received.error = Some(e.kind());
                break;
            }
        }
    }
    // The CONNECT is the first packet.
    for &kind in stream.packets.iter().skip(1) {
        match kind {
            3 => received.publishes += 1,
            14 => received.disconnect = true,
            _ => {}
        }
    }
    Ok(received)
}

/// Splits the bytes read into MQTT packets by their fixed headers; keeps each packet's type.
#[derive(Default)]
struct Stream {
    pending: Vec<u8>,
    packets: Vec<u8>,
}

impl Stream {
    /// One read; false at the end of the stream.
    fn read_from(&mut self, socket: &mut impl Read) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let n = socket.read(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        while let Some((kind, len)) = frame(&self.pending) {
            self.packets.push(kind);
            self.pending.drain(..len);
        }
        Ok(n > 0)
    }
}

/// The type and total length of the packet at the start of `bytes`, once all of it is there.
fn frame(bytes: &[u8]) -> Option<(u8, usize)> {
    let first = *bytes.first()?;
    let mut remaining = 0usize;
    for (i, &b) in bytes.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 1 + (i + 1) + remaining;
            return (bytes.len() >= total).then_some((first >> 4, total));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_by_their_headers() {
        assert_eq!(frame(&[0xE0, 0x00]), Some((14, 2)));
        assert_eq!(frame(&[0x30, 0x02, 0x00]), None);
        assert_eq!(frame(&[0x30, 0x80, 0x01]), None);
        let mut long = vec![0x30, 0x80, 0x01];
        long.resize(3 + 128, 0);
        assert_eq!(frame(&long), Some((3, 131)));
        assert_eq!(frame(&[]), None);
    }
}
