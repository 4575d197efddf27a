//! The ServiceNow simulator over real HTTP on loopback: OAuth grants and refusals, paging headers,
//! v1 vs v2 empty lists, encoded queries (with ignored invalid parts), ACL 403s, rate-limit 429s,
//! CRUD status codes, import sets and the business-rule webhook.

use reqwest::StatusCode;
use serde_json::{Value, json};
use xmbridge_sim::SnHandle;
use xmbridge_sim::servicenow::SnConfig;

struct Sn {
    h: SnHandle,
    http: reqwest::Client,
    creds: Value,
}

impl Sn {
    async fn start() -> Sn {
        let h = xmbridge_test_kit::sim::servicenow(SnConfig::default()).await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let creds = http
            .get(format!("{}/_sim/credentials", h.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Sn { h, http, creds }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.h.base_url)
    }

    fn password(&self, user: &str) -> String {
        self.creds["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user_name"] == user)
            .map(|u| u["password"].as_str().unwrap().to_string())
            .unwrap()
    }

    fn client(&self) -> (String, String) {
        let c = &self.creds["oauth_clients"][0];
        (
            c["client_id"].as_str().unwrap().into(),
            c["client_secret"].as_str().unwrap().into(),
        )
    }

    fn as_user(&self, method: reqwest::Method, path: &str, user: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .basic_auth(user, Some(self.password(user)))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.as_user(reqwest::Method::GET, path, "xmbridge.integration")
    }

    async fn admin(&self, path: &str, body: Value) -> reqwest::Response {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/oauth_token.do"))
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }
}

async fn json_of(r: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = r.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

#[tokio::test]
async fn oauth_grants_and_refusals() {
    let sn = Sn::start().await;
    let (id, secret) = sn.client();
    let pw = sn.password("xmbridge.integration");
    let (s, v) = sn
        .token(&[
            ("grant_type", "password"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("username", "xmbridge.integration"),
            ("password", &pw),
        ])
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["expires_in"], 1799);
    assert_eq!(v["token_type"], "Bearer");
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();

    let (s, _, body) = json_of(
        sn.http
            .get(sn.url("/api/now/table/incident?sysparm_limit=1"))
            .bearer_auth(&access),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // Wrong password, wrong secret, unknown grant: the same non-standard 401.
    let denied = json!({"error": "server_error", "error_description": "access_denied"});
    for form in [
        vec![
            ("grant_type", "password"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
            ("username", "xmbridge.integration"),
            ("password", "nope"),
        ],
        vec![
            ("grant_type", "password"),
            ("client_id", id.as_str()),
            ("client_secret", "nope"),
            ("username", "xmbridge.integration"),
            ("password", pw.as_str()),
        ],
        vec![
            ("grant_type", "magic"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
        ],
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
        ],
    ] {
        let (s, v) = sn.token(&form).await;
        assert_eq!((s, &v), (StatusCode::UNAUTHORIZED, &denied), "{form:?}");
    }
    // A JSON body is not accepted.
    let r = sn
        .http
        .post(sn.url("/oauth_token.do"))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // client_credentials once the property is on: no refresh token.
    sn.admin(
        "/_sim/properties",
        json!({"glide.oauth.inbound.client.credential.grant_type.enabled": "true"}),
    )
    .await;
    let (s, v) = sn
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("refresh_token").is_none());

    // Expired access token → 401 envelope; the refresh grant gives a new one.
    sn.admin("/_sim/tokens/expire", json!({})).await;
    let (s, _, body) = json_of(
        sn.http
            .get(sn.url("/api/now/table/incident?sysparm_limit=1"))
            .bearer_auth(&access),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(body["status"], "failure");
    assert_eq!(body["error"]["message"], "User Not Authenticated");
    let (s, v) = sn
        .token(&[
            ("grant_type", "refresh_token"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("refresh_token", &refresh),
        ])
        .await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["access_token"], access.as_str());

    // Revoked: the refresh token is refused too.
    sn.admin(
        "/_sim/tokens/revoke",
        json!({"user": "xmbridge.integration"}),
    )
    .await;
    let (s, v) = sn
        .token(&[
            ("grant_type", "refresh_token"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("refresh_token", &refresh),
        ])
        .await;
    assert_eq!((s, v), (StatusCode::UNAUTHORIZED, denied));

    // Access tokens last 1800 s of simulated time.
    let (_, v) = sn
        .token(&[
            ("grant_type", "password"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("username", "xmbridge.integration"),
            ("password", &pw),
        ])
        .await;
    let t = v["access_token"].as_str().unwrap().to_string();
    sn.admin("/_sim/clock/advance", json!({"secs": 1801})).await;
    let r = sn
        .http
        .get(sn.url("/api/now/table/incident"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn basic_auth_and_the_gate_for_interactive_users() {
    let sn = Sn::start().await;
    let r = sn
        .http
        .get(sn.url("/api/now/table/incident"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = sn
        .http
        .get(sn.url("/api/now/table/incident"))
        .basic_auth("abel.tuter", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _, _) = json_of(sn.as_user(
        reqwest::Method::GET,
        "/api/now/table/incident?sysparm_limit=1",
        "abel.tuter",
    ))
    .await;
    assert_eq!(s, 200);
    sn.admin("/_sim/faults", json!({"basic_auth_gate": true}))
        .await;
    let (s, _, body) = json_of(sn.as_user(
        reqwest::Method::GET,
        "/api/now/table/incident?sysparm_limit=1",
        "abel.tuter",
    ))
    .await;
    assert_eq!(s, 401);
    assert_eq!(
        body["error"]["detail"],
        "Required to provide Auth information"
    );
    // The web-service-only integration user still passes.
    let (s, _, _) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
    assert_eq!(s, 200);
}

fn links(h: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    let raw = h
        .get("link")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    raw.split(',')
        .filter_map(|part| {
            let (url, rel) = part.split_once(';')?;
            let url = url
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            let rel = rel
                .trim()
                .trim_start_matches("rel=")
                .trim_matches('"')
                .to_string();
            Some((rel, url))
        })
        .collect()
}

#[tokio::test]
async fn paging_follows_link_next_and_counts() {
    let sn = Sn::start().await;
    let (s, h, v) =
        json_of(sn.get("/api/now/table/incident?sysparm_limit=7&sysparm_query=ORDERBYnumber"))
            .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-total-count"], "30");
    assert_eq!(v["result"].as_array().unwrap().len(), 7);
    let l = links(&h);
    let rels: Vec<&str> = l.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rels, ["first", "next", "last"]);
    assert!(l[2].1.contains("sysparm_offset=28"), "{}", l[2].1);
    let mut seen: Vec<String> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_str().unwrap().to_string())
        .collect();
    let mut next = l.iter().find(|(r, _)| r == "next").map(|(_, u)| u.clone());
    let mut pages = 1;
    while let Some(url) = next {
        let r = sn.http.get(&url).basic_auth(
            "xmbridge.integration",
            Some(sn.password("xmbridge.integration")),
        );
        let (s, h, v) = json_of(r).await;
        assert_eq!(s, 200);
        pages += 1;
        seen.extend(
            v["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["number"].as_str().unwrap().to_string()),
        );
        let l = links(&h);
        assert!(l.iter().any(|(r, _)| r == "prev"));
        next = l.iter().find(|(r, _)| r == "next").map(|(_, u)| u.clone());
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 30);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert_eq!(seen[0], "INC0010001");

    // No count, no Link.
    let (_, h, _) = json_of(sn.get("/api/now/table/incident?sysparm_limit=5&sysparm_no_count=true&sysparm_suppress_pagination_header=true")).await;
    assert!(h.get("x-total-count").is_none() && h.get("link").is_none());

    // stats
    let (s, _, v) =
        json_of(sn.get("/api/now/stats/incident?sysparm_count=true&sysparm_query=active=true"))
            .await;
    assert_eq!(s, 200);
    let active: usize = v["result"]["stats"]["count"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, h, _) =
        json_of(sn.get("/api/now/table/incident?sysparm_query=active=true&sysparm_limit=1")).await;
    assert_eq!(h["x-total-count"].to_str().unwrap(), active.to_string());
}

#[tokio::test]
async fn empty_lists_v1_404_v2_200() {
    let sn = Sn::start().await;
    let q = "sysparm_query=number=INC9999999";
    let (s, _, v) = json_of(sn.get(&format!("/api/now/v1/table/incident?{q}"))).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["message"], "No Record found");
    assert_eq!(v["status"], "failure");
    for path in ["/api/now/v2/table/incident", "/api/now/table/incident"] {
        let (s, _, v) = json_of(sn.get(&format!("{path}?{q}"))).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"result": []})), "{path}");
    }
    let (s, _, v) = json_of(sn.get("/api/now/table/no_such_table")).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["message"], "Invalid table no_such_table");
}

#[tokio::test]
async fn encoded_queries_including_ignored_invalid_parts() {
    let sn = Sn::start().await;
    let count = |q: &str| {
        let q = q.to_string();
        let r = sn.get(&format!(
            "/api/now/table/incident?sysparm_fields=number&sysparm_query={}",
            urlencode(&q)
        ));
        async move {
            let (s, h, v) = json_of(r).await;
            assert_eq!(s, 200, "{q}: {v}");
            let n: usize = h["x-total-count"].to_str().unwrap().parse().unwrap();
            assert_eq!(n, v["result"].as_array().unwrap().len());
            n
        }
    };
    let all = count("").await;
    assert_eq!(all, 30);
    let closed = count("state=7").await;
    let resolved = count("state=6").await;
    assert!(closed > 0 && resolved > 0);
    assert_eq!(count("state=6^ORstate=7").await, closed + resolved);
    assert_eq!(count("stateIN6,7").await, closed + resolved);
    assert_eq!(count("stateNOT IN6,7").await, all - closed - resolved);
    assert_eq!(count("state!=7").await, all - closed);
    assert_eq!(count("state=7^NQstate=6").await, closed + resolved);
    // A typo in the field name: ignored, so it matches everything …
    assert_eq!(count("stat=7").await, all);
    assert_eq!(count("stat=7^state=7").await, closed);
    // … unless the instance is told to return no rows.
    sn.admin(
        "/_sim/properties",
        json!({"glide.invalid_query.returns_no_rows": "true"}),
    )
    .await;
    assert_eq!(count("stat=7").await, 0);
    sn.admin(
        "/_sim/properties",
        json!({"glide.invalid_query.returns_no_rows": "false"}),
    )
    .await;

    // Dot-walk through the caller reference.
    let (_, _, v) = json_of(sn.get(
        "/api/now/table/incident?sysparm_limit=1&sysparm_fields=caller_id,caller_id.email,number",
    ))
    .await;
    let row = &v["result"][0];
    let email = row["caller_id.email"].as_str().unwrap().to_string();
    let caller = row["caller_id"]["value"].as_str().unwrap();
    assert_eq!(caller.len(), 32);
    assert!(
        row["caller_id"]["link"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/now/table/sys_user/{caller}"))
    );
    let by_email = count(&format!("caller_id.email={email}")).await;
    let by_id = count(&format!("caller_id={caller}")).await;
    assert!(by_email >= 1);
    assert_eq!(by_email, by_id);
    assert!(count(&format!("caller_id.emailSTARTSWITH{}", &email[..3])).await >= by_email);

    // Case-sensitive LIKE, ordering descending.
    let (_, _, v) = json_of(sn.get("/api/now/table/incident?sysparm_fields=number&sysparm_query=ORDERBYDESCnumber&sysparm_limit=2")).await;
    assert_eq!(v["result"][0]["number"], "INC0010030");
    assert_eq!(count("short_descriptionLIKEvpn").await, 0);

    // Plain field=value pairs on the URL.
    let (_, h, _) = json_of(sn.get("/api/now/table/incident?state=7&sysparm_limit=1")).await;
    assert_eq!(h["x-total-count"].to_str().unwrap(), closed.to_string());

    // Display values.
    let (_, _, v) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1&sysparm_fields=state,caller_id&sysparm_display_value=all")).await;
    let st = &v["result"][0]["state"];
    assert!(
        st["display_value"].is_string() && st["value"].is_string(),
        "{st}"
    );
    let (_, _, v) = json_of(sn.get(
        "/api/now/table/incident?sysparm_query=state=7&sysparm_limit=1&sysparm_fields=state,caller_id&sysparm_display_value=true",
    ))
    .await;
    assert_eq!(v["result"][0]["state"], "Closed");
    let caller = &v["result"][0]["caller_id"];
    assert!(
        caller["display_value"].as_str().unwrap().contains(' '),
        "{caller}"
    );
    assert!(caller.get("value").is_none());
    let (_, _, v) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1&sysparm_fields=caller_id&sysparm_exclude_reference_link=true")).await;
    assert!(v["result"][0]["caller_id"].is_string());
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn acl_refusals_and_short_pages() {
    let sn = Sn::start().await;
    let post = sn
        .as_user(
            reqwest::Method::POST,
            "/api/now/table/incident",
            "beth.anglin",
        )
        .json(&json!({"short_description": "x"}));
    let (s, _, v) = json_of(post).await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["message"], "Operation Failed");
    assert_eq!(
        v["error"]["detail"],
        "ACL Exception Insert Failed due to security constraints"
    );
    let (s, _, v) = json_of(sn.as_user(
        reqwest::Method::GET,
        "/api/now/table/incident",
        "beth.anglin",
    ))
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["error"]["message"],
        "Insufficient rights to query records"
    );
    // The itil agent may not delete incidents.
    let (_, _, v) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
    let id = v["result"][0]["sys_id"].as_str().unwrap().to_string();
    let (s, _, v) = json_of(sn.as_user(
        reqwest::Method::DELETE,
        &format!("/api/now/table/incident/{id}"),
        "abel.tuter",
    ))
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["error"]["detail"],
        "ACL Exception Delete Failed due to security constraints"
    );

    // Row ACLs apply after paging: a page can be short while more rows exist.
    sn.admin(
        "/_sim/acl/rows",
        json!({"table": "incident", "hide_query": "state=7", "unless_role": "admin"}),
    )
    .await;
    let (_, h, v) = json_of(sn.get("/api/now/table/incident?sysparm_limit=10")).await;
    assert_eq!(h["x-total-count"], "30");
    let n = v["result"].as_array().unwrap().len();
    assert!(n < 10, "{n}");
    assert!(links(&h).iter().any(|(r, _)| r == "next"));
}

/// The access-control tables: every user reads their own roles (not others'), only
/// security_admin (and admin) the ACLs, nobody writes them through the Table API, and a change
/// through `/_sim/acl` shows in them.
#[tokio::test]
async fn access_control_tables_follow_the_acl_state() {
    let sn = Sn::start().await;
    let q = |s: &str| urlencode(s);
    let roles = format!(
        "/api/now/table/sys_user_has_role?sysparm_query={}&sysparm_fields=role,user&sysparm_display_value=true",
        q("user=javascript:gs.getUserID()^state=active")
    );
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["role"]["display_value"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let (s, _, v) = json_of(sn.get(&roles)).await;
    assert_eq!(s, 200);
    assert_eq!(
        names(&v),
        vec!["import_set_loader", "itil", "sn_qualtrics_spoke.user"]
    );
    // Without the filter a user still sees only their own rows.
    let (_, _, all) = json_of(
        sn.get("/api/now/table/sys_user_has_role?sysparm_fields=user&sysparm_display_value=true"),
    )
    .await;
    assert!(
        all["result"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["user"]["display_value"] == "xmbridge Integration"),
        "{all}"
    );
    // The ACLs: refused to the integration user, readable by the admin.
    let acls = format!(
        "/api/now/table/sys_security_acl?sysparm_query={}&sysparm_fields=sys_id,name,operation&sysparm_display_value=true",
        q("name=incident^operation.name=create")
    );
    let (s, _, _) = json_of(sn.get(&acls)).await;
    assert_eq!(s, 403);
    let (s, _, v) = json_of(sn.as_user(reqwest::Method::GET, &acls, "admin")).await;
    assert_eq!(s, 200);
    let rows = v["result"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["operation"]["display_value"], "create");
    let acl_id = rows[0]["sys_id"].as_str().unwrap().to_string();
    let acl_roles = format!(
        "/api/now/table/sys_security_acl_role?sysparm_query=sys_security_acl={acl_id}&sysparm_fields=sys_user_role&sysparm_display_value=true"
    );
    let (_, _, v) = json_of(sn.as_user(reqwest::Method::GET, &acl_roles, "admin")).await;
    assert_eq!(v["result"][0]["sys_user_role"]["display_value"], "itil");
    // Changed through /_sim, the tables follow; the Table API cannot change them, even for admin.
    sn.admin(
        "/_sim/acl",
        json!({"table": "incident", "operation": "create", "roles": ["sn_incident_write"]}),
    )
    .await;
    let (_, _, v) = json_of(sn.as_user(reqwest::Method::GET, &acl_roles, "admin")).await;
    assert_eq!(
        v["result"][0]["sys_user_role"]["display_value"],
        "sn_incident_write"
    );
    let post = sn
        .as_user(
            reqwest::Method::POST,
            "/api/now/table/sys_security_acl",
            "admin",
        )
        .json(&json!({"name": "incident"}));
    let (s, _, _) = json_of(post).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn rate_limit_rules_answer_429_with_headers() {
    let sn = Sn::start().await;
    let r = sn
        .admin(
            "/_sim/rate-limit-rules",
            json!({"name": "integration", "user": "xmbridge.integration", "limit": 2}),
        )
        .await;
    let rule: Value = r.json().await.unwrap();
    sn.admin(
        "/_sim/rate-limit-rules",
        json!({"name": "itil", "role": "itil", "limit": 100}),
    )
    .await;
    for _ in 0..2 {
        let (s, h, _) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(
            h["x-ratelimit-rule"].to_str().unwrap(),
            rule["sys_id"].as_str().unwrap()
        );
    }
    let (s, h, v) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
    assert_eq!(s, 429);
    assert_eq!(v["error"]["message"], "Rate limit exceeded");
    let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry));
    let reset: i64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert_eq!(reset % 3600, 0);
    // Other users fall under the role rule.
    let (s, h, _) = json_of(sn.as_user(
        reqwest::Method::GET,
        "/api/now/table/incident?sysparm_limit=1",
        "abel.tuter",
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-ratelimit-limit"], "100");
    // The next hour starts a new count.
    sn.admin("/_sim/clock/advance", json!({"secs": retry}))
        .await;
    let (s, _, _) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn crud_codes_and_write_rules() {
    let sn = Sn::start().await;
    let users = json_of(sn.get("/api/now/table/sys_user?sysparm_query=user_name=abel.tuter"))
        .await
        .2;
    let abel = users["result"][0]["sys_id"].as_str().unwrap().to_string();
    let post = sn
        .as_user(reqwest::Method::POST, "/api/now/table/incident", "xmbridge.integration")
        .json(&json!({"short_description": "Detractor feedback (NPS 3)", "caller_id": abel, "urgency": 2,
                      "impact": "2", "category": "inquiry", "correlation_id": "R_1",
                      "no_such_field": "x", "sys_id": "0123", "number": "INC1", "priority": "1"}));
    let (s, h, v) = json_of(post).await;
    assert_eq!(s, 201, "{v}");
    let rec = &v["result"];
    let id = rec["sys_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        h["location"].to_str().unwrap(),
        sn.url(&format!("/api/now/table/incident/{id}"))
    );
    assert_eq!(rec["number"], "INC0010031");
    assert_eq!(rec["urgency"], "2");
    assert_eq!(rec["priority"], "3");
    assert_eq!(rec["state"], "1");
    assert!(rec.get("no_such_field").is_none());
    assert_eq!(rec["sys_created_by"], "xmbridge.integration");

    let patch = sn
        .as_user(
            reqwest::Method::PATCH,
            &format!("/api/now/table/incident/{id}?sysparm_fields=state,work_notes,sys_mod_count"),
            "xmbridge.integration",
        )
        .json(&json!({"state": "2", "work_notes": "a"}));
    let (s, _, v) = json_of(patch).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["result"],
        json!({"state": "2", "work_notes": "a", "sys_mod_count": "1"})
    );
    // Closing needs the resolution fields (data policy → 403).
    let close = |body: Value| {
        sn.as_user(
            reqwest::Method::PATCH,
            &format!("/api/now/table/incident/{id}"),
            "xmbridge.integration",
        )
        .json(&body)
    };
    let (s, _, v) = json_of(close(json!({"state": "7"}))).await;
    assert_eq!(s, 403, "{v}");
    let (s, h, v) = json_of(
        close(json!({"state": "7", "close_code": "Solved", "close_notes": "ok"}))
            .header("X-no-response-body", "true"),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, Value::Null));
    assert!(
        h.get("content-type")
            .is_none_or(|c| !c.to_str().unwrap().contains("json"))
    );

    let (s, _, v) = json_of(sn.get(&format!("/api/now/table/incident/{id}"))).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["active"], "false");
    assert!(!v["result"]["closed_at"].as_str().unwrap().is_empty());

    let (s, _, v) = json_of(sn.as_user(
        reqwest::Method::DELETE,
        &format!("/api/now/table/incident/{id}"),
        "admin",
    ))
    .await;
    assert_eq!((s, v), (StatusCode::NO_CONTENT, Value::Null));
    let (s, _, v) = json_of(sn.get(&format!("/api/now/table/incident/{id}"))).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["message"], "No Record found");
    let (s, _, _) = json_of(sn.as_user(
        reqwest::Method::DELETE,
        &format!("/api/now/table/incident/{id}"),
        "admin",
    ))
    .await;
    assert_eq!(s, 404);

    // The spoke's property.
    let (s, _, v) = json_of(sn.get("/api/now/table/sys_properties?sysparm_query=name=sn_qualtrics_spoke.qualtrics_directory&sysparm_fields=name,value")).await;
    assert_eq!(s, 200);
    assert!(
        v["result"][0]["value"]
            .as_str()
            .unwrap()
            .starts_with("POOL_")
    );
}

#[tokio::test]
async fn faults_storm_then_recover() {
    let sn = Sn::start().await;
    sn.admin("/_sim/faults", json!({"storm": 2, "storm_status": 502}))
        .await;
    for _ in 0..2 {
        let (s, _, v) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
        assert_eq!(s, 502);
        assert_eq!(v["status"], "failure");
    }
    let (s, _, _) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
    assert_eq!(s, 200);
    sn.admin(
        "/_sim/faults",
        json!({"throttle": 1, "throttle_retry_after": 7}),
    )
    .await;
    let (s, h, _) = json_of(sn.get("/api/now/table/incident?sysparm_limit=1")).await;
    assert_eq!(
        (s, h["retry-after"].to_str().unwrap()),
        (StatusCode::TOO_MANY_REQUESTS, "7")
    );
}

#[tokio::test]
async fn import_set_transform_coalesces() {
    let sn = Sn::start().await;
    let post = |body: Value| {
        sn.as_user(
            reqwest::Method::POST,
            "/api/now/import/u_qualtrics_incident_import",
            "xmbridge.integration",
        )
        .json(&body)
    };
    let row = json!({"u_correlation_id": "R_abc", "u_short_description": "Detractor", "u_caller_email": "abel.tuter@example.com", "u_urgency": "1"});
    let (s, _, v) = json_of(post(row.clone())).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["staging_table"], "u_qualtrics_incident_import");
    assert!(v["import_set"].as_str().unwrap().starts_with("ISET"));
    let r = &v["result"][0];
    assert_eq!(
        (r["status"].as_str(), r["table"].as_str()),
        (Some("inserted"), Some("incident"))
    );
    let id = r["sys_id"].as_str().unwrap().to_string();
    let (s, _, v) = json_of(post(row)).await;
    assert_eq!(s, 201);
    assert_eq!(v["result"][0]["status"], "updated");
    assert_eq!(v["result"][0]["sys_id"], id.as_str());
    let (_, _, v) = json_of(sn.get(&format!("/api/now/table/incident/{id}?sysparm_fields=caller_id.email,urgency&sysparm_display_value=false"))).await;
    assert_eq!(
        v["result"],
        json!({"caller_id.email": "abel.tuter@example.com", "urgency": "1"})
    );
    let (_, h, _) =
        json_of(sn.get("/api/now/table/incident?sysparm_query=correlation_id=R_abc")).await;
    assert_eq!(h["x-total-count"], "1");
}

#[tokio::test]
async fn business_rule_posts_when_an_incident_closes() {
    use axum::routing::post;
    let sn = Sn::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(v): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Not loopback: refused.
    let r = sn
        .http
        .post(sn.url("/_sim/business-rule"))
        .json(&json!({"table": "incident", "condition": "state=7", "url": "http://10.0.0.1/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sn.admin("/_sim/business-rule", json!({"name": "survey on close", "table": "incident", "condition": "state=7", "url": hook, "fields": "sys_id,number,state,caller_id.email"})).await;

    let (_, _, v) =
        json_of(sn.get("/api/now/table/incident?sysparm_query=state=2&sysparm_limit=1")).await;
    let id = v["result"][0]["sys_id"].as_str().unwrap().to_string();
    let patch = |body: Value| {
        sn.as_user(
            reqwest::Method::PATCH,
            &format!("/api/now/table/incident/{id}"),
            "xmbridge.integration",
        )
        .json(&body)
    };
    // Not closed yet: no call.
    json_of(patch(json!({"work_notes": "looking"}))).await;
    let (s, _, _) = json_of(patch(
        json!({"state": "7", "close_code": "Solved", "close_notes": "done"}),
    ))
    .await;
    assert_eq!(s, 200);
    let got = rx.recv().await.unwrap();
    assert_eq!(got["sys_id"], id.as_str());
    assert_eq!(got["state"], "7");
    assert!(got["caller_id.email"].as_str().unwrap().contains('@'));
    // Still closed after another write: the condition did not *become* true, no second call.
    json_of(patch(json!({"work_notes": "again"}))).await;
    let d: Value = sn
        .http
        .get(sn.url("/_sim/business-rule/deliveries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = d.as_array().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["status"], 200);
    assert_eq!(d[0]["sys_id"], id.as_str());
    assert!(rx.try_recv().is_err());
}
