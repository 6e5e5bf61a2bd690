//! Hash maps keyed by ids this side hands out (request ids, packet ids, wire ids).
//!
//! Such keys are small counters the connection allocates itself, never values a peer
//! chooses, so SipHash's resistance to chosen keys buys nothing, while these maps are
//! touched several times per publish. [`IdHasher`] hashes them with one multiplication
//! (Fibonacci hashing). Maps keyed by names (the sub-device registry) keep the standard
//! hasher: names come from devices and from the server.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hash map keyed by an id this side allocated.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Removes `key` from `map`. Most of these maps are empty most of the time (no split
/// command, no connect or internal publish outstanding) while every publish asks them:
/// an empty map is answered without hashing or probing.
pub(crate) fn take<K: std::hash::Hash + Eq, V>(map: &mut IdMap<K, V>, key: &K) -> Option<V> {
    if map.is_empty() {
        None
    } else {
        map.remove(key)
    }
}

/// One multiplication by 2^64/φ; the high bits, which hashbrown reads first, mix well.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher of [`IdMap`]: Fibonacci hashing of integer ids.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; kept correct for any other key type.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(GOLDEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_high_bits() {
        // hashbrown takes its 7-bit tag from the top of the hash: consecutive ids must not
        // share it, or every probe would compare keys.
        let tags: std::collections::HashSet<u64> = (0u64..128)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_u64(id);
                h.finish() >> 57
            })
            .collect();
        assert!(tags.len() > 64, "only {} distinct tags", tags.len());
    }

    #[test]
    fn a_map_of_ids_behaves_like_a_map() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
        assert!((0..10_000).step_by(2).all(|i| m.remove(&i).is_some()));
        assert_eq!(m.len(), 5_000);
    }
}
