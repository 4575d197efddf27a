//! `/surveys` and `/survey-definitions`.
use super::SharedSim;
use super::auth::Caller;
use super::envelope::{self, ApiResult};
use super::paging;
use crate::clock::iso;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::json;
use std::collections::BTreeMap;

pub fn routes() -> Router<SharedSim> {
    Router::new().route("/surveys", get(list_surveys))
}

async fn list_surveys(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let items: Vec<_> = sim
        .surveys
        .iter()
        .map(|s| {
            json!({"id": s.id, "name": s.name, "ownerId": s.owner_id,
                   "lastModified": iso(s.last_modified_ms), "creationDate": iso(s.creation_ms),
                   "isActive": s.active})
        })
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        "/API/v3/surveys",
        &q,
    )?))
}
