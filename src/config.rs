//! [`Config`]: every limit and setting of a server, in one value.
//!
//! `main` turns flags into a `Config`; tests and benches build one directly.
//! Either way [`Server::bind`](crate::Server::bind) checks it with
//! [`Config::validate`] first, so a bad combination is refused the same way
//! everywhere.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::http;
use crate::rate::RateLimit;

/// Rooms up to this size hear of every join and leave (`--announce-joins-up-to`).
pub const DEFAULT_ANNOUNCE_JOINS_UP_TO: usize = 1000;

/// Default for [`Config::max_message_bytes`]: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Default for [`Config::max_pending_bytes`]: 1 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 1024 * 1024;

/// [`Config::max_pending_bytes`] must be at least this many messages. A chat
/// line of control characters grows about 6x when escaped into JSON
/// (`\u0001`), so a cap below ~6 messages could cut off a client for
/// receiving one legal line; 8 leaves room for the JSON around it.
pub const PENDING_MESSAGES_MIN: usize = 8;

/// Default for [`Config::read_buffer_bytes`]: the most one `read` takes
/// into tungstenite's buffer. A client's codec, buffer included, lives only
/// while it has bytes to parse (`ws::Codec`): an idle client holds none, so
/// this is not memory per connection. 1 KiB takes a sender's burst of ten
/// chat lines in one `read` (128 bytes took one line a read: 39,000 reads a
/// second against 15,000 with 1,024, 1,000 rooms of 10 with ten lines in
/// flight a sender) and stays in glibc's per-thread cache of small blocks
/// (up to 1,032 bytes), which 4 KiB would not. A large message takes one
/// `read` per this many bytes.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 1024;

/// Default for [`Config::replay`]: a screenful of context for a newcomer.
pub const DEFAULT_REPLAY: usize = 50;

/// Default for [`Config::history_lines`].
pub const DEFAULT_HISTORY_LINES: usize = 100_000;

/// Default for [`Config::history_bytes`]: 64 MiB.
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;

/// Default for [`Config::history_memory`]: 256 MiB.
pub const DEFAULT_HISTORY_MEMORY: usize = 256 * 1024 * 1024;

/// Default for [`Config::max_rooms`].
pub const DEFAULT_MAX_ROOMS: usize = 10_000;

/// Default for [`Config::presence_list_up_to`]: a member list fits a
/// sidebar up to about this size; beyond it, the count says enough.
pub const DEFAULT_PRESENCE_LIST_UP_TO: usize = 100;

/// Default for [`Config::history_ttl`]: a week.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Default for [`Config::resume_window`]: long enough for a Wi-Fi blip, a
/// tunnel or a laptop lid; short enough that an id is not held for long.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(120);

/// Default for [`Config::close_timeout`]: Tornado's 5 seconds.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default for [`Config::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`Config::keep_alive_timeout`].
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`Config::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Default for [`Config::ping_timeout`].
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Default for [`Config::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The default `Content-Security-Policy` of the page: nothing but this
/// server's own files (`'self'`), no inline script or style, no `eval`, no
/// connection to another origin, no framing, and no form submission (the
/// page sends with script; should its script fail, a line must not end up
/// in a URL). Everything the built-in page
/// does fits it; an XSS payload would not run under it even if one slipped
/// through the page's escaping.
pub const DEFAULT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                               img-src 'self'; connect-src 'self'; base-uri 'none'; \
                               form-action 'none'; frame-ancestors 'none'";

/// A server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The largest message a client may send, in bytes; also the largest
    /// single frame, so an oversized frame is refused from its header. Over
    /// it: close 1009.
    pub max_message_bytes: usize,
    /// The most bytes queued for a client (`--max-pending-bytes`). A chat
    /// line that would take a client past it is not queued: the client
    /// falls behind and is fed the lines it missed from history once it
    /// reads again ([`crate::feed`]), so one slow reader never grows the
    /// server's memory and is never cut off for being slow. Output that
    /// history cannot give again (pongs, notices) may take it up to twice
    /// this; past that, after a flush, the client is cut off (close 1008).
    /// (With a handler that keeps no history, past this.) At least
    /// [`PENDING_MESSAGES_MIN`] × `max_message_bytes`.
    pub max_pending_bytes: usize,
    /// Origins allowed to open a WebSocket besides the server's own host
    /// (`--allow-origin`), e.g. `https://chat.example.com`.
    pub allowed_origins: Vec<String>,
    /// The chat's flood control (`--rate-limit`): per client, a burst and a
    /// rate of lines; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// The chat announces joins and leaves while the room has at most this
    /// many members (`--announce-joins-up-to`); `None`: always (`all`), as
    /// the seed does; `Some(0)`: never.
    pub announce_joins_up_to: Option<usize>,
    /// How many of the room's newest lines a newcomer gets after the
    /// welcome (`--replay`); 0: none, the tutorial's behaviour exactly.
    pub replay: usize,
    /// Per room, the newest this many lines are kept, for newcomers,
    /// resumes and slow readers (`--history-lines`).
    pub history_lines: usize,
    /// Per room, at most this many bytes of lines are kept, counting each
    /// frame and its bookkeeping (`--history-bytes`).
    pub history_bytes: usize,
    /// Over all rooms, at most this many bytes of history are kept
    /// (`--history-memory`); beyond it the least recently active rooms'
    /// history is dropped, and their returning clients are told of the gap.
    pub history_memory: usize,
    /// A room with no new line for this long, and nobody in it, is
    /// forgotten: its history, seqs and epoch (`--history-ttl`). So room
    /// names cannot pile up forever.
    pub history_ttl: Duration,
    /// The most rooms with members at once (`--max-rooms`): a connection
    /// that would open one more is answered 503.
    pub max_rooms: usize,
    /// The welcome (and `caught_up`) list a room's members while it has at
    /// most this many (`--presence-list-up-to`); above, only the count.
    pub presence_list_up_to: usize,
    /// How long after a connection closed its resume token still brings
    /// back its id and name (`--resume-window`).
    pub resume_window: Duration,
    /// The most connections at once (`--max-connections`); more are
    /// answered 503 and closed. `None`: what the file-descriptor limit
    /// allows, less a reserve ([`crate::limits`]).
    pub max_connections: Option<usize>,
    /// The most connections from one IP address (`--max-connections-per-ip`);
    /// `None`: no such limit. Opt-in: behind a proxy every client has the
    /// proxy's address.
    pub max_connections_per_ip: Option<usize>,
    /// Where `index.html` is (`--templates`); `None` for the default search.
    pub templates: Option<PathBuf>,
    /// The `Content-Security-Policy` sent with HTML pages (`--csp`); `None`
    /// sends none (`--csp off`, for legacy pages such as the tutorial's,
    /// which needs `eval` and inline script).
    pub csp: Option<String>,
    /// How much tungstenite reads at a time per WebSocket connection: its
    /// read buffer starts at this size. Larger reads fewer times; the
    /// buffer lives only while the connection has bytes to parse (it grows
    /// to hold a frame larger than itself, and goes with the codec once the
    /// message is read).
    pub read_buffer_bytes: usize,
    /// How long a closing connection may take to finish (flush its close
    /// frame, see the peer's end) before it is dropped.
    pub close_timeout: Duration,
    /// The absolute deadline for a request head, the WebSocket handshake
    /// included, from its first byte (`--header-timeout`). A head still
    /// incomplete then gets 408 and the connection is closed.
    pub header_timeout: Duration,
    /// How long a kept-alive HTTP connection may idle between requests
    /// (`--keep-alive-timeout`).
    pub keep_alive_timeout: Duration,
    /// After this much silence an open WebSocket gets a ping
    /// (`--ping-interval`); `None`: no heartbeat.
    pub ping_interval: Option<Duration>,
    /// How long a ping may go unanswered, by its pong or any other frame,
    /// before the connection is closed with 1011 (`--ping-timeout`). This is
    /// what reaps a peer that vanished without a FIN (half-open).
    pub ping_timeout: Duration,
    /// How long a shutdown waits for clients to take their close frames.
    pub shutdown_timeout: Duration,
    /// Where the rooms' history is kept on disk (`--data-dir`); `None`: in
    /// memory only, gone at a restart. `None` by default, so tests and
    /// embedders never share a directory by accident; the binary's default
    /// is [`DEFAULT_DATA_DIR`].
    pub data_dir: Option<PathBuf>,
    /// When the history on disk is synced (`--fsync`).
    pub fsync: Fsync,
    /// The Redis that keeps the rooms' history and order, shared with other
    /// servers (`--redis`); then [`Config::data_dir`] is not used.
    pub redis: Option<crate::redis::RedisUrl>,
    /// How many worker processes serve the port (`--workers`): 1, this
    /// process alone; more need [`Config::redis`].
    pub workers: usize,
    /// Where the metrics listener listens (`--metrics-addr`): `/metrics`,
    /// `/healthz`, `/readyz`. `None`: no such listener. With `--workers`,
    /// each worker has its own ([`crate::workers::metrics_addr_of`]).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The certificate chain and key for HTTPS and `wss://` on the chat
    /// port (`--tls-cert`, `--tls-key`; the `tls` feature). `None`: plain
    /// HTTP.
    pub tls: Option<TlsFiles>,
}

/// Where the TLS certificate chain and key are (PEM files), read at startup
/// and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, then the chain up to (not including) the root.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub key: PathBuf,
}

/// The binary's `--data-dir` when none is given: relative to the working
/// directory.
pub const DEFAULT_DATA_DIR: &str = "eddy-data";

/// When a history on disk is synced to the device (`--fsync`): what
/// survives a power cut or a kernel crash. Whatever the mode, a line is in
/// its room's log (the kernel's page cache) before any client gets it, so
/// killing the server loses nothing a client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Each turn's lines are synced before any of them goes out: nothing a
    /// client saw is lost even to a power cut. Costs a disk sync per turn
    /// with lines, on the loop.
    Always,
    /// A helper thread syncs every log once a second, as Redis's
    /// `appendfsync everysec`: a power cut loses at most about the last
    /// second. The loop never waits for the disk.
    #[default]
    EverySec,
    /// Never synced by Eddy (the kernel writes back when it likes, about
    /// 30 seconds); synced at a clean shutdown.
    No,
}

impl Fsync {
    /// The flag's value for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            allowed_origins: Vec::new(),
            rate_limit: Some(RateLimit::default()),
            announce_joins_up_to: Some(DEFAULT_ANNOUNCE_JOINS_UP_TO),
            replay: DEFAULT_REPLAY,
            history_lines: DEFAULT_HISTORY_LINES,
            history_bytes: DEFAULT_HISTORY_BYTES,
            history_memory: DEFAULT_HISTORY_MEMORY,
            history_ttl: DEFAULT_HISTORY_TTL,
            max_rooms: DEFAULT_MAX_ROOMS,
            presence_list_up_to: DEFAULT_PRESENCE_LIST_UP_TO,
            data_dir: None,
            fsync: Fsync::default(),
            redis: None,
            workers: 1,
            metrics_addr: None,
            tls: None,
            resume_window: DEFAULT_RESUME_WINDOW,
            max_connections: None,
            max_connections_per_ip: None,
            templates: None,
            csp: Some(DEFAULT_CSP.to_owned()),
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            ping_timeout: DEFAULT_PING_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The chat port's URL scheme, for the log: `https` with `--tls-cert`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Checks the settings against each other, and normalizes the allowed
    /// origins (lowercase, no trailing slash).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.max_message_bytes == 0 {
            return Err(ConfigError("--max-message-bytes must be at least 1".into()));
        }
        let floor = self.max_message_bytes.saturating_mul(PENDING_MESSAGES_MIN);
        if self.max_pending_bytes < floor {
            return Err(ConfigError(format!(
                "--max-pending-bytes ({}) must be at least {PENDING_MESSAGES_MIN} x \
                 --max-message-bytes ({}) = {floor}: one line of control characters \
                 grows ~6x as JSON, and must fit",
                self.max_pending_bytes, self.max_message_bytes
            )));
        }
        let timeouts = [
            ("--header-timeout", self.header_timeout),
            ("--keep-alive-timeout", self.keep_alive_timeout),
            (
                "--ping-interval",
                self.ping_interval.unwrap_or(Duration::from_secs(1)),
            ),
            ("--ping-timeout", self.ping_timeout),
            ("the close timeout", self.close_timeout),
            ("--history-ttl", self.history_ttl),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError(format!("{name} must be more than 0")));
        }
        if self.read_buffer_bytes == 0 {
            return Err(ConfigError(
                "the read buffer must be at least 1 byte".into(),
            ));
        }
        if self.max_rooms == 0 {
            return Err(ConfigError("--max-rooms must be at least 1".into()));
        }
        if self.max_connections == Some(0) || self.max_connections_per_ip == Some(0) {
            return Err(ConfigError("connection limits must be at least 1".into()));
        }
        if let Some(csp) = &self.csp
            && (csp.trim().is_empty() || csp.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(ConfigError(
                "--csp must be a policy on one line (or off)".into(),
            ));
        }
        if self.workers > 1 && self.redis.is_none() {
            return Err(ConfigError(format!(
                "--workers {} needs --redis: each worker would have rooms of its own, \
                 and people in one room would not hear each other",
                self.workers
            )));
        }
        if let Some(addr) = self.metrics_addr
            && addr.port() != 0
            && usize::from(addr.port()) + self.workers - 1 > usize::from(u16::MAX)
        {
            return Err(ConfigError(format!(
                "--metrics-addr {addr} with --workers {}: worker k listens on port {}+k, \
                 past 65535",
                self.workers,
                addr.port()
            )));
        }
        if self.tls.is_some() && !cfg!(feature = "tls") {
            return Err(ConfigError(
                "--tls-cert needs an eddy built with TLS: cargo install --path . --features tls"
                    .into(),
            ));
        }
        for origin in &mut self.allowed_origins {
            *origin = http::normalize_origin(origin).map_err(ConfigError)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn pending_cap_must_hold_eight_messages() {
        let mut config = Config {
            max_message_bytes: 1000,
            max_pending_bytes: 7999,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.0.contains("8000"), "{err}");
        config.max_pending_bytes = 8000;
        config.validate().unwrap();
        let mut huge = Config {
            max_message_bytes: usize::MAX,
            ..Config::default()
        };
        assert!(huge.validate().is_err(), "no overflow into a small floor");
    }

    #[test]
    fn origins_are_normalized_or_refused() {
        let mut config = Config {
            allowed_origins: vec!["HTTPS://A.example/".into()],
            ..Config::default()
        };
        config.validate().unwrap();
        assert_eq!(config.allowed_origins, ["https://a.example"]);
        config.allowed_origins.push("a.example".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_csp_that_would_break_the_header_is_refused() {
        for bad in ["", "default-src 'self'\r\nX-Evil: 1"] {
            let mut config = Config {
                csp: Some(bad.into()),
                ..Config::default()
            };
            assert!(config.validate().is_err(), "{bad:?}");
        }
        let mut off = Config {
            csp: None,
            ..Config::default()
        };
        off.validate().unwrap();
    }

    #[test]
    fn zero_message_size_is_refused() {
        let mut config = Config {
            max_message_bytes: 0,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
