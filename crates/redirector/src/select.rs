//! Choosing the mount for one player: usable mounts only, ranked by geo,
//! a slot reserved, the fallback stream when nothing is free.

use std::net::IpAddr;
use std::sync::Arc;

use balancer_geo::{Candidate, Client, GeoDb, RankPolicy, rank_top};

use crate::client_ip::Scheme;
use crate::reserve::Reservations;
use crate::route::Format;
use crate::view::{FleetView, MountView, StreamView, Tier, Unusable, candidate_of};

/// How many candidates a redirect ranks: the choice and spares in case a
/// reservation fails. A playlist lists this many too.
const SPARES: usize = 3;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 302 to this URL (public URL and mount), shared with the view.
    Redirect(Arc<str>),
    /// A playlist of these URLs, best (and reserved) first.
    Playlist(Vec<Arc<str>>),
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
    /// The server has no public URL in the player's scheme and may not cross.
    Scheme,
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
    /// Whether a mount can take a player of `tier` now, and if not, why.
    pub fn usable(
        &self,
        view: &FleetView,
        mount: &MountView,
        now_ms: i64,
        tier: Tier,
    ) -> Result<(), Unusable> {
        mount.usable(&view.servers[mount.server], now_ms, self.max_age_ms, tier)
    }

    /// Sorts the mounts of `stream` for `client` (who arrived over `scheme`)
    /// into candidates and exclusions for `tier`. `skip` leaves out mounts
    /// already tried.
    #[allow(clippy::too_many_arguments)]
    pub fn filter(
        &self,
        view: &FleetView,
        stream: &StreamView,
        client: &Client,
        scheme: Scheme,
        tier: Tier,
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
            } else if mount.url(scheme, server).is_none() {
                Some(Exclusion::Scheme)
            } else {
                self.usable(view, mount, now_ms, tier)
                    .err()
                    .map(Exclusion::Unusable)
            };
            match why {
                Some(why) => filtered.excluded.push((index, why)),
                None => filtered
                    .accepted
                    .push((index, candidate_of(server, mount, tier))),
            }
        }
        filtered
    }

    /// Decides the answer for `client`, who arrived over `scheme`, asking
    /// for `first` (a stream of `view`) as `format`. With `reserve` false (a
    /// HEAD probe, not a player), no slot is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        view: &FleetView,
        first: &StreamView,
        client: IpAddr,
        scheme: Scheme,
        format: Format,
        reserve: bool,
        rng: &mut fastrand::Rng,
        now_ms: i64,
    ) -> Decision {
        let (client, place_key) = crate::rankings::locate(&self.geo, client);
        let place = client.place;
        if !first.rule.permits(place.country) {
            return Decision::Denied;
        }
        let player = Player {
            client,
            place_key,
            scheme,
        };
        let mut current = first;
        // Follow fallbacks at most once per stream: the config forbids cycles,
        // this guards against a bad snapshot.
        for _ in 0..view.streams.len() {
            if current.rule.permits(place.country)
                && let Some(decision) = self
                    .choose(view, current, &player, format, reserve, rng, now_ms)
                    .await
            {
                return decision;
            }
            match current
                .fallback
                .as_deref()
                .and_then(|next| view.streams.get(next))
            {
                Some(next) => current = next,
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
                        self.usable(view, m, now_ms, Tier::Headroom)
                    )
                })
                .collect();
            tracing::debug!(stream = %first.name, ?reasons, "no free slot");
        }
        Decision::Full
    }

    /// A mount for the player in `stream`: above the headroom first, then,
    /// when no mount of the stream has a slot there, in the headroom.
    #[allow(clippy::too_many_arguments)]
    async fn choose(
        &self,
        view: &FleetView,
        stream: &StreamView,
        player: &Player,
        format: Format,
        reserve: bool,
        rng: &mut fastrand::Rng,
        now_ms: i64,
    ) -> Option<Decision> {
        let fresh = now_ms - stream.oldest_observation_ms <= self.max_age_ms;
        let (client, scheme) = (&player.client, player.scheme);
        // Indices into the stream's mounts, best first.
        let mut order: balancer_geo::Order = if fresh {
            // The usual case: no data is stale, the prepared candidates are
            // exact, and so is a ranking of them kept from an earlier player.
            // A redirect needs one mount, and the first drawn nearly always
            // has a slot: its spares are drawn only when it has none.
            let draws = if format == Format::Redirect {
                1
            } else {
                SPARES
            };
            crate::rankings::top(
                view,
                stream,
                scheme,
                client,
                player.place_key,
                &self.policy,
                rng,
                SPARES,
                draws,
            )
        } else {
            let all = &|_| false;
            self.ranked(view, stream, player, Tier::Soft, now_ms, rng, SPARES, all)
                .into()
        };
        let mut taken = self
            .first_taken(view, stream, &order, reserve, Tier::Soft, now_ms)
            .await;
        if taken.is_none() && reserve && order.len() < SPARES && fresh {
            // The first choice had no slot: the spares. Drawn anew, without
            // the mounts tried, they are drawn as they would have been with
            // it: what is left of a draw in proportion to capacity is such a
            // draw of the rest (Luce's choice axiom).
            let tried = order.len();
            let again = crate::rankings::top(
                view,
                stream,
                scheme,
                client,
                player.place_key,
                &self.policy,
                rng,
                SPARES,
                SPARES,
            );
            for index in again {
                if !order[..tried].contains(&index) {
                    order.push(index);
                }
            }
            taken = self
                .first_taken(view, stream, &order[tried..], reserve, Tier::Soft, now_ms)
                .await
                .map(|position| tried + position);
        }
        if let Some(position) = taken {
            return Some(answer(format, view, stream, scheme, &order[position..]));
        }
        if !reserve {
            return None;
        }
        if stream.mounts.len() > order.len() {
            // Every ranked mount was exhausted (a crowd above capacity): rank
            // the others that may still have slots, so that none is left unused.
            if let Some(decision) = self
                .choose_unexhausted(
                    view,
                    stream,
                    player,
                    format,
                    Tier::Soft,
                    &order,
                    rng,
                    now_ms,
                )
                .await
            {
                return Some(decision);
            }
        }
        if self.tier_for(view, stream, &player.client, player.scheme, now_ms) == Tier::Headroom {
            return self
                .choose_unexhausted(
                    view,
                    stream,
                    player,
                    format,
                    Tier::Headroom,
                    &[],
                    rng,
                    now_ms,
                )
                .await;
        }
        None
    }

    /// The slots a player may take now: above the headroom, unless the
    /// stream keeps headroom and no mount the player could use has a slot
    /// above it left (each is at its soft limit, or the ledger said its soft
    /// slots for this poll are gone); a slow refill is no reason. Requests
    /// and `Explain` both use it.
    pub fn tier_for(
        &self,
        view: &FleetView,
        stream: &StreamView,
        client: &Client,
        scheme: Scheme,
        now_ms: i64,
    ) -> Tier {
        if !stream.has_headroom {
            return Tier::Soft;
        }
        let spent = |index: usize| {
            let mount = &stream.mounts[index];
            mount
                .slots
                .exhausted(view.servers[mount.server].observed_at_ms, now_ms)
        };
        let soft = self.filter(view, stream, client, scheme, Tier::Soft, now_ms, &spent);
        if soft.accepted.is_empty() {
            Tier::Headroom
        } else {
            Tier::Soft
        }
    }

    /// Ranks the mounts not in `tried` whose `tier` pool is not known to be
    /// exhausted, and takes a slot from the first that gives one.
    #[allow(clippy::too_many_arguments)]
    async fn choose_unexhausted(
        &self,
        view: &FleetView,
        stream: &StreamView,
        player: &Player,
        format: Format,
        tier: Tier,
        tried: &[usize],
        rng: &mut fastrand::Rng,
        now_ms: i64,
    ) -> Option<Decision> {
        let skip = |index: usize| {
            let mount = &stream.mounts[index];
            tried.contains(&index)
                || mount
                    .pool(tier)
                    .exhausted(view.servers[mount.server].observed_at_ms, now_ms)
        };
        let order = self.ranked(view, stream, player, tier, now_ms, rng, usize::MAX, &skip);
        let position = self
            .first_taken(view, stream, &order, true, tier, now_ms)
            .await?;
        Some(answer(
            format,
            view,
            stream,
            player.scheme,
            &order[position..],
        ))
    }

    /// The first `k` mounts for `player` in `tier` (indices into the
    /// stream's mounts), from [`Selector::filter`].
    #[allow(clippy::too_many_arguments)]
    fn ranked(
        &self,
        view: &FleetView,
        stream: &StreamView,
        player: &Player,
        tier: Tier,
        now_ms: i64,
        rng: &mut fastrand::Rng,
        k: usize,
        skip: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let filtered = self.filter(
            view,
            stream,
            &player.client,
            player.scheme,
            tier,
            now_ms,
            skip,
        );
        let candidates: Vec<Candidate> = filtered.accepted.iter().map(|(_, c)| *c).collect();
        let mut order = rank_top(
            &player.client,
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

    /// The position in `order` of the first mount that gives a slot of
    /// `tier` (the first one, when no slot is taken).
    async fn first_taken(
        &self,
        view: &FleetView,
        stream: &StreamView,
        order: &[usize],
        reserve: bool,
        tier: Tier,
        now_ms: i64,
    ) -> Option<usize> {
        if !reserve {
            return (!order.is_empty()).then_some(0);
        }
        for (position, &index) in order.iter().enumerate() {
            let mount = &stream.mounts[index];
            // Slots leased for the soft tier before the mount reached its
            // soft limit are used first, rather than left to expire.
            if tier == Tier::Headroom && mount.slots.take_held(now_ms) {
                return Some(position);
            }
            let observed = mount.observed(&view.servers[mount.server], tier);
            if self
                .reservations
                .take(mount.pool(tier), &observed, now_ms)
                .await
            {
                return Some(position);
            }
        }
        None
    }
}

/// A player as selection sees it: where it is, and the scheme it arrived over.
struct Player {
    client: Client,
    /// Where the client's place and rankings are kept ([`crate::rankings`]).
    place_key: Option<crate::rankings::PlaceKey>,
    scheme: Scheme,
}

/// A redirect to the first mount of `order`, or a playlist of the first few,
/// best first, each at its URL for `scheme`.
fn answer(
    format: Format,
    view: &FleetView,
    stream: &StreamView,
    scheme: Scheme,
    order: &[usize],
) -> Decision {
    let url = |&index: &usize| {
        let mount = &stream.mounts[index];
        // Every ranked mount has a URL for the scheme: filtering saw to it.
        mount
            .url(scheme, &view.servers[mount.server])
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    };
    match format {
        Format::Redirect => Decision::Redirect(url(&order[0])),
        _ => Decision::Playlist(order.iter().take(SPARES).map(url).collect()),
    }
}
