//! `xmbridge account link` input checks through the real binary: a ServiceNow account never
//! sends its password or OAuth secret over plain http to another machine (loopback simulators
//! keep working), and URLs, names and secrets that could only fail later are refused at once.
//!
//! The refused URLs name hosts that are not this machine. They are refused before any network
//! use; as a second guard the refused commands run with every proxy variable pointing at a closed
//! loopback port, so even a regression would only ever reach 127.0.0.1.

use std::process::Output;

use serde_json::{Value, json};

use crate::support;
use support::Install;

async fn servicenow() -> (xmbridge_sim::SnHandle, Value) {
    let h = xmbridge_test_kit::sim::servicenow(xmbridge_sim::servicenow::SnConfig::default()).await;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (h, creds)
}

/// Runs a command that must be refused before any network use (proxies set to a closed
/// loopback port as a second guard); returns its exit code and stderr.
async fn refused(inst: &Install, args: &[&str]) -> (i32, String) {
    let mut c = inst.cmd(args);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env(var, "http://127.0.0.1:9");
    }
    c.env_remove("NO_PROXY").env_remove("no_proxy");
    let out: Output = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success(), "{args:?} should be refused");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn integration_user(creds: &Value) -> (String, String) {
    let user = creds["integration_user"].as_str().unwrap();
    let password = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == json!(user))
        .unwrap()["password"]
        .as_str()
        .unwrap();
    (user.to_string(), password.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicenow_accounts_refuse_plain_http_off_loopback() {
    let inst = support::install();
    let (sn, creds) = servicenow().await;
    let (user, password) = integration_user(&creds);
    let pw = inst.path("pw");
    std::fs::write(&pw, &password).unwrap();
    let pw = pw.to_str().unwrap();
    let client = &creds["oauth_clients"][0];
    let secret = inst.path("cs");
    std::fs::write(&secret, client["client_secret"].as_str().unwrap()).unwrap();
    let secret = secret.to_str().unwrap();
    let client_id = client["client_id"].as_str().unwrap();

    for instance in [
        "http://acme.service-now.com",
        "http://10.20.30.40:8080",
        "HTTP://ACME.SERVICE-NOW.COM/",
    ] {
        for sign_in in [
            &["--basic-user", &user, "--password-file", pw][..],
            &[
                "--oauth-password",
                "--client-id",
                client_id,
                "--client-secret-file",
                secret,
                "--user",
                &user,
                "--password-file",
                pw,
            ][..],
            &[
                "--client-credentials",
                "--client-id",
                client_id,
                "--client-secret-file",
                secret,
            ][..],
        ] {
            let mut args = vec![
                "account",
                "link",
                "sn-plain",
                "--servicenow",
                "--instance-url",
                instance,
            ];
            args.extend_from_slice(sign_in);
            let (code, err) = refused(&inst, &args).await;
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(
                err.contains("plain http://") && err.contains("use https://"),
                "{args:?}: {err}"
            );
            assert!(!err.contains(&password), "the password leaked: {err}");
        }
    }
    let listed = inst.ok(&["account", "list", "--as", "pat"]).await;
    assert!(!listed.contains("sn-plain"), "{listed}");

    // Loopback (the simulators) keeps working over http, and re-authorizing cannot move an
    // account onto plain http elsewhere either.
    let out = inst
        .ok(&[
            "account",
            "link",
            "sn-basic",
            "--servicenow",
            "--instance-url",
            &sn.base_url,
            "--basic-user",
            &user,
            "--password-file",
            pw,
        ])
        .await;
    assert!(out.contains("linked servicenow account sn-basic"), "{out}");
    let (code, err) = refused(
        &inst,
        &[
            "account",
            "link",
            "sn-basic",
            "--refresh",
            "--instance-url",
            "http://acme.service-now.com",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plain http://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_inputs_that_could_only_fail_later_are_refused_at_once() {
    let inst = support::install();
    let (sn, creds) = servicenow().await;
    let (user, password) = integration_user(&creds);
    let ok_pw = inst.path("pw");
    std::fs::write(&ok_pw, &password).unwrap();
    let basic = |url: String, user: String, file: std::path::PathBuf| {
        vec![
            "account".to_string(),
            "link".into(),
            "sn-x".into(),
            "--servicenow".into(),
            "--instance-url".into(),
            url,
            "--basic-user".into(),
            user,
            "--password-file".into(),
            file.to_str().unwrap().into(),
        ]
    };

    // A password file with a second line: the line break would reach the Basic header.
    let two_lines = inst.path("pw2");
    std::fs::write(&two_lines, format!("{password}\nsecond line\n")).unwrap();
    let a = basic(sn.base_url.clone(), user.clone(), two_lines);
    let (code, err) = refused(&inst, &strs(&a)).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ServiceNow password contains a line break")
            && err.contains("--password-file"),
        "{err}"
    );
    assert!(!err.contains(&password), "{err}");

    // A control character in the user name.
    let a = basic(sn.base_url.clone(), format!("{user}\u{1}x"), ok_pw.clone());
    let (code, err) = refused(&inst, &strs(&a)).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ServiceNow user contains"), "{err}");

    // A host label of 3,000 characters.
    let long = format!("https://{}.service-now.com", "a".repeat(3000));
    let a = basic(long, user.clone(), ok_pw.clone());
    let (code, err) = refused(&inst, &strs(&a)).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most 63 per label"), "{err}");
    assert!(
        err.len() < 2000,
        "the long host is not echoed whole: {}",
        err.len()
    );

    // A Salesforce login URL over plain http elsewhere.
    let (code, err) = refused(
        &inst,
        &[
            "account",
            "link",
            "sf-x",
            "--salesforce",
            "--login-url",
            "http://login.salesforce.com",
            "--client-id",
            "id",
            "--client-secret-file",
            ok_pw.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plain http://"), "{err}");

    let listed = inst.ok(&["account", "list", "--as", "pat"]).await;
    assert!(listed.contains("no linked accounts"), "{listed}");
}
