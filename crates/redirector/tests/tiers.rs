//! Selection by tier and by scheme, counted over whole crowds of players:
//! headroom stays free until every mount of the stream is at its soft limit,
//! and a player keeps its scheme unless the server allows crossing.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use balancer_geo::{GeoDb, RankPolicy};
use balancer_proto::snapshot::v1::{Mount, MountState, Server, ServerState, Snapshot, Stream};
use icecast_redirector::client_ip::Scheme;
use icecast_redirector::reserve::{Reservations, Timings};
use icecast_redirector::route::Format;
use icecast_redirector::select::{Decision, Selector};
use icecast_redirector::view::FleetView;

const NOW_MS: i64 = 1_800_000_000_000;

/// A server polled a second ago, with the given public URLs.
fn server(name: &str, http: &str, https: &str, cross_scheme: bool) -> Server {
    Server {
        name: name.into(),
        public_url: if http.is_empty() { https } else { http }.into(),
        public_url_http: http.into(),
        public_url_https: https.into(),
        cross_scheme,
        state: ServerState::Up.into(),
        weight: 100,
        observed_at_ms: NOW_MS - 1000,
        ..Default::default()
    }
}

fn mount(server: &str, limit: u32, free_slots: u32, headroom: u32) -> Mount {
    Mount {
        server: server.into(),
        mount: "/s.ogg".into(),
        state: MountState::Live.into(),
        listeners: limit - free_slots,
        max_listeners: Some(limit),
        free_slots,
        headroom,
        info: None,
    }
}

fn selector_for(snapshot: &Snapshot) -> (Selector, FleetView) {
    let reservations = Arc::new(Reservations::alone(Timings {
        grace: Duration::from_secs(1),
        lease: Duration::from_secs(5),
        max_age: Duration::from_secs(10),
    }));
    let geo = Arc::new(GeoDb::disabled());
    let view = FleetView::build(snapshot, &geo, &reservations, None);
    let selector = Selector {
        geo,
        reservations,
        policy: RankPolicy::default(),
        max_age_ms: 10_000,
    };
    (selector, view)
}

fn snapshot(servers: Vec<Server>, mounts: Vec<Mount>) -> Snapshot {
    Snapshot {
        version: 1,
        published_at_ms: NOW_MS,
        servers,
        streams: vec![Stream {
            name: "s".into(),
            mounts,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Sends `players` players of `scheme`; returns redirects per URL and the number refused.
async fn crowd(
    selector: &Selector,
    view: &FleetView,
    scheme: Scheme,
    players: usize,
) -> (HashMap<String, usize>, usize) {
    let mut rng = fastrand::Rng::with_seed(11);
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    let (mut sent, mut refused) = (HashMap::new(), 0);
    for _ in 0..players {
        let decision = selector
            .decide(
                view,
                &view.streams["s"],
                client,
                scheme,
                Format::Redirect,
                true,
                &mut rng,
                NOW_MS,
            )
            .await;
        match decision {
            Decision::Redirect(url) => *sent.entry(url.to_string()).or_default() += 1,
            Decision::Full => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (sent, refused)
}

#[tokio::test]
async fn headroom_is_used_only_when_every_mount_is_at_its_soft_limit() {
    // Three servers with 400, 300 and 150 free slots; the first two keep 100
    // as headroom, the third none. Soft capacity: 300 + 200 + 150 = 650.
    let servers = vec![
        server("a", "http://a:8000", "", true),
        server("b", "http://b:8000", "", true),
        server("c", "http://c:8000", "", true),
    ];
    let mounts = vec![
        mount("a", 1000, 400, 100),
        mount("b", 1000, 300, 100),
        mount("c", 1000, 150, 0),
    ];
    let (selector, view) = selector_for(&snapshot(servers, mounts));
    let (sent, refused) = crowd(&selector, &view, Scheme::Http, 650).await;
    let at = |sent: &HashMap<String, usize>, s: &str| {
        sent.get(&format!("http://{s}:8000/s.ogg"))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(refused, 0, "{sent:?}");
    assert_eq!(
        (at(&sent, "a"), at(&sent, "b"), at(&sent, "c")),
        (300, 200, 150),
        "the first 650 players fill every mount to its soft limit and no further"
    );
    // The next 300: 200 fit into the headroom, spread over both servers that
    // have it; then the stream is full.
    let (more, refused) = crowd(&selector, &view, Scheme::Http, 300).await;
    assert_eq!(
        (at(&more, "a"), at(&more, "b"), at(&more, "c")),
        (100, 100, 0),
        "the headroom takes the overflow: {more:?}"
    );
    assert_eq!(refused, 100, "beyond the hard limits players are refused");
}

#[tokio::test]
async fn a_partly_filled_soft_tier_keeps_the_headroom_free() {
    // While one mount still has slots above its headroom, another's headroom
    // is not touched, even if that other is closer or emptier.
    let servers = vec![
        server("a", "http://a:8000", "", true),
        server("b", "http://b:8000", "", true),
    ];
    let mounts = vec![mount("a", 100, 50, 50), mount("b", 100, 40, 0)];
    let (selector, view) = selector_for(&snapshot(servers, mounts));
    let (sent, refused) = crowd(&selector, &view, Scheme::Http, 40).await;
    assert_eq!(sent.get("http://b:8000/s.ogg"), Some(&40), "{sent:?}");
    assert_eq!(refused, 0);
    let (sent, _) = crowd(&selector, &view, Scheme::Http, 10).await;
    assert_eq!(
        sent.get("http://a:8000/s.ogg"),
        Some(&10),
        "then a's headroom"
    );
}

#[tokio::test]
async fn players_keep_their_scheme_unless_crossing_is_allowed() {
    // a: https only, may not cross. b: both schemes. c: http only, may cross.
    let servers = vec![
        server("a", "", "https://a.example", false),
        server("b", "http://b:8000", "https://b.example", false),
        server("c", "http://c:8000", "", true),
    ];
    let mounts = vec![
        mount("a", 1000, 500, 0),
        mount("b", 1000, 500, 0),
        mount("c", 1000, 500, 0),
    ];
    let (selector, view) = selector_for(&snapshot(servers, mounts));
    let (sent, refused) = crowd(&selector, &view, Scheme::Http, 600).await;
    assert_eq!(refused, 0);
    assert!(
        sent.keys()
            .all(|u| u == "http://b:8000/s.ogg" || u == "http://c:8000/s.ogg"),
        "an http player never goes to the https-only server a: {sent:?}"
    );
    let (sent, refused) = crowd(&selector, &view, Scheme::Https, 600).await;
    assert_eq!(refused, 0);
    let https = |u: &str| u.starts_with("https://");
    let crossed: usize = sent.iter().filter(|(u, _)| !https(u)).map(|(_, n)| n).sum();
    assert!(
        sent.contains_key("https://a.example/s.ogg")
            && sent.contains_key("https://b.example/s.ogg"),
        "https players use both https servers: {sent:?}"
    );
    assert!(
        sent.keys().all(|u| https(u) || u == "http://c:8000/s.ogg"),
        "only c, which allows it, takes https players over http: {sent:?}"
    );
    assert!(crossed > 0, "c may cross and has slots: {sent:?}");
}

#[tokio::test]
async fn a_player_with_no_server_in_its_scheme_is_refused_not_crossed() {
    let servers = vec![server("a", "", "https://a.example", false)];
    let (selector, view) = selector_for(&snapshot(servers, vec![mount("a", 100, 100, 0)]));
    let (sent, refused) = crowd(&selector, &view, Scheme::Http, 10).await;
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(refused, 10);
    let (sent, _) = crowd(&selector, &view, Scheme::Https, 10).await;
    assert_eq!(sent.get("https://a.example/s.ogg"), Some(&10));
}
