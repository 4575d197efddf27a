//! The reconcile pass: removes responses deleted upstream, with their `question_response` and
//! `survey_embedded_data` rows. The export API has no delete feed (a continuation export only
//! brings new and changed responses), so a survey is reconciled by exporting its response ids
//! only (`surveyMetadataIds: ["_recordId"]`, `questionIds: []`, `embeddedDataIds: []` — a small
//! file) and comparing them with the ids the destination holds (`Destination::keys` on
//! `survey_response.id` where `survey_id` is the survey). The ids missing upstream are deleted
//! from the three tables in ONE commit, which also stamps `lastReconciled` into the survey's
//! `responses:{survey}` cursor (keeping its continuation token): a run killed before that commit
//! simply reconciles again.
//!
//! Id exports of due surveys run `survey_parallelism` at a time.
//!
//! When: every survey with [`SyncOptions::reconcile`](crate::SyncOptions::reconcile), else a
//! survey whose `lastReconciled` is at least `reconcile_every` old (default 7 days). It runs
//! after the survey's export is committed, so ids written in this run are compared with an id
//! list taken later (a response that still exists is always in it).

use super::responses::{cursor_stream, cursor_value};
use crate::engine::{Batches, Ctx, SyncError};
use futures_util::{StreamExt, stream};
use serde_json::{Value as Json, json};
use std::collections::HashSet;
use xmbridge_destinations::{Commit, Value};
use xmbridge_qualtrics::{Client, ExportOptions, SurveySummary};

/// The ids of every response the export API returns for a survey (the same default filters as
/// the data export: recorded responses, not in-progress ones).
async fn upstream_ids(client: &Client, survey: &str) -> Result<HashSet<String>, SyncError> {
    let api = |e| SyncError::api("survey_response", Some(survey), e);
    let mut extra = serde_json::Map::new();
    extra.insert("surveyMetadataIds".into(), json!(["_recordId"]));
    extra.insert("questionIds".into(), json!([]));
    extra.insert("embeddedDataIds".into(), json!([]));
    let opts = ExportOptions {
        extra,
        ..Default::default()
    };
    let file = client.export_responses(survey, &opts).await.map_err(api)?;
    // Reading the file is blocking I/O: off the async threads, like the data export.
    let read = tokio::task::spawn_blocking(move || {
        let mut ids = HashSet::new();
        file.for_each_response(|r| {
            if let Some(id) = r.get("responseId").and_then(Json::as_str) {
                ids.insert(id.to_string());
            }
        })
        .map(|_| ids)
    })
    .await;
    match read {
        Ok(r) => r.map_err(api),
        Err(source) => Err(SyncError::Worker {
            table: "survey_response".into(),
            survey: Some(survey.to_string()),
            worker: "the id export reader",
            source,
        }),
    }
}

/// Reconciles the surveys that are due (see the module doc).
pub(crate) async fn run(ctx: &mut Ctx<'_>, surveys: &[SurveySummary]) -> Result<(), SyncError> {
    let now = ctx.synced_at_ms;
    let every = i64::try_from(ctx.opts.reconcile_every.as_millis()).unwrap_or(i64::MAX);
    let mut due = Vec::new();
    for s in surveys {
        let Some(cursor) = ctx.cursor(&cursor_stream(&s.id), "survey_response").await? else {
            continue; // never exported: nothing to reconcile
        };
        let last = cursor.get("lastReconciled").and_then(Json::as_i64);
        if ctx.opts.reconcile || last.is_none_or(|t| now.saturating_sub(t) >= every) {
            due.push((s.id.clone(), cursor));
        }
    }
    if due.is_empty() {
        return Ok(());
    }
    ctx.progress
        .stream_started("reconcile", Some(due.len() as u64));
    // Id exports run `survey_parallelism` at a time (each is an export job Qualtrics prepares);
    // comparisons and commits stay on this task, the only writer of the destination.
    let client = ctx.client.clone();
    let mut exports = stream::iter(due)
        .map(|(sid, cursor)| {
            let client = client.clone();
            async move {
                let ids = upstream_ids(&client, &sid).await;
                (sid, cursor, ids)
            }
        })
        .buffer_unordered(ctx.opts.survey_parallelism.max(1));
    while let Some((sid, cursor, ids)) = exports.next().await {
        let upstream = ids?;
        let held = ctx
            .keys(
                "survey_response",
                "id",
                &[("survey_id".into(), Value::Text(sid.as_str().into()))],
                Some(&sid),
            )
            .await?;
        let gone: Vec<Value> = held
            .into_iter()
            .filter(|id| !upstream.contains(id))
            .map(|id| Value::Text(id.into()))
            .collect();
        tracing::info!(survey = %sid, removed = gone.len(), "responses reconciled");
        let mut b = Batches::default();
        b.delete_where("question_response", "response_id", gone.clone());
        b.delete_where("survey_embedded_data", "response_id", gone.clone());
        b.delete_where("survey_response", "id", gone);
        let token = cursor.get("continuationToken").and_then(Json::as_str);
        let complete = cursor
            .get("complete")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        let commit = Commit {
            batches: b.into_vec(),
            cursors: vec![(
                cursor_stream(&sid),
                cursor_value(token, complete, Some(now)),
            )],
            ..Default::default()
        };
        ctx.commit(commit, "survey_response", Some(&sid)).await?;
        ctx.summary.surveys_reconciled += 1;
        ctx.progress.advanced("reconcile", 1);
    }
    ctx.progress.stream_finished("reconcile");
    Ok(())
}
