//! The `icecast-poller` command line. Every flag can also be set through the
//! environment variable named in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use balancer_service::{CommonFlags, RedisUrl, parse_redis_url};
use clap::Parser;

/// Default admin address: health, control, metrics and the console, loopback only.
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

    /// Address for gRPC health and control, /metrics, /healthz and the operator
    /// console (/console). Keep it on loopback unless a token protects it.
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

/// The resolved command line: what the poller runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The fleet file.
    pub config: PathBuf,
    /// Validate the fleet file and exit instead of running.
    pub check_only: bool,
    /// Where to publish; always set unless only checking.
    pub redis: Option<RedisUrl>,
    /// Where to serve health, control, metrics and the console.
    pub admin: SocketAddr,
    /// Bearer token for the admin address.
    pub admin_token: Option<String>,
    /// City or Country database for the audience figures.
    pub geoip_city: Option<PathBuf>,
}

impl Args {
    /// Resolves the flags, or says which one is missing or wrong.
    pub fn settings(&self) -> Result<Settings, String> {
        let check_only = self.check_config.is_some();
        let config = match &self.check_config {
            Some(check) => check.clone().or_else(|| self.config.clone()).ok_or(
                "--check-config needs a fleet file: --check-config FLEET.toml or --config FLEET.toml",
            )?,
            None => self
                .config
                .clone()
                .ok_or("--config FLEET.toml is required")?,
        };
        if !check_only && self.redis.is_none() {
            return Err("--redis URL is required".into());
        }
        balancer_service::check_admin_exposure(
            self.admin,
            self.common.admin_token.as_deref(),
            self.common.admin_insecure,
        )
        .map_err(|e| e.to_string())?;
        Ok(Settings {
            config,
            check_only,
            redis: self.redis.clone(),
            admin: self.admin,
            admin_token: self.common.admin_token.clone(),
            geoip_city: self.geoip_city.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let args =
            Args::try_parse_from(std::iter::once("icecast-poller").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.settings()
    }

    #[test]
    fn check_config_takes_the_file_or_falls_back_to_config() {
        let checked = settings(&["--check-config", "f.toml"]).unwrap();
        assert_eq!(
            (checked.config, checked.check_only),
            ("f.toml".into(), true)
        );
        let fallback = settings(&["--check-config", "--config", "g.toml"]).unwrap();
        assert_eq!(fallback.config, PathBuf::from("g.toml"));
        assert!(
            settings(&["--check-config"])
                .unwrap_err()
                .contains("needs a fleet file")
        );
    }

    #[test]
    fn run_needs_config_and_redis() {
        assert_eq!(
            settings(&["--config", "f.toml", "--redis", "redis://127.0.0.1/"]),
            Ok(Settings {
                config: "f.toml".into(),
                check_only: false,
                redis: Some(parse_redis_url("redis://127.0.0.1/").unwrap()),
                admin: DEFAULT_ADMIN.parse().unwrap(),
                admin_token: None,
                geoip_city: None,
            })
        );
        assert!(
            settings(&["--config", "f.toml"])
                .unwrap_err()
                .contains("--redis")
        );
        assert!(
            settings(&["--redis", "redis://x/"])
                .unwrap_err()
                .contains("--config")
        );
        assert!(
            settings(&["--config", "f", "--redis", "http://x/"])
                .unwrap_err()
                .contains("scheme")
        );
        assert!(settings(&["--config", "f", "--redis", "redis://x/", "--admin", "nope"]).is_err());
    }

    #[test]
    fn an_exposed_admin_address_needs_a_token() {
        let exposed = [
            "--config",
            "f",
            "--redis",
            "redis://x/",
            "--admin",
            "0.0.0.0:7070",
        ];
        assert!(settings(&exposed).unwrap_err().contains("--admin-token"));
    }
}
