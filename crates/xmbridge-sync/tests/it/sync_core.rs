//! The sync engine against the in-process simulator, into an in-memory destination: surveys,
//! definitions and responses (the core), incremental runs, edits, stable answer ids.

use crate::common;

use common::{MemDest, sim};
use serde_json::json;
use std::collections::BTreeSet;
use xmbridge_sim::SimConfig;
use xmbridge_sim::qualtrics::responses::seeded_response;
use xmbridge_sync::{NoProgress, SyncOptions, sync};

fn cfg(surveys: usize, responses: u64) -> SimConfig {
    SimConfig {
        surveys,
        responses,
        ..Default::default()
    }
}

fn opts() -> SyncOptions {
    SyncOptions {
        tables: Some(vec!["survey".into(), "question_response".into()]),
        commit_every: 7,
        ..Default::default()
    }
}

/// What the simulator holds: (finished responses, answer cells, embedded-data values).
fn expected(h: &xmbridge_sim::SimHandle) -> (usize, usize, usize) {
    let (mut n, mut cells, mut embedded) = (0, 0, 0);
    for s in &h.sim.surveys {
        let fields: Vec<&str> = s.embedded.iter().map(|f| f.name.as_str()).collect();
        for i in 0..s.responses {
            let r = seeded_response(&h.sim, s, i);
            if !r.finished {
                continue;
            }
            n += 1;
            for (k, v) in &r.values {
                if fields.contains(&k.as_str()) {
                    embedded += 1;
                } else if k.contains("QID") && !k.ends_with("_DO") {
                    cells += v.as_array().map_or(1, Vec::len);
                }
            }
        }
    }
    (n, cells, embedded)
}

#[tokio::test]
async fn full_sync_matches_the_simulator_then_nothing_changes() {
    let (h, client) = sim(cfg(3, 25)).await;
    let mut dest = MemDest::default();
    let s1 = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    let st = dest.state();
    let (responses, cells, embedded) = expected(&h);
    assert!(responses > 50, "{responses}");
    assert_eq!(st.count("survey"), 3);
    assert_eq!(st.count("survey_response"), responses);
    assert_eq!(st.count("question_response"), cells);
    assert_eq!(st.count("survey_embedded_data"), embedded);
    assert_eq!(s1.responses as usize, responses);
    assert_eq!(s1.table("survey_response").inserted as usize, responses);
    assert_eq!(s1.table("question_response").inserted as usize, cells);
    assert_eq!(
        s1.table("question_response").deleted,
        0,
        "first load deletes nothing"
    );
    assert_eq!(s1.definitions_read, 3);
    assert_eq!(s1.surveys_exported, 3);
    assert!(s1.api_calls >= 3 * 4, "{}", s1.api_calls);
    assert!(s1.skipped.is_empty(), "{:?}", s1.skipped);

    // Definitions: every live and trashed question, SBS columns, options, rows, blocks.
    let sv = &h.sim.surveys[0];
    let qs = st.rows_where("question", "survey_id", &sv.id);
    assert_eq!(
        qs.len(),
        sv.questions.len() + 2,
        "plus two side-by-side columns"
    );
    assert_eq!(st.rows_where("block", "survey_id", &sv.id).len(), 4);
    assert_eq!(
        st.rows_where("survey_version", "survey_id", &sv.id).len(),
        3
    );
    assert_eq!(st.rows_where("quota", "survey_id", &sv.id).len(), 2);
    assert_eq!(st.count("group_quota_membership"), 3 * 2);
    let survey_row = st.rows_where("survey", "id", &sv.id)[0];
    assert_eq!(
        st.text("survey", survey_row, "survey_name").as_deref(),
        Some(sv.name.as_str())
    );
    assert_eq!(
        st.text("survey", survey_row, "brand_id").as_deref(),
        Some("simbrand")
    );
    let mc = sv.questions.iter().find(|q| q.tag == "Q1").unwrap();
    let opts_q1: Vec<_> = st
        .rows_where("question_option", "survey_id", &sv.id)
        .into_iter()
        .filter(|r| st.text("question_option", r, "question_id").as_deref() == Some("QID1"))
        .collect();
    assert_eq!(opts_q1.len(), mc.choices.len());
    let matrix = sv.questions.iter().find(|q| !q.answers.is_empty()).unwrap();
    let rows: Vec<_> = st
        .rows_where("sub_question", "survey_id", &sv.id)
        .into_iter()
        .filter(|r| {
            st.text("sub_question", r, "question_id").as_deref() == Some(matrix.qid.as_str())
        })
        .collect();
    assert_eq!(rows.len(), matrix.choices.len());
    for sv in &h.sim.surveys {
        let c = st.cursors[&format!("responses:{}", sv.id)].clone();
        assert_eq!(c["complete"], json!(true));
        assert!(c["continuationToken"].is_string(), "{c}");
    }

    // A second run with no upstream change writes no response and re-reads no definition.
    let s2 = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s2.responses, 0);
    assert_eq!(s2.definitions_read, 0);
    for t in [
        "survey_response",
        "question_response",
        "survey_embedded_data",
        "question",
    ] {
        assert_eq!(s2.table(t), Default::default(), "{t}");
    }
    let st2 = dest.state();
    assert_eq!(st2.count("question_response"), cells);
    assert_eq!(st2.count("question"), st.count("question"));
}

#[tokio::test]
async fn created_and_updated_responses_are_picked_up_and_answers_replaced() {
    let (h, client) = sim(cfg(1, 20)).await;
    let sv = h.sim.surveys[0].clone();
    let mut dest = MemDest::default();
    sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    let before = dest.state();

    // The response to update, and a stale answer row of it that must disappear.
    let updated = before.rows("survey_response")[3];
    let rid = before.text("survey_response", updated, "id").unwrap();
    let answers_before = before
        .rows_where("question_response", "response_id", &rid)
        .len();
    dest.with(|st| {
        let spec = st.specs["question_response"].clone();
        let mut cells = vec![xmbridge_destinations::Value::Null; spec.columns.len()];
        cells[0] = xmbridge_destinations::Value::Text("stale".into());
        cells[st.col("question_response", "response_id")] =
            xmbridge_destinations::Value::Text(rid.as_str().into());
        st.tables.get_mut("question_response").unwrap().insert(
            "stale".into(),
            common::MemRow {
                cells,
                synced: 0,
                deleted: false,
            },
        );
    });

    let http = reqwest::Client::new();
    let api = h.api_url();
    let created: serde_json::Value = http
        .post(format!("{api}/surveys/{}/responses", sv.id))
        .header("X-API-TOKEN", "test-token")
        .json(
            &json!({"values": {"QID1": 1, "QID4_TEXT": "new; \"quoted\" answer", "segment": "3"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_id = created["result"]["responseId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .put(format!("{api}/responses/{rid}"))
        .header("X-API-TOKEN", "test-token")
        .json(&json!({"surveyId": sv.id, "embeddedData": {"region": "MARS"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let s = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        s.responses, 2,
        "exactly the created and the updated response"
    );
    assert_eq!(s.table("survey_response").inserted, 1);
    assert_eq!(s.table("survey_response").updated, 1);
    let st = dest.state();
    assert_eq!(
        st.count("survey_response"),
        before.count("survey_response") + 1
    );
    let answers_after = st.rows_where("question_response", "response_id", &rid);
    assert_eq!(
        answers_after.len(),
        answers_before,
        "stale row gone, answers rewritten"
    );
    assert!(!st.keys("question_response").contains(&"stale".to_string()));
    assert_eq!(
        s.table("question_response").deleted as usize,
        answers_before + 1,
        "the updated response's old rows (and the stale one) were deleted first"
    );
    let region: Vec<_> = st
        .rows_where("survey_embedded_data", "response_id", &rid)
        .into_iter()
        .filter(|r| st.text("survey_embedded_data", r, "key").as_deref() == Some("region"))
        .map(|r| st.text("survey_embedded_data", r, "value"))
        .collect();
    assert_eq!(region, vec![Some("MARS".to_string())]);
    let new_text: Vec<_> = st
        .rows_where("question_response", "response_id", &new_id)
        .into_iter()
        .filter_map(|r| st.text("question_response", r, "text"))
        .collect();
    assert_eq!(new_text, vec!["new; \"quoted\" answer".to_string()]);

    // And then nothing again.
    let s = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.responses, 0);
}

#[tokio::test]
async fn answer_ids_are_stable_and_cells_carry_loop_and_side_by_side_keys() {
    let (h, client) = sim(cfg(1, 15)).await;
    let mut a = MemDest::default();
    sync(&client, &mut a, &opts(), &NoProgress).await.unwrap();
    let mut b = MemDest::default();
    let full = SyncOptions {
        full: true,
        commit_every: 1000,
        ..opts()
    };
    sync(&client, &mut b, &full, &NoProgress).await.unwrap();
    let (sa, sb) = (a.state(), b.state());
    let ka: BTreeSet<_> = sa.keys("question_response").into_iter().collect();
    let kb: BTreeSet<_> = sb.keys("question_response").into_iter().collect();
    assert_eq!(ka, kb, "same <p>_id for the same cells in another run");
    // A --full run over an existing destination rewrites rather than doubles.
    let s = sync(&client, &mut a, &full, &NoProgress).await.unwrap();
    assert_eq!(s.definitions_read, 1);
    assert_eq!(a.state().count("question_response"), ka.len());
    assert_eq!(s.table("question_response").inserted as usize, ka.len());

    let sv = &h.sim.surveys[0];
    let loop_q = sv.questions.iter().find(|q| q.in_loop).unwrap();
    let rows = sa.rows_where("question_response", "question_id", &loop_q.qid);
    let loops: BTreeSet<_> = rows
        .iter()
        .filter_map(|r| sa.text("question_response", r, "loop_id"))
        .collect();
    assert_eq!(
        loops,
        ["1", "2", "3"].map(String::from).into_iter().collect()
    );
    assert!(rows.iter().all(|r| {
        sa.text("question_response", r, "question")
            .unwrap()
            .contains("_Q")
    }));

    let sbs = sv
        .questions
        .iter()
        .find(|q| !q.sbs_columns.is_empty())
        .unwrap();
    let col = format!("{}#1", sbs.qid);
    let rows = sa.rows_where("question_response", "question_id", &col);
    assert!(!rows.is_empty());
    for r in &rows {
        let key = sa.text("question_response", r, "sub_question_key").unwrap();
        let text = sa
            .text("question_response", r, "sub_question_text")
            .unwrap();
        assert!(
            sbs.choices
                .iter()
                .any(|c| c.id.to_string() == key && c.text == text)
        );
        assert!(sa.text("question_response", r, "label").is_some());
        assert!(
            sa.text("question_response", r, "question_option_key")
                .is_some()
        );
    }
    // Multi-select: one row per selected option, each with its label.
    let multi = sv
        .questions
        .iter()
        .find(|q| q.kind == xmbridge_sim::qualtrics::survey::QuestionKind::McMulti)
        .unwrap();
    let rows = sa.rows_where("question_response", "question_id", &multi.qid);
    assert!(rows.iter().any(|r| {
        sa.text("question_response", r, "question_option_key")
            .is_some()
            && sa.text("question_response", r, "label").is_some()
    }));
}

/// Table contents without the sync time: (table, key) → cells.
fn contents(d: &MemDest) -> std::collections::BTreeMap<(String, String), String> {
    let st = d.state();
    let mut out = std::collections::BTreeMap::new();
    for (t, rows) in &st.tables {
        for (k, r) in rows {
            out.insert(
                (t.clone(), k.clone()),
                format!("{:?} {}", r.cells, r.deleted),
            );
        }
    }
    out
}

#[tokio::test]
async fn a_crash_after_any_commit_then_a_rerun_equals_a_clean_sync() {
    let (_h, client) = sim(cfg(2, 20)).await;
    let o = SyncOptions {
        survey_parallelism: 2,
        ..opts()
    };
    let mut clean = MemDest::default();
    sync(&client, &mut clean, &o, &NoProgress).await.unwrap();
    let total_commits = clean.state().commits;
    assert!(
        total_commits > 6,
        "{total_commits}: several commits per survey"
    );
    let want = contents(&clean);
    for crash_at in 0..total_commits {
        let mut d = MemDest::default();
        d.with(|st| st.fail_after = Some(crash_at));
        let e = sync(&client, &mut d, &o, &NoProgress).await.unwrap_err();
        assert!(e.table().is_some(), "{e}");
        d.with(|st| st.fail_after = None);
        sync(&client, &mut d, &o, &NoProgress).await.unwrap();
        assert_eq!(contents(&d), want, "crash after commit {crash_at}");
        let again = sync(&client, &mut d, &o, &NoProgress).await.unwrap();
        assert_eq!(
            again.responses, 0,
            "crash after commit {crash_at}: cursors complete"
        );
    }
}

#[tokio::test]
async fn an_expired_continuation_token_falls_back_to_a_full_export() {
    let (h, client) = sim(cfg(1, 12)).await;
    let mut dest = MemDest::default();
    let first = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    h.sim.clock.advance(8 * 86_400_000);
    let s = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        s.responses, first.responses,
        "every response exported again"
    );
    assert_eq!(
        s.table("survey_response").inserted,
        0,
        "…and upserted, not doubled"
    );
    assert_eq!(
        dest.state().count("survey_response") as u64,
        first.responses
    );
    let s = sync(&client, &mut dest, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.responses, 0, "a fresh token was stored");
}

/// A destination that groups appends itself asks for smaller commits: a survey's first load
/// comes in commits of about that many rows (fewer rows held in memory), while a loaded survey's
/// commits (here a `--full` reload) keep the sync's own `commit_rows`.
#[tokio::test]
async fn first_load_commits_follow_the_destinations_append_commit_rows() {
    let (_h, client) = sim(cfg(1, 80)).await;
    let dest = MemDest::default();
    dest.with(|st| st.append_commit_rows = Some(40));
    let opts = SyncOptions {
        tables: Some(vec!["survey".into(), "question_response".into()]),
        commit_every: 1000,
        commit_rows: 400,
        ..Default::default()
    };
    let mut d = dest.clone();
    sync(&client, &mut d, &opts, &NoProgress).await.unwrap();
    let first: Vec<usize> = dest.with(|st| {
        let sizes = st
            .commit_sizes
            .iter()
            .filter(|c| c.0)
            .map(|c| c.1)
            .collect();
        st.commit_sizes.clear();
        sizes
    });
    let full = SyncOptions { full: true, ..opts };
    sync(&client, &mut d, &full, &NoProgress).await.unwrap();
    let reload: Vec<usize> = dest.with(|st| st.commit_sizes.iter().map(|c| c.1).collect());
    let (first_max, reload_max) = (
        first.iter().copied().max().unwrap_or(0),
        reload.iter().copied().max().unwrap_or(0),
    );
    // A commit closes after the response that reaches the limit: a few rows over 40.
    assert!(
        first.len() >= 5 && first_max < 100,
        "first-load commits of about 40 rows: {first:?}"
    );
    assert!(
        reload_max > 200,
        "a loaded survey's commits keep commit_rows = 400: {reload:?}"
    );
}
