//! A connection's output queue: the one place that holds unsent bytes.
//!
//! Everything a connection sends goes through here, in order: HTTP responses,
//! the 101, broadcast frames (shared [`Bytes`], encoded once for all
//! recipients), and the pongs and close frames tungstenite writes. The server
//! [`flush`](OutputQueue::flush)es the queue once per loop turn until it is
//! empty or the socket says `WouldBlock`; what is left waits for a WRITABLE
//! event. Because this queue is the only buffer, its length is the one number
//! the backpressure cap has to watch.
//!
//! **Corked writes.** A flush copies the queued frames into one contiguous
//! buffer, the cork, and hands it to the kernel with one `send`, as
//! uWebSockets does, instead of pointing `writev` at each frame where it
//! lies. The frames are small (a chat line's is about 100 bytes), and the
//! kernel pays for every piece of an iovec it copies from; one copy here
//! into a buffer that stays in the cache is cheaper. Measured
//! (`cargo bench`, 1,000 rooms of 10, ten lines in flight a sender, about
//! ten frames a write): 1.30 µs of server CPU a delivery against 1.48 with
//! `writev` (`docs/performance.md`). The cork is one buffer per thread (the
//! loop's), lent to each flush in turn: it costs nothing per connection. A
//! lone chunk, or one as large as the cork, is sent from where it lies.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write};

use tungstenite::Bytes;

/// The most bytes one corked `send` carries: a turn's frames for one
/// client many times over, and small enough to stay in the cache.
const CORK_BYTES: usize = 64 * 1024;

thread_local! {
    /// The cork (see the module docs). A flush never runs inside another,
    /// so the borrow is never contended.
    static CORK: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(CORK_BYTES));
}

/// Bytes waiting to be written to one socket, oldest first.
#[derive(Debug, Default)]
pub struct OutputQueue {
    /// The chunks, each a whole HTTP response part or WebSocket frame.
    chunks: VecDeque<Bytes>,
    /// How much of the front chunk the socket has already taken. A partial
    /// write keeps its place here; nothing is ever sent twice.
    front_offset: usize,
    /// Unsent bytes in total (what the backpressure cap is compared with).
    pending: usize,
    /// How many chunks at the front must go out whatever happens: HTTP
    /// responses and the 101, which come before any frame. Dropping one
    /// would leave the client parsing frames as HTTP.
    protected: usize,
}

impl OutputQueue {
    /// An empty queue.
    pub fn new() -> Self {
        OutputQueue::default()
    }

    /// Appends shared bytes (a broadcast frame, the page body) without copying.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.pending += chunk.len();
            self.chunks.push_back(chunk);
        }
    }
    /// Appends a chunk that [`drop_unstarted`](Self::drop_unstarted) must
    /// keep: part of an HTTP response. Only before any unprotected chunk.
    pub fn push_protected(&mut self, chunk: Bytes) {
        debug_assert_eq!(
            self.protected,
            self.chunks.len(),
            "protected chunks come first"
        );
        if !chunk.is_empty() {
            self.protected += 1;
            self.push(chunk);
        }
    }

    /// Unsent bytes in total.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether everything queued has been written.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }
    /// Drops every chunk the socket has not started on, except protected
    /// ones (HTTP responses). A chunk already partly written is kept too:
    /// dropping its tail would corrupt the byte stream, and the next frame
    /// would be read as the rest of it.
    pub fn drop_unstarted(&mut self) {
        let keep = self.protected.max(usize::from(self.front_offset > 0));
        self.chunks.truncate(keep);
        self.pending = self.chunks.iter().map(Bytes::len).sum::<usize>() - self.front_offset;
    }

    /// Writes as much as `sink` takes, until the queue is empty or the sink
    /// would block. `Ok` means "no error", not "all written": check
    /// [`is_empty`](Self::is_empty). Returns the number of bytes written.
    pub fn flush(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        CORK.with_borrow_mut(|cork| self.flush_through(cork, sink))
    }

    /// [`flush`](Self::flush), gathering small chunks in `cork`.
    fn flush_through(&mut self, cork: &mut Vec<u8>, sink: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        while let Some(front) = self.chunks.front() {
            let front = &front[self.front_offset..];
            let result = if self.chunks.len() == 1 || front.len() >= CORK_BYTES {
                sink.write(front)
            } else {
                // What the socket does not take stays queued as it was:
                // the cork is refilled from the queue on every call.
                cork.clear();
                cork.extend_from_slice(front);
                for chunk in self.chunks.iter().skip(1) {
                    if cork.len() + chunk.len() > CORK_BYTES {
                        break;
                    }
                    cork.extend_from_slice(chunk);
                }
                sink.write(cork)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            // An idle connection keeps no ring. Not even a small one: a
            // ring made in a storm of joins, kept, sits among the storm's
            // freed frames and keeps their heap page from going back to
            // the system (one page a connection: see `memory.rs`). The
            // next frame makes a new one (a small allocation, from the
            // allocator's per-thread cache).
            self.chunks = VecDeque::new();
        }
        Ok(written)
    }

    /// Marks `n` bytes from the front as written.
    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left_in_front = front.len() - self.front_offset;
            if n < left_in_front {
                self.front_offset += n;
                return;
            }
            n -= left_in_front;
            self.chunks.pop_front();
            self.front_offset = 0;
            self.protected = self.protected.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `budget` bytes, then says WouldBlock.
    struct Trickle {
        taken: Vec<u8>,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.taken.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn queue_of(parts: &[&'static [u8]]) -> OutputQueue {
        let mut q = OutputQueue::new();
        for p in parts {
            q.push(Bytes::from_static(p));
        }
        q
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_never_resend() {
        // Several chunks: each flush goes through the cork, which the sink
        // takes only part of.
        let mut q = queue_of(&[b"hello ", b"", b"wide ", b"world"]);
        assert_eq!(q.pending(), 16);
        let mut sink = Trickle {
            taken: Vec::new(),
            budget: 4,
        };
        assert_eq!(q.flush(&mut sink).unwrap(), 4);
        assert_eq!(q.pending(), 12);
        sink.budget = 5;
        q.flush(&mut sink).unwrap();
        sink.budget = 100;
        q.flush(&mut sink).unwrap();
        assert_eq!(sink.taken, b"hello wide world");
        assert!(q.is_empty());
    }

    /// Records each write call's bytes; takes everything.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn small_chunks_go_out_corked_in_one_write() {
        let mut q = OutputQueue::new();
        for _ in 0..1000 {
            q.push(Bytes::from_static(b"a frame"));
        }
        let mut sink = Calls::default();
        q.flush(&mut sink).unwrap();
        assert_eq!(sink.0.len(), 1, "1,000 small frames in one write");
        assert_eq!(sink.0[0], b"a frame".repeat(1000));
        assert!(q.is_empty());
    }

    #[test]
    fn the_cork_holds_at_most_its_size_and_a_large_chunk_goes_alone() {
        let big = Bytes::from(vec![b'b'; CORK_BYTES]);
        let half = Bytes::from(vec![b'h'; CORK_BYTES / 2 + 1]);
        let mut q = OutputQueue::new();
        q.push(Bytes::from_static(b"head"));
        q.push(big.clone());
        q.push(half.clone());
        q.push(half.clone());
        q.push(Bytes::from_static(b"tail"));
        let mut sink = Calls::default();
        q.flush(&mut sink).unwrap();
        let lengths: Vec<usize> = sink.0.iter().map(Vec::len).collect();
        assert_eq!(
            lengths,
            [4, CORK_BYTES, half.len(), half.len() + 4],
            "head alone (big does not fit with it); big from where it lies; \
             two halves do not fit together; the last half and the tail do"
        );
        assert_eq!(sink.0.concat().len(), 4 + big.len() + 2 * half.len() + 4);
    }

    #[test]
    fn drop_unstarted_keeps_a_partly_written_chunk_whole() {
        let mut q = queue_of(&[b"frame-one", b"frame-two"]);
        let mut sink = Trickle {
            taken: Vec::new(),
            budget: 3,
        };
        q.flush(&mut sink).unwrap();
        q.drop_unstarted();
        assert_eq!(q.pending(), 6);
        q.push(Bytes::from_static(b"close"));
        sink.budget = 100;
        q.flush(&mut sink).unwrap();
        assert_eq!(sink.taken, b"frame-oneclose");
    }
    #[test]
    fn drop_unstarted_keeps_http_responses_even_unstarted() {
        let mut q = OutputQueue::new();
        q.push_protected(Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"));
        q.push_protected(Bytes::from_static(b"HTTP/1.1 101 Switching\r\n\r\n"));
        q.push(Bytes::from_static(b"frame"));
        q.drop_unstarted();
        q.push(Bytes::from_static(b"close"));
        let mut sink = Vec::new();
        q.flush(&mut sink).unwrap();
        assert_eq!(
            sink,
            b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 101 Switching\r\n\r\nclose"
        );
        // Once sent, they are no longer protected: the next drop takes all.
        q.push(Bytes::from_static(b"late frame"));
        q.drop_unstarted();
        assert!(q.is_empty());
    }

    #[test]
    fn drop_unstarted_empties_a_queue_with_nothing_in_flight() {
        let mut q = queue_of(&[b"a", b"b"]);
        q.drop_unstarted();
        assert!(q.is_empty());
    }

    #[test]
    fn a_sink_that_takes_nothing_is_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = queue_of(&[b"x"]);
        assert_eq!(
            q.flush(&mut Closed).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
    }

    #[test]
    fn an_emptied_queue_gives_back_the_room_a_burst_took() {
        let mut queue = OutputQueue::new();
        for _ in 0..1000 {
            queue.push(Bytes::from_static(b"a join notice"));
        }
        assert!(queue.chunks.capacity() >= 1000);
        let mut sink = Vec::new();
        queue.flush(&mut sink).unwrap();
        assert!(queue.is_empty());
        assert_eq!(queue.chunks.capacity(), 0, "an idle queue keeps no ring");
        assert_eq!(sink.len(), 1000 * 13);
    }
}
