//! A member's place in its room's history: [`Feed`]. Kafka's consumer
//! model, for a chat.
//!
//! A member that keeps up is **live**: every line is pushed to it as it is
//! broadcast, the same shared frame everyone gets. A member that does not
//! (its unread output would pass `--max-pending-bytes`) is not cut off; it
//! **falls behind**: live lines stop being queued for it, and it remembers
//! only the seq of the next line it needs. Once its queue has drained, the
//! server [`catch_up`]s it: it *pulls* the next lines from the history, in
//! batches, as fast as its socket takes them, and when it reaches the head
//! it is live again, in the same turn, with no line twice and none missing
//! at the seam. A newcomer's replay and a resume after a reconnect take the
//! same path from their first line. Either way, a member holds its
//! position, not a private copy of the lines: memory stays bounded by the
//! history however many members lag, and for however long.
//!
//! The seam is exact because a live member takes a line only if its seq is
//! the one after the last it took ([`Feed::offer`]); anything else sends it
//! to the history for the lines in between. If the history no longer holds
//! them, the member is told which ([`FeedNotice::Gap`]) and goes on from the
//! oldest line held.
//!
//! Notices that are not history (joins, leaves) reach a live member only;
//! one that falls behind misses those said meanwhile: they are about the
//! present, and a member catching up is in the past.
//!
//! This module decides; it does not touch sockets. The server drives it
//! (`ServerState::settle`), through the small [`Member`] trait, so the
//! same code is tested here against a simulated socket.

use tungstenite::Bytes;

use crate::history::{RoomHistory, Seq};

/// The most a catch-up reads from the history at a time, and the
/// low-water mark of the member's queue below which it reads again (both
/// at most an eighth of the cap; see [`Pace::for_cap`]).
///
/// Why 64 KiB: a batch is only references to frames the history holds, so
/// its size costs no copying, but it bounds what a lagging member holds
/// besides its position: at most two batches and one line, however far
/// behind. It is at least what Linux's TCP lets one write call take when a
/// socket signals writable again (a third of a send buffer that autotuning
/// keeps at 16 KiB–4 MiB), so a writable socket is filled in one or a few
/// `send`s. Refilling before the queue is empty (the low-water mark)
/// keeps a batch ready for the next writable event instead of making the
/// socket wait for a read of the history.
pub const CATCH_UP_BATCH: usize = 64 * 1024;

/// The most history one member is fed in one turn before the server turns
/// to others (it goes on next turn): one fast reader catching up from far
/// back must not hold the loop, as with the read budget.
pub const CATCH_UP_BUDGET: usize = 256 * 1024;

/// Where a member is in its room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The connection's handler keeps no history: every broadcast is
    /// queued, and a member over the cap is cut off, as before history.
    Off,
    /// Gets each line as it is broadcast. `last`: the seq of the last line
    /// queued for it (or of the head when it went live).
    Live {
        /// The last seq this member was given.
        last: Seq,
    },
    /// Gets lines from history, at its socket's pace, from `next` on.
    CatchingUp {
        /// The next line it needs.
        next: Seq,
        /// Tell it when it reaches the head ([`FeedNotice::CaughtUp`]): it
        /// asked for history (a replay or a resume). A member that merely
        /// fell behind is not told; it just goes on.
        announce: bool,
    },
}

/// What a member must be told while it catches up, worded by the protocol
/// (the handler's `feed_notice`) and queued at exactly this point of its
/// stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedNotice {
    /// Lines `from..=to` are no longer in history: it will never get them.
    Gap {
        /// The first line missing.
        from: Seq,
        /// The last line missing.
        to: Seq,
    },
    /// It has every line up to `head` and is live again.
    CaughtUp {
        /// The room's head when it caught up.
        head: Seq,
    },
}

impl Feed {
    /// A member that is to get lines from `from` on: from history, then
    /// live. `announce`: tell it when it has caught up.
    pub fn from_seq(from: Seq, announce: bool) -> Feed {
        Feed::CatchingUp {
            next: from.max(1),
            announce,
        }
    }

    /// Where a member starts that is to get lines from `from` on, in a room
    /// whose last line is `head`: live at once if there is nothing to catch
    /// up on (so that a broadcast later in the same turn, another
    /// newcomer's join, reaches it), with the notice to queue if it asked
    /// to be told; else catching up.
    pub fn start(from: Seq, announce: bool, head: Seq) -> (Feed, Option<FeedNotice>) {
        if from > head {
            let told = announce.then_some(FeedNotice::CaughtUp { head });
            (Feed::Live { last: head }, told)
        } else {
            (Feed::from_seq(from, announce), None)
        }
    }

    /// Whether it is waiting to be fed from history.
    pub fn is_catching_up(&self) -> bool {
        matches!(self, Feed::CatchingUp { .. })
    }

    /// A broadcast frame reaches this member: `seq` for a history line,
    /// `None` for a notice. `len` is the frame's size, `pending` what the
    /// member has unsent, `cap` the most it may have. Returns whether to
    /// queue the frame; if not, the member may now be catching up.
    pub fn offer(&mut self, seq: Option<Seq>, len: usize, pending: usize, cap: usize) -> bool {
        let last = match *self {
            Feed::Off => return true,
            Feed::CatchingUp { .. } => return false,
            Feed::Live { last } => last,
        };
        match seq {
            Some(seq) if seq <= last => return false, // it has this one
            Some(seq) if seq > last + 1 => {
                // A line it never got lies between: history has it.
                *self = Feed::from_seq(last + 1, false);
                return false;
            }
            _ => {}
        }
        if pending + len > cap {
            *self = Feed::from_seq(last + 1, false);
            return false;
        }
        if let Some(seq) = seq {
            *self = Feed::Live { last: seq };
        }
        true
    }
}

/// How a member is fed: the low-water mark, the batch and the turn's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Read more from history only while less than this is queued.
    pub low_water: usize,
    /// Read at most this many bytes of frames at a time (but one line at least).
    pub batch: usize,
    /// Stop after this many bytes in one turn.
    pub budget: usize,
}

impl Pace {
    /// The pace for a member whose queue may hold `cap` bytes: batch and
    /// low-water mark [`CATCH_UP_BATCH`], or an eighth of the cap if that is
    /// less, so that a catching-up member stays well under the cap (two
    /// batches, plus one line of at most six eighths of it: see
    /// [`crate::config::PENDING_MESSAGES_MIN`]).
    pub fn for_cap(cap: usize) -> Pace {
        let batch = CATCH_UP_BATCH.min(cap / 8).max(1);
        Pace {
            low_water: batch,
            batch,
            budget: CATCH_UP_BUDGET,
        }
    }
}

/// What catching up needs of a member's connection.
pub trait Member {
    /// Bytes queued and not yet written.
    fn pending(&self) -> usize;
    /// Queues a frame: a line from history, or a notice.
    fn queue(&mut self, frame: Bytes);
    /// Writes what the socket takes now. Returns false if the connection
    /// failed and can take nothing more.
    fn flush(&mut self) -> bool;
}

/// How a round of catching up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not catching up (live, or no history): nothing to do.
    Idle,
    /// It reached the head and is live again.
    CaughtUp,
    /// Its queue is above the low-water mark: it waits for its socket, and a
    /// WRITABLE event brings it back.
    Waiting,
    /// This turn's budget is spent with the socket still taking bytes: go
    /// on next turn (no event will come for a socket that has room).
    OutOfBudget,
    /// Its connection failed.
    Failed,
}

/// Feeds a member that is catching up from `history`, as far as its
/// socket takes, and at most `pace.budget` bytes: reads a batch, queues it,
/// writes it, and again, until the socket would block, the budget is
/// spent, or it reaches the head and goes live. `notice` words what the
/// member must be told (a gap, catching up).
pub fn catch_up(
    feed: &mut Feed,
    history: RoomHistory<'_>,
    member: &mut impl Member,
    notice: &dyn Fn(FeedNotice) -> Option<Bytes>,
    pace: Pace,
) -> Progress {
    let mut spent = 0;
    loop {
        let Feed::CatchingUp { next, announce } = *feed else {
            return Progress::Idle;
        };
        if member.pending() >= pace.low_water {
            return Progress::Waiting;
        }
        if spent >= pace.budget {
            return Progress::OutOfBudget;
        }
        let chunk = history.read_from(next, pace.batch);
        if let Some((from, to)) = chunk.gap
            && let Some(frame) = notice(FeedNotice::Gap { from, to })
        {
            member.queue(frame);
        }
        if chunk.gap.is_none() && chunk.lines.is_empty() && next <= chunk.head {
            // A history that gives nothing short of its head (a bug, or a
            // backend that cannot read just now) must not spin the loop:
            // wait, as for a full socket; the room's next line brings it
            // back. A sound history never gets here.
            return Progress::Waiting;
        }
        let mut next = chunk.gap.map_or(next, |(_, to)| to + 1);
        for line in chunk.lines {
            spent += line.frame.len();
            next = line.seq + 1;
            member.queue(line.frame);
        }
        if next > chunk.head {
            // Caught up: live from here, in this same turn, so the next
            // line broadcast (head + 1) is queued behind these.
            *feed = Feed::Live { last: chunk.head };
            if announce && let Some(frame) = notice(FeedNotice::CaughtUp { head: chunk.head }) {
                member.queue(frame);
            }
            return if member.flush() {
                Progress::CaughtUp
            } else {
                Progress::Failed
            };
        }
        *feed = Feed::CatchingUp { next, announce };
        if !member.flush() {
            return Progress::Failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Draft, History, Limits, MemoryHistory};
    use crate::ws;

    #[test]
    fn a_live_member_takes_the_next_line_only() {
        let mut feed = Feed::Live { last: 4 };
        assert!(feed.offer(Some(5), 10, 0, 100));
        assert_eq!(feed, Feed::Live { last: 5 });
        assert!(!feed.offer(Some(5), 10, 0, 100), "never twice");
        assert!(feed.offer(None, 10, 0, 100), "a notice, under the cap");
        assert!(!feed.offer(Some(7), 10, 0, 100), "6 is missing");
        assert_eq!(feed, Feed::from_seq(6, false));
        assert!(
            !feed.offer(Some(8), 10, 0, 100),
            "catching up: history feeds it"
        );
        assert!(!feed.offer(None, 10, 0, 100), "and notices pass it by");
    }

    #[test]
    fn a_member_with_nothing_to_catch_up_on_starts_live() {
        assert_eq!(Feed::start(6, false, 5), (Feed::Live { last: 5 }, None));
        assert_eq!(
            Feed::start(6, true, 5),
            (
                Feed::Live { last: 5 },
                Some(FeedNotice::CaughtUp { head: 5 })
            )
        );
        assert_eq!(Feed::start(5, true, 5), (Feed::from_seq(5, true), None));
    }

    #[test]
    fn a_member_over_the_cap_falls_behind_instead_of_growing() {
        let mut feed = Feed::Live { last: 9 };
        assert!(feed.offer(Some(10), 50, 50, 100), "exactly at the cap");
        assert!(!feed.offer(Some(11), 1, 100, 100));
        assert_eq!(feed, Feed::from_seq(11, false));
        let mut feed = Feed::Live { last: 9 };
        assert!(!feed.offer(None, 1, 100, 100), "a notice over the cap too");
        assert_eq!(feed, Feed::from_seq(10, false));
        let mut off = Feed::Off;
        assert!(off.offer(Some(1), 1, 1000, 100), "no history: as before");
    }

    /// A simulated socket: takes `room` bytes per flush, keeps what it got.
    #[derive(Default)]
    struct Socket {
        queue: Vec<Bytes>,
        pending: usize,
        room: usize,
        got: Vec<String>,
        flushes: usize,
    }

    impl Member for Socket {
        fn pending(&self) -> usize {
            self.pending
        }
        fn queue(&mut self, frame: Bytes) {
            self.pending += frame.len();
            self.queue.push(frame);
        }
        fn flush(&mut self) -> bool {
            self.flushes += 1;
            while let Some(frame) = self.queue.first() {
                if frame.len() > self.room {
                    break;
                }
                self.room -= frame.len();
                self.pending -= frame.len();
                self.got.push(ws::text_frame_payload(frame).to_owned());
                self.queue.remove(0);
            }
            true
        }
    }

    fn plain(seq: Seq, draft: &Draft<'_>) -> Bytes {
        ws::encode_text_frame(&format!("{seq}{}", draft.text))
    }

    fn notice(notice: FeedNotice) -> Option<Bytes> {
        Some(ws::encode_text_frame(&format!("{notice:?}")))
    }

    fn history_of(lines: usize, count: usize) -> MemoryHistory {
        let limits = Limits {
            lines,
            bytes: usize::MAX,
            memory: usize::MAX,
        };
        let mut history = MemoryHistory::new(limits, plain);
        for _ in 0..count {
            history.append(
                "r",
                Draft {
                    id: 1,
                    text: "",
                    ts: 0,
                    name: None,
                    action: false,
                },
            );
        }
        history.take_confirmed(&mut Vec::new());
        history
    }

    fn room(history: &MemoryHistory) -> RoomHistory<'_> {
        RoomHistory { history, room: "r" }
    }

    #[test]
    fn catching_up_goes_as_far_as_the_socket_takes_then_waits() {
        let history = history_of(1000, 100);
        let mut feed = Feed::from_seq(1, true);
        let mut socket = Socket {
            room: 30, // ten frames of 3 bytes ("1".."9" are 3, "10".. 4)
            ..Socket::default()
        };
        let pace = Pace {
            low_water: 8,
            batch: 8,
            budget: usize::MAX,
        };
        let progress = catch_up(&mut feed, room(&history), &mut socket, &notice, pace);
        assert_eq!(progress, Progress::Waiting);
        assert!(socket.pending >= 8 && socket.pending <= 8 + 8 + 4);
        let got = socket.got.len();
        assert_eq!(
            socket.got,
            (1..=got).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        // More room, more lines, until it is live and told so. (The server
        // flushes before it catches a member up, as here.)
        socket.room = usize::MAX;
        socket.flush();
        let progress = catch_up(&mut feed, room(&history), &mut socket, &notice, pace);
        assert_eq!(progress, Progress::CaughtUp);
        assert_eq!(feed, Feed::Live { last: 100 });
        assert_eq!(socket.got.len(), 101);
        assert_eq!(socket.got[99], "100");
        assert_eq!(socket.got[100], "CaughtUp { head: 100 }");
    }

    #[test]
    fn a_lost_stretch_is_named_once_then_the_oldest_held_line_follows() {
        let history = history_of(10, 30);
        let mut feed = Feed::from_seq(6, true);
        let mut socket = Socket {
            room: usize::MAX,
            ..Socket::default()
        };
        let progress = catch_up(
            &mut feed,
            room(&history),
            &mut socket,
            &notice,
            Pace::for_cap(1 << 20),
        );
        assert_eq!(progress, Progress::CaughtUp);
        let mut expected = vec!["Gap { from: 6, to: 20 }".to_owned()];
        expected.extend((21..=30).map(|i| i.to_string()));
        expected.push("CaughtUp { head: 30 }".into());
        assert_eq!(socket.got, expected);
    }

    #[test]
    fn a_member_that_merely_fell_behind_is_not_told_it_caught_up() {
        let history = history_of(100, 3);
        let mut feed = Feed::from_seq(2, false);
        let mut socket = Socket {
            room: usize::MAX,
            ..Socket::default()
        };
        catch_up(
            &mut feed,
            room(&history),
            &mut socket,
            &notice,
            Pace::for_cap(1 << 20),
        );
        assert_eq!(socket.got, ["2", "3"]);
        assert_eq!(feed, Feed::Live { last: 3 });
    }

    #[test]
    fn a_fast_reader_far_behind_is_fed_one_budget_per_turn() {
        let history = history_of(100_000, 10_000);
        let mut feed = Feed::from_seq(1, false);
        let mut socket = Socket {
            room: usize::MAX,
            ..Socket::default()
        };
        let pace = Pace {
            low_water: 100,
            batch: 100,
            budget: 1000,
        };
        let progress = catch_up(&mut feed, room(&history), &mut socket, &notice, pace);
        assert_eq!(progress, Progress::OutOfBudget);
        let bytes: usize = socket.got.iter().map(|t| t.len() + 2).sum();
        assert!((1000..1100).contains(&bytes), "{bytes}");
    }

    /// The property test's world: a room with a small history, clients with
    /// sockets that read at the pace the test decides, dropping and coming
    /// back with their last seq, as the server drives them.
    mod interleavings {
        use std::collections::VecDeque;

        use proptest::prelude::*;

        use super::super::*;
        use crate::chat::{ChatRoom, seal};
        use crate::handler::{ConnId, WebSocketHandler};
        use crate::history::{Draft, History, Limits, MemoryHistory};
        use crate::ws;

        const CLIENTS: usize = 3;
        /// A cap of a few dozen lines, so that clients fall behind often.
        const CAP: usize = 2048;

        #[derive(Debug, Clone)]
        enum Op {
            /// Someone says this many lines.
            Say(u8),
            /// Another room says this many: it competes for history memory.
            SayElsewhere(u8),
            /// A client's socket takes this many bytes now.
            Read(usize, u16),
            /// A client stops reading / reads whatever comes.
            Stall(usize),
            Unstall(usize),
            /// The end of a loop turn: every client is flushed and fed.
            Turn,
            /// A client's connection drops (its queue is lost) ...
            Drop(usize),
            /// ... and it comes back with the last seq it saw.
            Resume(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let client = 0..CLIENTS;
            prop_oneof![
                4 => (1u8..40).prop_map(Op::Say),
                1 => (1u8..40).prop_map(Op::SayElsewhere),
                3 => (client.clone(), 0u16..4000).prop_map(|(c, n)| Op::Read(c, n)),
                1 => client.clone().prop_map(Op::Stall),
                1 => client.clone().prop_map(Op::Unstall),
                3 => Just(Op::Turn),
                1 => client.clone().prop_map(Op::Drop),
                1 => client.prop_map(Op::Resume),
            ]
        }

        /// What a client saw, in order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Seen {
            Line(Seq),
            Gap(Seq, Seq),
            CaughtUp(Seq),
        }

        /// A client's socket: frames queued by the server, the bytes it may
        /// take, and what it has read.
        #[derive(Default)]
        struct Socket {
            queue: VecDeque<Bytes>,
            pending: usize,
            room: usize,
            stalled: bool,
            seen: Vec<Seen>,
        }

        impl Member for Socket {
            fn pending(&self) -> usize {
                self.pending
            }
            fn queue(&mut self, frame: Bytes) {
                self.pending += frame.len();
                self.queue.push_back(frame);
            }
            fn flush(&mut self) -> bool {
                while let Some(frame) = self.queue.front() {
                    if !self.stalled {
                        self.room = usize::MAX;
                    }
                    if frame.len() > self.room {
                        break;
                    }
                    self.room -= frame.len();
                    self.pending -= frame.len();
                    let json: serde_json::Value =
                        serde_json::from_str(ws::text_frame_payload(frame)).unwrap();
                    let number = |key: &str| json[key].as_u64().unwrap();
                    self.seen.push(match json["event"].as_str() {
                        None => Seen::Line(number("seq")),
                        Some("gap") => Seen::Gap(number("from"), number("to")),
                        Some("caught_up") => Seen::CaughtUp(number("head")),
                        Some(other) => panic!("{other}"),
                    });
                    self.queue.pop_front();
                }
                true
            }
        }

        struct Client {
            socket: Socket,
            feed: Feed,
            connected: bool,
        }

        impl Client {
            /// The last seq this client has seen or been told is gone.
            fn last(&self) -> Seq {
                self.socket
                    .seen
                    .iter()
                    .rev()
                    .find_map(|seen| match *seen {
                        Seen::Line(seq) => Some(seq),
                        Seen::Gap(_, to) => Some(to),
                        Seen::CaughtUp(_) => None,
                    })
                    .unwrap_or(0)
            }
        }

        fn say(history: &mut MemoryHistory, room: &str, clients: &mut [Client], lines: u8) {
            for _ in 0..lines {
                history.append(
                    room,
                    Draft {
                        id: 1,
                        text: "a line",
                        ts: 0,
                        name: None,
                        action: false,
                    },
                );
                let mut confirmed = Vec::new();
                history.take_confirmed(&mut confirmed);
                for line in confirmed.into_iter().filter(|c| &*c.room == "r") {
                    let frame = line.line.frame;
                    for client in clients.iter_mut().filter(|c| c.connected) {
                        let pending = client.socket.pending();
                        if client
                            .feed
                            .offer(Some(line.line.seq), frame.len(), pending, CAP)
                        {
                            client.socket.queue(frame.clone());
                        }
                    }
                }
            }
        }

        fn turn(history: &MemoryHistory, clients: &mut [Client]) {
            let room = ChatRoom::new();
            let groups = crate::groups::Groups::new();
            let notice = |n| room.feed_notice(ConnId(1), n, &groups);
            for client in clients.iter_mut().filter(|c| c.connected) {
                client.socket.flush();
                let history = RoomHistory { history, room: "r" };
                catch_up(
                    &mut client.feed,
                    history,
                    &mut client.socket,
                    &notice,
                    Pace::for_cap(CAP),
                );
            }
        }

        /// Every line once, in order; every missing stretch announced, at
        /// its place; `caught_up` naming the line just before it.
        fn check(seen: &[Seen]) -> Seq {
            let mut next = 1;
            for item in seen {
                match *item {
                    Seen::Line(seq) => {
                        assert_eq!(seq, next, "a line twice or a hole: {seen:?}");
                        next += 1;
                    }
                    Seen::Gap(from, to) => {
                        assert_eq!(from, next, "a gap not where it begins: {seen:?}");
                        assert!(to >= from);
                        next = to + 1;
                    }
                    Seen::CaughtUp(head) => assert_eq!(head, next - 1, "{seen:?}"),
                }
            }
            next - 1
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn every_client_sees_a_prefix_closed_gap_announced_duplicate_free_sequence(
                ops in prop::collection::vec(op(), 0..120),
                lines in 5usize..60,
            ) {
                let limits = Limits { lines, bytes: usize::MAX, memory: 6000 };
                let mut history = MemoryHistory::new(limits, seal);
                history.position_of("r");
                let mut clients: Vec<Client> = (0..CLIENTS)
                    .map(|_| Client {
                        socket: Socket::default(),
                        feed: Feed::Live { last: 0 },
                        connected: true,
                    })
                    .collect();
                for op in ops {
                    match op {
                        Op::Say(n) => say(&mut history, "r", &mut clients, n),
                        Op::SayElsewhere(n) => say(&mut history, "other", &mut clients, n),
                        Op::Read(c, n) => {
                            clients[c].socket.room = usize::from(n);
                            clients[c].socket.flush();
                        }
                        Op::Stall(c) => clients[c].socket.stalled = true,
                        Op::Unstall(c) => clients[c].socket.stalled = false,
                        Op::Turn => turn(&history, &mut clients),
                        Op::Drop(c) => {
                            let client = &mut clients[c];
                            client.connected = false;
                            client.socket.queue.clear();
                            client.socket.pending = 0;
                        }
                        Op::Resume(c) if !clients[c].connected => {
                            let client = &mut clients[c];
                            client.connected = true;
                            client.feed = Feed::from_seq(client.last() + 1, true);
                        }
                        Op::Resume(_) => {}
                    }
                }
                // Everyone back and reading: each ends at the head, every
                // line it missed either seen or announced as gone.
                for client in &mut clients {
                    client.socket.stalled = false;
                    if !client.connected {
                        client.connected = true;
                        client.feed = Feed::from_seq(client.last() + 1, true);
                    }
                }
                for _ in 0..1000 {
                    turn(&history, &mut clients);
                    if clients.iter().all(|c| !c.feed.is_catching_up() && c.socket.queue.is_empty()) {
                        break;
                    }
                }
                let head = history.position_of("r").head;
                for client in &clients {
                    prop_assert_eq!(check(&client.socket.seen), head);
                    prop_assert_eq!(client.feed, Feed::Live { last: head });
                }
            }
        }
    }
}
