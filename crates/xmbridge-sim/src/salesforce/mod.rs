//! The simulated Salesforce org: OAuth 2.0 (web-server flow with PKCE, refresh with the app's
//! refresh-token policy and rotation, client credentials, revoke) and the REST API under
//! `/services/data/vNN.N/` (describe, CRUD, upsert by external id, SOQL subset with paging,
//! sObject Collections, limits, record types), plus the admin API under `/_sim/*` and outbound
//! messages.
//!
//! It owns one org's users, profiles, records and tokens, all seeded and deterministic. It must
//! not touch the Qualtrics or ServiceNow simulators; `crate::server::start_salesforce` serves it.
//! Choices where the contract is unclear are written in `docs/simulator/salesforce.md`.

pub mod admin;
pub mod collections;
pub mod describe;
pub mod limits;
pub mod oauth;
pub mod outbound;
pub mod profiles;
pub mod query;
pub mod record_types;
pub mod rest;
pub mod sobjects;

use crate::clock::SimClock;
use crate::rng::{Rng, hash_str};
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Settings of one simulated org. Same settings → same org, byte for byte.
#[derive(Clone, Debug)]
pub struct SalesforceConfig {
    /// Seed of everything generated (ids, users, records); the same seed gives the same org.
    pub seed: u64,
    /// Seeded records per standard object (Contacts, Leads, Accounts, Cases, Opportunities).
    pub records_per_object: usize,
    /// Daily API request allowance (`Sforce-Limit-Info: api-usage=N/M`).
    pub api_limit: u64,
    /// Session timeout: an access token unused for this long is dead (INVALID_SESSION_ID).
    pub session_timeout_secs: u64,
    /// Simulated "now" at start, epoch milliseconds.
    pub start_ms: i64,
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        SalesforceConfig {
            seed: 1,
            records_per_object: 5,
            api_limit: 15_000,
            session_timeout_secs: 7_200,
            start_ms: 1_764_500_000_000,
        }
    }
}

pub(crate) type SharedSf = Arc<SfSim>;

/// One simulated org. All mutable state sits behind one lock: the simulator is a referee, not a
/// database, and one lock keeps Collections' all-or-none and the counters trivially consistent.
pub struct SfSim {
    /// The settings the org was started with.
    pub cfg: SalesforceConfig,
    /// The org's simulated clock.
    pub clock: SimClock,
    /// The org id (`00D…`), derived from the seed.
    pub org_id: String,
    /// The objects the org knows, standard and custom.
    pub schema: Vec<describe::ObjectDef>,
    /// Everything that changes while the org runs, behind one lock.
    pub state: Mutex<State>,
    /// The server's own base URL (`instance_url`), set once the listener is bound.
    pub base_url: Mutex<String>,
    /// Outbound messages sent and being retried.
    pub outbound: outbound::OutboundState,
    /// The HTTP client outbound messages are sent with.
    pub http: reqwest::Client,
}

/// Everything that changes while the org runs.
pub struct State {
    /// The org's users.
    pub users: Vec<profiles::SfUser>,
    /// Profiles by name: what each user may see and do.
    pub profiles: BTreeMap<String, profiles::Profile>,
    /// The connected app and the tokens it issued.
    pub oauth: oauth::OAuthState,
    /// Records by object name, in creation order (deleted ones flagged).
    pub records: BTreeMap<String, Vec<sobjects::Record>>,
    /// Counters behind generated ids and auto-numbers, by key prefix or field.
    pub counters: BTreeMap<String, u64>,
    /// The daily API request allowance.
    pub limits: limits::LimitState,
    /// The fault switches set through `/_sim`.
    pub faults: limits::Faults,
    /// Validation rules set through `/_sim`.
    pub rules: Vec<sobjects::ValidationRule>,
    /// Open query cursors by locator (`nextRecordsUrl`).
    pub cursors: BTreeMap<String, query::Cursor>,
    /// The org's custom record types (the Master is implicit).
    pub record_types: Vec<record_types::RecordType>,
    /// The generator behind ids made at run time.
    pub rng: Rng,
}

impl SfSim {
    pub(crate) fn new(cfg: SalesforceConfig) -> SfSim {
        let org_id = make_id("00D", hash_str(&format!("org{}", cfg.seed)) % 1_000_000_000);
        let schema = describe::schema();
        let profiles = profiles::seed_profiles(&schema);
        let users = profiles::seed_users(&cfg);
        let oauth = oauth::OAuthState::new(&cfg);
        let mut state = State {
            users,
            profiles,
            oauth,
            records: BTreeMap::new(),
            counters: BTreeMap::new(),
            limits: limits::LimitState::new(cfg.api_limit, cfg.start_ms),
            faults: limits::Faults::default(),
            rules: Vec::new(),
            cursors: BTreeMap::new(),
            record_types: Vec::new(),
            rng: Rng::derive(cfg.seed, &[0x5f]),
        };
        state.record_types = record_types::seed(&mut state);
        sobjects::seed_records(&cfg, &schema, &mut state, cfg.start_ms);
        SfSim {
            clock: SimClock::new(cfg.start_ms),
            org_id,
            schema,
            state: Mutex::new(state),
            base_url: Mutex::new(String::new()),
            outbound: outbound::OutboundState::default(),
            http: reqwest::Client::new(),
            cfg,
        }
    }

    /// The org's own base URL (`instance_url`); empty until the listener is bound.
    pub fn base_url(&self) -> String {
        self.base_url.lock().clone()
    }

    /// The object called `name` (case-insensitive), if the org has it.
    pub fn object(&self, name: &str) -> Option<&describe::ObjectDef> {
        self.schema
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    pub(crate) fn object_by_prefix(&self, id: &str) -> Option<&describe::ObjectDef> {
        self.schema.iter().find(|o| id.starts_with(o.key_prefix))
    }
}

impl State {
    /// The next 18-character id for an object with this key prefix.
    pub fn next_id(&mut self, prefix: &str) -> String {
        let n = self.counters.entry(prefix.to_string()).or_insert(0);
        *n += 1;
        make_id(prefix, *n)
    }
}

/// An 18-character Salesforce id: key prefix, pod/reserved characters, a counter and the
/// case-safe 3-character suffix computed the way Salesforce does.
pub fn make_id(prefix: &str, n: u64) -> String {
    let body = format!("{prefix}5g{:010}", n % 10_000_000_000);
    let base15: String = body.chars().take(15).collect();
    format!("{base15}{}", id_suffix(&base15))
}

/// The 3-character checksum that makes a 15-character id case-insensitively unique.
pub fn id_suffix(id15: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let bytes = id15.as_bytes();
    (0..3)
        .map(|chunk| {
            let mut bits = 0usize;
            for i in 0..5 {
                if bytes
                    .get(chunk * 5 + i)
                    .is_some_and(|b| b.is_ascii_uppercase())
                {
                    bits |= 1 << i;
                }
            }
            ALPHABET[bits] as char
        })
        .collect()
}

/// True for a well-formed 15- or 18-character id.
pub fn is_id_shaped(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A REST error: the JSON array `[{"message","errorCode","fields"}]` with a status.
#[derive(Debug, Clone)]
pub struct SfError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// The errors in the body; usually one.
    pub errors: Vec<ErrItem>,
    /// Seconds for a `Retry-After` header; `None` sends none.
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
/// One error of a REST answer or of a Collections record.
pub struct ErrItem {
    /// The error code, e.g. `INVALID_FIELD` or `REQUIRED_FIELD_MISSING`.
    pub code: String,
    /// Human-readable text.
    pub message: String,
    /// The fields the error is about; empty for none.
    pub fields: Vec<String>,
}

impl ErrItem {
    pub(crate) fn new(code: &str, message: impl Into<String>, fields: Vec<String>) -> Self {
        ErrItem {
            code: code.to_string(),
            message: message.into(),
            fields,
        }
    }

    /// The REST shape (`errorCode`).
    pub fn rest_json(&self) -> Value {
        let mut v = json!({"message": self.message, "errorCode": self.code});
        if !self.fields.is_empty() {
            v["fields"] = json!(self.fields);
        }
        v
    }

    /// The Collections per-record shape (`statusCode`, `fields` always present).
    pub fn collection_json(&self) -> Value {
        json!({"statusCode": self.code, "message": self.message, "fields": self.fields})
    }
}

impl SfError {
    /// An error with any status and code, about no field.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        SfError {
            status,
            errors: vec![ErrItem::new(code, message, Vec::new())],
            retry_after: None,
        }
    }
    pub(crate) fn with_fields(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        fields: Vec<String>,
    ) -> Self {
        SfError {
            status,
            errors: vec![ErrItem::new(code, message, fields)],
            retry_after: None,
        }
    }
    /// 400 with the given code.
    pub fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 404 `NOT_FOUND`: the resource does not exist or the caller may not see it.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        )
    }
    pub(crate) fn invalid_session() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )
    }
}

impl IntoResponse for SfError {
    fn into_response(self) -> Response {
        let body: Vec<Value> = self.errors.iter().map(ErrItem::rest_json).collect();
        let mut resp = json_response(self.status, &Value::Array(body));
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    resp
}

/// Salesforce's datetime format: `2026-11-30T08:30:00.000+0000`.
pub fn sf_datetime(ms: i64) -> String {
    let iso = crate::clock::iso_millis(ms);
    iso.trim_end_matches('Z').to_string() + "+0000"
}

/// The whole simulator as an axum router.
pub fn router(sim: SharedSf) -> Router {
    Router::new()
        .merge(oauth::routes())
        .merge(rest::routes(sim.clone()))
        .merge(admin::routes())
        .with_state(sim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_18_chars_with_the_case_safe_suffix() {
        let id = make_id("003", 1);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("0035g"));
        // A known pair from Salesforce documentation-style examples: all lowercase/digits → AAA.
        assert_eq!(id_suffix("0035g0000000001"), "AAA");
        assert_eq!(id_suffix("001A0000006Vm9r"), "IAC");
        assert!(is_id_shaped(&id));
        assert!(!is_id_shaped("nope"));
    }
}
