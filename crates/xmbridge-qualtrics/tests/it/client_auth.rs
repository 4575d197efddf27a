//! Authentication against the in-process simulator: OAuth bearer tokens through a `TokenSource`,
//! one fresh-token retry after a 401, data-center-bound tokens, the proxy notice and data-center
//! discovery over mutual TLS with Qualtrics host names pinned to loopback.

use futures_util::TryStreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use xmbridge_auth::{AuthError, AuthHeader, BoxFuture, TokenSource};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, Error, ExportOptions, RetryPolicy};
use xmbridge_sim::{SimConfig, SimHandle};

/// A minimal client-credentials source (the real ones live in `xmbridge-auth`): fetches a token
/// from the simulator's `/oauth2/token`, caches it, forgets it on `invalidate`.
#[derive(Debug)]
struct ClientCredentials {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: String,
    /// Sent as `Host` to the token endpoint: the data center that issues the token.
    host: Option<String>,
    cached: Mutex<Option<String>>,
    fetches: AtomicUsize,
    invalidations: AtomicUsize,
}

fn bearer(token: &str) -> AuthHeader {
    AuthHeader {
        name: reqwest::header::AUTHORIZATION,
        value: format!("Bearer {token}").parse().unwrap(),
    }
}

impl TokenSource for ClientCredentials {
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
        Box::pin(async move {
            if let Some(t) = self.cached.lock().unwrap().clone() {
                return Ok(bearer(&t));
            }
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let mut rb = self.http.post(&self.token_url).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
            ]);
            if let Some(h) = &self.host {
                rb = rb.header("Host", h);
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| AuthError::Other(format!("token call failed: {e}")))?;
            let v: Value = resp
                .json()
                .await
                .map_err(|e| AuthError::Other(e.to_string()))?;
            let token = v["access_token"]
                .as_str()
                .ok_or_else(|| AuthError::Other(format!("no access_token in {v}")))?
                .to_string();
            *self.cached.lock().unwrap() = Some(token.clone());
            Ok(bearer(&token))
        })
    }

    fn invalidate(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        *self.cached.lock().unwrap() = None;
    }

    fn describe(&self) -> String {
        "OAuth client credentials".into()
    }
}

/// A source that always fails the way a revoked refresh token does.
#[derive(Debug)]
struct Expired;

impl TokenSource for Expired {
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
        Box::pin(async {
            Err(AuthError::AccountTokenExpired {
                connection: "acme".into(),
                detail: "invalid_grant".into(),
                reauthorize: "xmbridge connection authorize acme".into(),
            })
        })
    }

    fn describe(&self) -> String {
        "OAuth refresh token".into()
    }
}

async fn sim(cfg: SimConfig) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

async fn admin_json(
    h: &SimHandle,
    http: &reqwest::Client,
    method: &str,
    path: &str,
    body: Value,
) -> Value {
    let url = format!("{}{path}", h.base_url);
    let rb = match method {
        "GET" => http.get(url),
        "DELETE" => http.delete(url),
        _ => http.post(url).json(&body),
    };
    let resp = rb.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// The brand-admin client-credentials source of a simulator (first seeded OAuth client).
async fn source(
    h: &SimHandle,
    http: &reqwest::Client,
    host: Option<&str>,
) -> Arc<ClientCredentials> {
    let creds = admin_json(h, http, "GET", "/_sim/credentials", Value::Null).await;
    let c = &creds["oauth_clients"][0];
    assert_eq!(c["grants"][0], "client_credentials", "{c}");
    Arc::new(ClientCredentials {
        http: http.clone(),
        token_url: format!("{}/oauth2/token", h.base_url),
        client_id: c["client_id"].as_str().unwrap().into(),
        client_secret: c["client_secret"].as_str().unwrap().into(),
        host: host.map(str::to_string),
        cached: Mutex::new(None),
        fetches: AtomicUsize::new(0),
        invalidations: AtomicUsize::new(0),
    })
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        base_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(20),
        ..Default::default()
    }
}

#[tokio::test]
async fn oauth_bearer_through_a_token_source() {
    let h = sim(SimConfig {
        surveys: 120,
        responses: 3,
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let src = source(&h, &http, None).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::token_source(src.clone()),
    )
    .retry(fast_retries())
    .build()
    .unwrap();
    assert_eq!(c.auth().describe(), "OAuth client credentials");
    let me = c.whoami().await.unwrap();
    assert!(
        me.user_name.as_deref().unwrap().starts_with("admin@"),
        "{me:?}"
    );
    let surveys: Vec<_> = c.surveys().try_collect().await.unwrap();
    assert_eq!(surveys.len(), 120);
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1, "the token is reused");
    assert_eq!(src.invalidations.load(Ordering::SeqCst), 0);
    // The token never shows in Debug output.
    let token = src.cached.lock().unwrap().clone().unwrap();
    assert!(!format!("{c:?}").contains(&token));
}

#[tokio::test]
async fn a_401_invalidates_and_retries_once_for_gets_and_posts() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 4,
        export_delay_ms: 0,
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let src = source(&h, &http, None).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::token_source(src.clone()),
    )
    .retry(fast_retries())
    .build()
    .unwrap();
    c.whoami().await.unwrap();

    // Revoked mid-run: the GET gets 401, the client fetches a new token and succeeds.
    admin_json(
        &h,
        &http,
        "POST",
        "/_sim/tokens/revoke",
        json!({"all": true}),
    )
    .await;
    c.whoami().await.unwrap();
    assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(src.invalidations.load(Ordering::SeqCst), 1);

    // Also for the export start, which is otherwise never re-POSTed: a 401 was not processed.
    admin_json(
        &h,
        &http,
        "POST",
        "/_sim/tokens/revoke",
        json!({"all": true}),
    )
    .await;
    admin_json(&h, &http, "DELETE", "/_sim/stats", Value::Null).await;
    let sid = c.surveys().try_collect::<Vec<_>>().await.unwrap()[0]
        .id
        .clone();
    let opts = ExportOptions {
        poll_interval: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    let started_before = c.api_calls();
    let progress = c.start_response_export(&sid, &opts).await.unwrap();
    assert!(!progress.is_empty());
    assert_eq!(
        c.api_calls() - started_before,
        1,
        "the token was already fresh"
    );
    admin_json(
        &h,
        &http,
        "POST",
        "/_sim/tokens/revoke",
        json!({"all": true}),
    )
    .await;
    let before = c.api_calls();
    let progress2 = c.start_response_export(&sid, &opts).await.unwrap();
    assert_ne!(progress, progress2);
    assert_eq!(
        c.api_calls() - before,
        2,
        "401, then the same POST once more"
    );
    assert_eq!(src.fetches.load(Ordering::SeqCst), 4);
    let file = c.export_responses(&sid, &opts).await.unwrap();
    assert_eq!(file.for_each_response(|_| {}).unwrap(), 4);
}

#[tokio::test]
async fn a_second_401_is_a_typed_error() {
    let h = sim(SimConfig::default()).await;
    // A source whose token is never valid: 401, invalidate, fresh token, 401 again.
    #[derive(Debug)]
    struct Bogus(AtomicUsize, AtomicUsize);
    impl TokenSource for Bogus {
        fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(bearer("00000000-0000-0000-0000-000000000000")) })
        }
        fn invalidate(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        fn describe(&self) -> String {
            "OAuth client credentials".into()
        }
    }
    let bogus = Arc::new(Bogus(AtomicUsize::new(0), AtomicUsize::new(0)));
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::token_source(bogus.clone()),
    )
    .retry(fast_retries())
    .build()
    .unwrap();
    let err = c.whoami().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.status(), Some(401));
    assert_eq!(bogus.1.load(Ordering::SeqCst), 1, "invalidated once");
    assert_eq!(c.api_calls(), 2, "retried exactly once");
    let msg = err.to_string();
    assert!(msg.contains("OAuth client credentials"), "{msg}");
    assert!(
        msg.contains("freshly fetched token was refused too"),
        "{msg}"
    );
    assert!(msg.contains("re-authorize"), "{msg}");
}

#[tokio::test]
async fn a_token_from_another_data_center_is_reported_clearly() {
    let h = sim(SimConfig::default()).await; // the brand lives in fra1
    let http = reqwest::Client::new();
    // The token is issued by iad1 (the Host of the token call names it).
    let src = source(&h, &http, Some("iad1.localhost")).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::token_source(src.clone()),
    )
    .retry(fast_retries())
    .build()
    .unwrap();
    let err = c.whoami().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        src.fetches.load(Ordering::SeqCst),
        2,
        "one fresh token was tried"
    );
    let msg = err.to_string();
    assert!(msg.contains("issued by data center 'iad1'"), "{msg}");
    assert!(
        msg.contains("only work on the data center that issued them"),
        "{msg}"
    );
    assert!(!msg.contains(&src.cached.lock().unwrap().clone().unwrap()));
}

#[tokio::test]
async fn an_expired_account_token_keeps_its_reauthorize_command() {
    let h = sim(SimConfig::default()).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::token_source(Arc::new(Expired)),
    )
    .build()
    .unwrap();
    let err = c.whoami().await.unwrap_err();
    assert!(
        matches!(err, Error::Auth(AuthError::AccountTokenExpired { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("Re-authorize with: xmbridge connection authorize acme"),
        "{err}"
    );
    assert_eq!(c.api_calls(), 0, "nothing was sent without credentials");
}

#[tokio::test]
async fn a_wrong_api_token_is_final_and_says_what_to_check() {
    let h = sim(SimConfig::default()).await;
    let c = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::api_token("wrong"),
    )
    .retry(fast_retries())
    .build()
    .unwrap();
    let err = c.whoami().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(c.api_calls(), 1, "an API token cannot be refreshed");
    let msg = err.to_string();
    assert!(
        msg.contains("API token") && msg.contains("Qualtrics IDs"),
        "{msg}"
    );
    assert!(!msg.contains("wrong"), "{msg}");
}

/// A reqwest client carrying the simulator's client identity (the advanced mode's plumbing),
/// with the given Qualtrics host names pinned to the simulator.
fn mtls_http(h: &SimHandle, dir: &tempfile::TempDir, pinned: &[&str]) -> reqwest::Client {
    let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
    let mut identity = read("client.pem");
    identity.push(b'\n');
    identity.extend_from_slice(&read("client-plain.key"));
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&read("ca.pem")).unwrap()])
        .identity(reqwest::Identity::from_pem(&identity).unwrap());
    for host in pinned {
        b = b.resolve(host, h.addr);
    }
    b.build().unwrap()
}

/// A simulator with mutual TLS (brand `simbrand` in fra1), its client bundle and an HTTP client
/// for it.
async fn mtls() -> (SimHandle, reqwest::Client, tempfile::TempDir) {
    let h = sim(SimConfig {
        mtls: true,
        surveys: 230,
        responses: 2,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    h.sim
        .pki
        .as_ref()
        .unwrap()
        .write_client_bundle(dir.path())
        .unwrap();
    let http = mtls_http(
        &h,
        &dir,
        &[
            "iad1.qualtrics.com",
            "fra1.qualtrics.com",
            "simbrand.qualtrics.com",
        ],
    );
    (h, http, dir)
}

#[tokio::test]
async fn proxied_notice_switches_host_once_with_an_api_token_over_mtls() {
    let (h, http, _dir) = mtls().await;
    let token = h.sim.cfg.admin_token();
    // The user typed the wrong data center; Qualtrics proxies and names the right host.
    let c = Client::builder(BaseUrl::parse("iad1").unwrap(), Auth::api_token(token))
        .http_client(http)
        .retry(fast_retries())
        .build()
        .unwrap();
    assert_eq!(c.base().as_str(), "https://iad1.qualtrics.com/API/v3");
    let me = c.whoami().await.unwrap();
    assert_eq!(me.datacenter.as_deref(), Some("fra1"));
    assert_eq!(c.base().as_str(), "https://fra1.qualtrics.com/API/v3");
    let surveys: Vec<_> = c.surveys().try_collect().await.unwrap();
    assert_eq!(surveys.len(), 230, "every page, on the new host");
}

#[tokio::test]
async fn discovery_from_an_organization_id_with_oauth_over_mtls() {
    let (h, http, dir) = mtls().await;
    let creds = admin_json(&h, &http, "GET", "/_sim/credentials", Value::Null).await;
    let client = &creds["oauth_clients"][0];
    // The token comes from the vanity host, which belongs to the brand's home data center.
    let src = Arc::new(ClientCredentials {
        http: http.clone(),
        token_url: "https://simbrand.qualtrics.com/oauth2/token".into(),
        client_id: client["client_id"].as_str().unwrap().into(),
        client_secret: client["client_secret"].as_str().unwrap().into(),
        host: None,
        cached: Mutex::new(None),
        fetches: AtomicUsize::new(0),
        invalidations: AtomicUsize::new(0),
    });
    let c = Client::builder(
        BaseUrl::from_organization("simbrand").unwrap(),
        Auth::token_source(src.clone()),
    )
    .http_client(http)
    .retry(fast_retries())
    .build()
    .unwrap();
    assert!(c.base().is_vanity());
    let dc = c.discover_data_center().await.unwrap();
    assert_eq!(dc.id(), "fra1");
    assert_eq!(c.base().as_str(), "https://fra1.qualtrics.com/API/v3");
    // The token issued on the vanity host is valid on its data center.
    let surveys: Vec<_> = c.surveys().try_collect().await.unwrap();
    assert_eq!(surveys.len(), 230);
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);

    // A loopback base is never switched.
    let plain = Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::api_token(h.sim.cfg.admin_token()),
    )
    .http_client(mtls_http(&h, &dir, &[]))
    .build()
    .unwrap();
    assert_eq!(plain.discover_data_center().await.unwrap().id(), "fra1");
    assert_eq!(plain.base().as_str(), format!("{}/API/v3", h.base_url));
}
