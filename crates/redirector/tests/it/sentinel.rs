//! Redis through Sentinel: a master, a replica and three sentinels on
//! loopback. The master is killed under load; redirects go on, and both
//! services move to the promoted replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use balancer_store::{Keys, RedisStore};
use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, SentinelSet, wait_until};

use crate::support::*;

/// Failover takes the sentinels' down-after (1 s) plus an election.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_killed_under_load_redirects_go_on_and_both_services_follow() {
    let (mut redis, servers) = tokio::join!(
        SentinelSet::start(),
        IcecastServer::start_many([
            IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(500)]),
            IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(500)]),
        ])
    );
    let url = redis.url();
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let _poller = Service::poller_at(&fleet, &url).await;
    let redirector = Service::following_url(&url, &[]).await;
    wait_health(&redirector, true).await;

    // Players arriving all along, taking slots (GET) through reservations.
    let running = Arc::new(AtomicBool::new(true));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let good: Vec<String> = servers.iter().map(|s| s.mount_url("/s.ogg")).collect();
    let load = {
        let (running, answered, failed) = (
            Arc::clone(&running),
            Arc::clone(&answered),
            Arc::clone(&failed),
        );
        let (target, good) = (redirector.url("/s"), good.clone());
        tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            while running.load(Ordering::Relaxed) {
                match client.get(&target).send().await {
                    Ok(r) if r.status() == 302 && good.contains(&location(&r)) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(r.status().to_string());
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(e.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };
    // A replica leases slots for its recent demand over a lease's life; let
    // it see two seconds of demand, as a replica in service would have.
    wait_until("redirects under load", PATIENCE, || {
        std::future::ready((answered.load(Ordering::Relaxed) > 150).then_some(()))
    })
    .await;

    let new_master = redis.replica.port();
    redis.master.kill();
    let killed = Instant::now();
    assert!(
        redis.wait_master(new_master, FAILOVER_BOUND).await,
        "the sentinels did not promote the replica"
    );
    let promoted = killed.elapsed();

    // The poller publishes to the new master: its snapshot version moves on.
    let direct = format!("redis://127.0.0.1:{new_master}/");
    let store = RedisStore::new(&direct, Keys::default(), Duration::from_secs(1)).unwrap();
    let at_promotion = store.latest_version().await.unwrap();
    wait_until("the poller to publish to the new master", PATIENCE, || {
        let store = &store;
        async move { (store.latest_version().await.ok()? > at_promotion + 1).then_some(()) }
    })
    .await;
    let publishing = killed.elapsed();

    // The redirector reads the new master: a drain written there takes effect.
    let through_sentinel = RedisStore::new(&url, Keys::default(), Duration::from_secs(1)).unwrap();
    through_sentinel.set_drained("two", true).await.unwrap();
    let drained = Instant::now();
    let only = servers[0].mount_url("/s.ogg");
    let probe = client();
    wait_until("the redirector to follow the new master", PATIENCE, || {
        let (probe, target, only) = (&probe, redirector.url("/s"), &only);
        async move {
            for _ in 0..20 {
                let response = probe.head(&target).send().await.ok()?;
                if response.status() != 302 || location(&response) != *only {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let followed = drained.elapsed();

    running.store(false, Ordering::Relaxed);
    let failures = load.await.unwrap();
    let total = answered.load(Ordering::Relaxed);
    println!(
        "sentinel failover: replica promoted {promoted:?} after the master was killed; \
         the poller published to it {publishing:?} after the kill; a drain reached the \
         redirector {followed:?} after it was written; {total} redirects, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} requests failed during the failover: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}
