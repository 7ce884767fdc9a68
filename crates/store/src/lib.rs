//! The contract between the one process that writes shared state (the poller)
//! and the many that read it (redirectors): which Redis keys exist, how long
//! each may live, and how values are encoded.
//!
//! Architecture invariant: no other crate spells a Redis key or channel name.
//! Every key goes through [`Keys`], so all of them share one hash tag (one
//! Redis Cluster slot, so multi-key scripts work) and every key has a bound,
//! listed in [`Keys::all`].

mod codec;
mod keys;
mod memory;
mod redis_store;
mod sentinel;
mod slots;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use balancer_proto::snapshot::v1::Snapshot;

pub use memory::MemoryStore;

pub use codec::{DecodeError, MAX_SNAPSHOT_BYTES, decode_snapshot, encode_snapshot};
pub use keys::{
    Bound, DEFAULT_NAMESPACE, KeySpec, Keys, NamespaceError, lease_ttl, reservation_ttl,
    snapshot_ttl,
};
pub use redis_store::{DEFAULT_OPERATION_TIMEOUT, RedisStore, StoreError};
pub use sentinel::{SENTINEL_SCHEME, SentinelTarget, SentinelUrlError};
pub use slots::{
    Grant, LocalSlots, MAX_CONNECT_GRACE, PollSeen, REPLICA_ALIVE, ReserveRequest, SlotLedger,
    SlotStore,
};

/// What the poller needs from shared state: Redis for a fleet of redirectors,
/// [`MemoryStore`] for the standalone redirector. See [`RedisStore`] for the
/// meaning of each call.
pub trait PollerStore: Clone + Send + Sync + 'static {
    /// Takes or renews the lease; whether `holder` holds it now.
    fn hold_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Gives the lease up if `holder` has it.
    fn release_lease(&self, holder: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Numbers (above `floor`), stores and announces a snapshot; returns its version.
    fn publish_snapshot(
        &self,
        holder: &str,
        snapshot: &mut Snapshot,
        ttl: Duration,
        floor: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Names of drained servers.
    fn drained(&self) -> impl Future<Output = Result<BTreeSet<String>, StoreError>> + Send;
    /// Slots handed out by redirectors, for each `(server, mount, since_ms)`:
    /// those of that mount at or after `since_ms`. One round trip for all.
    fn reserved_many(
        &self,
        queries: &[(&str, &str, i64)],
    ) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send;
    /// Leases slots of a mount from the ledger the redirectors share, for
    /// the poller's own canary listener.
    fn reserve_slots(
        &self,
        request: ReserveRequest,
    ) -> impl Future<Output = Result<Grant, StoreError>> + Send;
    /// Drains or undrains a server; whether anything changed.
    fn set_drained(
        &self,
        server: &str,
        drained: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Forgets drains of servers not in `servers`.
    fn forget_drains_except(
        &self,
        servers: &BTreeSet<String>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl PollerStore for RedisStore {
    async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        RedisStore::hold_lease(self, holder, ttl).await
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        RedisStore::release_lease(self, holder).await
    }

    async fn publish_snapshot(
        &self,
        holder: &str,
        snapshot: &mut Snapshot,
        ttl: Duration,
        floor: u64,
    ) -> Result<u64, StoreError> {
        RedisStore::publish_snapshot(self, holder, snapshot, ttl, floor).await
    }

    async fn drained(&self) -> Result<BTreeSet<String>, StoreError> {
        RedisStore::drained(self).await
    }

    async fn set_drained(&self, server: &str, drained: bool) -> Result<bool, StoreError> {
        RedisStore::set_drained(self, server, drained).await
    }

    async fn reserved_many(&self, queries: &[(&str, &str, i64)]) -> Result<Vec<u32>, StoreError> {
        RedisStore::reserved_many(self, queries).await
    }

    async fn forget_drains_except(&self, servers: &BTreeSet<String>) -> Result<(), StoreError> {
        RedisStore::forget_drains_except(self, servers).await
    }

    async fn reserve_slots(&self, request: ReserveRequest) -> Result<Grant, StoreError> {
        RedisStore::reserve(self, &request).await
    }
}
