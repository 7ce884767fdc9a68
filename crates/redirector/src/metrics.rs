//! Prometheus metrics of a redirector, served at `GET /metrics` on its admin
//! address. Counting a redirect is a few atomic additions; nothing is logged.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// Shared with the view's stream, so counting a request allocates nothing.
    stream: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabel {
    thread: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `icb_requests_total` of one stream, by the outcomes of a selection
/// ([`RedirectorMetrics::stream_outcomes`]).
#[derive(Debug, Clone)]
pub struct StreamOutcomes {
    /// Answered with a redirect.
    pub redirect: Counter,
    /// Answered with a playlist.
    pub playlist: Counter,
    /// Not licensed in the player's country.
    pub denied: Counter,
    /// No free slot.
    pub full: Counter,
}

/// A redirector's metrics; cheap to clone.
#[derive(Clone)]
pub struct RedirectorMetrics {
    requests: Family<OutcomeLabels, Counter>,
    /// The label of requests for no stream of the fleet.
    unknown_stream: Arc<str>,
    /// Time spent choosing a mount (GeoIP lookup, ranking, reservation), for
    /// a sample of requests (one in 16), to spare the clock.
    pub selection_seconds: Histogram,
    /// Age of the snapshot in use.
    pub snapshot_age_seconds: Gauge<f64, AtomicU64>,
    /// Version of the snapshot in use.
    pub snapshot_version: Gauge,
    reservations: Family<ResultLabel, Counter>,
    /// The two counters of `reservations`, taken once: counting is one atomic addition.
    granted: Counter,
    refused: Counter,
    /// Redis calls that failed or timed out on the request path.
    pub redis_errors: Counter,
    /// Requests that found their mount's pool empty and waited for a lease
    /// from Redis (or the in-process ledger): where Redis's latency reaches
    /// players. A pool's first requests wait; a steady crowd should not.
    pub reservation_waits: Counter,
    connections: Family<ThreadLabel, Counter>,
    connections_open: Family<ThreadLabel, Gauge>,
    connections_waiting: Family<ThreadLabel, Gauge>,
}

/// The connection metrics of one player thread, taken once per thread so
/// that counting is one atomic addition. What nginx's `stub_status` calls
/// accepts, active and waiting.
#[derive(Clone, Default)]
pub struct PlayerConnections {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections open past the call that accepted them (a connection
    /// answered and closed as it is accepted never counts).
    pub open: Gauge,
    /// Of those, the kept-alive ones idle between requests.
    pub waiting: Gauge,
}

impl RedirectorMetrics {
    /// The connection metrics of player thread `index`.
    pub fn player_connections(&self, index: usize) -> PlayerConnections {
        let label = ThreadLabel {
            thread: u32::try_from(index).unwrap_or(u32::MAX),
        };
        PlayerConnections {
            accepted: self.connections.get_or_create(&label).clone(),
            open: self.connections_open.get_or_create(&label).clone(),
            waiting: self.connections_waiting.get_or_create(&label).clone(),
        }
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let reservations = Family::<ResultLabel, Counter>::default();
        let granted = reservations
            .get_or_create(&ResultLabel { result: "granted" })
            .clone();
        let refused = reservations
            .get_or_create(&ResultLabel { result: "refused" })
            .clone();
        let metrics = RedirectorMetrics {
            requests: Family::default(),
            unknown_stream: Arc::from("-"),
            selection_seconds: Histogram::new(exponential_buckets(0.000_005, 2.0, 16)),
            snapshot_age_seconds: Gauge::default(),
            snapshot_version: Gauge::default(),
            reservations,
            granted,
            refused,
            redis_errors: Counter::default(),
            reservation_waits: Counter::default(),
            connections: Family::default(),
            connections_open: Family::default(),
            connections_waiting: Family::default(),
        };
        let r = registry;
        r.register(
            "icb_player_connections",
            "Player connections accepted, by player thread",
            metrics.connections.clone(),
        );
        r.register(
            "icb_player_connections_open",
            "Player connections open, by player thread (not counting those answered and closed as they are accepted)",
            metrics.connections_open.clone(),
        );
        r.register(
            "icb_player_connections_waiting",
            "Kept-alive player connections idle between requests, by player thread",
            metrics.connections_waiting.clone(),
        );
        r.register(
            "icb_requests",
            "Player requests by stream (\"-\" when unknown) and outcome",
            metrics.requests.clone(),
        );
        r.register(
            "icb_selection_seconds",
            "Time to choose a mount for a request (a sample: one selection in 16)",
            metrics.selection_seconds.clone(),
        );
        r.register(
            "icb_snapshot_age_seconds",
            "Age of the snapshot in use",
            metrics.snapshot_age_seconds.clone(),
        );
        r.register(
            "icb_snapshot_version",
            "Version of the snapshot in use",
            metrics.snapshot_version.clone(),
        );
        r.register(
            "icb_reservations",
            "Slots asked for, by result (granted, refused)",
            metrics.reservations.clone(),
        );
        r.register(
            "icb_reservation_waits",
            "Requests that waited for a lease from Redis (their mount's pool was empty)",
            metrics.reservation_waits.clone(),
        );
        r.register(
            "icb_redis_errors",
            "Redis calls that failed on the request path",
            metrics.redis_errors.clone(),
        );
        metrics
    }

    /// The request counters of `stream` of the fleet, one per outcome a
    /// selection has, taken once per view so that counting a redirect is one
    /// atomic addition (not a label hash and a lock per request).
    pub fn stream_outcomes(&self, stream: &Arc<str>) -> StreamOutcomes {
        let counter = |outcome| {
            self.requests
                .get_or_create(&OutcomeLabels {
                    stream: Arc::clone(stream),
                    outcome,
                })
                .clone()
        };
        StreamOutcomes {
            redirect: counter("redirect"),
            playlist: counter("playlist"),
            denied: counter("denied"),
            full: counter("full"),
        }
    }

    /// Counts one answered request that names no stream of the fleet (an
    /// unknown stream, another method, the index), as stream `-`: a label is
    /// never what a stranger typed. A stream's own outcomes are counted
    /// through [`RedirectorMetrics::stream_outcomes`].
    pub fn request_without_stream(&self, outcome: &'static str) {
        let stream = Arc::clone(&self.unknown_stream);
        self.requests
            .get_or_create(&OutcomeLabels { stream, outcome })
            .inc();
    }

    /// Counts one attempt to take a slot.
    pub fn reservation(&self, granted: bool) {
        if granted {
            self.granted.inc();
        } else {
            self.refused.inc();
        }
    }
}
