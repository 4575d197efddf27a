//! Fault switches and rate limits over real HTTP.

use reqwest::Client;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use xmbridge_sim::qualtrics::auth::AccessToken;
use xmbridge_sim::{SimConfig, SimHandle};

async fn start(cfg: SimConfig) -> (SimHandle, String, Client) {
    let token = cfg.admin_token();
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    (h, token, Client::new())
}

async fn whoami(c: &Client, h: &SimHandle, token: &str) -> reqwest::Response {
    c.get(format!("{}/whoami", h.api_url()))
        .header("X-API-TOKEN", token)
        .send()
        .await
        .unwrap()
}

async fn set_faults(c: &Client, h: &SimHandle, body: Value) -> reqwest::Response {
    c.post(format!("{}/_sim/faults", h.base_url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get_json(c: &Client, url: String) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn brand_limit_answers_429_with_retry_after_and_recovers() {
    let (h, token, c) = start(SimConfig {
        rate_limit_per_min: 10,
        ..Default::default()
    })
    .await;
    for _ in 0..10 {
        assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    }
    let r = whoami(&c, &h, &token).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "6");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["httpStatus"], "429 - Too Many Requests");
    let msg = body["meta"]["error"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains("10 requests per minute"), "{msg}");
    assert!(body.get("result").is_none());

    // Six simulated seconds drain one call's worth of the bucket.
    h.sim.clock.advance(6_000);
    assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    assert_eq!(whoami(&c, &h, &token).await.status(), 429);
    h.sim.clock.advance(60_000);
    for _ in 0..10 {
        assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    }

    let stats = get_json(&c, format!("{}/_sim/stats", h.base_url)).await;
    assert_eq!(stats["calls_total"], 23);
    assert_eq!(stats["throttled"], 2);
    assert_eq!(stats["by_route"]["whoami"]["calls"], 23);
    assert_eq!(stats["by_route"]["whoami"]["throttled"], 2);
    assert_eq!(stats["rate_limit_per_min"], 10);
    // 13 calls in the first simulated minute (11 + 2 six seconds later), then the clock
    // jumped past them.
    assert_eq!(stats["max_requests_in_60s"], 13);

    // Switched off at run time.
    set_faults(&c, &h, json!({"rate_limit_per_min": 0})).await;
    for _ in 0..15 {
        assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    }
    h.stop().await;
}

#[tokio::test]
async fn route_limits_apply_per_family() {
    let (h, token, c) = start(SimConfig::default()).await;
    let r = set_faults(&c, &h, json!({"route_limits": {"whoami": 3}})).await;
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["route_limits"]["whoami"], 3);
    assert_eq!(s["rate_limit_per_min"], 3000);
    for _ in 0..3 {
        assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    }
    let r = whoami(&c, &h, &token).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "20");
    let body: Value = r.json().await.unwrap();
    let msg = body["meta"]["error"]["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("'whoami'") && msg.contains("3 requests per minute"),
        "{msg}"
    );
    h.stop().await;
}

#[tokio::test]
async fn error_rate_one_answers_5xx_envelopes_deterministically() {
    async fn statuses() -> Vec<u16> {
        let (h, token, c) = start(SimConfig::default()).await;
        set_faults(&c, &h, json!({"error_rate": 1.0})).await;
        let mut out = Vec::new();
        for _ in 0..12 {
            let r = whoami(&c, &h, &token).await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            let text = body["meta"]["httpStatus"].as_str().unwrap().to_string();
            match status {
                500 => assert_eq!(text, "500 - Internal Server Error"),
                503 => assert_eq!(text, "503 - Temporary Internal Server Error"),
                504 => assert_eq!(text, "504 - Gateway Timeout"),
                s => panic!("unexpected status {s}"),
            }
            assert!(body["meta"]["error"]["errorCode"].is_string());
            assert!(body["meta"]["error"]["instanceId"].is_string());
            out.push(status);
        }
        // Admin routes are never faulted.
        let stats = get_json(&c, format!("{}/_sim/stats", h.base_url)).await;
        assert_eq!(stats["injected_errors"], 12);
        assert_eq!(stats["by_route"]["whoami"]["injected_errors"], 12);
        h.stop().await;
        out
    }
    let a = statuses().await;
    assert_eq!(a, statuses().await, "same seed, same fault sequence");
    assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 1);
}

#[tokio::test]
async fn fixed_error_status_partial_rate_and_only_paths() {
    let (h, token, c) = start(SimConfig::default()).await;
    set_faults(&c, &h, json!({"error_rate": 1.0, "error_status": 503})).await;
    let r = whoami(&c, &h, &token).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["meta"]["httpStatus"],
        "503 - Temporary Internal Server Error"
    );

    // Faults limited to another prefix leave whoami alone.
    set_faults(&c, &h, json!({"only_paths": "/API/v3/surveys"})).await;
    assert_eq!(whoami(&c, &h, &token).await.status(), 200);

    // Half the calls fail, a few either way.
    set_faults(&c, &h, json!({"only_paths": null, "error_rate": 0.5})).await;
    let mut failed = 0;
    for _ in 0..40 {
        if whoami(&c, &h, &token).await.status() == 503 {
            failed += 1;
        }
    }
    assert!((8..=32).contains(&failed), "{failed} of 40 failed");
    h.stop().await;
}

#[tokio::test]
async fn slow_and_drop() {
    let (h, token, c) = start(SimConfig::default()).await;
    set_faults(&c, &h, json!({"slow_ms": 300})).await;
    let t = Instant::now();
    assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    set_faults(&c, &h, json!({"slow_ms": 0, "drop_rate": 1.0})).await;
    let r = whoami(&c, &h, &token).await;
    // Headers arrive; the body is cut off.
    assert_eq!(r.status(), 200);
    let err = r.bytes().await.expect_err("the body must be cut off");
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );

    let stats = get_json(&c, format!("{}/_sim/stats", h.base_url)).await;
    assert_eq!(stats["dropped"], 1);
    assert_eq!(stats["slowed"], 1);
    h.stop().await;
}

#[tokio::test]
async fn admin_validation_merge_and_reset() {
    let (h, token, c) = start(SimConfig {
        rate_limit_per_min: 50,
        ..Default::default()
    })
    .await;
    let initial = get_json(&c, format!("{}/_sim/faults", h.base_url)).await;
    assert_eq!(initial["rate_limit_per_min"], 50);
    assert_eq!(initial["error_rate"], 0.0);

    for bad in [
        json!({"eror_rate": 1.0}),
        json!({"error_rate": 2.0}),
        json!({"error_status": 200}),
        json!({"slow_ms": "fast"}),
        json!([1]),
    ] {
        let r = set_faults(&c, &h, bad.clone()).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["meta"]["httpStatus"], "400 - Bad Request");
    }

    set_faults(&c, &h, json!({"truncate_zip": true})).await;
    let merged: Value = set_faults(&c, &h, json!({"fail_exports": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        merged["truncate_zip"], true,
        "POST merges into the settings"
    );
    assert_eq!(merged["fail_exports"], true);
    assert!(h.sim.faults.truncate_zip() && h.sim.faults.fail_exports());

    set_faults(&c, &h, json!({"error_rate": 1.0})).await;
    assert_eq!(whoami(&c, &h, &token).await.status().as_u16() / 100, 5);
    let reset: Value = c
        .delete(format!("{}/_sim/faults", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reset, initial);
    assert!(!h.sim.faults.truncate_zip());
    assert_eq!(whoami(&c, &h, &token).await.status(), 200);

    let zeroed: Value = c
        .delete(format!("{}/_sim/stats", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(zeroed["calls_total"], 0);
    h.stop().await;
}

#[tokio::test]
async fn revoke_tokens_after_n_calls() {
    let (h, _token, c) = start(SimConfig::default()).await;
    let expires_ms = h.sim.clock.now_ms() + 3_600_000;
    h.sim.tokens.lock().access.insert(
        "tok-1".into(),
        AccessToken {
            user_idx: 0,
            client_id: "client".into(),
            scopes: vec!["manage:all".into()],
            dc: h.sim.home_dc(),
            expires_ms,
        },
    );
    set_faults(&c, &h, json!({"revoke_tokens_after": 2})).await;
    let call = || {
        c.get(format!("{}/whoami", h.api_url()))
            .bearer_auth("tok-1")
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    // Changing another switch does not restart the countdown.
    set_faults(&c, &h, json!({"slow_ms": 0})).await;
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(h.sim.faults.tokens_revoked_epoch(), 0);
    assert_eq!(call().await.unwrap().status(), 401);
    assert_eq!(h.sim.faults.tokens_revoked_epoch(), 1);
    assert!(h.sim.tokens.lock().access.is_empty());
    h.stop().await;
}

/// `fail_next` fails exactly the next matching calls (method and route family), then is spent;
/// other calls of the same family pass.
#[tokio::test]
async fn fail_next_hits_only_the_matching_calls_and_counts_down() {
    let (h, token, c) = start(SimConfig {
        surveys: 1,
        responses: 3,
        ..Default::default()
    })
    .await;
    let sid = h.sim.surveys[0].id.clone();
    let start_export = || {
        c.post(format!("{}/surveys/{sid}/export-responses", h.api_url()))
            .header("X-API-TOKEN", &token)
            .json(&json!({"format": "json"}))
            .send()
    };
    let r = set_faults(
        &c,
        &h,
        json!({"fail_next": {"method": "post", "route": "export-responses", "count": 2}}),
    )
    .await;
    assert_eq!(r.status(), 200);

    // Another method and another route of the brand are untouched.
    assert_eq!(whoami(&c, &h, &token).await.status(), 200);
    let r = start_export().await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["httpStatus"], "500 - Internal Server Error");
    let left = get_json(&c, format!("{}/_sim/faults", h.base_url)).await;
    assert_eq!(left["fail_next"]["count"], 1);

    assert_eq!(start_export().await.unwrap().status(), 500);
    let r = start_export().await.unwrap();
    assert_eq!(r.status(), 200, "spent after two");
    let body: Value = r.json().await.unwrap();
    let progress = body["result"]["progressId"].as_str().unwrap().to_string();
    let poll = c
        .get(format!(
            "{}/surveys/{sid}/export-responses/{progress}",
            h.api_url()
        ))
        .header("X-API-TOKEN", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200, "GETs of the family never matched");

    let stats = get_json(&c, format!("{}/_sim/stats", h.base_url)).await;
    assert_eq!(stats["injected_errors"], 2);
    assert_eq!(stats["by_route"]["export-responses"]["injected_errors"], 2);
    let spent = get_json(&c, format!("{}/_sim/faults", h.base_url)).await;
    assert_eq!(spent["fail_next"]["count"], 0);

    // A bad status is refused; `null` clears the switch.
    let r = set_faults(&c, &h, json!({"fail_next": {"status": 200}})).await;
    assert_eq!(r.status(), 400);
    let r = set_faults(&c, &h, json!({"fail_next": {"rout": "x"}})).await;
    assert_eq!(r.status(), 400, "unknown keys are refused");
    let cleared: Value = set_faults(&c, &h, json!({"fail_next": null}))
        .await
        .json()
        .await
        .unwrap();
    assert!(cleared["fail_next"].is_null());
    h.stop().await;
}
