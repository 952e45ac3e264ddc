//! An echo at `/echo` beside the chat at `/soc`, on one server: for the
//! Autobahn|Testsuite conformance run (`.ci/run`, against `/echo`), and to
//! show that a new WebSocket endpoint is one handler and one route line.
//! On `/echo` every text and binary message goes back unchanged to its
//! sender, and the server sends nothing of its own.
//!
//! Exactly the library's loop, server and connection code serve both; the
//! [`eddy::Config`] is the suite's: messages and frames up to 16 MiB (its
//! largest), an output cap well above one such message, a larger read
//! buffer, and no heartbeat pings.
//!
//! ```sh
//! cargo run --release --example echo -- --addr 127.0.0.1:9001
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use eddy::{ChatRoom, Config, EchoHandler, Routes, Server};

/// The largest message (and frame) the suite sends: 16 MiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = match parse_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("echo: {e}\nusage: echo [--addr HOST:PORT]   (default 127.0.0.1:9001)");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        max_message_bytes: MAX_MESSAGE_BYTES,
        // The library's floor (8 messages) is well above "one message plus
        // its frame header", which is all an echo needs.
        max_pending_bytes: eddy::config::PENDING_MESSAGES_MIN * MAX_MESSAGE_BYTES,
        read_buffer_bytes: 64 * 1024,
        // The suite expects the server to send nothing of its own.
        ping_interval: None,
        ..Config::default()
    };
    let routes = Routes::new()
        .route("/soc", ChatRoom::from_config(&config))
        .route("/echo", EchoHandler);
    let mut server = match Server::bind(addr, config, routes) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("echo: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = server.stop_on_signals() {
        eprintln!("echo: {e}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--addr HOST:PORT`, the only flag.
fn parse_addr() -> Result<SocketAddr, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut addr = "127.0.0.1:9001".to_owned();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("addr") => {
                addr = parser
                    .value()
                    .and_then(|v| v.string())
                    .map_err(|e| e.to_string())?
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr}: no address"))
}
