//! Keeping the in-memory view current: Redis pub/sub announces each snapshot
//! within milliseconds, a periodic version check catches lost messages, and in
//! standalone mode the in-process poller hands snapshots over directly.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use balancer_geo::GeoDb;
use balancer_proto::snapshot::v1::Snapshot;
use balancer_store::RedisStore;
use tokio::sync::watch;

use crate::reserve::Reservations;
use crate::view::FleetView;

/// The current view, swapped atomically; requests never wait for it.
#[derive(Default)]
pub struct Views {
    current: ArcSwapOption<FleetView>,
    /// Views replaced but still held when they were: by a request, or by a
    /// player thread's [`ThreadView`] until its next request. A view replaced
    /// while a player thread held it would be freed by that thread when it
    /// lets go: the whole view (every mount's URLs, names and pools), a
    /// stall for every player that thread holds, once per snapshot and on
    /// every core. Kept here, a view is freed by the control plane at a later
    /// snapshot, once nothing else holds it.
    retired: std::sync::Mutex<Vec<Arc<FleetView>>>,
}

/// Replaced views kept at most, should requests hold them for longer than
/// snapshots come (they hold them for milliseconds, and a busy player thread
/// moves to the new view at its next request; a snapshot comes every second
/// or so): past it, the oldest is let go wherever it is held (by a player
/// thread idle for that long, which frees it at its next request).
const RETIRED_KEPT: usize = 8;

impl Views {
    /// The current view, if a snapshot arrived yet.
    pub fn load(&self) -> Option<Arc<FleetView>> {
        self.current.load_full()
    }

    /// A player thread's own handle on the current view.
    pub fn for_thread(self: &Arc<Self>) -> ThreadView {
        ThreadView(arc_swap::Cache::new(Current(self.clone())))
    }

    /// Makes `snapshot` current if it is newer than what is shown.
    pub fn apply(&self, snapshot: &Snapshot, geo: &GeoDb, reservations: &Reservations) -> bool {
        if let Some(current) = self.current.load().as_ref() {
            let newer = snapshot.version > current.version;
            // Versions only grow, unless Redis and the poller both lost their
            // state; then a later publication still wins.
            let restarted = snapshot.version < current.version
                && snapshot.published_at_ms > current.published_at_ms;
            if !newer && !restarted {
                return false;
            }
            if restarted {
                tracing::warn!(
                    old = current.version,
                    new = snapshot.version,
                    "snapshot versions restarted; following the newer snapshot"
                );
            }
        }
        let current = self.current.load_full();
        let mut view = FleetView::build(snapshot, geo, reservations, current.as_deref());
        crate::view::yield_core();
        if let Some(previous) = current.as_deref() {
            view.continue_lineages(previous);
        }
        drop(current);
        let previous = self.current.swap(Some(Arc::new(view)));
        // Freeing views is a part of its own.
        crate::view::yield_core();
        self.retire(previous);
        true
    }

    /// Frees the replaced views nothing else holds, and keeps `previous`
    /// (and any still held) for a later snapshot.
    fn retire(&self, previous: Option<Arc<FleetView>>) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.extend(previous);
        // Nothing else holds a view whose count is 1, and nothing can take a
        // new hold of it: it is no longer current. So it is freed here.
        retired.retain(|view| Arc::strong_count(view) > 1);
        if retired.len() > RETIRED_KEPT {
            let excess = retired.len() - RETIRED_KEPT;
            retired.drain(..excess);
        }
    }
}

/// A player thread's hold on the current view, checked with one plain load
/// per request. [`Views::load`] takes a hold per request instead: arc-swap's
/// bookkeeping and two atomic updates of the view's count, which every player
/// thread makes on the same cache line.
pub struct ThreadView(arc_swap::Cache<Current, Option<Arc<FleetView>>>);

impl ThreadView {
    /// The current view, if a snapshot arrived yet.
    pub fn current(&mut self) -> Option<&FleetView> {
        self.0.load().as_deref()
    }
}

/// What a [`ThreadView`] watches: the views' current one.
struct Current(Arc<Views>);

impl std::ops::Deref for Current {
    type Target = ArcSwapOption<FleetView>;

    fn deref(&self) -> &ArcSwapOption<FleetView> {
        &self.0.current
    }
}

/// Follows the snapshots in Redis until `stop` turns true. Re-reads every
/// `refresh` in case a notification was lost, and re-subscribes after errors.
pub async fn follow_redis(
    store: RedisStore,
    views: Arc<Views>,
    geo: Arc<GeoDb>,
    reservations: Arc<Reservations>,
    refresh: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut subscription = None;
    let mut ticker = tokio::time::interval(refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fetch = || async {
        match store.latest_snapshot().await {
            Ok(Some(snapshot)) => {
                // Decoded: a player thread on this core goes first.
                crate::view::yield_core();
                if views.apply(&snapshot, &geo, &reservations) {
                    tracing::debug!(version = snapshot.version, "snapshot applied");
                }
            }
            Ok(None) => tracing::debug!("no snapshot in Redis yet"),
            Err(e) => tracing::debug!(error = %e, "cannot read the snapshot"),
        }
    };
    enum Event {
        Stop,
        Announced(Option<u64>),
        Tick,
    }
    loop {
        let event = {
            let message = async {
                match subscription.as_mut() {
                    Some(stream) => futures_util::StreamExt::next(stream).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => Event::Stop,
                got = message => Event::Announced(got),
                _ = ticker.tick() => Event::Tick,
            }
        };
        match event {
            Event::Stop => return,
            Event::Announced(Some(version)) => {
                if views.load().is_none_or(|v| version != v.version) {
                    fetch().await;
                }
            }
            Event::Announced(None) => {
                tracing::debug!("snapshot subscription ended; re-subscribing");
                subscription = None;
            }
            Event::Tick => {
                if subscription.is_none() {
                    subscription = store.subscribe().await.ok().map(Box::pin);
                }
                let known = views.load().map_or(0, |v| v.version);
                match store.latest_version().await {
                    Ok(latest) if latest != known => fetch().await,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot check the snapshot version"),
                }
            }
        }
    }
}

/// Follows the in-process poller (standalone mode) until the channel closes.
pub async fn follow_memory(
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    views: Arc<Views>,
    geo: Arc<GeoDb>,
    reservations: Arc<Reservations>,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            views.apply(&snapshot, &geo, &reservations);
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancer_proto::snapshot::v1::{Mount, MountState, Server, ServerState, Stream};

    fn snapshot(version: u64) -> Snapshot {
        Snapshot {
            version,
            published_at_ms: 1_800_000_000_000 + i64::try_from(version).unwrap_or(0),
            servers: vec![Server {
                name: "a".into(),
                public_url: "http://a.example:8000".into(),
                state: ServerState::Up.into(),
                observed_at_ms: 1_800_000_000_000,
                ..Default::default()
            }],
            streams: vec![Stream {
                name: "s".into(),
                mounts: vec![Mount {
                    server: "a".into(),
                    mount: "/s.ogg".into(),
                    state: MountState::Live.into(),
                    free_slots: 10,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_replaced_view_is_freed_by_the_control_plane_not_by_a_request() {
        let (views, geo) = (Views::default(), GeoDb::disabled());
        let reservations = Reservations::alone(crate::reserve::Timings {
            grace: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            max_age: Duration::from_secs(10),
        });
        assert!(views.apply(&snapshot(1), &geo, &reservations));
        // A request answering from view 1 while view 2 arrives.
        let held = views.load().unwrap();
        let first = Arc::downgrade(&held);
        assert!(views.apply(&snapshot(2), &geo, &reservations));
        let unheld = Arc::downgrade(&views.load().unwrap());
        // The request ends: its drop does not free the view.
        drop(held);
        assert!(first.upgrade().is_some(), "freed by the request's thread");
        // The next snapshot frees it, and view 2, which nothing held, too.
        assert!(views.apply(&snapshot(3), &geo, &reservations));
        assert!(
            first.upgrade().is_none(),
            "view 1 kept after nothing held it"
        );
        assert!(
            unheld.upgrade().is_none(),
            "view 2 kept after nothing held it"
        );
        // However long requests hold views, at most RETIRED_KEPT are kept.
        let mut holds = Vec::new();
        for version in 4..20 {
            holds.push(views.load().unwrap());
            assert!(views.apply(&snapshot(version), &geo, &reservations));
        }
        let kept = views.retired.lock().unwrap().len();
        assert_eq!(kept, RETIRED_KEPT);
    }
}
