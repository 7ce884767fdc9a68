//! `balancerctl`: operate a poller or redirector through its control API.

mod render;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use balancer_proto::control::v1::control_client::ControlClient;
use balancer_proto::control::v1::{
    DrainRequest, ExplainRequest, ListServersRequest, PollNowRequest, ReloadRequest, StatusRequest,
    UndrainRequest,
};
use balancer_service::EXIT_UNAVAILABLE;
use clap::{Parser, Subcommand};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Operate an icecast-balancer poller or redirector through its admin address.
#[derive(Debug, Parser)]
#[command(name = "balancerctl", version)]
struct Args {
    /// Admin address of the service (the poller's by default).
    #[arg(
        long,
        env = "ICB_ADMIN",
        value_name = "ADDR",
        default_value = "127.0.0.1:7070"
    )]
    admin: SocketAddr,

    /// Bearer token, when the admin address is exposed beyond loopback.
    #[arg(long, env = "ICB_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true, env = "ICB_JSON")]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Role, version, uptime, snapshot version and age.
    Status,
    /// Servers and mounts with state, listeners and free slots.
    Servers,
    /// Send no new players to a server.
    Drain {
        /// Server name from the fleet config.
        server: String,
    },
    /// Undo a drain.
    Undrain {
        /// Server name from the fleet config.
        server: String,
    },
    /// Poll every server now.
    Poll,
    /// Re-read the fleet config and GeoIP databases.
    Reload,
    /// Where a client would be sent for a stream, and why other mounts were left out.
    Explain {
        /// Stream name.
        stream: String,
        /// Client IP address.
        ip: String,
        /// The scheme the player used: http, or https (arrived through a TLS terminator).
        #[arg(long, default_value = "http", value_parser = ["http", "https"])]
        scheme: String,
    },
    /// Print a shell completion script, e.g. `balancerctl completions bash > /etc/bash_completion.d/balancerctl`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balancerctl: {e:#}");
            ExitCode::from(u8::try_from(EXIT_UNAVAILABLE).unwrap_or(1))
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Cmd::Completions { shell } = args.command {
        let mut command = <Args as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "balancerctl", &mut std::io::stdout());
        return Ok(());
    }
    let as_json = args.json;
    let channel = Channel::from_shared(format!("http://{}", args.admin))
        .context("admin address")?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", args.admin))?;
    let token = args
        .token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .context("the token holds characters a header cannot carry")?;
    let mut client =
        ControlClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            if let Some(token) = &token {
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
            }
            Ok(request)
        });
    let admin = args.admin;
    let failed = move |call: &'static str| {
        move |status: tonic::Status| anyhow::anyhow!("{call} at {admin}: {}", status.message())
    };
    let text = match args.command {
        Cmd::Status => {
            let s = client
                .status(StatusRequest {})
                .await
                .map_err(failed("Status"))?;
            render::status(s.get_ref(), as_json)
        }
        Cmd::Servers => {
            let s = client
                .list_servers(ListServersRequest {})
                .await
                .map_err(failed("ListServers"))?;
            render::servers(s.get_ref(), as_json)
        }
        Cmd::Drain { server } => {
            let request = DrainRequest {
                server: server.clone(),
            };
            let r = client
                .drain(request)
                .await
                .map_err(failed("Drain"))?
                .into_inner();
            let what = if r.changed {
                "drained"
            } else {
                "already drained"
            };
            changed(as_json, &server, r.changed, what)
        }
        Cmd::Undrain { server } => {
            let request = UndrainRequest {
                server: server.clone(),
            };
            let r = client
                .undrain(request)
                .await
                .map_err(failed("Undrain"))?
                .into_inner();
            let what = if r.changed {
                "undrained"
            } else {
                "was not drained"
            };
            changed(as_json, &server, r.changed, what)
        }
        Cmd::Poll => {
            let r = client
                .poll_now(PollNowRequest {})
                .await
                .map_err(failed("PollNow"))?
                .into_inner();
            if as_json {
                serde_json::json!({ "snapshot_version": r.snapshot_version }).to_string()
            } else {
                format!("polled: snapshot v{}", r.snapshot_version)
            }
        }
        Cmd::Reload => {
            let r = client
                .reload(ReloadRequest::default())
                .await
                .map_err(failed("Reload"))?
                .into_inner();
            if as_json {
                serde_json::json!({ "reloaded": r.reloaded }).to_string()
            } else {
                r.reloaded.join("\n")
            }
        }
        Cmd::Explain { stream, ip, scheme } => {
            let request = ExplainRequest {
                stream,
                client_ip: ip,
                scheme,
            };
            let r = client.explain(request).await.map_err(failed("Explain"))?;
            render::explain(r.get_ref(), as_json)
        }
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    };
    print!("{}", with_newline(text));
    Ok(())
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn changed(as_json: bool, server: &str, changed: bool, what: &str) -> String {
    if as_json {
        serde_json::json!({ "server": server, "changed": changed }).to_string()
    } else {
        format!("{server}: {what}")
    }
}
