//! Admin endpoints under `/_sim` on the Salesforce simulator: credentials, OAuth policy,
//! auto-approve, token revocation and expiry, profiles (with their record types) and users,
//! record types, API limit, faults, validation rules, record dumps, the clock and outbound
//! messages. They need no token, are never counted or faulted, and reveal secrets by design (a
//! test tool). JSON in and out; errors are `{"error": "..."}` with 400 or 404.

use super::limits::Faults;
use super::oauth::{AutoApprove, RefreshPolicy};
use super::outbound::{self, OutboundRequest};
use super::profiles::{FieldPerm, IpRange, ObjPerm};
use super::record_types;
use super::sobjects::ValidationRule;
use super::{SharedSf, json_response};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) fn routes() -> Router<SharedSf> {
    Router::new()
        .route("/_sim/credentials", get(credentials))
        .route("/_sim/oauth/policy", get(get_policy).post(set_policy))
        .route(
            "/_sim/oauth/auto-approve",
            post(set_auto_approve).delete(clear_auto_approve),
        )
        .route("/_sim/tokens", get(tokens))
        .route("/_sim/tokens/revoke", post(revoke_user))
        .route("/_sim/tokens/expire", post(expire_access))
        .route("/_sim/profiles", get(list_profiles))
        .route("/_sim/profiles/{name}", post(set_profile))
        .route("/_sim/users/{username}", post(set_user))
        .route("/_sim/record-types", get(list_record_types))
        .route(
            "/_sim/record-types/{object}/{developer_name}",
            post(set_record_type),
        )
        .route("/_sim/limits", get(get_limits).post(set_limits))
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route(
            "/_sim/validation-rules",
            get(list_rules).post(add_rule).delete(clear_rules),
        )
        .route("/_sim/records/{object}", get(records))
        .route("/_sim/clock/advance", post(advance))
        .route("/_sim/outbound", post(send_outbound))
        .route("/_sim/outbound/deliveries", get(deliveries))
        .route("/_sim/outbound/deliveries/{id}", get(delivery))
}

pub(crate) struct AdminError(StatusCode, String);

impl AdminError {
    fn bad(m: impl Into<String>) -> Self {
        AdminError(StatusCode::BAD_REQUEST, m.into())
    }
    fn not_found(m: impl Into<String>) -> Self {
        AdminError(StatusCode::NOT_FOUND, m.into())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({"error": self.1}))
    }
}

type AdminResult = Result<Response, AdminError>;

fn ok(v: Value) -> AdminResult {
    Ok(json_response(StatusCode::OK, &v))
}

/// A typed JSON body; an empty body is `{}`; unknown keys are refused by the types.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| AdminError::bad(format!("invalid body: {e}")))
}

async fn credentials(State(sim): State<SharedSf>) -> AdminResult {
    let st = sim.state.lock();
    let base = sim.base_url();
    let app = &st.oauth.app;
    ok(json!({
        "org_id": sim.org_id,
        "instance_url": base,
        "login_url": base,
        "authorize_url": format!("{base}/services/oauth2/authorize"),
        "token_url": format!("{base}/services/oauth2/token"),
        "revoke_url": format!("{base}/services/oauth2/revoke"),
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "callbacks": app.callbacks,
        "client_credentials_user": app.run_as,
        "users": st.users,
    }))
}

fn policy_json(sim: &SharedSf) -> Value {
    let st = sim.state.lock();
    serde_json::to_value(&st.oauth.app).unwrap_or_default()
}

async fn get_policy(State(sim): State<SharedSf>) -> AdminResult {
    ok(policy_json(&sim))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    refresh_policy: Option<RefreshPolicy>,
    refresh_ttl_secs: Option<u64>,
    rotation: Option<bool>,
    client_credentials: Option<bool>,
    /// Username of the run-as user; `""` removes it.
    run_as: Option<String>,
    require_secret_for_refresh: Option<bool>,
    max_approvals: Option<usize>,
    enforce_ip_every_request: Option<bool>,
    callbacks: Option<Vec<String>>,
}

async fn set_policy(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let b: PolicyBody = parse(&body)?;
    {
        let mut st = sim.state.lock();
        if let Some(u) = &b.run_as
            && !u.is_empty()
            && !st.users.iter().any(|x| &x.username == u)
        {
            return Err(AdminError::bad(format!("run_as: no user '{u}'")));
        }
        let app = &mut st.oauth.app;
        if let Some(v) = b.refresh_policy {
            app.refresh_policy = v;
        }
        if let Some(v) = b.refresh_ttl_secs {
            app.refresh_ttl_secs = v;
        }
        if let Some(v) = b.rotation {
            app.rotation = v;
        }
        if let Some(v) = b.client_credentials {
            app.client_credentials = v;
        }
        if let Some(v) = b.run_as {
            app.run_as = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = b.require_secret_for_refresh {
            app.require_secret_for_refresh = v;
        }
        if let Some(v) = b.max_approvals {
            app.max_approvals = v.max(1);
        }
        if let Some(v) = b.enforce_ip_every_request {
            app.enforce_ip_every_request = v;
        }
        if let Some(v) = b.callbacks {
            app.callbacks = v;
        }
    }
    ok(policy_json(&sim))
}

async fn set_auto_approve(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let a: AutoApprove = parse(&body)?;
    let mut st = sim.state.lock();
    if !st.users.iter().any(|u| u.username == a.user) {
        return Err(AdminError::bad(format!("user: no user '{}'", a.user)));
    }
    st.oauth.auto_approve = Some(a.clone());
    ok(json!({"user": a.user, "deny": a.deny}))
}

async fn clear_auto_approve(State(sim): State<SharedSf>) -> AdminResult {
    sim.state.lock().oauth.auto_approve = None;
    ok(json!({"auto_approve": null}))
}

async fn tokens(State(sim): State<SharedSf>) -> AdminResult {
    let st = sim.state.lock();
    let per_user: Vec<Value> = st
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            json!({
                "username": u.username,
                "active_refresh_tokens": st.oauth.active_refresh(i).iter().map(|r| r.token.clone()).collect::<Vec<_>>(),
                "active_access_tokens": st.oauth.access.values().filter(|a| a.user == i && !a.revoked).count(),
            })
        })
        .collect();
    ok(json!({"users": per_user}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    user: Option<String>,
}

fn user_index(sim: &SharedSf, name: &str) -> Result<usize, AdminError> {
    sim.state
        .lock()
        .users
        .iter()
        .position(|u| u.username == name)
        .ok_or_else(|| AdminError::not_found(format!("no user '{name}'")))
}

async fn revoke_user(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let b: UserBody = parse(&body)?;
    let name = b.user.ok_or_else(|| AdminError::bad("user is required"))?;
    let idx = user_index(&sim, &name)?;
    let n = sim.state.lock().oauth.revoke_user(idx);
    ok(json!({"revoked": n}))
}

async fn expire_access(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let b: UserBody = parse(&body)?;
    let idx = match &b.user {
        Some(u) => Some(user_index(&sim, u)?),
        None => None,
    };
    let mut st = sim.state.lock();
    let mut n = 0;
    for a in st.oauth.access.values_mut() {
        if !a.revoked && idx.is_none_or(|i| a.user == i) {
            a.revoked = true;
            n += 1;
        }
    }
    ok(json!({"expired": n}))
}

async fn list_profiles(State(sim): State<SharedSf>) -> AdminResult {
    let st = sim.state.lock();
    ok(serde_json::to_value(&st.profiles).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    api_enabled: Option<bool>,
    /// `[["10.0.0.0","10.0.0.255"], …]`; `[]` removes the restriction.
    login_ip_ranges: Option<Vec<IpRange>>,
    /// Object → permissions (replaces that object's entry).
    #[serde(default)]
    objects: BTreeMap<String, ObjPerm>,
    /// `Object.Field` → access.
    #[serde(default)]
    fields: BTreeMap<String, FieldPerm>,
    /// Object → record types assigned to the profile (replaces that object's entry).
    #[serde(default)]
    record_types: BTreeMap<String, RecordTypeBody>,
}

/// `{"available": ["Detractor", "Promoter", "Master"], "default": "Promoter"}`: developer names
/// (or ids); without `default` the current one stays if still assigned, else the first listed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordTypeBody {
    available: Vec<String>,
    default: Option<String>,
}

async fn set_profile(
    State(sim): State<SharedSf>,
    Path(name): Path<String>,
    body: Bytes,
) -> AdminResult {
    let b: ProfileBody = parse(&body)?;
    for o in b.objects.keys() {
        if sim.object(o).is_none() {
            return Err(AdminError::bad(format!("objects: no object '{o}'")));
        }
    }
    for f in b.fields.keys() {
        let known = f
            .split_once('.')
            .and_then(|(o, f)| sim.object(o).and_then(|o| o.field(f)))
            .is_some();
        if !known {
            return Err(AdminError::bad(format!(
                "fields: no field '{f}' (use Object.Field)"
            )));
        }
    }
    let mut st = sim.state.lock();
    let st = &mut *st;
    let p = st
        .profiles
        .get_mut(&name)
        .ok_or_else(|| AdminError::not_found(format!("no profile '{name}'")))?;
    // Check every record type entry before changing anything.
    let mut record_types = Vec::new();
    for (o, rt) in &b.record_types {
        let def = sim
            .object(o)
            .ok_or_else(|| AdminError::bad(format!("record_types: no object '{o}'")))?;
        let access = record_types::validate_access(
            &st.record_types,
            def.name,
            &rt.available,
            rt.default.as_deref(),
            p.record_types.get(def.name),
        )
        .map_err(AdminError::bad)?;
        record_types.push((def.name.to_string(), access));
    }
    if let Some(v) = b.api_enabled {
        p.api_enabled = v;
    }
    if let Some(v) = b.login_ip_ranges {
        p.login_ip_ranges = v;
    }
    for (o, perm) in b.objects {
        let canonical = sim.object(&o).map(|d| d.name.to_string()).unwrap_or(o);
        p.objects.insert(canonical, perm);
    }
    for (f, perm) in b.fields {
        p.fields.insert(f, perm);
    }
    for (o, access) in record_types {
        p.record_types.insert(o, access);
    }
    ok(serde_json::to_value(&*p).unwrap_or_default())
}

async fn list_record_types(State(sim): State<SharedSf>) -> AdminResult {
    ok(serde_json::to_value(&sim.state.lock().record_types).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordTypeChange {
    active: Option<bool>,
}

/// Activates or deactivates a record type. One that is a profile's default cannot be
/// deactivated (change the profile's default first), so every default stays usable.
async fn set_record_type(
    State(sim): State<SharedSf>,
    Path((object, developer_name)): Path<(String, String)>,
    body: Bytes,
) -> AdminResult {
    let b: RecordTypeChange = parse(&body)?;
    let mut st = sim.state.lock();
    let st = &mut *st;
    let idx = st
        .record_types
        .iter()
        .position(|r| {
            r.object.eq_ignore_ascii_case(&object)
                && r.developer_name.eq_ignore_ascii_case(&developer_name)
        })
        .ok_or_else(|| {
            AdminError::not_found(format!("no record type '{developer_name}' on '{object}'"))
        })?;
    if b.active == Some(false) {
        let rt = &st.record_types[idx];
        let defaults: Vec<&str> = st
            .profiles
            .values()
            .filter(|p| {
                p.record_types
                    .get(&rt.object)
                    .is_some_and(|a| a.default.eq_ignore_ascii_case(&rt.developer_name))
            })
            .map(|p| p.name.as_str())
            .collect();
        if !defaults.is_empty() {
            return Err(AdminError::bad(format!(
                "record type '{}' is the default of profiles {}: change their default first",
                rt.developer_name,
                defaults.join(", ")
            )));
        }
    }
    let rt = &mut st.record_types[idx];
    if let Some(a) = b.active {
        rt.active = a;
    }
    ok(serde_json::to_value(&*rt).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetUserBody {
    profile: Option<String>,
    active: Option<bool>,
}

async fn set_user(
    State(sim): State<SharedSf>,
    Path(username): Path<String>,
    body: Bytes,
) -> AdminResult {
    let b: SetUserBody = parse(&body)?;
    let idx = user_index(&sim, &username)?;
    let mut st = sim.state.lock();
    if let Some(p) = &b.profile
        && !st.profiles.contains_key(p)
    {
        return Err(AdminError::bad(format!("profile: no profile '{p}'")));
    }
    let u = &mut st.users[idx];
    if let Some(p) = b.profile {
        u.profile = p;
    }
    if let Some(a) = b.active {
        u.active = a;
    }
    ok(serde_json::to_value(&*u).unwrap_or_default())
}

async fn get_limits(State(sim): State<SharedSf>) -> AdminResult {
    ok(serde_json::to_value(&sim.state.lock().limits).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    max: Option<u64>,
    used: Option<u64>,
}

async fn set_limits(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let b: LimitsBody = parse(&body)?;
    let mut st = sim.state.lock();
    if let Some(m) = b.max {
        st.limits.max = m;
    }
    if let Some(u) = b.used {
        st.limits.used = u;
    }
    ok(serde_json::to_value(&st.limits).unwrap_or_default())
}

async fn get_faults(State(sim): State<SharedSf>) -> AdminResult {
    ok(serde_json::to_value(&sim.state.lock().faults).unwrap_or_default())
}

/// Replaces the fault switches (keys left out are off).
async fn set_faults(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let f: Faults = parse(&body)?;
    sim.state.lock().faults = f.clone();
    ok(serde_json::to_value(&f).unwrap_or_default())
}

async fn list_rules(State(sim): State<SharedSf>) -> AdminResult {
    ok(serde_json::to_value(&sim.state.lock().rules).unwrap_or_default())
}

async fn add_rule(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let r: ValidationRule = parse(&body)?;
    r.check_shape().map_err(AdminError::bad)?;
    let known = sim
        .object(&r.object)
        .and_then(|o| o.field(&r.field))
        .is_some();
    if !known {
        return Err(AdminError::bad(format!(
            "no field {}.{}",
            r.object, r.field
        )));
    }
    let mut st = sim.state.lock();
    st.rules.push(r);
    ok(serde_json::to_value(&st.rules).unwrap_or_default())
}

async fn clear_rules(State(sim): State<SharedSf>) -> AdminResult {
    sim.state.lock().rules.clear();
    ok(json!([]))
}

async fn records(State(sim): State<SharedSf>, Path(object): Path<String>) -> AdminResult {
    let o = sim
        .object(&object)
        .ok_or_else(|| AdminError::not_found(format!("no object '{object}'")))?;
    let st = sim.state.lock();
    let rs: Vec<Value> = st
        .records
        .get(o.name)
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let mut v = Value::Object(r.fields.clone());
                    v["IsDeleted"] = Value::Bool(r.deleted);
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    ok(json!({"object": o.name, "records": rs}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceBody {
    #[serde(default)]
    ms: i64,
    #[serde(default)]
    secs: i64,
}

async fn advance(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let b: AdvanceBody = parse(&body)?;
    sim.clock.advance(b.ms + b.secs * 1000);
    ok(json!({"now_ms": sim.clock.now_ms()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundBody {
    object: String,
    record_id: String,
    endpoint: String,
    /// Field names to include (default: every field the record has).
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    retry_base_ms: Option<u64>,
    /// Send a session id of the run-as user (the "Send Session ID" option).
    #[serde(default)]
    send_session_id: bool,
}

fn loopback_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            }
    })
}

/// A read-only field Salesforce computes from a related record: `Case.ContactEmail` is the
/// email of the case's contact.
fn derived_field(
    st: &super::State,
    object: &str,
    field: &str,
    rec: &super::sobjects::Record,
) -> Option<Value> {
    match (object, field) {
        ("Case", "ContactEmail") => {
            let contact = rec.fields.get("ContactId")?.as_str()?;
            super::sobjects::find(st, "Contact", contact)?
                .fields
                .get("Email")
                .cloned()
        }
        _ => None,
    }
}

async fn send_outbound(State(sim): State<SharedSf>, body: Bytes) -> AdminResult {
    let b: OutboundBody = parse(&body)?;
    if !loopback_url(&b.endpoint) {
        return Err(AdminError::bad(format!(
            "endpoint {} is not a loopback URL; the simulator only calls 127.0.0.1, ::1 or localhost",
            b.endpoint
        )));
    }
    let o = sim
        .object(&b.object)
        .ok_or_else(|| AdminError::bad(format!("no object '{}'", b.object)))?;
    let (fields, delivery_id, notification_id, action_id) = {
        let mut st = sim.state.lock();
        let rec = super::sobjects::find(&st, o.name, &b.record_id).ok_or_else(|| {
            AdminError::not_found(format!("no {} record {}", o.name, b.record_id))
        })?;
        let mut fields: Vec<(String, String)> = Vec::new();
        let wanted: Vec<String> = match &b.fields {
            Some(f) => f.clone(),
            None => o.fields.iter().map(|f| f.name.to_string()).collect(),
        };
        for name in wanted {
            let fd = o
                .field(&name)
                .ok_or_else(|| AdminError::bad(format!("fields: no field {}.{name}", o.name)))?;
            let derived = derived_field(&st, o.name, fd.name, rec);
            match derived.as_ref().or(rec.fields.get(fd.name)) {
                Some(Value::Null) | None => {}
                Some(v) => fields.push((fd.name.to_string(), super::sobjects::value_text(v))),
            }
        }
        if !fields.iter().any(|(k, _)| k == "Id") {
            fields.insert(0, ("Id".into(), rec.id.clone()));
        }
        let n = st.next_id("04l");
        let d = format!("OM{}", &n[5..15]);
        (fields, d, n, super::make_id("04k", 1))
    };
    // "Send Session ID": a real session of the run-as user, usable against the REST API.
    let session = if b.send_session_id {
        let mut st = sim.state.lock();
        let run_as = st.oauth.app.run_as.clone();
        let user = run_as
            .and_then(|n| st.users.iter().position(|u| u.username == n))
            .ok_or_else(|| {
                AdminError::bad("send_session_id needs a run-as user (POST /_sim/oauth/policy)")
            })?;
        let org15: String = sim.org_id.chars().take(15).collect();
        let token = format!("{org15}!AQ{}", st.rng.alnum(96));
        st.oauth.access.insert(
            token.clone(),
            super::oauth::AccessToken {
                user,
                scope: "api".into(),
                last_used_ms: sim.clock.now_ms(),
                refresh: None,
                revoked: false,
            },
        );
        Some(token)
    } else {
        None
    };
    let req = OutboundRequest {
        object: o.name.to_string(),
        record_id: b.record_id.clone(),
        endpoint: b.endpoint.clone(),
        fields,
        max_attempts: b.max_attempts.unwrap_or(5),
        retry_base_ms: b.retry_base_ms.unwrap_or(1000),
        send_session_id: b.send_session_id,
    };
    outbound::start(
        &sim,
        req,
        delivery_id.clone(),
        notification_id.clone(),
        action_id,
        session,
    );
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"delivery_id": delivery_id, "notification_id": notification_id}),
    ))
}

async fn deliveries(State(sim): State<SharedSf>) -> AdminResult {
    ok(serde_json::to_value(&*sim.outbound.deliveries.lock()).unwrap_or_default())
}

/// One delivery; `?wait_ms=N` waits up to N ms for it to finish (acked or given up).
async fn delivery(
    State(sim): State<SharedSf>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> AdminResult {
    let wait: Map<String, Value> =
        url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
    let ms = wait
        .get("wait_ms")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let d = outbound::wait_finished(&sim, &id, Duration::from_millis(ms))
        .await
        .ok_or_else(|| AdminError::not_found(format!("no delivery '{id}'")))?;
    ok(serde_json::to_value(&d).unwrap_or_default())
}
