//! [`EchoHandler`]: every text message goes back to its sender, unchanged.
//!
//! Served by exactly the same loop, server and connection code as the chat,
//! it shows that the loop is protocol-agnostic: only the handler differs.
//! The tests and the Autobahn conformance run (`examples/echo.rs`) use it.

use crate::handler::{ConnId, Outbox, WebSocketHandler};

/// Echoes each message, text or binary, to the connection that sent it.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoHandler;

impl WebSocketHandler for EchoHandler {
    fn on_message(&mut self, id: ConnId, text: &str, out: &mut Outbox) {
        out.write_message(id, text);
    }

    fn on_binary(&mut self, id: ConnId, data: &[u8], out: &mut Outbox) {
        out.write_binary(id, data);
    }
}
