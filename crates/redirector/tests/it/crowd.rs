//! No overbooking: a flash crowd across two replicas never exceeds what the
//! Icecast servers can take, and every redirected player plays.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_over_two_replicas_never_overbooks() {
    let limits = [2u32, 3, 4];
    let specs = limits.map(|l| IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(l)]));
    let (redis, servers) = tokio::join!(RedisServer::start(), IcecastServer::start_many(specs));
    let names = ["one", "two", "three"];
    let entries: Vec<(&str, &IcecastServer, &str)> = names
        .iter()
        .zip(&servers)
        .map(|(n, s)| (*n, s, ""))
        .collect();
    let (_poller, replicas) = balancer(&redis, &one_stream_fleet(&entries, "admin"), 2, &[]).await;

    let free: u32 = limits.iter().sum();
    let crowd = free as usize * 10;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..crowd {
        let url = replicas[i % 2].url("/s");
        tasks.push(tokio::spawn(async move { Player::connect(&url).await }));
    }
    let mut players = Vec::new();
    for task in tasks {
        players.push(task.await.unwrap().unwrap());
    }
    println!("{crowd} players asked within {:?}", started.elapsed());

    let mut by_port: HashMap<u16, usize> = HashMap::new();
    let mut refused = 0;
    for player in &players {
        match (player.status(), player.port()) {
            (200, Some(port)) => *by_port.entry(port).or_default() += 1,
            (503, _) => refused += 1,
            (status, port) => {
                panic!("a player got {status} from port {port:?}: sent to a full or wrong server")
            }
        }
    }
    for (server, limit) in servers.iter().zip(limits) {
        let got = by_port.get(&server.port()).copied().unwrap_or(0);
        assert!(
            got as u32 <= limit,
            "{got} players on a mount with room for {limit}"
        );
    }
    let playing: usize = by_port.values().sum();
    println!(
        "{playing} playing on {by_port:?}, {refused} told to retry later (free slots: {free})"
    );
    assert!(playing as u32 <= free);
    assert!(playing >= 1, "some players must get in");
    for player in players.iter().filter(|p| p.status() == 200) {
        assert!(
            player.wait_for_bytes(1024, Duration::from_secs(10)).await,
            "a redirected player must hear audio"
        );
    }
    // Icecast's own counts agree.
    for (server, limit) in servers.iter().zip(limits) {
        let listeners = server.listeners("/s.ogg").await.unwrap();
        assert!(listeners <= limit);
    }
}

#[tokio::test]
async fn redirects_lease_slots_in_batches() {
    let spec = IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(5000)]);
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec.clone(), spec])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let (_poller, replicas) = balancer(&redis, &fleet, 2, &[]).await;
    let client = client();
    let (scripts_before, all_before) = (redis.calls("evalsha").await, total_calls(&redis).await);
    let redirects = 1000;
    for i in 0..redirects {
        let response = client.get(replicas[i % 2].url("/s")).send().await.unwrap();
        assert_eq!(response.status(), 302);
    }
    let scripts = redis.calls("evalsha").await - scripts_before;
    let all = total_calls(&redis).await - all_before;
    println!(
        "{redirects} redirects over 2 replicas: {scripts} script calls ({:.3} per redirect); \
         {all} Redis commands in all, heartbeats and snapshot reads included",
        scripts as f64 / redirects as f64
    );
    // 5,000 free per mount, 2 replicas: batches of up to 64 (5,000 / 8 capped), so far fewer calls than redirects
    // (plus the poller's own script calls for its lease and snapshots).
    assert!(
        scripts * 8 < redirects as u64,
        "{scripts} script calls for {redirects} redirects"
    );
    assert!(
        all * 2 < redirects as u64,
        "{all} Redis commands for {redirects} redirects"
    );
}

async fn total_calls(redis: &RedisServer) -> u64 {
    let stats = redis.info("commandstats").await.unwrap();
    stats
        .lines()
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
