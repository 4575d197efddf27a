//! The simulated OAuth 2.0 server: `POST /oauth2/token` (client credentials, authorization code,
//! rotating refresh tokens) and `GET|POST /oauth2/auth` (consent page or auto-approval), plus the
//! mutable OAuth state (clients, codes, refresh tokens, lifetimes) that `/_sim` steers.
//!
//! It owns the OAuth clients and grants; access tokens it issues go into the shared
//! `sim.tokens` store that `auth.rs` checks on every `/API/v3` call. It must not touch users'
//! permissions or other modules' state. Answers follow RFC 6749 (no Qualtrics `result/meta`
//! envelope), see docs/design/qualtrics-api.md §2.2 (OAuth) and docs/simulator/auth.md.

use super::account::User;
use super::auth::{AccessToken, RequestedDc};
use super::{SharedSim, hosts};
use crate::config::SimConfig;
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// Tag for every value this module derives from the seed.
const TAG: u64 = 0x0A07;
/// Authorization codes live 10 minutes at most (RFC 6749 §4.1.2).
pub const CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// Upper bound on live grants of each kind, so a long-running simulator stays bounded.
const MAX_LIVE: usize = 50_000;

pub(crate) const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub(crate) const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub(crate) const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub(crate) const GRANTS: &[&str] = &[
    GRANT_CLIENT_CREDENTIALS,
    GRANT_AUTHORIZATION_CODE,
    GRANT_REFRESH_TOKEN,
];

/// Resources of `read:|write:|manage:<resource>` scopes (docs/design/qualtrics-api.md §2.2).
const RESOURCES: &[&str] = &[
    "surveys",
    "survey_responses",
    "survey_sessions",
    "distributions",
    "mailing_lists",
    "mailing_list_contacts",
    "directories",
    "directory_contacts",
    "contact_transactions",
    "libraries",
    "subscriptions",
    "users",
    "groups",
    "divisions",
    "organizations",
    "samples",
    "participants",
    "activity_logs",
];

/// A registered OAuth client.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    /// The client id, sent by the client on every token request.
    pub client_id: String,
    /// The client secret; checked by the token endpoint.
    pub client_secret: String,
    /// The client's display name, shown on the consent page.
    pub name: String,
    /// Grant types the client may use: `client_credentials`, `authorization_code`, `refresh_token`.
    pub grants: Vec<String>,
    /// The most a token of this client may carry.
    pub scopes: Vec<String>,
    /// The user a client-credentials token acts as (`None`: the user is chosen at consent).
    pub user_idx: Option<usize>,
    /// Exact redirect URIs allowed; empty = any loopback URI (`http://127.0.0.1:*/…`, `localhost`, `[::1]`).
    pub redirect_uris: Vec<String>,
}

#[derive(Clone, Debug)]
struct AuthCode {
    client_id: String,
    user_idx: usize,
    scopes: Vec<String>,
    redirect_uri: String,
    dc: String,
    expires_ms: i64,
}

#[derive(Clone, Debug)]
struct RefreshGrant {
    client_id: String,
    user_idx: usize,
    scopes: Vec<String>,
    dc: String,
    /// `None`: valid until revoked.
    expires_ms: Option<i64>,
    /// Issue order, to evict the oldest when over [`MAX_LIVE`].
    seq: u64,
}

/// Consent given in advance (`POST /_sim/oauth/auto-approve`).
#[derive(Clone, Debug)]
pub struct AutoApprove {
    /// Index in `Sim::users` of the user who consents.
    pub user_idx: usize,
    /// The organization (brand) id the consent is given for.
    pub organization: String,
}

#[derive(Debug)]
struct Inner {
    clients: Vec<OAuthClient>,
    codes: HashMap<String, AuthCode>,
    refresh: HashMap<String, RefreshGrant>,
    access_ttl_secs: u64,
    refresh_ttl_secs: Option<u64>,
    auto_approve: Option<AutoApprove>,
    /// How many secrets were minted: tokens are derived from (seed, counter), deterministic.
    minted: u64,
}

/// Mutable OAuth server state of one brand.
#[derive(Debug)]
pub struct OAuthState {
    seed: u64,
    inner: Mutex<Inner>,
}

/// What `/_sim/tokens/revoke` removes.
#[derive(Clone, Debug, Default)]
pub struct Revocation {
    /// Revoke this access token.
    pub access_token: Option<String>,
    /// Revoke this refresh token.
    pub refresh_token: Option<String>,
    /// Revoke every token of this user (index in `Sim::users`).
    pub user_idx: Option<usize>,
    /// Revoke every token of the brand.
    pub all: bool,
}

/// Index of the user with a role (`admin`, `viewer` …): the local part of the seeded usernames.
fn role_idx(users: &[User], role: &str) -> Option<usize> {
    users.iter().position(|u| role_of(u) == role)
}

/// A user's role name: the local part of the username (`viewer@brand.test` → `viewer`).
pub fn role_of(u: &User) -> &str {
    u.username.split('@').next().unwrap_or(&u.username)
}

impl OAuthState {
    pub(crate) fn new(cfg: &SimConfig, users: &[User]) -> Self {
        let client = |i: u64, name: &str, grants: &[&str], scopes: &[&str], user| {
            let mut r = Rng::derive(cfg.seed, &[TAG, 1, i]);
            OAuthClient {
                client_id: r.hex(32),
                client_secret: r.alnum(64),
                name: name.to_string(),
                grants: grants.iter().map(|g| g.to_string()).collect(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                user_idx: user,
                redirect_uris: Vec::new(),
            }
        };
        let clients = vec![
            client(
                0,
                "Brand admin service (client credentials)",
                &[GRANT_CLIENT_CREDENTIALS],
                &["manage:all"],
                role_idx(users, "admin").or(Some(0)),
            ),
            client(
                1,
                "Web app (authorization code)",
                &[GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN],
                &["manage:all", "openid", "offline"],
                None,
            ),
            client(
                2,
                "Viewer reports (client credentials)",
                &[GRANT_CLIENT_CREDENTIALS],
                &["read:surveys", "read:survey_responses"],
                role_idx(users, "viewer"),
            ),
        ];
        OAuthState {
            seed: cfg.seed,
            inner: Mutex::new(Inner {
                clients,
                codes: HashMap::new(),
                refresh: HashMap::new(),
                access_ttl_secs: cfg.token_ttl_secs.max(1),
                refresh_ttl_secs: None,
                auto_approve: None,
                minted: 0,
            }),
        }
    }

    /// A copy of the registered clients.
    pub fn clients(&self) -> Vec<OAuthClient> {
        self.inner.lock().clients.clone()
    }

    /// Registers a client; its id must be new.
    pub fn add_client(&self, client: OAuthClient) -> Result<(), String> {
        let mut inner = self.inner.lock();
        if inner
            .clients
            .iter()
            .any(|c| c.client_id == client.client_id)
        {
            return Err(format!("client_id '{}' already exists", client.client_id));
        }
        inner.clients.push(client);
        Ok(())
    }

    /// A fresh (id, secret) pair for a client created without them.
    pub fn mint_client_credentials(&self) -> (String, String) {
        let mut inner = self.inner.lock();
        inner.minted += 1;
        let mut r = Rng::derive(self.seed, &[TAG, 2, inner.minted]);
        (r.hex(32), r.alnum(64))
    }

    pub(crate) fn auto_approve(&self) -> Option<AutoApprove> {
        self.inner.lock().auto_approve.clone()
    }

    pub(crate) fn set_auto_approve(&self, a: Option<AutoApprove>) {
        self.inner.lock().auto_approve = a;
    }

    /// (access-token lifetime, refresh-token lifetime; `None` = until revoked), in seconds.
    pub fn ttls(&self) -> (u64, Option<u64>) {
        let inner = self.inner.lock();
        (inner.access_ttl_secs, inner.refresh_ttl_secs)
    }

    /// Changes lifetimes of tokens issued from now on (`None` leaves a value unchanged).
    pub fn set_ttls(&self, access: Option<u64>, refresh: Option<Option<u64>>) {
        let mut inner = self.inner.lock();
        if let Some(a) = access {
            inner.access_ttl_secs = a.max(1);
        }
        if let Some(r) = refresh {
            inner.refresh_ttl_secs = r.filter(|s| *s > 0);
        }
    }

    /// Revokes access and/or refresh tokens; returns how many (access, refresh) were removed.
    pub fn revoke(&self, sim: &SharedSim, what: &Revocation) -> (usize, usize) {
        let refresh_removed = {
            let mut inner = self.inner.lock();
            let before = inner.refresh.len();
            if what.all {
                inner.refresh.clear();
                inner.codes.clear();
            } else {
                if let Some(t) = &what.refresh_token {
                    inner.refresh.remove(t);
                }
                if let Some(u) = what.user_idx {
                    inner.refresh.retain(|_, g| g.user_idx != u);
                    inner.codes.retain(|_, c| c.user_idx != u);
                }
            }
            before - inner.refresh.len()
        };
        let mut store = sim.tokens.lock();
        let before = store.access.len();
        if what.all {
            store.access.clear();
        } else {
            if let Some(t) = &what.access_token {
                store.access.remove(t);
            }
            if let Some(u) = what.user_idx {
                store.access.retain(|_, t| t.user_idx != u);
            }
        }
        (before - store.access.len(), refresh_removed)
    }

    /// Number of live refresh tokens (for `/_sim/credentials`).
    pub fn refresh_token_count(&self) -> usize {
        self.inner.lock().refresh.len()
    }
}

impl Inner {
    fn mint(&mut self, seed: u64, kind: u64) -> Rng {
        self.minted += 1;
        Rng::derive(seed, &[TAG, kind, self.minted])
    }

    fn client_idx(&self, id: &str) -> Option<usize> {
        self.clients.iter().position(|c| c.client_id == id)
    }

    /// Issues a refresh token, evicting expired ones and, past the bound, the oldest.
    fn issue_refresh(&mut self, seed: u64, now: i64, mut g: RefreshGrant) -> String {
        self.refresh
            .retain(|_, r| r.expires_ms.is_none_or(|e| e > now));
        while self.refresh.len() >= MAX_LIVE {
            let oldest = self
                .refresh
                .iter()
                .min_by_key(|(_, r)| r.seq)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.refresh.remove(&k),
                None => break,
            };
        }
        let token = self.mint(seed, 3).alnum(48);
        g.seq = self.minted;
        g.expires_ms = self.refresh_ttl_secs.map(|s| now + s as i64 * 1000);
        self.refresh.insert(token.clone(), g);
        token
    }

    fn issue_code(&mut self, seed: u64, now: i64, c: AuthCode) -> String {
        self.codes.retain(|_, c| c.expires_ms > now);
        if self.codes.len() >= MAX_LIVE {
            // Unexchanged codes beyond the bound are abandoned browser flows: drop them all.
            self.codes.clear();
        }
        let code = self.mint(seed, 4).alnum(32);
        self.codes.insert(code.clone(), c);
        code
    }
}

// ---------------------------------------------------------------------------------------------
// Scopes

/// `openid`, `offline`, `manage:all` or `read:|write:|manage:<resource>` with a known resource.
pub fn valid_scope(s: &str) -> bool {
    if matches!(s, "openid" | "offline" | "manage:all") {
        return true;
    }
    match s.split_once(':') {
        Some((op, res)) => matches!(op, "read" | "write" | "manage") && RESOURCES.contains(&res),
        None => false,
    }
}

/// Whether `granted` includes `wanted` (`manage:all` ⊇ everything but the OpenID ones,
/// `manage:x` ⊇ `read:x`, `write:x`).
pub fn covers(granted: &[String], wanted: &str) -> bool {
    if granted.iter().any(|g| g == wanted) {
        return true;
    }
    let Some((_, res)) = wanted.split_once(':') else {
        return false;
    };
    granted
        .iter()
        .any(|g| g == "manage:all" || *g == format!("manage:{res}"))
}

/// Splits a space-separated `scope` parameter; checks the grammar and that `allowed` covers it.
/// `None`/empty → all of `allowed`.
fn requested_scopes(param: Option<&str>, allowed: &[String]) -> Result<Vec<String>, String> {
    let Some(param) = param.filter(|p| !p.trim().is_empty()) else {
        return Ok(allowed.to_vec());
    };
    let mut out: Vec<String> = Vec::new();
    for s in param.split_whitespace() {
        if !valid_scope(s) {
            return Err(format!("Unknown scope '{s}'."));
        }
        if !covers(allowed, s) {
            return Err(format!(
                "Scope '{s}' is not allowed for this client (allowed: '{}').",
                allowed.join(" ")
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/auth", get(authorize_get).post(authorize_post))
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Client tried HTTP Basic: answer 401 with a `WWW-Authenticate` challenge.
    basic_challenge: bool,
}

impl OAuthError {
    fn bad(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::bad("invalid_request", d)
    }
    fn invalid_grant(d: impl Into<String>) -> Self {
        Self::bad("invalid_grant", d)
    }
    fn invalid_client(d: impl Into<String>, basic: bool) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: d.into(),
            basic_challenge: basic,
        }
    }
}

fn no_store(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn json_no_store(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    no_store(&mut resp);
    resp
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = json_no_store(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        );
        if self.basic_challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oauth2\""),
            );
        }
        resp
    }
}

/// Parses an `application/x-www-form-urlencoded` body or query. Empty values count as absent
/// and a repeated parameter is an error (RFC 6749 §3.1).
fn parse_form(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        if v.is_empty() {
            continue;
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("Parameter '{k}' was sent more than once."));
        }
    }
    Ok(out)
}

/// The data center a request addressed (its `Host`), or the brand's own.
fn dc_of(sim: &SharedSim, dc: &Option<Extension<RequestedDc>>) -> String {
    dc.as_ref()
        .and_then(|Extension(RequestedDc(d))| d.clone())
        .unwrap_or_else(|| sim.home_dc())
}

/// Client id and secret from HTTP Basic (form-encoded per RFC 6749 §2.3.1) or the form.
fn client_credentials(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<(String, String, bool), OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
        });
    if let Some(b64) = basic {
        if form.contains_key("client_secret") {
            return Err(OAuthError::invalid_request(
                "Use one client authentication method: HTTP Basic or client_id/client_secret form fields, not both.",
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                OAuthError::invalid_client("HTTP Basic credentials are not valid base64.", true)
            })?;
        let (id, secret) = decoded.split_once(':').ok_or_else(|| {
            OAuthError::invalid_client(
                "HTTP Basic credentials must be 'client_id:client_secret'.",
                true,
            )
        })?;
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        let (id, secret) = (dec(id), dec(secret));
        if let Some(form_id) = form.get("client_id")
            && *form_id != id
        {
            return Err(OAuthError::invalid_request(
                "client_id in the form differs from the HTTP Basic client id.",
            ));
        }
        return Ok((id, secret, true));
    }
    match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Ok((id.clone(), secret.clone(), false)),
        (Some(_), None) => Err(OAuthError::invalid_client(
            "client_secret is missing; every client of this server is confidential.",
            false,
        )),
        _ => Err(OAuthError::invalid_client(
            "Client authentication failed: send HTTP Basic 'client_id:client_secret' or client_id and client_secret form fields.",
            false,
        )),
    }
}

async fn token(
    State(sim): State<SharedSim>,
    dc: Option<Extension<RequestedDc>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match token_inner(&sim, &dc_of(&sim, &dc), &headers, &body) {
        Ok(v) => json_no_store(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

fn token_inner(
    sim: &SharedSim,
    dc: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.is_empty()
        && !ctype
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::invalid_request(format!(
            "The token request body must be application/x-www-form-urlencoded, not '{ctype}'."
        )));
    }
    let form = parse_form(body).map_err(OAuthError::invalid_request)?;
    let grant = form
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is missing."))?
        .clone();
    if !GRANTS.contains(&grant.as_str()) {
        return Err(OAuthError::bad(
            "unsupported_grant_type",
            format!(
                "grant_type '{grant}' is not supported; use client_credentials, authorization_code or refresh_token."
            ),
        ));
    }
    let (client_id, secret, basic) = client_credentials(headers, &form)?;
    let now = sim.clock.now_ms();
    let seed = sim.oauth.seed;
    let mut inner = sim.oauth.inner.lock();
    let client = inner
        .client_idx(&client_id)
        .map(|i| inner.clients[i].clone())
        .filter(|c| c.client_secret == secret)
        .ok_or_else(|| {
            OAuthError::invalid_client("Unknown client or wrong client secret.", basic)
        })?;
    // (user, scopes of the access token, scopes of a new refresh token if one is issued)
    let (user_idx, scopes, refresh) = match grant.as_str() {
        GRANT_CLIENT_CREDENTIALS => {
            if !client.grants.iter().any(|g| g == GRANT_CLIENT_CREDENTIALS) {
                return Err(OAuthError::bad(
                    "unauthorized_client",
                    "This client may not use the client_credentials grant.",
                ));
            }
            let user_idx = client.user_idx.ok_or_else(|| {
                OAuthError::bad(
                    "unauthorized_client",
                    "This client acts as no user, so it cannot use client_credentials.",
                )
            })?;
            let scopes = requested_scopes(form.get("scope").map(String::as_str), &client.scopes)
                .map_err(|e| OAuthError::bad("invalid_scope", e))?;
            (user_idx, scopes, None)
        }
        GRANT_AUTHORIZATION_CODE => {
            if !client.grants.iter().any(|g| g == GRANT_AUTHORIZATION_CODE) {
                return Err(OAuthError::bad(
                    "unauthorized_client",
                    "This client may not use the authorization_code grant.",
                ));
            }
            let code = form
                .get("code")
                .ok_or_else(|| OAuthError::invalid_request("code is missing."))?;
            let redirect = form
                .get("redirect_uri")
                .ok_or_else(|| OAuthError::invalid_request("redirect_uri is missing."))?;
            // Single use: the code is spent by any exchange attempt.
            let c = inner.codes.remove(code).ok_or_else(|| {
                OAuthError::invalid_grant("Authorization code is invalid or was already used.")
            })?;
            if c.expires_ms <= now {
                return Err(OAuthError::invalid_grant(
                    "Authorization code expired (codes are valid for 10 minutes).",
                ));
            }
            if c.client_id != client.client_id {
                return Err(OAuthError::invalid_grant(
                    "Authorization code was issued to another client.",
                ));
            }
            if c.redirect_uri != *redirect {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri does not match the one of the authorization request.",
                ));
            }
            if c.dc != dc {
                return Err(OAuthError::invalid_grant(format!(
                    "Authorization code was issued by data center '{}'; exchange it at {}.qualtrics.com.",
                    c.dc, c.dc
                )));
            }
            (c.user_idx, c.scopes.clone(), Some(c.scopes))
        }
        _ => {
            let rt = form
                .get("refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing."))?;
            let g = inner.refresh.get(rt).cloned().ok_or_else(|| {
                OAuthError::invalid_grant(
                    "Refresh token is invalid, revoked or already used (refresh tokens rotate: use the one returned last).",
                )
            })?;
            if g.client_id != client.client_id {
                return Err(OAuthError::invalid_grant(
                    "Refresh token was issued to another client.",
                ));
            }
            if g.expires_ms.is_some_and(|e| e <= now) {
                inner.refresh.remove(rt);
                return Err(OAuthError::invalid_grant("Refresh token expired."));
            }
            if g.dc != dc {
                return Err(OAuthError::invalid_grant(format!(
                    "Refresh token was issued by data center '{}'; use {}.qualtrics.com.",
                    g.dc, g.dc
                )));
            }
            // An optional narrower scope applies to the new access token only.
            let scopes = match form.get("scope") {
                Some(s) => requested_scopes(Some(s), &g.scopes)
                    .map_err(|e| OAuthError::bad("invalid_scope", e))?,
                None => g.scopes.clone(),
            };
            inner.refresh.remove(rt);
            // Rotation keeps the scopes the user consented to, not a narrowed request.
            (g.user_idx, scopes, Some(g.scopes))
        }
    };
    let ttl = inner.access_ttl_secs;
    let access = inner.mint(seed, 5).uuid();
    let refresh_token = refresh.map(|consented| {
        inner.issue_refresh(
            seed,
            now,
            RefreshGrant {
                client_id: client.client_id.clone(),
                user_idx,
                scopes: consented,
                dc: dc.to_string(),
                expires_ms: None,
                seq: 0,
            },
        )
    });
    drop(inner);
    store_access(
        sim,
        now,
        access.clone(),
        AccessToken {
            user_idx,
            client_id: client.client_id.clone(),
            scopes: scopes.clone(),
            dc: dc.to_string(),
            expires_ms: now + ttl as i64 * 1000,
        },
    );
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scopes.join(" "),
    });
    if let (Some(rt), Some(obj)) = (refresh_token, body.as_object_mut()) {
        obj.insert("refresh_token".into(), Value::String(rt));
    }
    Ok(body)
}

/// Puts an access token into the shared store, dropping expired ones (and the soonest to
/// expire past the bound).
fn store_access(sim: &SharedSim, now: i64, token: String, t: AccessToken) {
    let mut store = sim.tokens.lock();
    store.access.retain(|_, a| a.expires_ms > now);
    while store.access.len() >= MAX_LIVE {
        let first = store
            .access
            .iter()
            .min_by_key(|(k, a)| (a.expires_ms, (*k).clone()))
            .map(|(k, _)| k.clone());
        match first {
            Some(k) => store.access.remove(&k),
            None => break,
        };
    }
    store.access.insert(token, t);
}

// ---------------------------------------------------------------------------------------------
// Authorization endpoint

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n<h1>{t}</h1>\n{body}\n</body></html>\n",
        t = html_escape(title)
    );
    let mut resp = (status, page).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(&mut resp);
    resp
}

/// The page shown instead of redirecting when the client or redirect URI cannot be trusted.
fn error_page(msg: &str) -> Response {
    html(
        StatusCode::BAD_REQUEST,
        "Authorization error",
        &format!("<p class=\"error\">{}</p>", html_escape(msg)),
    )
}

fn redirect(url: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    no_store(&mut resp);
    resp
}

/// `redirect_uri` with `pairs` added to its query (and `state` when the client sent one).
fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)], state: Option<&str>) -> Response {
    match url::Url::parse(redirect_uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in pairs {
                    q.append_pair(k, v);
                }
                if let Some(s) = state {
                    q.append_pair("state", s);
                }
            }
            redirect(u.as_str())
        }
        Err(_) => error_page("redirect_uri is not a valid URL."),
    }
}

/// Any `http(s)` URI on a loopback host, any port and path (RFC 8252 §7.3).
fn is_loopback_uri(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https") || u.fragment().is_some() {
        return false;
    }
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn redirect_allowed(client: &OAuthClient, uri: &str) -> bool {
    if client.redirect_uris.is_empty() {
        is_loopback_uri(uri)
    } else {
        client.redirect_uris.iter().any(|r| r == uri)
    }
}

/// The organization named by a `Host` like `acme.fra1.qualtrics.com` or `acme.qualtrics.com`.
fn org_of_host(host: &str) -> Option<String> {
    let h = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let rest = h
        .strip_suffix(".qualtrics.com")
        .or_else(|| h.strip_suffix(".localhost"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [org, _dc] => Some(org.to_string()),
        [one] if hosts::dc_of_host(&h).is_none() => Some(one.to_string()),
        _ => None,
    }
}

/// A checked authorization request.
struct AuthRequest {
    client: OAuthClient,
    redirect_uri: String,
    state: Option<String>,
    scopes: Vec<String>,
}

/// Validates an authorization request. `Err(page)`: answer with that response (an error page,
/// or an error redirect once the redirect URI is known to be safe).
fn check_auth_request(
    sim: &SharedSim,
    headers: &HeaderMap,
    p: &BTreeMap<String, String>,
) -> Result<AuthRequest, Box<Response>> {
    let Some(client_id) = p.get("client_id") else {
        return Err(Box::new(error_page("client_id is missing.")));
    };
    let Some(client) = sim
        .oauth
        .clients()
        .into_iter()
        .find(|c| c.client_id == *client_id)
    else {
        return Err(Box::new(error_page(&format!(
            "Unknown client_id '{client_id}'."
        ))));
    };
    let Some(redirect_uri) = p.get("redirect_uri").cloned() else {
        return Err(Box::new(error_page("redirect_uri is missing.")));
    };
    if !redirect_allowed(&client, &redirect_uri) {
        return Err(Box::new(error_page(&format!(
            "redirect_uri '{redirect_uri}' is not registered for this client."
        ))));
    }
    let host_org = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(org_of_host);
    if let Some(org) = p.get("organization").cloned().or(host_org)
        && !org.eq_ignore_ascii_case(&sim.cfg.brand_id)
    {
        return Err(Box::new(error_page(&format!(
            "Organization '{org}' is not served here (this brand is '{}').",
            sim.cfg.brand_id
        ))));
    }
    let state = p.get("state").cloned();
    let fail = |error: &str, desc: &str| {
        Err(Box::new(redirect_with(
            &redirect_uri,
            &[("error", error), ("error_description", desc)],
            state.as_deref(),
        )))
    };
    match p.get("response_type").map(String::as_str) {
        Some("code") => {}
        None => return fail("invalid_request", "response_type is missing."),
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "Only response_type=code is supported.",
            );
        }
    }
    if !client.grants.iter().any(|g| g == GRANT_AUTHORIZATION_CODE) {
        return fail(
            "unauthorized_client",
            "This client may not use the authorization_code grant.",
        );
    }
    let scopes = match requested_scopes(p.get("scope").map(String::as_str), &client.scopes) {
        Ok(s) => s,
        Err(e) => return fail("invalid_scope", &e),
    };
    Ok(AuthRequest {
        client,
        redirect_uri,
        state,
        scopes,
    })
}

/// Issues a code for `user_idx` and redirects the browser back to the client.
fn approve(sim: &SharedSim, dc: String, req: &AuthRequest, user_idx: usize) -> Response {
    let now = sim.clock.now_ms();
    let code = sim.oauth.inner.lock().issue_code(
        sim.oauth.seed,
        now,
        AuthCode {
            client_id: req.client.client_id.clone(),
            user_idx,
            scopes: req.scopes.clone(),
            redirect_uri: req.redirect_uri.clone(),
            dc,
            expires_ms: now + CODE_TTL_MS,
        },
    );
    redirect_with(&req.redirect_uri, &[("code", &code)], req.state.as_deref())
}

async fn authorize_get(
    State(sim): State<SharedSim>,
    dc: Option<Extension<RequestedDc>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = match parse_form(q.unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let req = match check_auth_request(&sim, &headers, &p) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if let Some(a) = sim.oauth.auto_approve() {
        return approve(&sim, dc_of(&sim, &dc), &req, a.user_idx);
    }
    consent_page(&sim, &p, &req)
}

fn consent_page(sim: &SharedSim, p: &BTreeMap<String, String>, req: &AuthRequest) -> Response {
    let mut hidden = String::new();
    for key in [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "organization",
    ] {
        if let Some(v) = p.get(key) {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{key}\" value=\"{}\">\n",
                html_escape(v)
            ));
        }
    }
    let options: String = sim
        .users
        .read()
        .iter()
        .filter(|u| u.account_status == "active")
        .map(|u| {
            format!(
                "<option value=\"{}\">{} ({})</option>\n",
                html_escape(&u.username),
                html_escape(&u.username),
                html_escape(role_of(u))
            )
        })
        .collect();
    let scopes: String = req
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", html_escape(s)))
        .collect();
    let body = format!(
        "<p><strong>{client}</strong> asks to access the Qualtrics brand <strong>{brand}</strong> with these scopes:</p>\n<ul>{scopes}</ul>\n\
<form method=\"post\" action=\"/oauth2/auth\">\n{hidden}<label>Sign in as <select name=\"user\">\n{options}</select></label>\n\
<button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\n\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n</form>",
        client = html_escape(&req.client.name),
        brand = html_escape(&sim.cfg.brand_id),
    );
    html(StatusCode::OK, "Authorize application", &body)
}

async fn authorize_post(
    State(sim): State<SharedSim>,
    dc: Option<Extension<RequestedDc>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match parse_form(&body) {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let req = match check_auth_request(&sim, &headers, &p) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match p.get("decision").map(String::as_str) {
        Some("deny") => redirect_with(
            &req.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "The user denied the request."),
            ],
            req.state.as_deref(),
        ),
        Some("approve") => {
            let Some(user) = p.get("user") else {
                return error_page("Choose the user to sign in as.");
            };
            let Some(idx) = find_user(&sim.users.read(), user) else {
                return error_page(&format!("Unknown user '{user}'."));
            };
            approve(&sim, dc_of(&sim, &dc), &req, idx)
        }
        _ => error_page("decision must be 'approve' or 'deny'."),
    }
}

/// A user by username, user id or role name (`viewer`), case-insensitive for names.
pub fn find_user(users: &[User], key: &str) -> Option<usize> {
    users
        .iter()
        .position(|u| u.id == key)
        .or_else(|| {
            users
                .iter()
                .position(|u| u.username.eq_ignore_ascii_case(key))
        })
        .or_else(|| {
            users
                .iter()
                .position(|u| role_of(u).eq_ignore_ascii_case(key))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_grammar_and_cover() {
        assert!(valid_scope("read:surveys"));
        assert!(valid_scope("manage:all"));
        assert!(valid_scope("offline"));
        assert!(!valid_scope("read:survey"));
        assert!(!valid_scope("delete:surveys"));
        let g = vec!["manage:surveys".to_string()];
        assert!(covers(&g, "read:surveys"));
        assert!(!covers(&g, "read:users"));
        assert!(covers(&["manage:all".to_string()], "write:users"));
        let allowed = vec!["read:surveys".to_string(), "read:survey_responses".into()];
        assert_eq!(
            requested_scopes(Some("read:surveys read:surveys"), &allowed).unwrap(),
            vec!["read:surveys"]
        );
        assert!(requested_scopes(Some("manage:all"), &allowed).is_err());
        assert_eq!(requested_scopes(None, &allowed).unwrap(), allowed);
    }

    #[test]
    fn loopback_redirects() {
        assert!(is_loopback_uri("http://127.0.0.1:53682/callback"));
        assert!(is_loopback_uri("http://localhost/cb"));
        assert!(is_loopback_uri("http://[::1]:9/x"));
        assert!(!is_loopback_uri("https://evil.example/cb"));
        assert!(!is_loopback_uri("http://127.0.0.1/cb#frag"));
    }

    #[test]
    fn host_orgs() {
        assert_eq!(org_of_host("acme.fra1.qualtrics.com"), Some("acme".into()));
        assert_eq!(org_of_host("acme.qualtrics.com"), Some("acme".into()));
        assert_eq!(org_of_host("fra1.qualtrics.com"), None);
        assert_eq!(org_of_host("127.0.0.1:80"), None);
    }

    #[test]
    fn seeded_clients_are_deterministic() {
        let cfg = SimConfig::default();
        let users = super::super::account::seed_users(&cfg);
        let a = OAuthState::new(&cfg, &users).clients();
        let b = OAuthState::new(&cfg, &users).clients();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].client_id, b[0].client_id);
        assert_eq!(a[2].client_secret, b[2].client_secret);
        assert_eq!(a[2].user_idx, Some(2));
    }
}
