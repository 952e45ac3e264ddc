//! History that survives the server: the built binary, a data directory of
//! its own, and real clients. The server is killed (`kill -9`) mid-stream,
//! stopped cleanly, restarted on files torn or damaged on purpose, given a
//! second process on its directory, and starved of disk; what every client
//! saw is checked against what comes back.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tungstenite::Message;

/// A fresh directory of the test's own, removed when the test passes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("eddy-durability-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// The lobby's log directory.
    fn lobby(&self) -> PathBuf {
        self.0.join("rooms").join("lobby")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The binary on `dir`, with `extra` flags; waits until it listens.
fn start(dir: &TempDir, extra: &[&str]) -> (Binary, SocketAddr) {
    let (binary, addr, _) = start_logged(dir, extra);
    (binary, addr)
}

/// The flags every server of these tests gets: any free port, no rate
/// limit, and `dir` as its data directory.
fn server_args(dir: &TempDir) -> [&str; 6] {
    [
        "--addr",
        "127.0.0.1:0",
        "--rate-limit",
        "off",
        "--data-dir",
        dir.arg(),
    ]
}

/// [`start`], and what it logged before it listened (where it says what
/// it found in the data directory).
fn start_logged(dir: &TempDir, extra: &[&str]) -> (Binary, SocketAddr, Vec<String>) {
    let mut args = server_args(dir).to_vec();
    args.extend_from_slice(extra);
    let binary = Binary::start(&args);
    let mut log = Vec::new();
    loop {
        let line = binary
            .stderr
            .recv_timeout(TIMEOUT)
            .expect("eddy did not start");
        if let Some(addr) = line.split("listening on http://").nth(1) {
            let addr = addr.trim_end_matches('/').parse().unwrap();
            return (binary, addr, log);
        }
        log.push(line);
    }
}

/// The line of `log` that contains `text`.
fn line_with<'a>(log: &'a [String], text: &str) -> &'a str {
    log.iter()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no {text:?} in {log:#?}"))
}

/// The segment files of a log directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// The first seq of a segment: its file's name.
fn base(segment: &Path) -> u64 {
    let name = segment.file_stem().and_then(|n| n.to_str()).unwrap();
    name.parse().unwrap()
}

/// Every line from `since + 1` to the head, as the server sends a resume:
/// (seq, exact text) of each, and the notices, until `caught_up`.
fn resume(addr: SocketAddr, epoch: &str, since: u64) -> (Value, Vec<(u64, String)>, Vec<Value>) {
    let (mut client, welcome) = enter(addr, &format!("since={since}&epoch={epoch}"));
    let mut lines = Vec::new();
    let mut notices = Vec::new();
    loop {
        let text = recv_text(&mut client);
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "user" {
            lines.push((message["seq"].as_u64().unwrap(), text));
        } else {
            let done = message["event"] == "caught_up" || message["event"] == "reset";
            notices.push(message);
            if done {
                return (welcome, lines, notices);
            }
        }
    }
}

/// SIGTERM, and a clean exit (every log synced and checkpointed).
fn stop_cleanly(binary: &mut Binary) {
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(TIMEOUT), Some(0));
}

/// 120 lines in the lobby of a server with 4 KiB segments (an eighth of
/// `--history-bytes`), stopped cleanly: at least three segments, all of
/// them before the checkpoint. Returns the epoch and the last seq.
fn segmented_conversation(dir: &TempDir) -> (String, u64) {
    let (mut binary, addr) = start(dir, &["--history-bytes", "32768"]);
    let said = talk(addr, 120);
    stop_cleanly(&mut binary);
    let files = segments(&dir.lobby());
    assert!(files.len() >= 3, "{files:?}");
    said
}

/// Sends `count` lines from a new client, each after the one before came
/// back; returns the welcome's epoch and the last seq.
fn talk(addr: SocketAddr, count: usize) -> (String, u64) {
    let (mut client, welcome) = enter(addr, "");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    let mut last = 0;
    // Unique to this call: a newcomer's replay holds earlier calls' lines.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    for n in 0..count {
        let text = format!("line {call}.{n} {}", "x".repeat(60));
        send(&mut client, &text);
        loop {
            let line = recv_user_line(&mut client);
            if line["message"] == text.as_str() {
                last = line["seq"].as_u64().unwrap();
                break;
            }
        }
    }
    let _ = client.close(None);
    (epoch, last)
}

#[test]
fn kill_9_while_20_clients_chat_loses_nothing_any_client_saw() {
    let dir = TempDir::new("kill9");
    let (mut binary, addr) = start(&dir, &[]);
    let (_, welcome) = enter(addr, "");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();

    // 20 clients, each sending its next line when its last came back
    // (bounded: 200 lines each), and keeping every line it received.
    let (progress, progress_rx) = mpsc::channel::<()>();
    let talkers: Vec<_> = (0..20)
        .map(|k| {
            let progress = progress.clone();
            thread::spawn(move || {
                let (mut client, _) = enter(addr, "");
                let mut seen: Vec<(u64, String)> = Vec::new();
                let mut sent = 0;
                send(&mut client, &format!("{k}:0"));
                while let Ok(message) = client.read() {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let json: Value = serde_json::from_str(text.as_str()).unwrap();
                    if json["type"] != "user" {
                        continue;
                    }
                    seen.push((json["seq"].as_u64().unwrap(), text.as_str().to_owned()));
                    let _ = progress.send(());
                    if json["message"] == format!("{k}:{sent}").as_str() && sent < 200 {
                        sent += 1;
                        if client.send(Message::text(format!("{k}:{sent}"))).is_err() {
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    drop(progress);
    // Mid-stream: after 4,000 deliveries of the 80,000 to come.
    for _ in 0..4_000 {
        progress_rx.recv_timeout(TIMEOUT).expect("the chat stalled");
    }
    binary.signal(libc::SIGKILL);
    binary.wait_exit(TIMEOUT);
    let seen: Vec<Vec<(u64, String)>> = talkers.into_iter().map(|t| t.join().unwrap()).collect();

    // What any client saw, by seq; no two clients saw different lines
    // under one seq.
    let mut saw: BTreeMap<u64, String> = BTreeMap::new();
    for lines in &seen {
        for (seq, text) in lines {
            let before = saw.insert(*seq, text.clone());
            assert!(before.is_none_or(|b| &b == text), "two lines at seq {seq}");
        }
    }
    let highest = *saw.keys().last().unwrap();
    assert!(
        highest >= 100,
        "the server was killed mid-stream, at {highest}"
    );

    let (_binary, addr, log) = start_logged(&dir, &[]);
    line_with(&log, "history in");
    // Everything back, same epoch, same seqs, byte for byte, in order.
    let (welcome, lines, notices) = resume(addr, &epoch, 0);
    assert_eq!(
        welcome["epoch"],
        epoch.as_str(),
        "a kill -9 keeps the epoch"
    );
    let head = welcome["head"].as_u64().unwrap();
    assert!(head >= highest, "head {head} < {highest} a client saw");
    assert_eq!(notices.last().unwrap()["event"], "caught_up", "{notices:?}");
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    for (seq, text) in &lines {
        if let Some(original) = saw.get(seq) {
            assert_eq!(text, original, "seq {seq} came back different");
        }
    }
    // A client resuming from its own last line gets exactly what it missed.
    for k in [0, 7, 19] {
        let last = seen[k].last().unwrap().0;
        let (_, missed, notices) = resume(addr, &epoch, last);
        let missed: Vec<u64> = missed.iter().map(|(s, _)| *s).collect();
        assert_eq!(missed, (last + 1..=head).collect::<Vec<_>>(), "client {k}");
        assert!(
            notices
                .iter()
                .all(|n| n["event"] != "reset" && n["event"] != "gap")
        );
    }
}

#[test]
fn a_clean_restart_keeps_the_conversation_and_says_so() {
    let dir = TempDir::new("clean");
    let (mut binary, addr) = start(&dir, &[]);
    let (epoch, last) = talk(addr, 30);
    stop_cleanly(&mut binary);
    assert!(
        binary
            .stderr_lines()
            .iter()
            .any(|l| l.contains("history synced to"))
    );

    let (_binary, addr, log) = start_logged(&dir, &[]);
    let opened = line_with(&log, "history in");
    assert!(opened.contains("1 rooms, 30 lines"), "{opened}");
    assert!(!opened.contains("unclean"), "{opened}");
    let (welcome, lines, _) = resume(addr, &epoch, 0);
    assert_eq!(
        (welcome["epoch"].as_str(), welcome["head"].as_u64()),
        (Some(&*epoch), Some(last))
    );
    assert_eq!(lines.len(), 30);
    // And the conversation goes on from there.
    let (same, next) = talk(addr, 1);
    assert_eq!((same, next), (epoch, last + 1));
}

#[test]
fn member_ids_never_repeat_across_restarts_clean_or_not() {
    let dir = TempDir::new("ids");
    let id = |addr| enter(addr, "").1["id"].as_u64().unwrap();
    let (mut binary, addr) = start(&dir, &[]);
    assert_eq!((id(addr), id(addr)), (1, 2));
    stop_cleanly(&mut binary);
    // A clean restart goes on where the last run stopped.
    let (mut binary, addr) = start(&dir, &[]);
    assert_eq!(id(addr), 3);
    binary.signal(libc::SIGKILL);
    binary.wait_exit(TIMEOUT);
    // After a crash, past everything the last run had reserved.
    let (_binary, addr) = start(&dir, &[]);
    assert_eq!(id(addr), 3 + eddy::datadir::ID_BLOCK);
}

#[test]
fn a_torn_tail_is_cut_with_a_warning_and_old_cursors_still_resume() {
    let dir = TempDir::new("torn");
    let (mut binary, addr) = start(&dir, &[]);
    let (epoch, last) = talk(addr, 20);
    binary.signal(libc::SIGKILL);
    binary.wait_exit(TIMEOUT);
    // Half a record at the end: a crash mid-write.
    let active = segments(&dir.lobby()).pop().unwrap();
    let good = fs::metadata(&active).unwrap().len();
    let mut bytes = fs::read(&active).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 21, 0]);
    fs::write(&active, &bytes).unwrap();

    let (_binary, addr, log) = start_logged(&dir, &[]);
    let warning = line_with(&log, "log cut at byte");
    assert!(warning.contains(active.to_str().unwrap()), "{warning}");
    assert!(
        warning.contains(&format!("byte {good}")) && warning.contains("10 bytes dropped"),
        "{warning}"
    );
    assert_eq!(
        fs::metadata(&active).unwrap().len(),
        good,
        "cut back to the last whole record"
    );
    // Lines may have been lost after an unclean stop: a new epoch, which
    // continues the old one up to its last surviving line.
    let (welcome, lines, notices) = resume(addr, &epoch, last - 5);
    assert_ne!(welcome["epoch"], epoch.as_str());
    assert_eq!(welcome["head"].as_u64(), Some(last));
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (last - 4..=last).collect::<Vec<_>>(), "{notices:?}");
    assert!(notices.iter().all(|n| n["event"] != "reset"), "{notices:?}");
    // A cursor beyond what survived gets the reset.
    let (_, _, notices) = resume(addr, &epoch, last + 1);
    assert_eq!(notices.last().unwrap()["event"], "reset", "{notices:?}");
}

#[test]
fn a_room_whose_only_line_was_torn_away_begins_a_new_epoch() {
    let dir = TempDir::new("emptied");
    let (mut binary, addr) = start(&dir, &[]);
    let (epoch, last) = talk(addr, 1);
    assert_eq!(last, 1);
    binary.signal(libc::SIGKILL);
    binary.wait_exit(TIMEOUT);
    // A power cut that kept the file but not its one record.
    let only = segments(&dir.lobby()).pop().unwrap();
    let bytes = fs::read(&only).unwrap();
    fs::write(&only, &bytes[..10]).unwrap();

    let (_binary, addr, log) = start_logged(&dir, &[]);
    line_with(&log, "log cut at byte 0");
    // Seq 1 of the old epoch is gone: it must never name another line.
    let (welcome, _, notices) = resume(addr, &epoch, 1);
    assert_ne!(welcome["epoch"], epoch.as_str());
    assert_eq!(welcome["head"], 0);
    assert_eq!(notices.last().unwrap()["event"], "reset", "{notices:?}");
    // A client that had seen nothing of the old epoch goes on as if
    // nothing happened.
    let (_, _, notices) = resume(addr, &epoch, 0);
    assert!(notices.iter().all(|n| n["event"] != "reset"), "{notices:?}");
}

#[test]
fn a_start_that_fails_on_damage_does_not_mark_the_directory_clean() {
    let dir = TempDir::new("failed-start");
    segmented_conversation(&dir);
    // Started again and killed: an unclean directory whose logs are all
    // synced.
    let (mut binary, _) = start(&dir, &[]);
    binary.signal(libc::SIGKILL);
    binary.wait_exit(TIMEOUT);
    let state = || fs::read_to_string(dir.0.join("state.json")).unwrap();
    assert!(state().contains("\"clean\":false"), "{}", state());
    let files = segments(&dir.lobby());
    let mut bytes = fs::read(&files[1]).unwrap();
    bytes[30] ^= 0x10;
    fs::write(&files[1], &bytes).unwrap();
    let mut failed = Binary::start(&["--addr", "127.0.0.1:0", "--data-dir", dir.arg()]);
    assert_eq!(failed.wait_exit(TIMEOUT), Some(1));
    assert!(state().contains("\"clean\":false"), "{}", state());
}

#[test]
fn with_fsync_always_checkpoints_are_written_while_it_runs() {
    let dir = TempDir::new("always");
    let (_binary, addr) = start(&dir, &["--fsync", "always"]);
    talk(addr, 5);
    // The helper checkpoints what the loop synced, about once a second.
    let checkpoint = dir.lobby().join("checkpoint");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !checkpoint.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_record_that_is_not_text_is_a_gap_of_one_line() {
    let dir = TempDir::new("not-text");
    let (mut binary, addr) = start(&dir, &[]);
    let (epoch, last) = talk(addr, 10);
    stop_cleanly(&mut binary);
    // Record 4 rewritten, checksum and all, with bytes that are not UTF-8:
    // whole and valid as a record, but not a line Eddy wrote.
    let segment = segments(&dir.lobby()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 1..4 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += eddy::log::HEADER_BYTES + len;
    }
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut record = Vec::new();
    eddy::log::encode(4, &vec![0xff; len], &mut record).unwrap();
    bytes[at..at + record.len()].copy_from_slice(&record);
    fs::write(&segment, &bytes).unwrap();

    let (_binary, addr) = start(&dir, &[]);
    let (_, lines, notices) = resume(addr, &epoch, 0);
    let gap = notices.iter().find(|n| n["event"] == "gap").expect("a gap");
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(4), Some(4))
    );
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..4).chain(5..=last).collect();
    assert_eq!(seqs, expected);
}

#[test]
fn a_directory_without_its_room_file_is_moved_aside_not_used() {
    let dir = TempDir::new("orphan");
    let stray = dir.0.join("rooms").join("lonely");
    fs::create_dir_all(&stray).unwrap();
    fs::write(stray.join("00000000000000000001.log"), b"not ours").unwrap();
    let (_binary, addr, log) = start_logged(&dir, &[]);
    assert!(line_with(&log, "history in").contains("0 rooms"));
    let (mut client, _) = enter(addr, "room=lonely");
    send(&mut client, "a fresh start");
    assert_eq!(recv_user_line(&mut client)["seq"], 1);
    let aside: Vec<String> = fs::read_dir(dir.0.join("rooms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".orphan-lonely-"))
        .collect();
    assert_eq!(aside.len(), 1, "kept for an operator");
}

#[test]
fn damage_where_the_log_was_synced_stops_the_server_naming_the_file() {
    let dir = TempDir::new("corrupt");
    segmented_conversation(&dir);
    let files = segments(&dir.lobby());
    // One flipped bit in the first record of a segment in the middle.
    let middle = &files[1];
    let mut bytes = fs::read(middle).unwrap();
    bytes[30] ^= 0x10;
    fs::write(middle, &bytes).unwrap();

    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--data-dir", dir.arg()]);
    assert_eq!(binary.wait_exit(TIMEOUT), Some(1));
    let err = binary.stderr_lines().join("\n");
    assert!(
        err.contains(middle.to_str().unwrap()) && err.contains("corrupt log at byte 0"),
        "{err}"
    );
    assert!(err.contains("To recover"), "{err}");
    assert_eq!(fs::read(middle).unwrap(), bytes, "nothing cut or rewritten");
}

#[test]
fn damage_found_while_serving_is_a_gap_notice_never_a_silent_skip() {
    let dir = TempDir::new("damaged");
    let (epoch, last) = segmented_conversation(&dir);
    // A flipped bit in the middle of a synced segment (not its first
    // record): not read at startup, so the server starts.
    let files = segments(&dir.lobby());
    let second: u64 = base(&files[1]);
    let third: u64 = base(&files[2]);
    let mut bytes = fs::read(&files[1]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&files[1], &bytes).unwrap();

    let (binary, addr) = start(&dir, &[]);
    let (_, lines, notices) = resume(addr, &epoch, 0);
    let gap = notices
        .iter()
        .find(|n| n["event"] == "gap")
        .expect("a gap notice");
    // From the damaged record to its segment's end is named a gap (what
    // follows a bad length cannot be found); everything else comes back.
    let from = gap["from"].as_u64().unwrap();
    assert!(
        second < from && from < third,
        "{gap}: the segment is {second}..{third}"
    );
    assert_eq!(gap["to"].as_u64(), Some(third - 1), "{gap}");
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..from).chain(third..=last).collect();
    assert_eq!(seqs, expected);
    drop(binary);
    assert_eq!(fs::read(&files[1]).unwrap(), bytes, "nothing rewritten");
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let dir = TempDir::new("lock");
    let (first, addr) = start(&dir, &[]);
    let mut second = Binary::start(&["--addr", "127.0.0.1:0", "--data-dir", dir.arg()]);
    assert_eq!(second.wait_exit(TIMEOUT), Some(1));
    let err = second.stderr_lines().join("\n");
    assert!(err.contains("in use by another eddy process"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid)), "{err}");
    // The first goes on undisturbed.
    talk(addr, 1);
}

#[test]
fn retention_deletes_whole_old_segments_and_a_resume_from_before_them_hears_of_the_gap() {
    let dir = TempDir::new("retention");
    let (_binary, addr) = start(&dir, &["--history-bytes", "32768", "--history-lines", "50"]);
    let (epoch, last) = talk(addr, 300);
    let files = segments(&dir.lobby());
    let first: u64 = base(&files[0]);
    assert!(
        first > 1 && first <= last - 49,
        "oldest kept {first}, last {last}"
    );
    assert!(files.len() <= 6, "{files:?}");
    let (_, lines, notices) = resume(addr, &epoch, 0);
    let gap = notices
        .iter()
        .find(|n| n["event"] == "gap")
        .expect("a gap notice");
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(1), Some(first - 1)),
        "{gap}"
    );
    assert_eq!(lines.first().unwrap().0, first);
    assert_eq!(lines.last().unwrap().0, last);
}

#[test]
fn a_full_disk_refuses_lines_tells_the_sender_and_recovers_when_space_returns() {
    let dir = TempDir::new("full");
    // A soft file-size limit (as a full disk, for one file) on the server:
    // writes past it fail with EFBIG. SIGXFSZ ignored, so the write fails
    // instead of killing the process.
    let binary = Binary::start_with_ulimit(&server_args(&dir), "-Sf 8 && trap '' XFSZ");
    let addr = binary.listening_addr();
    let (mut speaker, _) = enter(addr, "");
    let (mut listener, _) = enter(addr, "");
    recv_joined(&mut speaker);
    let mut delivered = Vec::new();
    let mut refused = 0;
    for n in 0..200 {
        let text = format!("{n} {}", "y".repeat(100));
        send(&mut speaker, &text);
        let reply = recv_json(&mut speaker);
        if reply["type"] == "user" {
            assert_eq!(reply["message"], text.as_str());
            delivered.push(reply["seq"].as_u64().unwrap());
        } else {
            assert!(
                reply["message"].as_str().unwrap().contains("not delivered"),
                "{reply}"
            );
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    assert_eq!(refused, 3, "the limit was never reached");
    binary.wait_for_line("cannot write its history");
    // The listener got exactly the delivered lines, nothing refused.
    for seq in &delivered {
        assert_eq!(recv_user_line(&mut listener)["seq"].as_u64(), Some(*seq));
    }
    // Space returns: the next line goes through, with the next seq.
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &binary.pid.to_string(), "--fsize=unlimited:"])
        .status()
        .unwrap();
    assert!(status.success());
    send(&mut speaker, "after");
    let line = recv_user_line(&mut speaker);
    assert_eq!(line["message"], "after");
    assert_eq!(line["seq"].as_u64(), Some(delivered.last().unwrap() + 1));
    assert_eq!(recv_user_line(&mut listener)["message"], "after");
    binary.wait_for_line("written again");
    // And what was delivered is what the log holds.
    let (_, lines, _) = resume(addr, binary_epoch(addr).as_str(), 0);
    assert_eq!(lines.len(), delivered.len() + 1);
}

/// The lobby's epoch, from a welcome.
fn binary_epoch(addr: SocketAddr) -> String {
    let (_, welcome) = enter(addr, "");
    welcome["epoch"].as_str().unwrap().to_owned()
}

#[test]
fn a_room_silent_for_its_ttl_is_deleted_from_disk_and_begins_afresh() {
    let dir = TempDir::new("ttl");
    let (_binary, addr) = start(&dir, &["--history-ttl", "1"]);
    let (mut client, welcome) = enter(addr, "room=brief");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    send(&mut client, "soon forgotten");
    recv_user_line(&mut client);
    let room = dir.0.join("rooms").join("brief");
    assert!(room.join("room.json").exists());
    client.close(None).unwrap();
    // Its TTL is the time that must pass: nothing to wait on but the clock.
    thread::sleep(Duration::from_millis(1_500));
    let (_client, welcome) = enter(addr, "room=brief");
    assert_eq!(welcome["head"], 0, "{welcome}");
    assert_ne!(welcome["epoch"], epoch.as_str());
    assert!(!room.exists(), "its directory is gone");
}

#[test]
fn many_rooms_hold_no_more_descriptors_than_the_cap_on_open_logs() {
    let dir = TempDir::new("fds");
    let (binary, addr) = start(&dir, &[]);
    let open_fds = || {
        fs::read_dir(format!("/proc/{}/fd", binary.pid))
            .unwrap()
            .count()
    };
    let before = open_fds();
    for k in 0..300 {
        let (mut client, _) = enter(addr, &format!("room=r{k}"));
        send(&mut client, "one line");
        recv_user_line(&mut client);
        client.close(None).unwrap();
        while client.read().is_ok() {}
    }
    assert_eq!(fs::read_dir(dir.0.join("rooms")).unwrap().count(), 300);
    let after = open_fds();
    assert!(
        after <= before + eddy::disk::MAX_OPEN_LOGS + 8,
        "{before} descriptors before, {after} after 300 rooms"
    );
}

#[test]
fn a_data_directory_that_cannot_be_made_is_one_clear_error_and_exit_1() {
    let mut binary = Binary::start(&["--addr", "127.0.0.1:0", "--data-dir", "/dev/null/eddy"]);
    assert_eq!(binary.wait_exit(TIMEOUT), Some(1));
    let err = binary.stderr_lines().join("\n");
    assert!(err.contains("cannot create /dev/null/eddy"), "{err}");
}

#[test]
fn off_keeps_history_in_memory_and_writes_nothing() {
    let dir = TempDir::new("off");
    let binary = Binary::start_in(
        &["--addr", "127.0.0.1:0", "--data-dir", "off"],
        Some(&dir.0),
    );
    let addr = binary.listening_addr();
    talk(addr, 3);
    assert_eq!(
        fs::read_dir(&dir.0).unwrap().count(),
        0,
        "nothing written in the working directory"
    );
}
