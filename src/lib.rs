//! Eddy: a WebSocket chat server on a hand-written, single-threaded mio
//! event loop, in the style of Tornado's `IOLoop`.
//!
//! Read it in this order; each module's own docs say what it owns:
//!
//! 1. [`ioloop`]: the event loop. One `mio::Poll`, timers, callbacks, a
//!    waker. Knows nothing of HTTP or WebSocket.
//! 2. [`server`]: the listener and the table of connections; dispatches
//!    readiness to connections and messages to their path's handler,
//!    flushes, reaps. [`groups`]: who is in which group (room).
//! 3. [`connection`]: one socket's state machine, HTTP → WebSocket → closing,
//!    over a [`transport`]: TCP, or TLS over it (`tls`, with the feature).
//! 4. [`http`]: pure request-head parsing and routing (httparse).
//! 5. [`ws`]: tungstenite over an I/O adapter, limits, close codes.
//! 6. [`output`]: the per-connection output queue and its corked flush.
//! 7. [`handler`]: the [`WebSocketHandler`] trait, [`ConnId`], [`Outbox`],
//!    [`Routes`].
//! 8. [`chat`]: the tutorial's chat room, as a handler, with [`rate`]'s
//!    flood control. [`echo`]: an echo.
//! 9. [`history`]: what a room remembers, behind one small interface;
//!    [`feed`]: each member's place in it, live or catching up. [`disk`]:
//!    the history that survives restarts, each room's [`log`] in the
//!    [`datadir`]. [`shared`]: the history many servers share in Redis,
//!    over [`redis`] connections in the loop.
//! 10. [`config`], [`cli`], [`templates`]: settings, flags, the page's files;
//!     [`logging`]: the log line; [`metrics`]: what `/metrics` shows.
//!     [`workers`]: `--workers N`, one loop per process on one port.
//!
//! ```no_run
//! use eddy::{Config, Server};
//! let config = Config::default();
//! let routes = eddy::chat::routes(&config)?;
//! let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, routes)?;
//! let addr = server.local_addr()?;
//! let handle = server.handle();
//! let thread = std::thread::spawn(move || server.run());
//! // ... talk to ws://{addr}/soc ...
//! handle.shutdown()?;
//! thread.join().unwrap()?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(missing_docs)]

pub mod chat;
pub mod cli;
pub mod config;
pub mod connection;
pub mod datadir;
pub mod disk;
pub mod echo;
pub mod feed;
pub mod groups;
pub mod handler;
pub mod history;
pub mod http;
pub mod ioloop;
pub mod limits;
pub mod log;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod random;
pub mod rate;
pub mod redis;
pub mod resp;
pub mod server;
pub mod shared;
pub mod templates;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
pub mod workers;
pub mod ws;

pub use chat::ChatRoom;
pub use config::Config;
pub use echo::EchoHandler;
pub use handler::{ConnId, Outbox, Recipients, Refusal, Request, Routes, WebSocketHandler};
pub use server::{Server, ServerHandle};
