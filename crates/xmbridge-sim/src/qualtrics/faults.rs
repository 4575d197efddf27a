//! (to be written) Fault injection and rate limits.
use super::SharedSim;
use crate::config::SimConfig;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

#[derive(Debug, Default)]
pub struct FaultState;

impl FaultState {
    pub fn new(_cfg: &SimConfig) -> Self {
        Self
    }
}

pub async fn layer(State(_sim): State<SharedSim>, req: Request, next: Next) -> Response {
    next.run(req).await
}

/// Fault switches, settable from the CLI (`--fault key=value`, deserialized from a JSON object)
/// and from `POST /_sim/faults`.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {}

pub fn admin_routes() -> axum::Router<SharedSim> {
    axum::Router::new()
}
