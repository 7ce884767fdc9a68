//! Property: a player is only ever sent to a mount that can take one (server
//! up, not drained, data fresh, source live, a free slot), whether the
//! request takes the prepared fast path (all data fresh) or has to check
//! each mount (some server's data is stale).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

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
const MAX_AGE_MS: i64 = 15_000;

/// Servers in random conditions; returns the snapshot and the URLs that may take players.
fn random_fleet(rng: &mut fastrand::Rng) -> (Snapshot, Vec<String>) {
    let mut usable = Vec::new();
    let mut servers = Vec::new();
    let mut mounts = Vec::new();
    for i in 0..rng.usize(1..12) {
        let up = rng.u8(..4) > 0;
        let drained = rng.u8(..6) == 0;
        let stale = rng.u8(..5) == 0;
        let live = rng.u8(..5) > 0;
        let free_slots = if rng.bool() { rng.u32(1..50) } else { 0 };
        let public_url = format!("http://10.0.0.{i}:8000");
        servers.push(Server {
            name: format!("srv{i}"),
            public_url: public_url.clone(),
            state: if up {
                ServerState::Up
            } else {
                ServerState::Down
            }
            .into(),
            drained,
            weight: rng.u32(1..1000),
            observed_at_ms: if stale {
                NOW_MS - MAX_AGE_MS - 1
            } else {
                NOW_MS - 1000
            },
            ..Default::default()
        });
        mounts.push(Mount {
            server: format!("srv{i}"),
            mount: "/s.ogg".into(),
            state: if live {
                MountState::Live
            } else {
                MountState::NoSource
            }
            .into(),
            listeners: 0,
            max_listeners: Some(50),
            free_slots,
            headroom: 0,
            info: None,
        });
        if up && !drained && !stale && live && free_slots > 0 {
            usable.push(format!("{public_url}/s.ogg"));
        }
    }
    let snapshot = Snapshot {
        version: 1,
        published_at_ms: NOW_MS,
        servers,
        streams: vec![Stream {
            name: "s".into(),
            mounts,
            ..Default::default()
        }],
        ..Default::default()
    };
    (snapshot, usable)
}

#[tokio::test]
async fn players_only_go_to_mounts_that_can_take_them() {
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut redirects, mut full, mut with_stale) = (0, 0, 0);
    for round in 0..400 {
        let (snapshot, usable) = random_fleet(&mut rng);
        with_stale += usize::from(
            snapshot
                .servers
                .iter()
                .any(|s| NOW_MS - s.observed_at_ms > MAX_AGE_MS),
        );
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
            max_age_ms: MAX_AGE_MS,
        };
        for _ in 0..10 {
            let client = "192.0.2.1".parse().unwrap();
            let decision = selector
                .decide(
                    &view,
                    &view.streams["s"],
                    client,
                    Scheme::Http,
                    Format::Redirect,
                    false,
                    &mut rng,
                    NOW_MS,
                )
                .await;
            match decision {
                Decision::Redirect(url) => {
                    redirects += 1;
                    assert!(
                        usable.contains(&url.to_string()),
                        "round {round}: sent to {url}; usable: {usable:?}"
                    );
                }
                Decision::Full => {
                    full += 1;
                    assert!(
                        usable.is_empty(),
                        "round {round}: 503 although {usable:?} can take players"
                    );
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
    assert!(
        redirects > 1000 && full > 100 && with_stale > 100,
        "{redirects} {full} {with_stale}"
    );
}
