//! The history many Eddy servers share: [`SharedHistory`], the [`History`]
//! backend that keeps each room in Redis (`--redis`), so that every member
//! of a room, on whichever server, gets the same lines in the same order.
//!
//! Redis holds each room under one hash tag (`eddy:{room}:…`, so a Redis
//! Cluster keeps a room's keys in one slot and no command spans two rooms):
//!
//! * `eddy:{room}:meta`: a hash of the room's `epoch`, its last `seq`, the
//!   `earlier` epochs its seqs continue, and in `w:<server>` fields each
//!   server's last append to the room, which makes appends idempotent;
//! * `eddy:{room}:log`: a stream of its lines, each with the explicit id
//!   `0-<seq>` (so a reader's cursor is a direct `XRANGE`), trimmed with
//!   `MAXLEN ~` to the history's line limit;
//! * `eddy:{room}:members`: who is in the room, on which server: a hash of
//!   `<server> <id>` to the member's name; and `eddy:{room}:servers`, the
//!   servers with members there, a sorted set scored by when each one's
//!   entry expires, which it pushes back every [`BEAT_EVERY`] (`BEAT`):
//!   one entry per server, however many members it has;
//! * the shard channel `eddy:{room}:live`, where each line is published,
//!   and each join, leave and rename (`P <what> <server> <id> <name>`).
//!
//! Presence: a server tells the others of its members' joins, leaves and
//! renames through the room's channel (`PRESENCE`), and learns theirs, so
//! counts and `/who` cover every server. A server that dies without a word
//! stops pushing its entry back: the next beat of any other server finds it
//! expired, removes its members and says they left, within
//! [`PRESENCE_TTL`] + [`BEAT_EVERY`].
//!
//! A line's seq is assigned by one script (`APPEND`): check the epoch,
//! increment, `XADD`, `SPUBLISH`, all or nothing. A server never delivers
//! a line it sent itself: it delivers what comes back, in seq order, from
//! the room's channel (`SSUBSCRIBE`, only while it has members there), and
//! fills any hole in the seqs from the stream before going on. So every
//! server delivers one order, Redis's.
//!
//! Two connections, both in the loop ([`crate::redis`]): one for commands,
//! one subscribed. Faults are told, never hidden: a line sent while Redis is
//! unreachable is refused at once (its sender is told it was not
//! delivered); one whose reply was lost is looked up when Redis is back
//! (the server's last append to the room, `w:`) and refused only if it
//! never ran. When Redis is back, each room catches up from the last seq
//! delivered here. If Redis lost what this server saw (restarted empty, or
//! from an older snapshot), the room begins a new epoch, as the disk log
//! does after a lost tail (`SYNC`).
//!
//! The lines are cached here in a [`MemoryHistory`], filled with the room's
//! newest lines when it is first followed: readers are fed from it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Registry, Token};
use serde::{Deserialize, Serialize};

use crate::history::{
    Chunk, Confirmed, Draft, Elsewhere, Epoch, History, Limits, Line, MemoryHistory, News,
    Position, PresenceChange, Refused, Seal, Seq,
};
use crate::log::MAX_SEQ;
use crate::metrics::Exposition;
use crate::redis::{self, Happening, RedisConn, RedisUrl, Reply};

/// Assigns a line its seq and appends it: `KEYS` meta, log; `ARGV` the
/// epoch and head the server knows, the append's number, the line (a
/// draft's JSON), the stream's length, the keys' time to live in ms, the
/// channel, the server's field in meta (`w:<server>`: its last append
/// there). Answers `{"ok", seq}`; `{"dup"}` if this append ran already (a
/// retry); `{"stale"}` if the room is not where the server thinks
/// (another epoch, or behind what it saw): the server syncs first.
///
/// Four calls a line (each one is Redis CPU for every line of every room):
/// the keys' time to live is pushed back on a room's first line and every
/// 64th after it, not on each.
const APPEND: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq', ARGV[8])
if tonumber(ARGV[3]) <= tonumber(meta[3] or '0') then return {'dup'} end
if meta[1] ~= ARGV[1] then return {'stale'} end
local seq = tonumber(meta[2] or '0')
if seq < tonumber(ARGV[2]) then return {'stale'} end
seq = seq + 1
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'd', ARGV[4])
redis.call('HSET', KEYS[1], 'seq', seq, ARGV[8], ARGV[3])
if seq % 64 == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('SPUBLISH', ARGV[7], ARGV[1] .. ' ' .. seq .. ' ' .. ARGV[4])
return {'ok', seq}
"#;

/// Where a room stands, its lines from a seq on, and who is in it: `KEYS`
/// meta, log, servers, members;
/// `ARGV` a fresh epoch (used if one must begin), the epoch and head the
/// server knows, the first seq wanted (0: the newest), how many lines, the
/// keys' time to live in ms (for a room that begins: a room visited and
/// never spoken in does not stay in Redis).
/// A room with no epoch (new, or Redis restarted empty) begins the fresh
/// one; a room whose seq is behind what the server saw in the same epoch
/// (Redis restarted from an older snapshot) begins it too, continuing the
/// old one's seqs, which is noted in `earlier` so that a client up to the
/// last surviving seq goes on seamlessly. Answers `{epoch, seq, earlier,
/// lines, here}`, `here` as `<server> <id> <name>`.
const SYNC: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'earlier')
local epoch, seq, earlier = meta[1], tonumber(meta[2] or '0'), meta[3] or ''
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if top[1] then
  local s = tonumber(string.match(top[1][1], '^0%-(%d+)$') or '0')
  if s > seq then seq = s end
end
local renew = false
if not epoch then
  renew = true
elseif epoch == ARGV[2] and seq < tonumber(ARGV[3]) then
  earlier = earlier .. epoch .. ':' .. seq .. ' '
  if #earlier > 4000 then earlier = string.sub(earlier, string.find(earlier, ' ', #earlier - 4000) + 1) end
  renew = true
end
if renew then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', seq, 'earlier', earlier)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
local from, count = tonumber(ARGV[4]), tonumber(ARGV[5])
if from == 0 then from = seq - count + 1 end
if from < 1 then from = 1 end
local lines = {}
if from <= seq then lines = redis.call('XRANGE', KEYS[2], '0-' .. from, '+', 'COUNT', count) end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local alive = {}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf')) do alive[s] = true end
local here = {}
local all = redis.call('HGETALL', KEYS[4])
for i = 1, #all, 2 do
  local s = string.match(all[i], '^(%S+) ')
  if s and alive[s] then here[#here + 1] = all[i] .. ' ' .. string.sub(all[i + 1], 2) end
end
return {epoch, tostring(seq), earlier, lines, here}
"#;

/// Who came, went or took a name: `KEYS` servers, members, the member's
/// `gone:` key; `ARGV` what (`join`, `leave`, `nick`), the server, the
/// servers' time to live in ms, the channel, the member's id, its name (or
/// empty), and for a leave its resume window in ms: its departure is kept
/// that long, for a resume token on any server ([`SharedHistory::recall`]).
const PRESENCE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local member = ARGV[2] .. ' ' .. ARGV[5]
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
if ARGV[1] == 'leave' then
  redis.call('HDEL', KEYS[2], member)
  redis.call('SET', KEYS[3], 'n' .. ARGV[6], 'PX', ARGV[7])
else
  redis.call('HSET', KEYS[2], member, 'n' .. ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[3]))
redis.call('SPUBLISH', ARGV[4], 'P ' .. ARGV[1] .. ' ' .. member .. ' ' .. ARGV[6])
return 1
"#;

/// A server's heartbeat in a room: `KEYS` servers, members; `ARGV` the
/// server, the servers' time to live in ms, the channel, the resume window
/// in ms, the room's key prefix (`eddy:{room}:`), then (after Redis
/// came back, when it may have lost them) its members' ids and names, in
/// pairs, to add again (each one Redis had lost is announced as a join).
/// Pushes the server's expiry back, one entry whatever
/// its members; finds the servers whose entry expired (they died without a
/// word), and removes their members, saying each one left and keeping its
/// departure for a resume token (`gone:<id>`, in the room's hash tag), as a
/// leave does.
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
for i = 6, #ARGV - 1, 2 do
  local member = ARGV[1] .. ' ' .. ARGV[i]
  if redis.call('HSET', KEYS[2], member, 'n' .. ARGV[i + 1]) == 1 then
    redis.call('SPUBLISH', ARGV[3], 'P join ' .. member .. ' ' .. ARGV[i + 1])
  end
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = 0
if #dead > 0 then
  local is_dead = {}
  for _, s in ipairs(dead) do
    is_dead[s] = true
    redis.call('ZREM', KEYS[1], s)
  end
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local s = string.match(all[i], '^(%S+) ')
    if s and is_dead[s] then
      local id = string.match(all[i], ' (%S+)$')
      redis.call('HDEL', KEYS[2], all[i])
      if id then redis.call('SET', ARGV[5] .. 'gone:' .. id, all[i + 1], 'PX', ARGV[4]) end
      redis.call('SPUBLISH', ARGV[3], 'P leave ' .. all[i] .. ' ' .. string.sub(all[i + 1], 2))
      gone = gone + 1
    end
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[2]))
return gone
"#;

/// How often a server pushes back its presence entry in each room, and
/// looks for expired ones.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);

/// How long a server's presence entry lives without a beat: a server that
/// died without a word is taken for gone this long after its last beat.
pub const PRESENCE_TTL: Duration = Duration::from_secs(6);

/// How many of a room's newest lines are read when it is first followed,
/// and how many a sync or a fill reads at a time.
pub const PAGE_LINES: usize = 500;

/// How long a room nobody here is in stays followed: a member coming
/// straight back (a reload) finds it ready.
const LINGER: Duration = Duration::from_secs(5);

/// Lines received ahead of a hole, per room, beyond which the room is
/// synced afresh instead of holding more.
const MAX_EARLY: usize = 10_000;

/// A command's purpose, for its reply.
#[derive(Debug)]
enum Ask {
    Load(Script),
    Append {
        room: Arc<str>,
        counter: u64,
    },
    Sync {
        room: Arc<str>,
        generation: u64,
    },
    Fill {
        room: Arc<str>,
        generation: u64,
    },
    /// After a lost connection: which of the room's appends ran.
    Writer {
        room: Arc<str>,
    },
    /// Nothing to do with the reply but report an error.
    Quiet,
    /// This server's number (`INCR eddy:servers`): its ids' base.
    ServerNumber,
    /// The resume tokens' key.
    Secret,
    /// Whether a member left a room within its window.
    Recall {
        room: Arc<str>,
        id: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Append,
    Sync,
    Presence,
    Beat,
}

impl Script {
    const ALL: [Script; 4] = [Script::Append, Script::Sync, Script::Presence, Script::Beat];

    fn body(self) -> &'static str {
        match self {
            Script::Append => APPEND,
            Script::Sync => SYNC,
            Script::Presence => PRESENCE,
            Script::Beat => BEAT,
        }
    }
}

/// A line as Redis keeps it: the draft, which every server seals with the
/// seq Redis gave it.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    id: u64,
    #[serde(borrow)]
    text: Cow<'a, str>,
    ts: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    action: bool,
}

/// A line on its way to Redis.
#[derive(Debug)]
struct Outgoing {
    /// This server's number for it in the room (see the `w:` key).
    counter: u64,
    /// Who said it.
    member: u64,
    /// [`Stored`], as JSON.
    stored: String,
}

/// Whether the subscriber follows a room's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    No,
    Asked,
    Yes,
}

/// One room this server follows (it has members there).
#[derive(Debug)]
struct Room {
    name: Arc<str>,
    /// Its keys' common part, hash tag included: `eddy:{room}:`.
    prefix: String,
    channel: Vec<u8>,
    subscription: Subscription,
    /// Known since the first sync.
    epoch: Option<Epoch>,
    earlier: Arc<[(Epoch, Seq)]>,
    /// The highest seq known to exist.
    head: Seq,
    /// The last seq handed to the chat (or cached, before it is ready).
    delivered: Seq,
    /// Lines from the channel ahead of a hole (or while syncing), by seq:
    /// their epoch and their [`Stored`] JSON.
    early: BTreeMap<Seq, (Box<[u8]>, Vec<u8>)>,
    /// Joins, leaves and renames heard while syncing: applied after the
    /// sync's list of who is here, which they may postdate.
    early_presence: Vec<Vec<u8>>,
    /// The room's epoch changed in a way its lines here do not continue:
    /// synced afresh, its members are to be told ([`News::Reset`]).
    reset_pending: bool,
    /// The sync or fill on its way (from [`SharedHistory::generation`]);
    /// replies to older ones, or to a room followed before, are ignored.
    generation: u64,
    syncing: bool,
    filling: bool,
    /// Whether the chat was told it is ready.
    ready: bool,
    /// Appends sent, whose reply has not come, oldest first.
    sent: VecDeque<Outgoing>,
    /// Appends waiting for the room to be synced.
    held: VecDeque<Outgoing>,
    /// Appends whose connection broke before their reply: (number, member).
    unknown: Vec<(u64, u64)>,
    /// Since when nobody here is in it.
    released: Option<Instant>,
    /// Its members here, and their names: what the beat pushes back.
    local: HashMap<u64, Option<Box<str>>>,
    /// Its members on other servers.
    remote: Vec<Elsewhere>,
}

impl Room {
    fn new(name: Arc<str>) -> Room {
        let prefix = key_prefix(&name);
        Room {
            channel: format!("{prefix}live").into_bytes(),
            prefix,
            name,
            subscription: Subscription::No,
            epoch: None,
            earlier: Arc::new([]),
            head: 0,
            delivered: 0,
            early: BTreeMap::new(),
            early_presence: Vec::new(),
            reset_pending: false,
            generation: 0,
            syncing: false,
            filling: false,
            ready: false,
            sent: VecDeque::new(),
            held: VecDeque::new(),
            unknown: Vec::new(),
            released: None,
            local: HashMap::new(),
            remote: Vec::new(),
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// Whether it has appends whose fate is not settled.
    fn busy(&self) -> bool {
        !self.sent.is_empty() || !self.held.is_empty() || !self.unknown.is_empty()
    }
}

/// The common part of `room`'s keys, its hash tag included: `eddy:{room}:`,
/// with `{`, `}` and `%` in the name percent-escaped (a brace would end the
/// hash tag).
fn key_prefix(room: &str) -> String {
    let mut tag = String::with_capacity(room.len());
    for c in room.chars() {
        match c {
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            '%' => tag.push_str("%25"),
            c => tag.push(c),
        }
    }
    format!("eddy:{{{tag}}}:")
}

/// Asks whether `id` left `room` within its window, taking the departure.
fn send_recall(commands: &mut RedisConn<Ask>, room: Arc<str>, id: u64) {
    let key = format!("{}gone:{id}", key_prefix(&room));
    commands.send(Ask::Recall { room, id }, &[b"GETDEL", key.as_bytes()]);
}

/// `duration` in whole milliseconds, at least 1, as Redis's `PX` and
/// `PEXPIRE` take it (0 would mean "now").
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The history shared through Redis (see the module's docs).
pub struct SharedHistory {
    url: RedisUrl,
    /// This process's name in Redis (its `w:` keys): random, per run.
    server: String,
    /// Set by [`History::attach`].
    conns: Option<Conns>,
    /// The scripts' SHA-1s, once loaded (`EVAL` until then).
    shas: [Option<String>; 4],
    /// When the rooms' presence entries are next pushed back.
    next_beat: Instant,
    /// Whether Redis gave this server its number (its ids' base) yet.
    numbered: bool,
    /// The last append number used, over all rooms: with the server's
    /// name, it makes each append unique (the `w:` key keeps a room's last).
    counter: u64,
    /// The last sync or fill started, over all rooms.
    generation: u64,
    /// Whether the next beat sends every member again (Redis came back).
    full_beat: bool,
    /// Departures asked about while Redis was away: asked when it is back.
    recalls: Vec<(Arc<str>, u64)>,
    cache: MemoryHistory,
    rooms: HashMap<Arc<str>, Room>,
    by_channel: HashMap<Vec<u8>, Arc<str>>,
    confirmed: Vec<Confirmed>,
    refused: Vec<Refused>,
    news: Vec<News>,
    seal: Seal,
    /// The stream's `MAXLEN ~` (`--history-lines`).
    stream_lines: usize,
    /// The keys' time to live (`--history-ttl`), in ms.
    ttl_ms: u64,
    /// How long a departure is kept for a resume token (`--resume-window`):
    /// a leave says so itself; a dead server's members are given it by the
    /// beat that finds them gone.
    resume_window: Duration,
    /// Why the command connection is to be dropped, once its replies so far
    /// are handled: a reply that makes no sense.
    broken: Option<String>,
    /// The same, for the subscriber.
    sub_broken: Option<String>,
}

/// The two connections and what they last reported.
struct Conns {
    commands: RedisConn<Ask>,
    subscriber: RedisConn<()>,
    command_tokens: Token,
}

impl fmt::Debug for SharedHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedHistory")
            .field("url", &self.url)
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl SharedHistory {
    /// A history in the Redis at `url`, keeping `limits` in its cache and
    /// in each room's stream, its keys living `ttl` past their last line.
    /// Nothing is connected until [`History::attach`].
    pub fn new(url: RedisUrl, limits: Limits, ttl: Duration, seal: Seal) -> Self {
        SharedHistory {
            url,
            server: Epoch::random().to_string(),
            conns: None,
            shas: [None, None, None, None],
            next_beat: Instant::now(),
            numbered: false,
            counter: 0,
            generation: 0,
            full_beat: false,
            recalls: Vec::new(),
            cache: MemoryHistory::new(limits, seal),
            rooms: HashMap::new(),
            by_channel: HashMap::new(),
            confirmed: Vec::new(),
            refused: Vec::new(),
            news: Vec::new(),
            seal,
            stream_lines: limits.lines,
            ttl_ms: millis(ttl),
            resume_window: crate::config::DEFAULT_RESUME_WINDOW,
            broken: None,
            sub_broken: None,
        }
    }

    /// Keeps the departures of a dead server's members for `window`
    /// (`--resume-window`), as their own leaves would have.
    pub fn with_resume_window(self, window: Duration) -> Self {
        SharedHistory {
            resume_window: window,
            ..self
        }
    }

    fn commands_up(&self) -> bool {
        self.conns.as_ref().is_some_and(|c| c.commands.is_up())
    }

    /// Sends `script` with `keys` and `args`: by its SHA-1 once loaded.
    fn eval(&mut self, ask: Ask, script: Script, keys: &[&str], args: &[&[u8]]) {
        let Some(conns) = &mut self.conns else {
            return;
        };
        let nkeys = keys.len().to_string();
        let sha = self.shas[script as usize].clone();
        let mut words: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        match &sha {
            Some(sha) => words.extend([b"EVALSHA".as_slice(), sha.as_bytes()]),
            None => words.extend([b"EVAL".as_slice(), script.body().as_bytes()]),
        }
        words.push(nkeys.as_bytes());
        words.extend(keys.iter().map(|k| k.as_bytes()));
        words.extend_from_slice(args);
        conns.commands.send(ask, &words);
    }

    /// Begins following `room`: subscribe, then sync once subscribed.
    fn follow(&mut self, name: &str) {
        let name: Arc<str> = name.into();
        let room = Room::new(Arc::clone(&name));
        self.by_channel
            .insert(room.channel.clone(), Arc::clone(&name));
        self.rooms.insert(Arc::clone(&name), room);
        self.subscribe(&name);
    }

    fn subscribe(&mut self, name: &str) {
        let (Some(conns), Some(room)) = (&mut self.conns, self.rooms.get_mut(name)) else {
            return;
        };
        if conns.subscriber.is_up() {
            conns
                .subscriber
                .push_command(&[b"SSUBSCRIBE", &room.channel]);
            room.subscription = Subscription::Asked;
        }
    }

    /// Asks Redis where `room` stands and for its lines since the last one
    /// delivered here (its newest, the first time).
    fn sync(&mut self, name: &str) {
        if !self.commands_up() {
            return;
        }
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if room.subscription != Subscription::Yes {
            return; // once subscribed: no line can fall between the two
        }
        self.generation += 1;
        room.generation = self.generation;
        room.syncing = true;
        room.filling = false;
        let ask = Ask::Sync {
            room: Arc::clone(&room.name),
            generation: room.generation,
        };
        let keys = [
            room.key("meta"),
            room.key("log"),
            room.key("servers"),
            room.key("members"),
        ];
        let known = room.epoch.as_ref().map_or("", Epoch::as_str).to_owned();
        let head = room.delivered.to_string();
        let from = if room.epoch.is_some() {
            (room.delivered + 1).to_string()
        } else {
            "0".to_owned()
        };
        let fresh = Epoch::random();
        let count = PAGE_LINES.to_string();
        let ttl = self.ttl_ms.to_string();
        self.eval(
            ask,
            Script::Sync,
            &[&keys[0], &keys[1], &keys[2], &keys[3]],
            &[
                fresh.as_str().as_bytes(),
                known.as_bytes(),
                head.as_bytes(),
                from.as_bytes(),
                count.as_bytes(),
                ttl.as_bytes(),
            ],
        );
    }

    /// Reads the lines between the last delivered and the highest known,
    /// if there are any and no read is on its way.
    fn fill(&mut self, name: &str) {
        let up = self.commands_up();
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if !up || room.syncing || room.filling || room.delivered >= room.head {
            return;
        }
        room.filling = true;
        let ask = Ask::Fill {
            room: Arc::clone(&room.name),
            generation: room.generation,
        };
        let words: [Vec<u8>; 6] = [
            b"XRANGE".to_vec(),
            room.key("log").into_bytes(),
            format!("0-{}", room.delivered + 1).into_bytes(),
            format!("0-{}", room.head).into_bytes(),
            b"COUNT".to_vec(),
            PAGE_LINES.to_string().into_bytes(),
        ];
        let words: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
        if let Some(conns) = &mut self.conns {
            conns.commands.send(ask, &words);
        }
    }

    /// Sends `line` to be appended to `room`.
    fn send_append(&mut self, name: &str, line: Outgoing) {
        let Some(room) = self.rooms.get(name) else {
            return;
        };
        let Some(epoch) = room.epoch.clone() else {
            return;
        };
        let keys = [room.key("meta"), room.key("log")];
        let writer = format!("w:{}", self.server);
        let (head, counter) = (room.delivered.to_string(), line.counter.to_string());
        let (lines, ttl) = (self.stream_lines.to_string(), self.ttl_ms.to_string());
        let channel = room.channel.clone();
        let ask = Ask::Append {
            room: Arc::clone(&room.name),
            counter: line.counter,
        };
        self.eval(
            ask,
            Script::Append,
            &[&keys[0], &keys[1]],
            &[
                epoch.as_str().as_bytes(),
                head.as_bytes(),
                counter.as_bytes(),
                line.stored.as_bytes(),
                lines.as_bytes(),
                ttl.as_bytes(),
                &channel,
                writer.as_bytes(),
            ],
        );
        if let Some(room) = self.rooms.get_mut(name) {
            room.sent.push_back(line);
        }
    }

    /// Hands the line `seq` of `room` to the chat (or only to the cache,
    /// before the room is ready: a newcomer is fed from there).
    fn deliver(&mut self, name: &str, seq: Seq, stored: &[u8]) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if seq <= room.delivered {
            return;
        }
        if seq > room.delivered + 1 && room.ready {
            warn!(
                "room {name}: lines {}..={} are no longer in Redis; they are skipped",
                room.delivered + 1,
                seq - 1
            );
        }
        room.delivered = seq;
        room.head = room.head.max(seq);
        let ready = room.ready;
        let Some(stored) = std::str::from_utf8(stored)
            .ok()
            .and_then(|s| serde_json::from_str::<Stored<'_>>(s).ok())
        else {
            warn!("room {name}: line {seq} from Redis is not a line; skipped");
            return;
        };
        let draft = Draft {
            id: stored.id,
            text: &stored.text,
            ts: stored.ts,
            name: stored.name.as_deref(),
            action: stored.action,
        };
        let line = Line {
            seq,
            frame: (self.seal)(seq, &draft),
        };
        let shared = self.cache.keep(name, line.clone());
        if ready {
            self.confirmed.push(Confirmed { room: shared, line });
        }
    }

    /// Delivers the lines held ahead of a hole that now follow on.
    fn drain_early(&mut self, name: &str) {
        loop {
            let Some(room) = self.rooms.get_mut(name) else {
                return;
            };
            let Some(entry) = room.early.first_entry() else {
                return;
            };
            let seq = *entry.key();
            let ours = room.epoch.as_ref().map(|e| e.as_str().as_bytes()) == Some(&*entry.get().0);
            if seq <= room.delivered || !ours {
                entry.remove(); // had, or of an epoch gone by
                continue;
            }
            if seq > room.delivered + 1 {
                room.head = room.head.max(seq - 1);
                return self.fill(name);
            }
            let (_, stored) = entry.remove();
            self.deliver(name, seq, &stored);
        }
    }

    /// A line published on a room's channel: `<epoch> <seq> <line>`.
    fn on_live(&mut self, channel: &[u8], message: &[u8]) {
        let Some(name) = self.by_channel.get(channel).cloned() else {
            return; // unsubscribed meanwhile
        };
        if let Some(change) = message.strip_prefix(b"P ") {
            if let Some(room) = self.rooms.get_mut(&name)
                && room.syncing
            {
                room.early_presence.push(change.to_vec());
                return;
            }
            return self.on_presence(&name, change);
        }
        let mut parts = message.splitn(3, |&b| b == b' ');
        let (Some(epoch), Some(seq), Some(stored)) = (parts.next(), parts.next(), parts.next())
        else {
            return warn!("room {name}: a message on its channel is not a line; ignored");
        };
        let seq = std::str::from_utf8(seq)
            .ok()
            .and_then(|s| s.parse::<Seq>().ok());
        let Some(seq) = seq.and_then(valid_seq) else {
            return warn!("room {name}: a message on its channel has no seq; ignored");
        };
        let Some(room) = self.rooms.get_mut(&name) else {
            return;
        };
        let same_epoch = room.epoch.as_ref().map(|e| e.as_str().as_bytes()) == Some(epoch);
        if room.early.len() >= MAX_EARLY {
            // Too much ahead of a hole: read it from the stream instead.
            room.early.clear();
            if !room.syncing && room.epoch.is_some() {
                return self.sync(&name);
            }
        }
        if room.syncing || room.epoch.is_none() {
            room.early.insert(seq, (epoch.into(), stored.to_vec()));
            return;
        }
        if !same_epoch {
            // Another epoch began: sync, and keep the line for after.
            room.early.clear();
            room.early.insert(seq, (epoch.into(), stored.to_vec()));
            return self.sync(&name);
        }
        if seq <= room.delivered {
            return;
        }
        if seq == room.delivered + 1 {
            self.deliver(&name, seq, stored);
            return self.drain_early(&name);
        }
        room.early.insert(seq, (epoch.into(), stored.to_vec()));
        room.head = room.head.max(seq - 1);
        self.fill(&name);
    }

    /// A join, leave or rename on a room's channel: `<what> <server> <id>
    /// <name>`. Its own are ignored: the chat told its members already.
    fn on_presence(&mut self, name: &Arc<str>, change: &[u8]) {
        let Some(space) = change.iter().position(|&b| b == b' ') else {
            return;
        };
        let (what, entry) = (&change[..space], &change[space + 1..]);
        let Some(who) = member(entry) else {
            return warn!("room {name}: a presence message makes no sense; ignored");
        };
        if *who.server == *self.server {
            return;
        }
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let at = room
            .remote
            .iter()
            .position(|m| m.id == who.id && m.server == who.server);
        let news = match (what, at) {
            (b"join", None) => {
                room.remote.push(who.clone());
                News::Joined(Arc::clone(name), who)
            }
            (b"leave", Some(at)) => {
                room.remote.swap_remove(at);
                News::Left(Arc::clone(name), who)
            }
            (b"nick", Some(at)) => {
                let was = std::mem::replace(&mut room.remote[at].name, who.name.clone());
                News::Renamed(Arc::clone(name), who, was)
            }
            // A join seen twice, or a leave of someone not seen: nothing new.
            _ => return,
        };
        if room.ready {
            self.news.push(news);
        }
    }

    /// Pushes back the presence entries of this server's members in every
    /// room it follows, and lets Redis find the expired ones of others.
    fn beat(&mut self) {
        if !self.commands_up() {
            return;
        }
        // After Redis came back (perhaps empty), the members are sent again.
        let full = std::mem::take(&mut self.full_beat);
        let window = millis(self.resume_window).to_string();
        let ttl = millis(PRESENCE_TTL).to_string();
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            let Some(room) = self.rooms.get(&name) else {
                continue;
            };
            let keys = [room.key("servers"), room.key("members")];
            let channel = room.channel.clone();
            let members: Vec<(String, String)> = if full {
                room.local
                    .iter()
                    .map(|(id, name)| (id.to_string(), name.as_deref().unwrap_or("").to_owned()))
                    .collect()
            } else {
                Vec::new()
            };
            let server = self.server.clone();
            let prefix = room.prefix.clone();
            let mut args: Vec<&[u8]> = vec![
                server.as_bytes(),
                ttl.as_bytes(),
                &channel,
                window.as_bytes(),
                prefix.as_bytes(),
            ];
            for (id, name) in &members {
                args.extend([id.as_bytes(), name.as_bytes()]);
            }
            self.eval(Ask::Quiet, Script::Beat, &[&keys[0], &keys[1]], &args);
        }
    }

    /// The reply to a sync: where the room stands, and its lines from the
    /// seq asked for.
    fn on_synced(&mut self, name: &str, reply: Reply) {
        let Some((epoch, seq, earlier, lines, here)) = sync_reply(reply) else {
            // Not Redis, or not our script: reconnect (after a backoff)
            // rather than ask again at once.
            self.broken = Some(format!("room {name}: a sync's reply makes no sense"));
            return;
        };
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        room.syncing = false;
        let server = self.server.as_str();
        room.remote = here.into_iter().filter(|m| &*m.server != server).collect();
        // Joins and leaves heard meanwhile come after that list.
        let heard = std::mem::take(&mut room.early_presence);
        let room_name = Arc::clone(&room.name);
        for change in heard {
            self.on_presence(&room_name, &change);
        }
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let Some(old) = room.epoch.clone() else {
            // The first sync (or the first after a reset): the cache begins
            // from the newest lines, and the room is ready.
            let start = lines.first().map_or(seq, |(first, _)| first - 1);
            debug!(
                "room {name}: followed, epoch {epoch}, head {seq}, {} members on other servers",
                room.remote.len()
            );
            room.epoch = Some(epoch.clone());
            room.earlier = earlier;
            room.head = seq;
            room.delivered = start;
            room.ready = false;
            self.cache.restore(name, epoch, start);
            for (seq, stored) in &lines {
                self.deliver(name, *seq, stored);
            }
            let Some(room) = self.rooms.get_mut(name) else {
                return;
            };
            room.ready = true;
            let reset = std::mem::take(&mut room.reset_pending);
            let room_name = Arc::clone(&room.name);
            self.news.push(if reset {
                News::Reset(room_name)
            } else {
                News::Ready(room_name)
            });
            return self.after_sync(name);
        };
        let position = Position {
            epoch: epoch.clone(),
            first: 1,
            head: seq,
            earlier: earlier.clone(),
        };
        if !position.continues(old.as_str(), room.delivered) {
            // Redis lost lines seen here (restarted empty, or from an older
            // snapshot): the room begins again from Redis's newest lines,
            // and its members here are told. The lines just read began at
            // this server's old numbering: read the newest instead.
            warn!("room {name}: Redis lost lines seen here; epoch {epoch} begins");
            room.epoch = None;
            room.ready = false;
            room.reset_pending = true;
            room.early.clear();
            return self.sync(name);
        }
        room.epoch = Some(epoch);
        room.earlier = earlier;
        room.head = room.head.max(seq);
        for (seq, stored) in &lines {
            self.deliver(name, *seq, stored);
        }
        self.after_sync(name);
    }

    /// Once a room is synced: the lines sent before it was known (or
    /// returned as stale) go out, and what came on the channel meanwhile
    /// is delivered, or the hole before it filled.
    fn after_sync(&mut self, name: &str) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let held: Vec<Outgoing> = room.held.drain(..).collect();
        for line in held {
            self.send_append(name, line);
        }
        self.drain_early(name);
        self.fill(name);
    }

    /// The reply to a fill: the lines asked for, or as many as fit a page.
    fn on_filled(&mut self, name: &str, reply: Reply) {
        let Some(lines) = entries(&reply) else {
            // An error (a busy Redis) or nonsense: nothing is known of the
            // hole. Reconnect and sync again, rather than skip it.
            self.broken = Some(format!(
                "room {name}: a fill's reply makes no sense: {reply:?}"
            ));
            return;
        };
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        room.filling = false;
        let before = room.delivered;
        for (seq, stored) in &lines {
            self.deliver(name, *seq, stored);
        }
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if room.delivered == before && room.delivered < room.head {
            // Those lines are gone from the stream (trimmed): go on past them.
            let next = room.early.keys().next().copied();
            room.delivered = match next {
                Some(next) => next - 1,
                None => room.head,
            };
            let skipped = room.delivered;
            warn!(
                "room {name}: lines {}..={skipped} are no longer in Redis; skipped",
                before + 1
            );
        }
        self.drain_early(name);
        self.fill(name);
    }

    fn on_appended(&mut self, name: &str, counter: u64, reply: Reply) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let Some(position) = room.sent.iter().position(|l| l.counter == counter) else {
            return;
        };
        let Some(line) = room.sent.remove(position) else {
            return;
        };
        let verdict = match &reply {
            Reply::Array(parts) => parts.first().and_then(redis::text).unwrap_or(""),
            Reply::Error(e) => e.as_str(),
            _ => "",
        };
        match verdict {
            // Delivered when it comes back on the channel, in its order.
            "ok" | "dup" => {}
            "stale" => {
                // Not appended: the room moved on. Sync, then send again.
                room.held.push_back(line);
                room.held.make_contiguous().sort_by_key(|l| l.counter);
                self.sync(name);
            }
            e if e.starts_with("NOSCRIPT") => {
                self.shas = [None, None, None, None];
                // In number order, whatever order the refusals came in.
                room.held.push_back(line);
                room.held.make_contiguous().sort_by_key(|l| l.counter);
                self.load_scripts();
                self.sync(name);
            }
            other => {
                warn!("room {name}: Redis refused a line: {other}");
                self.refused.push(Refused {
                    room: Arc::clone(&room.name),
                    id: line.member,
                });
            }
        }
    }

    /// Whether `generation` is `room`'s sync or fill on its way.
    fn is_current(&self, room: &str, generation: u64) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.generation == generation)
    }

    fn load_scripts(&mut self) {
        if let Some(conns) = &mut self.conns {
            for script in Script::ALL {
                conns.commands.send(
                    Ask::Load(script),
                    &[b"SCRIPT", b"LOAD", script.body().as_bytes()],
                );
            }
        }
    }

    /// Everything the command connection reported.
    fn on_commands(&mut self, happened: Vec<Happening<Ask>>) {
        for happening in happened {
            match happening {
                Happening::Up => self.commands_came_up(),
                Happening::Reply(ask, reply) => self.on_reply(ask, reply),
                Happening::Push(_) => {}
                Happening::Down(lost) => self.commands_went_down(lost),
            }
        }
        if let Some(why) = self.broken.take()
            && let Some(conns) = &mut self.conns
        {
            let mut happened = Vec::new();
            conns.commands.fail(&why, &mut happened);
            self.on_commands(happened);
        }
    }

    fn on_reply(&mut self, ask: Ask, reply: Reply) {
        match ask {
            Ask::Load(script) => match redis::text(&reply) {
                Some(sha) if !matches!(reply, Reply::Error(_)) => {
                    self.shas[script as usize] = Some(sha.to_owned());
                }
                _ => warn!("redis: cannot load a script: {reply:?}"),
            },
            Ask::Append { room, counter } => self.on_appended(&room, counter, reply),
            Ask::Sync { room, generation } if self.is_current(&room, generation) => {
                self.on_synced(&room, reply)
            }
            Ask::Fill { room, generation } if self.is_current(&room, generation) => {
                self.on_filled(&room, reply)
            }
            // A reply to a sync or fill since replaced, or of a room no
            // longer followed.
            Ask::Sync { .. } | Ask::Fill { .. } => {}
            Ask::Quiet => {
                if let Reply::Error(e) = reply {
                    warn!("redis: a presence update failed: {e}");
                }
            }
            // Taken once: the ids of members already welcomed must not move.
            Ask::ServerNumber if self.numbered => {}
            Ask::ServerNumber => match redis::number(&reply) {
                Some(n) => {
                    self.numbered = true;
                    // 2^20 - 1 bases of 2^32 ids each, below 2^52: ids stay
                    // exact in JavaScript. Base 0 is a server alone's.
                    let base = (n.unsigned_abs() % ((1 << 20) - 1) + 1) << 32;
                    info!("redis: this server's member ids begin at {}", base + 1);
                    self.news.push(News::IdBase(base));
                }
                None => {
                    self.numbered = true;
                    warn!(
                        "redis: no server number from INCR ({reply:?}): ids begin at a random base"
                    );
                }
            },
            Ask::Secret => {
                let key = redis::text(&reply)
                    .filter(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|k| {
                        Some([
                            u64::from_str_radix(&k[..16], 16).ok()?,
                            u64::from_str_radix(&k[16..], 16).ok()?,
                        ])
                    });
                match key {
                    Some(key) => self.news.push(News::TokenKey(key)),
                    None => warn!(
                        "redis: eddy:secret is not 32 hex digits; resume tokens stay this server's own"
                    ),
                }
            }
            Ask::Recall { room, id } => {
                let left = match &reply {
                    Reply::BulkString(v) => match v.strip_prefix(b"n") {
                        Some(b"") => Some(None),
                        Some(name) => Some(std::str::from_utf8(name).ok().map(Box::from)),
                        None => None,
                    },
                    Reply::Null => None,
                    other => {
                        warn!("room {room}: cannot look up a departure: {other:?}");
                        None
                    }
                };
                self.news.push(News::Recalled { room, id, left });
            }
            Ask::Writer { room } => {
                // None: this server never appended there, or a day passed.
                let last = match reply {
                    Reply::Null => 0,
                    reply => match redis::number(&reply).and_then(|n| u64::try_from(n).ok()) {
                        Some(last) => last,
                        None => {
                            // Unknown still: asked again after the next reconnect.
                            return warn!(
                                "room {room}: cannot tell which lines Redis took: {reply:?}"
                            );
                        }
                    },
                };
                if let Some(r) = self.rooms.get_mut(&room) {
                    for (counter, member) in r.unknown.drain(..) {
                        if counter > last {
                            self.refused.push(Refused {
                                room: Arc::clone(&room),
                                id: member,
                            });
                        }
                    }
                }
            }
        }
    }

    fn commands_came_up(&mut self) {
        self.full_beat = true;
        self.next_beat = Instant::now();
        if let Some(conns) = &mut self.conns {
            if !self.numbered {
                conns
                    .commands
                    .send(Ask::ServerNumber, &[b"INCR", b"eddy:servers"]);
            }
            // The first server to ask sets the key; every server reads it.
            let mut fresh = [0u8; 16];
            crate::random::fill(&mut fresh);
            let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
            conns.commands.send(
                Ask::Quiet,
                &[b"SET", b"eddy:secret", fresh.as_bytes(), b"NX"],
            );
            conns.commands.send(Ask::Secret, &[b"GET", b"eddy:secret"]);
            for (room, id) in std::mem::take(&mut self.recalls) {
                send_recall(&mut conns.commands, room, id);
            }
        }
        self.load_scripts();
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            let Some(room) = self.rooms.get(&name) else {
                continue;
            };
            if !room.unknown.is_empty() {
                let (meta, writer) = (room.key("meta"), format!("w:{}", self.server));
                if let Some(conns) = &mut self.conns {
                    conns.commands.send(
                        Ask::Writer {
                            room: Arc::clone(&name),
                        },
                        &[b"HGET", meta.as_bytes(), writer.as_bytes()],
                    );
                }
            }
            self.sync(&name);
        }
    }

    fn commands_went_down(&mut self, lost: Vec<Ask>) {
        for ask in lost {
            match ask {
                Ask::Append { room, counter } => {
                    if let Some(r) = self.rooms.get_mut(&room)
                        && let Some(i) = r.sent.iter().position(|l| l.counter == counter)
                        && let Some(line) = r.sent.remove(i)
                    {
                        r.unknown.push((line.counter, line.member));
                    }
                }
                Ask::Sync { room, .. } | Ask::Fill { room, .. } => {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.syncing = false;
                        r.filling = false;
                    }
                }
                Ask::Recall { room, id } => self.recalls.push((room, id)),
                Ask::Load(_)
                | Ask::Writer { .. }
                | Ask::Quiet
                | Ask::ServerNumber
                | Ask::Secret => {}
            }
        }
        // Lines waiting to be sent will not be: their senders are told.
        for room in self.rooms.values_mut() {
            for line in room.held.drain(..) {
                self.refused.push(Refused {
                    room: Arc::clone(&room.name),
                    id: line.member,
                });
            }
        }
    }

    /// Everything the subscriber reported.
    fn on_subscriber(&mut self, happened: Vec<Happening<()>>) {
        self.hear_subscriber(happened);
        if let Some(why) = self.sub_broken.take()
            && let Some(conns) = &mut self.conns
        {
            let mut happened = Vec::new();
            conns.subscriber.fail(&why, &mut happened);
            self.hear_subscriber(happened);
        }
    }

    fn hear_subscriber(&mut self, happened: Vec<Happening<()>>) {
        for happening in happened {
            match happening {
                Happening::Up => {
                    let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
                    for name in names {
                        self.subscribe(&name);
                    }
                }
                Happening::Push(frame) => self.on_push(frame),
                Happening::Reply((), _) => {}
                Happening::Down(_) => {
                    for room in self.rooms.values_mut() {
                        room.subscription = Subscription::No;
                    }
                }
            }
        }
    }

    fn on_push(&mut self, frame: Reply) {
        let Reply::Array(parts) = frame else {
            // A refused SSUBSCRIBE (Redis before 7, an ACL): the rooms
            // asked for would wait for ever. Say so, and start again later.
            if matches!(&frame, Reply::SimpleString(s) if s == b"PONG") {
                // A probe's answer while subscribed to nothing.
                if let Some(conns) = &mut self.conns {
                    conns.subscriber.answered();
                }
            } else if let Reply::Error(e) = &frame {
                self.sub_broken = Some(format!(
                    "the subscriber was refused: {e} (Eddy needs Redis 7 or later, \
                     and SSUBSCRIBE allowed)"
                ));
            } else {
                warn!("redis: the subscriber got {frame:?}; ignored");
            }
            return;
        };
        let kind = parts.first().and_then(redis::text).unwrap_or("");
        let channel = match parts.get(1) {
            Some(Reply::BulkString(c) | Reply::SimpleString(c)) => c.as_slice(),
            _ => return warn!("redis: the subscriber got a {kind:?} without a channel"),
        };
        match (kind, parts.get(2)) {
            ("smessage" | "message", Some(Reply::BulkString(message))) => {
                let channel = channel.to_vec();
                self.on_live(&channel, message);
            }
            ("ssubscribe", _) => {
                let Some(name) = self.by_channel.get(channel).cloned() else {
                    return;
                };
                if let Some(room) = self.rooms.get_mut(&name)
                    && room.subscription == Subscription::Asked
                {
                    room.subscription = Subscription::Yes;
                    self.sync(&name);
                }
            }
            ("sunsubscribe", _) => {}
            ("pong", _) => {
                if let Some(conns) = &mut self.conns {
                    conns.subscriber.answered();
                }
            }
            _ => warn!("redis: the subscriber got an unexpected {kind:?}; ignored"),
        }
    }

    /// Stops following rooms nobody here has been in for [`LINGER`].
    fn unfollow_released(&mut self, now: Instant) {
        let gone: Vec<Arc<str>> = self
            .rooms
            .values()
            .filter(|r| r.released.is_some_and(|t| now >= t + LINGER) && !r.busy())
            .map(|r| Arc::clone(&r.name))
            .collect();
        for name in gone {
            let Some(room) = self.rooms.remove(&name) else {
                continue;
            };
            self.by_channel.remove(&room.channel);
            self.cache.forget(&name);
            if let Some(conns) = &mut self.conns
                && conns.subscriber.is_up()
                && room.subscription != Subscription::No
            {
                conns
                    .subscriber
                    .push_command(&[b"SUNSUBSCRIBE", &room.channel]);
            }
            debug!("room {name}: no longer followed");
        }
    }

    fn flush(&mut self) {
        let Some(conns) = &mut self.conns else {
            return;
        };
        let mut commands = Vec::new();
        let mut subscriber = Vec::new();
        conns.commands.flush(&mut commands);
        conns.subscriber.flush(&mut subscriber);
        self.on_commands(commands);
        self.on_subscriber(subscriber);
    }
}

/// What a fuzz target may hand [`SharedHistory::hear`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Heard {
    /// The reply to a sync of the room.
    Sync,
    /// The reply to a fill.
    Fill,
    /// The reply to the last append sent.
    Append,
    /// The reply to a lookup of the server's last append.
    Writer,
    /// A frame on the subscriber.
    Push,
}

impl SharedHistory {
    /// Hands `reply` to the history as if Redis had sent it for `room`
    /// (followed first if need be): how the fuzz target reaches the code
    /// that reads Redis's replies, with no socket. Not for anything else.
    #[doc(hidden)]
    pub fn hear(&mut self, room: &str, heard: Heard, reply: Reply) {
        if !self.rooms.contains_key(room) {
            self.follow(room);
        }
        let name: Arc<str> = room.into();
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.subscription = Subscription::Yes;
        let generation = r.generation;
        match heard {
            Heard::Sync => self.on_reply(
                Ask::Sync {
                    room: name,
                    generation,
                },
                reply,
            ),
            Heard::Fill => self.on_reply(
                Ask::Fill {
                    room: name,
                    generation,
                },
                reply,
            ),
            Heard::Append => {
                let counter = r.sent.back().map_or(0, |l| l.counter);
                self.on_reply(
                    Ask::Append {
                        room: name,
                        counter,
                    },
                    reply,
                );
            }
            Heard::Writer => self.on_reply(Ask::Writer { room: name }, reply),
            Heard::Push => self.on_push(reply),
        }
        self.broken = None;
    }
}

/// A sync's reply: where the room stands, its lines, who is in it.
type Synced = (
    Epoch,
    Seq,
    Arc<[(Epoch, Seq)]>,
    Vec<(Seq, Vec<u8>)>,
    Vec<Elsewhere>,
);

/// A sync's reply: `{epoch, seq, earlier, lines, here}`.
fn sync_reply(reply: Reply) -> Option<Synced> {
    let Reply::Array(parts) = reply else {
        return None;
    };
    let [epoch, seq, earlier, lines, Reply::Array(here)] = parts.as_slice() else {
        return None;
    };
    let here = here
        .iter()
        .filter_map(|entry| member(redis::text(entry)?.as_bytes()))
        .collect();
    let epoch = redis::text(epoch).filter(|e| !e.is_empty())?;
    let seq = Seq::try_from(redis::number(seq)?).ok()?;
    let seq = (seq == 0).then_some(0).or_else(|| valid_seq(seq))?;
    let earlier: Arc<[(Epoch, Seq)]> = redis::text(earlier)?
        .split_whitespace()
        .filter_map(|pair| {
            let (epoch, last) = pair.split_once(':')?;
            Some((Epoch::from(epoch.to_owned()), last.parse().ok()?))
        })
        .collect();
    Some((
        Epoch::from(epoch.to_owned()),
        seq,
        earlier,
        entries(lines)?,
        here,
    ))
}

/// `seq` if it can be a line's (1 to [`MAX_SEQ`]): nothing Redis says can
/// make the arithmetic on seqs overflow.
fn valid_seq(seq: Seq) -> Option<Seq> {
    (1..=MAX_SEQ).contains(&seq).then_some(seq)
}

/// A presence entry, `<server> <id> <name>` (the name empty if none).
fn member(entry: &[u8]) -> Option<Elsewhere> {
    let entry = std::str::from_utf8(entry).ok()?;
    let mut parts = entry.splitn(3, ' ');
    let (server, id) = (parts.next()?, parts.next()?.parse().ok()?);
    let name = parts.next().filter(|n| !n.is_empty()).map(Box::from);
    Some(Elsewhere {
        server: server.into(),
        id,
        name,
    })
}

/// Stream entries (`XRANGE`'s reply): each `0-<seq>` and its line.
fn entries(reply: &Reply) -> Option<Vec<(Seq, Vec<u8>)>> {
    let Reply::Array(entries) = reply else {
        return None;
    };
    let mut lines = Vec::with_capacity(entries.len());
    for entry in entries {
        let Reply::Array(parts) = entry else {
            return None;
        };
        let [id, Reply::Array(fields)] = parts.as_slice() else {
            return None;
        };
        let seq = redis::text(id)?.strip_prefix("0-")?.parse().ok()?;
        let seq = valid_seq(seq)?;
        let stored = match fields.as_slice() {
            [_, Reply::BulkString(stored)] => stored.clone(),
            _ => return None,
        };
        lines.push((seq, stored));
    }
    Some(lines)
}

impl History for SharedHistory {
    fn write_metrics(&self, out: &mut Exposition) {
        self.cache.write_memory_metrics(out);
        if let Some(conns) = &self.conns {
            redis::write_metrics(
                &[
                    ("commands", conns.commands.stats()),
                    ("subscriber", conns.subscriber.stats()),
                ],
                out,
            );
        }
    }

    fn readiness(&self) -> Result<(), String> {
        let Some(conns) = &self.conns else {
            return Err("not connected to Redis yet".into());
        };
        if !conns.commands.is_up() {
            return Err("Redis unreachable: the commands connection is down".into());
        }
        if !conns.subscriber.is_up() {
            return Err("Redis unreachable: the subscriber connection is down".into());
        }
        Ok(())
    }

    fn position(&mut self, room: &str) -> Option<Position> {
        let Some(r) = self.rooms.get_mut(room) else {
            self.follow(room);
            return None;
        };
        r.released = None;
        if !r.ready {
            return None;
        }
        let epoch = r.epoch.clone()?;
        let earlier = Arc::clone(&r.earlier);
        let cached = self.cache.read_from(room, 1, 0);
        let first = match cached.gap {
            Some((_, to)) => to + 1,
            None if cached.lines.is_empty() => cached.head + 1,
            None => 1,
        };
        Some(Position {
            epoch,
            first,
            head: cached.head,
            earlier,
        })
    }

    fn append(&mut self, room: &str, draft: Draft<'_>) {
        let refuse = |this: &mut Self| {
            this.refused.push(Refused {
                room: room.into(),
                id: draft.id,
            })
        };
        if !self.commands_up() {
            return refuse(self); // known at once: nothing reaches Redis
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return refuse(self); // nobody here is in it
        };
        let stored = Stored {
            id: draft.id,
            text: Cow::Borrowed(draft.text),
            ts: draft.ts,
            name: draft.name.map(Cow::Borrowed),
            action: draft.action,
        };
        let Ok(stored) = serde_json::to_string(&stored) else {
            return refuse(self);
        };
        self.counter += 1;
        let line = Outgoing {
            counter: self.counter,
            member: draft.id,
            stored,
        };
        if r.syncing || !r.ready {
            r.held.push_back(line);
        } else {
            self.send_append(room, line);
        }
    }

    fn take_confirmed(&mut self, into: &mut Vec<Confirmed>) {
        into.append(&mut self.confirmed);
    }

    fn commit(&mut self) {
        self.flush();
    }

    fn take_refused(&mut self, into: &mut Vec<Refused>) {
        into.append(&mut self.refused);
    }

    fn take_news(&mut self, into: &mut Vec<News>) {
        into.append(&mut self.news);
    }

    fn recall(&mut self, room: &str, id: u64) {
        let room: Arc<str> = room.into();
        match &mut self.conns {
            Some(conns) if conns.commands.is_up() => send_recall(&mut conns.commands, room, id),
            _ => self.recalls.push((room, id)),
        }
    }

    fn announce(&mut self, room: &str, change: PresenceChange<'_>) {
        let up = self.commands_up();
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let (what, id, name, window) = match change {
            PresenceChange::Join { id, name } => {
                r.local.insert(id, name.map(Box::from));
                ("join", id, name.unwrap_or(""), Duration::ZERO)
            }
            PresenceChange::Leave { id, name, window } => {
                r.local.remove(&id);
                ("leave", id, name.unwrap_or(""), window)
            }
            PresenceChange::Rename { id, name } => {
                r.local.insert(id, Some(name.into()));
                ("nick", id, name, Duration::ZERO)
            }
        };
        // While Redis is away, the next beat after it is back adds them.
        if !up {
            return;
        }
        let keys = [
            r.key("servers"),
            r.key("members"),
            r.key(&format!("gone:{id}")),
        ];
        let channel = r.channel.clone();
        let ttl = millis(PRESENCE_TTL).to_string();
        let window = millis(window).to_string();
        let id = id.to_string();
        let server = self.server.clone();
        self.eval(
            Ask::Quiet,
            Script::Presence,
            &[&keys[0], &keys[1], &keys[2]],
            &[
                what.as_bytes(),
                server.as_bytes(),
                ttl.as_bytes(),
                &channel,
                id.as_bytes(),
                name.as_bytes(),
                window.as_bytes(),
            ],
        );
    }

    fn elsewhere(&self, room: &str) -> &[Elsewhere] {
        self.rooms.get(room).map_or(&[], |r| &r.remote)
    }

    fn release(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.released = Some(Instant::now());
        }
    }

    fn read_from(&self, room: &str, from: Seq, max_bytes: usize) -> Chunk {
        self.cache.read_from(room, from, max_bytes)
    }

    fn expire_room(&mut self, _room: &str, _cutoff: Instant) -> bool {
        false // Redis forgets a room by its keys' time to live
    }

    fn expire_rooms(&mut self, _cutoff: Instant, _keep: &dyn Fn(&str) -> bool) -> usize {
        0
    }

    fn attach(&mut self, registry: &Registry, tokens: &[Token]) -> io::Result<()> {
        let [commands, subscriber, ..] = *tokens else {
            return Err(io::Error::other("the Redis history needs two tokens"));
        };
        info!(
            "history in Redis at {} (this server is {} there)",
            self.url, self.server
        );
        self.conns = Some(Conns {
            commands: RedisConn::new(
                "commands",
                self.url.clone(),
                registry.try_clone()?,
                commands,
                false,
            ),
            subscriber: RedisConn::new(
                "subscriber",
                self.url.clone(),
                registry.try_clone()?,
                subscriber,
                true,
            ),
            command_tokens: commands,
        });
        Ok(())
    }

    fn source_ready(&mut self, token: Token) {
        let Some(conns) = &mut self.conns else {
            return;
        };
        if token == conns.command_tokens {
            let mut happened = Vec::new();
            conns.commands.ready(&mut happened);
            self.on_commands(happened);
        } else {
            let mut happened = Vec::new();
            conns.subscriber.ready(&mut happened);
            self.on_subscriber(happened);
        }
    }

    fn tick(&mut self, now: Instant) {
        let Some(conns) = &mut self.conns else {
            return;
        };
        let mut commands = Vec::new();
        let mut subscriber = Vec::new();
        conns.commands.tick(now, &mut commands);
        conns.subscriber.tick(now, &mut subscriber);
        self.on_commands(commands);
        self.on_subscriber(subscriber);
        self.unfollow_released(now);
        if now >= self.next_beat {
            self.next_beat = now + BEAT_EVERY;
            self.beat();
            // A subscriber gets no replies to time out: it is asked for a
            // pong, so that a dead one is found as soon as a command's is.
            if let Some(conns) = &mut self.conns {
                conns.subscriber.probe();
            }
        }
        // What was queued outside a turn's commit (a client cut off after
        // it) goes now.
        self.flush();
    }

    fn next_tick(&self) -> Option<Instant> {
        let conns = self.conns.as_ref()?;
        let linger = self
            .rooms
            .values()
            .filter_map(|r| r.released.map(|t| t + LINGER))
            .min();
        if conns.commands.has_output() || conns.subscriber.has_output() {
            return Some(Instant::now()); // queued after the turn's commit
        }
        let beat = (!self.rooms.is_empty()).then_some(self.next_beat);
        [
            conns.commands.next_tick(),
            conns.subscriber.next_tick(),
            linger,
            beat,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(seq: Seq, draft: &Draft<'_>) -> tungstenite::Bytes {
        crate::ws::encode_text_frame(&format!("{seq}:{}", draft.text))
    }

    fn history() -> SharedHistory {
        let limits = Limits {
            lines: 100,
            bytes: 1 << 20,
            memory: 1 << 22,
        };
        let url = "redis://127.0.0.1:1".parse().unwrap();
        SharedHistory::new(url, limits, Duration::from_secs(60), seal)
    }

    fn bulk(text: &str) -> Reply {
        Reply::BulkString(text.as_bytes().to_vec())
    }

    fn stored(text: &str) -> String {
        format!(r#"{{"id":7,"text":"{text}","ts":1}}"#)
    }

    fn entry(seq: Seq) -> Reply {
        let line = stored(&format!("line {seq}"));
        Reply::Array(vec![
            bulk(&format!("0-{seq}")),
            Reply::Array(vec![bulk("d"), bulk(&line)]),
        ])
    }

    fn synced(epoch: &str, head: Seq, lines: std::ops::RangeInclusive<Seq>) -> Reply {
        Reply::Array(vec![
            bulk(epoch),
            bulk(&head.to_string()),
            bulk(""),
            Reply::Array(lines.map(entry).collect()),
            Reply::Array(vec![]),
        ])
    }

    fn live(epoch: &str, seq: Seq) -> Reply {
        let message = format!("{epoch} {seq} {}", stored(&format!("line {seq}")));
        Reply::Array(vec![
            bulk("smessage"),
            bulk("eddy:{lobby}:live"),
            bulk(&message),
        ])
    }

    /// The seqs of the lines handed to the chat since the last call.
    fn confirmed(history: &mut SharedHistory) -> Vec<Seq> {
        let mut lines = Vec::new();
        history.take_confirmed(&mut lines);
        lines.iter().map(|c| c.line.seq).collect()
    }

    const EPOCH: &str = "abcdefghjkmnpqrs";

    #[test]
    fn a_room_is_known_once_synced_and_its_cache_holds_the_newest_lines() {
        let mut h = history();
        assert_eq!(h.position("lobby"), None, "asking Redis first");
        h.hear("lobby", Heard::Sync, synced(EPOCH, 3, 1..=3));
        let mut news = Vec::new();
        h.take_news(&mut news);
        assert_eq!(news, [News::Ready("lobby".into())]);
        let position = h.position("lobby").unwrap();
        assert_eq!(
            (position.epoch.as_str(), position.first, position.head),
            (EPOCH, 1, 3)
        );
        assert_eq!(
            confirmed(&mut h),
            [0; 0],
            "the newest lines are for newcomers, not news"
        );
        assert_eq!(h.read_from("lobby", 2, usize::MAX).lines.len(), 2);
    }

    #[test]
    fn a_hole_is_filled_from_the_stream_before_later_lines_go_out() {
        let mut h = history();
        h.hear("lobby", Heard::Sync, synced(EPOCH, 3, 1..=3));
        h.hear("lobby", Heard::Push, live(EPOCH, 4));
        assert_eq!(confirmed(&mut h), [4]);
        // 5 and 6 were missed: 7 waits for them.
        h.hear("lobby", Heard::Push, live(EPOCH, 7));
        assert_eq!(confirmed(&mut h), [0; 0]);
        h.hear("lobby", Heard::Push, live(EPOCH, 8));
        assert_eq!(confirmed(&mut h), [0; 0]);
        h.hear("lobby", Heard::Fill, Reply::Array(vec![entry(5), entry(6)]));
        assert_eq!(confirmed(&mut h), [5, 6, 7, 8], "in order, once");
        // A line heard twice (a retry, a catch-up) is not delivered twice.
        h.hear("lobby", Heard::Push, live(EPOCH, 8));
        h.hear("lobby", Heard::Push, live(EPOCH, 9));
        assert_eq!(confirmed(&mut h), [9]);
    }

    #[test]
    fn a_fill_that_fails_skips_nothing() {
        let mut h = history();
        h.hear("lobby", Heard::Sync, synced(EPOCH, 3, 1..=3));
        h.hear("lobby", Heard::Push, live(EPOCH, 6));
        h.hear(
            "lobby",
            Heard::Fill,
            Reply::Error("BUSY a script is running".into()),
        );
        assert_eq!(confirmed(&mut h), [0; 0], "4 and 5 are still wanted");
        h.hear("lobby", Heard::Fill, Reply::Array(vec![entry(4), entry(5)]));
        assert_eq!(confirmed(&mut h), [4, 5, 6]);
    }

    #[test]
    fn lines_the_stream_no_longer_has_are_skipped_with_a_warning_not_waited_for() {
        let mut h = history();
        h.hear("lobby", Heard::Sync, synced(EPOCH, 3, 1..=3));
        h.hear("lobby", Heard::Push, live(EPOCH, 9));
        // The stream was trimmed past 4..=8: a well-formed reply without them.
        h.hear("lobby", Heard::Fill, Reply::Array(vec![]));
        assert_eq!(confirmed(&mut h), [9]);
    }

    #[test]
    fn a_line_of_another_epoch_is_held_and_the_room_synced_afresh() {
        let mut h = history();
        h.hear("lobby", Heard::Sync, synced(EPOCH, 3, 1..=3));
        h.hear("lobby", Heard::Push, live("zyxwvtsrqpnmkjhg", 1));
        assert_eq!(confirmed(&mut h), [0; 0], "not delivered as this epoch's");
        // Redis restarted empty: nothing of the old epoch survives, so the
        // room is synced again from the newest lines and its members reset.
        h.hear("lobby", Heard::Sync, synced("zyxwvtsrqpnmkjhg", 1, 1..=1));
        h.hear("lobby", Heard::Sync, synced("zyxwvtsrqpnmkjhg", 1, 1..=1));
        let mut news = Vec::new();
        h.take_news(&mut news);
        assert_eq!(news.last(), Some(&News::Reset("lobby".into())), "{news:?}");
        let position = h.position("lobby").unwrap();
        assert_eq!(
            (position.epoch.as_str(), position.head),
            ("zyxwvtsrqpnmkjhg", 1)
        );
    }

    #[test]
    fn replies_that_make_no_sense_change_nothing_and_never_panic() {
        let mut h = history();
        h.hear("lobby", Heard::Sync, synced(EPOCH, 3, 1..=3));
        for nonsense in [
            Reply::Integer(-1),
            Reply::Array(vec![bulk("0-0"), bulk("x")]),
            Reply::Array(vec![entry(4), bulk("not an entry")]),
            synced(EPOCH, u64::MAX, 1..=1),
            Reply::Array(vec![
                bulk("smessage"),
                bulk("eddy:{lobby}:live"),
                bulk("no seq"),
            ]),
            Reply::Array(vec![
                bulk("smessage"),
                bulk("eddy:{lobby}:live"),
                bulk(&format!("{EPOCH} 0 x")),
            ]),
        ] {
            for heard in [
                Heard::Sync,
                Heard::Fill,
                Heard::Append,
                Heard::Writer,
                Heard::Push,
            ] {
                h.hear("lobby", heard, nonsense.clone());
            }
        }
        assert_eq!(confirmed(&mut h), [0; 0]);
        assert_eq!(h.position("lobby").unwrap().head, 3);
    }
}
