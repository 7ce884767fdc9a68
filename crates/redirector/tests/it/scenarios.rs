//! Whole-system scenarios under a steady trickle of real players: an Icecast
//! server killed and restarted, a source stopping, the active poller killed.
//! Each bounds its own time and load and prints what it measured.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balancer_store::{Keys, RedisStore};
use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, RedisServer, wait_until};
use tokio::task::JoinHandle;

use crate::support::*;

/// Players per second in a trickle.
const TRICKLE_PER_SECOND: u64 = 10;
/// How long after an outage starts players may still be sent into it: three
/// failed polls of 250 ms mark a server down, plus one poll and publication.
const DETECTION_BOUND: Duration = Duration::from_secs(3);

fn spec() -> IcecastSpec {
    IcecastSpec::new([MountSpec::ogg("/s.ogg").max_listeners(500)])
}

/// What one player of a trickle got.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    /// The Icecast port it played from, or why it did not play.
    played_on: Result<u16, String>,
}

/// Real players arriving at a steady rate, each listening until audio arrives
/// and then hanging up, as people zapping through stations do.
struct Trickle {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: JoinHandle<()>,
}

impl Trickle {
    fn start(url: String) -> Trickle {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&outcomes);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / TRICKLE_PER_SECOND));
            loop {
                tick.tick().await;
                let (url, record) = (url.clone(), Arc::clone(&record));
                // Each player on its own task: a slow one does not delay the next.
                tokio::spawn(async move {
                    let at = Instant::now();
                    let played_on = match Player::play(&url).await {
                        Ok(outcome) if outcome.played() => Ok(outcome.port().unwrap_or(0)),
                        Ok(outcome) => Err(format!(
                            "{} from {} after {} bytes",
                            outcome.status, outcome.final_url, outcome.audio_bytes
                        )),
                        Err(e) => Err(format!("{e}")),
                    };
                    record.lock().unwrap().push(Outcome { at, played_on });
                });
            }
        });
        Trickle { outcomes, task }
    }

    /// Outcomes of players that arrived at or after `since`.
    fn since(&self, since: Instant) -> Vec<Outcome> {
        let outcomes = self.outcomes.lock().unwrap();
        outcomes.iter().filter(|o| o.at >= since).cloned().collect()
    }

    /// Waits until `n` players who arrived after `since` played on `port`.
    async fn wait_played_on(&self, port: u16, since: Instant, n: usize, what: &str) {
        wait_until(what, PATIENCE, || {
            let count = self
                .since(since)
                .iter()
                .filter(|o| o.played_on == Ok(port))
                .count();
            std::future::ready((count >= n).then_some(()))
        })
        .await;
    }

    /// Waits until `quiet` passed with no failed player and returns the failures
    /// since `since`.
    async fn wait_quiet(&self, since: Instant, quiet: Duration, what: &str) -> Vec<Outcome> {
        wait_until(what, PATIENCE, || {
            let failures = failures(&self.since(since));
            let last = failures.last().map_or(since, |o| o.at);
            std::future::ready((last.elapsed() >= quiet).then_some(()))
        })
        .await;
        failures(&self.since(since))
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<Outcome> {
    let mut failed: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.played_on.is_err())
        .cloned()
        .collect();
    failed.sort_by_key(|o| o.at);
    failed
}

/// Two Icecasts, a poller, one redirector and a trickle of players on `/s`.
async fn trickling() -> (RedisServer, Vec<IcecastServer>, Service, Service, Trickle) {
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let (poller, mut replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = replicas.remove(0);
    let trickle = Trickle::start(redirector.url("/s"));
    let start = Instant::now();
    for server in &servers {
        trickle
            .wait_played_on(server.port(), start, 2, "players on both servers")
            .await;
    }
    (redis, servers, poller, redirector, trickle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_icecast_killed_then_restarted_under_a_trickle_of_players() {
    let (_redis, mut servers, _poller, _redirector, trickle) = trickling().await;
    let port = servers[1].port();

    servers[1].kill();
    let killed = Instant::now();
    let failed = trickle
        .wait_quiet(killed, Duration::from_secs(2), "players stop failing")
        .await;
    let window = failed.last().map_or(Duration::ZERO, |o| o.at - killed);
    let sent = trickle.since(killed).len();
    println!(
        "icecast killed: {} of {sent} players failed, the last {window:?} after the kill",
        failed.len()
    );
    assert!(
        window <= DETECTION_BOUND,
        "players were sent to the dead server for {window:?}: {failed:?}"
    );

    servers[1].restart().await;
    let restarted = Instant::now();
    trickle
        .wait_played_on(port, restarted, 3, "players back on the restarted server")
        .await;
    let back = trickle
        .since(restarted)
        .iter()
        .find(|o| o.played_on == Ok(port))
        .map(|o| o.at - restarted)
        .unwrap();
    let after = failures(&trickle.since(restarted));
    println!(
        "icecast restarted: first player on it after {back:?}; {} failures since the restart",
        after.len()
    );
    assert!(
        after.is_empty(),
        "players failed after the restart: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_stopping_on_one_server_moves_players_to_the_other() {
    let (_redis, mut servers, _poller, _redirector, trickle) = trickling().await;
    let port = servers[0].port();

    let stopped = Instant::now();
    servers[0].stop_source("/s.ogg").await;
    let failed = trickle
        .wait_quiet(stopped, Duration::from_secs(2), "players stop failing")
        .await;
    let window = failed.last().map_or(Duration::ZERO, |o| o.at - stopped);
    println!(
        "source stopped: {} of {} players failed, the last {window:?} after",
        failed.len(),
        trickle.since(stopped).len()
    );
    assert!(
        window <= DETECTION_BOUND,
        "players were sent to the source-less mount for {window:?}: {failed:?}"
    );
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await; // a second of players to count
    let elsewhere = trickle.since(settled);
    assert!(
        elsewhere
            .iter()
            .all(|o| o.played_on == Ok(servers[1].port())),
        "{elsewhere:?}"
    );

    servers[0].start_source("/s.ogg").await;
    let restarted = Instant::now();
    trickle
        .wait_played_on(port, restarted, 3, "players back on the mount")
        .await;
    let after = failures(&trickle.since(restarted));
    assert!(
        after.is_empty(),
        "players failed after the source returned: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_poller_killed_a_standby_takes_over_and_redirects_never_stop() {
    let (redis, mut servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    );
    let (mut active, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let _standby = Service::poller(&fleet, &redis).await;
    let redirector = &replicas[0];
    let store = RedisStore::new(&redis.url(), Keys::default(), Duration::from_secs(1)).unwrap();

    // A steady load of requests: every one must be redirected to a live mount.
    let good: Vec<String> = servers.iter().map(|s| s.mount_url("/s.ogg")).collect();
    let load = {
        let (url, good) = (redirector.url("/s"), good.clone());
        tokio::spawn(async move {
            let client = client();
            let mut answered = 0u64;
            loop {
                let response = client.head(&url).send().await.unwrap();
                assert_eq!(response.status(), 302, "request {answered}");
                assert!(good.contains(&location(&response)));
                answered += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let before = store.latest_version().await.unwrap();
    active.process.kill();
    let killed = Instant::now();
    // The standby publishes once the dead poller's lease runs out.
    wait_until("the standby to publish", PATIENCE, || {
        let store = &store;
        async move { (store.latest_version().await.ok()? > before + 1).then_some(()) }
    })
    .await;
    let takeover = killed.elapsed();

    // Its snapshots reach the redirector: a stopped source moves players away.
    let stopped = Instant::now();
    servers[0].stop_source("/s.ogg").await;
    let only = servers[1].mount_url("/s.ogg");
    let client = client();
    wait_until(
        "redirects to follow the standby's snapshot",
        PATIENCE,
        || {
            let (client, url, only) = (&client, redirector.url("/s"), &only);
            async move {
                for _ in 0..20 {
                    let response = client.head(&url).send().await.ok()?;
                    if location(&response) != *only {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let followed = stopped.elapsed();
    assert!(!load.is_finished(), "a request failed: {:?}", load.await);
    load.abort();
    println!(
        "poller failover: the standby published {takeover:?} after the kill; \
         redirects followed its snapshot {followed:?} after a source stopped; no request failed"
    );
}

/// The mount `server`/`/s.ogg` in the latest snapshot, and its state.
async fn mount_state(
    store: &RedisStore,
    server: &str,
) -> Option<balancer_proto::snapshot::v1::MountState> {
    let snapshot = store.latest_snapshot().await.ok()??;
    snapshot
        .streams
        .iter()
        .flat_map(|s| &s.mounts)
        .find(|m| m.server == server)
        .map(|m| m.state())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_gets_no_players_until_it_sends_again() {
    use balancer_proto::snapshot::v1::MountState;
    // Icecast would drop a silent source after `source-timeout`; make that
    // long, so only the poller's stall detection can notice.
    let quiet = || spec().source_timeout(120);
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([quiet(), quiet()])
    );
    let fleet = one_stream_fleet(
        &[("one", &servers[0], ""), ("two", &servers[1], "")],
        "admin",
    )
    .replacen("fall = 3\n", "fall = 3\nstall_after = \"11s\"\n", 1);
    let (_poller, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let store = RedisStore::new(&redis.url(), Keys::default(), Duration::from_secs(1)).unwrap();
    let (one, two) = (
        servers[0].mount_url("/s.ogg"),
        servers[1].mount_url("/s.ogg"),
    );
    let client = client();
    // Probes (HEAD) take no slot; 40 of them see both servers while both play.
    let seen = |target: String| {
        let (client, url) = (client.clone(), replicas[0].url("/s"));
        async move {
            let mut hits = 0;
            for _ in 0..40 {
                let response = client.head(&url).send().await.ok()?;
                hits += usize::from(location(&response) == target);
            }
            Some(hits)
        }
    };
    wait_until("redirects to both servers", PATIENCE, || {
        let seen = seen(two.clone());
        async move { seen.await.filter(|&hits| hits > 0) }
    })
    .await;

    servers[1].signal_source("/s.ogg", libc::SIGSTOP);
    let stopped = Instant::now();
    wait_until(
        "the stalled mount to get no players",
        Duration::from_secs(40),
        || {
            let seen = seen(two.clone());
            async move { seen.await.filter(|&hits| hits == 0) }
        },
    )
    .await;
    let detected = stopped.elapsed();
    assert_eq!(mount_state(&store, "two").await, Some(MountState::Stalled));
    assert_eq!(mount_state(&store, "one").await, Some(MountState::Live));
    assert_eq!(
        seen(one.clone()).await,
        Some(40),
        "all players go to the live source"
    );

    servers[1].signal_source("/s.ogg", libc::SIGCONT);
    let resumed = Instant::now();
    wait_until(
        "the source to count as live again",
        Duration::from_secs(30),
        || {
            let store = &store;
            async move { (mount_state(store, "two").await? == MountState::Live).then_some(()) }
        },
    )
    .await;
    let back = resumed.elapsed();
    wait_until("players on the resumed source", PATIENCE, || {
        let seen = seen(two.clone());
        async move { seen.await.filter(|&hits| hits > 0) }
    })
    .await;
    println!(
        "source stalled (SIGSTOP): no players after {detected:?} (stall_after 11 s; Icecast \
         counts bytes every 5 s); live again {back:?} after SIGCONT"
    );
    assert!(
        detected > Duration::from_secs(5),
        "not before the count could have moved"
    );
    // stall_after, plus up to one 5 s count of the bytes buffered before the
    // stop, plus slack for a busy machine.
    assert!(detected < Duration::from_secs(11 + 5 + 6), "{detected:?}");
}
