//! RESP2, Redis's wire protocol: commands out ([`encode_command`]) and
//! replies in ([`next_frame`]), over plain byte buffers, with no I/O (the
//! connection in [`crate::redis`] owns the socket).
//!
//! The protocol is five kinds of value, each a type byte and a line ended by
//! CRLF: `+` a simple string, `-` an error, `:` an integer, `$<n>` a bulk
//! string of `n` bytes (then CRLF; `$-1` is null), `*<n>` an array of `n`
//! values (`*-1` is null). A command is an array of bulk strings.
//!
//! The decoder is a loop with an explicit stack of the arrays still open, so
//! a reply nested deeper than [`MAX_DEPTH`] is refused as soon as its
//! headers say so, and no reply, however nested, can overflow the loop's
//! stack. It reads from the start of the buffer each time and answers "not
//! yet" until a reply is whole; the connection bounds how much it buffers.
//! Eddy never asks for RESP3 (no `HELLO 3`), so its types are not RESP here.

use std::fmt;

/// One reply, as Redis sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a short status.
    SimpleString(Vec<u8>),
    /// An error reply's text (`-ERR ...`), lossily UTF-8.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$5` and five bytes: any bytes.
    BulkString(Vec<u8>),
    /// `*2` and two values.
    Array(Vec<Reply>),
    /// A null bulk string or a null array.
    Null,
}

/// How deep a reply's arrays may nest (a sync's are four deep).
pub const MAX_DEPTH: usize = 16;

/// The longest bulk string Redis itself accepts (its `proto-max-bulk-len`
/// default): a longer one announced is nonsense, refused before waiting
/// for it.
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Why bytes are not a RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(at: usize, what: impl fmt::Display) -> Invalid {
    Invalid(format!("not RESP at byte {at}: {what}"))
}

/// Appends `words` to `out` as one command: an array of bulk strings.
pub fn encode_command(words: &[&[u8]], out: &mut Vec<u8>) {
    header(b'*', words.len(), out);
    for word in words {
        header(b'$', word.len(), out);
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
}

/// A type byte, a decimal length and CRLF.
fn header(kind: u8, len: usize, out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An array being read: the values so far, and how many it has.
struct Open {
    items: Vec<Reply>,
    len: usize,
}

/// The whole reply at `input[*used..]`, if one is there (moving `used`
/// past it); `None` if it is not whole yet; an error if it is not RESP2.
pub fn next_frame(input: &[u8], used: &mut usize) -> Result<Option<Reply>, Invalid> {
    let start = *used;
    let mut at = start;
    let mut open: Vec<Open> = Vec::new();
    loop {
        // One value's line: a type byte, then its text up to CRLF.
        let Some(newline) = input
            .get(at..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        else {
            return Ok(None);
        };
        let line_end = at + newline;
        if newline < 2 || input[line_end - 1] != b'\r' {
            return Err(invalid(at, "not a type byte and a line ended by CRLF"));
        }
        let kind = input[at];
        let text = &input[at + 1..line_end - 1];
        let line_at = at;
        at = line_end + 1;
        let value = match kind {
            b'+' => Reply::SimpleString(text.to_vec()),
            b'-' => Reply::Error(String::from_utf8_lossy(text).into_owned()),
            b':' => Reply::Integer(integer(text, line_at)?),
            b'$' => match length(text, line_at)? {
                None => Reply::Null,
                Some(n) if n > MAX_BULK => {
                    return Err(invalid(line_at, "a bulk string over 512 MiB"));
                }
                Some(n) => {
                    let end = at + n;
                    match input.get(end..end + 2) {
                        None => return Ok(None),
                        Some(b"\r\n") => {}
                        Some(_) => return Err(invalid(end, "a bulk string not ended by CRLF")),
                    }
                    let bytes = input[at..end].to_vec();
                    at = end + 2;
                    Reply::BulkString(bytes)
                }
            },
            b'*' => match length(text, line_at)? {
                None => Reply::Null,
                Some(0) => Reply::Array(Vec::new()),
                Some(len) => {
                    if open.len() >= MAX_DEPTH {
                        return Err(invalid(
                            line_at,
                            format!("arrays nested over {MAX_DEPTH} deep"),
                        ));
                    }
                    // The length is the peer's word: the vector grows as
                    // values actually arrive.
                    let items = Vec::with_capacity(len.min(64));
                    open.push(Open { items, len });
                    continue;
                }
            },
            other => {
                return Err(invalid(line_at, format_args!("type byte {other:#04x}")));
            }
        };
        // A value is complete: so may be the arrays around it.
        let mut value = value;
        loop {
            let Some(array) = open.last_mut() else {
                *used = at;
                return Ok(Some(value));
            };
            array.items.push(value);
            if array.items.len() < array.len {
                break;
            }
            let Some(done) = open.pop() else {
                break; // cannot be: `open` had a last element
            };
            value = Reply::Array(done.items);
        }
    }
}

/// An integer line's number.
fn integer(text: &[u8], at: usize) -> Result<i64, Invalid> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| invalid(at, "not an integer"))
}

/// A bulk string's or an array's length: `None` for -1 (null).
fn length(text: &[u8], at: usize) -> Result<Option<usize>, Invalid> {
    match integer(text, at)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| invalid(at, "a negative length")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Reply {
        Reply::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&[b"SET", b"k", b"a\r\nb"], &mut out);
        encode_command(&[b"PING"], &mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n*1\r\n$4\r\nPING\r\n"
        );
        // And reads back as what it was.
        let mut used = 0;
        assert_eq!(
            next_frame(&out, &mut used).unwrap(),
            Some(Reply::Array(vec![bulk("SET"), bulk("k"), bulk("a\r\nb")]))
        );
    }

    #[test]
    fn every_kind_of_reply_is_read() {
        let all = b"+OK\r\n-ERR no\r\n:-42\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n\
                    *3\r\n$3\r\nabc\r\n*2\r\n:1\r\n*1\r\n+x\r\n$2\r\nyz\r\n";
        let mut used = 0;
        let mut got = Vec::new();
        while let Some(reply) = next_frame(all, &mut used).unwrap() {
            got.push(reply);
        }
        assert_eq!(used, all.len());
        assert_eq!(
            got,
            vec![
                Reply::SimpleString(b"OK".to_vec()),
                Reply::Error("ERR no".into()),
                Reply::Integer(-42),
                bulk(""),
                Reply::Null,
                Reply::Null,
                Reply::Array(vec![]),
                Reply::Array(vec![
                    bulk("abc"),
                    Reply::Array(vec![
                        Reply::Integer(1),
                        Reply::Array(vec![Reply::SimpleString(b"x".to_vec())])
                    ]),
                    bulk("yz"),
                ]),
            ]
        );
    }

    #[test]
    fn a_reply_cut_anywhere_is_not_yet_and_moves_nothing() {
        let whole = b"*2\r\n$5\r\nhello\r\n*1\r\n:7\r\n";
        for cut in 0..whole.len() {
            let mut used = 0;
            assert_eq!(
                next_frame(&whole[..cut], &mut used),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(used, 0);
        }
        let mut used = 0;
        assert!(next_frame(whole, &mut used).unwrap().is_some());
        assert_eq!(used, whole.len());
    }

    #[test]
    fn nonsense_is_refused_and_deep_nesting_without_recursion() {
        for bad in [
            &b"not RESP\r\n"[..],
            b"+OK\n",
            b"\r\n",
            b":12x\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nabcXY",
            b"$99999999999999999999\r\n",
            b"$9223372036854775807\r\n",
        ] {
            let mut used = 0;
            let result = next_frame(bad, &mut used);
            assert!(
                result.is_err(),
                "{:?}: {result:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(used, 0);
        }
        let nested = |depth: usize| {
            let mut frame = b"*1\r\n".repeat(depth);
            frame.extend_from_slice(b":1\r\n");
            frame
        };
        let mut used = 0;
        assert!(next_frame(&nested(MAX_DEPTH), &mut used).unwrap().is_some());
        let mut used = 0;
        assert!(next_frame(&nested(MAX_DEPTH + 1), &mut used).is_err());
        // Refused even unfinished, and with no stack to overflow.
        let mut used = 0;
        assert!(next_frame(&b"*1\r\n".repeat(100_000), &mut used).is_err());
        // A huge announced array that never comes: not yet, nothing huge.
        let mut used = 0;
        assert_eq!(next_frame(b"*4000000000\r\n:1\r\n", &mut used), Ok(None));
    }
}
