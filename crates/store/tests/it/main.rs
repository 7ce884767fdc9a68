//! The Redis contract against a real redis-server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use balancer_proto::snapshot::v1::{Server, Snapshot};
use balancer_store::{
    Bound, Grant, Keys, PollSeen, REPLICA_ALIVE, RedisStore, ReserveRequest, SlotLedger, StoreError,
};
use balancer_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(300);

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::new(&redis.url(), Keys::default(), TIMEOUT).unwrap()
}

/// Takes the lease as poller "p" and publishes a first snapshot, as a poller
/// does on a new deployment (which also marks the slot ledger complete).
async fn first_publication(store: &RedisStore) {
    assert!(store.hold_lease("p", Duration::from_secs(5)).await.unwrap());
    store
        .publish_snapshot("p", &mut snapshot(), Duration::from_secs(30), 0)
        .await
        .unwrap();
}

fn snapshot() -> Snapshot {
    Snapshot {
        servers: vec![Server {
            name: "a".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn one_lease_holder_at_a_time() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    let ttl = Duration::from_millis(500);
    assert!(store.hold_lease("a", ttl).await.unwrap());
    assert!(
        !store.hold_lease("b", ttl).await.unwrap(),
        "b must wait while a holds it"
    );
    assert!(store.hold_lease("a", ttl).await.unwrap(), "a renews");
    store.release_lease("b").await.unwrap();
    assert!(
        !store.hold_lease("b", ttl).await.unwrap(),
        "b cannot release a's lease"
    );
    store.release_lease("a").await.unwrap();
    assert!(
        store.hold_lease("b", ttl).await.unwrap(),
        "released: b takes it at once"
    );

    // An expired lease (holder died) is taken over.
    let started = Instant::now();
    while !store.hold_lease("c", ttl).await.unwrap() {
        assert!(started.elapsed() < ttl * 4, "lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= ttl / 2);
}

#[tokio::test]
async fn snapshots_are_versioned_fenced_and_expire() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    assert_eq!(store.latest_snapshot().await.unwrap(), None);
    let mut s = snapshot();
    assert!(matches!(
        store
            .publish_snapshot("p1", &mut s, Duration::from_secs(30), 0)
            .await,
        Err(StoreError::NotLeader)
    ));

    assert!(
        store
            .hold_lease("p1", Duration::from_secs(5))
            .await
            .unwrap()
    );
    let v1 = store
        .publish_snapshot("p1", &mut s, Duration::from_secs(30), 0)
        .await
        .unwrap();
    let v2 = store
        .publish_snapshot("p1", &mut s, Duration::from_secs(30), 0)
        .await
        .unwrap();
    assert!(v2 > v1);
    let latest = store.latest_snapshot().await.unwrap().expect("stored");
    assert_eq!(latest.version, v2);
    assert_eq!(latest.servers[0].name, "a");
    let pttl = redis
        .command(&["PTTL", &Keys::default().snapshot()])
        .await
        .unwrap();
    let pttl: i64 = pttl.trim_start_matches(':').parse().unwrap();
    assert!(
        (1..=30_000).contains(&pttl),
        "snapshot must expire, PTTL {pttl}"
    );

    // A poller that lost the lease cannot overwrite the newer one's snapshot.
    store.release_lease("p1").await.unwrap();
    assert!(
        store
            .hold_lease("p2", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(matches!(
        store
            .publish_snapshot("p1", &mut s, Duration::from_secs(30), 0)
            .await,
        Err(StoreError::NotLeader)
    ));
    let v3 = store
        .publish_snapshot("p2", &mut s, Duration::from_secs(30), 0)
        .await
        .unwrap();
    assert!(v3 > v2, "versions keep growing across leaders");
}

#[tokio::test]
async fn every_key_written_is_bounded() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    first_publication(&store).await;
    store.set_drained("a", true).await.unwrap();
    store.set_drained("gone", true).await.unwrap();
    store
        .forget_drains_except(&["a".to_owned()].into())
        .await
        .unwrap();
    assert_eq!(store.drained().await.unwrap(), ["a".to_owned()].into());

    store
        .heartbeat("replica", 1, Duration::from_secs(5))
        .await
        .unwrap();
    store.reserve(&reserve(10_000, 9_000, 5, 2)).await.unwrap();
    let keys = Keys::default();
    let fixed: Vec<String> = keys
        .all()
        .into_iter()
        .filter(|k| k.bound == Bound::Fixed)
        .map(|k| k.name)
        .collect();
    let listed = redis.command(&["KEYS", "*"]).await.unwrap();
    let count: usize = listed.trim_start_matches('*').parse().unwrap();
    assert_eq!(
        count, 7,
        "snapshot, version, lease, drained, replicas, one reservation hash, its marker"
    );
    for key in [
        keys.reservations_since(),
        keys.snapshot(),
        keys.poller_lease(),
        keys.snapshot_version(),
        keys.drained(),
        keys.replicas(),
        keys.reservations("a", "/a.ogg"),
    ] {
        let ttl = redis.command(&["PTTL", &key]).await.unwrap();
        let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
        assert!(
            ttl > 0 || fixed.contains(&key),
            "{key} has no TTL and is not a fixed-size key"
        );
    }
}

fn reserve(now_ms: i64, window_start_ms: i64, free_slots: u32, want: u32) -> ReserveRequest {
    ReserveRequest {
        server: "a".into(),
        mount: "/a.ogg".into(),
        now_ms,
        polls: vec![PollSeen {
            window_start_ms,
            free_slots,
        }],
        want,
        replicas: 1,
        lease: Duration::from_secs(1),
        ttl: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn reservations_never_exceed_what_the_poll_saw() {
    let redis = RedisServer::start().await;
    let (a, b) = (store(&redis), store(&redis));
    // A new deployment: the poller's first publication says there is no history to lose.
    first_publication(&a).await;
    let granted = |store: &RedisStore, r: ReserveRequest| {
        let store = store.clone();
        async move { store.reserve(&r).await.unwrap().granted }
    };
    // A poll at t=9 s saw 5 free; two replicas ask at t=10 s.
    assert_eq!(granted(&a, reserve(10_100, 9_000, 5, 3)).await, 3);
    let rest = b.reserve(&reserve(10_200, 9_000, 5, 3)).await.unwrap();
    assert_eq!(
        rest,
        Grant {
            granted: 2,
            remaining: 0
        },
        "5 in all"
    );
    let last = a.reserve(&reserve(10_300, 9_000, 5, 9)).await.unwrap();
    assert_eq!(last, Grant::default(), "nothing left for that poll");
    // Leases of 1 s from 10.1 s expire at 11.x s: a window starting at 11 s still counts them.
    assert_eq!(granted(&a, reserve(13_100, 11_000, 7, 9)).await, 2);
    // One starting at 12 s does not (those players connected before that
    // poll); it counts only the 2 leased at 13.1 s.
    assert_eq!(granted(&b, reserve(14_000, 12_000, 7, 9)).await, 5);
    // Seconds older than the TTL are forgotten: one field per live second.
    assert_eq!(granted(&b, reserve(60_000, 58_000, 3, 1)).await, 1);
    let key = Keys::default().reservations("a", "/a.ogg");
    assert_eq!(
        redis.command(&["HLEN", &key]).await.unwrap(),
        ":1",
        "only live seconds are kept"
    );
    assert_eq!(a.reserved("a", "/a.ogg", 59_000).await.unwrap(), 1);
    // Many mounts in one round trip, each counted from its own time, as one by one.
    let queries = [
        ("a", "/a.ogg", 59_000),
        ("a", "/a.ogg", 70_000),
        ("nobody", "/none.ogg", 0),
    ];
    let mut one_by_one = Vec::new();
    for (server, mount, since) in queries {
        one_by_one.push(a.reserved(server, mount, since).await.unwrap());
    }
    assert_eq!(one_by_one, [1, 0, 0]);
    assert_eq!(a.reserved_many(&queries).await.unwrap(), one_by_one);
    assert_eq!(a.reserved_many(&[]).await.unwrap(), Vec::<u32>::new());
    // Redis frozen past the operation timeout runs the script when it thaws,
    // and the ledger counts that grant: the answer is still awaited.
    redis.pause();
    let late = tokio::spawn({
        let a = a.clone();
        async move { a.reserve(&reserve(60_001, 58_000, 3, 1)).await }
    });
    tokio::time::sleep(TIMEOUT * 2).await;
    redis.resume();
    assert_eq!(
        late.await.unwrap().unwrap(),
        Grant {
            granted: 1,
            remaining: 1
        },
        "the grant made after the timeout reaches the caller"
    );
    // Not past the lease's life, when the grant is of no use.
    redis.pause();
    let started = std::time::Instant::now();
    let frozen = a.reserve(&reserve(60_002, 58_000, 3, 1)).await;
    let waited = started.elapsed();
    redis.resume();
    assert!(matches!(frozen, Err(StoreError::Timeout(_))), "{frozen:?}");
    let lease = Duration::from_secs(1);
    assert!(
        waited >= lease && waited < lease + Duration::from_millis(300),
        "{waited:?}"
    );
}

/// The Lua script in Redis and `SlotLedger` (the standalone ledger and the
/// simulation's model) give the same answer to every request, across random
/// mounts, windows, replicas and a Redis that loses its keys.
#[tokio::test]
async fn the_script_and_the_in_process_ledger_agree() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    first_publication(&store).await;
    let mut ledger = SlotLedger::lost();
    ledger.mark_history_since(0);
    let mut rng = fastrand::Rng::with_seed(12);
    let mut now: i64 = 1_700_000_000_000;
    let (mut compared, mut granted, mut flushed) = (0, 0u64, 0);
    for step in 0..3000 {
        now += rng.i64(0..400);
        if rng.u32(0..400) == 0 {
            // Redis restarts empty; the next caller finds no marker.
            redis.command(&["FLUSHALL"]).await.unwrap();
            ledger = SlotLedger::lost();
            flushed += 1;
        }
        let request = ReserveRequest {
            server: ["a", "b"][rng.usize(0..2)].into(),
            mount: ["/x.ogg", "/y.mp3"][rng.usize(0..2)].into(),
            now_ms: now,
            polls: (0..rng.usize(1..4))
                .map(|_| PollSeen {
                    window_start_ms: now - rng.i64(0..6000),
                    free_slots: rng.u32(0..60),
                })
                .collect(),
            want: rng.u32(0..40),
            replicas: rng.u32(1..5),
            lease: Duration::from_millis(rng.u64(100..3000)),
            ttl: Duration::from_millis(rng.u64(5000..20_000)),
        };
        let expected = ledger.reserve(&request);
        let got = store.reserve(&request).await.unwrap();
        assert_eq!(got, expected, "step {step}: {request:?}");
        compared += 1;
        granted += u64::from(got.granted);
    }
    println!("{compared} requests compared, {granted} slots granted, {flushed} restarts");
    assert!(granted > 1000 && flushed > 2, "{granted} {flushed}");
}

#[tokio::test]
async fn heartbeats_count_live_replicas() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    let stale = Duration::from_secs(5);
    assert_eq!(store.heartbeat("r1", 10_000, stale).await.unwrap(), 1);
    assert_eq!(store.heartbeat("r2", 11_000, stale).await.unwrap(), 2);
    assert_eq!(
        store.heartbeat("r2", 16_000, stale).await.unwrap(),
        1,
        "r1 fell silent"
    );
}

/// A replica that still counts one replica (its heartbeat has not run since
/// another joined) gets the share of the replicas the ledger sees beating.
#[tokio::test]
async fn grants_are_shared_among_the_replicas_the_heartbeats_show() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    first_publication(&store).await;
    // Two replicas beat at 9 s and 9.5 s; a third fell silent long ago.
    store.heartbeat("gone", 1_000, REPLICA_ALIVE).await.unwrap();
    store.heartbeat("r1", 9_000, REPLICA_ALIVE).await.unwrap();
    store.heartbeat("r2", 9_500, REPLICA_ALIVE).await.unwrap();
    // r1 asks for all 40 of a poll's free slots, saying it is alone.
    let grant = store
        .reserve(&reserve(10_000, 9_000, 40, 40))
        .await
        .unwrap();
    assert_eq!(
        grant,
        Grant {
            granted: 20,
            remaining: 20
        },
        "half for each of the two live replicas"
    );
    // A replica's own count still counts when it is higher.
    let mut three = reserve(10_100, 9_000, 40, 40);
    three.replicas = 3;
    assert_eq!(store.reserve(&three).await.unwrap().granted, 7);
}

#[tokio::test]
async fn subscribers_hear_each_published_version() {
    use futures_util::StreamExt as _;
    let redis = RedisServer::start().await;
    let store = store(&redis);
    let mut versions = Box::pin(store.subscribe().await.unwrap());
    assert!(store.hold_lease("p", Duration::from_secs(5)).await.unwrap());
    let v = store
        .publish_snapshot("p", &mut snapshot(), Duration::from_secs(30), 0)
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(2), versions.next())
        .await
        .unwrap();
    assert_eq!(heard, Some(v));
    assert_eq!(store.latest_version().await.unwrap(), v);
}

#[tokio::test]
async fn drains_survive_and_report_changes() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    assert!(store.set_drained("a", true).await.unwrap());
    assert!(
        !store.set_drained("a", true).await.unwrap(),
        "already drained"
    );
    let other = RedisStore::new(&redis.url(), Keys::default(), TIMEOUT).unwrap();
    assert_eq!(
        other.drained().await.unwrap(),
        ["a".to_owned()].into(),
        "another process sees it"
    );
    assert!(store.set_drained("a", false).await.unwrap());
    assert!(store.drained().await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_down_frozen_and_back() {
    let mut redis = RedisServer::start().await;
    let store = store(&redis);
    assert!(store.hold_lease("p", Duration::from_secs(5)).await.unwrap());

    redis.pause();
    let started = Instant::now();
    assert!(store.drained().await.is_err());
    assert!(
        started.elapsed() < TIMEOUT * 3,
        "a frozen Redis must not block: {:?}",
        started.elapsed()
    );
    redis.resume();

    redis.kill();
    let started = Instant::now();
    assert!(store.latest_snapshot().await.is_err());
    assert!(
        started.elapsed() < TIMEOUT * 3,
        "a dead Redis must not block: {:?}",
        started.elapsed()
    );

    redis.restart().await;
    let started = Instant::now();
    loop {
        match store.hold_lease("p", Duration::from_secs(5)).await {
            Ok(true) => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(5),
                "no reconnect: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = store
        .publish_snapshot("p", &mut snapshot(), Duration::from_secs(30), 41)
        .await
        .unwrap();
    assert_eq!(
        v, 42,
        "versions continue above what was published before Redis lost its data"
    );
}

#[tokio::test]
async fn a_garbage_snapshot_is_a_decode_error() {
    let redis = RedisServer::start().await;
    let store = store(&redis);
    redis
        .command(&["SET", &Keys::default().snapshot(), "garbage\u{1}"])
        .await
        .unwrap();
    assert!(matches!(
        store.latest_snapshot().await,
        Err(StoreError::Decode(_))
    ));
}

#[tokio::test]
async fn through_sentinel_the_store_finds_the_master_and_unreachable_sentinels_fail_in_time() {
    let set = balancer_testkit::SentinelSet::start().await;
    let through = RedisStore::new(&set.url(), Keys::default(), TIMEOUT).unwrap();
    through.set_drained("a", true).await.unwrap();
    // The write landed on the master the sentinels name.
    let direct = store(&set.master);
    assert_eq!(
        direct
            .drained()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        ["a"]
    );

    // Nobody listens on port 1: the error comes within the operation timeout.
    let nowhere =
        RedisStore::new("redis+sentinel://127.0.0.1:1/icb", Keys::default(), TIMEOUT).unwrap();
    let started = Instant::now();
    let error = nowhere.latest_version().await.unwrap_err();
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, StoreError::Redis(_) | StoreError::Timeout(_)),
        "{error}"
    );
}

/// Clients connected to `redis` (the asking connection included).
async fn connected_clients(redis: &RedisServer) -> u32 {
    let info = redis.info("clients").await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connected_clients in {info}"))
}

/// A redirector asks for leases from its player threads, each running its own
/// runtime: each thread leases over a connection of its own (made once and
/// kept), so an answer never has to wake another thread. Were the leases sent
/// over the store's shared connection, Redis would see no new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn each_thread_leases_over_a_connection_of_its_own() {
    use std::sync::{Arc, Barrier};
    let redis = RedisServer::start().await;
    let store = store(&redis);
    first_publication(&store).await;
    let before = connected_clients(&redis).await;
    let (leased, done) = (Arc::new(Barrier::new(3)), Arc::new(Barrier::new(3)));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, leased, done) = (store.clone(), leased.clone(), done.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let grants: Vec<_> = (0..3)
                    .map(|n| runtime.block_on(store.reserve(&reserve(10_000 + n, 9_000, 100, 1))))
                    .collect();
                // Reached whatever the grants were, so the test cannot hang here.
                leased.wait();
                done.wait();
                grants
            })
        })
        .collect();
    let wait = |barrier: Arc<Barrier>| tokio::task::spawn_blocking(move || barrier.wait());
    wait(leased).await.unwrap();
    let during = connected_clients(&redis).await;
    wait(done).await.unwrap();
    for thread in threads {
        for grant in thread.join().unwrap() {
            assert_eq!(grant.unwrap().granted, 1);
        }
    }
    assert_eq!(
        during,
        before + 2,
        "two threads, three leases each: one new connection per thread"
    );
}
