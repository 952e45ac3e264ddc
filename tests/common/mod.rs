//! Shared test helpers: a real server on 127.0.0.1:0 in a thread, real
//! clients (tungstenite's client, and raw `TcpStream`s for byte-exact HTTP
//! and frames). Every socket has a read timeout, so a missing message fails
//! the test instead of hanging it; nothing sleeps to synchronise.
#![allow(dead_code)] // each test file uses its own subset

#[cfg(feature = "tls")]
pub mod pki;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use eddy::{Config, Routes, Server, ServerHandle, WebSocketHandler};
use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The defaults, but without the chat's rate limit: tests of other
/// behaviour send lines faster than people type (the rate limit has tests
/// of its own).
pub fn config() -> Config {
    Config {
        rate_limit: None,
        ..Config::default()
    }
}

/// How long any single expected event may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server running in a thread. Dropping it stops the loop and joins.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The metrics listener's address, if the config asked for one.
    pub metrics: Option<SocketAddr>,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// A chat server with `config`.
    pub fn chat(config: Config) -> TestServer {
        // The chat's routes, as `main` serves them: the room gets the
        // config's rate limit.
        let routes = eddy::chat::routes(&config).expect("the chat's history");
        TestServer::with_routes(config, routes)
    }

    /// A chat server with the test config ([`config`]).
    pub fn start() -> TestServer {
        TestServer::chat(config())
    }

    /// A server running `handler` at `/soc`.
    pub fn with_handler<H: WebSocketHandler + Send + 'static>(
        config: Config,
        handler: H,
    ) -> TestServer {
        TestServer::with_routes(config, Routes::new().route("/soc", handler))
    }

    /// A server with these routes.
    pub fn with_routes(config: Config, routes: Routes) -> TestServer {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, routes).expect("bind");
        TestServer::run(server)
    }

    /// A chat server on a given address, as a restarted server would be:
    /// the bind is retried until [`TIMEOUT`] while the port is still busy.
    pub fn chat_at(addr: SocketAddr, config: Config) -> TestServer {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match Server::bind(
                addr,
                config.clone(),
                eddy::chat::routes(&config).expect("the chat's history"),
            ) {
                Ok(server) => return TestServer::run(server),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    // Pacing between attempts, not synchronisation.
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        }
    }

    fn run(server: Server) -> TestServer {
        let addr = server.local_addr().unwrap();
        let metrics = server.metrics_addr();
        let handle = server.handle();
        let thread = thread::spawn(move || server.run());
        TestServer {
            addr,
            metrics,
            handle,
            thread: Some(thread),
        }
    }

    /// Starts a graceful shutdown and waits for `run` to return.
    pub fn shutdown(mut self) {
        self.handle.shutdown().unwrap();
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.stop();
            let result = thread.join();
            if !thread::panicking() {
                result
                    .expect("server thread panicked")
                    .expect("server run failed");
            }
        }
    }
}

/// A port that was free a moment ago, for a server whose address must be
/// known before it starts (a page with the port written into it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP connection with timeouts set.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// A connection whose receive buffer is set to `bytes` *before* connecting
/// (the window is agreed at the handshake), so that a client that never
/// reads fills up after a few KiB instead of megabytes of kernel memory.
pub fn small_window_tcp(addr: SocketAddr, bytes: usize) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Reads until the server closes the connection; returns everything.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "reading until close: {e} (got {:?})",
            String::from_utf8_lossy(&all)
        ),
    }
    all
}

/// Sends `request` on a fresh connection and returns all the server sent
/// before closing.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tcp(addr);
    stream.write_all(request).unwrap();
    String::from_utf8_lossy(&read_to_close(&mut stream)).into_owned()
}

/// One HTTP response read off a keep-alive connection.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on a fresh connection: its one response.
pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = tcp(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    read_response(&mut stream, false)
}

/// Reads exactly one response (head, then `Content-Length` bytes of body;
/// none for a HEAD request) from `stream`.
pub fn read_response(stream: &mut impl Read, head_request: bool) -> HttpResponse {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("reading a response head");
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut response = HttpResponse {
        status,
        head,
        body: Vec::new(),
    };
    let length: usize = response
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    if !head_request {
        response.body = vec![0; length];
        stream.read_exact(&mut response.body).unwrap();
    }
    response
}

/// A WebSocket client (tungstenite's own) over a plain TcpStream.
pub type Client = WebSocket<TcpStream>;

/// Opens `ws://addr/soc`.
pub fn connect(addr: SocketAddr) -> Client {
    let (client, response) =
        tungstenite::client(format!("ws://{addr}/soc"), tcp(addr)).expect("handshake");
    assert_eq!(response.status(), 101);
    client
}

/// Opens `/soc?{query}` and reads the welcome (checked key by key by
/// [`welcome`]); returns the client and the welcome.
pub fn enter(addr: SocketAddr, query: &str) -> (Client, Value) {
    let url = format!("ws://{addr}/soc?{query}");
    let (mut client, response) = tungstenite::client(url, tcp(addr)).expect("handshake");
    assert_eq!(response.status(), 101, "{query}");
    let message = recv_json(&mut client);
    welcome(&message);
    (client, message)
}

/// Opens a chat client and reads its welcome.
pub fn join(addr: SocketAddr) -> Client {
    join_with_id(addr).0
}

/// Opens a chat client, reads its welcome, and returns the id it tells.
pub fn join_with_id(addr: SocketAddr) -> (Client, u64) {
    let mut client = connect(addr);
    let id = welcome_id(&recv_json(&mut client));
    (client, id)
}

/// Checks that `message` is the welcome, object for object, and returns its id.
pub fn welcome_id(message: &Value) -> u64 {
    welcome(message).0
}

/// Checks that `message` is the welcome, object for object, and returns
/// its id, epoch and head.
pub fn welcome(message: &Value) -> (u64, String, u64) {
    let id = message["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {message}"));
    let epoch = message["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {message}"))
        .to_owned();
    let head = message["head"]
        .as_u64()
        .unwrap_or_else(|| panic!("no head in {message}"));
    // The seed's keys, then Eddy's: no other key, nothing missing.
    let mut keys: Vec<&str> = message
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {message}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = vec![
        "count", "epoch", "head", "id", "message", "resume", "room", "type",
    ];
    for optional in ["members", "name"] {
        if message.get(optional).is_some() {
            expected.push(optional);
        }
    }
    expected.sort_unstable();
    assert_eq!(keys, expected, "{message}");
    assert_eq!(message["type"], "sys", "{message}");
    assert_eq!(message["message"], "Welcome to WebSocket", "{message}");
    assert!(
        message["room"].is_string() && message["count"].as_u64() >= Some(1),
        "{message}"
    );
    assert!(
        message["resume"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("{id}.")))
    );
    assert_eq!(epoch.len(), 16, "80 random bits: {epoch}");
    (id, epoch, head)
}

/// The next text message, as a string; fails on anything else.
pub fn recv_text(client: &mut Client) -> String {
    loop {
        match client.read() {
            Ok(Message::Text(text)) => return text.as_str().to_owned(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next text message, parsed as JSON.
pub fn recv_json(client: &mut Client) -> Value {
    let text = recv_text(client);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text:?}: {e}"))
}

/// Sends a text message.
pub fn send(client: &mut Client, text: &str) {
    client.send(Message::text(text)).unwrap();
}

/// Reads the "<id> has joined" notice and returns the id as a number.
pub fn recv_joined(client: &mut Client) -> u64 {
    sys_id(&recv_json(client), "has joined")
}

/// The id in a sys notice `"<id> <suffix>"`.
pub fn sys_id(message: &Value, suffix: &str) -> u64 {
    assert_eq!(message["type"], "sys", "{message}");
    let text = message["message"].as_str().unwrap();
    let id = text
        .strip_suffix(suffix)
        .unwrap_or_else(|| panic!("{text:?} does not end with {suffix:?}"));
    id.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {text:?}"))
}

/// Reads until the server's close frame and returns its code; fails if a
/// text message or the end of the stream comes first.
pub fn recv_close(client: &mut Client) -> CloseCode {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A raw WebSocket: upgrades `stream` by hand and checks the 101, so tests
/// can send bytes no well-behaved client would.
pub fn raw_upgrade(addr: SocketAddr, after_head: &[u8]) -> TcpStream {
    let mut stream = tcp(addr);
    let mut request = upgrade_request(addr, "").into_bytes();
    request.extend_from_slice(after_head);
    stream.write_all(&request).unwrap();
    let response = read_response(&mut stream, true);
    assert_eq!(response.status, 101, "{}", response.head);
    stream
}

/// A valid upgrade request for `/soc`, plus `extra` header lines.
pub fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /soc HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client-to-server frame, masked as RFC 6455 requires.
pub fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
    push_length(&mut frame, 0x80, payload.len() as u64);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A frame without a mask (a protocol violation from a client).
pub fn unmasked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    push_length(&mut frame, 0, payload.len() as u64);
    frame.extend_from_slice(payload);
    frame
}

/// Writes a frame's length field (7, 7+16 or 7+64 bits) with the mask bit.
pub fn push_length(frame: &mut Vec<u8>, mask_bit: u8, len: u64) {
    match len {
        0..=125 => frame.push(mask_bit | len as u8),
        126..=65535 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// Reads one server frame from a raw stream: (opcode, payload).
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// Reads raw frames until a close frame; returns its code (skipping data).
pub fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(stream);
        if opcode == 0x8 {
            assert!(payload.len() >= 2, "close frame without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Checks that two fresh clients can still chat: the room survived. Other
/// traffic (lines of clients still connected) is skipped.
pub fn assert_room_works(addr: SocketAddr) {
    let mut a = join(addr);
    let mut b = join(addr);
    let b_id = loop {
        let message = recv_json(&mut a);
        if message["type"] == "sys"
            && message["message"]
                .as_str()
                .unwrap()
                .ends_with(" has joined")
        {
            break sys_id(&message, " has joined");
        }
    };
    send(&mut b, "still here?");
    for client in [&mut a, &mut b] {
        loop {
            let line = recv_user_line(client);
            if line["id"] == b_id {
                assert_eq!(line["message"], "still here?");
                break;
            }
        }
    }
}

/// Now, in milliseconds since the Unix epoch (a line's `ts`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The next "user" message, skipping sys notices.
pub fn recv_user_line(client: &mut Client) -> Value {
    loop {
        let message = recv_json(client);
        if message["type"] == "user" {
            return message;
        }
    }
}

/// The built `eddy` binary, started with `args`, stderr captured. Its log
/// lines arrive on `stderr` as they are written.
pub struct Binary {
    child: Option<Child>,
    pub pid: u32,
    pub stderr: mpsc::Receiver<String>,
}

impl Binary {
    pub fn start(args: &[&str]) -> Binary {
        Binary::start_in(args, None)
    }

    pub fn start_in(args: &[&str], dir: Option<&std::path::Path>) -> Binary {
        Binary::spawn(Command::new(env!("CARGO_BIN_EXE_eddy")), args, dir)
    }

    /// The binary started from `sh` after `ulimit {ulimit}` (e.g. `-n 40`:
    /// soft and hard open-file limits of 40; `-Sn 100`: the soft one).
    pub fn start_with_ulimit(args: &[&str], ulimit: &str) -> Binary {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_eddy"));
        Binary::spawn(command, args, None)
    }

    /// Spawns `command` with `args`; with `--data-dir off` first unless
    /// `args` name a data directory, so that no test uses the default one.
    fn spawn(mut command: Command, args: &[&str], dir: Option<&std::path::Path>) -> Binary {
        if !args.contains(&"--data-dir") {
            command.args(["--data-dir", "off"]);
        }
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // RUST_LOG unset, so the binary's own default (info) is what runs;
        // EDDY_TEST_RUST_LOG passes a filter through when debugging a test.
        match std::env::var("EDDY_TEST_RUST_LOG") {
            Ok(filter) => command.env("RUST_LOG", filter),
            Err(_) => command.env_remove("RUST_LOG"),
        };

        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // EDDY_TEST_LOG_FILE keeps a copy of the log, for debugging a test.
        let mut copy = std::env::var("EDDY_TEST_LOG_FILE")
            .ok()
            .map(|p| std::fs::File::create(p).unwrap());
        thread::spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(file) = &mut copy {
                    let _ = writeln!(file, "{line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Binary {
            pid: child.id(),
            child: Some(child),
            stderr: rx,
        }
    }

    /// Waits for a stderr line containing `text` and returns it.
    pub fn wait_for_line(&self, text: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Waits for the "listening on http://ADDR/" line (https with TLS)
    /// and returns ADDR.
    pub fn listening_addr(&self) -> SocketAddr {
        let line = self.wait_for_line("listening on http");
        let rest = line.split("://").nth(1).unwrap();
        let url = rest.split_whitespace().next().unwrap();
        url.trim_end_matches('/').parse().unwrap()
    }

    /// Waits for the "metrics at http://ADDR/metrics" line (logged right
    /// after the listening line) and returns ADDR.
    pub fn metrics_addr(&self) -> SocketAddr {
        let line = self.wait_for_line("metrics at http://");
        let rest = line.split("metrics at http://").nth(1).unwrap();
        rest.split('/').next().unwrap().parse().unwrap()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // child's, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("waited for twice");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => status.unwrap().code(),
            Err(_) => {
                self.signal(libc::SIGKILL);
                panic!("eddy did not exit within {limit:?}");
            }
        }
    }

    /// Every stderr line, once the process has exited and its stderr closed.
    pub fn stderr_lines(&self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stderr still open: {lines:?}"),
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A field of /proc/PID/status, in KiB (VmRSS, VmHWM, ...): how the tests
/// that run the built binary read its memory.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads an exposition from stdin with `prometheus_client`'s parser (which
/// raises on anything malformed) and prints every sample as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"family": family.name, "type": family.type,
                        "name": sample.name, "labels": sample.labels,
                        "value": sample.value})
print(json.dumps(samples))
"#;

/// Whether Prometheus's Python parser can be run: without it, a loud
/// notice (the caller skips), unless `CI` is set: then it fails.
pub fn have_parser() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but python3 cannot import prometheus_client: pip install prometheus_client"
            );
        }
        eprintln!(
            "\n*** SKIPPED: parsing /metrics needs python3 with prometheus_client \
             (pip install prometheus_client). ***\n"
        );
    }
    found
}

/// The samples of one scrape, as the parser read them.
pub struct Scrape(pub Vec<Value>);

impl Scrape {
    /// The value of the one sample named `name` with (at least) `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Value> = self
            .0
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .collect();
        assert_eq!(matching.len(), 1, "{name} {labels:?}: {matching:?}");
        matching[0]["value"].as_f64().unwrap()
    }

    /// The type of the family a sample named `name` is in.
    pub fn type_of(&self, name: &str) -> &str {
        let sample = self.0.iter().find(|s| s["name"] == name);
        sample.unwrap_or_else(|| panic!("no {name}"))["type"]
            .as_str()
            .unwrap()
    }
}

/// `GET /metrics`, parsed.
pub fn scrape(metrics: SocketAddr) -> Scrape {
    let response = get(metrics, "/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut python = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(&response.body)
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client refused the exposition: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&response.body)
    );
    Scrape(serde_json::from_slice(&output.stdout).unwrap())
}
