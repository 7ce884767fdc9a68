//! Turning control API answers into tables for people and JSON for scripts.

use std::fmt::Write as _;

use balancer_proto::control::v1 as api;
use balancer_service::control_json::{self, exclusion, mount_state, role, server_state};

/// `1h 2m 3s`, `2.5s`, `40ms`.
fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => {
            let s = ms / 1000;
            let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
            if h > 0 {
                format!("{h}h {m}m {s}s")
            } else {
                format!("{m}m {s}s")
            }
        }
    }
}

fn limit(limit: Option<u32>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string())
}

fn free(free: u32) -> String {
    if free == u32::MAX {
        "unlimited".to_owned()
    } else {
        free.to_string()
    }
}

/// `status`.
pub(crate) fn status(s: &api::StatusResponse, as_json: bool) -> String {
    if as_json {
        return control_json::status(s).to_string();
    }
    let snapshot = match s.snapshot_age_ms {
        Some(age) => format!("v{} ({} old)", s.snapshot_version, duration(age)),
        None => "none yet".to_owned(),
    };
    let mut out = format!(
        "role      {}\nversion   {}\nuptime    {}\nsnapshot  {snapshot}\nredis     {}\n",
        role(s.role),
        s.version,
        duration(s.uptime_ms),
        if s.redis_ok { "ok" } else { "unavailable" }
    );
    if s.role == i32::from(api::Role::Poller) {
        let _ = writeln!(
            out,
            "lease     {}",
            if s.leader {
                "held (active)"
            } else {
                "standing by"
            }
        );
    }
    out
}

/// `servers`.
pub(crate) fn servers(r: &api::ListServersResponse, as_json: bool) -> String {
    if as_json {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        return control_json::servers(r, now_ms).to_string();
    }
    let mut out = format!(
        "{:<20} {:<8} {:<8} {:>9} {:>9}  {}\n",
        "SERVER", "STATE", "DRAINED", "LISTENERS", "POLL", "LAST ERROR"
    );
    for s in &r.servers {
        let server = s.server.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<8} {:>9} {:>9}  {}",
            server.name,
            server_state(server.state),
            if server.drained { "yes" } else { "no" },
            server.listeners,
            duration(u64::from(s.last_poll_ms)),
            server.last_error
        );
        for m in &s.mounts {
            let mount = m.mount.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<24} {:<14} {:<10} listeners {}/{}, free {}, reserved {}",
                mount.mount,
                format!("({})", m.stream),
                mount_state(mount.state),
                mount.listeners,
                limit(mount.max_listeners),
                free(mount.free_slots),
                m.reserved
            );
        }
    }
    out
}

/// `explain`.
pub(crate) fn explain(r: &api::ExplainResponse, as_json: bool) -> String {
    if as_json {
        return control_json::explain(r).to_string();
    }
    let client = r.client.clone().unwrap_or_default();
    let or_unknown = |s: &str| {
        if s.is_empty() {
            "unknown".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut out = format!(
        "client: country {}, continent {}, AS {}\n",
        or_unknown(&client.country),
        or_unknown(&client.continent),
        if client.asn == 0 {
            "unknown".to_owned()
        } else {
            client.asn.to_string()
        }
    );
    if r.candidates.is_empty() {
        out.push_str("no candidate: the player would get the fallback stream or 503\n");
    }
    for (i, c) in r.candidates.iter().enumerate() {
        let distance = c
            .distance_km
            .map_or_else(String::new, |d| format!(", {d:.0} km"));
        let _ = writeln!(
            out,
            "{:>2}. {} {} free {}{distance}: {}  {}",
            i + 1,
            c.server,
            c.mount,
            free(c.free_slots),
            c.rank_reason,
            c.url
        );
    }
    for e in &r.excluded {
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.detail)
        };
        let _ = writeln!(
            out,
            "  excluded {} {}: {}{detail}",
            e.server,
            e.mount,
            exclusion(e.reason)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(40), "40ms");
        assert_eq!(duration(2500), "2.5s");
        assert_eq!(duration(3_723_000), "1h 2m 3s");
    }
}
