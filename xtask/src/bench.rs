//! `cargo xtask bench`: load tests on this machine, results in BENCHMARKS.md.
//!
//! Each server under test is pinned to CPU 0 and its load to CPU 1
//! (`taskset`), and CPU time is read from `/proc/PID/stat`.

use std::fs;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::packages::{self, Tool};
use crate::{cargo, run, workspace_root};

mod instructions;
mod paired;

const BENCH_TOOLS: &[Tool] = &[
    Tool {
        program: "redis-server",
        package: "redis-server",
    },
    Tool {
        program: "taskset",
        package: "util-linux",
    },
];

/// The benchmark cases, in the order `cargo xtask bench` runs them.
pub(crate) const CASES: [&str; 6] = [
    "poller",
    "geo",
    "redirector",
    "paired",
    "instructions",
    "saturation",
];

/// Runs the benchmark cases named (all when `only` is None) and records the results.
pub(crate) fn bench(only: Option<&str>) -> anyhow::Result<()> {
    if let Some(case) = only.filter(|c| !CASES.contains(c)) {
        bail!("unknown benchmark case {case:?}; the cases are {CASES:?}");
    }
    let wanted = |case: &str| only.is_none_or(|o| o == case);
    packages::ensure("the benchmarks", BENCH_TOOLS)?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "icecast-poller",
        "-p",
        "balancer-testkit",
        "--bin",
        "icecast-poller",
        "--bin",
        "icecast-sim",
        "--bin",
        "icecast-crowd",
        "-p",
        "icecast-redirector",
        "--bin",
        "icecast-redirector",
    ]))?;
    if wanted("poller") {
        poller_section()?;
    }
    if wanted("geo") {
        let geo = geo_case()?;
        println!("{geo}");
        record("geo", &geo)?;
    }
    if wanted("redirector") {
        let redirector = redirector_case()?;
        println!("{redirector}");
        record("redirector", &redirector)?;
    }
    if wanted("paired") {
        let paired = paired::paired_case()?;
        println!("{paired}");
        if std::env::var_os(paired::BASELINE_VAR).is_none() {
            record("paired", &paired)?;
        }
    }
    if wanted("instructions") {
        let instructions = instructions::instructions_case()?;
        println!("{instructions}");
        record("instructions", &instructions)?;
    }
    if wanted("saturation") {
        let saturation = saturation_case()?;
        println!("{saturation}");
        record("saturation", &saturation)?;
    }
    Ok(())
}

fn poller_section() -> anyhow::Result<()> {
    let window = Duration::from_secs(30);
    let quiet = poller_case(1000, 5, window, "off", "off")?;
    let canaries = poller_case(1000, 5, window, "30s", "off")?;
    let audience = poller_case(1000, 5, window, "30s", "10s")?;
    let row = |name: &str, goal: &str, value: &dyn Fn(&PollerResult) -> String| {
        format!(
            "| {name} | {} | {} | {} | {goal} |\n",
            value(&quiet),
            value(&canaries),
            value(&audience)
        )
    };
    let section = format!(
        "## Poller: 1,000 simulated Icecast servers x 5 mounts, 1 s interval\n\n\
         Command: `cargo xtask bench`. Machine: {machine}. Run: {date}.\n\n\
         `icecast-sim` (crates/testkit) serves 1,000 `/admin/stats` documents on 1,000 loopback\n\
         ports (CPU 1); the release-built poller polls all of them every second on CPU 0 and\n\
         publishes to redis-server (CPU 1). Measured over {window} s after a 5 s warm-up, three\n\
         times: with canaries and audience off; with the default `canary_interval = \"30s\"` (one\n\
         canary per server per 30 s, spread: about 33 a second, each a GET of a mount reading\n\
         4 KiB, with a slot leased from Redis first); and with the audience on as well, every\n\
         10 s (its default is 60 s), each round reading all 5,000 listener lists (0 to 89\n\
         listeners each, about 220,000 in all) and adding them up.\n\n\
         | measure | both off | canaries every 30 s | and audience every 10 s | goal |\n\
         |---|---|---|---|---|\n\
         {cpu}{cycles}{median}{max}{up}{redis}{sent}{rounds}",
        machine = machine(),
        date = today(),
        window = window.as_secs(),
        cpu = row("poller CPU, share of one core", "under 25%", &|p| format!(
            "{:.1}%",
            p.cpu_share * 100.0
        )),
        cycles = row("cycles completed / intervals elapsed", "all", &|p| format!(
            "{} / {}",
            p.cycles.len(),
            p.window.as_secs()
        )),
        median = row("cycle time, median", "under 1000 ms", &|p| format!(
            "{} ms",
            percentile(&p.cycles, 50)
        )),
        max = row("cycle time, max", "under 1000 ms", &|p| format!(
            "{} ms",
            p.cycles.iter().max().copied().unwrap_or(0)
        )),
        up = row("servers up in the last cycle", "all", &|p| format!(
            "{} / 1000",
            p.last_up
        )),
        redis = row(
            "redis-server CPU per cycle (snapshot, and canary leases)",
            "",
            &|p| { format!("{:.0} µs", p.redis_cpu_per_cycle.as_secs_f64() * 1e6) }
        ),
        sent = row(
            "canaries heard / failed in the window",
            "none failed",
            &|p| format!("{} / {}", p.canaries.0, p.canaries.1)
        ),
        rounds = row(
            "audience rounds in the window / listeners the last counted",
            "",
            &|p| format!("{} / {}", p.audience.0, p.audience.1)
        ),
    );
    println!("{section}");
    record("poller", &section)
}

/// The geo benchmark binary, pinned to CPU 0; its lines become a table.
fn geo_case() -> anyhow::Result<String> {
    let bench = [
        "bench",
        "--locked",
        "-p",
        "balancer-geo",
        "--bench",
        "lookup_and_rank",
    ];
    run(cargo().args(bench).arg("--no-run"))?;
    let output = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(bench)
        .arg("-q")
        .current_dir(workspace_root())
        .output()
        .context("run the geo benchmark")?;
    if !output.status.success() {
        bail!(
            "the geo benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut rows = String::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some((label, result)) = line.split_once(": median ") {
            rows.push_str(&format!(
                "| {label} | {} |\n",
                result.replace(" (", " | (").trim_end()
            ));
        }
    }
    Ok(format!(
        "## Geo: GeoIP lookup and ranking of 50 candidates\n\n\
         Command: `cargo xtask bench` (runs `cargo bench -p balancer-geo --bench lookup_and_rank` on CPU 0).\n\
         Machine: {machine}. Run: {date}. Goal: lookup + ranking under 2 µs per request on one core.\n\n\
         A City database of 16,384 networks whose records carry names in eight languages, like\n\
         GeoLite2's, plus an ASN database; 50 candidates in 8 countries; 1,024 client addresses,\n\
         whose records each thread decodes once and then finds by offset (`lookup`); the second\n\
         row decodes every record, as for a player from a place the thread has not seen yet.\n\
         `rank_top(3)` is what a redirect does (the first choice and two spares); the full order is\n\
         for `Explain` and playlists of every candidate.\n\n\
         | case | median per request | spread |\n|---|---|---|\n{rows}",
        machine = machine(),
        date = today(),
    ))
}

struct PollerResult {
    window: Duration,
    /// Canaries that heard the stream, and that failed, in the window.
    canaries: (usize, usize),
    /// Audience rounds completed in the window, and the listeners the last counted.
    audience: (usize, u64),
    cpu_share: f64,
    cycles: Vec<u64>,
    last_up: u64,
    redis_cpu_per_cycle: Duration,
}

fn poller_case(
    servers: usize,
    mounts: usize,
    window: Duration,
    canary_interval: &str,
    audience_interval: &str,
) -> anyhow::Result<PollerResult> {
    let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let release = workspace_root().join("target/release");
    // Redis must own its port before the simulator binds 1,000 ephemeral ones.
    let (_redis, port, redis_pid) = start_redis()?;
    let fleet = dir.join("fleet.toml");
    let _sim = start_sim(
        &fleet,
        &[
            "--servers",
            &servers.to_string(),
            "--mounts",
            &mounts.to_string(),
            "--canary-interval",
            canary_interval,
            "--audience-interval",
            audience_interval,
        ],
    )?;
    let log = dir.join("poller.log");
    let poller = Guard(
        pinned(0, &release.join("icecast-poller").to_string_lossy())
            .arg("--config")
            .arg(&fleet)
            .args([
                "--redis",
                &format!("redis://127.0.0.1:{port}/"),
                "--admin",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn,icecast_poller::service=debug")
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("start icecast-poller")?,
    );
    std::thread::sleep(Duration::from_secs(5));
    let (cpu_before, redis_before, log_before) = (
        cpu_time(poller.0.id())?,
        cpu_time(redis_pid)?,
        fs::read_to_string(&log)?.len(),
    );
    let started = Instant::now();
    std::thread::sleep(window);
    let (cpu_after, redis_after) = (cpu_time(poller.0.id())?, cpu_time(redis_pid)?);
    let elapsed = started.elapsed();
    let text = fs::read_to_string(&log)?;
    let cycles: Vec<(u64, u64)> = text[log_before..]
        .lines()
        .filter(|l| l.contains("cycle done"))
        .filter_map(|l| Some((field(l, "took_ms=")?, field(l, "up=")?)))
        .collect();
    if cycles.is_empty() {
        bail!(
            "the poller logged no cycle; its log:\n{}",
            &text[text.len().saturating_sub(2000)..]
        );
    }
    let window_log = &text[log_before..];
    let canaries = (
        window_log.matches("canary heard the stream").count(),
        window_log.matches("canary failed").count(),
    );
    let rounds: Vec<u64> = window_log
        .lines()
        .filter(|l| l.contains("audience round done"))
        .filter_map(|l| field(l, "listeners="))
        .collect();
    let audience = (rounds.len(), rounds.last().copied().unwrap_or(0));
    let _ = fs::remove_dir_all(&dir);
    Ok(PollerResult {
        window,
        canaries,
        audience,
        cpu_share: (cpu_after - cpu_before).as_secs_f64() / elapsed.as_secs_f64(),
        last_up: cycles.last().map_or(0, |c| c.1),
        redis_cpu_per_cycle: (redis_after - redis_before)
            / u32::try_from(cycles.len()).unwrap_or(1),
        cycles: cycles.into_iter().map(|c| c.0).collect(),
    })
}

/// Replaces (or appends) the section between `<!-- NAME:start -->` and `<!-- NAME:end -->`.
fn record(name: &str, section: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nMeasured with `cargo xtask bench` on the project's 2-core build machine. The\n\
         machines are shared and noisy: compare ratios and medians, not single numbers.\n"
            .to_owned()
    });
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let block = format!("{start}\n{section}{end}");
    let text = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

fn pinned(cpu: u32, program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string(), program]);
    command
}

/// Kills a benchmark process when the case ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An nginx master, stopped as nginx is meant to be: a SIGKILL would leave
/// its worker running, serving the bench's port after the bench.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: a fast shutdown, the master stopping its workers first.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User plus system CPU time of a process, from /proc/PID/stat.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = cpu_split(pid)?;
    Ok(user + system)
}

/// A process's CPU time in user space and in the kernel, from /proc.
fn cpu_split(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|t| t.parse().ok()).unwrap_or(0) };
    let time = |t: u64| Duration::from_secs_f64(t as f64 / clock_ticks());
    Ok((time(ticks(11)), time(ticks(12))))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A redis-server without persistence on CPU 1, answering PING: the guard,
/// its port and its pid (taskset execs the program, so the child's pid is redis-server's).
fn start_redis() -> anyhow::Result<(Guard, u16, u32)> {
    let port = free_port()?;
    let redis = Guard(
        pinned(1, "redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("start redis-server")?,
    );
    let pid = redis.0.id();
    wait_for(|| redis_answers(port), "redis-server to answer PING")?;
    Ok((redis, port, pid))
}

fn redis_answers(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split(name)
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn percentile(values: &[u64], p: usize) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted
        .get((sorted.len().saturating_sub(1)) * p / 100)
        .copied()
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One wrk run against one server.
struct Run {
    requests: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: Duration,
    /// The part of `cpu` spent in user space.
    user_cpu: Duration,
    redis_cpu: Duration,
    non_3xx: u64,
}

/// Redirector against nginx's static `return 302`, both on CPU 0, wrk on CPU 1:
/// new connection per request and keep-alive, [`ROUNDS`] alternating rounds of 10 s.
pub(crate) fn redirector_case() -> anyhow::Result<String> {
    let contestants = Contestants::start("redirector")?;
    let Contestants {
        dir,
        setup,
        redirector,
        redirector_port,
        nginx_port,
        deferred_port,
        nginx_pids,
        ..
    } = &contestants;
    let (redirector_port, nginx_port, deferred_port) =
        (*redirector_port, *nginx_port, *deferred_port);
    let (redis_pid, crowd) = (setup.redis_pid, &setup.crowd);

    let modes = [("new connection per request", true), ("keep-alive", false)];
    let mut results: Vec<(&str, &str, Vec<Run>)> = Vec::new();
    let awake_modes = [
        ("new connection per request, core kept awake", true),
        ("keep-alive, core kept awake", false),
    ];
    for (index, (mode, close)) in modes.into_iter().chain(awake_modes).enumerate() {
        let _spinner = if index >= modes.len() {
            Some(keep_awake(0)?)
        } else {
            None
        };
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut deferred = Vec::new();
        for _ in 0..ROUNDS {
            ours.push(warmed_up(
                redirector_port,
                close,
                &[redirector.0.id()],
                redis_pid,
                crowd,
            )?);
            theirs.push(warmed_up(nginx_port, close, nginx_pids, redis_pid, crowd)?);
            deferred.push(warmed_up(
                deferred_port,
                close,
                nginx_pids,
                redis_pid,
                crowd,
            )?);
        }
        results.push((mode, "icecast-redirector", ours));
        results.push((mode, "nginx return 302", theirs));
        results.push((mode, "nginx return 302, listen deferred", deferred));
    }
    // Where the time goes, in separate short runs (tracing slows a server
    // down, so these runs are not the ones measured above).
    let mut anatomy = String::new();
    for (mode, close) in modes {
        for (server, pids, worker) in [
            (
                "icecast-redirector",
                vec![redirector.0.id()],
                redirector.0.id(),
            ),
            (
                "nginx return 302",
                nginx_pids.clone(),
                *nginx_pids.last().unwrap_or(&0),
            ),
        ] {
            let (per_request, calls) = syscalls_per_request(
                port_of(server, redirector_port, nginx_port),
                close,
                &pids,
                redis_pid,
                dir,
            )?;
            let profile = profile(
                port_of(server, redirector_port, nginx_port),
                close,
                worker,
                redis_pid,
                dir,
            )?;
            anatomy.push_str(&format!(
                "**{server}, {mode}:** {per_request:.2} syscalls per request ({calls}).\n\n\
                 Profile (`perf record -g`, self time: the share of each binary, then the \
                 kernel's {PROFILE_KERNEL} and user space's {PROFILE_USER} biggest symbols \
                 over {PROFILE_LIMIT}%):\n\n```\n{profile}```\n\n"
            ));
        }
    }
    drop(contestants);
    // Every answer must be a redirect: a 503 costs less than a 302, so a run
    // with any other answer compares nothing and is not recorded.
    for (mode, server, runs) in &results {
        let other: u64 = runs.iter().map(|r| r.non_3xx).sum();
        if other > 0 {
            bail!("{server} ({mode}) gave {other} answers other than 3xx: the run is invalid");
        }
    }

    let median = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let cpu_us = |r: &Run| r.cpu.as_secs_f64() * 1e6 / r.requests.max(1.0);
    let mut table = String::from(
        "| mode | server | requests/s | p50 | p99 | server CPU per request | of it in user space | Redis CPU per request | non-3xx |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut ratios = String::new();
    for trio in results.chunks(3) {
        for (mode, server, runs) in trio {
            table.push_str(&format!(
                "| {mode} | {server} | {:.0} | {:.2} ms | {:.2} ms | {:.1} µs (spread {:.1}–{:.1}) | {:.1} µs | {:.2} µs | {} |\n",
                median(runs, |r| r.rps),
                median(runs, |r| r.p50_ms),
                median(runs, |r| r.p99_ms),
                median(runs, cpu_us),
                runs.iter().map(cpu_us).fold(f64::INFINITY, f64::min),
                runs.iter().map(cpu_us).fold(0.0, f64::max),
                median(runs, |r| r.user_cpu.as_secs_f64() * 1e6 / r.requests.max(1.0)),
                median(runs, |r| r.redis_cpu.as_secs_f64() * 1e6
                    / r.requests.max(1.0)),
                runs.iter().map(|r| r.non_3xx).sum::<u64>(),
            ));
        }
        let ours = &trio[0].2;
        for (label, theirs) in [("nginx", &trio[1].2), ("nginx deferred", &trio[2].2)] {
            let per_round: Vec<String> = ours
                .iter()
                .zip(theirs.iter())
                .map(|(o, t)| format!("{:.2}", cpu_us(o) / cpu_us(t)))
                .collect();
            ratios.push_str(&format!(
                "- {}: redirector / {label} CPU per request {:.2}x (rounds {}), user-space CPU {:.2}x, p99 {:.2}x, throughput {:.2}x\n",
                trio[0].0,
                median(ours, cpu_us) / median(theirs, cpu_us),
                per_round.join(", "),
                median(ours, |r| r.user_cpu.as_secs_f64() / r.requests.max(1.0))
                    / median(theirs, |r| r.user_cpu.as_secs_f64() / r.requests.max(1.0)),
                median(ours, |r| r.p99_ms) / median(theirs, |r| r.p99_ms),
                median(ours, |r| r.rps) / median(theirs, |r| r.rps),
            ));
        }
    }
    Ok(format!(
        "## Redirector against nginx\n\n\
         Command: `cargo xtask bench`. Machine: {machine}. Run: {date}.\n\n\
         Both servers on CPU 0 (`taskset`), wrk (1 thread, 50 connections, 10 s, each round after\n\
         a 2 s unmeasured warm-up of the same load) on CPU 1, loopback only, 5 alternating rounds\n\
         per mode, medians. The redirector follows a poller publishing a\n\
         snapshot of 100 simulated servers x 5 mounts (icecast-sim, CPU 1) through redis-server\n\
         (CPU 1): 5 streams, each on one mount of every server, so a request ranks 100 candidates.\n\
         A GeoIP City database, geo ranking and reservations are on. The load is a crowd: each\n\
         request carries `X-Forwarded-For` with one of 8,192 addresses in 2,048 networks, each\n\
         network at its own place (32 cities in Europe and beyond), and the redirector trusts\n\
         the loopback proxy, so it places and ranks each player where it is. nginx answers a\n\
         static `return 302` with 1 worker and unlimited keep-alive requests, on one port as\n\
         installed and on another with `listen ... deferred` (TCP_DEFER_ACCEPT, which the redirector\n\
         sets). CPU per request is user+system time from /proc over the run (the user-space part in\n\
         its own column); Redis CPU includes the poller's publications. A run with any answer other\n\
         than a redirect, warm-ups included, is refused.\n\n\
         The modes \"core kept awake\" run the same rounds with a busy loop at `SCHED_IDLE` on\n\
         CPU 0, which runs only when neither server wants the CPU: on this virtual machine an idle\n\
         CPU halts and the host lends the core to others, so the next wake-up pays for the exit\n\
         and for cold caches. The server that does less per connection idles more and pays that\n\
         more often; the loop takes that cost away from both (`keep_awake` in xtask/src/bench.rs).\n\n\
         {table}\n{ratios}\n\
         ### Where the time goes\n\n\
         Separate 3 s runs of the same load: syscalls counted by `strace -c -f` on every thread,\n\
         and a `perf record -g` profile of the serving process (nginx: its worker).\n\n\
         {anatomy}",
        machine = machine(),
        date = today(),
    ))
}

/// The servers compared: the redirector, following the crowd's fleet, and
/// nginx answering a static redirect on two ports (as installed and with
/// `deferred`), all on CPU 0. Stopped, and their directory removed, when
/// dropped.
struct Contestants {
    dir: std::path::PathBuf,
    setup: CrowdSetup,
    redirector: Guard,
    redirector_port: u16,
    _nginx: Nginx,
    nginx_port: u16,
    deferred_port: u16,
    nginx_pids: Vec<u32>,
}

impl Contestants {
    /// Starts them for the bench case `case` (it names their directory).
    fn start(case: &str) -> anyhow::Result<Contestants> {
        // Every case that starts them (redirector, paired) needs these.
        packages::ensure(
            "the nginx comparison",
            &[
                Tool {
                    program: "nginx",
                    package: "nginx",
                },
                Tool {
                    program: "wrk",
                    package: "wrk",
                },
            ],
        )?;
        let dir = std::env::temp_dir().join(format!("xtask-bench-{case}-{}", std::process::id()));
        let services = service_bin_dir();
        let setup = CrowdSetup::start(&dir, &services)?;
        let redirector_port = free_port()?;
        let redirector = start_redirector(
            &services,
            redirector_port,
            &setup.redis_url,
            Some(&setup.geoip),
        )?;
        wait_for(
            || status_of(redirector_port, "GET", "/sim0") == Some(302),
            "the redirector to answer 302",
        )?;

        let nginx_port = free_port()?;
        // The same answer on a second port with `deferred` (TCP_DEFER_ACCEPT),
        // which the redirector uses too: the fair floor for new connections.
        let deferred_port = free_port()?;
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {log};\nevents {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 100000000;\n  server {{\n    listen 127.0.0.1:{nginx_port};\n    \
                 location / {{ return 302 http://127.0.0.1:8000/m0.ogg; }}\n  }}\n  \
                 server {{\n    listen 127.0.0.1:{deferred_port} deferred;\n    \
                 location / {{ return 302 http://127.0.0.1:8000/m0.ogg; }}\n  }}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                log = dir.join("nginx-error.log").display(),
            ),
        )?;
        let nginx = Nginx(
            pinned(0, "nginx")
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&dir)
                .stderr(Stdio::null())
                .spawn()
                .context("start nginx")?,
        );
        wait_for(
            || status_of(nginx_port, "GET", "/sim0") == Some(302),
            "nginx to answer 302",
        )?;
        let nginx_pids = children_and_self(nginx.0.id());
        Ok(Contestants {
            dir,
            setup,
            redirector,
            redirector_port,
            _nginx: nginx,
            nginx_port,
            deferred_port,
            nginx_pids,
        })
    }
}

impl Drop for Contestants {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Keeps `cpu` from going idle while it lives: a busy loop at `SCHED_IDLE`,
/// which runs only when nothing else wants the CPU and gives way at once.
///
/// On this virtual machine an idle CPU halts, the host runs others on the
/// core, and the next wake-up pays for the exit and for caches other tenants
/// filled. The server that does less per connection idles more and pays that
/// more often: by hand, new connections answered by nginx with `deferred`
/// had a p99 13 to 36% longer than without it, and with this loop on the
/// servers' CPU the difference went away. Rounds with it measure the servers
/// without that cost; the usual rounds keep it, as an idle machine would.
fn keep_awake(cpu: u32) -> anyhow::Result<Guard> {
    let spinner = pinned(cpu, "chrt")
        .args(["--idle", "0", "sh", "-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .spawn()
        .context("start the SCHED_IDLE spinner (chrt)")?;
    Ok(Guard(spinner))
}

/// The wrk script sending the crowd's requests, in the bench's directory.
const CROWD_SCRIPT: &str = "crowd.lua";

/// A wrk script that sends every request with `X-Forwarded-For` naming one of
/// 8,192 players in icecast-sim's GeoIP crowd (198.18.0.0/15: 2,048 networks
/// of 64 addresses, each network at its own place), four per network, in
/// turn. The redirector trusts the loopback proxy, so it looks up and ranks
/// for each player where it is; nginx ignores the header.
const CROWD_LUA: &str = r#"local requests = {}
local next_request = 0
init = function(args)
  for player = 0, 8191 do
    local network = player % 2048
    local host = 1 + math.floor(player / 2048)
    local offset = network * 64 + host
    local address = string.format("198.%d.%d.%d", 18 + math.floor(offset / 65536),
      math.floor(offset / 256) % 256, offset % 256)
    -- wrk.format takes these headers instead of the command line's, so they are copied in.
    local headers = { ["X-Forwarded-For"] = address }
    for name, value in pairs(wrk.headers) do headers[name] = value end
    requests[player + 1] = wrk.format(nil, nil, headers)
  end
end
request = function()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
"#;

/// Alternating rounds per mode and server: the host is shared and noisy, and
/// a median of five is steadier than one of three.
const ROUNDS: usize = 5;

/// Unmeasured load sent to a server just before each measured round. Rounds
/// alternate, so each server's round follows 20 s of silence; the redirector's
/// slot leases (5 s) have run out by then, and its first second of a crowd
/// waits for new ones (by hand, 177 of the crowd's requests in the first second
/// after a start waited, each up to a Redis round trip; none in the next 10 s).
/// The warm-up keeps that out of a measurement of the steady state, for every
/// server alike.
const WARM_UP: &str = "2s";

/// How long a measured round lasts.
const ROUND: &str = "10s";

/// A wrk duration such as [`ROUND`] in seconds.
fn seconds(duration: &str) -> f64 {
    duration.trim_end_matches('s').parse().unwrap_or(1.0)
}

/// One measured round ([`ROUND`]) after [`WARM_UP`] of the same load, measuring
/// the CPU of `pids` and of Redis; answers other than a redirect during the
/// warm-up count against the round too.
fn warmed_up(
    port: u16,
    close: bool,
    pids: &[u32],
    redis_pid: u32,
    script: &std::path::Path,
) -> anyhow::Result<Run> {
    let warm_up = wrk_for(port, close, pids, redis_pid, WARM_UP, script)?;
    let mut run = wrk_for(port, close, pids, redis_pid, ROUND, script)?;
    run.non_3xx += warm_up.non_3xx;
    Ok(run)
}

/// Runs wrk once against `port` with `script` for `duration` (wrk's `-d`),
/// measuring the CPU of `pids` and of Redis.
fn wrk_for(
    port: u16,
    close: bool,
    pids: &[u32],
    redis_pid: u32,
    duration: &str,
    script: &std::path::Path,
) -> anyhow::Result<Run> {
    let cpu = |pids: &[u32]| {
        pids.iter()
            .map(|&p| cpu_time(p).unwrap_or_default())
            .sum::<Duration>()
    };
    let user = |pids: &[u32]| {
        pids.iter()
            .map(|&p| cpu_split(p).map(|(u, _)| u).unwrap_or_default())
            .sum::<Duration>()
    };
    let (before, redis_before, user_before) = (cpu(pids), cpu_time(redis_pid)?, user(pids));
    let output = wrk(port, close, duration, script)
        .output()
        .context("run wrk")?;
    let (after, redis_after, user_after) = (cpu(pids), cpu_time(redis_pid)?, user(pids));
    let report = WrkReport::parse(&String::from_utf8_lossy(&output.stdout))?;
    Ok(Run {
        requests: report.requests,
        rps: report.rps,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        cpu: after.saturating_sub(before),
        user_cpu: user_after.saturating_sub(user_before),
        redis_cpu: redis_after.saturating_sub(redis_before),
        non_3xx: report.non_3xx,
    })
}

/// wrk (1 thread, 50 connections, on CPU 1) against the crowd's stream on
/// `port` for `duration`, with latencies, and a new connection per request
/// if `close`.
fn wrk(port: u16, close: bool, duration: &str, script: &std::path::Path) -> Command {
    let mut command = pinned(1, "wrk");
    command.args(["-t1", "-c50", &format!("-d{duration}"), "--latency", "-s"]);
    command.arg(script);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    command.arg(format!("http://127.0.0.1:{port}/sim0"));
    command
}

/// What wrk printed, as numbers.
struct WrkReport {
    requests: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_3xx: u64,
}

impl WrkReport {
    /// Reads wrk's `--latency` report; an error if it counted no requests.
    fn parse(text: &str) -> anyhow::Result<WrkReport> {
        let number_after = |label: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(parse_latency_or_number)
        };
        let requests = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .context(format!("wrk printed no request count:\n{text}"))?;
        Ok(WrkReport {
            requests,
            rps: number_after("Requests/sec:").unwrap_or(0.0),
            p50_ms: number_after("50%").unwrap_or(0.0),
            p99_ms: number_after("99%").unwrap_or(0.0),
            non_3xx: number_after("Non-2xx or 3xx responses:").map_or(0, |n| n as u64),
        })
    }
}

fn port_of(server: &str, redirector: u16, nginx: u16) -> u16 {
    if server.starts_with("nginx") {
        nginx
    } else {
        redirector
    }
}

/// Every thread of the processes `pids`.
fn threads_of(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .flat_map(|pid| {
            fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        })
        .collect()
}

/// Syscalls per request of `pids` (all their threads) during a 3 s wrk run,
/// counted by `strace -c -f`; and the calls made at least once per 20
/// requests, with their rate.
fn syscalls_per_request(
    port: u16,
    close: bool,
    pids: &[u32],
    redis_pid: u32,
    dir: &std::path::Path,
) -> anyhow::Result<(f64, String)> {
    packages::ensure(
        "syscall counts",
        &[Tool {
            program: "strace",
            package: "strace",
        }],
    )?;
    let out = dir.join("strace.txt");
    let mut strace = Command::new("strace");
    strace.args(["-c", "-f", "-o"]).arg(&out);
    for tid in threads_of(pids) {
        strace.args(["-p", &tid.to_string()]);
    }
    let strace = Guard(
        strace
            .stderr(Stdio::null())
            .spawn()
            .context("start strace")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let run = wrk_for(port, close, pids, redis_pid, "3s", &dir.join(CROWD_SCRIPT))?;
    let _ = Command::new("kill")
        .args(["-INT", &strace.0.id().to_string()])
        .status();
    let mut strace = strace;
    let _ = strace.0.wait();
    let text = fs::read_to_string(&out).context("strace wrote no summary")?;
    let requests = run.requests.max(1.0);
    let mut total = 0.0;
    let mut calls = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(count)) = (
            fields.last(),
            fields.get(3).and_then(|c| c.parse::<f64>().ok()),
        ) else {
            continue;
        };
        if *name == "total" {
            total = count;
        } else if count / requests >= 0.05 {
            calls.push((count / requests, (*name).to_owned()));
        }
    }
    calls.sort_by(|a, b| b.0.total_cmp(&a.0));
    let calls: Vec<String> = calls
        .iter()
        .map(|(rate, name)| format!("{name} {rate:.2}"))
        .collect();
    Ok((total / requests, calls.join(", ")))
}

/// Kernel symbols listed in a profile: the kernel's work per request is
/// nearly the same for both servers, so its top few suffice.
const PROFILE_KERNEL: usize = 4;
/// User-space symbols listed in a profile: where the servers differ.
const PROFILE_USER: usize = 10;
/// The smallest share of the samples a listed symbol has, in percent.
const PROFILE_LIMIT: f64 = 0.5;

/// Where `pid` spends its time during a 3 s wrk run (`perf record -g`, self
/// time): the share of each binary, then the biggest kernel and user-space
/// symbols.
fn profile(
    port: u16,
    close: bool,
    pid: u32,
    redis_pid: u32,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    packages::ensure(
        "profiles",
        &[Tool {
            program: "perf",
            package: "linux-perf",
        }],
    )?;
    let data = dir.join("perf.data");
    let perf = Guard(
        Command::new("perf")
            .args(["record", "-F", "1999", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string(), "--", "sleep", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start perf")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    wrk_for(
        port,
        close,
        &[pid],
        redis_pid,
        "3s",
        &dir.join(CROWD_SCRIPT),
    )?;
    let mut perf = perf;
    let _ = perf.0.wait();
    let report = |sort: &str| -> anyhow::Result<Vec<String>> {
        let report = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none"])
            .args([
                "--percent-limit",
                &PROFILE_LIMIT.to_string(),
                "--sort",
                sort,
            ])
            .arg("-i")
            .arg(&data)
            .output()
            .context("perf report")?;
        Ok(String::from_utf8_lossy(&report.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().filter(|w| *w != "-").collect();
                words.join(" ")
            })
            .collect())
    };
    let mut summary = report("dso")?.join(", ");
    summary.push('\n');
    let symbols = report("dso,symbol")?;
    let kernel = |line: &&String| line.contains("[k]");
    for line in symbols.iter().filter(kernel).take(PROFILE_KERNEL) {
        summary.push_str(&format!("{line}\n"));
    }
    for line in symbols.iter().filter(|l| !kernel(l)).take(PROFILE_USER) {
        summary.push_str(&format!("{line}\n"));
    }
    Ok(summary)
}

/// wrk prints `1.23ms`, `456.00us`, `1.02s` or plain numbers; latencies come back in ms.
fn parse_latency_or_number(value: &str) -> Option<f64> {
    for (suffix, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(number) = value.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    value.parse().ok()
}

/// The HTTP status a `method` (GET, HEAD) of `path` gets, if any.
fn status_of(port: u16, method: &str, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A process and its direct children (nginx's master and worker).
fn children_and_self(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.len() == 1 && Instant::now() < deadline {
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pids
}

/// Where the redirector and poller under test come from: `target/release`, or
/// `ICB_BENCH_BIN_DIR` (to measure another build, e.g. an older commit's,
/// with the same load).
fn service_bin_dir() -> std::path::PathBuf {
    std::env::var_os("ICB_BENCH_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release"))
}

/// What the redirector cases run against: redis-server, a snapshot of 100
/// simulated servers x 5 mounts (with their GeoIP database) published by a
/// poller every second, and wrk's crowd script, all in `dir`.
struct CrowdSetup {
    _redis: Guard,
    _sim: Guard,
    _poller: Guard,
    redis_pid: u32,
    redis_url: String,
    geoip: std::path::PathBuf,
    /// `CROWD_LUA`, written to a file for wrk's `-s`.
    crowd: std::path::PathBuf,
}

impl CrowdSetup {
    fn start(dir: &std::path::Path, services: &std::path::Path) -> anyhow::Result<CrowdSetup> {
        fs::create_dir_all(dir)?;
        let (redis, redis_port, redis_pid) = start_redis()?;
        let (fleet, geoip) = (dir.join("fleet.toml"), dir.join("city.mmdb"));
        let geoip_arg = geoip.to_string_lossy();
        let sim = start_sim(
            &fleet,
            &[
                "--servers",
                "100",
                "--mounts",
                "5",
                "--limit",
                "1000000",
                "--geoip",
                &geoip_arg,
            ],
        )?;
        wait_for(|| geoip.exists(), "icecast-sim to write the GeoIP database")?;
        let redis_url = format!("redis://127.0.0.1:{redis_port}/");
        let poller = start_poller(services, &fleet, &redis_url)?;
        let crowd = dir.join(CROWD_SCRIPT);
        fs::write(&crowd, CROWD_LUA)?;
        Ok(CrowdSetup {
            _redis: redis,
            _sim: sim,
            _poller: poller,
            redis_pid,
            redis_url,
            geoip,
            crowd,
        })
    }
}

/// `icecast-sim` on CPU 1 with `args`, polled every second, once it has
/// written its fleet to `fleet` (removed first, so an old file cannot count).
fn start_sim(fleet: &std::path::Path, args: &[&str]) -> anyhow::Result<Guard> {
    let _ = fs::remove_file(fleet);
    let program = workspace_root().join("target/release/icecast-sim");
    let sim = Guard(
        pinned(1, &program.to_string_lossy())
            .args(args)
            .args(["--interval", "1s", "--fleet"])
            .arg(fleet)
            .stdout(Stdio::null())
            .spawn()
            .context("start icecast-sim")?,
    );
    wait_for(|| fleet.exists(), "icecast-sim to write the fleet")?;
    Ok(sim)
}

/// The poller under test on CPU 1, publishing `fleet` to Redis.
fn start_poller(
    bin_dir: &std::path::Path,
    fleet: &std::path::Path,
    redis_url: &str,
) -> anyhow::Result<Guard> {
    Ok(Guard(
        pinned(1, &bin_dir.join("icecast-poller").to_string_lossy())
            .arg("--config")
            .arg(fleet)
            .args(["--redis", redis_url, "--admin", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .context("start icecast-poller")?,
    ))
}

/// A redirector under test on CPU 0, following Redis, listening on `port`.
fn start_redirector(
    bin_dir: &std::path::Path,
    port: u16,
    redis_url: &str,
    geoip_city: Option<&std::path::Path>,
) -> anyhow::Result<Guard> {
    start_redirector_under(&[], bin_dir, port, redis_url, geoip_city)
}

/// [`start_redirector`] run by `wrapper` (a program and its arguments, such
/// as valgrind), or directly when `wrapper` is empty.
fn start_redirector_under(
    wrapper: &[&str],
    bin_dir: &std::path::Path,
    port: u16,
    redis_url: &str,
    geoip_city: Option<&std::path::Path>,
) -> anyhow::Result<Guard> {
    let program = bin_dir.join("icecast-redirector");
    let mut command = match wrapper.split_first() {
        Some((wrapper, args)) => {
            let mut command = pinned(0, wrapper);
            command.args(args).arg(&program);
            command
        }
        None => pinned(0, &program.to_string_lossy()),
    };
    command.args([
        "--redis",
        redis_url,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        "127.0.0.1:0",
        // The load generator speaks for a crowd (`CROWD_LUA`).
        "--trusted-proxy",
        "127.0.0.1/32",
    ]);
    if let Some(path) = geoip_city {
        command.arg("--geoip-city").arg(path);
    }
    Ok(Guard(
        command
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .context("start icecast-redirector")?,
    ))
}

/// One flash crowd against two replicas.
struct Saturation {
    /// Probes (GET, never follow the 302) that got a redirect.
    probes_redirected: u64,
    free: u64,
    players: u64,
    admitted: u64,
    sent_to_full: u64,
    told_to_retry: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    redis_cpu_per_redirect_us: f64,
    /// Script calls (EVALSHA) per redirect, from Redis's own count.
    scripts_per_redirect: f64,
    /// Time Redis spent in scripts per redirect, from its own count.
    script_us_per_redirect: f64,
}

/// Saturation: a flash crowd of 1.5x the free slots through two replicas.
const SAT_SERVERS: u64 = 20;
const SAT_LIMIT: u64 = 300;
const SAT_PLAYERS: u64 = SAT_SERVERS * SAT_LIMIT * 3 / 2;
const SAT_CONCURRENCY: u64 = 500;

/// Three fresh runs of the crowd; each starts every process anew, so no run
/// inherits another's listeners or reservations.
pub(crate) fn saturation_case() -> anyhow::Result<String> {
    let runs = (0..3)
        .map(|_| saturation_run(0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let probed = saturation_run(10)?;
    let median = |f: fn(&Saturation) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut rows = String::new();
    for (i, r) in runs.iter().enumerate() {
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% | **{}** | {} | {} | {:.1} s | {:.2} ms | {:.2} ms | {:.2} µs | {:.3} | {:.2} µs |\n",
            i + 1,
            r.free,
            r.players,
            r.admitted,
            r.admitted as f64 * 100.0 / r.free as f64,
            r.sent_to_full,
            r.told_to_retry,
            r.errors,
            r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.redis_cpu_per_redirect_us,
            r.scripts_per_redirect,
            r.script_us_per_redirect,
        ));
    }
    let probe_cost = format!(
        "**Redirects that never connect.** A fourth run makes 1 player in 10 a probe (a link\n\
         preview, a monitoring check): it GETs the stream and never follows the 302. Probes got\n\
         {} redirects, and their slots stay counted until their leases age out (lease + connect\n\
         grace, 8 s by default), so {} real players were admitted: {:.1}% of the free slots,\n\
         with {} sent to a full mount. HEAD takes no slot.\n",
        probed.probes_redirected,
        probed.admitted,
        probed.admitted as f64 * 100.0 / probed.free as f64,
        probed.sent_to_full,
    );
    Ok(format!(
        "## Saturation: a flash crowd of 1.5x capacity through 2 replicas\n\n\
         Command: `cargo xtask bench saturation`. Machine: {machine}. Run: {date}.\n\n\
         `icecast-sim --players on` serves {SAT_SERVERS} servers with one mount of {SAT_LIMIT} slots\n\
         each ({free} free slots); like Icecast it counts a player who connects and answers 403\n\
         beyond the limit. A poller (1 s interval) publishes to redis-server; two redirectors\n\
         (CPU 0) follow it. `icecast-crowd` (CPU 1) sends {SAT_PLAYERS} players, {SAT_CONCURRENCY} in\n\
         flight at a time, alternating between the replicas; each player GETs the stream on a new\n\
         connection, follows the 302 to the mount and stays connected. \"Sent to full\" counts\n\
         players a server refused: overbooking. Redis CPU is redis-server's user+system time over\n\
         the crowd (the poller's publications included) per redirect, read from /proc in\n\
         10 ms ticks; script calls and script time come from Redis's own `INFO commandstats`.\n\
         Three runs, each with fresh processes.\n\n\
         | run | free slots | players | admitted | fill | sent to full | told to retry | errors | crowd took | redirect p50 | redirect p99 | Redis CPU per redirect | script calls per redirect | script time per redirect |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{rows}\n\
         Median fill {fill:.1}%, median Redis CPU per redirect {redis:.2} µs, median script calls per\n\
         redirect {calls:.3}.\n\n{probe_cost}",
        machine = machine(),
        date = today(),
        free = SAT_SERVERS * SAT_LIMIT,
        fill = median(|r| r.admitted as f64 * 100.0 / r.free as f64),
        redis = median(|r| r.redis_cpu_per_redirect_us),
        calls = median(|r| r.scripts_per_redirect),
    ))
}

fn saturation_run(probes: u64) -> anyhow::Result<Saturation> {
    let dir = std::env::temp_dir().join(format!("xtask-bench-saturation-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let release = workspace_root().join("target/release");
    let services = service_bin_dir();
    let (_redis, redis_port, redis_pid) = start_redis()?;
    let fleet = dir.join("fleet.toml");
    let _sim = start_sim(
        &fleet,
        &[
            "--servers",
            &SAT_SERVERS.to_string(),
            "--mounts",
            "1",
            "--limit",
            &SAT_LIMIT.to_string(),
            "--players",
            "on",
        ],
    )?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let _poller = start_poller(&services, &fleet, &redis_url)?;
    let mut replicas = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let port = free_port()?;
        replicas.push(start_redirector(&services, port, &redis_url, None)?);
        ports.push(port);
    }
    // HEAD takes no slot, so the probes leave the capacity whole.
    for &port in &ports {
        wait_for(
            || status_of(port, "HEAD", "/sim0") == Some(302),
            "the redirectors to answer 302",
        )?;
    }
    // Let the poller publish once more with every server up and the redirectors settled.
    std::thread::sleep(Duration::from_secs(2));
    let redis_before = cpu_time(redis_pid)?;
    let scripts_before = script_stats(redis_port)?;
    let mut crowd = pinned(1, &release.join("icecast-crowd").to_string_lossy());
    for &port in &ports {
        crowd.args(["--url", &format!("http://127.0.0.1:{port}/sim0")]);
    }
    let output = crowd
        .args([
            "--players",
            &SAT_PLAYERS.to_string(),
            "--concurrency",
            &SAT_CONCURRENCY.to_string(),
            "--probes",
            &probes.to_string(),
        ])
        .output()
        .context("run icecast-crowd")?;
    let redis_after = cpu_time(redis_pid)?;
    let scripts_after = script_stats(redis_port)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "icecast-crowd failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let value = |name: &str| -> anyhow::Result<f64> {
        text.split_whitespace()
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("icecast-crowd printed no {name}: {text}"))
    };
    let admitted = value("admitted")? as u64;
    let sent_to_full = value("sent_to_full")? as u64;
    let redirects = (admitted + sent_to_full + value("probes_redirected")? as u64).max(1) as f64;
    let _ = fs::remove_dir_all(&dir);
    Ok(Saturation {
        probes_redirected: value("probes_redirected")? as u64,
        free: SAT_SERVERS * SAT_LIMIT,
        players: value("players")? as u64,
        admitted,
        sent_to_full,
        told_to_retry: value("told_to_retry")? as u64,
        errors: value("errors")? as u64,
        seconds: value("seconds")?,
        p50_ms: value("p50_ms")?,
        p99_ms: value("p99_ms")?,
        redis_cpu_per_redirect_us: (redis_after.saturating_sub(redis_before)).as_secs_f64() * 1e6
            / redirects,
        scripts_per_redirect: (scripts_after.0 - scripts_before.0) as f64 / redirects,
        script_us_per_redirect: (scripts_after.1 - scripts_before.1) as f64 / redirects,
    })
}

/// Script calls and the microseconds Redis spent in them, from `INFO commandstats`.
fn script_stats(port: u16) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"INFO commandstats\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let length: usize = header
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("INFO answered {header:?}"))?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let (mut calls, mut usec) = (0, 0);
    for line in body.lines().filter(|l| l.starts_with("cmdstat_evalsha:")) {
        calls += field(line, "calls=").unwrap_or(0);
        usec += field(line, "usec=").unwrap_or(0);
    }
    Ok((calls, usec))
}
