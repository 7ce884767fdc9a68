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

impl Candidate {
    /// Whether `newer` is this candidate in a later poll that changed
    /// nothing ranking looks at but its free slots, and left it some if it
    /// had some and none if it had none: the condition for
    /// [`Ranking::rebase`].
    pub fn differs_only_in_free_slots(&self, newer: &Candidate) -> bool {
        self.place == newer.place
            && self.limit == newer.limit
            && self.weight == newer.weight
            && self.ipv4 == newer.ipv4
            && self.ipv6 == newer.ipv6
            && (self.free_slots > 0) == (newer.free_slots > 0)
    }
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
    Ranking::new(client, candidates, policy, k)
        .top(rng, k)
        .into_vec()
}

/// The first places of an order, as [`Ranking::top`] draws them: inline for
/// the few a redirect needs, so that drawing them allocates nothing.
pub type Order = smallvec::SmallVec<[usize; 4]>;

/// The part of a ranking that the player's place and the candidates fix: the
/// best group (each member with its capacity) and the candidates after it, in
/// order. Only the draw among the group is random. Built once, it answers any
/// number of draws: the redirector keeps one per place and snapshot, so a
/// crowd at one place pays for the scoring and sorting once, not per player.
#[derive(Debug, Clone, Default)]
pub struct Ranking {
    /// The best group, in candidate order: index into the candidates and capacity.
    group: Vec<(usize, f64)>,
    /// Where each member's share of the group's capacity ends: the sums of
    /// the capacities up to and including it, so a draw is a binary search.
    ends: Vec<f64>,
    /// The sum of the group's capacities.
    total: f64,
    /// The candidates after the group, best first: as many as `depth` asked for.
    rest: Vec<usize>,
    /// The tier and chord of each of `rest`, to order them again by new capacities.
    rest_closeness: Vec<(u8, f64)>,
    /// How many candidates were ranked (reachable, with free slots).
    ranked: usize,
    /// Whether new free slots alone cannot change which candidates are in
    /// the group and the rest: the group did not take in the next-best for
    /// lack of room, and no candidate left out of the rest ties with its
    /// last on tier and distance (capacity would then pick between them).
    rebasable: bool,
}

impl Ranking {
    /// Scores `candidates` for `client` and orders as many as [`Ranking::top`]
    /// will be asked for (`depth`). Candidates without free slots or
    /// unreachable over the player's address family are left out.
    pub fn new(
        client: &Client,
        candidates: &[Candidate],
        policy: &RankPolicy,
        depth: usize,
    ) -> Ranking {
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
                    capacity: capacity(c),
                }),
        );
        let Some(best) = scored.iter().min_by(|a, b| by_tier_and_chord(a, b)) else {
            return Ranking::default();
        };
        let (best_tier, best_chord) = (best.tier, best.chord);
        // The band in kilometres, converted once to a chord to compare with.
        let limit = if best_chord.is_infinite() {
            f64::INFINITY
        } else {
            km_to_chord(chord_to_km(best_chord) * policy.distance_band + policy.band_slack_km)
        };
        // Move the best group to the front, in candidate order.
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
        // Everyone after the group by tier and distance; only as many as asked for.
        let wanted = depth.saturating_sub(group);
        let rest = &mut scored[group..];
        if !rest_sorted && wanted > 0 && wanted < rest.len() {
            rest.select_nth_unstable_by(wanted - 1, by_tier_and_chord);
            rest[..wanted].sort_by(by_tier_and_chord);
        } else if !rest_sorted && wanted > 0 {
            rest.sort_by(by_tier_and_chord);
        }
        // A candidate left out that ties with the last one kept: capacity chose.
        let cut_tie = wanted > 0
            && rest.len() > wanted
            && rest[wanted..].iter().any(|s| {
                s.tier == rest[wanted - 1].tier
                    && s.chord.to_bits() == rest[wanted - 1].chord.to_bits()
            });
        let rest_closeness = rest
            .iter()
            .take(wanted)
            .map(|s| (s.tier, s.chord))
            .collect();
        let rest = rest.iter().take(wanted).map(|s| s.index).collect();
        let group: Vec<(usize, f64)> = scored[..group]
            .iter()
            .map(|s| (s.index, s.capacity))
            .collect();
        let ends = running_sums(&group);
        Ranking {
            total: ends.last().copied().unwrap_or(0.0),
            ends,
            group,
            rest,
            rest_closeness,
            ranked: scored.len(),
            rebasable: !rest_sorted && !cut_tie,
        }
    }

    /// This ranking for `candidates`, a newer version of the candidates it
    /// was made of that differ only in free slots, with free slots where they
    /// had some and none where they had none: what [`Ranking::new`] would
    /// make of them, for a pass over the group and the rest instead of
    /// scoring every candidate. `None` when the new free slots could change
    /// more than the capacities and the order of the rest (the group is, or
    /// was, short of room), and the ranking must be made anew.
    pub fn rebase(&self, candidates: &[Candidate], policy: &RankPolicy) -> Option<Ranking> {
        if !self.rebasable {
            return None;
        }
        let mut room = Room::default();
        for &(index, _) in &self.group {
            room.add(candidates.get(index)?);
        }
        if room.nearly_full(policy) && self.group.len() < self.ranked {
            return None;
        }
        let group: Vec<(usize, f64)> = self
            .group
            .iter()
            .map(|&(index, _)| (index, capacity(&candidates[index])))
            .collect();
        let ends = running_sums(&group);
        let mut rest: Vec<Scored> = self
            .rest
            .iter()
            .zip(&self.rest_closeness)
            .map(|(&index, &(tier, chord))| {
                Some(Scored {
                    index,
                    tier,
                    chord,
                    capacity: capacity(candidates.get(index)?),
                })
            })
            .collect::<Option<_>>()?;
        rest.sort_by(by_tier_and_chord);
        Some(Ranking {
            total: ends.last().copied().unwrap_or(0.0),
            ends,
            group,
            rest: rest.iter().map(|s| s.index).collect(),
            rest_closeness: rest.iter().map(|s| (s.tier, s.chord)).collect(),
            ranked: self.ranked,
            rebasable: true,
        })
    }

    /// The first `k` candidates to try, best first (no more than the `depth`
    /// the ranking was built for): the group's places drawn at random, each in
    /// proportion to capacity among the members not drawn yet, then the rest
    /// in order. The ranking itself is left as it is, so one serves many
    /// players, and a draw costs a binary search, however large the group.
    pub fn top(&self, rng: &mut fastrand::Rng, k: usize) -> Order {
        let draws = k.min(self.group.len());
        let mut order = Order::with_capacity(k.min(self.group.len() + self.rest.len()));
        let mut drawn = Drawn::new(draws);
        let mut remaining = self.total;
        for _ in 0..draws {
            // A point on the capacities not drawn yet, moved past the shares
            // of the members drawn before it: a point on all capacities.
            let mut target = rng.f64() * remaining;
            for &position in drawn.positions() {
                if self.start(position) <= target {
                    target += self.group[position].1;
                } else {
                    break;
                }
            }
            let found = self.ends.partition_point(|&end| end <= target);
            let pick = drawn.nearest_free(found.min(self.group.len() - 1), self.group.len());
            drawn.insert(pick);
            remaining -= self.group[pick].1;
            order.push(self.group[pick].0);
        }
        order.extend(self.rest.iter().copied().take(k - order.len()));
        order
    }

    /// Where the share of group member `position` starts.
    fn start(&self, position: usize) -> f64 {
        match position {
            0 => 0.0,
            _ => self.ends[position - 1],
        }
    }
}

/// Rankings are equal when their groups (members and capacities, bit for
/// bit) and their rests are: players at different places often get the same
/// ranking (everyone far away from the fleet, for one), and a process that
/// keeps rankings keeps each only once.
impl PartialEq for Ranking {
    fn eq(&self, other: &Self) -> bool {
        self.rest == other.rest
            && self.group.len() == other.group.len()
            && self
                .group
                .iter()
                .zip(&other.group)
                .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits())
    }
}

impl Eq for Ranking {}

impl std::hash::Hash for Ranking {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.group.len());
        for &(index, capacity) in &self.group {
            state.write_usize(index);
            state.write_u64(capacity.to_bits());
        }
        state.write_usize(self.rest.len());
        for &index in &self.rest {
            state.write_usize(index);
        }
    }
}

/// The group members drawn so far, as positions in ascending order: inline
/// for a few (a redirect draws three), so a redirect's draws allocate nothing.
enum Drawn {
    Few {
        positions: [usize; FEW],
        len: usize,
    },
    /// `Explain` orders the whole group.
    Many(Vec<usize>),
}

/// How many draws [`Drawn`] keeps inline.
const FEW: usize = 4;

impl Drawn {
    /// Room for `draws` draws.
    fn new(draws: usize) -> Drawn {
        if draws <= FEW {
            Drawn::Few {
                positions: [0; FEW],
                len: 0,
            }
        } else {
            Drawn::Many(Vec::with_capacity(draws))
        }
    }

    fn positions(&self) -> &[usize] {
        match self {
            Drawn::Few { positions, len } => &positions[..*len],
            Drawn::Many(positions) => positions,
        }
    }

    fn insert(&mut self, position: usize) {
        let at = self.positions().partition_point(|&p| p < position);
        match self {
            Drawn::Few { positions, len } => {
                positions.copy_within(at..*len, at + 1);
                positions[at] = position;
                *len += 1;
            }
            Drawn::Many(positions) => positions.insert(at, position),
        }
    }

    /// `position`, or when rounding landed on a member already drawn, the
    /// next one not drawn (the previous one at the end of a group of `members`).
    fn nearest_free(&self, position: usize, members: usize) -> usize {
        let taken = |p: usize| self.positions().binary_search(&p).is_ok();
        if !taken(position) {
            return position;
        }
        (position + 1..members)
            .chain((0..position).rev())
            .find(|&p| !taken(p))
            .unwrap_or(position)
    }
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

/// Where each group member's share ends: the sums of the capacities up to
/// and including it.
fn running_sums(group: &[(usize, f64)]) -> Vec<f64> {
    group
        .iter()
        .scan(0.0, |sum, &(_, capacity)| {
            *sum += capacity;
            Some(*sum)
        })
        .collect()
}

/// What a candidate weighs in a draw: free slots (capped) times weight.
fn capacity(candidate: &Candidate) -> f64 {
    f64::from(candidate.free_slots.min(CAPACITY_CAP)) * f64::from(candidate.weight)
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
