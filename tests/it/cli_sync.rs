//! `xmbridge sync` end to end: the real binary, a stored connection, the simulator over
//! loopback, and real SQLite and PostgreSQL destinations — including a sync killed with SIGKILL
//! at several moments and resumed.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_test_kit::pg::{TestDb, connect as pg_client};

use crate::support::{self, Install};

async fn sim(cfg: SimConfig) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

/// `inserted` of a table in the summary printed by `xmbridge sync`.
fn inserted(summary: &str, table: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(table)).then(|| it.next().unwrap().parse().unwrap())
        })
        .unwrap_or(0)
}

fn sqlite_rows(db: &Path, sql: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare(sql).unwrap();
    let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[tokio::test]
async fn sqlite_full_then_incremental() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 200,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = i.path("q.db");
    let dest = format!("sqlite:{}", db.display());

    let first = i.ok(&["sync", "acme", "--destination", &dest]).await;
    let responses = inserted(&first, "survey_response");
    assert!(responses > 300, "{first}");
    assert!(
        inserted(&first, "question_response") > responses * 10,
        "{first}"
    );
    let in_db = sqlite_rows(&db, "SELECT id FROM qualtrics_survey_response");
    assert_eq!(in_db.len() as u64, responses);

    // Nothing changed: no response is written again.
    let second = i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(inserted(&second, "survey_response"), 0, "{second}");

    // One new response through the API: exactly that one arrives, with its answers.
    let sid = h.sim.surveys[0].id.clone();
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/surveys/{sid}/responses", h.api_url()))
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .json(&json!({"values": {"QID1": 1, "segment": "3"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rid = r["result"]["responseId"].as_str().unwrap().to_string();
    let third = i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(inserted(&third, "survey_response"), 1, "{third}");
    let answers = sqlite_rows(
        &db,
        &format!("SELECT question_id FROM qualtrics_question_response WHERE response_id = '{rid}'"),
    );
    assert_eq!(answers, ["QID1"]);

    // Deleted upstream: kept until a reconcile, then gone with its answer rows.
    let gone = sqlite_rows(&db, &format!("SELECT id FROM qualtrics_survey_response WHERE survey_id = '{sid}' AND id <> '{rid}' ORDER BY id LIMIT 1"))
        .pop()
        .unwrap();
    let r = reqwest::Client::new()
        .delete(format!("{}/surveys/{sid}/responses/{gone}", h.api_url()))
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let survey_of = |id: &str| {
        sqlite_rows(
            &db,
            &format!("SELECT survey_id FROM qualtrics_survey_response WHERE id = '{id}'"),
        )
    };
    i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(
        survey_of(&gone),
        std::slice::from_ref(&sid),
        "kept without --reconcile"
    );
    i.ok(&["sync", "acme", "--destination", &dest, "--reconcile"])
        .await;
    assert!(survey_of(&gone).is_empty(), "removed by --reconcile");
    let left = sqlite_rows(
        &db,
        &format!(
            "SELECT _xmbridge_id FROM qualtrics_question_response WHERE response_id = '{gone}'"
        ),
    );
    assert!(left.is_empty(), "its answer rows are removed too");
    assert_eq!(
        sqlite_rows(&db, "SELECT id FROM qualtrics_survey_response").len(),
        in_db.len(),
        "one added, one removed"
    );
}

/// Kill -9 at 20+ pseudo-random moments (fixed seed), running again each time, then finish: the
/// destination equals a clean sync, row for row, with nothing doubled, and has its key and
/// indexes (a first load builds them last, so kills land between their drop and their build).
async fn kill_loop(clean: &Db, killed: &Db) {
    let cfg = SimConfig {
        surveys: 3,
        responses: 1500,
        ..SimConfig::default()
    };
    let h = sim(cfg).await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let args = |dest: String| {
        vec![
            "sync".to_string(),
            "acme".into(),
            "--destination".into(),
            dest,
            "--parallel".into(),
            "2".into(),
            "--commit-every".into(),
            "300".into(),
        ]
    };

    let clean_args = args(clean.url());
    let clean_argv: Vec<&str> = clean_args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    i.ok(&clean_argv).await;
    // Kill moments spread over a whole sync, so kills land in the response loads too.
    let span_ms = (started.elapsed().as_millis() as u64).clamp(600, 3000);

    let killed_args = args(killed.url());
    let killed_argv: Vec<&str> = killed_args.iter().map(String::as_str).collect();
    let mut kills = 0;
    // PostgreSQL: kills that left a first load without its primary key (dropped, not yet rebuilt).
    let mut keyless = 0;
    let mut seed: u64 = 0x5EED;
    // Halved each time a run finishes before its kill: once most rows are in, a resumed run is
    // much shorter than the clean one (on a fast machine, shorter than most kill moments).
    let mut window_ms = span_ms;
    for _attempt in 0..80 {
        if kills >= 20 {
            break;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay_ms = 60 + (seed >> 33) % window_ms;
        let mut child = i
            .cmd(&killed_argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        } else {
            window_ms = (window_ms / 2).max(20);
        }
        child.wait().unwrap();
        if let Db::Pg { url, .. } = killed {
            let state = key_state(&pg_client(url).await).await;
            keyless += usize::from(state.starts_with("keyless"));
        }
    }
    eprintln!(
        "{kills} syncs killed with SIGKILL before the final run ({keyless} left a keyless table)"
    );
    assert!(kills >= 20, "only {kills} runs could be killed");

    // The killed runs did commit work (so the final run really resumes rather than starts over).
    let partial = killed
        .rows(&format!("SELECT id FROM {}", killed.t("survey")))
        .await
        .len();
    assert!(partial > 0, "no killed run committed anything");
    i.ok(&killed_argv).await;

    assert_same_rows(
        clean,
        killed,
        &[
            (
                "survey_response",
                "id || '|' || survey_id || '|' || recorded_date || '|' || finished",
            ),
            (
                "question_response",
                "_xmbridge_id || '|' || response_id || '|' || coalesce(value, '') || '|' || coalesce(label, '')",
            ),
            (
                "survey_embedded_data",
                "response_id || '|' || key || '|' || coalesce(value, '')",
            ),
            ("question", "id || '|' || survey_id"),
        ],
        &format!("after {kills} kills"),
    )
    .await;
    // The answer table's key and a filter index are in place (on PostgreSQL the answer table's
    // key serves its `response_id` lookups, and so does the embedded data's key, which leads
    // with `response_id`: the filter index checked there is `survey_response`'s).
    let (key_sql, index_sql) = match killed {
        Db::Sqlite(_) => (
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'qualtrics_question_response__pkey'",
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'qualtrics_question_response__response_id_idx'",
        ),
        Db::Pg { .. } => (
            "SELECT conname::text FROM pg_constraint WHERE conrelid = 'qualtrics.question_response'::regclass AND contype = 'p'",
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'qualtrics' AND indexname = 'survey_response__survey_id_idx'",
        ),
    };
    assert_eq!(
        killed.rows(key_sql).await.len(),
        1,
        "no key after the kills"
    );
    assert_eq!(
        killed.rows(index_sql).await.len(),
        1,
        "no filter index after the kills"
    );
    if let Db::Pg { .. } = killed {
        // The embedded data's key was built back in its order, led by `response_id`.
        assert_eq!(
            killed
                .rows(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE conrelid = 'qualtrics.survey_embedded_data'::regclass AND contype = 'p'"
                )
                .await,
            vec!["PRIMARY KEY (response_id, import_id, key)".to_string()],
        );
    }
}

#[tokio::test]
async fn killed_syncs_resume_to_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    kill_loop(
        &Db::Sqlite(dir.path().join("clean.db")),
        &Db::Sqlite(dir.path().join("killed.db")),
    )
    .await;
}

#[tokio::test]
async fn killed_postgres_syncs_resume_to_the_same_rows() {
    let Some(clean) = Db::postgres("kill_clean").await else {
        return;
    };
    let Some(killed) = Db::postgres("kill_killed").await else {
        return;
    };
    kill_loop(&clean, &killed).await;
}

/// Each table's rows, read as `key` (an SQL text expression) in order, are the same in both.
async fn assert_same_rows(clean: &Db, other: &Db, tables: &[(&str, &str)], when: &str) {
    for (table, key) in tables {
        let sql = |db: &Db| format!("SELECT {key} FROM {} ORDER BY 1", db.t(table));
        let a = clean.rows(&sql(clean)).await;
        let b = other.rows(&sql(other)).await;
        assert_eq!(a.len(), b.len(), "{table}: row counts differ {when}");
        assert!(a == b, "{table}: rows differ {when}");
    }
}

/// `none` (no answer table yet), `key`, `keyless` or `keyless with rows`.
async fn key_state(client: &tokio_postgres::Client) -> String {
    let state: String = client
        .query_one(
            "SELECT CASE WHEN to_regclass('qualtrics.question_response') IS NULL THEN 'none' \
             WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'p' \
               AND conrelid = to_regclass('qualtrics.question_response')) THEN 'key' \
             ELSE 'keyless' END",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if state != "keyless" {
        return state;
    }
    let rows: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM qualtrics.question_response)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if rows {
        "keyless with rows".into()
    } else {
        state
    }
}

/// PostgreSQL commits every batch of a first load on its own, after dropping the table's primary
/// key: a sync killed right when answer rows are committed and the key is still gone resumes to
/// the same rows as a clean sync, with the key back.
#[tokio::test]
async fn postgres_first_load_killed_before_its_key_is_built() {
    let Some(clean) = Db::postgres("keyless_clean").await else {
        return;
    };
    let Some(killed) = Db::postgres("keyless_killed").await else {
        return;
    };
    let h = sim(SimConfig {
        surveys: 3,
        responses: 1500,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let args = |url: String| {
        vec![
            "sync".to_string(),
            "acme".into(),
            "--destination".into(),
            url,
            "--commit-every".into(),
            "100".into(),
        ]
    };
    let clean_args = args(clean.url());
    i.ok(&clean_args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let killed_args = args(killed.url());
    let killed_argv: Vec<&str> = killed_args.iter().map(String::as_str).collect();
    let mut child = i
        .cmd(&killed_argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = pg_client(&killed.url()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let caught = loop {
        let state = key_state(&client).await;
        if state == "keyless with rows" {
            child.kill().unwrap(); // SIGKILL
            break true;
        }
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.wait().unwrap();
    assert!(
        caught,
        "the sync finished before a keyless first load could be seen"
    );
    let state = key_state(&client).await;
    assert_eq!(state, "keyless with rows");
    drop(client);

    i.ok(&killed_argv).await;
    assert_same_rows(
        &clean,
        &killed,
        &[
            (
                "question_response",
                "_xmbridge_id || '|' || response_id || '|' || coalesce(value, '')",
            ),
            ("survey_response", "id || '|' || survey_id"),
            ("survey_embedded_data", "response_id || '|' || key"),
        ],
        "after the kill",
    )
    .await;
    let client = pg_client(&killed.url()).await;
    let state = key_state(&client).await;
    assert_eq!(state, "key");
    drop(client);
}

/// PostgreSQL, its own database, Fivetran-compatible system columns.
#[tokio::test]
async fn postgres_with_fivetran_compat() {
    let Some(db) = TestDb::create("xmb_cli_sync").await else {
        return;
    };
    let url = db.url().to_string();

    let h = sim(SimConfig {
        surveys: 2,
        responses: 100,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let out = i
        .ok(&[
            "sync",
            "acme",
            "--destination",
            &url,
            "--schema",
            "qx",
            "--compat",
            "fivetran",
        ])
        .await;
    let responses = inserted(&out, "survey_response");
    assert!(responses > 150, "{out}");

    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM qx.survey_response", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as u64, responses);
    let synced: i64 = c
        .query_one("SELECT COUNT(*) FROM qx.survey WHERE _fivetran_synced IS NOT NULL AND _fivetran_deleted = false", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(synced, 2);
    drop(c);
    task.abort();

    let again = i
        .ok(&[
            "sync",
            "acme",
            "--destination",
            &url,
            "--schema",
            "qx",
            "--compat",
            "fivetran",
        ])
        .await;
    assert_eq!(inserted(&again, "survey_response"), 0, "{again}");
}

#[tokio::test]
async fn bad_destinations_are_clear_errors() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 5,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let out = i.run(&["sync", "acme", "--destination", "mysql://x"]).await;
    // Bad configuration: exit 2, as the README promises (it was 1).
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sqlite") && err.contains("postgres"), "{err}");
    let out = i
        .run(&[
            "sync",
            "acme",
            "--destination",
            "postgres://postgres@127.0.0.1:1/nope",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = i
        .run(&["sync", "nosuch", "--destination", "sqlite:x.db"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("xmbridge connection list"));
}

/// A 5xx storm that outlasts the retries stops the sync with an error naming what failed; what
/// was committed stays, and the next run (storm over) completes.
#[tokio::test]
async fn a_5xx_storm_fails_clearly_and_the_next_run_completes() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 300,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = i.path("q.db");
    let dest = format!("sqlite:{}", db.display());
    let web = reqwest::Client::new();
    // Only the export routes fail: the survey definitions commit, the responses cannot.
    let r = web
        .post(format!("{}/_sim/faults", h.base_url))
        .json(&json!({"error_rate": 1.0, "error_status": 503, "only_paths": "/API/v3/surveys/"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let out = i
        .run(&[
            "sync",
            "acme",
            "--destination",
            &dest,
            "--tables",
            "survey_response",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") || err.contains("Temporary"), "{err}");
    assert!(err.contains("survey"), "{err}");

    web.delete(format!("{}/_sim/faults", h.base_url))
        .send()
        .await
        .unwrap();
    let done = i
        .ok(&[
            "sync",
            "acme",
            "--destination",
            &dest,
            "--tables",
            "survey_response",
        ])
        .await;
    assert!(inserted(&done, "survey_response") > 400, "{done}");
}

/// Export files are downloaded into `TMPDIR`: a sync whose temporary directory does not exist
/// fails saying where it tried and what to do, and the next run with one completes.
#[tokio::test]
async fn a_missing_temporary_directory_is_a_clear_error() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 20,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = i.path("q.db");
    let dest = format!("sqlite:{}", db.display());
    let args = [
        "sync",
        "acme",
        "--destination",
        &dest,
        "--tables",
        "survey_response",
    ];
    let missing = i.path("no-such-directory");
    let mut c = i.cmd(&args);
    c.env("TMPDIR", &missing);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot create a temporary file")
            && err.contains(&missing.display().to_string())
            && err.contains("set TMPDIR to a writable directory"),
        "the error names the directory and the fix:\n{err}"
    );
    let done = i.ok(&args).await;
    assert!(inserted(&done, "survey_response") >= 20, "{done}");
}

/// The first response-export start of a sync gets a 500 (the simulator's `fail_next`, so exactly
/// that call fails, once): the start is retried like a GET, and the sync completes with exactly
/// the rows of a clean sync.
#[tokio::test]
async fn a_5xx_on_starting_an_export_is_retried() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 120,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let faulted = Db::Sqlite(i.path("faulted.db"));
    let clean = Db::Sqlite(i.path("clean.db"));
    admin_post(
        &h,
        "/_sim/faults",
        json!({"fail_next": {"method": "POST", "route": "export-responses", "count": 1, "status": 500}}),
    )
    .await;
    i.ok(&["sync", "acme", "--destination", &faulted.url()])
        .await;
    let stats: serde_json::Value = reqwest::get(format!("{}/_sim/stats", h.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["by_route"]["export-responses"]["injected_errors"], 1,
        "the export start really failed once: {stats}"
    );
    i.ok(&["sync", "acme", "--destination", &clean.url()]).await;
    assert_same_rows(
        &clean,
        &faulted,
        &[
            (
                "survey_response",
                "id || '|' || survey_id || '|' || recorded_date || '|' || finished",
            ),
            (
                "question_response",
                "_xmbridge_id || '|' || response_id || '|' || coalesce(value, '') || '|' || coalesce(label, '')",
            ),
            (
                "survey_embedded_data",
                "response_id || '|' || key || '|' || coalesce(value, '')",
            ),
        ],
        "after a 500 on the first export start",
    )
    .await;
    assert!(faulted.count("survey_response", "1 = 1").await > 150);
}

/// `inserted`, `updated` and `deleted` of a table in the summary printed by `xmbridge sync`.
fn counts(summary: &str, table: &str) -> [u64; 3] {
    summary
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == table).then(|| [1, 2, 3].map(|i| f[i].parse::<u64>().unwrap()))
        })
        .unwrap_or_else(|| panic!("no line for {table} in:\n{summary}"))
}

/// The response and definition tables compared with a clean sync.
const COMPARED: &[(&str, &str)] = &[
    (
        "survey_response",
        "id || '|' || survey_id || '|' || recorded_date || '|' || finished",
    ),
    (
        "question_response",
        "_xmbridge_id || '|' || response_id || '|' || coalesce(value, '') || '|' || coalesce(label, '')",
    ),
    (
        "survey_embedded_data",
        "response_id || '|' || key || '|' || coalesce(value, '')",
    ),
    (
        "question",
        "id || '|' || survey_id || '|' || coalesce(data_export_tag, '')",
    ),
    (
        "question_option",
        "question_id || '|' || survey_id || '|' || key",
    ),
];

/// Tables dropped by hand after a sync: the next run (no --full) re-creates them, says so, and
/// reloads their stream from scratch while the other streams stay incremental, ending with the
/// rows of a clean sync — also when the dropped table shares its stream with tables that were
/// not dropped.
async fn dropped_tables_are_reloaded(db: &Db, clean: &Db) {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 60,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let dest = db.url();
    let sync = ["sync", "acme", "--destination", dest.as_str()];
    i.ok(&sync).await;
    i.ok(&["sync", "acme", "--destination", &clean.url()]).await;

    // One table of the response stream; survey_response and survey_embedded_data stay.
    db.exec(&format!("DROP TABLE {}", db.t("question_response")))
        .await;
    let out = i.run(&sync).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("table question_response was missing; reloading it from scratch"),
        "{stderr}"
    );
    assert!(
        stdout.contains("table question_response was missing; reloaded it from scratch"),
        "{stdout}"
    );
    assert!(
        stdout.contains(", 0 definitions read"),
        "the survey stream stays incremental: {stdout}"
    );
    let responses = db.count("survey_response", "1 = 1").await;
    assert_eq!(
        counts(&stdout, "survey_response"),
        [0, responses, 0],
        "every response exported again and rewritten: {stdout}"
    );
    assert_same_rows(clean, db, COMPARED, "after question_response was dropped").await;

    // A definition table: the survey stream is read again, the responses stay incremental.
    db.exec(&format!("DROP TABLE {}", db.t("question"))).await;
    let out = i.run(&sync).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("table question was missing; reloading it from scratch"),
        "{stderr}"
    );
    assert!(stdout.contains(", 2 definitions read"), "{stdout}");
    assert_eq!(counts(&stdout, "survey_response"), [0, 0, 0], "{stdout}");
    assert_same_rows(clean, db, COMPARED, "after question was dropped").await;

    // Nothing missing: nothing said, nothing reloaded.
    let out = i.run(&sync).await;
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("was missing"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(", 0 definitions read"), "{stdout}");
}

#[tokio::test]
async fn sqlite_tables_dropped_by_hand_are_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    dropped_tables_are_reloaded(
        &Db::Sqlite(dir.path().join("dropped.db")),
        &Db::Sqlite(dir.path().join("clean.db")),
    )
    .await;
}

#[tokio::test]
async fn postgres_tables_dropped_by_hand_are_reloaded() {
    let Some(db) = Db::postgres("dropped").await else {
        return;
    };
    let Some(clean) = Db::postgres("dropped_clean").await else {
        return;
    };
    dropped_tables_are_reloaded(&db, &clean).await;
}

/// A cursor that is not JSON (edited by hand; only SQLite can hold one, PostgreSQL's jsonb
/// refuses it): the run fails naming the cursor and giving the exact command that fixes it; that
/// command works, and a plain `--full` ignores unreadable cursors too. Afterwards the rows equal
/// a clean sync.
#[tokio::test]
async fn an_unreadable_cursor_is_a_clear_error_with_the_fix() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 60,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = Db::Sqlite(i.path("broken.db"));
    let clean = Db::Sqlite(i.path("clean.db"));
    let dest = db.url();
    let sync = ["sync", "acme", "--destination", dest.as_str()];
    i.ok(&sync).await;
    i.ok(&["sync", "acme", "--destination", &clean.url()]).await;
    let stream = format!("responses:{}", h.sim.surveys[0].id);
    db.exec(&format!(
        "UPDATE qualtrics__xmbridge_state SET cursor = '{{\"continuationToken\": ' WHERE stream = '{stream}'"
    ))
    .await;

    let out = i.run(&sync).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{stream:?}"))
            && err.contains("qualtrics__xmbridge_state")
            && err.contains("not valid JSON"),
        "{err}"
    );
    let fix = err
        .split_once("run once: ")
        .and_then(|(_, rest)| rest.split_once(" —"))
        .map(|(cmd, _)| cmd.to_string())
        .unwrap_or_else(|| panic!("no command in: {err}"));
    assert_eq!(
        fix,
        format!("xmbridge sync acme --destination {dest} --full --tables survey_response")
    );
    let words: Vec<&str> = fix.split_whitespace().skip(1).collect();
    let out = i.ok(&words).await;
    assert!(counts(&out, "survey_response")[1] > 0, "{out}");
    let again = i.ok(&sync).await;
    assert_eq!(counts(&again, "survey_response"), [0, 0, 0], "{again}");
    assert_same_rows(&clean, &db, COMPARED, "after the fix").await;

    // The survey stream's cursor: the error names it; plain --full ignores it.
    db.exec("UPDATE qualtrics__xmbridge_state SET cursor = 'not json' WHERE stream = 'surveys'")
        .await;
    let out = i.run(&sync).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"surveys\"") && err.contains("--full --tables survey "),
        "{err}"
    );
    i.ok(&["sync", "acme", "--destination", &dest, "--full"])
        .await;
    i.ok(&sync).await;
    assert_same_rows(&clean, &db, COMPARED, "after --full").await;
    for c in cursors(&db).await {
        let json = &c[c.find('{').unwrap_or(0)..];
        assert!(
            serde_json::from_str::<serde_json::Value>(json).is_ok(),
            "{c}"
        );
    }
}

/// Surveys whose response cursor is complete: their export is committed as a whole.
async fn surveys_loaded(db: &Db) -> u64 {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT CAST(COUNT(*) AS TEXT) FROM qualtrics__xmbridge_state \
             WHERE stream LIKE 'responses:%' AND json_extract(cursor, '$.complete') = 1"
        }
        Db::Pg { .. } => {
            "SELECT CAST(COUNT(*) AS TEXT) FROM qualtrics._xmbridge_state \
             WHERE stream LIKE 'responses:%' AND (cursor->>'complete')::boolean"
        }
    };
    db.rows(sql).await[0].parse().unwrap()
}

/// When every run is killed (SIGKILL), like a cron job with a short timeout; sooner where a clean
/// run of the brand takes less than twice this. A SQLite group
/// transaction used to commit only once it was 10 s old (counted from the first response commit,
/// so never within this) or held 500,000 rows (the brand below has fewer in all): such runs
/// never committed a response.
const KILL_AFTER: Duration = Duration::from_secs(5);
/// Killed runs allowed before the sync must have completed once.
const MAX_KILLED_RUNS: usize = 30;
/// Killed runs in a row that may make no progress (a run starved by a busy machine).
const PROGRESS_WINDOW: usize = 3;
/// Surveys of the brand the killed runs sync: a run advances by the surveys it completes (a
/// survey's export is committed as a whole), and each run checks the completed ones again
/// (one incremental export each), so they are kept few enough for that to stay short.
const SURVEYS: usize = 40;

/// A sync of a brand too large for one run, always killed after [`KILL_AFTER`]: killed runs
/// never lose progress and keep adding loaded surveys (progress is durable early in a run), and
/// after a bounded number of runs one completes with the rows of a clean sync.
async fn short_killed_runs_converge(db: &Db, clean: &Db) {
    let h = sim(SimConfig {
        surveys: SURVEYS,
        responses: 300,
        export_delay_ms: 0,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    // The response stream (with the definitions it needs): the streams after it have no cursor
    // and are read in full by every run, so they could not advance from run to run anyway.
    let sync = |url: &str| {
        [
            "sync",
            "acme",
            "--destination",
            url,
            "--tables",
            "survey_response",
        ]
        .map(String::from)
    };
    let clean_argv = sync(&clean.url());
    let clean_started = std::time::Instant::now();
    i.ok(&clean_argv.each_ref().map(String::as_str)).await;
    // A run is killed long before it could finish, on a fast machine too (a fixed 5 s let the
    // whole brand load at once on one).
    let kill_after = KILL_AFTER.min(clean_started.elapsed() / 2);
    let rows = clean.count("question_response", "1 = 1").await
        + clean.count("survey_embedded_data", "1 = 1").await
        + clean.count("survey_response", "1 = 1").await;
    assert!(
        rows < 500_000,
        "{rows} rows: a run could reach the old size bound"
    );

    let argv = sync(&db.url());
    let mut progress = Vec::new();
    let mut completed = false;
    for _run in 0..=MAX_KILLED_RUNS {
        let mut child = i
            .cmd(&argv.each_ref().map(String::as_str))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() >= kill_after {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(status) = exited {
            assert!(status.success(), "the run that was not killed failed");
            completed = true;
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let loaded = surveys_loaded(db).await;
        let before = progress.last().copied().unwrap_or(0);
        progress.push(loaded);
        assert!(
            loaded >= before,
            "a killed run lost progress: surveys loaded after each run {progress:?}"
        );
        // Every run advances on a quiet machine; a run starved by a loaded one may not, but
        // three in a row without progress would mean progress is not durable early enough.
        let window = PROGRESS_WINDOW.min(progress.len());
        let three_ago = if progress.len() > window {
            progress[progress.len() - 1 - window]
        } else {
            0
        };
        assert!(
            progress.len() < PROGRESS_WINDOW || loaded > three_ago,
            "{PROGRESS_WINDOW} killed runs in a row made no durable progress: surveys loaded after each run {progress:?}"
        );
    }
    eprintln!("surveys loaded after each killed run: {progress:?}");
    assert!(
        completed,
        "no run completed within {MAX_KILLED_RUNS} killed runs: {progress:?}"
    );
    assert!(
        !progress.is_empty(),
        "the first run completed before it could be killed: the brand is too small for this test"
    );
    assert_eq!(surveys_loaded(db).await, SURVEYS as u64);
    assert_same_rows(clean, db, COMPARED, "after short killed runs").await;
}

#[tokio::test]
async fn sqlite_short_killed_runs_converge() {
    let dir = tempfile::tempdir().unwrap();
    short_killed_runs_converge(
        &Db::Sqlite(dir.path().join("cron.db")),
        &Db::Sqlite(dir.path().join("clean.db")),
    )
    .await;
}

#[tokio::test]
async fn postgres_short_killed_runs_converge() {
    let Some(db) = Db::postgres("cron").await else {
        return;
    };
    let Some(clean) = Db::postgres("cron_clean").await else {
        return;
    };
    short_killed_runs_converge(&db, &clean).await;
}

/// A destination the schema-evolution and failure tests read back: a SQLite file (table-name
/// prefix `qualtrics_`) or a PostgreSQL database of its own (schema `qualtrics`).
enum Db {
    Sqlite(PathBuf),
    Pg { url: String, _db: TestDb },
}

impl Db {
    /// A fresh PostgreSQL database `xmb_cli_sync_<tag>_<pid>_<n>`, dropped with the value; `None`
    /// when `XMBRIDGE_TEST_PG` is unset (the test is skipped).
    async fn postgres(tag: &str) -> Option<Db> {
        let db = TestDb::create(&format!("xmb_cli_sync_{tag}")).await?;
        Some(Db::Pg {
            url: db.url().to_string(),
            _db: db,
        })
    }

    fn url(&self) -> String {
        match self {
            Db::Sqlite(p) => format!("sqlite:{}", p.display()),
            Db::Pg { url, .. } => url.clone(),
        }
    }

    /// The physical name of a synced table.
    fn t(&self, table: &str) -> String {
        match self {
            Db::Sqlite(_) => format!("qualtrics_{table}"),
            Db::Pg { .. } => format!("qualtrics.{table}"),
        }
    }

    /// Runs a query whose first column is text.
    async fn rows(&self, sql: &str) -> Vec<String> {
        match self {
            Db::Sqlite(p) => sqlite_rows(p, sql),
            Db::Pg { url, .. } => {
                let c = pg_client(url).await;
                let rows = c
                    .query(sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter().map(|r| r.get::<_, String>(0)).collect()
            }
        }
    }

    async fn count(&self, table: &str, filter: &str) -> u64 {
        let sql = format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM {} WHERE {filter}",
            self.t(table)
        );
        self.rows(&sql).await[0].parse().unwrap()
    }

    /// Runs statements (hand edits).
    async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Db::Pg { url, .. } => pg_client(url).await.batch_execute(sql).await.unwrap(),
        }
    }
}

async fn admin_post(h: &SimHandle, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", h.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// Hostile names: a question export tag and an embedded data field a naive writer would break on.
const EVIL_TAG: &str = "select\"; DROP TABLE x;--";
const EVIL_FIELD: &str = "ünïcode \"order\"";

/// A question, an embedded data field and a distribution stats field appear between two syncs:
/// the second sync adds what is needed, fails on nothing, and keeps the old rows.
async fn schema_evolution(db: &Db) {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 40,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let dest = db.url();
    i.ok(&["sync", "acme", "--destination", &dest]).await;
    let answers_before = db
        .rows(&format!(
            "SELECT response_id || '|' || question_id || '|' || coalesce(value, '') FROM {} ORDER BY 1",
            db.t("question_response")
        ))
        .await;
    let responses_before = db.count("survey_response", "1 = 1").await;
    assert!(responses_before > 60, "{responses_before}");

    let sid = h.sim.surveys[1].id.clone();
    let q = admin_post(
        &h,
        &format!("/_sim/surveys/{sid}/questions"),
        json!({"kind": "mc_single", "export_tag": EVIL_TAG, "text": "Pick one; or 'two' — ✓"}),
    )
    .await;
    let qid = q["qid"].as_str().unwrap().to_string();
    admin_post(
        &h,
        &format!("/_sim/surveys/{sid}/embedded-data"),
        json!({"name": EVIL_FIELD, "values": ["naïve; 'x'", "DROP \"y\""]}),
    )
    .await;
    admin_post(
        &h,
        "/_sim/distributions/stats-fields",
        json!({"name": "clicked"}),
    )
    .await;
    let generated = admin_post(
        &h,
        &format!("/_sim/surveys/{sid}/responses"),
        json!({"count": 6}),
    )
    .await;
    let new_ids: Vec<String> = generated["response_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();

    let out = i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(inserted(&out, "survey_response"), 6, "{out}");
    // The question, with its hostile export tag, unchanged.
    let tags = db
        .rows(&format!(
            "SELECT data_export_tag FROM {} WHERE id = '{qid}' AND survey_id = '{sid}'",
            db.t("question")
        ))
        .await;
    assert_eq!(tags, [EVIL_TAG]);
    // Its answers, named by the export tag.
    let answered = db
        .rows(&format!(
            "SELECT question FROM {} WHERE question_id = '{qid}'",
            db.t("question_response")
        ))
        .await;
    assert!(answered.len() >= 3, "{answered:?}");
    assert!(answered.iter().all(|q| q == EVIL_TAG), "{answered:?}");
    // The new embedded data field on every new response, name and values unchanged.
    let fields = db
        .rows(&format!(
            "SELECT value FROM {} WHERE key = '{}' ORDER BY response_id",
            db.t("survey_embedded_data"),
            EVIL_FIELD.replace('\'', "''")
        ))
        .await;
    assert_eq!(fields.len(), new_ids.len(), "{fields:?}");
    assert!(
        fields
            .iter()
            .all(|v| v == "naïve; 'x'" || v == "DROP \"y\""),
        "{fields:?}"
    );
    let keyed = db
        .rows(&format!(
            "SELECT import_id FROM {} WHERE key = '{EVIL_FIELD}'",
            db.t("survey_embedded_data")
        ))
        .await;
    assert!(keyed.iter().all(|k| k == EVIL_FIELD), "{keyed:?}");
    // The new stats column, with values.
    let clicked = db
        .rows(&format!(
            "SELECT CAST(stats_clicked AS TEXT) FROM {} WHERE stats_clicked IS NOT NULL",
            db.t("distribution")
        ))
        .await;
    assert!(!clicked.is_empty(), "no stats_clicked values");
    // Old rows intact.
    assert_eq!(
        db.count("survey_response", "1 = 1").await,
        responses_before + 6
    );
    let answers_after = db
        .rows(&format!(
            "SELECT response_id || '|' || question_id || '|' || coalesce(value, '') FROM {} ORDER BY 1",
            db.t("question_response")
        ))
        .await;
    let old: Vec<&String> = answers_after
        .iter()
        .filter(|r| !new_ids.iter().any(|id| r.starts_with(id.as_str())))
        .collect();
    assert!(
        old.len() == answers_before.len() && old.iter().zip(&answers_before).all(|(a, b)| *a == b),
        "old answer rows changed"
    );
    // A third run with nothing new writes no response again.
    let again = i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(inserted(&again, "survey_response"), 0, "{again}");
}

#[tokio::test]
async fn schema_evolution_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    schema_evolution(&Db::Sqlite(dir.path().join("evo.db"))).await;
}

#[tokio::test]
async fn schema_evolution_postgres() {
    let Some(db) = Db::postgres("evo").await else {
        return;
    };
    schema_evolution(&db).await;
}

/// Streams whose cursor the destination holds, with the cursor, as text.
async fn cursors(db: &Db) -> Vec<String> {
    let sql = match db {
        Db::Sqlite(_) => "SELECT stream || cursor FROM qualtrics__xmbridge_state ORDER BY 1",
        Db::Pg { .. } => "SELECT stream || cursor::text FROM qualtrics._xmbridge_state ORDER BY 1",
    };
    db.rows(sql).await
}

/// PostgreSQL: a column whose type was changed by hand stops the sync before it writes anything,
/// with an error naming table and column and the statement that fixes it; after the fix the
/// next run completes.
#[tokio::test]
async fn postgres_column_retyped_by_hand_is_a_clear_error() {
    let Some(db) = Db::postgres("retype").await else {
        return;
    };
    let h = sim(SimConfig {
        surveys: 1,
        responses: 30,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let dest = db.url();
    i.ok(&["sync", "acme", "--destination", &dest]).await;
    db.exec(
        "ALTER TABLE qualtrics.survey_response ALTER COLUMN duration_in_seconds TYPE boolean \
         USING duration_in_seconds > 0",
    )
    .await;
    let sid = h.sim.surveys[0].id.clone();
    let new = admin_post(
        &h,
        &format!("/_sim/surveys/{sid}/responses"),
        json!({"count": 2}),
    )
    .await;
    let before = cursors(&db).await;
    let rows_before = db.count("survey_response", "1 = 1").await;

    let out = i.run(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qualtrics.survey_response")
            && err.contains("duration_in_seconds")
            && err.contains("boolean")
            && err.contains("ALTER TABLE"),
        "{err}"
    );
    assert!(
        err.contains("table survey_response: "),
        "names only the table at fault: {err}"
    );
    assert_eq!(cursors(&db).await, before, "no cursor moved");
    assert_eq!(db.count("survey_response", "1 = 1").await, rows_before);

    // The fix the message gives, then the next run completes with the new responses.
    db.exec(
        "ALTER TABLE qualtrics.survey_response ALTER COLUMN duration_in_seconds TYPE integer \
         USING duration_in_seconds::integer",
    )
    .await;
    let done = i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert_eq!(inserted(&done, "survey_response"), 2, "{done}");
    let id = new["response_ids"][0].as_str().unwrap();
    assert_eq!(
        db.count("survey_response", &format!("id = '{id}'")).await,
        1
    );
}

/// Polls until a query returns a non-zero count (the observable event a test waits for).
async fn await_rows(db: &Db, table: &str, filter: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sql = format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM {} WHERE {filter}",
            db.t(table)
        );
        let n = match db {
            Db::Sqlite(p) => rusqlite::Connection::open(p)
                .and_then(|c| c.query_row(&sql, [], |r| r.get::<_, String>(0)))
                .unwrap_or_default(),
            Db::Pg { .. } => db.rows(&sql).await.pop().unwrap_or_default(),
        };
        if n.parse::<u64>().unwrap_or(0) > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{table} never got rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQLite: a column dropped by hand while a sync runs fails the commit that writes it, naming
/// table, column and what to do; nothing of that commit lands, and the next run re-adds the
/// column and completes equal to a clean sync.
#[tokio::test]
async fn sqlite_column_dropped_during_a_sync_is_a_clear_error() {
    let h = sim(SimConfig {
        surveys: 1,
        responses: 60,
        export_delay_ms: 1500,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = Db::Sqlite(i.path("dropped.db"));
    let dest = db.url();
    let child = i
        .cmd(&["sync", "acme", "--destination", &dest])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The definitions are committed before the response export completes: the window.
    await_rows(&db, "survey", "1 = 1").await;
    db.exec("ALTER TABLE qualtrics_survey_response DROP COLUMN duration_in_seconds")
        .await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qualtrics_survey_response")
            && err.contains("duration_in_seconds")
            && err.contains("nothing of this commit was applied")
            && err.contains("--full"),
        "{err}"
    );
    let sid = &h.sim.surveys[0].id;
    assert!(err.contains(sid.as_str()), "names the survey: {err}");
    assert_eq!(db.count("survey_response", "1 = 1").await, 0);
    assert_eq!(db.count("question_response", "1 = 1").await, 0);
    assert!(db.count("question", "1 = 1").await > 0, "definitions stay");

    i.ok(&["sync", "acme", "--destination", &dest]).await;
    let clean = Db::Sqlite(i.path("clean.db"));
    i.ok(&["sync", "acme", "--destination", &clean.url()]).await;
    for (table, key) in [
        (
            "survey_response",
            "id || '|' || coalesce(duration_in_seconds, '')",
        ),
        (
            "question_response",
            "_xmbridge_id || '|' || coalesce(value, '')",
        ),
    ] {
        let sql = |d: &Db| format!("SELECT {key} FROM {} ORDER BY 1", d.t(table));
        assert_eq!(
            db.rows(&sql(&db)).await,
            clean.rows(&sql(&clean)).await,
            "{table}"
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    ApiToken,
    OAuth,
}

/// Authorizes a standard (OAuth) connection: runs `connection authorize`, plays the browser
/// (the simulator auto-approves), and waits for the command to finish.
async fn authorize(i: &Install, web: &reqwest::Client, name: &str) {
    use std::io::{BufRead, BufReader};
    let mut child = i
        .cmd(&["connection", "authorize", name, "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::task::spawn_blocking(move || {
        let url = loop {
            let line = lines.next().expect("authorize printed no URL").unwrap();
            if line.starts_with("http") {
                break line;
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).count());
        url
    })
    .await
    .unwrap();
    let r = web.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "{url}");
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(web.get(&back).send().await.unwrap().status().is_success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A standard-mode (OAuth) connection `name`, authorized.
async fn connect_oauth(i: &Install, h: &SimHandle, web: &reqwest::Client, name: &str) {
    let creds: serde_json::Value = web
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
        .unwrap();
    let sf = i.path("client.secret");
    std::fs::write(&sf, app["client_secret"].as_str().unwrap()).unwrap();
    admin_post(h, "/_sim/oauth/auto-approve", json!({"user": "admin"})).await;
    i.ok(&[
        "connection",
        "add",
        "qualtrics",
        name,
        "--no-test",
        "--url",
        &h.base_url,
        "--auth",
        "standard",
        "--client-id",
        app["client_id"].as_str().unwrap(),
        "--client-secret-file",
        sf.to_str().unwrap(),
    ])
    .await;
    authorize(i, web, name).await;
}

/// The credentials die while a sync runs (after the definitions are committed, during the
/// response export): a clear error naming table and survey and what to do; committed tables
/// stay; after new credentials the next run completes equal to a clean sync, row for row.
async fn token_revoked_mid_sync(auth: Auth) {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 80,
        export_delay_ms: 1500,
        ..SimConfig::default()
    })
    .await;
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let i = support::install();
    match auth {
        Auth::ApiToken => i.connect(&h, "acme").await,
        Auth::OAuth => connect_oauth(&i, &h, &web, "acme").await,
    }
    let db = Db::Sqlite(i.path("revoked.db"));
    let dest = db.url();
    let child = i
        .cmd(&["sync", "acme", "--destination", &dest])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both surveys' definitions committed (SQLite commits the first one early): the credentials
    // then die during the response export, not while the second definition is read.
    let surveys = db.t("survey");
    await_rows(
        &db,
        "survey",
        &format!("(SELECT COUNT(*) FROM {surveys}) >= 2"),
    )
    .await;
    let new_token = match auth {
        Auth::ApiToken => {
            // Generating a new API token invalidates the old one (as in Qualtrics).
            let admin_id = h.sim.users.read()[0].id.clone();
            let r: serde_json::Value = web
                .post(format!("{}/users/{admin_id}/apitoken", h.api_url()))
                .header("X-API-TOKEN", h.sim.cfg.admin_token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            Some(r["result"]["apiToken"].as_str().unwrap().to_string())
        }
        Auth::OAuth => {
            admin_post(&h, "/_sim/tokens/revoke", json!({"all": true})).await;
            None
        }
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{auth:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("table survey_response, survey SV_"), "{err}");
    match auth {
        Auth::ApiToken => assert!(
            err.contains("refused the API token") || err.contains("API token"),
            "{err}"
        ),
        Auth::OAuth => assert!(
            err.contains("account token expired")
                && err.contains("xmbridge connection authorize acme"),
            "{err}"
        ),
    }
    let definitions = db.count("question", "1 = 1").await;
    assert!(definitions > 0, "committed definitions stay");

    // New credentials, then the next run completes.
    match (auth, new_token) {
        (Auth::ApiToken, Some(token)) => {
            i.ok(&["connection", "remove", "acme"]).await;
            let tf = i.path("acme.token");
            std::fs::write(&tf, token).unwrap();
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
        }
        _ => authorize(&i, &web, "acme").await,
    }
    i.ok(&["sync", "acme", "--destination", &dest]).await;
    let clean = Db::Sqlite(i.path("clean.db"));
    i.ok(&["sync", "acme", "--destination", &clean.url()]).await;
    for (table, key) in [
        (
            "survey_response",
            "id || '|' || survey_id || '|' || recorded_date",
        ),
        (
            "question_response",
            "_xmbridge_id || '|' || coalesce(value, '')",
        ),
        (
            "survey_embedded_data",
            "response_id || '|' || key || '|' || coalesce(value, '')",
        ),
        ("question", "id || '|' || survey_id"),
    ] {
        let sql = |d: &Db| format!("SELECT {key} FROM {} ORDER BY 1", d.t(table));
        let (a, b) = (db.rows(&sql(&db)).await, clean.rows(&sql(&clean)).await);
        assert!(!a.is_empty(), "{table}");
        assert!(
            a == b,
            "{table}: {} rows vs {} in a clean sync",
            a.len(),
            b.len()
        );
    }
}

#[tokio::test]
async fn api_token_revoked_mid_sync() {
    token_revoked_mid_sync(Auth::ApiToken).await;
}

#[tokio::test]
async fn oauth_token_revoked_mid_sync() {
    token_revoked_mid_sync(Auth::OAuth).await;
}

/// A SQLite destination that runs out of space (`?max_size_mb=1`, SQLite's page cap, which fails
/// writes with the full-disk error): a clear error naming table and survey and what to do;
/// committed tables stay; with the cap lifted the next run completes equal to a clean sync.
#[tokio::test]
async fn sqlite_disk_full_fails_clearly_and_the_next_run_completes() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 300,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = Db::Sqlite(i.path("full.db"));
    let capped = format!("{}?max_size_mb=1", db.url());
    let out = i.run(&["sync", "acme", "--destination", &capped]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database or disk is full")
            && err.contains("max_size_mb=1")
            && err.contains("run the sync again"),
        "{err}"
    );
    assert!(err.contains(", survey SV_"), "names the survey: {err}");
    assert!(db.count("question", "1 = 1").await > 0, "definitions stay");
    let size = std::fs::metadata(i.path("full.db")).unwrap().len();
    assert!(size <= 1024 * 1024, "the cap held: {size} bytes");

    let out = i
        .run(&[
            "sync",
            "acme",
            "--destination",
            &format!("{}?cache=big", db.url()),
        ])
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown option is bad configuration"
    );

    i.ok(&["sync", "acme", "--destination", &db.url()]).await;
    let clean = Db::Sqlite(i.path("clean.db"));
    i.ok(&["sync", "acme", "--destination", &clean.url()]).await;
    for (table, key) in [
        (
            "survey_response",
            "id || '|' || survey_id || '|' || recorded_date",
        ),
        (
            "question_response",
            "_xmbridge_id || '|' || coalesce(value, '')",
        ),
        (
            "survey_embedded_data",
            "response_id || '|' || key || '|' || coalesce(value, '')",
        ),
    ] {
        let sql = |d: &Db| format!("SELECT {key} FROM {} ORDER BY 1", d.t(table));
        let (a, b) = (db.rows(&sql(&db)).await, clean.rows(&sql(&clean)).await);
        assert!(!a.is_empty(), "{table}");
        assert!(
            a == b,
            "{table}: {} rows vs {} in a clean sync",
            a.len(),
            b.len()
        );
    }
}

/// Without a terminal a sync used to write a line per commit and per survey, and a WARN per
/// throttled retry (346 in one run). Now: one line per stream start and finish (a running stream
/// adds at most one line per 10 s), and one summary of the throttling on stdout.
#[tokio::test]
async fn without_a_terminal_a_sync_logs_a_few_lines_and_sums_up_throttling() {
    let h = sim(SimConfig {
        surveys: 3,
        responses: 30,
        faults: xmbridge_sim::qualtrics::faults::FaultSettings {
            error_rate: 0.05,
            error_status: Some(429),
            ..Default::default()
        },
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = i.path("q.db");
    let r = i
        .run(&[
            "sync",
            "acme",
            "--destination",
            &format!("sqlite:{}", db.display()),
        ])
        .await;
    r.ok();
    let err = r.stderr();
    assert!(!err.contains("WARN"), "no line per retry:\n{err}");
    assert!(
        !err.contains("responses:SV_"),
        "per-survey lines are DEBUG:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let starts = lines
        .iter()
        .filter(|l| l.contains("stream started"))
        .count();
    let finishes = lines
        .iter()
        .filter(|l| l.contains("stream finished"))
        .count();
    assert_eq!(starts, finishes, "{err}");
    assert!(
        (7..=8).contains(&starts),
        "one start per stream group:\n{err}"
    );
    assert_eq!(lines.len(), starts + finishes, "nothing else:\n{err}");
    // The responses stream counts responses, not surveys: no "total=3" on it.
    let responses = lines
        .iter()
        .find(|l| l.contains("stream started") && l.contains("stream=\"responses\""))
        .unwrap();
    assert!(!responses.contains("total="), "{responses}");
    let out = r.stdout();
    let summary = out
        .lines()
        .find(|l| l.starts_with("Qualtrics throttled "))
        .unwrap_or_else(|| panic!("no throttling summary:\n{out}"));
    assert!(summary.contains("calls (HTTP 429)"), "{summary}");
}

/// `sync --json` prints the run as one object, with the API calls of each stream; the counts
/// add up to the run's total, which the simulator's own count confirms. The human summary has a
/// line with the same split.
#[tokio::test]
async fn sync_json_counts_api_calls_per_stream() {
    let h = sim(SimConfig {
        surveys: 2,
        responses: 50,
        ..SimConfig::default()
    })
    .await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let db = i.path("q.db");
    let dest = format!("sqlite:{}", db.display());
    let first = i.ok(&["sync", "acme", "--destination", &dest]).await;
    assert!(first.contains("API calls by stream: surveys "), "{first}");

    let http = reqwest::Client::new();
    http.delete(format!("{}/_sim/stats", h.base_url))
        .send()
        .await
        .unwrap();
    let out = i
        .ok(&["sync", "acme", "--destination", &dest, "--json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let total = v["api_calls"].as_u64().unwrap();
    let by_stream = v["api_calls_by_stream"].as_object().unwrap();
    let streams: Vec<&str> = by_stream.keys().map(String::as_str).collect();
    assert!(
        [
            "surveys",
            "responses",
            "directories",
            "distributions",
            "users"
        ]
        .iter()
        .all(|s| streams.contains(s)),
        "{v}"
    );
    let sum: u64 = by_stream.values().map(|n| n.as_u64().unwrap()).sum();
    assert!(sum <= total && total - sum <= 2, "{v}");
    // Nothing changed: no response was written again.
    assert_eq!(v["tables"]["survey_response"]["inserted"], json!(0), "{v}");
    let seen: serde_json::Value = http
        .get(format!("{}/_sim/stats", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["calls_total"].as_u64().unwrap(), total, "{seen}\n{v}");
}
