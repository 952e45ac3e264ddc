//! The log line: `[2026-11-30T15:40:00Z INFO  eddy::server] message` (and
//! `worker N` after the level in a worker of `--workers`), written here so
//! that env_logger needs none of its optional features (colour, `humantime`):
//! the time is formatted from the clock with the civil-calendar arithmetic
//! below, in UTC, to the second.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Sets up the logger from `RUST_LOG` (default `info`); `worker`: the
/// number each line names, in a worker process.
pub fn init(worker: Option<String>) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |out, record| {
            let worker = worker
                .as_deref()
                .map(|n| format!("worker {n} "))
                .unwrap_or_default();
            writeln!(
                out,
                "[{} {:<5} {worker}{}] {}",
                rfc3339(SystemTime::now()),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}

/// `time` as RFC 3339 in UTC, to the second: `2026-11-30T15:40:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days since the Unix epoch, which are never negative here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // day of the era, 0..146,096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..365
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc_3339_in_utc() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z"); // a leap day
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_796_052_000), "2026-11-30T15:20:00Z"); // as `date -u -d @1796052000` says
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
