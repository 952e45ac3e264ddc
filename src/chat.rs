//! [`ChatRoom`]: the tutorial's chat protocol, and nothing else.
//!
//! The room knows connections only by [`ConnId`] and speaks only through an
//! [`Outbox`]: no sockets, no frames, no loop. Each event is serialized to
//! JSON once, here, and framed once by the outbox, however many clients
//! receive it.
//!
//! The wire format is the seed's, object for object, so the tutorial's own
//! page still works: `{"type":"sys","message":"Welcome to WebSocket","id":<id>}`
//! to a newcomer (the `id` key is Eddy's addition, so a page can tell its own
//! lines; the tutorial's page ignores keys it does not use), `{"type":"sys","message":"<id> has joined"}` to the others,
//! `{"type":"user","id":<id>,"message":"<text>"}` to everyone for each line,
//! and `{"type":"sys","message":"<id> has left"}` to those who remain.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::handler::{CloseCode, ConnId, Outbox, WebSocketHandler};
use crate::rate::{Bucket, RateLimit, Verdict};

/// The newcomer's greeting, as in the tutorial.
pub const WELCOME: &str = "Welcome to WebSocket";

/// What a client hears when a line of its was over the rate limit.
pub const TOO_FAST: &str = "You are sending too fast: that line was not delivered.";

/// The close reason for a client that kept flooding.
pub const FLOODING_REASON: &str = "flooding: far over the rate limit";

/// One message of the chat protocol. The enum is internally tagged, so
/// serde writes `"type"` first and then the fields in declaration order: the
/// seed's key order. (`serde_json::json!` would sort the keys instead.)
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChatEvent<'a> {
    /// A notice from the server.
    Sys {
        /// What happened.
        message: &'a str,
    },
    /// The newcomer's greeting: a `sys` notice that also tells the client
    /// its own id.
    #[serde(rename = "sys")]
    Welcome {
        /// [`WELCOME`].
        message: &'a str,
        /// The newcomer's id, as it will appear in its `user` lines.
        id: u64,
    },
    /// A line someone typed.
    User {
        /// Who typed it: the connection's id, a JSON number.
        id: u64,
        /// The line, as received.
        message: &'a str,
    },
}

impl ChatEvent<'_> {
    /// Compact JSON for this event.
    pub fn to_json(&self) -> String {
        // Serializing these borrowed strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The one room of the tutorial: everyone hears everyone.
#[derive(Debug, Default)]
pub struct ChatRoom {
    /// How many clients are in the room (the tutorial's `clients` set; the
    /// server knows who they are, the room only needs how many).
    members: usize,
    /// The flood limit, if any (`--rate-limit`).
    limit: Option<RateLimit>,
    /// Each member's token bucket, while there is a limit.
    buckets: HashMap<ConnId, Bucket>,
    /// Joins and leaves are announced while the room has at most this many
    /// members (`--announce-joins-up-to`); `None`: always, as the seed does.
    announce_up_to: Option<usize>,
}

impl ChatRoom {
    /// An empty room without a rate limit.
    pub fn new() -> Self {
        ChatRoom::default()
    }

    /// An empty room whose members may each send at most `limit` lines.
    pub fn with_rate_limit(limit: Option<RateLimit>) -> Self {
        ChatRoom {
            limit,
            ..ChatRoom::default()
        }
    }

    /// Announces joins and leaves only while the room has at most `up_to`
    /// members, the newcomer or the leaver included (`None`: always).
    ///
    /// The seed tells everyone of every join: N joins cost N²/2 frames, and
    /// a client reconnecting in a loop costs one frame per member each time.
    pub fn announcing_joins_up_to(self, up_to: Option<usize>) -> Self {
        ChatRoom {
            announce_up_to: up_to,
            ..self
        }
    }

    /// Whether a join or leave in a room of `members` is announced.
    fn announces(&self, members: usize) -> bool {
        self.announce_up_to.is_none_or(|up_to| members <= up_to)
    }

    /// A line from `id` at `now`: broadcast, refused, or the end of a flooder.
    fn line(&mut self, id: ConnId, text: &str, now: Instant, out: &mut Outbox) {
        let verdict = match (self.limit, self.buckets.get_mut(&id)) {
            (Some(_), Some(bucket)) => bucket.take(now),
            _ => Verdict::Allowed,
        };
        match verdict {
            Verdict::Allowed => out.send_to_all(
                &ChatEvent::User {
                    id: id.0,
                    message: text,
                }
                .to_json(),
            ),
            Verdict::Refused => {
                out.write_message(id, &ChatEvent::Sys { message: TOO_FAST }.to_json())
            }
            Verdict::Flooding => out.close(id, CloseCode::Policy, FLOODING_REASON),
        }
    }

    /// How many clients are in the room.
    pub fn members(&self) -> usize {
        self.members
    }
}

impl WebSocketHandler for ChatRoom {
    fn open(&mut self, id: ConnId, out: &mut Outbox) {
        self.members += 1;
        if let Some(limit) = self.limit {
            self.buckets.insert(id, Bucket::new(limit, Instant::now()));
        }
        let welcome = ChatEvent::Welcome {
            message: WELCOME,
            id: id.0,
        };
        out.write_message(id, &welcome.to_json());
        if self.announces(self.members) {
            let joined = format!("{id} has joined");
            out.send_to_all_except(id, &ChatEvent::Sys { message: &joined }.to_json());
        }
    }

    fn on_message(&mut self, id: ConnId, text: &str, out: &mut Outbox) {
        self.line(id, text, Instant::now(), out);
    }

    fn on_close(&mut self, id: ConnId, out: &mut Outbox) {
        let announced = self.announces(self.members);
        self.members = self.members.saturating_sub(1);
        self.buckets.remove(&id);
        if announced {
            let left = format!("{id} has left");
            out.send_to_all(&ChatEvent::Sys { message: &left }.to_json());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::Recipients;

    fn sent(out: &mut Outbox) -> Vec<(Recipients, String)> {
        out.drain()
            .map(|d| (d.to, d.text().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn open_greets_the_newcomer_then_tells_the_others() {
        let mut room = ChatRoom::new();
        let mut out = Outbox::new();
        room.open(ConnId(7), &mut out);
        assert_eq!(
            sent(&mut out),
            [
                (
                    Recipients::One(ConnId(7)),
                    r#"{"type":"sys","message":"Welcome to WebSocket","id":7}"#.into()
                ),
                (
                    Recipients::AllExcept(ConnId(7)),
                    r#"{"type":"sys","message":"7 has joined"}"#.into()
                ),
            ]
        );
        assert_eq!(room.members(), 1);
    }

    #[test]
    fn a_line_goes_to_everyone_with_a_numeric_id() {
        let mut room = ChatRoom::new();
        let mut out = Outbox::new();
        room.on_message(ConnId(42), "hi \"there\" <b>", &mut out);
        assert_eq!(
            sent(&mut out),
            [(
                Recipients::All,
                r#"{"type":"user","id":42,"message":"hi \"there\" <b>"}"#.into()
            )]
        );
    }

    #[test]
    fn control_characters_are_escaped_and_grow_at_most_sixfold() {
        let mut out = Outbox::new();
        let line: String = "\u{1}".repeat(100);
        ChatRoom::new().on_message(ConnId(1), &line, &mut out);
        let json = sent(&mut out).remove(0).1;
        assert!(json.contains(r"\u0001\u0001"));
        assert!(json.len() <= 6 * line.len() + 64, "{}", json.len());
    }

    #[test]
    fn lines_over_the_limit_are_refused_and_a_flood_is_closed_with_1008() {
        let limit = RateLimit {
            burst: 2,
            per_second: 1.0,
        };
        let mut room = ChatRoom::with_rate_limit(Some(limit));
        let mut out = Outbox::new();
        room.open(ConnId(5), &mut out);
        out.drain();
        let now = Instant::now();
        for text in ["one", "two", "three"] {
            room.line(ConnId(5), text, now, &mut out);
        }
        let too_fast = format!(r#"{{"type":"sys","message":"{TOO_FAST}"}}"#);
        assert_eq!(
            sent(&mut out),
            [
                (
                    Recipients::All,
                    r#"{"type":"user","id":5,"message":"one"}"#.into()
                ),
                (
                    Recipients::All,
                    r#"{"type":"user","id":5,"message":"two"}"#.into()
                ),
                (Recipients::One(ConnId(5)), too_fast),
            ]
        );
        // Going on at once: refused until the debt is over ten bursts.
        let mut lines = 0;
        while !out.deliveries().iter().any(|d| d.text().is_none()) {
            room.line(ConnId(5), "more", now, &mut out);
            lines += 1;
            assert!(lines <= 100, "never judged flooding");
        }
        let close = out.drain().last().unwrap();
        assert!(matches!(
            close.payload,
            crate::handler::Payload::Close(CloseCode::Policy, _)
        ));
        assert_eq!(lines, 20, "debt over 10 x burst (2) = 20 refused lines");
    }

    #[test]
    fn joins_and_leaves_are_announced_only_up_to_the_set_room_size() {
        let mut room = ChatRoom::new().announcing_joins_up_to(Some(2));
        let mut out = Outbox::new();
        let notices = |out: &mut Outbox| {
            out.drain()
                .filter(|d| !matches!(d.to, Recipients::One(_)))
                .count()
        };
        room.open(ConnId(1), &mut out);
        room.open(ConnId(2), &mut out);
        assert_eq!(notices(&mut out), 2, "rooms of 1 and 2: announced");
        room.open(ConnId(3), &mut out);
        assert_eq!(notices(&mut out), 0, "a room of 3: not announced");
        room.on_close(ConnId(3), &mut out);
        assert_eq!(notices(&mut out), 0, "leaving a room of 3: not announced");
        room.on_close(ConnId(2), &mut out);
        assert_eq!(notices(&mut out), 1, "leaving a room of 2: announced");

        let mut silent = ChatRoom::new().announcing_joins_up_to(Some(0));
        silent.open(ConnId(1), &mut out);
        silent.on_close(ConnId(1), &mut out);
        assert_eq!(notices(&mut out), 0, "0: never");
    }

    #[test]
    fn leaving_is_announced_to_those_who_remain() {
        let mut room = ChatRoom::new();
        let mut out = Outbox::new();
        room.open(ConnId(3), &mut out);
        out.drain();
        room.on_close(ConnId(3), &mut out);
        assert_eq!(
            sent(&mut out),
            [(
                Recipients::All,
                r#"{"type":"sys","message":"3 has left"}"#.into()
            )]
        );
        assert_eq!(room.members(), 0);
    }
}
