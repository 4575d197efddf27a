//! The [`TokenSource`] implementations: a fixed API token, OAuth client credentials and OAuth
//! refresh tokens. It owns caching (refresh `margin` before expiry, forget on `invalidate`),
//! single-flight refreshes and handing rotated refresh tokens to the [`RefreshTokenSink`]. It
//! must not persist anything itself nor talk HTTP other than through [`OAuthClient`].

use crate::error::AuthError;
use crate::oauth::{OAuthClient, TokenResponse, bearer_header};
use crate::{AuthHeader, BoxFuture, RefreshTokenSink, TokenSource};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Where sources read "now" from; tests plug in a simulator's clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Refresh this long before expiry (Qualtrics tokens last an hour).
const DEFAULT_MARGIN: Duration = Duration::from_secs(60);
/// Longest lifetime believed (ten years).
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------

/// A fixed credential header: an API token sent as `X-API-TOKEN` (Qualtrics), or Basic
/// credentials ([`ApiTokenSource::basic`], ServiceNow). Never expires, cannot refresh: a 401 is
/// final.
pub struct ApiTokenSource {
    header: AuthHeader,
    description: String,
}

impl fmt::Debug for ApiTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokenSource({}: [REDACTED])", self.header.name)
    }
}

impl ApiTokenSource {
    /// The token as `X-API-TOKEN`.
    pub fn new(token: SecretString) -> Result<Self, AuthError> {
        let t = token.expose_secret().trim();
        if t.is_empty() {
            return Err(AuthError::Config(
                "the API token is empty; pass the token from Account Settings → Qualtrics IDs"
                    .into(),
            ));
        }
        crate::check_credential_text("API token", t)?;
        let mut value = http::HeaderValue::from_str(t).map_err(|_| {
            AuthError::Config(
                "the API token contains characters that cannot go into an HTTP header (a line break or a non-ASCII character?); check the token file"
                    .into(),
            )
        })?;
        value.set_sensitive(true);
        Ok(ApiTokenSource {
            header: AuthHeader {
                name: http::HeaderName::from_static("x-api-token"),
                value,
            },
            description: "API token (X-API-TOKEN)".into(),
        })
    }

    /// `Authorization: Basic` with `username` and `password` on every call.
    pub fn basic(username: &str, password: &SecretString) -> Result<Self, AuthError> {
        use base64::Engine as _;
        let pair =
            secrecy::zeroize::Zeroizing::new(format!("{username}:{}", password.expose_secret()));
        let encoded = secrecy::zeroize::Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        ));
        let mut value = http::HeaderValue::from_str(&encoded).map_err(|_| {
            AuthError::Config("the user name cannot go into an HTTP header (a line break?)".into())
        })?;
        value.set_sensitive(true);
        Ok(ApiTokenSource {
            header: AuthHeader {
                name: http::header::AUTHORIZATION,
                value,
            },
            description: format!("Basic auth (user {username})"),
        })
    }
}

impl TokenSource for ApiTokenSource {
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
        let h = self.header.clone();
        Box::pin(async move { Ok(h) })
    }

    fn can_refresh(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

// ---------------------------------------------------------------------------------------------

struct Cached {
    header: AuthHeader,
    expires_at: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
}

/// An access-token cache with single-flight refresh.
struct TokenCache {
    state: Mutex<Option<Cached>>,
    /// Held while fetching, so concurrent callers share one token call.
    flight: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    /// `None`: the default margin, with short-lived tokens renewed at half-life; `Some`: a
    /// margin the caller chose, applied as given.
    margin: Option<Duration>,
}

impl TokenCache {
    fn new() -> Self {
        TokenCache {
            state: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            clock: Arc::new(SystemClock),
            margin: None,
        }
    }

    fn fresh(&self) -> Option<AuthHeader> {
        let now = self.clock.now();
        let st = lock(&self.state);
        let c = st.as_ref()?;
        match c.refresh_at {
            Some(at) if now >= at => None,
            _ => Some(c.header.clone()),
        }
    }

    fn put(
        &self,
        token: &SecretString,
        obtained: SystemTime,
        lifetime: Option<Duration>,
    ) -> Result<AuthHeader, AuthError> {
        let header = AuthHeader {
            name: http::header::AUTHORIZATION,
            value: bearer_header(token)?,
        };
        // A provider's `expires_in` is outside data: cap it so the arithmetic cannot overflow.
        let (expires_at, refresh_at) = match lifetime.map(|l| l.min(MAX_LIFETIME)) {
            Some(l) => {
                let margin = match self.margin {
                    // A token that lives no longer than the default margin is renewed at
                    // half-life instead of on every call.
                    None if l <= DEFAULT_MARGIN => l / 2,
                    None => DEFAULT_MARGIN,
                    // A chosen margin as long as the token's life renews before every call.
                    Some(m) => m.min(l),
                };
                (obtained.checked_add(l), obtained.checked_add(l - margin))
            }
            None => (None, None),
        };
        *lock(&self.state) = Some(Cached {
            header: header.clone(),
            expires_at,
            refresh_at,
        });
        Ok(header)
    }

    fn store(
        &self,
        resp: &TokenResponse,
        obtained: SystemTime,
        assumed_lifetime: Option<Duration>,
    ) -> Result<AuthHeader, AuthError> {
        if !resp.token_type.eq_ignore_ascii_case("bearer") {
            tracing::warn!(token_type = %resp.token_type, "token type is not Bearer; sending it as Bearer");
        }
        self.put(
            &resp.access_token,
            obtained,
            resp.expires_in
                .map(Duration::from_secs)
                .or(assumed_lifetime),
        )
    }

    async fn get<Fut>(
        &self,
        oauth: &OAuthClient,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<AuthHeader, AuthError>
    where
        Fut: Future<Output = Result<TokenResponse, AuthError>>,
    {
        if let Some(h) = self.fresh() {
            return Ok(h);
        }
        let _flight = self.flight.lock().await;
        // Another caller may have refreshed while we waited.
        if let Some(h) = self.fresh() {
            return Ok(h);
        }
        // The lifetime counts from before the call: never believe a token lives longer than it does.
        let obtained = self.clock.now();
        let resp = fetch().await?;
        let assumed = oauth.hooks().and_then(|h| h.assumed_lifetime());
        self.store(&resp, obtained, assumed)
    }

    fn clear(&self) {
        *lock(&self.state) = None;
    }

    /// Forgets the cached token only if it is `sent` (another caller may have refreshed since).
    fn clear_if(&self, sent: &AuthHeader) {
        let mut st = lock(&self.state);
        if st.as_ref().is_some_and(|c| c.header.value == sent.value) {
            *st = None;
        }
    }

    fn expires_at(&self) -> Option<SystemTime> {
        lock(&self.state).as_ref().and_then(|c| c.expires_at)
    }
}

/// The builder methods of a source that caches OAuth access tokens (fields `oauth` and `cache`).
macro_rules! cached_source_builders {
    ($source:ty) => {
        impl $source {
            /// Reads "now" from `clock` (default: the system clock).
            pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
                self.cache.clock = clock;
                self
            }

            /// Refreshes this long before expiry (default 60 s, and tokens living no longer than
            /// that are renewed at half-life). A margin set here applies as given: one at least
            /// as long as the token's life renews before every call.
            pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
                self.cache.margin = Some(margin);
                self
            }

            /// Starts with an access token already in hand (e.g. from the authorize flow), valid
            /// for `expires_in` from now (`None`: until a 401). Call it after
            /// [`Self::with_clock`]: "now" is read from the clock set at that point.
            pub fn with_access_token(
                self,
                access_token: &SecretString,
                expires_in: Option<Duration>,
            ) -> Result<Self, AuthError> {
                let now = self.cache.clock.now();
                self.cache.put(access_token, now, expires_in)?;
                Ok(self)
            }

            /// The OAuth client.
            pub fn oauth(&self) -> &OAuthClient {
                &self.oauth
            }
        }
    };
}

/// The [`TokenSource`] methods a caching source answers from its `cache`.
macro_rules! cache_plumbing {
    () => {
        fn invalidate(&self) {
            self.cache.clear();
        }

        fn invalidate_stale(&self, sent: &AuthHeader) {
            self.cache.clear_if(sent);
        }

        fn expires_at(&self) -> Option<SystemTime> {
            self.cache.expires_at()
        }
    };
}

// ---------------------------------------------------------------------------------------------

/// OAuth client credentials ("advanced" mode; the [`OAuthClient`]'s HTTP client may carry a
/// mutual-TLS identity). Caches the access token and gets a new one `margin` (60 s) before it
/// expires and after [`TokenSource::invalidate`].
pub struct ClientCredentialsSource {
    oauth: OAuthClient,
    scope: Option<String>,
    cache: TokenCache,
}

impl fmt::Debug for ClientCredentialsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsSource")
            .field("oauth", &self.oauth)
            .field("scope", &self.scope)
            .field("expires_at", &self.cache.expires_at())
            .finish()
    }
}

impl ClientCredentialsSource {
    /// Asks for `scope` (space-separated; `None` = the client's default scopes).
    pub fn new(oauth: OAuthClient, scope: Option<String>) -> Self {
        ClientCredentialsSource {
            oauth,
            scope,
            cache: TokenCache::new(),
        }
    }
}

cached_source_builders!(ClientCredentialsSource);

impl TokenSource for ClientCredentialsSource {
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
        Box::pin(async move {
            self.cache
                .get(&self.oauth, || {
                    self.oauth.client_credentials(self.scope.as_deref())
                })
                .await
        })
    }

    cache_plumbing!();

    fn describe(&self) -> String {
        format!(
            "OAuth client credentials ({}, client id {})",
            self.oauth.provider().name,
            self.oauth.client_id()
        )
    }
}

// ---------------------------------------------------------------------------------------------

/// OAuth refresh token ("standard" mode). Caches the access token like
/// [`ClientCredentialsSource`]; refreshes with the stored refresh token; a rotated refresh
/// token goes to the [`RefreshTokenSink`] before the new access token is used. A refusal
/// (`invalid_grant`) becomes [`AuthError::AccountTokenExpired`] and sticks: later calls fail the
/// same way without asking the provider again — unless the source logs in with a password
/// ([`RefreshTokenSource::password`]), which then simply logs in again.
pub struct RefreshTokenSource {
    oauth: OAuthClient,
    /// `None` until a password login returned one (or after it was refused).
    refresh_token: Mutex<Option<SecretString>>,
    sink: Arc<dyn RefreshTokenSink>,
    scope: Option<String>,
    cache: TokenCache,
    /// The `detail` of the refusal once the refresh token is known dead.
    dead: Mutex<Option<String>>,
    /// User name and password for the password grant, when the source logs in by itself.
    login: Option<(String, SecretString)>,
}

impl fmt::Debug for RefreshTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenSource")
            .field("oauth", &self.oauth)
            .field("refresh_token", &"[REDACTED]")
            .field("user", &self.login.as_ref().map(|(user, _)| user))
            .field("scope", &self.scope)
            .field("expires_at", &self.cache.expires_at())
            .finish()
    }
}

impl RefreshTokenSource {
    /// Refreshes with `refresh_token`; rotated ones go to `sink`.
    pub fn new(
        oauth: OAuthClient,
        refresh_token: SecretString,
        sink: Arc<dyn RefreshTokenSink>,
    ) -> Self {
        RefreshTokenSource {
            oauth,
            refresh_token: Mutex::new(Some(refresh_token)),
            sink,
            scope: None,
            cache: TokenCache::new(),
            dead: Mutex::new(None),
            login: None,
        }
    }

    /// The resource-owner password grant (ServiceNow): logs in as `username`, then refreshes with
    /// the refresh token that returned; a refused refresh logs in again. Rotated refresh tokens
    /// go to `sink` like those of [`RefreshTokenSource::new`].
    pub fn password(
        oauth: OAuthClient,
        username: impl Into<String>,
        password: SecretString,
        sink: Arc<dyn RefreshTokenSink>,
    ) -> Self {
        RefreshTokenSource {
            oauth,
            refresh_token: Mutex::new(None),
            sink,
            scope: None,
            cache: TokenCache::new(),
            dead: Mutex::new(None),
            login: Some((username.into(), password)),
        }
    }

    /// Narrows the access tokens to `scope` on each refresh (optional).
    pub fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope;
        self
    }

    /// The refresh token in use (the latest rotation); `None` before a password login.
    pub fn refresh_token(&self) -> Option<SecretString> {
        lock(&self.refresh_token).clone()
    }

    fn expired_error(&self, detail: String) -> AuthError {
        AuthError::AccountTokenExpired {
            connection: self.oauth.connection().to_string(),
            detail,
            reauthorize: self.oauth.reauthorize_command().to_string(),
        }
    }

    async fn refresh_once(&self) -> Result<TokenResponse, AuthError> {
        // A caller that queued behind a refusal must not send the dead token again.
        if let Some(detail) = lock(&self.dead).clone() {
            return Err(self.expired_error(detail));
        }
        let current = lock(&self.refresh_token).clone();
        let refreshed = match &current {
            Some(rt) => match self.oauth.refresh(rt, self.scope.as_deref()).await {
                Ok(r) => Some(r),
                // A password login simply logs in again.
                Err(AuthError::AccountTokenExpired { .. }) if self.login.is_some() => None,
                Err(AuthError::AccountTokenExpired { detail, .. }) => {
                    *lock(&self.dead) = Some(detail.clone());
                    return Err(self.expired_error(detail));
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let resp = match (refreshed, &self.login) {
            (Some(r), _) => r,
            (None, Some((username, password))) => {
                self.oauth
                    .password(username, password, self.scope.as_deref())
                    .await?
            }
            (None, None) => return Err(self.expired_error("no refresh token".into())),
        };
        if let Some(new) = &resp.refresh_token
            && current
                .as_ref()
                .is_none_or(|c| new.expose_secret() != c.expose_secret())
        {
            // The old refresh token is dead from now on: keep the new one in memory whatever
            // happens, and persist it before anything uses the new access token.
            *lock(&self.refresh_token) = Some(new.clone());
            if let Err(source) = self.sink.save(new) {
                return Err(AuthError::RefreshTokenNotSaved {
                    connection: self.oauth.connection().to_string(),
                    source,
                    reauthorize: self.oauth.reauthorize_command().to_string(),
                });
            }
            tracing::debug!(connection = %self.oauth.connection(), "refresh token rotated and saved");
        }
        Ok(resp)
    }
}

cached_source_builders!(RefreshTokenSource);

impl TokenSource for RefreshTokenSource {
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
        Box::pin(async move {
            if let Some(detail) = lock(&self.dead).clone() {
                return Err(self.expired_error(detail));
            }
            self.cache.get(&self.oauth, || self.refresh_once()).await
        })
    }

    cache_plumbing!();

    fn describe(&self) -> String {
        match &self.login {
            Some((user, _)) => format!(
                "OAuth password grant ({}, client id {}, user {user})",
                self.oauth.provider().name,
                self.oauth.client_id(),
            ),
            None => format!(
                "OAuth refresh token ({}, client id {}, connection {})",
                self.oauth.provider().name,
                self.oauth.client_id(),
                self.oauth.connection()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// An OAuth source with an API token behind it, as the ServiceNow spoke's connection holds
/// both: the OAuth token comes first; only when the OAuth client cannot get a token at all (the
/// token endpoint refuses the client or its scope — not a network or server failure, which is
/// retried as usual) are calls made with the API token. The switch is logged once, and
/// [`TokenSource::describe`] says so from then on, so a "Save & Test" shows it.
pub struct WithApiTokenFallback {
    primary: Arc<dyn TokenSource>,
    fallback: ApiTokenSource,
    /// Why the OAuth client was given up on, once it was.
    refused: Mutex<Option<String>>,
}

impl WithApiTokenFallback {
    /// `primary` first, `fallback` when it cannot get a token.
    pub fn new(primary: Arc<dyn TokenSource>, fallback: ApiTokenSource) -> WithApiTokenFallback {
        WithApiTokenFallback {
            primary,
            fallback,
            refused: Mutex::new(None),
        }
    }
}

impl fmt::Debug for WithApiTokenFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithApiTokenFallback")
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

impl TokenSource for WithApiTokenFallback {
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
        Box::pin(async move {
            match self.primary.authorization().await {
                Ok(h) => Ok(h),
                Err(e) if e.is_retryable() => Err(e),
                Err(e) => {
                    {
                        let mut refused = lock(&self.refused);
                        if refused.is_none() {
                            tracing::warn!(error = %e, "the OAuth client cannot get a token; calls use the connection's API token");
                            *refused = Some(e.to_string());
                        }
                    }
                    self.fallback.authorization().await
                }
            }
        })
    }

    fn invalidate(&self) {
        self.primary.invalidate();
    }

    fn invalidate_stale(&self, sent: &AuthHeader) {
        self.primary.invalidate_stale(sent);
    }

    fn expires_at(&self) -> Option<SystemTime> {
        match *lock(&self.refused) {
            Some(_) => None,
            None => self.primary.expires_at(),
        }
    }

    fn describe(&self) -> String {
        match &*lock(&self.refused) {
            Some(why) => format!(
                "{} (fallback: the OAuth client could not get a token: {why})",
                self.fallback.describe()
            ),
            None => format!(
                "{} (an API token is kept as fallback)",
                self.primary.describe()
            ),
        }
    }
}
