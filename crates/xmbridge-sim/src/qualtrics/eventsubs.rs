//! (to be written)
use super::SharedSim;
use axum::Router;

pub fn routes() -> Router<SharedSim> {
    Router::new()
}
#[derive(Debug, Default)]
pub struct EventSubState;

/// Called when a response is completed through the API: POSTs `Topic`/`MSG`/`HMAC` to every
/// subscription whose topic matches `surveyengine.completedResponse.{survey_id}` (in the
/// background; never blocks the caller).
pub fn publish_completed_response(
    _sim: &SharedSim,
    _survey_id: &str,
    _response_id: &str,
    _completed_ms: i64,
) {
}
