//! Ranking: table-driven cases and properties checked over random inputs with fixed seeds.

use super::*;
use crate::Code;

fn place(country: &str, continent: &str, lat: f64, lon: f64, asn: Option<u32>) -> Place {
    Place {
        country: Code::new(country),
        continent: Code::new(continent),
        location: Coordinates::new(lat, lon).ok(),
        asn,
    }
}

fn server(place: Place, free: u32) -> Candidate {
    Candidate {
        place,
        free_slots: free,
        limit: Some(free.max(1) * 2),
        weight: 100,
        ipv4: true,
        ipv6: true,
    }
}

const SALZBURG: (f64, f64) = (47.80, 13.04);
const VIENNA: (f64, f64) = (48.21, 16.37);
const GRAZ: (f64, f64) = (47.07, 15.44);
const MUNICH: (f64, f64) = (48.14, 11.58);
const NEW_YORK: (f64, f64) = (40.71, -74.01);
const TOKYO: (f64, f64) = (35.68, 139.69);

fn at(city: (f64, f64)) -> Place {
    place("AT", "EU", city.0, city.1, None)
}

fn client(place: Place) -> Client {
    Client { place, ipv6: false }
}

/// The first choice over many draws, as counts per candidate.
fn first_choices(client: &Client, candidates: &[Candidate], draws: usize, seed: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut counts = vec![0; candidates.len()];
    for _ in 0..draws {
        if let Some(&first) = rank(client, candidates, &RankPolicy::default(), &mut rng).first() {
            counts[first] += 1;
        }
    }
    counts
}

#[test]
fn same_country_beats_a_closer_neighbour() {
    let candidates = [
        server(place("DE", "EU", MUNICH.0, MUNICH.1, None), 50),
        server(at(VIENNA), 50),
    ];
    let counts = first_choices(&client(at(SALZBURG)), &candidates, 200, 1);
    assert_eq!(
        counts,
        [0, 200],
        "Salzburg goes to Vienna (AT), not closer Munich (DE)"
    );
}

#[test]
fn same_network_beats_same_country() {
    let mut home = at(GRAZ);
    home.asn = Some(64500);
    let candidates = [server(at(VIENNA), 50), server(home, 50)];
    let mut player = at(SALZBURG);
    player.asn = Some(64500);
    assert_eq!(
        first_choices(&client(player), &candidates, 200, 2),
        [0, 200]
    );
}

#[test]
fn continent_then_distance_for_foreign_players() {
    let candidates = [
        server(place("JP", "AS", TOKYO.0, TOKYO.1, None), 50),
        server(place("US", "NA", NEW_YORK.0, NEW_YORK.1, None), 50),
        server(at(VIENNA), 50),
    ];
    let paris = place("FR", "EU", 48.86, 2.35, None);
    let order = rank(
        &client(paris),
        &candidates,
        &RankPolicy::default(),
        &mut fastrand::Rng::with_seed(3),
    );
    assert_eq!(
        order,
        [2, 1, 0],
        "Europe first, then the closer of the others"
    );
}

#[test]
fn the_distance_band_keeps_near_equals_together() {
    // Vienna and Graz are 145 km apart; from Vienna, Graz is outside 1.5 x 0 km + 50 km.
    let candidates = [server(at(GRAZ), 100), server(at(VIENNA), 100)];
    assert_eq!(
        first_choices(&client(at(VIENNA)), &candidates, 200, 4),
        [0, 200]
    );
    // From Salzburg (Vienna 250 km, Graz 200 km): both inside 200 x 1.5 + 50 km, so shared.
    let counts = first_choices(&client(at(SALZBURG)), &candidates, 2000, 5);
    assert!(counts[0] > 800 && counts[1] > 800, "{counts:?}");
}

#[test]
fn a_nearly_full_lone_server_does_not_swallow_its_region() {
    let nearly_full = Candidate {
        limit: Some(400),
        ..server(at(VIENNA), 4)
    };
    let candidates = [
        nearly_full,
        server(place("DE", "EU", MUNICH.0, MUNICH.1, None), 400),
    ];
    let counts = first_choices(&client(at(VIENNA)), &candidates, 10_000, 6);
    // Vienna has 4 of its 400 free (1%): it shares with Munich by free slots, 4 of 404.
    assert!((50..=200).contains(&counts[0]), "{counts:?}");
    // A small server with room keeps its region: 2 of 2 free.
    let small = Candidate {
        limit: Some(2),
        ..server(at(VIENNA), 2)
    };
    assert_eq!(
        first_choices(&client(at(VIENNA)), &[small, candidates[1]], 500, 7),
        [500, 0]
    );
    // So does an unlimited one.
    let unlimited = Candidate {
        limit: None,
        ..nearly_full
    };
    assert_eq!(
        first_choices(&client(at(VIENNA)), &[unlimited, candidates[1]], 500, 8),
        [500, 0]
    );
}

#[test]
fn full_unreachable_and_weightless_candidates_are_left_out() {
    let mut v4_only = server(at(VIENNA), 10);
    v4_only.ipv6 = false;
    let mut v6_only = server(at(VIENNA), 10);
    v6_only.ipv4 = false;
    let full = server(at(VIENNA), 0);
    let candidates = [v4_only, v6_only, full];
    let mut rng = fastrand::Rng::with_seed(8);
    let v4_client = client(at(VIENNA));
    let v6_client = Client {
        ipv6: true,
        ..v4_client
    };
    assert_eq!(
        rank(&v4_client, &candidates, &RankPolicy::default(), &mut rng),
        [0]
    );
    assert_eq!(
        rank(&v6_client, &candidates, &RankPolicy::default(), &mut rng),
        [1]
    );
    assert!(rank(&v4_client, &[], &RankPolicy::default(), &mut rng).is_empty());
}

#[test]
fn an_unknown_player_is_ranked_by_capacity_and_weight_alone() {
    let mut heavy = server(at(VIENNA), 100);
    heavy.weight = 300;
    let candidates = [
        server(at(VIENNA), 100),
        heavy,
        server(place("US", "NA", NEW_YORK.0, NEW_YORK.1, None), 200),
    ];
    let counts = first_choices(&client(Place::default()), &candidates, 10_000, 9);
    // Capacity x weight: 100x100, 100x300, 200x100 -> 1/6, 3/6, 2/6.
    let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / 10_000.0).collect();
    for (share, want) in shares.iter().zip([1.0 / 6.0, 3.0 / 6.0, 2.0 / 6.0]) {
        assert!((share - want).abs() < 0.05 * want, "{shares:?}");
    }
}

/// A random fleet of up to 50 candidates, some full, some far, some single-stack.
fn random_case(rng: &mut fastrand::Rng) -> (Client, Vec<Candidate>) {
    let codes = ["AT", "DE", "US", "JP", "FR"];
    let continents = ["EU", "EU", "NA", "AS", "EU"];
    let random_place = |rng: &mut fastrand::Rng| {
        let c = rng.usize(..codes.len());
        Place {
            country: Code::new(codes[c]).filter(|_| rng.bool()),
            continent: Code::new(continents[c]),
            location: Coordinates::new(rng.f64() * 180.0 - 90.0, rng.f64() * 360.0 - 180.0)
                .ok()
                .filter(|_| rng.u8(..10) > 0),
            asn: rng.bool().then(|| rng.u32(64500..64505)),
        }
    };
    let candidates = (0..rng.usize(0..=50))
        .map(|_| Candidate {
            place: random_place(rng),
            free_slots: if rng.u8(..4) == 0 {
                0
            } else {
                rng.u32(1..2000)
            },
            limit: rng.bool().then(|| rng.u32(2000..4000)),
            weight: rng.u32(1..=1000),
            ipv4: rng.u8(..5) > 0,
            ipv6: rng.bool(),
        })
        .collect();
    let client = Client {
        place: random_place(rng),
        ipv6: rng.bool(),
    };
    (client, candidates)
}

#[test]
fn property_only_reachable_candidates_with_free_slots_each_once() {
    let mut cases = fastrand::Rng::with_seed(10);
    for _ in 0..2000 {
        let (client, candidates) = random_case(&mut cases);
        let order = rank(
            &client,
            &candidates,
            &RankPolicy::default(),
            &mut fastrand::Rng::with_seed(cases.u64(..)),
        );
        let mut seen = vec![false; candidates.len()];
        for &i in &order {
            assert!(!seen[i], "candidate {i} twice");
            seen[i] = true;
            let c = &candidates[i];
            assert!(
                c.free_slots > 0,
                "a candidate without free slots was ranked"
            );
            assert!(
                if client.ipv6 { c.ipv6 } else { c.ipv4 },
                "unreachable candidate ranked"
            );
        }
        let eligible = candidates
            .iter()
            .filter(|c| c.free_slots > 0 && if client.ipv6 { c.ipv6 } else { c.ipv4 })
            .count();
        assert_eq!(order.len(), eligible, "every eligible candidate is ranked");
    }
}

#[test]
fn property_rank_top_is_a_prefix_of_rank() {
    let mut cases = fastrand::Rng::with_seed(13);
    for _ in 0..1000 {
        let (client, candidates) = random_case(&mut cases);
        let seed = cases.u64(..);
        let k = cases.usize(0..6);
        let full = rank(
            &client,
            &candidates,
            &RankPolicy::default(),
            &mut fastrand::Rng::with_seed(seed),
        );
        let top = rank_top(
            &client,
            &candidates,
            &RankPolicy::default(),
            &mut fastrand::Rng::with_seed(seed),
            k,
        );
        assert_eq!(top, full[..k.min(full.len())], "k = {k}");
    }
}

#[test]
fn property_deterministic_under_a_seed() {
    let mut cases = fastrand::Rng::with_seed(11);
    for _ in 0..500 {
        let (client, candidates) = random_case(&mut cases);
        let seed = cases.u64(..);
        let a = rank(
            &client,
            &candidates,
            &RankPolicy::default(),
            &mut fastrand::Rng::with_seed(seed),
        );
        let b = rank(
            &client,
            &candidates,
            &RankPolicy::default(),
            &mut fastrand::Rng::with_seed(seed),
        );
        assert_eq!(a, b);
    }
}

#[test]
fn property_equal_candidates_share_by_capacity() {
    let mut cases = fastrand::Rng::with_seed(12);
    for _ in 0..20 {
        let n = cases.usize(2..8);
        let candidates: Vec<Candidate> = (0..n)
            .map(|_| Candidate {
                weight: cases.u32(1..=1000),
                ..server(at(VIENNA), cases.u32(20..500))
            })
            .collect();
        let total: f64 = candidates
            .iter()
            .map(|c| f64::from(c.free_slots) * f64::from(c.weight))
            .sum();
        let counts = first_choices(&client(at(SALZBURG)), &candidates, 10_000, cases.u64(..));
        for (c, count) in candidates.iter().zip(&counts) {
            let want = f64::from(c.free_slots) * f64::from(c.weight) / total;
            let got = *count as f64 / 10_000.0;
            // Within 5% of the capacity share (or 1 point for small shares, where
            // 10,000 draws cannot resolve 5% of the share).
            let tolerance = (0.05 * want).max(0.01);
            assert!(
                (got - want).abs() <= tolerance,
                "share {got:.4}, capacity share {want:.4}: {counts:?}"
            );
        }
    }
}

#[test]
fn the_same_network_needs_a_compatible_country() {
    let vienna_a1 = place("AT", "EU", 48.21, 16.37, Some(8447));
    let graz_a1 = place("AT", "EU", 47.07, 15.44, Some(8447));
    let munich_a1 = place("DE", "EU", 48.14, 11.58, Some(8447));
    let mut unknown_country = munich_a1;
    unknown_country.country = None;
    assert_eq!(closeness(&vienna_a1, &graz_a1), Closeness::SameNetwork);
    // An ASN spanning countries is not "same network" across a border.
    assert_eq!(closeness(&vienna_a1, &munich_a1), Closeness::SameContinent);
    assert_eq!(
        closeness(&vienna_a1, &unknown_country),
        Closeness::SameNetwork
    );
    assert_eq!(
        tier(&vienna_a1, &munich_a1),
        Closeness::SameContinent as u8,
        "ranking sorts by the same rule"
    );
}

#[test]
fn later_draws_follow_the_capacity_left_and_never_repeat() {
    // An unknown player: one group; capacities 1 to 4 (times the same weight).
    let candidates: Vec<Candidate> = (1..=4)
        .map(|free| Candidate {
            limit: None,
            ..server(at(VIENNA), free)
        })
        .collect();
    let ranking = Ranking::new(
        &client(Place::default()),
        &candidates,
        &RankPolicy::default(),
        4,
    );
    let mut rng = fastrand::Rng::with_seed(31);
    let draws = 40_000;
    let mut pairs = [[0u32; 4]; 4];
    for _ in 0..draws {
        let order = ranking.top(&mut rng, 4);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted[..], [0, 1, 2, 3], "every member once: {order:?}");
        pairs[order[0]][order[1]] += 1;
    }
    // P(first a, then b) = c_a / 10 * c_b / (10 - c_a).
    for (a, seconds) in pairs.iter().enumerate() {
        for (b, &seen) in seconds.iter().enumerate() {
            if a == b {
                continue;
            }
            let (ca, cb) = (a as f64 + 1.0, b as f64 + 1.0);
            let expected = ca / 10.0 * cb / (10.0 - ca) * f64::from(draws);
            let seen = f64::from(seen);
            assert!(
                (seen - expected).abs() < 0.1 * expected + 40.0,
                "first {a}, then {b}: {seen} draws, expected {expected:.0}"
            );
        }
    }
}

#[test]
fn property_a_rebased_ranking_is_the_ranking_of_the_new_free_slots() {
    let policy = RankPolicy::default();
    let mut cases = fastrand::Rng::with_seed(17);
    let (mut rebased, mut refused) = (0, 0);
    for case in 0..3000 {
        let (client, mut candidates) = random_case(&mut cases);
        if case % 2 == 0 && !candidates.is_empty() {
            // Servers in a few cities: ties on tier and distance, which
            // capacity breaks, are common.
            let cities: Vec<Place> = (0..3)
                .map(|_| candidates[cases.usize(..candidates.len())].place)
                .collect();
            for candidate in &mut candidates {
                candidate.place = cities[cases.usize(..cities.len())];
            }
        }
        // The next poll: other free slots, none where there were none; now
        // and then a crowd leaves the servers nearly full.
        let crowd = cases.u8(..4) == 0;
        let next: Vec<Candidate> = candidates
            .iter()
            .map(|c| Candidate {
                free_slots: match c.free_slots {
                    0 => 0,
                    _ if crowd => cases.u32(1..50),
                    _ => cases.u32(1..2000),
                },
                ..*c
            })
            .collect();
        for k in [1, 3, 60] {
            let old = Ranking::new(&client, &candidates, &policy, k);
            match old.rebase(&next, &policy) {
                Some(ranking) => {
                    let fresh = Ranking::new(&client, &next, &policy, k);
                    assert_eq!(
                        format!("{ranking:?}"),
                        format!("{fresh:?}"),
                        "case {case}, k {k}"
                    );
                    rebased += 1;
                }
                None => refused += 1,
            }
        }
    }
    // Both ways are taken, and rebasing is the common one.
    assert!(
        rebased > 2 * refused,
        "{rebased} rebased, {refused} refused"
    );
    assert!(refused > 100, "{rebased} rebased, {refused} refused");
}
