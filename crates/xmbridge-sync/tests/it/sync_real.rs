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
        None,
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
            None,
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

/// Small commits into PostgreSQL: a survey's intermediate commits go over two connections
/// (docs/destinations.md, "Two commits at once"), and the summary still counts every row once. A
/// commit that fails there is reported with its own survey, its survey's token stays where it
/// was, and the next run loads what is missing.
#[tokio::test]
async fn postgres_concurrent_commits_count_once_and_fail_with_their_survey() {
    let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_concurrent").await else {
        return;
    };
    let url = db.url().to_string();
    let raw = db.client().await;
    let res = tokio::spawn(async move {
        let (h, client) = sim(SimConfig {
            surveys: 2,
            responses: 40,
            contacts: 5,
            ..Default::default()
        })
        .await;
        let settings = DestinationSettings::from_parts(&url, None).unwrap();
        let mut dest = open(&settings, "qualtrics", Compat::Xmbridge, None).await.unwrap();
        let o = SyncOptions {
            commit_every: 3,
            tables: Some(
                ["survey_response", "question_response", "survey_embedded_data"]
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
            ),
            ..Default::default()
        };
        // The second survey's intermediate commits (the only ones writing `complete: false`
        // for it) fail in the server.
        let failing = h.sim.surveys[1].id.clone();
        raw.batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON qualtrics._xmbridge_state \
             FOR EACH ROW WHEN (NEW.stream = 'responses:{failing}' \
             AND NEW.cursor->>'complete' = 'false') EXECUTE FUNCTION refuse()"
        ))
        .await
        .unwrap();
        let err = sync(&client, dest.as_mut(), &o, &NoProgress)
            .await
            .unwrap_err();
        assert_eq!(err.survey(), Some(failing.as_str()), "{err}");
        assert!(err.to_string().contains("refused by the test"), "{err}");
        let token = raw
            .query_opt(
                "SELECT cursor->>'continuationToken' FROM qualtrics._xmbridge_state WHERE stream = $1",
                &[&format!("responses:{failing}")],
            )
            .await
            .unwrap();
        assert!(token.is_none(), "the failing survey's cursor was never written");

        let count = |schema: &'static str, table: &'static str| {
            let raw = &raw;
            async move {
                let sql = format!("SELECT count(*) FROM {schema}.{table}");
                raw.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) as u64
            }
        };
        let before = count("qualtrics", "question_response").await;
        raw.batch_execute("DROP TRIGGER refuse ON qualtrics._xmbridge_state")
            .await
            .unwrap();
        let s = sync(&client, dest.as_mut(), &o, &NoProgress).await.unwrap();
        drop(dest);
        // What a clean run loads into another schema is the reference.
        let mut fresh = open(&settings, "reference", Compat::Xmbridge, None).await.unwrap();
        sync(&client, fresh.as_mut(), &o, &NoProgress).await.unwrap();
        drop(fresh);
        for table in ["survey_response", "question_response", "survey_embedded_data"] {
            assert_eq!(
                count("qualtrics", table).await,
                count("reference", table).await,
                "{table}"
            );
        }
        // Each row the second run wrote was counted once.
        let qr = s.table("question_response");
        assert_eq!(before + qr.inserted, count("qualtrics", "question_response").await);
        assert_eq!(qr.deleted, 0, "{qr:?}");
    })
    .await;
    drop(db);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}
