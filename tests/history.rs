//! The room's memory, against a real server over real sockets: sequence
//! numbers, the replay a newcomer gets, resuming after a drop (across a
//! hole, from another epoch), and the refusals of a malformed resume.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;

use common::*;
use eddy::Config;
use serde_json::{Value, json};

/// Opens `/soc?{query}` and returns the client and its welcome's (id, epoch, head).
fn join_with(addr: SocketAddr, query: &str) -> (Client, (u64, String, u64)) {
    let (client, message) = enter(addr, query);
    (client, welcome(&message))
}

/// A client's view of the room: its next messages until (and with) the
/// `caught_up` notice, as (seq of each line, the notices).
fn until_caught_up(client: &mut Client) -> (Vec<u64>, Vec<Value>) {
    let mut seqs = Vec::new();
    let mut notices = Vec::new();
    loop {
        let message = recv_json(client);
        if message["type"] == "user" {
            seqs.push(message["seq"].as_u64().expect("a line without a seq"));
        } else {
            assert!(
                message.get("seq").is_none(),
                "a notice with a seq: {message}"
            );
            let done = message["event"] == "caught_up";
            notices.push(message);
            if done {
                return (seqs, notices);
            }
        }
    }
}

/// Sends `count` lines from `client`, numbered from `first`, reading its
/// own copies as it goes (so that it never lags); returns the last seq.
fn say_lines(client: &mut Client, first: usize, count: usize) -> u64 {
    let mut last = 0;
    for n in first..first + count {
        send(client, &n.to_string());
        loop {
            let line = recv_user_line(client);
            if line["message"] == n.to_string().as_str() {
                last = line["seq"].as_u64().unwrap();
                break;
            }
        }
    }
    last
}

#[test]
fn a_newcomer_gets_the_last_lines_then_caught_up_then_live_with_nothing_missing_at_the_seam() {
    let server = TestServer::start();
    let mut sender = join(server.addr);
    say_lines(&mut sender, 0, 80);
    // Lines keep coming while the newcomer joins and is replayed to.
    let (started, started_rx) = mpsc::channel();
    let (stop, stop_rx) = mpsc::channel::<()>();
    let talking = thread::spawn(move || {
        let mut n = 80;
        while stop_rx.try_recv().is_err() && n < 5_000 {
            say_lines(&mut sender, n, 1);
            if n == 90 {
                started.send(()).unwrap();
            }
            n += 1;
        }
        n
    });
    started_rx.recv().unwrap();
    let (mut newcomer, (_, _, head)) = join_with(server.addr, "");
    let (replayed, notices) = until_caught_up(&mut newcomer);
    let caught_up_at = notices.last().unwrap()["head"].as_u64().unwrap();
    assert_eq!(notices.len(), 1, "nothing but caught_up: {notices:?}");
    assert_eq!(
        replayed[0],
        head - 49,
        "the last 50 before the welcome's head"
    );
    assert_eq!(*replayed.last().unwrap(), caught_up_at);
    assert!(caught_up_at >= head);
    // Live from the next line on, none missing at the seam.
    for expected in caught_up_at + 1..caught_up_at + 21 {
        assert_eq!(recv_user_line(&mut newcomer)["seq"], expected);
    }
    stop.send(()).unwrap();
    let sent = talking.join().unwrap();
    assert!(
        replayed.windows(2).all(|w| w[1] == w[0] + 1),
        "replay out of order or with holes: {replayed:?}"
    );
    assert!(sent > 100);
}

#[test]
fn a_client_that_drops_and_resumes_gets_exactly_the_lines_it_missed_while_others_send() {
    let server = TestServer::start();
    let mut sender = join(server.addr);
    let (mut dropper, (_, epoch, _)) = join_with(server.addr, "");
    recv_joined(&mut sender);
    say_lines(&mut sender, 0, 10);
    let mut seen = 0;
    while seen < 10 {
        seen = recv_user_line(&mut dropper)["seq"].as_u64().unwrap();
    }
    drop(dropper); // the Wi-Fi goes

    // The others go on talking, and keep talking while it comes back.
    say_lines(&mut sender, 10, 100);
    let talking = thread::spawn(move || {
        say_lines(&mut sender, 110, 100);
        sender
    });
    let (mut back, (_, same_epoch, _)) =
        join_with(server.addr, &format!("since={seen}&epoch={epoch}"));
    assert_eq!(same_epoch, epoch);
    let mut sender = talking.join().unwrap();
    say_lines(&mut sender, 210, 1);
    // Every line after the 10th, each once, in order, with its own text;
    // one caught_up at the seam, wherever the talking was by then.
    let mut next = 11;
    let mut caught_up = 0;
    while next <= 211 {
        let message = recv_json(&mut back);
        match message["type"].as_str() {
            Some("user") => {
                assert_eq!(message["seq"], next, "{message}");
                assert_eq!(message["message"], (next - 1).to_string());
                next += 1;
            }
            _ if message["event"] == "caught_up" => {
                assert_eq!(message["head"], next - 1);
                caught_up += 1;
            }
            _ => panic!("unexpected {message}"),
        }
    }
    assert_eq!(caught_up, 1);
}

#[test]
fn a_resume_across_a_hole_is_told_the_gap_once_then_gets_what_is_held() {
    let server = TestServer::chat(Config {
        history_lines: 10,
        ..config()
    });
    let (mut sender, (_, epoch, _)) = join_with(server.addr, "");
    assert_eq!(say_lines(&mut sender, 1, 30), 30);
    let (mut back, _) = join_with(server.addr, &format!("since=5&epoch={epoch}"));
    assert_eq!(
        recv_text(&mut back),
        r#"{"type":"sys","message":"15 earlier lines are no longer available","event":"gap","from":6,"to":20}"#
    );
    let (seqs, notices) = until_caught_up(&mut back);
    assert_eq!(seqs, (21..=30).collect::<Vec<_>>());
    assert_eq!(
        notices,
        [
            json!({"type": "sys", "message": "You are up to date.", "event": "caught_up", "head": 30,
                   "count": 2, "members": [{"id": 1}, {"id": 2}]})
        ]
    );
}

#[test]
fn another_epoch_or_a_seq_past_the_head_gets_a_reset_then_the_newcomers_replay() {
    let server = TestServer::chat(Config {
        replay: 3,
        ..config()
    });
    let (mut sender, (_, epoch, _)) = join_with(server.addr, "");
    say_lines(&mut sender, 1, 10);
    for query in [
        "since=4&epoch=fromanotherserver".to_owned(),
        format!("since=11&epoch={epoch}"),
    ] {
        let (mut back, _) = join_with(server.addr, &query);
        let reset = recv_json(&mut back);
        assert_eq!(reset["event"], "reset", "{query}: {reset}");
        assert_eq!(
            reset.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["event", "message", "type"], // serde_json sorts them
        );
        let (seqs, notices) = until_caught_up(&mut back);
        assert_eq!(seqs, [8, 9, 10], "{query}: the newest --replay lines");
        assert_eq!(notices.len(), 1);
    }
}

#[test]
fn a_malformed_resume_is_refused_with_400_before_the_upgrade() {
    let server = TestServer::start();
    for (query, reason) in [
        ("since=4", "give both or neither"),
        ("epoch=abc", "give both or neither"),
        ("since=four&epoch=abc", "since must be a whole number"),
        ("since=-1&epoch=abc", "since must be a whole number"),
        ("since=1&epoch=a%20b", "epoch must be"),
        ("since=1&since=2&epoch=abc", "once"),
    ] {
        let mut stream = tcp(server.addr);
        let request =
            upgrade_request(server.addr, "").replacen("/soc", &format!("/soc?{query}"), 1);
        stream.write_all(request.as_bytes()).unwrap();
        let response = String::from_utf8(read_to_close(&mut stream)).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{query}: {response}"
        );
        assert!(response.contains("Connection: close\r\n"), "{response}");
        assert!(
            response.ends_with(&format!("{reason}\n")) || response.contains(reason),
            "{query}: {response}"
        );
    }
    // Nobody heard of them; the room works.
    assert_room_works(server.addr);
}

#[test]
fn with_replay_0_a_newcomer_gets_the_seed_protocol_exactly() {
    let server = TestServer::chat(Config {
        replay: 0,
        ..config()
    });
    let mut sender = join(server.addr);
    say_lines(&mut sender, 1, 5);
    let mut newcomer = connect(server.addr);
    let (id, _, head) = welcome(&recv_json(&mut newcomer));
    assert_eq!(head, 5);
    assert_eq!(recv_joined(&mut sender), id);
    send(&mut sender, "live");
    // Straight from the welcome to the live line: no replay, no caught_up.
    let line = recv_json(&mut newcomer);
    assert_eq!(
        (&line["message"], &line["seq"]),
        (&json!("live"), &json!(6))
    );
}

#[test]
fn notices_are_not_history_and_carry_no_seq() {
    let server = TestServer::start();
    let mut a = join(server.addr);
    let b = join(server.addr);
    let joined = recv_json(&mut a);
    assert!(
        joined.get("seq").is_none() && joined.get("ts").is_none(),
        "{joined}"
    );
    drop(b);
    let left = recv_json(&mut a);
    assert!(left["message"].as_str().unwrap().ends_with("has left"));
    assert!(left.get("seq").is_none(), "{left}");
    // The next line is the room's first: notices took no seq.
    send(&mut a, "first");
    assert_eq!(recv_user_line(&mut a)["seq"], 1);
}
