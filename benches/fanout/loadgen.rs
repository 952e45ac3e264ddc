//! The load generator: N WebSocket clients on a few threads, each thread a
//! small mio loop of its own (so the generator is a peer of the server in
//! design, and cheap per client).
//!
//! A run has two phases. **Connect**: every client opens, upgrades, and the
//! run waits until every welcome and every join line has arrived (with the
//! seed's protocol that is N(N−1)/2 join lines). **Send**: S of the clients
//! send M lines each, of 64 bytes, carrying the sender, a sequence number
//! and the time of sending; every client checks each line it receives
//! (per sender, in order, none missing) and records its latency.
//!
//! Closed loop: a sender sends its next line when its previous one has come
//! back to it. Open loop (`rate`): the senders together send `rate` lines a
//! second on a fixed schedule, whatever comes back.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Bytes of every chat line sent.
pub const LINE_BYTES: usize = 64;

/// How many handshakes a thread keeps in flight at once (the listen backlog
/// is finite; a storm of SYNs would only measure retransmission timers).
const HANDSHAKES_IN_FLIGHT: usize = 128;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub clients: usize,
    pub senders: usize,
    pub lines_per_sender: usize,
    /// Open loop at this many lines a second (all senders together);
    /// `None`: closed loop.
    pub rate: Option<f64>,
    /// Join lines to wait for before sending (N(N−1)/2 when every join is
    /// announced, 0 when none is).
    pub joins_expected: u64,
    pub threads: usize,
    /// Client sockets are bound to 127.0.0.1 … 127.0.0.<source_addrs>
    /// before connecting, so that ports do not run short.
    pub source_addrs: u8,
    /// When to give up on a phase.
    pub connect_limit: Duration,
    pub send_limit: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Time for every client to connect and hear every join; `None` if the
    /// connect phase ran out of time.
    pub connect: Option<Duration>,
    /// Time from the first line sent to the last delivery (or the limit).
    pub send: Duration,
    pub deliveries: u64,
    pub expected: u64,
    pub out_of_order: u64,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Whether the send phase ran out of time.
    pub send_timed_out: bool,
    /// Clients that failed to connect or were closed by the server.
    pub failed_clients: u64,
    /// The load generator's own CPU time during each phase.
    pub connect_cpu: Duration,
    pub send_cpu: Duration,
    /// What `between` returned (between the phases, every client
    /// connected) and what `after` returned (after the send phase, every
    /// client still connected): the server's memory, for the bench.
    pub idle_probe: Option<u64>,
    pub after_probe: Option<u64>,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.deliveries)
    }

    pub fn deliveries_per_second(&self) -> f64 {
        self.deliveries as f64 / self.send.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0.0..=1.0), in microseconds.
    pub fn latency_us(&self, q: f64) -> Option<u32> {
        let n = self.latencies_us.len();
        (n > 0).then(|| self.latencies_us[((n - 1) as f64 * q).round() as usize])
    }
}

/// State shared by the client threads and the coordinator.
struct Shared {
    plan: Plan,
    base: Instant,
    welcomed: AtomicU64,
    joins: AtomicU64,
    failed: AtomicU64,
    connected_at: OnceLock<Instant>,
    /// Set by the coordinator: the send phase has begun.
    sending: AtomicBool,
    send_started: OnceLock<Instant>,
    deliveries: AtomicU64,
    delivered_at: OnceLock<Instant>,
    /// Set by the coordinator: stop, whatever the state.
    stop: AtomicBool,
    latencies: Mutex<Vec<u32>>,
    out_of_order: AtomicU64,
}

impl Shared {
    fn connect_done(&self) -> bool {
        self.welcomed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
            >= self.plan.clients as u64
            && self.joins.load(Ordering::Relaxed) >= self.plan.joins_expected
    }

    fn expected(&self) -> u64 {
        let alive = self.plan.clients as u64 - self.failed.load(Ordering::Relaxed);
        alive * (self.plan.senders * self.plan.lines_per_sender) as u64
    }
}

/// Runs `plan`; `between` is called once the clients are all connected,
/// `after` once the lines are all delivered, before the clients hang up
/// (the server's memory is read there), and their answers kept.
pub fn run(plan: Plan, between: impl FnOnce() -> u64, after: impl FnOnce() -> u64) -> Outcome {
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        base: Instant::now(),
        welcomed: AtomicU64::new(0),
        joins: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        connected_at: OnceLock::new(),
        sending: AtomicBool::new(false),
        send_started: OnceLock::new(),
        deliveries: AtomicU64::new(0),
        delivered_at: OnceLock::new(),
        stop: AtomicBool::new(false),
        latencies: Mutex::new(Vec::new()),
        out_of_order: AtomicU64::new(0),
    });
    let cpu_start = own_cpu();
    let threads: Vec<_> = (0..plan.threads)
        .map(|t| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || ClientLoop::new(shared, t).run())
        })
        .collect();

    let mut outcome = Outcome::default();
    let connect_deadline = shared.base + plan.connect_limit;
    while shared.connected_at.get().is_none() && Instant::now() < connect_deadline {
        thread::sleep(Duration::from_millis(2));
    }
    outcome.connect_cpu = own_cpu().saturating_sub(cpu_start);
    outcome.connect = shared.connected_at.get().map(|at| *at - shared.base);
    if outcome.connect.is_some() {
        outcome.idle_probe = Some(between());
        let cpu_send = own_cpu();
        let started = Instant::now();
        let _ = shared.send_started.set(started);
        shared.sending.store(true, Ordering::SeqCst);
        let deadline = started + plan.send_limit;
        while shared.delivered_at.get().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        outcome.send_timed_out = shared.delivered_at.get().is_none();
        let ended = shared
            .delivered_at
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        outcome.send = ended - started;
        outcome.send_cpu = own_cpu().saturating_sub(cpu_send);
        outcome.after_probe = Some(after());
    }
    shared.stop.store(true, Ordering::SeqCst);
    for handle in threads {
        let _ = handle.join();
    }
    outcome.deliveries = shared.deliveries.load(Ordering::SeqCst);
    outcome.expected = shared.expected();
    outcome.out_of_order = shared.out_of_order.load(Ordering::SeqCst);
    outcome.failed_clients = shared.failed.load(Ordering::SeqCst);
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().unwrap());
    latencies.sort_unstable();
    outcome.latencies_us = latencies;
    outcome
}

/// This process's CPU time (user + system), from /proc/self/stat.
pub fn own_cpu() -> Duration {
    crate::proc::cpu_time(std::process::id()).unwrap_or_default()
}

#[derive(Debug, PartialEq)]
enum Stage {
    /// Not yet started (waiting for a handshake slot).
    Waiting,
    /// Upgrade request sent; reading the response head.
    Handshake,
    Open,
    Done,
}

struct Client {
    /// Index among all clients; senders are 0..S.
    index: usize,
    stream: Option<TcpStream>,
    stage: Stage,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Per sender: the next sequence number expected.
    next_seq: Vec<u32>,
    /// A sender's next line to send, and (closed loop) whether the last one
    /// came back.
    sent: u32,
    awaiting_echo: bool,
}

struct ClientLoop {
    shared: Arc<Shared>,
    poll: Poll,
    clients: Vec<Client>,
    /// Indices (into `clients`) of this thread's senders.
    senders: Vec<usize>,
    in_flight: usize,
    next_waiting: usize,
    latencies: Vec<u32>,
    scratch: Vec<u8>,
    mask: u32,
}

impl ClientLoop {
    fn new(shared: Arc<Shared>, thread: usize) -> Self {
        let plan = &shared.plan;
        let clients: Vec<Client> = (thread..plan.clients)
            .step_by(plan.threads)
            .map(|index| Client {
                index,
                stream: None,
                stage: Stage::Waiting,
                input: Vec::new(),
                output: Vec::new(),
                next_seq: vec![0; plan.senders],
                sent: 0,
                awaiting_echo: false,
            })
            .collect();
        let senders = clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.index < plan.senders)
            .map(|(i, _)| i)
            .collect();
        ClientLoop {
            poll: Poll::new().expect("a poller for the load generator"),
            clients,
            senders,
            in_flight: 0,
            next_waiting: 0,
            latencies: Vec::new(),
            scratch: vec![0; 256 * 1024],
            mask: 0x9e37_79b9 ^ thread as u32,
            shared,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut deliveries = 0u64;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            self.start_handshakes();
            if self.shared.sending.load(Ordering::Relaxed) {
                self.send_due();
            }
            let timeout = if self.shared.sending.load(Ordering::Relaxed) {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(5)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("load generator poll: {e}");
            }
            for event in events.iter() {
                let i = event.token().0;
                if event.is_writable() {
                    self.flush(i);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    deliveries += self.read(i);
                }
            }
            if deliveries > 0 {
                let total = self
                    .shared
                    .deliveries
                    .fetch_add(deliveries, Ordering::Relaxed)
                    + deliveries;
                deliveries = 0;
                if total >= self.shared.expected() {
                    let _ = self.shared.delivered_at.set(Instant::now());
                }
            }
            if self.shared.connected_at.get().is_none() && self.shared.connect_done() {
                let _ = self.shared.connected_at.set(Instant::now());
            }
        }
        self.shared
            .latencies
            .lock()
            .unwrap()
            .extend_from_slice(&self.latencies);
    }

    fn start_handshakes(&mut self) {
        while self.in_flight < HANDSHAKES_IN_FLIGHT && self.next_waiting < self.clients.len() {
            let i = self.next_waiting;
            self.next_waiting += 1;
            match self.connect(i) {
                Ok(()) => self.in_flight += 1,
                Err(e) => {
                    eprintln!("client {}: connect: {e}", self.clients[i].index);
                    self.fail(i);
                }
            }
        }
    }

    fn connect(&mut self, i: usize) -> io::Result<()> {
        let plan = &self.shared.plan;
        let client = &mut self.clients[i];
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (client.index % plan.source_addrs as usize) as u8,
        );
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        match socket.connect(&plan.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        client.output.extend_from_slice(
            format!(
                "GET /soc HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                plan.addr
            )
            .as_bytes(),
        );
        client.stream = Some(stream);
        client.stage = Stage::Handshake;
        Ok(())
    }

    fn fail(&mut self, i: usize) {
        let client = &mut self.clients[i];
        if client.stage == Stage::Done {
            return;
        }
        if client.stage == Stage::Handshake {
            self.in_flight -= 1;
        }
        client.stage = Stage::Done;
        client.stream = None;
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&mut self, i: usize) {
        let client = &mut self.clients[i];
        let Some(stream) = client.stream.as_mut() else {
            return;
        };
        while !client.output.is_empty() {
            match stream.write(&client.output) {
                Ok(n) => {
                    client.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.fail(i);
                    return;
                }
            }
        }
    }

    /// Reads what client `i` has; returns the chat lines it delivered.
    fn read(&mut self, i: usize) -> u64 {
        let mut delivered = 0;
        loop {
            let Some(stream) = self.clients[i].stream.as_mut() else {
                return delivered;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    if self.clients[i].stage != Stage::Done
                        && !self.shared.stop.load(Ordering::Relaxed)
                    {
                        self.fail(i);
                    }
                    return delivered;
                }
                Ok(n) => {
                    let now = self.shared.base.elapsed().as_nanos() as u64;
                    let client = &mut self.clients[i];
                    client.input.extend_from_slice(&self.scratch[..n]);
                    delivered += self.parse(i, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return delivered,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(i);
                    return delivered;
                }
            }
        }
    }

    /// Consumes whole frames (or the handshake response) from client `i`'s
    /// input.
    fn parse(&mut self, i: usize, now: u64) -> u64 {
        let mut delivered = 0;
        let mut at = 0;
        if self.clients[i].stage == Stage::Handshake {
            let input = &self.clients[i].input;
            let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return 0;
            };
            if !input.starts_with(b"HTTP/1.1 101") {
                eprintln!(
                    "client {}: refused: {}",
                    self.clients[i].index,
                    String::from_utf8_lossy(&input[..end.min(80)])
                );
                self.fail(i);
                return 0;
            }
            self.clients[i].stage = Stage::Open;
            self.in_flight -= 1;
            at = end + 4;
        }
        loop {
            let input = &self.clients[i].input[at..];
            let Some((opcode, header, len)) = frame_header(input) else {
                break;
            };
            if input.len() < header + len {
                break;
            }
            let payload_at = at + header;
            at = payload_at + len;
            match opcode {
                0x1 => delivered += self.message(i, payload_at, len, now),
                0x9 => {
                    let payload = self.clients[i].input[payload_at..payload_at + len].to_vec();
                    self.send_frame(i, 0xA, &payload);
                }
                0x8 => {
                    if !self.shared.stop.load(Ordering::Relaxed) {
                        self.fail(i);
                    }
                    return delivered;
                }
                _ => {}
            }
        }
        self.clients[i].input.drain(..at);
        delivered
    }

    /// One text message: a welcome, a join, or a chat line.
    fn message(&mut self, i: usize, at: usize, len: usize, now: u64) -> u64 {
        let text = &self.clients[i].input[at..at + len];
        let Some(line) = find(text, b"~L~").map(|p| &text[p + 3..]) else {
            if find(text, b"has joined").is_some() {
                self.shared.joins.fetch_add(1, Ordering::Relaxed);
            } else if find(text, b"Welcome to WebSocket").is_some() {
                self.shared.welcomed.fetch_add(1, Ordering::Relaxed);
            }
            return 0;
        };
        // "~L~SSSSS QQQQQQQQQ TTTTTTTTTTTTTTTTTTTT"
        let (Some(sender), Some(seq), Some(sent)) = (
            number(line.get(0..5)),
            number(line.get(6..15)),
            number(line.get(16..36)),
        ) else {
            return 0;
        };
        let (sender, seq) = (sender as usize, seq as u32);
        self.latencies
            .push((now.saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32);
        let client = &mut self.clients[i];
        if let Some(next) = client.next_seq.get_mut(sender) {
            if seq != *next {
                self.shared.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            *next = seq.max(*next) + u32::from(seq >= *next);
        }
        if sender == client.index && seq + 1 == client.sent {
            client.awaiting_echo = false;
        }
        1
    }

    /// Sends what the senders of this thread have due.
    fn send_due(&mut self) {
        let shared = Arc::clone(&self.shared);
        let plan = &shared.plan;
        let lines = plan.lines_per_sender as u32;
        let started = *shared.send_started.get().expect("set before sending");
        for s in 0..self.senders.len() {
            let i = self.senders[s];
            let client = &self.clients[i];
            if client.stage != Stage::Open || client.sent >= lines {
                continue;
            }
            let due = match plan.rate {
                None => !client.awaiting_echo,
                Some(rate) => {
                    // Sender k's line n is due at (n × S + k) / rate.
                    let slot = f64::from(client.sent) * plan.senders as f64 + client.index as f64;
                    started.elapsed().as_secs_f64() >= slot / rate
                }
            };
            if !due {
                continue;
            }
            let sent_at = self.shared.base.elapsed().as_nanos() as u64;
            let mut line = format!("~L~{:05} {:09} {:020} ", client.index, client.sent, sent_at);
            line.extend(std::iter::repeat_n(
                'x',
                LINE_BYTES.saturating_sub(line.len()),
            ));
            let client = &mut self.clients[i];
            client.sent += 1;
            client.awaiting_echo = true;
            self.send_frame(i, 0x1, line.as_bytes());
        }
    }

    /// Queues a masked frame and writes what the socket takes.
    fn send_frame(&mut self, i: usize, opcode: u8, payload: &[u8]) {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask.to_be_bytes();
        let out = &mut self.clients[i].output;
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(k, b)| b ^ mask[k % 4]));
        self.flush(i);
    }
}

/// A server frame's opcode, header length and payload length, if the
/// header is complete.
fn frame_header(input: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (input.first()?, input.get(1)?);
    let opcode = b0 & 0x0f;
    match b1 & 0x7f {
        126 => Some((
            opcode,
            4,
            u16::from_be_bytes(input.get(2..4)?.try_into().ok()?) as usize,
        )),
        127 => Some((
            opcode,
            10,
            u64::from_be_bytes(input.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((opcode, 2, n as usize)),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn number(digits: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(digits?).ok()?.parse().ok()
}
