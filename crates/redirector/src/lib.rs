//! The redirector: answers `GET /<stream>` with a 302 to the best Icecast mount
//! that has a free slot, following the snapshot the poller publishes in Redis
//! (or, in standalone mode, polling in-process).
//!
//! So far this crate holds the command line ([`cli`]); serving arrives with the
//! redirector issue.

pub mod cli;
