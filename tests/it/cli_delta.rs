//! `xmbridge sync --destination delta:PATH` end to end: the simulator over loopback, the real
//! binary, and every Delta table read back by two independent readers (the Python `deltalake`
//! package and DuckDB's `delta` extension) and compared row for row with the same sync into a
//! real PostgreSQL — after a first load, after an incremental sync with new, edited and deleted
//! responses, after a sync killed with SIGKILL 20 times, and after a disk that filled up part way
//! through a first load was given room.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value as J, json};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_test_kit::disk::{self, SmallDisk};
use xmbridge_test_kit::lake;
use xmbridge_test_kit::pg::{TestDb, connect as pg_client};
use xmbridge_test_kit::s3::S3Server;

use crate::support::{self, Install};

/// Rows of a table, each as a canonical string (numbers as floats, JSON text parsed), sorted.
type Canon = BTreeMap<String, Vec<String>>;

/// Every cell made comparable: numbers as f64 (an int and a float of equal value are equal),
/// JSON documents parsed (jsonb normalizes spacing and key order).
fn canon_cell(v: &J, json_col: bool) -> J {
    match v {
        J::Number(n) => json!(n.as_f64()),
        J::String(s) if json_col => {
            sorted_keys(serde_json::from_str(s).unwrap_or_else(|_| v.clone()))
        }
        other => other.clone(),
    }
}

/// A JSON document with every object's keys in order (jsonb reorders them).
fn sorted_keys(v: J) -> J {
    match v {
        J::Object(m) => {
            let sorted: BTreeMap<String, J> =
                m.into_iter().map(|(k, v)| (k, sorted_keys(v))).collect();
            J::Object(sorted.into_iter().collect())
        }
        J::Array(a) => J::Array(a.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

fn canon_rows(columns: &[String], rows: Vec<Vec<J>>, json_cols: &[String]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .into_iter()
        .map(|r| {
            let m: BTreeMap<&str, J> = columns
                .iter()
                .zip(r)
                .filter(|(c, _)| !c.ends_with("_synced"))
                .map(|(c, v)| {
                    let is_json = json_cols.contains(c);
                    (c.as_str(), canon_cell(&v, is_json))
                })
                .collect();
            serde_json::to_string(&m).unwrap()
        })
        .collect();
    out.sort();
    out
}

/// The PostgreSQL schema's tables (without the cursor and fence tables), read as the Delta
/// readers print them: timestamps as epoch milliseconds, jsonb as documents.
async fn postgres_tables(url: &str) -> (Canon, Vec<String>) {
    let c = pg_client(url).await;
    let cols = c
        .query(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'qualtrics' ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .unwrap();
    let mut tables: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in &cols {
        let (t, c, ty): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if t.ends_with("_state") || t.ends_with("_fence") {
            continue;
        }
        tables.entry(t).or_default().push((c, ty));
    }
    let mut out = Canon::new();
    let mut json_cols = Vec::new();
    for (table, columns) in &tables {
        let exprs: Vec<String> = columns
            .iter()
            .map(|(c, ty)| {
                let q = format!("\"{}\"", c.replace('"', "\"\""));
                if ty.starts_with("timestamp") {
                    format!("(extract(epoch from {q}) * 1000)::bigint")
                } else {
                    q
                }
            })
            .collect();
        json_cols.extend(
            columns
                .iter()
                .filter(|(_, ty)| ty == "jsonb" || ty == "json")
                .map(|(c, _)| c.clone()),
        );
        let sql = format!(
            "SELECT json_build_array({})::text FROM qualtrics.\"{table}\"",
            exprs.join(", ")
        );
        let rows: Vec<Vec<J>> = c
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let text: String = r.get(0);
                match serde_json::from_str::<J>(&text).unwrap() {
                    J::Array(a) => a
                        .into_iter()
                        .zip(columns)
                        // jsonb arrives as a document; the Delta side holds its text.
                        .map(|(v, (_, ty))| {
                            if ty == "jsonb" || ty == "json" {
                                if v.is_null() {
                                    v
                                } else {
                                    J::String(v.to_string())
                                }
                            } else {
                                v
                            }
                        })
                        .collect(),
                    other => panic!("not an array: {other}"),
                }
            })
            .collect();
        let names: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();
        out.insert(table.clone(), canon_rows(&names, rows, &json_cols));
    }
    (out, json_cols)
}

/// Every Delta table under `lake/qualtrics`, read by both readers.
fn delta_tables(py: &Path, lake_dir: &Path, json_cols: &[String]) -> Canon {
    let dirs: Vec<_> = lake::tables_under(&lake_dir.join("qualtrics"))
        .into_iter()
        .filter(|d| !d.ends_with("_xmbridge_state") && !d.ends_with("_fivetran_state"))
        .collect();
    lake::read(py, &dirs)
        .into_iter()
        .map(|(name, t)| (name, canon_rows(&t.columns, t.rows, json_cols)))
        .collect()
}

async fn assert_same(py: &Path, lake_dir: &Path, pg_url: &str, when: &str) {
    let (pg, json_cols) = postgres_tables(pg_url).await;
    let delta = delta_tables(py, lake_dir, &json_cols);
    assert_eq!(
        delta.keys().collect::<Vec<_>>(),
        pg.keys().collect::<Vec<_>>(),
        "the same tables {when}"
    );
    for (table, rows) in &pg {
        let d = &delta[table];
        assert_eq!(d.len(), rows.len(), "{table}: row counts differ {when}");
        if let Some((a, b)) = d.iter().zip(rows).find(|(a, b)| a != b) {
            panic!("{table}: rows differ {when}:\n delta:    {a}\n postgres: {b}");
        }
    }
    assert!(
        pg.get("question_response").is_some_and(|r| !r.is_empty()),
        "answers were synced {when}"
    );
}

async fn sim(responses: u64) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(SimConfig {
        surveys: 2,
        responses,
        ..SimConfig::default()
    })
    .await
}

async fn admin(h: &SimHandle, method: reqwest::Method, path: &str, body: Option<J>) -> J {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", h.api_url()))
        .header("X-API-TOKEN", h.sim.cfg.admin_token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(J::Null)
}

/// The Delta readers, the simulator (2 surveys, `responses` each), an installation connected to
/// it as `acme`, a `delta:` directory and a PostgreSQL database of its own; `None` (after a
/// skip line) without the readers or PostgreSQL.
struct Setup {
    py: std::path::PathBuf,
    h: SimHandle,
    i: Install,
    lake_dir: std::path::PathBuf,
    delta: String,
    pg: String,
    _db: TestDb,
}

async fn setup(db_tag: &str, responses: u64) -> Option<Setup> {
    let py = lake::readers()?;
    let db = TestDb::create(db_tag).await?;
    let h = sim(responses).await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let lake_dir = i.path("lake");
    Some(Setup {
        py,
        delta: format!("delta:{}", lake_dir.display()),
        pg: db.url().to_string(),
        h,
        i,
        lake_dir,
        _db: db,
    })
}

/// `sync acme --destination DEST EXTRA…`.
fn sync_args<'a>(dest: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["sync", "acme", "--destination", dest];
    args.extend_from_slice(extra);
    args
}

async fn sync(i: &Install, dest: &str, extra: &[&str]) -> String {
    i.ok(&sync_args(dest, extra)).await
}

#[tokio::test]
async fn delta_equals_postgres_after_a_first_load_and_an_incremental_sync_with_edits_and_deletes() {
    let Some(Setup {
        py,
        h,
        i,
        lake_dir,
        delta,
        pg,
        _db,
    }) = setup("xmb_cli_delta", 150).await
    else {
        return;
    };

    let out = sync(&i, &delta, &[]).await;
    assert!(out.contains("question_response"), "{out}");
    sync(&i, &pg, &[]).await;
    assert_same(&py, &lake_dir, &pg, "after the first load").await;

    // New, edited and deleted responses; a reconcile drops the deleted one.
    let sid = h.sim.surveys[0].id.clone();
    admin(
        &h,
        reqwest::Method::POST,
        &format!("/surveys/{sid}/responses"),
        Some(json!({"values": {"QID1": 1, "segment": "3"}})),
    )
    .await;
    let picked: Vec<String> = pg_client(&pg)
        .await
        .query(
            "SELECT id FROM qualtrics.survey_response WHERE survey_id = $1 ORDER BY id LIMIT 2",
            &[&sid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    admin(
        &h,
        reqwest::Method::PUT,
        &format!("/responses/{}", picked[0]),
        Some(json!({"surveyId": sid, "embeddedData": {"segment": "9"}})),
    )
    .await;
    admin(
        &h,
        reqwest::Method::DELETE,
        &format!("/surveys/{sid}/responses/{}", picked[1]),
        None,
    )
    .await;
    for dest in [&delta, &pg] {
        sync(&i, dest, &["--reconcile"]).await;
    }
    assert_same(
        &py,
        &lake_dir,
        &pg,
        "after an incremental sync with edits and deletes",
    )
    .await;
}

#[tokio::test]
async fn delta_syncs_killed_20_times_resume_to_the_rows_of_a_clean_postgres_sync() {
    let Some(Setup {
        py,
        h: _sim,
        i,
        lake_dir,
        delta,
        pg,
        _db,
    }) = setup("xmb_cli_delta_kill", 1200).await
    else {
        return;
    };
    let extra = ["--commit-every", "150"];

    let started = std::time::Instant::now();
    sync(&i, &pg, &extra).await;
    let span_ms = (started.elapsed().as_millis() as u64).clamp(600, 4000);

    let argv = sync_args(&delta, &extra);
    let pending = lake_dir.join("qualtrics/_xmbridge_pending.json");
    let (kills, cut_commits) = kill_runs(
        &i,
        &argv,
        Kills {
            seed: 0xDE17A,
            wanted: 20,
            min_ms: 40,
            window_ms: span_ms,
            after_kill: Duration::ZERO,
        },
        || pending.exists(),
        || log_entries(&lake_dir.join("qualtrics")),
    )
    .await;
    eprintln!("{cut_commits} of {kills} kills cut a commit between its tables");
    assert!(
        cut_commits >= 2,
        "only {cut_commits} kills landed inside a commit: the redo path was hardly exercised"
    );
    let committed = lake::tables_under(&lake_dir.join("qualtrics")).len();
    eprintln!(
        "{kills} delta syncs killed with SIGKILL; {committed} tables exist before the last run"
    );
    sync(&i, &delta, &extra).await;
    assert!(!pending.exists(), "no commit is left half applied");
    assert_same(&py, &lake_dir, &pg, &format!("after {kills} kills")).await;
}

/// How [`kill_runs`] kills.
struct Kills {
    seed: u64,
    /// Runs to kill.
    wanted: usize,
    /// Each run is killed after `min_ms` plus up to `window_ms` (seeded random); the window
    /// halves each time a run finishes first, and doubles (up to 4 times its first width) each
    /// time a run is killed before it committed anything: on a busy machine a run takes longer
    /// to reach its first commit.
    min_ms: u64,
    window_ms: u64,
    /// Waited after each kill.
    after_kill: Duration,
}

/// Runs `xmbridge argv…` again and again and kills each run with SIGKILL at a random moment,
/// until `k.wanted` runs were killed (asserted). Each table's part of a commit is followed by a
/// pause, so that some kills land between the tables of one commit (the redo file then
/// finishes it); `cut()`, asked after each kill, tells whether this one did, and `progress()`
/// counts what the runs committed so far (a kill that leaves it unchanged came too early).
/// Returns the kills and the cut commits.
async fn kill_runs(
    i: &Install,
    argv: &[&str],
    k: Kills,
    cut: impl Fn() -> bool,
    progress: impl Fn() -> usize,
) -> (usize, usize) {
    let mut rng = xmbridge_test_kit::Rng(k.seed);
    let (mut kills, mut cut_commits, mut window_ms) = (0, 0, k.window_ms);
    let mut committed = progress();
    for _ in 0..80 {
        if kills >= k.wanted {
            break;
        }
        let delay = Duration::from_millis(rng.range(k.min_ms, k.min_ms + window_ms));
        let mut child = i
            .cmd(argv)
            .env("XMBRIDGE_TEST_DELTA_COMMIT_PAUSE_MS", "150")
            // Groups of a few commits landing every 100 ms, not every second or more: the
            // runs are short, and the kills are to fall inside landings too.
            .env("XMBRIDGE_TEST_DELTA_GROUP_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(delay).await;
        if child.try_wait().unwrap().is_some() {
            window_ms = (window_ms / 2).max(20);
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let was_cut = cut();
        cut_commits += usize::from(was_cut);
        let now = progress();
        if now == committed && !was_cut {
            window_ms = (window_ms * 2).min(k.window_ms * 4);
        }
        committed = now;
        tokio::time::sleep(k.after_kill).await;
    }
    assert!(kills >= k.wanted, "only {kills} runs could be killed");
    (kills, cut_commits)
}

/// The commits of the tables under `killed/qualtrics` in the S3 test's bucket so far.
fn s3_log_entries(s3: &S3Server) -> usize {
    s3.keys("xmbridge-lake", "killed/qualtrics")
        .iter()
        .filter(|k| k.contains("/_delta_log/") && k.ends_with(".json"))
        .count()
}

/// The commits of every table under `schema_dir` so far (their `_delta_log` JSON entries).
fn log_entries(schema_dir: &Path) -> usize {
    lake::tables_under(schema_dir)
        .iter()
        .filter_map(|t| std::fs::read_dir(t.join("_delta_log")).ok())
        .flat_map(|entries| entries.filter_map(Result::ok))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count()
}

/// Data files of the table in `dir` that its current version uses, and all on disk.
fn data_files(table_dir: &Path) -> usize {
    std::fs::read_dir(table_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count()
}

#[tokio::test]
async fn lake_optimize_compacts_and_vacuum_deletes_unused_files_rows_unchanged() {
    let Some(py) = lake::readers() else { return };
    let h = sim(120).await;
    let i = support::install();
    i.connect(&h, "acme").await;
    let lake_dir = i.path("lake");
    let delta = format!("delta:{}", lake_dir.display());
    // Several syncs with small commits and a new response each: many small files.
    sync(&i, &delta, &["--commit-every", "20"]).await;
    let sid = h.sim.surveys[0].id.clone();
    for n in 0..3 {
        admin(
            &h,
            reqwest::Method::POST,
            &format!("/surveys/{sid}/responses"),
            Some(json!({"values": {"QID1": n + 1}})),
        )
        .await;
        sync(&i, &delta, &[]).await;
    }
    let schema_dir = lake_dir.join("qualtrics");
    let before = lake::read(&py, &lake::tables_under(&schema_dir));
    let qr = schema_dir.join("question_response");
    let files_before = data_files(&qr);

    let out = i
        .ok(&[
            "lake",
            "optimize",
            &lake_dir.display().to_string(),
            "--json",
        ])
        .await;
    let report: J = serde_json::from_str(out.trim()).unwrap();
    let qr_report = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "question_response")
        .unwrap()
        .clone();
    assert!(
        qr_report["files_compacted"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert!(
        qr_report["files_after"].as_u64() < qr_report["files_before"].as_u64(),
        "{report}"
    );
    assert_eq!(
        lake::read(&py, &lake::tables_under(&schema_dir)),
        before,
        "optimize changes no row"
    );
    // The compacted files are still on disk until a vacuum.
    assert!(data_files(&qr) > files_before);

    let dry = i
        .ok(&[
            "lake",
            "vacuum",
            &format!("delta:{}", lake_dir.display()),
            "--older-than",
            "0s",
            "--dry-run",
        ])
        .await;
    assert!(
        dry.contains("would delete") && dry.contains("nothing was deleted"),
        "{dry}"
    );
    assert!(data_files(&qr) > files_before, "a dry run deletes nothing");
    let done = i
        .ok(&[
            "lake",
            "vacuum",
            &lake_dir.display().to_string(),
            "--older-than",
            "0s",
        ])
        .await;
    assert!(done.contains("deleted"), "{done}");
    assert_eq!(
        data_files(&qr) as u64,
        qr_report["files_after"].as_u64().unwrap(),
        "only the files the current version uses are left: {done}"
    );
    assert_eq!(
        lake::read(&py, &lake::tables_under(&schema_dir)),
        before,
        "vacuum changes no row"
    );
    // And the next sync works on the compacted tables.
    sync(&i, &delta, &[]).await;

    // Bad input: no schema directory there, a bad age.
    let r = i
        .run(&["lake", "optimize", &i.path("nothing").display().to_string()])
        .await;
    let (code, err) = (r.code(), r.stderr());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no schema directory"), "{err}");
    let r = i
        .run(&[
            "lake",
            "vacuum",
            &lake_dir.display().to_string(),
            "--older-than",
            "7",
        ])
        .await;
    let (code, err) = (r.code(), r.stderr());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("7d"), "{err}");
}

/// `--compat fivetran`: the same `_fivetran_*` columns and cursor table as on PostgreSQL, and the
/// lake commands find that cursor table (they finish a pending commit into it).
#[tokio::test]
async fn delta_with_fivetran_compat_equals_postgres() {
    let Some(Setup {
        py,
        h: _sim,
        i,
        lake_dir,
        delta,
        pg,
        _db,
    }) = setup("xmb_cli_delta_ft", 60).await
    else {
        return;
    };
    for dest in [&delta, &pg] {
        sync(&i, dest, &["--compat", "fivetran"]).await;
    }
    assert_same(&py, &lake_dir, &pg, "with --compat fivetran").await;
    let schema_dir = lake_dir.join("qualtrics");
    let qr = lake::read(&py, &[schema_dir.join("question_response")]);
    assert!(
        qr["question_response"]
            .columns
            .iter()
            .any(|c| c == "_fivetran_id"),
        "{:?}",
        qr["question_response"].columns
    );
    assert!(schema_dir.join("_fivetran_state/_delta_log").is_dir());
    i.ok(&["lake", "optimize", &lake_dir.display().to_string()])
        .await;
    assert!(
        !schema_dir.join("_xmbridge_state").exists(),
        "lake optimize made an _xmbridge_state table instead of using the fivetran one"
    );
}

/// `--full` reads every survey again as if new (its batches say "fresh"): on Delta, where rows
/// are appended without a key check, the tables that already hold rows must still be merged, so
/// that nothing is doubled.
#[tokio::test]
async fn delta_full_resync_doubles_nothing() {
    let Some(Setup {
        py,
        h: _sim,
        i,
        lake_dir,
        delta,
        pg,
        _db,
    }) = setup("xmb_cli_delta_full", 80).await
    else {
        return;
    };
    for dest in [&delta, &pg] {
        sync(&i, dest, &[]).await;
        sync(&i, dest, &["--full"]).await;
    }
    assert_same(&py, &lake_dir, &pg, "after a sync and a --full sync").await;
}

/// A disk that fills part way through a first load (a tmpfs half the size the load needs): the
/// sync fails with the disk-full error, says truly whether part of the failed commit is in, and
/// leaves tables both readers read; given room, the next run ends with the rows of a clean
/// PostgreSQL sync.
#[tokio::test]
async fn delta_on_a_full_disk_fails_clearly_and_the_next_run_with_room_completes() {
    if !disk::available() {
        return;
    }
    let Some(Setup {
        py,
        h: _sim,
        i,
        lake_dir,
        delta,
        pg,
        _db,
    }) = setup("xmb_cli_delta_disk", 300).await
    else {
        return;
    };
    let extra = ["--commit-every", "150"];
    // What the load needs: the same sync into a directory without a limit.
    let roomy = i.path("roomy");
    sync(&i, &format!("delta:{}", roomy.display()), &extra).await;
    let need = disk::used_bytes(&roomy);
    let small = SmallDisk::mount(&lake_dir, need / 2);

    let argv = sync_args(&delta, &extra);
    let run = i.run(&argv).await;
    let said = run.all();
    assert!(
        !run.status.success(),
        "a sync into half the room it needs fails:\n{said}"
    );
    assert!(
        said.contains("disk is full")
            && said.contains("free disk space where the tables live")
            && !said.contains("table (commit)"),
        "the error says the disk is full and what to do:\n{said}"
    );
    let pending = lake_dir.join("qualtrics/_xmbridge_pending.json");
    if pending.exists() {
        assert!(
            said.contains("the next run finishes it")
                && !said.contains("nothing of this commit was applied"),
            "part of the commit is in, and the error says so:\n{said}"
        );
    } else {
        assert!(
            said.contains("nothing of this commit was applied"),
            "{said}"
        );
    }
    let committed = lake::tables_under(&lake_dir.join("qualtrics"));
    lake::read(&py, &committed);
    eprintln!(
        "full at {} of {need} bytes: {} tables readable, a commit {}; the error: {}",
        disk::used_bytes(&lake_dir),
        committed.len(),
        if pending.exists() {
            "half applied"
        } else {
            "refused whole"
        },
        said.trim()
    );

    small.resize(need * 4);
    sync(&i, &delta, &extra).await;
    assert!(!pending.exists(), "no commit is left half applied");
    sync(&i, &pg, &extra).await;
    assert_same(&py, &lake_dir, &pg, "after a full disk and a run with room").await;
}

/// `delta:s3://…` end to end against a local S3 server: a first load and an incremental sync
/// equal PostgreSQL's, a second writer is kept out by the lease a killed run left (exit 75)
/// until it lapses, a sync killed 6 times resumes to PostgreSQL's rows, and `lake optimize` and
/// `lake vacuum` work on the bucket with no row changed. The bucket's objects are copied to a
/// local directory for the readers.
#[tokio::test]
async fn delta_on_s3_equals_postgres_after_loads_kills_and_lake_upkeep() {
    let Some(Setup {
        py,
        h,
        mut i,
        lake_dir,
        delta: _,
        pg,
        _db,
    }) = setup("xmb_cli_delta_s3", 100).await
    else {
        return;
    };
    let s3 = S3Server::start(&py);
    s3.create_bucket("xmbridge-lake");
    for (k, v) in s3.env() {
        i.set_env(&k, &v);
    }
    let dest = "delta:s3://xmbridge-lake/lake?lease_secs=3";
    let began = std::time::Instant::now();
    let out = sync(&i, dest, &[]).await;
    eprintln!("first load into S3: {:?}", began.elapsed());
    assert!(out.contains("s3://xmbridge-lake/lake/qualtrics"), "{out}");
    sync(&i, &pg, &[]).await;
    s3.mirror("xmbridge-lake", "lake", &lake_dir);
    assert_same(&py, &lake_dir, &pg, "on S3 after the first load").await;
    let keys = s3.keys("xmbridge-lake", "lake/qualtrics");
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with("_xmbridge.lock") || k.ends_with("_pending.json")),
        "a finished sync leaves no lease and no redo object: {keys:?}"
    );

    let sid = h.sim.surveys[0].id.clone();
    admin(
        &h,
        reqwest::Method::POST,
        &format!("/surveys/{sid}/responses"),
        Some(json!({"values": {"QID1": 2, "segment": "4"}})),
    )
    .await;
    let first: String = pg_client(&pg)
        .await
        .query_one(
            "SELECT id FROM qualtrics.survey_response WHERE survey_id = $1 ORDER BY id LIMIT 1",
            &[&sid],
        )
        .await
        .unwrap()
        .get(0);
    admin(
        &h,
        reqwest::Method::PUT,
        &format!("/responses/{first}"),
        Some(json!({"surveyId": sid, "embeddedData": {"segment": "8"}})),
    )
    .await;
    for d in [dest, pg.as_str()] {
        sync(&i, d, &[]).await;
    }
    s3.mirror("xmbridge-lake", "lake", &lake_dir);
    assert_same(&py, &lake_dir, &pg, "on S3 after an incremental sync").await;

    // A first load into another prefix, killed 6 times (after its tables are made, mostly).
    let killed = "delta:s3://xmbridge-lake/killed?lease_secs=3";
    let extra = ["--commit-every", "100"];
    let argv = sync_args(killed, &extra);
    // A killed run's lease stays until it lapses: the next run is refused (exit 75) until then.
    let (first, _) = kill_runs(
        &i,
        &argv,
        Kills {
            seed: 0x53DE17A,
            wanted: 1,
            min_ms: 1500,
            window_ms: 3000,
            after_kill: Duration::ZERO,
        },
        || false,
        || s3_log_entries(&s3),
    )
    .await;
    let r = i.run(&argv).await;
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert!(r.stderr().contains("leased by"), "{}", r.stderr());
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (more, cut_commits) = kill_runs(
        &i,
        &argv,
        Kills {
            seed: 0x53DE17B,
            wanted: 5,
            min_ms: 1500,
            window_ms: 3000,
            after_kill: Duration::from_millis(3100),
        },
        || {
            s3.keys("xmbridge-lake", "killed/qualtrics")
                .iter()
                .any(|k| k.ends_with("_xmbridge_pending.json"))
        },
        || s3_log_entries(&s3),
    )
    .await;
    let kills = first + more;
    eprintln!(
        "{cut_commits} of {kills} kills on S3 cut a commit between its tables ({:?} since the start)",
        began.elapsed()
    );
    sync(&i, killed, &extra).await;
    eprintln!(
        "resumed after the kills ({:?} since the start)",
        began.elapsed()
    );
    let killed_dir = i.path("killed");
    s3.mirror("xmbridge-lake", "killed", &killed_dir);
    assert_same(&py, &killed_dir, &pg, &format!("on S3 after {kills} kills")).await;

    // Upkeep on the bucket: no row changes.
    let out = i
        .ok(&["lake", "optimize", "s3://xmbridge-lake/lake", "--json"])
        .await;
    let report: J = serde_json::from_str(out.trim()).unwrap();
    assert!(
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["table"] == "question_response"),
        "{report}"
    );
    let done = i
        .ok(&[
            "lake",
            "vacuum",
            "delta:s3://xmbridge-lake/lake",
            "--older-than",
            "0s",
        ])
        .await;
    assert!(done.contains("deleted"), "{done}");
    s3.mirror("xmbridge-lake", "lake", &lake_dir);
    assert_same(&py, &lake_dir, &pg, "on S3 after optimize and vacuum").await;
    eprintln!("S3 end to end done in {:?}", began.elapsed());
}
