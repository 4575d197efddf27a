//! Simulated time.
//!
//! The simulator's "now" is a fixed start instant plus the real time elapsed since start plus an
//! offset that tests move forward through the admin API (`POST /_sim/clock/advance`). Seeded data
//! is dated relative to the start instant, so the same seed gives the same dates on every run.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

pub(crate) const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug)]
/// The simulated wall clock: starts at a configured instant, runs with real time, and tests can jump it forward.
pub struct SimClock {
    start_ms: i64,
    started: Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    /// A clock that reads `start_ms` (epoch milliseconds) now.
    pub fn new(start_ms: i64) -> Self {
        SimClock {
            start_ms,
            started: Instant::now(),
            offset_ms: AtomicI64::new(0),
        }
    }

    /// The instant the simulated account was "generated at"; seeded dates lie before it.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// Simulated "now", epoch milliseconds: the start plus real time elapsed plus every [`advance`](Self::advance).
    pub fn now_ms(&self) -> i64 {
        self.start_ms
            + self.started.elapsed().as_millis() as i64
            + self.offset_ms.load(Ordering::SeqCst)
    }

    /// Moves simulated time forward by `ms` milliseconds (negative moves it back), e.g. to expire tokens without waiting.
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

fn dt(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// `2025-03-25T17:21:25Z`
pub fn iso(ms: i64) -> String {
    dt(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2025-03-25T17:21:25.942Z`
pub fn iso_millis(ms: i64) -> String {
    dt(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `2025-03-25 17:21:25` (transactions, links, webhooks, CSV exports).
pub fn sql(ms: i64) -> String {
    dt(ms).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Parses an ISO-8601 date-time with offset (`Z` or `+02:00`) into epoch milliseconds.
pub fn parse_iso(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Parses `YYYY-MM-DD HH:MM:SS` (UTC) into epoch milliseconds.
pub fn parse_sql(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|d| d.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        let ms = 1_742_923_285_942;
        assert_eq!(iso(ms), "2025-03-25T17:21:25Z");
        assert_eq!(iso_millis(ms), "2025-03-25T17:21:25.942Z");
        assert_eq!(sql(ms), "2025-03-25 17:21:25");
        assert_eq!(parse_iso("2025-03-25T17:21:25.942Z"), Some(ms));
        assert_eq!(parse_sql("2025-03-25 17:21:25"), Some(ms - 942));
        assert_eq!(parse_iso("2025-03-25T19:21:25.942+02:00"), Some(ms));
        assert_eq!(parse_iso("yesterday"), None);
    }

    #[test]
    fn advance_moves_now() {
        let c = SimClock::new(1_000_000);
        let before = c.now_ms();
        c.advance(7 * MS_PER_DAY);
        assert!(c.now_ms() >= before + 7 * MS_PER_DAY);
    }
}
