//! Choosing the mount for one player: usable mounts only, ranked by geo,
//! a slot reserved, the fallback stream when nothing is free.

use std::net::IpAddr;
use std::sync::Arc;

use balancer_geo::{Candidate, Client, GeoDb, RankPolicy, rank_top};

use crate::reserve::Reservations;
use crate::route::Format;
use crate::view::{FleetView, MountView, StreamView, Unusable, candidate_of};

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

/// Why a mount was left out for one player: the snapshot's and the data's
/// reasons ([`Unusable`]), or the player's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// The mount cannot take a player now.
    Unusable(Unusable),
    /// The stream is not licensed in the player's country.
    DeniedCountry,
    /// The server is not reachable over the player's IP version.
    AddressFamily,
}

/// One pass over a stream's mounts for one player: the candidates ranking may
/// choose from, and the others with the reason each was left out, by index
/// into the stream's mounts. Requests (whenever they cannot use the
/// candidates prepared per snapshot) and `Explain` both come from it.
pub struct Filtered {
    /// Mounts that may take the player, and what ranking needs of each.
    pub accepted: Vec<(usize, Candidate)>,
    /// Mounts left out, and why.
    pub excluded: Vec<(usize, Exclusion)>,
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
        mount.usable(&view.servers[mount.server], now_ms, self.max_age_ms)
    }

    /// Sorts the mounts of `stream` for `client` into candidates and exclusions.
    /// `skip` leaves out mounts already tried.
    pub fn filter(
        &self,
        view: &FleetView,
        stream: &StreamView,
        client: &Client,
        now_ms: i64,
        skip: &dyn Fn(usize) -> bool,
    ) -> Filtered {
        let licensed = stream.rule.permits(client.place.country);
        let mut filtered = Filtered {
            accepted: Vec::with_capacity(stream.mounts.len()),
            excluded: Vec::new(),
        };
        for (index, mount) in stream.mounts.iter().enumerate() {
            if skip(index) {
                continue;
            }
            let server = &view.servers[mount.server];
            let reachable = if client.ipv6 {
                server.ipv6
            } else {
                server.ipv4
            };
            let why = if !licensed {
                Some(Exclusion::DeniedCountry)
            } else if !reachable {
                Some(Exclusion::AddressFamily)
            } else {
                self.usable(view, mount, now_ms)
                    .err()
                    .map(Exclusion::Unusable)
            };
            match why {
                Some(why) => filtered.excluded.push((index, why)),
                None => filtered.accepted.push((index, candidate(view, mount))),
            }
        }
        filtered
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
        let fresh = now_ms - stream.oldest_observation_ms <= self.max_age_ms;
        // Indices into the stream's mounts, best first.
        let order = if fresh {
            // The usual case: no data is stale, the prepared candidates are exact.
            rank_top(client, &stream.candidates, &self.policy, rng, SPARES)
        } else {
            self.ranked(view, stream, client, now_ms, rng, SPARES, &|_| false)
        };
        if let Some(position) = self
            .first_taken(view, stream, &order, reserve, now_ms)
            .await
        {
            return Some(answer(format, stream, &order[position..]));
        }
        if !reserve || stream.mounts.len() <= order.len() {
            return None;
        }
        // Every ranked mount was exhausted (a crowd above capacity): rank the
        // others that may still have slots, so that none is left unused.
        let tried = order;
        let skip = |index: usize| {
            let mount = &stream.mounts[index];
            tried.contains(&index)
                || mount
                    .slots
                    .exhausted(view.servers[mount.server].observed_at_ms, now_ms)
        };
        let order = self.ranked(view, stream, client, now_ms, rng, usize::MAX, &skip);
        let position = self
            .first_taken(view, stream, &order, reserve, now_ms)
            .await?;
        Some(answer(format, stream, &order[position..]))
    }

    /// The first `k` mounts for `client` (indices into the stream's mounts),
    /// from [`Selector::filter`].
    #[allow(clippy::too_many_arguments)]
    fn ranked(
        &self,
        view: &FleetView,
        stream: &StreamView,
        client: &Client,
        now_ms: i64,
        rng: &mut fastrand::Rng,
        k: usize,
        skip: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let filtered = self.filter(view, stream, client, now_ms, skip);
        let candidates: Vec<Candidate> = filtered.accepted.iter().map(|(_, c)| *c).collect();
        let mut order = rank_top(
            client,
            &candidates,
            &self.policy,
            rng,
            k.min(candidates.len()),
        );
        for position in &mut order {
            *position = filtered.accepted[*position].0;
        }
        order
    }

    /// The position in `order` of the first mount that gives a slot (the
    /// first one, when no slot is taken).
    async fn first_taken(
        &self,
        view: &FleetView,
        stream: &StreamView,
        order: &[usize],
        reserve: bool,
        now_ms: i64,
    ) -> Option<usize> {
        if !reserve {
            return (!order.is_empty()).then_some(0);
        }
        for (position, &index) in order.iter().enumerate() {
            let mount = &stream.mounts[index];
            let observed = mount.observed(&view.servers[mount.server]);
            if self
                .reservations
                .take(&mount.slots, &observed, now_ms)
                .await
            {
                return Some(position);
            }
        }
        None
    }
}

/// A redirect to the first mount of `order`, or a playlist of the first few, best first.
fn answer(format: Format, stream: &StreamView, order: &[usize]) -> Decision {
    let url = |&index: &usize| stream.mounts[index].url.clone();
    match format {
        Format::Redirect => Decision::Redirect(url(&order[0])),
        _ => Decision::Playlist(order.iter().take(SPARES).map(url).collect()),
    }
}

/// What ranking needs to know about a mount and its server. Requests and
/// `Explain` both use it, so they rank alike.
pub fn candidate(view: &FleetView, mount: &MountView) -> Candidate {
    candidate_of(&view.servers[mount.server], mount)
}
