//! The Redis contract against a real redis-server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use balancer_proto::snapshot::v1::{Server, Snapshot};
use balancer_store::{Bound, Keys, RedisStore, StoreError};
use balancer_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(300);

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::new(&redis.url(), Keys::default(), TIMEOUT).unwrap()
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
    assert!(store.hold_lease("p", Duration::from_secs(5)).await.unwrap());
    store
        .publish_snapshot("p", &mut snapshot(), Duration::from_secs(30), 0)
        .await
        .unwrap();
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
    store
        .reserve(&reserve(1000, 0, 5, 2), TIMEOUT)
        .await
        .unwrap();
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
        count, 6,
        "snapshot, version, lease, drained, replicas, one reservation set"
    );
    for key in [
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

fn reserve(
    now_ms: i64,
    window_start_ms: i64,
    free_slots: u32,
    want: u32,
) -> balancer_store::Reserve<'static> {
    balancer_store::Reserve {
        server: "a",
        mount: "/a.ogg",
        now_ms,
        window_start_ms,
        free_slots,
        want,
        ttl: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn reservations_never_exceed_what_the_poll_saw() {
    let redis = RedisServer::start().await;
    let (a, b) = (store(&redis), store(&redis));
    let granted = |store: &RedisStore, r: balancer_store::Reserve<'static>| {
        let store = store.clone();
        async move { store.reserve(&r, TIMEOUT).await.unwrap() }
    };
    // A poll at t=9 s saw 5 free; two replicas ask for 3 each at t=10 s.
    assert_eq!(granted(&a, reserve(10_100, 9_000, 5, 3)).await, 3);
    assert_eq!(granted(&b, reserve(10_200, 9_000, 5, 3)).await, 2);
    assert_eq!(granted(&a, reserve(10_300, 9_000, 5, 1)).await, 0);
    // (Had that poll seen 6 free, one more would have gone out, at t=12 s.)
    assert_eq!(granted(&a, reserve(12_300, 9_000, 6, 1)).await, 1);
    // The next poll (window from 11 s) counted the first five players and saw
    // 2 free; the slot handed out at 12 s is not in its count yet: 1 is left.
    assert_eq!(granted(&a, reserve(13_100, 11_000, 2, 5)).await, 1);
    // A window starting inside a second counts that whole second: never overbook.
    assert_eq!(granted(&b, reserve(13_200, 12_900, 2, 5)).await, 0);
    // Seconds older than the TTL are forgotten: one field per live second.
    assert_eq!(granted(&b, reserve(60_000, 0, 3, 3)).await, 3);
    let key = Keys::default().reservations("a", "/a.ogg");
    assert_eq!(
        redis.command(&["HLEN", &key]).await.unwrap(),
        ":1",
        "only live seconds are kept"
    );
    assert_eq!(a.reserved("a", "/a.ogg", 59_000).await.unwrap(), 3);
    // A frozen Redis costs a request the reservation timeout, no more.
    redis.pause();
    let started = std::time::Instant::now();
    let frozen = a
        .reserve(&reserve(60_001, 0, 3, 1), Duration::from_millis(30))
        .await;
    let waited = started.elapsed();
    redis.resume();
    assert!(matches!(frozen, Err(StoreError::Timeout(_))), "{frozen:?}");
    assert!(waited < Duration::from_millis(200), "{waited:?}");
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
