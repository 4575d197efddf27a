//! End-to-end tests of the simulated OAuth 2.0 server, data-center rules for tokens and the
//! `/_sim` admin API, over real HTTP on loopback.

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use xmbridge_sim::{SimConfig, SimHandle};

const HOME: &str = "fra1.qualtrics.com";
const OTHER: &str = "iad1.qualtrics.com";
const CALLBACK: &str = "http://127.0.0.1:53682/callback";

struct T {
    h: SimHandle,
    c: reqwest::Client,
    creds: Value,
}

async fn start() -> T {
    let h = xmbridge_test_kit::sim::qualtrics(SimConfig::default()).await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let creds = c
        .get(format!("{}/_sim/credentials", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    T { h, c, creds }
}

impl T {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.h.base_url)
    }

    /// (client_id, client_secret) of the seeded client whose name contains `what`.
    fn client(&self, what: &str) -> (String, String) {
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

    fn user(&self, role: &str) -> Value {
        self.creds["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["role"] == role)
            .unwrap()
            .clone()
    }

    /// POST /oauth2/token with HTTP Basic client auth.
    async fn token(
        &self,
        host: Option<&str>,
        client: &(String, String),
        form: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut rb = self
            .c
            .post(self.url("/oauth2/token"))
            .basic_auth(&client.0, Some(&client.1))
            .form(form);
        if let Some(h) = host {
            rb = rb.header("Host", h);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        (r.status(), r.json().await.unwrap())
    }

    async fn cc_token(&self, client: &(String, String), scope: Option<&str>) -> Value {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let (st, v) = self.token(None, client, &form).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    /// GET an API path with a bearer token, optionally on another Host.
    async fn api(&self, path: &str, host: Option<&str>, bearer: &str) -> (StatusCode, Value) {
        let mut rb = self
            .c
            .get(format!("{}{path}", self.h.api_url()))
            .bearer_auth(bearer);
        if let Some(h) = host {
            rb = rb.header("Host", h);
        }
        let r = rb.send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .c
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.admin(reqwest::Method::POST, path, body).await
    }

    /// GET /oauth2/auth with these query parameters; returns (status, Location, body).
    async fn authorize(&self, q: &[(&str, &str)]) -> (StatusCode, Option<url::Url>, String) {
        let r = self
            .c
            .get(self.url("/oauth2/auth"))
            .query(q)
            .send()
            .await
            .unwrap();
        location(r).await
    }

    /// Runs the authorization-code flow with auto-approve for `user`; returns the token answer.
    async fn code_flow(&self, user: &str, scope: &str) -> Value {
        let (st, _) = self
            .post(
                "/_sim/oauth/auto-approve",
                json!({"user": user, "organization": "simbrand"}),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let web = self.client("Web app");
        let (st, loc, _) = self
            .authorize(&[
                ("response_type", "code"),
                ("client_id", &web.0),
                ("redirect_uri", CALLBACK),
                ("scope", scope),
                ("state", "xyz"),
            ])
            .await;
        assert_eq!(st, StatusCode::FOUND);
        let code = param(&loc.unwrap(), "code").unwrap();
        let (st, v) = self
            .token(
                None,
                &web,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", CALLBACK),
                ],
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    async fn refresh(&self, rt: &str) -> (StatusCode, Value) {
        self.token(
            None,
            &self.client("Web app"),
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
        .await
    }
}

async fn location(r: reqwest::Response) -> (StatusCode, Option<url::Url>, String) {
    let st = r.status();
    let loc = r
        .headers()
        .get(LOCATION)
        .map(|l| url::Url::parse(l.to_str().unwrap()).unwrap());
    (st, loc, r.text().await.unwrap())
}

fn param(u: &url::Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.into_owned())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

#[tokio::test]
async fn credentials_lists_users_and_clients() {
    let t = start().await;
    assert_eq!(t.creds["brand_id"], "simbrand");
    assert_eq!(t.creds["home_dc"], "fra1");
    assert_eq!(t.creds["users"].as_array().unwrap().len(), 5);
    let viewer = t.user("viewer");
    assert_eq!(s(&viewer["api_token"]).len(), 40);
    assert_eq!(viewer["permissions"]["manage_directories"], false);
    let clients = t.creds["oauth_clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3);
    assert_eq!(clients[0]["scopes"], json!(["manage:all"]));
    assert_eq!(clients[0]["user"], "admin@simbrand.test");
    assert_eq!(clients[1]["user"], Value::Null);
    assert_eq!(clients[1]["any_loopback_redirect_uri"], true);
    assert_eq!(clients[2]["user"], "viewer@simbrand.test");
    // Same seed, same secrets.
    let t2 = start().await;
    assert_eq!(t.creds["oauth_clients"], t2.creds["oauth_clients"]);
}

#[tokio::test]
async fn client_credentials_grant() {
    let t = start().await;
    let admin = t.client("Brand admin");
    let v = t.cc_token(&admin, None).await;
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["scope"], "manage:all");
    assert!(v.get("refresh_token").is_none() && v.get("meta").is_none());
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["access_token", "token_type", "expires_in", "scope"]);
    let (st, me) = t.api("/whoami", None, s(&v["access_token"])).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["result"]["userId"], t.user("admin")["id"]);

    // Credentials as form fields work too.
    let r =
        t.c.post(t.url("/oauth2/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &admin.0),
                ("client_secret", &admin.1),
                ("scope", "read:surveys"),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["scope"], "read:surveys");

    // Wrong secret → 401 invalid_client with a Basic challenge.
    let r =
        t.c.post(t.url("/oauth2/token"))
            .basic_auth(&admin.0, Some("nope"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key(WWW_AUTHENTICATE));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert!(v["error_description"].is_string());

    let unknown = ("nobody".to_string(), "x".to_string());
    let (st, v) = t
        .token(None, &unknown, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let (st, v) = t.token(None, &admin, &[("grant_type", "password")]).await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "unsupported_grant_type")
    );
    let (st, v) = t.token(None, &admin, &[("scope", "manage:all")]).await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // The web-app client may not use client_credentials.
    let (st, v) = t
        .token(
            None,
            &t.client("Web app"),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );
    // No client authentication at all.
    let r =
        t.c.post(t.url("/oauth2/token"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // JSON instead of a form body.
    let r =
        t.c.post(t.url("/oauth2/token"))
            .basic_auth(&admin.0, Some(&admin.1))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    // Two authentication methods at once.
    let (st, v) = t
        .token(
            None,
            &admin,
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", &admin.1),
            ],
        )
        .await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn scopes_are_enforced() {
    let t = start().await;
    let viewer = t.client("Viewer");
    let all = t.cc_token(&viewer, None).await;
    assert_eq!(all["scope"], "read:surveys read:survey_responses");
    let (st, v) = t
        .token(
            None,
            &viewer,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "manage:all"),
            ],
        )
        .await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_scope")
    );
    let (st, v) = t
        .token(
            None,
            &viewer,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "read:nothing"),
            ],
        )
        .await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_scope")
    );

    let narrow = t.cc_token(&viewer, Some("read:survey_responses")).await;
    let tok = s(&narrow["access_token"]);
    let (st, me) = t.api("/whoami", None, tok).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["result"]["userName"], "viewer@simbrand.test");
    let (st, v) = t.api("/surveys", None, tok).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(v["meta"]["httpStatus"], "403 - Forbidden");
    assert!(s(&v["meta"]["error"]["errorMessage"]).contains("read:surveys"));
    let (st, v) = t.api("/surveys", None, s(&all["access_token"])).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["result"]["elements"].is_array());
}

#[tokio::test]
async fn authorization_code_with_auto_approve() {
    let t = start().await;
    let web = t.client("Web app");
    let v = t.code_flow("analyst", "read:surveys offline").await;
    assert_eq!(v["scope"], "read:surveys offline");
    assert!(v["refresh_token"].is_string());
    let (st, me) = t.api("/whoami", None, s(&v["access_token"])).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["result"]["userId"], t.user("analyst")["id"]);

    // The redirect carries code and state; the code works once.
    let q = [
        ("response_type", "code"),
        ("client_id", web.0.as_str()),
        ("redirect_uri", "http://localhost:8765/cb?keep=1"),
        ("state", "s t&ate"),
    ];
    let (st, loc, _) = t.authorize(&q).await;
    assert_eq!(st, StatusCode::FOUND);
    let loc = loc.unwrap();
    assert_eq!(loc.host_str(), Some("localhost"));
    assert_eq!(param(&loc, "state").as_deref(), Some("s t&ate"));
    assert_eq!(param(&loc, "keep").as_deref(), Some("1"));
    let code = param(&loc, "code").unwrap();
    let exchange = |code: String, redirect: &'static str| {
        let t = &t;
        let web = web.clone();
        async move {
            t.token(
                None,
                &web,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect),
                ],
            )
            .await
        }
    };
    let (st, v) = exchange(code.clone(), "http://localhost:8765/cb?keep=1").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "manage:all openid offline");
    let (st, v) = exchange(code, "http://localhost:8765/cb?keep=1").await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );

    // redirect_uri must match the authorization request.
    let (_, loc, _) = t.authorize(&q).await;
    let code = param(&loc.unwrap(), "code").unwrap();
    let (st, v) = exchange(code, "http://localhost:8765/other").await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    // Missing redirect_uri / code.
    let (st, v) = t
        .token(
            None,
            &web,
            &[("grant_type", "authorization_code"), ("code", "x")],
        )
        .await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // Codes expire after 10 minutes.
    let (_, loc, _) = t.authorize(&q).await;
    let code = param(&loc.unwrap(), "code").unwrap();
    t.post("/_sim/clock/advance", json!({"seconds": 601})).await;
    let (st, v) = exchange(code, "http://localhost:8765/cb?keep=1").await;
    assert_eq!(
        (st, s(&v["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert!(s(&v["error_description"]).contains("expired"));
}

#[tokio::test]
async fn authorization_errors() {
    let t = start().await;
    let web = t.client("Web app");
    // Untrusted client or redirect: an HTML page, never a redirect.
    for q in [
        vec![
            ("response_type", "code"),
            ("client_id", "nope"),
            ("redirect_uri", CALLBACK),
        ],
        vec![
            ("response_type", "code"),
            ("client_id", web.0.as_str()),
            ("redirect_uri", "https://evil.example/cb"),
        ],
        vec![("response_type", "code"), ("client_id", web.0.as_str())],
        vec![
            ("response_type", "code"),
            ("client_id", web.0.as_str()),
            ("redirect_uri", CALLBACK),
            ("organization", "otherbrand"),
        ],
    ] {
        let r =
            t.c.get(t.url("/oauth2/auth"))
                .query(&q)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get(LOCATION).is_none());
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
    // The organization may also come from the Host (acme.fra1.qualtrics.com).
    let r =
        t.c.get(t.url("/oauth2/auth"))
            .header("Host", "otherbrand.fra1.qualtrics.com")
            .query(&[
                ("response_type", "code"),
                ("client_id", &web.0),
                ("redirect_uri", CALLBACK),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Errors after the redirect URI is trusted go back to the client, with state.
    let (st, loc, _) = t
        .authorize(&[
            ("response_type", "token"),
            ("client_id", &web.0),
            ("redirect_uri", CALLBACK),
            ("state", "s1"),
        ])
        .await;
    let loc = loc.unwrap();
    assert_eq!(st, StatusCode::FOUND);
    assert_eq!(
        param(&loc, "error").as_deref(),
        Some("unsupported_response_type")
    );
    assert_eq!(param(&loc, "state").as_deref(), Some("s1"));
    let (_, loc, _) = t
        .authorize(&[
            ("response_type", "code"),
            ("client_id", &web.0),
            ("redirect_uri", CALLBACK),
            ("scope", "read:everything"),
            ("state", "s2"),
        ])
        .await;
    let loc = loc.unwrap();
    assert_eq!(param(&loc, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(param(&loc, "state").as_deref(), Some("s2"));
}

#[tokio::test]
async fn authorization_code_with_consent_form() {
    let t = start().await;
    let web = t.client("Web app");
    let q = [
        ("response_type", "code"),
        ("client_id", web.0.as_str()),
        ("redirect_uri", CALLBACK),
        ("scope", "read:surveys"),
        ("state", "<st>"),
    ];
    let (st, loc, page) = t.authorize(&q).await;
    assert_eq!(st, StatusCode::OK);
    assert!(loc.is_none());
    assert!(page.contains("<form method=\"post\" action=\"/oauth2/auth\">"));
    assert!(page.contains("viewer@simbrand.test"));
    assert!(page.contains("&lt;st&gt;"), "state is escaped in the page");

    let submit = |decision: &'static str| {
        let mut form: Vec<(&str, &str)> = q.to_vec();
        form.push(("user", "viewer@simbrand.test"));
        form.push(("decision", decision));
        let req = t.c.post(t.url("/oauth2/auth")).form(&form);
        async move { location(req.send().await.unwrap()).await }
    };
    let (st, loc, _) = submit("deny").await;
    assert_eq!(st, StatusCode::FOUND);
    let loc = loc.unwrap();
    assert_eq!(param(&loc, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&loc, "state").as_deref(), Some("<st>"));
    assert!(param(&loc, "code").is_none());

    let (st, loc, _) = submit("approve").await;
    assert_eq!(st, StatusCode::FOUND);
    let loc = loc.unwrap();
    assert_eq!(param(&loc, "state").as_deref(), Some("<st>"));
    let code = param(&loc, "code").unwrap();
    let (st, v) = t
        .token(
            None,
            &web,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "read:surveys");
    let (_, me) = t.api("/whoami", None, s(&v["access_token"])).await;
    assert_eq!(me["result"]["userId"], t.user("viewer")["id"]);

    // Unknown user on the form → error page.
    let mut form: Vec<(&str, &str)> = q.to_vec();
    form.push(("user", "ghost"));
    form.push(("decision", "approve"));
    let r =
        t.c.post(t.url("/oauth2/auth"))
            .form(&form)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn expiry_then_refresh_and_rotation() {
    let t = start().await;
    let (st, v) = t
        .post("/_sim/oauth/settings", json!({"access_token_ttl_secs": 60}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["access_token_ttl_secs"], 60);
    assert_eq!(v["refresh_token_ttl_secs"], Value::Null);
    let v = t.code_flow("admin", "manage:all").await;
    assert_eq!(v["expires_in"], 60);
    let (st, _) = t.api("/whoami", None, s(&v["access_token"])).await;
    assert_eq!(st, StatusCode::OK);
    t.post("/_sim/clock/advance", json!({"seconds": 61})).await;
    let (st, e) = t.api("/whoami", None, s(&v["access_token"])).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(e["meta"]["httpStatus"], "401 - Unauthorized");

    let rt1 = s(&v["refresh_token"]).to_string();
    let (st, v2) = t.refresh(&rt1).await;
    assert_eq!(st, StatusCode::OK, "{v2}");
    assert_eq!(v2["scope"], "manage:all");
    let rt2 = s(&v2["refresh_token"]).to_string();
    assert_ne!(rt1, rt2);
    let (st, _) = t.api("/whoami", None, s(&v2["access_token"])).await;
    assert_eq!(st, StatusCode::OK);
    // Rotation: the old refresh token is spent.
    let (st, e) = t.refresh(&rt1).await;
    assert_eq!(
        (st, s(&e["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert!(e["error_description"].is_string());
    // A narrower scope on refresh applies to the access token only.
    let (st, v3) = t
        .token(
            None,
            &t.client("Web app"),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt2),
                ("scope", "read:users"),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v3}");
    assert_eq!(v3["scope"], "read:users");
    let (st, v4) = t.refresh(s(&v3["refresh_token"])).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v4["scope"], "manage:all");
    // A refresh token belongs to its client.
    let (st, e) = t
        .token(
            None,
            &t.client("Brand admin"),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", s(&v4["refresh_token"])),
            ],
        )
        .await;
    assert_eq!(
        (st, s(&e["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );

    // Refresh tokens with a lifetime expire.
    t.post(
        "/_sim/oauth/settings",
        json!({"refresh_token_ttl_secs": 100}),
    )
    .await;
    let v = t.code_flow("admin", "manage:all").await;
    t.post("/_sim/clock/advance", json!({"seconds": 101})).await;
    let (st, e) = t.refresh(s(&v["refresh_token"])).await;
    assert_eq!(
        (st, s(&e["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert!(s(&e["error_description"]).contains("expired"));
    let (st, v) = t
        .post(
            "/_sim/oauth/settings",
            json!({"refresh_token_ttl_secs": null}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["refresh_token_ttl_secs"], Value::Null);
    let (st, _) = t
        .post("/_sim/oauth/settings", json!({"access_token_ttl_secs": 0}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn revocation() {
    let t = start().await;
    let v = t.code_flow("analyst", "manage:all").await;
    let at = s(&v["access_token"]).to_string();
    let rt = s(&v["refresh_token"]).to_string();
    let (st, r) = t
        .post("/_sim/tokens/revoke", json!({"access_token": at}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["revoked_access_tokens"], 1);
    let (st, e) = t.api("/whoami", None, &at).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s(&e["meta"]["error"]["errorMessage"]).contains("revoked"));
    let (st, _) = t
        .post("/_sim/tokens/revoke", json!({"access_token": at}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, _) = t
        .post("/_sim/tokens/revoke", json!({"refresh_token": rt}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = t.refresh(&rt).await;
    assert_eq!(
        (st, s(&e["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );

    // Everything of one user.
    let v = t.code_flow("analyst", "manage:all").await;
    let cc = t.cc_token(&t.client("Brand admin"), None).await;
    let (st, r) = t
        .post("/_sim/tokens/revoke", json!({"user": "analyst"}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        r,
        json!({"revoked_access_tokens": 1, "revoked_refresh_tokens": 1})
    );
    assert_eq!(
        t.api("/whoami", None, s(&v["access_token"])).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.refresh(s(&v["refresh_token"])).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.api("/whoami", None, s(&cc["access_token"])).await.0,
        StatusCode::OK
    );
    // Everything.
    let (st, _) = t.post("/_sim/tokens/revoke", json!({"all": true})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        t.api("/whoami", None, s(&cc["access_token"])).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Bad requests.
    assert_eq!(
        t.post("/_sim/tokens/revoke", json!({})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.post("/_sim/tokens/revoke", json!({"user": "ghost"}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn tokens_only_work_on_their_data_center() {
    let t = start().await;
    let admin = t.client("Brand admin");
    // Issued on the home data center (plain loopback = fra1).
    let home = t.cc_token(&admin, None).await;
    let tok = s(&home["access_token"]);
    assert_eq!(t.api("/whoami", Some(HOME), tok).await.0, StatusCode::OK);
    let (st, e) = t.api("/whoami", Some(OTHER), tok).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s(&e["meta"]["error"]["errorMessage"]).contains("fra1"));

    // Issued through iad1: only valid on iad1.
    let (st, v) = t
        .token(Some(OTHER), &admin, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(st, StatusCode::OK);
    let tok = s(&v["access_token"]);
    assert_eq!(
        t.api("/whoami", Some(HOME), tok).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.api("/whoami", None, tok).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (st, me) = t.api("/whoami", Some(OTHER), tok).await;
    assert_eq!(st, StatusCode::OK);
    assert!(s(&me["meta"]["notice"]).ends_with(": fra1.qualtrics.com"));

    // An API token works on any data center, with the proxy notice.
    let r =
        t.c.get(format!("{}/whoami", t.h.api_url()))
            .header("Host", OTHER)
            .header("X-API-TOKEN", s(&t.user("admin")["api_token"]))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(s(&v["meta"]["notice"]).contains("fra1.qualtrics.com"));

    // A refresh token must be redeemed where it was issued.
    let v = t.code_flow("admin", "manage:all").await;
    let (st, e) = t
        .token(
            Some(OTHER),
            &t.client("Web app"),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", s(&v["refresh_token"])),
            ],
        )
        .await;
    assert_eq!(
        (st, s(&e["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    let (st, _) = t
        .token(
            Some(HOME),
            &t.client("Web app"),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", s(&v["refresh_token"])),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn admin_creates_clients() {
    let t = start().await;
    let (st, c) = t
        .post(
            "/_sim/oauth/clients",
            json!({"user": "researcher", "grants": ["client_credentials"],
                   "scopes": ["read:surveys"], "client_id": "my-client", "client_secret": "s3cret"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["user"], "researcher@simbrand.test");
    let mine = ("my-client".to_string(), "s3cret".to_string());
    let v = t.cc_token(&mine, None).await;
    assert_eq!(v["scope"], "read:surveys");
    let (_, me) = t.api("/whoami", None, s(&v["access_token"])).await;
    assert_eq!(me["result"]["userId"], t.user("researcher")["id"]);
    // Generated id/secret, user given by user id, listed in credentials.
    let uid = s(&t.user("viewer")["id"]).to_string();
    let (st, c) = t
        .post(
            "/_sim/oauth/clients",
            json!({"user": uid, "scopes": "read:users"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s(&c["client_id"]).len(), 32);
    let creds: Value =
        t.c.get(t.url("/_sim/credentials"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(creds["oauth_clients"].as_array().unwrap().len(), 5);
    // An auth-code client with registered redirect URIs accepts only those.
    let (st, _) = t
        .post(
            "/_sim/oauth/clients",
            json!({"grants": ["authorization_code"], "client_id": "spa", "client_secret": "x",
                   "redirect_uris": ["https://app.example/cb"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = t
        .authorize(&[
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", CALLBACK),
        ])
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, loc, _) = t
        .authorize(&[
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", "https://app.example/cb"),
        ])
        .await;
    assert_eq!((st, loc), (StatusCode::OK, None));
    // Errors.
    for (body, want) in [
        (
            json!({"user": "admin", "client_id": "my-client", "client_secret": "y"}),
            400,
        ),
        (json!({"user": "ghost"}), 404),
        (json!({"user": "admin", "grants": ["password"]}), 400),
        (json!({"grants": ["client_credentials"]}), 400),
        (json!({"user": "admin", "scopes": ["read:everything"]}), 400),
        (json!({"user": "admin", "colour": "blue"}), 400),
    ] {
        let (st, e) = t.post("/_sim/oauth/clients", body).await;
        assert_eq!(st.as_u16(), want, "{e}");
        assert!(e["error"].is_string());
    }
    let r =
        t.c.post(t.url("/_sim/oauth/clients"))
            .body("{not json")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn admin_auto_approve_switch() {
    let t = start().await;
    let web = t.client("Web app");
    let q = [
        ("response_type", "code"),
        ("client_id", web.0.as_str()),
        ("redirect_uri", CALLBACK),
    ];
    let (st, v) = t
        .post(
            "/_sim/oauth/auto-approve",
            json!({"user": "viewer", "organization": "simbrand"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["auto_approve"]["user"], "viewer@simbrand.test");
    assert_eq!(t.authorize(&q).await.0, StatusCode::FOUND);
    let (st, v) = t
        .admin(
            reqwest::Method::DELETE,
            "/_sim/oauth/auto-approve",
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["auto_approve"], Value::Null);
    assert_eq!(t.authorize(&q).await.0, StatusCode::OK);
    let (st, _) = t
        .post(
            "/_sim/oauth/auto-approve",
            json!({"user": "viewer", "organization": "other"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = t.post("/_sim/oauth/auto-approve", json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, v) = t
        .admin(reqwest::Method::GET, "/_sim/oauth/settings", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["access_token_ttl_secs"], 3600);
}

#[tokio::test]
async fn admin_permissions() {
    let t = start().await;
    let token = s(&t.user("viewer")["api_token"]).to_string();
    let whoami = || {
        t.c.get(format!("{}/whoami", t.h.api_url()))
            .header("X-API-TOKEN", &token)
            .send()
    };
    assert_eq!(whoami().await.unwrap().status(), StatusCode::OK);
    let (st, u) = t
        .post(
            "/_sim/users/viewer/permissions",
            json!({"api_access": false}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(u["permissions"]["api_access"], false);
    assert_eq!(whoami().await.unwrap().status(), StatusCode::FORBIDDEN);
    let (st, u) = t
        .post(
            "/_sim/users/viewer@simbrand.test/permissions",
            json!({"api_access": true, "manage_directories": true, "brand_admin": true}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(u["permissions"]["brand_admin"], true);
    assert_eq!(whoami().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        t.post("/_sim/users/ghost/permissions", json!({"api_access": true}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.post(
            "/_sim/users/viewer/permissions",
            json!({"api_access": "yes"})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn admin_clock() {
    let t = start().await;
    let (st, c) = t
        .admin(reqwest::Method::GET, "/_sim/clock", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let before = c["now_ms"].as_i64().unwrap();
    assert_eq!(c["start"], "2026-11-01T00:00:00.000Z");
    let (st, c) = t
        .post("/_sim/clock/advance", json!({"seconds": 86400}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(c["now_ms"].as_i64().unwrap() >= before + 86_400_000);
    assert!(s(&c["now"]).starts_with("2026-11-02"));
    for bad in [json!({"seconds": -1}), json!({"seconds": "10"}), json!({})] {
        assert_eq!(
            t.post("/_sim/clock/advance", bad).await.0,
            StatusCode::BAD_REQUEST
        );
    }
}

/// The `revoke_tokens_after` fault: a token revoked mid-run takes the refresh token with it.
#[tokio::test]
async fn revoked_mid_run_fault_kills_refresh_tokens_too() {
    let t = start().await;
    let v = t.code_flow("analyst", "manage:all").await;
    let at = s(&v["access_token"]).to_string();
    let rt = s(&v["refresh_token"]).to_string();
    let (st, _) = t
        .post("/_sim/faults", json!({"revoke_tokens_after": 2}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(t.api("/whoami", None, &at).await.0, StatusCode::OK);
    assert_eq!(t.api("/whoami", None, &at).await.0, StatusCode::OK);
    // Call 3: revoked before it is handled.
    assert_eq!(
        t.api("/whoami", None, &at).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (st, e) = t.refresh(&rt).await;
    assert_eq!(
        (st, s(&e["error"])),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    // A fresh authorization works again.
    let v = t.code_flow("analyst", "manage:all").await;
    assert_eq!(
        t.api("/whoami", None, s(&v["access_token"])).await.0,
        StatusCode::OK
    );
}
