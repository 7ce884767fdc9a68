//! `/load.xsl`: django-icecast-balancer's format, kept so its operators can keep
//! the file deployed in every Icecast web root.
//!
//! ```xml
//! <load>
//!   <mount name="/fm4-hq.ogg">32</mount>                                  <!-- the original -->
//!   <mount name="/lq.mp3" listeners="3" max_listeners="unlimited">unlimited</mount> <!-- ours -->
//! </load>
//! ```
//! The text is free slots. The original printed `NaN` for mounts without a
//! limit; that reads as unknown, so the fleet config must give the limit.

use super::xml;
use super::{MountReport, ParseError, ReportedLimit, StatusReport, parse_count, valid_mount};

/// Parses the body of `/load.xsl`.
pub fn parse_load_xsl(body: &str) -> Result<StatusReport, ParseError> {
    let root = xml::parse(body)?;
    if root.name != "load" {
        return Err(ParseError::Shape(format!(
            "root element is <{}>, not <load>",
            root.name
        )));
    }
    let mut report = StatusReport::default();
    for mount in root.children.iter().filter(|c| c.name == "mount") {
        let Some(name) = mount.attribute("name").filter(|m| valid_mount(m)) else {
            report.skipped.push(format!(
                "a <mount> without a valid name attribute ({:?})",
                mount.attribute("name")
            ));
            continue;
        };
        let listeners = match mount.attribute("listeners") {
            None => None,
            Some(text) => match parse_count(text) {
                Some(n) => Some(n),
                None => {
                    report
                        .skipped
                        .push(format!("{name}: listeners {text:?} is not a count"));
                    continue;
                }
            },
        };
        report.mounts.push(MountReport {
            mount: name.to_owned(),
            listeners,
            limit: mount
                .attribute("max_listeners")
                .map_or(ReportedLimit::Unknown, ReportedLimit::from_text),
            free_slots: Some(ReportedLimit::from_text(&mount.text)),
            bytes_read: None,
            content_type: None,
            info: super::MountInfo::default(),
        });
    }
    if report.mounts.iter().all(|m| m.listeners.is_some()) {
        report.listeners = Some(report.mounts.iter().filter_map(|m| m.listeners).sum());
    }
    Ok(report)
}
