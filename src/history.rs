//! What a room remembers: the [`History`] interface, and [`MemoryHistory`],
//! its in-memory backend.
//!
//! A room's history is a log with dense offsets, as in Kafka: each chat line
//! gets the room's next sequence number ([`Seq`]: 1, 2, 3, ...), and a
//! client's position is one number, "I have seen every line up to S". A
//! position means something only together with the room's [`Epoch`], a
//! random name drawn when the room's history begins: if the history begins
//! again (a restart, with nothing kept), its seqs start again at 1, and an old
//! position must not be mistaken for a new one. (Centrifugo's recovery works
//! the same way: an epoch and an offset.)
//!
//! The chat room ([`crate::chat`]) is the only writer; the server reads, to
//! feed a client that fell behind at its socket's pace ([`crate::feed`]).
//! Neither knows which backend it talks to. The interface is asynchronous
//! from the start, because the backends that will follow are: a line is
//! handed over with [`History::append`], and comes back with its seq through
//! [`History::take_confirmed`] once the backend has it: at once for memory,
//! a turn later for a disk log that writes a turn's lines together, a round
//! trip later for Redis, which assigns seqs for many servers. Only then is
//! it broadcast, so that no client ever sees a line the history does not have.
//!
//! A line is kept as the very frame that was broadcast: encoded once, the
//! same shared bytes in the history and in every client's output queue, no
//! copy and no re-encoding for a replay. The frame's payload is the line's
//! exact JSON ([`Line::json`]), which a disk log or Redis can store and
//! rebuild the frame from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use mio::{Registry, Token};
use tungstenite::Bytes;

use crate::metrics::Exposition;
use crate::ws;

/// A line's sequence number in its room: 1 for the first line of an epoch,
/// then one more for each. 0 means "no line" (the head of an empty room, or
/// a client that has seen nothing).
pub type Seq = u64;

/// The name of one run of a room's history. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

/// How many characters an epoch has: 16, each one of 32 (Crockford's base 32), so
/// 80 random bits.
pub const EPOCH_CHARS: usize = 16;

/// The characters of a new epoch: digits and lowercase letters without the
/// ones easily misread (Crockford's base 32), so an epoch reads well in a URL
/// or a log.
const EPOCH_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl Epoch {
    /// A fresh epoch of 80 random bits from the operating system. Never
    /// derived from the clock: two histories begun in the same millisecond
    /// (two rooms, or a restart) must not share one.
    pub fn random() -> Epoch {
        let mut bits = [0u8; EPOCH_CHARS];
        crate::random::fill(&mut bits);
        let text: String = bits
            .iter()
            .map(|b| char::from(EPOCH_ALPHABET[usize::from(b & 31)]))
            .collect();
        Epoch(text.into())
    }

    /// The epoch's name, as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Epoch {
    /// An epoch read back (from a data directory): the name it was given.
    fn from(name: String) -> Self {
        Epoch(name.into())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chat line on its way into history: what the protocol carries, except
/// its seq, which the backend assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draft<'a> {
    /// Who said it (the member's id).
    pub id: u64,
    /// What was said.
    pub text: &'a str,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The speaker's display name, if it has one.
    pub name: Option<&'a str>,
    /// An action (`/me waves`) rather than a line said.
    pub action: bool,
}

/// How a backend turns a draft and its seq into the frame to broadcast. The
/// chat protocol provides it ([`crate::chat::seal`]), so that the history
/// knows no JSON and the protocol no storage.
pub type Seal = fn(Seq, &Draft<'_>) -> Bytes;

/// A line in history: its seq and its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The line's place in its room.
    pub seq: Seq,
    /// The complete WebSocket frame everyone got; shared, never copied.
    pub frame: Bytes,
}

impl Line {
    /// The line's exact JSON: the frame's payload.
    pub fn json(&self) -> &str {
        ws::text_frame_payload(&self.frame)
    }

    /// What the line costs a history, for its memory limits: the frame plus
    /// the slot and bookkeeping that hold it ([`LINE_OVERHEAD`]).
    pub fn cost(&self) -> usize {
        self.frame.len() + LINE_OVERHEAD
    }
}

/// What a line costs besides its frame: its slot in the ring (a seq and a
/// `Bytes`, 40 bytes) and the shared buffer's own header and allocator
/// rounding, about as much again. Counted so that `--history-memory` bounds
/// what the process really holds, even for tiny lines.
pub const LINE_OVERHEAD: usize = 80;

/// A line the backend has confirmed, and the room it belongs to.
#[derive(Debug, Clone)]
pub struct Confirmed {
    /// The room's name.
    pub room: Arc<str>,
    /// The line, with its seq.
    pub line: Line,
}

/// Where a room's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The name of this run of the room's history.
    pub epoch: Epoch,
    /// The oldest line still held; `head + 1` if none is.
    pub first: Seq,
    /// The last seq assigned, 0 if none yet.
    pub head: Seq,
    /// Earlier runs whose lines this one continues: each an epoch and the
    /// last of its seqs that survived. A disk log begins a new epoch when a
    /// crash may have cost it lines a client saw; its seqs go on from the
    /// last one kept, so a client of the old epoch up to there is still
    /// exactly placed. Oldest first; empty for a history in memory.
    pub earlier: Arc<[(Epoch, Seq)]>,
}

impl Position {
    /// Whether a client that has every line up to `since` of the run named
    /// `epoch` can go on from `since + 1` here: the same run, or an earlier
    /// one this run continues, up to the last seq that survived it.
    pub fn continues(&self, epoch: &str, since: Seq) -> bool {
        if epoch == self.epoch.as_str() {
            return since <= self.head;
        }
        self.earlier
            .iter()
            .any(|(old, last)| old.as_str() == epoch && since <= *last)
    }
}

/// A line a backend could not keep (its disk was full, say): never
/// confirmed, never broadcast, and its seq is given to the next line. The
/// speaker is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The room's name.
    pub room: Arc<str>,
    /// Who said it ([`Draft::id`]).
    pub id: u64,
}

/// What a history has to tell the chat besides lines: about a room as a
/// whole, or (a history shared through Redis) about the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// Where the room stands is known now ([`History::position`] answered
    /// `None` before): its newcomers can be welcomed.
    Ready(Arc<str>),
    /// The room began a new epoch that its members' lines do not continue
    /// into (Redis lost lines they saw): they must be told, and start over.
    Reset(Arc<str>),
    /// Someone came into the room on another server.
    Joined(Arc<str>, Elsewhere),
    /// Someone left the room on another server (or that server died).
    Left(Arc<str>, Elsewhere),
    /// Someone in the room on another server took a name; `was`: its
    /// name before, if any.
    Renamed(Arc<str>, Elsewhere, Option<Box<str>>),
    /// Whether `id` left the room (on any server) within its resume window
    /// ([`History::recall`]): `Some(name)` if it did, with the name it had.
    Recalled {
        /// The room.
        room: Arc<str>,
        /// The member asked about.
        id: u64,
        /// `None`: no such departure (or its window passed).
        left: Option<Option<Box<str>>>,
    },
    /// Where this server's member ids begin: a base the shared store gave
    /// it alone, so that no two servers hand out the same id.
    IdBase(u64),
    /// The key of resume tokens, the same on every server sharing the
    /// store, so that a token works on any of them.
    TokenKey([u64; 2]),
}

/// A member of a room served by another server (a history shared through
/// Redis knows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// The server it is on (that server's name in the shared store).
    pub server: Arc<str>,
    /// Its id.
    pub id: u64,
    /// Its display name, if it has one.
    pub name: Option<Box<str>>,
}

/// A change in who is in a room, for the other servers sharing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange<'a> {
    /// `id` came in (the name it has, if any).
    Join {
        /// Its id.
        id: u64,
        /// Its name.
        name: Option<&'a str>,
    },
    /// `id` left; a resume token may bring its id and `name` back for
    /// `window`.
    Leave {
        /// Its id.
        id: u64,
        /// Its name.
        name: Option<&'a str>,
        /// How long it may come back (`--resume-window`).
        window: std::time::Duration,
    },
    /// `id` is now called `name`.
    Rename {
        /// Its id.
        id: u64,
        /// Its new name.
        name: &'a str,
    },
}

/// Lines read from a history ([`History::read_from`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Seqs asked for that the history no longer holds, first and last:
    /// the reader must be told of them. They come before `lines`.
    pub gap: Option<(Seq, Seq)>,
    /// Consecutive lines from the first one asked for (or the first held).
    pub lines: Vec<Line>,
    /// The room's head when read: a reader past it has caught up.
    pub head: Seq,
}

/// A room's history: what the chat room appends to and the server reads
/// from. One value holds the history of every room, because memory limits
/// and (later) connections to storage are shared by all of them.
pub trait History {
    /// Where `room`'s history stands; a room not seen before begins here,
    /// with a fresh epoch. `None`: not known yet (a history shared through
    /// Redis asks it first); [`take_news`](History::take_news) tells when
    /// it is.
    fn position(&mut self, room: &str) -> Option<Position>;

    /// Hands a line over to be appended to `room`. Its seq comes back from
    /// [`take_confirmed`](History::take_confirmed) once the backend has it;
    /// lines of one room are confirmed in the order they were appended.
    fn append(&mut self, room: &str, draft: Draft<'_>);

    /// Moves the lines confirmed since the last call into `into`.
    fn take_confirmed(&mut self, into: &mut Vec<Confirmed>);

    /// The end of a loop turn: a backend that writes lines in batches
    /// writes the turn's now (one write per room: a group commit), then
    /// confirms them. Called before anything of the turn reaches a socket,
    /// so a line any client receives is already kept. A history in memory
    /// confirms at once and has nothing to do.
    fn commit(&mut self) {}

    /// Moves the lines refused since the last call (see [`Refused`]) into
    /// `into`. A history in memory refuses none.
    fn take_refused(&mut self, _into: &mut Vec<Refused>) {}

    /// Moves what the history learnt about rooms as a whole since the last
    /// call ([`News`]) into `into`. Only a shared history has any.
    fn take_news(&mut self, _into: &mut Vec<News>) {}

    /// Tells the other servers sharing `room` who came, went or took a
    /// name here. A history of one server alone has nobody to tell.
    fn announce(&mut self, _room: &str, _change: PresenceChange<'_>) {}

    /// Asks whether `id` left `room` on any server within its resume window
    /// (and takes that departure: a token brings a member back once). The
    /// answer comes as [`News::Recalled`]. Only a shared history knows of
    /// other servers' departures.
    fn recall(&mut self, _room: &str, _id: u64) {}

    /// The members of `room` on other servers. None for a history of one
    /// server alone.
    fn elsewhere(&self, _room: &str) -> &[Elsewhere] {
        &[]
    }

    /// Nobody on this server is in `room` any more: a history that follows
    /// rooms for their members here may stop following it.
    fn release(&mut self, _room: &str) {}

    /// Registers the history's own sockets (its connections to a store)
    /// with the loop, under `tokens`; [`source_ready`](History::source_ready)
    /// then hears of them. A history without sockets has none.
    fn attach(&mut self, _registry: &Registry, _tokens: &[Token]) -> std::io::Result<()> {
        Ok(())
    }

    /// One of the history's sockets is ready.
    fn source_ready(&mut self, _token: Token) {}

    /// Time passes: deadlines, reconnections. Called at
    /// [`next_tick`](History::next_tick) or later.
    fn tick(&mut self, _now: Instant) {}

    /// When the history next needs [`tick`](History::tick), if ever.
    fn next_tick(&self) -> Option<Instant> {
        None
    }

    /// Writes the history's figures for `/metrics`: what it holds.
    fn write_metrics(&self, _out: &mut Exposition) {}

    /// Whether lines can be kept now, for `/readyz`: `Err` with a one-line
    /// reason (the store out of reach, the disk refusing writes).
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// `room`'s lines from `from` on, oldest first: as many consecutive
    /// lines as fit in `max_bytes` of frames, but at least one if any is
    /// held, so a line larger than the budget still goes out. Lines no longer
    /// held are named in [`Chunk::gap`]. Nothing, if `from` is past the head.
    fn read_from(&self, room: &str, from: Seq, max_bytes: usize) -> Chunk;

    /// Forgets `room` (its lines, seqs and epoch) if its last line, or its
    /// beginning if it has had none, came before `cutoff`; returns whether
    /// it did. For a room nobody is in, before someone enters it.
    fn expire_room(&mut self, room: &str, cutoff: Instant) -> bool;

    /// Forgets every room whose last line (or beginning) came before
    /// `cutoff`, except those `keep` names (rooms with members); returns how
    /// many. So that room names cannot pile up forever (`--history-ttl`).
    fn expire_rooms(&mut self, cutoff: Instant, keep: &dyn Fn(&str) -> bool) -> usize;
}

/// A history seen from one room: what the server needs to feed a member.
#[derive(Clone, Copy)]
pub struct RoomHistory<'a> {
    /// The backend.
    pub history: &'a dyn History,
    /// The member's room in it.
    pub room: &'a str,
}

impl RoomHistory<'_> {
    /// The room's lines from `from` on (see [`History::read_from`]).
    pub fn read_from(&self, from: Seq, max_bytes: usize) -> Chunk {
        self.history.read_from(self.room, from, max_bytes)
    }

    /// The room's last seq (0 if none yet).
    pub fn head(&self) -> Seq {
        // Past any head, a read returns nothing but the head.
        self.read_from(Seq::MAX, 0).head
    }
}

impl fmt::Debug for RoomHistory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomHistory")
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

/// How much a [`MemoryHistory`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per room, the newest this many lines (`--history-lines`).
    pub lines: usize,
    /// Per room, at most this many bytes of them (`--history-bytes`),
    /// counted as [`Line::cost`].
    pub bytes: usize,
    /// Over all rooms (`--history-memory`): beyond it, the least recently
    /// active rooms' history is dropped, then the oldest lines of the room
    /// being written to.
    pub memory: usize,
}

/// One room's history in memory: a ring of its newest lines.
#[derive(Debug)]
struct Ring {
    /// The room's name, shared with every line confirmed for it.
    name: Arc<str>,
    epoch: Epoch,
    /// The last seq assigned. Kept when lines are dropped: seqs never go back.
    head: Seq,
    /// The newest lines, oldest first; the last one's seq is `head`.
    lines: VecDeque<Line>,
    /// What `lines` cost ([`Line::cost`]).
    bytes: usize,
    /// When the room last got a line, on [`MemoryHistory`]'s activity clock.
    active: u64,
    /// When the room last got a line, or began: for `--history-ttl`.
    last_line: Instant,
}

impl Ring {
    /// The seq of the oldest line held (`head + 1` if none is).
    fn first(&self) -> Seq {
        self.head + 1 - self.lines.len() as Seq
    }

    /// Drops the oldest line; returns what it cost.
    fn drop_oldest(&mut self) -> usize {
        let cost = self.lines.pop_front().map_or(0, |line| line.cost());
        self.bytes -= cost;
        cost
    }
}

/// Every room's newest lines, in memory: the default backend, and the cache
/// in front of the slower ones to come.
pub struct MemoryHistory {
    limits: Limits,
    seal: Seal,
    rooms: HashMap<Arc<str>, Ring>,
    /// Rooms that hold lines, by when they last got one: the front is the
    /// least recently active, the first whose history goes when memory is
    /// short.
    by_activity: BTreeMap<u64, Arc<str>>,
    /// Ticks once per line appended: the activity clock.
    clock: u64,
    /// What every room's lines cost together.
    held: usize,
    /// Appended lines waiting for [`History::take_confirmed`].
    confirmed: Vec<Confirmed>,
}

impl fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryHistory")
            .field("limits", &self.limits)
            .field("rooms", &self.rooms.len())
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl MemoryHistory {
    /// An empty history keeping up to `limits`, whose frames `seal` makes.
    pub fn new(limits: Limits, seal: Seal) -> Self {
        MemoryHistory {
            limits,
            seal,
            rooms: HashMap::new(),
            by_activity: BTreeMap::new(),
            clock: 0,
            held: 0,
            confirmed: Vec::new(),
        }
    }

    /// What every room's lines cost together ([`Line::cost`]).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// How many rooms it knows (with lines or not).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Writes what it holds in memory, for `/metrics` (its own, or as the
    /// cache of a history kept elsewhere).
    pub fn write_memory_metrics(&self, out: &mut Exposition) {
        let lines: usize = self.rooms.values().map(|ring| ring.lines.len()).sum();
        out.gauge(
            "eddy_history_memory_lines",
            "Lines of history held in memory, over all rooms.",
            lines as f64,
        );
        out.gauge(
            "eddy_history_memory_bytes",
            "Bytes of history held in memory, over all rooms: the lines' frames and bookkeeping.",
            self.held as f64,
        );
        out.gauge(
            "eddy_history_rooms",
            "Rooms the history knows, with people in them or not.",
            self.rooms.len() as f64,
        );
    }

    /// Keeps `line` as `room`'s newest, within the limits; returns the
    /// room's shared name. Its seq is the room's new head: one more than
    /// the last for a line just appended; anything else (a cache given a
    /// line after a gap) starts the ring afresh from it.
    pub(crate) fn keep(&mut self, room: &str, line: Line) -> Arc<str> {
        let limits = self.limits;
        self.clock += 1;
        let clock = self.clock;
        let held_before = self.held;
        let ring = self.ring(room);
        let name = Arc::clone(&ring.name);
        let mut held = held_before;
        if line.seq != ring.head + 1 {
            held -= ring.bytes;
            ring.bytes = 0;
            ring.lines.clear();
        }
        ring.head = line.seq;
        let cost = line.cost();
        ring.lines.push_back(line);
        ring.bytes += cost;
        held += cost;
        while ring.lines.len() > limits.lines || ring.bytes > limits.bytes {
            held -= ring.drop_oldest();
        }
        ring.last_line = Instant::now();
        let was_active = std::mem::replace(&mut ring.active, clock);
        let holds_lines = !ring.lines.is_empty();
        self.held = held;
        self.by_activity.remove(&was_active);
        if holds_lines {
            self.by_activity.insert(clock, Arc::clone(&name));
        }
        self.fit_memory(room);
        name
    }

    /// Begins `room` in memory as a store holding it found it: its epoch,
    /// and its head, with no line cached yet (older lines stay where they
    /// are, and are read from there).
    pub(crate) fn restore(&mut self, room: &str, epoch: Epoch, head: Seq) {
        self.forget(room);
        self.begin(room, epoch, head);
    }

    /// Where `room` stands in memory; a room not seen before begins here,
    /// with a fresh epoch. A history in memory always knows.
    pub fn position_of(&mut self, room: &str) -> Position {
        let ring = self.ring(room);
        Position {
            epoch: ring.epoch.clone(),
            first: ring.first(),
            head: ring.head,
            earlier: Arc::new([]),
        }
    }

    /// Forgets `room` altogether.
    pub(crate) fn forget(&mut self, room: &str) {
        if let Some(ring) = self.rooms.remove(room) {
            self.held -= ring.bytes;
            if self.by_activity.get(&ring.active) == Some(&ring.name) {
                self.by_activity.remove(&ring.active);
            }
        }
    }

    /// `room`'s ring; a room not seen before begins with a fresh epoch.
    fn ring(&mut self, room: &str) -> &mut Ring {
        if !self.rooms.contains_key(room) {
            let epoch = Epoch::random();
            debug!("room {room}: history begins, epoch {epoch}");
            self.begin(room, epoch, 0);
        }
        self.rooms
            .get_mut(room)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Begins `room` (not known yet) at `head` of `epoch`, with no lines.
    fn begin(&mut self, room: &str, epoch: Epoch, head: Seq) {
        let name: Arc<str> = room.into();
        self.rooms.insert(
            Arc::clone(&name),
            Ring {
                name,
                epoch,
                head,
                lines: VecDeque::new(),
                bytes: 0,
                active: 0,
                last_line: Instant::now(),
            },
        );
    }

    /// Drops whole histories of the least recently active rooms, then the
    /// oldest lines of `room` (the one just written to), until everything
    /// fits in `--history-memory`.
    fn fit_memory(&mut self, room: &str) {
        while self.held > self.limits.memory {
            let Some((&tick, oldest)) = self.by_activity.first_key_value() else {
                return;
            };
            let Some(ring) = self.rooms.get_mut(oldest) else {
                self.by_activity.remove(&tick);
                continue;
            };
            if &**oldest == room {
                // The room being written to is the only one left with
                // lines: it gives up its oldest.
                self.held -= ring.drop_oldest();
                if ring.lines.is_empty() {
                    ring.lines = VecDeque::new();
                    self.by_activity.remove(&tick);
                }
            } else {
                debug!(
                    "room {oldest}: history dropped ({} lines) to stay within --history-memory",
                    ring.lines.len()
                );
                self.held -= ring.bytes;
                ring.bytes = 0;
                ring.lines = VecDeque::new();
                self.by_activity.remove(&tick);
            }
        }
    }
}

impl History for MemoryHistory {
    fn position(&mut self, room: &str) -> Option<Position> {
        Some(self.position_of(room))
    }

    fn write_metrics(&self, out: &mut Exposition) {
        self.write_memory_metrics(out);
    }

    fn append(&mut self, room: &str, draft: Draft<'_>) {
        let seal = self.seal;
        let seq = self.ring(room).head + 1;
        let line = Line {
            seq,
            frame: seal(seq, &draft),
        };
        let name = self.keep(room, line.clone());
        self.confirmed.push(Confirmed { room: name, line });
    }

    fn take_confirmed(&mut self, into: &mut Vec<Confirmed>) {
        into.append(&mut self.confirmed);
    }

    fn expire_room(&mut self, room: &str, cutoff: Instant) -> bool {
        let stale = self.rooms.get(room).is_some_and(|r| r.last_line < cutoff);
        if stale {
            debug!("room {room}: forgotten, no line for --history-ttl");
            self.forget(room);
        }
        stale
    }

    fn expire_rooms(&mut self, cutoff: Instant, keep: &dyn Fn(&str) -> bool) -> usize {
        let stale: Vec<Arc<str>> = self
            .rooms
            .values()
            .filter(|r| r.last_line < cutoff && !keep(&r.name))
            .map(|r| Arc::clone(&r.name))
            .collect();
        for room in &stale {
            debug!("room {room}: forgotten, no line for --history-ttl");
            self.forget(room);
        }
        stale.len()
    }

    fn read_from(&self, room: &str, from: Seq, max_bytes: usize) -> Chunk {
        let Some(ring) = self.rooms.get(room) else {
            return Chunk::default();
        };
        let from = from.max(1);
        let mut chunk = Chunk {
            head: ring.head,
            ..Chunk::default()
        };
        if from > ring.head {
            return chunk;
        }
        let first = ring.first();
        if from < first {
            chunk.gap = Some((from, first - 1));
        }
        let start = usize::try_from(from.max(first) - first).unwrap_or(usize::MAX);
        let mut bytes = 0;
        for line in ring.lines.range(start.min(ring.lines.len())..) {
            if !chunk.lines.is_empty() && bytes + line.frame.len() > max_bytes {
                break;
            }
            bytes += line.frame.len();
            chunk.lines.push(line.clone());
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seal for tests: the frame's payload is `seq:text`, the seq in
    /// four digits so that lines of one text cost the same.
    fn plain(seq: Seq, draft: &Draft<'_>) -> Bytes {
        ws::encode_text_frame(&format!("{seq:04}:{}", draft.text))
    }

    fn history(lines: usize, bytes: usize, memory: usize) -> MemoryHistory {
        MemoryHistory::new(
            Limits {
                lines,
                bytes,
                memory,
            },
            plain,
        )
    }

    fn say(history: &mut MemoryHistory, room: &str, text: &str) -> Seq {
        history.append(
            room,
            Draft {
                id: 1,
                text,
                ts: 0,
                name: None,
                action: false,
            },
        );
        let mut confirmed = Vec::new();
        history.take_confirmed(&mut confirmed);
        assert_eq!(confirmed.len(), 1);
        assert_eq!(&*confirmed[0].room, room);
        confirmed[0].line.seq
    }

    fn seqs(chunk: &Chunk) -> Vec<Seq> {
        chunk.lines.iter().map(|l| l.seq).collect()
    }

    #[test]
    fn seqs_start_at_one_and_are_dense_per_room() {
        let mut h = history(100, usize::MAX, usize::MAX);
        assert_eq!(h.position_of("a").head, 0);
        assert_eq!(say(&mut h, "a", "x"), 1);
        assert_eq!(say(&mut h, "a", "y"), 2);
        assert_eq!(say(&mut h, "b", "z"), 1, "each room counts alone");
        let chunk = h.read_from("a", 1, usize::MAX);
        assert_eq!(seqs(&chunk), [1, 2]);
        assert_eq!(chunk.lines[1].json(), "0002:y");
        assert_eq!((chunk.gap, chunk.head), (None, 2));
    }

    #[test]
    fn epochs_are_random_and_stay_with_their_room() {
        let mut h = history(100, usize::MAX, usize::MAX);
        let a = h.position_of("a").epoch;
        assert_eq!(a.as_str().len(), EPOCH_CHARS);
        assert!(
            a.as_str()
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(h.position_of("a").epoch, a, "the same room, the same epoch");
        assert_ne!(h.position_of("b").epoch, a);
        let others: std::collections::HashSet<_> = (0..1000).map(|_| Epoch::random()).collect();
        assert_eq!(others.len(), 1000, "no two alike");
    }

    #[test]
    fn the_newest_lines_are_kept_and_older_ones_reported_as_a_gap() {
        let mut h = history(10, usize::MAX, usize::MAX);
        for i in 1..=30 {
            say(&mut h, "r", &i.to_string());
        }
        let position = h.position_of("r");
        assert_eq!((position.first, position.head), (21, 30));
        let chunk = h.read_from("r", 6, usize::MAX);
        assert_eq!(chunk.gap, Some((6, 20)));
        assert_eq!(seqs(&chunk), (21..=30).collect::<Vec<_>>());
        assert_eq!(
            h.read_from("r", 31, usize::MAX),
            Chunk {
                head: 30,
                ..Chunk::default()
            }
        );
    }

    #[test]
    fn reads_fit_the_byte_budget_but_always_carry_one_line() {
        let mut h = history(100, usize::MAX, usize::MAX);
        for _ in 0..5 {
            say(&mut h, "r", "0123456789"); // frames of 2 + 15 bytes
        }
        assert_eq!(seqs(&h.read_from("r", 2, 34)), [2, 3]);
        assert_eq!(seqs(&h.read_from("r", 2, 33)), [2]);
        assert_eq!(seqs(&h.read_from("r", 2, 0)), [2], "one line, even over");
    }

    #[test]
    fn the_byte_limit_per_room_drops_the_oldest_lines() {
        let line_cost = ws::encode_text_frame("0001:0123456789").len() + LINE_OVERHEAD;
        let mut h = history(100, 3 * line_cost, usize::MAX);
        for _ in 0..5 {
            say(&mut h, "r", "0123456789");
        }
        assert_eq!(h.position_of("r").first, 3);
        assert_eq!(h.held_bytes(), 3 * line_cost);
    }

    #[test]
    fn over_the_memory_budget_the_least_recently_active_room_goes_first() {
        let cost = ws::encode_text_frame("0001:x").len() + LINE_OVERHEAD;
        let mut h = history(100, usize::MAX, 4 * cost);
        say(&mut h, "old", "x");
        say(&mut h, "old", "x");
        say(&mut h, "mid", "x");
        say(&mut h, "new", "x");
        assert_eq!(h.held_bytes(), 4 * cost);
        say(&mut h, "new", "x"); // one too many: "old" loses all it had
        assert_eq!(h.position_of("old").first, 3, "nothing held");
        assert_eq!(h.position_of("old").head, 2, "but seqs never go back");
        assert_eq!(h.read_from("old", 1, usize::MAX).gap, Some((1, 2)));
        assert_eq!(seqs(&h.read_from("mid", 1, usize::MAX)), [1]);
        assert_eq!(h.held_bytes(), 3 * cost);
        // Alone over the budget, the room written to gives up its oldest.
        for _ in 0..10 {
            say(&mut h, "new", "x");
        }
        assert!(h.held_bytes() <= 4 * cost);
        assert_eq!(seqs(&h.read_from("mid", 1, usize::MAX)), Vec::<Seq>::new());
        assert_eq!(h.position_of("new").first, 12 - 4 + 1);
    }

    #[test]
    fn rooms_quiet_past_the_ttl_are_forgotten_unless_kept() {
        let mut h = history(100, usize::MAX, usize::MAX);
        say(&mut h, "quiet", "x");
        say(&mut h, "busy", "x");
        h.position_of("empty");
        let quiet_epoch = h.position_of("quiet").epoch;
        let cutoff = Instant::now() + std::time::Duration::from_secs(1);
        assert!(!h.expire_room("quiet", Instant::now() - std::time::Duration::from_secs(60)));
        assert_eq!(h.expire_rooms(cutoff, &|room| room == "busy"), 2);
        assert_eq!(h.rooms(), 1, "busy is kept");
        assert_eq!(
            h.held_bytes(),
            h.read_from("busy", 1, usize::MAX).lines[0].cost()
        );
        assert_ne!(h.position_of("quiet").epoch, quiet_epoch, "begins again");
        assert_eq!(h.position_of("quiet").head, 0);
        assert!(h.expire_room("busy", cutoff));
        assert_eq!(h.held_bytes(), 0);
    }
}
