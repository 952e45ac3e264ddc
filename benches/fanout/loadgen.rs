//! The load generator: N WebSocket clients on one thread (or a few), each
//! thread a small mio loop of its own (so the generator is a peer of the
//! server in design, and cheap per client).
//!
//! A run has two phases. **Connect**: every client opens, upgrades, and the
//! run waits until every welcome and every join line has arrived (with the
//! seed's protocol that is N(N−1)/2 join lines). **Send**: S of the clients
//! send M lines each (64 bytes unless the plan says otherwise), carrying the
//! sender, the line's number and the time of sending; every client checks
//! each line it receives (per sender, in order, none missing, none twice)
//! and records its latency.
//!
//! Where the server numbers its lines (Eddy's `"seq"`, the room's sequence,
//! dense and the same for every client), each client also checks that the
//! numbers it sees go up by exactly one. A `gap` notice owns up to lines
//! `from..=to` lost: they are tallied, and the next number must follow `to`.
//! A `reset` notice (a new epoch) starts the check afresh. The peers number
//! nothing, and only the first check applies to them.
//!
//! Rooms (`rooms` > 1, Eddy and the uWebSockets peer only): client `k`
//! joins room `r<k mod rooms>` (`/soc?room=r<k mod rooms>`), so sender `s`
//! speaks in room `s mod rooms`. Each client then expects the lines of its
//! own room's senders only, and checks them as above; a line of a sender
//! from another room is counted apart (it must never come), and so is a
//! welcome that does not name the client's room. The welcome's `head` (the
//! room's last number) is where the client's check of the room's numbers
//! starts (for every server that sends one): in a new room (head 0) the
//! first line must be 1. Each client hears only its own room's joins.
//!
//! Closed loop: a sender sends its next line when its previous one has come
//! back to it. Open loop (`rate`): the senders together send `rate` lines a
//! second on a fixed schedule, whatever comes back.
//!
//! Slow readers (`slow_percent`): that share of the non-senders read through
//! a token bucket of `slow_bytes_per_s` once the send phase begins (while
//! connecting they read at full speed, so the connect phase is the same as
//! with every client fast). The send phase then has two ends: when every
//! fast client has had every line (the figures of the run), and, later,
//! when every slow reader has (how long after the last line was sent is
//! reported). Both must happen within `send_limit`.
//!
//! TLS (`tls`, for Eddy serving wss://): each client then has a rustls
//! [`ClientConnection`] beside its socket, driven sans-I/O as the server
//! drives its own: the socket is read as a plain client's is, into the
//! loop's scratch buffer, and those bytes are handed to rustls
//! (`read_tls` from the buffer, `process_new_packets`), whose plaintext
//! (`reader()`) is what the frame parser sees; what the client sends is
//! written as plaintext into rustls (`writer()`) and its records onto the
//! socket (`write_tls`) until it would block. The upgrade request is
//! queued at once: rustls holds it until the handshake is done. Then
//! everything else is as over plain TCP: the same lines, the same checks.
//! A client without TLS carries no TLS state (`None`), and pays one branch
//! a read and a flush for it. The clients' crypto runs on the load
//! generator's CPU, as everything of theirs does: it shows in the load
//! generator's CPU, never in the server's.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Bytes of every chat line sent, unless the plan says otherwise.
pub const LINE_BYTES: usize = 64;

/// How many times slower than a fast client a slow reader reads.
pub const SLOW_FACTOR: f64 = 10.0;

/// How many handshakes a thread keeps in flight at once (the listen backlog
/// is finite; a storm of SYNs would only measure retransmission timers).
const HANDSHAKES_IN_FLIGHT: usize = 128;

/// A slow reader's socket receive buffer (`SO_RCVBUF`; Linux doubles it).
/// Behind a slow link a reader's backlog waits at the server; on loopback,
/// with the kernel's autotuning, megabytes of it would wait in this
/// process's receive buffer instead, out of the server's sight. A small
/// fixed buffer puts the backlog back where a slow link would.
const SLOW_RECEIVE_BUFFER: usize = 16 * 1024;

/// A slow reader's TCP segment size (`TCP_MAXSEG`), an Ethernet path's.
/// The server's kernel sizes a socket's send buffer from its congestion
/// window, counted in segments; at loopback's 64 KiB segments that buffer
/// grows to megabytes, so a slow reader's backlog would sit in the
/// server's kernel, out of the server's sight, where behind a real link it
/// would be the server's to hold.
const SLOW_MSS: libc::c_int = 1460;

/// The depth of a slow reader's token bucket, as time at its rate: it may
/// read this much at once after a pause, no more, so it sips as a slow
/// link delivers instead of gulping a backlog.
const SLOW_BURST: Duration = Duration::from_millis(50);

/// Index of fast clients' figures in the per-pace arrays.
const FAST: usize = 0;
/// Index of slow readers' figures in the per-pace arrays.
const SLOW: usize = 1;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub clients: usize,
    pub senders: usize,
    pub lines_per_sender: usize,
    /// Bytes of every chat line sent ([`LINE_BYTES`] unless a scenario
    /// needs bigger ones).
    pub line_bytes: usize,
    /// Open loop at this many lines a second (all senders together);
    /// `None`: closed loop.
    pub rate: Option<f64>,
    /// Closed loop: how many of its lines a sender may have sent and not
    /// yet seen come back (1: one at a time). A client of one room with S
    /// senders has S lines in flight towards it; one sender a room with a
    /// window of S gives each client of a room as many.
    pub window: usize,
    /// Rooms the clients are spread over (client `k` in room `k mod
    /// rooms`); 1: every client in the server's one (default) room, on
    /// plain `/soc`, as every server has it.
    pub rooms: usize,
    /// Join lines to wait for before sending (N(N−1)/2 in each room of N
    /// when every join is announced, 0 when none is): see
    /// [`joins_announced`].
    pub joins_expected: u64,
    pub threads: usize,
    /// Client sockets are bound to 127.0.0.1 … 127.0.0.<source_addrs>
    /// before connecting, so that ports do not run short.
    pub source_addrs: u8,
    /// When to give up on a phase.
    pub connect_limit: Duration,
    pub send_limit: Duration,
    /// Percent of the non-sender clients that are slow readers (0: none).
    pub slow_percent: usize,
    /// What a slow reader reads, in bytes a second, during the send phase.
    pub slow_bytes_per_s: f64,
    /// Speak TLS with this configuration (to [`crate::pki::SERVER_NAME`]);
    /// `None`: plain TCP.
    pub tls: Option<Arc<ClientConfig>>,
}

impl Plan {
    /// Whether client `index` is a slow reader: `slow_percent` of the
    /// non-senders, spread evenly over them (and so over the threads).
    pub fn is_slow(&self, index: usize) -> bool {
        let Some(k) = index.checked_sub(self.senders) else {
            return false;
        };
        (k + 1) * self.slow_percent / 100 > k * self.slow_percent / 100
    }

    /// How many clients are slow readers.
    pub fn slow_clients(&self) -> usize {
        self.clients.saturating_sub(self.senders) * self.slow_percent / 100
    }

    /// How many clients of each pace there are.
    fn clients_of(&self, pace: usize) -> usize {
        match pace {
            SLOW => self.slow_clients(),
            _ => self.clients - self.slow_clients(),
        }
    }

    /// The room of client (or sender) `index`.
    pub fn room_of(&self, index: usize) -> usize {
        index % self.rooms.max(1)
    }

    /// How many of the senders speak in `room`.
    fn senders_in(&self, room: usize) -> usize {
        let rooms = self.rooms.max(1);
        self.senders / rooms + usize::from(room < self.senders % rooms)
    }

    /// A sender's index among its room's senders (sender `s` is the
    /// `s / rooms`th of room `s mod rooms`).
    fn sender_in_room(&self, sender: usize) -> usize {
        sender / self.rooms.max(1)
    }

    /// The lines client `index` must have: its room's senders' lines.
    fn lines_for(&self, index: usize) -> usize {
        self.senders_in(self.room_of(index)) * self.lines_per_sender
    }

    /// The request target client `index` opens: plain `/soc` with one room
    /// (every server knows it), else its room's.
    fn path(&self, index: usize) -> String {
        if self.rooms > 1 {
            format!("/soc?room=r{}", self.room_of(index))
        } else {
            "/soc".to_owned()
        }
    }
}

/// The join lines `clients` spread over `rooms` hear in all, when a join is
/// announced to the others of its room while the room, the newcomer
/// counted, has at most `up_to` members: m(m−1)/2 in a room of n, where m
/// is the smaller of n and `up_to`.
pub fn joins_announced(clients: usize, rooms: usize, up_to: usize) -> u64 {
    let rooms = rooms.max(1);
    (0..rooms)
        .map(|room| {
            let members = clients / rooms + usize::from(room < clients % rooms);
            let announced = members.min(up_to) as u64;
            announced * announced.saturating_sub(1) / 2
        })
        .sum()
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Time for every client to connect and hear every join; `None` if the
    /// connect phase ran out of time.
    pub connect: Option<Duration>,
    /// Time from the first line sent until every fast client had every line
    /// (or the limit).
    pub send: Duration,
    /// Distinct lines the fast clients had (every client, if none is slow).
    pub deliveries: u64,
    /// Distinct lines the slow readers had.
    pub slow_deliveries: u64,
    /// Lines missing, by pace (fast, slow), at the clients that were
    /// connected when sending began: a client the server cut off later
    /// keeps counting what it never had. Lines announced in `gap` notices
    /// are among these (they are missing too), not added again.
    pub lost: [u64; 2],
    /// Lines the server owned up to in `gap` notices.
    pub gap_lines: u64,
    /// Lines that came before an earlier line of their sender's, or after a
    /// later one (a line had twice is counted in `twice` instead).
    pub out_of_order: u64,
    /// Lines a client had already had.
    pub twice: u64,
    /// Lines that carried the server's `"seq"` (0: the server numbers
    /// none, as the peers).
    pub seq_lines: u64,
    /// Numbers skipped (a `"seq"` more than one past the last, no `gap`
    /// notice between).
    pub seq_jumps: u64,
    /// Numbers that did not go up (a repeat or a step back).
    pub seq_backs: u64,
    /// `reset` notices (the server's history began a new epoch).
    pub resets: u64,
    /// `caught_up` notices (a client that had fallen behind is live again).
    pub caught_up: u64,
    /// Lines of a sender of another room (with rooms: must be 0).
    pub foreign: u64,
    /// Welcomes that did not name the client's room (with rooms: must be
    /// 0).
    pub wrong_room: u64,
    /// Latencies in microseconds, sorted: fast clients'.
    pub latencies_us: Vec<u32>,
    /// Latencies in microseconds, sorted: slow readers'.
    pub slow_latencies_us: Vec<u32>,
    /// Whether the fast clients ran out of time.
    pub send_timed_out: bool,
    /// Time from the last line sent until every slow reader had every line;
    /// `None` with no slow reader, when they ran out of time, or when one
    /// of them lost lines.
    pub slow_caught_up: Option<Duration>,
    /// Whether the slow readers ran out of time.
    pub slow_timed_out: bool,
    /// Clients that failed to connect or were closed by the server.
    pub failed_clients: u64,
    /// Of those, slow readers.
    pub slow_failed: u64,
    /// What a fast client read during the send phase, in bytes a second:
    /// what sets a slow reader's pace in a scenario with slow readers.
    pub client_bytes_per_s: Option<f64>,
    /// The load generator's own CPU time during each phase.
    pub connect_cpu: Duration,
    pub send_cpu: Duration,
    /// What `between` returned (between the phases, every client
    /// connected) and what `after` returned (after the send phase, every
    /// client still connected): the server's memory, for the bench.
    pub idle_probe: Option<u64>,
    pub after_probe: Option<u64>,
    /// Over TLS: the version, cipher suite and key exchange the first
    /// client to open agreed on ("TLSv1_3, TLS13_AES_128_GCM_SHA256,
    /// X25519").
    pub tls: Option<String>,
}

impl Outcome {
    /// Lines missing, fast and slow clients together.
    pub fn lost(&self) -> u64 {
        self.lost[FAST] + self.lost[SLOW]
    }

    /// Lines missing at slow readers.
    pub fn slow_lost(&self) -> u64 {
        self.lost[SLOW]
    }

    pub fn deliveries_per_second(&self) -> f64 {
        self.deliveries as f64 / self.send.as_secs_f64().max(1e-9)
    }

    /// The fast clients' latency at quantile `q` (0.0..=1.0), in
    /// microseconds.
    pub fn latency_us(&self, q: f64) -> Option<u32> {
        quantile(&self.latencies_us, q)
    }

    /// The slow readers' latency at quantile `q`, in microseconds.
    pub fn slow_latency_us(&self, q: f64) -> Option<u32> {
        quantile(&self.slow_latencies_us, q)
    }
}

fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((n - 1) as f64 * q).round() as usize])
}

/// What a client thread counts on its own, handed over when it ends.
#[derive(Debug, Default)]
struct Tally {
    /// Latencies in microseconds, by pace.
    latencies_us: [Vec<u32>; 2],
    /// Lines missing, by pace.
    lost: [u64; 2],
    gap_lines: u64,
    out_of_order: u64,
    twice: u64,
    seq_lines: u64,
    seq_jumps: u64,
    seq_backs: u64,
    resets: u64,
    caught_up: u64,
    foreign: u64,
    wrong_room: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        let [fast, slow] = other.latencies_us;
        self.latencies_us[FAST].extend(fast);
        self.latencies_us[SLOW].extend(slow);
        for pace in [FAST, SLOW] {
            self.lost[pace] += other.lost[pace];
        }
        self.gap_lines += other.gap_lines;
        self.out_of_order += other.out_of_order;
        self.twice += other.twice;
        self.seq_lines += other.seq_lines;
        self.seq_jumps += other.seq_jumps;
        self.seq_backs += other.seq_backs;
        self.resets += other.resets;
        self.caught_up += other.caught_up;
        self.foreign += other.foreign;
        self.wrong_room += other.wrong_room;
    }
}

/// State shared by the client threads and the coordinator.
struct Shared {
    plan: Plan,
    base: Instant,
    welcomed: AtomicU64,
    joins: AtomicU64,
    /// Clients that failed, by pace.
    failed: [AtomicU64; 2],
    /// Clients that have had every line, by pace. One the server closes
    /// afterwards moves to `failed`, so that no client counts twice.
    complete: [AtomicU64; 2],
    connected_at: OnceLock<Instant>,
    /// Set by the coordinator: the send phase has begun.
    sending: AtomicBool,
    send_started: OnceLock<Instant>,
    /// Lines sent by all senders; the last one sets `all_sent_at`, from
    /// which the slow readers' catching up is timed.
    lines_sent: AtomicU64,
    all_sent_at: OnceLock<Instant>,
    /// Distinct lines had, by pace.
    deliveries: [AtomicU64; 2],
    /// Bytes the fast clients read during the send phase.
    fast_bytes: AtomicU64,
    /// When every client of a pace had had every line or failed.
    done_at: [OnceLock<Instant>; 2],
    /// Set by the coordinator: stop, whatever the state.
    stop: AtomicBool,
    tally: Mutex<Tally>,
    /// Over TLS: what the first client to open agreed on (see
    /// [`Outcome::tls`]).
    tls: OnceLock<String>,
}

impl Shared {
    fn failed(&self) -> u64 {
        self.failed.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }

    fn connect_done(&self) -> bool {
        self.welcomed.load(Ordering::Relaxed) + self.failed() >= self.plan.clients as u64
            && self.joins.load(Ordering::Relaxed) >= self.plan.joins_expected
    }

    /// Marks each pace done once every client of it has had every line or
    /// failed.
    fn check_done(&self) {
        for pace in [FAST, SLOW] {
            if self.done_at[pace].get().is_none()
                && self.complete[pace].load(Ordering::Relaxed)
                    + self.failed[pace].load(Ordering::Relaxed)
                    >= self.plan.clients_of(pace) as u64
            {
                let _ = self.done_at[pace].set(Instant::now());
            }
        }
    }
}

/// Runs `plan`; `between` is called once the clients are all connected,
/// `after` once the lines are all delivered, before the clients hang up
/// (the server's memory is read there), and their answers kept.
pub fn run(plan: Plan, between: impl FnOnce() -> u64, after: impl FnOnce() -> u64) -> Outcome {
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        base: Instant::now(),
        welcomed: AtomicU64::new(0),
        joins: AtomicU64::new(0),
        failed: Default::default(),
        complete: Default::default(),
        connected_at: OnceLock::new(),
        sending: AtomicBool::new(false),
        send_started: OnceLock::new(),
        lines_sent: AtomicU64::new(0),
        all_sent_at: OnceLock::new(),
        deliveries: Default::default(),
        fast_bytes: AtomicU64::new(0),
        done_at: Default::default(),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        tls: OnceLock::new(),
    });
    let cpu_start = own_cpu();
    let threads: Vec<_> = (0..plan.threads)
        .map(|t| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || ClientLoop::new(shared, t).run())
        })
        .collect();

    let mut outcome = Outcome::default();
    let connect_deadline = shared.base + plan.connect_limit;
    wait_for(&shared.connected_at, connect_deadline);
    outcome.connect_cpu = own_cpu().saturating_sub(cpu_start);
    outcome.connect = shared.connected_at.get().map(|at| *at - shared.base);
    if outcome.connect.is_some() {
        outcome.idle_probe = Some(between());
        let cpu_send = own_cpu();
        let started = Instant::now();
        let _ = shared.send_started.set(started);
        shared.sending.store(true, Ordering::SeqCst);
        let deadline = started + plan.send_limit;
        wait_for(&shared.done_at[FAST], deadline);
        outcome.send_timed_out = shared.done_at[FAST].get().is_none();
        let ended = shared.done_at[FAST]
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        outcome.send = ended - started;
        outcome.send_cpu = own_cpu().saturating_sub(cpu_send);
        if plan.slow_clients() > 0 {
            wait_for(&shared.done_at[SLOW], deadline);
            outcome.slow_timed_out = shared.done_at[SLOW].get().is_none();
            outcome.slow_caught_up = shared.done_at[SLOW]
                .get()
                .zip(shared.all_sent_at.get())
                .map(|(done, sent)| done.saturating_duration_since(*sent));
        }
        outcome.after_probe = Some(after());
    }
    shared.stop.store(true, Ordering::SeqCst);
    for handle in threads {
        let _ = handle.join();
    }
    outcome.deliveries = shared.deliveries[FAST].load(Ordering::SeqCst);
    outcome.slow_deliveries = shared.deliveries[SLOW].load(Ordering::SeqCst);
    outcome.failed_clients = shared.failed();
    outcome.slow_failed = shared.failed[SLOW].load(Ordering::SeqCst);
    let fast_alive = plan.clients_of(FAST) as u64 - shared.failed[FAST].load(Ordering::SeqCst);
    outcome.client_bytes_per_s = (outcome.connect.is_some() && fast_alive > 0).then(|| {
        shared.fast_bytes.load(Ordering::SeqCst) as f64
            / fast_alive as f64
            / outcome.send.as_secs_f64().max(1e-9)
    });
    let mut tally = std::mem::take(&mut *shared.tally.lock().unwrap());
    for latencies in &mut tally.latencies_us {
        latencies.sort_unstable();
    }
    let [fast, slow] = tally.latencies_us;
    outcome.latencies_us = fast;
    outcome.slow_latencies_us = slow;
    outcome.lost = tally.lost;
    if outcome.lost[SLOW] > 0 {
        // "Done" then includes readers cut off: not what the figure means.
        outcome.slow_caught_up = None;
    }
    outcome.gap_lines = tally.gap_lines;
    outcome.out_of_order = tally.out_of_order;
    outcome.twice = tally.twice;
    outcome.seq_lines = tally.seq_lines;
    outcome.seq_jumps = tally.seq_jumps;
    outcome.seq_backs = tally.seq_backs;
    outcome.resets = tally.resets;
    outcome.caught_up = tally.caught_up;
    outcome.foreign = tally.foreign;
    outcome.wrong_room = tally.wrong_room;
    outcome.tls = shared.tls.get().cloned();
    outcome
}

/// Waits until `moment` is set or `deadline` passes.
fn wait_for(moment: &OnceLock<Instant>, deadline: Instant) {
    while moment.get().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
}

/// This process's CPU time (user + system), from /proc/self/stat.
pub fn own_cpu() -> Duration {
    crate::proc::cpu_time(std::process::id()).unwrap_or_default()
}

#[derive(Debug, PartialEq)]
enum Stage {
    /// Not yet started (waiting for a handshake slot).
    Waiting,
    /// Upgrade request sent; reading the response head.
    Handshake,
    Open,
    Done,
}

/// A token bucket of bytes: how much a slow reader may read now.
struct Bucket {
    /// Bytes a second; at least one, so that a reader always gets on.
    per_second: f64,
    /// The most it may hold ([`SLOW_BURST`] at its rate, at least a byte).
    depth: f64,
    /// Bytes it may read now (negative never: it reads at most this).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl Bucket {
    fn new(per_second: f64) -> Self {
        let per_second = per_second.max(1.0);
        let depth = (per_second * SLOW_BURST.as_secs_f64()).max(1.0);
        Bucket {
            per_second,
            depth,
            tokens: depth,
            refilled: Instant::now(),
        }
    }

    /// Whole bytes that may be read now: 0 until the bucket is half full,
    /// so that a reader that waits reads in sips of half its depth, not in
    /// a syscall for every few bytes the loop's 200 µs turns earn it.
    fn allowance(&mut self) -> usize {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.depth);
        self.refilled = now;
        if self.tokens >= self.depth / 2.0 {
            self.tokens as usize
        } else {
            0
        }
    }

    fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

struct Client {
    /// Index among all clients; senders are 0..S.
    index: usize,
    /// Its room ([`Plan::room_of`]).
    room: usize,
    /// [`FAST`] or [`SLOW`].
    pace: usize,
    stream: Option<TcpStream>,
    /// Its TLS session over `stream`, in a run over TLS (boxed: a plain
    /// client carries a pointer's worth, not a session's).
    tls: Option<Box<ClientConnection>>,
    stage: Stage,
    /// Whether it failed before the send phase began: then no line was
    /// ever due to it, and none counts as lost.
    failed_before_sending: bool,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Per sender of its room: the next line number expected. Every line
    /// below it has been had, except those in `passed_over`.
    next_line: Vec<usize>,
    /// Lines of its room (sender in the room × M + number) below their
    /// sender's `next_line` that have not come: a later line came first.
    /// Exact, so a line had twice is told from one that came late, and
    /// empty (no allocation, nothing to look up) while lines come in
    /// order. A bitmap of every line, tested on each delivery, was a cache
    /// miss per delivery: 6 % of the load generator's time at 1,000 × 10.
    passed_over: BTreeSet<usize>,
    /// How many distinct lines it has had.
    distinct: usize,
    /// The server's `"seq"` of the last line (or the end of the last gap,
    /// or the welcome's `head`); `None` until the first, or after a `reset`
    /// notice.
    room_seq: Option<u64>,
    /// A slow reader's bucket, filled from the first read of the send
    /// phase.
    bucket: Option<Bucket>,
    /// Whether it is in its thread's `throttled` list.
    throttled: bool,
    /// A sender's next line to send, and (closed loop) how many of its
    /// lines have come back (`sent - echoed` are in flight).
    sent: usize,
    echoed: usize,
}

impl Client {
    fn complete(&self, lines: usize) -> bool {
        self.distinct >= lines
    }
}

/// What a text message from the server is.
#[derive(Debug, PartialEq)]
enum Incoming {
    /// The welcome, with the room's last number (`head`) and, if it names
    /// a room of ours (`r<k>`), its index.
    Welcome {
        head: Option<u64>,
        room: Option<u64>,
    },
    Join,
    /// A chat line: ours, if it carries our marker, and the server's
    /// number for it, if the server numbers lines.
    Line {
        ours: Option<Ours>,
        seq: Option<u64>,
    },
    /// Lines `from..=to` are lost to this client.
    Gap {
        from: u64,
        to: u64,
    },
    CaughtUp,
    Reset,
    /// Anything else (a leave, a notice we do not know).
    Other,
}

/// What the load generator wrote into one of its lines.
#[derive(Debug, PartialEq)]
struct Ours {
    sender: usize,
    number: usize,
    /// Nanoseconds since the run's base instant.
    sent_at: u64,
}

struct ClientLoop {
    shared: Arc<Shared>,
    poll: Poll,
    clients: Vec<Client>,
    /// Indices (into `clients`) of this thread's senders.
    senders: Vec<usize>,
    /// Slow readers that stopped reading with bytes perhaps still waiting
    /// (their bucket ran dry): no new edge will come for those bytes, so
    /// the loop reads them again itself as the bucket refills.
    throttled: Vec<usize>,
    in_flight: usize,
    next_waiting: usize,
    /// Distinct lines had since they were last added to `shared`, by pace.
    delivered: [u64; 2],
    /// Bytes fast clients read since last added to `shared`.
    fast_bytes: u64,
    tally: Tally,
    scratch: Vec<u8>,
    mask: u32,
}

impl ClientLoop {
    fn new(shared: Arc<Shared>, thread: usize) -> Self {
        let plan = &shared.plan;
        let clients: Vec<Client> = (thread..plan.clients)
            .step_by(plan.threads)
            .map(|index| Client {
                index,
                room: plan.room_of(index),
                pace: if plan.is_slow(index) { SLOW } else { FAST },
                stream: None,
                tls: None,
                stage: Stage::Waiting,
                failed_before_sending: false,
                input: Vec::new(),
                output: Vec::new(),
                next_line: vec![0; plan.senders_in(plan.room_of(index))],
                passed_over: BTreeSet::new(),
                distinct: 0,
                room_seq: None,
                bucket: None,
                throttled: false,
                sent: 0,
                echoed: 0,
            })
            .collect();
        let senders = clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.index < plan.senders)
            .map(|(i, _)| i)
            .collect();
        ClientLoop {
            poll: Poll::new().expect("a poller for the load generator"),
            clients,
            senders,
            throttled: Vec::new(),
            in_flight: 0,
            next_waiting: 0,
            delivered: [0; 2],
            fast_bytes: 0,
            tally: Tally::default(),
            scratch: vec![0; 256 * 1024],
            mask: 0x9e37_79b9 ^ thread as u32,
            shared,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            self.start_handshakes();
            let sending = self.shared.sending.load(Ordering::Relaxed);
            if sending {
                self.send_due();
                self.read_throttled();
            }
            let timeout = if sending {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(5)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("load generator poll: {e}");
            }
            for event in events.iter() {
                let i = event.token().0;
                if event.is_writable() {
                    self.flush(i);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(i);
                }
            }
            self.publish();
            if sending {
                self.shared.check_done();
            }
            if self.shared.connected_at.get().is_none() && self.shared.connect_done() {
                let _ = self.shared.connected_at.set(Instant::now());
            }
        }
        for client in self.clients.iter().filter(|c| !c.failed_before_sending) {
            let lines = self.shared.plan.lines_for(client.index);
            self.tally.lost[client.pace] += (lines - client.distinct.min(lines)) as u64;
        }
        self.shared
            .tally
            .lock()
            .unwrap()
            .merge(std::mem::take(&mut self.tally));
    }

    /// Adds what this thread counted since last time to `shared`.
    fn publish(&mut self) {
        for pace in [FAST, SLOW] {
            if self.delivered[pace] > 0 {
                self.shared.deliveries[pace].fetch_add(self.delivered[pace], Ordering::Relaxed);
                self.delivered[pace] = 0;
            }
        }
        if self.fast_bytes > 0 {
            self.shared
                .fast_bytes
                .fetch_add(self.fast_bytes, Ordering::Relaxed);
            self.fast_bytes = 0;
        }
    }

    fn start_handshakes(&mut self) {
        while self.in_flight < HANDSHAKES_IN_FLIGHT && self.next_waiting < self.clients.len() {
            let i = self.next_waiting;
            self.next_waiting += 1;
            match self.connect(i) {
                Ok(()) => self.in_flight += 1,
                Err(e) => {
                    eprintln!("client {}: connect: {e}", self.clients[i].index);
                    self.fail(i);
                }
            }
        }
    }

    fn connect(&mut self, i: usize) -> io::Result<()> {
        let plan = &self.shared.plan;
        let client = &mut self.clients[i];
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (client.index % plan.source_addrs as usize) as u8,
        );
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if client.pace == SLOW {
            // Before connecting: the window scale and the segment size are
            // agreed in the handshake.
            socket.set_recv_buffer_size(SLOW_RECEIVE_BUFFER)?;
            set_mss(&socket, SLOW_MSS)?;
        }
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        match socket.connect(&plan.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        if let Some(config) = &plan.tls {
            // Its ClientHello is made here and waits in rustls for the
            // socket to be writable, like the upgrade request below. This
            // session's crypto (key exchange, certificate check, every
            // record) runs on this thread, the load generator's CPU: not
            // counted as the server's, shown in the load generator's.
            let name = ServerName::try_from(crate::pki::SERVER_NAME).map_err(io::Error::other)?;
            let session =
                ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
            client.tls = Some(Box::new(session));
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        client.output.extend_from_slice(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                plan.path(client.index),
                plan.addr
            )
            .as_bytes(),
        );
        client.stream = Some(stream);
        client.stage = Stage::Handshake;
        Ok(())
    }

    fn fail(&mut self, i: usize) {
        let client = &mut self.clients[i];
        let lines = self.shared.plan.lines_for(client.index);
        if client.stage == Stage::Done {
            return;
        }
        if client.stage == Stage::Handshake {
            self.in_flight -= 1;
        }
        client.stage = Stage::Done;
        client.stream = None;
        client.tls = None;
        client.failed_before_sending = !self.shared.sending.load(Ordering::Relaxed);
        // Out of `complete` before into `failed`: the sum may lag for a
        // moment, never run ahead and end the phase early.
        if client.complete(lines) && lines > 0 {
            self.shared.complete[client.pace].fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.failed[client.pace].fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&mut self, i: usize) {
        let client = &mut self.clients[i];
        let Some(stream) = client.stream.as_mut() else {
            return;
        };
        if let Some(tls) = client.tls.as_deref_mut() {
            if let Err(e) = flush_tls(tls, &mut client.output, stream) {
                eprintln!("client {}: TLS write: {e}", client.index);
                self.fail(i);
            }
            return;
        }
        while !client.output.is_empty() {
            match stream.write(&client.output) {
                Ok(n) => {
                    client.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.fail(i);
                    return;
                }
            }
        }
    }

    /// Reads again the slow readers whose buckets ran dry, as far as their
    /// buckets now allow.
    fn read_throttled(&mut self) {
        for i in std::mem::take(&mut self.throttled) {
            self.clients[i].throttled = false;
            self.read(i);
        }
    }

    /// Reads what client `i` has (a slow reader in the send phase: what its
    /// bucket allows, and then it waits in `throttled`).
    fn read(&mut self, i: usize) {
        loop {
            let sending = self.shared.sending.load(Ordering::Relaxed);
            let client = &mut self.clients[i];
            let Some(stream) = client.stream.as_mut() else {
                return;
            };
            let room = if client.pace == SLOW && sending {
                let rate = self.shared.plan.slow_bytes_per_s;
                let allowance = client
                    .bucket
                    .get_or_insert_with(|| Bucket::new(rate))
                    .allowance();
                if allowance == 0 {
                    // Stop short of WouldBlock: the bytes left get no new
                    // edge, so the loop comes back for them.
                    if !client.throttled {
                        client.throttled = true;
                        self.throttled.push(i);
                    }
                    return;
                }
                allowance.min(self.scratch.len())
            } else {
                self.scratch.len()
            };
            if client.pace == FAST {
                // Before each read: the mode does not last (the kernel
                // leaves it on its own), and the read is what sends the
                // acknowledgement it holds back.
                delay_acks(stream);
            }
            match stream.read(&mut self.scratch[..room]) {
                Ok(0) => {
                    if self.clients[i].stage != Stage::Done
                        && !self.shared.stop.load(Ordering::Relaxed)
                    {
                        self.fail(i);
                    }
                    return;
                }
                Ok(n) => {
                    let now = self.shared.base.elapsed().as_nanos() as u64;
                    if let Some(bucket) = client.bucket.as_mut() {
                        bucket.spend(n);
                    }
                    if sending && client.pace == FAST {
                        self.fast_bytes += n as u64;
                    }
                    let closed = match client.tls.as_deref_mut() {
                        None => {
                            client.input.extend_from_slice(&self.scratch[..n]);
                            false
                        }
                        Some(tls) => match decrypt(tls, &self.scratch[..n], &mut client.input) {
                            Ok(closed) => closed,
                            Err(e) => {
                                // A broken TLS stream, as a broken socket.
                                eprintln!("client {}: TLS: {e}", client.index);
                                self.fail(i);
                                return;
                            }
                        },
                    };
                    self.parse(i, now);
                    if closed {
                        // The server's close_notify: its end, as EOF.
                        if self.clients[i].stage != Stage::Done
                            && !self.shared.stop.load(Ordering::Relaxed)
                        {
                            self.fail(i);
                        }
                        return;
                    }
                    if self.clients[i]
                        .tls
                        .as_ref()
                        .is_some_and(|tls| tls.wants_write())
                    {
                        // Handshake messages, or the plaintext it held
                        // until the handshake was done.
                        self.flush(i);
                    }
                    if n < room {
                        // A short read emptied the socket: the next bytes
                        // raise a new edge. Reading on to `WouldBlock`
                        // would cost a system call per wake-up for nothing.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(i);
                    return;
                }
            }
        }
    }

    /// Consumes whole frames (or the handshake response) from client `i`'s
    /// input.
    fn parse(&mut self, i: usize, now: u64) {
        let mut at = 0;
        if self.clients[i].stage == Stage::Handshake {
            let input = &self.clients[i].input;
            let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            if !input.starts_with(b"HTTP/1.1 101") {
                eprintln!(
                    "client {}: refused: {}",
                    self.clients[i].index,
                    String::from_utf8_lossy(&input[..end.min(80)])
                );
                self.fail(i);
                return;
            }
            self.clients[i].stage = Stage::Open;
            self.in_flight -= 1;
            at = end + 4;
            if let Some(tls) = self.clients[i].tls.as_deref()
                && self.shared.tls.get().is_none()
            {
                let _ = self.shared.tls.set(agreed(tls));
            }
        }
        loop {
            let input = &self.clients[i].input[at..];
            let Some((opcode, header, len)) = frame_header(input) else {
                break;
            };
            if input.len() < header + len {
                break;
            }
            let payload_at = at + header;
            at = payload_at + len;
            match opcode {
                0x1 => {
                    let incoming = classify(&self.clients[i].input[payload_at..at]);
                    self.message(i, incoming, now);
                }
                0x9 => {
                    let payload = self.clients[i].input[payload_at..at].to_vec();
                    self.send_frame(i, 0xA, &payload);
                }
                0x8 => {
                    if !self.shared.stop.load(Ordering::Relaxed) {
                        self.fail(i);
                    }
                    return;
                }
                _ => {}
            }
        }
        self.clients[i].input.drain(..at);
    }

    /// Acts on one text message for client `i`.
    fn message(&mut self, i: usize, incoming: Incoming, now: u64) {
        match incoming {
            Incoming::Welcome { head, room } => {
                self.shared.welcomed.fetch_add(1, Ordering::Relaxed);
                let client = &mut self.clients[i];
                if self.shared.plan.rooms > 1 && room != Some(client.room as u64) {
                    self.tally.wrong_room += 1;
                }
                // The room's numbering so far: the next line must follow
                // it (no line is sent before every client is in).
                if head.is_some() {
                    client.room_seq = head;
                }
            }
            Incoming::Join => {
                self.shared.joins.fetch_add(1, Ordering::Relaxed);
            }
            Incoming::Line { ours, seq } => {
                let plan = &self.shared.plan;
                if let Some(sender) = ours.as_ref().map(|o| o.sender)
                    && sender < plan.senders
                    && plan.room_of(sender) != self.clients[i].room
                {
                    // Another room's line, and its number another
                    // room's: neither is checked against this room.
                    self.tally.foreign += 1;
                    return;
                }
                if let Some(seq) = seq {
                    self.tally.seq_lines += 1;
                    self.follow_seq(i, seq, seq);
                }
                if let Some(ours) = ours {
                    self.line(i, ours, now);
                }
            }
            Incoming::Gap { from, to } => {
                self.tally.gap_lines += (to + 1).saturating_sub(from);
                // As if lines from..=to had come: the next must follow `to`.
                self.follow_seq(i, from, to.max(from));
            }
            Incoming::CaughtUp => self.tally.caught_up += 1,
            Incoming::Reset => {
                self.tally.resets += 1;
                self.clients[i].room_seq = None;
            }
            Incoming::Other => {}
        }
    }

    /// Checks that server numbers `first..=last` follow client `i`'s last
    /// one, and moves it on to `last`.
    fn follow_seq(&mut self, i: usize, first: u64, last: u64) {
        let client = &mut self.clients[i];
        match client.room_seq {
            Some(prev) if first <= prev => self.tally.seq_backs += 1,
            Some(prev) if first > prev + 1 => self.tally.seq_jumps += 1,
            _ => {}
        }
        client.room_seq = Some(client.room_seq.map_or(last, |prev| prev.max(last)));
    }

    /// One of our lines reached client `i`.
    fn line(&mut self, i: usize, ours: Ours, now: u64) {
        let plan = &self.shared.plan;
        if ours.sender >= plan.senders || ours.number >= plan.lines_per_sender {
            return; // not a line of this run
        }
        let client = &mut self.clients[i];
        let lines = plan.lines_for(client.index);
        // A line of its own room (`message` set the others apart).
        let in_room = plan.sender_in_room(ours.sender);
        let next = client.next_line[in_room];
        let again = ours.number < next
            && !client
                .passed_over
                .remove(&(in_room * plan.lines_per_sender + ours.number));
        if ours.number > next {
            let first = in_room * plan.lines_per_sender;
            client.passed_over.extend(first + next..first + ours.number);
        }
        if again {
            self.tally.twice += 1;
        } else {
            client.distinct += 1;
            self.delivered[client.pace] += 1;
            self.tally.latencies_us[client.pace]
                .push((now.saturating_sub(ours.sent_at) / 1000).min(u64::from(u32::MAX)) as u32);
            if client.complete(lines) {
                self.shared.complete[client.pace].fetch_add(1, Ordering::Relaxed);
            }
        }
        let next = &mut client.next_line[in_room];
        if ours.number != *next && !again {
            self.tally.out_of_order += 1;
        }
        if ours.number >= *next {
            *next = ours.number + 1;
        }
        if ours.sender == client.index {
            client.echoed = client.echoed.max(ours.number + 1);
        }
    }

    /// Sends what the senders of this thread have due.
    fn send_due(&mut self) {
        let shared = Arc::clone(&self.shared);
        let plan = &shared.plan;
        let lines = plan.lines_per_sender;
        let started = *shared.send_started.get().expect("set before sending");
        for s in 0..self.senders.len() {
            let i = self.senders[s];
            loop {
                let client = &self.clients[i];
                if client.stage != Stage::Open || client.sent >= lines {
                    break;
                }
                let due = match plan.rate {
                    None => client.sent < client.echoed + plan.window.max(1),
                    Some(rate) => {
                        // Sender k's line n is due at (n × S + k) / rate.
                        let slot = client.sent as f64 * plan.senders as f64 + client.index as f64;
                        started.elapsed().as_secs_f64() >= slot / rate
                    }
                };
                if !due {
                    break;
                }
                let sent_at = self.shared.base.elapsed().as_nanos() as u64;
                let mut line =
                    format!("~L~{:05} {:09} {:020} ", client.index, client.sent, sent_at);
                line.extend(std::iter::repeat_n(
                    'x',
                    plan.line_bytes.saturating_sub(line.len()),
                ));
                let client = &mut self.clients[i];
                client.sent += 1;
                self.send_frame(i, 0x1, line.as_bytes());
                let all = shared.lines_sent.fetch_add(1, Ordering::Relaxed) + 1;
                if all >= (plan.senders * lines) as u64 {
                    let _ = shared.all_sent_at.set(Instant::now());
                }
            }
        }
    }

    /// Queues a masked frame and writes what the socket takes.
    fn send_frame(&mut self, i: usize, opcode: u8, payload: &[u8]) {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask.to_be_bytes();
        let out = &mut self.clients[i].output;
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(k, b)| b ^ mask[k % 4]));
        self.flush(i);
    }
}

/// Hands `wire`, bytes a TLS client read off its socket, to rustls, and
/// appends the plaintext they decrypt to `input`. `Ok(true)`: the server
/// closed the session (close_notify). An error is a broken stream.
fn decrypt(tls: &mut ClientConnection, mut wire: &[u8], input: &mut Vec<u8>) -> io::Result<bool> {
    while !wire.is_empty() {
        // From the bytes already read, not from the socket: rustls reads
        // 4 KiB at a time, and the socket is read once, in one system
        // call, as a plain client's is. Each slice is processed before
        // the next, so rustls's buffer never fills.
        if tls.read_tls(&mut wire)? == 0 {
            break; // after close_notify, rustls takes nothing more
        }
        let state = tls.process_new_packets().map_err(io::Error::other)?;
        let plaintext = state.plaintext_bytes_to_read();
        if plaintext > 0 {
            let at = input.len();
            input.resize(at + plaintext, 0);
            tls.reader().read_exact(&mut input[at..])?;
        }
        if state.peer_has_closed() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Encrypts what a TLS client has queued in `output` (what rustls takes:
/// during the handshake it holds it) and writes its records to `stream`
/// until none is left or the socket would block; what is left waits for
/// the next WRITABLE edge, as a plain client's output does.
fn flush_tls(
    tls: &mut ClientConnection,
    output: &mut Vec<u8>,
    stream: &mut TcpStream,
) -> io::Result<()> {
    loop {
        if !output.is_empty() {
            let n = tls.writer().write(output)?;
            output.drain(..n);
        }
        if !tls.wants_write() {
            return Ok(());
        }
        match tls.write_tls(stream) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                ) =>
            {
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What a TLS client agreed on with the server, for the report.
fn agreed(tls: &ClientConnection) -> String {
    let version = tls
        .protocol_version()
        .map_or_else(|| "?".into(), |v| format!("{v:?}"));
    let suite = tls
        .negotiated_cipher_suite()
        .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite()));
    let group = tls
        .negotiated_key_exchange_group()
        .map_or_else(|| "?".into(), |g| format!("{:?}", g.name()));
    format!("{version}, {suite}, {group}")
}

/// Asks the kernel to delay this socket's acknowledgements for now
/// (`TCP_QUICKACK` off), as a client across a network does: at most one
/// for every two segments, or after a short timer. On loopback Linux
/// otherwise acknowledges every segment as it is read, and, loopback's
/// packets being processed by the CPU that sends them, the load generator
/// then pays for its acknowledgement *and* for the server's TCP taking it
/// in: half of its time at 1,000 × 10, with one acknowledgement per
/// segment the server wrote. Delayed, the acknowledgements fell from about
/// 85,000 to 32,000 a second and the load generator's CPU from 95 % to
/// 71 % against the uWebSockets peer, with the same p99. Best effort: an
/// error only leaves the kernel's default.
fn delay_acks(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = set_tcp_option(stream.as_raw_fd(), libc::TCP_QUICKACK, 0);
}

/// Sets `TCP_MAXSEG` (socket2 offers it only with its `all` feature).
fn set_mss(socket: &socket2::Socket, mss: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    set_tcp_option(socket.as_raw_fd(), libc::TCP_MAXSEG, mss)
}

/// Sets an `IPPROTO_TCP` option that takes a `c_int`.
fn set_tcp_option(
    fd: std::os::fd::RawFd,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a pointer to a c_int of the size passed; an fd that is not an
    // open socket only makes the call fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a text message is. Keys are looked up by name, wherever they are
/// and with or without spaces (Tornado's `json.dumps` writes `"id": 7`),
/// so keys a server adds do not disturb the checks.
fn classify(text: &[u8]) -> Incoming {
    // Almost every message is one of our lines: known by its marker, with
    // the server's seq (if it numbers lines) after our fixed-width fields.
    // Looked at first and with one short scan, or the load generator, not
    // the server, would set the pace.
    if let Some(at) = find(text, b"~L~") {
        let fields = &text[at + 3..];
        return Incoming::Line {
            ours: ours(fields),
            seq: fields
                .get(OURS_LEN..)
                .and_then(|rest| json_u64(rest, b"\"seq\"")),
        };
    }
    if let Some(event) = json_str(text, b"\"event\"") {
        return match event {
            b"gap" => match (json_u64(text, b"\"from\""), json_u64(text, b"\"to\"")) {
                (Some(from), Some(to)) => Incoming::Gap { from, to },
                _ => Incoming::Other,
            },
            b"caught_up" => Incoming::CaughtUp,
            b"reset" => Incoming::Reset,
            // Eddy's join notices with rooms ("event":"join", "id",
            // "count", maybe "name"); the peers' carry no event.
            b"join" => Incoming::Join,
            _ => Incoming::Other,
        };
    }
    if json_str(text, b"\"type\"") == Some(b"user") {
        return Incoming::Line {
            ours: None,
            seq: json_u64(text, b"\"seq\""),
        };
    }
    if find(text, b"has joined").is_some() {
        Incoming::Join
    } else if find(text, b"Welcome to WebSocket").is_some() {
        Incoming::Welcome {
            head: json_u64(text, b"\"head\""),
            room: json_str(text, b"\"room\"")
                .and_then(|room| room.strip_prefix(b"r"))
                .and_then(|index| number(Some(index))),
        }
    } else {
        Incoming::Other
    }
}

/// The length of our fields after the marker.
const OURS_LEN: usize = 36;

/// Our fields after the marker: "SSSSS NNNNNNNNN TTTTTTTTTTTTTTTTTTTT".
fn ours(line: &[u8]) -> Option<Ours> {
    Some(Ours {
        sender: number(line.get(0..5))? as usize,
        number: number(line.get(6..15))? as usize,
        sent_at: number(line.get(16..36))?,
    })
}

/// Where the value of a key starts: after `quoted` (`"key"`), optional spaces, a
/// colon and optional spaces. A string value that reads `"key"` is followed
/// by a comma or brace, not a colon, so it is passed over; inside a string,
/// a quote is escaped, so no key can be faked there.
fn json_value<'a>(text: &'a [u8], quoted: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(at) = find(&text[from..], quoted) {
        let rest = text[from + at + quoted.len()..].trim_ascii_start();
        if let Some(value) = rest.strip_prefix(b":") {
            return Some(value.trim_ascii_start());
        }
        from += at + 1;
    }
    None
}

/// A whole number value of `quoted` (a key, with its quotes).
fn json_u64(text: &[u8], quoted: &[u8]) -> Option<u64> {
    let value = json_value(text, quoted)?;
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    number(value.get(..digits))
}

/// A string value of `key`, as it stands (escapes are not undone: the
/// values looked for are plain words).
fn json_str<'a>(text: &'a [u8], quoted: &[u8]) -> Option<&'a [u8]> {
    let value = json_value(text, quoted)?.strip_prefix(b"\"")?;
    Some(&value[..value.iter().position(|&b| b == b'"')?])
}

/// A server frame's opcode, header length and payload length, if the
/// header is complete.
fn frame_header(input: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (input.first()?, input.get(1)?);
    let opcode = b0 & 0x0f;
    match b1 & 0x7f {
        126 => Some((
            opcode,
            4,
            u16::from_be_bytes(input.get(2..4)?.try_into().ok()?) as usize,
        )),
        127 => Some((
            opcode,
            10,
            u64::from_be_bytes(input.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((opcode, 2, n as usize)),
    }
}

/// Where `needle` first occurs in `haystack`. A scan for its first byte,
/// then a comparison: a `memcmp` at every offset cost the load generator a
/// tenth of its time.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(offset) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + offset;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// ASCII digits (at least one) as a number; `None` if any is not a digit
/// or it does not fit.
fn number(digits: Option<&[u8]>) -> Option<u64> {
    let digits = digits.filter(|d| !d.is_empty())?;
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}
