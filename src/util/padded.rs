//! Keeping values that different threads write on cache lines of their own.

use std::ops::{Deref, DerefMut};

/// A value aligned (and so padded) to 128 bytes: two 64-byte lines, as adjacent-line
/// prefetchers pull lines in pairs. Fields written by different threads (a lock the reactor
/// takes every loop iteration, a counter the application bumps per message) go in separate
/// `Padded` cells so that one thread's writes do not evict the line another thread reads
/// (false sharing).
#[derive(Default, Debug)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Padded<T> {
    pub(crate) const fn new(value: T) -> Padded<T> {
        Padded(value)
    }
}

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Padded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Padded;

    #[test]
    fn neighbours_do_not_share_a_line() {
        struct Two {
            a: Padded<u8>,
            b: Padded<u8>,
        }
        let t = Two {
            a: Padded::new(1),
            b: Padded::new(2),
        };
        let (a, b) = (&*t.a as *const u8 as usize, &*t.b as *const u8 as usize);
        assert!(a.abs_diff(b) >= 128);
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
        assert_eq!(*t.a + *t.b, 3);
    }
}
