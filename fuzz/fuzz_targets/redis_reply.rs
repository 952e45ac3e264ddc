//! What Eddy makes of anything a Redis (or something posing as one) sends:
//! `eddy::resp::next_frame` splits the bytes into RESP frames as the
//! connection does, and each frame is handed to the shared history as the
//! reply to a sync, a fill, an append, a lookup of the last append, or a
//! push on the subscriber (the byte before each frame says which).
//!
//! Checks that nothing panics; that splitting always moves forward and
//! stays in the buffer; and that whatever the replies said, the lines the
//! history hands the chat come in strictly rising seqs per room (until the
//! room is reset: a new epoch starts its seqs over), and what it holds for
//! a room reads back as consecutive lines.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use eddy::history::{Confirmed, Draft, History, Limits, News, Seq};
use eddy::resp::next_frame;
use eddy::shared::{Heard, SharedHistory};
use libfuzzer_sys::fuzz_target;
use tungstenite::Bytes;

fn seal(seq: Seq, draft: &Draft<'_>) -> Bytes {
    Bytes::from(format!("{seq}:{}", draft.text))
}

const ROOMS: [&str; 2] = ["lobby", "r{1}"];

fuzz_target!(|buf: &[u8]| {
    let limits = Limits {
        lines: 50,
        bytes: 1 << 20,
        memory: 1 << 22,
    };
    let url = "redis://127.0.0.1:1".parse().expect("a URL");
    let mut history = SharedHistory::new(url, limits, std::time::Duration::from_secs(60), seal);
    let mut last: HashMap<Arc<str>, Seq> = HashMap::new();
    let mut confirmed: Vec<Confirmed> = Vec::new();
    let mut news: Vec<News> = Vec::new();
    let mut at = 0;
    while let Some(&selector) = buf.get(at) {
        at += 1;
        let before = at;
        let frame = match next_frame(buf, &mut at) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        assert!(at > before && at <= buf.len(), "{before} -> {at}");
        let heard = match selector % 5 {
            0 => Heard::Sync,
            1 => Heard::Fill,
            2 => Heard::Append,
            3 => Heard::Writer,
            _ => Heard::Push,
        };
        let room = ROOMS[usize::from(selector / 5) % ROOMS.len()];
        history.hear(room, heard, frame);
        let _ = history.position(room);
        // A reset (a new epoch its lines here do not continue into) starts
        // a room's seqs over: what comes after it is compared afresh.
        history.take_news(&mut news);
        for item in news.drain(..) {
            if let News::Reset(room) = item {
                last.remove(&room);
            }
        }
        history.take_confirmed(&mut confirmed);
        for Confirmed { room, line } in confirmed.drain(..) {
            let previous = last.insert(Arc::clone(&room), line.seq);
            assert!(previous.is_none_or(|p| p < line.seq), "{room}: {previous:?} then {}", line.seq);
        }
        for room in ROOMS {
            let chunk = history.read_from(room, 1, usize::MAX);
            for pair in chunk.lines.windows(2) {
                assert_eq!(pair[0].seq + 1, pair[1].seq, "{room}: held lines are consecutive");
            }
        }
    }
});
