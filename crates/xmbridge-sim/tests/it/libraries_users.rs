//! End-to-end tests of `/libraries…`, `/users…`, `/groups` and `/divisions/{id}` over real HTTP.

use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use xmbridge_sim::{SimConfig, SimHandle};

struct T {
    h: SimHandle,
    c: reqwest::Client,
    admin: String,
}

impl T {
    async fn new() -> T {
        let h = xmbridge_test_kit::sim::qualtrics(SimConfig::default()).await;
        let admin = h.sim.cfg.admin_token();
        T {
            h,
            c: reqwest::Client::new(),
            admin,
        }
    }
    fn token(&self, idx: usize) -> String {
        self.h.sim.users.read()[idx].api_token.clone()
    }
    fn user_id(&self, idx: usize) -> String {
        self.h.sim.users.read()[idx].id.clone()
    }
    async fn call(&self, m: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.h.api_url())
        };
        let mut rb = self.c.request(m, url).header("X-API-TOKEN", token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, &self.admin, None).await
    }
    async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, token, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, &self.admin, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, &self.admin, Some(body)).await
    }
    async fn all(&self, path: &str, token: &str) -> (Vec<Value>, usize) {
        let mut url = path.to_string();
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            let (s, v) = self.get_as(&url, token).await;
            assert_eq!(s, 200, "{url}: {v}");
            pages += 1;
            out.extend(v["result"]["elements"].as_array().unwrap().iter().cloned());
            match v["result"]["nextPage"].as_str() {
                Some(n) => url = n.to_string(),
                None => return (out, pages),
            }
        }
    }
}

fn err_msg(v: &Value) -> String {
    v["meta"]["error"]["errorMessage"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn new_user(name: &str) -> Value {
    json!({"username": format!("{name}@simbrand.test"), "firstName": "New", "lastName": "User",
           "userType": "UT_4H1x9kMzb3e0bQ2", "email": format!("{name}@simbrand.test"),
           "password": "correct horse", "language": "EN", "timeZone": "Europe/Berlin"})
}

#[tokio::test]
async fn libraries() {
    let t = T::new().await;
    let admin = t.admin.clone();
    let (libs, _) = t.all("/libraries", &admin).await;
    assert_eq!(libs.len(), 7, "five user libraries and two group libraries");
    assert_eq!(libs[0]["libraryId"], t.user_id(0).as_str());
    assert!(libs[0]["libraryName"].is_string());
    let groups: Vec<&Value> = libs
        .iter()
        .filter(|l| l["libraryId"].as_str().unwrap().starts_with("GR_"))
        .collect();
    assert_eq!(groups.len(), 2);
    // A non-admin sees their own library and the group libraries.
    let viewer = t.token(2);
    let (vl, _) = t.all("/libraries", &viewer).await;
    let ids: HashSet<&str> = vl
        .iter()
        .map(|l| l["libraryId"].as_str().unwrap())
        .collect();
    assert_eq!(vl.len(), 3);
    assert!(ids.contains(t.user_id(2).as_str()));
    let (s, _) = t
        .get_as(&format!("/libraries/{}/messages", t.user_id(0)), &viewer)
        .await;
    assert_eq!(s, 403);
    assert_eq!(t.get_as("/libraries", &t.token(3)).await.0, 403);

    // The first group library holds more than one page of messages.
    let big = groups[0]["libraryId"].as_str().unwrap().to_string();
    let (msgs, pages) = t.all(&format!("/libraries/{big}/messages"), &admin).await;
    assert_eq!(pages, 2);
    assert_eq!(msgs.len(), 130);
    let unique: HashSet<&str> = msgs.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 130);
    for m in &msgs {
        assert!(m["id"].as_str().unwrap().starts_with("MS_"));
        assert!(m["description"].is_string() && m["category"].is_string());
    }
    let (s, v) = t
        .get(&format!("/libraries/{big}/messages?offset=100"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["elements"].as_array().unwrap().len(), 30);
    assert!(v["result"]["nextPage"].is_null());
    let (invites, _) = t
        .all(
            &format!("/libraries/{big}/messages?category=invite"),
            &admin,
        )
        .await;
    assert!(!invites.is_empty());
    assert!(invites.iter().all(|m| m["category"] == "invite"));
    let (s, v) = t
        .get(&format!("/libraries/{big}/messages?category=nope"))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("category"));
    assert_eq!(
        t.get(&format!("/libraries/{big}/messages?offset=x"))
            .await
            .0,
        400
    );

    let mid = invites[0]["id"].as_str().unwrap();
    let (s, v) = t.get(&format!("/libraries/{big}/messages/{mid}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["category"], "invite");
    assert!(
        v["result"]["messages"]["EN"]
            .as_str()
            .unwrap()
            .contains("SurveyURL")
    );
    assert_eq!(
        t.get(&format!("/libraries/{big}/messages/MS_nope")).await.0,
        404
    );
    assert_eq!(t.get("/libraries/UR_nope/messages").await.0, 404);

    for (path, keys) in [
        ("blocks", ["libraryBlockId", "blockName", "folderName"]),
        (
            "questions",
            ["libraryQuestionId", "questionName", "folderName"],
        ),
        ("surveys", ["librarySurveyId", "surveyName", "folderName"]),
    ] {
        let (items, _) = t.all(&format!("/libraries/{big}/{path}"), &admin).await;
        assert!(!items.is_empty(), "{path}");
        for it in &items {
            for k in keys {
                assert!(it[k].is_string(), "{path}.{k}");
            }
        }
        assert_eq!(t.get(&format!("/libraries/GR_nope/{path}")).await.0, 404);
    }

    // Determinism.
    let t2 = T::new().await;
    let p = format!("/libraries/{big}/messages");
    assert_eq!(t2.all(&p, &t2.admin).await.0, msgs);
}

#[tokio::test]
async fn users_read() {
    let t = T::new().await;
    let admin = t.admin.clone();
    let (users, _) = t.all("/users", &admin).await;
    assert_eq!(users.len(), 5);
    for k in [
        "id",
        "username",
        "firstName",
        "lastName",
        "email",
        "divisionId",
        "accountStatus",
    ] {
        assert!(users[1].get(k).is_some(), "{k}");
    }
    let (f, _) = t.all("/users?username=viewer@simbrand.test", &admin).await;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["id"], t.user_id(2).as_str());

    let id = t.user_id(1);
    let (s, v) = t.get(&format!("/users/{id}")).await;
    assert_eq!(s, 200);
    let u = &v["result"];
    for k in [
        "accountCreationDate",
        "accountExpirationDate",
        "accountStatus",
        "divisionId",
        "email",
        "firstName",
        "language",
        "lastLoginDate",
        "lastName",
        "organizationId",
        "passwordExpirationDate",
        "passwordLastChangedDate",
        "timeZone",
        "unsubscribed",
        "userType",
        "username",
        "responseCounts",
        "permissions",
    ] {
        assert!(u.get(k).is_some(), "{k}");
    }
    for k in ["auditable", "generated", "deleted"] {
        assert!(u["responseCounts"][k].is_i64(), "{k}");
    }
    assert_eq!(u["organizationId"], "simbrand");
    assert!(
        u["passwordLastChangedDate"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // Permission rules: non-admins get 403 except on their own user.
    let viewer = t.token(2);
    assert_eq!(t.get_as("/users", &viewer).await.0, 403);
    assert_eq!(t.get_as(&format!("/users/{id}"), &viewer).await.0, 403);
    assert_eq!(
        t.get_as(&format!("/users/{}", t.user_id(2)), &viewer)
            .await
            .0,
        200
    );
    assert_eq!(t.get_as("/users", &t.token(3)).await.0, 403);
    assert_eq!(t.get_as("/users", "bogus").await.0, 401);
    assert_eq!(t.get("/users/UR_nope").await.0, 404);

    // Groups and divisions.
    let (groups, _) = t.all("/groups", &admin).await;
    assert_eq!(groups.len(), 2);
    assert!(groups[0]["id"].as_str().unwrap().starts_with("GR_"));
    assert_eq!(t.get_as("/groups", &viewer).await.0, 403);
    let div = u["divisionId"].as_str().unwrap();
    let (s, v) = t.get(&format!("/divisions/{div}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["id"], div);
    assert_eq!(t.get("/divisions/DV_nope").await.0, 404);

    // Determinism.
    let t2 = T::new().await;
    assert_eq!(t2.get(&format!("/users/{id}")).await.1["result"], *u);
}

#[tokio::test]
async fn users_write_and_tokens() {
    let t = T::new().await;
    let admin = t.admin.clone();

    // Validation.
    let mut b = new_user("x");
    b.as_object_mut().unwrap().remove("username");
    let (s, v) = t.post("/users", b).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("username"));
    let mut b = new_user("x");
    b["userType"] = json!("admin");
    assert_eq!(t.post("/users", b).await.0, 400);
    let mut b = new_user("x");
    b["password"] = json!("short");
    assert_eq!(t.post("/users", b).await.0, 400);
    let mut b = new_user("x");
    b["firstName"] = json!(5);
    assert_eq!(t.post("/users", b).await.0, 400);
    let (s, _) = t
        .post(
            "/users",
            json!({"username": "viewer@simbrand.test", "firstName": "a",
        "lastName": "b", "userType": "UT_X", "email": "a@b.c", "password": "12345678",
        "language": "EN"}),
        )
        .await;
    assert_eq!(s, 400, "duplicate username");
    let (s, _) = t
        .call(Method::POST, "/users", &t.token(2), Some(new_user("y")))
        .await;
    assert_eq!(s, 403);

    // Create, then the new user appears.
    let (s, v) = t.post("/users", new_user("newbie")).await;
    assert_eq!(s, 200, "{v}");
    let nid = v["result"]["id"].as_str().unwrap().to_string();
    assert!(nid.starts_with("UR_") && nid.len() == 18);
    let (f, _) = t.all("/users?username=newbie@simbrand.test", &admin).await;
    assert_eq!(f.len(), 1);
    let (_, v) = t.get(&format!("/users/{nid}")).await;
    assert_eq!(v["result"]["timeZone"], "Europe/Berlin");
    assert_eq!(v["result"]["responseCounts"]["generated"], 0);

    // No token yet → 400; POST makes one, which works; rotating invalidates it.
    let (s, v) = t.get(&format!("/users/{nid}/apitoken")).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("no API token"));
    let (s, v) = t.post(&format!("/users/{nid}/apitoken"), json!({})).await;
    assert_eq!(s, 200);
    let tok1 = v["result"]["apiToken"].as_str().unwrap().to_string();
    assert_eq!(tok1.len(), 40);
    let (_, v) = t.get(&format!("/users/{nid}/apitoken")).await;
    assert_eq!(v["result"]["apiToken"], tok1.as_str());
    let (s, v) = t.get_as("/whoami", &tok1).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["userId"], nid.as_str());
    let (_, v) = t.post(&format!("/users/{nid}/apitoken"), json!({})).await;
    let tok2 = v["result"]["apiToken"].as_str().unwrap().to_string();
    assert_ne!(tok1, tok2);
    assert_eq!(t.get_as("/whoami", &tok1).await.0, 401);
    assert_eq!(t.get_as("/whoami", &tok2).await.0, 200);

    // Rotating a seeded user's token kills the seeded one.
    let analyst = t.user_id(1);
    let old = t.token(1);
    assert_eq!(t.get_as("/whoami", &old).await.0, 200);
    let (_, v) = t
        .post(&format!("/users/{analyst}/apitoken"), json!({}))
        .await;
    let fresh = v["result"]["apiToken"].as_str().unwrap().to_string();
    assert_eq!(t.get_as("/whoami", &old).await.0, 401);
    assert_eq!(t.get_as("/whoami", &fresh).await.0, 200);
    assert_eq!(
        t.call(
            Method::GET,
            &format!("/users/{analyst}/apitoken"),
            &fresh,
            None
        )
        .await
        .0,
        403,
        "non-admins cannot read tokens"
    );
    // Rotation is deterministic per seed.
    let t2 = T::new().await;
    let (_, v) = t2
        .post(&format!("/users/{analyst}/apitoken"), json!({}))
        .await;
    assert_eq!(v["result"]["apiToken"], fresh.as_str());

    // Update: bad status 400; Disabled blocks the token; Active restores it.
    let (s, _) = t
        .put(&format!("/users/{nid}"), json!({"status": "Frozen"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .put(&format!("/users/{nid}"), json!({"nickname": "x"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .put(
            &format!("/users/{nid}"),
            json!({"status": "Disabled", "lastName": "Gone"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t.get_as("/whoami", &tok2).await.0, 401);
    let (_, v) = t.get(&format!("/users/{nid}")).await;
    assert_eq!(v["result"]["accountStatus"], "disabled");
    assert_eq!(v["result"]["lastName"], "Gone");
    t.put(&format!("/users/{nid}"), json!({"status": "Active"}))
        .await;
    assert_eq!(t.get_as("/whoami", &tok2).await.0, 200);
    assert_eq!(
        t.put("/users/UR_nope", json!({"status": "Active"})).await.0,
        404
    );

    // Delete.
    assert_eq!(
        t.call(
            Method::DELETE,
            &format!("/users/{}", t.user_id(0)),
            &admin,
            None
        )
        .await
        .0,
        400
    );
    assert_eq!(
        t.call(Method::DELETE, &format!("/users/{nid}"), &admin, None)
            .await
            .0,
        200
    );
    assert_eq!(t.get(&format!("/users/{nid}")).await.0, 404);
    assert_eq!(t.get_as("/whoami", &tok2).await.0, 401);
    assert_eq!(
        t.call(Method::DELETE, &format!("/users/{nid}"), &admin, None)
            .await
            .0,
        404
    );
    let (all, _) = t.all("/users", &admin).await;
    assert_eq!(all.len(), 5);
}

#[tokio::test]
async fn users_paging_to_last_page() {
    let t = T::new().await;
    for i in 0..97 {
        let (s, v) = t.post("/users", new_user(&format!("bulk{i:03}"))).await;
        assert_eq!(s, 200, "{v}");
    }
    let admin = t.admin.clone();
    let (users, pages) = t.all("/users", &admin).await;
    assert_eq!((users.len(), pages), (102, 2));
    let ids: HashSet<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 102);
    let (_, v) = t.get("/users").await;
    let next = v["result"]["nextPage"].as_str().unwrap();
    assert!(next.contains("offset=100"), "{next}");
}
