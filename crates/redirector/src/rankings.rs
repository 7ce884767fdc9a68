//! Rankings kept per thread for the snapshot being served. A crowd comes from
//! far fewer places than addresses: every player GeoIP puts in one city, on one
//! network, gets the same ranking of a stream's mounts until the next snapshot.
//! Scoring and sorting a hundred mounts is most of what a redirect costs, so it
//! is done once per place, stream and snapshot; each player still gets its own
//! random draw among the best group (see [`balancer_geo::Ranking`]).
//!
//! A new snapshot usually changes only free slots. Then a kept ranking is
//! rebased to the new capacities ([`Ranking::rebase`], a pass over its group
//! and spares) when its place asks again, instead of scoring every mount
//! again: otherwise every place would be ranked anew after every poll, which
//! for a replica with fewer players per place than polls is most requests.
//! A stream whose mounts changed otherwise starts a new lineage
//! ([`StreamView::lineages`]) and is ranked afresh.
//!
//! Each thread keeps its own table, so requests never wait for one another. A
//! full table starts over.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;

use balancer_geo::{Candidate, Client, ClientKey, KeyHasher, Order, RankPolicy, Ranking};

use crate::client_ip::Scheme;
use crate::view::{FleetView, StreamView};

/// Rankings kept per thread. One costs a few hundred bytes to a few KiB (the
/// best group and the spares), so a full table stays within a few MiB.
const CAPACITY: usize = 4_096;

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// The first `draws` of the `depth` best mounts of `stream` (indices into its
/// mounts and its prepared candidates) for `client`, who arrived over
/// `scheme`: [`balancer_geo::rank_top`] of the stream's candidates, with the
/// ranking of depth `depth` reused from an earlier player at the same place in
/// the same view.
#[allow(clippy::too_many_arguments)]
pub(crate) fn top(
    view: &FleetView,
    stream: &StreamView,
    scheme: Scheme,
    client: &Client,
    policy: &RankPolicy,
    rng: &mut fastrand::Rng,
    depth: usize,
    draws: usize,
) -> Order {
    let key = Key {
        lineage: stream.lineages[scheme.index()],
        k: depth,
        client: client.key(),
    };
    let candidates = &stream.candidates[scheme.index()];
    KEPT.with(|kept| {
        kept.borrow_mut()
            .top(view.id, key, candidates, client, policy, rng, draws)
    })
}

/// A thread's rankings.
#[derive(Default)]
struct Kept {
    /// [`FleetView::id`] of the view served last.
    view: u64,
    /// The ranking for each place (and lineage and depth) seen, with the
    /// [`FleetView::id`] of the view whose free slots it has.
    rankings: HashMap<Key, (u64, Rc<Ranking>), BuildHasherDefault<KeyHasher>>,
    /// Each distinct ranking of the view served last, once. Far fewer than
    /// places: players far from every server, or in one country's cities,
    /// often share theirs. Shared, they stay in the processor's cache, where
    /// a copy per place would not.
    distinct: HashSet<Rc<Ranking>, BuildHasherDefault<KeyHasher>>,
}

impl Kept {
    /// [`top`] of `candidates` (which `key` names) in view `view`.
    #[allow(clippy::too_many_arguments)]
    fn top(
        &mut self,
        view: u64,
        key: Key,
        candidates: &[Candidate],
        client: &Client,
        policy: &RankPolicy,
        rng: &mut fastrand::Rng,
        draws: usize,
    ) -> Order {
        if self.view != view {
            self.view = view;
            self.distinct.clear();
        }
        let Kept {
            rankings, distinct, ..
        } = self;
        if let Some((made_for, ranking)) = rankings.get_mut(&key) {
            if *made_for != view {
                // Made for an earlier view of the lineage: the same mounts,
                // other free slots.
                let next = ranking
                    .rebase(candidates, policy)
                    .unwrap_or_else(|| Ranking::new(client, candidates, policy, key.k));
                *ranking = shared(distinct, next);
                *made_for = view;
            }
            return ranking.top(rng, draws);
        }
        if rankings.len() >= CAPACITY {
            rankings.clear();
            distinct.clear();
        }
        let ranking = shared(distinct, Ranking::new(client, candidates, policy, key.k));
        let order = ranking.top(rng, draws);
        rankings.insert(key, (view, ranking));
        order
    }
}

/// `ranking`, or the equal one already in `distinct`.
fn shared(
    distinct: &mut HashSet<Rc<Ranking>, BuildHasherDefault<KeyHasher>>,
    ranking: Ranking,
) -> Rc<Ranking> {
    if let Some(same) = distinct.get(&ranking) {
        return Rc::clone(same);
    }
    let ranking = Rc::new(ranking);
    distinct.insert(Rc::clone(&ranking));
    ranking
}

/// What makes two rankings the same, up to free slots: the stream's
/// candidates for the player's scheme (their lineage), the depth, and what
/// ranking sees of the player.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    lineage: u64,
    k: usize,
    client: ClientKey,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.lineage);
        state.write_u64(self.k as u64);
        self.client.hash(state);
    }
}

#[cfg(test)]
mod tests {
    //! The table against ranking from scratch. Selection as a whole (views
    //! built from snapshots, draws, reservations) is tested end to end.

    use super::*;
    use balancer_geo::{Code, Coordinates, Place, rank_top};

    const CITIES: [(&str, &str, f64, f64); 6] = [
        ("AT", "EU", 48.21, 16.37),
        ("AT", "EU", 47.07, 15.44),
        ("DE", "EU", 52.52, 13.40),
        ("FR", "EU", 48.86, 2.35),
        ("US", "NA", 40.71, -74.01),
        ("JP", "AS", 35.68, 139.69),
    ];

    fn place(rng: &mut fastrand::Rng) -> Place {
        let (country, continent, lat, lon) = CITIES[rng.usize(..CITIES.len())];
        Place {
            country: Code::new(country),
            continent: Code::new(continent),
            location: Coordinates::new(lat + rng.f64() / 10.0, lon).ok(),
            asn: rng.bool().then(|| 64_500 + rng.u32(..3)),
        }
    }

    fn key(lineage: u64, client: &Client, k: usize) -> Key {
        Key {
            lineage,
            k,
            client: client.key(),
        }
    }

    #[test]
    fn a_kept_ranking_draws_exactly_like_a_fresh_one() {
        let mut cases = fastrand::Rng::with_seed(21);
        let mut kept = Kept::default();
        let policy = RankPolicy::default();
        let (mut candidates, mut clients, mut lineage) =
            (Vec::<Candidate>::new(), Vec::<Client>::new(), 0);
        let (mut new_lineages, mut rebased) = (0, 0);
        for view in 1..=40 {
            if lineage > 0 && cases.bool() {
                // A new view of the same mounts: other free slots, none
                // where there were none. Kept rankings are rebased.
                for candidate in &mut candidates {
                    if candidate.free_slots > 0 {
                        candidate.free_slots = cases.u32(1..50);
                    }
                }
            } else {
                // Other mounts: a new lineage.
                candidates = (0..cases.usize(1..60))
                    .map(|_| Candidate {
                        place: place(&mut cases),
                        free_slots: cases.u32(0..50),
                        limit: Some(50),
                        weight: 100,
                        ipv4: true,
                        ipv6: cases.bool(),
                    })
                    .collect();
                // A crowd from a few places, each place seen many times.
                clients = (0..8)
                    .map(|_| Client {
                        place: place(&mut cases),
                        ipv6: cases.bool(),
                    })
                    .collect();
                lineage += 1;
                new_lineages += 1;
            }
            for _ in 0..200 {
                let client = clients[cases.usize(..clients.len())];
                let k = [1, 3, 3, 3, 60][cases.usize(..5)];
                let seed = cases.u64(..);
                let fresh = rank_top(
                    &client,
                    &candidates,
                    &policy,
                    &mut fastrand::Rng::with_seed(seed),
                    k,
                );
                let made_for = kept.rankings.get(&key(lineage, &client, k)).map(|e| e.0);
                rebased += usize::from(made_for.is_some_and(|made_for| made_for != view));
                // A redirect draws only its first choice: the start of the same draw.
                let draws = if cases.bool() { k } else { cases.usize(1..=k) };
                let reused = kept.top(
                    view,
                    key(lineage, &client, k),
                    &candidates,
                    &client,
                    &policy,
                    &mut fastrand::Rng::with_seed(seed),
                    draws,
                );
                assert_eq!(
                    reused[..],
                    fresh[..draws.min(fresh.len())],
                    "view {view}, k {k}, draws {draws}, {client:?}"
                );
            }
            assert!(
                kept.rankings.len() <= 8 * 3 * new_lineages,
                "one per place, k and lineage"
            );
            assert!(kept.distinct.len() <= kept.rankings.len());
        }
        // Many rankings were carried into a later view, many made anew.
        assert!(
            rebased > 100 && new_lineages > 10,
            "{rebased} rebased, {new_lineages} lineages"
        );
    }

    #[test]
    fn a_new_view_or_a_full_table_starts_over() {
        let policy = RankPolicy::default();
        let mut rng = fastrand::Rng::with_seed(5);
        let vienna = |free_slots| Candidate {
            place: place(&mut fastrand::Rng::with_seed(0)),
            free_slots,
            limit: Some(10),
            weight: 100,
            ipv4: true,
            ipv6: true,
        };
        let client = Client::default();
        let mut kept = Kept::default();
        let mut top = |kept: &mut Kept, view: u64, lineage: u64, candidates: &[Candidate]| {
            kept.top(
                view,
                key(lineage, &client, 3),
                candidates,
                &client,
                &policy,
                &mut rng,
                3,
            )
            .to_vec()
        };
        assert_eq!(top(&mut kept, 1, 1, &[vienna(0), vienna(5)]), [1]);
        // Same view, same key: the kept ranking, even if handed other candidates.
        assert_eq!(top(&mut kept, 1, 1, &[vienna(5), vienna(0)]), [1]);
        // Another view of another lineage: ranked again.
        assert_eq!(top(&mut kept, 2, 2, &[vienna(5), vienna(0)]), [0]);
        // The same lineage in a later view: rebased to the new free slots.
        let ranking = |kept: &Kept| Rc::clone(&kept.rankings[&key(2, &client, 3)].1);
        let before = ranking(&kept);
        assert_eq!(top(&mut kept, 3, 2, &[vienna(1), vienna(0)]), [0]);
        assert!(!Rc::ptr_eq(&before, &ranking(&kept)), "a new ranking");
        assert_eq!(kept.rankings[&key(2, &client, 3)].0, 3, "for view 3");
        assert_eq!(kept.rankings.len(), 2);
        // Another place with the same ranking: kept once.
        let elsewhere = Client {
            place: Place {
                asn: Some(64_999),
                ..Place::default()
            },
            ipv6: false,
        };
        let candidates = [vienna(1), vienna(0)];
        kept.top(
            3,
            key(2, &elsewhere, 3),
            &candidates,
            &elsewhere,
            &policy,
            &mut rng,
            3,
        );
        assert_eq!((kept.rankings.len(), kept.distinct.len()), (3, 1));
        for lineage in 0..CAPACITY as u64 + 3 {
            kept.top(
                3,
                key(lineage + 10, &client, 3),
                &[vienna(5)],
                &client,
                &policy,
                &mut rng,
                3,
            );
        }
        assert!(kept.rankings.len() <= CAPACITY);
        assert!(!kept.rankings.is_empty());
    }
}
