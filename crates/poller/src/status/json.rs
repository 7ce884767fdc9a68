//! `/status-json.xsl`: Icecast's public JSON status.
//!
//! Its shape changes with the number of sources (`"source"` is absent, an
//! object, or an array), it hides `max_listeners`, and Icecast 2.4's
//! xml2json.xslt prints any value that XPath reads as a number without quotes,
//! so a genre of `7.` or a stream name of `.5` makes the whole document invalid
//! JSON. [`repair`] quotes such bare tokens before parsing.

use serde_json::Value;

use super::{MountReport, ParseError, ReportedLimit, StatusReport, parse_count, valid_mount};

/// Parses the body of `/status-json.xsl`.
pub fn parse_status_json(body: &str) -> Result<StatusReport, ParseError> {
    let value: Value = match serde_json::from_str(body) {
        Ok(value) => value,
        Err(first) => {
            serde_json::from_str(&repair(body)).map_err(|_| ParseError::Json(first.to_string()))?
        }
    };
    let stats = value
        .get("icestats")
        .and_then(Value::as_object)
        .ok_or_else(|| ParseError::Shape("no \"icestats\" object".into()))?;
    let sources: Vec<&Value> = match stats.get("source") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(sources)) => sources.iter().collect(),
        Some(source) => vec![source],
    };
    let mut report = StatusReport::default();
    for source in sources {
        let Some(url) = source.get("listenurl").and_then(Value::as_str) else {
            report.skipped.push("a source without a listenurl".into());
            continue;
        };
        let Some(mount) = mount_of(url) else {
            report
                .skipped
                .push(format!("listenurl {url:?} has no valid mount path"));
            continue;
        };
        let listeners = match source.get("listeners") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(Value::String(s)) => parse_count(s),
            _ => None,
        };
        let Some(listeners) = listeners else {
            report
                .skipped
                .push(format!("{mount}: no usable listeners count"));
            continue;
        };
        report.mounts.push(MountReport {
            mount,
            listeners: Some(listeners),
            limit: ReportedLimit::Unknown,
            free_slots: None,
            bytes_read: None,
            content_type: source
                .get("server_type")
                .and_then(Value::as_str)
                .and_then(super::media_type),
            info: info(source),
        });
    }
    report.listeners = Some(report.mounts.iter().filter_map(|m| m.listeners).sum());
    Ok(report)
}

/// The mount path of a listen URL such as `http://host:8000/hq.ogg`.
fn mount_of(listen_url: &str) -> Option<String> {
    let after_scheme = listen_url
        .split_once("://")
        .map_or(listen_url, |(_, rest)| rest);
    let path = &after_scheme[after_scheme.find('/')?..];
    valid_mount(path).then(|| path.to_owned())
}

/// Puts quotes around bare tokens that are not JSON (`7.`, `.5`, `NaN`), and
/// escapes raw control characters inside strings; leaves valid JSON unchanged.
pub(super) fn repair(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        _ if escaped => {
                            escaped = false;
                            out.push(c);
                        }
                        '\\' => {
                            escaped = true;
                            out.push(c);
                        }
                        '"' => {
                            out.push('"');
                            break;
                        }
                        c if c.is_control() && (c as u32) < 0x20 => {
                            out.push_str(&format!("\\u{:04x}", c as u32));
                        }
                        c => out.push(c),
                    }
                }
            }
            c if is_structural(c) => out.push(c),
            c => {
                let mut token = String::from(c);
                while let Some(&next) = chars.peek() {
                    if is_structural(next) || next == '"' {
                        break;
                    }
                    token.push(next);
                    chars.next();
                }
                let trimmed = token.trim_end();
                if serde_json::from_str::<Value>(trimmed).is_ok() {
                    out.push_str(&token);
                } else {
                    out.push_str(&serde_json::Value::String(trimmed.to_owned()).to_string());
                    out.push_str(&token[trimmed.len()..]);
                }
            }
        }
    }
    out
}

fn is_structural(c: char) -> bool {
    matches!(c, '{' | '}' | '[' | ']' | ',' | ':') || c.is_whitespace()
}

/// What the source announces, as status-json prints it (numbers where
/// Icecast printed a number-like string: the document was repaired).
fn info(source: &Value) -> super::MountInfo {
    let text = |key: &str| match source.get(key) {
        Some(Value::String(s)) => super::info_text(s),
        Some(Value::Number(n)) => super::info_text(&n.to_string()),
        _ => None,
    };
    let number = |key: &str| match source.get(key) {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let title = match (text("artist"), text("title")) {
        (Some(artist), Some(title)) => super::info_text(&format!("{artist} - {title}")),
        (_, title) => title,
    };
    super::MountInfo {
        name: text("server_name"),
        description: text("server_description"),
        genre: text("genre"),
        bitrate_kbps: number("ice-bitrate").or_else(|| number("audio_bitrate").map(|b| b / 1000)),
        title,
    }
}
