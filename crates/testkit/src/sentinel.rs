//! Redis with automatic failover on loopback: a master, a replica and three
//! `redis-sentinel` processes (Debian's redis-sentinel package) watching them.

use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::redis::RedisServer;

/// The name the sentinels know the master by.
pub(crate) const MASTER_NAME: &str = "icb";
/// How long a master may be silent before the sentinels call it down.
const DOWN_AFTER_MS: u32 = 1000;
/// How long the set may take to be ready: replica synced, sentinels aware of each other.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A master, its replica and three sentinels, all killed when dropped.
pub struct SentinelSet {
    /// The master at the start (after a failover, the replica is master).
    pub master: RedisServer,
    /// Its replica, promoted when the master fails.
    pub replica: RedisServer,
    sentinels: Vec<(u16, ChildProcess)>,
    _dir: TempDir,
}

impl SentinelSet {
    /// Starts everything and waits until the sentinels agree on the master,
    /// know the replica and each other.
    pub async fn start() -> SentinelSet {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_replica_of(master.port()).await;
        let dir = tempfile::Builder::new()
            .prefix("testkit-sentinel-")
            .tempdir()
            .expect("temp dir for sentinels");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            // Sentinel rewrites its config file, so each gets its own.
            let config = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.path().display(),
                    master = master.port(),
                ),
            )
            .expect("write sentinel config");
            let mut command = Command::new(sentinel_binary());
            command.arg(&config);
            let log = dir.path().join(format!("sentinel-{i}.log"));
            sentinels.push((
                port,
                ChildProcess::spawn("redis-sentinel", &mut command, &log),
            ));
        }
        let set = SentinelSet {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        set.wait_ready().await;
        set
    }

    /// `redis+sentinel://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C/icb`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the master the first answering sentinel names.
    pub async fn master_port(&self) -> Option<u16> {
        for (port, _) in &self.sentinels {
            let reply = query(*port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME]).await;
            if let Some(port) = reply.ok().and_then(|r| r.get(1)?.parse().ok()) {
                return Some(port);
            }
        }
        None
    }

    /// Waits until the sentinels name `port` as the master.
    pub async fn wait_master(&self, port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.master_port().await == Some(port) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut ready = self
                .replica
                .info("replication")
                .await
                .is_ok_and(|info| info.contains("master_link_status:up"));
            for (port, _) in &self.sentinels {
                let fields = query(*port, &["SENTINEL", "master", MASTER_NAME])
                    .await
                    .unwrap_or_default();
                let field = |name: &str| {
                    fields
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| fields.get(i + 1))
                        .cloned()
                        .unwrap_or_default()
                };
                ready &= field("num-slaves") == "1" && field("num-other-sentinels") == "2";
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not settle within {READY_TIMEOUT:?}: {}",
                self.sentinels
                    .iter()
                    .map(|(_, p)| p.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sentinel_binary() -> &'static str {
    ["/usr/bin/redis-sentinel", "/usr/sbin/redis-sentinel"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("redis-sentinel")
}

/// Sends a command to a sentinel and reads a reply of bulk strings (flat or
/// one level of arrays), e.g. `SENTINEL master NAME`.
async fn query(port: u16, args: &[&str]) -> std::io::Result<Vec<String>> {
    let connect = TcpStream::connect(("127.0.0.1", port));
    let mut stream = tokio::time::timeout(Duration::from_secs(1), connect)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let read = async {
        let mut items = Vec::new();
        let mut pending = 1usize;
        while pending > 0 {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            pending -= 1;
            match line.as_bytes().first() {
                Some(b'*') => pending += line[1..].parse::<usize>().unwrap_or(0),
                Some(b'$') => {
                    let Ok(length) = line[1..].parse::<usize>() else {
                        continue; // $-1: nil
                    };
                    let mut body = vec![0u8; length + 2];
                    reader.read_exact(&mut body).await?;
                    items.push(String::from_utf8_lossy(&body[..length]).into_owned());
                }
                Some(b'-') => return Err(std::io::Error::other(line.to_owned())),
                _ => items.push(line.get(1..).unwrap_or("").to_owned()),
            }
        }
        Ok(items)
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
