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
    // Heartbeats, snapshot publications and reads go on with or without
    // players, at a rate set by the clock: measure it over a quiet window,
    // so that a slow machine (a longer run, more of them) cannot pass for
    // Redis work done per redirect.
    let quiet = Duration::from_secs(2);
    let (quiet_scripts, quiet_all) = redis_work_during(&redis, async {
        tokio::time::sleep(quiet).await;
    })
    .await;
    let redirects = 1000;
    let started = Instant::now();
    let (scripts, all) = redis_work_during(&redis, async {
        for i in 0..redirects {
            redirected_to(&client, &replicas[i % 2].url("/s")).await;
        }
    })
    .await;
    let background = started.elapsed().as_secs_f64() / quiet.as_secs_f64();
    let scripts_for_players = scripts as f64 - quiet_scripts as f64 * background;
    let all_for_players = all as f64 - quiet_all as f64 * background;
    println!(
        "{redirects} redirects over 2 replicas in {:.2} s: {scripts} script calls, {all} Redis \
         commands in all (commands run by scripts, heartbeats and snapshot reads included); \
         {quiet_all} commands in a quiet {} s. Less the background: {:.3} script calls and \
         {:.3} commands per redirect",
        started.elapsed().as_secs_f64(),
        quiet.as_secs(),
        scripts_for_players / redirects as f64,
        all_for_players / redirects as f64,
    );
    // Batches are sized by recent demand (a lease's worth), so they grow from
    // 4 as the run goes on: a script call per a dozen redirects or more, and
    // a handful of commands inside each. A script call per redirect would be
    // 1 and about 6.
    assert!(
        scripts_for_players * 8.0 < redirects as f64,
        "{scripts_for_players:.0} script calls for {redirects} redirects"
    );
    assert!(
        all_for_players < 0.75 * redirects as f64,
        "{all_for_players:.0} Redis commands for {redirects} redirects"
    );
}

/// The script calls and the commands in all (those run by scripts included)
/// that Redis served while `work` ran.
async fn redis_work_during(redis: &RedisServer, work: impl Future<Output = ()>) -> (u64, u64) {
    let (scripts, all) = (redis.calls("evalsha").await, total_calls(redis).await);
    work.await;
    (
        redis.calls("evalsha").await - scripts,
        total_calls(redis).await - all,
    )
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

/// Slots in the fleet of the crowd tests: three servers of 80, 100 and 120.
const CROWD_LIMITS: [u32; 3] = [80, 100, 120];
/// Players arriving together.
const WAVE: usize = 150;

/// Three Icecast servers with room for 300 listeners in all.
async fn crowd_servers() -> Vec<IcecastServer> {
    let specs = CROWD_LIMITS.map(|limit| {
        IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(limit)])
            // Room for the listeners, the source and the poller's requests:
            // only the mount's limit may refuse a player.
            .client_limit(limit + 50)
    });
    IcecastServer::start_many(specs).await
}

/// What became of a crowd.
#[derive(Debug, Default)]
struct CrowdOutcome {
    /// Players playing on each server (by port).
    playing: HashMap<u16, usize>,
    /// Players the balancer sent to a server that refused them: overbooked.
    refused_by_icecast: Vec<String>,
    /// Players the balancer told to come back later.
    told_to_retry: usize,
}

/// Sends waves of `WAVE` players at the redirectors (alternating), each wave
/// once the one before has its answers; `between` runs after each wave. The
/// players follow the 302 and stay connected; they are returned so they keep
/// their slots until the test ends.
async fn crowd<F, Fut>(urls: &[String], waves: usize, mut between: F) -> (CrowdOutcome, Vec<Player>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut outcome = CrowdOutcome::default();
    let mut players = Vec::new();
    let started = Instant::now();
    for wave in 0..waves {
        let tasks: Vec<_> = (0..WAVE)
            .map(|i| {
                let url = urls[(wave * WAVE + i) % urls.len()].clone();
                tokio::spawn(async move { Player::connect(&url).await })
            })
            .collect();
        for task in tasks {
            let player = task.await.unwrap().unwrap();
            match (player.status(), player.port()) {
                (503, _) => outcome.told_to_retry += 1,
                (200, Some(port)) => {
                    *outcome.playing.entry(port).or_default() += 1;
                    players.push(player);
                }
                (status, _) => outcome
                    .refused_by_icecast
                    .push(format!("{status} from {}", player.final_url())),
            }
        }
        between(wave).await;
    }
    println!(
        "{} players in {waves} waves of {WAVE} within {:?}",
        waves * WAVE,
        started.elapsed()
    );
    (outcome, players)
}

/// Asserts that no player was sent to a full server, that at least 98% of
/// the slots are playing, and that Icecast's own counts agree.
async fn assert_filled_and_never_overbooked(
    label: &str,
    servers: &[IcecastServer],
    outcome: &CrowdOutcome,
    players: &[Player],
) {
    let free: u32 = CROWD_LIMITS.iter().sum();
    let playing: usize = outcome.playing.values().sum();
    println!(
        "{label}: {playing} playing of {free} slots ({:.1}% filled), by server {:?}; \
         {} told to retry later; {} refused by Icecast (overbooked)",
        playing as f64 * 100.0 / f64::from(free),
        outcome.playing,
        outcome.told_to_retry,
        outcome.refused_by_icecast.len(),
    );
    assert!(
        outcome.refused_by_icecast.is_empty(),
        "{label}: players sent to full servers: {:?}",
        &outcome.refused_by_icecast[..outcome.refused_by_icecast.len().min(5)]
    );
    for (server, limit) in servers.iter().zip(CROWD_LIMITS) {
        let on_it = outcome.playing.get(&server.port()).copied().unwrap_or(0);
        assert!(
            on_it as u32 <= limit,
            "{label}: {on_it} players on a server of {limit}"
        );
    }
    assert!(
        playing as f64 >= 0.98 * f64::from(free),
        "{label}: only {playing} of {free} slots filled"
    );
    // Every player heard audio, and Icecast counts them all.
    let silent = futures_util::future::join_all(
        players
            .iter()
            .map(|p| p.wait_for_bytes(1024, Duration::from_secs(20))),
    )
    .await
    .into_iter()
    .filter(|heard| !heard)
    .count();
    assert_eq!(
        silent, 0,
        "{label}: {silent} redirected players heard no audio"
    );
    let mut counted = 0;
    for (server, limit) in servers.iter().zip(CROWD_LIMITS) {
        let listeners = server.listeners("/s.ogg").await.unwrap();
        assert!(
            listeners <= limit,
            "{label}: Icecast counts {listeners} of {limit}"
        );
        counted += listeners;
    }
    assert_eq!(counted as usize, playing, "{label}: Icecast's counts agree");
}

fn crowd_fleet(servers: &[IcecastServer]) -> String {
    let names = ["one", "two", "three"];
    let entries: Vec<(&str, &IcecastServer, &str)> = names
        .iter()
        .zip(servers)
        .map(|(n, s)| (*n, s, ""))
        .collect();
    one_stream_fleet(&entries, "admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_1_5x_capacity_over_two_replicas_fills_every_slot_and_overbooks_none() {
    let (redis, servers) = tokio::join!(RedisServer::start(), crowd_servers());
    let (_poller, replicas) = balancer(&redis, &crowd_fleet(&servers), 2, &[]).await;
    let urls = [replicas[0].url("/s"), replicas[1].url("/s")];
    let (outcome, players) = crowd(&urls, 3, |_| async {}).await;
    assert_filled_and_never_overbooked("2 replicas", &servers, &outcome, &players).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_with_redis_frozen_in_the_middle_overbooks_none() {
    let (redis, servers) = tokio::join!(RedisServer::start(), crowd_servers());
    let (_poller, replicas) = balancer(&redis, &crowd_fleet(&servers), 2, &[]).await;
    let urls = [replicas[0].url("/s"), replicas[1].url("/s")];
    // Redis is frozen (SIGSTOP) after the first wave, for the second, and
    // thawed before the third and fourth.
    let redis = &redis;
    let (outcome, players) = crowd(&urls, 4, |wave| async move {
        match wave {
            0 => redis.pause(),
            1 => redis.resume(),
            _ => {}
        }
    })
    .await;
    assert_filled_and_never_overbooked("2 replicas, Redis frozen", &servers, &outcome, &players)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_1_5x_capacity_on_a_standalone_redirector_fills_every_slot() {
    let servers = crowd_servers().await;
    let redirector = Service::standalone(&crowd_fleet(&servers), &[]).await;
    wait_health(&redirector, true).await;
    let (outcome, players) = crowd(&[redirector.url("/s")], 3, |_| async {}).await;
    assert_filled_and_never_overbooked("standalone", &servers, &outcome, &players).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headroom_stays_free_until_every_server_is_at_its_soft_limit() {
    let (redis, servers) = tokio::join!(RedisServer::start(), crowd_servers());
    let names = ["one", "two", "three"];
    let entries: Vec<(&str, &IcecastServer, &str)> = names
        .iter()
        .zip(&servers)
        .zip(["", "", "headroom = 80"])
        .map(|((n, s), extra)| (*n, s, extra))
        .collect();
    let fleet = one_stream_fleet(&entries, "admin");
    let (_poller, replicas) = balancer(&redis, &fleet, 2, &[]).await;
    let urls = [replicas[0].url("/s"), replicas[1].url("/s")];
    // The largest server keeps 80 of its 120 slots as headroom: soft limits
    // 80, 100 and 40 (220 in all). Spread by free slots alone, the first 150
    // players would put 60 on it.
    let soft = [80, 100, 40];
    let servers_ref = &servers;
    let (outcome, players) = crowd(&urls, 3, |wave| async move {
        if wave != 0 {
            return;
        }
        // The first 150 players fit below the soft limits: no headroom is used.
        let mut on = Vec::new();
        for (server, soft) in servers_ref.iter().zip(soft) {
            let listeners = server.listeners("/s.ogg").await.unwrap();
            on.push(listeners);
            assert!(
                listeners <= soft,
                "{listeners} listeners on a server whose soft limit is {soft}: headroom used \
                 while others had room"
            );
        }
        println!("after 150 players: {on:?} listeners, soft limits {soft:?}");
    })
    .await;
    // Then the crowd (450 for 300 slots) fills the headroom too, overbooking none.
    assert_filled_and_never_overbooked("headroom 80 on one", &servers, &outcome, &players).await;
}
