//! `balancerctl`: operate a poller or redirector through its control API.

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
    match args.command {
        Cmd::Status => {
            let s = client
                .status(StatusRequest {})
                .await
                .map_err(failed("Status"))?
                .into_inner();
            println!("{s:#?}");
        }
        Cmd::Servers => {
            let s = client
                .list_servers(ListServersRequest {})
                .await
                .map_err(failed("ListServers"))?
                .into_inner();
            println!("{s:#?}");
        }
        Cmd::Drain { server } => {
            let r = client
                .drain(DrainRequest {
                    server: server.clone(),
                })
                .await
                .map_err(failed("Drain"))?
                .into_inner();
            println!(
                "{server}: {}",
                if r.changed {
                    "drained"
                } else {
                    "already drained"
                }
            );
        }
        Cmd::Undrain { server } => {
            let r = client
                .undrain(UndrainRequest {
                    server: server.clone(),
                })
                .await
                .map_err(failed("Undrain"))?
                .into_inner();
            println!(
                "{server}: {}",
                if r.changed {
                    "undrained"
                } else {
                    "was not drained"
                }
            );
        }
        Cmd::Poll => {
            let r = client
                .poll_now(PollNowRequest {})
                .await
                .map_err(failed("PollNow"))?
                .into_inner();
            println!("polled: snapshot {}", r.snapshot_version);
        }
        Cmd::Reload => {
            let r = client
                .reload(ReloadRequest::default())
                .await
                .map_err(failed("Reload"))?
                .into_inner();
            for line in r.reloaded {
                println!("{line}");
            }
        }
        Cmd::Explain { stream, ip } => {
            let r = client
                .explain(ExplainRequest {
                    stream,
                    client_ip: ip,
                })
                .await
                .map_err(failed("Explain"))?
                .into_inner();
            println!("{r:#?}");
        }
    }
    Ok(())
}
