//! Salesforce's side of OAuth 2.0, on the one stack of `xmbridge-auth`: the connected app
//! ([`OAuthApp`]: web-server flow with PKCE, refresh with rotation handed to a [`RefreshSink`])
//! and server-to-server [`ClientCredentials`] become [`OAuthClient`]s carrying Salesforce's
//! quirks ([`ProviderHooks`]: each token answer names the instance URL, there is no
//! `expires_in`, a refused client-credentials grant means re-authorize); the [`TokenProvider`]
//! hands the REST client a session (header and instance URL) and renews it once per 401,
//! single-flight. `xmbridge account link` logs in through [`OAuthApp::oauth_client`], the same
//! client the account then runs on.

use crate::error::SalesforceError;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use xmbridge_auth::{
    AuthError, AuthHeader, ClientAuth, ClientCredentialsSource, Grant, OAuthClient, OAuthProvider,
    ProviderHooks, RefreshTokenSource, Refusal, TokenSource,
};

/// Where a rotated refresh token goes: the caller persists it (atomically with its account
/// record) before the client uses the new access token; an error stops the call.
pub use xmbridge_auth::RefreshTokenSink as RefreshSink;

/// The connected app (or external client app) and the org's login host.
#[derive(Clone)]
pub struct OAuthApp {
    /// `https://login.salesforce.com`, `https://test.salesforce.com` or the org's My Domain.
    pub login_url: String,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret.
    pub client_secret: SecretString,
    /// The callback URL registered on the connected app.
    pub redirect_uri: String,
}

impl fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthApp")
            .field("login_url", &self.login_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// Server-to-server: client id, secret and the token endpoint URL (client-credentials flow).
#[derive(Clone)]
pub struct ClientCredentials {
    /// The org's token endpoint (`https://MYDOMAIN.my.salesforce.com/services/oauth2/token`).
    pub token_url: String,
    /// The app's consumer key.
    pub client_id: String,
    /// The app's consumer secret.
    pub client_secret: SecretString,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish()
    }
}

/// The token endpoint's answer as Salesforce shapes it. No `expires_in`: Salesforce tokens
/// live until a 401.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token for API calls.
    pub access_token: SecretString,
    #[serde(default)]
    /// A refresh token, when the app's scopes grant one (`refresh_token` scope).
    pub refresh_token: Option<SecretString>,
    /// The org's instance URL, the base of every API call.
    pub instance_url: String,
    /// The identity URL of the user and org that authorized.
    pub id: String,
    #[serde(default)]
    /// When the token was issued, epoch milliseconds as a string.
    pub issued_at: String,
    #[serde(default)]
    /// Salesforce's HMAC over `id` and `issued_at` (see [`verify_signature`]).
    pub signature: String,
    #[serde(default)]
    /// The granted scopes, space-separated.
    pub scope: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("instance_url", &self.instance_url)
            .field("id", &self.id)
            .field("issued_at", &self.issued_at)
            .field("scope", &self.scope)
            .finish()
    }
}

impl TryFrom<xmbridge_auth::TokenResponse> for TokenResponse {
    type Error = SalesforceError;

    fn try_from(t: xmbridge_auth::TokenResponse) -> Result<Self, SalesforceError> {
        let text = |k: &str| t.extra_str(k).map(str::to_string);
        let required = |k: &str| {
            text(k).ok_or_else(|| {
                SalesforceError::protocol(format!("token response: missing field `{k}`"))
            })
        };
        Ok(TokenResponse {
            instance_url: required("instance_url")?,
            id: required("id")?,
            issued_at: text("issued_at").unwrap_or_default(),
            signature: text("signature").unwrap_or_default(),
            scope: t.scope.clone(),
            refresh_token: t.refresh_token.clone(),
            access_token: t.access_token,
        })
    }
}

/// Checks `signature` = base64 HMAC-SHA256(client secret, id + issued_at): the identity URL
/// was not altered on the way.
pub fn verify_signature(secret: &SecretString, t: &TokenResponse) -> bool {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
    else {
        return false;
    };
    mac.update(t.id.as_bytes());
    mac.update(t.issued_at.as_bytes());
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(&t.signature) else {
        return false;
    };
    mac.verify_slice(&sig).is_ok()
}

/// PKCE S256 of `verifier` (the one derivation, shared with every provider).
pub use xmbridge_auth::pkce_challenge;

/// One authorization attempt: the URL to open, and the `state` and PKCE verifier to keep.
pub struct AuthorizeRequest {
    /// The authorization URL for the user to open.
    pub url: String,
    /// The random `state` the callback must return unchanged.
    pub state: String,
    /// The PKCE code verifier, sent with the code exchange.
    pub verifier: SecretString,
}

impl fmt::Debug for AuthorizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeRequest")
            .field("url", &self.url)
            .field("state", &self.state)
            .field("verifier", &"[REDACTED]")
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Salesforce's quirks on the shared OAuth stack.
#[derive(Debug, Default)]
struct SalesforceHooks {
    /// The instance URL of the last token answer: the REST calls go there.
    instance_url: Mutex<Option<String>>,
    /// Renew a token once it is this old (Salesforce sends no `expires_in`).
    max_age: Mutex<Option<Duration>>,
}

impl ProviderHooks for SalesforceHooks {
    fn on_token(
        &self,
        _grant: Grant,
        token: &xmbridge_auth::TokenResponse,
    ) -> Result<(), AuthError> {
        let url = token
            .extra_str("instance_url")
            .ok_or_else(|| AuthError::BadResponse {
                provider: "Salesforce".into(),
                detail: "the token answer names no instance_url".into(),
            })?;
        *lock(&self.instance_url) = Some(url.to_string());
        Ok(())
    }

    fn assumed_lifetime(&self) -> Option<Duration> {
        *lock(&self.max_age)
    }

    fn refusal(&self, grant: Grant, _status: u16, error: &str, detail: &str) -> Option<Refusal> {
        match (grant, error) {
            // A refused client-credentials grant cannot heal by retrying: same meaning as a
            // dead refresh token for the account.
            (Grant::ClientCredentials, "invalid_grant") => Some(Refusal::AccountTokenExpired),
            // Salesforce says invalid_grant for more than a dead refresh token (IP ranges,
            // a locked user); only "expired" means re-authorize.
            (Grant::RefreshToken, "invalid_grant") if !detail.contains("expired") => {
                Some(Refusal::Plain)
            }
            _ => None,
        }
    }
}

/// An [`OAuthClient`] of Salesforce's token endpoint `token_url` (form-field client
/// authentication, Salesforce's hooks).
fn salesforce_client(
    token_url: &str,
    authorize_url: Option<&str>,
    client_id: &str,
    client_secret: &SecretString,
    hooks: Arc<SalesforceHooks>,
) -> Result<OAuthClient, SalesforceError> {
    let parse = |what: &str, u: &str| {
        url::Url::parse(u).map_err(|e| SalesforceError::protocol_from(format!("{what}: {e}"), e))
    };
    let provider = OAuthProvider::new(
        "Salesforce",
        parse("token URL", token_url)?,
        authorize_url.map(|u| parse("login URL", u)).transpose()?,
        ClientAuth::FormFields,
    )?;
    Ok(OAuthClient::new(provider, client_id, client_secret.clone())?.with_hooks(hooks))
}

impl OAuthApp {
    fn base(&self) -> &str {
        self.login_url.trim_end_matches('/')
    }

    fn oauth_with(&self, hooks: Arc<SalesforceHooks>) -> Result<OAuthClient, SalesforceError> {
        salesforce_client(
            &format!("{}/services/oauth2/token", self.base()),
            Some(&format!("{}/services/oauth2/authorize", self.base())),
            &self.client_id,
            &self.client_secret,
            hooks,
        )
    }

    /// The app as an [`OAuthClient`] of the shared stack, with Salesforce's quirks: the login
    /// (`xmbridge account link`) and the running account use this same client.
    pub fn oauth_client(&self) -> Result<OAuthClient, SalesforceError> {
        self.oauth_with(Arc::default())
    }

    /// The authorization URL with a random `state` and a PKCE S256 challenge.
    pub fn authorize(&self, scope: &str) -> Result<AuthorizeRequest, SalesforceError> {
        let state = xmbridge_auth::random_token(24)
            .map_err(|e| SalesforceError::protocol_from(e.to_string(), e))?;
        let verifier = xmbridge_auth::random_token(48)
            .map_err(|e| SalesforceError::protocol_from(e.to_string(), e))?;
        let url = self.oauth_client()?.authorize_url(
            &self.redirect_uri,
            Some(scope),
            state.expose_secret(),
            Some(&pkce_challenge(verifier.expose_secret())),
            &[],
        )?;
        Ok(AuthorizeRequest {
            url: url.to_string(),
            state: state.expose_secret().to_string(),
            verifier,
        })
    }

    /// Exchanges the callback's code (with the PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &SecretString,
    ) -> Result<TokenResponse, SalesforceError> {
        let t = self
            .oauth_client()?
            .with_http_client(http.clone())
            .authorization_code(
                &SecretString::from(code.to_string()),
                &self.redirect_uri,
                Some(verifier),
            )
            .await?;
        t.try_into()
    }

    /// One refresh with `refresh_token` (the [`TokenProvider`] does this on its own).
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, SalesforceError> {
        let t = self
            .oauth_client()?
            .with_http_client(http.clone())
            .refresh(refresh_token, None)
            .await?;
        t.try_into()
    }
}

impl ClientCredentials {
    /// The server-to-server client as an [`OAuthClient`] of the shared stack, with Salesforce's
    /// quirks: linking the account and running it use this same client.
    pub fn oauth_client(&self) -> Result<OAuthClient, SalesforceError> {
        self.oauth_with(Arc::default())
    }

    fn oauth_with(&self, hooks: Arc<SalesforceHooks>) -> Result<OAuthClient, SalesforceError> {
        salesforce_client(
            &self.token_url,
            None,
            &self.client_id,
            &self.client_secret,
            hooks,
        )
    }

    /// One client-credentials token call.
    pub async fn token(&self, http: &reqwest::Client) -> Result<TokenResponse, SalesforceError> {
        let t = self
            .oauth_client()?
            .with_http_client(http.clone())
            .client_credentials(None)
            .await?;
        t.try_into()
    }
}

enum Source {
    WebServer(RefreshTokenSource),
    ClientCredentials(ClientCredentialsSource),
    /// The settings could not make a client; every call reports why.
    Broken(String),
}

/// A session for one REST call: the `Authorization` header and where to send it.
#[derive(Clone)]
pub(crate) struct Session {
    pub header: AuthHeader,
    pub instance_url: String,
}

/// Hands out access tokens and renews them: by refresh token (web-server flow) or by asking
/// again (client credentials), through the shared token sources of `xmbridge-auth`. Renewal is
/// single-flight: concurrent 401s cause one refresh.
pub struct TokenProvider {
    source: Source,
    hooks: Arc<SalesforceHooks>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            Source::WebServer(_) => "web-server",
            Source::ClientCredentials(_) => "client-credentials",
            Source::Broken(_) => "unusable",
        };
        write!(f, "TokenProvider({kind}, tokens redacted)")
    }
}

impl TokenProvider {
    /// Web-server flow: a stored refresh token; rotated ones go to `sink`.
    pub fn web_server(
        http: reqwest::Client,
        app: OAuthApp,
        refresh_token: SecretString,
        sink: Option<Arc<dyn RefreshSink>>,
    ) -> Self {
        let hooks = Arc::new(SalesforceHooks::default());
        let sink: Arc<dyn RefreshSink> = match sink {
            Some(sink) => sink,
            // Nobody stores rotations: the new token lives in memory only.
            None => Arc::new(|_: &SecretString| -> Result<(), xmbridge_auth::SinkError> { Ok(()) }),
        };
        let source = match app.oauth_with(hooks.clone()) {
            Ok(oauth) => Source::WebServer(
                RefreshTokenSource::new(oauth.with_http_client(http), refresh_token, sink)
                    .with_refresh_margin(Duration::ZERO),
            ),
            Err(e) => Source::Broken(e.to_string()),
        };
        TokenProvider { source, hooks }
    }

    /// Client-credentials flow: a new token whenever the current one is refused.
    pub fn client_credentials(http: reqwest::Client, creds: ClientCredentials) -> Self {
        let hooks = Arc::new(SalesforceHooks::default());
        let source = match creds.oauth_with(hooks.clone()) {
            Ok(oauth) => Source::ClientCredentials(
                ClientCredentialsSource::new(oauth.with_http_client(http), None)
                    .with_refresh_margin(Duration::ZERO),
            ),
            Err(e) => Source::Broken(e.to_string()),
        };
        TokenProvider { source, hooks }
    }

    /// Starts with an access token already in hand (e.g. right after the code exchange).
    pub async fn with_access(mut self, access_token: SecretString, instance_url: String) -> Self {
        let lifetime = *lock(&self.hooks.max_age);
        let kept = match self.source {
            Source::WebServer(s) => s
                .with_access_token(&access_token, lifetime)
                .map(Source::WebServer),
            Source::ClientCredentials(s) => s
                .with_access_token(&access_token, lifetime)
                .map(Source::ClientCredentials),
            broken @ Source::Broken(_) => Ok(broken),
        };
        self.source = match kept {
            Ok(s) => s,
            // A token that cannot go into a header is useless; the first call gets a new one.
            Err(e) => Source::Broken(e.to_string()),
        };
        *lock(&self.hooks.instance_url) = Some(instance_url);
        self
    }

    /// Renews proactively once the access token is older than `age`, instead of waiting for a
    /// 401 (the contract's advice, since Salesforce sends no `expires_in`). Call it before
    /// [`Self::with_access`].
    pub fn with_max_age(self, age: Duration) -> Self {
        *lock(&self.hooks.max_age) = Some(age);
        self
    }

    /// The token source (renewed once per 401 by the client, `xmbridge_auth::RefreshOnce`).
    pub(crate) fn tokens(&self) -> Result<&dyn TokenSource, SalesforceError> {
        match &self.source {
            Source::WebServer(s) => Ok(s),
            Source::ClientCredentials(s) => Ok(s),
            Source::Broken(why) => Err(SalesforceError::protocol(why.clone())),
        }
    }

    pub(crate) async fn current(&self) -> Result<Session, SalesforceError> {
        let source = self.tokens()?;
        let header = source.authorization().await?;
        let instance_url = lock(&self.hooks.instance_url).clone().ok_or_else(|| {
            SalesforceError::protocol("no instance URL is known for this account")
        })?;
        Ok(Session {
            header,
            instance_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let app = OAuthApp {
            login_url: "http://127.0.0.1:1".into(),
            client_id: "cid".into(),
            client_secret: SecretString::from("s3cr3t-value"),
            redirect_uri: "http://127.0.0.1/cb".into(),
        };
        assert!(!format!("{app:?}").contains("s3cr3t"));
        let t: TokenResponse = serde_json::from_str(
            r#"{"access_token":"00D!tok-value","refresh_token":"5Aep-value","instance_url":"x","id":"i","issued_at":"1","signature":"s"}"#,
        )
        .unwrap();
        let d = format!("{t:?}");
        assert!(!d.contains("tok-value") && !d.contains("5Aep-value"), "{d}");
        let p = TokenProvider::web_server(
            reqwest::Client::new(),
            app.clone(),
            SecretString::from("5Aep-value"),
            None,
        );
        assert!(!format!("{p:?}").contains("5Aep"));
        let a = app.authorize("api refresh_token").unwrap();
        assert!(a.url.contains("code_challenge_method=S256"));
        assert!(!format!("{a:?}").contains(a.verifier.expose_secret()));
    }

    #[test]
    fn signature_checks_id_and_issued_at() {
        let secret = SecretString::from("k");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(b"https://x/id/00D/005");
        mac.update(b"123");
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut t: TokenResponse = serde_json::from_value(serde_json::json!({
            "access_token":"a","instance_url":"x","id":"https://x/id/00D/005","issued_at":"123","signature":sig
        }))
        .unwrap();
        assert!(verify_signature(&secret, &t));
        t.id.push('9');
        assert!(!verify_signature(&secret, &t));
    }

    #[test]
    fn expired_refresh_is_token_expired() {
        let hooks = SalesforceHooks::default();
        // The generic reading of invalid_grant on a refresh: the account token expired.
        assert_eq!(
            hooks.refusal(
                Grant::RefreshToken,
                400,
                "invalid_grant",
                "expired access/refresh token"
            ),
            None
        );
        let e = SalesforceError::from(AuthError::AccountTokenExpired {
            connection: "c".into(),
            detail: "invalid_grant: expired access/refresh token".into(),
            reauthorize: "xmbridge account link c --refresh".into(),
        });
        assert!(matches!(e, SalesforceError::TokenExpired { .. }));
        assert!(e.to_string().starts_with("account token expired"));
        assert_eq!(
            hooks.refusal(
                Grant::RefreshToken,
                400,
                "invalid_grant",
                "authentication failure"
            ),
            Some(Refusal::Plain)
        );
        assert_eq!(
            hooks.refusal(Grant::ClientCredentials, 400, "invalid_grant", "no"),
            Some(Refusal::AccountTokenExpired)
        );
        let e = SalesforceError::from(AuthError::InvalidClient {
            provider: "Salesforce".into(),
            detail: "invalid client credentials".into(),
        });
        assert!(matches!(e, SalesforceError::OAuth { ref error, .. } if error == "invalid_client"));
    }
}
