//! Places and their rankings, kept per thread for the snapshot being served.
//! A crowd comes from far fewer places than addresses: every player whose
//! address GeoIP maps to the same records (one city, one network) is at the
//! same place, and gets the same ranking of a stream's mounts until the next
//! snapshot. Scoring and sorting a hundred mounts is most of what a redirect
//! costs, so it is done once per place, stream and snapshot; each player
//! still gets its own random draw among the best group (see
//! [`balancer_geo::Ranking`]).
//!
//! A place is known by its GeoIP records ([`balancer_geo::Records`], found
//! by walking the trees, without decoding) and its address family, and one
//! entry holds both the place and its rankings: a redirect finds them with
//! one probe of one table, where a table of decoded places and another of
//! rankings by place cost a cache miss each.
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
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use balancer_geo::{
    Candidate, Client, GeoDb, KeyHasher, Order, Place, RankPolicy, Ranking, Records, ThreadGeo,
};

use crate::client_ip::Scheme;
use crate::view::{FleetView, StreamView};

/// Rankings kept per thread. One costs a few hundred bytes to a few KiB (the
/// best group and the spares), and places that rank alike share one, so a
/// full table stays within a few MiB.
const RANKINGS: usize = 4_096;
/// Places kept per thread, about 128 bytes each (without their rankings).
const PLACES: usize = 16_384;

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
    /// This thread's hold on the GeoIP databases it locates players in.
    static GEO: RefCell<Option<ThreadGeo>> = const { RefCell::new(None) };
}

/// What a player's place is known by in a thread's table: the GeoIP records
/// its address maps to, and its address family (ranking looks at both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PlaceKey {
    records: Records,
    ipv6: bool,
}

/// Where the player at `ip` is, and the key of that place in this thread's
/// table (`None` when its records have no name, see
/// [`GeoDb::lookup_records`]): decoded from GeoIP only the first time this
/// thread sees the place.
pub(crate) fn locate(geo: &Arc<GeoDb>, ip: IpAddr) -> (Client, Option<PlaceKey>) {
    let ipv6 = ip.is_ipv6();
    GEO.with(|held| {
        let mut held = held.borrow_mut();
        if held.as_ref().is_some_and(|held| !held.is_of(geo)) {
            *held = None;
        }
        let held = held.get_or_insert_with(|| geo.for_thread());
        held.lookup_records(ip, |records, place| match records {
            Some(records) => {
                let key = PlaceKey { records, ipv6 };
                let place = KEPT.with(|kept| kept.borrow_mut().place(key, place));
                (Client { place, ipv6 }, Some(key))
            }
            None => (
                Client {
                    place: place(),
                    ipv6,
                },
                None,
            ),
        })
    })
}

/// The first `draws` of the `depth` best mounts of `stream` (indices into its
/// mounts and its prepared candidates) for `client`, placed at `key` by
/// [`locate`], who arrived over `scheme`: [`balancer_geo::rank_top`] of the
/// stream's candidates, with the ranking of depth `depth` reused from an
/// earlier player at the same place in the same view.
#[allow(clippy::too_many_arguments)]
pub(crate) fn top(
    view: &FleetView,
    stream: &StreamView,
    scheme: Scheme,
    client: &Client,
    key: Option<PlaceKey>,
    policy: &RankPolicy,
    rng: &mut fastrand::Rng,
    depth: usize,
    draws: usize,
) -> Order {
    let lineage = stream.lineages[scheme.index()];
    let candidates = &stream.candidates[scheme.index()];
    match key {
        Some(key) => KEPT.with(|kept| {
            kept.borrow_mut().top(
                view.id,
                Kind {
                    key,
                    lineage,
                    depth,
                },
                candidates,
                client,
                policy,
                rng,
                draws,
            )
        }),
        None => Ranking::new(client, candidates, policy, depth).top(rng, draws),
    }
}

/// Which ranking: of the place `key`, of the candidates of lineage
/// `lineage`, `depth` deep.
#[derive(Debug, Clone, Copy)]
struct Kind {
    key: PlaceKey,
    lineage: u64,
    depth: usize,
}

/// A thread's places and rankings.
#[derive(Default)]
struct Kept {
    /// [`FleetView::id`] of the view served last.
    view: u64,
    places: HashMap<PlaceKey, Entry, BuildHasherDefault<KeyHasher>>,
    /// Rankings held by the places, for the bound.
    rankings: usize,
    /// Each distinct ranking of the view served last, once. Far fewer than
    /// places: players far from every server, or in one country's cities,
    /// often share theirs. Shared, they stay in the processor's cache, where
    /// a copy per place would not.
    distinct: HashSet<Rc<Ranking>, BuildHasherDefault<KeyHasher>>,
    /// Rankings of earlier views rebased for the view served last, by the
    /// earlier ranking (its address, kept alive here so it cannot be reused)
    /// and lineage. Places that shared a ranking share its rebase, made
    /// once: a bench crowd of 2,048 places had 12 distinct rankings, and a
    /// rebase per place after each snapshot was a burst of 2,048 of them.
    rebased: HashMap<(usize, u64), Rebased, BuildHasherDefault<KeyHasher>>,
}

/// An earlier ranking, kept alive, and its rebase for the view served last.
struct Rebased {
    _earlier: Rc<Ranking>,
    now: Rc<Ranking>,
}

/// One place: what GeoIP says of it, and its rankings (usually one: most
/// players ask for one stream; the first is inline, beside the place).
struct Entry {
    place: Place,
    first: Option<KeptRanking>,
    more: Vec<KeptRanking>,
}

/// A ranking of lineage `lineage`, `depth` deep, with the free slots of the
/// view `made_for` ([`FleetView::id`]).
struct KeptRanking {
    lineage: u64,
    depth: usize,
    made_for: u64,
    ranking: Rc<Ranking>,
}

impl Entry {
    fn new(place: Place) -> Entry {
        Entry {
            place,
            first: None,
            more: Vec::new(),
        }
    }

    fn ranking(&mut self, lineage: u64, depth: usize) -> Option<&mut KeptRanking> {
        let of = |kept: &&mut KeptRanking| kept.lineage == lineage && kept.depth == depth;
        self.first
            .as_mut()
            .filter(of)
            .or_else(|| self.more.iter_mut().find(of))
    }

    fn keep(&mut self, kept: KeptRanking) {
        match self.first {
            None => self.first = Some(kept),
            Some(_) => self.more.push(kept),
        }
    }
}

impl Kept {
    /// The place `key`, from `place` the first time.
    fn place(&mut self, key: PlaceKey, place: &mut dyn FnMut() -> Place) -> Place {
        if let Some(entry) = self.places.get(&key) {
            return entry.place;
        }
        let place = place();
        if self.places.len() >= PLACES {
            self.start_over();
        }
        self.places.insert(key, Entry::new(place));
        place
    }

    fn start_over(&mut self) {
        self.places.clear();
        self.distinct.clear();
        self.rebased.clear();
        self.rankings = 0;
    }

    /// [`top`] of `candidates` (of `kind`'s lineage) in view `view`.
    #[allow(clippy::too_many_arguments)]
    fn top(
        &mut self,
        view: u64,
        kind: Kind,
        candidates: &[Candidate],
        client: &Client,
        policy: &RankPolicy,
        rng: &mut fastrand::Rng,
        draws: usize,
    ) -> Order {
        if self.view != view {
            self.view = view;
            self.distinct.clear();
            self.rebased.clear();
        }
        let Kept {
            places,
            distinct,
            rebased,
            ..
        } = self;
        if let Some(kept) = places
            .get_mut(&kind.key)
            .and_then(|entry| entry.ranking(kind.lineage, kind.depth))
        {
            if kept.made_for != view {
                // Made for an earlier view of the lineage: the same mounts,
                // other free slots.
                let earlier = Rc::clone(&kept.ranking);
                let id = (Rc::as_ptr(&earlier) as usize, kind.lineage);
                kept.ranking = match rebased.get(&id) {
                    Some(rebased) => Rc::clone(&rebased.now),
                    None => match earlier.rebase(candidates, policy) {
                        Some(next) => {
                            let now = shared(distinct, next);
                            let both = Rebased {
                                _earlier: earlier,
                                now: Rc::clone(&now),
                            };
                            rebased.insert(id, both);
                            now
                        }
                        // Ranked anew, for this place.
                        None => shared(
                            distinct,
                            Ranking::new(client, candidates, policy, kind.depth),
                        ),
                    },
                };
                kept.made_for = view;
            }
            return kept.ranking.top(rng, draws);
        }
        let full = self.rankings >= RANKINGS
            || (self.places.len() >= PLACES && !self.places.contains_key(&kind.key));
        if full {
            self.start_over();
        }
        let ranking = shared(
            &mut self.distinct,
            Ranking::new(client, candidates, policy, kind.depth),
        );
        let order = ranking.top(rng, draws);
        // The place is normally there (`locate` put it), unless the table
        // started over since.
        self.places
            .entry(kind.key)
            .or_insert_with(|| Entry::new(client.place))
            .keep(KeptRanking {
                lineage: kind.lineage,
                depth: kind.depth,
                made_for: view,
                ranking,
            });
        self.rankings += 1;
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

#[cfg(test)]
mod tests {
    //! The table against ranking from scratch. Selection as a whole (views
    //! built from snapshots, draws, reservations) is tested end to end.

    use super::*;
    use balancer_geo::{Code, Coordinates, rank_top};

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

    /// The key of the place whose City record is `city`.
    fn at(city: u64, client: &Client) -> PlaceKey {
        PlaceKey {
            records: Records::from_parts(city, 0),
            ipv6: client.ipv6,
        }
    }

    fn kind(key: PlaceKey, lineage: u64, depth: usize) -> Kind {
        Kind {
            key,
            lineage,
            depth,
        }
    }

    impl Kept {
        /// The kept ranking of `kind`, if any.
        fn kept(&mut self, kind: Kind) -> Option<&KeptRanking> {
            self.places
                .get_mut(&kind.key)?
                .ranking(kind.lineage, kind.depth)
                .map(|kept| &*kept)
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
                let which = cases.usize(..clients.len());
                let client = clients[which];
                // Each lineage's clients at records of their own.
                let key = at(lineage * 100 + which as u64, &client);
                let k = [1, 3, 3, 3, 60][cases.usize(..5)];
                let seed = cases.u64(..);
                let fresh = rank_top(
                    &client,
                    &candidates,
                    &policy,
                    &mut fastrand::Rng::with_seed(seed),
                    k,
                );
                assert_eq!(kept.place(key, &mut || client.place), client.place);
                let made_for = kept.kept(kind(key, lineage, k)).map(|r| r.made_for);
                rebased += usize::from(made_for.is_some_and(|made_for| made_for != view));
                // A redirect draws only its first choice: the start of the same draw.
                let draws = if cases.bool() { k } else { cases.usize(1..=k) };
                let reused = kept.top(
                    view,
                    kind(key, lineage, k),
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
                kept.rankings <= 8 * 3 * new_lineages,
                "one per place, k and lineage"
            );
            assert!(kept.places.len() <= 8 * new_lineages);
            assert!(kept.distinct.len() <= kept.rankings);
        }
        // Many rankings were carried into a later view, many made anew.
        assert!(
            rebased > 100 && new_lineages > 10,
            "{rebased} rebased, {new_lineages} lineages"
        );
    }

    #[test]
    fn a_place_is_looked_up_once_and_a_full_table_starts_over() {
        let mut kept = Kept::default();
        let client = Client::default();
        let vienna = place(&mut fastrand::Rng::with_seed(0));
        let lookups = std::cell::Cell::new(0);
        let mut lookup = || {
            lookups.set(lookups.get() + 1);
            vienna
        };
        assert_eq!(kept.place(at(1, &client), &mut lookup), vienna);
        assert_eq!(kept.place(at(1, &client), &mut lookup), vienna);
        assert_eq!(
            lookups.get(),
            1,
            "the second player at the records is not looked up"
        );
        let ipv6 = PlaceKey {
            ipv6: true,
            ..at(1, &client)
        };
        kept.place(ipv6, &mut lookup);
        kept.place(at(2, &client), &mut lookup);
        assert_eq!(lookups.get(), 3, "another family or other records are");
        for city in 0..PLACES as u64 + 3 {
            kept.place(at(city + 10, &client), &mut || Place::default());
        }
        assert!(kept.places.len() <= PLACES);
        assert!(!kept.places.is_empty());
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
        let here = at(1, &client);
        let mut kept = Kept::default();
        let mut top = |kept: &mut Kept, view: u64, lineage: u64, candidates: &[Candidate]| {
            kept.top(
                view,
                kind(here, lineage, 3),
                candidates,
                &client,
                &policy,
                &mut rng,
                3,
            )
            .to_vec()
        };
        assert_eq!(top(&mut kept, 1, 1, &[vienna(0), vienna(5)]), [1]);
        // Same view, same place and lineage: the kept ranking, even if handed
        // other candidates.
        assert_eq!(top(&mut kept, 1, 1, &[vienna(5), vienna(0)]), [1]);
        // Another view of another lineage: ranked again.
        assert_eq!(top(&mut kept, 2, 2, &[vienna(5), vienna(0)]), [0]);
        // The same lineage in a later view: rebased to the new free slots.
        let ranking = |kept: &mut Kept| Rc::clone(&kept.kept(kind(here, 2, 3)).unwrap().ranking);
        let before = ranking(&mut kept);
        assert_eq!(top(&mut kept, 3, 2, &[vienna(1), vienna(0)]), [0]);
        assert!(!Rc::ptr_eq(&before, &ranking(&mut kept)), "a new ranking");
        assert_eq!(
            kept.kept(kind(here, 2, 3)).unwrap().made_for,
            3,
            "for view 3"
        );
        assert_eq!(
            (kept.rankings, kept.places.len()),
            (2, 1),
            "one place, two lineages"
        );
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
            kind(at(2, &elsewhere), 2, 3),
            &candidates,
            &elsewhere,
            &policy,
            &mut rng,
            3,
        );
        assert_eq!((kept.rankings, kept.distinct.len()), (3, 1));
        // Both places in the next view: one rebase, shared.
        let next = [vienna(4), vienna(0)];
        for (key, who) in [(here, &client), (at(2, &elsewhere), &elsewhere)] {
            kept.top(4, kind(key, 2, 3), &next, who, &policy, &mut rng, 3);
        }
        assert_eq!(kept.rebased.len(), 1, "one rebase for two places");
        let now = |kept: &mut Kept, key| Rc::clone(&kept.kept(kind(key, 2, 3)).unwrap().ranking);
        assert!(Rc::ptr_eq(
            &now(&mut kept, here),
            &now(&mut kept, at(2, &elsewhere))
        ));
        assert_eq!(kept.kept(kind(here, 2, 3)).unwrap().made_for, 4);
        // The rebase is the ranking the new free slots give.
        let fresh = Ranking::new(&client, &next, &policy, 3);
        assert!(*now(&mut kept, here) == fresh);
        // Two streams whose rankings were alike share one; in the next view
        // each is rebased to its own stream's free slots.
        let alike = [vienna(2), vienna(0)];
        for lineage in [7, 8] {
            kept.top(
                5,
                kind(here, lineage, 3),
                &alike,
                &client,
                &policy,
                &mut rng,
                3,
            );
        }
        let ranking_of = |kept: &mut Kept, lineage| {
            Rc::clone(&kept.kept(kind(here, lineage, 3)).unwrap().ranking)
        };
        assert!(Rc::ptr_eq(
            &ranking_of(&mut kept, 7),
            &ranking_of(&mut kept, 8)
        ));
        for (lineage, free) in [(7, 3), (8, 9)] {
            let candidates = [vienna(free), vienna(0)];
            kept.top(
                6,
                kind(here, lineage, 3),
                &candidates,
                &client,
                &policy,
                &mut rng,
                3,
            );
            let fresh = Ranking::new(&client, &candidates, &policy, 3);
            assert!(
                *ranking_of(&mut kept, lineage) == fresh,
                "lineage {lineage}"
            );
        }
        for lineage in 0..RANKINGS as u64 + 3 {
            kept.top(
                3,
                kind(here, lineage + 10, 3),
                &[vienna(5)],
                &client,
                &policy,
                &mut rng,
                3,
            );
        }
        assert!(kept.rankings <= RANKINGS);
        assert!(kept.rankings > 0 && !kept.places.is_empty());
    }
}
