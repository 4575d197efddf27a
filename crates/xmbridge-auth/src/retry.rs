//! The HTTP rules every client (Qualtrics, Salesforce, ServiceNow, the token calls here) shares,
//! kept in one place so they cannot drift apart: which statuses are worth retrying
//! ([`StatusClass`]), how long to wait ([`RetryPolicy`], exponential backoff with [`Jitter`],
//! a server's `Retry-After` read by [`parse_retry_after`]) and the one refresh a 401 earns
//! ([`RefreshOnce`]). It owns no HTTP client and no loop: each client keeps its own conversation
//! (rate limiter, envelope, pagination) and asks these rules at each decision.

use crate::{AuthHeader, TokenSource};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often and how patiently transient failures are retried. Counts *retries* (after the
/// first attempt), never attempts.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt for 5xx answers and dropped connections (0 disables them).
    pub max_retries: u32,
    /// Retries after 429 answers, counted separately: a 429 means the request was not processed
    /// and the client slows down, so a busy brand gets more patience than a failing server.
    /// (Token calls count 429s on [`RetryPolicy::max_retries`].)
    pub max_throttled_retries: u32,
    /// Delay before the first retry; doubles every retry.
    pub base_delay: Duration,
    /// Upper bound of one computed delay.
    pub max_delay: Duration,
    /// Upper bound of a server-sent `Retry-After` we are willing to wait.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// The API-call policy: 5 retries (30 for 429s), 0.5 s doubling up to 30 s, `Retry-After`
    /// honoured up to 2 min.
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

    /// The token-endpoint policy: token calls are small and a login waits on them, so 3 retries
    /// of 0.5 s doubling up to 8 s, `Retry-After` honoured up to 8 s.
    pub fn token_endpoint() -> Self {
        RetryPolicy {
            max_retries: 3,
            max_throttled_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(8),
        }
    }

    /// The exponential delay before retry number `retry` (0-based), without jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The delay before retry number `retry` (0-based): the server's `Retry-After` when it sent
    /// one (capped), else the exponential backoff with "equal jitter" (between half and all of
    /// it), so many clients that failed together do not come back together.
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

/// `Retry-After` as delta-seconds, whole or fractional (the forms rate limiters send). HTTP
/// dates are ignored (no client ever honoured them) and the normal backoff applies.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// The `Retry-After` header of an answer, if it holds delta-seconds.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// What an HTTP status means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusClass {
    /// 1xx–3xx: an answer to read.
    Success,
    /// 401: the credentials were refused; worth one refresh ([`RefreshOnce`]).
    Unauthorized,
    /// 429: not processed; slow down and retry after `Retry-After`.
    Throttled,
    /// 500, 502, 503, 504: the server had trouble; an idempotent call may be retried.
    Transient,
    /// Any other 5xx (501, 505 …): the server's fault, but retrying will not help.
    ServerError,
    /// Any other 4xx: the request was refused; retrying will not help.
    Refused,
}

impl StatusClass {
    /// The class of `status`.
    pub fn of(status: u16) -> StatusClass {
        match status {
            401 => StatusClass::Unauthorized,
            429 => StatusClass::Throttled,
            500 | 502 | 503 | 504 => StatusClass::Transient,
            s if s >= 500 => StatusClass::ServerError,
            s if s >= 400 => StatusClass::Refused,
            _ => StatusClass::Success,
        }
    }

    /// Whether the same call may succeed when tried again later (429 and transient 5xx).
    pub fn is_transient(self) -> bool {
        matches!(self, StatusClass::Throttled | StatusClass::Transient)
    }

    /// Whether the server (not the request) is at fault: any 5xx.
    pub fn is_server_error(self) -> bool {
        matches!(self, StatusClass::Transient | StatusClass::ServerError)
    }
}

/// What a caller does about a client's failure, the same list for every client
/// (`kind()` of the Qualtrics, Salesforce and ServiceNow errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Re-authorize the account; retrying cannot help.
    Reauthorize,
    /// The settings (URLs, client id/secret, flow, scopes) need fixing.
    Configuration,
    /// Slow down: a 429 or a used-up allowance; retry later.
    RateLimited,
    /// Try again later (network trouble, 5xx, a locked row).
    Transient,
    /// The request itself was refused; retrying the same request cannot help.
    Refused,
    /// The provider answered something the client does not understand.
    Protocol,
    /// Something on this machine failed (a temporary file, the disk).
    Local,
}

/// 429, 500, 502, 503 and 504 are worth retrying; other codes are not.
pub fn is_transient_status(status: u16) -> bool {
    StatusClass::of(status).is_transient()
}

/// The one refresh a 401 earns per call: the first 401 with a source that can refresh forgets
/// the refused token ([`TokenSource::invalidate_stale`]) and says "send again"; a second 401 (or
/// a source that cannot refresh) is final.
#[derive(Debug, Default)]
pub struct RefreshOnce {
    used: bool,
}

impl RefreshOnce {
    /// A call that has not been refused yet.
    pub fn new() -> Self {
        RefreshOnce::default()
    }

    /// The call was answered 401 after sending `sent`: true when it should be sent again with a
    /// fresh header from `source`.
    pub fn retry_after_401(&mut self, source: &dyn TokenSource, sent: &AuthHeader) -> bool {
        if self.used || !source.can_refresh() {
            return false;
        }
        self.used = true;
        source.invalidate_stale(sent);
        true
    }

    /// Whether the refresh was spent (a later 401 came with a freshly fetched token).
    pub fn refreshed(&self) -> bool {
        self.used
    }
}

/// A tiny xorshift generator for jitter; seedable so tests are reproducible. Not for secrets
/// (those come from [`crate::random_bytes`]).
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
    fn token_endpoint_backoff_doubles_and_caps() {
        // Formerly the token calls' own policy (counted attempts); same figures as retries.
        let r = RetryPolicy {
            max_retries: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            max_retry_after: Duration::from_millis(350),
            ..RetryPolicy::token_endpoint()
        };
        assert_eq!(r.backoff(0), Duration::from_millis(100));
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(2), Duration::from_millis(350));
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(9)), &Jitter::seeded(1)),
            Duration::from_millis(350)
        );
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
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "0.25".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(200), StatusClass::Success);
        assert_eq!(StatusClass::of(401), StatusClass::Unauthorized);
        assert!(StatusClass::of(429).is_transient());
        assert!(StatusClass::of(503).is_transient() && StatusClass::of(503).is_server_error());
        assert!(!StatusClass::of(501).is_transient() && StatusClass::of(501).is_server_error());
        assert_eq!(StatusClass::of(404), StatusClass::Refused);
        assert!(is_transient_status(429) && is_transient_status(503) && !is_transient_status(501));
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
