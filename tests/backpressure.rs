//! Slow readers are fed from history, not cut off: a client that stops
//! reading falls behind, and gets every line it missed, once and in order,
//! when it reads again; the others notice nothing. Only output that history
//! cannot give again (pongs, notices) still gets a client cut off (1008).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;

use common::*;
use eddy::Config;
use serde_json::Value;

/// A raw WebSocket on a connection with a 16 KiB receive buffer, so that
/// a client that stops reading fills up after a few KiB instead of
/// megabytes of kernel memory, and the server's own queue is what fills.
fn stalling_client(addr: SocketAddr) -> TcpStream {
    let mut stream = small_window_tcp(addr, 16 * 1024);
    stream
        .write_all(upgrade_request(addr, "").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut stream, true).status, 101);
    stream
}

/// The next message on a raw WebSocket, parsed; answers pings on the way.
fn next_json(stream: &mut TcpStream) -> Value {
    loop {
        match read_frame(stream) {
            (0x1, payload) => return serde_json::from_slice(&payload).unwrap(),
            (0x9, payload) => stream
                .write_all(&masked_frame(0xA, true, &payload))
                .unwrap(),
            (0x8, payload) => panic!("closed: {:?}", String::from_utf8_lossy(&payload)),
            (opcode, _) => panic!("opcode {opcode}"),
        }
    }
}

#[test]
fn a_client_that_stops_reading_gets_every_line_once_in_order_and_is_never_closed() {
    // A cap far below what is sent (3 MB): the client must fall behind and
    // be fed from history, or be cut off as it was before history.
    let server = TestServer::chat(Config {
        max_message_bytes: 8 * 1024,
        max_pending_bytes: 64 * 1024,
        ..config()
    });
    let mut sender = join(server.addr);
    let mut stalled = stalling_client(server.addr);
    recv_joined(&mut sender);

    // 3,000 lines of 1 KB while it reads nothing; the sender reads its own
    // copies as it goes, so it keeps up (and sees that nothing stalls).
    const LINES: u64 = 3_000;
    let padding = "x".repeat(1000);
    for n in 1..=LINES {
        send(&mut sender, &format!("{n} {padding}"));
        assert_eq!(recv_user_line(&mut sender)["seq"], n);
    }

    // Now it reads: the welcome, then every line, once, in order.
    let welcome = next_json(&mut stalled);
    assert_eq!(welcome["message"], "Welcome to WebSocket");
    for n in 1..=LINES {
        let line = next_json(&mut stalled);
        assert_eq!(line["type"], "user", "{line}");
        assert_eq!(line["seq"], n);
        let text = line["message"].as_str().unwrap();
        assert_eq!(text.split_once(' ').unwrap().0, n.to_string());
    }
    // It caught up without a word (it asked for nothing) and is live again.
    send(&mut sender, "live again");
    let line = next_json(&mut stalled);
    assert_eq!(
        (&line["message"], &line["seq"]),
        (&"live again".into(), &(LINES + 1).into())
    );
    assert_room_works(server.addr);
}

#[test]
fn a_poster_that_never_reads_is_not_cut_off_and_everyone_gets_its_lines() {
    const LINES: usize = 2_000;
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--rate-limit", "off"]);
    let addr = binary.listening_addr();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut reader = join(addr);
            thread::spawn(move || {
                let mut seqs = Vec::with_capacity(LINES);
                while seqs.len() < LINES {
                    let line = recv_user_line(&mut reader);
                    let n: usize = line["message"].as_str().unwrap()[..5].parse().unwrap();
                    assert_eq!(n, seqs.len(), "lost or out of order");
                    seqs.push(line["seq"].as_u64().unwrap());
                }
                seqs
            })
        })
        .collect();
    let baseline = status_kib(binary.pid, "VmRSS");
    // The poster: a raw socket that writes 2,000 lines of 10 KB and never
    // reads a byte of the 20 MB it is sent back.
    let mut poster = stalling_client(addr);
    let padding = "p".repeat(10_000);
    for n in 0..LINES {
        let line = format!("{n:05} {padding}");
        poster
            .write_all(&masked_frame(0x1, true, line.as_bytes()))
            .expect("the poster was cut off");
    }
    for reader in readers {
        let seqs = reader.join().unwrap();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }
    let peak = status_kib(binary.pid, "VmHWM");
    assert!(
        peak.saturating_sub(baseline) < 64 * 1024,
        "RSS grew {} KiB (baseline {baseline} KiB, peak {peak} KiB)",
        peak.saturating_sub(baseline)
    );
    // Still there, never closed: its welcome comes first when it reads,
    // then its own lines in order.
    let welcome = next_json(&mut poster);
    assert_eq!(welcome["message"], "Welcome to WebSocket");
    for n in 0..3 {
        let line = next_json(&mut poster);
        assert_eq!(&line["message"].as_str().unwrap()[..5], format!("{n:05}"));
    }
    drop(poster);
    assert_room_works(addr);
    binary.signal(libc::SIGTERM);
    assert_eq!(
        binary.wait_exit(std::time::Duration::from_secs(10)),
        Some(0)
    );
}

#[test]
fn a_client_that_piles_up_pongs_it_never_reads_is_still_cut_off() {
    // Pongs are not history: nothing could give them again, so a client
    // that sends pings and reads nothing is cut off once its unread output
    // passes twice the cap (the second cap is room for such output).
    let server = TestServer::chat(Config {
        max_message_bytes: 1024,
        max_pending_bytes: 8 * 1024,
        close_timeout: std::time::Duration::from_secs(60),
        ..config()
    });
    let mut watcher = join(server.addr);
    let mut pinger = stalling_client(server.addr);
    let pinger_id = recv_joined(&mut watcher);
    // Pings of 100 bytes, from a thread, until it is cut off: at most
    // 20 MB of pongs, bounded; the kernel's buffers (which grow to a few
    // MB) and the cap fill long before.
    let mut writer = pinger.try_clone().unwrap();
    let pinging = thread::spawn(move || {
        let ping = masked_frame(0x9, true, &[b'p'; 100]);
        let batch: Vec<u8> = (0..100).flat_map(|_| ping.clone()).collect();
        for _ in 0..2_000 {
            if writer.write_all(&batch).is_err() {
                break;
            }
        }
    });
    let left = recv_json(&mut watcher);
    assert_eq!(sys_id(&left, " has left"), pinger_id);
    assert_eq!(read_close_code(&mut pinger), 1008);
    drop(pinger);
    pinging.join().unwrap();
    assert_room_works(server.addr);
}
