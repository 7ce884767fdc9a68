//! Running a redirector: the snapshot source (Redis, or an in-process poller),
//! the player-facing server, the admin server, and a bounded shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use balancer_fleet::Fleet;
use balancer_geo::{GeoDb, RankPolicy};
use balancer_service::{Admin, Health, Signal, serve_admin};
use balancer_store::{Keys, MemoryStore, RedisStore};
use icecast_poller::control::PollerControl;
use icecast_poller::service::{Command, Poller};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::client_ip::TrustedProxies;
use crate::control::RedirectorControl;
use crate::follow::{Views, follow_memory, follow_redis};
use crate::http::{App, now_ms};
use crate::metrics::RedirectorMetrics;
use crate::reserve::{Mode, Reservations, Timings};
use crate::select::Selector;
use crate::server::{ThreadOptions, serve_on_threads};

/// Everything shutdown may take, end to end.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);
/// How often a redirector re-reads the snapshot version from Redis in case a
/// notification was lost.
const REFRESH: Duration = Duration::from_secs(1);
/// How often a replica tells the others it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often GeoIP files are checked for replacement.
const GEOIP_CHECK: Duration = Duration::from_secs(10);

/// Where the fleet picture comes from.
pub enum Source {
    /// A poller's snapshots in Redis.
    Redis(balancer_service::RedisUrl),
    /// An in-process poller reading this fleet file (standalone mode).
    Standalone(PathBuf, Fleet),
}

/// What `run` needs besides its sockets.
pub struct Options {
    /// Where the fleet picture comes from.
    pub source: Source,
    /// The process: its environment and its service manager.
    pub process: balancer_service::Process,
    /// City or Country database.
    pub geoip_city: Option<PathBuf>,
    /// ASN database.
    pub geoip_asn: Option<PathBuf>,
    /// Proxies whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// django-icecast-balancer's URL prefix.
    pub prefix: String,
    /// Staleness limit for server data.
    pub max_data_age: Duration,
    /// Time a player may take to connect after a redirect.
    pub connect_grace: Duration,
    /// How long slots leased from Redis may be handed out.
    pub slot_lease: Duration,
    /// The range a 503's `Retry-After` is drawn from.
    pub retry_after: crate::cli::RetryAfter,
    /// What the public stream index shows.
    pub index: crate::index::IndexMode,
    /// Time to keep answering after health turns NOT_SERVING.
    pub drain_delay: Duration,
    /// Time allowed for a request head.
    pub header_timeout: Duration,
    /// Bearer token for the control API, if set.
    pub admin_token: Option<String>,
}

/// Runs until SIGTERM (or the signal channel closes), then shuts down within 10 s.
/// Players are served on one thread per socket in `listeners` (see
/// [`crate::server`]); everything else runs on the caller's runtime.
pub async fn run(
    options: Options,
    listeners: Vec<std::net::TcpListener>,
    admin: TcpListener,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<(), String> {
    let (geo, errors) = GeoDb::open(options.geoip_city.clone(), options.geoip_asn.clone());
    for error in errors {
        tracing::warn!(%error, "GeoIP database unavailable; ranking without it");
    }
    let geo = Arc::new(geo);
    let identity = balancer_service::process_identity();
    let views = Arc::new(Views::default());
    let (stop_tx, stop) = watch::channel(false);
    let timings = Timings {
        grace: options.connect_grace,
        lease: options.slot_lease,
        max_age: options.max_data_age,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RedirectorMetrics::register(&mut registry);
    let mut poller_commands = None;
    let mut poller_control = None;
    let mut audience = None;
    let reservations = match options.source {
        Source::Redis(url) => {
            let store = RedisStore::new(url.as_str(), Keys::default(), Duration::from_millis(500))
                .map_err(|e| format!("--redis: {e}"))?;
            let reservations = Arc::new(
                Reservations::new(Arc::new(store.clone()), Mode::Shared, timings)
                    .with_metrics(metrics.clone()),
            );
            tokio::spawn(follow_redis(
                store.clone(),
                views.clone(),
                geo.clone(),
                reservations.clone(),
                REFRESH,
                stop.clone(),
            ));
            tokio::spawn(heartbeat(
                store,
                identity.clone(),
                reservations.clone(),
                stop.clone(),
            ));
            reservations
        }
        Source::Standalone(path, fleet) => {
            let memory = MemoryStore::new();
            let reservations = Arc::new(
                Reservations::new(Arc::new(memory.slots()), Mode::Alone, timings)
                    .with_metrics(metrics.clone()),
            );
            let (poller, status) = Poller::new(
                path,
                options.process.env,
                fleet,
                memory.clone(),
                identity.clone(),
            )?;
            // The embedded poller's metrics (polls, canaries, audience) on
            // the same /metrics: their names do not overlap the redirector's.
            let poller = poller.with_geo(geo.clone()).with_metrics(
                icecast_poller::metrics::PollerMetrics::register(&mut registry),
            );
            audience = Some(poller.audience_feed());
            let (commands, command_rx) = mpsc::channel(16);
            poller_control = Some(PollerControl::new(commands.clone(), status, memory.clone()));
            poller_commands = Some(commands);
            let mut poller_stop = stop.clone();
            tokio::spawn(poller.run(command_rx, async move {
                let _ = poller_stop.wait_for(|s| *s).await;
            }));
            tokio::spawn(follow_memory(
                memory.subscribe(),
                views.clone(),
                geo.clone(),
                reservations.clone(),
            ));
            reservations
        }
    };
    tokio::spawn(watch_geoip(geo.clone(), stop.clone()));

    let max_age_ms = i64::try_from(options.max_data_age.as_millis()).unwrap_or(i64::MAX);
    let selector = Arc::new(Selector {
        geo: geo.clone(),
        reservations,
        policy: RankPolicy::default(),
        max_age_ms,
    });
    let control = RedirectorControl {
        selector: selector.clone(),
        views: views.clone(),
        geo: geo.clone(),
        poller: poller_control,
        started: std::time::Instant::now(),
    };
    let app = Arc::new(App {
        selector,
        views: views.clone(),
        trusted: options.trusted,
        prefix: options.prefix,
        metrics: metrics.clone(),
        retry_after: options.retry_after,
        index: options.index,
    });

    let (health_tx, health_rx) = oneshot::channel();
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let admin_server = tokio::spawn(serve_admin(
        admin,
        |health| {
            let _ = health_tx.send(health);
        },
        Admin {
            control: Arc::new(control),
            token: options.admin_token,
            metrics: Arc::new(registry),
            audience,
        },
        async {
            let _ = admin_stopped.await;
        },
    ));
    let health = health_rx
        .await
        .map_err(|_| "the admin server did not start".to_owned())?;
    let stopping = Arc::new(AtomicBool::new(false));
    tokio::spawn(report_health(
        health.clone(),
        views.clone(),
        max_age_ms,
        stopping.clone(),
        metrics.clone(),
        options.process,
    ));

    let (stop_http, http_stopped) = watch::channel(false);
    let grace = SHUTDOWN_BUDGET.saturating_sub(options.drain_delay + Duration::from_secs(1));
    let threads = serve_on_threads(
        listeners,
        &app,
        &http_stopped,
        &ThreadOptions {
            grace,
            header_timeout: options.header_timeout,
        },
    )
    .map_err(|e| format!("cannot start the player threads: {e}"))?;
    // Finished when every player thread has drained its connections.
    let http = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    });

    while let Some(signal) = signals.recv().await {
        match signal {
            Signal::Reload => {
                tracing::info!(
                    "SIGHUP: reloading GeoIP databases{}",
                    if poller_commands.is_some() {
                        " and the fleet config"
                    } else {
                        ""
                    }
                );
                for error in geo.reload() {
                    tracing::error!(%error, "GeoIP reload refused; the loaded database stays");
                }
                if let Some(commands) = &poller_commands {
                    let _ = commands.send(Command::Reload).await;
                }
            }
            Signal::Terminate => break,
        }
    }
    tracing::info!(drain = ?options.drain_delay, "shutting down: NOT_SERVING, then draining");
    stopping.store(true, Ordering::Relaxed);
    (options.process.stopping)();
    health.set(false).await;
    tokio::time::sleep(options.drain_delay).await;
    let _ = stop_http.send(true);
    let _ = tokio::time::timeout(grace + Duration::from_millis(200), http).await;
    let _ = stop_tx.send(true);
    let _ = stop_admin.send(());
    let mut admin_server = admin_server;
    if tokio::time::timeout(Duration::from_millis(500), &mut admin_server)
        .await
        .is_err()
    {
        admin_server.abort();
    }
    Ok(())
}

/// SERVING while a snapshot with fresh data is loaded and no shutdown started.
async fn report_health(
    health: Health,
    views: Arc<Views>,
    max_age_ms: i64,
    stopping: Arc<AtomicBool>,
    metrics: RedirectorMetrics,
    process: balancer_service::Process,
) {
    let mut last = None;
    let mut ready_announced = false;
    loop {
        if let Some(view) = views.load() {
            metrics
                .snapshot_version
                .set(i64::try_from(view.version).unwrap_or(i64::MAX));
            metrics
                .snapshot_age_seconds
                .set((now_ms() - view.published_at_ms) as f64 / 1000.0);
        }
        let fresh = views
            .load()
            .is_some_and(|v| now_ms() - v.newest_observation_ms() <= max_age_ms);
        let serving = fresh && !stopping.load(Ordering::Relaxed);
        if last != Some(serving) {
            if last.is_some() || serving {
                tracing::info!(serving, "health changed");
            }
            health.set(serving).await;
            if serving && !ready_announced {
                // systemd (Type=notify) counts the unit started from here.
                (process.ready)();
                ready_announced = true;
            }
            last = Some(serving);
        }
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Tells the other replicas this one is alive, and learns how many there are.
async fn heartbeat(
    store: RedisStore,
    id: String,
    reservations: Arc<Reservations>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        match store.heartbeat(&id, now_ms(), HEARTBEAT * 5).await {
            Ok(replicas) => reservations.set_replicas(replicas),
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed; keeping the last replica count")
            }
        }
    }
}

/// Picks up GeoIP files replaced on disk.
async fn watch_geoip(geo: Arc<GeoDb>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(GEOIP_CHECK);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        for error in geo.reload_if_changed() {
            tracing::warn!(%error, "GeoIP file changed but cannot be loaded; keeping the old one");
        }
    }
}

/// Formats an address for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "?".to_owned(), |a| a.to_string())
}
