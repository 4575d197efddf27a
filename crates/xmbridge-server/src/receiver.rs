//! The webhook receiver: one route per trigger kind, keyed by workflow name. A handler checks the
//! call (HMAC, organization, shared secret), turns it into outbox events and answers only after
//! they are committed; a duplicate is acknowledged like a new one. It does not deliver anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use xmbridge_vault::{ExposeSecret, SecretString};
use xmbridge_workflows::event::{self, EventError, QualtricsInbound, SALESFORCE_ACK, soap_fault};
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{Enqueued, NewEvent};

/// The header a ServiceNow business rule sends the workflow's shared secret in.
pub const SERVICENOW_SECRET_HEADER: &str = "x-xmbridge-secret";

/// What the receiver knows about one workflow's trigger.
pub enum Hook {
    /// `surveyengine.completedResponse.{survey_id}`, signed with `shared_key`.
    Qualtrics {
        survey_id: String,
        shared_key: SecretString,
    },
    /// Outbound messages from the linked organization (checked when known).
    Salesforce { org_id: Option<String> },
    /// Records of `table`, with `secret` in the [`SERVICENOW_SECRET_HEADER`] header.
    ServiceNow { table: String, secret: SecretString },
}

/// Hooks by workflow name.
pub type Hooks = HashMap<String, Hook>;

#[derive(Clone)]
struct App {
    outbox: Outbox,
    hooks: Arc<Hooks>,
}

/// The receiver's routes.
pub fn router(outbox: Outbox, hooks: Hooks) -> Router {
    let app = App {
        outbox,
        hooks: Arc::new(hooks),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/hooks/qualtrics/{workflow}", post(qualtrics))
        .route("/hooks/salesforce/{workflow}", post(salesforce))
        .route("/hooks/servicenow/{workflow}", post(servicenow))
        .with_state(app)
}

/// Errors starting the receiver.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the receiver may only listen on a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// A bound receiver (bound first, so the URL is known before hooks are registered).
pub struct Receiver {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
}

impl Receiver {
    /// Binds `listen` (loopback only; port 0 picks one).
    pub async fn bind(listen: SocketAddr) -> Result<Receiver, ServeError> {
        if !listen.ip().is_loopback() {
            return Err(ServeError::NotLoopback(listen));
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Bind(listen, e))?;
        Ok(Receiver { addr, listener })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `app` until `shutdown` resolves.
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn store_events(outbox: &Outbox, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, String> {
    let outbox = outbox.clone();
    // SQLite commits block: keep them off the async workers.
    tokio::task::spawn_blocking(move || outbox.enqueue_all(&events))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

async fn qualtrics(
    State(app): State<App>,
    Path(workflow): Path<String>,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    let Some(Hook::Qualtrics {
        survey_id,
        shared_key,
    }) = app.hooks.get(&workflow)
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no Qualtrics-triggered workflow named {workflow}"),
        );
    };
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
    match event::qualtrics_event(
        &workflow,
        survey_id,
        shared_key.expose_secret(),
        get("Topic"),
        get("MSG"),
        get("HMAC"),
    ) {
        Ok(QualtricsInbound::Event(ev)) => match store_events(&app.outbox, vec![ev]).await {
            Ok(r) => text(StatusCode::OK, format!("stored {}", r[0].id())),
            Err(e) => {
                tracing::error!(workflow = %workflow, error = %e, "could not store a Qualtrics event");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the event could not be stored; retry",
                )
            }
        },
        Ok(QualtricsInbound::Ignored(why)) => {
            tracing::info!(workflow = %workflow, reason = %why, "Qualtrics event ignored");
            text(StatusCode::OK, "ignored")
        }
        Err(EventError::BadSignature) => {
            tracing::warn!(workflow = %workflow, "Qualtrics event with a bad HMAC refused");
            text(
                StatusCode::UNAUTHORIZED,
                EventError::BadSignature.to_string(),
            )
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn soap(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn salesforce(State(app): State<App>, Path(workflow): Path<String>, body: Bytes) -> Response {
    let Some(Hook::Salesforce { org_id }) = app.hooks.get(&workflow) else {
        return soap(
            StatusCode::INTERNAL_SERVER_ERROR,
            soap_fault(&format!(
                "no Salesforce-triggered workflow named {workflow}"
            )),
        );
    };
    let body = String::from_utf8_lossy(&body);
    let msg = match event::salesforce_outbound(&workflow, &body, org_id.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(workflow = %workflow, error = %e, "outbound message refused");
            return soap(
                StatusCode::INTERNAL_SERVER_ERROR,
                soap_fault(&e.to_string()),
            );
        }
    };
    match store_events(&app.outbox, msg.events).await {
        Ok(_) => soap(StatusCode::OK, SALESFORCE_ACK.to_string()),
        Err(e) => {
            tracing::error!(workflow = %workflow, error = %e, "could not store an outbound message");
            soap(
                StatusCode::INTERNAL_SERVER_ERROR,
                soap_fault("the message could not be stored; retry"),
            )
        }
    }
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
}

async fn servicenow(
    State(app): State<App>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let err = |status: StatusCode, message: String| {
        (
            status,
            axum::Json(json!({"error": {"message": message}, "status": "failure"})),
        )
            .into_response()
    };
    let Some(Hook::ServiceNow { table, secret }) = app.hooks.get(&workflow) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("no ServiceNow-triggered workflow named {workflow}"),
        );
    };
    let given = headers
        .get(SERVICENOW_SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !constant_time_eq(given, secret.expose_secret().as_bytes()) {
        tracing::warn!(workflow = %workflow, "ServiceNow call with a wrong shared secret refused");
        return err(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong {SERVICENOW_SECRET_HEADER} header"),
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let ev = match event::servicenow_event(&workflow, table, &value) {
        Ok(ev) => ev,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match store_events(&app.outbox, vec![ev]).await {
        Ok(r) => (
            StatusCode::OK,
            axum::Json(json!({"result": {
                "event": r[0].id(),
                "duplicate": matches!(r[0], Enqueued::Duplicate(_)),
            }})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(workflow = %workflow, error = %e, "could not store a ServiceNow event");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be stored; retry".into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"abc", b""));
        assert!(!constant_time_eq(b"abcd", b"abc"));
    }
}
