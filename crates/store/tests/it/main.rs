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

    let keys = Keys::default();
    let fixed: Vec<String> = keys
        .all()
        .into_iter()
        .filter(|k| k.bound == Bound::Fixed)
        .map(|k| k.name)
        .collect();
    let listed = redis.command(&["KEYS", "*"]).await.unwrap();
    let count: usize = listed.trim_start_matches('*').parse().unwrap();
    assert_eq!(count, 4, "snapshot, version, lease, drained");
    for key in [
        keys.snapshot(),
        keys.poller_lease(),
        keys.snapshot_version(),
        keys.drained(),
    ] {
        let ttl = redis.command(&["PTTL", &key]).await.unwrap();
        let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
        assert!(
            ttl > 0 || fixed.contains(&key),
            "{key} has no TTL and is not a fixed-size key"
        );
    }
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
