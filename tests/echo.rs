//! The same loop, server and connection code with another handler: the
//! loop is protocol-agnostic.

mod common;

use common::*;
use eddy::EchoHandler;
use tungstenite::Message;

#[test]
fn echo_sends_each_message_back_to_its_sender_only() {
    let server = TestServer::with_handler(config(), EchoHandler);
    let mut a = connect(server.addr);
    let mut b = connect(server.addr);
    // No greeting: the first thing each reads is its own echo.
    send(&mut a, "from a");
    send(&mut b, "from b");
    assert_eq!(recv_text(&mut a), "from a");
    assert_eq!(recv_text(&mut b), "from b");
    let text = "ünïcödé 中文 🙂 \u{0} \"quotes\"";
    send(&mut a, text);
    assert_eq!(recv_text(&mut a), text);
    a.send(Message::Ping(b"p".to_vec().into())).unwrap();
    a.flush().unwrap();
    assert_eq!(a.read().unwrap(), Message::Pong(b"p".to_vec().into()));
}

#[test]
fn echo_sends_binary_back_as_binary() {
    let server = TestServer::with_handler(config(), EchoHandler);
    let mut client = connect(server.addr);
    let data: Vec<u8> = (0..=255).collect();
    client.send(Message::binary(data.clone())).unwrap();
    assert_eq!(client.read().unwrap(), Message::binary(data));
}

#[test]
fn a_reply_comes_before_the_close_that_followed_its_message() {
    // Text, then a close, in one packet: the echo must still go out first.
    let server = TestServer::with_handler(config(), EchoHandler);
    let mut packet = masked_frame(0x1, true, b"last words");
    packet.extend(masked_frame(0x8, true, &1000u16.to_be_bytes()));
    let mut raw = raw_upgrade(server.addr, &packet);
    assert_eq!(read_frame(&mut raw), (0x1, b"last words".to_vec()));
    assert_eq!(read_close_code(&mut raw), 1000);
}
