//! The receiver over loopback HTTP: answers only after the commit, drops duplicates, refuses bad
//! signatures, secrets and organizations.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha512;
use xmbridge_server::receiver::{Hook, Hooks, Receiver, SERVICENOW_SECRET_HEADER, router};
use xmbridge_vault::SecretString;
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{EventState, SqliteStore, Store};

fn sign(key: &str, msg: &str) -> String {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

struct Running {
    dir: tempfile::TempDir,
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// A second, independent connection: sees only what was committed.
    fn fresh_store(&self) -> SqliteStore {
        SqliteStore::open(self.dir.path().join("state.db")).unwrap()
    }
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("state.db")).unwrap());
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
            org_id: Some("00Dxx0000000001EAA".into()),
        },
    );
    hooks.insert(
        "incident".into(),
        Hook::ServiceNow {
            table: "incident".into(),
            secret: SecretString::from("sn-secret"),
        },
    );
    let app = router(Outbox::new(store), hooks);
    let r = Receiver::bind("127.0.0.1:0".parse().unwrap())
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

    // Bad signature: 401, nothing stored.
    let bad = qualtrics_form("SV_1", "R_2", "wrong-key");
    let resp = http.post(&url).form(&bad).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // Another survey: 200 and ignored.
    let other = qualtrics_form("SV_2", "R_3", "shared-key");
    let resp = http.post(&url).form(&other).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ignored");
    let st = r.fresh_store().status("nps").unwrap();
    assert_eq!(st.counts.values().sum::<u64>(), 1);
    // Unknown workflow.
    let resp = http
        .post(format!("{}/hooks/qualtrics/nope", r.base))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
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

#[tokio::test]
async fn outbound_messages_are_stored_then_acked_and_faults_are_soap() {
    let r = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/salesforce/case-closed", r.base);
    let post = |body: String| {
        http.post(&url)
            .header("content-type", "text/xml")
            .body(body)
            .send()
    };
    let resp = post(SOAP.replace("ORG", "00Dxx0000000001EAA"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains("<Ack>true</Ack>"), "{body}");
    let st = r.fresh_store().status("case-closed").unwrap();
    assert_eq!(st.counts.get(&EventState::Pending), Some(&2));
    // Redelivered message: acked again, still two events.
    let resp = post(SOAP.replace("ORG", "00Dxx0000000001EAA"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let st = r.fresh_store().status("case-closed").unwrap();
    assert_eq!(st.counts.get(&EventState::Pending), Some(&2));
    // Another org, malformed XML: SOAP fault, HTTP 500.
    for body in [
        SOAP.replace("ORG", "00Dyy0000000009EAA"),
        "<notifications>".into(),
    ] {
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), 500);
        let text = resp.text().await.unwrap();
        assert!(text.contains("<soapenv:Fault>"), "{text}");
    }
}

#[tokio::test]
async fn servicenow_calls_need_the_shared_secret() {
    let r = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/servicenow/incident", r.base);
    let record = json!({"sys_id": "a1", "sys_updated_on": "2026-11-30 08:00:00", "state": "7"});
    let resp = http.post(&url).json(&record).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .post(&url)
        .header(SERVICENOW_SECRET_HEADER, "wrong")
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
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
