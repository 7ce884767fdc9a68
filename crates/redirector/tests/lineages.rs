//! A stream's lineage continues from one view to the next while its mounts
//! change in nothing but free slots, so that rankings kept per place are
//! rebased instead of made anew; anything else starts a new lineage.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use balancer_geo::GeoDb;
use balancer_proto::snapshot::v1::{Mount, MountState, Server, ServerState, Snapshot, Stream};
use icecast_redirector::client_ip::Scheme;
use icecast_redirector::reserve::{Reservations, Timings};
use icecast_redirector::view::FleetView;

const NOW_MS: i64 = 1_800_000_000_000;

/// Three servers, one mount each, with these free slots (of 100) and weights.
fn view(free: [u32; 3], weights: [u32; 3]) -> FleetView {
    let names = ["a", "b", "c"];
    let snapshot = Snapshot {
        version: 1,
        published_at_ms: NOW_MS,
        servers: names
            .iter()
            .zip(weights)
            .map(|(name, weight)| Server {
                name: (*name).into(),
                public_url: format!("http://{name}.example:8000"),
                state: ServerState::Up.into(),
                weight,
                observed_at_ms: NOW_MS - 1000,
                ..Default::default()
            })
            .collect(),
        streams: vec![Stream {
            name: "s".into(),
            mounts: names
                .iter()
                .zip(free)
                .map(|(name, free_slots)| Mount {
                    server: (*name).into(),
                    mount: "/s.ogg".into(),
                    state: MountState::Live.into(),
                    listeners: 100 - free_slots,
                    max_listeners: Some(100),
                    free_slots,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let reservations = Reservations::alone(Timings {
        grace: Duration::from_secs(1),
        lease: Duration::from_secs(5),
        max_age: Duration::from_secs(10),
    });
    FleetView::build(&snapshot, &Arc::new(GeoDb::disabled()), &reservations, None)
}

fn lineage(view: &FleetView) -> u64 {
    view.streams["s"].lineages[Scheme::Http.index()]
}

#[test]
fn a_lineage_continues_only_through_changes_of_free_slots() {
    let first = view([50, 30, 0], [100; 3]);
    let mut next = view([40, 35, 0], [100; 3]);
    assert_ne!(lineage(&first), lineage(&next), "unrelated until continued");
    next.continue_lineages(&first);
    assert_eq!(
        lineage(&first),
        lineage(&next),
        "other free slots: continued"
    );

    // A full mount with room again, a mount that fills up, another weight:
    // what is ranked, or how, changed.
    for (free, weights) in [
        ([40, 35, 5], [100; 3]),
        ([40, 0, 0], [100; 3]),
        ([40, 35, 0], [100, 200, 100]),
    ] {
        let mut changed = view(free, weights);
        changed.continue_lineages(&next);
        assert_ne!(lineage(&changed), lineage(&next), "{free:?} {weights:?}");
    }

    // The continued lineage goes on through the next change of free slots.
    let mut third = view([1, 99, 0], [100; 3]);
    third.continue_lineages(&next);
    assert_eq!(lineage(&third), lineage(&first));
    // Each scheme has its own lineage.
    let https = |view: &FleetView| view.streams["s"].lineages[Scheme::Https.index()];
    assert_eq!(https(&third), https(&first));
    assert_ne!(https(&third), lineage(&third));
}
