//! [`EchoHandler`]: every text message goes back to its sender, unchanged.
//!
//! Served by exactly the same loop, server and connection code as the chat,
//! it shows that the loop is protocol-agnostic: only the handler differs.
//! The tests use it. (Autobahn's conformance suite also wants binary
//! messages echoed, which the connection layer refuses with 1003 today; the
//! hardening issue adds that for its echo example.)

use crate::handler::{ConnId, Outbox, WebSocketHandler};

/// Echoes each text message to the connection that sent it.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoHandler;

impl WebSocketHandler for EchoHandler {
    fn on_message(&mut self, id: ConnId, text: &str, out: &mut Outbox) {
        out.write_message(id, text);
    }
}
