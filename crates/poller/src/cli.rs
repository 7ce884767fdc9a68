//! The `icecast-poller` command line. Every flag can also be set through the
//! environment variable named in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use balancer_service::{CommonFlags, RedisUrl, parse_redis_url};
use clap::Parser;

/// Default admin address: gRPC health and control, loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7070";

/// Polls the Icecast servers of a fleet and publishes their free listener
/// slots to Redis, where the redirectors read them.
#[derive(Debug, Clone, Parser)]
#[command(name = "icecast-poller", version)]
pub struct Args {
    /// The fleet config: servers, streams and mounts (TOML).
    #[arg(long, env = "ICB_CONFIG", value_name = "FLEET.toml")]
    pub config: Option<PathBuf>,

    /// Redis to publish snapshots to, e.g. redis://127.0.0.1:6379/, or through
    /// Sentinel: redis+sentinel://HOST:26379,HOST2:26379/MASTER[/DB].
    #[arg(long, env = "ICB_REDIS", value_name = "URL", value_parser = parse_redis_url)]
    pub redis: Option<RedisUrl>,

    /// Address for gRPC health and control. Keep it on loopback unless a token protects it.
    #[arg(long, env = "ICB_ADMIN", value_name = "ADDR", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// A MaxMind City or Country database (.mmdb) to place listeners by
    /// country in the audience figures; without one they count as unknown.
    /// Re-read on reload.
    #[arg(long, env = "ICB_GEOIP_CITY", value_name = "PATH")]
    pub geoip_city: Option<PathBuf>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonFlags,

    /// Validate the fleet config (the file given here, else --config), print a
    /// one-line summary and exit: 0 when valid, 64 when not.
    #[arg(long, env = "ICB_CHECK_CONFIG", value_name = "FLEET.toml", num_args = 0..=1)]
    pub check_config: Option<Option<PathBuf>>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Validate the fleet file and exit.
    CheckConfig {
        /// The fleet file.
        fleet: PathBuf,
    },
    /// Poll and publish.
    Run {
        /// The fleet file.
        fleet: PathBuf,
        /// Where to publish.
        redis: RedisUrl,
        /// Where to serve health and control.
        admin: SocketAddr,
    },
}

impl Args {
    /// Resolves the flags into one command, or says which flag is missing.
    pub fn command(&self) -> Result<Command, String> {
        if let Some(check) = &self.check_config {
            let fleet = check.clone().or_else(|| self.config.clone()).ok_or(
                "--check-config needs a fleet file: --check-config FLEET.toml or --config FLEET.toml",
            )?;
            return Ok(Command::CheckConfig { fleet });
        }
        let fleet = self
            .config
            .clone()
            .ok_or("--config FLEET.toml is required")?;
        let redis = self.redis.clone().ok_or("--redis URL is required")?;
        Ok(Command::Run {
            fleet,
            redis,
            admin: self.admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&str]) -> Result<Command, String> {
        let args =
            Args::try_parse_from(std::iter::once("icecast-poller").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.command()
    }

    #[test]
    fn check_config_takes_the_file_or_falls_back_to_config() {
        assert_eq!(
            command(&["--check-config", "f.toml"]),
            Ok(Command::CheckConfig {
                fleet: "f.toml".into()
            })
        );
        assert_eq!(
            command(&["--check-config", "--config", "g.toml"]),
            Ok(Command::CheckConfig {
                fleet: "g.toml".into()
            })
        );
        assert!(
            command(&["--check-config"])
                .unwrap_err()
                .contains("needs a fleet file")
        );
    }

    #[test]
    fn run_needs_config_and_redis() {
        assert_eq!(
            command(&["--config", "f.toml", "--redis", "redis://127.0.0.1/"]),
            Ok(Command::Run {
                fleet: "f.toml".into(),
                redis: parse_redis_url("redis://127.0.0.1/").unwrap(),
                admin: DEFAULT_ADMIN.parse().unwrap(),
            })
        );
        assert!(
            command(&["--config", "f.toml"])
                .unwrap_err()
                .contains("--redis")
        );
        assert!(
            command(&["--redis", "redis://x/"])
                .unwrap_err()
                .contains("--config")
        );
        assert!(
            command(&["--config", "f", "--redis", "http://x/"])
                .unwrap_err()
                .contains("scheme")
        );
        assert!(command(&["--config", "f", "--redis", "redis://x/", "--admin", "nope"]).is_err());
    }
}
