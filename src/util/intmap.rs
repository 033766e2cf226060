//! Hash maps keyed by engine-chosen integers (channel numbers, tokens).
//!
//! The keys are never chosen by a peer, so the DoS resistance of SipHash buys nothing here,
//! while it cost about a tenth of the reactor's instructions per message. One multiply
//! (Fibonacci hashing, as FxHash does) spreads integer keys well enough for hashbrown.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`IntHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Multiplicative hasher for integer keys.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_keys_spread() {
        let n = if cfg!(miri) { 500 } else { 100_000 };
        let mut m: IntMap<u64, u64> = IntMap::default();
        for i in 0..n {
            m.insert(i, i * 2);
        }
        assert_eq!(m.len() as u64, n);
        assert!((0..n).all(|i| m[&i] == i * 2));
    }
}
