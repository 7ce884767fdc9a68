//! Ordering candidate servers for one player. Pure: the random source is passed in.
//!
//! 1. Only candidates with free slots, reachable over the player's address
//!    family, are ranked.
//! 2. Each gets a tier: same network (ASN) 0, same country 1, same continent 2,
//!    elsewhere 3; and a great-circle distance when both places are known.
//! 3. The best group is the best tier's candidates within a distance band
//!    around its closest one (like mirrorbits' 1.5x range). While the group
//!    has less than `nearly_full` (10%) of its listener limit free, the
//!    next-best candidates join it, so a nearly full server does not take its
//!    whole region; a small server with room keeps its region.
//! 4. The group's first places are drawn at random, each in proportion to
//!    free slots times weight, so a crowd spreads; the rest follow by tier and
//!    distance. [`rank_top`] computes only the first few places, which is all a
//!    redirect needs.
//!
//! A player with no location, country or ASN lands in one group with everyone:
//! capacity and weight alone decide.

use crate::coordinates::{chord_to_km, km_to_chord};
use crate::{Coordinates, Place};

/// Free slots counted for weighting are capped, so an unlimited mount does not
/// starve everything else of players.
const CAPACITY_CAP: u32 = 10_000;

/// The player.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client {
    /// Where geo places it.
    pub place: Place,
    /// Whether it connected over IPv6 (and so may have no IPv4).
    pub ipv6: bool,
}

/// One server (mount) the player could be sent to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Candidate {
    /// Where the server is.
    pub place: Place,
    /// Listeners it can still take (after reservations).
    pub free_slots: u32,
    /// Its listener limit; `None` when unlimited (never nearly full).
    pub limit: Option<u32>,
    /// Operator weight, 1..=1000.
    pub weight: u32,
    /// Reachable over IPv4.
    pub ipv4: bool,
    /// Reachable over IPv6.
    pub ipv6: bool,
}

/// Tuning of the ranking.
#[derive(Debug, Clone, Copy)]
pub struct RankPolicy {
    /// Candidates up to this multiple of the closest one's distance are near-equals.
    pub distance_band: f64,
    /// ... plus this many kilometres, so servers in one city count as equals.
    pub band_slack_km: f64,
    /// A best group with less than this share of its listener limit free takes
    /// in the next-best candidates.
    pub nearly_full: f64,
}

impl Default for RankPolicy {
    fn default() -> Self {
        RankPolicy {
            distance_band: 1.5,
            band_slack_km: 50.0,
            nearly_full: 0.1,
        }
    }
}

struct Scored {
    index: usize,
    tier: u8,
    /// Squared unit chord to the player (orders like distance); infinite when unknown.
    chord: f64,
    capacity: f64,
}

/// The indices of `candidates` in the order to try, best first. Candidates
/// without free slots or unreachable over the player's address family are left out.
pub fn rank(
    client: &Client,
    candidates: &[Candidate],
    policy: &RankPolicy,
    rng: &mut fastrand::Rng,
) -> Vec<usize> {
    rank_top(client, candidates, policy, rng, candidates.len())
}

/// The first `k` of [`rank`]'s order, for far less work when `k` is small: a
/// redirect needs one choice and a few spares, a playlist a handful.
pub fn rank_top(
    client: &Client,
    candidates: &[Candidate],
    policy: &RankPolicy,
    rng: &mut fastrand::Rng,
    k: usize,
) -> Vec<usize> {
    // Sized once: a filtered collect would grow (and copy) the vector several times.
    let mut scored: Vec<Scored> = Vec::with_capacity(candidates.len());
    scored.extend(
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.free_slots > 0 && c.weight > 0 && reachable(client, c))
            .map(|(index, c)| Scored {
                index,
                tier: tier(&client.place, &c.place),
                chord: chord(client.place.location, c.place.location),
                capacity: f64::from(c.free_slots.min(CAPACITY_CAP)) * f64::from(c.weight),
            }),
    );
    let Some(best) = scored.iter().min_by(|a, b| by_tier_and_chord(a, b)) else {
        return Vec::new();
    };
    let (best_tier, best_chord) = (best.tier, best.chord);
    // The band in kilometres, converted once to a chord to compare with.
    let limit = if best_chord.is_infinite() {
        f64::INFINITY
    } else {
        km_to_chord(chord_to_km(best_chord) * policy.distance_band + policy.band_slack_km)
    };
    // Move the best group to the front.
    let mut group = 0;
    for i in 0..scored.len() {
        if scored[i].tier == best_tier && (limit.is_infinite() || scored[i].chord <= limit) {
            scored.swap(group, i);
            group += 1;
        }
    }
    // Free slots and limits of the group; an unlimited member is never nearly full.
    let mut room = Room::default();
    for s in &scored[..group] {
        room.add(&candidates[s.index]);
    }
    let mut rest_sorted = false;
    if room.nearly_full(policy) && group < scored.len() {
        // Little room nearby: the next-best candidates join the group.
        scored[group..].sort_by(by_tier_and_chord);
        rest_sorted = true;
        while room.nearly_full(policy) && group < scored.len() {
            room.add(&candidates[scored[group].index]);
            group += 1;
        }
    }
    // Draw the group's first places at random, each in proportion to capacity.
    let draws = k.min(group);
    let mut remaining: f64 = scored[..group].iter().map(|s| s.capacity).sum();
    for place in 0..draws {
        let mut target = rng.f64() * remaining;
        let mut pick = group - 1;
        for (i, s) in scored[place..group].iter().enumerate() {
            target -= s.capacity;
            if target < 0.0 {
                pick = place + i;
                break;
            }
        }
        remaining -= scored[pick].capacity;
        scored.swap(place, pick);
    }
    let mut order: Vec<usize> = scored[..draws].iter().map(|s| s.index).collect();
    if k > draws {
        // The rest of the group by capacity, then everyone else by tier and distance;
        // only as many as asked for are put in order.
        scored[draws..group].sort_by(|a, b| {
            b.capacity
                .total_cmp(&a.capacity)
                .then(a.index.cmp(&b.index))
        });
        let wanted = (k - draws).saturating_sub(group - draws);
        let rest = &mut scored[group..];
        if !rest_sorted && wanted > 0 && wanted < rest.len() {
            rest.select_nth_unstable_by(wanted - 1, by_tier_and_chord);
            rest[..wanted].sort_by(by_tier_and_chord);
        } else if !rest_sorted {
            rest.sort_by(by_tier_and_chord);
        }
        order.extend(scored[draws..].iter().take(k - draws).map(|s| s.index));
    }
    order
}

/// Free slots and listener limits of a group of candidates.
struct Room {
    free: f64,
    /// `None` once an unlimited candidate is in the group.
    limit: Option<f64>,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            free: 0.0,
            limit: Some(0.0),
        }
    }
}

impl Room {
    fn add(&mut self, candidate: &Candidate) {
        self.free += f64::from(candidate.free_slots);
        self.limit = self
            .limit
            .zip(candidate.limit)
            .map(|(sum, l)| sum + f64::from(l));
    }

    fn nearly_full(&self, policy: &RankPolicy) -> bool {
        self.limit
            .is_some_and(|limit| self.free < policy.nearly_full * limit)
    }
}

fn by_tier_and_chord(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    a.tier
        .cmp(&b.tier)
        .then(a.chord.total_cmp(&b.chord))
        .then(b.capacity.total_cmp(&a.capacity))
        .then(a.index.cmp(&b.index))
}

fn reachable(client: &Client, candidate: &Candidate) -> bool {
    if client.ipv6 {
        candidate.ipv6
    } else {
        candidate.ipv4
    }
}

/// How close a server is to a player: the tier ranking sorts by first. It is
/// public so that `Explain` says exactly what ranking used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Closeness {
    /// Same network (ASN), in a compatible country (the same, or one unknown).
    SameNetwork,
    /// Same country.
    SameCountry,
    /// Same continent.
    SameContinent,
    /// Anywhere else: distance, capacity and weight decide.
    Elsewhere,
}

/// The tier of `server` for a player at `client`.
pub fn closeness(client: &Place, server: &Place) -> Closeness {
    let same = |a: Option<crate::Code>, b: Option<crate::Code>| a.is_some() && a == b;
    let same_country = same(client.country, server.country);
    let country_compatible = same_country || client.country.is_none() || server.country.is_none();
    if client.asn.is_some() && client.asn == server.asn && country_compatible {
        Closeness::SameNetwork
    } else if same_country {
        Closeness::SameCountry
    } else if same(client.continent, server.continent) {
        Closeness::SameContinent
    } else {
        Closeness::Elsewhere
    }
}

fn tier(client: &Place, server: &Place) -> u8 {
    closeness(client, server) as u8
}

fn chord(a: Option<Coordinates>, b: Option<Coordinates>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => a.chord_squared(b),
        _ => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests;
