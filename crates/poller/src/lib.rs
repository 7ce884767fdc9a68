//! The poller: reads every Icecast server of the fleet, works out which mounts
//! can take listeners, and publishes one snapshot per cycle to Redis for the
//! redirectors to follow.
//!
//! So far this crate holds the command line ([`cli`]); polling, state and
//! publishing arrive with the poller issue.

pub mod audience;
pub mod canary;
pub mod cli;
pub mod control;
pub mod fetch;
pub mod health;
pub mod metrics;
pub mod service;
pub mod status;
