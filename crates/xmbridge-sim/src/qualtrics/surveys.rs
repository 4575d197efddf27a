//! `/surveys` (list and the legacy camelCase shape), `/survey-definitions` (the PascalCase full
//! definition with `SurveyFlow`, versions, quotas, quota groups) and the Survey Quotas API.
//!
//! Renders the seeded definitions of `survey` in the shapes of docs/design/qualtrics-api.md §5
//! (surveys); owns no state of its own.

use super::SharedSim;
use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::paging;
use super::responses;
use super::survey::{Choice, Question, QuestionKind, Survey};
use crate::clock::iso;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/surveys", get(list_surveys))
        .route("/surveys/{sid}", get(get_survey))
        .route("/surveys/{sid}/quotas", get(survey_quotas))
        .route("/survey-definitions/{sid}", get(get_definition))
        .route("/survey-definitions/{sid}/versions", get(list_versions))
        .route("/survey-definitions/{sid}/versions/{vid}", get(get_version))
        .route("/survey-definitions/{sid}/quotas", get(definition_quotas))
        .route(
            "/survey-definitions/{sid}/quotagroups",
            get(definition_quota_groups),
        )
}

async fn list_surveys(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let items: Vec<_> = sim
        .current_surveys()
        .iter()
        .map(|s| {
            json!({"id": s.id, "name": s.name, "ownerId": s.owner_id,
                   "lastModified": iso(s.last_modified_ms), "creationDate": iso(s.creation_ms),
                   "isActive": s.active})
        })
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        "/API/v3/surveys",
        &q,
    )?))
}

fn choice_map(cs: &[Choice]) -> Value {
    let mut m = Map::new();
    for c in cs {
        let mut o = Map::new();
        o.insert("Display".into(), json!(c.text));
        if c.text_entry {
            o.insert("TextEntry".into(), json!("true"));
        }
        m.insert(c.id.to_string(), Value::Object(o));
    }
    Value::Object(m)
}

fn order(cs: &[Choice]) -> Value {
    json!(cs.iter().map(|c| c.id.to_string()).collect::<Vec<_>>())
}

fn recodes(cs: &[Choice]) -> Value {
    let m: Map<String, Value> = cs
        .iter()
        .map(|c| (c.id.to_string(), json!(c.recode.to_string())))
        .collect();
    Value::Object(m)
}

/// One question in the survey-definitions (PascalCase) shape.
fn definition_question(q: &Question) -> Value {
    let (qtype, selector, sub) = q.kind.type_triple();
    let mut o = Map::new();
    o.insert("QuestionID".into(), json!(q.qid));
    o.insert("DataExportTag".into(), json!(q.tag));
    o.insert("QuestionType".into(), json!(qtype));
    o.insert("Selector".into(), json!(selector));
    if let Some(s) = sub {
        o.insert("SubSelector".into(), json!(s));
    }
    o.insert("QuestionText".into(), json!(q.text));
    o.insert("QuestionText_Unsafe".into(), json!(q.text));
    o.insert("QuestionDescription".into(), json!(q.text));
    o.insert(
        "Configuration".into(),
        json!({"QuestionDescriptionOption": "UseText"}),
    );
    if !q.choices.is_empty() {
        o.insert("Choices".into(), choice_map(&q.choices));
        o.insert("ChoiceOrder".into(), order(&q.choices));
    }
    match q.kind {
        QuestionKind::McSingle | QuestionKind::McMulti | QuestionKind::Nps => {
            o.insert("RecodeValues".into(), recodes(&q.choices));
            let names: Map<String, Value> = q
                .choices
                .iter()
                .filter_map(|c| {
                    c.variable_name
                        .as_ref()
                        .map(|v| (c.id.to_string(), json!(v)))
                })
                .collect();
            if !names.is_empty() {
                o.insert("VariableNaming".into(), Value::Object(names));
            }
        }
        QuestionKind::MatrixLikert => {
            o.insert("Answers".into(), choice_map(&q.answers));
            o.insert("AnswerOrder".into(), order(&q.answers));
            o.insert("RecodeValues".into(), recodes(&q.answers));
            o.insert("ChoiceDataExportTags".into(), json!(false));
        }
        QuestionKind::Slider => {
            o.insert("Configuration".into(), json!({"QuestionDescriptionOption": "UseText", "CSSliderMin": 0, "CSSliderMax": 100, "GridLines": 10}));
        }
        QuestionKind::SideBySide => {
            let mut add = Map::new();
            for c in &q.sbs_columns {
                add.insert(
                    c.id.to_string(),
                    json!({"QuestionID": format!("{}#{}", q.qid, c.id), "DataExportTag": format!("{}#{}", q.tag, c.id),
                           "QuestionType": "Matrix", "Selector": "Likert", "SubSelector": "SingleAnswer",
                           "QuestionText": c.text, "Choices": choice_map(&q.choices), "ChoiceOrder": order(&q.choices),
                           "Answers": choice_map(&c.answers), "AnswerOrder": order(&c.answers)}),
                );
            }
            o.insert("AdditionalQuestions".into(), Value::Object(add));
        }
        _ => {}
    }
    let on = if q.force_response { "ON" } else { "OFF" };
    o.insert(
        "Validation".into(),
        json!({"Settings": {"ForceResponse": on, "ForceResponseType": "ON", "Type": "None"}}),
    );
    o.insert("Language".into(), json!([]));
    let next_choice = q.choices.iter().map(|c| c.id).max().unwrap_or(0) + 1;
    let next_answer = q.answers.iter().map(|c| c.id).max().unwrap_or(0) + 1;
    o.insert("NextChoiceId".into(), json!(next_choice));
    o.insert("NextAnswerId".into(), json!(next_answer));
    o.insert(
        "DataVisibility".into(),
        json!({"Private": false, "Hidden": false}),
    );
    if q.kind == QuestionKind::TextSingle && q.qid != "QID1" {
        // Display logic: shown only when the first question's second choice was selected.
        o.insert(
            "DisplayLogic".into(),
            json!({"0": {"0": {"LogicType": "Question", "Operator": "Selected", "LeftOperand": "q://QID1/SelectableChoice/2", "Type": "Expression"}, "Type": "If"}, "Type": "BooleanExpression"}),
        );
    }
    Value::Object(o)
}

fn survey_status(s: &Survey) -> &'static str {
    if s.active { "Active" } else { "Inactive" }
}

/// The full survey-definitions shape (docs/design/qualtrics-api.md §5.3).
pub fn definition_json(sim: &SharedSim, s: &Survey) -> Value {
    let mut questions = Map::new();
    for q in &s.questions {
        questions.insert(q.qid.clone(), definition_question(q));
    }
    let mut blocks = Map::new();
    for b in &s.blocks {
        let mut elements = Vec::new();
        for (i, qid) in b.question_ids.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                elements.push(json!({"Type": "Page Break"}));
            }
            elements.push(json!({"Type": "Question", "QuestionID": qid}));
        }
        let mut options = json!({"BlockLocking": "false", "RandomizeQuestions": "false", "BlockVisibility": "Expanded"});
        if !b.loop_items.is_empty() {
            let mut statics = Map::new();
            for (i, item) in b.loop_items.iter().enumerate() {
                statics.insert((i + 1).to_string(), json!({"1": item}));
            }
            options["Looping"] = json!("Static");
            options["LoopingOptions"] = json!({"Static": statics, "Randomization": "None"});
        }
        blocks.insert(
            b.id.clone(),
            json!({"Type": b.kind, "SubType": "", "Description": b.description, "ID": b.id,
                   "BlockElements": elements, "Options": options}),
        );
    }
    let mut flow = vec![json!({
        "Type": "EmbeddedData", "FlowID": "FL_2",
        "EmbeddedData": s.embedded.iter().map(|f| json!({
            "Description": f.name, "Type": "Custom", "Field": f.name, "VariableType": "String",
            "DataVisibility": [], "AnalyzeText": false, "Value": f.default_value,
        })).collect::<Vec<_>>(),
    })];
    for (i, b) in s.blocks.iter().filter(|b| b.kind != "Trash").enumerate() {
        flow.push(json!({"Type": "Standard", "ID": b.id, "FlowID": format!("FL_{}", i + 3), "Autofill": []}));
    }
    let count = flow.len() + 1;
    let brand = &sim.cfg.brand_id;
    json!({
        "SurveyID": s.id,
        "SurveyName": s.name,
        "SurveyDescription": null,
        "SurveyOwnerID": s.owner_id,
        "SurveyBrandID": brand,
        "DivisionID": null,
        "SurveyLanguage": "EN",
        "SurveyActiveResponseSet": "RS_1",
        "SurveyStatus": survey_status(s),
        "SurveyStartDate": "0000-00-00 00:00:00",
        "SurveyExpirationDate": "0000-00-00 00:00:00",
        "SurveyCreationDate": crate::clock::sql(s.creation_ms),
        "CreatorID": s.creator_id,
        "LastModified": iso(s.last_modified_ms),
        "LastAccessed": iso(s.last_accessed_ms),
        "LastActivated": iso(s.last_activated_ms),
        "Deleted": null,
        "OwnerID": s.owner_id,
        "BrandID": brand,
        "QuestionCount": s.questions.len().to_string(),
        "SurveyOptions": {
            "BackButton": "false", "SaveAndContinue": "true", "SurveyProtection": "PublicSurvey",
            "BallotBoxStuffingPrevention": "false", "NoIndex": "Yes", "SecureResponseFiles": "true",
            "SurveyExpiration": "None", "SurveyTermination": "DefaultMessage", "Header": "", "Footer": "",
            "ProgressBarDisplay": "None", "PartialData": "+1 week", "ValidationMessage": "",
            "PreviousButton": " ← ", "NextButton": " → ", "SurveyTitle": "Qualtrics Survey | Qualtrics Experience Management",
            "SkinLibrary": brand, "SkinType": "MQ", "Skin": "simple", "NewScoring": 1,
            "SurveyLanguage": "EN", "SurveyName": s.name, "EOSMessage": "", "ShowExportTags": "false",
            "CollectGeoLocation": "false", "SurveyMetaDescription": "", "PasswordProtection": "No",
            "AnonymizeResponse": "No", "RefererCheck": "No", "ConfirmStart": false,
            "AutoConfirmStart": false, "ResponseSummary": "No", "EOSRedirectURL": "", "EmailThankYou": false,
            // As a recorded real definition has them (docs/simulator.md, "Survey definitions"):
            // a number, the active response set, and dates that are null until set.
            "SkinQuestionWidth": 700, "ActiveResponseSet": "RS_1",
            "SurveyStartDate": null, "SurveyExpirationDate": null,
            "SurveyCreationDate": iso(s.creation_ms),
        },
        "Questions": questions,
        "Blocks": blocks,
        "SurveyFlow": {"Type": "Root", "FlowID": "FL_1", "Flow": flow, "Properties": {"Count": count}},
        "ResponseSets": {"RS_1": "Default Response Set"},
        "Scoring": {
            "ScoringCategories": [], "ScoringCategoryGroups": [], "ScoringSummaryCategory": null,
            "ScoringSummaryAfterQuestions": 0, "ScoringSummaryAfterSurvey": 0,
            "DefaultScoringCategory": null, "AutoScoringCategory": null,
        },
        "ProjectInfo": {
            "SurveyID": s.id, "ProjectCategory": "CORE", "ProjectType": "CORE",
            "CompositionType": "Survey", "BundleShortName": null,
            "RegistrySha": format!("{:040x}", s.seed as u128 * 0x9E37_79B9), "RegistryVersion": "1.0.0",
            "SchemaVersion": "1.0.0",
        },
        "BrandBaseURL": format!("https://{brand}.qualtrics.com"),
    })
}

/// The legacy `GET /surveys/{id}` shape (docs/design/qualtrics-api.md §5.2).
fn legacy_json(sim: &SharedSim, s: &Survey) -> Value {
    let mut questions = Map::new();
    for q in s.live_questions() {
        let (qtype, selector, sub) = q.kind.type_triple();
        let legacy_choices = |cs: &[Choice]| -> Value {
            let m: Map<String, Value> = cs
                .iter()
                .map(|c| {
                    (c.id.to_string(), json!({"recode": c.recode.to_string(), "description": c.text, "choiceText": c.text,
                        "imageDescription": null, "variableName": c.variable_name, "analyze": true}))
                })
                .collect();
            Value::Object(m)
        };
        let mut o = json!({
            "questionType": {"type": qtype, "selector": selector, "subSelector": sub},
            "questionText": q.text, "questionLabel": null, "questionName": q.tag,
            "validation": {"doesForceResponse": q.force_response},
        });
        match q.kind {
            QuestionKind::MatrixLikert => {
                o["subQuestions"] = legacy_choices(&q.choices);
                o["choices"] = legacy_choices(&q.answers);
            }
            QuestionKind::TextSingle => {}
            _ => o["choices"] = legacy_choices(&q.choices),
        }
        questions.insert(q.qid.clone(), o);
    }
    let mut column_map = Map::new();
    for c in responses::export_columns(s, true) {
        let Some(import) = serde_json::from_str::<Value>(&c.import_id).ok() else {
            continue;
        };
        let Some(key) = import["ImportId"].as_str() else {
            continue;
        };
        let qid_part = key
            .split_once("_QID")
            .map(|(_, r)| format!("QID{r}"))
            .unwrap_or_else(|| key.to_string());
        if !qid_part.starts_with("QID") {
            continue; // metadata and embedded data
        }
        let qid: String = qid_part
            .chars()
            .take_while(|c| *c != '_' && *c != '#')
            .collect();
        let mut entry = json!({"question": qid});
        if let Some(q) = s.question(&qid)
            && q.kind == QuestionKind::MatrixLikert
            && let Some(row) = qid_part.rsplit('_').next()
        {
            entry["subQuestion"] = json!(format!("{qid}.subQuestions.{row}"));
        }
        if let Some(choice) = import.get("choiceId").and_then(|v| v.as_str()) {
            entry["choice"] = json!(format!("{qid}.choices.{choice}"));
        }
        column_map.insert(c.name.clone(), entry);
    }
    let mut blocks = Map::new();
    for b in s.blocks.iter().filter(|b| b.kind != "Trash") {
        let mut elements = Vec::new();
        for (i, qid) in b.question_ids.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                elements.push(json!({"type": "PageBreak"}));
            }
            elements.push(json!({"type": "Question", "questionId": qid}));
        }
        blocks.insert(
            b.id.clone(),
            json!({"description": b.description, "elements": elements}),
        );
    }
    let mut flow = vec![json!({"type": "EmbeddedData"})];
    flow.extend(
        s.blocks
            .iter()
            .filter(|b| b.kind != "Trash")
            .map(|b| json!({"id": b.id, "type": "Block"})),
    );
    let mut loop_and_merge = Map::new();
    for b in s.blocks.iter().filter(|b| !b.loop_items.is_empty()) {
        loop_and_merge.insert(b.id.clone(), json!({"fields": b.loop_items.iter().enumerate().map(|(i, f)| json!({"id": (i + 1).to_string(), "field1": f})).collect::<Vec<_>>()}));
    }
    let (live, deleted) = responses::counts(sim, s);
    json!({
        "id": s.id, "name": s.name, "ownerId": s.owner_id, "organizationId": sim.cfg.brand_id,
        "isActive": s.active, "creationDate": iso(s.creation_ms), "lastModifiedDate": iso(s.last_modified_ms),
        "expiration": {"startDate": null, "endDate": null},
        "questions": questions, "exportColumnMap": column_map, "blocks": blocks, "flow": flow,
        "embeddedData": s.embedded.iter().map(|f| json!({"name": f.name, "defaultValue": f.default_value})).collect::<Vec<_>>(),
        "comments": {}, "loopAndMerge": loop_and_merge,
        "responseCounts": {"auditable": live, "generated": 0, "deleted": deleted},
    })
}

async fn get_survey(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    Ok(envelope::ok(legacy_json(&sim, s)))
}

async fn get_definition(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    if let Some(f) = q.get("format")
        && f != "qsf"
    {
        return Err(ApiError::bad_request(format!(
            "Invalid value for parameter 'format': '{f}'; the only format is 'qsf'."
        )));
    }
    Ok(envelope::ok(definition_json(&sim, s)))
}

fn version_json(s: &Survey, v: &super::survey::Version) -> Value {
    json!({"versionID": v.id, "versionNumber": v.number, "description": v.description, "userID": v.user_id,
           "creationDate": iso(v.creation_ms), "published": v.published, "wasPublished": v.published,
           "surveyID": s.id})
}

async fn list_versions(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    let elements: Vec<Value> = s.versions.iter().map(|v| version_json(s, v)).collect();
    Ok(envelope::ok(
        json!({"elements": elements, "nextPage": null}),
    ))
}

async fn get_version(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((sid, vid)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    let v = s.versions.iter().find(|v| v.id == vid).ok_or_else(|| {
        ApiError::not_found(format!("Version '{vid}' of survey '{sid}' was not found."))
    })?;
    let mut out = json!({"metadata": version_json(s, v)});
    if v.published {
        out["surveyDefinition"] = definition_json(&sim, s);
    }
    Ok(envelope::ok(out))
}

/// How many responses a quota has counted: a stable estimate (counting would mean generating
/// every response of the survey).
fn quota_count(s: &Survey, q: &super::survey::Quota) -> u64 {
    let options = s
        .question(&q.qid)
        .map(|q| q.choices.len().max(1))
        .unwrap_or(1) as u64;
    (s.responses / options).min(q.limit)
}

async fn definition_quotas(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    let elements: Vec<Value> = s
        .quotas
        .iter()
        .map(|q| {
            json!({"ID": q.id, "Name": q.name, "Occurrences": q.limit, "Count": quota_count(s, q),
                   "CountForUndo": 0, "LogicType": q.logic_type,
                   "Logic": {"0": {"0": {"LogicType": "Question", "QuestionID": q.qid, "Operator": "Selected",
                             "LeftOperand": format!("q://{}/SelectableChoice/1", q.qid), "Type": "Expression"}, "Type": "If"}, "Type": "BooleanExpression"},
                   "QuotaAction": "EndCurrentSurvey", "ActionInfo": {}, "QuotaRealm": "Survey",
                   "PerformActionOnUser": false, "QuotaSchedule": null, "EndSurveyOptions": {"EndingType": "Default"}})
        })
        .collect();
    Ok(envelope::ok(
        json!({"elements": elements, "nextPage": null}),
    ))
}

async fn definition_quota_groups(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    let elements: Vec<Value> = s
        .quota_groups
        .iter()
        .map(|g| {
            json!({"ID": g.id, "Name": g.name, "MultipleMatch": g.multi_match, "Public": g.public,
                   "Selected": g.selected, "Quotas": g.quota_ids})
        })
        .collect();
    Ok(envelope::ok(
        json!({"elements": elements, "nextPage": null}),
    ))
}

async fn survey_quotas(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:surveys")?;
    let s_def = sim.survey(&sid)?;
    let s = &*s_def;
    let items: Vec<Value> = s
        .quotas
        .iter()
        .map(|qo| {
            json!({"id": qo.id, "name": qo.name, "count": quota_count(s, qo), "quota": qo.limit,
                   "logicType": qo.logic_type, "combinations": []})
        })
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        &format!("/API/v3/surveys/{sid}/quotas"),
        &q,
    )?))
}
