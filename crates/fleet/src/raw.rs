//! The fleet file exactly as written: serde shapes with spans, before validation.

use balancer_geo::Coordinates;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    #[serde(default)]
    pub(crate) poller: RawPoller,
    #[serde(default)]
    pub(crate) server: Vec<RawServer>,
    #[serde(default)]
    pub(crate) stream: Vec<RawStream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoller {
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) rise: Option<Spanned<u32>>,
    pub(crate) fall: Option<Spanned<u32>>,
    pub(crate) stall_after: Option<Spanned<String>>,
    pub(crate) canary_interval: Option<Spanned<String>>,
    pub(crate) canary_timeout: Option<Spanned<String>>,
    pub(crate) audience_interval: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) name: Spanned<String>,
    pub(crate) url: Spanned<String>,
    pub(crate) public_url: Option<Spanned<RawUrls>>,
    pub(crate) cross_scheme: Option<bool>,
    pub(crate) headroom: Option<Spanned<RawLimit>>,
    pub(crate) canary: Option<bool>,
    pub(crate) status: Option<Spanned<RawStatus>>,
    pub(crate) admin_user: Option<String>,
    pub(crate) admin_password: Option<Spanned<String>>,
    pub(crate) admin_password_env: Option<Spanned<String>>,
    pub(crate) location: Option<Coordinates>,
    pub(crate) country: Option<Spanned<String>>,
    pub(crate) weight: Option<Spanned<u32>>,
    pub(crate) max_listeners: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawStatus {
    Admin,
    Json,
    LoadXsl,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStream {
    pub(crate) name: Spanned<String>,
    pub(crate) mounts: Spanned<Vec<RawMount>>,
    pub(crate) fallback: Option<Spanned<String>>,
    pub(crate) allow_countries: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) deny_countries: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) title: Option<Spanned<String>>,
    pub(crate) description: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMount {
    pub(crate) server: Spanned<String>,
    pub(crate) mount: Spanned<String>,
    pub(crate) max_listeners: Option<Spanned<RawLimit>>,
}

/// `public_url` as written: one URL, or one per scheme.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawUrls {
    One(String),
    Many(Vec<String>),
}

/// A listener limit (or headroom) as written: a number, or a word: `unlimited`, `10%`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawLimit {
    Number(i64),
    Word(String),
}
