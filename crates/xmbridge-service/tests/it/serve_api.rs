//! The HTTP API over real HTTP: sign-in, CSRF and origin rules, tokens, roles, limits,
//! connections with Save & Test, schedules, syncs, the OpenAPI document, and no secret in any
//! answer.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xmbridge_service::api::auth::LoginLimiter;

use crate::{ADMIN_PASSWORD, Creds, MEMBER_PASSWORD, Service, error_of};

#[tokio::test]
async fn sign_in_me_and_sign_out() {
    let s = Service::start().await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/session",
            &Creds::default(),
            Some(json!({"user": "ada", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let cookie = a.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure over plain loopback HTTP: {cookie}"
    );
    assert!(a.json["csrf_token"].as_str().is_some_and(|t| t.len() >= 32));
    assert_eq!(a.json["user"]["role"], "admin");

    let me = s.admin().await;
    let who = s.call(Method::GET, "/api/v1/me", &me, None).await;
    assert_eq!(who.status, StatusCode::OK, "{}", who.text);
    assert_eq!(who.json["name"], "ada");
    assert_eq!(who.json["role"], "admin");
    assert_eq!(who.json["via"], "session");

    let out = s.call(Method::DELETE, "/api/v1/session", &me, None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    let after = s.call(Method::GET, "/api/v1/me", &me, None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&after)["code"], "unauthenticated");

    let none = s
        .call(Method::GET, "/api/v1/me", &Creds::default(), None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    error_of(&none);
    let made_up = Creds {
        cookie: Some("0".repeat(64)),
        ..Creds::default()
    };
    let a = s.call(Method::GET, "/api/v1/me", &made_up, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // An expired session: 401.
    let expired = s
        .state
        .users
        .create_session("ada", Duration::ZERO)
        .expect("a session");
    std::thread::sleep(Duration::from_millis(5));
    let old = Creds {
        cookie: Some(secrecy::ExposeSecret::expose_secret(&expired.cookie).to_string()),
        csrf: Some(expired.csrf_token.clone()),
        ..Creds::default()
    };
    let a = s.call(Method::GET, "/api/v1/me", &old, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert!(
        error_of(&a)["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // A removed user's session ends with them.
    let admin = s.admin().await;
    let mo = s.member().await;
    let a = s
        .call(Method::DELETE, "/api/v1/users/mo", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = s.call(Method::GET, "/api/v1/me", &mo, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let audit = s.call(Method::GET, "/api/v1/audit", &admin, None).await;
    assert!(
        audit.json["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.remove" && e["target"] == "mo")
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer_in_similar_time() {
    let s = Service::start_with(LoginLimiter::new(100, 100, Duration::from_secs(60))).await;
    let mut times = [Vec::new(), Vec::new()];
    let mut answers = Vec::new();
    for round in 0..3 {
        for (i, user) in ["ada", "nobody-here"].iter().enumerate() {
            let t = Instant::now();
            let a = s
                .call(
                    Method::POST,
                    "/api/v1/session",
                    &Creds::default(),
                    Some(json!({"user": user, "password": "not the password at all"})),
                )
                .await;
            times[i].push(t.elapsed());
            if round == 0 {
                answers.push((a.status, a.text.clone()));
            }
        }
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[0], answers[1], "the same status and body for both");
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[1]
    };
    let (wrong, unknown) = (median(&mut times[0]), median(&mut times[1]));
    // An unknown user still costs one argon2 verification: neither is a fraction of the other.
    assert!(
        unknown * 3 >= wrong && wrong * 3 >= unknown,
        "similar timing: wrong password {wrong:?}, unknown user {unknown:?}"
    );
}

#[tokio::test]
async fn login_attempts_are_limited_per_user_and_per_address() {
    let s = Service::start().await; // 3 per user, 6 per address
    let attempt = |user: &'static str, password: &'static str| {
        let s = &s;
        async move {
            s.call(
                Method::POST,
                "/api/v1/session",
                &Creds::default(),
                Some(json!({"user": user, "password": password})),
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("ada", "wrong wrong wrong").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Even the right password is refused now, without being checked.
    let limited = attempt("ada", ADMIN_PASSWORD).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&wait), "Retry-After {wait}");
    assert_eq!(error_of(&limited)["code"], "too_many_attempts");
    // The address: 3 more failures on other names reach its 6.
    for user in ["x1", "x2", "x3"] {
        assert_eq!(
            attempt(user, "wrong wrong wrong").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let a = attempt("mo", MEMBER_PASSWORD).await;
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the address is limited: {}",
        a.text
    );
}

#[tokio::test]
async fn state_changes_need_the_csrf_token_and_this_origin() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "pat", "role": "member", "password": "a long enough password"});
    let no_csrf = Creds {
        csrf: None,
        ..admin.clone()
    };
    let a = s
        .call(Method::POST, "/api/v1/users", &no_csrf, Some(body.clone()))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(error_of(&a)["code"], "csrf");
    let wrong = Creds {
        csrf: Some("f".repeat(64)),
        ..admin.clone()
    };
    let a = s
        .call(Method::POST, "/api/v1/users", &wrong, Some(body.clone()))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Another origin (another loopback port: tests never name other hosts) is refused even
    // with the right token.
    let foreign = Creds {
        origin: Some("http://127.0.0.2:9".into()),
        ..admin.clone()
    };
    let a = s
        .call(Method::POST, "/api/v1/users", &foreign, Some(body.clone()))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(error_of(&a)["message"].as_str().unwrap().contains("rule:"));
    // A foreign origin cannot sign in either (login CSRF).
    let a = s
        .call(
            Method::POST,
            "/api/v1/session",
            &Creds {
                origin: Some("http://127.0.0.2:9".into()),
                ..Creds::default()
            },
            Some(json!({"user": "ada", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        s.call(Method::GET, "/api/v1/users", &admin, None)
            .await
            .json["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["name"] != "pat")
    );
    // Its own origin and the token: allowed.
    let own = Creds {
        origin: Some(s.base.clone()),
        ..admin.clone()
    };
    let a = s
        .call(Method::POST, "/api/v1/users", &own, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["user"]["name"], "pat");
    // Reads need no CSRF token.
    let a = s.call(Method::GET, "/api/v1/users", &no_csrf, None).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bearer_token_works_without_csrf_until_it_is_revoked() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let made = s
        .call(
            Method::POST,
            "/api/v1/users/mo/tokens",
            &admin,
            Some(json!({"expires": "90d"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let token = made.json["token"].as_str().unwrap().to_string();
    let id = made.json["info"]["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("xmb_"));
    assert!(made.json["info"]["expires_at"].is_string());
    let bearer = Creds::bearer(&token);
    let me = s.call(Method::GET, "/api/v1/me", &bearer, None).await;
    assert_eq!(me.json["name"], "mo");
    assert_eq!(me.json["via"], "token");
    assert_eq!(me.json["token_id"], id.as_str());
    // A state change with the token alone (no cookie, no CSRF token).
    let a = s
        .call(
            Method::PUT,
            "/api/v1/users/mo/password",
            &bearer,
            Some(json!({"password": "another long password"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    // The audit log names the token.
    let audit = s.call(Method::GET, "/api/v1/audit", &admin, None).await;
    let entries = audit.json["entries"].as_array().unwrap().clone();
    let pw = entries
        .iter()
        .find(|e| e["action"] == "user.password")
        .expect("the password change is audited");
    assert_eq!(pw["actor"], "mo");
    assert!(pw["via"].as_str().unwrap().contains(&id), "{pw}");
    assert_eq!(pw["address"], "127.0.0.1");
    assert!(entries.iter().any(|e| e["action"] == "token.create"));
    // Listed without its secret; revoked, it stops working.
    let list = s
        .call(Method::GET, "/api/v1/users/mo/tokens", &admin, None)
        .await;
    assert!(!list.text.contains(&token));
    assert_eq!(list.json["tokens"][0]["id"], id.as_str());
    let a = s
        .call(
            Method::DELETE,
            &format!("/api/v1/users/mo/tokens/{id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = s.call(Method::GET, "/api/v1/me", &bearer, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    error_of(&a);
    let a = s
        .call(
            Method::GET,
            "/api/v1/me",
            &Creds::bearer("xmb_nonsense"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_member_is_refused_admin_routes_with_the_rule_named() {
    let s = Service::start().await;
    let member = s.member().await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/connections",
            &member,
            Some(json!({"name": "acme", "url": s.sim.base_url, "api_token": s.sim_token()})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let e = error_of(&a);
    assert_eq!(e["code"], "forbidden");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("only an admin may create connections"),
        "{msg}"
    );
    assert!(
        msg.contains("rule: connections are managed by admins"),
        "{msg}"
    );
    assert!(e["fix"].as_str().unwrap().contains("admin"));
    for (method, path, rule) in [
        (Method::GET, "/api/v1/users", "users are managed by admins"),
        (
            Method::GET,
            "/api/v1/audit",
            "the audit log is read by admins",
        ),
        (
            Method::POST,
            "/api/v1/users/ada/tokens",
            "API tokens are made by admins",
        ),
        (
            Method::DELETE,
            "/api/v1/users/ada",
            "users are managed by admins",
        ),
    ] {
        let a = s.call(method.clone(), path, &member, Some(json!({}))).await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            a.text
        );
        assert!(
            error_of(&a)["message"].as_str().unwrap().contains(rule),
            "{}",
            a.text
        );
    }
    // Read access is theirs.
    let a = s
        .call(Method::GET, "/api/v1/connections", &member, None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // A member's own tokens are theirs to list, another's are not.
    let a = s
        .call(Method::GET, "/api/v1/users/ada/tokens", &member, None)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_oversized_body_is_413_and_bad_json_is_422() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let big = "x".repeat(2 << 20);
    let a = s
        .call(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"name": "big", "role": "member", "password": big})),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        &a.text[..a.text.len().min(300)]
    );
    assert_eq!(error_of(&a)["code"], "too_large");
    let a = s
        .call(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"name": 5})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    error_of(&a);
    let a = s
        .call(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"name": "short", "role": "member", "password": "short"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(error_of(&a)["fix"].is_string());
    let a = s
        .call(Method::GET, "/api/v1/no-such-route", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    error_of(&a);
    let a = s.call(Method::PUT, "/api/v1/me", &admin, None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{}", a.text);
    error_of(&a);
}

/// Adds connection `name` to the simulator through the API, with a SQLite destination.
async fn add_connection(s: &Service, admin: &Creds, name: &str, extra: Value) -> crate::Answer {
    let mut body = json!({
        "name": name, "url": s.sim.base_url, "auth": "token", "api_token": s.sim_token(),
        "destination": s.sqlite(&format!("{name}.sqlite")), "schema": "qualtrics",
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    s.call(Method::POST, "/api/v1/connections", admin, Some(body))
        .await
}

#[tokio::test]
async fn save_and_test_saves_a_good_connection_and_refuses_a_bad_token() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let a = add_connection(&s, &admin, "acme", json!({"every": "1h"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["test"]["ok"], true);
    assert_eq!(a.json["test"]["destination"]["ok"], true, "{}", a.text);
    let groups = a.json["test"]["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["name"] == "responses" && g["status"] == "ok"),
        "{groups:?}"
    );
    assert_eq!(a.json["connection"]["name"], "acme");
    assert_eq!(a.json["connection"]["sync"]["every"], "1h");
    assert!(a.json["connection"]["secrets"].as_array().unwrap().len() == 1);

    // A bad token: 422 with the report, and nothing saved.
    let bad = add_connection(
        &s,
        &admin,
        "bad",
        json!({"api_token": "not-a-valid-token-1234"}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(error_of(&bad)["code"], "cannot_sync");
    assert_eq!(bad.json["test"]["ok"], false);
    assert!(
        bad.json["test"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad")
    );
    let a = s
        .call(Method::GET, "/api/v1/connections/bad", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "nothing saved: {}", a.text);
    // … unless asked to save it anyway.
    let kept = add_connection(
        &s,
        &admin,
        "bad",
        json!({"api_token": "not-a-valid-token-1234", "save_anyway": true}),
    )
    .await;
    assert_eq!(kept.status, StatusCode::CREATED, "{}", kept.text);
    assert_eq!(kept.json["test"]["ok"], false);
    // A destination that cannot be reached: 422, the account's groups fine, nothing saved.
    let unreachable = add_connection(
        &s,
        &admin,
        "nowhere",
        json!({"destination": "postgres://nobody@127.0.0.1:1/db"}),
    )
    .await;
    assert_eq!(
        unreachable.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unreachable.text
    );
    let report = &unreachable.json["test"];
    assert_eq!(report["destination"]["ok"], false, "{report}");
    assert!(
        report["destination"]["fix"]
            .as_str()
            .unwrap()
            .contains("reachable")
    );
    assert!(
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["status"] == "ok")
    );
    let a = s
        .call(Method::GET, "/api/v1/connections/nowhere", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json.get("connection"), None);
    // A name taken: 409.
    let dup = add_connection(&s, &admin, "acme", json!({})).await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text);
    // Listed, read by a member, and deleted.
    let member = s.member().await;
    let list = s
        .call(Method::GET, "/api/v1/connections", &member, None)
        .await;
    let names: Vec<&str> = list.json["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["acme", "bad"]);
    let a = s
        .call(Method::DELETE, "/api/v1/connections/bad", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let t = s
        .call(Method::POST, "/api/v1/connections/acme/test", &admin, None)
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.json["test"]["ok"], true);
}

#[tokio::test]
async fn schedules_take_only_the_allowed_frequencies() {
    let s = Service::start().await;
    let admin = s.admin().await;
    assert_eq!(
        add_connection(&s, &admin, "acme", json!({})).await.status,
        StatusCode::CREATED
    );
    let a = s
        .call(
            Method::PUT,
            "/api/v1/connections/acme/schedule",
            &admin,
            Some(json!({"every": "7m"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let e = error_of(&a);
    assert!(
        format!("{}{}", e["message"], e["fix"]).contains("15m"),
        "lists the allowed values: {e}"
    );
    let a = s
        .call(
            Method::PUT,
            "/api/v1/connections/acme/schedule",
            &admin,
            Some(json!({"every": "15m"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["connection"]["sync"]["every"], "15m");
    let a = s
        .call(
            Method::PUT,
            "/api/v1/connections/acme/schedule",
            &admin,
            Some(json!({"paused": true})),
        )
        .await;
    assert_eq!(a.json["connection"]["sync"]["paused"], true);
    assert_eq!(a.json["connection"]["sync"]["every"], "15m");
    let member = s.member().await;
    let a = s
        .call(
            Method::PUT,
            "/api/v1/connections/acme/schedule",
            &member,
            Some(json!({"every": "1h"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text.contains("schedules are managed by admins"));
}

#[tokio::test]
async fn sync_now_runs_and_records_per_table_counts() {
    let s = Service::start().await;
    let admin = s.admin().await;
    assert_eq!(
        add_connection(&s, &admin, "acme", json!({})).await.status,
        StatusCode::CREATED
    );
    let member = s.member().await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/connections/acme/syncs",
            &member,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = s
        .call(Method::POST, "/api/v1/connections/acme/syncs", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let id = a.json["id"].as_i64().expect("a run id");
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let r = s
            .call(Method::GET, &format!("/api/v1/syncs/{id}"), &member, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let status = r.json["status"].as_str().unwrap().to_string();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
            break r.json;
        }
        assert!(Instant::now() < deadline, "the run finishes: {}", r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    for key in [
        "id",
        "connection",
        "status",
        "trigger",
        "started_at",
        "finished_at",
        "responses",
        "api_calls",
        "tables",
        "progress",
        "error",
    ] {
        assert!(run.get(key).is_some(), "{key} in {run}");
    }
    assert_eq!(run["connection"], "acme");
    assert_eq!(run["trigger"], "user");
    assert!(run["error"].is_null());
    assert!(run["api_calls"].as_u64().unwrap() > 0);
    // The counts agree with what the destination holds.
    let db = rusqlite::Connection::open(s.dir.path().join("acme.sqlite")).unwrap();
    let count = |table: &str| -> u64 {
        let n: i64 = db
            .query_row(
                &format!("SELECT COUNT(*) FROM qualtrics_{table}"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        n as u64
    };
    let responses = count("survey_response");
    assert!(responses > 0);
    assert_eq!(run["responses"].as_u64(), Some(responses), "{run}");
    assert_eq!(
        run["tables"]["survey_response"]["inserted"].as_u64(),
        Some(responses),
        "{run}"
    );
    assert_eq!(
        run["tables"]["question"]["inserted"].as_u64(),
        Some(count("question")),
        "{run}"
    );
    assert!(run["tables"]["survey"]["inserted"].as_u64().unwrap() >= 2);
    let hist = s
        .call(Method::GET, "/api/v1/connections/acme/syncs", &member, None)
        .await;
    assert_eq!(hist.json["syncs"][0]["id"].as_i64(), Some(id));
    // A finished run cannot be cancelled into anything else.
    let a = s
        .call(
            Method::POST,
            &format!("/api/v1/syncs/{id}/cancel"),
            &admin,
            None,
        )
        .await;
    assert_ne!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.text);
    // The audit log has the sync and the connection, from the session, with the address.
    let audit = s.call(Method::GET, "/api/v1/audit", &admin, None).await;
    let actions: Vec<&str> = audit.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"sync.start") && actions.contains(&"connection.add"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_is_valid_openapi_3() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let a = s
        .call(Method::GET, "/api/v1/openapi.json", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json;
    check_openapi_structure(&doc);
    let routes = xmbridge_service::api::routes();
    assert!(routes.len() >= 30, "{} routes", routes.len());
    for r in &routes {
        let m = r.method.as_str().to_lowercase();
        assert!(
            doc["paths"][r.path][&m].is_object(),
            "{m} {} is documented",
            r.path
        );
        // … and served: without credentials it is 401 from the guard (the public routes:
        // sign-in 422 for a missing body, the OAuth callback 400 without a state), never the
        // catch-all 404.
        let path = r.path.replace("{id}", "1").replace("{name}", "x");
        let ans = s
            .call(
                Method::from_bytes(r.method.as_str().as_bytes()).unwrap(),
                &path,
                &Creds::default(),
                None,
            )
            .await;
        let expected = if r.path == "/api/v1/session" && r.method == Method::POST {
            StatusCode::UNPROCESSABLE_ENTITY
        } else if r.path == "/oauth/callback" {
            // Public, state-checked: no state, no authorization.
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(ans.status, expected, "{m} {path}: {}", ans.text);
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "nothing documented that is not routed"
    );
}

/// A structural check of an OpenAPI 3.0 document: the required fields, operations with
/// responses, declared path parameters, resolvable references.
fn check_openapi_structure(doc: &Value) {
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        let params: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (m, op) in item.as_object().unwrap() {
            assert!(methods.contains(&m.as_str()), "{m} {path}");
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()));
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{m} {path}: a success answer"
            );
            for (code, r) in responses {
                assert!(code.len() == 3 && code.parse::<u16>().is_ok());
                match r.get("$ref") {
                    Some(rf) => {
                        let name = rf
                            .as_str()
                            .unwrap()
                            .strip_prefix("#/components/responses/")
                            .unwrap();
                        assert!(doc["components"]["responses"][name].is_object());
                    }
                    None => assert!(r["description"].is_string()),
                }
            }
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| {
                            assert_eq!(p["required"], true);
                            p["name"].as_str().unwrap()
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, params, "{m} {path}: path parameters");
            if let Some(body) = op.get("requestBody") {
                assert!(body["content"]["application/json"]["schema"]["type"].is_string());
            }
        }
    }
    for scheme in doc["components"]["securitySchemes"]
        .as_object()
        .unwrap()
        .values()
    {
        assert!(["apiKey", "http"].contains(&scheme["type"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn no_secret_appears_in_any_answer() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let member = s.member().await;
    let made = s
        .call(
            Method::POST,
            "/api/v1/users/mo/tokens",
            &admin,
            Some(json!({})),
        )
        .await;
    let token = made.json["token"].as_str().unwrap().to_string();
    let token_answer = made.text.clone();
    let pg_password = "destination-password-xyz";
    let a = add_connection(
        &s,
        &admin,
        "acme",
        json!({"destination": format!("postgres://xmb:{pg_password}@127.0.0.1:5432/postgres")}),
    )
    .await;
    // Whatever the outcome of the test against the database, the password is not echoed.
    assert!(
        a.status.is_success() || a.status == StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        a.text
    );
    let _ = add_connection(&s, &admin, "lite", json!({})).await;
    let bearer = Creds::bearer(&token);
    for (creds, path) in [
        (&admin, "/api/v1/connections"),
        (&admin, "/api/v1/connections/lite"),
        (&admin, "/api/v1/audit"),
        (&admin, "/api/v1/users"),
        (&admin, "/api/v1/users/mo/tokens"),
        (&member, "/api/v1/me"),
        (&bearer, "/api/v1/me"),
        (&admin, "/api/v1/accounts"),
        (&admin, "/api/v1/workflows"),
        (&admin, "/api/v1/openapi.json"),
    ] {
        s.call(Method::GET, path, creds, None).await;
    }
    let cookies = [
        admin.cookie.clone().unwrap(),
        member.cookie.clone().unwrap(),
    ];
    let sim_token = s.sim_token();
    let secrets = [
        ADMIN_PASSWORD,
        MEMBER_PASSWORD,
        token.as_str(),
        sim_token.as_str(),
        pg_password,
        cookies[0].as_str(),
        cookies[1].as_str(),
    ];
    let bodies = s.bodies.lock().clone();
    assert!(bodies.len() > 10);
    for body in bodies.iter().filter(|b| **b != token_answer) {
        for secret in secrets {
            assert!(!body.contains(secret), "a secret in an answer: {body}");
        }
    }
}

/// A workflow owned by `mo` with one dead event (`boom`) and returns the event's id.
fn workflow_with_a_dead_event(s: &Service) -> String {
    use xmbridge_workflows::store::{EventSource, NewEvent, Store, now_ms};
    let dir = s.state.home.root().join("workflows");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("nps.toml"),
        r#"[[workflow]]
name = "nps"
owner = "mo"

[workflow.trigger]
type = "servicenow"
table = "incident"

[[workflow.step]]
name = "contact"
action = "create-contact"
[workflow.step.inputs]
directory_id = "'POOL_1'"
email = "record.email"
extRef = "record.sys_id"
"#,
    )
    .unwrap();
    let store = &s.state.store;
    let ev = NewEvent {
        workflow: "nps".into(),
        source: EventSource::Manual,
        dedupe_key: "k1".into(),
        payload: json!({"record": {"email": "a@example.com", "sys_id": "1"}}),
    };
    let id = store.enqueue(&ev, now_ms()).unwrap().id().to_string();
    let leased = store
        .lease_due("test", now_ms(), Duration::from_secs(60), 10)
        .unwrap();
    assert_eq!(leased.len(), 1);
    store
        .dead(
            &id,
            leased[0].lease.as_deref().unwrap(),
            3,
            "boom: the directory does not exist",
            "contact",
            now_ms(),
        )
        .unwrap();
    id
}

#[tokio::test]
async fn workflows_show_their_events_and_only_the_owner_or_an_admin_changes_them() {
    let s = Service::start().await;
    let id = workflow_with_a_dead_event(&s);
    let admin = s.admin().await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"name": "pat", "role": "member", "password": "pat's long password"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let mo = s.member().await;
    let pat = s.login("pat", "pat's long password").await;

    let list = s.call(Method::GET, "/api/v1/workflows", &pat, None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let nps = &list.json["workflows"][0];
    assert_eq!(nps["name"], "nps");
    assert_eq!(nps["owner"], "mo");
    assert_eq!(nps["counts"]["dead"], 1);
    let one = s
        .call(Method::GET, "/api/v1/workflows/nps", &pat, None)
        .await;
    assert_eq!(one.json["workflow"]["steps"][0]["action"], "create-contact");
    let missing = s
        .call(Method::GET, "/api/v1/workflows/nope", &pat, None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let dead = s
        .call(
            Method::GET,
            "/api/v1/workflows/nps/events?status=dead",
            &pat,
            None,
        )
        .await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text);
    let ev = &dead.json["events"][0];
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["status"], "dead");
    assert_eq!(ev["attempts"], 3);
    assert!(ev["last_error"].as_str().unwrap().contains("boom"));
    assert!(ev["fix"].as_str().unwrap().contains("replay"));
    let bad = s
        .call(
            Method::GET,
            "/api/v1/workflows/nps/events?status=lost",
            &pat,
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    error_of(&bad);

    // Another member may read but not change it.
    for (action, body) in [
        ("pause", json!({})),
        ("resume", json!({})),
        ("replay", json!({"all": true})),
    ] {
        let a = s
            .call(
                Method::POST,
                &format!("/api/v1/workflows/nps/{action}"),
                &pat,
                Some(body),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{action}: {}", a.text);
        assert!(
            a.text
                .contains("a workflow is changed only by its owner or an admin"),
            "{}",
            a.text
        );
    }
    // Its owner may.
    let a = s
        .call(
            Method::POST,
            "/api/v1/workflows/nps/pause",
            &mo,
            Some(json!({"reason": "checking"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["workflow"]["paused"], true);
    let a = s
        .call(Method::POST, "/api/v1/workflows/nps/resume", &mo, None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["workflow"]["paused"], false);
    let a = s
        .call(
            Method::POST,
            "/api/v1/workflows/nps/replay",
            &mo,
            Some(json!({"events": [id]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["replayed"], 1);
    let pending = s
        .call(
            Method::GET,
            "/api/v1/workflows/nps/events?status=pending",
            &mo,
            None,
        )
        .await;
    assert_eq!(pending.json["events"][0]["id"], id.as_str());
    assert_eq!(pending.json["events"][0]["attempts"], 0);
    let a = s
        .call(
            Method::POST,
            "/api/v1/workflows/nps/replay",
            &mo,
            Some(json!({})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    // An admin may too, and the audit log has the owner's changes.
    let a = s
        .call(Method::POST, "/api/v1/workflows/nps/pause", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let audit = s.call(Method::GET, "/api/v1/audit", &admin, None).await;
    let by_mo: Vec<&str> = audit.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "mo")
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["workflow.pause", "workflow.resume", "workflow.replay"] {
        assert!(by_mo.contains(&action), "{action} in {by_mo:?}");
    }
}

/// The Salesforce simulator and its client credentials.
async fn salesforce() -> (xmbridge_sim::SalesforceHandle, Value) {
    let h =
        xmbridge_test_kit::sim::salesforce(xmbridge_sim::salesforce::SalesforceConfig::default())
            .await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (h, creds)
}

#[tokio::test]
async fn accounts_follow_the_salesforce_extension_rules() {
    let s = Service::start().await;
    let (sf, creds) = salesforce().await;
    let admin = s.admin().await;
    let mo = s.member().await;
    let link = |name: &str, brand: bool| {
        json!({"name": name, "system": "salesforce", "server_to_server": true, "brand": brand,
               "token_url": sf.token_url(), "client_id": creds["client_id"],
               "client_secret": creds["client_secret"]})
    };
    // A member cannot link a brand account.
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &mo,
            Some(link("mine", true)),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(
        a.text
            .contains("brand accounts are linked and shared by admins")
    );
    // Five private ones, not a sixth.
    for n in 1..=5 {
        let a = s
            .call(
                Method::POST,
                "/api/v1/accounts",
                &mo,
                Some(link(&format!("sf{n}"), false)),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "sf{n}: {}", a.text);
        assert_eq!(a.json["account"]["scope"], "private");
        assert_eq!(a.json["account"]["owner"], "mo");
    }
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &mo,
            Some(link("sf6", false)),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(
        error_of(&a)["message"]
            .as_str()
            .unwrap()
            .contains("at most 5"),
        "{}",
        a.text
    );
    // A browser login: the sixth private one is refused before anyone logs in …
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |name: &str, brand: bool| {
        json!({"name": name, "system": "salesforce", "login_url": creds["login_url"], "brand": brand,
               "client_id": creds["client_id"], "client_secret": creds["client_secret"]})
    };
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &mo,
            Some(login("web", false)),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    // … and the admin's brand login goes through the server's callback.
    let user = creds["users"][0]["username"].as_str().unwrap().to_string();
    let r = web
        .post(format!("{}/_sim/oauth/auto-approve", sf.base_url))
        .json(&json!({"user": user}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &admin,
            Some(login("web", true)),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let url = a.json["authorize_url"].as_str().unwrap().to_string();
    let r = web.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "{}", r.text().await.unwrap());
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        back.starts_with(&format!("{}/oauth/callback?", s.base)),
        "{back}"
    );
    let page = web.get(&back).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("linked"));
    let all = s.call(Method::GET, "/api/v1/accounts", &admin, None).await;
    let web_row = all.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "web")
        .cloned()
        .expect("the login linked the account");
    assert_eq!(web_row["kind"], "oauth");
    assert_eq!(web_row["scope"], "brand");
    let a = s
        .call(Method::DELETE, "/api/v1/accounts/web", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);

    // The admin links a brand account and shares it with mo.
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &admin,
            Some(link("brand-sf", true)),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts/brand-sf/share",
            &mo,
            Some(json!({"with": ["mo"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts/sf1/share",
            &admin,
            Some(json!({"with": ["ada"]})),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::CONFLICT,
        "a private account is not shared: {}",
        a.text
    );
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts/brand-sf/share",
            &admin,
            Some(json!({"with": ["mo"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["account"]["grants"], json!(["mo"]));

    let mine = s.call(Method::GET, "/api/v1/accounts", &mo, None).await;
    let accounts = mine.json["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 6, "{}", mine.text);
    let brand = accounts.iter().find(|a| a["name"] == "brand-sf").unwrap();
    assert_eq!(brand["access"], "granted");
    assert_eq!(
        brand["grants"],
        json!([]),
        "grants are shown to owners and admins only"
    );
    let all = s.call(Method::GET, "/api/v1/accounts", &admin, None).await;
    assert_eq!(all.json["accounts"].as_array().unwrap().len(), 6);

    let t = s
        .call(Method::POST, "/api/v1/accounts/brand-sf/test", &mo, None)
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.json["ok"], true, "{}", t.text);
    let a = s
        .call(Method::DELETE, "/api/v1/accounts/brand-sf", &mo, None)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = s
        .call(Method::DELETE, "/api/v1/accounts/sf1", &mo, None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    // Renamed by its owner: its secrets still work under the new name.
    let a = s
        .call(
            Method::PATCH,
            "/api/v1/accounts/sf2",
            &mo,
            Some(json!({"name": "sf-two"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["account"]["name"], "sf-two");
    let t = s
        .call(Method::POST, "/api/v1/accounts/sf-two/test", &mo, None)
        .await;
    assert_eq!(t.json["ok"], true, "{}", t.text);
    let a = s
        .call(Method::POST, "/api/v1/accounts/sf2/test", &mo, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = s
        .call(
            Method::PATCH,
            "/api/v1/accounts/sf-two",
            &mo,
            Some(json!({"name": "sf3"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    let a = s
        .call(
            Method::PATCH,
            "/api/v1/accounts/brand-sf",
            &mo,
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = s
        .call(
            Method::PATCH,
            "/api/v1/accounts/brand-sf",
            &admin,
            Some(json!({"name": "brand"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json["account"]["grants"],
        json!(["mo"]),
        "grants follow the rename"
    );
    let t = s
        .call(Method::POST, "/api/v1/accounts/brand/test", &mo, None)
        .await;
    assert_eq!(t.json["ok"], true, "{}", t.text);
    // Another member does not see mo's accounts at all.
    let a = s
        .call(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"name": "pat", "role": "member", "password": "pat's long password"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let pat = s.login("pat", "pat's long password").await;
    let a = s
        .call(Method::POST, "/api/v1/accounts/sf2/test", &pat, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let secret = creds["client_secret"].as_str().unwrap();
    assert!(
        s.bodies.lock().iter().all(|b| !b.contains(secret)),
        "the client secret is never answered"
    );
}

#[tokio::test]
async fn malformed_ids_and_queries_get_the_error_shape() {
    let s = Service::start().await;
    let admin = s.admin().await;
    let a = s
        .call(Method::GET, "/api/v1/syncs/not-a-number", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    error_of(&a);
    let a = s.call(Method::GET, "/api/v1/syncs/99", &admin, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    error_of(&a);
    let a = s
        .call(Method::GET, "/api/v1/audit?limit=lots", &admin, None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    error_of(&a);
}

#[tokio::test]
async fn behind_a_proxy_the_cookie_is_secure_and_the_forwarded_address_is_audited() {
    let s = Service::start_full(LoginLimiter::new(3, 6, Duration::from_secs(600)), true).await;
    let resp = s
        .http
        .post(format!("{}/api/v1/session", s.base))
        .header("x-forwarded-for", "10.1.2.3")
        .json(&json!({"user": "ada", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let admin = s.admin().await;
    let audit = s.call(Method::GET, "/api/v1/audit", &admin, None).await;
    let first = audit.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "session.create")
        .cloned()
        .unwrap();
    assert_eq!(first["address"], "10.1.2.3", "{first}");
}

#[tokio::test]
async fn a_standard_connection_is_authorized_through_the_servers_callback() {
    let s = Service::start().await;
    let admin = s.admin().await;
    // The simulator's authorization-code client, auto-approved for its brand admin.
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let creds: Value = web
        .get(format!("{}/_sim/credentials", s.sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app = creds["oauth_clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["grants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == "authorization_code")
        })
        .cloned()
        .expect("an authorization-code client");
    let r = web
        .post(format!("{}/_sim/oauth/auto-approve", s.sim.base_url))
        .json(&json!({"user": "admin"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // Saved anyway: it cannot sync before it is authorized.
    let a = s
        .call(
            Method::POST,
            "/api/v1/connections",
            &admin,
            Some(
                json!({"name": "std", "url": s.sim.base_url, "auth": "standard",
                        "client_id": app["client_id"], "client_secret": app["client_secret"],
                        "save_anyway": true}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["test"]["ok"], false);

    let member = s.member().await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/connections/std/authorize",
            &member,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = s
        .call(
            Method::POST,
            "/api/v1/connections/std/authorize",
            &admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let url = a.json["authorize_url"].as_str().unwrap().to_string();
    assert_eq!(a.json["redirect_uri"], format!("{}/oauth/callback", s.base));

    // A forged answer is refused and uses nothing up.
    let forged = web
        .get(format!(
            "{}/oauth/callback?code=forged&state=not-the-state",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);

    // The browser: the provider approves and sends it back to the server.
    let r = web.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        back.starts_with(&format!("{}/oauth/callback?", s.base)),
        "{back}"
    );
    let page = web.get(&back).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("authorized"));
    // The same answer again: the state was used.
    let again = web.get(&back).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    let t = s
        .call(Method::POST, "/api/v1/connections/std/test", &admin, None)
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.json["test"]["ok"], true, "{}", t.text);
    let secret = app["client_secret"].as_str().unwrap();
    assert!(s.bodies.lock().iter().all(|b| !b.contains(secret)));
}

#[tokio::test]
async fn a_servicenow_account_links_and_tests_through_the_api() {
    let s = Service::start().await;
    let sn =
        xmbridge_test_kit::sim::servicenow(xmbridge_sim::servicenow::SnConfig::default()).await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", sn.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = creds["integration_user"].as_str().unwrap().to_string();
    let password = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!(user))
        .unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    let mo = s.member().await;
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &mo,
            Some(
                json!({"name": "sn", "system": "servicenow", "instance_url": sn.base_url,
                        "basic_user": user, "password": "wrong password"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(
        error_of(&a)["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{}",
        a.text
    );
    let a = s
        .call(
            Method::POST,
            "/api/v1/accounts",
            &mo,
            Some(
                json!({"name": "sn", "system": "servicenow", "instance_url": sn.base_url,
                        "basic_user": user, "password": password}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["account"]["kind"], "basic");
    let t = s
        .call(Method::POST, "/api/v1/accounts/sn/test", &mo, None)
        .await;
    assert_eq!(t.json["ok"], true, "{}", t.text);
    assert!(s.bodies.lock().iter().all(|b| !b.contains(&password)));
}
