//! Several Eddy servers sharing rooms through a real `redis-server`
//! (started here on a free port, its files in a temp directory): one order
//! for every client on every server, rooms apart, resumes on another server,
//! and the faults: a server killed, Redis killed and restarted, with its data
//! and empty, unreachable at startup, and a hostile "Redis" on a socket;
//! and `/readyz`, which says whether Redis can be reached.
//!
//! Needs `redis-server` on the PATH (`apt-get install -y redis-server`;
//! `.ci/run` installs Debian's). Without one, each test is skipped with a
//! notice, unless `CI` is set: then a missing `redis-server` fails.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Binary, Client, TIMEOUT, enter, get, recv_json, recv_text, send};
use serde_json::Value;

/// Whether `redis-server` can be run. Without one: a loud notice and
/// `false`, or with `CI` set, a failure.
fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but redis-server was not found: apt-get install -y redis-server");
    }
    // Written to stderr directly: libtest captures `eprintln!` of passing tests.
    static NOTICE: std::sync::Once = std::sync::Once::new();
    NOTICE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the tests of several servers need redis-server, and none was \
             found. Install it with `apt-get install -y redis-server`. ***\n"
        );
    });
    false
}

/// A `redis-server` of the test's own, on a free port, with its files in a
/// directory of its own; with an append-only file synced at every write,
/// so that a Redis killed and started again has every line it took.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(name: &str) -> Redis {
        let dir = std::env::temp_dir().join(format!("eddy-redis-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port: common::free_port(),
            dir,
        };
        redis.run();
        redis
    }

    /// Starts the server on its port and directory; returns once it says
    /// it is ready.
    fn run(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--logfile", "", "--daemonize", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (apt-get install redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("redis-server stopped before it was ready: {seen:#?}");
            };
            if line.contains("Ready to accept connections") {
                break;
            }
            seen.push(line);
        }
        // Keep draining its log, so that it never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, and waits for it to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Killed and started again, with everything it had written.
    fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Killed and started again with nothing.
    fn restart_empty(&mut self) {
        self.kill();
        fs::remove_dir_all(&self.dir).unwrap();
        fs::create_dir_all(&self.dir).unwrap();
        self.run();
    }

    /// A copy of its files as they are now (every write it acknowledged is
    /// synced: `appendfsync always`), to start it from later.
    fn snapshot(&self) -> PathBuf {
        let copy = self.dir.with_extension("snapshot");
        let _ = fs::remove_dir_all(&copy);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success(), "cp -a");
        copy
    }

    /// Killed, and started again from `snapshot` (an older state).
    fn restart_from(&mut self, snapshot: &std::path::Path) {
        self.kill();
        fs::remove_dir_all(&self.dir).unwrap();
        fs::rename(snapshot, &self.dir).unwrap();
        self.run();
    }

    /// One command, its reply as RESP text (enough for the tests' checks).
    fn command(&self, words: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = vec![0; 4096];
        let n = stream.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// An Eddy server on `redis`, listening on a port of its own.
fn node(redis_url: &str) -> (Binary, SocketAddr) {
    let binary = Binary::start(&[
        "--addr",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
        "--redis",
        redis_url,
    ]);
    let addr = binary.listening_addr();
    (binary, addr)
}

/// Waits until both of `binary`'s connections to Redis are back.
fn wait_reconnected(binary: &Binary) {
    let mut back = [false; 2];
    while back != [true; 2] {
        let line = binary.wait_for_line("connected again");
        back[0] |= line.contains("(commands)");
        back[1] |= line.contains("(subscriber)");
    }
}

/// The next chat line (`type` user), skipping notices.
fn next_line(client: &mut Client) -> Value {
    common::recv_user_line(client)
}

/// The next notice whose `event` is `event` (or, for `None`, whose
/// message contains `text`), skipping lines and other notices.
fn next_notice(client: &mut Client, text: &str) -> Value {
    loop {
        let message = recv_json(client);
        if message["type"] == "sys"
            && (message["event"] == text
                || message["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text)))
        {
            return message;
        }
    }
}

#[test]
fn clients_on_three_servers_get_one_identical_order() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("order");
    let nodes: Vec<(Binary, SocketAddr)> = (0..3).map(|_| node(&redis.url())).collect();
    let mut clients: Vec<Client> = (0..20).map(|i| enter(nodes[i % 3].1, "").0).collect();
    const SENDERS: usize = 5;
    const ROUNDS: usize = 200;
    for round in 0..ROUNDS {
        for (sender, client) in clients.iter_mut().take(SENDERS).enumerate() {
            send(client, &format!("{sender}:{round}"));
        }
    }
    let mut orders: Vec<Vec<String>> = Vec::new();
    for client in &mut clients {
        let mut order = Vec::new();
        let mut next_round = [0usize; SENDERS];
        for expected_seq in 1..=(SENDERS * ROUNDS) as u64 {
            let line = next_line(client);
            assert_eq!(line["seq"], expected_seq, "dense seqs from Redis: {line}");
            let text = line["message"].as_str().unwrap().to_owned();
            let (sender, round) = text.split_once(':').unwrap();
            let sender: usize = sender.parse().unwrap();
            assert_eq!(
                round.parse::<usize>().unwrap(),
                next_round[sender],
                "each sender in order"
            );
            next_round[sender] += 1;
            order.push(format!("{}/{text}", line["id"]));
        }
        orders.push(order);
    }
    for (i, order) in orders.iter().enumerate().skip(1) {
        assert!(
            order == &orders[0],
            "client {i} (server {}) saw another order",
            i % 3
        );
    }
    // Ids are the servers' own, and never the same for two clients.
    let ids: std::collections::HashSet<&str> = orders[0]
        .iter()
        .map(|l| l.split('/').next().unwrap())
        .collect();
    assert_eq!(ids.len(), SENDERS, "{ids:?}");
}

#[test]
fn rooms_stay_apart_across_servers() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("rooms");
    let (_a, a) = node(&redis.url());
    let (_b, b) = node(&redis.url());
    let (mut x_on_a, _) = enter(a, "room=x");
    let (mut y_on_b, _) = enter(b, "room=y");
    let (mut x_on_b, _) = enter(b, "room=x");
    send(&mut x_on_a, "for x");
    send(&mut y_on_b, "for y");
    let line = next_line(&mut x_on_b);
    assert_eq!(
        (line["message"].as_str(), line["seq"].as_u64()),
        (Some("for x"), Some(1))
    );
    let line = next_line(&mut y_on_b);
    assert_eq!(
        (line["message"].as_str(), line["seq"].as_u64()),
        (Some("for y"), Some(1))
    );
    // Nothing of y reached x: x's next line is x's own next.
    send(&mut x_on_b, "x again");
    let line = next_line(&mut x_on_a);
    assert_eq!(line["message"], "for x");
    let line = next_line(&mut x_on_a);
    assert_eq!(
        (line["message"].as_str(), line["seq"].as_u64()),
        (Some("x again"), Some(2))
    );
}

#[test]
fn a_client_resumes_on_another_server_from_its_seq() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("resume");
    let (_a, a) = node(&redis.url());
    let (_b, b) = node(&redis.url());
    let (mut speaker, _) = enter(b, "");
    let (mut reader, welcome) = enter(a, "");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        send(&mut speaker, &format!("line {i}"));
    }
    for i in 1..=5 {
        assert_eq!(next_line(&mut reader)["seq"], i);
    }
    reader.close(None).unwrap();
    for i in 6..=12 {
        send(&mut speaker, &format!("line {i}"));
    }
    // The speaker has them all: Redis took them.
    for i in 1..=12 {
        assert_eq!(next_line(&mut speaker)["seq"], i);
    }
    let (mut back, again) = enter(b, &format!("since=5&epoch={epoch}"));
    assert_eq!(again["epoch"], epoch.as_str(), "one epoch on every server");
    assert_eq!(again["head"], 12);
    for i in 6..=12 {
        let line = next_line(&mut back);
        assert_eq!(
            (line["seq"].as_u64(), line["message"].as_str()),
            (Some(i), Some(&*format!("line {i}")))
        );
    }
    next_notice(&mut back, "caught_up");
}

#[test]
fn a_server_killed_mid_chat_loses_its_clients_nothing() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("kill-node");
    let (mut doomed, a) = node(&redis.url());
    let (_b, b) = node(&redis.url());
    let (mut speaker, _) = enter(b, "");
    let (mut reader, welcome) = enter(a, "");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    let total = 300u64;
    let mut seen = 0u64;
    for i in 1..=total {
        send(&mut speaker, &format!("n{i}"));
        if i == 100 {
            // Read some, then the reader's server dies under it.
            while seen < 50 {
                seen = next_line(&mut reader)["seq"].as_u64().unwrap();
            }
            doomed.signal(libc::SIGKILL);
            doomed.wait_exit(TIMEOUT);
        }
    }
    // Whatever reached the reader before the kill, it keeps; the rest
    // comes from the other server, after `seen`, each line once.
    while let Ok(tungstenite::Message::Text(text)) = reader.read() {
        let message: Value = serde_json::from_str(text.as_str()).unwrap();
        if message["type"] == "user" {
            let seq = message["seq"].as_u64().unwrap();
            assert_eq!(seq, seen + 1, "in order, no gap, no repeat");
            seen = seq;
        }
    }
    let (mut back, _) = enter(b, &format!("since={seen}&epoch={epoch}"));
    for expected in seen + 1..=total {
        let line = next_line(&mut back);
        assert_eq!(line["seq"], expected);
        assert_eq!(line["message"], format!("n{expected}"));
    }
}

#[test]
fn redis_killed_and_restarted_senders_are_told_and_nothing_taken_is_lost() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start("outage");
    let (a_node, a) = node(&redis.url());
    let (b_node, b) = node(&redis.url());
    let (mut on_a, welcome) = enter(a, "");
    let (mut on_b, _) = enter(b, "");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    for i in 1..=20 {
        send(&mut on_a, &format!("before {i}"));
    }
    for client in [&mut on_a, &mut on_b] {
        for i in 1..=20 {
            assert_eq!(next_line(client)["seq"], i);
        }
    }
    redis.kill();
    a_node.wait_for_line("Redis closed the connection");
    b_node.wait_for_line("Redis closed the connection");
    // While Redis is away, a line is refused and its sender told, at once.
    send(&mut on_a, "into the void");
    let told = next_notice(&mut on_a, "Redis");
    assert!(
        told["message"].as_str().unwrap().contains("not delivered"),
        "{told}"
    );
    redis.restart();
    wait_reconnected(&a_node);
    wait_reconnected(&b_node);
    // Back: lines flow again, on both servers, from seq 21, the refused
    // line nowhere.
    send(&mut on_b, "after");
    for client in [&mut on_a, &mut on_b] {
        let line = next_line(client);
        assert_eq!(
            (line["seq"].as_u64(), line["message"].as_str()),
            (Some(21), Some("after"))
        );
    }
    // And a newcomer resuming from the start gets every line, once.
    let (mut late, again) = enter(b, &format!("since=0&epoch={epoch}"));
    assert_eq!(
        again["epoch"],
        epoch.as_str(),
        "Redis kept the room: same epoch"
    );
    for i in 1..=21 {
        assert_eq!(next_line(&mut late)["seq"], i);
    }
}

#[test]
fn redis_restarted_empty_begins_a_new_epoch_and_says_so() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start("empty");
    let (a_node, a) = node(&redis.url());
    let (mut client, welcome) = enter(a, "");
    let old_epoch = welcome["epoch"].as_str().unwrap().to_owned();
    send(&mut client, "soon forgotten");
    assert_eq!(next_line(&mut client)["seq"], 1);
    redis.restart_empty();
    wait_reconnected(&a_node);
    let reset = next_notice(&mut client, "reset");
    assert!(
        reset["message"].as_str().unwrap().contains("began again"),
        "{reset}"
    );
    send(&mut client, "fresh");
    let line = next_line(&mut client);
    assert_eq!(
        (line["seq"].as_u64(), line["message"].as_str()),
        (Some(1), Some("fresh"))
    );
    // A client of the old epoch is told too.
    let (mut old, again) = enter(a, &format!("since=1&epoch={old_epoch}"));
    assert_ne!(again["epoch"], old_epoch.as_str());
    next_notice(&mut old, "reset");
}

#[test]
fn redis_back_from_an_older_snapshot_continues_the_seqs_it_kept() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start("snapshot");
    let (a_node, a) = node(&redis.url());
    let (mut client, welcome) = enter(a, "");
    let old_epoch = welcome["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        send(&mut client, &format!("kept {i}"));
    }
    for i in 1..=5 {
        assert_eq!(next_line(&mut client)["seq"], i);
    }
    let snapshot = redis.snapshot();
    for i in 6..=10 {
        send(&mut client, &format!("lost {i}"));
    }
    for i in 6..=10 {
        assert_eq!(next_line(&mut client)["seq"], i);
    }
    // Redis comes back with lines 1-5 only: this client saw 6-10, which
    // are gone. A new epoch begins, continuing the seqs from 6, and the
    // client is told (then replayed what Redis kept).
    redis.restart_from(&snapshot);
    wait_reconnected(&a_node);
    next_notice(&mut client, "reset");
    send(&mut client, "after");
    let after = loop {
        let line = next_line(&mut client);
        if line["message"] == "after" {
            break line;
        }
        assert!(
            line["seq"].as_u64().unwrap() <= 5,
            "only what Redis kept: {line}"
        );
    };
    assert_eq!(
        after["seq"], 6,
        "the seqs go on from the last one Redis kept"
    );
    // A page that had seen up to 5 of the old epoch goes on seamlessly: no
    // reset, the next line is 6.
    let (mut five, again) = enter(a, &format!("since=5&epoch={old_epoch}"));
    assert_ne!(again["epoch"], old_epoch.as_str(), "a new epoch");
    loop {
        let message = recv_json(&mut five);
        assert_ne!(message["event"], "reset", "{message}");
        if message["type"] == "user" {
            assert_eq!(
                (message["seq"].as_u64(), message["message"].as_str()),
                (Some(6), Some("after"))
            );
            break;
        }
    }
    // One that had seen 8 (a line Redis lost) is told to start over.
    let (mut eight, _) = enter(a, &format!("since=8&epoch={old_epoch}"));
    next_notice(&mut eight, "reset");
}

#[test]
fn subscribers_cut_mid_stream_catch_up_with_every_line_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("cut");
    let (_a, a) = node(&redis.url());
    let (_b, b) = node(&redis.url());
    let (mut on_a, _) = enter(a, "");
    let (mut on_b, _) = enter(b, "");
    let (mut sender, _) = enter(b, "");
    for i in 1..=200 {
        send(&mut sender, &format!("line {i}"));
        if i % 50 == 0 {
            // Every server's subscriber connection, cut by Redis itself:
            // the lines published meanwhile never reach them live.
            let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            if i == 50 {
                assert_eq!(killed, ":2\r\n", "both servers' subscribers cut");
            }
        }
    }
    for client in [&mut on_a, &mut on_b, &mut sender] {
        for seq in 1..=200 {
            let line = next_line(client);
            let text = format!("line {seq}");
            assert_eq!(
                (line["seq"].as_u64(), line["message"].as_str()),
                (Some(seq), Some(&*text))
            );
        }
    }
}

#[test]
fn redis_unreachable_at_startup_is_said_and_websockets_still_open() {
    if !have_redis() {
        return;
    }
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let (binary, addr) = node(&url);
    binary.wait_for_line("retrying");
    let (mut client, response) =
        tungstenite::client(format!("ws://{addr}/soc"), common::tcp(addr)).expect("handshake");
    assert_eq!(response.status(), 101);
    send(&mut client, "anyone?");
    let told = recv_json(&mut client);
    assert!(
        told["message"].as_str().unwrap().contains("not delivered"),
        "{told}"
    );
    // Redis comes: the client is welcomed, and can chat.
    let mut redis = Redis {
        child: None,
        port,
        dir: std::env::temp_dir().join(format!("eddy-redis-late-{}", std::process::id())),
    };
    let _ = fs::remove_dir_all(&redis.dir);
    fs::create_dir_all(&redis.dir).unwrap();
    redis.run();
    common::welcome(&recv_json(&mut client));
    send(&mut client, "hello");
    assert_eq!(next_line(&mut client)["message"], "hello");
}

#[test]
fn scripts_flushed_from_redis_are_sent_again() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("noscript");
    let (_a, a) = node(&redis.url());
    let (mut client, _) = enter(a, "");
    send(&mut client, "one");
    assert_eq!(next_line(&mut client)["seq"], 1);
    assert!(redis.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    // Several in one turn: each refused (NOSCRIPT), each sent again, in order.
    for i in 2..=6 {
        send(&mut client, &format!("line {i}"));
    }
    for i in 2..=6 {
        let line = next_line(&mut client);
        let text = format!("line {i}");
        assert_eq!(
            (line["seq"].as_u64(), line["message"].as_str()),
            (Some(i), Some(&*text))
        );
    }
}

/// A "Redis" that answers with `reply` to whatever it is sent, on every
/// connection, until the test ends.
fn hostile_redis(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_hostile_redis_never_takes_the_server_down() {
    let replies: [&'static [u8]; 5] = [
        b"this is not RESP\r\n",
        b"*3\r\n$8\r\nsmessage\r\n:1\r\n", // half a frame, and a wrong one
        b"*-5\r\n*4\r\n$5\r\nhello\r\n",
        b"$99999999999999999999\r\n",
        b"*4\r\n$3\r\nabc\r\n$1\r\n1\r\n$0\r\n\r\n*1\r\n:7\r\n*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n",
    ];
    let mut servers: HashMap<usize, (Binary, SocketAddr)> = HashMap::new();
    for (i, reply) in replies.into_iter().enumerate() {
        let port = hostile_redis(reply);
        servers.insert(i, node(&format!("redis://127.0.0.1:{port}")));
    }
    for (i, (_, addr)) in &servers {
        // It keeps serving: the page, and WebSockets (which wait for a
        // Redis that makes sense).
        let page = common::http_exchange(
            *addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(page.starts_with("HTTP/1.1 200"), "server {i}: {page}");
        let (mut client, _) =
            tungstenite::client(format!("ws://{addr}/soc"), common::tcp(*addr)).expect("handshake");
        send(&mut client, "hi");
        let told = recv_text(&mut client);
        assert!(told.contains("not delivered"), "server {i}: {told}");
    }
    for (i, (binary, _)) in &mut servers {
        // Each is told what is wrong (a half reply: when its deadline
        // passes), and goes on.
        binary.wait_for_line("WARN");
        binary.signal(libc::SIGTERM);
        assert_eq!(
            binary.wait_exit(TIMEOUT),
            Some(0),
            "server {i} exits cleanly"
        );
        let lines = binary.stderr_lines();
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "server {i}: {lines:#?}"
        );
    }
}

/// TLS with `--workers`: each worker loads the certificate, and a SIGHUP to
/// the parent reaches every worker, so that every new connection, on
/// whichever worker, gets the renewed one.
#[cfg(feature = "tls")]
#[test]
fn sighup_to_the_parent_renews_every_workers_certificate() {
    use common::pki::{Pki, tls_connect, wss_join};
    if !have_redis() {
        return;
    }
    let redis = Redis::start("workers-tls");
    let mut pki = Pki::new("workers");
    let url = redis.url();
    let mut args = vec!["--addr", "127.0.0.1:0", "--workers", "2", "--redis", &url];
    let flags = pki.flags();
    args.extend(flags.iter().map(String::as_str));
    let mut parent = Binary::start(&args);
    let addr = parent.listening_addr();
    worker_pids(&parent, 2);
    let client = pki.client();
    let (_a, _) = wss_join(addr, &client);
    pki.issue();
    parent.signal(libc::SIGHUP);
    parent.wait_for_line("SIGHUP: passed on to 2 workers");
    let mut reloaded = Vec::new();
    for _ in 0..2 {
        let line = parent.wait_for_line("SIGHUP: TLS certificate and key loaded again");
        reloaded.push(line.split("worker").nth(1).map(str::to_owned));
    }
    reloaded.sort();
    reloaded.dedup();
    assert_eq!(reloaded.len(), 2, "both workers: {reloaded:?}");
    // Whichever worker takes them, new connections see the new certificate.
    for _ in 0..8 {
        let stream = tls_connect(addr, &client);
        let presented = stream.conn.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(presented, pki.issued.to_vec());
    }
    parent.signal(libc::SIGTERM);
    assert_eq!(parent.wait_exit(TIMEOUT), Some(0));
}

/// `--metrics-addr` with `--workers 2`: each worker's loop has a metrics
/// listener of its own (port 0 here: each a free port, logged; a fixed
/// port gives worker k PORT+k, as the unit test of `workers.rs` checks),
/// healthy and ready, counting the connections it took.
#[test]
fn each_worker_serves_its_own_metrics_and_health() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("workers-metrics");
    let url = redis.url();
    let parent = Binary::start(&[
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--redis",
        &url,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let addr = parent.listening_addr();
    let mut metrics = vec![parent.metrics_addr(), parent.metrics_addr()];
    metrics.sort();
    metrics.dedup();
    assert_eq!(metrics.len(), 2, "two listeners: {metrics:?}");
    for at in &metrics {
        assert_eq!(get(*at, "/healthz").status, 200);
        assert_eq!(get(*at, "/readyz").status, 200);
    }
    let clients: Vec<Client> = (0..8).map(|_| enter(addr, "room=m").0).collect();
    let open: Vec<u64> = metrics
        .iter()
        .map(|at| {
            let text = String::from_utf8(get(*at, "/metrics").body).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("eddy_connections{stage=\"open\"} "))
                .unwrap_or_else(|| panic!("no open connections in {text}"))
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(open.iter().sum::<u64>(), 8, "each counts its own: {open:?}");
    drop(clients);
}

/// The pids of the workers the parent said it started.
fn worker_pids(parent: &Binary, count: usize) -> Vec<u32> {
    (0..count)
        .map(|_| {
            let line = parent.wait_for_line(" started (pid ");
            let pid = line.rsplit("(pid ").next().unwrap().trim_end_matches(')');
            pid.parse().unwrap()
        })
        .collect()
}

#[test]
fn two_workers_on_one_port_are_one_chat_and_a_dead_one_is_replaced() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("workers");
    let mut parent = Binary::start(&[
        "--addr",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
        "--workers",
        "2",
        "--redis",
        &redis.url(),
    ]);
    let addr = parent.listening_addr();
    let pids = worker_pids(&parent, 2);
    let mut clients: Vec<Client> = (0..8).map(|_| enter(addr, "room=w").0).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        send(client, &format!("from {i}"));
    }
    let mut first: Option<Vec<String>> = None;
    for client in &mut clients {
        let order: Vec<String> = (1..=8)
            .map(|seq| {
                let line = next_line(client);
                assert_eq!(line["seq"], seq);
                line["message"].as_str().unwrap().to_owned()
            })
            .collect();
        match &first {
            None => first = Some(order),
            Some(first) => assert_eq!(&order, first, "one order on both workers"),
        }
    }
    // A worker killed: the parent says so and starts another; the port
    // keeps serving.
    let victim = pids[0];
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
        0
    );
    parent.wait_for_line(&format!("(pid {victim}) died"));
    parent.wait_for_line("restarted (pid");
    for i in 0..4 {
        let (mut client, welcome) = enter(addr, "room=w");
        let head = welcome["head"].as_u64().unwrap();
        assert_eq!(head, 8 + i, "every line so far, on whichever worker");
        send(&mut client, "still here");
        // The replay first, then its own line.
        for seq in 1..=head {
            assert_eq!(next_line(&mut client)["seq"], seq);
        }
        let line = next_line(&mut client);
        assert_eq!(
            (line["seq"].as_u64(), line["message"].as_str()),
            (Some(head + 1), Some("still here"))
        );
    }
    // SIGTERM to the parent: every worker stops, then the parent.
    parent.signal(libc::SIGTERM);
    assert_eq!(parent.wait_exit(TIMEOUT), Some(0));
    let lines = parent.stderr_lines();
    assert!(
        lines.iter().any(|l| l.contains("every worker has stopped")),
        "{lines:#?}"
    );
    assert!(TcpStream::connect(addr).is_err(), "nobody listens any more");
}

#[test]
fn more_than_one_worker_without_redis_is_refused() {
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--workers", "2"]);
    assert_eq!(binary.wait_exit(TIMEOUT), Some(2), "a usage error");
    let lines = binary.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--workers 2 needs --redis")),
        "{lines:#?}"
    );
}

#[test]
fn joins_names_counts_and_leaves_reach_every_server() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("presence");
    let (_a, a) = node(&redis.url());
    let (_b, b) = node(&redis.url());
    let (mut ann, welcome) = enter(a, "room=p&name=ann");
    let ann_id = welcome["id"].as_u64().unwrap();
    assert_eq!(welcome["count"], 1);
    let (mut bob, welcome) = enter(b, "room=p");
    let bob_id = welcome["id"].as_u64().unwrap();
    assert_ne!(
        ann_id >> 32,
        bob_id >> 32,
        "each server its own ids, from Redis"
    );
    assert_eq!(
        welcome["count"], 2,
        "ann, on the other server, is counted: {welcome}"
    );
    let listed: Vec<u64> = welcome["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(
        listed.contains(&ann_id) && listed.contains(&bob_id),
        "{welcome}"
    );
    let joined = next_notice(&mut ann, "join");
    assert_eq!(
        (joined["id"].as_u64(), joined["count"].as_u64()),
        (Some(bob_id), Some(2)),
        "{joined}"
    );
    send(&mut bob, "/nick bob");
    let renamed = next_notice(&mut ann, "nick");
    assert_eq!(
        (renamed["id"].as_u64(), renamed["name"].as_str()),
        (Some(bob_id), Some("bob")),
        "{renamed}"
    );
    send(&mut ann, "/who");
    let who = next_notice(&mut ann, "who");
    assert_eq!(who["count"], 2, "{who}");
    let names: Vec<&str> = who["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"ann") && names.contains(&"bob"), "{who}");
    bob.close(None).unwrap();
    let left = next_notice(&mut ann, "leave");
    assert_eq!(
        (left["id"].as_u64(), left["count"].as_u64()),
        (Some(bob_id), Some(1)),
        "{left}"
    );
}

#[test]
fn the_members_of_a_killed_server_leave_everyone_s_view_in_time() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("presence-kill");
    let (_a, a) = node(&redis.url());
    let (mut doomed, b) = node(&redis.url());
    let (mut ann, _) = enter(a, "room=k");
    let (_bob, welcome) = enter(b, "room=k&name=bob");
    let bob_id = welcome["id"].as_u64().unwrap();
    let token = welcome["resume"].as_str().unwrap().to_owned();
    assert_eq!(next_notice(&mut ann, "join")["id"], bob_id);
    doomed.signal(libc::SIGKILL);
    doomed.wait_exit(TIMEOUT);
    let killed = Instant::now();
    // Nobody said goodbye: the entries expire, and the next beat of the
    // surviving server says bob left (within PRESENCE_TTL + BEAT_EVERY, 8 s).
    let left = next_notice(&mut ann, "leave");
    assert_eq!(
        (left["id"].as_u64(), left["count"].as_u64()),
        (Some(bob_id), Some(1)),
        "{left}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(9),
        "{:?}",
        killed.elapsed()
    );
    send(&mut ann, "/who");
    assert_eq!(next_notice(&mut ann, "who")["count"], 1);
    // Bob's page reconnects to the surviving server with its token: its
    // id and name come back, though its server never said goodbye.
    let (_back, again) = enter(a, &format!("room=k&resume={token}"));
    assert_eq!(
        (again["id"].as_u64(), again["name"].as_str()),
        (Some(bob_id), Some("bob")),
        "{again}"
    );
    let joined = next_notice(&mut ann, "join");
    assert_eq!(
        (joined["id"].as_u64(), joined["count"].as_u64()),
        (Some(bob_id), Some(2)),
        "{joined}"
    );
}

#[test]
fn a_resume_token_brings_the_member_back_on_any_server() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start("token");
    let (_a, a) = node(&redis.url());
    let (_b, b) = node(&redis.url());
    let (mut ann, welcome) = enter(a, "room=t&name=ann");
    let (ann_id, token) = (
        welcome["id"].as_u64().unwrap(),
        welcome["resume"].as_str().unwrap().to_owned(),
    );
    let (mut watcher, _) = enter(b, "room=t");
    assert_eq!(next_notice(&mut ann, "join")["count"], 2);
    ann.close(None).unwrap();
    assert_eq!(next_notice(&mut watcher, "leave")["id"], ann_id);
    // On the other server: the same id and name, from Redis.
    let (_back, again) = enter(b, &format!("room=t&resume={token}"));
    assert_eq!(again["id"], ann_id, "{again}");
    assert_eq!(again["name"], "ann", "{again}");
    let joined = next_notice(&mut watcher, "join");
    assert_eq!(
        (joined["id"].as_u64(), joined["name"].as_str()),
        (Some(ann_id), Some("ann"))
    );
    // Once: a second comeback with it is refused (the member is back).
    let (mut twice, refused_welcome) = enter(a, &format!("room=t&resume={token}"));
    assert_ne!(refused_welcome["id"], ann_id);
    next_notice(&mut twice, "resume_refused");
    // A forged token is refused too.
    let forged = format!("{ann_id}.{}", "0".repeat(32));
    let (mut forger, welcome) = enter(a, &format!("room=t&resume={forged}"));
    assert_ne!(welcome["id"], ann_id);
    next_notice(&mut forger, "resume_refused");
}

/// `/readyz` says ready.
fn assert_ready(metrics: SocketAddr) {
    let ready = common::get(metrics, "/readyz");
    let body = String::from_utf8_lossy(&ready.body);
    assert_eq!(ready.status, 200, "{body}");
}

#[test]
fn readyz_and_the_metrics_follow_redis_going_and_coming_back() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start("ready");
    let binary = Binary::start(&[
        "--addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--redis",
        &redis.url(),
    ]);
    binary.listening_addr();
    let metrics = binary.metrics_addr();
    // Both connections up (each logs it once).
    for _ in 0..2 {
        binary.wait_for_line("): connected");
    }
    assert_ready(metrics);

    redis.kill();
    // Said once per connection, whatever the socket reported.
    binary.wait_for_line("retrying");
    let ready = common::get(metrics, "/readyz");
    assert_eq!(ready.status, 503);
    let body = String::from_utf8(ready.body).unwrap();
    assert!(body.starts_with("not ready: Redis unreachable"), "{body}");
    assert_eq!(body.lines().count(), 1, "one line: {body}");
    // Alive all the while: the loop answers.
    assert_eq!(common::get(metrics, "/healthz").status, 200);

    redis.restart();
    wait_reconnected(&binary);
    assert_ready(metrics);

    // What /metrics says of it, read with Prometheus's parser.
    if !common::have_parser() {
        return;
    }
    let scrape = common::scrape(metrics);
    for conn in ["commands", "subscriber"] {
        let labels = [("conn", conn)];
        assert_eq!(scrape.value("eddy_redis_reconnects_total", &labels), 1.0);
        assert!(scrape.value("eddy_redis_failures_total", &labels) >= 1.0);
    }
    // Scripts and commands; the subscriber's may all wait for a room.
    assert!(scrape.value("eddy_redis_commands_total", &[("conn", "commands")]) >= 1.0);
    // The scripts loaded at each connection were answered, and timed.
    assert!(scrape.value("eddy_redis_reply_seconds_count", &[]) >= 2.0);
}
