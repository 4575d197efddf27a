//! Retry policy: exponential backoff with jitter, honouring `Retry-After`
//! (docs/design/qualtrics-api.md §3.3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often and how patiently transient failures are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt for 5xx answers and dropped connections (0 disables them).
    pub max_retries: u32,
    /// Retries after 429 answers, counted separately: a 429 means the request was not processed
    /// and the client slows down, so a busy brand gets more patience than a failing server.
    pub max_throttled_retries: u32,
    /// Delay before the first retry; doubles every retry.
    pub base_delay: Duration,
    /// Upper bound of one computed delay.
    pub max_delay: Duration,
    /// Upper bound of a server-sent `Retry-After` we are willing to wait.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            max_throttled_retries: 30,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries at all (429s included).
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            max_throttled_retries: 0,
            ..Default::default()
        }
    }

    /// The exponential delay before retry number `retry` (0-based), without jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The delay before retry number `retry`: the server's `Retry-After` when it sent one (capped),
    /// else the exponential backoff with "equal jitter" (between half and all of it), so many
    /// clients that failed together do not come back together.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, jitter: &Jitter) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let full = self.backoff(retry);
        let half = full / 2;
        let extra_ms = (full - half).as_millis() as u64;
        let extra = if extra_ms == 0 {
            0
        } else {
            jitter.next() % (extra_ms + 1)
        };
        half + Duration::from_millis(extra)
    }
}

/// `Retry-After` as delta-seconds (the form rate limiters send). HTTP dates are ignored and the
/// normal backoff applies.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some servers send fractional seconds.
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// A tiny xorshift generator for jitter; seedable so tests are reproducible.
#[derive(Debug)]
pub struct Jitter(AtomicU64);

impl Jitter {
    /// A reproducible sequence.
    pub fn seeded(seed: u64) -> Self {
        Jitter(AtomicU64::new(seed | 1))
    }

    /// A sequence seeded from the clock and the process id.
    pub fn from_time() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Self::seeded(nanos ^ (std::process::id() as u64).rotate_left(32))
    }

    /// The next pseudo-random number.
    pub fn next(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
            ..Default::default()
        };
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.backoff(4), Duration::from_secs(1));
        assert_eq!(p.backoff(60), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let p = RetryPolicy::default();
        let j = Jitter::seeded(42);
        let mut seen = std::collections::BTreeSet::new();
        for retry in 0..6 {
            for _ in 0..50 {
                let d = p.delay(retry, None, &j);
                let full = p.backoff(retry);
                assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
                seen.insert(d);
            }
        }
        assert!(seen.len() > 20, "jitter varies the delays");
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = RetryPolicy::default();
        let j = Jitter::seeded(1);
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3)), &j),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(9999)), &j),
            p.max_retry_after
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn seeded_jitter_is_reproducible() {
        let a = Jitter::seeded(9);
        let b = Jitter::seeded(9);
        for _ in 0..10 {
            assert_eq!(a.next(), b.next());
        }
    }
}
