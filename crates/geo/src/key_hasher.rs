//! A fast hasher for the small tables geo and the redirector keep per thread.

use std::hash::Hasher;

/// A hasher for small keys the process makes itself: database ids and record
/// offsets, places from the GeoIP database. SipHash, the standard one, costs
/// as much as the rest of a cached lookup; this one is a multiply per word.
/// It resists no chosen keys, and these keys are not a player's choice: a
/// player picks an address, not the place or record it maps to, and the
/// tables it serves are small and bounded.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(value.into());
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(value.into());
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(value.into());
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }

    fn write_u64(&mut self, value: u64) {
        // A folded multiply (as in wyhash): the high half of the product,
        // where the mixing is, folded onto the low bits that pick the bucket.
        let product = u128::from(self.0 ^ value) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasherDefault;

    #[test]
    fn keys_spread_over_buckets() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHasher>::default();
        // Offsets of one load, as a database lays them out: close together.
        let mut low_bits: Vec<u64> = (0..1024u64)
            .map(|offset| build.hash_one((1u64 << 32) | (offset * 64)) & 1023)
            .collect();
        low_bits.sort_unstable();
        low_bits.dedup();
        assert!(low_bits.len() > 600, "{} of 1024 buckets", low_bits.len());
    }
}
