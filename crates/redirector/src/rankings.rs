//! Rankings kept per thread for the snapshot being served. A crowd comes from
//! far fewer places than addresses: every player GeoIP puts in one city, on one
//! network, gets the same ranking of a stream's mounts until the next snapshot.
//! Scoring and sorting a hundred mounts is most of what a redirect costs, so it
//! is done once per place, stream and snapshot; each player still gets its own
//! random draw among the best group (see [`balancer_geo::Ranking`]).
//!
//! Each thread keeps its own table, so requests never wait for one another. A
//! new snapshot empties it; a full one starts over.

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

/// The first `k` mounts of `stream` (indices into its mounts and its prepared
/// candidates) for `client`, who arrived over `scheme`: [`balancer_geo::rank_top`]
/// of the stream's candidates, with the ranking reused from an earlier player
/// at the same place in the same view.
pub(crate) fn top(
    view: &FleetView,
    stream: &StreamView,
    scheme: Scheme,
    client: &Client,
    policy: &RankPolicy,
    rng: &mut fastrand::Rng,
    k: usize,
) -> Order {
    let key = Key {
        // The view holds its streams in place until it is dropped, and the
        // table forgets every key when the view changes: the address names
        // the stream.
        stream: std::ptr::from_ref(stream) as usize,
        scheme: scheme.index(),
        k,
        client: client.key(),
    };
    let candidates = &stream.candidates[scheme.index()];
    KEPT.with(|kept| {
        kept.borrow_mut()
            .top(view.id, key, candidates, client, policy, rng)
    })
}

/// The rankings of one view.
#[derive(Default)]
struct Kept {
    /// [`FleetView::id`] of the view they were made for.
    view: u64,
    /// The ranking for each place (and stream, scheme and depth) seen.
    rankings: HashMap<Key, Rc<Ranking>, BuildHasherDefault<KeyHasher>>,
    /// Each distinct ranking once. Far fewer than places: players far from
    /// every server, or in one country's cities, often share theirs. Shared,
    /// they stay in the processor's cache, where a copy per place would not.
    distinct: HashSet<Rc<Ranking>, BuildHasherDefault<KeyHasher>>,
}

impl Kept {
    /// [`top`] of `candidates` (which `key` names) in view `view`.
    fn top(
        &mut self,
        view: u64,
        key: Key,
        candidates: &[Candidate],
        client: &Client,
        policy: &RankPolicy,
        rng: &mut fastrand::Rng,
    ) -> Order {
        if self.view != view {
            self.view = view;
            self.rankings.clear();
            self.distinct.clear();
        }
        if let Some(ranking) = self.rankings.get(&key) {
            return ranking.top(rng, key.k);
        }
        if self.rankings.len() >= CAPACITY {
            self.rankings.clear();
            self.distinct.clear();
        }
        let ranking = Ranking::new(client, candidates, policy, key.k);
        let ranking = match self.distinct.get(&ranking) {
            Some(same) => Rc::clone(same),
            None => {
                let ranking = Rc::new(ranking);
                self.distinct.insert(Rc::clone(&ranking));
                ranking
            }
        };
        let order = ranking.top(rng, key.k);
        self.rankings.insert(key, ranking);
        order
    }
}

/// What makes two rankings the same, within one view.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    stream: usize,
    scheme: usize,
    k: usize,
    client: ClientKey,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Scheme (0 or 1) and k (a handful) share a word.
        state.write_u64(self.stream as u64);
        state.write_u64(((self.k as u64) << 1) | self.scheme as u64);
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

    fn key(stream: usize, client: &Client, k: usize) -> Key {
        Key {
            stream,
            scheme: 0,
            k,
            client: client.key(),
        }
    }

    #[test]
    fn a_kept_ranking_draws_exactly_like_a_fresh_one() {
        let mut cases = fastrand::Rng::with_seed(21);
        let mut kept = Kept::default();
        let policy = RankPolicy::default();
        for view in 1..=20 {
            // A new view: other mounts, other free slots.
            let candidates: Vec<Candidate> = (0..cases.usize(1..60))
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
            let clients: Vec<Client> = (0..8)
                .map(|_| Client {
                    place: place(&mut cases),
                    ipv6: cases.bool(),
                })
                .collect();
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
                let reused = kept.top(
                    view,
                    key(7, &client, k),
                    &candidates,
                    &client,
                    &policy,
                    &mut fastrand::Rng::with_seed(seed),
                );
                assert_eq!(reused[..], fresh[..], "view {view}, k {k}, {client:?}");
            }
            assert!(kept.rankings.len() <= 8 * 3, "one per place and k");
            assert!(kept.distinct.len() <= kept.rankings.len());
        }
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
        let mut top = |kept: &mut Kept, view: u64, candidates: &[Candidate]| {
            kept.top(
                view,
                key(1, &client, 3),
                candidates,
                &client,
                &policy,
                &mut rng,
            )
            .to_vec()
        };
        assert_eq!(top(&mut kept, 1, &[vienna(0), vienna(5)]), [1]);
        // Same view, same key: the kept ranking, even if handed other candidates.
        assert_eq!(top(&mut kept, 1, &[vienna(5), vienna(0)]), [1]);
        // Another view: ranked again.
        assert_eq!(top(&mut kept, 2, &[vienna(5), vienna(0)]), [0]);
        assert_eq!(kept.rankings.len(), 1);
        // Another place with the same ranking: kept once.
        let elsewhere = Client {
            place: Place {
                asn: Some(64_999),
                ..Place::default()
            },
            ipv6: false,
        };
        let candidates = [vienna(5), vienna(0)];
        kept.top(
            2,
            key(1, &elsewhere, 3),
            &candidates,
            &elsewhere,
            &policy,
            &mut rng,
        );
        assert_eq!((kept.rankings.len(), kept.distinct.len()), (2, 1));
        for stream in 0..CAPACITY + 3 {
            kept.top(
                2,
                key(stream, &client, 3),
                &[vienna(5)],
                &client,
                &policy,
                &mut rng,
            );
        }
        assert!(kept.rankings.len() <= CAPACITY);
        assert!(!kept.rankings.is_empty());
    }
}
