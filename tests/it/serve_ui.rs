//! The web UI of `xmbridge serve` in a real headless browser (Debian's chromium through
//! chromedriver, `xmbridge_test_kit::browser`): a person's path from an empty install against the
//! Qualtrics simulator, with screenshots in `$CARGO_TARGET_DIR/ui-screenshots/` for review.
//!
//! Needs the browser: `XMBRIDGE_TEST_BROWSER` set (scripts/test) makes a missing one a failure;
//! unset, the test prints a `SKIPPED:` line.

use std::time::Duration;

use serde_json::json;
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_test_kit::browser::{Browser, WAIT, keys};
use xmbridge_test_kit::serve::start_server;
use xmbridge_workflows::store::{EventSource, EventState, NewEvent, Store};

use crate::support::{self, StateStore};

const PASSWORD: &str = "correct horse battery";

async fn sim() -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(SimConfig {
        seed: 12,
        surveys: 2,
        responses: 40,
        contacts: 0,
        rate_limit_per_min: 0,
        // Each survey's response export takes 2.5 s: the run lasts long enough to be watched.
        export_delay_ms: 2500,
        ..SimConfig::default()
    })
    .await
}

/// A workflow whose step refuses an event without e-mail and extRef: such an event ends in the
/// dead letter (the same workflow as tests/it/cli_workflow_run.rs). The step names the
/// connection the person adds in the UI (the server starts before it exists).
fn workflow(dir: &str) -> String {
    format!(
        r#"[[workflow]]
name = "incident-contact"
owner = "ada"

[workflow.trigger]
type = "servicenow"
table = "incident"

[[workflow.step]]
name = "contact"
action = "create-contact"
account = "acme"
[workflow.step.inputs]
directory_id = "'{dir}'"
email = "record.email"
extRef = "record.sys_id"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_adds_a_connection_syncs_and_replays_a_dead_letter() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let inst = support::install();
    let h = sim().await;
    let token = h.sim.cfg.admin_token();
    let pw = inst.file("ada.pw", PASSWORD);
    inst.ok(&[
        "user",
        "add",
        "ada",
        "--role",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("incident-contact.toml", &workflow(&dir));
    let db = inst.path("warehouse.db");
    let server = start_server(&inst, &[]).await;

    // Sign in with the keyboard only: type, Tab to the password, Enter submits.
    b.goto(&server.url).await;
    let user = b.find("#login-user").await;
    b.screenshot("01-sign-in").await;
    b.type_el(&user, "ada").await;
    b.press(&[keys::TAB]).await;
    let focused = b
        .execute("return document.activeElement.id", json!([]))
        .await;
    assert_eq!(
        focused, "login-password",
        "Tab moves from the user name to the password"
    );
    let outline = b
        .execute(
            "return getComputedStyle(document.activeElement).outlineStyle",
            json!([]),
        )
        .await;
    assert_ne!(outline, "none", "the keyboard focus is visible");
    b.keyboard(PASSWORD).await;
    b.press(&[keys::ENTER]).await;
    b.wait_text("#main h1", "Connections", WAIT).await;
    b.wait_text("#who-name", "ada (admin)", WAIT).await;
    b.wait_text("#main", "No Qualtrics connection yet", WAIT)
        .await;
    b.screenshot("02-empty-install").await;

    // Add a connection with Save & Test.
    b.click("#add-connection").await;
    b.find("#conn-form").await;
    b.fill("#conn-name", "acme").await;
    b.fill("#conn-url", &h.base_url).await;
    b.click("input[name=auth][value=token]").await;
    b.fill("#conn-token", &token).await;
    b.fill("#conn-destination", &format!("sqlite:{}", db.display()))
        .await;
    b.select("#conn-every", "").await;
    b.screenshot("03-add-connection").await;
    b.click("#conn-save").await;
    let report = b
        .wait_text("#test-report", "ok", Duration::from_secs(60))
        .await;
    assert!(report.contains("Test"), "{report}");
    let dest = b.text("#test-report [data-group=destination]").await;
    assert!(
        dest.contains("ok") && dest.contains("warehouse.db"),
        "{dest}"
    );
    let result = b.wait_text("#conn-result", "Saved", WAIT).await;
    assert!(result.contains("the test passed"), "{result}");
    assert_eq!(
        b.property("#conn-token", "value").await,
        "",
        "the token field is emptied once saved"
    );
    b.screenshot("04-save-and-test").await;

    // The connection's page: sync now and watch it finish (no schedule yet, so this run is
    // the first and holds every row).
    b.click("#conn-open").await;
    b.wait_text("#main h1", "acme", WAIT).await;
    b.click("#sync-now").await;
    let run = b.find("#sync-progress").await;
    let run_id = b
        .execute(
            "return document.querySelector('#sync-progress').dataset.run",
            json!([]),
        )
        .await;
    let run_id = run_id.as_str().unwrap().to_string();
    let _ = run;
    // Live progress: rows per stream while the run is still running.
    b.wait_until(
        "rows per stream shown while the run runs",
        "const p = document.querySelector('#sync-progress'); \
         return p && p.querySelector('[data-stream]') && p.textContent.includes('running')",
        Duration::from_secs(60),
    )
    .await;
    b.screenshot("05-sync-running").await;
    let done = b
        .wait_text("#sync-progress", "succeeded", Duration::from_secs(120))
        .await;
    assert!(done.contains("rows changed"), "{done}");
    // Per-table counts in the history match what landed in the destination.
    let row = format!("tr[data-run='{run_id}']");
    b.wait_text(&row, "succeeded", WAIT).await;
    b.click(&format!("{row} details summary")).await;
    let hist = b.text(&format!("{row} details")).await;
    let in_db: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM qualtrics_survey_response", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(in_db > 0);
    let line = hist
        .lines()
        .find(|l| l.starts_with("survey_response "))
        .unwrap_or_else(|| panic!("no survey_response line in {hist:?}"));
    assert_eq!(
        line,
        format!("survey_response {in_db} 0 0"),
        "history vs {in_db} rows in the destination"
    );
    b.screenshot("06-sync-finished").await;

    // Set a schedule; a fresh page reads it back from the API (stored, not just shown).
    b.select("#sched-every", "5m").await;
    b.click("#sched-save").await;
    b.wait_text("#sched-result", "every 5 minutes", WAIT).await;
    b.refresh().await;
    b.wait_text("#main h1", "acme", WAIT).await;
    assert_eq!(b.property("#sched-every", "value").await, "5m");
    b.click("a[data-nav=connections]").await;
    let list = b.wait_text("#main table", "every 5 minutes", WAIT).await;
    // The last run: the one watched above, or the schedule's first, which may start at once.
    assert!(
        list.contains("acme")
            && ["succeeded", "running", "queued"]
                .iter()
                .any(|s| list.contains(s)),
        "{list}"
    );
    b.screenshot("06b-connections").await;

    // A narrow screen.
    b.click("a[href='#/connections/acme']").await;
    b.wait_text("#main h1", "acme", WAIT).await;
    b.find("tr[data-run]").await;
    b.resize(400, 900).await;
    b.screenshot("07-connection-400px").await;
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth",
            json!([]),
        )
        .await;
    assert_eq!(overflow, false, "nothing sticks out sideways at 400 px");
    b.resize(1280, 900).await;

    // A dead-lettered event: the same kind of event as cli_workflow_run's test, put in the
    // outbox directly (the receiver's own tests cover hooks); the server's workers park it.
    let store = inst.store();
    let id = store
        .enqueue(
            &NewEvent {
                workflow: "incident-contact".into(),
                source: EventSource::ServiceNow,
                dedupe_key: "ui-1@1".into(),
                payload: json!({"table": "incident", "record": {"sys_id": null}}),
            },
            xmbridge_workflows::store::now_ms(),
        )
        .unwrap()
        .id()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.get_event(&id).unwrap().state != EventState::Dead {
        assert!(
            std::time::Instant::now() < deadline,
            "the server's workers did not dead-letter the event: {:?}",
            store.get_event(&id).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    b.click("a[data-nav=workflows]").await;
    b.wait_text("#main table", "incident-contact", WAIT).await;
    b.click("a[href='#/workflows/incident-contact']").await;
    b.wait_text("[data-count=dead]", "1", WAIT).await;
    // Pause first, so the replayed event waits in the outbox where the test can see it.
    b.click("#wf-pause").await;
    b.find("#wf-resume").await;
    b.click(&format!("details[data-event='{id}'] summary"))
        .await;
    let opened = b.text(&format!("details[data-event='{id}']")).await;
    assert!(
        opened.contains("contact"),
        "the failed step and its error: {opened}"
    );
    b.screenshot("08-dead-letter").await;
    b.click(&format!("button.replay[data-event='{id}']")).await;
    b.wait_text("#flash", "Replayed", WAIT).await;
    assert_eq!(store.get_event(&id).unwrap().state, EventState::Pending);
    b.screenshot("09-replayed").await;

    // The admin pages: users and the audit log, which recorded what was done above.
    b.click("a[data-nav=users]").await;
    b.wait_text("#main table", "ada", WAIT).await;
    b.screenshot("10-users").await;
    assert!(!b.source().await.contains(PASSWORD));
    b.click("a[data-nav=audit]").await;
    let audit = b.wait_text("#main table", "replay", WAIT).await;
    assert!(audit.contains("acme"), "{audit}");
    b.screenshot("11-audit-log").await;

    // No secret reached any page the test saw.
    let html = b.source().await;
    assert!(!html.contains(&token) && !html.contains(PASSWORD));
}

/// What goes wrong is shown as the API says it: a Save & Test that fails shows the error, its
/// fix and the report, and "Save anyway" keeps the connection; an uploaded certificate is read
/// in the browser and checked by the server; a member sees no admin action, and what the API
/// refuses them is shown with the rule that refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_show_the_apis_message_and_fix_and_a_member_sees_no_admin_action() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let inst = support::install();
    let h = sim().await;
    for (name, role) in [("ada", "admin"), ("pat", "member")] {
        let pw = inst.file(&format!("{name}.pw"), PASSWORD);
        inst.ok(&[
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-file",
            pw.to_str().unwrap(),
        ])
        .await;
    }
    inst.write_workflow(
        "incident-contact.toml",
        &workflow(&h.sim.directory.default_directory_id()),
    );
    let db = inst.path("warehouse.db");
    let server = start_server(&inst, &[]).await;

    b.goto(&server.url).await;
    b.fill("#login-user", "ada").await;
    b.fill("#login-password", "not the password").await;
    b.click("#login-submit").await;
    b.wait_text("#login-result", "wrong user name or password", WAIT)
        .await;
    b.fill("#login-password", PASSWORD).await;
    b.click("#login-submit").await;
    b.wait_text("#who-name", "ada (admin)", WAIT).await;

    // A wrong token: not saved, the report and the fix are shown, then "Save anyway".
    b.click("#add-connection").await;
    b.fill("#conn-name", "wrong").await;
    b.fill("#conn-url", &h.base_url).await;
    b.click("input[name=auth][value=token]").await;
    b.fill("#conn-token", "not-the-brand-token").await;
    b.fill("#conn-destination", &format!("sqlite:{}", db.display()))
        .await;
    b.click("#conn-save").await;
    let err = b
        .wait_text("#conn-result .msg.error", "Fix:", Duration::from_secs(60))
        .await;
    assert!(err.contains("wrong"), "{err}");
    b.find("#conn-save-anyway").await;
    b.screenshot("20-save-and-test-failed").await;
    let listed = inst.run(&["connection", "list"]).await.all();
    assert!(!listed.contains("wrong"), "not saved: {listed}");
    b.click("#conn-save-anyway").await;
    b.wait_text(
        "#conn-result",
        "Saved “wrong” anyway",
        Duration::from_secs(60),
    )
    .await;
    let listed = inst.ok(&["connection", "list"]).await;
    assert!(listed.contains("wrong"), "saved anyway: {listed}");

    // Advanced: the files chosen are read in the browser and checked by the server.
    b.click("a[data-nav=connections]").await;
    b.click("#add-connection").await;
    b.fill("#conn-name", "mtls").await;
    b.fill("#conn-url", &h.base_url).await;
    b.click("input[name=auth][value=advanced]").await;
    b.fill("#conn-client-id", "client").await;
    b.fill("#conn-client-secret", "secret").await;
    let cert = inst.file("client.pem", "this is not a certificate\n");
    let key = inst.file("client.key", "nor is this a key\n");
    b.upload("#conn-cert", &cert).await;
    b.upload("#conn-key", &key).await;
    b.fill("#conn-destination", &format!("sqlite:{}", db.display()))
        .await;
    b.click("#conn-save").await;
    let err = b
        .wait_text("#conn-result .msg.error", "certificate", WAIT)
        .await;
    b.screenshot("21-advanced-bad-certificate").await;
    assert!(
        !err.contains("The server answered"),
        "the API's own message: {err}"
    );
    b.resize(400, 900).await;
    b.screenshot("22-add-connection-400px").await;
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth",
            json!([]),
        )
        .await;
    assert_eq!(overflow, false, "the form fits 400 px");
    b.resize(1280, 900).await;

    // Accounts: link a ServiceNow account (basic), test it, rename it.
    let sn =
        xmbridge_test_kit::sim::servicenow(xmbridge_sim::servicenow::SnConfig::default()).await;
    let creds: serde_json::Value = reqwest::get(format!("{}/_sim/credentials", sn.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sn_user = creds["integration_user"].as_str().unwrap().to_string();
    let sn_password = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!(sn_user))
        .unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    b.click("a[data-nav=accounts]").await;
    b.find("#acct-form").await;
    b.fill("#acct-name", "sn-ops").await;
    b.click("input[name=acct-system][value=servicenow]").await;
    b.fill("#acct-instance", &sn.base_url).await;
    b.fill("#acct-user", &sn_user).await;
    b.fill("#acct-password", &sn_password).await;
    b.click("#acct-link").await;
    b.wait_text("#flash", "Linked “sn-ops”", WAIT).await;
    b.click("tr[data-account=sn-ops] button[aria-label='Test sn-ops']")
        .await;
    b.wait_text("#acct-result .msg.ok", "works", Duration::from_secs(30))
        .await;
    b.click("tr[data-account=sn-ops] button[aria-label='Rename sn-ops']")
        .await;
    b.fill("tr[data-account=sn-ops] form input", "sn-service-desk")
        .await;
    b.click("tr[data-account=sn-ops] form button[type=submit]")
        .await;
    b.wait_text("#flash", "Renamed “sn-ops” to “sn-service-desk”", WAIT)
        .await;
    b.find("tr[data-account=sn-service-desk]").await;
    b.screenshot("25-accounts").await;
    assert!(!b.source().await.contains(&sn_password));

    // Sign out; the member signs in.
    b.click("#logout").await;
    b.fill("#login-user", "pat").await;
    b.fill("#login-password", PASSWORD).await;
    b.click("#login-submit").await;
    b.wait_text("#who-name", "pat (member)", WAIT).await;
    assert!(
        !b.exists("#add-connection").await,
        "members add no connection"
    );
    for admin in ["a[data-nav=users]", "a[data-nav=audit]"] {
        let shown = b
            .execute(
                "return document.querySelector(arguments[0]).offsetParent !== null",
                json!([admin]),
            )
            .await;
        assert_eq!(shown, false, "{admin} is hidden from a member");
    }
    b.click("a[href='#/connections/wrong']").await;
    b.wait_text("#main h1", "wrong", WAIT).await;
    assert!(!b.exists("#sync-now").await && !b.exists("#sched-save").await);
    b.screenshot("23-member-connection").await;
    // A workflow owned by ada: the API refuses pat's pause and the page says which rule.
    b.click("a[data-nav=workflows]").await;
    b.click("a[href='#/workflows/incident-contact']").await;
    b.click("#wf-pause").await;
    let refused = b
        .wait_text("#wf-result .msg.error", "owner or an admin", WAIT)
        .await;
    assert!(refused.contains("rule"), "{refused}");
    b.screenshot("24-member-refused").await;

    // The operator removes pat: the session ends, and the next step shows the sign-in page
    // saying so instead of a broken page.
    inst.ok(&["user", "remove", "pat"]).await;
    b.click("a[data-nav=connections]").await;
    b.wait_text("#login-result", "Your session has ended", WAIT)
        .await;
    assert!(b.exists("#login-user").await);
}

/// The recommended path: a Standard (OAuth) connection, saved anyway before it is authorized,
/// then "Authorize in Qualtrics" takes this tab to the provider and back through the server's
/// `/oauth/callback`, and the test passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_connection_is_authorized_in_the_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let inst = support::install();
    let h = sim().await;
    let pw = inst.file("ada.pw", PASSWORD);
    inst.ok(&[
        "user",
        "add",
        "ada",
        "--role",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .await;
    // The simulator's authorization-code client, auto-approved for its brand admin (a person
    // would click "Allow" at Qualtrics).
    let http = reqwest::Client::new();
    let creds: serde_json::Value = http
        .get(format!("{}/_sim/credentials", h.base_url))
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
    let r = http
        .post(format!("{}/_sim/oauth/auto-approve", h.base_url))
        .json(&json!({"user": "admin"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let secret = app["client_secret"].as_str().unwrap().to_string();
    let server = start_server(&inst, &[]).await;

    b.goto(&server.url).await;
    b.fill("#login-user", "ada").await;
    b.fill("#login-password", PASSWORD).await;
    b.click("#login-submit").await;
    b.click("#add-connection").await;
    b.fill("#conn-name", "std").await;
    b.fill("#conn-url", &h.base_url).await;
    // Standard is the default choice.
    assert_eq!(
        b.property("input[name=auth][value=standard]", "checked")
            .await,
        true
    );
    b.fill("#conn-client-id", app["client_id"].as_str().unwrap())
        .await;
    b.fill("#conn-client-secret", &secret).await;
    b.fill(
        "#conn-destination",
        &format!("sqlite:{}", inst.path("std.db").display()),
    )
    .await;
    b.click("#conn-save").await;
    b.click("#conn-save-anyway").await;
    b.wait_text(
        "#conn-result",
        "Saved “std” anyway",
        Duration::from_secs(60),
    )
    .await;
    b.click("#conn-open").await;
    b.click("#conn-authorize").await;
    // Qualtrics approves and sends the browser back to the server's callback page.
    let page = b
        .wait_text("body", "authorized", Duration::from_secs(30))
        .await;
    assert!(
        b.url()
            .await
            .starts_with(&format!("{}/oauth/callback", server.url)),
        "{page}"
    );
    b.screenshot("30-oauth-callback").await;
    b.click("a[href='/']").await;
    b.click("a[href='#/connections/std']").await;
    b.click("#conn-test").await;
    let report = b
        .wait_text("#test-report", "Test", Duration::from_secs(60))
        .await;
    assert!(report.starts_with("Test: ok"), "{report}");
    b.screenshot("31-standard-authorized").await;
    assert!(!b.source().await.contains(&secret));
}
