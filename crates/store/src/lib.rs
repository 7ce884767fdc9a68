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
mod redis_store;

pub use codec::{DecodeError, MAX_SNAPSHOT_BYTES, decode_snapshot, encode_snapshot};
pub use keys::{
    Bound, DEFAULT_NAMESPACE, KeySpec, Keys, NamespaceError, lease_ttl, reservation_ttl,
    snapshot_ttl,
};
pub use redis_store::{DEFAULT_OPERATION_TIMEOUT, RedisStore, StoreError};
