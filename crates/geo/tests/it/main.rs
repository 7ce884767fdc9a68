//! GeoIP lookups through the real maxminddb reader on databases the test kit writes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use balancer_geo::{Code, GeoDb, Place, Records, ThreadGeo};
use balancer_testkit::geoip::{CityNet, asn_db, city_db};

fn networks(country: &'static str) -> Vec<CityNet<'static>> {
    vec![
        CityNet {
            network: "127.0.0.2/32",
            country,
            continent: "EU",
            location: (48.21, 16.37),
        },
        CityNet {
            network: "127.0.1.0/24",
            country: "US",
            continent: "NA",
            location: (40.71, -74.01),
        },
        CityNet {
            network: "2001:db8:1::/48",
            country: "JP",
            continent: "AS",
            location: (35.68, 139.69),
        },
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    // Replace atomically, the way a database updater does.
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn country(place: Place) -> Option<String> {
    place.country.map(|c| c.to_string())
}

#[test]
fn ipv4_ipv6_and_asn_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    let asn = write(
        dir.path(),
        "asn.mmdb",
        &asn_db(&[("127.0.0.0/16", 64500), ("2001:db8::/32", 64501)]),
    );
    let (db, errors) = GeoDb::open(Some(city), Some(asn));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(db.is_enabled());

    let vienna = db.lookup(ip("127.0.0.2"));
    assert_eq!(country(vienna).as_deref(), Some("AT"));
    assert_eq!(vienna.continent, Code::new("EU"));
    assert_eq!(vienna.location.map(|l| l.lat()), Some(48.21));
    assert_eq!(vienna.asn, Some(64500));
    assert_eq!(country(db.lookup(ip("127.0.1.77"))).as_deref(), Some("US"));
    let tokyo = db.lookup(ip("2001:db8:1::5"));
    assert_eq!(country(tokyo).as_deref(), Some("JP"));
    assert_eq!(tokyo.asn, Some(64501));
    // A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6.
    assert_eq!(
        country(db.lookup(ip("::ffff:127.0.0.2"))).as_deref(),
        Some("AT")
    );
    // Unknown addresses are simply unknown.
    assert_eq!(
        db.lookup(ip("10.9.9.9")),
        Place {
            asn: None,
            ..Place::default()
        }
    );
    assert_eq!(db.lookup(ip("2001:db9::1")), Place::default());
}

/// What `lookup_records` names an address's place by: equal for addresses
/// at the same records (and then at the same place), different for another
/// record, and new after a reload; the place is decoded only when asked for.
#[test]
fn records_name_a_place_without_decoding_it() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    let asn = write(dir.path(), "asn.mmdb", &asn_db(&[("127.0.0.0/16", 64500)]));
    let (db, errors) = GeoDb::open(Some(city), Some(asn));
    assert!(errors.is_empty(), "{errors:?}");
    let records = |text: &str| {
        let mut asked = false;
        let records = db.lookup_records(ip(text), |records, _| {
            asked = true;
            records.unwrap()
        });
        assert!(asked);
        records
    };
    let with_place = |text: &str| db.lookup_records(ip(text), |records, place| (records, place()));
    // One network, one City record: the same records, the same place.
    assert_eq!(records("127.0.1.1"), records("127.0.1.200"));
    assert_eq!(with_place("127.0.1.1").1, db.lookup(ip("127.0.1.200")));
    // Another City record, the same ASN record: other records.
    assert_ne!(records("127.0.1.1"), records("127.0.0.2"));
    assert_eq!(with_place("127.0.0.2").1, db.lookup(ip("127.0.0.2")));
    // Nothing known: the records of nothing, the unknown place.
    assert_eq!(records("10.9.9.9"), records("10.1.1.1"));
    assert_eq!(with_place("10.9.9.9").1, Place::default());
    assert_eq!(records("10.9.9.9"), Records::default());
    // A reload gives every record a new identity, the same place.
    let before = records("127.0.1.1");
    assert!(db.reload().is_empty());
    assert_ne!(records("127.0.1.1"), before);
    assert_eq!(with_place("127.0.1.1").1, db.lookup(ip("127.0.1.1")));
    // No database: every address at the records of nothing.
    let off = GeoDb::disabled();
    assert_eq!(
        off.lookup_records(ip("127.0.1.1"), |r, _| r),
        Some(Records::default())
    );
}

/// A thread's own handle finds what the shared one finds, and follows a
/// reload at its next lookup: a database replaced on disk (another country)
/// is what the thread's players are placed by from then on.
#[test]
fn a_thread_handle_follows_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    let (db, _) = GeoDb::open(Some(city), None);
    let db = Arc::new(db);
    let mut held = db.for_thread();
    assert!(held.is_of(&db));
    assert!(!held.is_of(&Arc::new(GeoDb::disabled())));
    let place = |held: &mut ThreadGeo| {
        held.lookup_records(ip("127.0.0.2"), |records, place| (records, place()))
    };
    let (records, before) = place(&mut held);
    assert_eq!(records, db.lookup_records(ip("127.0.0.2"), |r, _| r));
    assert_eq!(country(before).as_deref(), Some("AT"));
    write(dir.path(), "city.mmdb", &city_db(&networks("DE")));
    assert!(db.reload().is_empty());
    let (records_after, after) = place(&mut held);
    assert_ne!(records_after, records, "the reloaded database's records");
    assert_eq!(country(after).as_deref(), Some("DE"));
}

#[test]
fn missing_or_corrupt_files_at_start_turn_geo_off_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = write(dir.path(), "garbage.mmdb", b"this is not a database");
    let truncated = write(
        dir.path(),
        "truncated.mmdb",
        &city_db(&networks("AT"))[..200],
    );
    let (db, errors) = GeoDb::open(Some(dir.path().join("missing.mmdb")), Some(garbage));
    assert!(!db.is_enabled());
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0].to_string().contains("missing.mmdb: cannot read"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1]
            .to_string()
            .contains("garbage.mmdb: not a usable MaxMind database"),
        "{}",
        errors[1]
    );
    assert_eq!(db.lookup(ip("127.0.0.2")), Place::default());
    let (db, errors) = GeoDb::open(Some(truncated), None);
    assert!(!db.is_enabled() && errors.len() == 1, "{errors:?}");
    assert!(!GeoDb::disabled().is_enabled());
}

#[test]
fn a_corrupt_file_on_reload_keeps_the_old_database() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    let (db, _) = GeoDb::open(Some(city), None);
    write(dir.path(), "city.mmdb", b"corrupt");
    let errors = db.reload();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        country(db.lookup(ip("127.0.0.2"))).as_deref(),
        Some("AT"),
        "the old database stays"
    );

    write(dir.path(), "city.mmdb", &city_db(&networks("CH")));
    assert!(db.reload().is_empty());
    assert_eq!(country(db.lookup(ip("127.0.0.2"))).as_deref(), Some("CH"));
}

#[test]
fn a_file_replaced_on_disk_is_picked_up_and_an_unchanged_one_is_not_reread() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    // A file missing at start is loaded once it appears.
    let (db, errors) = GeoDb::open(Some(city), Some(dir.path().join("asn.mmdb")));
    assert_eq!(errors.len(), 1);
    assert!(
        db.reload_if_changed().len() == 1,
        "still missing: one error"
    );
    write(dir.path(), "asn.mmdb", &asn_db(&[("127.0.0.0/16", 64500)]));
    assert!(db.reload_if_changed().is_empty());
    assert_eq!(db.lookup(ip("127.0.0.2")).asn, Some(64500));

    // A different file (another size) replaces the old one.
    let mut nets = networks("DE");
    nets.push(CityNet {
        network: "127.0.2.0/24",
        country: "FR",
        continent: "EU",
        location: (48.86, 2.35),
    });
    write(dir.path(), "city.mmdb", &city_db(&nets));
    assert!(db.reload_if_changed().is_empty());
    assert_eq!(country(db.lookup(ip("127.0.0.2"))).as_deref(), Some("DE"));
    assert_eq!(country(db.lookup(ip("127.0.2.1"))).as_deref(), Some("FR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_concurrent_lookups_never_fail_one() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    let (db, _) = GeoDb::open(Some(city), None);
    let db = Arc::new(db);
    let stop = Arc::new(AtomicBool::new(false));
    let (lookups, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (db, stop, lookups, failures) =
            (db.clone(), stop.clone(), lookups.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    let c = country(db.lookup(ip("127.0.0.2")));
                    if !matches!(c.as_deref(), Some("AT" | "CH")) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    lookups.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for round in 0..40 {
        let code = if round % 2 == 0 { "CH" } else { "AT" };
        write(dir.path(), "city.mmdb", &city_db(&networks(code)));
        assert!(db.reload().is_empty());
        if round % 5 == 0 {
            write(dir.path(), "city.mmdb", b"corrupt");
            assert_eq!(db.reload().len(), 1);
        }
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (lookups, failures) = (
        lookups.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    println!("{lookups} lookups during 48 reloads, {failures} failed");
    assert!(lookups > 1000);
    assert_eq!(failures, 0);
}

#[test]
fn server_places_prefer_the_fleet_config() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "city.mmdb", &city_db(&networks("AT")));
    let (db, _) = GeoDb::open(Some(city), None);
    let graz = balancer_geo::Coordinates::new(47.07, 15.44).unwrap();
    let looked_up = db.server_place(None, None, Some(ip("127.0.0.2")));
    assert_eq!(country(looked_up).as_deref(), Some("AT"));
    assert_eq!(looked_up.location.map(|l| l.lat()), Some(48.21));
    let configured = db.server_place(Some(graz), None, Some(ip("127.0.0.2")));
    assert_eq!(configured.location, Some(graz));
    assert_eq!(configured.continent, Code::new("EU"));
    let moved = db.server_place(None, Code::new("DE"), Some(ip("127.0.0.2")));
    assert_eq!(
        (country(moved).as_deref(), moved.continent),
        (Some("DE"), None)
    );
    let by_name_only = db.server_place(Some(graz), Code::new("AT"), None);
    assert_eq!(
        (by_name_only.location, by_name_only.country),
        (Some(graz), Code::new("AT"))
    );
}
