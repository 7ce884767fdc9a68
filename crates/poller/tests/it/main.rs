//! The poller binary against real icecast2 servers, a real redis-server and
//! real players.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod audience;
mod failover;
mod polling;
mod support;
