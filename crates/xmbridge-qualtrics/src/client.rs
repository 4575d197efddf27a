//! The HTTP client: authentication, timeouts, retries, the envelope, host switching, pagination.

use crate::datacenter::{BaseUrl, proxied_host};
use crate::envelope::{self, Envelope};
use crate::error::{Error, is_transient_status, strip_query};
use crate::retry::{Jitter, RetryPolicy, parse_retry_after};
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use url::Url;

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// How calls are authenticated.
///
/// Only the API token mode exists today; the OAuth modes (authorization code with refresh token,
/// client credentials over mutual TLS) will be added as variants holding a token source owned by
/// the `xmbridge-auth` crate, so callers that match on this enum must keep a wildcard arm.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Auth {
    /// `X-API-TOKEN: <token>` (qualtrics-api.md §2.1).
    ApiToken(Secret),
}

impl Auth {
    pub fn api_token(token: impl Into<String>) -> Auth {
        Auth::ApiToken(Secret::new(token))
    }

    fn header(&self) -> Result<(&'static str, HeaderValue), Error> {
        match self {
            Auth::ApiToken(t) => {
                let mut v = HeaderValue::from_str(t.expose()).map_err(|_| {
                    Error::Config(
                        "the API token contains characters that cannot be sent in a header".into(),
                    )
                })?;
                v.set_sensitive(true);
                Ok(("X-API-TOKEN", v))
            }
        }
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryMode {
    /// Safe to repeat (GET): retry 429, 5xx and transport failures.
    Idempotent,
    /// Repeating could do the work twice (e.g. starting an export): retry only when the server
    /// surely did not act on it — a 429, or a connection that was never established.
    NotIdempotent,
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
}

impl ClientBuilder {
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Time to establish a connection (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time for a whole JSON call (default 60 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Time for downloading one export file (default 30 min).
    pub fn download_timeout(mut self, d: Duration) -> Self {
        self.download_timeout = d;
        self
    }

    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Makes retry jitter reproducible (tests).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Uses a preconfigured reqwest client (custom roots, client certificates). Its own timeouts
    /// apply in addition to the per-request ones.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        self.auth.header()?;
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
                calls: AtomicU64::new(0),
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
    calls: AtomicU64,
}

/// A Qualtrics API v3 client for one account. Cheap to clone (shared state).
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

/// `GET /whoami` (qualtrics-api.md §1).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub user_id: String,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default)]
    pub brand_id: Option<String>,
    #[serde(default)]
    pub account_type: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
}

/// One element of `GET /surveys` (qualtrics-api.md §5.1).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SurveySummary {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    #[serde(default)]
    pub creation_date: Option<String>,
    #[serde(default)]
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
        }
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
                    let err = Error::transport(url.as_str(), &e);
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

    /// Sends until a 2xx answer arrives or retrying must stop; error answers become [`Error::Api`].
    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        mode: RetryMode,
        timeout: Duration,
        retry: &mut u32,
    ) -> Result<reqwest::Response, Error> {
        let (name, value) = self.inner.auth.header()?;
        loop {
            let mut rb = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .timeout(timeout)
                .header(name, value.clone());
            if let Some(b) = body {
                rb = rb.json(b);
            }
            self.inner.calls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%method, url = %strip_query(url.as_str()), "qualtrics call");
            let (err, retry_after) = match rb.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let err = match envelope::parse(status, &bytes, url.as_str()) {
                        Err(e) => e,
                        // A non-2xx status with a success-looking body: still an error.
                        Ok(_) => Error::Api(crate::ApiError {
                            status,
                            error_code: None,
                            error_message: format!("HTTP {status}"),
                            request_id: None,
                        }),
                    };
                    let retryable = match mode {
                        RetryMode::Idempotent => is_transient_status(status),
                        // A 429 was refused before any work was done.
                        RetryMode::NotIdempotent => status == 429,
                    };
                    if !retryable {
                        return Err(err);
                    }
                    (err, retry_after)
                }
                Err(e) => {
                    let err = Error::transport(url.as_str(), &e);
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

    async fn wait_before_retry(&self, retry: &mut u32, retry_after: Option<Duration>, err: &Error) {
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
            tracing::info!(notice, "Qualtrics notice");
            return;
        };
        let mut base = self.inner.base.write().unwrap_or_else(|e| e.into_inner());
        if !base.host().ends_with(".qualtrics.com") || base.host() == host {
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

    /// Every element of a `nextPage`-paged list, page after page, as a stream.
    ///
    /// `nextPage` is followed as a full URL (relative ones are resolved), but always on the
    /// client's own host so the token is never sent elsewhere. The literal `"string"` (Qualtrics'
    /// mock server) ends the list, and a page pointing to a page already seen is an error.
    pub fn paginate<T>(&self, first: Url) -> impl Stream<Item = Result<T, Error>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        struct State {
            client: Client,
            next: Option<Url>,
            seen: HashSet<String>,
        }
        let state = State {
            client: self.clone(),
            next: Some(first),
            seen: HashSet::new(),
        };
        stream::try_unfold(state, |mut st| async move {
            let Some(url) = st.next.take() else {
                return Ok::<_, Error>(None);
            };
            st.seen.insert(url.to_string());
            let page: Page<T> = st.client.get(url.clone()).await?;
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
