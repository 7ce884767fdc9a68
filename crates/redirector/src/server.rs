//! Accepting player connections: HTTP/1.1 with bounded headers and timeouts,
//! and a graceful shutdown that finishes requests in flight.
//!
//! The player port runs on `--threads` OS threads, each with its own
//! current-thread runtime and its own listening socket on the same address
//! (`SO_REUSEPORT`): the kernel spreads new connections over the sockets, and
//! a connection lives and dies on the thread that accepted it, with no
//! hand-off between threads.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::http::{App, handle};

/// The largest request head accepted; a bigger one gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves players on `listener` until `shutdown` completes, then waits up to
/// `grace` for requests in flight before returning. A request head still
/// arriving after `header_timeout` is cut off, and so is an idle connection.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    header_timeout: Duration,
    connections: Counter,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
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
        let _ = stream.set_nodelay(true);
        connections.inc();
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&app, request, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
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
