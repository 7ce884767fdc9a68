//! A rolling restart of both redirector replicas behind HAProxy, under load,
//! without one failed request: HAProxy checks each replica's health
//! (`/healthz` on the admin port), which turns NOT_SERVING on SIGTERM while
//! the replica keeps answering for its drain delay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use balancer_testkit::{ChildProcess, IcecastServer, IcecastSpec, MountSpec, RedisServer};
use balancer_testkit::{free_port, wait_until};
use tempfile::TempDir;

use crate::support::*;

/// Concurrent players hammering the balancer during the restart.
const CLIENTS: usize = 4;

/// HAProxy in front of the redirectors, as an operator would run it.
struct Haproxy {
    process: ChildProcess,
    front: SocketAddr,
    stats: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    async fn start(backends: &[(&str, SocketAddr, SocketAddr)]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = format!(
            "\
defaults
  mode http
  timeout connect 1s
  timeout client 10s
  timeout server 5s
  # A request that found a replica gone is retried on another one.
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout

frontend players
  bind {front}
  default_backend redirectors

backend redirectors
  balance roundrobin
  # The replica's health over HTTP on its admin port (the same as its gRPC health).
  option httpchk GET /healthz
  http-check expect status 200
  default-server inter 100ms fall 2 rise 2
"
        );
        for (name, listen, admin) in backends {
            config += &format!("  server {name} {listen} check port {}\n", admin.port());
        }
        config += &format!("\nlisten stats\n  bind {stats}\n  stats enable\n  stats uri /stats\n");
        let process = start_haproxy(dir.path(), &config, front).await;
        Haproxy {
            process,
            front,
            stats,
            _dir: dir,
        }
    }

    /// The stats CSV rows of the backend's servers: (name, status, retries, redispatches).
    async fn servers(&self) -> Vec<(String, String, u64, u64)> {
        let url = format!("http://{}/stats;csv", self.stats);
        let Ok(response) = client().get(url).send().await else {
            return Vec::new();
        };
        let csv = response.text().await.unwrap_or_default();
        csv.lines()
            .filter(|line| line.starts_with("redirectors,") && !line.contains(",BACKEND,"))
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let number = |i: usize| fields[i].parse().unwrap_or(0);
                (
                    fields[1].to_owned(),
                    fields[17].to_owned(),
                    number(15),
                    number(16),
                )
            })
            .collect()
    }

    async fn wait_status(&self, server: &str, status: &str) {
        let what = format!("haproxy to see {server} {status}");
        wait_until(&what, PATIENCE, || async {
            self.servers()
                .await
                .iter()
                .any(|(name, s, ..)| name == server && s.starts_with(status))
                .then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_fails_no_request() {
    let (redis, icecast) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start(IcecastSpec::new([MountSpec::ogg("/s.ogg")]))
    );
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    let drain = ["--drain-delay", "1s"];
    let (_poller, mut replicas) = balancer(&redis, &fleet, 2, &drain).await;
    let names = ["r1", "r2"];
    let backends: Vec<(&str, SocketAddr, SocketAddr)> = names
        .iter()
        .zip(&replicas)
        .map(|(name, r)| (*name, r.listen, r.admin))
        .collect();
    let haproxy = Haproxy::start(&backends).await;
    for name in names {
        haproxy.wait_status(name, "UP").await;
    }

    // Players arriving on new connections; HEAD, so the load takes no slots.
    let running = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    let target = icecast.mount_url("/s.ogg");
    let url = format!("http://{}/s", haproxy.front);
    let load: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (running, answered) = (Arc::clone(&running), Arc::clone(&answered));
            let (url, target) = (url.clone(), target.clone());
            tokio::spawn(async move {
                let client = balancer_testkit::http()
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut failures = Vec::new();
                while running.load(Ordering::Relaxed) {
                    match client.head(&url).send().await {
                        Ok(r) if r.status() == 302 && location(&r) == target => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("{}", r.status())),
                        Err(e) => failures.push(format!("{e}")),
                    }
                }
                failures
            })
        })
        .collect();

    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let (listen, admin) = (replicas[i].listen, replicas[i].admin);
        replicas[i].process.signal(libc::SIGTERM);
        haproxy.wait_status(name, "DOWN").await;
        let status = replicas[i]
            .process
            .wait_exit(PATIENCE)
            .await
            .expect("the replica exits after its drain delay");
        assert!(status.success(), "{status}");
        replicas[i] = Service::following_on(&redis, listen, admin, &drain).await;
        haproxy.wait_status(name, "UP").await;
        println!(
            "{name} restarted and back in rotation at {:?}",
            started.elapsed()
        );
    }
    running.store(false, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    let total = answered.load(Ordering::Relaxed);
    let (retries, redispatches) = haproxy
        .servers()
        .await
        .iter()
        .fold((0, 0), |(r, d), s| (r + s.2, d + s.3));
    println!(
        "rolling restart behind haproxy: {total} requests in {:?}, {} failed; haproxy retried {retries} and redispatched {redispatches}",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        haproxy.process.log_tail()
    );
    assert!(total > 100, "too little load to mean anything: {total}");
}
