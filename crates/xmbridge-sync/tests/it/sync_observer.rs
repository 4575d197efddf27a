//! The response observer: told about each commit's responses before the commit, with the export
//! kind; a failing observer stops the commit, so the next run offers the same responses again.

use crate::common;

use common::{MemDest, sim};
use futures_util::future::BoxFuture;
use serde_json::json;
use std::sync::{Arc, Mutex};
use xmbridge_sim::SimConfig;
use xmbridge_sync::{
    ExportKind, NoProgress, Observer, ResponseObserver, SeenBatch, SeenResponse, SyncOptions, sync,
};

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, ExportKind, Vec<SeenResponse>)>>,
    /// Fail every call (after recording it): "enqueued, then died before the commit".
    fail: Mutex<bool>,
}

impl ResponseObserver for Recorder {
    fn responses_seen<'a>(
        &'a self,
        batch: SeenBatch<'a>,
    ) -> BoxFuture<'a, Result<(), xmbridge_sync::ObserverError>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push((
                batch.survey_id.to_string(),
                batch.kind,
                batch.responses.to_vec(),
            ));
            if *self.fail.lock().unwrap() {
                return Err("state store unavailable".into());
            }
            Ok(())
        })
    }
}

fn opts(rec: &Arc<Recorder>) -> SyncOptions {
    SyncOptions {
        tables: Some(vec!["survey_response".into()]),
        commit_every: 4,
        observer: Some(Observer(rec.clone() as Arc<dyn ResponseObserver>)),
        ..Default::default()
    }
}

#[tokio::test]
async fn new_responses_are_observed_before_their_commit_and_offered_again_after_a_failure() {
    let (h, client) = sim(SimConfig {
        surveys: 1,
        responses: 10,
        ..Default::default()
    })
    .await;
    let sv = h.sim.surveys[0].id.clone();
    let rec = Arc::new(Recorder::default());
    let mut dest = MemDest::default();
    sync(&client, &mut dest, &opts(&rec), &NoProgress)
        .await
        .unwrap();
    let first: Vec<_> = std::mem::take(&mut *rec.seen.lock().unwrap());
    let loaded = dest.state().count("survey_response");
    assert!(loaded > 4, "{loaded}");
    // Batches of at most commit_every, all marked as the first load, every response once.
    assert!(first.iter().all(|(s, k, r)| s == &sv
        && *k == ExportKind::FirstLoad
        && r.len() <= 4
        && r.iter().all(|x| !x.last_modified.is_empty())));
    assert_eq!(first.iter().map(|b| b.2.len()).sum::<usize>(), loaded);

    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/surveys/{sv}/responses", h.api_url()))
        .header("X-API-TOKEN", "test-token")
        .json(&json!({"values": {"QID1": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rid = created["result"]["responseId"]
        .as_str()
        .unwrap()
        .to_string();

    // The observer fails: the sync fails and the response is not committed.
    *rec.fail.lock().unwrap() = true;
    let err = sync(&client, &mut dest, &opts(&rec), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("state store unavailable"), "{err}");
    assert_eq!(dest.state().count("survey_response"), loaded);
    let failed: Vec<_> = std::mem::take(&mut *rec.seen.lock().unwrap());
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1, ExportKind::Incremental);
    assert_eq!(failed[0].2.len(), 1);
    assert_eq!(failed[0].2[0].response_id, rid);

    // The next run offers the same response, same version, then commits it.
    *rec.fail.lock().unwrap() = false;
    sync(&client, &mut dest, &opts(&rec), &NoProgress)
        .await
        .unwrap();
    let again: Vec<_> = std::mem::take(&mut *rec.seen.lock().unwrap());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].2, failed[0].2);
    assert_eq!(dest.state().count("survey_response"), loaded + 1);

    // Nothing new: nothing observed. A --full re-export is marked as such.
    sync(&client, &mut dest, &opts(&rec), &NoProgress)
        .await
        .unwrap();
    assert!(rec.seen.lock().unwrap().is_empty());
    let full = SyncOptions {
        full: true,
        ..opts(&rec)
    };
    sync(&client, &mut dest, &full, &NoProgress).await.unwrap();
    let reload = rec.seen.lock().unwrap();
    assert!(!reload.is_empty());
    assert!(reload.iter().all(|b| b.1 == ExportKind::FullReload));
}
