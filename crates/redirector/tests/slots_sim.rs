//! A deterministic simulation of slot accounting: several replicas (the real
//! `Reservations`) leasing from one ledger (`SlotLedger`, the model of the
//! Redis script that `balancer-store`'s tests compare with the script itself
//! on a real redis-server), under random crowds, Redis latency, freezes,
//! outages, calls that time out after Redis ran them, restarts that lose the
//! ledger, and replicas that join and leave. Time is tokio's paused clock.
//!
//! What it checks: a player who connects never finds the mount at its limit.
//! Players connect at a random moment within the connect grace, often at its
//! very end (the worst case), and some never connect at all. A poll counts
//! the players connected at its time. So the check holds only if no poll's
//! free slots were handed out twice.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer_store::{Grant, ReserveRequest, SlotLedger, SlotStore, StoreError};
use icecast_redirector::reserve::{Mode, Observed, Reservations, SlotPool, Timings};
use icecast_redirector::view::Tier;
use tokio::time::{Instant, sleep};

const GRACE: Duration = Duration::from_millis(1000);
const LEASE: Duration = Duration::from_millis(800);
const MAX_AGE_MS: i64 = 4000;
/// The real store bounds every call with its operation timeout.
const STORE_TIMEOUT: Duration = Duration::from_millis(500);
const EPOCH_MS: i64 = 1_800_000_000_000;

/// How the simulated Redis behaves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisHealth {
    Fast,
    Slow,
    /// SIGSTOP: calls queue and run when it thaws.
    Frozen,
    /// Killed: calls fail at once.
    Down,
}

struct SimRedis {
    ledger: SlotLedger,
    health: RedisHealth,
    thaw: Option<Instant>,
    rng: fastrand::Rng,
    /// Calls that ran in the ledger but whose caller got an error.
    ran_then_failed: u64,
    /// Every positive grant: when it ran, and the window start and free slots
    /// of the poll that bound it.
    grants: Vec<(i64, i64, u32)>,
    /// The clock's origin.
    start: Instant,
}

#[derive(Clone)]
struct SimStore {
    redis: Arc<Mutex<SimRedis>>,
}

fn now_ms(start: Instant) -> i64 {
    EPOCH_MS + i64::try_from(start.elapsed().as_millis()).unwrap()
}

impl SlotStore for SimStore {
    fn reserve(
        &self,
        request: ReserveRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, StoreError>> + Send>> {
        let redis = self.redis.clone();
        Box::pin(async move {
            let (health, before, after, lose_answer) = {
                let mut r = redis.lock().unwrap();
                let (before, after) = match r.health {
                    RedisHealth::Slow => (r.rng.u64(20..200), r.rng.u64(0..100)),
                    _ => (r.rng.u64(0..2), r.rng.u64(0..2)),
                };
                let lose = r.rng.u32(0..50) == 0;
                (r.health, before, after, lose)
            };
            if health == RedisHealth::Down {
                return Err(StoreError::Timeout(STORE_TIMEOUT));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            // Redis runs the call whether or not the caller still waits.
            let runs = redis.clone();
            tokio::spawn(async move {
                let redis = runs;
                sleep(Duration::from_millis(before)).await;
                let thaw = redis.lock().unwrap().thaw;
                if let Some(thaw) = thaw {
                    tokio::time::sleep_until(thaw).await;
                }
                let grant = {
                    let mut r = redis.lock().unwrap();
                    if r.health == RedisHealth::Down {
                        return;
                    }
                    // The script reads the caller's clock from its arguments.
                    let (grant, bound) = r.ledger.reserve_against(&request);
                    if let Some(poll) = bound {
                        let ran_at = now_ms(r.start);
                        r.grants
                            .push((ran_at, poll.window_start_ms, poll.free_slots));
                    }
                    grant
                };
                sleep(Duration::from_millis(after)).await;
                let _ = tx.send(grant);
            });
            match tokio::time::timeout(STORE_TIMEOUT, rx).await {
                Ok(Ok(grant)) if !lose_answer => Ok(grant),
                Ok(Ok(_)) => {
                    // The answer was lost on the way back: it ran, the caller errs.
                    redis.lock().unwrap().ran_then_failed += 1;
                    Err(StoreError::Timeout(STORE_TIMEOUT))
                }
                _ => Err(StoreError::Timeout(STORE_TIMEOUT)),
            }
        })
    }
}

/// One replica and what it knows of the mount.
struct Replica {
    reservations: Arc<Reservations>,
    pool: Arc<SlotPool>,
    /// The last poll it has seen: (observed_at, free).
    view: Option<(i64, u32)>,
    alive: bool,
}

struct Mount {
    limit: u32,
    /// When each slot was handed out.
    handouts: Vec<i64>,
    /// Leave times (ms) of the connected players.
    connected: Vec<i64>,
    overbooked: u64,
    connects: u64,
    handed_out: u64,
    refused: u64,
    /// Refusals while the mount had room (for the utilisation report).
    refused_with_room: u64,
}

#[derive(Debug, Default)]
struct Stats {
    /// Grants whose poll saw fewer free slots than were handed out in its window.
    overbooked_polls: u64,
    arrivals: u64,
    handed_out: u64,
    connects: u64,
    overbooked: u64,
    refused_with_room: u64,
    ran_then_failed: u64,
    restarts: u64,
    peak_fill: f64,
}

async fn simulate(seed: u64) -> Stats {
    let start = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let redis = Arc::new(Mutex::new(SimRedis {
        ledger: SlotLedger::new(),
        health: RedisHealth::Fast,
        thaw: None,
        rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
        ran_then_failed: 0,
        grants: Vec::new(),
        start,
    }));
    let store = SimStore {
        redis: redis.clone(),
    };
    let timings = Timings {
        grace: GRACE,
        lease: LEASE,
        max_age: Duration::from_millis(u64::try_from(MAX_AGE_MS).unwrap()),
    };
    let new_replica = move |store: &SimStore| {
        let reservations = Arc::new(Reservations::new(
            Arc::new(store.clone()),
            Mode::Shared,
            timings,
        ));
        let pool = reservations.pool("s", "/m", Tier::Soft);
        Replica {
            reservations,
            pool,
            view: None,
            alive: true,
        }
    };
    let replicas: Arc<Mutex<Vec<Replica>>> = Arc::new(Mutex::new(
        (0..rng.usize(2..5)).map(|_| new_replica(&store)).collect(),
    ));
    let mount = Arc::new(Mutex::new(Mount {
        limit: rng.u32(3..150),
        handouts: Vec::new(),
        connected: Vec::new(),
        overbooked: 0,
        connects: 0,
        handed_out: 0,
        refused: 0,
        refused_with_room: 0,
    }));
    let duration = Duration::from_secs(20);
    let interval = Duration::from_millis(rng.u64(200..1500));
    let mut peak_fill: f64 = 0.0;

    // The poller: counts the connected players, publishes to each replica
    // after its own delay, and cannot publish while Redis is frozen or down.
    let poller = {
        let (mount, replicas, redis) = (mount.clone(), replicas.clone(), redis.clone());
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xb011);
        tokio::spawn(async move {
            while start.elapsed() < duration {
                let at = now_ms(start);
                let free = {
                    let mut m = mount.lock().unwrap();
                    m.connected.retain(|&leave| leave > at);
                    m.limit - u32::try_from(m.connected.len()).unwrap()
                };
                let health = redis.lock().unwrap().health;
                if matches!(health, RedisHealth::Fast | RedisHealth::Slow) {
                    let count = replicas.lock().unwrap().len();
                    for index in 0..count {
                        let delay = match rng.u32(0..10) {
                            0 => rng.u64(200..1500),
                            _ => rng.u64(0..30),
                        };
                        let replicas = replicas.clone();
                        tokio::spawn(async move {
                            sleep(Duration::from_millis(delay)).await;
                            let mut all = replicas.lock().unwrap();
                            let r = &mut all[index];
                            // Versions only grow: a late message never replaces a newer view.
                            if r.view.is_none_or(|(t, _)| t < at) {
                                r.view = Some((at, free));
                            }
                        });
                    }
                }
                sleep(interval).await;
            }
        })
    };

    // Trouble: Redis slow, frozen, killed, restarted empty; replicas joining and leaving.
    let chaos = {
        let (redis, replicas, store) = (redis.clone(), replicas.clone(), store.clone());
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xc4a05);
        tokio::spawn(async move {
            let mut restarts = 0;
            while start.elapsed() < duration {
                sleep(Duration::from_millis(rng.u64(300..3000))).await;
                match rng.u32(0..7) {
                    0 => redis.lock().unwrap().health = RedisHealth::Slow,
                    1 => {
                        let length = Duration::from_millis(rng.u64(100..2500));
                        {
                            let mut r = redis.lock().unwrap();
                            r.health = RedisHealth::Frozen;
                            r.thaw = Some(Instant::now() + length);
                        }
                        sleep(length).await;
                        let mut r = redis.lock().unwrap();
                        r.health = RedisHealth::Fast;
                        r.thaw = None;
                    }
                    2 => {
                        redis.lock().unwrap().health = RedisHealth::Down;
                        sleep(Duration::from_millis(rng.u64(100..2000))).await;
                        let mut r = redis.lock().unwrap();
                        // Back empty: the ledger and its marker are gone. The
                        // poller (which published before) marks history from now.
                        r.ledger = SlotLedger::lost();
                        if rng.bool() {
                            r.ledger.mark_history_since(now_ms(start));
                        }
                        r.health = RedisHealth::Fast;
                        restarts += 1;
                    }
                    3 => {
                        let mut all = replicas.lock().unwrap();
                        let replica = new_replica(&store);
                        replica.reservations.set_replicas(
                            u32::try_from(all.iter().filter(|r| r.alive).count() + 1).unwrap(),
                        );
                        all.push(replica);
                    }
                    4 => {
                        let mut all = replicas.lock().unwrap();
                        let alive: Vec<usize> = (0..all.len()).filter(|&i| all[i].alive).collect();
                        if alive.len() > 1 {
                            all[alive[rng.usize(0..alive.len())]].alive = false;
                        }
                    }
                    _ => redis.lock().unwrap().health = RedisHealth::Fast,
                }
                // The heartbeat: every replica learns how many are alive.
                let all = replicas.lock().unwrap();
                let alive = u32::try_from(all.iter().filter(|r| r.alive).count()).unwrap();
                for r in all.iter() {
                    r.reservations.set_replicas(alive);
                }
            }
            restarts
        })
    };

    // Players: crowds far above capacity, a few hundred at a time, and quiet spells.
    let mut players = Vec::new();
    let mut arrivals = 0;
    while start.elapsed() < duration {
        let crowd = rng.u32(1..300);
        for _ in 0..crowd {
            arrivals += 1;
            let chosen = {
                let all = replicas.lock().unwrap();
                let alive: Vec<usize> = (0..all.len()).filter(|&i| all[i].alive).collect();
                let r = &all[alive[rng.usize(0..alive.len())]];
                r.view.map(|v| (r.reservations.clone(), r.pool.clone(), v))
            };
            let Some((reservations, pool, (observed_at, free))) = chosen else {
                continue;
            };
            let connect_after = match rng.u32(0..4) {
                0 => None, // a probe: never connects
                1 => Some(GRACE.as_millis() as u64),
                _ => Some(rng.u64(0..=GRACE.as_millis() as u64)),
            };
            let stay = rng.u64(500..30_000);
            let limit = mount.lock().unwrap().limit;
            let mount = mount.clone();
            players.push(tokio::spawn(async move {
                let now = now_ms(start);
                // The selector's staleness rule.
                let usable = now - observed_at <= MAX_AGE_MS && free > 0;
                let (server, mount_path): (Arc<str>, Arc<str>) = ("s".into(), "/m".into());
                let observed = Observed {
                    server: &server,
                    mount: &mount_path,
                    observed_at_ms: observed_at,
                    free_slots: free,
                    limit: Some(limit),
                };
                let granted = usable && reservations.take(&pool, &observed, now).await;
                {
                    let mut m = mount.lock().unwrap();
                    if granted {
                        m.handed_out += 1;
                        m.handouts.push(now_ms(start));
                    } else {
                        m.refused += 1;
                        let at = now_ms(start);
                        let connected = m.connected.iter().filter(|&&l| l > at).count();
                        if (connected as u32) < m.limit / 2 && usable {
                            m.refused_with_room += 1;
                        }
                    }
                }
                let (true, Some(after)) = (granted, connect_after) else {
                    return;
                };
                sleep(Duration::from_millis(after)).await;
                let at = now_ms(start);
                let mut m = mount.lock().unwrap();
                m.connected.retain(|&leave| leave > at);
                m.connects += 1;
                if m.connected.len() as u32 >= m.limit {
                    m.overbooked += 1; // Icecast would answer 403.
                } else {
                    m.connected.push(at + i64::try_from(stay).unwrap());
                }
            }));
        }
        sleep(Duration::from_millis(rng.u64(1..800))).await;
        let m = mount.lock().unwrap();
        peak_fill = peak_fill.max(m.connected.len() as f64 / f64::from(m.limit));
    }
    for player in players {
        player.await.unwrap();
    }
    poller.await.unwrap();
    let restarts = chaos.await.unwrap();
    let m = mount.lock().unwrap();
    let overbooked_polls = overbooked_polls(&redis.lock().unwrap().grants, &m.handouts);
    Stats {
        overbooked_polls,
        arrivals,
        handed_out: m.handed_out,
        connects: m.connects,
        overbooked: m.overbooked,
        refused_with_room: m.refused_with_room,
        ran_then_failed: redis.lock().unwrap().ran_then_failed,
        restarts,
        peak_fill,
    }
}

/// Property 1, checked directly. The last positive grant before any moment
/// counted every lease that could be handed out after its window start, and
/// found them within its poll's free slots. So, for each grant, the slots
/// handed out from its window start until the next grant must not exceed its
/// poll's free slots. This holds whenever players connect.
fn overbooked_polls(grants: &[(i64, i64, u32)], handouts: &[i64]) -> u64 {
    let mut grants = grants.to_vec();
    grants.sort_by_key(|g| g.0);
    let mut handouts = handouts.to_vec();
    handouts.sort_unstable();
    let mut bad = 0;
    for (i, &(ran_at, window_start, free)) in grants.iter().enumerate() {
        let until = grants.get(i + 1).map_or(i64::MAX, |g| g.0);
        let from = handouts.partition_point(|&t| t < window_start);
        let to = handouts.partition_point(|&t| t < until);
        let inside = to.saturating_sub(from);
        if inside > free as usize {
            eprintln!(
                "grant at {ran_at} (window from {window_start}, {free} free): {inside} handed out before {until}"
            );
            bad += 1;
        }
    }
    bad
}

fn run(seed: u64) -> Stats {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(simulate(seed))
}

#[test]
fn no_poll_is_ever_overbooked_in_any_mix_of_trouble() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut total = Stats::default();
    let mut fills = Vec::new();
    for seed in 0..seeds {
        let stats = run(seed);
        assert_eq!(
            (stats.overbooked_polls, stats.overbooked),
            (0, 0),
            "seed {seed}: overbooked: {stats:?}"
        );
        total.arrivals += stats.arrivals;
        total.handed_out += stats.handed_out;
        total.connects += stats.connects;
        total.refused_with_room += stats.refused_with_room;
        total.ran_then_failed += stats.ran_then_failed;
        total.restarts += stats.restarts;
        fills.push(stats.peak_fill);
    }
    fills.sort_by(f64::total_cmp);
    println!(
        "{seeds} runs: {} players, {} redirected, {} connected, 0 found the mount full; \
         {} refused while under half full; {} calls ran in the ledger but failed for the caller; \
         {} Redis restarts; peak fill of the mount: median {:.0}%, 10th percentile {:.0}%",
        total.arrivals,
        total.handed_out,
        total.connects,
        total.refused_with_room,
        total.ran_then_failed,
        total.restarts,
        fills[fills.len() / 2] * 100.0,
        fills[fills.len() / 10] * 100.0,
    );
    assert!(total.ran_then_failed > 0 && total.restarts > 0);
    assert!(
        fills[fills.len() / 2] > 0.75,
        "the sim must reach saturation"
    );
}
