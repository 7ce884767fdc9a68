//! The `icecast-redirector` command line. Every flag can also be set through the
//! environment variable named in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use balancer_service::{CommonFlags, RedisUrl, parse_redis_url, parse_trusted_proxy};
use clap::Parser;
use ipnet::IpNet;

/// Default admin address: health, control, metrics and the console, loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7071";

/// Sends each player to the nearest Icecast mount with a free slot (HTTP 302).
///
/// Either follows a poller through Redis (--redis), or polls the fleet itself
/// without Redis (--fleet, standalone mode for small stations).
#[derive(Debug, Clone, Parser)]
#[command(name = "icecast-redirector", version)]
pub struct Args {
    /// Redis the poller publishes to, e.g. redis://127.0.0.1:6379/, or through
    /// Sentinel: redis+sentinel://HOST:26379,HOST2:26379/MASTER[/DB].
    #[arg(long, env = "ICB_REDIS", value_name = "URL", value_parser = parse_redis_url, conflicts_with = "fleet")]
    pub redis: Option<RedisUrl>,

    /// Standalone mode: poll the servers of this fleet config in-process, no Redis.
    #[arg(long, env = "ICB_FLEET", value_name = "FLEET.toml")]
    pub fleet: Option<PathBuf>,

    /// Address players connect to, e.g. 0.0.0.0:8000 or [::]:8000.
    #[arg(long, env = "ICB_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Address for gRPC health and control, /metrics, /healthz and the operator
    /// console (/console). Keep it on loopback unless a token protects it.
    #[arg(long, env = "ICB_ADMIN", value_name = "ADDR", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// MaxMind City or Country database (.mmdb) to place players; without it, no geo ranking.
    #[arg(long, env = "ICB_GEOIP_CITY", value_name = "PATH")]
    pub geoip_city: Option<PathBuf>,

    /// MaxMind ASN database (.mmdb), to prefer servers in the player's network.
    #[arg(long, env = "ICB_GEOIP_ASN", value_name = "PATH")]
    pub geoip_asn: Option<PathBuf>,

    /// A proxy whose X-Forwarded-For / Forwarded headers are believed (CIDR or address).
    /// Repeat the flag, or separate with commas in the environment variable.
    #[arg(
        long = "trusted-proxy",
        env = "ICB_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_trusted_proxy
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// URL prefix of django-icecast-balancer's stream URLs, so `/icecast_balancer/<stream>/` keeps working.
    #[arg(
        long,
        env = "ICB_PREFIX",
        value_name = "PATH",
        default_value = "/icecast_balancer"
    )]
    pub prefix: String,

    /// Servers whose data is older than this get no new players (the poller or Redis may be gone).
    #[arg(long, env = "ICB_MAX_DATA_AGE", value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub max_data_age: Duration,

    /// How long after a redirect a player may take to connect (at most 10s);
    /// its slot stays reserved until a poll after that has counted it.
    #[arg(long, env = "ICB_CONNECT_GRACE", value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub connect_grace: Duration,

    /// Seconds a player is asked to wait before retrying when nothing is free
    /// (the 503's `Retry-After`), drawn at random from MIN-MAX for each
    /// answer, so a crowd that was refused does not come back as one crowd.
    #[arg(long, env = "ICB_RETRY_AFTER", value_name = "MIN-MAX", default_value = "5-15", value_parser = parse_retry_after)]
    pub retry_after: RetryAfter,

    /// The public stream index at `/` and `/streams.json` (also at
    /// `--prefix`/): `on`, `listeners` (with each stream's listeners across
    /// all relays), or `off` (both answer 404).
    #[arg(long, env = "ICB_INDEX", value_name = "MODE", default_value = "on")]
    pub index: crate::index::IndexMode,

    /// Threads answering players, each with its own socket on the player port
    /// (`SO_REUSEPORT`), so a connection stays on one thread. Default: the
    /// cores this process may run on.
    #[arg(long, env = "ICB_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// How long a replica may hand out the slots it leased from Redis without
    /// asking again. Longer rides out longer Redis outages; shorter frees
    /// handed-out slots for reuse sooner (a lease counts until a poll
    /// `--connect-grace` after its end).
    #[arg(long, env = "ICB_SLOT_LEASE", value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slot_lease: Duration,

    /// Close a connection whose request head is still arriving after this, and
    /// idle keep-alive connections after it (at most 10s).
    #[arg(long, env = "ICB_HEADER_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// On SIGTERM, keep answering this long after health turns NOT_SERVING, so
    /// load balancers stop sending players first.
    #[arg(long, env = "ICB_DRAIN_DELAY", value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonFlags,

    /// Validate the flags and the fleet config (the file given here, else --fleet),
    /// print a one-line summary and exit: 0 when valid, 64 when not.
    #[arg(long, env = "ICB_CHECK_CONFIG", value_name = "FLEET.toml", num_args = 0..=1)]
    pub check_config: Option<Option<PathBuf>>,
}

/// Where the redirector gets its picture of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Snapshots published by a poller in Redis.
    Redis(RedisUrl),
    /// Its own in-process poller, reading this fleet file.
    Standalone(PathBuf),
}

/// The resolved command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the fleet picture comes from.
    pub source: Source,
    /// Player-facing address; always set unless only checking.
    pub listen: Option<SocketAddr>,
    /// Admin address.
    pub admin: SocketAddr,
    /// City/Country database.
    pub geoip_city: Option<PathBuf>,
    /// ASN database.
    pub geoip_asn: Option<PathBuf>,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Validate and exit instead of serving.
    pub check_only: bool,
    /// django-icecast-balancer's URL prefix.
    pub prefix: String,
    /// Staleness limit for server data.
    pub max_data_age: Duration,
    /// Time a player may take to connect after a redirect.
    pub connect_grace: Duration,
    /// How long leased slots may be handed out.
    pub slot_lease: Duration,
    /// Threads answering players.
    pub threads: usize,
    /// The range `Retry-After` is drawn from.
    pub retry_after: RetryAfter,
    /// What the public stream index shows.
    pub index: crate::index::IndexMode,
    /// Time to keep answering after health turns NOT_SERVING on SIGTERM.
    pub drain_delay: Duration,
    /// Time allowed for a request head, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Bearer token for the control API.
    pub admin_token: Option<String>,
}

impl Args {
    /// Resolves the flags, or says which one is missing or wrong.
    pub fn settings(&self) -> Result<Settings, String> {
        let check_only = self.check_config.is_some();
        let fleet = self
            .check_config
            .clone()
            .flatten()
            .or_else(|| self.fleet.clone());
        let source = match (&self.redis, fleet) {
            (Some(_), Some(_)) => return Err("give --redis or --fleet, not both".into()),
            (Some(url), None) => Source::Redis(url.clone()),
            (None, Some(path)) => Source::Standalone(path),
            (None, None) => {
                return Err(
                    "give --redis URL (follow a poller) or --fleet FLEET.toml (standalone)".into(),
                );
            }
        };
        if self.listen.is_none() && !check_only {
            return Err("--listen ADDR is required".into());
        }
        for (flag, path) in [
            ("--geoip-city", &self.geoip_city),
            ("--geoip-asn", &self.geoip_asn),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
                return Err(format!("{flag} {}: no such file", path.display()));
            }
        }
        if !self.prefix.is_empty() && (!self.prefix.starts_with('/') || self.prefix.ends_with('/'))
        {
            return Err(format!(
                "--prefix {:?} must start with '/' and not end with one",
                self.prefix
            ));
        }
        if self.header_timeout.is_zero() || self.header_timeout > Duration::from_secs(10) {
            return Err("--header-timeout must be between 1ms and 10s".into());
        }
        balancer_service::check_admin_exposure(
            self.admin,
            self.common.admin_token.as_deref(),
            self.common.admin_insecure,
        )
        .map_err(|e| e.to_string())?;
        if self.threads.is_some_and(|n| n == 0 || n > 256) {
            return Err("--threads must be between 1 and 256".into());
        }
        if self.connect_grace > balancer_store::MAX_CONNECT_GRACE {
            return Err(format!(
                "--connect-grace must be at most {}s: the slot ledger counts leases that long",
                balancer_store::MAX_CONNECT_GRACE.as_secs()
            ));
        }
        if self.slot_lease < Duration::from_millis(100) || self.slot_lease > Duration::from_secs(60)
        {
            return Err("--slot-lease must be between 100ms and 60s".into());
        }
        if self.drain_delay > Duration::from_secs(8) {
            return Err("--drain-delay must be at most 8s: shutdown ends within 10s".into());
        }
        Ok(Settings {
            prefix: self.prefix.clone(),
            max_data_age: self.max_data_age,
            connect_grace: self.connect_grace,
            slot_lease: self.slot_lease,
            retry_after: self.retry_after,
            index: self.index,
            threads: match self.threads {
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            drain_delay: self.drain_delay,
            header_timeout: self.header_timeout,
            admin_token: self.common.admin_token.clone(),
            source,
            listen: self.listen,
            admin: self.admin,
            geoip_city: self.geoip_city.clone(),
            geoip_asn: self.geoip_asn.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            check_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let args =
            Args::try_parse_from(std::iter::once("icecast-redirector").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.settings()
    }

    #[test]
    fn redis_mode() {
        let s = settings(&[
            "--redis",
            "redis://127.0.0.1/",
            "--listen",
            "[::]:8000",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "::1",
        ])
        .unwrap();
        assert_eq!(
            s.source,
            Source::Redis(parse_redis_url("redis://127.0.0.1/").unwrap())
        );
        assert_eq!(s.listen, Some("[::]:8000".parse().unwrap()));
        assert_eq!(s.admin, DEFAULT_ADMIN.parse().unwrap());
        assert_eq!(s.trusted_proxies.len(), 2);
        assert!(!s.check_only);
    }

    #[test]
    fn standalone_mode_and_check() {
        let s = settings(&["--fleet", "f.toml", "--listen", "127.0.0.1:8000"]).unwrap();
        assert_eq!(s.source, Source::Standalone("f.toml".into()));
        let s = settings(&["--check-config", "g.toml"]).unwrap();
        assert_eq!(s.source, Source::Standalone("g.toml".into()));
        assert!(s.check_only);
    }

    #[test]
    fn mistakes() {
        assert!(
            settings(&["--listen", "127.0.0.1:1"])
                .unwrap_err()
                .contains("--redis URL")
        );
        assert!(
            settings(&[
                "--fleet",
                "f",
                "--redis",
                "redis://x/",
                "--listen",
                "127.0.0.1:1"
            ])
            .is_err()
        );
        assert!(
            settings(&["--fleet", "f"])
                .unwrap_err()
                .contains("--listen")
        );
        assert!(settings(&["--fleet", "f", "--listen", "8000"]).is_err());
        assert!(
            settings(&[
                "--fleet",
                "f",
                "--listen",
                "127.0.0.1:1",
                "--trusted-proxy",
                "10.0.0.1/8"
            ])
            .unwrap_err()
            .contains("host bits")
        );
        assert!(
            settings(&[
                "--fleet",
                "f",
                "--listen",
                "127.0.0.1:1",
                "--geoip-city",
                "/nonexistent.mmdb"
            ])
            .unwrap_err()
            .contains("--geoip-city /nonexistent.mmdb: no such file")
        );
    }
}

/// The range of seconds a 503's `Retry-After` is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    /// Fewest seconds.
    pub min: u32,
    /// Most seconds.
    pub max: u32,
}

impl RetryAfter {
    /// One draw from the range.
    pub fn draw(&self) -> u32 {
        fastrand::u32(self.min..=self.max)
    }
}

/// `N` or `MIN-MAX`, in seconds, 1 to 3600.
fn parse_retry_after(text: &str) -> Result<RetryAfter, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=3600).contains(n))
            .ok_or_else(|| format!("{s:?} is not a number of seconds from 1 to 3600"))
    };
    let (min, max) = match text.split_once('-') {
        Some((min, max)) => (number(min)?, number(max)?),
        None => (number(text)?, number(text)?),
    };
    if min > max {
        return Err(format!(
            "{min}-{max}: the first number must not exceed the second"
        ));
    }
    Ok(RetryAfter { min, max })
}
