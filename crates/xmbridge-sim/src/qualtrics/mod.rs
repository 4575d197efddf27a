//! The simulated Qualtrics REST API v3 (see `docs/simulator.md` for every choice the contract left open).
//!
//! One [`Sim`] is one brand: its users, surveys, responses (generated on demand), XM Directory,
//! distributions, libraries, event subscriptions, OAuth server and fault switches. [`router`]
//! turns it into an axum router; `crate::server` serves it over plain HTTP or mutual TLS.

pub mod account;
pub mod admin;
pub mod auth;
pub mod directory;
pub mod distributions;
pub mod editor;
pub mod envelope;
pub mod eventsubs;
pub mod export;
pub mod faults;
pub mod hosts;
pub mod libraries;
pub mod oauth;
pub mod paging;
pub mod responses;
pub mod survey;
pub mod surveys;
pub mod tls;
pub mod users;

use crate::clock::SimClock;
use crate::config::SimConfig;
use crate::rng::Rng;
use account::User;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use envelope::{ApiError, RequestCtx};
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) type SharedSim = Arc<Sim>;

/// One simulated brand and all its mutable state.
pub struct Sim {
    /// The settings the brand was started with.
    pub cfg: SimConfig,
    /// The brand's simulated clock; all dates the API shows come from it.
    pub clock: SimClock,
    /// The brand's users; index 0 is the brand administrator.
    pub users: RwLock<Vec<User>>,
    /// The surveys as seeded (the definitions seeded responses are generated from).
    pub surveys: Vec<survey::Survey>,
    /// The surveys as they are now: seeded, plus edits through `/_sim/surveys/…` (a new
    /// question or embedded data field). Same order and indices as `surveys`.
    current: RwLock<Vec<Arc<survey::Survey>>>,
    /// Access tokens issued by the OAuth server.
    pub tokens: Mutex<auth::TokenStore>,
    /// The OAuth server: clients, authorization codes and refresh tokens.
    pub oauth: oauth::OAuthState,
    /// Fault switches and their statistics.
    pub faults: faults::FaultState,
    /// Responses created, changed or deleted through the API, over the seeded ones.
    pub responses: responses::ResponseStore,
    /// Response export jobs and their files.
    pub exports: export::ExportStore,
    /// The XM Directory: directories, contacts, mailing lists, transactions.
    pub directory: directory::DirectoryState,
    /// Distributions and their history.
    pub distributions: distributions::DistributionState,
    /// User and group libraries.
    pub libraries: libraries::LibraryState,
    /// Event subscriptions and the deliveries made to them.
    pub eventsubs: eventsubs::EventSubState,
    /// The brand's PKI when mutual TLS is on.
    pub pki: Option<tls::BrandPki>,
    request_counter: AtomicU64,
}

impl Sim {
    /// Seeds a brand from `cfg`; fails only if its mutual-TLS certificates cannot be made.
    pub fn new(cfg: SimConfig) -> Result<Sim, crate::SimError> {
        let clock = SimClock::new(cfg.start_ms);
        let users = account::seed_users(&cfg);
        let surveys = survey::seed_surveys(&cfg, &users);
        let pki = if cfg.mtls {
            Some(tls::BrandPki::generate(&cfg)?)
        } else {
            None
        };
        let directory = directory::DirectoryState::new(&cfg, &users);
        Ok(Sim {
            distributions: distributions::DistributionState::new(
                &cfg, &users, &surveys, &directory,
            ),
            directory,
            oauth: oauth::OAuthState::new(&cfg, &users),
            faults: faults::FaultState::new(&cfg),
            responses: responses::ResponseStore::default(),
            exports: export::ExportStore::default(),
            libraries: libraries::LibraryState::new(&cfg, &users, &surveys),
            eventsubs: eventsubs::EventSubState::default(),
            tokens: Mutex::new(auth::TokenStore::default()),
            users: RwLock::new(users),
            current: RwLock::new(surveys.iter().cloned().map(Arc::new).collect()),
            surveys,
            clock,
            pki,
            cfg,
            request_counter: AtomicU64::new(0),
        })
    }

    /// The data center the brand lives in (canonical id).
    pub fn home_dc(&self) -> String {
        hosts::canonical_dc(&self.cfg.datacenter)
    }

    /// A deterministic uuid-shaped id: the n-th one this simulator hands out.
    pub fn next_uuid(&self, kind: u64) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::SeqCst);
        Rng::derive(self.cfg.seed, &[kind, n]).uuid()
    }

    /// A survey's current definition (with any edits made through `/_sim`).
    pub fn survey(&self, id: &str) -> Result<Arc<survey::Survey>, ApiError> {
        self.current
            .read()
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("Survey '{id}' was not found.")))
    }

    /// The current definition of the survey at `idx`.
    pub fn survey_at(&self, idx: usize) -> Option<Arc<survey::Survey>> {
        self.current.read().get(idx).cloned()
    }

    /// Every survey's current definition, in seeding order.
    pub fn current_surveys(&self) -> Vec<Arc<survey::Survey>> {
        self.current.read().clone()
    }

    /// Replaces a survey's current definition with `edit(definition)` (the simulator's survey
    /// editor). Returns the new definition.
    pub fn edit_survey<T>(
        &self,
        id: &str,
        edit: impl FnOnce(&mut survey::Survey) -> Result<T, String>,
    ) -> Result<(Arc<survey::Survey>, T), String> {
        let mut all = self.current.write();
        let slot = all
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| format!("no survey '{id}'"))?;
        let mut next = survey::Survey::clone(slot);
        let out = edit(&mut next)?;
        *slot = Arc::new(next);
        Ok((slot.clone(), out))
    }
}

/// Sets the request context (request id, base URL, proxy notice) and the requested data center.
async fn request_context(State(sim): State<SharedSim>, mut req: Request, next: Next) -> Response {
    let requested = auth::requested_dc(&req);
    let home = sim.home_dc();
    let notice = match &requested {
        Some(dc) if *dc != home => Some(format!(
            "Request proxied. For faster response times, use this host instead: {home}.qualtrics.com"
        )),
        _ => None,
    };
    let scheme = if sim.cfg.mtls { "https" } else { "http" };
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let ctx = RequestCtx {
        request_id: sim.next_uuid(0x4E0),
        base_url: format!("{scheme}://{host}"),
        notice,
    };
    req.extensions_mut().insert(auth::RequestedDc(requested));
    envelope::with_ctx(ctx, next.run(req)).await
}

async fn whoami(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<auth::Caller>,
) -> Response {
    let u = &caller.user;
    envelope::ok(json!({
        "brandId": sim.cfg.brand_id,
        "userId": u.id,
        "userName": u.username,
        "accountType": u.user_type,
        "firstName": u.first_name,
        "lastName": u.last_name,
        "email": u.email,
        "datacenter": sim.home_dc(),
    }))
}

async fn api_not_found(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("API call does not exist: {method} {}", uri.path())).into_response()
}

/// The whole simulated Qualtrics API as one router.
pub fn router(sim: SharedSim) -> Router {
    let api = Router::new()
        .route("/whoami", get(whoami))
        .merge(surveys::routes())
        .merge(export::routes())
        .merge(responses::routes())
        .merge(directory::routes())
        .merge(distributions::routes())
        .merge(libraries::routes())
        .merge(users::routes())
        .merge(eventsubs::routes())
        .route_layer(middleware::from_fn_with_state(
            sim.clone(),
            auth::require_caller,
        ));
    let faulty = Router::new()
        .nest("/API/v3", api)
        .merge(oauth::routes())
        .layer(middleware::from_fn_with_state(sim.clone(), faults::layer));
    Router::new()
        .merge(faulty)
        .merge(admin::routes())
        .fallback(api_not_found)
        .layer(middleware::from_fn_with_state(sim.clone(), request_context))
        .with_state(sim)
}
