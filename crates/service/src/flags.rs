//! Parsers for flag values shared by several binaries.

use std::net::IpAddr;

use ipnet::IpNet;
use url::Url;

use crate::LogFormat;

/// Flags both services share: who may use the admin API, and how logs look.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonFlags {
    /// Bearer token the control API and the console require; needed when --admin is
    /// not on loopback.
    #[arg(
        long,
        env = "ICB_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Serve the control API and the console beyond loopback without a token (behind a
    /// network policy).
    #[arg(long, env = "ICB_ADMIN_INSECURE")]
    pub admin_insecure: bool,

    /// Log format; the filter comes from RUST_LOG (default: info).
    #[arg(long, env = "ICB_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// A name for this process in leases and heartbeats: host, process id and start time.
pub fn process_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}:{}:{started}", std::process::id())
}

/// Why a `--redis` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    /// Not a URL at all.
    #[error("not a URL ({0}); write e.g. redis://127.0.0.1:6379/")]
    NotAUrl(String),
    /// A URL of another kind.
    #[error("scheme {0:?} is not supported; use redis://, rediss:// or redis+sentinel://")]
    Scheme(String),
    /// No host to connect to.
    #[error("the URL has no host")]
    NoHost,
    /// A `redis+sentinel://` URL that cannot be used.
    #[error(transparent)]
    Sentinel(#[from] balancer_store::SentinelUrlError),
}

/// A checked `--redis` value: `redis://`, `rediss://`, or
/// `redis+sentinel://host:26379[,host:port...]/MASTER[/DB]`. It prints (and
/// debug-prints) with its password masked, so it can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given, password included, for connecting.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.0;
        let start = url.find("://").map_or(0, |i| i + 3);
        let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
        let masked = url[start..authority_end].rfind('@').and_then(|at| {
            let userinfo = &url[start..start + at];
            let colon = userinfo.find(':')?;
            Some(format!(
                "{}***{}",
                &url[..start + colon + 1],
                &url[start + at..]
            ))
        });
        f.write_str(masked.as_deref().unwrap_or(url))
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// Checks a `--redis` URL. The password it may hold is not echoed in errors.
pub fn parse_redis_url(value: &str) -> Result<RedisUrl, RedisUrlError> {
    if value.starts_with(balancer_store::SENTINEL_SCHEME) {
        balancer_store::SentinelTarget::parse(value)?;
        return Ok(RedisUrl(value.to_owned()));
    }
    let url = Url::parse(value).map_err(|e| RedisUrlError::NotAUrl(e.to_string()))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(RedisUrlError::Scheme(url.scheme().to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(RedisUrlError::NoHost);
    }
    Ok(RedisUrl(value.to_owned()))
}

/// Parses a `--trusted-proxy` value: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a
/// single address (taken as /32 or /128). Host bits must be zero, so a typo
/// like `10.0.0.1/8` is caught instead of trusting a whole network silently.
pub fn parse_trusted_proxy(value: &str) -> Result<IpNet, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = value
        .parse()
        .map_err(|_| format!("{value:?} is neither an address nor a CIDR like 10.0.0.0/8"))?;
    if net.trunc() != net {
        return Err(format!(
            "{value:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        assert!(parse_redis_url("redis://127.0.0.1:6379/").is_ok());
        assert!(parse_redis_url("rediss://user:pw@redis.example/2").is_ok());
        assert_eq!(
            parse_redis_url("http://x"),
            Err(RedisUrlError::Scheme("http".into()))
        );
        assert!(parse_redis_url("127.0.0.1:6379").is_err());
        let err = parse_redis_url("redis://:hunter2@").expect_err("no host");
        assert!(!err.to_string().contains("hunter2"));
        let sentinel = parse_redis_url("redis+sentinel://:hunter2@a:26379,b:26379/m").unwrap();
        assert_eq!(
            sentinel.to_string(),
            "redis+sentinel://:***@a:26379,b:26379/m"
        );
        assert!(!format!("{sentinel:?}").contains("hunter2"));
        let plain = parse_redis_url("redis://user:hunter2@redis.example:6379/2").unwrap();
        assert_eq!(plain.to_string(), "redis://user:***@redis.example:6379/2");
        assert_eq!(plain.as_str(), "redis://user:hunter2@redis.example:6379/2");
        let err = parse_redis_url("redis+sentinel://:hunter2@a:26379").expect_err("no master");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn trusted_proxies() {
        assert_eq!(
            parse_trusted_proxy("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_trusted_proxy("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(parse_trusted_proxy("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_trusted_proxy("fd00::/8").unwrap().to_string(),
            "fd00::/8"
        );
        assert!(
            parse_trusted_proxy("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxy("proxy.example").is_err());
        assert!(parse_trusted_proxy("").is_err());
    }
}
