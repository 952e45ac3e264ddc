//! A client that sends as fast as it can must not take the loop from
//! everyone else: each connection reads at most a budget per turn.
//!
//! Every flood here is bounded twice: it stops when the test has seen what
//! it waits for, and in any case after [`FLOOD_LIMIT`].

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use eddy::EchoHandler;

/// The longest any flood runs, whatever happens.
const FLOOD_LIMIT: Duration = Duration::from_secs(30);

/// A client that writes text frames of `line_len` bytes until told to stop
/// (or [`FLOOD_LIMIT`]), while a second thread reads and discards whatever
/// the server sends it, so that it is never cut off for not reading.
struct Flood {
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    /// For hanging up when the test is done with the flood.
    socket: TcpStream,
    sent: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(addr: SocketAddr, line_len: usize) -> Flood {
        let mut stream = raw_upgrade(addr, &[]);
        let mut reader = stream.try_clone().unwrap();
        let socket = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut sink = vec![0u8; 1 << 16];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        });
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let sent = Arc::new(AtomicU64::new(0));
        let frames = (64 * 1024 / (line_len + 6)).max(1);
        let batch: Vec<u8> = (0..frames)
            .flat_map(|_| masked_frame(0x1, true, &vec![b'f'; line_len]))
            .collect();
        let writer = {
            let (stop, running, sent) = (stop.clone(), running.clone(), sent.clone());
            thread::spawn(move || {
                let end = Instant::now() + FLOOD_LIMIT;
                while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                    if stream.write_all(&batch).is_err() {
                        break;
                    }
                    sent.fetch_add(batch.len() as u64, Ordering::SeqCst);
                }
                running.store(false, Ordering::SeqCst);
            })
        };
        Flood {
            stop,
            running,
            socket,
            sent,
            writer: Some(writer),
        }
    }

    /// Waits until the flood has pushed `bytes` into the server.
    fn wait_until_sent(&self, bytes: u64) {
        while self.sent.load(Ordering::SeqCst) < bytes {
            assert!(self.is_running(), "the flood ended early");
            thread::yield_now();
        }
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

#[test]
fn a_flooding_client_does_not_starve_the_others() {
    let server = TestServer::with_handler(config(), EchoHandler);
    // One-byte messages: per-frame work on the server, almost none for the
    // sender, so the sender can keep the server's socket buffer full.
    let flood = Flood::start(server.addr, 1);
    flood.wait_until_sent(4 << 20);
    // While the flood goes on, another client is served, again and again.
    let mut client = connect(server.addr);
    for i in 0..20 {
        let line = format!("between the waves {i}");
        send(&mut client, &line);
        assert_eq!(recv_text(&mut client), line);
    }
    assert!(
        flood.is_running(),
        "served only because the flood had stopped"
    );
    // After it, a fresh client is served too.
    drop(flood);
    let mut fresh = connect(server.addr);
    send(&mut fresh, "after the flood");
    assert_eq!(recv_text(&mut fresh), "after the flood");
}

#[test]
fn a_stuck_client_falls_behind_during_a_flood_and_is_told_exactly_what_it_lost() {
    // History keeps 1,000 lines; the flood sends far more than that and the
    // kernel's buffers hold while the stuck client reads nothing.
    let server = TestServer::chat(eddy::Config {
        history_lines: 1000,
        ..config()
    });
    let mut watcher = join(server.addr);
    let mut stuck = raw_upgrade(server.addr, &[]);
    recv_joined(&mut watcher);
    let flood = Flood::start(server.addr, 1000);
    let mut seen = 0;
    while seen < 20_000 {
        seen = recv_user_line(&mut watcher)["seq"].as_u64().unwrap();
    }
    assert!(flood.is_running(), "the server kept pace with the flood");
    drop(flood);
    send(&mut watcher, "the end");
    while recv_user_line(&mut watcher)["message"] != "the end" {}

    // The stuck client reads at last: the lines its buffers held, in order,
    // then one notice naming exactly the lines history no longer had, then
    // the rest, to the end. Nothing twice, nothing missing unannounced, and
    // it was never closed.
    let (_, welcome) = read_frame(&mut stuck);
    assert!(welcome.starts_with(br#"{"type":"sys","message":"Welcome"#));
    let mut last = 0;
    let mut gaps = Vec::new();
    loop {
        let (opcode, payload) = read_frame(&mut stuck);
        assert_eq!(
            opcode,
            0x1,
            "closed: {:?}",
            String::from_utf8_lossy(&payload)
        );
        let message: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if message["event"] == "gap" {
            let (from, to) = (message["from"].as_u64(), message["to"].as_u64());
            assert_eq!(from, Some(last + 1), "{message}");
            last = to.unwrap();
            gaps.push(message);
            continue;
        }
        if message["type"] != "user" {
            continue; // joins and leaves of others, while it was live
        }
        assert_eq!(message["seq"], last + 1, "after {last}: {message}");
        last += 1;
        if message["message"] == "the end" {
            break;
        }
    }
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_room_works(server.addr);
}

#[test]
fn sigterm_during_a_flood_still_exits_promptly() {
    // Without the rate limit, which would close the flooder first.
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--rate-limit", "off"]);
    let addr = binary.listening_addr();
    let flood = Flood::start(addr, 1000);
    flood.wait_until_sent(4 << 20);
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(Duration::from_secs(5)), Some(0));
    drop(flood);
    assert!(TcpStream::connect(addr).is_err());
}

/// Runs `attack` (frames written on a raw WebSocket, bounded), followed by
/// a text frame saying it is over, against the built binary while a second
/// client keeps chatting. Until that last line comes round, every line of
/// the second client must come back within a generous second; the server's
/// peak memory (from /proc) must grow by less than `mib`; and the attack's
/// own message, if it makes one (`makes`), must arrive whole.
fn survive(name: &str, mut attack: Vec<u8>, makes: Option<&str>, mib: u64) {
    const OVER: &str = "the attack is over";
    attack.extend(masked_frame(0x1, true, OVER.as_bytes()));
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--rate-limit", "off"]);
    let addr = binary.listening_addr();
    let mut client = join(addr);
    let baseline = status_kib(binary.pid, "VmRSS");
    let mut attacker = raw_upgrade(addr, &[]);
    // The attacker drains what it is sent (pongs, the chat) so that it is
    // not cut off for not reading, and the server does all the work.
    let mut drain = attacker.try_clone().unwrap();
    let draining = thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
    let attacking = thread::spawn(move || attacker.write_all(&attack).map(|()| attacker));

    let mut lines = 0;
    let mut made = None;
    'attack: loop {
        let line = format!("{name} {lines}");
        let sent = Instant::now();
        send(&mut client, &line);
        loop {
            let message = recv_user_line(&mut client)["message"]
                .as_str()
                .unwrap()
                .to_owned();
            if message == line {
                break;
            } else if message == OVER {
                break 'attack;
            } else if !message.starts_with(name) {
                made = Some(message);
            }
        }
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{name}: a line took {took:?}"
        );
        lines += 1;
    }
    let attacker = attacking
        .join()
        .unwrap()
        .expect("the attack was written whole");
    // Hang up writing only: the server's last lines may still be on the
    // way, and Linux resets a socket that gets data after shutting reads.
    attacker.shutdown(std::net::Shutdown::Write).unwrap();
    draining.join().unwrap().unwrap();
    let grew = status_kib(binary.pid, "VmHWM").saturating_sub(baseline);
    eprintln!("{name}: {lines} lines went round during the attack; peak memory grew {grew} KiB");
    assert!(
        grew < mib * 1024,
        "{name}: the server's memory grew {grew} KiB"
    );
    assert_eq!(made.as_deref(), makes, "{name}: the attack's own message");
    assert_room_works(addr);
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_ping_flood_is_answered_within_bounds_and_stalls_nobody() {
    let ping = masked_frame(0x9, true, b"are you there?");
    survive("ping flood", ping.repeat(200_000), None, 32);
}

#[test]
fn a_hundred_thousand_empty_fragments_stall_nobody() {
    let mut attack = masked_frame(0x1, false, b"");
    attack.extend(masked_frame(0x0, false, b"").repeat(100_000));
    attack.extend(masked_frame(0x0, true, b"end"));
    survive("empty fragments", attack, Some("end"), 32);
}

#[test]
fn a_message_of_65536_one_byte_fragments_stalls_nobody() {
    let mut attack = masked_frame(0x1, false, b"a");
    attack.extend(masked_frame(0x0, false, b"b").repeat(65_534));
    attack.extend(masked_frame(0x0, true, b"c"));
    let whole = format!("a{}c", "b".repeat(65_534));
    survive("one-byte fragments", attack, Some(&whole), 32);
}
