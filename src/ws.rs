//! WebSocket framing: tungstenite over an I/O adapter, with Eddy's limits.
//!
//! tungstenite does the RFC 6455 work (frame parsing, unmasking, fragment
//! reassembly, UTF-8 checks, control frames). This module decides how it
//! meets the rest of Eddy:
//!
//! * [`Adapter`]: tungstenite *reads* straight from the socket, but its
//!   *writes* (pongs, close replies) land in the connection's
//!   [`OutputQueue`], so they never see `WouldBlock` and are flushed in order
//!   with everything else.
//! * [`websocket_config`]: explicit limits; tungstenite's defaults (a 128 KiB
//!   read buffer per connection, 64 MiB messages, 16 MiB frames, an unbounded
//!   write buffer) are never used.
//! * [`Codec`]: tungstenite's context, held only while a frame or a
//!   fragmented message is partly read. An idle connection holds none: the
//!   [`FrameBounds`] the adapter keeps say when the bytes read so far end
//!   exactly at a message's end, and then nothing in the context is worth
//!   keeping (it is 256 bytes, and its read buffer 1 KiB: more than
//!   an idle connection's whole memory otherwise).
//! * [`encode_text_frame`]: a broadcast is framed once, into shared bytes.
//! * [`close_for_error`]: which close code answers which error, for the
//!   errors tungstenite only reports (it queues no close frame for them).

use std::io::{self, Read, Write};

use tungstenite::error::{CapacityError, Error, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message};

use crate::connection::{Socket, read_within};
use crate::output::OutputQueue;

/// The most tungstenite may hold unwritten. It only ever writes control
/// frames here (at most 2 + 125 bytes each), and hands them to the adapter at
/// once, so this bound is never approached; it exists so that nothing inside
/// tungstenite is unbounded.
const MAX_TUNGSTENITE_WRITE_BUFFER: usize = 4096;

/// tungstenite's limits for one connection. `max_frame_size` equals the
/// message limit, so an oversized frame is refused from its header, before
/// its payload is read or buffered.
pub fn websocket_config(max_message_bytes: usize, read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        // 0: every frame tungstenite writes goes straight to the adapter.
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_TUNGSTENITE_WRITE_BUFFER)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .accept_unmasked_frames(false)
}

/// An open WebSocket's reading state while it has any: tungstenite's
/// context, and where the bytes it was given end.
pub struct Codec {
    /// tungstenite's frame parser, read buffer and message reassembly.
    pub context: WebSocketContext,
    /// Where the bytes read so far stand in the client's frames.
    pub bounds: FrameBounds,
}

impl Codec {
    /// A context that has already read `early` (the client's first frames,
    /// read with the request head; none for a connection that was idle).
    pub fn new(early: Vec<u8>, config: WebSocketConfig) -> Box<Codec> {
        let mut bounds = FrameBounds::default();
        bounds.feed(&early);
        Box::new(Codec {
            context: WebSocketContext::from_partially_read(early, Role::Server, Some(config)),
            bounds,
        })
    }

    /// Whether dropping the context now loses nothing: the bytes read end
    /// where a message (or a control frame) ends, so tungstenite holds no
    /// part of a frame or of a fragmented message. Valid after its `read`
    /// said `WouldBlock`: it then asked for more, having parsed everything
    /// whole it held, and had written any pong it owed.
    pub fn at_rest(&self) -> bool {
        self.bounds.at_rest()
    }
}

/// A client's frames as the adapter passes their bytes to tungstenite:
/// counted, not parsed (tungstenite checks them), just enough to know where
/// each frame ends and whether a fragmented message is under way.
#[derive(Debug, Default)]
pub struct FrameBounds {
    /// The current frame's header bytes so far (2 to 14 of them).
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN began a message its continuations finish.
    fragmented: bool,
}

impl FrameBounds {
    /// Counts `bytes`, the next ones of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let at = usize::from(self.header_len);
            self.header[at] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some(payload) = self.header_done() {
                let first = self.header[0];
                let (fin, opcode) = (first & 0x80 != 0, first & 0x0f);
                if opcode < 8 {
                    // Text, binary or continuation: a message ends at FIN.
                    // Control frames come whole, even mid-message.
                    self.fragmented = !fin;
                }
                self.payload_left = payload;
                self.header_len = 0;
            }
        }
    }

    /// The payload length, once the header is whole: 2 bytes, then 0, 2 or
    /// 8 of extended length, then 4 of mask if the mask bit is set. A
    /// header tungstenite will refuse is counted all the same: the
    /// connection closes before it matters.
    fn header_done(&self) -> Option<u64> {
        let have = usize::from(self.header_len);
        let second = *self.header.get(1).filter(|_| have >= 2)?;
        let (extended, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        if have < 2 + extended + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            self.header[2..2 + extended]
                .iter()
                .fold(0u64, |n, &b| n << 8 | u64::from(b))
        }))
    }

    /// Between frames, and not inside a fragmented message.
    pub fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.fragmented
    }
}

/// The stream tungstenite sees: reads from the socket, writes to the queue.
/// Built for the duration of one `read` call, from disjoint borrows of a
/// connection.
pub struct Adapter<'a, S> {
    /// The connection's socket, for reading.
    pub socket: &'a mut S,
    /// The connection's output queue, for writing.
    pub out: &'a mut OutputQueue,
    /// Bytes this connection may still read this turn. At 0 the adapter
    /// reports `WouldBlock` although the socket may hold more: tungstenite
    /// then returns to us mid-stream, its state intact, and we resume later.
    pub budget: &'a mut usize,
    /// Counts what passes, so that the connection knows when the context
    /// may go.
    pub bounds: &'a mut FrameBounds,
}

impl<S: Socket> Read for Adapter<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if *self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let want = buf.len().min(*self.budget);
            match read_within(self.socket, &mut buf[..want], self.budget) {
                Ok(n) => {
                    self.bounds.feed(&buf[..n]);
                    return Ok(n);
                }
                // Wire bytes that gave no plaintext yet (TLS): charged; on.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S> Write for Adapter<'_, S> {
    /// Takes everything: tungstenite's writes never block or fail.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    /// Nothing to do: the server flushes the queue to the socket once per turn.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Frames `text` as one final, unmasked text frame (the server-to-client
/// form), header and payload in one buffer that every recipient shares.
pub fn encode_text_frame(text: &str) -> Bytes {
    let frame = Frame::message(
        Bytes::copy_from_slice(text.as_bytes()),
        OpCode::Data(Data::Text),
        true,
    );
    encode(frame)
}

/// Frames `data` as one final binary frame, like [`encode_text_frame`].
pub fn encode_binary_frame(data: &[u8]) -> Bytes {
    let frame = Frame::message(
        Bytes::copy_from_slice(data),
        OpCode::Data(Data::Binary),
        true,
    );
    encode(frame)
}

/// Frames a ping for the heartbeat (empty: the answer is what counts).
pub fn encode_ping_frame() -> Bytes {
    encode(Frame::ping(Bytes::new()))
}

/// Frames a close with `code` and a short `reason` (the reason must fit a
/// control frame: at most 123 bytes).
pub fn encode_close_frame(code: CloseCode, reason: &'static str) -> Bytes {
    debug_assert!(reason.len() <= 123);
    encode(Frame::close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    })))
}

fn encode(frame: Frame) -> Bytes {
    let mut buf = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut buf);
    Bytes::from(buf)
}

/// The payload of a frame made by [`encode_text_frame`]. For tests and logs.
pub fn text_frame_payload(frame: &[u8]) -> &str {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame
        .get(header_len..)
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("")
}

/// What reading from tungstenite produced, for the connection's state machine.
#[derive(Debug)]
pub enum Incoming {
    /// A complete text message.
    Text(Utf8Bytes),
    /// A complete binary message (the handler decides what to do with it).
    Binary(Bytes),
    /// A control frame tungstenite handled itself (a ping, whose pong it
    /// queued, or a pong); keep reading.
    Control,
    /// The client's close frame; tungstenite queued the reply. Keep reading:
    /// the next read flushes the reply and reports `Closed`.
    CloseReceived,
    /// The closing handshake is complete on tungstenite's side.
    Closed,
    /// The socket has no more bytes for now.
    WouldBlock,
    /// The peer went away without a closing handshake, or the socket failed.
    /// Nothing can be sent any more.
    Gone(String),
    /// The client broke a rule. Send this close frame, then close.
    Fail(CloseCode, &'static str, String),
}

/// Classifies the result of one `WebSocketContext::read`. After `Fail` or
/// `Gone` the caller must not read through tungstenite again: a read after an
/// error can trip tungstenite's debug assertions.
pub fn classify(result: Result<Message, Error>) -> Incoming {
    match result {
        Ok(Message::Text(text)) => Incoming::Text(text),
        Ok(Message::Binary(data)) => Incoming::Binary(data),
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Incoming::Control,
        Ok(Message::Close(_)) => Incoming::CloseReceived,
        Err(Error::ConnectionClosed) => Incoming::Closed,
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Incoming::WouldBlock,
        Err(e) => close_for_error(e),
    }
}

/// The close code for an error tungstenite reported (RFC 6455 §7.4.1).
pub fn close_for_error(error: Error) -> Incoming {
    let detail = error.to_string();
    match error {
        Error::Utf8(_) => Incoming::Fail(CloseCode::Invalid, "invalid UTF-8", detail),
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            Incoming::Fail(CloseCode::Size, "message too big", detail)
        }
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) | Error::Io(_) => {
            Incoming::Gone(detail)
        }
        Error::Protocol(_) | Error::Capacity(_) => {
            Incoming::Fail(CloseCode::Protocol, "protocol error", detail)
        }
        // AlreadyClosed would be a bug in Eddy (reading after the end);
        // nothing else is reachable from a server-side read. Fail safe.
        _ => Incoming::Fail(CloseCode::Error, "internal error", detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that serves `input` in steps of at most `step` bytes, says
    /// WouldBlock when it runs dry (like a non-blocking socket), and records
    /// nothing: writes must go to the queue.
    struct MockSocket {
        input: Vec<u8>,
        pos: usize,
        step: usize,
        eof: bool,
    }

    impl Read for MockSocket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.input.len() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.step).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for MockSocket {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            unreachable!("tungstenite writes to the queue, never the socket")
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Socket for MockSocket {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A TLS peer sending records that decrypt to nothing, forever: every
    /// read takes 1,000 bytes off the wire and gives no plaintext.
    struct EmptyRecords {
        overhead: usize,
        reads: usize,
    }

    impl Read for EmptyRecords {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            self.overhead += 1000;
            Err(io::ErrorKind::Interrupted.into())
        }
    }

    impl Write for EmptyRecords {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Socket for EmptyRecords {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn take_overhead(&mut self) -> usize {
            std::mem::take(&mut self.overhead)
        }
    }

    #[test]
    fn wire_bytes_that_give_no_plaintext_spend_the_read_budget() {
        let mut socket = EmptyRecords {
            overhead: 0,
            reads: 0,
        };
        let mut out = OutputQueue::new();
        let mut budget = 64 * 1024;
        let mut bounds = FrameBounds::default();
        let mut ctx = WebSocketContext::new(Role::Server, Some(websocket_config(1024, 1024)));
        let mut io = Adapter {
            socket: &mut socket,
            out: &mut out,
            budget: &mut budget,
            bounds: &mut bounds,
        };
        assert!(matches!(classify(ctx.read(&mut io)), Incoming::WouldBlock));
        assert_eq!(budget, 0, "the budget is spent, not read around");
        assert_eq!(socket.reads, 66, "64 KiB of empty records, then a pause");
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![0x80 | opcode];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn read_all(input: Vec<u8>, step: usize) -> (Vec<String>, OutputQueue) {
        let mut socket = MockSocket {
            input,
            pos: 0,
            step,
            eof: false,
        };
        let mut out = OutputQueue::new();
        let mut ctx = WebSocketContext::new(Role::Server, Some(websocket_config(1024, 64)));
        let mut seen = Vec::new();
        let mut budget = usize::MAX;
        let mut bounds = FrameBounds::default();
        loop {
            let mut io = Adapter {
                socket: &mut socket,
                out: &mut out,
                budget: &mut budget,
                bounds: &mut bounds,
            };
            match classify(ctx.read(&mut io)) {
                Incoming::Text(t) => seen.push(format!("text:{}", t.as_str())),
                Incoming::Binary(b) => seen.push(format!("binary:{b:?}")),
                Incoming::Control => seen.push("control".into()),
                Incoming::WouldBlock => break,
                other => {
                    seen.push(format!("{other:?}"));
                    break;
                }
            }
        }
        (seen, out)
    }

    #[test]
    fn frames_split_across_would_block_reads_are_reassembled() {
        let mut input = masked(0x1, b"hello");
        input.extend(masked(0x9, b"p"));
        input.extend(masked(0x1, b"world"));
        // One byte per read: every frame is interrupted by WouldBlock-free
        // short reads; the final WouldBlock ends the burst.
        let (seen, mut out) = read_all(input, 1);
        assert_eq!(seen, ["text:hello", "control", "text:world"]);
        // The pong went to the queue, not the socket.
        let mut sent = Vec::new();
        out.flush(&mut sent).unwrap();
        assert_eq!(sent, [0x8a, 0x01, b'p']);
    }

    #[test]
    fn frame_bounds_find_each_message_end_however_the_bytes_arrive() {
        let mut frame_16 = vec![0x82, 0x80 | 126, 0x01, 0x00, 0, 0, 0, 0];
        frame_16.extend(vec![7u8; 256]);
        let mut frame_64 = vec![0x82, 0x80 | 127];
        frame_64.extend(70_000u64.to_be_bytes());
        frame_64.extend([0, 0, 0, 0]);
        frame_64.extend(vec![7u8; 70_000]);
        let mut first_fragment = masked(0x1, b"ab");
        first_fragment[0] &= 0x7f; // no FIN
        let mut last_fragment = masked(0x0, b"cd");
        last_fragment[0] |= 0x80;
        // (bytes, whether a message has ended after them)
        let stream: Vec<(Vec<u8>, bool)> = vec![
            (masked(0x1, b"hello"), true),
            (masked(0x1, b""), true),
            (frame_16, true),
            (frame_64, true),
            (first_fragment, false),
            (masked(0x9, b"ping"), false),
            (last_fragment, true),
        ];
        for step in [1, 3, 7, 4096, usize::MAX] {
            let mut bounds = FrameBounds::default();
            assert!(bounds.at_rest());
            for (bytes, ends) in &stream {
                for chunk in bytes.chunks(step.min(bytes.len()).max(1)) {
                    bounds.feed(chunk);
                    let whole = std::ptr::eq(chunk.as_ptr_range().end, bytes.as_ptr_range().end);
                    if !whole {
                        assert!(!bounds.at_rest(), "mid-frame, step {step}");
                    }
                }
                assert_eq!(bounds.at_rest(), *ends, "step {step}");
            }
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        // Header only: 127 = 64-bit length, claiming 10 MB; no payload sent.
        let mut input = vec![0x81, 0xff];
        input.extend(10_000_000u64.to_be_bytes());
        input.extend([1, 2, 3, 4]);
        let (seen, _) = read_all(input, 4096);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("Fail(Size"), "{seen:?}");
    }

    #[test]
    fn errors_map_to_rfc_close_codes() {
        let unmasked = vec![0x81, 0x01, b'x'];
        assert!(read_all(unmasked, 64).0[0].starts_with("Fail(Protocol"));
        let binary = masked(0x2, b"\x00");
        assert_eq!(read_all(binary, 64).0[0], "binary:b\"\\0\"");
        let bad_utf8 = masked(0x1, b"\xff\xfe");
        assert!(read_all(bad_utf8, 64).0[0].starts_with("Fail(Invalid"));
        let reserved_bits = {
            let mut f = masked(0x1, b"x");
            f[0] |= 0x40;
            f
        };
        assert!(read_all(reserved_bits, 64).0[0].starts_with("Fail(Protocol"));
    }

    #[test]
    fn encoded_frames_round_trip() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let text = "x".repeat(len);
            let frame = encode_text_frame(&text);
            assert_eq!(frame[0], 0x81);
            assert_eq!(text_frame_payload(&frame), text);
        }
        let close = encode_close_frame(CloseCode::Away, "bye");
        assert_eq!(&close[..], [0x88, 0x05, 0x03, 0xe9, b'b', b'y', b'e']);
    }
}
