//! OAuth 2.0 against a Salesforce org, written by hand (no `oauth2` crate): the web-server flow
//! with PKCE, refresh (with rotation: a new refresh token goes to the caller's [`RefreshSink`]
//! before it is used), client credentials, and the [`TokenProvider`] that hands access tokens
//! to the client and refreshes them once per 401, single-flight.

use crate::error::SalesforceError;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// The connected app (or external client app) and the org's login host.
#[derive(Clone)]
pub struct OAuthApp {
    /// `https://login.salesforce.com`, `https://test.salesforce.com` or the org's My Domain.
    pub login_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
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
    pub token_url: String,
    pub client_id: String,
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

/// The token endpoint's answer. No `expires_in`: Salesforce tokens live until a 401.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    pub instance_url: String,
    pub id: String,
    #[serde(default)]
    pub issued_at: String,
    #[serde(default)]
    pub signature: String,
    #[serde(default)]
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

/// PKCE S256: `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn random_token(bytes: usize) -> Result<String, SalesforceError> {
    let mut buf = vec![0u8; bytes];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| {
            SalesforceError::Protocol("the system random number generator failed".into())
        })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf))
}

/// One authorization attempt: the URL to open, and the `state` and PKCE verifier to keep.
pub struct AuthorizeRequest {
    pub url: String,
    pub state: String,
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

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Classifies a token-endpoint refusal: a dead refresh token is `TokenExpired`.
fn token_error(status: u16, body: &[u8]) -> SalesforceError {
    match serde_json::from_slice::<OAuthErrorBody>(body) {
        Ok(e) if e.error == "invalid_grant" && e.error_description.contains("expired") => {
            SalesforceError::TokenExpired {
                description: xmbridge_auth::upstream_text(&e.error_description),
            }
        }
        Ok(e) => SalesforceError::OAuth {
            error: xmbridge_auth::upstream_text(&e.error),
            description: xmbridge_auth::upstream_text(&e.error_description),
        },
        Err(_) if status >= 500 => SalesforceError::Transient {
            status: Some(status),
            message: "the token endpoint failed".into(),
        },
        Err(_) => SalesforceError::Protocol(format!("token endpoint answered HTTP {status}")),
    }
}

fn network(e: reqwest::Error) -> SalesforceError {
    SalesforceError::Transient {
        status: None,
        message: format!("network error: {}", e.without_url()),
    }
}

async fn post_token(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, SalesforceError> {
    let resp = http
        .post(url)
        .header("Accept", "application/json")
        .form(form)
        .send()
        .await
        .map_err(network)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(network)?;
    if status != 200 {
        return Err(token_error(status, &body));
    }
    serde_json::from_slice(&body)
        .map_err(|e| SalesforceError::Protocol(format!("token response: {e}")))
}

impl OAuthApp {
    fn token_url(&self) -> String {
        format!(
            "{}/services/oauth2/token",
            self.login_url.trim_end_matches('/')
        )
    }

    /// The authorization URL with a random `state` and a PKCE S256 challenge.
    pub fn authorize(&self, scope: &str) -> Result<AuthorizeRequest, SalesforceError> {
        let state = random_token(24)?;
        let verifier = random_token(48)?;
        let mut url = url::Url::parse(&format!(
            "{}/services/oauth2/authorize",
            self.login_url.trim_end_matches('/')
        ))
        .map_err(|e| SalesforceError::Protocol(format!("login URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", &state)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(AuthorizeRequest {
            url: url.to_string(),
            state,
            verifier: SecretString::from(verifier),
        })
    }

    /// Exchanges the callback's code (with the PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &SecretString,
    ) -> Result<TokenResponse, SalesforceError> {
        post_token(
            http,
            &self.token_url(),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", &self.client_id),
                ("client_secret", self.client_secret.expose_secret()),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", verifier.expose_secret()),
            ],
        )
        .await
    }

    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, SalesforceError> {
        post_token(
            http,
            &self.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
                ("client_id", &self.client_id),
                ("client_secret", self.client_secret.expose_secret()),
            ],
        )
        .await
    }
}

impl ClientCredentials {
    pub async fn token(&self, http: &reqwest::Client) -> Result<TokenResponse, SalesforceError> {
        post_token(
            http,
            &self.token_url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("client_secret", self.client_secret.expose_secret()),
            ],
        )
        .await
    }
}

/// Where a rotated refresh token goes. The caller persists it (atomically with its account
/// record) before the client uses the new access token; an error stops the call.
pub trait RefreshSink: Send + Sync {
    fn store(&self, refresh_token: &SecretString) -> Result<(), String>;
}

impl<F> RefreshSink for F
where
    F: Fn(&SecretString) -> Result<(), String> + Send + Sync,
{
    fn store(&self, refresh_token: &SecretString) -> Result<(), String> {
        self(refresh_token)
    }
}

enum Grant {
    WebServer {
        app: OAuthApp,
        refresh_token: SecretString,
        sink: Option<Arc<dyn RefreshSink>>,
    },
    ClientCredentials(ClientCredentials),
}

#[derive(Clone)]
pub(crate) struct Session {
    pub access_token: SecretString,
    pub instance_url: String,
    obtained: std::time::Instant,
}

/// Hands out access tokens and renews them: by refresh token (web-server flow) or by asking
/// again (client credentials). Renewal is single-flight: concurrent 401s cause one refresh.
pub struct TokenProvider {
    http: reqwest::Client,
    grant: parking_lot::Mutex<Grant>,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Renew before use once a token is this old (Salesforce tokens carry no expiry).
    max_age: Option<std::time::Duration>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.grant.lock() {
            Grant::WebServer { .. } => "web-server",
            Grant::ClientCredentials(_) => "client-credentials",
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
        TokenProvider {
            http,
            grant: parking_lot::Mutex::new(Grant::WebServer {
                app,
                refresh_token,
                sink,
            }),
            session: tokio::sync::Mutex::new(None),
            max_age: None,
        }
    }

    pub fn client_credentials(http: reqwest::Client, creds: ClientCredentials) -> Self {
        TokenProvider {
            http,
            grant: parking_lot::Mutex::new(Grant::ClientCredentials(creds)),
            session: tokio::sync::Mutex::new(None),
            max_age: None,
        }
    }

    /// Starts with an access token already in hand (e.g. right after the code exchange).
    pub async fn with_access(self, access_token: SecretString, instance_url: String) -> Self {
        *self.session.lock().await = Some(Session {
            access_token,
            instance_url,
            obtained: std::time::Instant::now(),
        });
        self
    }

    /// Renews proactively once the access token is older than `age`, instead of waiting for a
    /// 401 (the contract's advice, since Salesforce sends no `expires_in`).
    pub fn with_max_age(mut self, age: std::time::Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    pub(crate) async fn current(&self) -> Result<Session, SalesforceError> {
        let mut s = self.session.lock().await;
        if let Some(sess) = &*s
            && self.max_age.is_none_or(|age| sess.obtained.elapsed() < age)
        {
            return Ok(sess.clone());
        }
        let new = self.obtain().await?;
        *s = Some(new.clone());
        Ok(new)
    }

    /// Renews after a 401 on `stale`; if another task already renewed, returns its token.
    pub(crate) async fn renew(&self, stale: &SecretString) -> Result<Session, SalesforceError> {
        let mut s = self.session.lock().await;
        if let Some(sess) = &*s
            && sess.access_token.expose_secret() != stale.expose_secret()
        {
            return Ok(sess.clone());
        }
        *s = None;
        let new = self.obtain().await?;
        *s = Some(new.clone());
        Ok(new)
    }

    async fn obtain(&self) -> Result<Session, SalesforceError> {
        enum Plan {
            Refresh(OAuthApp, SecretString),
            Creds(ClientCredentials),
        }
        let plan = match &*self.grant.lock() {
            Grant::WebServer {
                app, refresh_token, ..
            } => Plan::Refresh(app.clone(), refresh_token.clone()),
            Grant::ClientCredentials(c) => Plan::Creds(c.clone()),
        };
        let t = match plan {
            Plan::Refresh(app, rt) => {
                let t = app.refresh(&self.http, &rt).await?;
                if let Some(new) = &t.refresh_token
                    && new.expose_secret() != rt.expose_secret()
                {
                    let sink = match &mut *self.grant.lock() {
                        Grant::WebServer {
                            refresh_token,
                            sink,
                            ..
                        } => {
                            *refresh_token = new.clone();
                            sink.clone()
                        }
                        Grant::ClientCredentials(_) => None,
                    };
                    if let Some(sink) = sink {
                        sink.store(new).map_err(SalesforceError::Sink)?;
                    }
                }
                t
            }
            Plan::Creds(c) => match c.token(&self.http).await {
                // A refused client-credentials grant cannot heal by retrying: same meaning as a
                // dead refresh token for the account.
                Err(SalesforceError::OAuth { error, description }) if error == "invalid_grant" => {
                    return Err(SalesforceError::TokenExpired {
                        description: format!("{error}: {description}"),
                    });
                }
                other => other?,
            },
        };
        Ok(Session {
            access_token: t.access_token,
            instance_url: t.instance_url,
            obtained: std::time::Instant::now(),
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
        let e = token_error(
            400,
            br#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
        );
        assert!(matches!(e, SalesforceError::TokenExpired { .. }));
        assert!(e.to_string().starts_with("account token expired"));
        let e = token_error(
            400,
            br#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
        );
        assert!(matches!(e, SalesforceError::OAuth { .. }));
    }
}
