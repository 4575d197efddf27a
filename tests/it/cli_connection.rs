//! `xmbridge connection …` end to end: the real binary, a real state store in a temporary
//! XMBRIDGE_HOME, and the Qualtrics simulator over loopback (plain HTTP and mutual TLS).

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use xmbridge_sim::{SimConfig, SimHandle};

use crate::support::{self, BIN, Install, Run};

async fn sim(cfg: SimConfig) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

fn small() -> SimConfig {
    SimConfig {
        surveys: 2,
        responses: 10,
        ..SimConfig::default()
    }
}

async fn admin(h: &SimHandle, client: &reqwest::Client, path: &str, body: Value) -> Value {
    let r = client
        .post(format!("{}{path}", h.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn credentials(h: &SimHandle, client: &reqwest::Client) -> Value {
    client
        .get(format!("{}/_sim/credentials", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A browser-like HTTP client (no redirects followed) and the simulator's authorization-code
/// client (id, secret), with auto-approve on for the brand admin.
async fn web_app(h: &SimHandle) -> (reqwest::Client, String, String) {
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let creds = credentials(h, &web).await;
    let app = oauth_client(&creds, "authorization_code", "");
    let id = app["client_id"].as_str().unwrap().to_string();
    let secret = app["client_secret"].as_str().unwrap().to_string();
    admin(
        h,
        &web,
        "/_sim/oauth/auto-approve",
        json!({"user": "admin"}),
    )
    .await;
    (web, id, secret)
}

fn oauth_client<'a>(creds: &'a Value, grant: &str, user: &str) -> &'a Value {
    creds["oauth_clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["grants"].as_array().unwrap().iter().any(|g| g == grant)
                && c["user"].as_str().is_none_or(|u| u.starts_with(user))
        })
        .unwrap_or_else(|| panic!("no {grant} client for {user} in {creds}"))
}

fn read_all(paths: &[PathBuf]) -> Vec<u8> {
    let mut all = Vec::new();
    for p in paths {
        if let Ok(b) = std::fs::read(p) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn token_mode_save_test_list_show_remove() {
    let h = sim(small()).await;
    let i = support::install();
    let token = h.sim.cfg.admin_token();
    let tf = i.file("token", &format!("{token}\n"));
    let url = h.base_url.clone();
    let r = i
        .run(&[
            "connection",
            "add",
            "qualtrics",
            "acme",
            "--url",
            &url,
            "--auth",
            "token",
            "--api-token-file",
            tf.to_str().unwrap(),
        ])
        .await;
    r.ok();
    assert!(
        r.stderr().contains("created a new master key"),
        "{}",
        r.stderr()
    );
    assert!(i.home().join("master.key").exists());
    // Save & Test in one step: the test's report, then the verdict.
    let out = r.stdout();
    assert!(out.contains("ok       transaction batches"), "{out}");
    assert!(
        out.contains("(discovered: the brand's default directory)"),
        "{out}"
    );
    assert!(
        out.contains("saved connection 'acme'") && out.contains("it can sync"),
        "{out}"
    );

    let r = i.run(&["connection", "test", "acme"]).await;
    r.ok();
    let out = r.stdout();
    assert!(out.contains("data center: fra1"), "{out}");
    assert!(out.contains("admin@simbrand.test"), "{out}");
    assert!(out.contains("brand simbrand"), "{out}");
    assert!(out.contains("API token"), "{out}");
    // The directory was discovered by the test `add` ran, and remembered.
    assert!(
        out.contains(&format!(
            "directory:   {}",
            h.sim.directory.default_directory_id()
        )),
        "{out}"
    );
    assert!(out.contains("ok       transaction batches"), "{out}");
    assert!(out.contains("can sync"), "{out}");

    let list = i.run(&["connection", "list"]).await;
    list.ok();
    assert!(
        list.stdout().contains("acme")
            && list
                .stdout()
                .contains(&h.sim.directory.default_directory_id())
    );
    let show = i.run(&["connection", "show", "acme"]).await;
    show.ok();
    assert!(
        show.stdout().contains("API token (set"),
        "{}",
        show.stdout()
    );
    for r in [&list, &show] {
        assert!(!r.all().contains(&token), "a secret reached the output");
    }
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "acme",
        "--no-test",
        "--url",
        &url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .fails(1, "already");
    i.run(&["connection", "remove", "acme"]).await.ok();
    i.run(&["connection", "test", "acme"])
        .await
        .fails(1, "xmbridge connection list");
}

#[tokio::test]
async fn permissions_decide_which_tables_sync() {
    let h = sim(small()).await;
    let i = support::install();
    let users = h.sim.users.read().clone();
    let url = h.base_url.clone();
    // The viewer lacks "Manage Directories" and is no brand admin: two groups skipped, still syncs.
    let tf = i.file("viewer", &users[2].api_token);
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "viewer",
        "--no-test",
        "--url",
        &url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .ok();
    let r = i.run(&["connection", "test", "viewer"]).await;
    r.ok();
    let out = r.stdout();
    assert!(out.contains("skipped  transaction batches"), "{out}");
    assert!(
        out.contains("Manage Directories")
            && out.contains("Admin → Users → permissions → Contacts"),
        "{out}"
    );
    assert!(out.contains("skipped  users"), "{out}");
    assert!(out.contains("2 table group(s) skipped"), "{out}");
    // Without API access nothing works: exit 1 with the reason.
    let tf = i.file("noapi", &users[3].api_token);
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "noapi",
        "--no-test",
        "--url",
        &url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .ok();
    i.run(&["connection", "test", "noapi"])
        .await
        .fails(1, "Access API");
    // A wrong token.
    let tf = i.file("wrong", "0123456789012345678901234567890123456789");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "wrong",
        "--no-test",
        "--url",
        &url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .ok();
    i.run(&["connection", "test", "wrong"])
        .await
        .fails(1, "API token");
    // The API token also comes from the environment.
    let mut c = i.cmd(&[
        "connection",
        "add",
        "qualtrics",
        "envtok",
        "--no-test",
        "--url",
        &url,
    ]);
    c.env("XMBRIDGE_QUALTRICS_API_TOKEN", &users[1].api_token);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    i.run(&["connection", "test", "envtok"]).await.ok();
}

/// Standard mode: add, authorize through the browser redirect (auto-approved by the simulator),
/// test, refresh with rotation, then a revoked refresh token.
#[tokio::test]
async fn standard_mode_authorize_rotate_and_revoke() {
    let h = sim(small()).await;
    let (web, client_id, secret) = web_app(&h).await;

    let i = support::install();
    let sf = i.file("secret", &secret);
    let url = h.base_url.clone();
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "std",
        "--no-test",
        "--url",
        &url,
        "--auth",
        "standard",
        "--client-id",
        &client_id,
        "--client-secret-file",
        sf.to_str().unwrap(),
    ])
    .await
    .ok();
    i.run(&["connection", "test", "std"])
        .await
        .fails(1, "xmbridge connection authorize std");

    // A redirect with the wrong state is refused and nothing is stored.
    let (child, auth_url) = start_authorize(&i, "std");
    let redirect = query(&auth_url, "redirect_uri");
    let r = web
        .get(format!("{redirect}?code=forged&state=not-the-state"))
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success());
    let (code, _, stderr) = child.finish().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("state"), "{stderr}");
    i.run(&["connection", "test", "std"])
        .await
        .fails(1, "not authorized yet");

    // The real flow: the browser follows the authorize URL, the simulator approves and redirects
    // to the listener, which exchanges the code.
    let (code, stdout, stderr, _) = approve_in_browser(&web, &i, "std").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("authorized connection 'std'"), "{stdout}");

    let r = i.run(&["connection", "test", "std"]).await;
    r.ok();
    assert!(r.stdout().contains("expires"), "{}", r.stdout());

    // Access tokens last 1 s now: every run refreshes, and Qualtrics rotates refresh tokens. If a
    // rotated token were not saved, the second run would present a dead one.
    admin(
        &h,
        &web,
        "/_sim/oauth/settings",
        json!({"access_token_ttl_secs": 1}),
    )
    .await;
    i.run(&["connection", "test", "std"]).await.ok();
    i.run(&["connection", "test", "std"]).await.ok();

    // A revoked refresh token: "account token expired" with the command that re-authorizes.
    admin(&h, &web, "/_sim/tokens/revoke", json!({"all": true})).await;
    let r = i.run(&["connection", "test", "std"]).await;
    r.fails(1, "account token expired")
        .fails(1, "xmbridge connection authorize std");
    // One sentence ends once: no ").)." where wrapped messages meet.
    let err = r.stderr();
    for stutter in [").).", "..", ".)."] {
        assert!(!err.contains(stutter), "{stutter:?} in: {err}");
    }
}

fn start_authorize(i: &Install, name: &str) -> (Authorizing, String) {
    start_authorize_with(i, name, &[])
}

/// `connection authorize NAME extra…` with stdin piped (for a pasted redirect); returns the
/// running command and the authorize URL it printed.
fn start_authorize_with(i: &Install, name: &str, extra: &[&str]) -> (Authorizing, String) {
    let mut args = vec!["connection", "authorize", name, "--timeout", "30"];
    args.extend_from_slice(extra);
    let mut child = i
        .cmd(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("authorize printed no URL").unwrap();
        if line.starts_with("http") {
            break line;
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (Authorizing { child, rest }, url)
}

struct Authorizing {
    child: std::process::Child,
    rest: std::thread::JoinHandle<String>,
}

impl Authorizing {
    /// Waits for the command; returns its exit code, the rest of its stdout, and its stderr.
    async fn finish(self) -> (Option<i32>, String, String) {
        tokio::task::spawn_blocking(move || {
            let out = self.child.wait_with_output().unwrap();
            let rest = self.rest.join().unwrap();
            (
                out.status.code(),
                rest,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }
}

/// Plays the browser: follows the authorize URL (the simulator auto-approves and redirects) to the
/// command's listener, waits for the command and returns its exit code, stdout and stderr, plus
/// the redirect it followed.
async fn approve_in_browser(
    web: &reqwest::Client,
    i: &Install,
    name: &str,
) -> (Option<i32>, String, String, String) {
    let (child, auth_url) = start_authorize(i, name);
    let r = web.get(&auth_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    let page = web.get(&back).send().await.unwrap();
    assert!(page.status().is_success());
    let (code, stdout, stderr) = child.finish().await;
    (code, stdout, stderr, back)
}

fn query(url: &str, key: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// Advanced mode: client credentials over mutual TLS with an encrypted PKCS#8 key and its pass
/// phrase; every certificate problem is refused at `add` with a clear message.
#[tokio::test]
async fn advanced_mode_over_mutual_tls() {
    let h = sim(SimConfig {
        mtls: true,
        ..small()
    })
    .await;
    let i = support::install();
    let bundle = i.dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    h.sim
        .pki
        .as_ref()
        .unwrap()
        .write_client_bundle(&bundle)
        .unwrap();
    let b = |f: &str| bundle.join(f).to_str().unwrap().to_string();

    // The admin API sits behind mTLS too: read the client credentials with the bundle.
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(bundle.join("ca.pem")).unwrap()).unwrap();
    let mut id = std::fs::read(bundle.join("client.pem")).unwrap();
    id.extend(std::fs::read(bundle.join("client-plain.key")).unwrap());
    let web = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(reqwest::Identity::from_pem(&id).unwrap())
        .build()
        .unwrap();
    let creds = credentials(&h, &web).await;
    let cc = oauth_client(&creds, "client_credentials", "admin");
    let client_id = cc["client_id"].as_str().unwrap().to_string();
    let sf = i.file("secret", cc["client_secret"].as_str().unwrap());
    let url = h.base_url.clone();
    let add = |name: &str, cert: String, key: String, pass: String| {
        vec![
            "connection".to_string(),
            "add".into(),
            "qualtrics".into(),
            name.into(),
            "--no-test".into(),
            "--url".into(),
            url.clone(),
            "--auth".into(),
            "advanced".into(),
            "--client-id".into(),
            client_id.clone(),
            "--client-secret-file".into(),
            sf.to_str().unwrap().into(),
            "--cert".into(),
            cert,
            "--key".into(),
            key,
            "--passphrase-file".into(),
            pass,
            "--ca-cert".into(),
            b("ca.pem"),
        ]
    };
    let run = |args: Vec<String>| {
        let v: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = i.cmd(&v);
        async move {
            let mut c = c;
            Run(tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap())
        }
    };
    let wrong_pass = i.file("wrong-pass", "not the pass phrase");
    run(add(
        "bad",
        b("client.pem"),
        b("client.key"),
        wrong_pass.to_str().unwrap().into(),
    ))
    .await
    .fails(2, "pass phrase is wrong");
    run(add(
        "bad",
        b("client.pem"),
        b("mismatched.key"),
        b("passphrase.txt"),
    ))
    .await
    .fails(2, "does not match");
    run(add(
        "bad",
        b("expired-client.pem"),
        b("expired-client.key"),
        b("passphrase.txt"),
    ))
    .await
    .fails(2, "expired");

    run(add(
        "mtls",
        b("client.pem"),
        b("client.key"),
        b("passphrase.txt"),
    ))
    .await
    .ok();
    let r = i.run(&["connection", "test", "mtls"]).await;
    r.ok();
    assert!(r.stdout().contains("client credentials"), "{}", r.stdout());
    assert!(r.stdout().contains("expires"), "{}", r.stdout());

    // A certificate from another CA passes our checks but the brand refuses it.
    run(add(
        "foreign",
        b("foreign-client.pem"),
        b("foreign-client.key"),
        b("passphrase.txt"),
    ))
    .await
    .ok();
    i.run(&["connection", "test", "foreign"])
        .await
        .fails(1, "client certificate");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let i = support::install();
    let tf = i.file("token", "t");
    let t = tf.to_str().unwrap();
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--datacenter",
        "fra9",
        "--api-token-file",
        t,
    ])
    .await
    .fails(2, "unknown data center");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--url",
        "https://example.com",
        "--api-token-file",
        t,
    ])
    .await
    .fails(2, "qualtrics.com");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--url",
        "http://fra1.qualtrics.com",
        "--api-token-file",
        t,
    ])
    .await
    .fails(2, "https");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--datacenter",
        "fra1",
    ])
    .await
    .fails(2, "XMBRIDGE_QUALTRICS_API_TOKEN");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--datacenter",
        "fra1",
        "--auth",
        "standard",
        "--api-token-file",
        t,
    ])
    .await
    .fails(2, "--client-id");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "bad name!",
        "--no-test",
        "--datacenter",
        "fra1",
        "--api-token-file",
        t,
    ])
    .await
    .fails(1, "name");

    // The wrong master key never yields garbage.
    let mut i = support::install();
    i.master_key = Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
    let tf = i.file("token", "t");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--datacenter",
        "fra1",
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .ok();
    i.master_key = Some("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=".into());
    i.run(&["connection", "list"])
        .await
        .fails(1, "master key does not match");
    i.master_key = Some("short".into());
    i.run(&["connection", "list"])
        .await
        .fails(1, "XMBRIDGE_MASTER_KEY");

    // A corrupted state store.
    let i = support::install();
    std::fs::create_dir_all(i.home()).unwrap();
    std::fs::write(
        i.home().join("state.db"),
        b"this is not a database, it is a grocery list",
    )
    .unwrap();
    let mut c = i.cmd(&["connection", "list"]);
    c.env(
        "XMBRIDGE_MASTER_KEY",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    );
    let out = Run(tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap());
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.stderr().contains("state.db"), "{}", out.all());
}

/// Runs every mode with debug logs in both formats and greps the logs, the outputs and the
/// state store for each secret.
#[tokio::test]
async fn no_secret_reaches_logs_outputs_or_the_state_store() {
    let h = sim(small()).await;
    let (web, app_id, app_secret) = web_app(&h).await;
    let api_token = h.sim.cfg.admin_token();

    let i = support::install();
    let tf = i.file("token", &api_token);
    let sf = i.file("secret", &app_secret);
    let url = h.base_url.clone();
    let mut outputs = Vec::new();
    for fmt in ["text", "json"] {
        let name = format!("tok-{fmt}");
        let r = i
            .run(&[
                "-vvv",
                "--log-format",
                fmt,
                "connection",
                "add",
                "qualtrics",
                &name,
                "--no-test",
                "--url",
                &url,
                "--api-token-file",
                tf.to_str().unwrap(),
            ])
            .await;
        r.ok();
        outputs.push(r.all());
        let r = i
            .run(&["-vvv", "--log-format", fmt, "connection", "test", &name])
            .await;
        r.ok();
        outputs.push(r.all());
    }
    let r = i
        .run(&[
            "-vvv",
            "connection",
            "add",
            "qualtrics",
            "std",
            "--no-test",
            "--url",
            &url,
            "--auth",
            "standard",
            "--client-id",
            &app_id,
            "--client-secret-file",
            sf.to_str().unwrap(),
        ])
        .await;
    r.ok();
    outputs.push(r.all());
    let mut child = i
        .cmd(&["-vvv", "connection", "authorize", "std", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let auth_url = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no URL printed");
        printed.push_str(&line);
        if line.starts_with("http") {
            break line.trim().to_string();
        }
    };
    let r = web.get(&auth_url).send().await.unwrap();
    let back = r.headers()["location"].to_str().unwrap().to_string();
    // The code in the redirect is a secret too (single use, but still).
    let code = query(&back, "code");
    web.get(&back).send().await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        (child.wait_with_output().unwrap(), rest)
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    outputs.push(format!(
        "{printed}{}{}",
        out.1,
        String::from_utf8_lossy(&out.0.stderr)
    ));
    let r = i
        .run(&["-vvv", "--log-format", "json", "connection", "test", "std"])
        .await;
    r.ok();
    outputs.push(r.all());
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("DEBUG") || o.contains("\"level\"")),
        "debug logs were on"
    );

    let home = i.home();
    let store = read_all(&[home.join("state.db"), home.join("state.db-wal")]);
    let master_key = std::fs::read(home.join("master.key")).unwrap();
    let logs = outputs.join("\n").into_bytes();
    for (what, secret) in [
        ("API token", api_token.as_str()),
        ("client secret", app_secret.as_str()),
        ("authorization code", code.as_str()),
    ] {
        assert!(!contains(&logs, secret), "the {what} reached the logs");
        assert!(
            !contains(&store, secret),
            "the {what} is in the state store in clear text"
        );
    }
    let key_text = String::from_utf8_lossy(&master_key).trim().to_string();
    assert!(
        !contains(&logs, &key_text),
        "the master key reached the logs"
    );
    assert!(
        !Path::new(&home.join("xmbridge.toml")).exists()
            || !contains(
                &std::fs::read(home.join("xmbridge.toml")).unwrap(),
                &api_token
            )
    );
}

/// An account authorized with too few scopes: the missing scope is named, and without response
/// access the account cannot sync.
#[tokio::test]
async fn a_missing_scope_is_named() {
    let h = sim(small()).await;
    let (web, client_id, secret) = web_app(&h).await;
    let i = support::install();
    let sf = i.file("secret", &secret);
    let url = h.base_url.clone();
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "narrow",
        "--no-test",
        "--url",
        &url,
        "--auth",
        "standard",
        "--client-id",
        &client_id,
        "--client-secret-file",
        sf.to_str().unwrap(),
        "--scopes",
        "read:surveys offline",
    ])
    .await
    .ok();
    let (code, _, stderr, _) = approve_in_browser(&web, &i, "narrow").await;
    assert_eq!(code, Some(0), "{stderr}");
    let r = i.run(&["connection", "test", "narrow"]).await;
    r.fails(1, "cannot sync");
    assert!(r.stdout().contains("skipped  responses"), "{}", r.stdout());
    assert!(
        r.stdout().contains("read:survey_responses"),
        "{}",
        r.stdout()
    );
    // The users group is refused for the scope too: the report names the scope, not the
    // user's role (the authorizing user is the brand administrator).
    let users = r
        .stdout()
        .lines()
        .find(|l| l.contains("skipped  users"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(users.contains("read:users"), "{}", r.stdout());
    assert!(users.contains("OAuth token lacks a scope"), "{users}");
    assert!(!users.contains("brand administrator"), "{users}");
}

/// Inputs that used to be saved and fail only at `connection test` (or never work) are refused
/// by `connection add`, saying what is wrong; nothing is saved.
#[tokio::test]
async fn inputs_that_could_only_fail_later_are_refused_at_add() {
    let i = support::install();
    let add = |extra: &[&str]| {
        let mut a = vec!["connection", "add", "qualtrics", "a", "--no-test"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let nul = i.file("nul", "abc\0def");
    let lines = i.file("lines", "abc\ndef\n");
    let good = i.file("good", "abcdef\n");
    let junk_ca = i.file("junk.pem", "this is not a certificate\n");
    let fake_ca = i.file(
        "fake.pem",
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
    );
    let long_host = format!("https://{}.fra1.qualtrics.com", "a".repeat(3000));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            add(&[
                "--datacenter",
                "fra1",
                "--api-token-file",
                nul.to_str().unwrap(),
            ]),
            "API token contains a NUL byte",
        ),
        (
            add(&[
                "--datacenter",
                "fra1",
                "--api-token-file",
                lines.to_str().unwrap(),
            ]),
            "API token contains a line break",
        ),
        (
            add(&[
                "--datacenter",
                "fra1",
                "--api-token-file",
                good.to_str().unwrap(),
                "--ca-cert",
                junk_ca.to_str().unwrap(),
            ]),
            "CA certificate file",
        ),
        (
            add(&[
                "--datacenter",
                "fra1",
                "--api-token-file",
                good.to_str().unwrap(),
                "--ca-cert",
                fake_ca.to_str().unwrap(),
            ]),
            "not a valid X.509 certificate",
        ),
        (
            add(&[
                "--url",
                &long_host,
                "--api-token-file",
                good.to_str().unwrap(),
            ]),
            "3000 characters long; DNS allows at most 63 per label",
        ),
        (
            add(&[
                "--datacenter",
                "fra1",
                "--auth",
                "standard",
                "--client-id",
                "id\nsecond",
                "--client-secret-file",
                good.to_str().unwrap(),
            ]),
            "OAuth client id contains a line break",
        ),
        (
            add(&[
                "--datacenter",
                "fra1",
                "--auth",
                "standard",
                "--client-id",
                "id",
                "--client-secret-file",
                nul.to_str().unwrap(),
            ]),
            "OAuth client secret contains a NUL byte",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = i.run(&args).await;
        r.fails(2, needle);
        assert!(
            !r.stderr().contains("abc"),
            "a secret was echoed: {}",
            r.stderr()
        );
        assert!(r.stderr().len() < 2000, "{}", r.stderr().len());
    }
    let r = i.run(&["connection", "list"]).await;
    r.ok();
    assert!(r.stdout().contains("no connections"), "{}", r.stdout());
}

/// The missing client id names the environment variable as it is spelled.
#[tokio::test]
async fn a_missing_client_id_names_the_real_environment_variable() {
    let i = support::install();
    let sf = i.file("secret", "s");
    for auth in ["standard", "advanced"] {
        i.run(&[
            "connection",
            "add",
            "qualtrics",
            "a",
            "--no-test",
            "--datacenter",
            "fra1",
            "--auth",
            auth,
            "--client-secret-file",
            sf.to_str().unwrap(),
        ])
        .await
        .fails(2, "XMBRIDGE_QUALTRICS_CLIENT_ID")
        .fails(2, &format!("--auth {auth} needs --client-id"));
    }
}

/// A 5 MB error message from Qualtrics is cut in what the user sees, not echoed whole.
#[tokio::test]
async fn a_huge_upstream_error_message_is_cut() {
    let h = sim(small()).await;
    let web = reqwest::Client::new();
    admin(
        &h,
        &web,
        "/_sim/faults",
        json!({"error_rate": 1.0, "error_status": 400, "error_message_bytes": 5_000_000}),
    )
    .await;
    let i = support::install();
    let tf = i.file("token", &h.sim.cfg.admin_token());
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "big",
        "--no-test",
        "--url",
        &h.base_url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .ok();
    let r = i.run(&["connection", "test", "big"]).await;
    // The size first: a failing check must not print megabytes.
    assert!(
        r.all().len() < 8 * 1024,
        "{} bytes of output",
        r.all().len()
    );
    r.fails(1, "Simulated failure (fault injection)")
        .fails(1, "bytes more)");
}

#[cfg(unix)]
fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Like OpenSSH: a home others can write and a state store others can write are refused with
/// the chmod that fixes them; a state store others can read is restricted and reported.
#[cfg(unix)]
#[tokio::test]
async fn loose_state_directory_permissions_are_refused_or_fixed() {
    let i = support::install();
    let tf = i.file("token", "t");
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--datacenter",
        "fra1",
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .ok();
    let home = i.home();
    let db = home.join("state.db");

    for loose in [0o777, 0o770, 0o1777] {
        set_mode(&home, loose);
        let r = i.run(&["connection", "list"]).await;
        r.fails(1, "writable by other users")
            .fails(1, &format!("chmod 700 {}", home.display()));
        assert!(!r.stdout().contains("fra1"), "{}", r.stdout());
    }
    set_mode(&home, 0o755);
    i.run(&["connection", "list"]).await.ok();
    set_mode(&home, 0o700);

    set_mode(&db, 0o666);
    i.run(&["connection", "list"])
        .await
        .fails(1, &format!("chmod 600 {}", db.display()));
    assert_eq!(mode_of(&db), 0o666, "a refused store is left as it is");

    set_mode(&db, 0o644);
    let r = i.run(&["connection", "list"]).await;
    r.ok();
    assert!(r.stdout().contains("fra1"), "{}", r.stdout());
    assert!(
        r.stderr().contains("warning") && r.stderr().contains("readable by other users"),
        "{}",
        r.stderr()
    );
    assert_eq!(mode_of(&db), 0o600);
    let r = i.run(&["connection", "list"]).await;
    r.ok();
    assert!(r.stderr().is_empty(), "{}", r.stderr());
}

/// An empty state store is damaged, not a new installation with every connection gone.
#[tokio::test]
async fn an_empty_state_store_is_refused_as_damaged() {
    let i = support::install();
    let tf = i.file("token", "t");
    let add = [
        "connection",
        "add",
        "qualtrics",
        "a",
        "--no-test",
        "--datacenter",
        "fra1",
        "--api-token-file",
        tf.to_str().unwrap(),
    ];
    i.run(&add).await.ok();
    let db = i.home().join("state.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(i.home().join(format!("state.db{suffix}")));
    }
    std::fs::write(&db, b"").unwrap();
    for cmd in [&["connection", "list"][..], &add[..]] {
        let r = i.run(cmd).await;
        r.fails(1, "is empty (0 bytes), so it is damaged")
            .fails(1, "restore it from your backup")
            .fails(1, &format!("rm {}", db.display()));
        assert!(!r.stdout().contains("no connections"), "{}", r.stdout());
    }
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "left for the user"
    );

    // A fresh home with an empty store: no key file is made for it either.
    let j = support::install();
    std::fs::create_dir_all(j.home()).unwrap();
    std::fs::write(j.home().join("state.db"), b"").unwrap();
    j.run(&["connection", "list"]).await.fails(1, "damaged");
    assert!(!j.home().join("master.key").exists());
}

/// A vault value of the wrong SQL type names the connection and the value, not "disk space".
#[tokio::test]
async fn a_vault_value_of_the_wrong_type_is_named() {
    let i = support::install();
    let tf = i.file("token", "t");
    for name in ["a", "b"] {
        i.run(&[
            "connection",
            "add",
            "qualtrics",
            name,
            "--no-test",
            "--datacenter",
            "fra1",
            "--api-token-file",
            tf.to_str().unwrap(),
        ])
        .await
        .ok();
    }
    let db = rusqlite::Connection::open(i.home().join("state.db")).unwrap();
    db.execute(
        "UPDATE connection_secrets SET ciphertext = 42 WHERE connection = 'a'",
        [],
    )
    .unwrap();
    // Reading the token happens before any network use.
    let r = i.run(&["connection", "test", "a"]).await;
    r.fails(
        1,
        "the ciphertext of the sealed API token of connection 'a'",
    )
    .fails(1, "xmbridge connection remove a");
    assert!(!r.stderr().contains("disk space"), "{}", r.stderr());

    db.execute(
        "UPDATE connections SET settings = X'7B7D' WHERE name = 'b'",
        [],
    )
    .unwrap();
    let r = i.run(&["connection", "list"]).await;
    r.fails(1, "the settings of connection 'b'")
        .fails(1, "stored as a blob where text belongs");
    assert!(!r.stderr().contains("disk space"), "{}", r.stderr());
}

/// Whatever the umask, the files xmbridge creates are the user's alone.
#[cfg(unix)]
#[tokio::test]
async fn new_state_files_are_private_whatever_the_umask() {
    let i = support::install();
    let tf = i.file("token", "t");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args([
            "connection",
            "add",
            "qualtrics",
            "a",
            "--no-test",
            "--datacenter",
            "fra1",
            "--api-token-file",
            tf.to_str().unwrap(),
        ])
        .env("XMBRIDGE_HOME", i.home().join("nested/home"))
        .env_remove("XMBRIDGE_MASTER_KEY")
        .env_remove("XMBRIDGE_QUALTRICS_API_TOKEN")
        .stdin(Stdio::null());
    let out = Run(tokio::task::spawn_blocking(move || sh.output().unwrap())
        .await
        .unwrap());
    out.ok();
    let home = i.home().join("nested/home");
    assert_eq!(mode_of(&home), 0o700);
    // Every file there (a WAL and its index too, if SQLite kept them after closing).
    let mut names = Vec::new();
    for e in std::fs::read_dir(&home).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(mode_of(&p) & 0o077, 0, "{name} is {:o}", mode_of(&p));
        names.push(name);
    }
    assert!(
        names.iter().any(|n| n == "state.db") && names.iter().any(|n| n == "master.key"),
        "{names:?}"
    );
}

/// A wrong API token used to get six sentences about OAuth clients and data centers: the
/// message says the token was refused and where the current one is found.
#[tokio::test]
async fn a_refused_api_token_says_so_without_oauth_advice() {
    let h = sim(small()).await;
    let i = support::install();
    let tf = i.file("token", "not-the-token\n");
    i.ok(&[
        "connection",
        "add",
        "qualtrics",
        "acme",
        "--no-test",
        "--url",
        &h.base_url,
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await;
    let r = i.run(&["connection", "test", "acme"]).await;
    r.fails(1, "Qualtrics refused the API token");
    let err = r.stderr();
    assert!(
        err.contains("Account Settings > Qualtrics IDs > API"),
        "{err}"
    );
    assert!(!err.contains("OAuth"), "{err}");
    assert!(!err.contains("data center that issued"), "{err}");
    assert!(!err.contains("not-the-token"), "{err}");
}

/// "Save & Test" is one step: `connection add` tests before it saves and does not keep a
/// connection that cannot sync (same report and exit code as `connection test`), unless
/// `--no-test`. Without `--auth` it says that OAuth (`standard`) is recommended.
#[tokio::test]
async fn add_tests_before_it_saves_and_keeps_nothing_that_cannot_sync() {
    let h = sim(small()).await;
    let i = support::install();
    let bad = i.file("bad", "not-the-token\n");
    let add = |extra: &[&str]| {
        let mut a = vec![
            "connection".to_string(),
            "add".into(),
            "qualtrics".into(),
            "acme".into(),
            "--url".into(),
            h.base_url.clone(),
            "--api-token-file".into(),
            bad.to_str().unwrap().into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let args = add(&[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = i.run(&argv).await;
    r.fails(1, "connection 'acme' was not saved")
        .fails(1, "Qualtrics refused the API token")
        .fails(1, "add --no-test to save it untested");
    assert!(
        r.stderr().contains("`--auth standard`) is recommended"),
        "{}",
        r.stderr()
    );
    let list = i.ok(&["connection", "list"]).await;
    assert!(!list.contains("acme"), "nothing saved: {list}");
    // --no-test saves it as it is, and says it was not tested.
    let args = add(&["--no-test", "--auth", "token"]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = i.run(&argv).await;
    r.ok();
    assert!(
        r.stdout().contains("not tested (--no-test)"),
        "{}",
        r.stdout()
    );
    assert!(!r.stderr().contains("recommended"), "{}", r.stderr());
    i.run(&["connection", "test", "acme"])
        .await
        .fails(1, "Qualtrics refused the API token");
}

/// Headless authorization: with `--no-browser` the URL is opened on another machine and the
/// address the browser was sent to is pasted back (its `state` checked, PKCE exchanged); a
/// pasted address of another request is refused. `--callback-port` fixes the redirect URI.
#[tokio::test]
async fn no_browser_authorization_takes_the_pasted_redirect_and_checks_its_state() {
    use std::io::Write as _;
    let h = sim(small()).await;
    let (web, client_id, secret) = web_app(&h).await;
    let i = support::install();
    let sf = i.file("secret", &secret);
    i.ok(&[
        "connection",
        "add",
        "qualtrics",
        "std",
        "--url",
        &h.base_url,
        "--auth",
        "standard",
        "--client-id",
        &client_id,
        "--client-secret-file",
        sf.to_str().unwrap(),
    ])
    .await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The "other machine": follows the authorize URL and stops at the redirect, whose page
    // cannot load there; the user copies its address instead.
    let port_arg = port.to_string();
    let run = || start_authorize_with(&i, "std", &["--no-browser", "--callback-port", &port_arg]);
    let redirect_of = |url: String| {
        let web = web.clone();
        async move {
            let r = web.get(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FOUND);
            r.headers()["location"].to_str().unwrap().to_string()
        }
    };

    // A redirect of another request (wrong state) is refused, and nothing is stored.
    let (mut running, url) = run();
    let back = redirect_of(url).await;
    assert!(
        back.starts_with(&format!("http://127.0.0.1:{port}/callback?")),
        "{back}"
    );
    let forged = back.replace(
        &format!("state={}", query(&back, "state")),
        "state=not-this-one",
    );
    writeln!(running.child.stdin.take().unwrap(), "{forged}").unwrap();
    let (code, _, err) = running.finish().await;
    assert_eq!(code, Some(1));
    assert!(err.to_lowercase().contains("state"), "{err}");
    i.run(&["connection", "test", "std"])
        .await
        .fails(1, "xmbridge connection authorize std");

    // The real address, pasted: authorized, and the connection tests ok.
    let (mut running, url) = run();
    let back = redirect_of(url).await;
    writeln!(running.child.stdin.take().unwrap(), "{back}").unwrap();
    let (code, printed, err) = running.finish().await;
    assert_eq!(code, Some(0), "{printed}\n{err}");
    assert!(printed.contains("authorized connection 'std'"), "{printed}");
    i.ok(&["connection", "test", "std"]).await;
}

/// The ServiceNow spoke's OAuth client: client credentials without mutual TLS, scope
/// `manage:all`, its token fetched when the connection is saved (Save & Test); a wrong secret
/// saves nothing and says the client was refused.
#[tokio::test]
async fn client_credentials_without_mutual_tls_get_their_token_when_saved() {
    let h = sim(small()).await;
    let web = reqwest::Client::new();
    let creds = credentials(&h, &web).await;
    let cc = oauth_client(&creds, "client_credentials", "admin");
    let i = support::install();
    let good = i.file("secret", cc["client_secret"].as_str().unwrap());
    let bad = i.file("bad-secret", "not-the-secret");
    let add = |name: &str, secret: &PathBuf| {
        vec![
            "connection".to_string(),
            "add".into(),
            "qualtrics".into(),
            name.into(),
            "--url".into(),
            h.base_url.clone(),
            "--auth".into(),
            "client-credentials".into(),
            "--client-id".into(),
            cc["client_id"].as_str().unwrap().into(),
            "--client-secret-file".into(),
            secret.to_str().unwrap().into(),
        ]
    };
    let args = add("spoke", &good);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = i.run(&argv).await;
    r.ok();
    let out = r.stdout();
    assert!(
        out.contains("client-credentials (OAuth client credentials, no mutual TLS)"),
        "{out}"
    );
    assert!(
        out.contains("token:       OAuth client credentials"),
        "{out}"
    );
    assert!(out.contains("it can sync"), "{out}");
    let show = i.ok(&["connection", "show", "spoke"]).await;
    assert!(show.contains("scopes:       manage:all"), "{show}");
    // The connection syncs like any other.
    let db = i.path("spoke.db");
    i.ok(&[
        "sync",
        "spoke",
        "--destination",
        &format!("sqlite:{}", db.display()),
    ])
    .await;

    let args = add("wrong", &bad);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = i.run(&argv).await;
    r.fails(1, "connection 'wrong' was not saved")
        .fails(1, "refused the OAuth client");
    assert!(!r.all().contains("not-the-secret"), "{}", r.all());
    assert!(!i.ok(&["connection", "list"]).await.contains("wrong"));

    // Like the spoke's connection, it may keep an API token too. The OAuth client comes first;
    // only when it cannot get a token are calls made with the API token, and the report says so.
    let token = i.file("token", &h.sim.cfg.admin_token());
    let mut args = add("both", &good);
    args.extend(["--api-token-file".into(), token.to_str().unwrap().into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = i.ok(&argv).await;
    assert!(
        out.contains("OAuth client credentials")
            && out.contains("(an API token is kept as fallback)"),
        "{out}"
    );
    let mut args = add("fallback", &bad);
    args.extend(["--api-token-file".into(), token.to_str().unwrap().into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = i.run(&argv).await;
    r.ok();
    assert!(
        r.stdout()
            .contains("(fallback: the OAuth client could not get a token: "),
        "{}",
        r.stdout()
    );
    assert!(
        r.stderr().contains("calls use the connection's API token"),
        "{}",
        r.stderr()
    );
    assert!(
        !r.all().contains(&h.sim.cfg.admin_token()),
        "the token leaked"
    );
}
