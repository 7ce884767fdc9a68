//! `icecast-poller`: parse flags, set up logging, load the fleet, then poll and
//! publish until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use balancer_fleet::Fleet;
use balancer_service::RedisUrl;
use balancer_service::{
    Admin, EXIT_CONFIG, EXIT_UNAVAILABLE, Signal, check_admin_exposure, init_logging,
    process_identity, serve_admin, signals,
};
use balancer_store::{DEFAULT_OPERATION_TIMEOUT, Keys, RedisStore};
use clap::Parser;
use icecast_poller::cli::{Args, Command};
use icecast_poller::control::PollerControl;
use icecast_poller::metrics::PollerMetrics;
use icecast_poller::service::{self, Poller};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// How long the poller may take to stop (finish a cycle, release the lease).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long in-flight admin calls may take once the poller has stopped.
const ADMIN_GRACE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.common.log_format);
    let command = match args.command() {
        Ok(command) => command,
        Err(message) => return fail(EXIT_CONFIG, &message),
    };
    match command {
        Command::CheckConfig { fleet } => {
            match balancer_fleet::load(&fleet, &balancer_service::process_env) {
                Ok(loaded) => {
                    println!("{}: ok: {}", fleet.display(), loaded.summary());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_CONFIG, &e.to_string()),
            }
        }
        Command::Run {
            fleet,
            redis,
            admin,
        } => {
            let loaded = match balancer_fleet::load(&fleet, &balancer_service::process_env) {
                Ok(loaded) => loaded,
                Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => return fail(EXIT_UNAVAILABLE, &format!("cannot start the runtime: {e}")),
            };
            if let Err(e) = check_admin_exposure(
                admin,
                args.common.admin_token.as_deref(),
                args.common.admin_insecure,
            ) {
                return fail(EXIT_CONFIG, &e.to_string());
            }
            runtime.block_on(run(
                fleet,
                loaded,
                redis,
                admin,
                args.common.admin_token.clone(),
                args.geoip_city.clone(),
            ))
        }
    }
}

async fn run(
    fleet_path: PathBuf,
    fleet: Fleet,
    redis: RedisUrl,
    admin: SocketAddr,
    admin_token: Option<String>,
    geoip_city: Option<PathBuf>,
) -> ExitCode {
    tracing::info!(config = %fleet_path.display(), summary = %fleet.summary(), "fleet loaded");
    let (geo, errors) = balancer_geo::GeoDb::open(geoip_city, None);
    for error in errors {
        tracing::warn!(%error, "GeoIP database unavailable; listeners count as country unknown");
    }
    let store = match RedisStore::new(redis.as_str(), Keys::default(), DEFAULT_OPERATION_TIMEOUT) {
        Ok(store) => store,
        Err(e) => return fail(EXIT_CONFIG, &format!("--redis {redis}: {e}")),
    };
    let mut signals = match signals() {
        Ok(signals) => signals,
        Err(e) => return fail(EXIT_UNAVAILABLE, &format!("cannot listen for signals: {e}")),
    };
    let listener = match TcpListener::bind(admin).await {
        Ok(listener) => listener,
        Err(e) => {
            return fail(
                EXIT_UNAVAILABLE,
                &format!("cannot listen on --admin {admin}: {e}"),
            );
        }
    };
    tracing::info!(admin = %listener.local_addr().unwrap_or(admin), redis = %redis, "admin gRPC listening");

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = PollerMetrics::register(&mut registry);
    let (poller, mut status) = match Poller::new(
        fleet_path,
        balancer_service::process_env,
        fleet,
        store.clone(),
        process_identity(),
    ) {
        Ok(built) => built,
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    let poller = poller
        .with_metrics(metrics)
        .with_geo(std::sync::Arc::new(geo));
    let audience = poller.audience_feed();
    let (commands, command_rx) = mpsc::channel(16);
    let control = PollerControl::new(commands.clone(), status.clone(), store);

    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let (health_tx, health_rx) = oneshot::channel();
    let admin_server = tokio::spawn(serve_admin(
        listener,
        |health| {
            let _ = health_tx.send(health);
        },
        Admin {
            control: std::sync::Arc::new(control),
            token: admin_token,
            metrics: std::sync::Arc::new(registry),
            audience: Some(audience),
        },
        async {
            let _ = admin_stopped.await;
        },
    ));
    let Ok(health) = health_rx.await else {
        return fail(EXIT_UNAVAILABLE, "the admin server did not start");
    };

    // Started, whether it becomes the active poller or waits as a standby:
    // systemd (Type=notify) counts the unit started from here.
    balancer_service::notify_ready();
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
                let _ = commands.send(service::Command::Reload).await;
            }
            Signal::Terminate => break,
        }
    }
    tracing::info!("shutting down");
    balancer_service::notify_stopping();
    // Probes see NOT_SERVING before anything stops.
    health_follower.abort();
    health.set(false).await;
    let _ = stop_poller.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, poller).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "the poller did not stop in time; exiting anyway");
    }
    // Open health Watch streams never end by themselves: give calls a moment, then stop.
    let _ = stop_admin.send(());
    let mut admin_server = admin_server;
    if tokio::time::timeout(ADMIN_GRACE, &mut admin_server)
        .await
        .is_err()
    {
        admin_server.abort();
    }
    ExitCode::SUCCESS
}

fn fail(code: i32, message: &str) -> ExitCode {
    eprintln!("icecast-poller: {message}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
