//! What every binary of the project does the same way: exit codes, logging
//! setup, signals, systemd readiness, the admin gRPC server with standard health checking, and
//! parsers for flags that several binaries share.

mod admin;
mod flags;
mod logging;
mod notify;
mod signals;

pub use admin::{ExposedAdmin, Health, check_admin_exposure, serve_admin};
pub use flags::{
    CommonFlags, RedisUrl, RedisUrlError, parse_redis_url, parse_trusted_proxy, process_identity,
};
pub use logging::{LogFormat, init_logging};
pub use notify::{notify_ready, notify_stopping};
pub use signals::{Signal, signals};

/// Exit code for a bad config file or flag (`EX_USAGE` from sysexits.h), so
/// init systems and scripts can tell "fix the config" from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// Exit code when a service this one depends on cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// Exit code for an internal error (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: i32 = 70;
