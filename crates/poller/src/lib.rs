//! The poller: reads every Icecast server of the fleet, works out which mounts
//! can take listeners, and publishes one snapshot per cycle to Redis for the
//! redirectors to follow.
//!
//! [`cli`] resolves the command line into settings; [`run`] wires the admin
//! server, the poll loop ([`service`]) and signals, and shuts down; [`fetch`]
//! and [`status`] read Icecast, [`health`] turns that into state, [`canary`]
//! listens as a player would, [`audience`] adds up listener lists.

pub mod audience;
pub mod canary;
pub mod cli;
pub mod control;
pub mod fetch;
pub mod health;
pub mod metrics;
pub mod run;
pub mod service;
pub mod status;
