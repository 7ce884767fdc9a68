//! A real `redis-server` on a free loopback port.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::ports::free_port;
use crate::process::ChildProcess;

/// How long a redis-server may take to answer PING after starting.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` without persistence, in its own temporary directory.
///
/// Killed when dropped. [`RedisServer::kill`], [`RedisServer::restart`],
/// [`RedisServer::pause`] and [`RedisServer::resume`] stage outages.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    process: Option<ChildProcess>,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub async fn start() -> Self {
        RedisServer::start_with(None).await
    }

    /// Starts a replica of the server on `master_port` (`--replicaof`).
    pub async fn start_replica_of(master_port: u16) -> Self {
        RedisServer::start_with(Some(master_port)).await
    }

    async fn start_with(replica_of: Option<u16>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("testkit-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut dir = dir;
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let mut server = RedisServer {
                port: free_port(),
                dir,
                process: None,
                replica_of,
            };
            match server.launch().await {
                Ok(()) => return server,
                Err(failure) => {
                    last_failure = failure;
                    dir = server.into_dir();
                }
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_failure}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
    }

    /// Kills it with SIGKILL: every key is lost, as in a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again on the same port (empty), after [`RedisServer::kill`].
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(failure) = self.launch().await {
            panic!(
                "redis-server did not restart on port {}: {failure}",
                self.port
            );
        }
    }

    /// Freezes it with SIGSTOP: connections stay open but nothing answers.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGSTOP);
        }
    }

    /// Thaws it with SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGCONT);
        }
    }

    /// Whether it answers PING within a second.
    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.command(&["PING"])).await,
            Ok(Ok(reply)) if reply == "+PONG"
        )
    }

    /// Sends one command and returns the first line of the reply, e.g. `+OK`,
    /// `:1` or `$5` (bulk replies are not read further). For checks in tests;
    /// the code under test uses a real client.
    pub async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line.trim_end().to_owned())
    }

    /// The text of `INFO section` (e.g. `commandstats`), to measure what the
    /// code under test asked of Redis.
    pub async fn info(&self, section: &str) -> std::io::Result<String> {
        use tokio::io::AsyncReadExt;
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let request = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let length: usize = header.trim().trim_start_matches('$').parse().unwrap_or(0);
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// How many times Redis ran `command` (from `INFO commandstats`), e.g. `evalsha`.
    pub async fn calls(&self, command: &str) -> u64 {
        let stats = self.info("commandstats").await.unwrap_or_default();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    async fn launch(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        self.process = Some(ChildProcess::spawn("redis-server", &mut command, &log));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let process = self.process.as_mut().expect("started above");
            if let Some(status) = process.exited() {
                let failure = format!("redis-server exited ({status}): {}", process.log_tail());
                self.kill();
                return Err(failure);
            }
            if self.ping().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let failure = format!("no PONG within {START_TIMEOUT:?}: {}", process_tail(self));
                self.kill();
                return Err(failure);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn into_dir(mut self) -> TempDir {
        self.kill();
        let RedisServer { dir, .. } = self;
        dir
    }
}

fn process_tail(server: &RedisServer) -> String {
    server
        .process
        .as_ref()
        .map(ChildProcess::log_tail)
        .unwrap_or_default()
}
