//! [`DiskHistory`]: the [`History`] that survives a restart. Each room's
//! lines go to its append-only log ([`crate::log`]) in the data directory
//! ([`crate::datadir`]); the newest stay in memory too, in a
//! [`MemoryHistory`] used as a cache, and older ones are read from disk.
//!
//! # A line's way in (group commit)
//!
//! [`History::append`] gives a line its seq and frame and stages it;
//! nothing is visible yet. At the end of the loop turn,
//! [`History::commit`] writes each room's staged lines with one `write`
//! (with `--fsync always`, then syncs), and only then confirms them to the
//! chat, which broadcasts them. So a line any client received is in its
//! room's log: killing the server loses nothing a client saw. A write that
//! fails (a full disk) is cut back by the log; its lines are refused (their
//! speakers told, nobody else sees them) and their seqs go to the next
//! lines, which no client can tell, since none saw them. The room tries
//! again with its next line, and so recovers by itself.
//!
//! # Syncing
//!
//! `--fsync everysec` (the default): a helper thread syncs every log with
//! unsynced writes once a second and then writes its checkpoint, through
//! [`crate::log::SyncHandle`]s; a new room's directory and `room.json` are
//! synced by it too, before its log; the loop never waits for the disk.
//! `always` syncs on the loop before the turn's lines go out, and the
//! helper writes the checkpoints. `no` leaves syncing to the kernel, so no
//! checkpoint is written until a clean shutdown (a crash means a scan of
//! everything written since). The helper also deletes expired rooms'
//! directories, which the loop only renames aside. A clean shutdown syncs
//! everything and marks the directory clean; a failed startup marks nothing.
//!
//! # Restarts
//!
//! Opening recovers every room's log ([`crate::log::Log::open`]): a torn
//! tail is cut with a warning, damage where the log was known synced stops
//! the server with a message naming the file. If the last run did not shut
//! down cleanly and a log was cut, or the machine rebooted since (pages
//! never synced may be gone, even at a record boundary), lines a client saw
//! may be missing; the room then begins a new epoch that continues the old
//! one's seqs, and remembers (old epoch, last seq kept): a client of the old
//! epoch up to there resumes seamlessly, one beyond it gets a reset, and no
//! (epoch, seq) ever names two different lines.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};
use tungstenite::Bytes;

use crate::config::Fsync;
use crate::datadir::{
    DataDir, DataDirError, RoomMeta, move_aside, read_meta, room_dir_name, sync_room_dir,
    write_meta,
};
use crate::history::{
    Chunk, Confirmed, Draft, Epoch, History, Limits, Line, MemoryHistory, Position, Refused, Seal,
    Seq,
};
use crate::log::{Log, LogError, Options, SyncHandle};
use crate::metrics::{self, Exposition, SharedHistogram};
use crate::ws;

/// At most this many rooms' logs hold open files at once; the least
/// recently opened is closed first, and reopens on demand. Thousands of
/// rooms cost no descriptors while idle.
pub const MAX_OPEN_LOGS: usize = 128;

/// How often the `everysec` helper syncs.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// A room's segments: an eighth of `--history-bytes`, so retention frees
/// space in steps of about an eighth, between 4 KiB and 64 MiB.
fn segment_bytes(history_bytes: usize) -> u64 {
    (history_bytes as u64 / 8).clamp(4 << 10, 64 << 20)
}

/// One room with a log on disk.
struct RoomLog {
    name: Arc<str>,
    /// `None` until the room's first line creates the directory.
    log: RefCell<Option<Log>>,
    dir: PathBuf,
    epoch: Epoch,
    earlier: Arc<[(Epoch, Seq)]>,
    /// The last seq written (the log's last; kept here too, since reads
    /// borrow the log).
    head: Seq,
    /// Lines appended this turn, waiting for [`History::commit`]: seq,
    /// speaker, frame.
    staged: Vec<(Seq, u64, Bytes)>,
    /// The last write failed (logged once, until one succeeds).
    failing: bool,
    /// When it last got a line (for `--history-ttl`).
    last_line: Instant,
}

impl RoomLog {
    /// A room at `head` of `epoch`, its log (if it has one yet) in `dir`.
    fn new(
        name: Arc<str>,
        dir: PathBuf,
        log: Option<Log>,
        (epoch, earlier): (Epoch, Arc<[(Epoch, Seq)]>),
        head: Seq,
        last_line: Instant,
    ) -> RoomLog {
        RoomLog {
            name,
            log: RefCell::new(log),
            dir,
            epoch,
            earlier,
            head,
            staged: Vec::new(),
            failing: false,
            last_line,
        }
    }

    /// The first line the room can still give (`head + 1` if none).
    fn first(&self) -> Seq {
        self.log
            .borrow()
            .as_ref()
            .map_or(self.head + 1, |log| log.first())
    }
}

/// Whether this process may write in `dir`: `access(2)` with `W_OK`, which
/// also says no for a file system mounted read-only. A metadata call, not
/// a write: cheap enough for the loop to make when asked (`/readyz`).
fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// Every room's history, on disk, with the newest lines cached in memory.
pub struct DiskHistory {
    data: DataDir,
    cache: MemoryHistory,
    seal: Seal,
    limits: Limits,
    fsync: Fsync,
    options: Options,
    rooms: HashMap<Arc<str>, RoomLog>,
    /// Rooms with staged lines, in the order they got their first.
    staged: Vec<Arc<str>>,
    confirmed: Vec<Confirmed>,
    refused: Vec<Refused>,
    /// Rooms whose logs hold files, oldest opened first.
    open: RefCell<VecDeque<Arc<str>>>,
    /// What the helper thread does: shared with it.
    chores: Arc<Mutex<Chores>>,
    /// The helper thread: its stop signal and itself.
    helper: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// Files found damaged while serving, each logged once.
    damaged: RefCell<HashSet<PathBuf>>,
    /// A read from disk is failing (logged when it begins and ends).
    reads_failing: Cell<bool>,
    /// Startup succeeded: only then does dropping this mean a clean
    /// shutdown (a failed start must not mark the directory clean).
    started: bool,
    /// Batches appended to the rooms' logs (one `write` each), and the
    /// lines in them, for `/metrics`.
    appends: u64,
    appended_lines: u64,
    /// How long each sync of a log took, on the loop (`always`) or the
    /// helper thread (`everysec`).
    syncs: Arc<SharedHistogram>,
}

/// What the helper thread does for the loop, once a second.
#[derive(Debug, Default)]
struct Chores {
    /// Every log's sync handle: `everysec` syncs and checkpoints each,
    /// `always` checkpoints what the loop synced, `no` neither.
    handles: HashMap<Arc<str>, SyncHandle>,
    /// Room directories made since (`everysec`), whose `room.json` and
    /// names are synced before their logs are.
    new_dirs: Vec<PathBuf>,
    /// Directories of expired rooms, moved aside, to delete (off the loop:
    /// a room may hold gigabytes).
    doomed: Vec<PathBuf>,
}

/// Locks the chores, whether or not the other thread panicked holding them.
fn lock(chores: &Mutex<Chores>) -> MutexGuard<'_, Chores> {
    chores.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many earlier epochs a room remembers: a client whose position is
/// older than that many unclean restarts gets a reset.
const MAX_EARLIER: usize = 100;

impl fmt::Debug for DiskHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskHistory")
            .field("dir", &self.data.path())
            .field("rooms", &self.rooms.len())
            .field("fsync", &self.fsync)
            .finish_non_exhaustive()
    }
}

/// What opening found, for the startup log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    /// Rooms with a log.
    pub rooms: usize,
    /// Lines they hold.
    pub lines: u64,
    /// Bytes of log.
    pub bytes: u64,
    /// Logs cut at a torn or damaged tail.
    pub cut: usize,
    /// Rooms that began a new epoch.
    pub new_epochs: usize,
}

impl DiskHistory {
    /// Opens (creating, locking) the data directory at `path` and recovers
    /// every room in it. `limits` are per room on disk (`lines`, `bytes`)
    /// and for the cache in memory (`memory`); `seal` makes frames.
    pub fn open(
        path: impl Into<PathBuf>,
        limits: Limits,
        fsync: Fsync,
        seal: Seal,
    ) -> Result<(DiskHistory, Opened), DataDirError> {
        let data = DataDir::open(path.into())?;
        let options = Options {
            segment_bytes: segment_bytes(limits.bytes),
        };
        let lost_tail_possible = !data.was_clean();
        let rebooted = data.rebooted();
        let mut history = DiskHistory {
            cache: MemoryHistory::new(limits, seal),
            seal,
            limits,
            fsync,
            options,
            rooms: HashMap::new(),
            staged: Vec::new(),
            confirmed: Vec::new(),
            refused: Vec::new(),
            open: RefCell::new(VecDeque::new()),
            chores: Arc::new(Mutex::new(Chores::default())),
            helper: None,
            damaged: RefCell::new(HashSet::new()),
            reads_failing: Cell::new(false),
            started: false,
            appends: 0,
            appended_lines: 0,
            syncs: Arc::new(SharedHistogram::new(metrics::SECONDS_BUCKETS)),
            data,
        };
        lock(&history.chores).doomed = history.data.leftovers();
        let mut opened = Opened::default();
        for found in history.data.rooms()? {
            let (log, recovered) = Log::open(&found.dir, options)?;
            if let Some(cut) = &recovered.cut {
                warn!("room {}: {cut}", found.meta.room);
                opened.cut += 1;
            }
            let RoomMeta {
                room,
                epoch,
                earlier,
            } = found.meta;
            let mut epoch = Epoch::from(epoch);
            let mut earlier: Vec<(Epoch, Seq)> = earlier
                .into_iter()
                .map(|(e, last)| (Epoch::from(e), last))
                .collect();
            let head = log.last();
            // (An empty log too: a power cut can take a room's only lines.)
            if lost_tail_possible && (recovered.cut.is_some() || rebooted) {
                // Lines a client saw may be gone: their seqs must not name
                // new lines in the old epoch.
                let new = Epoch::random();
                warn!(
                    "room {room}: the last run did not shut down cleanly{}; epoch {epoch} ends at \
                     seq {head}, epoch {new} goes on from there",
                    if rebooted {
                        " and the machine restarted"
                    } else {
                        " and its log was cut"
                    }
                );
                earlier.push((epoch, head));
                if earlier.len() > MAX_EARLIER {
                    earlier.remove(0);
                }
                epoch = new;
                write_meta(&found.dir, &meta(&room, &epoch, &earlier), true)?;
                opened.new_epochs += 1;
            }
            opened.rooms += 1;
            opened.lines += log.records();
            opened.bytes += log.bytes();
            let name: Arc<str> = room.into();
            history.cache.restore(&name, epoch.clone(), head);
            lock(&history.chores)
                .handles
                .insert(Arc::clone(&name), log.sync_handle());
            let last_line = modified_ago(&found.dir);
            let room = RoomLog::new(
                Arc::clone(&name),
                found.dir,
                Some(log),
                (epoch, earlier.into()),
                head,
                last_line,
            );
            history.rooms.insert(name, room);
        }
        history.data.begin_run()?;
        history.helper = Some(spawn_helper(
            Arc::clone(&history.chores),
            fsync,
            Arc::clone(&history.syncs),
        )?);
        history.started = true;
        Ok((history, opened))
    }

    /// The data directory.
    pub fn path(&self) -> &std::path::Path {
        self.data.path()
    }

    /// Notes that `room`'s log may have opened files; closes the files of
    /// the least recently opened logs past [`MAX_OPEN_LOGS`].
    fn opened(&self, room: &Arc<str>) {
        let mut open = self.open.borrow_mut();
        if open.iter().any(|r| r == room) {
            return;
        }
        open.push_back(Arc::clone(room));
        while open.len() > MAX_OPEN_LOGS {
            let Some(oldest) = open.pop_front() else {
                break;
            };
            if let Some(r) = self.rooms.get(&oldest)
                && let Ok(mut log) = r.log.try_borrow_mut()
                && let Some(log) = log.as_mut()
            {
                log.close_files();
            }
        }
    }

    /// Writes `room`'s staged lines with one write, then confirms them;
    /// or, if they cannot be written, refuses them all.
    fn commit_room(&mut self, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let staged = std::mem::take(&mut r.staged);
        match self.write(room, &staged) {
            Ok(()) => {
                self.opened(room);
                for (seq, _, frame) in staged {
                    let line = Line { seq, frame };
                    let name = self.cache.keep(room, line.clone());
                    self.confirmed.push(Confirmed { room: name, line });
                }
            }
            Err(why) => {
                // A failing room holds no descriptor while it fails.
                if let Some(log) = self
                    .rooms
                    .get_mut(room)
                    .and_then(|r| r.log.get_mut().as_mut())
                {
                    log.close_files();
                }
                self.refuse(room, &why, staged);
            }
        }
    }

    /// Appends `staged` to `room`'s log (creating its directory, its
    /// `room.json` and its log for its first line), syncs with `--fsync
    /// always`, and applies retention.
    fn write(&mut self, room: &str, staged: &[(Seq, u64, Bytes)]) -> Result<(), String> {
        let (fsync, options) = (self.fsync, self.options);
        let (lines, bytes) = (self.limits.lines as u64, self.limits.bytes as u64);
        let Some(r) = self.rooms.get_mut(room) else {
            return Err("the room is gone".into());
        };
        let log = match r.log.get_mut() {
            Some(log) => log,
            None => {
                let log = create_room_log(r, options, fsync, &self.chores)?;
                r.log.get_mut().insert(log)
            }
        };
        let batch = staged
            .iter()
            .map(|(seq, _, frame)| (*seq, ws::text_frame_payload(frame).as_bytes()));
        log.append(batch).map_err(|e| e.to_string())?;
        self.appends += 1;
        self.appended_lines += staged.len() as u64;
        if fsync == Fsync::Always {
            let began = Instant::now();
            match log.sync() {
                Ok(synced) => {
                    if synced.is_some() {
                        self.syncs.observe_duration(began.elapsed());
                    }
                }
                // The lines are in the file; only their durability is in
                // doubt, and that is said loudly.
                Err(e) => error!("room {room}: --fsync always: sync failed: {e}"),
            }
        }
        retain(room, log, lines, bytes);
        r.head = log.last();
        r.last_line = Instant::now();
        if std::mem::take(&mut r.failing) {
            info!("room {room}: its history is written again");
        }
        Ok(())
    }

    /// Logs, once per room directory, a record that is not a line.
    fn report_damage(&self, room: &str, dir: &std::path::Path, seq: Seq) {
        if self.damaged.borrow_mut().insert(dir.to_path_buf()) {
            error!(
                "room {room}: record {seq} in {} is not UTF-8: damage; readers get a gap notice",
                dir.display()
            );
        }
    }

    /// Refuses `staged` (none of it was kept), logging the first failure.
    fn refuse(&mut self, room: &Arc<str>, why: &str, staged: Vec<(Seq, u64, Bytes)>) {
        if let Some(r) = self.rooms.get_mut(room)
            && !std::mem::replace(&mut r.failing, true)
        {
            error!(
                "room {room}: cannot write its history ({why}); its lines are refused until it can"
            );
        }
        for (_, id, _) in staged {
            self.refused.push(Refused {
                room: Arc::clone(room),
                id,
            });
        }
    }

    /// Forgets `room` and deletes its directory: moved aside at once (so
    /// the room can begin afresh, and a crash leaves no half-deleted log
    /// under its name), deleted by the helper thread.
    fn delete_room(&mut self, room: &str) {
        if let Some(r) = self.rooms.remove(room) {
            lock(&self.chores).handles.remove(room);
            self.open.borrow_mut().retain(|o| &**o != room);
            drop(r.log);
            match move_aside(&r.dir, "deleting") {
                Ok(Some(doomed)) => {
                    debug!("room {room}: forgotten, no line for --history-ttl");
                    lock(&self.chores).doomed.push(doomed);
                }
                Ok(None) => {}
                Err(e) => warn!("room {room}: {e}"),
            }
        }
        self.cache.forget(room);
    }
}

/// Retention: whole old segments past `--history-lines` or
/// `--history-bytes` go.
fn retain(room: &str, log: &mut Log, lines: u64, bytes: u64) {
    let keep_from = (log.last() + 1).saturating_sub(lines.max(1));
    let result = log
        .delete_before(keep_from)
        .and_then(|_| log.delete_to_fit(bytes));
    if let Err(e) = result {
        warn!("room {room}: retention: {e}");
    }
}

/// A room's `room.json`.
fn meta(room: &str, epoch: &Epoch, earlier: &[(Epoch, Seq)]) -> RoomMeta {
    RoomMeta {
        room: room.to_owned(),
        epoch: epoch.as_str().to_owned(),
        earlier: earlier
            .iter()
            .map(|(e, last)| (e.as_str().to_owned(), *last))
            .collect(),
    }
}

/// When a room last got a line, from its files' modification time, on the
/// monotonic clock (now, if the clock went back or it cannot be read).
fn modified_ago(dir: &std::path::Path) -> Instant {
    let newest = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    let ago = newest
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// Makes a room's directory, its `room.json` and its log, for its first
/// line. A directory already there under its name is checked: another
/// room's (two names hashed alike) is refused; one without a `room.json`
/// (what an operator or a crash left) is moved aside, kept, and said.
fn create_room_log(
    r: &RoomLog,
    options: Options,
    fsync: Fsync,
    chores: &Mutex<Chores>,
) -> Result<Log, String> {
    match read_meta(&r.dir) {
        Ok(Some(found)) if found.room != *r.name => {
            return Err(format!(
                "{} holds the room {:?}: two room names share a directory name",
                r.dir.display(),
                found.room
            ));
        }
        Ok(Some(_)) => {} // ours: an earlier first line got this far
        Ok(None) | Err(DataDirError::Bad { .. }) if r.dir.exists() => {
            if let Some(to) = move_aside(&r.dir, "orphan").map_err(|e| e.to_string())? {
                warn!(
                    "room {}: {} had no valid room.json; moved aside to {}",
                    r.name,
                    r.dir.display(),
                    to.display()
                );
            }
        }
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    let meta = meta(&r.name, &r.epoch, &r.earlier);
    // With `always` the loop syncs anyway; else the helper makes it
    // durable before the log's first checkpoint.
    write_meta(&r.dir, &meta, fsync == Fsync::Always).map_err(|e| e.to_string())?;
    let (log, _) = Log::open(&r.dir, options).map_err(|e| e.to_string())?;
    if log.last() != r.head {
        return Err(format!(
            "{} holds a log ending at seq {}, not {}",
            r.dir.display(),
            log.last(),
            r.head
        ));
    }
    let mut chores = lock(chores);
    chores
        .handles
        .insert(Arc::clone(&r.name), log.sync_handle());
    if fsync == Fsync::EverySec {
        chores.new_dirs.push(r.dir.clone());
    }
    Ok(log)
}

/// Starts the helper thread. Once a second it deletes expired rooms'
/// directories, then, with `everysec`, syncs new rooms' directories and
/// every log written since and writes its checkpoint; with `always`,
/// checkpoints what the loop synced; with `no`, neither. It never touches
/// the loop's data: only paths and [`SyncHandle`]s.
fn spawn_helper(
    chores: Arc<Mutex<Chores>>,
    fsync: Fsync,
    syncs: Arc<SharedHistogram>,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>), DataDirError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = thread::Builder::new()
        .name("eddy-disk".into())
        .spawn(move || {
            let mut failing: HashSet<Arc<str>> = HashSet::new();
            loop {
                match stopped.recv_timeout(SYNC_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // Stopped (or the history is gone): the owner does the rest.
                    _ => return,
                }
                // One snapshot: a room's directory is synced before its log.
                let (handles, new_dirs, doomed) = {
                    let mut chores = lock(&chores);
                    let handles: Vec<(Arc<str>, SyncHandle)> = chores
                        .handles
                        .iter()
                        .map(|(r, h)| (Arc::clone(r), h.clone()))
                        .collect();
                    let new_dirs = std::mem::take(&mut chores.new_dirs);
                    (handles, new_dirs, std::mem::take(&mut chores.doomed))
                };
                delete_all(doomed);
                let unsynced_dirs = sync_dirs(new_dirs);
                if !unsynced_dirs.is_empty() {
                    // Tried again next time; their logs are not checkpointed
                    // meanwhile (below), so nothing claims them synced.
                    lock(&chores).new_dirs.extend(unsynced_dirs.iter().cloned());
                }
                for (room, handle) in handles {
                    if unsynced_dirs
                        .iter()
                        .any(|d| d.ends_with(room_dir_name(&room)))
                    {
                        continue;
                    }
                    let result = match fsync {
                        Fsync::EverySec => {
                            let began = Instant::now();
                            let synced = handle.sync();
                            // Only a sync that had something to sync: an
                            // idle room's costs no system call.
                            if matches!(synced, Ok(Some(_))) {
                                syncs.observe_duration(began.elapsed());
                            }
                            synced.and_then(|_| handle.write_checkpoint())
                        }
                        Fsync::Always => handle.write_checkpoint(),
                        Fsync::No => Ok(None),
                    };
                    match result {
                        Ok(_) if failing.remove(&room) => info!("room {room}: synced again"),
                        Ok(_) => {}
                        Err(e) if failing.insert(Arc::clone(&room)) => {
                            error!("room {room}: sync failed: {e}");
                        }
                        Err(_) => {}
                    }
                }
            }
        })
        .map_err(|source| DataDirError::Io {
            doing: "start the disk thread for",
            path: PathBuf::from("the history"),
            source,
        })?;
    Ok((stop, thread))
}

/// Deletes expired rooms' directories (moved aside by the loop).
fn delete_all(doomed: Vec<PathBuf>) {
    for dir in doomed {
        if let Err(e) = fs::remove_dir_all(&dir) {
            warn!("cannot delete {}: {e}", dir.display());
        }
    }
}

/// Makes new rooms' directories durable ([`sync_room_dir`]); returns
/// those that could not be.
fn sync_dirs(new_dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut unsynced = Vec::new();
    for dir in new_dirs {
        if let Err(e) = sync_room_dir(&dir) {
            error!("{e}");
            unsynced.push(dir);
        }
    }
    unsynced
}

impl Drop for DiskHistory {
    /// A clean shutdown, if startup succeeded: the helper stops, new rooms'
    /// directories and every log are synced and checkpointed at their end,
    /// expired rooms deleted, and the directory is marked clean.
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.helper.take() {
            drop(stop);
            let _ = thread.join();
        }
        if !self.started {
            return;
        }
        let (new_dirs, doomed) = {
            let mut chores = lock(&self.chores);
            (
                std::mem::take(&mut chores.new_dirs),
                std::mem::take(&mut chores.doomed),
            )
        };
        let mut clean = sync_dirs(new_dirs).is_empty();
        delete_all(doomed);
        for r in self.rooms.values_mut() {
            if let Some(log) = r.log.get_mut()
                && let Err(e) = log.sync().and_then(|_| log.write_checkpoint())
            {
                error!("room {}: final sync failed: {e}", r.name);
                clean = false;
            }
        }
        if clean {
            match self.data.mark_clean() {
                Ok(()) => info!("history synced to {}", self.data.path().display()),
                Err(e) => error!("{e}"),
            }
        }
    }
}

impl History for DiskHistory {
    fn write_metrics(&self, out: &mut Exposition) {
        self.cache.write_memory_metrics(out);
        let (mut lines, mut bytes) = (0u64, 0u64);
        for room in self.rooms.values() {
            if let Some(log) = room.log.borrow().as_ref() {
                lines += log.records();
                bytes += log.bytes();
            }
        }
        out.gauge(
            "eddy_history_disk_lines",
            "Lines of history in the data directory's logs, over all rooms.",
            lines as f64,
        );
        out.gauge(
            "eddy_history_disk_bytes",
            "Bytes of the data directory's log segments, over all rooms.",
            bytes as f64,
        );
        out.counter(
            "eddy_log_appends_total",
            "Batches appended to the rooms' logs: one write each, a room's lines of one turn.",
            self.appends,
        );
        out.counter(
            "eddy_log_appended_lines_total",
            "Lines appended to the rooms' logs.",
            self.appended_lines,
        );
        out.histogram(
            "eddy_log_fsync_seconds",
            "How long one sync of a room's log took (--fsync always: on the loop; everysec: on the helper thread).",
            &self.syncs.snapshot(),
        );
    }

    fn readiness(&self) -> Result<(), String> {
        let dir = self.data.path();
        if !writable(dir) {
            return Err(format!("data directory {} is not writable", dir.display()));
        }
        let failing = self.rooms.values().filter(|room| room.failing).count();
        if failing > 0 {
            return Err(format!(
                "writes to the data directory are failing in {failing} rooms"
            ));
        }
        if self.reads_failing.get() {
            return Err("reads from the data directory are failing".into());
        }
        Ok(())
    }

    fn position(&mut self, room: &str) -> Option<Position> {
        Some(match self.rooms.get(room) {
            Some(r) => Position {
                epoch: r.epoch.clone(),
                first: r.first(),
                head: r.head,
                earlier: Arc::clone(&r.earlier),
            },
            None => self.cache.position_of(room),
        })
    }

    fn append(&mut self, room: &str, draft: Draft<'_>) {
        let seal = self.seal;
        if !self.rooms.contains_key(room) {
            // Its directory is made at commit; meanwhile its epoch and head
            // are the cache's.
            let position = self.cache.position_of(room);
            let name: Arc<str> = room.into();
            let dir = self.data.room_dir(room);
            let epoch = (position.epoch, position.earlier);
            let new = RoomLog::new(
                Arc::clone(&name),
                dir,
                None,
                epoch,
                position.head,
                Instant::now(),
            );
            self.rooms.insert(name, new);
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let seq = r.head + r.staged.len() as Seq + 1;
        if r.staged.is_empty() {
            self.staged.push(Arc::clone(&r.name));
        }
        r.staged.push((seq, draft.id, seal(seq, &draft)));
    }

    fn take_confirmed(&mut self, into: &mut Vec<Confirmed>) {
        into.append(&mut self.confirmed);
    }

    fn commit(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        for room in &staged {
            self.commit_room(room);
        }
        self.staged = staged;
        self.staged.clear();
    }

    fn take_refused(&mut self, into: &mut Vec<Refused>) {
        into.append(&mut self.refused);
    }

    fn read_from(&self, room: &str, from: Seq, max_bytes: usize) -> Chunk {
        let Some(r) = self.rooms.get(room) else {
            return self.cache.read_from(room, from, max_bytes);
        };
        let from = from.max(1);
        let head = r.head;
        if from > head {
            return Chunk {
                head,
                ..Chunk::default()
            };
        }
        let cached = self.cache.read_from(room, from, max_bytes);
        if cached.gap.is_none() && !cached.lines.is_empty() {
            return Chunk { head, ..cached };
        }
        // Older than the cache: from the log, at the reader's pace.
        let result = match r.log.borrow_mut().as_mut() {
            Some(log) => log.read_from(from, max_bytes),
            None => return Chunk { head, ..cached },
        };
        self.opened(&r.name);
        match result {
            Ok(records) => {
                if self.reads_failing.replace(false) {
                    info!("room {room}: reading history from disk again");
                }
                let mut chunk = Chunk {
                    gap: records.gap,
                    lines: Vec::with_capacity(records.records.len()),
                    head,
                };
                for record in records.records {
                    match std::str::from_utf8(&record.payload) {
                        Ok(json) => chunk.lines.push(Line {
                            seq: record.seq,
                            frame: ws::encode_text_frame(json),
                        }),
                        // A record whose checksum holds but whose text is
                        // not UTF-8 was never written by us: damage, said
                        // as a gap of that one line. The reader goes on
                        // after it (its length was sound).
                        Err(_) if chunk.lines.is_empty() => {
                            self.report_damage(room, r.dir.as_path(), record.seq);
                            chunk.gap = Some((chunk.gap.map_or(from, |(g, _)| g), record.seq));
                        }
                        // After good lines: they go first; the next read
                        // begins at it.
                        Err(_) => break,
                    }
                }
                chunk
            }
            Err(LogError::Io { path, source }) => {
                // Not damage (a descriptor limit, say): the lines are on
                // disk, but not readable now. The reader gets what memory
                // holds, and is told of the rest, as without a disk.
                if !self.reads_failing.replace(true) {
                    error!("room {room}: cannot read {}: {source}", path.display());
                }
                Chunk { head, ..cached }
            }
            Err(e) => {
                // Damage found while serving: never skipped silently. The
                // reader is told the rest of that segment is a gap, and
                // goes on from the next one (logged once per file).
                let end = r
                    .log
                    .borrow()
                    .as_ref()
                    .map_or(head, |log| log.segment_end(from));
                let file = match &e {
                    LogError::Corrupt { path, .. } => path.clone(),
                    _ => r.dir.clone(),
                };
                if self.damaged.borrow_mut().insert(file) {
                    error!("room {room}: {e}; readers get a gap notice for seqs {from} to {end}");
                }
                Chunk {
                    gap: Some((from, end.max(from))),
                    lines: Vec::new(),
                    head,
                }
            }
        }
    }

    fn expire_room(&mut self, room: &str, cutoff: Instant) -> bool {
        match self.rooms.get(room) {
            Some(r) if r.last_line < cutoff && r.staged.is_empty() => {
                self.delete_room(room);
                true
            }
            Some(_) => false,
            None => self.cache.expire_room(room, cutoff),
        }
    }

    fn expire_rooms(&mut self, cutoff: Instant, keep: &dyn Fn(&str) -> bool) -> usize {
        let stale: Vec<Arc<str>> = self
            .rooms
            .values()
            .filter(|r| r.last_line < cutoff && r.staged.is_empty() && !keep(&r.name))
            .map(|r| Arc::clone(&r.name))
            .collect();
        for room in &stale {
            self.delete_room(room);
        }
        let rooms = &self.rooms;
        stale.len()
            + self
                .cache
                .expire_rooms(cutoff, &|room| keep(room) || rooms.contains_key(room))
    }
}
