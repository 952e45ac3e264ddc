//! Command-line flags → [`Config`]. `main` calls [`parse`]; nothing else
//! reads `argv`.
//!
//! lexopt does the tokenizing (`--flag value`, `--flag=value`, `-h`); this
//! module says what each flag means and writes the help text.

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, Config, PENDING_MESSAGES_MIN};
use crate::rate::{self, RateLimit};

/// The address used when `--addr` is not given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8000";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run a server on `addr` with `config`.
    Run {
        /// Where to listen.
        addr: SocketAddr,
        /// Every other setting (boxed: it is much larger than the other
        /// variants).
        config: Box<Config>,
    },
    /// Print [`help`] and exit.
    Help,
    /// Print the version and exit.
    Version,
}

/// A command line that cannot be run; `main` prints it with the usage line
/// and exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError(e.to_string())
    }
}

/// The one-line usage, printed after an error.
pub const USAGE: &str = "usage: eddy [--addr HOST:PORT] [--templates DIR] [--allow-origin URL]... \
                         [--csp POLICY|off] [--max-message-bytes N] [--max-pending-bytes N] \
                         [--max-connections N] [--max-connections-per-ip N] \
                         [--rate-limit BURST,PER_SEC|off] [--announce-joins-up-to N|all] \
                         [--replay N] [--history-lines N] [--history-bytes N] \
                         [--history-memory N] [--history-ttl DURATION] [--max-rooms N] \
                         [--presence-list-up-to N] [--resume-window SECS] \
                         [--data-dir DIR|off] [--fsync always|everysec|no] \
                         [--workers N] [--redis URL] [--metrics-addr HOST:PORT] \
                         [--tls-cert FILE --tls-key FILE] \
                         [--header-timeout SECS] [--keep-alive-timeout SECS] \
                         [--ping-interval SECS|off] [--ping-timeout SECS]";

/// The `--help` text: every flag with its default.
pub fn help() -> String {
    format!(
        "eddy {version}: the Tornado tutorial's WebSocket chat room, on a hand-written mio event loop

{USAGE}

Options:
  --addr HOST:PORT         Where to listen; port 0 picks a free port
                           [default: {DEFAULT_ADDR}]
  --templates DIR          Directory holding index.html, read once at startup; every regular
                           file directly in it is served publicly
                           [default: ./templates if it holds index.html, else the built-in page]
  --allow-origin URL       Also accept WebSocket connections from pages served at this origin,
                           e.g. https://chat.example.com; repeatable
                           [default: none; only pages from the server's own Host]
  --csp POLICY|off         Content-Security-Policy of the page; off sends none (for legacy
                           pages that need eval or inline script, like the tutorial's)
                           [default: {csp}]
  --max-message-bytes N    Largest message (and frame) a client may send; larger ones get
                           close code 1009 [default: {max_message}]
  --max-pending-bytes N    Most output queued for a client: past it, it gets no live lines
                           and is fed the ones it missed from history once it reads again;
                           other output (notices, pongs) past twice it closes it with 1008;
                           at least {PENDING_MESSAGES_MIN} x --max-message-bytes [default: {max_pending}]
  --max-connections N      Most connections at once; more are answered 503 and closed
                           [default: the open-file limit, raised to its hard limit, less {reserve}]
  --max-connections-per-ip N
                           Most connections from one IP address; more get 503. Off unless
                           given: behind a proxy, every client has the proxy's address
  --rate-limit BURST,PER_SEC|off
                           Chat lines a client may send at once, and per second after that;
                           lines over it are refused, a client far over it for seconds is
                           closed with 1008 [default: {burst},{rate}]
  --announce-joins-up-to N|all
                           Tell the room of joins and leaves while it has at most N members
                           (0: never; all: always, as the seed does) [default: {announce}]
  --replay N               Newest lines a newcomer gets after the welcome; 0: none, as the
                           seed [default: {replay}]
  --history-lines N        Lines kept per room (on disk with --data-dir), for newcomers,
                           resumes and slow readers [default: {history_lines}]
  --history-bytes N        Bytes of lines kept per room [default: {history_bytes}]
  --history-memory N       Bytes of history kept in memory over all rooms: with --data-dir, the
                           cache of the newest lines; with --data-dir off, all there is, the
                           least recently active rooms' dropped beyond it [default: {history_memory}]
  --history-ttl DURATION   A room nobody is in and nobody spoke in for this long is forgotten:
                           history, seqs, epoch; seconds, or with s, m, h or d [default: {ttl}d]
  --max-rooms N            Most rooms with people in them at once; a connection that would open
                           one more gets 503 [default: {max_rooms}]
  --presence-list-up-to N  The welcome lists a room's members while it has at most N; above,
                           only their count [default: {presence}]
  --resume-window SECS     How long after a connection closed its resume token still brings
                           back its id and name [default: {resume}]
  --data-dir DIR|off       Where the rooms' history is kept, so it survives restarts and
                           crashes; created if missing, one server per directory; off: in
                           memory only [default: {data_dir}]
  --fsync always|everysec|no
                           When the history is synced to the disk: always, before any client
                           gets a line (survives a power cut; slower); everysec, by a helper
                           thread once a second (a power cut loses at most ~1 s); no, when the
                           kernel likes. A killed server loses nothing a client saw in any
                           mode [default: {fsync}]
  --workers N              Worker processes serving the port, one loop each (0: one per CPU);
                           more than 1 needs --redis [default: 1]
  --redis URL              Share rooms with other Eddy servers through Redis
                           (redis://[user:password@]host:port[/db]; no TLS): their history,
                           seqs and order live there, and --data-dir is not used [default: off]
  --metrics-addr HOST:PORT Serve Prometheus metrics (/metrics) and health checks (/healthz,
                           /readyz) on this address, a listener of its own; with --workers,
                           worker k on PORT+k (port 0: each a free port, logged) [default: off]
  --tls-cert FILE          Serve HTTPS and wss:// on --addr with this certificate (PEM: the
                           server's certificate, then its chain); SIGHUP reads it again.
                           Needs --tls-key and a build with --features tls [default: off]
  --tls-key FILE           The certificate's private key (PEM, unencrypted)
  --header-timeout SECS    Time for a request head (the WebSocket handshake included) to
                           arrive in full; then 408 and close [default: {header}]
  --keep-alive-timeout SECS
                           Time an HTTP connection may idle between requests [default: {idle}]
  --ping-interval SECS|off Silence after which a WebSocket client is pinged [default: {ping}]
  --ping-timeout SECS      Time to answer a ping (with its pong or any frame) before the
                           connection is closed with 1011 [default: {pong}]
  -h, --help               Print this help
  -V, --version            Print the version

Environment:
  RUST_LOG                 Log filter for env_logger, e.g. debug or eddy=trace [default: info]
",
        version = env!("CARGO_PKG_VERSION"),
        max_message = config::DEFAULT_MAX_MESSAGE_BYTES,
        max_pending = config::DEFAULT_MAX_PENDING_BYTES,
        csp = config::DEFAULT_CSP,
        reserve = crate::limits::FD_RESERVE,
        burst = RateLimit::default().burst,
        rate = RateLimit::default().per_second,
        announce = config::DEFAULT_ANNOUNCE_JOINS_UP_TO,
        replay = config::DEFAULT_REPLAY,
        history_lines = config::DEFAULT_HISTORY_LINES,
        history_bytes = config::DEFAULT_HISTORY_BYTES,
        history_memory = config::DEFAULT_HISTORY_MEMORY,
        ttl = config::DEFAULT_HISTORY_TTL.as_secs() / 86_400,
        max_rooms = config::DEFAULT_MAX_ROOMS,
        presence = config::DEFAULT_PRESENCE_LIST_UP_TO,
        data_dir = config::DEFAULT_DATA_DIR,
        fsync = config::Fsync::default().as_str(),
        resume = config::DEFAULT_RESUME_WINDOW.as_secs(),
        header = config::DEFAULT_HEADER_TIMEOUT.as_secs(),
        idle = config::DEFAULT_KEEP_ALIVE_TIMEOUT.as_secs(),
        ping = config::DEFAULT_PING_INTERVAL.as_secs(),
        pong = config::DEFAULT_PING_TIMEOUT.as_secs(),
    )
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut config = Config {
        data_dir: Some(PathBuf::from(config::DEFAULT_DATA_DIR)),
        ..Config::default()
    };
    let (mut tls_cert, mut tls_key) = (None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("addr") => addr = parser.value()?.string()?,
            Long("templates") => config.templates = Some(PathBuf::from(parser.value()?)),
            Long("allow-origin") => config.allowed_origins.push(parser.value()?.string()?),
            Long("csp") => {
                let policy = parser.value()?.string()?;
                config.csp = (policy != "off").then_some(policy);
            }
            Long("max-message-bytes") => {
                config.max_message_bytes = size("--max-message-bytes", parser.value()?)?;
            }
            Long("max-pending-bytes") => {
                config.max_pending_bytes = size("--max-pending-bytes", parser.value()?)?;
            }
            Long("max-connections") => {
                config.max_connections = Some(count("--max-connections", parser.value()?)?);
            }
            Long("max-connections-per-ip") => {
                config.max_connections_per_ip =
                    Some(count("--max-connections-per-ip", parser.value()?)?);
            }
            Long("rate-limit") => {
                let value = parser.value()?.string()?;
                config.rate_limit = match value.as_str() {
                    "off" => None,
                    text => Some(
                        rate::parse(text).map_err(|e| CliError(format!("--rate-limit: {e}")))?,
                    ),
                };
            }
            Long("announce-joins-up-to") => {
                let value = parser.value()?;
                config.announce_joins_up_to = match value.to_str() {
                    Some("all") => None,
                    _ => Some(members("--announce-joins-up-to", value)?),
                };
            }
            Long("replay") => config.replay = members("--replay", parser.value()?)?,
            Long("history-lines") => {
                config.history_lines = members("--history-lines", parser.value()?)?;
            }
            Long("history-bytes") => {
                config.history_bytes = size("--history-bytes", parser.value()?)?;
            }
            Long("history-memory") => {
                config.history_memory = size("--history-memory", parser.value()?)?;
            }
            Long("history-ttl") => config.history_ttl = ttl(parser.value()?)?,
            Long("max-rooms") => config.max_rooms = count("--max-rooms", parser.value()?)?,
            Long("presence-list-up-to") => {
                config.presence_list_up_to = members("--presence-list-up-to", parser.value()?)?;
            }
            Long("resume-window") => {
                config.resume_window = seconds("--resume-window", parser.value()?)?;
            }
            Long("data-dir") => {
                let value = parser.value()?;
                config.data_dir = match value.to_str() {
                    Some("off") => None,
                    Some("") => return Err(CliError("--data-dir takes a directory or off".into())),
                    _ => Some(PathBuf::from(value)),
                };
            }
            Long("workers") => {
                let value = parser.value()?.string()?;
                config.workers = match value.parse::<usize>() {
                    Ok(0) => crate::workers::one_per_cpu(),
                    Ok(n) if n <= 1024 => n,
                    _ => {
                        return Err(CliError(format!(
                            "--workers {value}: a number from 0 to 1024"
                        )));
                    }
                };
            }
            Long("tls-cert") => tls_cert = Some(PathBuf::from(parser.value()?)),
            Long("tls-key") => tls_key = Some(PathBuf::from(parser.value()?)),
            Long("metrics-addr") => {
                let value = parser.value()?.string()?;
                config.metrics_addr = Some(resolve("--metrics-addr", &value)?);
            }
            Long("redis") => {
                let value = parser.value()?.string()?;
                let url = value
                    .parse()
                    .map_err(|e| CliError(format!("--redis {value}: {e}")))?;
                config.redis = Some(url);
            }
            Long("fsync") => {
                let value = parser.value()?.string()?;
                config.fsync = match value.as_str() {
                    "always" => config::Fsync::Always,
                    "everysec" => config::Fsync::EverySec,
                    "no" => config::Fsync::No,
                    _ => {
                        return Err(CliError(format!(
                            "--fsync takes always, everysec or no, not {value:?}"
                        )));
                    }
                };
            }
            Long("header-timeout") => {
                config.header_timeout = seconds("--header-timeout", parser.value()?)?;
            }
            Long("keep-alive-timeout") => {
                config.keep_alive_timeout = seconds("--keep-alive-timeout", parser.value()?)?;
            }
            Long("ping-interval") => {
                let value = parser.value()?;
                config.ping_interval = match value.to_str() {
                    Some("off") => None,
                    _ => Some(seconds("--ping-interval", value)?),
                };
            }
            Long("ping-timeout") => {
                config.ping_timeout = seconds("--ping-timeout", parser.value()?)?;
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().into()),
        }
    }
    config.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(config::TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => return Err(CliError("--tls-cert needs --tls-key".into())),
        (None, Some(_)) => return Err(CliError("--tls-key needs --tls-cert".into())),
    };
    let addr = resolve("--addr", &addr)?;
    config.validate().map_err(|e| CliError(e.0))?;
    Ok(Command::Run {
        addr,
        config: Box::new(config),
    })
}

fn size(flag: &str, value: OsString) -> Result<usize, CliError> {
    let text = value.to_string_lossy();
    text.parse().map_err(|_| {
        CliError(format!(
            "{flag} takes a whole number of bytes, not {text:?}"
        ))
    })
}

/// A number of members or lines, 0 included.
fn members(flag: &str, value: OsString) -> Result<usize, CliError> {
    let text = value.to_string_lossy();
    let what = if flag == "--announce-joins-up-to" {
        "a number of members or all"
    } else {
        "a whole number"
    };
    text.parse()
        .map_err(|_| CliError(format!("{flag} takes {what}, not {text:?}")))
}

/// A count of at least 1.
fn count(flag: &str, value: OsString) -> Result<usize, CliError> {
    let text = value.to_string_lossy();
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(CliError(format!(
            "{flag} takes a whole number of at least 1, not {text:?}"
        ))),
    }
}

/// A duration in seconds (fractions allowed), more than 0 and at most a day.
fn seconds(flag: &str, value: OsString) -> Result<Duration, CliError> {
    let text = value.to_string_lossy();
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(CliError(format!(
            "{flag} takes a number of seconds between 0 and 86400, not {text:?}"
        ))),
    }
}

/// `--history-ttl`: seconds (fractions allowed), or a whole number with a
/// unit (`90s`, `30m`, `12h`, `7d`); more than 0, at most ten years.
fn ttl(value: OsString) -> Result<Duration, CliError> {
    let text = value.to_string_lossy();
    let (number, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1.0),
        Some((at, 'm')) => (&text[..at], 60.0),
        Some((at, 'h')) => (&text[..at], 3600.0),
        Some((at, 'd')) => (&text[..at], 86_400.0),
        _ => (&*text, 1.0),
    };
    match number.parse::<f64>().map(|n| n * unit) {
        Ok(secs) if secs > 0.0 && secs <= 10.0 * 365.0 * 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(CliError(format!(
            "--history-ttl takes a duration such as 3600, 90m, 12h or 7d, not {text:?}"
        ))),
    }
}

/// `HOST:PORT` (given as `flag`) to an address; a host name is looked up
/// once, here.
fn resolve(flag: &str, addr: &str) -> Result<SocketAddr, CliError> {
    let bad = |why: String| {
        CliError(format!(
            "{flag} {addr:?}: {why} (expected HOST:PORT, e.g. {DEFAULT_ADDR})"
        ))
    };
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| bad("no address found".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn no_flags_means_the_defaults() {
        assert_eq!(
            run(&[]).unwrap(),
            Command::Run {
                addr: DEFAULT_ADDR.parse().unwrap(),
                // The binary keeps history on disk; the library's default does not.
                config: Box::new(Config {
                    data_dir: Some(PathBuf::from("eddy-data")),
                    ..Config::default()
                })
            }
        );
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let Command::Run { addr, config } = run(&[
            "--addr=127.0.0.1:0",
            "--templates",
            "/tmp/t",
            "--allow-origin",
            "https://A.example/",
            "--allow-origin=http://b.example:81",
            "--max-message-bytes",
            "1000",
            "--max-pending-bytes",
            "8000",
            "--csp",
            "default-src 'self'",
            "--header-timeout",
            "2.5",
            "--keep-alive-timeout=7",
            "--ping-interval",
            "off",
            "--ping-timeout",
            "3",
            "--rate-limit",
            "4,0.5",
            "--max-connections",
            "100",
            "--max-connections-per-ip",
            "5",
            "--replay",
            "0",
            "--history-lines=10",
            "--history-bytes",
            "2048",
            "--history-memory",
            "4096",
            "--history-ttl",
            "36h",
            "--max-rooms",
            "3",
            "--presence-list-up-to=0",
            "--resume-window",
            "30",
            "--data-dir",
            "/var/lib/eddy",
            "--fsync=always",
            "--metrics-addr",
            "127.0.0.1:9100",
        ])
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(config.templates, Some(PathBuf::from("/tmp/t")));
        assert_eq!(
            config.allowed_origins,
            ["https://a.example", "http://b.example:81"]
        );
        assert_eq!(
            (config.max_message_bytes, config.max_pending_bytes),
            (1000, 8000)
        );
        assert_eq!(config.csp.as_deref(), Some("default-src 'self'"));
        assert_eq!(config.header_timeout, Duration::from_millis(2500));
        assert_eq!(
            config.rate_limit,
            Some(RateLimit {
                burst: 4,
                per_second: 0.5
            })
        );
        assert_eq!(config.keep_alive_timeout, Duration::from_secs(7));
        assert_eq!(config.max_connections, Some(100));
        assert_eq!(config.max_connections_per_ip, Some(5));
        assert_eq!(
            (
                config.replay,
                config.history_lines,
                config.history_bytes,
                config.history_memory
            ),
            (0, 10, 2048, 4096)
        );
        assert_eq!(
            (
                config.history_ttl,
                config.max_rooms,
                config.presence_list_up_to,
                config.resume_window
            ),
            (
                Duration::from_secs(36 * 3600),
                3,
                0,
                Duration::from_secs(30)
            )
        );
        assert_eq!(config.data_dir, Some(PathBuf::from("/var/lib/eddy")));
        assert_eq!(config.fsync, config::Fsync::Always);
        let Ok(Command::Run { config: off, .. }) = run(&["--data-dir", "off", "--fsync", "no"])
        else {
            panic!("not a run");
        };
        assert_eq!((off.data_dir, off.fsync), (None, config::Fsync::No));
        for (value, secs) in [("90", 90), ("90s", 90), ("2m", 120), ("7d", 604_800)] {
            let Ok(Command::Run { config, .. }) = run(&["--history-ttl", value]) else {
                panic!("{value}")
            };
            assert_eq!(config.history_ttl, Duration::from_secs(secs), "{value}");
        }
        assert_eq!(
            (config.ping_interval, config.ping_timeout),
            (None, Duration::from_secs(3))
        );
        let Ok(Command::Run { config, .. }) = run(&["--csp", "off"]) else {
            panic!()
        };
        assert_eq!(config.csp, None);
        let Ok(Command::Run { config, .. }) = run(&["--rate-limit", "off"]) else {
            panic!()
        };
        assert_eq!(config.rate_limit, None);
        for (value, up_to) in [("all", None), ("0", Some(0)), ("25", Some(25))] {
            let Ok(Command::Run { config, .. }) = run(&["--announce-joins-up-to", value]) else {
                panic!()
            };
            assert_eq!(config.announce_joins_up_to, up_to);
        }
        let Ok(Command::Run { config, .. }) = run(&[]) else {
            panic!()
        };
        assert_eq!(config.announce_joins_up_to, Some(1000));
    }

    #[test]
    fn bad_flags_are_errors_that_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "--bogus"),
            (&["--addr"], "missing argument"),
            (&["--addr", "nowhere"], "HOST:PORT"),
            (&["--metrics-addr", "nowhere"], "--metrics-addr \"nowhere\""),
            (
                &[
                    "--metrics-addr",
                    "127.0.0.1:65535",
                    "--workers",
                    "2",
                    "--redis",
                    "redis://127.0.0.1:1",
                ],
                "past 65535",
            ),
            (&["--max-message-bytes", "64k"], "whole number"),
            (
                &["--announce-joins-up-to", "some"],
                "number of members or all",
            ),
            (
                &["--max-message-bytes", "1000", "--max-pending-bytes", "7999"],
                "at least 8",
            ),
            (&["--allow-origin", "example.com"], "not an origin"),
            (&["--csp", ""], "--csp"),
            (&["--header-timeout", "0"], "seconds"),
            (&["--rate-limit", "fast"], "BURST,PER_SEC"),
            (&["--max-connections", "0"], "at least 1"),
            (&["--ping-interval", "soon"], "seconds"),
            (&["--ping-timeout", "-1"], "seconds"),
            (&["--replay", "all"], "whole number"),
            (&["--history-lines", "-1"], "whole number"),
            (&["--history-memory", "1G"], "whole number of bytes"),
            (&["--history-ttl", "0"], "7d"),
            (&["--history-ttl", "1w"], "7d"),
            (&["--history-ttl", "d"], "7d"),
            (&["--max-rooms", "0"], "at least 1"),
            (&["--presence-list-up-to", "few"], "whole number"),
            (&["--resume-window", "0"], "seconds"),
            (&["--data-dir", ""], "directory or off"),
            (&["--fsync", "sometimes"], "always, everysec or no"),
            (&["stray"], "stray"),
        ];
        for (args, expected) in cases {
            let err = run(args).unwrap_err();
            assert!(err.0.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(run(&["--addr", "x", "-h"]).unwrap(), Command::Help);
        assert_eq!(run(&["-V"]).unwrap(), Command::Version);
    }

    #[test]
    fn help_lists_every_flag_with_its_default() {
        let text = help();
        for flag in [
            "--addr",
            "--templates",
            "--allow-origin",
            "--max-message-bytes",
            "--max-pending-bytes",
            "--csp",
            "--header-timeout",
            "--keep-alive-timeout",
            "--ping-interval",
            "--ping-timeout",
            "--rate-limit",
            "--max-connections",
            "--max-connections-per-ip",
            "--replay",
            "--history-lines",
            "--history-bytes",
            "--history-memory",
            "--history-ttl",
            "--max-rooms",
            "--presence-list-up-to",
            "--resume-window",
            "--data-dir",
            "--fsync",
        ] {
            assert!(text.contains(flag), "{flag}");
        }
        assert!(text.contains("[default: 127.0.0.1:8000]"));
        assert!(text.contains("[default: 65536]"));
        assert!(text.contains("[default: 1048576]"));
        assert!(text.contains("[default: 20,5]"), "{text}");
        assert!(text.contains("[default: 50]"), "{text}");
        assert!(text.contains("[default: 268435456]"), "{text}");
        assert!(text.contains("[default: 7d]"), "{text}");
        assert!(text.contains("[default: 10000]"), "{text}");
        assert!(text.contains("[default: 120]"), "{text}");
        assert!(text.contains("[default: eddy-data]"), "{text}");
        assert!(text.contains("[default: everysec]"), "{text}");
    }
}
