//! Rate limits against the in-process simulator: the client paces itself under the brand limit
//! (asserted with the simulator's own `/_sim/stats`), shares its buckets between clients of one
//! brand, and gets through a 429 storm when the server's limit is lower than its own.

use futures_util::TryStreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, Error, RateLimits};
use xmbridge_sim::{SimConfig, SimHandle};

async fn sim(rate_limit_per_min: u32, surveys: usize) -> SimHandle {
    let cfg = SimConfig {
        surveys,
        responses: 2,
        rate_limit_per_min,
        ..Default::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

async fn stats(h: &SimHandle) -> Value {
    reqwest::get(format!("{}/_sim/stats", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn client(h: &SimHandle) -> xmbridge_qualtrics::ClientBuilder {
    Client::builder(
        BaseUrl::parse(&h.base_url).unwrap(),
        Auth::api_token(h.sim.cfg.admin_token()),
    )
}

#[tokio::test]
async fn two_clients_of_one_brand_stay_under_the_brand_limit_together() {
    // Server: 120/min. Client: 100/min, i.e. a burst of 5 then one call every ~0.63 s.
    let h = sim(120, 3).await;
    let a = client(&h).rate_limit_per_min(100).build().unwrap();
    let shared = a.rate_limiter().unwrap().clone();
    let b = client(&h).rate_limiter(shared.clone()).build().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(c.whoami().await.unwrap().user_id);
            }
            ids
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 3);
    }
    let elapsed = started.elapsed();
    // 12 calls = 5 at once + 7 paced at 95/min: at least ~4.4 s.
    assert!(elapsed >= Duration::from_millis(4200), "{elapsed:?}");
    let s = stats(&h).await;
    assert_eq!(s["calls_total"], 12, "{s}");
    assert_eq!(s["throttled"], 0, "{s}");
    assert!(s["max_requests_in_60s"].as_u64().unwrap() <= 100, "{s}");
    let ls = shared.stats();
    assert_eq!(ls.acquired, 12);
    assert!(ls.waited >= 7, "{ls:?}");
    assert_eq!(ls.throttled, 0);
}

/// Fills the server's brand bucket with unauthenticated calls (they count like any other),
/// as another tool of the brand would, then zeroes the counters.
async fn exhaust_brand_bucket(h: &SimHandle, calls: usize) {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = http.clone();
        let url = format!("{}/whoami", h.api_url());
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls / 8 {
                http.get(&url).send().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    reqwest::Client::new()
        .delete(format!("{}/_sim/stats", h.base_url))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_429_storm_still_finishes_every_call() {
    // Server: 600/min (drains 10 per second, Retry-After 1 s), already used up by another tool;
    // the client runs at its default 2000/min, so it trips the server and must get through on
    // Retry-After while slowing down.
    let h = sim(600, 250).await;
    exhaust_brand_bucket(&h, 600).await;
    let c = client(&h).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..4 {
                let me = c.whoami().await?;
                assert!(me.user_id.starts_with("UR_"));
                n += 1;
            }
            Ok::<_, Error>(n)
        }));
    }
    // A paginated walk in the middle of the storm.
    let walk = {
        let c = c.clone();
        tokio::spawn(async move { c.surveys().try_collect::<Vec<_>>().await })
    };
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 4);
    }
    let surveys = walk.await.unwrap().unwrap();
    assert_eq!(surveys.len(), 250);
    let ids: std::collections::HashSet<_> = surveys.iter().map(|s| &s.id).collect();
    assert_eq!(ids.len(), 250);
    let s = stats(&h).await;
    let throttled = s["throttled"].as_u64().unwrap();
    assert!(throttled >= 10, "a storm happened: {s}");
    let ls = c.rate_limiter().unwrap().stats();
    assert_eq!(ls.throttled, throttled, "{ls:?} {s}");
    assert!(
        ls.brand_rate_per_min < 1900.0,
        "the client slowed down: {ls:?}"
    );
    assert_eq!(
        s["calls_total"].as_u64().unwrap(),
        40 + 3 + throttled,
        "every call succeeded once; only 429s were repeated: {s}"
    );
}

#[tokio::test]
async fn route_limits_pace_one_family_only() {
    // The server limits whoami to 30/min; the client knows and stays under it.
    let h = sim(3000, 3).await;
    reqwest::Client::new()
        .post(format!("{}/_sim/faults", h.base_url))
        .json(&json!({"route_limits": {"whoami": 30}}))
        .send()
        .await
        .unwrap();
    // 30/min → a burst of 1, then one every 60/29 s; a second call to whoami waits ~2 s while
    // the surveys family is not held back.
    let c = client(&h)
        .rate_limits(RateLimits::brand(2000).route("whoami", 30))
        .build()
        .unwrap();
    let t = Instant::now();
    c.whoami().await.unwrap();
    for _ in 0..5 {
        c.surveys().try_collect::<Vec<_>>().await.unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    c.whoami().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    let s = stats(&h).await;
    assert_eq!(s["throttled"], 0, "{s}");
}

#[test]
fn limits_above_the_brand_limit_are_refused() {
    let base = BaseUrl::parse("fra1").unwrap();
    let err = Client::builder(base.clone(), Auth::api_token("t"))
        .rate_limit_per_min(3500)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("3500") && msg.contains("at most 3000"),
        "{msg}"
    );
    assert!(
        Client::builder(base.clone(), Auth::api_token("t"))
            .rate_limit_per_min(3000)
            .build()
            .is_ok()
    );
    let err = Client::builder(base.clone(), Auth::api_token("t"))
        .rate_limits(RateLimits::brand(100).route("export-responses", 0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("'export-responses'"), "{err}");
    let err = Client::builder(base, Auth::api_token("t"))
        .no_rate_limit()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    assert!(
        Client::builder(
            BaseUrl::parse("http://127.0.0.1:9").unwrap(),
            Auth::api_token("t")
        )
        .no_rate_limit()
        .build()
        .unwrap()
        .rate_limiter()
        .is_none()
    );
}
