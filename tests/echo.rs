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

#[test]
fn the_echo_route_serves_beside_the_chat_route() {
    let config = config();
    let routes = eddy::chat::routes(&config)
        .unwrap()
        .route("/echo", EchoHandler);
    let server = TestServer::with_routes(config, routes);
    let (mut echo, response) =
        tungstenite::client(format!("ws://{}/echo", server.addr), tcp(server.addr))
            .expect("handshake on /echo");
    assert_eq!(response.status(), 101);
    let mut chat = join(server.addr);
    send(&mut echo, "back to me");
    assert_eq!(recv_text(&mut echo), "back to me", "no greeting on /echo");
    send(&mut chat, "to the room");
    assert_eq!(recv_user_line(&mut chat)["message"], "to the room");
    // The echo's connections are in no room: the chat line never reached it.
    send(&mut echo, "still only mine");
    assert_eq!(recv_text(&mut echo), "still only mine");
    // A path nobody routed is no WebSocket.
    let request = upgrade_request(server.addr, "").replacen("/soc", "/nowhere", 1);
    assert!(http_exchange(server.addr, request.as_bytes()).starts_with("HTTP/1.1 404 "));
}
