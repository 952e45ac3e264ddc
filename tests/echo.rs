//! The same loop, server and connection code with another handler: the
//! loop is protocol-agnostic.

mod common;

use common::*;
use eddy::{Config, EchoHandler};
use tungstenite::Message;

#[test]
fn echo_sends_each_message_back_to_its_sender_only() {
    let server = TestServer::with_handler(Config::default(), EchoHandler);
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
