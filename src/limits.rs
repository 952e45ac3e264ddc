//! The process's file-descriptor limit (every connection is one), and the
//! listening socket's accept backlog.
//!
//! Linux starts processes with a soft limit (often 1024) below the hard one
//! the administrator allows. A server meant for thousands of clients raises
//! the soft limit to the hard one at startup, as nginx's
//! `worker_rlimit_nofile` does, and sizes its connection cap from it.

use std::io;
use std::os::fd::AsRawFd;

/// How many connections the kernel may hold, handshaken, until the loop
/// accepts them. mio (like std) listens with 128: a burst of clients
/// arriving while the loop is busy (a storm of join lines) overflows that,
/// and the kernel drops their SYNs, which costs each a 1 s retransmission.
/// Linux caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Sets the accept backlog of a listening socket to [`LISTEN_BACKLOG`]:
/// calling `listen` again on a listening socket changes its backlog.
pub fn widen_backlog(listener: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Descriptors kept back from the connection cap: the listener, the
/// poller, the waker, the signal pipe, stdio, log files, and room to accept
/// (and refuse with a 503) while at the cap.
pub const FD_RESERVE: u64 = 64;

/// The soft and hard limits on open files.
pub fn fd_limits() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft limit on open files to the hard limit. Returns the
/// limits before and after: (soft before, soft now, hard).
pub fn raise_fd_limit() -> io::Result<(u64, u64, u64)> {
    let (soft, hard) = fd_limits()?;
    if soft < hard {
        let limit = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (now, _) = fd_limits()?;
    Ok((soft, now, hard))
}

/// The default connection cap: what the soft limit allows, minus the reserve.
pub fn default_max_connections() -> usize {
    let soft = fd_limits().map_or(1024, |(soft, _)| soft);
    usize::try_from(soft.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_read_sensibly_and_raising_reaches_the_hard_one() {
        let (soft, hard) = fd_limits().unwrap();
        assert!(soft > 0 && soft <= hard);
        let (_, now, hard_after) = raise_fd_limit().unwrap();
        assert_eq!((now, hard_after), (hard, hard));
        assert_eq!(
            default_max_connections() as u64,
            hard.saturating_sub(FD_RESERVE).max(1)
        );
    }
}
