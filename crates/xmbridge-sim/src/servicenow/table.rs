//! The Table API: list (encoded query, paging with `Link`/`X-Total-Count`, fields, display
//! values), get, create (201 + `Location`), update (PATCH/PUT 200), delete (204), and
//! `/api/now/stats/{table}`. v1 answers 404 to an empty list; v2 and the unversioned path 200 `[]`.

use super::acl::Operation;
use super::envelope::{Caller, SnError};
use super::query::{self, Query};
use super::schema::{self, Kind, TableDef};
use super::{Db, Record, SharedSn, rules, seed};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Latest,
    V1,
    V2,
}

fn version(v: &str) -> Result<Version, SnError> {
    match v {
        "v1" => Ok(Version::V1),
        "v2" => Ok(Version::V2),
        _ => Err(SnError::bad_request(
            "Requested URI does not represent any resource",
        )),
    }
}

/// `sysparm_display_value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// Stored values only.
    Value,
    /// Display values only.
    Label,
    /// Both, as `{value, display_value}` objects.
    All,
}

/// Rendering options shared by every reply that carries records.
#[derive(Clone, Debug)]
pub struct Render {
    /// `sysparm_fields`: the fields to return; `None` for all.
    pub fields: Option<Vec<String>>,
    /// `sysparm_display_value`.
    pub display: Display,
    pub(crate) exclude_link: bool,
}

pub(crate) fn params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(ps: &'a [(String, String)], name: &str) -> Option<&'a str> {
    ps.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn flag(ps: &[(String, String)], name: &str) -> bool {
    param(ps, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl Render {
    pub(crate) fn from_params(ps: &[(String, String)]) -> Render {
        Render {
            fields: param(ps, "sysparm_fields")
                .filter(|f| !f.trim().is_empty())
                .map(|f| f.split(',').map(|s| s.trim().to_string()).collect()),
            display: match param(ps, "sysparm_display_value") {
                Some("true") => Display::Label,
                Some("all") => Display::All,
                _ => Display::Value,
            },
            exclude_link: flag(ps, "sysparm_exclude_reference_link"),
        }
    }
}

pub(crate) fn find<'a>(db: &'a Db, table: &str, sys_id: &str) -> Option<&'a Record> {
    db.tables
        .get(table)?
        .iter()
        .find(|r| r.get("sys_id").and_then(Value::as_str) == Some(sys_id))
}

fn str_of(rec: &Record, field: &str) -> String {
    rec.get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The display value of one stored value.
fn display_of(db: &Db, kind: Kind, value: &str) -> String {
    match kind {
        Kind::Ref(target) => schema::table(target)
            .and_then(|t| find(db, target, value).map(|r| str_of(r, t.display)))
            .unwrap_or_default(),
        k => schema::choice_label(k, value),
    }
}

/// One record as the API shows it.
pub fn render(db: &Db, base: &str, t: &'static TableDef, rec: &Record, opts: &Render) -> Value {
    let lookup = |tb: &str, id: &str| find(db, tb, id);
    let names: Vec<String> = match &opts.fields {
        Some(f) => f.clone(),
        None => t.columns().map(|(f, _)| f.to_string()).collect(),
    };
    let mut out = Map::new();
    for name in names {
        let Some(path) = query::resolve_path(t, &name) else {
            continue;
        };
        let value = query::value_of(rec, &path, &lookup);
        let (last, last_table) = &path[path.len() - 1];
        let kind = schema::table(last_table)
            .and_then(|tt| tt.kind(last))
            .unwrap_or(Kind::Str);
        let shown = match (kind, opts.display) {
            (Kind::Ref(target), d) if !value.is_empty() => {
                let link = format!("{base}/api/now/table/{target}/{value}");
                let dv = display_of(db, kind, &value);
                match (d, opts.exclude_link) {
                    (Display::Value, true) => json!(value),
                    (Display::Value, false) => json!({"link": link, "value": value}),
                    (Display::Label, true) => json!(dv),
                    (Display::Label, false) => json!({"display_value": dv, "link": link}),
                    (Display::All, true) => json!({"display_value": dv, "value": value}),
                    (Display::All, false) => {
                        json!({"display_value": dv, "link": link, "value": value})
                    }
                }
            }
            (_, Display::Value) => json!(value),
            (k, Display::Label) => json!(display_of(db, k, &value)),
            (k, Display::All) => {
                json!({"display_value": display_of(db, k, &value), "value": value})
            }
        };
        out.insert(name, shown);
    }
    Value::Object(out)
}

fn table_def(table: &str) -> Result<&'static TableDef, SnError> {
    schema::table(table).ok_or_else(|| SnError::invalid_table(table))
}

fn forbidden(what: &str) -> SnError {
    SnError::new(
        StatusCode::FORBIDDEN,
        "Operation Failed",
        Some(&format!(
            "ACL Exception {what} Failed due to security constraints"
        )),
    )
}

/// Rows of `table` the caller may not see (row rules), checked after paging.
fn hidden(db: &Db, caller: &Caller, t: &'static TableDef, rec: &Record) -> bool {
    let lookup = |tb: &str, id: &str| find(db, tb, id);
    db.acl
        .rows
        .iter()
        .filter(|r| r.table == t.name && !caller.has_role(&r.unless_role))
        .any(|r| {
            let q = query::parse(t, &dynamic(db, caller, &r.hide_query));
            !q.groups.is_empty() && q.matches(rec, &lookup)
        })
}

/// The rows a query selects, in order.
fn select<'a>(db: &'a Db, rows: &'a [Record], t: &'static TableDef, q: &Query) -> Vec<&'a Record> {
    if q.invalid && db.property_true("glide.invalid_query.returns_no_rows") {
        return Vec::new();
    }
    let lookup = |tb: &str, id: &str| find(db, tb, id);
    let mut matched: Vec<&Record> = rows.iter().filter(|r| q.matches(r, &lookup)).collect();
    q.sort(t, &mut matched, &lookup);
    matched
}

/// An encoded query with the caller-relative values a query may use in place of a constant
/// (`javascript:gs.getUserID()`, `javascript:gs.getUserName()`) replaced by the caller's.
fn dynamic(db: &Db, caller: &Caller, encoded: &str) -> String {
    if !encoded.contains("javascript:") {
        return encoded.to_string();
    }
    let user_id = db
        .tables
        .get("sys_user")
        .into_iter()
        .flatten()
        .find(|r| r.get("user_name").and_then(Value::as_str) == Some(caller.user_name.as_str()))
        .and_then(|r| r.get("sys_id").and_then(Value::as_str))
        .unwrap_or("");
    encoded
        .replace("javascript:gs.getUserID()", user_id)
        .replace("javascript:gs.getUserName()", &caller.user_name)
}

fn query_of(db: &Db, caller: &Caller, t: &'static TableDef, ps: &[(String, String)]) -> Query {
    match param(ps, "sysparm_query") {
        Some(q) => query::parse(t, &dynamic(db, caller, q)),
        None => {
            let plain: Vec<(String, String)> = ps
                .iter()
                .filter(|(k, _)| !k.starts_with("sysparm_"))
                .cloned()
                .collect();
            query::from_pairs(t, &plain)
        }
    }
}

fn page_link(
    base: &str,
    path: &str,
    ps: &[(String, String)],
    offset: usize,
    limit: usize,
) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in ps {
        if k != "sysparm_offset" && k != "sysparm_limit" {
            s.append_pair(k, v);
        }
    }
    s.append_pair("sysparm_offset", &offset.to_string());
    s.append_pair("sysparm_limit", &limit.to_string());
    format!("{base}{path}?{}", s.finish())
}

fn list_impl(
    sim: &SharedSn,
    caller: &Caller,
    version: Version,
    table: &str,
    uri: &Uri,
) -> Result<Response, SnError> {
    let t = table_def(table)?;
    let ps = params(uri);
    let db = sim.db.lock();
    if !db.acl.allowed(caller, t.name, Operation::Read) {
        return Err(SnError::new(
            StatusCode::FORBIDDEN,
            "Insufficient rights to query records",
            None,
        ));
    }
    let dictionary;
    let rows: &[Record] = if t.name == "sys_dictionary" {
        dictionary = schema::dictionary_rows();
        &dictionary
    } else {
        db.tables.get(t.name).map(Vec::as_slice).unwrap_or(&[])
    };
    let q = query_of(&db, caller, t, &ps);
    let matched = select(&db, rows, t, &q);
    let total = matched.len();
    let offset: usize = param(&ps, "sysparm_offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = param(&ps, "sysparm_limit")
        .and_then(|v| v.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(10_000);
    let opts = Render::from_params(&ps);
    let base = sim.base();
    // Paging first, then the row ACLs: a page can come back short while more rows exist.
    let result: Vec<Value> = matched
        .iter()
        .skip(offset)
        .take(limit)
        .filter(|r| !hidden(&db, caller, t, r))
        .map(|r| render(&db, &base, t, r, &opts))
        .collect();
    if result.is_empty() && version == Version::V1 {
        return Err(SnError::new(
            StatusCode::NOT_FOUND,
            "No Record found",
            Some("Records matching query not found. Check query parameter or offset parameter"),
        ));
    }
    let mut resp = (StatusCode::OK, axum::Json(json!({"result": result}))).into_response();
    let h = resp.headers_mut();
    if !flag(&ps, "sysparm_no_count")
        && let Ok(v) = HeaderValue::from_str(&total.to_string())
    {
        h.insert("x-total-count", v);
    }
    if !flag(&ps, "sysparm_suppress_pagination_header") {
        let path = uri.path();
        let mut links = Vec::new();
        let link = |o: usize, rel: &str| {
            format!("<{}>;rel=\"{rel}\"", page_link(&base, path, &ps, o, limit))
        };
        links.push(link(0, "first"));
        if offset > 0 {
            links.push(link(offset.saturating_sub(limit), "prev"));
        }
        if offset + limit < total {
            links.push(link(offset + limit, "next"));
        }
        let last = if total == 0 {
            0
        } else {
            (total - 1) / limit * limit
        };
        links.push(link(last, "last"));
        if let Ok(v) = HeaderValue::from_str(&links.join(",")) {
            h.insert(header::LINK, v);
        }
    }
    Ok(resp)
}

pub(crate) async fn list(
    State(sim): State<SharedSn>,
    Path(table): Path<String>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    list_impl(&sim, &caller, Version::Latest, &table, &uri).unwrap_or_else(|e| e.into_response())
}

pub(crate) async fn list_v(
    State(sim): State<SharedSn>,
    Path((v, table)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    version(&v)
        .and_then(|v| list_impl(&sim, &caller, v, &table, &uri))
        .unwrap_or_else(|e| e.into_response())
}

fn get_impl(
    sim: &SharedSn,
    caller: &Caller,
    table: &str,
    sys_id: &str,
    uri: &Uri,
) -> Result<Response, SnError> {
    let t = table_def(table)?;
    let ps = params(uri);
    let db = sim.db.lock();
    let dictionary;
    let rec = if t.name == "sys_dictionary" {
        dictionary = schema::dictionary_rows();
        dictionary
            .iter()
            .find(|r| r.get("sys_id").and_then(Value::as_str) == Some(sys_id))
    } else {
        find(&db, t.name, sys_id)
    };
    let rec = rec
        .filter(|r| db.acl.allowed(caller, t.name, Operation::Read) && !hidden(&db, caller, t, r))
        .ok_or_else(SnError::no_record)?;
    let body = render(&db, &sim.base(), t, rec, &Render::from_params(&ps));
    Ok((StatusCode::OK, axum::Json(json!({"result": body}))).into_response())
}

pub(crate) async fn get_one(
    State(sim): State<SharedSn>,
    Path((table, sys_id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    get_impl(&sim, &caller, &table, &sys_id, &uri).unwrap_or_else(|e| e.into_response())
}

pub(crate) async fn get_one_v(
    State(sim): State<SharedSn>,
    Path((v, table, sys_id)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    version(&v)
        .and_then(|_| get_impl(&sim, &caller, &table, &sys_id, &uri))
        .unwrap_or_else(|e| e.into_response())
}

/// A written value as ServiceNow stores it: always a string.
pub fn to_stored(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => o.get("value").map(to_stored).unwrap_or_default(),
        Value::Array(_) => v.to_string(),
    }
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, SnError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(SnError::new(
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            Some("The payload is not valid JSON object."),
        )),
    }
}

/// Resolves a reference written as a display value (or, for users, an email) to its sys_id.
fn resolve_display(db: &Db, target: &str, v: &str) -> String {
    let Some(tt) = schema::table(target) else {
        return v.to_string();
    };
    db.tables
        .get(target)
        .and_then(|rows| {
            rows.iter().find(|r| {
                str_of(r, "sys_id") == v
                    || str_of(r, tt.display) == v
                    || (target == "sys_user" && str_of(r, "email") == v)
            })
        })
        .map(|r| str_of(r, "sys_id"))
        .unwrap_or_default()
}

/// Applies client-written fields: unknown and read-only fields are ignored; journals append.
fn apply(
    db: &Db,
    t: &'static TableDef,
    rec: &mut Record,
    input: &Map<String, Value>,
    display_input: bool,
) {
    for (k, v) in input {
        if !t.writable(k) {
            continue;
        }
        let mut value = to_stored(v);
        match t.kind(k) {
            Some(Kind::Journal) => {
                let old = str_of(rec, k);
                if !old.is_empty() && !value.is_empty() {
                    value = format!("{old}\n{value}");
                }
            }
            Some(Kind::Ref(target)) if display_input && !value.is_empty() => {
                value = resolve_display(db, target, &value);
            }
            _ => {}
        }
        rec.insert(k.clone(), Value::String(value));
    }
}

/// Computed incident fields and the resolution data policy.
fn incident_rules(rec: &mut Record, before_state: Option<&str>, now: &str) -> Result<(), SnError> {
    let p = seed::priority(&str_of(rec, "urgency"), &str_of(rec, "impact"));
    rec.insert("priority".into(), Value::String(p));
    let state = str_of(rec, "state");
    if before_state != Some(state.as_str()) && matches!(state.as_str(), "6" | "7") {
        if str_of(rec, "close_code").is_empty() || str_of(rec, "close_notes").is_empty() {
            return Err(SnError::new(
                StatusCode::FORBIDDEN,
                "Operation Failed",
                Some(
                    "Data Policy Exception: the following fields are mandatory: Resolution code, Resolution notes",
                ),
            ));
        }
        if str_of(rec, "resolved_at").is_empty() {
            rec.insert("resolved_at".into(), Value::String(now.to_string()));
        }
        if state == "7" {
            rec.insert("closed_at".into(), Value::String(now.to_string()));
        }
    }
    let active = !matches!(state.as_str(), "6" | "7" | "8");
    rec.insert("active".into(), Value::String(active.to_string()));
    Ok(())
}

fn write_reply(
    sim: &SharedSn,
    db: &Db,
    t: &'static TableDef,
    rec: &Record,
    status: StatusCode,
    headers: &HeaderMap,
    ps: &[(String, String)],
) -> Response {
    let base = sim.base();
    let no_body = headers
        .get("x-no-response-body")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut resp = if no_body {
        status.into_response()
    } else {
        let body = render(db, &base, t, rec, &Render::from_params(ps));
        (status, axum::Json(json!({"result": body}))).into_response()
    };
    if status == StatusCode::CREATED {
        let loc = format!("{base}/api/now/table/{}/{}", t.name, str_of(rec, "sys_id"));
        if let Ok(v) = HeaderValue::from_str(&loc) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    resp
}

/// Inserts a record (Table API POST and import-set transforms); returns it.
pub fn insert_record(
    sim: &SharedSn,
    db: &mut Db,
    caller: &Caller,
    t: &'static TableDef,
    input: &Map<String, Value>,
    display_input: bool,
) -> Result<Record, SnError> {
    let now = sim.now_sql();
    let id = db.new_id(sim.cfg.seed);
    let mut rec = Record::new();
    for (f, _) in t.columns() {
        rec.insert(f.to_string(), Value::String(String::new()));
    }
    for (k, v) in [
        ("sys_id", id.as_str()),
        ("sys_created_on", now.as_str()),
        ("sys_updated_on", now.as_str()),
        ("sys_created_by", caller.user_name.as_str()),
        ("sys_updated_by", caller.user_name.as_str()),
        ("sys_mod_count", "0"),
    ] {
        rec.insert(k.into(), Value::String(v.to_string()));
    }
    if t.name == "incident" {
        let number = seed::incident_number(db.next_incident);
        for (k, v) in [
            ("number", number.as_str()),
            ("state", "1"),
            ("urgency", "3"),
            ("impact", "3"),
            ("opened_at", now.as_str()),
        ] {
            rec.insert(k.into(), Value::String(v.to_string()));
        }
    }
    if matches!(t.name, "customer_contact" | "sys_user") {
        rec.insert("active".into(), Value::String("true".into()));
    }
    apply(db, t, &mut rec, input, display_input);
    if t.name == "incident" {
        incident_rules(&mut rec, None, &now)?;
        db.next_incident += 1;
    }
    if matches!(t.name, "customer_contact" | "sys_user") && str_of(&rec, "name").is_empty() {
        let name = format!(
            "{} {}",
            str_of(&rec, "first_name"),
            str_of(&rec, "last_name")
        );
        rec.insert("name".into(), Value::String(name.trim().to_string()));
    }
    db.table_mut(t.name).push(rec.clone());
    Ok(rec)
}

fn create_impl(
    sim: &SharedSn,
    caller: &Caller,
    table: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Response, Vec<rules::Job>), SnError> {
    let t = table_def(table)?;
    if t.name == "sys_dictionary" {
        return Err(forbidden("Insert"));
    }
    let ps = params(uri);
    let input = parse_body(body)?;
    let mut db = sim.db.lock();
    if !db.acl.allowed(caller, t.name, Operation::Create) {
        return Err(forbidden("Insert"));
    }
    let rec = insert_record(
        sim,
        &mut db,
        caller,
        t,
        &input,
        flag(&ps, "sysparm_input_display_value"),
    )?;
    let jobs = rules::triggered(sim, &db, t, None, &rec);
    Ok((
        write_reply(sim, &db, t, &rec, StatusCode::CREATED, headers, &ps),
        jobs,
    ))
}

pub(crate) async fn create(
    State(sim): State<SharedSn>,
    Path(table): Path<String>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(
        &sim,
        create_impl(&sim, &caller, &table, &uri, &headers, &body),
    )
    .await
}

pub(crate) async fn create_v(
    State(sim): State<SharedSn>,
    Path((v, table)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = version(&v).and_then(|_| create_impl(&sim, &caller, &table, &uri, &headers, &body));
    finish(&sim, r).await
}

/// Runs the business rules a write triggered, then answers.
async fn finish(sim: &SharedSn, r: Result<(Response, Vec<rules::Job>), SnError>) -> Response {
    match r {
        Ok((resp, jobs)) => {
            rules::dispatch(sim, jobs).await;
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Updates a record in place (PATCH/PUT and import-set coalesce); returns (before, after).
pub fn update_record(
    sim: &SharedSn,
    db: &mut Db,
    caller: &Caller,
    t: &'static TableDef,
    sys_id: &str,
    input: &Map<String, Value>,
    display_input: bool,
) -> Result<(Record, Record), SnError> {
    let now = sim.now_sql();
    let before = find(db, t.name, sys_id)
        .cloned()
        .ok_or_else(SnError::no_record)?;
    let mut rec = before.clone();
    apply(db, t, &mut rec, input, display_input);
    if t.name == "incident" {
        incident_rules(&mut rec, Some(&str_of(&before, "state")), &now)?;
    }
    let count = str_of(&rec, "sys_mod_count").parse::<u64>().unwrap_or(0) + 1;
    rec.insert("sys_mod_count".into(), Value::String(count.to_string()));
    rec.insert("sys_updated_on".into(), Value::String(now));
    rec.insert(
        "sys_updated_by".into(),
        Value::String(caller.user_name.clone()),
    );
    if let Some(slot) = db
        .table_mut(t.name)
        .iter_mut()
        .find(|r| r.get("sys_id").and_then(Value::as_str) == Some(sys_id))
    {
        *slot = rec.clone();
    }
    Ok((before, rec))
}

fn update_impl(
    sim: &SharedSn,
    caller: &Caller,
    table: &str,
    sys_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Response, Vec<rules::Job>), SnError> {
    let t = table_def(table)?;
    let ps = params(uri);
    let input = parse_body(body)?;
    let mut db = sim.db.lock();
    let visible = find(&db, t.name, sys_id).is_some_and(|r| {
        db.acl.allowed(caller, t.name, Operation::Read) && !hidden(&db, caller, t, r)
    });
    if !visible {
        return Err(SnError::no_record());
    }
    if !db.acl.allowed(caller, t.name, Operation::Write) {
        return Err(forbidden("Update"));
    }
    let (before, after) = update_record(
        sim,
        &mut db,
        caller,
        t,
        sys_id,
        &input,
        flag(&ps, "sysparm_input_display_value"),
    )?;
    let jobs = rules::triggered(sim, &db, t, Some(&before), &after);
    Ok((
        write_reply(sim, &db, t, &after, StatusCode::OK, headers, &ps),
        jobs,
    ))
}

pub(crate) async fn update(
    State(sim): State<SharedSn>,
    Path((table, sys_id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(
        &sim,
        update_impl(&sim, &caller, &table, &sys_id, &uri, &headers, &body),
    )
    .await
}

pub(crate) async fn update_v(
    State(sim): State<SharedSn>,
    Path((v, table, sys_id)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = version(&v)
        .and_then(|_| update_impl(&sim, &caller, &table, &sys_id, &uri, &headers, &body));
    finish(&sim, r).await
}

/// PUT behaves like PATCH here (as on ServiceNow, where fields not sent keep their values).
pub async fn replace(
    s: State<SharedSn>,
    p: Path<(String, String)>,
    c: Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update(s, p, c, uri, headers, body).await
}

pub(crate) async fn replace_v(
    s: State<SharedSn>,
    p: Path<(String, String, String)>,
    c: Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update_v(s, p, c, uri, headers, body).await
}

fn delete_impl(
    sim: &SharedSn,
    caller: &Caller,
    table: &str,
    sys_id: &str,
) -> Result<Response, SnError> {
    let t = table_def(table)?;
    let mut db = sim.db.lock();
    let visible = find(&db, t.name, sys_id).is_some_and(|r| {
        db.acl.allowed(caller, t.name, Operation::Read) && !hidden(&db, caller, t, r)
    });
    if !visible {
        return Err(SnError::no_record());
    }
    if !db.acl.allowed(caller, t.name, Operation::Delete) {
        return Err(forbidden("Delete"));
    }
    db.table_mut(t.name)
        .retain(|r| r.get("sys_id").and_then(Value::as_str) != Some(sys_id));
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn delete(
    State(sim): State<SharedSn>,
    Path((table, sys_id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Response {
    delete_impl(&sim, &caller, &table, &sys_id).unwrap_or_else(|e| e.into_response())
}

pub(crate) async fn delete_v(
    State(sim): State<SharedSn>,
    Path((v, table, sys_id)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
) -> Response {
    version(&v)
        .and_then(|_| delete_impl(&sim, &caller, &table, &sys_id))
        .unwrap_or_else(|e| e.into_response())
}

/// `GET /api/now/stats/{table}?sysparm_count=true&sysparm_query=…`
pub async fn stats(
    State(sim): State<SharedSn>,
    Path(table): Path<String>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let r = (|| {
        let t = table_def(&table)?;
        let ps = params(&uri);
        let db = sim.db.lock();
        if !db.acl.allowed(&caller, t.name, Operation::Read) {
            return Err(SnError::new(
                StatusCode::FORBIDDEN,
                "Insufficient rights to query records",
                None,
            ));
        }
        let dictionary;
        let rows: &[Record] = if t.name == "sys_dictionary" {
            dictionary = schema::dictionary_rows();
            &dictionary
        } else {
            db.tables.get(t.name).map(Vec::as_slice).unwrap_or(&[])
        };
        let n = select(&db, rows, t, &query_of(&db, &caller, t, &ps)).len();
        Ok(axum::Json(json!({"result": {"stats": {"count": n.to_string()}}})).into_response())
    })();
    r.unwrap_or_else(|e| e.into_response())
}
