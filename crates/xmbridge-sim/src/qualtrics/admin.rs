//! Admin endpoints under `/_sim` that tests and developers call to steer the simulator (clock,
//! credentials, permissions, faults). They sit outside `/API/v3`, need no token and are never
//! subject to injected faults. The simulator is a test tool: these endpoints reveal secrets by design.
use super::SharedSim;
use axum::Router;

pub fn routes() -> Router<SharedSim> {
    Router::new()
        .merge(super::faults::admin_routes())
        .merge(super::tls::admin_routes())
}
