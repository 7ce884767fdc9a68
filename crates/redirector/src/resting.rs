//! Keep-alive connections between requests, watched by one epoll set of the
//! player thread's own instead of a task each.
//!
//! A player that keeps its connection sends its next request over it. Served
//! by a task, that request costs the task's wake-up, its poll and the
//! registration of its waker again, each with atomics, on every request. Here
//! the connection rests in [`Resting`]: one epoll set (a `mio::Poll`, itself
//! watched by the thread's reactor), and a slab of connections. When it is
//! readable its request is read and answered in place, as a new connection's
//! first request is ([`crate::server`]'s `Acceptor`), and the connection
//! rests again. Anything else (a partial or refused head, pipelining, an
//! answer that waits for a slot lease, a short write) leaves the set for a
//! task of its own, which serves the connection until everything the player
//! sent is answered; then the connection comes back to rest. A connection
//! that once waited for a lease thus costs no more than any other afterwards.
//!
//! A resting connection is idle by definition: the stop closes it at once, and
//! so does its idle timeout, checked by a sweep.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::time::Instant;

/// Events taken from the set at a time.
const EVENTS: usize = 256;

/// A connection resting between requests, and what it holds.
pub(crate) struct Rested<G> {
    /// The socket, registered with the set under its slab key.
    pub(crate) stream: mio::net::TcpStream,
    /// The player's address, for trusting forwarding headers.
    pub(crate) peer: SocketAddr,
    /// When its last answer was written: the idle timeout counts from here.
    pub(crate) since: Instant,
    /// Held while the connection is open (counted for the graceful stop).
    _open: G,
}

/// What happened to a request read from a resting connection.
pub(crate) enum Served {
    /// Answered; the connection rests again.
    Rests,
    /// Answered and closed, or closed by the player.
    Closed,
    /// Leaves the set for a task: what was read and not answered, what is
    /// still to write, and whether to close after writing it.
    Leaves {
        /// Input not answered yet.
        input: Vec<u8>,
        /// Output not written yet.
        pending: Vec<u8>,
        /// Whether the connection closes once `pending` is written.
        close_after: bool,
    },
}

/// The resting connections of one player thread.
pub(crate) struct Resting<G> {
    events: mio::Events,
    connections: Slab<Rested<G>>,
    /// How many rest, for the metrics (set after each change).
    waiting: Gauge,
}

impl<G> Resting<G> {
    /// An empty set, whose size `waiting` shows.
    pub(crate) fn new(waiting: Gauge) -> Self {
        Resting {
            events: mio::Events::with_capacity(EVENTS),
            connections: Slab::new(),
            waiting,
        }
    }

    /// Shows the set's size in the metrics.
    fn count(&self) {
        self.waiting
            .set(i64::try_from(self.connections.len()).unwrap_or(i64::MAX));
    }

    /// Lets `stream` rest in `poll`'s set until its next request. A
    /// connection that cannot be registered is closed.
    pub(crate) fn rest(
        &mut self,
        poll: &mio::Poll,
        mut stream: mio::net::TcpStream,
        peer: SocketAddr,
        open: G,
    ) {
        let entry = self.connections.vacant_entry();
        let token = mio::Token(entry.key());
        if poll
            .registry()
            .register(&mut stream, token, mio::Interest::READABLE)
            .is_ok()
        {
            entry.insert(Rested {
                stream,
                peer,
                since: Instant::now(),
                _open: open,
            });
            self.count();
        }
    }

    /// Serves every resting connection `poll` reports readable: reads its
    /// request and answers it with `answer` (given the input, the peer and
    /// the socket). Connections that leave the set are passed to `leave`,
    /// deregistered. `now` is the thread's clock for this wake-up: a served
    /// connection's idle time counts from it. Returns whether the set was
    /// drained (no event left untaken), so that its readiness can be cleared.
    pub(crate) fn serve(
        &mut self,
        poll: &mut mio::Poll,
        now: Instant,
        mut answer: impl FnMut(&[u8], SocketAddr, &mio::net::TcpStream) -> Served,
        mut leave: impl FnMut(Rested<G>, Vec<u8>, Vec<u8>, bool),
    ) -> bool {
        if let Err(e) = poll.poll(&mut self.events, Some(Duration::ZERO)) {
            // Interrupted and the like: the reactor reports the set again.
            return e.kind() != ErrorKind::Interrupted;
        }
        let taken = self.events.iter().count();
        let resting = self.connections.len();
        let mut first = [0u8; 2048];
        for event in &self.events {
            let key = event.token().0;
            let Some(rested) = self.connections.get_mut(key) else {
                continue;
            };
            let read = match crate::bare::recv(&rested.stream, &mut first) {
                Ok(0) => {
                    self.connections.remove(key);
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => 0,
                Err(_) => {
                    self.connections.remove(key);
                    continue;
                }
            };
            let served = if read == 0 {
                // Interrupted before anything was read: a task reads it.
                Served::Leaves {
                    input: Vec::new(),
                    pending: Vec::new(),
                    close_after: false,
                }
            } else if read == first.len() {
                // Perhaps more behind it: a task reads the rest.
                Served::Leaves {
                    input: first.to_vec(),
                    pending: Vec::new(),
                    close_after: false,
                }
            } else {
                answer(&first[..read], rested.peer, &rested.stream)
            };
            match served {
                Served::Rests => rested.since = now,
                Served::Closed => {
                    self.connections.remove(key);
                }
                Served::Leaves {
                    input,
                    pending,
                    close_after,
                } => {
                    let mut rested = self.connections.remove(key);
                    // Out of this set before a task registers it with the reactor.
                    let _ = poll.registry().deregister(&mut rested.stream);
                    leave(rested, input, pending, close_after);
                }
            }
        }
        if self.connections.len() != resting {
            self.count();
        }
        taken < self.events.capacity()
    }

    /// Closes the connections that rested `timeout` or longer.
    pub(crate) fn close_idle(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.connections
            .retain(|_, rested| now.duration_since(rested.since) < timeout);
        self.count();
    }

    /// Closes every resting connection (the server stops).
    pub(crate) fn close_all(&mut self) {
        self.connections.clear();
        self.count();
    }
}
