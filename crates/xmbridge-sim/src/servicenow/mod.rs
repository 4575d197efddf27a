//! The simulated ServiceNow instance: OAuth (`/oauth_token.do`), Basic auth, the Table API
//! (`/api/now/table/{table}`, v1/v2/unversioned), aggregate stats, the Import Set API with a
//! synchronous transform, per-role ACLs, per-user hourly rate-limit rules, faults and a
//! business-rule webhook trigger (see `docs/simulator/servicenow.md` for every choice the
//! contract left open).
//!
//! It owns the instance's records (seeded, deterministic), credentials and switches; it must not
//! depend on xmbridge's ServiceNow client, so it stays an independent referee of the contract
//! (docs/design/salesforce-servicenow-api.md §3 ServiceNow and §5 Simulator switches). [`router`]
//! turns one [`SnSim`] into an axum router; `crate::server::start_servicenow` serves it on
//! loopback.

pub mod acl;
pub mod admin;
pub mod envelope;
pub mod import;
pub mod oauth;
pub mod query;
pub mod ratelimit;
pub mod rules;
pub mod schema;
pub mod seed;
pub mod table;

use crate::clock::SimClock;
use crate::rng::Rng;
use axum::Router;
use axum::routing::{get, post};
use envelope::SnError;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// One record: field name → value. Every stored value is a string (references hold the sys_id).
pub type Record = Map<String, Value>;

pub(crate) type SharedSn = Arc<SnSim>;

/// Everything that shapes a simulated instance. Same settings → same instance, byte for byte.
#[derive(Clone, Debug)]
pub struct SnConfig {
    /// Seed of everything generated (sys_ids, users, incidents); the same seed gives the same instance.
    pub seed: u64,
    /// The instance name (`acme` in `acme.service-now.com`); shown in `instance_name`.
    pub instance: String,
    /// Generated end users (callers) in `sys_user`, besides the fixed accounts.
    pub users: usize,
    /// Rows in `customer_contact`.
    pub contacts: usize,
    /// Rows in `incident`.
    pub incidents: usize,
    /// Value of `sn_qualtrics_spoke.qualtrics_directory` (default: derived from the seed).
    pub qualtrics_directory: Option<String>,
    /// Access-token lifetime (ServiceNow's default: 1800 s).
    pub access_ttl_secs: u64,
    /// Refresh-token lifetime (ServiceNow's default: 8 640 000 s = 100 days).
    pub refresh_ttl_secs: u64,
    /// Simulated time at start (Unix ms).
    pub start_ms: i64,
}

impl Default for SnConfig {
    fn default() -> Self {
        SnConfig {
            seed: 7,
            instance: "dev-xmbridge".into(),
            users: 20,
            contacts: 25,
            incidents: 30,
            qualtrics_directory: None,
            access_ttl_secs: 1800,
            refresh_ttl_secs: 8_640_000,
            start_ms: 1_793_491_200_000,
        }
    }
}

impl SnConfig {
    /// The default Qualtrics directory id held in `sn_qualtrics_spoke.qualtrics_directory`.
    pub fn directory_id(&self) -> String {
        self.qualtrics_directory.clone().unwrap_or_else(|| {
            let mut r = Rng::derive(self.seed, &[0x5E_D1]);
            format!("POOL_{}", r.alnum(15))
        })
    }
}

/// A simulated instance and all its mutable state.
pub struct SnSim {
    /// The settings the instance was started with.
    pub cfg: SnConfig,
    /// The instance's simulated clock.
    pub clock: SimClock,
    /// Everything mutable, behind one lock.
    pub db: Mutex<Db>,
    /// `http://127.0.0.1:PORT`, set once the server is bound (used in `Link`, `Location` and
    /// reference links).
    pub base_url: OnceLock<String>,
    pub(crate) http: reqwest::Client,
}

/// Everything mutable, behind one lock: requests are short and the data is small.
pub struct Db {
    /// Rows by table name.
    pub tables: BTreeMap<String, Vec<Record>>,
    /// Who can authenticate: users and OAuth clients.
    pub creds: oauth::Credentials,
    /// Issued OAuth tokens.
    pub tokens: oauth::TokenStore,
    /// Table- and row-level ACLs.
    pub acl: acl::AclState,
    /// Rate-limit rules and their hourly counts.
    pub limits: ratelimit::RateLimits,
    /// The fault switches set through `/_sim`.
    pub faults: admin::Faults,
    /// Business rules and the outbound calls they made.
    pub rules: rules::RuleState,
    pub(crate) imports: import::ImportState,
    /// Counter behind generated ids (sys_id, tokens, numbers).
    pub id_counter: u64,
    pub(crate) next_incident: u64,
}

impl SnSim {
    pub(crate) fn new(cfg: SnConfig) -> SnSim {
        let db = seed::seed(&cfg);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        SnSim {
            clock: SimClock::new(cfg.start_ms),
            cfg,
            db: Mutex::new(db),
            base_url: OnceLock::new(),
            http,
        }
    }

    /// The instance's base URL, `http://127.0.0.1:PORT`; empty until the server is bound.
    pub fn base(&self) -> String {
        self.base_url
            .get()
            .cloned()
            .unwrap_or_else(|| format!("https://{}.service-now.com", self.cfg.instance))
    }

    /// Simulated now, as ServiceNow writes dates (`YYYY-MM-DD HH:MM:SS`, UTC).
    pub fn now_sql(&self) -> String {
        crate::clock::sql(self.clock.now_ms())
    }
}

impl Db {
    /// A fresh 32-hex id, deterministic in the seed and the number of ids handed out so far.
    pub fn new_id(&mut self, seed: u64) -> String {
        self.id_counter += 1;
        Rng::derive(seed, &[0x5_1D, self.id_counter]).hex(32)
    }

    /// The value of system property `name` (a `sys_properties` row); `None` if not set.
    pub fn property(&self, name: &str) -> Option<String> {
        self.tables.get("sys_properties").and_then(|rows| {
            rows.iter()
                .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|r| r.get("value").and_then(Value::as_str).map(str::to_string))
        })
    }

    pub(crate) fn property_true(&self, name: &str) -> bool {
        self.property(name).as_deref() == Some("true")
    }
}

/// The instance's routes: OAuth, the REST APIs (authenticated, rate limited, faulted) and `/_sim`.
pub fn router(sim: SharedSn) -> Router {
    let api = Router::new()
        .route(
            "/api/now/table/{table}",
            get(table::list).post(table::create),
        )
        .route(
            "/api/now/{version}/table/{table}",
            get(table::list_v).post(table::create_v),
        )
        .route(
            "/api/now/table/{table}/{sys_id}",
            get(table::get_one)
                .patch(table::update)
                .put(table::replace)
                .delete(table::delete),
        )
        .route(
            "/api/now/{version}/table/{table}/{sys_id}",
            get(table::get_one_v)
                .patch(table::update_v)
                .put(table::replace_v)
                .delete(table::delete_v),
        )
        .route("/api/now/stats/{table}", get(table::stats))
        .route("/api/now/import/{staging}", post(import::insert))
        .route("/api/now/import/{staging}/{sys_id}", get(import::get_row))
        .fallback(|| async {
            SnError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "Requested URI does not represent any resource",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            envelope::gate,
        ));
    Router::new()
        .route("/oauth_token.do", post(oauth::token))
        .merge(admin::router())
        .merge(api)
        .with_state(sim)
}
