//! Connection limits: a cap on connections (503 past it), an opt-in cap per
//! address, and running out of file descriptors without falling over.

mod common;

use std::net::TcpStream;

use common::*;
use eddy::Config;

/// A plain HTTP request on a fresh connection, expecting 503 and the end.
fn assert_refused(addr: std::net::SocketAddr) {
    let reply = http_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{reply}"
    );
}

#[test]
fn past_the_connection_cap_clients_get_503_until_someone_leaves() {
    let server = TestServer::chat(Config {
        max_connections: Some(3),
        ..config()
    });
    let (mut a, _) = join_with_id(server.addr);
    let (b, b_id) = join_with_id(server.addr);
    let c = join(server.addr);
    assert_refused(server.addr);
    drop(b);
    // Wait for B to leave (a's notices: joins first, then the departure).
    while recv_json(&mut a)["message"] != format!("{b_id} has left") {}
    let mut d = join(server.addr);
    send(&mut d, "room for one more");
    assert_eq!(recv_user_line(&mut d)["message"], "room for one more");
    // Back to one client: a fresh pair fits under the cap again.
    drop((a, c));
    let mut left = 0;
    while left < 2 {
        if recv_json(&mut d)["message"]
            .as_str()
            .unwrap()
            .ends_with(" has left")
        {
            left += 1;
        }
    }
    assert_room_works(server.addr);
}

#[test]
fn the_cap_per_address_is_opt_in_and_released_on_leaving() {
    let server = TestServer::chat(Config {
        max_connections_per_ip: Some(2),
        ..config()
    });
    let (mut a, _) = join_with_id(server.addr);
    let (b, b_id) = join_with_id(server.addr);
    assert_refused(server.addr);
    drop(b);
    while recv_json(&mut a)["message"] != format!("{b_id} has left") {}
    join(server.addr);
}

#[test]
fn running_out_of_descriptors_pauses_accepting_once_and_recovers() {
    // 40 descriptors, and a cap that does not stop it first: accept() fails
    // with EMFILE once about 30 clients are in.
    let mut binary = Binary::start_with_ulimit(
        &[
            "--addr",
            "127.0.0.1:0",
            "--max-connections",
            "1000",
            "--rate-limit",
            "off",
        ],
        "-n 40",
    );
    let addr = binary.listening_addr();
    let crowd: Vec<TcpStream> = (0..60).map(|_| tcp(addr)).collect();
    binary.wait_for_line("pausing accepts");
    drop(crowd);
    // Descriptors come back; the server accepts again by itself.
    let mut client = join(addr);
    send(&mut client, "back in business");
    assert_eq!(recv_user_line(&mut client)["message"], "back in business");
    assert_room_works(addr);
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(std::time::Duration::from_secs(5)), Some(0));
    let log = binary.stderr_lines();
    let warnings = log.iter().filter(|l| l.contains("pausing accepts")).count();
    assert_eq!(warnings, 0, "warned once (read above), not again: {log:?}");
}

#[test]
fn at_startup_the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let (_, hard) = eddy::limits::fd_limits().unwrap();
    let binary = Binary::start_with_ulimit(&["--addr", "127.0.0.1:0"], "-Sn 100");
    // Logged in this order: the cap when binding, the limit once bound.
    let cap = binary.wait_for_line("accepting up to");
    let expected = hard - eddy::limits::FD_RESERVE;
    assert!(
        cap.contains(&format!("accepting up to {expected} connections")),
        "{cap}"
    );
    let line = binary.wait_for_line("open-file limit");
    assert!(
        line.contains(&format!("open-file limit {hard} (soft limit was 100")),
        "{line}"
    );
}

#[test]
fn the_accept_backlog_is_widened_past_the_default_128() {
    let binary = Binary::start(&["--addr", "127.0.0.1:0"]);
    let port = binary.listening_addr().port();
    // `ss` shows a listening socket's backlog in its Send-Q column.
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) to read the listener's backlog");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let send_q: i32 = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no listener on port {port} in {line:?}"))
        .parse()
        .unwrap();
    assert_eq!(send_q, eddy::limits::LISTEN_BACKLOG.min(somaxconn()));
}

fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
