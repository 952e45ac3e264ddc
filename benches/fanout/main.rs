//! `cargo bench`: Eddy against its peers, same load, same machine, one run.
//!
//! For each scenario (N clients, S senders, M lines each) and each server
//! (Eddy; Eddy over TLS, if the bench is built with `--features tls`:
//! `eddy-tls`, below; optionally an older build of Eddy; the seed's Tornado
//! server; a tokio-tungstenite chat in the shape of that crate's own
//! example; a uWebSockets chat, if its sources are at hand: `UWS_SRC`,
//! below), the bench starts the server, runs the load generator
//! ([`loadgen`]) against it, reads the server's CPU time and memory from
//! /proc, and stops it. Each scenario is run `runs` times and the medians
//! are reported, with ratios to Eddy, as a Markdown table and an SVG plot
//! in `target/eddy-bench/`.
//!
//! On a machine with two or more CPUs the server under test is pinned to
//! CPU 0 (the tokio peer excepted: its runtime gets every CPU, as its users
//! would run it) and the load generator to CPU 1; the generator's own CPU
//! use is reported, and where it is near one full CPU the server's figures
//! are marked as lower bounds.
//!
//! Besides the plain fan-out, three kinds of scenario:
//!
//! - **Slow readers**: 10 % of the non-senders read ten times slower than
//!   the rest. "Ten times slower" is measured, not guessed: the same
//!   scenario is run first with every client fast (the set's own run of it,
//!   or one added before it), and a slow reader then reads through a token
//!   bucket of a tenth of the bytes per second a client read there, on the
//!   same server. Every line is still checked at every slow reader, the run
//!   waits (within the scenario's limit) until each has had every line, and
//!   fast and slow clients' latencies are reported apart. The target: fast
//!   clients' p99 within 2× of the all-fast run's, and no line lost.
//! - **History memory** (Eddy only; the others show n/a): Eddy with its
//!   history capped at 32 MiB (`--history-memory`, `--history-bytes`), and
//!   one sender's 70,000 lines of 1 KiB, over twice that, to a few clients;
//!   the server's RSS before the lines and after them, beside the cap.
//! - **Many rooms** (Eddy and the uWebSockets peer; the other peers have no
//!   rooms and show n/a): 10,000 clients in 1,000 rooms of 10
//!   (`/soc?room=r<k>`), one sender a room, 100 lines each: as many
//!   deliveries as the single-room 1,000 × 10 × 100 scenario, which runs
//!   beside it. Every client checks its own room's lines (none lost, out of
//!   order or twice, `seq` dense in each room from the `head` its welcome
//!   gave) and that no line of another room reaches it, and that its welcome
//!   names its room. A table compares it with that single-room run (the
//!   issue's target: deliveries/s at least as high, server CPU per delivery
//!   no higher).
//!
//! Sets: `EDDY_BENCH=quick` (the default: minutes), `full` (adds 10,000
//! clients and 19,000 held connections; about an hour, mostly Tornado),
//! `versus` (Eddy against the uWebSockets and tokio peers on every column
//! of the performance issue: half an hour, mostly uWS connecting 10,000
//! clients), or
//! `smoke` (tiny, for CI: proves the bench still runs; its numbers mean
//! nothing), or `custom` (one scenario from `EDDY_BENCH_CLIENTS`,
//! `EDDY_BENCH_SENDERS`, `EDDY_BENCH_LINES`, `EDDY_BENCH_LIMIT` seconds,
//! `EDDY_BENCH_DEFAULTS=1` for each server's default settings,
//! `EDDY_BENCH_ROOMS=N` to spread the clients and senders over N rooms,
//! `EDDY_BENCH_WINDOW=N` for N lines in flight a sender,
//! `EDDY_BENCH_RATE=LINES_PER_SEC` for an open loop, `EDDY_BENCH_SLOW=10`
//! for that percent of slow readers (its all-fast run comes first), or
//! `EDDY_BENCH_HISTORY=1` for the history memory scenario, 10 clients × 1
//! sender × 70,000 lines unless the counts are given).
//! `EDDY_BENCH=startup` times Eddy opening a data directory with a
//! gigabyte of history instead ([`startup`]; `EDDY_BENCH_STARTUP_MIB`).
//! `EDDY_BENCH_ONLY=A|B` keeps the set's scenarios whose name contains
//! `A` or `B` (with the all-fast runs slow-reader scenarios need):
//! `EDDY_BENCH_ONLY='rooms|1,000 clients × 10 senders × 100 lines'`
//! runs the many-rooms scenario and its single-room comparison alone.
//! `EDDY_BENCH_RUNS` overrides the runs per scenario;
//! `EDDY_BENCH_SERVERS=eddy,tokio` picks servers (of `eddy`, `eddy-tls`,
//! `eddy-before`, `tornado`, `tokio`, `uws`: the default; and
//! `eddy-disk-everysec`, `eddy-disk-always`, `eddy-disk-no`: Eddy with its
//! history on disk, a fresh data directory each start, synced as named;
//! `eddy-redis` and `eddy-redis-2workers`: Eddy on a fresh `redis-server`
//! of its own, as one process or as `--workers 2`, its CPU and memory
//! counted with Redis's and Redis's commands and CPU per line reported;
//! `eddy-metrics`: Eddy with its metrics listener, scraped once a second
//! while it runs; these asked for by name only). Every other Eddy runs with
//! `--data-dir off`.
//!
//! `eddy-tls` is Eddy serving HTTPS and wss:// on its port (`--tls-cert`,
//! `--tls-key`: a CA and a certificate for `localhost` that the bench makes
//! with rcgen when it starts, in `target/eddy-bench/tls-<pid>/`, removed
//! once the runs are done; [`pki`]), and every client speaking TLS to it
//! (rustls, sans-I/O over the load generator's own sockets; [`loadgen`]),
//! with the same protocol and the same checks as plain Eddy's. A table sets
//! it beside plain Eddy in each scenario both ran (at 1,000 clients × 10
//! senders, the issue's figure): deliveries/s and server CPU per delivery,
//! the cost of encryption, and memory per connection. The clients' own
//! crypto runs on the load generator's CPU (its column shows it) and is not
//! counted as the server's. It needs `cargo bench --features tls` (the Eddy
//! the bench builds has TLS only then); without it, it is reported as
//! skipped.
//!
//! `uws`, the uWebSockets peer (`benches/peers/uws/`), needs `UWS_SRC=DIR`:
//! it is built from `DIR/uWebSockets` and `DIR/uSockets` at the commits
//! `benches/peers/uws/PINS` names (`get-sources.sh` makes such a directory;
//! see `benches/peers/README.md`), pinned as Eddy is. Unset, or the sources
//! not at those commits, it is reported as skipped: the sources are on no
//! package registry, and CI has no network to fetch them.
//!
//! `EDDY_BENCH_BASELINE=PATH` adds `eddy-before`: the Eddy binary at PATH
//! (relative to the package root), built from an older commit, run with
//! Eddy's flags less those it does not know, pinned as Eddy is, and shown
//! as a server of its own with its ratio to Eddy. Unset, it is left out.
//! To build one from commit b7526fc, from the package root:
//!
//! ```sh
//! git worktree add target/baseline b7526fc && cargo build --release --manifest-path target/baseline/Cargo.toml
//! EDDY_BENCH_BASELINE=target/baseline/target/release/eddy cargo bench --bench fanout
//! ```

mod loadgen;
mod pki;
mod plot;
mod proc;
mod servers;
mod startup;

use std::fmt::Write as _;
use std::time::Duration;

use loadgen::{Outcome, Plan};
use servers::{Kind, Recipe};

/// The history memory scenario's cap on Eddy's history, in bytes: 32 MiB,
/// passed as both `--history-memory` and `--history-bytes`.
const HISTORY_BUDGET: usize = 32 * 1024 * 1024;

/// The history memory scenario's line size: about 1 KB, so that the cap is
/// passed in seconds, with few lines to check.
const HISTORY_LINE_BYTES: usize = 1024;

/// The history memory scenario's lines: 70,000 lines of 1 KiB are 2.1 times
/// [`HISTORY_BUDGET`] in message bytes alone (more with the JSON around
/// each), so the history must evict, and over the whole budget twice.
const HISTORY_LINES: usize = 70_000;

/// How long the bench waits after the connect phase before the lines: the
/// server's RSS is read right after the joins and again after this quiet.
const SETTLE: Duration = Duration::from_secs(1);

/// The most fast clients' p99 may grow, as a multiple of the all-fast
/// run's, in a scenario with slow readers (the target).
const SLOW_P99_TARGET: f64 = 2.0;

/// One load shape.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    clients: usize,
    senders: usize,
    lines_per_sender: usize,
    connect_limit: Duration,
    send_limit: Duration,
    /// Every server as it runs by default (Eddy announcing joins only in
    /// rooms up to 1,000), instead of every join announced everywhere.
    defaults: bool,
    /// Open loop at this many lines a second, all senders together;
    /// `None`: closed loop.
    rate: Option<f64>,
    /// Bytes of every line sent.
    line_bytes: usize,
    /// Percent of the non-senders that read [`loadgen::SLOW_FACTOR`] times
    /// slower than the rest (0: none).
    slow_percent: usize,
    /// Eddy only: its history capped at this many bytes, to show that the
    /// cap holds; the others are not run (n/a).
    history_budget: Option<usize>,
    /// Tornado is not run (n/a): the scenario is far beyond what it
    /// delivers within the time limit, and would only cost minutes.
    without_tornado: bool,
    /// Eddy's (and the baseline's) `--max-pending-bytes`, if not its
    /// default: a smaller cap lets a slow reader's backlog pass it with
    /// fewer lines, and so a shorter run.
    pending_cap: Option<usize>,
    /// Rooms the clients are spread over, evenly, the senders too (see
    /// [`loadgen::Plan::rooms`]); 1: one room, plain `/soc`. Above 1, Eddy
    /// and the uWebSockets peer only: the other peers have no rooms.
    rooms: usize,
    /// Lines a sender may have in flight, closed loop (see
    /// [`loadgen::Plan::window`]).
    window: usize,
    /// Runs of this scenario, if not the set's (`EDDY_BENCH_RUNS` overrides
    /// both): fewer for the ones that take minutes a run.
    runs: Option<usize>,
}

impl Scenario {
    const fn new(clients: usize, senders: usize, lines_per_sender: usize, limit_s: u64) -> Self {
        Scenario {
            clients,
            senders,
            lines_per_sender,
            connect_limit: Duration::from_secs(limit_s),
            send_limit: Duration::from_secs(limit_s),
            defaults: false,
            rate: None,
            line_bytes: loadgen::LINE_BYTES,
            slow_percent: 0,
            history_budget: None,
            without_tornado: false,
            pending_cap: None,
            rooms: 1,
            window: 1,
            runs: None,
        }
    }

    /// The same run `runs` times, whatever the set's count.
    const fn with_runs(self, runs: usize) -> Self {
        Scenario {
            runs: Some(runs),
            ..self
        }
    }

    /// The same with each sender keeping `lines` in flight.
    const fn with_window(self, lines: usize) -> Self {
        Scenario {
            window: lines,
            ..self
        }
    }

    /// Many rooms: `rooms` rooms of `room_size` clients, `senders_per_room`
    /// of them sending `lines_per_sender` lines each, in their room only.
    const fn many_rooms(
        rooms: usize,
        room_size: usize,
        senders_per_room: usize,
        lines_per_sender: usize,
        limit_s: u64,
    ) -> Self {
        Scenario {
            rooms,
            ..Scenario::new(
                rooms * room_size,
                rooms * senders_per_room,
                lines_per_sender,
                limit_s,
            )
        }
    }

    /// The same with Eddy's output cap at `bytes`.
    const fn with_pending_cap(self, bytes: usize) -> Self {
        Scenario {
            pending_cap: Some(bytes),
            ..self
        }
    }

    /// The same without Tornado (see [`Scenario::without_tornado`]).
    const fn without_tornado(self) -> Self {
        Scenario {
            without_tornado: true,
            ..self
        }
    }

    /// The history memory scenario: lines of [`HISTORY_LINE_BYTES`] to a
    /// history capped at [`HISTORY_BUDGET`].
    const fn history_memory(clients: usize, senders: usize, lines: usize, limit_s: u64) -> Self {
        Scenario {
            line_bytes: HISTORY_LINE_BYTES,
            history_budget: Some(HISTORY_BUDGET),
            ..Scenario::new(clients, senders, lines, limit_s)
        }
    }

    /// The same with every server's default settings.
    const fn with_defaults(self) -> Self {
        Scenario {
            defaults: true,
            ..self
        }
    }

    /// The same with `percent` of the non-senders slow readers.
    const fn with_slow(self, percent: usize) -> Self {
        Scenario {
            slow_percent: percent,
            ..self
        }
    }

    /// The same with every client fast: the reference of a scenario with
    /// slow readers (its servers, as the scenario's).
    const fn all_fast(self) -> Self {
        self.with_slow(0)
    }

    /// Why `kind` does not run it, if it does not: the history memory
    /// scenario is this Eddy's alone, and many rooms need a server with
    /// rooms (`has_rooms`: see [`servers::Recipe::has_rooms`]).
    fn not_for(&self, kind: Kind, has_rooms: bool) -> Option<&'static str> {
        if self.is_history() && !kind.is_this_eddy() {
            Some(NOT_APPLICABLE)
        } else if self.rooms > 1 && !has_rooms {
            Some(NO_ROOMS)
        } else {
            None
        }
    }

    /// Whether it is the history memory scenario (a table of its own).
    const fn is_history(&self) -> bool {
        self.history_budget.is_some()
    }

    /// The lines to deliver in all: each client has its room's senders'
    /// lines.
    const fn deliveries(&self) -> usize {
        self.clients * (self.senders / self.rooms) * self.lines_per_sender
    }

    /// Whether it is the plain single-room fan-out, closed loop, every
    /// client fast, every server as the bench sets it: the kind a
    /// many-rooms scenario is compared with.
    const fn is_plain(&self) -> bool {
        self.rooms == 1
            && !self.defaults
            && self.rate.is_none()
            && self.slow_percent == 0
            && self.history_budget.is_none()
            && self.pending_cap.is_none()
    }

    fn slow_clients(&self) -> usize {
        self.clients.saturating_sub(self.senders) * self.slow_percent / 100
    }

    /// Flags of this scenario's own for Eddy (and the baseline).
    fn eddy_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(budget) = self.history_budget {
            for flag in ["--history-memory", "--history-bytes"] {
                flags.extend([flag.to_owned(), budget.to_string()]);
            }
        }
        if let Some(cap) = self.pending_cap {
            // The cap must hold eight of the largest messages.
            flags.extend(["--max-pending-bytes".to_owned(), cap.to_string()]);
            flags.extend(["--max-message-bytes".to_owned(), (cap / 8).to_string()]);
        }
        flags
    }

    fn name(&self) -> String {
        let who = if self.rooms > 1 {
            let per_room = self.senders / self.rooms;
            format!(
                "{} clients in {} rooms of {} × {} sender{} a room",
                thousands(self.clients),
                thousands(self.rooms),
                thousands(self.clients / self.rooms),
                per_room,
                if per_room == 1 { "" } else { "s" },
            )
        } else {
            format!(
                "{} clients × {} sender{}",
                thousands(self.clients),
                self.senders,
                if self.senders == 1 { "" } else { "s" },
            )
        };
        format!(
            "{who} × {} line{}{}{}{}{}{}{}{}",
            thousands(self.lines_per_sender),
            if self.lines_per_sender == 1 { "" } else { "s" },
            if self.line_bytes == loadgen::LINE_BYTES {
                String::new()
            } else {
                format!(" of {} B", thousands(self.line_bytes))
            },
            if self.defaults { " (defaults)" } else { "" },
            if self.window > 1 {
                format!(", {} in flight a sender", self.window)
            } else {
                String::new()
            },
            self.rate
                .map(|r| format!(", open loop at {r} lines/s"))
                .unwrap_or_default(),
            if self.slow_percent > 0 {
                format!(", {} % slow readers", self.slow_percent)
            } else {
                String::new()
            },
            self.pending_cap
                .map(|cap| format!(", Eddy's cap {} KiB", thousands(cap / 1024)))
                .unwrap_or_default(),
            match self.runs {
                Some(1) => ", one run".to_owned(),
                Some(n) => format!(", {n} runs"),
                None => String::new(),
            },
        )
    }
}

/// The scenarios whose name contains one of the `|`-separated parts of
/// `EDDY_BENCH_ONLY` (all of them if it is unset or empty).
fn only(scenarios: Vec<Scenario>) -> Vec<Scenario> {
    let wanted = std::env::var("EDDY_BENCH_ONLY").unwrap_or_default();
    let parts: Vec<&str> = wanted
        .split('|')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return scenarios;
    }
    let kept: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| parts.iter().any(|p| s.name().contains(p)))
        .collect();
    if kept.is_empty() {
        eprintln!("EDDY_BENCH_ONLY={wanted}: no scenario of the set matches");
        std::process::exit(2);
    }
    kept
}

/// `scenarios`, each one with slow readers preceded by its all-fast
/// reference unless the set already runs that before it.
fn with_references(scenarios: Vec<Scenario>) -> Vec<Scenario> {
    let mut out: Vec<Scenario> = Vec::new();
    for scenario in scenarios {
        let reference = scenario.all_fast();
        if scenario.slow_percent > 0 && !out.iter().any(|s| s.name() == reference.name()) {
            out.push(reference);
        }
        out.push(scenario);
    }
    out
}

/// What one server did in one scenario: the medians of its runs.
struct Row {
    scenario: Scenario,
    kind: Kind,
    result: Result<Summary, String>,
}

/// Medians of the runs' figures, or the worst run's for what must be zero.
/// Latencies and deliveries are the fast clients' (every client's, where
/// none is slow).
#[derive(Debug, Clone, Default)]
struct Summary {
    connect_s: Option<f64>,
    deliveries_per_s: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Every client's, slow readers included; `None` if no run got to send.
    lost: Option<u64>,
    /// Lines announced lost in `gap` notices (part of `lost`).
    gap_lines: u64,
    out_of_order: u64,
    twice: u64,
    /// Lines that carried the server's `"seq"`: 0 if it numbers none.
    seq_lines: u64,
    seq_jumps: u64,
    seq_backs: u64,
    /// History `reset` notices.
    resets: u64,
    /// Lines of another room's senders, and welcomes that did not name the
    /// client's room (with rooms; both must be 0).
    foreign: u64,
    wrong_room: u64,
    failed_clients: u64,
    server_cpu_s_per_million: Option<f64>,
    /// RSS per connection over the server's before any came: right after
    /// the joins, a second later, and after the lines.
    joins_kib_per_conn: Option<f64>,
    settled_kib_per_conn: Option<f64>,
    idle_kib_per_conn: Option<f64>,
    peak_kib_per_conn: Option<f64>,
    loadgen_cpu: Option<f64>,
    /// "connect" or "send" if a phase ran out of time in any run.
    timed_out: Option<&'static str>,
    /// What a fast client read during the send phase, bytes a second: in
    /// an all-fast run, what sets a slow reader's pace.
    client_bytes_per_s: Option<f64>,
    /// Slow readers: how many, their pace (bytes a second), latencies,
    /// how long after the last line was sent they had every line, lines
    /// they lost, how many failed, whether any run ran out of time.
    slow_clients: usize,
    slow_bytes_per_s: Option<f64>,
    slow_p50_ms: Option<f64>,
    slow_p99_ms: Option<f64>,
    slow_max_ms: Option<f64>,
    slow_caught_up_s: Option<f64>,
    slow_lost: Option<u64>,
    slow_failed: u64,
    slow_timed_out: bool,
    /// `caught_up` notices (Eddy's sign that a client that fell behind is
    /// live again).
    caught_up: u64,
    /// The server's RSS in KiB with every client connected, before the
    /// lines; after them; and its peak.
    rss_idle_kib: Option<f64>,
    rss_after_kib: Option<f64>,
    peak_kib: Option<f64>,
    /// Flags (with values) this build does not know and was run without.
    dropped_flags: Vec<String>,
    /// Over TLS: what the clients and the server agreed on (the first
    /// run's).
    tls: Option<String>,
}

impl Summary {
    /// What went wrong that must not with Eddy: lines lost, out of order or
    /// twice, a broken `"seq"`, a phase out of time.
    fn faults(&self) -> Vec<String> {
        let mut faults = Vec::new();
        for (count, what) in [
            (self.lost.unwrap_or(0), "lost"),
            (self.out_of_order, "out of order"),
            (self.twice, "twice"),
            (self.seq_jumps, "seq jumps"),
            (self.seq_backs, "seq steps back"),
            (self.foreign, "lines from another room"),
            (self.wrong_room, "welcomes not naming the client's room"),
        ] {
            if count > 0 {
                faults.push(format!("{count} {what}"));
            }
        }
        if let Some(phase) = self.timed_out {
            faults.push(format!("{phase} ran out of time"));
        }
        if self.slow_timed_out {
            faults.push("slow readers ran out of time".into());
        }
        faults
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported.
    let set = std::env::var("EDDY_BENCH").unwrap_or_else(|_| "quick".into());
    if set == "startup" {
        return startup::run();
    }
    let (scenarios, default_runs): (Vec<Scenario>, usize) = match set.as_str() {
        "smoke" => (
            vec![
                Scenario::new(10, 1, 20, 60),
                Scenario::new(10, 2, 20, 60),
                // 4 rooms of 10, 400 deliveries as the scenario above: the
                // rooms table compares the two.
                Scenario::many_rooms(4, 10, 1, 10, 60),
                Scenario::many_rooms(4, 10, 1, 10, 60).with_window(2),
                Scenario {
                    rate: Some(200.0),
                    ..Scenario::new(10, 2, 20, 60)
                },
                // One slow reader, 40 lines (~4 KB) to read: its backlog
                // stays far below --max-pending-bytes (1 MiB), past which
                // an Eddy without a history cuts a reader off, so every
                // Eddy, old or new, must deliver it all, in order.
                Scenario::new(20, 2, 20, 60).with_slow(10),
            ],
            1,
        ),
        "quick" => (
            vec![
                Scenario::new(100, 1, 500, 120),
                Scenario::new(100, 10, 200, 120),
                Scenario::new(1000, 1, 100, 120),
                Scenario::new(1000, 10, 100, 120),
                // As many deliveries as the scenario above (1,000,000),
                // spread over 1,000 rooms of 10: compared with it. One line
                // in flight a sender, then ten: as many lines in flight
                // towards each client as in the single room of 10 senders.
                Scenario::many_rooms(1000, 10, 1, 100, 120),
                Scenario::many_rooms(1000, 10, 1, 100, 120).with_window(10),
                // 3,000 lines, ~420 KB to each client: a slow reader's
                // backlog, past what the kernel's buffers take, passes a
                // 64 KiB --max-pending-bytes, so Eddy feeds it from
                // history (an Eddy without one cuts it off; measured with
                // a debug log: each slow reader falls behind at least
                // once). Tornado would take minutes a run.
                Scenario::new(1000, 10, 300, 120)
                    .with_slow(10)
                    .with_pending_cap(64 * 1024)
                    .without_tornado(),
                Scenario::new(10_000, 10, 1, 60).with_defaults(),
                Scenario::history_memory(10, 1, HISTORY_LINES, 120),
            ],
            3,
        ),
        // Eddy against uWebSockets (and the tokio peer), every column the
        // performance issue names, in one run: 1,000 and 10,000 clients ×
        // 1 and × 10 senders, every join announced, and many rooms. The
        // 10,000-client runs take minutes each (uWS connects 10,000 with
        // every join announced in ~7 minutes): one run each.
        "versus" => (
            vec![
                Scenario::new(1000, 1, 100, 120),
                Scenario::new(1000, 10, 100, 120),
                Scenario::many_rooms(1000, 10, 1, 100, 120),
                Scenario::many_rooms(1000, 10, 1, 100, 120).with_window(10),
                Scenario::new(10_000, 1, 100, 900)
                    .without_tornado()
                    .with_runs(1),
                Scenario::new(10_000, 10, 20, 900)
                    .without_tornado()
                    .with_runs(1),
            ],
            3,
        ),
        "custom" => {
            let var = |name: &str, default: usize| {
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let history = std::env::var("EDDY_BENCH_HISTORY").is_ok_and(|h| h == "1");
            let scenario = if history {
                Scenario::history_memory(
                    var("EDDY_BENCH_CLIENTS", 10),
                    var("EDDY_BENCH_SENDERS", 1),
                    var("EDDY_BENCH_LINES", HISTORY_LINES),
                    var("EDDY_BENCH_LIMIT", 600) as u64,
                )
            } else {
                Scenario::new(
                    var("EDDY_BENCH_CLIENTS", 1000),
                    var("EDDY_BENCH_SENDERS", 10),
                    var("EDDY_BENCH_LINES", 100),
                    var("EDDY_BENCH_LIMIT", 600) as u64,
                )
            };
            let rooms = var("EDDY_BENCH_ROOMS", 1).max(1);
            let scenario =
                Scenario { rooms, ..scenario }.with_window(var("EDDY_BENCH_WINDOW", 1).max(1));
            let scenario = Scenario {
                rate: std::env::var("EDDY_BENCH_RATE")
                    .ok()
                    .and_then(|r| r.parse().ok()),
                ..scenario.with_slow(var("EDDY_BENCH_SLOW", 0).min(100))
            };
            let defaults = std::env::var("EDDY_BENCH_DEFAULTS").is_ok_and(|d| d == "1");
            (
                vec![if defaults {
                    scenario.with_defaults()
                } else {
                    scenario
                }],
                1,
            )
        }
        "full" => (
            vec![
                Scenario::new(100, 1, 500, 300),
                Scenario::new(100, 10, 200, 300),
                Scenario::new(1000, 1, 100, 300),
                Scenario::new(1000, 10, 100, 300),
                Scenario::many_rooms(1000, 10, 1, 100, 300),
                Scenario::many_rooms(1000, 10, 1, 100, 300).with_window(10),
                Scenario::new(1000, 10, 300, 300)
                    .with_slow(10)
                    .with_pending_cap(64 * 1024)
                    .without_tornado(),
                Scenario::new(10_000, 1, 10, 900),
                Scenario::new(10_000, 10, 10, 900),
                Scenario::new(10_000, 10, 1, 900).with_defaults(),
                Scenario::new(19_000, 10, 1, 900).with_defaults(),
                Scenario::history_memory(10, 1, HISTORY_LINES, 300),
            ],
            3,
        ),
        other => {
            eprintln!("EDDY_BENCH={other}: expected quick, full, versus, smoke, custom or startup");
            std::process::exit(2);
        }
    };
    let scenarios = with_references(only(scenarios));
    let runs_asked: Option<usize> = std::env::var("EDDY_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok());
    let runs = runs_asked.unwrap_or(default_runs);
    let wanted = std::env::var("EDDY_BENCH_SERVERS")
        .unwrap_or_else(|_| "eddy,eddy-tls,eddy-before,tornado,tokio,uws".into());

    match eddy::limits::raise_fd_limit() {
        Ok((_, soft, hard)) => eprintln!("open-file limit {soft} (hard {hard})"),
        Err(e) => eprintln!("could not raise the open-file limit: {e}"),
    }
    let pinned = proc::cpus() > 1 && proc::pin_to_cpu(1);
    // One client loop: on the one CPU it is pinned to, a second thread only
    // adds switches between the two (at 1,000 × 10 one thread carried 10–15 %
    // more lines against either server).
    let threads = std::env::var("EDDY_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);

    let mut recipes: Vec<(Kind, Result<Recipe, String>)> = Vec::new();
    for (name, kind, prepare) in [
        (
            "eddy",
            Kind::Eddy,
            (|| Some(servers::eddy())) as fn() -> Option<Result<Recipe, String>>,
        ),
        ("eddy-before", Kind::Baseline, servers::baseline),
        ("eddy-disk-everysec", Kind::EddyDisk("everysec"), || {
            Some(servers::eddy_disk("everysec"))
        }),
        ("eddy-disk-always", Kind::EddyDisk("always"), || {
            Some(servers::eddy_disk("always"))
        }),
        ("eddy-disk-no", Kind::EddyDisk("no"), || {
            Some(servers::eddy_disk("no"))
        }),
        ("eddy-redis", Kind::EddyRedis(1), || {
            Some(servers::eddy_redis(1))
        }),
        ("eddy-redis-2workers", Kind::EddyRedis(2), || {
            Some(servers::eddy_redis(2))
        }),
        ("eddy-metrics", Kind::EddyMetrics, || {
            Some(servers::eddy_metrics())
        }),
        ("eddy-tls", Kind::EddyTls, || Some(servers::eddy_tls())),
        ("tornado", Kind::Tornado, || Some(servers::tornado())),
        ("tokio", Kind::Tokio, || Some(servers::tokio())),
        ("uws", Kind::Uws, || Some(servers::uws())),
    ] {
        if !wanted.split(',').any(|w| w.trim() == name) {
            continue;
        }
        // `None`: not asked for (the baseline without its path).
        let Some(recipe) = prepare() else {
            continue;
        };
        eprintln!("preparing {}", kind.name());
        if kind == Kind::Uws {
            eprintln!("  {}", servers::uws_versions());
        }
        if let Err(why) = &recipe {
            eprintln!("  skipped: {why}");
        }
        recipes.push((kind, recipe));
    }

    let mut rows: Vec<Row> = Vec::new();
    for scenario in &scenarios {
        for (kind, recipe) in &recipes {
            let result = match (
                recipe,
                scenario.not_for(*kind, recipe.as_ref().is_ok_and(Recipe::has_rooms)),
            ) {
                (Err(why), _) => Err(format!("skipped: {why}")),
                (Ok(_), Some(why)) => Err(why.into()),
                (Ok(_), None) if scenario.without_tornado && *kind == Kind::Tornado => {
                    Err(TOO_SLOW.into())
                }
                (Ok(recipe), None) => slow_pace(&rows, scenario, *kind).and_then(|pace| {
                    let runs = runs_asked.or(scenario.runs).unwrap_or(runs);
                    measure(recipe, *scenario, runs, threads, pace)
                }),
            };
            match &result {
                Ok(s) => eprintln!(
                    "{} / {}: {} deliveries/s, connect {}, p99 {} ms{}{}{}",
                    scenario.name(),
                    kind.name(),
                    opt(s.deliveries_per_s, 0),
                    opt(s.connect_s, 2),
                    opt(s.p99_ms, 2),
                    if scenario.slow_percent > 0 {
                        format!(
                            ", slow readers' p99 {} ms, every line {} s after the last send",
                            opt(s.slow_p99_ms, 2),
                            opt(s.slow_caught_up_s, 2)
                        )
                    } else {
                        String::new()
                    },
                    if scenario.is_history() {
                        format!(
                            ", RSS {} MiB before the lines, {} MiB after",
                            opt(s.rss_idle_kib.map(mib), 1),
                            opt(s.rss_after_kib.map(mib), 1)
                        )
                    } else {
                        String::new()
                    },
                    match s.faults() {
                        faults if faults.is_empty() => String::new(),
                        faults => format!(" ({})", faults.join(", ")),
                    }
                ),
                Err(why) => eprintln!("{} / {}: {why}", scenario.name(), kind.name()),
            }
            rows.push(Row {
                scenario: *scenario,
                kind: *kind,
                result,
            });
        }
    }

    let report = report(&rows, &set, runs, pinned, threads);
    println!("{report}");
    let dir = servers::work_dir();
    let _ = std::fs::write(dir.join("results.md"), &report);
    let _ = std::fs::write(dir.join("fanout.svg"), plot::svg(&plot_data(&rows)));
    eprintln!("wrote {0}/results.md and {0}/fanout.svg", dir.display());
    // The runs are done: eddy-tls's certificate and key go (before any
    // exit below, which would skip the drop).
    drop(recipes);
    // Eddy must run and be right; over TLS too, where the bench has TLS
    // (without it, eddy-tls is skipped, and that is no failure).
    let must_pass =
        |kind: Kind| kind == Kind::Eddy || (kind == Kind::EddyTls && cfg!(feature = "tls"));
    let broken = rows
        .iter()
        .any(|r| must_pass(r.kind) && r.result.as_ref().is_ok_and(|s| !s.faults().is_empty()));
    if broken {
        eprintln!("Eddy lost, reordered, repeated or did not finish: see the table");
        std::process::exit(1);
    }
    if rows.iter().any(|r| must_pass(r.kind) && r.result.is_err()) {
        std::process::exit(1);
    }
}

/// The result of a server not run in a scenario for Eddy alone.
const NOT_APPLICABLE: &str = "n/a (Eddy only)";

/// The result of a server without rooms in a many-rooms scenario.
const NO_ROOMS: &str = "n/a (no rooms)";

/// A table row for a server that has no figures in a scenario: why, then
/// `empty` more cells.
fn error_row(out: &mut String, row: &Row, why: &str, empty: usize) {
    let _ = writeln!(
        out,
        "| {} | {} | {why} {}",
        row.scenario.name(),
        row.kind.name(),
        "|".repeat(empty)
    );
}

/// What a server left out of a scenario beyond its reach shows.
const TOO_SLOW: &str = "not run (minutes per run at its pace)";

/// A slow reader's pace in `scenario` on `kind`, in bytes a second: a
/// [`loadgen::SLOW_FACTOR`]th of what a client read in the all-fast
/// reference run of the same scenario on the same server (measured, so
/// "ten times slower" holds for each server, whatever its speed). 0 for a
/// scenario without slow readers.
fn slow_pace(rows: &[Row], scenario: &Scenario, kind: Kind) -> Result<f64, String> {
    if scenario.slow_percent == 0 {
        return Ok(0.0);
    }
    let reference = scenario.all_fast().name();
    rows.iter()
        .find(|r| r.kind == kind && r.scenario.name() == reference)
        .and_then(|r| r.result.as_ref().ok())
        .and_then(|s| s.client_bytes_per_s)
        .filter(|rate| *rate > 0.0)
        .map(|rate| rate / loadgen::SLOW_FACTOR)
        .ok_or_else(|| format!("no pace for the slow readers: \"{reference}\" measured none"))
}

/// One run's measurements.
struct Run {
    outcome: Outcome,
    /// The server's CPU time during the send phase.
    server_cpu: Option<Duration>,
    /// Its RSS before any client came, and its peak, in KiB.
    rss_before: u64,
    peak: u64,
    /// Its RSS a second after the connect phase (the join storm) ended,
    /// idle meanwhile.
    rss_settled: Option<u64>,
}

/// Runs one server through one scenario `runs` times; slow readers (if
/// any) read `slow_bytes_per_s`.
fn measure(
    recipe: &Recipe,
    scenario: Scenario,
    runs: usize,
    threads: usize,
    slow_bytes_per_s: f64,
) -> Result<Summary, String> {
    let mut outcomes = Vec::new();
    let mut dropped = Vec::new();
    for _ in 0..runs {
        if outcomes.iter().any(|r: &Run| {
            r.outcome.connect.is_none() || r.outcome.send_timed_out || r.outcome.slow_timed_out
        }) {
            break; // out of time once: the other runs would be too
        }
        let server = recipe.start(scenario.defaults, &scenario.eddy_flags())?;
        // The server's processes: itself, and its workers and Redis if any.
        let pids = server.pids();
        let cpu = || proc::cpu_time_of(&pids);
        let kib = |field| proc::status_kib_of(&pids, field);
        dropped.clone_from(&server.dropped);
        let rss_before = kib("VmRSS");
        let plan = Plan {
            addr: server.addr,
            clients: scenario.clients,
            senders: scenario.senders,
            lines_per_sender: scenario.lines_per_sender,
            line_bytes: scenario.line_bytes,
            rate: scenario.rate,
            window: scenario.window,
            rooms: scenario.rooms,
            joins_expected: {
                // Each newcomer is announced to those before it in its
                // room, while the room is within the server's announcing
                // size (the baseline's default is taken to be today's).
                let up_to = match recipe.kind {
                    kind if kind.is_eddy() && scenario.defaults => {
                        eddy::config::DEFAULT_ANNOUNCE_JOINS_UP_TO
                    }
                    _ => scenario.clients,
                };
                loadgen::joins_announced(scenario.clients, scenario.rooms, up_to)
            },
            threads,
            source_addrs: 8,
            connect_limit: scenario.connect_limit,
            send_limit: scenario.send_limit,
            slow_percent: scenario.slow_percent,
            slow_bytes_per_s,
            tls: recipe.tls_client(),
        };
        let mut cpu_at_send = None;
        let mut redis_at_send = None;
        let mut rss_settled = None;
        let outcome = loadgen::run(
            plan,
            || {
                // Right after the last join arrived, and again after a
                // second of quiet: what the server keeps of the storm.
                let right_after = kib("VmRSS");
                std::thread::sleep(SETTLE);
                rss_settled = Some(kib("VmRSS"));
                cpu_at_send = cpu();
                redis_at_send = server
                    .redis()
                    .map(|r| (r.commands(), proc::cpu_time(r.pid())));
                right_after
            },
            || kib("VmRSS"),
        );
        let cpu_after = cpu();
        let peak = kib("VmHWM");
        if let (Some(redis), Some((commands, redis_cpu))) = (server.redis(), redis_at_send) {
            // What Redis did for the lines: commands (a script counts as
            // itself and each call in it) and its own CPU.
            let lines = (scenario.senders * scenario.lines_per_sender).max(1) as f64;
            let commands = commands
                .zip(redis.commands())
                .map(|(a, b)| b.saturating_sub(a));
            let redis_cpu = redis_cpu
                .zip(proc::cpu_time(redis.pid()))
                .map(|(a, b)| b.saturating_sub(a));
            eprintln!(
                "  redis: {} commands per line, {} µs of its CPU per line",
                opt(commands.map(|c| c as f64 / lines), 1),
                opt(redis_cpu.map(|c| c.as_secs_f64() * 1e6 / lines), 1),
            );
        }
        server.stop();
        let server_cpu = cpu_at_send.zip(cpu_after).map(|(a, b)| b.saturating_sub(a));
        outcomes.push(Run {
            outcome,
            server_cpu,
            rss_before,
            peak,
            rss_settled,
        });
    }
    let mut summary = summarize(scenario, &outcomes);
    summary.slow_bytes_per_s = (scenario.slow_percent > 0).then_some(slow_bytes_per_s);
    summary.dropped_flags = dropped;
    Ok(summary)
}

fn summarize(scenario: Scenario, runs: &[Run]) -> Summary {
    let n = scenario.clients as f64;
    let sent = |r: &&Run| r.outcome.connect.is_some();
    let per = |f: &dyn Fn(&Run) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let worst = |f: &dyn Fn(&Outcome) -> u64| runs.iter().map(|r| f(&r.outcome)).max().unwrap_or(0);
    let finished = |o: &Outcome| o.connect.is_some() && !o.send_timed_out;
    let timed_out = runs.iter().find_map(|r| match &r.outcome {
        o if o.connect.is_none() => Some("connect"),
        o if o.send_timed_out => Some("send"),
        _ => None,
    });
    Summary {
        connect_s: per(&|r| r.outcome.connect.map(|c| c.as_secs_f64())),
        deliveries_per_s: per(&|r| finished(&r.outcome).then(|| r.outcome.deliveries_per_second())),
        p50_ms: per(&|r| r.outcome.latency_us(0.50).map(ms)),
        p90_ms: per(&|r| r.outcome.latency_us(0.90).map(ms)),
        p99_ms: per(&|r| r.outcome.latency_us(0.99).map(ms)),
        max_ms: per(&|r| r.outcome.latency_us(1.0).map(ms)),
        lost: runs.iter().filter(sent).map(|r| r.outcome.lost()).max(),
        gap_lines: worst(&|o| o.gap_lines),
        out_of_order: worst(&|o| o.out_of_order),
        twice: worst(&|o| o.twice),
        seq_lines: worst(&|o| o.seq_lines),
        seq_jumps: worst(&|o| o.seq_jumps),
        seq_backs: worst(&|o| o.seq_backs),
        resets: worst(&|o| o.resets),
        foreign: worst(&|o| o.foreign),
        wrong_room: worst(&|o| o.wrong_room),
        failed_clients: worst(&|o| o.failed_clients),
        server_cpu_s_per_million: per(&|r| {
            let o = &r.outcome;
            // Its CPU time runs until the slow readers are done too.
            let all = o.deliveries + o.slow_deliveries;
            let cpu = r.server_cpu.filter(|_| finished(o) && all > 0)?;
            Some(cpu.as_secs_f64() * 1e6 / all as f64)
        }),
        joins_kib_per_conn: per(&|r| {
            let right_after = r.outcome.idle_probe?;
            Some(right_after.saturating_sub(r.rss_before) as f64 / n)
        }),
        settled_kib_per_conn: per(&|r| {
            Some(r.rss_settled?.saturating_sub(r.rss_before) as f64 / n)
        }),
        idle_kib_per_conn: per(&|r| {
            let idle = r.outcome.after_probe?;
            Some(idle.saturating_sub(r.rss_before) as f64 / n)
        }),
        peak_kib_per_conn: per(&|r| Some(r.peak.saturating_sub(r.rss_before) as f64 / n)),
        loadgen_cpu: per(&|r| {
            let o = &r.outcome;
            (finished(o) && !o.send.is_zero())
                .then(|| o.send_cpu.as_secs_f64() / o.send.as_secs_f64())
        }),
        timed_out,
        client_bytes_per_s: per(&|r| r.outcome.client_bytes_per_s),
        slow_clients: scenario.slow_clients(),
        slow_bytes_per_s: None,
        slow_p50_ms: per(&|r| r.outcome.slow_latency_us(0.50).map(ms)),
        slow_p99_ms: per(&|r| r.outcome.slow_latency_us(0.99).map(ms)),
        slow_max_ms: per(&|r| r.outcome.slow_latency_us(1.0).map(ms)),
        slow_caught_up_s: per(&|r| r.outcome.slow_caught_up.map(|d| d.as_secs_f64())),
        slow_lost: runs
            .iter()
            .filter(sent)
            .map(|r| r.outcome.slow_lost())
            .max(),
        slow_failed: worst(&|o| o.slow_failed),
        slow_timed_out: runs.iter().any(|r| r.outcome.slow_timed_out),
        caught_up: worst(&|o| o.caught_up),
        rss_idle_kib: per(&|r| r.outcome.idle_probe.map(|k| k as f64)),
        rss_after_kib: per(&|r| r.outcome.after_probe.map(|k| k as f64)),
        peak_kib: per(&|r| Some(r.peak as f64)),
        dropped_flags: Vec::new(),
        tls: runs.iter().find_map(|r| r.outcome.tls.clone()),
    }
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values
        .get(values.len() / 2)
        .copied()
        .filter(|_| !values.is_empty())
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The Markdown report: how it was run, then one table row per scenario and
/// server; then, where the set has them, a table for the slow readers and
/// one for the history's memory.
fn report(rows: &[Row], set: &str, runs: usize, pinned: bool, threads: usize) -> String {
    let mut out = String::new();
    let machine = machine();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let baseline = rows
        .iter()
        .any(|r| r.kind == Kind::Baseline && r.result.is_ok());
    let uws = rows.iter().any(|r| r.kind == Kind::Uws && r.result.is_ok());
    let tls = rows
        .iter()
        .any(|r| r.kind == Kind::EddyTls && r.result.is_ok());
    let _ = writeln!(
        out,
        "`EDDY_BENCH={set} cargo bench`, {date} — {machine}; medians of {runs} run(s). Eddy \
         with `--rate-limit off --ping-interval off` and `--announce-joins-up-to all`: every \
         server announces every join, except in scenarios marked (defaults), where each runs \
         with its defaults (Eddy announces joins while the room has up to 1,000 members; the \
         peers always).{}{}{} {} Load generator: {threads} thread(s), acknowledgements \
         delayed.\n",
        if baseline {
            format!(
                " eddy-before: the Eddy binary at `{}`, with the same flags less those it does \
                 not know.",
                std::env::var("EDDY_BENCH_BASELINE").unwrap_or_default()
            )
        } else {
            String::new()
        },
        if uws {
            format!(
                " uws: `benches/peers/uws/chat.cpp` on {}, -O3, no SSL, no compression, no \
                 backpressure cap.",
                servers::uws_versions()
            )
        } else {
            String::new()
        },
        if tls {
            " eddy-tls: Eddy with `--tls-cert` and `--tls-key` (a certificate made by the \
             bench), every client speaking TLS (rustls, no session resumption); the clients' \
             crypto is the load generator's CPU, not the server's."
        } else {
            ""
        },
        if pinned {
            "Eddy (eddy-tls and eddy-before too), Tornado and uws pinned to CPU 0, the load generator to CPU 1, the tokio peer on all CPUs."
        } else {
            "No pinning (one CPU)."
        }
    );
    fanout_table(&mut out, rows);
    rooms_table(&mut out, rows);
    tls_table(&mut out, rows);
    slow_table(&mut out, rows);
    history_table(&mut out, rows);
    let mut notes: Vec<String> = Vec::new();
    for row in rows {
        let Ok(s) = &row.result else {
            continue;
        };
        let at = format!("{} / {}", row.scenario.name(), row.kind.name());
        if s.failed_clients > 0 {
            notes.push(format!("{at}: {} failed clients", s.failed_clients));
        }
        if s.resets > 0 {
            notes.push(format!("{at}: {} reset notices", s.resets));
        }
        if !s.dropped_flags.is_empty() {
            notes.push(format!(
                "{at}: run without `{}` (not in its --help)",
                s.dropped_flags.join("`, `")
            ));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{}", notes.join("; "));
    }
    out
}

/// The main table: every scenario but the history's, every server.
fn fanout_table(out: &mut String, rows: &[Row]) {
    if rows.iter().all(|r| r.scenario.is_history()) {
        return;
    }
    let _ = writeln!(
        out,
        "| scenario | server | connect s | deliveries/s | × Eddy | p50 ms | p90 ms | p99 ms | max ms | lost | out of order | twice | seq | server CPU s / M deliveries | KiB / conn after joins | 1 s later | idle KiB / conn | peak KiB / conn | load gen CPU |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for row in rows.iter().filter(|r| !r.scenario.is_history()) {
        let eddy = eddy_summary(rows, &row.scenario).and_then(|s| s.deliveries_per_s);
        match &row.result {
            Ok(s) => {
                let bound = s.loadgen_cpu.is_some_and(|c| c > 0.9);
                let ratio = s
                    .deliveries_per_s
                    .zip(eddy)
                    .map(|(d, e)| format!("{:.3}", d / e))
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.scenario.name(),
                    row.kind.name(),
                    match (s.timed_out, s.connect_s) {
                        (Some("connect"), _) =>
                            format!("over {} s", row.scenario.connect_limit.as_secs()),
                        (_, c) => opt(c, 2),
                    },
                    match s.timed_out {
                        Some("send") =>
                            format!("unfinished in {} s", row.scenario.send_limit.as_secs()),
                        _ => s
                            .deliveries_per_s
                            .map_or("–".into(), |d| thousands(d as usize)),
                    },
                    if bound { " ≥" } else { "" },
                    ratio,
                    opt(s.p50_ms, 2),
                    opt(s.p90_ms, 2),
                    opt(s.p99_ms, 2),
                    opt(s.max_ms, 1),
                    lost_cell(s),
                    s.out_of_order,
                    s.twice,
                    seq_cell(s),
                    opt(s.server_cpu_s_per_million, 2),
                    opt(s.joins_kib_per_conn, 2),
                    opt(s.settled_kib_per_conn, 2),
                    opt(s.idle_kib_per_conn, 2),
                    opt(s.peak_kib_per_conn, 1),
                    s.loadgen_cpu
                        .map_or("–".into(), |c| format!("{:.0} %", c * 100.0)),
                );
            }
            Err(why) => {
                error_row(out, row, why, 17);
            }
        }
    }
    let _ = writeln!(
        out,
        "\n≥: the load generator used over 90 % of its CPU, so the server may be faster than shown. \
         Lost, out-of-order and twice-had lines are the worst run's. A failed client is one the \
         server refused or closed; lines it missed after sending began count as lost. seq: the \
         server's line numbers, checked at every client to go up by one (ok; or jumps, numbers \
         skipped with no gap notice, and steps back, numbers repeated or reordered); – where the \
         server numbers none. With slow readers, latencies and deliveries/s are the fast \
         clients' (deliveries/s until each of them had every line); lost counts everyone's. \
         In rooms (Eddy and uws), each client expects its own room's lines, and seq counts from the \
         room's head at its welcome. Memory is the server's RSS over what it had before any client \
         came, per connection: right after the last join reached its client, a second later (no \
         traffic meanwhile), idle after the last line, and at its peak."
    );
}

/// Many rooms beside the single-room run with as many deliveries: the
/// issue's target is at least its deliveries/s at no more server CPU per
/// delivery.
fn rooms_table(out: &mut String, rows: &[Row]) {
    let many: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.rooms > 1 && matches!(r.kind, Kind::Eddy | Kind::Uws))
        .collect();
    if many.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n**Many rooms.** Clients spread evenly over rooms (`/soc?room=r<k>`), one sender a \
         room, beside the single-room scenario of the run with as many deliveries (closed loop \
         both). Every client checks that no line of another room reaches it and that its welcome \
         names its room. Target: deliveries/s at least the single room's, server CPU per \
         delivery no higher. Eddy and uws (the other peers have no rooms).\n"
    );
    let _ = writeln!(
        out,
        "| scenario | server | single room | deliveries/s | single room's | × | server CPU s / M deliveries | single room's | × | p50 ms | p99 ms | lines from other rooms | welcomes in the wrong room | target |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for row in many {
        let s = match &row.result {
            Ok(s) => s,
            Err(why) => {
                error_row(out, row, why, 12);
                continue;
            }
        };
        let single = rows.iter().find(|r| {
            r.kind == row.kind
                && r.scenario.is_plain()
                && r.scenario.line_bytes == row.scenario.line_bytes
                && r.scenario.deliveries() == row.scenario.deliveries()
        });
        let reference = single.and_then(|r| r.result.as_ref().ok());
        // A ratio only of figures above 0: CPU time comes in clock ticks
        // (10 ms), and a tiny run may be measured at none.
        let ratio = |now: Option<f64>, before: Option<f64>| {
            now.zip(before.filter(|b| *b > 0.0))
                .filter(|(n, _)| *n > 0.0)
                .map(|(n, b)| n / b)
        };
        let speed = ratio(
            s.deliveries_per_s,
            reference.and_then(|r| r.deliveries_per_s),
        );
        let cpu = ratio(
            s.server_cpu_s_per_million,
            reference.and_then(|r| r.server_cpu_s_per_million),
        );
        let mut missed = Vec::new();
        match speed {
            Some(x) if x >= 1.0 => {}
            Some(x) => missed.push(format!("deliveries ×{x:.2}")),
            None => missed.push("no single-room deliveries to compare".into()),
        }
        match cpu {
            Some(x) if x <= 1.0 => {}
            Some(x) => missed.push(format!("CPU ×{x:.2}")),
            None => missed.push("no single-room CPU to compare".into()),
        }
        let faults = s.faults();
        if !faults.is_empty() {
            missed.push(faults.join(", "));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario.name(),
            row.kind.name(),
            single.map_or("–".into(), |r| r.scenario.name()),
            s.deliveries_per_s
                .map_or("–".into(), |d| thousands(d as usize)),
            reference
                .and_then(|r| r.deliveries_per_s)
                .map_or("–".into(), |d| thousands(d as usize)),
            opt(speed, 3),
            opt(s.server_cpu_s_per_million, 2),
            opt(reference.and_then(|r| r.server_cpu_s_per_million), 2),
            opt(cpu, 3),
            opt(s.p50_ms, 2),
            opt(s.p99_ms, 2),
            s.foreign,
            s.wrong_room,
            if missed.is_empty() {
                "met".into()
            } else {
                format!("missed: {}", missed.join("; "))
            },
        );
    }
}

/// Eddy over TLS beside plain Eddy in each scenario both ran: what
/// encryption costs the server, per delivery and per connection.
fn tls_table(out: &mut String, rows: &[Row]) {
    let tls: Vec<&Row> = rows
        .iter()
        .filter(|r| r.kind == Kind::EddyTls && !r.scenario.is_history() && r.result.is_ok())
        .collect();
    if tls.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n**TLS.** Eddy serving wss:// (eddy-tls: `--tls-cert`, `--tls-key`) beside plain Eddy, \
         same scenario, same checks. ×: TLS over plain. Server CPU is Eddy's alone: the clients' \
         TLS (handshakes, encryption, decryption) runs on the load generator's CPU, shown in its \
         column. Memory: the server's RSS per connection over what it had before any client \
         came, a second after the joins and at its peak.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | agreed | deliveries/s plain | TLS | × | server CPU s / M deliveries plain | TLS | × | p99 ms plain | TLS | KiB / conn 1 s after joins plain | TLS | peak KiB / conn plain | TLS | load gen CPU plain | TLS |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for row in tls {
        let Ok(s) = &row.result else {
            continue;
        };
        let Some(plain) = eddy_summary(rows, &row.scenario) else {
            error_row(out, row, "no plain Eddy run to compare", 14);
            continue;
        };
        // A ratio only of figures above 0: CPU time comes in clock ticks.
        let ratio = |tls: Option<f64>, plain: Option<f64>| {
            opt(
                tls.zip(plain.filter(|p| *p > 0.0))
                    .filter(|(t, _)| *t > 0.0)
                    .map(|(t, p)| t / p),
                3,
            )
        };
        let deliveries = |s: &Summary| {
            s.deliveries_per_s
                .map_or("–".into(), |d| thousands(d as usize))
        };
        let load = |s: &Summary| {
            s.loadgen_cpu
                .map_or("–".into(), |c| format!("{:.0} %", c * 100.0))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario.name(),
            s.tls.as_deref().unwrap_or("–"),
            deliveries(plain),
            deliveries(s),
            ratio(s.deliveries_per_s, plain.deliveries_per_s),
            opt(plain.server_cpu_s_per_million, 2),
            opt(s.server_cpu_s_per_million, 2),
            ratio(s.server_cpu_s_per_million, plain.server_cpu_s_per_million),
            opt(plain.p99_ms, 2),
            opt(s.p99_ms, 2),
            opt(plain.settled_kib_per_conn, 2),
            opt(s.settled_kib_per_conn, 2),
            opt(plain.peak_kib_per_conn, 1),
            opt(s.peak_kib_per_conn, 1),
            load(plain),
            load(s),
        );
    }
}

/// Eddy's figures in `scenario`, if it ran.
fn eddy_summary<'a>(rows: &'a [Row], scenario: &Scenario) -> Option<&'a Summary> {
    summary_of(rows, Kind::Eddy, scenario)
}

/// `kind`'s figures in `scenario`, if it ran.
fn summary_of<'a>(rows: &'a [Row], kind: Kind, scenario: &Scenario) -> Option<&'a Summary> {
    rows.iter()
        .find(|r| r.kind == kind && r.scenario.name() == scenario.name())
        .and_then(|r| r.result.as_ref().ok())
}

/// Lines lost, and how many of them the server announced in gap notices.
fn lost_cell(s: &Summary) -> String {
    match (s.lost, s.gap_lines) {
        (None, _) => "–".into(),
        (Some(lost), 0) => lost.to_string(),
        (Some(lost), gap) => format!("{lost} ({gap} in gap notices)"),
    }
}

fn seq_cell(s: &Summary) -> String {
    match (s.seq_lines, s.seq_jumps, s.seq_backs) {
        (0, _, _) => "–".into(),
        (_, 0, 0) => "ok".into(),
        (_, jumps, backs) => format!("{jumps} jumps, {backs} back"),
    }
}

/// The slow readers' table: their pace, both latencies, the target.
fn slow_table(out: &mut String, rows: &[Row]) {
    let slow: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.slow_percent > 0)
        .collect();
    if slow.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n**Slow readers.** A slow reader reads through a token bucket of a tenth of the bytes \
         per second a client read in the same scenario with every client fast (the all-fast row \
         above, same server), with a small receive buffer and Ethernet-sized TCP segments, so \
         that its backlog waits at the server, as behind a slow link, not in the kernel's \
         loopback buffers. At that pace a slow reader needs about ten times the all-fast send \
         phase to read every line, so the time it took after the last send mostly shows that \
         nothing was lost on the way. Target: fast clients' p99 within {SLOW_P99_TARGET}× of \
         the all-fast run's, and no line lost by anyone.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | server | slow readers | their pace KiB/s | fast p99 ms | all-fast p99 ms | × all-fast | slow p50 ms | slow p99 ms | slow max ms | slow had all, s after last send | slow lost | slow failed | caught-up notices | target |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for row in slow {
        let s = match &row.result {
            Ok(s) => s,
            Err(why) => {
                error_row(out, row, why, 13);
                continue;
            }
        };
        let reference = summary_of(rows, row.kind, &row.scenario.all_fast()).and_then(|r| r.p99_ms);
        let growth = s.p99_ms.zip(reference).map(|(p99, before)| p99 / before);
        let mut missed = Vec::new();
        match growth {
            Some(g) if g <= SLOW_P99_TARGET => {}
            Some(g) => missed.push(format!("p99 ×{g:.1}")),
            None => missed.push("no p99 to compare".into()),
        }
        if s.lost.unwrap_or(0) > 0 {
            missed.push(format!("{} lost", s.lost.unwrap_or(0)));
        }
        if s.timed_out.is_some() || s.slow_timed_out {
            missed.push(format!(
                "unfinished in {} s",
                row.scenario.send_limit.as_secs()
            ));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario.name(),
            row.kind.name(),
            s.slow_clients,
            opt(s.slow_bytes_per_s.map(|b| b / 1024.0), 1),
            opt(s.p99_ms, 2),
            opt(reference, 2),
            opt(growth, 2),
            opt(s.slow_p50_ms, 1),
            opt(s.slow_p99_ms, 1),
            opt(s.slow_max_ms, 1),
            if s.slow_timed_out {
                format!("over {} s", row.scenario.send_limit.as_secs())
            } else {
                opt(s.slow_caught_up_s, 2)
            },
            s.slow_lost.map_or("–".into(), |l| l.to_string()),
            s.slow_failed,
            s.caught_up,
            if missed.is_empty() {
                "met".into()
            } else {
                format!("missed: {}", missed.join(", "))
            },
        );
    }
}

/// The history's memory: Eddy's RSS before and after more lines than its
/// history may keep, beside the cap.
fn history_table(out: &mut String, rows: &[Row]) {
    let history: Vec<&Row> = rows.iter().filter(|r| r.scenario.is_history()).collect();
    let Some(first) = history.first() else {
        return;
    };
    let scenario = first.scenario;
    let _ = writeln!(
        out,
        "\n**History memory.** Eddy with `--history-memory` and `--history-bytes` set to the \
         budget; {} sender{} send{} {} lines of {} B ({:.0} MiB of text) to {} clients, closed \
         loop. RSS from /proc: with every client connected, before the lines; after the last \
         line reached every client; the peak. Eddy only.\n",
        scenario.senders,
        if scenario.senders == 1 { "" } else { "s" },
        if scenario.senders == 1 { "s" } else { "" },
        thousands(scenario.senders * scenario.lines_per_sender),
        thousands(scenario.line_bytes),
        mib((scenario.senders * scenario.lines_per_sender * scenario.line_bytes) as f64 / 1024.0),
        thousands(scenario.clients),
    );
    let _ = writeln!(
        out,
        "| scenario | server | history budget MiB | RSS before the lines MiB | RSS after MiB | growth MiB | peak RSS MiB | deliveries/s | lost |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for row in history {
        let budget = row
            .scenario
            .history_budget
            .map_or("–".into(), |b| format!("{:.0}", mib(b as f64 / 1024.0)));
        match &row.result {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} |",
                    row.scenario.name(),
                    row.kind.name(),
                    budget,
                    if s.dropped_flags.is_empty() {
                        ""
                    } else {
                        " (flags not known to this build: not applied)"
                    },
                    opt(s.rss_idle_kib.map(mib), 1),
                    opt(s.rss_after_kib.map(mib), 1),
                    opt(
                        s.rss_idle_kib
                            .zip(s.rss_after_kib)
                            .map(|(before, after)| mib(after - before)),
                        1
                    ),
                    opt(s.peak_kib.map(mib), 1),
                    match s.timed_out {
                        Some(phase) => format!("{phase} unfinished"),
                        None => s
                            .deliveries_per_s
                            .map_or("–".into(), |d| thousands(d as usize)),
                    },
                    lost_cell(s),
                );
            }
            Err(why) => {
                error_row(out, row, why, 7);
            }
        }
    }
}

/// CPU model, CPUs and memory, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let memory = proc_meminfo_gib();
    format!("{} × {model}, {memory:.0} GiB", proc::cpus())
}

fn proc_meminfo_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0))
}

fn plot_data(rows: &[Row]) -> Vec<plot::Group> {
    let mut groups: Vec<plot::Group> = Vec::new();
    for row in rows.iter().filter(|r| !r.scenario.is_history()) {
        let name = row.scenario.name();
        if !groups.iter().any(|g| g.label == name) {
            groups.push(plot::Group {
                label: name.clone(),
                bars: Vec::new(),
            });
        }
        let group = groups
            .iter_mut()
            .find(|g| g.label == name)
            .expect("just added");
        let value = row.result.as_ref().ok().and_then(|s| s.deliveries_per_s);
        group.bars.push((row.kind.name().to_owned(), value));
    }
    groups
}
