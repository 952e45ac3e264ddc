//! Many cores on one machine (`--workers N`): Tornado's `fork_processes`
//! shape. The parent binds the listening socket once (so port 0 works, and
//! every worker serves the same port), then starts N workers, each its own
//! executable run again with the same flags, which inherit that socket and
//! run one single-threaded loop each. The kernel hands each new connection
//! to one of them. They share rooms through Redis (`--redis`), so the
//! workers are one chat; without it their rooms would split, and more than
//! one worker is refused ([`crate::Config::validate`]).
//!
//! The parent serves nobody: it restarts a worker that dies (logged, and not
//! faster than once a second, so a worker that cannot start does not spin),
//! and on SIGTERM or SIGINT passes SIGTERM on to every worker, waits for each
//! to shut down gracefully (SIGKILL after its shutdown time and a margin),
//! and exits; SIGHUP it passes on as it is (each worker loads its TLS
//! certificate again). Workers are started with `std::process::Command` (a new
//! program, never a `fork()` of a process with threads), each in a process
//! group of its own (a Ctrl-C reaches the parent alone; under systemd, use
//! `KillMode=mixed`), and stop if the parent dies (`PR_SET_PDEATHSIG`).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;

/// The environment variable that tells a worker which descriptor is the
/// listening socket it inherited.
pub const LISTENER_FD_ENV: &str = "EDDY_LISTENER_FD";

/// The environment variable that tells a worker its number (for its logs).
pub const WORKER_ENV: &str = "EDDY_WORKER";

/// A worker that dies sooner than this after starting is restarted only
/// this long after it started.
const RESTART_EVERY: Duration = Duration::from_secs(1);

/// Past a worker's own shutdown time, how long it still has before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(5);

/// This process's worker number, if it is a worker.
pub fn worker_number() -> Option<usize> {
    std::env::var(WORKER_ENV).ok()?.parse().ok()
}

/// Where worker `number`'s metrics listener listens, for `--metrics-addr
/// addr`: each worker has its own loop, and so its own figures and its own
/// health; a scraper lists them all as targets. Port 0 stays 0: each worker
/// a free port, which it logs.
pub fn metrics_addr_of(addr: SocketAddr, number: usize) -> SocketAddr {
    let mut addr = addr;
    if addr.port() != 0 {
        // `Config::validate` refuses a base port whose workers would pass 65535.
        let port = usize::from(addr.port()) + number;
        addr.set_port(u16::try_from(port).unwrap_or(u16::MAX));
    }
    addr
}

/// The listening socket a worker inherited from its parent, if this process
/// is a worker.
pub fn inherited_listener() -> Option<io::Result<TcpListener>> {
    let fd = std::env::var(LISTENER_FD_ENV).ok()?;
    Some(adopt(&fd))
}

fn adopt(fd: &str) -> io::Result<TcpListener> {
    let fd: RawFd = fd.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LISTENER_FD_ENV}={fd:?} is not a descriptor"),
        )
    })?;
    // SAFETY: fstat writes one struct through a valid pointer; a descriptor
    // that is not open makes it fail, which is checked.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LISTENER_FD_ENV}={fd} is not an inherited socket"),
        ));
    }
    // SAFETY: the descriptor is open and a socket (checked above), and
    // nothing else in this process owns it: the parent passed it for this.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    set_inherited(&listener, false)?;
    listener.local_addr()?; // a listening TCP socket, or an error
    Ok(listener)
}

/// Whether `listener` stays open in programs this process starts.
fn set_inherited(listener: &TcpListener, inherited: bool) -> io::Result<()> {
    let flags = if inherited { 0 } else { libc::FD_CLOEXEC };
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One worker process.
struct Worker {
    number: usize,
    child: Option<Child>,
    started: Instant,
}

/// Runs `count` workers on `listener` until SIGTERM or SIGINT, restarting
/// any that dies; each is this executable with `args`. Returns once every
/// worker has exited.
pub fn supervise(
    listener: &TcpListener,
    count: usize,
    args: &[std::ffi::OsString],
    shutdown_timeout: Duration,
) -> io::Result<()> {
    let program = std::env::current_exe()?;
    set_inherited(listener, true)?;
    let fd = listener.as_raw_fd().to_string();
    let spawn = |number: usize| -> io::Result<Child> {
        let mut command = Command::new(&program);
        command
            .args(args)
            .env(LISTENER_FD_ENV, &fd)
            .env(WORKER_ENV, number.to_string())
            // A group of its own: a Ctrl-C at the terminal reaches the
            // parent alone, which passes one SIGTERM on (a worker that got
            // both would take the second for "stop now").
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only prctl, which is async-signal-safe; it touches no
        // memory of the parent's.
        unsafe {
            command.pre_exec(|| {
                // If the parent dies (even by SIGKILL), its workers are
                // told to stop: no orphan keeps the port.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn()
    };
    let mut poll = Poll::new()?;
    let mut signals = Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP])?;
    poll.registry()
        .register(&mut signals, Token(0), Interest::READABLE)?;
    let mut workers: Vec<Worker> = Vec::with_capacity(count);
    for number in 0..count {
        let child = match spawn(number) {
            Ok(child) => child,
            Err(e) => {
                // None left running without a parent to watch them.
                for worker in &mut workers {
                    if let Some(mut child) = worker.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                return Err(e);
            }
        };
        info!("worker {number} started (pid {})", child.id());
        workers.push(Worker {
            number,
            child: Some(child),
            started: Instant::now(),
        });
    }
    let mut events = Events::with_capacity(8);
    let mut stopping: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Restart the dead, unless stopping.
        if stopping.is_none() {
            for worker in workers.iter_mut().filter(|w| w.child.is_none()) {
                if now < worker.started + RESTART_EVERY {
                    continue;
                }
                worker.started = now;
                match spawn(worker.number) {
                    Ok(child) => {
                        info!("worker {} restarted (pid {})", worker.number, child.id());
                        worker.child = Some(child);
                    }
                    Err(e) => error!("worker {}: cannot start: {e}", worker.number),
                }
            }
        }
        if stopping.is_some() && workers.iter().all(|w| w.child.is_none()) {
            info!("every worker has stopped");
            return Ok(());
        }
        let wake = match stopping {
            Some(deadline) => Some(deadline),
            None => workers
                .iter()
                .filter(|w| w.child.is_none())
                .map(|w| w.started + RESTART_EVERY)
                .min(),
        };
        let timeout = wake.map(|at| at.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for signal in signals.pending() {
            if signal == libc::SIGCHLD {
                continue; // reaped below, whatever woke us
            }
            if signal == libc::SIGHUP {
                // Each worker loads its TLS certificate itself.
                info!("SIGHUP: passed on to {} workers", workers.len());
                for child in workers.iter().filter_map(|w| w.child.as_ref()) {
                    signal_child(child, libc::SIGHUP);
                }
                continue;
            }
            if stopping.is_none() {
                info!("signal {signal}: stopping {} workers", workers.len());
                stopping = Some(Instant::now() + shutdown_timeout + KILL_MARGIN);
                for worker in &workers {
                    if let Some(child) = &worker.child {
                        signal_child(child, libc::SIGTERM);
                    }
                }
            }
        }
        for worker in &mut workers {
            let Some(child) = &mut worker.child else {
                continue;
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    if stopping.is_none() {
                        warn!(
                            "worker {} (pid {}) died: {status}; restarting it",
                            worker.number,
                            child.id()
                        );
                    }
                    worker.child = None;
                }
                Ok(None) => {}
                Err(e) => warn!("worker {}: cannot wait for it: {e}", worker.number),
            }
        }
        if let Some(deadline) = stopping
            && Instant::now() >= deadline
        {
            for worker in &mut workers {
                if let Some(mut child) = worker.child.take() {
                    warn!("worker {} did not stop in time: killed", worker.number);
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

fn signal_child(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // child's, not reaped yet (it is reaped only through `child`).
    unsafe { libc::kill(pid, signal) };
}

/// How many workers `--workers 0` means: one per CPU this process may use.
pub fn one_per_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_has_the_metrics_port_after_the_one_before() {
        let base: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(metrics_addr_of(base, 0), base);
        assert_eq!(metrics_addr_of(base, 3).port(), 9103);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            metrics_addr_of(any, 5),
            any,
            "port 0: each its own free port"
        );
    }
}
