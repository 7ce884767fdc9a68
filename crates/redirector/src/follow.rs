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
}

impl Views {
    /// The current view, if a snapshot arrived yet.
    pub fn load(&self) -> Option<Arc<FleetView>> {
        self.current.load_full()
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
        let mut view = FleetView::build(snapshot, geo, reservations);
        crate::view::yield_core();
        if let Some(previous) = self.current.load().as_ref() {
            view.continue_lineages(previous);
        }
        let previous = self.current.swap(Some(Arc::new(view)));
        // Dropping the previous view is a part of its own.
        crate::view::yield_core();
        drop(previous);
        true
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
