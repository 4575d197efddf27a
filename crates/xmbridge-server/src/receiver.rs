//! The webhook receiver: one route per trigger kind, keyed by workflow name. A handler
//! authenticates the call before it reads anything else (Qualtrics: the HMAC of the message under
//! the subscription's shared key; Salesforce: the workflow's endpoint token in the URL, then the
//! organization when one is known; ServiceNow: the shared secret header), turns it into outbox
//! events and answers only after they are committed; a duplicate is acknowledged like a new one.
//! It does not deliver anything.
//!
//! A refused call learns nothing: an unknown workflow, a wrong token, signature, secret or
//! organization all get the same answer per route (the reason goes to the log). Connections that
//! send their headers or body too slowly are closed ([`Limits`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Form, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use xmbridge_vault::{ExposeSecret, SecretString};
use xmbridge_workflows::event::{self, EventError, QualtricsInbound, SALESFORCE_ACK, soap_fault};
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{Enqueued, NewEvent};
use xmbridge_workflows::worker::Health;

/// The header a ServiceNow business rule sends the workflow's shared secret in.
pub const SERVICENOW_SECRET_HEADER: &str = "x-xmbridge-secret";

/// The query parameter of a Salesforce hook's endpoint URL that carries its token.
pub const SALESFORCE_TOKEN_PARAM: &str = "token";

/// What every refusal says: nothing about what would have passed.
pub const REFUSED: &str = "refused";

/// What the receiver knows about one workflow's trigger.
pub enum Hook {
    /// `surveyengine.completedResponse.{survey_id}`, signed with `shared_key`.
    Qualtrics {
        /// The survey whose completed responses start the workflow (`SV_…`).
        survey_id: String,
        /// The event subscription's shared key, checked against each event's HMAC.
        shared_key: SecretString,
    },
    /// Outbound messages whose endpoint URL carries `token`; from organization `org_id` when one
    /// is known (pinned in the trigger or the owner's linked account).
    Salesforce {
        /// The secret the outbound message's endpoint URL carries in its `token` query parameter.
        token: SecretString,
        /// The org id (`00D…`) the messages must come from; `None` accepts any org.
        org_id: Option<String>,
    },
    /// Records of `table`, with `secret` in the [`SERVICENOW_SECRET_HEADER`] header.
    ServiceNow {
        /// The ServiceNow table whose records start the workflow.
        table: String,
        /// The value the business rule sends in the header.
        secret: SecretString,
    },
}

/// Hooks by workflow name.
pub type Hooks = HashMap<String, Hook>;

/// How long a client may take, and how much it may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// To send a request's headers (also how long an idle keep-alive connection stays open).
    pub header_timeout: Duration,
    /// To send a request's body once the headers are in.
    pub body_timeout: Duration,
    /// The largest body accepted (413 above it).
    pub max_body: usize,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            // Salesforce sends at most 100 notifications per message; 2 MB is far above that.
            max_body: 2 * 1024 * 1024,
            max_connections: 512,
        }
    }
}

#[derive(Clone)]
struct App {
    outbox: Outbox,
    hooks: Arc<Hooks>,
    health: Health,
}

/// The receiver's routes. `/healthz` answers 200 only while every delivery worker in `health`
/// runs, 503 with the reasons otherwise.
pub fn router(outbox: Outbox, hooks: Hooks, health: Health, limits: Limits) -> Router {
    let app = App {
        outbox,
        hooks: Arc::new(hooks),
        health,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/hooks/qualtrics/{workflow}", post(qualtrics))
        .route("/hooks/salesforce/{workflow}", post(salesforce))
        .route("/hooks/servicenow/{workflow}", post(servicenow))
        .layer(middleware::from_fn(move |req, next| {
            read_body_in_time(limits, req, next)
        }))
        .with_state(app)
}

/// Reads the whole body within `limits.body_timeout` (408 after it, 413 above `max_body`), so a
/// client that stops half way cannot hold a connection open.
async fn read_body_in_time(limits: Limits, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        limits.body_timeout,
        axum::body::to_bytes(body, limits.max_body),
    )
    .await;
    match read {
        Err(_) => text(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        ),
        Ok(Err(_)) => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is too large or was cut off",
        ),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

async fn healthz(State(app): State<App>) -> Response {
    match app.health.check() {
        Ok(summary) => text(StatusCode::OK, format!("ok: receiving; {summary}\n")),
        Err(problems) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy:\n{problems}\n"),
        ),
    }
}

/// Errors starting the receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("the receiver may only listen on a loopback address, not {0}")]
    /// The listen address is not loopback (the receiver is for a local tunnel or proxy only).
    NotLoopback(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    /// The address could not be bound (in use, or not permitted).
    Bind(SocketAddr, #[source] std::io::Error),
}

/// How [`Receiver::bind_with`] listens beyond the loopback-only default.
#[derive(Clone, Default)]
pub struct BindOptions {
    /// Accept a listen address that is not loopback (`xmbridge serve --allow-remote`).
    pub allow_remote: bool,
    /// Serve HTTPS with this configuration (the handshake runs in the connection's task, under
    /// the header timeout, so a silent client cannot hold the accept loop).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A bound receiver (bound first, so the URL is known before hooks are registered).
pub struct Receiver {
    /// The address actually bound (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Receiver {
    /// Binds `listen` (loopback only; port 0 picks one).
    pub async fn bind(listen: SocketAddr, limits: Limits) -> Result<Receiver, ServeError> {
        Receiver::bind_with(listen, limits, BindOptions::default()).await
    }

    /// Binds `listen`; a non-loopback address only with [`BindOptions::allow_remote`] (refused
    /// before anything is bound otherwise), HTTPS with [`BindOptions::tls`].
    pub async fn bind_with(
        listen: SocketAddr,
        limits: Limits,
        opts: BindOptions,
    ) -> Result<Receiver, ServeError> {
        if !listen.ip().is_loopback() && !opts.allow_remote {
            return Err(ServeError::NotLoopback(listen));
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Bind(listen, e))?;
        Ok(Receiver {
            addr,
            listener,
            limits,
            tls: opts.tls.map(tokio_rustls::TlsAcceptor::from),
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves `app` until `shutdown` resolves, then lets requests in flight finish (a connection
    /// idle in keep-alive is closed at once).
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                _ = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: wait a little instead of spinning.
                        tracing::warn!(error = %e, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let service = WithPeer {
                app: app.clone(),
                peer,
            };
            let stop = stop_rx.clone();
            let header_timeout = self.limits.header_timeout;
            let tls = self.tls.clone();
            connections.spawn(async move {
                let _slot = slot;
                match tls {
                    None => serve_connection(stream, service, header_timeout, stop).await,
                    Some(acceptor) => {
                        // The handshake counts against the header timeout.
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, service, header_timeout, stop).await
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            });
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
        let _ = stop_tx.send(true);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// The router with the client's address in each request's extensions (axum's
/// `ConnectInfo<SocketAddr>`), for handlers that log or limit by address.
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        tower::Service::call(&mut self.app.clone(), req)
    }
}

/// Serves one connection (plain or TLS) until it ends or `stop` says so, then lets the request
/// in flight finish.
async fn serve_connection<S>(
    stream: S,
    service: WithPeer,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Stores inbound events; the error (the state store's, or a dead blocking task) is logged, and
/// the caller is told to retry.
async fn store_events(
    outbox: &Outbox,
    events: Vec<NewEvent>,
) -> Result<Vec<Enqueued>, Box<dyn std::error::Error + Send + Sync>> {
    let outbox = outbox.clone();
    // SQLite commits block: keep them off the async workers.
    Ok(tokio::task::spawn_blocking(move || outbox.enqueue_all(&events)).await??)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
}

async fn qualtrics(
    State(app): State<App>,
    Path(workflow): Path<String>,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    let refused = || text(StatusCode::UNAUTHORIZED, REFUSED);
    let Some(Hook::Qualtrics {
        survey_id,
        shared_key,
    }) = app.hooks.get(&workflow)
    else {
        tracing::warn!(workflow = %workflow, "Qualtrics call for no Qualtrics-triggered workflow refused");
        return refused();
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
            refused()
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

/// The value of `name` in a URL query string (percent-decoded).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn salesforce(
    State(app): State<App>,
    Path(workflow): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // Salesforce retries a message that was not acknowledged; a SOAP fault with HTTP 500 is
    // the contract's answer for a refused endpoint.
    let refused = || soap(StatusCode::INTERNAL_SERVER_ERROR, soap_fault(REFUSED));
    let Some(Hook::Salesforce { token, org_id }) = app.hooks.get(&workflow) else {
        tracing::warn!(workflow = %workflow, "outbound message for no Salesforce-triggered workflow refused");
        return refused();
    };
    let given = query_param(query.as_deref(), SALESFORCE_TOKEN_PARAM).unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes()) {
        tracing::warn!(workflow = %workflow, "outbound message without the endpoint token refused");
        return refused();
    }
    let body = String::from_utf8_lossy(&body);
    let msg = match event::salesforce_outbound(&workflow, &body, org_id.as_deref()) {
        Ok(m) => m,
        Err(e @ EventError::WrongOrganization { .. }) => {
            tracing::warn!(workflow = %workflow, error = %e, "outbound message refused");
            return refused();
        }
        Err(e) => {
            // The caller holds the token: it may learn what is malformed.
            tracing::warn!(workflow = %workflow, error = %e, "malformed outbound message");
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
    let given = headers
        .get(SERVICENOW_SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let Some(Hook::ServiceNow { table, secret }) = app.hooks.get(&workflow) else {
        tracing::warn!(workflow = %workflow, "ServiceNow call for no ServiceNow-triggered workflow refused");
        return err(StatusCode::UNAUTHORIZED, REFUSED.into());
    };
    if !constant_time_eq(given, secret.expose_secret().as_bytes()) {
        tracing::warn!(workflow = %workflow, "ServiceNow call with a missing or wrong shared secret refused");
        return err(StatusCode::UNAUTHORIZED, REFUSED.into());
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

    #[test]
    fn token_comes_from_the_query() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By"), "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }
}
