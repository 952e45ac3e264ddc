//! The chat protocol against a real server over real sockets: the seed's
//! messages byte for byte, ids, ordering, origins, close codes.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::thread;

use common::*;
use eddy::Config;
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn newcomer_is_welcomed_and_the_others_are_told() {
    let server = TestServer::start();
    let mut a = connect(server.addr);
    // Byte for byte: the seed's keys, in the seed's order, compact, then
    // the newcomer's own id, where the room's history stands, the room,
    // who is there and the token to come back with.
    let a_welcome = recv_text(&mut a);
    let (a_id, epoch, head) = welcome(&serde_json::from_str(&a_welcome).unwrap());
    let token = serde_json::from_str::<serde_json::Value>(&a_welcome).unwrap()["resume"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        a_welcome,
        format!(
            r#"{{"type":"sys","message":"Welcome to WebSocket","id":{a_id},"epoch":"{epoch}","head":0,"room":"lobby","count":1,"members":[{{"id":{a_id}}}],"resume":"{token}"}}"#
        )
    );
    assert_eq!(head, 0, "a new room");
    let mut b = connect(server.addr);
    let b_welcome = recv_text(&mut b);
    let b_id = welcome_id(&serde_json::from_str(&b_welcome).unwrap());
    assert_ne!(a_id, b_id);
    let joined = recv_text(&mut a);
    assert_eq!(
        joined,
        format!(
            r#"{{"type":"sys","message":"{b_id} has joined","event":"join","id":{b_id},"count":2}}"#
        )
    );
    // The newcomer is not told of its own arrival: its next message is a line.
    send(&mut a, "hello");
    assert_eq!(recv_user_line(&mut b)["message"], "hello");
}

#[test]
fn a_line_reaches_everyone_including_the_sender_with_a_numeric_id() {
    let server = TestServer::start();
    let mut a = join(server.addr);
    let mut b = join(server.addr);
    let b_id = recv_joined(&mut a);
    let before = now_ms();
    send(&mut b, "hi \"you\" <b>&");
    // The seed's keys in the seed's order, then the line's seq and time.
    let line = recv_text(&mut a);
    let seed = format!(r#"{{"type":"user","id":{b_id},"message":"hi \"you\" <b>&","seq":1,"ts":"#);
    let ts: u64 = line
        .strip_prefix(&seed)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    assert!(
        (before..=now_ms()).contains(&ts),
        "{ts} is when it was said"
    );
    assert_eq!(recv_text(&mut b), line, "the same bytes for everyone");
    assert!(b_id > 0 && b_id < (1 << 53));
    send(&mut a, "two");
    assert_eq!(recv_user_line(&mut b)["seq"], 2, "one more each line");
}

#[test]
fn leaving_is_announced_after_the_close_handshake() {
    let server = TestServer::start();
    let mut a = join(server.addr);
    let mut b = join(server.addr);
    let b_id = recv_joined(&mut a);
    b.close(None).unwrap();
    // tungstenite's client sees our reply close, then the end of the stream.
    loop {
        match b.read() {
            Ok(Message::Close(_)) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("expected the close handshake to complete, got {other:?}"),
        }
    }
    assert_eq!(
        recv_text(&mut a),
        format!(
            r#"{{"type":"sys","message":"{b_id} has left","event":"leave","id":{b_id},"count":1}}"#
        )
    );
}

#[test]
fn a_vanished_client_also_leaves() {
    let server = TestServer::start();
    let mut a = join(server.addr);
    let b = join(server.addr);
    let b_id = recv_joined(&mut a);
    drop(b); // no close frame: the TCP connection just ends
    assert_eq!(sys_id(&recv_json(&mut a), " has left"), b_id);
    assert_room_works(server.addr);
}

#[test]
fn ids_are_never_reused() {
    let server = TestServer::start();
    let mut watcher = join(server.addr);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let client = join(server.addr);
        seen.push(recv_joined(&mut watcher));
        drop(client);
        assert_eq!(
            sys_id(&recv_json(&mut watcher), " has left"),
            *seen.last().unwrap()
        );
    }
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "{seen:?}");
}

#[test]
fn a_frame_sent_in_the_handshake_packet_is_not_lost() {
    let server = TestServer::start();
    let mut watcher = join(server.addr);
    let mut raw = raw_upgrade(server.addr, &masked_frame(0x1, true, b"early bird"));
    let (opcode, welcome) = read_frame(&mut raw);
    assert_eq!(opcode, 0x1);
    let raw_id = welcome_id(&serde_json::from_slice(&welcome).unwrap());
    let (_, line) = read_frame(&mut raw);
    let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(line["message"], "early bird");
    let id = recv_joined(&mut watcher);
    assert_eq!(id, raw_id);
    let heard = recv_user_line(&mut watcher);
    assert_eq!(
        (&heard["id"], &heard["message"], &heard["seq"]),
        (&json!(id), &json!("early bird"), &json!(1))
    );
}

#[test]
fn a_ping_gets_its_pong() {
    let server = TestServer::start();
    let mut raw = raw_upgrade(server.addr, &[]);
    read_frame(&mut raw); // welcome
    raw.write_all(&masked_frame(0x9, true, b"are you there"))
        .unwrap();
    assert_eq!(read_frame(&mut raw), (0xA, b"are you there".to_vec()));
}

#[test]
fn fragmented_text_is_reassembled() {
    let server = TestServer::start();
    let mut raw = raw_upgrade(server.addr, &[]);
    read_frame(&mut raw);
    let mut frames = masked_frame(0x1, false, "frag".as_bytes());
    frames.extend(masked_frame(0x9, true, b"")); // a ping between fragments is allowed
    frames.extend(masked_frame(0x0, false, "men".as_bytes()));
    frames.extend(masked_frame(0x0, true, "ted ✓".as_bytes()));
    raw.write_all(&frames).unwrap();
    assert_eq!(read_frame(&mut raw).0, 0xA);
    let (_, line) = read_frame(&mut raw);
    let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(line["message"], "fragmented ✓");
}

/// Sends `bytes` on a fresh raw connection and returns the close code.
fn close_code_for(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut raw = raw_upgrade(addr, &[]);
    read_frame(&mut raw); // welcome
    raw.write_all(bytes).unwrap();
    read_close_code(&mut raw)
}

#[test]
fn protocol_violations_close_with_1002() {
    let server = TestServer::start();
    let mut reserved_bit = masked_frame(0x1, true, b"x");
    reserved_bit[0] |= 0x40;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", unmasked_frame(0x1, b"hello")),
        ("reserved bit", reserved_bit),
        ("reserved opcode", masked_frame(0x3, true, b"x")),
        ("fragmented ping", masked_frame(0x9, false, b"x")),
        ("ping over 125 bytes", masked_frame(0x9, true, &[0; 126])),
        ("continuation without start", masked_frame(0x0, true, b"x")),
        ("one-byte close payload", masked_frame(0x8, true, &[0x03])),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_code_for(server.addr, &bytes), 1002, "{what}");
    }
    assert_room_works(server.addr);
}

#[test]
fn a_bad_close_code_is_answered_with_1002() {
    let server = TestServer::start();
    assert_eq!(
        close_code_for(server.addr, &masked_frame(0x8, true, &999u16.to_be_bytes())),
        1002
    );
    assert_room_works(server.addr);
}

#[test]
fn binary_messages_close_with_1003() {
    let server = TestServer::start();
    let mut watcher = join(server.addr);
    let mut client = join(server.addr);
    let id = recv_joined(&mut watcher);
    client.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(recv_close(&mut client), CloseCode::Unsupported);
    assert_eq!(sys_id(&recv_json(&mut watcher), " has left"), id);
    assert_room_works(server.addr);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start();
    assert_eq!(
        close_code_for(server.addr, &masked_frame(0x1, true, b"ok \xff\xfe")),
        1007
    );
    // Split across fragments: each half alone is not valid.
    let mut split = masked_frame(0x1, false, &"é".as_bytes()[..1]);
    split.extend(masked_frame(0x0, true, b"x"));
    assert_eq!(close_code_for(server.addr, &split), 1007);
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(b"\xff");
    assert_eq!(
        close_code_for(server.addr, &masked_frame(0x8, true, &bad_reason)),
        1007
    );
    assert_room_works(server.addr);
}

#[test]
fn an_oversized_frame_gets_1009_from_its_header_alone() {
    let server = TestServer::start();
    // Only the header of a 10 MB frame: the payload is never sent, so the
    // answer cannot come from reading it.
    let mut header = vec![0x81];
    push_length(&mut header, 0x80, 10_000_000);
    header.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_code_for(server.addr, &header), 1009);
    assert_room_works(server.addr);
}

#[test]
fn an_oversized_message_in_fragments_gets_1009() {
    let config = Config {
        max_message_bytes: 1000,
        max_pending_bytes: 8000,
        ..config()
    };
    let server = TestServer::chat(config);
    let mut fragments = Vec::new();
    fragments.extend(masked_frame(0x1, false, &[b'a'; 600]));
    fragments.extend(masked_frame(0x0, true, &[b'b'; 600]));
    assert_eq!(close_code_for(server.addr, &fragments), 1009);
    // The limit itself is allowed.
    let mut client = join(server.addr);
    send(&mut client, &"x".repeat(1000));
    assert_eq!(
        recv_user_line(&mut client)["message"]
            .as_str()
            .unwrap()
            .len(),
        1000
    );
    assert_room_works(server.addr);
}

#[test]
fn a_client_that_keeps_sending_after_an_oversized_frame_breaks_nothing() {
    let config = Config {
        max_message_bytes: 1000,
        max_pending_bytes: 8000,
        ..config()
    };
    let server = TestServer::chat(config);
    let mut raw = raw_upgrade(server.addr, &[]);
    read_frame(&mut raw);
    let mut flood = masked_frame(0x1, true, &[b'x'; 5000]);
    for _ in 0..200 {
        flood.extend(masked_frame(0x1, true, b"more"));
        flood.extend(masked_frame(0x2, true, &[0xff; 300]));
        flood.extend(unmasked_frame(0x1, b"garbage"));
    }
    // The server may reset the connection while we are still writing.
    let _ = raw.write_all(&flood);
    assert_eq!(read_close_code(&mut raw), 1009);
    assert_room_works(server.addr);
}

#[test]
fn a_maximum_size_line_of_control_characters_reaches_every_client() {
    let server = TestServer::start();
    let mut clients: Vec<_> = (0..3).map(|_| join(server.addr)).collect();
    for i in 0..clients.len() {
        for _ in i + 1..clients.len() {
            recv_joined(&mut clients[i]);
        }
    }
    // 64 KiB of \u0001: each escapes to six bytes of JSON.
    let line = "\u{1}".repeat(eddy::config::DEFAULT_MAX_MESSAGE_BYTES);
    send(&mut clients[0], &line);
    for client in &mut clients {
        let text = recv_text(client);
        assert!(text.len() > 6 * line.len(), "{}", text.len());
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["message"].as_str().unwrap(), line);
    }
}

#[test]
fn twenty_clients_see_every_line_in_one_identical_order() {
    const CLIENTS: usize = 20;
    const SENDERS: usize = 5;
    const LINES: usize = 200;
    let server = TestServer::start();
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| join(server.addr)).collect();
    // Wait until everyone has seen everyone join, so no line can race a join.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in i + 1..CLIENTS {
            recv_joined(client);
        }
    }
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            thread::spawn(move || {
                if i < SENDERS {
                    for n in 0..LINES {
                        send(&mut client, &format!("{i}:{n}"));
                    }
                }
                let mut order = Vec::with_capacity(SENDERS * LINES);
                while order.len() < SENDERS * LINES {
                    let line = recv_user_line(&mut client);
                    order.push((
                        line["id"].as_u64().unwrap(),
                        line["message"].as_str().unwrap().to_owned(),
                    ));
                }
                order
            })
        })
        .collect();
    let orders: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for order in &orders[1..] {
        assert!(order == &orders[0], "two clients saw different orders");
    }
    // Each sender's lines arrive in the order sent, always with the same id.
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut ids: HashMap<usize, u64> = HashMap::new();
    for (id, message) in &orders[0] {
        let (sender, n) = message.split_once(':').unwrap();
        let (sender, n): (usize, usize) = (sender.parse().unwrap(), n.parse().unwrap());
        let expected = next.entry(sender).or_insert(0);
        assert_eq!(n, *expected, "sender {sender} out of order");
        *expected += 1;
        assert_eq!(*ids.entry(sender).or_insert(*id), *id);
    }
    assert_eq!(next.len(), SENDERS);
    assert!(next.values().all(|&n| n == LINES));
}

#[test]
fn an_origin_other_than_the_host_is_refused_and_nobody_hears_of_it() {
    let server = TestServer::start();
    let mut watcher = join(server.addr);
    let refused = http_exchange(
        server.addr,
        upgrade_request(server.addr, "Origin: http://evil.example\r\n").as_bytes(),
    );
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    // The same host and port is the page's own origin: allowed.
    let mut same = tcp(server.addr);
    let own = format!("Origin: http://{}\r\n", server.addr);
    same.write_all(upgrade_request(server.addr, &own).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut same, true).status, 101);
    // The watcher's next message is that join: none came for the refused client.
    recv_joined(&mut watcher);
    send(&mut watcher, "and nothing else before this");
    assert_eq!(
        recv_json(&mut watcher)["message"],
        "and nothing else before this"
    );
    assert_room_works(server.addr);
}

#[test]
fn allowed_origins_may_connect() {
    let config = Config {
        allowed_origins: vec!["https://chat.example.com".into()],
        ..config()
    };
    let server = TestServer::chat(config);
    let mut stream = tcp(server.addr);
    let request = upgrade_request(server.addr, "Origin: https://chat.example.com\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream, true).status, 101);
    let refused = http_exchange(
        server.addr,
        upgrade_request(server.addr, "Origin: https://other.example.com\r\n").as_bytes(),
    );
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
}

#[test]
fn clients_without_an_origin_are_allowed() {
    let server = TestServer::start();
    // tungstenite's client sends no Origin header.
    let mut client = connect(server.addr);
    welcome_id(&recv_json(&mut client));
}

#[test]
fn shutdown_closes_every_client_with_1001() {
    let server = TestServer::start();
    let mut clients: Vec<_> = (0..5).map(|_| join(server.addr)).collect();
    let addr = server.addr;
    server.handle.shutdown().unwrap();
    for client in &mut clients {
        // Join notices may come first; then the close.
        let code = loop {
            match client.read() {
                Ok(Message::Text(_)) => continue,
                Ok(Message::Close(Some(frame))) => break frame.code,
                other => panic!("expected close 1001, got {other:?}"),
            }
        };
        assert_eq!(code, CloseCode::Away);
    }
    drop(clients);
    // run() returns once every client is gone (or the grace period ends).
    server.shutdown();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn joins_and_leaves_are_announced_only_up_to_the_set_room_size() {
    let server = TestServer::chat(Config {
        announce_joins_up_to: Some(2),
        ..config()
    });
    let (mut a, _) = join_with_id(server.addr);
    let (mut b, b_id) = join_with_id(server.addr);
    assert_eq!(recv_joined(&mut a), b_id, "a room of two hears of joins");
    // A third member: nobody hears of it, coming or going, but its lines
    // reach everyone.
    let (mut c, c_id) = join_with_id(server.addr);
    send(&mut c, "from the third");
    for client in [&mut a, &mut b] {
        let line = recv_json(client);
        assert_eq!(
            (&line["id"], &line["message"]),
            (&json!(c_id), &json!("from the third"))
        );
    }
    c.close(None).unwrap();
    while c.read().is_ok() {}
    send(&mut b, "after the third left");
    let line = recv_json(&mut a);
    assert_eq!(
        line["message"], "after the third left",
        "no notice before it"
    );
    // Back to two: b's leaving is announced.
    b.close(None).unwrap();
    while b.read().is_ok() {}
    assert_eq!(sys_id(&recv_json(&mut a), " has left"), b_id);
}
