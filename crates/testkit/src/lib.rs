//! Real processes for integration tests: `redis-server`, `icecast2` with
//! `ffmpeg` test-tone sources, and players that follow redirects.
//!
//! Everything binds to free loopback ports, lives in its own temporary
//! directory, waits for readiness by polling (never a fixed sleep), and is
//! killed when its handle drops, also when a test panics. As a last resort
//! each child is also killed by the kernel when the thread that started it
//! exits (`PR_SET_PDEATHSIG`), so start processes from the test's own task, not
//! from `spawn_blocking`.
//!
//! The helpers panic with the process's log tail on failure: they are for
//! tests, where a panic is the clearest report.
//!
//! ```no_run
//! # async fn demo() {
//! use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, RedisServer, Player};
//! let redis = RedisServer::start().await;
//! let icecast = IcecastServer::start(IcecastSpec::new([MountSpec::ogg("/live.ogg").max_listeners(2)])).await;
//! let player = Player::connect(&icecast.mount_url("/live.ogg")).await.unwrap();
//! assert_eq!(player.status(), 200);
//! # }
//! ```

pub mod browser;
mod dribble;
pub mod geoip;
mod icecast;
mod player;
mod ports;
mod process;
mod redis;
mod sentinel;
mod wait;

pub use dribble::DribblingServer;
pub use icecast::{Format, IcecastServer, IcecastSpec, MountSpec};
pub use player::{PlayOutcome, Player};
pub use ports::free_port;
pub use process::{ChildProcess, process_exists};
pub use redis::RedisServer;
pub use sentinel::SentinelSet;

/// An HTTP client builder for tests. The workspace builds reqwest with
/// rustls but no default crypto provider (the poller picks ring), so every
/// client in a test process is made here, after ring is installed. It trusts
/// no certificate authority (loading the system's takes tens of
/// milliseconds per client, and tests make clients by the hundred): a test
/// that speaks https adds its own CA with `tls_certs_merge`.
pub fn http() -> reqwest::ClientBuilder {
    // Already installed by another part of the process is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().tls_certs_only(Vec::new())
}

/// `GET url` with a client from [`http`].
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().build()?.get(url).send().await
}
pub use wait::wait_until;

/// The project's `assets/load.xsl`, installed into every test Icecast's web root.
pub const LOAD_XSL: &str = include_str!("../../../assets/load.xsl");
