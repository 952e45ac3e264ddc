//! `EDDY_BENCH=startup`: how long Eddy takes to open a data directory that
//! holds `EDDY_BENCH_STARTUP_MIB` (default 1024) of history in one room,
//! as a clean shutdown leaves it (a checkpoint at the log's end: only the
//! checkpoint and each segment's first record are read) and as a crash
//! before any checkpoint would (every record read and its CRC checked).
//!
//! The directory is written with Eddy's own modules ([`eddy::log`],
//! [`eddy::datadir`]), 64 MiB segments of 145-byte lines, in
//! `target/eddy-bench/startup-data`; the binary is started on it three
//! times each way (the first of the three from whatever the page cache
//! holds; the others warm), and the time from spawning it to its
//! "listening on" line is measured here, beside the time it logs for
//! opening the history. Disk bytes per line are reported too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eddy::datadir::{DataDir, RoomMeta, write_meta};
use eddy::log::{Log, Options};

/// Runs the startup measurement and prints its table.
pub fn run() {
    let mib: u64 = std::env::var("EDDY_BENCH_STARTUP_MIB")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1024);
    let dir = crate::servers::work_dir().join("startup-data");
    let started = Instant::now();
    let (lines, bytes) = match write_history(&dir, mib << 20) {
        Ok(written) => written,
        Err(e) => {
            eprintln!("startup: cannot write {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    eprintln!(
        "wrote {lines} lines, {bytes} bytes of log ({:.1} bytes a line) in {:.1?}",
        bytes as f64 / lines as f64,
        started.elapsed()
    );
    println!("| data directory | start | spawn to listening | opening, as Eddy logs it |");
    println!("|---|--:|--:|---|");
    for checkpoint in [true, false] {
        for n in 1..=3 {
            if !checkpoint {
                let _ = std::fs::remove_file(dir.join("rooms/lobby/checkpoint"));
            }
            match start_once(&dir) {
                Ok((took, logged)) => println!(
                    "| {} MiB, {} | {n} | {:.0?} | {logged} |",
                    mib,
                    if checkpoint {
                        "checkpoint at the end"
                    } else {
                        "no checkpoint"
                    },
                    took
                ),
                Err(e) => println!("| {mib} MiB | {n} | failed: {e} | |"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes one room, `lobby`, of about `size` bytes of log into a fresh data
/// directory at `dir`, closed cleanly; returns its lines and log bytes.
fn write_history(dir: &Path, size: u64) -> Result<(u64, u64), String> {
    let _ = std::fs::remove_dir_all(dir);
    let data = DataDir::open(dir).map_err(|e| e.to_string())?;
    let room = data.room_dir("lobby");
    let meta = RoomMeta {
        room: "lobby".into(),
        epoch: "startupbench0000".into(),
        earlier: Vec::new(),
    };
    write_meta(&room, &meta, true).map_err(|e| e.to_string())?;
    let (mut log, _) = Log::open(
        &room,
        Options {
            segment_bytes: 64 << 20,
        },
    )
    .map_err(|e| e.to_string())?;
    let text = "x".repeat(60);
    let mut seq = 1;
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(4096);
    while log.bytes() < size {
        batch.clear();
        for _ in 0..4096 {
            let json = format!(
                r#"{{"type":"user","id":7,"message":"{text}","seq":{seq},"ts":1764504000000}}"#
            );
            batch.push((seq, json.into_bytes()));
            seq += 1;
        }
        log.append(batch.iter().map(|(s, p)| (*s, p.as_slice())))
            .map_err(|e| e.to_string())?;
    }
    log.sync().map_err(|e| e.to_string())?;
    log.write_checkpoint().map_err(|e| e.to_string())?;
    let written = (log.last(), log.bytes());
    drop(log);
    data.mark_clean().map_err(|e| e.to_string())?;
    Ok(written)
}

/// Starts the binary on `dir` and stops it once it listens: the time to
/// its "listening on" line, and what it logged about opening the history.
fn start_once(dir: &Path) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["--addr", "127.0.0.1:0", "--history-bytes", "1099511627776"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut logged = String::new();
    let mut took = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(at) = line.find("opened in ") {
            logged = line[at..].split(' ').take(3).collect::<Vec<_>>().join(" ");
        }
        if line.contains("listening on") {
            took = Some(started.elapsed());
            break;
        }
    }
    // SAFETY: kill(2) with our child's pid; a clean shutdown.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
    took.map(|t| (t, logged))
        .ok_or_else(|| "it did not start".to_owned())
}
