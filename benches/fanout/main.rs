//! `cargo bench`: Eddy against its peers, same load, same machine, one run.
//!
//! For each scenario (N clients, S senders, M lines each) and each server
//! (Eddy; the seed's Tornado server; a tokio-tungstenite chat in the shape
//! of that crate's own example), the bench starts the server, runs the load
//! generator ([`loadgen`]) against it, reads the server's CPU time and
//! memory from /proc, and stops it. Each scenario is run `runs` times and
//! the medians are reported, with ratios to Eddy, as a Markdown table and an
//! SVG plot in `target/eddy-bench/`.
//!
//! On a machine with two or more CPUs the server under test is pinned to
//! CPU 0 (the tokio peer excepted: its runtime gets every CPU, as its users
//! would run it) and the load generator to CPU 1; the generator's own CPU
//! use is reported, and where it is near one full CPU the server's figures
//! are marked as lower bounds.
//!
//! Sets: `EDDY_BENCH=quick` (the default: minutes), `full` (adds 10,000
//! clients and 19,000 held connections; about an hour, mostly Tornado), or
//! `smoke` (tiny, for CI: proves the bench still runs; its numbers mean
//! nothing), or `custom` (one scenario from `EDDY_BENCH_CLIENTS`,
//! `EDDY_BENCH_SENDERS`, `EDDY_BENCH_LINES`, `EDDY_BENCH_LIMIT` seconds,
//! `EDDY_BENCH_DEFAULTS=1` for each server's default settings,
//! `EDDY_BENCH_RATE=LINES_PER_SEC` for an open loop).
//! `EDDY_BENCH_RUNS` overrides the runs per scenario;
//! `EDDY_BENCH_SERVERS=eddy,tokio` picks servers.

mod loadgen;
mod plot;
mod proc;
mod servers;

use std::fmt::Write as _;
use std::time::Duration;

use loadgen::{Outcome, Plan};
use servers::{Kind, Recipe};

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
        }
    }

    /// The same with every server's default settings.
    const fn with_defaults(self) -> Self {
        Scenario {
            defaults: true,
            ..self
        }
    }

    fn name(&self) -> String {
        format!(
            "{} clients × {} sender{}{}{}",
            thousands(self.clients),
            self.senders,
            if self.senders == 1 { "" } else { "s" },
            if self.defaults { " (defaults)" } else { "" },
            self.rate
                .map(|r| format!(", open loop at {r} lines/s"))
                .unwrap_or_default()
        )
    }
}

/// What one server did in one scenario: the medians of its runs.
struct Row {
    scenario: Scenario,
    kind: Kind,
    result: Result<Summary, String>,
}

#[derive(Debug, Clone, Default)]
struct Summary {
    connect_s: Option<f64>,
    deliveries_per_s: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// `None` if no run got to send.
    lost: Option<u64>,
    out_of_order: u64,
    failed_clients: u64,
    server_cpu_s_per_million: Option<f64>,
    idle_kib_per_conn: Option<f64>,
    peak_kib_per_conn: Option<f64>,
    loadgen_cpu: Option<f64>,
    /// "connect" or "send" if a phase ran out of time in any run.
    timed_out: Option<&'static str>,
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported.
    let set = std::env::var("EDDY_BENCH").unwrap_or_else(|_| "quick".into());
    let (scenarios, default_runs): (Vec<Scenario>, usize) = match set.as_str() {
        "smoke" => (
            vec![
                Scenario::new(10, 1, 20, 60),
                Scenario::new(10, 2, 20, 60),
                Scenario {
                    rate: Some(200.0),
                    ..Scenario::new(10, 2, 20, 60)
                },
            ],
            1,
        ),
        "quick" => (
            vec![
                Scenario::new(100, 1, 500, 120),
                Scenario::new(100, 10, 200, 120),
                Scenario::new(1000, 1, 100, 120),
                Scenario::new(1000, 10, 100, 120),
                Scenario::new(10_000, 10, 1, 60).with_defaults(),
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
            let scenario = Scenario::new(
                var("EDDY_BENCH_CLIENTS", 1000),
                var("EDDY_BENCH_SENDERS", 10),
                var("EDDY_BENCH_LINES", 100),
                var("EDDY_BENCH_LIMIT", 600) as u64,
            );
            let scenario = Scenario {
                rate: std::env::var("EDDY_BENCH_RATE")
                    .ok()
                    .and_then(|r| r.parse().ok()),
                ..scenario
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
                Scenario::new(10_000, 1, 10, 900),
                Scenario::new(10_000, 10, 10, 900),
                Scenario::new(10_000, 10, 1, 900).with_defaults(),
                Scenario::new(19_000, 10, 1, 900).with_defaults(),
            ],
            3,
        ),
        other => {
            eprintln!("EDDY_BENCH={other}: expected quick, full, smoke or custom");
            std::process::exit(2);
        }
    };
    let runs = std::env::var("EDDY_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default_runs);
    let wanted =
        std::env::var("EDDY_BENCH_SERVERS").unwrap_or_else(|_| "eddy,tornado,tokio".into());

    match eddy::limits::raise_fd_limit() {
        Ok((_, soft, hard)) => eprintln!("open-file limit {soft} (hard {hard})"),
        Err(e) => eprintln!("could not raise the open-file limit: {e}"),
    }
    let pinned = proc::cpus() > 1 && proc::pin_to_cpu(1);
    let threads = std::env::var("EDDY_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);

    let mut recipes: Vec<(Kind, Result<Recipe, String>)> = Vec::new();
    for (name, prepare) in [
        ("eddy", servers::eddy as fn() -> Result<Recipe, String>),
        ("tornado", servers::tornado),
        ("tokio", servers::tokio),
    ] {
        let kind = match name {
            "eddy" => Kind::Eddy,
            "tornado" => Kind::Tornado,
            _ => Kind::Tokio,
        };
        if wanted.split(',').any(|w| w.trim() == name) {
            eprintln!("preparing {}", kind.name());
            let recipe = prepare();
            if let Err(why) = &recipe {
                eprintln!("  skipped: {why}");
            }
            recipes.push((kind, recipe));
        }
    }

    let mut rows = Vec::new();
    for scenario in &scenarios {
        for (kind, recipe) in &recipes {
            let result = match recipe {
                Ok(recipe) => measure(recipe, *scenario, runs, threads),
                Err(why) => Err(format!("skipped: {why}")),
            };
            match &result {
                Ok(s) => eprintln!(
                    "{} / {}: {} deliveries/s, connect {}, p99 {} ms{}",
                    scenario.name(),
                    kind.name(),
                    opt(s.deliveries_per_s, 0),
                    opt(s.connect_s, 2),
                    opt(s.p99_ms, 2),
                    s.timed_out
                        .map(|p| format!(" ({p} ran out of time)"))
                        .unwrap_or_default()
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
    let broken = rows.iter().any(|r| {
        r.kind == Kind::Eddy
            && r.result.as_ref().is_ok_and(|s| {
                s.lost.unwrap_or(0) > 0 || s.out_of_order > 0 || s.timed_out.is_some()
            })
    });
    if broken {
        eprintln!("Eddy lost, reordered or did not finish: see the table");
        std::process::exit(1);
    }
    if rows
        .iter()
        .any(|r| r.kind == Kind::Eddy && r.result.is_err())
    {
        std::process::exit(1);
    }
}

/// One run's measurements.
struct Run {
    outcome: Outcome,
    /// The server's CPU time during the send phase.
    server_cpu: Option<Duration>,
    /// Its RSS before any client came, and its peak, in KiB.
    rss_before: u64,
    peak: u64,
}

/// Runs one server through one scenario `runs` times.
fn measure(
    recipe: &Recipe,
    scenario: Scenario,
    runs: usize,
    threads: usize,
) -> Result<Summary, String> {
    let mut outcomes = Vec::new();
    for _ in 0..runs {
        if outcomes
            .iter()
            .any(|r: &Run| r.outcome.connect.is_none() || r.outcome.send_timed_out)
        {
            break; // out of time once: the other runs would be too
        }
        let server = recipe.start(scenario.defaults)?;
        let pid = server.pid;
        let rss_before = proc::status_kib(pid, "VmRSS").unwrap_or(0);
        let plan = Plan {
            addr: server.addr,
            clients: scenario.clients,
            senders: scenario.senders,
            lines_per_sender: scenario.lines_per_sender,
            rate: scenario.rate,
            joins_expected: {
                // Each newcomer is announced to those before it, while the
                // room is within the server's announcing size.
                let announced = match recipe.kind {
                    Kind::Eddy if scenario.defaults => scenario
                        .clients
                        .min(eddy::config::DEFAULT_ANNOUNCE_JOINS_UP_TO),
                    _ => scenario.clients,
                };
                (announced * announced.saturating_sub(1) / 2) as u64
            },
            threads,
            source_addrs: 8,
            connect_limit: scenario.connect_limit,
            send_limit: scenario.send_limit,
        };
        let mut cpu_at_send = None;
        let outcome = loadgen::run(
            plan,
            || {
                cpu_at_send = proc::cpu_time(pid);
                proc::status_kib(pid, "VmRSS").unwrap_or(0)
            },
            || proc::status_kib(pid, "VmRSS").unwrap_or(0),
        );
        let cpu_after = proc::cpu_time(pid);
        let peak = proc::status_kib(pid, "VmHWM").unwrap_or(0);
        server.stop();
        let server_cpu = cpu_at_send.zip(cpu_after).map(|(a, b)| b.saturating_sub(a));
        outcomes.push(Run {
            outcome,
            server_cpu,
            rss_before,
            peak,
        });
    }
    Ok(summarize(scenario, &outcomes))
}

fn summarize(scenario: Scenario, runs: &[Run]) -> Summary {
    let n = scenario.clients as f64;
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
        lost: runs
            .iter()
            .filter(|r| r.outcome.connect.is_some())
            .map(|r| r.outcome.lost())
            .max(),
        out_of_order: worst(&|o| o.out_of_order),
        failed_clients: worst(&|o| o.failed_clients),
        server_cpu_s_per_million: per(&|r| {
            let o = &r.outcome;
            let cpu = r.server_cpu.filter(|_| finished(o) && o.deliveries > 0)?;
            Some(cpu.as_secs_f64() * 1e6 / o.deliveries as f64)
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
    }
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
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The Markdown report: how it was run, then one table row per scenario and
/// server.
fn report(rows: &[Row], set: &str, runs: usize, pinned: bool, threads: usize) -> String {
    let mut out = String::new();
    let machine = machine();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let _ = writeln!(
        out,
        "`EDDY_BENCH={set} cargo bench`, {date} — {machine}; medians of {runs} run(s). Eddy \
         with `--rate-limit off --ping-interval off` and `--announce-joins-up-to all`: every \
         server announces every join, except in scenarios marked (defaults), where each runs \
         with its defaults (Eddy announces joins while the room has up to 1,000 members; the \
         peers always). {} Load generator: {threads} threads.\n",
        if pinned {
            "Eddy and Tornado pinned to CPU 0, the load generator to CPU 1, the tokio peer on all CPUs."
        } else {
            "No pinning (one CPU)."
        }
    );
    let _ = writeln!(
        out,
        "| scenario | server | connect s | deliveries/s | × Eddy | p50 ms | p90 ms | p99 ms | max ms | lost | out of order | server CPU s / M deliveries | idle KiB / conn | peak KiB / conn | load gen CPU |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for row in rows {
        let eddy = rows
            .iter()
            .find(|r| r.kind == Kind::Eddy && r.scenario.name() == row.scenario.name())
            .and_then(|r| r.result.as_ref().ok())
            .and_then(|s| s.deliveries_per_s);
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
                    "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
                    s.lost.map_or("–".into(), |l| l.to_string()),
                    s.out_of_order,
                    opt(s.server_cpu_s_per_million, 2),
                    opt(s.idle_kib_per_conn, 1),
                    opt(s.peak_kib_per_conn, 1),
                    s.loadgen_cpu
                        .map_or("–".into(), |c| format!("{:.0} %", c * 100.0)),
                );
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {why} |||||||||||||",
                    row.scenario.name(),
                    row.kind.name()
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\n≥: the load generator used over 90 % of its CPU, so the server may be faster than shown. \
         Lost and out-of-order deliveries are the worst run's. A failed client is one the server \
         refused or closed."
    );
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .ok()
                .filter(|s| s.failed_clients > 0)
                .map(|s| {
                    format!(
                        "{} / {}: {} failed clients",
                        r.scenario.name(),
                        r.kind.name(),
                        s.failed_clients
                    )
                })
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n{}", failed.join("; "));
    }
    out
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
    for row in rows {
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
