//! One server connection (`eddy::connection::Connection`) fed arbitrary
//! bytes by a mock socket, driven the way the server drives it.
//!
//! The input is an 8-byte header, then the bytes the client sends:
//!
//! | byte | meaning                                                                  |
//! |------|--------------------------------------------------------------------------|
//! | 0    | bits 0-1: after the bytes, EOF (0, 3), a reset (1), or silence (2);      |
//! |      | bits 2-4: max message 16 << n bytes; bits 5-6: read buffer 64 << n;      |
//! |      | bit 7 with bits 0-1 = 3: the server refuses the connection (503)         |
//! | 1    | the handler closes the connection (1008) after this many messages; 0: never |
//! | 2-4  | sizes of the chunks the socket delivers, in turn (0: all the rest);      |
//! |      | each chunk is followed by a `WouldBlock` and a new readiness event       |
//! | 5-6  | bytes the socket accepts per flush, in turn (0: `WouldBlock`, 255: all, |
//! |      | else 4 × n)                                                              |
//! | 7    | bit k: the connection's timer fires at the k-th (mod 8) chunk boundary   |
//!
//! The handler echoes every message and greets on open; the output cap is
//! the smallest the configuration allows (8 messages), enforced as the
//! server does. When the input is spent, the socket takes everything and
//! the connection's timers fire until it is done.
//!
//! Checks: no panic (debug assertions on, Eddy's and tungstenite's); reports
//! in order (`Opened` once and first, messages only while open, `Closing` at
//! most once and only after `Opened`) and `is_open()` agreeing with them;
//! every byte queued is written exactly once, never after FIN; the bytes
//! written are HTTP responses (nothing after one that closes), then, after a
//! 101, server frames, and nothing after a close frame; and the connection
//! always ends once its timers have fired.
#![no_main]

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use eddy::connection::{Connection, READ_BUDGET, Report, Settings, Socket, Step, Timeouts};
use eddy::handler::ConnId;
use eddy::http::{self, Site};
use eddy::templates::Assets;
use eddy::ws;
use libfuzzer_sys::fuzz_target;
use tungstenite::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

const HEADER: usize = 8;

/// Body of the page; no body the site sends starts with "HTTP/".
const PAGE: &[u8] = b"<!doctype html><p>chat</p>";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Eof,
    Reset,
    Silence,
}

/// The client side of the mock socket, shared with the driver.
struct Peer {
    input: Vec<u8>,
    pos: usize,
    chunk_sizes: [usize; 3],
    chunks_started: usize,
    /// Bytes left in the current chunk.
    left_in_chunk: usize,
    /// The `WouldBlock` after the current chunk has been returned: the
    /// next read starts a new chunk (a new readiness event).
    at_boundary: bool,
    end: End,
    /// A read has returned the EOF or the reset: no event comes after it.
    end_seen: bool,
    /// The reset has been seen by a read: writes fail from then on.
    reset_seen: bool,
    write_rooms: [usize; 2],
    flushes: usize,
    /// How much the socket still takes in this turn.
    room: usize,
    received: Vec<u8>,
    write_shut: bool,
}

impl Peer {
    /// Whether a readiness event would come now: the socket said
    /// `WouldBlock` and has something new (bytes, EOF or a reset) since.
    fn has_event(&self) -> bool {
        self.at_boundary
            && (self.pos < self.input.len() || (self.end != End::Silence && !self.end_seen))
    }
}

#[derive(Clone)]
struct MockSocket(Rc<RefCell<Peer>>);

impl Read for MockSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut peer = self.0.borrow_mut();
        if buf.is_empty() {
            return Ok(0);
        }
        if peer.left_in_chunk == 0 {
            if !peer.at_boundary {
                peer.at_boundary = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if peer.pos == peer.input.len() {
                peer.end_seen = peer.end != End::Silence;
                return match peer.end {
                    End::Eof => Ok(0),
                    End::Reset => {
                        peer.reset_seen = true;
                        Err(io::ErrorKind::ConnectionReset.into())
                    }
                    End::Silence => Err(io::ErrorKind::WouldBlock.into()),
                };
            }
            let size = peer.chunk_sizes[peer.chunks_started % 3];
            peer.chunks_started += 1;
            peer.left_in_chunk = size.min(peer.input.len() - peer.pos);
            peer.at_boundary = false;
        }
        let n = buf.len().min(peer.left_in_chunk);
        let start = peer.pos;
        buf[..n].copy_from_slice(&peer.input[start..start + n]);
        peer.pos += n;
        peer.left_in_chunk -= n;
        Ok(n)
    }
}

impl Write for MockSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut peer = self.0.borrow_mut();
        assert!(!peer.write_shut, "write after shutdown_write (FIN)");
        if peer.reset_seen {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if peer.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(peer.room);
        peer.room -= n;
        peer.received.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for MockSocket {
    fn shutdown_write(&mut self) -> io::Result<()> {
        let mut peer = self.0.borrow_mut();
        assert!(!peer.write_shut, "shutdown_write twice");
        peer.write_shut = true;
        Ok(())
    }
}

/// The handler's side: checks the reports' order and plays an echo room.
#[derive(Default)]
struct Handler {
    opened: bool,
    left: bool,
    messages: usize,
    close_after: usize,
    /// Frames to queue, as the server's outbox would deliver them.
    outbox: Vec<Bytes>,
    close_requested: bool,
}

impl Handler {
    fn report(&mut self, report: Report<'_>) {
        match report {
            Report::Opened(target) => {
                assert!(target.starts_with("/soc"), "opened at {target:?}");
                assert!(!self.opened, "Opened twice");
                self.opened = true;
                self.outbox.push(ws::encode_text_frame("welcome"));
            }
            Report::Message(text) => {
                assert!(self.opened && !self.left, "a message while not open");
                self.messages += 1;
                self.outbox.push(ws::encode_text_frame(text));
            }
            Report::Binary(data) => {
                assert!(self.opened && !self.left, "a binary message while not open");
                self.messages += 1;
                self.outbox.push(ws::encode_binary_frame(data));
            }
            Report::Closing => {
                assert!(self.opened, "Closing before Opened");
                assert!(!self.left, "Closing twice");
                self.left = true;
            }
            Report::CloseSent(code) => {
                // Ours, so after the handler heard of the closing.
                assert!(self.left, "close frame {code} before Closing");
                assert!((1000..5000).contains(&code), "close code {code}");
            }
        }
        if self.close_after != 0 && self.messages == self.close_after {
            self.close_requested = true;
        }
    }
}

struct Driver {
    conn: Connection<MockSocket>,
    peer: Rc<RefCell<Peer>>,
    handler: Handler,
    settings: Settings,
    max_pending: usize,
}

impl Driver {
    fn check_open(&self) {
        assert_eq!(
            self.conn.takes_messages(),
            self.handler.opened && !self.handler.left,
            "is_open() disagrees with the reports"
        );
    }

    /// The server's `deliver`: queue the handler's frames on open connections.
    fn deliver(&mut self) {
        for frame in std::mem::take(&mut self.handler.outbox) {
            if self.conn.takes_messages() {
                self.conn.queue(frame);
            }
        }
        if std::mem::take(&mut self.handler.close_requested) && self.conn.takes_messages() {
            let handler = &mut self.handler;
            self.conn
                .close(CloseCode::Policy, "flood", &mut |r| handler.report(r));
            self.handler.outbox.clear();
        }
        self.check_open();
    }

    /// The server's `on_connection_ready`: read until `Stop`, one budget.
    fn ready(&mut self, readable: bool) {
        let mut budget = READ_BUDGET;
        let mut readable = readable;
        let mut steps = 0;
        loop {
            if self.conn.is_closed() {
                return;
            }
            let handler = &mut self.handler;
            let mut step = self
                .conn
                .on_ready(readable, &mut budget, &self.settings, &mut |r| {
                    handler.report(r)
                });
            if step == Step::Upgrade {
                // A handler that refuses targets with a `!` in them, as
                // the chat refuses a malformed query.
                let target = self.conn.upgrade_target().expect("a target to admit");
                let verdict = if target.contains('!') {
                    Err(http::refused_upgrade(SystemTime::UNIX_EPOCH, 400, "refused"))
                } else {
                    Ok(())
                };
                step = self
                    .conn
                    .upgrade(verdict, &self.settings, &mut budget, &mut |r| {
                        handler.report(r)
                    });
            }
            if step == Step::Ask {
                let (_, asked) = self.conn.probe().expect("a probe to answer");
                let response = http::probe_response(&asked, 200, "probe", "text/plain", "ok\n".into());
                step = self.conn.answer(response, &mut budget);
            }
            assert!(budget <= READ_BUDGET);
            self.deliver();
            if step == Step::Stop {
                return;
            }
            readable = false;
            steps += 1;
            assert!(steps < 1_000_000, "on_ready keeps saying Continue");
        }
    }

    /// One flush, checking that exactly what left the queue reached the socket.
    fn flush(&mut self) {
        let pending = self.conn.pending();
        let written = self.peer.borrow().received.len();
        let handler = &mut self.handler;
        let flushed = self.conn.flush(&mut |r| handler.report(r));
        let now_pending = self.conn.pending();
        let now_written = self.peer.borrow().received.len();
        assert_eq!(flushed, now_written - written, "flush says what it wrote");
        assert_eq!(
            pending - now_pending,
            now_written - written,
            "bytes written differ from bytes taken off the queue"
        );
        self.check_open();
    }

    /// The server's `settle`: flush, enforce the output cap.
    fn settle(&mut self) {
        {
            let mut peer = self.peer.borrow_mut();
            let i = peer.flushes;
            peer.flushes += 1;
            peer.room = peer.write_rooms[i % 2];
        }
        self.flush();
        if self.conn.takes_messages() && self.conn.pending() > self.max_pending {
            let handler = &mut self.handler;
            self.conn.cut_off(&mut |r| handler.report(r));
            assert!(!self.conn.takes_messages());
            self.flush();
        }
    }

    /// The connection's timer fires at its deadline (or at `at`, if later).
    fn fire(&mut self, at: Instant) -> Instant {
        let deadline = self
            .conn
            .deadline()
            .expect("a connection that is not done has a deadline");
        let now = deadline.max(at);
        let handler = &mut self.handler;
        self.conn.on_deadline(now, &mut |r| handler.report(r));
        self.deliver();
        now
    }
}

/// Checks the bytes the client received: HTTP responses, then (after a
/// 101) unmasked server frames. A truncated tail is allowed: a connection
/// dropped on an error or deadline leaves its queue unsent.
fn check_output(out: &[u8], opened: bool) {
    let mut i = 0;
    let mut upgraded = false;
    while i < out.len() {
        let rest = &out[i..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(
                b"HTTP/1.1 ".starts_with(&rest[..rest.len().min(9)])
                    || rest.starts_with(b"HTTP/1.1 "),
                "not a response: {:?}",
                String::from_utf8_lossy(rest)
            );
            return;
        };
        let head = std::str::from_utf8(&rest[..end + 4]).expect("an ASCII head");
        assert!(head.starts_with("HTTP/1.1 "), "not a response: {head:?}");
        let status: u16 = head[9..12].parse().expect("a status");
        i += end + 4;
        if status == 101 {
            assert!(opened, "a 101 went out but Opened was never reported");
            upgraded = true;
            break;
        }
        let field = |name: &str| {
            head.split("\r\n")
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        };
        let length: usize = field("Content-Length")
            .expect("Content-Length")
            .parse()
            .expect("a length");
        let close = field("Connection") == Some("close");
        // A HEAD response has no body: the next response follows at once.
        let rest = &out[i..];
        let no_body = rest.starts_with(b"HTTP/") || rest.is_empty();
        if !no_body {
            i += length.min(rest.len());
        }
        if close {
            assert_eq!(
                i,
                out.len(),
                "bytes after a response that closes: {:?}",
                String::from_utf8_lossy(&out[i..])
            );
        }
    }
    if !upgraded {
        return;
    }
    let mut closed = false;
    while i < out.len() {
        assert!(!closed, "a frame after the close frame: {:?}", &out[i..]);
        let rest = &out[i..];
        if rest.len() < 2 {
            return;
        }
        let (b0, b1) = (rest[0], rest[1]);
        assert_eq!(b0 & 0x80, 0x80, "server frames are final: {b0:#x}");
        assert_eq!(b0 & 0x70, 0, "no reserved bits: {b0:#x}");
        let opcode = b0 & 0x0f;
        assert!(
            matches!(opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xa),
            "opcode {opcode:#x}"
        );
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, header) = match b1 & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let len = u64::from_be_bytes(rest[2..10].try_into().unwrap());
                (usize::try_from(len).expect("a sane length"), 10)
            }
            126 | 127 => return,
            n => (n as usize, 2),
        };
        if opcode >= 0x8 {
            assert!(len <= 125, "control frame of {len} bytes");
        }
        let Some(payload) = rest.get(header..header + len) else {
            return; // truncated
        };
        match opcode {
            0x1 => {
                std::str::from_utf8(payload).expect("text frames are UTF-8");
            }
            0x8 => {
                closed = true;
                assert!(payload.len() != 1, "a close payload of one byte");
                if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(
                        matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999),
                        "close code {code}"
                    );
                    std::str::from_utf8(&payload[2..]).expect("a UTF-8 close reason");
                }
            }
            _ => {}
        }
        i += header + len;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (h, input) = data.split_at(HEADER);
    let end = match h[0] & 3 {
        1 => End::Reset,
        2 => End::Silence,
        _ => End::Eof,
    };
    let refuse = h[0] & 0x83 == 0x83;
    let max_message = 16usize << ((h[0] >> 2) & 7);
    let read_buffer = 64usize << ((h[0] >> 5) & 3);
    let chunk = |b: u8| if b == 0 { usize::MAX } else { b as usize };
    let room = |b: u8| match b {
        255 => usize::MAX,
        b => 4 * b as usize,
    };
    let timeouts = std::sync::Arc::new(Timeouts {
        header: Duration::from_secs(10),
        keep_alive: Duration::from_secs(30),
        ping_interval: Some(Duration::from_secs(20)),
        ping_timeout: Duration::from_secs(20),
        close: Duration::from_secs(5),
    });
    let settings = Settings {
        site: Site {
            assets: Assets::from_files([
                ("index.html", Bytes::from_static(PAGE)),
                ("chat.js", Bytes::from_static(b"connect()")),
            ]),
            csp: Some("default-src 'self'".into()),
            allowed_origins: vec!["https://chat.example".into()],
            websocket_paths: vec!["/soc".into()],
            // The metrics listener's paths too, answered as the server does.
            probes: true,
        },
        websocket: ws::websocket_config(max_message, read_buffer),
        timeouts: std::sync::Arc::clone(&timeouts),
    };
    let peer = Rc::new(RefCell::new(Peer {
        input: input.to_vec(),
        pos: 0,
        chunk_sizes: [chunk(h[2]), chunk(h[3]), chunk(h[4])],
        chunks_started: 0,
        left_in_chunk: 0,
        at_boundary: true,
        end,
        end_seen: false,
        reset_seen: false,
        write_rooms: [room(h[5]), room(h[6])],
        flushes: 0,
        room: 0,
        received: Vec::new(),
        write_shut: false,
    }));
    let mut d = Driver {
        conn: Connection::new(ConnId(1), MockSocket(peer.clone()), std::sync::Arc::clone(&timeouts)),
        peer: peer.clone(),
        handler: Handler {
            close_after: h[1] as usize,
            ..Handler::default()
        },
        settings,
        max_pending: 8 * max_message,
    };
    if refuse {
        d.conn.refuse(eddy::http::service_unavailable(
            SystemTime::now(),
            "too many connections",
        ));
    }

    // Events, as the loop would deliver them: a readable event per chunk,
    // resumptions while reading is paused, a flush at the end of each turn.
    let mut readable = true;
    let mut turns = 0;
    while !d.conn.is_closed() {
        turns += 1;
        assert!(turns < 100_000, "the connection never settles");
        d.ready(readable);
        d.settle();
        if d.conn.is_closed() {
            break;
        }
        if d.conn.wants_resume() {
            readable = false;
            continue;
        }
        let boundary = {
            let p = peer.borrow();
            p.has_event().then_some(p.chunks_started)
        };
        let Some(boundary) = boundary else {
            break;
        };
        if h[7] & (1 << (boundary % 8)) != 0 {
            d.fire(Instant::now());
            d.settle();
        }
        readable = true;
    }

    // The client sends nothing more and reads everything: the timers end it.
    peer.borrow_mut().write_rooms = [usize::MAX; 2];
    let mut at = Instant::now() + Duration::from_secs(86_400);
    for _ in 0..8 {
        d.settle();
        if d.conn.is_closed() {
            break;
        }
        at = d.fire(at);
        d.settle();
        while d.conn.wants_resume() && !d.conn.is_closed() {
            d.ready(false);
            d.settle();
        }
    }
    assert!(
        d.conn.is_closed(),
        "still not done after every deadline passed"
    );

    // Done is final: nothing more is read or written.
    let written = peer.borrow().received.len();
    d.ready(true);
    d.flush();
    assert_eq!(peer.borrow().received.len(), written, "written after Done");
    d.check_open();
    assert!(!d.handler.opened || d.handler.left, "closed without Closing");

    let out = std::mem::take(&mut peer.borrow_mut().received);
    check_output(&out, d.handler.opened);
});
