//! `icecast-redirector`: parse flags, set up logging, load the config, bind
//! the player and admin addresses, then answer players until SIGTERM
//! ([`icecast_redirector::service::run`]).

use std::process::ExitCode;

use balancer_service::{Failure, Process, init_logging, signals};
use clap::Parser;
use icecast_redirector::cli::{Args, Settings, Source};
use icecast_redirector::server;
use icecast_redirector::service;
use tokio::net::TcpListener;

const BINARY: &str = "icecast-redirector";

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.common.log_format);
    match start(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(BINARY),
    }
}

fn start(args: &Args) -> Result<(), Failure> {
    let settings = args.settings().map_err(Failure::config)?;
    let (summary, source) = load(&settings).map_err(Failure::config)?;
    if settings.check_only {
        println!("{summary}");
        return Ok(());
    }
    // The control plane (admin, snapshots, heartbeats, the standalone poller)
    // is light; players get threads of their own (`--threads`), and the
    // control plane's threads give way to them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(give_way_to_players)
        .enable_all()
        .build()
        .map_err(|e| Failure::unavailable(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        tracing::info!(%summary, "configuration valid");
        let listen = settings
            .listen
            .ok_or_else(|| Failure::config("--listen ADDR is required"))?;
        let listeners = server::bind_player_sockets(listen, settings.threads).map_err(|e| {
            Failure::unavailable(format!("cannot listen on --listen {listen}: {e}"))
        })?;
        let admin = TcpListener::bind(settings.admin).await.map_err(|e| {
            Failure::unavailable(format!("cannot listen on --admin {}: {e}", settings.admin))
        })?;
        tracing::info!(
            listen = %service::describe(listeners.first().and_then(|l| l.local_addr().ok())),
            threads = listeners.len(),
            admin = %service::describe(admin.local_addr().ok()),
            "listening"
        );
        let signals = signals()
            .map_err(|e| Failure::unavailable(format!("cannot listen for signals: {e}")))?;
        service::run(settings, source, Process::real(), listeners, admin, signals).await
    })
}

/// How much lower than the player threads the control plane's threads run
/// (a nice value: each step is about 1.25x less CPU when the core is contended).
const CONTROL_PLANE_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's priority, so that a player thread woken on a
/// core where the control plane is busy (preparing a snapshot's view takes
/// about 1 ms at a time) gets the core at once rather than at the end of the
/// part. Under contention the control plane still gets about a tenth of the
/// core, far more than it uses. Player threads are started from the main
/// thread and keep its priority.
fn give_way_to_players() {
    // On Linux the nice value belongs to a thread, and `who == 0` names the
    // calling one. Lowering it needs no privilege; failing leaves it as it was.
    // SAFETY: setpriority only reads its arguments.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, CONTROL_PLANE_NICENESS) };
}

/// Loads what the settings point at and describes it in one line.
fn load(settings: &Settings) -> Result<(String, service::Source), String> {
    let (description, source) = match &settings.source {
        Source::Redis(url) => ("redis mode".to_owned(), service::Source::Redis(url.clone())),
        Source::Standalone(path) => {
            let fleet = balancer_fleet::load(path, &balancer_service::process_env)
                .map_err(|e| e.to_string())?;
            let description = format!("standalone: {}: ok: {}", path.display(), fleet.summary());
            (
                description,
                service::Source::Standalone(path.clone(), fleet),
            )
        }
    };
    let listen = settings
        .listen
        .map_or_else(|| "no --listen".to_owned(), |a| format!("listen {a}"));
    let geoip = if settings.geoip_city.is_some() {
        "geoip on"
    } else {
        "geoip off"
    };
    Ok((
        format!(
            "{description}; {listen}; admin {}; {} trusted proxies; {geoip}",
            settings.admin,
            settings.trusted_proxies.len()
        ),
        source,
    ))
}
