//! Admin endpoints under `/_sim` that tests and developers call to steer the simulator (clock,
//! credentials, permissions, OAuth settings, revocation, faults). They sit outside `/API/v3`,
//! need no token and are never subject to injected faults. The simulator is a test tool: these
//! endpoints reveal secrets by design. JSON in and out with snake_case keys; errors are
//! `{"error": "..."}` with 400 or 404. Fault and TLS admin routes live in their own modules and
//! are only merged here.
use super::SharedSim;
use super::account::User;
use super::oauth::{self, AutoApprove, OAuthClient, Revocation};
use crate::clock;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/_sim/credentials", get(credentials))
        .route("/_sim/oauth/clients", post(create_client))
        .route(
            "/_sim/oauth/auto-approve",
            post(set_auto_approve).delete(clear_auto_approve),
        )
        .route("/_sim/oauth/settings", get(get_settings).post(set_settings))
        .route("/_sim/tokens/revoke", post(revoke))
        .route("/_sim/users/{user}/permissions", post(set_permissions))
        .route("/_sim/clock", get(get_clock))
        .route("/_sim/clock/advance", post(advance_clock))
        .merge(super::faults::admin_routes())
        .merge(super::tls::admin_routes())
        .merge(super::eventsubs::admin_routes())
        .merge(super::editor::admin_routes())
}

/// An admin API error: `{"error": message}`.
#[derive(Debug)]
pub struct AdminError(pub StatusCode, pub String);

impl AdminError {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        AdminError(StatusCode::BAD_REQUEST, msg.into())
    }
    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        AdminError(StatusCode::NOT_FOUND, msg.into())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({"error": self.1}))
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

type AdminResult = Result<Response, AdminError>;

fn ok(v: Value) -> AdminResult {
    Ok(json_response(StatusCode::OK, &v))
}

/// Parses a JSON object body; an empty body is `{}`. Keys outside `allowed` are refused so that
/// a typo does not silently do nothing.
fn body_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, AdminError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::bad(format!("body is not valid JSON: {e}")))?;
    let Value::Object(m) = v else {
        return Err(AdminError::bad("body must be a JSON object"));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(AdminError::bad(format!(
            "unknown field '{k}' (expected one of: {})",
            allowed.join(", ")
        )));
    }
    Ok(m)
}

fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>, AdminError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AdminError::bad(format!("'{key}' must be a string"))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, AdminError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(AdminError::bad(format!("'{key}' must be true or false"))),
    }
}

fn opt_str_list(m: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, AdminError> {
    let err = || {
        AdminError::bad(format!(
            "'{key}' must be a list of strings or one space-separated string"
        ))
    };
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.split_whitespace().map(String::from).collect())),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(err))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(err()),
    }
}

fn user_idx(sim: &SharedSim, key: &str) -> Result<usize, AdminError> {
    oauth::find_user(&sim.users.read(), key).ok_or_else(|| {
        AdminError::not_found(format!(
            "no user '{key}' (give a username, a user id or a role such as 'viewer')"
        ))
    })
}

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "role": oauth::role_of(u),
        "user_type": u.user_type,
        "account_status": u.account_status,
        "api_token": u.api_token,
        "permissions": {
            "api_access": u.permissions.api_access,
            "manage_directories": u.permissions.manage_directories,
            "brand_admin": u.permissions.brand_admin,
        },
    })
}

fn client_json(c: &OAuthClient, users: &[User]) -> Value {
    let user = c.user_idx.and_then(|i| users.get(i));
    json!({
        "client_id": c.client_id,
        "client_secret": c.client_secret,
        "name": c.name,
        "grants": c.grants,
        "scopes": c.scopes,
        "user": user.map(|u| u.username.clone()),
        "user_id": user.map(|u| u.id.clone()),
        "redirect_uris": c.redirect_uris,
        "any_loopback_redirect_uri": c.redirect_uris.is_empty(),
    })
}

fn settings_json(sim: &SharedSim) -> Value {
    let (access, refresh) = sim.oauth.ttls();
    let auto = sim.oauth.auto_approve().map(|a| {
        let users = sim.users.read();
        json!({
            "user": users.get(a.user_idx).map(|u| u.username.clone()),
            "organization": a.organization,
        })
    });
    json!({
        "access_token_ttl_secs": access,
        "refresh_token_ttl_secs": refresh,
        "auto_approve": auto,
    })
}

async fn credentials(State(sim): State<SharedSim>) -> AdminResult {
    let clients = sim.oauth.clients();
    let users = sim.users.read();
    let home = sim.home_dc();
    ok(json!({
        "brand_id": sim.cfg.brand_id,
        "home_dc": home,
        "api_host": format!("{home}.qualtrics.com"),
        "token_endpoint": "/oauth2/token",
        "authorize_endpoint": "/oauth2/auth",
        "users": users.iter().map(user_json).collect::<Vec<_>>(),
        "oauth_clients": clients.iter().map(|c| client_json(c, &users)).collect::<Vec<_>>(),
        "oauth_settings": {
            "access_token_ttl_secs": sim.oauth.ttls().0,
            "refresh_token_ttl_secs": sim.oauth.ttls().1,
            "live_refresh_tokens": sim.oauth.refresh_token_count(),
        },
    }))
}

async fn create_client(State(sim): State<SharedSim>, body: Bytes) -> AdminResult {
    let m = body_object(
        &body,
        &[
            "user",
            "grants",
            "scopes",
            "client_id",
            "client_secret",
            "name",
            "redirect_uris",
        ],
    )?;
    let user = match opt_str(&m, "user")? {
        Some(u) => Some(user_idx(&sim, &u)?),
        None => None,
    };
    let grants = opt_str_list(&m, "grants")?
        .unwrap_or_else(|| vec![oauth::GRANT_CLIENT_CREDENTIALS.to_string()]);
    if grants.is_empty() {
        return Err(AdminError::bad("'grants' must not be empty"));
    }
    if let Some(g) = grants.iter().find(|g| !oauth::GRANTS.contains(&g.as_str())) {
        return Err(AdminError::bad(format!(
            "unknown grant '{g}' (expected {})",
            oauth::GRANTS.join(", ")
        )));
    }
    if grants.iter().any(|g| g == oauth::GRANT_CLIENT_CREDENTIALS) && user.is_none() {
        return Err(AdminError::bad(
            "a client_credentials client needs 'user', the user its tokens act as",
        ));
    }
    let scopes = opt_str_list(&m, "scopes")?.unwrap_or_else(|| vec!["manage:all".into()]);
    if let Some(s) = scopes.iter().find(|s| !oauth::valid_scope(s)) {
        return Err(AdminError::bad(format!(
            "invalid scope '{s}' (read:|write:|manage:<resource>, manage:all, openid, offline)"
        )));
    }
    let redirect_uris = opt_str_list(&m, "redirect_uris")?.unwrap_or_default();
    if let Some(r) = redirect_uris.iter().find(|r| url::Url::parse(r).is_err()) {
        return Err(AdminError::bad(format!("redirect URI '{r}' is not a URL")));
    }
    let (mut id, mut secret) = (opt_str(&m, "client_id")?, opt_str(&m, "client_secret")?);
    if id.as_deref() == Some("") || secret.as_deref() == Some("") {
        return Err(AdminError::bad(
            "client_id and client_secret must not be empty",
        ));
    }
    if id.is_none() || secret.is_none() {
        let (mid, msecret) = sim.oauth.mint_client_credentials();
        id.get_or_insert(mid);
        secret.get_or_insert(msecret);
    }
    let client = OAuthClient {
        client_id: id.unwrap_or_default(),
        client_secret: secret.unwrap_or_default(),
        name: opt_str(&m, "name")?.unwrap_or_else(|| "Client created through /_sim".into()),
        grants,
        scopes,
        user_idx: user,
        redirect_uris,
    };
    sim.oauth
        .add_client(client.clone())
        .map_err(AdminError::bad)?;
    ok(client_json(&client, &sim.users.read()))
}

async fn set_auto_approve(State(sim): State<SharedSim>, body: Bytes) -> AdminResult {
    let m = body_object(&body, &["user", "organization"])?;
    let user = opt_str(&m, "user")?.ok_or_else(|| AdminError::bad("'user' is required"))?;
    let idx = user_idx(&sim, &user)?;
    let organization = opt_str(&m, "organization")?.unwrap_or_else(|| sim.cfg.brand_id.clone());
    if !organization.eq_ignore_ascii_case(&sim.cfg.brand_id) {
        return Err(AdminError::not_found(format!(
            "no organization '{organization}' (this brand is '{}')",
            sim.cfg.brand_id
        )));
    }
    sim.oauth.set_auto_approve(Some(AutoApprove {
        user_idx: idx,
        organization: sim.cfg.brand_id.clone(),
    }));
    ok(settings_json(&sim))
}

async fn clear_auto_approve(State(sim): State<SharedSim>) -> AdminResult {
    sim.oauth.set_auto_approve(None);
    ok(settings_json(&sim))
}

async fn get_settings(State(sim): State<SharedSim>) -> AdminResult {
    ok(settings_json(&sim))
}

fn positive_secs(v: &Value, key: &str) -> Result<u64, AdminError> {
    v.as_u64().filter(|s| *s > 0).ok_or_else(|| {
        AdminError::bad(format!(
            "'{key}' must be a positive whole number of seconds"
        ))
    })
}

async fn set_settings(State(sim): State<SharedSim>, body: Bytes) -> AdminResult {
    let m = body_object(&body, &["access_token_ttl_secs", "refresh_token_ttl_secs"])?;
    let access = match m.get("access_token_ttl_secs") {
        None => None,
        Some(v) => Some(positive_secs(v, "access_token_ttl_secs")?),
    };
    // null (or 0) = refresh tokens valid until revoked.
    let refresh = match m.get("refresh_token_ttl_secs") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) if v.as_u64() == Some(0) => Some(None),
        Some(v) => Some(Some(positive_secs(v, "refresh_token_ttl_secs")?)),
    };
    sim.oauth.set_ttls(access, refresh);
    ok(settings_json(&sim))
}

async fn revoke(State(sim): State<SharedSim>, body: Bytes) -> AdminResult {
    let m = body_object(&body, &["access_token", "refresh_token", "user", "all"])?;
    let what = Revocation {
        access_token: opt_str(&m, "access_token")?,
        refresh_token: opt_str(&m, "refresh_token")?,
        user_idx: match opt_str(&m, "user")? {
            Some(u) => Some(user_idx(&sim, &u)?),
            None => None,
        },
        all: opt_bool(&m, "all")?.unwrap_or(false),
    };
    if what.access_token.is_none()
        && what.refresh_token.is_none()
        && what.user_idx.is_none()
        && !what.all
    {
        return Err(AdminError::bad(
            "say what to revoke: access_token, refresh_token, user or all: true",
        ));
    }
    let (access, refresh) = sim.oauth.revoke(&sim, &what);
    let named = what.access_token.is_some() || what.refresh_token.is_some();
    if named && what.user_idx.is_none() && !what.all && access + refresh == 0 {
        return Err(AdminError::not_found(
            "no such live token (unknown, expired or already revoked)",
        ));
    }
    ok(json!({"revoked_access_tokens": access, "revoked_refresh_tokens": refresh}))
}

async fn set_permissions(
    State(sim): State<SharedSim>,
    Path(user): Path<String>,
    body: Bytes,
) -> AdminResult {
    let m = body_object(&body, &["api_access", "manage_directories", "brand_admin"])?;
    let (api, md, admin) = (
        opt_bool(&m, "api_access")?,
        opt_bool(&m, "manage_directories")?,
        opt_bool(&m, "brand_admin")?,
    );
    let idx = user_idx(&sim, &user)?;
    let mut users = sim.users.write();
    let u = users
        .get_mut(idx)
        .ok_or_else(|| AdminError::not_found(format!("no user '{user}'")))?;
    if let Some(v) = api {
        u.permissions.api_access = v;
    }
    if let Some(v) = md {
        u.permissions.manage_directories = v;
    }
    if let Some(v) = admin {
        u.permissions.brand_admin = v;
    }
    ok(user_json(u))
}

fn clock_json(sim: &SharedSim) -> Value {
    let now = sim.clock.now_ms();
    json!({
        "now_ms": now,
        "now": clock::iso_millis(now),
        "start_ms": sim.clock.start_ms(),
        "start": clock::iso_millis(sim.clock.start_ms()),
    })
}

async fn get_clock(State(sim): State<SharedSim>) -> AdminResult {
    ok(clock_json(&sim))
}

async fn advance_clock(State(sim): State<SharedSim>, body: Bytes) -> AdminResult {
    let m = body_object(&body, &["seconds"])?;
    let secs = m
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 100.0 * 365.0 * 86_400.0)
        .ok_or_else(|| {
            AdminError::bad("'seconds' must be a number ≥ 0 (simulated time never goes back)")
        })?;
    sim.clock.advance((secs * 1000.0).round() as i64);
    ok(clock_json(&sim))
}
