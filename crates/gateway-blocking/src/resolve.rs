//! Host name lookups bounded in time and in threads.
//!
//! The standard library's resolver blocks, and nothing interrupts it: a lookup is started on
//! a thread of its own and waited for until the dial's deadline. A lookup still running at
//! the deadline is kept, and the next attempt waits for that one instead of starting another,
//! so a resolver that hangs holds one thread per connection, not one per reconnect attempt.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use gateway_client::TransportError;

use crate::{remaining, DialError};

/// What looks a name up (the system resolver, or a stand-in in tests).
type Lookup = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// One connection's name lookups: at most one running at a time.
pub(crate) struct Resolver {
    lookup: Lookup,
    /// A lookup that outlived the attempt that started it.
    running: Option<Running>,
}

struct Running {
    host: String,
    port: u16,
    result: Receiver<io::Result<Vec<SocketAddr>>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::with_lookup(Arc::new(|host, port| {
            (host, port).to_socket_addrs().map(Iterator::collect)
        }))
    }
}

impl Resolver {
    fn with_lookup(lookup: Lookup) -> Self {
        Resolver {
            lookup,
            running: None,
        }
    }

    /// The addresses of `host`, or [`DialError::TimedOut`] when `deadline` passes first. IP
    /// literals are parsed directly.
    pub(crate) fn resolve(
        &mut self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, DialError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let failed =
            |e: &io::Error| DialError::Failed(TransportError::connect(format!("{host}:{port}"), e));
        let result = match self.running.take() {
            Some(r) if r.host == host && r.port == port => r.result,
            // Another name (the options of a connection do not change, so not in practice):
            // the old lookup is left to finish on its own.
            _ => self.start(host, port).map_err(|e| failed(&e))?,
        };
        let outcome = match remaining(deadline) {
            Some(left) => result.recv_timeout(left),
            None => Err(RecvTimeoutError::Timeout),
        };
        match outcome {
            Ok(Ok(addresses)) => Ok(addresses),
            Ok(Err(e)) => Err(failed(&e)),
            Err(RecvTimeoutError::Timeout) => {
                self.running = Some(Running {
                    host: host.to_owned(),
                    port,
                    result,
                });
                Err(DialError::TimedOut)
            }
            Err(RecvTimeoutError::Disconnected) => Err(failed(&io::Error::other(
                "the resolver thread ended without an answer",
            ))),
        }
    }

    fn start(&self, host: &str, port: u16) -> io::Result<Receiver<io::Result<Vec<SocketAddr>>>> {
        let (tx, rx) = mpsc::channel();
        let lookup = Arc::clone(&self.lookup);
        let name = host.to_owned();
        std::thread::Builder::new()
            .name("gateway-dns".into())
            .spawn(move || {
                // The connection may be gone already; then nobody needs the answer.
                let _ = tx.send(lookup(&name, port));
            })?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// A resolver that answers only once released, counting its lookups.
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        lookups: AtomicUsize,
    }

    impl Gate {
        fn new() -> Arc<Self> {
            Arc::new(Gate {
                open: Mutex::new(false),
                opened: Condvar::new(),
                lookups: AtomicUsize::new(0),
            })
        }

        fn resolver(self: &Arc<Self>) -> Resolver {
            let gate = Arc::clone(self);
            Resolver::with_lookup(Arc::new(move |_, port| {
                gate.lookups.fetch_add(1, Ordering::SeqCst);
                let mut open = gate.open.lock().unwrap_or_else(|e| e.into_inner());
                while !*open {
                    open = gate.opened.wait(open).unwrap_or_else(|e| e.into_inner());
                }
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
            }))
        }

        fn release(&self) {
            *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.opened.notify_all();
        }

        fn lookups(&self) -> usize {
            self.lookups.load(Ordering::SeqCst)
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[test]
    fn a_hanging_lookup_times_out_and_later_attempts_wait_for_it_instead_of_starting_more() {
        let gate = Gate::new();
        let mut resolver = gate.resolver();
        for _ in 0..5 {
            let started = Instant::now();
            assert!(matches!(
                resolver.resolve("tb.example", 1883, soon()),
                Err(DialError::TimedOut)
            ));
            // Bounded by the deadline, not by the resolver.
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(gate.lookups(), 1, "one thread for all five attempts");

        gate.release();
        let far = Instant::now() + Duration::from_secs(10);
        let addresses = resolver.resolve("tb.example", 1883, far);
        assert_eq!(
            addresses.ok(),
            Some(vec![SocketAddr::from(([127, 0, 0, 1], 1883))])
        );
        assert_eq!(gate.lookups(), 1, "the answer of the first lookup was used");

        // Answered: the next attempt looks the name up afresh.
        assert!(resolver.resolve("tb.example", 1883, far).is_ok());
        assert_eq!(gate.lookups(), 2);
    }

    #[test]
    fn an_ip_literal_is_not_looked_up() {
        let gate = Gate::new();
        let mut resolver = gate.resolver();
        let addresses = resolver.resolve("::1", 8883, soon());
        assert_eq!(
            addresses.ok(),
            Some(vec![SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 8883))])
        );
        assert_eq!(gate.lookups(), 0);
    }

    #[test]
    fn a_failed_lookup_is_a_transport_error_naming_the_host() {
        let mut resolver = Resolver::with_lookup(Arc::new(|_, _| {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such host"))
        }));
        let far = Instant::now() + Duration::from_secs(10);
        match resolver.resolve("nowhere.example", 1883, far) {
            Err(DialError::Failed(e)) => {
                assert!(e.to_string().contains("nowhere.example:1883"), "{e}");
            }
            Err(DialError::TimedOut) => panic!("timed out"),
            Ok(a) => panic!("resolved to {a:?}"),
        }
    }

    #[test]
    fn the_system_resolver_finds_localhost() {
        let mut resolver = Resolver::default();
        let far = Instant::now() + Duration::from_secs(10);
        let addresses = resolver
            .resolve("localhost", 1883, far)
            .ok()
            .unwrap_or_default();
        assert!(addresses
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 1883));
        assert!(!addresses.is_empty());
    }
}
