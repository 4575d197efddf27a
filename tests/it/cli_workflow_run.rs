//! `xmbridge workflow run` and `xmbridge account` end to end: the real binary, the Qualtrics
//! simulator over loopback, the state store in a temporary XMBRIDGE_HOME — including the kill
//! loop: 1,000 events, the runner killed with SIGKILL 20 times at seeded random moments, every
//! event delivered exactly once.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_workflows::store::{EventSource, EventState, NewEvent, Store};

use crate::support;
use support::{Install, StateStore, start_runner};
use xmbridge_test_kit::Rng;

async fn sim() -> SimHandle {
    let cfg = SimConfig {
        seed: 5,
        contacts: 0,
        rate_limit_per_min: 0,
        ..SimConfig::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

/// Every contact of `dir` through the API: extRef → count.
pub(crate) async fn contacts_by_ext_ref(
    h: &SimHandle,
    dir: &str,
) -> std::collections::HashMap<String, u32> {
    let http = reqwest::Client::new();
    let mut url = format!("{}/directories/{dir}/contacts?pageSize=100", h.api_url());
    let mut out = std::collections::HashMap::new();
    loop {
        let body: Value = http
            .get(&url)
            .header("X-API-TOKEN", h.sim.cfg.admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in body["result"]["elements"].as_array().unwrap() {
            if let Some(r) = c["extRef"].as_str() {
                *out.entry(r.to_string()).or_default() += 1;
            }
        }
        match body["result"]["nextPage"].as_str() {
            Some(next) if !next.is_empty() => url = next.to_string(),
            _ => return out,
        }
    }
}

fn kill_workflow(dir: &str) -> String {
    servicenow_contact_workflow("kill-loop", dir)
}

/// A workflow named `name` that makes each ServiceNow incident record a contact of `dir` in the
/// Qualtrics simulator (extRef = the record's sys_id, so a contact per record proves a delivery
/// per event).
pub(crate) fn servicenow_contact_workflow(name: &str, dir: &str) -> String {
    format!(
        r#"[[workflow]]
name = "{name}"
owner = "pat"

[workflow.trigger]
type = "servicenow"
table = "incident"

[[workflow.step]]
name = "contact"
action = "create-contact"
[workflow.step.inputs]
directory_id = "'{dir}'"
email = "record.email"
extRef = "record.sys_id"
"#
    )
}

fn argv(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_kills_during_delivery_of_a_thousand_events_deliver_each_once() {
    const EVENTS: usize = 1000;
    const KILLS: usize = 20;
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    {
        // What the receiver does for each ServiceNow call (tested in xmbridge-server).
        let store = inst.store();
        for n in 0..EVENTS {
            let e = NewEvent {
                workflow: "kill-loop".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("kill-{n:04}@1"),
                payload: json!({"table": "incident", "record": {
                    "sys_id": format!("kill-{n:04}"), "email": format!("k{n}@example.com")}}),
            };
            store.enqueue(&e, 0).unwrap();
        }
    }
    let mut rng = Rng(20261130);
    let mut kills = 0;
    let started = Instant::now();
    let mut runs = 0;
    let store = inst.store();
    let done = || {
        store
            .status("kill-loop")
            .unwrap()
            .counts
            .get(&EventState::Done)
            .copied()
            .unwrap_or(0)
    };
    while kills < KILLS && runs < 3 * KILLS {
        runs += 1;
        // Each run is killed after a seeded number of further deliveries (1–29), then a few
        // milliseconds more so the kill lands at varied points of the next call. Counting
        // deliveries, not time, keeps every kill inside delivery however fast the machine
        // drains the queue: 20 runs × at most 29 events (plus what one poll misses) < 1,000.
        let kill_after = done() + rng.range(1, 30);
        let mut child = inst
            .cmd(&[
                "workflow",
                "run",
                "--once",
                "--workers",
                "1",
                "--lease-secs",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let give_up = Instant::now() + Duration::from_secs(60);
        while done() < kill_after && Instant::now() < give_up && child.try_wait().unwrap().is_none()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(0, 6))).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    let done_before_final = done();
    // Let the killed runs' leases run out, then finish.
    let mut status = inst.store().status("kill-loop").unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        inst.ok(&[
            "workflow",
            "run",
            "--once",
            "--workers",
            "4",
            "--lease-secs",
            "1",
        ])
        .await;
        status = inst.store().status("kill-loop").unwrap();
        if status.counts.get(&EventState::Done) == Some(&(EVENTS as u64)) {
            break;
        }
    }
    eprintln!(
        "{kills} kills; {done_before_final} events done before the final run; {:?} in all",
        started.elapsed()
    );
    assert_eq!(
        status.counts.get(&EventState::Done),
        Some(&(EVENTS as u64)),
        "{status:?}"
    );
    assert_eq!(kills, KILLS, "every kill landed on a running process");
    assert!(
        done_before_final < EVENTS as u64,
        "the kills must happen during delivery"
    );
    let seen = contacts_by_ext_ref(&h, &dir).await;
    let ours: Vec<_> = seen
        .iter()
        .filter(|(k, _)| k.starts_with("kill-"))
        .collect();
    assert_eq!(ours.len(), EVENTS, "every event reached the target");
    let dupes: Vec<_> = ours.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicated: {dupes:?}");
}

#[tokio::test]
async fn pause_resume_replay_and_status_from_the_command_line() {
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    {
        let store = inst.store();
        for n in 0..3 {
            let e = NewEvent {
                workflow: "kill-loop".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("p-{n}@1"),
                // Event 2 has neither email nor extRef: the action refuses it (dead letter).
                payload: if n == 2 {
                    json!({"table": "incident", "record": {"sys_id": null}})
                } else {
                    json!({"table": "incident", "record": {"sys_id": format!("p-{n}"), "email": format!("p{n}@example.com")}})
                },
            };
            store.enqueue(&e, 0).unwrap();
        }
    }
    inst.ok(&["workflow", "pause", "kill-loop", "--reason", "testing"])
        .await;
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(out.contains("delivered 0 event(s)"), "{out}");
    let st = inst.ok(&["workflow", "status", "kill-loop"]).await;
    assert!(st.contains("PAUSED: testing"), "{st}");
    inst.ok(&["workflow", "resume", "kill-loop"]).await;
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(
        out.contains("delivered 2 event(s)") && out.contains("1 dead"),
        "{out}"
    );
    let st: Value = serde_json::from_str(
        &inst
            .ok(&["workflow", "status", "kill-loop", "--json"])
            .await,
    )
    .unwrap();
    assert_eq!(st["counts"]["done"], 2);
    assert_eq!(st["counts"]["dead"], 1);
    let id = st["dead"][0]["id"].as_str().unwrap().to_string();
    assert!(
        st["dead"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("contact"),
        "{st}"
    );
    let (code, err) = inst.fails(&["workflow", "replay", "kill-loop"]).await;
    assert_eq!(code, 2, "{err}");
    let out = inst
        .ok(&["workflow", "replay", "kill-loop", "--event", &id])
        .await;
    assert!(out.contains("1 dead event(s)"), "{out}");
    assert_eq!(
        inst.store().get_event(&id).unwrap().state,
        EventState::Pending
    );
}

/// A refused Qualtrics token inside a workflow pauses it with the command that fixes it, as
/// `xmbridge action` names it: the runner puts the connection into the action context the same
/// way (it used to build the context by hand and lose the hint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_qualtrics_token_pauses_the_workflow_with_the_reauthorize_hint() {
    let inst = support::install();
    let h = sim().await;
    let tf = inst.path("wrong.token");
    std::fs::write(&tf, "not-the-brand-token").unwrap();
    inst.ok(&[
        "connection",
        "add",
        "qualtrics",
        "q",
        "--no-test",
        "--url",
        &h.base_url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    inst.store()
        .enqueue(
            &NewEvent {
                workflow: "kill-loop".into(),
                source: EventSource::ServiceNow,
                dedupe_key: "r-1@1".into(),
                payload: json!({"table": "incident", "record": {"sys_id": "r-1", "email": "r1@example.com"}}),
            },
            0,
        )
        .unwrap();
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(out.contains("delivered 0 event(s)"), "{out}");
    let st = inst
        .json(&["workflow", "status", "kill-loop", "--json"])
        .await;
    assert_eq!(st["paused"], true, "{st}");
    assert_eq!(st["reason"], "account token expired", "{st}");
    assert!(
        st["fix"]
            .as_str()
            .unwrap()
            .contains("Re-authorize with `xmbridge connection authorize q`"),
        "{st}"
    );
}

/// An outbox row the code cannot read used to stop every delivery worker (`--once` exited 1 and
/// a running process kept answering webhooks while delivering nothing).
#[tokio::test]
async fn an_unreadable_outbox_row_is_dead_lettered_and_the_others_are_delivered() {
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    let mut ids = Vec::new();
    {
        let store = inst.store();
        for n in 0..4 {
            let e = NewEvent {
                workflow: "kill-loop".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("u-{n}@1"),
                payload: json!({"table": "incident", "record": {"sys_id": format!("u-{n}"), "email": format!("u{n}@example.com")}}),
            };
            ids.push(store.enqueue(&e, 0).unwrap().id().to_string());
        }
    }
    // Damage two rows by hand: a payload that is not JSON, and text where a number belongs.
    let raw = rusqlite::Connection::open(inst.home().join("state.db")).unwrap();
    raw.execute(
        "UPDATE wf_events SET payload = '{not json' WHERE id = ?1",
        [&ids[1]],
    )
    .unwrap();
    raw.execute(
        "UPDATE wf_events SET attempts = 'many' WHERE id = ?1",
        [&ids[3]],
    )
    .unwrap();
    drop(raw);
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(
        out.contains("delivered 2 event(s)") && out.contains("2 dead"),
        "{out}"
    );
    let st: Value = serde_json::from_str(
        &inst
            .ok(&["workflow", "status", "kill-loop", "--json"])
            .await,
    )
    .unwrap();
    assert_eq!(st["counts"]["done"], 2, "{st}");
    assert_eq!(st["counts"]["dead"], 2, "{st}");
    let mut dead: Vec<&str> = st["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    dead.sort();
    let mut want = vec![ids[1].as_str(), ids[3].as_str()];
    want.sort();
    assert_eq!(dead, want, "{st}");
    for d in st["dead"].as_array().unwrap() {
        let why = d["last_error"].as_str().unwrap_or_default();
        assert!(
            why.contains("not readable") && why.contains("replay"),
            "{st}"
        );
    }
    let seen = contacts_by_ext_ref(&h, &dir).await;
    assert_eq!(seen.get("u-0"), Some(&1));
    assert_eq!(seen.get("u-2"), Some(&1));
}

#[tokio::test]
async fn status_and_replay_of_an_unknown_workflow_fail() {
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    for args in [
        vec!["workflow", "status", "kill-lop"],
        vec!["workflow", "status", "kill-lop", "--json"],
        vec!["workflow", "replay", "kill-lop", "--all"],
    ] {
        let (code, err) = inst.fails(&args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("no workflow named \"kill-lop\"")
                && err.contains("did you mean kill-loop"),
            "{args:?}: {err}"
        );
    }
    let out = inst.ok(&["workflow", "status", "kill-loop"]).await;
    assert!(out.contains("workflow kill-loop"), "{out}");
}

async fn wait_done(
    inst: &Install,
    workflow: &str,
    n: u64,
) -> xmbridge_workflows::store::WorkflowStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = inst.store().status(workflow).unwrap();
        if st.counts.get(&EventState::Done).copied().unwrap_or(0) >= n || Instant::now() > deadline
        {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_response_arrives_by_signed_webhook_and_is_delivered_once() {
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    let survey = h.sim.surveys[0].id.clone();
    inst.write_workflow(
        "responses.toml",
        &format!(
            r#"[[workflow]]
name = "responses"
owner = "pat"

[workflow.trigger]
type = "qualtrics-response"
survey_id = "{survey}"

[[workflow.step]]
name = "contact"
action = "create-contact"
[workflow.step.inputs]
directory_id = "'{dir}'"
email = "'respondent@example.com'"
extRef = "response.id"
"#
        ),
    );
    let (mut child, url) = start_runner(&inst, &[]);
    let http = reqwest::Client::new();
    let token = h.sim.cfg.admin_token();
    let subs = |http: reqwest::Client| {
        let u = format!("{}/eventsubscriptions", h.api_url());
        let token = token.clone();
        async move {
            let v: Value = http
                .get(u)
                .header("X-API-TOKEN", token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["result"]["elements"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    let listed = subs(http.clone()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["publicationUrl"],
        format!("{url}/hooks/qualtrics/responses")
    );
    // A respondent finishes the survey: the simulator signs and posts the event.
    let created: Value = http
        .post(format!("{}/surveys/{survey}/responses", h.api_url()))
        .header("X-API-TOKEN", &token)
        .json(&json!({"values": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rid = created["result"]["responseId"]
        .as_str()
        .unwrap()
        .to_string();
    let st = wait_done(&inst, "responses", 1).await;
    if !st.counts.contains_key(&EventState::Done) {
        let d: Value = http
            .get(format!("{}/_sim/eventsubs/deliveries", h.base_url))
            .header("X-API-TOKEN", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        eprintln!("simulator deliveries: {d}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(st.counts.get(&EventState::Done), Some(&1), "{st:?}");
    let ev = inst
        .store()
        .get_event(&xmbridge_workflows::store::event_id("responses", &rid))
        .unwrap();
    assert_eq!(ev.payload["response"]["id"], json!(rid));
    assert_eq!(ev.payload["survey"]["id"], json!(survey));
    let seen = contacts_by_ext_ref(&h, &dir).await;
    assert_eq!(seen.get(&rid), Some(&1));
    // A restart on the same URL does not subscribe twice.
    let (mut child, _) = start_runner(&inst, &["--public-url", &url]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(subs(http.clone()).await.len(), 1);
    // A restart on another address moves the subscription instead of adding one.
    let (mut child, moved) = start_runner(&inst, &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(moved, url);
    let listed = subs(http.clone()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["publicationUrl"],
        format!("{moved}/hooks/qualtrics/responses")
    );
    // Someone else's subscription to the same survey is left alone.
    let other: Value = http
        .post(format!("{}/eventsubscriptions", h.api_url()))
        .header("X-API-TOKEN", &token)
        .json(
            &json!({"topics": format!("surveyengine.completedResponse.{survey}"),
                      "publicationUrl": "http://127.0.0.1:9/elsewhere", "encrypt": false}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(other["result"]["id"].is_string(), "{other}");
    // The workflow removed: its subscription goes at the next start, the other one stays.
    inst.ok(&["workflow", "remove", "responses"]).await;
    let (mut child, _) = start_runner(&inst, &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = subs(http.clone()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["publicationUrl"], "http://127.0.0.1:9/elsewhere");
}

// ---- Salesforce ---------------------------------------------------------------------------------

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
        let resp = reqwest::Client::new()
            .request(method, format!("{}{path}", self.h.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap_or(Value::Null)
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
}

/// `account link NAME --salesforce …` with the OAuth login: the test plays the browser (the
/// simulator auto-approves).
async fn link_oauth(inst: &Install, sf: &Sf, name: &str, extra: &[&str]) -> String {
    use std::io::BufRead;
    let secret = inst.path("sf.secret");
    std::fs::write(&secret, sf.creds["client_secret"].as_str().unwrap()).unwrap();
    let mut args = vec![
        "account".to_string(),
        "link".into(),
        name.into(),
        "--salesforce".into(),
        "--login-url".into(),
        sf.h.base_url.clone(),
        "--client-id".into(),
        sf.creds["client_id"].as_str().unwrap().into(),
        "--client-secret-file".into(),
        secret.to_str().unwrap().into(),
        "--timeout".into(),
        "30".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = inst
        .cmd(&argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line.starts_with("http") {
                let _ = tx.send(line.clone());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("no authorize URL printed");
    // The browser: the simulator redirects to the CLI's loopback listener.
    let _ = reqwest::get(&url).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "account link {name}: {stdout}\n{stderr}"
    );
    // Warnings (stderr) after what was printed.
    format!("{stdout}\n{stderr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_upsert_into_salesforce_and_an_expired_token_pauses_until_reauthorized() {
    let inst = support::install();
    let q = sim().await;
    inst.connect(&q, "q").await;
    let sf = salesforce().await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let out = link_oauth(&inst, &sf, "sf-prod", &["--as", "pat"]).await;
    assert!(
        out.contains("linked salesforce account sf-prod for pat"),
        "{out}"
    );
    let survey = q.sim.surveys[0].id.clone();
    inst.write_workflow(
        "to-sf.toml",
        &format!(
            r#"[[workflow]]
name = "to-sf"
owner = "pat"

[workflow.trigger]
type = "qualtrics-response"
survey_id = "{survey}"

[[workflow.step]]
name = "upsert"
action = "salesforce.upsert"
account = "sf-prod"
[workflow.step.mapping]
object = "Survey_Response__c"
external_id_field = "Response_Id__c"
external_id = "response.id"
[workflow.step.mapping.fields]
Survey_Id__c = "survey.id"
"#
        ),
    );
    let (mut child, _url) = start_runner(&inst, &["--retry-base-ms", "50"]);
    let http = reqwest::Client::new();
    let token = q.sim.cfg.admin_token();
    let respond = || {
        let http = http.clone();
        let url = format!("{}/surveys/{survey}/responses", q.api_url());
        let token = token.clone();
        async move {
            let v: Value = http
                .post(url)
                .header("X-API-TOKEN", token)
                .json(&json!({"values": {}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["result"]["responseId"].as_str().unwrap().to_string()
        }
    };
    let first = respond().await;
    let st = wait_done(&inst, "to-sf", 1).await;
    assert_eq!(st.counts.get(&EventState::Done), Some(&1), "{st:?}");
    let recs = sf.records("Survey_Response__c").await;
    assert!(
        recs.iter().any(|r| r["Response_Id__c"] == json!(first)),
        "{recs:?}"
    );

    // Salesforce revokes the account's tokens: the next events pause the workflow.
    sf.admin(
        reqwest::Method::POST,
        "/_sim/tokens/revoke",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(respond().await);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let ws = loop {
        let ws = inst.store().workflow_state("to-sf").unwrap();
        if ws.paused || Instant::now() > deadline {
            break ws;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ws.paused, "{ws:?}");
    assert_eq!(ws.reason.as_deref(), Some("account token expired"));
    assert_eq!(
        ws.fix.as_deref(),
        Some("xmbridge account link sf-prod --refresh --as pat")
    );
    // Wait until all three are stored, then check nothing was lost or charged an attempt.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = inst.store().status("to-sf").unwrap();
        if st.counts.get(&EventState::Pending) == Some(&3) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held, not retried: no attempt is charged while paused (the attempts seen are the
    // simulator's "response is being processed" answers before the pause).
    let attempts = |inst: &Install| -> Vec<(EventState, u32)> {
        later
            .iter()
            .map(|rid| {
                let e = inst
                    .store()
                    .get_event(&xmbridge_workflows::store::event_id("to-sf", rid))
                    .unwrap();
                (e.state, e.attempts)
            })
            .collect()
    };
    let before = attempts(&inst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(attempts(&inst), before);
    assert!(
        before.iter().all(|(s, _)| *s == EventState::Pending),
        "{before:?}"
    );
    let status = inst.ok(&["workflow", "status", "to-sf"]).await;
    assert!(
        status.contains("PAUSED: account token expired")
            && status.contains("xmbridge account link sf-prod --refresh --as pat"),
        "{status}"
    );
    let listed = inst.ok(&["account", "list", "--as", "pat"]).await;
    assert!(listed.contains("EXPIRED"), "{listed}");

    // The owner logs in again: the workflow resumes and the held events are delivered.
    let out = link_oauth(&inst, &sf, "sf-prod", &["--refresh", "--as", "pat"]).await;
    assert!(out.contains("resumed workflow to-sf"), "{out}");
    let st = wait_done(&inst, "to-sf", 4).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(st.counts.get(&EventState::Done), Some(&4), "{st:?}");
    let recs = sf.records("Survey_Response__c").await;
    for rid in later.iter().chain([&first]) {
        let n = recs
            .iter()
            .filter(|r| r["Response_Id__c"] == json!(rid))
            .count();
        assert_eq!(n, 1, "{rid}");
    }
}

#[tokio::test]
async fn the_account_rules_through_the_command_line() {
    let inst = support::install();
    let sf = salesforce().await;
    let secret = inst.path("sf.secret");
    std::fs::write(&secret, sf.creds["client_secret"].as_str().unwrap()).unwrap();
    let token_url = sf.h.token_url();
    let client_id = sf.creds["client_id"].as_str().unwrap().to_string();
    let link = |name: String, user: &'static str, brand: bool| {
        let mut a = vec![
            "account".to_string(),
            "link".into(),
            name,
            "--salesforce".into(),
            "--server-to-server".into(),
            "--token-url".into(),
            token_url.clone(),
            "--client-id".into(),
            client_id.clone(),
            "--client-secret-file".into(),
            secret.to_str().unwrap().into(),
            "--as".into(),
            user.into(),
        ];
        if brand {
            a.push("--brand".into());
        }
        a
    };
    for i in 0..5 {
        let a = link(format!("sf-{i}"), "pat", false);
        inst.ok(&argv(&a)[..]).await;
    }
    let a = link("sf-5".into(), "pat", false);
    let (code, err) = inst.fails(&argv(&a)[..]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "user pat already has 5 linked Salesforce accounts (the limit); unlink one with `xmbridge account unlink NAME`"
        ),
        "{err}"
    );
    // A brand admin links once and shares with chosen users.
    let a = link("sf-brand".into(), "admin", true);
    let out = inst.ok(&argv(&a)[..]).await;
    assert!(out.contains("organization 00D"), "{out}");
    let (_, err) = inst
        .fails(&["account", "share", "sf-0", "--with", "sam", "--as", "pat"])
        .await;
    assert!(err.contains("can be shared"), "{err}");
    inst.ok(&[
        "account", "share", "sf-brand", "--with", "pat", "kim", "--as", "admin",
    ])
    .await;
    let pat = inst.ok(&["account", "list", "--as", "pat"]).await;
    assert!(
        pat.contains("sf-brand") && pat.contains("admin (shared)"),
        "{pat}"
    );
    let sam = inst.ok(&["account", "list", "--as", "sam"]).await;
    assert!(sam.contains("no linked accounts"), "{sam}");
    // Only the owner unlinks; then there is room again.
    let (_, err) = inst
        .fails(&["account", "unlink", "sf-0", "--as", "sam"])
        .await;
    assert!(err.contains("only pat can unlink it"), "{err}");
    inst.ok(&["account", "unlink", "sf-0", "--as", "pat"]).await;
    let a = link("sf-5".into(), "pat", false);
    inst.ok(&argv(&a)[..]).await;
}

/// `workflow test WF --event-json EVENT`.
async fn workflow_test(
    inst: &Install,
    wf: &str,
    event: &std::path::Path,
) -> xmbridge_test_kit::cli::Run {
    inst.run(&[
        "workflow",
        "test",
        wf,
        "--event-json",
        event.to_str().unwrap(),
    ])
    .await
}

// ---- ServiceNow ---------------------------------------------------------------------------------

async fn servicenow() -> (xmbridge_sim::SnHandle, Value) {
    let h = xmbridge_test_kit::sim::servicenow(xmbridge_sim::servicenow::SnConfig::default()).await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (h, creds)
}

/// Every row of a ServiceNow simulator table (admin dump).
async fn sn_table(sn: &xmbridge_sim::SnHandle, table: &str) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{}/_sim/tables/{table}", sn.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// `account link NAME --servicenow --oauth-password …` as the simulator's integration user.
async fn link_sn(
    inst: &Install,
    sn: &xmbridge_sim::SnHandle,
    creds: &Value,
    name: &str,
    extra: &[&str],
) -> String {
    let user = creds["integration_user"].as_str().unwrap();
    let password = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!(user))
        .unwrap()["password"]
        .as_str()
        .unwrap();
    let client = &creds["oauth_clients"][0];
    let secret = inst.path("sn.secret");
    std::fs::write(&secret, client["client_secret"].as_str().unwrap()).unwrap();
    let pw = inst.path("sn.password");
    std::fs::write(&pw, password).unwrap();
    let mut args = vec![
        "account",
        "link",
        name,
        "--servicenow",
        "--instance-url",
        &sn.base_url,
        "--oauth-password",
        "--client-id",
        client["client_id"].as_str().unwrap(),
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--user",
        user,
        "--password-file",
        pw.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    inst.ok(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detractor_opens_one_servicenow_incident_and_every_response_is_upserted_in_salesforce() {
    use xmbridge_sim::qualtrics::survey::QuestionKind;
    use xmbridge_workflows::store::event_id;
    const WF: &str = "response-to-salesforce";
    let inst = support::install();
    let q = sim().await;
    inst.connect(&q, "q").await;
    let sf = salesforce().await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    link_oauth(&inst, &sf, "sf-prod", &["--as", "pat"]).await;
    let (sn, creds) = servicenow().await;
    let out = link_sn(&inst, &sn, &creds, "sn-prod", &["--as", "pat"]).await;
    assert!(
        out.contains("linked servicenow account sn-prod for pat (oauth-password"),
        "{out}"
    );
    let listed = inst.ok(&["account", "list", "--as", "pat"]).await;
    assert!(
        listed.contains("sn-prod") && listed.contains("servicenow"),
        "{listed}"
    );
    let survey = q.sim.surveys[0].id.clone();
    let nps = q.sim.surveys[0]
        .questions
        .iter()
        .find(|x| x.kind == QuestionKind::Nps)
        .unwrap()
        .qid
        .clone();
    inst.ok(&[
        "workflow",
        "add",
        "--template",
        WF,
        "--set",
        &format!("survey_id={survey}"),
        "--set",
        "salesforce_account=sf-prod",
        "--set",
        "servicenow_account=sn-prod",
        "--set",
        &format!("nps_question={nps}"),
    ])
    .await;
    let (mut child, _url) = start_runner(&inst, &["--retry-base-ms", "50"]);
    let http = reqwest::Client::new();
    let token = q.sim.cfg.admin_token();
    let respond = |score: u32| {
        let http = http.clone();
        let url = format!("{}/surveys/{survey}/responses", q.api_url());
        let token = token.clone();
        let nps = nps.clone();
        async move {
            let v: Value = http
                .post(url)
                .header("X-API-TOKEN", token)
                .json(&json!({"values": {nps: score}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["result"]["responseId"].as_str().unwrap().to_string()
        }
    };
    let detractor = respond(3).await;
    let promoter = respond(9).await;
    let st = wait_done(&inst, WF, 2).await;
    assert_eq!(st.counts.get(&EventState::Done), Some(&2), "{st:?}");

    let upserted = |recs: &[Value], rid: &str| {
        recs.iter()
            .filter(|r| r["Response_Id__c"] == json!(rid))
            .count()
    };
    let recs = sf.records("Survey_Response__c").await;
    assert_eq!(upserted(&recs, &detractor), 1, "{recs:?}");
    assert_eq!(upserted(&recs, &promoter), 1, "{recs:?}");
    let nps_of = |rid: &str| {
        recs.iter()
            .find(|r| r["Response_Id__c"] == json!(rid))
            .map(|r| r["NPS__c"].as_f64())
    };
    assert_eq!(nps_of(&detractor), Some(Some(3.0)));
    assert_eq!(nps_of(&promoter), Some(Some(9.0)));

    // One incident, keyed by the step's delivery key; none for the promoter.
    let detractor_key = format!("{}:incident", event_id(WF, &detractor));
    let promoter_event = event_id(WF, &promoter);
    let ours = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .filter(|r| r["correlation_id"].as_str().is_some_and(|c| !c.is_empty()))
            .collect()
    };
    let incidents = ours(sn_table(&sn, "incident").await);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["correlation_id"], json!(detractor_key));
    // The live event carries the survey's name, as `workflow test` shows it (it was empty:
    // "… on ").
    let survey_name = q.sim.surveys[0].name.clone();
    assert_eq!(
        incidents[0]["short_description"],
        json!(format!("Detractor feedback (NPS 3) on {survey_name}")),
        "{incidents:?}"
    );
    assert!(
        !incidents.iter().any(|r| r["correlation_id"]
            .as_str()
            .is_some_and(|c| c.starts_with(&promoter_event))),
        "{incidents:?}"
    );

    // Qualtrics redelivers the detractor's event: accepted, and nothing new is created.
    let delivered = |rid: &str| {
        q.sim
            .eventsubs
            .deliveries()
            .iter()
            .filter(|d| d.response_id == rid && d.status == "delivered")
            .count()
    };
    assert_eq!(delivered(&detractor), 1);
    xmbridge_sim::qualtrics::eventsubs::publish_completed_response(
        &q.sim,
        &survey,
        &detractor,
        q.sim.clock.now_ms(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered(&detractor) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered(&detractor), 2, "the redelivery was not accepted");
    // Let the workers run a few polls over the store before looking again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let st = inst.store().status(WF).unwrap();
    assert_eq!(st.counts.get(&EventState::Done), Some(&2), "{st:?}");
    assert_eq!(st.counts.values().sum::<u64>(), 2, "{st:?}");
    let recs = sf.records("Survey_Response__c").await;
    assert_eq!(upserted(&recs, &detractor), 1, "{recs:?}");
    assert_eq!(ours(sn_table(&sn, "incident").await).len(), 1);

    // ServiceNow revokes the account's tokens: the next detractor pauses the workflow with the
    // re-authorize command, and is delivered once after re-authorization.
    let user = creds["integration_user"].as_str().unwrap();
    let revoke = http
        .post(format!("{}/_sim/tokens/revoke", sn.base_url))
        .json(&json!({"user": user}))
        .send()
        .await
        .unwrap();
    assert!(revoke.status().is_success());
    let late = respond(1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ws = loop {
        let ws = inst.store().workflow_state(WF).unwrap();
        if ws.paused || Instant::now() > deadline {
            break ws;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ws.paused, "{ws:?}");
    assert_eq!(ws.reason.as_deref(), Some("account token expired"));
    assert_eq!(
        ws.fix.as_deref(),
        Some("xmbridge account link sn-prod --refresh --as pat")
    );
    // The worker records the pause, then hands the event back: wait for the second step.
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let state = inst.store().get_event(&event_id(WF, &late)).unwrap().state;
        if state != EventState::Running || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state, EventState::Pending);
    let pw = inst.path("sn.password");
    let out = inst
        .ok(&[
            "account",
            "link",
            "sn-prod",
            "--refresh",
            "--password-file",
            pw.to_str().unwrap(),
            "--as",
            "pat",
        ])
        .await;
    assert!(out.contains(&format!("resumed workflow {WF}")), "{out}");
    let st = wait_done(&inst, WF, 3).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(st.counts.get(&EventState::Done), Some(&3), "{st:?}");
    let incidents = ours(sn_table(&sn, "incident").await);
    assert_eq!(incidents.len(), 2, "{incidents:?}");
    let late_key = format!("{}:incident", event_id(WF, &late));
    assert_eq!(
        incidents
            .iter()
            .filter(|r| r["correlation_id"] == json!(late_key))
            .count(),
        1
    );
    let recs = sf.records("Survey_Response__c").await;
    assert_eq!(upserted(&recs, &late), 1, "{recs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_servicenow_incident_sends_its_caller_a_qualtrics_survey() {
    incident_closed_survey(true).await;
}

/// The spoke's default directory property is missing, so the event dies; the admin sets it and
/// replays. The read-only step that reads the property runs again (it used to keep its output
/// from before the fix and die again); the writing steps run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_fix_reads_again_and_delivers() {
    incident_closed_survey(false).await;
}

async fn incident_closed_survey(directory_property_at_start: bool) {
    const WF: &str = "incident-closed-survey";
    let inst = support::install();
    let q = sim().await;
    inst.connect(&q, "q").await;
    let dir = q.sim.directory.default_directory_id();
    let sn = xmbridge_test_kit::sim::servicenow(xmbridge_sim::servicenow::SnConfig {
        qualtrics_directory: directory_property_at_start.then(|| dir.clone()),
        ..Default::default()
    })
    .await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", sn.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    link_sn(&inst, &sn, &creds, "sn-prod", &["--as", "pat"]).await;

    // The Qualtrics side: a mailing list and the admin's invite message.
    let action = |args: Vec<String>| {
        let inst = &inst;
        async move {
            let mut a = vec!["action".to_string()];
            a.extend(args);
            let out = inst.ok(&argv(&a)).await;
            serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        }
    };
    let ml = action(vec![
        "create-mailing-list".into(),
        "--input".into(),
        "name=Closed incidents".into(),
        "--input".into(),
        format!("directory_id={dir}"),
    ])
    .await["mailingListId"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let token = q.sim.cfg.admin_token();
    let me: Value = http
        .get(format!("{}/whoami", q.api_url()))
        .header("X-API-TOKEN", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = me["result"]["userId"].as_str().unwrap().to_string();
    let invites = action(vec![
        "look-up-library-messages-stream".into(),
        "--input".into(),
        format!("library_id={me}"),
        "--input".into(),
        "category=invite".into(),
    ])
    .await;
    let msg = invites[0]["id"].as_str().unwrap().to_string();
    let survey = q.sim.surveys[0].id.clone();
    inst.ok(&argv(&[
        "workflow".into(),
        "add".into(),
        "--template".into(),
        WF.into(),
        "--set".into(),
        format!("survey_id={survey}"),
        "--set".into(),
        format!("library_id={me}"),
        "--set".into(),
        format!("message_id={msg}"),
        "--set".into(),
        format!("mailing_list_id={ml}"),
        "--set".into(),
        "from_email=servicedesk@example.test".into(),
        "--set".into(),
        "from_name=Service Desk".into(),
    ]))
    .await;
    let (mut child, url) = start_runner(&inst, &["--retry-base-ms", "50"]);
    let secret_file = inst.home().join("hooks").join(format!("{WF}.secret"));
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secret_file), 0o600);
        assert_eq!(mode(&inst.home().join("hooks")), 0o700);
    }
    // The same secret as `workflow endpoint --secret` prints.
    let printed = inst.ok(&["workflow", "endpoint", WF, "--secret"]).await;
    assert_eq!(printed.trim(), secret.trim());

    // The ServiceNow admin's business rule: incident closed → POST to xmbridge with the secret.
    let rule = http
        .post(format!("{}/_sim/business-rule", sn.base_url))
        .json(&json!({
            "name": "Survey on close", "table": "incident", "condition": "state=7",
            "on": "update", "url": format!("{url}/hooks/servicenow/{WF}"),
            "headers": {"X-Xmbridge-Secret": secret.trim()},
        }))
        .send()
        .await
        .unwrap();
    assert!(rule.status().is_success(), "{}", rule.status());

    // Close an open incident whose caller has an email.
    let users = sn_table(&sn, "sys_user").await;
    let email_of = |id: &str| {
        users
            .iter()
            .find(|u| u["sys_id"] == json!(id))
            .and_then(|u| u["email"].as_str())
            .filter(|e| !e.is_empty())
            .map(str::to_string)
    };
    let reference = |v: &Value| {
        v.as_str()
            .or_else(|| v["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let incident = sn_table(&sn, "incident")
        .await
        .into_iter()
        .find(|i| i["state"] != json!("7") && email_of(&reference(&i["caller_id"])).is_some())
        .expect("an open incident with a caller");
    let sys_id = incident["sys_id"].as_str().unwrap().to_string();
    let caller = reference(&incident["caller_id"]);
    let email = email_of(&caller).unwrap();
    let admin_pw = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!("admin"))
        .unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = http
        .patch(format!("{}/api/now/table/incident/{sys_id}", sn.base_url))
        .basic_auth("admin", Some(&admin_pw))
        .json(&json!({"state": "7", "close_code": "Solved (Permanently)", "close_notes": "done"}))
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    if !directory_property_at_start {
        // No directory anywhere: the contact cannot be written, the event is dead.
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            let st = inst.store().status(WF).unwrap();
            if !st.dead.is_empty() || Instant::now() > deadline {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(st.dead.len(), 1, "{st:?}");
        assert!(
            st.dead[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains("director")),
            "{st:?}"
        );
        // The admin sets the spoke's property, then replays.
        let set = http
            .post(format!("{}/_sim/properties", sn.base_url))
            .json(&json!({"sn_qualtrics_spoke.qualtrics_directory": dir}))
            .send()
            .await
            .unwrap();
        assert!(set.status().is_success(), "{}", set.status());
        let out = inst.ok(&["workflow", "replay", WF, "--all"]).await;
        assert!(out.contains("1 dead event(s)"), "{out}");
    }
    let st = wait_done(&inst, WF, 1).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(st.counts.get(&EventState::Done), Some(&1), "{st:?}");

    // The caller is a member of the list, and one distribution to the list was created.
    let members = q.sim.directory.mailing_list_members(&ml);
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].email, email);
    assert_eq!(members[0].ext_ref, caller);
    let contacts = contacts_by_ext_ref(&q, &dir).await;
    assert_eq!(contacts.get(&caller), Some(&1), "{contacts:?}");
    let d: Value = http
        .get(format!("{}/distributions?surveyId={survey}", q.api_url()))
        .header("X-API-TOKEN", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent: Vec<&Value> = d["result"]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["recipients"]["mailingListId"] == json!(ml))
        .collect();
    assert_eq!(sent.len(), 1, "{d}");
    assert_eq!(
        sent[0]["headers"]["fromEmail"],
        json!("servicedesk@example.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicenow_accounts_link_with_basic_and_client_credentials_and_refuse_bad_credentials() {
    let inst = support::install();
    let (sn, creds) = servicenow().await;
    let user = creds["integration_user"].as_str().unwrap();
    let password = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!(user))
        .unwrap()["password"]
        .as_str()
        .unwrap();
    let pw = inst.path("pw");
    std::fs::write(&pw, password).unwrap();
    let wrong = inst.path("wrong");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let basic = |name: &'static str, file: PathBuf| {
        let url = sn.base_url.clone();
        let user = user.to_string();
        move || {
            vec![
                "account".to_string(),
                "link".into(),
                name.into(),
                "--servicenow".into(),
                "--instance-url".into(),
                url,
                "--basic-user".into(),
                user,
                "--password-file".into(),
                file.to_str().unwrap().into(),
            ]
        }
    };
    let out = inst.ok(&argv(&basic("sn-basic", pw.clone())())).await;
    assert!(
        out.contains("linked servicenow account sn-basic for pat (basic"),
        "{out}"
    );
    let (_, err) = inst.fails(&argv(&basic("sn-bad", wrong.clone())())).await;
    assert!(
        err.contains("ServiceNow refused the credentials of account sn-bad"),
        "{err}"
    );
    assert!(!err.contains(password), "the password leaked: {err}");
    // Nothing half-linked stays behind.
    let listed = inst.ok(&["account", "list", "--as", "pat"]).await;
    assert!(
        listed.contains("sn-basic") && !listed.contains("sn-bad"),
        "{listed}"
    );
    let row = listed.lines().find(|l| l.starts_with("sn-basic")).unwrap();
    assert!(
        row.contains("servicenow") && row.contains("basic") && row.contains("ok"),
        "{row}"
    );
    // No sign-in named: a usage error.
    let (code, err) = inst
        .fails(&[
            "account",
            "link",
            "sn-x",
            "--servicenow",
            "--instance-url",
            &sn.base_url,
        ])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--basic-user U, --oauth-password, or --client-credentials"),
        "{err}"
    );

    // Client credentials, once the instance allows the grant.
    let client = &creds["oauth_clients"][0];
    let secret = inst.path("cs");
    std::fs::write(&secret, client["client_secret"].as_str().unwrap()).unwrap();
    let cc = [
        "account",
        "link",
        "sn-cc",
        "--servicenow",
        "--instance-url",
        &sn.base_url,
        "--client-credentials",
        "--client-id",
        client["client_id"].as_str().unwrap(),
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--brand",
    ];
    let (_, err) = inst.fails(&cc).await;
    assert!(
        err.contains("refused the credentials of account sn-cc"),
        "{err}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/properties", sn.base_url))
        .json(&json!({"glide.oauth.inbound.client.credential.grant_type.enabled": "true"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let out = inst.ok(&cc).await;
    assert!(
        out.contains(
            "linked servicenow account sn-cc for pat as a brand account (client-credentials"
        ),
        "{out}"
    );
    // Re-authorizing a Basic account checks the stored password again.
    let out = inst
        .ok(&["account", "link", "sn-basic", "--refresh", "--as", "pat"])
        .await;
    assert!(out.contains("re-authorized account sn-basic"), "{out}");
    let (_, err) = inst
        .fails(&[
            "account",
            "link",
            "sn-basic",
            "--refresh",
            "--password-file",
            wrong.to_str().unwrap(),
            "--as",
            "pat",
        ])
        .await;
    assert!(
        err.contains("refused the credentials of account sn-basic"),
        "{err}"
    );
}

/// `account list` said "ok" for a revoked token until a workflow used it. `account test` proves
/// the credentials now (a Salesforce login too: a refresh and one call), `account list` says
/// when, and a refused token shows EXPIRED. `account rename` moves the account and is refused
/// while a workflow step names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_test_says_when_credentials_were_proven_and_rename_moves_the_account() {
    let inst = support::install();
    let sf = salesforce().await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    link_oauth(&inst, &sf, "sf-prod", &[]).await;
    let row = |list: &str, name: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{list}"))
            .to_string()
    };
    let list = inst.ok(&["account", "list"]).await;
    assert!(list.contains("STATUS"), "{list}");
    assert!(row(&list, "sf-prod").contains("not tested"), "{list}");

    let out = inst.ok(&["account", "test", "sf-prod"]).await;
    assert!(
        out.contains("account sf-prod: ok: Salesforce accepted"),
        "{out}"
    );
    let list = inst.ok(&["account", "list"]).await;
    assert!(row(&list, "sf-prod").contains("ok, tested 20"), "{list}");
    // The test refreshed through the same sink as a delivery: the next test works as well.
    inst.ok(&["account", "test", "sf-prod"]).await;

    // Salesforce revokes the tokens: the test says so at once, and the list too.
    sf.admin(
        reqwest::Method::POST,
        "/_sim/tokens/revoke",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let (code, err) = inst.fails(&["account", "test", "sf-prod"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("xmbridge account link sf-prod --refresh --as"),
        "{err}"
    );
    let list = inst.ok(&["account", "list"]).await;
    assert!(row(&list, "sf-prod").contains("EXPIRED"), "{list}");

    // Rename: the account, its state and its secrets move; the old name is gone.
    let out = inst.ok(&["account", "rename", "sf-prod", "sf-main"]).await;
    assert!(out.contains("account sf-prod is now sf-main"), "{out}");
    let list = inst.ok(&["account", "list"]).await;
    assert!(row(&list, "sf-main").contains("EXPIRED"), "{list}");
    assert!(!list.contains("sf-prod"), "{list}");
    // Re-authorized under its new name, it tests ok again (its sealed secrets moved with it).
    link_oauth(&inst, &sf, "sf-main", &["--refresh"]).await;
    inst.ok(&["account", "test", "sf-main"]).await;

    // A workflow step names it: renaming would break the workflow, so it is refused.
    let wf = inst.path("wf.toml");
    std::fs::write(
        &wf,
        r#"
[[workflow]]
name = "to-sf"
[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"
[[workflow.step]]
name = "upsert"
action = "salesforce.upsert"
account = "sf-main"
[workflow.step.mapping]
object = "Survey_Response__c"
external_id_field = "Response_Id__c"
external_id = "response.id"
[workflow.step.mapping.fields]
Survey_Id__c = "survey.id"
"#,
    )
    .unwrap();
    inst.ok(&["workflow", "add", "--file", wf.to_str().unwrap()])
        .await;
    let (code, err) = inst
        .fails(&["account", "rename", "sf-main", "sf-other"])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("account sf-main is named by the steps of workflow(s) to-sf"),
        "{err}"
    );
    inst.run(&["account", "rename", "sf-main", "bad name"])
        .await
        .fails(2, "bad name");
}

/// A running `workflow run` kept delivering with the definition it started with after the
/// owner replaced it. It now picks up the change within a few seconds: the next event runs the
/// new definition, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_process_delivers_with_the_definition_as_changed() {
    let inst = support::install().user("pat");
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    let survey = h.sim.surveys[0].id.clone();
    let definition = |email: &str| {
        format!(
            r#"[[workflow]]
name = "responses"
owner = "pat"

[workflow.trigger]
type = "qualtrics-response"
survey_id = "{survey}"

[[workflow.step]]
name = "contact"
action = "create-contact"
[workflow.step.inputs]
directory_id = "'{dir}'"
email = "'{email}'"
extRef = "response.id"
"#
        )
    };
    let file = inst.file("responses.toml", &definition("first@example.com"));
    inst.ok(&["workflow", "add", "--file", file.to_str().unwrap()])
        .await;
    let (mut child, _url) = start_runner(&inst, &[]);
    let http = reqwest::Client::new();
    let token = h.sim.cfg.admin_token();
    let respond = || {
        let (http, token, url) = (
            http.clone(),
            token.clone(),
            format!("{}/surveys/{survey}/responses", h.api_url()),
        );
        async move {
            let created: Value = http
                .post(url)
                .header("X-API-TOKEN", &token)
                .json(&json!({"values": {}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            created["result"]["responseId"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let email_of = |rid: String| {
        let (http, token) = (http.clone(), token.clone());
        let url = format!("{}/directories/{dir}/contacts?pageSize=100", h.api_url());
        async move {
            let body: Value = http
                .get(url)
                .header("X-API-TOKEN", token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["result"]["elements"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["extRef"] == json!(rid))
                .and_then(|c| c["email"].as_str())
                .map(str::to_string)
        }
    };
    let first = respond().await;
    assert_eq!(
        wait_done(&inst, "responses", 1)
            .await
            .counts
            .get(&EventState::Done),
        Some(&1)
    );
    assert_eq!(email_of(first).await.as_deref(), Some("first@example.com"));

    // The owner replaces the definition while the process runs.
    let file = inst.file("responses.toml", &definition("second@example.com"));
    inst.ok(&[
        "workflow",
        "add",
        "--file",
        file.to_str().unwrap(),
        "--replace",
    ])
    .await;
    // The process looks every RELOAD_EVERY; the response is sent once a look is surely due
    // (twice the period, with room for a busy machine).
    tokio::time::sleep(xmbridge_runtime::workflow::RELOAD_EVERY * 2 + Duration::from_secs(1)).await;
    let second = respond().await;
    let st = wait_done(&inst, "responses", 2).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(st.counts.get(&EventState::Done), Some(&2), "{st:?}");
    assert_eq!(
        email_of(second).await.as_deref(),
        Some("second@example.com"),
        "the event ran the definition the process started with"
    );
}

/// Salesforce keeps 5 approvals per user and connected app: a sixth login of the same
/// Salesforce user silently revokes the oldest. The link says which linked account that was,
/// and that account shows EXPIRED at once (a test proves Salesforce refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_approval_of_one_salesforce_user_names_the_account_it_revoked() {
    let inst = support::install();
    let sf = salesforce().await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    // Five accounts of the same Salesforce user and app, linked by three local users.
    for (name, user) in [
        ("sf-1", "pat"),
        ("sf-2", "pat"),
        ("sf-3", "sam"),
        ("sf-4", "sam"),
        ("sf-5", "kim"),
    ] {
        let out = link_oauth(&inst, &sf, name, &["--as", user]).await;
        assert!(!out.contains("warning"), "{out}");
    }
    let out = link_oauth(&inst, &sf, "sf-6", &["--as", "kim"]).await;
    assert!(
        out.contains("warning: Salesforce keeps 5 approvals per user and connected app"),
        "{out}"
    );
    assert!(out.contains("account sf-1 (owner pat)"), "{out}");
    let list = inst.ok(&["account", "list", "--as", "pat"]).await;
    let row = list.lines().find(|l| l.starts_with("sf-1 ")).unwrap();
    assert!(row.contains("EXPIRED"), "{list}");
    // Salesforce really revoked it; the next one still works.
    inst.run(&["account", "test", "sf-1", "--as", "pat"])
        .await
        .fails(1, "xmbridge account link sf-1 --refresh");
    inst.ok(&["account", "test", "sf-2", "--as", "pat"]).await;
    // A re-login counts too. sf-2 logging in again takes its own old approval's place: no one
    // else loses theirs.
    let out = link_oauth(&inst, &sf, "sf-2", &["--refresh", "--as", "pat"]).await;
    assert!(!out.contains("warning"), "{out}");
    inst.ok(&["account", "test", "sf-3", "--as", "sam"]).await;
    // sf-1 logging in again is a sixth approval once more: now sf-3's is the oldest.
    let out = link_oauth(&inst, &sf, "sf-1", &["--refresh", "--as", "pat"]).await;
    assert!(out.contains("account sf-3 (owner sam)"), "{out}");
    inst.run(&["account", "test", "sf-3", "--as", "sam"])
        .await
        .fails(1, "xmbridge account link sf-3 --refresh");
    inst.ok(&["account", "test", "sf-1", "--as", "pat"]).await;
}

/// `workflow test` used to end "preflight passed" for a Salesforce step it had not checked (no
/// describe file) and the delivery then died on a permission. Without a describe file it now
/// describes the object live as the step's own linked account: the admin's account passes, a
/// Standard User's is told what is missing, an owner without an account is a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_test_checks_salesforce_permissions_as_the_linked_user() {
    let inst = support::install();
    let sf = salesforce().await;
    let approve = |user: &'static str| {
        let sf = &sf;
        async move {
            sf.admin(
                reqwest::Method::POST,
                "/_sim/oauth/auto-approve",
                json!({"user": user}),
            )
            .await;
        }
    };
    approve("admin@acme.sim").await;
    link_oauth(&inst, &sf, "sf-admin", &["--as", "pat"]).await;
    approve("standard@acme.sim").await;
    link_oauth(&inst, &sf, "sf-standard", &["--as", "sam"]).await;
    let definition = |name: &str, owner: &str, account: &str| {
        format!(
            r#"[[workflow]]
name = "{name}"
owner = "{owner}"
[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"
[[workflow.step]]
name = "upsert"
action = "salesforce.upsert"
account = "{account}"
[workflow.step.mapping]
object = "Survey_Response__c"
external_id_field = "Response_Id__c"
external_id = "response.id"
[workflow.step.mapping.fields]
Survey_Id__c = "survey.id"
NPS__c = "number(response.values.QID1)"
"#
        )
    };
    for (name, owner, account) in [
        ("as-admin", "pat", "sf-admin"),
        ("as-standard", "sam", "sf-standard"),
        ("as-nobody", "kim", "sf-admin"),
    ] {
        let f = inst.file(&format!("{name}.toml"), &definition(name, owner, account));
        inst.ok(&[
            "workflow",
            "add",
            "--file",
            f.to_str().unwrap(),
            "--as",
            owner,
        ])
        .await;
    }
    let event = inst.file(
        "event.json",
        &json!({"response": {"id": "R_1", "values": {"QID1": 3}},
                "survey": {"id": "SV_abc", "name": "NPS"}})
        .to_string(),
    );
    let test = |wf: &'static str| workflow_test(&inst, wf, &event);
    // Fully checked, live, as the admin: a real pass.
    let r = test("as-admin").await;
    r.expect(0, &["checks: ok", "preflight passed"]);
    assert!(!r.stdout().contains("not checked"), "{}", r.stdout());
    // The Standard User may not create or edit the object: problems, exit 1.
    test("as-standard").await.expect(
        1,
        &["the linked Salesforce user needs Create on Survey_Response__c"],
    );
    // Without "API Enabled" the user cannot call the API at all: a problem, with the fix.
    sf.admin(
        reqwest::Method::POST,
        "/_sim/profiles/Standard%20User",
        json!({"api_enabled": false}),
    )
    .await;
    test("as-standard").await.expect(
        1,
        &["the linked user may not use the API", "\"API Enabled\""],
    );
    // kim owns no account and was granted none: the delivery would fail, and the test says so.
    test("as-nobody").await.expect(
        1,
        &[
            "workflow owner kim may not use account sf-admin",
            "preflight found 1 problem",
        ],
    );
}

/// `account link --salesforce --no-browser`: the login URL is opened elsewhere and the address
/// the browser was sent to is pasted back; the account is linked and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_account_links_without_a_browser_from_the_pasted_redirect() {
    use std::io::{BufRead, Write};
    let inst = support::install();
    let sf = salesforce().await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let secret = inst.path("sf.secret");
    std::fs::write(&secret, sf.creds["client_secret"].as_str().unwrap()).unwrap();
    let mut child = inst
        .cmd(&[
            "account",
            "link",
            "sf-remote",
            "--salesforce",
            "--login-url",
            &sf.h.base_url,
            "--client-id",
            sf.creds["client_id"].as_str().unwrap(),
            "--client-secret-file",
            secret.to_str().unwrap(),
            "--no-browser",
            "--timeout",
            "30",
            "--as",
            "pat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("no login URL printed").unwrap();
        if line.starts_with("http") {
            break line;
        }
    };
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    // The browser on another machine: the simulator approves and redirects to 127.0.0.1, a page
    // that does not load there; its address is copied and pasted.
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = web.get(&url).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(back.contains("/oauth/callback?"), "{back}");
    writeln!(child.stdin.take().unwrap(), "{back}").unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let printed = rest.join().unwrap();
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("linked salesforce account sf-remote for pat"),
        "{printed}"
    );
    inst.ok(&["account", "test", "sf-remote", "--as", "pat"])
        .await;
}

/// `workflow test` used to call every ServiceNow write "not checked". It now checks, as the
/// step's linked ServiceNow user and without writing: that the table exists and is readable,
/// that every field written exists (ServiceNow would silently drop an unknown one), and create
/// access from the user's roles and the table's ACLs — where the instance lets the user read
/// them; where it does not, the step stays "not checked" with what to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_test_checks_servicenow_table_and_field_access_as_the_linked_user() {
    let inst = support::install();
    let (sn, creds) = servicenow().await;
    link_sn(&inst, &sn, &creds, "sn-int", &["--as", "pat"]).await;
    let acl = |rule: Value| {
        let url = format!("{}/_sim/acl", sn.base_url);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&rule)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    let incident = inst.file(
        "incident.toml",
        r#"[[workflow]]
name = "incident"
owner = "pat"
[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"
[[workflow.step]]
name = "open"
action = "servicenow.create-incident"
account = "sn-int"
[workflow.step.inputs]
short_description = "'Detractor on {{ survey.name }}'"
urgency = "'2'"
"#,
    );
    let contact = inst.file(
        "contact.toml",
        r#"[[workflow]]
name = "contact"
owner = "pat"
[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"
[[workflow.step]]
name = "record"
action = "servicenow.create-record"
account = "sn-int"
[workflow.step.mapping]
object = "customer_contact"
[workflow.step.mapping.fields]
email = "'pat@example.com'"
u_qualtrics_idd = "response.id"
"#,
    );
    for f in [&incident, &contact] {
        inst.ok(&[
            "workflow",
            "add",
            "--file",
            f.to_str().unwrap(),
            "--as",
            "pat",
        ])
        .await;
    }
    let event = inst.file(
        "event.json",
        &json!({"response": {"id": "R_1", "values": {}}, "survey": {"id": "SV_abc", "name": "NPS"}})
            .to_string(),
    );
    let test = |wf: &'static str| workflow_test(&inst, wf, &event);
    // A base instance lets only security_admin read ACLs: create access is not checked, and the
    // note says what would make it checkable. Never a pass.
    test("incident").await.expect(
        3,
        &[
            "not checked: create access to incident: the linked ServiceNow user cannot read the ACLs",
            "let one of the user's roles (import_set_loader, itil, sn_qualtrics_spoke.user) read sys_security_acl and sys_security_acl_role",
            "preflight not checked: 1 step could not be checked",
        ],
    );
    // Let itil read them: the roles and ACLs say the user may create incidents — a real pass.
    for table in ["sys_security_acl", "sys_security_acl_role"] {
        acl(json!({"table": table, "operation": "read", "roles": ["security_admin", "itil"]}))
            .await;
    }
    let r = test("incident").await;
    r.expect(0, &["checks: ok", "preflight passed"]);
    assert!(!r.stdout().contains("not checked"), "{}", r.stdout());
    // A misspelt field would be dropped silently by ServiceNow: a problem, with the near name.
    test("contact").await.expect(
        1,
        &[
            "customer_contact has no field u_qualtrics_idd; did you mean u_qualtrics_id?",
            "ServiceNow ignores unknown fields on write",
        ],
    );
    // Create on incident now needs a role the user lacks: a problem naming the role.
    acl(json!({"table": "incident", "operation": "create", "roles": ["sn_incident_write"]})).await;
    test("incident").await.expect(
        1,
        &["the linked ServiceNow user needs Create on incident (a role its create ACL accepts: sn_incident_write)"],
    );
    // Without read access a delivery cannot look its record up before creating it.
    acl(json!({"table": "incident", "operation": "read", "roles": ["sn_incident_read"]})).await;
    test("incident")
        .await
        .expect(1, &["the linked ServiceNow user may not read incident"]);
}

/// A mapping that sets a record type is checked against the record types the linked user's
/// profile may use (the extension's "access to the needed Record Types"): available passes, one
/// the profile lacks is a problem naming it and the usable ones, an unknown id is a mapping error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_test_checks_the_record_type_a_salesforce_step_sets() {
    let inst = support::install();
    let sf = salesforce().await;
    sf.admin(
        reqwest::Method::POST,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    link_oauth(&inst, &sf, "sf-admin", &["--as", "pat"]).await;
    const DETRACTOR: &str = "0125g0000000001AAA";
    let definition = |name: &str, record_type: &str| {
        format!(
            r#"[[workflow]]
name = "{name}"
owner = "pat"
[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"
[[workflow.step]]
name = "upsert"
action = "salesforce.upsert"
account = "sf-admin"
[workflow.step.mapping]
object = "Survey_Response__c"
external_id_field = "Response_Id__c"
external_id = "response.id"
[workflow.step.mapping.fields]
Survey_Id__c = "survey.id"
RecordTypeId = "'{record_type}'"
"#
        )
    };
    for (name, rt) in [("detractor", DETRACTOR), ("unknown", "0125g0000000099AAA")] {
        let f = inst.file(&format!("{name}.toml"), &definition(name, rt));
        inst.ok(&[
            "workflow",
            "add",
            "--file",
            f.to_str().unwrap(),
            "--as",
            "pat",
        ])
        .await;
    }
    let event = inst.file(
        "event.json",
        &json!({"response": {"id": "R_1", "values": {}}, "survey": {"id": "SV_abc", "name": "NPS"}})
            .to_string(),
    );
    let test = |wf: &'static str| workflow_test(&inst, wf, &event);
    test("detractor")
        .await
        .expect(0, &["checks: ok", "preflight passed"]);
    test("unknown").await.expect(
        1,
        &[
            "Survey_Response__c has no record type 0125g0000000099AAA",
            "Detractor (0125g0000000001AAA)",
        ],
    );
    // The admin's profile loses the Detractor record type: the test says so before a delivery
    // meets INVALID_CROSS_REFERENCE_KEY.
    sf.admin(
        reqwest::Method::POST,
        "/_sim/profiles/System%20Administrator",
        json!({"record_types": {"Survey_Response__c": {"available": ["Promoter"], "default": "Promoter"}}}),
    )
    .await;
    test("detractor").await.expect(
        1,
        &[
            "the linked Salesforce user needs access to record type Detractor (0125g0000000001AAA) of Survey_Response__c",
            "the user may use: Promoter (0125g0000000002AAA)",
        ],
    );
}
