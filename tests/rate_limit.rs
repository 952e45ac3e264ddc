//! The chat's flood control: lines over the limit are refused and only
//! their sender hears of it; a client far over the limit is closed (1008).

mod common;

use common::*;
use eddy::Config;
use eddy::rate::RateLimit;
use tungstenite::protocol::frame::coding::CloseCode;

fn limited() -> Config {
    Config {
        rate_limit: Some(RateLimit {
            burst: 3,
            per_second: 1.0,
        }),
        ..config()
    }
}

#[test]
fn lines_over_the_limit_reach_nobody_and_their_sender_is_told() {
    let server = TestServer::chat(limited());
    let (mut a, a_id) = join_with_id(server.addr);
    let mut b = join(server.addr);
    recv_joined(&mut a);
    for n in 1..=5 {
        send(&mut a, &format!("line {n}"));
    }
    // A: its three lines, then two notices, in order.
    for n in 1..=3 {
        assert_eq!(recv_json(&mut a)["message"], format!("line {n}"));
    }
    for _ in 0..2 {
        let notice = recv_json(&mut a);
        assert_eq!(notice["type"], "sys");
        assert_eq!(notice["message"], eddy::chat::TOO_FAST);
    }
    // B: the three lines, and then nothing from A until A leaves.
    for n in 1..=3 {
        assert_eq!(recv_json(&mut b)["message"], format!("line {n}"));
    }
    drop(a);
    assert_eq!(sys_id(&recv_json(&mut b), " has left"), a_id);
    assert_room_works(server.addr);
}

#[test]
fn a_client_that_keeps_flooding_is_closed_with_1008() {
    let server = TestServer::chat(limited());
    let (mut flooder, flooder_id) = join_with_id(server.addr);
    let mut watcher = join(server.addr);
    recv_joined(&mut flooder);
    // Ten bursts of refused lines and then some: bounded.
    for n in 0..100 {
        if flooder
            .send(tungstenite::Message::text(format!("spam {n}")))
            .is_err()
        {
            break; // closed under us
        }
    }
    assert_eq!(recv_close_skipping_text(&mut flooder), CloseCode::Policy);
    for n in 0..3 {
        assert_eq!(recv_json(&mut watcher)["message"], format!("spam {n}"));
    }
    assert_eq!(sys_id(&recv_json(&mut watcher), " has left"), flooder_id);
    assert_room_works(server.addr);
}

/// Reads past text messages to the close frame; returns its code.
fn recv_close_skipping_text(client: &mut Client) -> CloseCode {
    loop {
        match client.read() {
            Ok(tungstenite::Message::Text(_)) => continue,
            Ok(tungstenite::Message::Close(Some(frame))) => return frame.code,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}
