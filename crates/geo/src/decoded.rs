//! GeoIP records decoded once per thread. Many addresses share one record (a
//! city's networks, an operator's ranges), and decoding a City record (names in
//! eight languages skipped field by field) costs more than finding it in the
//! tree. So a lookup still walks the tree for every address, and decodes only
//! the records this thread has not decoded yet; maxminddb exposes the record's
//! offset for exactly this ([`maxminddb::LookupResult::offset`]).
//!
//! Each thread keeps its own table, so lookups never wait for one another. A
//! table is bounded: when full, it starts over.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU32, Ordering};

use maxminddb::LookupResult;

use crate::{KeyHasher, Place};

/// Records kept per thread and database kind. A City record costs about 80
/// bytes here, so a full table is about 1.3 MB; GeoLite2-City's records for one
/// country's crowd fit many times over.
const CAPACITY: usize = 16_384;

/// A new id for each database load: the tables key records by load and
/// offset, so a reloaded file's records are never confused with the old ones.
pub(crate) fn next_load_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static CITY: RefCell<Table<Place>> = RefCell::new(Table::default());
    static ASN: RefCell<Table<Option<u32>>> = RefCell::new(Table::default());
}

/// The City part of a place for the record `found` of load `load`, decoded by
/// `decode` the first time this thread sees the record.
pub(crate) fn city<S: AsRef<[u8]>>(
    load: u32,
    found: &LookupResult<'_, S>,
    decode: impl FnOnce() -> Place,
) -> Place {
    cached(&CITY, load, found.offset(), decode)
}

/// The ASN for the record `found` of load `load`, as [`city`] does it.
pub(crate) fn asn<S: AsRef<[u8]>>(
    load: u32,
    found: &LookupResult<'_, S>,
    decode: impl FnOnce() -> Option<u32>,
) -> Option<u32> {
    cached(&ASN, load, found.offset(), decode)
}

fn cached<T: Copy + Default + 'static>(
    table: &'static std::thread::LocalKey<RefCell<Table<T>>>,
    load: u32,
    offset: Option<usize>,
    decode: impl FnOnce() -> T,
) -> T {
    // No record for the address: nothing to decode.
    let Some(offset) = offset else {
        return T::default();
    };
    // A data section over 4 GiB has no key here (no real database is that large).
    let Some(key) = key(load, offset) else {
        return decode();
    };
    table.with(|table| {
        if let Some(value) = table.borrow().map.get(&key) {
            return *value;
        }
        let value = decode();
        let mut table = table.borrow_mut();
        if table.map.len() >= CAPACITY {
            table.map.clear();
        }
        table.map.insert(key, value);
        value
    })
}

/// The key of the record at `offset` of load `load`: never 0 (load ids start
/// at 1); `None` for an offset past 4 GiB (no real database is that large).
pub(crate) fn key(load: u32, offset: usize) -> Option<u64> {
    let offset = u32::try_from(offset).ok()?;
    Some((u64::from(load) << 32) | u64::from(offset))
}

/// Decoded records by load and offset.
struct Table<T> {
    map: HashMap<u64, T, BuildHasherDefault<KeyHasher>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            map: HashMap::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_starts_over_and_still_answers() {
        thread_local! {
            static TEST: RefCell<Table<Option<u32>>> = RefCell::new(Table::default());
        }
        let mut decodes = 0;
        for offset in 0..CAPACITY + 10 {
            let value = cached(&TEST, 7, Some(offset), || {
                decodes += 1;
                Some(offset as u32)
            });
            assert_eq!(value, Some(offset as u32));
        }
        assert_eq!(decodes, CAPACITY + 10);
        // The last few are kept; another load's record at the same offset is not theirs.
        assert_eq!(
            cached(&TEST, 7, Some(CAPACITY + 5), || None),
            Some((CAPACITY + 5) as u32)
        );
        assert_eq!(cached(&TEST, 8, Some(CAPACITY + 5), || None), None);
        assert!(TEST.with(|t| t.borrow().map.len()) <= CAPACITY);
        // No record: nothing decoded.
        assert_eq!(cached(&TEST, 7, None, || Some(1)), None);
    }
}
