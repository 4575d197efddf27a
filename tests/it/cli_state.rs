//! `xmbridge state migrate` and `state copy` end to end: the real binary and a real state store
//! in a temporary XMBRIDGE_HOME — a fresh home, a store from before schema versions, a store from
//! a newer xmbridge, several processes migrating at once — and the same on a PostgreSQL state
//! store (`XMBRIDGE_TEST_PG`, a database per test), copied into from a home.

use rusqlite::Connection;
use serde_json::Value;

use xmbridge_test_kit::pg::TestDb;

use crate::support::{self, Install};

/// Every component and the newest version this build has.
const COMPONENTS: [(&str, i64); 6] = [
    ("vault", 1),
    ("workflows", 2),
    ("service_users", 1),
    ("service_runs", 4),
    ("service_sync_config", 1),
    ("service_nodes", 1),
];

/// How many migrations a fresh store takes.
fn all_migrations() -> i64 {
    COMPONENTS.iter().map(|c| c.1).sum()
}

fn state_db(inst: &Install) -> Connection {
    Connection::open(inst.home().join("state.db")).expect("the state store opens")
}

fn versions(report: &Value) -> Vec<(String, i64, i64)> {
    report["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| {
            (
                c["component"].as_str().expect("name").to_string(),
                c["version"].as_i64().expect("version"),
                c["latest"].as_i64().expect("latest"),
            )
        })
        .collect()
}

/// Adds the untested token connection `prod` (to a closed loopback port) with `token`, and
/// `extra` arguments (`--state URL`).
async fn add_prod(inst: &Install, token: &str, extra: &[&str]) {
    let file = inst.file("t", &format!("{token}\n"));
    let mut args = vec![
        "connection",
        "add",
        "qualtrics",
        "prod",
        "--no-test",
        "--url",
        "http://127.0.0.1:9",
        "--api-token-file",
        file.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    inst.ok(&args).await;
}

/// Adds user `name` with `role` and a good password, and `extra` arguments (`--state URL`).
async fn add_user(inst: &Install, name: &str, role: &str, extra: &[&str]) {
    let pw = inst.file("pw", "correct horse battery staple\n");
    let mut args = vec![
        "user",
        "add",
        name,
        "--role",
        role,
        "--password-file",
        pw.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    inst.ok(&args).await;
}

#[tokio::test]
async fn a_fresh_home_is_migrated_once_and_then_up_to_date() {
    let inst = support::install();
    let first = inst.json(&["state", "migrate", "--json"]).await;
    assert_eq!(first["applied_now"], all_migrations(), "{first}");
    assert_eq!(
        versions(&first),
        COMPONENTS
            .iter()
            .map(|(c, v)| (c.to_string(), *v, *v))
            .collect::<Vec<_>>()
    );
    for c in first["components"].as_array().expect("components") {
        let applied: Vec<i64> = c["applied_now"]
            .as_array()
            .expect("applied_now")
            .iter()
            .map(|a| a["version"].as_i64().expect("version"))
            .collect();
        assert_eq!(
            applied,
            (1..=c["latest"].as_i64().expect("latest")).collect::<Vec<_>>(),
            "{c}"
        );
    }
    let again = inst.ok(&["state", "migrate"]).await;
    assert!(
        again.contains("up to date: no migration was needed"),
        "{again}"
    );
    assert!(!again.contains("applied 1"), "{again}");
    let rows: i64 = state_db(&inst)
        .query_row("SELECT COUNT(*) FROM state_migrations", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, all_migrations());
}

#[tokio::test]
async fn a_store_from_before_versions_adopts_version_one_and_keeps_its_data() {
    let inst = support::install();
    add_prod(&inst, "tok-1", &[]).await;
    inst.ok(&["state", "migrate"]).await;
    // What an xmbridge from before schema versions left: the tables of every version 1, no
    // record of them (the later versions' column and indexes taken away again).
    state_db(&inst)
        .execute_batch(
            "DROP TABLE state_migrations;
             ALTER TABLE wf_events DROP COLUMN lease_token;
             ALTER TABLE svc_sync_runs DROP COLUMN node_id;
             ALTER TABLE svc_sync_runs DROP COLUMN fence;
             DROP INDEX svc_sync_runs_one_queued;
             DROP INDEX svc_sync_runs_one_running;",
        )
        .expect("back to before versions");
    let report = inst.json(&["state", "migrate", "--json"]).await;
    assert_eq!(report["applied_now"], all_migrations(), "{report}");
    let list = inst.ok(&["connection", "list"]).await;
    assert!(list.contains("prod"), "the connection is kept:\n{list}");
}

#[tokio::test]
async fn a_store_from_a_newer_xmbridge_is_refused_with_both_versions() {
    let inst = support::install();
    inst.ok(&["state", "migrate"]).await;
    state_db(&inst)
        .execute(
            "INSERT INTO state_migrations (component, version, name, applied_at) VALUES ('workflows', 3, 'from a newer xmbridge', 0)",
            [],
        )
        .expect("insert");
    for args in [&["state", "migrate"][..], &["account", "list"][..]] {
        let (code, err) = inst.fails(args).await;
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("has the workflows tables at schema version 3")
                && err.contains("knows versions up to 2")
                && err.contains(env!("CARGO_PKG_VERSION"))
                && err.contains("run a newer xmbridge"),
            "{args:?}: {err}"
        );
    }
    let rows: i64 = state_db(&inst)
        .query_row(
            "SELECT COUNT(*) FROM state_migrations WHERE component = 'workflows'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 3, "nothing was applied or removed");
}

#[tokio::test]
async fn processes_migrating_at_once_apply_each_migration_once() {
    let inst = support::install();
    // The vault (and its master key) first: the concurrent starts race on the other components.
    inst.ok(&["connection", "list"]).await;
    let runs =
        futures_util::future::join_all((0..4).map(|_| inst.json(&["state", "migrate", "--json"])))
            .await;
    let applied: i64 = runs
        .iter()
        .map(|r| r["applied_now"].as_i64().expect("applied_now"))
        .sum();
    assert_eq!(
        applied,
        all_migrations() - 1,
        "the vault's was applied before: {runs:?}"
    );
    let rows: Vec<(String, i64)> = {
        let db = state_db(&inst);
        let mut st = db
            .prepare("SELECT component, version FROM state_migrations ORDER BY component, version")
            .expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let mut expected: Vec<(String, i64)> = COMPONENTS
        .iter()
        .flat_map(|(c, latest)| (1..=*latest).map(|v| (c.to_string(), v)))
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
}

/// Every table of every component, as `state copy` lists them.
async fn copied_tables(inst: &Install, to: &str) -> Vec<String> {
    let dry = inst
        .json(&["state", "copy", "--dry-run", "--json", "--to", to])
        .await;
    dry["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["table"].as_str().expect("table").to_string())
        .collect()
}

#[tokio::test]
async fn a_postgres_state_store_is_migrated_once_even_by_processes_starting_at_once() {
    let Some(db) = TestDb::create("xmb_state_pg_migrate").await else {
        return;
    };
    let inst = support::install();
    let args = ["state", "migrate", "--json", "--state", db.url()];
    let runs = futures_util::future::join_all((0..4).map(|_| inst.json(&args))).await;
    let applied: i64 = runs
        .iter()
        .map(|r| r["applied_now"].as_i64().expect("applied_now"))
        .sum();
    assert_eq!(applied, all_migrations(), "{runs:?}");
    for r in &runs {
        assert_eq!(
            versions(r),
            COMPONENTS
                .iter()
                .map(|(c, v)| (c.to_string(), *v, *v))
                .collect::<Vec<_>>()
        );
        assert!(
            r["state_store"]
                .as_str()
                .expect("state_store")
                .starts_with("postgres://"),
            "{r}"
        );
    }
    // The environment variable works as the flag does.
    let mut again = inst.cmd(&["state", "migrate"]);
    again.env("XMBRIDGE_STATE", db.url());
    let out = again.output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("up to date: no migration was needed"),
        "{text}"
    );
    assert!(
        !inst.home().join("state.db").exists(),
        "nothing was written to XMBRIDGE_HOME"
    );
    let client = db.client().await;
    let rows: i64 = client
        .query_one("SELECT COUNT(*) FROM state_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, all_migrations());
    // A newer xmbridge's version is refused, as on SQLite.
    client
        .execute(
            "INSERT INTO state_migrations (component, version, name, applied_at) VALUES ('service_runs', 5, 'from a newer xmbridge', 0)",
            &[],
        )
        .await
        .expect("insert");
    let (code, err) = inst.fails(&["state", "migrate", "--state", db.url()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("has the service_runs tables at schema version 5")
            && err.contains("knows versions up to 4")
            && err.contains("XMBRIDGE_STATE"),
        "{err}"
    );
}

#[tokio::test]
async fn a_state_url_that_cannot_work_fails_fast_with_the_fix() {
    let inst = support::install();
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let started = std::time::Instant::now();
    let (code, err) = inst
        .fails(&[
            "state",
            "migrate",
            "--state",
            "postgres://xmb@127.0.0.1:1/state",
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the state store postgres://xmb@127.0.0.1:1/state cannot be reached")
            && err.contains("names the right host, port and database"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // A command that would open the vault there leaves no new master key behind.
    let (code, err) = inst
        .fails(&[
            "connection",
            "list",
            "--state",
            "postgres://xmb@127.0.0.1:1/state",
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(!inst.home().join("master.key").exists(), "{err}");
    let (code, err) = inst
        .fails(&["state", "migrate", "--state", "sqlite:///tmp/state.db"])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("must be a postgres:// or postgresql:// URL"),
        "{err}"
    );
    // A password in a refused URL is not repeated.
    let (code, err) = inst
        .fails(&[
            "state",
            "migrate",
            "--state",
            "mysql://u:hunter2@127.0.0.1/x",
        ])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!inst.home().join("state.db").exists());
}

/// Declared type → a value of that type, the same text for every key column, so that every
/// foreign key (`connection_secrets.connection` → `connections.name`, …) finds its row.
fn fill_every_table(conn: &Connection, tables: &[String]) {
    for table in tables {
        let columns: Vec<(String, String)> = {
            let mut st = conn
                .prepare(&format!("PRAGMA table_info(\"{table}\")"))
                .expect("table_info");
            st.query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
                .expect("columns")
                .collect::<Result<_, _>>()
                .expect("columns")
        };
        let (names, values): (Vec<String>, Vec<&str>) = columns
            .iter()
            .map(|(name, ty)| {
                let value = match ty.as_str() {
                    "INTEGER" => "7",
                    "BLOB" => "x'00ff10'",
                    _ => "'copied'",
                };
                (format!("\"{name}\""), value)
            })
            .unzip();
        conn.execute(
            &format!(
                "INSERT OR IGNORE INTO \"{table}\" ({}) VALUES ({})",
                names.join(", "),
                values.join(", ")
            ),
            [],
        )
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    // NULLs of every kind of column travel too.
    conn.execute(
        "INSERT INTO wf_events (id, workflow, source, dedupe_key, payload, state, next_attempt_at, created_at, updated_at) VALUES ('e-null', 'w', 's', 'd-null', '{}', 'pending', 1, 1, 1)",
        [],
    )
    .expect("a row with NULLs");
    // More rows than one page of the copy's reads (2,000).
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4500)
         INSERT INTO wf_events (id, workflow, source, dedupe_key, payload, state, next_attempt_at, created_at, updated_at)
         SELECT 'bulk-' || i, 'w', 's', 'bulk-' || i, '{\"n\":' || i || '}', 'done', i, i, i FROM n",
        [],
    )
    .expect("many events");
}

/// Every row of `table` on both sides, as text (blobs as lowercase hex), sorted.
async fn both_sides(
    conn: &Connection,
    client: &tokio_postgres::Client,
    table: &str,
) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let columns: Vec<(String, String)> = {
        let mut st = conn
            .prepare(&format!("PRAGMA table_info(\"{table}\")"))
            .expect("table_info");
        st.query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
            .expect("columns")
            .collect::<Result<_, _>>()
            .expect("columns")
    };
    let (lite, pg): (Vec<String>, Vec<String>) = columns
        .iter()
        .map(|(c, ty)| {
            if ty == "BLOB" {
                (
                    format!("lower(hex(\"{c}\"))"),
                    format!("encode(\"{c}\", 'hex')"),
                )
            } else {
                (format!("CAST(\"{c}\" AS TEXT)"), format!("\"{c}\"::text"))
            }
        })
        .unzip();
    let mut a: Vec<Vec<Option<String>>> = {
        let mut st = conn
            .prepare(&format!("SELECT {} FROM \"{table}\"", lite.join(", ")))
            .expect("select");
        st.query_map([], |r| {
            (0..columns.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    let mut b: Vec<Vec<Option<String>>> = client
        .query(&format!("SELECT {} FROM \"{table}\"", pg.join(", ")), &[])
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"))
        .iter()
        .map(|r| (0..columns.len()).map(|i| r.get(i)).collect())
        .collect();
    a.sort();
    b.sort();
    (a, b)
}

#[tokio::test]
async fn state_copy_moves_every_row_of_every_table_and_never_into_a_store_with_rows() {
    let Some(db) = TestDb::create("xmb_state_pg_copy").await else {
        return;
    };
    let inst = support::install();
    add_prod(&inst, "tok-1", &[]).await;
    add_user(&inst, "alice", "admin", &[]).await;
    inst.ok(&["state", "migrate"]).await;
    let tables = copied_tables(&inst, db.url()).await;
    assert_eq!(tables.len(), 18, "{tables:?}");
    fill_every_table(&state_db(&inst), &tables);

    let dry = inst
        .json(&["state", "copy", "--dry-run", "--json", "--to", db.url()])
        .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["copied"], false);
    assert_eq!(dry["target"], "no_tables", "{dry}");
    let listed: u64 = dry["rows"].as_u64().expect("rows");
    let counted: i64 = tables
        .iter()
        .map(|t| {
            state_db(&inst)
                .query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| {
                    r.get::<_, i64>(0)
                })
                .expect("count")
        })
        .sum();
    assert_eq!(listed, counted.unsigned_abs(), "{dry}");
    for t in dry["tables"].as_array().expect("tables") {
        assert!(t["rows"].as_u64().expect("rows") >= 1, "{t}");
    }
    let client = db.client().await;
    let none: Option<String> = client
        .query_one("SELECT to_regclass('connections')::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(none, None, "a dry run writes nothing");

    let done = inst
        .json(&["state", "copy", "--json", "--to", db.url()])
        .await;
    assert_eq!(done["copied"], true, "{done}");
    assert_eq!(done["rows"], listed, "{done}");
    let conn = state_db(&inst);
    for t in &tables {
        let (lite, pg) = both_sides(&conn, &client, t).await;
        assert!(!lite.is_empty(), "{t}");
        assert_eq!(lite, pg, "{t} differs after the copy");
    }
    // Ids given by the database go on after the copied ones.
    let max_copied: i64 = conn
        .query_row("SELECT MAX(id) FROM svc_audit", [], |r| r.get(0))
        .expect("max");
    let next: i64 = client
        .query_one(
            "INSERT INTO svc_audit (at, actor, via, action, target, detail) VALUES (1, 'a', 'cli', 'x', 't', '{}') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    assert!(next > max_copied, "{next} after {max_copied}");

    // A second copy would merge into rows: refused, and the dry run says so first.
    let dry = inst
        .json(&["state", "copy", "--dry-run", "--json", "--to", db.url()])
        .await;
    assert_eq!(dry["target"], "not_empty", "{dry}");
    let (code, err) = inst.fails(&["state", "copy", "--to", db.url()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already holds") && err.contains("a new database"),
        "{err}"
    );
    let connections: i64 = client
        .query_one("SELECT COUNT(*) FROM connections", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(connections, 2, "the refused copy wrote nothing");
}

#[tokio::test]
async fn state_copy_refuses_while_serving_and_a_value_of_the_wrong_type_and_writes_nothing() {
    let Some(db) = TestDb::create("xmb_state_pg_copy_bad").await else {
        return;
    };
    let inst = support::install();
    inst.ok(&["state", "migrate"]).await;
    inst.ok(&["state", "migrate", "--state", db.url()]).await;
    state_db(&inst)
        .execute_batch(
            "INSERT INTO svc_users (name, role, password_hash, created_at, password_changed_at) VALUES ('bob', 'viewer', 'h', 1, 1);
             INSERT INTO svc_nodes (node_id, host, pid, version, url, started_at, heartbeat_at, heartbeat_every_ms) VALUES ('n1', 'h', 'not a pid', 'v', 'u', 1, 1, 1);",
        )
        .expect("insert");
    // While a server holds the home, it could write rows the copy would not take.
    let serving = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(inst.home().join("serve.lock"))
        .expect("the lock file");
    serving.try_lock().expect("the lock is free");
    let (code, err) = inst.fails(&["state", "copy", "--to", db.url()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`xmbridge serve` is running on") && err.contains("stop it first"),
        "{err}"
    );
    drop(serving);
    // A table no component declares would be left behind: refused.
    state_db(&inst)
        .execute_batch(
            "CREATE TABLE my_notes (note TEXT); INSERT INTO my_notes VALUES ('keep me');",
        )
        .expect("a table of someone's own");
    let (code, err) = inst.fails(&["state", "copy", "--to", db.url()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no component of this xmbridge declares (my_notes)"),
        "{err}"
    );
    state_db(&inst)
        .execute_batch("DROP TABLE my_notes")
        .expect("dropped");
    let (code, err) = inst.fails(&["state", "copy", "--to", db.url()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("of svc_nodes")
            && err.contains("holds text in the column pid, which is an integer"),
        "{err}"
    );
    let client = db.client().await;
    let users: i64 = client
        .query_one("SELECT COUNT(*) FROM svc_users", &[])
        .await
        .expect("count")
        .get(0);
    let vault: i64 = client
        .query_one("SELECT COUNT(*) FROM vault_meta", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!((users, vault), (0, 0), "nothing was half-copied");
}

#[tokio::test]
async fn users_and_cluster_status_run_on_a_postgres_state_store() {
    let Some(db) = TestDb::create("xmb_state_pg_users").await else {
        return;
    };
    let inst = support::install();
    let url = db.url();
    let pw = inst.file("pw", "correct horse battery staple\n");
    let pw = pw.to_str().expect("path");
    add_user(&inst, "alice", "admin", &["--state", url]).await;
    add_user(&inst, "bob", "member", &["--state", url]).await;
    let (code, err) = inst
        .fails(&[
            "user",
            "add",
            "bob",
            "--role",
            "member",
            "--password-file",
            pw,
            "--state",
            url,
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a user named 'bob' already exists"), "{err}");
    let list = inst.json(&["user", "list", "--json", "--state", url]).await;
    let names: Vec<&str> = list
        .as_array()
        .or_else(|| list["users"].as_array())
        .expect("users")
        .iter()
        .map(|u| u["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["alice", "bob"], "{list}");
    let token = inst.ok(&["user", "token", "bob", "--state", url]).await;
    assert!(token.contains("xmb_"), "{token}");
    let tokens = inst.ok(&["user", "tokens", "bob", "--state", url]).await;
    assert!(tokens.contains("active"), "{tokens}");
    // The last admin stays, decided inside one transaction on PostgreSQL too.
    let (code, err) = inst
        .fails(&["user", "remove", "alice", "--state", url])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("'alice' is the last admin"), "{err}");
    inst.ok(&["user", "remove", "bob", "--state", url]).await;

    let client = db.client().await;
    let users: Vec<String> = client
        .query("SELECT name FROM svc_users ORDER BY name", &[])
        .await
        .expect("users")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, ["alice"]);
    let tokens: i64 = client
        .query_one("SELECT COUNT(*) FROM svc_tokens", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(tokens, 0, "bob's token went with him");
    let actions: Vec<String> = client
        .query("SELECT action FROM svc_audit ORDER BY id", &[])
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        ["user.add", "user.add", "token.create", "user.remove"],
        "the audit log is in PostgreSQL"
    );
    assert!(
        !inst.home().join("state.db").exists() && !inst.home().join("master.key").exists(),
        "nothing was written to XMBRIDGE_HOME"
    );

    let status = inst
        .json(&["cluster", "status", "--json", "--state", url])
        .await;
    assert_eq!(status["nodes"], serde_json::json!([]), "{status}");
    let now = chrono::Utc::now().timestamp_millis();
    client
        .execute(
            "INSERT INTO svc_nodes (node_id, host, pid, version, url, started_at, heartbeat_at, heartbeat_every_ms) VALUES ('n-pg', 'db-host', 7, '0.1.0', 'http://127.0.0.1:1', $1, $1, 60000)",
            &[&now],
        )
        .await
        .expect("a node");
    let status = inst
        .json(&["cluster", "status", "--json", "--state", url])
        .await;
    assert_eq!(status["nodes"][0]["id"], "n-pg", "{status}");
    assert_eq!(status["nodes"][0]["state"], "alive", "{status}");
}

#[tokio::test]
async fn connections_on_a_postgres_state_store_are_sealed_and_need_the_same_master_key() {
    let Some(db) = TestDb::create("xmb_state_pg_connections").await else {
        return;
    };
    let first = support::install();
    let url = db.url();
    add_prod(&first, "tok-secret-1", &["--state", url]).await;
    let list = first.ok(&["connection", "list", "--state", url]).await;
    assert!(list.contains("prod"), "{list}");
    assert!(
        !first.home().join("state.db").exists(),
        "the connection is not in XMBRIDGE_HOME"
    );
    let client = db.client().await;
    let sealed: Vec<u8> = client
        .query_one(
            "SELECT ciphertext FROM connection_secrets WHERE connection = 'prod' AND field = 'api_token'",
            &[],
        )
        .await
        .expect("the sealed token is in PostgreSQL")
        .get(0);
    assert!(
        !sealed.windows(12).any(|w| w == b"tok-secret-1"),
        "the token is sealed"
    );

    // Another node with a key of its own is refused, naming both key ids.
    let other = support::install();
    let (code, err) = other.fails(&["connection", "list", "--state", url]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the master key does not match this state store (postgres://")
            && err.contains("--state (XMBRIDGE_STATE)"),
        "{err}"
    );
    // With the key the store was created with, it sees the same connections.
    let key = std::fs::read_to_string(first.home().join("master.key")).expect("the key file");
    let mut same_key = support::install();
    same_key.master_key = Some(key.trim().to_string());
    let list = same_key.ok(&["connection", "list", "--state", url]).await;
    assert!(list.contains("prod"), "{list}");
    let shown = same_key
        .ok(&["connection", "show", "prod", "--state", url])
        .await;
    assert!(
        shown.contains("API token") || shown.contains("api_token"),
        "{shown}"
    );
    assert!(!shown.contains("tok-secret-1"), "{shown}");
    same_key
        .ok(&["connection", "remove", "prod", "--state", url])
        .await;
    let left: i64 = client
        .query_one("SELECT COUNT(*) FROM connection_secrets", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the secrets went with the connection");
    let list = first.ok(&["connection", "list", "--state", url]).await;
    assert!(list.contains("no connections in postgres://"), "{list}");
}

#[tokio::test]
async fn processes_opening_a_new_postgres_vault_at_once_record_one_key() {
    let Some(db) = TestDb::create("xmb_state_pg_vault_race").await else {
        return;
    };
    let mut inst = support::install();
    // 32 bytes, base64: the key every process brings.
    inst.master_key = Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
    let args = ["connection", "list", "--state", db.url()];
    let runs = futures_util::future::join_all((0..4).map(|_| inst.run(&args))).await;
    for r in &runs {
        assert_eq!(r.code(), 0, "{}", r.all());
    }
    let client = db.client().await;
    let keys: Vec<String> = client
        .query("SELECT key FROM vault_meta ORDER BY key", &[])
        .await
        .expect("vault_meta")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["key_check", "key_id", "schema_version"]);
}

#[tokio::test]
async fn an_installation_copied_into_postgres_works_there_with_its_master_key() {
    let Some(db) = TestDb::create("xmb_state_pg_copied_works").await else {
        return;
    };
    let inst = support::install();
    let url = db.url();
    add_prod(&inst, "tok-1", &[]).await;
    add_user(&inst, "alice", "admin", &[]).await;
    inst.ok(&["state", "copy", "--to", url]).await;
    // The same home (its key file) on the copy: the connections, their sealed secrets and the
    // users are all there.
    let list = inst.ok(&["connection", "list", "--state", url]).await;
    assert!(list.contains("prod"), "{list}");
    let shown = inst
        .ok(&["connection", "show", "prod", "--state", url])
        .await;
    assert!(
        shown.contains("API token") || shown.contains("api_token"),
        "{shown}"
    );
    let users = inst.json(&["user", "list", "--json", "--state", url]).await;
    assert!(users.to_string().contains("alice"), "{users}");
    // New ids go on after the copied ones (the audit log's).
    inst.ok(&["user", "token", "alice", "--state", url]).await;
    let client = db.client().await;
    let ids: Vec<i64> = client
        .query("SELECT id FROM svc_audit ORDER BY id", &[])
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The copied `user.add`, then the new `token.create` (a reused id would have failed it).
    assert_eq!(ids, [1, 2]);
}
