//! Distributions (docs/design/qualtrics-api.md §8, distributions): e-mail distributions (Invite,
//! Reminder, ThankYou), generated individual links, SMS distributions, their per-recipient history
//! and links.
//!
//! Seeded per survey from the seed, with recipients drawn from the XM Directory's mailing lists at
//! start (no lists → distributions without recipients); distributions created through the API draw
//! members from the directory at call time. This module owns [`DistributionState`] only: it reads
//! the directory, libraries and surveys but never changes them.

use super::SharedSim;
use super::account::User;
use super::auth::Caller;
use super::directory::{DirectoryState, ListMember};
use super::envelope::{self, ApiError, ApiResult};
use super::libraries::LibraryState;
use super::paging;
use super::survey::Survey;
use super::users::{opt_str, parse_body, req_str};
use crate::clock::{MS_PER_DAY, iso, parse_iso, parse_sql, sql};
use crate::config::SimConfig;
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use parking_lot::RwLock;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

const TAG_SEED: u64 = 0xD157_0001;
const TAG_NEW: u64 = 0xD157_0002;
const HOUR: i64 = 3_600_000;

/// `requestType` values of e-mail distributions (§8).
pub const REQUEST_TYPES: &[&str] = &[
    "Invite",
    "Reminder",
    "ThankYou",
    "Email",
    "Portal",
    "PortalInvite",
    "GeneratedInvite",
];
const LINK_TYPES: &[&str] = &["Individual", "Multiple", "Anonymous"];
const SMS_METHODS: &[&str] = &["Invite", "Reminder", "ThankYou"];
const LIST_PARAMS: &[&str] = &[
    "surveyId",
    "distributionRequestType",
    "mailingListId",
    "sendStartDate",
    "sendEndDate",
    "pageSize",
    "skipToken",
    "useNewPaginationScheme",
];

/// One recipient's row in a distribution's history.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    /// The recipient.
    pub member: ListMember,
    /// A value of the §8 history status enum.
    pub status: &'static str,
    /// The recipient's personal survey link.
    pub survey_link: String,
    pub(crate) frequency_rule_id: Option<String>,
    /// The response the recipient submitted; `None` until they respond.
    pub response_id: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) sent_ms: Option<i64>,
    pub(crate) opened_ms: Option<i64>,
    pub(crate) started_ms: Option<i64>,
    /// When the recipient finished the survey, simulated epoch milliseconds; `None` until then.
    pub completed_ms: Option<i64>,
}

#[derive(Clone, Debug, Default)]
/// Whom a distribution goes to; exactly one of the ways is set.
pub struct Recipients {
    /// A mailing list (`CG_…`).
    pub mailing_list_id: Option<String>,
    /// A single contact (`CID_…`).
    pub contact_id: Option<String>,
    /// The directory or library the recipients belong to (`libraryId`).
    pub library_id: Option<String>,
    pub(crate) sample_id: Option<String>,
    /// A transaction batch (`BT_…`) whose contacts are the recipients.
    pub transaction_batch_id: Option<String>,
    /// A single transaction (`CTR_…`).
    pub transaction_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
/// The e-mail header of a distribution; `None` fields were not given.
pub struct Header {
    /// Sender address.
    pub from_email: Option<String>,
    /// Sender display name.
    pub from_name: Option<String>,
    /// Reply-to address.
    pub reply_to_email: Option<String>,
    /// Subject line.
    pub subject: Option<String>,
}

#[derive(Clone, Debug, Default)]
/// The body of a distribution: a library message or literal text.
pub struct Message {
    /// The library holding the message (`UR_…` or `GR_…`).
    pub library_id: Option<String>,
    /// The library message (`MS_…`).
    pub message_id: Option<String>,
    /// Literal message text, when no library message is used.
    pub message_text: Option<String>,
}

#[derive(Clone, Debug)]
/// A distribution: an invitation, reminder or thank-you sent (or links generated) for a survey.
pub struct Distribution {
    /// The distribution id (`EMD_…`; `UMD_…` for SMS).
    pub id: String,
    /// The survey it is for.
    pub survey_id: String,
    pub(crate) parent_id: Option<String>,
    /// The user who created it.
    pub owner_id: String,
    /// `Invite`, `Reminder`, `ThankYou`, `GeneratedInvite` …
    pub request_type: String,
    pub(crate) send_ms: i64,
    pub(crate) created_ms: i64,
    pub(crate) modified_ms: i64,
    /// The e-mail header.
    pub header: Header,
    /// Whom it goes to.
    pub recipients: Recipients,
    /// What it says.
    pub message: Message,
    /// `Individual`, `Multiple` or `Anonymous`.
    pub link_type: String,
    pub(crate) link_expiration_ms: Option<i64>,
    /// Embedded data passed to every response of the distribution; `None` for none.
    pub embedded: Option<Value>,
    /// What the creator of generated links called them.
    pub description: Option<String>,
    /// `Some(name)` for an SMS distribution.
    pub sms_name: Option<String>,
    /// One row per recipient.
    pub history: Vec<HistoryRow>,
    /// Deleted through the API: listed no more, but kept for its history.
    pub deleted: bool,
}

impl Distribution {
    fn is_sms(&self) -> bool {
        self.sms_name.is_some()
    }
}

#[derive(Debug, Default)]
/// The brand's distributions and the counters behind their ids.
pub struct DistributionState {
    /// Every distribution, in creation order (deleted ones included, flagged).
    pub dists: RwLock<Vec<Distribution>>,
    created: AtomicU64,
    /// `stats` fields beyond the documented ones, added through `/_sim/distributions/stats-fields`.
    extra_stats: RwLock<Vec<String>>,
}

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/distributions", get(list_email).post(create_email))
        .route("/distributions/sms", get(list_sms).post(create_sms))
        .route("/distributions/sms/{id}", get(get_sms))
        .route("/distributions/sms/{id}/history", get(history_sms))
        .route("/distributions/{id}", get(get_email).delete(delete_email))
        .route("/distributions/{id}/reminders", post(create_reminder))
        .route("/distributions/{id}/links", get(links))
        .route("/distributions/{id}/history", get(history_email))
}

// ---------------------------------------------------------------------------------------------
// Seeding

/// Draws a history status from weighted outcomes.
fn draw_status(r: &mut Rng, table: &[(&'static str, u64)]) -> &'static str {
    let total: u64 = table.iter().map(|(_, w)| w).sum();
    let mut x = r.below(total.max(1));
    for (s, w) in table {
        if x < *w {
            return s;
        }
        x -= w;
    }
    table.last().map(|(s, _)| *s).unwrap_or("Unknown")
}

const INVITE_OUTCOMES: &[(&str, u64)] = &[
    ("SurveyFinished", 30),
    ("SurveyStarted", 7),
    ("SurveyPartiallyFinished", 4),
    ("SurveyScreenedOut", 1),
    ("SessionExpired", 2),
    ("Opened", 22),
    ("Success", 20),
    ("SoftBounce", 3),
    ("HardBounce", 2),
    ("Skipped", 3),
    ("Blocked", 1),
    ("Complaint", 1),
    ("Failure", 2),
    ("Error", 1),
    ("Unknown", 1),
];
const REMINDER_OUTCOMES: &[(&str, u64)] = &[
    ("SurveyFinished", 15),
    ("SurveyStarted", 5),
    ("Opened", 30),
    ("Success", 45),
    ("SoftBounce", 3),
    ("Failure", 2),
];
const THANKS_OUTCOMES: &[(&str, u64)] = &[("Opened", 40), ("Success", 58), ("SoftBounce", 2)];
const LINK_OUTCOMES: &[(&str, u64)] = &[
    ("SurveyFinished", 25),
    ("SurveyStarted", 10),
    ("Pending", 65),
];
const SMS_OUTCOMES: &[(&str, u64)] = &[
    ("SurveyFinished", 20),
    ("SurveyStarted", 10),
    ("Success", 60),
    ("Failure", 7),
    ("Blocked", 3),
];

fn is_started(s: &str) -> bool {
    matches!(
        s,
        "SurveyStarted"
            | "SurveyPartiallyFinished"
            | "SurveyFinished"
            | "SurveyScreenedOut"
            | "SessionExpired"
    )
}

fn not_sent(s: &str) -> bool {
    matches!(s, "Pending" | "Skipped" | "Blocked" | "Failure" | "Error")
}

fn survey_link(
    cfg: &SimConfig,
    dist_id: &str,
    survey_id: &str,
    m: &ListMember,
    chl: &str,
) -> String {
    format!(
        "https://{}.qualtrics.com/jfe/form/{survey_id}?Q_DL={dist_id}_{survey_id}_{}&Q_CHL={chl}",
        cfg.brand_id, m.contact_lookup_id
    )
}

/// One recipient's row: times follow from the status (opened after sent, completed after started).
fn make_row(
    cfg: &SimConfig,
    r: &mut Rng,
    dist: &Distribution,
    survey: &Survey,
    m: &ListMember,
    status: &'static str,
    chl: &str,
) -> HistoryRow {
    let sent_ms = if not_sent(status) || chl == "gl" {
        None
    } else {
        Some(dist.send_ms + r.range(0, 600_000))
    };
    let base = sent_ms.unwrap_or(dist.send_ms);
    let opened_ms = (status == "Opened" || status == "Complaint" || is_started(status))
        .then(|| base + r.range(60_000, 48 * HOUR));
    let started_ms = is_started(status).then(|| opened_ms.unwrap_or(base) + r.range(5_000, HOUR));
    let completed_ms = matches!(status, "SurveyFinished" | "SurveyScreenedOut")
        .then(|| started_ms.unwrap_or(base) + r.range(60_000, 30 * 60_000));
    // A real seeded response of the survey, so history rows join to exported responses.
    let response_id = completed_ms.filter(|_| survey.responses > 0).map(|_| {
        super::responses::encode_response_id(cfg.seed, survey.idx, r.below(survey.responses))
    });
    let session_id =
        (started_ms.is_some() && completed_ms.is_none()).then(|| format!("FS_{}", r.alnum(15)));
    let frequency_rule_id = (status == "Skipped").then(|| format!("FQ_{}", r.alnum(15)));
    HistoryRow {
        member: m.clone(),
        status,
        survey_link: survey_link(cfg, &dist.id, &dist.survey_id, m, chl),
        frequency_rule_id,
        response_id,
        session_id,
        sent_ms,
        opened_ms,
        started_ms,
        completed_ms,
    }
}

fn seeded_id(r: &mut Rng, prefix: &str) -> String {
    format!("{prefix}_{}", r.alnum(15))
}

fn blank(
    id: String,
    survey: &Survey,
    owner: &str,
    request_type: &str,
    send_ms: i64,
    created_ms: i64,
) -> Distribution {
    Distribution {
        id,
        survey_id: survey.id.clone(),
        parent_id: None,
        owner_id: owner.to_string(),
        request_type: request_type.to_string(),
        send_ms,
        created_ms,
        modified_ms: send_ms.max(created_ms) + 5 * 60_000,
        header: Header::default(),
        recipients: Recipients::default(),
        message: Message::default(),
        link_type: "Individual".into(),
        link_expiration_ms: Some(send_ms + 60 * MS_PER_DAY),
        embedded: None,
        description: None,
        sms_name: None,
        history: Vec::new(),
        deleted: false,
    }
}

fn email_header(cfg: &SimConfig, owner: Option<&User>, subject: &str) -> Header {
    Header {
        from_email: Some("noreply@qemailserver.com".into()),
        from_name: Some(format!("{} Research", cfg.brand_id)),
        reply_to_email: owner.map(|u| u.email.clone()),
        subject: Some(subject.to_string()),
    }
}

fn message_from(libs: &LibraryState, lib_id: &str, category: &str) -> Message {
    Message {
        library_id: Some(lib_id.to_string()),
        message_id: libs.first_message(lib_id, category).map(|m| m.id.clone()),
        message_text: None,
    }
}

fn seed_for_survey(
    cfg: &SimConfig,
    users: &[User],
    libs: &LibraryState,
    survey: &Survey,
    directory: &DirectoryState,
) -> Vec<Distribution> {
    let mut r = Rng::derive(cfg.seed, &[TAG_SEED, survey.idx as u64]);
    let lists = directory.mailing_lists();
    let list = (!lists.is_empty()).then(|| lists[survey.idx % lists.len()].1.clone());
    let link_list = (!lists.is_empty()).then(|| lists[(survey.idx + 1) % lists.len()].1.clone());
    let members = |ml: &Option<String>| {
        ml.as_ref()
            .map(|id| directory.mailing_list_members(id))
            .unwrap_or_default()
    };
    let owner = users.iter().find(|u| u.id == survey.owner_id);
    let lib = survey.owner_id.clone();
    let recipients = |ml: &Option<String>| Recipients {
        mailing_list_id: ml.clone(),
        library_id: Some(lib.clone()),
        ..Recipients::default()
    };
    // All sends happen after the survey exists and at least a week before the simulated "now".
    let first = survey.creation_ms.max(cfg.history_start_ms());
    let latest = cfg.start_ms - 14 * MS_PER_DAY;
    let invite_ms = (first + r.range(1, 60) * MS_PER_DAY + 9 * HOUR).min(latest);
    let mut out = Vec::new();

    let mut invite = blank(
        seeded_id(&mut r, "EMD"),
        survey,
        &survey.owner_id,
        "Invite",
        invite_ms,
        invite_ms - r.range(1, 48) * HOUR,
    );
    invite.header = email_header(cfg, owner, "We'd love your feedback");
    invite.recipients = recipients(&list);
    invite.message = message_from(libs, &lib, "invite");
    invite.embedded = Some(json!({"campaign": "seeded"}));
    let invite_members = members(&list);
    let mut rows = Vec::new();
    for m in &invite_members {
        let status = draw_status(&mut r, INVITE_OUTCOMES);
        rows.push(make_row(cfg, &mut r, &invite, survey, m, status, "email"));
    }
    invite.history = rows;

    let reminder_ms = invite_ms + r.range(3, 5) * MS_PER_DAY;
    let mut reminder = blank(
        seeded_id(&mut r, "EMD"),
        survey,
        &survey.owner_id,
        "Reminder",
        reminder_ms,
        reminder_ms - r.range(1, 24) * HOUR,
    );
    reminder.parent_id = Some(invite.id.clone());
    reminder.header = email_header(cfg, owner, "Reminder: we'd love your feedback");
    reminder.recipients = invite.recipients.clone();
    reminder.message = message_from(libs, &lib, "reminder");
    reminder.link_expiration_ms = invite.link_expiration_ms;
    // Reminders go to those who got the invite but have not answered.
    let pending: Vec<ListMember> = invite
        .history
        .iter()
        .filter(|h| matches!(h.status, "Success" | "Opened"))
        .map(|h| h.member.clone())
        .collect();
    for m in &pending {
        let status = draw_status(&mut r, REMINDER_OUTCOMES);
        let row = make_row(cfg, &mut r, &reminder, survey, m, status, "email");
        reminder.history.push(row);
    }

    let thanks_ms = invite_ms + 7 * MS_PER_DAY;
    let mut thanks = blank(
        seeded_id(&mut r, "EMD"),
        survey,
        &survey.owner_id,
        "ThankYou",
        thanks_ms,
        thanks_ms - HOUR,
    );
    thanks.parent_id = Some(invite.id.clone());
    thanks.header = email_header(cfg, owner, "Thank you!");
    thanks.recipients = invite.recipients.clone();
    thanks.message = message_from(libs, &lib, "thankYou");
    thanks.link_expiration_ms = invite.link_expiration_ms;
    let finished: Vec<ListMember> = invite
        .history
        .iter()
        .filter(|h| h.status == "SurveyFinished")
        .map(|h| h.member.clone())
        .collect();
    for m in &finished {
        let status = draw_status(&mut r, THANKS_OUTCOMES);
        let row = make_row(cfg, &mut r, &thanks, survey, m, status, "email");
        thanks.history.push(row);
    }

    let links_ms = invite_ms + r.range(1, 6) * MS_PER_DAY;
    let mut gen_links = blank(
        seeded_id(&mut r, "EMD"),
        survey,
        &survey.owner_id,
        "GeneratedInvite",
        links_ms,
        links_ms,
    );
    gen_links.recipients = recipients(&link_list);
    gen_links.description = Some(format!("Personal links — {}", survey.name));
    for m in &members(&link_list) {
        let status = draw_status(&mut r, LINK_OUTCOMES);
        let row = make_row(cfg, &mut r, &gen_links, survey, m, status, "gl");
        gen_links.history.push(row);
    }

    let sms_ms = invite_ms + MS_PER_DAY;
    let mut sms = blank(
        seeded_id(&mut r, "SMSD"),
        survey,
        &survey.owner_id,
        "Invite",
        sms_ms,
        sms_ms - 2 * HOUR,
    );
    sms.sms_name = Some(format!("{} — SMS invite", survey.name));
    sms.recipients = invite.recipients.clone();
    sms.message = message_from(libs, &lib, "smsInvite");
    for m in &invite_members {
        let status = draw_status(&mut r, SMS_OUTCOMES);
        let row = make_row(cfg, &mut r, &sms, survey, m, status, "sms");
        sms.history.push(row);
    }
    out.extend([invite, reminder, thanks, gen_links, sms]);
    if survey.idx.is_multiple_of(2) {
        // A second SMS wave with a free-text message, so both message forms occur.
        let ms = sms_ms + 2 * MS_PER_DAY;
        let mut sms2 = blank(
            seeded_id(&mut r, "SMSD"),
            survey,
            &survey.owner_id,
            "Invite",
            ms,
            ms - HOUR,
        );
        sms2.sms_name = Some(format!("{} — SMS follow-up", survey.name));
        sms2.recipients = recipients(&link_list);
        sms2.message = Message {
            message_text: Some("Last chance to tell us what you think: ${l://SurveyLink}".into()),
            ..Message::default()
        };
        for m in &members(&link_list) {
            let status = draw_status(&mut r, SMS_OUTCOMES);
            let row = make_row(cfg, &mut r, &sms2, survey, m, status, "sms");
            sms2.history.push(row);
        }
        out.push(sms2);
    }
    out
}

impl DistributionState {
    pub(crate) fn new(
        cfg: &SimConfig,
        users: &[User],
        surveys: &[Survey],
        directory: &DirectoryState,
    ) -> Self {
        // Libraries are deterministic and cheap to seed; a private copy gives us real message ids.
        let libs = LibraryState::new(cfg, users, surveys);
        let dists = surveys
            .iter()
            .flat_map(|s| seed_for_survey(cfg, users, &libs, s, directory))
            .collect();
        DistributionState {
            dists: RwLock::new(dists),
            created: AtomicU64::new(0),
            extra_stats: RwLock::new(Vec::new()),
        }
    }

    fn next_id(&self, seed: u64, prefix: &str) -> String {
        let n = self.created.fetch_add(1, Ordering::SeqCst);
        seeded_id(&mut Rng::derive(seed, &[TAG_NEW, n]), prefix)
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn opt_iso(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(iso(m))).unwrap_or(Value::Null)
}

/// A row as it looks at `now`: a scheduled distribution has sent nothing yet.
fn effective(row: &HistoryRow, d: &Distribution, now: i64) -> HistoryRow {
    if d.send_ms > now {
        HistoryRow {
            status: "Pending",
            sent_ms: None,
            opened_ms: None,
            started_ms: None,
            completed_ms: None,
            response_id: None,
            session_id: None,
            ..row.clone()
        }
    } else {
        row.clone()
    }
}

impl DistributionState {
    /// Adds a `stats` field every distribution reports from now on; returns all extra fields.
    pub fn add_stats_field(&self, name: &str) -> Vec<String> {
        let mut extra = self.extra_stats.write();
        if !extra.iter().any(|f| f == name) {
            extra.push(name.to_string());
        }
        extra.clone()
    }
}

/// The documented stats plus the extra fields (each: recipients who opened or started).
fn stats_with_extras(sim: &SharedSim, d: &Distribution, now: i64) -> Value {
    let mut v = stats(d, now);
    let extra = sim.distributions.extra_stats.read();
    if !extra.is_empty()
        && let Some(o) = v.as_object_mut()
    {
        let opened = o.get("opened").cloned().unwrap_or(json!(0));
        for f in extra.iter() {
            o.insert(f.clone(), opened.clone());
        }
    }
    v
}

fn stats(d: &Distribution, now: i64) -> Value {
    let mut s: BTreeMap<&str, u64> = BTreeMap::new();
    for row in &d.history {
        let st = effective(row, d, now).status;
        let mut bump = |k: &'static str| *s.entry(k).or_insert(0) += 1;
        if !not_sent(st) {
            bump("sent");
        }
        match st {
            "Failure" | "Error" => bump("failed"),
            "SoftBounce" | "HardBounce" => bump("bounced"),
            "Skipped" => bump("skipped"),
            "Complaint" => bump("complaints"),
            "Blocked" => bump("blocked"),
            _ => {}
        }
        if st == "Opened" || st == "Complaint" || is_started(st) {
            bump("opened");
        }
        if is_started(st) {
            bump("started");
        }
        if st == "SurveyFinished" {
            bump("finished");
        }
    }
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    json!({"sent": g("sent"), "failed": g("failed"), "started": g("started"),
           "bounced": g("bounced"), "opened": g("opened"), "skipped": g("skipped"),
           "finished": g("finished"), "complaints": g("complaints"), "blocked": g("blocked")})
}

fn request_status(d: &Distribution, now: i64) -> &'static str {
    if d.send_ms > now { "Pending" } else { "Done" }
}

fn render_email(sim: &SharedSim, d: &Distribution, now: i64) -> Value {
    let mut recipients = json!({
        "mailingListId": d.recipients.mailing_list_id, "contactId": d.recipients.contact_id,
        "libraryId": d.recipients.library_id, "sampleId": d.recipients.sample_id,
    });
    if let (Some(b), Some(o)) = (
        &d.recipients.transaction_batch_id,
        recipients.as_object_mut(),
    ) {
        o.insert("transactionBatchId".into(), Value::String(b.clone()));
    }
    let mut v = json!({
        "id": d.id, "parentDistributionId": d.parent_id, "ownerId": d.owner_id,
        "organizationId": sim.cfg.brand_id, "requestStatus": request_status(d, now),
        "requestType": d.request_type, "sendDate": iso(d.send_ms),
        "createdDate": iso(d.created_ms), "modifiedDate": iso(d.modified_ms),
        "customHeaders": {},
        "headers": {"fromEmail": d.header.from_email, "replyToEmail": d.header.reply_to_email,
                    "fromName": d.header.from_name, "subject": d.header.subject},
        "recipients": recipients,
        "message": {"libraryId": d.message.library_id, "messageId": d.message.message_id,
                    "messageText": d.message.message_text},
        "surveyLink": {"surveyId": d.survey_id, "expirationDate": opt_iso(d.link_expiration_ms),
                       "linkType": d.link_type},
        "embeddedData": d.embedded,
        "stats": stats_with_extras(sim, d, now),
    });
    if let (Some(desc), Some(o)) = (&d.description, v.as_object_mut()) {
        o.insert("description".into(), Value::String(desc.clone()));
    }
    v
}

fn render_sms(sim: &SharedSim, d: &Distribution, now: i64) -> Value {
    json!({
        "id": d.id, "name": d.sms_name, "ownerId": d.owner_id,
        "organizationId": sim.cfg.brand_id, "surveyId": d.survey_id,
        "requestStatus": request_status(d, now), "requestType": d.request_type,
        "sendDate": iso(d.send_ms), "createdDate": iso(d.created_ms),
        "modifiedDate": iso(d.modified_ms),
        "recipients": {"mailingListId": d.recipients.mailing_list_id,
                       "contactId": d.recipients.contact_id,
                       "libraryId": d.recipients.library_id, "sampleId": d.recipients.sample_id,
                       "transactionBatchId": d.recipients.transaction_batch_id,
                       "transactionId": d.recipients.transaction_id},
        "message": {"messageType": d.request_type, "messageId": d.message.message_id,
                    "libraryId": d.message.library_id, "messageText": d.message.message_text},
        "surveyLink": {"surveyId": d.survey_id, "expirationDate": opt_iso(d.link_expiration_ms),
                       "linkType": d.link_type},
        "stats": stats_with_extras(sim, d, now),
    })
}

fn render_row(row: &HistoryRow, d: &Distribution, now: i64) -> Value {
    let r = effective(row, d, now);
    json!({
        "contactId": r.member.contact_id, "contactLookupId": r.member.contact_lookup_id,
        "distributionID": d.id, "status": r.status, "surveyLink": r.survey_link,
        "contactFrequencyRuleId": r.frequency_rule_id, "responseId": r.response_id,
        "responseCompletedAt": opt_iso(r.completed_ms), "sentAt": opt_iso(r.sent_ms),
        "openedAt": opt_iso(r.opened_ms), "responseStartedAt": opt_iso(r.started_ms),
        "surveySessionId": r.session_id,
    })
}

// ---------------------------------------------------------------------------------------------
// Lookups and validation

fn required_query<'a>(q: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, ApiError> {
    match q.get(key) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::bad_request(format!(
            "Missing required query parameter '{key}'."
        ))),
    }
}

fn find<'a>(dists: &'a [Distribution], id: &str, sms: bool) -> Result<&'a Distribution, ApiError> {
    dists
        .iter()
        .find(|d| d.id == id && !d.deleted && d.is_sms() == sms)
        .ok_or_else(|| {
            let kind = if sms {
                "SMS distribution"
            } else {
                "Distribution"
            };
            ApiError::not_found(format!("{kind} '{id}' was not found."))
        })
}

fn check_survey_param(d: &Distribution, q: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let sid = required_query(q, "surveyId")?;
    if d.survey_id != sid {
        return Err(ApiError::not_found(format!(
            "Distribution '{}' was not found in survey '{sid}'.",
            d.id
        )));
    }
    Ok(())
}

fn query_date(q: &BTreeMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => parse_iso(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid value for parameter '{key}': '{v}' is not an ISO-8601 date-time (e.g. 2026-01-31T00:00:00Z)."
            ))
        }),
    }
}

/// The list routes share filters: survey, request type, mailing list, send-date window.
fn filtered(
    sim: &SharedSim,
    q: &BTreeMap<String, String>,
    sms: bool,
) -> Result<Vec<Distribution>, ApiError> {
    if let Some(k) = q.keys().find(|k| !LIST_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Unknown query parameter '{k}' (parameter names are case-sensitive). Valid: {}.",
            LIST_PARAMS.join(", ")
        )));
    }
    let sid = required_query(q, "surveyId")?;
    sim.survey(sid)?;
    let rtype = q.get("distributionRequestType");
    if let Some(t) = rtype {
        let valid = if sms { SMS_METHODS } else { REQUEST_TYPES };
        if !valid.contains(&t.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid value for parameter 'distributionRequestType': '{t}'. Valid: {}.",
                valid.join(", ")
            )));
        }
    }
    let from = query_date(q, "sendStartDate")?;
    let to = query_date(q, "sendEndDate")?;
    let ml = q.get("mailingListId");
    Ok(sim
        .distributions
        .dists
        .read()
        .iter()
        .filter(|d| !d.deleted && d.is_sms() == sms && d.survey_id == sid)
        .filter(|d| rtype.is_none_or(|t| d.request_type == *t))
        .filter(|d| ml.is_none_or(|m| d.recipients.mailing_list_id.as_ref() == Some(m)))
        .filter(|d| from.is_none_or(|f| d.send_ms >= f))
        .filter(|d| to.is_none_or(|t| d.send_ms <= t))
        .cloned()
        .collect())
}

fn obj<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ApiError::bad_request(format!(
            "Field '{key}' must be an object."
        ))),
    }
}

fn req_obj<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>, ApiError> {
    obj(m, key)?.ok_or_else(|| ApiError::bad_request(format!("Missing required field '{key}'.")))
}

fn iso_field(m: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>, ApiError> {
    match opt_str(m, key)? {
        None => Ok(None),
        Some(s) => parse_iso(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Field '{path}' must be an ISO-8601 date-time such as 2026-02-01T09:00:00Z; got '{s}'."
            ))
        }),
    }
}

fn parse_header(m: &Map<String, Value>) -> Result<Header, ApiError> {
    let h = req_obj(m, "header")?;
    let from_email = req_str(h, "fromEmail")
        .map_err(|_| ApiError::bad_request("Missing required field 'header.fromEmail'."))?;
    if !from_email.contains('@') {
        return Err(ApiError::bad_request(format!(
            "Field 'header.fromEmail' is not an e-mail address: '{from_email}'."
        )));
    }
    let from_name = req_str(h, "fromName")
        .map_err(|_| ApiError::bad_request("Missing required field 'header.fromName'."))?;
    let subject = req_str(h, "subject")
        .map_err(|_| ApiError::bad_request("Missing required field 'header.subject'."))?;
    Ok(Header {
        from_email: Some(from_email.into()),
        from_name: Some(from_name.into()),
        reply_to_email: opt_str(h, "replyToEmail")?.map(str::to_string),
        subject: Some(subject.into()),
    })
}

/// `{libraryId, messageId}` of an existing library message, or `{messageText}`.
fn parse_message(
    sim: &SharedSim,
    m: &Map<String, Value>,
    category_hint: &str,
) -> Result<Message, ApiError> {
    let msg = req_obj(m, "message")?;
    let text = opt_str(msg, "messageText")?;
    let lib = opt_str(msg, "libraryId")?;
    let mid = opt_str(msg, "messageId")?;
    match (lib, mid, text) {
        (Some(l), Some(id), None) => {
            let found = sim
                .libraries
                .library(l)
                .and_then(|lib| lib.messages.iter().find(|x| x.id == id));
            if found.is_none() {
                return Err(ApiError::bad_request(format!(
                    "Message '{id}' was not found in library '{l}' (a {category_hint} message is expected)."
                )));
            }
            Ok(Message {
                library_id: Some(l.into()),
                message_id: Some(id.into()),
                message_text: None,
            })
        }
        (None, None, Some(t)) if !t.trim().is_empty() => Ok(Message {
            message_text: Some(t.into()),
            ..Message::default()
        }),
        _ => Err(ApiError::bad_request(
            "Field 'message' must hold either 'libraryId' and 'messageId', or 'messageText'.",
        )),
    }
}

fn known_list(sim: &SharedSim, ml: &str) -> Result<(), ApiError> {
    if sim.directory.mailing_lists().iter().any(|(_, id)| id == ml) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Mailing list '{ml}' was not found in any directory of this brand."
        )))
    }
}

/// `recipients`: a mailing list (optionally one contact in it) or a transaction batch.
fn parse_recipients(
    sim: &SharedSim,
    m: &Map<String, Value>,
    owner: &str,
) -> Result<(Recipients, Vec<ListMember>), ApiError> {
    let r = req_obj(m, "recipients")?;
    let ml = opt_str(r, "mailingListId")?;
    let contact = opt_str(r, "contactId")?;
    let batch = opt_str(r, "transactionBatchId")?;
    let mut rec = Recipients {
        library_id: Some(owner.to_string()),
        ..Recipients::default()
    };
    match (ml, contact, batch) {
        (Some(ml), contact, None) => {
            known_list(sim, ml)?;
            let mut members = sim.directory.mailing_list_members(ml);
            if let Some(c) = contact {
                members.retain(|x| x.contact_id == c);
                if members.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "Contact '{c}' is not a member of mailing list '{ml}'."
                    )));
                }
                rec.contact_id = Some(c.into());
            }
            rec.mailing_list_id = Some(ml.into());
            Ok((rec, members))
        }
        (None, None, Some(b)) => {
            if !b.starts_with("BT_") {
                return Err(ApiError::bad_request(format!(
                    "Field 'recipients.transactionBatchId' must be a transaction batch id (BT_…); got '{b}'."
                )));
            }
            // Batch members live in the directory's transactions, which we do not read: the
            // distribution is recorded without per-recipient history.
            rec.transaction_batch_id = Some(b.into());
            Ok((rec, Vec::new()))
        }
        (None, Some(_), None) => Err(ApiError::bad_request(
            "Field 'recipients.contactId' needs 'recipients.mailingListId' (the list the contact is in).",
        )),
        _ => Err(ApiError::bad_request(
            "Field 'recipients' must hold exactly one of 'mailingListId' (optionally with 'contactId') or 'transactionBatchId'.",
        )),
    }
}

fn survey_in_body(sim: &SharedSim, sid: &str) -> Result<std::sync::Arc<Survey>, ApiError> {
    sim.survey(sid)
        .map_err(|_| ApiError::bad_request(format!("Survey '{sid}' was not found in this brand.")))
}

fn one_of(value: &str, valid: &[&str], field: &str) -> Result<(), ApiError> {
    if valid.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid value for '{field}': '{value}'. Valid: {}.",
            valid.join(", ")
        )))
    }
}

/// Rows for freshly created distributions: delivered (`Success`) once the send date has passed.
fn fresh_rows(
    sim: &SharedSim,
    d: &Distribution,
    members: &[ListMember],
    chl: &str,
) -> Vec<HistoryRow> {
    members
        .iter()
        .map(|m| HistoryRow {
            member: m.clone(),
            status: if chl == "gl" { "Pending" } else { "Success" },
            survey_link: survey_link(&sim.cfg, &d.id, &d.survey_id, m, chl),
            frequency_rule_id: None,
            response_id: None,
            session_id: None,
            sent_ms: (chl != "gl").then_some(d.send_ms),
            opened_ms: None,
            started_ms: None,
            completed_ms: None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Handlers: e-mail distributions

async fn list_email(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    let items = filtered(&sim, &q, false)?;
    let now = sim.clock.now_ms();
    let page = paging::skip_token_page(
        items.len(),
        |a, b| {
            items[a..b]
                .iter()
                .map(|d| render_email(&sim, d, now))
                .collect()
        },
        "/API/v3/distributions",
        &q,
        100,
        100,
    )?;
    Ok(envelope::ok(page))
}

async fn get_email(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    let dists = sim.distributions.dists.read();
    let d = find(&dists, &id, false)?;
    check_survey_param(d, &q)?;
    Ok(envelope::ok(render_email(&sim, d, sim.clock.now_ms())))
}

async fn create_email(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:distributions")?;
    let m = parse_body(&body)?;
    let now = sim.clock.now_ms();
    let owner = caller.user.id.clone();
    let mut d = match opt_str(&m, "action")? {
        Some("CreateDistribution") => {
            // Generate individual links for a mailing list (no e-mail is sent).
            let sid = req_str(&m, "surveyId")?;
            let survey_def = survey_in_body(&sim, sid)?;
            let survey = &*survey_def;
            let link_type = req_str(&m, "linkType")?;
            one_of(link_type, LINK_TYPES, "linkType")?;
            let description = req_str(&m, "description")?;
            let exp = req_str(&m, "expirationDate")?;
            let exp_ms = parse_sql(exp).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Field 'expirationDate' must be 'YYYY-MM-DD HH:MM:SS'; got '{exp}'."
                ))
            })?;
            let ml = req_str(&m, "mailingListId")?;
            known_list(&sim, ml)?;
            let id = sim.distributions.next_id(sim.cfg.seed, "EMD");
            let mut d = blank(id, survey, &owner, "GeneratedInvite", now, now);
            d.modified_ms = now;
            d.link_type = link_type.into();
            d.link_expiration_ms = Some(exp_ms);
            d.recipients = Recipients {
                mailing_list_id: Some(ml.into()),
                library_id: Some(owner.clone()),
                ..Recipients::default()
            };
            d.description = Some(description.into());
            let members = sim.directory.mailing_list_members(ml);
            d.history = fresh_rows(&sim, &d, &members, "gl");
            d
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value for 'action': '{other}'. Use 'CreateDistribution' to generate links, or omit it to send e-mail."
            )));
        }
        None => {
            let header = parse_header(&m)?;
            let message = parse_message(&sim, &m, "invite")?;
            let link = req_obj(&m, "surveyLink")?;
            let sid = req_str(link, "surveyId").map_err(|_| {
                ApiError::bad_request("Missing required field 'surveyLink.surveyId'.")
            })?;
            let survey_def = survey_in_body(&sim, sid)?;
            let survey = &*survey_def;
            let link_type = opt_str(link, "type")?.unwrap_or("Individual");
            one_of(link_type, LINK_TYPES, "surveyLink.type")?;
            let exp = iso_field(link, "expirationDate", "surveyLink.expirationDate")?;
            let send = iso_field(&m, "sendDate", "sendDate")?
                .ok_or_else(|| ApiError::bad_request("Missing required field 'sendDate'."))?;
            let embedded = match m.get("embeddedData") {
                None | Some(Value::Null) => None,
                Some(Value::Object(o)) if o.values().all(Value::is_string) => {
                    Some(Value::Object(o.clone()))
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "Field 'embeddedData' must be an object of string values.",
                    ));
                }
            };
            let (recipients, members) = parse_recipients(&sim, &m, &owner)?;
            let id = sim.distributions.next_id(sim.cfg.seed, "EMD");
            let mut d = blank(id, survey, &owner, "Invite", send, now);
            d.modified_ms = now;
            d.header = header;
            d.message = message;
            d.link_type = link_type.into();
            d.link_expiration_ms = exp;
            d.embedded = embedded;
            d.recipients = recipients;
            d.history = fresh_rows(&sim, &d, &members, "email");
            d
        }
    };
    d.deleted = false;
    let id = d.id.clone();
    record_sent(&sim, &d);
    sim.distributions.dists.write().push(d);
    Ok(envelope::ok(json!({"id": id})))
}

/// Every recipient of an e-mail sent through the API gets an entry in its contact's e-mail
/// history (`…/contacts/{id}/history?type=email`), as Qualtrics records every send. Generated
/// links send nothing and record nothing.
fn record_sent(sim: &SharedSim, d: &Distribution) {
    if d.request_type == "GeneratedInvite" {
        return;
    }
    let Some(ml) = d.recipients.mailing_list_id.as_deref() else {
        return;
    };
    let Some((dir, _)) = sim
        .directory
        .mailing_lists()
        .into_iter()
        .find(|(_, id)| id == ml)
    else {
        return;
    };
    for row in &d.history {
        sim.directory.record_email_history(
            &dir,
            &row.member.contact_id,
            crate::qualtrics::directory::EmailHistoryEntry {
                distribution_id: d.id.clone(),
                survey_id: Some(d.survey_id.clone()),
                mailing_list_id: Some(ml.to_string()),
                email_type: d.request_type.clone(),
                // The directory's history speaks of `Sent` where a distribution row says `Success`.
                status: match row.status {
                    "Success" => "Sent".to_string(),
                    other => other.to_string(),
                },
                date_ms: d.send_ms,
            },
        );
    }
}

async fn create_reminder(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:distributions")?;
    let m = parse_body(&body)?;
    let header = parse_header(&m)?;
    let message = parse_message(&sim, &m, "reminder")?;
    let send = iso_field(&m, "sendDate", "sendDate")?
        .ok_or_else(|| ApiError::bad_request("Missing required field 'sendDate'."))?;
    let now = sim.clock.now_ms();
    let parent = {
        let dists = sim.distributions.dists.read();
        find(&dists, &id, false)?.clone()
    };
    if parent.request_type != "Invite" {
        return Err(ApiError::bad_request(format!(
            "Reminders can only follow an Invite distribution; '{id}' is a {}.",
            parent.request_type
        )));
    }
    let survey_def = sim.survey(&parent.survey_id)?;
    let survey = &*survey_def;
    let new_id = sim.distributions.next_id(sim.cfg.seed, "EMD");
    let mut d = blank(
        new_id.clone(),
        survey,
        &caller.user.id,
        "Reminder",
        send,
        now,
    );
    d.modified_ms = now;
    d.parent_id = Some(parent.id.clone());
    d.header = header;
    d.message = message;
    d.recipients = parent.recipients.clone();
    d.link_type = parent.link_type.clone();
    d.link_expiration_ms = parent.link_expiration_ms;
    // Remind those who have not started the survey yet (as of now).
    let members: Vec<ListMember> = parent
        .history
        .iter()
        .map(|r| effective(r, &parent, now))
        .filter(|r| matches!(r.status, "Success" | "Opened" | "Pending"))
        .map(|r| r.member)
        .collect();
    d.history = fresh_rows(&sim, &d, &members, "email");
    sim.distributions.dists.write().push(d);
    Ok(envelope::ok(json!({"distributionId": new_id})))
}

async fn links(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    let d = {
        let dists = sim.distributions.dists.read();
        find(&dists, &id, false)?.clone()
    };
    check_survey_param(&d, &q)?;
    if d.link_type != "Individual" {
        return Err(ApiError::bad_request(format!(
            "Distribution '{id}' uses {} links; only Individual links are listed per contact.",
            d.link_type
        )));
    }
    let now = sim.clock.now_ms();
    let exp = d.link_expiration_ms.map(sql);
    let page = paging::skip_token_page(
        d.history.len(),
        |a, b| {
            d.history[a..b]
                .iter()
                .map(|row| {
                    let r = effective(row, &d, now);
                    json!({
                        "contactId": r.member.contact_id, "transactionId": null,
                        "link": r.survey_link, "exceededContactFrequency": false,
                        "linkExpiration": exp, "status": r.status,
                        "lastName": r.member.last_name, "firstName": r.member.first_name,
                        "externalDataReference": r.member.ext_ref, "email": r.member.email,
                        "unsubscribed": false,
                    })
                })
                .collect()
        },
        &format!("/API/v3/distributions/{id}/links"),
        &q,
        100,
        100,
    )?;
    Ok(envelope::ok(page))
}

fn history_page(
    sim: &SharedSim,
    id: &str,
    q: &BTreeMap<String, String>,
    sms: bool,
    path: &str,
) -> ApiResult {
    let d = {
        let dists = sim.distributions.dists.read();
        find(&dists, id, sms)?.clone()
    };
    let now = sim.clock.now_ms();
    let page = paging::skip_token_page(
        d.history.len(),
        |a, b| {
            d.history[a..b]
                .iter()
                .map(|r| render_row(r, &d, now))
                .collect()
        },
        path,
        q,
        100,
        100,
    )?;
    Ok(envelope::ok(page))
}

async fn history_email(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    history_page(
        &sim,
        &id,
        &q,
        false,
        &format!("/API/v3/distributions/{id}/history"),
    )
}

async fn delete_email(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("write:distributions")?;
    let mut dists = sim.distributions.dists.write();
    let d = dists
        .iter_mut()
        .find(|d| d.id == id && !d.deleted && !d.is_sms())
        .ok_or_else(|| ApiError::not_found(format!("Distribution '{id}' was not found.")))?;
    d.deleted = true;
    // Drop the rows: a deleted distribution can no longer be read, so they are dead weight.
    d.history = Vec::new();
    Ok(envelope::ok_empty())
}

// ---------------------------------------------------------------------------------------------
// Handlers: SMS distributions

async fn list_sms(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    let items = filtered(&sim, &q, true)?;
    let now = sim.clock.now_ms();
    let page = paging::skip_token_page(
        items.len(),
        |a, b| {
            items[a..b]
                .iter()
                .map(|d| render_sms(&sim, d, now))
                .collect()
        },
        "/API/v3/distributions/sms",
        &q,
        100,
        100,
    )?;
    Ok(envelope::ok(page))
}

async fn get_sms(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    let dists = sim.distributions.dists.read();
    let d = find(&dists, &id, true)?;
    Ok(envelope::ok(render_sms(&sim, d, sim.clock.now_ms())))
}

async fn history_sms(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("read:distributions")?;
    history_page(
        &sim,
        &id,
        &q,
        true,
        &format!("/API/v3/distributions/sms/{id}/history"),
    )
}

async fn create_sms(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:distributions")?;
    let m = parse_body(&body)?;
    let name = req_str(&m, "name")?;
    let sid = req_str(&m, "surveyId")?;
    let survey_def = survey_in_body(&sim, sid)?;
    let survey = &*survey_def;
    let method = req_str(&m, "method")?;
    one_of(method, SMS_METHODS, "method")?;
    let message = parse_message(&sim, &m, "smsInvite")?;
    let send = iso_field(&m, "sendDate", "sendDate")?
        .ok_or_else(|| ApiError::bad_request("Missing required field 'sendDate'."))?;
    let owner = caller.user.id.clone();
    let (recipients, members) = parse_recipients(&sim, &m, &owner)?;
    let now = sim.clock.now_ms();
    let id = sim.distributions.next_id(sim.cfg.seed, "SMSD");
    let mut d = blank(id.clone(), survey, &owner, method, send, now);
    d.modified_ms = now;
    d.sms_name = Some(name.into());
    d.message = message;
    d.recipients = recipients;
    d.history = fresh_rows(&sim, &d, &members, "sms");
    sim.distributions.dists.write().push(d);
    Ok(envelope::ok(json!({"id": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_consistent_times() {
        let cfg = SimConfig::default();
        let users = super::super::account::seed_users(&cfg);
        let surveys = super::super::survey::seed_surveys(&cfg, &users);
        let libs = LibraryState::new(&cfg, &users, &surveys);
        let mut d = blank(
            "EMD_x".into(),
            &surveys[0],
            "UR_x",
            "Invite",
            cfg.start_ms,
            0,
        );
        d.survey_id = surveys[0].id.clone();
        let m = ListMember {
            contact_id: "CID_1".into(),
            contact_lookup_id: "CGC_1".into(),
            first_name: "A".into(),
            last_name: "B".into(),
            email: "a@b.test".into(),
            ext_ref: "x".into(),
        };
        let mut r = Rng::new(1);
        for (status, _) in INVITE_OUTCOMES {
            let row = make_row(&cfg, &mut r, &d, &surveys[0], &m, status, "email");
            assert_eq!(row.response_id.is_some(), row.completed_ms.is_some());
            if let (Some(s), Some(c)) = (row.started_ms, row.completed_ms) {
                assert!(c > s);
            }
            assert_eq!(row.sent_ms.is_none(), not_sent(status));
        }
        assert!(libs.first_message(&users[0].id, "invite").is_some());
    }
}
