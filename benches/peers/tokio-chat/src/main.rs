//! A benchmark peer for Eddy: the seed's chat protocol written the way a Rust
//! user would write it instead, in the shape of tokio-tungstenite's own chat
//! example (`examples/server.rs`): one task per client, an unbounded channel
//! per client, and a shared `Arc<Mutex<HashMap<_, Sender>>>` peer map on
//! tokio's multi-thread runtime.
//!
//! Protocol (the seed tutorial's final Tornado server):
//! - on open, the newcomer gets `{"type":"sys","message":"Welcome to WebSocket"}`
//!   and every other client `{"type":"sys","message":"<id> has joined"}`;
//! - a text frame goes to every client, the sender included, as
//!   `{"type":"user","id":<id>,"message":"<text>"}`;
//! - on close, the rest get `{"type":"sys","message":"<id> has left"}`.
//!
//! Where it departs from the example: ids come from a counter rather than the
//! peer's address (the protocol shows them), the sender hears its own line
//! (the protocol says so), each event is serialized once and the one
//! `Message` is cloned into every channel, and an accept error is logged
//! rather than ending the server. tungstenite's configuration is its default,
//! untuned: that is what this peer stands for. Any path is accepted, `/soc`
//! included. `--addr HOST:PORT` (port 0 picks a free one); once bound it
//! prints `listening on HOST:PORT` to stderr. SIGTERM ends it (the default
//! action).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_util::{StreamExt, TryStreamExt, future, pin_mut};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Where a client's task receives the frames others send it.
type Tx = UnboundedSender<Message>;
/// Every open client by id, as the example's map of address to sender.
type PeerMap = Arc<Mutex<HashMap<u64, Tx>>>;

/// Where the server listens unless `--addr` says otherwise (the tutorial's port).
const DEFAULT_ADDR: &str = "127.0.0.1:8000";
/// How long to wait after a failed accept (EMFILE and the like) before the
/// next one, so a full fd table doesn't spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The next client's id; ids start at 1 and are never reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One event on the wire. Internally tagged, so `"type"` comes first, as in
/// the Tornado server's dicts.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event<'a> {
    Sys { message: &'a str },
    User { id: u64, message: &'a str },
}

impl Event<'_> {
    /// Serializes the event once; the `Message` is then cloned per peer,
    /// which shares its bytes.
    fn encode(&self) -> Message {
        Message::text(serde_json::to_string(self).expect("an Event always serializes"))
    }
}

/// Queues `message` on every peer in `peers`. A send fails only when that
/// peer's task is already ending, and it removes itself then.
fn send_to_all(peers: &HashMap<u64, Tx>, message: &Message) {
    for tx in peers.values() {
        let _ = tx.unbounded_send(message.clone());
    }
}

async fn handle_connection(peer_map: PeerMap, raw_stream: TcpStream, addr: SocketAddr) {
    let ws_stream = match tokio_tungstenite::accept_async(raw_stream).await {
        Ok(ws_stream) => ws_stream,
        Err(e) => {
            eprintln!("handshake with {addr} failed: {e}");
            return;
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);

    // Welcome, then the join to the others, then into the map: the order of
    // the Tornado server's open(), done under the lock so no line or join
    // can slip in between.
    let (tx, rx) = unbounded();
    {
        let mut peers = peer_map.lock().expect("peer map poisoned");
        let _ = tx.unbounded_send(
            Event::Sys {
                message: "Welcome to WebSocket",
            }
            .encode(),
        );
        let joined = format!("{id} has joined");
        send_to_all(&peers, &Event::Sys { message: &joined }.encode());
        peers.insert(id, tx);
    }

    let (outgoing, incoming) = ws_stream.split();

    // Each text frame goes to everyone, the sender too. Other frames: pings
    // are answered by tungstenite, a close ends the stream, binary is ignored.
    let broadcast_incoming = incoming.try_for_each(|msg| {
        if let Message::Text(text) = msg {
            let line = Event::User {
                id,
                message: text.as_str(),
            }
            .encode();
            send_to_all(&peer_map.lock().expect("peer map poisoned"), &line);
        }
        future::ok(())
    });

    let receive_from_others = rx.map(Ok).forward(outgoing);

    // Whichever half ends first (close, error, or a failed write) ends both.
    pin_mut!(broadcast_incoming, receive_from_others);
    future::select(broadcast_incoming, receive_from_others).await;

    let mut peers = peer_map.lock().expect("peer map poisoned");
    peers.remove(&id);
    let left = format!("{id} has left");
    send_to_all(&peers, &Event::Sys { message: &left }.encode());
}

/// Reads `--addr HOST:PORT` (or `--addr=HOST:PORT`).
fn parse_addr() -> Result<String, String> {
    let mut addr = DEFAULT_ADDR.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--addr" {
            addr = args.next().ok_or("--addr needs HOST:PORT")?;
        } else if let Some(value) = arg.strip_prefix("--addr=") {
            addr = value.to_string();
        } else {
            return Err(format!(
                "unknown argument {arg:?}; usage: tokio-chat [--addr HOST:PORT]"
            ));
        }
    }
    Ok(addr)
}

#[tokio::main]
async fn main() {
    let addr = parse_addr().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let listener = TcpListener::bind(&addr).await.unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1);
    });
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    eprintln!("listening on {local}");

    let state = PeerMap::new(Mutex::new(HashMap::new()));
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                tokio::spawn(handle_connection(state.clone(), stream, addr));
            }
            Err(e) => {
                // The example stops at the first accept error; a server under
                // load can see EMFILE and recover, so wait a moment instead.
                eprintln!("accept: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
