//! `xmbridge user …` and `xmbridge connection set` end to end: the real binary and a real state
//! store in a temporary XMBRIDGE_HOME. Passwords and tokens must never show up in any output,
//! and only as hashes (or sealed) in the state store.

use std::path::Path;

use serde_json::Value;
use xmbridge_service::users::Users;

use crate::support::{self, Install, Run};

const LEE_PW: &str = "lee's long password 1";
const SAM_PW: &str = "sam-secret-password-2";
const DEST_PW: &str = "Pg-Destination-Pw-93";

/// Runs with extra environment variables (the harness clears every XMBRIDGE_* first).
async fn run_env(inst: &Install, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = inst.cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    Run(tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap())
}

/// Everything under XMBRIDGE_HOME, as text: the state store, its WAL, the key file.
fn home_bytes(inst: &Install) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(inst.home()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    all
}

fn audit(inst: &Install) -> Vec<Value> {
    let users = Users::open(&inst.home().join("state.db")).unwrap();
    users
        .audit(100)
        .unwrap()
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

fn password_file(inst: &Install, name: &str, pw: &str) -> String {
    inst.file(name, &format!("{pw}\n"))
        .to_str()
        .unwrap()
        .to_string()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} shows a secret:\n{text}");
    }
}

#[tokio::test]
async fn users_tokens_and_the_last_admin() {
    let inst = support::install();
    let lee_file = password_file(&inst, "lee.pw", LEE_PW);
    let mut outputs = String::new();

    let r = inst
        .run(&[
            "user",
            "add",
            "lee",
            "--role",
            "admin",
            "--password-file",
            &lee_file,
        ])
        .await;
    r.ok();
    outputs.push_str(&r.all());
    assert!(
        r.stdout().contains("added user 'lee' (admin)"),
        "{}",
        r.all()
    );

    // A password from the environment.
    let r = run_env(
        &inst,
        &["user", "add", "sam", "--role", "member"],
        &[("XMBRIDGE_USER_PASSWORD", SAM_PW)],
    )
    .await;
    r.ok();
    outputs.push_str(&r.all());

    let list = inst.json(&["user", "list", "--json"]).await;
    let roles: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_string(),
                u["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            ("lee".to_string(), "admin".to_string()),
            ("sam".to_string(), "member".to_string())
        ]
    );
    let table = inst.ok(&["user", "list"]).await;
    assert!(table.contains("sam") && table.contains("member"), "{table}");

    // The stored passwords verify, and are argon2id hashes.
    let users = Users::open(&inst.home().join("state.db")).unwrap();
    users
        .verify_password("sam", &SAM_PW.to_string().into())
        .unwrap();
    assert!(
        users
            .verify_password("sam", &LEE_PW.to_string().into())
            .is_err()
    );

    // A duplicate name.
    let r = inst
        .run(&[
            "user",
            "add",
            "sam",
            "--role",
            "admin",
            "--password-file",
            &lee_file,
        ])
        .await;
    r.fails(1, "already exists");

    // A new password.
    let new_file = password_file(&inst, "sam.new", "sam's brand new password");
    let r = inst
        .run(&["user", "passwd", "sam", "--password-file", &new_file])
        .await;
    r.ok();
    outputs.push_str(&r.all());
    users
        .verify_password("sam", &"sam's brand new password".to_string().into())
        .unwrap();
    assert!(
        users
            .verify_password("sam", &SAM_PW.to_string().into())
            .is_err()
    );

    // A token: alone on stdout, the id and "shown only once" on stderr.
    let r = inst
        .run(&["user", "token", "sam", "--expires", "30d"])
        .await;
    r.ok();
    let token = r.stdout().trim().to_string();
    assert!(
        token.starts_with("xmb_") && token.len() == 68,
        "{}",
        r.all()
    );
    assert!(r.stderr().contains("shown only once"), "{}", r.stderr());
    let (user, info) = users.authenticate_token(&token).unwrap();
    assert_eq!(user.name, "sam");
    assert!(r.stderr().contains(&info.id), "{}", r.stderr());
    let expires = info.expires_at.unwrap() - info.created_at;
    assert_eq!(expires.num_days(), 30);

    let tokens = inst.json(&["user", "tokens", "sam", "--json"]).await;
    assert_eq!(tokens[0]["id"], info.id.as_str());
    assert_eq!(tokens[0]["revoked"], false);
    assert!(!tokens[0]["last_used_at"].is_null());
    let listed = inst.ok(&["user", "tokens", "sam"]).await;
    assert!(
        listed.contains(&info.id) && listed.contains("active"),
        "{listed}"
    );
    assert_no_secret("user tokens", &listed, &[&token[4..]]);

    // Revoking needs the right user; then the token stops working.
    inst.run(&["user", "token", "lee", "--revoke", &info.id])
        .await
        .fails(1, "has no API token");
    inst.ok(&["user", "token", "sam", "--revoke", &info.id])
        .await;
    assert!(users.authenticate_token(&token).is_err());
    let listed = inst.ok(&["user", "tokens", "sam"]).await;
    assert!(listed.contains("revoked"), "{listed}");

    // The last admin stays; a member goes, with their tokens.
    let (_, second) = users.create_token("sam", None).unwrap();
    inst.run(&["user", "remove", "lee"])
        .await
        .fails(1, "last admin");
    inst.ok(&["user", "remove", "sam"]).await;
    assert!(users.authenticate_token(second_secret(&second)).is_err());
    inst.run(&["user", "remove", "sam"])
        .await
        .fails(1, "no user named 'sam'");
    let list = inst.json(&["user", "list", "--json"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Nothing printed or stored shows a password or the token.
    let secrets = [LEE_PW, SAM_PW, "sam's brand new password", &token[4..]];
    assert_no_secret("the commands", &outputs, &secrets);
    drop(users);
    assert_no_secret("XMBRIDGE_HOME", &home_bytes(&inst), &secrets);

    // Every change is in the audit log, made on the CLI, without secrets.
    let log = audit(&inst);
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "user.add",
        "user.passwd",
        "token.create",
        "token.revoke",
        "user.remove",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(log.iter().all(|e| e["via"] == "cli"), "{log:?}");
    assert_eq!(log[0]["action"], "user.remove");
    assert_no_secret("the audit log", &format!("{log:?}"), &secrets);
}

fn second_secret(s: &xmbridge_auth::SecretString) -> &str {
    use xmbridge_auth::ExposeSecret as _;
    s.expose_secret()
}

#[tokio::test]
async fn bad_roles_short_passwords_and_missing_passwords_are_refused() {
    let inst = support::install();
    let file = password_file(&inst, "ok.pw", LEE_PW);
    let (code, err) = inst
        .fails(&[
            "user",
            "add",
            "lee",
            "--role",
            "owner",
            "--password-file",
            &file,
        ])
        .await;
    assert_eq!(code, 2);
    assert!(err.contains("admin") && err.contains("member"), "{err}");

    let short = password_file(&inst, "short.pw", "tiny-pw");
    let r = inst
        .run(&[
            "user",
            "add",
            "lee",
            "--role",
            "admin",
            "--password-file",
            &short,
        ])
        .await;
    r.fails(2, "at least 12 characters");
    assert_no_secret("a refused password", &r.all(), &["tiny-pw"]);

    // No file, no environment, no terminal: it says how to give one.
    let r = inst.run(&["user", "add", "lee", "--role", "admin"]).await;
    r.fails(2, "--password-file");
    assert!(
        r.stderr().contains("XMBRIDGE_USER_PASSWORD"),
        "{}",
        r.stderr()
    );

    inst.run(&[
        "user",
        "add",
        "lee smith",
        "--role",
        "admin",
        "--password-file",
        &file,
    ])
    .await
    .fails(2, "invalid user name");
    inst.run(&["user", "token", "nobody"])
        .await
        .fails(1, "no user named 'nobody'");
    inst.run(&["user", "token", "nobody", "--expires", "5m"])
        .await
        .fails(2, "--expires");
    let list = inst.ok(&["user", "list"]).await;
    assert!(list.contains("no users yet"), "{list}");
    assert!(audit(&inst).is_empty());
}

/// A Qualtrics connection that is only stored (`connection set` does not call Qualtrics).
async fn stored_connection(inst: &Install, name: &str) {
    let token = inst.file("q.token", "sim-token\n");
    inst.ok(&[
        "connection",
        "add",
        "qualtrics",
        name,
        "--no-test",
        "--url",
        "http://127.0.0.1:9",
        "--api-token-file",
        token.to_str().unwrap(),
    ])
    .await;
}

#[tokio::test]
async fn connection_set_seals_the_destination_password() {
    let inst = support::install();
    stored_connection(&inst, "acme").await;
    let url = format!("postgres://loader:{DEST_PW}@127.0.0.1:5432/warehouse");
    let r = inst
        .run(&[
            "connection",
            "set",
            "acme",
            "--destination",
            &url,
            "--every",
            "15m",
            "--tables",
            "survey,survey_response",
            "--schema",
            "xm",
        ])
        .await;
    r.ok();
    assert_no_secret("connection set", &r.all(), &[DEST_PW]);
    assert!(r.stderr().contains("--password-file"), "{}", r.stderr());
    assert!(
        r.stdout()
            .contains("postgres://loader@127.0.0.1:5432/warehouse (password sealed in the vault)"),
        "{}",
        r.stdout()
    );

    let show = inst.ok(&["connection", "show", "acme"]).await;
    assert_no_secret("connection show", &show, &[DEST_PW]);
    for line in [
        "destination:  postgres://loader@127.0.0.1:5432/warehouse (password sealed in the vault)",
        "schema:       xm",
        "tables:       survey, survey_response",
        "schedule:     every 15m",
        "destination password (set",
    ] {
        assert!(show.contains(line), "{line:?} missing:\n{show}");
    }

    let j = inst.json(&["connection", "show", "acme", "--json"]).await;
    assert_no_secret("connection show --json", &j.to_string(), &[DEST_PW]);
    assert_eq!(
        j["sync"]["destination"],
        "postgres://loader@127.0.0.1:5432/warehouse"
    );
    assert_eq!(j["sync"]["has_password"], true);
    assert_eq!(j["sync"]["every"], "15m");
    assert_eq!(j["sync"]["tables"][1], "survey_response");
    assert!(
        j["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["field"] == "destination_password"),
        "{j}"
    );

    // Options not given keep their value.
    inst.ok(&["connection", "set", "acme", "--paused"]).await;
    let show = inst.ok(&["connection", "show", "acme"]).await;
    assert!(show.contains("schedule:     every 15m, paused"), "{show}");
    assert!(
        show.contains("tables:       survey, survey_response"),
        "{show}"
    );

    // A password from a file replaces the sealed one; still never shown or stored in clear.
    let pw2 = "Second-Pg-Password-77";
    let f = password_file(&inst, "pg.pw", pw2);
    inst.ok(&[
        "connection",
        "set",
        "acme",
        "--destination",
        "postgres://loader@127.0.0.1:5432/warehouse",
        "--password-file",
        &f,
        "--active",
    ])
    .await;
    let show = inst.ok(&["connection", "show", "acme"]).await;
    assert!(show.contains("schedule:     every 15m\n"), "{show}");
    assert!(show.contains("password sealed in the vault"), "{show}");

    assert_no_secret("XMBRIDGE_HOME", &home_bytes(&inst), &[DEST_PW, pw2]);
    let log = audit(&inst);
    assert_eq!(log[0]["action"], "connection.set");
    assert_eq!(log[0]["via"], "cli");
    assert_eq!(log[0]["detail"]["has_password"], true);
    assert_no_secret("the audit log", &format!("{log:?}"), &[DEST_PW, pw2]);

    // Removing the connection removes its sync set-up.
    let r = inst.ok(&["connection", "remove", "acme"]).await;
    assert!(r.contains("sync set-up"), "{r}");
    stored_connection(&inst, "acme").await;
    let show = inst.ok(&["connection", "show", "acme"]).await;
    assert!(show.contains("sync:         not set up"), "{show}");
    assert!(!show.contains("destination password"), "{show}");
    assert_eq!(audit(&inst)[0]["action"], "connection.remove");
}

#[tokio::test]
async fn connection_set_refuses_bad_schedules_tables_and_destinations() {
    let inst = support::install();
    stored_connection(&inst, "acme").await;
    let sqlite = format!("sqlite:{}", inst.path("dest.db").display());

    let (code, err) = inst
        .fails(&[
            "connection",
            "set",
            "acme",
            "--destination",
            &sqlite,
            "--every",
            "10m",
        ])
        .await;
    assert_eq!(code, 2);
    assert!(err.contains("5m 15m 30m 1h 2h 3h 6h 8h 12h 24h"), "{err}");

    let (code, err) = inst
        .fails(&[
            "connection",
            "set",
            "acme",
            "--destination",
            &sqlite,
            "--tables",
            "survey,surveys_typo",
        ])
        .await;
    assert_eq!(code, 2);
    assert!(err.contains("unknown table \"surveys_typo\""), "{err}");
    assert!(err.contains("survey_response"), "{err}");
    // `ticket` is in Fivetran's schema but no sync fills it: refused with the reason.
    inst.run(&[
        "connection",
        "set",
        "acme",
        "--destination",
        &sqlite,
        "--tables",
        "ticket",
    ])
    .await
    .fails(2, "table \"ticket\" cannot be selected")
    .fails(2, "describes no ticket export");

    inst.run(&["connection", "set", "acme", "--every", "1h"])
        .await
        .fails(2, "has no destination yet");
    inst.run(&[
        "connection",
        "set",
        "acme",
        "--destination",
        "mysql://127.0.0.1/x",
    ])
    .await
    .fails(2, "unknown destination");
    inst.run(&["connection", "set", "nope", "--destination", &sqlite])
        .await
        .fails(1, "no connection named 'nope'");
    inst.run(&["connection", "set", "acme"])
        .await
        .fails(2, "nothing to change");

    // Nothing refused was stored.
    let show = inst.ok(&["connection", "show", "acme"]).await;
    assert!(show.contains("sync:         not set up"), "{show}");

    // A relative SQLite path is stored absolute (serve runs elsewhere).
    inst.ok(&[
        "connection",
        "set",
        "acme",
        "--destination",
        "sqlite:rel.db",
        "--every",
        "1h",
    ])
    .await;
    let show = inst.ok(&["connection", "show", "acme"]).await;
    let abs = inst.work_dir().join("rel.db");
    assert!(
        show.contains(&format!("destination:  sqlite:{}", abs.display())),
        "{show}"
    );
    assert!(Path::new(&abs).is_absolute());
}

// ---- role rules on the command line -------------------------------------------------------------

/// A workflow owned by `owner` (its step's account need not exist to be saved).
fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn workflow_toml(owner: &str) -> String {
    format!(
        r#"
[[workflow]]
name = "detractors"
owner = "{owner}"
condition = "response.values.QID1 <= 6"

[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"

[[workflow.step]]
name = "incident"
action = "servicenow.create-incident"
account = "sn-prod"
[workflow.step.inputs]
short_description = "'Detractor on {{{{ survey.name }}}}'"
correlation_id = "response.id"
"#
    )
}

/// lee (admin), sam and kim (members).
async fn three_users(inst: &Install) {
    let pw = password_file(inst, "users.pw", LEE_PW);
    for (name, role) in [("lee", "admin"), ("sam", "member"), ("kim", "member")] {
        inst.ok(&["user", "add", name, "--role", role, "--password-file", &pw])
            .await;
    }
}

#[tokio::test]
async fn only_admins_link_brand_accounts() {
    let inst = support::install();
    three_users(&inst).await;
    let sf =
        xmbridge_test_kit::sim::salesforce(xmbridge_sim::salesforce::SalesforceConfig::default())
            .await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", sf.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = inst.file("sf.secret", creds["client_secret"].as_str().unwrap());
    let token_url = sf.token_url();
    let link = |name: &'static str, user: &'static str| {
        vec![
            "account".to_string(),
            "link".into(),
            name.into(),
            "--salesforce".into(),
            "--server-to-server".into(),
            "--token-url".into(),
            token_url.clone(),
            "--client-id".into(),
            creds["client_id"].as_str().unwrap().into(),
            "--client-secret-file".into(),
            secret.to_str().unwrap().into(),
            "--brand".into(),
            "--as".into(),
            user.into(),
        ]
    };

    let a = link("sf-brand", "sam");
    let r = inst.run(&argv(&a)).await;
    r.fails(1, "only an admin may link a brand account");
    assert!(r.stderr().contains("sam is a member"), "{}", r.stderr());
    let listed = inst.ok(&["account", "list", "--as", "sam"]).await;
    assert!(!listed.contains("sf-brand"), "{listed}");

    let a = link("sf-brand", "lee");
    let out = inst.ok(&argv(&a)).await;
    assert!(out.contains("as a brand account"), "{out}");
    inst.ok(&[
        "account", "share", "sf-brand", "--with", "sam", "--as", "lee",
    ])
    .await;
    let listed = inst.ok(&["account", "list", "--as", "sam"]).await;
    assert!(listed.contains("sf-brand"), "{listed}");

    // The operator acting --as a user is recorded as such.
    let log = audit(&inst);
    assert_eq!(log[0]["action"], "account.share");
    assert_eq!(log[0]["via"], "cli-as:lee");
    assert_eq!(log[1]["action"], "account.link");
    assert_eq!(log[1]["detail"]["brand"], true);
    assert!(!format!("{log:?}").contains(creds["client_secret"].as_str().unwrap()));
}

#[tokio::test]
async fn workflow_ownership_changes_only_by_its_owner_or_an_admin() {
    let inst = support::install().user("kim");
    three_users(&inst).await;
    let by_kim = inst.file("by-kim.toml", &workflow_toml("kim"));
    let by_sam = inst.file("by-sam.toml", &workflow_toml("sam"));
    let by_lee = inst.file("by-lee.toml", &workflow_toml("lee"));
    inst.ok(&["workflow", "add", "--file", by_kim.to_str().unwrap()])
        .await;

    // sam (a member) takes kim's workflow by saving it with owner = "sam": refused.
    let r = inst
        .run(&[
            "workflow",
            "add",
            "--file",
            by_sam.to_str().unwrap(),
            "--replace",
            "--as",
            "sam",
        ])
        .await;
    r.fails(1, "only its owner or an admin may");
    let list = inst.json(&["workflow", "list", "--json"]).await;
    assert_eq!(list[0]["owner"], "kim");
    // An edit that keeps the owner stays allowed (a collaborator's edit).
    inst.ok(&[
        "workflow",
        "add",
        "--file",
        by_kim.to_str().unwrap(),
        "--replace",
        "--as",
        "sam",
    ])
    .await;

    let binding = |st: Value| {
        (
            st["binding_valid"].as_bool().unwrap(),
            st["creator"].as_str().unwrap_or("").to_string(),
        )
    };
    let status = || inst.json(&["workflow", "status", "detractors", "--json"]);
    assert_eq!(
        binding(status().await),
        (true, "kim".into()),
        "same meaning: no edit"
    );
    // A collaborator's edit that changes the meaning drops kim's binding, recorded under sam
    // at once (not under whoever starts the next runner), until kim re-authorizes.
    let edited = inst.file(
        "by-kim-edited.toml",
        &workflow_toml("kim").replace("<= 6", "<= 4"),
    );
    let out = inst
        .ok(&[
            "workflow",
            "add",
            "--file",
            edited.to_str().unwrap(),
            "--replace",
            "--as",
            "sam",
        ])
        .await;
    assert!(
        out.contains("binding is dropped until the owner re-authorizes"),
        "{out}"
    );
    let st = status().await;
    assert_eq!(binding(st.clone()), (false, "kim".into()), "{st}");
    assert_eq!(st["last_editor"], "sam");
    inst.run(&[
        "workflow",
        "resume",
        "detractors",
        "--reauthorize",
        "--as",
        "sam",
    ])
    .await
    .fails(2, "only the workflow's owner kim can re-authorize");
    inst.ok(&[
        "workflow",
        "resume",
        "detractors",
        "--reauthorize",
        "--as",
        "kim",
    ])
    .await;
    assert_eq!(binding(status().await), (true, "kim".into()));

    // transfer: not by a member who does not own it, nor to an unknown user.
    inst.run(&[
        "workflow",
        "transfer",
        "detractors",
        "--to",
        "sam",
        "--as",
        "sam",
    ])
    .await
    .fails(1, "only its owner or an admin may");
    inst.run(&[
        "workflow",
        "transfer",
        "detractors",
        "--to",
        "nobody",
        "--as",
        "kim",
    ])
    .await
    .fails(2, "no user named 'nobody'");
    inst.run(&["workflow", "transfer", "nope", "--to", "sam", "--as", "kim"])
        .await
        .fails(2, "nope");
    // By its owner.
    let out = inst
        .ok(&[
            "workflow",
            "transfer",
            "detractors",
            "--to",
            "sam",
            "--as",
            "kim",
        ])
        .await;
    assert!(out.contains("now belongs to sam (was kim)"), "{out}");
    // The binding follows the owner: sam's credentials now, which sam has not confirmed.
    assert!(
        out.contains("dropped until sam re-authorizes: xmbridge workflow resume detractors --reauthorize --as sam"),
        "{out}"
    );
    let list = inst.json(&["workflow", "list", "--json"]).await;
    assert_eq!(list[0]["owner"], "sam");
    assert_eq!(binding(status().await), (false, "sam".into()));
    inst.ok(&[
        "workflow",
        "resume",
        "detractors",
        "--reauthorize",
        "--as",
        "sam",
    ])
    .await;
    assert_eq!(binding(status().await), (true, "sam".into()));
    // By an admin, who may also take it through an edit.
    inst.ok(&[
        "workflow",
        "transfer",
        "detractors",
        "--to",
        "kim",
        "--as",
        "lee",
    ])
    .await;
    assert_eq!(
        inst.json(&["workflow", "list", "--json"]).await[0]["owner"],
        "kim"
    );
    inst.ok(&[
        "workflow",
        "add",
        "--file",
        by_lee.to_str().unwrap(),
        "--replace",
        "--as",
        "lee",
    ])
    .await;
    assert_eq!(
        inst.json(&["workflow", "list", "--json"]).await[0]["owner"],
        "lee"
    );

    let log = audit(&inst);
    assert_eq!(log[0]["action"], "workflow.replace");
    assert_eq!(log[0]["detail"]["previous_owner"], "kim");
    assert_eq!(log[0]["via"], "cli-as:lee");
    let transfers: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "workflow.transfer")
        .collect();
    assert_eq!(transfers.len(), 2, "{log:?}");
    assert_eq!(transfers[0]["detail"]["from"], "sam");
    assert_eq!(transfers[0]["detail"]["to"], "kim");
    assert_eq!(transfers[0]["via"], "cli-as:lee");
    assert_eq!(transfers[1]["via"], "cli-as:kim");
}
