//! The HTTP API end to end through `xmbridge serve` (the real binary, a child process): two
//! users made with `xmbridge user add`, sign-in with the cookie's attributes, Save & Test of a
//! connection against the Qualtrics simulator, a schedule, "sync now" finishing with per-table
//! counts, a member refused an admin route with the rule named, the login limit and the audit
//! log's client address, and no secret in any answer or in the server's output.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xmbridge_sim::SimConfig;
use xmbridge_test_kit::serve::{Served, start_server};

use crate::support::{self, Install};

const ADA_PW: &str = "ada's very long password";
const MO_PW: &str = "mo's very long password";

async fn add_user(inst: &Install, name: &str, role: &str, password: &str) {
    let file = inst.file(&format!("{name}.pw"), password);
    inst.ok(&[
        "user",
        "add",
        name,
        "--role",
        role,
        "--password-file",
        file.to_str().unwrap(),
    ])
    .await;
}

/// A client of one server, remembering every answer body.
struct Client<'a> {
    served: &'a Served,
    http: reqwest::Client,
    bodies: Vec<String>,
}

/// A session: the cookie value and the CSRF token.
#[derive(Clone, Default)]
struct Session {
    cookie: String,
    csrf: String,
}

impl Client<'_> {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        session: Option<&Session>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, self.served.at(path));
        if let Some(s) = session {
            req = req
                .header("cookie", format!("xmbridge_session={}", s.cookie))
                .header("x-csrf-token", &s.csrf);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.bodies.push(text);
        (status, headers, json)
    }

    async fn login(&mut self, user: &str, password: &str) -> (Session, String) {
        let (status, headers, body) = self
            .call(
                Method::POST,
                "/api/v1/session",
                None,
                Some(json!({"user": user, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}: {body}");
        let set_cookie = headers["set-cookie"].to_str().unwrap().to_string();
        let cookie = set_cookie
            .split(';')
            .next()
            .and_then(|kv| kv.strip_prefix("xmbridge_session="))
            .unwrap()
            .to_string();
        let csrf = body["csrf_token"].as_str().unwrap().to_string();
        (Session { cookie, csrf }, set_cookie)
    }
}

#[tokio::test]
async fn the_api_through_xmbridge_serve() {
    let inst = support::install();
    add_user(&inst, "ada", "admin", ADA_PW).await;
    add_user(&inst, "mo", "member", MO_PW).await;
    let sim = xmbridge_test_kit::sim::qualtrics(SimConfig {
        surveys: 2,
        responses: 30,
        contacts: 20,
        export_delay_ms: 10,
        ..SimConfig::default()
    })
    .await;
    let mut served = start_server(&inst, &[]).await;
    let mut c = Client {
        served: &served,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        bodies: Vec::new(),
    };

    let (ada, set_cookie) = c.login("ada", ADA_PW).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let (mo, _) = c.login("mo", MO_PW).await;
    let (status, _, me) = c.call(Method::GET, "/api/v1/me", Some(&mo), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["role"], "member");

    // Save & Test.
    let dest = format!("sqlite:{}", inst.path("acme.sqlite").display());
    let (status, _, added) = c
        .call(
            Method::POST,
            "/api/v1/connections",
            Some(&ada),
            Some(json!({"name": "acme", "url": sim.base_url, "auth": "token",
                        "api_token": sim.sim.cfg.admin_token(), "destination": dest})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["test"]["ok"], true);
    // A member: read yes, admin routes no (with the rule named).
    let (status, _, refused) = c
        .call(
            Method::POST,
            "/api/v1/connections/acme/syncs",
            Some(&mo),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rule: syncs are started and cancelled by admins"),
        "{refused}"
    );

    // Sync now, finished with per-table counts.
    let (status, _, queued) = c
        .call(
            Method::POST,
            "/api/v1/connections/acme/syncs",
            Some(&ada),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let id = queued["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let (status, _, run) = c
            .call(Method::GET, &format!("/api/v1/syncs/{id}"), Some(&mo), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{run}");
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap()) {
            break run;
        }
        assert!(Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    let responses = run["responses"].as_u64().unwrap();
    assert!(responses > 0);
    assert_eq!(
        run["tables"]["survey_response"]["inserted"].as_u64(),
        Some(responses),
        "{run}"
    );
    let (_, _, history) = c
        .call(
            Method::GET,
            "/api/v1/connections/acme/syncs",
            Some(&mo),
            None,
        )
        .await;
    assert_eq!(history["syncs"][0]["id"].as_i64(), Some(id));

    // A schedule (after the first run, which counted every response).
    let (status, _, sched) = c
        .call(
            Method::PUT,
            "/api/v1/connections/acme/schedule",
            Some(&ada),
            Some(json!({"every": "24h"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sched}");
    assert_eq!(sched["connection"]["sync"]["every"], "24h");

    // The OpenAPI document is served.
    let (status, _, doc) = c
        .call(Method::GET, "/api/v1/openapi.json", Some(&mo), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/syncs/{id}"]["get"].is_object());

    // The login limit (5 failures per user) and the audit log's address.
    for _ in 0..5 {
        let (status, _, _) = c
            .call(
                Method::POST,
                "/api/v1/session",
                None,
                Some(json!({"user": "mo", "password": "not it, not at all"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, headers, _) = c
        .call(
            Method::POST,
            "/api/v1/session",
            None,
            Some(json!({"user": "mo", "password": MO_PW})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    let (_, _, audit) = c.call(Method::GET, "/api/v1/audit", Some(&ada), None).await;
    let add = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "connection.add")
        .cloned()
        .expect("the connection's addition is audited");
    assert_eq!(add["actor"], "ada");
    assert_eq!(add["via"], "session");
    assert_eq!(add["address"], "127.0.0.1", "{add}");

    // Signed out, the session is gone.
    let (status, _, _) = c
        .call(Method::DELETE, "/api/v1/session", Some(&ada), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = c.call(Method::GET, "/api/v1/me", Some(&ada), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let bodies = std::mem::take(&mut c.bodies);
    served.terminate();
    served.wait(Duration::from_secs(30)).await;
    let output = format!("{}{}", served.stdout(), served.stderr());
    let token = sim.sim.cfg.admin_token();
    for secret in [
        ADA_PW,
        MO_PW,
        token.as_str(),
        ada.cookie.as_str(),
        mo.cookie.as_str(),
    ] {
        for body in &bodies {
            assert!(!body.contains(secret), "a secret in an answer: {body}");
        }
        assert!(!output.contains(secret), "a secret in the server's output");
    }
}
