//! The ServiceNow actions against the simulator over loopback HTTP.

use serde_json::{Map, Value, json};
use std::sync::Arc;
use xmbridge_actions::{ActionContext, ActionError, ActionRequest, Disposition, Registry};
use xmbridge_servicenow::{Auth, ServiceNowClient};
use xmbridge_sim::SnHandle;
use xmbridge_sim::servicenow::SnConfig;

async fn sim() -> SnHandle {
    xmbridge_test_kit::sim::servicenow(SnConfig::default()).await
}

fn password(h: &SnHandle, user: &str) -> String {
    let db = h.sim.db.lock();
    db.creds.user(user).unwrap().password.clone()
}

fn basic(h: &SnHandle, user: &str) -> ActionContext {
    let c = ServiceNowClient::new(
        &h.base_url,
        Auth::Basic {
            username: user.into(),
            password: password(h, user).into(),
        },
    )
    .unwrap();
    ActionContext::new().with(Arc::new(c))
}

fn oauth(h: &SnHandle) -> ActionContext {
    let (id, secret) = {
        let db = h.sim.db.lock();
        let c = &db.creds.clients[0];
        (c.client_id.clone(), c.client_secret.clone())
    };
    let c = ServiceNowClient::new(
        &h.base_url,
        Auth::Password {
            client_id: id,
            client_secret: secret.into(),
            username: "xmbridge.integration".into(),
            password: password(h, "xmbridge.integration").into(),
        },
    )
    .unwrap();
    ActionContext::new().with(c)
}

fn req(inputs: Value, key: Option<&str>) -> ActionRequest {
    ActionRequest {
        inputs: inputs.as_object().cloned().unwrap_or_else(Map::new),
        delivery_key: key.map(str::to_string),
    }
}

async fn run(ctx: &ActionContext, name: &str, r: ActionRequest) -> Result<Value, ActionError> {
    let reg = Registry::builtin();
    reg.find(name).unwrap().run(ctx, r).await
}

fn rows(h: &SnHandle, table: &str, field: &str, value: &str) -> Vec<Map<String, Value>> {
    let db = h.sim.db.lock();
    db.tables[table]
        .iter()
        .filter(|r| r.get(field).and_then(Value::as_str) == Some(value))
        .cloned()
        .collect()
}

#[tokio::test]
async fn create_incident_is_idempotent_with_the_delivery_key() {
    let h = sim().await;
    let ctx = oauth(&h);
    let inputs = json!({"short_description": "Detractor feedback (NPS 3)", "caller": "abel.tuter@example.com",
                        "urgency": "2", "impact": "2", "category": "inquiry"});
    let first = run(
        &ctx,
        "servicenow.create-incident",
        req(inputs.clone(), Some("evt-1/step-0")),
    )
    .await
    .unwrap();
    assert_eq!(first["created"], true);
    assert_eq!(first["record"]["priority"], "3");
    let abel = rows(&h, "sys_user", "user_name", "abel.tuter");
    assert_eq!(first["record"]["caller_id"]["value"], abel[0]["sys_id"]);
    // The retry after a lost answer finds the first record.
    let again = run(
        &ctx,
        "servicenow.create-incident",
        req(inputs, Some("evt-1/step-0")),
    )
    .await
    .unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["sys_id"], first["sys_id"]);
    assert_eq!(
        rows(&h, "incident", "correlation_id", "evt-1/step-0").len(),
        1
    );

    // An explicit correlation id wins over the delivery key.
    let out = run(
        &ctx,
        "servicenow.create-incident",
        req(
            json!({"short_description": "x", "correlation_id": "R_abc"}),
            Some("k"),
        ),
    )
    .await
    .unwrap();
    assert_eq!(out["record"]["correlation_id"], "R_abc");

    // Bad inputs are the caller's mistake.
    for (inputs, field) in [
        (
            json!({"short_description": "x", "caller": "nobody@example.com"}),
            "caller",
        ),
        (json!({"short_description": "x", "urgency": "9"}), "urgency"),
        (json!({}), "short_description"),
    ] {
        match run(&ctx, "servicenow.create-incident", req(inputs, None)).await {
            Err(ActionError::BadInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn create_record_update_and_look_up() {
    let h = sim().await;
    let ctx = oauth(&h);
    let fields = json!({"first_name": "Pat", "last_name": "Lee", "email": "pat.lee@customer.example", "colour": "red"});
    let out = run(
        &ctx,
        "servicenow.create-record",
        req(json!({"table": "customer_contact", "fields": fields, "correlation_field": "u_qualtrics_id"}), Some("CID_9")),
    )
    .await
    .unwrap();
    assert_eq!(out["created"], true);
    assert_eq!(out["ignored_fields"], json!(["colour"]));
    let again = run(
        &ctx,
        "servicenow.create-record",
        req(json!({"table": "customer_contact", "fields": fields.to_string(), "correlation_field": "u_qualtrics_id"}), Some("CID_9")),
    )
    .await
    .unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(
        rows(&h, "customer_contact", "email", "pat.lee@customer.example").len(),
        1
    );

    // A table without correlation_id: the default key field is a bad input, not a full scan.
    let err = run(
        &ctx,
        "servicenow.create-record",
        req(
            json!({"table": "customer_contact", "fields": {"email": "a@b.c"}}),
            Some("k1"),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ActionError::BadInput { field, .. } if field == "correlation_id"),
        "{err}"
    );

    let sys_id = out["sys_id"].as_str().unwrap();
    let upd = run(
        &ctx,
        "servicenow.update-record",
        req(json!({"table": "customer_contact", "sys_id": sys_id, "fields": {"phone": "+1 555 0199"}}), None),
    )
    .await
    .unwrap();
    assert_eq!(upd["phone"], "+1 555 0199");

    let found = run(
        &ctx,
        "servicenow.look-up-records",
        req(json!({"table": "customer_contact", "query": "email=pat.lee@customer.example", "fields": "sys_id,phone"}), None),
    )
    .await
    .unwrap();
    assert_eq!(found, json!([{"sys_id": sys_id, "phone": "+1 555 0199"}]));
    let some = run(
        &ctx,
        "servicenow.look-up-records",
        req(
            json!({"table": "incident", "query": "active=true", "limit": 3}),
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(some.as_array().unwrap().len(), 3);
    let err = run(
        &ctx,
        "servicenow.look-up-records",
        req(
            json!({"table": "customer_contact", "query": "emial=pat.lee@customer.example"}),
            None,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ActionError::BadInput { field, .. } if field == "emial"),
        "{err}"
    );
    assert_eq!(err.disposition(), Disposition::DeadLetter);

    let prop = run(
        &ctx,
        "servicenow.get-property",
        req(
            json!({"name": "sn_qualtrics_spoke.qualtrics_directory"}),
            None,
        ),
    )
    .await
    .unwrap();
    assert!(prop["value"].as_str().unwrap().starts_with("POOL_"));
}

#[tokio::test]
async fn errors_map_onto_dispositions() {
    let h = sim().await;
    let ctx = oauth(&h);
    let get = || req(json!({"name": "instance_name"}), None);

    h.sim.db.lock().faults.storm = 1;
    let e = run(&ctx, "servicenow.get-property", get())
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Transient { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Retry { after: None });

    h.sim.db.lock().faults.throttle = 1;
    h.sim.db.lock().faults.throttle_retry_after = Some(12);
    let e = run(&ctx, "servicenow.get-property", get())
        .await
        .unwrap_err();
    assert_eq!(
        e.disposition(),
        Disposition::Retry {
            after: Some(std::time::Duration::from_secs(12))
        }
    );

    // 403 ACL: permanent, with ServiceNow's message and detail for the dead letter.
    let requester = basic(&h, "beth.anglin");
    let e = run(
        &requester,
        "servicenow.create-incident",
        req(json!({"short_description": "x"}), None),
    )
    .await
    .unwrap_err();
    match &e {
        ActionError::Permanent {
            details: Some(d), ..
        } => {
            assert_eq!(d["status"], 403);
            assert_eq!(d["message"], "Operation Failed");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.disposition(), Disposition::DeadLetter);

    // A linked account whose refresh token is revoked: pause, with the fix.
    let (id, secret) = {
        let db = h.sim.db.lock();
        (
            db.creds.clients[0].client_id.clone(),
            db.creds.clients[0].client_secret.clone(),
        )
    };
    let linked = ServiceNowClient::new(
        &h.base_url,
        Auth::RefreshToken {
            client_id: id,
            client_secret: secret.into(),
            refresh_token: "not-a-valid-token".to_string().into(),
        },
    )
    .unwrap();
    let e = run(
        &ActionContext::new().with(linked),
        "servicenow.get-property",
        get(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ActionError::TokenExpired { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Pause);
    assert!(
        e.to_string().contains("account token expired") && e.to_string().contains("re-authorize"),
        "{e}"
    );

    // No client at all.
    let e = run(&ActionContext::new(), "servicenow.get-property", get())
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::NotConfigured { .. }));
}
