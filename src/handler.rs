//! The line between the wire and the application: [`WebSocketHandler`],
//! [`ConnId`], [`Outbox`] and [`Routes`].
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
//! shared bytes on every recipient: one connection, or a *group* (a chat
//! room). Groups are kept by the server ([`crate::groups`]); a handler puts
//! a connection in one with [`Outbox::join`] and reads them through the
//! outbox, the one window it has on the server.
//!
//! [`Routes`] gives each WebSocket path its handler: a new endpoint is one
//! handler and one `route` line, with no change to the loop or the
//! connection (`examples/echo.rs` serves the echo beside the chat).
//!
//! A handler may keep a history of its lines ([`crate::history`]). Then its
//! lines carry their seq, and the server, which owns the sockets, uses it to
//! keep each member's place ([`crate::feed`]): it feeds a member that fell
//! behind, or asked for a replay, from [`WebSocketHandler::room_history`],
//! and tells it what it must know in the handler's words
//! ([`WebSocketHandler::feed_notice`]).

use std::fmt;
use std::io;
use std::time::Instant;

use mio::{Registry, Token};

use tungstenite::Bytes;
pub use tungstenite::protocol::frame::coding::CloseCode;

use crate::feed::FeedNotice;
use crate::groups::{GroupId, Groups};
use crate::history::{RoomHistory, Seq};
use crate::metrics::Exposition;
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

/// The request a WebSocket was opened with: its path and its query string
/// (without the `?`, still percent-encoded; empty if none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The path, e.g. `/soc`.
    pub path: &'a str,
    /// The query string, e.g. `since=41&epoch=q3k9x2aa81`.
    pub query: &'a str,
}

impl<'a> Request<'a> {
    /// Splits a request target (`/soc?since=4`) into path and query.
    pub fn from_target(target: &'a str) -> Self {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request { path, query }
    }
}

/// Why a handler refuses a WebSocket handshake: the HTTP status and a
/// short reason, sent as the body before the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// A 4xx or 5xx status.
    pub status: u16,
    /// What is wrong, for the client to read.
    pub why: &'static str,
}

/// The application side of a WebSocket server (Tornado's `WebSocketHandler`
/// methods, for every connection at once).
pub trait WebSocketHandler {
    /// A valid WebSocket handshake arrived: accept it (the default), or
    /// refuse it with an HTTP status before the upgrade (Tornado's
    /// `prepare`), e.g. for a query the handler cannot make sense of. A
    /// browser never sees the status of a refused handshake, so refuse only
    /// what no page of ours would send.
    /// `groups`: who is where now (a handler may refuse a connection that
    /// would open one group too many).
    fn admit(&self, _request: &Request<'_>, _groups: &Groups) -> Result<(), Refusal> {
        Ok(())
    }

    /// A WebSocket handshake completed. Runs exactly once per connection,
    /// before any `on_message` for it. The connection is in no group yet:
    /// [`Outbox::join`] puts it in one.
    fn open(&mut self, _id: ConnId, _request: &Request<'_>, _out: &mut Outbox) {}

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

    /// The connection is closing: closed by the client, cut off, failed or
    /// shut down. Runs exactly once, and only for connections that were
    /// opened. It receives nothing more, but is still in its group while
    /// this runs (so the handler can see where it was); the server takes it
    /// out right after.
    fn on_close(&mut self, _id: ConnId, _out: &mut Outbox) {}

    /// The loop's turn is ending, before anything is flushed to a socket:
    /// the moment to deliver lines a history confirmed since (a history
    /// that is asynchronous confirms later than `on_message`).
    fn on_turn_end(&mut self, _out: &mut Outbox) {}

    /// Registers the handler's own sockets, if it has any (a chat whose
    /// history is in Redis: its connections to it), with the loop under
    /// `tokens`, which the server keeps for it. Called once, before the
    /// loop starts.
    fn attach(&mut self, _registry: &Registry, _tokens: &[Token]) -> io::Result<()> {
        Ok(())
    }

    /// One of the handler's own sockets is ready. Anything it has for the
    /// connections goes out at [`on_turn_end`](Self::on_turn_end).
    fn source_ready(&mut self, _token: Token) {}

    /// Time passes for the handler's own sockets (deadlines, reconnects);
    /// called at [`next_tick`](Self::next_tick) or later.
    fn tick(&mut self, _now: Instant) {}

    /// When the handler next needs [`tick`](Self::tick), if ever. Asked at
    /// the end of every turn.
    fn next_tick(&self) -> Option<Instant> {
        None
    }

    /// Writes the handler's own figures for `/metrics` (lines, its store).
    /// The server's and the loop's are written by them.
    fn write_metrics(&self, _out: &mut Exposition) {}

    /// Whether the handler can serve clients now, for `/readyz`: `Err`
    /// with a one-line reason (its store unreachable or failing).
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// The history of the group `group`, if the handler keeps one. The
    /// server reads it to feed a member that is catching up.
    fn room_history<'a>(&'a self, _group: &'a str) -> Option<RoomHistory<'a>> {
        None
    }

    /// The frame that tells the member `id` catching up of `notice` (a gap,
    /// or that it caught up), in the handler's protocol; `None`: say
    /// nothing. `groups`: who is where now.
    fn feed_notice(&self, _id: ConnId, _notice: FeedNotice, _groups: &Groups) -> Option<Bytes> {
        None
    }
}

/// Who receives a message, among the connections open (`open` called,
/// `on_close` not) when the outbox is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// One connection.
    One(ConnId),
    /// Every open connection, on every route.
    All,
    /// Every open connection but one.
    AllExcept(ConnId),
    /// Every member of a group.
    Group(GroupId),
    /// Every member of a group but one (the seed's "has joined" goes to
    /// the others).
    GroupExcept(GroupId, ConnId),
}

impl Recipients {
    /// Whether the connection `id`, a member of `group` (if any), is among
    /// these recipients.
    pub fn includes(self, id: ConnId, group: Option<GroupId>) -> bool {
        match self {
            Recipients::One(one) => one == id,
            Recipients::All => true,
            Recipients::AllExcept(other) => other != id,
            Recipients::Group(to) => group == Some(to),
            Recipients::GroupExcept(to, other) => group == Some(to) && other != id,
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
    /// Give the connection its room's lines from `from` on: from history,
    /// at its socket's pace, then live. `announce`: tell it when it has
    /// caught up.
    Follow {
        /// The first line it is to get.
        from: Seq,
        /// Whether it is told when it reaches the head.
        announce: bool,
    },
}

/// One message on its way, and its addressees.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Who gets it.
    pub to: Recipients,
    /// What they get.
    pub payload: Payload,
    /// The line's seq in its room's history, for a line; `None` for
    /// anything else (notices are not history).
    pub seq: Option<Seq>,
}

impl Delivery {
    /// The payload of a text frame, the text the recipients will read
    /// (`None` for a close).
    pub fn text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Frame(frame) => Some(ws::text_frame_payload(frame)),
            Payload::Close(..) | Payload::Follow { .. } => None,
        }
    }
}

/// A handler's window on the server: the messages it produced during one
/// call, in order (the server delivers them after the call returns), and
/// the groups, which it reads and joins connections to.
#[derive(Debug, Default)]
pub struct Outbox {
    deliveries: Vec<Delivery>,
    /// Who is open and who is in which group: owned by the server, lent
    /// to handlers here.
    groups: Groups,
}

impl Outbox {
    /// An empty outbox, with no connection open.
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Who is open and who is in which group.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The groups, for the server (which opens and closes connections in
    /// them) and for tests of handlers without a server.
    pub fn groups_mut(&mut self) -> &mut Groups {
        &mut self.groups
    }

    /// Puts the open connection `id` in the group `name` (leaving the one
    /// it was in); from now on it gets the group's messages. `None` if `id`
    /// is not open.
    pub fn join(&mut self, id: ConnId, name: &str) -> Option<GroupId> {
        self.groups.join(id, name)
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

    /// Sends `text` to every member of `group`.
    pub fn send_to_group(&mut self, group: GroupId, text: &str) {
        self.push(Recipients::Group(group), ws::encode_text_frame(text));
    }

    /// Sends `text` to every member of `group` except `except`.
    pub fn send_to_group_except(&mut self, group: GroupId, except: ConnId, text: &str) {
        self.push(
            Recipients::GroupExcept(group, except),
            ws::encode_text_frame(text),
        );
    }

    /// Sends a line of history, already framed (by the history, once), to
    /// every member of `group`. Members keep their place by its `seq`.
    pub fn send_line_to_group(&mut self, group: GroupId, seq: Seq, frame: Bytes) {
        self.deliveries.push(Delivery {
            to: Recipients::Group(group),
            payload: Payload::Frame(frame),
            seq: Some(seq),
        });
    }

    /// Sends one connection its room's lines from `from` on, from history
    /// and then live (see [`Payload::Follow`]). Until it has caught up, it
    /// gets no broadcast but the lines, in order.
    pub fn follow(&mut self, id: ConnId, from: Seq, announce: bool) {
        self.deliveries.push(Delivery {
            to: Recipients::One(id),
            payload: Payload::Follow { from, announce },
            seq: None,
        });
    }

    /// Closes one connection with `code` (after what was queued for it
    /// before). Its `on_close` follows.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &'static str) {
        self.deliveries.push(Delivery {
            to: Recipients::One(id),
            payload: Payload::Close(code, reason),
            seq: None,
        });
    }

    fn push(&mut self, to: Recipients, frame: Bytes) {
        self.deliveries.push(Delivery {
            to,
            payload: Payload::Frame(frame),
            seq: None,
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

/// A WebSocket endpoint: a path and the handler of every connection opened
/// on it.
struct Route {
    path: Box<str>,
    handler: Box<dyn WebSocketHandler + Send>,
}

/// Which handler serves which WebSocket path: the application's side of
/// the server, handed to [`crate::Server::bind`].
///
/// ```
/// use eddy::{ChatRoom, Config, EchoHandler, Routes};
/// let config = Config::default();
/// let routes = Routes::new()
///     .route("/soc", ChatRoom::from_config(&config))
///     .route("/echo", EchoHandler);
/// assert_eq!(routes.find("/echo"), Some(1));
/// ```
#[derive(Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| &r.path))
            .finish()
    }
}

impl Routes {
    /// The most routes a server takes.
    pub const MAX: usize = u16::MAX as usize;

    /// No endpoint yet.
    pub fn new() -> Self {
        Routes::default()
    }

    /// Serves WebSockets opened on `path` (exactly; the query is the
    /// handler's) with `handler`. A path routed twice keeps its first
    /// handler.
    ///
    /// # Panics
    ///
    /// Past [`Routes::MAX`] routes: a connection keeps its route's index in
    /// two bytes.
    pub fn route(mut self, path: &str, handler: impl WebSocketHandler + Send + 'static) -> Self {
        if self.find(path).is_none() {
            assert!(
                self.routes.len() < Self::MAX,
                "more than {} routes",
                Self::MAX
            );
            self.routes.push(Route {
                path: path.into(),
                handler: Box::new(handler),
            });
        }
        self
    }

    /// The index of the route for `path`.
    pub fn find(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| *r.path == *path)
    }

    /// Every routed path, in the order routed.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| &*r.path)
    }

    /// The handler of route `index`.
    pub fn handler(&self, index: usize) -> Option<&(dyn WebSocketHandler + Send)> {
        self.routes.get(index).map(|r| &*r.handler)
    }

    /// The handler of route `index`, to call.
    pub fn handler_mut(&mut self, index: usize) -> Option<&mut (dyn WebSocketHandler + Send)> {
        match self.routes.get_mut(index) {
            Some(route) => Some(&mut *route.handler),
            None => None,
        }
    }

    /// Every handler, in the order routed.
    pub fn handlers(&self) -> impl Iterator<Item = &(dyn WebSocketHandler + Send)> {
        self.routes.iter().map(|r| &*r.handler as _)
    }

    /// Every handler, in the order routed (for the end of a turn).
    pub fn handlers_mut(&mut self) -> impl Iterator<Item = &mut (dyn WebSocketHandler + Send)> {
        self.routes.iter_mut().map(|r| &mut *r.handler as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection keeps its route's index in two bytes: one route more
    /// than that is refused loudly, not wrapped onto another route.
    #[test]
    #[should_panic(expected = "more than 65535 routes")]
    fn routes_past_the_most_are_refused() {
        let mut routes = Routes::new();
        for n in 0..Routes::MAX {
            // Pushed directly: `route` checks each path against all before.
            routes.routes.push(Route {
                path: n.to_string().into(),
                handler: Box::new(crate::echo::EchoHandler),
            });
        }
        let _ = routes.route("/one-more", crate::echo::EchoHandler);
    }

    #[test]
    fn recipients_include_the_right_connections() {
        let (a, b) = (ConnId(1), ConnId(2));
        let mut groups = Groups::new();
        groups.open(a, 0);
        groups.open(b, 1);
        let g = groups.join(a, "g");
        assert!(Recipients::All.includes(a, g));
        assert!(Recipients::One(a).includes(a, g));
        assert!(!Recipients::One(a).includes(b, None));
        assert!(!Recipients::AllExcept(a).includes(a, g));
        assert!(Recipients::AllExcept(a).includes(b, None));
        let g = g.unwrap();
        assert!(Recipients::Group(g).includes(a, Some(g)));
        assert!(!Recipients::Group(g).includes(b, None));
        assert!(!Recipients::GroupExcept(g, a).includes(a, Some(g)));
    }

    #[test]
    fn a_request_target_splits_into_path_and_query() {
        assert_eq!(
            Request::from_target("/soc?since=4&epoch=x"),
            Request {
                path: "/soc",
                query: "since=4&epoch=x"
            }
        );
        assert_eq!(Request::from_target("/soc").query, "");
        assert_eq!(Request::from_target("/soc?").query, "");
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
