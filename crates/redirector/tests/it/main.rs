//! The redirector binary with real icecast2, redis-server, poller and players.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod canary;
mod console;
mod control;
mod crowd;
mod geo;
mod index;
mod limits;
mod outages;
mod rolling;
mod scenarios;
mod sentinel;
mod standalone;
mod support;
mod systemd;
mod tls;
mod wire;
