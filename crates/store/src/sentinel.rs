//! Redis beyond one server: the master is whichever server Redis Sentinel
//! names. Both services connect through
//! `redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/DB]`
//! (the sentinels' addresses, the master's name, and the database), and
//! follow a failover: when an operation fails (the old master is gone, or it
//! came back as a replica and answers READONLY), and every few seconds
//! anyway, the sentinels are asked again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, RedisConnectionInfo};

/// The URL scheme that selects Sentinel.
pub const SENTINEL_SCHEME: &str = "redis+sentinel";

/// How often the sentinels are asked even when all is well, so a master that
/// was replaced while still reachable is left within this time.
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// Least time between two asks after failures, so a dead master does not
/// make every request ask the sentinels.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// A `redis+sentinel://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The sentinels, as `host:port`.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels know the master by (`sentinel monitor NAME ...`).
    pub master: String,
    /// The database number on the master.
    pub db: i64,
    /// Credentials for the master (not for the sentinels).
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
}

/// Why a `redis+sentinel://` URL is not usable. Never echoes a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SentinelUrlError {
    /// Not the sentinel scheme.
    #[error("not a {SENTINEL_SCHEME}:// URL")]
    Scheme,
    /// No sentinel address before the path.
    #[error("no sentinel address: use {SENTINEL_SCHEME}://host:26379,host2:26379/MASTER")]
    NoSentinel,
    /// A sentinel address that is not `host:port`.
    #[error("sentinel address {0:?} is not host:port")]
    BadAddress(String),
    /// No master name in the path.
    #[error("no master name: use {SENTINEL_SCHEME}://host:26379/MASTER")]
    NoMaster,
    /// The database is not a number.
    #[error("database {0:?} is not a number")]
    BadDatabase(String),
}

impl SentinelTarget {
    /// Parses `redis+sentinel://[user:password@]h1:p1[,h2:p2...]/MASTER[/DB]`.
    /// A sentinel without a port uses 26379.
    pub fn parse(url: &str) -> Result<SentinelTarget, SentinelUrlError> {
        let rest = url
            .strip_prefix(SENTINEL_SCHEME)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or(SentinelUrlError::Scheme)?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(c) => match c.split_once(':') {
                Some((user, password)) => (
                    Some(decode(user)).filter(|u| !u.is_empty()),
                    Some(decode(password)),
                ),
                None => (Some(decode(c)).filter(|u| !u.is_empty()), None),
            },
        };
        let sentinels = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(sentinel_address)
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(SentinelUrlError::NoSentinel);
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = segments.next().ok_or(SentinelUrlError::NoMaster)?;
        let db = match segments.next() {
            None => 0,
            Some(db) => db
                .parse()
                .map_err(|_| SentinelUrlError::BadDatabase(db.to_owned()))?,
        };
        Ok(SentinelTarget {
            sentinels,
            master: decode(master),
            db,
            username,
            password,
        })
    }

    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
        let sentinels: Vec<redis::ConnectionInfo> = self
            .sentinels
            .iter()
            .map(|(host, port)| {
                redis::IntoConnectionInfo::into_connection_info(ConnectionAddr::Tcp(
                    host.clone(),
                    *port,
                ))
            })
            .collect::<redis::RedisResult<_>>()?;
        SentinelClient::build(
            sentinels,
            self.master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
    }
}

fn sentinel_address(address: &str) -> Result<(String, u16), SentinelUrlError> {
    let bad = || SentinelUrlError::BadAddress(address.to_owned());
    // [v6]:port, host:port, or a bare host.
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or_else(bad)?;
        (host, rest.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => 26379,
        Some(p) => p.parse().map_err(|_| bad())?,
    };
    Ok((host.to_owned(), port))
}

/// Percent-decoding for the user, password and master name.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Asks the sentinels where the master is, at most one ask at a time.
pub(crate) struct Locator {
    target: SentinelTarget,
    client: tokio::sync::Mutex<Option<SentinelClient>>,
    asking: AtomicBool,
    last_ask: Mutex<Option<Instant>>,
}

impl Locator {
    pub(crate) fn new(target: SentinelTarget) -> Locator {
        Locator {
            target,
            client: tokio::sync::Mutex::new(None),
            asking: AtomicBool::new(false),
            last_ask: Mutex::new(None),
        }
    }

    /// Whether it is time to ask again: after a failure (`failed`) at most
    /// every [`RETRY_EVERY`], otherwise every [`RECHECK_EVERY`]. Claims the
    /// ask when it returns true; [`Locator::done`] releases it.
    pub(crate) fn should_ask(&self, failed: bool) -> bool {
        let due = {
            let last = self.last_ask.lock().unwrap_or_else(|e| e.into_inner());
            let wait = if failed { RETRY_EVERY } else { RECHECK_EVERY };
            last.is_none_or(|at| at.elapsed() >= wait)
        };
        due && !self.asking.swap(true, Ordering::AcqRel)
    }

    /// Ends an ask claimed by [`Locator::should_ask`].
    pub(crate) fn done(&self) {
        *self.last_ask.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.asking.store(false, Ordering::Release);
    }

    /// A client for the current master, as the sentinels see it (they
    /// confirm with `ROLE` that it is a master).
    pub(crate) async fn master(&self) -> redis::RedisResult<redis::Client> {
        let mut client = self.client.lock().await;
        if client.is_none() {
            *client = Some(self.target.client()?);
        }
        match client.as_mut() {
            Some(client) => client.async_get_client().await,
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no sentinel client",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let t = SentinelTarget::parse("redis+sentinel://a:26379,b:26380,[::1]:26381/mymaster/2")
            .unwrap();
        assert_eq!(
            t.sentinels,
            [
                ("a".to_owned(), 26379),
                ("b".to_owned(), 26380),
                ("::1".to_owned(), 26381)
            ]
        );
        assert_eq!((t.master.as_str(), t.db), ("mymaster", 2));
        assert_eq!((t.username, t.password), (None, None));

        let t =
            SentinelTarget::parse("redis+sentinel://:s%40cret@10.0.0.5/icecast-balancer").unwrap();
        assert_eq!(t.sentinels, [("10.0.0.5".to_owned(), 26379)]);
        assert_eq!((t.username, t.password.as_deref()), (None, Some("s@cret")));
        assert_eq!(t.db, 0);
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong_without_the_password() {
        let cases = [
            ("redis://a/m", SentinelUrlError::Scheme),
            ("redis+sentinel:///m", SentinelUrlError::NoSentinel),
            ("redis+sentinel://a:26379", SentinelUrlError::NoMaster),
            (
                "redis+sentinel://a:port/m",
                SentinelUrlError::BadAddress("a:port".into()),
            ),
            (
                "redis+sentinel://u:hunter2@a/m/x",
                SentinelUrlError::BadDatabase("x".into()),
            ),
        ];
        for (url, expected) in cases {
            let error = SentinelTarget::parse(url).unwrap_err();
            assert_eq!(error, expected, "{url}");
            assert!(!error.to_string().contains("hunter2"));
        }
    }
}
