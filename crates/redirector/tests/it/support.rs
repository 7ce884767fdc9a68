//! Starting the redirector (and poller) binaries, and asking them for streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use balancer_testkit::{ChildProcess, IcecastServer, RedisServer, free_port};
use tempfile::TempDir;

/// Poll often so tests are quick.
pub(crate) const POLLER_TABLE: &str =
    "[poller]\ninterval = \"250ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n";
/// How long tests wait for something that should take a few poll cycles.
pub(crate) const PATIENCE: Duration = Duration::from_secs(15);

/// A running binary of ours with its ports.
pub(crate) struct Service {
    pub(crate) process: ChildProcess,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) _dir: TempDir,
}

impl Service {
    /// `icecast-redirector` standalone on `fleet` (TOML text).
    pub(crate) async fn standalone(fleet: &str, extra: &[&str]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, fleet).unwrap();
        let mut args = vec!["--fleet".to_owned(), path.display().to_string()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Service::redirector(dir, args).await
    }

    /// `icecast-redirector` following `redis`.
    pub(crate) async fn following(redis: &RedisServer, extra: &[&str]) -> Service {
        Service::following_url(&redis.url(), extra).await
    }

    /// `icecast-redirector` following the Redis at `url` (e.g. `redis+sentinel://`).
    pub(crate) async fn following_url(url: &str, extra: &[&str]) -> Service {
        let mut args = vec!["--redis".to_owned(), url.to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Service::redirector(tempfile::tempdir().unwrap(), args).await
    }

    /// `icecast-redirector` following `redis` on given ports, e.g. to restart
    /// a replica where its load balancer expects it.
    pub(crate) async fn following_on(
        redis: &RedisServer,
        listen: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Service {
        let mut args = vec!["--redis".to_owned(), redis.url()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Service::redirector_on(tempfile::tempdir().unwrap(), args, listen, admin).await
    }

    async fn redirector(dir: TempDir, args: Vec<String>) -> Service {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Service::redirector_on(dir, args, listen, admin).await
    }

    async fn redirector_on(
        dir: TempDir,
        mut args: Vec<String>,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Service {
        args.extend([
            "--listen".to_owned(),
            listen.to_string(),
            "--admin".to_owned(),
            admin.to_string(),
        ]);
        let mut command = Command::new(env!("CARGO_BIN_EXE_icecast-redirector"));
        command
            .args(&args)
            .env("RUST_LOG", "info,icecast_redirector=debug");
        let process = ChildProcess::spawn(
            "icecast-redirector",
            &mut command,
            &dir.path().join("redirector.log"),
        );
        let mut service = Service {
            process,
            listen,
            admin,
            _dir: dir,
        };
        service.wait_port(listen).await;
        service
    }

    /// `icecast-poller` on `fleet` publishing to `redis`.
    pub(crate) async fn poller(fleet: &str, redis: &RedisServer) -> Service {
        Service::poller_at(fleet, &redis.url()).await
    }

    /// `icecast-poller` on `fleet` publishing to the Redis at `url`.
    pub(crate) async fn poller_at(fleet: &str, url: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("fleet.toml");
        std::fs::write(&path, fleet).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // Another package's binary: built beside ours by a workspace build.
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_icecast-redirector"))
            .with_file_name("icecast-poller");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo build -p icecast-poller` (cargo xtask test does)",
            binary.display()
        );
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&path)
            .args(["--redis", url, "--admin", &admin.to_string()])
            .env("RUST_LOG", "info");
        let process = ChildProcess::spawn(
            "icecast-poller",
            &mut command,
            &dir.path().join("poller.log"),
        );
        let mut service = Service {
            process,
            listen: admin,
            admin,
            _dir: dir,
        };
        service.wait_port(admin).await;
        service
    }

    async fn wait_port(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = self.process.exited() {
                panic!("exited ({status}): {}", self.process.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "port {addr} never opened: {}",
                self.process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://LISTEN/path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }
}

/// An HTTP client that does not follow redirects, to look at 302s.
pub(crate) fn client() -> reqwest::Client {
    balancer_testkit::http()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Asks until the redirector answers `status` (it may still be waiting for data).
pub(crate) async fn wait_status(url: &str, status: u16) -> reqwest::Response {
    let client = client();
    let deadline = Instant::now() + PATIENCE;
    let mut last;
    loop {
        match client.get(url).send().await {
            Ok(response) if response.status().as_u16() == status => return response,
            Ok(response) => {
                last = format!(
                    "{} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )
            }
            Err(e) => last = format!("error: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered {status}; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `Location` of a response.
pub(crate) fn location(response: &reqwest::Response) -> String {
    let Some(location) = response.headers().get("location") else {
        panic!(
            "a {} without a location: {:?}",
            response.status(),
            response.headers()
        );
    };
    location.to_str().unwrap().to_owned()
}

/// Where a player asking `url` with GET is sent: asks again after a 503, as
/// a player does after `Retry-After` (a slot lease from a Redis slowed by a
/// loaded machine can take longer than a request may wait), and fails on any
/// other answer than a 302.
pub(crate) async fn redirected_to(client: &reqwest::Client, url: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = client.get(url).send().await.unwrap();
        if response.status() != 503 {
            assert_eq!(response.status(), 302, "{url}");
            return location(&response);
        }
        assert!(
            Instant::now() < deadline,
            "{url} answered 503 for {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks `redirector` for `/s` (HEAD, 10 at a time) until a whole round is
/// sent to `target`; fails if that is not so within a second of `since` (an
/// operator's action). Returns how long it took.
pub(crate) async fn all_sent_within_a_second(
    redirector: &Service,
    target: &str,
    since: Instant,
) -> Duration {
    let client = client();
    loop {
        let mut all_there = true;
        for _ in 0..10 {
            all_there &=
                location(&client.head(redirector.url("/s")).send().await.unwrap()) == target;
        }
        if all_there {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "players still sent elsewhere than {target} a second after the action"
        );
    }
}

/// A `[[server]]` block for a test Icecast polled through `/admin/stats`.
pub(crate) fn server_block(name: &str, icecast: &IcecastServer, extra: &str) -> String {
    format!(
        "[[server]]\nname = \"{name}\"\nurl = \"{}\"\nadmin_user = \"admin\"\nadmin_password = \"testkit-admin\"\n{extra}\n",
        icecast.base_url()
    )
}

/// A fleet with one stream `s` carried by `/s.ogg` on every server, polled through `status`.
pub(crate) fn one_stream_fleet(servers: &[(&str, &IcecastServer, &str)], status: &str) -> String {
    let mut fleet = POLLER_TABLE.to_owned();
    let mut mounts = Vec::new();
    for (name, icecast, extra) in servers {
        fleet += &server_block(name, icecast, &format!("status = \"{status}\"\n{extra}"));
        mounts.push(format!("{{ server = \"{name}\", mount = \"/s.ogg\" }}"));
    }
    fleet
        + &format!(
            "[[stream]]\nname = \"s\"\nmounts = [{}]\n",
            mounts.join(", ")
        )
}

/// A poller and `replicas` redirectors on one Redis, ready to redirect `/s`.
pub(crate) async fn balancer(
    redis: &RedisServer,
    fleet: &str,
    replicas: usize,
    extra: &[&str],
) -> (Service, Vec<Service>) {
    let poller = Service::poller(fleet, redis).await;
    let mut redirectors = Vec::new();
    for _ in 0..replicas {
        redirectors.push(Service::following(redis, extra).await);
    }
    for redirector in &redirectors {
        wait_health(redirector, true).await;
    }
    (poller, redirectors)
}

/// Waits until the service's gRPC health says SERVING (or NOT_SERVING).
pub(crate) async fn wait_health(service: &Service, serving: bool) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let want = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = async {
            let channel =
                tonic::transport::Channel::from_shared(format!("http://{}", service.admin))
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let reply = client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            Some(reply.into_inner().status())
        }
        .await;
        if status == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {want:?}: {}",
            service.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HAProxy on `config` (its log and config in `dir`), once it listens on `front`.
pub(crate) async fn start_haproxy(
    dir: &std::path::Path,
    config: &str,
    front: SocketAddr,
) -> ChildProcess {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("haproxy is missing: `cargo xtask test` installs it");
    let mut command = Command::new(binary);
    command.arg("-db").arg("-f").arg(&path);
    let process = ChildProcess::spawn("haproxy", &mut command, &dir.join("haproxy.log"));
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(front).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy never listened: {}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process
}
