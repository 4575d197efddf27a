//! sObject Collections: create, update, upsert, delete and read of up to 200 records in one call
//! (one API call counted). A well-formed request answers 200 with one result per record in
//! request order, errors under `statusCode`; with `allOrNone` one failure rolls back all and the
//! others report ALL_OR_NONE_OPERATION_ROLLED_BACK.

use super::rest::{Session, object_body};
use super::sobjects::{self, Upserted};
use super::{ErrItem, SfError, SharedSf, State, json_response};
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, patch};
use serde_json::{Map, Value, json};

pub(crate) const MAX_RECORDS: usize = 200;

pub(crate) fn routes() -> Router<SharedSf> {
    Router::new()
        .route(
            "/services/data/{v}/composite/sobjects",
            patch(update).post(create).delete(delete),
        )
        .route("/services/data/{v}/composite/sobjects/{obj}", get(read))
        .route(
            "/services/data/{v}/composite/sobjects/{obj}/{field}",
            patch(upsert),
        )
}

struct Batch {
    all_or_none: bool,
    records: Vec<Map<String, Value>>,
}

fn parse_batch(body: &[u8]) -> Result<Batch, SfError> {
    let m = object_body(body)?;
    let all_or_none = m.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
    let Some(Value::Array(rs)) = m.get("records") else {
        return Err(SfError::bad(
            "JSON_PARSER_ERROR",
            "The request must contain a 'records' array",
        ));
    };
    if rs.len() > MAX_RECORDS {
        return Err(SfError::bad(
            "EXCEEDED_ID_LIMIT",
            format!(
                "record limit reached. cannot submit more than {MAX_RECORDS} records into this call"
            ),
        ));
    }
    let records = rs
        .iter()
        .map(|r| {
            r.as_object()
                .cloned()
                .ok_or_else(|| SfError::bad("JSON_PARSER_ERROR", "each record must be an object"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Batch {
        all_or_none,
        records,
    })
}

/// One record's outcome.
enum Outcome {
    Ok {
        id: String,
        created: Option<bool>,
    },
    Failed {
        id: Option<String>,
        errors: Vec<ErrItem>,
    },
}

fn rolled_back() -> ErrItem {
    ErrItem::new(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
        Vec::new(),
    )
}

/// Runs each record; with all-or-none, restores the records on any failure.
fn run(
    st: &mut State,
    all_or_none: bool,
    n: usize,
    mut each: impl FnMut(&mut State, usize) -> Outcome,
) -> Value {
    let saved = all_or_none.then(|| (st.records.clone(), st.counters.clone()));
    let outcomes: Vec<Outcome> = (0..n).map(|i| each(st, i)).collect();
    let failed = outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. }));
    let rollback = failed && all_or_none;
    if rollback && let Some((records, counters)) = saved {
        st.records = records;
        st.counters = counters;
    }
    Value::Array(
        outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Ok { id, created } if rollback => {
                    let _ = (id, created);
                    json!({"success": false, "errors": [rolled_back().collection_json()]})
                }
                Outcome::Ok { id, created } => {
                    let mut v = json!({"id": id, "success": true, "errors": []});
                    if let Some(c) = created {
                        v["created"] = Value::Bool(c);
                    }
                    v
                }
                Outcome::Failed { id, errors } => {
                    let mut v = json!({"success": false, "errors": errors.iter().map(ErrItem::collection_json).collect::<Vec<_>>()});
                    if let Some(id) = id {
                        v["id"] = Value::String(id);
                    }
                    v
                }
            })
            .collect(),
    )
}

fn type_of(r: &Map<String, Value>) -> Option<String> {
    r.get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn invalid_type() -> Vec<ErrItem> {
    vec![ErrItem::new(
        "INVALID_TYPE",
        "Must send a concrete entity type.",
        Vec::new(),
    )]
}

async fn create(
    AxState(sim): AxState<SharedSf>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, SfError> {
    let b = parse_batch(&body)?;
    let mut st = sim.state.lock();
    let out = run(&mut st, b.all_or_none, b.records.len(), |st, i| {
        let r = &b.records[i];
        let Some(o) = type_of(r).and_then(|t| s.object(&sim, &t).ok()) else {
            return Outcome::Failed {
                id: None,
                errors: invalid_type(),
            };
        };
        if r.keys().any(|k| k.eq_ignore_ascii_case("id")) {
            return Outcome::Failed {
                id: None,
                errors: vec![ErrItem::new(
                    "INVALID_FIELD",
                    "cannot specify Id in an insert call",
                    vec!["Id".into()],
                )],
            };
        }
        match sobjects::create(&sim, st, &s.profile, o, r) {
            Ok(id) => Outcome::Ok { id, created: None },
            Err(errors) => Outcome::Failed { id: None, errors },
        }
    });
    Ok(json_response(StatusCode::OK, &out))
}

async fn update(
    AxState(sim): AxState<SharedSf>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, SfError> {
    let b = parse_batch(&body)?;
    let mut st = sim.state.lock();
    let out = run(&mut st, b.all_or_none, b.records.len(), |st, i| {
        let r = &b.records[i];
        let id = r
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("id"))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_string);
        let Some(o) = type_of(r).and_then(|t| s.object(&sim, &t).ok()) else {
            return Outcome::Failed {
                id,
                errors: invalid_type(),
            };
        };
        let Some(rid) = id.clone() else {
            return Outcome::Failed {
                id: None,
                errors: vec![ErrItem::new(
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    Vec::new(),
                )],
            };
        };
        match sobjects::update(&sim, st, &s.profile, o, &rid, r) {
            Ok(()) => Outcome::Ok {
                id: rid,
                created: None,
            },
            Err(errors) => Outcome::Failed { id, errors },
        }
    });
    Ok(json_response(StatusCode::OK, &out))
}

async fn upsert(
    AxState(sim): AxState<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj, field)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, SfError> {
    if s.major < 46 {
        return Err(SfError::not_found());
    }
    let o = s.object(&sim, &obj)?;
    let key = o
        .field(&field)
        .filter(|fd| fd.external_id && super::describe::readable(&s.profile, o, fd))
        .ok_or_else(|| {
            SfError::bad(
                "INVALID_FIELD",
                format!("Field {field} is not an External ID field for {}", o.name),
            )
        })?;
    let b = parse_batch(&body)?;
    let mut st = sim.state.lock();
    let out = run(&mut st, b.all_or_none, b.records.len(), |st, i| {
        let r = &b.records[i];
        if type_of(r).is_some_and(|t| !t.eq_ignore_ascii_case(o.name)) {
            return Outcome::Failed {
                id: None,
                errors: invalid_type(),
            };
        }
        let Some(value) = r
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key.name))
            .map(|(_, v)| sobjects::value_text(v))
            .filter(|v| !v.is_empty())
        else {
            return Outcome::Failed {
                id: None,
                errors: vec![ErrItem::new(
                    "MISSING_ARGUMENT",
                    format!("{} not specified", key.name),
                    vec![key.name.to_string()],
                )],
            };
        };
        match sobjects::upsert(
            &sim,
            st,
            &s.profile,
            o,
            sobjects::UpsertKey {
                field: key,
                value: &value,
                update_only: false,
            },
            r,
        ) {
            Ok(Upserted::Created(id)) => Outcome::Ok {
                id,
                created: Some(true),
            },
            Ok(Upserted::Updated(id)) => Outcome::Ok {
                id,
                created: Some(false),
            },
            Ok(Upserted::Multiple(ids)) => Outcome::Failed {
                id: None,
                errors: vec![ErrItem::new(
                    "DUPLICATE_EXTERNAL_ID",
                    format!(
                        "{}: more than one record found for external id field: {}",
                        key.name,
                        ids.join(", ")
                    ),
                    vec![key.name.to_string()],
                )],
            },
            Err(errors) => Outcome::Failed { id: None, errors },
        }
    });
    Ok(json_response(StatusCode::OK, &out))
}

fn query_params(q: &Option<String>) -> Map<String, Value> {
    url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

fn id_list(p: &Map<String, Value>) -> Result<Vec<String>, SfError> {
    let ids: Vec<String> = p
        .get("ids")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() {
        return Err(SfError::bad("MISSING_ARGUMENT", "ids is required"));
    }
    if ids.len() > MAX_RECORDS {
        return Err(SfError::bad(
            "EXCEEDED_ID_LIMIT",
            format!(
                "record limit reached. cannot submit more than {MAX_RECORDS} records into this call"
            ),
        ));
    }
    Ok(ids)
}

async fn delete(
    AxState(sim): AxState<SharedSf>,
    Extension(s): Extension<Session>,
    RawQuery(q): RawQuery,
) -> Result<Response, SfError> {
    let p = query_params(&q);
    let ids = id_list(&p)?;
    let all_or_none = p.get("allOrNone").and_then(Value::as_str) == Some("true");
    let mut st = sim.state.lock();
    let out = run(&mut st, all_or_none, ids.len(), |st, i| {
        let id = ids[i].clone();
        let Some(o) = sim
            .object_by_prefix(&id)
            .filter(|o| s.profile.object(o.name).read)
        else {
            return Outcome::Failed {
                id: Some(id),
                errors: vec![ErrItem::new("MALFORMED_ID", "malformed id", Vec::new())],
            };
        };
        match sobjects::delete(st, &s.profile, o, &id) {
            Ok(()) => Outcome::Ok { id, created: None },
            Err(errors) => Outcome::Failed {
                id: Some(id),
                errors,
            },
        }
    });
    Ok(json_response(StatusCode::OK, &out))
}

async fn read(
    AxState(sim): AxState<SharedSf>,
    Extension(s): Extension<Session>,
    Path((_, obj)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, SfError> {
    let o = s.object(&sim, &obj)?;
    let p = query_params(&q);
    let ids = id_list(&p)?;
    let fields: Option<Vec<String>> = p
        .get("fields")
        .and_then(Value::as_str)
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect());
    let st = sim.state.lock();
    let out: Vec<Value> = ids
        .iter()
        .map(
            |id| match sobjects::find(&st, o.name, id).filter(|r| !r.deleted) {
                Some(r) => sobjects::record_json(&s.profile, o, r, fields.as_deref(), &s.version),
                None => Value::Null,
            },
        )
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}
