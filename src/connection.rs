//! One client socket, from its first byte to its last: a state machine.
//!
//! ```text
//!   Http ──(request, keep-alive)──> Http
//!     │  └─(response with close, EOF)───────────────────────┐
//!     └─(handshake)─> Upgrading ──(refused)─────────────────┤
//!                        └─(admitted: 101)─> Open ──(close frame, error, ─> Closing ──(queue empty: FIN;
//!                                                    cut off, shutdown)        peer's EOF or deadline)──> Closed
//! ```
//!
//! * **Http**: collect bytes until httparse sees a complete head, answer it
//!   (pipelined requests in order, through the output queue), repeat.
//! * **Upgrading**: a valid WebSocket handshake waits for the server to ask
//!   the handler whether to admit it ([`Step::Upgrade`]); then the 101 and
//!   Open, or a refusal and Closing.
//! * **Open**: tungstenite reads frames from the socket through the
//!   [`Adapter`]; text goes up to the handler as [`Report::Message`].
//! * **Closing**: tungstenite is gone (never read through it after an error).
//!   The queue is flushed, the write side shut down (FIN), and incoming bytes
//!   discarded until the peer's EOF: closing a socket with unread input makes
//!   the kernel send RST, which can destroy the close frame before the peer
//!   reads it (RFC 6455 §7.1.1, §7.1.7). The server's close timer bounds it.
//! * **Closed**: the server deregisters and frees it at the end of the turn.
//!
//! One vocabulary for ending, Tornado's: [`Connection::close`] begins it
//! (the close frame, or the last response), [`Report::Closing`] is when the
//! handler's `on_close` runs (no message reaches the connection after it),
//! `State::Closing` drains, and `Closed` is the end. [`Connection::abort`]
//! skips the goodbye.
//!
//! The connection never calls the handler or touches other connections. It
//! tells the server what happened through a `report` callback ([`Report`]):
//! opened, a message, closing. The server owns the loop, the timers and the
//! other connections; the connection owns its socket and its output queue.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, trace};
use tungstenite::Bytes;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::handler::ConnId;
use crate::http::{self, Parsed, Reply, Site};
use crate::output::OutputQueue;
use crate::ws::{self, Adapter, Codec, Incoming};

/// How much one `read` call asks the socket for, in HTTP and Closing states.
const READ_CHUNK: usize = 4096;

/// While more than this is queued for a client, its pipelined requests are
/// left unread (in the kernel's buffer) until the queue drains, so a client
/// that sends requests without reading responses cannot grow our memory.
const PIPELINE_PAUSE_BYTES: usize = 64 * 1024;

/// The most bytes one connection may read from its socket per readiness
/// event (or resumption). Without a budget, a client that sends as fast as
/// we read would keep us inside its read loop forever: no other client
/// served, no flush, no output cap enforced, no timer or signal handled.
/// When it is spent, reading pauses and the server resumes it next turn
/// (an `add_callback`: edge-triggered polling brings no new event for bytes
/// we left in the socket).
pub const READ_BUDGET: usize = 64 * 1024;

/// The close reason sent to a client cut off for not reading.
pub const CUT_OFF_REASON: &str = "too slow: unread output over the limit";

/// The close reason sent to every client when the server shuts down.
pub const SHUTDOWN_REASON: &str = "server shutting down";

/// The close reason sent when a ping went unanswered.
pub const PING_TIMEOUT_REASON: &str = "no answer to ping";

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The last read ended in `WouldBlock`. Edge-triggered polling brings a
    /// READABLE event when more arrives; until then, reading is pointless.
    Blocked,
    /// This turn's [`READ_BUDGET`] is spent: continue next turn.
    Budget,
    /// Too much output waits for this client ([`PIPELINE_PAUSE_BYTES`]):
    /// continue once it has drained.
    Backlog,
}

/// Queues an HTTP response. Protected in the queue: a cut-off must not drop
/// it, or the client would read the frames after it as HTTP.
fn queue_response(out: &mut OutputQueue, response: http::Response) {
    out.push_protected(response.head);
    if let Some(body) = response.body {
        out.push_protected(body);
    }
}

/// What a socket must offer. A trait so that tests can drive a connection
/// with a mock; the server uses [`crate::transport::Transport`]: TCP, or
/// TLS over it.
///
/// `read` may say `Interrupted` when it took bytes off the wire that gave
/// no plaintext yet (TLS's handshake and framing); they are counted in
/// [`take_overhead`](Socket::take_overhead) and charged to the read budget.
pub trait Socket: Read + Write {
    /// Ends our side: TLS's close_notify if any, then FIN
    /// (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Output the socket holds that is not on the wire yet (TLS records the
    /// kernel did not take): pending output, like the queue's. 0 for TCP.
    fn held(&self) -> usize {
        0
    }

    /// Writes what [`held`](Socket::held) counts, as far as the kernel takes
    /// it. `Ok` means "no error", not "all sent".
    fn send_held(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Bytes read off the wire since the last call that were not returned
    /// as plaintext by `read`.
    fn take_overhead(&mut self) -> usize {
        0
    }
}

impl Socket for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Reads from `socket` into `buf` within `budget`: charges the plaintext
/// read and the wire's overhead (see [`Socket`]).
pub fn read_within<S: Socket + ?Sized>(
    socket: &mut S,
    buf: &mut [u8],
    budget: &mut usize,
) -> io::Result<usize> {
    let result = socket.read(buf);
    let charged = result.as_ref().map_or(0, |n| *n) + socket.take_overhead();
    *budget = budget.saturating_sub(charged);
    result
}

/// What every connection needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The page and origin policy for HTTP.
    pub site: Site,
    /// tungstenite's limits for each WebSocket.
    pub websocket: WebSocketConfig,
    /// How long each stage may take; shared by every connection.
    pub timeouts: Arc<Timeouts>,
}

/// The deadlines a connection keeps (see [`Connection::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From a request's first byte (or the connection's start) to its
    /// complete head, upgrade included: slow senders (slowloris) are cut.
    pub header: Duration,
    /// How long a kept-alive HTTP connection may sit idle between requests.
    pub keep_alive: Duration,
    /// Silence after which an open WebSocket is pinged; `None`: never.
    pub ping_interval: Option<Duration>,
    /// How long a ping may go unanswered (by a pong or any frame) before
    /// the connection is closed with 1011: a vanished peer is reaped.
    pub ping_timeout: Duration,
    /// How long closing may take (our close frame out, the peer's EOF in).
    pub close: Duration,
}

/// What the connection's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The request head must be complete by then.
    Head,
    /// An idle keep-alive connection is closed then.
    Idle,
    /// Nothing heard for a ping interval: ping then.
    Ping,
    /// A ping was queued; without an answer by then, close 1011 — unless
    /// the ping was waiting behind a backlog that the client read some of
    /// meanwhile: a client that takes bytes is reading, and alive, and
    /// cannot answer a ping it has not read yet; it gets another timeout.
    Pong {
        /// Unsent bytes queued before the ping (u32, saturating: it is
        /// compared with 0 only, and keeps every connection's deadline small).
        ahead: u32,
        /// Some of them were written since the deadline was set.
        progressed: bool,
    },
    /// Closing must be over by then.
    Close,
}

/// What a connection tells the server while it works.
#[derive(Debug, PartialEq, Eq)]
pub enum Report<'a> {
    /// The WebSocket handshake completed, for this request target (path
    /// and query): call the handler's `open`.
    Opened(&'a str),
    /// A text message arrived: call `on_message`.
    Message(&'a str),
    /// A binary message arrived: call `on_binary`.
    Binary(&'a [u8]),
    /// The WebSocket is closing, and takes no more messages: it sent or is about to send its
    /// close frame (ours, or tungstenite's reply to the client's, which the
    /// next read queues), or the peer vanished. Call `on_close`. Sent once,
    /// only after `Opened`; no broadcast reaches the connection after it.
    Closing,
    /// A close frame of ours, with this code, was queued (counted for
    /// `/metrics`; nothing to do).
    CloseSent(u16),
}

/// What [`Connection::on_ready`] asks of the server when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A message (or the opening) was reported: deliver what the handler
    /// made of it, then call `on_ready` again. One message is handled fully,
    /// its replies queued, before the next frame is read, as in Tornado: a
    /// reply can never fall behind a close frame the client sent after it.
    Continue,
    /// Reading stopped: the socket would block, the read budget is spent,
    /// or the connection is closing.
    Stop,
    /// A WebSocket handshake is waiting to be admitted or refused: ask the
    /// handler about [`Connection::upgrade_target`], then call
    /// [`Connection::upgrade`].
    Upgrade,
    /// A request only the server can answer is waiting ([`http::Probe`],
    /// on the metrics listener): answer [`Connection::probe`] with
    /// [`Connection::answer`].
    Ask,
}

/// A connection's stage as `/metrics` counts it (its state, coarser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Requests, or a handshake being admitted.
    Http,
    /// A WebSocket.
    Open,
    /// Closing or closed.
    Closing,
}

impl Stage {
    /// Every stage, in the order `/metrics` lists them.
    pub const ALL: [Stage; 3] = [Stage::Http, Stage::Open, Stage::Closing];

    /// Its label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Http => "http",
            Stage::Open => "open",
            Stage::Closing => "closing",
        }
    }
}

/// The connection's stage; see the module docs.
enum State {
    /// Reading request heads. `buf` holds bytes read but not yet answered.
    /// Boxed, as the states below, so that the state is 16 bytes: 8 more
    /// would take every connection's entry past an allocator size class
    /// (measured: 16 bytes a connection), while an HTTP connection pays
    /// one small allocation for as long as it stays one.
    #[expect(clippy::box_collection, reason = "a smaller State; see above")]
    Http { buf: Box<Vec<u8>> },
    /// A valid handshake, waiting for the handler's verdict. Boxed: it
    /// lasts an instant, and every connection pays for the largest state.
    Upgrading(Box<Upgrade>),
    /// A request waiting for the server's answer ([`Step::Ask`]). Boxed for
    /// the same reason; it lasts an instant too.
    Asking(Box<Asking>),
    /// A WebSocket. The codec holds tungstenite's read buffer and state;
    /// the stream is lent to it as an [`Adapter`] for each read. `None`
    /// while the client is between messages: an idle connection keeps no
    /// codec (see [`Codec::at_rest`]), and the next bytes make a fresh one.
    Open(Option<Box<Codec>>),
    /// Finishing: flush, shut down writing, wait for the peer's EOF.
    Closing,
    /// Finished; waiting to be freed.
    Closed,
}

/// A handshake waiting to be admitted ([`State::Upgrading`]).
struct Upgrade {
    /// The 101, sent if the handshake is admitted.
    switch: http::Response,
    /// The request's path and query.
    target: String,
    /// Bytes after the head: the client's first frames.
    early: Vec<u8>,
}

/// A request waiting for the server's answer ([`State::Asking`]).
struct Asking {
    probe: http::Probe,
    asked: http::Asked,
    /// Bytes after the request's head: the next requests, pipelined.
    buf: Vec<u8>,
}

/// One client connection.
pub struct Connection<S> {
    id: ConnId,
    socket: S,
    /// Everything not yet written to the socket.
    out: OutputQueue,
    state: State,
    /// Set from `Opened` until `Closing`: the WebSocket takes messages.
    /// (A client's close frame ends this before the state leaves `Open`:
    /// tungstenite's reply is still to be read out of it.)
    taking_messages: bool,
    /// Why reading stopped, if it did. Stopped early (a spent budget, a
    /// backlog), with input maybe left in the socket, no event will come
    /// for it, so the server must call [`Connection::on_ready`] again
    /// itself (see [`Connection::wants_resume`]).
    paused: Option<Pause>,
    /// We have seen the peer's EOF (or a reset): nothing more will come.
    peer_eof: bool,
    /// The write side is shut down: our FIN is sent.
    write_shut: bool,
    /// The durations the deadlines are made of: the server's, shared (a
    /// copy would cost every idle connection 80 bytes).
    timeouts: Arc<Timeouts>,
    /// When the current stage's time is up ([`Connection::deadline`]).
    deadline: Option<(Instant, Deadline)>,
}

impl<S: Socket> Connection<S> {
    /// A freshly accepted connection, waiting for its first request.
    pub fn new(id: ConnId, socket: S, timeouts: Arc<Timeouts>) -> Self {
        let head_by = Instant::now() + timeouts.header;
        Connection {
            id,
            socket,
            out: OutputQueue::new(),
            state: State::Http {
                buf: Box::default(),
            },
            taking_messages: false,
            paused: None,
            peer_eof: false,
            write_shut: false,
            timeouts,
            deadline: Some((head_by, Deadline::Head)),
        }
    }

    /// Refuses a connection the server cannot take: `response` (a 503) and
    /// close, whatever the client sends.
    pub fn refuse(&mut self, response: http::Response) {
        queue_response(&mut self.out, response);
        self.begin_closing();
    }

    /// When this connection next needs attention from the clock: the end
    /// of its request head, idle keep-alive, ping interval, ping answer or
    /// close. The server keeps one timer per connection and calls
    /// [`Connection::on_deadline`] then. A deadline may move later without
    /// the timer knowing; `on_deadline` checks.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.map(|(at, _)| at)
    }

    /// A timer fired: act on the deadline if it has passed (if it moved
    /// later meanwhile, do nothing; the server re-arms for the new one).
    pub fn on_deadline(&mut self, now: Instant, report: &mut dyn FnMut(Report<'_>)) {
        let Some((at, kind)) = self.deadline else {
            return;
        };
        if now < at {
            return;
        }
        match kind {
            Deadline::Head => {
                debug!("conn {}: request head not complete in time", self.id);
                if let State::Http { buf } = &self.state
                    && !buf.is_empty()
                {
                    queue_response(&mut self.out, http::request_timeout(SystemTime::now()));
                }
                self.begin_closing();
            }
            Deadline::Idle => {
                debug!("conn {}: idle keep-alive connection closed", self.id);
                self.begin_closing();
            }
            Deadline::Ping => {
                trace!("conn {}: ping", self.id);
                let ahead = u32::try_from(self.pending()).unwrap_or(u32::MAX);
                self.out.push(ws::encode_ping_frame());
                let pong = Deadline::Pong {
                    ahead,
                    progressed: false,
                };
                self.deadline = Some((now + self.timeouts.ping_timeout, pong));
            }
            Deadline::Pong {
                ahead,
                progressed: true,
            } => {
                trace!(
                    "conn {}: ping behind a backlog the client is reading",
                    self.id
                );
                let pong = Deadline::Pong {
                    ahead,
                    progressed: false,
                };
                self.deadline = Some((now + self.timeouts.ping_timeout, pong));
            }
            Deadline::Pong { .. } => {
                debug!("conn {}: no answer to ping; closing with 1011", self.id);
                self.close(CloseCode::Error, PING_TIMEOUT_REASON, report);
                // A peer that does not answer pings will not finish a close
                // handshake either: one flush for the close frame, then drop.
                self.deadline = Some((now, Deadline::Close));
            }
            Deadline::Close => {
                debug!(
                    "conn {}: close did not finish in time; dropping it",
                    self.id
                );
                self.abort(report);
            }
        }
    }

    /// Something arrived on an open WebSocket: it is alive; the next ping
    /// is due a full interval from now.
    fn heard_from(&mut self) {
        self.deadline = self
            .timeouts
            .ping_interval
            .map(|interval| (Instant::now() + interval, Deadline::Ping));
    }

    /// Goes to Closing, with its deadline.
    fn begin_closing(&mut self) {
        self.state = State::Closing;
        self.deadline = Some((Instant::now() + self.timeouts.close, Deadline::Close));
    }

    /// The connection's lifelong id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The socket, for (de)registering with the loop.
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// Whether it takes messages: handshake done, `Closing` not yet reported.
    pub fn takes_messages(&self) -> bool {
        self.taking_messages
    }

    /// Whether it is finishing (close frame queued or response with close).
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing)
    }

    /// Its stage, for `/metrics`.
    pub fn stage(&self) -> Stage {
        match self.state {
            State::Http { .. } | State::Upgrading(_) | State::Asking(_) => Stage::Http,
            State::Open(_) => Stage::Open,
            State::Closing | State::Closed => Stage::Closing,
        }
    }

    /// Whether it is finished and can be freed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether output is waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.pending() > 0 && !self.is_closed()
    }

    /// Bytes queued and not yet written: the queue's, and what the socket
    /// holds (TLS records).
    pub fn pending(&self) -> usize {
        self.out.pending() + self.socket.held()
    }

    /// Whether reading stopped early and should be resumed now, by calling
    /// [`Connection::on_ready`] with `readable` false: next turn after a
    /// spent budget, or once a backlog of output has drained.
    pub fn wants_resume(&self) -> bool {
        match self.paused {
            Some(Pause::Budget) => true,
            Some(Pause::Backlog) => self.pending() <= PIPELINE_PAUSE_BYTES,
            Some(Pause::Blocked) | None => false,
        }
    }

    /// Queues a broadcast frame (shared bytes). Only for open connections:
    /// nothing may follow a close frame.
    pub fn queue(&mut self, frame: Bytes) {
        debug_assert!(
            self.taking_messages,
            "queue on a connection that is not open"
        );
        if self.taking_messages {
            self.out.push(frame);
        }
    }

    /// The request target (path and query) of a handshake waiting to be
    /// admitted ([`Step::Upgrade`]).
    pub fn upgrade_target(&self) -> Option<&str> {
        match &self.state {
            State::Upgrading(upgrade) => Some(&upgrade.target),
            _ => None,
        }
    }

    /// The request waiting for the server's answer ([`Step::Ask`]) and the
    /// shape its answer must have.
    pub fn probe(&self) -> Option<(http::Probe, http::Asked)> {
        match &self.state {
            State::Asking(asking) => Some((asking.probe, asking.asked.clone())),
            _ => None,
        }
    }

    /// Answers the request waiting ([`Step::Ask`]) with `response`, then
    /// goes on as after any response: [`Step::Continue`] to read the next
    /// request, or [`Step::Stop`] if it closed the connection.
    pub fn answer(&mut self, response: http::Response, budget: &mut usize) -> Step {
        let State::Asking(asking) = std::mem::replace(&mut self.state, State::Closing) else {
            return Step::Stop;
        };
        self.state = State::Http {
            buf: Box::new(asking.buf),
        };
        self.respond(response, budget)
    }

    /// Ends a handshake waiting to be admitted: with `Ok`, queues the 101,
    /// opens the WebSocket and reports [`Report::Opened`] ([`Step::Continue`]:
    /// deliver the greeting, then read the client's first frames); with a
    /// refusal, queues that response instead and closes.
    pub fn upgrade(
        &mut self,
        verdict: Result<(), http::Response>,
        settings: &Settings,
        budget: &mut usize,
        report: &mut dyn FnMut(Report<'_>),
    ) -> Step {
        let State::Upgrading(upgrade) = std::mem::replace(&mut self.state, State::Closing) else {
            return Step::Stop;
        };
        let Upgrade {
            switch,
            target,
            early,
        } = *upgrade;
        match verdict {
            Ok(()) => {
                debug!("conn {}: WebSocket open", self.id);
                // The 101 is queued before anything tungstenite writes.
                queue_response(&mut self.out, switch);
                let codec = (!early.is_empty()).then(|| Codec::new(early, settings.websocket));
                self.state = State::Open(codec);
                self.taking_messages = true;
                self.heard_from();
                report(Report::Opened(&target));
                Step::Continue
            }
            Err(refusal) => {
                debug!(
                    "conn {}: HTTP {} ({})",
                    self.id, refusal.status, refusal.why
                );
                queue_response(&mut self.out, refusal);
                self.begin_closing();
                self.discard_input(budget);
                Step::Stop
            }
        }
    }

    /// The socket is ready (`readable`: the event said so). Reads, within
    /// `budget` bytes, until there is something to deliver ([`Step::Continue`])
    /// or nothing more to do now ([`Step::Stop`]). A call with `readable`
    /// false continues reading that stopped early ([`Connection::wants_resume`])
    /// or after a [`Step::Continue`]; after a `WouldBlock` it does nothing.
    pub fn on_ready(
        &mut self,
        readable: bool,
        budget: &mut usize,
        settings: &Settings,
        report: &mut dyn FnMut(Report<'_>),
    ) -> Step {
        if self.paused == Some(Pause::Blocked) && !readable {
            // A WRITABLE-only event: the server flushes at the end of the turn.
            return Step::Stop;
        }
        self.paused = None;
        match self.state {
            State::Http { .. } => self.read_http(settings, budget, report),
            // The server decides before reading on.
            State::Upgrading(_) => Step::Upgrade,
            State::Asking(_) => Step::Ask,
            State::Open(_) => self.read_websocket(budget, settings.websocket, report),
            State::Closing => {
                self.discard_input(budget);
                Step::Stop
            }
            State::Closed => Step::Stop,
        }
    }

    /// Writes what the socket takes. In Closing, shuts down the write side
    /// once everything is out. A write error ends the connection. Returns
    /// the bytes written.
    pub fn flush(&mut self, report: &mut dyn FnMut(Report<'_>)) -> usize {
        if self.is_closed() {
            return 0;
        }
        // Records the socket holds go first: they come before anything
        // still queued.
        let sent = self
            .socket
            .send_held()
            .and_then(|()| self.out.flush(&mut self.socket));
        let written = match sent {
            Ok(n) => {
                trace!(
                    "conn {}: wrote {n} bytes, {} pending",
                    self.id,
                    self.out.pending()
                );
                // A ping waits behind whatever was queued before it; a
                // client that takes those bytes is reading, and alive,
                // though its pong is still far off (see `Deadline::Pong`).
                if let Some((at, Deadline::Pong { ahead, .. })) = self.deadline
                    && n > 0
                    && ahead > 0
                {
                    let written = u32::try_from(n).unwrap_or(u32::MAX);
                    let pong = Deadline::Pong {
                        ahead: ahead.saturating_sub(written),
                        progressed: true,
                    };
                    self.deadline = Some((at, pong));
                }
                n
            }
            Err(e) => {
                debug!("conn {}: write failed: {e}", self.id);
                self.abort(report);
                return 0;
            }
        };
        if self.is_closing() && self.pending() == 0 {
            if !self.write_shut {
                self.write_shut = true;
                // ENOTCONN here means the peer already reset: nothing to shut.
                let _ = self.socket.shutdown_write();
            }
            if self.peer_eof {
                self.state = State::Closed;
            }
        }
        written
    }

    /// Closes with `code`: queues the close frame, reports `Closing`, and goes
    /// to Closing. An HTTP connection just goes to Closing (its queued
    /// responses still go out). Does nothing if already closing.
    pub fn close(
        &mut self,
        code: CloseCode,
        reason: &'static str,
        report: &mut dyn FnMut(Report<'_>),
    ) {
        match self.state {
            State::Open(_) => {
                self.report_closing(report);
                self.out.push(ws::encode_close_frame(code, reason));
                report(Report::CloseSent(u16::from(code)));
                self.begin_closing();
            }
            State::Http { .. } | State::Upgrading(_) | State::Asking(_) => self.begin_closing(),
            State::Closing | State::Closed => {}
        }
    }

    /// Cuts off a client that let too much output pile up: its unsent
    /// frames are dropped (all but one already partly written) and a close
    /// 1008 takes their place; the close frame is always allowed past the cap.
    pub fn cut_off(&mut self, report: &mut dyn FnMut(Report<'_>)) {
        debug!(
            "conn {}: cut off with {} bytes unsent",
            self.id,
            self.out.pending()
        );
        self.out.drop_unstarted();
        self.close(CloseCode::Policy, CUT_OFF_REASON, report);
    }

    /// Ends the connection now, whatever its state (a deadline passed, or
    /// the socket failed).
    pub fn abort(&mut self, report: &mut dyn FnMut(Report<'_>)) {
        self.report_closing(report);
        self.state = State::Closed;
        self.deadline = None;
    }

    /// Reports [`Report::Closing`], once, if the WebSocket took messages.
    fn report_closing(&mut self, report: &mut dyn FnMut(Report<'_>)) {
        if self.taking_messages {
            self.taking_messages = false;
            report(Report::Closing);
        }
    }

    /// Http state: answer every complete request buffered, then read more,
    /// until the socket would block.
    fn read_http(
        &mut self,
        settings: &Settings,
        budget: &mut usize,
        report: &mut dyn FnMut(Report<'_>),
    ) -> Step {
        loop {
            // Answer what is already here, in order.
            loop {
                let State::Http { buf } = &mut self.state else {
                    return Step::Stop;
                };
                let (consumed, reply) = match http::answer(buf, &settings.site, SystemTime::now()) {
                    Parsed::Partial => break,
                    Parsed::Complete { consumed, reply } => (consumed, reply),
                };
                match reply {
                    Reply::Respond(response) => {
                        buf.drain(..consumed);
                        if self.respond(response, budget) == Step::Stop {
                            return Step::Stop;
                        }
                    }
                    Reply::Ask(probe, asked) => {
                        buf.drain(..consumed);
                        let buf = std::mem::take(&mut **buf);
                        self.state = State::Asking(Box::new(Asking { probe, asked, buf }));
                        return Step::Ask;
                    }
                    Reply::Upgrade(switch, target) => {
                        // Bytes after the head are the client's first frames.
                        let early = buf.split_off(consumed);
                        self.state = State::Upgrading(Box::new(Upgrade {
                            switch,
                            target,
                            early,
                        }));
                        return Step::Upgrade;
                    }
                }
            }
            if self.pending() > PIPELINE_PAUSE_BYTES {
                self.paused = Some(Pause::Backlog);
                return Step::Stop;
            }
            if *budget == 0 {
                self.paused = Some(Pause::Budget);
                return Step::Stop;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let want = READ_CHUNK.min(*budget);
            match read_within(&mut self.socket, &mut chunk[..want], budget) {
                Ok(0) => {
                    // The client half-closed. Answers already queued still go
                    // out (a client may send a request, then FIN, then read).
                    self.peer_eof = true;
                    self.begin_closing();
                    return Step::Stop;
                }
                Ok(n) => {
                    if let State::Http { buf } = &mut self.state {
                        if buf.is_empty() {
                            // A new request begins: its head must be
                            // complete within the header timeout.
                            let at = Instant::now() + self.timeouts.header;
                            if !matches!(self.deadline, Some((_, Deadline::Head))) {
                                self.deadline = Some((at, Deadline::Head));
                            }
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.paused = Some(Pause::Blocked);
                    return Step::Stop;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("conn {}: read failed: {e}", self.id);
                    self.abort(report);
                    return Step::Stop;
                }
            }
        }
    }

    /// Open state: read frames through tungstenite until a message is
    /// complete (reported; [`Step::Continue`]) or the socket would block.
    fn read_websocket(
        &mut self,
        budget: &mut usize,
        config: WebSocketConfig,
        report: &mut dyn FnMut(Report<'_>),
    ) -> Step {
        loop {
            let State::Open(codec) = &mut self.state else {
                return Step::Stop;
            };
            let codec = codec.get_or_insert_with(|| Codec::new(Vec::new(), config));
            let mut stream = Adapter {
                socket: &mut self.socket,
                out: &mut self.out,
                budget: &mut *budget,
                bounds: &mut codec.bounds,
            };
            let incoming = ws::classify(codec.context.read(&mut stream));
            if matches!(
                incoming,
                Incoming::Text(_) | Incoming::Binary(_) | Incoming::Control
            ) {
                self.heard_from();
            }
            match incoming {
                Incoming::Text(text) => {
                    trace!("conn {}: text of {} bytes", self.id, text.len());
                    report(Report::Message(text.as_str()));
                    return Step::Continue;
                }
                Incoming::Binary(data) => {
                    trace!("conn {}: binary of {} bytes", self.id, data.len());
                    report(Report::Binary(&data));
                    return Step::Continue;
                }
                Incoming::Control => {}
                Incoming::CloseReceived => {
                    // tungstenite queued the reply; the next read hands it
                    // to the adapter and reports Closed.
                    debug!("conn {}: close frame received", self.id);
                    self.report_closing(report);
                }
                Incoming::Closed => {
                    self.begin_closing();
                    return Step::Stop;
                }
                Incoming::WouldBlock if *budget == 0 => {
                    // The adapter, not the socket, said stop.
                    self.paused = Some(Pause::Budget);
                    return Step::Stop;
                }
                Incoming::WouldBlock => {
                    self.paused = Some(Pause::Blocked);
                    if let State::Open(codec) = &mut self.state
                        && codec.as_ref().is_some_and(|c| c.at_rest())
                        && self.taking_messages
                    {
                        // Nothing half-read: an idle client costs no codec.
                        *codec = None;
                    }
                    return Step::Stop;
                }
                Incoming::Gone(why) => {
                    debug!("conn {}: gone: {why}", self.id);
                    self.abort(report);
                    return Step::Stop;
                }
                Incoming::Fail(code, reason, detail) => {
                    debug!(
                        "conn {}: closing with {}: {detail}",
                        self.id,
                        u16::from(code)
                    );
                    // Never read through tungstenite again: queue our own
                    // close frame and drop the context.
                    self.close(code, reason, report);
                    return Step::Stop;
                }
            }
        }
    }

    /// Queues the response to the request just taken from the buffer; then
    /// closes if it says so (anything pipelined after it is discarded:
    /// [`Step::Stop`]), or waits for the next request ([`Step::Continue`]).
    fn respond(&mut self, response: http::Response, budget: &mut usize) -> Step {
        debug!(
            "conn {}: HTTP {} ({})",
            self.id, response.status, response.why
        );
        let close = response.close;
        queue_response(&mut self.out, response);
        if close {
            self.begin_closing();
            self.discard_input(budget);
            return Step::Stop;
        }
        let State::Http { buf } = &mut self.state else {
            return Step::Stop;
        };
        let now = Instant::now();
        self.deadline = if buf.is_empty() {
            // Idle keep-alive connections hold no buffer.
            **buf = Vec::new();
            Some((now + self.timeouts.keep_alive, Deadline::Idle))
        } else {
            // The next request has begun: its head's clock runs.
            Some((now + self.timeouts.header, Deadline::Head))
        };
        Step::Continue
    }

    /// Closing state: read and throw away until EOF, so that our close
    /// frame is not destroyed by a reset (see the module docs).
    fn discard_input(&mut self, budget: &mut usize) {
        let mut chunk = [0u8; READ_CHUNK];
        while !self.peer_eof {
            if *budget == 0 {
                self.paused = Some(Pause::Budget);
                return;
            }
            let want = READ_CHUNK.min(*budget);
            match read_within(&mut self.socket, &mut chunk[..want], budget) {
                Ok(0) => self.peer_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.paused = Some(Pause::Blocked);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset: the peer is gone and will read nothing more.
                Err(_) => {
                    self.peer_eof = true;
                    self.out.drop_unstarted();
                    self.state = State::Closed;
                    return;
                }
            }
        }
        if self.pending() == 0 {
            self.state = State::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// What the mock socket's peer does, shared with the test.
    #[derive(Default)]
    struct Peer {
        /// Chunks the next reads return; `None` is a WouldBlock.
        incoming: VecDeque<Option<Vec<u8>>>,
        /// After `incoming` runs out: EOF (true) or WouldBlock (false).
        eof: bool,
        /// Bytes the socket accepted from us.
        received: Vec<u8>,
        /// How many more bytes the socket takes before WouldBlock.
        write_room: usize,
        /// Bytes the socket holds unsent, as TLS records: sent (from
        /// `write_room`) before anything written after them.
        held: usize,
        write_shut: bool,
    }

    #[derive(Clone, Default)]
    struct MockSocket(Rc<RefCell<Peer>>);

    impl Read for MockSocket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut peer = self.0.borrow_mut();
            match peer.incoming.pop_front() {
                Some(Some(mut chunk)) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        chunk.drain(..n);
                        peer.incoming.push_front(Some(chunk));
                    }
                    Ok(n)
                }
                Some(None) => Err(io::ErrorKind::WouldBlock.into()),
                None if peer.eof => Ok(0),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Write for MockSocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut peer = self.0.borrow_mut();
            if peer.write_room == 0 || peer.held > 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(peer.write_room);
            peer.write_room -= n;
            peer.received.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Socket for MockSocket {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.0.borrow_mut().write_shut = true;
            Ok(())
        }
        fn held(&self) -> usize {
            self.0.borrow().held
        }
        fn send_held(&mut self) -> io::Result<()> {
            let mut peer = self.0.borrow_mut();
            let n = peer.held.min(peer.write_room);
            peer.held -= n;
            peer.write_room -= n;
            Ok(())
        }
    }

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        keep_alive: Duration::from_secs(30),
        ping_interval: Some(Duration::from_secs(20)),
        ping_timeout: Duration::from_secs(20),
        close: Duration::from_secs(5),
    };

    fn settings() -> Settings {
        Settings {
            site: Site {
                assets: crate::templates::Assets::from_files([(
                    crate::templates::INDEX,
                    Bytes::from_static(b"PAGE"),
                )]),
                csp: None,
                allowed_origins: Vec::new(),
                websocket_paths: vec!["/soc".into()],
                probes: false,
            },
            websocket: ws::websocket_config(1024, 256),
            timeouts: Arc::new(TIMEOUTS),
        }
    }

    /// How the report of an opened `/soc` reads.
    const OPENED: &str = "Opened(\"/soc\")";

    const UPGRADE: &[u8] =
        b"GET /soc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn masked_text(text: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(text); // a zero mask leaves the payload as is
        f
    }

    /// A new connection on a socket that takes every byte written to it
    /// and has `input` waiting to be read.
    fn roomy(input: &[u8]) -> (MockSocket, Connection<MockSocket>) {
        let socket = MockSocket::default();
        socket.0.borrow_mut().write_room = usize::MAX;
        socket
            .0
            .borrow_mut()
            .incoming
            .push_back(Some(input.to_vec()));
        let conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        (socket, conn)
    }

    /// A connection whose upgrade has been read, on a roomy socket.
    fn upgraded_with_room() -> (MockSocket, Connection<MockSocket>) {
        let (socket, mut conn) = roomy(UPGRADE);
        ready(&mut conn, true);
        (socket, conn)
    }

    /// Runs one ready event as the server does (on_ready until Stop, one
    /// budget, handshakes admitted) and returns the reports, owned.
    fn ready(conn: &mut Connection<MockSocket>, readable: bool) -> Vec<String> {
        let mut seen = Vec::new();
        let mut budget = READ_BUDGET;
        let mut readable = readable;
        loop {
            let mut report = |r: Report<'_>| seen.push(format!("{r:?}"));
            let step = match conn.on_ready(readable, &mut budget, &settings(), &mut report) {
                // Admitted, as a handler that takes everything would.
                Step::Upgrade => conn.upgrade(Ok(()), &settings(), &mut budget, &mut report),
                step => step,
            };
            if step == Step::Stop {
                return seen;
            }
            readable = false;
        }
    }

    fn flush(conn: &mut Connection<MockSocket>) {
        conn.flush(&mut |r| panic!("unexpected {r:?}"));
    }

    #[test]
    fn pipelined_requests_split_by_would_block_are_answered_in_order() {
        let socket = MockSocket::default();
        {
            let mut peer = socket.0.borrow_mut();
            peer.write_room = usize::MAX;
            peer.incoming
                .push_back(Some(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /x HT".to_vec()));
            peer.incoming.push_back(None);
            peer.incoming
                .push_back(Some(b"TP/1.1\r\nHost: h\r\n\r\n".to_vec()));
        }
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        assert!(ready(&mut conn, true).is_empty());
        flush(&mut conn);
        assert!(
            ready(&mut conn, false).is_empty(),
            "WouldBlock: a writable event reads nothing"
        );
        assert!(ready(&mut conn, true).is_empty());
        flush(&mut conn);
        let received = String::from_utf8(socket.0.borrow().received.clone()).unwrap();
        let first = received.find("200 OK").unwrap();
        let second = received.find("404 Not Found").unwrap();
        assert!(first < second, "{received}");
        assert!(received.contains("\r\n\r\nPAGE"));
        assert!(!conn.is_closing(), "keep-alive");
    }

    #[test]
    fn records_the_socket_holds_are_pending_output_and_go_before_the_fin() {
        let (socket, mut conn) = upgraded_with_room();
        flush(&mut conn);
        {
            // TLS records the kernel did not take.
            let mut peer = socket.0.borrow_mut();
            peer.held = 500;
            peer.write_room = 0;
        }
        assert_eq!(conn.pending(), 500, "the cap sees them");
        assert!(conn.wants_write(), "WRITABLE is wanted for them");
        conn.close(CloseCode::Normal, "bye", &mut |_| {});
        flush(&mut conn);
        assert_eq!(conn.pending(), 500 + 7, "the close frame waits behind them");
        assert!(
            !socket.0.borrow().write_shut,
            "no FIN while records are held"
        );
        socket.0.borrow_mut().write_room = 1000;
        flush(&mut conn);
        let peer = socket.0.borrow();
        assert_eq!(peer.held, 0);
        assert!(
            peer.received.ends_with(b"\x88\x05\x03\xe8bye"),
            "the close frame"
        );
        assert!(peer.write_shut, "FIN once all is out");
    }

    #[test]
    fn output_blocked_by_the_socket_waits_and_resumes_exactly() {
        let socket = MockSocket::default();
        socket
            .0
            .borrow_mut()
            .incoming
            .push_back(Some(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec()));
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        ready(&mut conn, true);
        socket.0.borrow_mut().write_room = 10;
        flush(&mut conn);
        assert!(conn.wants_write(), "the socket took only 10 bytes");
        let pending = conn.pending();
        socket.0.borrow_mut().write_room = usize::MAX;
        flush(&mut conn);
        assert!(!conn.wants_write());
        let received = socket.0.borrow().received.clone();
        assert_eq!(received.len(), 10 + pending);
        assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n") && received.ends_with(b"PAGE"));
    }

    #[test]
    fn frames_in_the_handshake_packet_are_not_lost() {
        let socket = MockSocket::default();
        let mut packet = UPGRADE.to_vec();
        packet.extend(masked_text(b"early"));
        socket.0.borrow_mut().incoming.push_back(Some(packet));
        let mut conn = Connection::new(ConnId(1), socket, Arc::new(TIMEOUTS));
        assert_eq!(ready(&mut conn, true), [OPENED, "Message(\"early\")"]);
        assert!(conn.takes_messages());
    }

    #[test]
    fn an_idle_connection_keeps_no_codec_and_a_half_read_message_keeps_it() {
        let has_codec = |conn: &Connection<MockSocket>| matches!(conn.state, State::Open(Some(_)));
        let (socket, mut conn) = upgraded_with_room();
        assert!(
            conn.takes_messages() && !has_codec(&conn),
            "idle from the start"
        );
        let push = |bytes: &[u8]| {
            let mut peer = socket.0.borrow_mut();
            peer.incoming.push_back(Some(bytes.to_vec()));
            peer.incoming.push_back(None);
        };
        // Half a frame: the codec stays, and the frame comes out whole.
        let hello = masked_text(b"hello");
        push(&hello[..3]);
        assert!(ready(&mut conn, true).is_empty());
        assert!(has_codec(&conn), "mid-header");
        push(&hello[3..8]);
        assert!(ready(&mut conn, true).is_empty());
        assert!(has_codec(&conn), "mid-payload");
        // The rest, and the first fragment of a message (text, no FIN).
        let mut bytes = hello[8..].to_vec();
        bytes.extend([0x01, 0x82, 0, 0, 0, 0, b'a', b'b']);
        push(&bytes);
        assert_eq!(ready(&mut conn, true), ["Message(\"hello\")"]);
        assert!(has_codec(&conn), "mid-message");
        // A ping between the fragments, then the last one (FIN).
        push(&[
            0x89, 0x81, 0, 0, 0, 0, b'p', 0x80, 0x82, 0, 0, 0, 0, b'c', b'd',
        ]);
        assert_eq!(ready(&mut conn, true), ["Message(\"abcd\")"]);
        assert!(!has_codec(&conn), "at rest again");
        flush(&mut conn);
        assert!(
            socket.0.borrow().received.ends_with(&[0x8a, 0x01, b'p']),
            "ponged"
        );
        // A fresh codec reads on as if nothing happened.
        push(&masked_text(b"again"));
        assert_eq!(ready(&mut conn, true), ["Message(\"again\")"]);
        assert!(!has_codec(&conn));
    }

    #[test]
    fn an_error_closes_once_and_tungstenite_is_never_read_again() {
        let socket = MockSocket::default();
        {
            let mut peer = socket.0.borrow_mut();
            peer.write_room = usize::MAX;
            let mut packet = UPGRADE.to_vec();
            packet.extend([0xc1, 0x80, 0, 0, 0, 0]); // a reserved bit set: 1002
            packet.extend(masked_text(b"after the error"));
            peer.incoming.push_back(Some(packet));
            peer.incoming.push_back(None);
            peer.incoming.push_back(Some(masked_text(b"more garbage")));
        }
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        assert_eq!(
            ready(&mut conn, true),
            [OPENED, "Closing", "CloseSent(1002)"]
        );
        assert!(conn.is_closing());
        flush(&mut conn);
        let received = socket.0.borrow().received.clone();
        let close = [0x88u8, 0x10, 0x03, 0xea]; // close, 16-byte payload, code 1002
        assert!(received.windows(4).any(|w| w == close), "{received:?}");
        assert!(socket.0.borrow().write_shut, "FIN after the close frame");
        // Later bytes are discarded, not parsed; EOF finishes the connection.
        assert!(ready(&mut conn, true).is_empty());
        socket.0.borrow_mut().eof = true;
        assert!(ready(&mut conn, true).is_empty());
        assert!(conn.is_closed());
    }

    #[test]
    fn a_client_close_is_answered_then_the_connection_finishes() {
        let socket = MockSocket::default();
        {
            let mut peer = socket.0.borrow_mut();
            peer.write_room = usize::MAX;
            let mut packet = UPGRADE.to_vec();
            packet.extend([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]); // close 1000
            peer.incoming.push_back(Some(packet));
            peer.eof = true;
        }
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        assert_eq!(ready(&mut conn, true), [OPENED, "Closing"]);
        flush(&mut conn);
        let received = socket.0.borrow().received.clone();
        assert!(
            received.ends_with(&[0x88, 0x02, 0x03, 0xe8]),
            "{received:?}"
        );
        assert!(ready(&mut conn, true).is_empty());
        assert!(conn.is_closed());
    }

    #[test]
    fn a_fast_sender_is_read_one_budget_per_turn_and_resumed() {
        let socket = MockSocket::default();
        let line = [b'x'; 100];
        let lines = 3 * READ_BUDGET / masked_text(&line).len();
        {
            let mut peer = socket.0.borrow_mut();
            let mut all = UPGRADE.to_vec();
            for _ in 0..lines {
                all.extend(masked_text(&line));
            }
            peer.incoming.push_back(Some(all));
        }
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        let is_message = |r: &String| r.starts_with("Message");
        let mut messages = ready(&mut conn, true)
            .iter()
            .filter(|r| is_message(r))
            .count();
        let mut turns = 0;
        while conn.wants_resume() {
            turns += 1;
            assert!(turns < 10, "resumed forever");
            messages += ready(&mut conn, false)
                .iter()
                .filter(|r| is_message(r))
                .count();
        }
        assert_eq!(messages, lines, "nothing lost across the pauses");
        assert!(
            turns >= 3,
            "read in budget-sized slices, not at once: {turns} resumptions"
        );
        assert!(
            !conn.wants_resume(),
            "socket drained: wait for the next event"
        );
    }

    /// Everything the mock socket has been sent so far.
    fn sent(socket: &MockSocket) -> Vec<u8> {
        socket.0.borrow().received.clone()
    }

    #[test]
    fn a_head_not_complete_in_time_gets_408_and_the_connection_closes() {
        let (socket, mut conn) = roomy(b"GET / HT");
        let deadline = conn.deadline().unwrap();
        ready(&mut conn, true);
        assert_eq!(
            conn.deadline(),
            Some(deadline),
            "absolute: bytes do not extend it"
        );
        conn.on_deadline(deadline - Duration::from_millis(1), &mut |_| {});
        assert!(!conn.is_closing(), "not yet");
        conn.on_deadline(deadline, &mut |_| {});
        assert!(conn.is_closing());
        flush(&mut conn);
        assert!(sent(&socket).starts_with(b"HTTP/1.1 408 Request Timeout\r\n"));
    }

    #[test]
    fn an_idle_keep_alive_connection_is_closed_at_its_deadline_without_a_word() {
        let (socket, mut conn) = roomy(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        ready(&mut conn, true);
        flush(&mut conn);
        let answered = sent(&socket).len();
        let idle_until = conn.deadline().unwrap();
        assert!(
            idle_until > Instant::now() + TIMEOUTS.header,
            "the keep-alive clock, not the head's"
        );
        conn.on_deadline(idle_until, &mut |_| {});
        assert!(conn.is_closing());
        flush(&mut conn);
        assert_eq!(
            sent(&socket).len(),
            answered,
            "no response to an idle connection"
        );
    }

    #[test]
    fn silence_brings_a_ping_and_an_unanswered_ping_a_1011() {
        let (socket, mut conn) = upgraded_with_room();
        flush(&mut conn);
        let before = sent(&socket).len();
        let ping_at = conn.deadline().unwrap();
        conn.on_deadline(ping_at, &mut |_| {});
        flush(&mut conn);
        assert_eq!(&sent(&socket)[before..], [0x89, 0x00], "an empty ping");
        let answer_by = conn.deadline().unwrap();
        assert!(answer_by >= ping_at + TIMEOUTS.ping_timeout);
        let mut seen = Vec::new();
        conn.on_deadline(answer_by, &mut |r| seen.push(format!("{r:?}")));
        assert_eq!(seen, ["Closing", "CloseSent(1011)"]);
        flush(&mut conn);
        assert_eq!(
            &sent(&socket)[before + 2..before + 6],
            [0x88, 2 + PING_TIMEOUT_REASON.len() as u8, 0x03, 0xf3]
        );
        // No handshake is waited for: the next deadline drops it.
        conn.on_deadline(conn.deadline().unwrap(), &mut |_| {});
        assert!(conn.is_closed());
    }

    #[test]
    fn a_ping_behind_a_backlog_waits_while_the_client_reads_it() {
        let (socket, mut conn) = upgraded_with_room();
        flush(&mut conn);
        socket.0.borrow_mut().write_room = 0;
        conn.queue(ws::encode_text_frame(&"x".repeat(1000)));
        conn.on_deadline(conn.deadline().unwrap(), &mut |_| {}); // the ping
        let mut no_pong = |r: Report<'_>| panic!("{r:?}: closed a client that reads");
        // The client reads some of the backlog: at the deadline, it gets
        // another timeout.
        socket.0.borrow_mut().write_room = 500;
        flush(&mut conn);
        let answer_by = conn.deadline().unwrap();
        conn.on_deadline(answer_by, &mut no_pong);
        let later = conn.deadline().unwrap();
        assert!(later >= answer_by + TIMEOUTS.ping_timeout);
        // It reads the rest, ping included, and more queued after it: it
        // gets one timeout from the period the ping went out in...
        socket.0.borrow_mut().write_room = usize::MAX;
        flush(&mut conn);
        conn.queue(ws::encode_text_frame("after the ping"));
        flush(&mut conn);
        conn.on_deadline(later, &mut no_pong);
        // ...but bytes after the ping do not stand in for its pong.
        conn.queue(ws::encode_text_frame("more"));
        flush(&mut conn);
        let mut seen = Vec::new();
        conn.on_deadline(conn.deadline().unwrap(), &mut |r| {
            seen.push(format!("{r:?}"))
        });
        assert_eq!(seen, ["Closing", "CloseSent(1011)"], "no pong: 1011");
        // And a client that reads nothing at all is closed at the first deadline.
        let (socket, mut conn) = upgraded_with_room();
        flush(&mut conn);
        socket.0.borrow_mut().write_room = 0;
        conn.queue(ws::encode_text_frame(&"x".repeat(1000)));
        conn.on_deadline(conn.deadline().unwrap(), &mut |_| {});
        flush(&mut conn);
        let mut seen = Vec::new();
        conn.on_deadline(conn.deadline().unwrap(), &mut |r| {
            seen.push(format!("{r:?}"))
        });
        assert_eq!(seen, ["Closing", "CloseSent(1011)"]);
    }

    #[test]
    fn an_answered_ping_is_followed_by_another_ping_not_a_close() {
        let (socket, mut conn) = upgraded_with_room();
        let ping_at = conn.deadline().unwrap();
        conn.on_deadline(ping_at, &mut |_| {}); // the ping
        let answer_by = conn.deadline().unwrap();
        socket
            .0
            .borrow_mut()
            .incoming
            .push_back(Some(vec![0x8a, 0x80, 0, 0, 0, 0])); // its pong
        let heard_at = Instant::now();
        ready(&mut conn, true);
        let next = conn.deadline().unwrap();
        assert!(
            next >= heard_at + TIMEOUTS.ping_interval.unwrap(),
            "a full interval from the pong"
        );
        // At the old answer deadline, the connection pings again: no close.
        flush(&mut conn);
        let before = sent(&socket).len();
        conn.on_deadline(answer_by.max(next), &mut |r| {
            panic!("{r:?}: closed although it answered")
        });
        assert!(conn.takes_messages());
        flush(&mut conn);
        assert_eq!(&sent(&socket)[before..], [0x89, 0x00]);
    }
    #[test]
    fn cut_off_never_drops_the_http_responses_and_the_101_before_it() {
        // Found by fuzzing: a client pipelines requests without reading,
        // then upgrades; a cut-off must not drop the unsent responses or the
        // 101, or the client would read a close frame as HTTP.
        let socket = MockSocket::default();
        let mut input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".repeat(3);
        input.extend_from_slice(UPGRADE);
        socket.0.borrow_mut().incoming.push_back(Some(input));
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        assert!(ready(&mut conn, true).contains(&OPENED.to_string()));
        conn.queue(ws::encode_text_frame("never sent"));
        flush(&mut conn); // the socket takes nothing yet
        conn.cut_off(&mut |_| {});
        socket.0.borrow_mut().write_room = usize::MAX;
        flush(&mut conn);
        let received = String::from_utf8_lossy(&sent(&socket)).into_owned();
        assert_eq!(received.matches("HTTP/1.1 200 OK").count(), 3, "{received}");
        let switch = received.find("HTTP/1.1 101").expect("the 101 was dropped");
        let after = &sent(&socket)[switch..];
        let head_end = after.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            after[head_end], 0x88,
            "the close frame follows the 101 directly"
        );
        assert!(!received.contains("never sent"));
    }

    #[test]
    fn cut_off_keeps_a_partly_written_frame_and_ends_with_1008() {
        let socket = MockSocket::default();
        socket
            .0
            .borrow_mut()
            .incoming
            .push_back(Some(UPGRADE.to_vec()));
        let mut conn = Connection::new(ConnId(1), socket.clone(), Arc::new(TIMEOUTS));
        ready(&mut conn, true);
        socket.0.borrow_mut().write_room = usize::MAX;
        flush(&mut conn); // the 101
        let frame = ws::encode_text_frame("0123456789");
        conn.queue(frame.clone());
        conn.queue(frame.clone());
        socket.0.borrow_mut().write_room = 5;
        flush(&mut conn);
        let mut seen = Vec::new();
        conn.cut_off(&mut |r| seen.push(format!("{r:?}")));
        assert_eq!(seen, ["Closing", "CloseSent(1008)"]);
        assert!(!conn.takes_messages());
        socket.0.borrow_mut().write_room = usize::MAX;
        flush(&mut conn);
        let received = socket.0.borrow().received.clone();
        let after_101 =
            &received[received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            &after_101[..frame.len()],
            &frame[..],
            "the started frame is finished"
        );
        let close = &after_101[frame.len()..];
        assert_eq!(
            close[..4],
            [0x88, 2 + CUT_OFF_REASON.len() as u8, 0x03, 0xf0]
        ); // 1008
        assert_eq!(&close[4..], CUT_OFF_REASON.as_bytes());
    }
}
