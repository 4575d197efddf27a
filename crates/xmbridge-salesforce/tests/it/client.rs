//! The Salesforce client against the Salesforce simulator over loopback: the web-server flow with
//! PKCE, refresh-and-replay on 401, the rotation sink, token-expired classification, upsert
//! outcomes, query paging, Collections and the error classes.

use reqwest::redirect::Policy;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xmbridge_salesforce::{
    ClientCredentials, OAuthApp, RefreshSink, SalesforceClient, SalesforceError, TokenProvider,
    UpsertOutcome, verify_signature,
};
use xmbridge_sim::SalesforceHandle;
use xmbridge_sim::salesforce::SalesforceConfig;

async fn sim() -> SalesforceHandle {
    xmbridge_test_kit::sim::salesforce(SalesforceConfig::default()).await
}

async fn admin(h: &SalesforceHandle, method: &str, path: &str, body: Value) -> Value {
    let c = reqwest::Client::new();
    let url = format!("{}{path}", h.base_url);
    let r = if method == "GET" {
        c.get(url)
    } else {
        c.post(url).json(&body)
    };
    let r = r.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn app(h: &SalesforceHandle) -> OAuthApp {
    let c = admin(h, "GET", "/_sim/credentials", json!({})).await;
    OAuthApp {
        login_url: h.base_url.clone(),
        client_id: c["client_id"].as_str().unwrap().into(),
        client_secret: SecretString::from(c["client_secret"].as_str().unwrap()),
        redirect_uri: "http://127.0.0.1:45678/oauth/callback".into(),
    }
}

/// Links `user` through the web-server flow (auto-approved) and returns the token response.
async fn link(
    h: &SalesforceHandle,
    app: &OAuthApp,
    user: &str,
) -> xmbridge_salesforce::TokenResponse {
    admin(h, "POST", "/_sim/oauth/auto-approve", json!({"user": user})).await;
    let req = app.authorize("api refresh_token").unwrap();
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let r = browser.get(&req.url).send().await.unwrap();
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], req.state);
    let t = app
        .exchange_code(&reqwest::Client::new(), &q["code"], &req.verifier)
        .await
        .unwrap();
    assert!(verify_signature(&app.client_secret, &t));
    t
}

#[derive(Default)]
struct Captured(Mutex<Vec<String>>);

impl RefreshSink for Captured {
    fn save(&self, t: &SecretString) -> Result<(), xmbridge_auth::SinkError> {
        self.0.lock().unwrap().push(t.expose_secret().to_string());
        Ok(())
    }
}

async fn client_for(
    h: &SalesforceHandle,
    user: &str,
    sink: Option<Arc<dyn RefreshSink>>,
) -> (SalesforceClient, OAuthApp, String) {
    let app = app(h).await;
    let t = link(h, &app, user).await;
    let rt = t.refresh_token.clone().unwrap();
    let provider = TokenProvider::web_server(reqwest::Client::new(), app.clone(), rt.clone(), sink)
        .with_access(t.access_token.clone(), t.instance_url.clone())
        .await;
    (
        SalesforceClient::new(reqwest::Client::new(), Arc::new(provider)),
        app,
        rt.expose_secret().to_string(),
    )
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn refreshes_once_on_401_and_replays() {
    let h = sim().await;
    let (c, _, _) = client_for(&h, "admin@acme.sim", None).await;
    let d = c.describe("Survey_Response__c").await.unwrap();
    assert!(d.field("Response_Id__c").unwrap().is_upsert_key());
    admin(&h, "POST", "/_sim/tokens/expire", json!({})).await;
    let id = c
        .create("Contact", &obj(json!({"LastName": "After401"})))
        .await
        .unwrap();
    assert!(id.starts_with("003"));
    let usage = c.api_usage().unwrap();
    assert_eq!(usage.max, 15_000);
    // The replay worked: the record exists once.
    let rows = c
        .query_all("SELECT Id FROM Contact WHERE LastName = 'After401'")
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn rotated_refresh_tokens_go_to_the_sink() {
    let h = sim().await;
    admin(&h, "POST", "/_sim/oauth/policy", json!({"rotation": true})).await;
    let sink = Arc::new(Captured::default());
    let (c, app, first) = client_for(&h, "admin@acme.sim", Some(sink.clone())).await;
    for round in 1..=2 {
        admin(&h, "POST", "/_sim/tokens/expire", json!({})).await;
        c.describe("Contact").await.ok();
        c.forget_describe("Contact");
        c.describe("Contact").await.unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), round);
    }
    let stored = sink.0.lock().unwrap().clone();
    assert_ne!(stored[0], first);
    assert_ne!(stored[1], stored[0]);
    // The old token is dead; the last stored one works.
    let http = reqwest::Client::new();
    let err = app
        .refresh(&http, &SecretString::from(first))
        .await
        .unwrap_err();
    assert!(matches!(err, SalesforceError::TokenExpired { .. }), "{err}");
    app.refresh(&http, &SecretString::from(stored[1].clone()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revoked_account_is_token_expired_and_not_retryable() {
    let h = sim().await;
    let (c, _, _) = client_for(&h, "admin@acme.sim", None).await;
    admin(
        &h,
        "POST",
        "/_sim/tokens/revoke",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let err = c.describe("Contact").await.unwrap_err();
    assert!(matches!(err, SalesforceError::TokenExpired { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("account token expired"));
    assert!(err.to_string().contains("expired access/refresh token"));
}

#[tokio::test]
async fn upsert_says_created_or_updated_and_reports_multiple_matches() {
    let h = sim().await;
    let (c, _, _) = client_for(&h, "integration@acme.sim", None).await;
    let body = obj(json!({"NPS__c": 2, "Comment__c": "late"}));
    let first = c
        .upsert("Survey_Response__c", "Response_Id__c", "R_1", &body)
        .await
        .unwrap();
    let UpsertOutcome::Created(id) = first else {
        panic!("{first:?}")
    };
    let again = c
        .upsert("Survey_Response__c", "Response_Id__c", "R_1", &body)
        .await
        .unwrap();
    assert_eq!(again, UpsertOutcome::Updated(Some(id.clone())));
    let old = SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            creds(&h).await,
        )),
    )
    .with_version("v45.0");
    assert_eq!(
        old.upsert("Survey_Response__c", "Response_Id__c", "R_1", &body)
            .await
            .unwrap(),
        UpsertOutcome::Updated(None)
    );
    for _ in 0..2 {
        c.create(
            "Contact",
            &obj(json!({"LastName": "Twin", "Qualtrics_Contact_Id__c": "SAME"})),
        )
        .await
        .unwrap();
    }
    let err = c
        .upsert(
            "Contact",
            "Qualtrics_Contact_Id__c",
            "SAME",
            &obj(json!({"Title": "x"})),
        )
        .await
        .unwrap_err();
    let SalesforceError::MultipleMatches { ids } = &err else {
        panic!("{err}")
    };
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|i| i.starts_with("003") && i.len() == 18));
    assert!(!err.is_retryable());
    let got = c.get("Survey_Response__c", &id, &["NPS__c"]).await.unwrap();
    assert_eq!(got["NPS__c"], 2.0);
    c.delete("Survey_Response__c", &id).await.unwrap();
    let err = c.delete("Survey_Response__c", &id).await.unwrap_err();
    assert_eq!(err.codes(), vec!["ENTITY_IS_DELETED"]);
}

async fn creds(h: &SalesforceHandle) -> ClientCredentials {
    let c = admin(h, "GET", "/_sim/credentials", json!({})).await;
    ClientCredentials {
        token_url: h.token_url(),
        client_id: c["client_id"].as_str().unwrap().into(),
        client_secret: SecretString::from(c["client_secret"].as_str().unwrap()),
    }
}

#[tokio::test]
async fn query_streams_through_next_records_url() {
    let h = sim().await;
    let c = SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            creds(&h).await,
        )),
    );
    for chunk in 0..3 {
        let recs: Vec<Value> = (0..150)
            .map(|i| json!({"attributes": {"type": "Lead"}, "LastName": format!("P{chunk}-{i}"), "Company": "Paging Inc"}))
            .collect();
        let out = c.collection_create(recs, true).await.unwrap();
        assert!(out.iter().all(|r| r.success), "{out:?}");
    }
    let mut pager = c
        .query("SELECT Id, LastName FROM Lead WHERE Company = 'Paging Inc'")
        .batch_size(200);
    let mut sizes = Vec::new();
    while let Some(page) = pager.next_page().await.unwrap() {
        sizes.push(page.len());
    }
    assert_eq!(sizes, vec![200, 200, 50]);
    assert_eq!(pager.total_size, Some(450));
    assert_eq!(
        c.query_all("SELECT Id FROM Lead WHERE Company = 'Paging Inc'")
            .await
            .unwrap()
            .len(),
        450
    );
    let err = c.query_all("SELECT FROM Lead").await.unwrap_err();
    assert_eq!(err.codes(), vec!["MALFORMED_QUERY"]);
    // Collections upsert: per-record results with `created`.
    let out = c
        .collection_upsert(
            "Survey_Response__c",
            "Response_Id__c",
            vec![
                json!({"Response_Id__c": "C1", "NPS__c": 1}),
                json!({"Response_Id__c": "C1b", "NPS__c": "x"}),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!((out[0].success, out[0].created), (true, Some(true)));
    assert!(!out[1].success);
    assert_eq!(out[1].errors[0].error_code, "JSON_PARSER_ERROR");
}

#[tokio::test]
async fn errors_are_classified_permanent_transient_or_limits() {
    let h = sim().await;
    let (c, _, _) = client_for(&h, "admin@acme.sim", None).await;
    let err = c
        .create("Contact", &obj(json!({"FirstName": "x"})))
        .await
        .unwrap_err();
    let SalesforceError::Permanent { status, errors } = &err else {
        panic!("{err}")
    };
    assert_eq!(*status, 400);
    assert_eq!(errors[0].error_code, "REQUIRED_FIELD_MISSING");
    assert_eq!(errors[0].fields, vec!["LastName"]);
    assert!(!err.is_retryable());
    admin(&h, "POST", "/_sim/faults", json!({"server_error_storm": 1})).await;
    let err = c
        .create("Contact", &obj(json!({"LastName": "x"})))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SalesforceError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    admin(&h, "POST", "/_sim/faults", json!({"unable_to_lock_row": 1})).await;
    let err = c
        .create("Contact", &obj(json!({"LastName": "x"})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SalesforceError::Transient { .. }) && err.is_retryable(),
        "{err}"
    );
    admin(
        &h,
        "POST",
        "/_sim/faults",
        json!({"throttle_429": 1, "retry_after_secs": 3}),
    )
    .await;
    let err = c
        .create("Contact", &obj(json!({"LastName": "x"})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SalesforceError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)),
        "{err}"
    );
    admin(&h, "POST", "/_sim/faults", json!({})).await;
    let used = c.api_usage().unwrap().used;
    admin(&h, "POST", "/_sim/limits", json!({"max": used + 1})).await;
    c.create("Contact", &obj(json!({"LastName": "last allowed"})))
        .await
        .unwrap();
    let err = c
        .create("Contact", &obj(json!({"LastName": "over"})))
        .await
        .unwrap_err();
    let SalesforceError::LimitExceeded { usage, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(usage.map(|u| u.used), Some(used + 1));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn describe_reflects_the_linked_users_permissions() {
    let h = sim().await;
    let (c, _, _) = client_for(&h, "standard@acme.sim", None).await;
    let d = c.describe("Survey_Response__c").await.unwrap();
    assert!(!d.createable);
    assert!(d.fields.iter().all(|f| !f.createable));
    let contact = c.describe("Contact").await.unwrap();
    let key = contact.field("Qualtrics_Contact_Id__c").unwrap();
    assert!(!key.createable && !key.updateable);
    assert!(contact.field("LastName").unwrap().required_on_create());
    let case = c.describe("Case").await.unwrap();
    assert!(case.field("Qualtrics_Delivery_Key__c").is_none());
    assert!(
        case.field("Status")
            .unwrap()
            .picklist()
            .contains(&"New".to_string())
    );
}

#[tokio::test]
async fn client_credentials_refused_is_token_expired() {
    let h = sim().await;
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"client_credentials": false}),
    )
    .await;
    let c = SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            creds(&h).await,
        )),
    );
    let err = c.describe("Contact").await.unwrap_err();
    assert!(matches!(err, SalesforceError::TokenExpired { .. }), "{err}");
    let mut wrong = creds(&h).await;
    wrong.client_secret = SecretString::from("nope");
    let c = SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            wrong,
        )),
    );
    let err = c.describe("Contact").await.unwrap_err();
    assert!(
        matches!(err, SalesforceError::OAuth { ref error, .. } if error == "invalid_client"),
        "{err}"
    );
    assert!(!format!("{err:?} {c:?}").contains("nope"));
}

#[tokio::test]
async fn concurrent_401s_cause_one_refresh() {
    let h = sim().await;
    // With rotation on, two refreshes racing would kill each other's token: one must happen.
    admin(&h, "POST", "/_sim/oauth/policy", json!({"rotation": true})).await;
    let sink = Arc::new(Captured::default());
    let (c, _, _) = client_for(&h, "admin@acme.sim", Some(sink.clone())).await;
    admin(&h, "POST", "/_sim/tokens/expire", json!({})).await;
    let c = Arc::new(c);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.query_all("SELECT Id FROM Account").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().len(), 5);
    }
    assert_eq!(
        sink.0.lock().unwrap().len(),
        1,
        "one refresh for eight 401s"
    );
}

/// Also a rough loopback throughput figure (printed with `--nocapture`).
#[tokio::test]
async fn many_upserts_land_once_each() {
    let h = sim().await;
    let c = Arc::new(SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            creds(&h).await,
        )),
    ));
    let n = 400;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(4) {
                    // Every key twice: the second is an update, never a second record.
                    for _ in 0..2 {
                        c.upsert(
                            "Survey_Response__c",
                            "Response_Id__c",
                            &format!("R_{i:05}"),
                            &obj(json!({"NPS__c": i % 11})),
                        )
                        .await
                        .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} upserts in {secs:.2} s: {:.0}/s over loopback (debug build, 4 workers)",
        2 * n,
        2.0 * n as f64 / secs
    );
    let rows = c
        .query_all("SELECT Id FROM Survey_Response__c")
        .await
        .unwrap();
    assert_eq!(rows.len(), n);
}

#[tokio::test]
async fn max_age_renews_before_use() {
    let h = sim().await;
    admin(&h, "POST", "/_sim/oauth/policy", json!({"rotation": true})).await;
    let app = app(&h).await;
    let t = link(&h, &app, "admin@acme.sim").await;
    let sink = Arc::new(Captured::default());
    let provider = TokenProvider::web_server(
        reqwest::Client::new(),
        app,
        t.refresh_token.clone().unwrap(),
        Some(sink.clone()),
    )
    .with_max_age(Duration::ZERO)
    .with_access(t.access_token.clone(), t.instance_url.clone())
    .await;
    let c = SalesforceClient::new(reqwest::Client::new(), Arc::new(provider));
    for n in 1..=3 {
        c.query_all("SELECT Id FROM Account LIMIT 1").await.unwrap();
        assert_eq!(
            sink.0.lock().unwrap().len(),
            n,
            "a renewal before each call"
        );
    }
}
