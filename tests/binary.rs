//! The built `eddy` binary: flags, exit codes, the page when run from
//! elsewhere, and shutdown on SIGTERM/SIGINT.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

fn eddy(args: &[&str]) -> std::process::Output {
    // History in memory: never the shared default directory.
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["--data-dir", "off"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn help_prints_the_flag_list_and_exits_0() {
    // What the text says is checked by cli's unit tests; here, that the
    // binary prints exactly it.
    let out = eddy(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), eddy::cli::help());
}

#[test]
fn a_bad_flag_prints_usage_and_exits_2() {
    for args in [
        &["--frobnicate"][..],
        &["--addr"],
        &["--max-message-bytes", "lots"],
        &["--max-message-bytes", "1000", "--max-pending-bytes", "7999"],
    ] {
        let out = eddy(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("usage: eddy"), "{args:?}: {err}");
    }
}

#[test]
fn an_address_in_use_is_one_clear_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = eddy(&["--addr", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[test]
fn an_explicit_template_dir_without_index_html_is_a_startup_error() {
    let dir = std::env::temp_dir().join(format!("eddy-empty-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = eddy(&[
        "--addr",
        "127.0.0.1:0",
        "--templates",
        dir.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("index.html")
    );
}

#[test]
fn run_from_another_directory_it_serves_the_built_in_page() {
    // A fresh, empty directory: no templates/ to find there.
    let dir = std::env::temp_dir().join(format!("eddy-elsewhere-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = Binary::start_in(&["--addr", "127.0.0.1:0"], Some(&dir));
    let addr = binary.listening_addr();
    let mut stream = tcp(addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream, false);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(response.body, include_bytes!("../templates/index.html"));
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0"]);
    let addr = binary.listening_addr();
    let mut clients: Vec<_> = (0..10).map(|_| join(addr)).collect();
    binary.signal(libc::SIGTERM);
    for client in &mut clients {
        let code = loop {
            match client.read() {
                Ok(Message::Text(_)) => continue, // join notices
                Ok(Message::Close(Some(frame))) => break frame.code,
                other => panic!("expected close 1001, got {other:?}"),
            }
        };
        assert_eq!(code, CloseCode::Away);
    }
    assert_eq!(binary.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn sigint_stops_accepting_and_exits_0_even_with_a_client_that_never_answers() {
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0"]);
    let addr = binary.listening_addr();
    // This client never reads its close frame nor closes: the shutdown's
    // 2 s grace period ends it.
    let _silent = join(addr);
    binary.signal(libc::SIGINT);
    binary.wait_for_line("SIGINT: shutting down");
    binary.wait_for_line("closing 1 connections");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting while shutting down"
    );
    assert_eq!(binary.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn logs_at_info_when_rust_log_is_unset() {
    // Binary::start removes RUST_LOG; the startup lines are info.
    let binary = Binary::start(&["--addr", "127.0.0.1:0"]);
    let line = binary.wait_for_line("listening on");
    assert!(line.contains("INFO"), "{line}");
}
