//! Workflows: listing them, one with its status, its events by status (everyone); replay,
//! pause and resume (the workflow's owner or an admin), through `xmbridge_runtime::control`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use xmbridge_runtime::control::{self, Replay};
use xmbridge_workflows::catalog::{self, Catalog};
use xmbridge_workflows::store::{EventRow, EventState, Store};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Json, Path, Query};
use super::schema::{self as s, object, wrap};
use super::{Api, Need, Route, route};

const OWNER_RULE: &str = "a workflow is changed only by its owner or an admin";

fn summary_schema() -> Value {
    object(
        &[
            ("name", s::string()),
            ("description", s::opt_string()),
            ("owner", s::string()),
            ("trigger", s::string()),
            ("steps", s::array(s::any_object())),
            ("paused", s::boolean()),
            ("reason", s::opt_string()),
            ("fix", s::opt_string()),
            ("binding_valid", s::boolean()),
            ("counts", s::any_object()),
        ],
        &["name", "owner", "paused", "counts"],
    )
}

fn event_schema() -> Value {
    object(
        &[
            ("id", s::string()),
            (
                "status",
                s::one_of(&["pending", "running", "done", "skipped", "dead"]),
            ),
            ("attempts", s::integer()),
            ("last_error", s::opt_string()),
            ("last_step", s::opt_string()),
            ("fix", s::opt_string()),
            ("source", s::string()),
            ("dedupe_key", s::string()),
            ("created_at", s::time()),
            ("updated_at", s::time()),
            ("next_attempt_at", s::time()),
            ("payload", s::any_object()),
        ],
        &["id", "status", "attempts", "last_error", "fix"],
    )
}

pub(super) fn routes() -> Vec<Route> {
    let state_answer = wrap("workflow", summary_schema());
    vec![
        route(
            Method::GET,
            "/api/v1/workflows",
            "Every workflow with its owner, trigger, pause state and event counts",
            Need::Signed,
            None,
            200,
            Some(wrap("workflows", s::array(summary_schema()))),
            list,
        ),
        route(
            Method::GET,
            "/api/v1/workflows/{name}",
            "One workflow: its definition, status and dead letters",
            Need::Signed,
            None,
            200,
            Some(state_answer.clone()),
            get_one,
        ),
        route(
            Method::GET,
            "/api/v1/workflows/{name}/events",
            "A workflow's events by status, each with its attempts, last error and the fix",
            Need::Signed,
            None,
            200,
            Some(wrap("events", s::array(event_schema()))),
            events,
        )
        .with_query(&[
            (
                "status",
                "pending, running, done, skipped or dead (default dead)",
            ),
            ("limit", "how many (default 100, at most 1000)"),
        ]),
        route(
            Method::POST,
            "/api/v1/workflows/{name}/replay",
            "Puts dead events back in the outbox with fresh attempts: {\"all\": true} or {\"events\": [ids]} (owner or admin)",
            Need::Signed,
            Some(object(
                &[("all", s::boolean()), ("events", s::array(s::string()))],
                &[],
            )),
            200,
            Some(wrap("replayed", s::integer())),
            replay,
        ),
        route(
            Method::POST,
            "/api/v1/workflows/{name}/pause",
            "Pauses a workflow: events keep arriving and wait (owner or admin)",
            Need::Signed,
            Some(object(&[("reason", s::string())], &[])),
            200,
            Some(state_answer.clone()),
            pause,
        ),
        route(
            Method::POST,
            "/api/v1/workflows/{name}/resume",
            "Resumes a workflow; {\"reauthorize\": true} lets its owner re-establish the credential binding a collaborator's edit dropped (owner or admin)",
            Need::Signed,
            Some(object(&[("reauthorize", s::boolean())], &[])),
            200,
            Some(state_answer),
            resume,
        ),
    ]
}

fn load(api: &Api) -> ApiResult<Catalog> {
    catalog::load(&api.sources, &api.registry).map_err(|e| {
        ApiError::invalid(
            format!("the workflow definitions cannot be read: {e}"),
            Some("fix the workflow files named above".into()),
        )
    })
}

fn counts_json(status: &xmbridge_workflows::store::WorkflowStatus) -> Value {
    let mut m = serde_json::Map::new();
    for s in EventState::ALL {
        m.insert(
            s.as_str().to_string(),
            json!(status.counts.get(&s).copied().unwrap_or(0)),
        );
    }
    Value::Object(m)
}

/// A workflow's summary: definition (when the files hold it), run state, counts.
fn summary(api: &Api, catalog: &Catalog, name: &str) -> ApiResult<Value> {
    let entry = catalog.get(name);
    let status = api.app.store.status(name)?;
    if entry.is_none() && status.counts.values().all(|n| *n == 0) {
        return Err(ApiError::not_found(
            format!("no workflow named '{name}'"),
            Some("list them with GET /api/v1/workflows".into()),
        ));
    }
    let state = api.app.store.workflow_state(name)?;
    let (description, owner, trigger, steps, condition, max_attempts, file) = match entry {
        Some(e) => {
            let w = &e.workflow;
            (
                w.description.clone(),
                Some(w.owner.clone()),
                Some(w.trigger.to_string()),
                w.steps
                    .iter()
                    .map(|st| json!({"name": st.name, "action": st.action, "account": st.account}))
                    .collect::<Vec<_>>(),
                w.condition.as_ref().map(|c| c.source().to_string()),
                Some(w.max_attempts),
                Some(e.file.display().to_string()),
            )
        }
        None => (
            None,
            state.creator.clone(),
            None,
            Vec::new(),
            None,
            None,
            None,
        ),
    };
    Ok(json!({
        "name": name,
        "defined": entry.is_some(),
        "description": description,
        "owner": owner,
        "trigger": trigger,
        "condition": condition,
        "steps": steps,
        "max_attempts": max_attempts,
        "file": file,
        "paused": state.paused,
        "reason": state.reason,
        "fix": state.fix,
        "binding_valid": state.binding_valid,
        "creator": state.creator,
        "last_editor": state.last_editor,
        "counts": counts_json(&status),
        "retries": {"failed_attempts": status.failed_attempts, "events": status.retried_events},
    }))
}

async fn list(State(api): State<Arc<Api>>) -> ApiResult<axum::Json<Value>> {
    let catalog = load(&api)?;
    let mut out = Vec::new();
    for name in catalog.names() {
        out.push(summary(&api, &catalog, name)?);
    }
    Ok(axum::Json(json!({"workflows": out})))
}

async fn get_one(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let catalog = load(&api)?;
    Ok(axum::Json(
        json!({"workflow": summary(&api, &catalog, &name)?}),
    ))
}

#[derive(Deserialize)]
struct EventsQuery {
    status: Option<String>,
    limit: Option<usize>,
}

fn ms(t: i64) -> Value {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t)
        .map(|d| json!(d))
        .unwrap_or(Value::Null)
}

fn event_json(name: &str, e: &EventRow) -> Value {
    let fix = match e.state {
        EventState::Dead => Some(format!(
            "fix what the last error names, then replay it: POST /api/v1/workflows/{name}/replay {{\"events\": [\"{}\"]}}",
            e.id
        )),
        EventState::Pending if e.last_error.is_some() => Some(
            "nothing to do yet: it is retried automatically at next_attempt_at; if it keeps failing, fix what the last error names"
                .to_string(),
        ),
        _ => None,
    };
    json!({
        "id": e.id,
        "status": e.state.as_str(),
        "attempts": e.attempts,
        "last_error": e.last_error,
        "last_step": e.last_step,
        "fix": fix,
        "source": e.source.as_str(),
        "dedupe_key": e.dedupe_key,
        "created_at": ms(e.created_at),
        "updated_at": ms(e.updated_at),
        "next_attempt_at": ms(e.next_attempt_at),
        "payload": e.payload,
    })
}

async fn events(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<axum::Json<Value>> {
    let wanted = q.status.as_deref().unwrap_or("dead");
    let state = EventState::ALL
        .into_iter()
        .find(|s| s.as_str() == wanted)
        .ok_or_else(|| {
            ApiError::invalid(
                format!("unknown event status '{wanted}'"),
                Some("use pending, running, done, skipped or dead".into()),
            )
        })?;
    let catalog = load(&api)?;
    summary(&api, &catalog, &name)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = api.app.store.events(&name, state, limit)?;
    let out: Vec<Value> = rows.iter().map(|e| event_json(&name, e)).collect();
    Ok(axum::Json(json!({"events": out})))
}

/// Refuses unless the caller owns workflow `name` (as its definition says) or is an admin.
fn owner_or_admin(
    api: &Api,
    caller: &Caller,
    catalog: &Catalog,
    name: &str,
    what: &str,
) -> ApiResult<()> {
    if caller.is_admin() {
        return Ok(());
    }
    let owner = match catalog.get(name) {
        Some(e) => Some(e.workflow.owner.clone()),
        None => api.app.store.workflow_state(name)?.creator,
    };
    if owner.as_deref() == Some(caller.user.name.as_str()) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        &format!(
            "only the owner of workflow {name} ({}) or an admin may {what} it",
            owner.as_deref().unwrap_or("unknown")
        ),
        OWNER_RULE,
        "ask the workflow's owner or an admin",
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    events: Vec<String>,
}

async fn replay(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<ReplayBody>,
) -> ApiResult<axum::Json<Value>> {
    let catalog = load(&api)?;
    summary(&api, &catalog, &name)?;
    owner_or_admin(&api, &caller, &catalog, &name, "replay")?;
    if body.all != body.events.is_empty() {
        return Err(ApiError::invalid(
            "say what to replay: {\"all\": true} or {\"events\": [\"ev_…\"]}, not both",
            None,
        ));
    }
    control::check_replayable(&name, &api.sources, &api.registry)?;
    let mut n = 0;
    if body.all {
        n = control::replay(&api.app.store, &name, Replay::All)?;
    } else {
        for id in &body.events {
            n += control::replay(&api.app.store, &name, Replay::Event(id))?;
        }
    }
    api.audit(caller.entry(
        "workflow.replay",
        &name,
        json!({"all": body.all, "events": body.events, "replayed": n}),
    ));
    Ok(axum::Json(json!({"replayed": n})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    reason: Option<String>,
}

async fn pause(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<PauseBody>,
) -> ApiResult<axum::Json<Value>> {
    let catalog = load(&api)?;
    summary(&api, &catalog, &name)?;
    owner_or_admin(&api, &caller, &catalog, &name, "pause")?;
    control::pause(
        &api.app.store,
        &name,
        &caller.user.name,
        body.reason.clone(),
    )?;
    api.audit(caller.entry("workflow.pause", &name, json!({"reason": body.reason})));
    Ok(axum::Json(
        json!({"workflow": summary(&api, &catalog, &name)?}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    #[serde(default)]
    reauthorize: bool,
}

async fn resume(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<ResumeBody>,
) -> ApiResult<axum::Json<Value>> {
    let catalog = load(&api)?;
    summary(&api, &catalog, &name)?;
    owner_or_admin(&api, &caller, &catalog, &name, "resume")?;
    if body.reauthorize {
        // Only the owner may re-establish the binding, admin or not: it lends their credentials.
        control::reauthorize(
            &api.app.store,
            &api.sources,
            &api.registry,
            &name,
            &caller.user.name,
        )
        .map_err(|e| {
            ApiError::forbidden(
                &e.to_string(),
                "only a workflow's owner re-authorizes its credential binding",
                "ask the workflow's owner to resume it with reauthorize",
            )
        })?;
    }
    control::resume(&api.app.store, &name, body.reauthorize)?;
    api.audit(caller.entry(
        "workflow.resume",
        &name,
        json!({"reauthorize": body.reauthorize}),
    ));
    Ok(axum::Json(
        json!({"workflow": summary(&api, &catalog, &name)?}),
    ))
}
