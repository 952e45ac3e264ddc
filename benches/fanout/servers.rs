//! The servers under test: Eddy and its peers, each started as its own
//! process on a free port, pinned where the plan says, and stopped with
//! SIGTERM. A peer that cannot be prepared (no Python, no network for pip,
//! a failed build) is reported as skipped with the reason.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Eddy,
    Tornado,
    Tokio,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Eddy => "eddy",
            Kind::Tornado => "tornado",
            Kind::Tokio => "tokio-tungstenite",
        }
    }

    /// Whether the server runs on one CPU (the load generator has the
    /// other); the tokio peer's multi-thread runtime gets all of them.
    pub fn pinned(self) -> bool {
        self != Kind::Tokio
    }
}

/// How to start one kind of server, once prepared.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub kind: Kind,
    program: PathBuf,
    args: Vec<String>,
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

/// Eddy: the binary `cargo bench` built, every join announced (as the
/// peers do), no rate limit, no heartbeat.
pub fn eddy() -> Result<Recipe, String> {
    Ok(Recipe {
        kind: Kind::Eddy,
        program: PathBuf::from(env!("CARGO_BIN_EXE_eddy")),
        args: ["--rate-limit", "off", "--ping-interval", "off"]
            .map(String::from)
            .into_iter()
            .chain(
                std::env::var("EDDY_BENCH_EDDY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from),
            )
            .collect(),
    })
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
}

impl Recipe {
    /// Starts the server and waits (up to 30 s) for it to say where it
    /// listens.
    /// `defaults`: as the server runs by default; else (Eddy) announcing
    /// every join, as the peers do.
    pub fn start(&self, defaults: bool) -> Result<Running, String> {
        let port = free_port()?;
        let mut command = if self.kind.pinned() && crate::proc::cpus() > 1 {
            let mut command = Command::new("taskset");
            command.args(["-c", "0"]).arg(&self.program);
            command
        } else {
            Command::new(&self.program)
        };
        command.args(&self.args);
        if self.kind == Kind::Eddy && !defaults {
            command.args(["--announce-joins-up-to", "all"]);
        }
        match self.kind {
            Kind::Tornado => command.args(["--port", &port.to_string()]),
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
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("did not start: {}", said.join(" / ")));
                }
            }
        }
        // taskset execs the server: the pid is the server's.
        let pid = child.id();
        Ok(Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
        })
    }
}

impl Running {
    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
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

/// A port free a moment ago (the peers take a port, not an address with
/// port 0).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
