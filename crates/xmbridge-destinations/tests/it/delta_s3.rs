//! The Delta Lake destination on S3 (`delta:s3://bucket/prefix`), against a local S3 server
//! (moto, through `xmbridge_test_kit::s3`): a commit cut after its redo object lands once at
//! the next open, one writer at a time by a lease that is renewed while the writer runs, lapses
//! when it is killed and is given up at close, and a writer whose lease was taken commits
//! nothing more. What the tables hold is read by the independent readers from a copy of the
//! bucket's objects. (The merge cases run on S3 too: interface.rs.)

use std::path::Path;
use std::time::Duration;

use crate::common::{col, upserts};
use serde_json::json;
use xmbridge_destinations::delta::{DeltaDestination, DeltaOptions, S3Settings};
use xmbridge_destinations::{
    ColumnType, Commit, Compat, DestErrorKind, Destination, TableSpec, Value,
};
use xmbridge_test_kit::lake;
use xmbridge_test_kit::s3::S3Server;

const T0: i64 = 1_700_000_000_000;
const BUCKET: &str = "xmbridge-lake";
const LAKE: &str = "s3://xmbridge-lake/lake";

fn item_spec() -> TableSpec {
    TableSpec {
        name: "item".into(),
        columns: vec![col("id", ColumnType::Text), col("n", ColumnType::Int)],
        primary_key: vec!["id".into()],
        soft_delete: false,
        filter_columns: vec![],
        key_implies: None,
    }
}

fn item(id: &str, n: i64) -> Vec<Value> {
    vec![Value::Text(id.into()), Value::Int(n)]
}

fn commit(at: i64, rows: Vec<Vec<Value>>, cursor: i64) -> Commit {
    Commit {
        synced_at_ms: at,
        batches: vec![upserts("item", rows)],
        cursors: vec![("items".into(), json!(cursor))],
        ..Default::default()
    }
}

/// The server and the readers, or `None` after a skip line.
fn server() -> Option<(std::path::PathBuf, S3Server)> {
    let py = lake::readers()?;
    let s = S3Server::start(&py);
    s.create_bucket(BUCKET);
    Some((py, s))
}

async fn open(
    s: &S3Server,
    lease_secs: u64,
) -> Result<DeltaDestination, xmbridge_destinations::DestError> {
    DeltaDestination::open(
        LAKE,
        "qualtrics",
        Compat::Xmbridge,
        DeltaOptions {
            lease_secs,
            s3: S3Settings(s.settings()),
            ..DeltaOptions::default()
        },
    )
    .await
}

/// The ids in the `item` table, read by both readers from a copy of the bucket.
fn item_ids(py: &Path, s: &S3Server, copy: &Path) -> Vec<String> {
    s.mirror(BUCKET, "lake/qualtrics", copy);
    let t = lake::read(py, &[copy.join("item")]).remove("item").unwrap();
    let i = t.columns.iter().position(|c| c == "id").unwrap();
    let mut ids: Vec<String> = t
        .rows
        .iter()
        .map(|r| r[i].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn delta_on_s3_a_commit_cut_after_its_redo_object_lands_once_at_the_next_open() {
    let Some((py, s)) = server() else { return };
    let copy = tempfile::tempdir().unwrap();
    let mut d = open(&s, 3).await.unwrap();
    d.ensure_tables(&[item_spec()]).await.unwrap();
    d.commit(commit(T0, vec![item("a", 1)], 1)).await.unwrap();
    d.flush().await.unwrap();
    d.stop_after_tables_for_tests(1);
    // Merges land as a group, here at the flush.
    d.commit(commit(T0 + 1, vec![item("b", 2)], 2))
        .await
        .unwrap();
    let err = d.flush().await.unwrap_err();
    assert!(err.to_string().contains("stopped for a test"), "{err}");
    // Dropped without closing, as a killed run: the redo object and the lease stay.
    drop(d);
    let keys = s.keys(BUCKET, "lake/qualtrics");
    assert!(
        keys.contains(&"lake/qualtrics/_xmbridge_pending.json".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"lake/qualtrics/_xmbridge.lock".to_string()),
        "{keys:?}"
    );

    // The next writer is kept out until the lease lapses, and told until when.
    let err = match open(&s, 3).await {
        Ok(_) => panic!("a second writer opened while the lease was held"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), DestErrorKind::Busy, "{err}");
    assert!(err.to_string().contains("leased by"), "{err}");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut d = open(&s, 3).await.unwrap();
    d.ensure_tables(&[item_spec()]).await.unwrap();
    assert_eq!(d.cursor("items").await.unwrap(), Some(json!(2)));
    assert!(
        !s.keys(BUCKET, "lake/qualtrics")
            .contains(&"lake/qualtrics/_xmbridge_pending.json".to_string())
    );
    d.close().await.unwrap();
    assert_eq!(item_ids(&py, &s, copy.path()), ["a", "b"]);
    // The item table's log holds each commit once: 0 (create), 1 (a), 2 (b).
    let logs = s
        .keys(BUCKET, "lake/qualtrics/item/_delta_log")
        .iter()
        .filter(|k| k.ends_with(".json"))
        .count();
    assert_eq!(logs, 3);
}

#[tokio::test]
async fn delta_on_s3_one_writer_at_a_time_by_a_renewed_lease_given_up_at_close() {
    let Some((py, s)) = server() else { return };
    let copy = tempfile::tempdir().unwrap();
    let mut a = open(&s, 3).await.unwrap();
    a.ensure_tables(&[item_spec()]).await.unwrap();
    a.commit(commit(T0, vec![item("a", 1)], 1)).await.unwrap();
    // Past the lease's own length: the renewals keep the second writer out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let err = match open(&s, 3).await {
        Ok(_) => panic!("a second writer opened while the first ran"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), DestErrorKind::Busy, "{err}");
    a.commit(commit(T0 + 1, vec![item("b", 2)], 2))
        .await
        .unwrap();
    a.close().await.unwrap();
    assert!(
        !s.keys(BUCKET, "lake/qualtrics")
            .contains(&"lake/qualtrics/_xmbridge.lock".to_string()),
        "close deletes the lease"
    );
    // At once, without waiting for a lapse.
    let mut b = open(&s, 3).await.unwrap();
    b.ensure_tables(&[item_spec()]).await.unwrap();
    assert_eq!(b.cursor("items").await.unwrap(), Some(json!(2)));
    b.close().await.unwrap();
    assert_eq!(item_ids(&py, &s, copy.path()), ["a", "b"]);
}

#[tokio::test]
async fn delta_on_s3_a_writer_whose_lease_was_taken_commits_nothing_more() {
    let Some((py, s)) = server() else { return };
    let copy = tempfile::tempdir().unwrap();
    let mut a = open(&s, 3).await.unwrap();
    a.ensure_tables(&[item_spec()]).await.unwrap();
    a.commit(commit(T0, vec![item("a", 1)], 1)).await.unwrap();
    a.flush().await.unwrap();
    // Another writer takes the lease over (as after a pause longer than the lease): the
    // stalled writer's next renewal finds it is not its own any more.
    let mut lease = s.keys(BUCKET, "lake/qualtrics");
    lease.retain(|k| k.ends_with("_xmbridge.lock"));
    assert_eq!(lease.len(), 1);
    s.delete(BUCKET, &lease[0]);
    let mut b = open(&s, 3).await.unwrap();
    b.ensure_tables(&[item_spec()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = a
        .commit(commit(T0 + 1, vec![item("late", 9)], 9))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), DestErrorKind::Busy, "{err}");
    assert!(err.to_string().contains("could not renew"), "{err}");
    b.commit(commit(T0 + 2, vec![item("b", 2)], 2))
        .await
        .unwrap();
    b.close().await.unwrap();
    assert_eq!(item_ids(&py, &s, copy.path()), ["a", "b"]);
}
