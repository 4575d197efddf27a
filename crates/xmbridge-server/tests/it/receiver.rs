//! The receiver over loopback HTTP: answers only after the commit, drops duplicates, refuses bad
//! signatures, secrets and organizations.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha512;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmbridge_actions::{ActionContext, ActionError, ActionSpec, Registry, System};
use xmbridge_server::receiver::{
    Hook, Hooks, Limits, REFUSED, Receiver, SERVICENOW_SECRET_HEADER, router,
};
use xmbridge_vault::SecretString;
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{EventState, Store, WorkflowStore};
use xmbridge_workflows::worker::{
    Connector, Engine, EngineConfig, Health, Plan, RunMode, WorkerState,
};

fn sign(key: &str, msg: &str) -> String {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

const SF_TOKEN: &str = "endpoint-token-123";

struct Running {
    dir: tempfile::TempDir,
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// A second, independent connection: sees only what was committed.
    fn fresh_store(&self) -> WorkflowStore {
        WorkflowStore::open(self.dir.path().join("state.db")).unwrap()
    }
    fn total(&self, workflow: &str) -> u64 {
        self.fresh_store()
            .status(workflow)
            .unwrap()
            .counts
            .values()
            .sum()
    }
}

fn hooks() -> Hooks {
    let mut hooks = Hooks::new();
    hooks.insert(
        "nps".into(),
        Hook::Qualtrics {
            survey_id: "SV_1".into(),
            shared_key: SecretString::from("shared-key"),
        },
    );
    hooks.insert(
        "case-closed".into(),
        Hook::Salesforce {
            token: SecretString::from(SF_TOKEN),
            org_id: Some("00Dxx0000000001EAA".into()),
        },
    );
    hooks.insert(
        "any-org".into(),
        Hook::Salesforce {
            token: SecretString::from(SF_TOKEN),
            org_id: None,
        },
    );
    hooks.insert(
        "incident".into(),
        Hook::ServiceNow {
            table: "incident".into(),
            secret: SecretString::from("sn-secret"),
        },
    );
    hooks
}

async fn serve(dir: tempfile::TempDir, health: Health, limits: Limits) -> Running {
    let store = Arc::new(WorkflowStore::open(dir.path().join("state.db")).unwrap());
    let app = router(Outbox::new(store), hooks(), health, limits);
    let r = Receiver::bind("127.0.0.1:0".parse().unwrap(), limits)
        .await
        .unwrap();
    let base = r.base_url();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(r.serve(app, async {
        let _ = rx.await;
    }));
    Running {
        dir,
        base,
        _stop: tx,
    }
}

async fn start() -> Running {
    serve(
        tempfile::tempdir().unwrap(),
        Health::default(),
        Limits::default(),
    )
    .await
}

fn qualtrics_form(survey: &str, response: &str, key: &str) -> Vec<(String, String)> {
    let msg = json!({"Status": "Complete", "SurveyID": survey, "ResponseID": response,
        "CompletedDate": "2026-11-30 08:00:00", "BrandID": "acme", "CreatorID": "UR_1",
        "ResponseEventContext": ""})
    .to_string();
    vec![
        (
            "Topic".into(),
            format!("surveyengine.completedResponse.{survey}"),
        ),
        ("HMAC".into(), sign(key, &msg)),
        ("MSG".into(), msg),
    ]
}

#[tokio::test]
async fn qualtrics_events_are_committed_before_the_200_and_duplicates_dropped() {
    let r = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/qualtrics/nps", r.base);
    let form = qualtrics_form("SV_1", "R_1", "shared-key");
    let resp = http.post(&url).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Committed: another connection sees it the moment the answer arrived.
    let st = r.fresh_store().status("nps").unwrap();
    assert_eq!(st.counts.get(&EventState::Pending), Some(&1));
    // Qualtrics retries the same event: acknowledged, not stored twice.
    let resp = http.post(&url).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let st = r.fresh_store().status("nps").unwrap();
    assert_eq!(st.counts.get(&EventState::Pending), Some(&1));

    // Bad signature: refused, nothing stored.
    let bad = qualtrics_form("SV_1", "R_2", "wrong-key");
    let resp = http.post(&url).form(&bad).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let bad_signature = resp.text().await.unwrap();
    // Another survey: 200 and ignored.
    let other = qualtrics_form("SV_2", "R_3", "shared-key");
    let resp = http.post(&url).form(&other).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ignored");
    assert_eq!(r.total("nps"), 1);
    // An unknown workflow gets exactly the answer of a bad signature: nothing tells whether
    // a workflow of that name exists.
    let resp = http
        .post(format!("{}/hooks/qualtrics/nope", r.base))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap(), bad_signature);
    assert_eq!(bad_signature, REFUSED);
}

const SOAP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>ORG</OrganizationId><ActionId>04kxx0000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <Notification><Id>04lxx0000000001AAA</Id>
    <sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>500xx0000000001AAA</sf:Id><sf:ContactEmail>pat@example.com</sf:ContactEmail>
    </sObject></Notification>
   <Notification><Id>04lxx0000000002AAA</Id>
    <sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>500xx0000000002AAA</sf:Id><sf:ContactEmail>sam@example.com</sf:ContactEmail>
    </sObject></Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#;

const LINKED_ORG: &str = "00Dxx0000000001EAA";

async fn post_soap(http: &reqwest::Client, url: &str, body: String) -> (u16, String) {
    let resp = http
        .post(url)
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn outbound_messages_need_the_endpoint_token_and_the_org_then_are_stored_and_acked() {
    let r = start().await;
    let http = reqwest::Client::new();
    let hook = format!("{}/hooks/salesforce/case-closed", r.base);
    let good = format!("{hook}?token={SF_TOKEN}");
    let (status, body) = post_soap(&http, &good, SOAP.replace("ORG", LINKED_ORG)).await;
    assert_eq!(status, 200);
    assert!(body.contains("<Ack>true</Ack>"), "{body}");
    assert_eq!(
        r.fresh_store()
            .status("case-closed")
            .unwrap()
            .counts
            .get(&EventState::Pending),
        Some(&2)
    );
    // Redelivered message: acked again, still two events.
    let (status, _) = post_soap(&http, &good, SOAP.replace("ORG", LINKED_ORG)).await;
    assert_eq!(status, 200);
    assert_eq!(r.total("case-closed"), 2);

    // Refusals: no token, a wrong one, an unknown workflow (with the right token), another org
    // (with the right token). All get the same SOAP fault and store nothing; none of them
    // reveals the linked organization.
    let refusals = [
        (hook.clone(), SOAP.replace("ORG", LINKED_ORG)),
        (
            format!("{hook}?token=wrong"),
            SOAP.replace("ORG", LINKED_ORG),
        ),
        (
            format!("{hook}?token={SF_TOKEN}x"),
            SOAP.replace("ORG", LINKED_ORG),
        ),
        (
            format!("{}/hooks/salesforce/nope?token={SF_TOKEN}", r.base),
            SOAP.replace("ORG", LINKED_ORG),
        ),
        (good.clone(), SOAP.replace("ORG", "00Dyy0000000009EAA")),
    ];
    let mut answers = Vec::new();
    for (url, body) in refusals {
        let (status, text) = post_soap(&http, &url, body).await;
        assert_eq!(status, 500, "{url}");
        assert!(text.contains("<soapenv:Fault>"), "{text}");
        assert!(text.contains(REFUSED), "{text}");
        assert!(!text.contains("00Dxx"), "the fault reveals the org: {text}");
        answers.push(text);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "refusals differ: {answers:?}"
    );
    assert_eq!(r.total("case-closed"), 2);
    assert_eq!(r.total("nope"), 0);

    // With the token, a malformed message may be told what is wrong.
    let (status, text) = post_soap(&http, &good, "<notifications>".into()).await;
    assert_eq!(status, 500);
    assert!(text.contains("malformed"), "{text}");
    // A hook without a known org accepts any org, but still only with the token.
    let any = format!("{}/hooks/salesforce/any-org", r.base);
    let (status, _) = post_soap(&http, &any, SOAP.replace("ORG", "00Dzz0000000003EAA")).await;
    assert_eq!(status, 500);
    let (status, _) = post_soap(
        &http,
        &format!("{any}?token={SF_TOKEN}"),
        SOAP.replace("ORG", "00Dzz0000000003EAA"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r.total("any-org"), 2);
}

#[tokio::test]
async fn servicenow_calls_need_the_shared_secret() {
    let r = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/servicenow/incident", r.base);
    let record = json!({"sys_id": "a1", "sys_updated_on": "2026-11-30 08:00:00", "state": "7"});
    let mut refusals = Vec::new();
    for (target, secret) in [
        (url.clone(), None),
        (url.clone(), Some("wrong")),
        (
            format!("{}/hooks/servicenow/nope", r.base),
            Some("sn-secret"),
        ),
    ] {
        let mut req = http.post(&target).json(&record);
        if let Some(s) = secret {
            req = req.header(SERVICENOW_SECRET_HEADER, s);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{target} {secret:?}");
        refusals.push(resp.text().await.unwrap());
    }
    assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{refusals:?}");
    assert!(refusals[0].contains(REFUSED), "{}", refusals[0]);
    assert_eq!(r.total("incident"), 0);
    let resp = http
        .post(&url)
        .header(SERVICENOW_SECRET_HEADER, "sn-secret")
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["result"]["duplicate"], false);
    let st = r.fresh_store().status("incident").unwrap();
    assert_eq!(st.counts.get(&EventState::Pending), Some(&1));
    let resp = http
        .post(&url)
        .header(SERVICENOW_SECRET_HEADER, "sn-secret")
        .json(&json!({"no": "id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// Reads until the server closes the connection; what it sent, or `None` if it is still open
/// after `patience`.
async fn closed_within(stream: &mut tokio::net::TcpStream, patience: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(patience, stream.read_to_end(&mut got)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_or_half_sent_requests_are_cut_off() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let r = serve(tempfile::tempdir().unwrap(), Health::default(), limits).await;
    let addr = r.base.trim_start_matches("http://").to_string();
    // Generous: the server must close long before this; a server without timeouts never does.
    let patience = Duration::from_secs(20);

    // Many connections that never finish their headers.
    let mut half = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /hooks/servicenow/incident HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half.push(s);
    }
    for s in &mut half {
        assert!(
            closed_within(s, patience).await.is_some(),
            "a connection with half-sent headers stayed open"
        );
    }
    // A connection that sends nothing at all.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut idle, patience).await.is_some());

    // Headers complete, body cut short: 408, and nothing stored.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /hooks/servicenow/incident HTTP/1.1\r\nHost: x\r\nx-xmbridge-secret: sn-secret\r\n\
          content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"sys_id\":",
    )
    .await
    .unwrap();
    let answer = closed_within(&mut s, patience)
        .await
        .expect("a half-sent body kept the connection open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(r.total("incident"), 0);

    // The receiver still answers normally.
    let resp = reqwest::Client::new()
        .post(format!("{}/hooks/servicenow/incident", r.base))
        .header(SERVICENOW_SECRET_HEADER, "sn-secret")
        .json(&json!({"sys_id": "a1", "sys_updated_on": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_body_above_the_limit_is_413() {
    let limits = Limits {
        max_body: 1024,
        ..Limits::default()
    };
    let r = serve(tempfile::tempdir().unwrap(), Health::default(), limits).await;
    let http = reqwest::Client::new();
    let big = json!({"sys_id": "a1", "pad": "x".repeat(4096)});
    let resp = http
        .post(format!("{}/hooks/servicenow/incident", r.base))
        .header(SERVICENOW_SECRET_HEADER, "sn-secret")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(r.total("incident"), 0);
}

/// Never called: the health test has no workflows.
struct NoConnector;

impl Connector for NoConnector {
    fn context<'a>(
        &'a self,
        _plan: &'a dyn Plan,
        _account: Option<&'a str>,
        spec: &'a ActionSpec,
    ) -> BoxFuture<'a, Result<(ActionContext, Option<String>), ActionError>> {
        Box::pin(async move {
            Err(ActionError::NotConfigured {
                action: spec.name.to_string(),
                system: System::Qualtrics,
                fix: "none in this test".into(),
            })
        })
    }
    fn enrich<'a>(
        &'a self,
        _plan: &'a dyn Plan,
        _payload: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move { Ok(Value::Object(Map::new())) })
    }
}

async fn healthz(base: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{base}/healthz")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn wait_health(base: &str, want: u16) -> String {
    for _ in 0..400 {
        let (status, text) = healthz(base).await;
        if status == want {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/healthz never answered {want}: {:?}", healthz(base).await);
}

#[tokio::test]
async fn healthz_says_when_delivery_workers_fail_and_when_they_recover() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Arc::new(WorkflowStore::open(&db).unwrap());
    let outbox = Outbox::new(store.clone());
    let engine = Arc::new(Engine::new(
        store,
        Arc::new(Registry::builtin()),
        Vec::new(),
        Arc::new(NoConnector),
        EngineConfig {
            workers: 2,
            poll: Duration::from_millis(20),
            ..EngineConfig::default()
        },
        outbox.wake_signal(),
    ));
    let health = engine.health();
    let r = serve(dir, health.clone(), Limits::default()).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let workers = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(RunMode::Forever, async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    let ok = wait_health(&r.base, 200).await;
    assert!(ok.contains("2 delivery worker(s) running"), "{ok}");

    // The outbox table disappears under the workers (a damaged store): every look fails.
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute_batch("ALTER TABLE wf_events RENAME TO wf_events_away")
        .unwrap();
    let sick = wait_health(&r.base, 503).await;
    assert!(
        sick.contains("failing") && sick.contains("wf_events"),
        "{sick}"
    );
    assert!(
        health
            .workers()
            .iter()
            .any(|w| matches!(w, WorkerState::Failing { .. })),
        "{:?}",
        health.workers()
    );
    // Repaired: the restarted workers run again and the process never stopped.
    raw.execute_batch("ALTER TABLE wf_events_away RENAME TO wf_events")
        .unwrap();
    let ok = wait_health(&r.base, 200).await;
    assert!(ok.contains("running"), "{ok}");
    let _ = stop_tx.send(());
    let summary = workers.await.unwrap().unwrap();
    assert_eq!(summary.done, 0);
}
