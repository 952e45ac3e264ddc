//! Random bits from the operating system (`getrandom`), for the few things
//! that must not be guessed or repeated: an epoch's name, the resume
//! tokens' key, the key shared through Redis, a server's id base, and the
//! reconnect jitter. One place, so that none of them can end up with zeros.
//!
//! If the OS has no randomness to give (not seen on Linux after boot), std's
//! per-process random hash keys (`RandomState`, itself seeded from the OS
//! once) hashed with a counter are used instead, and that is logged once:
//! weaker, but never the same in two processes or two calls.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::error;

/// Fills `bytes` with random bits.
pub fn fill(bytes: &mut [u8]) {
    if let Err(e) = getrandom::fill(bytes) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            error!("no randomness from the OS ({e}); using std's random hash keys instead");
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let state = RandomState::new();
        for chunk in bytes.chunks_mut(8) {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let word = state.hash_one(n).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// A random `u64`.
pub fn u64() -> u64 {
    let mut bits = [0u8; 8];
    fill(&mut bits);
    u64::from_le_bytes(bits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_differ_and_fill_every_byte() {
        assert_ne!(super::u64(), super::u64());
        let mut a = [0u8; 37];
        let mut b = [0u8; 37];
        super::fill(&mut a);
        super::fill(&mut b);
        assert_ne!(a, b);
        // 37 random bytes all zero: one chance in 2^296.
        assert!(a.iter().any(|&x| x != 0));
    }
}
