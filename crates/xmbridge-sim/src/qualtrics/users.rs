//! Brand-admin user APIs (`/users`, `/users/{id}/apitoken`) plus minimal `/groups` and
//! `/divisions/{id}` (docs/design/qualtrics-api.md §10 users, §2.1 API token).
//!
//! Users live in `Sim::users` (seeded by `account`); this module reads and edits that list but never
//! reorders it, because OAuth tokens and callers refer to users by index: a deleted user is marked
//! `account_status = "deleted"` and hidden instead of removed. It must not touch other modules' state.

use super::SharedSim;
use super::account::{Permissions, User};
use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::paging;
use crate::clock::{MS_PER_DAY, iso, parse_iso};
use crate::config::SimConfig;
use crate::rng::{Rng, hash_str};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const TAG_TOKEN: u64 = 0x05E5_70CE;
const TAG_NEW_USER: u64 = 0x05E5_0E11;
const TAG_GROUP: u64 = 0x06_0A;
const TAG_COUNTS: u64 = 0x05E5_C0C7;

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/users/{id}/apitoken", get(get_token).post(new_token))
        .route("/groups", get(list_groups))
        .route("/divisions/{id}", get(get_division))
}

/// A user group (`GR_…`). Group libraries (see `libraries`) use the same ids.
#[derive(Clone, Debug)]
pub struct Group {
    /// The group id (`GR_…`).
    pub id: String,
    /// The group's name.
    pub name: String,
}

/// The brand's user groups: deterministic from the seed.
pub fn seed_groups(cfg: &SimConfig) -> Vec<Group> {
    ["Customer Experience Team", "HR Research"]
        .iter()
        .enumerate()
        .map(|(i, name)| Group {
            id: format!(
                "GR_{}",
                Rng::derive(cfg.seed, &[TAG_GROUP, i as u64]).alnum(15)
            ),
            name: (*name).to_string(),
        })
        .collect()
}

fn visible(u: &User) -> bool {
    u.account_status != "deleted"
}

fn summary(u: &User) -> Value {
    json!({
        "id": u.id, "username": u.username, "firstName": u.first_name, "lastName": u.last_name,
        "email": u.email, "divisionId": u.division_id, "accountStatus": u.account_status,
    })
}

/// Response counts are not stored anywhere else: derive them from the user id, zero for users
/// created at run time (they have collected nothing yet).
fn response_counts(cfg: &SimConfig, u: &User) -> Value {
    if u.creation_ms >= cfg.start_ms {
        return json!({"auditable": 0, "generated": 0, "deleted": 0});
    }
    let mut r = Rng::derive(cfg.seed, &[TAG_COUNTS, hash_str(&u.id)]);
    let generated = r.range(0, 5000);
    let deleted = r.range(0, generated / 20);
    json!({"auditable": generated - deleted, "generated": generated, "deleted": deleted})
}

fn opt_iso(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(iso(m))).unwrap_or(Value::Null)
}

fn full(cfg: &SimConfig, u: &User) -> Value {
    json!({
        "id": u.id, "divisionId": u.division_id, "username": u.username,
        "firstName": u.first_name, "lastName": u.last_name, "userType": u.user_type,
        "organizationId": cfg.brand_id, "language": u.language, "timeZone": u.time_zone,
        "email": u.email, "accountStatus": u.account_status,
        "unsubscribed": u.unsubscribed,
        "accountCreationDate": iso(u.creation_ms),
        "accountExpirationDate": opt_iso(u.account_expiration_ms),
        "passwordLastChangedDate": iso(u.password_last_changed_ms),
        "passwordExpirationDate": opt_iso(u.password_expiration_ms),
        "lastLoginDate": iso(u.last_login_ms),
        "responseCounts": response_counts(cfg, u),
        "permissions": {
            "controlPanel": {
                "accountPermissions": {
                    "accessApi": {"state": state(u.permissions.api_access)},
                    "manageDirectories": {"state": state(u.permissions.manage_directories)},
                    "brandAdministrator": {"state": state(u.permissions.brand_admin)},
                }
            }
        },
    })
}

fn state(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn find(users: &[User], id: &str) -> Result<usize, ApiError> {
    users
        .iter()
        .position(|u| u.id == id && visible(u))
        .ok_or_else(|| ApiError::not_found(format!("User '{id}' was not found.")))
}

async fn list_users(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:users")?;
    caller.require_brand_admin()?;
    let filter = q.get("username").map(|s| s.to_lowercase());
    let items: Vec<Value> = sim
        .users
        .read()
        .iter()
        .filter(|u| visible(u))
        .filter(|u| {
            filter
                .as_ref()
                .is_none_or(|f| u.username.to_lowercase() == *f)
        })
        .map(summary)
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        "/API/v3/users",
        &q,
    )?))
}

async fn get_user(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("read:users")?;
    if caller.user.id != id {
        caller.require_brand_admin()?;
    }
    let users = sim.users.read();
    let i = find(&users, &id)?;
    Ok(envelope::ok(full(&sim.cfg, &users[i])))
}

pub(crate) use super::envelope::json_object as parse_body;

pub(crate) fn opt_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "Field '{key}' must be a string."
        ))),
    }
}

pub(crate) fn req_str<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match opt_str(m, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ApiError::bad_request(format!(
            "Missing required field '{key}'."
        ))),
    }
}

fn check_user_type(t: &str) -> Result<(), ApiError> {
    if t.starts_with("UT_") && t.len() > 3 {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid userType '{t}': user types are ids starting with 'UT_'."
        )))
    }
}

fn parse_date_field(m: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match opt_str(m, key)? {
        None => Ok(None),
        Some(s) => parse_iso(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Field '{key}' must be an ISO-8601 date-time such as 2026-12-31T00:00:00Z."
            ))
        }),
    }
}

async fn create_user(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:users")?;
    caller.require_brand_admin()?;
    let m = parse_body(&body)?;
    let username = req_str(&m, "username")?;
    let first = req_str(&m, "firstName")?;
    let last = req_str(&m, "lastName")?;
    let user_type = req_str(&m, "userType")?;
    check_user_type(user_type)?;
    let email = req_str(&m, "email")?;
    if !email.contains('@') {
        return Err(ApiError::bad_request(format!(
            "Field 'email' is not an e-mail address: '{email}'."
        )));
    }
    let password = req_str(&m, "password")?;
    if password.chars().count() < 8 {
        return Err(ApiError::bad_request(
            "Field 'password' must have at least 8 characters.",
        ));
    }
    let language = req_str(&m, "language")?;
    let time_zone = opt_str(&m, "timeZone")?.unwrap_or("UTC");
    let division_id = opt_str(&m, "divisionId")?.map(str::to_string);
    let account_expiration_ms = parse_date_field(&m, "accountExpirationDate")?;
    let now = sim.clock.now_ms();
    let mut users = sim.users.write();
    if users
        .iter()
        .any(|u| visible(u) && u.username.eq_ignore_ascii_case(username))
    {
        return Err(ApiError::bad_request(format!(
            "Username '{username}' is already taken in this brand."
        )));
    }
    // Id from the username and the number of users so far: deterministic for a given call sequence.
    let mut r = Rng::derive(
        sim.cfg.seed,
        &[TAG_NEW_USER, hash_str(username), users.len() as u64],
    );
    let id = format!("UR_{}", r.alnum(15));
    users.push(User {
        id: id.clone(),
        username: username.to_string(),
        first_name: first.to_string(),
        last_name: last.to_string(),
        email: email.to_string(),
        user_type: user_type.to_string(),
        // A new user has no API token until one is generated (GET apitoken answers 400).
        api_token: String::new(),
        permissions: Permissions {
            api_access: true,
            manage_directories: false,
            brand_admin: user_type == "UT_BRANDADMIN",
        },
        division_id,
        account_status: "active".into(),
        language: language.to_string(),
        time_zone: time_zone.to_string(),
        creation_ms: now,
        last_login_ms: now,
        password_last_changed_ms: now,
        password_expiration_ms: Some(now + 180 * MS_PER_DAY),
        account_expiration_ms,
        unsubscribed: false,
    });
    Ok(envelope::ok(json!({"id": id})))
}

async fn update_user(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:users")?;
    caller.require_brand_admin()?;
    let m = parse_body(&body)?;
    let now = sim.clock.now_ms();
    // Validate everything before changing anything, so a 400 leaves the user untouched.
    let status = match opt_str(&m, "status")? {
        None => None,
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "active" | "enabled" => Some("active"),
            "disabled" => Some("disabled"),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Invalid status '{s}': use 'Active' or 'Disabled'."
                )));
            }
        },
    };
    if let Some(t) = opt_str(&m, "userType")? {
        check_user_type(t)?;
    }
    let account_exp = parse_date_field(&m, "accountExpirationDate")?;
    let password = opt_str(&m, "password")?;
    if password.is_some_and(|p| p.chars().count() < 8) {
        return Err(ApiError::bad_request(
            "Field 'password' must have at least 8 characters.",
        ));
    }
    if m.get("unsubscribed").is_some_and(|v| !v.is_boolean()) {
        return Err(ApiError::bad_request(
            "Field 'unsubscribed' must be a boolean.",
        ));
    }
    let known = [
        "status",
        "username",
        "firstName",
        "lastName",
        "email",
        "userType",
        "language",
        "timeZone",
        "divisionId",
        "password",
        "accountExpirationDate",
        "unsubscribed",
    ];
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Unknown field '{k}'. Updatable fields: {}.",
            known.join(", ")
        )));
    }
    for k in [
        "username",
        "firstName",
        "lastName",
        "email",
        "language",
        "timeZone",
        "divisionId",
    ] {
        opt_str(&m, k)?;
    }
    let mut users = sim.users.write();
    let i = find(&users, &id)?;
    if let Some(name) = opt_str(&m, "username")?
        && users
            .iter()
            .enumerate()
            .any(|(j, u)| j != i && visible(u) && u.username.eq_ignore_ascii_case(name))
    {
        return Err(ApiError::bad_request(format!(
            "Username '{name}' is already taken in this brand."
        )));
    }
    let u = &mut users[i];
    if let Some(s) = status {
        u.account_status = s.to_string();
    }
    let text_fields: [(&str, &mut String); 7] = [
        ("username", &mut u.username),
        ("firstName", &mut u.first_name),
        ("lastName", &mut u.last_name),
        ("email", &mut u.email),
        ("userType", &mut u.user_type),
        ("language", &mut u.language),
        ("timeZone", &mut u.time_zone),
    ];
    for (key, slot) in text_fields {
        if let Some(Value::String(v)) = m.get(key) {
            *slot = v.clone();
        }
    }
    if m.contains_key("divisionId") {
        u.division_id = opt_str(&m, "divisionId")?.map(str::to_string);
    }
    if account_exp.is_some() {
        u.account_expiration_ms = account_exp;
    }
    if password.is_some() {
        u.password_last_changed_ms = now;
        u.password_expiration_ms = Some(now + 180 * MS_PER_DAY);
    }
    if let Some(Value::Bool(b)) = m.get("unsubscribed") {
        u.unsubscribed = *b;
    }
    Ok(envelope::ok_empty())
}

async fn delete_user(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("write:users")?;
    caller.require_brand_admin()?;
    if caller.user.id == id {
        return Err(ApiError::bad_request(
            "You cannot delete your own user account.",
        ));
    }
    let mut users = sim.users.write();
    let i = find(&users, &id)?;
    // Kept in place (indices are references elsewhere); the token dies with the account.
    users[i].account_status = "deleted".into();
    users[i].api_token.clear();
    Ok(envelope::ok_empty())
}

async fn get_token(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("read:users")?;
    caller.require_brand_admin()?;
    let users = sim.users.read();
    let u = &users[find(&users, &id)?];
    if u.api_token.is_empty() {
        return Err(ApiError::bad_request(format!(
            "User '{id}' has no API token. Create one with POST /users/{id}/apitoken."
        )));
    }
    Ok(envelope::ok(json!({"apiToken": u.api_token})))
}

async fn new_token(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("write:users")?;
    caller.require_brand_admin()?;
    let mut users = sim.users.write();
    let i = find(&users, &id)?;
    // Each new token is derived from the previous one: rotations replay identically per seed.
    let mut r = Rng::derive(
        sim.cfg.seed,
        &[TAG_TOKEN, hash_str(&id), hash_str(&users[i].api_token)],
    );
    let mut token = r.alnum(40);
    while users.iter().any(|u| u.api_token == token) {
        token = r.alnum(40);
    }
    users[i].api_token = token.clone();
    Ok(envelope::ok(json!({"apiToken": token})))
}

async fn list_groups(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:groups")?;
    caller.require_brand_admin()?;
    let items: Vec<Value> = seed_groups(&sim.cfg)
        .into_iter()
        .map(|g| json!({"id": g.id, "name": g.name}))
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        "/API/v3/groups",
        &q,
    )?))
}

async fn get_division(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("read:divisions")?;
    caller.require_brand_admin()?;
    let known = sim
        .users
        .read()
        .iter()
        .any(|u| u.division_id.as_deref() == Some(id.as_str()));
    if !known {
        return Err(ApiError::not_found(format!(
            "Division '{id}' was not found."
        )));
    }
    Ok(envelope::ok(json!({
        "id": id, "name": "Research Division", "status": "Active", "permissions": {},
    })))
}
