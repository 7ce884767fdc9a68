//! `icecast-crowd`: a flash crowd of players for the saturation benchmark.
//!
//! Each player does what VLC does when it presses play: a new connection to a
//! redirector (the `--url`s in turn), `GET`, and on a 302 a new connection to
//! the `Location`, where it stays connected. Players that a server refuses
//! (anything but 200) were sent to a full mount. `--concurrency` players are
//! in flight at once; admitted players hold their connection until all have
//! finished, so every admitted player counts against its mount.
//!
//! ```text
//! icecast-crowd --url http://127.0.0.1:8000/sim0 --url http://127.0.0.1:8001/sim0 \
//!     --players 6000 --concurrency 400
//! ```
//!
//! `--probes P` makes P in every 100 players probes (a link preview, a
//! monitoring check): they GET the stream and never follow the 302.
//!
//! Prints one line of `key=value` pairs: players, admitted, sent_to_full,
//! told_to_retry, errors, probes_redirected, and redirect latency (p50_ms,
//! p99_ms, max_ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

/// How long one step (connect, answer) may take before the player gives up.
const STEP: Duration = Duration::from_secs(10);

struct Options {
    urls: Vec<(String, String)>,
    players: usize,
    concurrency: usize,
    probes: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        urls: Vec::new(),
        players: 1000,
        concurrency: 100,
        probes: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => options.urls.push(split_url(&value)?),
            "--players" => {
                options.players = value.parse().map_err(|e| format!("--players: {e}"))?
            }
            "--concurrency" => {
                options.concurrency = value.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--probes" => options.probes = value.parse().map_err(|e| format!("--probes: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if options.urls.is_empty() {
        return Err("give at least one --url".into());
    }
    Ok(options)
}

/// `http://host:port/path` as (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((
        authority.to_owned(),
        if path.is_empty() { "/" } else { path }.to_owned(),
    ))
}

/// What happened to one player.
enum Outcome {
    Admitted(TcpStream, Duration),
    SentToFull(Duration),
    ToldToRetry(Duration),
    /// A probe that got a 302 (and took a slot it will not use).
    ProbeRedirected(Duration),
    Error,
}

/// Sends `GET path` on a new connection to `authority`; returns the status,
/// the `Location` if any, and the connection.
async fn get(authority: &str, path: &str) -> Option<(u16, Option<String>, TcpStream)> {
    let mut stream = tokio::time::timeout(STEP, TcpStream::connect(authority))
        .await
        .ok()?
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: icecast-crowd/1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .ok()?
            .ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let location = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    Some((status, location, stream))
}

async fn player(authority: &str, path: &str, probe: bool) -> Outcome {
    let started = Instant::now();
    let Some((status, location, _)) = get(authority, path).await else {
        return Outcome::Error;
    };
    let latency = started.elapsed();
    match (status, location) {
        (302, Some(_)) if probe => Outcome::ProbeRedirected(latency),
        (302, Some(location)) => {
            let Ok((authority, path)) = split_url(&location) else {
                return Outcome::Error;
            };
            match get(&authority, &path).await {
                Some((200, _, stream)) => Outcome::Admitted(stream, latency),
                Some(_) => Outcome::SentToFull(latency),
                None => Outcome::Error,
            }
        }
        (503, _) => Outcome::ToldToRetry(latency),
        _ => Outcome::Error,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!(
                "icecast-crowd: {e}\nusage: icecast-crowd --url URL [--url URL]... --players N --concurrency C"
            );
            return std::process::ExitCode::from(64);
        }
    };
    let gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let held = Arc::new(Mutex::new(Vec::new()));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(options.players)));
    let counts = Arc::new(Mutex::new([0usize; 5]));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.players);
    for i in 0..options.players {
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        let (authority, path) = options.urls[i % options.urls.len()].clone();
        let (held, latencies, counts) = (held.clone(), latencies.clone(), counts.clone());
        let probe = i % 100 < options.probes;
        tasks.push(tokio::spawn(async move {
            let outcome = player(&authority, &path, probe).await;
            drop(permit);
            let (slot, latency) = match outcome {
                Outcome::Admitted(stream, latency) => {
                    held.lock().await.push(stream);
                    (0, Some(latency))
                }
                Outcome::SentToFull(latency) => (1, Some(latency)),
                Outcome::ToldToRetry(latency) => (2, Some(latency)),
                Outcome::Error => (3, None),
                Outcome::ProbeRedirected(latency) => (4, Some(latency)),
            };
            counts.lock().await[slot] += 1;
            if let Some(latency) = latency {
                latencies.lock().await.push(latency);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let mut latencies = latencies.lock().await.clone();
    latencies.sort_unstable();
    let at = |p: usize| {
        latencies
            .get(latencies.len().saturating_sub(1) * p / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let counts = *counts.lock().await;
    println!(
        "players={} admitted={} sent_to_full={} told_to_retry={} errors={} probes_redirected={} seconds={:.2} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        options.players,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        elapsed.as_secs_f64(),
        at(50),
        at(99),
        at(100),
    );
    drop(held);
    std::process::ExitCode::SUCCESS
}
