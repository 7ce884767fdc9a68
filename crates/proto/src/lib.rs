//! The wire contracts shared by the poller, the redirectors and `balancerctl`.
//!
//! - [`snapshot::v1`]: the fleet snapshot, the value the poller writes to Redis
//!   and redirectors read. One versioned schema for writer and reader.
//! - [`control::v1`]: the gRPC control API both services serve on their admin
//!   address (health is the standard `grpc.health.v1` from tonic-health).
//!
//! The Rust code under `src/generated/` is generated from `proto/` by
//! `cargo xtask codegen` with protox (no `protoc` needed) and checked in; the
//! `codegen` test fails when it is stale.

/// The fleet snapshot: the value stored in Redis.
pub mod snapshot {
    /// Version 1 of the snapshot schema.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!("generated/icecast_balancer.snapshot.v1.rs");
    }
}

/// The gRPC control API.
pub mod control {
    /// Version 1 of the control API.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!("generated/icecast_balancer.control.v1.rs");
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/descriptor.bin");
