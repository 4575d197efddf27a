//! The Import Set API: `POST /api/now/import/{staging}` stores one staging row and runs its
//! transform map synchronously, coalescing on a target field (insert or update), and
//! `GET /api/now/import/{staging}/{sys_id}` returns that row's result again.

use super::acl::Operation;
use super::envelope::{Caller, SnError};
use super::table::{self, to_stored};
use super::{Record, SharedSn, rules, schema};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// A transform map: staging table → target table, coalescing on one target field.
pub struct TransformMap {
    /// The transform map's name.
    pub name: &'static str,
    /// The import set (staging) table rows are posted to.
    pub staging: &'static str,
    /// The table the rows are transformed into.
    pub target: &'static str,
    /// The target field that decides insert or update: a row matching an existing value updates it.
    pub coalesce: &'static str,
    /// staging field → target field.
    pub fields: &'static [(&'static str, &'static str)],
}

pub(crate) const MAPS: &[TransformMap] = &[
    TransformMap {
        name: "Qualtrics Incident",
        staging: "u_qualtrics_incident_import",
        target: "incident",
        coalesce: "correlation_id",
        fields: &[
            ("u_correlation_id", "correlation_id"),
            ("u_short_description", "short_description"),
            ("u_description", "description"),
            ("u_caller_email", "caller_id"),
            ("u_urgency", "urgency"),
            ("u_impact", "impact"),
            ("u_category", "category"),
        ],
    },
    TransformMap {
        name: "Qualtrics Contact",
        staging: "u_qualtrics_contact_import",
        target: "customer_contact",
        coalesce: "email",
        fields: &[
            ("u_email", "email"),
            ("u_first_name", "first_name"),
            ("u_last_name", "last_name"),
            ("u_phone", "phone"),
            ("u_account", "account"),
            ("u_qualtrics_id", "u_qualtrics_id"),
        ],
    },
];

#[derive(Debug, Default)]
pub(crate) struct ImportState {
    sets: u64,
    /// staging row sys_id → the reply it produced.
    results: HashMap<String, Value>,
}

fn insert_impl(
    sim: &SharedSn,
    caller: &Caller,
    staging: &str,
    body: &Bytes,
) -> Result<(Response, Vec<rules::Job>), SnError> {
    let map = MAPS
        .iter()
        .find(|m| m.staging == staging)
        .ok_or_else(|| SnError::invalid_table(staging))?;
    let (Some(st), Some(target)) = (schema::table(map.staging), schema::table(map.target)) else {
        return Err(SnError::invalid_table(staging));
    };
    let input = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(SnError::new(
                StatusCode::BAD_REQUEST,
                "Exception while reading request",
                Some("The payload is not valid JSON object."),
            ));
        }
    };
    let mut db = sim.db.lock();
    if !db.acl.allowed(caller, map.staging, Operation::Create) {
        return Err(SnError::new(
            StatusCode::FORBIDDEN,
            "Operation Failed",
            Some("ACL Exception Insert Failed due to security constraints"),
        ));
    }
    db.imports.sets += 1;
    let set = format!("ISET{:07}", 10_000 + db.imports.sets);
    // Flat strings only: anything nested is stored as its JSON text, as ServiceNow mangles it.
    let staged: Map<String, Value> = input
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(to_stored(v))))
        .collect();
    let staging_row = table::insert_record(sim, &mut db, caller, st, &staged, false)?;
    let staging_id = staging_row
        .get("sys_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut target_input = Map::new();
    for (from, to) in map.fields {
        if let Some(v) = staged.get(*from) {
            target_input.insert(to.to_string(), v.clone());
        }
    }
    let key = target_input
        .get(map.coalesce)
        .map(to_stored)
        .unwrap_or_default();
    let existing = if key.is_empty() {
        None
    } else {
        db.tables.get(map.target).and_then(|rows| {
            rows.iter()
                .find(|r| r.get(map.coalesce).and_then(Value::as_str) == Some(key.as_str()))
                .and_then(|r| r.get("sys_id").and_then(Value::as_str).map(str::to_string))
        })
    };
    // Transforms run as the system: the target's ACLs do not apply, as on ServiceNow.
    let system = Caller {
        user_name: caller.user_name.clone(),
        roles: vec!["admin".into()],
    };
    let outcome: Result<(Option<Record>, Record, &str), SnError> = match &existing {
        Some(id) => table::update_record(sim, &mut db, &system, target, id, &target_input, true)
            .map(|(b, a)| (Some(b), a, "updated")),
        None => table::insert_record(sim, &mut db, &system, target, &target_input, true)
            .map(|a| (None, a, "inserted")),
    };
    let base = sim.base();
    let (entry, jobs) = match outcome {
        Ok((before, after, status)) => {
            let id = after.get("sys_id").and_then(Value::as_str).unwrap_or("");
            let display = after
                .get(target.display)
                .and_then(Value::as_str)
                .unwrap_or("");
            let entry = json!({
                "transform_map": map.name, "table": map.target, "display_name": target.display,
                "display_value": display,
                "record_link": format!("{base}/api/now/table/{}/{id}", map.target),
                "status": status, "sys_id": id,
            });
            (
                entry,
                rules::triggered(sim, &db, target, before.as_ref(), &after),
            )
        }
        Err(e) => (
            json!({
                "transform_map": map.name, "table": map.target, "status": "error",
                "error_message": e.detail.unwrap_or(e.message),
            }),
            Vec::new(),
        ),
    };
    let target_id = entry["sys_id"].as_str().unwrap_or("").to_string();
    if let Some(row) = db
        .table_mut(map.staging)
        .iter_mut()
        .find(|r| r.get("sys_id").and_then(Value::as_str) == Some(staging_id.as_str()))
    {
        row.insert("sys_import_set".into(), Value::String(set.clone()));
        row.insert("sys_import_state".into(), json!("processed"));
        row.insert("sys_target_sys_id".into(), Value::String(target_id));
    }
    let reply = json!({"import_set": set, "staging_table": map.staging, "result": [entry]});
    db.imports.results.insert(staging_id, reply.clone());
    Ok((
        (StatusCode::CREATED, axum::Json(reply)).into_response(),
        jobs,
    ))
}

pub(crate) async fn insert(
    State(sim): State<SharedSn>,
    Path(staging): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    match insert_impl(&sim, &caller, &staging, &body) {
        Ok((resp, jobs)) => {
            rules::dispatch(&sim, jobs).await;
            resp
        }
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn get_row(
    State(sim): State<SharedSn>,
    Path((staging, sys_id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let db = sim.db.lock();
    if !db.acl.allowed(&caller, &staging, Operation::Read) {
        return SnError::no_record().into_response();
    }
    match db.imports.results.get(&sys_id) {
        Some(v) if v["staging_table"] == staging.as_str() => axum::Json(v.clone()).into_response(),
        _ => SnError::no_record().into_response(),
    }
}
