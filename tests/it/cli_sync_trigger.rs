//! The `sync-responses` trigger end to end: the real binary, the Qualtrics simulator over
//! loopback, a SQLite destination and the state store in a temporary XMBRIDGE_HOME. A first load
//! triggers nothing (by default); a response added afterwards becomes exactly one outbox event,
//! re-runs add none, and `workflow run --once` delivers it.

use serde_json::{Value, json};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_workflows::store::{EventSource, Store, event_id};

use crate::support;
use support::{Install, StateStore};

/// The test's workflow: each new response of `survey` creates a contact in `dir`.
fn write_synced_workflow(inst: &Install, survey: &str, dir: &str) {
    inst.write_workflow(
        "synced.toml",
        &format!(
            r#"[[workflow]]
name = "synced"
owner = "pat"

[workflow.trigger]
type = "sync-responses"
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
}

async fn outbox_counts(inst: &Install) -> Value {
    inst.json(&["workflow", "status", "synced", "--json"]).await["counts"].clone()
}

async fn sim() -> SimHandle {
    let cfg = SimConfig {
        seed: 7,
        surveys: 2,
        responses: 30,
        contacts: 0,
        rate_limit_per_min: 0,
        ..SimConfig::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

/// Contacts of `dir` whose extRef is `ext`.
async fn contacts_with_ext_ref(h: &SimHandle, dir: &str, ext: &str) -> usize {
    let http = reqwest::Client::new();
    let mut url = format!("{}/directories/{dir}/contacts?pageSize=100", h.api_url());
    let mut n = 0;
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
        n += body["result"]["elements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["extRef"] == ext)
            .count();
        match body["result"]["nextPage"].as_str() {
            Some(next) if !next.is_empty() => url = next.to_string(),
            _ => return n,
        }
    }
}

/// A new response to `survey`, added through the simulator's API; its id.
async fn add_response(h: &SimHandle, survey: &str) -> String {
    let created: Value = reqwest::Client::new()
        .post(format!("{}/surveys/{survey}/responses", h.api_url()))
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .json(&json!({"values": {"QID1": 1}}))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_added_after_a_sync_becomes_one_event_and_is_delivered() {
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let survey = h.sim.surveys[0].id.clone();
    let dir = h.sim.directory.default_directory_id();
    write_synced_workflow(&inst, &survey, &dir);
    let dest = format!("sqlite:{}", inst.path("q.db").display());

    // The first load is history, not news: no event.
    let out = inst.ok(&["sync", "q", "--destination", &dest]).await;
    assert!(out.contains("workflow events: 0 new"), "{out}");
    assert_eq!(outbox_counts(&inst).await["pending"], 0);

    let rid = add_response(&h, &survey).await;

    let out = inst.ok(&["sync", "q", "--destination", &dest]).await;
    assert!(out.contains("workflow events: 1 new"), "{out}");
    let counts = outbox_counts(&inst).await;
    assert_eq!(counts["pending"], 1, "{counts}");
    let total: u64 = counts
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 1, "{counts}");

    // The event is the webhook's payload, keyed on the response and its version.
    let store = inst.store();
    let st = store.status("synced").unwrap();
    assert!(st.dead.is_empty());
    let due = store
        .lease_due(
            "probe",
            i64::MAX / 2,
            std::time::Duration::from_millis(1),
            10,
        )
        .unwrap();
    assert_eq!(due.len(), 1);
    let ev = &due[0];
    assert_eq!(ev.source, EventSource::Sync);
    assert!(
        ev.dedupe_key.starts_with(&format!("{rid}@")),
        "{}",
        ev.dedupe_key
    );
    assert!(ev.dedupe_key.len() > rid.len() + 1, "{}", ev.dedupe_key);
    assert_eq!(ev.id, event_id("synced", &ev.dedupe_key));
    assert_eq!(ev.payload["qualtrics_msg"]["ResponseID"], json!(rid));
    assert_eq!(ev.payload["qualtrics_msg"]["SurveyID"], json!(survey));
    // Hand the probe's lease back.
    store
        .release(&ev.id, ev.lease.as_deref().unwrap(), 0)
        .unwrap();
    drop(store);

    // A re-run, and a --full re-export, add nothing.
    let out = inst.ok(&["sync", "q", "--destination", &dest]).await;
    assert!(out.contains("workflow events: 0 new"), "{out}");
    let out = inst
        .ok(&["sync", "q", "--destination", &dest, "--full"])
        .await;
    assert!(out.contains("workflow events: 0 new"), "{out}");
    assert_eq!(outbox_counts(&inst).await["pending"], 1);

    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(out.contains("delivered 1 event(s)"), "{out}");
    let counts = outbox_counts(&inst).await;
    assert_eq!(counts["done"], 1, "{counts}");
    assert_eq!(counts["pending"], 0, "{counts}");
    assert_eq!(contacts_with_ext_ref(&h, &dir, &rid).await, 1);

    // The response changes in Qualtrics (new lastModifiedDate): one more event, keyed on the
    // new version (docs/workflows.md: new or changed responses trigger).
    let r = reqwest::Client::new()
        .put(format!("{}/responses/{rid}", h.api_url()))
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .json(&json!({"surveyId": survey, "embeddedData": {"segment": "9"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let out = inst.ok(&["sync", "q", "--destination", &dest]).await;
    assert!(out.contains("workflow events: 1 new"), "{out}");
    let counts = outbox_counts(&inst).await;
    assert_eq!(
        (counts["done"].as_u64(), counts["pending"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_on_first_load_enqueues_the_history_and_no_triggers_enqueues_nothing() {
    let inst = support::install();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let survey = h.sim.surveys[0].id.clone();
    let dir = h.sim.directory.default_directory_id();
    write_synced_workflow(&inst, &survey, &dir);
    let off = format!("sqlite:{}", inst.path("off.db").display());
    let out = inst
        .ok(&["sync", "q", "--destination", &off, "--no-triggers"])
        .await;
    assert!(!out.contains("workflow events"), "{out}");
    assert_eq!(outbox_counts(&inst).await["pending"], 0);

    let dest = format!("sqlite:{}", inst.path("q.db").display());
    let out = inst
        .ok(&[
            "sync",
            "q",
            "--destination",
            &dest,
            "--trigger-on-first-load",
        ])
        .await;
    let db = rusqlite::Connection::open(inst.path("q.db")).unwrap();
    let responses: i64 = db
        .query_row(
            "SELECT count(*) FROM qualtrics_survey_response WHERE survey_id = ?1",
            [&survey],
            |r| r.get(0),
        )
        .unwrap();
    assert!(responses > 0);
    assert!(
        out.contains(&format!("workflow events: {responses} new")),
        "{responses}\n{out}"
    );
    assert_eq!(outbox_counts(&inst).await["pending"], responses);
}

/// Two installations (two machines, say) on one PostgreSQL state store, with the same master
/// key and the same workflow file: a connection added on one syncs there, the new response
/// becomes one event in the shared outbox, and the other installation delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_one_postgres_state_store_share_connections_and_the_outbox() {
    let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_sync_trigger_pg").await else {
        return;
    };
    let url = db.url();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let mut a = support::install();
    a.master_key = Some(key.into());
    let mut b = support::install();
    b.master_key = Some(key.into());
    let h = sim().await;
    let token = a.file("q.token", &format!("{}\n", h.sim.cfg.admin_token()));
    a.ok(&[
        "connection",
        "add",
        "qualtrics",
        "q",
        "--no-test",
        "--url",
        &h.base_url,
        "--api-token-file",
        token.to_str().expect("path"),
        "--state",
        url,
    ])
    .await;
    let survey = h.sim.surveys[0].id.clone();
    let dir = h.sim.directory.default_directory_id();
    write_synced_workflow(&a, &survey, &dir);
    write_synced_workflow(&b, &survey, &dir);
    let dest = format!("sqlite:{}", a.path("q.db").display());
    let sync = ["sync", "q", "--destination", &dest, "--state", url];

    let out = a.ok(&sync).await;
    assert!(out.contains("workflow events: 0 new"), "{out}");
    let rid = add_response(&h, &survey).await;
    let out = a.ok(&sync).await;
    assert!(out.contains("workflow events: 1 new"), "{out}");

    // The other installation sees the event, and delivers it.
    let status = ["workflow", "status", "synced", "--json", "--state", url];
    assert_eq!(b.json(&status).await["counts"]["pending"], 1);
    let out = b.ok(&["workflow", "run", "--once", "--state", url]).await;
    assert!(out.contains("delivered 1 event(s)"), "{out}");
    let counts = a.json(&status).await["counts"].clone();
    assert_eq!(
        (counts["done"].as_u64(), counts["pending"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(contacts_with_ext_ref(&h, &dir, &rid).await, 1);
    for inst in [&a, &b] {
        assert!(
            !inst.home().join("state.db").exists(),
            "nothing was kept in XMBRIDGE_HOME"
        );
    }
}
