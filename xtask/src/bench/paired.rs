//! `cargo xtask bench paired`: the redirector and nginx loaded at the same
//! time on the same core, so that whatever the shared host does to the core
//! during a round (another tenant, a frequency change, stolen time) it does
//! to both.
//!
//! The redirector case alternates rounds, and on this kind of host the CPU a
//! server spends per request moves by 10 to 20% from one round to the next
//! for the same server: nginx against nginx `deferred`, which do the same
//! work per keep-alive request, differed by 6 to 16% in medians of five.
//! A few percent cannot be seen that way. Here each round loads both servers
//! at once (two wrk, 50 connections each, both on CPU 1), the scheduler
//! shares CPU 0 between them, and the ratio is taken within the round. The
//! latencies are not comparable with the redirector case's: each server
//! also waits while the other runs.
//!
//! A third mode paces the crowd: each connection waits [`PACE_MS`] after an
//! answer before it asks again, so each server gets about 11,000 requests a
//! second, a quarter of what the core could answer for both. At saturation
//! the latency is the length of the queue, which says little about a
//! server; paced, it is the time a request takes plus what gets in its way
//! (the host, the other server, the redirector's control plane), and the p99
//! ratio within a round compares the two servers' tails.
//!
//! With [`BASELINE_VAR`] naming a directory that holds another build of
//! `icecast-redirector`, that build takes nginx's place: the same measure
//! compares a change with the code before it. Such a run is printed, not
//! recorded.

use std::process::{Child, Stdio};

use anyhow::{Context as _, bail};

use super::{CROWD_LUA, Contestants, ROUND, WARM_UP, WrkReport, machine, today, wrk};

/// Rounds per mode. Each ratio is taken within its round, so rounds need
/// not alternate; more of them narrow the median.
const ROUNDS: usize = 7;

/// How long each connection of the paced mode waits after an answer (wrk's
/// `delay`, in milliseconds): 50 connections ask about 11,000 times a second.
const PACE_MS: u32 = 4;

/// The paced crowd's script, beside the crowd's.
const PACED_SCRIPT: &str = "paced.lua";

/// The environment variable naming a directory with a baseline build of
/// `icecast-redirector` to load instead of nginx.
pub(crate) const BASELINE_VAR: &str = "XTASK_PAIRED_BASELINE";

/// What one server did in one round.
struct Share {
    requests: f64,
    cpu_us: f64,
    user_us: f64,
    p99_ms: f64,
    non_3xx: u64,
}

/// Runs the case and returns its section of BENCHMARKS.md.
pub(crate) fn paired_case() -> anyhow::Result<String> {
    let contestants = Contestants::start("paired")?;
    let redirector_pids = [contestants.redirector.0.id()];
    let baseline = match std::env::var_os(BASELINE_VAR) {
        Some(dir) => {
            let port = super::free_port()?;
            let guard = super::start_redirector(
                std::path::Path::new(&dir),
                port,
                &contestants.setup.redis_url,
                Some(&contestants.setup.geoip),
            )?;
            super::wait_for(
                || super::status_of(port, "GET", "/sim0") == Some(302),
                "the baseline redirector to answer 302",
            )?;
            Some((port, [guard.0.id()], guard))
        }
        None => None,
    };
    let (theirs_name, theirs_port, theirs_pids) = match &baseline {
        Some((port, pids, _)) => ("baseline", *port, &pids[..]),
        None => ("nginx", contestants.nginx_port, &contestants.nginx_pids[..]),
    };
    let crowd = &contestants.setup.crowd;
    let paced = contestants.dir.join(PACED_SCRIPT);
    std::fs::write(
        &paced,
        format!("{CROWD_LUA}delay = function() return {PACE_MS} end\n"),
    )
    .context("write the paced crowd's script")?;
    let modes = [
        ("new connection per request", true, crowd),
        ("keep-alive", false, crowd),
        ("keep-alive, paced", false, &paced),
    ];
    let mut lines = String::new();
    for (mode, close, crowd) in modes {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let servers = [
                (contestants.redirector_port, &redirector_pids[..]),
                (theirs_port, theirs_pids),
            ];
            // Unmeasured, as in the redirector case: leases taken, caches warm.
            let warm = both(servers, close, WARM_UP, crowd)?;
            let [ours, theirs] = both(servers, close, ROUND, crowd)?;
            let refused =
                warm.iter().map(|s| s.non_3xx).sum::<u64>() + ours.non_3xx + theirs.non_3xx;
            if refused > 0 {
                bail!("{refused} answers other than 3xx ({mode}): the run is invalid");
            }
            rounds.push((ours, theirs));
        }
        lines.push_str(&summary(mode, theirs_name, &rounds));
    }
    drop(baseline);
    drop(contestants);
    Ok(format!(
        "## Redirector and nginx on one core at once\n\n\
         Command: `cargo xtask bench paired`. Machine: {machine}. Run: {date}.\n\n\
         The redirector case's servers, fleet and crowd, but each round loads both at the same\n\
         time: the redirector and nginx (`return 302`, as installed) share CPU 0, and two wrk\n\
         (1 thread, 50 connections each, {WARM_UP} unmeasured, then {ROUND}) share CPU 1. Whatever\n\
         the host does to the core during a round, it does to both, so the ratio of their CPU\n\
         per request is taken within each round; {ROUNDS} rounds per mode, medians. Latencies\n\
         include waiting while the other server runs and are not comparable with the\n\
         redirector case's. In the paced mode each connection waits {PACE_MS} ms after an answer\n\
         before it asks again (about 11,000 requests a second for each server, a quarter of\n\
         what the core answers for both): its p99 is a request's time and what gets in its way,\n\
         where at saturation it is the length of the queue. A round with any answer other\n\
         than a redirect is refused.\n\n\
         {lines}\n",
        machine = machine(),
        date = today(),
    ))
}

/// Loads both `servers` (port and the pids whose CPU counts) at once for
/// `duration`; what each did.
fn both(
    servers: [(u16, &[u32]); 2],
    close: bool,
    duration: &str,
    crowd: &std::path::Path,
) -> anyhow::Result<[Share; 2]> {
    let cpu = |pids: &[u32]| -> anyhow::Result<(f64, f64)> {
        let mut total = (0.0, 0.0);
        for &pid in pids {
            let (user, system) = super::cpu_split(pid)?;
            total.0 += (user + system).as_secs_f64();
            total.1 += user.as_secs_f64();
        }
        Ok(total)
    };
    let before = [cpu(servers[0].1)?, cpu(servers[1].1)?];
    let spawn = |port: u16| -> anyhow::Result<Child> {
        wrk(port, close, duration, crowd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start wrk")
    };
    let loads = [spawn(servers[0].0)?, spawn(servers[1].0)?];
    let mut reports = Vec::new();
    for load in loads {
        let output = load.wait_with_output().context("wait for wrk")?;
        reports.push(WrkReport::parse(&String::from_utf8_lossy(&output.stdout))?);
    }
    let after = [cpu(servers[0].1)?, cpu(servers[1].1)?];
    let share = |i: usize| -> anyhow::Result<Share> {
        let report = &reports[i];
        if report.requests <= 0.0 {
            bail!("wrk counted no requests against port {}", servers[i].0);
        }
        Ok(Share {
            requests: report.requests,
            cpu_us: (after[i].0 - before[i].0) * 1e6 / report.requests,
            user_us: (after[i].1 - before[i].1) * 1e6 / report.requests,
            p99_ms: report.p99_ms,
            non_3xx: report.non_3xx,
        })
    };
    Ok([share(0)?, share(1)?])
}

/// The mode's line: the median ratio and its spread, and each server's medians.
fn summary(mode: &str, theirs: &str, rounds: &[(Share, Share)]) -> String {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let ratios: Vec<f64> = rounds.iter().map(|(o, t)| o.cpu_us / t.cpu_us).collect();
    let (low, high) = spread(&ratios);
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    let p99_ratios: Vec<f64> = rounds.iter().map(|(o, t)| o.p99_ms / t.p99_ms).collect();
    let (p99_low, p99_high) = spread(&p99_ratios);
    let of = |f: fn(&(Share, Share)) -> f64| median(rounds.iter().map(f).collect());
    format!(
        "- **{mode}: redirector / {theirs} CPU per request {:.3}x** (spread {low:.3}–{high:.3}; rounds {}); \
         user space {:.2}x; p99 {:.2}x (spread {p99_low:.2}–{p99_high:.2}). Redirector {:.1} µs per \
         request ({:.1} in user space), {:.0} requests/s, p99 {:.3} ms; {theirs} {:.1} µs ({:.1}), \
         {:.0} requests/s, p99 {:.3} ms.\n",
        median(ratios.clone()),
        listed.join(", "),
        median(rounds.iter().map(|(o, t)| o.user_us / t.user_us).collect()),
        median(p99_ratios),
        of(|(o, _)| o.cpu_us),
        of(|(o, _)| o.user_us),
        of(|(o, _)| o.requests) / super::seconds(ROUND),
        of(|(o, _)| o.p99_ms),
        of(|(_, t)| t.cpu_us),
        of(|(_, t)| t.user_us),
        of(|(_, t)| t.requests) / super::seconds(ROUND),
        of(|(_, t)| t.p99_ms),
    )
}

/// The lowest and the highest of `values`.
fn spread(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)))
}
