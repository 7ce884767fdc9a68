//! Reservations: every redirect takes a slot, so that across all replicas the
//! players sent to a mount never exceed the free slots its last poll reported.
//!
//! A slot handed out at time `t` counts against a poll observed at `T` while
//! `t >= T - grace`: players connect within `grace` of their redirect, so
//! older ones are already in the poll's listener count.
//!
//! - With Redis, a replica leases a small batch of a mount's slots in one
//!   script call and hands them out locally, so most redirects touch no
//!   network. Leases older than the window are dropped, never used.
//! - Without Redis (down, frozen, or standalone mode), each replica hands out
//!   at most its share (free slots divided by the live replicas last seen),
//!   counting locally. Standalone mode is one replica, so that count is exact.
//! - Redis calls on the request path are bounded by a short timeout, and after
//!   a failure Redis is left alone for a moment (a circuit breaker), so a
//!   frozen Redis costs at most one short wait per breaker period.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer_store::{RedisStore, Reserve};

/// How long a redirect may wait for Redis to lease slots.
pub const RESERVE_TIMEOUT: Duration = Duration::from_millis(30);
/// How long Redis is left alone after it failed to answer.
const BREAKER_OPEN: Duration = Duration::from_millis(500);
/// The largest batch a replica leases at once.
const MAX_BATCH: u32 = 64;

/// One mount's slots held by this replica.
#[derive(Default)]
pub struct SlotPool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Slots leased from Redis and not handed out yet.
    leased: u32,
    /// When they were leased (ms since the epoch).
    leased_at_ms: i64,
    /// When this replica handed out slots of the mount, oldest first, trimmed to the TTL.
    handed_out: VecDeque<i64>,
}

impl SlotPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a mount's last poll said, for taking a slot.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The server's name.
    pub server: &'a str,
    /// The mount.
    pub mount: &'a str,
    /// When the server was polled (ms since the epoch).
    pub observed_at_ms: i64,
    /// Free slots the poll saw.
    pub free_slots: u32,
}

/// Whether slots come from Redis or from local counting alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shared through Redis with other replicas.
    Shared,
    /// This process is the only redirector (standalone).
    Alone,
}

/// This replica's reservations.
pub struct Reservations {
    store: Option<RedisStore>,
    grace_ms: i64,
    ttl: Duration,
    breaker_until_ms: AtomicI64,
    replicas: AtomicU32,
    pools: Mutex<HashMap<(String, String), Arc<SlotPool>>>,
    metrics: Option<crate::metrics::RedirectorMetrics>,
}

impl Reservations {
    /// Reservations shared through `store` (None: standalone).
    /// `grace` is how long after a redirect a player may take to connect;
    /// `ttl` how long Redis keeps reservation entries.
    pub fn new(store: Option<RedisStore>, grace: Duration, ttl: Duration) -> Self {
        Reservations {
            store,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            ttl,
            breaker_until_ms: AtomicI64::new(0),
            replicas: AtomicU32::new(1),
            pools: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Counts reservations and Redis errors in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::RedirectorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How slots are counted.
    pub fn mode(&self) -> Mode {
        if self.store.is_some() {
            Mode::Shared
        } else {
            Mode::Alone
        }
    }

    /// The pool of a mount, created on first use and kept across snapshots.
    pub fn pool(&self, server: &str, mount: &str) -> Arc<SlotPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((server.to_owned(), mount.to_owned()))
            .or_default()
            .clone()
    }

    /// Records how many replicas are alive (from the heartbeat), for the share
    /// each may hand out while Redis is unavailable.
    pub fn set_replicas(&self, replicas: u32) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    /// Whether Redis failed recently (reservations are then counted locally).
    pub fn redis_trouble(&self, now_ms: i64) -> bool {
        self.store.is_some() && now_ms < self.breaker_until_ms.load(Ordering::Relaxed)
    }

    /// Takes one slot of `mount` for a redirect; false if it has none left.
    pub async fn take(&self, pool: &SlotPool, mount: Observed<'_>, now_ms: i64) -> bool {
        let granted = self.take_slot(pool, mount, now_ms).await;
        if let Some(metrics) = &self.metrics {
            metrics.reservation(granted);
        }
        granted
    }

    async fn take_slot(&self, pool: &SlotPool, mount: Observed<'_>, now_ms: i64) -> bool {
        let window_start = mount.observed_at_ms - self.grace_ms;
        {
            let mut state = pool.lock();
            trim(&mut state.handed_out, now_ms - self.ttl_ms());
            if state.leased > 0 {
                if state.leased_at_ms >= window_start {
                    state.leased -= 1;
                    state.handed_out.push_back(now_ms);
                    return true;
                }
                // Leased before the poll's window: the poll saw these slots as
                // free, so another replica may lease them. Never hand them out.
                state.leased = 0;
            }
        }
        if let Some(store) = self.store.as_ref().filter(|_| !self.redis_trouble(now_ms)) {
            let replicas = self.replicas.load(Ordering::Relaxed);
            let batch = (mount.free_slots / (4 * replicas)).clamp(1, MAX_BATCH);
            let request = Reserve {
                server: mount.server,
                mount: mount.mount,
                now_ms,
                window_start_ms: window_start,
                free_slots: mount.free_slots,
                want: batch,
                ttl: self.ttl,
            };
            match store.reserve(&request, RESERVE_TIMEOUT).await {
                Ok(0) => return false,
                Ok(granted) => {
                    let mut state = pool.lock();
                    state.leased = granted - 1;
                    state.leased_at_ms = now_ms;
                    state.handed_out.push_back(now_ms);
                    return true;
                }
                Err(e) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.redis_errors.inc();
                    }
                    if !self.redis_trouble(now_ms) {
                        tracing::warn!(error = %e, "cannot reserve in Redis; counting locally for now");
                    }
                    let until = now_ms + i64::try_from(BREAKER_OPEN.as_millis()).unwrap_or(500);
                    self.breaker_until_ms.store(until, Ordering::Relaxed);
                }
            }
        }
        // Local counting: this replica's share of what the poll saw.
        let share = match self.mode() {
            Mode::Alone => mount.free_slots,
            Mode::Shared => mount.free_slots / self.replicas.load(Ordering::Relaxed),
        };
        let mut state = pool.lock();
        let used = state
            .handed_out
            .iter()
            .filter(|&&t| t >= window_start)
            .count();
        if (used as u64) < u64::from(share) {
            state.handed_out.push_back(now_ms);
            true
        } else {
            false
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

fn trim(times: &mut VecDeque<i64>, older_than: i64) {
    while times.front().is_some_and(|&t| t < older_than) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(at: i64, free: u32) -> Observed<'static> {
        Observed {
            server: "s",
            mount: "/m",
            observed_at_ms: at,
            free_slots: free,
        }
    }

    #[tokio::test]
    async fn alone_never_exceeds_what_the_poll_saw() {
        let r = Reservations::new(None, Duration::from_secs(2), Duration::from_secs(10));
        let pool = r.pool("s", "/m");
        let mut granted = 0;
        for i in 0..10 {
            if r.take(&pool, observed(1000, 3), 1100 + i).await {
                granted += 1;
            }
        }
        assert_eq!(granted, 3);
        // A poll 5 s later counts those players (they connected within the grace).
        assert!(r.take(&pool, observed(6000, 1), 6100).await);
        assert!(!r.take(&pool, observed(6000, 1), 6200).await);
        // Handouts inside the new window still count against it.
        assert!(
            !r.take(&pool, observed(6500, 1), 6600).await,
            "the 6100 handout is not in that poll yet"
        );
    }

    #[tokio::test]
    async fn with_redis_down_each_replica_takes_its_share() {
        // A store on a port nothing listens on: every call fails fast.
        let store = RedisStore::new(
            "redis://127.0.0.1:9/",
            balancer_store::Keys::default(),
            Duration::from_millis(50),
        )
        .expect("store");
        let r = Reservations::new(Some(store), Duration::from_secs(2), Duration::from_secs(10));
        r.set_replicas(2);
        let pool = r.pool("s", "/m");
        let mut granted = 0;
        for i in 0..10 {
            if r.take(&pool, observed(1000, 9), 1100 + i).await {
                granted += 1;
            }
        }
        assert_eq!(granted, 4, "9 free shared by 2 replicas: 4 each");
        assert!(r.redis_trouble(1200));
        assert!(!r.redis_trouble(1100 + 10_000), "the breaker closes again");
    }
}
