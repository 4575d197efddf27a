//! The installation's serving processes (`GET /api/v1/cluster`): what `xmbridge cluster
//! status` shows, for any signed-in user (no secrets: ids, hosts, versions, heartbeats and the
//! syncs each runs).

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::schema::{self as s, object};
use super::{Api, Need, Route, route};

fn node_schema() -> Value {
    object(
        &[
            ("id", s::string()),
            ("host", s::string()),
            ("pid", s::integer()),
            ("version", s::string()),
            ("url", s::string()),
            ("state", s::one_of(&["alive", "not_responding", "stopped"])),
            ("started_at", s::time()),
            ("last_heartbeat", s::time()),
            ("heartbeat_age_s", s::number()),
            ("heartbeat_every_s", s::number()),
            ("stopped_at", s::opt_time()),
            (
                "running",
                s::array(object(
                    &[("connection", s::string()), ("run", s::integer())],
                    &["connection", "run"],
                )),
            ),
        ],
        &[
            "id",
            "host",
            "pid",
            "version",
            "state",
            "last_heartbeat",
            "running",
        ],
    )
}

pub(super) fn routes() -> Vec<Route> {
    vec![route(
        Method::GET,
        "/api/v1/cluster",
        "The serving processes of this installation: id, host, version, last heartbeat, state and the syncs each runs; this_node is the one answering",
        Need::Signed,
        None,
        200,
        Some(object(
            &[
                ("this_node", s::string()),
                ("nodes", s::array(node_schema())),
            ],
            &["this_node", "nodes"],
        )),
        cluster,
    )]
}

async fn cluster(State(api): State<Arc<Api>>) -> ApiResult<axum::Json<Value>> {
    let nodes = api.app.nodes.clone();
    let listed = tokio::task::spawn_blocking(move || nodes.list())
        .await
        .map_err(|e| ApiError::internal("reading the nodes", &e))??;
    Ok(axum::Json(
        json!({"this_node": api.app.node_id, "nodes": listed}),
    ))
}
