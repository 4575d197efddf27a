//! The ServiceNow client against the simulator over loopback HTTP.

use futures_util::StreamExt;
use serde_json::{Value, json};
use xmbridge_servicenow::{Auth, Error, ListOptions, Record, ServiceNowClient};
use xmbridge_sim::SnHandle;
use xmbridge_sim::servicenow::SnConfig;

struct Sn {
    h: SnHandle,
    http: reqwest::Client,
    creds: Value,
}

impl Sn {
    async fn start() -> Sn {
        let h = xmbridge_test_kit::sim::servicenow(SnConfig::default()).await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let creds = http
            .get(format!("{}/_sim/credentials", h.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Sn { h, http, creds }
    }

    fn password(&self, user: &str) -> String {
        self.creds["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user_name"] == user)
            .map(|u| u["password"].as_str().unwrap().to_string())
            .unwrap()
    }

    fn basic(&self, user: &str) -> ServiceNowClient {
        let auth = Auth::Basic {
            username: user.into(),
            password: self.password(user).into(),
        };
        ServiceNowClient::new(&self.h.base_url, auth).unwrap()
    }

    fn oauth_password(&self) -> ServiceNowClient {
        let c = &self.creds["oauth_clients"][0];
        let auth = Auth::Password {
            client_id: c["client_id"].as_str().unwrap().into(),
            client_secret: c["client_secret"].as_str().unwrap().to_string().into(),
            username: "xmbridge.integration".into(),
            password: self.password("xmbridge.integration").into(),
        };
        ServiceNowClient::new(&self.h.base_url, auth).unwrap()
    }

    async fn admin(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.h.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    async fn dump(&self, table: &str) -> Vec<Value> {
        self.http
            .get(format!("{}/_sim/tables/{table}", self.h.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn rec(v: Value) -> Record {
    v.as_object().cloned().unwrap()
}

#[tokio::test]
async fn list_streams_every_page_and_refuses_typos() {
    let sn = Sn::start().await;
    let c = sn.oauth_password();
    let opts = ListOptions {
        query: Some("ORDERBYnumber".into()),
        fields: vec!["number".into(), "caller_id.email".into()],
        page_size: 7,
        ..Default::default()
    };
    let rows = c.list_all("incident", opts).await.unwrap();
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[0]["number"], "INC0010001");
    assert_eq!(rows[29]["number"], "INC0010030");
    let email = rows[0]["caller_id.email"].as_str().unwrap().to_string();

    // max_rows stops early.
    let opts = ListOptions {
        page_size: 4,
        max_rows: Some(5),
        ..Default::default()
    };
    let n = c.list("incident", opts).count().await;
    assert_eq!(n, 5);

    // Dot-walk lookup by email.
    let opts = ListOptions {
        query: Some(format!("caller_id.email={email}")),
        ..Default::default()
    };
    let by_email = c.list_all("incident", opts).await.unwrap();
    assert!(!by_email.is_empty() && by_email.len() < 30);

    // A typo must not silently match every row.
    for (query, fields) in [
        (Some("caller_id.emial=x@example.com"), vec![]),
        (Some("stat=7"), vec![]),
        (None, vec!["numbr".to_string()]),
    ] {
        let opts = ListOptions {
            query: query.map(str::to_string),
            fields,
            ..Default::default()
        };
        let err = c.list_all("incident", opts).await.unwrap_err();
        assert!(matches!(err, Error::UnknownField { .. }), "{err}");
        assert!(!err.is_retryable());
    }
    let err = c
        .list_all(
            "incident",
            ListOptions {
                query: Some("stat=7".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`stat`"), "{err}");
}

#[tokio::test]
async fn field_check_falls_back_to_the_first_record_without_dictionary_access() {
    let sn = Sn::start().await;
    sn.admin(
        "/_sim/acl",
        json!({"table": "sys_dictionary", "operation": "read", "roles": ["admin"]}),
    )
    .await;
    let c = sn.basic("abel.tuter");
    let ok = c
        .list_all(
            "incident",
            ListOptions {
                query: Some("state=7".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!ok.is_empty());
    let err = c
        .list_all(
            "incident",
            ListOptions {
                query: Some("stat=7".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownField { .. }), "{err}");
}

#[tokio::test]
async fn crud_and_classified_errors() {
    let sn = Sn::start().await;
    let c = sn.oauth_password();
    let created = c
        .create(
            "incident",
            &rec(
                json!({"short_description": "Detractor (NPS 2)", "urgency": "1", "impact": "2",
                        "correlation_id": "R_x1", "not_a_field": "dropped"}),
            ),
        )
        .await
        .unwrap();
    let id = created["sys_id"].as_str().unwrap().to_string();
    assert_eq!(created["priority"], "2");
    assert!(!created.contains_key("not_a_field"));
    let got = c.get("incident", &id, &["number".into()]).await.unwrap();
    assert_eq!(got["number"], created["number"]);
    let updated = c
        .update("incident", &id, &rec(json!({"state": "2"})))
        .await
        .unwrap();
    assert_eq!(updated["state"], "2");

    // ACL refusal: permanent, with ServiceNow's message and detail.
    let agent = sn.basic("abel.tuter");
    let err = agent.delete("incident", &id).await.unwrap_err();
    match &err {
        Error::Permanent {
            status,
            message,
            detail,
        } => {
            assert_eq!((*status, message.as_str()), (403, "Operation Failed"));
            assert_eq!(
                detail.as_deref(),
                Some("ACL Exception Delete Failed due to security constraints")
            );
        }
        e => panic!("{e:?}"),
    }
    sn.basic("admin").delete("incident", &id).await.unwrap();
    let err = c.get("incident", &id, &[]).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // 5xx storm → Transient; throttle → RateLimited with Retry-After.
    sn.admin("/_sim/faults", json!({"storm": 1})).await;
    let err = c.get_property("instance_name").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    sn.admin(
        "/_sim/faults",
        json!({"throttle": 1, "throttle_retry_after": 42}),
    )
    .await;
    let err = c.get_property("instance_name").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(42)));
    assert!(err.is_retryable());

    // Rate-limit rule: 429 carries the rule's sys_id.
    sn.admin(
        "/_sim/rate-limit-rules",
        json!({"sys_id": "rule1", "user": "xmbridge.integration", "limit": 0}),
    )
    .await;
    match c.get_property("instance_name").await.unwrap_err() {
        Error::RateLimited { retry_after, rule } => {
            assert_eq!(rule.as_deref(), Some("rule1"));
            assert!(retry_after.is_some());
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn oauth_refreshes_on_401_and_reports_refused_refresh_as_expired() {
    let sn = Sn::start().await;
    let c = sn.oauth_password();
    assert!(c.get_property("instance_name").await.unwrap().is_some());
    let rt = c
        .refresh_token()
        .await
        .expect("password grant keeps a refresh token");
    // Access tokens expire behind the client's back: it refreshes once and replays.
    sn.admin("/_sim/tokens/expire", json!({})).await;
    assert!(c.get_property("instance_name").await.unwrap().is_some());

    // A linked account holding only a refresh token: revoked → AuthExpired.
    let cl = &sn.creds["oauth_clients"][0];
    let linked = ServiceNowClient::new(
        &sn.h.base_url,
        Auth::RefreshToken {
            client_id: cl["client_id"].as_str().unwrap().into(),
            client_secret: cl["client_secret"].as_str().unwrap().to_string().into(),
            refresh_token: rt,
        },
    )
    .unwrap();
    assert!(linked.get_property("instance_name").await.is_ok());
    sn.admin("/_sim/tokens/revoke", json!({})).await;
    let err = linked.get_property("instance_name").await.unwrap_err();
    assert!(matches!(err, Error::AuthExpired { .. }), "{err}");
    assert!(err.to_string().contains("account token expired"), "{err}");
    assert!(!err.is_retryable());
    // The password client logs in again after its refresh token is revoked.
    assert!(c.get_property("instance_name").await.is_ok());

    // Secrets never show in Debug.
    let dbg = format!("{c:?} {linked:?}");
    assert!(!dbg.contains(&sn.password("xmbridge.integration")), "{dbg}");
    assert!(
        !dbg.contains(cl["client_secret"].as_str().unwrap()),
        "{dbg}"
    );
}

#[tokio::test]
async fn client_credentials_need_the_property() {
    let sn = Sn::start().await;
    let cl = &sn.creds["oauth_clients"][0];
    let c = ServiceNowClient::new(
        &sn.h.base_url,
        Auth::ClientCredentials {
            client_id: cl["client_id"].as_str().unwrap().into(),
            client_secret: cl["client_secret"].as_str().unwrap().to_string().into(),
        },
    )
    .unwrap();
    let err = c.get_property("instance_name").await.unwrap_err();
    assert!(matches!(err, Error::AuthExpired { .. }), "{err}");
    sn.admin(
        "/_sim/properties",
        json!({"glide.oauth.inbound.client.credential.grant_type.enabled": "true"}),
    )
    .await;
    let dir = c
        .get_property("sn_qualtrics_spoke.qualtrics_directory")
        .await
        .unwrap()
        .unwrap();
    assert!(dir.starts_with("POOL_"));
    assert_eq!(c.get_property("no.such.property").await.unwrap(), None);
    assert!(c.refresh_token().await.is_none());
}

#[tokio::test]
async fn basic_auth_gate_is_an_auth_error_naming_the_fix() {
    let sn = Sn::start().await;
    sn.admin("/_sim/faults", json!({"basic_auth_gate": true}))
        .await;
    let err = sn.basic("abel.tuter").get_property("x").await.unwrap_err();
    assert!(matches!(err, Error::AuthExpired { .. }));
    assert!(err.to_string().contains("web service access only"), "{err}");
}

#[tokio::test]
async fn import_set_rows_coalesce() {
    let sn = Sn::start().await;
    let c = sn.oauth_password();
    let row = rec(
        json!({"u_email": "new.person@customer.example", "u_first_name": "New",
                         "u_last_name": "Person", "u_qualtrics_id": "CID_1"}),
    );
    let first = c.import("u_qualtrics_contact_import", &row).await.unwrap();
    assert_eq!(first.result[0]["status"], "inserted");
    let mut row2 = row.clone();
    row2.insert("u_qualtrics_id".into(), json!("CID_2"));
    let second = c.import("u_qualtrics_contact_import", &row2).await.unwrap();
    assert_eq!(second.result[0]["status"], "updated");
    assert_eq!(second.result[0]["sys_id"], first.result[0]["sys_id"]);
    let contacts = sn.dump("customer_contact").await;
    let mine: Vec<&Value> = contacts
        .iter()
        .filter(|c| c["email"] == "new.person@customer.example")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["u_qualtrics_id"], "CID_2");
}

#[tokio::test]
async fn access_token_is_refreshed_before_it_expires() {
    let sn = Sn::start().await;
    let issued = || sn.h.sim.db.lock().tokens.issued_access_tokens();
    // Default margin (60 s) and a 1800 s token: one grant serves many calls.
    let c = sn.oauth_password();
    for _ in 0..3 {
        c.get_property("instance_name").await.unwrap();
    }
    assert_eq!(issued(), 1);
    // A margin longer than the token's life: every call refreshes first (no 401 round trip).
    let c = sn
        .oauth_password()
        .with_refresh_margin(std::time::Duration::from_secs(3600));
    for _ in 0..3 {
        c.get_property("instance_name").await.unwrap();
    }
    assert_eq!(issued(), 4);
    assert!(c.refresh_token().await.is_some());
}
