//! Dead servers, Redis going away or freezing, and shutdown.

use std::time::{Duration, Instant};

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::*;

fn spec() -> IcecastSpec {
    IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(500)])
}

#[tokio::test]
async fn a_killed_server_gets_no_players_once_marked_down() {
    let (redis, mut servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let (_poller, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = &replicas[0];
    let dead = servers[1].mount_url("/s.ogg");
    servers[1].kill();
    let killed = Instant::now();
    // Until the poller marks it down (3 polls of 250 ms), it may still be chosen.
    let client = client();
    loop {
        let mut seen_dead = false;
        for _ in 0..20 {
            seen_dead |= redirected_to(&client, &redirector.url("/s")).await == dead;
        }
        if !seen_dead {
            break;
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "still sending players to a dead server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "no redirects to the killed server {:?} after it died",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "two poll intervals plus fall: {:?}",
        killed.elapsed()
    );
    for _ in 0..50 {
        assert_eq!(
            redirected_to(&client, &redirector.url("/s")).await,
            servers[0].mount_url("/s.ogg")
        );
    }
    let outcome = Player::play(&redirector.url("/s")).await.unwrap();
    assert!(outcome.played(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_frozen_and_restarted_under_load() {
    let (mut redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let (_poller, replicas) = balancer(&redis, &fleet, 2, &[]).await;
    let good: Vec<String> = servers.iter().map(|s| s.mount_url("/s.ogg")).collect();
    let client = client();
    let burst = |label: &'static str| {
        let (client, urls, good) = (
            client.clone(),
            [replicas[0].url("/s"), replicas[1].url("/s")],
            good.clone(),
        );
        async move {
            let mut slowest = Duration::ZERO;
            for i in 0..100 {
                let started = Instant::now();
                let response = client.get(&urls[i % 2]).send().await.unwrap();
                slowest = slowest.max(started.elapsed());
                let status = response.status().as_u16();
                assert!(status == 302 || status == 503, "{label}: got {status}");
                if status == 302 {
                    assert!(
                        good.contains(&location(&response)),
                        "{label}: redirect outside the fleet"
                    );
                }
            }
            println!("{label}: 100 requests, slowest {slowest:?}");
            slowest
        }
    };
    burst("redis up").await;

    redis.pause();
    let slowest = burst("redis frozen").await;
    assert!(
        slowest < Duration::from_millis(250),
        "a frozen Redis must not hold requests: {slowest:?}"
    );
    redis.resume();

    redis.kill();
    burst("redis dead").await;
    redis.restart().await;
    let back = Instant::now();
    // The restarted Redis is empty: redirectors recover once the poller publishes again.
    let redirected = wait_status(&replicas[0].url("/s"), 302).await;
    assert!(good.contains(&location(&redirected)));
    burst("redis back").await;
    println!("service normal {:?} after Redis returned", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(5));
}

/// Redis frozen runs a lease script once it thaws, long after the replica
/// stopped waiting for the answer: the grant still reaches the replica's
/// pool, so its slots go to players instead of being given up until the lease
/// expires (a minute here, so a lost grant shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_redis_answers_after_the_timeout_still_reaches_players() {
    const LIMIT: usize = 200;
    let spec = IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(LIMIT as u32)])
        .client_limit(LIMIT as u32 + 20);
    let (redis, icecast) = tokio::join!(RedisServer::start(), IcecastServer::start(spec));
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    // One player thread: one connection to Redis, the one the first lease made.
    let extra = ["--slot-lease", "60s", "--threads", "1"];
    let (_poller, replicas) = balancer(&redis, &fleet, 1, &extra).await;
    let redirector = &replicas[0];
    let url = redirector.url("/s");
    // The first player's lease is topped up to a lease's worth of demand.
    let mut playing = vec![Player::connect(&url).await.unwrap()];
    assert_eq!(playing[0].status(), 200, "the first player gets in");

    redis.pause();
    // Ten more raise the demand tenfold: their slots come from the pool, and
    // the pool's top-up goes to a frozen Redis.
    for player in players(&url, 10).await {
        assert_eq!(
            player.status(),
            200,
            "held slots serve players while Redis is frozen"
        );
        playing.push(player);
    }
    // Once the replica counts the refill as failed (it stopped waiting)...
    let deadline = Instant::now() + PATIENCE;
    while crate::control::sample(
        &crate::control::scrape(redirector.admin).await,
        "icb_redis_errors",
        &[],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the refill never timed out: {}",
            redirector.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...Redis thaws and runs the script.
    redis.resume();
    let thawed = Instant::now();

    // Every slot goes to a player, the ones granted late included, well
    // before a lost grant's lease would have expired. Players come 50 at a
    // time: the test Icecast's accept queue is short.
    let mut told_to_retry = 0;
    let deadline = thawed + Duration::from_secs(30);
    while playing.len() < LIMIT && Instant::now() < deadline {
        for player in players(&url, (LIMIT - playing.len()).min(50)).await {
            match player.status() {
                200 => playing.push(player),
                503 => told_to_retry += 1,
                status => panic!("a player got {status} from {}", player.final_url()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} of {LIMIT} playing {:?} after the thaw; {told_to_retry} told to retry",
        playing.len(),
        thawed.elapsed()
    );
    assert_eq!(playing.len(), LIMIT, "slots lost to a late grant");
    // Every player hears audio, and Icecast's count (its stats follow a moment
    // behind the players it took) reaches the limit and no more.
    let heard = futures_util::future::join_all(
        playing
            .iter()
            .map(|p| p.wait_for_bytes(1024, Duration::from_secs(20))),
    )
    .await;
    assert!(
        heard.iter().all(|h| *h),
        "a redirected player heard no audio"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let listeners = icecast.listeners("/s.ogg").await.unwrap();
        assert!(listeners <= LIMIT as u32, "Icecast counts {listeners}");
        if listeners == LIMIT as u32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Icecast counts {listeners} of {LIMIT}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And not one more: the mount is full.
    let more = client().get(&url).send().await.unwrap();
    assert_eq!(more.status(), 503, "a player sent to a full mount");
}

/// `n` players asking at once, each following the redirect (if any).
async fn players(url: &str, n: usize) -> Vec<Player> {
    let asking: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { Player::connect(&url).await })
        })
        .collect();
    let mut players = Vec::with_capacity(n);
    for player in asking {
        players.push(player.await.unwrap().unwrap());
    }
    players
}

#[tokio::test]
async fn sigterm_turns_not_serving_keeps_answering_then_exits() {
    let (redis, icecast) = tokio::join!(RedisServer::start(), IcecastServer::start(spec()));
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    let (_poller, mut replicas) = balancer(&redis, &fleet, 1, &["--drain-delay", "1s"]).await;
    let mut redirector = replicas.remove(0);
    let healthz = format!("http://{}/healthz", redirector.admin);
    let before = client().get(&healthz).send().await.unwrap();
    assert_eq!(before.status(), 200, "GET /healthz while serving");
    redirector.process.signal(libc::SIGTERM);
    let stopping = Instant::now();
    wait_health(&redirector, false).await;
    assert!(
        stopping.elapsed() < Duration::from_millis(900),
        "NOT_SERVING at once"
    );
    let during = client().get(&healthz).send().await.unwrap();
    assert_eq!(during.status(), 503, "GET /healthz while draining");
    assert_eq!(during.text().await.unwrap(), "NOT_SERVING\n");
    let response = client().get(redirector.url("/s")).send().await.unwrap();
    assert_eq!(
        response.status(),
        302,
        "players are still answered during the drain delay"
    );
    let status = redirector
        .process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits within 10 s");
    assert!(status.success(), "{status}");
    println!("exited {:?} after SIGTERM", stopping.elapsed());
}

#[tokio::test]
async fn drained_and_source_less_mounts_get_no_players() {
    let (redis, mut servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec(), spec()])
    );
    let fleet = one_stream_fleet(
        &[
            ("one", &servers[0], ""),
            ("two", &servers[1], ""),
            ("three", &servers[2], ""),
        ],
        "admin",
    );
    let (_poller, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = &replicas[0];
    let store = balancer_store::RedisStore::new(
        &redis.url(),
        balancer_store::Keys::default(),
        Duration::from_secs(1),
    )
    .unwrap();
    store.set_drained("two", true).await.unwrap();
    servers[2].stop_source("/s.ogg").await;
    let only = servers[0].mount_url("/s.ogg");
    let client = client();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut all_on_one = true;
        for _ in 0..30 {
            let response = client.head(redirector.url("/s")).send().await.unwrap();
            all_on_one &= location(&response) == only;
        }
        if all_on_one {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "players still sent to a drained or source-less mount"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..50 {
        assert_eq!(redirected_to(&client, &redirector.url("/s")).await, only);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_player_threads_both_answer_and_sigterm_drains_both() {
    use crate::control::{sample, scrape};
    let (redis, icecast) = tokio::join!(RedisServer::start(), IcecastServer::start(spec()));
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    let (_poller, mut replicas) = balancer(
        &redis,
        &fleet,
        1,
        &["--threads", "2", "--drain-delay", "1s"],
    )
    .await;
    let mut redirector = replicas.remove(0);
    let per_thread = |samples: &[(String, f64)]| {
        [0, 1].map(|t| {
            sample(
                samples,
                "icb_player_connections_total",
                &[&format!("thread=\"{t}\"")],
            )
        })
    };
    // A new connection per request, as players arrive: the kernel spreads
    // them over both threads' sockets.
    let burst = |n: usize| {
        let url = redirector.url("/s");
        async move {
            let mut answered = 0;
            for _ in 0..n {
                let client = client();
                let response = client.head(&url).send().await.unwrap();
                answered += usize::from(response.status() == 302);
            }
            answered
        }
    };
    assert_eq!(burst(200).await, 200);
    let before = per_thread(&scrape(redirector.admin).await);
    println!("connections per player thread: {before:?}");
    assert!(
        before.iter().all(|&n| n > 0.0),
        "both threads must take connections: {before:?}"
    );
    // The control plane's threads give way to the player threads.
    let niceness = thread_niceness(redirector.process.pid().expect("running"));
    let of = |prefix: &str| -> Vec<i64> {
        niceness
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|&(_, nice)| nice)
            .collect()
    };
    assert_eq!(of("players-"), [0, 0], "{niceness:?}");
    let control = of("tokio-rt-worker");
    assert!(
        !control.is_empty() && control.iter().all(|&n| n == 10),
        "{niceness:?}"
    );
    // Kept-alive connections idle between requests, on both threads: the
    // stop closes them at once, not at their idle timeout (10 s) or at the
    // end of the grace period.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut connection = tokio::net::TcpStream::connect(redirector.listen)
            .await
            .unwrap();
        connection
            .write_all(b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 1024];
        let read = connection.read(&mut answer).await.unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 302"));
        idle.push(connection);
    }
    let with_idle = per_thread(&scrape(redirector.admin).await);
    redirector.process.signal(libc::SIGTERM);
    let signalled = Instant::now();
    wait_health(&redirector, false).await;
    // Draining: both threads still answer until the drain delay ends.
    assert_eq!(burst(100).await, 100, "answered while draining");
    let during = per_thread(&scrape(redirector.admin).await);
    assert!(
        during.iter().zip(with_idle).all(|(d, b)| *d > b),
        "both threads answered during the drain: {with_idle:?} then {during:?}"
    );
    for mut connection in idle {
        let mut rest = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut rest))
            .await
            .expect("an idle connection closed by the stop");
        assert!(matches!(closed, Ok(0)), "{closed:?}");
    }
    let status = redirector
        .process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits within 10 s");
    assert!(status.success(), "{status}");
    // The drain delay (1 s), then no wait for idle connections.
    let exited = signalled.elapsed();
    println!("exited {exited:?} after SIGTERM with 40 idle connections");
    assert!(exited < Duration::from_secs(4), "{exited:?}");
}

#[tokio::test]
async fn a_503_asks_players_to_come_back_after_a_random_wait_in_the_range() {
    // No poller has published yet: every request gets 503.
    let redis = RedisServer::start().await;
    let redirector = Service::following(&redis, &["--retry-after", "3-7"]).await;
    let client = client();
    let mut waits = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let response = client.get(redirector.url("/s")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let wait: u32 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3..=7).contains(&wait), "Retry-After {wait}");
        waits.insert(wait);
    }
    println!("Retry-After values seen: {waits:?}");
    assert!(
        waits.len() >= 3,
        "a crowd must not come back at once: {waits:?}"
    );
}

/// Each thread of process `pid` with its name and nice value (`/proc/PID/task/TID/stat`).
fn thread_niceness(pid: u32) -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // "TID (NAME) STATE ...": the name may hold spaces, so split at the last ')'.
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_owned();
        // After the name: state is field 3, nice is field 19.
        let nice = rest
            .split_whitespace()
            .nth(19 - 3)
            .unwrap()
            .parse()
            .unwrap();
        threads.push((name, nice));
    }
    threads.sort();
    threads
}
