//! Starting the poller binary and reading what it publishes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use balancer_proto::snapshot::v1::{Mount, Server, Snapshot};
use balancer_store::{Keys, RedisStore};
use balancer_testkit::{ChildProcess, RedisServer, free_port, wait_until};
use tempfile::TempDir;

/// Poll often so tests are quick: 250 ms interval, 200 ms timeout.
pub(crate) const POLLER_TABLE: &str =
    "[poller]\ninterval = \"250ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n";

/// How long tests wait for something the poller should do within a few cycles.
pub(crate) const PATIENCE: Duration = Duration::from_secs(15);

/// A running `icecast-poller`.
pub(crate) struct PollerProcess {
    pub(crate) process: ChildProcess,
    pub(crate) admin: SocketAddr,
    pub(crate) config: PathBuf,
    _dir: TempDir,
}

impl PollerProcess {
    /// Starts the poller on `fleet` (TOML text) against `redis`, and waits until its admin port answers.
    pub(crate) async fn start(fleet: &str, redis: &RedisServer) -> Self {
        PollerProcess::start_with(fleet, redis, &[]).await
    }

    /// Like [`PollerProcess::start`], with more flags.
    pub(crate) async fn start_with(fleet: &str, redis: &RedisServer, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fleet.toml");
        std::fs::write(&config, fleet).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_icecast-poller"));
        command
            .arg("--config")
            .arg(&config)
            .args(["--redis", &redis.url(), "--admin", &admin.to_string()])
            .args(extra)
            .env("RUST_LOG", "info,icecast_poller=debug");
        let mut process = ChildProcess::spawn(
            "icecast-poller",
            &mut command,
            &dir.path().join("poller.log"),
        );
        let deadline = std::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            if let Some(status) = process.exited() {
                panic!("the poller exited ({status}): {}", process.log_tail());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the poller's admin port never opened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PollerProcess {
            process,
            admin,
            config,
            _dir: dir,
        }
    }

    /// Its lease identity contains its process id.
    pub(crate) fn owns(&self, snapshot: &Snapshot) -> bool {
        let pid = self.process.pid().unwrap();
        snapshot.publisher.contains(&format!(":{pid}:"))
    }

    /// Waits until its log contains `text`.
    pub(crate) async fn wait_log(&self, text: &str) {
        wait_until(&format!("{text:?} in the poller log"), PATIENCE, || async {
            self.process.log().contains(text).then_some(())
        })
        .await;
    }
}

/// A reader of what the poller publishes.
pub(crate) fn reader(redis: &RedisServer) -> RedisStore {
    RedisStore::new(&redis.url(), Keys::default(), Duration::from_millis(500)).unwrap()
}

/// Waits for a published snapshot for which `check` holds.
pub(crate) async fn wait_snapshot(
    store: &RedisStore,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    wait_until(what, PATIENCE, || async {
        let snapshot = store.latest_snapshot().await.ok().flatten()?;
        check(&snapshot).then_some(snapshot)
    })
    .await
}

/// The server named `name`.
pub(crate) fn server<'a>(snapshot: &'a Snapshot, name: &str) -> &'a Server {
    snapshot.servers.iter().find(|s| s.name == name).unwrap()
}

/// The mount `mount` on server `server` in stream `stream`.
pub(crate) fn mount<'a>(
    snapshot: &'a Snapshot,
    stream: &str,
    server: &str,
    mount: &str,
) -> &'a Mount {
    snapshot
        .streams
        .iter()
        .find(|s| s.name == stream)
        .and_then(|s| {
            s.mounts
                .iter()
                .find(|m| m.server == server && m.mount == mount)
        })
        .unwrap()
}

/// A `[[server]]` block for a test Icecast.
pub(crate) fn server_block(name: &str, url: &str, status: &str) -> String {
    format!(
        "[[server]]\nname = \"{name}\"\nurl = \"{url}\"\nstatus = \"{status}\"\nadmin_user = \"admin\"\nadmin_password = \"testkit-admin\"\n"
    )
}
