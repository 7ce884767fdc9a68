//! Hysteresis, limits and snapshot building.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use balancer_fleet::{ListenerLimit, StatusSource};
use balancer_proto::snapshot::v1::{MountState, ServerState};

use super::*;
use crate::fetch::{PollError, PollResult};
use crate::status::{MountReport, ReportedLimit, StatusReport};

fn report(mounts: &[(&str, u32, ReportedLimit)]) -> StatusReport {
    StatusReport {
        mounts: mounts
            .iter()
            .map(|(m, l, limit)| MountReport {
                mount: (*m).into(),
                listeners: Some(*l),
                limit: *limit,
                free_slots: None,
                bytes_read: None,
                content_type: None,
                info: Default::default(),
            })
            .collect(),
        listeners: Some(mounts.iter().map(|(_, l, _)| l).sum()),
        skipped: vec![],
    }
}

fn failed() -> PollResult {
    PollResult::Failed(PollError::Timeout(std::time::Duration::from_secs(1)))
}

#[test]
fn rise_and_fall_like_haproxy() {
    let ok = PollResult::Report(report(&[]));
    let mut h = ServerHealth::default();
    h.record(&ok, 1, 1, 2, 3);
    assert_eq!(
        h.state,
        ServerStateKind::Up,
        "a new server is believed at once"
    );
    h.record(&failed(), 2, 1, 2, 3);
    h.record(&failed(), 3, 1, 2, 3);
    assert_eq!(h.state, ServerStateKind::Up, "two failures do not flap it");
    assert!(h.last_error.contains("no complete answer"));
    h.record(&failed(), 4, 1, 2, 3);
    assert_eq!(h.state, ServerStateKind::Down, "the third does");
    h.record(&ok, 5, 1, 2, 3);
    assert_eq!(
        h.state,
        ServerStateKind::Down,
        "one good poll is not enough"
    );
    assert!(h.last_error.is_empty());
    h.record(&failed(), 6, 1, 2, 3);
    h.record(&ok, 7, 1, 2, 3);
    assert_eq!(
        h.state,
        ServerStateKind::Down,
        "good polls must be in a row"
    );
    h.record(&ok, 8, 1, 2, 3);
    assert_eq!(h.state, ServerStateKind::Up);
    h.record(&PollResult::Full, 9, 1, 2, 3);
    assert_eq!(h.state, ServerStateKind::Full, "403 means full, not down");
    assert_eq!(
        h.last_report.as_ref().map(|(_, at)| *at),
        Some(8),
        "a 403 carries no report"
    );

    let mut new = ServerHealth::default();
    new.record(&failed(), 1, 1, 2, 3);
    assert_eq!(
        new.state,
        ServerStateKind::Down,
        "a server never seen up is down"
    );
}

#[test]
fn limits_come_from_icecast_then_config_then_the_server_cap() {
    let mount = |listeners: Option<u32>, limit, free| MountReport {
        mount: "/m".into(),
        listeners,
        limit,
        free_slots: free,
        bytes_read: None,
        content_type: None,
        info: Default::default(),
    };
    use ReportedLimit::{Count, Unknown, Unlimited};
    let cases = [
        // (reported, configured, server cap, source) -> (limit, free)
        (
            mount(Some(3), Count(5), None),
            Some(ListenerLimit::Listeners(50)),
            None,
            StatusSource::Admin,
            (Some(5), 2),
        ),
        (
            mount(Some(3), Unlimited, None),
            Some(ListenerLimit::Listeners(4)),
            None,
            StatusSource::Admin,
            (Some(4), 1),
        ),
        (
            mount(Some(3), Unlimited, None),
            None,
            None,
            StatusSource::Admin,
            (None, UNLIMITED_FREE),
        ),
        (
            mount(Some(9), Count(5), None),
            None,
            None,
            StatusSource::Admin,
            (Some(5), 0),
        ),
        (
            mount(Some(3), Unknown, None),
            Some(ListenerLimit::Listeners(10)),
            None,
            StatusSource::Json,
            (Some(10), 7),
        ),
        (
            mount(Some(3), Unknown, None),
            Some(ListenerLimit::Unlimited),
            None,
            StatusSource::Json,
            (None, UNLIMITED_FREE),
        ),
        (
            mount(Some(3), Unknown, None),
            None,
            Some(100),
            StatusSource::Json,
            (None, UNLIMITED_FREE),
        ),
        (
            mount(Some(3), Unknown, None),
            None,
            None,
            StatusSource::Json,
            (None, 0),
        ),
        (
            mount(None, Unknown, Some(Count(32))),
            None,
            None,
            StatusSource::LoadXsl,
            (None, 32),
        ),
        (
            mount(Some(1), Unlimited, Some(Unlimited)),
            None,
            None,
            StatusSource::LoadXsl,
            (None, UNLIMITED_FREE),
        ),
        // django-icecast-balancer's NaN: only the config can say.
        (
            mount(None, Unknown, Some(Unknown)),
            None,
            None,
            StatusSource::LoadXsl,
            (None, 0),
        ),
        (
            mount(None, Unknown, Some(Unknown)),
            Some(ListenerLimit::Listeners(8)),
            None,
            StatusSource::LoadXsl,
            (Some(8), 0),
        ),
        (
            mount(None, Unknown, Some(Unknown)),
            Some(ListenerLimit::Unlimited),
            None,
            StatusSource::LoadXsl,
            (None, UNLIMITED_FREE),
        ),
    ];
    for (i, (reported, configured, cap, source, (limit, free))) in cases.into_iter().enumerate() {
        let got = mount_capacity(&reported, configured, cap, source);
        assert_eq!(
            (got.limit, got.free),
            (limit, free),
            "case {i}: {reported:?} {configured:?}"
        );
    }
}

const FLEET: &str = r#"
[[server]]
name = "a"
url = "http://127.0.0.1:1"
status = "json"
max_listeners = 10
location = { lat = 48.2, lon = 16.4 }
country = "AT"
[[server]]
name = "b"
url = "http://127.0.0.1:2"
public_url = "https://b.example/radio/"
admin_user = "admin"
admin_password = "x"
[[stream]]
name = "s"
mounts = [{ server = "a", mount = "/s.ogg" }, { server = "b", mount = "/s.ogg" }, { server = "b", mount = "/other.ogg" }]
fallback = "t"
allow_countries = ["AT", "DE"]
[[stream]]
name = "t"
mounts = [{ server = "a", mount = "/t.ogg", max_listeners = 3 }]
"#;

#[test]
fn snapshot_tells_live_no_source_full_down_and_drained_apart() {
    let fleet = balancer_fleet::parse(FLEET, Path::new("f.toml"), &|_| None).unwrap();
    let mut health = HashMap::new();
    let mut a = ServerHealth::default();
    a.record(
        &PollResult::Report(report(&[
            ("/s.ogg", 6, ReportedLimit::Unknown),
            ("/t.ogg", 1, ReportedLimit::Unknown),
        ])),
        1000,
        5,
        2,
        3,
    );
    health.insert("a".to_owned(), a);
    let mut b = ServerHealth::default();
    b.record(
        &PollResult::Report(report(&[("/s.ogg", 2, ReportedLimit::Count(2))])),
        1000,
        5,
        2,
        3,
    );
    health.insert("b".to_owned(), b);
    let drained = BTreeSet::from(["b".to_owned()]);

    let snapshot = build_snapshot(&fleet, &health, &drained, 2000, "me");
    assert_eq!(snapshot.published_at_ms, 2000);
    assert_eq!(snapshot.poll_interval_ms, 2000);
    let a = &snapshot.servers[0];
    assert_eq!(
        (a.state(), a.drained, a.listeners, a.max_listeners),
        (ServerState::Up, false, 7, Some(10))
    );
    assert_eq!(a.location.as_ref().map(|l| l.lat), Some(48.2));
    let b = &snapshot.servers[1];
    assert_eq!(b.public_url, "https://b.example/radio");
    assert!(b.drained);

    let s = &snapshot.streams[0];
    assert_eq!(s.fallback, "t");
    assert_eq!(
        (s.allow_countries.clone(), s.deny_countries.len()),
        (vec!["AT".to_owned(), "DE".to_owned()], 0)
    );
    assert_eq!((a.country.as_str(), b.country.as_str()), ("AT", ""));
    // On a: no mount limit, server cap 10 shared with /t.ogg: 10 - 7 = 3 free.
    assert_eq!(
        (
            s.mounts[0].state(),
            s.mounts[0].listeners,
            s.mounts[0].free_slots
        ),
        (MountState::Live, 6, 3)
    );
    // On b: Icecast's limit 2 is reached.
    assert_eq!(
        (s.mounts[1].max_listeners, s.mounts[1].free_slots),
        (Some(2), 0)
    );
    // b has no source on /other.ogg.
    assert_eq!(
        (s.mounts[2].state(), s.mounts[2].free_slots),
        (MountState::NoSource, 0)
    );
    // t's config limit 3 with 1 listener: 2 free (under the server's 3).
    let t = &snapshot.streams[1].mounts[0];
    assert_eq!((t.max_listeners, t.free_slots), (Some(3), 2));

    // Full: mounts stay live but get no free slots.
    health
        .get_mut("a")
        .unwrap()
        .record(&PollResult::Full, 3000, 5, 2, 3);
    let full = build_snapshot(&fleet, &health, &drained, 3000, "me");
    assert_eq!(full.servers[0].state(), ServerState::Full);
    assert_eq!(full.streams[0].mounts[0].free_slots, 0);
    assert_eq!(
        full.servers[0].observed_at_ms, 1000,
        "observed_at is the last report's time"
    );

    // Down: mounts are unspecified with no free slots.
    for t in 4..7 {
        health
            .get_mut("a")
            .unwrap()
            .record(&failed(), t * 1000, 5, 2, 3);
    }
    let down = build_snapshot(&fleet, &health, &drained, 7000, "me");
    assert_eq!(down.servers[0].state(), ServerState::Down);
    assert_eq!(
        (
            down.streams[0].mounts[0].state(),
            down.streams[0].mounts[0].free_slots
        ),
        (MountState::Unspecified, 0)
    );
    assert!(!down.servers[0].last_error.is_empty());
}

#[test]
fn servers_never_polled_are_in_the_snapshot_as_unknown() {
    let fleet = balancer_fleet::parse(FLEET, Path::new("f.toml"), &|_| None).unwrap();
    let snapshot = build_snapshot(&fleet, &HashMap::new(), &BTreeSet::new(), 1, "me");
    assert_eq!(snapshot.servers.len(), 2);
    assert!(
        snapshot
            .servers
            .iter()
            .all(|s| s.state() == ServerState::Unspecified && s.observed_at_ms == 0)
    );
    assert!(
        snapshot
            .streams
            .iter()
            .flat_map(|s| &s.mounts)
            .all(|m| m.free_slots == 0)
    );
}

#[test]
fn a_source_whose_bytes_stop_is_stalled_and_recovers_when_they_move() {
    let with_bytes = |bytes: u64| {
        let mut r = report(&[("/a.ogg", 0, ReportedLimit::Count(10))]);
        r.mounts[0].bytes_read = Some(bytes);
        PollResult::Report(r)
    };
    let stall_after = std::time::Duration::from_secs(15);
    let mut h = ServerHealth::default();
    // Icecast updates the count every 5 s: steps, not a stall.
    for (at, bytes) in [
        (0, 0),
        (2_000, 0),
        (5_000, 6_800),
        (9_000, 6_800),
        (10_000, 12_400),
    ] {
        h.record(&with_bytes(bytes), at, 1, 2, 3);
        assert!(!h.stalled("/a.ogg", stall_after), "at {at} ms");
    }
    // Then nothing for more than 15 s.
    h.record(&with_bytes(12_400), 25_000, 1, 2, 3);
    assert!(
        !h.stalled("/a.ogg", stall_after),
        "exactly 15 s is not more"
    );
    h.record(&with_bytes(12_400), 25_001, 1, 2, 3);
    assert!(h.stalled("/a.ogg", stall_after));
    // Moving again, or a reconnected source, is live at once.
    h.record(&with_bytes(20_000), 27_000, 1, 2, 3);
    assert!(!h.stalled("/a.ogg", stall_after));
    // A server that does not report bytes (status-json, load.xsl) never stalls.
    let mut quiet = ServerHealth::default();
    let plain = PollResult::Report(report(&[("/a.ogg", 0, ReportedLimit::Count(10))]));
    quiet.record(&plain, 0, 1, 2, 3);
    quiet.record(&plain, 60_000, 1, 2, 3);
    assert!(!quiet.stalled("/a.ogg", stall_after));
}

#[test]
fn snapshot_carries_public_urls_per_scheme_and_headroom_of_the_binding_limit() {
    let text = r#"
[[server]]
name = "a"
url = "http://127.0.0.1:1"
public_url = ["https://a.example", "http://a.example:8000"]
cross_scheme = false
status = "json"
headroom = "10%"
max_listeners = 100
[[server]]
name = "b"
url = "http://127.0.0.1:2"
status = "json"
headroom = 30
[[stream]]
name = "s"
mounts = [{ server = "a", mount = "/s.ogg", max_listeners = 500 }, { server = "b", mount = "/s.ogg", max_listeners = 50 }]
"#;
    let fleet = balancer_fleet::parse(text, Path::new("f.toml"), &|_| None).unwrap();
    let mut health = HashMap::new();
    for name in ["a", "b"] {
        let mut h = ServerHealth::default();
        h.record(
            &PollResult::Report(report(&[("/s.ogg", 40, ReportedLimit::Unknown)])),
            1000,
            5,
            2,
            3,
        );
        health.insert(name.to_owned(), h);
    }
    let snapshot = build_snapshot(&fleet, &health, &BTreeSet::new(), 2000, "me");
    let a = &snapshot.servers[0];
    assert_eq!(
        (
            a.public_url.as_str(),
            a.public_url_http.as_str(),
            a.public_url_https.as_str()
        ),
        (
            "https://a.example",
            "http://a.example:8000",
            "https://a.example"
        )
    );
    assert!(!a.cross_scheme);
    let b = &snapshot.servers[1];
    assert_eq!(
        (b.public_url_http.as_str(), b.public_url_https.as_str()),
        ("http://127.0.0.1:2", "")
    );
    assert!(
        b.cross_scheme,
        "one public URL: crossing allowed unless the file says no"
    );
    let mounts = &snapshot.streams[0].mounts;
    // a: the server cap (100, 60 free) binds, not the mount's 500: 10% of 100.
    assert_eq!((mounts[0].free_slots, mounts[0].headroom), (60, 10));
    // b: 30 slots asked, but only 10 are free: all of them are headroom.
    assert_eq!((mounts[1].free_slots, mounts[1].headroom), (10, 10));
}

#[test]
fn canaries_take_a_server_out_after_fall_and_back_after_rise() {
    let fleet = balancer_fleet::parse(FLEET, Path::new("f.toml"), &|_| None).unwrap();
    let mut a = ServerHealth::default();
    let report = PollResult::Report(report(&[("/s.ogg", 1, ReportedLimit::Unknown)]));
    a.record(&report, 1000, 5, 2, 3);
    let state = |a: &ServerHealth| {
        let health = HashMap::from([("a".to_owned(), a.clone())]);
        let snapshot = build_snapshot(&fleet, &health, &BTreeSet::new(), 2000, "me");
        let server = snapshot.servers[0].clone();
        (server.state(), server.last_error, server.canary_error)
    };
    let refused: Result<(), &str> = Err("https://a.example/s.ogg: HTTP 503");
    for _ in 0..2 {
        a.canary[1].record(&refused, 2, 3);
        assert_eq!(state(&a).0, ServerState::Up, "fewer than fall failures");
    }
    // A good canary on the other scheme does not vouch for this one.
    a.canary[0].record(&Ok::<(), &str>(()), 2, 3);
    a.canary[1].record(&refused, 2, 3);
    let (state_now, error, canary_error) = state(&a);
    assert_eq!(state_now, ServerState::Down);
    assert_eq!(error, "canary failed: https://a.example/s.ogg: HTTP 503");
    assert_eq!(canary_error, "https://a.example/s.ogg: HTTP 503");
    // Polls keep succeeding meanwhile: the canary alone keeps it out.
    a.record(&report, 3000, 5, 2, 3);
    assert_eq!(state(&a).0, ServerState::Down);
    a.canary[1].record(&Ok::<(), &str>(()), 2, 3);
    assert_eq!(state(&a).0, ServerState::Down, "fewer than rise successes");
    a.canary[1].record(&Ok::<(), &str>(()), 2, 3);
    let (state_now, error, canary_error) = state(&a);
    assert_eq!(
        (state_now, error.as_str(), canary_error.as_str()),
        (ServerState::Up, "", "")
    );
}
