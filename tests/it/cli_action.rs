//! `xmbridge action` end to end: the real binary, a stored connection, the simulator over loopback.

use std::process::Output;
use xmbridge_sim::{SimConfig, SimHandle};

use crate::support;

async fn sim() -> SimHandle {
    let cfg = SimConfig {
        contacts: 30,
        surveys: 2,
        responses: 10,
        ..SimConfig::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn list_shows_every_action_as_text_and_json() {
    let i = support::install();
    let text = i.ok(&["action", "list"]).await;
    assert!(text.lines().any(|l| l.starts_with("create-distribution")
        && l.contains("Create Distribution")
        && l.contains("survey_id*")));
    let all = i.json(&["action", "list", "--json"]).await;
    let all = all.as_array().unwrap();
    let qualtrics = all.iter().filter(|a| a["system"] == "Qualtrics").count();
    assert_eq!(qualtrics, 24, "the spoke's 20 and four extras");
    let c = all
        .iter()
        .find(|a| a["name"] == "create-contact-in-mailing-list")
        .unwrap();
    assert_eq!(c["system"], "Qualtrics");
    assert_eq!(c["category"], "Mailing List Management");
    assert!(
        c["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "mailing_list_id" && i["required"] == true)
    );
    let help = i.ok(&["action", "--help"]).await;
    assert!(help.contains("look-up-contact-distribution-response-histories-stream"));
    assert!(help.contains("embeddedData.tier=gold"));
}

#[tokio::test]
async fn read_and_write_actions_through_a_stored_connection() {
    let h = sim().await;
    let i = support::install();
    i.connect(&h, "acme").await;

    // The only connection is used without --connection; the default directory is discovered
    // by `connection test`, here given with --directory.
    let dir = h.sim.directory.default_directory_id();
    let surveys = i.json(&["action", "look-up-surveys"]).await;
    assert_eq!(surveys.as_array().unwrap().len(), 2);
    assert_eq!(surveys[0]["id"], h.sim.surveys[0].id.as_str());

    let created = i
        .json(&[
            "action",
            "create-contact",
            "--connection",
            "acme",
            "--directory",
            &dir,
            "--input",
            "email=ana.ruiz@example.test",
            "--input",
            "firstName=Ana",
            "--input",
            "phone=0044123",
            "--input",
            "embeddedData.tier=gold",
            "--input",
            "embeddedData.since=2019",
            "--delivery-key",
            "crm-4711",
        ])
        .await;
    assert_eq!(created["created"], true);
    let cid = created["contactId"].as_str().unwrap().to_string();

    // The simulator has the contact, with text values kept as typed and nested embedded data.
    let found = i
        .json(&[
            "action",
            "look-up-contact-by-email",
            "--inputs-json",
            &format!(r#"{{"directory_id":"{dir}","email":"ANA.RUIZ@example.test"}}"#),
        ])
        .await;
    assert_eq!(found["contactId"], cid.as_str());
    assert_eq!(found["contact"]["phoneNumber"], "0044123");
    assert_eq!(found["contact"]["embeddedData"]["tier"], "gold");
    assert_eq!(found["contact"]["embeddedData"]["since"], "2019");

    // Inputs from a file (how secrets stay off the command line).
    let file = i.path("inputs.json");
    std::fs::write(
        &file,
        format!(r#"{{"directory_id":"{dir}","email":"ana.ruiz@example.test"}}"#),
    )
    .unwrap();
    let from_file = i
        .json(&[
            "action",
            "look-up-contact-by-email",
            "--inputs-json",
            &format!("@{}", file.display()),
        ])
        .await;
    assert_eq!(from_file["contactId"], cid.as_str());

    // Same delivery key again: nothing new.
    let again = i
        .json(&[
            "action",
            "create-contact",
            "--directory",
            &dir,
            "--input",
            "email=ana.ruiz@example.test",
            "--delivery-key",
            "crm-4711",
        ])
        .await;
    assert_eq!(again["created"], false);
    assert_eq!(again["contactId"], cid.as_str());
    let everyone = i
        .json(&[
            "action",
            "look-up-contacts-stream",
            "--directory",
            &dir,
            "--input",
            "limit=1000",
        ])
        .await;
    assert_eq!(everyone.as_array().unwrap().len(), 31);

    // An API refusal: exit 1, Qualtrics' message on stderr, nothing on stdout.
    let out = i
        .run(&[
            "action",
            "update-contact",
            "--directory",
            &dir,
            "--input",
            "contact_id=CID_000000000000000",
            "--input",
            "firstName=X",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("CID_000000000000000"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn bad_inputs_exit_2_with_a_clear_message() {
    let h = sim().await;
    let i = support::install();
    i.connect(&h, "acme").await;

    let out = i.run(&["action", "look-up-contact-by-email"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("input `email`: is required"),
        "{}",
        stderr(&out)
    );

    let out = i
        .run(&["action", "look-up-surveys", "--input", "colour=red"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`colour`") && stderr(&out).contains("name, active, limit"),
        "{}",
        stderr(&out)
    );

    let out = i
        .run(&["action", "look-up-surveys", "--input", "limit"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));

    let out = i
        .run(&["action", "look-up-surveys", "--input", "limit=lots"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`limit`"), "{}", stderr(&out));

    let out = i.run(&["action", "send-fax"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no action 'send-fax'"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn missing_connections_are_named() {
    let h = sim().await;
    let i = support::install();

    let out = i.run(&["action", "look-up-surveys"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no Qualtrics connection stored")
            && stderr(&out).contains("xmbridge connection add qualtrics"),
        "{}",
        stderr(&out)
    );

    i.connect(&h, "acme").await;
    i.connect(&h, "other").await;
    let out = i.run(&["action", "look-up-surveys"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("acme, other") && stderr(&out).contains("--connection"),
        "{}",
        stderr(&out)
    );
    let out = i
        .run(&["action", "look-up-surveys", "--connection", "prod"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no Qualtrics connection 'prod'"),
        "{}",
        stderr(&out)
    );
    i.ok(&["action", "look-up-surveys", "--connection", "other"])
        .await;
}

/// `xmbridge action` listed the Salesforce and ServiceNow actions and then refused to run them.
/// They run with a linked account the acting user owns or was granted (the rule a workflow step
/// follows); someone else's private account is refused with a fix that can work.
#[tokio::test]
async fn servicenow_actions_run_with_a_linked_account_the_user_may_use() {
    use serde_json::{Value, json};
    let i = support::install();
    let sn =
        xmbridge_test_kit::sim::servicenow(xmbridge_sim::servicenow::SnConfig::default()).await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", sn.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = creds["integration_user"].as_str().unwrap();
    let password = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!(user))
        .unwrap()["password"]
        .as_str()
        .unwrap();
    let pw = i.path("sn.pw");
    std::fs::write(&pw, password).unwrap();
    i.ok(&[
        "account",
        "link",
        "sn-pat",
        "--servicenow",
        "--instance-url",
        &sn.base_url,
        "--basic-user",
        user,
        "--password-file",
        pw.to_str().unwrap(),
        "--as",
        "pat",
    ])
    .await;

    let incident = |who: &'static str, account: Option<&'static str>| {
        let mut args = vec![
            "action",
            "servicenow.create-incident",
            "--as",
            who,
            "--input",
            "short_description=Printer on fire",
            "--delivery-key",
            "act-1",
        ];
        if let Some(a) = account {
            args.extend_from_slice(&["--account", a]);
        }
        args
    };
    let first = i.json(&incident("pat", Some("sn-pat"))).await;
    let sys_id = first["sys_id"].as_str().expect("a sys_id").to_string();
    // The user's only ServiceNow account is used without --account; the delivery key finds the
    // incident the first run created.
    let again = i.json(&incident("pat", None)).await;
    assert_eq!(again["sys_id"], json!(sys_id), "{again}");
    let rows: Value = reqwest::get(format!("{}/_sim/tables/incident", sn.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fired: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["short_description"] == "Printer on fire")
        .collect();
    assert_eq!(fired.len(), 1, "{rows}");

    // sam may not use pat's private account: the fix does not suggest sharing it (private
    // accounts cannot be shared) but what can work.
    let out = i.run(&incident("sam", Some("sn-pat"))).await;
    out.fails(2, "it is pat's private account, which cannot be shared");
    let err = out.stderr();
    assert!(!err.contains("account share"), "{err}");
    assert!(err.contains("--as sam"), "{err}");
    assert!(err.contains("workflow transfer WORKFLOW --to pat"), "{err}");
    i.run(&incident("sam", None))
        .await
        .fails(2, "user sam has no linked servicenow account");
    // A ServiceNow action takes an account, not a Qualtrics connection, and the other way round.
    i.run(&[
        "action",
        "servicenow.create-incident",
        "--connection",
        "acme",
        "--input",
        "short_description=x",
    ])
    .await
    .fails(2, "runs with a linked account (--account NAME)");
    i.run(&["action", "look-up-surveys", "--account", "sn-pat"])
        .await
        .fails(2, "runs on a connection (--connection NAME)");
}

/// A mistyped action name gets a suggestion, and an error that says its own fix is not followed
/// by clap's "try '--help'".
#[tokio::test]
async fn a_mistyped_action_gets_a_suggestion_and_no_help_footer() {
    let i = support::install();
    let out = i.run(&["action", "look-up-survey"]).await;
    out.fails(
        2,
        "no action 'look-up-survey'; did you mean 'look-up-surveys'?",
    );
    assert!(!out.stderr().contains("--help"), "{}", out.stderr());
    let out = i.run(&["action", "lookup-contact-by-email"]).await;
    out.fails(2, "did you mean 'look-up-contact-by-email'");
}
