//! Geography for the balancer: where is a player, and in which order should the
//! candidate servers be tried.
//!
//! - [`GeoDb`]: MaxMind City/Country and ASN lookups, IPv4 and IPv6, reloadable
//!   while lookups run (they never fail or block because of a reload).
//! - [`rank`]: a pure function ordering candidates by network, country,
//!   continent and distance, then spreading players over near-equals in
//!   proportion to free slots times weight, with an injected random source.
//! - [`CountryRule`]: per-stream licensing rules.
//!
//! Architecture invariant: this crate does no network I/O; the only I/O is
//! reading database files, in [`GeoDb::open`] and the reload calls.

mod code;
mod coordinates;
mod decoded;
mod key_hasher;
mod lookup;
mod rank;

pub use code::{Code, CountryRule};
pub use coordinates::{Coordinates, CoordinatesError};
pub use key_hasher::KeyHasher;
pub use lookup::{DbError, GeoDb, Place, Records, ThreadGeo};
pub use rank::{
    Candidate, Client, Closeness, Order, RankPolicy, Ranking, closeness, rank, rank_top,
};
