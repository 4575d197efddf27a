//! The client against the in-process simulator over real HTTP.

use futures_util::TryStreamExt;
use xmbridge_qualtrics::{Auth, BaseUrl, Client, Error, ExportOptions, RetryPolicy};
use xmbridge_sim::{SimConfig, start_qualtrics};

async fn sim(surveys: usize) -> (xmbridge_sim::SimHandle, Client) {
    let cfg = SimConfig {
        surveys,
        responses: 20,
        api_token: "test-token".into(),
        ..Default::default()
    };
    let h = start_qualtrics(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
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
