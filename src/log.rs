//! One room's history on disk: an append-only log of checksummed records,
//! kept in segment files, recovered from a checkpoint on startup. Groundwork
//! for issue 11; not wired into the server yet.
//!
//! This module owns one directory (the caller picks it, one per room) and
//! everything in it. It knows nothing of rooms, epochs, JSON or the loop: a
//! record's payload is opaque bytes (the server will store each line's exact
//! JSON, so a replay never re-encodes), and the caller decides when to
//! append, sync, checkpoint, delete and close.
//!
//! # Layout on disk
//!
//! ```text
//! DIR/00000000000000000001.log   segment: records 1 ..= 4095
//! DIR/00000000000000004096.log   segment: records 4096 ..= (the active one, appended to)
//! DIR/checkpoint                 how far the log is known to be synced
//! ```
//!
//! A segment is named by the seq of its first record, zero-padded to 20
//! digits so that names sort as numbers (Kafka's naming). Only the newest
//! segment is written to; a new one begins before a batch once the active
//! one holds [`Options::segment_bytes`]. Retention deletes whole old
//! segments, never part of one.
//!
//! # A record
//!
//! ```text
//! len: u32 LE | crc: u32 LE | seq: u64 LE | payload: len bytes
//! ```
//!
//! `crc` is the CRC-32 (IEEE, as `crc32fast` computes it) of the seq's 8
//! bytes and the payload, so a record checks itself, seq included. `len` is at
//! most [`MAX_PAYLOAD`]: a larger one is invalid, whatever follows it, so a
//! damaged length never makes us allocate gigabytes. Seqs are dense: each
//! record's is one more than the one before, across segments too.
//!
//! # The checkpoint
//!
//! 36 bytes: a magic, the active segment's base seq, a byte offset in it
//! and the last seq before that offset, then a CRC-32 of those. It says
//! "everything up to here was on disk (`fdatasync`ed) when this was
//! written". It is replaced atomically (temp file, fsync, rename, fsync of
//! the directory); a torn or missing one is treated as "nothing known
//! synced", which costs a full scan and is always safe.
//!
//! # What recovery ([`Log::open`]) does
//!
//! 1. Lists the segments and reads the checkpoint.
//! 2. Trusts what the checkpoint says was synced: segments before the
//!    checkpoint's are not read (their bounds come from their names and
//!    sizes), except the first record of each, a cheap check that a
//!    segment begins where its name says. Opening a log with a gigabyte
//!    of history reads the checkpoint's tail, not the gigabyte.
//! 3. Validates every record from the checkpoint's offset to the end (what
//!    may not have reached the disk). The first invalid or incomplete
//!    record, or one out of sequence, ends the log: the file is cut there,
//!    later segments are deleted, and [`Recovered::cut`] says where and how
//!    much, for the caller's warning. This is a crash mid-write, or pages
//!    lost in a power cut, as Kafka and Redis's AOF treat them.
//! 4. Damage where the checkpoint says the data was synced (a file shorter
//!    than its checkpoint, a missing segment, a bad first record) is not a
//!    torn write: [`LogError::Corrupt`] names the file and offset, and
//!    nothing is cut. A bad record in the middle of an old segment is not
//!    seen at startup (it is not read); a read that reaches it gets the
//!    same error, never a silent skip.
//!
//! # Threads
//!
//! The [`Log`] lives on the loop thread. A helper thread syncs through a
//! [`SyncHandle`], which borrows nothing from the log; see its docs.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tungstenite::Bytes;

use crate::history::Seq;

/// Bytes before a record's payload: `len`, `crc`, `seq`.
pub const HEADER_BYTES: usize = 16;

/// The largest payload a record may carry: 16 MiB, as tungstenite's default
/// frame limit, far above any chat line. A header claiming more is invalid,
/// so a damaged length is caught at once instead of read as a huge record.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// The largest seq a log holds: 2^62, far beyond any room's lines, and far
/// enough below `u64::MAX` that counting on from any segment's name (which
/// is checked against it) cannot overflow.
pub const MAX_SEQ: Seq = 1 << 62;

/// The default [`Options::segment_bytes`]: 64 MiB, so a room with a
/// gigabyte of history has 16 files and retention frees space in steps a
/// small fraction of the whole.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Bytes between two entries of a segment's sparse index: a read scans at
/// most this much to reach its first record, and the index costs 16 bytes
/// per 64 KiB of log (256 KiB per GiB), and only for parts appended or read.
pub const INDEX_INTERVAL: u64 = 64 << 10;

/// How much a scan reads at a time: enough for many chat lines per
/// syscall, little enough to keep per read.
const READ_BLOCK: usize = 64 << 10;

/// The suffix of a segment file's name.
const SEGMENT_SUFFIX: &str = ".log";

/// Digits in a segment file's name: every u64 fits, and names sort as numbers.
const SEGMENT_DIGITS: usize = 20;

/// The checkpoint's file name, and the temp file it is written through.
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";

/// The first bytes of a checkpoint file: what it is, and its format's version.
const CHECKPOINT_MAGIC: &[u8; 8] = b"eddyckp1";

/// A checkpoint file's size: magic, three u64s, a crc.
const CHECKPOINT_BYTES: usize = 8 + 3 * 8 + 4;

// ---------------------------------------------------------------------------
// Records: a pure codec (fuzzed by fuzz/fuzz_targets/log_record.rs)
// ---------------------------------------------------------------------------

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid record.
    Record {
        /// Its seq.
        seq: Seq,
        /// Its payload, borrowed from the buffer.
        payload: &'a [u8],
        /// Bytes it takes in the buffer, header included: where the next
        /// record begins.
        size: usize,
    },
    /// The buffer ends inside a record: at least `needed` bytes (in all,
    /// from the record's start) are needed to decide. At the end of a file
    /// this is a torn write.
    Incomplete {
        /// [`HEADER_BYTES`] while the header is not all there, then the
        /// whole record's size.
        needed: usize,
    },
    /// Not a record: a length over [`MAX_PAYLOAD`] or a checksum mismatch.
    Invalid(Invalid),
}

/// Why bytes on disk are not the log they should be. [`decode`] gives the
/// first two; the others come from reading a log as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The header's length is over [`MAX_PAYLOAD`].
    TooLong {
        /// The length the header claims.
        len: u32,
    },
    /// The checksum does not match the seq and payload.
    Checksum {
        /// The crc in the header.
        stored: u32,
        /// The crc of what is there.
        computed: u32,
    },
    /// A record's seq is not one more than the one before (or a segment's
    /// first record does not have the seq its name says).
    OutOfSequence {
        /// The seq that should be there.
        expected: Seq,
        /// The seq found.
        found: Seq,
    },
    /// The file ends inside a record, or before its known length.
    Truncated,
    /// The file is shorter than the checkpoint says was synced.
    ShorterThanCheckpoint {
        /// The file's length.
        len: u64,
    },
    /// The segment the checkpoint names is not there.
    MissingSegment,
    /// A segment file whose name is not a seq of 1 or more.
    BadName,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::TooLong { len } => {
                write!(f, "record length {len} is over the limit of {MAX_PAYLOAD}")
            }
            Invalid::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            Invalid::OutOfSequence { expected, found } => {
                write!(f, "seq {found} where {expected} should be")
            }
            Invalid::Truncated => f.write_str("the file ends inside a record"),
            Invalid::ShorterThanCheckpoint { len } => write!(
                f,
                "the file is {len} bytes, shorter than the checkpoint says was synced"
            ),
            Invalid::MissingSegment => f.write_str("the segment the checkpoint names is missing"),
            Invalid::BadName => f.write_str("a segment file's name is not a seq of 1 or more"),
        }
    }
}

/// The checksum of a record: over its seq and payload.
fn checksum(seq: Seq, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the record at the start of `buf`. Pure, and never panics on any
/// input: this is what reads bytes from disk.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_BYTES>() else {
        return Decoded::Incomplete {
            needed: HEADER_BYTES,
        };
    };
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
    ] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let stored = u32::from_le_bytes([c0, c1, c2, c3]);
    let seq = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    // Checked before anything is sized from `len`: a damaged length is
    // refused, not believed. (u32 always fits in usize on the 32- and
    // 64-bit targets we build for; `MAX` makes a stranger one refuse.)
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > MAX_PAYLOAD {
        return Decoded::Invalid(Invalid::TooLong { len });
    }
    let Some(payload) = rest.get(..len_usize) else {
        return Decoded::Incomplete {
            needed: HEADER_BYTES + len_usize,
        };
    };
    let computed = checksum(seq, payload);
    if computed != stored {
        return Decoded::Invalid(Invalid::Checksum { stored, computed });
    }
    Decoded::Record {
        seq,
        payload,
        size: HEADER_BYTES + len_usize,
    }
}

/// Appends the record `(seq, payload)` to `out`. Refuses a payload over
/// [`MAX_PAYLOAD`] (nothing is appended), since it could never be read back.
pub fn encode(seq: Seq, payload: &[u8], out: &mut Vec<u8>) -> Result<(), Invalid> {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if payload.len() <= MAX_PAYLOAD => len,
        _ => {
            return Err(Invalid::TooLong {
                len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            });
        }
    };
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors and reports
// ---------------------------------------------------------------------------

/// What can go wrong with a log. Every variant names the file involved,
/// except those about the caller's own input.
#[derive(Debug)]
pub enum LogError {
    /// The operating system refused something (a full disk, permissions, no
    /// descriptors left). The log is still usable: a failed append was cut
    /// back, and the operation can be retried.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Data the log had promised (synced, or already read before) is
    /// damaged. Never repaired silently: an operator must look.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong there.
        reason: Invalid,
    },
    /// [`Log::append`] got a seq that is not the next one; nothing was written.
    OutOfSequence {
        /// The seq the log expected.
        expected: Seq,
        /// The seq it was given.
        found: Seq,
    },
    /// [`Log::append`] got a payload over [`MAX_PAYLOAD`]; nothing was written.
    TooLarge {
        /// Its seq.
        seq: Seq,
        /// Its size.
        len: usize,
    },
}

impl LogError {
    /// An [`LogError::Io`] about `path`.
    fn io(path: &Path, source: io::Error) -> LogError {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            LogError::Corrupt {
                path,
                offset,
                reason,
            } => {
                let dir = path.parent().unwrap_or(Path::new("."));
                write!(
                    f,
                    "{}: corrupt log at byte {offset}: {reason}. This part of the log was \
                     already synced to disk, so it is damage, not a torn write, and Eddy will \
                     not cut it away by itself. To recover, stop the server and move the \
                     directory {} aside (its room starts afresh; keep the copy to examine it), \
                     or restore that directory from a backup.",
                    path.display(),
                    dir.display()
                )
            }
            LogError::OutOfSequence { expected, found } => {
                write!(f, "append: seq {found} given, {expected} expected")
            }
            LogError::TooLarge { seq, len } => write!(
                f,
                "append: record {seq} has {len} bytes, over the limit of {MAX_PAYLOAD}"
            ),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A position in a log: "everything before byte `offset` of segment
/// `segment`, up to seq `last`". What a checkpoint records. Ordered by
/// place in the log (segment, then offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// The base seq (file name) of the segment.
    pub segment: Seq,
    /// Bytes of that segment covered.
    pub offset: u64,
    /// The seq of the last record before `offset` (`segment - 1` at offset 0).
    pub last: Seq,
}

/// What [`Log::open`] made of the checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointState {
    /// Valid: only what follows it was scanned.
    Used(Checkpoint),
    /// No checkpoint file: everything was scanned.
    Missing,
    /// Torn, damaged or inconsistent: ignored, everything was scanned.
    Invalid,
    /// It names a segment older than any kept (retention deleted it after
    /// the checkpoint was written): everything kept was scanned.
    Stale(Checkpoint),
}

/// Where recovery cut a log, for the caller's warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The file cut (or, if its first record was bad, deleted).
    pub path: PathBuf,
    /// Where the log now ends in it.
    pub offset: u64,
    /// Bytes dropped, in that file and any later segments.
    pub dropped: u64,
    /// Segment files deleted whole: every later one, and the cut one too
    /// if nothing of it was left (then `path` names a deleted file).
    pub segments_deleted: usize,
    /// What was found at `offset`.
    pub reason: Invalid,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: log cut at byte {} ({}): {} bytes dropped",
            self.path.display(),
            self.offset,
            self.reason,
            self.dropped
        )?;
        if self.segments_deleted > 0 {
            write!(f, ", {} later segment(s) deleted", self.segments_deleted)?;
        }
        Ok(())
    }
}

/// What [`Log::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The oldest seq kept; `last + 1` if the log is empty.
    pub first: Seq,
    /// The newest seq kept; 0 if the log never held a record.
    pub last: Seq,
    /// Bytes in all segments.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// How the checkpoint was used.
    pub checkpoint: CheckpointState,
    /// Bytes read and validated: what opening cost.
    pub scanned: u64,
    /// Where the log was cut, if it was: records may have been lost (a
    /// crash mid-write, or a power cut after unsynced writes).
    pub cut: Option<Cut>,
}

/// Records read from a log ([`Log::read_from`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Seqs asked for that the log no longer holds (deleted by retention),
    /// first and last: the reader must be told. They come before `records`.
    pub gap: Option<(Seq, Seq)>,
    /// Consecutive records, oldest first.
    pub records: Vec<Record>,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its seq.
    pub seq: Seq,
    /// Its payload, owned (copied out of the read buffer).
    pub payload: Bytes,
}

/// What retention deleted ([`Log::delete_before`], [`Log::delete_to_fit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The segment files deleted, oldest first.
    pub paths: Vec<PathBuf>,
    /// Their bytes.
    pub bytes: u64,
}

/// A log's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A new segment begins before a batch once the active one holds this
    /// many bytes (so a segment can exceed it by one batch). Retention
    /// frees space in steps of about this much.
    pub segment_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

// ---------------------------------------------------------------------------
// Syncing, from any thread
// ---------------------------------------------------------------------------

/// Syncs a log from another thread, and writes its checkpoint; cheap to
/// clone. Redis's `appendfsync everysec`: a helper thread calls
/// [`sync`](SyncHandle::sync), then
/// [`write_checkpoint`](SyncHandle::write_checkpoint), once a second, so the
/// loop never waits for the disk.
///
/// It borrows nothing from the [`Log`] and holds no descriptor: it opens
/// the segments by path when it syncs (Linux syncs the file, not the
/// descriptor), so the log may close its files, roll and delete segments
/// meanwhile. A segment roll needs nothing from the caller: the log hands
/// the segment it leaves to the handle, and the next sync syncs that one,
/// then the directory (for the new file's name), then the new active one,
/// before it reports the new position as synced. A segment deleted before
/// it was synced is skipped. An idle log costs a sync nothing: no open, no
/// syscall.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    shared: Arc<Shared>,
}

/// What a log and its sync handles share.
#[derive(Debug)]
struct Shared {
    /// The log's directory.
    dir: PathBuf,
    /// What to sync; locked briefly, never across a syscall that waits on
    /// the disk, so an append never waits for a sync.
    state: Mutex<SyncState>,
    /// The last checkpoint written. Held across the checkpoint's write, so
    /// two writers (the loop and a helper) take turns and never go back.
    checkpointed: Mutex<Option<Checkpoint>>,
}

/// What is written but not yet known synced.
#[derive(Debug, Default)]
struct SyncState {
    /// The active segment's path, once there is one.
    active: Option<PathBuf>,
    /// Segments left by a roll (or scanned at open) not synced since.
    sealed: Vec<PathBuf>,
    /// A segment was created or deleted since the last directory sync.
    dir_dirty: bool,
    /// Where the log ends (after the last successful append).
    written: Option<Checkpoint>,
    /// How far the last successful sync reached.
    synced: Option<Checkpoint>,
}

/// Locks a mutex, whether or not another thread panicked holding it: the
/// state is plain data, valid between any two statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fsyncs a directory, so that names created, renamed or removed in it
/// survive a power cut (a file's own fsync does not cover its name).
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

impl Shared {
    /// Syncs everything written so far; the active segment through
    /// `active_file` if the caller has it open. Returns the position now
    /// known synced, or `None` if nothing was written since the last sync.
    fn sync(&self, active_file: Option<&File>) -> Result<Option<Checkpoint>, LogError> {
        let (sealed, dir_dirty, active, written) = {
            let mut state = lock(&self.state);
            if state.written == state.synced && state.sealed.is_empty() && !state.dir_dirty {
                return Ok(None);
            }
            (
                std::mem::take(&mut state.sealed),
                std::mem::take(&mut state.dir_dirty),
                state.active.clone(),
                state.written,
            )
        };
        // Whatever `written` covers was written before we took it, so the
        // syncs below (which begin after) cover it.
        let result = (|| {
            for path in &sealed {
                match File::open(path) {
                    Ok(file) => file.sync_data().map_err(|e| LogError::io(path, e))?,
                    // Deleted by retention before it was synced: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io(path, e)),
                }
            }
            if dir_dirty {
                sync_dir(&self.dir)?;
            }
            if let Some(path) = &active {
                match active_file {
                    Some(file) => file.sync_data(),
                    None => File::open(path).and_then(|f| f.sync_data()),
                }
                .map_err(|e| LogError::io(path, e))?;
            }
            Ok(())
        })();
        let mut state = lock(&self.state);
        if let Err(e) = result {
            // Try again next time. (On Linux a failed fsync may have
            // dropped the dirty pages already, so a later success does not
            // prove they reached the disk: the caller should say so loudly.)
            let mut again = sealed;
            again.append(&mut state.sealed);
            state.sealed = again;
            state.dir_dirty |= dir_dirty;
            return Err(e);
        }
        if written > state.synced {
            state.synced = written;
        }
        Ok(written)
    }

    /// Writes the last synced position as the checkpoint, if it is newer
    /// than the checkpoint already written; returns what was written.
    fn write_checkpoint(&self) -> Result<Option<Checkpoint>, LogError> {
        let mut checkpointed = lock(&self.checkpointed);
        let synced = lock(&self.state).synced;
        let Some(at) = synced else { return Ok(None) };
        if checkpointed.is_some_and(|c| c >= at) {
            return Ok(None);
        }
        store_checkpoint(&self.dir, at)?;
        *checkpointed = Some(at);
        Ok(Some(at))
    }
}

impl SyncHandle {
    /// Syncs (`fdatasync`) every segment written since the last sync, and
    /// the directory if a segment was created or deleted. Returns the
    /// position now known synced, or `None` if nothing was written since.
    /// Blocks on the disk: call it from a helper thread, not the loop.
    pub fn sync(&self) -> Result<Option<Checkpoint>, LogError> {
        self.shared.sync(None)
    }

    /// Writes the last position [`sync`](SyncHandle::sync) reached as the
    /// checkpoint, if it moved since the last one (2 fsyncs); returns it.
    /// The checkpoint may lag the syncs (it only bounds what the next
    /// startup scans), so it needn't follow every sync.
    pub fn write_checkpoint(&self) -> Result<Option<Checkpoint>, LogError> {
        self.shared.write_checkpoint()
    }
}

/// The checkpoint's 36 bytes.
fn encode_checkpoint(at: Checkpoint) -> [u8; CHECKPOINT_BYTES] {
    let mut out = [0u8; CHECKPOINT_BYTES];
    let mut body = Vec::with_capacity(CHECKPOINT_BYTES);
    body.extend_from_slice(CHECKPOINT_MAGIC);
    body.extend_from_slice(&at.segment.to_le_bytes());
    body.extend_from_slice(&at.offset.to_le_bytes());
    body.extend_from_slice(&at.last.to_le_bytes());
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    out.copy_from_slice(&body);
    out
}

/// A checkpoint's bytes back, if they are whole, intact and consistent.
fn decode_checkpoint(bytes: &[u8]) -> Option<Checkpoint> {
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    if bytes.len() != CHECKPOINT_BYTES || crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return None;
    }
    let (magic, rest) = body.split_first_chunk::<8>()?;
    let (segment, rest) = rest.split_first_chunk::<8>()?;
    let (offset, rest) = rest.split_first_chunk::<8>()?;
    let last = rest.first_chunk::<8>()?;
    let at = Checkpoint {
        segment: u64::from_le_bytes(*segment),
        offset: u64::from_le_bytes(*offset),
        last: u64::from_le_bytes(*last),
    };
    // A segment's first seq is at least 1; at its offset 0 nothing of it
    // is covered; past 0, at least its first record is.
    let consistent = at.segment >= 1
        && at.segment <= MAX_SEQ
        && at.last < 2 * MAX_SEQ
        && if at.offset == 0 {
            at.last == at.segment - 1
        } else {
            at.last >= at.segment
        };
    (magic == CHECKPOINT_MAGIC && consistent).then_some(at)
}

/// Replaces `dir`'s checkpoint atomically: a reader after a crash finds the
/// old one or the new one, whole.
fn store_checkpoint(dir: &Path, at: Checkpoint) -> Result<(), LogError> {
    let tmp = dir.join(CHECKPOINT_TMP);
    let path = dir.join(CHECKPOINT);
    let mut file = File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    file.write_all(&encode_checkpoint(at))
        .and_then(|()| file.sync_all())
        .map_err(|e| LogError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    sync_dir(dir)
}

/// The checkpoint in `dir`, and what became of it.
fn load_checkpoint(dir: &Path) -> Result<CheckpointState, LogError> {
    let path = dir.join(CHECKPOINT);
    match fs::read(&path) {
        // A file of any size is read whole only up to what we expect.
        Ok(bytes) => Ok(match decode_checkpoint(&bytes) {
            Some(at) => CheckpointState::Used(at),
            None => CheckpointState::Invalid,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(CheckpointState::Missing),
        Err(e) => Err(LogError::io(&path, e)),
    }
}

// ---------------------------------------------------------------------------
// Reading a segment
// ---------------------------------------------------------------------------

/// One step of a [`Scanner`].
enum Step<'a> {
    /// A valid record at `offset`.
    Record {
        seq: Seq,
        payload: &'a [u8],
        offset: u64,
    },
    /// The end, exactly at a record boundary.
    End,
    /// No valid record at `offset`.
    Bad { offset: u64, reason: Invalid },
}

/// Reads records one after another from a segment file, a block at a time
/// (`pread`, so the file's cursor, shared with nothing, is never moved).
struct Scanner<'f> {
    file: &'f File,
    /// File offset of `buf[0]`.
    at: u64,
    /// Where the segment's records end.
    end: u64,
    buf: Vec<u8>,
    /// Where the next record begins in `buf`.
    pos: usize,
}

impl<'f> Scanner<'f> {
    fn new(file: &'f File, from: u64, end: u64) -> Self {
        Scanner {
            file,
            at: from,
            end,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The file offset of the next record.
    fn offset(&self) -> u64 {
        self.at + self.pos as u64
    }

    fn next(&mut self) -> io::Result<Step<'_>> {
        loop {
            let offset = self.offset();
            let available = self.buf.get(self.pos..).unwrap_or_default();
            match decode(available) {
                Decoded::Record { seq, size, .. } => {
                    let start = self.pos;
                    self.pos += size;
                    let payload = self
                        .buf
                        .get(start + HEADER_BYTES..start + size)
                        .unwrap_or_default();
                    return Ok(Step::Record {
                        seq,
                        payload,
                        offset,
                    });
                }
                Decoded::Invalid(reason) => return Ok(Step::Bad { offset, reason }),
                Decoded::Incomplete { needed } => {
                    let left = self.end.saturating_sub(offset);
                    if left == 0 {
                        return Ok(Step::End);
                    }
                    // Never read (or allocate) past the segment's end: a
                    // length pointing beyond it is a torn record, found
                    // without reading it.
                    if needed as u64 > left {
                        return Ok(Step::Bad {
                            offset,
                            reason: Invalid::Truncated,
                        });
                    }
                    if !self.fill(needed, left)? {
                        return Ok(Step::Bad {
                            offset,
                            reason: Invalid::Truncated,
                        });
                    }
                }
            }
        }
    }

    /// Makes at least `needed` bytes available from the next record on
    /// (reading a block or more, never past `left`). False if the file
    /// ends first (shorter than we were told).
    fn fill(&mut self, needed: usize, left: u64) -> io::Result<bool> {
        self.buf.drain(..self.pos.min(self.buf.len()));
        self.at += self.pos as u64;
        self.pos = 0;
        let have = self.buf.len();
        let want = needed
            .max(READ_BLOCK)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if want <= have {
            return Ok(true);
        }
        self.buf.resize(want, 0);
        let target = self.buf.get_mut(have..).unwrap_or_default();
        match self.file.read_exact_at(target, self.at + have as u64) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.buf.truncate(have);
                Ok(false)
            }
            Err(e) => {
                self.buf.truncate(have);
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// The seq of its first record: its name.
    base: Seq,
    path: PathBuf,
    /// Bytes of records in it: the file's length, trusted for segments
    /// before the checkpoint, validated for the rest.
    bytes: u64,
    /// A sparse index, (seq, offset) of some records in order, at most one
    /// per [`INDEX_INTERVAL`] bytes; always begins with `(base, 0)`. Filled
    /// by appends, by the scan at open, and by reads as they pass.
    index: Vec<(Seq, u64)>,
}

impl Segment {
    fn new(dir: &Path, base: Seq, bytes: u64) -> Segment {
        Segment {
            base,
            path: dir.join(segment_name(base)),
            bytes,
            index: vec![(base, 0)],
        }
    }

    /// Notes that the record `seq` begins at `offset`, where `k` is the
    /// index entry last passed; returns the entry passed now. Adds an
    /// entry only [`INDEX_INTERVAL`] bytes after the one before.
    fn note(&mut self, k: usize, seq: Seq, offset: u64) -> usize {
        if self.index.get(k + 1).is_some_and(|&(s, _)| s <= seq) {
            return k + 1;
        }
        match self.index.get(k) {
            Some(&(_, at)) if offset >= at + INDEX_INTERVAL => {
                self.index.insert(k + 1, (seq, offset));
                k + 1
            }
            _ => k,
        }
    }

    /// The index entry to start from to find `seq`: its position in the
    /// index, and the (seq, offset) there.
    fn locate(&self, seq: Seq) -> (usize, Seq, u64) {
        let k = self
            .index
            .partition_point(|&(s, _)| s <= seq)
            .saturating_sub(1);
        let (s, offset) = self.index.get(k).copied().unwrap_or((self.base, 0));
        (k, s, offset)
    }
}

/// A segment's file name: its base seq, 20 digits, `.log`.
fn segment_name(base: Seq) -> String {
    format!("{base:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_DIGITS)
}

/// A segment's base seq from its file name; `None` if the name is not a
/// segment's, `Some(0)` for a segment's name with no valid seq.
fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // 20 digits can exceed u64 (99…9), and a seq near u64::MAX would
    // overflow as records follow it: such a name is damage, as 0 is.
    Some(
        digits
            .parse()
            .ok()
            .filter(|&base| base <= MAX_SEQ)
            .unwrap_or(0),
    )
}

/// One room's log: the loop thread's side. See the module docs.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    options: Options,
    /// Oldest first, contiguous in seqs; the last is the active one. Empty
    /// only for a log that never held a record.
    segments: Vec<Segment>,
    /// The last seq appended; `segments[last].base - 1` while the active
    /// segment is empty; 0 for a log that never held one.
    last: Seq,
    /// The active segment, open for appending; `None` until needed, and
    /// after [`close_files`](Log::close_files).
    writer: Option<File>,
    /// The segment last read (its base), kept open for the next read,
    /// which usually continues from where this one stopped.
    reader: Option<(Seq, File)>,
    /// Encodes a batch; kept between appends so a turn allocates nothing.
    buf: Vec<u8>,
    /// Index entries for the batch being appended (seq, offset in segment).
    batch_index: Vec<(Seq, u64)>,
    /// Set when cutting a failed append back failed too: the active
    /// segment's length to cut back to before anything else is written.
    cut_to: Option<u64>,
    shared: Arc<Shared>,
    /// Tests: the next append writes this many bytes, then fails.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it as the module
    /// docs describe. The directory is created if missing.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Log, Recovered), LogError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        // A checkpoint.tmp is a write that did not finish: the checkpoint
        // itself is still the old one.
        match fs::remove_file(dir.join(CHECKPOINT_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(LogError::io(&dir.join(CHECKPOINT_TMP), e));
            }
            _ => {}
        }
        let mut segments = list_segments(&dir)?;
        let mut checkpoint = load_checkpoint(&dir)?;

        // Where validation begins: (segment, offset, the seq expected there).
        let mut start = (0, 0, segments.first().map_or(0, |s| s.base));
        if let CheckpointState::Used(at) = checkpoint {
            match segments.iter().position(|s| s.base == at.segment) {
                Some(i) => {
                    let segment = &segments[i];
                    if segment.bytes < at.offset {
                        return Err(LogError::Corrupt {
                            path: segment.path.clone(),
                            offset: at.offset,
                            reason: Invalid::ShorterThanCheckpoint { len: segment.bytes },
                        });
                    }
                    start = (i, at.offset, at.last + 1);
                }
                None if segments.first().is_some_and(|s| at.segment < s.base) => {
                    checkpoint = CheckpointState::Stale(at);
                }
                // An empty log checkpointed before its first append.
                None if segments.is_empty() && at.offset == 0 => {}
                None => {
                    return Err(LogError::Corrupt {
                        path: dir.join(segment_name(at.segment)),
                        offset: at.offset,
                        reason: Invalid::MissingSegment,
                    });
                }
            }
        }

        // Trusted segments: only check that each begins where its name says.
        let (first_scanned, from, mut expected) = start;
        for segment in segments.iter().take(first_scanned + usize::from(from > 0)) {
            check_first_record(segment)?;
        }

        // Validate from the checkpoint to the end.
        let mut scanned = 0;
        let mut cut = None;
        let mut i = first_scanned;
        let mut offset = from;
        if let Some(segment) = segments.get_mut(i)
            && offset > 0
        {
            segment.index.push((expected, offset));
        }
        while i < segments.len() {
            let outcome = scan_segment(&mut segments[i], offset, &mut expected)?;
            scanned += outcome.scanned;
            if let Some((at, reason)) = outcome.bad {
                cut = Some(cut_log(&dir, &mut segments, i, at, reason)?);
                break;
            }
            // The next segment must begin where this one ended.
            if let Some(next) = segments.get(i + 1)
                && next.base != expected
            {
                let reason = Invalid::OutOfSequence {
                    expected,
                    found: next.base,
                };
                cut = Some(cut_log(&dir, &mut segments, i + 1, 0, reason)?);
                break;
            }
            i += 1;
            offset = 0;
        }

        let last = expected.saturating_sub(1);
        let mut state = SyncState {
            active: segments.last().map(|s| s.path.clone()),
            ..SyncState::default()
        };
        // What was scanned may not be on disk yet: the first sync covers it.
        let mut checkpointed = None;
        if let CheckpointState::Used(at) = checkpoint {
            state.synced = Some(at);
            checkpointed = Some(at);
        }
        let scanned_from = first_scanned.min(segments.len().saturating_sub(1));
        state.sealed = segments
            .iter()
            .skip(scanned_from)
            .take(segments.len().saturating_sub(scanned_from + 1))
            .map(|s| s.path.clone())
            .collect();
        if let Some(active) = segments.last() {
            state.written = Some(Checkpoint {
                segment: active.base,
                offset: active.bytes,
                last,
            });
        }
        let log = Log {
            shared: Arc::new(Shared {
                dir: dir.clone(),
                state: Mutex::new(state),
                checkpointed: Mutex::new(checkpointed),
            }),
            dir,
            options,
            segments,
            last,
            writer: None,
            reader: None,
            buf: Vec::new(),
            batch_index: Vec::new(),
            cut_to: None,
            #[cfg(test)]
            fail_after: None,
        };
        let recovered = Recovered {
            first: log.first(),
            last: log.last(),
            bytes: log.bytes(),
            segments: log.segments.len(),
            checkpoint,
            scanned,
            cut,
        };
        Ok((log, recovered))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest seq kept; `last() + 1` if the log is empty.
    pub fn first(&self) -> Seq {
        match self.segments.first() {
            Some(s) if s.base <= self.last => s.base,
            _ => self.last + 1,
        }
    }

    /// The newest seq kept, 0 if the log never held a record.
    pub fn last(&self) -> Seq {
        self.last
    }

    /// How many records it keeps (`first()..=last()`).
    pub fn records(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first())
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The last seq of the segment that holds `seq` (the log's last, for
    /// the active one): where a reader goes on past a damaged segment.
    pub fn segment_end(&self, seq: Seq) -> Seq {
        let next = self.segments.partition_point(|s| s.base <= seq);
        self.segments
            .get(next)
            .map_or(self.last, |s| s.base.saturating_sub(1))
    }

    /// Where the log ends: what a sync now would make durable.
    pub fn position(&self) -> Option<Checkpoint> {
        lock(&self.shared.state).written
    }

    /// Appends one batch of records (all of a room's lines of one loop
    /// turn) with one `write`: Redis's and Kafka's group commit. Seqs must
    /// continue the log densely (an empty log takes any first seq of 1 or
    /// more); a bad seq or size writes nothing.
    ///
    /// On any write error, a short write or a full disk included, the
    /// segment is cut back to its length before the batch, so no partial
    /// record is ever buried under a later one, and the log stays usable:
    /// the same seqs can be appended again. The data is in the page cache
    /// when this returns, not necessarily on disk: see [`Log::sync`].
    pub fn append<'p>(
        &mut self,
        batch: impl IntoIterator<Item = (Seq, &'p [u8])>,
    ) -> Result<(), LogError> {
        if let Some(len) = self.cut_to {
            self.cut_active(len)?;
        }
        // Roll before the batch, so that a batch never spans two files.
        let rolling = self
            .segments
            .last()
            .is_some_and(|s| s.bytes > 0 && s.bytes >= self.options.segment_bytes);
        let (mut offset, mut entry) = match self.segments.last() {
            Some(s) if !rolling => (s.bytes, s.index.last().map_or(0, |&(_, at)| at)),
            _ => (0, 0),
        };
        let mut expected = (!self.segments.is_empty()).then_some(self.last + 1);
        self.buf.clear();
        self.batch_index.clear();
        let mut first = None;
        for (seq, payload) in batch {
            match expected {
                Some(e) if seq != e => {
                    return Err(LogError::OutOfSequence {
                        expected: e,
                        found: seq,
                    });
                }
                None if seq == 0 || seq > MAX_SEQ => {
                    return Err(LogError::OutOfSequence {
                        expected: 1,
                        found: seq,
                    });
                }
                _ => {}
            }
            let start = self.buf.len();
            encode(seq, payload, &mut self.buf).map_err(|_| LogError::TooLarge {
                seq,
                len: payload.len(),
            })?;
            if offset >= entry + INDEX_INTERVAL {
                self.batch_index.push((seq, offset));
                entry = offset;
            }
            offset += (self.buf.len() - start) as u64;
            first.get_or_insert(seq);
            expected = Some(seq + 1);
        }
        let (Some(first), Some(next)) = (first, expected) else {
            return Ok(()); // an empty batch
        };
        if rolling || self.segments.is_empty() {
            self.roll(first)?;
        }
        let Some(active) = self.segments.last_mut() else {
            return Ok(()); // roll() always leaves one; unreachable
        };
        if self.writer.is_none() {
            let file = OpenOptions::new()
                .append(true)
                .open(&active.path)
                .map_err(|e| LogError::io(&active.path, e))?;
            self.writer = Some(file);
        }
        let Some(file) = self.writer.as_mut() else {
            return Ok(()); // opened above; unreachable
        };
        let before = active.bytes;
        #[cfg(test)]
        let result = match self.fail_after.take() {
            Some(n) => file
                .write_all(self.buf.get(..n).unwrap_or(&self.buf[..]))
                .and_then(|()| Err(io::ErrorKind::StorageFull.into())),
            None => file.write_all(&self.buf),
        };
        #[cfg(not(test))]
        let result = file.write_all(&self.buf);
        if let Err(e) = result {
            let path = active.path.clone();
            // The file was opened for appending, so whatever part was
            // written sits at its end: cutting to `before` removes it all.
            self.cut_to = Some(before);
            if let Err(cut) = self.cut_active(before) {
                ::log::error!("{cut}: after a failed append; appends wait until it can be cut");
            }
            return Err(LogError::io(&path, e));
        }
        active.bytes = offset;
        active.index.extend_from_slice(&self.batch_index);
        self.last = next - 1;
        lock(&self.shared.state).written = Some(Checkpoint {
            segment: active.base,
            offset,
            last: self.last,
        });
        Ok(())
    }

    /// Cuts the active segment back to `len` bytes (a failed append's
    /// leftovers). Until it succeeds nothing more is appended.
    fn cut_active(&mut self, len: u64) -> Result<(), LogError> {
        let Some(active) = self.segments.last() else {
            self.cut_to = None;
            return Ok(());
        };
        let result = match &self.writer {
            Some(file) => file.set_len(len),
            None => OpenOptions::new()
                .write(true)
                .open(&active.path)
                .and_then(|f| f.set_len(len)),
        };
        result.map_err(|e| LogError::io(&active.path, e))?;
        self.cut_to = None;
        Ok(())
    }

    /// Begins a new segment whose first record will be `base`.
    fn roll(&mut self, base: Seq) -> Result<(), LogError> {
        let segment = Segment::new(&self.dir, base, 0);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&segment.path)
            .map_err(|e| LogError::io(&segment.path, e))?;
        let mut state = lock(&self.shared.state);
        if let Some(old) = state.active.replace(segment.path.clone()) {
            state.sealed.push(old);
        }
        state.dir_dirty = true;
        drop(state);
        self.writer = Some(file);
        self.segments.push(segment);
        Ok(())
    }

    /// Syncs what was appended (the `always` policy: call it before the
    /// turn's flush to sockets). Returns the position now known synced, or
    /// `None` if nothing was appended since the last sync. Blocks on the
    /// disk; a helper thread uses a [`SyncHandle`] instead.
    pub fn sync(&mut self) -> Result<Option<Checkpoint>, LogError> {
        self.shared.sync(self.writer.as_ref())
    }

    /// Writes the last synced position as the checkpoint, if it moved (2
    /// fsyncs); returns it. See [`SyncHandle::write_checkpoint`].
    pub fn write_checkpoint(&self) -> Result<Option<Checkpoint>, LogError> {
        self.shared.write_checkpoint()
    }

    /// A handle through which another thread syncs this log.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Closes the log's files (an idle room, so thousands of rooms don't
    /// hold thousands of descriptors); the next append or read reopens
    /// what it needs. What was appended stays in the page cache, and a
    /// [`SyncHandle`] still syncs it.
    pub fn close_files(&mut self) {
        self.writer = None;
        self.reader = None;
    }

    /// How many files the log holds open (0, 1 or 2).
    pub fn open_files(&self) -> usize {
        usize::from(self.writer.is_some()) + usize::from(self.reader.is_some())
    }

    /// Records from `from` on, oldest first: as many consecutive ones as
    /// fit in `max_bytes` of payload, but at least one if any is held, so
    /// a record larger than the budget still comes back. Seqs no longer
    /// held are named in [`Records::gap`]; nothing comes back for a seq
    /// past [`last`](Log::last).
    ///
    /// Finds the segment by its name, then the record through the
    /// segment's sparse index, reading at most [`INDEX_INTERVAL`] bytes
    /// before the first record wanted. A damaged record is
    /// [`LogError::Corrupt`], never skipped: the records before it come
    /// back first, and the read that begins at it gets the error.
    pub fn read_from(&mut self, from: Seq, max_bytes: usize) -> Result<Records, LogError> {
        let mut out = Records::default();
        match self.read_into(from, max_bytes, &mut out) {
            Err(e) if out.records.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// [`read_from`](Log::read_from), into `out`.
    fn read_into(
        &mut self,
        from: Seq,
        max_bytes: usize,
        out: &mut Records,
    ) -> Result<(), LogError> {
        let from = from.max(1);
        let first = self.first();
        if from < first {
            out.gap = Some((from, first - 1));
        }
        let mut want = from.max(first);
        let mut bytes = 0usize;
        let mut i = self
            .segments
            .partition_point(|s| s.base <= want)
            .saturating_sub(1);
        while want <= self.last {
            let Some(segment) = self.segments.get_mut(i) else {
                break;
            };
            if self
                .reader
                .as_ref()
                .is_none_or(|(base, _)| *base != segment.base)
            {
                // One reader at a time: a descriptor per log, not per segment.
                self.reader = None;
                let file = File::open(&segment.path).map_err(|e| LogError::io(&segment.path, e))?;
                self.reader = Some((segment.base, file));
            }
            let Some((_, file)) = &self.reader else {
                break; // set above; unreachable
            };
            let (mut k, mut expected, offset) = segment.locate(want);
            let mut scanner = Scanner::new(file, offset, segment.bytes);
            loop {
                let step = scanner.next().map_err(|e| LogError::io(&segment.path, e))?;
                match step {
                    Step::Record {
                        seq,
                        payload,
                        offset,
                    } => {
                        if seq != expected {
                            return Err(corrupt(
                                &segment.path,
                                offset,
                                Invalid::OutOfSequence {
                                    expected,
                                    found: seq,
                                },
                            ));
                        }
                        expected += 1;
                        k = segment.note(k, seq, offset);
                        if seq < want {
                            continue;
                        }
                        if !out.records.is_empty() && bytes + payload.len() > max_bytes {
                            return Ok(());
                        }
                        bytes += payload.len();
                        out.records.push(Record {
                            seq,
                            payload: Bytes::copy_from_slice(payload),
                        });
                        want = seq + 1;
                    }
                    Step::End => break,
                    Step::Bad { offset, reason } => {
                        return Err(corrupt(&segment.path, offset, reason));
                    }
                }
            }
            // A segment must end where the next begins (or the log ends).
            let end = self.segments.get(i + 1).map_or(self.last + 1, |s| s.base);
            if expected != end
                && let Some(segment) = self.segments.get(i)
            {
                // Records missing at the end of this segment (a file cut
                // short where it was trusted), or extra ones.
                let reason = Invalid::OutOfSequence {
                    expected: end,
                    found: expected,
                };
                return Err(corrupt(&segment.path, segment.bytes, reason));
            }
            i += 1;
        }
        Ok(())
    }

    /// Retention by seq: deletes whole segments whose records are all
    /// below `seq`. Never the active segment.
    pub fn delete_before(&mut self, seq: Seq) -> Result<Deleted, LogError> {
        self.delete_oldest_while(|segments, _| segments.get(1).is_some_and(|next| next.base <= seq))
    }

    /// Retention by size: deletes the oldest whole segments until all of
    /// them hold at most `max_bytes`. Never the active segment, so a log
    /// may stay over the limit by up to one segment.
    pub fn delete_to_fit(&mut self, max_bytes: u64) -> Result<Deleted, LogError> {
        self.delete_oldest_while(|_, bytes| bytes > max_bytes)
    }

    /// Deletes the oldest segment while `more(segments, total bytes)` and
    /// it is not the active one. Oldest first, so a crash midway leaves a
    /// log with a hole at neither end.
    fn delete_oldest_while(
        &mut self,
        more: impl Fn(&[Segment], u64) -> bool,
    ) -> Result<Deleted, LogError> {
        let mut deleted = Deleted::default();
        let mut total = self.bytes();
        while self.segments.len() > 1 && more(&self.segments, total) {
            let Some(oldest) = self.segments.first() else {
                break;
            };
            match fs::remove_file(&oldest.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(LogError::io(&oldest.path, e));
                }
                _ => {}
            }
            let segment = self.segments.remove(0);
            if self
                .reader
                .as_ref()
                .is_some_and(|(base, _)| *base == segment.base)
            {
                self.reader = None;
            }
            total -= segment.bytes;
            deleted.bytes += segment.bytes;
            deleted.paths.push(segment.path);
        }
        if !deleted.paths.is_empty() {
            lock(&self.shared.state).dir_dirty = true;
        }
        Ok(deleted)
    }
}

/// A [`LogError::Corrupt`] at `offset` of `path`.
fn corrupt(path: &Path, offset: u64, reason: Invalid) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

/// The segment files in `dir`, oldest first, sized from the directory.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(parse_segment_name) else {
            continue; // not ours: left alone
        };
        let path = entry.path();
        if base == 0 {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                reason: Invalid::BadName,
            });
        }
        let bytes = entry.metadata().map_err(|e| LogError::io(&path, e))?.len();
        segments.push(Segment::new(dir, base, bytes));
    }
    segments.sort_by_key(|s| s.base);
    Ok(segments)
}

/// Checks a trusted segment's first record: whole, valid, and the seq its
/// name says. One small read per segment.
fn check_first_record(segment: &Segment) -> Result<(), LogError> {
    let file = File::open(&segment.path).map_err(|e| LogError::io(&segment.path, e))?;
    let mut scanner = Scanner::new(&file, 0, segment.bytes);
    let corrupt = |reason| LogError::Corrupt {
        path: segment.path.clone(),
        offset: 0,
        reason,
    };
    match scanner.next().map_err(|e| LogError::io(&segment.path, e))? {
        Step::Record { seq, .. } if seq == segment.base => Ok(()),
        Step::Record { seq, .. } => Err(corrupt(Invalid::OutOfSequence {
            expected: segment.base,
            found: seq,
        })),
        Step::End => Err(corrupt(Invalid::Truncated)),
        Step::Bad { reason, .. } => Err(corrupt(reason)),
    }
}

/// What scanning one segment found.
struct ScanOutcome {
    /// Bytes validated.
    scanned: u64,
    /// The first bad record: its offset and what is wrong.
    bad: Option<(u64, Invalid)>,
}

/// Validates `segment` from `from` to its end, expecting the seq
/// `*expected` first, advancing it and filling the index as it goes.
fn scan_segment(
    segment: &mut Segment,
    from: u64,
    expected: &mut Seq,
) -> Result<ScanOutcome, LogError> {
    let file = File::open(&segment.path).map_err(|e| LogError::io(&segment.path, e))?;
    let mut scanner = Scanner::new(&file, from, segment.bytes);
    let mut k = segment.index.len().saturating_sub(1);
    loop {
        match scanner.next().map_err(|e| LogError::io(&segment.path, e))? {
            Step::Record { seq, offset, .. } if seq == *expected => {
                *expected += 1;
                k = segment.note(k, seq, offset);
            }
            Step::Record { seq, offset, .. } => {
                return Ok(ScanOutcome {
                    scanned: offset - from,
                    bad: Some((
                        offset,
                        Invalid::OutOfSequence {
                            expected: *expected,
                            found: seq,
                        },
                    )),
                });
            }
            Step::End => {
                return Ok(ScanOutcome {
                    scanned: segment.bytes - from,
                    bad: None,
                });
            }
            Step::Bad { offset, reason } => {
                return Ok(ScanOutcome {
                    scanned: offset - from,
                    bad: Some((offset, reason)),
                });
            }
        }
    }
}

/// Ends the log at byte `at` of `segments[i]`: cuts that file there (or
/// deletes it, if nothing before `at` is left and it is not the first),
/// deletes every later segment, and makes that durable before any new
/// record can follow.
fn cut_log(
    dir: &Path,
    segments: &mut Vec<Segment>,
    i: usize,
    at: u64,
    reason: Invalid,
) -> Result<Cut, LogError> {
    let mut dropped = 0;
    let mut deleted = 0;
    for later in segments.drain(i + 1..).rev() {
        fs::remove_file(&later.path).map_err(|e| LogError::io(&later.path, e))?;
        dropped += later.bytes;
        deleted += 1;
    }
    let Some(segment) = segments.get_mut(i) else {
        return Err(LogError::io(dir, io::ErrorKind::NotFound.into()));
    };
    let path = segment.path.clone();
    dropped += segment.bytes - at;
    if at == 0 && i > 0 {
        // A segment with no valid record, and a name that would claim a
        // seq: gone, so the segment before it is the active one again.
        fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
        segments.truncate(i);
        deleted += 1;
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        file.set_len(at)
            .and_then(|()| file.sync_all())
            .map_err(|e| LogError::io(&path, e))?;
        segment.bytes = at;
        segment
            .index
            .retain(|&(_, offset)| offset < at || offset == 0);
    }
    if deleted > 0 {
        sync_dir(dir)?;
    }
    Ok(Cut {
        path,
        offset: at,
        dropped,
        segments_deleted: deleted,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("eddy-log-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }

        /// The log's directory (inside, so `open` has one to create).
        fn log(&self) -> PathBuf {
            self.0.join("room")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Segments of about three 20-byte records each.
    const TINY: Options = Options { segment_bytes: 60 };

    /// The payload of record `seq` in these tests: a few bytes that differ
    /// for each seq, so a record read at the wrong place is caught.
    fn payload(seq: Seq) -> Vec<u8> {
        format!("line {seq}").into_bytes()
    }

    /// Appends `seqs` as one batch.
    fn append(log: &mut Log, seqs: std::ops::RangeInclusive<Seq>) {
        let payloads: Vec<(Seq, Vec<u8>)> = seqs.map(|s| (s, payload(s))).collect();
        log.append(payloads.iter().map(|(s, p)| (*s, p.as_slice())))
            .unwrap();
    }

    /// Appends each of `seqs` as a batch of its own.
    fn append_each(log: &mut Log, seqs: std::ops::RangeInclusive<Seq>) {
        for seq in seqs {
            append(log, seq..=seq);
        }
    }

    /// Every record from `from` on, checked to be `payload(seq)`; their seqs.
    fn read_all(log: &mut Log, from: Seq) -> Vec<Seq> {
        let records = log.read_from(from, usize::MAX).unwrap().records;
        for r in &records {
            assert_eq!(r.payload, payload(r.seq), "record {}", r.seq);
        }
        records.iter().map(|r| r.seq).collect()
    }

    fn open(dir: &Path, options: Options) -> (Log, Recovered) {
        Log::open(dir, options).unwrap()
    }

    /// The segment files in `dir`, by name.
    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    /// The size of record `seq` on disk.
    fn size(seq: Seq) -> u64 {
        (HEADER_BYTES + payload(seq).len()) as u64
    }

    #[test]
    fn appended_records_come_back_after_reopening() {
        let tmp = TempDir::new("reopen");
        let (mut log, recovered) = open(&tmp.log(), Options::default());
        assert_eq!(
            (recovered.first, recovered.last, recovered.bytes),
            (1, 0, 0)
        );
        assert_eq!(recovered.checkpoint, CheckpointState::Missing);
        append(&mut log, 1..=3);
        append(&mut log, 4..=4);
        log.append([(5, &b""[..]), (6, &[0u8, 255, 10][..])])
            .unwrap();
        assert_eq!(log.read_from(1, usize::MAX).unwrap().records.len(), 6);
        drop(log);

        let (mut log, recovered) = open(&tmp.log(), Options::default());
        assert_eq!(
            (recovered.first, recovered.last, recovered.cut),
            (1, 6, None)
        );
        assert_eq!(recovered.bytes, file_len(&tmp.log().join(segment_name(1))));
        let records = log.read_from(1, usize::MAX).unwrap();
        assert_eq!(records.gap, None);
        let got: Vec<(Seq, Vec<u8>)> = records
            .records
            .iter()
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        let mut want: Vec<(Seq, Vec<u8>)> = (1..=4).map(|s| (s, payload(s))).collect();
        want.push((5, vec![]));
        want.push((6, vec![0, 255, 10]));
        assert_eq!(got, want);
        append(&mut log, 7..=7);
        assert_eq!(read_all(&mut log, 7), [7]);
    }

    #[test]
    fn a_new_log_begins_at_any_seq_and_then_counts_densely() {
        let tmp = TempDir::new("sequence");
        let (mut log, _) = open(&tmp.log(), Options::default());
        assert!(matches!(
            log.append([(0, &b"x"[..])]),
            Err(LogError::OutOfSequence { found: 0, .. })
        ));
        append(&mut log, 41..=42);
        assert_eq!((log.first(), log.last()), (41, 42));
        for bad in [42, 45] {
            assert!(matches!(
                log.append([(43, &b"x"[..]), (bad, &b"y"[..])]),
                Err(LogError::OutOfSequence { expected: 44, .. })
            ));
        }
        let huge = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            log.append([(43, &huge[..])]),
            Err(LogError::TooLarge { seq: 43, .. })
        ));
        assert_eq!(log.last(), 42, "nothing written");
        assert_eq!(log.bytes(), size(41) + size(42));
        assert_eq!(segment_files(&tmp.log()), [segment_name(41)]);
    }

    #[test]
    fn segments_roll_and_reads_cross_them() {
        let tmp = TempDir::new("roll");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=10);
        // 14-20 bytes a record, a roll once a segment holds 60.
        let files = segment_files(&tmp.log());
        assert_eq!(files, [1, 4, 7, 10].map(segment_name));
        assert_eq!(log.segments(), 4);
        assert_eq!(read_all(&mut log, 1), (1..=10).collect::<Vec<_>>());
        for from in 1..=10 {
            assert_eq!(read_all(&mut log, from), (from..=10).collect::<Vec<_>>());
        }
        // A batch is never split: it goes whole into the segment it begins.
        append(&mut log, 11..=20);
        assert_eq!(segment_files(&tmp.log()).len(), 4);
        drop(log);
        let (mut log, recovered) = open(&tmp.log(), TINY);
        assert_eq!(
            (recovered.first, recovered.last, recovered.segments),
            (1, 20, 4)
        );
        assert_eq!(read_all(&mut log, 5), (5..=20).collect::<Vec<_>>());
    }

    #[test]
    fn reads_keep_to_the_byte_budget_but_return_at_least_one_record() {
        let tmp = TempDir::new("budget");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=6);
        let seqs = |r: Records| r.records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.read_from(2, 12).unwrap()), [2, 3], "6 bytes each");
        assert_eq!(seqs(log.read_from(2, 11).unwrap()), [2]);
        assert_eq!(seqs(log.read_from(2, 0).unwrap()), [2]);
        assert_eq!(log.read_from(7, 100).unwrap(), Records::default());
    }

    #[test]
    fn the_sparse_index_finds_records_deep_in_a_big_segment() {
        let tmp = TempDir::new("index");
        let (mut log, _) = open(&tmp.log(), Options::default());
        let big = vec![b'x'; 1000];
        for chunk in 0..50 {
            let batch: Vec<(Seq, &[u8])> = (1..=20).map(|i| (chunk * 20 + i, &big[..])).collect();
            log.append(batch).unwrap();
        }
        // 1000 records of 1016 bytes: about one index entry per 65 records.
        let entries = log.segments.last().unwrap().index.len();
        assert!((15..=17).contains(&entries), "{entries} entries");
        let records = log.read_from(777, 1).unwrap().records;
        assert_eq!((records.len(), records[0].seq), (1, 777));
        drop(log);
        // Reopened without a checkpoint, the scan rebuilds the index.
        let (mut log, _) = open(&tmp.log(), Options::default());
        assert_eq!(log.segments.last().unwrap().index.len(), entries);
        assert_eq!(log.read_from(1000, 0).unwrap().records[0].seq, 1000);
    }

    #[test]
    fn a_tail_cut_mid_record_is_truncated_on_open_and_appends_continue() {
        let tmp = TempDir::new("torn");
        let (mut log, _) = open(&tmp.log(), Options::default());
        append(&mut log, 1..=5);
        drop(log);
        let path = tmp.log().join(segment_name(1));
        let whole = file_len(&path);
        let end_of_4 = whole - size(5);
        // A crash mid-write: record 5 is half there.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end_of_4 + 7)
            .unwrap();

        let (mut log, recovered) = open(&tmp.log(), Options::default());
        let cut = recovered.cut.clone().expect("cut");
        assert_eq!(cut.path, path);
        assert_eq!((cut.offset, cut.dropped), (end_of_4, 7));
        assert_eq!(cut.reason, Invalid::Truncated);
        assert_eq!(recovered.last, 4);
        assert_eq!(file_len(&path), end_of_4);
        assert!(
            cut.to_string().contains(&format!("byte {end_of_4}")),
            "{cut}"
        );
        append(&mut log, 5..=6);
        drop(log);
        let (mut log, recovered) = open(&tmp.log(), Options::default());
        assert_eq!((recovered.last, recovered.cut), (6, None));
        assert_eq!(read_all(&mut log, 1), (1..=6).collect::<Vec<_>>());
    }

    #[test]
    fn garbage_after_the_last_record_is_truncated_on_open() {
        let tmp = TempDir::new("garbage");
        let (mut log, _) = open(&tmp.log(), TINY);
        append(&mut log, 1..=8);
        drop(log);
        let path = tmp.log().join(segment_name(1));
        let len = file_len(&path);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0xa5; 40]).unwrap();

        let (mut log, recovered) = open(&tmp.log(), TINY);
        let cut = recovered.cut.expect("cut");
        assert_eq!((cut.path, cut.offset, cut.dropped), (path.clone(), len, 40));
        assert!(matches!(
            cut.reason,
            Invalid::TooLong { .. } | Invalid::Checksum { .. }
        ));
        assert_eq!(file_len(&path), len);
        append(&mut log, 9..=9);
        assert_eq!(read_all(&mut log, 1), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn a_bad_record_after_the_checkpoint_ends_the_log_there() {
        let tmp = TempDir::new("after-checkpoint");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=3);
        log.sync().unwrap();
        let at = log.write_checkpoint().unwrap().expect("a checkpoint");
        assert_eq!((at.segment, at.last), (1, 3));
        for seq in 4..=9 {
            append(&mut log, seq..=seq); // segments 4 and 7
        }
        drop(log);
        // Damage record 5, in the middle of segment 4: 5..=9 go.
        let path = tmp.log().join(segment_name(4));
        let mut bytes = fs::read(&path).unwrap();
        let at5 = size(4) as usize;
        bytes[at5 + HEADER_BYTES] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let later = file_len(&tmp.log().join(segment_name(7)));

        let (mut log, recovered) = open(&tmp.log(), TINY);
        let cut = recovered.cut.expect("cut");
        assert_eq!((cut.path, cut.offset), (path.clone(), at5 as u64));
        assert_eq!(cut.dropped, bytes.len() as u64 - at5 as u64 + later);
        assert_eq!(cut.segments_deleted, 1);
        assert!(matches!(cut.reason, Invalid::Checksum { .. }));
        assert_eq!(recovered.last, 4);
        assert_eq!(segment_files(&tmp.log()), [1, 4].map(segment_name));
        append(&mut log, 5..=5);
        assert_eq!(read_all(&mut log, 1), (1..=5).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_with_no_valid_bytes_after_a_segment_start_removes_that_segment() {
        let tmp = TempDir::new("empty-segment");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=4);
        drop(log);
        let path = tmp.log().join(segment_name(4));
        fs::write(&path, b"\0\0\0").unwrap();
        let (mut log, recovered) = open(&tmp.log(), TINY);
        let cut = recovered.cut.expect("cut");
        assert_eq!((cut.path, cut.offset, cut.dropped), (path, 0, 3));
        assert_eq!(segment_files(&tmp.log()), [segment_name(1)]);
        append(&mut log, 4..=4);
        assert_eq!(read_all(&mut log, 1), [1, 2, 3, 4]);
    }

    #[test]
    fn damage_before_the_checkpoint_is_a_hard_error_naming_file_and_offset() {
        let tmp = TempDir::new("corrupt");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=9);
        log.sync().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);

        // A bad byte in the first record of a trusted segment: found on open.
        let path = tmp.log().join(segment_name(4));
        let good = fs::read(&path).unwrap();
        let mut bad = good.clone();
        bad[HEADER_BYTES + 2] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        let Err(e) = Log::open(tmp.log(), TINY) else {
            panic!("opened a corrupt log");
        };
        let LogError::Corrupt {
            path: ref at,
            offset,
            ref reason,
        } = e
        else {
            panic!("{e}");
        };
        assert_eq!((at, offset), (&path, 0));
        assert!(matches!(reason, Invalid::Checksum { .. }));
        let message = e.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(message.contains("at byte 0"), "{message}");
        assert!(message.contains("move the directory"), "{message}");
        assert_eq!(fs::read(&path).unwrap(), bad, "nothing cut");

        // In the middle of a trusted segment: not read on open (that is
        // the point of the checkpoint), but a read that reaches it fails.
        let mut bad = good.clone();
        let at2 = size(4) as usize;
        bad[at2 + HEADER_BYTES] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        let (mut log, recovered) = open(&tmp.log(), TINY);
        assert_eq!(recovered.cut, None);
        assert!(recovered.scanned < recovered.bytes);
        // Reads that stop before it are fine (records 1 and 2, 6 bytes each).
        let records = log.read_from(1, 2 * 6).unwrap().records;
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        // A read across it stops before it; the next, which begins at it,
        // gets the error.
        let records = log.read_from(4, usize::MAX).unwrap().records;
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
        match log.read_from(5, usize::MAX) {
            Err(LogError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!((p, offset), (path.clone(), at2 as u64));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_shorter_than_its_checkpoint_is_a_hard_error() {
        let tmp = TempDir::new("short");
        let (mut log, _) = open(&tmp.log(), Options::default());
        append(&mut log, 1..=3);
        log.sync().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        let path = tmp.log().join(segment_name(1));
        let len = file_len(&path);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        match Log::open(tmp.log(), Options::default()) {
            Err(LogError::Corrupt {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!((p, offset), (path, len));
                assert_eq!(reason, Invalid::ShorterThanCheckpoint { len: len - 1 });
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_checkpoint_bounds_what_opening_reads() {
        let tmp = TempDir::new("checkpoint");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=30);
        let handle = log.sync_handle();
        let synced = handle.sync().unwrap().expect("synced");
        assert_eq!(handle.sync().unwrap(), None, "nothing new to sync");
        assert_eq!(handle.write_checkpoint().unwrap(), Some(synced));
        assert_eq!(handle.write_checkpoint().unwrap(), None, "unchanged");
        append(&mut log, 31..=31);
        drop(log);
        let (mut log, recovered) = open(&tmp.log(), TINY);
        assert_eq!(recovered.checkpoint, CheckpointState::Used(synced));
        assert_eq!(recovered.scanned, size(31), "only what followed it");
        assert_eq!(recovered.last, 31);
        assert_eq!(read_all(&mut log, 1), (1..=31).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_or_missing_checkpoint_means_a_full_scan() {
        let tmp = TempDir::new("no-checkpoint");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=10);
        log.sync().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        let checkpoint = tmp.log().join(CHECKPOINT);
        let bytes = fs::read(&checkpoint).unwrap();
        for (torn, state) in [
            (&bytes[..20], CheckpointState::Invalid),
            (
                &[&bytes[..30], &[bytes[30] ^ 1][..], &bytes[31..]].concat()[..],
                CheckpointState::Invalid,
            ),
        ] {
            fs::write(&checkpoint, torn).unwrap();
            let (mut log, recovered) = open(&tmp.log(), TINY);
            assert_eq!(recovered.checkpoint, state);
            assert_eq!(recovered.scanned, recovered.bytes);
            assert_eq!((recovered.last, recovered.cut), (10, None));
            assert_eq!(read_all(&mut log, 1), (1..=10).collect::<Vec<_>>());
        }
        fs::remove_file(&checkpoint).unwrap();
        fs::write(tmp.log().join(CHECKPOINT_TMP), b"half").unwrap();
        let (_, recovered) = open(&tmp.log(), TINY);
        assert_eq!(recovered.checkpoint, CheckpointState::Missing);
        assert_eq!(recovered.scanned, recovered.bytes);
        assert!(!tmp.log().join(CHECKPOINT_TMP).exists());
    }

    #[test]
    fn a_failed_write_is_cut_back_and_the_next_append_succeeds() {
        let tmp = TempDir::new("enospc");
        let (mut log, _) = open(&tmp.log(), TINY);
        append(&mut log, 1..=2);
        let path = tmp.log().join(segment_name(1));
        let before = file_len(&path);
        log.fail_after = Some(size(3) as usize + 5); // one record and a bit
        let batch: Vec<(Seq, Vec<u8>)> = (3..=4).map(|s| (s, payload(s))).collect();
        let Err(LogError::Io { path: p, source }) =
            log.append(batch.iter().map(|(s, p)| (*s, p.as_slice())))
        else {
            panic!("the append did not fail");
        };
        assert_eq!(
            (p, source.kind()),
            (path.clone(), io::ErrorKind::StorageFull)
        );
        assert_eq!(file_len(&path), before, "nothing of the batch is left");
        assert_eq!((log.last(), log.bytes()), (2, before));
        append(&mut log, 3..=4);
        assert_eq!(read_all(&mut log, 1), [1, 2, 3, 4]);

        // A failure right after a roll leaves an empty active segment,
        // which the same seqs then go into.
        log.fail_after = Some(0);
        assert!(log.append([(5, &payload(5)[..])]).is_err());
        assert_eq!(file_len(&tmp.log().join(segment_name(5))), 0);
        append(&mut log, 5..=5);
        drop(log);
        let (mut log, recovered) = open(&tmp.log(), TINY);
        assert_eq!((recovered.last, recovered.cut), (5, None));
        assert_eq!(read_all(&mut log, 1), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn retention_deletes_only_whole_old_segments() {
        let tmp = TempDir::new("retention");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=10);
        // Segments 1-3, 4-6, 7-9, 10. Seq 5 is in the second: only the first goes.
        let deleted = log.delete_before(5).unwrap();
        assert_eq!(deleted.paths, [tmp.log().join(segment_name(1))]);
        assert_eq!(deleted.bytes, size(1) + size(2) + size(3));
        assert_eq!(log.first(), 4);
        let records = log.read_from(2, usize::MAX).unwrap();
        assert_eq!(records.gap, Some((2, 3)));
        assert_eq!(records.records.first().map(|r| r.seq), Some(4));
        // By size: down to what the last two segments hold.
        let keep = log.bytes() - (size(4) + size(5) + size(6));
        let deleted = log.delete_to_fit(keep).unwrap();
        assert_eq!(deleted.paths, [tmp.log().join(segment_name(4))]);
        assert_eq!(log.bytes(), keep);
        // Never the active one, whatever is asked.
        log.delete_before(100).unwrap();
        log.delete_to_fit(0).unwrap();
        assert_eq!(segment_files(&tmp.log()), [segment_name(10)]);
        assert_eq!((log.first(), log.last()), (10, 10));
        assert_eq!(log.read_from(0, 0).unwrap().gap, Some((1, 9)));
        drop(log);
        let (mut log, recovered) = open(&tmp.log(), TINY);
        assert_eq!((recovered.first, recovered.last), (10, 10));
        assert_eq!(read_all(&mut log, 10), [10]);
    }

    #[test]
    fn a_checkpoint_older_than_every_segment_is_stale_and_everything_is_scanned() {
        let tmp = TempDir::new("stale");
        let (mut log, _) = open(&tmp.log(), TINY);
        append(&mut log, 1..=1);
        log.sync().unwrap();
        log.write_checkpoint().unwrap();
        append_each(&mut log, 2..=10);
        log.delete_before(7).unwrap();
        drop(log);
        let (_, recovered) = open(&tmp.log(), TINY);
        assert!(matches!(recovered.checkpoint, CheckpointState::Stale(_)));
        assert_eq!(recovered.scanned, recovered.bytes);
        assert_eq!((recovered.first, recovered.last), (7, 10));
    }

    #[test]
    fn a_segment_not_beginning_where_its_name_says_is_caught() {
        let tmp = TempDir::new("renamed");
        let (mut log, _) = open(&tmp.log(), TINY);
        append_each(&mut log, 1..=9);
        log.sync().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        // The middle segment renamed as if it began at 5: before the
        // checkpoint (a hard error, nothing cut).
        let dir = tmp.log();
        fs::rename(dir.join(segment_name(4)), dir.join(segment_name(5))).unwrap();
        match Log::open(&dir, TINY) {
            Err(LogError::Corrupt {
                path,
                offset: 0,
                reason,
            }) => {
                assert_eq!(path, dir.join(segment_name(5)));
                assert_eq!(
                    reason,
                    Invalid::OutOfSequence {
                        expected: 5,
                        found: 4
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // Without the checkpoint it is a torn log: cut where the sequence breaks.
        fs::remove_file(dir.join(CHECKPOINT)).unwrap();
        let (_, recovered) = open(&dir, TINY);
        let cut = recovered.cut.expect("cut");
        assert_eq!((cut.path, cut.offset), (dir.join(segment_name(5)), 0));
        assert_eq!(recovered.last, 3);
        assert_eq!(segment_files(&dir), [segment_name(1)]);
    }

    #[test]
    fn files_close_when_idle_and_reopen_on_demand() {
        let tmp = TempDir::new("descriptors");
        let (mut log, _) = open(&tmp.log(), TINY);
        assert_eq!(log.open_files(), 0, "nothing opened until needed");
        append(&mut log, 1..=4);
        read_all(&mut log, 1);
        assert_eq!(log.open_files(), 2);
        log.close_files();
        assert_eq!(log.open_files(), 0);
        append(&mut log, 5..=5);
        assert_eq!(log.open_files(), 1);
        log.close_files();
        // A sync handle needs no open file either.
        assert!(log.sync_handle().sync().unwrap().is_some());
        assert_eq!(read_all(&mut log, 1), [1, 2, 3, 4, 5]);
        assert_eq!(log.open_files(), 1);
    }

    #[test]
    fn a_helper_thread_syncs_while_the_log_appends_and_rolls() {
        let tmp = TempDir::new("helper");
        let (mut log, _) = open(&tmp.log(), TINY);
        let handle = log.sync_handle();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let helper = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut last = None;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(at) = handle.sync().unwrap() {
                        assert!(Some(at) > last, "synced positions only move on");
                        last = Some(at);
                        handle.write_checkpoint().unwrap();
                    }
                }
            })
        };
        for seq in 1..=200 {
            append(&mut log, seq..=seq);
            if seq % 50 == 0 {
                log.close_files();
            }
        }
        stop.store(true, Ordering::Relaxed);
        helper.join().unwrap();
        log.sync().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        let (mut log, recovered) = open(&tmp.log(), TINY);
        assert_eq!(
            (recovered.scanned, recovered.last),
            (0, 200),
            "fully checkpointed"
        );
        assert_eq!(read_all(&mut log, 150), (150..=200).collect::<Vec<_>>());
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            match decode(&bytes) {
                Decoded::Record { payload, size, .. } => {
                    prop_assert!(size <= bytes.len());
                    prop_assert_eq!(size, HEADER_BYTES + payload.len());
                }
                Decoded::Incomplete { needed } => prop_assert!(needed > bytes.len()),
                Decoded::Invalid(_) => {}
            }
        }

        #[test]
        fn records_round_trip_and_their_prefixes_are_incomplete(
            seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut buf = Vec::new();
            encode(seq, &payload, &mut buf).unwrap();
            let size = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(
                decode(&buf),
                Decoded::Record { seq, payload: &payload, size }
            );
            for cut in 0..size {
                let is_incomplete = matches!(decode(&buf[..cut]), Decoded::Incomplete { .. });
                prop_assert!(is_incomplete, "cut at {}", cut);
            }
        }

        #[test]
        fn a_flipped_bit_is_never_read_as_a_record(
            seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            bit in any::<proptest::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            encode(seq, &payload, &mut buf).unwrap();
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let is_record = matches!(decode(&buf), Decoded::Record { .. });
            prop_assert!(!is_record);
        }
    }
}
