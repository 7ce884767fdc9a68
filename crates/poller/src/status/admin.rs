//! `/admin/stats`: Icecast's authenticated XML statistics.
//!
//! ```xml
//! <icestats><listeners>2</listeners>...
//!   <source mount="/hq.ogg"><listeners>1</listeners><max_listeners>5</max_listeners>...</source>
//!   <source mount="/lq.mp3"><listeners>1</listeners><max_listeners>unlimited</max_listeners>...</source>
//! </icestats>
//! ```

use super::xml;
use super::{MountReport, ParseError, ReportedLimit, StatusReport, parse_count, valid_mount};

/// "Artist - Title" when Icecast reports them apart (Ogg comments), else the title.
fn song(artist: Option<&str>, title: Option<&str>) -> Option<String> {
    let title = title.and_then(super::info_text);
    match (artist.and_then(super::info_text), title) {
        (Some(artist), Some(title)) => super::info_text(&format!("{artist} - {title}")),
        (_, title) => title,
    }
}

/// Parses the body of `/admin/stats`.
pub fn parse_admin_stats(body: &str) -> Result<StatusReport, ParseError> {
    let root = xml::parse(body)?;
    if root.name != "icestats" {
        return Err(ParseError::Shape(format!(
            "root element is <{}>, not <icestats>",
            root.name
        )));
    }
    let mut report = StatusReport {
        listeners: root.child_text("listeners").and_then(parse_count),
        ..StatusReport::default()
    };
    for source in root.children.iter().filter(|c| c.name == "source") {
        let Some(mount) = source.attribute("mount").filter(|m| valid_mount(m)) else {
            report.skipped.push(format!(
                "a <source> without a valid mount attribute ({:?})",
                source.attribute("mount")
            ));
            continue;
        };
        let listeners = match source.child_text("listeners") {
            Some(text) => match parse_count(text) {
                Some(n) => n,
                None => {
                    report
                        .skipped
                        .push(format!("{mount}: listeners {text:?} is not a count"));
                    continue;
                }
            },
            None => {
                report.skipped.push(format!("{mount}: no <listeners>"));
                continue;
            }
        };
        let limit = source
            .child_text("max_listeners")
            .map_or(ReportedLimit::Unknown, ReportedLimit::from_text);
        report.mounts.push(MountReport {
            mount: mount.to_owned(),
            listeners: Some(listeners),
            limit,
            free_slots: None,
            bytes_read: source
                .child_text("total_bytes_read")
                .and_then(|t| t.trim().parse().ok()),
            content_type: source.child_text("server_type").and_then(super::media_type),
            info: super::MountInfo {
                name: source.child_text("server_name").and_then(super::info_text),
                description: source
                    .child_text("server_description")
                    .and_then(super::info_text),
                genre: source.child_text("genre").and_then(super::info_text),
                bitrate_kbps: source
                    .child_text("ice-bitrate")
                    .and_then(|t| t.trim().parse().ok())
                    .or_else(|| {
                        source
                            .child_text("audio_bitrate")
                            .and_then(|t| t.trim().parse::<u32>().ok())
                            .map(|bps| bps / 1000)
                    }),
                title: song(source.child_text("artist"), source.child_text("title")),
            },
        });
    }
    // Icecast's global <listeners> lags behind the per-mount counts (seen with
    // 2.4.4: 1 globally while two mounts had 1 each), so take the larger.
    let sum: u32 = report.mounts.iter().filter_map(|m| m.listeners).sum();
    report.listeners = Some(report.listeners.unwrap_or(0).max(sum));
    Ok(report)
}
