//! One connection to Redis, spoken from the event loop itself: a RESP
//! client as a state machine over a non-blocking mio socket, with no
//! thread and no async runtime (the connections' counterpart of
//! [`crate::connection`]).
//!
//! A [`RedisConn`] is told of readiness ([`RedisConn::ready`]) and of time
//! ([`RedisConn::tick`]) by its owner, which the loop drives; it answers with
//! [`Happening`]s. Commands are pipelined: [`RedisConn::send`] queues one,
//! tagged by its owner, and the replies, which Redis sends in the order of
//! the commands, are matched to the tags in that order. Every command has a
//! deadline: a reply that does not come in time means the connection is
//! broken, and it is dropped and made again (after a backoff that doubles,
//! with jitter, so that many servers do not reconnect in step). When it goes
//! down, the owner gets back the tags still waiting for a reply: their
//! commands may or may not have run, which only the owner can find out.
//!
//! Commands and replies are RESP2, encoded and decoded by [`crate::resp`],
//! which parses from the start of the buffer each time, so a reply is read
//! whole before it is parsed, and one larger than [`MAX_REPLY_BYTES`] breaks the
//! connection instead of growing without bound. Anything Redis sends that is
//! not RESP, or a reply nobody asked for, breaks the connection too: it
//! never panics the loop.
//!
//! A host name is resolved on a thread of its own (the system resolver
//! blocks), polled from [`RedisConn::tick`]; an IP address needs none.
//! `rediss://` (TLS) is not supported.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::metrics::{self, Exposition, Histogram};
pub use crate::resp::Reply;
use crate::resp::{encode_command, next_frame};

/// The largest reply read: past it, the connection is broken (a reply is
/// buffered whole, and parsed again from its start as it arrives).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// How long a command may wait for its reply before the connection is
/// taken for broken.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// How long connecting (resolving, then the TCP handshake) may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// The first wait before reconnecting, doubled after each failure ...
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// ... up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often a name being resolved on its thread is checked on.
const RESOLVE_POLL: Duration = Duration::from_millis(10);

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Where Redis is: `redis://[user:password@]host:port[/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// A host name or an IP address.
    pub host: String,
    /// The port (6379 if the URL gives none).
    pub port: u16,
    /// The ACL user, if any (`AUTH user password`).
    pub user: Option<String>,
    /// The password, if any (`AUTH password` without a user).
    pub password: Option<String>,
    /// The database number (`SELECT`), 0 if none.
    pub db: u32,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RedisUrl {
    /// The URL without its password, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        } else if self.password.is_some() {
            f.write_str("(password)@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("rediss://") {
            return Err("rediss:// (TLS to Redis) is not supported; use redis://".into());
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, authority),
        };
        let decode = |s: &str| -> Result<String, String> {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once percent-decoded".to_owned())
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(c) => match c.split_once(':') {
                Some(("", password)) => (None, Some(decode(password)?)),
                Some((user, password)) => (Some(decode(user)?), Some(decode(password)?)),
                None => (Some(decode(c)?), None),
            },
        };
        if user.is_some() && password.is_none() {
            return Err("a user without a password: give user:password@".into());
        }
        let (host, port) = if let Some(v6) = address.strip_prefix('[') {
            let (host, port) = v6
                .split_once(']')
                .ok_or_else(|| format!("{address:?}: an IPv6 address needs its closing ]"))?;
            (host, port.strip_prefix(':'))
        } else {
            match address.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        let port = match port {
            None => 6379,
            Some(p) => p
                .parse()
                .map_err(|_| format!("{p:?} is not a port (1-65535)"))
                .and_then(|p: u16| if p == 0 { Err("port 0".into()) } else { Ok(p) })?,
        };
        let db = match path {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("{db:?} is not a database number"))?,
        };
        Ok(RedisUrl {
            host: host.to_owned(),
            port,
            user,
            password,
            db,
        })
    }
}

/// What happened on a connection, for its owner.
#[derive(Debug)]
pub enum Happening<T> {
    /// The connection is up (and authenticated, on its database): the
    /// owner sends what a fresh connection needs.
    Up,
    /// The reply to the command tagged `T`.
    Reply(T, Reply),
    /// A frame no command asked for: a message on a subscribed channel
    /// (on a connection made with `pushes`).
    Push(Reply),
    /// The connection broke (or could not be made); the tags of the
    /// commands that had no reply, oldest first. It is made again after a
    /// backoff.
    Down(Vec<T>),
}

/// Where a connection stands.
enum State {
    /// Not connected; the next attempt at `retry_at`.
    Down { retry_at: Instant },
    /// A host name being resolved on its thread.
    Resolving {
        answer: Receiver<io::Result<Vec<SocketAddr>>>,
        until: Instant,
    },
    /// The TCP handshake under way to `addrs[0]`; the rest are tried next.
    Connecting {
        socket: TcpStream,
        addrs: Vec<SocketAddr>,
        until: Instant,
    },
    /// Connected.
    Up { socket: TcpStream },
}

/// A command's tag: the owner's, or the connection's own (`AUTH`, `SELECT`).
enum Tag<T> {
    Own,
    Owner(T),
}

/// What one connection counts, for `/metrics`.
#[derive(Debug, Clone)]
pub struct RedisStats {
    /// Commands written (or queued to be).
    pub commands: u64,
    /// Error replies (`-ERR ...`).
    pub error_replies: u64,
    /// Times it went down, or an attempt to connect failed.
    pub failures: u64,
    /// Times it connected again after being down.
    pub reconnects: u64,
    /// From a command's queuing to its reply: up to a turn's wait before
    /// it is written (commands go out at the end of the turn), then the
    /// round trip.
    pub replies: Histogram,
}

/// Writes the counts of `connections` (by role) for `/metrics`, and the
/// reply times of the first (the commands' connection).
pub fn write_metrics(connections: &[(&str, &RedisStats)], out: &mut Exposition) {
    /// A counter's name, its help, and where its value is.
    type Counter = (&'static str, &'static str, fn(&RedisStats) -> u64);
    let counters: [Counter; 4] = [
        (
            "eddy_redis_commands_total",
            "Commands sent to Redis, by connection.",
            |s| s.commands,
        ),
        (
            "eddy_redis_error_replies_total",
            "Error replies from Redis, by connection.",
            |s| s.error_replies,
        ),
        (
            "eddy_redis_failures_total",
            "Times a connection to Redis broke, or an attempt to make it failed.",
            |s| s.failures,
        ),
        (
            "eddy_redis_reconnects_total",
            "Times a connection to Redis was made again after it was down.",
            |s| s.reconnects,
        ),
    ];
    for (name, help, pick) in counters {
        let samples: Vec<(&str, u64)> = connections
            .iter()
            .map(|(role, stats)| (*role, pick(stats)))
            .collect();
        out.counter_by(name, help, "conn", &samples);
    }
    if let Some((_, commands)) = connections.first() {
        out.histogram(
            "eddy_redis_reply_seconds",
            "From a command's queuing (written at the end of the loop's turn) to its reply.",
            &commands.replies,
        );
    }
}

/// One connection to Redis (see the module's docs).
pub struct RedisConn<T> {
    /// What it is for, in logs ("commands", "subscriber").
    role: &'static str,
    url: RedisUrl,
    token: Token,
    registry: Registry,
    state: State,
    /// Whether frames with no command waiting are pushes (a subscriber).
    pushes: bool,
    /// Commands encoded and not yet written.
    out: Vec<u8>,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    /// The tags of the commands written or queued, oldest first, and when
    /// each one's reply is due.
    waiting: VecDeque<(Tag<T>, Instant)>,
    backoff: Duration,
    /// Whether it has been up since it was last down (for the logs: say
    /// once that Redis is unreachable, and once that it is back).
    said_down: bool,
    /// When the answer to a [`probe`](Self::probe) is due, while one is
    /// awaited.
    probe_due: Option<Instant>,
    /// Commands were queued since the last flush.
    unflushed: bool,
    /// What it counts for `/metrics`.
    stats: RedisStats,
}

impl<T> fmt::Debug for RedisConn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("role", &self.role)
            .field("url", &self.url)
            .field("up", &self.is_up())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<T> RedisConn<T> {
    /// A connection to `url`, registered with `registry` under `token`
    /// once made; the first attempt is at the first [`tick`](Self::tick).
    /// `pushes`: frames nobody asked for are messages (a subscriber).
    pub fn new(
        role: &'static str,
        url: RedisUrl,
        registry: Registry,
        token: Token,
        pushes: bool,
    ) -> Self {
        RedisConn {
            role,
            url,
            token,
            registry,
            state: State::Down {
                retry_at: Instant::now(),
            },
            pushes,
            out: Vec::new(),
            input: Vec::new(),
            waiting: VecDeque::new(),
            backoff: FIRST_BACKOFF,
            said_down: false,
            probe_due: None,
            unflushed: false,
            stats: RedisStats {
                commands: 0,
                error_replies: 0,
                failures: 0,
                reconnects: 0,
                replies: Histogram::new(metrics::SECONDS_BUCKETS),
            },
        }
    }

    /// What it has counted.
    pub fn stats(&self) -> &RedisStats {
        &self.stats
    }

    /// Whether it is connected (and can take commands).
    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// How many commands wait for their reply.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Queues a command (its words), tagged `tag`; written at the next
    /// [`flush`](Self::flush). Only while [`is_up`](Self::is_up): a
    /// command for a connection that is down is the owner's to refuse.
    pub fn send(&mut self, tag: T, words: &[&[u8]]) {
        debug_assert!(self.is_up(), "send on a connection that is down");
        self.queue(Tag::Owner(tag), words);
    }

    /// Whether commands were queued since the last [`flush`](Self::flush)
    /// (what a flush could not write waits for the socket to be writable,
    /// and does not count: asking again at once would spin).
    pub fn has_output(&self) -> bool {
        self.unflushed
    }

    /// Asks a subscriber for a sign of life (`PING`, answered by a `pong`
    /// push that its owner reports with [`answered`](Self::answered));
    /// no answer within [`REPLY_DEADLINE`] breaks the connection, as a
    /// command's missing reply would. One probe at a time.
    pub fn probe(&mut self) {
        if self.is_up() && self.probe_due.is_none() {
            self.push_command(&[b"PING"]);
            self.probe_due = Some(Instant::now() + REPLY_DEADLINE);
        }
    }

    /// The probe was answered.
    pub fn answered(&mut self) {
        self.probe_due = None;
    }

    /// Queues a command that gets no reply of its own: on a subscriber,
    /// `SSUBSCRIBE` and `SUNSUBSCRIBE`, answered by pushes.
    pub fn push_command(&mut self, words: &[&[u8]]) {
        debug_assert!(
            self.pushes,
            "a command without a reply on a plain connection"
        );
        self.append(words);
    }

    /// Appends a command to what is to be written, its reply awaited.
    fn queue(&mut self, tag: Tag<T>, words: &[&[u8]]) {
        self.append(words);
        self.waiting
            .push_back((tag, Instant::now() + REPLY_DEADLINE));
    }

    /// Appends a command to what is to be written.
    fn append(&mut self, words: &[&[u8]]) {
        self.stats.commands += 1;
        encode_command(words, &mut self.out);
        self.unflushed = true;
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self, happened: &mut Vec<Happening<T>>) {
        self.unflushed = false;
        let State::Up { socket } = &mut self.state else {
            return;
        };
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Ok(());
            }
            match socket.write(&self.out[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.out.drain(..written);
        if let Err(e) = result {
            self.fail(&format!("cannot write: {e}"), happened);
        }
    }

    /// The socket is ready: finish connecting, read replies, write.
    pub fn ready(&mut self, happened: &mut Vec<Happening<T>>) {
        if let State::Connecting { socket, .. } = &mut self.state {
            match socket.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.next_address(&e.to_string(), happened),
            }
            match socket.peer_addr() {
                Ok(_) => self.connected(happened),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.next_address(&e.to_string(), happened),
            }
        }
        self.read(happened);
        self.flush(happened);
    }

    /// Reads until the socket would block, then hands over every whole reply.
    fn read(&mut self, happened: &mut Vec<Happening<T>>) {
        let State::Up { socket } = &mut self.state else {
            return;
        };
        let mut closed = None;
        loop {
            let start = self.input.len();
            self.input.resize(start + READ_CHUNK, 0);
            match socket.read(&mut self.input[start..]) {
                Ok(0) => {
                    self.input.truncate(start);
                    closed = Some("Redis closed the connection".to_owned());
                    break;
                }
                Ok(n) => self.input.truncate(start + n),
                Err(e) => {
                    self.input.truncate(start);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            closed = Some(format!("cannot read: {e}"));
                            break;
                        }
                    }
                }
            }
            if self.input.len() > MAX_REPLY_BYTES {
                break;
            }
        }
        if let Err(why) = self.parse(happened) {
            return self.fail(&why, happened);
        }
        if self.input.len() > MAX_REPLY_BYTES {
            let why = format!("a reply is over {MAX_REPLY_BYTES} bytes");
            return self.fail(&why, happened);
        }
        if let Some(why) = closed {
            self.fail(&why, happened);
        }
    }

    /// Hands over the whole replies at the front of the input.
    fn parse(&mut self, happened: &mut Vec<Happening<T>>) -> Result<(), String> {
        let mut used = 0;
        let now = Instant::now();
        let result = loop {
            let frame = match next_frame(&self.input, &mut used) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            };
            if matches!(frame, Reply::Error(_)) {
                self.stats.error_replies += 1;
            }
            if let Some((_, due)) = self.waiting.front() {
                let queued = due.checked_sub(REPLY_DEADLINE).unwrap_or(*due);
                let waited = now.saturating_duration_since(queued);
                self.stats.replies.observe_duration(waited);
            }
            match self.waiting.pop_front() {
                Some((Tag::Owner(tag), _)) => happened.push(Happening::Reply(tag, frame)),
                Some((Tag::Own, _)) => {
                    if let Reply::Error(e) = frame {
                        break Err(format!("refused: {e}"));
                    }
                }
                None if self.pushes => happened.push(Happening::Push(frame)),
                None => break Err("a reply to no command".to_owned()),
            }
        };
        self.input.drain(..used);
        result
    }

    /// Time passes: connect when it is time, give up on a connection that
    /// takes too long or a reply that does not come.
    pub fn tick(&mut self, now: Instant, happened: &mut Vec<Happening<T>>) {
        match &mut self.state {
            State::Down { retry_at } if *retry_at <= now => self.connect(now, happened),
            State::Resolving { answer, until } => match answer.try_recv() {
                Ok(Ok(addrs)) if !addrs.is_empty() => self.try_addresses(addrs, happened),
                Ok(Ok(_)) => self.down("the name resolves to no address", happened),
                Ok(Err(e)) => self.down(&format!("cannot resolve: {e}"), happened),
                Err(TryRecvError::Disconnected) => self.down("the resolver stopped", happened),
                Err(TryRecvError::Empty) if *until <= now => {
                    self.down("resolving the name took too long", happened)
                }
                Err(TryRecvError::Empty) => {}
            },
            State::Connecting { until, .. } if *until <= now => {
                self.next_address("connecting took too long", happened)
            }
            State::Up { .. }
                if self.waiting.front().is_some_and(|(_, due)| *due <= now)
                    || self.probe_due.is_some_and(|due| due <= now) =>
            {
                let why = format!("no reply within {REPLY_DEADLINE:?}");
                self.fail(&why, happened);
            }
            _ => {}
        }
    }

    /// When [`tick`](Self::tick) has something to do next.
    pub fn next_tick(&self) -> Option<Instant> {
        match &self.state {
            State::Down { retry_at } => Some(*retry_at),
            State::Resolving { until, .. } => Some((Instant::now() + RESOLVE_POLL).min(*until)),
            State::Connecting { until, .. } => Some(*until),
            State::Up { .. } => {
                let reply = self.waiting.front().map(|(_, due)| *due);
                reply.into_iter().chain(self.probe_due).min()
            }
        }
    }

    fn connect(&mut self, now: Instant, happened: &mut Vec<Happening<T>>) {
        if let Ok(ip) = self.url.host.parse::<IpAddr>() {
            return self.try_addresses(vec![SocketAddr::new(ip, self.url.port)], happened);
        }
        // The system resolver blocks: ask it on a thread of its own.
        let (tell, answer) = mpsc::channel();
        let target = (self.url.host.clone(), self.url.port);
        let spawned = std::thread::Builder::new()
            .name("eddy-resolve".into())
            .spawn(move || {
                let addrs = target.to_socket_addrs().map(Iterator::collect);
                let _ = tell.send(addrs); // the connection may be gone
            });
        match spawned {
            Ok(_) => {
                self.state = State::Resolving {
                    answer,
                    until: now + CONNECT_DEADLINE,
                }
            }
            Err(e) => self.down(&format!("cannot start a resolver thread: {e}"), happened),
        }
    }

    fn try_addresses(&mut self, mut addrs: Vec<SocketAddr>, happened: &mut Vec<Happening<T>>) {
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            let attempt = TcpStream::connect(addr).and_then(|mut socket| {
                self.registry.register(
                    &mut socket,
                    self.token,
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(socket)
            });
            match attempt {
                Ok(socket) => {
                    addrs.insert(0, addr);
                    self.state = State::Connecting {
                        socket,
                        addrs,
                        until: Instant::now() + CONNECT_DEADLINE,
                    };
                    return;
                }
                Err(e) if addrs.is_empty() => {
                    return self.down(&format!("cannot connect to {addr}: {e}"), happened);
                }
                Err(_) => {}
            }
        }
        self.down("no address to connect to", happened)
    }

    /// The address being tried failed: the next one, or down.
    fn next_address(&mut self, why: &str, happened: &mut Vec<Happening<T>>) {
        let old = std::mem::replace(
            &mut self.state,
            State::Down {
                retry_at: Instant::now(),
            },
        );
        if let State::Connecting {
            mut socket,
            mut addrs,
            ..
        } = old
        {
            let _ = self.registry.deregister(&mut socket);
            let tried = addrs.remove(0);
            if !addrs.is_empty() {
                return self.try_addresses(addrs, happened);
            }
            return self.down(&format!("cannot connect to {tried}: {why}"), happened);
        }
        self.down(why, happened)
    }

    fn connected(&mut self, happened: &mut Vec<Happening<T>>) {
        let old = std::mem::replace(
            &mut self.state,
            State::Down {
                retry_at: Instant::now(),
            },
        );
        let State::Connecting { socket, .. } = old else {
            return;
        };
        if let Err(e) = socket.set_nodelay(true) {
            warn!("redis: cannot set TCP_NODELAY: {e}");
        }
        self.state = State::Up { socket };
        self.backoff = FIRST_BACKOFF;
        if self.said_down {
            self.stats.reconnects += 1;
            info!("redis {} ({}): connected again", self.url, self.role);
        } else {
            info!("redis {} ({}): connected", self.url, self.role);
        }
        self.said_down = false;
        match (self.url.user.clone(), self.url.password.clone()) {
            (Some(user), Some(password)) => {
                self.queue(Tag::Own, &[b"AUTH", user.as_bytes(), password.as_bytes()])
            }
            (None, Some(password)) => self.queue(Tag::Own, &[b"AUTH", password.as_bytes()]),
            _ => {}
        }
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            self.queue(Tag::Own, &[b"SELECT", db.as_bytes()]);
        }
        happened.push(Happening::Up);
    }

    /// A connection that was up broke (or its owner found its replies make
    /// no sense): its waiting commands go back to the owner, and it is made
    /// again after the backoff.
    pub fn fail(&mut self, why: &str, happened: &mut Vec<Happening<T>>) {
        if let State::Up { socket } = &mut self.state {
            let _ = self.registry.deregister(socket);
        }
        self.down(why, happened);
    }

    fn down(&mut self, why: &str, happened: &mut Vec<Happening<T>>) {
        self.stats.failures += 1;
        if let State::Up { socket } | State::Connecting { socket, .. } = &mut self.state {
            let _ = self.registry.deregister(socket);
        }
        if self.said_down {
            log::debug!(
                "redis {} ({}): still unreachable: {why}",
                self.url,
                self.role
            );
        } else {
            warn!(
                "redis {} ({}): {why}; retrying (lines are not delivered meanwhile)",
                self.url, self.role
            );
            self.said_down = true;
        }
        let jitter = jitter(self.backoff);
        self.state = State::Down {
            retry_at: Instant::now() + jitter,
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.out.clear();
        self.input.clear();
        self.probe_due = None;
        let lost: Vec<T> = self
            .waiting
            .drain(..)
            .filter_map(|(tag, _)| match tag {
                Tag::Owner(tag) => Some(tag),
                Tag::Own => None,
            })
            .collect();
        happened.push(Happening::Down(lost));
    }
}

/// Between half and all of `backoff`, at random: servers that lost Redis
/// together do not all come back in the same millisecond.
fn jitter(backoff: Duration) -> Duration {
    let random = crate::random::u64() as u32;
    let half = backoff / 2;
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}

/// A reply's text: a simple or bulk string that is UTF-8.
pub fn text(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::SimpleString(b) | Reply::BulkString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// A reply's number: an integer, or a string that is one.
pub fn number(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_checked() {
        let url: RedisUrl = "redis://127.0.0.1:6380/2".parse().unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db, url.user, url.password),
            ("127.0.0.1", 6380, 2, None, None)
        );
        let url: RedisUrl = "redis://eddy:p%40ss:w@redis.internal".parse().unwrap();
        assert_eq!(url.user.as_deref(), Some("eddy"));
        assert_eq!(url.password.as_deref(), Some("p@ss:w"));
        assert_eq!((url.port, url.db), (6379, 0));
        assert_eq!(url.to_string(), "redis://eddy@redis.internal:6379/0");
        let url: RedisUrl = "redis://:secret@[::1]:7000".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 7000));
        assert_eq!(url.password.as_deref(), Some("secret"));
        assert_eq!(url.to_string(), "redis://(password)@[::1]:7000/0");
        for (bad, why) in [
            ("rediss://h:1", "TLS"),
            ("http://h", "not a redis://"),
            ("redis://:1", "no host"),
            ("redis://h:0", "port 0"),
            ("redis://h:99999", "not a port"),
            ("redis://h:1/x", "database"),
            ("redis://u@h:1", "without a password"),
            ("redis://[::1:1", "closing ]"),
        ] {
            let err = bad.parse::<RedisUrl>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100));
        }
    }
}
