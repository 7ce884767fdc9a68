//! Property: a `Location` only ever points at a `public_url` of the fleet,
//! whatever path, query and snapshot a stranger can come up with.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use balancer_geo::{GeoDb, RankPolicy};
use balancer_proto::snapshot::v1::{Mount, MountState, Server, ServerState, Snapshot, Stream};
use icecast_redirector::client_ip::Scheme;
use icecast_redirector::http::with_query;
use icecast_redirector::reserve::{Reservations, Timings};
use icecast_redirector::route::{Format, route};
use icecast_redirector::select::{Decision, Selector};
use icecast_redirector::view::FleetView;

const EVIL: &[&str] = &[
    "//evil.example",
    "//evil.example/s0",
    "/s0//evil.example",
    "/s0/../../etc/passwd",
    "/..%2f..%2fs0",
    "/%2e%2e/s0",
    "/s0%0d%0aLocation:%20http://evil.example",
    "/s0\r\nLocation: http://evil.example",
    "/s0@evil.example",
    "/s0:evil.example",
    "/http://evil.example",
    "/\u{202e}s0",
    "/s0\u{0}",
    "/ｓ0",
    "/icecast_balancer//evil.example/",
    "/icecast_balancer/../s0",
];

fn random_text(rng: &mut fastrand::Rng) -> String {
    let pieces = [
        "/",
        "s",
        "0",
        "1",
        ".",
        "..",
        "%2f",
        "%0d%0a",
        "?",
        "#",
        "@",
        ":",
        "\r\n",
        " ",
        "ü",
        "\u{0}",
        "evil.example",
        "icecast_balancer",
        ".m3u",
        "-",
        "_",
    ];
    (0..rng.usize(0..8))
        .map(|_| pieces[rng.usize(..pieces.len())])
        .collect()
}

fn random_snapshot(rng: &mut fastrand::Rng, now_ms: i64) -> Snapshot {
    let servers: Vec<Server> = (0..rng.usize(1..5))
        .map(|i| {
            let http = [
                format!("http://10.0.0.{i}:8000"),
                format!("http://[2001:db8::{i}]:8000"),
            ][rng.usize(..2)]
            .clone();
            let https = format!("https://s{i}.radio.example/base");
            // Old pollers publish one URL; new ones one per scheme, or either.
            let (public_url, public_url_http, public_url_https) = match rng.u8(..4) {
                0 => (
                    [http, https][rng.usize(..2)].clone(),
                    String::new(),
                    String::new(),
                ),
                1 => (http.clone(), http, String::new()),
                2 => (https.clone(), String::new(), https),
                _ => (http.clone(), http, https),
            };
            Server {
                name: format!("srv{i}"),
                public_url,
                public_url_http,
                public_url_https,
                cross_scheme: rng.bool(),
                state: ServerState::Up.into(),
                weight: rng.u32(1..1000),
                observed_at_ms: now_ms,
                ..Default::default()
            }
        })
        .collect();
    let streams = (0..rng.usize(1..4))
        .map(|s| Stream {
            name: format!("s{s}"),
            mounts: servers
                .iter()
                .map(|server| Mount {
                    server: server.name.clone(),
                    mount: format!("/s{s}.ogg"),
                    state: MountState::Live.into(),
                    listeners: 0,
                    max_listeners: Some(1000),
                    free_slots: rng.u32(0..1000),
                    headroom: rng.u32(0..100),
                    info: None,
                })
                .collect(),
            fallback: if s > 0 { "s0".into() } else { String::new() },
            ..Default::default()
        })
        .collect();
    Snapshot {
        version: 1,
        published_at_ms: now_ms,
        servers,
        streams,
        ..Default::default()
    }
}

#[tokio::test]
async fn location_only_ever_points_into_the_fleet() {
    let mut rng = fastrand::Rng::with_seed(20);
    let now_ms = 1_800_000_000_000;
    let mut redirects = 0;
    for round in 0..300 {
        let snapshot = random_snapshot(&mut rng, now_ms);
        let reservations = Arc::new(Reservations::alone(Timings {
            grace: Duration::from_secs(1),
            lease: Duration::from_secs(1),
            max_age: Duration::from_secs(10),
        }));
        let geo = Arc::new(GeoDb::disabled());
        let view = FleetView::build(&snapshot, &geo, &reservations, None);
        let selector = Selector {
            geo,
            reservations,
            policy: RankPolicy::default(),
            max_age_ms: 15_000,
        };
        // Each allowed URL, with whether it is the server's only scheme and it may cross.
        let allowed: Vec<(String, bool)> = snapshot
            .streams
            .iter()
            .flat_map(|s| &s.mounts)
            .flat_map(|m| {
                let server = snapshot
                    .servers
                    .iter()
                    .find(|s| s.name == m.server)
                    .unwrap();
                let legacy =
                    server.public_url_http.is_empty() && server.public_url_https.is_empty();
                let only = legacy
                    || server.public_url_http.is_empty()
                    || server.public_url_https.is_empty();
                let crosses = only && (legacy || server.cross_scheme);
                [
                    &server.public_url,
                    &server.public_url_http,
                    &server.public_url_https,
                ]
                .into_iter()
                .filter(|base| !base.is_empty())
                .map(|base| (format!("{base}{}", m.mount), crosses))
                .collect::<Vec<_>>()
            })
            .collect();
        let mut paths: Vec<String> = EVIL.iter().map(|p| (*p).to_owned()).collect();
        paths.extend((0..20).map(|_| format!("/{}", random_text(&mut rng))));
        paths.extend(["/s0", "/s1/", "/icecast_balancer/s2/", "/s0.m3u"].map(str::to_owned));
        for path in paths {
            let Some(route) = route(&path, "/icecast_balancer") else {
                continue;
            };
            // A name that is no stream of the fleet is answered 404 before selection.
            let Some(stream) = view.streams.get(route.stream) else {
                continue;
            };
            let query = Some(random_text(&mut rng));
            let client = format!("127.0.{}.{}", rng.u8(..), rng.u8(..))
                .parse()
                .unwrap();
            let scheme = [Scheme::Http, Scheme::Https][rng.usize(..2)];
            let decision = selector
                .decide(
                    &view,
                    stream,
                    client,
                    scheme,
                    Format::Redirect,
                    true,
                    &mut rng,
                    now_ms,
                )
                .await;
            if let Decision::Redirect(url) = decision {
                redirects += 1;
                let location = with_query(&url, query.as_deref());
                let Some(&(_, crosses)) = allowed.iter().find(|(u, _)| u.as_str() == &*url) else {
                    panic!("round {round}: {path:?} redirected to {url}, not a fleet mount");
                };
                let same = url.starts_with(match scheme {
                    Scheme::Http => "http:",
                    Scheme::Https => "https:",
                });
                assert!(
                    same || crosses,
                    "round {round}: a {scheme:?} player sent to {url}, across schemes without leave"
                );
                let rest = &location[url.len()..];
                assert!(
                    rest.is_empty()
                        || (rest.starts_with('?') && rest.bytes().all(|b| b.is_ascii_graphic())),
                    "{location:?}"
                );
                assert!(
                    hyper::header::HeaderValue::from_str(&location).is_ok(),
                    "{location:?}"
                );
                let parsed = url::Url::parse(&location).unwrap();
                assert!(
                    snapshot
                        .servers
                        .iter()
                        .flat_map(|s| [&s.public_url, &s.public_url_http, &s.public_url_https])
                        .filter(|base| !base.is_empty())
                        .any(|base| url::Url::parse(base).unwrap().host() == parsed.host())
                );
            }
        }
    }
    assert!(
        redirects > 300,
        "the property must be exercised: {redirects} redirects"
    );
}
