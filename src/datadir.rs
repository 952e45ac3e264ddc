//! The data directory (`--data-dir`): where a server keeps its rooms'
//! history, and how it finds it again. This module owns the directory's
//! layout, the lock that keeps a second process out, the state file that
//! says whether the last run shut down cleanly, and each room's small
//! description file. The logs themselves are [`crate::log`]'s; what they
//! mean to the chat is [`crate::disk`]'s.
//!
//! ```text
//! DIR/eddy.lock               locked (flock) while a server runs; holds its pid
//! DIR/state.json              {"clean": false, "boot_id": "…"}: how the last run ended
//! DIR/ids.json                {"next": 42}: the chat's next member id (MemberIds)
//! DIR/rooms/<room>/room.json  {"room": "rust", "epoch": "…", "earlier": [["…", 41]]}
//! DIR/rooms/<room>/…          the room's log: segments and checkpoint (crate::log)
//! ```
//!
//! A room's directory is named after the room (names are lower case letters,
//! digits, `-`, `_` and `.`), unless the name begins with `.` or is long (a
//! room name may have 64 characters of up to 4 bytes each): then `~` and a
//! 64-bit hash of it. `room.json` says which room a directory holds, so the
//! name is never read back from the directory's.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::history::Seq;

/// The lock file's name.
const LOCK: &str = "eddy.lock";

/// The state file's name.
const STATE: &str = "state.json";

/// The directory holding one directory per room.
const ROOMS: &str = "rooms";

/// A room's description file, in its directory.
const ROOM_META: &str = "room.json";

/// Room names longer than this (in bytes) get a hashed directory name, so
/// that every name fits the usual 255-byte limit with room to spare.
const MAX_PLAIN_NAME: usize = 120;

/// What went wrong with the data directory. Its message names the file and
/// says what to do; `main` prints it and exits 1.
#[derive(Debug)]
pub enum DataDirError {
    /// The operating system refused something.
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Another process holds the directory.
    Locked {
        /// The directory.
        path: PathBuf,
        /// The pid it wrote in the lock file, if it could be read.
        pid: Option<String>,
    },
    /// A file of ours that does not say what it should.
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A room's log is damaged where it was known good ([`crate::log`]).
    Log(crate::log::LogError),
}

impl fmt::Display for DataDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirError::Io {
                doing,
                path,
                source,
            } => write!(f, "cannot {doing} {}: {source}", path.display()),
            DataDirError::Locked { path, pid } => {
                write!(
                    f,
                    "the data directory {} is in use by another eddy process",
                    path.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                f.write_str("; stop it first, or give this one its own directory with --data-dir")
            }
            DataDirError::Bad { path, why } => write!(
                f,
                "{}: {why}. Move the file aside (or restore it from a backup) and start again",
                path.display()
            ),
            DataDirError::Log(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DataDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataDirError::Io { source, .. } => Some(source),
            DataDirError::Log(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DataDirError> for io::Error {
    /// For callers that speak `io::Error`, as [`crate::Server::bind`] does.
    fn from(e: DataDirError) -> Self {
        io::Error::other(e)
    }
}

impl From<crate::log::LogError> for DataDirError {
    fn from(e: crate::log::LogError) -> Self {
        DataDirError::Log(e)
    }
}

/// `doing` to `path` failed with `source`.
fn io_error<'p>(
    doing: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> DataDirError + 'p {
    move |source| DataDirError::Io {
        doing,
        path: path.to_path_buf(),
        source,
    }
}

/// How the last run left the directory (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// The run shut down cleanly: every log synced, every checkpoint at
    /// its log's end.
    clean: bool,
    /// The machine's boot it ran in (`/proc/sys/kernel/random/boot_id`):
    /// a crash in the same boot keeps whatever reached the page cache; a
    /// reboot (a power cut) may not have.
    #[serde(default)]
    boot_id: String,
}

/// What a room's directory says of it (`room.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMeta {
    /// The room's canonical name.
    pub room: String,
    /// The current epoch of its history.
    pub epoch: String,
    /// Earlier epochs this one continues, each with the last of its seqs
    /// that survived; oldest first.
    #[serde(default)]
    pub earlier: Vec<(String, Seq)>,
}

/// One room found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRoom {
    /// Its directory (the log's too).
    pub dir: PathBuf,
    /// What `room.json` says.
    pub meta: RoomMeta,
}

/// An open, locked data directory. The lock is held until this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Locked; closing it (on drop, or the process's death) unlocks.
    _lock: File,
    /// How the last run ended.
    previous: State,
    /// This boot's id.
    boot_id: String,
}

impl DataDir {
    /// Opens `path` (creating it if missing), locks it, and marks it in
    /// use: until [`mark_clean`](DataDir::mark_clean), a crash reads as
    /// one on the next start.
    pub fn open(path: impl AsRef<Path>) -> Result<DataDir, DataDirError> {
        let path = path.as_ref().to_path_buf();
        fs::create_dir_all(path.join(ROOMS)).map_err(io_error("create", &path))?;
        let lock_path = path.join(LOCK);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let pid = lock
                    .read_to_string(&mut pid)
                    .ok()
                    .map(|_| pid.trim().to_owned())
                    .filter(|p| !p.is_empty());
                return Err(DataDirError::Locked { path, pid });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path)(e)),
        }
        // The pid is for the message a second process prints; the lock,
        // not the pid, is what keeps it out (a container's pid is often 1).
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io_error("write", &lock_path))?;

        let state_path = path.join(STATE);
        let previous = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DataDirError::Bad {
                path: state_path.clone(),
                why: format!("not the state file eddy writes ({e})"),
            })?,
            // A new directory, or one from before the state file: no
            // clean shutdown is known.
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_error("read", &state_path)(e)),
        };
        let dir = DataDir {
            path,
            _lock: lock,
            previous,
            boot_id: boot_id(),
        };
        // Unclean from now on, but still of the last run's boot: if this
        // start fails (a damaged log), the next one still knows the
        // machine may have restarted since that run wrote.
        let previous_boot = dir.previous.boot_id.clone();
        dir.write_state(false, &previous_boot)?;
        Ok(dir)
    }

    /// Says this run has begun: its logs are recovered, and from now on an
    /// unclean stop is this boot's. Call it once startup succeeded.
    pub fn begin_run(&self) -> Result<(), DataDirError> {
        self.write_state(false, &self.boot_id)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last run shut down cleanly (every log synced to its end).
    pub fn was_clean(&self) -> bool {
        self.previous.clean
    }

    /// Whether the machine may have restarted since the last run wrote:
    /// then what it had not synced may be gone, even where no record was
    /// cut (a file can lose whole records at its end).
    pub fn rebooted(&self) -> bool {
        self.boot_id.is_empty() || self.previous.boot_id != self.boot_id
    }

    /// Says the run ended cleanly: call it last, after every log is synced.
    pub fn mark_clean(&self) -> Result<(), DataDirError> {
        self.write_state(true, &self.boot_id)
    }

    /// Replaces `state.json` atomically and durably.
    fn write_state(&self, clean: bool, boot_id: &str) -> Result<(), DataDirError> {
        let state = State {
            clean,
            boot_id: boot_id.to_owned(),
        };
        let json = serde_json::to_vec(&state).unwrap_or_default();
        write_atomically(&self.path, STATE, &json)
    }

    /// Directories of expired rooms moved aside and not deleted yet (the
    /// server stopped first): to delete.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        fs::read_dir(self.path.join(ROOMS))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".deleting-"))
            .map(|e| e.path())
            .collect()
    }

    /// The directory of `room` (which need not exist yet).
    pub fn room_dir(&self, room: &str) -> PathBuf {
        self.path.join(ROOMS).join(room_dir_name(room))
    }

    /// Every room in the directory, with what its `room.json` says. A
    /// directory without one (a room created and never written to, when
    /// the server died) is skipped; a damaged one is an error.
    pub fn rooms(&self) -> Result<Vec<FoundRoom>, DataDirError> {
        let rooms = self.path.join(ROOMS);
        let mut found = Vec::new();
        for entry in fs::read_dir(&rooms).map_err(io_error("read", &rooms))? {
            let entry = entry.map_err(io_error("read", &rooms))?;
            let dir = entry.path();
            // Not a room's: moved aside (expired, to delete; or found
            // without its room.json, kept for an operator).
            let aside = entry.file_name().to_string_lossy().starts_with('.');
            if !dir.is_dir() || aside {
                continue;
            }
            let Some(meta) = read_meta(&dir)? else {
                continue;
            };
            if dir.file_name() != Some(room_dir_name(&meta.room).as_ref()) {
                return Err(DataDirError::Bad {
                    path: dir.join(ROOM_META),
                    why: format!("it names the room {:?}, not this directory's", meta.room),
                });
            }
            found.push(FoundRoom { dir, meta });
        }
        found.sort_by(|a, b| a.meta.room.cmp(&b.meta.room));
        Ok(found)
    }
}

/// The ids a chat hands out, across runs (`ids.json`): so that an id in a
/// room's history never names two people, a run begins where the last one
/// stopped. A run reserves a block of ids ahead (one durable write per
/// [`ID_BLOCK`] ids); dropping it (a clean shutdown) gives back what it did
/// not use, and after a crash the next run begins past the whole
/// reservation.
#[derive(Debug)]
pub struct MemberIds {
    dir: PathBuf,
    /// Ids below this may have been handed out by this run.
    reserved_below: u64,
    /// The first id not handed out yet: where the next run begins after a
    /// clean shutdown.
    next: u64,
}

/// How many ids a run reserves at a time.
pub const ID_BLOCK: u64 = 1_000_000;

/// The ids file's name.
const IDS: &str = "ids.json";

/// `ids.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Ids {
    /// The first id the next run may hand out.
    next: u64,
}

impl MemberIds {
    /// Reads where the last run stopped in `dir` (a data directory this
    /// process has locked: [`DataDir::open`]) and reserves a block from
    /// there; returns the reservation and this run's first id (1 for a new
    /// directory).
    pub fn open(dir: &Path) -> Result<(MemberIds, u64), DataDirError> {
        let path = dir.join(IDS);
        let first = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Ids>(&bytes) {
                Ok(ids) if ids.next >= 1 && ids.next < 1 << 52 => ids.next,
                _ => {
                    return Err(DataDirError::Bad {
                        path,
                        why: "not the ids file eddy writes".into(),
                    });
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let mut ids = MemberIds {
            dir: dir.to_path_buf(),
            reserved_below: first,
            next: first,
        };
        ids.reserve(first)?;
        Ok((ids, first))
    }

    /// Notes that `id` was given to a newcomer, and makes sure it is
    /// reserved: writes a new reservation when it is not (once per
    /// [`ID_BLOCK`] ids). On an error the id is still unique in this run;
    /// only a crash before the next successful write could see it again.
    pub fn handed_out(&mut self, id: u64) -> Result<(), DataDirError> {
        self.next = self.next.max(id + 1);
        self.reserve(id)
    }

    /// Reserves up to `id` and a block past it, if it is not already.
    fn reserve(&mut self, id: u64) -> Result<(), DataDirError> {
        if id < self.reserved_below {
            return Ok(());
        }
        let below = id + ID_BLOCK;
        write_atomically(&self.dir, IDS, &ids_json(below))?;
        self.reserved_below = below;
        Ok(())
    }
}

impl Drop for MemberIds {
    /// A clean shutdown: the next run begins at the first id not handed out.
    fn drop(&mut self) {
        if let Err(e) = write_atomically(&self.dir, IDS, &ids_json(self.next)) {
            log::error!("{e}: the next run's ids begin past this run's reservation");
        }
    }
}

fn ids_json(next: u64) -> Vec<u8> {
    serde_json::to_vec(&Ids { next }).unwrap_or_default()
}

/// What `dir/room.json` says; `None` if there is none.
pub fn read_meta(dir: &Path) -> Result<Option<RoomMeta>, DataDirError> {
    let path = dir.join(ROOM_META);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DataDirError::Bad {
                path,
                why: format!("not the room file eddy writes ({e})"),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", &path)(e)),
    }
}

/// Writes `dir/room.json` (creating `dir`) atomically; `durable`: synced
/// too (else [`sync_room_dir`] must follow before its log is trusted).
pub fn write_meta(dir: &Path, meta: &RoomMeta, durable: bool) -> Result<(), DataDirError> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let json = serde_json::to_vec(meta).unwrap_or_default();
    if durable {
        write_atomically(dir, ROOM_META, &json)
    } else {
        replace(dir, ROOM_META, &json, false)
    }
}

/// Makes a room directory written with `durable: false` durable: its
/// `room.json`, its entries, and its name in the rooms directory.
pub fn sync_room_dir(dir: &Path) -> Result<(), DataDirError> {
    let meta = dir.join(ROOM_META);
    File::open(&meta)
        .and_then(|f| f.sync_all())
        .map_err(io_error("sync", &meta))?;
    sync_dir(dir)?;
    sync_dir(dir.parent().unwrap_or(dir))
}

/// Replaces `dir/name` with `bytes`: a temp file, synced, renamed over it,
/// and the directory synced, so a crash leaves the old file or the new one.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DataDirError> {
    replace(dir, name, bytes, true)
}

/// Replaces `dir/name` with `bytes` through a temp file and a rename
/// (atomic); `durable`: the file and the directory synced as well.
fn replace(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<(), DataDirError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_error("replace", &path))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Syncs a directory, so that names made or removed in it survive a
/// power cut.
fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

/// Moves a room's directory aside, to `rooms/.{how}-<its name>-<ms>`: a
/// rename, instant whatever it holds. Names beginning with `.` are never a
/// room's ([`room_dir_name`]), so it is out of the way at once. Returns
/// where it went (`None` if it was not there).
pub fn move_aside(dir: &Path, how: &str) -> Result<Option<PathBuf>, DataDirError> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("room");
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let to = dir.with_file_name(format!(".{how}-{name}-{ms}"));
    match fs::rename(dir, &to) {
        Ok(()) => Ok(Some(to)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("move aside", dir)(e)),
    }
}

/// The name of a room's directory: the room's own name when it is short
/// and does not begin with `.` (so `.` and `..` are never one), else `~`
/// and the FNV-1a hash of the name.
pub fn room_dir_name(room: &str) -> String {
    if !room.is_empty() && room.len() <= MAX_PLAIN_NAME && !room.starts_with('.') {
        return room.to_owned();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in room.as_bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("~{hash:016x}")
}

/// This boot's id, or "" where the system has none to give.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("eddy-datadir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        path
    }

    #[test]
    fn a_second_opener_is_refused_with_the_first_ones_pid() {
        let path = temp("lock");
        let first = DataDir::open(&path).unwrap();
        let Err(e) = DataDir::open(&path) else {
            panic!("opened twice");
        };
        let message = e.to_string();
        assert!(matches!(e, DataDirError::Locked { .. }), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        drop(first);
        DataDir::open(&path).expect("free again once the first is gone");
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_clean_mark_lasts_until_the_next_open() {
        let path = temp("clean");
        let dir = DataDir::open(&path).unwrap();
        assert!(!dir.was_clean(), "a new directory knows no clean shutdown");
        dir.mark_clean().unwrap();
        drop(dir);
        let dir = DataDir::open(&path).unwrap();
        assert!(dir.was_clean());
        assert!(!dir.rebooted(), "same boot");
        drop(dir); // not marked, and never begun: a failed start
        let dir = DataDir::open(&path).unwrap();
        assert!(!dir.was_clean());
        assert!(!dir.rebooted(), "the boot of the last run that ran");
        dir.begin_run().unwrap();
        drop(dir); // not marked: a crash
        let dir = DataDir::open(&path).unwrap();
        assert!(!dir.was_clean());
        drop(dir);
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn rooms_are_found_by_their_files_not_their_directory_names() {
        let path = temp("rooms");
        let dir = DataDir::open(&path).unwrap();
        let long = "é".repeat(64);
        for room in ["rust", "..", &long] {
            let meta = RoomMeta {
                room: room.to_owned(),
                epoch: "e".into(),
                earlier: vec![("d".into(), 7)],
            };
            write_meta(&dir.room_dir(room), &meta, room != "rust").unwrap();
        }
        assert!(dir.room_dir("..").starts_with(path.join(ROOMS)));
        assert_ne!(dir.room_dir("..").file_name().unwrap(), "..");
        let found: Vec<String> = dir
            .rooms()
            .unwrap()
            .into_iter()
            .map(|r| r.meta.room)
            .collect();
        assert_eq!(found, ["..", "rust", long.as_str()]);
        // A directory without room.json: skipped. A damaged one: an error.
        fs::create_dir(path.join(ROOMS).join("empty")).unwrap();
        assert_eq!(dir.rooms().unwrap().len(), 3);
        fs::write(dir.room_dir("rust").join(ROOM_META), b"{\"room\":").unwrap();
        let e = dir.rooms().unwrap_err().to_string();
        assert!(
            e.contains("room.json") && e.contains("not the room file"),
            "{e}"
        );
        fs::remove_dir_all(&path).unwrap();
    }
}
