//! The REST surface under `/services/data/vNN.N/`: the gate every call passes (faults, session,
//! API Enabled, IP enforcement, the daily allowance and `Sforce-Limit-Info`), versions,
//! limits, describe and the sObject row/upsert resources.

use super::describe::{self, ObjectDef};
use super::profiles::Profile;
use super::sobjects::{self, Upserted};
use super::{SfError, SharedSf, json_response, limits};
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) const MIN_VERSION: u32 = 20;
pub(crate) const MAX_VERSION: u32 = 62;

/// Who is calling and with which API version.
#[derive(Clone, Debug)]
pub struct Session {
    /// Index of the caller in `State::users`.
    pub user: usize,
    /// The caller's profile, as it was when the request arrived.
    pub profile: Profile,
    /// `60.0`
    pub version: String,
    pub(crate) major: u32,
}

impl Session {
    /// The object if the user may see it at all (else 404 like a non-existent object).
    pub fn object<'a>(&self, sim: &'a SharedSf, name: &str) -> Result<&'a ObjectDef, SfError> {
        sim.object(name)
            .filter(|o| self.profile.object(o.name).read)
            .ok_or_else(SfError::not_found)
    }
}

pub(crate) fn routes(sim: SharedSf) -> Router<SharedSf> {
    let data = Router::new()
        .route("/services/data/{v}", get(resources))
        .route("/services/data/{v}/limits", get(limits_resource))
        .route("/services/data/{v}/sobjects", get(global_describe))
        .route(
            "/services/data/{v}/sobjects/{obj}",
            get(object_info).post(create),
        )
        .route(
            "/services/data/{v}/sobjects/{obj}/describe",
            get(describe_object),
        )
        .route(
            "/services/data/{v}/sobjects/{obj}/{id}",
            get(read).patch(update).delete(delete).post(create_with_id),
        )
        .route(
            "/services/data/{v}/sobjects/{obj}/{field}/{value}",
            get(read_by_key).patch(upsert).delete(delete_by_key),
        )
        .merge(super::query::routes())
        .merge(super::collections::routes())
        .route_layer(middleware::from_fn_with_state(sim, gate));
    Router::new()
        .route("/services/data", get(versions))
        .merge(data)
}

/// `v60.0` → (`60.0`, 60) if the version exists.
pub fn parse_version(seg: &str) -> Option<(String, u32)> {
    let rest = seg.strip_prefix('v')?;
    let (major, minor) = rest.split_once('.')?;
    let major: u32 = major.parse().ok()?;
    if minor != "0" || !(MIN_VERSION..=MAX_VERSION).contains(&major) {
        return None;
    }
    Some((rest.to_string(), major))
}

fn version_label(major: u32) -> String {
    // Three releases a year: Spring, Summer, Winter; v60 = Spring '24.
    let seasons = ["Spring", "Summer", "Winter"];
    let idx = (major as i64 - 60).rem_euclid(3) as usize;
    let year = 24 + ((major as i64 - 60 + 1).div_euclid(3));
    format!("{} '{year:02}", seasons[idx])
}

async fn versions(State(sim): State<SharedSf>) -> Response {
    let _ = sim;
    let list: Vec<Value> = (MIN_VERSION..=MAX_VERSION)
        .map(|m| {
            json!({"label": version_label(m), "url": format!("/services/data/v{m}.0"), "version": format!("{m}.0")})
        })
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

/// Faults, session, API Enabled, IP, allowance; then the handler; then `Sforce-Limit-Info`.
async fn gate(State(sim): State<SharedSf>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let seg = path
        .strip_prefix("/services/data/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    let Some((version, major)) = parse_version(seg) else {
        return SfError::not_found().into_response();
    };
    let slow = sim.state.lock().faults.slow_ms;
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let decided = {
        let mut st = sim.state.lock();
        let st = &mut *st;
        let now = sim.clock.now_ms();
        if limits::fire(&mut st.faults.server_error_storm) {
            Err(SfError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_UNAVAILABLE",
                "Server temporarily unavailable, try again later",
            ))
        } else if limits::fire(&mut st.faults.throttle_429) {
            let mut e = SfError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "REQUEST_LIMIT_EXCEEDED",
                "ConcurrentPerOrgLongTxn Limit exceeded.",
            );
            e.retry_after = Some(st.faults.retry_after_secs.max(1));
            Err(e)
        } else if limits::fire(&mut st.faults.limit_exceeded) {
            Err(limit_error())
        } else {
            match super::oauth::session_user(&sim, st, req.headers()) {
                None => Err(SfError::invalid_session()),
                Some(user) => {
                    let profile_name = st.users[user].profile.clone();
                    let profile = st.profiles.get(&profile_name).cloned();
                    match profile {
                        None => Err(SfError::invalid_session()),
                        Some(p) if !p.api_enabled => Err(SfError::new(
                            StatusCode::FORBIDDEN,
                            "API_DISABLED_FOR_ORG",
                            "API is not enabled for this Organization or Partner",
                        )),
                        Some(p)
                            if st.oauth.app.enforce_ip_every_request
                                && peer.is_some_and(|ip| !p.ip_allowed(ip)) =>
                        {
                            Err(SfError::invalid_session())
                        }
                        Some(p) => {
                            if st.limits.take(now) {
                                Ok(Session {
                                    user,
                                    profile: p,
                                    version: version.clone(),
                                    major,
                                })
                            } else {
                                Err(limit_error())
                            }
                        }
                    }
                }
            }
        }
    };
    let mut resp = match decided {
        Ok(session) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    let header = sim.state.lock().limits.header();
    if let Ok(v) = HeaderValue::from_str(&header) {
        resp.headers_mut().insert("Sforce-Limit-Info", v);
    }
    resp
}

fn limit_error() -> SfError {
    SfError::new(
        StatusCode::FORBIDDEN,
        "REQUEST_LIMIT_EXCEEDED",
        "TotalRequests Limit exceeded.",
    )
}

/// A JSON object body, or 400 JSON_PARSER_ERROR.
pub fn object_body(body: &[u8]) -> Result<Map<String, Value>, SfError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(SfError::bad(
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of an sObject from a non-object value",
        )),
        Err(e) => Err(SfError::bad(
            "JSON_PARSER_ERROR",
            format!("Unexpected character in the request body: {e}"),
        )),
    }
}

/// Per-record errors of a single call: status 400 (404 for NOT_FOUND, 403 for permissions).
pub fn errors_response(errors: Vec<super::ErrItem>) -> SfError {
    let status = match errors.first().map(|e| e.code.as_str()) {
        Some("NOT_FOUND" | "ENTITY_IS_DELETED") => StatusCode::NOT_FOUND,
        Some("INSUFFICIENT_ACCESS_OR_READONLY") => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    SfError {
        status,
        errors,
        retry_after: None,
    }
}

async fn resources(Extension(s): Extension<Session>) -> Response {
    let v = &s.version;
    json_response(
        StatusCode::OK,
        &json!({
            "sobjects": format!("/services/data/v{v}/sobjects"),
            "query": format!("/services/data/v{v}/query"),
            "limits": format!("/services/data/v{v}/limits"),
            "composite": format!("/services/data/v{v}/composite"),
        }),
    )
}

async fn limits_resource(State(sim): State<SharedSf>) -> Response {
    let st = sim.state.lock();
    json_response(
        StatusCode::OK,
        &json!({"DailyApiRequests": {"Max": st.limits.max, "Remaining": st.limits.max.saturating_sub(st.limits.used)}}),
    )
}

async fn global_describe(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
) -> Response {
    let objects: Vec<Value> = sim
        .schema
        .iter()
        .filter(|o| s.profile.object(o.name).read)
        .map(|o| describe::object_flags(&s.profile, o, &s.version))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": objects}),
    )
}

async fn object_info(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj)): Path<(String, String)>,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"objectDescribe": describe::object_flags(&s.profile, o, &s.version), "recentItems": []}),
    ))
}

async fn describe_object(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj)): Path<(String, String)>,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let body = {
        let st = sim.state.lock();
        describe::describe_json(&s.profile, o, &st.record_types, &s.version)
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn created(id: &str, with_created: bool) -> Value {
    let mut v = json!({"id": id, "success": true, "errors": []});
    if with_created {
        v["created"] = Value::Bool(true);
    }
    v
}

async fn create(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let body = object_body(&body)?;
    let mut st = sim.state.lock();
    let id = sobjects::create(&sim, &mut st, &s.profile, o, &body).map_err(errors_response)?;
    Ok(json_response(StatusCode::CREATED, &created(&id, false)))
}

/// `POST /sobjects/{Object}/Id`: insert through the upsert resource with no id value (v37+).
async fn create_with_id(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((v, obj, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, SfError> {
    if id != "Id" || s.major < 37 {
        return Err(SfError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "HTTP Method 'POST' not allowed. Allowed are GET,PATCH,DELETE",
        ));
    }
    let _ = v;
    let o = s.object(&sim, &obj)?;
    let body = object_body(&body)?;
    let mut st = sim.state.lock();
    let id = sobjects::create(&sim, &mut st, &s.profile, o, &body).map_err(errors_response)?;
    Ok(json_response(
        StatusCode::CREATED,
        &created(&id, s.major >= 46),
    ))
}

fn fields_param(q: &Option<String>) -> Option<Vec<String>> {
    let q = q.as_deref()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "fields")
        .map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect())
}

async fn read(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, id)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let st = sim.state.lock();
    let rec = sobjects::find(&st, o.name, &id).ok_or_else(SfError::not_found)?;
    if rec.deleted {
        return Err(SfError::new(
            StatusCode::NOT_FOUND,
            "ENTITY_IS_DELETED",
            "entity is deleted",
        ));
    }
    let fields = fields_param(&q);
    if let Some(fs) = &fields
        && let Some(bad) = fs.iter().find(|f| {
            o.field(f)
                .is_none_or(|fd| !describe::readable(&s.profile, o, fd))
        })
    {
        return Err(errors_response(vec![sobjects::no_such_column(o, bad)]));
    }
    Ok(json_response(
        StatusCode::OK,
        &sobjects::record_json(&s.profile, o, rec, fields.as_deref(), &s.version),
    ))
}

async fn update(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let body = object_body(&body)?;
    let mut st = sim.state.lock();
    sobjects::update(&sim, &mut st, &s.profile, o, &id, &body).map_err(errors_response)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, id)): Path<(String, String, String)>,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let mut st = sim.state.lock();
    sobjects::delete(&mut st, &s.profile, o, &id).map_err(errors_response)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The key field of an upsert URL: it must exist, be visible and be an external id (or `Id`).
fn key_field<'a>(
    s: &Session,
    o: &'a ObjectDef,
    field: &str,
) -> Result<&'a describe::FieldDef, SfError> {
    let fd = o
        .field(field)
        .filter(|fd| describe::readable(&s.profile, o, fd))
        .ok_or_else(SfError::not_found)?;
    if !(fd.external_id || fd.name == "Id") {
        return Err(SfError::with_fields(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            format!(
                "Field {} is not an External ID or indexed field for {}",
                fd.name, o.name
            ),
            vec![fd.name.to_string()],
        ));
    }
    Ok(fd)
}

async fn upsert(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, field, value)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let key = key_field(&s, o, &field)?;
    let body = object_body(&body)?;
    let update_only = q
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "updateOnly" && v == "true")
        })
        .unwrap_or(false);
    let mut st = sim.state.lock();
    let out = sobjects::upsert(
        &sim,
        &mut st,
        &s.profile,
        o,
        sobjects::UpsertKey {
            field: key,
            value: &value,
            update_only,
        },
        &body,
    )
    .map_err(errors_response)?;
    let v46 = s.major >= 46;
    Ok(match out {
        Upserted::Created(id) => json_response(StatusCode::CREATED, &created(&id, v46)),
        Upserted::Updated(id) if v46 => json_response(
            StatusCode::OK,
            &json!({"id": id, "success": true, "errors": [], "created": false}),
        ),
        Upserted::Updated(_) => StatusCode::NO_CONTENT.into_response(),
        Upserted::Multiple(ids) => json_response(
            StatusCode::MULTIPLE_CHOICES,
            &Value::Array(
                ids.iter()
                    .map(|id| {
                        json!(format!(
                            "/services/data/v{}/sobjects/{}/{id}",
                            s.version, o.name
                        ))
                    })
                    .collect(),
            ),
        ),
    })
}

fn by_key(
    sim: &SharedSf,
    s: &Session,
    o: &ObjectDef,
    field: &str,
    value: &str,
) -> Result<Vec<sobjects::Record>, SfError> {
    let key = key_field(s, o, field)?;
    let st = sim.state.lock();
    Ok(st
        .records
        .get(o.name)
        .map(|rs| {
            rs.iter()
                .filter(|r| {
                    !r.deleted
                        && r.fields
                            .get(key.name)
                            .is_some_and(|v| sobjects::value_text(v) == value)
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default())
}

async fn read_by_key(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, field, value)): Path<(String, String, String, String)>,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let recs = by_key(&sim, &s, o, &field, &value)?;
    match recs.as_slice() {
        [] => Err(SfError::not_found()),
        [one] => Ok(json_response(
            StatusCode::OK,
            &sobjects::record_json(&s.profile, o, one, None, &s.version),
        )),
        many => Ok(json_response(
            StatusCode::MULTIPLE_CHOICES,
            &Value::Array(
                many.iter()
                    .map(|r| {
                        json!(format!(
                            "/services/data/v{}/sobjects/{}/{}",
                            s.version, o.name, r.id
                        ))
                    })
                    .collect(),
            ),
        )),
    }
}

async fn delete_by_key(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, field, value)): Path<(String, String, String, String)>,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let recs = by_key(&sim, &s, o, &field, &value)?;
    match recs.as_slice() {
        [] => Err(SfError::not_found()),
        [one] => {
            let mut st = sim.state.lock();
            sobjects::delete(&mut st, &s.profile, o, &one.id).map_err(errors_response)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        many => Ok(json_response(
            StatusCode::MULTIPLE_CHOICES,
            &Value::Array(many.iter().map(|r| json!(r.id)).collect()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("v60.0"), Some(("60.0".into(), 60)));
        assert_eq!(parse_version("v45.0").map(|v| v.1), Some(45));
        assert!(parse_version("v99.0").is_none());
        assert!(parse_version("60.0").is_none());
        assert_eq!(version_label(60), "Spring '24");
    }
}
