//! What the poller believes about each server and mount, and the snapshot
//! built from it. Pure: no I/O, no clock (times are passed in).

use std::collections::{BTreeSet, HashMap};

use balancer_fleet::{CountryRule, Fleet, ListenerLimit, MountRef, Server, StatusSource};
use balancer_proto::snapshot::v1 as wire;
use wire::{MountState, ServerState};

use crate::fetch::PollResult;
use crate::status::{MountReport, ReportedLimit, StatusReport};

/// Free slots written for a mount with no limit anywhere but an explicit "unlimited".
pub const UNLIMITED_FREE: u32 = u32::MAX;

/// One server's health, with HAProxy-like hysteresis: `fall` failed polls in a
/// row take an up server down, `rise` good ones bring a down server back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerHealth {
    /// Health after hysteresis.
    pub state: ServerStateKind,
    good_in_a_row: u32,
    bad_in_a_row: u32,
    /// The last status document, and when it was read (ms since the epoch).
    pub last_report: Option<(StatusReport, i64)>,
    /// Why the last poll failed; empty after a good one.
    pub last_error: String,
    /// How long the last poll took, in ms.
    pub last_poll_ms: u32,
    /// Per mount: the source's `total_bytes_read` and the poll time it was
    /// first seen at that value; a source whose count stops is stalled.
    progress: HashMap<String, (u64, i64)>,
    /// What the canaries found at each public URL (http, https): one that
    /// works cannot vouch for the other.
    pub canary: [CanaryHealth; 2],
}

/// The canaries' verdict on a server's public URLs, with the same rise/fall
/// hysteresis as polls: `fall` failed canaries in a row take the server out,
/// `rise` good ones bring it back. A server starts out trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryHealth {
    /// The server is out because of its canaries.
    pub failing: bool,
    good_in_a_row: u32,
    bad_in_a_row: u32,
    /// Why the last canary failed; empty after a good one.
    pub last_error: String,
}

impl CanaryHealth {
    /// Takes one canary's result into account.
    pub fn record<E: std::fmt::Display>(&mut self, result: &Result<(), E>, rise: u32, fall: u32) {
        match result {
            Ok(()) => {
                self.good_in_a_row = self.good_in_a_row.saturating_add(1);
                self.bad_in_a_row = 0;
                self.last_error.clear();
                if self.good_in_a_row >= rise {
                    self.failing = false;
                }
            }
            Err(e) => {
                self.bad_in_a_row = self.bad_in_a_row.saturating_add(1);
                self.good_in_a_row = 0;
                self.last_error = e.to_string();
                if self.bad_in_a_row >= fall {
                    self.failing = true;
                }
            }
        }
    }
}

/// Server state as the poller tracks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerStateKind {
    /// Never polled yet.
    #[default]
    Unknown,
    /// Answering.
    Up,
    /// Answering 403: at its client limit.
    Full,
    /// Failed `fall` polls in a row (or the first ones).
    Down,
}

impl ServerHealth {
    /// Takes one poll result into account. `now_ms` is the poll's end time.
    pub fn record(&mut self, result: &PollResult, now_ms: i64, poll_ms: u32, rise: u32, fall: u32) {
        self.last_poll_ms = poll_ms;
        let alive = !matches!(result, PollResult::Failed(_));
        if alive {
            self.good_in_a_row = self.good_in_a_row.saturating_add(1);
            self.bad_in_a_row = 0;
            self.last_error.clear();
        } else {
            self.bad_in_a_row = self.bad_in_a_row.saturating_add(1);
            self.good_in_a_row = 0;
        }
        match result {
            PollResult::Report(report) => {
                self.note_progress(report, now_ms);
                self.last_report = Some((report.clone(), now_ms));
            }
            PollResult::Full => {}
            PollResult::Failed(e) => self.last_error = e.to_string(),
        }
        let answered = match result {
            PollResult::Report(_) => ServerStateKind::Up,
            _ => ServerStateKind::Full,
        };
        self.state = match (self.state, alive) {
            // A new server is believed at once: there is nothing older to keep.
            (ServerStateKind::Unknown, true) => answered,
            (ServerStateKind::Unknown, false) => ServerStateKind::Down,
            (ServerStateKind::Down, true) if self.good_in_a_row >= rise => answered,
            (ServerStateKind::Down, _) => ServerStateKind::Down,
            (ServerStateKind::Up | ServerStateKind::Full, true) => answered,
            (state @ (ServerStateKind::Up | ServerStateKind::Full), false) => {
                if self.bad_in_a_row >= fall {
                    ServerStateKind::Down
                } else {
                    state
                }
            }
        };
    }

    /// Remembers when each source's byte count last moved. A source that
    /// disconnects is forgotten; one that reconnects starts from its new count.
    fn note_progress(&mut self, report: &StatusReport, now_ms: i64) {
        self.progress
            .retain(|mount, _| report.mounts.iter().any(|m| &m.mount == mount));
        for mount in &report.mounts {
            let Some(bytes) = mount.bytes_read else {
                continue;
            };
            match self.progress.get_mut(&mount.mount) {
                Some((seen, _)) if *seen == bytes => {}
                Some(entry) => *entry = (bytes, now_ms),
                None => {
                    self.progress.insert(mount.mount.clone(), (bytes, now_ms));
                }
            }
        }
    }

    /// Whether the source of `mount` has sent nothing for longer than
    /// `stall_after` up to the last poll.
    pub fn stalled(&self, mount: &str, stall_after: std::time::Duration) -> bool {
        let (Some((_, polled_at)), Some((_, since))) =
            (&self.last_report, self.progress.get(mount))
        else {
            return false;
        };
        let limit = i64::try_from(stall_after.as_millis()).unwrap_or(i64::MAX);
        polled_at - since > limit
    }

    fn wire_state(&self) -> ServerState {
        match self.state {
            ServerStateKind::Unknown => ServerState::Unspecified,
            // Answering polls, but players cannot play at the public URL.
            ServerStateKind::Up | ServerStateKind::Full if self.canary_failure().is_some() => {
                ServerState::Down
            }
            ServerStateKind::Up => ServerState::Up,
            ServerStateKind::Full => ServerState::Full,
            ServerStateKind::Down => ServerState::Down,
        }
    }

    /// Why the server takes no players, in words: the poll's error, else a
    /// failing canary's.
    fn wire_error(&self) -> String {
        match self.canary_failure() {
            Some(error) if self.last_error.is_empty() => format!("canary failed: {error}"),
            _ => self.last_error.clone(),
        }
    }

    /// Why canaries keep failing at one of the public URLs, if they do.
    pub fn canary_failure(&self) -> Option<&str> {
        self.canary
            .iter()
            .find(|c| c.failing)
            .map(|c| c.last_error.as_str())
    }
}

/// Builds the snapshot of the whole fleet; `version` is assigned when it is published.
pub fn build_snapshot(
    fleet: &Fleet,
    health: &HashMap<String, ServerHealth>,
    drained: &BTreeSet<String>,
    now_ms: i64,
    publisher: &str,
) -> wire::Snapshot {
    let unknown = ServerHealth::default();
    let health_of = |name: &str| health.get(name).unwrap_or(&unknown);
    let servers = fleet
        .servers
        .iter()
        .map(|server| {
            wire_server(
                server,
                health_of(&server.name),
                drained.contains(&server.name),
            )
        })
        .collect();
    let streams = fleet
        .streams
        .iter()
        .map(|stream| wire::Stream {
            name: stream.name.clone(),
            mounts: stream
                .mounts
                .iter()
                .filter_map(|m| {
                    let server = fleet.server(&m.server)?;
                    Some(wire_mount(
                        m,
                        server,
                        health_of(&server.name),
                        fleet.poller.stall_after,
                    ))
                })
                .collect(),
            fallback: stream.fallback.clone().unwrap_or_default(),
            allow_countries: match &stream.countries {
                CountryRule::Only(codes) => codes.iter().map(ToString::to_string).collect(),
                _ => Vec::new(),
            },
            deny_countries: match &stream.countries {
                CountryRule::Except(codes) => codes.iter().map(ToString::to_string).collect(),
                _ => Vec::new(),
            },
            title: stream.title.clone().unwrap_or_default(),
            description: stream.description.clone().unwrap_or_default(),
        })
        .collect();
    wire::Snapshot {
        version: 0,
        published_at_ms: now_ms,
        poll_interval_ms: u32::try_from(fleet.poller.interval.as_millis()).unwrap_or(u32::MAX),
        publisher: publisher.to_owned(),
        servers,
        streams,
    }
}

fn wire_server(server: &Server, health: &ServerHealth, drained: bool) -> wire::Server {
    let (listeners, observed_at_ms) = match &health.last_report {
        Some((report, at)) => (server_listeners(report), *at),
        None => (0, 0),
    };
    wire::Server {
        name: server.name.clone(),
        public_url: server.public_url.as_str().trim_end_matches('/').to_owned(),
        state: health.wire_state().into(),
        drained,
        location: server.location.map(|c| wire::Location {
            lat: c.lat(),
            lon: c.lon(),
        }),
        weight: server.weight,
        observed_at_ms,
        listeners,
        max_listeners: server.max_listeners,
        last_error: health.wire_error(),
        country: server.country.map(|c| c.to_string()).unwrap_or_default(),
        public_url_http: base_url(server.public_urls.http.as_ref()),
        public_url_https: base_url(server.public_urls.https.as_ref()),
        cross_scheme: server.cross_scheme,
        canary_error: health.canary_failure().unwrap_or_default().to_owned(),
    }
}

/// A public base URL as the snapshot carries it: no trailing slash, empty when absent.
fn base_url(url: Option<&balancer_fleet::Url>) -> String {
    url.map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

fn server_listeners(report: &StatusReport) -> u32 {
    report
        .listeners
        .unwrap_or_else(|| report.mounts.iter().filter_map(|m| m.listeners).sum())
}

/// One mount as the snapshot shows it; the canary uses it to pick a live
/// mount with a free slot.
pub(crate) fn wire_mount(
    mount: &MountRef,
    server: &Server,
    health: &ServerHealth,
    stall_after: std::time::Duration,
) -> wire::Mount {
    let mut out = wire::Mount {
        server: server.name.clone(),
        mount: mount.mount.clone(),
        state: MountState::Unspecified.into(),
        listeners: 0,
        max_listeners: None,
        free_slots: 0,
        headroom: 0,
        info: None,
    };
    let Some((report, _)) = &health.last_report else {
        return out;
    };
    if health.state == ServerStateKind::Down || health.state == ServerStateKind::Unknown {
        return out;
    }
    let Some(reported) = report.mounts.iter().find(|m| m.mount == mount.mount) else {
        out.state = MountState::NoSource.into();
        return out;
    };
    out.state = if health.stalled(&mount.mount, stall_after) {
        MountState::Stalled
    } else {
        MountState::Live
    }
    .into();
    out.listeners = reported.listeners.unwrap_or(0);
    let info = &reported.info;
    out.info = Some(wire::MountInfo {
        name: info.name.clone().unwrap_or_default(),
        description: info.description.clone().unwrap_or_default(),
        genre: info.genre.clone().unwrap_or_default(),
        bitrate_kbps: info.bitrate_kbps.unwrap_or(0),
        title: info.title.clone().unwrap_or_default(),
        content_type: reported.content_type.clone().unwrap_or_default(),
    });
    let capacity = mount_capacity(
        reported,
        mount.max_listeners,
        server.max_listeners,
        server.status,
    );
    out.max_listeners = capacity.limit;
    let server_free = server.max_listeners.map_or(UNLIMITED_FREE, |cap| {
        cap.saturating_sub(server_listeners(report))
    });
    out.free_slots = if health.state == ServerStateKind::Full {
        0
    } else {
        capacity.free.min(server_free)
    };
    // Headroom is a share of the limit that binds: the server's when its
    // cap leaves fewer slots than the mount's own limit.
    let binding = if server_free < capacity.free {
        server.max_listeners
    } else {
        capacity.limit
    };
    out.headroom = server.headroom.slots(binding).min(out.free_slots);
    out
}

/// A mount's limit (`None`: unlimited) and its free slots before the server-wide cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The limit in force.
    pub limit: Option<u32>,
    /// Listeners it can still take.
    pub free: u32,
}

/// Works out a live mount's limit: Icecast's own, else the fleet config's for
/// the mount, else none (the server-wide cap bounds it later), and its free
/// slots. A mount whose limit cannot be known gets no free slots: never NaN.
pub fn mount_capacity(
    reported: &MountReport,
    configured: Option<ListenerLimit>,
    server_cap: Option<u32>,
    source: StatusSource,
) -> Capacity {
    let limit = match (reported.limit, configured) {
        (ReportedLimit::Count(n), _) => Some(Some(n)),
        (_, Some(ListenerLimit::Listeners(n))) => Some(Some(n)),
        (_, Some(ListenerLimit::Unlimited)) | (ReportedLimit::Unlimited, None) => Some(None),
        // Only the server-wide cap limits it (json servers must have one, says validation).
        (ReportedLimit::Unknown, None) if server_cap.is_some() => Some(None),
        (ReportedLimit::Unknown, None) => None,
    };
    let from_limit = |limit: Option<u32>| match (limit, reported.listeners) {
        (None, _) => Some(UNLIMITED_FREE),
        (Some(l), Some(n)) => Some(l.saturating_sub(n)),
        (Some(_), None) => None,
    };
    let free = match (source, reported.free_slots) {
        // load.xsl computed the free slots itself.
        (StatusSource::LoadXsl, Some(ReportedLimit::Count(n))) => Some(n),
        _ => limit.and_then(from_limit),
    };
    Capacity {
        limit: limit.flatten(),
        free: free.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
