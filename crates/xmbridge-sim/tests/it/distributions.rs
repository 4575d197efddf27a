//! End-to-end tests of `/distributions` (e-mail, generated links, SMS) over real HTTP.
//! Mailing-list members come from the XM Directory; where the directory has none, the
//! member-dependent checks are skipped (they run once the directory is seeded).

use reqwest::Method;
use serde_json::{Value, json};
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
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, &self.admin, Some(body)).await
    }
    fn survey(&self, i: usize) -> String {
        self.h.sim.surveys[i].id.clone()
    }
    /// Follows `nextPage` to the end; returns all elements and the number of pages.
    async fn all(&self, path: &str) -> (Vec<Value>, usize) {
        let mut url = path.to_string();
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            let (s, v) = self.get(&url).await;
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

fn email_body(sid: &str, recipients: Value, send: &str) -> Value {
    json!({
        "header": {"fromEmail": "noreply@qemailserver.com", "fromName": "Acme",
                   "replyToEmail": "cx@acme.test", "subject": "How did we do?"},
        "message": {"messageText": "Please answer ${l://SurveyURL}"},
        "recipients": recipients,
        "surveyLink": {"surveyId": sid, "expirationDate": "2027-03-01T00:00:00Z", "type": "Individual"},
        "embeddedData": {"campaign": "spring"},
        "sendDate": send,
    })
}

#[tokio::test]
async fn list_get_and_filters() {
    let t = T::new().await;
    let sid = t.survey(0);

    let (s, v) = t.get("/distributions").await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("surveyId"), "{v}");
    let (s, _) = t.get("/distributions?surveyId=SV_doesnotexist00").await;
    assert_eq!(s, 404);
    let (s, v) = t.get(&format!("/distributions?surveyid={sid}")).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("surveyid"));

    let (items, _) = t.all(&format!("/distributions?surveyId={sid}")).await;
    let types: Vec<&str> = items
        .iter()
        .map(|d| d["requestType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Invite", "Reminder", "ThankYou", "GeneratedInvite"]);
    let invite = &items[0];
    assert!(invite["id"].as_str().unwrap().starts_with("EMD_"));
    assert_eq!(items[1]["parentDistributionId"], invite["id"]);
    assert_eq!(items[2]["parentDistributionId"], invite["id"]);
    // Every column of the `distribution` table is in the answer.
    for k in [
        "id",
        "parentDistributionId",
        "ownerId",
        "organizationId",
        "requestStatus",
        "requestType",
        "sendDate",
        "createdDate",
        "modifiedDate",
        "headers",
        "recipients",
        "message",
        "surveyLink",
        "stats",
    ] {
        assert!(invite.get(k).is_some(), "missing {k}");
    }
    for k in ["fromEmail", "fromName", "replyToEmail", "subject"] {
        assert!(invite["headers"][k].is_string(), "headers.{k}");
    }
    for k in ["mailingListId", "contactId", "libraryId", "sampleId"] {
        assert!(invite["recipients"].get(k).is_some(), "recipients.{k}");
    }
    for k in ["libraryId", "messageId", "messageText"] {
        assert!(invite["message"].get(k).is_some(), "message.{k}");
    }
    assert!(
        invite["message"]["messageId"]
            .as_str()
            .unwrap()
            .starts_with("MS_")
    );
    assert_eq!(invite["surveyLink"]["surveyId"], sid.as_str());
    assert_eq!(invite["surveyLink"]["linkType"], "Individual");
    for k in [
        "sent",
        "failed",
        "started",
        "bounced",
        "opened",
        "skipped",
        "finished",
        "complaints",
        "blocked",
    ] {
        assert!(invite["stats"][k].is_u64(), "stats.{k}");
    }
    assert_eq!(invite["organizationId"], "simbrand");
    assert_eq!(invite["requestStatus"], "Done");

    // Paging: one per page to the last page.
    let (paged, pages) = t
        .all(&format!("/distributions?surveyId={sid}&pageSize=1"))
        .await;
    assert_eq!(pages, 4);
    assert_eq!(paged, items);
    let (s, _) = t
        .get(&format!("/distributions?surveyId={sid}&pageSize=0"))
        .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .get(&format!("/distributions?surveyId={sid}&skipToken=!!"))
        .await;
    assert_eq!(s, 400);

    // Filters.
    let (r, _) = t
        .all(&format!(
            "/distributions?surveyId={sid}&distributionRequestType=Reminder"
        ))
        .await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["requestType"], "Reminder");
    let (s, v) = t
        .get(&format!(
            "/distributions?surveyId={sid}&distributionRequestType=Bogus"
        ))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("distributionRequestType"));
    let (s, _) = t
        .get(&format!(
            "/distributions?surveyId={sid}&sendStartDate=yesterday"
        ))
        .await;
    assert_eq!(s, 400);
    let (r, _) = t
        .all(&format!(
            "/distributions?surveyId={sid}&sendEndDate=2000-01-01T00:00:00Z"
        ))
        .await;
    assert!(r.is_empty());
    let send = invite["sendDate"].as_str().unwrap();
    let (r, _) = t
        .all(&format!(
            "/distributions?surveyId={sid}&sendStartDate={send}&sendEndDate={send}"
        ))
        .await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["id"], invite["id"]);
    let (r, _) = t
        .all(&format!(
            "/distributions?surveyId={sid}&mailingListId=CG_none"
        ))
        .await;
    assert!(r.is_empty());

    // One distribution.
    let id = invite["id"].as_str().unwrap();
    let (s, v) = t.get(&format!("/distributions/{id}?surveyId={sid}")).await;
    assert_eq!(s, 200);
    assert_eq!(&v["result"], invite);
    let (s, v) = t.get(&format!("/distributions/{id}")).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("surveyId"));
    let (s, _) = t
        .get(&format!("/distributions/{id}?surveyId={}", t.survey(1)))
        .await;
    assert_eq!(s, 404);
    let (s, _) = t
        .get(&format!("/distributions/EMD_nope?surveyId={sid}"))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn history_and_links() {
    let t = T::new().await;
    let sid = t.survey(0);
    let (items, _) = t.all(&format!("/distributions?surveyId={sid}")).await;
    let invite = items[0]["id"].as_str().unwrap().to_string();
    let links_id = items[3]["id"].as_str().unwrap().to_string();

    let (rows, _) = t.all(&format!("/distributions/{invite}/history")).await;
    let (s, _) = t.get("/distributions/EMD_nope/history").await;
    assert_eq!(s, 404);
    // Stats agree with the history rows.
    let sent = rows.iter().filter(|r| !r["sentAt"].is_null()).count() as u64;
    assert_eq!(items[0]["stats"]["sent"].as_u64().unwrap(), sent);

    let (links, _) = t
        .all(&format!("/distributions/{links_id}/links?surveyId={sid}"))
        .await;
    let (s, _) = t.get(&format!("/distributions/{links_id}/links")).await;
    assert_eq!(s, 400);

    if t.h.sim.directory.mailing_lists().is_empty() {
        assert!(rows.is_empty());
        assert!(links.is_empty());
        return;
    }
    assert!(!rows.is_empty());
    for r in &rows {
        for k in [
            "contactId",
            "contactLookupId",
            "distributionID",
            "status",
            "surveyLink",
            "contactFrequencyRuleId",
            "responseId",
            "responseCompletedAt",
            "sentAt",
            "openedAt",
            "responseStartedAt",
            "surveySessionId",
        ] {
            assert!(r.get(k).is_some(), "history.{k}");
        }
        assert_eq!(r["distributionID"], invite.as_str());
        if r["status"] == "SurveyFinished" {
            assert!(r["responseId"].as_str().unwrap().starts_with("R_"));
        }
    }
    if rows.len() > 2 {
        let (paged, pages) = t
            .all(&format!("/distributions/{invite}/history?pageSize=2"))
            .await;
        assert_eq!(paged, rows);
        assert_eq!(pages, rows.len().div_ceil(2));
    }
    assert!(!links.is_empty());
    for l in &links {
        for k in [
            "contactId",
            "transactionId",
            "link",
            "exceededContactFrequency",
            "linkExpiration",
            "status",
            "lastName",
            "firstName",
            "externalDataReference",
            "email",
            "unsubscribed",
        ] {
            assert!(l.get(k).is_some(), "links.{k}");
        }
    }
}

#[tokio::test]
async fn create_remind_delete() {
    let t = T::new().await;
    let sid = t.survey(1);

    // Validation.
    let r =
        t.c.post(format!("{}/distributions", t.h.api_url()))
            .header("X-API-TOKEN", &t.admin)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    let good = email_body(
        &sid,
        json!({"transactionBatchId": "BT_abc"}),
        "2026-10-01T09:00:00Z",
    );
    let mut bad = good.clone();
    bad["header"].as_object_mut().unwrap().remove("fromEmail");
    let (s, v) = t.post("/distributions", bad).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("header.fromEmail"));
    let mut bad = good.clone();
    bad["message"] = json!({"libraryId": "UR_x", "messageId": "MS_nope"});
    assert_eq!(t.post("/distributions", bad).await.0, 400);
    let mut bad = good.clone();
    bad["recipients"] = json!({"mailingListId": "CG_unknown"});
    assert_eq!(t.post("/distributions", bad).await.0, 400);
    let mut bad = good.clone();
    bad["recipients"] = json!({});
    assert_eq!(t.post("/distributions", bad).await.0, 400);
    let mut bad = good.clone();
    bad["surveyLink"]["type"] = json!("Weird");
    assert_eq!(t.post("/distributions", bad).await.0, 400);
    let mut bad = good.clone();
    bad["sendDate"] = json!("01/02/2026");
    let (s, v) = t.post("/distributions", bad).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("sendDate"));
    let mut bad = good.clone();
    bad["surveyLink"]["surveyId"] = json!("SV_nope");
    assert_eq!(t.post("/distributions", bad).await.0, 400);
    let (s, _) = t.post("/distributions", json!({"action": "Other"})).await;
    assert_eq!(s, 400);

    // A library message works as well as free text.
    let admin_id = t.h.sim.users.read()[0].id.clone();
    let (_, msgs) = t
        .get(&format!("/libraries/{admin_id}/messages?category=invite"))
        .await;
    let msg_id = msgs["result"]["elements"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut lib_body = good.clone();
    lib_body["message"] = json!({"libraryId": admin_id, "messageId": msg_id});
    let (s, v) = t.post("/distributions", lib_body).await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = t.post("/distributions", good.clone()).await;
    assert_eq!(s, 200, "{v}");
    let id = v["result"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("EMD_"));
    let (s, v) = t.get(&format!("/distributions/{id}?surveyId={sid}")).await;
    assert_eq!(s, 200);
    let d = &v["result"];
    assert_eq!(d["requestType"], "Invite");
    assert_eq!(d["recipients"]["transactionBatchId"], "BT_abc");
    assert_eq!(d["embeddedData"]["campaign"], "spring");
    assert_eq!(d["headers"]["subject"], "How did we do?");
    assert_eq!(d["ownerId"], admin_id.as_str());

    // Scheduled in the future → Pending.
    let future = email_body(
        &sid,
        json!({"transactionBatchId": "BT_abc"}),
        "2030-01-01T00:00:00Z",
    );
    let (_, v) = t.post("/distributions", future).await;
    let fid = v["result"]["id"].as_str().unwrap().to_string();
    let (_, v) = t.get(&format!("/distributions/{fid}?surveyId={sid}")).await;
    assert_eq!(v["result"]["requestStatus"], "Pending");

    // Reminder of the invite.
    let reminder = json!({
        "header": {"fromEmail": "noreply@qemailserver.com", "fromName": "Acme", "subject": "Reminder"},
        "message": {"messageText": "Reminder ${l://SurveyURL}"},
        "sendDate": "2026-10-05T09:00:00Z",
    });
    let (s, v) = t
        .post(&format!("/distributions/{id}/reminders"), reminder.clone())
        .await;
    assert_eq!(s, 200, "{v}");
    let rid = v["result"]["distributionId"].as_str().unwrap().to_string();
    let (_, v) = t.get(&format!("/distributions/{rid}?surveyId={sid}")).await;
    assert_eq!(v["result"]["parentDistributionId"], id.as_str());
    assert_eq!(v["result"]["requestType"], "Reminder");
    // A reminder of a reminder is refused; unknown parent is 404; missing header 400.
    assert_eq!(
        t.post(&format!("/distributions/{rid}/reminders"), reminder.clone())
            .await
            .0,
        400
    );
    assert_eq!(
        t.post("/distributions/EMD_nope/reminders", reminder.clone())
            .await
            .0,
        404
    );
    assert_eq!(
        t.post(
            &format!("/distributions/{id}/reminders"),
            json!({"sendDate": "2026-10-05T09:00:00Z"})
        )
        .await
        .0,
        400
    );

    // Generated links: validation (the positive case needs a mailing list).
    let links = |ml: &str, exp: &str| {
        json!({"action": "CreateDistribution", "surveyId": sid, "linkType": "Individual",
               "description": "panel links", "expirationDate": exp, "mailingListId": ml})
    };
    let (s, v) = t
        .post("/distributions", links("CG_nope", "2027-01-01 00:00:00"))
        .await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("CG_nope"));
    let mut b = links("CG_nope", "2027-01-01 00:00:00");
    b.as_object_mut().unwrap().remove("mailingListId");
    let (s, v) = t.post("/distributions", b).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("mailingListId"));
    if let Some((_, ml)) = t.h.sim.directory.mailing_lists().first().cloned() {
        let (s, v) = t
            .post("/distributions", links(&ml, "2027-01-01T00:00:00Z"))
            .await;
        assert_eq!(s, 400, "{v}");
        let (s, v) = t
            .post("/distributions", links(&ml, "2027-01-01 00:00:00"))
            .await;
        assert_eq!(s, 200, "{v}");
        let gid = v["result"]["id"].as_str().unwrap().to_string();
        let (links, _) = t
            .all(&format!("/distributions/{gid}/links?surveyId={sid}"))
            .await;
        assert_eq!(
            links.len(),
            t.h.sim.directory.mailing_list_members(&ml).len()
        );
        if let Some(l) = links.first() {
            assert_eq!(l["linkExpiration"], "2027-01-01 00:00:00");
        }
    }

    // Delete.
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/distributions/{id}"),
            &t.admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        t.get(&format!("/distributions/{id}?surveyId={sid}"))
            .await
            .0,
        404
    );
    assert_eq!(t.get(&format!("/distributions/{id}/history")).await.0, 404);
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/distributions/{id}"),
            &t.admin,
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn sms_distributions() {
    let t = T::new().await;
    let sid = t.survey(0);
    let (s, v) = t.get("/distributions/sms").await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("surveyId"));
    let (items, _) = t.all(&format!("/distributions/sms?surveyId={sid}")).await;
    assert_eq!(items.len(), 2, "survey 0 has two SMS waves");
    let (paged, pages) = t
        .all(&format!("/distributions/sms?surveyId={sid}&pageSize=1"))
        .await;
    assert_eq!((paged.clone(), pages), (items.clone(), 2));
    let first = &items[0];
    for k in [
        "id",
        "name",
        "ownerId",
        "organizationId",
        "surveyId",
        "requestStatus",
        "requestType",
        "sendDate",
        "recipients",
        "message",
        "surveyLink",
    ] {
        assert!(first.get(k).is_some(), "sms.{k}");
    }
    for k in [
        "mailingListId",
        "contactId",
        "libraryId",
        "sampleId",
        "transactionBatchId",
        "transactionId",
    ] {
        assert!(first["recipients"].get(k).is_some(), "sms.recipients.{k}");
    }
    for k in ["messageType", "messageId", "libraryId"] {
        assert!(first["message"].get(k).is_some(), "sms.message.{k}");
    }
    assert!(first["surveyLink"].get("expirationDate").is_some());
    assert!(items[1]["message"]["messageText"].is_string());
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("SMSD_"));
    let (s, v) = t.get(&format!("/distributions/sms/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(&v["result"], first);
    let (rows, _) = t.all(&format!("/distributions/sms/{id}/history")).await;
    if !t.h.sim.directory.mailing_lists().is_empty() {
        assert!(!rows.is_empty());
        assert!(
            rows[0]["surveyLink"]
                .as_str()
                .unwrap()
                .contains("Q_CHL=sms")
        );
    }
    assert_eq!(t.get("/distributions/sms/SMSD_nope").await.0, 404);
    assert_eq!(t.get("/distributions/sms/SMSD_nope/history").await.0, 404);
    // SMS ids are not e-mail distributions and vice versa.
    assert_eq!(
        t.get(&format!("/distributions/{id}?surveyId={sid}"))
            .await
            .0,
        404
    );

    let body = json!({"name": "Pulse SMS", "surveyId": sid, "method": "Invite",
                      "message": {"messageText": "Answer: ${l://SurveyLink}"},
                      "sendDate": "2026-10-10T10:00:00Z",
                      "recipients": {"transactionBatchId": "BT_1"}});
    let (s, v) = t.post("/distributions/sms", body.clone()).await;
    assert_eq!(s, 200, "{v}");
    let nid = v["result"]["id"].as_str().unwrap().to_string();
    assert!(nid.starts_with("SMSD_"));
    let (_, v) = t.get(&format!("/distributions/sms/{nid}")).await;
    assert_eq!(v["result"]["name"], "Pulse SMS");
    assert_eq!(v["result"]["recipients"]["transactionBatchId"], "BT_1");
    let mut bad = body.clone();
    bad["method"] = json!("Blast");
    let (s, v) = t.post("/distributions/sms", bad).await;
    assert_eq!(s, 400);
    assert!(err_msg(&v).contains("method"));
    let mut bad = body.clone();
    bad["message"] = json!({});
    assert_eq!(t.post("/distributions/sms", bad).await.0, 400);
    let mut bad = body;
    bad.as_object_mut().unwrap().remove("name");
    assert_eq!(t.post("/distributions/sms", bad).await.0, 400);
}

#[tokio::test]
async fn auth_rules() {
    let t = T::new().await;
    let sid = t.survey(0);
    let path = format!("/distributions?surveyId={sid}");
    let (s, _) = t.call(Method::GET, &path, "", None).await;
    assert_eq!(s, 401);
    let (s, _) = t.call(Method::GET, &path, "wrong-token", None).await;
    assert_eq!(s, 401);
    let (s, _) = t.call(Method::GET, &path, &t.token(3), None).await;
    assert_eq!(s, 403);
    let (s, _) = t.call(Method::GET, &path, &t.token(2), None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn same_seed_same_answers() {
    let a = T::new().await;
    let b = T::new().await;
    for i in 0..a.h.sim.surveys.len() {
        let sid = a.survey(i);
        for p in [
            format!("/distributions?surveyId={sid}"),
            format!("/distributions/sms?surveyId={sid}"),
        ] {
            assert_eq!(a.all(&p).await.0, b.all(&p).await.0);
        }
    }
    let (items, _) = a
        .all(&format!("/distributions?surveyId={}", a.survey(0)))
        .await;
    let id = items[0]["id"].as_str().unwrap();
    let p = format!("/distributions/{id}/history");
    assert_eq!(a.all(&p).await.0, b.all(&p).await.0);
}
