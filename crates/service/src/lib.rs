//! What every binary of the project does the same way: exit codes, logging
//! setup, signals, systemd readiness, the admin address (standard gRPC health checking, the
//! control API, metrics and the operator console), and
//! parsers for flags that several binaries share.
//!
//! This is the one crate that touches the process: the environment, signals,
//! systemd's notification socket. Its functions for that are called by
//! binaries, which hand what they need down to the libraries as values, or
//! as a [`Process`].

mod admin;
pub mod console;
pub mod control_json;
mod flags;
mod logging;
mod notify;
mod signals;

pub use admin::{Admin, AdminServer, ExposedAdmin, Health, check_admin_exposure, serve_admin};
pub use flags::{
    CommonFlags, RedisUrl, RedisUrlError, parse_redis_url, parse_trusted_proxy, process_identity,
};
pub use logging::{LogFormat, init_logging};
pub use notify::{notify_ready, notify_stopping};
pub use signals::{Signal, signals};

/// What a service library may need of the process it runs in, handed down
/// by the binary: libraries never read the environment or talk to systemd
/// themselves, so tests can give them a process of their own.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    /// Looks up an environment variable (for `admin_password_env`).
    pub env: fn(&str) -> Option<String>,
    /// Tells the service manager the service is ready.
    pub ready: fn(),
    /// Tells the service manager the service is stopping.
    pub stopping: fn(),
}

impl Process {
    /// The real process: its environment, and systemd when `NOTIFY_SOCKET` is set.
    pub fn real() -> Process {
        Process {
            env: process_env,
            ready: notify_ready,
            stopping: notify_stopping,
        }
    }
}

/// The real process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Why a service stopped with an error: the exit code that tells init
/// systems and scripts what kind of trouble it was, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One of [`EXIT_CONFIG`], [`EXIT_UNAVAILABLE`], [`EXIT_SOFTWARE`].
    pub code: i32,
    /// What went wrong, for stderr.
    pub message: String,
}

impl Failure {
    /// A bad flag or config file.
    pub fn config(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_CONFIG,
            message: message.into(),
        }
    }

    /// Something the service needs is not there (a port, Redis, signals).
    pub fn unavailable(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// Prints `binary: message` to stderr and turns the code into an exit code.
    pub fn exit(&self, binary: &str) -> std::process::ExitCode {
        eprintln!("{binary}: {}", self.message);
        std::process::ExitCode::from(u8::try_from(self.code).unwrap_or(1))
    }
}

impl From<String> for Failure {
    /// An error nobody classified: an internal one.
    fn from(message: String) -> Failure {
        Failure {
            code: EXIT_SOFTWARE,
            message,
        }
    }
}

/// Exit code for a bad config file or flag (`EX_USAGE` from sysexits.h), so
/// init systems and scripts can tell "fix the config" from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// Exit code when a service this one depends on cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// Exit code for an internal error (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: i32 = 70;
