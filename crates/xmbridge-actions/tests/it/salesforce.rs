//! The Salesforce actions against the Salesforce simulator over loopback: outputs, idempotency
//! by the delivery key, and the mapping of each failure onto retry / pause / dead letter.

use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use xmbridge_actions::salesforce::SalesforceConnection;
use xmbridge_actions::{ActionContext, ActionError, ActionRequest, Disposition, Registry};
use xmbridge_salesforce::{ClientCredentials, OAuthApp, SalesforceClient, TokenProvider};
use xmbridge_sim::SalesforceHandle;
use xmbridge_sim::salesforce::SalesforceConfig;

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

async fn setup() -> (SalesforceHandle, ActionContext) {
    let h = xmbridge_test_kit::sim::salesforce(SalesforceConfig::default()).await;
    let c = admin(&h, "GET", "/_sim/credentials", json!({})).await;
    let creds = ClientCredentials {
        token_url: h.token_url(),
        client_id: c["client_id"].as_str().unwrap().into(),
        client_secret: SecretString::from(c["client_secret"].as_str().unwrap()),
    };
    let client = SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(TokenProvider::client_credentials(
            reqwest::Client::new(),
            creds,
        )),
    );
    let ctx = ActionContext::new().with(SalesforceConnection {
        client: Arc::new(client),
        account: "sf-prod".into(),
    });
    (h, ctx)
}

async fn run(
    ctx: &ActionContext,
    name: &str,
    inputs: Value,
    key: Option<&str>,
) -> Result<Value, ActionError> {
    let reg = Registry::builtin();
    let action = reg.find(name).unwrap();
    action
        .run(
            ctx,
            ActionRequest {
                inputs: inputs.as_object().unwrap().clone(),
                delivery_key: key.map(str::to_string),
            },
        )
        .await
}

async fn count(h: &SalesforceHandle, object: &str) -> usize {
    admin(h, "GET", &format!("/_sim/records/{object}"), json!({})).await["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["IsDeleted"] == false)
        .count()
}

#[tokio::test]
async fn create_update_upsert_delete_and_query() {
    let (h, ctx) = setup().await;
    let out = run(
        &ctx,
        "salesforce.create",
        json!({"object": "Contact", "fields": {"LastName": "Okafor", "Email": "o@example.com"}}),
        None,
    )
    .await
    .unwrap();
    let id = out["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("003"));
    // With a key field, a retried create finds the first record instead of making a second.
    let keyed = json!({"object": "Survey_Response__c", "fields": {"NPS__c": 9}, "key_field": "Response_Id__c"});
    let a = run(&ctx, "salesforce.create", keyed.clone(), Some("ev7:create"))
        .await
        .unwrap();
    let b = run(&ctx, "salesforce.create", keyed, Some("ev7:create"))
        .await
        .unwrap();
    assert_eq!(
        (a["id"].clone(), b["created"].as_bool()),
        (b["id"].clone(), Some(false))
    );
    let out = run(
        &ctx,
        "salesforce.update",
        json!({"object": "Contact", "id": id, "fields": "{\"Title\": \"VP\"}"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out["updated"], true);
    let up = json!({"object": "Survey_Response__c", "external_id_field": "Response_Id__c", "external_id": "R_9", "fields": {"NPS__c": 4, "Contact__c": id}});
    let first = run(&ctx, "salesforce.upsert", up.clone(), Some("ev1:upsert"))
        .await
        .unwrap();
    assert_eq!(first["created"], true);
    let second = run(&ctx, "salesforce.upsert", up, Some("ev1:upsert"))
        .await
        .unwrap();
    assert_eq!(
        (second["created"].as_bool(), &second["id"]),
        (Some(false), &first["id"])
    );
    assert_eq!(count(&h, "Survey_Response__c").await, 2);
    let rows = run(
        &ctx,
        "salesforce.query",
        json!({"soql": format!("SELECT Id, Title FROM Contact WHERE Id = '{id}'")}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["Title"], "VP");
    let rows = run(
        &ctx,
        "salesforce.query",
        json!({"soql": "SELECT Id FROM Contact", "max_records": 2}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let del = json!({"object": "Contact", "id": id});
    assert_eq!(
        run(&ctx, "salesforce.delete", del.clone(), None)
            .await
            .unwrap()["deleted"],
        true
    );
    let again = run(&ctx, "salesforce.delete", del, None).await.unwrap();
    assert_eq!(again["already_deleted"], true, "a retried delete succeeds");
}

#[tokio::test]
async fn create_case_is_idempotent_by_delivery_key() {
    let (h, ctx) = setup().await;
    let before = count(&h, "Case").await;
    let inputs =
        json!({"fields": {"Subject": "Detractor: NPS 2", "Priority": "High", "Origin": "Survey"}});
    let a = run(
        &ctx,
        "salesforce.create-case",
        inputs.clone(),
        Some("evt-1:open-case"),
    )
    .await
    .unwrap();
    let b = run(
        &ctx,
        "salesforce.create-case",
        inputs.clone(),
        Some("evt-1:open-case"),
    )
    .await
    .unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        (a["created"].as_bool(), b["created"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(count(&h, "Case").await, before + 1);
    run(
        &ctx,
        "salesforce.create-case",
        inputs.clone(),
        Some("evt-2:open-case"),
    )
    .await
    .unwrap();
    assert_eq!(count(&h, "Case").await, before + 2);
    // A key field that is not an external id: query first, then create.
    let c = json!({"fields": {"Subject": "by description"}, "key_field": "Subject", "key": "by description"});
    let x = run(&ctx, "salesforce.create-case", c.clone(), None)
        .await
        .unwrap();
    let y = run(&ctx, "salesforce.create-case", c, None).await.unwrap();
    assert_eq!(x["id"], y["id"]);
    assert_eq!(y["created"], false);
    // No key at all: refused as bad input rather than risking duplicates.
    let e = run(
        &ctx,
        "salesforce.create-case",
        json!({"fields": {"Subject": "x"}}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ActionError::BadInput { .. }), "{e}");
}

#[tokio::test]
async fn failures_map_to_retry_pause_or_dead_letter() {
    let (h, ctx) = setup().await;
    // Validation errors: dead letter with the error array as details.
    let e = run(
        &ctx,
        "salesforce.create",
        json!({"object": "Contact", "fields": {"FirstName": "x"}}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    let ActionError::Permanent { details, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(
        details.as_ref().unwrap()[0]["error_code"],
        "REQUIRED_FIELD_MISSING"
    );
    // 300 multiple matches: dead letter naming the ids.
    for _ in 0..2 {
        run(&ctx, "salesforce.create", json!({"object": "Contact", "fields": {"LastName": "T", "Qualtrics_Contact_Id__c": "TWIN"}}), None).await.unwrap();
    }
    let e = run(&ctx, "salesforce.upsert", json!({"object": "Contact", "external_id_field": "Qualtrics_Contact_Id__c", "external_id": "TWIN", "fields": {}}), None).await.unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert!(e.to_string().contains("matches 2 records"), "{e}");
    // 5xx: retry.
    admin(&h, "POST", "/_sim/faults", json!({"server_error_storm": 1})).await;
    let e = run(
        &ctx,
        "salesforce.query",
        json!({"soql": "SELECT Id FROM Lead"}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Retry { after: None });
    // Daily limit: rate limited, retry.
    admin(&h, "POST", "/_sim/faults", json!({"limit_exceeded": 1})).await;
    let e = run(
        &ctx,
        "salesforce.query",
        json!({"soql": "SELECT Id FROM Lead"}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ActionError::RateLimited { .. }), "{e}");
    // Client credentials switched off and the session gone: pause with the re-link command.
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"client_credentials": false}),
    )
    .await;
    admin(&h, "POST", "/_sim/tokens/expire", json!({})).await;
    let e = run(
        &ctx,
        "salesforce.query",
        json!({"soql": "SELECT Id FROM Lead"}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Pause);
    assert!(
        e.to_string().contains("xmbridge account link sf-prod"),
        "{e}"
    );
    // Missing inputs and no connection.
    let e = run(
        &ctx,
        "salesforce.update",
        json!({"object": "Contact", "fields": {}}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ActionError::BadInput { .. }));
    let e = run(
        &ActionContext::new(),
        "salesforce.create",
        json!({"object": "Contact", "fields": {}}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Pause);
}

#[tokio::test]
async fn a_revoked_web_server_account_pauses_with_token_expired() {
    let (h, _) = setup().await;
    let c = admin(&h, "GET", "/_sim/credentials", json!({})).await;
    let app = OAuthApp {
        login_url: h.base_url.clone(),
        client_id: c["client_id"].as_str().unwrap().into(),
        client_secret: SecretString::from(c["client_secret"].as_str().unwrap()),
        redirect_uri: "http://127.0.0.1:1/oauth/callback".into(),
    };
    let provider = TokenProvider::web_server(
        reqwest::Client::new(),
        app,
        SecretString::from("5Aep861revoked"),
        None,
    );
    let ctx = ActionContext::new().with(Arc::new(SalesforceClient::new(
        reqwest::Client::new(),
        Arc::new(provider),
    )));
    let e = run(
        &ctx,
        "salesforce.create",
        json!({"object": "Contact", "fields": {"LastName": "x"}}),
        None,
    )
    .await
    .unwrap_err();
    let ActionError::TokenExpired { fix, .. } = &e else {
        panic!("{e}")
    };
    assert!(fix.contains("expired access/refresh token"), "{fix}");
    assert_eq!(e.disposition(), Disposition::Pause);
}
