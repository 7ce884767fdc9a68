//! `icecast-poller`: parse flags, set up logging, load the fleet, bind the
//! admin address, then poll and publish until SIGTERM ([`icecast_poller::run`]).

use std::process::ExitCode;

use balancer_service::{Failure, Process, init_logging, signals};
use clap::Parser;
use icecast_poller::cli::Args;
use tokio::net::TcpListener;

const BINARY: &str = "icecast-poller";

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
    let fleet = balancer_fleet::load(&settings.config, &balancer_service::process_env)
        .map_err(|e| Failure::config(e.to_string()))?;
    if settings.check_only {
        println!("{}: ok: {}", settings.config.display(), fleet.summary());
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::unavailable(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let admin = TcpListener::bind(settings.admin).await.map_err(|e| {
            Failure::unavailable(format!("cannot listen on --admin {}: {e}", settings.admin))
        })?;
        let signals = signals()
            .map_err(|e| Failure::unavailable(format!("cannot listen for signals: {e}")))?;
        icecast_poller::run::run(settings, fleet, Process::real(), admin, signals).await
    })
}
