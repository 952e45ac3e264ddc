//! Hostile load at scale, against the built binary (so that its memory and
//! descriptors, read from /proc, are the server's alone): a crowd of clients
//! that never read, slowloris, churn, and shutdown with a thousand clients.
//! Every load is bounded in size and time; all traffic stays on 127.0.0.1.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One of these tests at a time: each loads both cores of this machine, and
/// two at once would make each other's readers lag behind.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many descriptors the process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits (with a deadline) until the server is back to `baseline` fds.
/// There is no event for "a descriptor was closed"; /proc is re-read with a
/// short pause between looks.
fn wait_for_fds(pid: u32, baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = open_fds(pid);
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} fds open, baseline {baseline}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A raw client that reads every frame in a thread, and returns the
/// sequence numbers of the chat lines it saw (each line starts with one),
/// in order, once it has seen `lines` of them; also counts "has left"
/// notices. It parses as little as it can: a reader slower than the server
/// would itself fall behind (and be fed from history, more slowly).
fn reader(addr: SocketAddr, lines: usize) -> thread::JoinHandle<(Vec<usize>, usize)> {
    read_lines(raw_upgrade(addr, &[]), lines, None)
}

/// The reading half of [`reader`], on an open stream; each line's number
/// is also sent to `progress`, if given.
fn read_lines(
    mut stream: TcpStream,
    lines: usize,
    progress: Option<mpsc::Sender<usize>>,
) -> thread::JoinHandle<(Vec<usize>, usize)> {
    thread::spawn(move || {
        const LINE: &[u8] = br#"{"type":"user","id":"#;
        const MESSAGE: &[u8] = br#","message":""#;
        let mut seen = Vec::with_capacity(lines);
        let mut left = 0;
        while seen.len() < lines {
            let (opcode, payload) = read_frame(&mut stream);
            match opcode {
                0x1 if payload.starts_with(LINE) => {
                    let at = payload
                        .windows(MESSAGE.len())
                        .position(|w| w == MESSAGE)
                        .unwrap()
                        + MESSAGE.len();
                    let digits = payload[at..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    let n = std::str::from_utf8(&payload[at..at + digits])
                        .unwrap()
                        .parse()
                        .unwrap();
                    seen.push(n);
                    if let Some(progress) = &progress {
                        let _ = progress.send(n);
                    }
                }
                0x1 if payload.ends_with(b" has left\"}") => left += 1,
                0x1 => {}
                0x9 => stream
                    .write_all(&masked_frame(0xA, true, &payload))
                    .unwrap(),
                other => panic!("reader got opcode {other}"),
            }
        }
        (seen, left)
    })
}

#[test]
fn five_hundred_clients_that_never_read_cost_bounded_memory_and_stall_nobody() {
    let _serial = serial();
    const STUCK: usize = 500;
    const LINES: usize = 20_000; // of ~1 KB: 20 MB broadcast
    const CAP: u64 = 256 * 1024;
    const HISTORY: u64 = 8 << 20;
    let mut binary = Binary::start(&[
        "--addr",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
        "--max-message-bytes",
        "8192",
        "--max-pending-bytes",
        &CAP.to_string(),
        "--history-bytes",
        &HISTORY.to_string(),
    ]);
    let addr = binary.listening_addr();
    let fds_idle = open_fds(binary.pid);
    let readers: Vec<_> = (0..2).map(|_| reader(addr, LINES)).collect();
    let stuck: Vec<TcpStream> = (0..STUCK)
        .map(|_| {
            let mut stream = small_window_tcp(addr, 4096);
            stream
                .write_all(upgrade_request(addr, "").as_bytes())
                .unwrap();
            assert_eq!(read_response(&mut stream, true).status, 101);
            stream
        })
        .collect();
    // The sender is a client like the others: it reads its own lines (in a
    // thread) and keeps at most IN_FLIGHT of them unacknowledged.
    const IN_FLIGHT: usize = 100;
    let mut sender = raw_upgrade(addr, &[]);
    let (progress, echoes) = mpsc::channel();
    let sender_reader = read_lines(sender.try_clone().unwrap(), LINES, Some(progress));
    let baseline = status_kib(binary.pid, "VmRSS");

    let padding = "x".repeat(1000);
    let mut echoed = 0;
    for n in 0..LINES {
        while n >= echoed + IN_FLIGHT {
            echoed = echoes
                .recv_timeout(TIMEOUT)
                .expect("the sender's own lines stopped")
                + 1;
        }
        sender
            .write_all(&masked_frame(
                0x1,
                true,
                format!("{n} {padding}").as_bytes(),
            ))
            .unwrap();
    }

    for handle in readers {
        let (seen, left) = handle.join().unwrap();
        // Every line, in the order sent.
        assert!(
            seen.iter().copied().eq(0..LINES),
            "a line lost or out of order"
        );
        assert_eq!(left, 0, "nobody was cut off for being slow");
    }
    let (own, _) = sender_reader.join().unwrap();
    assert!(own.iter().copied().eq(0..LINES), "the sender's own copies");
    // The stuck ones fell behind instead of piling up lines: each holds
    // its position and at most a cap of frames shared with the history and
    // with each other, not 500 private copies.
    let peak = status_kib(binary.pid, "VmHWM");
    let allowed = 32 * 1024 + HISTORY / 1024 + STUCK as u64 * 32;
    assert!(
        peak.saturating_sub(baseline) < allowed,
        "RSS grew {} KiB (baseline {baseline} KiB, peak {peak} KiB), allowed {allowed} KiB",
        peak.saturating_sub(baseline)
    );
    // They are still connected (behind, not cut off), until they hang up.
    wait_for_fds(binary.pid, fds_idle + 1 + STUCK);
    drop(stuck);
    wait_for_fds(binary.pid, fds_idle + 1);
    drop(sender);
    assert_room_works(addr);
    binary.signal(libc::SIGTERM);
    assert_eq!(
        binary.wait_exit(Duration::from_secs(10)),
        Some(0),
        "no panic, clean exit"
    );
}

#[test]
fn slowloris_is_closed_at_the_head_deadline_while_others_are_served() {
    let _serial = serial();
    const CONNECTIONS: usize = 1000;
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--header-timeout", "2"]);
    let addr = binary.listening_addr();
    let baseline = open_fds(binary.pid);
    // Each starts its head at once (so each has something to be answered
    // 408 for), then goes on at a byte a second.
    let trickling: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut stream = tcp(addr);
            stream.write_all(b"G").unwrap();
            stream
        })
        .collect();
    for stream in &trickling {
        stream.set_nonblocking(true).unwrap();
    }
    // One byte of a request head per connection per second, until told to
    // stop or every connection is closed (bounded: 30 s at most).
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        let streams: Vec<TcpStream> = trickling.iter().map(|s| s.try_clone().unwrap()).collect();
        thread::spawn(move || {
            let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let end = Instant::now() + Duration::from_secs(30);
            for i in 1.. {
                if stop.load(Ordering::SeqCst) || Instant::now() > end {
                    break;
                }
                let byte = [head.get(i).copied().unwrap_or(b'a')];
                let mut alive = 0;
                for mut stream in &streams {
                    if stream.write(&byte).is_ok() {
                        alive += 1;
                    }
                }
                if alive == 0 {
                    break;
                }
                thread::sleep(Duration::from_secs(1)); // the attack's own pace
            }
        })
    };
    // Meanwhile, a normal visitor gets the page and chats.
    let started = Instant::now();
    let mut page = tcp(addr);
    page.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut page, false).status, 200);
    let mut client = join(addr);
    send(&mut client, "not slowed down");
    assert_eq!(recv_user_line(&mut client)["message"], "not slowed down");
    let served_in = started.elapsed();
    assert!(
        served_in < Duration::from_secs(5),
        "served in {served_in:?} (a generous bound)"
    );

    // Every trickling connection gets its 408 and is closed.
    for mut stream in trickling {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reply = String::from_utf8_lossy(&read_to_close(&mut stream)).into_owned();
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    }
    stop.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    drop((page, client));
    wait_for_fds(binary.pid, baseline);
    assert_room_works(addr);
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn sigterm_with_a_thousand_clients_closes_each_with_1001_and_exits_0() {
    let _serial = serial();
    const CLIENTS: usize = 1000;
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0"]);
    let addr = binary.listening_addr();
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| raw_upgrade(addr, &[])).collect();
    // The last one's welcome means every join before it was dealt with.
    let last = clients.last_mut().unwrap();
    let (_, welcome) = read_frame(last);
    welcome_id(&serde_json::from_slice(&welcome).unwrap());
    let signalled = Instant::now();
    binary.signal(libc::SIGTERM);
    let exit = binary.wait_exit(Duration::from_secs(5));
    assert_eq!(exit, Some(0), "exit within 5 s");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    for stream in &mut clients {
        assert_eq!(read_close_code(stream), 1001);
    }
}

#[test]
fn churn_leaves_exact_departures_and_no_residue() {
    let _serial = serial();
    const CYCLES: usize = 2000;
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--rate-limit", "off"]);
    let addr = binary.listening_addr();
    let pid = binary.pid;
    let (mut watcher, _) = join_with_id(addr);
    // The descriptor baseline: the listener, the poller and friends, and the
    // watcher, which is fully open (a connection just left might still be
    // finishing its close, and would leave the count later).
    let fds_before = open_fds(pid);
    // Warm up once so that lazily allocated memory is in the RSS baseline.
    drop(join(addr));
    while !recv_json(&mut watcher)["message"]
        .as_str()
        .unwrap()
        .ends_with("has left")
    {}
    let rss_before = status_kib(pid, "VmRSS");

    // The watcher reports each departure, and stops at the sentinel's line.
    let (departed, departures) = std::sync::mpsc::channel();
    let watching = thread::spawn(move || {
        let mut count = 0;
        loop {
            let message = recv_json(&mut watcher);
            match message["type"].as_str().unwrap() {
                "user" if message["message"] == "sentinel" => return (watcher, count),
                "sys" if message["message"].as_str().unwrap().ends_with(" has left") => {
                    count += 1;
                    let _ = departed.send(());
                }
                _ => {}
            }
        }
    });
    let upgrade = upgrade_request(addr, "");
    let mut opened = 0;
    for cycle in 0..CYCLES {
        match cycle % 5 {
            0 => {
                // A polite client: joins, speaks, closes properly.
                let mut client = join(addr);
                send(&mut client, "hello and goodbye");
                client.close(None).unwrap();
                while client.read().is_ok() {}
                opened += 1;
            }
            1 => {
                // Vanishes in the middle of a frame.
                let mut stream = raw_upgrade(addr, &[]);
                let frame = masked_frame(0x1, true, &[b'z'; 300]);
                stream.write_all(&frame[..150]).unwrap();
                opened += 1;
            }
            2 => {
                // Vanishes in the middle of its handshake.
                let mut stream = tcp(addr);
                stream
                    .write_all(&upgrade.as_bytes()[..upgrade.len() / 2])
                    .unwrap();
            }
            3 => {
                // Connects and goes, having said nothing.
                drop(tcp(addr));
            }
            _ => {
                // Sends garbage after a good handshake: 1002, then leaves.
                let mut stream = raw_upgrade(addr, &[]);
                stream.write_all(&unmasked_frame(0x1, b"no mask")).unwrap();
                let _ = read_close_code(&mut stream);
                opened += 1;
            }
        }
    }
    // EOFs of abrupt clients may be read after later events: wait for as
    // many departures as connections opened, then check with a sentinel
    // line that no more come.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0..opened {
        let left = deadline.saturating_duration_since(Instant::now());
        departures
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{n} of {opened} departures"));
    }
    let mut sentinel = join(addr);
    send(&mut sentinel, "sentinel");
    let (watcher, count) = watching.join().unwrap();
    assert_eq!(
        count, opened,
        "exactly one 'has left' per opened connection"
    );
    drop(sentinel);
    // The sentinel's own departure is not part of the residue check.
    wait_for_fds(pid, fds_before);
    drop(watcher);
    let rss_after = status_kib(pid, "VmRSS");
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "RSS {rss_after} KiB after churn, {rss_before} KiB before"
    );
    assert_room_works(addr);
    binary.signal(libc::SIGTERM);
    assert_eq!(
        binary.wait_exit(Duration::from_secs(5)),
        Some(0),
        "no panic, clean exit"
    );
}

#[test]
fn memory_freed_after_a_join_storm_goes_back_to_the_system() {
    let _serial = serial();
    const CLIENTS: u64 = 1500;
    let binary = Binary::start(&["--addr", "127.0.0.1:0", "--announce-joins-up-to", "all"]);
    let addr = binary.listening_addr();
    drop(join(addr)); // lazily allocated memory into the baseline
    let baseline = status_kib(binary.pid, "VmRSS");
    // Every join goes to everyone already here: 1,124,250 frames, queued
    // and written (the kernel's buffers hold them all: no client reads),
    // then freed. The handshakes are sent all at once, so that each of the
    // server's turns admits many and queues many joins to each client.
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = tcp(addr);
            stream
                .write_all(upgrade_request(addr, "").as_bytes())
                .unwrap();
            stream
        })
        .collect();
    for stream in &mut clients {
        assert_eq!(read_response(stream, true).status, 101);
    }
    // The last one admitted had its welcome after every join was queued.
    let mut welcomed = 0u64;
    for stream in &mut clients {
        let (_, first) = read_frame(stream);
        welcomed += u64::from(String::from_utf8_lossy(&first).contains("Welcome"));
    }
    assert_eq!(
        welcomed, CLIENTS,
        "each client's first frame is its welcome"
    );
    let peak = status_kib(binary.pid, "VmHWM");
    assert!(
        peak > baseline + CLIENTS * 2,
        "the storm took {} KiB: too little to show anything",
        peak - baseline
    );
    // Within a few of the server's memory checks (one a second), what an
    // idle connection holds is all that is left: at most 1 KiB each. There
    // is no event for "RSS went down": /proc is looked at again and again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rss = status_kib(binary.pid, "VmRSS");
        if rss <= baseline + CLIENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS {rss} KiB 10 s after the storm: {} KiB a connection over the \
             baseline {baseline} KiB (peak {peak} KiB)",
            (rss - baseline) as f64 / CLIENTS as f64
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_room_works(addr);
    drop(clients);
}
