//! `icecast-poller`: parse flags, set up logging, load the fleet, run.

use std::process::ExitCode;

use balancer_service::{EXIT_CONFIG, EXIT_SOFTWARE, init_logging};
use clap::Parser;
use icecast_poller::cli::{Args, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let command = match args.command() {
        Ok(command) => command,
        Err(message) => return fail(EXIT_CONFIG, &message),
    };
    match command {
        Command::CheckConfig { fleet } => {
            match balancer_fleet::load(&fleet, &balancer_fleet::process_env) {
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
            let loaded = match balancer_fleet::load(&fleet, &balancer_fleet::process_env) {
                Ok(loaded) => loaded,
                Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
            };
            tracing::info!(config = %fleet.display(), summary = %loaded.summary(), "fleet loaded");
            tracing::info!(redis = %redacted(&redis), %admin, "would publish");
            fail(
                EXIT_SOFTWARE,
                "polling is not implemented yet; use --check-config",
            )
        }
    }
}

/// The Redis URL without its password, for logs.
fn redacted(url: &url::Url) -> url::Url {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url
}

fn fail(code: i32, message: &str) -> ExitCode {
    eprintln!("icecast-poller: {message}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
