//! The authorization-code flow end to end against the simulator: the printed URL is fetched
//! with reqwest (redirects off) and the `Location` followed to the local listener, as a browser
//! would. Covers success, a state mismatch (nothing exchanged), access_denied and the timeout.

use crate::common;

use common::{assert_no_secret, start};
use serde_json::json;
use std::time::Duration;
use url::Url;
use xmbridge_auth::{
    AuthError, AuthorizeFlow, AuthorizeOptions, ExposeSecret, SecretString, authorize,
};

fn opts() -> AuthorizeOptions {
    AuthorizeOptions {
        scope: Some("read:surveys offline".into()),
        timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

fn param(u: &Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn code_flow_end_to_end() {
    let t = start().await;
    t.post("/_sim/oauth/auto-approve", json!({"user": "analyst"}))
        .await;
    let oauth = t.oauth("Web app", "acme");
    let http = t.http.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let resp = authorize(&oauth, opts(), move |url| {
        let url = url.clone();
        tokio::spawn(async move {
            let r = http.get(url.clone()).send().await.unwrap();
            assert_eq!(r.status(), 302);
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let page = http.get(&loc).send().await.unwrap();
            let status = page.status();
            let html = page.text().await.unwrap();
            let _ = tx.send((url, loc, status, html));
        });
    })
    .await
    .unwrap();
    let (url, loc, status, html) = rx.await.unwrap();
    // The URL carries everything the provider needs.
    assert_eq!(param(&url, "response_type").as_deref(), Some("code"));
    assert_eq!(param(&url, "client_id").unwrap(), t.client("Web app").0);
    assert_eq!(
        param(&url, "scope").as_deref(),
        Some("read:surveys offline")
    );
    assert_eq!(
        param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let redirect = param(&url, "redirect_uri").unwrap();
    assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"));
    assert!(param(&url, "state").unwrap().len() >= 32);
    assert!(loc.starts_with(&redirect));
    assert_eq!(status, 200);
    assert!(html.contains("Authorization received"), "{html}");

    assert!(resp.refresh_token.is_some());
    assert_eq!(resp.scope.as_deref(), Some("read:surveys offline"));
    let h = xmbridge_auth::AuthHeader {
        name: reqwest::header::AUTHORIZATION,
        value: format!("Bearer {}", resp.access_token.expose_secret())
            .parse()
            .unwrap(),
    };
    let (st, me) = t.whoami(&h).await;
    assert_eq!(st, 200);
    assert_eq!(me["result"]["userName"], "analyst@simbrand.test");
}

#[tokio::test]
async fn state_mismatch_is_refused_and_nothing_is_exchanged() {
    let t = start().await;
    t.post("/_sim/oauth/auto-approve", json!({"user": "analyst"}))
        .await;
    let oauth = t.oauth("Web app", "acme");
    let flow = AuthorizeFlow::start(&oauth, opts()).await.unwrap();
    let redirect_uri = flow.redirect_uri().to_string();
    let r = t.http.get(flow.url().clone()).send().await.unwrap();
    let mut loc = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = param(&loc, "code").unwrap();
    // Forge the state.
    let pairs: Vec<(String, String)> = loc
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    loc.query_pairs_mut().clear().extend_pairs(pairs);
    let http = t.http.clone();
    let browser = tokio::spawn(async move {
        let page = http.get(loc).send().await.unwrap();
        (page.status(), page.text().await.unwrap())
    });
    let e = flow.finish().await.unwrap_err();
    assert!(matches!(e, AuthError::StateMismatch), "{e:?}");
    assert!(e.to_string().contains("nothing was exchanged"), "{e}");
    let (status, html) = browser.await.unwrap();
    assert_eq!(status, 400);
    assert!(html.contains("state mismatch"), "{html}");
    assert_no_secret(&e, std::slice::from_ref(&code));

    // The code was never spent: it still exchanges (PKCE is not checked by the simulator).
    let resp = oauth
        .authorization_code(&SecretString::from(code), &redirect_uri, None)
        .await
        .unwrap();
    assert!(resp.refresh_token.is_some());
}

#[tokio::test]
async fn access_denied_on_the_consent_page() {
    let t = start().await;
    t.delete("/_sim/oauth/auto-approve").await;
    let oauth = t.oauth("Web app", "acme");
    let flow = AuthorizeFlow::start(&oauth, opts()).await.unwrap();
    // GET shows the consent page; the user presses "Deny".
    let page = t.http.get(flow.url().clone()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let mut form: Vec<(String, String)> = flow.url().query_pairs().into_owned().collect();
    form.push(("decision".into(), "deny".into()));
    form.push(("user".into(), "analyst".into()));
    let r = t
        .http
        .post(format!("{}/oauth2/auth", t.h.base_url))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let http = t.http.clone();
    let browser =
        tokio::spawn(async move { http.get(loc).send().await.unwrap().text().await.unwrap() });
    let e = flow.finish().await.unwrap_err();
    match &e {
        AuthError::AccessDenied { detail } => assert!(detail.contains("denied"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("choose Allow"));
    assert!(browser.await.unwrap().contains("access_denied"));
}

#[tokio::test]
async fn no_redirect_times_out_and_stray_requests_are_ignored() {
    let t = start().await;
    let oauth = t.oauth("Web app", "acme");
    let flow = AuthorizeFlow::start(
        &oauth,
        AuthorizeOptions {
            timeout: Duration::from_millis(600),
            ..opts()
        },
    )
    .await
    .unwrap();
    let base = flow
        .redirect_uri()
        .trim_end_matches("/callback")
        .to_string();
    // A favicon request and a bare callback do not end the flow.
    let fav = t
        .http
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(fav.status(), 404);
    let bare = t.http.get(format!("{base}/callback")).send().await.unwrap();
    assert_eq!(bare.status(), 400);
    let e = flow.finish().await.unwrap_err();
    assert!(matches!(e, AuthError::AuthorizeTimeout { .. }), "{e:?}");
}

#[tokio::test]
async fn provider_without_authorize_endpoint_says_so() {
    let t = start().await;
    let (id, secret) = t.client("Web app");
    let mut p = xmbridge_auth::OAuthProvider::qualtrics(&t.base()).unwrap();
    p.authorize_url = None;
    let oauth = xmbridge_auth::OAuthClient::new(p, id, SecretString::from(secret)).unwrap();
    let e = AuthorizeFlow::start(&oauth, opts()).await.unwrap_err();
    assert!(e.to_string().contains("no authorization endpoint"), "{e}");
}
