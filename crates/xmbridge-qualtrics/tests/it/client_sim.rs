//! The client against the in-process simulator over real HTTP.

use futures_util::TryStreamExt;
use xmbridge_qualtrics::{Auth, BaseUrl, Client, Error, ExportOptions, RetryPolicy};
use xmbridge_sim::SimConfig;

async fn sim(surveys: usize) -> (xmbridge_sim::SimHandle, Client) {
    let cfg = SimConfig {
        surveys,
        responses: 20,
        api_token: "test-token".into(),
        ..Default::default()
    };
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::api_token("test-token"),
    )
    .retry(RetryPolicy::none())
    .build()
    .unwrap();
    (h, c)
}

#[tokio::test]
async fn whoami_and_all_survey_pages() {
    let (_h, c) = sim(230).await;
    let me = c.whoami().await.unwrap();
    assert!(me.user_id.starts_with("UR_"), "{me:?}");
    assert_eq!(me.brand_id.as_deref(), Some("simbrand"));
    let surveys: Vec<_> = c.surveys().try_collect().await.unwrap();
    assert_eq!(surveys.len(), 230, "three pages followed");
    let ids: std::collections::HashSet<_> = surveys.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids.len(), 230, "no page read twice");
    assert_eq!(c.api_calls(), 4);
}

#[tokio::test]
async fn wrong_token_is_a_typed_401() {
    let (h, _) = sim(1).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::api_token("nope"),
    )
    .build()
    .unwrap();
    let err = c.whoami().await.unwrap_err();
    let api = err.api().expect("an API error");
    assert_eq!(api.status, 401);
    assert!(api.request_id.is_some());
    assert!(!api.error_message.is_empty());
}

#[tokio::test]
async fn unknown_survey_export_is_404_not_retried() {
    let (_h, c) = sim(1).await;
    let err = c
        .export_responses("SV_doesnotexist", &ExportOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(c.api_calls(), 1);
}

#[tokio::test]
async fn refused_connection_is_a_transport_error() {
    // Bind then drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = Client::builder(
        BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        Auth::api_token("t"),
    )
    .retry(RetryPolicy {
        max_retries: 2,
        base_delay: std::time::Duration::from_millis(5),
        ..Default::default()
    })
    .build()
    .unwrap();
    let err = c.whoami().await.unwrap_err();
    assert!(
        matches!(err, Error::Transport { not_sent: true, .. }),
        "{err}"
    );
    assert_eq!(c.api_calls(), 3, "first try + 2 retries");
}

// ---- transient faults: injected 5xx and dropped connections (the simulator's `/_sim/faults`) ----

async fn faults(h: &xmbridge_sim::SimHandle, body: serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_sim/faults", h.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{body}: {}", resp.status());
}

async fn sim_stats(h: &xmbridge_sim::SimHandle) -> serde_json::Value {
    reqwest::get(format!("{}/_sim/stats", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A client that retries quickly and patiently (faults are frequent here).
async fn faulty_sim(surveys: usize) -> (xmbridge_sim::SimHandle, Client) {
    let cfg = SimConfig {
        surveys,
        responses: 20,
        api_token: "test-token".into(),
        export_delay_ms: 50,
        ..Default::default()
    };
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::api_token("test-token"),
    )
    .retry(RetryPolicy {
        max_retries: 8,
        base_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(40),
        ..Default::default()
    })
    .jitter_seed(3)
    .build()
    .unwrap();
    (h, c)
}

fn quick_export() -> ExportOptions {
    ExportOptions {
        poll_interval: std::time::Duration::from_millis(10),
        max_poll_interval: std::time::Duration::from_millis(40),
        ..Default::default()
    }
}

async fn response_ids(c: &Client, sid: &str) -> Vec<String> {
    let file = c.export_responses(sid, &quick_export()).await.unwrap();
    let mut ids = Vec::new();
    file.for_each_response(|r| ids.push(r["responseId"].as_str().unwrap().to_string()))
        .unwrap();
    ids.sort();
    ids
}

#[tokio::test]
async fn survey_walk_survives_injected_server_errors() {
    let (h, c) = faulty_sim(250).await;
    faults(&h, serde_json::json!({"error_rate": 0.3})).await;
    let surveys: Vec<_> = c.surveys().try_collect().await.unwrap();
    let ids: std::collections::HashSet<_> = surveys.iter().map(|s| s.id.clone()).collect();
    assert_eq!((surveys.len(), ids.len()), (250, 250));
    let s = sim_stats(&h).await;
    assert!(s["injected_errors"].as_u64().unwrap() > 0, "{s}");
}

#[tokio::test]
async fn survey_walk_survives_dropped_connections() {
    let (h, c) = faulty_sim(250).await;
    faults(&h, serde_json::json!({"drop_rate": 0.2})).await;
    // Several walks so that drops surely happen.
    for _ in 0..4 {
        let surveys: Vec<_> = c.surveys().try_collect().await.unwrap();
        let ids: std::collections::HashSet<_> = surveys.iter().map(|s| s.id.clone()).collect();
        assert_eq!((surveys.len(), ids.len()), (250, 250));
    }
    let s = sim_stats(&h).await;
    assert!(s["dropped"].as_u64().unwrap() > 0, "{s}");
}

#[tokio::test]
async fn export_survives_faults_on_progress_and_download() {
    let (h, c) = faulty_sim(1).await;
    let sid = c.surveys().try_collect::<Vec<_>>().await.unwrap()[0]
        .id
        .clone();
    let want = response_ids(&c, &sid).await;
    assert_eq!(want.len(), 20);
    // Faults on everything after the start (progress polls and the file): the trailing slash
    // keeps the start itself out, which is never re-POSTed blindly (next test).
    let scope = format!("/API/v3/surveys/{sid}/export-responses/");
    faults(
        &h,
        serde_json::json!({"error_rate": 0.3, "only_paths": scope}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(response_ids(&c, &sid).await, want);
    }
    faults(
        &h,
        serde_json::json!({"error_rate": 0.0, "drop_rate": 0.3, "only_paths": scope}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(response_ids(&c, &sid).await, want);
    }
    let s = sim_stats(&h).await;
    assert!(s["injected_errors"].as_u64().unwrap() > 0, "{s}");
    assert!(s["dropped"].as_u64().unwrap() > 0, "{s}");
}

/// Starting an export creates nothing a user sees, so it is sent again after a 5xx or a dropped
/// answer, like a GET: two 500s on the start still give the export of a clean run, and a start
/// whose answers are always cut off is retried up to the policy's limit.
#[tokio::test]
async fn export_start_is_re_posted_after_a_5xx_or_a_drop() {
    let (h, c) = faulty_sim(1).await;
    let sid = c.surveys().try_collect::<Vec<_>>().await.unwrap()[0]
        .id
        .clone();
    let clean = response_ids(&c, &sid).await;
    let start = format!("/API/v3/surveys/{sid}/export-responses");
    let failed =
        |s: &serde_json::Value| s["by_route"]["export-responses"]["injected_errors"].as_u64();
    faults(
        &h,
        serde_json::json!({"fail_next": {"method": "POST", "route": "export-responses", "count": 2}}),
    )
    .await;
    assert_eq!(response_ids(&c, &sid).await, clean);
    assert_eq!(failed(&sim_stats(&h).await), Some(2), "both 500s were sent");

    faults(
        &h,
        serde_json::json!({"drop_rate": 1.0, "only_paths": start}),
    )
    .await;
    let calls_before = c.api_calls();
    let err = c.export_responses(&sid, &quick_export()).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    assert_eq!(c.api_calls() - calls_before, 9, "1 + 8 retries");
}
