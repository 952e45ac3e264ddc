//! TLS on the chat port (`--tls-cert`, `--tls-key`; `--features tls`),
//! with real rustls clients trusting a CA the test makes: the page over
//! HTTPS, the chat over `wss://`, plain HTTP and a trickled handshake on
//! the TLS port, a slow reader behind TLS, SIGHUP reloading the
//! certificate, and bad files at startup.
#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pki::*;
use common::*;
use eddy::Config;
use eddy::config::TlsFiles;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ProtocolVersion};
use tungstenite::Message;

/// An in-process chat server serving TLS with `pki`'s files.
fn tls_server(pki: &Pki, config: Config) -> TestServer {
    TestServer::chat(Config {
        tls: Some(TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        }),
        ..config
    })
}

/// The certificate the server presented on `stream`.
fn presented(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

#[test]
fn the_page_is_served_over_tls_1_3_and_1_2_with_alpn_http_1_1() {
    let pki = Pki::new("page");
    let server = tls_server(&pki, config());
    for (version, expected) in [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ] {
        // A browser offers h2 first; the server picks what it speaks.
        let client = pki.client_with(&[version], &[b"h2", b"http/1.1"]);
        let mut stream = tls_connect(server.addr, &client);
        assert_eq!(stream.conn.protocol_version(), Some(expected));
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(presented(&stream), pki.issued.to_vec());
        let response = https_get(&mut stream, "/");
        assert!(
            response.head.starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            response.head
        );
        let page = String::from_utf8(response.body).unwrap();
        assert!(
            page.contains("<title>Eddy chat</title>"),
            "the chat page: {page}"
        );
        // Kept alive: a second request on the same TLS session.
        let response = https_get(&mut stream, "/nowhere");
        assert!(
            response.head.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{}",
            response.head
        );
    }
    // A client that speaks only h2 is refused in the handshake.
    let h2_only = pki.client_with(&[&rustls::version::TLS13], &[b"h2"]);
    let tcp = tcp(server.addr);
    let conn = ClientConnection::new(h2_only, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let err = loop {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) if stream.conn.is_handshaking() => continue,
            Ok(_) => panic!("an h2-only client was served"),
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("NoApplicationProtocol"),
        "refused for its protocol: {err}"
    );
    assert_room_works_over_tls(server.addr, &pki);
}

/// Two wss clients hear each other: the server is still serving.
fn assert_room_works_over_tls(addr: SocketAddr, pki: &Pki) {
    let client = pki.client();
    let (mut a, _) = wss_join(addr, &client);
    let (mut b, b_id) = wss_join(addr, &client);
    assert_eq!(
        wss_json(&mut a)["message"],
        format!("{b_id} has joined"),
        "a hears b join"
    );
    b.send(Message::text("still here")).unwrap();
    for client in [&mut a, &mut b] {
        let line = wss_json(client);
        assert_eq!(
            (line["id"].as_u64(), line["message"].as_str()),
            (Some(b_id), Some("still here"))
        );
    }
}

#[test]
fn chat_over_wss_reaches_every_client_sender_included() {
    let pki = Pki::new("chat");
    let server = tls_server(&pki, config());
    let client = pki.client();
    let mut clients = Vec::new();
    for n in 0..3 {
        let (joined, id) = wss_join(server.addr, &client);
        for (earlier, _) in &mut clients {
            let notice = wss_json(earlier);
            assert_eq!(notice["message"], format!("{id} has joined"), "{n}");
        }
        clients.push((joined, id));
    }
    // Ten lines from each, large enough to span several TLS records.
    let long = "é".repeat(20_000);
    for (client, id) in &mut clients {
        for n in 0..10 {
            client
                .send(Message::text(format!("{id}:{n}:{long}")))
                .unwrap();
        }
    }
    let ids: Vec<u64> = clients.iter().map(|(_, id)| *id).collect();
    for (client, _) in &mut clients {
        let mut seen: Vec<(u64, String)> = Vec::new();
        while seen.len() < 30 {
            let line = wss_json(client);
            assert_eq!(line["type"], "user", "{line}");
            let text = line["message"].as_str().unwrap();
            let (who, rest) = text.split_once(':').unwrap();
            let (n, padding) = rest.split_once(':').unwrap();
            assert_eq!(padding, long, "the line arrived whole");
            assert_eq!(line["id"].as_u64().unwrap().to_string(), who);
            seen.push((who.parse().unwrap(), n.to_owned()));
        }
        // Each sender's lines in the order sent.
        for id in &ids {
            let order: Vec<&str> = seen
                .iter()
                .filter(|(who, _)| who == id)
                .map(|(_, n)| n.as_str())
                .collect();
            assert_eq!(order, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        }
    }
    // Closing one: the others hear it leave.
    let (mut gone, gone_id) = clients.pop().unwrap();
    gone.close(None).unwrap();
    for (client, _) in &mut clients {
        assert_eq!(wss_json(client)["message"], format!("{gone_id} has left"));
    }
}

#[test]
fn plain_http_on_the_tls_port_is_closed_without_an_answer() {
    let pki = Pki::new("plain");
    let server = tls_server(&pki, config());
    let mut stream = tcp(server.addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    // EOF, or a reset once the server closed with our bytes unread.
    let _ = stream.read_to_end(&mut reply);
    assert!(
        !reply.starts_with(b"HTTP/"),
        "no plaintext answer on the TLS port: {:?}",
        String::from_utf8_lossy(&reply)
    );
    // At most a TLS alert record (content type 21).
    assert!(reply.is_empty() || reply[0] == 21, "{reply:?}");
    assert_room_works_over_tls(server.addr, &pki);
}

#[test]
fn a_client_hello_trickled_byte_by_byte_is_cut_at_the_head_deadline() {
    let pki = Pki::new("trickle");
    let header_timeout = Duration::from_secs(1);
    let server = tls_server(
        &pki,
        Config {
            header_timeout,
            ..config()
        },
    );
    // A real client hello, as the client would send it in one piece.
    let mut conn =
        ClientConnection::new(pki.client(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert!(hello.len() > 100, "a client hello: {} bytes", hello.len());
    let mut stream = tcp(server.addr);
    // Pacing: a byte every 50 ms would take the hello many seconds.
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut answer = Vec::new();
    let closed = loop {
        if sent < hello.len() && stream.write_all(&hello[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => break Some(started.elapsed()),
            Ok(_) => answer.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break Some(started.elapsed()),
        }
        if started.elapsed() > TIMEOUT {
            break None;
        }
    };
    let after = closed.expect("the server closed the connection");
    // Nothing but, at most, an alert saying goodbye (close_notify): no
    // server hello to a hello never had in full.
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.len() == 7),
        "{answer:?}"
    );
    assert!(
        sent < hello.len(),
        "cut before the hello was whole ({sent} of {})",
        hello.len()
    );
    assert!(
        after >= header_timeout,
        "not before the deadline: {after:?}"
    );
    assert_room_works_over_tls(server.addr, &pki);
}

#[test]
fn a_slow_reader_behind_tls_falls_behind_and_is_fed_every_line_in_order() {
    let pki = Pki::new("slow");
    let server = tls_server(
        &pki,
        Config {
            max_message_bytes: 8 * 1024,
            max_pending_bytes: 64 * 1024,
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..config()
        },
    );
    let client = pki.client();
    let (mut sender, _) = wss_join(server.addr, &client);
    // The slow one: a 16 KiB receive window, so the server's queue (and
    // the records rustls holds) is what fills, not the kernel's buffers.
    let tcp = small_window_tcp(server.addr, 16 * 1024);
    let conn = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    let url = format!("wss://localhost:{}/soc", server.addr.port());
    let (mut slow, _) = tungstenite::client(url, stream).expect("wss handshake");
    let _welcome = wss_json(&mut slow);
    let _joined = wss_json(&mut sender);
    // 2,000 lines of 4 KB (8 MB, more than the kernel's largest send
    // buffer) while it reads nothing; the sender reads its own copies, so
    // it keeps up.
    const LINES: u64 = 2_000;
    let padding = "x".repeat(4000);
    for n in 1..=LINES {
        sender
            .send(Message::text(format!("{n} {padding}")))
            .unwrap();
        let own = wss_json(&mut sender);
        assert!(
            own["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{n} "))
        );
    }
    let metrics = String::from_utf8(get(server.metrics.unwrap(), "/metrics").body).unwrap();
    let fell_behind = metric(&metrics, "eddy_fell_behind_total");

    assert!(fell_behind > 0.0, "it fell behind: {fell_behind}");
    // Now it reads: every line, once, in order.
    for n in 1..=LINES {
        let line = wss_json(&mut slow);
        assert_eq!(line["seq"], n, "{n}");
        let text = line["message"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert_eq!(text.split(' ').next(), Some(n.to_string().as_str()), "{n}");
    }
    let metrics = String::from_utf8(get(server.metrics.unwrap(), "/metrics").body).unwrap();
    assert!(metric(&metrics, "eddy_history_fed_lines_total") > 0.0);
    assert_eq!(metric(&metrics, "eddy_cut_off_total"), 0.0, "never cut off");
}

/// A sample's value in Prometheus text (unlabelled).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sighup_gives_new_connections_the_new_certificate_and_keeps_the_old_on_a_bad_one() {
    let mut pki = Pki::new("sighup");
    let mut flags = vec!["--addr", "127.0.0.1:0"];
    let tls_flags = pki.flags();
    flags.extend(tls_flags.iter().map(String::as_str));
    let eddy = Binary::start(&flags);
    let addr = eddy.listening_addr();
    let client = pki.client();
    let first = pki.issued.to_vec();
    let (mut before, before_id) = wss_join(addr, &client);
    assert_eq!(presented(before.get_ref()), first);

    // A new certificate and key in the same files, then SIGHUP.
    pki.issue();
    assert_ne!(pki.issued.to_vec(), first);
    eddy.signal(libc::SIGHUP);
    eddy.wait_for_line("SIGHUP: TLS certificate and key loaded again");
    let (mut after, after_id) = wss_join(addr, &client);
    assert_eq!(
        presented(after.get_ref()),
        pki.issued.to_vec(),
        "the new one"
    );
    // The connection opened before keeps its session and chats on.
    assert_eq!(
        wss_json(&mut before)["message"],
        format!("{after_id} has joined")
    );
    before.send(Message::text("across the reload")).unwrap();
    for client in [&mut before, &mut after] {
        let line = wss_json(client);
        assert_eq!(line["id"].as_u64(), Some(before_id));
    }

    // A bad pair: logged, and the loaded one kept.
    let second = pki.issued.to_vec();
    std::fs::write(&pki.key, "not a key\n").unwrap();
    eddy.signal(libc::SIGHUP);
    let line = eddy.wait_for_line("SIGHUP: --tls-key");
    assert!(
        line.contains("keeping the certificate and key loaded before"),
        "{line}"
    );
    let stream = tls_connect(addr, &client);
    assert_eq!(presented(&stream), second);
}

#[test]
fn unusable_certificates_stop_the_server_at_startup_with_the_reason() {
    let pki = Pki::new("startup");
    let other = Pki::new("startup-other");
    let missing = pki.file("placeholder", "");
    let missing = missing.with_file_name("missing.pem");
    let not_pem = pki.file("garbage.pem", "hello\n");
    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    let cases: Vec<([String; 2], &str)> = vec![
        ([missing.display().to_string(), key.clone()], "--tls-cert"),
        (
            [not_pem.display().to_string(), key.clone()],
            "no CERTIFICATE",
        ),
        (
            [cert.clone(), not_pem.display().to_string()],
            "no PRIVATE KEY",
        ),
        (
            [cert.clone(), other.key.display().to_string()],
            "is not the key of the certificate",
        ),
    ];
    for ([cert, key], reason) in cases {
        let mut eddy = Binary::start(&[
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        assert_eq!(eddy.wait_exit(TIMEOUT), Some(1), "{cert} {key}");
        let lines = eddy.stderr_lines();
        assert!(
            lines.iter().any(|l| l.contains(reason)),
            "{reason:?} in {lines:?}"
        );
    }
    // One flag without the other is a usage error.
    let mut eddy = Binary::start(&["--addr", "127.0.0.1:0", "--tls-cert", &cert]);
    assert_eq!(eddy.wait_exit(TIMEOUT), Some(2));
    assert!(
        eddy.stderr_lines()
            .iter()
            .any(|l| l.contains("--tls-cert needs --tls-key"))
    );
}
