//! Sign-in, users and their API tokens (admins), and the audit log (admins).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Caller};
use super::error::{ApiError, ApiResult, Json, Path, Query};
use super::schema::{self as s, object, wrap};
use super::{Api, Need, Route, route};
use crate::users::Role;

const USERS_RULE: &str = "users are managed by admins";
const AUDIT_RULE: &str = "the audit log is read by admins";
const TOKENS_RULE: &str = "API tokens are made by admins";

pub(super) fn routes() -> Vec<Route> {
    let login = object(
        &[("user", s::string()), ("password", s::string())],
        &["user", "password"],
    );
    let session = object(
        &[
            ("csrf_token", s::string()),
            ("user", s::user()),
            ("expires_at", s::time()),
        ],
        &["csrf_token", "user"],
    );
    let me = object(
        &[
            ("name", s::string()),
            ("role", s::one_of(&["admin", "member"])),
            ("created_at", s::time()),
            ("via", s::one_of(&["session", "token"])),
            ("token_id", s::opt_string()),
        ],
        &["name", "role", "via"],
    );
    let new_user = object(
        &[
            ("name", s::string()),
            ("role", s::one_of(&["admin", "member"])),
            ("password", s::string()),
        ],
        &["name", "role", "password"],
    );
    let admin_users = Need::Admin {
        what: "manage users",
        rule: USERS_RULE,
    };
    vec![
        route(
            Method::POST,
            "/api/v1/session",
            "Sign in: sets the session cookie and answers the CSRF token",
            Need::Public,
            Some(login),
            201,
            Some(session),
            auth::login,
        ),
        route(
            Method::DELETE,
            "/api/v1/session",
            "Sign out: ends the session",
            Need::Signed,
            None,
            204,
            None,
            auth::logout,
        ),
        route(
            Method::GET,
            "/api/v1/me",
            "Who is signed in, and how",
            Need::Signed,
            None,
            200,
            Some(me),
            auth::me,
        ),
        route(
            Method::GET,
            "/api/v1/users",
            "Every user (admins)",
            admin_users,
            None,
            200,
            Some(wrap("users", s::array(s::user()))),
            list,
        ),
        route(
            Method::POST,
            "/api/v1/users",
            "Adds a user (admins)",
            Need::Admin {
                what: "add users",
                rule: USERS_RULE,
            },
            Some(new_user),
            201,
            Some(wrap("user", s::user())),
            add,
        ),
        route(
            Method::DELETE,
            "/api/v1/users/{name}",
            "Removes a user, revokes their tokens and ends their sessions (admins; not the last admin)",
            Need::Admin {
                what: "remove users",
                rule: USERS_RULE,
            },
            None,
            204,
            None,
            remove,
        ),
        route(
            Method::PUT,
            "/api/v1/users/{name}/password",
            "Sets a user's password and ends their sessions (admins, or the user themselves)",
            Need::Signed,
            Some(wrap("password", s::string())),
            204,
            None,
            set_password,
        ),
        route(
            Method::POST,
            "/api/v1/users/{name}/tokens",
            "Makes an API token for a user; its secret is in this answer only (admins)",
            Need::Admin {
                what: "make API tokens",
                rule: TOKENS_RULE,
            },
            Some(object(
                &[(
                    "expires",
                    json!({"type": "string", "nullable": true, "description": "e.g. 90d, 12h, 30m; null: never"}),
                )],
                &[],
            )),
            201,
            Some(object(
                &[("token", s::string()), ("info", s::token_info())],
                &["token", "info"],
            )),
            create_token,
        ),
        route(
            Method::GET,
            "/api/v1/users/{name}/tokens",
            "A user's API tokens, never their secrets (admins, or the user themselves)",
            Need::Signed,
            None,
            200,
            Some(wrap("tokens", s::array(s::token_info()))),
            list_tokens,
        ),
        route(
            Method::DELETE,
            "/api/v1/users/{name}/tokens/{id}",
            "Revokes an API token (admins, or the user themselves)",
            Need::Signed,
            None,
            204,
            None,
            revoke_token,
        ),
        route(
            Method::GET,
            "/api/v1/audit",
            "The audit log, newest first: who did what, when, from where (admins)",
            Need::Admin {
                what: "read the audit log",
                rule: AUDIT_RULE,
            },
            None,
            200,
            Some(wrap(
                "entries",
                s::array(object(
                    &[
                        ("id", s::integer()),
                        ("at", s::time()),
                        ("actor", s::string()),
                        ("via", s::string()),
                        ("action", s::string()),
                        ("target", s::string()),
                        ("detail", s::any_object()),
                        ("address", s::opt_string()),
                    ],
                    &["id", "at", "actor", "via", "action", "target"],
                )),
            )),
            audit,
        )
        .with_query(&[(
            "limit",
            "how many entries, newest first (default 100, at most 1000)",
        )]),
    ]
}

async fn list(State(api): State<Arc<Api>>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(json!({"users": api.app.users.list()?})))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: String,
    password: String,
}

async fn add(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewUser>,
) -> ApiResult<impl IntoResponse> {
    let role: Role = body.role.parse().map_err(|_| {
        ApiError::invalid(
            format!("unknown role '{}'", body.role),
            Some("use admin or member".into()),
        )
    })?;
    let users = api.app.users.clone();
    let password = SecretString::from(body.password);
    let name = body.name.clone();
    let user = tokio::task::spawn_blocking(move || users.add(&name, role, &password))
        .await
        .map_err(|e| ApiError::internal("adding the user", &e))??;
    api.audit(caller.entry("user.add", &user.name, json!({"role": user.role})));
    Ok((StatusCode::CREATED, axum::Json(json!({"user": user}))))
}

async fn remove(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    api.app.users.remove(&name)?;
    api.audit(caller.entry("user.remove", &name, json!({})));
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses unless the caller is an admin or `name` themselves.
fn self_or_admin(caller: &Caller, name: &str, what: &str) -> ApiResult<()> {
    if caller.is_admin() || caller.user.name == name {
        return Ok(());
    }
    Err(ApiError::forbidden(
        &format!("only an admin or {name} may {what}"),
        "a user's password and tokens are managed by that user or an admin",
        "ask an admin",
    ))
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<NewPassword>,
) -> ApiResult<StatusCode> {
    self_or_admin(&caller, &name, "change this password")?;
    let users = api.app.users.clone();
    let password = SecretString::from(body.password);
    let n = name.clone();
    tokio::task::spawn_blocking(move || users.set_password(&n, &password))
        .await
        .map_err(|e| ApiError::internal("setting the password", &e))??;
    api.audit(caller.entry("user.password", &name, json!({})));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct NewToken {
    #[serde(default)]
    expires: Option<String>,
}

/// `90d`, `12h`, `30m`.
fn parse_expiry(text: &str) -> ApiResult<Duration> {
    let bad = || {
        ApiError::invalid(
            format!("'{text}' is not a duration"),
            Some("give a number and a unit: 90d, 12h or 30m".into()),
        )
    };
    let t = text.trim();
    let (n, unit) = t.split_at(t.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

async fn create_token(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<NewToken>,
) -> ApiResult<impl IntoResponse> {
    let expires = body.expires.as_deref().map(parse_expiry).transpose()?;
    let (info, secret) = api.app.users.create_token(&name, expires)?;
    api.audit(caller.entry(
        "token.create",
        &name,
        json!({"token_id": info.id, "expires_at": info.expires_at}),
    ));
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"token": secret.expose_secret(), "info": info})),
    ))
}

async fn list_tokens(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    self_or_admin(&caller, &name, "see these tokens")?;
    api.app.users.get(&name)?;
    Ok(axum::Json(
        json!({"tokens": api.app.users.list_tokens(&name)?}),
    ))
}

async fn revoke_token(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    self_or_admin(&caller, &name, "revoke these tokens")?;
    if !api.app.users.list_tokens(&name)?.iter().any(|t| t.id == id) {
        return Err(ApiError::not_found(
            format!("user {name} has no token {id}"),
            Some(format!("list them with GET /api/v1/users/{name}/tokens")),
        ));
    }
    api.app.users.revoke_token(&id)?;
    api.audit(caller.entry("token.revoke", &name, json!({"token_id": id})));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(api): State<Arc<Api>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<axum::Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(axum::Json(json!({"entries": api.app.users.audit(limit)?})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_parse_and_refuse() {
        assert_eq!(
            parse_expiry("90d").ok(),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_expiry("30m").ok(), Some(Duration::from_secs(1800)));
        assert!(parse_expiry("0d").is_err());
        assert!(parse_expiry("d").is_err());
        assert!(parse_expiry("5y").is_err());
    }
}
