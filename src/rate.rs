//! A token bucket per client, for the chat's flood control. Pure: the
//! caller passes the time, so the arithmetic is tested without waiting.
//!
//! A client may send `burst` lines at once, then `per_second` lines a
//! second. A line over the limit is refused (not broadcast). Refused lines
//! also add to a *debt* that drains at the allowed rate: a client that goes
//! on sending far above the limit (debt over [`FLOOD_DEBT_BURSTS`] bursts,
//! reached within seconds at ten times the rate) is judged to be flooding,
//! while one that only bumps into the limit now and then never is.

use std::time::Instant;

/// Refused lines, in bursts, that a client may owe before it is judged to
/// be flooding and disconnected.
pub const FLOOD_DEBT_BURSTS: f64 = 10.0;

/// The limit: `burst` lines at once, `per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Lines that may be sent back to back.
    pub burst: u32,
    /// Lines a second, in the long run.
    pub per_second: f64,
}

impl Default for RateLimit {
    /// 20 at once, 5 a second: far above typing, far below a script.
    fn default() -> Self {
        RateLimit {
            burst: 20,
            per_second: 5.0,
        }
    }
}

/// What the bucket says about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: deliver it.
    Allowed,
    /// Over the limit: drop it, tell the sender.
    Refused,
    /// Over the limit, and far over it for a while: disconnect.
    Flooding,
}

/// One client's bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Lines that may be sent now (fractions accrue over time).
    tokens: f64,
    /// Refused lines not yet forgiven.
    debt: f64,
    /// When `tokens` and `debt` were last brought up to date.
    updated: Instant,
}

impl Bucket {
    /// A full bucket. (The limit is not kept in it but passed to
    /// [`Bucket::take`]: it is the same for everyone, and every idle
    /// connection has a bucket.)
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(limit.burst),
            debt: 0.0,
            updated: now,
        }
    }

    /// Judges one line sent at `now`, under `limit` (the one the bucket
    /// was made with).
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        let earned = elapsed * limit.per_second;
        self.tokens = (self.tokens + earned).min(f64::from(limit.burst));
        self.debt = (self.debt - earned).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Allowed
        } else {
            self.debt += 1.0;
            if self.debt > FLOOD_DEBT_BURSTS * f64::from(limit.burst) {
                Verdict::Flooding
            } else {
                Verdict::Refused
            }
        }
    }
}

/// Parses `BURST,PER_SEC` (e.g. `20,5`).
pub fn parse(text: &str) -> Result<RateLimit, String> {
    let bad = || format!("{text:?} is not BURST,PER_SEC (e.g. 20,5) with both above 0");
    let (burst, rate) = text.split_once(',').ok_or_else(bad)?;
    let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
    let per_second: f64 = rate.trim().parse().map_err(|_| bad())?;
    if burst == 0 || !(per_second > 0.0 && per_second.is_finite()) {
        return Err(bad());
    }
    Ok(RateLimit { burst, per_second })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMIT: RateLimit = RateLimit {
        burst: 3,
        per_second: 2.0,
    };

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let start = Instant::now();
        let mut bucket = Bucket::new(LIMIT, start);
        let verdicts: Vec<_> = (0..4).map(|_| bucket.take(LIMIT, start)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Allowed,
                Verdict::Allowed,
                Verdict::Allowed,
                Verdict::Refused
            ]
        );
        // Half a second earns one line at 2 a second.
        assert_eq!(
            bucket.take(LIMIT, start + Duration::from_millis(500)),
            Verdict::Allowed
        );
        assert_eq!(
            bucket.take(LIMIT, start + Duration::from_millis(500)),
            Verdict::Refused
        );
        // A long pause refills the burst, not more.
        let later = start + Duration::from_secs(60);
        let after_pause: Vec<_> = (0..4).map(|_| bucket.take(LIMIT, later)).collect();
        assert_eq!(
            after_pause,
            [
                Verdict::Allowed,
                Verdict::Allowed,
                Verdict::Allowed,
                Verdict::Refused
            ]
        );
    }

    #[test]
    fn ten_times_the_rate_is_flooding_and_bumping_into_it_is_not() {
        let start = Instant::now();
        // Ten times the rate: 20 lines a second for 10 seconds.
        let mut flooder = Bucket::new(LIMIT, start);
        let flooded_at = (0..200).position(|i| {
            flooder.take(LIMIT, start + Duration::from_millis(50 * i)) == Verdict::Flooding
        });
        assert!(
            flooded_at.is_some_and(|i| i < 100),
            "flooding judged within 5 s: {flooded_at:?}"
        );
        // Twice the rate for a minute: refused lines, never flooding.
        let mut eager = Bucket::new(LIMIT, start);
        for i in 0..240 {
            assert_ne!(
                eager.take(LIMIT, start + Duration::from_millis(250 * i)),
                Verdict::Flooding
            );
        }
    }

    #[test]
    fn limits_parse_or_say_why_not() {
        assert_eq!(parse("20,5").unwrap(), RateLimit::default());
        assert_eq!(
            parse(" 3 , 0.5 ").unwrap(),
            RateLimit {
                burst: 3,
                per_second: 0.5
            }
        );
        for bad in ["20", "0,5", "20,0", "20,-1", "a,b", "20,inf"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
