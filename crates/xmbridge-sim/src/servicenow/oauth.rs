//! `POST /oauth_token.do`: the password, refresh_token and client_credentials grants, the users'
//! credentials, and the token store. Every refusal is ServiceNow's non-standard
//! `401 {"error":"server_error","error_description":"access_denied"}`.

use super::SharedSn;
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;

/// A user who can authenticate (the `sys_user` row holds the same name and email).
#[derive(Clone, Debug, Serialize)]
pub struct SnUser {
    /// The login name, unique in the instance.
    pub user_name: String,
    /// The password (Basic auth and the password grant).
    pub password: String,
    /// The user's roles, e.g. `itil` or `admin`.
    pub roles: Vec<String>,
    /// "Web service access only": such users pass the Basic-auth gate for interactive users.
    pub web_service_access_only: bool,
    /// Inactive users cannot authenticate.
    pub active: bool,
    pub(crate) locked_out: bool,
}

/// An Application Registry entry (OAuth client).
#[derive(Clone, Debug, Serialize)]
pub struct OAuthClient {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// The OAuth Application User: who client_credentials calls run as (none: grant refused).
    pub app_user: Option<String>,
    pub(crate) access_ttl_secs: u64,
    /// Refresh token lifetime, seconds.
    pub refresh_ttl_secs: u64,
}

#[derive(Default, Debug, Serialize)]
/// Who can authenticate against the instance.
pub struct Credentials {
    /// Users that can log in.
    pub users: Vec<SnUser>,
    /// Registered OAuth clients.
    pub clients: Vec<OAuthClient>,
}

impl Credentials {
    /// The user called `name`, if any.
    pub fn user(&self, name: &str) -> Option<&SnUser> {
        self.users.iter().find(|u| u.user_name == name)
    }

    /// The user when the password matches and the account may log in.
    pub fn check_password(&self, name: &str, password: &str) -> Option<&SnUser> {
        self.user(name)
            .filter(|u| u.password == password && u.active && !u.locked_out)
    }

    /// The client with this id, if `secret` is its secret.
    pub fn client(&self, id: &str, secret: &str) -> Option<&OAuthClient> {
        self.clients
            .iter()
            .find(|c| c.client_id == id && c.client_secret == secret)
    }
}

#[derive(Clone, Debug)]
struct Grant {
    user: String,
    expires_ms: i64,
}

#[derive(Default, Debug)]
/// The OAuth access and refresh tokens the instance issued.
pub struct TokenStore {
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
    issued: u64,
}

impl TokenStore {
    /// The user behind a live access token.
    pub fn access_user(&self, token: &str, now_ms: i64) -> Option<String> {
        self.access
            .get(token)
            .filter(|g| g.expires_ms > now_ms)
            .map(|g| g.user.clone())
    }

    fn mint(&mut self, seed: u64, kind: u64) -> String {
        self.issued += 1;
        Rng::derive(seed, &[0x70C, kind, self.issued]).alnum(86)
    }

    /// How many access tokens have been issued so far (tests count grants with it).
    pub fn issued_access_tokens(&self) -> usize {
        self.access.len()
    }

    /// Revokes every token (of one user, or of all); returns how many were dropped.
    pub fn revoke(&mut self, user: Option<&str>) -> usize {
        let before = self.access.len() + self.refresh.len();
        let keep = |g: &Grant| user.is_some_and(|u| g.user != u);
        self.access.retain(|_, g| keep(g));
        self.refresh.retain(|_, g| keep(g));
        before - self.access.len() - self.refresh.len()
    }

    /// Makes access tokens (of one user, or all) expire now; refresh tokens stay valid.
    pub fn expire_access(&mut self, user: Option<&str>) -> usize {
        let mut n = 0;
        for g in self.access.values_mut() {
            if user.is_none_or(|u| g.user == u) {
                g.expires_ms = i64::MIN;
                n += 1;
            }
        }
        n
    }
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "server_error", "error_description": "access_denied"})),
    )
        .into_response()
}

/// `POST /oauth_token.do` with a form body.
pub async fn token(State(sim): State<SharedSn>, headers: HeaderMap, body: Bytes) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        // The docs only say JSON "gives an unspecified error"; we answer the usual refusal.
        return denied();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let now = sim.clock.now_ms();
    let seed = sim.cfg.seed;
    let mut db = sim.db.lock();
    if db
        .property("com.snc.platform.security.oauth.is.active")
        .as_deref()
        == Some("false")
    {
        return denied();
    }
    let Some(client) = db
        .creds
        .client(field("client_id"), field("client_secret"))
        .cloned()
    else {
        return denied();
    };
    let access_ms = client.access_ttl_secs as i64 * 1000;
    let refresh_ms = client.refresh_ttl_secs as i64 * 1000;
    let (user, refresh) = match field("grant_type") {
        "password" => {
            let Some(u) = db
                .creds
                .check_password(field("username"), field("password"))
                .map(|u| u.user_name.clone())
            else {
                return denied();
            };
            let rt = db.tokens.mint(seed, 2);
            db.tokens.refresh.insert(
                rt.clone(),
                Grant {
                    user: u.clone(),
                    expires_ms: now + refresh_ms,
                },
            );
            (u, Some(rt))
        }
        "refresh_token" => {
            let rt = field("refresh_token").to_string();
            let Some(g) = db.tokens.refresh.get(&rt).filter(|g| g.expires_ms > now) else {
                return denied();
            };
            let u = g.user.clone();
            if db.creds.user(&u).is_none_or(|u| !u.active || u.locked_out) {
                return denied();
            }
            // ServiceNow hands the same refresh token back; it keeps its own expiry.
            (u, Some(rt))
        }
        "client_credentials" => {
            if !db.property_true("glide.oauth.inbound.client.credential.grant_type.enabled") {
                return denied();
            }
            let Some(u) = client.app_user.clone() else {
                return denied();
            };
            if db.creds.user(&u).is_none_or(|u| !u.active) {
                return denied();
            }
            (u, None)
        }
        _ => return denied(),
    };
    let at = db.tokens.mint(seed, 1);
    db.tokens.access.insert(
        at.clone(),
        Grant {
            user,
            expires_ms: now + access_ms,
        },
    );
    let mut body = json!({
        "access_token": at,
        "scope": "useraccount",
        "token_type": "Bearer",
        "expires_in": client.access_ttl_secs.saturating_sub(1),
    });
    if let Some(rt) = refresh {
        body["refresh_token"] = json!(rt);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}
