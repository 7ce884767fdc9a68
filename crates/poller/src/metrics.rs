//! Prometheus metrics of the poller, served at `GET /metrics` on its admin address.

use std::collections::HashMap;
use std::time::Duration;

use balancer_proto::snapshot::v1::{MountState, ServerState, Snapshot};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::fetch::{PollError, PollResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    server: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountryLabels {
    stream: String,
    country: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    stream: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    stream: String,
    le: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryLabels {
    server: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MountLabels {
    server: String,
    mount: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

/// The poller's metrics; cheap to clone.
#[derive(Clone)]
pub struct PollerMetrics {
    poll_seconds: Family<ServerLabel, Histogram>,
    poll_errors: Family<ErrorLabels, Counter>,
    server_up: Family<ServerLabel, Gauge>,
    server_full: Family<ServerLabel, Gauge>,
    server_drained: Family<ServerLabel, Gauge>,
    server_listeners: Family<ServerLabel, Gauge>,
    server_canary_failing: Family<ServerLabel, Gauge>,
    canaries: Family<CanaryLabels, Counter>,
    audience_countries: Family<CountryLabels, Gauge>,
    audience_players: Family<FamilyLabels, Gauge>,
    audience_sessions: Family<SessionLabels, Gauge>,
    mount_live: Family<MountLabels, Gauge>,
    mount_stalled: Family<MountLabels, Gauge>,
    mount_listeners: Family<MountLabels, Gauge>,
    mount_limit: Family<MountLabels, Gauge>,
    mount_free: Family<MountLabels, Gauge>,
    stream_listeners: Family<StreamLabel, Gauge>,
    /// Snapshots published.
    pub published: Counter,
    /// Failed attempts to publish.
    pub publish_errors: Counter,
    /// 1 while this poller holds the lease.
    pub leader: Gauge,
}

impl PollerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = PollerMetrics {
            poll_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 13))
            }),
            poll_errors: Family::default(),
            server_up: Family::default(),
            server_full: Family::default(),
            server_drained: Family::default(),
            server_listeners: Family::default(),
            server_canary_failing: Family::default(),
            canaries: Family::default(),
            audience_countries: Family::default(),
            audience_players: Family::default(),
            audience_sessions: Family::default(),
            mount_live: Family::default(),
            mount_stalled: Family::default(),
            mount_listeners: Family::default(),
            mount_limit: Family::default(),
            mount_free: Family::default(),
            stream_listeners: Family::default(),
            published: Counter::default(),
            publish_errors: Counter::default(),
            leader: Gauge::default(),
        };
        let r = registry;
        r.register(
            "icb_poll_duration_seconds",
            "Time one status poll took, per server",
            metrics.poll_seconds.clone(),
        );
        r.register(
            "icb_poll_errors",
            "Failed polls by server and kind",
            metrics.poll_errors.clone(),
        );
        r.register(
            "icb_server_up",
            "1 if the server is up after rise/fall",
            metrics.server_up.clone(),
        );
        r.register(
            "icb_server_full",
            "1 if the server refuses with 403 (client limit)",
            metrics.server_full.clone(),
        );
        r.register(
            "icb_server_drained",
            "1 if an operator drained the server",
            metrics.server_drained.clone(),
        );
        r.register(
            "icb_server_listeners",
            "Listeners on the server",
            metrics.server_listeners.clone(),
        );
        r.register(
            "icb_server_canary_failing",
            "1 if canaries fail at the server's public URL (after fall), so it takes no players",
            metrics.server_canary_failing.clone(),
        );
        r.register(
            "icb_canaries",
            "Canaries sent to public URLs, by server and result (ok, failed)",
            metrics.canaries.clone(),
        );
        r.register(
            "icb_audience_listeners",
            "Listeners of a stream across all relays by country (ISO code, or unknown), from /admin/listclients",
            metrics.audience_countries.clone(),
        );
        r.register(
            "icb_audience_players",
            "Listeners of a stream across all relays by player family",
            metrics.audience_players.clone(),
        );
        r.register(
            "icb_audience_sessions",
            "Listeners of a stream connected for at most `le` seconds (cumulative)",
            metrics.audience_sessions.clone(),
        );
        r.register(
            "icb_mount_live",
            "1 if a source feeds the mount",
            metrics.mount_live.clone(),
        );
        r.register(
            "icb_mount_stalled",
            "1 if a source is connected but its byte count has stopped (stall_after)",
            metrics.mount_stalled.clone(),
        );
        r.register(
            "icb_mount_listeners",
            "Listeners on the mount",
            metrics.mount_listeners.clone(),
        );
        r.register(
            "icb_mount_limit",
            "Listener limit of the mount, -1 when unlimited",
            metrics.mount_limit.clone(),
        );
        r.register(
            "icb_mount_free_slots",
            "Free slots of the mount, -1 when unlimited",
            metrics.mount_free.clone(),
        );
        r.register(
            "icb_stream_listeners",
            "Listeners of a stream across all servers",
            metrics.stream_listeners.clone(),
        );
        r.register(
            "icb_snapshots_published",
            "Snapshots published",
            metrics.published.clone(),
        );
        r.register(
            "icb_publish_errors",
            "Failed attempts to publish a snapshot",
            metrics.publish_errors.clone(),
        );
        r.register(
            "icb_poller_leader",
            "1 while this poller holds the lease",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Records one poll of `server`.
    pub fn observe_poll(&self, server: &str, result: &PollResult, took: Duration) {
        let label = ServerLabel {
            server: server.to_owned(),
        };
        self.poll_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let PollResult::Failed(error) = result {
            let kind = match error {
                PollError::Connect(_) => "connect",
                PollError::Timeout(_) => "timeout",
                PollError::Unauthorized => "unauthorized",
                PollError::Status(_) => "http_status",
                PollError::TooLarge => "too_large",
                PollError::Parse(_) => "parse",
            };
            self.poll_errors
                .get_or_create(&ErrorLabels {
                    server: server.to_owned(),
                    kind: kind.to_owned(),
                })
                .inc();
        }
    }

    /// Replaces the audience figures with `audience` (per stream).
    pub fn observe_audience(
        &self,
        audience: &std::collections::BTreeMap<String, crate::audience::StreamAudience>,
    ) {
        self.audience_countries.clear();
        self.audience_players.clear();
        self.audience_sessions.clear();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (stream, seen) in audience {
            for (country, n) in &seen.countries {
                self.audience_countries
                    .get_or_create(&CountryLabels {
                        stream: stream.clone(),
                        country: country.clone(),
                    })
                    .set(count(*n));
            }
            for family in crate::audience::Family::ALL {
                let n = seen.families.get(&family).copied().unwrap_or(0);
                self.audience_players
                    .get_or_create(&FamilyLabels {
                        stream: stream.clone(),
                        family: family.as_str().to_owned(),
                    })
                    .set(count(n));
            }
            let bounds = crate::audience::SESSION_BUCKETS
                .iter()
                .map(ToString::to_string)
                .chain(["+Inf".to_owned()]);
            for (bound, n) in bounds.zip(seen.sessions) {
                self.audience_sessions
                    .get_or_create(&SessionLabels {
                        stream: stream.clone(),
                        le: bound,
                    })
                    .set(count(n));
            }
        }
    }

    /// Records one canary of `server`.
    pub fn observe_canary(&self, server: &str, ok: bool) {
        self.canaries
            .get_or_create(&CanaryLabels {
                server: server.to_owned(),
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// Sets the state gauges from the snapshot about to be published.
    pub fn observe_snapshot(&self, snapshot: &Snapshot) {
        let flag = |on: bool| i64::from(on);
        for server in &snapshot.servers {
            let label = ServerLabel {
                server: server.name.clone(),
            };
            self.server_up
                .get_or_create(&label)
                .set(flag(server.state() == ServerState::Up));
            self.server_full
                .get_or_create(&label)
                .set(flag(server.state() == ServerState::Full));
            self.server_drained
                .get_or_create(&label)
                .set(flag(server.drained));
            self.server_listeners
                .get_or_create(&label)
                .set(i64::from(server.listeners));
            self.server_canary_failing
                .get_or_create(&label)
                .set(flag(!server.canary_error.is_empty()));
        }
        let mut per_stream: HashMap<&str, i64> = HashMap::new();
        for stream in &snapshot.streams {
            for mount in &stream.mounts {
                let labels = MountLabels {
                    server: mount.server.clone(),
                    mount: mount.mount.clone(),
                    stream: stream.name.clone(),
                };
                self.mount_live
                    .get_or_create(&labels)
                    .set(flag(mount.state() == MountState::Live));
                self.mount_stalled
                    .get_or_create(&labels)
                    .set(flag(mount.state() == MountState::Stalled));
                self.mount_listeners
                    .get_or_create(&labels)
                    .set(i64::from(mount.listeners));
                self.mount_limit
                    .get_or_create(&labels)
                    .set(mount.max_listeners.map_or(-1, i64::from));
                let free = if mount.free_slots == u32::MAX {
                    -1
                } else {
                    i64::from(mount.free_slots)
                };
                self.mount_free.get_or_create(&labels).set(free);
                *per_stream.entry(&stream.name).or_default() += i64::from(mount.listeners);
            }
        }
        for (stream, listeners) in per_stream {
            self.stream_listeners
                .get_or_create(&StreamLabel {
                    stream: stream.to_owned(),
                })
                .set(listeners);
        }
    }
}
