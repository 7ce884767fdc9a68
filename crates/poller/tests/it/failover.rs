//! Redis outages, a standby poller taking over, reloads and shutdown.

use std::time::{Duration, Instant};

use balancer_proto::snapshot::v1::ServerState;
use balancer_store::Keys;
use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, RedisServer, wait_until};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

fn fleet_for(icecast: &IcecastServer, streams: &[&str]) -> String {
    let mut fleet = format!(
        "{POLLER_TABLE}{}",
        server_block("ice", &icecast.base_url(), "admin")
    );
    for stream in streams {
        fleet += &format!(
            "[[stream]]\nname = \"{stream}\"\nmounts = [{{ server = \"ice\", mount = \"/a.ogg\" }}]\n"
        );
    }
    fleet
}

async fn icecast() -> IcecastServer {
    IcecastServer::start(IcecastSpec::new(
        [MountSpec::ogg("/a.ogg").max_listeners(5)],
    ))
    .await
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_run() {
    let (mut redis, icecast) = tokio::join!(RedisServer::start(), icecast());
    let mut poller = PollerProcess::start(&fleet_for(&icecast, &["a"]), &redis).await;
    let store = reader(&redis);
    wait_snapshot(&store, "a first snapshot", |s| {
        server(s, "ice").state() == ServerState::Up
    })
    .await;

    let before = store.latest_snapshot().await.unwrap().unwrap().version;
    redis.kill();
    poller.wait_log("cannot publish").await;
    assert!(
        poller.process.exited().is_none(),
        "the poller must survive Redis going away"
    );

    redis.restart().await;
    let back = Instant::now();
    // The restarted Redis is empty: any snapshot in it was published after it came back.
    let s = wait_snapshot(&store, "a snapshot after Redis is back", |s| {
        server(s, "ice").state() == ServerState::Up
    })
    .await;
    println!(
        "published {:?} after Redis came back (version {})",
        back.elapsed(),
        s.version
    );
    assert!(back.elapsed() < Duration::from_secs(5));
    assert!(
        s.version > before,
        "the version went from {before} to {}: it must keep growing",
        s.version
    );
    assert!(poller.process.exited().is_none());
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_is_killed() {
    let (redis, icecast) = tokio::join!(RedisServer::start(), icecast());
    let fleet = fleet_for(&icecast, &["a"]);
    let first = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    wait_snapshot(&store, "the first poller publishing", |s| first.owns(s)).await;
    let mut second = PollerProcess::start(&fleet, &redis).await;
    second.wait_log("another poller holds the lease").await;

    // Only the leader publishes.
    let mut seen = 0;
    let mut last = 0;
    while seen < 4 {
        let s = wait_snapshot(&store, "a newer snapshot", |s| s.version > last).await;
        assert!(
            first.owns(&s),
            "only the lease holder publishes, got {}",
            s.publisher
        );
        last = s.version;
        seen += 1;
    }

    first.process.signal(libc::SIGKILL);
    let killed = Instant::now();
    let s = wait_snapshot(&store, "the standby publishing", |s| second.owns(s)).await;
    let took = killed.elapsed();
    println!(
        "the standby took over {took:?} after the leader was killed (snapshot {})",
        s.version
    );
    // The lease lasts 3 s (three 250 ms intervals, at least 3 s): two lease periods at most.
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(s.version > last, "versions keep growing across pollers");
    assert!(second.process.exited().is_none());
}

#[tokio::test]
async fn sighup_applies_a_good_config_and_keeps_the_running_one_on_a_bad_one() {
    let (redis, icecast) = tokio::join!(RedisServer::start(), icecast());
    let mut poller = PollerProcess::start(&fleet_for(&icecast, &["a"]), &redis).await;
    let store = reader(&redis);
    wait_snapshot(&store, "stream a", |s| {
        s.streams.iter().any(|st| st.name == "a")
    })
    .await;

    let broken = fleet_for(&icecast, &["a"]).replace("interval = \"250ms\"", "interval = \"0s\"");
    std::fs::write(&poller.config, broken).unwrap();
    poller.process.signal(libc::SIGHUP);
    poller.wait_log("reload refused").await;
    let log = poller.process.log();
    assert!(
        log.contains(&format!("{}:2:", poller.config.display())),
        "file:line in {log}"
    );
    assert!(log.contains("poller.interval"));
    let before = store.latest_snapshot().await.unwrap().unwrap().version;
    let s = wait_snapshot(&store, "publishing goes on", |s| s.version > before + 1).await;
    assert_eq!(s.streams.len(), 1, "the running config stays");
    assert!(poller.process.exited().is_none());

    std::fs::write(&poller.config, fleet_for(&icecast, &["a", "b"])).unwrap();
    poller.process.signal(libc::SIGHUP);
    wait_snapshot(&store, "stream b after a good reload", |s| {
        s.streams.iter().any(|st| st.name == "b")
    })
    .await;
}

#[tokio::test]
async fn sigterm_reports_not_serving_releases_the_lease_and_exits() {
    let (redis, icecast) = tokio::join!(RedisServer::start(), icecast());
    let mut poller = PollerProcess::start(&fleet_for(&icecast, &["a"]), &redis).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", poller.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let request = || HealthCheckRequest {
        service: String::new(),
    };
    let serving = wait_until("SERVING", PATIENCE, || {
        let mut health = health.clone();
        async move {
            let status = health.check(request()).await.ok()?.into_inner().status();
            (status == ServingStatus::Serving).then_some(status)
        }
    })
    .await;
    assert_eq!(serving, ServingStatus::Serving);

    let mut watch = health.watch(request()).await.unwrap().into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    poller.process.signal(libc::SIGTERM);
    let stopping = Instant::now();
    assert_eq!(
        watch.message().await.unwrap().map(|m| m.status()),
        Some(ServingStatus::NotServing),
        "NOT_SERVING comes before the exit"
    );
    let status = poller
        .process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
    println!("exited {:?} after SIGTERM", stopping.elapsed());
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(
        redis
            .command(&["EXISTS", &Keys::default().poller_lease()])
            .await
            .unwrap(),
        ":0",
        "the lease is released for a standby"
    );
}

#[tokio::test]
async fn drains_show_in_the_snapshot_and_survive_a_poller_restart() {
    let (redis, icecast) = tokio::join!(RedisServer::start(), icecast());
    let fleet = fleet_for(&icecast, &["a"]);
    let drained_key = Keys::default().drained();
    // A drain of a server that is no longer in the fleet is forgotten at start.
    redis
        .command(&["SADD", &drained_key, "removed-server"])
        .await
        .unwrap();
    let poller = PollerProcess::start(&fleet, &redis).await;
    let store = reader(&redis);
    wait_snapshot(&store, "ice up, not drained", |s| {
        server(s, "ice").state() == ServerState::Up && !server(s, "ice").drained
    })
    .await;
    assert_eq!(
        redis
            .command(&["SISMEMBER", &drained_key, "removed-server"])
            .await
            .unwrap(),
        ":0",
        "{}",
        poller.process.log()
    );

    store.set_drained("ice", true).await.unwrap();
    wait_snapshot(&store, "ice drained", |s| server(s, "ice").drained).await;
    drop(poller);
    let restarted = PollerProcess::start(&fleet, &redis).await;
    let s = wait_snapshot(&store, "a snapshot from the new poller", |s| {
        restarted.owns(s)
    })
    .await;
    assert!(
        server(&s, "ice").drained,
        "the drain survives a poller restart"
    );
    assert_eq!(
        server(&s, "ice").state(),
        ServerState::Up,
        "a drained server is still polled"
    );
}
