//! [`ChatRoom`]: the chat protocol, its rooms and their memory; no sockets.
//!
//! The chat knows connections only by [`ConnId`] and speaks only through an
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
//! * **Rooms.** `/soc?room=NAME` joins the room `NAME` (folded to lower
//!   case), `/soc` the room [`LOBBY`]. A room is a group of the server's
//!   ([`crate::groups`]): the server keeps who is in it; the chat keeps
//!   what it says. Lines, joins, leaves, history, `seq` and epoch are per
//!   room. A room nobody has spoken in for `--history-ttl` is forgotten.
//! * **Lines** get the room's next `seq` and the time they were accepted,
//!   `ts` (and the speaker's `name`, `action` for `/me`); a line goes into
//!   the room's [`History`] and is broadcast when the history confirms it.
//! * **The welcome** tells the newcomer its `id`, the history's `epoch`
//!   and `head`, the room, who is there, and a `resume` token. A newcomer
//!   then gets the last `--replay` lines, a client that resumes
//!   (`?since=S&epoch=E`) every line after `S`: from history, at its
//!   socket's pace, through the server's feed ([`crate::feed`]), then a
//!   `caught_up` notice with who is there now, then live lines. A stretch
//!   the history no longer holds is named in a `gap` notice; a position from
//!   another epoch gets a `reset` notice, and the client is then treated as
//!   a newcomer.
//! * **Names and commands.** `?name=` and `/nick` set a display name (a
//!   label: not unique; the id is the identity); `/who`, `/me`, and `//` for
//!   a line that starts with `/`.
//! * **Coming back.** A connection that presents its `resume` token again
//!   within `--resume-window` gets its id and name back; if its old
//!   connection is still open (half-open: the server has not noticed yet),
//!   the old one is closed quietly, and the room hears no leave or join.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::info;
use mio::{Registry, Token};
use serde::Serialize;
use tungstenite::Bytes;

use crate::config::Config;
use crate::datadir::{DataDirError, MemberIds};
use crate::disk::DiskHistory;
use crate::feed::FeedNotice;
use crate::groups::{GroupId, Groups};
use crate::handler::{CloseCode, ConnId, Outbox, Refusal, Request, Routes, WebSocketHandler};
use crate::history::{
    Confirmed, Draft, History, Limits, MemoryHistory, News, Position, PresenceChange, Refused,
    RoomHistory, Seq,
};
use crate::metrics::Exposition;
use crate::rate::{Bucket, RateLimit, Verdict};
use crate::shared::SharedHistory;
use crate::{http, ws};

/// The chat's routes: [`ChatRoom`] at `/soc` ([`http::WEBSOCKET_PATH`]), as
/// `config` describes it. What `eddy` serves. With a
/// [`Config::data_dir`], its history is opened there (locked, recovered):
/// an error says why it cannot be.
pub fn routes(config: &Config) -> Result<Routes, DataDirError> {
    Ok(Routes::new().route(http::WEBSOCKET_PATH, ChatRoom::open(config)?))
}

/// The newcomer's greeting, as in the tutorial.
pub const WELCOME: &str = "Welcome to WebSocket";

/// What a client hears when a line of its was over the rate limit.
pub const TOO_FAST: &str = "You are sending too fast: that line was not delivered.";

/// The close reason for a client that kept flooding.
pub const FLOODING_REASON: &str = "flooding: far over the rate limit";

/// What a client hears when the history could not keep a line of its (a
/// full disk, say): nobody got it.
pub const NOT_KEPT: &str = "Your line was not delivered: the room's history cannot be written just now. Try again shortly.";

/// What a client hears when it has every line up to the head.
pub const NOT_READY: &str = "Your line was not delivered: the room is still being fetched from the chat's store. Wait for the welcome.";

/// Told to each sender when the chat's store (Redis) is out of reach.
pub const UNREACHABLE: &str = "Your line was not delivered: the chat's store (Redis) is unreachable just now. Try again shortly.";

/// Told when a member catches up after a replay or a resume.
pub const CAUGHT_UP: &str = "You are up to date.";

/// What a client hears when the position it resumed from belongs to
/// another run of the room's history (or lies beyond it).
pub const RESET: &str = "The room's history began again: earlier lines are gone.";

/// What a client hears when the resume token it presented cannot be
/// honoured (another room's, expired, or from before a restart).
pub const RESUME_REFUSED: &str =
    "Your earlier session could not be resumed: you join as someone new.";

/// The close reason of a connection replaced by its own comeback.
pub const REPLACED_REASON: &str = "replaced by a newer connection";

/// The room of `/soc` with no `room`: the tutorial's one room.
pub const LOBBY: &str = "lobby";

/// The longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;

/// The longest display name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 32;

/// The most members `/who` lists.
pub const WHO_LIMIT: usize = 1000;

/// The longest epoch a client may send back: ours have
/// [`crate::history::EPOCH_CHARS`] characters; other servers' (after a
/// change of version, say) may differ, and get a reset, not a 400.
pub const MAX_EPOCH_CHARS: usize = 64;

/// The longest resume token a client may send: ours are an id (at most 20
/// digits), a dot and 32 hex digits.
pub const MAX_TOKEN_CHARS: usize = 64;

/// How often, at most, forgotten rooms and expired departures are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How to use the commands, for a client that got one wrong.
const COMMANDS: &str =
    "Commands: /nick NAME, /who, /me ACTION; start a line with // to send one that begins with /.";

/// One member of a room as a presence list shows it.
#[derive(Debug, Serialize)]
pub struct Presence<'a> {
    /// The member's id.
    pub id: u64,
    /// Its display name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

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
    /// who it is, where the room's history stands and who is there.
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
        /// The room's canonical name.
        room: &'a str,
        /// Its members, the newcomer included.
        count: usize,
        /// Who they are, while the room is small (`--presence-list-up-to`).
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<Presence<'a>>>,
        /// The token that gets this id and name back on a reconnect.
        resume: &'a str,
        /// The newcomer's display name, if it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
    },
    /// A line someone typed.
    User {
        /// Who typed it: the member's id, a JSON number.
        id: u64,
        /// The line, as received.
        message: &'a str,
        /// Its place in the room's history.
        seq: Seq,
        /// When the server accepted it, in ms since the Unix epoch.
        ts: u64,
        /// The speaker's display name, if it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        /// `true` for an action (`/me waves`); absent otherwise.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        action: bool,
    },
    /// A notice that marks an event: in the client's stream of lines, or
    /// in the room's presence.
    #[serde(rename = "sys")]
    Event {
        /// What happened, for people.
        message: &'a str,
        /// What happened, for programs: `caught_up`, `gap`, `reset`,
        /// `join`, `leave`, `nick`, `who` or `resume_refused`.
        event: &'a str,
        /// The event's details, after it.
        #[serde(flatten)]
        detail: EventDetail<'a>,
    },
}

/// The details of a [`ChatEvent::Event`], in the order they are written.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventDetail<'a> {
    /// `caught_up`: the last seq the client now has, and who is there now.
    CaughtUp {
        /// The room's head.
        head: Seq,
        /// The room's members.
        count: usize,
        /// Who they are, while the room is small.
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<Presence<'a>>>,
    },
    /// `gap`: the lines it will never get, first and last.
    Range {
        /// The first line missing.
        from: Seq,
        /// The last line missing.
        to: Seq,
    },
    /// `join` and `leave`: who, and how many are there now.
    Presence {
        /// The member's id.
        id: u64,
        /// Its display name, if it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        /// The room's members now.
        count: usize,
    },
    /// `nick`: who, and its new name.
    Nick {
        /// The member's id.
        id: u64,
        /// Its new name.
        name: &'a str,
    },
    /// `who`: the room, how many, and who (up to [`WHO_LIMIT`]).
    Who {
        /// The room's name.
        room: &'a str,
        /// Its members.
        count: usize,
        /// Who they are.
        members: Vec<Presence<'a>>,
    },
    /// `reset`, `resume_refused`: nothing more to say.
    None {},
}

impl ChatEvent<'_> {
    /// Compact JSON for this event.
    pub fn to_json(&self) -> String {
        // Serializing these borrowed strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A plain `sys` notice's JSON.
fn notice(message: &str) -> String {
    ChatEvent::Sys { message }.to_json()
}

/// The frame of a line: how the history seals a draft once it has a seq.
pub fn seal(seq: Seq, draft: &Draft<'_>) -> Bytes {
    let line = ChatEvent::User {
        id: draft.id,
        message: draft.text,
        seq,
        ts: draft.ts,
        name: draft.name,
        action: draft.action,
    };
    ws::encode_text_frame(&line.to_json())
}

/// The JSON of a gap notice.
fn gap_json(from: Seq, to: Seq) -> String {
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

/// The JSON of a join or leave notice (`event` is `join` or `leave`): the
/// member by name if it has one, else by id, and the room's count after it.
fn presence_json(event: &str, member: u64, name: Option<&str>, count: usize) -> String {
    let verb = if event == "join" { "joined" } else { "left" };
    let message = match name {
        Some(name) => format!("{name} has {verb}"),
        None => format!("{member} has {verb}"),
    };
    ChatEvent::Event {
        message: &message,
        event,
        detail: EventDetail::Presence {
            id: member,
            name,
            count,
        },
    }
    .to_json()
}

/// The JSON of a rename: `was` (a name, or the id) is now `name`.
fn renamed_json(member: u64, was: &str, name: &str) -> String {
    let message = format!("{was} is now known as {name}");
    ChatEvent::Event {
        message: &message,
        event: "nick",
        detail: EventDetail::Nick { id: member, name },
    }
    .to_json()
}

/// What `config` says a history keeps: per room, and in memory.
fn history_limits(config: &Config) -> Limits {
    Limits {
        lines: config.history_lines,
        bytes: config.history_bytes,
        memory: config.history_memory,
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

/// What a client asked for in its `/soc` query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The room's canonical name ([`LOBBY`] if none was given).
    pub room: String,
    /// The display name asked for, trimmed.
    pub name: Option<String>,
    /// The position to resume from.
    pub resume: Option<Resume>,
    /// The resume token presented, to get an id and name back.
    pub token: Option<String>,
}

/// Reads `room`, `name`, `since`, `epoch` and `resume` from a query string
/// (other keys are for others). A malformed one is an `Err` with the
/// reason, answered with 400 before the upgrade: a page of ours never sends
/// one, so whoever did can read the status.
pub fn parse_query(query: &str) -> Result<Query, &'static str> {
    let (mut room, mut name, mut since, mut epoch, mut token) = (None, None, None, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*key {
            "room" => &mut room,
            "name" => &mut name,
            "since" => &mut since,
            "epoch" => &mut epoch,
            "resume" => &mut token,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err("room, name, since, epoch and resume may each be given once");
        }
    }
    let room = match room {
        Some(room) => canonical_room(&room)?,
        None => LOBBY.to_owned(),
    };
    let name = name.map(|name| display_name(&name)).transpose()?;
    let resume = match (since, epoch) {
        (None, None) => None,
        (Some(since), Some(epoch)) => Some(parse_resume(&since, &epoch)?),
        _ => return Err("since and epoch go together: give both or neither"),
    };
    let valid_token_char = |b: u8| b.is_ascii_alphanumeric() || b == b'.';
    if let Some(token) = &token
        && (token.is_empty()
            || token.len() > MAX_TOKEN_CHARS
            || !token.bytes().all(valid_token_char))
    {
        return Err("resume must be the resume token of a welcome");
    }
    Ok(Query {
        room,
        name,
        resume,
        token: token.map(|t| t.into_owned()),
    })
}

/// Checks a `since`/`epoch` pair.
fn parse_resume(since: &str, epoch: &str) -> Result<Resume, &'static str> {
    if since.is_empty() || !since.bytes().all(|b| b.is_ascii_digit()) {
        return Err("since must be a whole number: the seq of the last line seen");
    }
    let valid_epoch_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if epoch.is_empty() || epoch.len() > MAX_EPOCH_CHARS || !epoch.bytes().all(valid_epoch_char) {
        return Err("epoch must be the epoch of a welcome: 1-64 letters, digits, - or _");
    }
    Ok(Resume {
        since: since.parse().unwrap_or(Seq::MAX),
        epoch: epoch.to_owned(),
    })
}

/// A room's canonical name: folded to lower case (`Rust` and `rust` are
/// one room), then 1-64 letters or digits of any script, `-`, `_` or `.`,
/// not only dots (a browser turns `/r/..` into `/`). The folded name is
/// what is checked, so the canonical name the welcome gives is always one
/// a client can send back (folding can lengthen a name, or add a mark that
/// is no letter: `İ` folds to `i` and a combining dot).
pub fn canonical_room(raw: &str) -> Result<String, &'static str> {
    let room = raw.to_lowercase();
    let valid = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
    let chars = room.chars().count();
    if chars == 0 || chars > MAX_ROOM_CHARS || !room.chars().all(valid) {
        return Err("room must be 1-64 letters, digits, '-', '_' or '.' (once in lower case)");
    }
    if room.chars().all(|c| c == '.') {
        return Err("room may not be only dots");
    }
    Ok(room)
}

/// A display name, trimmed: 1-32 characters, none of them a control,
/// format (bidi overrides, zero-width), line or paragraph separator
/// (Unicode categories Cc, Cf, Zl, Zp), at least one of them visible.
pub fn display_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err("a name must be 1-32 characters");
    }
    if name.chars().any(is_hidden_or_control) {
        return Err("a name may not hold control, format or line-break characters");
    }
    if !name.chars().any(is_visible) {
        return Err("a name needs at least one visible character");
    }
    Ok(name.to_owned())
}

/// Whether `c` is in Unicode's general category Cc (controls), Cf (format:
/// soft hyphen, bidi marks and overrides, zero-width characters, the byte
/// order mark, tags...), Zl or Zp (line and paragraph separators). Cf is a
/// short, stable list (Unicode 16.0, `DerivedGeneralCategory.txt`);
/// written out here rather than pulling in a table crate for the whole of
/// Unicode's categories.
fn is_hidden_or_control(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let code = u32::from(c);
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}')
        || FORMAT
            .iter()
            .any(|&(low, high)| (low..=high).contains(&code))
}

/// Whether `c` shows as something: not white space, and not one of the
/// characters that render blank though they are letters or symbols.
fn is_visible(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}'
        )
}

/// Now, in milliseconds since the Unix epoch: a line's `ts`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the chat knows of one connection besides where it is (the
/// server's groups keep that) and its id in the protocol (its connection's
/// own but after a resume: [`ChatRoom::member_id`]). Kept only for a
/// connection that has a name or a bucket: an anonymous one with no rate
/// limit costs the chat nothing.
#[derive(Debug, Default)]
struct Person {
    /// Its display name.
    name: Option<Box<str>>,
    /// Its token bucket, while there is a rate limit.
    bucket: Option<Bucket>,
}

/// A newcomer waiting for its room's history to say where the room stands
/// (a shared history asks Redis first): welcomed when it does.
#[derive(Debug)]
struct Greeting {
    id: ConnId,
    room: Arc<str>,
    resume: Option<Resume>,
    /// Its resume token was refused: it is told so after the welcome.
    refused: bool,
    /// Its own earlier connection, closed quietly once it is welcomed.
    replacing: Option<ConnId>,
    /// The member id its token names, if that member left on another
    /// server: whether it may come back is being asked ([`News::Recalled`]).
    claim: Option<u64>,
}

/// Someone who left recently, whose id and name a resume can take back.
#[derive(Debug)]
struct Departed {
    room: Arc<str>,
    name: Option<Box<str>>,
    /// Until when it can come back (`--resume-window`).
    until: Instant,
}

/// 128 random bits: the resume tokens' key of a server alone.
fn random_key() -> [u64; 2] {
    [crate::random::u64(), crate::random::u64()]
}

/// Where the member ids of a server sharing its rooms through Redis begin:
/// a random multiple of 2^32 below 2^52 (so ids stay exact in JavaScript),
/// drawn per run, so that servers (and runs) do not hand out the same ids.
/// Two runs draw the same base with a chance of one in a million.
fn shared_id_base() -> u64 {
    (crate::random::u64() % ((1 << 20) - 1) + 1) << 32
}

/// The chat: every room, with its memory. Everyone in a room hears
/// everyone in it; a newcomer or a returning client hears what it missed.
pub struct ChatRoom {
    /// Each open connection's name and bucket, if it has either.
    people: HashMap<ConnId, Person>,
    /// The connection of a member whose id is not its connection's own (it
    /// resumed an earlier session), by that id; and the other way round.
    /// Both as rare as resumes, so they cost nothing per idle connection.
    aliases: HashMap<u64, ConnId>,
    /// See `aliases`.
    member_ids: HashMap<ConnId, u64>,
    /// Connections being replaced by their own comeback (their close frame
    /// on its way): they leave without a word, and are not counted. Almost
    /// always empty, so a room's count is its group's length, with no walk.
    replaced: HashSet<ConnId>,
    /// Who left within `--resume-window`, by id.
    departed: HashMap<u64, Departed>,
    /// The flood limit, if any (`--rate-limit`).
    limit: Option<RateLimit>,
    /// Joins and leaves are announced while the room has at most this many
    /// members (`--announce-joins-up-to`); `None`: always, as the seed does.
    announce_up_to: Option<usize>,
    /// The welcome lists the members while the room has at most this many
    /// (`--presence-list-up-to`).
    presence_list_up_to: usize,
    /// The most rooms with members at once (`--max-rooms`).
    max_rooms: usize,
    /// A room with no line for this long is forgotten (`--history-ttl`).
    history_ttl: Duration,
    /// How long a token brings back an id and name after its connection
    /// closed (`--resume-window`).
    resume_window: Duration,
    /// The key of the resume tokens' MAC: 128 random bits (std's
    /// `RandomState` keys SipHash from the operating system's randomness).
    token_key: [u64; 2],
    /// Member ids are connection ids plus this: 0 in memory; with a data
    /// directory, so that ids go on from the last run's (`ids.json`).
    id_base: u64,
    /// The data directory's id reservation, given back at a clean
    /// shutdown. Declared before `history`, which holds the directory's
    /// lock, so that it is dropped (and written) first.
    ids: Option<MemberIds>,
    /// Where every room's lines are kept.
    history: Box<dyn History + Send>,
    /// How many of the newest lines a newcomer gets (`--replay`).
    replay: usize,
    /// Lines confirmed by the history and not yet broadcast (kept for its
    /// allocation).
    confirmed: Vec<Confirmed>,
    /// Lines the history refused, whose speakers are not told yet.
    refused: Vec<Refused>,
    /// Newcomers whose room's history is not known yet: in no group yet.
    waiting: Vec<Greeting>,
    /// What the history told of rooms (kept for its allocation).
    news: Vec<News>,
    /// Whether the history is shared by other servers (Redis): a line it
    /// refuses was refused because the store is out of reach.
    shared: bool,
    /// When expired rooms and departures are next swept.
    next_sweep: Instant,
    /// What it counts for `/metrics`.
    counts: ChatCounts,
}

/// What the chat counts for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct ChatCounts {
    /// Lines (and actions) taken from clients, to their room's history.
    lines: u64,
    /// Lines refused for coming too fast (`--rate-limit`).
    too_fast: u64,
    /// Clients closed for flooding.
    flooding: u64,
    /// Newcomers that resumed where they left off (`since` in the room's
    /// epoch, within its head).
    resumed: u64,
    /// Newcomers told `reset`: their resume was from another epoch, or
    /// past the head.
    resume_reset: u64,
    /// Members told `reset` because the shared store lost lines they saw.
    store_reset: u64,
    /// Resume tokens refused (forged, expired, or the id in use).
    resume_refused: u64,
}

impl fmt::Debug for ChatRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatRoom")
            .field("people", &self.people.len())
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
    /// An empty chat without a rate limit, with the default history.
    pub fn new() -> Self {
        ChatRoom::default()
    }

    /// The chat `config` describes: its rate limit, announcements, rooms,
    /// replay and history in memory.
    pub fn from_config(config: &Config) -> Self {
        ChatRoom {
            people: HashMap::new(),
            aliases: HashMap::new(),
            member_ids: HashMap::new(),
            replaced: HashSet::new(),
            departed: HashMap::new(),
            limit: config.rate_limit,
            announce_up_to: config.announce_joins_up_to,
            presence_list_up_to: config.presence_list_up_to,
            max_rooms: config.max_rooms,
            history_ttl: config.history_ttl,
            resume_window: config.resume_window,
            token_key: random_key(),
            id_base: 0,
            ids: None,
            history: Box::new(MemoryHistory::new(history_limits(config), seal)),
            replay: config.replay,
            confirmed: Vec::new(),
            refused: Vec::new(),
            waiting: Vec::new(),
            news: Vec::new(),
            shared: false,
            next_sweep: Instant::now() + SWEEP_EVERY.min(config.history_ttl),
            counts: ChatCounts::default(),
        }
    }

    /// The chat `config` describes, its history kept in Redis if
    /// [`Config::redis`] names one ([`SharedHistory`]), else in
    /// [`Config::data_dir`] if it names one ([`DiskHistory`]), else in
    /// memory. Logs where the history is and what it holds.
    pub fn open(config: &Config) -> Result<Self, DataDirError> {
        let chat = ChatRoom::from_config(config);
        if let Some(url) = &config.redis {
            let history = SharedHistory::new(
                url.clone(),
                history_limits(config),
                config.history_ttl,
                seal,
            )
            .with_resume_window(config.resume_window);
            if let Some(dir) = &config.data_dir {
                info!("--redis keeps the history: {} is not used", dir.display());
            }
            return Ok(ChatRoom {
                id_base: shared_id_base(),
                shared: true,
                ..chat.with_history(Box::new(history))
            });
        }
        let Some(dir) = &config.data_dir else {
            return Ok(chat);
        };
        let started = Instant::now();
        let (history, opened) = DiskHistory::open(dir, history_limits(config), config.fsync, seal)?;
        info!(
            "history in {}: {} rooms, {} lines, {} bytes, opened in {:.0?} (--fsync {}){}",
            history.path().display(),
            opened.rooms,
            opened.lines,
            opened.bytes,
            started.elapsed(),
            config.fsync.as_str(),
            if opened.cut > 0 || opened.new_epochs > 0 {
                format!(
                    "; after an unclean shutdown, {} logs cut, {} rooms in a new epoch",
                    opened.cut, opened.new_epochs
                )
            } else {
                String::new()
            }
        );
        let (ids, first) = MemberIds::open(dir)?;
        Ok(ChatRoom {
            id_base: first - 1,
            ids: Some(ids),
            ..chat.with_history(Box::new(history))
        })
    }

    /// An empty chat whose members may each send at most `limit` lines.
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

    /// Keeps the rooms' lines in `history` instead.
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

    /// The name of the connection `id`, if it has one.
    fn name_of(&self, id: ConnId) -> Option<&str> {
        self.people.get(&id)?.name.as_deref()
    }

    /// The token that brings `id` back to `room`: the id, a dot, and a MAC
    /// of both (two SipHash outputs under the chat's random key: 128 bits,
    /// so guessing one takes about 2^127 tries, each a WebSocket handshake).
    fn token(&self, room: &str, id: u64) -> String {
        let [k0, k1] = self.token_key;
        let mac = |part: u8| {
            // SipHash-2-4 with an explicit key: std's SipHasher, deprecated
            // only as a general-purpose hasher (it is not HashDoS-proof
            // when its key is known; ours is 128 secret random bits), and
            // the one keyed MAC in std. Servers sharing Redis share the key.
            #[allow(deprecated)]
            let mut mac = std::hash::SipHasher::new_with_keys(k0, k1);
            (part, room, id).hash(&mut mac);
            mac.finish()
        };
        format!("{id}.{:016x}{:016x}", mac(2), mac(1))
    }

    /// The id a token brings back in `room`, if it is one of ours for it.
    fn redeem(&self, room: &str, token: &str) -> Option<u64> {
        let (id, _) = token.split_once('.')?;
        let id: u64 = id.parse().ok()?;
        (self.token(room, id) == token).then_some(id)
    }

    /// A comeback to `room` with `token`: the member's id, its name, and
    /// its old connection if that is still open there (now listed in
    /// `replaced`, to be closed); `None` if the token cannot be honoured.
    fn come_back(
        &mut self,
        room: &str,
        token: &str,
        now: Instant,
        out: &Outbox,
    ) -> Option<(u64, Option<Box<str>>, Option<ConnId>)> {
        let member = self.redeem(room, token)?;
        if let Some(old) = self.connection_of(member, out.groups()) {
            let there = out.groups().group_of(old).map(|g| &**g.name()) == Some(room);
            if !there {
                return None;
            }
            let name = self.name_of(old).map(Box::from);
            self.replaced.insert(old);
            return Some((member, name, Some(old)));
        }
        // A shared history keeps departures in Redis, for every server:
        // asked there ([`News::Recalled`]), never here.
        if self.shared {
            return None;
        }
        let departed = self.departed.remove(&member)?;
        if &*departed.room != room || departed.until < now {
            return None;
        }
        Some((member, departed.name, None))
    }

    /// The open connection whose member id is `id`, if any.
    fn connection_of(&self, id: u64, groups: &Groups) -> Option<ConnId> {
        let conn = match self.aliases.get(&id) {
            Some(&conn) => conn,
            None => ConnId(id.checked_sub(self.id_base)?),
        };
        let open = groups.is_open(conn) && !self.replaced.contains(&conn);
        (open && self.member_id(conn) == id).then_some(conn)
    }

    /// The id in the protocol of the connection `conn`: its own, or the
    /// one it resumed.
    fn member_id(&self, conn: ConnId) -> u64 {
        match self.member_ids.get(&conn) {
            Some(&member) => member,
            None => self.own_id(conn),
        }
    }

    /// The id a new connection `conn` is known by: its connection id, or
    /// with a data directory, that past the last run's ids.
    fn own_id(&self, conn: ConnId) -> u64 {
        conn.0 + self.id_base
    }

    /// Who is in `group`, as a presence list of at most `limit` members
    /// (a connection being replaced is not counted).
    fn presence<'a>(
        &'a self,
        groups: &'a Groups,
        group: GroupId,
        limit: usize,
    ) -> Vec<Presence<'a>> {
        let elsewhere = groups
            .get(group)
            .map_or(&[][..], |g| self.history.elsewhere(g.name()));
        groups
            .members(group)
            .filter(|id| !self.replaced.contains(id))
            .map(|id| Presence {
                id: self.member_id(id),
                name: self.name_of(id),
            })
            .chain(elsewhere.iter().map(|m| Presence {
                id: m.id,
                name: m.name.as_deref(),
            }))
            .take(limit)
            .collect()
    }

    /// How many are in `group`, not counting a connection being replaced.
    fn count(&self, groups: &Groups, group: Option<GroupId>) -> usize {
        let Some((id, members)) = group.and_then(|g| Some((g, groups.get(g)?))) else {
            return 0;
        };
        // With a shared history, those on the other servers too.
        let elsewhere = self.history.elsewhere(members.name()).len();
        // Almost always empty: a connection is replaced for an instant.
        let replaced = self
            .replaced
            .iter()
            .filter(|&&conn| groups.group_id_of(conn) == Some(id))
            .count();
        members.len() - replaced + elsewhere
    }

    /// The presence list of a small room (`None` for a large one).
    fn small_room_presence<'a>(
        &'a self,
        groups: &'a Groups,
        group: GroupId,
        count: usize,
    ) -> Option<Vec<Presence<'a>>> {
        (count <= self.presence_list_up_to)
            .then(|| self.presence(groups, group, self.presence_list_up_to))
    }

    /// Takes a token out of `id`'s bucket: whether it may go on, after
    /// telling it it may not (or closing a flooder).
    fn allowed(&mut self, id: ConnId, now: Instant, out: &mut Outbox) -> bool {
        let verdict = match self.people.get_mut(&id).and_then(|p| p.bucket.as_mut()) {
            Some(bucket) => match self.limit {
                Some(limit) => bucket.take(limit, now),
                None => Verdict::Allowed,
            },
            None => Verdict::Allowed,
        };
        match verdict {
            Verdict::Allowed => true,
            Verdict::Refused => {
                self.counts.too_fast += 1;
                out.write_message(id, &notice(TOO_FAST));
                false
            }
            Verdict::Flooding => {
                self.counts.flooding += 1;
                out.close(id, CloseCode::Policy, FLOODING_REASON);
                false
            }
        }
    }

    /// A text frame from `id` at `now` (`ts`: the same, in ms since the
    /// Unix epoch): a command, or a line.
    fn said(&mut self, id: ConnId, text: &str, now: Instant, ts: u64, out: &mut Outbox) {
        if !self.allowed(id, now, out) {
            return;
        }
        if text.starts_with("//") {
            // `//x` is the line `/x`.
            return self.line(id, &text[1..], ts, false, out);
        }
        let Some(command) = text.strip_prefix('/') else {
            return self.line(id, text, ts, false, out);
        };
        let (verb, rest) = command
            .split_once(char::is_whitespace)
            .unwrap_or((command, ""));
        match verb {
            "me" if !rest.trim().is_empty() => self.line(id, rest.trim(), ts, true, out),
            "me" => out.write_message(id, &notice("/me needs an action: /me waves")),
            "nick" => self.nick(id, rest, out),
            "who" => self.who(id, out),
            _ => {
                let reply = format!("Unknown command /{verb}. {COMMANDS}");
                out.write_message(id, &notice(&reply));
            }
        }
    }

    /// A line (or an action) from `id`: into its room's history, and out to
    /// the room once the history confirms it.
    fn line(&mut self, id: ConnId, text: &str, ts: u64, action: bool, out: &mut Outbox) {
        let Some(room) = out.groups().group_of(id) else {
            if self.waiting.iter().any(|g| g.id == id) {
                out.write_message(id, &notice(NOT_READY));
            }
            return;
        };
        let draft = Draft {
            id: self.member_id(id),
            text,
            ts,
            name: self.people.get(&id).and_then(|p| p.name.as_deref()),
            action,
        };
        self.counts.lines += 1;
        self.history.append(room.name(), draft);
        self.deliver_confirmed(out);
    }

    /// `/nick NAME`: a new display name, told to the room.
    fn nick(&mut self, id: ConnId, raw: &str, out: &mut Outbox) {
        let name = match display_name(raw) {
            Ok(name) => name,
            Err(why) => {
                let reply = format!("That name was refused: {why}.");
                return out.write_message(id, &notice(&reply));
            }
        };
        let member = self.member_id(id);
        let person = self.people.entry(id).or_default();
        let was = match person.name.replace(name.as_str().into()) {
            Some(old) => old.into_string(),
            None => member.to_string(),
        };
        let renamed = renamed_json(member, &was, &name);
        if let Some(room) = out.groups().group_of(id) {
            let room = Arc::clone(room.name());
            let change = PresenceChange::Rename {
                id: member,
                name: &name,
            };
            self.history.announce(&room, change);
        }
        let group = out.groups().group_id_of(id);
        match group {
            Some(group) if self.announces(self.count(out.groups(), Some(group))) => {
                out.send_to_group(group, &renamed)
            }
            // A room too large to hear of joins does not hear of names.
            _ => out.write_message(id, &renamed),
        }
    }

    /// `/who`: the room, how many, and who, to the asker alone.
    fn who(&self, id: ConnId, out: &mut Outbox) {
        let groups = out.groups();
        let Some((group, room)) = groups
            .group_id_of(id)
            .and_then(|g| Some((g, groups.get(g)?)))
        else {
            return;
        };
        let count = self.count(groups, Some(group));
        let members = self.presence(groups, group, WHO_LIMIT);
        let labels: Vec<String> = members
            .iter()
            .take(20)
            .map(|p| p.name.map_or_else(|| p.id.to_string(), str::to_owned))
            .collect();
        let more = if count > labels.len() { ", ..." } else { "" };
        let message = format!("{count} here: {}{more}", labels.join(", "));
        let who = ChatEvent::Event {
            message: &message,
            event: "who",
            detail: EventDetail::Who {
                room: room.name(),
                count,
                members,
            },
        }
        .to_json();
        out.write_message(id, &who);
    }

    /// Broadcasts the lines the history has confirmed, each to its room,
    /// in order.
    fn deliver_confirmed(&mut self, out: &mut Outbox) {
        self.history.take_confirmed(&mut self.confirmed);
        for Confirmed { room, line } in self.confirmed.drain(..) {
            // A room everyone has left hears nothing; its history keeps it.
            if let Some(group) = out.groups().id_of(&room) {
                out.send_line_to_group(group, line.seq, line.frame);
            }
        }
    }

    /// Tells each speaker whose line the history could not keep that it
    /// was not delivered (nobody got it).
    fn tell_refused(&mut self, out: &mut Outbox) {
        self.history.take_refused(&mut self.refused);
        let mut refused = std::mem::take(&mut self.refused);
        for Refused { room, id } in refused.drain(..) {
            // Unless it has left the room meanwhile.
            let Some(conn) = self.connection_of(id, out.groups()) else {
                continue;
            };
            if out
                .groups()
                .group_of(conn)
                .is_some_and(|g| **g.name() == *room)
            {
                let why = if self.shared { UNREACHABLE } else { NOT_KEPT };
                out.write_message(conn, &notice(why));
            }
        }
        self.refused = refused;
    }

    /// The first line a newcomer gets: the newest `--replay` lines, as far
    /// as the history still holds them.
    fn replay_from(&self, position: &Position) -> Seq {
        let replay = Seq::try_from(self.replay).unwrap_or(Seq::MAX);
        (position.head + 1)
            .saturating_sub(replay)
            .max(position.first)
    }

    /// Welcomes a newcomer into its room at `position`: the welcome, the
    /// replay or the resume, and its join told to the others.
    fn greet(&mut self, greeting: Greeting, position: &Position, out: &mut Outbox) {
        let Greeting {
            id,
            room,
            resume,
            refused,
            replacing,
            claim: _,
        } = greeting;
        let room = &*room;
        let Some(group) = out.join(id, room) else {
            return;
        };
        let member = self.member_id(id);
        let groups = out.groups();
        let count = self.count(groups, Some(group));
        let token = self.token(room, member);
        let name = self.name_of(id);
        let welcome = ChatEvent::Welcome {
            message: WELCOME,
            id: member,
            epoch: position.epoch.as_str(),
            head: position.head,
            room,
            count,
            members: self.small_room_presence(groups, group, count),
            resume: &token,
            name,
        }
        .to_json();
        // Serialized only if it is sent (a large room hears of no join).
        let joined = self
            .announces(count)
            .then(|| presence_json("join", member, name, count));
        out.write_message(id, &welcome);
        if refused {
            self.counts.resume_refused += 1;
            let refusal = ChatEvent::Event {
                message: RESUME_REFUSED,
                event: "resume_refused",
                detail: EventDetail::None {},
            };
            out.write_message(id, &refusal.to_json());
        }
        let newcomer_from = self.replay_from(position);
        match resume {
            Some(resume) if position.continues(&resume.epoch, resume.since) => {
                self.counts.resumed += 1;
                out.follow(id, resume.since + 1, true);
            }
            Some(_) => {
                self.counts.resume_reset += 1;
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
        if let Some(old) = replacing {
            // The same member, on a new connection: nobody left, nobody came.
            out.close(old, CloseCode::Normal, REPLACED_REASON);
        } else {
            let name = self.people.get(&id).and_then(|p| p.name.as_deref());
            let change = PresenceChange::Join { id: member, name };
            self.history.announce(room, change);
            if let Some(joined) = joined {
                out.send_to_group_except(group, id, &joined);
            }
        }
    }

    /// Acts on what the history learnt about rooms: welcomes those waiting
    /// for a room now known, starts over the members of a room reset.
    fn hear_news(&mut self, out: &mut Outbox) {
        self.history.take_news(&mut self.news);
        let mut news = std::mem::take(&mut self.news);
        for item in news.drain(..) {
            match item {
                News::Ready(room) => self.room_known(&room, false, out),
                News::Joined(room, who) | News::Left(room, who) => {
                    let joined = self
                        .history
                        .elsewhere(&room)
                        .iter()
                        .any(|m| m.id == who.id && m.server == who.server);
                    let Some(group) = out.groups().id_of(&room) else {
                        continue;
                    };
                    let count = self.count(out.groups(), Some(group));
                    // A leave is announced by the room's size before it.
                    let size = if joined { count } else { count + 1 };
                    if self.announces(size) {
                        let event = if joined { "join" } else { "leave" };
                        let json = presence_json(event, who.id, who.name.as_deref(), count);
                        out.send_to_group(group, &json);
                    }
                }
                News::Renamed(room, who, was) => {
                    let Some(group) = out.groups().id_of(&room) else {
                        continue;
                    };
                    let (Some(name), true) = (
                        &who.name,
                        self.announces(self.count(out.groups(), Some(group))),
                    ) else {
                        continue;
                    };
                    let was = was.map_or_else(|| who.id.to_string(), String::from);
                    out.send_to_group(group, &renamed_json(who.id, &was, name));
                }
                News::Recalled { room, id, left } => self.recalled(&room, id, left, out),
                News::IdBase(base) => self.id_base = base,
                News::TokenKey(key) => self.token_key = key,
                News::Reset(room) => self.room_known(&room, true, out),
            }
        }
        self.news = news;
    }

    /// The history knows where `room` stands now: its newcomers are
    /// welcomed; after a `reset` (Redis lost lines its members saw), its
    /// members are told and start over from the replay.
    fn room_known(&mut self, room: &Arc<str>, reset: bool, out: &mut Outbox) {
        let group = out.groups().id_of(room);
        if group.is_none() && !self.waiting.iter().any(|g| g.room == *room) {
            return self.history.release(room); // nobody here any more
        }
        let Some(position) = self.history.position(room) else {
            return;
        };
        if let (true, Some(group)) = (reset, group) {
            let from = self.replay_from(&position);
            let reset = ChatEvent::Event {
                message: RESET,
                event: "reset",
                detail: EventDetail::None {},
            }
            .to_json();
            let members: Vec<ConnId> = out.groups().members(group).collect();
            self.counts.store_reset += members.len() as u64;
            for id in members {
                out.write_message(id, &reset);
                out.follow(id, from, true);
            }
        }
        let (now, later) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|g| g.room == *room && g.claim.is_none());
        self.waiting = later;
        for greeting in now {
            if out.groups().is_open(greeting.id) {
                self.greet(greeting, &position, out);
            }
        }
        if out.groups().count(room) == 0 && !self.waiting.iter().any(|g| g.room == *room) {
            self.history.release(room); // they all left meanwhile
        }
    }

    /// The answer to whether `member` left `room` on another server in its
    /// window: the newcomer claiming it comes back as it (its id, and its
    /// name unless it gave one), or is told its token was refused; then it
    /// is welcomed, once its room is known.
    fn recalled(
        &mut self,
        room: &str,
        member: u64,
        left: Option<Option<Box<str>>>,
        out: &mut Outbox,
    ) {
        let Some(at) = self
            .waiting
            .iter()
            .position(|g| g.claim == Some(member) && *g.room == *room)
        else {
            return;
        };
        let mut greeting = self.waiting.swap_remove(at);
        greeting.claim = None;
        let id = greeting.id;
        if !out.groups().is_open(id) {
            return;
        }
        match left {
            Some(name) => {
                self.aliases.insert(member, id);
                self.member_ids.insert(id, member);
                if let Some(name) = name {
                    let person = self.people.entry(id).or_default();
                    person.name.get_or_insert(name);
                }
            }
            None => greeting.refused = true,
        }
        match self.history.position(room) {
            Some(position) => self.greet(greeting, &position, out),
            None => self.waiting.push(greeting),
        }
    }

    /// Forgets rooms with no line for `--history-ttl` and nobody in them,
    /// and departures past their window; at most every [`SWEEP_EVERY`].
    fn sweep(&mut self, groups: &Groups) {
        let now = Instant::now();
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY.min(self.history_ttl);
        if let Some(cutoff) = now.checked_sub(self.history_ttl) {
            self.history
                .expire_rooms(cutoff, &|room| groups.count(room) > 0);
        }
        self.departed.retain(|_, d| d.until >= now);
    }
}

impl WebSocketHandler for ChatRoom {
    fn admit(&self, request: &Request<'_>, groups: &Groups) -> Result<(), Refusal> {
        let query = parse_query(request.query).map_err(|why| Refusal { status: 400, why })?;
        // Rooms whose newcomers wait for the shared store count too.
        let waiting_only =
            |room: &str| groups.count(room) == 0 && self.waiting.iter().any(|g| *g.room == *room);
        let mut waiting: Vec<&str> = self
            .waiting
            .iter()
            .map(|g| &*g.room)
            .filter(|r| waiting_only(r))
            .collect();
        waiting.sort_unstable();
        waiting.dedup();
        let new = groups.count(&query.room) == 0 && !waiting_only(&query.room);
        if new && groups.len() + waiting.len() >= self.max_rooms {
            return Err(Refusal {
                status: 503,
                why: "too many rooms: try one that has people in it",
            });
        }
        Ok(())
    }

    fn open(&mut self, id: ConnId, request: &Request<'_>, out: &mut Outbox) {
        // `admit` refused a malformed query.
        let Ok(query) = parse_query(request.query) else {
            return out.close(id, CloseCode::Policy, "bad query");
        };
        let room = query.room.as_str();
        let now = Instant::now();
        if out.groups().count(room) == 0 {
            // Nobody is here: if nobody spoke for the TTL, begin afresh.
            if let Some(cutoff) = now.checked_sub(self.history_ttl) {
                self.history.expire_room(room, cutoff);
            }
        }
        // A comeback: the id and name of an earlier connection, and that
        // connection closed quietly if it is still open.
        let comeback = query
            .token
            .as_deref()
            .map(|token| self.come_back(room, token, now, out));
        let mut refused = matches!(comeback, Some(None));
        // Not a departure of this server's: with a shared history, perhaps
        // one of another's, if the token is good.
        let claim = match (refused, &query.token) {
            (true, Some(token)) if self.shared => self.redeem(room, token),
            _ => None,
        };
        if let Some(member) = claim {
            log::debug!("conn {id}: claims member {member} in {room}, asking the history");
            refused = false;
            self.history.recall(room, member);
        }
        let own = self.own_id(id);
        let (member, old_name, replacing) = comeback.flatten().unwrap_or((own, None, None));
        let name: Option<Box<str>> = query.name.map(String::into_boxed_str).or(old_name);
        if member != own {
            self.aliases.insert(member, id);
            self.member_ids.insert(id, member);
        } else if let Some(ids) = &mut self.ids
            && let Err(e) = ids.handed_out(member)
        {
            log::error!("{e}: member ids may repeat after a crash");
        }
        let person = Person {
            name,
            bucket: self.limit.map(|limit| Bucket::new(limit, now)),
        };
        if person.name.is_some() || person.bucket.is_some() {
            self.people.insert(id, person);
        }
        let greeting = Greeting {
            id,
            room: room.into(),
            resume: query.resume,
            refused,
            replacing,
            claim,
        };
        match self.history.position(room) {
            Some(position) if claim.is_none() => self.greet(greeting, &position, out),
            // Welcomed when the history knows where the room stands (and,
            // for a claim, whether the member may come back).
            _ => self.waiting.push(greeting),
        }
    }

    fn on_message(&mut self, id: ConnId, text: &str, out: &mut Outbox) {
        self.said(id, text, Instant::now(), now_ms(), out);
    }

    fn on_close(&mut self, id: ConnId, out: &mut Outbox) {
        let person = self.people.remove(&id).unwrap_or_default();
        let member = match self.member_ids.remove(&id) {
            Some(member) => member,
            None => self.own_id(id),
        };
        if self.aliases.get(&member) == Some(&id) {
            self.aliases.remove(&member);
        }
        if self.replaced.remove(&id) {
            return; // replaced by its comeback: no leave
        }
        if let Some(at) = self.waiting.iter().position(|g| g.id == id) {
            // It never got in: nobody heard of it, nobody hears it leave.
            let room = self.waiting.swap_remove(at).room;
            let empty = out.groups().count(&room) == 0;
            if empty && !self.waiting.iter().any(|g| g.room == room) {
                self.history.release(&room);
            }
            return;
        }
        let groups = out.groups();
        let Some((group, room)) = groups
            .group_id_of(id)
            .and_then(|g| Some((g, groups.get(g)?.name())))
        else {
            return;
        };
        let room = Arc::clone(room);
        // It is still in the group while this runs.
        let count = self.count(groups, Some(group)).saturating_sub(1);
        let leave = PresenceChange::Leave {
            id: member,
            name: person.name.as_deref(),
            window: self.resume_window,
        };
        self.history.announce(&room, leave);
        if groups.get(group).is_some_and(|g| g.len() == 1) {
            self.history.release(&room); // the last one here
        }
        if self.announces(count + 1) && count > 0 {
            let left = presence_json("leave", member, person.name.as_deref(), count);
            out.send_to_group_except(group, id, &left);
        }
        if self.shared {
            return; // its departure is kept in Redis (the leave above)
        }
        self.departed.insert(
            member,
            Departed {
                room,
                name: person.name,
                until: Instant::now() + self.resume_window,
            },
        );
    }

    fn on_turn_end(&mut self, out: &mut Outbox) {
        // Newcomers to rooms now known are welcomed (what that sends to a
        // shared history goes with the commit).
        self.hear_news(out);
        // The turn's lines are kept (one write per room, for a disk log)
        // before any of them goes out.
        self.history.commit();
        self.deliver_confirmed(out);
        self.tell_refused(out);
        self.sweep(out.groups());
    }

    fn attach(&mut self, registry: &Registry, tokens: &[Token]) -> io::Result<()> {
        self.history.attach(registry, tokens)
    }

    fn source_ready(&mut self, token: Token) {
        self.history.source_ready(token);
    }

    fn tick(&mut self, now: Instant) {
        self.history.tick(now);
    }

    fn next_tick(&self) -> Option<Instant> {
        self.history.next_tick()
    }

    fn write_metrics(&self, out: &mut Exposition) {
        let counts = self.counts;
        out.counter(
            "eddy_lines_total",
            "Chat lines (and actions) taken from clients into their room's history.",
            counts.lines,
        );
        out.counter_by(
            "eddy_rate_limited_total",
            "Messages over --rate-limit: refused with a notice, or their sender closed for flooding.",
            "action",
            &[("refused", counts.too_fast), ("closed", counts.flooding)],
        );
        out.counter_by(
            "eddy_resumes_total",
            "Newcomers that asked to resume (since, epoch): continued where they left off, or told reset and replayed.",
            "result",
            &[("continued", counts.resumed), ("reset", counts.resume_reset)],
        );
        out.counter_by(
            "eddy_resets_total",
            "Members told reset (start over from the replay), by cause: a resume from another epoch or past the head, or the shared store lost lines they saw.",
            "cause",
            &[("resume", counts.resume_reset), ("store", counts.store_reset)],
        );
        out.counter(
            "eddy_resume_tokens_refused_total",
            "Resume tokens refused: forged, expired, or their id in use.",
            counts.resume_refused,
        );
        self.history.write_metrics(out);
    }

    fn readiness(&self) -> Result<(), String> {
        self.history.readiness()
    }

    fn room_history<'a>(&'a self, group: &'a str) -> Option<RoomHistory<'a>> {
        Some(RoomHistory {
            history: &*self.history,
            room: group,
        })
    }

    fn feed_notice(&self, id: ConnId, notice: FeedNotice, groups: &Groups) -> Option<Bytes> {
        let json = match notice {
            FeedNotice::Gap { from, to } => gap_json(from, to),
            FeedNotice::CaughtUp { head } => {
                let group = groups.group_id_of(id);
                let count = self.count(groups, group);
                let members = group.and_then(|g| self.small_room_presence(groups, g, count));
                ChatEvent::Event {
                    message: CAUGHT_UP,
                    event: "caught_up",
                    detail: EventDetail::CaughtUp {
                        head,
                        count,
                        members,
                    },
                }
                .to_json()
            }
        };
        Some(ws::encode_text_frame(&json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{Payload, Recipients};

    /// A chat and the outbox the server would lend it, with the server's
    /// part (opening and closing connections in the groups) done here.
    struct Harness {
        chat: ChatRoom,
        out: Outbox,
    }

    impl Harness {
        fn new(chat: ChatRoom) -> Self {
            Harness {
                chat,
                out: Outbox::new(),
            }
        }

        /// Opens `id` with `query`; what it and the others were sent.
        fn open(&mut self, id: u64, query: &str) -> Vec<(Recipients, String)> {
            let request = Request {
                path: "/soc",
                query,
            };
            assert_eq!(
                self.chat.admit(&request, self.out.groups()),
                Ok(()),
                "{query}"
            );
            self.out.groups_mut().open(ConnId(id), id as usize);
            self.chat.open(ConnId(id), &request, &mut self.out);
            self.sent()
        }

        fn say(&mut self, id: u64, text: &str) -> Vec<(Recipients, String)> {
            self.chat.on_message(ConnId(id), text, &mut self.out);
            self.sent()
        }

        fn close(&mut self, id: u64) -> Vec<(Recipients, String)> {
            self.chat.on_close(ConnId(id), &mut self.out);
            self.out.groups_mut().close(ConnId(id));
            self.sent()
        }

        /// What the outbox holds, as (recipients, text); a follow
        /// instruction as `follow FROM announce?`, a close as `close`.
        fn sent(&mut self) -> Vec<(Recipients, String)> {
            self.out
                .drain()
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

        fn group(&self, room: &str) -> GroupId {
            self.out.groups().id_of(room).expect("a room with members")
        }

        fn epoch(&mut self, room: &str) -> String {
            self.chat
                .history
                .position(room)
                .unwrap()
                .epoch
                .as_str()
                .to_owned()
        }

        /// The token of `id`'s welcome, from what `open` returned.
        fn token(sent: &[(Recipients, String)]) -> String {
            let welcome: serde_json::Value = serde_json::from_str(&sent[0].1).unwrap();
            welcome["resume"].as_str().unwrap().to_owned()
        }
    }

    /// A chat whose room `room` has `n` lines said already (by id 1).
    fn with_lines(room: &str, n: usize) -> Harness {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, &format!("room={room}"));
        for i in 0..n {
            h.say(1, &i.to_string());
        }
        h.close(1);
        h
    }

    #[test]
    fn open_greets_the_newcomer_with_the_room_then_tells_the_others() {
        let mut h = with_lines("lobby", 3);
        h.open(5, "name=bob");
        let sent = h.open(7, "");
        let epoch = h.epoch("lobby");
        let token = Harness::token(&sent);
        let lobby = h.group("lobby");
        assert_eq!(
            sent,
            [
                (
                    Recipients::One(ConnId(7)),
                    format!(
                        r#"{{"type":"sys","message":"Welcome to WebSocket","id":7,"epoch":"{epoch}","head":3,"room":"lobby","count":2,"members":[{{"id":5,"name":"bob"}},{{"id":7}}],"resume":"{token}"}}"#
                    )
                ),
                (Recipients::One(ConnId(7)), "follow 1 true".into()),
                (
                    Recipients::GroupExcept(lobby, ConnId(7)),
                    r#"{"type":"sys","message":"7 has joined","event":"join","id":7,"count":2}"#
                        .into()
                ),
            ]
        );
        assert!(token.starts_with("7.") && token.len() == 2 + 32, "{token}");
    }

    #[test]
    fn a_large_room_gives_its_count_but_no_list() {
        let mut h = Harness::new(ChatRoom::from_config(&Config {
            presence_list_up_to: 2,
            ..Config::default()
        }));
        assert!(
            h.open(1, "")
                .remove(0)
                .1
                .contains(r#""members":[{"id":1}]"#)
        );
        h.open(2, "");
        let welcome = h.open(3, "").remove(0).1;
        assert!(welcome.contains(r#""count":3,"resume""#), "{welcome}");
    }

    #[test]
    fn an_empty_room_replays_nothing_and_announces_nothing() {
        let mut h = Harness::new(ChatRoom::new());
        assert_eq!(h.open(1, "")[1].1, "follow 1 false");
        let mut h = with_lines("lobby", 5);
        h.chat.replay = 0;
        assert_eq!(h.open(9, "")[1].1, "follow 6 false", "--replay 0: the seed");
    }

    #[test]
    fn a_newcomer_gets_the_newest_replay_lines_of_its_room_only() {
        let mut h = with_lines("lobby", 80);
        assert_eq!(h.open(9, "")[1].1, "follow 31 true", "the last 50 of 80");
        assert_eq!(
            h.open(10, "room=other")[1].1,
            "follow 1 false",
            "its own room"
        );
    }

    #[test]
    fn lines_go_to_their_room_with_their_own_seqs() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, "room=a&name=alice");
        h.open(2, "room=b");
        let (a, b) = (h.group("a"), h.group("b"));
        let sent = h.say(1, "hi \"there\" <b>");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, Recipients::Group(a));
        let line: serde_json::Value = serde_json::from_str(&sent[0].1).unwrap();
        assert_eq!(line["seq"], 1);
        assert!(
            sent[0]
                .1
                .starts_with(r#"{"type":"user","id":1,"message":"hi \"there\" <b>","seq":1,"ts":"#)
                && sent[0].1.ends_with(r#","name":"alice"}"#),
            "{}",
            sent[0].1
        );
        h.say(1, "again");
        let sent = h.say(2, "in b");
        assert_eq!(sent[0].0, Recipients::Group(b));
        assert!(
            sent[0].1.contains(r#""seq":1,"#),
            "b counts from 1: {}",
            sent[0].1
        );
    }

    #[test]
    fn the_broadcast_frame_is_the_one_history_keeps() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, "");
        h.chat.on_message(ConnId(1), "shared", &mut h.out);
        let Payload::Frame(sent) = &h.out.deliveries()[0].payload else {
            panic!("not a frame")
        };
        let kept = &h.chat.history.read_from(LOBBY, 1, usize::MAX).lines[0].frame;
        assert_eq!(sent.as_ptr(), kept.as_ptr(), "the same bytes, not a copy");
    }

    #[test]
    fn commands_nick_who_me_and_escaping() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, "");
        h.open(2, "name=bob");
        let lobby = h.group("lobby");
        assert_eq!(
            h.say(1, "/nick  alice "),
            [(
                Recipients::Group(lobby),
                r#"{"type":"sys","message":"1 is now known as alice","event":"nick","id":1,"name":"alice"}"#
                    .into()
            )]
        );
        assert!(
            h.say(1, "/nick carol")[0]
                .1
                .contains("alice is now known as carol")
        );
        let who = h.say(2, "/who");
        assert_eq!(who[0].0, Recipients::One(ConnId(2)));
        let who: serde_json::Value = serde_json::from_str(&who[0].1).unwrap();
        assert_eq!(who["event"], "who");
        assert_eq!(who["room"], "lobby");
        assert_eq!(who["count"], 2);
        let mut names: Vec<_> = who["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["bob", "carol"]);
        assert!(who["message"].as_str().unwrap().starts_with("2 here: "));

        let me = h.say(2, "/me waves");
        assert_eq!(me[0].0, Recipients::Group(lobby));
        assert!(
            me[0].1.contains(r#""message":"waves","seq":1,"#),
            "{}",
            me[0].1
        );
        assert!(
            me[0].1.ends_with(r#","name":"bob","action":true}"#),
            "{}",
            me[0].1
        );
        let slash = h.say(2, "//slash");
        assert!(
            slash[0].1.contains(r#""message":"/slash","seq":2,"#),
            "{}",
            slash[0].1
        );
        assert!(!slash[0].1.contains("action"));

        for (bad, says) in [
            ("/dance", "Unknown command /dance"),
            ("/me", "/me needs an action"),
            ("/me   ", "/me needs an action"),
            ("/nick", "1-32 characters"),
            ("/nick a\u{202E}b", "control, format"),
            ("/nick a\u{200B}b", "control, format"),
        ] {
            let reply = h.say(2, bad);
            assert_eq!(reply.len(), 1, "{bad}");
            assert_eq!(reply[0].0, Recipients::One(ConnId(2)), "{bad}");
            assert!(reply[0].1.contains(says), "{bad}: {}", reply[0].1);
        }
        assert_eq!(
            h.chat.history.position(LOBBY).unwrap().head,
            2,
            "only /me and // are lines"
        );
    }

    #[test]
    fn names_and_rooms_are_checked_and_folded() {
        assert_eq!(canonical_room("Rust").as_deref(), Ok("rust"));
        assert_eq!(
            canonical_room("Ελληνικά-2.0_x").as_deref(),
            Ok("ελληνικά-2.0_x")
        );
        assert_eq!(canonical_room(&"a".repeat(64)).map(|r| r.len()), Ok(64));
        for bad in [
            "",
            "a b",
            "a/b",
            "<b>",
            "a\u{202E}",
            &"a".repeat(65),
            ".",
            "..",
            "İstanbul",
        ] {
            assert!(canonical_room(bad).is_err(), "{bad:?}");
        }
        // What it gives is what it takes.
        for good in ["Rust", "ΣΟΦΙΑ", "a.b-c_d", "ǅemal"] {
            let room = canonical_room(good).unwrap();
            assert_eq!(
                canonical_room(&room).as_deref(),
                Ok(room.as_str()),
                "{good}"
            );
        }
        assert_eq!(display_name("  alice ").as_deref(), Ok("alice"));
        assert_eq!(display_name("<b>x</b>").as_deref(), Ok("<b>x</b>"));
        assert_eq!(display_name("José 🦀").as_deref(), Ok("José 🦀"));
        for bad in [
            "",
            "   ",
            "a\u{202E}b",
            "a\u{200B}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{FEFF}",
            "a\nb",
            "a\u{7}",
            "\u{3164}",
            "\u{E0041}a",
            &"x".repeat(33),
        ] {
            assert!(display_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            display_name(&"é".repeat(32)).map(|n| n.chars().count()),
            Ok(32)
        );
    }

    #[test]
    fn malformed_queries_are_refused_with_400_and_a_reason() {
        let chat = ChatRoom::new();
        let groups = Groups::new();
        for (query, says) in [
            ("since=4", "since"),
            ("epoch=abc", "since"),
            ("since=&epoch=abc", "since"),
            ("since=-1&epoch=abc", "since"),
            ("since=1.5&epoch=abc", "since"),
            ("since=%201&epoch=abc", "since"),
            ("since=1&epoch=", "epoch"),
            ("since=1&epoch=a%20b", "epoch"),
            ("since=1&epoch=abc&since=2", "once"),
            (&format!("since=1&epoch={}", "a".repeat(65)), "epoch"),
            ("room=", "room"),
            ("room=a%20b", "room"),
            ("room=a&room=b", "once"),
            ("name=%E2%80%AEevil", "name"),
            ("name=a%E2%80%8Bb", "name"),
            ("name=", "name"),
            ("resume=", "resume"),
            ("resume=a%20b", "resume"),
        ] {
            let request = Request {
                path: "/soc",
                query,
            };
            let refusal = chat.admit(&request, &groups).unwrap_err();
            assert_eq!(refusal.status, 400, "{query}");
            assert!(refusal.why.contains(says), "{query}: {}", refusal.why);
        }
        assert_eq!(
            parse_query("room=R%C3%BCst&name=+al+&since=%31%32&epoch=Ab-_9&x=1"),
            Ok(Query {
                room: "rüst".into(),
                name: Some("al".into()),
                resume: Some(Resume {
                    since: 12,
                    epoch: "Ab-_9".into()
                }),
                token: None,
            })
        );
    }

    #[test]
    fn a_connection_that_would_open_one_room_too_many_gets_503() {
        let mut h = Harness::new(ChatRoom::from_config(&Config {
            max_rooms: 2,
            ..Config::default()
        }));
        h.open(1, "room=a");
        h.open(2, "room=b");
        let refusal = h
            .chat
            .admit(
                &Request {
                    path: "/soc",
                    query: "room=c",
                },
                h.out.groups(),
            )
            .unwrap_err();
        assert_eq!(refusal.status, 503);
        h.open(3, "room=A");
        h.close(2);
        h.open(4, "room=c");
    }

    #[test]
    fn a_resume_within_the_epoch_follows_from_the_next_line() {
        let mut h = with_lines("r", 10);
        let epoch = h.epoch("r");
        for (since, from, id) in [(4, 5, 20), (10, 11, 21), (0, 1, 22)] {
            let got = h.open(id, &format!("room=r&epoch={epoch}&since={since}"));
            assert_eq!(got[1].1, format!("follow {from} true"), "{since}");
            assert!(got[2].1.contains("has joined"), "no reset: {got:?}");
        }
    }

    #[test]
    fn another_epoch_or_a_seq_past_the_head_gets_a_reset_then_a_replay() {
        let mut h = with_lines("lobby", 10);
        let epoch = h.epoch("lobby");
        for (id, query) in [
            "since=3&epoch=someotherepoch".to_owned(),
            format!("since=11&epoch={epoch}"),
            format!("since=99999999999999999999999&epoch={epoch}"),
        ]
        .into_iter()
        .enumerate()
        {
            let got = h.open(id as u64 + 20, &query);
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
    fn a_resume_token_brings_back_the_id_and_name() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, "room=a");
        let token = Harness::token(&h.open(2, "room=a&name=alice"));
        let a = h.group("a");
        h.close(2);
        let back = h.open(3, &format!("room=a&resume={token}"));
        assert!(back[0].1.contains(r#""id":2,"#), "{}", back[0].1);
        assert!(back[0].1.ends_with(r#","name":"alice"}"#), "{}", back[0].1);
        assert_eq!(
            back.last().unwrap(),
            &(
                Recipients::GroupExcept(a, ConnId(3)),
                r#"{"type":"sys","message":"alice has joined","event":"join","id":2,"name":"alice","count":2}"#
                    .into()
            )
        );
        // Its lines carry the id it came back with.
        assert!(h.say(3, "hi")[0].1.contains(r#""id":2,"#));
        // The same token again, while that connection is open (half-open):
        // the old one is closed quietly; nobody hears a leave or a join.
        let again = h.open(4, &format!("room=a&resume={token}"));
        assert!(again[0].1.contains(r#""id":2,"#) && again[0].1.contains(r#""count":2,"#));
        assert_eq!(
            again[again.len() - 1],
            (Recipients::One(ConnId(3)), "close".into())
        );
        assert!(
            !again.iter().any(|(_, m)| m.contains("joined")),
            "{again:?}"
        );
        assert_eq!(
            h.close(3),
            [],
            "the replaced connection leaves without a word"
        );
        assert!(h.say(4, "still me")[0].1.contains(r#""id":2,"#));
    }

    #[test]
    fn a_token_of_another_room_or_past_its_window_is_refused_politely() {
        let mut h = Harness::new(ChatRoom::from_config(&Config {
            resume_window: Duration::from_millis(1),
            ..Config::default()
        }));
        let token = Harness::token(&h.open(2, "room=a&name=alice"));
        h.close(2);
        for (id, query) in [
            (3, format!("room=b&resume={token}")),
            (
                4,
                "room=a&resume=2.00000000000000000000000000000000".to_owned(),
            ),
        ] {
            let got = h.open(id, &query);
            assert!(
                got[0].1.contains(&format!(r#""id":{id},"#)),
                "{query}: {got:?}"
            );
            assert!(
                got[1].1.contains(r#""event":"resume_refused""#),
                "{query}: {got:?}"
            );
        }
        // Past the window (1 ms, then a sweep-free check at redeem time).
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let late = h.open(5, &format!("room=a&resume={token}"));
        assert!(late[1].1.contains("resume_refused"), "{late:?}");
    }

    #[test]
    fn a_room_nobody_spoke_in_for_the_ttl_is_forgotten() {
        let mut h = Harness::new(ChatRoom::from_config(&Config {
            history_ttl: Duration::from_millis(1),
            ..Config::default()
        }));
        h.open(1, "room=old");
        h.say(1, "a line");
        let epoch = h.epoch("old");
        h.close(1);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let welcome = h.open(2, "room=old").remove(0).1;
        assert!(welcome.contains(r#""head":0,"#), "{welcome}");
        assert!(!welcome.contains(&epoch), "a new epoch: {welcome}");
    }

    #[test]
    fn feed_notices_name_their_numbers_after_the_seed_keys() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, "name=al");
        let notice = |n| {
            let frame = h.chat.feed_notice(ConnId(1), n, h.out.groups()).unwrap();
            ws::text_frame_payload(&frame).to_owned()
        };
        assert_eq!(
            notice(FeedNotice::Gap {
                from: 1001,
                to: 1017
            }),
            r#"{"type":"sys","message":"17 earlier lines are no longer available","event":"gap","from":1001,"to":1017}"#
        );
        assert_eq!(
            notice(FeedNotice::Gap { from: 5, to: 5 }),
            r#"{"type":"sys","message":"1 earlier line is no longer available","event":"gap","from":5,"to":5}"#
        );
        assert_eq!(
            notice(FeedNotice::CaughtUp { head: 9 }),
            format!(
                r#"{{"type":"sys","message":"{CAUGHT_UP}","event":"caught_up","head":9,"count":1,"members":[{{"id":1,"name":"al"}}]}}"#
            )
        );
    }

    /// A history that confirms only when told, as a disk log or Redis will.
    struct Deferred {
        inner: MemoryHistory,
        held: Vec<Confirmed>,
        confirm: Arc<std::sync::atomic::AtomicBool>,
    }

    impl History for Deferred {
        fn position(&mut self, room: &str) -> Option<Position> {
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
        fn expire_room(&mut self, room: &str, cutoff: Instant) -> bool {
            self.inner.expire_room(room, cutoff)
        }
        fn expire_rooms(&mut self, cutoff: Instant, keep: &dyn Fn(&str) -> bool) -> usize {
            self.inner.expire_rooms(cutoff, keep)
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
        let mut h = Harness::new(ChatRoom::new().with_history(Box::new(deferred)));
        h.open(3, "");
        let lobby = h.group("lobby");
        h.say(3, "one");
        h.say(3, "two");
        h.chat.on_turn_end(&mut h.out);
        assert!(h.out.is_empty(), "not confirmed, not sent");
        confirm.store(true, std::sync::atomic::Ordering::Relaxed);
        h.chat.on_turn_end(&mut h.out);
        let got: Vec<_> = h
            .out
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
                (Recipients::Group(lobby), Some(1), true),
                (Recipients::Group(lobby), Some(2), false)
            ]
        );
    }

    #[test]
    fn control_characters_are_escaped_and_grow_at_most_sixfold() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(1, "");
        let line: String = "\u{1}".repeat(100);
        let json = h.say(1, &line).remove(0).1;
        assert!(json.contains(r"\u0001\u0001"));
        assert!(json.len() <= 6 * line.len() + 64, "{}", json.len());
    }

    #[test]
    fn lines_and_commands_over_the_limit_are_refused_and_a_flood_is_closed() {
        let limit = RateLimit {
            burst: 3,
            per_second: 0.001,
        };
        let mut h = Harness::new(ChatRoom::with_rate_limit(Some(limit)));
        h.open(5, "");
        let lobby = h.group("lobby");
        assert_eq!(h.say(5, "one")[0].0, Recipients::Group(lobby));
        assert_eq!(h.say(5, "/who")[0].0, Recipients::One(ConnId(5)));
        assert_eq!(h.say(5, "/nick x")[0].0, Recipients::Group(lobby));
        let too_fast = format!(r#"{{"type":"sys","message":"{TOO_FAST}"}}"#);
        assert_eq!(h.say(5, "/who"), [(Recipients::One(ConnId(5)), too_fast)]);
        // Going on at once: refused until the debt is over ten bursts.
        let mut lines = 1;
        while !h.say(5, "more").iter().any(|(_, what)| what == "close") {
            lines += 1;
            assert!(lines <= 100, "never judged flooding");
        }
        assert_eq!(lines, 30, "debt over 10 x burst (3) = 30 refused lines");
        assert_eq!(
            h.chat.history.position(LOBBY).unwrap().head,
            1,
            "refused lines are not history"
        );
    }

    #[test]
    fn joins_and_leaves_are_announced_only_up_to_the_set_room_size() {
        let mut h = Harness::new(ChatRoom::new().announcing_joins_up_to(Some(2)));
        let notices = |sent: Vec<(Recipients, String)>| {
            sent.iter()
                .filter(|(to, _)| !matches!(to, Recipients::One(_)))
                .count()
        };
        assert_eq!(
            notices(h.open(1, "")),
            1,
            "a room of 1: announced to nobody else"
        );
        assert_eq!(notices(h.open(2, "")), 1, "a room of 2: announced");
        assert_eq!(notices(h.open(3, "")), 0, "a room of 3: not announced");
        assert_eq!(notices(h.close(3)), 0, "leaving a room of 3: not announced");
        assert_eq!(notices(h.close(2)), 1, "leaving a room of 2: announced");

        let mut silent = Harness::new(ChatRoom::new().announcing_joins_up_to(Some(0)));
        assert_eq!(notices(silent.open(1, "")), 0, "0: never");
        assert_eq!(notices(silent.open(2, "")), 0, "0: never");
        assert_eq!(notices(silent.close(1)), 0, "0: never");
    }

    #[test]
    fn leaving_is_announced_to_those_who_remain_in_the_room() {
        let mut h = Harness::new(ChatRoom::new());
        h.open(3, "name=al");
        h.open(4, "");
        h.open(5, "room=elsewhere");
        let lobby = h.group("lobby");
        assert_eq!(
            h.close(3),
            [(
                Recipients::GroupExcept(lobby, ConnId(3)),
                r#"{"type":"sys","message":"al has left","event":"leave","id":3,"name":"al","count":1}"#
                    .into()
            )]
        );
        assert_eq!(h.out.groups().count("lobby"), 1);
        assert_eq!(
            h.chat.people.len(),
            0,
            "no name, no rate limit: nothing kept"
        );
    }
}
