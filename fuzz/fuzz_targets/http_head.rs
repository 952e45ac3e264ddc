//! `eddy::http::answer` fed arbitrary bytes: the bytes a connection has
//! read so far, before its request head is complete (or after).
//!
//! Checks that it never panics, that every response it builds is a
//! well-formed HTTP/1.1 head with the headers the module promises, and that
//! the decision does not depend on how the bytes arrived: a prefix of a
//! head asks for more (or gives the same fatal answer), and the head alone
//! gets the same answer as the head with more bytes after it.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use eddy::http::{
    MAX_HEAD_BYTES, MAX_HEADERS, Parsed, Reply, Response, Site, answer, probe_response,
};
use eddy::templates::Assets;
use libfuzzer_sys::fuzz_target;
use tungstenite::Bytes;

static SITE: LazyLock<Site> = LazyLock::new(|| Site {
    assets: Assets::from_files([
        (
            "index.html",
            Bytes::from_static(b"<!doctype html><p>chat</p>"),
        ),
        ("chat.js", Bytes::from_static(b"connect()")),
        ("chat.css", Bytes::from_static(b"p{}")),
        ("favicon.svg", Bytes::from_static(b"<svg/>")),
    ]),
    csp: Some("default-src 'self'".into()),
    allowed_origins: vec!["https://chat.example".into()],
    websocket_paths: vec!["/soc".into()],
    // The probe paths too, answered below as the server would: their
    // responses must hold to the same rules.
    probes: true,
});

/// A fixed clock: two answers to the same bytes must be byte-for-byte equal.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
}

/// One answer, flattened for comparison.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Partial,
    Complete {
        consumed: usize,
        upgrade: bool,
        status: u16,
        why: &'static str,
        head: Bytes,
        body: Option<Bytes>,
        close: bool,
    },
}

fn outcome(buf: &[u8]) -> Outcome {
    match answer(buf, &SITE, now()) {
        Parsed::Partial => Outcome::Partial,
        Parsed::Complete { consumed, reply } => {
            let (upgrade, r) = match reply {
                Reply::Upgrade(r, _) => (true, r),
                Reply::Respond(r) => (false, r),
                Reply::Ask(_, asked) => (
                    false,
                    probe_response(&asked, 200, "probe", "text/plain", "ok\n".into()),
                ),
            };
            let Response {
                status,
                why,
                head,
                body,
                close,
            } = r;
            Outcome::Complete {
                consumed,
                upgrade,
                status,
                why,
                head,
                body,
                close,
            }
        }
    }
}

/// The value of header `name` in a response head (names as Eddy writes them).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

/// What must hold of one answer to `buf`, whatever `buf` is.
fn check(buf: &[u8], got: &Outcome) {
    let Outcome::Complete {
        consumed,
        upgrade,
        status,
        why,
        head,
        body,
        close,
    } = got
    else {
        assert!(
            buf.len() <= MAX_HEAD_BYTES,
            "Partial for {} bytes: over the limit, so it must be refused",
            buf.len()
        );
        return;
    };
    let (consumed, status, close) = (*consumed, *status, *close);
    assert!(!why.is_empty());
    // `consumed` is 0 for a fatal answer (which closes), else the head's length.
    assert!(
        consumed <= buf.len() && consumed <= MAX_HEAD_BYTES,
        "{consumed}"
    );
    if consumed == 0 {
        assert!(close && !upgrade, "a fatal answer closes: {status}");
        assert!(matches!(status, 400 | 431), "{status} {why}");
    } else {
        let end = &buf[..consumed];
        assert!(end.ends_with(b"\n"), "a head ends with its blank line");
    }
    if matches!(status, 413 | 431 | 501) {
        assert!(close, "{status} must close: nothing after it can be framed");
    }

    let text = std::str::from_utf8(head).expect("the head is ASCII");
    assert!(text.is_ascii());
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "status line: {text:?}"
    );
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    assert_eq!(
        text.matches("\r\n\r\n").count(),
        1,
        "exactly one blank line: {text:?}"
    );
    assert!(
        !text.contains('\0') && text.matches('\n').count() == text.matches("\r\n").count(),
        "bare LF in {text:?}"
    );
    let lines: Vec<&str> = text.trim_end_matches("\r\n").split("\r\n").collect();
    assert!(lines[0].len() > "HTTP/1.1 200 ".len(), "a reason phrase");
    for line in &lines[1..] {
        let (name, value) = line.split_once(": ").expect("Name: value");
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "header name {name:?}"
        );
        assert!(
            value.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "header value {value:?}"
        );
    }

    if status == 101 {
        assert!(*upgrade && !close && body.is_none());
        assert!(header(text, "Content-Length").is_none(), "no length on 1xx");
        let accept = header(text, "Sec-WebSocket-Accept").expect("accept key");
        assert_eq!(accept.len(), 28, "base64 of a SHA-1");
        assert_eq!(header(text, "Upgrade"), Some("websocket"));
        // Only a GET of /soc upgrades; check with httparse itself.
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(matches!(req.parse(buf), Ok(httparse::Status::Complete(n)) if n == consumed));
        assert_eq!(req.method, Some("GET"));
        let path = req.path.unwrap();
        assert_eq!(path.split('?').next(), Some("/soc"), "{path}");
        return;
    }
    assert!(!upgrade, "only a 101 upgrades");
    assert!(header(text, "Date").is_some());
    assert_eq!(header(text, "X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(header(text, "Referrer-Policy"), Some("no-referrer"));
    assert_eq!(
        header(text, "Connection") == Some("close"),
        close,
        "Connection: close is said iff the connection closes: {text:?}"
    );
    let length: usize = header(text, "Content-Length")
        .expect("every response but the 101 has Content-Length")
        .parse()
        .expect("a number");
    if let Some(body) = body {
        assert_eq!(body.len(), length, "{text:?}");
    }
    match status {
        // A probe's answer (the server's own text, never cached).
        200 if *why == "probe" => {
            assert_eq!(header(text, "Cache-Control"), Some("no-store"));
            assert!(header(text, "ETag").is_none());
        }
        200 | 304 => {
            assert!(header(text, "ETag").is_some());
            assert_eq!(
                header(text, "Content-Security-Policy"),
                Some("default-src 'self'")
            );
            if status == 304 {
                assert!(body.is_none(), "a 304 has no body");
            }
        }
        405 => assert_eq!(header(text, "Allow"), Some("GET, HEAD")),
        426 => assert_eq!(header(text, "Sec-WebSocket-Version"), Some("13")),
        400 | 403 | 404 | 413 | 431 | 501 => {}
        _ => panic!("unexpected status {status}: {text:?}"),
    }
}

/// Where to cut `buf` to compare a prefix with the whole: both sides of
/// the head's end and of the limit, just after the first line ends (where
/// httparse decides most), and a few points picked from the bytes
/// themselves, reproducibly. Every point of a very short input.
fn cuts(buf: &[u8], whole: &Outcome) -> Vec<usize> {
    let len = buf.len();
    if len <= 16 {
        return (0..=len).collect();
    }
    let mut cuts = vec![0, 1, len - 1, len, MAX_HEAD_BYTES, MAX_HEAD_BYTES + 1];
    if let Outcome::Complete { consumed, .. } = whole {
        cuts.extend([consumed.saturating_sub(1), *consumed, consumed + 1]);
    }
    let newlines = buf.iter().enumerate().filter(|&(_, &b)| b == b'\n');
    cuts.extend(newlines.take(8).flat_map(|(i, _)| [i, i + 1]));
    // FNV-1a of the input.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in buf {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    for i in 0..4 {
        cuts.push(((h >> (i * 16)) & 0xffff) as usize % (len + 1));
    }
    cuts.retain(|&c| c <= len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

fuzz_target!(|buf: &[u8]| {
    let whole = outcome(buf);
    check(buf, &whole);
    assert_eq!(whole, outcome(buf), "answers are deterministic");

    for cut in cuts(buf, &whole) {
        let prefix = &buf[..cut];
        let part = outcome(prefix);
        check(prefix, &part);
        match &whole {
            // Bytes that are not yet a head were not a head before either.
            Outcome::Partial => assert_eq!(part, Outcome::Partial, "cut at {cut}"),
            // A complete head: before its end, read more; from its end on,
            // the same answer, whatever follows it.
            Outcome::Complete { consumed, .. } if *consumed > 0 => {
                if cut < *consumed {
                    assert_eq!(part, Outcome::Partial, "cut at {cut} of {consumed}");
                } else {
                    assert_eq!(&part, &whole, "cut at {cut} of {consumed}");
                }
            }
            // A fatal answer: a prefix within the limit either asks for more
            // or already gets the same answer (httparse finds errors in order).
            Outcome::Complete { .. } => {
                if cut <= MAX_HEAD_BYTES && part != Outcome::Partial {
                    assert_eq!(&part, &whole, "cut at {cut}");
                }
            }
        }
    }
});
