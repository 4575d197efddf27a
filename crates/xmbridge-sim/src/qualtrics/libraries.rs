//! Content libraries (`/libraries…`): one user library per user (id = the user id `UR_…`) and one
//! library per user group (`GR_…`), each with messages, blocks, questions and surveys in folders.
//!
//! Everything is seeded from the seed and read-only at run time. Distributions reference these
//! messages (`message.libraryId`/`messageId`), so `distributions` reads [`LibraryState`]; this
//! module must not touch other modules' state.

use super::SharedSim;
use super::account::User;
use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::paging;
use super::users::seed_groups;
use crate::config::SimConfig;
use crate::rng::Rng;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const TAG_LIB: u64 = 0x11B_0001;

/// Message categories as the API names them.
pub const CATEGORIES: &[&str] = &[
    "invite",
    "reminder",
    "thankYou",
    "emailSubject",
    "smsInvite",
    "inactiveSurvey",
    "endOfSurvey",
    "general",
    "validation",
    "lookAndFeel",
];

/// How many messages the first group library holds: more than one offset page (100), so clients
/// exercise paging on a real library.
const BIG_LIBRARY_MESSAGES: usize = 130;

#[derive(Clone, Debug)]
/// A message of a library (`MS_…`): an invitation, reminder or other e-mail text.
pub struct LibraryMessage {
    /// The message id (`MS_…`).
    pub id: String,
    /// The message's name as listed in the library.
    pub description: String,
    /// `invite`, `reminder`, `thankYou`, `endOfSurvey` …
    pub category: String,
    /// (language, text)
    pub texts: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
/// A block, question or survey kept in a library.
pub struct LibraryItem {
    /// The item id (`BL_…`, `QID…` or `SV_…` style).
    pub id: String,
    /// The item's name as listed in the library.
    pub name: String,
    /// The library folder the item is filed under.
    pub folder: String,
}

#[derive(Clone, Debug)]
/// A user or group library: messages, blocks, questions and surveys shared for reuse.
pub struct Library {
    /// The library id: the owning user's `UR_…` or the group's `GR_…`.
    pub id: String,
    /// The library's display name.
    pub name: String,
    /// `Some(user id)` for a user library; `None` for a group library (shared with every user).
    pub owner: Option<String>,
    /// Its messages, in listing order.
    pub messages: Vec<LibraryMessage>,
    /// Its saved blocks.
    pub blocks: Vec<LibraryItem>,
    /// Its saved questions.
    pub questions: Vec<LibraryItem>,
    /// Its saved surveys.
    pub surveys: Vec<LibraryItem>,
}

#[derive(Debug, Default)]
/// The brand's libraries, seeded at start and read-only afterwards.
pub struct LibraryState {
    /// Every library, user libraries first.
    pub libraries: Vec<Library>,
}

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/libraries", get(list_libraries))
        .route("/libraries/{id}/messages", get(list_messages))
        .route("/libraries/{id}/messages/{msg}", get(get_message))
        .route("/libraries/{id}/blocks", get(list_blocks))
        .route("/libraries/{id}/questions", get(list_questions))
        .route("/libraries/{id}/surveys", get(list_surveys))
}

const FOLDERS: &[&str] = &["Unassigned", "Templates", "Customer Experience", "HR"];
const BLOCK_NAMES: &[&str] = &[
    "Demographics",
    "Consent",
    "NPS block",
    "Product feedback",
    "Closing questions",
];
const QUESTION_NAMES: &[&str] = &[
    "Age bracket",
    "Country of residence",
    "Overall satisfaction",
    "Likelihood to recommend",
    "Open feedback",
    "Department",
];

fn message_text(category: &str, lang: &str, n: usize) -> String {
    let fr = lang == "FR";
    match (category, fr) {
        ("invite", false) => {
            format!("Dear ${{m://FirstName}}, please take our survey: ${{l://SurveyURL}} (#{n})")
        }
        ("invite", true) => format!(
            "Bonjour ${{m://FirstName}}, merci de répondre à notre enquête : ${{l://SurveyURL}} (#{n})"
        ),
        ("reminder", false) => format!("A friendly reminder: ${{l://SurveyURL}} (#{n})"),
        ("reminder", true) => format!("Petit rappel : ${{l://SurveyURL}} (#{n})"),
        ("thankYou", false) => format!("Thank you for your feedback! (#{n})"),
        ("thankYou", true) => format!("Merci pour votre avis ! (#{n})"),
        ("emailSubject", false) => format!("How did we do? (#{n})"),
        ("emailSubject", true) => format!("Votre avis compte (#{n})"),
        ("smsInvite", false) => format!("Reply to our 2-minute survey: ${{l://SurveyLink}} (#{n})"),
        ("smsInvite", true) => format!("Répondez à notre enquête : ${{l://SurveyLink}} (#{n})"),
        (c, false) => format!("Standard {c} message (#{n})"),
        (c, true) => format!("Message {c} standard (#{n})"),
    }
}

fn seed_library(
    cfg: &SimConfig,
    id: String,
    name: String,
    owner: Option<String>,
    n_messages: usize,
    surveys: &[super::survey::Survey],
) -> Library {
    let mut r = Rng::derive(cfg.seed, &[TAG_LIB, crate::rng::hash_str(&id)]);
    let messages = (0..n_messages)
        .map(|i| {
            // The first messages cover the categories distributions need, in order.
            let category = if i < CATEGORIES.len() {
                CATEGORIES[i]
            } else {
                *r.pick(CATEGORIES)
            };
            let mut texts = vec![("EN".to_string(), message_text(category, "EN", i + 1))];
            if r.chance(0.5) {
                texts.push(("FR".to_string(), message_text(category, "FR", i + 1)));
            }
            LibraryMessage {
                id: format!("MS_{}", r.alnum(15)),
                description: format!("{} {}", category_label(category), i + 1),
                category: category.to_string(),
                texts,
            }
        })
        .collect();
    let n_blocks = r.range(2, 4) as usize;
    let blocks = (0..n_blocks)
        .map(|i| LibraryItem {
            id: format!("BL_{}", r.alnum(15)),
            name: BLOCK_NAMES[i % BLOCK_NAMES.len()].to_string(),
            folder: r.pick(FOLDERS).to_string(),
        })
        .collect();
    let n_q = r.range(3, 6) as usize;
    let questions = (0..n_q)
        .map(|i| LibraryItem {
            id: format!("QID{}", i + 1),
            name: QUESTION_NAMES[i % QUESTION_NAMES.len()].to_string(),
            folder: r.pick(FOLDERS).to_string(),
        })
        .collect();
    let n_s = r.range(1, 3) as usize;
    let library_surveys = (0..n_s)
        .map(|i| LibraryItem {
            id: format!("SV_{}", r.alnum(15)),
            name: match surveys.get(i) {
                Some(s) => format!("{} (template)", s.name),
                None => format!("Survey template {}", i + 1),
            },
            folder: r.pick(FOLDERS).to_string(),
        })
        .collect();
    Library {
        id,
        name,
        owner,
        messages,
        blocks,
        questions,
        surveys: library_surveys,
    }
}

fn category_label(c: &str) -> &'static str {
    match c {
        "invite" => "Invitation",
        "reminder" => "Reminder",
        "thankYou" => "Thank-you",
        "emailSubject" => "Subject",
        "smsInvite" => "SMS invitation",
        "inactiveSurvey" => "Survey closed",
        "endOfSurvey" => "End of survey",
        "validation" => "Validation",
        "lookAndFeel" => "Look and feel",
        _ => "General",
    }
}

impl LibraryState {
    pub(crate) fn new(cfg: &SimConfig, users: &[User], surveys: &[super::survey::Survey]) -> Self {
        let mut libraries: Vec<Library> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                seed_library(
                    cfg,
                    u.id.clone(),
                    format!("{} {}'s Library", u.first_name, u.last_name),
                    Some(u.id.clone()),
                    CATEGORIES.len() + i,
                    surveys,
                )
            })
            .collect();
        for (i, g) in seed_groups(cfg).into_iter().enumerate() {
            let n = if i == 0 {
                BIG_LIBRARY_MESSAGES
            } else {
                CATEGORIES.len()
            };
            libraries.push(seed_library(
                cfg,
                g.id,
                format!("{} Library", g.name),
                None,
                n,
                surveys,
            ));
        }
        LibraryState { libraries }
    }

    pub(crate) fn library(&self, id: &str) -> Option<&Library> {
        self.libraries.iter().find(|l| l.id == id)
    }

    /// The first message of `category` in library `id` (distributions use it when seeding).
    pub fn first_message(&self, id: &str, category: &str) -> Option<&LibraryMessage> {
        self.library(id)?
            .messages
            .iter()
            .find(|m| m.category == category)
    }
}

/// Brand admins see every library; other users their own and the group libraries.
fn accessible(lib: &Library, caller: &Caller) -> bool {
    caller.user.permissions.brand_admin
        || lib.owner.is_none()
        || lib.owner.as_deref() == Some(caller.user.id.as_str())
}

fn library_for<'a>(sim: &'a SharedSim, caller: &Caller, id: &str) -> Result<&'a Library, ApiError> {
    let lib = sim
        .libraries
        .library(id)
        .ok_or_else(|| ApiError::not_found(format!("Library '{id}' was not found.")))?;
    if !accessible(lib, caller) {
        return Err(ApiError::forbidden(format!(
            "You do not have access to library '{id}'."
        )));
    }
    Ok(lib)
}

async fn list_libraries(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:libraries")?;
    let items: Vec<Value> = sim
        .libraries
        .libraries
        .iter()
        .filter(|l| accessible(l, &caller))
        .map(|l| json!({"libraryId": l.id, "libraryName": l.name}))
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        "/API/v3/libraries",
        &q,
    )?))
}

async fn list_messages(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:libraries")?;
    let lib = library_for(&sim, &caller, &id)?;
    if let Some(c) = q.get("category")
        && !CATEGORIES.contains(&c.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "Invalid value for parameter 'category': '{c}'. Valid categories: {}.",
            CATEGORIES.join(", ")
        )));
    }
    let items: Vec<Value> = lib
        .messages
        .iter()
        .filter(|m| q.get("category").is_none_or(|c| *c == m.category))
        .map(|m| json!({"id": m.id, "description": m.description, "category": m.category}))
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        &format!("/API/v3/libraries/{id}/messages"),
        &q,
    )?))
}

async fn get_message(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((id, msg)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:libraries")?;
    let lib = library_for(&sim, &caller, &id)?;
    let m = lib.messages.iter().find(|m| m.id == msg).ok_or_else(|| {
        ApiError::not_found(format!("Message '{msg}' was not found in library '{id}'."))
    })?;
    let texts: Map<String, Value> = m
        .texts
        .iter()
        .map(|(l, t)| (l.clone(), Value::String(t.clone())))
        .collect();
    Ok(envelope::ok(json!({
        "id": m.id, "description": m.description, "category": m.category, "messages": texts,
    })))
}

/// Blocks, questions and surveys share one shape: `{<kind>Id, <kind>Name, folderName}`.
fn list_items(
    sim: &SharedSim,
    caller: &Caller,
    id: &str,
    q: &BTreeMap<String, String>,
    kind: &str,
    pick: fn(&Library) -> &Vec<LibraryItem>,
) -> ApiResult {
    caller.require_scope("read:libraries")?;
    let lib = library_for(sim, caller, id)?;
    let (id_key, name_key, path) = match kind {
        "block" => ("libraryBlockId", "blockName", "blocks"),
        "question" => ("libraryQuestionId", "questionName", "questions"),
        _ => ("librarySurveyId", "surveyName", "surveys"),
    };
    let items: Vec<Value> = pick(lib)
        .iter()
        .map(|it| {
            let mut o = Map::new();
            o.insert(id_key.into(), Value::String(it.id.clone()));
            o.insert(name_key.into(), Value::String(it.name.clone()));
            o.insert("folderName".into(), Value::String(it.folder.clone()));
            Value::Object(o)
        })
        .collect();
    Ok(envelope::ok(paging::offset_page(
        items,
        &format!("/API/v3/libraries/{id}/{path}"),
        q,
    )?))
}

async fn list_blocks(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    list_items(&sim, &caller, &id, &q, "block", |l| &l.blocks)
}

async fn list_questions(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    list_items(&sim, &caller, &id, &q, "question", |l| &l.questions)
}

async fn list_surveys(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    list_items(&sim, &caller, &id, &q, "survey", |l| &l.surveys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_has_each_core_category() {
        let cfg = SimConfig::default();
        let users = super::super::account::seed_users(&cfg);
        let state = LibraryState::new(&cfg, &users, &[]);
        assert_eq!(state.libraries.len(), users.len() + 2);
        for lib in &state.libraries {
            for c in [
                "invite",
                "reminder",
                "thankYou",
                "smsInvite",
                "emailSubject",
            ] {
                assert!(state.first_message(&lib.id, c).is_some(), "{} {c}", lib.id);
            }
        }
    }
}
