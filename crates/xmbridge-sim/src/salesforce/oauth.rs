//! The org's OAuth 2.0 server: `/services/oauth2/authorize` (web-server flow, PKCE S256, an
//! auto-approve switch for browserless tests), `/services/oauth2/token` (authorization_code,
//! refresh_token, client_credentials) and `/services/oauth2/revoke`. It models the connected
//! app's refresh-token policy (valid until revoked / immediate / idle N / absolute N), rotation,
//! the five-approvals-per-user rule, the client-credentials run-as user and login IP ranges.
//! Token responses carry no `expires_in`; `signature` = base64 HMAC-SHA256(secret, id + issued_at).

use super::{SalesforceConfig, SharedSf, State, json_response};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The connected app's refresh-token policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshPolicy {
    /// Refresh tokens stay valid until revoked.
    ValidUntilRevoked,
    /// Refresh tokens expire at once: every refresh grant fails.
    Immediate,
    /// Expires if not used for `refresh_ttl_secs`.
    Idle,
    /// Expires `refresh_ttl_secs` after issue.
    Absolute,
}

/// The connected app and its OAuth policies (all changeable through `/_sim/oauth/policy`).
#[derive(Clone, Debug, Serialize)]
pub struct AppSettings {
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret.
    pub client_secret: String,
    /// Registered callback URLs. Loopback callbacks match on any port (RFC 8252 §7.3), so a CLI
    /// can listen on an ephemeral port.
    pub callbacks: Vec<String>,
    /// How long refresh tokens stay valid.
    pub refresh_policy: RefreshPolicy,
    /// The lifetime (`Idle`, `Absolute`) of a refresh token, seconds.
    pub refresh_ttl_secs: u64,
    /// Refresh token rotation: each refresh grant issues a new refresh token and revokes the old one.
    pub rotation: bool,
    /// Whether the client-credentials flow is enabled.
    pub client_credentials: bool,
    /// Username of the client-credentials run-as user.
    pub run_as: Option<String>,
    pub(crate) require_secret_for_refresh: bool,
    pub(crate) max_approvals: usize,
    /// "Enforce login IP ranges on every request".
    pub enforce_ip_every_request: bool,
}

#[derive(Clone, Debug)]
/// An authorization code, issued at consent and redeemed once.
pub struct AuthCode {
    /// Index of the consenting user in `State::users`.
    pub user: usize,
    /// The redirect URI the code was issued for; the token request must repeat it.
    pub redirect_uri: String,
    /// The PKCE `code_challenge`; `None` when the client sent none.
    pub challenge: Option<String>,
    /// The scopes granted, space-separated.
    pub scope: String,
    pub(crate) issued_ms: i64,
    /// Already redeemed: a second use fails.
    pub used: bool,
}

#[derive(Clone, Debug, Serialize)]
/// A refresh token issued by the connected app.
pub struct RefreshToken {
    /// The token string.
    pub token: String,
    /// Index of the user in `State::users`.
    pub user: usize,
    /// The scopes granted, space-separated.
    pub scope: String,
    pub(crate) issued_ms: i64,
    pub(crate) last_used_ms: i64,
    /// Revoked (or rotated away, or expired by policy): refused from then on.
    pub revoked: bool,
}

#[derive(Clone, Debug, Serialize)]
/// An access token (session id) issued by the connected app.
pub struct AccessToken {
    /// Index of the user in `State::users`.
    pub user: usize,
    /// The scopes granted, space-separated.
    pub scope: String,
    pub(crate) last_used_ms: i64,
    /// The refresh token it was issued with; `None` for a client-credentials token.
    pub refresh: Option<String>,
    /// Revoked: refused from then on.
    pub revoked: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
/// Consent given in advance through `/_sim` (the authorize page answers at once).
pub struct AutoApprove {
    /// Username of the user who consents.
    pub user: String,
    #[serde(default)]
    /// Deny consent instead (the redirect carries `error=access_denied`).
    pub deny: bool,
}

/// The connected app and every code and token it issued.
pub struct OAuthState {
    /// The connected app's settings.
    pub app: AppSettings,
    /// Authorization codes by code string.
    pub codes: BTreeMap<String, AuthCode>,
    /// In issue order: the five-approvals rule revokes the oldest.
    pub refresh: Vec<RefreshToken>,
    /// Access tokens by token string.
    pub access: BTreeMap<String, AccessToken>,
    /// Consent given in advance; `None` shows the consent page.
    pub auto_approve: Option<AutoApprove>,
}

impl OAuthState {
    pub(crate) fn new(cfg: &SalesforceConfig) -> Self {
        let mut rng = crate::rng::Rng::derive(cfg.seed, &[0xc0a7]);
        OAuthState {
            app: AppSettings {
                client_id: format!("3MVG9{}", rng.alnum(80)),
                client_secret: rng.hex(64).to_uppercase(),
                callbacks: vec![
                    "http://127.0.0.1/oauth/callback".into(),
                    "http://localhost/oauth/callback".into(),
                ],
                refresh_policy: RefreshPolicy::ValidUntilRevoked,
                refresh_ttl_secs: 86_400,
                rotation: false,
                client_credentials: true,
                run_as: Some("integration@acme.sim".into()),
                require_secret_for_refresh: true,
                max_approvals: 5,
                enforce_ip_every_request: false,
            },
            codes: BTreeMap::new(),
            refresh: Vec::new(),
            access: BTreeMap::new(),
            auto_approve: None,
        }
    }

    /// Revokes a refresh token and every access token made from it.
    pub fn revoke_refresh(&mut self, token: &str) {
        for r in self.refresh.iter_mut().filter(|r| r.token == token) {
            r.revoked = true;
        }
        for a in self.access.values_mut() {
            if a.refresh.as_deref() == Some(token) {
                a.revoked = true;
            }
        }
    }

    /// Revokes everything a user holds.
    pub fn revoke_user(&mut self, user: usize) -> usize {
        let mut n = 0;
        for r in self
            .refresh
            .iter_mut()
            .filter(|r| r.user == user && !r.revoked)
        {
            r.revoked = true;
            n += 1;
        }
        for a in self
            .access
            .values_mut()
            .filter(|a| a.user == user && !a.revoked)
        {
            a.revoked = true;
            n += 1;
        }
        n
    }

    pub(crate) fn active_refresh(&self, user: usize) -> Vec<&RefreshToken> {
        self.refresh
            .iter()
            .filter(|r| r.user == user && !r.revoked)
            .collect()
    }
}

pub(crate) fn routes() -> Router<SharedSf> {
    Router::new()
        .route("/services/oauth2/authorize", get(authorize).post(consent))
        .route("/services/oauth2/token", post(token))
        .route("/services/oauth2/revoke", post(revoke).get(revoke_get))
}

fn parse_form(bytes: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// A token-endpoint error: 400 `{"error","error_description"}`.
fn oauth_error(error: &str, description: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description}),
    )
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Exact match, or a loopback callback that differs only in its port.
pub fn callback_matches(registered: &[String], uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    registered.iter().any(|r| {
        if r == uri {
            return true;
        }
        let Ok(reg) = url::Url::parse(r) else {
            return false;
        };
        let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        loopback
            && reg.scheme() == u.scheme()
            && reg.host_str() == u.host_str()
            && reg.path() == u.path()
    })
}

/// Checks the client id and redirect of an authorization request.
fn check_auth_request(
    st: &State,
    p: &BTreeMap<String, String>,
) -> Result<(), (&'static str, &'static str)> {
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err(("unsupported_response_type", "response type not supported"));
    }
    if p.get("client_id") != Some(&st.oauth.app.client_id) {
        return Err(("invalid_client_id", "client identifier invalid"));
    }
    let uri = p.get("redirect_uri").map(String::as_str).unwrap_or("");
    if !callback_matches(&st.oauth.app.callbacks, uri) {
        return Err((
            "redirect_uri_mismatch",
            "redirect_uri must match configuration",
        ));
    }
    if let Some(m) = p.get("code_challenge_method")
        && m != "S256"
    {
        return Err(("invalid_request", "code_challenge_method must be S256"));
    }
    Ok(())
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(base).unwrap_or_else(|_| {
        url::Url::parse("http://127.0.0.1/").unwrap_or_else(|_| unreachable!())
    });
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    u.to_string()
}

/// Issues a code for `user` and redirects to the callback (or redirects with `access_denied`).
fn approve(
    sim: &SharedSf,
    st: &mut State,
    p: &BTreeMap<String, String>,
    user: usize,
    deny: bool,
) -> Response {
    let uri = p.get("redirect_uri").cloned().unwrap_or_default();
    let state_param = p.get("state").cloned();
    if deny {
        let mut pairs = vec![
            ("error", "access_denied"),
            ("error_description", "end-user denied authorization"),
        ];
        if let Some(s) = &state_param {
            pairs.push(("state", s));
        }
        return redirect(&with_query(&uri, &pairs));
    }
    let code = format!("aPrx{}", st.rng.alnum(60));
    st.oauth.codes.insert(
        code.clone(),
        AuthCode {
            user,
            redirect_uri: uri.clone(),
            challenge: p.get("code_challenge").cloned(),
            scope: p
                .get("scope")
                .cloned()
                .unwrap_or_else(|| "api refresh_token".into()),
            issued_ms: sim.clock.now_ms(),
            used: false,
        },
    );
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = &state_param {
        pairs.push(("state", s));
    }
    redirect(&with_query(&uri, &pairs))
}

async fn authorize(AxState(sim): AxState<SharedSf>, RawQuery(q): RawQuery) -> Response {
    let p = parse_form(q.unwrap_or_default().as_bytes());
    let mut st = sim.state.lock();
    if let Err((error, description)) = check_auth_request(&st, &p) {
        return oauth_error(error, description);
    }
    if let Some(a) = st.oauth.auto_approve.clone() {
        let Some(user) = st.users.iter().position(|u| u.username == a.user) else {
            return oauth_error("invalid_grant", "auto-approve user does not exist");
        };
        return approve(&sim, &mut st, &p, user, a.deny);
    }
    login_page(&st, &p)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The login + consent page: pick a user, allow or deny.
fn login_page(st: &State, p: &BTreeMap<String, String>) -> Response {
    let hidden: String = p
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                html_escape(k),
                html_escape(v)
            )
        })
        .collect();
    let users: String = st
        .users
        .iter()
        .filter(|u| u.active)
        .map(|u| {
            format!(
                "<option value=\"{0}\">{0} ({1})</option>",
                html_escape(&u.username),
                html_escape(&u.profile)
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><title>Login | Salesforce (simulated)</title></head><body>\
         <h1>Allow access?</h1><form method=\"post\" action=\"/services/oauth2/authorize\">\n{hidden}\
         <select name=\"sim_user\">{users}</select>\
         <button name=\"sim_decision\" value=\"allow\">Allow</button>\
         <button name=\"sim_decision\" value=\"deny\">Deny</button></form></body></html>"
    );
    let mut r = (StatusCode::OK, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html;charset=UTF-8"),
    );
    r
}

async fn consent(AxState(sim): AxState<SharedSf>, body: Bytes) -> Response {
    let p = parse_form(&body);
    let mut st = sim.state.lock();
    if let Err((error, description)) = check_auth_request(&st, &p) {
        return oauth_error(error, description);
    }
    let name = p.get("sim_user").cloned().unwrap_or_default();
    let Some(user) = st.users.iter().position(|u| u.username == name && u.active) else {
        return oauth_error("invalid_grant", "authentication failure");
    };
    let deny = p.get("sim_decision").map(String::as_str) == Some("deny");
    approve(&sim, &mut st, &p, user, deny)
}

/// Client id and secret from the form or from HTTP Basic.
fn client_credentials(
    headers: &HeaderMap,
    p: &BTreeMap<String, String>,
) -> (Option<String>, Option<String>) {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(basic.trim())
        && let Ok(s) = String::from_utf8(raw)
        && let Some((id, secret)) = s.split_once(':')
    {
        return (Some(id.to_string()), Some(secret.to_string()));
    }
    (p.get("client_id").cloned(), p.get("client_secret").cloned())
}

pub(crate) fn signature(secret: &str, id: &str, issued_at: &str) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn pkce_s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Can this user log in from `ip` at all (active, profile login IP ranges)?
fn login_allowed(st: &State, user: usize, ip: IpAddr) -> bool {
    let Some(u) = st.users.get(user) else {
        return false;
    };
    u.active
        && st
            .profiles
            .get(&u.profile)
            .is_some_and(|p| p.ip_allowed(ip))
}

/// The token response body; issues an access token (and a refresh token if asked).
fn issue(
    sim: &SharedSf,
    st: &mut State,
    user: usize,
    scope: &str,
    refresh: Option<String>,
    new_refresh: bool,
    client_creds: bool,
) -> Response {
    let now = sim.clock.now_ms();
    let org15: String = sim.org_id.chars().take(15).collect();
    let access = format!("{org15}!AQ{}", st.rng.alnum(96));
    let mut refresh_token = refresh.clone();
    if new_refresh {
        let token = format!("5Aep861{}", st.rng.alnum(80));
        st.oauth.refresh.push(RefreshToken {
            token: token.clone(),
            user,
            scope: scope.to_string(),
            issued_ms: now,
            last_used_ms: now,
            revoked: false,
        });
        refresh_token = Some(token);
    }
    st.oauth.access.insert(
        access.clone(),
        AccessToken {
            user,
            scope: scope.to_string(),
            last_used_ms: now,
            refresh: refresh_token.clone(),
            revoked: false,
        },
    );
    let base = sim.base_url();
    let user_id = st.users.get(user).map(|u| u.id.clone()).unwrap_or_default();
    let id = format!("{base}/id/{}/{user_id}", sim.org_id);
    let issued_at = now.to_string();
    let mut body = json!({
        "access_token": access,
        "signature": signature(&st.oauth.app.client_secret, &id, &issued_at),
        "scope": scope,
        "instance_url": base,
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
    });
    if new_refresh && let Some(r) = refresh_token {
        body["refresh_token"] = Value::String(r);
    }
    if client_creds {
        body["token_format"] = Value::String("opaque".into());
    }
    json_response(StatusCode::OK, &body)
}

/// Applies the five-approvals rule before a new approval is granted to `user`.
fn make_room_for_approval(st: &mut State, user: usize) {
    let max = st.oauth.app.max_approvals.max(1);
    loop {
        let active = st.oauth.active_refresh(user);
        if active.len() < max {
            break;
        }
        let oldest = active[0].token.clone();
        st.oauth.revoke_refresh(&oldest);
    }
}

fn refresh_expired(app: &AppSettings, r: &RefreshToken, now: i64) -> bool {
    let ttl = app.refresh_ttl_secs as i64 * 1000;
    r.revoked
        || match app.refresh_policy {
            RefreshPolicy::ValidUntilRevoked => false,
            RefreshPolicy::Immediate => true,
            RefreshPolicy::Idle => now - r.last_used_ms > ttl,
            RefreshPolicy::Absolute => now - r.issued_ms > ttl,
        }
}

fn wants_refresh(scope: &str) -> bool {
    scope
        .split_whitespace()
        .any(|s| s == "refresh_token" || s == "offline_access" || s == "full")
}

async fn token(
    AxState(sim): AxState<SharedSf>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = parse_form(&body);
    let (client_id, secret) = client_credentials(&headers, &p);
    let mut st = sim.state.lock();
    let Some(grant) = p.get("grant_type").cloned() else {
        return oauth_error("invalid_request", "grant type is missing");
    };
    if client_id.as_deref() != Some(st.oauth.app.client_id.as_str()) {
        return oauth_error("invalid_client_id", "client identifier invalid");
    }
    let secret_ok = secret.as_deref() == Some(st.oauth.app.client_secret.as_str());
    let now = sim.clock.now_ms();
    match grant.as_str() {
        "authorization_code" => {
            if !secret_ok {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            let code = p.get("code").cloned().unwrap_or_default();
            let Some(c) = st.oauth.codes.get_mut(&code) else {
                return oauth_error("invalid_grant", "authorization code expired");
            };
            // Codes live 15 minutes and work once.
            if c.used || now - c.issued_ms > 15 * 60 * 1000 {
                return oauth_error("invalid_grant", "authorization code expired");
            }
            c.used = true;
            let c = c.clone();
            if p.get("redirect_uri") != Some(&c.redirect_uri) {
                return oauth_error(
                    "redirect_uri_mismatch",
                    "redirect_uri must match configuration",
                );
            }
            if let Some(challenge) = &c.challenge {
                match p.get("code_verifier") {
                    Some(v) if pkce_s256(v) == *challenge => {}
                    _ => return oauth_error("invalid_grant", "invalid code verifier"),
                }
            }
            if !login_allowed(&st, c.user, peer.ip()) {
                return oauth_error("invalid_grant", "authentication failure");
            }
            let new_refresh = wants_refresh(&c.scope);
            if new_refresh {
                make_room_for_approval(&mut st, c.user);
            }
            issue(&sim, &mut st, c.user, &c.scope, None, new_refresh, false)
        }
        "refresh_token" => {
            if secret.is_some() && !secret_ok {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            if secret.is_none() && st.oauth.app.require_secret_for_refresh {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            let token = p.get("refresh_token").cloned().unwrap_or_default();
            let app = st.oauth.app.clone();
            let Some(pos) = st.oauth.refresh.iter().position(|r| r.token == token) else {
                return oauth_error("invalid_grant", "expired access/refresh token");
            };
            if refresh_expired(&app, &st.oauth.refresh[pos], now) {
                return oauth_error("invalid_grant", "expired access/refresh token");
            }
            let r = st.oauth.refresh[pos].clone();
            if !login_allowed(&st, r.user, peer.ip()) {
                return oauth_error("invalid_grant", "authentication failure");
            }
            st.oauth.refresh[pos].last_used_ms = now;
            if app.rotation {
                // The new token takes the old one's approval slot; the old one stops working.
                st.oauth.refresh[pos].revoked = true;
                let resp = issue(&sim, &mut st, r.user, &r.scope, None, true, false);
                if let Some(new) = st.oauth.refresh.pop() {
                    st.oauth.refresh.insert(pos + 1, new);
                }
                resp
            } else {
                issue(&sim, &mut st, r.user, &r.scope, Some(token), false, false)
            }
        }
        "client_credentials" => {
            if !secret_ok {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            let run_as = st.oauth.app.run_as.clone();
            let user = run_as.and_then(|n| st.users.iter().position(|u| u.username == n));
            let (true, Some(user)) = (st.oauth.app.client_credentials, user) else {
                return oauth_error("invalid_grant", "no client credentials user enabled");
            };
            if !login_allowed(&st, user, peer.ip()) {
                return oauth_error("invalid_grant", "authentication failure");
            }
            issue(&sim, &mut st, user, "api", None, false, true)
        }
        _ => oauth_error("unsupported_grant_type", "grant type not supported"),
    }
}

fn do_revoke(sim: &SharedSf, token: &str) -> Response {
    let mut st = sim.state.lock();
    if st.oauth.refresh.iter().any(|r| r.token == token) {
        st.oauth.revoke_refresh(token);
    } else if let Some(a) = st.oauth.access.get_mut(token) {
        a.revoked = true;
    } else {
        return oauth_error("unsupported_token_type", "this token type is not supported");
    }
    StatusCode::OK.into_response()
}

async fn revoke(AxState(sim): AxState<SharedSf>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let mut p = parse_form(&body);
    if p.is_empty() {
        p = parse_form(q.unwrap_or_default().as_bytes());
    }
    do_revoke(&sim, p.get("token").map(String::as_str).unwrap_or(""))
}

async fn revoke_get(AxState(sim): AxState<SharedSf>, RawQuery(q): RawQuery) -> Response {
    let p = parse_form(q.unwrap_or_default().as_bytes());
    do_revoke(&sim, p.get("token").map(String::as_str).unwrap_or(""))
}

/// The user behind a bearer token, if the session is alive; touches it (sliding timeout).
pub fn session_user(sim: &SharedSf, st: &mut State, headers: &HeaderMap) -> Option<usize> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })?
        .trim()
        .to_string();
    let now = sim.clock.now_ms();
    let timeout = sim.cfg.session_timeout_secs as i64 * 1000;
    let a = st.oauth.access.get_mut(&token)?;
    if a.revoked || now - a.last_used_ms > timeout {
        a.revoked = true;
        return None;
    }
    a.last_used_ms = now;
    let user = a.user;
    st.users.get(user).filter(|u| u.active).map(|_| user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_callbacks_match_on_any_port() {
        let reg = vec!["http://127.0.0.1/oauth/callback".to_string()];
        assert!(callback_matches(
            &reg,
            "http://127.0.0.1:5555/oauth/callback"
        ));
        assert!(!callback_matches(&reg, "http://127.0.0.1:5555/other"));
        assert!(!callback_matches(
            &reg,
            "http://evil.example/oauth/callback"
        ));
    }

    #[test]
    fn signature_is_hmac_of_id_and_issued_at() {
        let s = signature("secret", "https://x/id/1/2", "1700000000000");
        assert_eq!(s.len(), 44);
        assert_ne!(s, signature("other", "https://x/id/1/2", "1700000000000"));
    }
}
