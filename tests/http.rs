//! Plain HTTP against a real server: every status of the routing table,
//! keep-alive, pipelining, and when the connection closes.

mod common;

use std::io::{Read, Write};

use common::*;

const PAGE: &[u8] = include_bytes!("../templates/index.html");

/// Sends `request` alone and returns (status, connection closed afterwards).
fn status_and_close(addr: std::net::SocketAddr, request: &str) -> (u16, String, bool) {
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap();
    let head_only = request.starts_with("HEAD");
    let response = read_response(&mut stream, head_only);
    assert!(
        response.header("content-length").is_some(),
        "every response has Content-Length: {}",
        response.head
    );
    // If the server keeps the connection, a second request is answered;
    // if it closes, we read EOF.
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut byte = [0u8; 1];
    let closed = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => panic!("{e}"),
    };
    (response.status, response.head, closed)
}

#[test]
fn get_root_serves_the_page() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream, false);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        response.header("content-length"),
        Some(PAGE.len().to_string().as_str())
    );
    assert_eq!(response.body, PAGE);
}

#[test]
fn head_root_sends_headers_only() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = read_response(&mut stream, true);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(PAGE.len().to_string().as_str())
    );
    // No body came: the next bytes are the next response.
    assert_eq!(read_response(&mut stream, false).status, 404);
}

#[test]
fn every_status_of_the_table() {
    let server = TestServer::start();
    let addr = server.addr;
    let upgrade = |extra: &str| upgrade_request(addr, extra);
    let cases: Vec<(&str, String, u16, bool)> = vec![
        ("unparseable", "NOT HTTP AT ALL\r\n\r\n".into(), 400, true),
        (
            "bad version",
            "GET / HTTP/3.0\r\nHost: x\r\n\r\n".into(),
            400,
            true,
        ),
        (
            "head over 8 KiB",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            431,
            true,
        ),
        (
            "transfer-encoding",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            501,
            true,
        ),
        (
            "a body",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".into(),
            413,
            true,
        ),
        (
            "a GET with a body",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".into(),
            413,
            true,
        ),
        (
            "POST",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
            405,
            false,
        ),
        (
            "PUT",
            "PUT /soc HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            405,
            false,
        ),
        (
            "GET /",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            200,
            false,
        ),
        (
            "HEAD /",
            "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            200,
            false,
        ),
        ("valid upgrade", upgrade(""), 101, false),
        (
            "/soc without upgrade",
            "GET /soc HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            false,
        ),
        (
            "no Connection: upgrade",
            upgrade("").replace("Connection: Upgrade\r\n", ""),
            400,
            true,
        ),
        (
            "bad key",
            upgrade("").replace("dGhlIHNhbXBsZSBub25jZQ==", "nope"),
            400,
            true,
        ),
        (
            "version 8",
            upgrade("").replace("Version: 13", "Version: 8"),
            426,
            true,
        ),
        (
            "other path",
            "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            404,
            false,
        ),
        (
            "other path, upgrade",
            upgrade("").replace("/soc", "/chat"),
            404,
            true,
        ),
        (
            "HEAD other path",
            "HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            404,
            false,
        ),
    ];
    for (what, request, status, closes) in cases {
        if status == 101 {
            let mut stream = tcp(addr);
            stream.write_all(request.as_bytes()).unwrap();
            let response = read_response(&mut stream, true);
            assert_eq!(response.status, 101, "{what}");
            assert_eq!(response.header("upgrade"), Some("websocket"));
            assert_eq!(
                response.header("sec-websocket-accept"),
                Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            );
            continue;
        }
        let (got, head, closed) = status_and_close(addr, &request);
        assert_eq!(got, status, "{what}: {head}");
        assert_eq!(closed, closes, "{what}: closes? {head}");
        if status == 405 {
            assert!(head.contains("Allow: GET, HEAD\r\n"), "{head}");
        }
        if status == 426 {
            assert!(head.contains("Sec-WebSocket-Version: 13\r\n"), "{head}");
        }
    }
    assert_room_works(addr);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let response = read_response(&mut stream, false);
        assert_eq!(
            (response.status, response.header("connection")),
            (200, None)
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    // All in one write; the last one asks to close.
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD / HTTP/1.1\r\nHost: x\r\n\r\n\
              GET / HTTP/1.1\r\nHost: x\r\n\r\n\
              DELETE / HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
              GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let statuses: Vec<u16> = [false, true, false, false, false]
        .iter()
        .map(|&head| read_response(&mut stream, head).status)
        .collect();
    assert_eq!(statuses, [404, 200, 200, 405, 404]);
    // Nothing after the request that said close.
    assert!(read_to_close(&mut stream).is_empty());
}

#[test]
fn connection_close_is_honoured() {
    let server = TestServer::start();
    let reply = http_exchange(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(reply.contains("Connection: close\r\n"));
    assert!(reply.ends_with("</html>\n"));
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let server = TestServer::start();
    let (status, _, closed) = status_and_close(server.addr, "GET / HTTP/1.0\r\n\r\n");
    assert_eq!((status, closed), (200, true));
    let (status, head, closed) = status_and_close(
        server.addr,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!((status, closed), (200, false));
    assert!(head.contains("Connection: keep-alive\r\n"));
}

#[test]
fn a_request_trickled_byte_by_byte_is_answered() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    stream.set_nodelay(true).unwrap();
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
        stream.write_all(&[*byte]).unwrap();
    }
    assert_eq!(read_response(&mut stream, false).status, 200);
}

#[test]
fn a_client_that_half_closes_still_gets_its_answer() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = read_to_close(&mut stream);
    assert!(reply.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(reply.ends_with(PAGE));
}

#[test]
fn the_page_revalidates_with_its_etag_and_gets_304() {
    let server = TestServer::start();
    let mut stream = tcp(server.addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_response(&mut stream, false);
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    assert_eq!(first.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(first.header("referrer-policy"), Some("no-referrer"));
    assert!(
        first
            .header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );

    // The browser's revalidation: same tag, no body; the connection goes on.
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let again = read_response(&mut stream, true);
    assert_eq!(again.status, 304);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    stream
        .write_all(b"GET /chat.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let script = read_response(&mut stream, false);
    assert_eq!(
        script.status, 200,
        "nothing after the 304 was taken for a body"
    );
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(script.body, include_bytes!("../templates/chat.js"));
}

#[test]
fn malformed_heads_are_refused_and_nothing_after_them_is_answered() {
    let server = TestServer::start();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n b\r\n\r\n",
            "400",
        ),
        (
            "NUL in a header",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
            "400",
        ),
        (
            "NUL in the target",
            b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
        ),
        ("65 headers", &[], "431"),
        (
            "a body",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
            "413",
        ),
    ];
    let many_headers: String = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..64).map(|i| format!("X-{i}: y\r\n")).collect::<String>()
    );
    for (what, head, status) in cases {
        let head = if head.is_empty() {
            many_headers.as_bytes()
        } else {
            head
        };
        // A valid request pipelined behind the bad one must not be answered.
        let mut request = head.to_vec();
        request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let reply = http_exchange(server.addr, &request);
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {reply}"
        );
        assert_eq!(
            reply.matches("HTTP/1.1 ").count(),
            1,
            "{what}: a second response: {reply}"
        );
    }
    assert_room_works(server.addr);
}
