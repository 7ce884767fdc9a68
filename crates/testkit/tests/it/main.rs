//! The test kit's own tests: real processes come up in parallel, behave like
//! the real thing, and leave nothing running.

mod icecast;
mod redis;
