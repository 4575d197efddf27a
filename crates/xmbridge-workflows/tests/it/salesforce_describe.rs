//! Preflight against the Salesforce simulator's live describe: the template's mapping checks out
//! for a user with full access, and a standard user's missing permissions are named.

use reqwest::redirect::Policy;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use xmbridge_actions::System;
use xmbridge_salesforce::{ClientCredentials, OAuthApp, SalesforceClient, TokenProvider};
use xmbridge_sim::SalesforceHandle;
use xmbridge_sim::salesforce::SalesforceConfig;
use xmbridge_workflows::definition::{EventContext, FileKind, Step, Workflow, parse_file};
use xmbridge_workflows::mapping::{SalesforceSchema, TargetSchema};
use xmbridge_workflows::preflight::{Describers, Outcome, preflight};

async fn admin(h: &SalesforceHandle, method: &str, path: &str, body: Value) -> Value {
    let c = reqwest::Client::new();
    let url = format!("{}{path}", h.base_url);
    let r = if method == "GET" {
        c.get(url)
    } else {
        c.post(url).json(&body)
    };
    let r = r.send().await.expect("the simulator answers");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.expect("the simulator answers JSON")
}

/// A client linked as `user` through the web-server flow (auto-approved by the simulator).
async fn linked(h: &SalesforceHandle, user: &str) -> SalesforceClient {
    let c = admin(h, "GET", "/_sim/credentials", json!({})).await;
    let app = OAuthApp {
        login_url: h.base_url.clone(),
        client_id: c["client_id"].as_str().expect("client_id").into(),
        client_secret: SecretString::from(c["client_secret"].as_str().expect("client_secret")),
        redirect_uri: "http://127.0.0.1:45678/oauth/callback".into(),
    };
    admin(h, "POST", "/_sim/oauth/auto-approve", json!({"user": user})).await;
    let req = app.authorize("api refresh_token").expect("authorize URL");
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("HTTP client");
    let r = browser
        .get(&req.url)
        .send()
        .await
        .expect("the simulator answers");
    let location = r.headers()["location"].to_str().expect("ASCII Location");
    let loc = url::Url::parse(location).expect("the redirect is a URL");
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    let t = app
        .exchange_code(&reqwest::Client::new(), &q["code"], &req.verifier)
        .await
        .expect("the code is exchanged");
    let provider = TokenProvider::web_server(
        reqwest::Client::new(),
        app,
        t.refresh_token.clone().expect("a refresh token"),
        None,
    )
    .with_access(t.access_token.clone(), t.instance_url.clone())
    .await;
    SalesforceClient::new(reqwest::Client::new(), Arc::new(provider))
}

/// A server-to-server connection (client credentials).
async fn server_to_server(h: &SalesforceHandle) -> SalesforceClient {
    let c = admin(h, "GET", "/_sim/credentials", json!({})).await;
    let creds = ClientCredentials {
        token_url: h.token_url(),
        client_id: c["client_id"].as_str().expect("client_id").into(),
        client_secret: SecretString::from(c["client_secret"].as_str().expect("client_secret")),
    };
    SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            creds,
        )),
    )
}

struct Sf(SalesforceSchema);
impl Describers for Sf {
    fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema> {
        (step.system == System::Salesforce).then_some(&self.0 as &dyn TargetSchema)
    }
}

fn workflow() -> Workflow {
    let t = xmbridge_workflows::catalog::template("response-to-salesforce")
        .expect("the built-in template");
    let params: BTreeMap<String, String> = [
        ("owner", "alice"),
        ("survey_id", "SV_1"),
        ("salesforce_account", "sf-prod"),
        ("servicenow_account", "sn-prod"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let text = t.instantiate(&params).expect("every parameter given");
    parse_file(
        "t",
        &text,
        FileKind::WorkflowFile,
        &xmbridge_actions::Registry::builtin(),
    )
    .expect("the template parses")
    .remove(0)
}

fn detractor() -> EventContext {
    // The shape `xmbridge_runtime::workflow::enriched_event` builds.
    EventContext::new(json!({
        "response": {"id": "R_1a2b3c", "surveyId": "SV_1",
                     "values": {"QID1": "3", "endDate": "2026-11-30T08:00:00Z"}},
        "embedded": {},
        "contact": null,
        "survey": {"id": "SV_1", "name": "NPS"},
    }))
}

#[tokio::test]
async fn full_access_passes_and_a_standard_user_is_told_what_is_missing() {
    let h = xmbridge_test_kit::sim::salesforce(SalesforceConfig::default()).await;
    let w = workflow();
    let reg = xmbridge_actions::Registry::builtin();

    let ok = Sf(SalesforceSchema {
        client: Arc::new(server_to_server(&h).await),
    });
    let r = preflight(&w, &detractor(), &reg, &ok).await;
    // The Salesforce step passes its checks; the ServiceNow step cannot be checked, so the
    // whole is "not checked", with no problem.
    assert_eq!(r.problem_count(), 0, "{}", r.to_text());
    assert!(matches!(r.steps[0].outcome, Outcome::Send { .. }));
    assert!(r.steps[0].notes.is_empty(), "{:?}", r.steps[0].notes);
    assert!(!r.steps[0].unchecked);

    let standard = Sf(SalesforceSchema {
        client: Arc::new(linked(&h, "standard@acme.sim").await),
    });
    let r = preflight(&w, &detractor(), &reg, &standard).await;
    let msgs: Vec<&str> = r.steps[0]
        .problems
        .iter()
        .map(|p| p.message.as_str())
        .collect();
    assert!(
        msgs.contains(&"the linked Salesforce user needs Create on Survey_Response__c"),
        "{}",
        r.to_text()
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("the linked Salesforce user needs Edit on Survey_Response__c")),
        "{}",
        r.to_text()
    );
    assert!(
        msgs.contains(
            &"the linked Salesforce user needs field Edit access on Survey_Response__c.NPS__c"
        ),
        "{}",
        r.to_text()
    );
    assert!(!r.passed());

    let unknown = ok.0.describe("No_Such_Object__c").await.unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "No_Such_Object__c: no such object for the linked user (it does not exist or the user cannot see it)"
    );
}
