//! Reservations: every redirect takes a slot from a lease, so that across all
//! replicas the players sent to a mount never exceed the free slots a poll
//! reported (the argument is in ARCHITECTURE.md, "Slot accounting").
//!
//! - A replica leases a mount's slots from the ledger (Redis, or in process
//!   when standalone) in batches sized by its recent demand. It hands them out
//!   locally, each lease only until it expires. The ledger counts a lease in
//!   every poll whose window it reaches, so a lease can be used without
//!   asking Redis again. This is what keeps redirects exact while Redis is
//!   slow, frozen or gone: a replica then serves from the leases it holds,
//!   and from nothing else.
//! - One refill is in flight per mount per replica; requests that find the
//!   pool empty wait for it (at most [`RESERVE_TIMEOUT`] from its start), and
//!   a pool running low refills before it is empty. A grant adds to the pool,
//!   also when it arrives after the requests stopped waiting.
//! - A mount the ledger reports exhausted for a poll is not asked again until
//!   a newer poll of its server arrives.
//! - After a failed call Redis is left alone for [`BREAKER_OPEN`]. A call
//!   unanswered after [`REFILL_SLOW`] counts as failed, but its answer is
//!   still awaited until the lease it asked for expires: Redis frozen runs the
//!   script when it thaws, and the ledger counts that grant whether or not it
//!   reaches the pool.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use balancer_store::{Grant, PollSeen, ReserveRequest, SlotStore, StoreError};
use tokio::sync::Notify;

use crate::view::Tier;

/// How long a request may wait for a refill, counted from the refill's start.
pub const RESERVE_TIMEOUT: Duration = Duration::from_millis(30);
/// How long Redis is left alone after a call failed.
pub const BREAKER_OPEN: Duration = Duration::from_millis(500);
/// A refill unanswered this long counts as a failed call (the breaker opens,
/// and the pool may ask again once it closes); its answer still lands in the
/// pool if it comes before the lease expires. The store's operation timeout.
pub const REFILL_SLOW: Duration = balancer_store::DEFAULT_OPERATION_TIMEOUT;
/// The smallest batch asked for.
const MIN_BATCH: u32 = 4;
/// The largest batch asked for.
const MAX_BATCH: u32 = 4096;

/// What a mount's last poll said, for taking a slot. Borrowed from the view,
/// so a request copies nothing; a refill clones the names it sends.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The server's name.
    pub server: &'a Arc<str>,
    /// The mount.
    pub mount: &'a Arc<str>,
    /// When the server was polled (ms since the epoch).
    pub observed_at_ms: i64,
    /// Free slots the poll saw.
    pub free_slots: u32,
    /// The mount's listener limit at that poll (`None`: unlimited).
    pub limit: Option<u32>,
}

/// Whether leases come from Redis or from the in-process ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shared through Redis with other replicas.
    Shared,
    /// This process is the only redirector (standalone).
    Alone,
}

/// How a replica takes slots: timings that the ledger's argument rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long after a redirect a player may take to connect.
    pub grace: Duration,
    /// How long a lease may be used.
    pub lease: Duration,
    /// Polls older than this are not granted against (`--max-data-age`).
    pub max_age: Duration,
}

impl Timings {
    /// How long the ledger keeps a lease: until no usable poll can count it.
    pub fn ttl(&self) -> Duration {
        balancer_store::reservation_ttl(self.lease, self.grace, self.max_age)
    }
}

/// How many recent polls of a mount a pool remembers for the ledger.
const POLLS_KEPT: usize = 6;

/// One mount's slots held by this replica.
#[derive(Default)]
pub struct SlotPool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Leased slots not handed out yet, by expiry, soonest first.
    leases: VecDeque<Lease>,
    /// The sum of `leases`' slots left, kept as they change: every request
    /// asks it, and a pool may hold many leases.
    held: u32,
    /// The poll (its `observed_at_ms`) for which the ledger said no more.
    exhausted_for: Option<i64>,
    /// The refill in flight, if any.
    refill: Option<Refill>,
    /// Handouts in the current and the previous second, for sizing batches.
    demand: Demand,
    /// Requests waiting for the refill in flight.
    waiting: u32,
    /// Recent polls of the mount (observed_at, free, limit), oldest first.
    polls: VecDeque<(i64, u32, Option<u32>)>,
}

struct Lease {
    left: u32,
    expires_ms: i64,
}

#[derive(Clone)]
struct Refill {
    started_ms: i64,
    done: Arc<Notify>,
}

#[derive(Default)]
struct Demand {
    second: i64,
    this_second: u32,
    last_second: u32,
}

impl Demand {
    fn record(&mut self, now_ms: i64) {
        self.roll(now_ms);
        self.this_second = self.this_second.saturating_add(1);
    }

    fn roll(&mut self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        if second != self.second {
            self.last_second = if second == self.second + 1 {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second = second;
        }
    }

    /// Handouts over the last second or so.
    fn recent(&mut self, now_ms: i64) -> u32 {
        self.roll(now_ms);
        self.this_second.max(self.last_second)
    }
}

impl PoolState {
    /// Remembers a poll, and forgets those older than `max_age_ms`. An older
    /// poll bounds grants only while the mount's limit is the same: after an
    /// operator lowers it, the old free slots are not there any more.
    ///
    /// Of the polls within `max_age_ms`, the oldest is kept and the newest
    /// fill the rest: in a crowd, the oldest poll (taken before it began)
    /// is the one that does not count its players twice, and the newest
    /// know about the listeners who left.
    fn note_poll(&mut self, poll: &Observed<'_>, now_ms: i64, max_age_ms: i64) {
        if self
            .polls
            .back()
            .is_none_or(|&(t, _, _)| t < poll.observed_at_ms)
        {
            self.polls
                .push_back((poll.observed_at_ms, poll.free_slots, poll.limit));
        }
        self.polls.retain(|&(_, _, limit)| limit == poll.limit);
        while self
            .polls
            .front()
            .is_some_and(|&(t, _, _)| now_ms - t > max_age_ms)
        {
            self.polls.pop_front();
        }
        while self.polls.len() > POLLS_KEPT {
            self.polls.remove(1);
        }
    }

    fn drop_expired(&mut self, now_ms: i64) {
        // Strictly before the expiry: `now_ms` is a whole millisecond that may
        // lag the real time by up to one.
        // Leases are kept soonest expiry first, and one that runs out is
        // removed when it does: the expired ones are at the front.
        while let Some(lease) = self.leases.front()
            && lease.expires_ms <= now_ms
        {
            self.held -= lease.left;
            self.leases.pop_front();
        }
    }

    fn held(&self) -> u32 {
        self.held
    }

    /// Hands out one leased slot, soonest expiry first.
    fn hand_out(&mut self, now_ms: i64) -> bool {
        self.drop_expired(now_ms);
        let Some(lease) = self.leases.front_mut() else {
            return false;
        };
        lease.left -= 1;
        if lease.left == 0 {
            self.leases.pop_front();
        }
        self.held -= 1;
        self.demand.record(now_ms);
        true
    }

    /// Adds what the ledger granted for the poll observed at `observed_at_ms`,
    /// and remembers when it said no slot is left for that poll.
    fn take_grant(&mut self, grant: Grant, expires_ms: i64, observed_at_ms: i64) {
        self.add(grant.granted, expires_ms);
        if grant.remaining == 0 {
            self.exhausted_for = Some(observed_at_ms);
        }
    }

    fn add(&mut self, granted: u32, expires_ms: i64) {
        // A pool never holds more than u32::MAX: what would overflow is not
        // taken (the ledger grants at most a few thousand a call).
        let granted = granted.min(u32::MAX - self.held);
        if granted == 0 {
            return;
        }
        self.held += granted;
        let at = self.leases.partition_point(|l| l.expires_ms <= expires_ms);
        self.leases.insert(
            at,
            Lease {
                left: granted,
                expires_ms,
            },
        );
    }
}

impl SlotPool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots leased and not yet handed out.
    pub fn held(&self, now_ms: i64) -> u32 {
        let mut state = self.lock();
        state.drop_expired(now_ms);
        state.held()
    }

    /// Hands out a slot this pool already holds, without asking the ledger:
    /// a leased slot is good for any player until its lease expires.
    pub fn take_held(&self, now_ms: i64) -> bool {
        self.lock().hand_out(now_ms)
    }

    /// Whether the ledger said this poll has no slot left for this replica,
    /// and none are held: a request need not try the mount.
    pub fn exhausted(&self, observed_at_ms: i64, now_ms: i64) -> bool {
        let mut state = self.lock();
        state.drop_expired(now_ms);
        state.leases.is_empty() && state.exhausted_for == Some(observed_at_ms)
    }
}

type Pools = HashMap<String, HashMap<String, [Arc<SlotPool>; 2], ByName>, ByName>;
type ByName = std::hash::BuildHasherDefault<balancer_geo::KeyHasher>;

/// This replica's reservations.
pub struct Reservations {
    store: Arc<dyn SlotStore>,
    mode: Mode,
    timings: Timings,
    breaker_until_ms: Arc<AtomicI64>,
    replicas: AtomicU32,
    /// By server, then mount, one per tier: looked up by `&str` and hashed
    /// with a multiply per word (the names come from the fleet config, not
    /// from players), so attaching the pools to every mount of every
    /// snapshot allocates nothing and costs little.
    pools: Mutex<Pools>,
    metrics: Option<crate::metrics::RedirectorMetrics>,
}

impl Reservations {
    /// Reservations leased from `store`; `mode` says whether other replicas share it.
    pub fn new(store: Arc<dyn SlotStore>, mode: Mode, timings: Timings) -> Self {
        Reservations {
            store,
            mode,
            timings,
            breaker_until_ms: Arc::new(AtomicI64::new(0)),
            replicas: AtomicU32::new(1),
            pools: Mutex::new(Pools::default()),
            metrics: None,
        }
    }

    /// The only replica, leasing from an in-process ledger (standalone mode,
    /// and tests).
    pub fn alone(timings: Timings) -> Self {
        Reservations::new(
            Arc::new(balancer_store::LocalSlots::new()),
            Mode::Alone,
            timings,
        )
    }

    /// Counts reservations and Redis errors in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::RedirectorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How slots are counted.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Tells the pool of every poll a snapshot brings, not only those seen at
    /// a refill, so that a pool first used late (the headroom's, when a crowd
    /// reaches the soft limits) still knows the older polls that do not count
    /// the players who connected since.
    pub fn note_poll(&self, pool: &SlotPool, poll: &Observed<'_>, now_ms: i64) {
        pool.lock()
            .note_poll(poll, now_ms, millis(self.timings.max_age));
    }

    /// The pool of a mount's slots of `tier`, created on first use and kept
    /// across snapshots. Both tiers of a mount lease from the same ledger
    /// entry, each against its own bound (the soft tier's is lower), so
    /// every lease counts against the mount's free slots whichever tier took it.
    pub fn pool(&self, server: &str, mount: &str, tier: Tier) -> Arc<SlotPool> {
        let [soft, headroom] = self.pools(server, mount);
        match tier {
            Tier::Soft => soft,
            Tier::Headroom => headroom,
        }
    }

    /// [`Reservations::pool`] of both tiers (soft, headroom), in one lookup.
    pub fn pools(&self, server: &str, mount: &str) -> [Arc<SlotPool>; 2] {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(both) = pools.get(server).and_then(|mounts| mounts.get(mount)) {
            return both.clone();
        }
        pools
            .entry(server.to_owned())
            .or_default()
            .entry(mount.to_owned())
            .or_default()
            .clone()
    }

    /// Records how many replicas are alive (from the heartbeat), for the fair
    /// share of the last slots.
    pub fn set_replicas(&self, replicas: u32) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    /// Whether Redis failed recently (leases held are still handed out).
    pub fn redis_trouble(&self, now_ms: i64) -> bool {
        self.mode == Mode::Shared && now_ms < self.breaker_until_ms.load(Ordering::Relaxed)
    }

    /// Takes one slot of `mount` for a redirect; false if none can be had now.
    pub async fn take(&self, pool: &Arc<SlotPool>, mount: &Observed<'_>, now_ms: i64) -> bool {
        let granted = self.take_slot(pool, mount, now_ms).await;
        if let Some(metrics) = &self.metrics {
            metrics.reservation(granted);
        }
        granted
    }

    async fn take_slot(&self, pool: &Arc<SlotPool>, mount: &Observed<'_>, mut now_ms: i64) -> bool {
        for attempt in 0..2 {
            let (refill, wait) = {
                let mut state = pool.lock();
                if state.hand_out(now_ms) {
                    self.refill_if_low(pool, &mut state, mount, now_ms);
                    return true;
                }
                if attempt == 1 || state.exhausted_for == Some(mount.observed_at_ms) {
                    return false;
                }
                let refill = match &state.refill {
                    Some(refill) => refill.clone(),
                    None => match self.start_refill(pool, &mut state, mount, now_ms) {
                        Some(refill) => refill,
                        None => return false,
                    },
                };
                let wait = refill.started_ms + millis(RESERVE_TIMEOUT) - now_ms;
                if wait <= 0 {
                    // Redis is slow: the refill lands in the pool when it
                    // answers; this request tries another mount.
                    return false;
                }
                state.waiting += 1;
                (refill, wait)
            };
            // Counted as waiting until this iteration ends, or the request is
            // dropped mid-wait (a player thread drops a request it tried to
            // answer without waiting, and asks again from a task).
            let _waiting = Waiting(pool);
            let notified = refill.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Registered before looking, so the refill's notification cannot
            // slip by between the look and the wait.
            let finished = pool
                .lock()
                .refill
                .as_ref()
                .is_none_or(|r| !Arc::ptr_eq(&r.done, &refill.done));
            if !finished {
                let waited_from = tokio::time::Instant::now();
                let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                let _ = tokio::time::timeout(wait, notified).await;
                // Counted once waited: a player thread's first try, dropped
                // at the wait, is not a wait.
                if let Some(metrics) = &self.metrics {
                    metrics.reservation_waits.inc();
                }
                // Leases are judged at the moment of the handout, after the wait.
                // Rounded up, so a lease is never judged younger than it is.
                now_ms += millis(waited_from.elapsed() + Duration::from_micros(999));
            }
        }
        false
    }

    /// Starts a refill before the pool runs dry: when what it holds is below
    /// three quarters of what its recent demand uses in a lease's life, so
    /// that the slots held are always fresh enough to ride out an outage.
    fn refill_if_low(
        &self,
        pool: &Arc<SlotPool>,
        state: &mut PoolState,
        mount: &Observed<'_>,
        now_ms: i64,
    ) {
        if state.refill.is_some() || state.exhausted_for == Some(mount.observed_at_ms) {
            return;
        }
        let wanted = self.lease_demand(state.demand.recent(now_ms));
        if wanted > MIN_BATCH && state.held() < wanted / 4 * 3 {
            let _ = self.start_refill(pool, state, mount, now_ms);
        }
    }

    /// What `per_second` handouts a second use over a lease's life: the batch
    /// that lets the pool ride out a Redis outage of that length.
    fn lease_demand(&self, per_second: u32) -> u32 {
        let per_lease = u64::from(per_second) * self.timings.lease.as_millis() as u64 / 1000;
        u32::try_from(per_lease).unwrap_or(u32::MAX)
    }

    /// Asks the ledger for a batch in a task of its own, so that the answer
    /// reaches the pool however long it takes. None while the breaker is open.
    fn start_refill(
        &self,
        pool: &Arc<SlotPool>,
        state: &mut PoolState,
        mount: &Observed<'_>,
        now_ms: i64,
    ) -> Option<Refill> {
        if self.redis_trouble(now_ms) {
            return None;
        }
        // Top the pool up to a lease's worth of recent demand.
        let want = self
            .lease_demand(state.demand.recent(now_ms))
            .saturating_sub(state.held())
            .max(state.waiting + 1)
            .clamp(MIN_BATCH, MAX_BATCH);
        let grace_ms = millis(self.timings.grace);
        state.note_poll(mount, now_ms, millis(self.timings.max_age));
        let request = ReserveRequest {
            server: mount.server.clone(),
            mount: mount.mount.clone(),
            now_ms,
            polls: state
                .polls
                .iter()
                .map(|&(t, free, _)| PollSeen {
                    window_start_ms: t - grace_ms,
                    free_slots: free,
                })
                .collect(),
            want,
            replicas: self.replicas.load(Ordering::Relaxed),
            lease: self.timings.lease,
            ttl: self.timings.ttl(),
        };
        let refill = Refill {
            started_ms: now_ms,
            done: Arc::new(Notify::new()),
        };
        state.refill = Some(refill.clone());
        let (pool, breaker, metrics) = (
            pool.clone(),
            self.breaker_until_ms.clone(),
            self.metrics.clone(),
        );
        let (observed_at_ms, expires_ms) = (mount.observed_at_ms, request.expires_ms());
        let call = self.store.reserve(request);
        let for_waiters = refill.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::pin!(call);
            let on_time = tokio::time::timeout(REFILL_SLOW, &mut call).await;
            let failed_at_ms = now_ms + millis(started.elapsed());
            let late = match on_time {
                Ok(result) => {
                    let mut state = pool.lock();
                    state.refill = None;
                    match result {
                        Ok(grant) => state.take_grant(grant, expires_ms, observed_at_ms),
                        Err(e) => open_breaker(&breaker, metrics.as_ref(), &e, failed_at_ms),
                    }
                    None
                }
                Err(_) => {
                    // Redis is slow or gone: let the pool ask again once the
                    // breaker closes, and keep listening for this answer.
                    pool.lock().refill = None;
                    let slow = StoreError::Timeout(REFILL_SLOW);
                    open_breaker(&breaker, metrics.as_ref(), &slow, failed_at_ms);
                    Some(call)
                }
            };
            refill.done.notify_waiters();
            // Redis may have run the script, or may run it when it thaws: the
            // ledger then counts the grant until its lease expires, so it is
            // of use to players until then, and lost if dropped. The store
            // gives up on the answer by then.
            if let Some(call) = late
                && let Ok(grant) = call.await
            {
                tracing::debug!(granted = grant.granted, "a late grant reached the pool");
                pool.lock().take_grant(grant, expires_ms, observed_at_ms);
            }
        });
        Some(for_waiters)
    }
}

fn open_breaker(
    breaker: &AtomicI64,
    metrics: Option<&crate::metrics::RedirectorMetrics>,
    error: &StoreError,
    now_ms: i64,
) {
    if let Some(metrics) = metrics {
        metrics.redis_errors.inc();
    }
    let until = now_ms + millis(BREAKER_OPEN);
    if breaker.swap(until, Ordering::Relaxed) < now_ms {
        tracing::warn!(%error, "cannot lease slots from Redis; serving from the leases held");
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One request waiting for a pool's refill; the count drops with it.
struct Waiting<'a>(&'a SlotPool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.waiting = state.waiting.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use balancer_store::SlotLedger;

    use super::*;

    /// A ledger that answers after `delay`, counts calls, and can be down.
    struct Ledger {
        ledger: Mutex<SlotLedger>,
        calls: AtomicUsize,
        delay: Duration,
        down: std::sync::atomic::AtomicBool,
    }

    impl Ledger {
        fn new(delay: Duration) -> Arc<Ledger> {
            Arc::new(Ledger {
                ledger: Mutex::new(SlotLedger::new()),
                calls: AtomicUsize::new(0),
                delay,
                down: false.into(),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// The store a replica holds: a handle on the shared test ledger.
    struct Handle(Arc<Ledger>);

    impl SlotStore for Handle {
        fn reserve(
            &self,
            request: ReserveRequest,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Grant, StoreError>> + Send>>
        {
            let ledger = self.0.clone();
            Box::pin(async move {
                ledger.calls.fetch_add(1, Ordering::SeqCst);
                if ledger.down.load(Ordering::SeqCst) {
                    return Err(StoreError::Timeout(Duration::ZERO));
                }
                tokio::time::sleep(ledger.delay).await;
                let grant = ledger
                    .ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .reserve(&request);
                Ok(grant)
            })
        }
    }

    #[test]
    fn the_oldest_fresh_poll_is_kept_beside_the_newest() {
        let (server, mount) = (Arc::from("s"), Arc::from("/m"));
        let poll = |t: i64, free: u32| Observed {
            server: &server,
            mount: &mount,
            observed_at_ms: t,
            free_slots: free,
            limit: Some(100),
        };
        let mut state = PoolState::default();
        // A poll every 250 ms for 5 s: before a crowd, 100 free; then fewer.
        for i in 0..20 {
            let t = 1_000_000 + i * 250;
            state.note_poll(&poll(t, 100 - i as u32 * 5), t, 10_000);
        }
        let times: Vec<i64> = state.polls.iter().map(|p| p.0).collect();
        assert_eq!(times.len(), POLLS_KEPT);
        assert_eq!(times[0], 1_000_000, "the poll from before the crowd stays");
        assert_eq!(
            times[POLLS_KEPT - 1],
            1_000_000 + 19 * 250,
            "and the newest"
        );
        // Once it is older than the data may be, it goes.
        let late = 1_000_000 + 10_500;
        state.note_poll(&poll(late, 5), late, 10_000);
        assert!(state.polls.iter().all(|p| late - p.0 <= 10_000));
        // A new limit makes the old polls worthless.
        let changed = Observed {
            limit: Some(50),
            ..poll(late + 250, 10)
        };
        state.note_poll(&changed, late + 250, 10_000);
        assert_eq!(state.polls.len(), 1);
    }

    #[test]
    fn the_held_count_is_the_sum_of_the_leases_through_any_changes() {
        let mut rng = fastrand::Rng::with_seed(13);
        let mut state = PoolState::default();
        let mut now = T0;
        for _ in 0..20_000 {
            match rng.u8(0..10) {
                0 => state.add(rng.u32(0..50), now + rng.i64(0..3_000)),
                1 => now += rng.i64(0..400),
                2 => state.drop_expired(now),
                _ => {
                    let _ = state.hand_out(now);
                }
            }
            let sum: u32 = state.leases.iter().map(|l| l.left).sum();
            assert_eq!(state.held(), sum);
            assert!(state.leases.iter().all(|l| l.left > 0));
        }
        // Near the top of the range nothing overflows, and what fits is held.
        state.add(u32::MAX - state.held() - 1, now + 10_000);
        state.add(7, now + 10_000);
        assert_eq!(state.held(), u32::MAX);
        let sum = state.leases.iter().map(|l| u64::from(l.left)).sum::<u64>();
        assert_eq!(sum, u64::from(u32::MAX));
    }

    const TIMINGS: Timings = Timings {
        grace: Duration::from_secs(1),
        lease: Duration::from_secs(2),
        max_age: Duration::from_secs(10),
    };
    const T0: i64 = 1_800_000_000_000;
    static SERVER: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("s"));
    static MOUNT: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("/m"));

    fn observed(at: i64, free: u32) -> Observed<'static> {
        Observed {
            server: &SERVER,
            mount: &MOUNT,
            observed_at_ms: at,
            free_slots: free,
            limit: Some(100),
        }
    }

    fn shared(ledger: &Arc<Ledger>) -> Arc<Reservations> {
        Arc::new(Reservations::new(
            Arc::new(Handle(ledger.clone())),
            Mode::Shared,
            TIMINGS,
        ))
    }

    #[tokio::test]
    async fn alone_never_exceeds_what_the_poll_saw() {
        let r = Reservations::alone(TIMINGS);
        let pool = r.pool("s", "/m", Tier::Soft);
        let mut granted = 0;
        for i in 0..20 {
            granted += u32::from(r.take(&pool, &observed(T0, 7), T0 + 100 + i).await);
        }
        assert_eq!(granted, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waits_for_a_lease_is_counted_once() {
        use futures_util::FutureExt as _;
        let ledger = Ledger::new(Duration::from_millis(5));
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::RedirectorMetrics::register(&mut registry);
        let r = Reservations::new(Arc::new(Handle(ledger.clone())), Mode::Shared, TIMINGS)
            .with_metrics(metrics.clone());
        let poll = observed(T0, 1000);
        // A first try dropped at the wait (as a player thread does before
        // handing the request to a task) is not counted.
        let other = r.pool("s", "/other", Tier::Soft);
        assert!(r.take(&other, &poll, T0 + 100).now_or_never().is_none());
        assert_eq!(metrics.reservation_waits.get(), 0);
        // An empty pool: the request waits for the refill, once.
        let pool = r.pool("s", "/m", Tier::Soft);
        assert!(r.take(&pool, &poll, T0 + 100).await);
        assert_eq!(metrics.reservation_waits.get(), 1);
        // The batch is held now: the next request takes a slot at once.
        assert!(r.take(&pool, &poll, T0 + 101).await);
        assert_eq!(metrics.reservation_waits.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_refill_and_grants_add_up() {
        let ledger = Ledger::new(Duration::from_millis(5));
        let r = shared(&ledger);
        let pool = r.pool("s", "/m", Tier::Soft);
        let poll = observed(T0, 1000);
        let takers: Vec<_> = (0..50)
            .map(|_| {
                let (r, pool) = (r.clone(), pool.clone());
                tokio::spawn(async move { r.take(&pool, &poll, T0 + 100).await })
            })
            .collect();
        let mut granted = 0;
        for taker in takers {
            granted += u32::from(taker.await.unwrap_or(false));
        }
        // The first refill asks for a batch of 4 and is shared by everyone
        // waiting; those it cannot serve start the next one: a few calls, not 50.
        assert!(ledger.calls() <= 4, "{} calls", ledger.calls());
        let leased = ledger
            .ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserved("s", "/m", 0);
        let held = pool.held(T0 + 200);
        assert_eq!(
            leased,
            granted + held,
            "every leased slot is handed out or held: none overwritten"
        );
        assert!(granted >= 4, "{granted}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_poll_is_not_asked_again_until_a_newer_one() {
        let ledger = Ledger::new(Duration::ZERO);
        let r = shared(&ledger);
        let pool = r.pool("s", "/m", Tier::Soft);
        let mut granted = 0;
        for i in 0..100 {
            granted += u32::from(r.take(&pool, &observed(T0, 3), T0 + 100 + i).await);
        }
        assert_eq!(granted, 3);
        let calls = ledger.calls();
        assert!(calls <= 3, "{calls} calls for 3 slots");
        for i in 0..100 {
            assert!(!r.take(&pool, &observed(T0, 3), T0 + 300 + i).await);
        }
        assert_eq!(ledger.calls(), calls, "refused without asking Redis");
        // A newer poll (its window after the leases expired) is asked again.
        assert!(r.take(&pool, &observed(T0 + 4000, 3), T0 + 4100).await);
        assert_eq!(ledger.calls(), calls + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_that_arrives_after_the_wait_still_lands_in_the_pool() {
        let ledger = Ledger::new(RESERVE_TIMEOUT * 3);
        let r = shared(&ledger);
        let pool = r.pool("s", "/m", Tier::Soft);
        assert!(
            !r.take(&pool, &observed(T0, 100), T0).await,
            "Redis answers after the request stopped waiting"
        );
        tokio::time::sleep(RESERVE_TIMEOUT * 3).await;
        assert_eq!(pool.held(T0 + 100), MIN_BATCH, "the late grant is kept");
        assert!(r.take(&pool, &observed(T0, 100), T0 + 100).await);
        assert_eq!(ledger.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_answered_after_the_call_counted_as_failed_still_lands() {
        // Redis frozen for 1.5 s (of a 2 s lease): the ledger records the
        // grant when it thaws.
        let ledger = Ledger::new(Duration::from_millis(1500));
        let r = shared(&ledger);
        let pool = r.pool("s", "/m", Tier::Soft);
        assert!(!r.take(&pool, &observed(T0, 100), T0).await);
        tokio::time::sleep(REFILL_SLOW + Duration::from_millis(1)).await;
        assert!(
            r.redis_trouble(T0 + millis(REFILL_SLOW) + 1),
            "an unanswered call opens the breaker"
        );
        assert!(
            pool.lock().refill.is_none(),
            "the pool may ask again once the breaker closes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            pool.held(T0 + 1600),
            MIN_BATCH,
            "the grant counted in the ledger reaches the pool"
        );
        assert_eq!(ledger.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_handed_out_until_they_expire_also_with_redis_down() {
        let ledger = Ledger::new(Duration::ZERO);
        let r = shared(&ledger);
        let pool = r.pool("s", "/m", Tier::Soft);
        assert!(r.take(&pool, &observed(T0, 100), T0).await);
        ledger.down.store(true, Ordering::SeqCst);
        // Redis is gone: the leased batch is still handed out, and no more.
        let mut granted = 1;
        for i in 0..10 {
            granted += u32::from(r.take(&pool, &observed(T0, 100), T0 + 10 + i).await);
        }
        assert_eq!(granted, MIN_BATCH);
        assert!(r.redis_trouble(T0 + 20));
        ledger.down.store(false, Ordering::SeqCst);
        // Back, and a new batch; it expires with its lease.
        let later = T0 + 1000;
        assert!(r.take(&pool, &observed(T0, 100), later).await);
        ledger.down.store(true, Ordering::SeqCst);
        let expiry = later + millis(TIMINGS.lease);
        assert!(r.take(&pool, &observed(T0, 100), expiry - 1).await);
        assert!(
            !r.take(&pool, &observed(T0, 100), expiry).await,
            "never after the lease's end"
        );
    }
}
