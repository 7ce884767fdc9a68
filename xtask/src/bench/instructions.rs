//! `cargo xtask bench instructions`: the redirector's user-space instructions
//! per request, counted by callgrind while it serves the crowd with keep-alive.
//!
//! Timing on a shared machine moves by more than most changes to the request
//! path (nginx's own CPU per request varied by 30% between runs of the
//! redirector case), so this case counts instructions instead: the count
//! hardly moves between runs, and a change is seen in it even when time
//! cannot see it. It misses what instructions do not show (cache misses,
//! the kernel), which is why the redirector case stays the measure of the
//! goal. Callgrind serves a few thousand requests a second, about what one
//! core of a busy station sees; at that rate work per snapshot (re-ranking
//! places) weighs much more per request than at the redirector case's rate.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use super::{
    CrowdSetup, WrkReport, free_port, machine, start_redirector_under, status_of, today, wait_for,
    wrk,
};
use crate::packages::{self, Tool};

/// How long the crowd runs before counting starts, and while counting.
const WARM_UP: &str = "4s";
const COUNTED: &str = "8s";
/// The functions listed, by self cost.
const LISTED: usize = 15;
/// The player thread's loop: what it costs with all it calls is the request
/// path, without the control plane's work per snapshot.
const PLAYER_LOOP: &str = "server::serve_on_threads::{{closure}}::{{closure}}";

/// Runs the case and returns its section of BENCHMARKS.md.
pub(crate) fn instructions_case() -> anyhow::Result<String> {
    packages::ensure(
        "the instruction count",
        &[
            Tool {
                program: "valgrind",
                package: "valgrind",
            },
            Tool {
                program: "wrk",
                package: "wrk",
            },
        ],
    )?;
    let dir = std::env::temp_dir().join(format!("xtask-bench-instructions-{}", std::process::id()));
    let services = super::service_bin_dir();
    let setup = CrowdSetup::start(&dir, &services)?;
    let port = free_port()?;
    let counts = dir.join("callgrind.out");
    let out_file = format!("--callgrind-out-file={}", counts.display());
    let redirector = start_redirector_under(
        &["valgrind", "--tool=callgrind", "--dump-instr=no", &out_file],
        &services,
        port,
        &setup.redis_url,
        Some(&setup.geoip),
    )?;
    wait_for(
        || status_of(port, "GET", "/sim0") == Some(302),
        "the redirector under callgrind to answer 302",
    )?;
    crowd_for(port, &setup.crowd, WARM_UP)?;
    let pid = redirector.0.id().to_string();
    callgrind_control(&["-z", &pid])?;
    let requests = crowd_for(port, &setup.crowd, COUNTED)?;
    callgrind_control(&["-d", &pid])?;
    // The dump is the counting window; the file written at exit is not.
    let dump = dir.join("callgrind.out.1");
    wait_for(|| dump.exists(), "callgrind to write its dump")?;
    let text = fs::read_to_string(&dump).with_context(|| format!("read {}", dump.display()))?;
    let total = totals(&text).context("callgrind's dump has no totals")?;
    let functions = by_self_cost(&text);
    let player_thread = inclusive(&text, PLAYER_LOOP);
    drop((redirector, setup));
    let _ = fs::remove_dir_all(&dir);

    let per_request = |count: u64| count as f64 / requests as f64;
    let mut section = format!(
        "## Redirector: instructions per request\n\n\
         {machine}, {today}. `cargo xtask bench instructions`: the redirector (one player thread)\n\
         under `valgrind --tool=callgrind`, following the same snapshot of 100 simulated servers x 5\n\
         mounts (a new one every second) as the redirector case, serves wrk's crowd (8,192\n\
         addresses in 2,048 places, 50 keep-alive connections) for {WARM_UP}; then callgrind's\n\
         counters are zeroed, the crowd runs {COUNTED} more, and the counts are dumped. User-space\n\
         instructions of all the process's threads, divided by the requests served in the window\n\
         ({requests}). It moves by a few percent between runs of the same code (with the request\n\
         rate callgrind reaches: work per snapshot is spread over fewer or more requests), where\n\
         time moves by tens of percent; it is blind to cache misses and to the kernel.\n\n\
         **{per:.0} instructions per request**, of which {player:.0} on the player thread (its loop,\n\
         `serve_on_threads`, with all it calls: the request path, where the rest is mostly the\n\
         control plane's work per snapshot, which weighs more per request at a lower rate).\n\n\
         The {LISTED} functions with the most instructions of their own, per request:\n\n```\n",
        machine = machine(),
        today = today(),
        per = per_request(total),
        player = per_request(player_thread),
    );
    for (count, function) in functions.iter().take(LISTED) {
        section.push_str(&format!("{:>7.0}  {function}\n", per_request(*count)));
    }
    section.push_str("```\n\n");
    Ok(section)
}

/// Runs wrk's crowd against `port` for `duration` (CPU 1), keep-alive; returns
/// the requests answered.
fn crowd_for(port: u16, crowd: &Path, duration: &str) -> anyhow::Result<u64> {
    let output = wrk(port, false, duration, crowd)
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let report = WrkReport::parse(&text)?;
    if report.non_3xx > 0 {
        bail!("the redirector under callgrind answered other than 302:\n{text}");
    }
    if report.requests < 1.0 {
        bail!("wrk counted no requests:\n{text}");
    }
    Ok(report.requests as u64)
}

fn callgrind_control(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .context("run callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {args:?} failed: {status}");
    }
    Ok(())
}

/// The event total of a callgrind dump (its `totals:` or `summary:` line).
fn totals(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|n| n.trim().parse().ok())
}

/// The instructions of the functions whose name ends with `suffix`, with
/// what they called.
fn inclusive(dump: &str, suffix: &str) -> u64 {
    costs(dump)
        .into_iter()
        .filter(|(function, _)| function.ends_with(suffix))
        .map(|(_, (_, inclusive))| inclusive)
        .sum()
}

/// Functions by the instructions of their own, most first: (count, function).
fn by_self_cost(dump: &str) -> Vec<(u64, String)> {
    let mut costs: Vec<(u64, String)> = costs(dump)
        .into_iter()
        .map(|(function, (own, _))| (own, function))
        .collect();
    costs.sort_unstable_by(|a, b| b.cmp(a));
    costs
}

/// Instructions of each function, from a callgrind dump: its own (the cost
/// lines under each `fn=`, except the line after a `calls=`, which is what
/// the call cost in all) and with what it called (all of them). Names are
/// numbered on first use, in `fn=` and `cfn=` lines alike.
fn costs(dump: &str) -> std::collections::HashMap<String, (u64, u64)> {
    let mut names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut costs: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
    let mut current: Option<&str> = None;
    let mut after_call = false;
    for line in dump.lines() {
        if let Some(function) = line.strip_prefix("fn=") {
            // `(id) name` defines a compressed name, `(id)` uses it.
            current = Some(match function.split_once(") ") {
                Some((id, name)) if function.starts_with('(') => {
                    names.insert(id, name);
                    name
                }
                _ => names
                    .get(function.trim_end_matches(')'))
                    .copied()
                    .unwrap_or(function),
            });
            after_call = false;
        } else if let Some(called) = line.strip_prefix("cfn=") {
            // Called functions share the names' numbering.
            if let Some((id, name)) = called.split_once(") ") {
                names.insert(id, name);
            }
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if let Some(function) = current
                && let Some(count) = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
            {
                let (own, inclusive) = costs.entry(function.to_owned()).or_default();
                *inclusive += count;
                if !after_call {
                    *own += count;
                }
            }
            after_call = false;
        }
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals_and_self_costs() {
        assert_eq!(
            totals("events: Ir\nsummary: 1234\ntotals: 1234\n"),
            Some(1234)
        );
        assert_eq!(totals("events: Ir\n"), None);
        let dump = "events: Ir\n\
                    fn=(1) outer\n\
                    10 5\n\
                    +1 7\n\
                    cfn=(2) inner\n\
                    calls=3 20\n\
                    11 900\n\
                    12 1\n\
                    fn=(2)\n\
                    20 300\n\
                    fn=(3) other\n\
                    * 2\n";
        assert_eq!(inclusive(dump, "outer"), 13 + 900);
        assert_eq!(inclusive(dump, "inner"), 300);
        assert_eq!(
            by_self_cost(dump),
            vec![
                (300, "inner".to_owned()),
                (13, "outer".to_owned()),
                (2, "other".to_owned())
            ]
        );
    }
}
