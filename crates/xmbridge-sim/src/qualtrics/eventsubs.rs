//! Event subscriptions (webhooks, docs/design/qualtrics-api.md §11): the brand-admin management API
//! (`/eventsubscriptions`) and delivery of `surveyengine.completedResponse` events as
//! `application/x-www-form-urlencoded` POSTs with `Topic`, `MSG` and (with a shared key) `HMAC`.
//!
//! The simulator only delivers to loopback URLs: it is a test tool and must never become a way to
//! send traffic elsewhere. Deliveries run in background tasks with a timeout and a few retries;
//! every delivery is recorded (bounded) and readable at `GET /_sim/eventsubs/deliveries`. This module
//! owns [`EventSubState`] only.

use super::SharedSim;
use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::users::{opt_str, parse_body, req_str};
use crate::clock::{iso, sql};
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Router};
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use sha2::Sha512;
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const TAG_SUB: u64 = 0xE5B5_0001;
/// Deliveries kept for inspection; older ones are dropped.
const MAX_DELIVERIES: usize = 1000;
const MAX_ATTEMPTS: u32 = 4;
const FIRST_BACKOFF_MS: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
/// An event subscription: where to POST events of which topics.
pub struct Subscription {
    /// The subscription id (`SUB_…`).
    pub id: String,
    /// Comma-separated topics as given at creation, e.g. `surveyengine.completedResponse.SV_…`.
    pub topics: String,
    /// The URL events are POSTed to.
    pub publication_url: String,
    /// The `sharedKey` that signs each event (the `HMAC` form field); `None`: events go unsigned.
    pub shared_key: Option<String>,
    pub(crate) created_ms: i64,
    /// The user who created the subscription.
    pub owner_id: String,
}

/// One event sent (or being sent) to one subscription.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Order of the delivery among all deliveries of the brand, from 0.
    pub seq: u64,
    /// The subscription the event went to.
    pub subscription_id: String,
    /// The event's topic.
    pub topic: String,
    /// The response the event is about.
    pub response_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// How many POSTs were tried so far.
    pub attempts: u32,
    /// HTTP status of the last attempt; `None` if it got no answer.
    pub http_status: Option<u16>,
    /// Why the last attempt failed; `None` when it did not.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
/// The brand's event subscriptions and the deliveries made to them.
pub struct EventSubState {
    /// Every subscription, in creation order.
    pub subs: RwLock<Vec<Subscription>>,
    deliveries: Mutex<VecDeque<Delivery>>,
    created: AtomicU64,
    delivery_seq: AtomicU64,
    client: OnceLock<reqwest::Client>,
}

impl EventSubState {
    /// The recent deliveries, oldest first (at most the last thousand).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().iter().cloned().collect()
    }

    fn record(&self, d: Delivery) {
        let mut q = self.deliveries.lock();
        if let Some(slot) = q.iter_mut().find(|x| x.seq == d.seq) {
            *slot = d;
            return;
        }
        if q.len() >= MAX_DELIVERIES {
            q.pop_front();
        }
        q.push_back(d);
    }

    fn client(&self) -> Option<reqwest::Client> {
        if let Some(c) = self.client.get() {
            return Some(c.clone());
        }
        // No proxy: deliveries go to loopback and must not be routed through HTTP(S)_PROXY.
        let c = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .no_proxy()
            .build()
            .ok()?;
        Some(self.client.get_or_init(|| c).clone())
    }
}

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/eventsubscriptions", get(list).post(create))
        .route("/eventsubscriptions/{id}", get(get_one).delete(delete))
}

/// `GET /_sim/eventsubs/deliveries`: every recorded delivery, oldest first (merged into `admin`).
pub fn admin_routes() -> Router<SharedSim> {
    Router::new().route("/_sim/eventsubs/deliveries", get(list_deliveries))
}

async fn list_deliveries(State(sim): State<SharedSim>) -> ApiResult {
    Ok(envelope::ok(
        json!({"elements": sim.eventsubs.deliveries()}),
    ))
}

// ---------------------------------------------------------------------------------------------
// Topics

fn is_survey_id(s: &str) -> bool {
    s.strip_prefix("SV_")
        .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// One topic of the §11.1 grammar, wildcards included.
fn valid_topic(t: &str) -> bool {
    let parts: Vec<&str> = t.split('.').collect();
    match parts.as_slice() {
        ["*"] => true,
        ["surveyengine" | "controlpanel" | "threesixty", "*"] => true,
        [
            "surveyengine",
            "completedResponse" | "partialResponse" | "startedRecipientSession",
            last,
        ] => *last == "*" || is_survey_id(last),
        ["controlpanel", "activateSurvey" | "deactivateSurvey"] => true,
        ["threesixty", "created" | "statusChanged"] => true,
        _ => false,
    }
}

/// Does subscription topic `pattern` (possibly with a trailing `*`) cover event `topic`?
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    pattern.split(',').map(str::trim).any(|p| {
        if p == "*" || p == topic {
            return true;
        }
        p.strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with('.') && topic.starts_with(prefix))
    })
}

fn check_url(raw: &str) -> Result<(), ApiError> {
    let u = url::Url::parse(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "Field 'publicationUrl' is not a valid URL ({e}): '{raw}'."
        ))
    })?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(ApiError::bad_request(format!(
            "Field 'publicationUrl' must be an http or https URL; got scheme '{}'.",
            u.scheme()
        )));
    }
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        return Err(ApiError::bad_request(format!(
            "Field 'publicationUrl' must point at a loopback address (localhost, 127.0.0.1 or [::1]): the simulator only delivers events to this machine; got '{raw}'."
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Management

fn render(s: &Subscription) -> Value {
    json!({
        "id": s.id, "topics": s.topics, "publicationUrl": s.publication_url,
        "encrypt": false, "createdDate": iso(s.created_ms), "ownerId": s.owner_id,
    })
}

fn authorize(caller: &Caller, scope: &str) -> Result<(), ApiError> {
    caller.require_scope(scope)?;
    caller.require_brand_admin()
}

async fn create(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    authorize(&caller, "write:subscriptions")?;
    let m = parse_body(&body)?;
    let topics = req_str(&m, "topics")?;
    for t in topics.split(',').map(str::trim) {
        if !valid_topic(t) {
            return Err(ApiError::bad_request(format!(
                "Invalid topic '{t}'. Topics: surveyengine.completedResponse.{{SurveyID}} (or .*), surveyengine.partialResponse.…, surveyengine.startedRecipientSession.…, controlpanel.activateSurvey, controlpanel.deactivateSurvey, threesixty.created, threesixty.statusChanged, <namespace>.* or *; separate several with commas."
            )));
        }
    }
    let url = req_str(&m, "publicationUrl")?;
    check_url(url)?;
    match m.get("encrypt") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(ApiError::bad_request(
                "'encrypt': true is not supported by the simulator (Qualtrics does not document the cipher); use encrypt: false with a sharedKey for HMAC signatures.",
            ));
        }
        Some(_) => return Err(ApiError::bad_request("Field 'encrypt' must be a boolean.")),
    }
    let shared_key = opt_str(&m, "sharedKey")?.filter(|k| !k.is_empty());
    let n = sim.eventsubs.created.fetch_add(1, Ordering::SeqCst);
    let id = format!("SUB_{}", Rng::derive(sim.cfg.seed, &[TAG_SUB, n]).alnum(15));
    sim.eventsubs.subs.write().push(Subscription {
        id: id.clone(),
        topics: topics.to_string(),
        publication_url: url.to_string(),
        shared_key: shared_key.map(str::to_string),
        created_ms: sim.clock.now_ms(),
        owner_id: caller.user.id.clone(),
    });
    Ok(envelope::ok(json!({"id": id})))
}

async fn list(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>) -> ApiResult {
    authorize(&caller, "read:subscriptions")?;
    let items: Vec<Value> = sim.eventsubs.subs.read().iter().map(render).collect();
    Ok(envelope::ok(json!({"elements": items, "nextPage": null})))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Event subscription '{id}' was not found."))
}

async fn get_one(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&caller, "read:subscriptions")?;
    let subs = sim.eventsubs.subs.read();
    let s = subs
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| not_found(&id))?;
    Ok(envelope::ok(render(s)))
}

async fn delete(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&caller, "write:subscriptions")?;
    let mut subs = sim.eventsubs.subs.write();
    let i = subs
        .iter()
        .position(|s| s.id == id)
        .ok_or_else(|| not_found(&id))?;
    subs.remove(i);
    Ok(envelope::ok_empty())
}

// ---------------------------------------------------------------------------------------------
// Delivery

/// Lowercase hex HMAC-SHA512 of `msg` keyed with the UTF-8 bytes of `key` (§11.2).
pub fn sign(key: &str, msg: &str) -> String {
    match <Hmac<Sha512> as KeyInit>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(msg.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    }
}

/// The `MSG` JSON string of a completed response. Recipient and distribution keys are left out:
/// responses completed through the API have none.
pub fn completed_msg(
    sim: &SharedSim,
    survey_id: &str,
    response_id: &str,
    completed_ms: i64,
) -> String {
    let creator = sim
        .surveys
        .iter()
        .find(|s| s.id == survey_id)
        .map(|s| s.creator_id.clone())
        .unwrap_or_default();
    json!({
        "Status": "Complete", "SurveyID": survey_id, "ResponseID": response_id,
        "CompletedDate": sql(completed_ms), "BrandID": sim.cfg.brand_id,
        "CreatorID": creator, "ResponseEventContext": "",
    })
    .to_string()
}

/// Called when a response is completed through the API: POSTs `Topic`/`MSG`/`HMAC` to every
/// subscription whose topic matches `surveyengine.completedResponse.{survey_id}` (in the
/// background; never blocks the caller).
pub fn publish_completed_response(
    sim: &SharedSim,
    survey_id: &str,
    response_id: &str,
    completed_ms: i64,
) {
    let topic = format!("surveyengine.completedResponse.{survey_id}");
    let targets: Vec<Subscription> = sim
        .eventsubs
        .subs
        .read()
        .iter()
        .filter(|s| topic_matches(&s.topics, &topic))
        .cloned()
        .collect();
    if targets.is_empty() {
        return;
    }
    let msg = completed_msg(sim, survey_id, response_id, completed_ms);
    let full_topic = format!("{}.{topic}", sim.cfg.brand_id);
    for sub in targets {
        let seq = sim.eventsubs.delivery_seq.fetch_add(1, Ordering::SeqCst);
        let mut rec = Delivery {
            seq,
            subscription_id: sub.id.clone(),
            topic: full_topic.clone(),
            response_id: response_id.to_string(),
            status: "pending".into(),
            attempts: 0,
            http_status: None,
            error: None,
        };
        let mut form = vec![("Topic", full_topic.clone()), ("MSG", msg.clone())];
        if let Some(k) = &sub.shared_key {
            form.push(("HMAC", sign(k, &msg)));
        }
        let (Ok(rt), Some(client)) = (
            tokio::runtime::Handle::try_current(),
            sim.eventsubs.client(),
        ) else {
            rec.status = "failed".into();
            rec.error = Some("no async runtime or HTTP client available for delivery".into());
            sim.eventsubs.record(rec);
            continue;
        };
        sim.eventsubs.record(rec.clone());
        let sim = sim.clone();
        rt.spawn(async move {
            deliver(&sim, &client, &sub.publication_url, &form, rec).await;
        });
    }
}

async fn deliver(
    sim: &SharedSim,
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, String)],
    mut rec: Delivery,
) {
    let mut backoff = FIRST_BACKOFF_MS;
    loop {
        rec.attempts += 1;
        match client.post(url).form(form).send().await {
            Ok(resp) => {
                let code = resp.status();
                rec.http_status = Some(code.as_u16());
                if code.is_success() {
                    rec.status = "delivered".into();
                    rec.error = None;
                } else {
                    rec.error = Some(format!("receiver answered {code}"));
                }
            }
            Err(e) => rec.error = Some(e.to_string()),
        }
        if rec.status == "delivered" || rec.attempts >= MAX_ATTEMPTS {
            break;
        }
        sim.eventsubs.record(rec.clone());
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        backoff *= 2;
    }
    if rec.status != "delivered" {
        rec.status = "failed".into();
    }
    sim.eventsubs.record(rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_grammar() {
        for ok in [
            "*",
            "surveyengine.*",
            "surveyengine.completedResponse.*",
            "surveyengine.completedResponse.SV_abc123",
            "controlpanel.activateSurvey",
            "threesixty.*",
        ] {
            assert!(valid_topic(ok), "{ok}");
        }
        for bad in [
            "",
            "surveyengine",
            "surveyengine.completedResponse",
            "surveyengine.completedResponse.abc",
            "surveyengine.*.SV_1",
            "foo.*",
            "controlpanel.deleted",
        ] {
            assert!(!valid_topic(bad), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let t = "surveyengine.completedResponse.SV_1";
        assert!(topic_matches("*", t));
        assert!(topic_matches("surveyengine.*", t));
        assert!(topic_matches("surveyengine.completedResponse.*", t));
        assert!(topic_matches("surveyengine.completedResponse.SV_1", t));
        assert!(topic_matches(
            "controlpanel.activateSurvey, surveyengine.completedResponse.SV_1",
            t
        ));
        assert!(!topic_matches("surveyengine.completedResponse.SV_2", t));
        assert!(!topic_matches("controlpanel.*", t));
    }

    #[test]
    fn hmac_is_lowercase_hex_sha512() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        let h = sign("key", "msg");
        assert_eq!(h.len(), 128);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn loopback_only() {
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("https://localhost/hook").is_ok());
        assert!(check_url("http://[::1]:9/x").is_ok());
        assert!(check_url("https://hooks.example.com/x").is_err());
        assert!(check_url("http://10.0.0.1/x").is_err());
        assert!(check_url("ftp://127.0.0.1/x").is_err());
    }
}
