//! The test kit's own tests: real processes come up in parallel, behave like
//! the real thing, and leave nothing running.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod demo;
mod icecast;
mod redis;
