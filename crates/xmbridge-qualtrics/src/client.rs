//! The HTTP client: authentication, rate limits, timeouts, retries, the envelope, host switching,
//! pagination.
//!
//! Every HTTP request goes through [`Client::send_once`]'s loop: ask the [`Auth`] for a header,
//! take a rate-limit token, send, and on failure decide between retrying (backoff, `Retry-After`),
//! refreshing credentials once (401) and giving up with a typed [`Error`].

use crate::datacenter::{BaseUrl, DataCenter, proxied_host};
use crate::envelope::{self, Envelope};
use crate::error::{ApiError, Error, is_transient_status, strip_query};
use crate::ratelimit::{RateLimiter, RateLimits};
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use url::Url;
use xmbridge_auth::retry::{Jitter, RetryPolicy};
use xmbridge_auth::{AuthError, AuthHeader, ExposeSecret, RefreshOnce, SecretString, TokenSource};

/// How calls are authenticated.
///
/// New modes may be added, so callers that match on this enum must keep a wildcard arm.
/// `Debug` shows only the kind of credential (never a token, whatever the source's own `Debug`).
#[derive(Clone)]
#[non_exhaustive]
pub enum Auth {
    /// `X-API-TOKEN: <token>` (docs/design/qualtrics-api.md §2.1). It cannot be refreshed, so a 401
    /// is final.
    ApiToken(SecretString),
    /// Headers from a token source of `xmbridge-auth` (OAuth authorization code with refresh
    /// token, client credentials over mutual TLS …): asked before every request, invalidated
    /// after a 401, which is then retried once with a fresh header.
    TokenSource(Arc<dyn TokenSource>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::ApiToken(_) => f.write_str("ApiToken([REDACTED])"),
            Auth::TokenSource(s) => write!(f, "TokenSource({:?})", s.describe()),
        }
    }
}

impl Auth {
    /// An API token (`X-API-TOKEN`).
    pub fn api_token(token: impl Into<String>) -> Auth {
        Auth::ApiToken(SecretString::from(token.into()))
    }

    /// Credentials from a token source.
    pub fn token_source(source: Arc<dyn TokenSource>) -> Auth {
        Auth::TokenSource(source)
    }

    /// What kind of credential this is, for people (`API token`, the source's description).
    pub fn describe(&self) -> String {
        match self {
            Auth::ApiToken(_) => "API token".into(),
            Auth::TokenSource(s) => s.describe(),
        }
    }

    /// When the current access token expires, if the credential has one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Auth::ApiToken(_) => None,
            Auth::TokenSource(s) => s.expires_at(),
        }
    }

    /// Whether a 401 may be cured by fetching a fresh token.
    fn can_refresh(&self) -> bool {
        match self {
            Auth::ApiToken(_) => false,
            // A fixed token behind the token-source interface (an API token) cannot be renewed.
            Auth::TokenSource(s) => s.can_refresh(),
        }
    }

    /// The 401 rule shared by every client: true when the call should be sent once more
    /// with fresh credentials (see [`RefreshOnce`]).
    fn retry_after_401(&self, refresh: &mut RefreshOnce, sent: (HeaderName, HeaderValue)) -> bool {
        match self {
            Auth::ApiToken(_) => false,
            Auth::TokenSource(s) => {
                let (name, value) = sent;
                refresh.retry_after_401(s.as_ref(), &AuthHeader { name, value })
            }
        }
    }

    /// Checks what can be checked without a network call (an API token's characters).
    fn check(&self) -> Result<(), Error> {
        match self {
            Auth::ApiToken(t) => api_token_header(t).map(|_| ()),
            Auth::TokenSource(_) => Ok(()),
        }
    }

    /// The header for the next request; a token source gets at most `timeout` to produce it.
    async fn header(&self, timeout: Duration) -> Result<(HeaderName, HeaderValue), Error> {
        match self {
            Auth::ApiToken(t) => api_token_header(t),
            Auth::TokenSource(s) => {
                let h = tokio::time::timeout(timeout, s.authorization())
                    .await
                    .map_err(|_| {
                        Error::Auth(AuthError::Other(format!(
                            "getting credentials ({}) took longer than {timeout:?}; check that the token endpoint is reachable, then try again",
                            s.describe()
                        )))
                    })??;
                let mut value = h.value;
                value.set_sensitive(true);
                Ok((h.name, value))
            }
        }
    }
}

fn api_token_header(t: &SecretString) -> Result<(HeaderName, HeaderValue), Error> {
    let mut v = HeaderValue::from_str(t.expose_secret()).map_err(|_| {
        Error::Config(
            "the API token contains characters that cannot be sent in a header (a line break or a non-ASCII character?); copy it again from Account Settings > Qualtrics IDs".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok((HeaderName::from_static("x-api-token"), v))
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryMode {
    /// Safe to repeat (GETs, and POSTs that create nothing a user sees, such as starting a
    /// response export or a contact search): retry 429, 5xx and transport failures.
    Idempotent,
    /// Repeating could do the work twice (creating a contact, a mailing list, a distribution
    /// that mails people): retry only when the server surely did not act on it — a 429, a 401
    /// (retried once with fresh credentials), or a connection that was never established.
    NotIdempotent,
}

/// How the client paces itself.
#[derive(Clone, Debug)]
enum Limiting {
    Limits(RateLimits),
    Shared(Arc<RateLimiter>),
    Off,
}

/// Settings of a [`Client`].
pub struct ClientBuilder {
    base: BaseUrl,
    auth: Auth,
    retry: RetryPolicy,
    connect_timeout: Duration,
    request_timeout: Duration,
    download_timeout: Duration,
    user_agent: String,
    jitter_seed: Option<u64>,
    http: Option<reqwest::Client>,
    limiting: Limiting,
}

impl ClientBuilder {
    /// How transient failures are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Time to establish a connection (default 10 s; ignored with [`ClientBuilder::http_client`]).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time for a whole JSON call (default 60 s); also bounds how long a token source may take.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Time for downloading one export file (default 30 min).
    pub fn download_timeout(mut self, d: Duration) -> Self {
        self.download_timeout = d;
        self
    }

    /// The `User-Agent` (default `xmbridge/<version>`; ignored with [`ClientBuilder::http_client`]).
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Makes retry jitter reproducible (tests).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Uses a prebuilt reqwest client instead of building one.
    ///
    /// This is how the **advanced** auth mode (client credentials over mutual TLS) plugs in: build
    /// a `reqwest::Client` carrying the client identity (`reqwest::Identity::from_pem` of the
    /// certificate chain plus the decrypted private key, see `xmbridge-auth`), custom roots
    /// (`tls_certs_only`/`tls_certs_merge`) or DNS overrides (`resolve`), and pass it here — and
    /// the same client to the token source, so the token call and the API calls present the same
    /// certificate. Its own settings (connect timeout, user agent, proxy) apply instead of this
    /// builder's `connect_timeout`/`user_agent`; the per-request timeouts of this builder still
    /// apply on top.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The brand-wide and per-route limits (default: 2000 requests per minute, no route limits).
    /// Limits above Qualtrics' 3000/min brand limit are refused by [`ClientBuilder::build`].
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.limiting = Limiting::Limits(limits);
        self
    }

    /// Sets the brand-wide limit, requests per minute (1..=3000), keeping route limits.
    pub fn rate_limit_per_min(mut self, per_min: u32) -> Self {
        let mut limits = match self.limiting {
            Limiting::Limits(l) => l,
            Limiting::Shared(s) => s.limits().clone(),
            Limiting::Off => RateLimits::default(),
        };
        limits.brand_per_min = per_min;
        self.limiting = Limiting::Limits(limits);
        self
    }

    /// Shares the buckets of another client of the same brand (see [`Client::rate_limiter`]),
    /// so that together they stay under the brand limit.
    pub fn rate_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiting = Limiting::Shared(limiter);
        self
    }

    /// No client-side pacing at all. Only for loopback simulators (benchmarks, fault tests);
    /// [`ClientBuilder::build`] refuses it for any other host.
    pub fn no_rate_limit(mut self) -> Self {
        self.limiting = Limiting::Off;
        self
    }

    /// Checks the settings and builds the client (no network call).
    pub fn build(self) -> Result<Client, Error> {
        self.auth.check()?;
        let limiter = match self.limiting {
            Limiting::Limits(l) => Some(RateLimiter::new(l)?),
            Limiting::Shared(s) => Some(s),
            Limiting::Off if self.base.is_loopback() => None,
            Limiting::Off => {
                return Err(Error::Config(format!(
                    "rate limiting can only be switched off for loopback simulators, not for {}; keep the default (2000 requests/min) or set a limit up to 3000",
                    self.base.host()
                )));
            }
        };
        let http = match self.http {
            Some(h) => h,
            None => reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .user_agent(self.user_agent)
                .build()
                .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: RwLock::new(self.base),
                switched_host: AtomicBool::new(false),
                auth: self.auth,
                retry: self.retry,
                jitter: match self.jitter_seed {
                    Some(s) => Jitter::seeded(s),
                    None => Jitter::from_time(),
                },
                request_timeout: self.request_timeout,
                download_timeout: self.download_timeout,
                limiter,
                calls: AtomicU64::new(0),
                throttled: AtomicU64::new(0),
                export_wait_us: AtomicU64::new(0),
            }),
        })
    }
}

struct Inner {
    http: reqwest::Client,
    base: RwLock<BaseUrl>,
    switched_host: AtomicBool,
    auth: Auth,
    retry: RetryPolicy,
    jitter: Jitter,
    request_timeout: Duration,
    download_timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    calls: AtomicU64,
    /// 429 answers received (each one retried or, past the budget, returned).
    throttled: AtomicU64,
    /// Microseconds spent from response-export requests until their files were ready.
    export_wait_us: AtomicU64,
}

/// A Qualtrics API v3 client for one account. Cheap to clone (shared state: the base URL, the
/// credentials, the rate-limit buckets and the call counter).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base().as_str())
            .field("auth", &self.inner.auth)
            .finish()
    }
}

/// `GET /whoami` (docs/design/qualtrics-api.md §1).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// `UR_…`
    pub user_id: String,
    #[serde(default)]
    /// The login name, e.g. `admin@acme`.
    pub user_name: Option<String>,
    #[serde(default)]
    /// The brand (organization) id.
    pub brand_id: Option<String>,
    #[serde(default)]
    /// e.g. `UT_BRANDADMIN`.
    pub account_type: Option<String>,
    #[serde(default)]
    /// The user's first name.
    pub first_name: Option<String>,
    #[serde(default)]
    /// The user's last name.
    pub last_name: Option<String>,
    #[serde(default)]
    /// The user's e-mail address.
    pub email: Option<String>,
    #[serde(default)]
    /// The data center the account lives in (see [`Client::discover_data_center`]).
    pub datacenter: Option<String>,
}

/// One element of `GET /surveys` (docs/design/qualtrics-api.md §5.1).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SurveySummary {
    /// `SV_…`
    pub id: String,
    #[serde(default)]
    /// The survey's name.
    pub name: String,
    #[serde(default)]
    /// `UR_…` of the owner.
    pub owner_id: Option<String>,
    #[serde(default)]
    /// ISO-8601.
    pub last_modified: Option<String>,
    #[serde(default)]
    /// ISO-8601.
    pub creation_date: Option<String>,
    #[serde(default)]
    /// Whether the survey is active.
    pub is_active: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    #[serde(default = "Vec::new")]
    elements: Vec<T>,
    #[serde(default)]
    next_page: Option<String>,
}

impl Client {
    /// Starts configuring a client for `base` with `auth`; defaults: 2000 requests/min, retries
    /// of [`RetryPolicy::default`], 10 s connect / 60 s call / 30 min download timeouts.
    pub fn builder(base: BaseUrl, auth: Auth) -> ClientBuilder {
        ClientBuilder {
            base,
            auth,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            download_timeout: Duration::from_secs(30 * 60),
            user_agent: format!("xmbridge/{}", env!("CARGO_PKG_VERSION")),
            jitter_seed: None,
            http: None,
            limiting: Limiting::Limits(RateLimits::default()),
        }
    }

    /// How this client authenticates.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The rate-limit buckets (absent only with [`ClientBuilder::no_rate_limit`]); hand them to
    /// [`ClientBuilder::rate_limiter`] to make another client of the same brand share them.
    pub fn rate_limiter(&self) -> Option<&Arc<RateLimiter>> {
        self.inner.limiter.as_ref()
    }

    /// The base URL calls go to now (it changes once if Qualtrics names a better host).
    pub fn base(&self) -> BaseUrl {
        self.inner
            .base
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `{base}/{segments…}`
    pub fn url(&self, segments: &[&str]) -> Url {
        self.base().join(segments)
    }

    /// HTTP requests sent so far (every attempt counts, retries included).
    pub fn api_calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// 429 (throttled) answers received so far; each is retried until the throttle budget runs
    /// out. Part of [`Client::api_calls`].
    pub fn throttled(&self) -> u64 {
        self.inner.throttled.load(Ordering::Relaxed)
    }

    /// Time spent so far from each response export's request until Qualtrics said its file was
    /// ready: the API side's share of a sync, which no client can shorten.
    pub fn export_wait(&self) -> Duration {
        Duration::from_micros(self.inner.export_wait_us.load(Ordering::Relaxed))
    }

    pub(crate) fn add_export_wait(&self, micros: u64) {
        self.inner
            .export_wait_us
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// `GET /whoami`: who the credentials belong to; the connection test.
    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        self.get(self.url(&["whoami"])).await
    }

    /// `GET /surveys`, every page.
    pub fn surveys(&self) -> impl Stream<Item = Result<SurveySummary, Error>> + Send + 'static {
        self.paginate(self.url(&["surveys"]))
    }

    /// GET a JSON call and decode its `result`.
    pub async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, Error> {
        let env = self
            .call(Method::GET, url.clone(), None, RetryMode::Idempotent)
            .await?;
        env.into_result(url.as_str())
    }

    /// POST a JSON body and decode the `result`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        url: Url,
        body: &Value,
        mode: RetryMode,
    ) -> Result<T, Error> {
        let env = self
            .call(Method::POST, url.clone(), Some(body), mode)
            .await?;
        env.into_result(url.as_str())
    }

    /// One JSON call with retries; returns the parsed envelope of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        mode: RetryMode,
    ) -> Result<Envelope, Error> {
        let timeout = self.inner.request_timeout;
        let mut retry = 0u32;
        loop {
            let resp = self
                .send_once(method.clone(), &url, body, mode, timeout, &mut retry)
                .await?;
            let status = resp.status().as_u16();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    // The connection broke while the answer arrived (a dropped connection).
                    let err = Error::transport(url.as_str(), e);
                    if mode == RetryMode::Idempotent && retry < self.inner.retry.max_retries {
                        self.wait_before_retry(&mut retry, None, &err).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let env = envelope::parse(status, &bytes, url.as_str())?;
            if let Some(notice) = &env.meta.notice {
                self.follow_notice(notice);
            }
            return Ok(env);
        }
    }

    /// Sends until a 2xx answer arrives or retrying must stop; error answers become [`Error::Api`]
    /// (401: [`Error::Unauthorized`]).
    ///
    /// Each attempt takes a rate-limit token and asks the credentials for a header first.
    /// A 401 with a token source invalidates it and retries once at once, whatever the method
    /// (the request was not processed). 429s slow the limiter down and are retried on their own
    /// budget ([`RetryPolicy::max_throttled_retries`]); other transient failures on
    /// [`RetryPolicy::max_retries`].
    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        mode: RetryMode,
        timeout: Duration,
        retry: &mut u32,
    ) -> Result<reqwest::Response, Error> {
        let mut refresh = RefreshOnce::new();
        let mut throttled = 0u32;
        loop {
            // The rate-limit wait comes first so the credentials are as fresh as possible.
            if let Some(limiter) = &self.inner.limiter {
                limiter.acquire(method.as_str(), url.path()).await;
            }
            let (name, value) = self.inner.auth.header(self.inner.request_timeout).await?;
            let mut rb = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .timeout(timeout)
                .header(name.clone(), value.clone());
            if let Some(b) = body {
                rb = rb.json(b);
            }
            self.inner.calls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%method, url = %strip_query(url.as_str()), "qualtrics call");
            let (err, retry_after) = match rb.send().await {
                Ok(resp) if resp.status().is_success() => {
                    if let Some(limiter) = &self.inner.limiter {
                        limiter.on_success(method.as_str(), url.path());
                    }
                    return Ok(resp);
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = xmbridge_auth::retry::retry_after(resp.headers());
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let mut api = match envelope::parse(status, &bytes, url.as_str()) {
                        Err(Error::Api(api)) => api,
                        Err(e) => return Err(e),
                        // A non-2xx status with a success-looking body: still an error.
                        Ok(env) => ApiError {
                            status,
                            error_code: None,
                            error_message: format!("HTTP {status}"),
                            request_id: env.meta.request_id,
                            retry_after: None,
                        },
                    };
                    api.retry_after = retry_after;
                    if status == 401 {
                        if self.inner.auth.retry_after_401(&mut refresh, (name, value)) {
                            tracing::info!(
                                credential = %self.inner.auth.describe(),
                                "Qualtrics answered 401; fetching fresh credentials and retrying once"
                            );
                            continue;
                        }
                        return Err(self.unauthorized(api, refresh.refreshed()));
                    }
                    if status == 429 {
                        self.inner.throttled.fetch_add(1, Ordering::Relaxed);
                        if let Some(limiter) = &self.inner.limiter {
                            limiter.on_throttled(method.as_str(), url.path(), retry_after);
                        }
                        if throttled >= self.inner.retry.max_throttled_retries {
                            return Err(Error::Api(api));
                        }
                        let err = Error::Api(api);
                        let delay =
                            self.inner
                                .retry
                                .delay(throttled, retry_after, &self.inner.jitter);
                        throttled += 1;
                        // Routine under a rate limit: the caller reports the count
                        // ([`Client::throttled`]) instead of a line per retry.
                        tracing::debug!(
                            attempt = throttled,
                            delay_ms = delay.as_millis() as u64,
                            error = %err,
                            "Qualtrics throttled the call; retrying"
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    let retryable = mode == RetryMode::Idempotent && is_transient_status(status);
                    if !retryable {
                        return Err(Error::Api(api));
                    }
                    (Error::Api(api), retry_after)
                }
                Err(e) => {
                    let err = Error::transport(url.as_str(), e);
                    let retryable = match (&err, mode) {
                        (_, RetryMode::Idempotent) => true,
                        (Error::Transport { not_sent, .. }, RetryMode::NotIdempotent) => *not_sent,
                        _ => false,
                    };
                    if !retryable {
                        return Err(err);
                    }
                    (err, None)
                }
            };
            if *retry >= self.inner.retry.max_retries {
                return Err(err);
            }
            self.wait_before_retry(retry, retry_after, &err).await;
        }
    }

    /// The 401 as an error that says what was refused and what to do.
    fn unauthorized(&self, api: ApiError, refreshed: bool) -> Error {
        let base = self.base();
        let credential = self.inner.auth.describe();
        let hint = if self.inner.auth.can_refresh() {
            let dc = match base.data_center() {
                Some(dc) => format!("this client calls {} (data center {dc})", base.host()),
                None => format!("this client calls {}", base.host()),
            };
            format!(
                "{}OAuth tokens only work on the data center that issued them and {dc}: if the message names another data center, point the connection at that one (or run `xmbridge connection test` to discover it) and fetch the token from the same host. Otherwise re-authorize the connection or check the OAuth client id and secret.",
                if refreshed {
                    "A freshly fetched token was refused too. "
                } else {
                    ""
                }
            )
        } else {
            format!(
                "The token is mistyped or was replaced (generating a new one invalidates the old): copy the current one from Qualtrics (Account Settings > Qualtrics IDs > API), store it with the connection, and check that {} is your account's host.",
                base.host()
            )
        };
        Error::Unauthorized {
            credential,
            hint,
            api: Box::new(api),
        }
    }

    pub(crate) async fn wait_before_retry(
        &self,
        retry: &mut u32,
        retry_after: Option<Duration>,
        err: &Error,
    ) {
        let delay = self
            .inner
            .retry
            .delay(*retry, retry_after, &self.inner.jitter);
        *retry += 1;
        tracing::warn!(
            attempt = *retry,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "retrying Qualtrics call"
        );
        tokio::time::sleep(delay).await;
    }

    /// Follows "Request proxied … use this host instead: X" once: later calls go to X. Only
    /// between Qualtrics hosts — a client pointed at a simulator or proxy is never sent elsewhere.
    fn follow_notice(&self, notice: &str) {
        let Some(host) = proxied_host(notice) else {
            tracing::info!(
                notice = %xmbridge_auth::upstream_text(notice),
                "Qualtrics notice"
            );
            return;
        };
        let mut base = self.inner.base.write().unwrap_or_else(|e| e.into_inner());
        if !base.is_qualtrics_host() || base.host() == host {
            return;
        }
        if self.inner.switched_host.swap(true, Ordering::SeqCst) {
            return;
        }
        match base.with_host(&host) {
            Ok(new) => {
                tracing::info!(from = base.host(), to = %host, "Qualtrics proxied the call; switching host");
                *base = new;
            }
            Err(e) => tracing::warn!(error = %e, "ignoring proxy notice"),
        }
    }

    /// Asks `/whoami` which data center the account lives in and, when the base URL is a
    /// Qualtrics host that does not name that data center (a vanity or organization host such as
    /// `acme.qualtrics.com`, which Qualtrics proxies), switches later calls to `{dc}.qualtrics.com`.
    /// Loopback and non-Qualtrics bases (simulators, gateways) are never switched.
    ///
    /// When `/whoami` names no data center, the one the (possibly proxy-switched) host names is
    /// returned; if that names none either, it is an error saying to give the data center.
    pub async fn discover_data_center(&self) -> Result<DataCenter, Error> {
        let me = self.whoami().await?;
        let named = me
            .datacenter
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let dc = match named {
            Some(id) => DataCenter::from_server(id)?,
            None => self.base().data_center().ok_or_else(|| {
                Error::Config(format!(
                    "/whoami did not name a data center and the host {} names none; give the data center explicitly (e.g. fra1) or the account host from your browser (acme.fra1.qualtrics.com)",
                    self.base().host()
                ))
            })?,
        };
        self.use_data_center(&dc);
        Ok(dc)
    }

    /// Points a Qualtrics-hosted base at `{dc}.qualtrics.com` unless it already names `dc`.
    fn use_data_center(&self, dc: &DataCenter) {
        let mut base = self.inner.base.write().unwrap_or_else(|e| e.into_inner());
        if base.is_loopback()
            || !base.is_qualtrics_host()
            || base.data_center().as_ref() == Some(dc)
        {
            return;
        }
        match base.with_host(&dc.host()) {
            Ok(new) => {
                tracing::info!(from = base.host(), to = %dc.host(), "switching to the account's data center");
                *base = new;
                // The data center is now known; a later proxy notice is not needed.
                self.inner.switched_host.store(true, Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "cannot switch to the data center host"),
        }
    }

    /// Every element of a `nextPage`-paged list, page after page, as a stream.
    ///
    /// `nextPage` is followed as a full URL (relative ones are resolved), but always on the
    /// client's own host so the token is never sent elsewhere. The literal `"string"` (Qualtrics'
    /// mock server) ends the list, and a page pointing to a page already seen is an error.
    pub fn paginate<T>(&self, first: Url) -> impl Stream<Item = Result<T, Error>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.pages(first, None)
    }

    /// Like [`Client::paginate`] for a list read by POSTing a body (contact search): every page
    /// is the same body POSTed to the `nextPage` URL. Searches change nothing, so they are
    /// retried as idempotent calls.
    pub fn paginate_post<T>(
        &self,
        first: Url,
        body: Value,
    ) -> impl Stream<Item = Result<T, Error>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.pages(first, Some(body))
    }

    fn pages<T>(
        &self,
        first: Url,
        body: Option<Value>,
    ) -> impl Stream<Item = Result<T, Error>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        struct State {
            client: Client,
            next: Option<Url>,
            seen: HashSet<String>,
            body: Option<Value>,
        }
        let state = State {
            client: self.clone(),
            next: Some(first),
            seen: HashSet::new(),
            body,
        };
        stream::try_unfold(state, |mut st| async move {
            let Some(url) = st.next.take() else {
                return Ok::<_, Error>(None);
            };
            st.seen.insert(url.to_string());
            let page: Page<T> = match &st.body {
                None => st.client.get(url.clone()).await?,
                Some(body) => {
                    st.client
                        .post(url.clone(), body, RetryMode::Idempotent)
                        .await?
                }
            };
            st.next =
                resolve_next_page(&st.client.base(), &url, page.next_page.as_deref(), &st.seen)?;
            Ok(Some((page.elements, st)))
        })
        .map_ok(|elements| stream::iter(elements.into_iter().map(Ok::<T, Error>)))
        .try_flatten()
        .boxed()
    }

    /// GET a file (not an envelope), with the same retries as JSON GETs for the answer's head.
    pub(crate) async fn get_file(&self, url: &Url) -> Result<reqwest::Response, Error> {
        let mut retry = 0;
        self.send_once(
            Method::GET,
            url,
            None,
            RetryMode::Idempotent,
            self.inner.download_timeout,
            &mut retry,
        )
        .await
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }
}

/// Where the next page is, if anywhere.
pub(crate) fn resolve_next_page(
    base: &BaseUrl,
    current: &Url,
    next: Option<&str>,
    seen: &HashSet<String>,
) -> Result<Option<Url>, Error> {
    let next = match next.map(str::trim) {
        None | Some("") | Some("null") => return Ok(None),
        Some("string") => {
            tracing::warn!(
                "nextPage is the literal \"string\" (a mock server); treating as last page"
            );
            return Ok(None);
        }
        Some(n) => n,
    };
    let mut url = Url::parse(next)
        .or_else(|_| current.join(next))
        .map_err(|e| Error::Pagination(format!("nextPage is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Pagination(format!(
            "nextPage has scheme '{}'",
            url.scheme()
        )));
    }
    let b = base.url();
    if url.host_str() != b.host_str() || url.port_or_known_default() != b.port_or_known_default() {
        tracing::debug!(
            next_host = url.host_str().unwrap_or_default(),
            "nextPage names another host; following it on ours"
        );
        let moved = url.set_scheme(b.scheme()).is_ok()
            && url.set_host(b.host_str()).is_ok()
            && url.set_port(b.port()).is_ok();
        if !moved {
            return Err(Error::Pagination(
                "cannot move nextPage onto the client's host".into(),
            ));
        }
    }
    if seen.contains(url.as_str()) {
        return Err(Error::Pagination(format!(
            "nextPage {} repeats a page already read; stopping to avoid a loop",
            strip_query(url.as_str())
        )));
    }
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseUrl {
        BaseUrl::parse("https://fra1.qualtrics.com").unwrap()
    }

    #[test]
    fn next_page_forms() {
        let cur = Url::parse("https://fra1.qualtrics.com/API/v3/surveys").unwrap();
        let seen = HashSet::new();
        assert_eq!(resolve_next_page(&base(), &cur, None, &seen).unwrap(), None);
        assert_eq!(
            resolve_next_page(&base(), &cur, Some(""), &seen).unwrap(),
            None
        );
        assert_eq!(
            resolve_next_page(&base(), &cur, Some("string"), &seen).unwrap(),
            None
        );
        let full = "https://fra1.qualtrics.com/API/v3/surveys?offset=100";
        assert_eq!(
            resolve_next_page(&base(), &cur, Some(full), &seen)
                .unwrap()
                .unwrap()
                .as_str(),
            full
        );
        assert_eq!(
            resolve_next_page(&base(), &cur, Some("/API/v3/surveys?offset=200"), &seen)
                .unwrap()
                .unwrap()
                .as_str(),
            "https://fra1.qualtrics.com/API/v3/surveys?offset=200"
        );
    }

    #[test]
    fn next_page_stays_on_our_host() {
        let cur = Url::parse("https://fra1.qualtrics.com/API/v3/surveys").unwrap();
        let got = resolve_next_page(
            &base(),
            &cur,
            Some("http://evil.example:8080/API/v3/surveys?offset=100"),
            &HashSet::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got.as_str(),
            "https://fra1.qualtrics.com/API/v3/surveys?offset=100"
        );
    }

    #[test]
    fn next_page_loop_is_an_error() {
        let cur = Url::parse("https://fra1.qualtrics.com/API/v3/surveys").unwrap();
        let mut seen = HashSet::new();
        seen.insert(cur.to_string());
        let err = resolve_next_page(&base(), &cur, Some(cur.as_str()), &seen).unwrap_err();
        assert!(matches!(err, Error::Pagination(_)));
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = Client::builder(base(), Auth::api_token("supersecrettoken"))
            .build()
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert!(dbg.contains("REDACTED"));
    }

    #[test]
    fn bad_token_characters_are_a_config_error() {
        let err = Client::builder(base(), Auth::api_token("bad\ntoken"))
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }

    #[test]
    fn proxy_notice_switches_once_between_qualtrics_hosts() {
        let c = Client::builder(
            BaseUrl::parse("acme.ca1.qualtrics.com").unwrap(),
            Auth::api_token("t"),
        )
        .build()
        .unwrap();
        c.follow_notice(
            "Request proxied. For faster response times, use this host instead: fra1.qualtrics.com",
        );
        assert_eq!(c.base().as_str(), "https://fra1.qualtrics.com/API/v3");
        c.follow_notice(
            "Request proxied. For faster response times, use this host instead: iad1.qualtrics.com",
        );
        assert_eq!(
            c.base().as_str(),
            "https://fra1.qualtrics.com/API/v3",
            "only once"
        );

        let sim = Client::builder(
            BaseUrl::parse("http://127.0.0.1:9").unwrap(),
            Auth::api_token("t"),
        )
        .build()
        .unwrap();
        sim.follow_notice(
            "Request proxied. For faster response times, use this host instead: fra1.qualtrics.com",
        );
        assert_eq!(
            sim.base().as_str(),
            "http://127.0.0.1:9/API/v3",
            "never leaves a simulator"
        );
    }
}
