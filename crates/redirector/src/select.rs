//! Choosing the mount for one player: usable mounts only, ranked by geo,
//! a slot reserved, the fallback stream when nothing is free.

use std::net::IpAddr;
use std::sync::Arc;

use balancer_geo::{Candidate, Client, GeoDb, RankPolicy, rank_top};

use crate::reserve::{Observed, Reservations};
use crate::route::Format;
use crate::view::{FleetView, MountView, StreamView, candidate_of};

/// How many candidates a redirect ranks: the choice and spares in case a
/// reservation fails. A playlist lists this many too.
const SPARES: usize = 3;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 302 to this URL (public URL and mount).
    Redirect(String),
    /// A playlist of these URLs, best (and reserved) first.
    Playlist(Vec<String>),
    /// No such stream: 404.
    NotFound,
    /// Not licensed in the player's country: 451.
    Denied,
    /// No free slot anywhere, fallbacks included: 503.
    Full,
}

/// Why a mount cannot take a player now, for logs and `Explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Its server is down (or not yet polled).
    Down,
    /// Its server is drained.
    Drained,
    /// Its server's data is older than the staleness limit.
    Stale,
    /// No source is connected.
    NoSource,
    /// No free slot.
    Full,
}

/// The selection logic, shared by all connections.
pub struct Selector {
    /// GeoIP lookups.
    pub geo: Arc<GeoDb>,
    /// This replica's reservations.
    pub reservations: Arc<Reservations>,
    /// Ranking tuning.
    pub policy: RankPolicy,
    /// Servers whose data is older than this (ms) get no new players.
    pub max_age_ms: i64,
}

impl Selector {
    /// Whether a mount can take a player now, and if not, why.
    pub fn usable(&self, view: &FleetView, mount: &MountView, now_ms: i64) -> Result<(), Unusable> {
        let server = &view.servers[mount.server];
        let stale = now_ms - server.observed_at_ms > self.max_age_ms;
        // Reasons in order of weight: a down or drained server before stale data.
        match mount.ruled_out_in(server) {
            Some(reason @ (Unusable::Down | Unusable::Drained)) => Err(reason),
            _ if stale => Err(Unusable::Stale),
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Decides the answer for `client` asking for `stream` as `format`. With
    /// `reserve` false (a HEAD probe, not a player), no slot is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        view: &FleetView,
        stream: &str,
        client: IpAddr,
        format: Format,
        reserve: bool,
        rng: &mut fastrand::Rng,
        now_ms: i64,
    ) -> Decision {
        let Some(first) = view.streams.get(stream) else {
            return Decision::NotFound;
        };
        let place = self.geo.lookup(client);
        if !first.rule.permits(place.country) {
            return Decision::Denied;
        }
        let client = Client {
            place,
            ipv6: client.is_ipv6(),
        };
        let mut name = stream;
        // Follow fallbacks at most once per stream: the config forbids cycles,
        // this guards against a bad snapshot.
        for _ in 0..view.streams.len() {
            let Some(current) = view.streams.get(name) else {
                break;
            };
            if current.rule.permits(place.country)
                && let Some(decision) = self
                    .choose(view, current, &client, format, reserve, rng, now_ms)
                    .await
            {
                return decision;
            }
            match &current.fallback {
                Some(next) => name = next,
                None => break,
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let reasons: Vec<String> = first
                .mounts
                .iter()
                .map(|m| {
                    format!(
                        "{}{}: {:?}",
                        view.servers[m.server].name,
                        m.mount,
                        self.usable(view, m, now_ms)
                    )
                })
                .collect();
            tracing::debug!(stream, ?reasons, "no free slot");
        }
        Decision::Full
    }

    #[allow(clippy::too_many_arguments)]
    async fn choose(
        &self,
        view: &FleetView,
        stream: &StreamView,
        client: &Client,
        format: Format,
        reserve: bool,
        rng: &mut fastrand::Rng,
        now_ms: i64,
    ) -> Option<Decision> {
        let mounts = &stream.mounts;
        let (order, which) = if now_ms - stream.oldest_observation_ms <= self.max_age_ms {
            // The usual case: no data is stale, the prepared candidates are exact.
            let order = rank_top(client, &stream.candidates, &self.policy, rng, SPARES);
            (order, None)
        } else {
            let mut candidates = Vec::with_capacity(mounts.len());
            let mut which = Vec::with_capacity(mounts.len());
            for (i, mount) in mounts.iter().enumerate() {
                if self.usable(view, mount, now_ms).is_ok() {
                    candidates.push(candidate(view, mount));
                    which.push(i);
                }
            }
            let order = rank_top(client, &candidates, &self.policy, rng, SPARES);
            (order, Some(which))
        };
        let mount_of = |candidate: usize| match &which {
            Some(which) => &mounts[which[candidate]],
            None => &mounts[candidate],
        };
        for (position, &candidate) in order.iter().enumerate() {
            let mount = mount_of(candidate);
            let server = &view.servers[mount.server];
            let observed = Observed {
                server: &server.name,
                mount: &mount.mount,
                observed_at_ms: server.observed_at_ms,
                free_slots: mount.free_slots,
            };
            if !reserve || self.reservations.take(&mount.slots, observed, now_ms).await {
                return Some(match format {
                    Format::Redirect => Decision::Redirect(mount.url.clone()),
                    _ => {
                        let rest = order[position + 1..]
                            .iter()
                            .map(|&c| mount_of(c).url.clone());
                        Decision::Playlist(std::iter::once(mount.url.clone()).chain(rest).collect())
                    }
                });
            }
        }
        None
    }
}

/// What ranking needs to know about a mount and its server. Requests and
/// `Explain` both use it, so they rank alike.
pub fn candidate(view: &FleetView, mount: &MountView) -> Candidate {
    candidate_of(&view.servers[mount.server], mount)
}
