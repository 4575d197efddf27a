//! Every Qualtrics action against the in-process simulator over loopback: the effect is checked
//! in the simulator (through plain API reads, not through the action under test), a second run
//! with the same delivery key creates nothing new, "Stream" actions page through several pages,
//! and each error class (400/403/404, 429 with Retry-After, 5xx, refused refresh, unreachable
//! host, missing connection) gets its disposition.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use xmbridge_actions::qualtrics::{ConnectionName, DefaultDirectory};
use xmbridge_actions::{
    ActionContext, ActionError, ActionRequest, Disposition, Inputs, Registry, System,
};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, RetryPolicy, SecretString};
use xmbridge_sim::{SimConfig, SimHandle};

async fn sim(contacts: usize) -> SimHandle {
    let cfg = SimConfig {
        contacts,
        surveys: 3,
        responses: 20,
        ..SimConfig::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_retries: 1,
        max_throttled_retries: 0,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn client_with(h: &SimHandle, auth: Auth, retry: RetryPolicy) -> Client {
    Client::builder(BaseUrl::parse(&h.base_url).unwrap(), auth)
        .retry(retry)
        .no_rate_limit()
        .build()
        .unwrap()
}

fn client(h: &SimHandle) -> Client {
    client_with(h, Auth::api_token(h.sim.cfg.admin_token()), fast())
}

/// A context like the CLI builds: the client and the brand's default directory.
fn context(h: &SimHandle) -> ActionContext {
    ActionContext::new()
        .with(client(h))
        .with(DefaultDirectory(h.sim.directory.default_directory_id()))
        .with(ConnectionName("acme".into()))
}

fn inputs(v: Value) -> Inputs {
    v.as_object().cloned().expect("inputs are an object")
}

async fn run(
    ctx: &ActionContext,
    name: &str,
    input: Value,
    key: Option<&str>,
) -> Result<Value, ActionError> {
    let reg = Registry::builtin();
    let action = reg.find(name).unwrap();
    action
        .run(
            ctx,
            ActionRequest {
                inputs: inputs(input),
                delivery_key: key.map(str::to_string),
            },
        )
        .await
}

async fn ok(ctx: &ActionContext, name: &str, input: Value, key: Option<&str>) -> Value {
    match run(ctx, name, input.clone(), key).await {
        Ok(v) => v,
        Err(e) => panic!("{name} {input}: {e}"),
    }
}

/// A plain API read, independent of the actions: the simulator's view.
async fn api(h: &SimHandle, path: &[&str], query: &str) -> Value {
    let c = client(h);
    let mut url = c.url(path);
    if !query.is_empty() {
        url.set_query(Some(query));
    }
    c.get::<Value>(url).await.unwrap()
}

/// Every element of a paged list, read directly.
async fn api_all(h: &SimHandle, path: &[&str], query: &str) -> Vec<Value> {
    use futures_util::TryStreamExt;
    let c = client(h);
    let mut url = c.url(path);
    if !query.is_empty() {
        url.set_query(Some(query));
    }
    c.paginate::<Value>(url).try_collect().await.unwrap()
}

async fn admin(h: &SimHandle, method: &str, path: &str, body: Value) -> Value {
    let http = reqwest::Client::new();
    let url = format!("{}{path}", h.base_url);
    let rb = match method {
        "DELETE" => http.delete(url),
        "GET" => http.get(url),
        _ => http.post(url).json(&body),
    };
    let resp = rb.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array: {v}"))
}

#[tokio::test]
async fn the_registry_holds_the_spokes_twenty_and_four_extras() {
    let reg = Registry::builtin();
    let spoke = [
        "create-contact",
        "look-up-contact-by-email",
        "look-up-contact-distribution-email-history-stream",
        "look-up-contact-distribution-response-histories-stream",
        "look-up-contacts-stream",
        "update-contact",
        "create-distribution",
        "look-up-distribution-links-stream",
        "look-up-distributions-stream",
        "look-up-library-messages-stream",
        "create-contact-in-mailing-list",
        "look-up-contact-in-mailing-lists-stream",
        "look-up-mailing-lists",
        "remove-contact-from-mailing-list",
        "look-up-directories-metadata",
        "look-up-libraries-metadata",
        "look-up-surveys",
        "create-subscription",
        "look-up-subscription-by-subscription-id",
        "look-up-subscriptions-stream",
    ];
    for name in spoke.iter().chain(&[
        "upsert-contact",
        "create-mailing-list",
        "get-response",
        "delete-subscription",
    ]) {
        let a = reg
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not registered"));
        let s = a.spec();
        assert_eq!(s.system, System::Qualtrics);
        assert_eq!(s.stream, name.ends_with("-stream"), "{name}");
        assert_eq!(
            s.writes,
            name.starts_with("create-")
                || name.starts_with("update-")
                || name.starts_with("upsert-")
                || name.starts_with("remove-")
                || name.starts_with("delete-"),
            "{name}"
        );
    }
    let qualtrics = reg
        .iter()
        .filter(|a| a.spec().system == System::Qualtrics)
        .count();
    assert_eq!(qualtrics, 24);
}

#[tokio::test]
async fn metadata_surveys_and_one_response() {
    let h = sim(20).await;
    let ctx = context(&h);

    let dirs = ok(&ctx, "look-up-directories-metadata", json!({}), None).await;
    assert_eq!(arr(&dirs).len(), 2, "{dirs}");
    let default: Vec<_> = arr(&dirs)
        .iter()
        .filter(|d| d["isDefault"] == true)
        .collect();
    assert_eq!(
        default[0]["directoryId"],
        h.sim.directory.default_directory_id()
    );

    let libs = ok(&ctx, "look-up-libraries-metadata", json!({}), None).await;
    assert_eq!(arr(&libs), &api_all(&h, &["libraries"], "").await);
    assert!(arr(&libs).len() >= 3, "{libs}");

    let surveys = ok(&ctx, "look-up-surveys", json!({}), None).await;
    assert_eq!(arr(&surveys).len(), 3);
    let name = surveys[1]["name"].as_str().unwrap().to_uppercase();
    let by_name = ok(&ctx, "look-up-surveys", json!({"name": name}), None).await;
    assert_eq!(arr(&by_name).len(), 1);
    assert_eq!(by_name[0]["id"], surveys[1]["id"]);
    let capped = ok(&ctx, "look-up-surveys", json!({"limit": "2"}), None).await;
    assert_eq!(arr(&capped).len(), 2);

    let sid = h.sim.surveys[0].id.clone();
    let rid = xmbridge_sim::qualtrics::responses::encode_response_id(h.sim.cfg.seed, 0, 3);
    let resp = ok(
        &ctx,
        "get-response",
        json!({"survey_id": sid, "response_id": rid}),
        None,
    )
    .await;
    assert_eq!(resp["responseId"], rid);
    assert!(resp["values"].is_object(), "{resp}");

    let e = run(
        &ctx,
        "get-response",
        json!({"survey_id": sid, "response_id": "R_000000000000000"}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert!(e.to_string().contains("404"), "{e}");
}

#[tokio::test]
async fn contacts_create_look_up_update_and_upsert_without_duplicates() {
    let h = sim(230).await;
    let ctx = context(&h);
    let dir = h.sim.directory.default_directory_id();

    // Create, then a retry under the same delivery key finds it instead of creating another.
    let created = ok(
        &ctx,
        "create-contact",
        json!({"firstName": "Zoë", "lastName": "Brandt", "email": "zoe.brandt@example.test",
               "extRef": "sn-4711", "embeddedData": {"tier": "gold"}}),
        Some("evt-1:create"),
    )
    .await;
    assert_eq!(created["created"], true);
    let cid = created["contactId"].as_str().unwrap().to_string();
    let stored = api(&h, &["directories", &dir, "contacts", &cid], "").await;
    assert_eq!(stored["email"], "zoe.brandt@example.test");
    assert_eq!(stored["extRef"], "sn-4711");
    assert_eq!(stored["embeddedData"]["tier"], "gold");
    let retry = ok(
        &ctx,
        "create-contact",
        json!({"firstName": "Zoë", "lastName": "Brandt", "email": "zoe.brandt@example.test",
               "extRef": "sn-4711"}),
        Some("evt-1:create"),
    )
    .await;
    assert_eq!(retry["created"], false);
    assert_eq!(retry["contactId"], cid.as_str());
    let all = api_all(&h, &["directories", &dir, "contacts"], "pageSize=100").await;
    assert_eq!(all.len(), 231, "one contact added, not two");

    // Look up by e-mail, ignoring case; a miss is `found: false`, not an error.
    let found = ok(
        &ctx,
        "look-up-contact-by-email",
        json!({"email": "ZOE.Brandt@example.test"}),
        None,
    )
    .await;
    assert_eq!(found["found"], true);
    assert_eq!(found["contactId"], cid.as_str());
    assert_eq!(found["contact"]["embeddedData"]["tier"], "gold");
    let missing = ok(
        &ctx,
        "look-up-contact-by-email",
        json!({"email": "nobody@example.test"}),
        None,
    )
    .await;
    assert_eq!(missing["found"], false);
    assert_eq!(missing["contact"], Value::Null);

    // Update: partial, embedded data merges.
    let updated = ok(
        &ctx,
        "update-contact",
        json!({"contact_id": cid, "lastName": "Brandt-Okafor", "embeddedData": {"region": "EMEA"}}),
        Some("evt-2:update"),
    )
    .await;
    assert_eq!(updated["contact"]["lastName"], "Brandt-Okafor");
    let stored = api(&h, &["directories", &dir, "contacts", &cid], "").await;
    assert_eq!(stored["lastName"], "Brandt-Okafor");
    assert_eq!(stored["firstName"], "Zoë");
    assert_eq!(stored["embeddedData"]["tier"], "gold");
    assert_eq!(stored["embeddedData"]["region"], "EMEA");

    // Upsert: the extRef matches → update; a new extRef → create; again → update, no new contact.
    let up = ok(
        &ctx,
        "upsert-contact",
        json!({"extRef": "sn-4711", "phone": "+15555550123"}),
        None,
    )
    .await;
    assert_eq!(up["created"], false);
    assert_eq!(up["contactId"], cid.as_str());
    assert_eq!(up["contact"]["phone"], "+15555550123");
    let new = ok(
        &ctx,
        "upsert-contact",
        json!({"extRef": "sn-9000", "email": "new.person@example.test", "firstName": "Ngozi"}),
        Some("evt-3:upsert"),
    )
    .await;
    assert_eq!(new["created"], true);
    let again = ok(
        &ctx,
        "upsert-contact",
        json!({"extRef": "sn-9000", "email": "new.person@example.test", "firstName": "Ngozi"}),
        Some("evt-3:upsert"),
    )
    .await;
    assert_eq!(again["created"], false);
    assert_eq!(again["contactId"], new["contactId"]);
    let all = api_all(&h, &["directories", &dir, "contacts"], "pageSize=100").await;
    assert_eq!(all.len(), 232);

    // Stream: every page (230 seeded + 2 created), a small page size, and a limit.
    let everyone = ok(&ctx, "look-up-contacts-stream", json!({}), None).await;
    assert_eq!(arr(&everyone).len(), 232);
    let ids: std::collections::BTreeSet<_> = arr(&everyone)
        .iter()
        .map(|c| c["contactId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 232, "no contact twice across pages");
    let capped = ok(
        &ctx,
        "look-up-contacts-stream",
        json!({"page_size": 7, "limit": 20}),
        None,
    )
    .await;
    assert_eq!(arr(&capped).len(), 20);
    assert_eq!(arr(&capped)[..], arr(&everyone)[..20]);

    // Explicit directory_id wins over the default; the partner panel has 25 contacts.
    let dirs = api_all(&h, &["directories"], "").await;
    let partner = dirs.iter().find(|d| d["isDefault"] == false).unwrap();
    let panel = ok(
        &ctx,
        "look-up-contacts-stream",
        json!({"directory_id": partner["directoryId"]}),
        None,
    )
    .await;
    assert_eq!(arr(&panel).len(), 25);
}

#[tokio::test]
async fn mailing_lists_create_add_look_up_and_remove() {
    let h = sim(60).await;
    let ctx = context(&h);
    let dir = h.sim.directory.default_directory_id();
    let before = api_all(&h, &["directories", &dir, "mailinglists"], "").await;

    let list = ok(
        &ctx,
        "create-mailing-list",
        json!({"name": "Closed incidents"}),
        Some("evt-9:list"),
    )
    .await;
    assert_eq!(list["created"], true);
    let ml = list["mailingListId"].as_str().unwrap().to_string();
    let again = ok(
        &ctx,
        "create-mailing-list",
        json!({"name": "Closed incidents"}),
        Some("evt-9:list"),
    )
    .await;
    assert_eq!(again["created"], false);
    assert_eq!(again["mailingListId"], ml.as_str());
    let after = api_all(&h, &["directories", &dir, "mailinglists"], "").await;
    assert_eq!(after.len(), before.len() + 1);

    let lists = ok(&ctx, "look-up-mailing-lists", json!({}), None).await;
    assert_eq!(arr(&lists).len(), after.len());
    let named = ok(
        &ctx,
        "look-up-mailing-lists",
        json!({"name": "closed INCIDENTS", "include_count": true}),
        None,
    )
    .await;
    assert_eq!(arr(&named).len(), 1);
    assert_eq!(named[0]["mailingListId"], ml.as_str());
    assert_eq!(named[0]["contactCount"], 0);

    // Add a new person to the list; a retry under the same key adds nobody.
    let add = json!({"mailing_list_id": ml, "email": "caller@example.test",
                     "firstName": "Ana", "embeddedData": {"incident": "INC0010042"}});
    let member = ok(
        &ctx,
        "create-contact-in-mailing-list",
        add.clone(),
        Some("evt-9:add"),
    )
    .await;
    assert_eq!(member["created"], true);
    let cid = member["contactId"].as_str().unwrap().to_string();
    assert!(
        member["contactLookupId"]
            .as_str()
            .unwrap()
            .starts_with("CGC_")
    );
    let retry = ok(
        &ctx,
        "create-contact-in-mailing-list",
        add,
        Some("evt-9:add"),
    )
    .await;
    assert_eq!(retry["created"], false);
    assert_eq!(retry["contactId"], cid.as_str());
    assert_eq!(retry["contactLookupId"], member["contactLookupId"]);
    let members = api_all(
        &h,
        &["directories", &dir, "mailinglists", &ml, "contacts"],
        "",
    )
    .await;
    assert_eq!(members.len(), 1);

    // An existing directory contact joins the list too.
    let seeded = api_all(&h, &["directories", &dir, "contacts"], "pageSize=5").await;
    let email = seeded[3]["email"].as_str().unwrap();
    ok(
        &ctx,
        "create-contact-in-mailing-list",
        json!({"mailing_list_id": ml, "email": email}),
        None,
    )
    .await;
    let streamed = ok(
        &ctx,
        "look-up-contact-in-mailing-lists-stream",
        json!({"mailing_list_id": ml, "include_embedded": "true"}),
        None,
    )
    .await;
    assert_eq!(arr(&streamed).len(), 2);
    let ana = arr(&streamed)
        .iter()
        .find(|m| m["contactId"] == cid.as_str())
        .unwrap();
    assert_eq!(ana["embeddedData"]["incident"], "INC0010042");

    // Paging across pages of a big seeded list.
    let (_, big) = h
        .sim
        .directory
        .mailing_lists()
        .into_iter()
        .find(|(d, _)| *d == dir)
        .unwrap();
    let expected = h.sim.directory.mailing_list_members(&big).len();
    assert!(expected > 20, "the first seeded list is large: {expected}");
    let all = ok(
        &ctx,
        "look-up-contact-in-mailing-lists-stream",
        json!({"mailing_list_id": big}),
        None,
    )
    .await;
    assert_eq!(arr(&all).len(), expected);

    // Remove; a retry under the key is a success that removed nothing; without a key, 404.
    let removed = ok(
        &ctx,
        "remove-contact-from-mailing-list",
        json!({"mailing_list_id": ml, "contact_id": cid}),
        Some("evt-10:remove"),
    )
    .await;
    assert_eq!(removed["removed"], true);
    let members = api_all(
        &h,
        &["directories", &dir, "mailinglists", &ml, "contacts"],
        "",
    )
    .await;
    assert_eq!(members.len(), 1);
    assert!(members.iter().all(|m| m["contactId"] != cid.as_str()));
    // The directory contact stays.
    api(&h, &["directories", &dir, "contacts", &cid], "").await;
    let retry = ok(
        &ctx,
        "remove-contact-from-mailing-list",
        json!({"mailing_list_id": ml, "contact_id": cid}),
        Some("evt-10:remove"),
    )
    .await;
    assert_eq!(retry["removed"], false);
    let e = run(
        &ctx,
        "remove-contact-from-mailing-list",
        json!({"mailing_list_id": ml, "contact_id": cid}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter, "{e}");
}

#[tokio::test]
async fn distributions_send_once_per_delivery_key_and_show_links_and_history() {
    let h = sim(40).await;
    let ctx = context(&h);
    let dir = h.sim.directory.default_directory_id();
    let sid = h.sim.surveys[1].id.clone();

    // A fresh list of three, and the admin's invite message from the library.
    let ml = ok(
        &ctx,
        "create-mailing-list",
        json!({"name": "Survey these"}),
        None,
    )
    .await["mailingListId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cids = Vec::new();
    for i in 0..3 {
        let m = ok(
            &ctx,
            "create-contact-in-mailing-list",
            json!({"mailing_list_id": ml, "email": format!("p{i}@example.test")}),
            None,
        )
        .await;
        cids.push(m["contactId"].as_str().unwrap().to_string());
    }
    let me = client(&h).whoami().await.unwrap().user_id;
    let invites = ok(
        &ctx,
        "look-up-library-messages-stream",
        json!({"library_id": me, "category": "invite"}),
        None,
    )
    .await;
    let msg = invites[0]["id"].as_str().unwrap().to_string();

    let before = api_all(&h, &["distributions"], &format!("surveyId={sid}")).await;
    let input = json!({
        "survey_id": sid, "mailing_list_id": ml, "library_id": me, "message_id": msg,
        "from_email": "noreply@example.test", "from_name": "Service Desk",
        "subject": "How did we do?", "send_date": "2026-11-01T09:00:00Z",
        "embeddedData": {"incident": "INC0010042", "priority": 3},
    });
    let sent = ok(
        &ctx,
        "create-distribution",
        input.clone(),
        Some("evt-7:send"),
    )
    .await;
    assert_eq!(sent["created"], true);
    let did = sent["distributionId"].as_str().unwrap().to_string();
    let d = api(&h, &["distributions", &did], &format!("surveyId={sid}")).await;
    assert_eq!(d["recipients"]["mailingListId"], ml.as_str());
    assert_eq!(d["headers"]["subject"], "How did we do?");
    assert_eq!(d["embeddedData"]["priority"], "3");
    assert_eq!(d["embeddedData"]["xmbridgeDeliveryKey"], "evt-7:send");

    // The retry (same delivery key) finds the first one: nothing is sent twice.
    let retry = ok(
        &ctx,
        "create-distribution",
        input.clone(),
        Some("evt-7:send"),
    )
    .await;
    assert_eq!(retry["created"], false);
    assert_eq!(retry["distributionId"], did.as_str());
    let after = api_all(&h, &["distributions"], &format!("surveyId={sid}")).await;
    assert_eq!(after.len(), before.len() + 1);
    // Another event is another distribution (sent now: no send_date).
    let mut now = input.clone();
    now.as_object_mut().unwrap().remove("send_date");
    let other = ok(&ctx, "create-distribution", now.clone(), Some("evt-8:send")).await;
    assert_eq!(other["created"], true);
    assert_ne!(other["distributionId"], did.as_str());
    let other_retry = ok(&ctx, "create-distribution", now, Some("evt-8:send")).await;
    assert_eq!(other_retry["created"], false);
    assert_eq!(other_retry["distributionId"], other["distributionId"]);
    let other = api(
        &h,
        &["distributions", other["distributionId"].as_str().unwrap()],
        &format!("surveyId={sid}"),
    )
    .await;
    assert!(
        other["sendDate"].as_str().unwrap().ends_with('Z'),
        "{other}"
    );

    // The streams: the survey's distributions, and one link per recipient.
    let listed = ok(
        &ctx,
        "look-up-distributions-stream",
        json!({"survey_id": sid}),
        None,
    )
    .await;
    assert_eq!(arr(&listed).len(), before.len() + 2);
    let invites_to_ml = ok(
        &ctx,
        "look-up-distributions-stream",
        json!({"survey_id": sid, "mailing_list_id": ml, "distribution_request_type": "Invite"}),
        None,
    )
    .await;
    assert_eq!(arr(&invites_to_ml).len(), 2);
    let links = ok(
        &ctx,
        "look-up-distribution-links-stream",
        json!({"distribution_id": did, "survey_id": sid}),
        None,
    )
    .await;
    assert_eq!(arr(&links).len(), 3);
    assert!(
        arr(&links)
            .iter()
            .all(|l| l["link"].as_str().unwrap().contains(&did))
    );

    // Every recipient's e-mail history shows the send.
    let history = ok(
        &ctx,
        "look-up-contact-distribution-email-history-stream",
        json!({"contact_id": cids[0]}),
        None,
    )
    .await;
    assert_eq!(arr(&history).len(), 2, "{history}");
    assert!(
        arr(&history)
            .iter()
            .any(|e| e["distributionId"] == did.as_str())
    );

    // Response history: the simulator records what its responses module reports.
    let rid = xmbridge_sim::qualtrics::responses::encode_response_id(h.sim.cfg.seed, 1, 0);
    h.sim.directory.record_response_history(
        &dir,
        &cids[0],
        xmbridge_sim::qualtrics::directory::ResponseHistoryEntry {
            response_id: rid.clone(),
            survey_id: sid.clone(),
            distribution_id: Some(did.clone()),
            finished: true,
            date_ms: h.sim.clock.now_ms(),
        },
    );
    let responses = ok(
        &ctx,
        "look-up-contact-distribution-response-histories-stream",
        json!({"contact_id": cids[0]}),
        None,
    )
    .await;
    assert_eq!(arr(&responses).len(), 1);
    assert_eq!(responses[0]["responseId"], rid.as_str());

    // Bad recipients are the caller's mistake, found before any call.
    let e = run(
        &ctx,
        "create-distribution",
        json!({"survey_id": sid, "message_text": "hi", "from_email": "a@b.test",
               "from_name": "A", "subject": "S"}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ActionError::BadInput { .. }), "{e}");
}

#[tokio::test]
async fn library_messages_page_across_offset_pages() {
    let h = sim(10).await;
    let ctx = context(&h);
    let libs = ok(&ctx, "look-up-libraries-metadata", json!({}), None).await;
    let group = arr(&libs)
        .iter()
        .find(|l| l["libraryId"].as_str().unwrap().starts_with("GR_"))
        .unwrap()["libraryId"]
        .as_str()
        .unwrap()
        .to_string();
    let all = ok(
        &ctx,
        "look-up-library-messages-stream",
        json!({"library_id": group}),
        None,
    )
    .await;
    assert_eq!(arr(&all).len(), 130, "two offset pages of 100 + 30");
    let capped = ok(
        &ctx,
        "look-up-library-messages-stream",
        json!({"library_id": group, "limit": 101}),
        None,
    )
    .await;
    assert_eq!(arr(&capped)[..], arr(&all)[..101]);
    let description = all[120]["description"].as_str().unwrap().to_lowercase();
    let by_name = ok(
        &ctx,
        "look-up-library-messages-stream",
        json!({"library_id": group, "description": description}),
        None,
    )
    .await;
    assert!(
        arr(&by_name).iter().any(|m| m["id"] == all[120]["id"]),
        "{by_name}"
    );
}

#[tokio::test]
async fn subscriptions_create_once_and_look_up() {
    let h = sim(10).await;
    let ctx = context(&h);
    let sid = h.sim.surveys[0].id.clone();
    let input = json!({"survey_id": sid, "publication_url": "http://127.0.0.1:9/hooks/qualtrics",
                       "shared_key": "s3cret"});
    let sub = ok(
        &ctx,
        "create-subscription",
        input.clone(),
        Some("setup:sub"),
    )
    .await;
    assert_eq!(sub["created"], true);
    let id = sub["subscriptionId"].as_str().unwrap().to_string();
    let again = ok(&ctx, "create-subscription", input, Some("setup:sub")).await;
    assert_eq!(again["created"], false);
    assert_eq!(again["subscriptionId"], id.as_str());

    let one = ok(
        &ctx,
        "look-up-subscription-by-subscription-id",
        json!({"subscription_id": id}),
        None,
    )
    .await;
    assert_eq!(
        one["topics"],
        format!("surveyengine.completedResponse.{sid}")
    );
    assert_eq!(one["publicationUrl"], "http://127.0.0.1:9/hooks/qualtrics");
    assert!(
        one.get("sharedKey").is_none(),
        "the shared key is never returned"
    );
    let all = ok(&ctx, "look-up-subscriptions-stream", json!({}), None).await;
    assert_eq!(arr(&all).len(), 1);
    assert_eq!(arr(&all), &api_all(&h, &["eventsubscriptions"], "").await);

    // Deleting removes it; deleting again (a retry) finds it gone and still succeeds.
    let del = ok(
        &ctx,
        "delete-subscription",
        json!({"subscription_id": id}),
        None,
    )
    .await;
    assert_eq!(del["deleted"], true);
    assert!(api_all(&h, &["eventsubscriptions"], "").await.is_empty());
    let again = ok(
        &ctx,
        "delete-subscription",
        json!({"subscription_id": id}),
        None,
    )
    .await;
    assert_eq!(again["deleted"], false);

    let e = run(
        &ctx,
        "create-subscription",
        json!({"topics": "surveyengine.completedResponse.SV_x",
               "publication_url": "https://hooks.example.com/q"}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert!(e.to_string().contains("400"), "{e}");
}

#[tokio::test]
async fn api_errors_are_classified_with_the_apis_message() {
    let h = sim(10).await;
    let ctx = context(&h);

    // 400: the simulator's validation message reaches the caller.
    let e = run(
        &ctx,
        "create-contact",
        json!({"email": "not-an-address"}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    let ActionError::Permanent {
        message, details, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(message.contains("400"), "{message}");
    assert_eq!(details.as_ref().unwrap()["status"], 400);

    // 404 names the missing contact.
    let e = run(
        &ctx,
        "update-contact",
        json!({"contact_id": "CID_000000000000000", "firstName": "X"}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert!(e.to_string().contains("CID_000000000000000"), "{e}");

    // 403: not a brand administrator any more.
    admin(
        &h,
        "POST",
        "/_sim/users/admin/permissions",
        json!({"brand_admin": false}),
    )
    .await;
    let e = run(&ctx, "look-up-subscriptions-stream", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert!(e.to_string().contains("403"), "{e}");
    admin(
        &h,
        "POST",
        "/_sim/users/admin/permissions",
        json!({"brand_admin": true}),
    )
    .await;

    // 5xx on every call: reads and writes are Transient (the client's own retries ran out).
    admin(
        &h,
        "POST",
        "/_sim/faults",
        json!({"error_rate": 1.0, "error_status": 503}),
    )
    .await;
    for (name, input) in [
        ("look-up-surveys", json!({})),
        ("create-contact", json!({"email": "x@example.test"})),
    ] {
        let e = run(&ctx, name, input, None).await.unwrap_err();
        assert_eq!(e.disposition(), Disposition::Retry { after: None }, "{e}");
        assert!(e.to_string().contains("503"), "{e}");
    }
    admin(&h, "DELETE", "/_sim/faults", Value::Null).await;

    // 429 with Retry-After: a brand limit of one call per minute.
    admin(&h, "POST", "/_sim/faults", json!({"rate_limit_per_min": 1})).await;
    ok(&ctx, "look-up-surveys", json!({}), None).await;
    let e = run(&ctx, "look-up-surveys", json!({}), None)
        .await
        .unwrap_err();
    match e.disposition() {
        Disposition::Retry { after: Some(d) } => assert!(d >= Duration::from_secs(1), "{d:?}"),
        other => panic!("{other:?}: {e}"),
    }
    assert!(
        matches!(
            e,
            ActionError::RateLimited {
                system: System::Qualtrics,
                ..
            }
        ),
        "{e}"
    );
    admin(&h, "DELETE", "/_sim/faults", Value::Null).await;

    // Unreachable host: Transient.
    let gone = ActionContext::new().with(
        Client::builder(
            BaseUrl::parse("http://127.0.0.1:1").unwrap(),
            Auth::api_token("t"),
        )
        .retry(RetryPolicy::none())
        .no_rate_limit()
        .build()
        .unwrap(),
    );
    let e = run(&gone, "look-up-surveys", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Retry { after: None }, "{e}");
}

#[tokio::test]
async fn inputs_and_missing_connections_are_reported_before_any_call() {
    let h = sim(10).await;
    let ctx = context(&h);
    let e = run(&ctx, "look-up-contact-by-email", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "action look-up-contact-by-email: input `email`: is required"
    );
    let e = run(&ctx, "look-up-surveys", json!({"colour": "red"}), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`colour`"), "{e}");
    let e = run(
        &ctx,
        "look-up-contacts-stream",
        json!({"limit": "many"}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ActionError::BadInput { .. }), "{e}");

    // No default directory and no directory_id.
    let no_dir = ActionContext::new().with(client(&h));
    let e = run(&no_dir, "look-up-contacts-stream", json!({}), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`directory_id`"), "{e}");

    // No client at all: pause, with what to do.
    let e = run(&ActionContext::new(), "look-up-surveys", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Pause);
    assert!(e.to_string().contains("xmbridge connection add"), "{e}");
}

/// A standard (refresh-token) connection whose tokens are revoked: the action pauses with
/// "account token expired" and the command that re-authorizes.
#[tokio::test]
async fn a_refused_refresh_is_token_expired_with_the_reauthorize_command() {
    let h = sim(10).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let creds = admin(&h, "GET", "/_sim/credentials", Value::Null).await;
    let app = arr(&creds["oauth_clients"])
        .iter()
        .find(|c| arr(&c["grants"]).iter().any(|g| g == "authorization_code"))
        .unwrap()
        .clone();
    admin(
        &h,
        "POST",
        "/_sim/oauth/auto-approve",
        json!({"user": "admin"}),
    )
    .await;
    let redirect = "http://127.0.0.1:9/callback";
    let auth = http
        .get(format!("{}/oauth2/auth", h.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", app["client_id"].as_str().unwrap()),
            ("redirect_uri", redirect),
            ("scope", "manage:all offline"),
            ("state", "s1"),
        ])
        .send()
        .await
        .unwrap();
    let location = auth.headers()["location"].to_str().unwrap().to_string();
    let code = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {location}"));

    let base = BaseUrl::parse(&h.base_url).unwrap();
    let provider = xmbridge_auth::OAuthProvider::qualtrics(base.url()).unwrap();
    let oauth = xmbridge_auth::OAuthClient::new(
        provider,
        app["client_id"].as_str().unwrap(),
        SecretString::from(app["client_secret"].as_str().unwrap().to_string()),
    )
    .unwrap()
    .for_connection("acme")
    .with_reauthorize_command("xmbridge connection authorize acme");
    let tokens = oauth
        .authorization_code(&SecretString::from(code), redirect, None)
        .await
        .unwrap();
    let refresh = tokens.refresh_token.clone().unwrap();
    let sink = |_: &SecretString| -> Result<(), xmbridge_auth::SinkError> { Ok(()) };
    let source = Arc::new(xmbridge_auth::RefreshTokenSource::new(
        oauth,
        refresh,
        Arc::new(sink),
    ));
    let ctx = ActionContext::new().with(client_with(&h, Auth::token_source(source), fast()));
    ok(&ctx, "look-up-surveys", json!({}), None).await;

    admin(&h, "POST", "/_sim/tokens/revoke", json!({"all": true})).await;
    let e = run(&ctx, "look-up-surveys", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Pause, "{e}");
    assert!(matches!(e, ActionError::TokenExpired { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("account token expired"), "{text}");
    assert!(
        text.contains("xmbridge connection authorize acme"),
        "{text}"
    );
    assert!(!text.contains(app["client_secret"].as_str().unwrap()));
}
