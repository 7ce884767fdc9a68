//! Icecast status documents, parsed into one shape whatever the source.
//!
//! Three sources per server, chosen in the fleet config: `/admin/stats` (XML,
//! authenticated, has limits), `/status-json.xsl` (JSON, public, no limits) and
//! django-icecast-balancer's `/load.xsl` (XML, free slots). Each parser is a
//! pure function from the body to a [`StatusReport`]. A problem with one mount
//! is recorded in [`StatusReport::skipped`] and the other mounts are kept; only
//! a document that cannot be read at all is an error.

mod admin;
mod json;
mod load_xsl;
mod xml;

pub use admin::parse_admin_stats;
pub use json::parse_status_json;
pub use load_xsl::parse_load_xsl;

use balancer_fleet::StatusSource;

/// The root of an XML document, with the same limits as status documents
/// (no DTD, bounded depth and size): for `/admin/listclients`.
pub(crate) fn xml_root(body: &str) -> Result<xml::Element, ParseError> {
    xml::parse(body)
}

/// The largest status body read from a server; anything longer is refused.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What one status document says about a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Mounts with a connected source (Icecast lists no others).
    pub mounts: Vec<MountReport>,
    /// Listeners across the server, when the document says.
    pub listeners: Option<u32>,
    /// Mounts left out, with the reason, e.g. `/x.ogg: listeners "abc" is not a number`.
    pub skipped: Vec<String>,
}

/// One live mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountReport {
    /// The mount path, starting with `/`.
    pub mount: String,
    /// Listeners connected, when the document says.
    pub listeners: Option<u32>,
    /// The mount's own limit, as far as the document says.
    pub limit: ReportedLimit,
    /// Free slots as load.xsl computed them; `None` for the other sources.
    pub free_slots: Option<ReportedLimit>,
    /// Bytes the source has sent since it connected (`total_bytes_read`, in
    /// `/admin/stats` only; Icecast updates it about every 5 s).
    pub bytes_read: Option<u64>,
    /// The stream's media type (`server_type`, e.g. `audio/mpeg`), when the
    /// document says: what a player must get back from the mount.
    pub content_type: Option<String>,
    /// What the source announces about the stream, for the public index.
    pub info: MountInfo,
}

/// What a source client announces about its stream (`ice-name`, `ice-genre`,
/// the song title...). It comes from whoever holds the source password, so
/// it is only ever shown escaped, and is cut to [`MAX_INFO_CHARS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountInfo {
    /// `server_name`.
    pub name: Option<String>,
    /// `server_description`.
    pub description: Option<String>,
    /// `genre`.
    pub genre: Option<String>,
    /// `ice-bitrate`, else `audio_bitrate` / 1000.
    pub bitrate_kbps: Option<u32>,
    /// `title` (with `artist` when Icecast reports one apart): the song now playing.
    pub title: Option<String>,
}

/// Longest text kept of what a source announces, in characters.
pub const MAX_INFO_CHARS: usize = 200;

/// One line of announced text: control characters dropped, trimmed, cut to
/// [`MAX_INFO_CHARS`]; Icecast's placeholders ("Unspecified name") are no text.
pub(crate) fn info_text(text: &str) -> Option<String> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_INFO_CHARS)
        .collect();
    let clean = clean.trim();
    let placeholder = matches!(clean, "Unspecified name" | "Unspecified description");
    (!clean.is_empty() && !placeholder).then(|| clean.to_owned())
}

/// A number Icecast may print as a number, as `unlimited`, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedLimit {
    /// A number.
    Count(u32),
    /// Icecast says there is no limit.
    Unlimited,
    /// The document does not say (status-json), or says nonsense (`NaN`).
    Unknown,
}

impl ReportedLimit {
    /// Reads Icecast's text for a limit: a number, `unlimited`, or anything else as unknown.
    fn from_text(text: &str) -> Self {
        let text = text.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return ReportedLimit::Unlimited;
        }
        match parse_count(text) {
            Some(n) => ReportedLimit::Count(n),
            None => ReportedLimit::Unknown,
        }
    }
}

/// Why a status document could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not well-formed XML, or XML we refuse (a DTD, an unknown entity).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// Not JSON, even after repairing Icecast's known mistakes.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Well-formed, but not the document we asked for.
    #[error("unexpected document: {0}")]
    Shape(String),
}

/// Parses a body fetched from `source`'s URL.
pub fn parse(source: StatusSource, body: &str) -> Result<StatusReport, ParseError> {
    match source {
        StatusSource::Admin => parse_admin_stats(body),
        StatusSource::Json => parse_status_json(body),
        StatusSource::LoadXsl => parse_load_xsl(body),
    }
}

/// The path of a status document for `source`, relative to the server's URL.
pub fn path(source: StatusSource) -> &'static str {
    match source {
        StatusSource::Admin => "/admin/stats",
        StatusSource::Json => "/status-json.xsl",
        StatusSource::LoadXsl => "/load.xsl",
    }
}

/// A non-negative count as Icecast prints it ("12", " 12 ", "12.0").
fn parse_count(text: &str) -> Option<u32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u32>() {
        return Some(n);
    }
    let f: f64 = text.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX)).then_some(f as u32)
}

/// A mount path as a status document gives it, checked like the fleet config does.
/// `audio/mpeg` from `audio/mpeg; charset=x` or ` Audio/MPEG `: the media type
/// alone, lower-case; `None` for anything that is not `type/subtype` in
/// plain ASCII (the text comes from a source client).
pub(crate) fn media_type(text: &str) -> Option<String> {
    let essence = text.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
    };
    (token(kind) && token(sub)).then_some(essence)
}

fn valid_mount(mount: &str) -> bool {
    mount.starts_with('/')
        && mount.len() > 1
        && mount.len() <= 256
        && !mount.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests;
