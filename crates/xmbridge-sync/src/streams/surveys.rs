//! Surveys and their definitions → `survey`, `question`, `question_option`, `sub_question`,
//! `block`, `block_question`, `survey_version`, `survey_version_publish_event`, `quota`,
//! `quota_group`, `group_quota_membership`.
//!
//! Cursor: stream `surveys` = `{"surveys": {SV_id: {"lastModified", "isActive"}}}`, the list as
//! last synced. A definition is re-read only when its survey's stamp changed (or with `--full`);
//! each re-read survey is one commit: its rows, soft-delete marks scoped to that survey (rows of
//! a question removed from the survey become `<p>_deleted`), and the updated map. A survey that
//! leaves the list is marked deleted with its definition rows.

use super::list;
use crate::convert::at;
use crate::engine::{Batches, Ctx, Specs, SyncError};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;
use std::sync::Arc;
use xmbridge_destinations::{Commit, MarkUnseenDeleted, Text, Value};
use xmbridge_qualtrics::{Client, Error as QError, SurveySummary};

/// Per-survey soft tables (their stale rows are marked deleted when a definition is re-read).
const SOFT_PER_SURVEY: &[&str] = &[
    "survey_version",
    "block",
    "block_question",
    "question",
    "question_option",
    "sub_question",
];
/// Per-survey tables without soft deletes: replaced on re-read.
const HARD_PER_SURVEY: &[&str] = &["quota", "quota_group", "survey_version_publish_event"];

/// What the response stream needs of a definition to name answer cells.
#[derive(Debug, Default)]
pub struct SurveyDef {
    /// `QID7` (and side-by-side columns `QID9#1`) → question.
    pub questions: HashMap<String, QDef>,
    /// Embedded data fields declared in the survey flow.
    pub embedded: Vec<String>,
}

#[derive(Debug, Default)]
pub struct QDef {
    pub tag: String,
    pub qtype: String,
    /// Choice id → text (MC options; rows of a matrix; items of a form/slider/rank order).
    /// Values are cell text: an answer row copies one, which is free when it is short.
    pub choices: HashMap<String, Text>,
    /// Recode → choice id (MC).
    pub choice_by_recode: HashMap<String, Text>,
    /// Answer id → text (matrix scale points).
    pub answers: HashMap<String, Text>,
    /// Recode → answer id.
    pub answer_by_recode: HashMap<String, Text>,
}

fn displays(m: Option<&Json>) -> Vec<(String, String)> {
    let Some(Json::Object(m)) = m else {
        return Vec::new();
    };
    m.iter()
        .map(|(id, c)| {
            let text = c
                .get("Display")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            (id.clone(), text)
        })
        .collect()
}

fn recode_of(q: &Json, id: &str) -> String {
    q.get("RecodeValues")
        .and_then(|r| r.get(id))
        .and_then(crate::convert::as_text)
        .unwrap_or_else(|| id.to_string())
}

fn qdef(q: &Json) -> QDef {
    let choices = displays(q.get("Choices"));
    let answers = displays(q.get("Answers"));
    let mut d = QDef {
        tag: q
            .get("DataExportTag")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        qtype: q
            .get("QuestionType")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    // Recode values belong to the options: the scale of a matrix, the choices otherwise.
    if answers.is_empty() {
        for (id, _) in &choices {
            d.choice_by_recode.insert(recode_of(q, id), id.into());
        }
    } else {
        for (id, _) in &answers {
            d.answer_by_recode.insert(recode_of(q, id), id.into());
        }
    }
    d.choices = choices.into_iter().map(|(id, t)| (id, t.into())).collect();
    d.answers = answers.into_iter().map(|(id, t)| (id, t.into())).collect();
    d
}

/// The questions of a definition, side-by-side columns included as `QID9#1`.
fn each_question(def: &Json, mut f: impl FnMut(&str, &Json)) {
    if let Some(Json::Object(qs)) = def.get("Questions") {
        for (qid, q) in qs {
            let id = q.get("QuestionID").and_then(Json::as_str).unwrap_or(qid);
            f(id, q);
            if let Some(Json::Object(extra)) = q.get("AdditionalQuestions") {
                for (col, aq) in extra {
                    let fallback = format!("{id}#{col}");
                    let aid = aq
                        .get("QuestionID")
                        .and_then(Json::as_str)
                        .unwrap_or(&fallback);
                    f(aid, aq);
                }
            }
        }
    }
}

/// Embedded data fields of the survey flow (nested flows included).
fn embedded_fields(flow: &Json, out: &mut Vec<String>) {
    match flow {
        Json::Array(items) => items.iter().for_each(|i| embedded_fields(i, out)),
        Json::Object(o) => {
            if o.get("Type").and_then(Json::as_str) == Some("EmbeddedData")
                && let Some(Json::Array(fields)) = o.get("EmbeddedData")
            {
                for f in fields {
                    if let Some(name) = f.get("Field").and_then(Json::as_str)
                        && !out.iter().any(|x| x == name)
                    {
                        out.push(name.to_string());
                    }
                }
            }
            if let Some(inner) = o.get("Flow") {
                embedded_fields(inner, out);
            }
        }
        _ => {}
    }
}

impl SurveyDef {
    pub fn parse(def: &Json) -> SurveyDef {
        let mut d = SurveyDef::default();
        each_question(def, |id, q| {
            d.questions.insert(id.to_string(), qdef(q));
        });
        if let Some(flow) = def.get("SurveyFlow") {
            embedded_fields(flow, &mut d.embedded);
        }
        d
    }
}

/// `GET /survey-definitions/{id}`.
pub(crate) async fn definition(client: &Client, id: &str) -> Result<Json, QError> {
    client.get(client.url(&["survey-definitions", id])).await
}

/// A definition and its sub-resources.
pub(crate) struct Fetched {
    definition: Json,
    versions: Vec<Json>,
    quotas: Vec<Json>,
    quota_groups: Vec<Json>,
}

/// Lists that some accounts cannot see (no quotas licence): empty rather than failing.
async fn optional_list(client: &Client, segments: &[&str]) -> Result<Vec<Json>, QError> {
    match list(client, segments, &[]).await {
        Err(e) if matches!(e.status(), Some(403 | 404)) => Ok(Vec::new()),
        other => other,
    }
}

async fn fetch(client: &Client, id: &str) -> Result<Fetched, QError> {
    Ok(Fetched {
        definition: definition(client, id).await?,
        versions: list(client, &["survey-definitions", id, "versions"], &[]).await?,
        quotas: optional_list(client, &["survey-definitions", id, "quotas"]).await?,
        quota_groups: optional_list(client, &["survey-definitions", id, "quotagroups"]).await?,
    })
}

fn stamp(s: &SurveySummary) -> Json {
    json!({"lastModified": s.last_modified, "isActive": s.is_active})
}

fn survey_scope(sid: &str) -> Vec<(String, Value)> {
    vec![("survey_id".to_string(), Value::Text(sid.into()))]
}

fn question_rows(specs: &Specs, b: &mut Batches, sid: &str, qid: &str, q: &Json) {
    let mut r = specs.row("question");
    r.text("id", qid).text("survey_id", sid);
    for (col, path) in [
        ("data_export_tag", "DataExportTag"),
        ("data_visibility_hidden", "DataVisibility.Hidden"),
        ("data_visibility_private", "DataVisibility.Private"),
        ("next_answer_id", "NextAnswerId"),
        ("next_choice_id", "NextChoiceId"),
        ("question_description", "QuestionDescription"),
        (
            "question_description_option",
            "Configuration.QuestionDescriptionOption",
        ),
        ("question_text", "QuestionText"),
        ("question_text_unsafe", "QuestionText_Unsafe"),
        ("question_type", "QuestionType"),
        ("selector", "Selector"),
        ("sub_selector", "SubSelector"),
        (
            "validation_setting_force_response",
            "Validation.Settings.ForceResponse",
        ),
        (
            "validation_setting_force_response_type",
            "Validation.Settings.ForceResponseType",
        ),
        ("validation_setting_type", "Validation.Settings.Type"),
    ] {
        r.put(col, at(q, path));
    }
    b.push("question", r.build());

    let choices = displays(q.get("Choices"));
    let answers = displays(q.get("Answers"));
    let option = |b: &mut Batches, id: &str, text: &str| {
        let mut r = specs.row("question_option");
        r.text("key", id)
            .text("question_id", qid)
            .text("survey_id", sid)
            .text("recode_value", recode_of(q, id))
            .text("text", text);
        b.push("question_option", r.build());
    };
    let sub = |b: &mut Batches, id: &str, text: &str| {
        let mut r = specs.row("sub_question");
        r.text("key", id)
            .text("question_id", qid)
            .text("survey_id", sid)
            .text("text", text)
            .put(
                "choice_data_export_tag",
                q.get("ChoiceDataExportTags")
                    .filter(|t| t.is_object())
                    .and_then(|t| t.get(id)),
            );
        b.push("sub_question", r.build());
    };
    let is_mc = q.get("QuestionType").and_then(Json::as_str) == Some("MC");
    if !answers.is_empty() {
        // Matrix-like: choices are the statements (rows), answers the scale.
        choices.iter().for_each(|(id, t)| sub(b, id, t));
        answers.iter().for_each(|(id, t)| option(b, id, t));
    } else if is_mc {
        choices.iter().for_each(|(id, t)| option(b, id, t));
    } else {
        // Form fields, slider statements, rank items: each is answered in its own cell.
        choices.iter().for_each(|(id, t)| sub(b, id, t));
    }
}

/// All rows of one survey's definition, plus what to mark or delete.
fn definition_rows(
    specs: &Specs,
    s: &SurveySummary,
    f: &Fetched,
) -> (Batches, Vec<MarkUnseenDeleted>) {
    let sid = s.id.as_str();
    let def = &f.definition;
    let mut b = Batches::default();

    let mut r = specs.row("survey");
    r.text("id", sid);
    for (col, path) in [
        ("auto_scoring_category", "Scoring.AutoScoringCategory"),
        ("brand_base_url", "BrandBaseURL"),
        ("brand_id", "BrandID"),
        ("bundle_short_name", "ProjectInfo.BundleShortName"),
        ("composition_type", "ProjectInfo.CompositionType"),
        ("creator_id", "CreatorID"),
        ("default_scoring_category", "Scoring.DefaultScoringCategory"),
        ("division_id", "DivisionID"),
        ("last_accessed", "LastAccessed"),
        ("last_activated", "LastActivated"),
        ("last_modified", "LastModified"),
        ("owner_id", "OwnerID"),
        ("project_category", "ProjectInfo.ProjectCategory"),
        ("project_type", "ProjectInfo.ProjectType"),
        ("registry_sha", "ProjectInfo.RegistrySha"),
        ("registry_version", "ProjectInfo.RegistryVersion"),
        ("schema_version", "ProjectInfo.SchemaVersion"),
        (
            "scoring_summary_after_questions",
            "Scoring.ScoringSummaryAfterQuestions",
        ),
        (
            "scoring_summary_after_survey",
            "Scoring.ScoringSummaryAfterSurvey",
        ),
        ("scoring_summary_category", "Scoring.ScoringSummaryCategory"),
        ("survey_name", "SurveyName"),
        ("survey_status", "SurveyStatus"),
    ] {
        r.put(col, at(def, path));
    }
    let active = s.is_active.map(Json::Bool).or_else(|| {
        def.get("SurveyStatus")
            .and_then(Json::as_str)
            .map(|st| Json::Bool(st == "Active"))
    });
    r.put("is_active", active.as_ref());
    if at(def, "SurveyName").is_none() {
        r.text("survey_name", s.name.clone());
    }
    if at(def, "LastModified").is_none() {
        r.put(
            "last_modified",
            s.last_modified.as_ref().map(|t| json!(t)).as_ref(),
        );
    }
    b.push("survey", r.build());

    each_question(def, |qid, q| question_rows(specs, &mut b, sid, qid, q));

    let blocks: Vec<(String, &Json)> = match def.get("Blocks") {
        Some(Json::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| {
                (
                    v.get("ID")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    v,
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    for (key, blk) in blocks {
        let bid = blk
            .get("ID")
            .and_then(Json::as_str)
            .unwrap_or(&key)
            .to_string();
        let mut r = specs.row("block");
        r.text("id", bid.clone())
            .text("survey_id", sid)
            .put("block_locking", at(blk, "Options.BlockLocking"))
            .put("block_visibility", at(blk, "Options.BlockVisibility"))
            .put("description", blk.get("Description"))
            .put("randomize_questions", at(blk, "Options.RandomizeQuestions"))
            .put("type", blk.get("Type"));
        b.push("block", r.build());
        if let Some(Json::Array(els)) = blk.get("BlockElements") {
            for el in els {
                if el.get("Type").and_then(Json::as_str) == Some("Question")
                    && let Some(qid) = el.get("QuestionID").and_then(Json::as_str)
                {
                    let mut r = specs.row("block_question");
                    r.text("block_id", bid.clone())
                        .text("question_id", qid)
                        .text("survey_id", sid);
                    b.push("block_question", r.build());
                }
            }
        }
    }

    for v in &f.versions {
        let Some(vid) = v.get("versionID").or_else(|| v.get("id")) else {
            continue;
        };
        let mut r = specs.row("survey_version");
        r.put("id", Some(vid))
            .text("survey_id", sid)
            .put("creation_date", v.get("creationDate"))
            .put("description", v.get("description"))
            .put("published", v.get("published"))
            .put("user_id", v.get("userID").or_else(|| v.get("userId")))
            .put("version_number", v.get("versionNumber"))
            .put("was_published", v.get("wasPublished"));
        b.push("survey_version", r.build());
        if v.get("published").and_then(Json::as_bool) == Some(true) {
            // The API has no publish-event list; a published version's creation is its event.
            let mut r = specs.row("survey_version_publish_event");
            r.put("date", v.get("creationDate"))
                .text("survey_id", sid)
                .put("user_id", v.get("userID").or_else(|| v.get("userId")))
                .put("version_id", Some(vid));
            b.push("survey_version_publish_event", r.build());
        }
    }

    for q in &f.quotas {
        let mut r = specs.row("quota");
        r.put("id", q.get("ID").or_else(|| q.get("id")))
            .text("survey_id", sid)
            .put("count", q.get("Count"))
            .put("count_for_undo", q.get("CountForUndo"))
            .put("logic_type", q.get("LogicType"))
            .put("name", q.get("Name"))
            .put("occurrences", q.get("Occurrences"))
            .put("perform_action_on_user", q.get("PerformActionOnUser"))
            .put("quota_action", q.get("QuotaAction"))
            .put("quota_realm", q.get("QuotaRealm"));
        b.push("quota", r.build());
    }
    let mut group_ids = Vec::new();
    for g in &f.quota_groups {
        let gid = g.get("ID").or_else(|| g.get("id"));
        let mut r = specs.row("quota_group");
        r.put("id", gid)
            .text("survey_id", sid)
            .put("multi_match", g.get("MultipleMatch"))
            .put("name", g.get("Name"))
            .put("public", g.get("Public"))
            .put("selected", g.get("Selected"));
        b.push("quota_group", r.build());
        if let Some(gid) = gid.and_then(Json::as_str) {
            group_ids.push(Value::Text(gid.into()));
            if let Some(Json::Array(qs)) = g.get("Quotas") {
                for qo in qs {
                    let mut r = specs.row("group_quota_membership");
                    r.text("quota_group_id", gid).put("quota_id", Some(qo));
                    b.push("group_quota_membership", r.build());
                }
            }
        }
    }

    for t in HARD_PER_SURVEY {
        b.delete_where(t, "survey_id", vec![Value::Text(sid.into())]);
    }
    b.delete_where("group_quota_membership", "quota_group_id", group_ids);
    let marks = SOFT_PER_SURVEY
        .iter()
        .map(|t| MarkUnseenDeleted {
            table: t.to_string(),
            scope: survey_scope(sid),
        })
        .collect();
    (b, marks)
}

/// Lists surveys, re-reads changed definitions, marks vanished surveys deleted. Returns the
/// survey list (the response and distribution streams walk it).
pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Vec<SurveySummary>, SyncError> {
    let client = ctx.client.clone();
    let surveys: Vec<SurveySummary> = client
        .surveys()
        .try_collect()
        .await
        .map_err(|e| SyncError::api("survey", None, e))?;
    let cursor = ctx.cursor("surveys", "survey").await?;
    let mut known: Map<String, Json> = cursor
        .as_ref()
        .and_then(|c| c.get("surveys"))
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    // A definition table missing while the cursor knows surveys would stay empty (definitions
    // are only re-read when they change): read them all again.
    let full = ctx.opts.full || (!known.is_empty() && ctx.reload_missing("surveys"));
    // Owned: futures over borrowed items make the sync future !Send (rustc's higher-ranked
    // lifetime limitation), and the CLI and server spawn it.
    let changed: Vec<SurveySummary> = surveys
        .iter()
        .filter(|s| full || known.get(&s.id) != Some(&stamp(s)))
        .cloned()
        .collect();
    ctx.progress
        .stream_started("surveys", Some(changed.len() as u64));
    let par = ctx.opts.survey_parallelism.max(1);
    let mut fetches = stream::iter(changed)
        .map(|s| {
            let client = client.clone();
            async move {
                let r = fetch(&client, &s.id).await;
                (s, r)
            }
        })
        .buffer_unordered(par);
    while let Some((s, res)) = fetches.next().await {
        let fetched = res.map_err(|e| SyncError::api("survey", Some(&s.id), e))?;
        let (batches, marks) = definition_rows(&ctx.specs, &s, &fetched);
        known.insert(s.id.clone(), stamp(&s));
        let commit = Commit {
            batches: batches.into_vec(),
            mark_unseen_deleted: marks,
            cursors: vec![("surveys".into(), json!({"surveys": known}))],
            ..Default::default()
        };
        ctx.commit(commit, "survey", Some(&s.id)).await?;
        ctx.defs.insert(
            s.id.clone(),
            Arc::new(SurveyDef::parse(&fetched.definition)),
        );
        ctx.summary.definitions_read += 1;
        ctx.progress.advanced("surveys", 1);
    }
    drop(fetches);

    let listed: std::collections::HashSet<&str> = surveys.iter().map(|s| s.id.as_str()).collect();
    let vanished: Vec<String> = known
        .keys()
        .filter(|k| !listed.contains(k.as_str()))
        .cloned()
        .collect();
    if !vanished.is_empty() {
        let mut b = Batches::default();
        let mut marks = Vec::new();
        for sid in &vanished {
            known.remove(sid);
            marks.push(MarkUnseenDeleted {
                table: "survey".into(),
                scope: vec![("id".into(), Value::Text(sid.as_str().into()))],
            });
            for t in SOFT_PER_SURVEY {
                marks.push(MarkUnseenDeleted {
                    table: t.to_string(),
                    scope: survey_scope(sid),
                });
            }
            for t in HARD_PER_SURVEY {
                b.delete_where(t, "survey_id", vec![Value::Text(sid.as_str().into())]);
            }
        }
        tracing::info!(surveys = ?vanished, "surveys gone upstream: marked deleted");
        let commit = Commit {
            batches: b.into_vec(),
            mark_unseen_deleted: marks,
            cursors: vec![("surveys".into(), json!({"surveys": known}))],
            ..Default::default()
        };
        ctx.commit(commit, "survey", None).await?;
    }
    ctx.progress.stream_finished("surveys");
    Ok(surveys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_questions_recodes_and_embedded_fields() {
        let def = json!({
            "Questions": {
                "QID1": {"QuestionID": "QID1", "DataExportTag": "Q1", "QuestionType": "MC",
                         "Choices": {"1": {"Display": "Daily"}, "2": {"Display": "Weekly"}},
                         "RecodeValues": {"1": "10", "2": "20"}},
                "QID2": {"QuestionID": "QID2", "DataExportTag": "Q2", "QuestionType": "Matrix",
                         "Choices": {"1": {"Display": "Speed"}},
                         "Answers": {"1": {"Display": "Good"}, "2": {"Display": "Bad"}}},
                "QID3": {"QuestionID": "QID3", "DataExportTag": "Q3", "QuestionType": "SBS",
                         "AdditionalQuestions": {"1": {"QuestionID": "QID3#1", "DataExportTag": "Q3#1",
                            "QuestionType": "Matrix", "Choices": {"1": {"Display": "Delivery"}},
                            "Answers": {"1": {"Display": "Low"}}}}}
            },
            "SurveyFlow": {"Type": "Root", "Flow": [
                {"Type": "EmbeddedData", "EmbeddedData": [{"Field": "segment"}]},
                {"Type": "Branch", "Flow": [{"Type": "EmbeddedData", "EmbeddedData": [{"Field": "tier"}]}]}
            ]}
        });
        let d = SurveyDef::parse(&def);
        assert_eq!(d.embedded, vec!["segment", "tier"]);
        assert_eq!(d.questions["QID1"].choice_by_recode["20"], "2");
        assert_eq!(d.questions["QID2"].answer_by_recode["2"], "2");
        assert_eq!(d.questions["QID3#1"].tag, "Q3#1");
    }
}
