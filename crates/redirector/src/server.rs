//! Accepting player connections and answering them: HTTP/1.1 with bounded
//! heads and timeouts, pipelining, and a graceful shutdown that finishes
//! requests in flight.
//!
//! The player port runs on `--threads` OS threads, each with its own
//! current-thread runtime and its own listening socket on the same address
//! (`SO_REUSEPORT`): the kernel spreads new connections over the sockets, and
//! a connection lives and dies on the thread that accepted it, with no
//! hand-off between threads. Each connection reads what the player sent,
//! answers every complete request in it (see [`crate::wire`]) into one
//! buffer, and writes that buffer with one call: for a player, one read and
//! one write per request, as nginx does.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::{App, handle, method_not_allowed};
use crate::wire::{self, DateCache, Method, Next, Parsed, Refusal};

/// The largest request head accepted; a bigger one gets 431.
pub const MAX_HEADER_BYTES: usize = wire::MAX_HEAD_BYTES;

/// Room made in a connection's input buffer before each read.
const READ_ROOM: usize = 4096;

/// How long a refused connection is read (and what it sends thrown away)
/// after the answer, so closing it does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);

/// One request in this many (each thread's first among them) has its
/// selection timed for the metrics.
const TIMED_EVERY: u32 = 16;

/// Serves players on `listener` until `shutdown` completes, then waits up to
/// `grace` for requests in flight before returning. A request head must
/// arrive within `header_timeout` of the connection being ready for it (a
/// slow head, and an idle connection, are closed).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    header_timeout: Duration,
    connections: Counter,
) {
    let (stop, stopped) = watch::channel(false);
    let mut open = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.inc();
        let connection = Connection {
            stream,
            peer,
            app: app.clone(),
            stopped: stopped.clone(),
            header_timeout,
        };
        open.spawn(connection.run());
    }
    drop(listener);
    let _ = stop.send(true);
    let finished = tokio::time::timeout(grace, async { while open.join_next().await.is_some() {} });
    if finished.await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
        open.abort_all();
    }
}

/// One player connection.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    /// Turns true when the server stops: idle connections close, busy ones
    /// close after their answer.
    stopped: watch::Receiver<bool>,
    header_timeout: Duration,
}

impl Connection {
    async fn run(mut self) {
        let mut input: Vec<u8> = Vec::with_capacity(READ_ROOM);
        let mut output: Vec<u8> = Vec::with_capacity(1024);
        let (mut now, mut now_ms) = clock_now();
        let mut deadline = now + self.header_timeout;
        loop {
            let (consumed, end) = self.answer_all(&input, now_ms, &mut output).await;
            if consumed == input.len() {
                input.clear();
            } else {
                input.drain(..consumed);
            }
            if !output.is_empty() {
                let written =
                    tokio::time::timeout_at(deadline.max(now + self.header_timeout), async {
                        self.stream.write_all(&output).await
                    })
                    .await;
                output.clear();
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
            }
            match end {
                End::Open => {}
                End::Close => return,
                End::Refused => return self.linger().await,
            }
            if consumed > 0 && input.is_empty() {
                // Ready for the next request: it has the whole timeout.
                deadline = now + self.header_timeout;
            }
            if input.capacity() - input.len() < READ_ROOM / 2 {
                input.reserve(READ_ROOM);
            }
            let idle = input.is_empty();
            tokio::select! {
                biased;
                read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut input)) => {
                    match read {
                        Ok(Ok(n)) if n > 0 => (now, now_ms) = clock_now(),
                        // Closed, failed, or too slow: a head still arriving
                        // after the timeout, or an idle connection, is cut off.
                        _ => return,
                    }
                }
                _ = self.stopped.changed(), if idle => return,
            }
        }
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
            let mut headers = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
            match wire::parse(&input[consumed..], &mut headers) {
                Parsed::Partial => return (consumed, End::Open),
                Parsed::Request(head, length) => {
                    let next = if !head.keep_alive || *self.stopped.borrow() {
                        Next::Close
                    } else if head.http10 {
                        Next::KeepAlive10
                    } else {
                        Next::KeepAlive
                    };
                    let reply = handle(&self.app, &head, self.peer, now_ms, timed()).await;
                    let head_only = head.method == Method::Head;
                    with_date(now_ms, |date| {
                        wire::encode(&reply, head_only, next, date, output);
                    });
                    consumed += length;
                    if next == Next::Close {
                        return (consumed, End::Close);
                    }
                }
                Parsed::Refused(refusal, method) => {
                    // Other methods get 405, even with the body we refuse to read.
                    let reply = if refusal == Refusal::Body && method == Method::Other {
                        self.app.metrics.request(None, "method_not_allowed");
                        method_not_allowed()
                    } else {
                        refusal.reply()
                    };
                    with_date(now_ms, |date| {
                        wire::encode(&reply, method == Method::Head, Next::Close, date, output);
                    });
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
        let mut sink = [0u8; 4096];
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
    /// This thread's wall clock, derived from the monotonic one (one clock
    /// read per batch of requests) and set again from the system every second.
    static CLOCK: Cell<Option<(Instant, i64)>> = const { Cell::new(None) };
    /// This thread's `Date` header, formatted once a second.
    static DATES: std::cell::RefCell<DateCache> = std::cell::RefCell::new(DateCache::default());
    /// Counts requests, to time one in [`TIMED_EVERY`].
    static REQUESTS: Cell<u32> = const { Cell::new(0) };
}

/// Now, monotonic and in milliseconds since the Unix epoch.
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

fn with_date(now_ms: i64, write: impl FnOnce(&str)) {
    DATES.with(|dates| write(dates.borrow_mut().at(now_ms)));
}

fn timed() -> bool {
    REQUESTS.with(|count| {
        let n = count.get().wrapping_add(1);
        count.set(n);
        n % TIMED_EVERY == 1
    })
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
        socket.bind(address)?;
        let listener = socket.listen(1024)?;
        // The others join the port the first one got.
        address = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
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
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            tracing::error!(error = %e, thread = index, "cannot use the player socket");
                            return;
                        }
                    };
                    let shutdown = async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    };
                    serve(
                        listener,
                        app,
                        shutdown,
                        options.grace,
                        options.header_timeout,
                        connections,
                    )
                    .await;
                });
            })?;
        threads.push(thread);
    }
    Ok(threads)
}
