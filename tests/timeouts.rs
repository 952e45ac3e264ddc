//! Deadlines: a request head that trickles in, an idle keep-alive
//! connection, a WebSocket client that stops answering pings. Short
//! timeouts here; every wait is for an event (a response, a frame, EOF).

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use eddy::Config;

/// Timeouts short enough for tests, long enough for a loaded machine to
/// serve what is not supposed to time out.
fn quick() -> Config {
    Config {
        header_timeout: Duration::from_millis(300),
        keep_alive_timeout: Duration::from_millis(300),
        ping_interval: Some(Duration::from_millis(200)),
        ping_timeout: Duration::from_millis(300),
        ..config()
    }
}

#[test]
fn a_head_that_trickles_past_its_deadline_gets_408_and_is_closed() {
    let server = TestServer::chat(quick());
    let mut stream = tcp(server.addr);
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finished
    let reply = String::from_utf8(read_to_close(&mut stream)).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{reply}"
    );
    assert!(reply.contains("Connection: close\r\n"));
    assert_room_works(server.addr);
}

#[test]
fn a_connection_that_sends_nothing_is_closed_silently() {
    let server = TestServer::chat(quick());
    let mut stream = tcp(server.addr);
    assert!(read_to_close(&mut stream).is_empty());
    assert_room_works(server.addr);
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let server = TestServer::chat(quick());
    let mut stream = tcp(server.addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream, false).status, 200);
    assert!(
        read_to_close(&mut stream).is_empty(),
        "closed, and without a word"
    );
}

#[test]
fn a_websocket_client_that_answers_pings_stays() {
    let server = TestServer::chat(quick());
    let mut raw = raw_upgrade(server.addr, &[]);
    read_frame(&mut raw); // welcome
    for _ in 0..3 {
        let (opcode, payload) = read_frame(&mut raw);
        assert_eq!(opcode, 0x9, "a ping after silence");
        raw.write_all(&masked_frame(0xA, true, &payload)).unwrap();
    }
    raw.write_all(&masked_frame(0x1, true, b"still here"))
        .unwrap();
    loop {
        let (opcode, payload) = read_frame(&mut raw);
        if opcode == 0x1 {
            assert!(String::from_utf8(payload).unwrap().contains("still here"));
            break;
        }
        assert_eq!(opcode, 0x9);
        raw.write_all(&masked_frame(0xA, true, &[])).unwrap();
    }
}

#[test]
fn a_client_that_stops_answering_is_closed_with_1011_and_leaves() {
    let server = TestServer::chat(quick());
    let mut watcher = raw_upgrade(server.addr, &[]);
    read_frame(&mut watcher);
    let mut silent = raw_upgrade(server.addr, &[]);
    let (_, joined) = read_frame(&mut watcher);
    let silent_id = sys_id(&serde_json::from_slice(&joined).unwrap(), " has joined");
    // The watcher answers its pings, in its own thread, until it hears
    // the silent one leave.
    let watching = std::thread::spawn(move || {
        loop {
            let (opcode, payload) = read_frame(&mut watcher);
            match opcode {
                0x9 => watcher
                    .write_all(&masked_frame(0xA, true, &payload))
                    .unwrap(),
                0x1 => {
                    let message: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    return sys_id(&message, " has left");
                }
                other => panic!("the watcher got opcode {other}"),
            }
        }
    });
    // The silent one reads (as a half-open peer's kernel would accept
    // bytes) but never answers: a ping, then close 1011, then the end.
    read_frame(&mut silent); // welcome
    assert_eq!(read_frame(&mut silent).0, 0x9);
    assert_eq!(read_close_code(&mut silent), 1011);
    assert!(read_to_close(&mut silent).is_empty());
    assert_eq!(watching.join().unwrap(), silent_id);
    assert_room_works(server.addr);
}
