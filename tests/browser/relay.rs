//! A TCP relay between one tab and the server, so that a test can take that
//! tab's connection away while the server, and every other client, runs on:
//! as a phone's Wi-Fi drops, not as a server restarts.
//!
//! The tab loads the page through the relay, so its socket goes through it
//! too (the page builds its socket URL from `location`). The relay listens
//! on `127.0.0.1:0`, dials the server once per connection it accepts, and
//! copies bytes with a thread per direction: std::net only, nothing async.
//! The test can
//! * [`Relay::hold`]: from then on, bytes from the server are lost on the
//!   way (as they are when a link dies with data in flight), and
//!   connections the tab opens wait, unanswered, until [`Relay::release`];
//! * [`Relay::cut`]: shut down every relayed connection, both sockets, both
//!   directions: the tab and the server each see the connection end.
//!
//! The relay keeps accepting after a cut, so the page's reconnect works
//! through it; holding first makes the reconnect wait, so that what the
//! room says in between is certainly said while the tab is away.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// A relay to one server address. Dropping it stops it and cuts everything.
pub struct Relay {
    /// Where the tab connects instead of the server.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

/// What the accepting thread, the copying threads and the test share.
struct Shared {
    /// The server's address: dialled once per accepted connection.
    server: SocketAddr,
    /// Set by [`Relay::hold`]: the server's bytes are dropped, and new
    /// connections wait. An atomic, not under the lock, so a copying thread
    /// never holds the lock while it blocks on a socket.
    held: AtomicBool,
    /// Set on drop: the accepting thread ends at its next accept.
    stopping: AtomicBool,
    /// The sockets, behind one lock so that hold/release and accept agree
    /// on which connections wait.
    sockets: Mutex<Sockets>,
}

#[derive(Default)]
struct Sockets {
    /// Connections accepted while held, relayed on release.
    waiting: Vec<TcpStream>,
    /// Both ends of every relayed connection, for [`Relay::cut`].
    relayed: Vec<TcpStream>,
}

impl Relay {
    /// Starts relaying `127.0.0.1:0` to `server`.
    pub fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            server,
            held: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(Sockets::default()),
        });
        let accepting = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                for tab in listener.incoming() {
                    if shared.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    // A failed accept is the tab's problem: it retries.
                    let Ok(tab) = tab else { continue };
                    let mut sockets = shared.lock();
                    if shared.held.load(Ordering::SeqCst) {
                        sockets.waiting.push(tab);
                    } else {
                        shared.relay(tab, &mut sockets);
                    }
                }
            })
        };
        Relay {
            addr,
            shared,
            accepting: Some(accepting),
        }
    }

    /// Loses the server's bytes from now on, and keeps new connections
    /// waiting, until [`Relay::release`].
    pub fn hold(&self) {
        // Under the lock, so that a connection accepted from now on waits.
        let _sockets = self.shared.lock();
        self.shared.held.store(true, Ordering::SeqCst);
    }

    /// Shuts down both sockets of every relayed connection.
    pub fn cut(&self) {
        for socket in self.shared.lock().relayed.drain(..) {
            // Already closed by its peer is fine: it is cut either way.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Relays again: the connections that waited first, in order.
    pub fn release(&self) {
        let mut sockets = self.shared.lock();
        self.shared.held.store(false, Ordering::SeqCst);
        for tab in std::mem::take(&mut sockets.waiting) {
            self.shared.relay(tab, &mut sockets);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dials the server for `tab` and copies both ways, a thread each.
    fn relay(self: &Arc<Self>, tab: TcpStream, sockets: &mut Sockets) {
        let Ok(server) = TcpStream::connect(self.server) else {
            // As a refused connection looks to the tab: closed at once.
            let _ = tab.shutdown(Shutdown::Both);
            return;
        };
        // No Nagle: the relay must not delay what the server sends at once.
        let _ = server.set_nodelay(true);
        let _ = tab.set_nodelay(true);
        for socket in [&tab, &server] {
            sockets
                .relayed
                .push(socket.try_clone().expect("cloning a socket"));
        }
        let (from_tab, to_server) = (tab.try_clone().unwrap(), server.try_clone().unwrap());
        thread::spawn(move || copy(from_tab, to_server, None));
        let shared = Arc::clone(self);
        thread::spawn(move || copy(server, tab, Some(&shared.held)));
    }
}

/// Copies `from` to `to` until either ends, dropping what is read while
/// `lossy` is set; then tells `to` that nothing more comes.
fn copy(mut from: TcpStream, mut to: TcpStream, lossy: Option<&AtomicBool>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if lossy.is_some_and(|held| held.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `stopping`.
        let _ = TcpStream::connect(self.addr);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
        self.shared.lock().waiting.clear();
        self.cut();
    }
}
