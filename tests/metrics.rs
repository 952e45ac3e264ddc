//! The metrics listener (`--metrics-addr`): `/metrics` read back with
//! Prometheus's own parser (Python's `prometheus_client`) and checked
//! against what the test did; `/healthz` and `/readyz`; what else that
//! listener answers, and its own connection cap. (Readiness with Redis
//! gone is in `tests/redis.rs`, with the Redis helpers.)
//!
//! Needs `python3` with `prometheus_client` (`pip install
//! prometheus_client`); without it the parsing tests are skipped with a
//! loud notice, unless `CI` is set: then they fail.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;
use eddy::Config;

/// A chat server with a metrics listener.
fn server_with_metrics(config: Config) -> (TestServer, SocketAddr) {
    let server = TestServer::chat(Config {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..config
    });
    let metrics = server.metrics.expect("a metrics listener");
    (server, metrics)
}

#[test]
fn metrics_parse_and_count_what_the_clients_did() {
    if !have_parser() {
        return;
    }
    let (server, metrics) = server_with_metrics(config());
    let mut clients: Vec<Client> = (0..3).map(|_| join(server.addr)).collect();
    // The first hears the two after it join, the second the third.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in i + 1..3 {
            recv_joined(client);
        }
    }
    let before = scrape(metrics);
    assert_eq!(before.value("eddy_connections", &[("stage", "open")]), 3.0);
    assert_eq!(before.value("eddy_connections", &[("stage", "http")]), 0.0);
    assert_eq!(
        before.value("eddy_connections_total", &[("result", "accepted")]),
        3.0,
        "the metrics listener's own connection is not a client"
    );
    assert_eq!(
        before.value("eddy_websockets_total", &[("result", "opened")]),
        3.0
    );
    assert_eq!(before.value("eddy_rooms", &[]), 1.0);

    for i in 0..10 {
        send(&mut clients[0], &format!("line {i}"));
    }
    for client in &mut clients {
        for i in 0..10 {
            assert_eq!(recv_user_line(client)["message"], format!("line {i}"));
        }
    }
    let after = scrape(metrics);
    let delta = |name: &str| after.value(name, &[]) - before.value(name, &[]);
    assert_eq!(
        delta("eddy_deliveries_total"),
        30.0,
        "10 lines to 3 clients"
    );
    assert_eq!(delta("eddy_lines_total"), 10.0);
    assert_eq!(after.value("eddy_history_memory_lines", &[]), 10.0);
    // Each line's frame to each client is more than its JSON's 40 bytes;
    // each masked client frame is 6 bytes of header and mask and the text.
    assert!(delta("eddy_sent_bytes_total") >= 30.0 * 40.0);
    assert!(delta("eddy_received_bytes_total") >= 10.0 * (6.0 + 6.0));
    assert!(delta("eddy_loop_turn_seconds_count") > 0.0);
    assert_eq!(
        after.value("eddy_loop_turn_seconds_bucket", &[("le", "+Inf")]),
        after.value("eddy_loop_turn_seconds_count", &[])
    );
    assert!(after.value("eddy_loop_events_per_turn_count", &[]) > 0.0);

    assert_eq!(after.type_of("eddy_deliveries_total"), "counter");
    assert_eq!(after.type_of("eddy_connections"), "gauge");
    assert_eq!(after.type_of("eddy_loop_turn_seconds_bucket"), "histogram");
    assert_eq!(
        after.value("eddy_rate_limited_total", &[("action", "refused")]),
        0.0
    );
}

#[test]
fn rate_limited_lines_are_counted() {
    if !have_parser() {
        return;
    }
    let (server, metrics) = server_with_metrics(Config {
        rate_limit: Some(eddy::rate::RateLimit {
            burst: 2,
            per_second: 0.001,
        }),
        ..config()
    });
    let mut client = join(server.addr);
    for i in 0..3 {
        send(&mut client, &format!("line {i}"));
    }
    recv_user_line(&mut client);
    recv_user_line(&mut client);
    // The third is refused with a notice.
    let notice = recv_json(&mut client);
    assert_eq!(notice["type"], "sys", "{notice}");
    let after = scrape(metrics);
    assert_eq!(
        after.value("eddy_rate_limited_total", &[("action", "refused")]),
        1.0
    );
    assert_eq!(after.value("eddy_lines_total", &[]), 2.0);
}

#[test]
fn health_and_readiness_answer_and_nothing_else_is_served_there() {
    let (server, metrics) = server_with_metrics(config());
    let health = get(metrics, "/healthz");
    assert_eq!((health.status, &health.body[..]), (200, &b"ok\n"[..]));
    assert_eq!(health.header("cache-control"), Some("no-store"));
    let ready = get(metrics, "/readyz");
    assert_eq!((ready.status, &ready.body[..]), (200, &b"ready\n"[..]));

    // No page, no files, no WebSockets on the metrics listener; and no
    // metrics on the chat's port.
    assert_eq!(get(metrics, "/").status, 404);
    let upgrade = http_exchange(metrics, upgrade_request(metrics, "").as_bytes());
    assert!(upgrade.starts_with("HTTP/1.1 404 "), "{upgrade}");
    assert_eq!(get(server.addr, "/metrics").status, 404);

    // HEAD has the head alone; a connection takes request after request.
    let mut stream = tcp(metrics);
    stream
        .write_all(
            b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let head = read_response(&mut stream, true);
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    let health = read_response(&mut stream, false);
    assert_eq!((health.status, &health.body[..]), (200, &b"ok\n"[..]));
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream, false).status, 405);
}

#[test]
fn at_the_connection_cap_not_ready_but_still_scraped() {
    let (server, metrics) = server_with_metrics(Config {
        max_connections: Some(1),
        ..config()
    });
    // A scraper's connection, held open, takes no place from the chat's.
    let mut scraper = tcp(metrics);
    scraper
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut scraper, false).status, 200);
    let _client = join(server.addr);
    let ready = get(metrics, "/readyz");
    assert_eq!(ready.status, 503);
    let body = String::from_utf8(ready.body).unwrap();
    assert_eq!(body, "not ready: at --max-connections (1)\n");
    // The chat's port refuses the next client; the metrics listener does not.
    let refused = http_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    let response = get(metrics, "/metrics");
    assert_eq!(response.status, 200);
    let text = String::from_utf8(response.body).unwrap();
    assert!(
        text.contains("eddy_connections_total{result=\"refused\"} 1\n")
            && text.contains("eddy_connections_total{result=\"accepted\"} 1\n"),
        "{text}"
    );
}

#[test]
fn the_metrics_listener_has_a_connection_cap_of_its_own() {
    let (_server, metrics) = server_with_metrics(config());
    // Each held open with an answered request, so the server has them all.
    let mut held = Vec::new();
    for _ in 0..eddy::server::MAX_METRICS_CONNECTIONS {
        let mut stream = tcp(metrics);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut stream, false).status, 200);
        held.push(stream);
    }
    let over = http_exchange(metrics, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(over.starts_with("HTTP/1.1 503 "), "{over}");
    assert!(over.contains("too many metrics connections"), "{over}");
}

#[test]
fn history_on_disk_is_counted_and_a_vanished_data_directory_is_not_ready() {
    if !have_parser() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("eddy-metrics-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (server, metrics) = server_with_metrics(Config {
        data_dir: Some(dir.clone()),
        // Synced on the loop before a line goes out: timed by then.
        fsync: eddy::config::Fsync::Always,
        ..config()
    });
    let mut client = join(server.addr);
    for i in 0..5 {
        send(&mut client, &format!("kept {i}"));
    }
    for _ in 0..5 {
        recv_user_line(&mut client);
    }
    // A line reaches clients only once its room's log has it.
    let after = scrape(metrics);
    assert_eq!(after.value("eddy_history_disk_lines", &[]), 5.0);
    assert!(after.value("eddy_history_disk_bytes", &[]) > 5.0 * 20.0);
    assert_eq!(after.value("eddy_log_appended_lines_total", &[]), 5.0);
    let appends = after.value("eddy_log_appends_total", &[]);
    assert!((1.0..=5.0).contains(&appends), "{appends}");
    assert_eq!(
        after.value("eddy_log_fsync_seconds_count", &[]),
        appends,
        "one sync per batch with --fsync always"
    );
    assert!(after.value("eddy_log_fsync_seconds_sum", &[]) > 0.0);
    assert_eq!(get(metrics, "/readyz").status, 200);

    // The directory gone (unmounted, deleted): no longer ready, and why.
    std::fs::remove_dir_all(&dir).unwrap();
    let ready = get(metrics, "/readyz");
    assert_eq!(ready.status, 503);
    let body = String::from_utf8(ready.body).unwrap();
    assert!(
        body.starts_with("not ready: data directory") && body.contains("not writable"),
        "{body}"
    );
}

/// Reads until the `caught_up` notice; returns the lines' seqs before it.
fn lines_until_caught_up(client: &mut Client) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let message = recv_json(client);
        if message["event"] == "caught_up" {
            return seqs;
        }
        if message["type"] == "user" {
            seqs.push(message["seq"].as_u64().unwrap());
        }
    }
}

#[test]
fn resumes_resets_history_feeds_and_close_codes_are_counted() {
    if !have_parser() {
        return;
    }
    let (server, metrics) = server_with_metrics(config());
    let (mut first, welcome_message) = enter(server.addr, "");
    let (_, epoch, _) = welcome(&welcome_message);
    for i in 0..3 {
        send(&mut first, &format!("line {i}"));
    }
    for _ in 0..3 {
        recv_user_line(&mut first);
    }
    // Resumed from the start: fed the three lines from history.
    let (mut resumed, _) = enter(server.addr, &format!("since=0&epoch={epoch}"));
    assert_eq!(lines_until_caught_up(&mut resumed), [1, 2, 3]);
    // From another epoch: told reset, then replayed (from history too).
    let (mut reset, _) = enter(server.addr, "since=2&epoch=aaaaaaaaaaaaaaaa");
    assert_eq!(recv_json(&mut reset)["event"], "reset");
    assert_eq!(lines_until_caught_up(&mut reset), [1, 2, 3]);
    // A client that breaks the protocol (an unmasked frame) gets 1002.
    let mut rude = raw_upgrade(server.addr, &unmasked_frame(0x1, b"plain"));
    assert_eq!(read_close_code(&mut rude), 1002);

    let after = scrape(metrics);
    assert_eq!(
        after.value("eddy_resumes_total", &[("result", "continued")]),
        1.0
    );
    assert_eq!(
        after.value("eddy_resumes_total", &[("result", "reset")]),
        1.0
    );
    assert_eq!(
        after.value("eddy_resets_total", &[("cause", "resume")]),
        1.0
    );
    assert_eq!(after.value("eddy_resets_total", &[("cause", "store")]), 0.0);
    assert_eq!(after.value("eddy_history_fed_lines_total", &[]), 6.0);
    assert_eq!(after.value("eddy_caught_up_total", &[]), 2.0);
    assert_eq!(after.value("eddy_history_gaps_total", &[]), 0.0);
    assert_eq!(
        after.value("eddy_close_frames_sent_total", &[("code", "1002")]),
        1.0
    );
}
