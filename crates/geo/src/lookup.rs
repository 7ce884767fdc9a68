//! MaxMind lookups: City (or Country) and ASN databases, swapped atomically on reload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use maxminddb::Reader;
use serde::Deserialize;

use crate::{Code, Coordinates, decoded};

/// What geo knows about an address; each part may be unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Place {
    /// ISO country code.
    pub country: Option<Code>,
    /// Continent code (`EU`, `NA`, ...).
    pub continent: Option<Code>,
    /// Approximate coordinates.
    pub location: Option<Coordinates>,
    /// Autonomous system number.
    pub asn: Option<u32>,
}

/// A database that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a usable MaxMind database.
    #[error("{}: not a usable MaxMind database: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },
}

/// Which records of the loaded databases an address maps to: an identity of
/// its [`Place`] that costs a walk of the trees but no decoding. Addresses
/// with equal `Records` are at equal places; a reloaded database gives its
/// records new identities. So a caller can keep what it derives from a place
/// (the redirector: rankings) by `Records`, and skip the place itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Records {
    /// The City record's [`decoded::key`], 0 for none.
    city: u64,
    /// The ASN record's, 0 for none.
    asn: u64,
}

impl Records {
    /// Records of a test's choosing, for tables keyed by them.
    pub fn from_parts(city: u64, asn: u64) -> Records {
        Records { city, asn }
    }
}

/// The load id of `db` and the record `ip` maps to in it, if any.
fn found(
    db: &Option<Arc<Loaded>>,
    ip: IpAddr,
) -> Option<(u32, maxminddb::LookupResult<'_, Vec<u8>>)> {
    let db = db.as_deref()?;
    Some((db.id, db.reader.lookup(ip).ok()?))
}

/// The identity of the record `found` in load `load` (0: no record, or no
/// database); `None` if it has none (a data section over 4 GiB).
fn record_id(found: &Option<(u32, maxminddb::LookupResult<'_, Vec<u8>>)>) -> Option<u64> {
    match found {
        None => Some(0),
        Some((load, found)) => found
            .offset()
            .map_or(Some(0), |offset| decoded::key(*load, offset)),
    }
}

/// [`GeoDb::lookup_records`] in `databases`.
fn records_in<R>(
    databases: &Databases,
    ip: IpAddr,
    with: impl FnOnce(Option<Records>, &mut dyn FnMut() -> Place) -> R,
) -> R {
    let ip = canonical(ip);
    let (city, asn) = (found(&databases.city, ip), found(&databases.asn, ip));
    let records = match (record_id(&city), record_id(&asn)) {
        (Some(city), Some(asn)) => Some(Records { city, asn }),
        _ => None,
    };
    let mut place = || {
        let mut place = Place::default();
        if let Some((load, found)) = &city {
            // The City database has no ASN; the ASN database adds it below.
            place = decoded::city(*load, found, || {
                found
                    .decode::<CityRecord<'_>>()
                    .ok()
                    .flatten()
                    .map(CityRecord::place)
                    .unwrap_or_default()
            });
        }
        if let Some((load, found)) = &asn {
            place.asn = decoded::asn(*load, found, || {
                found
                    .decode::<AsnRecord>()
                    .ok()
                    .flatten()
                    .and_then(|r| r.autonomous_system_number)
            });
        }
        place
    };
    with(records, &mut place)
}

/// A thread's hold on a [`GeoDb`]'s current databases, checked with one
/// plain load per lookup: [`GeoDb::lookup_records`] takes a hold per lookup,
/// arc-swap's bookkeeping with atomic writes. A thread keeps databases
/// replaced by a reload until its next lookup.
pub struct ThreadGeo(arc_swap::Cache<CurrentOf, Arc<Databases>>);

impl ThreadGeo {
    /// Whether this is a handle on `db`.
    pub fn is_of(&self, db: &Arc<GeoDb>) -> bool {
        std::ptr::eq(self.0.arc_swap(), &db.current)
    }

    /// [`GeoDb::lookup_records`].
    pub fn lookup_records<R>(
        &mut self,
        ip: IpAddr,
        with: impl FnOnce(Option<Records>, &mut dyn FnMut() -> Place) -> R,
    ) -> R {
        records_in(self.0.load(), ip, with)
    }
}

/// What a [`ThreadGeo`] watches: a [`GeoDb`]'s current databases.
struct CurrentOf(Arc<GeoDb>);

impl std::ops::Deref for CurrentOf {
    type Target = ArcSwap<Databases>;

    fn deref(&self) -> &ArcSwap<Databases> {
        &self.0.current
    }
}

/// A database read fully into memory, with the file's identity at read time.
struct Loaded {
    reader: Reader<Vec<u8>>,
    stamp: Option<(SystemTime, u64)>,
    /// Distinguishes this load from every other in the process, so records
    /// decoded from it are never taken for another load's ([`decoded`]).
    id: u32,
}

#[derive(Default)]
struct Databases {
    city: Option<Arc<Loaded>>,
    asn: Option<Arc<Loaded>>,
}

/// The GeoIP databases of a process. Lookups read an atomically swapped
/// snapshot, so a reload never makes a lookup fail or wait.
pub struct GeoDb {
    city_path: Option<PathBuf>,
    asn_path: Option<PathBuf>,
    current: ArcSwap<Databases>,
}

impl GeoDb {
    /// No databases: every lookup is unknown, and ranking uses capacity alone.
    pub fn disabled() -> Self {
        GeoDb {
            city_path: None,
            asn_path: None,
            current: ArcSwap::from_pointee(Databases::default()),
        }
    }

    /// Opens the City (or Country) and ASN databases. A missing or corrupt file
    /// turns that part of geo off; the errors are returned for a warning.
    pub fn open(city: Option<PathBuf>, asn: Option<PathBuf>) -> (Self, Vec<DbError>) {
        let mut errors = Vec::new();
        let mut load = |path: &Option<PathBuf>| match path.as_deref().map(load) {
            Some(Ok(loaded)) => Some(Arc::new(loaded)),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
            None => None,
        };
        let databases = Databases {
            city: load(&city),
            asn: load(&asn),
        };
        let db = GeoDb {
            city_path: city,
            asn_path: asn,
            current: ArcSwap::from_pointee(databases),
        };
        (db, errors)
    }

    /// Whether any database is loaded.
    pub fn is_enabled(&self) -> bool {
        let current = self.current.load();
        current.city.is_some() || current.asn.is_some()
    }

    /// Where `ip` is, as far as the databases know. Never fails: what cannot
    /// be found is unknown. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Place {
        self.lookup_records(ip, |_, place| place())
    }

    /// [`lookup`](Self::lookup) for a caller that keeps what it derives from
    /// a place in a table of its own: `with` gets the [`Records`] `ip` maps
    /// to, found by walking the trees without decoding anything (`None` when
    /// they cannot be named, for a data section over 4 GiB), and a function
    /// returning the place, to call only if the caller does not know it yet.
    pub fn lookup_records<R>(
        &self,
        ip: IpAddr,
        with: impl FnOnce(Option<Records>, &mut dyn FnMut() -> Place) -> R,
    ) -> R {
        records_in(&self.current.load(), ip, with)
    }

    /// A thread's own handle for [`lookup_records`](Self::lookup_records).
    pub fn for_thread(self: &Arc<Self>) -> ThreadGeo {
        ThreadGeo(arc_swap::Cache::new(CurrentOf(self.clone())))
    }

    /// Where a server is: the fleet config's location and country when given,
    /// the rest (and whatever the config leaves out) from looking up its
    /// address. A server known by host name only has what the config says; geo
    /// does no DNS.
    pub fn server_place(
        &self,
        location: Option<Coordinates>,
        country: Option<Code>,
        address: Option<IpAddr>,
    ) -> Place {
        let mut place = address.map(|ip| self.lookup(ip)).unwrap_or_default();
        if location.is_some() {
            place.location = location;
        }
        if country.is_some() && country != place.country {
            // The looked-up continent belongs to another country.
            place.continent = None;
            place.country = country;
        }
        place
    }

    /// Re-reads both files. A file that cannot be used keeps the database
    /// already loaded (if any); its error is returned.
    pub fn reload(&self) -> Vec<DbError> {
        self.reload_where(|_, _| true)
    }

    /// Re-reads the files whose modification time or size changed since they
    /// were read (a database replaced on disk). Cheap enough to call every few seconds.
    pub fn reload_if_changed(&self) -> Vec<DbError> {
        self.reload_where(|path, loaded| loaded.is_none_or(|l| l.stamp != stamp(path)))
    }

    fn reload_where(&self, changed: impl Fn(&Path, Option<&Loaded>) -> bool) -> Vec<DbError> {
        let current = self.current.load_full();
        let mut errors = Vec::new();
        let mut next = |path: &Option<PathBuf>, old: &Option<Arc<Loaded>>| match path {
            Some(path) if changed(path, old.as_deref()) => match load(path) {
                Ok(loaded) => Some(Arc::new(loaded)),
                Err(e) => {
                    errors.push(e);
                    old.clone()
                }
            },
            _ => old.clone(),
        };
        let databases = Databases {
            city: next(&self.city_path, &current.city),
            asn: next(&self.asn_path, &current.asn),
        };
        let unchanged =
            ptr_eq(&databases.city, &current.city) && ptr_eq(&databases.asn, &current.asn);
        if !unchanged {
            self.current.store(Arc::new(databases));
        }
        errors
    }
}

fn ptr_eq(a: &Option<Arc<Loaded>>, b: &Option<Arc<Loaded>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Reads a database into memory and checks it can answer lookups.
fn load(path: &Path) -> Result<Loaded, DbError> {
    let stamp = stamp(path);
    let bytes = std::fs::read(path).map_err(|source| DbError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| DbError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let reader = Reader::from_source(bytes).map_err(|e| corrupt(e.to_string()))?;
    // A damaged search tree or data section shows on lookups, not at open.
    for probe in [
        IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        match reader.lookup(probe) {
            Ok(result) => {
                result
                    .decode::<serde::de::IgnoredAny>()
                    .map_err(|e| corrupt(e.to_string()))?;
            }
            // An IPv6 probe in an IPv4-only database.
            Err(maxminddb::MaxMindDbError::InvalidInput { .. }) => {}
            Err(e) => return Err(corrupt(e.to_string())),
        }
    }
    Ok(Loaded {
        reader,
        stamp,
        id: decoded::next_load_id(),
    })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// `::ffff:1.2.3.4` is `1.2.3.4`: dual-stack sockets report IPv4 clients that way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The parts of a City or Country record the ranking needs; the rest is skipped.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<ContinentCode<'a>>,
    #[serde(default)]
    location: Option<LocationRecord>,
}

impl CityRecord<'_> {
    /// The record as a place without an ASN (that comes from the other database).
    fn place(self) -> Place {
        let country = self.country.or(self.registered_country);
        Place {
            country: country.and_then(|c| c.iso_code).and_then(Code::new),
            continent: self.continent.and_then(|c| c.code).and_then(Code::new),
            location: self
                .location
                .and_then(|l| Coordinates::new(l.latitude?, l.longitude?).ok()),
            asn: None,
        }
    }
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ContinentCode<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

#[derive(Deserialize)]
struct AsnRecord {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}
