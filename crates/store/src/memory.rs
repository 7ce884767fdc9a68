//! Shared state for a single process (standalone mode): the poller's snapshots
//! go straight to the redirector through a watch channel.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer_proto::snapshot::v1::Snapshot;
use tokio::sync::watch;

use crate::{LocalSlots, PollerStore, StoreError};

/// In-process state: always the leader, snapshots delivered by channel.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryState>>,
    slots: LocalSlots,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
}

#[derive(Default)]
struct MemoryState {
    version: u64,
    drained: BTreeSet<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::default(),
            slots: LocalSlots::new(),
            snapshots: watch::channel(None).0,
        }
    }

    /// Receives every snapshot published from now on (and the latest one).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshots.subscribe()
    }

    /// The reservation ledger the standalone redirector leases from.
    pub fn slots(&self) -> LocalSlots {
        self.slots.clone()
    }

    /// Drains (`true`) or undrains a server; returns whether anything changed.
    pub fn drain(&self, server: &str, drained: bool) -> bool {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if drained {
            state.drained.insert(server.to_owned())
        } else {
            state.drained.remove(server)
        }
    }
}

impl PollerStore for MemoryStore {
    async fn hold_lease(&self, _holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release_lease(&self, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn publish_snapshot(
        &self,
        _holder: &str,
        snapshot: &mut Snapshot,
        _ttl: Duration,
        floor: u64,
    ) -> Result<u64, StoreError> {
        let version = {
            let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            state.version = state.version.max(floor) + 1;
            state.version
        };
        snapshot.version = version;
        self.snapshots
            .send_replace(Some(Arc::new(snapshot.clone())));
        Ok(version)
    }

    async fn drained(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drained
            .clone())
    }

    async fn reserved_many(&self, queries: &[(&str, &str, i64)]) -> Result<Vec<u32>, StoreError> {
        Ok(queries
            .iter()
            .map(|(server, mount, since_ms)| self.slots.reserved(server, mount, *since_ms))
            .collect())
    }

    async fn set_drained(&self, server: &str, drained: bool) -> Result<bool, StoreError> {
        Ok(self.drain(server, drained))
    }

    async fn reserve_slots(
        &self,
        request: crate::ReserveRequest,
    ) -> Result<crate::Grant, StoreError> {
        crate::SlotStore::reserve(&self.slots, request).await
    }

    async fn forget_drains_except(&self, servers: &BTreeSet<String>) -> Result<(), StoreError> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drained
            .retain(|s| servers.contains(s));
        Ok(())
    }
}
