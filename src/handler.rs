//! The line between the wire and the application: [`WebSocketHandler`],
//! [`ConnId`] and [`Outbox`].
//!
//! Like Tornado's `WebSocketHandler`, the trait splits protocol from wire: the
//! server does sockets, HTTP and framing, and calls `open`, `on_message` and
//! `on_close`. Unlike Tornado, which makes one handler object per socket plus
//! a class-level `clients` set, Eddy has *one* handler for all connections
//! and tells it which connection spoke by [`ConnId`]. So the handler (the
//! chat room) owns its state outright, nothing borrows the connection table
//! while it runs, and it can be tested with no sockets at all.
//!
//! A handler never writes to a socket. It puts messages in an [`Outbox`];
//! each message is framed once, here, and the server then queues the same
//! shared bytes on every recipient.

use std::fmt;

use tungstenite::Bytes;
pub use tungstenite::protocol::frame::coding::CloseCode;

use crate::ws;

/// A connection's identity for its whole life, and the `id` in the chat's
/// JSON. Assigned from a counter starting at 1 and never reused (unlike the
/// slab slot, which is reused as soon as a connection is freed), so a message
/// addressed to a connection that has left can never reach a newcomer. It
/// stays below 2^53 for any realistic uptime, so JavaScript reads it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The application side of a WebSocket server (Tornado's `WebSocketHandler`
/// methods, for every connection at once).
pub trait WebSocketHandler {
    /// A WebSocket handshake completed. Runs exactly once per connection,
    /// before any `on_message` for it.
    fn open(&mut self, _id: ConnId, _out: &mut Outbox) {}

    /// A complete text message arrived (already checked to be UTF-8 and
    /// within the size limit).
    fn on_message(&mut self, id: ConnId, text: &str, out: &mut Outbox);

    /// A complete binary message arrived. By default it is refused with
    /// close code 1003 (unsupported data), as a text protocol should.
    fn on_binary(&mut self, id: ConnId, _data: &[u8], out: &mut Outbox) {
        out.close(
            id,
            CloseCode::Unsupported,
            "binary messages are not supported",
        );
    }

    /// The connection left: closed by the client, cut off, failed or shut
    /// down. Runs exactly once, and only for connections that were opened.
    /// By the time it runs the connection no longer receives broadcasts.
    fn on_close(&mut self, _id: ConnId, _out: &mut Outbox) {}
}

/// Who receives a message. "All" means every connection that is open when
/// the outbox is delivered, that is, every connection `open` was called for
/// and `on_close` was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// One connection.
    One(ConnId),
    /// Every open connection.
    All,
    /// Every open connection but one (the seed's "has joined" goes to the others).
    AllExcept(ConnId),
}

impl Recipients {
    /// Whether the connection `id` is among these recipients.
    pub fn includes(self, id: ConnId) -> bool {
        match self {
            Recipients::One(one) => one == id,
            Recipients::All => true,
            Recipients::AllExcept(other) => other != id,
        }
    }
}

/// What a delivery carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A complete data frame (header and payload), encoded once. Cloning
    /// `Bytes` only bumps a reference count, so every recipient's queue
    /// points at this one buffer.
    Frame(Bytes),
    /// Close the connection with this code and reason (at most 123 bytes).
    Close(CloseCode, &'static str),
}

/// One message on its way, and its addressees.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Who gets it.
    pub to: Recipients,
    /// What they get.
    pub payload: Payload,
}

impl Delivery {
    /// The payload of a text frame, the text the recipients will read
    /// (`None` for a close).
    pub fn text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Frame(frame) => Some(ws::text_frame_payload(frame)),
            Payload::Close(..) => None,
        }
    }
}

/// Messages a handler produced during one call, in order. The server
/// delivers them after the call returns.
#[derive(Debug, Default)]
pub struct Outbox {
    deliveries: Vec<Delivery>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Sends `text` to one connection (Tornado's `write_message`).
    pub fn write_message(&mut self, to: ConnId, text: &str) {
        self.push(Recipients::One(to), ws::encode_text_frame(text));
    }

    /// Sends `data` as a binary message to one connection.
    pub fn write_binary(&mut self, to: ConnId, data: &[u8]) {
        self.push(Recipients::One(to), ws::encode_binary_frame(data));
    }

    /// Sends `text` to every open connection (the seed's `send_to_all`).
    pub fn send_to_all(&mut self, text: &str) {
        self.push(Recipients::All, ws::encode_text_frame(text));
    }

    /// Sends `text` to every open connection except `except`.
    pub fn send_to_all_except(&mut self, except: ConnId, text: &str) {
        self.push(Recipients::AllExcept(except), ws::encode_text_frame(text));
    }

    /// Closes one connection with `code` (after what was queued for it
    /// before). Its `on_close` follows.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &'static str) {
        self.deliveries.push(Delivery {
            to: Recipients::One(id),
            payload: Payload::Close(code, reason),
        });
    }

    fn push(&mut self, to: Recipients, frame: Bytes) {
        self.deliveries.push(Delivery {
            to,
            payload: Payload::Frame(frame),
        });
    }

    /// The messages queued so far, in order.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// Takes the queued messages out, leaving the outbox empty (and its
    /// allocation in place for the next handler call).
    pub fn drain(&mut self) -> std::vec::Drain<'_, Delivery> {
        self.deliveries.drain(..)
    }

    /// Moves the queued messages into `batch` (emptied first), leaving the
    /// outbox empty: for delivering while handlers add more.
    pub fn take_into(&mut self, batch: &mut Vec<Delivery>) {
        batch.clear();
        std::mem::swap(&mut self.deliveries, batch);
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_include_the_right_connections() {
        let (a, b) = (ConnId(1), ConnId(2));
        assert!(Recipients::All.includes(a));
        assert!(Recipients::One(a).includes(a));
        assert!(!Recipients::One(a).includes(b));
        assert!(!Recipients::AllExcept(a).includes(a));
        assert!(Recipients::AllExcept(a).includes(b));
    }

    #[test]
    fn outbox_keeps_order_and_frames_each_message_once() {
        let mut out = Outbox::new();
        out.write_message(ConnId(3), "one");
        out.send_to_all("two");
        out.send_to_all_except(ConnId(3), "three");
        out.close(ConnId(4), CloseCode::Policy, "bye");
        let last = out.deliveries().last().unwrap().clone();
        assert!(matches!(
            last.payload,
            Payload::Close(CloseCode::Policy, "bye")
        ));
        assert_eq!(last.text(), None);
        let got: Vec<_> = out
            .drain()
            .filter_map(|d| Some((d.to, d.text()?.to_owned())))
            .collect();
        assert_eq!(
            got,
            [
                (Recipients::One(ConnId(3)), "one".to_owned()),
                (Recipients::All, "two".to_owned()),
                (Recipients::AllExcept(ConnId(3)), "three".to_owned()),
            ]
        );
        assert!(out.is_empty());
    }
}
