//! [`ChatRoom`]: the chat protocol and the room's memory; no sockets.
//!
//! The room knows connections only by [`ConnId`] and speaks only through an
//! [`Outbox`]: no sockets, no frames, no loop. Each event is serialized to
//! JSON once, here, and framed once, however many clients receive it.
//!
//! The wire format is the seed's, object for object, so the tutorial's own
//! page still works: `{"type":"sys","message":"Welcome to WebSocket"}` to a
//! newcomer, `{"type":"sys","message":"<id> has joined"}` to the others,
//! `{"type":"user","id":<id>,"message":"<text>"}` to everyone for each line,
//! and `{"type":"sys","message":"<id> has left"}` to those who remain. Eddy
//! only appends keys, after the seed's (the page ignores keys it does not
//! use, and every notice is `"type":"sys"`, the one kind of notice it knows):
//!
//! * each line gets the room's next `seq` and the time it was accepted,
//!   `ts`; the line goes into the room's [`History`] and is broadcast when
//!   the history confirms it;
//! * the welcome tells the newcomer its `id`, the history's `epoch` and its
//!   `head` (the last seq);
//! * a newcomer then gets the last `--replay` lines, a client that resumes
//!   (`?since=S&epoch=E`) every line after `S`: from history, at its
//!   socket's pace, through the server's feed ([`crate::feed`]), then a
//!   `caught_up` notice, then live lines. A stretch the history no longer
//!   holds is named in a `gap` notice; a position from another epoch gets a
//!   `reset` notice, and the client is then treated as a newcomer.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tungstenite::Bytes;

use crate::config::Config;
use crate::feed::FeedNotice;
use crate::handler::{CloseCode, ConnId, Outbox, Refusal, Request, WebSocketHandler};
use crate::history::{
    Confirmed, Draft, History, Limits, MemoryHistory, Position, RoomHistory, Seq,
};
use crate::rate::{Bucket, RateLimit, Verdict};
use crate::ws;

/// The newcomer's greeting, as in the tutorial.
pub const WELCOME: &str = "Welcome to WebSocket";

/// What a client hears when a line of its was over the rate limit.
pub const TOO_FAST: &str = "You are sending too fast: that line was not delivered.";

/// The close reason for a client that kept flooding.
pub const FLOODING_REASON: &str = "flooding: far over the rate limit";

/// What a client hears when it has every line up to the head.
pub const CAUGHT_UP: &str = "You are up to date.";

/// What a client hears when the position it resumed from belongs to
/// another run of the room's history (or lies beyond it).
pub const RESET: &str = "The room's history began again: earlier lines are gone.";

/// The room everyone is in (the next step gives rooms names).
pub const LOBBY: &str = "lobby";

/// The longest epoch a client may send back: ours have
/// [`crate::history::EPOCH_CHARS`] characters; other servers' (after a
/// change of version, say) may differ, and get a reset, not a 400.
pub const MAX_EPOCH_CHARS: usize = 64;

/// One message of the chat protocol. The enum is internally tagged, so
/// serde writes `"type"` first and then the fields in declaration order: the
/// seed's key order, then Eddy's. (`serde_json::json!` would sort the keys.)
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChatEvent<'a> {
    /// A notice from the server.
    Sys {
        /// What happened.
        message: &'a str,
    },
    /// The newcomer's greeting: a `sys` notice that also tells the client
    /// its own id and where the room's history stands.
    #[serde(rename = "sys")]
    Welcome {
        /// [`WELCOME`].
        message: &'a str,
        /// The newcomer's id, as it will appear in its `user` lines.
        id: u64,
        /// The history's epoch: a position means something only with it.
        epoch: &'a str,
        /// The last seq the room has assigned (0: none yet).
        head: Seq,
    },
    /// A line someone typed.
    User {
        /// Who typed it: the connection's id, a JSON number.
        id: u64,
        /// The line, as received.
        message: &'a str,
        /// Its place in the room's history.
        seq: Seq,
        /// When the server accepted it, in ms since the Unix epoch.
        ts: u64,
    },
    /// A notice that marks a point in the client's stream of lines.
    #[serde(rename = "sys")]
    Event {
        /// What happened, for people.
        message: &'a str,
        /// What happened, for programs: `caught_up`, `gap` or `reset`.
        event: &'a str,
        /// The event's numbers, after it.
        #[serde(flatten)]
        detail: EventDetail,
    },
}

/// The numbers of a [`ChatEvent::Event`], in the order they are written.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventDetail {
    /// `caught_up`: the last seq the client now has.
    Head {
        /// The room's head.
        head: Seq,
    },
    /// `gap`: the lines it will never get, first and last.
    Range {
        /// The first line missing.
        from: Seq,
        /// The last line missing.
        to: Seq,
    },
    /// `reset`: nothing more to say.
    None {},
}

impl ChatEvent<'_> {
    /// Compact JSON for this event.
    pub fn to_json(&self) -> String {
        // Serializing these borrowed strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The frame of a line: how the history seals a draft once it has a seq.
pub fn seal(seq: Seq, draft: &Draft<'_>) -> Bytes {
    let line = ChatEvent::User {
        id: draft.id,
        message: draft.text,
        seq,
        ts: draft.ts,
    };
    ws::encode_text_frame(&line.to_json())
}

/// The JSON of a feed notice.
fn notice_json(notice: FeedNotice) -> String {
    match notice {
        FeedNotice::Gap { from, to } => {
            let count = to - from + 1;
            let message = if count == 1 {
                "1 earlier line is no longer available".to_owned()
            } else {
                format!("{count} earlier lines are no longer available")
            };
            ChatEvent::Event {
                message: &message,
                event: "gap",
                detail: EventDetail::Range { from, to },
            }
            .to_json()
        }
        FeedNotice::CaughtUp { head } => ChatEvent::Event {
            message: CAUGHT_UP,
            event: "caught_up",
            detail: EventDetail::Head { head },
        }
        .to_json(),
    }
}

/// What a client asked for with `?since=S&epoch=E`: it has every line up
/// to `since` of the history named `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last seq the client has. A number too large for 64 bits is
    /// still a number: it lies beyond any head, and gets a reset.
    pub since: Seq,
    /// The epoch the client's seqs belong to.
    pub epoch: String,
}

/// Reads `since` and `epoch` from a query string (other keys are for
/// others). `Ok(None)`: neither is there. A malformed pair is an `Err` with
/// the reason, answered with 400 before the upgrade: a page of ours never
/// sends one, so whoever did can read the status.
pub fn parse_resume(query: &str) -> Result<Option<Resume>, &'static str> {
    let (mut since, mut epoch) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*key {
            "since" => &mut since,
            "epoch" => &mut epoch,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err("since and epoch may each be given once");
        }
    }
    let (since, epoch) = match (since, epoch) {
        (None, None) => return Ok(None),
        (Some(since), Some(epoch)) => (since, epoch),
        _ => return Err("since and epoch go together: give both or neither"),
    };
    if since.is_empty() || !since.bytes().all(|b| b.is_ascii_digit()) {
        return Err("since must be a whole number: the seq of the last line seen");
    }
    let valid_epoch_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if epoch.is_empty() || epoch.len() > MAX_EPOCH_CHARS || !epoch.bytes().all(valid_epoch_char) {
        return Err("epoch must be the epoch of a welcome: 1-64 letters, digits, - or _");
    }
    Ok(Some(Resume {
        since: since.parse().unwrap_or(Seq::MAX),
        epoch: epoch.into_owned(),
    }))
}

/// Now, in milliseconds since the Unix epoch: a line's `ts`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The tutorial's one room, with a memory: everyone hears everyone, and a
/// newcomer or a returning client hears what it missed.
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
    /// Where the room's lines are kept.
    history: Box<dyn History + Send>,
    /// The room's name in the history.
    room: Arc<str>,
    /// How many of the newest lines a newcomer gets (`--replay`).
    replay: usize,
    /// Lines confirmed by the history and not yet broadcast (kept for its
    /// allocation).
    confirmed: Vec<Confirmed>,
}

impl fmt::Debug for ChatRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatRoom")
            .field("members", &self.members)
            .field("room", &self.room)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl Default for ChatRoom {
    fn default() -> Self {
        ChatRoom::from_config(&Config {
            rate_limit: None,
            ..Config::default()
        })
    }
}

impl ChatRoom {
    /// An empty room without a rate limit, with the default history.
    pub fn new() -> Self {
        ChatRoom::default()
    }

    /// The room `config` describes: its rate limit, announcements, replay
    /// and history in memory.
    pub fn from_config(config: &Config) -> Self {
        let limits = Limits {
            lines: config.history_lines,
            bytes: config.history_bytes,
            memory: config.history_memory,
        };
        ChatRoom {
            members: 0,
            limit: config.rate_limit,
            buckets: HashMap::new(),
            announce_up_to: config.announce_joins_up_to,
            history: Box::new(MemoryHistory::new(limits, seal)),
            room: LOBBY.into(),
            replay: config.replay,
            confirmed: Vec::new(),
        }
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

    /// Keeps the room's lines in `history` instead.
    pub fn with_history(self, history: Box<dyn History + Send>) -> Self {
        ChatRoom { history, ..self }
    }

    /// Replays the newest `lines` to each newcomer (0: none, as the seed).
    pub fn replaying(self, lines: usize) -> Self {
        ChatRoom {
            replay: lines,
            ..self
        }
    }

    /// Whether a join or leave in a room of `members` is announced.
    fn announces(&self, members: usize) -> bool {
        self.announce_up_to.is_none_or(|up_to| members <= up_to)
    }

    /// A line from `id` at `now` (`ts`: the same, in ms since the Unix
    /// epoch): into history and out to everyone, refused, or the end of a
    /// flooder.
    fn line(&mut self, id: ConnId, text: &str, now: Instant, ts: u64, out: &mut Outbox) {
        let verdict = match (self.limit, self.buckets.get_mut(&id)) {
            (Some(_), Some(bucket)) => bucket.take(now),
            _ => Verdict::Allowed,
        };
        match verdict {
            Verdict::Allowed => {
                let draft = Draft { id: id.0, text, ts };
                self.history.append(&self.room, draft);
                self.deliver_confirmed(out);
            }
            Verdict::Refused => {
                out.write_message(id, &ChatEvent::Sys { message: TOO_FAST }.to_json())
            }
            Verdict::Flooding => out.close(id, CloseCode::Policy, FLOODING_REASON),
        }
    }

    /// Broadcasts the lines the history has confirmed, in order.
    fn deliver_confirmed(&mut self, out: &mut Outbox) {
        self.history.take_confirmed(&mut self.confirmed);
        for Confirmed { line, .. } in self.confirmed.drain(..) {
            out.send_line_to_all(line.seq, line.frame);
        }
    }

    /// The first line a newcomer gets: the newest `--replay` lines, as far
    /// as the history still holds them.
    fn replay_from(&self, position: &Position) -> Seq {
        let replay = Seq::try_from(self.replay).unwrap_or(Seq::MAX);
        (position.head + 1)
            .saturating_sub(replay)
            .max(position.first)
    }

    /// How many clients are in the room.
    pub fn members(&self) -> usize {
        self.members
    }
}

impl WebSocketHandler for ChatRoom {
    fn admit(&self, request: &Request<'_>) -> Result<(), Refusal> {
        parse_resume(request.query)
            .map(|_| ())
            .map_err(|why| Refusal { status: 400, why })
    }

    fn open(&mut self, id: ConnId, request: &Request<'_>, out: &mut Outbox) {
        self.members += 1;
        if let Some(limit) = self.limit {
            self.buckets.insert(id, Bucket::new(limit, Instant::now()));
        }
        let position = self.history.position(&self.room);
        let welcome = ChatEvent::Welcome {
            message: WELCOME,
            id: id.0,
            epoch: position.epoch.as_str(),
            head: position.head,
        };
        out.write_message(id, &welcome.to_json());
        let newcomer_from = self.replay_from(&position);
        // `admit` refused a malformed query; what is left is a resume or not.
        match parse_resume(request.query).ok().flatten() {
            Some(resume)
                if resume.epoch == position.epoch.as_str() && resume.since <= position.head =>
            {
                out.follow(id, resume.since + 1, true);
            }
            Some(_) => {
                let reset = ChatEvent::Event {
                    message: RESET,
                    event: "reset",
                    detail: EventDetail::None {},
                };
                out.write_message(id, &reset.to_json());
                out.follow(id, newcomer_from, true);
            }
            // With nothing to replay, nothing to announce: the seed's protocol.
            None => out.follow(id, newcomer_from, newcomer_from <= position.head),
        }
        if self.announces(self.members) {
            let joined = format!("{id} has joined");
            out.send_to_all_except(id, &ChatEvent::Sys { message: &joined }.to_json());
        }
    }

    fn on_message(&mut self, id: ConnId, text: &str, out: &mut Outbox) {
        self.line(id, text, Instant::now(), now_ms(), out);
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

    fn on_turn_end(&mut self, out: &mut Outbox) {
        self.deliver_confirmed(out);
    }

    fn room_history(&self, _id: ConnId) -> Option<RoomHistory<'_>> {
        Some(RoomHistory {
            history: &*self.history,
            room: &self.room,
        })
    }

    fn feed_notice(&self, notice: FeedNotice) -> Option<Bytes> {
        Some(ws::encode_text_frame(&notice_json(notice)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{Payload, Recipients};

    const PLAIN: Request<'static> = Request {
        path: "/soc",
        query: "",
    };

    /// What the outbox holds, as (recipients, text); a follow instruction
    /// as `follow FROM announce?`, a close as `close`.
    fn sent(out: &mut Outbox) -> Vec<(Recipients, String)> {
        out.drain()
            .map(|d| {
                let what = match &d.payload {
                    Payload::Frame(_) => d.text().unwrap_or_default().to_owned(),
                    Payload::Follow { from, announce } => format!("follow {from} {announce}"),
                    Payload::Close(..) => "close".to_owned(),
                };
                (d.to, what)
            })
            .collect()
    }

    /// A room with `n` lines said already (by id 1, at ts 0).
    fn room_with_lines(n: usize) -> ChatRoom {
        let mut room = ChatRoom::new();
        let mut out = Outbox::new();
        for i in 0..n {
            room.line(ConnId(1), &i.to_string(), Instant::now(), 0, &mut out);
        }
        room
    }

    fn epoch(room: &mut ChatRoom) -> String {
        room.history.position(LOBBY).epoch.as_str().to_owned()
    }

    #[test]
    fn open_greets_the_newcomer_with_the_history_then_tells_the_others() {
        let mut room = room_with_lines(3);
        let epoch = epoch(&mut room);
        let mut out = Outbox::new();
        room.open(ConnId(7), &PLAIN, &mut out);
        assert_eq!(
            sent(&mut out),
            [
                (
                    Recipients::One(ConnId(7)),
                    format!(
                        r#"{{"type":"sys","message":"Welcome to WebSocket","id":7,"epoch":"{epoch}","head":3}}"#
                    )
                ),
                (Recipients::One(ConnId(7)), "follow 1 true".into()),
                (
                    Recipients::AllExcept(ConnId(7)),
                    r#"{"type":"sys","message":"7 has joined"}"#.into()
                ),
            ]
        );
        assert_eq!(room.members(), 1);
    }

    #[test]
    fn an_empty_room_replays_nothing_and_announces_nothing() {
        let mut out = Outbox::new();
        ChatRoom::new().open(ConnId(1), &PLAIN, &mut out);
        assert_eq!(sent(&mut out)[1].1, "follow 1 false");
        let mut out = Outbox::new();
        room_with_lines(5)
            .replaying(0)
            .open(ConnId(9), &PLAIN, &mut out);
        assert_eq!(
            sent(&mut out)[1].1,
            "follow 6 false",
            "--replay 0: the seed"
        );
    }

    #[test]
    fn a_newcomer_gets_the_newest_replay_lines_as_far_as_they_are_held() {
        let mut out = Outbox::new();
        room_with_lines(80).open(ConnId(9), &PLAIN, &mut out);
        assert_eq!(sent(&mut out)[1].1, "follow 31 true", "the last 50 of 80");
        let mut room = ChatRoom::from_config(&Config {
            history_lines: 10,
            ..Config::default()
        });
        for i in 0..30 {
            room.line(ConnId(1), &i.to_string(), Instant::now(), 0, &mut out);
        }
        out.drain();
        room.open(ConnId(9), &PLAIN, &mut out);
        assert_eq!(sent(&mut out)[1].1, "follow 21 true", "only 21..=30 held");
    }

    #[test]
    fn a_line_goes_to_everyone_with_its_seq_and_time() {
        let mut room = room_with_lines(41);
        let mut out = Outbox::new();
        room.line(
            ConnId(42),
            "hi \"there\" <b>",
            Instant::now(),
            1_764_470_000_123,
            &mut out,
        );
        let delivery = out.deliveries()[0].clone();
        assert_eq!(delivery.seq, Some(42));
        assert_eq!(
            sent(&mut out),
            [(
                Recipients::All,
                r#"{"type":"user","id":42,"message":"hi \"there\" <b>","seq":42,"ts":1764470000123}"#
                    .into()
            )]
        );
    }

    #[test]
    fn the_broadcast_frame_is_the_one_history_keeps() {
        let mut room = ChatRoom::new();
        let mut out = Outbox::new();
        room.on_message(ConnId(1), "shared", &mut out);
        let Payload::Frame(sent) = &out.deliveries()[0].payload else {
            panic!("not a frame")
        };
        let kept = &room.history.read_from(LOBBY, 1, usize::MAX).lines[0].frame;
        assert_eq!(sent.as_ptr(), kept.as_ptr(), "the same bytes, not a copy");
    }

    #[test]
    fn a_resume_within_the_epoch_follows_from_the_next_line() {
        let mut room = room_with_lines(10);
        let epoch = epoch(&mut room);
        let mut out = Outbox::new();
        for (since, from) in [(4, 5), (10, 11), (0, 1)] {
            let query = format!("epoch={epoch}&since={since}");
            let request = Request {
                path: "/soc",
                query: &query,
            };
            room.open(ConnId(9), &request, &mut out);
            let got = sent(&mut out);
            assert_eq!(got[1].1, format!("follow {from} true"), "{query}");
            assert!(got[2].1.contains("has joined"), "no reset: {got:?}");
        }
    }

    #[test]
    fn another_epoch_or_a_seq_past_the_head_gets_a_reset_then_a_replay() {
        let mut room = room_with_lines(10);
        let epoch = epoch(&mut room);
        let mut out = Outbox::new();
        for query in [
            "since=3&epoch=someotherepoch".to_owned(),
            format!("since=11&epoch={epoch}"),
            format!("since=99999999999999999999999&epoch={epoch}"),
        ] {
            let request = Request {
                path: "/soc",
                query: &query,
            };
            assert_eq!(room.admit(&request), Ok(()), "{query}");
            room.open(ConnId(9), &request, &mut out);
            let got = sent(&mut out);
            assert_eq!(
                got[1].1,
                format!(r#"{{"type":"sys","message":"{RESET}","event":"reset"}}"#),
                "{query}"
            );
            assert_eq!(
                got[2].1, "follow 1 true",
                "a newcomer now, told when caught up"
            );
        }
    }

    #[test]
    fn malformed_resumes_are_refused_with_400_and_a_reason() {
        let room = ChatRoom::new();
        for query in [
            "since=4",
            "epoch=abc",
            "since=&epoch=abc",
            "since=-1&epoch=abc",
            "since=1.5&epoch=abc",
            "since=%201&epoch=abc",
            "since=1&epoch=",
            "since=1&epoch=a%20b",
            "since=1&epoch=abc&since=2",
            &format!("since=1&epoch={}", "a".repeat(65)),
        ] {
            let refusal = room
                .admit(&Request {
                    path: "/soc",
                    query,
                })
                .unwrap_err();
            assert_eq!(refusal.status, 400, "{query}");
            assert!(
                refusal.why.contains("since") || refusal.why.contains("epoch"),
                "{query}: {}",
                refusal.why
            );
        }
        for query in [
            "",
            "room=x",
            "since=%31%32&epoch=Ab-_9",
            "x&since=0&epoch=e",
        ] {
            assert_eq!(
                room.admit(&Request {
                    path: "/soc",
                    query
                }),
                Ok(()),
                "{query}"
            );
        }
        assert_eq!(
            parse_resume("since=%31%32&epoch=Ab-_9"),
            Ok(Some(Resume {
                since: 12,
                epoch: "Ab-_9".into()
            }))
        );
    }

    #[test]
    fn feed_notices_name_their_numbers_after_the_seed_keys() {
        assert_eq!(
            notice_json(FeedNotice::Gap {
                from: 1001,
                to: 1017
            }),
            r#"{"type":"sys","message":"17 earlier lines are no longer available","event":"gap","from":1001,"to":1017}"#
        );
        assert_eq!(
            notice_json(FeedNotice::Gap { from: 5, to: 5 }),
            r#"{"type":"sys","message":"1 earlier line is no longer available","event":"gap","from":5,"to":5}"#
        );
        assert_eq!(
            notice_json(FeedNotice::CaughtUp { head: 9 }),
            format!(r#"{{"type":"sys","message":"{CAUGHT_UP}","event":"caught_up","head":9}}"#)
        );
    }

    /// A history that confirms only when told, as a disk log or Redis will.
    struct Deferred {
        inner: MemoryHistory,
        held: Vec<Confirmed>,
        confirm: Arc<std::sync::atomic::AtomicBool>,
    }

    impl History for Deferred {
        fn position(&mut self, room: &str) -> Position {
            self.inner.position(room)
        }
        fn append(&mut self, room: &str, draft: Draft<'_>) {
            self.inner.append(room, draft);
            self.inner.take_confirmed(&mut self.held);
        }
        fn take_confirmed(&mut self, into: &mut Vec<Confirmed>) {
            if self.confirm.load(std::sync::atomic::Ordering::Relaxed) {
                into.append(&mut self.held);
            }
        }
        fn read_from(&self, room: &str, from: Seq, max_bytes: usize) -> crate::history::Chunk {
            self.inner.read_from(room, from, max_bytes)
        }
    }

    #[test]
    fn a_line_is_broadcast_only_once_the_history_confirms_it() {
        let limits = Limits {
            lines: 10,
            bytes: usize::MAX,
            memory: usize::MAX,
        };
        let confirm = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deferred = Deferred {
            inner: MemoryHistory::new(limits, seal),
            held: Vec::new(),
            confirm: Arc::clone(&confirm),
        };
        let mut room = ChatRoom::new().with_history(Box::new(deferred));
        let mut out = Outbox::new();
        room.on_message(ConnId(3), "one", &mut out);
        room.on_message(ConnId(3), "two", &mut out);
        room.on_turn_end(&mut out);
        assert!(out.is_empty(), "not confirmed, not sent");
        confirm.store(true, std::sync::atomic::Ordering::Relaxed);
        room.on_turn_end(&mut out);
        let got: Vec<_> = out
            .deliveries()
            .iter()
            .map(|d| {
                (
                    d.to,
                    d.seq,
                    d.text().unwrap_or_default().contains("\"one\""),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Recipients::All, Some(1), true),
                (Recipients::All, Some(2), false)
            ]
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
        room.open(ConnId(5), &PLAIN, &mut out);
        out.drain();
        let now = Instant::now();
        for text in ["one", "two", "three"] {
            room.line(ConnId(5), text, now, 7, &mut out);
        }
        let too_fast = format!(r#"{{"type":"sys","message":"{TOO_FAST}"}}"#);
        assert_eq!(
            sent(&mut out),
            [
                (
                    Recipients::All,
                    r#"{"type":"user","id":5,"message":"one","seq":1,"ts":7}"#.into()
                ),
                (
                    Recipients::All,
                    r#"{"type":"user","id":5,"message":"two","seq":2,"ts":7}"#.into()
                ),
                (Recipients::One(ConnId(5)), too_fast),
            ]
        );
        // Going on at once: refused until the debt is over ten bursts.
        let mut lines = 0;
        while !out
            .deliveries()
            .iter()
            .any(|d| matches!(d.payload, Payload::Close(..)))
        {
            room.line(ConnId(5), "more", now, 7, &mut out);
            lines += 1;
            assert!(lines <= 100, "never judged flooding");
        }
        let close = out.drain().last().unwrap();
        assert!(matches!(
            close.payload,
            Payload::Close(CloseCode::Policy, _)
        ));
        assert_eq!(lines, 20, "debt over 10 x burst (2) = 20 refused lines");
        assert_eq!(
            room.history.position(LOBBY).head,
            2,
            "refused lines are not history"
        );
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
        room.open(ConnId(1), &PLAIN, &mut out);
        room.open(ConnId(2), &PLAIN, &mut out);
        assert_eq!(notices(&mut out), 2, "rooms of 1 and 2: announced");
        room.open(ConnId(3), &PLAIN, &mut out);
        assert_eq!(notices(&mut out), 0, "a room of 3: not announced");
        room.on_close(ConnId(3), &mut out);
        assert_eq!(notices(&mut out), 0, "leaving a room of 3: not announced");
        room.on_close(ConnId(2), &mut out);
        assert_eq!(notices(&mut out), 1, "leaving a room of 2: announced");

        let mut silent = ChatRoom::new().announcing_joins_up_to(Some(0));
        silent.open(ConnId(1), &PLAIN, &mut out);
        silent.on_close(ConnId(1), &mut out);
        assert_eq!(notices(&mut out), 0, "0: never");
    }

    #[test]
    fn leaving_is_announced_to_those_who_remain() {
        let mut room = ChatRoom::new();
        let mut out = Outbox::new();
        room.open(ConnId(3), &PLAIN, &mut out);
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
