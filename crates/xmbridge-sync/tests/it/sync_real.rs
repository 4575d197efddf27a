//! The engine into the real destinations: SQLite (a temporary file) and PostgreSQL (the server
//! of `XMBRIDGE_TEST_PG`, a database created and dropped by the test; required when set, skipped
//! when unset).

use crate::common;

use common::sim;
use xmbridge_destinations::{Compat, DestinationSettings, open};
use xmbridge_sim::SimConfig;
use xmbridge_sync::{NoProgress, SyncOptions, sync};

fn cfg() -> SimConfig {
    SimConfig {
        surveys: 2,
        responses: 15,
        contacts: 20,
        ..Default::default()
    }
}

#[tokio::test]
async fn sqlite_full_then_incremental() {
    let (h, client) = sim(cfg()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let url = format!("sqlite:{}", path.display());
    let mut dest = open(
        &DestinationSettings::from_parts(&url, None).unwrap(),
        "qualtrics",
        Compat::Fivetran,
    )
    .await
    .unwrap();
    let o = SyncOptions {
        commit_every: 6,
        ..Default::default()
    };
    let s1 = sync(&client, dest.as_mut(), &o, &NoProgress).await.unwrap();
    assert!(s1.skipped.is_empty(), "{:?}", s1.skipped);
    let s2 = sync(&client, dest.as_mut(), &o, &NoProgress).await.unwrap();
    assert_eq!(s2.responses, 0);
    assert_eq!(s2.table("question_response"), Default::default());
    drop(dest);

    let db = rusqlite::Connection::open(&path).unwrap();
    let n = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        n("SELECT count(*) FROM qualtrics_survey_response") as u64,
        s1.table("survey_response").inserted
    );
    assert_eq!(
        n("SELECT count(*) FROM qualtrics_question_response") as u64,
        s1.table("question_response").inserted
    );
    assert_eq!(
        n("SELECT count(DISTINCT _fivetran_id) FROM qualtrics_question_response") as u64,
        s1.table("question_response").inserted
    );
    assert_eq!(
        n(
            "SELECT count(*) FROM qualtrics_survey WHERE survey_name LIKE '%DROP TABLE%' OR survey_name LIKE '%café%'"
        ),
        h.sim
            .surveys
            .iter()
            .filter(|s| s.name.contains("DROP TABLE") || s.name.contains("café"))
            .count() as i64
    );
    assert!(n("SELECT count(*) FROM qualtrics_question_response WHERE loop_id = '3'") > 0);
    assert!(n("SELECT count(*) FROM qualtrics_distribution WHERE stats_sent IS NOT NULL") > 0);
}

#[tokio::test]
async fn postgres_full_then_incremental() {
    let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_sync").await else {
        return;
    };
    let url = db.url().to_string();
    // The body runs in its own task so the database is dropped even when it fails.
    let res = tokio::spawn(async move {
        let (_h, client) = sim(cfg()).await;
        let mut dest = open(
            &DestinationSettings::from_parts(&url, None).unwrap(),
            "qualtrics",
            Compat::Xmbridge,
        )
        .await
        .unwrap();
        let s1 = sync(&client, dest.as_mut(), &SyncOptions::default(), &NoProgress)
            .await
            .unwrap();
        assert!(s1.responses > 20);
        assert!(s1.table("question_response").inserted > 100);
        let s2 = sync(&client, dest.as_mut(), &SyncOptions::default(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(s2.responses, 0);
    })
    .await;
    drop(db);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}
