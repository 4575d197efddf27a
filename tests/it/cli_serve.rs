//! `xmbridge serve` end to end: the real binary as a child process (`start_server`), the
//! Qualtrics simulator on loopback, real SQLite and PostgreSQL destinations. Listen rules, the
//! one-server lock, TLS, schedules firing, a killed and a SIGTERM'd server resuming its sync,
//! `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xmbridge_service::config::{ConfigChange, Every, SyncConfigs};
use xmbridge_service::runs::{RunStatus, RunTrigger, Runs, SyncRun};
use xmbridge_service::users::{Role, Users};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_test_kit::pg::TestDb;
use xmbridge_test_kit::serve::{Served, start_server, start_server_exact};
use xmbridge_vault::{Home, MasterKey, SecretString, Vault};

use crate::support::{self, Install};

async fn sim(cfg: SimConfig) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `/healthz` answers 200 within 10 s (right after the first line the delivery workers may not
/// have started yet: 503 "has not started yet" until they have).
async fn healthy(c: &reqwest::Client, s: &Served) {
    let start = Instant::now();
    loop {
        let r = c.get(s.at("/healthz")).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        if status == 200 {
            assert!(body.contains("delivery worker(s) running"), "{body}");
            return;
        }
        assert!(body.contains("not started yet"), "{status}: {body}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The installation's service stores, opened directly (as the server does).
struct Stores {
    configs: SyncConfigs,
    runs: Runs,
    users: Users,
}

fn stores(i: &Install) -> Stores {
    let home = Home::at(i.home()).unwrap();
    let key = MasterKey::load(&home, None).unwrap();
    let vault = Arc::new(Vault::open_home(&home, key).unwrap());
    let db = home.state_db();
    Stores {
        configs: SyncConfigs::open(&db, vault).unwrap(),
        runs: Runs::open(&db).unwrap(),
        users: Users::open(&db).unwrap(),
    }
}

/// Gives `connection` a destination and (optionally) a schedule.
fn configure(i: &Install, connection: &str, destination: &str, every: Option<&str>) {
    let change = ConfigChange {
        destination: Some(destination.to_string()),
        every: Some(every.map(|e| Every::parse(e).unwrap())),
        ..ConfigChange::default()
    };
    stores(i).configs.apply(connection, change).unwrap();
}

/// An API token of a new admin `ops`.
fn token(i: &Install) -> String {
    use xmbridge_vault::ExposeSecret;
    let users = stores(i).users;
    users
        .add(
            "ops",
            Role::Admin,
            &SecretString::from("correct horse battery".to_string()),
        )
        .unwrap();
    let (_, secret) = users.create_token("ops", None).unwrap();
    secret.expose_secret().to_string()
}

/// Waits until `done` holds for the connection's run history (newest first), up to `timeout`.
async fn wait_runs(
    i: &Install,
    connection: &str,
    timeout: Duration,
    what: &str,
    server: Option<&Served>,
    done: impl Fn(&[SyncRun]) -> bool,
) -> Vec<SyncRun> {
    let runs = stores(i).runs;
    let start = Instant::now();
    loop {
        let list = runs.list(connection, 100).unwrap();
        if done(&list) {
            return list;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: not within {timeout:?}; runs: {list:#?}\nserver stderr:\n{}",
                server.map(Served::stderr).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A destination: its URL, physical table names and row counts.
enum Dest {
    Sqlite(std::path::PathBuf),
    Pg(TestDb),
}

impl Dest {
    fn url(&self) -> String {
        match self {
            Dest::Sqlite(p) => format!("sqlite:{}", p.display()),
            Dest::Pg(db) => db.url().to_string(),
        }
    }

    /// Rows of every table the destination holds (the cursor table left out).
    async fn counts(&self) -> BTreeMap<String, u64> {
        match self {
            Dest::Sqlite(p) => sqlite_counts(p),
            Dest::Pg(db) => {
                let c = db.client().await;
                let tables = c
                    .query(
                        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'qualtrics'",
                        &[],
                    )
                    .await
                    .unwrap();
                let mut out = BTreeMap::new();
                for t in tables {
                    let name: String = t.get(0);
                    if name.starts_with('_') {
                        continue;
                    }
                    let n: i64 = c
                        .query_one(&format!("SELECT COUNT(*) FROM qualtrics.\"{name}\""), &[])
                        .await
                        .unwrap()
                        .get(0);
                    out.insert(name, n as u64);
                }
                out
            }
        }
    }
}

fn sqlite_counts(p: &Path) -> BTreeMap<String, u64> {
    let c = rusqlite::Connection::open(p).unwrap();
    let names: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'qualtrics\\_%' ESCAPE '\\'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    names
        .into_iter()
        .filter_map(|n| {
            let table = n.strip_prefix("qualtrics_")?.to_string();
            // The cursor table is the destination's own bookkeeping.
            if table.starts_with('_') {
                return None;
            }
            let count: i64 = c
                .query_row(&format!("SELECT COUNT(*) FROM \"{n}\""), [], |r| r.get(0))
                .unwrap();
            Some((table, count as u64))
        })
        .collect()
}

/// What a clean `xmbridge sync` of the same simulator writes into a fresh SQLite file.
async fn clean_counts(i: &Install) -> BTreeMap<String, u64> {
    let db = i.path("clean.db");
    i.ok(&[
        "sync",
        "acme",
        "--destination",
        &format!("sqlite:{}", db.display()),
        "--no-triggers",
    ])
    .await;
    sqlite_counts(&db)
}

// ---------------------------------------------------------------- listening, lock, TLS, ops

#[tokio::test]
async fn first_line_health_and_readiness_on_loopback() {
    let i = support::install();
    let mut s = start_server(&i, &[]).await;
    let rest = s
        .url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback http URL: {}", s.url));
    assert!(rest.parse::<u16>().unwrap() > 0, "{}", s.url);
    assert_eq!(
        s.stdout().lines().next().unwrap(),
        format!("listening on {}", s.url)
    );
    let c = http();
    healthy(&c, &s).await;
    let ready = c.get(s.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("state store answers"));
    // The webhook routes are there, as with `workflow run`: an unknown workflow is refused.
    let hook = c
        .post(s.at("/hooks/servicenow/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 401);
    s.terminate();
    let status = s.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", s.stderr());
    assert!(s.stdout().contains("stopped:"), "{}", s.stdout());
}

#[tokio::test]
async fn the_default_address_is_loopback_8080() {
    let i = support::install();
    let out = i.cmd(&["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:8080]"), "{help}");
    // Started without --listen: it either serves on 127.0.0.1:8080 or says it cannot bind
    // exactly that address (another program holds the port); nothing else.
    let mut child = i
        .cmd(&["serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    })
    .await
    .unwrap();
    match first {
        Some(Ok(line)) => {
            assert_eq!(line, "listening on http://127.0.0.1:8080");
            let _ = child.kill();
            let _ = child.wait();
        }
        _ => {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("cannot listen on 127.0.0.1:8080"), "{err}");
        }
    }
}

#[tokio::test]
async fn a_remote_address_is_refused_before_binding_without_allow_remote() {
    let i = support::install();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = i.run(&["serve", "--listen", addr]).await;
        out.fails(2, "not a loopback address");
        let err = out.stderr();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(out.stdout().is_empty(), "{}", out.stdout());
        // Refused before the home was even locked or opened.
        assert!(!i.home().join("serve.lock").exists());
    }
}

#[tokio::test]
async fn a_second_server_on_one_home_is_refused_and_a_killed_one_leaves_no_lock() {
    let i = support::install();
    let mut first = start_server(&i, &[]).await;
    let out = i.run(&["serve", "--listen", "127.0.0.1:0"]).await;
    out.fails(1, "already running");
    assert!(
        out.stderr().contains(&format!("pid {}", first.pid())),
        "{}",
        out.stderr()
    );
    assert!(
        out.stderr().contains("another XMBRIDGE_HOME"),
        "{}",
        out.stderr()
    );
    // The first one is unharmed.
    healthy(&http(), &first).await;
    // SIGKILL: the kernel drops the lock with the process.
    first.kill();
    let mut second = start_server(&i, &[]).await;
    second.terminate();
    assert!(second.wait(Duration::from_secs(30)).await.success());
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM files; returns the CA's PEM.
fn mint_tls(i: &Install) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "xmbridge serve test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cert_path = i.file("tls/cert.pem", &cert.pem());
    let key_path = i.file("tls/key.pem", &key.serialize_pem());
    (
        ca_cert.pem(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[tokio::test]
async fn tls_serves_health_over_https() {
    let i = support::install();
    let (ca, cert, key) = mint_tls(&i);
    let mut s = start_server(&i, &["--tls-cert", &cert, "--tls-key", &key]).await;
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    healthy(&c, &s).await;
    let ready = c.get(s.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = s.at("/healthz").replacen("https://", "http://", 1);
    assert!(http().get(plain).send().await.is_err());
    // A key that does not belong to the certificate is a clear usage error.
    let other = rcgen::KeyPair::generate().unwrap();
    let wrong = i.file("tls/other.pem", &other.serialize_pem());
    s.terminate();
    assert!(s.wait(Duration::from_secs(30)).await.success());
    let out = i
        .run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            wrong.to_str().unwrap(),
        ])
        .await;
    out.fails(2, "do not make a usable certificate");
}

// ---------------------------------------------------------------- schedules and metrics

#[tokio::test]
async fn a_schedule_fires_and_each_run_is_recorded_with_the_counts_the_destination_holds() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 40,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = i.path("scheduled.db");
    // Through the operator's CLI, as a person sets it up.
    i.ok(&[
        "connection",
        "set",
        "acme",
        "--destination",
        &format!("sqlite:{}", db.display()),
        "--every",
        "5m",
    ])
    .await;
    let token = token(&i);
    // 5m / 300: a slot every second.
    let mut s = start_server(&i, &["--schedule-scale", "300"]).await;
    wait_runs(
        &i,
        "acme",
        Duration::from_secs(90),
        "two scheduled runs succeed",
        Some(&s),
        |runs| {
            runs.iter()
                .filter(|r| r.trigger == RunTrigger::Schedule && r.status == RunStatus::Succeeded)
                .count()
                >= 2
        },
    )
    .await;
    let c = http();
    let metrics = c
        .get(s.at("/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert_eq!(
        c.get(s.at("/metrics")).send().await.unwrap().status(),
        401,
        "metrics need a token"
    );
    s.terminate();
    assert!(
        s.wait(Duration::from_secs(60)).await.success(),
        "{}",
        s.stderr()
    );

    let runs = stores(&i).runs.list("acme", 100).unwrap();
    // A slot may fire just before SIGTERM: that run stops at a commit boundary (cancelled) and
    // a resume run waits for the next start. Nothing failed.
    assert!(
        runs.iter().all(|r| r.status == RunStatus::Succeeded
            || r.status == RunStatus::Cancelled
            || (r.status == RunStatus::Queued && r.trigger == RunTrigger::Resume)),
        "{runs:#?}"
    );
    assert!(runs.iter().all(|r| r.trigger != RunTrigger::User));
    let first = runs.last().unwrap();
    assert_eq!(first.trigger, RunTrigger::Schedule);
    assert!(first.api_calls > 0, "{first:#?}");
    assert!(first.started_at.is_some() && first.finished_at.is_some());
    // The first run loaded the fresh destination: its per-table counts are exactly the rows a
    // clean sync writes, and the destination holds exactly those rows after the later
    // (incremental) runs.
    let held = sqlite_counts(&db);
    let clean = clean_counts(&i).await;
    assert_eq!(held, clean);
    for (table, n) in &clean {
        assert_eq!(
            first.tables.get(table).map(|c| c.inserted),
            Some(*n),
            "table {table}: first run {:?}, held {held:?}",
            first.tables
        );
    }
    assert_eq!(first.responses, clean["survey_response"]);
    for family in [
        "xmbridge_sync_runs{status=\"succeeded\"}",
        "xmbridge_sync_rows_written_total{table=\"survey_response\",operation=\"inserted\"}",
        "xmbridge_qualtrics_api_calls_total{connection=\"acme\"}",
        "xmbridge_qualtrics_throttled_total{connection=\"acme\"}",
        "xmbridge_outbox_events{state=\"pending\"}",
        "# TYPE xmbridge_delivery_latency_seconds histogram",
        "xmbridge_delivery_latency_seconds_count",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let node = nodes(&i).await[0]["id"].as_str().unwrap().to_string();
    assert!(
        text.lines().any(
            |l| l.starts_with(&format!("xmbridge_node_info{{node=\"{node}\","))
                && l.ends_with("} 1")
        ),
        "the node's series are labelled with its id:\n{text}"
    );
    let rows_line = text
        .lines()
        .find(|l| l.starts_with("xmbridge_sync_rows_written_total{table=\"survey_response\",operation=\"inserted\"}"))
        .unwrap();
    let written: u64 = rows_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(Some(&written), held.get("survey_response"), "{rows_line}");
}

#[tokio::test]
async fn slots_missed_while_the_server_was_down_run_once_at_start() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 5,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    configure(
        &i,
        "acme",
        &format!("sqlite:{}", i.path("m.db").display()),
        Some("1h"),
    );
    // The last slot was five hours ago: five slots were missed.
    let before = chrono::Utc::now();
    stores(&i)
        .runs
        .set_last_slot("acme", before - chrono::Duration::hours(5))
        .unwrap();
    let mut s = start_server(&i, &[]).await;
    wait_runs(
        &i,
        "acme",
        Duration::from_secs(60),
        "the missed slot's run succeeds",
        Some(&s),
        |runs| runs.iter().any(|r| r.status == RunStatus::Succeeded),
    )
    .await;
    // Time for more runs, were they (wrongly) queued once per missed slot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.terminate();
    assert!(s.wait(Duration::from_secs(30)).await.success());
    let runs = stores(&i).runs.list("acme", 10).unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].trigger, RunTrigger::Schedule);
    // The next slot counts from now, not from the missed ones.
    let last = stores(&i).runs.last_slot("acme").unwrap().unwrap();
    assert!(last >= before, "{last} < {before}");
}

#[tokio::test]
async fn a_paused_schedule_queues_nothing() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 5,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    configure(
        &i,
        "acme",
        &format!("sqlite:{}", i.path("p.db").display()),
        Some("5m"),
    );
    stores(&i)
        .configs
        .apply(
            "acme",
            ConfigChange {
                paused: Some(true),
                ..ConfigChange::default()
            },
        )
        .unwrap();
    let mut s = start_server(&i, &["--schedule-scale", "300"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stores(&i).runs.list("acme", 10).unwrap().is_empty());
    s.terminate();
    assert!(s.wait(Duration::from_secs(30)).await.success());
}

// ---------------------------------------------------------------- killed and stopped servers

/// A simulator slow enough (every answer 200 ms late) that a sync runs for many seconds, with
/// several commits.
async fn slow_sim() -> SimHandle {
    let mut cfg = SimConfig {
        surveys: 4,
        responses: 600,
        ..SimConfig::default()
    };
    cfg.faults.slow_ms = 200;
    sim(cfg).await
}

/// Answers at full speed again (for the resume and the reference sync).
async fn fast_again(h: &SimHandle) {
    let r = http()
        .post(format!("{}/_sim/faults", h.base_url))
        .json(&serde_json::json!({"slow_ms": 0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// Starts a server whose connection `acme` syncs into `dest` right away (a daily schedule's
/// first slot is now) and waits until the run is running and has committed something.
async fn server_with_a_running_sync(i: &Install, dest: &Dest, grace: &str) -> (Served, i64) {
    configure(i, "acme", &dest.url(), Some("24h"));
    let s = start_server(i, &["--grace-secs", grace]).await;
    let runs = wait_runs(
        i,
        "acme",
        Duration::from_secs(60),
        "the scheduled run is running with progress",
        Some(&s),
        |runs| {
            runs.first().is_some_and(|r| {
                r.status == RunStatus::Running
                    && r.progress["streams"]
                        .as_object()
                        .is_some_and(|m| m.values().any(|v| v["done"].as_u64() > Some(0)))
            })
        },
    )
    .await;
    (s, runs[0].id)
}

async fn killed_server_resumes(dest: Dest) {
    let h = slow_sim().await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let (mut s, id) = server_with_a_running_sync(&i, &dest, "30").await;
    s.kill();
    assert_eq!(stores(&i).runs.get(id).unwrap().status, RunStatus::Running);
    fast_again(&h).await;

    let mut again = start_server(&i, &[]).await;
    again
        .wait_stdout(
            &format!("sync run {id} was interrupted"),
            Duration::from_secs(10),
        )
        .await;
    let runs = wait_runs(
        &i,
        "acme",
        Duration::from_secs(180),
        "the resume run succeeds",
        Some(&again),
        |runs| {
            runs.iter()
                .any(|r| r.trigger == RunTrigger::Resume && r.status == RunStatus::Succeeded)
        },
    )
    .await;
    let killed = runs.iter().find(|r| r.id == id).unwrap();
    assert_eq!(killed.status, RunStatus::Failed);
    let err = killed.error.as_ref().unwrap();
    assert!(
        err.message.contains("server stopped during this run"),
        "{err:?}"
    );
    assert!(err.fix.as_ref().unwrap().contains("resume run"), "{err:?}");
    let resumes: Vec<_> = runs
        .iter()
        .filter(|r| r.trigger == RunTrigger::Resume)
        .collect();
    assert_eq!(resumes.len(), 1, "{runs:#?}");
    again.terminate();
    assert!(again.wait(Duration::from_secs(60)).await.success());

    // Nothing lost, nothing doubled: the destination holds what a clean sync writes.
    let held = dest.counts().await;
    let clean = clean_counts(&i).await;
    assert_eq!(held, clean);
    assert!(held["survey_response"] > 1000, "{held:?}");
}

#[tokio::test]
async fn sqlite_a_killed_server_marks_its_run_failed_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    killed_server_resumes(Dest::Sqlite(dir.path().join("killed.db"))).await;
}

#[tokio::test]
async fn postgres_a_killed_server_marks_its_run_failed_and_resumes() {
    let Some(db) = TestDb::create("xmb_cli_serve_killed").await else {
        return;
    };
    killed_server_resumes(Dest::Pg(db)).await;
}

async fn sigterm_stops_at_a_commit_boundary(dest: Dest, grace: &str) {
    let h = slow_sim().await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let (mut s, id) = server_with_a_running_sync(&i, &dest, grace).await;
    s.terminate();
    let status = s.wait(Duration::from_secs(90)).await;
    assert!(status.success(), "{status:?}\n{}", s.stderr());
    fast_again(&h).await;
    let run = stores(&i).runs.get(id).unwrap();
    assert!(
        matches!(run.status, RunStatus::Cancelled | RunStatus::Succeeded),
        "{run:#?}"
    );
    let runs = stores(&i).runs.list("acme", 10).unwrap();
    eprintln!(
        "run {id} after SIGTERM: {} {:?}",
        run.status,
        run.tables.get("survey_response")
    );
    if run.status == RunStatus::Cancelled {
        assert!(
            run.error
                .as_ref()
                .unwrap()
                .message
                .contains("server stopped"),
            "{run:#?}"
        );
        // What the stopped run committed is in its record and in the destination. A run
        // dropped mid-write (no grace) may have had one more batch land than it counted; its
        // message says so.
        let held = dest.counts().await;
        let dropped = run
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("dropped while writing"));
        for (t, c) in &run.tables {
            let h = held.get(t).copied().unwrap_or(0);
            if dropped {
                assert!(
                    h >= c.inserted,
                    "table {t}: held {h} < counted {}",
                    c.inserted
                );
            } else {
                assert_eq!(h, c.inserted, "table {t}");
            }
        }
        assert!(
            runs.iter()
                .any(|r| r.trigger == RunTrigger::Resume && r.status == RunStatus::Queued),
            "{runs:#?}"
        );
    }
    let mut again = start_server(&i, &[]).await;
    if run.status == RunStatus::Cancelled {
        wait_runs(
            &i,
            "acme",
            Duration::from_secs(180),
            "the resume run succeeds",
            Some(&again),
            |runs| {
                runs.iter()
                    .any(|r| r.trigger == RunTrigger::Resume && r.status == RunStatus::Succeeded)
            },
        )
        .await;
    }
    again.terminate();
    assert!(again.wait(Duration::from_secs(60)).await.success());
    assert_eq!(dest.counts().await, clean_counts(&i).await);
}

#[tokio::test]
async fn sqlite_sigterm_during_a_sync_exits_0_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    sigterm_stops_at_a_commit_boundary(Dest::Sqlite(dir.path().join("term.db")), "30").await;
}

#[tokio::test]
async fn sqlite_sigterm_without_grace_drops_the_run_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    sigterm_stops_at_a_commit_boundary(Dest::Sqlite(dir.path().join("drop.db")), "0").await;
}

#[tokio::test]
async fn postgres_sigterm_during_a_sync_exits_0_and_a_restart_resumes() {
    let Some(db) = TestDb::create("xmb_cli_serve_term").await else {
        return;
    };
    sigterm_stops_at_a_commit_boundary(Dest::Pg(db), "30").await;
}

#[tokio::test]
async fn a_destination_that_cannot_be_reached_fails_with_its_fix_and_the_schedule_goes_on() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 5,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    // A loopback port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    configure(
        &i,
        "acme",
        &format!("postgres://nobody@127.0.0.1:{port}/none?sslmode=disable"),
        Some("5m"),
    );
    let mut s = start_server_exact(
        &i,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--schedule-scale",
            "300",
        ],
    )
    .await;
    let runs = wait_runs(
        &i,
        "acme",
        Duration::from_secs(60),
        "two failed scheduled runs",
        Some(&s),
        |runs| {
            runs.iter()
                .filter(|r| r.status == RunStatus::Failed)
                .count()
                >= 2
        },
    )
    .await;
    s.terminate();
    assert!(s.wait(Duration::from_secs(30)).await.success());
    // The operator sees it in the log at the default level.
    assert!(s.stderr().contains("sync run failed"), "{}", s.stderr());
    let failed = runs.iter().find(|r| r.status == RunStatus::Failed).unwrap();
    let err = failed.error.as_ref().unwrap();
    assert!(err.message.contains("127.0.0.1"), "{err:?}");
    assert!(
        err.fix
            .as_ref()
            .unwrap()
            .contains("xmbridge connection set acme"),
        "{err:?}"
    );
}

#[tokio::test]
async fn sync_now_during_a_run_queues_one_and_a_cancel_stops_at_a_commit_boundary() {
    let h = slow_sim().await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::Sqlite(dir.path().join("now.db"));
    // No schedule, and paused: "sync now" still runs.
    configure(&i, "acme", &dest.url(), None);
    stores(&i)
        .configs
        .apply(
            "acme",
            ConfigChange {
                paused: Some(true),
                ..ConfigChange::default()
            },
        )
        .unwrap();
    let token = token(&i);
    let mut s = start_server(&i, &[]).await;
    let c = http();
    let sync_now = || async {
        let r = c
            .post(s.at("/api/v1/connections/acme/syncs"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json::<serde_json::Value>().await.unwrap()
    };
    let first = sync_now().await;
    let id1 = first["id"].as_i64().unwrap();
    assert_eq!(first["already_queued"], false);
    wait_runs(
        &i,
        "acme",
        Duration::from_secs(60),
        "the first run runs",
        Some(&s),
        |runs| {
            runs.iter()
                .any(|r| r.id == id1 && r.status == RunStatus::Running)
        },
    )
    .await;
    // During the run: one more is queued, and asking again returns that one.
    let second = sync_now().await;
    let id2 = second["id"].as_i64().unwrap();
    assert_ne!(id2, id1);
    assert_eq!(second["already_queued"], false);
    assert_eq!(second["running"], id1);
    let third = sync_now().await;
    assert_eq!(third["id"], id2);
    assert_eq!(third["already_queued"], true);
    assert_eq!(third["running"], id1);
    let cancel = c
        .post(s.at(&format!("/api/v1/syncs/{id1}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        cancel.status().is_success(),
        "{}",
        cancel.text().await.unwrap()
    );
    let runs = wait_runs(
        &i,
        "acme",
        Duration::from_secs(120),
        "the first run is cancelled, the queued one finishes",
        Some(&s),
        |runs| {
            runs.iter().any(|r| r.id == id1 && r.status.is_finished())
                && runs
                    .iter()
                    .any(|r| r.id == id2 && r.status == RunStatus::Succeeded)
        },
    )
    .await;
    s.terminate();
    assert!(s.wait(Duration::from_secs(60)).await.success());
    let r1 = runs.iter().find(|r| r.id == id1).unwrap();
    eprintln!("run {id1} after its cancel: {} {:?}", r1.status, r1.error);
    // Cancelled at a commit boundary (or it had just finished before the cancel arrived).
    assert!(
        matches!(r1.status, RunStatus::Cancelled | RunStatus::Succeeded),
        "{r1:#?}"
    );
    assert_eq!(r1.trigger, RunTrigger::Api);
    assert_eq!(r1.requested_by.as_deref(), Some("ops"));
    assert_eq!(
        runs.len(),
        2,
        "a user's cancel queues no resume run: {runs:#?}"
    );
    fast_again(&h).await;
    assert_eq!(dest.counts().await, clean_counts(&i).await);
}

#[tokio::test]
async fn several_qualtrics_connections_do_not_stop_the_server_from_starting() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 5,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    i.connect(&h, "globex").await;
    let mut s = start_server(&i, &[]).await;
    healthy(&http(), &s).await;
    s.terminate();
    assert!(s.wait(Duration::from_secs(30)).await.success());
    assert!(
        s.stderr()
            .contains("several Qualtrics connections (acme, globex)"),
        "{}",
        s.stderr()
    );
    // `workflow run` keeps asking which one (it has no other use).
    let out = i.run(&["workflow", "run", "--once"]).await;
    out.fails(2, "several Qualtrics connections");
}

/// This installation's nodes as `cluster status --json` lists them.
async fn nodes(i: &Install) -> Vec<serde_json::Value> {
    i.json(&["cluster", "status", "--json"]).await["nodes"]
        .as_array()
        .expect("nodes")
        .clone()
}

#[tokio::test]
async fn cluster_status_and_the_api_list_the_node_alive_then_stopped() {
    let i = support::install();
    let token = token(&i);
    let mut s = start_server(&i, &["--heartbeat-secs", "1"]).await;
    let listed = nodes(&i).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let node = &listed[0];
    assert_eq!(node["state"], "alive", "{node}");
    assert_eq!(node["pid"], s.pid(), "{node}");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{node}");
    assert_eq!(node["url"], s.url.trim_end_matches('/'), "{node}");
    assert_eq!(node["heartbeat_every_s"], 1.0, "{node}");
    let id = node["id"].as_str().expect("id").to_string();
    // A heartbeat follows within its interval.
    let first_beat = node["last_heartbeat"].clone();
    let start = Instant::now();
    while nodes(&i).await[0]["last_heartbeat"] == first_beat {
        assert!(start.elapsed() < Duration::from_secs(10), "no heartbeat");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = http();
    let answer = c
        .get(s.at("/api/v1/cluster"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["this_node"], id.as_str(), "{body}");
    assert_eq!(body["nodes"][0]["id"], id.as_str(), "{body}");
    assert_eq!(body["nodes"][0]["state"], "alive", "{body}");
    assert_eq!(
        c.get(s.at("/api/v1/cluster"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "the cluster needs a signed-in caller"
    );
    let text = i.ok(&["cluster", "status"]).await;
    assert!(
        text.contains(&id) && text.contains("1 of 1 node(s) alive"),
        "{text}"
    );
    s.terminate();
    assert!(s.wait(Duration::from_secs(30)).await.success());
    let after = nodes(&i).await;
    assert_eq!(after[0]["id"], id.as_str());
    assert_eq!(after[0]["state"], "stopped", "{after:?}");
    assert!(after[0]["stopped_at"].is_string(), "{after:?}");
}

#[tokio::test]
async fn a_killed_node_is_reported_not_responding_and_the_next_one_alive() {
    let i = support::install();
    let mut s = start_server(&i, &["--heartbeat-secs", "1"]).await;
    let killed = nodes(&i).await[0]["id"].as_str().expect("id").to_string();
    s.kill();
    let start = Instant::now();
    loop {
        let listed = nodes(&i).await;
        let state = listed[0]["state"].as_str().expect("state").to_string();
        if state == "not_responding" {
            break;
        }
        assert_eq!(
            state, "alive",
            "a killed node never says stopped: {listed:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still alive after 15 s: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut next = start_server(&i, &["--heartbeat-secs", "1"]).await;
    let listed = nodes(&i).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["state"], "alive", "the newest first: {listed:?}");
    assert_eq!(listed[0]["pid"], next.pid());
    assert_eq!(listed[1]["id"], killed.as_str());
    assert_eq!(listed[1]["state"], "not_responding");
    next.terminate();
    assert!(next.wait(Duration::from_secs(30)).await.success());
}

// ---------------------------------------------------------------- several servers, one store

/// Connection `acme` of the PostgreSQL state store `state` syncs into `destination` once a day:
/// its first slot is now, and no second one comes during a test.
async fn daily_on_store(i: &Install, destination: &str, state: &str) {
    i.ok(&[
        "connection",
        "set",
        "acme",
        "--destination",
        destination,
        "--every",
        "24h",
        "--state",
        state,
    ])
    .await;
}

/// `(id, status, trigger, node, error)` of every run of `connection` in a PostgreSQL state
/// store, oldest first.
async fn pg_runs(
    state: &tokio_postgres::Client,
    connection: &str,
) -> Vec<(i64, String, String, Option<String>, Option<String>)> {
    state
        .query(
            "SELECT id, status, trigger, node_id, error_message FROM svc_sync_runs
             WHERE connection = $1 ORDER BY id",
            &[&connection],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Two servers on one PostgreSQL state store (two homes, one master key): the schedule's slot
/// fires once between them; the server running the sync is killed; the other one takes the run
/// over once the killed one has missed three heartbeats, and its resume leaves the destination
/// as a clean sync would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_store_fire_a_slot_once_and_take_over_a_killed_ones_run() {
    let Some(state_db) = TestDb::create("xmb_serve_two_nodes").await else {
        return;
    };
    let url = state_db.url().to_string();
    let state = state_db.client().await;
    let h = slow_sim().await;
    let a = support::install_sharing_key();
    let b = support::install_sharing_key();
    a.connect_with(&h, "acme", &["--state", &url]).await;
    let dest = a.path("two.db");
    // A daily schedule: its first slot is now, and no second one comes during the test.
    daily_on_store(&a, &format!("sqlite:{}", dest.display()), &url).await;
    let args = [
        "--state",
        url.as_str(),
        "--heartbeat-secs",
        "1",
        "--grace-secs",
        "30",
    ];
    let mut servers = [start_server(&a, &args).await, start_server(&b, &args).await];

    // One run, started by one of the two, committing.
    let start = Instant::now();
    let (run, node) = loop {
        let runs = pg_runs(&state, "acme").await;
        if let Some((id, status, _, Some(node), _)) = runs.first()
            && status == "running"
            && std::fs::metadata(&dest).is_ok_and(|m| m.len() > 0)
        {
            break (*id, node.clone());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no run started: {runs:?}\n{}\n{}",
            servers[0].stderr(),
            servers[1].stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cluster = a
        .json(&["cluster", "status", "--json", "--state", &url])
        .await;
    let listed: Vec<&serde_json::Value> = cluster["nodes"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 2, "{cluster}");
    assert!(listed.iter().all(|n| n["state"] == "alive"), "{cluster}");
    let runner_url = listed
        .iter()
        .find(|n| n["id"] == node.as_str())
        .map(|n| n["url"].as_str().unwrap().to_string())
        .expect("the run's node is listed");
    let runner = servers
        .iter()
        .position(|s| s.at("") == runner_url)
        .expect("the run's node is one of the two");

    // A node that heartbeats keeps its run: after more than three heartbeats and two looks
    // by the other node, it is still running there.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = pg_runs(&state, "acme").await;
    assert_eq!(
        (now[0].0, now[0].1.as_str(), now[0].3.as_deref()),
        (run, "running", Some(node.as_str())),
        "{now:?}"
    );

    servers[runner].kill();
    fast_again(&h).await;
    let survivor = &servers[1 - runner];
    let start = Instant::now();
    let runs = loop {
        let runs = pg_runs(&state, "acme").await;
        if runs.iter().any(|r| r.2 == "resume" && r.1 == "succeeded") {
            break runs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the run was not taken over: {runs:?}\n{}",
            survivor.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let killed = runs.iter().find(|r| r.0 == run).unwrap();
    assert_eq!(killed.1, "failed", "{runs:?}");
    assert!(
        killed.4.as_deref().is_some_and(|m| m.contains(&format!(
            "the server {node} that ran it stopped heartbeating"
        ))),
        "{runs:?}"
    );
    // The slot fired once across both servers, and one resume took over.
    assert_eq!(
        runs.iter().filter(|r| r.2 == "schedule").count(),
        1,
        "{runs:?}"
    );
    assert_eq!(
        runs.iter().filter(|r| r.2 == "resume").count(),
        1,
        "{runs:?}"
    );
    let resume = runs.iter().find(|r| r.2 == "resume").unwrap();
    assert_ne!(resume.3.as_deref(), Some(node.as_str()), "{runs:?}");
    servers[1 - runner].terminate();
    assert!(
        servers[1 - runner]
            .wait(Duration::from_secs(60))
            .await
            .success()
    );

    // Nothing lost, nothing doubled.
    let clean = a.path("clean.db");
    a.ok(&[
        "sync",
        "acme",
        "--destination",
        &format!("sqlite:{}", clean.display()),
        "--no-triggers",
        "--state",
        &url,
    ])
    .await;
    let held = sqlite_counts(&dest);
    assert_eq!(held, sqlite_counts(&clean));
    assert!(held["survey_response"] > 1000, "{held:?}");
}

/// A server frozen (SIGSTOP) past its heartbeats while it syncs into PostgreSQL loses the run:
/// the other server takes it over, and the resume's claim on the destination ends the frozen
/// server's sessions (which held the schema's lock). Woken (SIGCONT), the frozen server writes
/// nothing more: no cursor was written after the resume ended, the fence row holds the resume's
/// token, and the destination equals a clean sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_frozen_past_its_lease_loses_its_run_and_writes_nothing_after_waking() {
    let Some(state_db) = TestDb::create("xmb_serve_frozen").await else {
        return;
    };
    let Some(dest_db) = TestDb::create("xmb_serve_frozen_dest").await else {
        return;
    };
    let url = state_db.url().to_string();
    let state = state_db.client().await;
    let h = slow_sim().await;
    let a = support::install_sharing_key();
    let b = support::install_sharing_key();
    a.connect_with(&h, "acme", &["--state", &url]).await;
    daily_on_store(&a, dest_db.url(), &url).await;
    let args = [
        "--state",
        url.as_str(),
        "--heartbeat-secs",
        "1",
        "--grace-secs",
        "30",
    ];
    let mut servers = [start_server(&a, &args).await, start_server(&b, &args).await];

    // The scheduled run, committing on one of the two.
    let start = Instant::now();
    let (run, node) = loop {
        let row = state
            .query_opt(
                "SELECT id, node_id FROM svc_sync_runs WHERE connection = 'acme' AND status = 'running' \
                 AND jsonb_path_exists(progress::jsonb, '$.streams.*.done ? (@ > 0)')",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row
            && let Some(node) = row.get::<_, Option<String>>(1)
        {
            break (row.get::<_, i64>(0), node);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no run started: {:?}\n{}\n{}",
            pg_runs(&state, "acme").await,
            servers[0].stderr(),
            servers[1].stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cluster = a
        .json(&["cluster", "status", "--json", "--state", &url])
        .await;
    let runner_url = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node.as_str())
        .map(|n| n["url"].as_str().unwrap().to_string())
        .expect("the run's node is listed");
    let runner = servers
        .iter()
        .position(|s| s.at("") == runner_url)
        .expect("the run's node is one of the two");

    servers[runner].freeze();
    fast_again(&h).await;
    let survivor = &servers[1 - runner];
    let start = Instant::now();
    let runs = loop {
        let runs = pg_runs(&state, "acme").await;
        if runs.iter().any(|r| r.2 == "resume" && r.1 == "succeeded") {
            break runs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the frozen server's run was not taken over: {runs:?}\n{}",
            survivor.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let frozen = runs.iter().find(|r| r.0 == run).unwrap();
    assert_eq!(frozen.1, "failed", "{runs:?}");
    let resume = runs.iter().find(|r| r.2 == "resume").unwrap();
    let row = state
        .query_one(
            "SELECT fence, finished_at, (SELECT fence FROM svc_sync_runs WHERE id = $2) \
             FROM svc_sync_runs WHERE id = $1",
            &[&resume.0, &run],
        )
        .await
        .unwrap();
    let (resume_fence, resume_end, frozen_fence): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert!(resume_fence > frozen_fence, "{resume_fence} {frozen_fence}");
    assert!(
        survivor
            .stderr()
            .contains("ended the destination session of an earlier run that lost its lease"),
        "{}",
        survivor.stderr()
    );

    // Woken, the frozen server finds its run taken over and writes nothing.
    servers[runner].thaw();
    let start = Instant::now();
    while !servers[runner]
        .stderr()
        .contains("sync run was taken over by another server meanwhile")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the woken server did not notice: {}",
            servers[runner].stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dest = dest_db.client().await;
    let fence: i64 = dest
        .query_one(
            "SELECT token FROM qualtrics._xmbridge_fence WHERE scope = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fence, resume_fence);
    let last_cursor_ms: i64 = dest
        .query_one(
            "SELECT CAST(EXTRACT(EPOCH FROM max(updated_at)) * 1000 AS BIGINT) FROM qualtrics._xmbridge_state",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        last_cursor_ms <= resume_end,
        "a cursor was written {} ms after the resume ended",
        last_cursor_ms - resume_end
    );
    for s in servers.iter_mut() {
        s.terminate();
        assert!(
            s.wait(Duration::from_secs(60)).await.success(),
            "{}",
            s.stderr()
        );
    }
    let held = Dest::Pg(dest_db).counts().await;
    let clean = a.path("clean.db");
    a.ok(&[
        "sync",
        "acme",
        "--destination",
        &format!("sqlite:{}", clean.display()),
        "--no-triggers",
        "--state",
        &url,
    ])
    .await;
    assert_eq!(held, sqlite_counts(&clean));
    assert!(held["survey_response"] > 1000, "{held:?}");
}

/// Each Qualtrics brand's rate limit is divided among the live servers on one store: with two
/// servers, each says in `/metrics` that it paces at half; once one is killed and has missed its
/// heartbeats, the other takes the whole limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_brand_rate_limit_is_divided_among_the_live_servers() {
    let Some(state_db) = TestDb::create("xmb_serve_share").await else {
        return;
    };
    let url = state_db.url().to_string();
    let a = support::install_sharing_key();
    let b = support::install_sharing_key();
    let pw = a.file("pw", "correct horse battery staple\n");
    a.ok(&[
        "user",
        "add",
        "ops",
        "--role",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
        "--state",
        &url,
    ])
    .await;
    let token = a.ok(&["user", "token", "ops", "--state", &url]).await;
    let token = token.trim().to_string();
    let args = ["--state", url.as_str(), "--heartbeat-secs", "1"];
    let mut servers = [start_server(&a, &args).await, start_server(&b, &args).await];
    let share = async |s: &Served| -> Option<u32> {
        let text = http()
            .get(s.at("/metrics"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("xmbridge_brand_rate_limit_share "))?
            .trim()
            .parse()
            .ok()
    };
    let wait_for = async |s: &Served, wanted: u32, why: &str| {
        let start = Instant::now();
        loop {
            let now = share(s).await;
            if now == Some(wanted) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{why}: the share is {now:?}, not {wanted}\n{}",
                s.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for(&servers[0], 2, "two servers alive").await;
    wait_for(&servers[1], 2, "two servers alive").await;
    servers[1].kill();
    wait_for(&servers[0], 1, "one server left").await;
    servers[0].terminate();
    assert!(servers[0].wait(Duration::from_secs(30)).await.success());
}

/// On a PostgreSQL state store, an event another process stores wakes this server's idle
/// delivery workers at once (the commit announces it, the server LISTENs): here they would
/// otherwise look again only after a minute (`--delivery-poll-ms 60000`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_stored_elsewhere_wakes_this_servers_idle_workers_at_once() {
    use xmbridge_workflows::outbox::Outbox;
    use xmbridge_workflows::store::{EventSource, NewEvent, WorkflowStore};
    let Some(state_db) = TestDb::create("xmb_serve_wakeups").await else {
        return;
    };
    let url = state_db.url().to_string();
    let h = sim(SimConfig {
        contacts: 0,
        rate_limit_per_min: 0,
        ..SimConfig::default()
    })
    .await;
    let dir = h.sim.directory.default_directory_id();
    let i = support::install_sharing_key();
    i.connect_with(&h, "q", &["--state", &url]).await;
    i.write_workflow(
        "wake.toml",
        &crate::cli_workflow_run::servicenow_contact_workflow("wake", &dir),
    );
    let mut s = start_server(&i, &["--state", &url, "--delivery-poll-ms", "60000"]).await;
    // The workers' first look (nothing due) is over: the next one is a minute away.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Another process stores an event in the shared outbox.
    let store_url = url.clone();
    let worker = xmbridge_state::db::PgWorker::start(move || {
        let url = store_url.clone();
        async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok((client, url))
        }
    })
    .unwrap();
    let store =
        WorkflowStore::open_at(&xmbridge_state::db::StateLocation::Postgres(worker)).unwrap();
    let stored = Instant::now();
    Outbox::new(Arc::new(store))
        .enqueue(&NewEvent {
            workflow: "wake".into(),
            source: EventSource::ServiceNow,
            dedupe_key: "wake-1@1".into(),
            payload: serde_json::json!({"table": "incident",
                "record": {"sys_id": "wake-1", "email": "wake@example.com"}}),
        })
        .unwrap();
    loop {
        let contacts = crate::cli_workflow_run::contacts_by_ext_ref(&h, &dir).await;
        if contacts.get("wake-1") == Some(&1) {
            break;
        }
        assert!(
            stored.elapsed() < Duration::from_secs(20),
            "not delivered: {contacts:?}\n{}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.terminate();
    assert!(
        s.wait(Duration::from_secs(30)).await.success(),
        "{}",
        s.stderr()
    );
}

/// A loopback TCP relay to the test's PostgreSQL server that the test can cut and restore,
/// as a network partition or a database restart would.
struct Relay {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            tasks: Arc::default(),
        };
        relay.serve(listener, to);
        relay
    }

    fn serve(&self, listener: tokio::net::TcpListener, to: std::net::SocketAddr) {
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Drops every relayed connection and refuses new ones.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Accepts again on the same port.
    async fn restore(&self, to: std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener, to);
    }
}

/// Polls `/readyz` until it answers `status`; returns its body.
async fn readyz_until(s: &Served, status: u16, within: Duration) -> String {
    let c = http();
    let start = Instant::now();
    loop {
        if let Ok(r) = c.get(s.at("/readyz")).send().await {
            let code = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if code == status {
                return body;
            }
        }
        assert!(
            start.elapsed() < within,
            "/readyz did not answer {status} within {within:?}\n{}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server cut off from its PostgreSQL state store says so in `/readyz` and its log, and picks
/// up again once it is back. A sync that finishes while the store is away has its end recorded
/// then: the run does not stay `running` (which would keep its connection from syncing again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_loses_its_postgres_state_store_says_so_and_picks_up_again() {
    let Some(db) = TestDb::create("xmb_serve_lost_state").await else {
        return;
    };
    let Some(dest) = TestDb::create("xmb_serve_lost_state_dest").await else {
        return;
    };
    // XMBRIDGE_TEST_PG's user and address (postgres://USER@IP:PORT/DB); the relay stands
    // between them and the server.
    let rest = db.server_url().split_once("://").unwrap().1;
    let (user, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let host = host.split('/').next().unwrap();
    let server: std::net::SocketAddr = host
        .parse()
        .or_else(|_| format!("{host}:5432").parse())
        .unwrap_or_else(|e| panic!("XMBRIDGE_TEST_PG must name an IP address for this test: {e}"));
    let relay = Relay::start(server).await;
    let url = format!("postgres://{user}@127.0.0.1:{}/{}", relay.port, db.name());
    let i = support::install();
    let h = slow_sim().await;
    i.connect_with(&h, "acme", &["--state", &url]).await;
    daily_on_store(&i, dest.url(), &url).await;
    let mut s = start_server(&i, &["--state", &url, "--heartbeat-secs", "1"]).await;
    let body = readyz_until(&s, 200, Duration::from_secs(10)).await;
    assert!(body.contains("the state store answers"), "{body}");
    // The daily schedule's first slot: a run, committing.
    let state = db.client().await;
    let run_state = async || -> Option<(i64, String)> {
        state
            .query_opt(
                "SELECT id, status FROM svc_sync_runs WHERE connection = 'acme'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    };
    let start = Instant::now();
    let run = loop {
        let committed = dest
            .client()
            .await
            .query_opt("SELECT 1 FROM qualtrics._xmbridge_state LIMIT 1", &[])
            .await
            .is_ok_and(|r| r.is_some());
        if let Some((id, status)) = run_state().await
            && status == "running"
            && committed
        {
            break id;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{}", s.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    relay.cut();
    // The sync goes on (its destination is not behind the relay) and ends while the store is
    // away.
    fast_again(&h).await;
    let body = readyz_until(&s, 503, Duration::from_secs(20)).await;
    assert!(body.contains("the state store does not answer"), "{body}");
    // The next statement (a heartbeat, at the latest) tries to connect again, and says why not.
    let start = Instant::now();
    while !s
        .stderr()
        .contains("the PostgreSQL state store cannot be reached")
    {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", s.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let start = Instant::now();
    while !s
        .stderr()
        .contains("cannot record the end of the sync run (the state store does not answer)")
    {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", s.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(run_state().await, Some((run, "running".to_string())));

    relay.restore(server).await;
    readyz_until(&s, 200, Duration::from_secs(20)).await;
    let start = Instant::now();
    while run_state().await != Some((run, "succeeded".to_string())) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}\n{}",
            run_state().await,
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.terminate();
    assert!(
        s.wait(Duration::from_secs(30)).await.success(),
        "{}",
        s.stderr()
    );
}
