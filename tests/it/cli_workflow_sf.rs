//! Salesforce end to end through the real binary: a Salesforce outbound message on a Case
//! triggers the `salesforce-triggered-survey` template (Qualtrics contact, mailing list member,
//! distribution), and `salesforce.upsert` delivery holds up under the Salesforce simulator's
//! faults (5xx storm, 429, the daily API limit) with a permanent validation error parked in the
//! dead letter and replayed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_workflows::store::{EventSource, EventState, NewEvent, Store};

use crate::support;
use support::{Install, StateStore, start_runner};

async fn qualtrics() -> SimHandle {
    let cfg = SimConfig {
        seed: 9,
        contacts: 0,
        rate_limit_per_min: 0,
        ..SimConfig::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

/// A Qualtrics API GET as the admin; returns `result`.
async fn q_get(h: &SimHandle, path: &str) -> Value {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/{path}", h.api_url()))
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["result"].clone()
}

struct Sf {
    h: xmbridge_sim::SalesforceHandle,
    creds: Value,
}

async fn salesforce() -> Sf {
    let h =
        xmbridge_test_kit::sim::salesforce(xmbridge_sim::salesforce::SalesforceConfig::default())
            .await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Sf { h, creds }
}

impl Sf {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.h.base_url));
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
    async fn records(&self, object: &str) -> Vec<Value> {
        let v = self
            .admin(
                reqwest::Method::GET,
                &format!("/_sim/records/{object}"),
                Value::Null,
            )
            .await;
        v.as_array()
            .cloned()
            .or_else(|| v["records"].as_array().cloned())
            .unwrap_or_default()
    }
    fn org_id(&self) -> String {
        self.creds["org_id"].as_str().unwrap().to_string()
    }
}

/// `account link NAME --salesforce --server-to-server` (client credentials) for pat.
async fn link_server_to_server(inst: &Install, sf: &Sf, name: &str) -> String {
    let secret = inst.path("sf.secret");
    std::fs::write(&secret, sf.creds["client_secret"].as_str().unwrap()).unwrap();
    inst.ok(&[
        "account",
        "link",
        name,
        "--salesforce",
        "--server-to-server",
        "--token-url",
        &sf.h.token_url(),
        "--client-id",
        sf.creds["client_id"].as_str().unwrap(),
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--as",
        "pat",
    ])
    .await
}

/// Waits until `pred` holds for the workflow's status (or 60 s pass); returns the last status.
async fn wait_status(
    inst: &Install,
    workflow: &str,
    pred: impl Fn(&xmbridge_workflows::store::WorkflowStatus) -> bool,
) -> xmbridge_workflows::store::WorkflowStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = inst.store().status(workflow).unwrap();
        if pred(&st) || Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(st: &xmbridge_workflows::store::WorkflowStatus, s: EventState) -> u64 {
    st.counts.get(&s).copied().unwrap_or(0)
}

/// Adds the `salesforce-triggered-survey` template for pat with what it needs from Qualtrics (a
/// survey, an invite message, a mailing list); returns the survey and mailing list ids.
async fn add_triggered_survey(inst: &Install, q: &SimHandle) -> (String, String) {
    // What the template needs from Qualtrics: a survey, an invite message, a mailing list.
    let survey = q.sim.surveys[0].id.clone();
    let me = q_get(q, "whoami").await["userId"]
        .as_str()
        .unwrap()
        .to_string();
    let messages = q_get(q, &format!("libraries/{me}/messages")).await;
    let invite = messages["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["category"] == "invite")
        .expect("an invite message in the user's library")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ml = inst
        .json(&[
            "action",
            "create-mailing-list",
            "--input",
            "name=Closed cases",
        ])
        .await["mailingListId"]
        .as_str()
        .unwrap()
        .to_string();

    let set = |k: &str, v: &str| format!("{k}={v}");
    let params = [
        set("survey_id", &survey),
        set("library_id", &me),
        set("message_id", &invite),
        set("mailing_list_id", &ml),
        set("from_email", "support@example.com"),
        set("from_name", "Support"),
    ];
    let mut args = vec![
        "workflow",
        "add",
        "--template",
        "salesforce-triggered-survey",
        "--as",
        "pat",
    ];
    for p in &params {
        args.push("--set");
        args.push(p);
    }
    let added = inst.ok(&args).await;
    assert!(added.contains("salesforce-triggered-survey"), "{added}");
    assert!(
        added.contains("endpoint-token"),
        "the hook's protection is shown: {added}"
    );
    (survey, ml)
}

// ---- 1. a Salesforce outbound message sends a Qualtrics survey ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_outbound_message_on_a_case_sends_the_contact_a_survey_once() {
    let inst = support::install();
    let q = qualtrics().await;
    inst.connect(&q, "q").await;
    // Discovers the brand's default directory (the template's steps name none).
    inst.ok(&["connection", "test", "q"]).await;
    let sf = salesforce().await;
    let linked = link_server_to_server(&inst, &sf, "sf-prod").await;
    assert!(linked.contains("organization 00D"), "{linked}");

    let (survey, ml) = add_triggered_survey(&inst, &q).await;

    let (_runner, url) = start_runner(&inst, &["--retry-base-ms", "50"]);
    // The endpoint URL for the outbound message carries the workflow's secret token.
    let endpoint = inst
        .ok(&[
            "workflow",
            "endpoint",
            "salesforce-triggered-survey",
            "--public-url",
            &url,
        ])
        .await
        .trim()
        .to_string();
    assert!(
        endpoint.starts_with(&format!(
            "{url}/hooks/salesforce/salesforce-triggered-survey?token="
        )),
        "{endpoint}"
    );

    // A seeded Case with a contact; Salesforce sends the outbound message.
    let case = sf
        .records("Case")
        .await
        .into_iter()
        .find(|c| c["ContactId"].is_string())
        .expect("a seeded case with a contact");
    let case_id = case["Id"].as_str().unwrap().to_string();
    let contact_id = case["ContactId"].as_str().unwrap().to_string();
    let email = sf
        .records("Contact")
        .await
        .into_iter()
        .find(|c| c["Id"] == json!(contact_id))
        .unwrap()["Email"]
        .as_str()
        .unwrap()
        .to_string();
    let fields = json!(["Id", "ContactId", "ContactEmail", "Subject"]);
    let sent = sf
        .admin(
            reqwest::Method::POST,
            "/_sim/outbound",
            json!({"object": "Case", "record_id": case_id, "endpoint": endpoint,
                   "fields": fields, "retry_base_ms": 50}),
        )
        .await;
    let delivery = sent["delivery_id"].as_str().unwrap().to_string();
    let notification = sent["notification_id"].as_str().unwrap().to_string();
    let d = sf
        .admin(
            reqwest::Method::GET,
            &format!("/_sim/outbound/deliveries/{delivery}?wait_ms=20000"),
            Value::Null,
        )
        .await;
    assert_eq!(d["acked"], true, "{d}");

    let st = wait_status(&inst, "salesforce-triggered-survey", |s| {
        count(s, EventState::Done) + count(s, EventState::Dead) + count(s, EventState::Skipped) >= 1
    })
    .await;
    assert_eq!(count(&st, EventState::Done), 1, "{st:?}");
    let ev = inst
        .store()
        .get_event(&xmbridge_workflows::store::event_id(
            "salesforce-triggered-survey",
            &notification,
        ))
        .unwrap();
    assert_eq!(ev.payload["record"]["ContactEmail"], json!(email));
    assert_eq!(ev.payload["notification"]["id"], json!(notification));

    // The contact is in the directory (by extRef = the Salesforce contact id) and on the list.
    let dir = q.sim.directory.default_directory_id();
    let members = q_get(&q, &format!("directories/{dir}/mailinglists/{ml}/contacts")).await;
    let members = members["elements"].as_array().unwrap().clone();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["email"], json!(email));
    assert_eq!(members[0]["extRef"], json!(contact_id));
    let member_id = members[0]["contactId"]
        .as_str()
        .or_else(|| members[0]["id"].as_str())
        .unwrap()
        .to_string();

    // One distribution of the survey to that contact on that list.
    let ours = |all: Value| -> Vec<Value> {
        all["elements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["recipients"]["mailingListId"] == json!(ml))
            .cloned()
            .collect()
    };
    let dists = ours(q_get(&q, &format!("distributions?surveyId={survey}")).await);
    assert_eq!(dists.len(), 1, "{dists:?}");
    assert_eq!(dists[0]["recipients"]["contactId"], json!(member_id));
    assert_eq!(dists[0]["embeddedData"]["salesforce_id"], json!(case_id));

    // Salesforce redelivers the same notification (a late ack): acknowledged, nothing new sent.
    let sim_fields: Vec<(String, String)> = vec![
        ("Id".into(), case_id.clone()),
        ("ContactId".into(), contact_id.clone()),
        ("ContactEmail".into(), email.clone()),
    ];
    let again = xmbridge_sim::salesforce::outbound::soap_message(
        &sf.org_id(),
        "04k000000000001AAA",
        None,
        &sf.h.base_url,
        &notification,
        "Case",
        &sim_fields,
    );
    let http = reqwest::Client::new();
    let resp = http
        .post(&endpoint)
        .header("Content-Type", "text/xml")
        .header("SOAPAction", "\"\"")
        .body(again)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        xmbridge_sim::salesforce::outbound::is_ack(&resp.text().await.unwrap()),
        "a duplicate is acknowledged"
    );
    // Another organization's message is refused.
    let foreign = xmbridge_sim::salesforce::outbound::soap_message(
        "00D000000000999AAA",
        "04k000000000001AAA",
        None,
        &sf.h.base_url,
        "04l000000000999AAA",
        "Case",
        &sim_fields,
    );
    let resp = http
        .post(&endpoint)
        .header("Content-Type", "text/xml")
        .body(foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let fault = resp.text().await.unwrap();
    assert!(
        fault.contains("refused") && !fault.contains(&sf.org_id()[..15]),
        "a refusal says nothing about what would pass: {fault}"
    );
    // Give a (wrongly) stored duplicate every chance to be delivered before counting.
    let st = wait_status(&inst, "salesforce-triggered-survey", |s| {
        count(s, EventState::Pending) + count(s, EventState::Running) == 0
    })
    .await;
    let total: u64 = st.counts.values().sum();
    assert_eq!(total, 1, "one event for one notification: {st:?}");
    let dists = ours(q_get(&q, &format!("distributions?surveyId={survey}")).await);
    assert_eq!(dists.len(), 1, "no second distribution: {dists:?}");
}

/// The probe's critical finding: with no linked Salesforce account (nothing to check an org
/// against), a forged outbound message used to be acknowledged and sent a survey invitation to
/// an address of the sender's choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_outbound_message_is_refused_and_sends_nothing() {
    let inst = support::install();
    let q = qualtrics().await;
    inst.connect(&q, "q").await;
    inst.ok(&["connection", "test", "q"]).await;
    let (survey, ml) = add_triggered_survey(&inst, &q).await;
    let show = inst
        .ok(&["workflow", "show", "salesforce-triggered-survey"])
        .await;
    assert!(
        show.contains("endpoint-token") && show.contains("OrganizationId not checked"),
        "{show}"
    );
    let (mut runner, url) = start_runner(&inst, &["--retry-base-ms", "50"]);
    let hook = format!("{url}/hooks/salesforce/salesforce-triggered-survey");
    let forged = |org: &str| {
        xmbridge_sim::salesforce::outbound::soap_message(
            org,
            "04k000000000001AAA",
            None,
            "http://127.0.0.1:9",
            "04l00000000F0RGED",
            "Case",
            &[
                ("Id".to_string(), "500000000000666AAA".to_string()),
                ("ContactEmail".to_string(), "victim@example.com".to_string()),
            ],
        )
    };
    let http = reqwest::Client::new();
    let post = |url: String, body: String| {
        let http = http.clone();
        async move {
            let resp = http
                .post(url)
                .header("Content-Type", "text/xml")
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // No token, a guessed one, and the org id the sender may have learnt: all refused alike,
    // and a workflow name that does not exist gets the very same answer.
    let attempts = [
        (hook.clone(), forged("00D000000000001AAA")),
        (format!("{hook}?token=guess"), forged("00D000000000001AAA")),
        (format!("{hook}?token="), forged("00D000000000002AAA")),
        (
            format!("{url}/hooks/salesforce/no-such-workflow"),
            forged("00D000000000001AAA"),
        ),
    ];
    let mut answers = Vec::new();
    for (target, body) in attempts {
        let (status, text) = post(target.clone(), body).await;
        assert_eq!(status, 500, "{target}: {text}");
        assert!(!xmbridge_sim::salesforce::outbound::is_ack(&text), "{text}");
        answers.push(text);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert!(answers[0].contains("refused"), "{}", answers[0]);

    // Nothing was stored, so nothing is delivered.
    let st = inst.store().status("salesforce-triggered-survey").unwrap();
    assert_eq!(st.counts.values().sum::<u64>(), 0, "{st:?}");
    runner.kill().unwrap();
    runner.wait().unwrap();
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(out.contains("delivered 0 event(s)"), "{out}");
    let dir = q.sim.directory.default_directory_id();
    let members = q_get(&q, &format!("directories/{dir}/mailinglists/{ml}/contacts")).await;
    assert_eq!(members["elements"].as_array().map(Vec::len), Some(0));
    let dists = q_get(&q, &format!("distributions?surveyId={survey}")).await;
    assert!(
        dists["elements"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["recipients"]["mailingListId"] != json!(ml)),
        "{dists}"
    );

    // The operator's endpoint URL works (the hook is not simply closed).
    let (_runner, url) = start_runner(&inst, &["--retry-base-ms", "50"]);
    let endpoint = inst
        .ok(&[
            "workflow",
            "endpoint",
            "salesforce-triggered-survey",
            "--public-url",
            &url,
        ])
        .await
        .trim()
        .to_string();
    let (status, text) = post(endpoint, forged("00D000000000001AAA")).await;
    assert_eq!(status, 200, "{text}");
    assert!(xmbridge_sim::salesforce::outbound::is_ack(&text), "{text}");
}

#[tokio::test]
async fn a_hook_workflow_without_authentication_is_refused_at_add() {
    let inst = support::install();
    let file = inst.path("open.toml");
    std::fs::write(
        &file,
        r#"[[workflow]]
name = "open-door"
owner = "pat"
[workflow.trigger]
type = "salesforce-outbound"
object = "Case"
auth = "none"
[[workflow.step]]
name = "contact"
action = "upsert-contact"
[workflow.step.inputs]
email = "record.ContactEmail"
"#,
    )
    .unwrap();
    let (code, err) = inst
        .fails(&["workflow", "add", "--file", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unauthenticated") && err.contains("auth = \"endpoint-token\""),
        "{err}"
    );
    assert!(!inst.home().join("workflows/open-door.toml").exists());
}

// ---- 2. delivery to Salesforce under faults ------------------------------------------------------

fn upsert_workflow() -> &'static str {
    r#"[[workflow]]
name = "to-sf"
owner = "pat"

[workflow.trigger]
type = "servicenow"
table = "u_survey_response"

[[workflow.step]]
name = "upsert"
action = "salesforce.upsert"
account = "sf-prod"
[workflow.step.mapping]
object = "Survey_Response__c"
external_id_field = "Response_Id__c"
external_id = "record.sys_id"
[workflow.step.mapping.fields]
Survey_Id__c = "record.survey"
"#
}

/// Response_Id__c → number of live Survey_Response__c records.
async fn responses_by_id(sf: &Sf) -> std::collections::HashMap<String, u32> {
    let mut out = std::collections::HashMap::new();
    for r in sf.records("Survey_Response__c").await {
        if r["IsDeleted"] == json!(true) {
            continue;
        }
        if let Some(id) = r["Response_Id__c"].as_str() {
            *out.entry(id.to_string()).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_survive_5xx_storms_throttling_and_the_daily_limit_and_a_rule_violation_is_replayed()
 {
    const EVENTS: usize = 50;
    let inst = support::install();
    let sf = salesforce().await;
    link_server_to_server(&inst, &sf, "sf-prod").await;
    inst.write_workflow("to-sf.toml", upsert_workflow());
    sf.admin(
        reqwest::Method::POST,
        "/_sim/validation-rules",
        json!({"object": "Survey_Response__c", "name": "retired_survey", "field": "Survey_Id__c",
               "condition": "equals", "value": "SV_retired",
               "message": "Survey SV_retired is retired; map responses of its successor"}),
    )
    .await;
    {
        // What the receiver stores for each ServiceNow call (tested in xmbridge-server).
        let store = inst.store();
        for n in 0..=EVENTS {
            let (sys_id, survey) = if n == EVENTS {
                ("R_retired".to_string(), "SV_retired")
            } else {
                (format!("R_{n:04}"), "SV_current")
            };
            let e = NewEvent {
                workflow: "to-sf".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("{sys_id}@1"),
                payload: json!({"table": "u_survey_response",
                                "record": {"sys_id": sys_id, "survey": survey}}),
            };
            store.enqueue(&e, 0).unwrap();
        }
    }
    // The storm: 15 calls answered 503, then 4 throttled (429, Retry-After 1 s), then 4 over the
    // daily limit (403 REQUEST_LIMIT_EXCEEDED).
    sf.admin(
        reqwest::Method::POST,
        "/_sim/faults",
        json!({"server_error_storm": 15, "throttle_429": 4, "retry_after_secs": 1,
               "limit_exceeded": 4}),
    )
    .await;
    let (_runner, _url) = start_runner(&inst, &["--retry-base-ms", "20", "--retry-cap-ms", "500"]);
    let st = wait_status(&inst, "to-sf", |s| {
        count(s, EventState::Done) + count(s, EventState::Dead) > EVENTS as u64
    })
    .await;
    assert_eq!(count(&st, EventState::Done), EVENTS as u64, "{st:?}");
    assert_eq!(count(&st, EventState::Dead), 1, "{st:?}");
    let faults = sf
        .admin(reqwest::Method::GET, "/_sim/faults", Value::Null)
        .await;
    eprintln!("faults left: {faults}; status: {st:?}");
    // Every fault was spent on our calls, and each cost an attempt that was retried.
    assert!(
        st.failed_attempts >= 15 + 4 + 4,
        "failed attempts {} (faults left {faults})",
        st.failed_attempts
    );
    assert!(st.retried_events >= 2, "{st:?}");

    // Only the rule violation is dead, with Salesforce's message, after one attempt.
    let dead = &st.dead[0];
    assert_eq!(dead.dedupe_key, "R_retired@1");
    let err = dead.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("FIELD_CUSTOM_VALIDATION_EXCEPTION") || err.contains("is retired"),
        "{err}"
    );
    assert!(err.contains("Survey SV_retired is retired"), "{err}");
    assert_eq!(dead.attempts, 1, "a permanent error is not retried");
    let status = inst.ok(&["workflow", "status", "to-sf"]).await;
    assert!(
        status.contains(&format!(
            "retries  {} failed attempt(s) on {} event(s)",
            st.failed_attempts, st.retried_events
        )),
        "{status}"
    );
    assert!(status.contains("Survey SV_retired is retired"), "{status}");
    let js = inst.json(&["workflow", "status", "to-sf", "--json"]).await;
    assert_eq!(js["retries"]["failed_attempts"], json!(st.failed_attempts));
    assert_eq!(js["counts"]["dead"], 1);

    let seen = responses_by_id(&sf).await;
    assert_eq!(
        seen.len(),
        EVENTS,
        "every transient failure delivered in the end"
    );
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicated: {dupes:?}");
    assert!(!seen.contains_key("R_retired"));

    // The admin removes the rule; the replay delivers the parked event once.
    sf.admin(
        reqwest::Method::DELETE,
        "/_sim/validation-rules",
        Value::Null,
    )
    .await;
    let out = inst
        .ok(&["workflow", "replay", "to-sf", "--event", &dead.id])
        .await;
    assert!(out.contains("1 dead event(s)"), "{out}");
    // A --once pass delivers it even if the running runner sleeps until its next due time.
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    eprintln!("{out}");
    let st = wait_status(&inst, "to-sf", |s| {
        count(s, EventState::Done) == EVENTS as u64 + 1
    })
    .await;
    assert_eq!(count(&st, EventState::Done), EVENTS as u64 + 1, "{st:?}");
    assert_eq!(count(&st, EventState::Dead), 0, "{st:?}");
    let seen = responses_by_id(&sf).await;
    assert_eq!(seen.get("R_retired"), Some(&1));
    assert_eq!(seen.len(), EVENTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_api_limit_holds_events_without_dead_letters_until_the_window_resets() {
    const EVENTS: usize = 12;
    let inst = support::install();
    let sf = salesforce().await;
    link_server_to_server(&inst, &sf, "sf-prod").await;
    inst.write_workflow("to-sf.toml", upsert_workflow());
    {
        let store = inst.store();
        for n in 0..EVENTS {
            let e = NewEvent {
                workflow: "to-sf".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("L_{n:04}@1"),
                payload: json!({"table": "u_survey_response",
                                "record": {"sys_id": format!("L_{n:04}"), "survey": "SV_current"}}),
            };
            store.enqueue(&e, 0).unwrap();
        }
    }
    // The org has 4 calls left today.
    let limits = sf
        .admin(reqwest::Method::GET, "/_sim/limits", Value::Null)
        .await;
    let used = limits["used"].as_u64().unwrap();
    sf.admin(
        reqwest::Method::POST,
        "/_sim/limits",
        json!({"max": used + 4}),
    )
    .await;
    let (_runner, _url) = start_runner(&inst, &["--retry-base-ms", "10", "--retry-cap-ms", "100"]);
    // Wait until the held events have been refused more often than max_attempts (8) allows
    // for failures: a daily limit is not the event's failure, so none may be dead.
    let st = wait_status(&inst, "to-sf", |s| {
        count(s, EventState::Dead) > 0 || s.failed_attempts >= 8 * 8
    })
    .await;
    assert_eq!(count(&st, EventState::Dead), 0, "{st:?}");
    assert!(count(&st, EventState::Done) < EVENTS as u64, "{st:?}");
    assert!(st.failed_attempts >= 8 * 8, "{st:?}");
    // 24 hours later the window starts again with the org's usual allowance: everything is
    // delivered, once.
    sf.admin(
        reqwest::Method::POST,
        "/_sim/limits",
        json!({"max": limits["max"]}),
    )
    .await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/clock/advance",
        json!({"secs": 86_400}),
    )
    .await;
    let st = wait_status(&inst, "to-sf", |s| {
        count(s, EventState::Done) == EVENTS as u64 || count(s, EventState::Dead) > 0
    })
    .await;
    assert_eq!(count(&st, EventState::Done), EVENTS as u64, "{st:?}");
    let seen = responses_by_id(&sf).await;
    assert_eq!(seen.len(), EVENTS);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}
