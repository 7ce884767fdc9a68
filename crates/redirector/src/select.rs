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
/// choose from, and the others with the reason each was left out. Requests
/// (whenever they cannot use the candidates prepared per snapshot) and
/// `Explain` both come from it.
pub struct Filtered<'v> {
    /// Mounts that may take the player, and what ranking needs of each.
    pub accepted: Vec<(&'v MountView, Candidate)>,
    /// Mounts left out, and why.
    pub excluded: Vec<(&'v MountView, Exclusion)>,
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
    pub fn filter<'v>(
        &self,
        view: &'v FleetView,
        stream: &'v StreamView,
        client: &Client,
        now_ms: i64,
        skip: &dyn Fn(&MountView) -> bool,
    ) -> Filtered<'v> {
        let licensed = stream.rule.permits(client.place.country);
        let mut filtered = Filtered {
            accepted: Vec::with_capacity(stream.mounts.len()),
            excluded: Vec::new(),
        };
        for mount in stream.mounts.iter().filter(|m| !skip(m)) {
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
                Some(why) => filtered.excluded.push((mount, why)),
                None => filtered.accepted.push((mount, candidate(view, mount))),
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
        let order: Vec<&MountView> = if fresh {
            // The usual case: no data is stale, the prepared candidates are exact.
            rank_top(client, &stream.candidates, &self.policy, rng, SPARES)
                .into_iter()
                .map(|i| &stream.mounts[i])
                .collect()
        } else {
            self.ranked(view, stream, client, now_ms, rng, SPARES, &|_| false)
        };
        if let Some(position) = self.first_taken(view, &order, reserve, now_ms).await {
            return Some(answer(format, &order[position..]));
        }
        if !reserve || stream.mounts.len() <= order.len() {
            return None;
        }
        // Every ranked mount was exhausted (a crowd above capacity): rank the
        // others that may still have slots, so that none is left unused.
        let tried = order;
        let skip = |mount: &MountView| {
            tried.iter().any(|t| std::ptr::eq(*t, mount))
                || mount
                    .slots
                    .exhausted(view.servers[mount.server].observed_at_ms, now_ms)
        };
        let order = self.ranked(view, stream, client, now_ms, rng, usize::MAX, &skip);
        let position = self.first_taken(view, &order, reserve, now_ms).await?;
        Some(answer(format, &order[position..]))
    }

    /// The first `k` mounts for `client`, from [`Selector::filter`].
    #[allow(clippy::too_many_arguments)]
    fn ranked<'v>(
        &self,
        view: &'v FleetView,
        stream: &'v StreamView,
        client: &Client,
        now_ms: i64,
        rng: &mut fastrand::Rng,
        k: usize,
        skip: &dyn Fn(&MountView) -> bool,
    ) -> Vec<&'v MountView> {
        let filtered = self.filter(view, stream, client, now_ms, skip);
        let candidates: Vec<Candidate> = filtered.accepted.iter().map(|(_, c)| *c).collect();
        rank_top(
            client,
            &candidates,
            &self.policy,
            rng,
            k.min(candidates.len()),
        )
        .into_iter()
        .map(|i| filtered.accepted[i].0)
        .collect()
    }

    /// The position of the first mount of `order` that gives a slot (the
    /// first one, when no slot is taken).
    async fn first_taken(
        &self,
        view: &FleetView,
        order: &[&MountView],
        reserve: bool,
        now_ms: i64,
    ) -> Option<usize> {
        if !reserve {
            return (!order.is_empty()).then_some(0);
        }
        for (position, mount) in order.iter().enumerate() {
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

/// A redirect to the first mount, or a playlist of them all, best first.
fn answer(format: Format, mounts: &[&MountView]) -> Decision {
    match format {
        Format::Redirect => Decision::Redirect(mounts[0].url.clone()),
        _ => Decision::Playlist(mounts.iter().take(SPARES).map(|m| m.url.clone()).collect()),
    }
}

/// What ranking needs to know about a mount and its server. Requests and
/// `Explain` both use it, so they rank alike.
pub fn candidate(view: &FleetView, mount: &MountView) -> Candidate {
    candidate_of(&view.servers[mount.server], mount)
}
