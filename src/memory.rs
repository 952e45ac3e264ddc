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
//! So the server looks once every [`CHECK_EVERY`]: if the memory that is
//! resident and yet in use by nobody (the process's resident memory less
//! what the allocator has handed out) grew by more than [`TRIM_ABOVE`]
//! since the last trim ([`Trimmer`]), it asks the allocator to release the
//! free pages (`malloc_trim(0)`, which since glibc 2.8 releases whole free
//! pages anywhere in the heap, not only its top). A check reads
//! `/proc/self/statm` and calls `mallinfo2` (a walk over the allocator's
//! free lists; its figures are the main arena's, the loop's own thread's).
//! Under steady load the free memory is mostly reused before it reaches the
//! threshold.
//!
//! Other C libraries (musl) and other systems return freed memory
//! differently; there this is a no-op.

use std::time::Duration;

/// How often the allocator's free memory is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Resident memory in use by nobody that may build up before the allocator
/// is asked to give it back: about 8,000 idle connections' worth.
pub const TRIM_ABOVE: usize = 1024 * 1024;

/// Decides when to trim (one per server). A trim releases free pages but
/// leaves them free in the allocator's books, so "how much is free" alone
/// would ask for a trim every second after the first. What counts is the
/// memory that is resident and yet in use by nobody (resident, less what
/// the allocator has handed out): when that grew by more than
/// [`TRIM_ABOVE`] since the last trim, pages were used and freed again.
/// Looking at the low point of the free bytes instead (an earlier version)
/// misses a burst that comes and goes between two looks after a trim made
/// mid-burst: the free bytes are back where they were, the pages resident
/// again. The 1,500-client storm test then kept 8.3 KiB a connection, in
/// one run of six.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// Resident bytes in use by nobody, right after the last trim; 0 at
    /// first, so the first look trims (a burst may come and go before it).
    settled: usize,
    /// Bytes in use at the last look.
    in_use: usize,
}

impl Trimmer {
    /// Looks at the process and the allocator; trims if the resident
    /// memory in use by nobody grew by more than [`TRIM_ABOVE`] since the
    /// last trim. Says how many bytes were free in the allocator then
    /// (their whole pages are released). `None` if it did not trim (or
    /// cannot, off Linux with glibc).
    pub fn check(&mut self) -> Option<usize> {
        let now = usage()?;
        if !self.should_trim(now) {
            return None;
        }
        trim();
        self.settled = usage().map_or(now.idle, |after| after.idle);
        Some(now.free)
    }

    /// The decision alone. Not while the memory in use is still growing:
    /// a trim in the middle of a burst gives back pages the burst takes
    /// again at once, and the one after it is what counts.
    fn should_trim(&mut self, usage: Usage) -> bool {
        let growing = usage.in_use > self.in_use;
        self.in_use = usage.in_use;
        if usage.idle > self.settled + TRIM_ABOVE {
            return !growing;
        }
        self.settled = self.settled.min(usage.idle);
        false
    }
}

/// What one look at the process and the allocator says.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Resident bytes the allocator has not handed out (the process's own
    /// image and stacks included, which do not move).
    idle: usize,
    /// Bytes handed out.
    in_use: usize,
    /// Bytes free in the allocator's books.
    free: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn usage() -> Option<Usage> {
    // SAFETY: a plain glibc call with no preconditions, returning a struct.
    let info = unsafe { libc::mallinfo2() };
    let in_use = info.uordblks + info.hblkhd;
    Some(Usage {
        idle: resident_bytes()?.saturating_sub(in_use),
        in_use,
        free: info.fordblks,
    })
}

/// The process's resident memory (`/proc/self/statm`, in pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: a plain libc call with no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).ok()?)
}

/// Releases every whole free page in the allocator's heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: a plain glibc call; 0 = keep no padding at the heap's top.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn usage() -> Option<Usage> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn idle(idle: usize, in_use: usize) -> Usage {
        Usage {
            idle,
            in_use,
            free: idle,
        }
    }

    #[test]
    fn the_first_look_trims() {
        // A storm may come and go before it: nothing is known to be needed.
        assert!(Trimmer::default().should_trim(idle(3 * MIB, 0)));
    }

    #[test]
    fn a_burst_between_two_looks_is_trimmed() {
        let mut trimmer = Trimmer {
            settled: 5 * MIB,
            in_use: MIB,
        };
        assert!(!trimmer.should_trim(idle(5 * MIB + MIB / 2, MIB)), "slack");
        // Pages reused and freed again since the last trim: the allocator
        // may hold exactly as many free bytes as then, but they are
        // resident again.
        assert!(trimmer.should_trim(idle(7 * MIB, MIB)));
    }

    #[test]
    fn not_while_the_memory_in_use_grows() {
        let mut trimmer = Trimmer {
            settled: 5 * MIB,
            in_use: MIB,
        };
        assert!(!trimmer.should_trim(idle(7 * MIB, 20 * MIB)), "mid-burst");
        assert!(trimmer.should_trim(idle(30 * MIB, MIB)), "after it");
    }

    #[test]
    fn less_idle_memory_lowers_the_mark() {
        let mut trimmer = Trimmer {
            settled: 5 * MIB,
            in_use: MIB,
        };
        assert!(!trimmer.should_trim(idle(4 * MIB, MIB)));
        assert!(trimmer.should_trim(idle(5 * MIB + MIB / 2, MIB)));
    }
}
