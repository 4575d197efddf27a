//! Shared helpers of the auth tests: an in-process simulator, its credentials, its clock as a
//! [`Clock`], admin calls, and the "no secret in this text" check.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;
use xmbridge_auth::{AuthError, Clock, OAuthClient, OAuthProvider, RetryPolicy, SecretString};
use xmbridge_sim::qualtrics::Sim;
use xmbridge_sim::{SimConfig, SimHandle};

/// The simulator's clock (real time + `/_sim/clock/advance`).
pub struct SimClock(pub Arc<Sim>);

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimClock")
    }
}

impl Clock for SimClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.clock.now_ms() as u64)
    }
}

pub struct T {
    pub h: SimHandle,
    /// For admin calls (carries the client certificate when mTLS is on).
    pub http: reqwest::Client,
    pub creds: Value,
}

pub async fn start() -> T {
    start_with(SimConfig::default(), None).await
}

pub async fn start_with(cfg: SimConfig, http: Option<reqwest::Client>) -> T {
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let http = http.unwrap_or_else(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    });
    let creds = http
        .get(format!("{}/_sim/credentials", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    T { h, http, creds }
}

/// Fast retries so failing paths stay quick; `attempts` tries in all.
pub fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: attempts.saturating_sub(1),
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_millis(50),
        ..RetryPolicy::token_endpoint()
    }
}

impl T {
    pub fn base(&self) -> Url {
        Url::parse(&self.h.base_url).unwrap()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SimClock(self.h.sim.clone()))
    }

    /// (client_id, client_secret) of the seeded client whose name contains `what`.
    pub fn client(&self, what: &str) -> (String, String) {
        let c = self.creds["oauth_clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str().unwrap().contains(what))
            .unwrap();
        (
            c["client_id"].as_str().unwrap().into(),
            c["client_secret"].as_str().unwrap().into(),
        )
    }

    /// An OAuth client of the seeded client `what`, for connection `conn`.
    pub fn oauth(&self, what: &str, conn: &str) -> OAuthClient {
        let (id, secret) = self.client(what);
        OAuthClient::new(
            OAuthProvider::qualtrics(&self.base()).unwrap(),
            id,
            SecretString::from(secret),
        )
        .unwrap()
        .for_connection(conn)
        .with_retry(fast_retry(3))
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.h.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn delete(&self, path: &str) {
        let r = self
            .http
            .delete(format!("{}{path}", self.h.base_url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    pub async fn advance(&self, seconds: u64) {
        self.post("/_sim/clock/advance", json!({ "seconds": seconds }))
            .await;
    }

    /// Calls the simulator has seen on `/oauth2/*`.
    pub async fn token_calls(&self) -> u64 {
        let s: Value = self
            .http
            .get(format!("{}/_sim/stats", self.h.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["by_route"]["oauth2"]["calls"].as_u64().unwrap_or(0)
    }

    /// `GET /API/v3/whoami` with this header; (status, body).
    pub async fn whoami(&self, h: &xmbridge_auth::AuthHeader) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/whoami", self.h.api_url()))
            .header(h.name.clone(), h.value.clone())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Every secret the simulator knows: client secrets, API tokens.
    pub fn secrets(&self) -> Vec<String> {
        let mut v = Vec::new();
        for c in self.creds["oauth_clients"].as_array().unwrap() {
            v.push(c["client_secret"].as_str().unwrap().to_string());
        }
        for u in self.creds["users"].as_array().unwrap() {
            if let Some(t) = u["api_token"].as_str() {
                v.push(t.to_string());
            }
        }
        v
    }
}

/// Neither Display nor Debug of `e` contains any of `secrets`.
pub fn assert_no_secret(e: &AuthError, secrets: &[String]) {
    let text = format!("{e} || {e:?}");
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!text.contains(s.as_str()), "secret leaked in: {text}");
    }
}

/// Same for any Debug value.
pub fn assert_debug_clean(v: &dyn std::fmt::Debug, secrets: &[String]) {
    let text = format!("{v:?}");
    for s in secrets {
        assert!(!text.contains(s.as_str()), "secret leaked in: {text}");
    }
}
