//! `xmbridge state migrate` end to end: the real binary and a real state store in a temporary
//! XMBRIDGE_HOME — a fresh home, a store from before schema versions, a store from a newer
//! xmbridge, and several processes migrating at once.

use rusqlite::Connection;
use serde_json::Value;

use crate::support::{self, Install};

/// Every component and the newest version this build has.
const COMPONENTS: [(&str, i64); 6] = [
    ("vault", 1),
    ("workflows", 2),
    ("service_users", 1),
    ("service_runs", 2),
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
    inst.ok(&[
        "connection",
        "add",
        "qualtrics",
        "prod",
        "--no-test",
        "--url",
        "http://127.0.0.1:9",
        "--api-token-file",
        inst.file("t", "tok-1\n").to_str().expect("path"),
    ])
    .await;
    inst.ok(&["state", "migrate"]).await;
    // What an xmbridge from before schema versions left: the tables of every version 1, no
    // record of them (the later versions' column and indexes taken away again).
    state_db(&inst)
        .execute_batch(
            "DROP TABLE state_migrations;
             ALTER TABLE wf_events DROP COLUMN lease_token;
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
