//! `icecast-redirector`: parse flags, set up logging, check the config, bind, run.

use std::process::ExitCode;

use balancer_service::{EXIT_CONFIG, EXIT_SOFTWARE, EXIT_UNAVAILABLE, init_logging, signals};
use clap::Parser;
use icecast_redirector::cli::{Args, Settings, Source};
use icecast_redirector::client_ip::TrustedProxies;
use icecast_redirector::server;
use icecast_redirector::service::{self, Options};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.common.log_format);
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(message) => return fail(EXIT_CONFIG, &message),
    };
    let (summary, source) = match load(&settings) {
        Ok(loaded) => loaded,
        Err(message) => return fail(EXIT_CONFIG, &message),
    };
    if settings.check_only {
        println!("{summary}");
        return ExitCode::SUCCESS;
    }
    // The control plane (admin, snapshots, heartbeats, the standalone poller)
    // is light; players get threads of their own (`--threads`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(EXIT_UNAVAILABLE, &format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        tracing::info!(%summary, "configuration valid");
        let Some(listen) = settings.listen else {
            return fail(EXIT_CONFIG, "--listen ADDR is required");
        };
        let listeners = match server::bind_player_sockets(listen, settings.threads) {
            Ok(listeners) => listeners,
            Err(e) => {
                return fail(
                    EXIT_UNAVAILABLE,
                    &format!("cannot listen on --listen {listen}: {e}"),
                );
            }
        };
        let admin = match TcpListener::bind(settings.admin).await {
            Ok(admin) => admin,
            Err(e) => {
                return fail(
                    EXIT_UNAVAILABLE,
                    &format!("cannot listen on --admin {}: {e}", settings.admin),
                );
            }
        };
        tracing::info!(
            listen = %service::describe(listeners.first().and_then(|l| l.local_addr().ok())),
            threads = listeners.len(),
            admin = %service::describe(admin.local_addr().ok()),
            "listening"
        );
        let signals = match signals() {
            Ok(signals) => signals,
            Err(e) => return fail(EXIT_UNAVAILABLE, &format!("cannot listen for signals: {e}")),
        };
        let options = Options {
            source,
            process: balancer_service::Process::real(),
            geoip_city: settings.geoip_city.clone(),
            geoip_asn: settings.geoip_asn.clone(),
            trusted: TrustedProxies::new(settings.trusted_proxies.clone()),
            prefix: settings.prefix.clone(),
            max_data_age: settings.max_data_age,
            connect_grace: settings.connect_grace,
            slot_lease: settings.slot_lease,
            retry_after: settings.retry_after,
            index: settings.index,
            drain_delay: settings.drain_delay,
            header_timeout: settings.header_timeout,
            admin_token: settings.admin_token.clone(),
        };
        match service::run(options, listeners, admin, signals).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(EXIT_SOFTWARE, &message),
        }
    })
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

fn fail(code: i32, message: &str) -> ExitCode {
    eprintln!("icecast-redirector: {message}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
