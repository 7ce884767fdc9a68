//! `icecast-redirector`: parse flags, set up logging, check the config, run.

use std::process::ExitCode;

use balancer_service::{EXIT_CONFIG, EXIT_SOFTWARE, init_logging};
use clap::Parser;
use icecast_redirector::cli::{Args, Settings, Source};

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(message) => return fail(EXIT_CONFIG, &message),
    };
    let summary = match summarize(&settings) {
        Ok(summary) => summary,
        Err(message) => return fail(EXIT_CONFIG, &message),
    };
    if settings.check_only {
        println!("{summary}");
        return ExitCode::SUCCESS;
    }
    tracing::info!(%summary, "configuration valid");
    fail(
        EXIT_SOFTWARE,
        "serving players is not implemented yet; use --check-config",
    )
}

/// Loads what the settings point at and describes it in one line.
fn summarize(settings: &Settings) -> Result<String, String> {
    let source = match &settings.source {
        Source::Redis(_) => "redis mode".to_owned(),
        Source::Standalone(path) => {
            let fleet = balancer_fleet::load(path, &balancer_fleet::process_env)
                .map_err(|e| e.to_string())?;
            format!("standalone: {}: ok: {}", path.display(), fleet.summary())
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
    Ok(format!(
        "{source}; {listen}; admin {}; {} trusted proxies; {geoip}",
        settings.admin,
        settings.trusted_proxies.len()
    ))
}

fn fail(code: i32, message: &str) -> ExitCode {
    eprintln!("icecast-redirector: {message}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
