//! Client-side rate limits: a brand-wide token bucket plus optional per-route-family buckets.
//!
//! Qualtrics limits requests per **brand** (docs/design/qualtrics-api.md §3.3: about 3000 per
//! minute, leaky bucket) and answers 429 beyond that; several tools of one brand share that budget.
//! So the client paces itself below it instead of relying on 429s: every HTTP request (retries
//! included) first takes a token from the brand bucket and from the bucket of its route family,
//! waiting asynchronously (a timer, never a busy loop) when none is left.
//!
//! A bucket configured for `L` requests per minute holds a burst of `B = max(1, L/20)` tokens and
//! refills at `L - B` per minute, so **no 60-second window ever sees more than `L` requests**
//! (`B` at the start plus at most `L - B` refilled) — the guarantee a sliding-window limiter on the
//! server needs. When the server still answers 429 (another tool of the brand used the budget),
//! the bucket stops until `Retry-After` has passed and halves its rate (at most once per pause);
//! every later success gives back 1% of the configured rate (AIMD, as TCP does).
//!
//! Several processes pacing one brand (the nodes of a cluster, docs/scale-out.md) divide it
//! explicitly: [`RateLimiter::set_share`] runs every bucket at `1/n` of its limit, so that `n`
//! processes together stay within it.
//!
//! This module owns pacing only; which calls are retried lives in `client.rs` and `retry.rs`.

use crate::error::Error;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Qualtrics' documented brand limit (requests per minute); the client refuses to be set above it.
pub const QUALTRICS_BRAND_LIMIT_PER_MIN: u32 = 3000;

/// The client's default brand limit: two thirds of Qualtrics' limit, leaving headroom for the
/// brand's other tools.
pub const DEFAULT_BRAND_LIMIT_PER_MIN: u32 = 2000;

/// Longest pause a 429 can impose on the bucket (a larger `Retry-After` is capped).
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// Pause after a 429 that came without `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// How fast requests may go, per minute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Brand-wide limit, 1..=3000 (default 2000).
    pub brand_per_min: u32,
    /// Per-route-family limits. A key is a family — the last plain lowercase path segment of the
    /// route, ids and a trailing `file` skipped: `export-responses` covers start, progress and
    /// download of response exports, `surveys`, `whoami`, `contacts` … — or a method and a family
    /// (`POST export-responses` = export starts only). A call takes a token from every bucket
    /// whose key matches it, and from the brand bucket.
    pub routes: BTreeMap<String, u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            brand_per_min: DEFAULT_BRAND_LIMIT_PER_MIN,
            routes: BTreeMap::new(),
        }
    }
}

impl RateLimits {
    /// A brand limit without route limits.
    pub fn brand(per_min: u32) -> Self {
        RateLimits {
            brand_per_min: per_min,
            routes: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the limit of one route family, e.g. `("export-responses", 100)` or
    /// `("POST export-responses", 20)`.
    pub fn route(mut self, key: impl Into<String>, per_min: u32) -> Self {
        self.routes.insert(key.into(), per_min);
        self
    }

    /// Refuses limits of 0 and limits above Qualtrics' brand limit, and malformed route keys.
    pub fn validate(&self) -> Result<(), Error> {
        check_limit("the brand rate limit", self.brand_per_min)?;
        for (key, per_min) in &self.routes {
            let (method, family) = match key.split_once(' ') {
                Some((m, f)) => (Some(m), f),
                None => (None, key.as_str()),
            };
            let method_ok =
                method.is_none_or(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_uppercase()));
            if !method_ok || !is_family_word(family) {
                return Err(Error::Config(format!(
                    "route limit key '{key}' is not a route family; use a lowercase path word such as 'export-responses', optionally after an upper-case method ('POST export-responses')"
                )));
            }
            check_limit(&format!("the rate limit of route '{key}'"), *per_min)?;
        }
        Ok(())
    }
}

fn check_limit(what: &str, per_min: u32) -> Result<(), Error> {
    if per_min == 0 {
        return Err(Error::Config(format!(
            "{what} is 0 requests per minute, which would block every call; give a limit between 1 and {QUALTRICS_BRAND_LIMIT_PER_MIN}"
        )));
    }
    if per_min > QUALTRICS_BRAND_LIMIT_PER_MIN {
        return Err(Error::Config(format!(
            "{what} of {per_min} requests per minute is above Qualtrics' documented brand limit of {QUALTRICS_BRAND_LIMIT_PER_MIN}/min, so the brand would be throttled; use at most {QUALTRICS_BRAND_LIMIT_PER_MIN} (default {DEFAULT_BRAND_LIMIT_PER_MIN}, which leaves room for the brand's other tools)"
        )));
    }
    Ok(())
}

/// `[a-z-]+`, the shape of a route family.
fn is_family_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

/// The route family of a URL path (the simulator's rule, see `docs/simulator/tls-and-faults.md`):
/// the last segment after `/API/v3` that is a plain lowercase word, skipping ids and a trailing
/// `file`. `/API/v3/surveys/SV_1/export-responses/ES_2/file` → `export-responses`.
pub fn route_family(path: &str) -> &str {
    let rest = match path.find("/API/v3") {
        Some(i) => &path[i + "/API/v3".len()..],
        None => path,
    };
    rest.split('/')
        .rfind(|s| is_family_word(s) && *s != "file")
        .unwrap_or("other")
}

/// One token bucket. Times are passed in so the arithmetic is testable without sleeping.
#[derive(Debug)]
struct Bucket {
    /// Burst size `B`.
    capacity: f64,
    /// Refill at full speed, tokens per second: `(L - B) / 60`.
    full_rate: f64,
    /// Current refill rate (lowered by 429s).
    rate: f64,
    /// Lowest rate a series of 429s can push it to.
    min_rate: f64,
    tokens: f64,
    /// Tokens are accounted up to this instant (in the future while paused).
    last: Instant,
    paused_until: Option<Instant>,
    last_slowdown: Option<Instant>,
}

impl Bucket {
    fn new(per_min: u32, now: Instant) -> Bucket {
        let l = f64::from(per_min.max(1));
        let capacity = (l / 20.0).floor().max(1.0);
        // A limit of 1/min cannot keep the window promise with a burst of 1; it refills 1/min.
        let full_rate = (l - capacity).max(1.0) / 60.0;
        Bucket {
            capacity,
            full_rate,
            rate: full_rate,
            min_rate: (full_rate / 64.0).max(1.0 / 60.0).min(full_rate),
            tokens: capacity,
            last: now,
            paused_until: None,
            last_slowdown: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
            self.last = now;
        }
    }

    /// Takes a token, or says how long to wait before asking again.
    fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(until - now);
            }
            self.paused_until = None;
        }
        self.refill(now);
        // Tolerance for float rounding after many refills.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        let secs = (1.0 - self.tokens) / self.rate;
        Err(Duration::from_secs_f64(secs).max(Duration::from_millis(1)))
    }

    /// The server said 429: pause, drop the saved burst, halve the rate (once per pause window,
    /// so many concurrent 429s of one episode count as one signal).
    fn slow_down(&mut self, now: Instant, pause: Duration) {
        let pause = pause.min(MAX_PAUSE);
        self.refill(now);
        let until = now + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        self.tokens = 0.0;
        self.last = self.last.max(until);
        let window = pause.max(DEFAULT_PAUSE);
        if self.last_slowdown.is_none_or(|t| now >= t + window) {
            self.rate = (self.rate / 2.0).max(self.min_rate);
            self.last_slowdown = Some(now);
        }
    }

    /// A call succeeded: give back 1% of the full rate.
    fn speed_up(&mut self, now: Instant) {
        if self.rate < self.full_rate {
            self.refill(now);
            self.rate = (self.rate + self.full_rate / 100.0).min(self.full_rate);
        }
    }

    fn rate_per_min(&self) -> f64 {
        self.rate * 60.0
    }

    /// Runs at a new limit from now on (a share of the configured one), keeping how far 429s
    /// have slowed it down and no more saved tokens than the new burst.
    fn rescale(&mut self, per_min: u32, now: Instant) {
        self.refill(now);
        let slowed = self.rate / self.full_rate;
        let fresh = Bucket::new(per_min, now);
        self.capacity = fresh.capacity;
        self.full_rate = fresh.full_rate;
        self.min_rate = fresh.min_rate;
        self.rate = (fresh.full_rate * slowed).clamp(fresh.min_rate, fresh.full_rate);
        self.tokens = self.tokens.min(self.capacity);
    }
}

/// `per_min` divided among `share` processes: at least 1 per minute each.
fn share_of(per_min: u32, share: u32) -> u32 {
    (per_min / share.max(1)).max(1)
}

/// Counters of a [`RateLimiter`], for logs and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateLimiterStats {
    /// Requests that got a token.
    pub acquired: u64,
    /// Requests that had to wait for a token.
    pub waited: u64,
    /// 429 answers reported by clients.
    pub throttled: u64,
    /// The brand bucket's current refill rate, requests per minute (lower after 429s).
    pub brand_rate_per_min: f64,
}

/// The buckets of one brand. Shared by every clone of a [`crate::Client`]; give the same
/// `Arc<RateLimiter>` to several clients of one brand (e.g. two connections of one account) with
/// [`crate::ClientBuilder::rate_limiter`] so that they share the budget too.
pub struct RateLimiter {
    limits: RateLimits,
    brand: Mutex<Bucket>,
    routes: BTreeMap<String, Mutex<Bucket>>,
    acquired: AtomicU64,
    waited: AtomicU64,
    throttled: AtomicU64,
    /// How many processes the limits are divided among ([`RateLimiter::set_share`]).
    share: AtomicU32,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish()
    }
}

impl RateLimiter {
    /// Validates the limits (see [`RateLimits::validate`]) and builds full buckets.
    pub fn new(limits: RateLimits) -> Result<Arc<RateLimiter>, Error> {
        limits.validate()?;
        let now = Instant::now();
        let routes = limits
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), Mutex::new(Bucket::new(*v, now))))
            .collect();
        Ok(Arc::new(RateLimiter {
            brand: Mutex::new(Bucket::new(limits.brand_per_min, now)),
            routes,
            limits,
            acquired: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            share: AtomicU32::new(1),
        }))
    }

    /// Divides every limit among `processes` (at least 1) that pace the same brand, each
    /// running this at `limit / processes` (at least 1 per minute), so that together they stay
    /// within it. Takes effect at once; 1 gives back the whole limit.
    pub fn set_share(&self, processes: u32) {
        let processes = processes.max(1);
        if self.share.swap(processes, Ordering::Relaxed) == processes {
            return;
        }
        let now = Instant::now();
        self.brand
            .lock()
            .rescale(share_of(self.limits.brand_per_min, processes), now);
        for (key, bucket) in &self.routes {
            let per_min = self.limits.routes.get(key).copied().unwrap_or(1);
            bucket.lock().rescale(share_of(per_min, processes), now);
        }
        tracing::info!(
            processes,
            brand_per_min = share_of(self.limits.brand_per_min, processes),
            "the brand's rate limit is divided among the servers sharing the state store"
        );
    }

    /// How many processes the limits are divided among.
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    /// The configured limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// The route buckets that apply to a call, most specific first.
    fn route_buckets<'a>(&'a self, method: &str, path: &str) -> Vec<&'a Mutex<Bucket>> {
        if self.routes.is_empty() {
            return Vec::new();
        }
        let family = route_family(path);
        let keyed = format!("{method} {family}");
        [keyed.as_str(), family]
            .into_iter()
            .filter_map(|k| self.routes.get(k))
            .collect()
    }

    /// Waits until the call may be sent: a token from its route buckets, then from the brand
    /// bucket. Returns how long it waited.
    pub async fn acquire(&self, method: &str, path: &str) -> Duration {
        let mut waited = Duration::ZERO;
        for bucket in self.route_buckets(method, path) {
            waited += take(bucket).await;
        }
        waited += take(&self.brand).await;
        self.acquired.fetch_add(1, Ordering::Relaxed);
        if !waited.is_zero() {
            self.waited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                waited_ms = waited.as_millis() as u64,
                family = route_family(path),
                "rate limit: waited for a token"
            );
        }
        waited
    }

    /// A call got 429: pause the brand bucket (and the call's route buckets) for `retry_after`
    /// (1 s when absent) and lower their rate.
    pub fn on_throttled(&self, method: &str, path: &str, retry_after: Option<Duration>) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let pause = retry_after
            .unwrap_or(DEFAULT_PAUSE)
            .max(Duration::from_millis(50));
        let now = Instant::now();
        for bucket in self.route_buckets(method, path) {
            bucket.lock().slow_down(now, pause);
        }
        let mut brand = self.brand.lock();
        brand.slow_down(now, pause);
        tracing::info!(
            pause_ms = pause.as_millis() as u64,
            rate_per_min = brand.rate_per_min() as u64,
            "Qualtrics answered 429; slowing down"
        );
    }

    /// A call succeeded: the rate recovers a little.
    pub fn on_success(&self, method: &str, path: &str) {
        let now = Instant::now();
        for bucket in self.route_buckets(method, path) {
            bucket.lock().speed_up(now);
        }
        self.brand.lock().speed_up(now);
    }

    /// The counters so far.
    pub fn stats(&self) -> RateLimiterStats {
        RateLimiterStats {
            acquired: self.acquired.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            brand_rate_per_min: self.brand.lock().rate_per_min(),
        }
    }
}

/// Takes one token, sleeping (never spinning) until one is there.
async fn take(bucket: &Mutex<Bucket>) -> Duration {
    let mut waited = Duration::ZERO;
    loop {
        let wait = match bucket.lock().try_take(Instant::now()) {
            Ok(()) => return waited,
            Err(d) => d,
        };
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Drives a bucket with greedy callers over simulated time; returns the send instants.
    fn greedy(bucket: &mut Bucket, start: Instant, span: Duration) -> Vec<Instant> {
        let mut now = start;
        let mut sent = Vec::new();
        while now < start + span {
            match bucket.try_take(now) {
                Ok(()) => sent.push(now),
                Err(d) => now += d,
            }
        }
        sent
    }

    fn max_in_window(sent: &[Instant], window: Duration) -> usize {
        let mut q = VecDeque::new();
        let mut best = 0;
        for t in sent {
            q.push_back(*t);
            while let Some(f) = q.front() {
                if *t - *f >= window {
                    q.pop_front();
                } else {
                    break;
                }
            }
            best = best.max(q.len());
        }
        best
    }

    #[test]
    fn a_share_runs_each_process_at_its_part_and_together_within_the_limit() {
        let limiter = RateLimiter::new(RateLimits::brand(2000).route("export-responses", 90))
            .expect("valid limits");
        let full = limiter.stats().brand_rate_per_min;
        limiter.set_share(3);
        assert_eq!(limiter.share(), 3);
        let part = limiter.stats().brand_rate_per_min;
        // 666/min each, of which a burst of 33: three processes refill at 3 × 633/min.
        assert!((part - 633.0).abs() < 1.0, "{part}");
        assert!(3.0 * part < full, "{part} × 3 against {full}");
        // Three processes driven greedily for five minutes never exceed 2000 in a minute.
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..3 {
            let mut b = Bucket::new(share_of(2000, 3), start);
            sent.extend(greedy(&mut b, start, Duration::from_secs(300)));
        }
        sent.sort();
        assert!(max_in_window(&sent, Duration::from_secs(60)) <= 2000);
        // A route limit is divided too, to no less than 1 a minute.
        assert_eq!(share_of(90, 3), 30);
        assert_eq!(share_of(2, 3), 1);
        // Back to one process: the whole limit again.
        limiter.set_share(1);
        assert!((limiter.stats().brand_rate_per_min - full).abs() < 1e-6);
    }

    #[test]
    fn a_share_keeps_how_far_429s_slowed_the_bucket() {
        let now = Instant::now();
        let mut b = Bucket::new(2000, now);
        b.slow_down(now, Duration::from_secs(1));
        let slowed = b.rate / b.full_rate;
        assert!((slowed - 0.5).abs() < 1e-9);
        b.rescale(1000, now + Duration::from_secs(2));
        assert!((b.rate / b.full_rate - 0.5).abs() < 1e-9);
        assert!(b.tokens <= b.capacity);
    }

    #[test]
    fn no_minute_exceeds_the_limit() {
        for limit in [1u32, 7, 20, 100, 120, 2000, 3000] {
            let start = Instant::now();
            let mut b = Bucket::new(limit, start);
            let sent = greedy(&mut b, start, Duration::from_secs(300));
            let max = max_in_window(&sent, Duration::from_secs(60));
            let allowed = if limit == 1 { 2 } else { limit as usize };
            assert!(max <= allowed, "limit {limit}: {max} in a minute");
            // And the bucket is not needlessly slow: at least 80% of the limit is used.
            assert!(
                sent.len() as f64 >= 5.0 * f64::from(limit) * 0.8,
                "limit {limit}: only {} in 5 minutes",
                sent.len()
            );
        }
    }

    #[test]
    fn burst_is_a_twentieth() {
        let now = Instant::now();
        let mut b = Bucket::new(2000, now);
        let burst = (0..1000).take_while(|_| b.try_take(now).is_ok()).count();
        assert_eq!(burst, 100);
        let wait = b.try_take(now).unwrap_err();
        // 1900 per minute → one token every ~31.6 ms.
        assert!(
            wait > Duration::from_millis(30) && wait < Duration::from_millis(33),
            "{wait:?}"
        );
    }

    #[test]
    fn a_429_pauses_then_halves_and_successes_recover() {
        let t0 = Instant::now();
        let mut b = Bucket::new(600, t0);
        let full = b.rate;
        b.slow_down(t0, Duration::from_secs(2));
        assert_eq!(
            b.try_take(t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(1))
        );
        assert!((b.rate - full / 2.0).abs() < 1e-9);
        // Concurrent 429s of the same episode do not halve again.
        b.slow_down(t0 + Duration::from_millis(10), Duration::from_secs(2));
        assert!((b.rate - full / 2.0).abs() < 1e-9);
        // After the pause no burst is left: the first token comes at the lowered rate.
        let after = t0 + Duration::from_millis(2010);
        let wait = b.try_take(after).unwrap_err();
        assert!(wait > Duration::from_millis(150), "{wait:?}");
        // A later episode halves again, but never below the floor.
        for i in 0..40 {
            b.slow_down(t0 + Duration::from_secs(10 + 3 * i), Duration::from_secs(1));
        }
        assert!((b.rate - b.min_rate).abs() < 1e-12);
        for _ in 0..200 {
            b.speed_up(t0 + Duration::from_secs(1000));
        }
        assert!((b.rate - full).abs() < 1e-12);
    }

    #[test]
    fn families_and_keys() {
        assert_eq!(
            route_family("/API/v3/surveys/SV_1/export-responses/ES_2/file"),
            "export-responses"
        );
        assert_eq!(
            route_family("/API/v3/surveys/SV_1/export-responses"),
            "export-responses"
        );
        assert_eq!(route_family("/API/v3/surveys"), "surveys");
        assert_eq!(route_family("/API/v3/whoami"), "whoami");
        assert_eq!(
            route_family("/API/v3/directories/POOL_1/contacts"),
            "contacts"
        );
        assert_eq!(route_family("/API/v3/"), "other");
        assert!(RateLimits::default().validate().is_ok());
        assert!(
            RateLimits::brand(100)
                .route("POST export-responses", 10)
                .route("export-responses", 50)
                .validate()
                .is_ok()
        );
        for bad in [
            RateLimits::brand(0),
            RateLimits::brand(3001),
            RateLimits::brand(10).route("Export", 1),
            RateLimits::brand(10).route("post export-responses", 1),
            RateLimits::brand(10).route("surveys", 0),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains("use") || err.contains("give"), "{err}");
        }
        let err = RateLimits::brand(5000).validate().unwrap_err().to_string();
        assert!(err.contains("3000"), "{err}");
    }

    #[tokio::test]
    async fn route_buckets_apply_by_method_and_family() {
        let rl = RateLimiter::new(
            RateLimits::brand(3000).route("POST export-responses", 20), // burst 1
        )
        .unwrap();
        let p = "/API/v3/surveys/SV_1/export-responses";
        assert_eq!(rl.acquire("POST", p).await, Duration::ZERO);
        // The progress polls (GET) are not limited by the POST bucket.
        for _ in 0..5 {
            assert_eq!(
                rl.acquire("GET", &format!("{p}/ES_1")).await,
                Duration::ZERO
            );
        }
        let b = rl.route_buckets("POST", p);
        assert_eq!(b.len(), 1);
        assert!(
            b[0].lock().try_take(Instant::now()).is_err(),
            "POST burst used"
        );
        assert_eq!(rl.stats().acquired, 6);
    }
}
