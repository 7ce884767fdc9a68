//! Turning control API answers into tables for people and JSON for scripts.

use std::fmt::Write as _;

use balancer_proto::control::v1 as api;
use balancer_proto::snapshot::v1::{MountState, ServerState};
use serde_json::{Value, json};

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

fn role(role: i32) -> &'static str {
    match api::Role::try_from(role).unwrap_or(api::Role::Unspecified) {
        api::Role::Poller => "poller",
        api::Role::Redirector => "redirector",
        api::Role::Standalone => "standalone redirector",
        api::Role::Unspecified => "unknown",
    }
}

fn server_state(state: i32) -> &'static str {
    match ServerState::try_from(state).unwrap_or(ServerState::Unspecified) {
        ServerState::Up => "up",
        ServerState::Down => "down",
        ServerState::Full => "full",
        ServerState::Unspecified => "unknown",
    }
}

fn mount_state(state: i32) -> &'static str {
    match MountState::try_from(state).unwrap_or(MountState::Unspecified) {
        MountState::Live => "live",
        MountState::NoSource => "no source",
        MountState::Stalled => "source stalled",
        MountState::Unspecified => "unknown",
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
        return json!({
            "role": role(s.role), "version": s.version, "uptime_ms": s.uptime_ms,
            "snapshot_version": s.snapshot_version, "snapshot_age_ms": s.snapshot_age_ms,
            "leader": s.leader, "redis_ok": s.redis_ok,
        })
        .to_string();
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
        let servers: Vec<Value> = r
            .servers
            .iter()
            .map(|s| {
                let server = s.server.clone().unwrap_or_default();
                json!({
                    "name": server.name, "state": server_state(server.state), "drained": server.drained,
                    "listeners": server.listeners, "max_listeners": server.max_listeners,
                    "public_url": server.public_url, "observed_at_ms": server.observed_at_ms,
                    "last_error": server.last_error, "last_poll_ms": s.last_poll_ms,
                    "mounts": s.mounts.iter().map(|m| {
                        let mount = m.mount.clone().unwrap_or_default();
                        json!({
                            "stream": m.stream, "mount": mount.mount, "state": mount_state(mount.state),
                            "listeners": mount.listeners, "max_listeners": mount.max_listeners,
                            "free_slots": mount.free_slots, "reserved": m.reserved,
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        return json!({ "servers": servers }).to_string();
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

fn exclusion(reason: i32) -> &'static str {
    match api::ExclusionReason::try_from(reason).unwrap_or(api::ExclusionReason::Unspecified) {
        api::ExclusionReason::Down => "down",
        api::ExclusionReason::Drained => "drained",
        api::ExclusionReason::Full => "full",
        api::ExclusionReason::NoSource => "no source",
        api::ExclusionReason::Stale => "stale data",
        api::ExclusionReason::DeniedCountry => "country not licensed",
        api::ExclusionReason::AddressFamily => "wrong IP version",
        api::ExclusionReason::Scheme => "no URL in the player's scheme",
        api::ExclusionReason::Headroom => "only headroom left",
        api::ExclusionReason::Unspecified => "unknown",
    }
}

/// `explain`.
pub(crate) fn explain(r: &api::ExplainResponse, as_json: bool) -> String {
    let client = r.client.clone().unwrap_or_default();
    if as_json {
        return json!({
            "client": {
                "country": client.country, "continent": client.continent, "asn": client.asn,
                "location": client.location.map(|l| json!({"lat": l.lat, "lon": l.lon})),
            },
            "candidates": r.candidates.iter().map(|c| json!({
                "server": c.server, "mount": c.mount, "url": c.url, "free_slots": c.free_slots,
                "distance_km": c.distance_km, "reason": c.rank_reason,
            })).collect::<Vec<_>>(),
            "excluded": r.excluded.iter().map(|e| json!({
                "server": e.server, "mount": e.mount, "reason": exclusion(e.reason), "detail": e.detail,
            })).collect::<Vec<_>>(),
        })
        .to_string();
    }
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
