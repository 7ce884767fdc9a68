//! Running a poller: the admin server, the poll loop, signals, and a bounded
//! shutdown. The binary parses flags, loads the fleet and binds the admin
//! address, then hands over here (as the redirector's `service::run` does).

use std::sync::Arc;
use std::time::Duration;

use balancer_fleet::Fleet;
use balancer_service::{Admin, AdminServer, Failure, Process, Signal, process_identity};
use balancer_store::{DEFAULT_OPERATION_TIMEOUT, Keys, RedisStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::cli::Settings;
use crate::control::PollerControl;
use crate::metrics::PollerMetrics;
use crate::service::{Command, Poller};

/// How long the poller may take to stop (finish a cycle, release the lease).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long in-flight admin calls may take once the poller has stopped.
const ADMIN_GRACE: Duration = Duration::from_millis(500);

/// Runs as `settings` say, on the loaded `fleet`, serving the admin address
/// on `admin`, until SIGTERM (or the signal channel closes); then stops
/// polling, gives the lease up and stops the admin server.
pub async fn run(
    settings: Settings,
    fleet: Fleet,
    process: Process,
    admin: TcpListener,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<(), Failure> {
    let redis = settings
        .redis
        .ok_or_else(|| Failure::config("--redis URL is required"))?;
    tracing::info!(config = %settings.config.display(), summary = %fleet.summary(), "fleet loaded");
    let (geo, errors) = balancer_geo::GeoDb::open(settings.geoip_city, None);
    for error in errors {
        tracing::warn!(%error, "GeoIP database unavailable; listeners count as country unknown");
    }
    let store = RedisStore::new(redis.as_str(), Keys::default(), DEFAULT_OPERATION_TIMEOUT)
        .map_err(|e| Failure::config(format!("--redis {redis}: {e}")))?;
    let listener = admin;
    tracing::info!(admin = %listener.local_addr().map_or_else(|_| settings.admin.to_string(), |a| a.to_string()), redis = %redis, "admin gRPC listening");

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = PollerMetrics::register(&mut registry);
    let (poller, mut status) = Poller::new(
        settings.config,
        process.env,
        fleet,
        store.clone(),
        process_identity(),
    )
    .map_err(Failure::config)?;
    let poller = poller.with_metrics(metrics).with_geo(Arc::new(geo));
    let audience = poller.audience_feed();
    let (commands, command_rx) = mpsc::channel(16);
    let control = PollerControl::new(commands.clone(), status.clone(), store);

    let admin = AdminServer::start(
        listener,
        Admin {
            control: Arc::new(control),
            token: settings.admin_token,
            metrics: Arc::new(registry),
            audience: Some(audience),
        },
    )
    .await?;
    let health = admin.health.clone();

    // Started, whether it becomes the active poller or waits as a standby:
    // systemd (Type=notify) counts the unit started from here.
    (process.ready)();
    let (stop_poller, poller_stopped) = watch::channel(false);
    let poller = tokio::spawn(poller.run(command_rx, async move {
        let mut stopped = poller_stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    let follower_health = health.clone();
    let health_follower = tokio::spawn(async move {
        loop {
            let serving = status.borrow_and_update().serving();
            follower_health.set(serving).await;
            if status.changed().await.is_err() {
                break;
            }
        }
    });

    while let Some(signal) = signals.recv().await {
        match signal {
            Signal::Reload => {
                tracing::info!("SIGHUP: reloading the fleet config");
                let _ = commands.send(Command::Reload).await;
            }
            Signal::Terminate => break,
        }
    }
    tracing::info!("shutting down");
    (process.stopping)();
    // Probes see NOT_SERVING before anything stops.
    health_follower.abort();
    health.set(false).await;
    let _ = stop_poller.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, poller).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "the poller did not stop in time; exiting anyway");
    }
    admin.stop(ADMIN_GRACE).await;
    Ok(())
}
