//! The redirector: answers `GET /<stream>` with a 302 to the best Icecast mount
//! that has a free slot, following the snapshot the poller publishes in Redis
//! (or, in standalone mode, polling in-process).
//!
//! Request path, in order: [`route`] (which stream, which format),
//! [`client_ip`] (who asks), [`select`] (usable mounts, geo ranking,
//! a slot from [`reserve`]), [`http`] (the answer). [`follow`] keeps the
//! [`view`] current; [`server`] accepts connections and [`wire`] reads and
//! writes HTTP/1.1 on them, with each thread's deadlines and stop in
//! `watchdog`, its kept-alive connections between requests in `resting`, and
//! the reads and writes of answers given in place as `bare` system calls;
//! [`service`] wires it all.
//! [`index`] lists the streams at `/` and `/streams.json`.
//!
//! Architecture invariant: no request waits for Redis except to lease slots,
//! which happens once per batch and is bounded by a 30 ms timeout; a `Location`
//! only ever holds a `public_url` from the snapshot plus a validated mount and
//! the request's query string.

pub(crate) mod bare;
pub mod cli;
pub mod client_ip;
pub mod control;
pub mod follow;
pub mod http;
pub mod index;
pub mod metrics;
pub mod playlist;
mod rankings;
pub mod reserve;
pub(crate) mod resting;
pub mod route;
pub mod select;
pub mod server;
pub mod service;
pub mod view;
mod watchdog;
pub mod wire;
