//! Fault injection and rate limits for the simulated brand.
//!
//! Owns the live [`FaultSettings`] (rate limits, injected 5xx, one-shot failures of the next
//! matching calls, slow answers, cut-off bodies, export failures, token revocation), the call counters behind `GET /_sim/stats`, the middleware
//! [`layer`] that `router()` puts around `/API/v3` and `/oauth2`, and the admin routes
//! `/_sim/faults` and `/_sim/stats`. It must not touch other modules' state except one thing the
//! `revoke_tokens_after` switch needs: it empties `sim.tokens` (OAuth access tokens) and bumps
//! [`FaultState::tokens_revoked_epoch`] so the OAuth module can refuse older refresh tokens.
//! Export handlers read [`FaultState::truncate_zip`] and [`FaultState::fail_exports`].
//!
//! Rate limits run on the simulated clock (real time plus `/_sim/clock/advance`), so tests can
//! drain a bucket without sleeping. Injected errors and drops are decided by the seeded [`Rng`]
//! and a call counter, so the same seed and call sequence give the same faults.

use super::SharedSim;
use super::envelope::ApiError;
use crate::config::SimConfig;
use crate::rng::Rng;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seeded-stream tags of this module (unique across the simulator).
const TAG_ERROR: u64 = 0xFA17_0001;
const TAG_DROP: u64 = 0xFA17_0002;
/// Most route families tracked one by one; the rest are counted under `"other"` (memory bound).
const MAX_FAMILIES: usize = 256;
/// Most arrival times kept for the 60-second window statistic (memory bound).
const MAX_WINDOW: usize = 1_000_000;
const MINUTE_MS: f64 = 60_000.0;

/// Fault switches, settable from the CLI (`--fault key=value`, deserialized from a JSON object)
/// and from `POST /_sim/faults`. Every field has a default, so `{}` means "no faults".
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Brand-wide leaky bucket, requests per minute; `None` = the configured
    /// `SimConfig::rate_limit_per_min`; 0 = no limit.
    pub rate_limit_per_min: Option<u32>,
    /// Extra per-route-family limits (requests per minute), e.g. `{"export-responses": 20}`.
    pub route_limits: BTreeMap<String, u32>,
    /// Fraction (0.0–1.0) of calls answered with an injected 500/503/504.
    pub error_rate: f64,
    /// Fixed status for injected errors instead of the 500/503/504 mix (400–599).
    pub error_status: Option<u16>,
    /// Delay before answering, in milliseconds of real time.
    pub slow_ms: u64,
    /// Fraction (0.0–1.0) of calls whose response body is cut off mid-way (connection aborted).
    pub drop_rate: f64,
    /// Export files are served truncated (read by the export module).
    pub truncate_zip: bool,
    /// Export jobs end in `failed` (read by the export module).
    pub fail_exports: bool,
    /// After this many more calls, all OAuth access tokens are revoked (once).
    pub revoke_tokens_after: Option<u64>,
    /// Injected errors, slowness and drops only hit paths starting with this prefix.
    pub only_paths: Option<String>,
    /// Injected errors carry an error message of this many bytes instead of the short one
    /// (0 = short), to test how clients cope with a huge upstream error text.
    pub error_message_bytes: u64,
    /// Fail the next calls that match a method and route family, a given number of times: a
    /// deterministic one-shot fault ("the next `POST …/export-responses` gets a 500, once").
    pub fail_next: Option<FailNext>,
}

/// See [`FaultSettings::fail_next`]. `count` counts down as calls fail, so `GET /_sim/faults`
/// shows how many are left (0: used up).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailNext {
    /// Only calls with this HTTP method (case-insensitive); absent = any method.
    #[serde(default)]
    pub method: Option<String>,
    /// Only calls of this route family (see [`route_family`], e.g. `export-responses`); absent =
    /// any route.
    #[serde(default)]
    pub route: Option<String>,
    /// How many matching calls still fail (default 1).
    #[serde(default = "FailNext::default_count")]
    pub count: u64,
    /// The status they get, 400–599 (default 500).
    #[serde(default = "FailNext::default_status")]
    pub status: u16,
}

impl FailNext {
    fn default_count() -> u64 {
        1
    }

    fn default_status() -> u16 {
        500
    }

    fn matches(&self, method: &Method, family: &str) -> bool {
        self.count > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && self.route.as_deref().is_none_or(|r| r == family)
    }
}

/// Largest `error_message_bytes`: big enough to flood a log, small enough for a test machine.
pub const MAX_ERROR_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

impl FaultSettings {
    /// Settings from a JSON object, checked with [`FaultSettings::validate`]: the one way both
    /// `xmbridge simulate --fault` and `POST /_sim/faults` read them, so both refuse the same
    /// settings with the same message.
    pub fn from_json(value: Value) -> Result<FaultSettings, String> {
        let settings: FaultSettings =
            serde_json::from_value(value).map_err(|e| format!("Invalid fault settings: {e}"))?;
        settings
            .validate()
            .map_err(|e| format!("Invalid fault settings: {e}"))?;
        Ok(settings)
    }

    /// Why these settings make no sense, if they don't.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0.0 and 1.0, got {v}"));
            }
        }
        if let Some(s) = self.error_status
            && !(400..=599).contains(&s)
        {
            return Err(format!("error_status must be 400–599, got {s}"));
        }
        if let Some(f) = &self.fail_next
            && !(400..=599).contains(&f.status)
        {
            return Err(format!(
                "fail_next.status must be 400–599, got {}",
                f.status
            ));
        }
        if self.slow_ms > 600_000 {
            return Err(format!(
                "slow_ms must be at most 600000 (10 minutes), got {}",
                self.slow_ms
            ));
        }
        if self.error_message_bytes > MAX_ERROR_MESSAGE_BYTES {
            return Err(format!(
                "error_message_bytes must be at most {MAX_ERROR_MESSAGE_BYTES} (64 MiB), got {}",
                self.error_message_bytes
            ));
        }
        Ok(())
    }
}

/// A leaky bucket: `level` calls in it, draining at `limit` per minute.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    level: f64,
    last_ms: i64,
}

impl Bucket {
    fn drain(&mut self, now_ms: i64, limit: u32) {
        let elapsed = (now_ms - self.last_ms).max(0) as f64;
        self.level = (self.level - elapsed * f64::from(limit) / MINUTE_MS).max(0.0);
        self.last_ms = now_ms;
    }

    /// Seconds until one more call fits (at least 1).
    fn retry_after(&self, limit: u32) -> u64 {
        let over = self.level + 1.0 - f64::from(limit);
        let secs = over * 60.0 / f64::from(limit.max(1));
        (secs.ceil() as u64).max(1)
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct FamilyStats {
    calls: u64,
    throttled: u64,
    injected_errors: u64,
    dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: u64,
    throttled: u64,
    injected_errors: u64,
    dropped: u64,
    slowed: u64,
    by_family: BTreeMap<String, FamilyStats>,
    brand: Bucket,
    routes: HashMap<String, Bucket>,
    window: VecDeque<i64>,
    max_in_window: u64,
    /// Calls left before the token revocation fires.
    revoke_remaining: Option<u64>,
    /// Sequence number of calls the injected faults apply to (seeds the decisions).
    fault_seq: u64,
}

impl Counters {
    fn family(&mut self, name: &str) -> &mut FamilyStats {
        let key = if self.by_family.contains_key(name) || self.by_family.len() < MAX_FAMILIES {
            name
        } else {
            "other"
        };
        self.by_family.entry(key.to_string()).or_default()
    }
}

/// The live fault settings and counters of one brand.
#[derive(Debug)]
pub struct FaultState {
    seed: u64,
    /// The settings from the configuration, with the brand limit filled in (`DELETE` restores them).
    initial: FaultSettings,
    settings: RwLock<FaultSettings>,
    counters: Mutex<Counters>,
    tokens_epoch: AtomicU64,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState::new(&SimConfig::default())
    }
}

impl FaultState {
    pub(crate) fn new(cfg: &SimConfig) -> Self {
        let mut initial = cfg.faults.clone();
        if initial.rate_limit_per_min.is_none() {
            initial.rate_limit_per_min = Some(cfg.rate_limit_per_min);
        }
        let counters = Counters {
            revoke_remaining: initial.revoke_tokens_after,
            ..Default::default()
        };
        FaultState {
            seed: cfg.seed,
            settings: RwLock::new(initial.clone()),
            initial,
            counters: Mutex::new(counters),
            tokens_epoch: AtomicU64::new(0),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> FaultSettings {
        self.settings.read().clone()
    }

    /// Replaces the settings (a `None` brand limit means the configured one) and arms the token
    /// revocation countdown from `revoke_tokens_after`.
    pub fn set(&self, s: FaultSettings) {
        self.set_with(s, true);
    }

    /// Like [`Self::set`]; `rearm = false` leaves a running revocation countdown alone.
    fn set_with(&self, mut s: FaultSettings, rearm: bool) {
        if s.rate_limit_per_min.is_none() {
            s.rate_limit_per_min = self.initial.rate_limit_per_min;
        }
        if rearm || s.revoke_tokens_after.is_none() {
            self.counters.lock().revoke_remaining = s.revoke_tokens_after;
        }
        *self.settings.write() = s;
    }

    /// Back to the configured settings; empties the rate-limit buckets (counters stay).
    pub fn reset(&self) {
        self.set(self.initial.clone());
        let mut c = self.counters.lock();
        c.brand = Bucket::default();
        c.routes.clear();
    }

    /// Export files should be served cut short.
    pub fn truncate_zip(&self) -> bool {
        self.settings.read().truncate_zip
    }

    /// Export jobs should end in `failed`.
    pub fn fail_exports(&self) -> bool {
        self.settings.read().fail_exports
    }

    /// How many times `revoke_tokens_after` has revoked all tokens. The OAuth module may refuse
    /// refresh tokens issued under an older epoch.
    pub fn tokens_revoked_epoch(&self) -> u64 {
        self.tokens_epoch.load(Ordering::SeqCst)
    }

    /// The statistics as served by `GET /_sim/stats`.
    pub fn stats(&self) -> Value {
        let c = self.counters.lock();
        let s = self.settings.read();
        json!({
            "calls_total": c.calls,
            "throttled": c.throttled,
            "injected_errors": c.injected_errors,
            "dropped": c.dropped,
            "slowed": c.slowed,
            "max_requests_in_60s": c.max_in_window,
            "rate_limit_per_min": s.rate_limit_per_min.unwrap_or(0),
            "tokens_revoked_epoch": self.tokens_revoked_epoch(),
            "revoke_tokens_remaining": c.revoke_remaining,
            "by_route": c.by_family,
        })
    }

    /// Zeroes the statistics (not the settings or the buckets).
    pub fn reset_stats(&self) {
        let mut c = self.counters.lock();
        c.calls = 0;
        c.throttled = 0;
        c.injected_errors = 0;
        c.dropped = 0;
        c.slowed = 0;
        c.by_family.clear();
        c.window.clear();
        c.max_in_window = 0;
    }

    /// Counts one call and runs the rate limiters; `Err` is the 429 to answer.
    fn admit(&self, family: &str, now_ms: i64, s: &FaultSettings) -> Admission {
        let mut c = self.counters.lock();
        c.calls += 1;
        c.family(family).calls += 1;
        // The 60 s window counts every arrival, throttled or not: it is what the client sent.
        while c.window.front().is_some_and(|t| *t <= now_ms - 60_000) {
            c.window.pop_front();
        }
        if c.window.len() >= MAX_WINDOW {
            c.window.pop_front();
        }
        c.window.push_back(now_ms);
        c.max_in_window = c.max_in_window.max(c.window.len() as u64);

        let revoke = match c.revoke_remaining {
            Some(0) => {
                c.revoke_remaining = None;
                true
            }
            Some(n) => {
                c.revoke_remaining = Some(n - 1);
                false
            }
            None => false,
        };

        let brand_limit = s.rate_limit_per_min.unwrap_or(0);
        let route_limit = s.route_limits.get(family).copied().unwrap_or(0);
        let mut rejection = None;
        if brand_limit > 0 {
            c.brand.drain(now_ms, brand_limit);
            if c.brand.level + 1.0 > f64::from(brand_limit) {
                rejection = Some(ApiError::too_many(
                    c.brand.retry_after(brand_limit),
                    format!(
                        "Too many requests: this brand's limit is {brand_limit} requests per minute. Slow down and retry after the time in the Retry-After header."
                    ),
                ));
            }
        }
        if rejection.is_none() && route_limit > 0 {
            let b = c.routes.entry(family.to_string()).or_default();
            b.drain(now_ms, route_limit);
            if b.level + 1.0 > f64::from(route_limit) {
                rejection = Some(ApiError::too_many(
                    b.retry_after(route_limit),
                    format!(
                        "Too many requests: the limit for '{family}' calls is {route_limit} requests per minute. Slow down and retry after the time in the Retry-After header."
                    ),
                ));
            }
        }
        if rejection.is_some() {
            c.throttled += 1;
            c.family(family).throttled += 1;
        } else {
            // Only admitted calls fill the buckets, so a client that backs off recovers.
            if brand_limit > 0 {
                c.brand.level += 1.0;
            }
            if route_limit > 0
                && let Some(b) = c.routes.get_mut(family)
            {
                b.level += 1.0;
            }
        }
        Admission { rejection, revoke }
    }

    /// Whether this call is one of the next calls [`FaultSettings::fail_next`] fails (counting it
    /// down), and with which status.
    fn take_fail_next(&self, method: &Method, family: &str) -> Option<u16> {
        let status = {
            let mut s = self.settings.write();
            let f = s.fail_next.as_mut().filter(|f| f.matches(method, family))?;
            f.count -= 1;
            f.status
        };
        let mut c = self.counters.lock();
        c.injected_errors += 1;
        c.family(family).injected_errors += 1;
        Some(status)
    }

    /// Decides the injected faults for one admitted call in scope.
    fn decide(&self, family: &str, s: &FaultSettings) -> Decision {
        let mut c = self.counters.lock();
        let seq = c.fault_seq;
        c.fault_seq += 1;
        let mut d = Decision::default();
        if s.error_rate > 0.0 {
            let mut r = Rng::derive(self.seed, &[TAG_ERROR, seq]);
            if r.f64() < s.error_rate {
                let status = s
                    .error_status
                    .unwrap_or_else(|| *r.pick(&[500u16, 503, 504]));
                d.error = Some(status);
                c.injected_errors += 1;
                c.family(family).injected_errors += 1;
                return d;
            }
        }
        if s.drop_rate > 0.0 && Rng::derive(self.seed, &[TAG_DROP, seq]).f64() < s.drop_rate {
            d.drop = true;
            c.dropped += 1;
            c.family(family).dropped += 1;
        }
        if s.slow_ms > 0 {
            c.slowed += 1;
        }
        d
    }
}

struct Admission {
    rejection: Option<ApiError>,
    revoke: bool,
}

#[derive(Default)]
struct Decision {
    error: Option<u16>,
    drop: bool,
}

/// The route family a path belongs to: the last path segment that is a plain lowercase word
/// (ids such as `SV_…`, uuids, `{param}` placeholders and the trailing `file` are skipped).
/// `/API/v3/surveys/{surveyId}/export-responses/{id}/file` → `export-responses`; every `/oauth2/…`
/// path → `oauth2`.
pub fn route_family(path: &str) -> String {
    if path == "/oauth2" || path.starts_with("/oauth2/") {
        return "oauth2".into();
    }
    let rest = path.strip_prefix("/API/v3").unwrap_or(path);
    rest.split('/')
        .rfind(|seg| {
            !seg.is_empty()
                && *seg != "file"
                && seg.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
        .unwrap_or("other")
        .to_string()
}

fn injected_error(status: u16, message_bytes: u64) -> ApiError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let short = match status.as_u16() {
        500 => "Internal server error. Please retry the request.",
        502 => "Bad gateway. Please retry the request.",
        503 => "The service is temporarily unavailable. Please retry the request.",
        504 => "Gateway timeout: the request took too long. Please retry the request.",
        _ => "Simulated failure (fault injection).",
    };
    let mut msg = short.to_string();
    if let Ok(n) = usize::try_from(message_bytes)
        && n > msg.len()
    {
        // The short message, then filler up to the asked size.
        msg.push(' ');
        msg.extend(std::iter::repeat_n('x', n.saturating_sub(msg.len())));
    }
    if status.is_server_error() {
        ApiError::server(status, msg)
    } else {
        ApiError::new(status, "SIM_FAULT", msg)
    }
}

/// The fault middleware around `/API/v3` and `/oauth2`: rate limits (429 with `Retry-After`),
/// token revocation, `fail_next`, injected errors, slow answers and cut-off bodies, in that order.
pub async fn layer(State(sim): State<SharedSim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let family = route_family(
        req.extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str())
            .unwrap_or(&path),
    );
    let s = sim.faults.settings();
    let now = sim.clock.now_ms();
    let adm = sim.faults.admit(&family, now, &s);
    if adm.revoke {
        // Outside the counters lock: never hold two module locks at once.
        // Access and refresh tokens alike, as when a brand admin revokes an app: only a new
        // authorization (or client-credentials grant) gets the caller back in.
        sim.oauth.revoke(
            &sim,
            &super::oauth::Revocation {
                all: true,
                ..Default::default()
            },
        );
        sim.faults.tokens_epoch.fetch_add(1, Ordering::SeqCst);
        tracing::debug!("fault: revoked all OAuth access and refresh tokens");
    }
    if let Some(e) = adm.rejection {
        return e.into_response();
    }
    // Targeted by method and route itself, so `only_paths` does not apply.
    if let Some(status) = sim.faults.take_fail_next(req.method(), &family) {
        return injected_error(status, s.error_message_bytes).into_response();
    }
    let in_scope = s.only_paths.as_deref().is_none_or(|p| path.starts_with(p));
    if !in_scope {
        return next.run(req).await;
    }
    let d = sim.faults.decide(&family, &s);
    if s.slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(s.slow_ms)).await;
    }
    if let Some(status) = d.error {
        return injected_error(status, s.error_message_bytes).into_response();
    }
    let head = req.method() == Method::HEAD;
    let resp = next.run(req).await;
    if d.drop && !head {
        cut_body(resp)
    } else {
        resp
    }
}

/// Sends the headers (with the full `Content-Length`) and about half of the body, then fails the
/// body stream so the server aborts the connection: the client sees a truncated transfer.
fn cut_body(resp: Response) -> Response {
    use axum::body::HttpBody as _;
    let (mut parts, body) = resp.into_parts();
    let len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    if let Some(l) = len
        && let Ok(v) = HeaderValue::from_str(&l.to_string())
    {
        parts.headers.insert(header::CONTENT_LENGTH, v);
    }
    struct Cut {
        data: axum::body::BodyDataStream,
        sent: u64,
        keep: Option<u64>,
        done: bool,
    }
    let start = Cut {
        data: body.into_data_stream(),
        sent: 0,
        keep: len.map(|l| l / 2),
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        let abort = || std::io::Error::other("simulated connection drop (fault injection)");
        let room = st.keep.map(|k| k.saturating_sub(st.sent));
        if room == Some(0) {
            st.done = true;
            // Let the server flush the headers and the part already sent before it aborts;
            // hyper drops buffered output when the body fails in the same poll.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Some((Err(abort()), st));
        }
        match st.data.next().await {
            Some(Ok(chunk)) => {
                let take = match room {
                    Some(r) => (chunk.len() as u64).min(r) as usize,
                    None => {
                        // Unknown length: half of the first chunk, then the abort.
                        st.keep = Some(st.sent + (chunk.len() / 2) as u64);
                        chunk.len() / 2
                    }
                };
                st.sent += take as u64;
                if take == 0 {
                    st.done = true;
                    return Some((Err(abort()), st));
                }
                Some((Ok::<Bytes, std::io::Error>(chunk.slice(..take)), st))
            }
            _ => {
                st.done = true;
                Some((Err(abort()), st))
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn get_faults(State(sim): State<SharedSim>) -> Response {
    axum::Json(sim.faults.settings()).into_response()
}

/// Merges the posted JSON object into the settings in force: keys present replace their value
/// (`route_limits` as a whole map), keys absent keep theirs, `null` clears an optional switch.
async fn post_faults(State(sim): State<SharedSim>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return ApiError::bad_request("The body must be a JSON object.").into_response(),
        Err(e) => {
            return ApiError::bad_request(format!("The body is not valid JSON: {e}"))
                .into_response();
        }
    };
    // Only a POST that names the key restarts the revocation countdown.
    let rearm = patch.get("revoke_tokens_after").is_some();
    let mut current = serde_json::to_value(sim.faults.settings()).unwrap_or_else(|_| json!({}));
    if let (Value::Object(cur), Value::Object(p)) = (&mut current, patch) {
        for (k, v) in p {
            cur.insert(k, v);
        }
    }
    let merged = match FaultSettings::from_json(current) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    sim.faults.set_with(merged, rearm);
    axum::Json(sim.faults.settings()).into_response()
}

async fn delete_faults(State(sim): State<SharedSim>) -> Response {
    sim.faults.reset();
    axum::Json(sim.faults.settings()).into_response()
}

async fn get_stats(State(sim): State<SharedSim>) -> Response {
    axum::Json(sim.faults.stats()).into_response()
}

async fn delete_stats(State(sim): State<SharedSim>) -> Response {
    sim.faults.reset_stats();
    axum::Json(sim.faults.stats()).into_response()
}

/// `/_sim/faults` (GET, POST merge, DELETE reset to config) and `/_sim/stats` (GET, DELETE zero).
pub fn admin_routes() -> Router<SharedSim> {
    Router::new()
        .route(
            "/_sim/faults",
            get(get_faults).post(post_faults).delete(delete_faults),
        )
        .route("/_sim/stats", get(get_stats).delete(delete_stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(
            route_family("/API/v3/surveys/{surveyId}/export-responses/{id}/file"),
            "export-responses"
        );
        assert_eq!(
            route_family("/API/v3/surveys/SV_abc/export-responses/ES_x"),
            "export-responses"
        );
        assert_eq!(route_family("/API/v3/whoami"), "whoami");
        assert_eq!(route_family("/API/v3/surveys/SV_1"), "surveys");
        assert_eq!(route_family("/oauth2/token"), "oauth2");
        assert_eq!(route_family("/API/v3"), "other");
    }

    #[test]
    fn bucket_limits_and_drains() {
        let cfg = SimConfig {
            rate_limit_per_min: 10,
            ..Default::default()
        };
        let f = FaultState::new(&cfg);
        let s = f.settings();
        for _ in 0..10 {
            assert!(f.admit("whoami", 0, &s).rejection.is_none());
        }
        let e = f
            .admit("whoami", 0, &s)
            .rejection
            .expect("11th call throttled");
        assert_eq!(e.retry_after_secs, Some(6));
        assert!(f.admit("whoami", 6_000, &s).rejection.is_none());
        assert!(f.admit("whoami", 6_000, &s).rejection.is_some());
        assert!(f.admit("whoami", 66_000, &s).rejection.is_none());
    }

    #[test]
    fn settings_validate_and_deny_unknown() {
        let bad: Result<FaultSettings, _> = serde_json::from_str(r#"{"eror_rate":1}"#);
        assert!(bad.is_err());
        let s = FaultSettings {
            error_rate: 1.5,
            ..Default::default()
        };
        assert!(s.validate().is_err());
        let s: FaultSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, FaultSettings::default());
    }
}
