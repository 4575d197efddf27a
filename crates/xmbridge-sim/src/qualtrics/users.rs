//! (to be written)
use super::SharedSim;
use axum::Router;

pub fn routes() -> Router<SharedSim> {
    Router::new()
}
