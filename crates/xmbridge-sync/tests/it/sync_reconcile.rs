//! The reconcile pass: a response deleted upstream (`DELETE /surveys/{sid}/responses/{rid}`) is
//! removed with its answer and embedded-data rows by a reconciling sync (asked for, or due on the
//! schedule), and stays without one. Into the in-memory destination, SQLite and PostgreSQL.

use crate::common;

use common::{MemDest, sim};
use std::time::Duration;
use xmbridge_destinations::{Compat, DestinationSettings, open};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_sync::{NoProgress, SyncOptions, sync};

const T0: i64 = 1_900_000_000_000;
const DAY: i64 = 86_400_000;

fn cfg() -> SimConfig {
    SimConfig {
        surveys: 2,
        responses: 12,
        ..Default::default()
    }
}

fn opts(at: i64, reconcile: bool) -> SyncOptions {
    SyncOptions {
        tables: Some(vec!["survey_response".into()]),
        commit_every: 5,
        synced_at_ms: Some(at),
        reconcile,
        ..Default::default()
    }
}

async fn delete_response(h: &SimHandle, sid: &str, rid: &str) {
    let r = reqwest::Client::new()
        .delete(format!("{}/surveys/{sid}/responses/{rid}", h.api_url()))
        .header("X-API-TOKEN", "test-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// (survey_response, question_response, survey_embedded_data) live row counts, and those of `rid`.
fn counts(d: &MemDest, rid: &str) -> ([usize; 3], [usize; 3]) {
    let st = d.state();
    (
        [
            st.count("survey_response"),
            st.count("question_response"),
            st.count("survey_embedded_data"),
        ],
        [
            st.rows_where("survey_response", "id", rid).len(),
            st.rows_where("question_response", "response_id", rid).len(),
            st.rows_where("survey_embedded_data", "response_id", rid)
                .len(),
        ],
    )
}

fn first_response(d: &MemDest, sid: &str) -> String {
    let st = d.state();
    let r = st.rows_where("survey_response", "survey_id", sid)[0];
    st.text("survey_response", r, "id").unwrap()
}

#[tokio::test]
async fn deleted_response_is_removed_only_by_a_reconcile() {
    let (h, client) = sim(cfg()).await;
    let sid = h.sim.surveys[0].id.clone();
    let mut dest = MemDest::default();
    let s = sync(&client, &mut dest, &opts(T0, false), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.surveys_reconciled, 0, "a first load is not reconciled");
    let rid = first_response(&dest, &sid);
    let (before, mine) = counts(&dest, &rid);
    assert_eq!(mine[0], 1);
    assert!(mine[1] > 0);

    delete_response(&h, &sid, &rid).await;
    // Without reconcile (and not due) the deleted response stays.
    let s = sync(&client, &mut dest, &opts(T0 + 1000, false), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.surveys_reconciled, 0);
    assert_eq!(counts(&dest, &rid), (before, mine));

    // --reconcile: its rows go, in one commit per survey; everything else stays.
    let s = sync(&client, &mut dest, &opts(T0 + 2000, true), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.surveys_reconciled, 2);
    assert_eq!(s.table("survey_response").deleted, 1);
    assert_eq!(s.table("question_response").deleted as usize, mine[1]);
    let (after, gone) = counts(&dest, &rid);
    assert_eq!(gone, [0, 0, 0]);
    assert_eq!(
        after,
        [before[0] - 1, before[1] - mine[1], before[2] - mine[2]]
    );
    // The continuation token survived the reconcile commit: nothing is re-exported.
    let s = sync(&client, &mut dest, &opts(T0 + 3000, true), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.responses, 0);
    assert_eq!(s.table("survey_response").deleted, 0);
    let cur = dest.state().cursors[&format!("responses:{sid}")].clone();
    assert!(cur["continuationToken"].is_string(), "{cur}");
    assert_eq!(cur["lastReconciled"], T0 + 3000);

    // The schedule: a day later nothing is due; eight days later every survey is.
    let sid2 = h.sim.surveys[1].id.clone();
    let rid2 = first_response(&dest, &sid2);
    delete_response(&h, &sid2, &rid2).await;
    let s = sync(&client, &mut dest, &opts(T0 + DAY, false), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.surveys_reconciled, 0);
    assert_eq!(counts(&dest, &rid2).1[0], 1);
    let mut o = opts(T0 + 8 * DAY, false);
    o.reconcile_every = Duration::from_secs(7 * 86_400);
    let s = sync(&client, &mut dest, &o, &NoProgress).await.unwrap();
    assert_eq!(s.surveys_reconciled, 2);
    assert_eq!(counts(&dest, &rid2).1, [0, 0, 0]);
}

/// Deletes one response upstream and reconciles into a real destination: exactly its rows go.
async fn reconcile_into(url: &str, h: &SimHandle, client: &xmbridge_qualtrics::Client) {
    let sid = h.sim.surveys[0].id.clone();
    let mut dest = open(
        &DestinationSettings::from_parts(url, None).unwrap(),
        "qualtrics",
        Compat::Xmbridge,
        None,
    )
    .await
    .unwrap();
    sync(client, dest.as_mut(), &opts(T0, false), &NoProgress)
        .await
        .unwrap();
    // Take a response id through the sim's own export: the first response of the survey.
    let mut mem = MemDest::default();
    sync(client, &mut mem, &opts(T0, false), &NoProgress)
        .await
        .unwrap();
    let rid = first_response(&mem, &sid);
    let (before, mine) = counts(&mem, &rid);
    delete_response(h, &sid, &rid).await;
    let s = sync(client, dest.as_mut(), &opts(T0 + 1000, true), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.surveys_reconciled, 2);
    assert_eq!(s.table("survey_response").deleted, 1);
    assert_eq!(s.table("question_response").deleted as usize, mine[1]);
    assert_eq!(s.table("survey_embedded_data").deleted as usize, mine[2]);
    assert!(before[0] > 10);
}

#[tokio::test]
async fn sqlite_reconcile() {
    let (h, client) = sim(cfg()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    reconcile_into(&format!("sqlite:{}", path.display()), &h, &client).await;
    let db = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM qualtrics_survey_response", [], |r| {
            r.get(0)
        })
        .unwrap();
    let live: usize = h
        .sim
        .surveys
        .iter()
        .map(|s| xmbridge_sim::qualtrics::responses::counts(&h.sim, s).0 as usize)
        .sum();
    assert!(n > 0 && n as usize <= live, "{n} of {live}");
}

#[tokio::test]
async fn postgres_reconcile() {
    let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_reconcile").await else {
        return;
    };
    let url = db.url().to_string();
    // The body runs in its own task so the database is dropped even when it fails.
    let res = tokio::spawn(async move {
        let (h, client) = sim(cfg()).await;
        reconcile_into(&url, &h, &client).await;
    })
    .await;
    drop(db);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}
