//! Token calls and token sources against the in-process Qualtrics simulator: client
//! credentials, typed OAuth errors, retries, caching and refresh before expiry, invalidate,
//! refresh-token rotation through the sink, revocation, single-flight refreshes, and that no
//! secret shows up in any error or Debug output.

use crate::common;

use common::{SimClock, assert_debug_clean, assert_no_secret, fast_retry, start};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use xmbridge_auth::{
    ApiTokenSource, AuthError, AuthorizeOptions, ClientCredentialsSource, ExposeSecret,
    OAuthClient, OAuthProvider, RefreshTokenSource, SecretString, TokenSource, authorize,
};

#[tokio::test]
async fn api_token_source_sends_x_api_token() {
    let t = start().await;
    let token = t.h.sim.cfg.admin_token();
    let src = ApiTokenSource::new(SecretString::from(token.clone())).unwrap();
    let h = src.authorization().await.unwrap();
    assert_eq!(h.name.as_str(), "x-api-token");
    assert!(h.value.is_sensitive());
    let (st, me) = t.whoami(&h).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(src.expires_at(), None);
    assert_eq!(src.describe(), "API token (X-API-TOKEN)");
    assert_debug_clean(&src, std::slice::from_ref(&token));
    assert_debug_clean(&h, &[token]);
    assert!(ApiTokenSource::new(SecretString::from("  ")).is_err());
    assert!(ApiTokenSource::new(SecretString::from("a\nb")).is_err());
}

#[tokio::test]
async fn client_credentials_plain() {
    let t = start().await;
    let oauth = t.oauth("Brand admin", "acme");
    let resp = oauth.client_credentials(None).await.unwrap();
    assert_eq!(resp.token_type, "Bearer");
    assert_eq!(resp.expires_in, Some(3600));
    assert_eq!(resp.scope.as_deref(), Some("manage:all"));
    assert!(resp.refresh_token.is_none());
    assert_debug_clean(&resp, &[resp.access_token.expose_secret().to_string()]);

    let src = ClientCredentialsSource::new(oauth.clone(), Some("read:surveys".into()))
        .with_clock(t.clock());
    let h = src.authorization().await.unwrap();
    assert!(h.value.to_str().unwrap().starts_with("Bearer "));
    let (st, me) = t.whoami(&h).await;
    assert_eq!(st, 200);
    assert_eq!(me["result"]["userName"], "admin@simbrand.test");
    let exp = src.expires_at().unwrap();
    let now = SimClock(t.h.sim.clone());
    let left = exp.duration_since(xmbridge_auth::Clock::now(&now)).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    assert!(src.describe().contains("client credentials"));
    assert_debug_clean(&src, &t.secrets());
    assert_debug_clean(&oauth, &t.secrets());

    // Form-field client authentication works as well.
    let mut p = OAuthProvider::qualtrics(&t.base()).unwrap();
    p.client_auth = xmbridge_auth::ClientAuth::FormFields;
    let (id, secret) = t.client("Brand admin");
    let ff = OAuthClient::new(p, id, SecretString::from(secret)).unwrap();
    assert!(ff.client_credentials(Some("read:surveys")).await.is_ok());
}

#[tokio::test]
async fn oauth_errors_are_typed_and_name_the_fix() {
    let t = start().await;
    let secrets = t.secrets();
    let (id, _) = t.client("Brand admin");
    let wrong = OAuthClient::new(
        OAuthProvider::qualtrics(&t.base()).unwrap(),
        id,
        SecretString::from("definitely-not-the-secret"),
    )
    .unwrap();
    let e = wrong.client_credentials(None).await.unwrap_err();
    assert!(matches!(e, AuthError::InvalidClient { .. }), "{e:?}");
    assert!(
        e.to_string().contains("client id or secret is wrong"),
        "{e}"
    );
    assert_no_secret(
        &e,
        &[secrets.clone(), vec!["definitely-not-the-secret".into()]].concat(),
    );

    let viewer = t.oauth("Viewer", "v");
    let e = viewer
        .client_credentials(Some("manage:all"))
        .await
        .unwrap_err();
    match &e {
        AuthError::InvalidScope { scope, .. } => assert_eq!(scope, "manage:all"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("'manage:all'"), "{e}");
    assert_no_secret(&e, &secrets);

    let web = t.oauth("Web app", "w");
    let e = web.client_credentials(None).await.unwrap_err();
    assert!(matches!(e, AuthError::UnauthorizedClient { .. }), "{e:?}");
    assert_no_secret(&e, &secrets);

    // A refresh token the provider never issued.
    let e = web
        .refresh(&SecretString::from("no-such-refresh-token"), None)
        .await
        .unwrap_err();
    match &e {
        AuthError::AccountTokenExpired {
            connection,
            reauthorize,
            ..
        } => {
            assert_eq!(connection, "w");
            assert_eq!(reauthorize, "xmbridge connection authorize w");
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.to_string().contains("no-such-refresh-token"));
    assert_no_secret(&e, &secrets);

    // A spent/unknown authorization code.
    let e = web
        .authorization_code(
            &SecretString::from("bogus-code"),
            "http://127.0.0.1:1/callback",
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuthError::AuthorizationCodeRejected { .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("bogus-code"));
}

#[tokio::test]
async fn network_failures_and_5xx_are_retryable() {
    let t = start().await;
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (id, secret) = t.client("Brand admin");
    let dead = OAuthClient::new(
        OAuthProvider::qualtrics(&format!("http://127.0.0.1:{port}").parse().unwrap()).unwrap(),
        id.clone(),
        SecretString::from(secret.clone()),
    )
    .unwrap()
    .with_retry(fast_retry(2));
    let e = dead.client_credentials(None).await.unwrap_err();
    assert!(matches!(e, AuthError::Network { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_no_secret(&e, &t.secrets());

    // Timeouts are network errors too.
    t.post(
        "/_sim/faults",
        json!({"slow_ms": 1500, "only_paths": "/oauth2"}),
    )
    .await;
    let slow_http = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let slow = t
        .oauth("Brand admin", "acme")
        .with_http_client(slow_http)
        .with_retry(fast_retry(1));
    let e = slow.client_credentials(None).await.unwrap_err();
    assert!(matches!(e, AuthError::Network { .. }), "{e:?}");
    assert!(e.is_retryable());
    t.delete("/_sim/faults").await;

    // Every token call answered 5xx: retried, then a retry-able Server error.
    t.post(
        "/_sim/faults",
        json!({"error_rate": 1.0, "only_paths": "/oauth2"}),
    )
    .await;
    let before = t.token_calls().await;
    let oauth = t.oauth("Brand admin", "acme").with_retry(fast_retry(3));
    let e = oauth.client_credentials(None).await.unwrap_err();
    match &e {
        AuthError::Server {
            status, attempts, ..
        } => {
            assert!(*status >= 500);
            assert_eq!(*attempts, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_retryable());
    assert_eq!(t.token_calls().await - before, 3);

    // Half the calls fail: the retries get through.
    t.post("/_sim/faults", json!({"error_rate": 0.5})).await;
    let oauth = t.oauth("Brand admin", "acme").with_retry(fast_retry(8));
    for _ in 0..5 {
        oauth.client_credentials(None).await.unwrap();
    }
}

#[tokio::test]
async fn refreshes_before_expiry_and_after_invalidate() {
    let t = start().await;
    t.post("/_sim/oauth/settings", json!({"access_token_ttl_secs": 70}))
        .await;
    let src =
        ClientCredentialsSource::new(t.oauth("Brand admin", "acme"), None).with_clock(t.clock());
    let calls0 = t.token_calls().await;
    let h1 = src.authorization().await.unwrap();
    let h1b = src.authorization().await.unwrap();
    assert_eq!(h1.value, h1b.value, "cached");
    assert_eq!(t.token_calls().await - calls0, 1);
    let exp1 = src.expires_at().unwrap();

    // 70 s lifetime, 60 s margin → refreshed once 10 s have passed, while h1 still works.
    t.advance(5).await;
    assert_eq!(src.authorization().await.unwrap().value, h1.value);
    t.advance(7).await;
    let h2 = src.authorization().await.unwrap();
    assert_ne!(h2.value, h1.value, "refreshed before expiry");
    assert_eq!(t.token_calls().await - calls0, 2);
    assert!(src.expires_at().unwrap() > exp1);
    assert_eq!(
        t.whoami(&h1).await.0,
        200,
        "the old token had not expired yet"
    );
    assert_eq!(t.whoami(&h2).await.0, 200);

    // After the old one's lifetime it is gone at the provider; ours is still fresh.
    t.advance(65).await;
    assert_eq!(t.whoami(&h1).await.0, 401);
    let h2b = src.authorization().await.unwrap();
    assert_eq!(t.whoami(&h2b).await.0, 200);

    // invalidate() (after a 401) → a new token on the next call.
    src.invalidate();
    let h3 = src.authorization().await.unwrap();
    assert_ne!(h3.value, h2b.value);
    assert_eq!(t.whoami(&h3).await.0, 200);
}

/// Runs the authorization-code flow with auto-approve for `user`; returns the token answer.
async fn authorized(
    t: &common::T,
    oauth: &OAuthClient,
    user: &str,
) -> xmbridge_auth::TokenResponse {
    t.post("/_sim/oauth/auto-approve", json!({"user": user}))
        .await;
    let http = t.http.clone();
    authorize(
        oauth,
        AuthorizeOptions {
            scope: Some("manage:all offline".into()),
            timeout: Duration::from_secs(20),
            ..Default::default()
        },
        move |url| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                let loc = r.headers()["location"].to_str().unwrap().to_string();
                http.get(loc).send().await.unwrap();
            });
        },
    )
    .await
    .unwrap()
}

#[derive(Default)]
struct Saved(Mutex<Vec<String>>);

impl xmbridge_auth::RefreshTokenSink for Saved {
    fn save(&self, t: &SecretString) -> Result<(), xmbridge_auth::SinkError> {
        self.0.lock().unwrap().push(t.expose_secret().to_string());
        Ok(())
    }
}

#[tokio::test]
async fn rotation_saves_every_new_refresh_token_first() {
    let t = start().await;
    let oauth = t.oauth("Web app", "surveys-eu");
    let first = authorized(&t, &oauth, "analyst").await;
    let rt0 = first.refresh_token.clone().unwrap();
    let sink = Arc::new(Saved::default());
    let src =
        RefreshTokenSource::new(oauth.clone(), rt0.clone(), sink.clone()).with_clock(t.clock());

    let h1 = src.authorization().await.unwrap();
    assert_eq!(
        t.whoami(&h1).await.1["result"]["userName"],
        "analyst@simbrand.test"
    );
    src.invalidate();
    let h2 = src.authorization().await.unwrap();
    assert_ne!(h1.value, h2.value);
    src.invalidate();
    src.authorization().await.unwrap();

    let saved = sink.0.lock().unwrap().clone();
    assert_eq!(saved.len(), 3, "one save per rotation");
    let mut all = saved.clone();
    all.push(rt0.expose_secret().to_string());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "each refresh token is new");

    // The replaced refresh tokens no longer work.
    for old in [rt0.expose_secret(), saved[0].as_str(), saved[1].as_str()] {
        let e = oauth
            .refresh(&SecretString::from(old.to_string()), None)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::AccountTokenExpired { .. }), "{e:?}");
    }
    // The last one does (and rotates once more).
    let last = oauth
        .refresh(&SecretString::from(saved[2].clone()), None)
        .await
        .unwrap();
    assert!(last.refresh_token.is_some());

    let mut secrets = t.secrets();
    secrets.extend(saved.iter().cloned());
    assert_debug_clean(&src, &secrets);
    assert!(src.describe().contains("surveys-eu"));
}

#[tokio::test]
async fn a_failing_sink_stops_the_new_token_from_being_used() {
    let t = start().await;
    let oauth = t.oauth("Web app", "c1");
    let first = authorized(&t, &oauth, "analyst").await;
    let sink = Arc::new(|_: &SecretString| -> Result<(), xmbridge_auth::SinkError> {
        Err("disk full".into())
    });
    let src = RefreshTokenSource::new(oauth, first.refresh_token.unwrap(), sink);
    let e = src.authorization().await.unwrap_err();
    assert!(matches!(e, AuthError::RefreshTokenNotSaved { .. }), "{e:?}");
    assert!(e.to_string().contains("disk full"));
    assert!(e.to_string().contains("xmbridge connection authorize c1"));
    assert!(
        src.expires_at().is_none(),
        "the access token was not cached"
    );
}

#[tokio::test]
async fn revocation_gives_account_token_expired_with_the_command() {
    let t = start().await;
    let oauth = t.oauth("Web app", "mysurveys");
    let first = authorized(&t, &oauth, "analyst").await;
    let sink = Arc::new(Saved::default());
    let src = RefreshTokenSource::new(oauth, first.refresh_token.unwrap(), sink.clone())
        .with_clock(t.clock());
    src.authorization().await.unwrap();

    t.post("/_sim/tokens/revoke", json!({"user": "analyst"}))
        .await;
    src.invalidate();
    let e = src.authorization().await.unwrap_err();
    match &e {
        AuthError::AccountTokenExpired {
            connection,
            reauthorize,
            ..
        } => {
            assert_eq!(connection, "mysurveys");
            assert_eq!(reauthorize, "xmbridge connection authorize mysurveys");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.needs_reauthorization());
    assert!(
        e.to_string()
            .contains("Re-authorize with: xmbridge connection authorize mysurveys")
    );
    let mut secrets = t.secrets();
    secrets.extend(sink.0.lock().unwrap().iter().cloned());
    assert_no_secret(&e, &secrets);

    // The refusal sticks: no further calls to the provider with a dead token.
    let calls = t.token_calls().await;
    let e2 = src.authorization().await.unwrap_err();
    assert!(matches!(e2, AuthError::AccountTokenExpired { .. }));
    assert_eq!(t.token_calls().await, calls);
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let t = start().await;
    let oauth = t.oauth("Web app", "c");
    let first = authorized(&t, &oauth, "analyst").await;
    let sink = Arc::new(Saved::default());
    let src = Arc::new(RefreshTokenSource::new(
        oauth,
        first.refresh_token.unwrap(),
        sink.clone(),
    ));
    let calls = t.token_calls().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = src.clone();
        tasks.push(tokio::spawn(
            async move { s.authorization().await.unwrap() },
        ));
    }
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap().value);
    }
    values.dedup();
    assert_eq!(values.len(), 1, "everyone got the same token");
    assert_eq!(t.token_calls().await - calls, 1, "one refresh");
    assert_eq!(sink.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn seeded_access_token_is_used_until_it_is_due() {
    let t = start().await;
    let oauth = t.oauth("Web app", "c");
    let first = authorized(&t, &oauth, "analyst").await;
    let sink = Arc::new(Saved::default());
    let src = RefreshTokenSource::new(oauth, first.refresh_token.clone().unwrap(), sink.clone())
        .with_clock(t.clock())
        .with_access_token(&first.access_token, Some(Duration::from_secs(3600)))
        .unwrap();
    let calls = t.token_calls().await;
    let h = src.authorization().await.unwrap();
    assert_eq!(t.token_calls().await, calls);
    assert_eq!(t.whoami(&h).await.0, 200);
    assert!(src.expires_at().unwrap() > UNIX_EPOCH);
    t.advance(3550).await;
    src.authorization().await.unwrap();
    assert_eq!(
        t.token_calls().await,
        calls + 1,
        "refreshed 60 s before expiry"
    );
    assert_eq!(sink.0.lock().unwrap().len(), 1);
}
