//! The simulator's own admin API under `/_sim/*` (no authentication; loopback only): credentials,
//! users, OAuth clients, properties, token revocation and expiry, the clock, rate-limit rules,
//! ACLs, faults, table dumps and business rules with their recorded deliveries.

use super::acl::{RowRule, TableRule};
use super::envelope::SnError;
use super::oauth::{OAuthClient, SnUser};
use super::ratelimit::Rule;
use super::rules::{BusinessRule, check_url};
use super::{SharedSn, schema};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Fault switches: each storm/throttle counts down one per REST call.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The next N REST calls fail with `storm_status` (default 503).
    pub storm: u32,
    /// The status a storm answers with; `None` means 503.
    pub storm_status: Option<u16>,
    /// The next N REST calls get 429 with `Retry-After: throttle_retry_after` (default 1 s).
    pub throttle: u32,
    /// Seconds sent in `Retry-After` with a throttle; `None` means 1.
    pub throttle_retry_after: Option<u64>,
    /// Every REST call waits this long first.
    pub slow_ms: u64,
    /// Basic auth refused for users who are not "web service access only" (401).
    pub basic_auth_gate: bool,
}

impl Faults {
    /// The fault this call hits (if any) and the delay to apply.
    pub fn take(&mut self) -> (Option<SnError>, u64) {
        if self.storm > 0 {
            self.storm -= 1;
            let status = self
                .storm_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let e = SnError::new(
                status,
                "Internal server error",
                Some("Simulated fault storm"),
            );
            return (Some(e), self.slow_ms);
        }
        if self.throttle > 0 {
            self.throttle -= 1;
            let after = self.throttle_retry_after.unwrap_or(1);
            let mut e = SnError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit exceeded",
                Some("Simulated throttling"),
            );
            e.headers.push(("retry-after", after.to_string()));
            return (Some(e), self.slow_ms);
        }
        (None, self.slow_ms)
    }
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg.into()}))).into_response()
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Box<Response>> {
    serde_json::from_value(v).map_err(|e| Box::new(bad(e.to_string())))
}

pub(crate) fn router() -> Router<SharedSn> {
    Router::new()
        .route("/_sim/credentials", get(credentials))
        .route("/_sim/users", post(add_user))
        .route("/_sim/oauth-clients", post(add_client))
        .route("/_sim/properties", post(set_properties))
        .route("/_sim/tokens/revoke", post(revoke))
        .route("/_sim/tokens/expire", post(expire))
        .route("/_sim/clock/advance", post(advance))
        .route(
            "/_sim/rate-limit-rules",
            get(list_limits).post(add_limit).delete(clear_limits),
        )
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route("/_sim/acl", get(get_acl).post(set_acl))
        .route("/_sim/acl/rows", post(add_row_rule))
        .route("/_sim/tables/{table}", get(dump))
        .route(
            "/_sim/business-rule",
            get(list_rules).post(add_rule).delete(clear_rules),
        )
        .route("/_sim/business-rule/deliveries", get(deliveries))
}

async fn credentials(State(sim): State<SharedSn>) -> Response {
    let db = sim.db.lock();
    Json(json!({
        "instance": sim.cfg.instance,
        "base_url": sim.base(),
        "users": db.creds.users,
        "oauth_clients": db.creds.clients,
        "integration_user": super::seed::INTEGRATION_USER,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct NewUser {
    user_name: String,
    password: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    web_service_access_only: bool,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    locked_out: bool,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// Adds or replaces a user (credentials and `sys_user` row).
async fn add_user(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    let u: NewUser = match parse(v) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if u.user_name.is_empty() {
        return bad("user_name is required");
    }
    let now = sim.now_sql();
    let seed = sim.cfg.seed;
    let mut db = sim.db.lock();
    db.creds.users.retain(|x| x.user_name != u.user_name);
    db.creds.users.push(SnUser {
        user_name: u.user_name.clone(),
        password: u.password,
        roles: u.roles,
        web_service_access_only: u.web_service_access_only,
        active: u.active,
        locked_out: u.locked_out,
    });
    let first = u.first_name.unwrap_or_default();
    let last = u.last_name.unwrap_or_default();
    let fields = json!({
        "user_name": u.user_name, "first_name": first, "last_name": last,
        "name": format!("{first} {last}").trim(),
        "email": u.email.unwrap_or_else(|| format!("{}@example.com", u.user_name)),
        "active": u.active.to_string(), "locked_out": u.locked_out.to_string(),
        "web_service_access_only": u.web_service_access_only.to_string(),
        "sys_updated_on": now, "sys_updated_by": "admin",
    });
    let rows = db.table_mut("sys_user");
    let existing = rows
        .iter_mut()
        .find(|r| r.get("user_name").and_then(Value::as_str) == fields["user_name"].as_str());
    let sys_id = match (existing, fields) {
        (Some(row), Value::Object(f)) => {
            row.extend(f);
            row.get("sys_id").cloned().unwrap_or_default()
        }
        (None, Value::Object(mut f)) => {
            let id = db.new_id(seed);
            f.insert("sys_id".into(), json!(id));
            f.insert("sys_created_on".into(), json!(now));
            f.insert("sys_created_by".into(), json!("admin"));
            f.insert("sys_mod_count".into(), json!("0"));
            f.insert("phone".into(), json!(""));
            db.table_mut("sys_user").push(f);
            json!(id)
        }
        _ => Value::Null,
    };
    super::acl::rebuild_tables(&mut db);
    Json(json!({"sys_id": sys_id})).into_response()
}

async fn add_client(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    #[derive(Deserialize)]
    struct NewClient {
        client_id: String,
        client_secret: String,
        #[serde(default)]
        app_user: Option<String>,
        #[serde(default)]
        access_ttl_secs: Option<u64>,
        #[serde(default)]
        refresh_ttl_secs: Option<u64>,
    }
    let c: NewClient = match parse(v) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut db = sim.db.lock();
    db.creds.clients.retain(|x| x.client_id != c.client_id);
    db.creds.clients.push(OAuthClient {
        client_id: c.client_id,
        client_secret: c.client_secret,
        app_user: c.app_user,
        access_ttl_secs: c.access_ttl_secs.unwrap_or(sim.cfg.access_ttl_secs),
        refresh_ttl_secs: c.refresh_ttl_secs.unwrap_or(sim.cfg.refresh_ttl_secs),
    });
    StatusCode::NO_CONTENT.into_response()
}

/// `{"name": "value", …}`: sets (or creates) `sys_properties` rows.
async fn set_properties(
    State(sim): State<SharedSn>,
    Json(v): Json<Map<String, Value>>,
) -> Response {
    let now = sim.now_sql();
    let seed = sim.cfg.seed;
    let mut db = sim.db.lock();
    for (name, value) in v {
        let value = super::table::to_stored(&value);
        let rows = db.table_mut("sys_properties");
        if let Some(row) = rows
            .iter_mut()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name.as_str()))
        {
            row.insert("value".into(), Value::String(value));
            row.insert("sys_updated_on".into(), json!(now));
            continue;
        }
        let id = db.new_id(seed);
        if let Value::Object(row) = json!({
            "sys_id": id, "sys_created_on": now, "sys_created_by": "admin",
            "sys_updated_on": now, "sys_updated_by": "admin", "sys_mod_count": "0",
            "name": name, "value": value, "type": "string", "description": "",
        }) {
            db.table_mut("sys_properties").push(row);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, Default)]
struct ForUser {
    #[serde(default)]
    user: Option<String>,
}

async fn revoke(State(sim): State<SharedSn>, body: Option<Json<ForUser>>) -> Response {
    let f = body.map(|Json(f)| f).unwrap_or_default();
    let n = sim.db.lock().tokens.revoke(f.user.as_deref());
    Json(json!({"revoked": n})).into_response()
}

async fn expire(State(sim): State<SharedSn>, body: Option<Json<ForUser>>) -> Response {
    let f = body.map(|Json(f)| f).unwrap_or_default();
    let n = sim.db.lock().tokens.expire_access(f.user.as_deref());
    Json(json!({"expired": n})).into_response()
}

async fn advance(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    let Some(secs) = v.get("secs").and_then(Value::as_i64) else {
        return bad("body must be {\"secs\": N}");
    };
    sim.clock.advance(secs * 1000);
    Json(json!({"now": sim.now_sql()})).into_response()
}

async fn list_limits(State(sim): State<SharedSn>) -> Response {
    Json(json!(sim.db.lock().limits.rules)).into_response()
}

async fn add_limit(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    let mut rule: Rule = match parse(v) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let mut db = sim.db.lock();
    if rule.sys_id.is_empty() {
        rule.sys_id = db.new_id(sim.cfg.seed);
    }
    let id = rule.sys_id.clone();
    db.limits.rules.retain(|r| r.sys_id != id);
    db.limits.rules.push(rule);
    Json(json!({"sys_id": id})).into_response()
}

async fn clear_limits(State(sim): State<SharedSn>) -> Response {
    sim.db.lock().limits.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(sim): State<SharedSn>) -> Response {
    Json(json!(sim.db.lock().faults)).into_response()
}

/// Replaces the fault switches (fields not given are off).
async fn set_faults(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    match parse::<Faults>(v) {
        Ok(f) => {
            sim.db.lock().faults = f;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}

async fn get_acl(State(sim): State<SharedSn>) -> Response {
    Json(json!(sim.db.lock().acl)).into_response()
}

async fn set_acl(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    match parse::<TableRule>(v) {
        Ok(r) => {
            let mut db = sim.db.lock();
            db.acl.set(r);
            super::acl::rebuild_tables(&mut db);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}

async fn add_row_rule(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    match parse::<RowRule>(v) {
        Ok(r) => {
            sim.db.lock().acl.rows.push(r);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}

/// Every row of a table, as stored (no ACLs, no rendering).
async fn dump(State(sim): State<SharedSn>, Path(table): Path<String>) -> Response {
    if table == "sys_dictionary" {
        return Json(json!(schema::dictionary_rows())).into_response();
    }
    let db = sim.db.lock();
    match db.tables.get(&table) {
        Some(rows) => Json(json!(rows)).into_response(),
        None => SnError::invalid_table(&table).into_response(),
    }
}

async fn list_rules(State(sim): State<SharedSn>) -> Response {
    Json(json!(sim.db.lock().rules.rules)).into_response()
}

async fn add_rule(State(sim): State<SharedSn>, Json(v): Json<Value>) -> Response {
    let mut rule: BusinessRule = match parse(v) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Err(e) = check_url(&rule.url) {
        return bad(e);
    }
    let Some(t) = schema::table(&rule.table) else {
        return bad(format!("unknown table '{}'", rule.table));
    };
    if super::query::parse(t, &rule.condition).invalid {
        return bad(format!(
            "condition '{}' names a field or operator {} does not have",
            rule.condition, rule.table
        ));
    }
    let mut db = sim.db.lock();
    if rule.sys_id.is_empty() {
        rule.sys_id = db.new_id(sim.cfg.seed);
    }
    let id = rule.sys_id.clone();
    db.rules.rules.retain(|r| r.sys_id != id);
    db.rules.rules.push(rule);
    (StatusCode::CREATED, Json(json!({"sys_id": id}))).into_response()
}

async fn clear_rules(State(sim): State<SharedSn>) -> Response {
    let mut db = sim.db.lock();
    db.rules.rules.clear();
    db.rules.deliveries.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn deliveries(State(sim): State<SharedSn>) -> Response {
    Json(json!(sim.db.lock().rules.deliveries)).into_response()
}
