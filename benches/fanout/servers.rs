//! The servers under test: Eddy, an older build of Eddy if one is given
//! (the baseline), and its peers, each started as its own process on a free
//! port, pinned where the plan says, and stopped with SIGTERM. A server that
//! cannot be prepared (no Python, no network for pip, a failed build, a
//! baseline path that is not there, no uWebSockets sources, a bench built
//! without the `tls` feature for `eddy-tls`) is reported as skipped with
//! the reason.
//!
//! Eddy and the baseline get the same flags, less those a build does not
//! know: each is asked for its `--help` once, and a flag it does not name
//! there is dropped (with its value) and reported, so that an older build
//! can run a scenario that sets a newer build's flags.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::pki::Pki;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Eddy,
    /// Eddy built from an older commit (`EDDY_BENCH_BASELINE`), to show
    /// what a change did.
    Baseline,
    /// Eddy with its history on disk (`--data-dir`, a fresh directory for
    /// each start) and this `--fsync` mode, to show what the disk costs.
    EddyDisk(&'static str),
    /// Eddy sharing its rooms through a Redis of its own (`--redis`, a
    /// fresh `redis-server` for each start, with an append-only file synced
    /// every second, as the disk log's default), with this many `--workers`.
    /// Its CPU and memory are the parent's, the workers' and Redis's.
    EddyRedis(u8),
    /// Eddy with its metrics listener (`--metrics-addr`), scraped once a
    /// second while it runs, as Prometheus would: what metrics cost.
    EddyMetrics,
    /// Eddy serving HTTPS and wss:// (`--tls-cert`, `--tls-key`: the
    /// certificate [`crate::pki`] makes), its clients speaking TLS: what
    /// encryption costs. Needs the `tls` feature.
    EddyTls,
    Tornado,
    Tokio,
    /// The uWebSockets chat (`benches/peers/uws/`), built from the sources
    /// at `UWS_SRC`: the one peer with rooms, one pub/sub topic each.
    Uws,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Eddy => "eddy",
            Kind::Baseline => "eddy-before",
            Kind::EddyDisk("always") => "eddy-disk-always",
            Kind::EddyDisk("no") => "eddy-disk-no",
            Kind::EddyDisk(_) => "eddy-disk-everysec",
            Kind::EddyRedis(1) => "eddy-redis",
            Kind::EddyRedis(_) => "eddy-redis-2workers",
            Kind::EddyMetrics => "eddy-metrics",
            Kind::EddyTls => "eddy-tls",
            Kind::Tornado => "tornado",
            Kind::Tokio => "tokio-tungstenite",
            Kind::Uws => "uws",
        }
    }

    /// Whether the server runs on one CPU (the load generator has the
    /// other); the tokio peer's multi-thread runtime gets all of them.
    pub fn pinned(self) -> bool {
        self != Kind::Tokio
    }

    /// Whether it is Eddy or a build of it: it takes Eddy's flags.
    pub fn is_eddy(self) -> bool {
        matches!(
            self,
            Kind::Eddy
                | Kind::Baseline
                | Kind::EddyDisk(_)
                | Kind::EddyRedis(_)
                | Kind::EddyMetrics
                | Kind::EddyTls
        )
    }

    /// Whether it is this build of Eddy, in any of its setups (for the
    /// scenarios only Eddy has: rooms, history memory).
    pub fn is_this_eddy(self) -> bool {
        matches!(
            self,
            Kind::Eddy | Kind::EddyDisk(_) | Kind::EddyRedis(_) | Kind::EddyMetrics | Kind::EddyTls
        )
    }

    /// Whether it has rooms as Eddy's (`/soc?room=NAME`, the welcome naming
    /// the room): this Eddy and the uWebSockets peer.
    pub fn has_rooms(self) -> bool {
        self.is_this_eddy() || self == Kind::Uws
    }
}

/// How to start one kind of server, once prepared.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub kind: Kind,
    program: PathBuf,
    args: Vec<String>,
    /// The program's `--help` (Eddy and the baseline; `None` for the
    /// peers): a flag it does not name is not passed.
    help: Option<String>,
    /// The certificate it serves and the clients' configuration (Eddy over
    /// TLS); shared by the recipe's clones, its files removed with the
    /// last of them.
    tls: Option<Arc<Pki>>,
}

/// The repository's root (benches run with the package root as cwd, but
/// do not rely on it).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the bench keeps what it builds and writes.
pub fn work_dir() -> PathBuf {
    let dir = root().join("target").join("eddy-bench");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Recipe {
    /// Whether the server has rooms as Eddy's: this Eddy, the uWebSockets
    /// peer, and a baseline Eddy whose `--help` names `--max-rooms` (one
    /// built after rooms landed).
    pub fn has_rooms(&self) -> bool {
        self.kind.has_rooms()
            || (self.kind == Kind::Baseline
                && self
                    .help
                    .as_deref()
                    .is_some_and(|help| names_flag(help, "--max-rooms")))
    }

    /// The configuration its clients speak TLS with; `None`: plain TCP.
    pub fn tls_client(&self) -> Option<Arc<ClientConfig>> {
        self.tls.as_ref().map(|pki| Arc::clone(&pki.client))
    }
}

/// Eddy: the binary `cargo bench` built, every join announced (as the
/// peers do), no rate limit, no heartbeat.
pub fn eddy() -> Result<Recipe, String> {
    eddy_build(Kind::Eddy, PathBuf::from(env!("CARGO_BIN_EXE_eddy")))
}

/// Eddy with its history on disk, synced as `--fsync fsync` says.
pub fn eddy_disk(fsync: &'static str) -> Result<Recipe, String> {
    let mut recipe = eddy_build(
        Kind::EddyDisk(fsync),
        PathBuf::from(env!("CARGO_BIN_EXE_eddy")),
    )?;
    recipe.args.extend(["--fsync".into(), fsync.into()]);
    Ok(recipe)
}

/// Eddy with its metrics listener, scraped once a second while it runs.
pub fn eddy_metrics() -> Result<Recipe, String> {
    eddy_build(Kind::EddyMetrics, PathBuf::from(env!("CARGO_BIN_EXE_eddy")))
}

/// Eddy over TLS, with a certificate made for the bench ([`crate::pki`]);
/// skipped unless the bench, and so the Eddy it built, has the `tls`
/// feature (a build without it refuses `--tls-cert`).
pub fn eddy_tls() -> Result<Recipe, String> {
    if !cfg!(feature = "tls") {
        return Err("needs `cargo bench --features tls`".into());
    }
    let pki = Pki::new()?;
    let mut recipe = eddy_build(Kind::EddyTls, PathBuf::from(env!("CARGO_BIN_EXE_eddy")))?;
    recipe.args.extend([
        "--tls-cert".into(),
        pki.cert.display().to_string(),
        "--tls-key".into(),
        pki.key.display().to_string(),
    ]);
    recipe.tls = Some(Arc::new(pki));
    Ok(recipe)
}

/// Eddy on a Redis of its own with `workers` workers; skipped if there is
/// no `redis-server`.
pub fn eddy_redis(workers: u8) -> Result<Recipe, String> {
    let version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("no redis-server ({e}): apt-get install -y redis-server"))?;
    eprintln!("  {}", String::from_utf8_lossy(&version.stdout).trim());
    let mut recipe = eddy_build(
        Kind::EddyRedis(workers),
        PathBuf::from(env!("CARGO_BIN_EXE_eddy")),
    )?;
    recipe
        .args
        .extend(["--workers".into(), workers.to_string()]);
    Ok(recipe)
}

/// The baseline: the Eddy binary at `EDDY_BENCH_BASELINE` (relative to the
/// package root), run as Eddy is; `None` if the variable is unset.
pub fn baseline() -> Option<Result<Recipe, String>> {
    let path = PathBuf::from(std::env::var_os("EDDY_BENCH_BASELINE")?);
    let program = if path.is_relative() {
        root().join(path)
    } else {
        path
    };
    Some(eddy_build(Kind::Baseline, program))
}

/// A build of Eddy with the bench's flags, plus `EDDY_BENCH_EDDY_ARGS`.
fn eddy_build(kind: Kind, program: PathBuf) -> Result<Recipe, String> {
    let output = Command::new(&program)
        .arg("--help")
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() || !names_flag(&help, "--addr") {
        return Err(format!(
            "{}: --help did not list --addr: not an Eddy build?",
            program.display()
        ));
    }
    Ok(Recipe {
        kind,
        program,
        // History in memory (`--data-dir off`) unless EDDY_BENCH_EDDY_ARGS
        // names a directory: the disk's cost is measured on purpose.
        args: [
            "--rate-limit",
            "off",
            "--ping-interval",
            "off",
            "--data-dir",
            "off",
        ]
        .map(String::from)
        .into_iter()
        .chain(
            std::env::var("EDDY_BENCH_EDDY_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from),
        )
        .collect(),
        help: Some(help),
        tls: None,
    })
}

/// Whether `help` names `flag` (as a whole flag: `--history` is not named
/// by `--history-bytes`).
fn names_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        !help[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// `args` split into those `help` names and those it does not, each
/// unknown flag with its value if it has one (`--flag value`, `--flag=value`).
fn split_known(args: Vec<String>, help: &str) -> (Vec<String>, Vec<String>) {
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let flag = arg.split('=').next().unwrap_or_default();
        if !arg.starts_with("--") || names_flag(help, flag) {
            known.push(arg);
            continue;
        }
        let value = if arg.contains('=') {
            None
        } else {
            args.next_if(|value| !value.starts_with("--"))
        };
        unknown.push(value.map_or_else(|| arg.clone(), |v| format!("{arg} {v}")));
    }
    (known, unknown)
}

/// The seed's Tornado server in a venv with the pinned tornado.
pub fn tornado() -> Result<Recipe, String> {
    let peer = root().join("benches/peers/tornado");
    let venv = work_dir().join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let requirements = peer.join("requirements.txt");
    let stamp = venv.join("installed-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).map_err(|e| e.to_string())?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements))?;
        std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    }
    Ok(Recipe {
        kind: Kind::Tornado,
        program: python,
        args: vec![peer.join("server.py").to_string_lossy().into_owned()],
        help: None,
        tls: None,
    })
}

/// The tokio-tungstenite peer, built in release mode from its own crate.
pub fn tokio() -> Result<Recipe, String> {
    let manifest = root().join("benches/peers/tokio-chat/Cargo.toml");
    let target = work_dir().join("peers-target");
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target))?;
    Ok(Recipe {
        kind: Kind::Tokio,
        program: target.join("release/tokio-chat"),
        args: Vec::new(),
        help: None,
        tls: None,
    })
}

/// The uWebSockets peer's pinned sources: (name, commit, `git describe`),
/// from `benches/peers/uws/PINS`.
fn uws_pins() -> Vec<(String, String, String)> {
    let pins = std::fs::read_to_string(root().join("benches/peers/uws/PINS")).unwrap_or_default();
    pins.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace().map(String::from);
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .collect()
}

/// The uWebSockets peer's versions, for the report: "uWebSockets
/// v20.79.0-17-g66dcff3 (66dcff3dd48f), uSockets …".
pub fn uws_versions() -> String {
    uws_pins()
        .iter()
        .map(|(name, commit, describe)| {
            format!("{name} {describe} ({})", commit.get(..12).unwrap_or(commit))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The uWebSockets peer, built by `benches/peers/uws/build.sh` from the
/// sources at `UWS_SRC` (checked against the pinned commits) into the work
/// directory; skipped if `UWS_SRC` is unset (CI: the sources are on no
/// package registry, and there is no network to fetch them) or the build
/// refuses or fails.
pub fn uws() -> Result<Recipe, String> {
    let src = std::env::var_os("UWS_SRC").ok_or("UWS_SRC not set: see benches/peers/README.md")?;
    let out = work_dir().join("uws");
    let output = Command::new("sh")
        .arg(root().join("benches/peers/uws/build.sh"))
        .arg(&src)
        .arg(&out)
        .output()
        .map_err(|e| format!("sh: {e}"))?;
    if !output.status.success() {
        // The script's reason, or a compiler's last words.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.trim().lines().collect();
        return Err(format!(
            "benches/peers/uws/build.sh: {}",
            lines[lines.len().saturating_sub(3)..].join(" / ")
        ));
    }
    Ok(Recipe {
        kind: Kind::Uws,
        program: out.join("uws-chat"),
        args: Vec::new(),
        help: None,
        tls: None,
    })
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A running server.
pub struct Running {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// Flags (with their values) this build does not know, not passed.
    pub dropped: Vec<String>,
    /// Its data directory (Eddy on disk), removed when it stops.
    data_dir: Option<PathBuf>,
    /// Its Redis (Eddy on Redis), stopped with it.
    redis: Option<Redis>,
    /// Its workers' pids (Eddy with `--workers`).
    workers: Vec<u32>,
    /// Its scraper (Eddy with metrics): told to stop, and its thread.
    scraper: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
}

/// Scrapes `addr`'s `/metrics` once a second until `stop`, as Prometheus
/// does, on a fresh connection each time; a scrape that fails is said.
fn scrape_every_second(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut scrapes = 0u32;
        while !stop.load(Ordering::Relaxed) {
            // The scrape interval, not a synchronisation.
            thread::sleep(Duration::from_secs(1));
            let result = (|| -> std::io::Result<usize> {
                let mut stream = std::net::TcpStream::connect(addr)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
                )?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response)?;
                if !response.starts_with(b"HTTP/1.1 200 ") {
                    return Err(std::io::Error::other("not 200"));
                }
                Ok(response.len())
            })();
            match result {
                Ok(_) => scrapes += 1,
                Err(e) => eprintln!("  scrape of {addr} failed: {e}"),
            }
        }
        eprintln!("  {scrapes} scrapes of /metrics");
    })
}

/// A `redis-server` of the bench's own, on a free port, pinned as the
/// server it serves.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(pinned: bool) -> Result<Redis, String> {
        let port = free_port()?;
        let dir = work_dir().join(format!("redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut command = if pinned {
            let mut command = Command::new("taskset");
            command.args(["-c", "0", "redis-server"]);
            command
        } else {
            Command::new("redis-server")
        };
        let mut child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .args(["--logfile", "", "--daemonize", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("redis-server did not start".into());
                }
            }
        }
        thread::spawn(move || for _ in lines {});
        Ok(Redis { child, port, dir })
    }

    /// The sum of `INFO commandstats`' calls: every command Redis ran
    /// (scripts' own calls included, as `cmdstat_xadd` and so on).
    pub fn commands(&self) -> Option<u64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            .ok()?;
        let mut text = String::new();
        let mut buf = [0u8; 8192];
        // One bulk reply; read until it ends with the blank line INFO ends with.
        while !text.ends_with("\r\n\r\n") {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Some(
            text.lines()
                .filter(|l| l.starts_with("cmdstat_"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Recipe {
    /// Starts the server and waits (up to 30 s) for it to say where it
    /// listens.
    /// `defaults`: as the server runs by default; else (Eddy) announcing
    /// every join, as the peers do. `eddy_flags`: more flags for Eddy and
    /// the baseline (a scenario's own); the peers get none.
    pub fn start(&self, defaults: bool, eddy_flags: &[String]) -> Result<Running, String> {
        let port = free_port()?;
        let mut command = if self.kind.pinned() && crate::proc::cpus() > 1 {
            let mut command = Command::new("taskset");
            command.args(["-c", "0"]).arg(&self.program);
            command
        } else {
            Command::new(&self.program)
        };
        let mut args = self.args.clone();
        if self.kind.is_eddy() {
            if !defaults {
                args.extend(["--announce-joins-up-to", "all"].map(String::from));
            }
            args.extend_from_slice(eddy_flags);
        }
        let (args, dropped) = match &self.help {
            Some(help) => split_known(args, help),
            None => (args, Vec::new()),
        };
        command.args(&args);
        let data_dir = match self.kind {
            Kind::EddyDisk(_) => {
                let dir = work_dir().join(format!("data-{}-{port}", self.kind.name()));
                let _ = std::fs::remove_dir_all(&dir);
                command.arg("--data-dir").arg(&dir);
                Some(dir)
            }
            _ => None,
        };
        let redis = match self.kind {
            Kind::EddyRedis(_) => {
                let redis = Redis::start(self.kind.pinned() && crate::proc::cpus() > 1)?;
                command.args(["--redis", &format!("redis://127.0.0.1:{}", redis.port)]);
                Some(redis)
            }
            _ => None,
        };
        let metrics_port = match self.kind {
            Kind::EddyMetrics => {
                let port = free_port()?;
                command.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
                Some(port)
            }
            _ => None,
        };
        match self.kind {
            Kind::Tornado | Kind::Uws => command.args(["--port", &port.to_string()]),
            _ => command.args(["--addr", &format!("127.0.0.1:{port}")]),
        };
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", self.program.display()))?;
        // Both streams are read to their end by threads, so the server never
        // blocks on a full pipe; the first "listening on" line is the sign.
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => {
                    said.push(line);
                    break;
                }
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("did not start: {}", said.join(" / ")));
                }
            }
        }
        // With --workers, the parent says it is listening, then starts them;
        // with Redis, every loop connects to it (two connections each)
        // before the clients come.
        let mut workers = Vec::new();
        let (wanted_workers, wanted_connections) = match self.kind {
            Kind::EddyRedis(count) if count > 1 => (usize::from(count), 2 * usize::from(count)),
            Kind::EddyRedis(_) => (0, 2),
            _ => (0, 0),
        };
        let mut connected = 0;
        while workers.len() < wanted_workers || connected < wanted_connections {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} of {wanted_workers} workers started, {connected} of \
                     {wanted_connections} connections to Redis made",
                    workers.len()
                ));
            };
            if line.contains("): connected") {
                connected += 1;
            } else if let Some(pid) = line.split(" started (pid ").nth(1) {
                workers.extend(pid.trim_end_matches(')').parse::<u32>().ok());
            }
        }
        // Keep draining the server's output.
        thread::spawn(move || for _ in rx {});
        let scraper = metrics_port.map(|port| {
            let stop = Arc::new(AtomicBool::new(false));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            (Arc::clone(&stop), scrape_every_second(addr, stop))
        });
        // taskset execs the server: the pid is the server's.
        let pid = child.id();
        Ok(Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            dropped,
            data_dir,
            redis,
            workers,
            scraper,
        })
    }
}

impl Running {
    /// Every process serving: the server, its workers, its Redis.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        pids.extend(&self.workers);
        pids.extend(self.redis.as_ref().map(Redis::pid));
        pids
    }

    /// Its Redis, if it has one.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// SIGTERM, then SIGKILL after 5 s; then its data directory's size is
    /// reported (Eddy on disk) and the directory removed.
    pub fn stop(mut self) {
        self.end();
        if let Some(redis) = self.redis.take() {
            redis.stop();
        }
        if let Some(dir) = self.data_dir.take() {
            let (files, bytes) = tree_size(&dir);
            eprintln!("  data directory: {bytes} bytes in {files} files");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn end(&mut self) {
        if let Some((stop, scraper)) = self.scraper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = scraper.join();
        }
        // SAFETY: kill(2) with our child's pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files and bytes under `dir`.
fn tree_size(dir: &std::path::Path) -> (u64, u64) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (files, bytes) = tree_size(&entry.path());
            total = (total.0 + files, total.1 + bytes);
        } else {
            total = (total.0 + 1, total.1 + meta.len());
        }
    }
    total
}

/// A port free a moment ago (the peers take a port, not an address with
/// port 0).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
