//! The Salesforce simulator over real HTTP on loopback: OAuth flows and their errors, REST
//! status codes and bodies, Collections with allOrNone, query paging, profile rules, limits,
//! faults, the five-approvals rule and outbound messages.

use reqwest::{Client, StatusCode, redirect::Policy};
use serde_json::{Value, json};
use xmbridge_sim::SalesforceHandle;
use xmbridge_sim::salesforce::SalesforceConfig;

async fn sim() -> SalesforceHandle {
    xmbridge_test_kit::sim::salesforce(SalesforceConfig::default()).await
}

fn http() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

async fn admin(h: &SalesforceHandle, method: &str, path: &str, body: Value) -> Value {
    let c = http();
    let url = format!("{}{path}", h.base_url);
    let req = match method {
        "GET" => c.get(url),
        "DELETE" => c.delete(url),
        _ => c.post(url).json(&body),
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

async fn creds(h: &SalesforceHandle) -> Value {
    admin(h, "GET", "/_sim/credentials", json!({})).await
}

const CALLBACK: &str = "http://127.0.0.1:7777/oauth/callback";

/// Authorizes `user` through auto-approve and exchanges the code; returns the token response.
async fn login(h: &SalesforceHandle, user: &str) -> Value {
    let c = creds(h).await;
    admin(h, "POST", "/_sim/oauth/auto-approve", json!({"user": user})).await;
    let verifier = "a-verifier-of-enough-length-0123456789-abcdefghijklmnop";
    let challenge = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let resp = http()
        .get(format!("{}/services/oauth2/authorize", h.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", c["client_id"].as_str().unwrap()),
            ("redirect_uri", CALLBACK),
            ("state", "st4te"),
            ("scope", "api refresh_token"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert!(loc.as_str().starts_with(CALLBACK), "{loc}");
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st4te");
    let resp = token(
        h,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("client_id", c["client_id"].as_str().unwrap()),
            ("client_secret", c["client_secret"].as_str().unwrap()),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(resp.0, 200, "{}", resp.1);
    resp.1
}

async fn token(h: &SalesforceHandle, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http()
        .post(format!("{}/services/oauth2/token", h.base_url))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn refresh(h: &SalesforceHandle, rt: &str) -> (u16, Value) {
    let c = creds(h).await;
    token(
        h,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", c["client_id"].as_str().unwrap()),
            ("client_secret", c["client_secret"].as_str().unwrap()),
        ],
    )
    .await
}

struct Api {
    base: String,
    token: String,
    version: String,
}

impl Api {
    fn new(_h: &SalesforceHandle, t: &Value) -> Api {
        Api {
            base: t["instance_url"].as_str().unwrap().to_string(),
            token: t["access_token"].as_str().unwrap().to_string(),
            version: "60.0".into(),
        }
    }
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let url = format!("{}/services/data/v{}{path}", self.base, self.version);
        let c = http();
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = c.request(m, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, v, headers)
    }
}

#[tokio::test]
async fn web_server_flow_gives_a_signed_token_without_expires_in() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let c = creds(&h).await;
    assert!(t.get("expires_in").is_none(), "{t}");
    assert_eq!(t["instance_url"], h.base_url.as_str());
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["refresh_token"].as_str().unwrap().starts_with("5Aep861"));
    let org = c["org_id"].as_str().unwrap();
    assert!(org.starts_with("00D") && org.len() == 18);
    assert!(t["access_token"].as_str().unwrap().starts_with(&org[..15]));
    assert!(
        t["id"]
            .as_str()
            .unwrap()
            .contains(&format!("/id/{org}/005"))
    );
    let issued: i64 = t["issued_at"].as_str().unwrap().parse().unwrap();
    assert!(issued > 1_700_000_000_000, "milliseconds: {issued}");
    // signature = base64(HMAC-SHA256(secret, id + issued_at))
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(c["client_secret"].as_str().unwrap().as_bytes())
            .unwrap();
    mac.update(t["id"].as_str().unwrap().as_bytes());
    mac.update(t["issued_at"].as_str().unwrap().as_bytes());
    use base64::Engine as _;
    let expect = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(t["signature"], expect.as_str());

    let api = Api::new(&h, &t);
    let (s, v, headers) = api.call("GET", "/sobjects/Contact/describe", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(headers["sforce-limit-info"], "api-usage=1/15000");
    let ext = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Qualtrics_Contact_Id__c")
        .unwrap();
    assert_eq!(ext["externalId"], true);
}

#[tokio::test]
async fn token_endpoint_errors() {
    let h = sim().await;
    let c = creds(&h).await;
    let id = c["client_id"].as_str().unwrap();
    let secret = c["client_secret"].as_str().unwrap();
    let (s, v) = token(&h, &[("client_id", id)]).await;
    assert_eq!((s, v["error"].as_str().unwrap()), (400, "invalid_request"));
    assert_eq!(v["error_description"], "grant type is missing");
    let (_, v) = token(
        &h,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "nope"),
            ("client_secret", secret),
        ],
    )
    .await;
    assert_eq!(v["error"], "invalid_client_id");
    assert_eq!(v["error_description"], "client identifier invalid");
    let (_, v) = token(
        &h,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", "wrong"),
        ],
    )
    .await;
    assert_eq!(v["error"], "invalid_client");
    let (_, v) = token(
        &h,
        &[
            ("grant_type", "password"),
            ("client_id", id),
            ("client_secret", secret),
        ],
    )
    .await;
    assert_eq!(v["error"], "unsupported_grant_type");
    let (_, v) = token(
        &h,
        &[
            ("grant_type", "authorization_code"),
            ("code", "bogus"),
            ("client_id", id),
            ("client_secret", secret),
            ("redirect_uri", CALLBACK),
        ],
    )
    .await;
    assert_eq!(
        (v["error"].as_str(), v["error_description"].as_str()),
        (Some("invalid_grant"), Some("authorization code expired"))
    );
    let (_, v) = refresh(&h, "5Aep861unknown").await;
    assert_eq!(v["error_description"], "expired access/refresh token");
    // Redirect URI not registered.
    let r = http()
        .get(format!("{}/services/oauth2/authorize", h.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", id),
            ("redirect_uri", "http://evil.example/cb"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "redirect_uri_mismatch");
}

#[tokio::test]
async fn a_used_code_and_a_wrong_verifier_are_refused_and_deny_redirects_with_access_denied() {
    let h = sim().await;
    let c = creds(&h).await;
    let id = c["client_id"].as_str().unwrap().to_string();
    admin(
        &h,
        "POST",
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim", "deny": true}),
    )
    .await;
    let r = http()
        .get(format!("{}/services/oauth2/authorize", h.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", CALLBACK),
            ("state", "s"),
        ])
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.contains("error=access_denied") && loc.contains("state=s"),
        "{loc}"
    );
    admin(
        &h,
        "POST",
        "/_sim/oauth/auto-approve",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let r = http()
        .get(format!("{}/services/oauth2/authorize", h.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_challenge", "abc"),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = loc
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let form = |v: &'static str| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.clone()),
            ("client_id", id.clone()),
            (
                "client_secret",
                c["client_secret"].as_str().unwrap().to_string(),
            ),
            ("redirect_uri", CALLBACK.to_string()),
            ("code_verifier", v.to_string()),
        ]
    };
    let f = form("wrong");
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, v) = token(&h, &f).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (400, Some("invalid code verifier"))
    );
    let (_, v) = token(&h, &f).await;
    assert_eq!(
        v["error_description"], "authorization code expired",
        "a code works once"
    );
}

#[tokio::test]
async fn refresh_policies_rotation_and_revocation() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    // Valid until revoked: refresh works and returns no refresh token.
    let (s, v) = refresh(&h, &rt).await;
    assert_eq!(s, 200);
    assert!(v.get("refresh_token").is_none(), "{v}");
    // Rotation: a new refresh token each time; the old one dies.
    admin(&h, "POST", "/_sim/oauth/policy", json!({"rotation": true})).await;
    let (_, v) = refresh(&h, &rt).await;
    let rt2 = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt);
    let (s, v) = refresh(&h, &rt).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(v["error_description"], "expired access/refresh token");
    assert_eq!(refresh(&h, &rt2).await.0, 200);
    admin(&h, "POST", "/_sim/oauth/policy", json!({"rotation": false})).await;
    // Idle policy.
    let t = login(&h, "admin@acme.sim").await;
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"refresh_policy": "idle", "refresh_ttl_secs": 60}),
    )
    .await;
    assert_eq!(refresh(&h, &rt).await.0, 200);
    admin(&h, "POST", "/_sim/clock/advance", json!({"secs": 61})).await;
    assert_eq!(refresh(&h, &rt).await.0, 400);
    // Absolute policy: even a used token dies after the ttl.
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"refresh_policy": "absolute", "refresh_ttl_secs": 100}),
    )
    .await;
    let t = login(&h, "admin@acme.sim").await;
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    admin(&h, "POST", "/_sim/clock/advance", json!({"secs": 60})).await;
    assert_eq!(refresh(&h, &rt).await.0, 200);
    admin(&h, "POST", "/_sim/clock/advance", json!({"secs": 60})).await;
    assert_eq!(refresh(&h, &rt).await.0, 400);
    // Immediate.
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"refresh_policy": "immediate"}),
    )
    .await;
    let t = login(&h, "admin@acme.sim").await;
    assert_eq!(
        refresh(&h, t["refresh_token"].as_str().unwrap()).await.0,
        400
    );
    // Revocation by the endpoint kills the refresh token and its access tokens.
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"refresh_policy": "valid_until_revoked"}),
    )
    .await;
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    assert_eq!(api.call("GET", "/limits", None).await.0, 200);
    let r = http()
        .post(format!("{}/services/oauth2/revoke", h.base_url))
        .form(&[("token", t["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v, _) = api.call("GET", "/limits", None).await;
    assert_eq!(s, 401);
    assert_eq!(
        v,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );
    let r = http()
        .post(format!("{}/services/oauth2/revoke", h.base_url))
        .form(&[("token", "unknown")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn the_sixth_approval_revokes_the_oldest_refresh_token() {
    let h = sim().await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        tokens.push(
            login(&h, "integration@acme.sim").await["refresh_token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for t in &tokens {
        assert_eq!(refresh(&h, t).await.0, 200);
    }
    let sixth = login(&h, "integration@acme.sim").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = refresh(&h, &tokens[0]).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (400, Some("expired access/refresh token"))
    );
    for t in tokens[1..].iter().chain([&sixth]) {
        assert_eq!(refresh(&h, t).await.0, 200);
    }
    let list = admin(&h, "GET", "/_sim/tokens", json!({})).await;
    let u = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "integration@acme.sim")
        .unwrap();
    assert_eq!(u["active_refresh_tokens"].as_array().unwrap().len(), 5);
    // Other users are unaffected.
    let other = login(&h, "admin@acme.sim").await;
    assert_eq!(
        refresh(&h, other["refresh_token"].as_str().unwrap())
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn client_credentials_run_as_user_and_its_errors() {
    let h = sim().await;
    let c = creds(&h).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", c["client_id"].as_str().unwrap()),
        ("client_secret", c["client_secret"].as_str().unwrap()),
    ];
    let (s, t) = token(&h, &form).await;
    assert_eq!(s, 200, "{t}");
    assert!(t.get("refresh_token").is_none());
    assert_eq!(t["token_format"], "opaque");
    let integration = c["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "integration@acme.sim")
        .unwrap();
    assert!(
        t["id"]
            .as_str()
            .unwrap()
            .ends_with(integration["id"].as_str().unwrap())
    );
    // HTTP Basic works too.
    let r = http()
        .post(format!("{}/services/oauth2/token", h.base_url))
        .basic_auth(
            c["client_id"].as_str().unwrap(),
            c["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    admin(
        &h,
        "POST",
        "/_sim/oauth/policy",
        json!({"client_credentials": false}),
    )
    .await;
    let (s, v) = token(&h, &form).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (400, Some("no client credentials user enabled"))
    );
}

#[tokio::test]
async fn crud_upsert_status_codes_by_version() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let mut api = Api::new(&h, &t);
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Contact",
            Some(json!({"LastName": "Nguyen", "Email": "n@example.com"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("003") && id.len() == 18);
    assert_eq!(v["success"], true);
    let (s, v, _) = api
        .call(
            "GET",
            &format!("/sobjects/Contact/{id}?fields=LastName,Email"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["attributes"]["type"], "Contact");
    assert_eq!(v["LastName"], "Nguyen");
    let (s, _, _) = api
        .call(
            "PATCH",
            &format!("/sobjects/Contact/{id}"),
            Some(json!({"Title": "CTO"})),
        )
        .await;
    assert_eq!(s, 204);
    // Upsert on the custom object: 201 created with `created:true`, then 200 `created:false`.
    let path = "/sobjects/Survey_Response__c/Response_Id__c/R_abc";
    let body = json!({"NPS__c": 3, "Comment__c": "slow", "Contact__c": id});
    let (s, v, _) = api.call("PATCH", path, Some(body.clone())).await;
    assert_eq!((s, &v["created"]), (201, &json!(true)), "{v}");
    let sr = v["id"].as_str().unwrap().to_string();
    assert!(sr.starts_with("a0B"));
    let (s, v, _) = api.call("PATCH", path, Some(json!({"NPS__c": 4}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"id": sr, "success": true, "errors": [], "created": false})
    );
    api.version = "45.0".into();
    let (s, v, _) = api.call("PATCH", path, Some(json!({"NPS__c": 5}))).await;
    assert_eq!((s, v), (204, Value::Null));
    let (s, v, _) = api
        .call(
            "PATCH",
            "/sobjects/Survey_Response__c/Response_Id__c/R_new",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 201);
    assert!(v.get("created").is_none(), "no `created` before v46: {v}");
    api.version = "60.0".into();
    // Relationship by external id.
    let (s, v, _) = api
        .call(
            "PATCH",
            "/sobjects/Survey_Response__c/Response_Id__c/R_rel",
            Some(json!({"Contact__r": {"Qualtrics_Contact_Id__c": "CID_000000000001"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Several matches: 300 with the candidates.
    for _ in 0..2 {
        api.call(
            "POST",
            "/sobjects/Contact",
            Some(json!({"LastName": "Twin", "Qualtrics_Contact_Id__c": "DUP"})),
        )
        .await;
    }
    let (s, v, _) = api
        .call(
            "PATCH",
            "/sobjects/Contact/Qualtrics_Contact_Id__c/DUP",
            Some(json!({"Title": "x"})),
        )
        .await;
    assert_eq!(s, 300);
    assert_eq!(v.as_array().unwrap().len(), 2);
    // Unknown external id field: 404.
    let (s, v, _) = api
        .call("PATCH", "/sobjects/Contact/Nope__c/1", Some(json!({})))
        .await;
    assert_eq!((s, v[0]["errorCode"].as_str()), (404, Some("NOT_FOUND")));
    // updateOnly never creates.
    let (s, _, _) = api
        .call(
            "PATCH",
            "/sobjects/Survey_Response__c/Response_Id__c/R_none?updateOnly=true",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 404);
    // Delete, then again.
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/sobjects/Survey_Response__c/{sr}"),
            None
        )
        .await
        .0,
        204
    );
    let (s, v, _) = api
        .call(
            "DELETE",
            &format!("/sobjects/Survey_Response__c/{sr}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (404, Some("ENTITY_IS_DELETED"))
    );
    let dump = admin(&h, "GET", "/_sim/records/Survey_Response__c", json!({})).await;
    assert_eq!(dump["records"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn write_errors_have_the_array_shape() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Contact",
            Some(json!({"FirstName": "Nobody"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v,
        json!([{"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}])
    );
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Contact",
            Some(json!({"LastName": "x", "Shoe_Size__c": 9})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_FIELD");
    assert!(v[0]["message"].as_str().unwrap().contains("Shoe_Size__c"));
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Case",
            Some(json!({"Status": "Exploded"})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": "high"})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "JSON_PARSER_ERROR");
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"Contact__c": "003nothere"})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "MALFORMED_ID");
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Contact",
            Some(json!({"LastName": "x", "CreatedDate": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_FIELD_FOR_INSERT_UPDATE");
    // Validation rule.
    admin(&h, "POST", "/_sim/validation-rules", json!({"object": "Survey_Response__c", "name": "NPS range", "field": "NPS__c", "condition": "gt", "value": 10, "message": "NPS must be 0-10", "error_field": "NPS__c"})).await;
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 11})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v,
        json!([{"message": "NPS must be 0-10", "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "fields": ["NPS__c"]}])
    );
    // Unique external id.
    api.call(
        "POST",
        "/sobjects/Survey_Response__c",
        Some(json!({"Response_Id__c": "R_1"})),
    )
    .await;
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"Response_Id__c": "R_1"})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "DUPLICATE_VALUE");
    let (s, v, _) = api.call("GET", "/sobjects/Nope__c/describe", None).await;
    assert_eq!((s, v[0]["errorCode"].as_str()), (404, Some("NOT_FOUND")));
}

#[tokio::test]
async fn collections_report_per_record_and_roll_back_all_or_none() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    let records = json!([
        {"attributes": {"type": "Survey_Response__c"}, "Response_Id__c": "C1", "NPS__c": 9},
        {"attributes": {"type": "Contact"}, "FirstName": "no last name"},
    ]);
    let (s, v, _) = api
        .call(
            "POST",
            "/composite/sobjects",
            Some(json!({"allOrNone": false, "records": records})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["success"], true);
    assert_eq!(v[1]["success"], false);
    assert_eq!(v[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(v[1]["errors"][0]["fields"], json!(["LastName"]));
    let before = admin(&h, "GET", "/_sim/records/Survey_Response__c", json!({})).await["records"]
        .as_array()
        .unwrap()
        .len();
    let records = json!([
        {"attributes": {"type": "Survey_Response__c"}, "Response_Id__c": "C2"},
        {"attributes": {"type": "Contact"}, "FirstName": "no last name"},
    ]);
    let (s, v, _) = api
        .call(
            "POST",
            "/composite/sobjects",
            Some(json!({"allOrNone": true, "records": records})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(v[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
    let after = admin(&h, "GET", "/_sim/records/Survey_Response__c", json!({})).await["records"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "rolled back");
    // Upsert collection: created flags.
    let recs =
        json!([{"Response_Id__c": "C1", "NPS__c": 1}, {"Response_Id__c": "C3", "NPS__c": 2}]);
    let recs: Vec<Value> = recs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["attributes"] = json!({"type": "Survey_Response__c"});
            r
        })
        .collect();
    let (s, v, _) = api
        .call(
            "PATCH",
            "/composite/sobjects/Survey_Response__c/Response_Id__c",
            Some(json!({"allOrNone": false, "records": recs})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v[0]["created"].as_bool(), v[1]["created"].as_bool()),
        (Some(false), Some(true))
    );
    // More than 200: 400 for the whole request.
    let many: Vec<Value> = (0..201).map(|i| json!({"attributes": {"type": "Lead"}, "LastName": format!("L{i}"), "Company": "c"})).collect();
    let (s, v, _) = api
        .call(
            "POST",
            "/composite/sobjects",
            Some(json!({"records": many})),
        )
        .await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (400, Some("EXCEEDED_ID_LIMIT"))
    );
    // Delete collection.
    let id = v_id(&api, "C3").await;
    let (s, v, _) = api
        .call(
            "DELETE",
            &format!("/composite/sobjects?ids={id},001xx0000000000AAA&allOrNone=false"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["success"], true);
    assert_eq!(v[1]["success"], false);
}

async fn v_id(api: &Api, response_id: &str) -> String {
    let (_, v, _) = api
        .call(
            "GET",
            &format!("/sobjects/Survey_Response__c/Response_Id__c/{response_id}"),
            None,
        )
        .await;
    v["Id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn query_pages_through_next_records_url_and_refuses_bad_soql() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    for chunk in 0..3 {
        let recs: Vec<Value> = (0..150).map(|i| json!({"attributes": {"type": "Survey_Response__c"}, "Response_Id__c": format!("Q{chunk}_{i:03}"), "NPS__c": (i % 11), "Survey_Id__c": "SV_1"})).collect();
        let (s, v, _) = api
            .call(
                "POST",
                "/composite/sobjects",
                Some(json!({"records": recs})),
            )
            .await;
        assert_eq!(s, 200);
        assert!(v.as_array().unwrap().iter().all(|r| r["success"] == true));
    }
    let q = "SELECT Id, Response_Id__c, NPS__c FROM Survey_Response__c WHERE Survey_Id__c = 'SV_1' ORDER BY Response_Id__c";
    let c = http();
    let first: Value = c
        .get(format!("{}/services/data/v60.0/query", api.base))
        .query(&[("q", q)])
        .bearer_auth(&api.token)
        .header("Sforce-Query-Options", "batchSize=200")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["totalSize"], 450);
    assert_eq!(first["done"], false);
    assert_eq!(first["records"].as_array().unwrap().len(), 200);
    assert_eq!(first["records"][0]["Response_Id__c"], "Q0_000");
    let mut seen = 200;
    let mut next = first["nextRecordsUrl"].as_str().unwrap().to_string();
    assert!(next.starts_with("/services/data/v60.0/query/01g"));
    loop {
        let page: Value = c
            .get(format!("{}{next}", api.base))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen += page["records"].as_array().unwrap().len();
        if page["done"] == true {
            assert!(page.get("nextRecordsUrl").is_none());
            break;
        }
        next = page["nextRecordsUrl"].as_str().unwrap().to_string();
    }
    assert_eq!(seen, 450);
    let (s, v, _) = api.call("GET", "/query?q=SELECT+Id+FROM+Survey_Response__c+WHERE+NPS__c+%3C%3D+6+AND+Survey_Id__c+%3D+%27SV_1%27+LIMIT+1000", None).await;
    assert_eq!(s, 200);
    // NPS 0..=6 in each block of 11, 150 per chunk: per chunk 14 full blocks × 7 + 6 (i=154..) → count directly.
    let expect = 3 * (0..150).filter(|i| i % 11 <= 6).count();
    assert_eq!(v["totalSize"], expect);
    let (s, v, _) = api
        .call("GET", "/query?q=SELECT+Id+FORM+Contact", None)
        .await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (400, Some("MALFORMED_QUERY"))
    );
    let (_, v, _) = api
        .call("GET", "/query?q=SELECT+Shoe__c+FROM+Contact", None)
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_FIELD");
    let (_, v, _) = api
        .call("GET", "/query?q=SELECT+Id+FROM+Widget__c", None)
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_TYPE");
}

#[tokio::test]
async fn profiles_decide_api_access_objects_fields_and_login_ips() {
    let h = sim().await;
    // No API access.
    let t = login(&h, "noapi@acme.sim").await;
    let (s, v, _) = Api::new(&h, &t).call("GET", "/sobjects", None).await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (403, Some("API_DISABLED_FOR_ORG"))
    );
    // Standard user: Survey_Response__c read-only; describe says so; create refused.
    let t = login(&h, "standard@acme.sim").await;
    let api = Api::new(&h, &t);
    let (_, d, _) = api
        .call("GET", "/sobjects/Survey_Response__c/describe", None)
        .await;
    assert_eq!(d["createable"], false);
    let nps = d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "NPS__c")
        .unwrap();
    assert_eq!(nps["createable"], false);
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 1})),
        )
        .await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (403, Some("INSUFFICIENT_ACCESS_OR_READONLY"))
    );
    // Field-level security: read-only field → INVALID_FIELD_FOR_INSERT_UPDATE; hidden field → INVALID_FIELD.
    let (_, d, _) = api.call("GET", "/sobjects/Contact/describe", None).await;
    let f = d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Qualtrics_Contact_Id__c")
        .unwrap();
    assert_eq!(
        (f["createable"].as_bool(), f["updateable"].as_bool()),
        (Some(false), Some(false))
    );
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Contact",
            Some(json!({"LastName": "x", "Qualtrics_Contact_Id__c": "Q"})),
        )
        .await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (400, Some("INVALID_FIELD_FOR_INSERT_UPDATE"))
    );
    assert_eq!(v[0]["fields"], json!(["Qualtrics_Contact_Id__c"]));
    let (_, d, _) = api.call("GET", "/sobjects/Case/describe", None).await;
    assert!(
        !d["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "Qualtrics_Delivery_Key__c")
    );
    let (_, v, _) = api
        .call(
            "POST",
            "/sobjects/Case",
            Some(json!({"Qualtrics_Delivery_Key__c": "k"})),
        )
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_FIELD");
    // Admin changes take effect at once.
    admin(
        &h,
        "POST",
        "/_sim/profiles/Standard User",
        json!({"objects": {"Survey_Response__c": {"read": true, "create": true, "edit": true}}}),
    )
    .await;
    let (s, _, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 1})),
        )
        .await;
    assert_eq!(s, 201);
    // Login IP ranges that exclude 127.0.0.1: authentication failure at refresh and login.
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    admin(
        &h,
        "POST",
        "/_sim/profiles/Standard User",
        json!({"login_ip_ranges": [["10.0.0.0", "10.255.255.255"]]}),
    )
    .await;
    let (s, v) = refresh(&h, &rt).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (400, Some("authentication failure"))
    );
    admin(
        &h,
        "POST",
        "/_sim/profiles/Standard User",
        json!({"login_ip_ranges": [["127.0.0.0", "127.0.0.255"]]}),
    )
    .await;
    assert_eq!(refresh(&h, &rt).await.0, 200);
}

#[tokio::test]
async fn limits_faults_and_session_expiry() {
    let h = sim().await;
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    admin(&h, "POST", "/_sim/limits", json!({"max": 3, "used": 0})).await;
    for n in 1..=3 {
        let (s, _, hd) = api.call("GET", "/limits", None).await;
        assert_eq!(s, 200);
        assert_eq!(hd["sforce-limit-info"], format!("api-usage={n}/3").as_str());
    }
    let (s, v, hd) = api.call("GET", "/limits", None).await;
    assert_eq!(s, 403);
    assert_eq!(
        v,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    assert_eq!(hd["sforce-limit-info"], "api-usage=3/3");
    // The versions list does not count and needs no session.
    let r = http()
        .get(format!("{}/services/data", h.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let vs: Value = r.json().await.unwrap();
    assert!(
        vs.as_array()
            .unwrap()
            .iter()
            .any(|v| v["version"] == "60.0")
    );
    // The allowance frees up after 24 hours.
    admin(&h, "POST", "/_sim/clock/advance", json!({"secs": 86_400})).await;
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    assert_eq!(api.call("GET", "/limits", None).await.0, 200);
    admin(&h, "POST", "/_sim/limits", json!({"max": 15000})).await;
    // Faults.
    admin(
        &h,
        "POST",
        "/_sim/faults",
        json!({"server_error_storm": 2, "throttle_429": 1, "retry_after_secs": 7}),
    )
    .await;
    assert_eq!(api.call("GET", "/limits", None).await.0, 503);
    assert_eq!(api.call("GET", "/limits", None).await.0, 503);
    let (s, _, hd) = api.call("GET", "/limits", None).await;
    assert_eq!((s, hd["retry-after"].to_str().unwrap()), (429, "7"));
    admin(&h, "POST", "/_sim/faults", json!({"unable_to_lock_row": 1})).await;
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Lead",
            Some(json!({"LastName": "L", "Company": "C"})),
        )
        .await;
    assert_eq!(
        (s, v[0]["errorCode"].as_str()),
        (400, Some("UNABLE_TO_LOCK_ROW"))
    );
    assert_eq!(
        api.call(
            "POST",
            "/sobjects/Lead",
            Some(json!({"LastName": "L", "Company": "C"}))
        )
        .await
        .0,
        201
    );
    // Session timeout (2 h idle) and admin expiry.
    admin(&h, "POST", "/_sim/clock/advance", json!({"secs": 7_201})).await;
    assert_eq!(api.call("GET", "/limits", None).await.0, 401);
    let t = login(&h, "admin@acme.sim").await;
    let api = Api::new(&h, &t);
    assert_eq!(api.call("GET", "/limits", None).await.0, 200);
    admin(
        &h,
        "POST",
        "/_sim/tokens/expire",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    assert_eq!(api.call("GET", "/limits", None).await.0, 401);
    // A user's tokens revoked: refresh fails with the expired wording.
    admin(
        &h,
        "POST",
        "/_sim/tokens/revoke",
        json!({"user": "admin@acme.sim"}),
    )
    .await;
    let (s, v) = refresh(&h, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (s, v["error_description"].as_str()),
        (400, Some("expired access/refresh token"))
    );
}

/// A tiny SOAP listener: refuses to ack the first `fail` messages, then acks; returns bodies.
async fn soap_listener(fail: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use axum::routing::post;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/sf/outbound",
        post(move |body: String| {
            let tx = tx.clone();
            let count = count.clone();
            async move {
                let _ = tx.send(body);
                if count.fetch_add(1, Ordering::SeqCst) < fail {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "<soapenv:Fault/>".to_string())
                } else {
                    (
                        axum::http::StatusCode::OK,
                        "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>".to_string(),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/sf/outbound"), rx)
}

#[tokio::test]
async fn outbound_messages_retry_until_acked_and_are_recorded() {
    let h = sim().await;
    let (endpoint, mut rx) = soap_listener(2).await;
    let cases = admin(&h, "GET", "/_sim/records/Case", json!({})).await;
    let case_id = cases["records"][0]["Id"].as_str().unwrap().to_string();
    let r = http()
        .post(format!("{}/_sim/outbound", h.base_url))
        .json(&json!({"object": "Case", "record_id": case_id, "endpoint": endpoint, "fields": ["Id", "Subject", "Status"], "retry_base_ms": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let did = v["delivery_id"].as_str().unwrap();
    let d = admin(
        &h,
        "GET",
        &format!("/_sim/outbound/deliveries/{did}?wait_ms=10000"),
        json!({}),
    )
    .await;
    assert_eq!(d["acked"], true, "{d}");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(d["attempts"][0]["status"], 500);
    let body = rx.recv().await.unwrap();
    assert!(
        body.contains("<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">"),
        "{body}"
    );
    assert!(body.contains(&format!("<sf:Id>{case_id}</sf:Id>")));
    assert!(body.contains("xsi:type=\"sf:Case\""));
    assert!(body.contains(&format!(
        "<Id>{}</Id>",
        v["notification_id"].as_str().unwrap()
    )));
    // "Send Session ID" carries a session that works against the REST API.
    let (endpoint2, mut rx2) = soap_listener(0).await;
    let r = http()
        .post(format!("{}/_sim/outbound", h.base_url))
        .json(&json!({"object": "Case", "record_id": case_id, "endpoint": endpoint2, "send_session_id": true}))
        .send()
        .await
        .unwrap();
    let v2: Value = r.json().await.unwrap();
    let d = admin(
        &h,
        "GET",
        &format!(
            "/_sim/outbound/deliveries/{}?wait_ms=10000",
            v2["delivery_id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    assert_eq!(d["acked"], true);
    let body = rx2.recv().await.unwrap();
    let session = body
        .split("<SessionId>")
        .nth(1)
        .unwrap()
        .split("</SessionId>")
        .next()
        .unwrap();
    let r = http()
        .get(format!(
            "{}/services/data/v60.0/sobjects/Case/{case_id}",
            h.base_url
        ))
        .bearer_auth(session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let all = admin(&h, "GET", "/_sim/outbound/deliveries", json!({})).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    // Only loopback endpoints.
    let r = http()
        .post(format!("{}/_sim/outbound", h.base_url))
        .json(&json!({"object": "Case", "record_id": case_id, "endpoint": "http://example.com/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// An admin call that may fail: (status, body).
async fn admin_raw(h: &SalesforceHandle, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", h.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The seeded record type `developer_name` of `object`, from `/_sim/record-types`.
async fn record_type_id(h: &SalesforceHandle, object: &str, developer_name: &str) -> String {
    let all = admin(h, "GET", "/_sim/record-types", json!({})).await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|r| r["object"] == object && r["developer_name"] == developer_name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `recordTypeInfos` by developer name: (available, defaultRecordTypeMapping).
fn rt_flags(describe: &Value) -> Vec<(String, bool, bool)> {
    describe["recordTypeInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["developerName"].as_str().unwrap().to_string(),
                i["available"].as_bool().unwrap(),
                i["defaultRecordTypeMapping"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn flags(v: &[(&str, bool, bool)]) -> Vec<(String, bool, bool)> {
    v.iter().map(|(n, a, d)| (n.to_string(), *a, *d)).collect()
}

#[tokio::test]
async fn describe_shows_record_type_infos_available_per_profile() {
    let h = sim().await;
    let detractor = record_type_id(&h, "Survey_Response__c", "Detractor").await;
    let promoter = record_type_id(&h, "Survey_Response__c", "Promoter").await;
    for id in [&detractor, &promoter] {
        assert!(id.starts_with("012") && id.len() == 18, "{id}");
    }
    let admin_api = Api::new(&h, &login(&h, "admin@acme.sim").await);
    let (s, d, _) = admin_api
        .call("GET", "/sobjects/Survey_Response__c/describe", None)
        .await;
    assert_eq!(s, 200, "{d}");
    // The exact shape of one entry, and the Master last.
    assert_eq!(
        d["recordTypeInfos"][0],
        json!({
            "active": true,
            "available": true,
            "defaultRecordTypeMapping": false,
            "developerName": "Detractor",
            "master": false,
            "name": "Detractor",
            "recordTypeId": detractor,
            "urls": {"layout": format!("/services/data/v60.0/sobjects/Survey_Response__c/describe/layouts/{detractor}")},
        })
    );
    assert_eq!(
        d["recordTypeInfos"][2],
        json!({
            "active": true,
            "available": true,
            "defaultRecordTypeMapping": false,
            "developerName": "Master",
            "master": true,
            "name": "Master",
            "recordTypeId": "012000000000000AAA",
            "urls": {"layout": "/services/data/v60.0/sobjects/Survey_Response__c/describe/layouts/012000000000000AAA"},
        })
    );
    assert_eq!(
        rt_flags(&d),
        flags(&[
            ("Detractor", true, false),
            ("Promoter", true, true),
            ("Master", true, false)
        ])
    );
    let field = d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "RecordTypeId")
        .unwrap();
    assert_eq!(field["type"], "reference");
    assert_eq!(field["referenceTo"], json!(["RecordType"]));
    assert_eq!(field["relationshipName"], "RecordType");
    assert_eq!(
        (field["createable"].as_bool(), field["updateable"].as_bool()),
        (Some(true), Some(true))
    );
    // The standard user: Promoter only.
    let std_api = Api::new(&h, &login(&h, "standard@acme.sim").await);
    let (_, d, _) = std_api
        .call("GET", "/sobjects/Survey_Response__c/describe", None)
        .await;
    assert_eq!(
        rt_flags(&d),
        flags(&[
            ("Detractor", false, false),
            ("Promoter", true, true),
            ("Master", false, false)
        ])
    );
    // Case: one record type, not assigned to the standard user; Master is its default.
    let (_, d, _) = std_api.call("GET", "/sobjects/Case/describe", None).await;
    assert_eq!(
        rt_flags(&d),
        flags(&[("Survey_Follow_Up", false, false), ("Master", true, true)])
    );
    // No custom record types: the Master only, and no RecordTypeId field.
    let (_, d, _) = std_api
        .call("GET", "/sobjects/Contact/describe", None)
        .await;
    assert_eq!(
        d["recordTypeInfos"],
        json!([{
            "active": true,
            "available": true,
            "defaultRecordTypeMapping": true,
            "developerName": "Master",
            "master": true,
            "name": "Master",
            "recordTypeId": "012000000000000AAA",
            "urls": {"layout": "/services/data/v60.0/sobjects/Contact/describe/layouts/012000000000000AAA"},
        }])
    );
    assert!(
        !d["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "RecordTypeId")
    );
}

#[tokio::test]
async fn writes_refuse_record_types_the_user_may_not_use() {
    let h = sim().await;
    let detractor = record_type_id(&h, "Survey_Response__c", "Detractor").await;
    let promoter = record_type_id(&h, "Survey_Response__c", "Promoter").await;
    let follow_up = record_type_id(&h, "Case", "Survey_Follow_Up").await;
    // The standard user may create survey responses, with the Promoter record type only.
    admin(
        &h,
        "POST",
        "/_sim/profiles/Standard User",
        json!({"objects": {"Survey_Response__c": {"read": true, "create": true, "edit": true}}}),
    )
    .await;
    let api = Api::new(&h, &login(&h, "standard@acme.sim").await);
    let refused = |id: &str| {
        json!([{
            "message": format!("Record Type ID: this ID value isn't valid for the user: {id}"),
            "errorCode": "INVALID_CROSS_REFERENCE_KEY",
            "fields": ["RecordTypeId"],
        }])
    };
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 2, "RecordTypeId": detractor})),
        )
        .await;
    assert_eq!((s, v), (400, refused(&detractor)));
    // Another object's record type, the Master (not assigned) and an unknown 012 id.
    for id in [
        follow_up.as_str(),
        "012000000000000AAA",
        "0125g0000000999AAA",
    ] {
        let (s, v, _) = api
            .call(
                "POST",
                "/sobjects/Survey_Response__c",
                Some(json!({"RecordTypeId": id})),
            )
            .await;
        assert_eq!((s, v), (400, refused(id)), "{id}");
    }
    // An available one: 201 and stored.
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 10, "RecordTypeId": promoter})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (_, rec, _) = api
        .call("GET", &format!("/sobjects/Survey_Response__c/{id}"), None)
        .await;
    assert_eq!(rec["RecordTypeId"], promoter.as_str());
    // A 15-character id works and is stored in its 18-character form.
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"RecordTypeId": &promoter[..15]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // None: the profile's default.
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 9})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, rec, _) = api
        .call(
            "GET",
            &format!(
                "/sobjects/Survey_Response__c/{}?fields=RecordTypeId",
                v["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(rec["RecordTypeId"], promoter.as_str());
    // Update and upsert paths check the same way.
    let (s, v, _) = api
        .call(
            "PATCH",
            &format!("/sobjects/Survey_Response__c/{id}"),
            Some(json!({"RecordTypeId": detractor})),
        )
        .await;
    assert_eq!((s, v), (400, refused(&detractor)));
    let (s, v, _) = api
        .call(
            "PATCH",
            "/sobjects/Survey_Response__c/Response_Id__c/R_rt",
            Some(json!({"RecordTypeId": detractor})),
        )
        .await;
    assert_eq!((s, v), (400, refused(&detractor)));
    // Collections: a per-record error.
    let (s, v, _) = api
        .call(
            "POST",
            "/composite/sobjects",
            Some(json!({"allOrNone": false, "records": [
                {"attributes": {"type": "Survey_Response__c"}, "RecordTypeId": promoter},
                {"attributes": {"type": "Survey_Response__c"}, "RecordTypeId": detractor},
            ]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["success"], true, "{v}");
    assert_eq!(
        v[1],
        json!({"success": false, "errors": [{
            "statusCode": "INVALID_CROSS_REFERENCE_KEY",
            "message": format!("Record Type ID: this ID value isn't valid for the user: {detractor}"),
            "fields": ["RecordTypeId"],
        }]})
    );
    let (s, v, _) = api
        .call(
            "PATCH",
            "/composite/sobjects/Survey_Response__c/Response_Id__c",
            Some(json!({"records": [
                {"attributes": {"type": "Survey_Response__c"}, "Response_Id__c": "R_c1", "RecordTypeId": detractor},
            ]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v[0]["errors"][0]["statusCode"], "INVALID_CROSS_REFERENCE_KEY",
        "{v}"
    );
    // The admin may use Detractor; once it is inactive nobody may.
    let admin_api = Api::new(&h, &login(&h, "admin@acme.sim").await);
    let body = json!({"RecordTypeId": detractor});
    let (s, v, _) = admin_api
        .call("POST", "/sobjects/Survey_Response__c", Some(body.clone()))
        .await;
    assert_eq!(s, 201, "{v}");
    admin(
        &h,
        "POST",
        "/_sim/record-types/Survey_Response__c/Detractor",
        json!({"active": false}),
    )
    .await;
    let (s, v, _) = admin_api
        .call("POST", "/sobjects/Survey_Response__c", Some(body))
        .await;
    assert_eq!((s, v), (400, refused(&detractor)));
    let (_, d, _) = admin_api
        .call("GET", "/sobjects/Survey_Response__c/describe", None)
        .await;
    assert_eq!(
        (
            d["recordTypeInfos"][0]["active"].as_bool(),
            d["recordTypeInfos"][0]["available"].as_bool()
        ),
        (Some(false), Some(false))
    );
    // A profile's default cannot be deactivated.
    let (s, v) = admin_raw(
        &h,
        "/_sim/record-types/Survey_Response__c/Promoter",
        json!({"active": false}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("Standard User"),
        "{v}"
    );
}

#[tokio::test]
async fn profile_record_types_change_through_sim() {
    let h = sim().await;
    let detractor = record_type_id(&h, "Survey_Response__c", "Detractor").await;
    let api = Api::new(&h, &login(&h, "standard@acme.sim").await);
    let p = admin(
        &h,
        "POST",
        "/_sim/profiles/Standard User",
        json!({
            "objects": {"Survey_Response__c": {"read": true, "create": true, "edit": true}},
            "record_types": {"Survey_Response__c": {"available": ["Detractor", "Promoter"], "default": "Detractor"}},
        }),
    )
    .await;
    assert_eq!(
        p["record_types"]["Survey_Response__c"],
        json!({"available": ["Detractor", "Promoter"], "default": "Detractor"})
    );
    let (_, d, _) = api
        .call("GET", "/sobjects/Survey_Response__c/describe", None)
        .await;
    assert_eq!(
        rt_flags(&d),
        flags(&[
            ("Detractor", true, true),
            ("Promoter", true, false),
            ("Master", false, false)
        ])
    );
    // The new default is what a create without RecordTypeId gets.
    let (s, v, _) = api
        .call(
            "POST",
            "/sobjects/Survey_Response__c",
            Some(json!({"NPS__c": 3})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, rec, _) = api
        .call(
            "GET",
            &format!("/sobjects/Survey_Response__c/{}", v["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(rec["RecordTypeId"], detractor.as_str());
    // The Master as the only one: the RecordTypeId stays empty.
    admin(
        &h,
        "POST",
        "/_sim/profiles/Standard User",
        json!({"record_types": {"Survey_Response__c": {"available": ["Master"]}}}),
    )
    .await;
    let (_, d, _) = api
        .call("GET", "/sobjects/Survey_Response__c/describe", None)
        .await;
    assert_eq!(
        rt_flags(&d),
        flags(&[
            ("Detractor", false, false),
            ("Promoter", false, false),
            ("Master", true, true)
        ])
    );
    let (s, v, _) = api
        .call("POST", "/sobjects/Survey_Response__c", Some(json!({})))
        .await;
    assert_eq!(s, 201, "{v}");
    let dump = admin(&h, "GET", "/_sim/records/Survey_Response__c", json!({})).await;
    let last = dump["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["Id"], v["id"]);
    assert!(last.get("RecordTypeId").is_none(), "{last}");
    // Bad settings are refused and change nothing.
    for body in [
        json!({"record_types": {"Survey_Response__c": {"available": ["Nope"]}}}),
        json!({"record_types": {"Survey_Response__c": {"available": []}}}),
        json!({"record_types": {"Survey_Response__c": {"available": ["Promoter"], "default": "Detractor"}}}),
        json!({"record_types": {"Contact": {"available": ["Promoter"]}}}),
        json!({"record_types": {"Widget__c": {"available": ["Master"]}}}),
        json!({"record_types": {"Survey_Response__c": {"available": ["Master"], "extra": 1}}}),
    ] {
        let (s, v) = admin_raw(&h, "/_sim/profiles/Standard User", body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
    }
    let profiles = admin(&h, "GET", "/_sim/profiles", json!({})).await;
    assert_eq!(
        profiles["Standard User"]["record_types"]["Survey_Response__c"],
        json!({"available": ["Master"], "default": "Master"})
    );
}

#[tokio::test]
async fn soql_reads_record_types_and_filters_by_record_type_id() {
    let h = sim().await;
    let promoter = record_type_id(&h, "Survey_Response__c", "Promoter").await;
    // The standard user reads RecordType too.
    let api = Api::new(&h, &login(&h, "standard@acme.sim").await);
    let c = http();
    let q = "SELECT Id, DeveloperName, SobjectType, IsActive FROM RecordType WHERE SobjectType = 'Survey_Response__c' ORDER BY DeveloperName";
    let v: Value = c
        .get(format!("{}/services/data/v60.0/query", api.base))
        .query(&[("q", q)])
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["totalSize"], 2, "{v}");
    assert_eq!(
        v["records"][1],
        json!({
            "attributes": {"type": "RecordType", "url": format!("/services/data/v60.0/sobjects/RecordType/{promoter}")},
            "Id": promoter,
            "DeveloperName": "Promoter",
            "SobjectType": "Survey_Response__c",
            "IsActive": true,
        })
    );
    let (_, v, _) = api
        .call(
            "GET",
            "/query?q=SELECT+Id+FROM+RecordType+WHERE+IsActive+%3D+true",
            None,
        )
        .await;
    assert_eq!(v["totalSize"], 3, "{v}");
    let (_, v, _) = api
        .call("GET", "/query?q=SELECT+Shoe__c+FROM+RecordType", None)
        .await;
    assert_eq!(v[0]["errorCode"], "INVALID_FIELD");
    // Records filter by their RecordTypeId.
    let admin_api = Api::new(&h, &login(&h, "admin@acme.sim").await);
    for nps in [9, 10] {
        let (s, _, _) = admin_api
            .call(
                "POST",
                "/sobjects/Survey_Response__c",
                Some(json!({"NPS__c": nps})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (_, v, _) = admin_api
        .call(
            "GET",
            &format!(
                "/query?q=SELECT+Id,RecordTypeId+FROM+Survey_Response__c+WHERE+RecordTypeId+%3D+%27{promoter}%27"
            ),
            None,
        )
        .await;
    assert_eq!(v["totalSize"], 2, "{v}");
}
