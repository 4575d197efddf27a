//! Hand-written OAuth 2.0 token calls (RFC 6749), generic over the provider: client credentials,
//! authorization code (with optional PKCE) and refresh, plus the authorize URL. It owns the
//! token endpoint's wire format and the mapping of its error answers to [`AuthError`]; it must
//! not cache tokens (see `source.rs`) nor call any API besides the token endpoint.

use crate::error::AuthError;
use crate::retry::{Jitter, RetryPolicy, StatusClass};
use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-url-encoded id and secret (RFC 6749 §2.3.1); Qualtrics.
    Basic,
    /// `client_id` and `client_secret` as form fields (Salesforce, ServiceNow accept this).
    FormFields,
}

/// Where a provider's OAuth endpoints are and how clients authenticate there.
#[derive(Clone, Debug)]
pub struct OAuthProvider {
    /// For people and error messages (`Qualtrics`, `Salesforce` …).
    pub name: String,
    /// The token endpoint.
    pub token_url: Url,
    /// The authorization endpoint, for the authorization-code flow.
    pub authorize_url: Option<Url>,
    /// Client authentication at the token endpoint.
    pub client_auth: ClientAuth,
}

impl OAuthProvider {
    /// A provider; refuses plain `http` except on loopback.
    pub fn new(
        name: impl Into<String>,
        token_url: Url,
        authorize_url: Option<Url>,
        client_auth: ClientAuth,
    ) -> Result<Self, AuthError> {
        crate::check_credential_url("token URL", &token_url)?;
        if let Some(a) = &authorize_url {
            crate::check_credential_url("authorize URL", a)?;
        }
        Ok(OAuthProvider {
            name: name.into(),
            token_url,
            authorize_url,
            client_auth,
        })
    }

    /// Qualtrics at `base` (`https://fra1.qualtrics.com`, or a loopback simulator's base URL):
    /// `{base}/oauth2/token` and `{base}/oauth2/auth`, HTTP Basic client authentication.
    pub fn qualtrics(base: &Url) -> Result<Self, AuthError> {
        let join = |p: &str| {
            base.join(p).map_err(|e| {
                AuthError::Config(format!(
                    "cannot build the Qualtrics OAuth URL from {base}: {e}"
                ))
            })
        };
        Self::new(
            "Qualtrics",
            join("/oauth2/token")?,
            Some(join("/oauth2/auth")?),
            ClientAuth::Basic,
        )
    }

    /// Qualtrics in data center `dc` (`fra1`, `iad1` …): `https://{dc}.qualtrics.com`.
    pub fn qualtrics_datacenter(dc: &str) -> Result<Self, AuthError> {
        if dc.is_empty()
            || !dc
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(AuthError::Config(format!(
                "'{dc}' is not a Qualtrics data center id (lower-case letters and digits, e.g. fra1)"
            )));
        }
        let base = Url::parse(&format!("https://{dc}.qualtrics.com/"))
            .map_err(|e| AuthError::Config(format!("bad data center '{dc}': {e}")))?;
        Self::qualtrics(&base)
    }
}

/// A token endpoint answer. `Debug` shows no token (and only the keys of `extra`).
#[derive(Clone)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: SecretString,
    /// `Bearer` in practice.
    pub token_type: String,
    /// Lifetime in seconds, when the provider says (Salesforce does not).
    pub expires_in: Option<u64>,
    /// Granted scopes, space-separated.
    pub scope: Option<String>,
    /// A (new) refresh token, when the grant returns one.
    pub refresh_token: Option<SecretString>,
    /// Every other field (Salesforce's `instance_url`, `id`, `signature` …).
    pub extra: Map<String, Value>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenResponse {
    /// A string field of `extra` (e.g. `instance_url`).
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }

    /// Parses a 2xx body. Errors never quote the body: it holds tokens.
    pub(crate) fn parse(provider: &str, body: &[u8]) -> Result<Self, AuthError> {
        let bad = |detail: String| AuthError::BadResponse {
            provider: provider.to_string(),
            detail,
        };
        let mut map = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("the answer is JSON but not an object".into())),
            Err(_) => {
                return Err(bad(format!(
                    "the answer is not JSON ({} bytes)",
                    body.len()
                )));
            }
        };
        let access_token = match map.remove("access_token") {
            Some(Value::String(s)) if !s.is_empty() => SecretString::from(s),
            _ => {
                let keys: Vec<_> = map.keys().cloned().collect();
                return Err(bad(format!(
                    "no access_token in the answer (fields: {})",
                    keys.join(", ")
                )));
            }
        };
        let token_type = match map.remove("token_type") {
            Some(Value::String(s)) => s,
            _ => "Bearer".to_string(),
        };
        // Some providers send the lifetime as a string.
        let expires_in = match map.remove("expires_in") {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let scope = match map.remove("scope") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let refresh_token = match map.remove("refresh_token") {
            Some(Value::String(s)) if !s.is_empty() => Some(SecretString::from(s)),
            _ => None,
        };
        Ok(TokenResponse {
            access_token,
            token_type,
            expires_in,
            scope,
            refresh_token,
            extra: map,
        })
    }
}

/// The grant a token call uses; decides how `invalid_grant` reads and whether a lost answer
/// may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Grant {
    /// `client_credentials`
    ClientCredentials,
    /// `authorization_code`
    AuthorizationCode,
    /// `refresh_token`
    RefreshToken,
    /// `password` (ServiceNow's resource-owner grant)
    Password,
}

impl Grant {
    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::AuthorizationCode => "authorization_code",
            Grant::RefreshToken => "refresh_token",
            Grant::Password => "password",
        }
    }
}

/// How a provider wants a refusal of its token endpoint read (see [`ProviderHooks::refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The account's grant is dead: [`AuthError::AccountTokenExpired`] (re-authorize).
    AccountTokenExpired,
    /// A plain [`AuthError::OAuth`] answer, whatever its error code.
    Plain,
}

/// A provider's quirks, plugged into its [`OAuthClient`]: what differs between providers beyond
/// the endpoints and the client authentication. Every method has the RFC 6749 default.
pub trait ProviderHooks: Send + Sync + fmt::Debug {
    /// A token answer arrived for `grant`: check it, or keep what the provider adds to it
    /// (Salesforce's `instance_url`). An error rejects the answer.
    fn on_token(&self, grant: Grant, token: &TokenResponse) -> Result<(), AuthError> {
        let _ = (grant, token);
        Ok(())
    }

    /// The lifetime to assume when an answer carries no `expires_in` (`None`: until a 401).
    fn assumed_lifetime(&self) -> Option<Duration> {
        None
    }

    /// A 4xx answer of the token endpoint (`error`, `error_description`): `Some` overrides the
    /// generic reading.
    fn refusal(&self, grant: Grant, status: u16, error: &str, detail: &str) -> Option<Refusal> {
        let _ = (grant, status, error, detail);
        None
    }
}

/// An OAuth client of one provider: id, secret, HTTP client (possibly carrying a mutual-TLS
/// identity) and the connection it serves (for error messages). `Debug` shows no secret.
#[derive(Clone)]
pub struct OAuthClient {
    provider: OAuthProvider,
    client_id: String,
    client_secret: SecretString,
    http: reqwest::Client,
    retry: RetryPolicy,
    jitter: Arc<Jitter>,
    hooks: Option<Arc<dyn ProviderHooks>>,
    connection: String,
    reauthorize: String,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("provider", &self.provider.name)
            .field("token_url", &self.provider.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("connection", &self.connection)
            .finish()
    }
}

/// Timeouts of the default HTTP client: token calls are small.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `Authorization` value for a bearer token, marked sensitive.
pub(crate) fn bearer_header(token: &SecretString) -> Result<HeaderValue, AuthError> {
    let v = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
    let mut h = HeaderValue::from_str(&v).map_err(|_| {
        AuthError::Other(
            "the access token contains characters that cannot go into an HTTP header".into(),
        )
    })?;
    h.set_sensitive(true);
    Ok(h)
}

impl OAuthClient {
    /// A client with a default HTTP client (30 s timeout, no redirects). Its connection name
    /// defaults to the provider's name; set it with [`OAuthClient::for_connection`].
    pub fn new(
        provider: OAuthProvider,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Result<Self, AuthError> {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_TIMEOUT)
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthError::Config(format!("cannot set up the HTTP client: {e}")))?;
        let connection = provider.name.clone();
        Ok(OAuthClient {
            reauthorize: format!("xmbridge connection authorize {connection}"),
            provider,
            client_id: client_id.into(),
            client_secret,
            http,
            retry: RetryPolicy::token_endpoint(),
            jitter: Arc::new(Jitter::from_time()),
            hooks: None,
            connection,
        })
    }

    /// Uses `http` for token calls, e.g. one built with [`crate::http_client_builder`] that
    /// carries a client identity. Give it timeouts; redirects should be off.
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Retry policy for 5xx/429 and connection failures (default
    /// [`RetryPolicy::token_endpoint`]; 429s count on [`RetryPolicy::max_retries`] here).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Plugs in the provider's quirks.
    pub fn with_hooks(mut self, hooks: Arc<dyn ProviderHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The provider's quirks, if any were plugged in.
    pub fn hooks(&self) -> Option<&Arc<dyn ProviderHooks>> {
        self.hooks.as_ref()
    }

    /// Names the connection in errors; the re-authorize command becomes
    /// `xmbridge connection authorize NAME`.
    pub fn for_connection(mut self, name: impl Into<String>) -> Self {
        self.connection = name.into();
        self.reauthorize = format!("xmbridge connection authorize {}", self.connection);
        self
    }

    /// Overrides the command quoted by [`AuthError::AccountTokenExpired`].
    pub fn with_reauthorize_command(mut self, command: impl Into<String>) -> Self {
        self.reauthorize = command.into();
        self
    }

    /// The provider.
    pub fn provider(&self) -> &OAuthProvider {
        &self.provider
    }

    /// The client id (not a secret).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The connection name used in errors.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// The command that re-authorizes the connection.
    pub fn reauthorize_command(&self) -> &str {
        &self.reauthorize
    }

    /// `grant_type=client_credentials` with an optional space-separated `scope`.
    pub async fn client_credentials(
        &self,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let mut form = vec![(
            "grant_type",
            Zeroizing::new("client_credentials".to_string()),
        )];
        if let Some(s) = scope.filter(|s| !s.trim().is_empty()) {
            form.push(("scope", Zeroizing::new(s.to_string())));
        }
        self.token_call(Grant::ClientCredentials, form, scope).await
    }

    /// Exchanges an authorization code; `redirect_uri` must be the one sent to the authorize
    /// endpoint; `pkce_verifier` when the authorize URL carried a `code_challenge`.
    pub async fn authorization_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
        pkce_verifier: Option<&SecretString>,
    ) -> Result<TokenResponse, AuthError> {
        let mut form = vec![
            (
                "grant_type",
                Zeroizing::new("authorization_code".to_string()),
            ),
            ("code", Zeroizing::new(code.expose_secret().to_string())),
            ("redirect_uri", Zeroizing::new(redirect_uri.to_string())),
        ];
        if let Some(v) = pkce_verifier {
            form.push((
                "code_verifier",
                Zeroizing::new(v.expose_secret().to_string()),
            ));
        }
        self.token_call(Grant::AuthorizationCode, form, None).await
    }

    /// `grant_type=password` (the resource-owner grant ServiceNow offers), optional `scope`.
    pub async fn password(
        &self,
        username: &str,
        password: &SecretString,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let mut form = vec![
            ("grant_type", Zeroizing::new("password".to_string())),
            ("username", Zeroizing::new(username.to_string())),
            (
                "password",
                Zeroizing::new(password.expose_secret().to_string()),
            ),
        ];
        if let Some(s) = scope.filter(|s| !s.trim().is_empty()) {
            form.push(("scope", Zeroizing::new(s.to_string())));
        }
        self.token_call(Grant::Password, form, scope).await
    }

    /// `grant_type=refresh_token`; `scope` narrows the new access token (optional).
    /// `invalid_grant` becomes [`AuthError::AccountTokenExpired`].
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let mut form = vec![
            ("grant_type", Zeroizing::new("refresh_token".to_string())),
            (
                "refresh_token",
                Zeroizing::new(refresh_token.expose_secret().to_string()),
            ),
        ];
        if let Some(s) = scope.filter(|s| !s.trim().is_empty()) {
            form.push(("scope", Zeroizing::new(s.to_string())));
        }
        self.token_call(Grant::RefreshToken, form, scope).await
    }

    /// The authorize URL: `response_type=code`, `client_id`, `redirect_uri`, `scope`, `state`,
    /// PKCE S256 `code_challenge` when given, then `extra` parameters (e.g. `organization`).
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        scope: Option<&str>,
        state: &str,
        pkce_challenge: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<Url, AuthError> {
        let Some(base) = &self.provider.authorize_url else {
            return Err(AuthError::Config(format!(
                "{} has no authorization endpoint configured; this connection cannot use the authorization-code flow",
                self.provider.name
            )));
        };
        let mut url = base.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", redirect_uri);
            if let Some(s) = scope.filter(|s| !s.trim().is_empty()) {
                q.append_pair("scope", s);
            }
            q.append_pair("state", state);
            if let Some(c) = pkce_challenge {
                q.append_pair("code_challenge", c)
                    .append_pair("code_challenge_method", "S256");
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn basic_header(&self) -> Result<HeaderValue, AuthError> {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = Zeroizing::new(format!(
            "{}:{}",
            enc(&self.client_id),
            Zeroizing::new(enc(self.client_secret.expose_secret())).as_str()
        ));
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
        let mut h = HeaderValue::from_str(&format!("Basic {}", b64.as_str()))
            .map_err(|_| AuthError::Config("the client id cannot go into an HTTP header".into()))?;
        h.set_sensitive(true);
        Ok(h)
    }

    async fn token_call(
        &self,
        grant: Grant,
        mut form: Vec<(&'static str, Zeroizing<String>)>,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let auth = match self.provider.client_auth {
            ClientAuth::Basic => Some(self.basic_header()?),
            ClientAuth::FormFields => {
                form.push(("client_id", Zeroizing::new(self.client_id.clone())));
                form.push((
                    "client_secret",
                    Zeroizing::new(self.client_secret.expose_secret().to_string()),
                ));
                None
            }
        };
        let body = Zeroizing::new({
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &form {
                ser.append_pair(k, v);
            }
            ser.finish()
        });
        drop(form);
        let url = &self.provider.token_url;
        // Token calls count 429s with 5xx answers: one budget, `attempts` in the error.
        let attempts = self.retry.max_retries.saturating_add(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(body.as_bytes().to_vec());
            if let Some(a) = &auth {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = self.transport_error(&e);
                    // A connection that never opened is always safe to retry; a lost answer
                    // only for client credentials (a refresh or code may have been spent).
                    let safe = e.is_connect() || grant == Grant::ClientCredentials;
                    if safe && err.is_retryable() && attempt < attempts {
                        tracing::debug!(provider = %self.provider.name, attempt, "token call failed, retrying: {err}");
                        tokio::time::sleep(self.retry.delay(attempt - 1, None, &self.jitter)).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = resp.status();
            if StatusClass::of(status.as_u16()).is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
            {
                let retry_after = crate::retry::retry_after(resp.headers());
                if attempt < attempts {
                    tracing::debug!(provider = %self.provider.name, attempt, %status, "token endpoint busy, retrying");
                    tokio::time::sleep(self.retry.delay(attempt - 1, retry_after, &self.jitter))
                        .await;
                    continue;
                }
                let bytes = resp.bytes().await.unwrap_or_default();
                let (error, detail) = error_body(&bytes);
                return Err(AuthError::Server {
                    provider: self.provider.name.clone(),
                    status: status.as_u16(),
                    attempts: attempt,
                    detail: format!("{error}: {detail}"),
                    retry_after,
                });
            }
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return Err(self.transport_error(&e)),
            };
            if status.is_success() {
                let token = TokenResponse::parse(&self.provider.name, &bytes)?;
                if let Some(h) = &self.hooks {
                    h.on_token(grant, &token)?;
                }
                return Ok(token);
            }
            return Err(self.error_answer(grant, status, &bytes, scope));
        }
    }

    /// Maps a 4xx answer (`{"error","error_description"}`) to a typed error.
    fn error_answer(
        &self,
        grant: Grant,
        status: StatusCode,
        body: &[u8],
        scope: Option<&str>,
    ) -> AuthError {
        let (error, detail) = error_body(body);
        let provider = self.provider.name.clone();
        let quirk = self
            .hooks
            .as_ref()
            .and_then(|h| h.refusal(grant, status.as_u16(), &error, &detail));
        match quirk {
            Some(Refusal::AccountTokenExpired) => {
                return AuthError::AccountTokenExpired {
                    connection: self.connection.clone(),
                    detail: format!("{error}: {detail}, HTTP {}", status.as_u16()),
                    reauthorize: self.reauthorize.clone(),
                };
            }
            Some(Refusal::Plain) => {
                return AuthError::OAuth {
                    provider,
                    status: status.as_u16(),
                    error,
                    detail,
                };
            }
            None => {}
        }
        match error.as_str() {
            "invalid_grant" if grant == Grant::RefreshToken => AuthError::AccountTokenExpired {
                connection: self.connection.clone(),
                detail: format!("invalid_grant: {detail}"),
                reauthorize: self.reauthorize.clone(),
            },
            "invalid_grant" if grant == Grant::AuthorizationCode => {
                AuthError::AuthorizationCodeRejected { provider, detail }
            }
            "invalid_scope" => AuthError::InvalidScope {
                provider,
                scope: scope
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or("(the client's default scopes)")
                    .to_string(),
                detail,
            },
            "unauthorized_client" => AuthError::UnauthorizedClient {
                provider,
                grant: grant.as_str().to_string(),
                detail,
            },
            // Salesforce says invalid_client_id; ServiceNow answers bad credentials with 401
            // and other codes.
            "invalid_client" | "invalid_client_id" | "invalid_client_credentials" => {
                AuthError::InvalidClient { provider, detail }
            }
            _ if status == StatusCode::UNAUTHORIZED => AuthError::InvalidClient {
                provider,
                detail: format!("{error}: {detail}"),
            },
            _ => AuthError::OAuth {
                provider,
                status: status.as_u16(),
                error,
                detail,
            },
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> AuthError {
        let url = self.provider.token_url.to_string();
        if is_tls_error(e) {
            tls_error(url, e)
        } else {
            AuthError::Network {
                provider: self.provider.name.clone(),
                url,
                detail: error_chain(e),
            }
        }
    }
}

/// A TLS failure with a hint told from rustls' wording: the server refused our certificate
/// (an alert), or we do not trust the server's (invalid peer certificate).
pub(crate) fn tls_error(url: String, e: &(dyn std::error::Error + 'static)) -> AuthError {
    let chain = error_chain(e);
    // The innermost cause is the TLS library's own words; the outer ones repeat the URL.
    let mut inner = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    let detail = inner.to_string();
    let hint = if chain.contains("invalid peer certificate") {
        "the server's certificate is not trusted; if the provider (or a simulator) uses a private CA, pass its CA certificate file"
    } else if chain.contains("alert") {
        "the server refused the client certificate; with mutual TLS it must be issued by the CA the provider trusts for this account (check the --cert/--key files, or add them if none are set)"
    } else {
        "check the client certificate and key, and that the server's certificate chains to a trusted CA"
    };
    AuthError::TlsHandshake {
        url,
        detail,
        hint: hint.to_string(),
    }
}

/// `(error, description)` of an OAuth error body; a non-JSON body gives a short excerpt.
fn error_body(body: &[u8]) -> (String, String) {
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        // Bounded: a provider may answer megabytes, which must not flood errors and logs.
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(crate::upstream_text);
        let error = s("error").unwrap_or_else(|| "error".into());
        let detail = s("error_description")
            .or_else(|| s("message"))
            .unwrap_or_else(|| "no description".into());
        return (error, detail);
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.trim().chars().take(200).collect();
    let excerpt = if excerpt.is_empty() {
        "empty answer".to_string()
    } else {
        excerpt
    };
    ("error".into(), excerpt)
}

/// The error and all its causes, `: `-joined (no request body is ever part of it).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// Whether a transport error came from TLS (a rustls error anywhere in the chain).
pub(crate) fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = s.source();
    }
    let text = error_chain(e).to_ascii_lowercase();
    ["handshake", "alert", "certificate", "tls"]
        .iter()
        .any(|k| text.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standard_and_extra_fields() {
        let body = br#"{"access_token":"abc","token_type":"Bearer","expires_in":"3600","scope":"a b","refresh_token":"r1","instance_url":"https://x"}"#;
        let t = TokenResponse::parse("P", body).unwrap();
        assert_eq!(t.access_token.expose_secret(), "abc");
        assert_eq!(t.expires_in, Some(3600));
        assert_eq!(t.extra_str("instance_url"), Some("https://x"));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("abc") && !dbg.contains("r1"), "{dbg}");
    }

    #[test]
    fn parse_errors_do_not_quote_the_body() {
        let e = TokenResponse::parse("P", br#"{"token":"sekrit"}"#).unwrap_err();
        assert!(!e.to_string().contains("sekrit"));
        let e = TokenResponse::parse("P", b"sekrit").unwrap_err();
        assert!(!e.to_string().contains("sekrit"));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(OAuthProvider::qualtrics(&u("http://127.0.0.1:8080")).is_ok());
        assert!(OAuthProvider::qualtrics(&u("http://fra1.localhost:8080")).is_ok());
        let e = OAuthProvider::qualtrics(&u("http://fra1.qualtrics.com")).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let p = OAuthProvider::qualtrics_datacenter("fra1").unwrap();
        assert_eq!(
            p.token_url.as_str(),
            "https://fra1.qualtrics.com/oauth2/token"
        );
        assert!(OAuthProvider::qualtrics_datacenter("fra1.evil.com/x").is_err());
    }
}
