//! Running a redirector: the snapshot source (Redis, or an in-process poller),
//! the player-facing server, the admin server, and a bounded shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use balancer_fleet::Fleet;
use balancer_geo::{GeoDb, RankPolicy};
use balancer_service::{Admin, AdminServer, Failure, Health, Process, Signal};
use balancer_store::{DEFAULT_OPERATION_TIMEOUT, Keys, MemoryStore, RedisStore};
use icecast_poller::control::PollerControl;
use icecast_poller::service::{Command, Poller};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::cli::Settings;
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
/// How long in-flight admin calls may take once the players are drained.
const ADMIN_GRACE: Duration = Duration::from_millis(500);
/// How often GeoIP files are checked for replacement.
const GEOIP_CHECK: Duration = Duration::from_secs(10);

/// Where the fleet picture comes from.
pub enum Source {
    /// A poller's snapshots in Redis.
    Redis(balancer_service::RedisUrl),
    /// An in-process poller reading this fleet file (standalone mode).
    Standalone(PathBuf, Fleet),
}

/// Runs as `settings` say, with the fleet picture from `source`, until
/// SIGTERM (or the signal channel closes), then shuts down within 10 s.
/// Players are served on one thread per socket in `listeners` (see
/// [`crate::server`]); everything else runs on the caller's runtime.
pub async fn run(
    settings: Settings,
    source: Source,
    process: Process,
    listeners: Vec<std::net::TcpListener>,
    admin: TcpListener,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<(), Failure> {
    let (geo, errors) = GeoDb::open(settings.geoip_city.clone(), settings.geoip_asn.clone());
    for error in errors {
        tracing::warn!(%error, "GeoIP database unavailable; ranking without it");
    }
    let geo = Arc::new(geo);
    let identity = balancer_service::process_identity();
    let views = Arc::new(Views::default());
    let (stop_tx, stop) = watch::channel(false);
    let timings = Timings {
        grace: settings.connect_grace,
        lease: settings.slot_lease,
        max_age: settings.max_data_age,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RedirectorMetrics::register(&mut registry);
    let mut poller_commands = None;
    let mut poller_control = None;
    let mut audience = None;
    let reservations = match source {
        Source::Redis(url) => {
            let store = RedisStore::new(url.as_str(), Keys::default(), DEFAULT_OPERATION_TIMEOUT)
                .map_err(|e| Failure::config(format!("--redis: {e}")))?;
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
            let (poller, status) =
                Poller::new(path, process.env, fleet, memory.clone(), identity.clone())
                    .map_err(Failure::config)?;
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

    let max_age_ms = i64::try_from(settings.max_data_age.as_millis()).unwrap_or(i64::MAX);
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
        trusted: TrustedProxies::new(settings.trusted_proxies),
        prefix: settings.prefix,
        metrics: metrics.clone(),
        retry_after: settings.retry_after,
        index: settings.index,
    });

    let admin = AdminServer::start(
        admin,
        Admin {
            control: Arc::new(control),
            token: settings.admin_token,
            metrics: Arc::new(registry),
            audience,
        },
    )
    .await?;
    let health = admin.health.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    tokio::spawn(report_health(
        health.clone(),
        views.clone(),
        max_age_ms,
        stopping.clone(),
        metrics.clone(),
        process,
    ));

    let (stop_http, http_stopped) = watch::channel(false);
    let grace = SHUTDOWN_BUDGET.saturating_sub(settings.drain_delay + Duration::from_secs(1));
    let threads = serve_on_threads(
        listeners,
        &app,
        &http_stopped,
        &ThreadOptions {
            grace,
            header_timeout: settings.header_timeout,
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
    tracing::info!(drain = ?settings.drain_delay, "shutting down: NOT_SERVING, then draining");
    stopping.store(true, Ordering::Relaxed);
    (process.stopping)();
    health.set(false).await;
    tokio::time::sleep(settings.drain_delay).await;
    let _ = stop_http.send(true);
    let _ = tokio::time::timeout(grace + Duration::from_millis(200), http).await;
    let _ = stop_tx.send(true);
    admin.stop(ADMIN_GRACE).await;
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
        match store
            .heartbeat(&id, now_ms(), balancer_store::REPLICA_ALIVE)
            .await
        {
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
