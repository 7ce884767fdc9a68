//! The Redis side of the contract: the poller's writes (lease, snapshot,
//! drains) and the redirectors' reads, each bounded in time. The Redis is one
//! server (`redis://`, `rediss://`) or the master Sentinel names
//! (`redis+sentinel://`), followed across failovers.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use balancer_proto::snapshot::v1::Snapshot;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};

use crate::sentinel::{Locator, SENTINEL_SCHEME, SentinelTarget, SentinelUrlError};
use crate::slots::{Grant, RESERVE_SCRIPT, ReserveRequest, SlotStore};
use crate::{DecodeError, Keys, decode_snapshot, encode_snapshot};

/// Default bound on one Redis operation.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a Redis operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the operation timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Another poller holds the lease, so this one must not publish.
    #[error("this poller does not hold the lease")]
    NotLeader,
    /// The stored snapshot does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A `redis+sentinel://` URL that cannot be used.
    #[error("sentinel URL: {0}")]
    SentinelUrl(#[from] SentinelUrlError),
}

/// Acquires the lease if it is free, renews it if `ARGV[1]` holds it; 1 if held after the call.
const LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease only if `ARGV[1]` holds it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The next snapshot version: one more than the counter, and more than
/// `ARGV[1]` (the last version the caller published), so versions keep growing
/// even after Redis lost the counter in a restart.
const VERSION_SCRIPT: &str = r"
local version = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if version <= floor then
  version = floor + 1
  redis.call('SET', KEYS[1], version)
end
return version
";

/// Writes the snapshot and announces it, only while `ARGV[1]` holds the lease
/// (a fence against a paused ex-leader writing after a standby took over).
/// Also sets the reservation ledger's "history since" marker (KEYS[3]) to
/// `ARGV[6]` if it is missing (see `slots.rs`).
const PUBLISH_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER')
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[6], 'NX')
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// Records a replica's heartbeat, forgets replicas silent for `ARGV[3]` ms,
/// and returns how many are alive.
const HEARTBEAT_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], 10000)
return redis.call('ZCARD', KEYS[1])
";

/// A connection to the shared Redis, created without I/O so a service can
/// start while Redis is down; it connects on first use and reconnects by
/// itself. Through Sentinel, it also moves to the new master after a failover.
#[derive(Clone)]
pub struct RedisStore {
    keys: Keys,
    /// The Redis in use; `None` until the sentinels named a master.
    link: Arc<ArcSwapOption<Link>>,
    /// Set for `redis+sentinel://`.
    locator: Option<Arc<Locator>>,
    timeout: Duration,
    lease: Script,
    release: Script,
    version: Script,
    publish: Script,
    reserve: Script,
    heartbeat: Script,
}

/// One Redis server: a client (for pub/sub) and its self-healing connection.
struct Link {
    client: redis::Client,
    connection: ConnectionManager,
    timeout: Duration,
}

impl Link {
    fn new(client: redis::Client, timeout: Duration) -> Result<Link, StoreError> {
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config(timeout))?;
        Ok(Link {
            client,
            connection,
            timeout,
        })
    }

    /// This thread's own connection to the same Redis, made on first use.
    ///
    /// Slot leases are asked for from the redirector's player threads, one
    /// current-thread runtime each. Through the shared connection, whose
    /// driver task lives on the control runtime, every lease would cross
    /// threads twice (the request to the driver, the answer back), each a
    /// wake-up of another thread on the player's core. A connection of the
    /// thread's own is driven by the thread's own runtime, like its players.
    /// Must be called from within a tokio runtime (it spawns there).
    fn own_connection(self: &Arc<Self>) -> Result<ConnectionManager, StoreError> {
        OWN_CONNECTION.with(|own| {
            let mut own = own.borrow_mut();
            if let Some((link, connection)) = own.as_ref()
                && std::ptr::eq(link.as_ptr(), Arc::as_ptr(self))
            {
                return Ok(connection.clone());
            }
            // No response timeout: a lease's answer is awaited for as long
            // as its caller wants it (see `RedisStore::reserve`).
            let config = config(self.timeout).set_response_timeout(None);
            let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
            *own = Some((Arc::downgrade(self), connection.clone()));
            Ok(connection)
        })
    }
}

thread_local! {
    /// [`Link::own_connection`]: the link it was made for (a failover makes
    /// a new link, and so a new connection; the `Weak` keeps the old link's
    /// address from being reused meanwhile), and the connection.
    static OWN_CONNECTION: RefCell<Option<(Weak<Link>, ConnectionManager)>> =
        const { RefCell::new(None) };
}

/// How every connection to Redis behaves: each attempt and answer bounded by
/// `timeout`, one retry, reconnecting with backoff up to 2 s.
fn config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2))
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://`, `rediss://`, or
    /// `redis+sentinel://host:26379[,host:port...]/MASTER[/DB]`), with each
    /// operation bounded by `timeout`.
    pub fn new(url: &str, keys: Keys, timeout: Duration) -> Result<Self, StoreError> {
        let (link, locator) = if url.starts_with(SENTINEL_SCHEME) {
            let target = SentinelTarget::parse(url)?;
            (None, Some(Arc::new(Locator::new(target))))
        } else {
            let link = Link::new(redis::Client::open(url)?, timeout)?;
            (Some(Arc::new(link)), None)
        };
        Ok(RedisStore {
            keys,
            link: Arc::new(ArcSwapOption::new(link)),
            locator,
            timeout,
            lease: Script::new(LEASE_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            version: Script::new(VERSION_SCRIPT),
            publish: Script::new(PUBLISH_SCRIPT),
            reserve: Script::new(RESERVE_SCRIPT),
            heartbeat: Script::new(HEARTBEAT_SCRIPT),
        })
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Takes the poller lease if free, or renews it if `holder` has it.
    /// Returns whether `holder` holds it now.
    pub async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let mut call = self.lease.key(self.keys.poller_lease());
        call.arg(holder).arg(millis(ttl));
        let held: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    /// Gives the lease up if `holder` has it, so a standby takes over at once.
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let mut call = self.release.key(self.keys.poller_lease());
        call.arg(holder);
        let _: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Numbers `snapshot` with the next version (above `floor`, the last
    /// version this caller published), stores it for `ttl` and announces the
    /// version, as long as `holder` holds the lease. Returns the version.
    pub async fn publish_snapshot(
        &self,
        holder: &str,
        snapshot: &mut Snapshot,
        ttl: Duration,
        floor: u64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.connection().await?;
        let mut next = self.version.key(self.keys.snapshot_version());
        next.arg(floor);
        let version: u64 = self.bounded(next.invoke_async(&mut conn)).await?;
        snapshot.version = version;
        // A fresh counter and a poller that never published: a new deployment,
        // whose reservation ledger has no history to lose. Otherwise Redis
        // lost its keys while leases may be out: history starts now.
        let history_since = if version == 1 && floor == 0 {
            0
        } else {
            snapshot.published_at_ms
        };
        let mut call = self.publish.key(self.keys.poller_lease());
        call.key(self.keys.snapshot())
            .key(self.keys.reservations_since())
            .arg(holder)
            .arg(encode_snapshot(snapshot))
            .arg(millis(ttl))
            .arg(self.keys.snapshot_channel())
            .arg(version)
            .arg(history_since);
        let result: Result<i64, StoreError> = self.bounded(call.invoke_async(&mut conn)).await;
        match result {
            Ok(_) => Ok(version),
            Err(StoreError::Redis(e))
                if e.code() == Some("NOTLEADER") || e.to_string().contains("NOTLEADER") =>
            {
                Err(StoreError::NotLeader)
            }
            Err(e) => Err(e),
        }
    }

    /// The latest snapshot, if one is stored.
    pub async fn latest_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let mut conn = self.connection().await?;
        let bytes: Option<Vec<u8>> = self.bounded(conn.get(self.keys.snapshot())).await?;
        Ok(bytes.map(|b| decode_snapshot(&b)).transpose()?)
    }

    /// The version of the newest snapshot, without fetching it (0 if none).
    pub async fn latest_version(&self) -> Result<u64, StoreError> {
        let mut conn = self.connection().await?;
        let version: Option<u64> = self.bounded(conn.get(self.keys.snapshot_version())).await?;
        Ok(version.unwrap_or(0))
    }

    /// Leases up to `request.want` slots of a mount (see `slots.rs`), over
    /// the calling thread's own connection (see `Link::own_connection`).
    ///
    /// The answer is awaited until the lease would expire, not just for the
    /// operation timeout: Redis stalled (frozen, a slow fork) runs the script
    /// when it resumes, and the ledger then counts the grant until its expiry
    /// whether or not anyone reads the answer. An answer after the expiry is
    /// of no use. Past the operation timeout the master is looked for again,
    /// as after a failed operation; the caller decides when to count the call
    /// as failed.
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<Grant, StoreError> {
        let mut conn = self.link().await?.own_connection()?;
        let mut call = self
            .reserve
            .key(self.keys.reservations(&request.server, &request.mount));
        call.key(self.keys.reservations_since())
            .key(self.keys.replicas())
            .arg(request.now_ms)
            .arg(request.want)
            .arg(request.replicas)
            .arg(millis(request.lease))
            .arg(millis(request.ttl))
            .arg(millis(crate::REPLICA_ALIVE));
        for poll in &request.polls {
            call.arg(poll.window_start_ms).arg(poll.free_slots);
        }
        let answer = call.invoke_async(&mut conn);
        let (granted, remaining): (u32, u32) = self.patient(request.lease, answer).await?;
        Ok(Grant { granted, remaining })
    }

    /// Slots of a mount leased by redirectors whose leases expire at or after
    /// `since_ms` (what a poll's window counts).
    pub async fn reserved(
        &self,
        server: &str,
        mount: &str,
        since_ms: i64,
    ) -> Result<u32, StoreError> {
        let mut conn = self.connection().await?;
        let key = self.keys.reservations(server, mount);
        let buckets: Vec<(i64, u32)> = self.bounded(conn.hgetall(key)).await?;
        Ok(count_since(&buckets, since_ms))
    }

    /// [`RedisStore::reserved`] for many `(server, mount, since_ms)` at once,
    /// in one round trip (the operator console asks for every mount each second).
    pub async fn reserved_many(
        &self,
        queries: &[(&str, &str, i64)],
    ) -> Result<Vec<u32>, StoreError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for (server, mount, _) in queries {
            pipe.hgetall(self.keys.reservations(server, mount));
        }
        let replies: Vec<Vec<(i64, u32)>> = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(replies
            .iter()
            .zip(queries)
            .map(|(buckets, (_, _, since_ms))| count_since(buckets, *since_ms))
            .collect())
    }

    /// Records that replica `id` is alive at `now_ms`; returns how many replicas
    /// sent a heartbeat within `stale_after`.
    pub async fn heartbeat(
        &self,
        id: &str,
        now_ms: i64,
        stale_after: Duration,
    ) -> Result<u32, StoreError> {
        let mut conn = self.connection().await?;
        let mut call = self.heartbeat.key(self.keys.replicas());
        call.arg(now_ms).arg(id).arg(millis(stale_after));
        self.bounded(call.invoke_async(&mut conn)).await
    }

    /// Subscribes to new-snapshot announcements; each item is a version. The
    /// stream ends when the connection breaks: subscribe again.
    pub async fn subscribe(
        &self,
    ) -> Result<impl futures_util::Stream<Item = u64> + Send + use<>, StoreError> {
        let client = self.link().await?.client.clone();
        let mut pubsub = self.bounded(client.get_async_pubsub()).await?;
        self.bounded(pubsub.subscribe(self.keys.snapshot_channel()))
            .await?;
        Ok(futures_util::StreamExt::filter_map(
            pubsub.into_on_message(),
            |message| async move { message.get_payload::<u64>().ok() },
        ))
    }

    /// Names of drained servers.
    pub async fn drained(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(conn.smembers(self.keys.drained())).await
    }

    /// Drains (`true`) or undrains a server; returns whether anything changed.
    pub async fn set_drained(&self, server: &str, drained: bool) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let key = self.keys.drained();
        let changed: i64 = if drained {
            self.bounded(conn.sadd(key, server)).await?
        } else {
            self.bounded(conn.srem(key, server)).await?
        };
        Ok(changed > 0)
    }

    /// Forgets drains of servers that are no longer in the fleet, so the set
    /// stays bounded by the fleet config.
    pub async fn forget_drains_except(&self, servers: &BTreeSet<String>) -> Result<(), StoreError> {
        let stale: Vec<String> = self.drained().await?.difference(servers).cloned().collect();
        if !stale.is_empty() {
            let mut conn = self.connection().await?;
            let _: i64 = self.bounded(conn.srem(self.keys.drained(), stale)).await?;
        }
        Ok(())
    }

    /// An operation bounded by the operation timeout.
    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.patient(self.timeout, operation).await
    }

    /// An operation bounded by `patience` (at least the operation timeout).
    /// A failure, or no answer within the operation timeout, may mean the
    /// master moved (gone, or answering READONLY as a replica): the master is
    /// looked for again, and the answer still awaited until `patience` ends.
    async fn patient<T>(
        &self,
        patience: Duration,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::pin!(operation);
        let result = match tokio::time::timeout(self.timeout, &mut operation).await {
            Ok(result) => result,
            Err(_) => {
                self.relocate_in_background(true);
                let rest = patience.saturating_sub(self.timeout);
                if rest.is_zero() {
                    return Err(StoreError::Timeout(self.timeout));
                }
                match tokio::time::timeout(rest, operation).await {
                    Ok(result) => result,
                    Err(_) => return Err(StoreError::Timeout(patience)),
                }
            }
        };
        if result.is_err() {
            self.relocate_in_background(true);
        }
        result.map_err(StoreError::from)
    }

    /// The connection to use now.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        Ok(self.link().await?.connection.clone())
    }

    /// The Redis in use. Through Sentinel, the first call asks the sentinels
    /// (bounded by the operation timeout); later calls also re-ask them in
    /// the background now and then.
    async fn link(&self) -> Result<Arc<Link>, StoreError> {
        if let Some(link) = self.link.load_full() {
            self.relocate_in_background(false);
            return Ok(link);
        }
        // Only a Sentinel store starts without a link.
        if let Some(locator) = &self.locator
            && locator.should_ask(true)
        {
            // Boxed: the sentinel client's future is deep, and rarely needed.
            let asked = tokio::time::timeout(self.timeout, Box::pin(self.relocate(locator))).await;
            locator.done();
            asked.map_err(|_| StoreError::Timeout(self.timeout))??;
        }
        self.link.load_full().ok_or_else(|| {
            StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the sentinels have not named a master yet",
            )))
        })
    }

    /// Asks the sentinels again without holding up the caller, if it is time.
    fn relocate_in_background(&self, failed: bool) {
        let Some(locator) = &self.locator else {
            return;
        };
        if !locator.should_ask(failed) {
            return;
        }
        let (store, locator) = (self.clone(), Arc::clone(locator));
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(store.timeout, store.relocate(&locator)).await
            {
                tracing::warn!(error = %e, "cannot ask the sentinels for the master");
            }
            locator.done();
        });
    }

    /// Points the store at the master the sentinels name, if it moved.
    async fn relocate(&self, locator: &Locator) -> Result<(), StoreError> {
        let client = locator.master().await?;
        let address = client.get_connection_info().addr().clone();
        let current = self.link.load_full();
        if current
            .as_ref()
            .is_some_and(|link| *link.client.get_connection_info().addr() == address)
        {
            return Ok(());
        }
        tracing::info!(master = %address, "Redis master (from Sentinel)");
        let link = Link::new(client, self.timeout)?;
        self.link.store(Some(Arc::new(link)));
        Ok(())
    }
}

impl SlotStore for RedisStore {
    fn reserve(
        &self,
        request: ReserveRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Grant, StoreError>> + Send>>
    {
        let store = self.clone();
        Box::pin(async move { RedisStore::reserve(&store, &request).await })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
/// Slots in the per-second `buckets` of a reservation hash from `since_ms` on.
fn count_since(buckets: &[(i64, u32)], since_ms: i64) -> u32 {
    let from = since_ms.div_euclid(1000);
    buckets
        .iter()
        .filter(|(second, _)| *second >= from)
        .map(|(_, n)| n)
        .sum()
}
