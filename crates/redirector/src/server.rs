//! Accepting player connections and answering them: HTTP/1.1 with bounded
//! heads and timeouts, pipelining, and a graceful shutdown that finishes
//! requests in flight.
//!
//! The player port runs on `--threads` OS threads, each with its own
//! current-thread runtime and its own listening socket on the same address
//! (`SO_REUSEPORT`): the kernel spreads new connections over the sockets, and
//! a connection lives and dies on the thread that accepted it, with no
//! hand-off between threads.
//!
//! A new connection's request is normally in when it is accepted (the socket
//! has `TCP_DEFER_ACCEPT`): it is answered right there, and the connection
//! closed, without a task or an epoll registration (`Acceptor`). A
//! connection kept alive after that answer rests in the thread's own epoll
//! set until its next request, which is answered the same way
//! (`resting`). A connection that must wait gets a task
//! (`Connection`), which reads what
//! the player sent, answers every complete request in it (see
//! [`crate::wire`]) into one buffer, and writes that buffer with one call:
//! one read and one write per request, as nginx does.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::follow::ThreadView;
use crate::http::{App, Request, handle, handle_in, method_not_allowed};
use crate::metrics::PlayerConnections;
use crate::resting::{Resting, Served};
use crate::watchdog::{self, Watched};
use crate::wire::{self, DateCache, Method, Next, Parsed, Refusal, Reply};

/// The largest request head accepted; a bigger one gets 431.
pub const MAX_HEADER_BYTES: usize = wire::MAX_HEAD_BYTES;

/// Room made in a connection's input buffer before each read.
const READ_ROOM: usize = 4096;

/// How long a refused connection is read (and what it sends thrown away)
/// after the answer, so closing it does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);

/// Serves players on `listener` until `shutdown` completes, then waits up to
/// `grace` for requests in flight before returning. A request head must
/// arrive within `header_timeout` of the connection being ready for it (a
/// slow head, and an idle connection, are closed).
pub async fn serve(
    listener: std::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    header_timeout: Duration,
    connections: PlayerConnections,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = mio::net::TcpListener::from_std(listener);
    #[allow(unsafe_code)]
    // SAFETY: the AsyncFd owns the mio listener, which owns its descriptor
    // and neither closes nor replaces it while the AsyncFd holds it (the
    // I/O-safety requirement of tokio#8587).
    let listener = unsafe {
        AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
            .map_err(std::io::Error::from)?
    };
    // Keep-alive connections between requests (see `resting`).
    #[allow(unsafe_code)]
    // SAFETY: the AsyncFd owns the mio Poll, which owns its epoll descriptor
    // and neither closes nor replaces it while the AsyncFd holds it.
    let mut resting_poll = unsafe {
        AsyncFd::register_with_interest(mio::Poll::new()?, tokio::io::Interest::READABLE)
            .map_err(std::io::Error::from)?
    };
    let mut resting = Resting::new(connections.waiting.clone());
    // Connections whose task has answered everything they sent come back to
    // rest (see `Connection::run`).
    let (home, mut homecoming) = tokio::sync::mpsc::unbounded_channel();
    // Deadlines and the stop, watched per thread (see `watchdog`).
    watchdog::start();
    let tick = watchdog::tick(header_timeout);
    let sweeper = tokio::spawn(watchdog::sweep(tick));
    let mut idle_sweep = tokio::time::interval(tick);
    idle_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let acceptor = Acceptor {
        view: RefCell::new(app.views.for_thread()),
        now_ms: Cell::new(clock_now().1),
        app,
        header_timeout,
        open: Arc::new(OpenConnections::new(connections.open.clone())),
        output: RefCell::new(Vec::with_capacity(1024)),
        home,
    };
    tokio::pin!(shutdown);
    'serving: loop {
        let mut ready = tokio::select! {
            () = &mut shutdown => break,
            ready = resting_poll.readable_mut() => {
                let mut ready = ready?;
                let (now, now_ms) = clock_now();
                acceptor.now_ms.set(now_ms);
                let drained = resting.serve(
                    ready.get_inner_mut(),
                    now,
                    |input, peer, stream| acceptor.answer_resting(input, peer, stream),
                    |rested, input, pending, close_after| {
                        // A head still to come has the time left since the
                        // connection was ready for it; an answer still to
                        // write has the whole timeout.
                        let ready_since = pending.is_empty().then_some(rested.since);
                        acceptor.hand_over(
                            rested.stream,
                            rested.peer,
                            (input, pending, close_after),
                            ready_since,
                        );
                    },
                );
                if drained {
                    ready.clear_ready();
                }
                continue;
            }
            Some(Home { stream, peer, open }) = homecoming.recv() => {
                resting.rest(resting_poll.get_ref(), stream, peer, open);
                continue;
            }
            _ = idle_sweep.tick() => {
                resting.close_idle(header_timeout);
                continue;
            }
            ready = listener.readable() => ready?,
        };
        // Every connection waiting, then back to the reactor.
        acceptor.now_ms.set(clock_now().1);
        loop {
            match listener.get_ref().accept() {
                Ok((stream, peer)) => {
                    connections.accepted.inc();
                    acceptor.take(stream, peer, &mut resting, resting_poll.get_ref());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    drop(ready);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'serving;
                }
            }
        }
    }
    drop(listener);
    // Connections on their way back are closed with the resting ones.
    drop(homecoming);
    resting.close_all();
    watchdog::stop();
    // Idle connections close at once, busy ones after their answer; what is
    // left after the grace period is dropped with this thread's runtime.
    if tokio::time::timeout(grace, acceptor.open.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
    sweeper.abort();
    Ok(())
}

/// What a player thread needs to take a new connection.
struct Acceptor {
    app: Arc<App>,
    header_timeout: Duration,
    open: Arc<OpenConnections>,
    /// Where answers given in place are encoded.
    output: RefCell<Vec<u8>>,
    /// The view answers given in place are chosen from.
    view: RefCell<ThreadView>,
    /// The time answers given in place are given at (milliseconds since the
    /// Unix epoch): read once per wake-up, as nginx does, not per request.
    now_ms: Cell<i64>,
    /// Where tasks send connections back to rest.
    home: tokio::sync::mpsc::UnboundedSender<Home>,
}

/// A connection going back to rest after its task answered all it sent.
struct Home {
    stream: mio::net::TcpStream,
    peer: SocketAddr,
    open: Entered,
}

impl Acceptor {
    /// Takes a new connection. A player sends one request as soon as it is
    /// connected, so it is usually there already: then it is answered right
    /// here, and the connection closed or handed on, without a task or a
    /// registration with epoll, which is what nginx does too. Anything else
    /// (no request yet, a partial or refused one, pipelining, an answer that
    /// must wait for a slot lease) goes to a task of its own.
    fn take(
        &self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        resting: &mut Resting<Entered>,
        poll: &mio::Poll,
    ) {
        let mut first = [0u8; 2048];
        let read = match crate::bare::recv(&stream, &mut first) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        let input = &first[..read];
        if read > 0 {
            match self.answer_now(input, peer, &stream) {
                Inline::Done => return,
                Inline::Open => {
                    let open = OpenConnections::enter(&self.open);
                    return resting.rest(poll, stream, peer, open);
                }
                Inline::Unfinished {
                    unwritten,
                    close_after,
                } => {
                    return self.hand_over(
                        stream,
                        peer,
                        (Vec::new(), unwritten, close_after),
                        None,
                    );
                }
                Inline::NotNow => {}
            }
        }
        self.hand_over(stream, peer, (input.to_vec(), Vec::new(), false), None);
    }

    /// Answers `input` now if it is exactly one request whose answer needs no
    /// waiting, and writes the answer.
    fn answer_now(&self, input: &[u8], peer: SocketAddr, stream: &mio::net::TcpStream) -> Inline {
        let now_ms = self.now_ms.get();
        let Step::Request(request, length, keep) = next_request(input, peer, &self.app) else {
            return Inline::NotNow;
        };
        if length != input.len() {
            return Inline::NotNow;
        }
        let next = unless_stopped(keep);
        // Polled once where it lies (`now_or_never` would move it, and the
        // decision's future is large). Pending only while waiting for a slot
        // lease: then the task asks again.
        let mut view = self.view.borrow_mut();
        let decided = std::pin::pin!(handle_in(&self.app, view.current(), &request, now_ms));
        let Poll::Ready(reply) = decided.poll(&mut Context::from_waker(Waker::noop())) else {
            return Inline::NotNow;
        };
        // One buffer per thread, reused by every answer given here.
        let mut output = self.output.borrow_mut();
        output.clear();
        encode(&reply, request.method, next, now_ms, &mut output);
        let written = match crate::bare::send(stream, &output) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(_) => return Inline::Done,
        };
        if written == output.len() {
            return match next {
                Next::Close => Inline::Done,
                Next::KeepAlive | Next::KeepAlive10 => Inline::Open,
            };
        }
        Inline::Unfinished {
            unwritten: output[written..].to_vec(),
            close_after: next == Next::Close,
        }
    }

    /// Answers a request read from a resting connection, as [`Acceptor::answer_now`].
    fn answer_resting(
        &self,
        input: &[u8],
        peer: SocketAddr,
        stream: &mio::net::TcpStream,
    ) -> Served {
        match self.answer_now(input, peer, stream) {
            Inline::Done => Served::Closed,
            Inline::Open => Served::Rests,
            Inline::Unfinished {
                unwritten,
                close_after,
            } => Served::Leaves {
                input: Vec::new(),
                pending: unwritten,
                close_after,
            },
            Inline::NotNow => Served::Leaves {
                input: input.to_vec(),
                pending: Vec::new(),
                close_after: false,
            },
        }
    }

    /// Registers the connection with the reactor and serves it in a task,
    /// starting from what was already read (`input`) and what is still to be
    /// written (`pending`, then closing, if `close_after`). The first head's
    /// timeout counts from `ready_since` (now if `None`).
    fn hand_over(
        &self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        (input, pending, close_after): (Vec<u8>, Vec<u8>, bool),
        ready_since: Option<Instant>,
    ) {
        let stream = std::net::TcpStream::from(std::os::fd::OwnedFd::from(stream));
        let Ok(stream) = TcpStream::from_std(stream) else {
            return;
        };
        let connection = Connection {
            stream,
            peer,
            app: self.app.clone(),
            header_timeout: self.header_timeout,
            ready_since,
            open: OpenConnections::enter(&self.open),
            home: self.home.clone(),
        };
        tokio::spawn(connection.run(input, pending, close_after));
    }
}

/// What [`Acceptor::answer_now`] did.
enum Inline {
    /// Answered; the connection is closed.
    Done,
    /// Answered in full; the connection stays open for the next request.
    Open,
    /// Answered, but the connection goes on in a task: it writes what could
    /// not be written yet, then closes if `close_after`, else serves the next
    /// requests.
    Unfinished {
        /// The part of the answer still to write.
        unwritten: Vec<u8>,
        /// Whether the connection closes after it.
        close_after: bool,
    },
    /// Not answered: a task takes the connection from the start.
    NotNow,
}

/// How many connections of a player thread are open (the thread's
/// `icb_player_connections_open`), and a wake-up when the last one closes.
/// Entered and left on the player thread only.
struct OpenConnections {
    count: Gauge,
    closed: Notify,
}

/// One open connection; counted until dropped.
struct Entered(Arc<OpenConnections>);

impl OpenConnections {
    fn new(count: Gauge) -> OpenConnections {
        OpenConnections {
            count,
            closed: Notify::new(),
        }
    }

    fn enter(this: &Arc<OpenConnections>) -> Entered {
        this.count.inc();
        Entered(Arc::clone(this))
    }

    async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.count.get() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.0.count.dec() == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// One player connection.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    header_timeout: Duration,
    /// Since when the connection has been ready for its first head here,
    /// if before the task started (it rested between requests).
    ready_since: Option<Instant>,
    /// Held while the connection is open (counted for the graceful stop).
    open: Entered,
    /// Where the connection goes back to rest once idle.
    home: tokio::sync::mpsc::UnboundedSender<Home>,
}

impl Connection {
    /// Serves the connection: first writes `pending` (an answer given before
    /// the hand-over) and closes if `close_after`, then answers what `input`
    /// holds and what follows until all the player sent is answered; then
    /// the connection rests again.
    async fn run(mut self, mut input: Vec<u8>, pending: Vec<u8>, close_after: bool) {
        let (mut now, mut now_ms) = clock_now();
        let deadline = self.ready_since.unwrap_or(now) + self.header_timeout;
        let mut answered = !pending.is_empty();
        if answered {
            let written = tokio::time::timeout_at(deadline, self.stream.write_all(&pending)).await;
            if close_after || !matches!(written, Ok(Ok(()))) {
                return;
            }
        }
        input.reserve(READ_ROOM);
        let mut output: Vec<u8> = Vec::with_capacity(1024);
        // The header and idle deadline, and the server's stop: a look into
        // the thread's table per wait, no timer or channel per connection.
        let watched = Watched::new(deadline);
        loop {
            let (consumed, end) = self.answer_all(&input, now_ms, &mut output).await;
            if consumed == input.len() {
                input.clear();
            } else {
                input.drain(..consumed);
            }
            if !output.is_empty() {
                // The socket nearly always takes the whole answer at once:
                // only what it cannot take yet waits, under the timeout.
                let sent = match self.stream.try_write(&output) {
                    Ok(sent) => sent,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(_) => return,
                };
                if sent < output.len() {
                    let written = tokio::time::timeout_at(
                        now + self.header_timeout,
                        self.stream.write_all(&output[sent..]),
                    )
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        return;
                    }
                }
                output.clear();
            }
            match end {
                End::Open => {}
                End::Close => return,
                End::Refused => return self.linger().await,
            }
            answered |= consumed > 0;
            if answered && input.is_empty() {
                // All it sent is answered: it waits for the next request
                // where resting connections do, not in a task.
                return self.rest_again();
            }
            if input.capacity() - input.len() < READ_ROOM / 2 {
                input.reserve(READ_ROOM);
            }
            let waiting = input.is_empty();
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut input) => {
                    match read {
                        Ok(n) if n > 0 => (now, now_ms) = clock_now(),
                        // Closed or failed.
                        _ => return,
                    }
                }
                // Too slow (a head still arriving after the timeout, or an
                // idle connection), or the server stops while the connection
                // is between requests: closed.
                _ = watched.interrupted(waiting) => return,
            }
        }
    }

    /// Sends the connection back to the thread's resting set (see
    /// [`crate::resting`]), out of this task's reactor registration. Closed
    /// instead if the thread is stopping.
    fn rest_again(self) {
        let Ok(stream) = self.stream.into_std() else {
            return;
        };
        let home = Home {
            stream: mio::net::TcpStream::from_std(stream),
            peer: self.peer,
            open: self.open,
        };
        // Dropped, and so closed, once the thread stopped taking them back.
        let _ = self.home.send(home);
    }

    /// Answers every complete request at the start of `input` into `output`;
    /// returns how many bytes they took and whether the connection goes on.
    async fn answer_all(
        &mut self,
        input: &[u8],
        now_ms: i64,
        output: &mut Vec<u8>,
    ) -> (usize, End) {
        let mut consumed = 0;
        loop {
            if consumed == input.len() {
                // All answered: nothing to parse until more is read.
                return (consumed, End::Open);
            }
            match next_request(&input[consumed..], self.peer, &self.app) {
                Step::Partial => return (consumed, End::Open),
                Step::Request(request, length, keep) => {
                    let next = unless_stopped(keep);
                    let reply = handle(&self.app, &request, now_ms).await;
                    encode(&reply, request.method, next, now_ms, output);
                    consumed += length;
                    if next == Next::Close {
                        return (consumed, End::Close);
                    }
                }
                Step::Refused(refusal, method) => {
                    // Other methods get 405, even with the body we refuse to read.
                    let reply = if refusal == Refusal::Body && method == Method::Other {
                        self.app
                            .metrics
                            .request_without_stream("method_not_allowed");
                        method_not_allowed()
                    } else {
                        refusal.reply()
                    };
                    encode(&reply, method, Next::Close, now_ms, output);
                    return (input.len(), End::Refused);
                }
            }
        }
    }

    /// Closes a refused connection gently: the answer is sent, then whatever
    /// the client still sends is read and dropped for a moment, so the close
    /// does not turn into a reset that destroys the answer.
    async fn linger(mut self) {
        let _ = self.stream.shutdown().await;
        // On the heap: an array here would make every connection's future 4 KiB bigger.
        let mut sink = vec![0u8; 4096];
        let mut left: usize = 64 * 1024;
        let _ = tokio::time::timeout(LINGER, async {
            while left > 0 {
                match self.stream.read(&mut sink).await {
                    Ok(n) if n > 0 => left = left.saturating_sub(n),
                    _ => return,
                }
            }
        })
        .await;
    }
}

/// The next request in a connection's input.
enum Step<'b> {
    /// Not complete yet.
    Partial,
    /// A request, the length of its head, and how the connection goes on after it.
    Request(Request<'b>, usize, Next),
    /// A head to refuse, and its method.
    Refused(Refusal, Method),
}

/// Parses the request at the start of `input`. Not async: the header lines
/// are looked at here and dropped, so they never become part of the
/// connection's future (which tokio moves when it spawns it).
fn next_request<'b>(input: &'b [u8], peer: SocketAddr, app: &App) -> Step<'b> {
    let mut headers = wire::header_slots();
    match wire::parse(input, &mut headers) {
        Parsed::Partial => Step::Partial,
        Parsed::Refused(refusal, method) => Step::Refused(refusal, method),
        Parsed::Request(head, length) => {
            let next = if !head.keep_alive {
                Next::Close
            } else if head.http10 {
                Next::KeepAlive10
            } else {
                Next::KeepAlive
            };
            Step::Request(Request::new(&head, peer.ip(), &app.trusted), length, next)
        }
    }
}

/// What happens to a connection after its answers are written.
enum End {
    /// It waits for the next request.
    Open,
    /// It closes (the client asked, or the server is stopping).
    Close,
    /// It was refused: it closes after lingering.
    Refused,
}

thread_local! {
    /// This thread's wall clock, derived from the monotonic one and set again
    /// from the system every second.
    static CLOCK: Cell<Option<(Instant, i64)>> = const { Cell::new(None) };
    /// This thread's `Date` header, formatted once a second.
    static DATES: std::cell::RefCell<DateCache> = std::cell::RefCell::new(DateCache::default());
}

/// Now, monotonic and in milliseconds since the Unix epoch. Answers given in
/// place read it once per wake-up of the thread, a task once per read.
fn clock_now() -> (Instant, i64) {
    let now = Instant::now();
    let base = CLOCK.with(|clock| match clock.get() {
        Some((at, ms)) if now.duration_since(at) < Duration::from_secs(1) => (at, ms),
        _ => {
            let fresh = (now, crate::http::now_ms());
            clock.set(Some(fresh));
            fresh
        }
    });
    let since = i64::try_from(now.duration_since(base.0).as_millis()).unwrap_or(0);
    (now, base.1 + since)
}

/// Appends `reply` to `output`, dated with this thread's cached `Date`;
/// without a body when it answers a HEAD.
fn encode(reply: &Reply, method: Method, next: Next, now_ms: i64, output: &mut Vec<u8>) {
    DATES.with(|dates| {
        let mut dates = dates.borrow_mut();
        wire::encode(
            reply,
            method == Method::Head,
            next,
            dates.at(now_ms),
            output,
        );
    });
}

/// `keep`, unless the server is stopping: then the connection closes after
/// this answer.
fn unless_stopped(keep: Next) -> Next {
    if watchdog::stopping() {
        Next::Close
    } else {
        keep
    }
}

/// Binds `threads` listening sockets to `address`, all with `SO_REUSEPORT`
/// (port 0 picks one port for all of them). Call inside a tokio runtime; the
/// sockets come back as std listeners, to be moved to their threads.
pub fn bind_player_sockets(
    address: SocketAddr,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(threads);
    let mut address = address;
    for _ in 0..threads.max(1) {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        defer_accept(&socket)?;
        socket.bind(address)?;
        let listener = socket.listen(1024)?;
        // The others join the port the first one got.
        address = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// How long the kernel holds a new connection that has sent nothing before
/// handing it over anyway (then the header timeout applies).
const DEFER_ACCEPT_SECS: libc::c_int = 10;

/// `TCP_DEFER_ACCEPT` (nginx's `listen ... deferred`): a connection is handed
/// to us once its first bytes are in, so the request of a new player is
/// there when it is accepted and can be answered at once ([`Acceptor::take`]),
/// and a client that connects and says nothing costs us nothing.
fn defer_accept(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let seconds = DEFER_ACCEPT_SECS;
    #[allow(unsafe_code)]
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and
    // its size, as TCP_DEFER_ACCEPT takes (tcp(7)).
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What each player thread needs.
#[derive(Clone)]
pub struct ThreadOptions {
    /// Time to finish requests in flight after `stop` turns true.
    pub grace: Duration,
    /// Time allowed for a request head, and for an idle connection.
    pub header_timeout: Duration,
}

/// Serves players on one OS thread per listener until `stop` turns true.
/// Each thread returns once its connections finished or `grace` passed.
pub fn serve_on_threads(
    listeners: Vec<std::net::TcpListener>,
    app: &Arc<App>,
    stop: &watch::Receiver<bool>,
    options: &ThreadOptions,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (app, mut stop, options) = (app.clone(), stop.clone(), options.clone());
        let connections = app.metrics.player_connections(index);
        let thread = std::thread::Builder::new()
            .name(format!("players-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, thread = index, "cannot start a player runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let shutdown = async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    };
                    let served = serve(
                        listener,
                        app,
                        shutdown,
                        options.grace,
                        options.header_timeout,
                        connections,
                    )
                    .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, thread = index, "cannot use the player socket");
                    }
                });
            })?;
        threads.push(thread);
    }
    Ok(threads)
}
