//! The simulator's survey editor and response generator (admin routes under `/_sim`), so tests
//! can change an account the way a survey author would while a sync is in use: add a question,
//! declare an embedded data field, generate new responses from the current definition, and make
//! distributions report a new `stats` field. Every survey edit bumps the survey's
//! `lastModified`. Seeded responses keep the definition they were seeded with (a question added
//! later is not in them); generated and API-created responses see the current one. It owns only
//! these edits; definitions live in `survey`, responses in `responses`.

use super::SharedSim;
use super::admin::AdminError;
use super::survey::{EmbeddedField, QuestionKind};
use crate::clock::iso_millis;
use crate::rng::Rng;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

pub(crate) fn admin_routes() -> Router<SharedSim> {
    Router::new()
        .route("/_sim/surveys/{sid}/questions", post(add_question))
        .route("/_sim/surveys/{sid}/embedded-data", post(add_embedded))
        .route("/_sim/surveys/{sid}/responses", post(generate))
        .route("/_sim/distributions/stats-fields", post(add_stats_field))
}

/// Question kinds by the name the admin call takes.
pub const KINDS: [(&str, QuestionKind); 9] = [
    ("mc_single", QuestionKind::McSingle),
    ("mc_multi", QuestionKind::McMulti),
    ("matrix", QuestionKind::MatrixLikert),
    ("text", QuestionKind::TextSingle),
    ("form", QuestionKind::TextForm),
    ("slider", QuestionKind::Slider),
    ("nps", QuestionKind::Nps),
    ("rank_order", QuestionKind::RankOrder),
    ("side_by_side", QuestionKind::SideBySide),
];

fn reply(v: Value) -> Result<Response, AdminError> {
    let mut resp = (StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, AdminError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return Err(AdminError::bad("body must be a JSON object"));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(AdminError::bad(format!(
            "unknown field '{k}' (expected one of: {})",
            allowed.join(", ")
        )));
    }
    Ok(m)
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, AdminError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(AdminError::bad(format!(
            "'{key}' must be a non-empty string"
        ))),
    }
}

fn edit_error(e: String) -> AdminError {
    if e.starts_with("no survey") {
        AdminError::not_found(e)
    } else {
        AdminError::bad(e)
    }
}

/// `{"kind": "mc_single", "export_tag": "Q99", "text": "…"}` → a new live question in the main
/// block, answered by responses generated or created from now on.
async fn add_question(
    State(sim): State<SharedSim>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let m = object(&body, &["kind", "export_tag", "text"])?;
    let kind_name = opt_string(&m, "kind")?.unwrap_or_else(|| "mc_single".into());
    let kind = KINDS
        .iter()
        .find(|(n, _)| *n == kind_name)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            let names: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
            AdminError::bad(format!(
                "unknown kind '{kind_name}' (expected one of: {})",
                names.join(", ")
            ))
        })?;
    let tag = opt_string(&m, "export_tag")?;
    let text = opt_string(&m, "text")?;
    let now = sim.clock.now_ms();
    let (survey, qid) = sim
        .edit_survey(&sid, |s| {
            let num = s
                .questions
                .iter()
                .filter_map(|q| q.qid.strip_prefix("QID")?.parse::<u32>().ok())
                .max()
                .unwrap_or(0)
                + 1;
            let block = s
                .blocks
                .iter()
                .find(|b| b.kind == "Standard" && b.loop_items.is_empty())
                .map(|b| b.id.clone())
                .ok_or("the survey has no standard block")?;
            let mut r = Rng::derive(s.seed, &[0xED17, u64::from(num)]);
            let mut q = super::survey::question(num, kind, &mut r, &block);
            if let Some(tag) = &tag {
                if s.questions.iter().any(|x| &x.tag == tag) {
                    return Err(format!("export tag '{tag}' is already used"));
                }
                q.tag = tag.clone();
            }
            if let Some(text) = &text {
                q.text = text.clone();
            }
            let qid = q.qid.clone();
            // Before the loop & merge and trashed questions, so the survey reads in order.
            let at = s
                .questions
                .iter()
                .position(|x| x.in_loop || x.trashed)
                .unwrap_or(s.questions.len());
            s.questions.insert(at, q);
            if let Some(b) = s.blocks.iter_mut().find(|b| b.id == block) {
                b.question_ids.push(qid.clone());
            }
            s.last_modified_ms = s.last_modified_ms.max(now);
            Ok(qid)
        })
        .map_err(edit_error)?;
    let q = survey.question(&qid);
    reply(json!({
        "survey_id": survey.id,
        "qid": qid,
        "export_tag": q.map(|q| q.tag.clone()),
        "kind": kind_name,
        "last_modified": iso_millis(survey.last_modified_ms),
    }))
}

/// `{"name": "…", "values": ["a", "b"]}` → a new embedded data field in the survey flow; new
/// responses carry it (a value drawn from `values`, or `A-nnnnn` without values).
async fn add_embedded(
    State(sim): State<SharedSim>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let m = object(&body, &["name", "values", "default_value"])?;
    let name = opt_string(&m, "name")?.ok_or_else(|| AdminError::bad("'name' is required"))?;
    let values: Vec<String> = match m.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| AdminError::bad("'values' must be a list of strings"))?,
        Some(_) => return Err(AdminError::bad("'values' must be a list of strings")),
    };
    let default_value = opt_string(&m, "default_value")?.unwrap_or_default();
    let now = sim.clock.now_ms();
    let (survey, ()) = sim
        .edit_survey(&sid, |s| {
            if s.embedded.iter().any(|f| f.name == name) {
                return Err(format!("embedded data field '{name}' already exists"));
            }
            s.embedded.push(EmbeddedField {
                name: name.clone(),
                default_value,
                values,
            });
            s.last_modified_ms = s.last_modified_ms.max(now);
            Ok(())
        })
        .map_err(edit_error)?;
    reply(json!({
        "survey_id": survey.id,
        "name": name,
        "last_modified": iso_millis(survey.last_modified_ms),
    }))
}

/// `{"count": n}` (default 1, at most 100000) → n new finished responses generated from the
/// survey's current definition, recorded now.
async fn generate(
    State(sim): State<SharedSim>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let m = object(&body, &["count"])?;
    let count = match m.get("count") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| AdminError::bad("'count' must be a whole number 1–100000"))?,
    };
    let survey = sim
        .survey(&sid)
        .map_err(|_| AdminError::not_found(format!("no survey '{sid}'")))?;
    let ids: Vec<String> = (0..count)
        .map(|_| super::responses::generate_response(&sim, &survey))
        .collect();
    reply(json!({"survey_id": sid, "response_ids": ids}))
}

/// `{"name": "clicked"}` → every distribution's `stats` object gains this field from now on
/// (its value: how many of the distribution's recipients opened or started the survey).
async fn add_stats_field(
    State(sim): State<SharedSim>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let m = object(&body, &["name"])?;
    let name = opt_string(&m, "name")?.ok_or_else(|| AdminError::bad("'name' is required"))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(AdminError::bad(
            "'name' must be ASCII letters, digits and underscores (Qualtrics field style)",
        ));
    }
    let fields = sim.distributions.add_stats_field(&name);
    reply(json!({"extra_stats_fields": fields}))
}
