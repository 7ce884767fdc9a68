//! Benchmark (not a test): one GeoIP lookup plus ranking 50 candidates, the
//! work geo adds to every redirect. Goal: under 2 µs per request on one core.
//!
//! `cargo bench -p balancer-geo --bench lookup_and_rank` (`cargo xtask bench`
//! runs it pinned to one CPU and records the result in BENCHMARKS.md).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use balancer_geo::{
    Candidate, Client, Code, Coordinates, GeoDb, Place, RankPolicy, rank, rank_top,
};
use balancer_testkit::geoip::{CityNet, asn_db, city_db};

const ROUNDS: usize = 7;

/// Iterations per round; `BENCH_ITERATIONS` lowers it for profiling under callgrind.
fn iterations() -> usize {
    std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let countries = ["AT", "DE", "US", "JP", "FR", "BR", "ZA", "AU"];
    let continents = ["EU", "EU", "NA", "AS", "EU", "SA", "AF", "OC"];
    // 16,384 networks: a tree of realistic depth for the lookup.
    let names: Vec<String> = (0..16_384u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let mut rng = fastrand::Rng::with_seed(1);
    let nets: Vec<CityNet<'_>> = names
        .iter()
        .map(|n| {
            let c = rng.usize(..countries.len());
            CityNet {
                network: n,
                country: countries[c],
                continent: continents[c],
                location: (rng.f64() * 140.0 - 70.0, rng.f64() * 360.0 - 180.0),
            }
        })
        .collect();
    std::fs::write(dir.path().join("city.mmdb"), city_db(&nets)).unwrap();
    let asns: Vec<(&str, u32)> = names
        .iter()
        .map(|n| (n.as_str(), 64_500 + rng.u32(..100)))
        .collect();
    std::fs::write(dir.path().join("asn.mmdb"), asn_db(&asns)).unwrap();
    let (db, errors) = GeoDb::open(
        Some(dir.path().join("city.mmdb")),
        Some(dir.path().join("asn.mmdb")),
    );
    assert!(errors.is_empty());

    let candidates: Vec<Candidate> = (0..50)
        .map(|_| {
            let c = rng.usize(..countries.len());
            Candidate {
                place: Place {
                    country: Code::new(countries[c]),
                    continent: Code::new(continents[c]),
                    location: Coordinates::new(rng.f64() * 140.0 - 70.0, rng.f64() * 360.0 - 180.0)
                        .ok(),
                    asn: Some(64_500 + rng.u32(..100)),
                },
                free_slots: rng.u32(1..500),
                limit: Some(500),
                weight: 100,
                ipv4: true,
                ipv6: true,
            }
        })
        .collect();
    let clients: Vec<IpAddr> = (0..1024)
        .map(|_| IpAddr::V4(Ipv4Addr::new(10, rng.u8(..64), rng.u8(..), rng.u8(..))))
        .collect();
    let policy = RankPolicy::default();
    let mut draw = fastrand::Rng::with_seed(2);

    let iterations = iterations();
    // `BENCH_ONLY=rank_top` runs only the cases whose label contains it (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let measure = |label: &str, work: &mut dyn FnMut(usize)| {
        if !label.contains(&only) {
            return;
        }
        let mut per_op: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                for i in 0..iterations {
                    work(i);
                }
                started.elapsed().as_nanos() as f64 / iterations as f64
            })
            .collect();
        per_op.sort_by(f64::total_cmp);
        println!(
            "{label}: median {:.0} ns/op (min {:.0}, max {:.0}; {ROUNDS} rounds of {iterations})",
            per_op[ROUNDS / 2],
            per_op[0],
            per_op[ROUNDS - 1]
        );
    };
    // The 1,024 clients' records are decoded once per thread, then found by offset.
    measure("lookup", &mut |i| {
        black_box(db.lookup(clients[i % clients.len()]));
    });
    // Every record new to the thread: each round loads the databases afresh
    // (a new load is never taken for an old one) and looks up one address in
    // each of the 16,384 networks.
    let label = "lookup, every record decoded (a player from a place not seen before)";
    if label.contains(&only) {
        let mut per_op: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let (fresh, errors) = GeoDb::open(
                    Some(dir.path().join("city.mmdb")),
                    Some(dir.path().join("asn.mmdb")),
                );
                assert!(errors.is_empty());
                let started = Instant::now();
                for network in 0..16_384u32 {
                    let address = Ipv4Addr::new(10, (network / 256) as u8, network as u8, 1);
                    black_box(fresh.lookup(IpAddr::V4(address)));
                }
                started.elapsed().as_nanos() as f64 / 16_384.0
            })
            .collect();
        per_op.sort_by(f64::total_cmp);
        println!(
            "{label}: median {:.0} ns/op (min {:.0}, max {:.0}; {ROUNDS} rounds of 16384)",
            per_op[ROUNDS / 2],
            per_op[0],
            per_op[ROUNDS - 1]
        );
    }
    let place = db.lookup(clients[0]);
    measure("rank 50 candidates", &mut |_| {
        black_box(rank(
            &Client { place, ipv6: false },
            &candidates,
            &policy,
            &mut draw,
        ));
    });
    measure("lookup + rank 50 candidates (full order)", &mut |i| {
        let place = db.lookup(clients[i % clients.len()]);
        black_box(rank(
            &Client { place, ipv6: false },
            &candidates,
            &policy,
            &mut draw,
        ));
    });
    // What a redirect does: the first choice plus two spares.
    measure("lookup + rank_top(3) of 50 candidates", &mut |i| {
        let place = db.lookup(clients[i % clients.len()]);
        black_box(rank_top(
            &Client { place, ipv6: false },
            &candidates,
            &policy,
            &mut draw,
            3,
        ));
    });
}
