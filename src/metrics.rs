//! What an operator can see of a running server: counters, gauges and
//! histograms, written out in Prometheus's text exposition format (version
//! 0.0.4) for the metrics listener (`--metrics-addr`, see `server.rs`).
//!
//! Everything here is plain numbers on the loop's one thread: a count is a
//! `u64` increment where the event happens, with no atomics and no locks in
//! the I/O path. What others own is not copied into a registry: each part
//! writes its own figures when the server is scraped (the server its
//! connections, the loop its turns, a handler its lines, a history its
//! store), through [`Exposition`]. The format is small enough to write by
//! hand; the tests read it back with Prometheus's own Python parser.
//!
//! Names follow Prometheus's conventions: `eddy_` first, base units
//! (`_seconds`, `_bytes`), `_total` on counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the server counts itself (the loop's and the handlers' figures
/// are theirs).
#[derive(Debug, Default, Clone)]
pub struct ServerCounts {
    /// Connections accepted on the chat's port.
    pub accepted: u64,
    /// Connections answered 503 and closed: over `--max-connections` or
    /// `--max-connections-per-ip`, or the server shutting down.
    pub refused: u64,
    /// WebSocket handshakes admitted.
    pub websockets_opened: u64,
    /// WebSocket handshakes a handler refused (a full server, a bad room).
    pub websockets_refused: u64,
    /// Messages the handlers sent, counted once per recipient queue.
    pub deliveries: u64,
    /// Lines a member did not get live because its queue was over the cap:
    /// history feeds them later.
    pub fell_behind: u64,
    /// Bytes read from clients (request heads and frames).
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Clients cut off for not reading (over twice the output cap).
    pub cut_off: u64,
    /// Lines fed from history to members catching up.
    pub fed_from_history: u64,
    /// Gaps met while feeding: lines no longer in history.
    pub gaps: u64,
    /// Members that caught up and went live again.
    pub caught_up: u64,
}

/// A histogram with fixed upper bounds: counts per bucket, their sum and
/// their number, as Prometheus wants them.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds of the buckets, increasing; `+Inf` is implied.
    bounds: &'static [f64],
    /// Observations in each bucket (not cumulative); one more than
    /// `bounds`, for those above the last bound.
    counts: Vec<u64>,
    /// The sum of all observations.
    sum: f64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds (increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Counts one duration, in seconds.
    pub fn observe_duration(&mut self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A [`Histogram`] another thread observes into (the disk helper's syncs):
/// atomic counts, read by the loop when scraped. Relaxed: each count is
/// exact; a scrape may see one observation's bucket before its sum.
#[derive(Debug)]
pub struct SharedHistogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// The sum, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl SharedHistogram {
    /// An empty histogram of durations with these bounds, in seconds.
    pub fn new(bounds: &'static [f64]) -> Self {
        SharedHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn observe_duration(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// What it holds now, as a plain histogram.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Bucket bounds for durations from 50 µs to 2.5 s: a loop turn, a disk
/// sync, a Redis round trip.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Bucket bounds for the events one poll returns (at most 1,024).
pub const EVENTS_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The text a scrape gets, built metric by metric.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Exposition::default()
    }

    /// A counter: a count that only goes up while the process lives.
    /// `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        self.header(name, help, "counter");
        let _ = writeln!(self.text, "{name} {value}");
    }

    /// A counter with one label, a sample per value of it.
    pub fn counter_by(&mut self, name: &str, help: &str, label: &str, samples: &[(&str, u64)]) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        self.header(name, help, "counter");
        for (value, count) in samples {
            let _ = writeln!(self.text, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }

    /// A gauge: a value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.text, "{name} {value}");
    }

    /// A gauge with one label, a sample per value of it.
    pub fn gauge_by(&mut self, name: &str, help: &str, label: &str, samples: &[(&str, f64)]) {
        self.header(name, help, "gauge");
        for (value, gauge) in samples {
            let _ = writeln!(self.text, "{name}{{{label}=\"{value}\"}} {gauge}");
        }
    }

    /// A histogram: cumulative buckets up to `+Inf`, then sum and count.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, help, "histogram");
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            let _ = writeln!(self.text, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = histogram.count();
        let _ = writeln!(self.text, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(self.text, "{name}_sum {}", histogram.sum);
        let _ = writeln!(self.text, "{name}_count {total}");
    }

    /// The text, ready to send.
    pub fn finish(self) -> String {
        self.text
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // HELP escapes backslashes and newlines; ours have none, but a
        // wrong one would break the whole scrape.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_puts_each_value_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 4.0, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 1, 1, 1], "le is inclusive; 9 is over the top");
        assert_eq!(h.count(), 5);
        assert!((h.sum - 16.0).abs() < 1e-9);
    }

    #[test]
    fn a_shared_histogram_reads_back_as_observed_from_another_thread() {
        let shared = std::sync::Arc::new(SharedHistogram::new(&[0.001, 0.1]));
        let other = std::sync::Arc::clone(&shared);
        std::thread::spawn(move || {
            other.observe_duration(Duration::from_micros(500));
            other.observe_duration(Duration::from_millis(50));
            other.observe_duration(Duration::from_secs(1));
        })
        .join()
        .unwrap();
        let h = shared.snapshot();
        assert_eq!(h.counts, [1, 1, 1]);
        assert!((h.sum - 1.0505).abs() < 1e-9);
    }

    #[test]
    fn the_exposition_has_help_type_cumulative_buckets_sum_and_count() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        h.observe(0.000_5);
        h.observe(0.005);
        h.observe(0.5);
        let mut out = Exposition::new();
        out.counter("eddy_x_total", "Xs.", 7);
        out.gauge_by("eddy_y", "Ys.", "state", &[("a", 1.0), ("b", 2.5)]);
        out.histogram("eddy_z_seconds", "Zs.", &h);
        assert_eq!(
            out.finish(),
            "# HELP eddy_x_total Xs.\n# TYPE eddy_x_total counter\neddy_x_total 7\n\
             # HELP eddy_y Ys.\n# TYPE eddy_y gauge\neddy_y{state=\"a\"} 1\neddy_y{state=\"b\"} 2.5\n\
             # HELP eddy_z_seconds Zs.\n# TYPE eddy_z_seconds histogram\n\
             eddy_z_seconds_bucket{le=\"0.001\"} 1\neddy_z_seconds_bucket{le=\"0.01\"} 2\n\
             eddy_z_seconds_bucket{le=\"+Inf\"} 3\neddy_z_seconds_sum 0.5055\n\
             eddy_z_seconds_count 3\n"
        );
    }
}
