//! `xmbridge simulate` as a user runs it: the real binary, its first stdout line, real HTTP.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::BIN;

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `xmbridge simulate ARGS` and returns the process and the URL of its first stdout line.
fn start(args: &[&str]) -> (Running, String) {
    start_with(Command::new(BIN), args)
}

/// [`start`] with a command prepared by the caller (its environment, say).
fn start_with(mut command: Command, args: &[&str]) -> (Running, String) {
    let mut child = command
        .arg("simulate")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start xmbridge");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {first:?}"))
        .to_string();
    (running, url)
}

#[tokio::test]
async fn serves_whoami_and_surveys_with_the_token() {
    let (_sim, url) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "7",
        "--surveys",
        "5",
        "--responses",
        "10000",
        "--api-token",
        "TOKEN",
    ]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let http = reqwest::Client::new();

    let me: serde_json::Value = http
        .get(format!("{url}/API/v3/whoami"))
        .header("X-API-TOKEN", "TOKEN")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        me["result"]["userId"].as_str().unwrap().starts_with("UR_"),
        "{me}"
    );
    assert_eq!(me["result"]["brandId"], "simbrand");

    let surveys: serde_json::Value = http
        .get(format!("{url}/API/v3/surveys"))
        .header("X-API-TOKEN", "TOKEN")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(surveys["result"]["elements"].as_array().unwrap().len(), 5);

    let denied = http
        .get(format!("{url}/API/v3/whoami"))
        .header("X-API-TOKEN", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
}

#[test]
fn prints_brand_and_credentials_hint_then_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["simulate", "--brand", "acme", "--datacenter", "ca1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    while lines.len() < 7 {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            break;
        }
        lines.push(l);
    }
    let text = lines.concat();
    assert!(text.starts_with("listening on http://127.0.0.1:"), "{text}");
    assert!(text.contains("acme") && text.contains("ca1"), "{text}");
    assert!(text.contains("/_sim/credentials"), "{text}");

    #[cfg(unix)]
    {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "graceful stop exits 0, got {st}");
                break;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn run_expecting_failure(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn refuses_non_loopback_listen() {
    let (code, err) = run_expecting_failure(&["simulate", "--listen", "0.0.0.0:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("loopback") && err.contains("0.0.0.0:1"),
        "{err}"
    );
}

#[test]
fn unknown_fault_key_is_a_clear_usage_error() {
    let (code, err) = run_expecting_failure(&["simulate", "--fault", "nope=1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--fault") && err.contains("nope"), "{err}");
}

/// A fault setting the running simulator refuses is refused at start too, with the same words.
#[tokio::test]
async fn out_of_range_fault_is_refused_at_start_as_at_run_time() {
    let (_sim, url) = start(&["--listen", "127.0.0.1:0"]);
    let resp = reqwest::Client::new()
        .post(format!("{url}/_sim/faults"))
        .json(&serde_json::json!({"error_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    let run_time = body["meta"]["error"]["errorMessage"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string();
    assert!(run_time.contains("error_rate"), "{run_time}");

    let (code, err) = tokio::task::spawn_blocking(|| {
        let mut child = Command::new(BIN)
            .args([
                "simulate",
                "--listen",
                "127.0.0.1:0",
                "--fault",
                "error_rate=2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A simulator that starts anyway prints its URL first: stop it and fail, not hang.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        if first.starts_with("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the simulator started with error_rate=2: {first}");
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (child.wait().unwrap().code().unwrap_or(-1), err)
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&run_time), "{err:?} lacks {run_time:?}");
}

#[test]
fn malformed_fault_is_a_usage_error() {
    let (code, err) = run_expecting_failure(&["simulate", "--fault", "novalue"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        &["--help"][..],
        &["simulate", "--help"],
        &["demo", "--help"],
    ] {
        let out = Command::new(BIN).args(cmd).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Example"), "{cmd:?}: {text}");
    }
}

#[tokio::test]
async fn mtls_writes_a_working_client_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mtls_dir = dir.path().join("mtls");
    let (_sim, url) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--surveys",
        "1",
        "--responses",
        "5",
        "--api-token",
        "TOKEN",
        "--mtls",
        "--mtls-dir",
        mtls_dir.to_str().unwrap(),
    ]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let read = |name: &str| std::fs::read(mtls_dir.join(name)).unwrap();
    for name in ["ca.pem", "client.pem", "client.key", "passphrase.txt"] {
        assert!(mtls_dir.join(name).exists(), "{name} not written");
    }
    let ca = reqwest::Certificate::from_pem(&read("ca.pem")).unwrap();
    let mut identity = read("client.pem");
    identity.extend_from_slice(&read("client-plain.key"));
    let with_cert = reqwest::Client::builder()
        .tls_certs_only([ca.clone()])
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let r = with_cert
        .get(format!("{url}/API/v3/whoami"))
        .header("X-API-TOKEN", "TOKEN")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let without = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let refused = without
        .get(format!("{url}/API/v3/whoami"))
        .header("X-API-TOKEN", "TOKEN")
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a call without a client certificate must be refused"
    );
}

#[tokio::test]
async fn salesforce_flag_serves_the_salesforce_simulator() {
    let (_sim, url) = start(&["--salesforce", "--listen", "127.0.0.1:0", "--seed", "3"]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let http = reqwest::Client::new();
    let versions: serde_json::Value = http
        .get(format!("{url}/services/data/"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        versions
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["url"] == "/services/data/v60.0"),
        "{versions}"
    );
    let denied = http
        .get(format!("{url}/services/data/v60.0/sobjects"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let creds: serde_json::Value = http
        .get(format!("{url}/_sim/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(creds["instance_url"], url.as_str());
}

#[tokio::test]
async fn servicenow_flag_serves_the_table_api() {
    let (_sim, url) = start(&["--servicenow", "--listen", "127.0.0.1:0", "--seed", "3"]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let http = reqwest::Client::new();
    let creds: serde_json::Value = http
        .get(format!("{url}/_sim/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = creds["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == "admin")
        .unwrap();
    let r = http
        .get(format!("{url}/api/now/table/incident?sysparm_limit=2"))
        .basic_auth("admin", user["password"].as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-total-count"], "30");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 2);
    let r = http
        .get(format!("{url}/api/now/table/incident"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Issue 13 item 15, through the binary: every survey `xmbridge simulate` serves has a
/// definition whose `SurveyOptions` carries each option a real recorded definition carries, with
/// the same JSON types, so a client tested against the simulator meets the real shape.
#[tokio::test]
async fn survey_definitions_carry_the_recorded_survey_options() {
    let (_sim, url) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--surveys",
        "3",
        "--responses",
        "10",
        "--api-token",
        "TOKEN",
    ]);
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(format!("{url}/API/v3/{path}"))
                .header("X-API-TOKEN", "TOKEN")
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let surveys = get("surveys".into()).await;
    let ids: Vec<String> = surveys["result"]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    for id in ids {
        let def = get(format!("survey-definitions/{id}")).await;
        let wrong =
            xmbridge_test_kit::recorded::survey_options_mismatches(&def["result"]["SurveyOptions"]);
        assert!(wrong.is_empty(), "{id}: {wrong:#?}");
    }
}

/// An export's file lives in the simulator's temp directory without a name there, so a
/// simulator killed with SIGKILL (as the bench and the tests stop theirs) leaves nothing behind:
/// named temp files stayed, about 1 GB per 1,000,000-response bench run.
#[tokio::test]
async fn a_killed_simulator_leaves_no_export_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command.env("TMPDIR", tmp.path());
    let (sim, url) = start_with(
        command,
        &[
            "--listen",
            "127.0.0.1:0",
            "--surveys",
            "1",
            "--responses",
            "2000",
            "--export-delay-ms",
            "0",
            "--api-token",
            "TOKEN",
        ],
    );
    let http = reqwest::Client::new();
    let get = |path: String| {
        http.get(format!("{url}/API/v3/{path}"))
            .header("X-API-TOKEN", "TOKEN")
            .send()
    };
    let surveys: serde_json::Value = get("surveys".into()).await.unwrap().json().await.unwrap();
    let sid = surveys["result"]["elements"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started: serde_json::Value = http
        .post(format!("{url}/API/v3/surveys/{sid}/export-responses"))
        .header("X-API-TOKEN", "TOKEN")
        .json(&serde_json::json!({"format": "json"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = started["result"]["progressId"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let file_id = loop {
        let p: serde_json::Value = get(format!("surveys/{sid}/export-responses/{pid}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["result"]["status"] == "complete" {
            break p["result"]["fileId"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "export not complete: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let zip = get(format!("surveys/{sid}/export-responses/{file_id}/file"))
        .await
        .unwrap();
    assert_eq!(zip.status(), 200);
    let len = zip.content_length().unwrap();
    let body = zip.bytes().await.unwrap();
    assert_eq!(body.len() as u64, len);
    assert!(body.starts_with(b"PK"), "not a zip file");
    let listed = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    assert_eq!(listed(), Vec::<std::path::PathBuf>::new(), "while running");
    drop(sim); // SIGKILL, then wait
    assert_eq!(listed(), Vec::<std::path::PathBuf>::new(), "after the kill");
}
