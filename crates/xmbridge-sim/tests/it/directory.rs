//! End-to-end tests of the simulated XM Directory (docs/design/qualtrics-api.md §9.1–9.4) over real
//! HTTP.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Client, Method};
use serde_json::{Value, json};
use xmbridge_sim::qualtrics::auth::AccessToken;
use xmbridge_sim::qualtrics::directory::EmailHistoryEntry;
use xmbridge_sim::{SimConfig, SimHandle};

struct Api {
    h: SimHandle,
    client: Client,
    token: String,
}

async fn start(cfg: SimConfig) -> Api {
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let token = h.sim.cfg.admin_token();
    Api {
        h,
        client: Client::new(),
        token,
    }
}

async fn small() -> Api {
    start(SimConfig {
        contacts: 230,
        ..SimConfig::default()
    })
    .await
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.h.api_url(), path)
    }

    fn user_token(&self, idx: usize) -> String {
        self.h.sim.users.read()[idx].api_token.clone()
    }

    async fn call_as(
        &self,
        token: &str,
        method: Method,
        url: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, url)
            .header("X-API-TOKEN", token);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}) from {url}: {text}"));
        (status, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call_as(&self.token, Method::GET, &self.url(path), None)
            .await
    }

    async fn get_url(&self, url: &str) -> (u16, Value) {
        self.call_as(&self.token, Method::GET, url, None).await
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let b = body.to_string();
        self.call_as(&self.token, method, &self.url(path), Some(&b))
            .await
    }

    async fn send_raw(&self, method: Method, path: &str, body: &str) -> (u16, Value) {
        self.call_as(&self.token, method, &self.url(path), Some(body))
            .await
    }

    async fn ok(&self, path: &str) -> Value {
        let (s, v) = self.get(path).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        assert_eq!(v["meta"]["httpStatus"], "200 - OK");
        v["result"].clone()
    }

    /// Follows `nextPage` to the end; returns every element and the number of pages.
    async fn all_pages(&self, path: &str) -> (Vec<Value>, usize) {
        let mut url = self.url(path);
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            let (s, v) = self.get_url(&url).await;
            assert_eq!(s, 200, "GET {url}: {v}");
            pages += 1;
            out.extend(v["result"]["elements"].as_array().unwrap().iter().cloned());
            match &v["result"]["nextPage"] {
                Value::Null => break,
                Value::String(next) => {
                    assert!(next.starts_with(&self.h.base_url), "{next}");
                    url = next.clone();
                }
                other => panic!("nextPage {other}"),
            }
            assert!(pages < 1000);
        }
        (out, pages)
    }

    async fn default_dir(&self) -> String {
        let r = self.ok("/directories").await;
        r["elements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["isDefault"] == true)
            .unwrap()["directoryId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn other_dir(&self) -> String {
        let r = self.ok("/directories").await;
        r["elements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["isDefault"] == false)
            .unwrap()["directoryId"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn assert_error(status: u16, v: &Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{v}");
    let meta = &v["meta"];
    assert!(
        meta["httpStatus"]
            .as_str()
            .unwrap()
            .starts_with(&want.to_string()),
        "{v}"
    );
    assert!(v.get("result").is_none(), "{v}");
    let msg = meta["error"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains(needle), "'{msg}' lacks '{needle}'");
    assert!(meta["error"]["errorCode"].is_string());
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn directories_list_shape() {
    let api = small().await;
    let r = api.ok("/directories").await;
    let els = r["elements"].as_array().unwrap();
    assert_eq!(els.len(), 2);
    assert!(r["nextPage"].is_null());
    let d = &els[0];
    assert_eq!(
        keys(d),
        [
            "directoryId",
            "name",
            "contactCount",
            "isDefault",
            "deduplicationCriteria"
        ]
    );
    assert!(d["directoryId"].as_str().unwrap().starts_with("POOL_"));
    assert_eq!(d["directoryId"].as_str().unwrap().len(), 20);
    assert_eq!(d["isDefault"], true);
    assert_eq!(d["contactCount"], 230);
    assert_eq!(els[1]["contactCount"], 25);
    assert_eq!(
        keys(&d["deduplicationCriteria"]),
        [
            "email",
            "firstName",
            "lastName",
            "externalDataReference",
            "phone"
        ]
    );
    assert_eq!(
        api.h.sim.directory.default_directory_id(),
        d["directoryId"].as_str().unwrap()
    );
    // pageSize paging on /directories as well
    let (all, pages) = api.all_pages("/directories?pageSize=1").await;
    assert_eq!((all.len(), pages), (2, 2));
}

#[tokio::test]
async fn contacts_paginate_to_the_last_page_in_both_schemes() {
    let api = small().await;
    let d = api.default_dir().await;
    let (all, pages) = api.all_pages(&format!("/directories/{d}/contacts")).await;
    assert_eq!((all.len(), pages), (230, 3));
    assert_eq!(
        keys(&all[0]),
        [
            "contactId",
            "firstName",
            "lastName",
            "email",
            "phone",
            "extRef",
            "language",
            "unsubscribed"
        ]
    );
    let ids: Vec<&str> = all
        .iter()
        .map(|c| c["contactId"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 230);
    assert!(ids.iter().all(|i| i.starts_with("CID_") && i.len() == 19));
    // Realistic names: some unicode, some apostrophes.
    assert!(
        all.iter()
            .any(|c| c["lastName"].as_str().unwrap().contains('\''))
    );
    assert!(
        all.iter()
            .any(|c| !c["firstName"].as_str().unwrap().is_ascii())
    );

    // Offset tokens are base64 offsets.
    let first = api
        .ok(&format!("/directories/{d}/contacts?pageSize=100"))
        .await;
    assert!(
        first["nextPage"]
            .as_str()
            .unwrap()
            .contains("skipToken=MTAw")
    );

    // New scheme: same contacts in the same order, cursor tokens, flag kept in nextPage.
    let (new_all, new_pages) = api
        .all_pages(&format!(
            "/directories/{d}/contacts?pageSize=50&useNewPaginationScheme=true"
        ))
        .await;
    assert_eq!(new_pages, 5);
    assert_eq!(new_all, all);
    let p = api
        .ok(&format!(
            "/directories/{d}/contacts?pageSize=50&useNewPaginationScheme=true"
        ))
        .await;
    let next = p["nextPage"].as_str().unwrap();
    assert!(next.contains("useNewPaginationScheme=true"));

    for bad in [
        "pageSize=0",
        "pageSize=101",
        "pageSize=x",
        "skipToken=%21%21",
        "useNewPaginationScheme=true&skipToken=NQ%3D%3D",
        "useNewPaginationScheme=yes",
    ] {
        let (s, v) = api.get(&format!("/directories/{d}/contacts?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["meta"]["error"]["errorCode"], "QVAL_1");
    }
    let (s, v) = api.get("/directories/POOL_nope/contacts").await;
    assert_error(s, &v, 404, "POOL_nope");
}

#[tokio::test]
async fn contact_create_get_update_delete_round_trip() {
    let api = small().await;
    let d = api.default_dir().await;
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/contacts"),
            json!({"firstName":"Siobhán","lastName":"O'Connor","email":"siobhan@Example.ORG",
                   "phone":"+15555550100","extRef":"crm-x1","language":"FR",
                   "embeddedData":{"tier":"gold","visits":3},"unsubscribed":false}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["result"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("CID_"));

    let c = api.ok(&format!("/directories/{d}/contacts/{id}")).await;
    assert_eq!(
        keys(&c),
        [
            "contactId",
            "creationDate",
            "lastModified",
            "firstName",
            "lastName",
            "email",
            "emailDomain",
            "phone",
            "language",
            "extRef",
            "writeBlanks",
            "embeddedData",
            "transactionData",
            "stats",
            "skipped",
            "directoryUnsubscribed",
            "directoryUnsubscribeDate",
            "mailingListMembership"
        ]
    );
    assert_eq!(c["lastName"], "O'Connor");
    assert_eq!(c["emailDomain"], "example.org");
    assert_eq!(c["embeddedData"], json!({"tier":"gold","visits":"3"}));
    assert!(c["creationDate"].is_i64());
    assert_eq!(c["directoryUnsubscribed"], false);
    assert!(c["directoryUnsubscribeDate"].is_null());

    // Partial update: only the given fields change; embedded data merges.
    let (s, v) = api
        .send(
            Method::PUT,
            &format!("/directories/{d}/contacts/{id}"),
            json!({"lastName":"Ó Conchúir","embeddedData":{"region":"EMEA"},"unsubscribed":true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("result").is_none());
    let c2 = api.ok(&format!("/directories/{d}/contacts/{id}")).await;
    assert_eq!(c2["lastName"], "Ó Conchúir");
    assert_eq!(c2["firstName"], "Siobhán");
    assert_eq!(
        c2["embeddedData"],
        json!({"tier":"gold","visits":"3","region":"EMEA"})
    );
    assert_eq!(c2["directoryUnsubscribed"], true);
    assert!(c2["directoryUnsubscribeDate"].is_i64());
    assert!(c2["lastModified"].as_i64() >= c["lastModified"].as_i64());
    // Blank strings do not wipe a field unless writeBlanks is on.
    api.send(
        Method::PUT,
        &format!("/directories/{d}/contacts/{id}"),
        json!({"phone":""}),
    )
    .await;
    let c3 = api.ok(&format!("/directories/{d}/contacts/{id}")).await;
    assert_eq!(c3["phone"], "+15555550100");
    api.send(
        Method::PUT,
        &format!("/directories/{d}/contacts/{id}"),
        json!({"phone":"","writeBlanks":true}),
    )
    .await;
    let c4 = api.ok(&format!("/directories/{d}/contacts/{id}")).await;
    assert!(c4["phone"].is_null());
    assert_eq!(c4["writeBlanks"], true);

    let dirs = api.ok("/directories").await;
    assert_eq!(dirs["elements"][0]["contactCount"], 231);

    let (s, v) = api
        .call_as(
            &api.token,
            Method::DELETE,
            &api.url(&format!("/directories/{d}/contacts/{id}")),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api.get(&format!("/directories/{d}/contacts/{id}")).await;
    assert_error(s, &v, 404, &id);
    let (s, v) = api
        .call_as(
            &api.token,
            Method::DELETE,
            &api.url(&format!("/directories/{d}/contacts/{id}")),
            None,
        )
        .await;
    assert_error(s, &v, 404, &id);
    let (s, v) = api
        .send(
            Method::PUT,
            &format!("/directories/{d}/contacts/CID_missing"),
            json!({"firstName":"x"}),
        )
        .await;
    assert_error(s, &v, 404, "CID_missing");
}

#[tokio::test]
async fn bad_bodies_are_400_naming_the_field() {
    let api = small().await;
    let d = api.default_dir().await;
    let path = format!("/directories/{d}/contacts");
    let (s, v) = api.send_raw(Method::POST, &path, "{not json").await;
    assert_error(s, &v, 400, "not valid JSON");
    assert_eq!(v["meta"]["error"]["errorCode"], "QVAL_1");
    let (s, v) = api.send_raw(Method::POST, &path, "").await;
    assert_error(s, &v, 400, "empty");
    let (s, v) = api.send(Method::POST, &path, json!([1, 2])).await;
    assert_error(s, &v, 400, "JSON object");
    let (s, v) = api.send(Method::POST, &path, json!({"email": 5})).await;
    assert_error(s, &v, 400, "'email'");
    let (s, v) = api
        .send(Method::POST, &path, json!({"email": "not-an-address"}))
        .await;
    assert_error(s, &v, 400, "'email'");
    let (s, v) = api
        .send(Method::POST, &path, json!({"unsubscribed": "yes"}))
        .await;
    assert_error(s, &v, 400, "'unsubscribed'");
    let (s, v) = api
        .send(Method::POST, &path, json!({"embeddedData": {"a": [1]}}))
        .await;
    assert_error(s, &v, 400, "'embeddedData.a'");
    let (s, v) = api
        .send(Method::POST, &path, json!({"Email": "a@b.co"}))
        .await;
    assert_error(s, &v, 400, "'Email'");
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/mailinglists"),
            json!({"name": 3}),
        )
        .await;
    assert_error(s, &v, 400, "'name'");
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/mailinglists"),
            json!({"ownerId": "UR_1"}),
        )
        .await;
    assert_error(s, &v, 400, "'name'");
}

#[tokio::test]
async fn dedup_on_create_and_mailing_list_add() {
    let api = small().await;
    let d = api.default_dir().await;
    let (contacts, _) = api.all_pages(&format!("/directories/{d}/contacts")).await;
    let existing = &contacts[7];
    let eid = existing["contactId"].as_str().unwrap();
    let email = existing["email"].as_str().unwrap().to_uppercase();

    // Default directory dedups on e-mail (ignoring case).
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/contacts"),
            json!({"email": email, "embeddedData": {"source": "api"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["id"], eid);
    let c = api.ok(&format!("/directories/{d}/contacts/{eid}")).await;
    assert_eq!(c["embeddedData"]["source"], "api");
    assert_eq!(c["firstName"], existing["firstName"]);

    // Create a list, add the existing contact by e-mail: same contact, new lookup id.
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/mailinglists"),
            json!({"name": "Dedup list"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ml = v["result"]["id"].as_str().unwrap().to_string();
    let add = |body: Value| {
        let api = &api;
        let path = format!("/directories/{d}/mailinglists/{ml}/contacts");
        async move { api.send(Method::POST, &path, body).await }
    };
    let (s, v) = add(json!({"email": email, "firstName": "Changed"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(keys(&v["result"]), ["id", "contactLookupId"]);
    assert_eq!(v["result"]["id"], eid);
    let lookup = v["result"]["contactLookupId"].as_str().unwrap().to_string();
    assert!(lookup.starts_with("CGC_"));
    // Adding again keeps the membership.
    let (_, v2) = add(json!({"email": email})).await;
    assert_eq!(v2["result"]["contactLookupId"], lookup.as_str());
    // A new e-mail creates a directory contact too.
    let (_, v3) = add(json!({"email": "brand.new@example.com", "lastName": "D'Arcy"})).await;
    let new_id = v3["result"]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, eid);
    let nc = api.ok(&format!("/directories/{d}/contacts/{new_id}")).await;
    assert_eq!(nc["lastName"], "D'Arcy");
    assert_eq!(
        nc["mailingListMembership"][&ml]["contactLookupId"],
        v3["result"]["contactLookupId"]
    );
    let l = api.ok(&format!("/directories/{d}/mailinglists/{ml}")).await;
    assert_eq!(l["contactCount"], 2);
    let dirs = api.ok("/directories").await;
    assert_eq!(dirs["elements"][0]["contactCount"], 231);

    // The partner directory dedups on first name + last name + extRef.
    let o = api.other_dir().await;
    let (pc, _) = api.all_pages(&format!("/directories/{o}/contacts")).await;
    let p = pc.iter().find(|c| c["extRef"].is_string()).unwrap();
    let (_, v) = api
        .send(
            Method::POST,
            &format!("/directories/{o}/contacts"),
            json!({"firstName": p["firstName"], "lastName": p["lastName"], "extRef": p["extRef"],
                   "email": "other@example.com"}),
        )
        .await;
    assert_eq!(v["result"]["id"], p["contactId"]);
    let (_, v) = api
        .send(
            Method::POST,
            &format!("/directories/{o}/contacts"),
            json!({"firstName": p["firstName"], "lastName": "Different", "extRef": p["extRef"]}),
        )
        .await;
    assert_ne!(v["result"]["id"], p["contactId"]);
}

#[tokio::test]
async fn search_filters_paging_and_projection() {
    let api = small().await;
    let d = api.default_dir().await;
    let (contacts, _) = api.all_pages(&format!("/directories/{d}/contacts")).await;
    let target = &contacts[3];
    let path = format!("/directories/{d}/contacts/search");

    let (s, v) = api
        .send(
            Method::POST,
            &format!("{path}?includeEmbedded=true"),
            json!({"filter":{"filterType":"email","comparison":"eq","value": target["email"]}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let els = v["result"]["elements"].as_array().unwrap();
    assert_eq!(els.len(), 1);
    assert!(v["result"]["nextPage"].is_null());
    let hit = &els[0];
    assert_eq!(
        keys(hit),
        [
            "id",
            "creationDate",
            "lastModified",
            "firstName",
            "lastName",
            "email",
            "phoneNumber",
            "externalDataReference",
            "language",
            "unsubscribed",
            "unsubscribeDate",
            "stats",
            "embeddedData",
            "segmentMembership"
        ]
    );
    assert_eq!(hit["id"], target["contactId"]);
    assert_eq!(hit["externalDataReference"], target["extRef"]);
    assert!(hit["embeddedData"]["tier"].is_string());

    // Without includeEmbedded the embedded data is left out.
    let (_, v) = api
        .send(
            Method::POST,
            &path,
            json!({"filter":{"filterType":"email","value": target["email"]}}),
        )
        .await;
    assert!(v["result"]["elements"][0].get("embeddedData").is_none());

    // Conjunctions: and / or, nested.
    let full = api
        .ok(&format!(
            "/directories/{d}/contacts/{}",
            target["contactId"].as_str().unwrap()
        ))
        .await;
    let tier = full["embeddedData"]["tier"].as_str().unwrap();
    let (_, v) = api
        .send(
            Method::POST,
            &path,
            json!({"filter":{"conjunction":"and","filters":[
                {"filterType":"embeddedData","key":"tier","comparison":"eq","value": tier},
                {"filterType":"lastName","comparison":"eq","value": target["lastName"]},
                {"filterType":"firstName","comparison":"eq","value": target["firstName"]}]}}),
        )
        .await;
    let ids: Vec<&Value> = v["result"]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert!(ids.contains(&&target["contactId"]));
    let (_, v) = api
        .send(
            Method::POST,
            &path,
            json!({"filter":{"conjunction":"or","filters":[
                {"filterType":"email","value": contacts[0]["email"]},
                {"filterType":"email","value": contacts[1]["email"]},
                {"conjunction":"and","filters":[{"filterType":"contactId","value": contacts[2]["contactId"]}]}]}}),
        )
        .await;
    assert_eq!(v["result"]["elements"].as_array().unwrap().len(), 3);

    // lastModified filter (incremental sync) with an ISO date.
    let (_, v) = api
        .send(
            Method::POST,
            &format!("{path}?pageSize=100"),
            json!({"filter":{"filterType":"lastModified","comparison":"gt","value":"2100-01-01T00:00:00Z"}}),
        )
        .await;
    assert_eq!(v["result"]["elements"].as_array().unwrap().len(), 0);

    // Paging a search to its last page: POST the same body to nextPage.
    let body = json!({"filter":{"filterType":"email","comparison":"contains","value":"@"}});
    let mut url = api.url(&format!("{path}?pageSize=40"));
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let (s, v) = api
            .call_as(&api.token, Method::POST, &url, Some(&body.to_string()))
            .await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        seen += v["result"]["elements"].as_array().unwrap().len();
        match v["result"]["nextPage"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!((seen, pages), (230, 6));

    // Empty body: everything.
    let (s, v) = api.send_raw(Method::POST, &path, "").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["elements"].as_array().unwrap().len(), 100);

    // Filter errors name the field.
    let (s, v) = api
        .send(
            Method::POST,
            &path,
            json!({"filter":{"conjunction":"and","filters":[{"filterType":"shoeSize","value":"9"}]}}),
        )
        .await;
    assert_error(s, &v, 400, "filter.filters[0].filterType");
    let (s, v) = api
        .send(
            Method::POST,
            &path,
            json!({"filter":{"filterType":"email","comparison":"like","value":"x"}}),
        )
        .await;
    assert_error(s, &v, 400, "filter.comparison");
    let (s, v) = api
        .send(
            Method::POST,
            &path,
            json!({"filter":{"filterType":"email","value":{"a":1}}}),
        )
        .await;
    assert_error(s, &v, 400, "filter.value");

    // Past the 10,000 cap → 400, whatever the number of contacts.
    let token = STANDARD.encode("10000");
    let (s, v) = api
        .send(
            Method::POST,
            &format!("{path}?skipToken={token}"),
            json!({}),
        )
        .await;
    assert_error(s, &v, 400, "10000");
}

#[tokio::test]
async fn search_stops_at_ten_thousand_contacts() {
    let api = start(SimConfig {
        contacts: 10_050,
        ..SimConfig::default()
    })
    .await;
    let d = api.default_dir().await;
    let token = STANDARD.encode("9900");
    let url = api.url(&format!(
        "/directories/{d}/contacts/search?pageSize=100&skipToken={token}"
    ));
    let (s, v) = api
        .call_as(&api.token, Method::POST, &url, Some("{}"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["elements"].as_array().unwrap().len(), 100);
    let next = v["result"]["nextPage"].as_str().unwrap().to_string();
    let (s, v) = api
        .call_as(&api.token, Method::POST, &next, Some("{}"))
        .await;
    assert_error(s, &v, 400, "contact export");
    // The plain contacts list has no such cap.
    let last = STANDARD.encode("10000");
    let r = api
        .ok(&format!("/directories/{d}/contacts?skipToken={last}"))
        .await;
    assert_eq!(r["elements"].as_array().unwrap().len(), 50);
    assert!(r["nextPage"].is_null());
}

#[tokio::test]
async fn contact_history_and_transactions() {
    let api = small().await;
    let d = api.default_dir().await;
    let (contacts, _) = api.all_pages(&format!("/directories/{d}/contacts")).await;
    let cid = contacts[0]["contactId"].as_str().unwrap().to_string();
    let hist = format!("/directories/{d}/contacts/{cid}/history");
    let (s, v) = api.get(&hist).await;
    assert_error(s, &v, 400, "'type'");
    let (s, v) = api.get(&format!("{hist}?type=sms")).await;
    assert_error(s, &v, 400, "'type'");
    let r = api.ok(&format!("{hist}?type=email")).await;
    assert_eq!(r["elements"], json!([]));
    let r = api.ok(&format!("{hist}?type=response")).await;
    assert_eq!(r["elements"], json!([]));

    api.h.sim.directory.record_email_history(
        &d,
        &cid,
        EmailHistoryEntry {
            distribution_id: "EMD_abcdefghijklmno".into(),
            survey_id: Some("SV_abcdefghijklmno".into()),
            mailing_list_id: None,
            email_type: "Invite".into(),
            status: "Sent".into(),
            date_ms: 1_790_000_000_000,
        },
    );
    let r = api.ok(&format!("{hist}?type=email")).await;
    assert_eq!(r["elements"][0]["distributionId"], "EMD_abcdefghijklmno");
    assert_eq!(r["elements"][0]["contactId"], cid.as_str());
    let full = api.ok(&format!("/directories/{d}/contacts/{cid}")).await;
    assert_eq!(full["stats"]["sent"], 1);

    let (s, v) = api
        .get(&format!(
            "/directories/{d}/contacts/CID_nobody/history?type=email"
        ))
        .await;
    assert_error(s, &v, 404, "CID_nobody");

    // Find a contact with seeded transactions via the batch listing.
    let bt = api
        .ok(&format!("/directories/{d}/transactionbatches"))
        .await;
    let b = bt["elements"][0]["batchId"].as_str().unwrap();
    let txs = api
        .ok(&format!(
            "/directories/{d}/transactionbatches/{b}/transactions"
        ))
        .await;
    let tx = &txs["elements"][0];
    let owner = tx["contactId"].as_str().unwrap();
    let (mine, _) = api
        .all_pages(&format!("/directories/{d}/contacts/{owner}/transactions"))
        .await;
    assert!(
        mine.iter()
            .any(|t| t["transactionId"] == tx["transactionId"])
    );
    assert!(mine.iter().all(|t| t["contactId"] == owner));
    assert_eq!(
        keys(&mine[0]),
        [
            "transactionId",
            "contactId",
            "mailingListId",
            "transactionDate",
            "data"
        ]
    );
}

#[tokio::test]
async fn mailing_lists_crud_and_members() {
    let api = small().await;
    let d = api.default_dir().await;
    let r = api.ok(&format!("/directories/{d}/mailinglists")).await;
    let lists = r["elements"].as_array().unwrap();
    assert_eq!(lists.len(), 3);
    assert!(lists[0].get("contactCount").is_none());
    let r = api
        .ok(&format!("/directories/{d}/mailinglists?includeCount=true"))
        .await;
    let l0 = &r["elements"][0];
    for k in [
        "mailingListId",
        "name",
        "ownerId",
        "contactCount",
        "creationDate",
        "lastModifiedDate",
    ] {
        assert!(l0.get(k).is_some(), "{k} missing in {l0}");
    }
    assert!(l0["creationDate"].is_i64());
    let ml0 = l0["mailingListId"].as_str().unwrap().to_string();
    assert!(ml0.starts_with("CG_"));
    let count = l0["contactCount"].as_u64().unwrap() as usize;
    assert!(count > 50);
    let o = api.other_dir().await;
    let r = api.ok(&format!("/directories/{o}/mailinglists")).await;
    assert_eq!(r["elements"].as_array().unwrap().len(), 1);

    // Members: paging to the last page, both schemes.
    let mpath = format!("/directories/{d}/mailinglists/{ml0}/contacts");
    let (members, pages) = api
        .all_pages(&format!("{mpath}?pageSize=30&includeEmbedded=true"))
        .await;
    assert_eq!(members.len(), count);
    assert_eq!(pages, count.div_ceil(30));
    assert_eq!(
        keys(&members[0]),
        [
            "contactId",
            "contactLookupId",
            "firstName",
            "lastName",
            "email",
            "phone",
            "extRef",
            "language",
            "unsubscribed",
            "mailingListUnsubscribed",
            "embeddedData",
            "responseHistory",
            "emailHistory"
        ]
    );
    let (members2, _) = api
        .all_pages(&format!("{mpath}?pageSize=30&useNewPaginationScheme=true"))
        .await;
    assert_eq!(members2.len(), count);
    assert!(members2[0].get("embeddedData").is_none());
    assert!(
        members
            .iter()
            .all(|m| m["contactLookupId"].as_str().unwrap().starts_with("CGC_"))
    );
    // The distributions interface sees the same members.
    let via_iface = api.h.sim.directory.mailing_list_members(&ml0);
    assert_eq!(via_iface.len(), count);
    assert_eq!(
        via_iface[0].contact_lookup_id,
        members[0]["contactLookupId"]
    );

    // Member get / update (list-level unsubscribe) / delete.
    let m = &members[0];
    let cid = m["contactId"].as_str().unwrap().to_string();
    let got = api.ok(&format!("{mpath}/{cid}")).await;
    assert_eq!(got["contactLookupId"], m["contactLookupId"]);
    let (s, v) = api
        .send(
            Method::PUT,
            &format!("{mpath}/{cid}"),
            json!({"unsubscribed": true, "language": "DE"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let got = api.ok(&format!("{mpath}/{cid}")).await;
    assert_eq!(got["mailingListUnsubscribed"], true);
    assert_eq!(got["language"], "DE");
    let full = api.ok(&format!("/directories/{d}/contacts/{cid}")).await;
    let mem = &full["mailingListMembership"][&ml0];
    assert_eq!(mem["unsubscribed"], true);
    assert!(mem["unsubscribeDate"].is_i64());
    assert_eq!(mem["contactLookupId"], m["contactLookupId"]);
    assert!(mem["name"].is_string() && mem["ownerId"].is_string());
    assert_eq!(full["directoryUnsubscribed"], m["unsubscribed"]);
    let (s, _) = api
        .call_as(
            &api.token,
            Method::DELETE,
            &api.url(&format!("{mpath}/{cid}")),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api.get(&format!("{mpath}/{cid}")).await;
    assert_error(s, &v, 404, &cid);
    // The directory contact stays.
    api.ok(&format!("/directories/{d}/contacts/{cid}")).await;

    // List create → get → update → delete.
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/mailinglists"),
            json!({"name":"Q1 panel – Zürich","ownerId":"UR_Y","prioritizeListMetadata":false}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ml = v["result"]["id"].as_str().unwrap().to_string();
    assert!(ml.starts_with("CG_"));
    let l = api.ok(&format!("/directories/{d}/mailinglists/{ml}")).await;
    assert_eq!(l["name"], "Q1 panel – Zürich");
    assert_eq!(l["ownerId"], "UR_Y");
    assert_eq!(l["contactCount"], 0);
    let (s, _) = api
        .send(
            Method::PUT,
            &format!("/directories/{d}/mailinglists/{ml}"),
            json!({"name":"Renamed"}),
        )
        .await;
    assert_eq!(s, 200);
    let l = api.ok(&format!("/directories/{d}/mailinglists/{ml}")).await;
    assert_eq!(
        (l["name"].as_str(), l["ownerId"].as_str()),
        (Some("Renamed"), Some("UR_Y"))
    );
    assert_eq!(api.h.sim.directory.mailing_lists().len(), 5);
    let (s, _) = api
        .call_as(
            &api.token,
            Method::DELETE,
            &api.url(&format!("/directories/{d}/mailinglists/{ml}")),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .get(&format!("/directories/{d}/mailinglists/{ml}"))
        .await;
    assert_error(s, &v, 404, &ml);
    let (s, v) = api
        .get(&format!("/directories/{d}/mailinglists/{ml}/contacts"))
        .await;
    assert_error(s, &v, 404, &ml);
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/mailinglists/{ml}/contacts"),
            json!({"email":"a@b.co"}),
        )
        .await;
    assert_error(s, &v, 404, &ml);
}

#[tokio::test]
async fn transactions_create_and_get() {
    let api = small().await;
    let d = api.default_dir().await;
    let (contacts, _) = api.all_pages(&format!("/directories/{d}/contacts")).await;
    let cid = contacts[5]["contactId"].as_str().unwrap();
    let lists = api.ok(&format!("/directories/{d}/mailinglists")).await;
    let ml = lists["elements"][0]["mailingListId"].as_str().unwrap();
    let body = json!({
        "tx1": {"contactId": cid, "mailingListId": ml, "transactionDate": "2025-01-05 14:30:00",
                "data": {"orderId": "A-9", "amount": "546", "store": "Lehi"}},
        "tx2": {"contactId": cid, "data": {"qty": 2}},
        "bad1": {"contactId": "CID_unknown000000"},
        "bad2": {"contactId": cid, "transactionDate": "05/01/2025"},
        "bad3": {"contactId": cid, "mailingListId": "CG_nope"},
        "bad4": "not an object",
        "bad5": {"mailingListId": ml},
    });
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactions"),
            body,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let created = v["result"]["createdTransactions"].as_object().unwrap();
    let unprocessed = v["result"]["unprocessedTransactions"].as_object().unwrap();
    assert_eq!(created.keys().collect::<Vec<_>>(), ["tx1", "tx2"]);
    assert_eq!(unprocessed.len(), 5);
    assert_eq!(unprocessed["bad1"]["error"], "CONTACT_NOT_FOUND");
    assert!(
        unprocessed["bad1"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("CID_unknown000000")
    );
    assert_eq!(unprocessed["bad2"]["error"], "INVALID_TRANSACTION_DATE");
    assert_eq!(unprocessed["bad3"]["error"], "MAILING_LIST_NOT_FOUND");
    assert_eq!(unprocessed["bad4"]["error"], "INVALID_TRANSACTION");
    assert_eq!(unprocessed["bad5"]["error"], "MISSING_CONTACT_ID");
    let t1 = created["tx1"]["id"].as_str().unwrap();
    assert!(t1.starts_with("CTR_"));

    let t = api.ok(&format!("/directories/{d}/transactions/{t1}")).await;
    assert_eq!(
        t,
        json!({"transactionId": t1, "contactId": cid, "mailingListId": ml,
               "transactionDate": "2025-01-05 14:30:00",
               "data": {"orderId": "A-9", "amount": "546", "store": "Lehi"}})
    );
    let t2 = created["tx2"]["id"].as_str().unwrap();
    let t = api.ok(&format!("/directories/{d}/transactions/{t2}")).await;
    assert_eq!(t["data"], json!({"qty": "2"}));
    assert!(t["mailingListId"].is_null());
    assert_eq!(t["transactionDate"].as_str().unwrap().len(), 19);

    let (mine, _) = api
        .all_pages(&format!("/directories/{d}/contacts/{cid}/transactions"))
        .await;
    assert!(mine.iter().any(|x| x["transactionId"] == t1));

    let (s, v) = api
        .get(&format!("/directories/{d}/transactions/CTR_missing"))
        .await;
    assert_error(s, &v, 404, "CTR_missing");
    let (s, v) = api
        .send_raw(Method::POST, &format!("/directories/{d}/transactions"), "[")
        .await;
    assert_error(s, &v, 400, "JSON");
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactions"),
            json!({}),
        )
        .await;
    assert_error(s, &v, 400, "at least one");
    let (s, v) = api
        .send(
            Method::POST,
            "/directories/POOL_zzz/transactions",
            json!({"a": {"contactId": cid}}),
        )
        .await;
    assert_error(s, &v, 404, "POOL_zzz");
}

#[tokio::test]
async fn transaction_batches_round_trip() {
    let api = small().await;
    let d = api.default_dir().await;
    let (batches, pages) = api
        .all_pages(&format!("/directories/{d}/transactionbatches?pageSize=2"))
        .await;
    assert_eq!((batches.len(), pages), (3, 2));
    assert_eq!(keys(&batches[0]), ["batchId", "creationDate"]);
    assert!(batches[0]["batchId"].as_str().unwrap().starts_with("BT_"));
    assert!(batches[0]["creationDate"].as_str().unwrap().ends_with('Z'));
    let b0 = batches[0]["batchId"].as_str().unwrap();
    let (txs, _) = api
        .all_pages(&format!(
            "/directories/{d}/transactionbatches/{b0}/transactions?pageSize=5"
        ))
        .await;
    assert!(!txs.is_empty());
    assert!(txs[0]["dateAddedToBatch"].as_str().unwrap().ends_with('Z'));
    assert!(
        txs[0]["transactionId"]
            .as_str()
            .unwrap()
            .starts_with("CTR_")
    );

    // Create a batch with two transactions, then add a third.
    let ids: Vec<&Value> = txs.iter().map(|t| &t["transactionId"]).take(3).collect();
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactionbatches"),
            json!({"transactionIds": [ids[0], ids[1]], "creationDate": "2025-01-05T14:30:00Z"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let nb = v["result"]["id"].as_str().unwrap().to_string();
    assert!(nb.starts_with("BT_"));
    let b = api
        .ok(&format!("/directories/{d}/transactionbatches/{nb}"))
        .await;
    assert_eq!(
        b,
        json!({"batchId": nb, "creationDate": "2025-01-05T14:30:00Z"})
    );
    let more: Vec<&Value> = ids.iter().skip(1).copied().collect();
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactionbatches/{nb}/transactions"),
            json!({"transactionIds": more}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (inb, _) = api
        .all_pages(&format!(
            "/directories/{d}/transactionbatches/{nb}/transactions"
        ))
        .await;
    let got: Vec<&Value> = inb.iter().map(|t| &t["transactionId"]).collect();
    assert_eq!(got, ids);

    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactionbatches/{nb}/transactions"),
            json!({"transactionIds": ["CTR_unknown"]}),
        )
        .await;
    assert_error(s, &v, 400, "transactionIds[0]");
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactionbatches"),
            json!({"creationDate": "yesterday"}),
        )
        .await;
    assert_error(s, &v, 400, "'creationDate'");
    let (s, v) = api
        .send(
            Method::POST,
            &format!("/directories/{d}/transactionbatches"),
            json!({"transactionIds": "CTR_1"}),
        )
        .await;
    assert_error(s, &v, 400, "'transactionIds'");
    let (s, v) = api
        .get(&format!("/directories/{d}/transactionbatches/BT_missing"))
        .await;
    assert_error(s, &v, 404, "BT_missing");
}

#[tokio::test]
async fn samples_and_frequency_rules() {
    let api = small().await;
    let d = api.default_dir().await;
    let (samples, _) = api.all_pages(&format!("/directories/{d}/samples")).await;
    assert_eq!(samples.len(), 2);
    for k in [
        "sampleId",
        "name",
        "description",
        "category",
        "creatorId",
        "ownerId",
        "parentGroupId",
        "frozen",
        "hidden",
        "creationLogic",
    ] {
        assert!(samples[0].get(k).is_some(), "{k}");
    }
    let sid = samples[1]["sampleId"].as_str().unwrap();
    let s1 = api.ok(&format!("/directories/{d}/samples/{sid}")).await;
    assert_eq!(s1, samples[1]);
    let (s, v) = api.get(&format!("/directories/{d}/samples/SMP_nope")).await;
    assert_error(s, &v, 404, "SMP_nope");

    let (rules, _) = api
        .all_pages(&format!("/directories/{d}/frequencyrules"))
        .await;
    assert_eq!(rules.len(), 2);
    for k in [
        "ruleId",
        "alwaysSend",
        "daysBetween",
        "emailType",
        "numMessages",
        "period",
        "targetType",
        "targets",
    ] {
        assert!(rules[0].get(k).is_some(), "{k}");
    }
    let rid = rules[0]["ruleId"].as_str().unwrap();
    let r = api
        .ok(&format!("/directories/{d}/frequencyrules/{rid}"))
        .await;
    assert!(!r["targets"].as_array().unwrap().is_empty());
    assert!(
        r["targets"][0]["targetId"]
            .as_str()
            .unwrap()
            .starts_with("CG_")
    );
    let (s, v) = api
        .get(&format!("/directories/{d}/frequencyrules/FR_nope"))
        .await;
    assert_error(s, &v, 404, "FR_nope");
    // The partner directory has none.
    let o = api.other_dir().await;
    assert_eq!(
        api.ok(&format!("/directories/{o}/samples")).await["elements"],
        json!([])
    );
}

#[tokio::test]
async fn permissions_and_scopes() {
    let api = small().await;
    let d = api.default_dir().await;
    let viewer = api.user_token(2);
    let noapi = api.user_token(3);
    let batch_paths = [
        format!("/directories/{d}/transactionbatches"),
        format!("/directories/{d}/transactionbatches/BT_x"),
        format!("/directories/{d}/transactionbatches/BT_x/transactions"),
    ];
    for p in &batch_paths {
        let (s, v) = api.call_as(&viewer, Method::GET, &api.url(p), None).await;
        assert_error(s, &v, 403, "Manage Directories");
    }
    for p in [&batch_paths[0], &batch_paths[2]] {
        let (s, v) = api
            .call_as(
                &viewer,
                Method::POST,
                &api.url(p),
                Some(r#"{"transactionIds":[]}"#),
            )
            .await;
        assert_error(s, &v, 403, "Manage Directories");
    }
    // The viewer reads everything else.
    for p in [
        "/directories".to_string(),
        format!("/directories/{d}/contacts"),
        format!("/directories/{d}/mailinglists"),
        format!("/directories/{d}/samples"),
        format!("/directories/{d}/frequencyrules"),
    ] {
        let (s, v) = api.call_as(&viewer, Method::GET, &api.url(&p), None).await;
        assert_eq!(s, 200, "{p}: {v}");
    }
    // No API access: 403 everywhere.
    for p in [
        "/directories".to_string(),
        format!("/directories/{d}/contacts"),
        format!("/directories/{d}/mailinglists"),
        batch_paths[0].clone(),
    ] {
        let (s, v) = api.call_as(&noapi, Method::GET, &api.url(&p), None).await;
        assert_eq!(s, 403, "{p}: {v}");
    }
    let (s, _) = api
        .call_as(
            &noapi,
            Method::POST,
            &api.url(&format!("/directories/{d}/contacts/search")),
            Some("{}"),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = api
        .call_as("wrong-token", Method::GET, &api.url("/directories"), None)
        .await;
    assert_eq!(s, 401, "{v}");

    // OAuth scopes: a read-only directory token cannot read contacts or write lists.
    let bearer = "dir-scope-test-token";
    api.h.sim.tokens.lock().access.insert(
        bearer.into(),
        AccessToken {
            user_idx: 0,
            client_id: "test".into(),
            scopes: vec!["read:directories".into(), "read:mailing_lists".into()],
            dc: api.h.sim.home_dc(),
            expires_ms: i64::MAX,
        },
    );
    let bearer_get = |p: String| {
        let api = &api;
        async move {
            let r = api
                .client
                .get(api.url(&p))
                .header("Authorization", format!("Bearer {bearer}"))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, _) = bearer_get("/directories".into()).await;
    assert_eq!(s, 200);
    let (s, _) = bearer_get(format!("/directories/{d}/mailinglists")).await;
    assert_eq!(s, 200);
    let (s, v) = bearer_get(format!("/directories/{d}/contacts")).await;
    assert_error(s, &v, 403, "read:directory_contacts");
    let (s, v) = bearer_get(format!("/directories/{d}/samples")).await;
    assert_error(s, &v, 403, "read:samples");
    let r = api
        .client
        .post(api.url(&format!("/directories/{d}/mailinglists")))
        .header("Authorization", format!("Bearer {bearer}"))
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let v: Value = r.json().await.unwrap();
    assert_error(403, &v, 403, "write:mailing_lists");
}

#[tokio::test]
async fn same_seed_gives_identical_pages() {
    let a = small().await;
    let b = small().await;
    let da = a.default_dir().await;
    let db = b.default_dir().await;
    assert_eq!(da, db);
    for q in [
        "pageSize=100",
        "pageSize=100&skipToken=MTAw",
        "pageSize=40&useNewPaginationScheme=true",
    ] {
        let ra = a.ok(&format!("/directories/{da}/contacts?{q}")).await;
        let rb = b.ok(&format!("/directories/{db}/contacts?{q}")).await;
        assert_eq!(
            serde_json::to_vec(&ra["elements"]).unwrap(),
            serde_json::to_vec(&rb["elements"]).unwrap()
        );
        let strip = |v: &Value, base: &str| v.as_str().map(|s| s.replace(base, ""));
        assert_eq!(
            strip(&ra["nextPage"], &a.h.base_url),
            strip(&rb["nextPage"], &b.h.base_url)
        );
    }
    let cid = a
        .ok(&format!("/directories/{da}/contacts?pageSize=1"))
        .await["elements"][0]["contactId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        a.ok(&format!("/directories/{da}/contacts/{cid}")).await,
        b.ok(&format!("/directories/{db}/contacts/{cid}")).await
    );
    // A different seed gives a different directory.
    let c = start(SimConfig {
        seed: 8,
        contacts: 230,
        ..SimConfig::default()
    })
    .await;
    assert_ne!(c.default_dir().await, da);
}

#[tokio::test]
async fn trailing_slash_is_accepted() {
    let api = small().await;
    let d = api.default_dir().await;
    let r = api.ok(&format!("/directories/{d}/mailinglists/")).await;
    assert_eq!(r["elements"].as_array().unwrap().len(), 3);
}
