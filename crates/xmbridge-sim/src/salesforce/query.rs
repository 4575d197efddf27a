//! A SOQL subset: `SELECT f1, f2 FROM Obj [WHERE a = 'x' [AND|OR b = 'y' …]] [ORDER BY f
//! [ASC|DESC]] [LIMIT n]` with `=`, `!=`, `<`, `>`, `<=`, `>=` against strings, numbers,
//! booleans and null (AND binds tighter than OR). Results page through `nextRecordsUrl`
//! (`Sforce-Query-Options: batchSize=N`, 200..2000, default 2000). Malformed → 400
//! MALFORMED_QUERY; unknown object → INVALID_TYPE; unknown or unreadable field → INVALID_FIELD.
//! `FROM RecordType` reads the org's record types (every user may, as in Salesforce).

use super::describe::{ObjectDef, readable, record_type_object};
use super::rest::Session;
use super::sobjects::record_json;
use super::{SfError, SharedSf, json_response};
use axum::Extension;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use std::cmp::Ordering;

/// Rows left of a query, served page by page.
#[derive(Clone, Debug)]
pub struct Cursor {
    /// Every row of the result, rendered.
    pub rows: Vec<Value>,
    /// How many rows were served so far.
    pub offset: usize,
    /// Rows per page (`batchSize`).
    pub batch: usize,
    /// The result's `totalSize`.
    pub total: usize,
    /// The user who ran the query (index in `State::users`); only they may page on.
    pub user: usize,
}

#[derive(Clone, Debug, PartialEq)]
/// A literal of a SOQL condition.
pub enum Lit {
    /// A quoted string.
    Str(String),
    /// A number.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

#[derive(Clone, Debug, PartialEq)]
/// One comparison of a WHERE clause: `field op value`.
pub struct Cond {
    /// The field's API name.
    pub field: String,
    /// The operator: `=`, `!=`, `<>`, `<`, `>`, `<=` or `>=`.
    pub op: String,
    /// The right-hand side.
    pub value: Lit,
}

/// WHERE in disjunctive form: OR of ANDs.
#[derive(Clone, Debug, PartialEq)]
pub struct Soql {
    /// The selected fields, as written.
    pub fields: Vec<String>,
    /// The object queried (FROM).
    pub object: String,
    /// The WHERE clause: OR of AND-groups; empty for none.
    pub filter: Vec<Vec<Cond>>,
    pub(crate) order_by: Option<(String, bool)>,
    /// The LIMIT; `None` for none.
    pub limit: Option<usize>,
}

fn tokenize(q: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == ',' {
            out.push(",".into());
            i += 1;
        } else if c == '\'' {
            let mut s = String::from("'");
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(s);
        } else if "=!<>".contains(c) {
            let mut op = c.to_string();
            if chars.get(i + 1) == Some(&'=') || (c == '<' && chars.get(i + 1) == Some(&'>')) {
                op.push(chars[i + 1]);
                i += 1;
            }
            i += 1;
            out.push(op);
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !",'=!<>".contains(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        }
    }
    Ok(out)
}

fn is_kw(t: Option<&String>, kw: &str) -> bool {
    t.is_some_and(|t| t.eq_ignore_ascii_case(kw))
}

fn ident(t: Option<&String>) -> Result<String, String> {
    match t {
        Some(t)
            if t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && !t.is_empty() =>
        {
            Ok(t.clone())
        }
        Some(t) => Err(format!("unexpected token: '{t}'")),
        None => Err("unexpected end of query".into()),
    }
}

/// Parses the subset; the error text follows Salesforce's "unexpected token" style.
pub fn parse(q: &str) -> Result<Soql, String> {
    let toks = tokenize(q)?;
    let mut i = 0;
    if !is_kw(toks.first(), "SELECT") {
        return Err(format!(
            "unexpected token: '{}'",
            toks.first().cloned().unwrap_or_default()
        ));
    }
    i += 1;
    let mut fields = Vec::new();
    loop {
        fields.push(ident(toks.get(i))?);
        i += 1;
        if toks.get(i).map(String::as_str) == Some(",") {
            i += 1;
            continue;
        }
        break;
    }
    if !is_kw(toks.get(i), "FROM") {
        return Err(format!(
            "unexpected token: '{}'",
            toks.get(i).cloned().unwrap_or_default()
        ));
    }
    i += 1;
    let object = ident(toks.get(i))?;
    i += 1;
    let mut filter = Vec::new();
    if is_kw(toks.get(i), "WHERE") {
        i += 1;
        let mut group = Vec::new();
        loop {
            let field = ident(toks.get(i))?;
            let op = toks.get(i + 1).cloned().ok_or("unexpected end of query")?;
            if !["=", "!=", "<>", "<", ">", "<=", ">="].contains(&op.as_str()) {
                return Err(format!("unexpected token: '{op}'"));
            }
            let raw = toks.get(i + 2).cloned().ok_or("unexpected end of query")?;
            let value = if let Some(s) = raw.strip_prefix('\'') {
                Lit::Str(s.to_string())
            } else if raw.eq_ignore_ascii_case("null") {
                Lit::Null
            } else if raw.eq_ignore_ascii_case("true") || raw.eq_ignore_ascii_case("false") {
                Lit::Bool(raw.eq_ignore_ascii_case("true"))
            } else if let Ok(n) = raw.parse::<f64>() {
                Lit::Num(n)
            } else {
                return Err(format!("unexpected token: '{raw}'"));
            };
            let op = if op == "<>" { "!=".to_string() } else { op };
            group.push(Cond { field, op, value });
            i += 3;
            if is_kw(toks.get(i), "AND") {
                i += 1;
            } else if is_kw(toks.get(i), "OR") {
                filter.push(std::mem::take(&mut group));
                i += 1;
            } else {
                break;
            }
        }
        filter.push(group);
    }
    let mut order_by = None;
    if is_kw(toks.get(i), "ORDER") {
        if !is_kw(toks.get(i + 1), "BY") {
            return Err(format!(
                "unexpected token: '{}'",
                toks.get(i + 1).cloned().unwrap_or_default()
            ));
        }
        let f = ident(toks.get(i + 2))?;
        i += 3;
        let mut asc = true;
        if is_kw(toks.get(i), "ASC") {
            i += 1;
        } else if is_kw(toks.get(i), "DESC") {
            asc = false;
            i += 1;
        }
        order_by = Some((f, asc));
    }
    let mut limit = None;
    if is_kw(toks.get(i), "LIMIT") {
        let n = toks
            .get(i + 1)
            .and_then(|t| t.parse::<usize>().ok())
            .ok_or_else(|| {
                format!(
                    "unexpected token: '{}'",
                    toks.get(i + 1).cloned().unwrap_or_default()
                )
            })?;
        limit = Some(n);
        i += 2;
    }
    if let Some(t) = toks.get(i) {
        return Err(format!("unexpected token: '{t}'"));
    }
    Ok(Soql {
        fields,
        object,
        filter,
        order_by,
        limit,
    })
}

fn cmp_values(a: &Value, b: &Lit) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, Lit::Null) => Some(Ordering::Equal),
        (Value::Null, _) | (_, Lit::Null) => None,
        (Value::String(s), Lit::Str(t)) => Some(s.as_str().cmp(t.as_str())),
        (Value::Number(n), Lit::Num(m)) => n.as_f64().and_then(|n| n.partial_cmp(m)),
        (Value::String(s), Lit::Num(m)) => s.parse::<f64>().ok().and_then(|n| n.partial_cmp(m)),
        (Value::Bool(x), Lit::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn holds(rec: &serde_json::Map<String, Value>, c: &Cond) -> bool {
    let v = rec.get(&c.field).unwrap_or(&Value::Null);
    let ord = cmp_values(v, &c.value);
    match c.op.as_str() {
        "=" => ord == Some(Ordering::Equal),
        "!=" => ord != Some(Ordering::Equal),
        "<" => ord == Some(Ordering::Less),
        ">" => ord == Some(Ordering::Greater),
        "<=" => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        ">=" => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
        _ => false,
    }
}

fn canonical(s: &Session, o: &ObjectDef, name: &str) -> Result<String, SfError> {
    o.field(name)
        .filter(|fd| readable(&s.profile, o, fd))
        .map(|fd| fd.name.to_string())
        .ok_or_else(|| {
            SfError::bad(
                "INVALID_FIELD",
                format!(
                    "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                    o.name
                ),
            )
        })
}

pub(crate) fn routes() -> Router<SharedSf> {
    Router::new()
        .route("/services/data/{v}/query", get(query))
        .route("/services/data/{v}/query/{cursor}", get(more))
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("Sforce-Query-Options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split([',', ';'])
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("batchSize"))
                .and_then(|(_, n)| n.trim().parse::<usize>().ok())
        })
        .map(|n| n.clamp(200, 2000))
        .unwrap_or(2000)
}

async fn query(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, SfError> {
    let soql = q
        .as_deref()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "q"))
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| SfError::bad("MALFORMED_QUERY", "A query string has to be specified"))?;
    let parsed = parse(&soql).map_err(|e| SfError::bad("MALFORMED_QUERY", e))?;
    // RecordType is readable by every user; its rows are the org's record types.
    let record_type_def;
    let is_record_type = parsed.object.eq_ignore_ascii_case("RecordType");
    let o = if is_record_type {
        record_type_def = record_type_object();
        Some(&record_type_def)
    } else {
        sim.object(&parsed.object)
            .filter(|o| s.profile.object(o.name).read)
    };
    let o = o.ok_or_else(|| {
        SfError::bad(
            "INVALID_TYPE",
            format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name.",
                parsed.object
            ),
        )
    })?;
    let fields: Vec<String> = parsed
        .fields
        .iter()
        .map(|f| canonical(&s, o, f))
        .collect::<Result<_, _>>()?;
    let mut filter = parsed.filter.clone();
    for c in filter.iter_mut().flatten() {
        c.field = canonical(&s, o, &c.field)?;
    }
    let order = match &parsed.order_by {
        Some((f, asc)) => Some((canonical(&s, o, f)?, *asc)),
        None => None,
    };
    let mut st = sim.state.lock();
    let record_type_rows = if is_record_type {
        super::record_types::as_records(&st.record_types, sim.cfg.start_ms)
    } else {
        Vec::new()
    };
    let source: &[super::sobjects::Record] = if is_record_type {
        &record_type_rows
    } else {
        st.records
            .get(o.name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let mut recs: Vec<&super::sobjects::Record> = source
        .iter()
        .filter(|r| !r.deleted)
        .filter(|r| {
            filter.is_empty() || filter.iter().any(|g| g.iter().all(|c| holds(&r.fields, c)))
        })
        .collect();
    if let Some((f, asc)) = &order {
        recs.sort_by(|a, b| {
            let (x, y) = (a.fields.get(f), b.fields.get(f));
            let ord = match (x, y) {
                (Some(Value::Number(x)), Some(Value::Number(y))) => x
                    .as_f64()
                    .partial_cmp(&y.as_f64())
                    .unwrap_or(Ordering::Equal),
                (Some(x), Some(y)) => {
                    super::sobjects::value_text(x).cmp(&super::sobjects::value_text(y))
                }
                _ => Ordering::Equal,
            };
            if *asc { ord } else { ord.reverse() }
        });
    }
    if let Some(n) = parsed.limit {
        recs.truncate(n);
    }
    let rows: Vec<Value> = recs
        .iter()
        .map(|r| record_json(&s.profile, o, r, Some(&fields), &s.version))
        .collect();
    let total = rows.len();
    let cursor = Cursor {
        rows,
        offset: 0,
        batch: batch_size(&headers),
        total,
        user: s.user,
    };
    let id = format!("01g5g{}", st.rng.alnum(10));
    Ok(page(&mut st.cursors, id, cursor, &s.version))
}

fn page(
    cursors: &mut std::collections::BTreeMap<String, Cursor>,
    id: String,
    mut c: Cursor,
    version: &str,
) -> Response {
    let end = (c.offset + c.batch).min(c.rows.len());
    let records: Vec<Value> = c.rows[c.offset..end].to_vec();
    let done = end >= c.rows.len();
    let mut body = json!({"totalSize": c.total, "done": done, "records": records});
    if !done {
        body["nextRecordsUrl"] = json!(format!("/services/data/v{version}/query/{id}-{end}"));
        c.offset = end;
        cursors.insert(id, c);
    } else {
        cursors.remove(&id);
    }
    json_response(StatusCode::OK, &body)
}

async fn more(
    State(sim): State<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, cursor)): Path<(String, String)>,
) -> Result<Response, SfError> {
    let invalid = || SfError::bad("INVALID_QUERY_LOCATOR", "invalid query locator");
    let (id, offset) = cursor.rsplit_once('-').ok_or_else(invalid)?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let mut st = sim.state.lock();
    let c = st.cursors.get(id).cloned().ok_or_else(invalid)?;
    if c.user != s.user || c.offset != offset {
        return Err(invalid());
    }
    Ok(page(&mut st.cursors, id.to_string(), c, &s.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset() {
        let q = parse("SELECT Id, Email FROM Contact WHERE LastName = 'O\\'Neil' AND NPS__c <= 6 OR Email != null ORDER BY Email DESC LIMIT 5").unwrap();
        assert_eq!(q.fields, vec!["Id", "Email"]);
        assert_eq!(q.object, "Contact");
        assert_eq!(q.filter.len(), 2);
        assert_eq!(q.filter[0][0].value, Lit::Str("O'Neil".into()));
        assert_eq!(q.filter[0][1].op, "<=");
        assert_eq!(q.order_by, Some(("Email".into(), false)));
        assert_eq!(q.limit, Some(5));
    }

    #[test]
    fn malformed_queries_are_refused() {
        for bad in [
            "SELEC Id FROM Contact",
            "SELECT Id Contact",
            "SELECT Id FROM Contact WHERE",
            "SELECT Id FROM Contact WHERE a = 'x",
            "SELECT Id FROM Contact LIMIT x",
            "SELECT Id FROM Contact extra",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
