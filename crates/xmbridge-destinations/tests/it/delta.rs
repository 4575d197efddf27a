//! The Delta Lake destination, read back by independent readers (the Python `deltalake` package
//! and DuckDB's `delta` extension, through `xmbridge_test_kit::lake`): merges, deletes, soft
//! deletes, cursors committed with the rows, a commit finished after a kill, schema evolution
//! and the errors for bad input.

use std::path::{Path, PathBuf};

use crate::common::{col, stat, upserts};
use serde_json::{Value as J, json};
use xmbridge_destinations::delta::{DeltaDestination, DeltaOptions};
use xmbridge_destinations::{
    ColumnType, Commit, CommitStats, Compat, DestErrorKind, Destination, DestinationSettings,
    MarkUnseenDeleted, TableBatch, TableSpec, Value,
};
use xmbridge_test_kit::lake;

const T0: i64 = 1_700_000_000_000;

/// `item (id, survey_id, name, n, score, seen_at, ok)`, soft delete.
fn item_spec() -> TableSpec {
    TableSpec {
        name: "item".into(),
        columns: vec![
            col("id", ColumnType::Text),
            col("survey_id", ColumnType::Text),
            col("name", ColumnType::Text),
            col("n", ColumnType::Int),
            col("score", ColumnType::Float),
            col("seen_at", ColumnType::Timestamp),
            col("ok", ColumnType::Bool),
        ],
        primary_key: vec!["id".into()],
        soft_delete: true,
        filter_columns: vec!["survey_id".into()],
        key_implies: None,
    }
}

fn item(id: &str, survey: &str, name: &str, n: i64) -> Vec<Value> {
    vec![
        Value::Text(id.into()),
        Value::Text(survey.into()),
        Value::Text(name.into()),
        Value::Int(n),
        Value::Float(n as f64 / 2.0),
        Value::Timestamp(T0 + n),
        Value::Bool(n % 2 == 0),
    ]
}

/// `answer (<p>_id, response_id, value)`, rows replaced per response.
fn answer_spec() -> TableSpec {
    TableSpec {
        name: "answer".into(),
        columns: vec![
            col("<p>_id", ColumnType::Text),
            col("response_id", ColumnType::Text),
            col("value", ColumnType::Text),
        ],
        primary_key: vec!["<p>_id".into()],
        soft_delete: false,
        filter_columns: vec!["response_id".into()],
        key_implies: None,
    }
}

fn answer(id: &str, response: &str, value: &str) -> Vec<Value> {
    vec![
        Value::Text(id.into()),
        Value::Text(response.into()),
        Value::Text(value.into()),
    ]
}

async fn open(dir: &Path) -> Box<dyn Destination> {
    let url = format!("delta:{}", dir.display());
    let settings = DestinationSettings::from_parts(&url, None).unwrap();
    xmbridge_destinations::open(&settings, "qualtrics", Compat::Xmbridge, None)
        .await
        .unwrap()
}

/// The rows of `table` as both readers see them, columns named.
fn read(python: &Path, dir: &Path, table: &str) -> Vec<serde_json::Map<String, J>> {
    let path: PathBuf = dir.join("qualtrics").join(table);
    let t = lake::read(python, &[path]).remove(table).unwrap();
    t.rows
        .into_iter()
        .map(|r| t.columns.iter().cloned().zip(r).collect())
        .collect()
}

fn ids(rows: &[serde_json::Map<String, J>], column: &str) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| r[column].as_str().unwrap_or("null").to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn delta_merges_deletes_and_soft_deletes_as_the_sql_destinations_do() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open(dir.path()).await;
    let created = d
        .ensure_tables(&[item_spec(), answer_spec()])
        .await
        .unwrap();
    assert_eq!(created.created, vec!["item", "answer"]);

    // A first load: fresh rows, grouped until the flush.
    let first = Commit {
        synced_at_ms: T0,
        batches: vec![
            TableBatch {
                fresh: true,
                ..upserts(
                    "item",
                    vec![
                        item("a", "S1", "A", 1),
                        item("b", "S1", "B", 2),
                        item("c", "S2", "C", 3),
                    ],
                )
            },
            TableBatch {
                fresh: true,
                ..upserts(
                    "answer",
                    vec![
                        answer("a1", "R1", "x"),
                        answer("a2", "R1", "y"),
                        answer("b1", "R2", "z"),
                    ],
                )
            },
        ],
        cursors: vec![("items".into(), json!({"at": 1}))],
        ..Default::default()
    };
    let s = d.commit(first).await.unwrap();
    d.flush().await.unwrap();
    assert_eq!(
        stat(&s, "item").0 + stat(&d.flush().await.unwrap(), "item").0,
        0
    );
    let rows = read(&py, dir.path(), "item");
    assert_eq!(ids(&rows, "id"), ["a", "b", "c"]);
    let a = rows.iter().find(|r| r["id"] == "a").unwrap();
    // Typed columns: an int, a double, a timestamp, a boolean, the system columns.
    assert_eq!(a["n"], json!(1));
    assert_eq!(a["score"], json!(0.5));
    assert_eq!(a["seen_at"], json!(T0 + 1));
    assert_eq!(a["ok"], json!(false));
    assert_eq!(a["_xmbridge_synced"], json!(T0));
    assert_eq!(a["_xmbridge_deleted"], json!(false));
    assert_eq!(d.cursor("items").await.unwrap(), Some(json!({"at": 1})));

    // Upserts by key: one update, one insert; the answers of R1 replaced (a2 gone, a1 kept as
    // it is), R2's deleted.
    let s = d
        .commit(Commit {
            synced_at_ms: T0 + 10,
            batches: vec![
                upserts(
                    "item",
                    vec![item("b", "S1", "B2", 20), item("d", "S1", "D", 4)],
                ),
                TableBatch {
                    table: "answer".into(),
                    upserts: vec![answer("a1", "R1", "x"), answer("a3", "R1", "w")],
                    delete_where: vec![(
                        "response_id".into(),
                        vec![Value::Text("R1".into()), Value::Text("R2".into())],
                    )],
                    fresh: false,
                },
            ],
            cursors: vec![("items".into(), json!({"at": 2}))],
            ..Default::default()
        })
        .await
        .unwrap();
    let s = flushed(&mut *d, s).await;
    assert_eq!(stat(&s, "item"), (1, 1, 0));
    assert_eq!(stat(&s, "answer"), (1, 0, 2));
    let rows = read(&py, dir.path(), "item");
    assert_eq!(ids(&rows, "id"), ["a", "b", "c", "d"]);
    let b = rows.iter().find(|r| r["id"] == "b").unwrap();
    assert_eq!(
        (b["name"].clone(), b["n"].clone()),
        (json!("B2"), json!(20))
    );
    assert_eq!(b["_xmbridge_synced"], json!(T0 + 10));
    let answers = read(&py, dir.path(), "answer");
    assert_eq!(ids(&answers, "_xmbridge_id"), ["a1", "a3"]);
    let a1 = answers.iter().find(|r| r["_xmbridge_id"] == "a1").unwrap();
    assert_eq!(
        a1["_xmbridge_synced"],
        json!(T0),
        "an unchanged row is kept as it was"
    );

    // Soft delete: rows of S1 this sync did not write are marked, S2's are left alone.
    let s = d
        .commit(Commit {
            synced_at_ms: T0 + 20,
            batches: vec![upserts("item", vec![item("b", "S1", "B2", 20)])],
            mark_unseen_deleted: vec![MarkUnseenDeleted {
                table: "item".into(),
                scope: vec![("survey_id".into(), Value::Text("S1".into()))],
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let s = flushed(&mut *d, s).await;
    assert_eq!(stat(&s, "item"), (0, 3, 0), "b updated, a and d marked");
    let rows = read(&py, dir.path(), "item");
    let deleted: Vec<String> = {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r["_xmbridge_deleted"] == json!(true))
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(deleted, ["a", "d"]);

    // Keys read back, with a filter.
    let mut keys = d
        .keys(
            "item",
            "id",
            &[("survey_id".into(), Value::Text("S1".into()))],
        )
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "b", "d"]);

    // Reopened: the cursors are what was committed with the rows.
    drop(d);
    let mut d = open(dir.path()).await;
    d.ensure_tables(&[item_spec(), answer_spec()])
        .await
        .unwrap();
    assert_eq!(d.cursor("items").await.unwrap(), Some(json!({"at": 2})));
    assert_eq!(d.cursor("other").await.unwrap(), None);
}

/// A commit of item `c` with the cursor 3: what a run would commit next in the tests whose run
/// must commit nothing more.
fn item_c_at_3() -> Commit {
    Commit {
        synced_at_ms: T0 + 2,
        batches: vec![upserts("item", vec![item("c", "S1", "C", 3)])],
        cursors: vec![("items".into(), json!(3))],
        ..Default::default()
    }
}

/// The redo file a run killed after writing it is finished by the next open: every table gets
/// the commit once (its `txn` version says whether it has it) and the cursors with it.
#[tokio::test]
async fn delta_a_commit_cut_after_its_redo_file_lands_once_at_the_next_open() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let schema_dir = dir.path().join("qualtrics");
    let mut d = DeltaDestination::open(
        &dir.path().display().to_string(),
        "qualtrics",
        Compat::Xmbridge,
        DeltaOptions::default(),
    )
    .await
    .unwrap();
    d.ensure_tables(&[item_spec(), answer_spec()])
        .await
        .unwrap();
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("a", "S1", "A", 1)])],
        cursors: vec![("items".into(), json!(1))],
        ..Default::default()
    })
    .await
    .unwrap();
    d.flush().await.unwrap();
    // The next commit, stopped after its redo file and its first table's commit when it lands
    // (merges land as a group, here at the flush): the state a kill at that moment leaves (a
    // hidden hook; nothing else sets it).
    d.stop_after_tables_for_tests(1);
    d.commit(Commit {
        synced_at_ms: T0 + 1,
        batches: vec![
            upserts("item", vec![item("b", "S1", "B", 2)]),
            upserts("answer", vec![answer("x", "R9", "v")]),
        ],
        cursors: vec![("items".into(), json!(2))],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = d.flush().await.unwrap_err();
    assert!(err.to_string().contains("stopped for a test"), "{err}");
    // Nothing more is committed by this process: the next open finishes that commit first.
    let err = d.commit(item_c_at_3()).await.unwrap_err();
    assert!(err.to_string().contains("stopped part way"), "{err}");
    drop(d);
    assert!(schema_dir.join("_xmbridge_pending.json").is_file());

    // Until the next open, the cursor table still says 1.
    let mut d = open(dir.path()).await;
    assert!(!schema_dir.join("_xmbridge_pending.json").exists());
    d.ensure_tables(&[item_spec(), answer_spec()])
        .await
        .unwrap();
    assert_eq!(d.cursor("items").await.unwrap(), Some(json!(2)));
    assert_eq!(ids(&read(&py, dir.path(), "item"), "id"), ["a", "b"]);
    assert_eq!(ids(&read(&py, dir.path(), "answer"), "_xmbridge_id"), ["x"]);
    // Each table's log holds the commit once: item has versions 0 (create), 1, 2; answer 0, 1.
    let versions = |t: &str| {
        let mut v: Vec<String> = std::fs::read_dir(schema_dir.join(t).join("_delta_log"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        v.sort();
        v.len()
    };
    assert_eq!(versions("item"), 3);
    assert_eq!(versions("answer"), 2);
}

#[tokio::test]
async fn delta_schema_evolution_adds_columns_older_rows_read_as_null() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open(dir.path()).await;
    d.ensure_tables(&[item_spec()]).await.unwrap();
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("a", "S1", "A", 1)])],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut wider = item_spec();
    wider.add_column("stats_count", ColumnType::BigInt);
    let e = d.ensure_tables(&[wider]).await.unwrap();
    assert!(e.created.is_empty());
    let mut row = item("b", "S1", "B", 2);
    row.push(Value::Int(7));
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![row])],
        ..Default::default()
    })
    .await
    .unwrap();
    d.flush().await.unwrap();
    let rows = read(&py, dir.path(), "item");
    let by = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap()["stats_count"].clone();
    assert_eq!((by("a"), by("b")), (J::Null, json!(7)));
}

#[tokio::test]
async fn delta_bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that holds something else where a table goes.
    std::fs::create_dir_all(dir.path().join("qualtrics/item")).unwrap();
    std::fs::write(dir.path().join("qualtrics/item/notes.txt"), "mine").unwrap();
    let mut d = open(dir.path()).await;
    let err = d.ensure_tables(&[item_spec()]).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("qualtrics/item") && msg.contains("holds no Delta table"),
        "{msg}"
    );

    // A column whose type another writer changed.
    let dir2 = tempfile::tempdir().unwrap();
    let mut d2 = open(dir2.path()).await;
    d2.ensure_tables(&[answer_spec()]).await.unwrap();
    let mut changed = answer_spec();
    changed.columns[2].ty = ColumnType::BigInt;
    let err = d2.ensure_tables(&[changed]).await.unwrap_err();
    assert_eq!(err.kind(), DestErrorKind::Schema);
    let msg = err.to_string();
    assert!(
        msg.contains("\"value\"") && msg.contains("string") && msg.contains("long"),
        "{msg}"
    );

    // A second writer of the same schema directory.
    let err = match DeltaDestination::open(
        &dir2.path().display().to_string(),
        "qualtrics",
        Compat::Xmbridge,
        DeltaOptions::default(),
    )
    .await
    {
        Ok(_) => panic!("a second writer opened the schema directory"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), DestErrorKind::Busy, "{err}");

    // A path that cannot be created.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let err = match DeltaDestination::open(
        &file.display().to_string(),
        "qualtrics",
        Compat::Xmbridge,
        DeltaOptions::default(),
    )
    .await
    {
        Ok(_) => panic!("opened a destination inside a file"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), DestErrorKind::Connect);
    assert!(
        err.to_string().contains("cannot create the directory"),
        "{err}"
    );

    // Unknown URL options.
    let settings = DestinationSettings::from_parts("delta:/tmp/x?size=1", None).unwrap();
    let err =
        match xmbridge_destinations::open(&settings, "qualtrics", Compat::Xmbridge, None).await {
            Ok(_) => panic!("an unknown option was accepted"),
            Err(e) => e,
        };
    assert!(err.to_string().contains("target_file_mb"), "{err}");
}

/// Another writer (here the Python `deltalake` package, as Spark would) commits to a table after
/// xmbridge read it: the merge built on the older version is refused by Delta's conflict check,
/// with a message that says so, nothing of that group is applied, and the run commits nothing
/// more.
#[tokio::test]
async fn delta_a_concurrent_writer_makes_a_merge_fail_clearly() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open(dir.path()).await;
    d.ensure_tables(&[item_spec()]).await.unwrap();
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("a", "S1", "A", 1)])],
        cursors: vec![("items".into(), json!(1))],
        ..Default::default()
    })
    .await
    .unwrap();
    d.flush().await.unwrap();
    let table = dir.path().join("qualtrics/item");
    let status = std::process::Command::new(&py)
        .arg("-c")
        .arg(
            "import sys, deltalake; t = deltalake.DeltaTable(sys.argv[1]); \
             deltalake.write_deltalake(sys.argv[1], t.to_pyarrow_table(), mode='append')",
        )
        .arg(&table)
        .status()
        .unwrap();
    assert!(status.success());
    // The update lands with its group, here at the flush.
    d.commit(Commit {
        synced_at_ms: T0 + 1,
        batches: vec![upserts("item", vec![item("a", "S1", "A2", 2)])],
        cursors: vec![("items".into(), json!(2))],
        ..Default::default()
    })
    .await
    .unwrap();
    let msg = d.flush().await.unwrap_err().to_string();
    assert!(
        msg.contains("another writer committed to this table"),
        "{msg}"
    );
    assert!(msg.contains("qualtrics/item"), "{msg}");
    assert_eq!(d.cursor("items").await.unwrap(), Some(json!(1)));
    // The run commits nothing more (a later commit would land its cursor past the refused
    // rows); the next run does that work again.
    let later = d.commit(item_c_at_3()).await.unwrap_err().to_string();
    assert!(
        later.contains("an earlier commit of this run failed"),
        "{later}"
    );
    assert!(!dir.path().join("qualtrics/_xmbridge_pending.json").exists());
    // The other writer's rows are there (two of "a" now: its doing), the refused update is not.
    let names: Vec<String> = read(&py, dir.path(), "item")
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["A", "A"]);
}

/// Another writer (the Python `deltalake` package) changed a column's type: the next
/// `ensure_tables` names the table, the column and both types, and writes nothing.
#[tokio::test]
async fn delta_a_column_retyped_by_another_writer_is_a_clear_error() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open(dir.path()).await;
    d.ensure_tables(&[item_spec()]).await.unwrap();
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("a", "S1", "A", 1)])],
        ..Default::default()
    })
    .await
    .unwrap();
    drop(d);
    let table = dir.path().join("qualtrics/item");
    // `n` (an integer) rewritten as a string column, schema and all.
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(
            "import sys, deltalake, pyarrow as pa, pyarrow.compute as pc\n\
             t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
             i = t.schema.get_field_index('n')\n\
             t = t.set_column(i, 'n', pc.cast(t.column('n'), pa.string()))\n\
             deltalake.write_deltalake(sys.argv[1], t, mode='overwrite', schema_mode='overwrite')",
        )
        .arg(&table)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = open(dir.path()).await;
    let err = d.ensure_tables(&[item_spec()]).await.unwrap_err();
    assert_eq!(err.kind(), DestErrorKind::Schema, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("qualtrics/item")
            && msg.contains("\"n\"")
            && msg.contains("string")
            && msg.contains("integer"),
        "{msg}"
    );
}

/// A leased run's token is recorded in `<p>_fence.json`; a run of the same scope with a lower
/// token than the one recorded is refused when it opens, with the way to clear a stale claim.
#[tokio::test]
async fn delta_a_run_with_an_older_fence_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let fenced = |token: i64| DeltaOptions {
        fence: Some(xmbridge_destinations::Fence {
            scope: "acme".into(),
            token,
        }),
        ..DeltaOptions::default()
    };
    let mut d = DeltaDestination::open(&path, "qualtrics", Compat::Xmbridge, fenced(1))
        .await
        .unwrap();
    d.ensure_tables(&[item_spec()]).await.unwrap();
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("a", "S1", "A", 1)])],
        ..Default::default()
    })
    .await
    .unwrap();
    drop(d);
    drop(
        DeltaDestination::open(&path, "qualtrics", Compat::Xmbridge, fenced(2))
            .await
            .unwrap(),
    );
    let err = match DeltaDestination::open(&path, "qualtrics", Compat::Xmbridge, fenced(1)).await {
        Ok(_) => panic!("a run with an older token opened"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), DestErrorKind::Fenced, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("fence token 2") && msg.contains("holds 1"),
        "{msg}"
    );
}

/// `answer`'s rows of response `r` with values `v<r>.<q>`, for answers `qs`.
fn answers_of(r: usize, qs: &[usize]) -> Vec<Vec<Value>> {
    qs.iter()
        .map(|q| answer(&format!("R{r}:{q}"), &format!("R{r}"), &format!("v{r}.{q}")))
        .collect()
}

/// A commit that rewrites whole responses: their old answers go, `upserts` come.
fn replacing(responses: &[usize], upserts: Vec<Vec<Value>>) -> Commit {
    Commit {
        synced_at_ms: T0 + 10,
        batches: vec![TableBatch {
            table: "answer".into(),
            upserts,
            delete_where: vec![(
                "response_id".into(),
                responses
                    .iter()
                    .map(|r| Value::Text(format!("R{r}").into()))
                    .collect(),
            )],
            fresh: false,
        }],
        ..Default::default()
    }
}

/// The answers as stored: (id, response, value), sorted.
async fn stored_answers(d: &mut DeltaDestination) -> Vec<(String, String, String)> {
    let text = |v: &Value| match v {
        Value::Text(s) => s.to_string(),
        other => format!("{other:?}"),
    };
    let mut v: Vec<(String, String, String)> = d
        .rows("answer")
        .await
        .unwrap()
        .iter()
        .map(|r| (text(&r[0]), text(&r[1]), text(&r[2])))
        .collect();
    v.sort();
    v
}

/// `answer` with its key implying `response_id` (as `question_response`'s `<p>_id` does): its
/// merges that rewrite whole responses go through the group index.
fn answers_by_response() -> TableSpec {
    TableSpec {
        key_implies: Some("response_id".into()),
        ..answer_spec()
    }
}

/// The destination itself (not boxed: the tests read its `merge_reads`) with the one table `spec`.
async fn open_with(dir: &Path, spec: TableSpec) -> DeltaDestination {
    let mut d = DeltaDestination::open(
        dir.to_str().unwrap(),
        "qualtrics",
        Compat::Xmbridge,
        DeltaOptions::default(),
    )
    .await
    .unwrap();
    d.ensure_tables(&[spec]).await.unwrap();
    d
}

/// Appends `rows` to `answer` as new rows and commits them: one data file.
async fn append_file(d: &mut DeltaDestination, rows: Vec<Vec<Value>>) {
    d.commit(Commit {
        synced_at_ms: T0,
        batches: vec![TableBatch {
            fresh: true,
            ..upserts("answer", rows)
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    d.flush().await.unwrap();
}

/// `s`, a commit's stats, with what landing it at once adds: merges land as a group, which a
/// flush closes.
async fn flushed(d: &mut (impl Destination + ?Sized), mut s: CommitStats) -> CommitStats {
    s.add(d.flush().await.unwrap());
    s
}

/// Commits `c` and lands it at once (merges are grouped until a flush): the stats of both.
async fn commit_now(d: &mut DeltaDestination, c: Commit) -> CommitStats {
    let mut s = d.commit(c).await.unwrap();
    s.add(d.flush().await.unwrap());
    s
}

/// On a table whose key implies its group column (as `question_response`'s `<p>_id` does its
/// `response_id`), a commit that rewrites whole groups finds them through the group index: the
/// group column of each file is read once, and after that a commit reads only the rows of the
/// groups it rewrites — while the rows come out as a merge that reads everything leaves them.
#[tokio::test]
async fn delta_merges_by_group_read_only_the_rows_of_the_groups_they_rewrite() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open_with(dir.path(), answers_by_response()).await;
    // Two files of 500 responses with 4 answers each; in the first, R5 has a fifth answer
    // at the end, apart from its other four (a group in two runs of rows).
    let mut expected: std::collections::BTreeMap<String, (String, String)> = Default::default();
    let keep = |rows: &[Vec<Value>], expected: &mut std::collections::BTreeMap<_, _>| {
        for r in rows {
            let t = |i: usize| match &r[i] {
                Value::Text(s) => s.to_string(),
                _ => unreachable!(),
            };
            expected.insert(t(0), (t(1), t(2)));
        }
    };
    for part in 0..2 {
        let mut rows: Vec<Vec<Value>> = (part * 500..part * 500 + 500)
            .flat_map(|r| answers_of(r, &[0, 1, 2, 3]))
            .collect();
        if part == 0 {
            rows.extend(answers_of(5, &[9]));
        }
        keep(&rows, &mut expected);
        append_file(&mut d, rows).await;
    }
    assert_eq!(d.merge_reads(), Default::default(), "appends read nothing");

    // R10 unchanged, R600 with answer 1 changed, 2 dropped and 7 new, R20 deleted, R5 without
    // its fifth answer, R2000 new.
    let mut r600 = answers_of(600, &[0, 1, 3, 7]);
    r600[1][2] = Value::Text("changed".into());
    let mut upserts_a = answers_of(10, &[0, 1, 2, 3]);
    upserts_a.extend(r600.clone());
    upserts_a.extend(answers_of(5, &[0, 1, 2, 3]));
    upserts_a.extend(answers_of(2000, &[0, 1, 2, 3]));
    let s = commit_now(
        &mut d,
        replacing(&[10, 600, 20, 5, 2000], upserts_a.clone()),
    )
    .await;
    assert_eq!(
        stat(&s, "answer"),
        (5, 1, 6),
        "inserted R600:7 and R2000's 4; updated R600:1; deleted R600:2, R20's 4 and R5:9"
    );
    for k in ["R600:2", "R20:0", "R20:1", "R20:2", "R20:3", "R5:9"] {
        expected.remove(k);
    }
    keep(&upserts_a, &mut expected);
    let reads = d.merge_reads();
    assert_eq!(reads.probed_rows, 0, "no key column read: {reads:?}");
    assert_eq!(
        reads.indexed_rows, 4001,
        "each file's group column once: {reads:?}"
    );
    // The groups' rows (R10, R20, R5 in the first file: 13; R600 in the second: 4), then both
    // files whole to rewrite them.
    assert_eq!(reads.whole_rows, 13 + 4 + 2001 + 2000, "{reads:?}");

    // The rewritten files are new: their group column is read once more, then not again.
    let before = d.merge_reads();
    let s = commit_now(&mut d, replacing(&[30], answers_of(30, &[0, 1, 2, 3]))).await;
    assert_eq!(stat(&s, "answer"), (0, 0, 0), "R30 unchanged");
    let after_b = d.merge_reads();
    assert_eq!(
        after_b.indexed_rows - before.indexed_rows,
        expected.len() as u64,
        "{after_b:?}"
    );
    let s = commit_now(&mut d, replacing(&[40, 700], answers_of(40, &[0, 1, 2, 3]))).await;
    assert_eq!(stat(&s, "answer"), (0, 0, 4), "R700 deleted");
    for q in 0..4 {
        expected.remove(&format!("R700:{q}"));
    }
    let after_c = d.merge_reads();
    assert_eq!(after_c.indexed_rows, after_b.indexed_rows, "{after_c:?}");
    assert_eq!(after_c.probed_rows, 0, "{after_c:?}");
    // R40's and R700's rows to see what changes, then the file R700 was in, whole: every row
    // but the 6 that the first commit wrote to a file of their own (R600:1, R600:7, R2000's 4).
    assert_eq!(
        after_c.whole_rows - after_b.whole_rows,
        8 + expected.len() as u64 + 4 - 6,
        "{after_c:?}"
    );

    // An upsert outside the deleted groups: the key column must be read (every file probed).
    let s = commit_now(&mut d, replacing(&[50], answers_of(51, &[0]))).await;
    assert_eq!(
        stat(&s, "answer"),
        (0, 0, 4),
        "R50 deleted, R51:0 unchanged"
    );
    for q in 0..4 {
        expected.remove(&format!("R50:{q}"));
    }
    assert!(d.merge_reads().probed_rows > 0, "{:?}", d.merge_reads());

    let expected: Vec<(String, String, String)> = expected
        .into_iter()
        .map(|(id, (r, v))| (id, r, v))
        .collect();
    assert_eq!(stored_answers(&mut d).await, expected);
    let mut ids_expected: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
    ids_expected.sort();
    let rows = read(&py, dir.path(), "answer");
    assert_eq!(
        ids(&rows, "_xmbridge_id"),
        ids_expected,
        "both readers agree"
    );
}

/// The commits of a merge group take rows out of a file without rewriting it; the file is
/// rewritten once, when the group lands, however many of them touched it (an incremental sync's
/// edits hit every file of `survey_response`, once per commit before). Nothing of the group is
/// in the table until it lands, cursors included; then the rows are as if each commit had
/// landed on its own: a row edited twice holds the second edit, a row edited and then deleted
/// is gone.
#[tokio::test]
async fn delta_a_merge_group_rewrites_each_file_once() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open_with(dir.path(), answers_by_response()).await;
    let rows: Vec<Vec<Value>> = (0..250)
        .flat_map(|r| answers_of(r, &[0, 1, 2, 3]))
        .collect();
    append_file(&mut d, rows).await;
    d.hold_groups_for_tests();
    let before = d.merge_reads();

    let mut edit1 = answers_of(10, &[0, 1, 2, 3]);
    edit1[1][2] = Value::Text("e1".into());
    let mut edit2 = answers_of(10, &[0, 1, 3]);
    edit2[1][2] = Value::Text("e2".into());
    let commits = [
        replacing(&[10], edit1),
        replacing(&[10], edit2),
        replacing(&[20], Vec::new()),
        replacing(&[30], answers_of(30, &[0, 1, 2, 3])),
    ];
    for (i, mut c) in commits.into_iter().enumerate() {
        c.cursors = vec![("answers".into(), json!({"at": i}))];
        let s = d.commit(c).await.unwrap();
        assert_eq!(s, CommitStats::default(), "commit {i}: nothing landed yet");
    }
    assert_eq!(
        read(&py, dir.path(), "answer").len(),
        1000,
        "the group is not in the table before it lands"
    );
    let landed = d.flush().await.unwrap();
    assert_eq!(
        stat(&landed, "answer"),
        (0, 2, 5),
        "R10:1 updated twice; R10:2 and R20's 4 deleted"
    );
    let reads = d.merge_reads();
    let whole = reads.whole_rows - before.whole_rows;
    // The file whole once (1,000 rows) and the few rows each commit found (about 20); before,
    // each of the three commits that took rows out of it rewrote it (over 3,000).
    assert!(
        (1000..1100).contains(&whole),
        "rows read whole: {whole} ({reads:?})"
    );

    let mut expected: Vec<(String, String, String)> = (0..250)
        .filter(|&r| r != 20)
        .flat_map(|r| {
            [0, 1, 2, 3]
                .into_iter()
                .filter(move |&q| !(r == 10 && q == 2))
                .map(move |q| {
                    let v = if (r, q) == (10, 1) {
                        "e2".to_string()
                    } else {
                        format!("v{r}.{q}")
                    };
                    (format!("R{r}:{q}"), format!("R{r}"), v)
                })
        })
        .collect();
    expected.sort();
    assert_eq!(stored_answers(&mut d).await, expected);
    let rows = read(&py, dir.path(), "answer");
    let mut seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let t = |c: &str| r[c].as_str().unwrap_or("null").to_string();
            (t("_xmbridge_id"), t("response_id"), t("value"))
        })
        .collect();
    seen.sort();
    assert_eq!(seen, expected, "the Python reader agrees");
    drop(d);
    let mut d = open(dir.path()).await;
    assert_eq!(
        d.cursor("answers").await.unwrap(),
        Some(json!({"at": 3})),
        "the group's last cursor landed with it"
    );
}

/// A merge that fails part way through a group drops the whole group (its earlier commits
/// included: they were not landed), and the run commits nothing more — a later commit landing
/// its cursor would skip the dropped rows. The next run finds the table as the last landed
/// commit left it.
#[tokio::test]
async fn delta_a_failed_merge_drops_its_group_and_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = open_with(dir.path(), answer_spec()).await;
    let rows: Vec<Vec<Value>> = (0..50).flat_map(|r| answers_of(r, &[0, 1])).collect();
    append_file(&mut d, rows).await;
    d.hold_groups_for_tests();
    let mut edit = answers_of(10, &[0, 1]);
    edit[0][2] = Value::Text("edited".into());
    let mut first = replacing(&[10], edit);
    first.cursors = vec![("answers".into(), json!({"at": 1}))];
    d.commit(first).await.unwrap();
    // A delete by a value of the wrong type fails inside the merge, after the group has staged
    // the first commit.
    let mut bad = replacing(&[11], Vec::new());
    bad.batches[0].delete_where[0].1 = vec![Value::Int(11)];
    let err = d.commit(bad).await.unwrap_err();
    let mut later = replacing(&[12], Vec::new());
    later.cursors = vec![("answers".into(), json!({"at": 3}))];
    let refused = d.commit(later).await.unwrap_err().to_string();
    assert!(
        refused.contains("an earlier commit of this run failed")
            && refused.contains("run the sync again"),
        "{refused}"
    );
    assert!(
        refused.contains(&err.to_string()),
        "names the first failure: {refused}"
    );
    assert_eq!(d.flush().await.unwrap(), CommitStats::default());
    d.close().await.unwrap();
    drop(d);
    let mut d = open_with(dir.path(), answer_spec()).await;
    assert_eq!(
        Destination::cursor(&mut d, "answers").await.unwrap(),
        None,
        "no cursor of the run landed"
    );
    let stored = stored_answers(&mut d).await;
    assert_eq!(stored.len(), 100, "R12 not deleted");
    assert!(
        stored.contains(&("R10:0".into(), "R10".into(), "v10.0".into())),
        "the first commit of the dropped group did not land"
    );
}

/// Upserts by key into a table without a group index (as `survey_response`'s edits): each file's
/// key column is read to find the rows they replace, and of a file that holds some, only those
/// rows are read whole to see whether it changes — then the file whole, once, to rewrite it.
/// A file whose found rows of rewritten responses are all unchanged is not rewritten.
#[tokio::test]
async fn delta_upserts_by_key_read_whole_only_the_rows_they_find_and_the_file_they_rewrite() {
    let Some(py) = lake::readers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = open_with(dir.path(), answer_spec()).await;
    // Two files of 1,000 answers each.
    for part in 0..2 {
        let rows: Vec<Vec<Value>> = (part * 250..part * 250 + 250)
            .flat_map(|r| answers_of(r, &[0, 1, 2, 3]))
            .collect();
        append_file(&mut d, rows).await;
    }
    // Three rows of the first file: one changed, two as stored; and one new row.
    let mut changed = answers_of(10, &[1]);
    changed[0][2] = Value::Text("edited".into());
    let mut rows = changed.clone();
    rows.extend(answers_of(20, &[0, 3]));
    rows.push(answer("R9000:0", "R9000", "new"));
    let s = commit_now(
        &mut d,
        Commit {
            synced_at_ms: T0 + 10,
            batches: vec![upserts("answer", rows)],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        stat(&s, "answer"),
        (1, 3, 0),
        "R9000:0 new; R10:1, R20:0 and R20:3 replaced (an upsert by key counts as an update)"
    );
    let reads = d.merge_reads();
    assert_eq!(reads.probed_rows, 2000, "both files' key column: {reads:?}");
    assert_eq!(
        reads.whole_rows,
        3 + 1000,
        "the 3 rows found, then the first file whole to rewrite it: {reads:?}"
    );

    // A response rewritten whole with the answers it has: its 4 rows are found (by key and by
    // `response_id`), read whole, all unchanged, and nothing is rewritten.
    let s = commit_now(&mut d, replacing(&[300], answers_of(300, &[0, 1, 2, 3]))).await;
    assert_eq!(stat(&s, "answer"), (0, 0, 0), "R300 unchanged");
    let after = d.merge_reads();
    assert_eq!(after.whole_rows - reads.whole_rows, 4, "{after:?}");

    let rows = read(&py, dir.path(), "answer");
    assert_eq!(rows.len(), 2001, "2,000 answers and R9000:0");
    let edited: Vec<&J> = rows
        .iter()
        .filter(|r| r["_xmbridge_id"] == json!("R10:1"))
        .map(|r| &r["value"])
        .collect();
    assert_eq!(edited, vec![&json!("edited")]);
}

/// The footers of every Parquet file in `answer`'s directory under `dir`, removed ones too
/// (nothing vacuums them in these tests).
fn answer_file_footers(
    dir: &Path,
) -> Vec<xmbridge_destinations::delta::parquet::file::metadata::ParquetMetaData> {
    use xmbridge_destinations::delta::parquet::file::reader::{FileReader, SerializedFileReader};
    std::fs::read_dir(dir.join("qualtrics").join("answer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            let reader = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
            reader.metadata().clone()
        })
        .collect()
}

/// Data files keep dictionaries small: a column whose values never repeat falls back to plain
/// encoding after its first 64 KiB of values (at the Parquet crate's default of 1 MiB, these
/// 20,000 keys of 36 bytes would all have gone into one dictionary), while a column of three
/// values stays dictionary-encoded.
#[tokio::test]
async fn delta_files_fall_back_from_dictionaries_early() {
    use xmbridge_destinations::delta::parquet::basic::Encoding;

    let dir = tempfile::tempdir().unwrap();
    let mut d = open_with(dir.path(), answer_spec()).await;
    let rows = (0..20_000)
        .map(|i| {
            let value = ["yes", "no", "maybe"][i % 3];
            answer(&format!("{i:036}"), &format!("R_{}", i / 30), value)
        })
        .collect();
    append_file(&mut d, rows).await;
    d.close().await.unwrap();

    let footers = answer_file_footers(dir.path());
    assert_eq!(footers.len(), 1);
    let meta = &footers[0];
    assert_eq!(meta.num_row_groups(), 1);
    // The encodings of one column's data pages, by its name.
    let data_pages = |name: &str| -> Vec<Encoding> {
        let rg = meta.row_group(0);
        let column = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", rg.columns()));
        column
            .page_encoding_stats_mask()
            .expect("the writer records its pages' encodings")
            .encodings()
            .collect()
    };
    let key = data_pages("_xmbridge_id");
    assert!(
        key.contains(&Encoding::RLE_DICTIONARY) && key.contains(&Encoding::PLAIN),
        "the key's pages should start with a dictionary and fall back to plain: {key:?}"
    );
    let value = data_pages("value");
    assert!(
        !value.is_empty() && value.iter().all(|e| *e == Encoding::RLE_DICTIONARY),
        "three values should keep their dictionary: {value:?}"
    );
}

/// A first load writes row groups of 65,536 rows, the files a merge rewrites hold 16,384 (a
/// rewrite runs while the sync holds its next commits' rows, and the Parquet writer keeps about
/// three row groups' bytes at once).
#[tokio::test]
async fn delta_merges_write_smaller_row_groups_than_first_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = open_with(dir.path(), answer_spec()).await;
    let rows: Vec<Vec<Value>> = (0..7_000)
        .flat_map(|r| answers_of(r, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
        .collect();
    append_file(&mut d, rows).await;
    // One answer edited: its file is rewritten without the old row, the new row written apart.
    let mut edited = answers_of(10, &[1]);
    edited[0][2] = Value::Text("edited".into());
    let s = commit_now(
        &mut d,
        Commit {
            synced_at_ms: T0 + 10,
            batches: vec![upserts("answer", edited)],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stat(&s, "answer"), (0, 1, 0));

    let mut groups: Vec<Vec<i64>> = answer_file_footers(dir.path())
        .iter()
        .map(|meta| meta.row_groups().iter().map(|g| g.num_rows()).collect())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            vec![1],
            vec![16_384, 16_384, 16_384, 16_384, 4_463],
            vec![65_536, 4_464],
        ],
        "the edited row's file; the first load's file rewritten without it; the first load's file"
    );
    assert_eq!(stored_answers(&mut d).await.len(), 70_000);
}
