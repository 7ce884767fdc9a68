//! Property: a view built from a snapshot and the view it replaces is the
//! view built from the snapshot alone, whatever changed between the two
//! snapshots (URLs, names, order, what sources announce, servers and mounts
//! coming and going). `FleetView::build` takes unchanged parts from the view
//! before; nothing of it may outlive a change.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use balancer_geo::GeoDb;
use balancer_proto::snapshot::v1::{
    Mount, MountInfo, MountState, Server, ServerState, Snapshot, Stream,
};
use icecast_redirector::reserve::{Reservations, Timings};
use icecast_redirector::view::FleetView;

const NOW_MS: i64 = 1_800_000_000_000;

/// A random fleet: up to 4 servers (names, URLs of every kind, literal
/// addresses or names) and 2 streams of up to 5 mounts, in random order.
fn snapshot(rng: &mut fastrand::Rng, version: u64) -> Snapshot {
    let urls = [
        "http://a.example:8000",
        "http://a.example:8000/",
        "http://192.0.2.7:8000",
        "http://[2001:db8::7]:8000",
        "https://b.example",
        "",
    ];
    let names = ["one", "two", "three", "four"];
    let present: Vec<&str> = names.into_iter().filter(|_| rng.u8(..4) > 0).collect();
    let servers: Vec<Server> = present
        .iter()
        .map(|name| Server {
            name: (*name).into(),
            public_url: urls[rng.usize(..urls.len())].into(),
            public_url_http: urls[rng.usize(..urls.len())].into(),
            public_url_https: urls[rng.usize(..urls.len())].into(),
            state: ServerState::Up.into(),
            observed_at_ms: NOW_MS - 1000,
            weight: 100,
            ..Default::default()
        })
        .collect();
    let mount_names = ["/s.ogg", "/s.mp3", "/t.ogg"];
    let infos = [
        None,
        Some(MountInfo::default()),
        Some(MountInfo {
            title: "Song".into(),
            ..Default::default()
        }),
        Some(MountInfo {
            title: "Other song".into(),
            genre: "jazz".into(),
            ..Default::default()
        }),
    ];
    let streams = ["s", "t"]
        .iter()
        .map(|stream| Stream {
            name: (*stream).into(),
            mounts: (0..rng.usize(..6))
                .map(|_| Mount {
                    // Now and then a server the snapshot does not have.
                    server: names[rng.usize(..names.len())].into(),
                    mount: mount_names[rng.usize(..mount_names.len())].into(),
                    state: MountState::Live.into(),
                    max_listeners: Some(100),
                    free_slots: rng.u32(..100),
                    info: infos[rng.usize(..infos.len())].clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    Snapshot {
        version,
        published_at_ms: NOW_MS,
        servers,
        streams,
        ..Default::default()
    }
}

fn reservations() -> Reservations {
    Reservations::alone(Timings {
        grace: Duration::from_secs(1),
        lease: Duration::from_secs(5),
        max_age: Duration::from_secs(10),
    })
}

/// What a view says, as text: every field a request or the index reads.
fn contents(view: &FleetView) -> String {
    let mut text = String::new();
    for s in &view.servers {
        text += &format!(
            "server {} ipv4 {} ipv6 {} place {:?} cross {}\n",
            s.name, s.ipv4, s.ipv6, s.place, s.cross_scheme
        );
    }
    let mut streams: Vec<_> = view.streams.iter().collect();
    streams.sort_by_key(|(name, _)| *name);
    for (name, stream) in streams {
        text += &format!("stream {name} {}\n", stream.name);
        for m in &stream.mounts {
            text += &format!(
                "  mount {} on {} urls {:?} info {:?} free {}\n",
                m.mount, m.server, m.urls, m.info, m.free_slots
            );
        }
    }
    text
}

#[test]
fn a_view_built_on_the_one_before_is_the_view_built_afresh() {
    let (geo, reservations) = (Arc::new(GeoDb::disabled()), reservations());
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..300 {
        let mut previous = FleetView::build(&snapshot(&mut rng, 1), &geo, &reservations, None);
        for version in 2..6 {
            // Most snapshots repeat the last but for counts; some change more.
            let next = snapshot(&mut rng, version);
            let built = FleetView::build(&next, &geo, &reservations, Some(&previous));
            let afresh = FleetView::build(&next, &geo, &reservations, None);
            assert_eq!(
                contents(&built),
                contents(&afresh),
                "round {round}, version {version}"
            );
            previous = built;
        }
    }
}

#[test]
fn an_unchanged_mount_shares_its_urls_and_announcement_with_the_view_before() {
    let (geo, reservations) = (Arc::new(GeoDb::disabled()), reservations());
    let mut rng = fastrand::Rng::with_seed(11);
    let mut first = snapshot(&mut rng, 1);
    while first.streams[0].mounts.is_empty()
        || !first
            .servers
            .iter()
            .any(|s| s.name == first.streams[0].mounts[0].server)
    {
        first = snapshot(&mut rng, 1);
    }
    let before = FleetView::build(&first, &geo, &reservations, None);
    let mut second = first.clone();
    second.version = 2;
    for mount in &mut second.streams[0].mounts {
        mount.free_slots /= 2;
    }
    let after = FleetView::build(&second, &geo, &reservations, Some(&before));
    let (old, new) = (
        &before.streams["s"].mounts[0],
        &after.streams["s"].mounts[0],
    );
    assert!(Arc::ptr_eq(&old.mount, &new.mount));
    assert!(Arc::ptr_eq(&old.info, &new.info));
    for (old, new) in old.urls.iter().zip(&new.urls) {
        match (old, new) {
            (Some(old), Some(new)) => assert!(Arc::ptr_eq(old, new)),
            (None, None) => {}
            _ => panic!("a URL came or went: {old:?} {new:?}"),
        }
    }
    assert_ne!(old.free_slots, new.free_slots, "counts are the new ones");
}
