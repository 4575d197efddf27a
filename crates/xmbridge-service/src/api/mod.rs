//! The HTTP API under `/api/v1`: JSON in and out, one error shape
//! (`{"error": {"code", "message", "fix"}}`), a session cookie with a CSRF token or a bearer API
//! token on every route but sign-in, the role rules of the service, and an OpenAPI 3 document
//! at `/api/v1/openapi.json`.
//!
//! One table ([`routes`]) lists every route with its method, path, summary, what it needs
//! (public, any signed-in user, an admin) and its request and response schemas; [`router`]
//! builds the axum router from it and [`openapi::document`] the OpenAPI document, so every
//! route is described by construction. Each area's handlers are in their own file: `auth`
//! (session, me, the guard), `users` (users, tokens, audit), `connections` (connections, their
//! test, schedule and syncs), `workflows`, `accounts`.

use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::Value;
use xmbridge_actions::Registry;
use xmbridge_workflows::accounts::Accounts;
use xmbridge_workflows::catalog::Sources;

mod accounts;
pub mod auth;
mod cluster;
mod connections;
pub mod error;
pub mod openapi;
mod schema;
mod users;
mod workflows;

pub use crate::serve::AppState;
use crate::users::AuditEntry;

/// What a route needs from its caller.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Nothing (only `POST /api/v1/session`).
    Public,
    /// Any signed-in user (session or token); finer rules are checked by the handler.
    Signed,
    /// An admin; otherwise 403 naming `rule`.
    Admin {
        /// What only an admin may do ("create connections").
        what: &'static str,
        /// The rule that refuses others ("connections are managed by admins").
        rule: &'static str,
    },
}

/// One route of the API: what the router serves and the OpenAPI document describes.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{param}` segments (the same syntax in axum and OpenAPI).
    pub path: &'static str,
    /// One line for the document.
    pub summary: &'static str,
    /// What it needs from its caller.
    pub need: Need,
    /// The request body's JSON schema, when it takes one.
    pub request: Option<Value>,
    /// The success status.
    pub status: u16,
    /// The success answer's JSON schema (`None`: no body).
    pub response: Option<Value>,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    handler: MethodRouter<Arc<Api>>,
}

/// The API's state: the service's state plus what only the API keeps (the login limiter, the
/// account rules, where workflows are read from).
pub(crate) struct Api {
    pub(crate) app: AppState,
    pub(crate) limiter: auth::LoginLimiter,
    pub(crate) accounts: Accounts,
    pub(crate) sources: Sources,
    pub(crate) registry: Registry,
    /// Browser authorizations started and not yet called back, by their `state`.
    pub(crate) authorizations: connections::Pending,
}

impl Api {
    /// Writes an audit entry; a failure is logged, not answered, since the change it records
    /// already happened.
    pub(crate) fn audit(&self, entry: AuditEntry) {
        let action = entry.action.clone();
        if let Err(e) = self.app.users.record(entry) {
            tracing::error!(error = %e, action, "api: cannot write the audit entry");
        }
    }
}

fn method_filter(m: &Method) -> MethodFilter {
    match *m {
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::PATCH => MethodFilter::PATCH,
        Method::DELETE => MethodFilter::DELETE,
        _ => MethodFilter::GET,
    }
}

/// A route in the table.
#[allow(clippy::too_many_arguments)]
fn route<H, T>(
    method: Method,
    path: &'static str,
    summary: &'static str,
    need: Need,
    request: Option<Value>,
    status: u16,
    response: Option<Value>,
    handler: H,
) -> Route
where
    H: axum::handler::Handler<T, Arc<Api>>,
    T: 'static,
{
    let handler = on(method_filter(&method), handler);
    Route {
        method,
        path,
        summary,
        need,
        request,
        status,
        response,
        query: &[],
        handler,
    }
}

impl Route {
    fn with_query(mut self, query: &'static [(&'static str, &'static str)]) -> Route {
        self.query = query;
        self
    }
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    let mut all = Vec::new();
    all.extend(users::routes());
    all.extend(connections::routes());
    all.extend(workflows::routes());
    all.extend(accounts::routes());
    all.extend(cluster::routes());
    all.push(route(
        Method::GET,
        "/api/v1/openapi.json",
        "This document: the OpenAPI 3 description of every route",
        Need::Signed,
        None,
        200,
        Some(schema::any_object()),
        openapi::serve,
    ));
    all
}

/// The API's router over the service's state: every route of [`routes`], each behind the guard
/// (origin rule, authentication, CSRF, role). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so the login limits and the audit log
/// know the client's address.
pub fn router(state: AppState) -> Router {
    router_with_limits(state, auth::LoginLimiter::default())
}

/// [`router`] with its login limits given (tests use small ones).
pub fn router_with_limits(state: AppState, limiter: auth::LoginLimiter) -> Router {
    let registry = xmbridge_runtime::workflow::registry();
    let sources = Sources::standard(None, Some(state.home.root()));
    let store: Arc<dyn xmbridge_workflows::store::Store> = state.store.clone();
    let accounts = Accounts::new(store, state.vault.clone());
    router_with(Api {
        app: state,
        limiter,
        accounts,
        sources,
        registry,
        authorizations: connections::Pending::default(),
    })
}

fn router_with(api: Api) -> Router {
    let api = Arc::new(api);
    // One method router per path, so a method the path does not take gets one 405 in the
    // error shape (axum's own has no body).
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<Arc<Api>>> =
        std::collections::BTreeMap::new();
    for route in routes() {
        let guarded = route.handler.layer(axum::middleware::from_fn_with_state(
            (api.clone(), route.need),
            auth::guard,
        ));
        let merged = match by_path.remove(route.path) {
            Some(other) => other.merge(guarded),
            None => guarded,
        };
        by_path.insert(route.path, merged);
    }
    let mut r: Router<Arc<Api>> = Router::new();
    for (path, methods) in by_path {
        r = r.route(path, methods.fallback(method_not_allowed));
    }
    // Not a fallback: the serving process merges this router with the UI's, and two routers
    // with fallbacks cannot merge.
    r.route("/api/v1/{*rest}", axum::routing::any(not_found))
        .with_state(api)
}

async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::not_found(
        format!("no API route {}", uri.path()),
        Some("see /api/v1/openapi.json for the routes".into()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
        Some("see /api/v1/openapi.json for the methods each route takes".into()),
    )
}
