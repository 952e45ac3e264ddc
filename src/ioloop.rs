//! The event loop: one `mio::Poll`, a timer heap, a callback queue and a waker.
//!
//! This is Eddy's version of Tornado's `IOLoop` (v4.5's `PollIOLoop`), with
//! the same names where they map one-to-one:
//!
//! | Tornado                        | here                                        |
//! |--------------------------------|---------------------------------------------|
//! | `add_handler(fd, h, events)`   | [`IoLoop::add_handler`] (mio `register`)     |
//! | `update_handler(fd, events)`   | [`IoLoop::update_handler`] (`reregister`)    |
//! | `remove_handler(fd)`           | [`IoLoop::remove_handler`] (`deregister`)    |
//! | `add_callback(cb)`             | [`IoLoop::add_callback`]                     |
//! | `call_later(delay, cb)`        | [`IoLoop::call_later`] / [`IoLoop::call_at`] |
//! | `call_at(when, cb, *args)`     | [`IoLoop::call_at_fn`] (no allocation)       |
//! | `remove_timeout(handle)`       | [`IoLoop::remove_timeout`]                   |
//! | `add_callback` from a thread   | [`LoopHandle::add_callback`] (wakes the loop)|
//! | `stop()`                       | [`IoLoop::stop`], [`LoopHandle::stop`]       |
//! | `start()`                      | [`IoLoop::start`]                            |
//!
//! Two differences, both forced by Rust's ownership rules:
//!
//! * Tornado stores a callable per file descriptor. A stored closure could not
//!   borrow the server that owns the loop, so here every ready event is
//!   dispatched by [`Token`] to one [`EventHandler`] (the server), which looks
//!   the token up in its own table.
//! * Callbacks and timers are `FnOnce(&mut S, &mut IoLoop<S>)`: they receive the
//!   state they act on instead of capturing it.
//!
//! The loop knows nothing about HTTP or WebSocket; it moves readiness, time and
//! callbacks to its [`EventHandler`]. One turn, in `PollIOLoop`'s order:
//!
//! 1. run the callbacks that were queued *before* this turn started (ones added
//!    while they run wait for the next turn, so a callback that re-adds itself
//!    cannot starve the poller);
//! 2. run the timers whose deadline has passed;
//! 3. call [`EventHandler::end_of_turn`], so everything queued so far is
//!    flushed before the loop may sleep;
//! 4. `poll`: without blocking if callbacks are waiting or the handler left
//!    work for the next turn ([`IoLoop::keep_turning`]), otherwise until the
//!    next timer's deadline (or forever); interrupted by a signal (`EINTR`),
//!    it simply ends the turn early, and the next turn polls again;
//! 5. hand each event to [`EventHandler::ready`].
//!
//! The loop also keeps two histograms of itself ([`IoLoop::write_metrics`]):
//! how long each turn's work took (from `poll` returning to the next
//! `poll`, the wait excluded) and how many events each `poll` returned.
//! Two clock reads a turn; a loop that turns slowly is the first thing an
//! operator of an event loop needs to see.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mio::event::{Event, Source};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::metrics::{self, Exposition, Histogram};

/// The token of the loop's own [`Waker`]. Handlers must not use it; the
/// server keeps its slab of connections well below it.
pub const WAKER_TOKEN: Token = Token(usize::MAX);

/// How many readiness events one `poll` call can return. More ready sockets
/// than this are simply reported by the next `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// When more than this many cancelled timers sit in the heap, and they are
/// more than half of it, the heap is rebuilt without them (Tornado's rule:
/// cancelled timeouts are dropped lazily, but not allowed to pile up).
const MAX_CANCELLED_TIMERS: usize = 512;

/// A callback or timer body: it gets the loop's state and the loop itself.
/// `Send` so that a loop, with whatever it has queued, can be built on one
/// thread and run on another (tests start servers that way); callbacks
/// capture plain ids, never references.
pub type Callback<S> = Box<dyn FnOnce(&mut S, &mut IoLoop<S>) + Send>;

/// A timer body that needs no allocation: a plain function, called with the
/// two numbers it was scheduled with (in Eddy, a connection's slot and id).
/// See [`IoLoop::call_at_fn`].
pub type TimerFn<S> = fn(&mut S, &mut IoLoop<S>, usize, u64);

/// What runs when a timer fires.
enum TimerBody<S> {
    /// A closure, boxed ([`IoLoop::call_at`]).
    Closure(Callback<S>),
    /// A plain function and its two arguments ([`IoLoop::call_at_fn`]).
    Fn(TimerFn<S>, usize, u64),
}

/// What the loop drives. The server implements this; tests implement tiny ones.
pub trait EventHandler: Sized {
    /// A source registered with `token` is ready (Tornado: the handler given
    /// to `add_handler` is called with the fd and its events).
    ///
    /// mio is edge-triggered: the handler must drain the source until
    /// `WouldBlock`, or `add_callback` a continuation, because no new event
    /// comes for readiness it left unconsumed.
    fn ready(&mut self, ioloop: &mut IoLoop<Self>, token: Token, event: &Event);

    /// Called once per turn, after callbacks and timers and right before the
    /// loop may block in `poll`: the place to flush output, sync interest and
    /// free what finished during the turn.
    fn end_of_turn(&mut self, _ioloop: &mut IoLoop<Self>) {}
}

/// Identifies a timer scheduled with [`IoLoop::call_later`], for
/// [`IoLoop::remove_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeoutHandle(u64);

/// The part of the loop that other threads may touch.
struct Remote<S> {
    /// Callbacks sent from other threads; moved into the local queue each turn.
    callbacks: Mutex<Vec<Callback<S>>>,
    /// Set by [`LoopHandle::stop`]; checked by the loop once per turn.
    stop_requested: AtomicBool,
}

/// A `Send + Clone` handle to a running loop: the only way another thread can
/// talk to it. Every call wakes the loop through its [`Waker`].
pub struct LoopHandle<S> {
    remote: Arc<Remote<S>>,
    waker: Arc<Waker>,
}

impl<S> Clone for LoopHandle<S> {
    fn clone(&self) -> Self {
        LoopHandle {
            remote: Arc::clone(&self.remote),
            waker: Arc::clone(&self.waker),
        }
    }
}

impl<S> fmt::Debug for LoopHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle").finish_non_exhaustive()
    }
}

impl<S> LoopHandle<S> {
    /// Asks the loop to return from [`IoLoop::start`] at the end of its
    /// current turn. Safe to call from any thread, any number of times.
    pub fn stop(&self) -> io::Result<()> {
        self.remote.stop_requested.store(true, Ordering::SeqCst);
        self.waker.wake()
    }

    /// Runs `callback` on the loop's thread during its next turn (Tornado's
    /// thread-safe `add_callback`).
    pub fn add_callback(
        &self,
        callback: impl FnOnce(&mut S, &mut IoLoop<S>) + Send + 'static,
    ) -> io::Result<()> {
        self.remote
            .callbacks
            .lock()
            // A panic while holding this lock cannot leave the Vec half-updated.
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(callback));
        self.waker.wake()
    }
}

/// One poller, its timers and its callbacks. `S` is the state every callback
/// receives: the server, in Eddy.
pub struct IoLoop<S> {
    poll: Poll,
    /// Reused every turn; taken out while events are dispatched so that
    /// handlers can borrow the loop mutably.
    events: Events,
    /// Callbacks to run at the start of the next turn, in order.
    callbacks: VecDeque<Callback<S>>,
    /// Deadlines, earliest first. Each entry's id points into `timer_bodies`;
    /// an id missing there is a cancelled timer, skipped when it surfaces.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The bodies of live timers, keyed by their [`TimeoutHandle`] id.
    timer_bodies: HashMap<u64, TimerBody<S>>,
    /// The next timer id. Ids are never reused, so a stale handle is harmless.
    next_timer_id: u64,
    /// Shared with every [`LoopHandle`].
    remote: Arc<Remote<S>>,
    waker: Arc<Waker>,
    /// Set by [`IoLoop::stop`]; `start` returns at the end of the turn.
    stopping: bool,
    /// Set by [`IoLoop::keep_turning`]: the next `poll` does not block.
    keep_turning: bool,
    /// When the current turn's work began (`poll` returned).
    turn_began: Option<Instant>,
    /// How long each turn's work took.
    turn_seconds: Histogram,
    /// How many events each `poll` returned.
    events_per_turn: Histogram,
}

impl<S> fmt::Debug for IoLoop<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoLoop")
            .field("callbacks", &self.callbacks.len())
            .field("timers", &self.timer_bodies.len())
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

impl<S: EventHandler> IoLoop<S> {
    /// Creates a loop with its poller and waker.
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        Ok(IoLoop {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            callbacks: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_bodies: HashMap::new(),
            next_timer_id: 0,
            remote: Arc::new(Remote {
                callbacks: Mutex::new(Vec::new()),
                stop_requested: AtomicBool::new(false),
            }),
            waker,
            stopping: false,
            keep_turning: false,
            turn_began: None,
            turn_seconds: Histogram::new(metrics::SECONDS_BUCKETS),
            events_per_turn: Histogram::new(metrics::EVENTS_BUCKETS),
        })
    }

    /// Writes the loop's histograms: each turn's work time and the events
    /// each `poll` returned.
    pub fn write_metrics(&self, out: &mut Exposition) {
        out.histogram(
            "eddy_loop_turn_seconds",
            "Time the event loop spent on one turn's work: from poll returning to the next poll.",
            &self.turn_seconds,
        );
        out.histogram(
            "eddy_loop_events_per_turn",
            "Readiness events one poll returned.",
            &self.events_per_turn,
        );
    }

    /// A handle other threads can use to stop the loop or send it callbacks.
    pub fn handle(&self) -> LoopHandle<S> {
        LoopHandle {
            remote: Arc::clone(&self.remote),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Starts watching `source` for `interest`; its events reach
    /// [`EventHandler::ready`] with `token`.
    pub fn add_handler(
        &self,
        source: &mut impl Source,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        debug_assert_ne!(token, WAKER_TOKEN, "the waker's token is reserved");
        self.poll.registry().register(source, token, interest)
    }

    /// Replaces (not adds to) the interest of a registered source. Callers
    /// should cache the interest and call this only when it changes: every
    /// call is an `epoll_ctl` system call.
    pub fn update_handler(
        &self,
        source: &mut impl Source,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.poll.registry().reregister(source, token, interest)
    }

    /// The poller's registry, for a source that registers itself (and
    /// again, after reconnecting: a handler's own connection to a store).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Stops watching `source`. Events already returned by the current `poll`
    /// may still be dispatched for its token (mio issue #219), so a handler
    /// must not hand the token to a new source within the same turn.
    pub fn remove_handler(&self, source: &mut impl Source) -> io::Result<()> {
        self.poll.registry().deregister(source)
    }

    /// Runs `callback` at the start of the next turn.
    pub fn add_callback(&mut self, callback: impl FnOnce(&mut S, &mut IoLoop<S>) + Send + 'static) {
        self.callbacks.push_back(Box::new(callback));
    }

    /// Runs `callback` once `delay` has passed.
    pub fn call_later(
        &mut self,
        delay: Duration,
        callback: impl FnOnce(&mut S, &mut IoLoop<S>) + Send + 'static,
    ) -> TimeoutHandle {
        self.call_at(Instant::now() + delay, callback)
    }

    /// Runs `callback` once `deadline` has passed. Timers with equal deadlines
    /// run in the order they were scheduled.
    pub fn call_at(
        &mut self,
        deadline: Instant,
        callback: impl FnOnce(&mut S, &mut IoLoop<S>) + Send + 'static,
    ) -> TimeoutHandle {
        self.add_timer(deadline, TimerBody::Closure(Box::new(callback)))
    }

    /// Runs `function(state, ioloop, a, b)` once `deadline` has passed: a
    /// timer like [`IoLoop::call_at`]'s, without the allocation of a boxed
    /// closure. Made for timers kept per connection: a join storm arms
    /// thousands of them amid the storm's short-lived frames and queues, and
    /// each small box left behind pins a page of the heap after the storm
    /// (measured: 1,500 clients with every join announced kept 0.8–1.2 KiB
    /// a connection with boxes, 0.53–0.60 without; see `crate::memory`).
    pub fn call_at_fn(
        &mut self,
        deadline: Instant,
        function: TimerFn<S>,
        a: usize,
        b: u64,
    ) -> TimeoutHandle {
        self.add_timer(deadline, TimerBody::Fn(function, a, b))
    }

    fn add_timer(&mut self, deadline: Instant, body: TimerBody<S>) -> TimeoutHandle {
        let id = self.next_timer_id;
        self.next_timer_id += 1;
        self.timers.push(Reverse((deadline, id)));
        self.timer_bodies.insert(id, body);
        TimeoutHandle(id)
    }

    /// Cancels a timer. Cancelling one that already ran, or was already
    /// cancelled, does nothing.
    pub fn remove_timeout(&mut self, handle: TimeoutHandle) {
        if self.timer_bodies.remove(&handle.0).is_some() {
            let cancelled = self.timers.len() - self.timer_bodies.len();
            if cancelled > MAX_CANCELLED_TIMERS && cancelled > self.timers.len() / 2 {
                let live = &self.timer_bodies;
                self.timers.retain(|Reverse((_, id))| live.contains_key(id));
            }
        }
    }

    /// Says the handler left work for the next turn (a long flush cut into
    /// slices, in Eddy): this turn's `poll` only collects what is ready,
    /// without blocking, and the next turn follows at once. Asked again each
    /// turn that leaves work, like a callback that re-adds itself, but
    /// without a closure.
    pub fn keep_turning(&mut self) {
        self.keep_turning = true;
    }

    /// Makes [`IoLoop::start`] return at the end of the current turn.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Runs the loop until [`IoLoop::stop`] or [`LoopHandle::stop`]. Returns
    /// an error only when polling itself fails, which no single connection
    /// can cause; everything else is the handler's to deal with.
    pub fn start(&mut self, state: &mut S) -> io::Result<()> {
        self.stopping = false;
        loop {
            self.run_callbacks(state);
            self.run_due_timers(state);
            state.end_of_turn(self);
            if self.stopping || self.remote.stop_requested.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            self.poll_once(state)?;
        }
    }

    /// Step 1: the callbacks queued before this turn (remote ones included).
    fn run_callbacks(&mut self, state: &mut S) {
        {
            let mut remote = self
                .remote
                .callbacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for callback in remote.drain(..) {
                self.callbacks.push_back(callback);
            }
        }
        // Snapshot the count: callbacks added from now on run next turn.
        for _ in 0..self.callbacks.len() {
            match self.callbacks.pop_front() {
                Some(callback) => callback(state, self),
                None => break,
            }
        }
    }

    /// Step 2: every timer whose deadline has passed, earliest first. The
    /// clock is read once, so a timer scheduled by a timer body for "now"
    /// runs next turn instead of looping here forever.
    fn run_due_timers(&mut self, state: &mut S) {
        let now = Instant::now();
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            // A missing body means the timer was cancelled: skip it.
            match self.timer_bodies.remove(&id) {
                Some(TimerBody::Closure(callback)) => callback(state, self),
                Some(TimerBody::Fn(function, a, b)) => function(state, self, a, b),
                None => {}
            }
        }
    }

    /// How long `poll` may block: not at all while callbacks wait or the
    /// handler asked to keep turning, until the earliest live timer, or
    /// indefinitely.
    fn poll_timeout(&mut self) -> Option<Duration> {
        if self.keep_turning || !self.callbacks.is_empty() || self.stopping {
            return Some(Duration::ZERO);
        }
        // Drop cancelled timers from the top so they don't cause early wake-ups.
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if self.timer_bodies.contains_key(&id) {
                return Some(deadline.saturating_duration_since(Instant::now()));
            }
            self.timers.pop();
        }
        None
    }

    /// Steps 4 and 5: wait for readiness, then dispatch it.
    fn poll_once(&mut self, state: &mut S) -> io::Result<()> {
        if let Some(began) = self.turn_began.take() {
            self.turn_seconds.observe_duration(began.elapsed());
        }
        let timeout = self.poll_timeout();
        // Asked for this turn only; a handler with work left asks again.
        self.keep_turning = false;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            // mio's Poll docs: `poll` can fail with `Interrupted` when a
            // signal arrives (our SIGTERM handler, for one). That is not a
            // failure: return as from an empty poll, and the next turn polls
            // again. Not a retry right here with the same timeout: under a
            // stream of signals that would restart the full wait each time,
            // and a due timer would never run.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.turn_began = Some(Instant::now());
        // Take the events out so handlers can borrow `self` mutably; give
        // the buffer back afterwards so its allocation is reused.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let mut count = 0u32;
        for event in events.iter() {
            count += 1;
            if event.token() == WAKER_TOKEN {
                // Remote callbacks and stop requests are picked up at the
                // start of the next turn; the wake-up itself carries nothing.
                continue;
            }
            state.ready(self, event.token(), event);
        }
        self.events_per_turn.observe(f64::from(count));
        self.events = events;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::thread;

    /// A recording state: what ran, in order.
    #[derive(Default)]
    struct Log {
        entries: Vec<&'static str>,
        ready: Vec<Token>,
    }

    impl EventHandler for Log {
        fn ready(&mut self, _ioloop: &mut IoLoop<Self>, token: Token, _event: &Event) {
            self.ready.push(token);
        }
    }

    fn stop_now(_: &mut Log, ioloop: &mut IoLoop<Log>) {
        ioloop.stop();
    }

    #[test]
    fn timers_run_in_deadline_order_not_insertion_order() {
        let mut ioloop = IoLoop::new().unwrap();
        let mut log = Log::default();
        ioloop.call_later(Duration::from_millis(30), |l: &mut Log, lp| {
            l.entries.push("30ms");
            lp.stop();
        });
        ioloop.call_later(Duration::from_millis(10), |l: &mut Log, _| {
            l.entries.push("10ms")
        });
        ioloop.call_later(Duration::from_millis(20), |l: &mut Log, _| {
            l.entries.push("20ms")
        });
        ioloop.start(&mut log).unwrap();
        assert_eq!(log.entries, ["10ms", "20ms", "30ms"]);
    }

    #[test]
    fn equal_deadlines_run_in_scheduling_order() {
        let mut ioloop = IoLoop::new().unwrap();
        let mut log = Log::default();
        let at = Instant::now() + Duration::from_millis(5);
        ioloop.call_at(at, |l: &mut Log, _| l.entries.push("first"));
        ioloop.call_at(at, |l: &mut Log, _| l.entries.push("second"));
        ioloop.call_at(at, stop_now);
        ioloop.start(&mut log).unwrap();
        assert_eq!(log.entries, ["first", "second"]);
    }

    #[test]
    fn plain_function_timers_get_their_arguments_and_share_the_order() {
        fn log_args(l: &mut Log, _: &mut IoLoop<Log>, a: usize, b: u64) {
            l.entries.push(["a0", "a1", "a2"][a]);
            l.entries.push(if b == 7 { "b7" } else { "b?" });
        }
        let mut ioloop = IoLoop::new().unwrap();
        let mut log = Log::default();
        let at = Instant::now() + Duration::from_millis(5);
        ioloop.call_at_fn(at, log_args, 1, 7);
        ioloop.call_at(at, |l: &mut Log, _| l.entries.push("closure"));
        let cancelled = ioloop.call_at_fn(at, log_args, 0, 7);
        ioloop.call_at_fn(at, log_args, 2, 7);
        ioloop.call_at(at, stop_now);
        ioloop.remove_timeout(cancelled);
        ioloop.start(&mut log).unwrap();
        assert_eq!(log.entries, ["a1", "b7", "closure", "a2", "b7"]);
    }

    #[test]
    fn removed_timeout_never_runs() {
        let mut ioloop = IoLoop::new().unwrap();
        let mut log = Log::default();
        let handle = ioloop.call_later(Duration::from_millis(1), |l: &mut Log, _| {
            l.entries.push("x")
        });
        ioloop.remove_timeout(handle);
        ioloop.remove_timeout(handle); // twice is harmless
        ioloop.call_later(Duration::from_millis(20), stop_now);
        ioloop.start(&mut log).unwrap();
        assert!(log.entries.is_empty());
    }

    #[test]
    fn cancelled_timers_do_not_pile_up_in_the_heap() {
        let mut ioloop: IoLoop<Log> = IoLoop::new().unwrap();
        let far = Duration::from_secs(3600);
        let handles: Vec<_> = (0..10_000)
            .map(|_| ioloop.call_later(far, |_, _| {}))
            .collect();
        for handle in handles {
            ioloop.remove_timeout(handle);
        }
        assert!(
            ioloop.timers.len() <= 2 * MAX_CANCELLED_TIMERS,
            "heap: {}",
            ioloop.timers.len()
        );
        assert!(ioloop.timer_bodies.is_empty());
    }

    #[test]
    fn callbacks_added_by_callbacks_run_next_turn() {
        let mut ioloop = IoLoop::new().unwrap();
        let mut log = Log::default();
        ioloop.add_callback(|l: &mut Log, lp| {
            l.entries.push("a");
            lp.add_callback(|l: &mut Log, lp| {
                l.entries.push("c");
                lp.stop();
            });
        });
        ioloop.add_callback(|l: &mut Log, _| l.entries.push("b"));
        ioloop.start(&mut log).unwrap();
        assert_eq!(log.entries, ["a", "b", "c"]);
    }

    #[test]
    fn a_pending_callback_does_not_wait_for_a_far_timer() {
        // If poll blocked until the timer, this test would take an hour.
        let mut ioloop = IoLoop::new().unwrap();
        let mut log = Log::default();
        ioloop.call_later(Duration::from_secs(3600), |l: &mut Log, _| {
            l.entries.push("late")
        });
        ioloop.add_callback(|l: &mut Log, lp| {
            l.entries.push("now");
            lp.add_callback(stop_now);
        });
        ioloop.start(&mut log).unwrap();
        assert_eq!(log.entries, ["now"]);
    }

    /// A handler that leaves work for three turns, then stops the loop.
    #[derive(Default)]
    struct Slices {
        left: u32,
        turns: u32,
        timed_out: bool,
    }

    impl EventHandler for Slices {
        fn ready(&mut self, _ioloop: &mut IoLoop<Self>, _token: Token, _event: &Event) {}

        fn end_of_turn(&mut self, ioloop: &mut IoLoop<Self>) {
            self.turns += 1;
            if self.left == 0 {
                ioloop.stop();
            } else {
                self.left -= 1;
                ioloop.keep_turning();
            }
        }
    }

    #[test]
    fn work_left_for_the_next_turn_does_not_wait_for_a_timer() {
        // Without `keep_turning`, the first poll would block until the
        // timer, which then stops the loop with the work still left.
        let mut ioloop = IoLoop::new().unwrap();
        let mut slices = Slices {
            left: 3,
            ..Slices::default()
        };
        ioloop.call_later(Duration::from_secs(5), |s: &mut Slices, lp| {
            s.timed_out = true;
            lp.stop();
        });
        ioloop.start(&mut slices).unwrap();
        assert!(!slices.timed_out);
        assert_eq!((slices.left, slices.turns), (0, 4));
    }

    #[test]
    fn handle_calls_back_from_another_thread() {
        let mut ioloop = IoLoop::new().unwrap();
        let handle = ioloop.handle();
        let mut log = Log::default();
        let remote = thread::spawn(move || {
            handle
                .add_callback(|l: &mut Log, lp| {
                    l.entries.push("remote");
                    lp.stop();
                })
                .unwrap();
        });
        // Blocks in poll (no timers, no callbacks) until the waker fires.
        ioloop.start(&mut log).unwrap();
        remote.join().unwrap();
        assert_eq!(log.entries, ["remote"]);
    }

    #[test]
    fn handle_stops_a_loop_blocked_in_poll() {
        let mut ioloop: IoLoop<Log> = IoLoop::new().unwrap();
        let handle = ioloop.handle();
        let remote = thread::spawn(move || handle.stop().unwrap());
        ioloop.start(&mut Log::default()).unwrap();
        remote.join().unwrap();
    }

    #[test]
    fn a_signal_during_poll_does_not_end_the_loop() {
        use std::sync::mpsc;
        // A handler for SIGUSR1, so the signal interrupts system calls
        // (epoll_wait fails with EINTR) instead of killing the process.
        let _handler = signal_hook_mio::v1_0::Signals::new([libc::SIGUSR1]).unwrap();
        let (tx, rx) = mpsc::channel();
        let looper = thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let mut ioloop = IoLoop::new().unwrap();
            let mut log = Log::default();
            ioloop.call_later(Duration::from_millis(300), |l: &mut Log, lp| {
                l.entries.push("timer");
                lp.stop();
            });
            let result = ioloop.start(&mut log).map_err(|e| e.kind());
            (result, log.entries)
        });
        let thread_id = rx.recv().unwrap();
        // Interrupt the loop's poll over and over until it returns (its
        // timer ends it). The pause only paces the signals.
        while !looper.is_finished() {
            // SAFETY: the thread is not joined yet, so its id is valid.
            unsafe { libc::pthread_kill(thread_id, libc::SIGUSR1) };
            thread::sleep(Duration::from_millis(2));
        }
        let (result, entries) = looper.join().unwrap();
        assert_eq!(result, Ok(()), "EINTR must be retried, not returned");
        assert_eq!(entries, ["timer"]);
    }

    #[test]
    fn readiness_reaches_the_handler_with_its_token() {
        /// Records the token of the first event, then stops the loop.
        struct Stopper(Vec<Token>);
        impl EventHandler for Stopper {
            fn ready(&mut self, lp: &mut IoLoop<Self>, token: Token, _event: &Event) {
                self.0.push(token);
                lp.stop();
            }
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        let mut server_side = mio::net::TcpStream::from_std(server_side);
        let mut ioloop = IoLoop::new().unwrap();
        ioloop
            .add_handler(&mut server_side, Token(7), Interest::READABLE)
            .unwrap();
        client.write_all(b"x").unwrap();
        // No timers or callbacks: poll blocks until the byte makes the socket ready.
        let mut stopper = Stopper(Vec::new());
        ioloop.start(&mut stopper).unwrap();
        assert_eq!(stopper.0, [Token(7)]);
        let mut byte = [0u8; 1];
        assert_eq!(server_side.read(&mut byte).unwrap(), 1);
    }
}
