//! Rooms, names, presence, commands and coming back, against a real server
//! over real sockets.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use eddy::Config;
use serde_json::{Value, json};
use tungstenite::protocol::frame::coding::CloseCode;

/// Sends `text` and returns the sender's next message.
fn ask(client: &mut Client, text: &str) -> Value {
    send(client, text);
    recv_json(client)
}

/// The HTTP status and body of a WebSocket handshake for `/soc?{query}`.
fn refused(addr: SocketAddr, query: &str) -> (u16, String) {
    let request = upgrade_request(addr, "").replacen("GET /soc ", &format!("GET /soc?{query} "), 1);
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap();
    // One response: a refusal's head and body, or a 101's head.
    let response = read_response(&mut stream, false);
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

#[test]
fn rooms_are_isolated_and_number_their_own_lines() {
    let server = TestServer::start();
    let (mut a1, w) = enter(server.addr, "room=a");
    assert_eq!(w["room"], "a");
    let (mut b1, _) = enter(server.addr, "room=b");
    let (mut a2, w) = enter(server.addr, "room=a");
    assert_eq!(w["count"], 2);
    let (mut b2, _) = enter(server.addr, "room=b");
    let a_ids = [
        w["members"][0]["id"].as_u64().unwrap(),
        w["id"].as_u64().unwrap(),
    ];
    // Each first member hears of its room's second only.
    assert_eq!(recv_json(&mut a1)["id"], a_ids[1]);
    assert_eq!(recv_json(&mut b1)["event"], "join");

    // Interleaved senders in both rooms.
    for n in 0..20 {
        let (client, room) = match n % 4 {
            0 => (&mut a1, "a"),
            1 => (&mut b1, "b"),
            2 => (&mut a2, "a"),
            _ => (&mut b2, "b"),
        };
        send(client, &format!("{room}:{n}"));
    }
    for (client, room) in [
        (&mut a1, "a"),
        (&mut a2, "a"),
        (&mut b1, "b"),
        (&mut b2, "b"),
    ] {
        let mut seqs = Vec::new();
        while seqs.len() < 10 {
            let message = recv_json(client);
            assert_eq!(message["type"], "user", "{room}: {message}");
            let text = message["message"].as_str().unwrap();
            assert!(text.starts_with(&format!("{room}:")), "{room} got {text}");
            seqs.push(message["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{room}: its own seqs");
    }
}

#[test]
fn room_names_fold_to_lower_case_and_bad_ones_get_400_with_a_reason() {
    let server = TestServer::start();
    let (mut first, w) = enter(server.addr, "room=Rust");
    assert_eq!(w["room"], "rust");
    let (_second, w) = enter(server.addr, "room=RUST");
    assert_eq!(
        (w["room"].as_str(), w["count"].as_u64()),
        (Some("rust"), Some(2))
    );
    assert_eq!(recv_json(&mut first)["event"], "join");
    let (_, w) = enter(server.addr, "room=%CE%95%CE%BB%CE%BB%CE%AC%CE%B4%CE%B1");
    assert_eq!(w["room"], "ελλάδα", "letters of any script");

    for (query, says) in [
        ("room=", "room"),
        ("room=a%20b", "room"),
        ("room=a/b", "room"),
        ("room=%3Cb%3E", "room"),
        (&format!("room={}", "x".repeat(65)), "room"),
        ("name=", "name"),
        ("name=%20%20", "name"),
        ("name=evil%E2%80%AEtxt.exe", "control, format"),
        ("name=a%E2%80%8Bb", "control, format"),
        ("name=a%0Ab", "control, format"),
        (&format!("name={}", "n".repeat(33)), "1-32"),
        ("room=a&room=b", "once"),
    ] {
        let (status, body) = refused(server.addr, query);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
}

#[test]
fn a_connection_that_would_open_one_room_too_many_gets_503() {
    let server = TestServer::chat(Config {
        max_rooms: 2,
        ..config()
    });
    let (_a, _) = enter(server.addr, "room=a");
    let (b, _) = enter(server.addr, "room=b");
    let (status, body) = refused(server.addr, "room=c");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many rooms"), "{body}");
    let (_also_a, _) = enter(server.addr, "room=A");
    // Once room b is empty, room c may open. Nobody is left in b to hear
    // of it, so each attempt is the event awaited.
    drop(b);
    let deadline = Instant::now() + TIMEOUT;
    while refused(server.addr, "room=c").0 == 503 {
        assert!(Instant::now() < deadline, "room b never emptied");
    }
}

#[test]
fn names_commands_and_their_notices() {
    let server = TestServer::start();
    let (mut alice, w) = enter(server.addr, "room=n&name=%20alice%20");
    assert_eq!(w["name"], "alice", "trimmed");
    let alice_id = w["id"].as_u64().unwrap();
    let (mut anon, w) = enter(server.addr, "room=n");
    let anon_id = w["id"].as_u64().unwrap();
    assert_eq!(
        w["members"],
        json!([{"id": alice_id, "name": "alice"}, {"id": anon_id}])
    );
    assert_eq!(
        recv_json(&mut alice),
        json!({"type": "sys", "message": format!("{anon_id} has joined"), "event": "join",
               "id": anon_id, "count": 2})
    );

    // /nick: told to the whole room, the sender included.
    let renamed = json!({"type": "sys", "message": format!("{anon_id} is now known as bob"),
                         "event": "nick", "id": anon_id, "name": "bob"});
    assert_eq!(ask(&mut anon, "/nick bob"), renamed);
    assert_eq!(recv_json(&mut alice), renamed);

    // Lines carry the name; /me is an action; // escapes a slash.
    let line = ask(&mut alice, "hi");
    assert_eq!(
        (line["name"].as_str(), line.get("action")),
        (Some("alice"), None)
    );
    assert_eq!(recv_json(&mut anon), line);
    let action = ask(&mut anon, "/me waves");
    assert_eq!(
        (
            action["message"].as_str(),
            action["name"].as_str(),
            action["action"].as_bool()
        ),
        (Some("waves"), Some("bob"), Some(true))
    );
    assert_eq!(action["seq"], 2, "an action is a line of history");
    assert_eq!(recv_json(&mut alice), action);
    let slash = ask(&mut alice, "//shrug");
    assert_eq!(
        (slash["message"].as_str(), slash["seq"].as_u64()),
        (Some("/shrug"), Some(3))
    );
    assert_eq!(recv_json(&mut anon), slash);

    // /who, an unknown command and a bad /nick answer the asker alone.
    let who = ask(&mut anon, "/who");
    assert_eq!(
        (who["event"].as_str(), who["room"].as_str()),
        (Some("who"), Some("n"))
    );
    assert_eq!(who["count"], 2);
    assert_eq!(who["message"], "2 here: alice, bob");
    let unknown = ask(&mut anon, "/dance");
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .starts_with("Unknown command /dance")
    );
    let bad = ask(&mut anon, "/nick \u{202E}evil");
    assert!(
        bad["message"].as_str().unwrap().contains("refused"),
        "{bad}"
    );
    let bad = ask(&mut anon, "/nick a\u{200B}b");
    assert!(
        bad["message"].as_str().unwrap().contains("refused"),
        "{bad}"
    );
    // Alice heard none of it: her next message is the next line.
    let line = ask(&mut anon, "after");
    assert_eq!(recv_json(&mut alice), line);
    assert_eq!(line["seq"], 4, "/nick and /who are not history");

    // Leaving, by name.
    drop(anon);
    assert_eq!(
        recv_json(&mut alice),
        json!({"type": "sys", "message": "bob has left", "event": "leave", "id": anon_id,
               "name": "bob", "count": 1})
    );
}

#[test]
fn a_resume_is_within_its_room_and_ends_with_who_is_there() {
    let server = TestServer::start();
    let (mut x, w) = enter(server.addr, "room=x&name=xena");
    let x_id = w["id"].as_u64().unwrap();
    let epoch = w["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        ask(&mut x, &n.to_string());
    }
    let (mut y, _) = enter(server.addr, "room=y");
    ask(&mut y, "in y");

    let (mut back, _) = enter(server.addr, &format!("room=x&since=2&epoch={epoch}"));
    let back_id;
    {
        let mut seqs = Vec::new();
        loop {
            let message = recv_json(&mut back);
            if message["event"] == "caught_up" {
                back_id = message["members"][1]["id"].as_u64().unwrap();
                assert_eq!(
                    message,
                    json!({"type": "sys", "message": "You are up to date.", "event": "caught_up",
                           "head": 5, "count": 2,
                           "members": [{"id": x_id, "name": "xena"}, {"id": back_id}]})
                );
                break;
            }
            seqs.push(message["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, [3, 4, 5]);
    }
    assert_eq!(recv_json(&mut x)["id"], back_id);

    // Room x's position means nothing in room y: a reset, then y's replay.
    let (mut wrong, _) = enter(server.addr, &format!("room=y&since=2&epoch={epoch}"));
    assert_eq!(recv_json(&mut wrong)["event"], "reset");
    assert_eq!(recv_json(&mut wrong)["message"], "in y");
    assert_eq!(recv_json(&mut wrong)["event"], "caught_up");
}

#[test]
fn a_resume_token_brings_back_the_id_and_name_and_replaces_a_half_open_connection() {
    let server = TestServer::start();
    let (mut watcher, _) = enter(server.addr, "room=t");
    let (gone, w) = enter(server.addr, "room=t&name=al");
    let (id, token) = (
        w["id"].as_u64().unwrap(),
        w["resume"].as_str().unwrap().to_owned(),
    );
    assert_eq!(recv_json(&mut watcher)["id"], id);
    drop(gone);
    assert_eq!(recv_json(&mut watcher)["event"], "leave");

    // Back after a drop: the same id and name; the room hears it return.
    let (mut back, w) = enter(server.addr, &format!("room=t&resume={token}"));
    assert_eq!(
        (w["id"].as_u64(), w["name"].as_str()),
        (Some(id), Some("al"))
    );
    assert_eq!(w["resume"], token.as_str(), "the token stays the member's");
    assert_eq!(
        recv_json(&mut watcher),
        json!({"type": "sys", "message": "al has joined", "event": "join", "id": id,
               "name": "al", "count": 2})
    );
    assert_eq!(ask(&mut back, "me again")["id"], id);
    assert_eq!(recv_json(&mut watcher)["id"], id);

    // Back again while that connection still looks open (a half-open socket
    // the server has not noticed): the old one is closed quietly.
    let (mut again, w) = enter(server.addr, &format!("room=t&resume={token}&name=al2"));
    assert_eq!((w["id"].as_u64(), w["count"].as_u64()), (Some(id), Some(2)));
    assert_eq!(w["name"], "al2", "a name asked for wins over the old one");
    // Without since/epoch it is replayed the room's lines, as a newcomer.
    while recv_json(&mut again)["event"] != "caught_up" {}
    assert_eq!(recv_close(&mut back), CloseCode::Normal);
    let line = ask(&mut again, "still me");
    assert_eq!(line["id"], id);
    assert_eq!(
        recv_json(&mut watcher),
        line,
        "no leave, no join: the same member"
    );
}

#[test]
fn a_token_from_another_room_or_after_the_window_is_refused_politely() {
    let server = TestServer::chat(Config {
        resume_window: Duration::from_millis(200),
        ..config()
    });
    let (mut watcher, _) = enter(server.addr, "room=t");
    let (gone, w) = enter(server.addr, "room=t&name=al");
    let (id, token) = (
        w["id"].as_u64().unwrap(),
        w["resume"].as_str().unwrap().to_owned(),
    );
    assert_eq!(recv_json(&mut watcher)["event"], "join");
    drop(gone);
    assert_eq!(recv_json(&mut watcher)["event"], "leave");
    let left_at = Instant::now();

    let (mut other, w) = enter(server.addr, &format!("room=elsewhere&resume={token}"));
    assert_ne!(w["id"].as_u64(), Some(id));
    assert!(w.get("name").is_none());
    assert_eq!(
        recv_json(&mut other),
        json!({"type": "sys", "message": "Your earlier session could not be resumed: you join as someone new.",
               "event": "resume_refused"})
    );
    // The window is a span of time: let it pass.
    std::thread::sleep(Duration::from_millis(300).saturating_sub(left_at.elapsed()));
    let (mut late, w) = enter(server.addr, &format!("room=t&resume={token}"));
    assert_ne!(w["id"].as_u64(), Some(id));
    assert_eq!(recv_json(&mut late)["event"], "resume_refused");
    // A token that is not ours at all.
    let (mut forged, _) = enter(
        server.addr,
        &format!("room=t&resume={id}.0123456789abcdef0123456789abcdef"),
    );
    assert_eq!(recv_json(&mut forged)["event"], "resume_refused");
}

#[test]
fn a_room_nobody_spoke_in_for_its_ttl_is_forgotten() {
    let server = TestServer::chat(Config {
        history_ttl: Duration::from_millis(200),
        ..config()
    });
    let (mut old, w) = enter(server.addr, "room=old");
    let epoch = w["epoch"].as_str().unwrap().to_owned();
    ask(&mut old, "a line");
    let (keep, w) = enter(server.addr, "room=kept");
    let kept_epoch = w["epoch"].as_str().unwrap().to_owned();
    drop(old);
    let spoke_at = Instant::now();
    // The TTL is a span of time: let it pass.
    std::thread::sleep(Duration::from_millis(300).saturating_sub(spoke_at.elapsed()));
    let (_, w) = enter(server.addr, "room=old");
    assert_eq!(w["head"], 0, "{w}");
    assert_ne!(w["epoch"].as_str(), Some(epoch.as_str()), "a new history");
    // A room with someone in it is not forgotten, however quiet.
    let (_, w) = enter(server.addr, "room=kept");
    assert_eq!(w["epoch"].as_str(), Some(kept_epoch.as_str()));
    drop(keep);
}
