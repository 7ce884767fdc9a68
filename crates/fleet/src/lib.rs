//! The fleet configuration: which Icecast servers exist, which streams they carry
//! under which mounts, and how the poller reads them.
//!
//! This is what django-icecast-balancer kept in its Django admin (Server, Stream,
//! Mount), as a TOML file. [`load`] reads and validates it; every error names the
//! file, line and field at fault (see [`ConfigError`]). The crate does no network
//! I/O and never reads the process environment itself: the caller passes an
//! environment lookup, so tests need no `set_var`.
//!
//! ```toml
//! [poller]
//! interval = "2s"
//! timeout = "1500ms"
//!
//! [[server]]
//! name = "vienna-1"
//! url = "http://10.0.0.11:8000"
//! public_url = "https://vie1.radio.example"
//! status = "admin"
//! admin_user = "admin"
//! admin_password_env = "VIE1_ADMIN_PASSWORD"
//!
//! [[stream]]
//! name = "fm4-hq"
//! mounts = [{ server = "vienna-1", mount = "/fm4-hq.ogg" }]
//! ```

mod error;
mod raw;
mod validate;

use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use balancer_geo::{Code, Coordinates, CountryRule};
pub use error::{ConfigError, Location};
pub use url::Url;

/// Default time between two polls of the same server.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default time allowed for one status request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default number of good polls before a down server counts as up (HAProxy's `rise`).
pub const DEFAULT_RISE: u32 = 2;
/// Default number of failed polls before an up server counts as down (HAProxy's `fall`).
pub const DEFAULT_FALL: u32 = 3;
/// Default time a source may send no bytes before its mount counts as not
/// live. Icecast 2.4 updates `total_bytes_read` about every 5 s, so less than
/// two updates would mistake a live source for a stalled one.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(15);
/// The shortest accepted `stall_after`.
pub const MIN_STALL_AFTER: Duration = Duration::from_secs(11);
/// Default time between two canaries of the same server.
pub const DEFAULT_CANARY_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a canary may take to connect and read [`CANARY_BYTES`]:
/// longer than a status poll, since a stream starts with whatever Icecast's
/// burst holds and then comes at its bitrate.
pub const DEFAULT_CANARY_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time between two readings of every mount's listener list.
pub const DEFAULT_AUDIENCE_INTERVAL: Duration = Duration::from_secs(60);
/// How many bytes of audio a canary must read for the public URL to count as playing.
pub const CANARY_BYTES: usize = 4096;
/// Default operator weight of a server.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest accepted operator weight.
pub const MAX_WEIGHT: u32 = 1000;

/// A validated fleet: every cross-reference resolves and every value is in range.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// How the poller polls.
    pub poller: PollerSettings,
    /// The Icecast servers, in file order. Names are unique.
    pub servers: Vec<Server>,
    /// The streams players ask for, in file order. Names are unique.
    pub streams: Vec<Stream>,
}

/// The `[poller]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerSettings {
    /// Time between two polls of a server; never zero.
    pub interval: Duration,
    /// Time allowed for one status request; never zero and never above `interval`.
    pub timeout: Duration,
    /// Good polls needed before a down server is up again.
    pub rise: u32,
    /// Failed polls needed before an up server is down.
    pub fall: u32,
    /// A mount whose source's `total_bytes_read` (from `/admin/stats`) has not
    /// grown for this long is not live, although Icecast still lists it.
    pub stall_after: Duration,
    /// How often each server's public URLs are opened as a player would
    /// (spread over the interval); `None` when canaries are off.
    pub canary_interval: Option<Duration>,
    /// How long one canary may take to connect and read [`CANARY_BYTES`].
    pub canary_timeout: Duration,
    /// How often the listener list of every mount (`/admin/listclients`,
    /// servers polled with `status = "admin"`) is read for the audience
    /// figures; `None` when off.
    pub audience_interval: Option<Duration>,
    /// Extra certificate authorities the poller trusts for https, besides the
    /// system's (a private CA in front of Icecast).
    pub ca: Option<CaBundle>,
}

/// PEM certificates read from the fleet file's `ca_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// Where they were read from (relative paths are taken from the fleet file's folder).
    pub path: std::path::PathBuf,
    /// The file's content: one or more `BEGIN CERTIFICATE` blocks.
    pub pem: Vec<u8>,
}

/// One Icecast server (`[[server]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Unique name, made of ASCII letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Where the poller reads status (http or https, no trailing slash).
    pub url: Url,
    /// Where players are sent (no trailing slash): the first of `public_urls`,
    /// for logs and for locating the server.
    pub public_url: Url,
    /// Where players are sent, per scheme; at least one is set (`url` when
    /// the file gives no `public_url`).
    pub public_urls: PublicUrls,
    /// Whether a player may be sent to the other scheme when the server has
    /// no public URL in the player's own.
    pub cross_scheme: bool,
    /// Slots of each mount kept free until every server of the stream is at
    /// its soft limit (limit minus headroom).
    pub headroom: Headroom,
    /// Whether the poller opens this server's public URLs as a player would.
    pub canary: bool,
    /// Which status document the poller reads.
    pub status: StatusSource,
    /// Credentials for `/admin/stats`; always present when `status` is `Admin`.
    pub admin: Option<AdminCredentials>,
    /// Where the server stands; when absent, geo looks up the server's address.
    pub location: Option<Coordinates>,
    /// The server's country; when absent, geo looks up the server's address.
    pub country: Option<Code>,
    /// Operator weight in `1..=MAX_WEIGHT`; a bigger weight gets a bigger share.
    pub weight: u32,
    /// Optional cap on listeners across all mounts of this server.
    pub max_listeners: Option<u32>,
}

/// A server's public base URLs, at most one per scheme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicUrls {
    /// For players that arrived over http.
    pub http: Option<Url>,
    /// For players that arrived over https.
    pub https: Option<Url>,
}

impl PublicUrls {
    /// The URLs that are set, http first.
    pub fn iter(&self) -> impl Iterator<Item = &Url> {
        self.http.iter().chain(self.https.iter())
    }
}

/// Listener slots kept free in normal operation, so that the other servers
/// can take the listeners of one that fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Headroom {
    /// None: the default.
    #[default]
    None,
    /// This many slots of each mount.
    Slots(u32),
    /// This share of each mount's limit, in percent (1 to 99), rounded up.
    Percent(u32),
}

impl Headroom {
    /// The slots kept free on a mount whose limit is `limit` (`None`: unlimited).
    pub fn slots(self, limit: Option<u32>) -> u32 {
        match (self, limit) {
            (Headroom::None, _) | (Headroom::Percent(_), None) => 0,
            (Headroom::Slots(n), None) => n,
            (Headroom::Slots(n), Some(limit)) => n.min(limit),
            (Headroom::Percent(p), Some(limit)) => {
                u32::try_from((u64::from(limit) * u64::from(p)).div_ceil(100)).unwrap_or(limit)
            }
        }
    }
}

/// How the poller learns a server's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSource {
    /// `/admin/stats` with HTTP basic auth: listeners and limits per mount.
    Admin,
    /// `/status-json.xsl`: listeners but no limits, which come from this file.
    Json,
    /// django-icecast-balancer's `/load.xsl`: free slots per mount.
    LoadXsl,
}

impl StatusSource {
    /// The name used in the fleet file.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusSource::Admin => "admin",
            StatusSource::Json => "json",
            StatusSource::LoadXsl => "load-xsl",
        }
    }
}

/// HTTP basic auth credentials for an Icecast admin interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCredentials {
    /// The admin user name.
    pub user: String,
    /// The admin password; never printed.
    pub password: Secret,
}

/// A string that must never reach a log: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A stream players ask for by name (`[[stream]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Unique name, the first path segment of the player's URL.
    pub name: String,
    /// Where the stream is carried; never empty, no (server, mount) twice.
    pub mounts: Vec<MountRef>,
    /// Another stream to send players to when every mount is full.
    pub fallback: Option<String>,
    /// Where the stream may be played (radio licensing).
    pub countries: CountryRule,
    /// The name the public stream index shows; else what Icecast reports.
    pub title: Option<String>,
    /// The line the public stream index shows under it; else what Icecast reports.
    pub description: Option<String>,
}

/// Longest `title` or `description` of a stream, in characters.
pub const MAX_TEXT_CHARS: usize = 200;

/// The paths the redirector answers itself, which no stream may take.
pub const RESERVED_STREAM_NAMES: [&str; 2] = ["streams.json", "streams.css"];

/// A stream carried on a server under a mount name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRef {
    /// Name of a server of the fleet.
    pub server: String,
    /// The Icecast mount, starting with `/`.
    pub mount: String,
    /// Limit from the config, for status sources that do not report one.
    pub max_listeners: Option<ListenerLimit>,
}

/// A listener limit that is either a number or explicitly absent, never NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerLimit {
    /// At most this many listeners.
    Listeners(u32),
    /// No limit: the operator said so.
    Unlimited,
}

impl Fleet {
    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The stream named `name`.
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// One line for logs and `--check-config`: what the file holds.
    pub fn summary(&self) -> String {
        let mounts: usize = self.streams.iter().map(|s| s.mounts.len()).sum();
        format!(
            "{} servers, {} streams, {} mounts, poll every {} (timeout {})",
            self.servers.len(),
            self.streams.len(),
            mounts,
            short_duration(self.poller.interval),
            short_duration(self.poller.timeout),
        )
    }
}

/// `2s`, `1500ms`: the way durations are written in the fleet file.
fn short_duration(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Reads and validates the fleet file at `path`.
///
/// `env` looks up environment variables named by `admin_password_env`: a
/// binary passes `balancer_service::Process::env`, a test a closure over a map.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Fleet, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, env)
}

/// Validates fleet file content `text`; `file` is only used in error messages.
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Fleet, ConfigError> {
    validate::parse(error::Source { file, text }, env)
}

#[cfg(test)]
mod tests;
