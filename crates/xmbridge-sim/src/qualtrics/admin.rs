//! (to be written) Admin endpoints under /_sim for tests.
use super::SharedSim;
use axum::Router;

pub fn routes() -> Router<SharedSim> {
    Router::new()
}
