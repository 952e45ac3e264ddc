//! Giving memory freed after a burst back to the system.
//!
//! A storm of joins fills every connection's output queue for a moment:
//! tens of megabytes of frames and queue rings, freed a moment later.
//! glibc's allocator keeps what is freed inside its heap for reuse, and only
//! returns the heap's very top to the system, so after a storm the process's
//! RSS stays many times what its connections hold (measured: 10,000 clients
//! with every join announced left 39.1 MB, of which a trim gave back all but
//! 6.4; a 1,500-client storm kept 19.7 KiB a connection 10 s later without
//! one). Calling `malloc_trim` after every turn would cost more than the
//! memory is worth; never calling it leaves the memory with the process
//! until the next storm.
//!
//! So the server looks once every [`CHECK_EVERY`]: if more than
//! [`TRIM_ABOVE`] became free in the allocator since it last looked
//! ([`Trimmer`]), it asks the allocator to release the free pages
//! (`malloc_trim(0)`, which since glibc 2.8 releases whole free pages
//! anywhere in the heap, not only its top). A check is one `mallinfo2` (a
//! walk over the allocator's free lists). Under steady load the free memory
//! is mostly reused before it reaches the threshold.
//!
//! A trim can only release pages that hold nothing live, so what a storm
//! leaves depends as much on what is allocated *during* it and kept: one
//! small allocation per connection, made amid the storm's short-lived
//! frames and queues, ends up one on each of many pages and pins them all.
//! Each connection's timer used to be such a box (16 bytes); a 1,500-client
//! storm then left 0.8–1.2 KiB a connection after the trim, and 0.58–0.60
//! since connection timers need no allocation ([`crate::ioloop::IoLoop::call_at_fn`]).
//! Keeping the connections' entries in one array instead of a box each
//! measured no different (0.53–0.60), so they stay boxed (`server.rs`).
//!
//! Other C libraries (musl) and other systems return freed memory
//! differently; there this is a no-op.

use std::time::Duration;

/// How often the allocator's free memory is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Free memory the allocator may keep before it is asked to give it back:
/// about 8,000 idle connections' worth.
pub const TRIM_ABOVE: usize = 1024 * 1024;

/// Decides when to trim (one per server). A trim releases free pages but
/// leaves them free in the allocator's books, so "how much is free" alone
/// would ask for a trim every second after the first. Two signs that free
/// pages are resident again:
///
/// - more became free since the least there was (pages reused, then freed
///   again);
/// - the process grew since the last trim while over [`TRIM_ABOVE`] is free.
///   The first sign alone misses a storm longer than a check: a trim in its
///   middle, the rest of the storm reusing the released pages (they are
///   faulted in again) and freeing them, the free total no higher than at
///   that trim. Measured: one 1,500-client storm in five then kept 2.5 KiB
///   a connection for good (the scale test's failure); RSS is what shows it.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The fewest free bytes seen since the last trim.
    low: usize,
    /// The resident size right after the last trim.
    resident_after_trim: usize,
}

impl Trimmer {
    /// Looks at the allocator; trims if free pages may be resident (see the
    /// type's docs), and says how many bytes were free then (their whole
    /// pages are released). `None` if it did not trim (or cannot, off
    /// glibc).
    pub fn check(&mut self) -> Option<usize> {
        let free = free_bytes()?;
        self.low = self.low.min(free);
        let grew = resident_bytes().saturating_sub(self.resident_after_trim) > TRIM_ABOVE;
        if free <= self.low + TRIM_ABOVE && !(grew && free > TRIM_ABOVE) {
            return None;
        }
        trim();
        // Still free in the allocator's books, whose pages are released.
        self.low = free_bytes()?;
        self.resident_after_trim = resident_bytes();
        Some(free)
    }
}

/// The process's resident size, from `/proc/self/statm` (its second field,
/// in pages); 0 if it cannot be read (then only the free total decides).
fn resident_bytes() -> usize {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<usize>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(usize::try_from(page).unwrap_or(4096))
}

/// The bytes glibc's allocator holds free (in use by nobody).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> Option<usize> {
    // SAFETY: a plain glibc call with no preconditions, returning a struct.
    Some(unsafe { libc::mallinfo2() }.fordblks)
}

/// Releases every whole free page in the allocator's heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: a plain glibc call; 0 = keep no padding at the heap's top.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> Option<usize> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
