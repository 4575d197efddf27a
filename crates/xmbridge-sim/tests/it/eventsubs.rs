//! End-to-end tests of `/eventsubscriptions` and webhook delivery: a local receiver on
//! 127.0.0.1:0 records the form posts; HMACs are checked with hmac/sha2.

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha512;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use xmbridge_sim::qualtrics::eventsubs::publish_completed_response;
use xmbridge_sim::{SimConfig, SimHandle};

type Posts = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

/// A receiver answering `status` to every POST, recording `(path, form fields)`.
async fn receiver(status: StatusCode) -> (String, Posts) {
    let posts: Posts = Arc::default();
    async fn hook(
        State((posts, status)): State<(Posts, StatusCode)>,
        uri: axum::http::Uri,
        Form(f): Form<HashMap<String, String>>,
    ) -> StatusCode {
        posts.lock().push((uri.path().to_string(), f));
        status
    }
    let app = axum::Router::new()
        .route("/{hook}", post(hook))
        .with_state((posts.clone(), status));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}"), posts)
}

struct T {
    h: SimHandle,
    c: reqwest::Client,
    admin: String,
}

impl T {
    async fn new() -> T {
        let h = xmbridge_test_kit::sim::qualtrics(SimConfig::default()).await;
        let admin = h.sim.cfg.admin_token();
        T {
            h,
            c: reqwest::Client::new(),
            admin,
        }
    }
    async fn call(&self, m: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self
            .c
            .request(m, format!("{}{path}", self.h.api_url()))
            .header("X-API-TOKEN", token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn create(&self, body: Value) -> (u16, Value) {
        self.call(Method::POST, "/eventsubscriptions", &self.admin, Some(body))
            .await
    }
    fn token(&self, idx: usize) -> String {
        self.h.sim.users.read()[idx].api_token.clone()
    }
}

fn err_msg(v: &Value) -> String {
    v["meta"]["error"]["errorMessage"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn wait_for(posts: &Posts, n: usize) {
    for _ in 0..250 {
        if posts.lock().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} posts, got {}", posts.lock().len());
}

#[tokio::test]
async fn management_validation_and_permissions() {
    let t = T::new().await;
    let sub = |topics: &str, url: &str| json!({"topics": topics, "publicationUrl": url});
    let (s, v) = t
        .create(sub(
            "surveyengine.completedResponse.*",
            "https://hooks.example.com/qx",
        ))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("loopback"), "{v}");
    let (s, _) = t
        .create(sub("surveyengine.completedResponse.*", "ftp://127.0.0.1/x"))
        .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .create(sub("surveyengine.completedResponse.*", "not a url"))
        .await;
    assert_eq!(s, 400);
    let (s, v) = t
        .create(sub("surveyengine.bogus", "http://127.0.0.1:9/x"))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("surveyengine.bogus"));
    let (s, v) = t
        .create(json!({"topics": "*", "publicationUrl": "http://127.0.0.1:9/x", "encrypt": true}))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("not supported by the simulator"));
    let (s, _) = t
        .create(json!({"topics": "*", "publicationUrl": "http://127.0.0.1:9/x", "encrypt": "no"}))
        .await;
    assert_eq!(s, 400);
    let (s, v) = t
        .create(json!({"publicationUrl": "http://127.0.0.1:9/x"}))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("topics"));

    // Non-admins are refused.
    let body = sub("*", "http://localhost:9/x");
    for idx in [1, 2, 3] {
        let (s, _) = t
            .call(
                Method::POST,
                "/eventsubscriptions",
                &t.token(idx),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 403, "user {idx}");
        let (s, _) = t
            .call(Method::GET, "/eventsubscriptions", &t.token(idx), None)
            .await;
        assert_eq!(s, 403, "user {idx}");
    }

    let (s, v) = t.create(body).await;
    assert_eq!(s, 200);
    let id = v["result"]["id"].as_str().unwrap().to_string();
    let (s, v) = t
        .create(sub("controlpanel.activateSurvey", "http://[::1]:9/y"))
        .await;
    assert_eq!(s, 200);
    let id2 = v["result"]["id"].as_str().unwrap().to_string();
    let (s, v) = t
        .call(Method::GET, "/eventsubscriptions", &t.admin, None)
        .await;
    assert_eq!(s, 200);
    let els = v["result"]["elements"].as_array().unwrap();
    assert_eq!(els.len(), 2);
    assert_eq!(els[0]["id"], id.as_str());
    assert_eq!(els[0]["topics"], "*");
    assert_eq!(els[0]["publicationUrl"], "http://localhost:9/x");
    let (s, v) = t
        .call(
            Method::GET,
            &format!("/eventsubscriptions/{id2}"),
            &t.admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["topics"], "controlpanel.activateSurvey");
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/eventsubscriptions/{id}"),
            &t.admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    for m in [Method::GET, Method::DELETE] {
        let (s, _) = t
            .call(m, &format!("/eventsubscriptions/{id}"), &t.admin, None)
            .await;
        assert_eq!(s, 404);
    }

    // Ids are deterministic per seed.
    let t2 = T::new().await;
    let (_, v) = t2.create(sub("*", "http://localhost:9/x")).await;
    assert_eq!(v["result"]["id"], id.as_str());
}

#[tokio::test]
async fn delivers_completed_responses() {
    let t = T::new().await;
    let (base, posts) = receiver(StatusCode::OK).await;
    let sid = t.h.sim.surveys[0].id.clone();
    let other = t.h.sim.surveys[1].id.clone();
    let key = "s3cret-key";
    let mk = |topics: String, path: &str, key: Option<&str>| {
        let mut b =
            json!({"topics": topics, "publicationUrl": format!("{base}/{path}"), "encrypt": false});
        if let Some(k) = key {
            b["sharedKey"] = json!(k);
        }
        b
    };
    let (s, v) = t
        .create(mk(
            format!("surveyengine.completedResponse.{sid}"),
            "exact",
            Some(key),
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let exact_id = v["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        t.create(mk("surveyengine.completedResponse.*".into(), "wild", None))
            .await
            .0,
        200
    );
    assert_eq!(t.create(mk("*".into(), "all", None)).await.0, 200);
    assert_eq!(
        t.create(mk(
            format!("surveyengine.completedResponse.{other}"),
            "other",
            None
        ))
        .await
        .0,
        200
    );
    assert_eq!(
        t.create(mk("controlpanel.*".into(), "cp", None)).await.0,
        200
    );

    let completed_ms = 1_793_491_200_000 - 3_600_000;
    publish_completed_response(&t.h.sim, &sid, "R_abcdefghijklmno", completed_ms);
    wait_for(&posts, 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = posts.lock().clone();
    let mut paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/all", "/exact", "/wild"]);

    for (path, f) in &got {
        assert_eq!(
            f["Topic"],
            format!("simbrand.surveyengine.completedResponse.{sid}")
        );
        let msg: Value = serde_json::from_str(&f["MSG"]).unwrap();
        assert_eq!(msg["Status"], "Complete");
        assert_eq!(msg["SurveyID"], sid.as_str());
        assert_eq!(msg["ResponseID"], "R_abcdefghijklmno");
        assert_eq!(msg["CompletedDate"], "2026-10-31 23:00:00");
        assert_eq!(msg["BrandID"], "simbrand");
        assert!(msg["CreatorID"].as_str().unwrap().starts_with("UR_"));
        // Key order as in §11.2.
        let keys: Vec<&String> = msg.as_object().unwrap().keys().collect();
        assert_eq!(
            keys[..5],
            [
                "Status",
                "SurveyID",
                "ResponseID",
                "CompletedDate",
                "BrandID"
            ]
        );
        if path == "/exact" {
            let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
            mac.update(f["MSG"].as_bytes());
            let sig = hex::decode(&f["HMAC"]).unwrap();
            mac.verify_slice(&sig).unwrap();
            assert_eq!(f["HMAC"], f["HMAC"].to_lowercase());
            assert_eq!(f["HMAC"].len(), 128);
        } else {
            assert!(!f.contains_key("HMAC"));
        }
    }

    let deliveries = t.h.sim.eventsubs.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == "delivered" && d.attempts == 1)
    );
    assert!(deliveries.iter().any(|d| d.subscription_id == exact_id));

    // The admin route shows the same records.
    use tower::ServiceExt as _;
    let app = axum::Router::new()
        .merge(xmbridge_sim::qualtrics::eventsubs::admin_routes())
        .with_state(t.h.sim.clone());
    let resp = app
        .oneshot(
            axum::http::Request::get("/_sim/eventsubs/deliveries")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let els = v["result"]["elements"].as_array().unwrap();
    assert_eq!(els.len(), 3);
    assert_eq!(els[0]["status"], "delivered");
    assert_eq!(els[0]["attempts"], 1);
    assert!(els[0]["subscriptionId"].is_string());
}

#[tokio::test]
async fn retries_then_gives_up() {
    let t = T::new().await;
    let (base, posts) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let sid = t.h.sim.surveys[0].id.clone();
    let (s, _) = t
        .create(json!({"topics": "*", "publicationUrl": format!("{base}/fail")}))
        .await;
    assert_eq!(s, 200);
    publish_completed_response(&t.h.sim, &sid, "R_000000000000001", 1_793_400_000_000);
    for _ in 0..200 {
        if t.h
            .sim
            .eventsubs
            .deliveries()
            .iter()
            .any(|d| d.status == "failed")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = t.h.sim.eventsubs.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, "failed");
    assert_eq!(d[0].attempts, 4);
    assert_eq!(d[0].http_status, Some(500));
    assert_eq!(posts.lock().len(), 4);

    // Nobody listening: connection errors are retried and recorded too.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let t = T::new().await;
    t.create(json!({"topics": "*", "publicationUrl": format!("http://{dead}/x")}))
        .await;
    publish_completed_response(&t.h.sim, &sid, "R_000000000000002", 1_793_400_000_000);
    for _ in 0..200 {
        if t.h
            .sim
            .eventsubs
            .deliveries()
            .iter()
            .any(|d| d.status == "failed")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = t.h.sim.eventsubs.deliveries();
    assert_eq!(d[0].status, "failed");
    assert_eq!(d[0].attempts, 4);
    assert!(d[0].error.is_some());
}

/// The whole path: a response created through the API is delivered, signed, to the subscriber;
/// an in-progress one is not.
#[tokio::test]
async fn response_created_through_the_api_is_delivered_signed() {
    let t = T::new().await;
    let (base, posts) = receiver(StatusCode::OK).await;
    let sid = t.h.sim.surveys[2].id.clone();
    let key = "k3y";
    let (s, v) = t
        .create(json!({"topics": format!("surveyengine.completedResponse.{sid}"),
                       "publicationUrl": format!("{base}/hook"), "encrypt": false, "sharedKey": key}))
        .await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = t
        .call(
            Method::POST,
            &format!("/surveys/{sid}/responses"),
            &t.admin,
            Some(json!({"values": {"QID1": 1, "finished": 0}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = t
        .call(
            Method::POST,
            &format!("/surveys/{sid}/responses"),
            &t.admin,
            Some(json!({"values": {"QID1": 1, "segment": "gold"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rid = v["result"]["responseId"].as_str().unwrap().to_string();

    wait_for(&posts, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = posts.lock().clone();
    assert_eq!(got.len(), 1, "only the finished response fires: {got:?}");
    let (_, f) = &got[0];
    let msg: Value = serde_json::from_str(&f["MSG"]).unwrap();
    assert_eq!(msg["ResponseID"], rid.as_str());
    assert_eq!(msg["SurveyID"], sid.as_str());
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(f["MSG"].as_bytes());
    mac.verify_slice(&hex::decode(&f["HMAC"]).unwrap()).unwrap();
}
