//! HTTP/1.x, just enough for a page, its files and an upgrade. Pure
//! functions, no I/O.
//!
//! [`answer`] takes the bytes a connection has read so far and decides, with
//! httparse, whether they hold a complete request head and what to answer.
//! The checks run in this order, and the first that applies wins:
//!
//! | request                                                      | answer          |
//! |--------------------------------------------------------------|-----------------|
//! | head not parseable (httparse error, bad version)             | 400, close      |
//! | head over [`MAX_HEAD_BYTES`], or over [`MAX_HEADERS`] headers | 431, close      |
//! | `Transfer-Encoding` present                                  | 501, close      |
//! | `Content-Length` invalid or repeated                         | 400, close      |
//! | `Content-Length` > 0 (any method)                            | 413, close      |
//! | HTTP/1.1 without `Host`                                      | 400, close      |
//! | method not GET/HEAD                                          | 405 + `Allow`   |
//! | GET `/soc` with a valid upgrade                              | 101             |
//! | `/soc` without `Upgrade: websocket` + `Connection: upgrade`, not GET, or a bad key | 400 |
//! | `/soc` with `Sec-WebSocket-Version` other than 13            | 426 + `Sec-WebSocket-Version: 13` |
//! | `/soc` with an `Origin` that is not this host nor allowed     | 403             |
//! | GET/HEAD `/` or a template file, `If-None-Match` matching     | 304             |
//! | GET/HEAD `/` (the page) or `/<file>` (a template file)       | 200             |
//! | on the metrics listener: `/metrics`, `/healthz`, `/readyz`     | the server's ([`Reply::Ask`]) |
//! | any other path                                               | 404             |
//!
//! Every response has `Date` and says `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: no-referrer`. Template files carry an `ETag`,
//! `Cache-Control: no-cache` (use the copy, but revalidate it each time: a
//! restart with a new page is seen at once) and the
//! `Content-Security-Policy` (unless `--csp off`).
//!
//! A request that carries `Upgrade` and is not answered with 101 closes the
//! connection after its answer: bytes after its head may be frames.
//!
//! Every response but the 101 carries `Content-Length` (RFC 9110 forbids it
//! on 1xx). A request with a body is refused rather than read: Eddy has no
//! use for bodies, and skipping one safely would mean parsing it.

use std::time::SystemTime;

use tungstenite::Bytes;

use crate::templates::{Asset, Assets};

/// The longest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The most headers a request may have; httparse needs a fixed-size array.
pub const MAX_HEADERS: usize = 64;

/// The path of the chat's WebSocket endpoint, as in the tutorial.
pub const WEBSOCKET_PATH: &str = "/soc";

/// Paths under this prefix (`/r/rust`) serve the page (`index.html`) too:
/// a room's link. The page reads the room from its own path.
pub const ROOM_PAGE_PREFIX: &str = "/r/";

/// The metrics listener's path for what the server says of itself.
pub const METRICS_PATH: &str = "/metrics";
/// The metrics listener's path for liveness: the loop is turning.
pub const HEALTH_PATH: &str = "/healthz";
/// The metrics listener's path for readiness: clients can be taken.
pub const READY_PATH: &str = "/readyz";

/// A request only the server can answer, from its own state: asked on the
/// metrics listener (`--metrics-addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/metrics`: the Prometheus exposition.
    Metrics,
    /// `/healthz`: the loop is turning (answering is the proof).
    Health,
    /// `/readyz`: the server can take clients.
    Ready,
}

impl Probe {
    fn from_path(path: &str) -> Option<Probe> {
        match path {
            METRICS_PATH => Some(Probe::Metrics),
            HEALTH_PATH => Some(Probe::Health),
            READY_PATH => Some(Probe::Ready),
            _ => None,
        }
    }
}

/// What the HTTP layer serves: the files, their policy, and the origins.
#[derive(Debug, Clone)]
pub struct Site {
    /// The page and its files, read once at startup.
    pub assets: Assets,
    /// The `Content-Security-Policy` of HTML responses; `None` sends none.
    pub csp: Option<String>,
    /// Extra origins allowed to open a WebSocket, lowercase, without a
    /// trailing slash (`--allow-origin`).
    pub allowed_origins: Vec<String>,
    /// The paths that upgrade to a WebSocket (the server's routes).
    pub websocket_paths: Vec<String>,
    /// Whether the [`Probe`] paths are the server's to answer (the metrics
    /// listener's site: no files, no WebSockets).
    pub probes: bool,
}

impl Site {
    /// Whether `path` is a WebSocket endpoint.
    fn is_websocket(&self, path: &str) -> bool {
        self.websocket_paths.iter().any(|p| p == path)
    }

    /// The file that `path` names: an asset, or the page for a room's
    /// link (`/r/NAME`, one segment).
    fn asset(&self, path: &str) -> Option<&Asset> {
        match path.strip_prefix(ROOM_PAGE_PREFIX) {
            Some(room) if !room.is_empty() && !room.contains('/') => self.assets.get("/"),
            _ => self.assets.get(path),
        }
    }
}

/// The outcome of looking at the bytes read so far.
#[derive(Debug)]
pub enum Parsed {
    /// No complete head yet, and not too long: read more.
    Partial,
    /// A complete head of `consumed` bytes (or a fatal error, in which case
    /// `reply` closes the connection and `consumed` does not matter).
    Complete {
        /// Length of the head, including the blank line.
        consumed: usize,
        /// What to do.
        reply: Reply,
    },
}

/// The decision for one request.
#[derive(Debug)]
pub enum Reply {
    /// Send this response; then close if it says so, else read the next request.
    Respond(Response),
    /// A valid WebSocket handshake: this 101 switches the connection to
    /// WebSocket, if the handler admits the request's target (path and
    /// query, the second value), or a refusal replaces it.
    Upgrade(Response, String),
    /// A [`Probe`]: the server answers it with [`probe_response`], shaped
    /// as the request asks.
    Ask(Probe, Asked),
}

/// What a request said about the shape of its answer, kept while the
/// server works out a [`Reply::Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    version: u8,
    head_only: bool,
    close: bool,
    date: String,
}

/// The answer to a [`Probe`]: `status` with `body` (text of `content_type`),
/// or its head alone for HEAD. Never cached: each scrape is news.
pub fn probe_response(
    asked: &Asked,
    status: u16,
    why: &'static str,
    content_type: &str,
    body: String,
) -> Response {
    let shape = Shape {
        version: asked.version,
        head_only: asked.head_only,
        close: asked.close,
        date: &asked.date,
    };
    let no_store = [("Cache-Control", "no-store")];
    text_response(shape, status, why, content_type, body, &no_store)
}

/// A response with a text `body` of `content_type` (its head alone for
/// HEAD), and `extra` headers.
fn text_response(
    shape: Shape,
    status: u16,
    why: &'static str,
    content_type: &str,
    body: String,
    extra: &[(&str, &str)],
) -> Response {
    let head = response_head(status, Some(content_type), body.len(), extra, shape);
    Response {
        status,
        why,
        head,
        body: (!shape.head_only).then(|| Bytes::from(body)),
        close: shape.close,
    }
}

/// A response ready to be queued: head bytes, an optional shared body, and
/// whether the connection closes after it.
#[derive(Debug)]
pub struct Response {
    /// The status code, for logs and tests.
    pub status: u16,
    /// Why this answer, in a few words, for the connection's log line.
    pub why: &'static str,
    /// Status line and headers, ending with the blank line.
    pub head: Bytes,
    /// The body, absent for HEAD and 101 (the page is shared, not copied).
    pub body: Option<Bytes>,
    /// Whether the connection ends after this response.
    pub close: bool,
}

/// The part of a parsed request head the router looks at.
struct Request<'a> {
    method: &'a str,
    /// The path and query string, as sent.
    target: &'a str,
    /// The path without its query string.
    path: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: &'a [httparse::Header<'a>],
}

impl<'a> Request<'a> {
    /// The values of every header called `name` (case-insensitive).
    fn all(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let headers = self.headers;
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The value of header `name`, if present (the first one).
    fn get(&self, name: &'a str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// Whether a comma-separated header (`Connection`, `Upgrade`) holds
    /// `token`, compared case-insensitively (RFC 9110 §7.6.1).
    fn has_token(&self, name: &'a str, token: &str) -> bool {
        self.all(name).any(|value| {
            value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes
    /// unless told `keep-alive` (RFC 9112 §9.3).
    fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            false
        } else {
            self.version == 1 || self.has_token("connection", "keep-alive")
        }
    }
}

/// Looks at `buf`, the bytes read so far on a connection between requests,
/// and decides what to do. `now` goes into the `Date` header (RFC 9110
/// §6.6.1: a server with a clock must send one); passing it in keeps this
/// module free of the clock, and its tests exact.
pub fn answer(buf: &[u8], site: &Site, now: SystemTime) -> Parsed {
    let date = httpdate::fmt_http_date(now);
    let fatal = |status, why| Parsed::Complete {
        consumed: 0,
        reply: Reply::Respond(error(Shape::fatal(&date), status, why, &[])),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return fatal(431, "request head too large");
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return fatal(431, "too many headers"),
        Err(_) => return fatal(400, "malformed request"),
    };
    if consumed > MAX_HEAD_BYTES {
        return fatal(431, "request head too large");
    }
    // httparse fills all three on Complete; be defensive anyway.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return fatal(400, "malformed request");
    };
    let request = Request {
        method,
        target,
        path: target.split('?').next().unwrap_or(target),
        version,
        headers: req.headers,
    };
    Parsed::Complete {
        consumed,
        reply: route(&request, site, &date),
    }
}

/// How a response must be shaped for the request it answers.
#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    /// The request's minor version: HTTP/1.0 keep-alive must be confirmed.
    version: u8,
    /// A HEAD request: headers only.
    head_only: bool,
    /// The connection ends after this response.
    close: bool,
    /// The `Date` header's value.
    date: &'a str,
}

impl<'a> Shape<'a> {
    /// The shape of an answer to a request that cannot be trusted to frame
    /// the next one: it closes the connection.
    fn fatal(date: &'a str) -> Self {
        Shape {
            version: 1,
            head_only: false,
            close: true,
            date,
        }
    }
}

fn route(req: &Request<'_>, site: &Site, date: &str) -> Reply {
    let refuse = |status, why| Reply::Respond(error(Shape::fatal(date), status, why, &[]));
    if req.get("transfer-encoding").is_some() {
        return refuse(501, "Transfer-Encoding is not supported");
    }
    let mut lengths = req.all("content-length");
    match (lengths.next(), lengths.next()) {
        (None, _) => {}
        (Some(_), Some(_)) => return refuse(400, "repeated Content-Length"),
        (Some(value), None) => match parse_content_length(value) {
            None => return refuse(400, "invalid Content-Length"),
            Some(0) => {}
            Some(_) => return refuse(413, "request bodies are not accepted"),
        },
    }
    if req.version == 1 && req.get("host").is_none() {
        return refuse(400, "missing Host header");
    }
    let shape = Shape {
        version: req.version,
        head_only: req.method == "HEAD",
        // A client that asked to switch protocols may already have sent
        // frames after its head; if the switch is refused, those bytes must
        // not be read as the next request. So a refused upgrade ends the
        // connection.
        close: !req.keep_alive() || req.get("upgrade").is_some(),
        date,
    };
    if req.method != "GET" && !shape.head_only {
        return Reply::Respond(error(
            shape,
            405,
            "method not allowed",
            &[("Allow", "GET, HEAD")],
        ));
    }
    if site.probes
        && let Some(probe) = Probe::from_path(req.path)
    {
        let asked = Asked {
            version: shape.version,
            head_only: shape.head_only,
            close: shape.close,
            date: shape.date.to_owned(),
        };
        return Reply::Ask(probe, asked);
    }
    if site.is_websocket(req.path) {
        return upgrade(req, site, shape);
    }
    match site.asset(req.path) {
        Some(asset) => Reply::Respond(serve(req, site, asset, shape)),
        None => Reply::Respond(error(shape, 404, "not found", &[])),
    }
}

/// The answer to a connection over the server's limits: 503, close.
pub fn service_unavailable(now: SystemTime, why: &'static str) -> Response {
    let date = httpdate::fmt_http_date(now);
    error(Shape::fatal(&date), 503, why, &[])
}

/// The answer to a WebSocket handshake its handler refused (`status`,
/// with `why` in the body), closing: frames may follow the head.
pub fn refused_upgrade(now: SystemTime, status: u16, why: &'static str) -> Response {
    let date = httpdate::fmt_http_date(now);
    error(Shape::fatal(&date), status, why, &[])
}

/// The answer to a request whose head did not arrive in time: 408, close.
pub fn request_timeout(now: SystemTime) -> Response {
    let date = httpdate::fmt_http_date(now);
    error(
        Shape::fatal(&date),
        408,
        "request head not received in time",
        &[],
    )
}

/// `Content-Length` as RFC 9110 §8.6 allows it: digits only.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A template file, or 304 if the client's copy is current.
fn serve(req: &Request<'_>, site: &Site, asset: &Asset, shape: Shape) -> Response {
    let mut extra = vec![("ETag", asset.etag.as_str()), ("Cache-Control", "no-cache")];
    // On every file, not only HTML: an SVG opened on its own is a document
    // too, and could run script on this origin.
    if let Some(csp) = &site.csp {
        extra.push(("Content-Security-Policy", csp));
    }
    if req
        .all("if-none-match")
        .any(|value| etag_listed(value, &asset.etag))
    {
        // RFC 9110 §8.6: a 304 may carry Content-Length only if it is what
        // the 200 would have said. No body, no Content-Type.
        let head = response_head(304, None, asset.body.len(), &extra, shape);
        return Response {
            status: 304,
            why: "not modified",
            head,
            body: None,
            close: shape.close,
        };
    }
    let head = response_head(
        200,
        Some(asset.content_type),
        asset.body.len(),
        &extra,
        shape,
    );
    Response {
        status: 200,
        why: "a template file",
        head,
        body: (!shape.head_only).then(|| asset.body.clone()),
        close: shape.close,
    }
}

/// Whether an `If-None-Match` value (`*`, or a list of entity tags, weak
/// or strong) names `etag`. The comparison is weak, as RFC 9110 §13.1.2 asks.
fn etag_listed(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The WebSocket opening handshake, server side (RFC 6455 §4.2).
fn upgrade(req: &Request<'_>, site: &Site, shape: Shape) -> Reply {
    let refuse = |status, why: &'static str, extra: &[(&str, &str)]| {
        Reply::Respond(error(shape, status, why, extra))
    };
    if req.method != "GET"
        || !req.has_token("upgrade", "websocket")
        || !req.has_token("connection", "upgrade")
    {
        return refuse(
            400,
            "this is a WebSocket endpoint: use GET with Upgrade: websocket",
            &[],
        );
    }
    let Some(key) = req.get("sec-websocket-key").filter(|k| is_valid_key(k)) else {
        return refuse(400, "missing or invalid Sec-WebSocket-Key", &[]);
    };
    if req.get("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return refuse(
            426,
            "unsupported WebSocket version",
            &[("Sec-WebSocket-Version", "13")],
        );
    }
    if let Some(origin) = req.get("origin")
        && !origin_allowed(origin, req.get("host"), &site.allowed_origins)
    {
        return refuse(403, "cross-origin WebSocket refused", &[]);
    }
    let accept = accept_key(key);
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Reply::Upgrade(
        Response {
            status: 101,
            why: "WebSocket upgrade",
            head: Bytes::from(head),
            body: None,
            close: false,
        },
        req.target.to_owned(),
    )
}

/// A `Sec-WebSocket-Key` must be the base64 of 16 bytes (RFC 6455 §4.1):
/// 22 base64 digits, the last of which carries only 2 bits, then `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..22].iter().all(is_b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// Tornado's default `check_origin`: the origin's `host[:port]` must equal
/// the `Host` header (both compared in lowercase), unless the whole origin
/// was allowed explicitly. Browsers always send `Origin`; its check is what
/// stops another site's page from opening a socket here with the visitor's
/// browser. Clients that send no `Origin` are not browsers and are allowed
/// by the caller.
pub fn origin_allowed(origin: &[u8], host: Option<&[u8]>, allowed: &[String]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if allowed.iter().any(|a| *a == origin.trim_end_matches('/')) {
        return true;
    }
    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let netloc = origin.split_once("://").map_or("", |(_, rest)| rest);
    let netloc = netloc.split('/').next().unwrap_or("");
    !netloc.is_empty() && netloc == host.trim().to_ascii_lowercase()
}

/// Normalizes an `--allow-origin` value, or says why it is not an origin.
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    match lower.split_once("://") {
        Some((scheme, host))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !host.is_empty()
                && !host.contains('/') =>
        {
            Ok(lower)
        }
        _ => Err(format!(
            "{origin:?} is not an origin like https://example.com or http://host:8000"
        )),
    }
}

/// HTTP/1.1 keeps connections unless told otherwise; HTTP/1.0 closes them
/// unless the response confirms keep-alive.
fn connection_header(shape: Shape) -> Option<&'static str> {
    match (shape.close, shape.version) {
        (true, _) => Some("close"),
        (false, 0) => Some("keep-alive"),
        (false, _) => None,
    }
}

/// An error response with a short text body saying what went wrong.
fn error(shape: Shape, status: u16, why: &'static str, extra: &[(&str, &str)]) -> Response {
    let body = format!("{status} {}: {why}\n", reason(status));
    text_response(shape, status, why, "text/plain; charset=utf-8", body, extra)
}

/// Status line and headers. Every response but the 101 is built here, so
/// every one has `Date`, `Content-Length`, and the two headers that cost
/// nothing and close whole classes of attack: no MIME sniffing, no Referer
/// leaks.
fn response_head(
    status: u16,
    content_type: Option<&str>,
    content_length: usize,
    extra: &[(&str, &str)],
    shape: Shape,
) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\n",
        reason(status),
        shape.date
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {content_length}\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n"
    ));
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(connection) = connection_header(shape) {
        head.push_str(&format!("Connection: {connection}\r\n"));
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The `Sec-WebSocket-Accept` value for a client's key (RFC 6455 §4.2.2):
/// base64 of the SHA-1 of the key and the protocol's GUID.
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    base64(&sha1.digest().bytes())
}

/// Standard base64 with padding (RFC 4648 §4): for the 20 bytes of the
/// accept key, not worth a crate.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// RFC 9110's example date: Sun, 06 Nov 1994 08:49:37 GMT.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777)
    }

    fn site() -> Site {
        Site {
            assets: Assets::from_files([
                ("index.html", Bytes::from_static(b"<p>hi</p>")),
                ("app.js", Bytes::from_static(b"go()")),
            ]),
            csp: Some("default-src 'self'".into()),
            allowed_origins: vec!["https://chat.example".into()],
            websocket_paths: vec!["/soc".into()],
            probes: false,
        }
    }

    /// Answers `head` and returns (status, closes, consumed, full response text).
    fn ask(head: &str) -> (u16, bool, usize, String) {
        match answer(head.as_bytes(), &site(), now()) {
            Parsed::Partial => panic!("partial: {head:?}"),
            Parsed::Complete {
                consumed,
                reply: Reply::Respond(r) | Reply::Upgrade(r, _),
            } => {
                let mut text = String::from_utf8(r.head.to_vec()).unwrap();
                if let Some(body) = &r.body {
                    text.push_str(std::str::from_utf8(body).unwrap());
                }
                (r.status, r.close, consumed, text)
            }
            Parsed::Complete {
                reply: Reply::Ask(probe, _),
                ..
            } => panic!("{probe:?} asked on a site without probes: {head:?}"),
        }
    }

    #[test]
    fn probes_are_the_servers_to_answer_on_a_site_that_has_them() {
        let probes = Site {
            probes: true,
            ..site()
        };
        let get = |head: &str| match answer(head.as_bytes(), &probes, now()) {
            Parsed::Complete {
                reply: Reply::Ask(probe, asked),
                consumed,
            } => Some((probe, asked, consumed)),
            _ => None,
        };
        let head = "GET /metrics HTTP/1.1\r\nHost: h\r\n\r\nGET /";
        let (probe, asked, consumed) = get(head).expect("asked");
        assert_eq!((probe, consumed), (Probe::Metrics, head.len() - 5));
        let response = probe_response(&asked, 200, "metrics", "text/plain", "x 1\n".into());
        let text = String::from_utf8(response.head.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("Content-Length: 4\r\n") && text.contains("Cache-Control: no-store\r\n")
        );
        assert_eq!(response.body.as_deref(), Some(&b"x 1\n"[..]));
        assert!(!response.close);

        let (probe, asked, _) = get("HEAD /healthz HTTP/1.0\r\n\r\n").expect("asked");
        assert_eq!(probe, Probe::Health);
        let response = probe_response(&asked, 503, "not ready", "text/plain", "no\n".into());
        assert_eq!(response.body, None, "HEAD: the head alone");
        assert!(response.close, "HTTP/1.0 without keep-alive closes");
        assert_eq!(
            get("GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n").map(|g| g.0),
            Some(Probe::Ready)
        );
        // Not a probe, or not GET/HEAD: the usual answers.
        assert!(get("GET /metricsx HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
        assert!(get("DELETE /metrics HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
        // And the chat's site has none.
        assert_eq!(ask("GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n").0, 404);
    }

    fn upgrade_head(extra: &str) -> String {
        format!(
            "GET /soc HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        assert!(matches!(
            answer(b"GET / HTTP/1.1\r\nHost: x\r\n", &site(), now()),
            Parsed::Partial
        ));
        assert!(matches!(answer(b"", &site(), now()), Parsed::Partial));
    }

    #[test]
    fn the_page_has_type_and_length_and_head_has_no_body() {
        let (status, close, consumed, text) = ask("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET");
        assert_eq!((status, close, consumed), (200, false, 27));
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(text.contains("Content-Length: 9\r\n"));
        assert!(text.ends_with("\r\n\r\n<p>hi</p>"));
        let (status, _, _, text) = ask("HEAD /?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(text.contains("Content-Length: 9\r\n") && text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn files_carry_validators_and_security_headers_and_html_the_csp() {
        let (status, _, _, page) = ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        let etag = site().assets.get("/").unwrap().etag.clone();
        for header in [
            format!("ETag: {etag}\r\n"),
            "Cache-Control: no-cache\r\n".into(),
            "Content-Security-Policy: default-src 'self'\r\n".into(),
            "X-Content-Type-Options: nosniff\r\n".into(),
            "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n".into(),
            "Referrer-Policy: no-referrer\r\n".into(),
        ] {
            assert!(page.contains(&header), "{header:?} missing from {page}");
        }
        let (status, _, _, script) = ask("GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(script.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(
            script.contains("Content-Security-Policy: default-src 'self'\r\n"),
            "every file, not only HTML"
        );
        assert!(script.ends_with("\r\n\r\ngo()"));
        let (_, _, _, missing) = ask("GET /nope.js HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            missing.contains("X-Content-Type-Options: nosniff\r\n"),
            "errors too"
        );
        let mut off = site();
        off.csp = None;
        let Parsed::Complete {
            reply: Reply::Respond(r),
            ..
        } = answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &off, now())
        else {
            panic!()
        };
        assert!(!String::from_utf8_lossy(&r.head).contains("Content-Security-Policy"));
    }

    #[test]
    fn a_matching_if_none_match_gets_304_without_a_body() {
        let etag = site().assets.get("/").unwrap().etag.clone();
        for value in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".into(),
        ] {
            let (status, close, _, text) = ask(&format!(
                "GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: {value}\r\n\r\n"
            ));
            assert_eq!((status, close), (304, false), "{value}");
            assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
            assert!(
                text.contains(&format!("ETag: {etag}\r\n"))
                    && text.contains("Content-Length: 9\r\n")
            );
        }
        let (status, _, _, _) =
            ask("GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"stale\"\r\n\r\n");
        assert_eq!(status, 200);
    }

    #[test]
    fn the_table_is_checked_in_order() {
        let cases: &[(&str, u16, bool)] = &[
            ("GARBAGE\r\n\r\n", 400, true),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, true),
            ("GET / HTTP/1.1\r\n\r\n", 400, true),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                501,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
                413,
                true,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
                400,
                true,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                400,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                405,
                false,
            ),
            ("DELETE /soc HTTP/1.1\r\nHost: x\r\n\r\n", 405, false),
            ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, false),
            ("GET /r/rust HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
            ("GET /r/%CE%B1 HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
            ("GET /r/ HTTP/1.1\r\nHost: x\r\n\r\n", 404, false),
            ("GET /r/a/b HTTP/1.1\r\nHost: x\r\n\r\n", 404, false),
            ("GET /soc HTTP/1.1\r\nHost: x\r\n\r\n", 400, false),
            ("HEAD /soc HTTP/1.1\r\nHost: x\r\n\r\n", 400, false),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
                true,
            ),
            ("GET / HTTP/1.0\r\n\r\n", 200, true),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                200,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                200,
                true,
            ),
        ];
        for (head, status, close) in cases {
            let got = ask(head);
            assert_eq!((got.0, got.1), (*status, *close), "{head:?} -> {}", got.3);
            assert!(got.3.contains("Content-Length: "), "{}", got.3);
        }
        let (_, _, _, text) = ask("PUT / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        // HTTP/1.0 keep-alive is confirmed on every response that keeps it.
        for head in [
            "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ] {
            let (_, close, _, text) = ask(head);
            assert!(
                !close && text.contains("Connection: keep-alive\r\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn oversized_heads_get_431() {
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(ask(&long).0, 431, "partial and already too long");
        let complete = format!("{long}\r\n");
        assert_eq!(ask(&complete).0, 431, "complete but too long");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            ask(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).0,
            431
        );
    }

    #[test]
    fn base64_and_the_accept_key_match_the_rfcs() {
        // RFC 4648 §10's vectors, and RFC 6455 §1.3's key.
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input:?}");
        }
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_valid_upgrade_gets_101_with_the_rfc_accept_key() {
        let (status, close, _, text) = ask(&upgrade_head(""));
        assert_eq!((status, close), (101, false));
        // The example from RFC 6455 §1.3.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.contains("Content-Length"));
        // Header names and tokens are case-insensitive; lists are lists.
        let head = format!(
            "GET /soc?since=3 HTTP/1.1\r\nhost: h:1\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
             sec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"
        );
        assert_eq!(ask(&head).0, 101);
    }

    #[test]
    fn bad_upgrades_are_refused() {
        let no_upgrade = upgrade_head("").replace("Upgrade: websocket\r\n", "");
        assert_eq!(ask(&no_upgrade).0, 400);
        let refused = ask(&upgrade_head("Origin: http://elsewhere\r\n"));
        assert_eq!(
            (refused.0, refused.1),
            (403, true),
            "a refused upgrade closes"
        );
        let no_connection = upgrade_head("").replace("Connection: Upgrade\r\n", "");
        assert_eq!(ask(&no_connection).0, 400);
        for bad_key in [
            "short==",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ=x",
            "!GhlIHNhbXBsZSBub25jZQ==",
        ] {
            assert_eq!(
                ask(&upgrade_head("").replace(KEY, bad_key)).0,
                400,
                "{bad_key}"
            );
        }
        let v8 = upgrade_head("").replace("Version: 13", "Version: 8");
        let (status, _, _, text) = ask(&v8);
        assert_eq!(status, 426);
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert_eq!(ask(&upgrade_head("").replace("/soc", "/other")).0, 404);
    }

    #[test]
    fn origin_must_match_host_or_be_allowed() {
        assert_eq!(ask(&upgrade_head("Origin: http://h:1\r\n")).0, 101);
        assert_eq!(ask(&upgrade_head("Origin: HTTP://H:1\r\n")).0, 101);
        assert_eq!(ask(&upgrade_head("Origin: http://h:2\r\n")).0, 403);
        assert_eq!(ask(&upgrade_head("Origin: http://evil.example\r\n")).0, 403);
        assert_eq!(ask(&upgrade_head("Origin: null\r\n")).0, 403);
        assert_eq!(
            ask(&upgrade_head("Origin: https://chat.example\r\n")).0,
            101
        );
        assert_eq!(
            ask(&upgrade_head("Origin: https://chat.example/\r\n")).0,
            101
        );
    }

    #[test]
    fn allow_origin_values_are_checked() {
        assert_eq!(
            normalize_origin("HTTPS://Chat.Example:8443/").unwrap(),
            "https://chat.example:8443"
        );
        assert!(normalize_origin("chat.example").is_err());
        assert!(normalize_origin("https://").is_err());
        assert!(normalize_origin("https://a/b").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A response head's header lines, lowercased names.
        fn headers(head: &str) -> Vec<(String, String)> {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(": "))
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
                .collect()
        }

        fn check_response(r: &Response) {
            let head = std::str::from_utf8(&r.head).expect("an ASCII head");
            assert!(
                head.starts_with(&format!("HTTP/1.1 {} ", r.status)),
                "{head}"
            );
            assert!(head.ends_with("\r\n\r\n") && head.matches("\r\n\r\n").count() == 1);
            let headers = headers(head);
            let length = headers.iter().find(|(n, _)| n == "content-length");
            if r.status == 101 {
                assert!(length.is_none());
            } else {
                let length: usize = length.expect("Content-Length").1.parse().unwrap();
                if let Some(body) = &r.body {
                    assert_eq!(body.len(), length);
                }
            }
            let says_close = headers
                .iter()
                .any(|(n, v)| n == "connection" && v == "close");
            assert_eq!(says_close, r.close, "{head}");
        }

        proptest! {
            #[test]
            fn any_bytes_get_a_well_formed_answer_or_a_wait(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
                match answer(&buf, &site(), now()) {
                    Parsed::Partial => prop_assert!(buf.len() <= MAX_HEAD_BYTES),
                    Parsed::Complete { consumed, reply: Reply::Respond(r) | Reply::Upgrade(r, _) } => {
                        prop_assert!(consumed <= buf.len());
                        check_response(&r);
                    }
                    Parsed::Complete { reply: Reply::Ask(..), .. } => {
                        prop_assert!(false, "a probe on a site without probes");
                    }
                }
            }

            #[test]
            fn a_head_cut_short_asks_for_more_and_whole_it_is_answered(
                path in "/[a-z]{0,12}",
                extra in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,20}"), 0..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut head = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
                for (name, value) in &extra {
                    head.push_str(&format!("X-{name}: {}\r\n", value.trim()));
                }
                head.push_str("\r\n");
                let at = cut.index(head.len() - 1);
                prop_assert!(matches!(answer(&head.as_bytes()[..at], &site(), now()), Parsed::Partial));
                match answer(head.as_bytes(), &site(), now()) {
                    Parsed::Complete { consumed, reply: Reply::Respond(r) } => {
                        prop_assert_eq!(consumed, head.len());
                        prop_assert!(r.status == 200 || r.status == 404, "{}", r.status);
                        check_response(&r);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn allowed_origins_normalize_to_a_fixed_point(host in "[a-z]{1,10}(\\.[a-z]{2,5})?", port in proptest::option::of(1u16..)) {
                let origin = match port {
                    Some(port) => format!("HTTPS://{host}:{port}/"),
                    None => format!("https://{}", host.to_uppercase()),
                };
                let once = normalize_origin(&origin).unwrap();
                prop_assert_eq!(normalize_origin(&once).unwrap(), once.clone());
                let host_header = match port { Some(port) => format!("{host}:{port}"), None => host.clone() };
                prop_assert!(origin_allowed(once.as_bytes(), Some(host_header.as_bytes()), &[]));
            }
        }
    }
}
