//! Control API answers in words and JSON: one rendering shared by
//! `balancerctl --json` and the operator console, so both say the same.

use balancer_proto::control::v1 as api;
use balancer_proto::snapshot::v1::{MountState, ServerState};
use serde_json::{Value, json};

/// How old a server's last good poll may be before the console calls it
/// stale: the redirectors' default `--max-data-age`.
pub const STALE_AFTER_MS: i64 = 15_000;

/// The part a process plays, in words.
pub fn role(role: i32) -> &'static str {
    match api::Role::try_from(role).unwrap_or(api::Role::Unspecified) {
        api::Role::Poller => "poller",
        api::Role::Redirector => "redirector",
        api::Role::Standalone => "standalone redirector",
        api::Role::Unspecified => "unknown",
    }
}

/// A server's health, in words.
pub fn server_state(state: i32) -> &'static str {
    match ServerState::try_from(state).unwrap_or(ServerState::Unspecified) {
        ServerState::Up => "up",
        ServerState::Down => "down",
        ServerState::Full => "full",
        ServerState::Unspecified => "unknown",
    }
}

/// A mount's state, in words.
pub fn mount_state(state: i32) -> &'static str {
    match MountState::try_from(state).unwrap_or(MountState::Unspecified) {
        MountState::Live => "live",
        MountState::NoSource => "no source",
        MountState::Stalled => "source stalled",
        MountState::Unspecified => "unknown",
    }
}

/// Why Explain left a mount out, in words.
pub fn exclusion(reason: i32) -> &'static str {
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

/// `Status` as JSON.
pub fn status(s: &api::StatusResponse) -> Value {
    json!({
        "role": role(s.role), "version": s.version, "uptime_ms": s.uptime_ms,
        "snapshot_version": s.snapshot_version, "snapshot_age_ms": s.snapshot_age_ms,
        "leader": s.leader, "redis_ok": s.redis_ok,
    })
}

/// `ListServers` as JSON. `now_ms` (milliseconds since the Unix epoch) dates
/// each server's last good poll, for `poll_age_ms` and `stale`.
pub fn servers(r: &api::ListServersResponse, now_ms: i64) -> Value {
    let servers: Vec<Value> = r
        .servers
        .iter()
        .map(|s| {
            let server = s.server.clone().unwrap_or_default();
            let age = (server.observed_at_ms > 0).then(|| (now_ms - server.observed_at_ms).max(0));
            json!({
                "name": server.name, "state": server_state(server.state), "drained": server.drained,
                "stale": age.is_none_or(|age| age > STALE_AFTER_MS),
                "listeners": server.listeners, "max_listeners": server.max_listeners,
                "public_url": server.public_url, "observed_at_ms": server.observed_at_ms,
                "poll_age_ms": age, "last_error": server.last_error,
                "canary_error": server.canary_error, "last_poll_ms": s.last_poll_ms,
                "mounts": s.mounts.iter().map(|m| {
                    let mount = m.mount.clone().unwrap_or_default();
                    json!({
                        "stream": m.stream, "mount": mount.mount, "state": mount_state(mount.state),
                        "listeners": mount.listeners, "max_listeners": mount.max_listeners,
                        "free_slots": mount.free_slots, "headroom": mount.headroom,
                        "reserved": m.reserved,
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "servers": servers })
}

/// `Explain` as JSON.
pub fn explain(r: &api::ExplainResponse) -> Value {
    let client = r.client.clone().unwrap_or_default();
    json!({
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancer_proto::snapshot::v1::Server;

    #[test]
    fn servers_say_when_their_data_is_stale() {
        let server = |observed_at_ms| api::ServerStatus {
            server: Some(Server {
                name: "a".into(),
                observed_at_ms,
                ..Server::default()
            }),
            mounts: vec![],
            last_poll_ms: 3,
        };
        let list = api::ListServersResponse {
            servers: vec![
                server(0),
                server(90_000),
                server(100_000 - STALE_AFTER_MS - 1),
            ],
        };
        let json = servers(&list, 100_000);
        let stale: Vec<bool> = json["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stale"].as_bool().unwrap())
            .collect();
        assert_eq!(stale, [true, false, true]);
        assert_eq!(json["servers"][1]["poll_age_ms"], 10_000);
        assert!(json["servers"][0]["poll_age_ms"].is_null());
    }
}
