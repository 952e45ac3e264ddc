//! The server: the listener, the table of connections, and the glue between
//! the loop, the connections and the handler. The only module that touches
//! both the loop and the connections.
//!
//! How one chat line travels (see also the README's tour):
//!
//! 1. `epoll` reports the sender's socket readable; [`IoLoop`] calls
//!    [`ServerState::ready`] with its token, the connection's slab slot.
//! 2. The [`Connection`] reads until `WouldBlock` (through TLS, with
//!    `--tls-cert`: [`Transport`]); tungstenite decodes the frame; the
//!    connection reports [`Report::Message`].
//! 3. The report reaches `on_message` of the handler the connection's path
//!    was routed to ([`Routes`]), which serializes the JSON once; the
//!    [`crate::Outbox`] frames it once, addressed to a group (the
//!    sender's room).
//! 4. `ServerState::deliver` queues that one shared buffer on each member
//!    of the group that keeps up, by the group's list of slots
//!    ([`crate::groups`]), and marks each *dirty*. A member whose queue the
//!    line would take past the cap does not get it: it falls behind
//!    ([`Feed`]).
//! 5. At the end of the turn, [`ServerState::end_of_turn`] flushes dirty
//!    connections in the order they were marked, at most [`FLUSH_SLICE`] a
//!    turn (all of them in a turn that opened a WebSocket; one corked
//!    `send` of all each has queued), feeds those catching up from history
//!    as far as their sockets take, cuts off any client whose unread output
//!    is over twice the cap (lines stop at the cap; the rest is what history
//!    cannot give again: pongs, notices),
//!    asks mio for WRITABLE only where bytes remain, and frees finished
//!    connections. If dirty ones remain, the loop polls without blocking
//!    and the next turn goes on with them: a line that arrives in the
//!    middle of a broadcast to 10,000 is read then, and joins the queues of
//!    the members not yet written, instead of waiting for the whole
//!    broadcast to be written first.
//!
//! **The metrics listener** (`--metrics-addr`, off by default) is a second
//! listening socket in the same loop. Its connections are [`Connection`]s
//! like any other (the same head limits, timeouts and keep-alive), with a
//! [`Site`] of their own that serves no files and no WebSockets, only the
//! [`http::Probe`] paths; the connection asks ([`Step::Ask`]) and the server
//! answers from its own state: `/metrics` (Prometheus text, written by the
//! server, the loop and each handler: [`crate::metrics`]), `/healthz` (the
//! loop answered: it is turning) and `/readyz` (accepting, and each
//! handler's store reachable; else 503 with the reason). They do not count
//! against `--max-connections` (a scrape of a full server must get
//! through) but have a small cap of their own, [`MAX_METRICS_CONNECTIONS`].
//!
//! Slots are freed only at the end of a turn, never while the events of a
//! `poll` are being dispatched: `deregister` does not remove events already
//! returned (mio #219), so a slot freed and reused within one batch could
//! hand a stale event to a brand-new connection. Timers and callbacks carry
//! the [`ConnId`] as well as the slot, and do nothing if the slot now holds
//! someone else.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Config;
use crate::connection::{
    Connection, READ_BUDGET, Report, SHUTDOWN_REASON, Settings, Socket, Stage, Step, Timeouts,
};
use crate::feed::{self, Feed, FeedNotice, Member, Pace, Progress};
use crate::handler::{
    ConnId, Delivery, Outbox, Payload, Recipients, Refusal, Request, Routes, WebSocketHandler,
};
use crate::history::{RoomHistory, Seq};
use crate::http::Site;
use crate::ioloop::{EventHandler, IoLoop, LoopHandle, TimeoutHandle};
use crate::metrics::{self, Exposition, ServerCounts};
use crate::transport::Transport;
use crate::{http, limits, memory, templates, ws};

/// The listening socket's token, outside the slab's range.
const LISTENER_TOKEN: Token = Token(usize::MAX - 1);

/// The signal pipe's token, outside the slab's range.
const SIGNAL_TOKEN: Token = Token(usize::MAX - 2);

/// The metrics listener's token, outside the slab's range.
const METRICS_TOKEN: Token = Token(usize::MAX - 3);

/// The most connections the metrics listener holds at once; more are
/// answered 503. A scraper or a probe needs one or two.
pub const MAX_METRICS_CONNECTIONS: usize = 16;

/// The tokens kept for handlers' own sockets ([`WebSocketHandler::attach`]):
/// [`TOKENS_PER_ROUTE`] for each of the first [`ROUTES_WITH_SOURCES`] routes,
/// from here up, below the signal pipe's.
const SOURCE_TOKENS: usize = usize::MAX - 15;
const TOKENS_PER_ROUTE: usize = 4;
const ROUTES_WITH_SOURCES: usize = 3;
const _: () = assert!(SOURCE_TOKENS + TOKENS_PER_ROUTE * ROUTES_WITH_SOURCES <= usize::MAX - 3);

/// Slab slots from here up would collide with the tokens above.
const MAX_SLOTS: usize = usize::MAX - 16;

/// Dirty connections flushed per turn at most. Between slices the loop
/// takes in whatever arrived (new lines, pings, accepts) without blocking,
/// so a broadcast to a big room neither holds a line that comes in during
/// it until it is over (at 10,000 members one turn of writes took 130 ms)
/// nor stalls the rest of the server. A slice of 128 writes is 0.2–1.5 ms;
/// what happens between two costs a few microseconds.
pub const FLUSH_SLICE: usize = 128;

/// How long accepting pauses when the process runs out of file descriptors.
/// Accepting again at once would fail again at once: a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accept errors in a row (other than running out of descriptors) after
/// which accepting pauses too, in case the listener itself is failing.
const MAX_ACCEPT_ERRORS_IN_A_ROW: u32 = 64;

/// A WebSocket server: bind it, then [`run`](Server::run) it.
///
/// ```no_run
/// let config = eddy::Config::default();
/// let routes = eddy::chat::routes(&config)?;
/// let server = eddy::Server::bind("127.0.0.1:8000".parse().unwrap(), config, routes)?;
/// println!("on {}", server.local_addr()?);
/// server.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    ioloop: IoLoop<ServerState>,
    state: ServerState,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.state.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds a server to `addr` (port 0 picks a free port) that serves the
    /// page and, on each routed path, WebSockets with that route's handler;
    /// reads the page and checks `config` first.
    pub fn bind(addr: SocketAddr, config: Config, routes: Routes) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Server::from_listener(listener, config, routes)
    }

    /// A server on a socket already listening: one that a parent process
    /// bound for its workers ([`crate::workers`]).
    pub fn from_listener(
        listener: std::net::TcpListener,
        mut config: Config,
        routes: Routes,
    ) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        #[cfg(feature = "tls")]
        let tls = match &config.tls {
            Some(files) => {
                let certificates = crate::tls::Certificates::load(&files.cert, &files.key)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                info!("TLS with the certificate in {}", files.cert.display());
                Some(certificates)
            }
            None => None,
        };
        let (assets, source) = templates::load(config.templates.as_deref())?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        limits::widen_backlog(&listener)?;
        info!("serving {source} at /");
        let max_connections = config
            .max_connections
            .unwrap_or_else(limits::default_max_connections);
        info!("accepting up to {max_connections} connections");
        let local_addr = listener.local_addr()?;
        let ioloop = IoLoop::new()?;
        ioloop.add_handler(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        let mut metrics_listener = match config.metrics_addr {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} for metrics: {e}"),
                    )
                })?;
                listener.set_nonblocking(true)?;
                Some(TcpListener::from_std(listener))
            }
            None => None,
        };
        if let Some(listener) = &mut metrics_listener {
            ioloop.add_handler(listener, METRICS_TOKEN, Interest::READABLE)?;
        }
        let mut routes = routes;
        for (route, handler) in routes.handlers_mut().enumerate() {
            let tokens: Vec<Token> = if route < ROUTES_WITH_SOURCES {
                let first = SOURCE_TOKENS + route * TOKENS_PER_ROUTE;
                (first..first + TOKENS_PER_ROUTE).map(Token).collect()
            } else {
                Vec::new()
            };
            handler.attach(ioloop.registry(), &tokens)?;
        }
        let settings = Settings {
            site: Site {
                assets,
                csp: config.csp.clone(),
                allowed_origins: config.allowed_origins.clone(),
                websocket_paths: routes.paths().map(str::to_owned).collect(),
                probes: false,
            },
            websocket: ws::websocket_config(config.max_message_bytes, config.read_buffer_bytes),
            timeouts: Arc::new(Timeouts {
                header: config.header_timeout,
                keep_alive: config.keep_alive_timeout,
                ping_interval: config.ping_interval,
                ping_timeout: config.ping_timeout,
                close: config.close_timeout,
            }),
        };
        // The metrics listener's connections: no files, no WebSockets.
        let metrics_settings = Settings {
            site: Site {
                assets: templates::Assets::default(),
                csp: None,
                allowed_origins: Vec::new(),
                websocket_paths: Vec::new(),
                probes: true,
            },
            websocket: settings.websocket,
            timeouts: Arc::clone(&settings.timeouts),
        };
        let metrics_addr = match &metrics_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let state = ServerState {
            listener: Some(listener),
            local_addr,
            metrics_listener,
            metrics_addr,
            metrics_settings,
            metrics_connections: 0,
            counts: ServerCounts::default(),
            connections: Slab::new(),
            app: App {
                routes,
                outbox: Outbox::new(),
                opened: false,
                closes_sent: BTreeMap::new(),
            },
            settings,
            config,
            next_id: 1,
            dirty: VecDeque::new(),
            batch: Vec::new(),
            finished: Vec::new(),
            max_connections,
            per_ip: HashMap::new(),
            accept_paused: false,
            accept_trouble_warned: false,
            shutting_down: false,
            signals: None,
            handler_timer: None,
            #[cfg(feature = "tls")]
            tls,
        };
        Ok(Server { ioloop, state })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.state.local_addr)
    }

    /// Where the metrics listener listens, if `--metrics-addr` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.state.metrics_addr
    }

    /// A handle that can shut the server down from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(Arc::new(self.ioloop.handle()))
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown (a second one
    /// stops at once), and SIGHUP load the TLS certificate and key again.
    /// Signals are process-wide, so only `main` calls this; in-process test
    /// servers are shut down through a [`ServerHandle`].
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        let mut signals = Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
        self.ioloop
            .add_handler(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        self.state.signals = Some(signals);
        Ok(())
    }

    /// Runs until shut down. Returns an error only if polling itself fails.
    pub fn run(mut self) -> io::Result<()> {
        info!(
            "listening on {}://{}/",
            self.state.config.scheme(),
            self.state.local_addr
        );
        if let Some(addr) = self.state.metrics_addr {
            info!("metrics at http://{addr}/metrics, probes at /healthz and /readyz");
        }
        schedule_memory_check(&mut self.ioloop, memory::Trimmer::default());
        self.ioloop.start(&mut self.state)?;
        info!("stopped");
        Ok(())
    }
}

/// Every [`memory::CHECK_EVERY`], gives memory freed after a burst back to
/// the system (see [`crate::memory`]).
fn schedule_memory_check(ioloop: &mut IoLoop<ServerState>, mut trimmer: memory::Trimmer) {
    ioloop.call_later(memory::CHECK_EVERY, move |_, ioloop| {
        if let Some(free) = trimmer.check() {
            debug!(
                "gave back the free pages of {} KiB freed memory",
                free / 1024
            );
        }
        schedule_memory_check(ioloop, trimmer);
    });
}

/// Controls a running [`Server`] from another thread. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle(Arc<dyn Control>);

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerHandle")
    }
}

impl ServerHandle {
    /// Starts a graceful shutdown, as SIGTERM does: stop accepting, close
    /// every WebSocket with 1001, let output drain for at most the
    /// configured shutdown timeout, then return from `run`.
    pub fn shutdown(&self) -> io::Result<()> {
        self.0.shutdown()
    }

    /// Makes `run` return at the end of the current turn, dropping every
    /// connection without a goodbye.
    pub fn stop(&self) -> io::Result<()> {
        self.0.stop()
    }
}

/// What a [`ServerHandle`] can do, with the handler type erased.
trait Control: Send + Sync {
    fn shutdown(&self) -> io::Result<()>;
    fn stop(&self) -> io::Result<()>;
}

impl Control for LoopHandle<ServerState> {
    fn shutdown(&self) -> io::Result<()> {
        self.add_callback(|state: &mut ServerState, ioloop| state.begin_shutdown(ioloop))
    }

    fn stop(&self) -> io::Result<()> {
        LoopHandle::stop(self)
    }
}

/// A slot in the connection table: the connection plus the server's
/// bookkeeping about it.
struct Entry {
    conn: Connection<Transport>,
    /// The peer's address, for the per-address count.
    ip: IpAddr,
    /// The interest mio has for this socket now. Compared with what is
    /// wanted after each flush; `update_handler` only when they differ.
    interest: Interest,
    /// Already listed in [`ServerState::dirty`] for this turn.
    is_dirty: bool,
    /// The armed timer and when it fires. At most one per connection, for
    /// its earliest deadline: when a deadline moves later (every frame moves
    /// the next ping), the timer is left alone, fires early, and is re-armed;
    /// cheaper than re-scheduling on every message.
    timer: Option<(Instant, TimeoutHandle)>,
    /// A [`ServerState::resume`] callback is queued for it.
    resume_queued: bool,
    /// Its place in its room's history: live, or catching up.
    feed: Feed,
    /// A [`ServerState::continue_feed`] callback is queued for it.
    feed_queued: bool,
    /// Its route (the handler of its path), once its handshake is
    /// admitted; [`NO_ROUTE`] before.
    route: u16,
}

/// The route of a connection that is not a WebSocket (yet).
const NO_ROUTE: u16 = u16::MAX;

/// The route of a connection to the metrics listener.
const METRICS_ROUTE: u16 = u16::MAX - 1;

// Every connection's entry is boxed, and glibc's allocator serves a box of
// up to 184 bytes from its 192-byte class: 8 bytes more would cost every
// connection 16 (measured at 10,000 idle connections). If this fails, an
// idle connection has grown: make room, or say so in the README's figures.
// Release builds only: in debug builds mio's socket carries a selector id.
// With the `tls` feature a connection's [`Transport`] is an enum of the
// socket (4 bytes) and a boxed TLS session (8), 16 bytes with its tag: the
// entry is 200 bytes, one size class up: 16 bytes a connection, where a TLS
// session itself costs about 9 KiB (docs/performance.md, "What TLS costs").
#[cfg(all(not(debug_assertions), not(feature = "tls")))]
const _: () = assert!(
    std::mem::size_of::<Entry>() <= 184,
    "Entry outgrew 184 bytes"
);
#[cfg(all(not(debug_assertions), feature = "tls"))]
const _: () = assert!(
    std::mem::size_of::<Entry>() <= 200,
    "Entry outgrew 200 bytes"
);

/// A connection seen by [`feed::catch_up`]. Its flush may find the
/// connection gone; the `Closing` that follows is reported once catching up
/// is over, since the handler is busy lending the history meanwhile.
struct Fed<'a, S> {
    conn: &'a mut Connection<S>,
    left: bool,
    /// Bytes its flushes wrote.
    written: u64,
    /// Frames queued on it: lines from history, and notices.
    queued: u64,
}

impl<S: Socket> Member for Fed<'_, S> {
    fn pending(&self) -> usize {
        self.conn.pending()
    }

    fn queue(&mut self, frame: tungstenite::Bytes) {
        self.queued += 1;
        self.conn.queue(frame);
    }

    fn flush(&mut self) -> bool {
        let left = &mut self.left;
        self.written += self.conn.flush(&mut |r| *left |= r == Report::Closing) as u64;
        self.conn.takes_messages()
    }
}

/// The application side: the handlers, the messages they produced and not
/// yet delivered, and (in the outbox) who is open and in which group.
struct App {
    routes: Routes,
    outbox: Outbox,
    /// A WebSocket opened since the last end of turn.
    opened: bool,
    /// Close frames the server sent, by code (for `/metrics`).
    closes_sent: BTreeMap<u16, u64>,
}

impl App {
    /// The handler of `route` and the history of the group `id` is in, if
    /// that handler keeps one: what a member's feed follows.
    fn followed_history(
        &self,
        route: u16,
        id: ConnId,
    ) -> Option<(&(dyn WebSocketHandler + Send), RoomHistory<'_>)> {
        let handler = self.routes.handler(route as usize)?;
        let group = self.outbox.groups().group_of(id)?;
        Some((handler, handler.room_history(group.name())?))
    }

    /// Turns a connection's report into a call of its route's handler.
    fn report(&mut self, key: usize, id: ConnId, route: u16, report: Report<'_>) {
        let Some(handler) = self.routes.handler_mut(route as usize) else {
            return; // not a WebSocket: it reports nothing
        };
        let out = &mut self.outbox;
        match report {
            Report::Opened(target) => {
                self.opened = true;
                out.groups_mut().open(id, key);
                handler.open(id, &Request::from_target(target), out);
            }
            Report::Message(text) => handler.on_message(id, text, out),
            Report::Binary(data) => handler.on_binary(id, data, out),
            Report::Closing => {
                // Still in its group while the handler looks, then out.
                handler.on_close(id, out);
                out.groups_mut().close(id);
            }
            Report::CloseSent(code) => *self.closes_sent.entry(code).or_insert(0) += 1,
        }
    }
}

/// Everything the loop dispatches to. Callbacks and timers receive it as
/// `&mut ServerState`.
pub struct ServerState {
    /// `None` once shutting down: we stop accepting.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// The metrics listener (`--metrics-addr`); `None` without one, or
    /// once shutting down.
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    /// What the metrics listener's connections serve.
    metrics_settings: Settings,
    /// Connections to the metrics listener now.
    metrics_connections: usize,
    /// What the server counts for `/metrics`.
    counts: ServerCounts,
    /// Every connection, keyed by slot = mio token. Boxed: the slab grows by
    /// doubling, and a vacant slot then costs a pointer, not a connection
    /// (measured with `cargo bench`: ~300 bytes per client at 10,000).
    connections: Slab<Box<Entry>>,
    app: App,
    settings: Settings,
    config: Config,
    /// The next [`ConnId`]; ids are never reused.
    next_id: u64,
    /// Slots touched and not yet flushed and re-synced, in the order they
    /// were touched (each once: [`Entry::is_dirty`]).
    dirty: VecDeque<usize>,
    /// Deliveries being handed out (kept to reuse its allocation).
    batch: Vec<Delivery>,
    /// Slots whose connection is done: to be freed at the end of the turn.
    finished: Vec<usize>,
    /// The most connections at once; more are answered 503 and closed.
    max_connections: usize,
    /// Connections per peer address, for `--max-connections-per-ip`.
    per_ip: HashMap<IpAddr, usize>,
    /// Accepting is paused (out of descriptors); a timer resumes it.
    accept_paused: bool,
    /// The accept trouble of this episode has been logged already.
    accept_trouble_warned: bool,
    shutting_down: bool,
    signals: Option<Signals>,
    /// When the handlers' next [`WebSocketHandler::tick`] is due, and its timer.
    handler_timer: Option<(Instant, TimeoutHandle)>,
    /// The certificate and key the chat port's connections get
    /// (`--tls-cert`); `None`: plain HTTP.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Certificates>,
}

impl EventHandler for ServerState {
    fn ready(&mut self, ioloop: &mut IoLoop<Self>, token: Token, event: &Event) {
        match token {
            LISTENER_TOKEN => self.accept(ioloop, LISTENER_TOKEN),
            METRICS_TOKEN => self.accept(ioloop, METRICS_TOKEN),
            SIGNAL_TOKEN => self.on_signal(ioloop),
            Token(token) if token >= SOURCE_TOKENS => {
                let route = (token - SOURCE_TOKENS) / TOKENS_PER_ROUTE;
                if let Some(handler) = self.app.routes.handler_mut(route) {
                    handler.source_ready(Token(token));
                }
            }
            Token(key) => {
                // Errors and hang-ups are discovered by reading.
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.on_connection_ready(ioloop, key, readable);
            }
        }
    }

    fn end_of_turn(&mut self, ioloop: &mut IoLoop<Self>) {
        // Lines a history confirmed late go out before anything is flushed.
        for handler in self.app.routes.handlers_mut() {
            handler.on_turn_end(&mut self.app.outbox);
        }
        self.deliver();
        // A turn that opened WebSockets flushes everyone: in a storm of
        // joins, each newcomer's join goes to every member, and slices
        // would let those queues grow with every turn's newcomers.
        let slice = if std::mem::take(&mut self.app.opened) {
            usize::MAX
        } else {
            FLUSH_SLICE
        };
        for _ in 0..slice {
            let Some(key) = self.dirty.pop_front() else {
                break;
            };
            // A slot freed after it was listed may hold a newcomer by now;
            // one not marked is not waiting for this flush.
            if self.connections.get(key).is_some_and(|e| e.is_dirty) {
                self.settle(ioloop, key);
            }
        }
        // Flushing can cut off a slow client, whose "has left" goes to the
        // others (to the back of the queue).
        self.deliver();
        if !self.dirty.is_empty() {
            ioloop.keep_turning();
        }
        self.free_finished(ioloop);
        self.schedule_handler_tick(ioloop);
        if self.shutting_down && self.connections.is_empty() {
            ioloop.stop();
        }
    }
}

impl ServerState {
    /// Sets a timer for the handlers' earliest [`WebSocketHandler::next_tick`],
    /// if it moved.
    fn schedule_handler_tick(&mut self, ioloop: &mut IoLoop<Self>) {
        let next = self
            .app
            .routes
            .handlers()
            .filter_map(|h| h.next_tick())
            .min();
        if next == self.handler_timer.map(|(at, _)| at) {
            return;
        }
        if let Some((_, timer)) = self.handler_timer.take() {
            ioloop.remove_timeout(timer);
        }
        if let Some(at) = next {
            let timer = ioloop.call_at(at, |state: &mut ServerState, _| {
                state.handler_timer = None;
                let now = Instant::now();
                for handler in state.app.routes.handlers_mut() {
                    handler.tick(now);
                }
            });
            self.handler_timer = Some((at, timer));
        }
    }

    /// Accepts until the listener would block (edge-triggered: a pending
    /// connection left in the backlog brings no new event).
    /// `which`: the chat's listener ([`LISTENER_TOKEN`]) or the metrics
    /// listener ([`METRICS_TOKEN`]).
    fn accept(&mut self, ioloop: &mut IoLoop<Self>, which: Token) {
        let metrics = which == METRICS_TOKEN;
        let mut errors_in_a_row = 0;
        while !self.accept_paused {
            let listener = if metrics {
                &self.metrics_listener
            } else {
                &self.listener
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    errors_in_a_row = 0;
                    if self.accept_trouble_warned {
                        self.accept_trouble_warned = false;
                        info!("accepting connections again");
                    }
                    self.add_connection(ioloop, socket, peer, metrics);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    errors_in_a_row += 1;
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if out_of_fds || errors_in_a_row >= MAX_ACCEPT_ERRORS_IN_A_ROW {
                        self.pause_accepting(ioloop, &e);
                    } else {
                        // ECONNABORTED and the like: that client is gone, go on.
                        debug!("accept failed: {e}");
                    }
                }
            }
        }
    }

    /// Stops accepting for [`ACCEPT_PAUSE`]: never a sleep, never a busy loop.
    fn pause_accepting(&mut self, ioloop: &mut IoLoop<Self>, error: &io::Error) {
        if !self.accept_trouble_warned {
            self.accept_trouble_warned = true;
            warn!(
                "accept failed: {error}; pausing accepts for {ACCEPT_PAUSE:?} at a time until it works"
            );
        }
        self.accept_paused = true;
        ioloop.call_later(ACCEPT_PAUSE, |state: &mut Self, ioloop| {
            state.accept_paused = false;
            state.accept(ioloop, LISTENER_TOKEN);
            state.accept(ioloop, METRICS_TOKEN);
        });
    }

    /// Takes a new connection into the table. `metrics`: one to the metrics
    /// listener, which the chat's caps do not apply to (it has its own).
    fn add_connection(
        &mut self,
        ioloop: &mut IoLoop<Self>,
        socket: TcpStream,
        peer: SocketAddr,
        metrics: bool,
    ) {
        if self.shutting_down {
            return;
        }
        // Chat lines are small and latency-bound: don't let Nagle hold them.
        if let Err(e) = socket.set_nodelay(true) {
            debug!("set_nodelay failed for {peer}: {e}");
        }
        let socket = match self.transport(socket, metrics) {
            Ok(socket) => socket,
            Err(e) => {
                warn!("cannot begin TLS with {peer}: {e}");
                return;
            }
        };
        let open = self.chat_connections();
        let slot = self.connections.vacant_entry();
        let key = slot.key();
        if key >= MAX_SLOTS {
            return;
        }
        let id = ConnId(self.next_id);
        self.next_id += 1;
        let mut conn = Connection::new(id, socket, Arc::clone(&self.settings.timeouts));
        let ip = peer.ip();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let mut refused = false;
        if metrics {
            if self.metrics_connections >= MAX_METRICS_CONNECTIONS {
                debug!("conn {id}: metrics connection refused, {MAX_METRICS_CONNECTIONS} open");
                conn.refuse(http::service_unavailable(
                    SystemTime::now(),
                    "too many metrics connections",
                ));
            }
        } else if open >= self.max_connections {
            refused = true;
            debug!("conn {id}: refused, {open} connections open");
            conn.refuse(http::service_unavailable(
                SystemTime::now(),
                "too many connections",
            ));
        } else if self
            .config
            .max_connections_per_ip
            .is_some_and(|max| from_ip >= max)
        {
            refused = true;
            debug!("conn {id}: refused, {from_ip} connections from {ip}");
            conn.refuse(http::service_unavailable(
                SystemTime::now(),
                "too many connections from your address",
            ));
        }
        if let Err(e) = ioloop.add_handler(conn.socket_mut(), Token(key), Interest::READABLE) {
            warn!("cannot register a connection from {peer}: {e}");
            return;
        }
        // Counted only once registered: `free_finished` uncounts it.
        *self.per_ip.entry(ip).or_insert(0) += 1;
        if metrics {
            self.metrics_connections += 1;
        } else if refused {
            self.counts.refused += 1;
        } else {
            self.counts.accepted += 1;
        }
        debug!("conn {id}: accepted from {peer}");
        let entry = slot.insert(Box::new(Entry {
            conn,
            ip,
            interest: Interest::READABLE,
            is_dirty: false,
            timer: None,
            resume_queued: false,
            feed: Feed::Off,
            feed_queued: false,
            route: if metrics { METRICS_ROUTE } else { NO_ROUTE },
        }));
        // Settled at the end of the turn like any touched connection: that
        // arms the timer for its first deadline (the request head's), which
        // must run even if the client never sends a byte.
        mark_dirty(&mut self.dirty, key, entry);
    }

    /// What a new connection speaks through: TLS on the chat port when
    /// `--tls-cert` is given (the handshake then counts against the head
    /// deadline, like the request head it carries); plain TCP otherwise,
    /// and always on the metrics listener.
    fn transport(&self, socket: TcpStream, metrics: bool) -> io::Result<Transport> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = self.tls.as_ref().filter(|_| !metrics) {
            return Ok(Transport::Tls(Box::new(certificates.accept(socket)?)));
        }
        #[cfg(not(feature = "tls"))]
        let _ = metrics;
        Ok(Transport::Plain(socket))
    }

    /// Lets a connection read, one message at a time: after each, what the
    /// handler made of it is delivered before the connection reads on. The
    /// whole run shares one read budget ([`READ_BUDGET`]).
    fn on_connection_ready(&mut self, ioloop: &IoLoop<Self>, key: usize, readable: bool) {
        let mut budget = READ_BUDGET;
        self.read_connection(ioloop, key, readable, &mut budget);
        let read = (READ_BUDGET - budget) as u64;
        if self
            .connections
            .get(key)
            .is_some_and(|e| e.route != METRICS_ROUTE)
        {
            self.counts.bytes_received += read;
        }
    }

    /// [`on_connection_ready`](Self::on_connection_ready)'s loop.
    fn read_connection(
        &mut self,
        ioloop: &IoLoop<Self>,
        key: usize,
        readable: bool,
        budget: &mut usize,
    ) {
        let mut readable = readable;
        loop {
            // A miss is an event for a slot freed earlier: ignore it.
            let Some(entry) = self.connections.get_mut(key) else {
                return;
            };
            if entry.conn.is_closed() {
                return;
            }
            let id = entry.conn.id();
            let app = &mut self.app;
            let route = entry.route;
            let settings = if route == METRICS_ROUTE {
                &self.metrics_settings
            } else {
                &self.settings
            };
            let mut step = entry.conn.on_ready(readable, budget, settings, &mut |r| {
                app.report(key, id, route, r)
            });
            if step == Step::Ask {
                // Answered from the server's own state: let go of the
                // entry while the answer is worked out.
                let Some((probe, asked)) = entry.conn.probe() else {
                    return;
                };
                let response = self.answer_probe(ioloop, probe, &asked);
                let Some(entry) = self.connections.get_mut(key) else {
                    return;
                };
                let step = entry.conn.answer(response, budget);
                mark_dirty(&mut self.dirty, key, entry);
                if step == Step::Stop {
                    return;
                }
                readable = false;
                continue;
            }
            if step == Step::Upgrade {
                // The path's handler admits the handshake, or refuses it
                // with a status the client can read (before the 101).
                let target = entry.conn.upgrade_target().unwrap_or_default();
                let request = Request::from_target(target);
                let verdict = match app.routes.find(request.path) {
                    Some(index) => {
                        entry.route = u16::try_from(index).unwrap_or(NO_ROUTE);
                        app.routes
                            .handler(index)
                            .map_or(Ok(()), |h| h.admit(&request, app.outbox.groups()))
                    }
                    // The HTTP layer upgrades routed paths only.
                    None => Err(Refusal {
                        status: 404,
                        why: "not found",
                    }),
                };
                let verdict = verdict.map_err(|refusal| {
                    http::refused_upgrade(SystemTime::now(), refusal.status, refusal.why)
                });
                match verdict {
                    Ok(()) => self.counts.websockets_opened += 1,
                    Err(_) => self.counts.websockets_refused += 1,
                }
                let route = entry.route;
                step = entry
                    .conn
                    .upgrade(verdict, &self.settings, budget, &mut |r| {
                        app.report(key, id, route, r)
                    });
            }
            mark_dirty(&mut self.dirty, key, entry);
            self.deliver();
            if step == Step::Stop {
                return;
            }
            readable = false; // the event's news has been taken
        }
    }

    /// Queues the handlers' messages on their recipients. Each frame is
    /// shared: queuing it is a reference-count increment, not a copy. A
    /// group's message goes to its members' slots, and to no other
    /// connection. A member whose queue a line would take past the cap does
    /// not get it, and falls behind ([`Feed::offer`]); it is fed from
    /// history later.
    fn deliver(&mut self) {
        let cap = self.config.max_pending_bytes;
        // A close can make its connection leave, and its `on_close` adds to
        // the outbox: deliver in batches until the outbox stays empty.
        let mut batch = std::mem::take(&mut self.batch);
        while !self.app.outbox.is_empty() {
            self.app.outbox.take_into(&mut batch);
            for delivery in batch.drain(..) {
                let seq = delivery.seq;
                match (delivery.to, delivery.payload) {
                    (Recipients::One(id), payload) => self.deliver_to_one(id, payload),
                    (
                        to @ (Recipients::Group(group) | Recipients::GroupExcept(group, _)),
                        Payload::Frame(frame),
                    ) => {
                        let Some(members) = self.app.outbox.groups().get(group) else {
                            continue; // everyone left
                        };
                        let mut tally = Tally {
                            cap,
                            dirty: &mut self.dirty,
                            counts: &mut self.counts,
                        };
                        for &slot in members.slots() {
                            let key = slot as usize;
                            let Some(entry) = self.connections.get_mut(key) else {
                                continue;
                            };
                            if to.includes(entry.conn.id(), Some(group)) {
                                offer(entry, key, seq, &frame, &mut tally);
                            }
                        }
                    }
                    (to, Payload::Frame(frame)) => {
                        let mut tally = Tally {
                            cap,
                            dirty: &mut self.dirty,
                            counts: &mut self.counts,
                        };
                        for (key, entry) in self.connections.iter_mut() {
                            // `offer` skips a connection that takes no messages.
                            if to.includes(entry.conn.id(), None) {
                                offer(entry, key, seq, &frame, &mut tally);
                            }
                        }
                    }
                    // The outbox only makes closes and follows for one connection.
                    (_, Payload::Close(..) | Payload::Follow { .. }) => {}
                }
            }
        }
        self.batch = batch; // keep the allocation
    }

    /// Delivers a message to one connection, if it is still open.
    fn deliver_to_one(&mut self, id: ConnId, payload: Payload) {
        let Some(key) = self.app.outbox.groups().slot(id) else {
            return; // it left already
        };
        let Some(entry) = self.connections.get_mut(key) else {
            return;
        };
        let app = &mut self.app;
        match payload {
            Payload::Frame(frame) => {
                if entry.conn.takes_messages() {
                    self.counts.deliveries += 1;
                    entry.conn.queue(frame);
                }
            }
            Payload::Close(code, reason) => {
                let route = entry.route;
                entry
                    .conn
                    .close(code, reason, &mut |r| app.report(key, id, route, r));
            }
            // Live at once if there is nothing to catch up on; else fed
            // from history when it is settled at the end of the turn.
            Payload::Follow { from, announce } => {
                let groups = app.outbox.groups();
                let followed = app.followed_history(entry.route, id);
                let head = followed.map_or(0, |(_, history)| history.head());
                let (feed, notice) = Feed::start(from, announce, head);
                entry.feed = feed;
                let frame = match (notice, followed) {
                    (Some(notice), Some((handler, _))) => handler.feed_notice(id, notice, groups),
                    _ => None,
                };
                if let Some(frame) = frame {
                    entry.conn.queue(frame);
                }
            }
        }
        mark_dirty(&mut self.dirty, key, entry);
    }

    /// The end-of-turn work for one touched connection: flush, feed it from
    /// history if it is catching up, enforce the output cap, start the
    /// close timer, sync interest, schedule a resume.
    fn settle(&mut self, ioloop: &mut IoLoop<Self>, key: usize) {
        let cap = self.config.max_pending_bytes;
        let Some(entry) = self.connections.get_mut(key) else {
            return;
        };
        entry.is_dirty = false;
        let id = entry.conn.id();
        let route = entry.route;
        let app = &mut self.app;
        self.counts.bytes_sent += entry.conn.flush(&mut |r| app.report(key, id, route, r)) as u64;
        if entry.feed.is_catching_up() && entry.conn.takes_messages() {
            let groups = app.outbox.groups();
            let mut member = Fed {
                conn: &mut entry.conn,
                left: false,
                written: 0,
                queued: 0,
            };
            // Notices told (frames that are not lines), and gaps met.
            let (told, gaps) = (Cell::new(0u64), Cell::new(0u64));
            let progress = match app.followed_history(route, id) {
                Some((handler, history)) => feed::catch_up(
                    &mut entry.feed,
                    history,
                    &mut member,
                    &|notice| {
                        if matches!(notice, FeedNotice::Gap { .. }) {
                            gaps.set(gaps.get() + 1);
                        }
                        let frame = handler.feed_notice(id, notice, groups);
                        told.set(told.get() + u64::from(frame.is_some()));
                        frame
                    },
                    Pace::for_cap(cap),
                ),
                None => Progress::Idle,
            };
            self.counts.bytes_sent += member.written;
            self.counts.fed_from_history += member.queued - told.get();
            self.counts.gaps += gaps.get();
            self.counts.caught_up += u64::from(progress == Progress::CaughtUp);
            if member.left {
                app.report(key, id, route, Report::Closing);
            }
            if progress == Progress::CaughtUp {
                debug!("conn {id}: caught up, live again");
            }
            // A socket that still has room brings no event: go on next
            // turn, after the others have had theirs.
            if progress == Progress::OutOfBudget && !entry.feed_queued {
                entry.feed_queued = true;
                ioloop.add_callback(move |state: &mut Self, _| state.continue_feed(key, id));
            }
        }
        let report = &mut |r: Report<'_>| app.report(key, id, route, r);
        // A member with a history gets lines only while its queue is under
        // the cap (past it, it falls behind); the cap again is room for
        // what history cannot give again (pongs, notices). Over both, no
        // catching up can help: cut off. Without a history, over the cap.
        let limit = match entry.feed {
            Feed::Off => cap,
            _ => cap.saturating_mul(2),
        };
        if entry.conn.takes_messages() && entry.conn.pending() > limit {
            entry.conn.cut_off(report);
            self.counts.cut_off += 1;
            self.counts.bytes_sent += entry.conn.flush(report) as u64;
        }
        if entry.conn.is_closed() {
            self.finished.push(key);
            return;
        }
        match (entry.conn.deadline(), entry.timer) {
            // Armed early enough (or exactly): when it fires, the
            // connection checks its deadline and we re-arm if need be.
            (Some(deadline), Some((armed, _))) if armed <= deadline => {}
            (Some(deadline), armed) => {
                if let Some((_, handle)) = armed {
                    ioloop.remove_timeout(handle);
                }
                let handle = ioloop.call_at_fn(deadline, Self::deadline_passed, key, id.0);
                entry.timer = Some((deadline, handle));
            }
            (None, Some((_, handle))) => {
                ioloop.remove_timeout(handle);
                entry.timer = None;
            }
            (None, None) => {}
        }
        // WRITABLE only while output is pending: a socket with room to write
        // is the normal case, and asking for it would wake us for nothing.
        let wanted = if entry.conn.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if wanted != entry.interest {
            if let Err(e) = ioloop.update_handler(entry.conn.socket_mut(), Token(key), wanted) {
                debug!("conn {id}: reregister failed: {e}");
                entry.conn.abort(report);
                self.finished.push(key);
                return;
            }
            entry.interest = wanted;
        }
        if entry.conn.wants_resume() && !entry.resume_queued {
            entry.resume_queued = true;
            ioloop.add_callback(move |state: &mut Self, ioloop| state.resume(ioloop, key, id));
        }
    }

    /// The answer to a request on the metrics listener, from the server's
    /// own state.
    fn answer_probe(
        &self,
        ioloop: &IoLoop<Self>,
        probe: http::Probe,
        asked: &http::Asked,
    ) -> http::Response {
        const TEXT: &str = "text/plain; charset=utf-8";
        match probe {
            http::Probe::Metrics => {
                let mut out = Exposition::new();
                self.write_metrics(&mut out);
                ioloop.write_metrics(&mut out);
                for handler in self.app.routes.handlers() {
                    handler.write_metrics(&mut out);
                }
                http::probe_response(asked, 200, "metrics", metrics::CONTENT_TYPE, out.finish())
            }
            // That the loop answered at all is the news.
            http::Probe::Health => http::probe_response(asked, 200, "healthy", TEXT, "ok\n".into()),
            http::Probe::Ready => match self.readiness() {
                Ok(()) => http::probe_response(asked, 200, "ready", TEXT, "ready\n".into()),
                Err(why) => {
                    debug!("not ready: {why}");
                    http::probe_response(
                        asked,
                        503,
                        "not ready",
                        TEXT,
                        format!("not ready: {why}\n"),
                    )
                }
            },
        }
    }

    /// Connections to the chat's port: the metrics listener's are not
    /// counted against `--max-connections`.
    fn chat_connections(&self) -> usize {
        self.connections.len() - self.metrics_connections
    }

    /// Whether the server can take clients now (`/readyz`): accepting, under
    /// its connection cap, and every handler's store within reach.
    fn readiness(&self) -> Result<(), String> {
        if self.shutting_down || self.listener.is_none() {
            return Err("shutting down".into());
        }
        if self.accept_paused {
            return Err(
                "accepting is paused after accept errors (out of file descriptors?)".into(),
            );
        }
        if self.chat_connections() >= self.max_connections {
            return Err(format!("at --max-connections ({})", self.max_connections));
        }
        self.app.routes.handlers().try_for_each(|h| h.readiness())
    }

    /// Writes the server's own figures: its connections and what passed
    /// through them.
    fn write_metrics(&self, out: &mut Exposition) {
        let (mut by_stage, mut behind) = ([0u64; Stage::ALL.len()], 0u64);
        for (_, entry) in &self.connections {
            if entry.route == METRICS_ROUTE {
                continue;
            }
            by_stage[entry.conn.stage() as usize] += 1;
            behind += u64::from(entry.feed.is_catching_up());
        }
        let counts = &self.counts;
        let stages = Stage::ALL.map(|stage| (stage.as_str(), by_stage[stage as usize] as f64));
        out.gauge_by(
            "eddy_connections",
            "Client connections now, by stage: http (requests, a handshake), open (WebSocket), closing.",
            "stage",
            &stages,
        );
        out.counter_by(
            "eddy_connections_total",
            "Client connections accepted, and refused with 503 over a connection cap.",
            "result",
            &[("accepted", counts.accepted), ("refused", counts.refused)],
        );
        out.counter_by(
            "eddy_websockets_total",
            "WebSocket handshakes admitted (opened) and refused by their path's handler.",
            "result",
            &[
                ("opened", counts.websockets_opened),
                ("refused", counts.websockets_refused),
            ],
        );
        out.gauge(
            "eddy_rooms",
            "Rooms with someone in them.",
            self.app.outbox.groups().len() as f64,
        );
        out.counter(
            "eddy_deliveries_total",
            "Messages queued to clients: a line to a room of ten is ten deliveries.",
            counts.deliveries,
        );
        out.counter(
            "eddy_fell_behind_total",
            "Lines a member did not get live, its queue over --max-pending-bytes: history feeds them later.",
            counts.fell_behind,
        );
        out.gauge(
            "eddy_slow_readers",
            "Members now behind, being fed from history.",
            behind as f64,
        );
        out.counter(
            "eddy_history_fed_lines_total",
            "Lines a member that fell behind (or resumed) was fed from history.",
            counts.fed_from_history,
        );
        out.counter(
            "eddy_history_gaps_total",
            "Times a member was told lines it missed are no longer in history.",
            counts.gaps,
        );
        out.counter(
            "eddy_caught_up_total",
            "Times a member fed from history reached the head and went live again.",
            counts.caught_up,
        );
        out.counter(
            "eddy_cut_off_total",
            "Clients closed for not reading: unread output over twice --max-pending-bytes.",
            counts.cut_off,
        );
        let codes: Vec<(String, u64)> = self
            .app
            .closes_sent
            .iter()
            .map(|(code, count)| (code.to_string(), *count))
            .collect();
        let codes: Vec<(&str, u64)> = codes.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        out.counter_by(
            "eddy_close_frames_sent_total",
            "Close frames the server began a closing handshake with, by close code.",
            "code",
            &codes,
        );
        out.counter(
            "eddy_received_bytes_total",
            "Bytes read from clients: request heads and frames.",
            counts.bytes_received,
        );
        out.counter(
            "eddy_sent_bytes_total",
            "Bytes written to clients.",
            counts.bytes_sent,
        );
    }

    /// Continues a connection's reading that stopped early.
    fn resume(&mut self, ioloop: &IoLoop<Self>, key: usize, id: ConnId) {
        let Some(entry) = self.connections.get_mut(key).filter(|e| e.conn.id() == id) else {
            return;
        };
        entry.resume_queued = false;
        if entry.conn.wants_resume() {
            self.on_connection_ready(ioloop, key, false);
        }
    }

    /// Goes on feeding a member from history, a turn after its budget ran
    /// out (see [`feed::CATCH_UP_BUDGET`]).
    fn continue_feed(&mut self, key: usize, id: ConnId) {
        let Some(entry) = self.connections.get_mut(key).filter(|e| e.conn.id() == id) else {
            return;
        };
        entry.feed_queued = false;
        mark_dirty(&mut self.dirty, key, entry);
    }

    /// A connection's timer fired ([`IoLoop::call_at_fn`], with its slot and
    /// id): let it act on its deadline (a ping, a 408, a close, a drop).
    /// `settle` re-arms the timer for the next one.
    fn deadline_passed(&mut self, _: &mut IoLoop<Self>, key: usize, id: u64) {
        let id = ConnId(id);
        // The slot may hold a newer connection by now.
        let Some(entry) = self.connections.get_mut(key).filter(|e| e.conn.id() == id) else {
            return;
        };
        entry.timer = None;
        let app = &mut self.app;
        let route = entry.route;
        entry
            .conn
            .on_deadline(Instant::now(), &mut |r| app.report(key, id, route, r));
        mark_dirty(&mut self.dirty, key, entry);
        self.deliver();
    }

    /// Frees the slots of finished connections: the only place slots are
    /// freed, after all of this turn's events have been dispatched.
    fn free_finished(&mut self, ioloop: &mut IoLoop<Self>) {
        for key in self.finished.drain(..) {
            if !self
                .connections
                .get(key)
                .is_some_and(|e| e.conn.is_closed())
            {
                continue; // listed twice
            }
            let mut entry = self.connections.remove(key);
            if entry.route == METRICS_ROUTE {
                self.metrics_connections -= 1;
            }
            if let Some(count) = self.per_ip.get_mut(&entry.ip) {
                *count -= 1;
                if *count == 0 {
                    self.per_ip.remove(&entry.ip);
                }
            }
            if let Some((_, timer)) = entry.timer.take() {
                ioloop.remove_timeout(timer);
            }
            // Closing the socket would deregister it too; saying so is clearer.
            let _ = ioloop.remove_handler(entry.conn.socket_mut());
            debug!("conn {}: closed", entry.conn.id());
        }
    }

    fn on_signal(&mut self, ioloop: &mut IoLoop<Self>) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        // Drain the pipe: edge-triggered, like any other source.
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if signal == libc::SIGHUP {
                self.reload_certificates();
                continue;
            }
            let name = if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if self.shutting_down {
                warn!("{name} again: stopping now");
                ioloop.stop();
            } else {
                info!("{name}: shutting down");
                self.begin_shutdown(ioloop);
            }
        }
    }

    /// SIGHUP: loads the TLS certificate and key again (a few small files,
    /// read on the loop: rare, and quick). Connections accepted from now on
    /// get the new pair; open ones keep theirs. A bad new pair is logged
    /// and the old one kept.
    fn reload_certificates(&mut self) {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &mut self.tls {
            match certificates.reload() {
                Ok(()) => info!("SIGHUP: TLS certificate and key loaded again"),
                Err(e) => {
                    log::error!("SIGHUP: {e}; keeping the certificate and key loaded before");
                }
            }
            return;
        }
        info!("SIGHUP: nothing to reload (no --tls-cert)");
    }

    /// Stops accepting, closes every connection (WebSockets with 1001), and
    /// gives them until the shutdown timeout to drain.
    fn begin_shutdown(&mut self, ioloop: &mut IoLoop<Self>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for mut listener in [self.listener.take(), self.metrics_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = ioloop.remove_handler(&mut listener);
        }
        info!("closing {} connections", self.connections.len());
        let app = &mut self.app;
        for (key, entry) in self.connections.iter_mut() {
            let (id, route) = (entry.conn.id(), entry.route);
            entry
                .conn
                .close(CloseCode::Away, SHUTDOWN_REASON, &mut |r| {
                    app.report(key, id, route, r)
                });
            mark_dirty(&mut self.dirty, key, entry);
        }
        // Every "has left" produced above now has no open recipient.
        self.deliver();
        let grace = self.config.shutdown_timeout;
        ioloop.call_later(grace, |state: &mut Self, ioloop| {
            if !state.connections.is_empty() {
                info!(
                    "{} connections did not finish closing in time",
                    state.connections.len()
                );
            }
            ioloop.stop();
        });
    }
}

/// What [`offer`] needs besides the connection: the output cap, and where
/// it records what it did (connections to settle, counts).
struct Tally<'a> {
    cap: usize,
    dirty: &'a mut VecDeque<usize>,
    counts: &'a mut ServerCounts,
}

/// Offers a broadcast frame to one open connection: queued if its feed
/// takes it; if it falls behind instead, it is listed to be settled (and fed
/// from history once its queue drains).
fn offer(
    entry: &mut Entry,
    key: usize,
    seq: Option<Seq>,
    frame: &tungstenite::Bytes,
    tally: &mut Tally<'_>,
) {
    if !entry.conn.takes_messages() {
        return;
    }
    let was_live = matches!(entry.feed, Feed::Live { .. });
    let pending = entry.conn.pending();
    if entry.feed.offer(seq, frame.len(), pending, tally.cap) {
        entry.conn.queue(frame.clone());
        tally.counts.deliveries += 1;
        mark_dirty(tally.dirty, key, entry);
    } else if was_live {
        debug!(
            "conn {}: fell behind with {pending} bytes unsent",
            entry.conn.id()
        );
        tally.counts.fell_behind += 1;
        mark_dirty(tally.dirty, key, entry);
    }
}

/// Lists `key` for the end-of-turn flush, once.
fn mark_dirty(dirty: &mut VecDeque<usize>, key: usize, entry: &mut Entry) {
    if !entry.is_dirty {
        entry.is_dirty = true;
        dirty.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoHandler;

    fn chat_server(config: Config) -> Server {
        let routes = crate::chat::routes(&config).unwrap();
        Server::bind("127.0.0.1:0".parse().unwrap(), config, routes).unwrap()
    }

    /// A connected pair: the server side as a mio stream, the client side kept open.
    fn socket_pair() -> (TcpStream, std::net::TcpStream, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        (TcpStream::from_std(server_side), client, peer)
    }

    /// A server on a free port with the echo handler on `/soc`, not running:
    /// the test turns its loop by hand.
    fn echo_server() -> (IoLoop<ServerState>, ServerState) {
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            Config::default(),
            Routes::new().route("/soc", EchoHandler),
        )
        .unwrap();
        (server.ioloop, server.state)
    }

    #[test]
    fn a_slot_freed_during_a_turn_is_reused_only_after_it() {
        let (mut ioloop, mut state) = echo_server();
        let (a, _a_client, peer) = socket_pair();
        state.add_connection(&mut ioloop, a, peer, false);
        let a_id = state.connections[0].conn.id();

        // Mid-batch, connection A finishes...
        state.connections[0].conn.abort(&mut |_| {});
        state.settle(&mut ioloop, 0);
        // ...and B arrives in the same batch: it must not get A's slot, or an
        // event polled for A would reach B.
        let (b, _b_client, peer) = socket_pair();
        state.add_connection(&mut ioloop, b, peer, false);
        assert_eq!(state.connections.len(), 2);
        let b_id = state.connections[1].conn.id();
        // A stale event polled for A's token still finds A (done), not B.
        assert_eq!(state.connections[0].conn.id(), a_id);
        state.on_connection_ready(&ioloop, 0, true);
        assert!(state.connections[0].conn.is_closed());

        // After the turn, the slot is free and goes to the next newcomer.
        state.end_of_turn(&mut ioloop);
        let (c, _c_client, peer) = socket_pair();
        state.add_connection(&mut ioloop, c, peer, false);
        let c_id = state.connections[0].conn.id();
        assert!(a_id < b_id && b_id < c_id, "ids are never reused");

        // A timer set for A finds C in its slot and leaves it alone.
        state.deadline_passed(&mut ioloop, 0, a_id.0);
        assert!(!state.connections[0].conn.is_closed());
    }

    /// Server sockets whose kernel send buffer is already full, so that
    /// nothing we queue leaves the process: their clients never read.
    fn stuck_pair() -> (TcpStream, std::net::TcpStream, SocketAddr) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut server_side, client, peer) = socket_pair();
        // Fixed, small buffers: the kernel's autotuning would otherwise keep
        // making room, and bytes we count as stuck would trickle out.
        for (fd, option) in [
            (server_side.as_raw_fd(), libc::SO_SNDBUF),
            (client.as_raw_fd(), libc::SO_RCVBUF),
        ] {
            let size: libc::c_int = 4096;
            // SAFETY: a valid open socket, and a pointer to a c_int of the
            // size we pass.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
        }
        let chunk = [0u8; 64 * 1024];
        loop {
            match server_side.write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        (server_side, client, peer)
    }

    /// Accepts `socket` and completes a WebSocket handshake on it; returns its slot.
    fn open_websocket(
        state: &mut ServerState,
        ioloop: &mut IoLoop<ServerState>,
        socket: TcpStream,
        client: &mut std::net::TcpStream,
        peer: SocketAddr,
    ) -> usize {
        use std::io::Write;
        state.add_connection(ioloop, socket, peer, false);
        let key = state.connections.len() - 1;
        client
            .write_all(
                b"GET /soc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        // The request is on loopback already; poll until the server reads it.
        while !state.connections[key].conn.takes_messages() {
            state.on_connection_ready(ioloop, key, true);
        }
        key
    }

    #[test]
    fn a_turn_flushes_one_slice_and_the_next_turn_the_rest_in_order() {
        use std::io::Read;
        let (mut ioloop, mut state) = echo_server();
        let mut clients = Vec::new();
        for _ in 0..FLUSH_SLICE + 2 {
            let (socket, mut client, peer) = socket_pair();
            open_websocket(&mut state, &mut ioloop, socket, &mut client, peer);
            client.set_nonblocking(true).unwrap();
            clients.push(client);
        }
        // What each client has been sent so far (it reads without waiting).
        let received = |client: &mut std::net::TcpStream| {
            let mut bytes = Vec::new();
            match client.read_to_end(&mut bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
                other => panic!("the server closed or failed: {other:?}"),
            }
        };

        // The turn that opened them flushes them all, not a slice.
        assert_eq!(state.dirty.len(), FLUSH_SLICE + 2);
        state.end_of_turn(&mut ioloop);
        assert!(state.dirty.is_empty());
        for client in &mut clients {
            assert!(received(client).starts_with(b"HTTP/1.1 101"));
        }

        // A frame queued to each, in slot order (as a broadcast does).
        let frame = tungstenite::Bytes::from_static(b"\x81\x01x");
        for (key, entry) in state.connections.iter_mut() {
            entry.conn.queue(frame.clone());
            mark_dirty(&mut state.dirty, key, entry);
        }
        state.end_of_turn(&mut ioloop);
        assert_eq!(state.dirty.len(), 2, "the last two wait for the next turn");
        let got: Vec<Vec<u8>> = clients.iter_mut().map(received).collect();
        assert!(got[..FLUSH_SLICE].iter().all(|bytes| *bytes == frame));
        assert!(got[FLUSH_SLICE..].iter().all(Vec::is_empty));

        state.end_of_turn(&mut ioloop);
        assert!(state.dirty.is_empty());
        for client in &mut clients[FLUSH_SLICE..] {
            assert_eq!(received(client), frame);
        }
    }

    #[test]
    fn a_newcomer_hears_of_the_next_newcomer_in_the_same_turn() {
        use std::io::Read;
        let server = chat_server(Config::default());
        let (mut ioloop, mut state) = (server.ioloop, server.state);
        let (a, mut a_client, peer) = socket_pair();
        open_websocket(&mut state, &mut ioloop, a, &mut a_client, peer);
        // B arrives before A has been settled: A, with nothing to catch up
        // on, must already be live, or B's "has joined" passes it by.
        let (b, mut b_client, peer) = socket_pair();
        let b_key = open_websocket(&mut state, &mut ioloop, b, &mut b_client, peer);
        let b_id = state.connections[b_key].conn.id();
        state.end_of_turn(&mut ioloop);
        a_client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let joined = format!("{b_id} has joined");
        while !String::from_utf8_lossy(&got).contains(&joined) {
            let mut buf = [0u8; 4096];
            let n = a_client.read(&mut buf).expect("A never heard of B");
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn a_member_with_a_history_is_cut_off_only_past_twice_the_cap() {
        let config = Config {
            max_message_bytes: 1024,
            max_pending_bytes: 8192,
            ..Config::default()
        };
        let cap = config.max_pending_bytes;
        let server = chat_server(config);
        let (mut ioloop, mut state) = (server.ioloop, server.state);
        let mut keys = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (socket, mut client, peer) = stuck_pair();
            keys.push(open_websocket(
                &mut state,
                &mut ioloop,
                socket,
                &mut client,
                peer,
            ));
            clients.push(client);
        }
        state.end_of_turn(&mut ioloop);
        // Output no history could give again (as pongs would be): just over
        // the cap, and just over twice the cap.
        for (&key, target) in keys.iter().zip([cap + 1, 2 * cap + 1]) {
            let conn = &mut state.connections[key].conn;
            let missing = target - conn.pending();
            conn.queue(tungstenite::Bytes::from(vec![0u8; missing]));
            mark_dirty(&mut state.dirty, key, &mut state.connections[key]);
        }
        state.end_of_turn(&mut ioloop);
        assert!(
            state.connections[keys[0]].conn.takes_messages(),
            "room for notices"
        );
        assert!(!state.connections[keys[1]].conn.takes_messages(), "cut off");
    }

    /// The seed's room without a history: joins and leaves only, so all
    /// its output is of the kind a cut-off is for.
    struct Forgetful;

    impl WebSocketHandler for Forgetful {
        fn on_message(&mut self, _: ConnId, _: &str, _: &mut Outbox) {}
        fn on_close(&mut self, id: ConnId, out: &mut Outbox) {
            out.send_to_all(&format!("{id} has left"));
        }
    }

    #[test]
    fn cut_offs_go_on_in_the_next_turns_until_nobody_new_is_over_the_cap() {
        let config = Config {
            max_message_bytes: 1024,
            max_pending_bytes: 8192,
            close_timeout: Duration::from_millis(50),
            ..Config::default()
        };
        let cap = config.max_pending_bytes;
        let routes = Routes::new().route("/soc", Forgetful);
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, routes).unwrap();
        let (mut ioloop, mut state) = (server.ioloop, server.state);
        let (a, mut a_client, peer) = stuck_pair();
        let a_key = open_websocket(&mut state, &mut ioloop, a, &mut a_client, peer);
        let (b, mut b_client, peer) = stuck_pair();
        let b_key = open_websocket(&mut state, &mut ioloop, b, &mut b_client, peer);
        let a_id = state.connections[a_key].conn.id();
        assert_eq!(state.app.outbox.groups().open_count(), 2);

        // A is over the cap; B is just under it by less than the size of
        // the frame that will announce A's departure.
        let left_frame = ws::encode_text_frame(&format!("{a_id} has left")).len();
        for (key, target) in [(a_key, cap + 1), (b_key, cap + 1 - left_frame)] {
            let conn = &mut state.connections[key].conn;
            let missing = target - conn.pending();
            conn.queue(tungstenite::Bytes::from(vec![0u8; missing]));
        }
        state.end_of_turn(&mut ioloop);
        // A was cut off; "A has left" pushed B over, and listed it again.
        assert!(!state.connections[a_key].conn.takes_messages());
        assert!(state.connections[b_key].conn.takes_messages());
        assert_eq!(state.dirty, [b_key]);
        state.end_of_turn(&mut ioloop);

        // The next turn cut B off too, and left nothing.
        assert!(state.dirty.is_empty());
        assert!(!state.connections[a_key].conn.takes_messages());
        assert!(!state.connections[b_key].conn.takes_messages());
        assert_eq!(
            state.app.outbox.groups().open_count(),
            0,
            "on_close ran for both"
        );
        // Their close frames wait for a socket that takes nothing: WRITABLE
        // is asked for exactly there.
        for key in [a_key, b_key] {
            assert!(state.connections[key].conn.is_closing());
            assert_eq!(
                state.connections[key].interest,
                Interest::READABLE | Interest::WRITABLE
            );
        }

        // A client that reads: once its output is out, WRITABLE is dropped.
        let (c, mut c_client, peer) = socket_pair();
        let c_key = open_websocket(&mut state, &mut ioloop, c, &mut c_client, peer);
        state.end_of_turn(&mut ioloop);
        assert_eq!(state.connections[c_key].interest, Interest::READABLE);

        // The stuck ones never finish their close: their deadline frees them.
        ioloop.call_later(Duration::from_millis(500), |_, ioloop| ioloop.stop());
        ioloop.start(&mut state).unwrap();
        assert!(!state.connections.contains(a_key) && !state.connections.contains(b_key));
        assert!(state.connections.contains(c_key));
        drop((a_client, b_client, c_client));
    }
}
