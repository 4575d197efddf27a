//! Survey responses: generated on demand from the seed, plus an overlay of API changes.
//!
//! A seeded response is a pure function of (survey, index), so a million-response survey costs no
//! memory: exports and single gets regenerate what they need. Responses created, updated or deleted
//! through the API live in the [`ResponseStore`] overlay, each stamped with a change sequence
//! number; continuation tokens remember the sequence they were issued at, so an export after a
//! token returns exactly the responses recorded or changed since. This module owns the response
//! record and its key grammar (docs/design/qualtrics-api.md §6.4 export records, §7 single
//! responses); it does not know about export jobs, zips or file formats (see `export`).

use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::survey::{Question, QuestionKind, Survey};
use super::{SharedSim, Sim};
use crate::clock::{MS_PER_DAY, iso, iso_millis, sql};
use crate::rng::{Rng, mix};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Router};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// One response as the API shows it (`GET /surveys/{sid}/responses/{rid}` and export rows).
#[derive(Clone, Debug)]
pub struct ResponseRecord {
    /// The response id (`R_…`).
    pub id: String,
    pub(crate) recorded_ms: i64,
    pub(crate) last_modified_ms: i64,
    /// Whether the respondent completed the survey.
    pub finished: bool,
    /// Answers and metadata keyed by export key (`QID1`, `QID2_1`, `startDate` …), as recoded values.
    pub values: Map<String, Value>,
    /// The same keys with choice labels instead of recoded values.
    pub labels: Map<String, Value>,
    pub(crate) displayed_fields: Vec<String>,
    pub(crate) displayed_values: Map<String, Value>,
}

impl ResponseRecord {
    /// The record in the JSON export / single-response shape.
    pub fn to_json(&self) -> Value {
        json!({
            "responseId": self.id,
            "values": self.values,
            "labels": self.labels,
            "displayedFields": self.displayed_fields,
            "displayedValues": self.displayed_values,
        })
    }

    /// Writes the JSON shape straight into `out` (the export hot path; avoids building a `Value`).
    pub fn write_json<W: std::io::Write>(&self, out: &mut W) -> std::io::Result<()> {
        out.write_all(b"{\"responseId\":")?;
        serde_json::to_writer(&mut *out, &self.id)?;
        out.write_all(b",\"values\":")?;
        serde_json::to_writer(&mut *out, &self.values)?;
        out.write_all(b",\"labels\":")?;
        serde_json::to_writer(&mut *out, &self.labels)?;
        out.write_all(b",\"displayedFields\":")?;
        serde_json::to_writer(&mut *out, &self.displayed_fields)?;
        out.write_all(b",\"displayedValues\":")?;
        serde_json::to_writer(&mut *out, &self.displayed_values)?;
        out.write_all(b"}")
    }
}

// ---------------------------------------------------------------------------------------------
// Response ids: `R_` + 15 alphanumerics that encode (survey, index) reversibly, so a single-response
// GET can regenerate a seeded response without any lookup table.

const ID_MUL: u64 = 0x9E37_79B9_7F4A_7C15 | 1;
const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn mul_inverse(a: u64) -> u64 {
    // Newton's iteration for the inverse of an odd number modulo 2^64.
    let mut x = a;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

fn id_key(seed: u64) -> u64 {
    mix(seed ^ 0x1D5)
}

/// The id of seeded response `index` of survey `survey_idx` (`R_` plus 15 characters), the same for the same seed.
pub fn encode_response_id(seed: u64, survey_idx: usize, index: u64) -> String {
    let v = ((survey_idx as u64) << 40) | (index & ((1 << 40) - 1));
    let w = (v ^ id_key(seed)).wrapping_mul(ID_MUL);
    let mut digits = [b'0'; 11];
    let mut n = w;
    for d in digits.iter_mut().rev() {
        *d = B62[(n % 62) as usize];
        n /= 62;
    }
    let mut check = Rng::new(w ^ seed);
    format!(
        "R_{}{}",
        check.alnum(4),
        std::str::from_utf8(&digits).unwrap_or_default()
    )
}

/// `(survey index, response index)` of an id this simulator issued.
pub fn decode_response_id(seed: u64, id: &str) -> Option<(usize, u64)> {
    let body = id.strip_prefix("R_")?;
    if body.len() != 15 || !body.is_ascii() {
        return None;
    }
    let (check, digits) = body.split_at(4);
    let mut w: u64 = 0;
    for c in digits.bytes() {
        let d = B62.iter().position(|b| *b == c)? as u64;
        w = w.checked_mul(62)?.checked_add(d)?;
    }
    if Rng::new(w ^ seed).alnum(4) != check {
        return None;
    }
    let v = w.wrapping_mul(mul_inverse(ID_MUL)) ^ id_key(seed);
    Some(((v >> 40) as usize, v & ((1 << 40) - 1)))
}

// ---------------------------------------------------------------------------------------------
// Generation

const FIRST: &[&str] = &[
    "Ana", "Bo", "Chiara", "Dmitri", "Eve", "Farah", "Gus", "Hana", "Íñigo", "Jo", "Kwame", "Léa",
];
const LAST: &[&str] = &[
    "Silva", "O'Brien", "Nguyen", "Müller", "Okoro", "Rossi", "Tanaka", "García", "Smith", "Dubois",
];
const TEXTS: &[&str] = &[
    "Great service, thank you!",
    "The app crashes when I upload a file.",
    "Too expensive for what it does.",
    "Support was quick; the \"fix\" worked.",
    "N/A",
    "Livraison rapide, très satisfait.",
    "Muy buena atención 👍",
    "Line one\nline two, with a comma",
    "I'd like an API; also; semicolons",
    "SELECT * FROM responses; -- just kidding",
];

/// Spread of seeded recorded dates: the year before the simulator's start instant.
fn recorded_window(sim: &Sim) -> (i64, i64) {
    (sim.cfg.history_start_ms(), sim.cfg.start_ms - 60_000)
}

/// Recorded date of seeded response `index`: non-decreasing in the index, so date windows map
/// to index ranges.
pub fn seeded_recorded_ms(sim: &Sim, survey: &Survey, index: u64) -> i64 {
    let (from, to) = recorded_window(sim);
    let n = survey.responses.max(1) as i128;
    let span = (to - from) as i128;
    let base = from as i128 + span * index as i128 / n;
    let step = (span / n).max(1) as u64;
    let jitter = Rng::derive(survey.seed, &[index, 0x7EC]).below(step) as i128;
    (base + jitter) as i64
}

/// First seeded index whose recorded date is ≥ `ms`.
pub fn first_index_at_or_after(sim: &Sim, survey: &Survey, ms: i64) -> u64 {
    let (mut lo, mut hi) = (0u64, survey.responses);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if seeded_recorded_ms(sim, survey, mid) < ms {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn set(map: &mut Map<String, Value>, k: impl Into<String>, v: Value) {
    map.insert(k.into(), v);
}

struct Builder<'a> {
    values: Map<String, Value>,
    labels: Map<String, Value>,
    displayed_fields: Vec<String>,
    displayed_values: Map<String, Value>,
    r: &'a mut Rng,
}

impl Builder<'_> {
    fn coded(&mut self, key: String, recode: i64, label: &str, domain: Value) {
        self.displayed_values.insert(key.clone(), domain);
        set(&mut self.values, key.clone(), json!(recode));
        set(&mut self.labels, key, json!(label));
    }

    fn question(&mut self, q: &Question, prefix: &str, answer: bool) {
        use QuestionKind::*;
        let base = format!("{prefix}{}", q.qid);
        let recodes =
            |cs: &[super::survey::Choice]| json!(cs.iter().map(|c| c.recode).collect::<Vec<_>>());
        match q.kind {
            McSingle => {
                self.displayed_fields.push(base.clone());
                if !answer {
                    self.displayed_values.insert(base, recodes(&q.choices));
                    return;
                }
                let c = self.r.pick(&q.choices).clone();
                self.coded(base.clone(), c.recode, &c.text, recodes(&q.choices));
                if c.text_entry {
                    set(
                        &mut self.values,
                        format!("{base}_{}_TEXT", c.id),
                        json!(*self.r.pick(TEXTS)),
                    );
                }
            }
            Nps => {
                self.displayed_fields.push(base.clone());
                self.displayed_fields.push(format!("{base}_NPS_GROUP"));
                self.displayed_values
                    .insert(base.clone(), json!((0..=10).collect::<Vec<_>>()));
                if !answer {
                    return;
                }
                // Spread over detractors, passives and promoters.
                let v =
                    [0, 2, 4, 5, 6, 6, 7, 7, 8, 8, 9, 9, 9, 10, 10, 10][self.r.below(16) as usize];
                let (group, label) = match v {
                    0..=6 => (1, "Detractor"),
                    7..=8 => (2, "Passive"),
                    _ => (3, "Promoter"),
                };
                set(&mut self.values, base.clone(), json!(v));
                set(&mut self.labels, base.clone(), json!(v.to_string()));
                set(&mut self.values, format!("{base}_NPS_GROUP"), json!(group));
                set(&mut self.labels, format!("{base}_NPS_GROUP"), json!(label));
            }
            McMulti => {
                self.displayed_fields.push(base.clone());
                if !answer {
                    return;
                }
                let mut picked: Vec<&super::survey::Choice> =
                    q.choices.iter().filter(|_| self.r.chance(0.35)).collect();
                if picked.is_empty() {
                    picked.push(&q.choices[0]);
                }
                set(
                    &mut self.values,
                    base.clone(),
                    json!(picked.iter().map(|c| c.id.to_string()).collect::<Vec<_>>()),
                );
                set(
                    &mut self.labels,
                    base.clone(),
                    json!(picked.iter().map(|c| c.text.clone()).collect::<Vec<_>>()),
                );
                if let Some(other) = picked.iter().find(|c| c.text_entry) {
                    set(
                        &mut self.values,
                        format!("{base}_{}_TEXT", other.id),
                        json!(*self.r.pick(TEXTS)),
                    );
                }
            }
            MatrixLikert => {
                for row in &q.choices {
                    let key = format!("{base}_{}", row.id);
                    self.displayed_fields.push(key.clone());
                    if answer && self.r.chance(0.95) {
                        let a = self.r.pick(&q.answers).clone();
                        self.coded(key, a.recode, &a.text, recodes(&q.answers));
                    }
                }
            }
            TextSingle => {
                let key = format!("{base}_TEXT");
                self.displayed_fields.push(key.clone());
                if answer && self.r.chance(0.7) {
                    set(&mut self.values, key, json!(*self.r.pick(TEXTS)));
                }
            }
            TextForm => {
                for field in &q.choices {
                    let key = format!("{base}_{}", field.id);
                    self.displayed_fields.push(key.clone());
                    if answer {
                        let text = match field.id {
                            1 => format!("{} {}", self.r.pick(FIRST), self.r.pick(LAST)),
                            2 => ["Acme Corp", "Globex", "Initech", "Umbrella; Ltd"]
                                [self.r.below(4) as usize]
                                .to_string(),
                            _ => ["Lisbon", "Zürich", "Osaka", "Lagos", "Austin"]
                                [self.r.below(5) as usize]
                                .to_string(),
                        };
                        set(&mut self.values, key, json!(text));
                    }
                }
            }
            Slider => {
                for st in &q.choices {
                    let key = format!("{base}_{}", st.id);
                    self.displayed_fields.push(key.clone());
                    if answer {
                        set(&mut self.values, key, json!(self.r.range(0, 100)));
                    }
                }
            }
            RankOrder => {
                let mut ranks: Vec<i64> = (1..=q.choices.len() as i64).collect();
                self.r.shuffle(&mut ranks);
                for (item, rank) in q.choices.iter().zip(ranks) {
                    let key = format!("{base}_{}", item.id);
                    self.displayed_fields.push(key.clone());
                    if answer {
                        set(&mut self.values, key, json!(rank));
                    }
                }
            }
            SideBySide => {
                for col in &q.sbs_columns {
                    for row in &q.choices {
                        let key = format!("{base}#{}_{}", col.id, row.id);
                        self.displayed_fields.push(key.clone());
                        if answer {
                            let a = self.r.pick(&col.answers).clone();
                            self.coded(key, a.recode, &a.text, recodes(&col.answers));
                        }
                    }
                }
            }
        }
    }
}

/// Builds a response's answers and metadata. `answered_fraction` < 1 leaves the tail of the
/// survey unanswered (in-progress responses).
fn build_record(
    sim: &Sim,
    survey: &Survey,
    id: String,
    r: &mut Rng,
    recorded_ms: i64,
    finished: bool,
    embedded_override: Option<&Map<String, Value>>,
) -> ResponseRecord {
    let progress = if finished { 100 } else { r.range(5, 90) };
    let duration = r.range(35, 1800);
    let end_ms = recorded_ms - r.range(0, 900);
    let start_ms = end_ms - duration * 1000;
    let channel = *r.pick(&["anonymous", "email", "email", "sms", "anonymous"]);
    let mut values = Map::new();
    set(&mut values, "startDate", json!(iso(start_ms)));
    set(&mut values, "endDate", json!(iso(end_ms)));
    set(
        &mut values,
        "status",
        json!(if r.chance(0.03) { 4 } else { 0 }),
    );
    set(
        &mut values,
        "ipAddress",
        json!(format!("203.0.113.{}", r.range(1, 254))),
    );
    set(&mut values, "progress", json!(progress));
    set(&mut values, "duration", json!(duration));
    set(&mut values, "finished", json!(i64::from(finished)));
    set(&mut values, "recordedDate", json!(iso_millis(recorded_ms)));
    set(&mut values, "_recordId", json!(id));
    set(
        &mut values,
        "locationLatitude",
        json!(format!("{:.4}", r.range(-6000, 6000) as f64 / 100.0)),
    );
    set(
        &mut values,
        "locationLongitude",
        json!(format!("{:.4}", r.range(-17000, 17000) as f64 / 100.0)),
    );
    set(&mut values, "distributionChannel", json!(channel));
    set(
        &mut values,
        "userLanguage",
        json!(*r.pick(&["EN", "EN", "EN", "FR", "ES", "DE"])),
    );
    if channel == "email" {
        let first = *r.pick(FIRST);
        let last = *r.pick(LAST);
        set(&mut values, "recipientLastName", json!(last));
        set(&mut values, "recipientFirstName", json!(first));
        set(
            &mut values,
            "recipientEmail",
            json!(format!(
                "{}.{}@example.test",
                first.to_lowercase(),
                r.alnum(4).to_lowercase()
            )),
        );
        set(
            &mut values,
            "externalDataReference",
            json!(format!("crm-{}", r.range(1000, 99999))),
        );
    }
    let mut labels = Map::new();
    set(
        &mut labels,
        "status",
        json!(if values["status"] == json!(4) {
            "Imported"
        } else {
            "IP Address"
        }),
    );
    set(
        &mut labels,
        "finished",
        json!(if finished { "True" } else { "False" }),
    );

    let mut b = Builder {
        values,
        labels,
        displayed_fields: Vec::new(),
        displayed_values: Map::new(),
        r,
    };
    let live: Vec<&Question> = survey.live_questions().collect();
    let answered_upto = if finished {
        live.len()
    } else {
        (live.len() as i64 * progress / 100) as usize
    };
    for (pos, q) in live.iter().enumerate() {
        let answer = pos < answered_upto && (q.force_response || b.r.chance(0.9));
        if q.in_loop {
            for n in 1..=survey.loop_items().len() {
                b.question(q, &format!("{n}_"), answer);
            }
        } else {
            b.question(q, "", answer);
        }
    }
    let Builder {
        mut values,
        labels,
        displayed_fields,
        displayed_values,
        r,
    } = b;
    for f in &survey.embedded {
        let v = match embedded_override.and_then(|o| o.get(&f.name)) {
            Some(v) => Some(v.clone()),
            None if f.values.is_empty() => Some(json!(format!("A-{}", r.range(10_000, 99_999)))),
            None => Some(json!(r.pick(&f.values).clone())),
        };
        if let Some(v) = v {
            values.insert(f.name.clone(), v);
        }
    }
    // Embedded data set through the API on fields the survey flow does not declare.
    if let Some(o) = embedded_override {
        for (k, v) in o {
            if !values.contains_key(k) {
                values.insert(k.clone(), v.clone());
            }
        }
    }
    let _ = sim;
    ResponseRecord {
        id,
        recorded_ms,
        last_modified_ms: recorded_ms,
        finished,
        values,
        labels,
        displayed_fields,
        displayed_values,
    }
}

/// Seeded response `index` of `survey` (before any API change). Always generated from the
/// survey as seeded: a question or field added later through `/_sim` is not in old responses.
pub fn seeded_response(sim: &Sim, survey: &Survey, index: u64) -> ResponseRecord {
    let survey = sim.surveys.get(survey.idx).unwrap_or(survey);
    let mut r = Rng::derive(survey.seed, &[index, 0x8E5]);
    let recorded_ms = seeded_recorded_ms(sim, survey, index);
    let finished = !r.chance(0.06);
    let id = encode_response_id(sim.cfg.seed, survey.idx, index);
    build_record(sim, survey, id, &mut r, recorded_ms, finished, None)
}

/// A new finished response generated from the survey's *current* definition (so it answers
/// questions and carries embedded data fields added through `/_sim`), recorded now. Returns its id.
pub fn generate_response(sim: &Sim, survey: &Survey) -> String {
    let index = sim.responses.next_created_index(survey);
    let id = encode_response_id(sim.cfg.seed, survey.idx, index);
    let mut r = Rng::derive(survey.seed, &[index, 0x6E4]);
    let now = sim.clock.now_ms();
    let rec = build_record(sim, survey, id.clone(), &mut r, now, true, None);
    sim.responses
        .record(&survey.id, &id, Change::Upsert(Box::new(rec)));
    id
}

// ---------------------------------------------------------------------------------------------
// The overlay of API changes

/// A change made through the API.
#[derive(Clone, Debug)]
pub enum Change {
    /// Created or updated: the record as it now is.
    Upsert(Box<ResponseRecord>),
    /// Deleted.
    Deleted,
}

#[derive(Clone, Debug)]
/// The latest change of one response and when it happened.
pub struct ChangeEntry {
    /// The change sequence number: a global counter, higher is later.
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

#[derive(Default, Debug)]
struct Overlay {
    seq: u64,
    /// survey id → response id → latest change
    by_survey: HashMap<String, BTreeMap<String, ChangeEntry>>,
    /// survey id → number of responses created through the API (their indices follow the seeded ones)
    created: HashMap<String, u64>,
}

#[derive(Default, Debug)]
/// The responses changed through the API, as an overlay over the seeded ones (which are never stored).
pub struct ResponseStore {
    inner: Mutex<Overlay>,
}

/// A frozen view of one survey's API changes, taken when an export starts.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The change sequence at the time of the snapshot (what a continuation token remembers).
    pub seq: u64,
    /// Response id → latest change, for this survey.
    pub changes: BTreeMap<String, ChangeEntry>,
}

impl ResponseStore {
    /// The current changes of survey `survey_id`, frozen.
    pub fn snapshot(&self, survey_id: &str) -> Snapshot {
        let o = self.inner.lock();
        Snapshot {
            seq: o.seq,
            changes: o.by_survey.get(survey_id).cloned().unwrap_or_default(),
        }
    }

    /// Runs `f` on survey `survey_id`'s current changes without copying them (a snapshot copies
    /// every changed record: per request, that made 5,000 edits after 10,000 created responses
    /// take tens of minutes).
    pub fn with_changes<R>(
        &self,
        survey_id: &str,
        f: impl FnOnce(Option<&BTreeMap<String, ChangeEntry>>) -> R,
    ) -> R {
        let o = self.inner.lock();
        f(o.by_survey.get(survey_id))
    }

    fn record(&self, survey_id: &str, response_id: &str, change: Change) -> u64 {
        let mut o = self.inner.lock();
        o.seq += 1;
        let seq = o.seq;
        o.by_survey
            .entry(survey_id.to_string())
            .or_default()
            .insert(response_id.to_string(), ChangeEntry { seq, change });
        seq
    }

    fn next_created_index(&self, survey: &Survey) -> u64 {
        let mut o = self.inner.lock();
        let n = o.created.entry(survey.id.clone()).or_insert(0);
        *n += 1;
        survey.responses + *n - 1
    }
}

/// What an export selects (docs/design/qualtrics-api.md §6.1, export start).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Inclusive lower bound on recordedDate (or lastModifiedDate with `by_last_modified`).
    pub start_ms: Option<i64>,
    /// Exclusive upper bound.
    pub end_ms: Option<i64>,
    /// `exportResponsesInProgress`: only in-progress responses instead of only recorded ones.
    pub in_progress_only: bool,
    /// `sortByLastModifiedDate`: dates filter on last-modified.
    pub by_last_modified: bool,
    /// Continuation: only responses created or changed after this change sequence.
    pub since_seq: Option<u64>,
    /// The most responses to return; `None` for all.
    pub limit: Option<u64>,
}

impl Selection {
    fn accepts(&self, r: &ResponseRecord) -> bool {
        if r.finished == self.in_progress_only {
            return false;
        }
        let t = if self.by_last_modified {
            r.last_modified_ms
        } else {
            r.recorded_ms
        };
        self.start_ms.is_none_or(|s| t >= s) && self.end_ms.is_none_or(|e| t < e)
    }
}

/// Calls `f` for every response of `survey` that `sel` selects, oldest first, as of `snap`.
/// Seeded responses are generated one at a time, so memory stays flat at any scale.
pub fn for_each_response<E>(
    sim: &Sim,
    survey: &Survey,
    snap: &Snapshot,
    sel: &Selection,
    mut f: impl FnMut(&ResponseRecord) -> Result<(), E>,
) -> Result<(), E> {
    let mut emitted = 0u64;
    let limit = sel.limit.unwrap_or(u64::MAX);
    let mut changed: Vec<&ResponseRecord> = snap
        .changes
        .values()
        .filter(|c| sel.since_seq.is_none_or(|s| c.seq > s))
        .filter_map(|c| match &c.change {
            Change::Upsert(r) => Some(r.as_ref()),
            Change::Deleted => None,
        })
        .filter(|r| sel.accepts(r))
        .collect();
    changed.sort_by_key(|r| (r.recorded_ms, r.id.clone()));
    if sel.since_seq.is_none() {
        // Seeded responses, skipping those the overlay replaced or deleted, merged by date with
        // responses created through the API.
        let from = match (sel.start_ms, sel.by_last_modified) {
            (Some(s), false) => first_index_at_or_after(sim, survey, s),
            _ => 0,
        };
        let mut pending = changed.into_iter().peekable();
        for index in from..survey.responses {
            if emitted >= limit {
                return Ok(());
            }
            let rec_ms = seeded_recorded_ms(sim, survey, index);
            if !sel.by_last_modified && sel.end_ms.is_some_and(|e| rec_ms >= e) {
                break;
            }
            while let Some(c) = pending.peek() {
                if c.recorded_ms <= rec_ms && emitted < limit {
                    f(c)?;
                    emitted += 1;
                    pending.next();
                } else {
                    break;
                }
            }
            let id = encode_response_id(sim.cfg.seed, survey.idx, index);
            if snap.changes.contains_key(&id) {
                continue; // replaced (emitted from `pending`) or deleted
            }
            let rec = seeded_response(sim, survey, index);
            if sel.accepts(&rec) {
                f(&rec)?;
                emitted += 1;
            }
        }
        for c in pending {
            if emitted >= limit {
                break;
            }
            f(c)?;
            emitted += 1;
        }
    } else {
        for c in changed {
            if emitted >= limit {
                break;
            }
            f(c)?;
            emitted += 1;
        }
    }
    Ok(())
}

/// The current state of one response, if it exists.
pub fn find_response(sim: &Sim, survey: &Survey, response_id: &str) -> Option<ResponseRecord> {
    let changed = sim.responses.with_changes(&survey.id, |changes| {
        changes
            .and_then(|c| c.get(response_id))
            .map(|c| match &c.change {
                Change::Upsert(r) => Some(r.as_ref().clone()),
                Change::Deleted => None,
            })
    });
    if let Some(found) = changed {
        return found;
    }
    let (s_idx, index) = decode_response_id(sim.cfg.seed, response_id)?;
    (s_idx == survey.idx && index < survey.responses).then(|| seeded_response(sim, survey, index))
}

// ---------------------------------------------------------------------------------------------
// Export columns (CSV/TSV): the three header rows and how each cell is read from a record.

/// How a CSV column reads its cell.
#[derive(Clone, Debug)]
pub enum Cell {
    /// `values[key]` (labels[key] with useLabels).
    Value(String),
    /// A date metadata field rendered `YYYY-MM-DD HH:MM:SS`.
    Date(String),
    /// Multi-select broken out: 1 if the choice id is among `values[key]`.
    Selected {
        /// The export key of the question (`QID3`).
        key: String,
        /// The choice id this column stands for.
        choice: String,
        /// The choice's label.
        label: String,
    },
    /// Multi-select not broken out: comma-joined choice ids (labels).
    Joined(String),
}

#[derive(Clone, Debug)]
/// One column of a CSV/TSV export, with its three header rows.
pub struct ExportColumn {
    /// Header row 1 (`Q1`, `Q2_1`, `StartDate`).
    pub name: String,
    /// Header row 2 (question text).
    pub text: String,
    /// Header row 3 (`{"ImportId":"QID1"}`).
    pub import_id: String,
    /// How a response fills the column.
    pub cell: Cell,
}

fn meta_col(name: &str, text: &str, key: &str, date: bool) -> ExportColumn {
    ExportColumn {
        name: name.into(),
        text: text.into(),
        import_id: json!({"ImportId": key}).to_string(),
        cell: if date {
            Cell::Date(key.into())
        } else {
            Cell::Value(key.into())
        },
    }
}

fn col(name: String, text: String, key: String) -> ExportColumn {
    ExportColumn {
        name,
        text,
        import_id: json!({"ImportId": key}).to_string(),
        cell: Cell::Value(key),
    }
}

/// The columns of a CSV/TSV export, in order (docs/design/qualtrics-api.md §6.5).
pub fn export_columns(survey: &Survey, breakout_sets: bool) -> Vec<ExportColumn> {
    use QuestionKind::*;
    let mut cols = vec![
        meta_col("StartDate", "Start Date", "startDate", true),
        meta_col("EndDate", "End Date", "endDate", true),
        meta_col("Status", "Response Type", "status", false),
        meta_col("IPAddress", "IP Address", "ipAddress", false),
        meta_col("Progress", "Progress", "progress", false),
        meta_col(
            "Duration (in seconds)",
            "Duration (in seconds)",
            "duration",
            false,
        ),
        meta_col("Finished", "Finished", "finished", false),
        meta_col("RecordedDate", "Recorded Date", "recordedDate", true),
        meta_col("ResponseId", "Response ID", "_recordId", false),
        meta_col(
            "RecipientLastName",
            "Recipient Last Name",
            "recipientLastName",
            false,
        ),
        meta_col(
            "RecipientFirstName",
            "Recipient First Name",
            "recipientFirstName",
            false,
        ),
        meta_col("RecipientEmail", "Recipient Email", "recipientEmail", false),
        meta_col(
            "ExternalReference",
            "External Data Reference",
            "externalDataReference",
            false,
        ),
        meta_col(
            "LocationLatitude",
            "Location Latitude",
            "locationLatitude",
            false,
        ),
        meta_col(
            "LocationLongitude",
            "Location Longitude",
            "locationLongitude",
            false,
        ),
        meta_col(
            "DistributionChannel",
            "Distribution Channel",
            "distributionChannel",
            false,
        ),
        meta_col("UserLanguage", "User Language", "userLanguage", false),
    ];
    let loops = survey.loop_items().len();
    for q in survey.live_questions() {
        let prefixes: Vec<(String, String)> = if q.in_loop {
            (1..=loops)
                .map(|n| (format!("{n}_"), format!("{n}_")))
                .collect()
        } else {
            vec![(String::new(), String::new())]
        };
        for (kp, np) in prefixes {
            let key = format!("{kp}{}", q.qid);
            let tag = format!("{np}{}", q.tag);
            match q.kind {
                McSingle => {
                    cols.push(col(tag.clone(), q.text.clone(), key.clone()));
                    for c in q.choices.iter().filter(|c| c.text_entry) {
                        cols.push(col(
                            format!("{tag}_{}_TEXT", c.id),
                            format!("{} - {} - Text", q.text, c.text),
                            format!("{key}_{}_TEXT", c.id),
                        ));
                    }
                }
                Nps => {
                    cols.push(col(tag.clone(), q.text.clone(), key.clone()));
                    cols.push(col(
                        format!("{tag}_NPS_GROUP"),
                        format!("{} - Group", q.text),
                        format!("{key}_NPS_GROUP"),
                    ));
                }
                McMulti => {
                    if breakout_sets {
                        for c in &q.choices {
                            cols.push(ExportColumn {
                                name: format!("{tag}_{}", c.id),
                                text: format!("{} - Selected Choice - {}", q.text, c.text),
                                import_id: json!({"ImportId": format!("{key}"), "choiceId": c.id.to_string()}).to_string(),
                                cell: Cell::Selected { key: key.clone(), choice: c.id.to_string(), label: c.text.clone() },
                            });
                        }
                    } else {
                        cols.push(ExportColumn {
                            name: tag.clone(),
                            text: format!("{} - Selected Choice", q.text),
                            import_id: json!({"ImportId": key}).to_string(),
                            cell: Cell::Joined(key.clone()),
                        });
                    }
                    for c in q.choices.iter().filter(|c| c.text_entry) {
                        cols.push(col(
                            format!("{tag}_{}_TEXT", c.id),
                            format!("{} - {} - Text", q.text, c.text),
                            format!("{key}_{}_TEXT", c.id),
                        ));
                    }
                }
                MatrixLikert | TextForm | Slider | RankOrder => {
                    for row in &q.choices {
                        cols.push(col(
                            format!("{tag}_{}", row.id),
                            format!("{} - {}", q.text, row.text),
                            format!("{key}_{}", row.id),
                        ));
                    }
                }
                TextSingle => cols.push(col(
                    format!("{tag}_TEXT"),
                    q.text.clone(),
                    format!("{key}_TEXT"),
                )),
                SideBySide => {
                    for c in &q.sbs_columns {
                        for row in &q.choices {
                            cols.push(col(
                                format!("{tag}#{}_{}", c.id, row.id),
                                format!("{} - {} - {}", q.text, c.text, row.text),
                                format!("{key}#{}_{}", c.id, row.id),
                            ));
                        }
                    }
                }
            }
        }
    }
    for f in &survey.embedded {
        cols.push(col(f.name.clone(), f.name.clone(), f.name.clone()));
    }
    cols
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

impl ExportColumn {
    /// The cell text for one record (recode values, or labels with `use_labels`).
    pub fn cell_text(&self, rec: &ResponseRecord, use_labels: bool) -> String {
        match &self.cell {
            Cell::Value(k) => {
                let v = if use_labels {
                    rec.labels.get(k).or_else(|| rec.values.get(k))
                } else {
                    rec.values.get(k)
                };
                v.map(scalar_text).unwrap_or_default()
            }
            Cell::Date(k) => rec
                .values
                .get(k)
                .and_then(|v| v.as_str())
                .and_then(crate::clock::parse_iso)
                .map(sql)
                .unwrap_or_default(),
            Cell::Selected { key, choice, label } => {
                let selected = rec
                    .values
                    .get(key)
                    .and_then(|v| v.as_array())
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(choice)));
                match (selected, use_labels) {
                    (true, true) => label.clone(),
                    (true, false) => "1".into(),
                    (false, _) => String::new(),
                }
            }
            Cell::Joined(k) => {
                let v = if use_labels {
                    rec.labels.get(k)
                } else {
                    rec.values.get(k)
                };
                v.map(scalar_text).unwrap_or_default()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes: single responses (docs/design/qualtrics-api.md §7)

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route(
            "/surveys/{sid}/responses",
            axum::routing::post(create_response),
        )
        .route(
            "/surveys/{sid}/responses/{rid}",
            get(get_response).delete(delete_response),
        )
        .route("/responses/{rid}", put(update_response))
        .route(
            "/surveys/{sid}/responses/{rid}/update",
            put(update_response_nested),
        )
}

async fn get_response(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((sid, rid)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:survey_responses")?;
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    let rec = find_response(&sim, survey, &rid).ok_or_else(|| {
        ApiError::not_found(format!("Response '{rid}' was not found in survey '{sid}'."))
    })?;
    // A response created a moment ago is not yet readable: Qualtrics answers 202 briefly.
    if sim.clock.now_ms() < rec.last_modified_ms + PROCESSING_MS
        && rec.recorded_ms > sim.cfg.start_ms
    {
        return Ok(envelope::ok_status(
            StatusCode::ACCEPTED,
            json!({"message": "The response is being processed. Try again in a moment."}),
        ));
    }
    Ok(envelope::ok(rec.to_json()))
}

/// How long a response created through the API answers 202 before it can be read.
const PROCESSING_MS: i64 = 300;

const METADATA_KEYS: &[&str] = &[
    "startDate",
    "endDate",
    "finished",
    "progress",
    "duration",
    "userLanguage",
    "distributionChannel",
    "locationLatitude",
    "locationLongitude",
];

async fn create_response(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:survey_responses")?;
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    let body = envelope::json_object(&body)?;
    for k in body.keys() {
        if k != "values" {
            return Err(ApiError::bad_request(format!(
                "Unknown field '{k}' in the request body; only 'values' is allowed."
            )));
        }
    }
    let values = match body.get("values") {
        Some(Value::Object(v)) => v.clone(),
        Some(_) => return Err(ApiError::bad_request("'values' must be an object.")),
        None => {
            return Err(ApiError::bad_request(
                "Missing required field 'values' (send {\"values\":{}} at least).",
            ));
        }
    };
    let index = sim.responses.next_created_index(survey);
    let id = encode_response_id(sim.cfg.seed, survey.idx, index);
    let now = sim.clock.now_ms();
    let finished = match values.get("finished") {
        None => true,
        Some(v) => match v.as_i64().or_else(|| v.as_bool().map(i64::from)) {
            Some(n) => n != 0,
            None => return Err(ApiError::bad_request("'values.finished' must be 0 or 1.")),
        },
    };
    // Start from an empty record and fill it with exactly what the caller sent.
    let mut r = Rng::derive(survey.seed, &[index, 0xC4E]);
    let mut rec = build_record(&sim, survey, id.clone(), &mut r, now, finished, None);
    rec.values.retain(|k, _| {
        [
            "startDate",
            "endDate",
            "status",
            "ipAddress",
            "progress",
            "duration",
            "finished",
            "recordedDate",
            "_recordId",
            "distributionChannel",
            "userLanguage",
        ]
        .contains(&k.as_str())
    });
    rec.labels.retain(|k, _| k == "status" || k == "finished");
    rec.values
        .insert("distributionChannel".into(), json!("anonymous"));
    for (k, v) in values {
        let known_question = k
            .strip_prefix("QID")
            .map(|rest| rest.split(['_', '#']).next().unwrap_or(""))
            .and_then(|n| survey.question(&format!("QID{n}")))
            .is_some()
            || k.split_once("_QID").is_some();
        if !(METADATA_KEYS.contains(&k.as_str())
            || known_question
            || survey.embedded.iter().any(|f| f.name == k))
        {
            return Err(ApiError::bad_request(format!(
                "Unknown field 'values.{k}': not a question of survey '{sid}', an embedded data field or an allowed metadata key."
            )));
        }
        rec.values.insert(k, v);
    }
    rec.recorded_ms = now;
    rec.last_modified_ms = now;
    rec.values
        .insert("recordedDate".into(), json!(iso_millis(now)));
    sim.responses
        .record(&survey.id, &id, Change::Upsert(Box::new(rec.clone())));
    if rec.finished {
        super::eventsubs::publish_completed_response(&sim, &survey.id, &id, now);
    }
    Ok(envelope::ok(json!({"responseId": id})))
}

async fn update_response(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(rid): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:survey_responses")?;
    let body = envelope::json_object(&body)?;
    let sid = match body.get("surveyId") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("'surveyId' must be a string.")),
        None => return Err(ApiError::bad_request("Missing required field 'surveyId'.")),
    };
    apply_update(&sim, &sid, &rid, &body)
}

/// The path form some secondary docs describe (docs/design/qualtrics-api.md §12 item 4, updating a
/// response); same semantics.
async fn update_response_nested(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((sid, rid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:survey_responses")?;
    let body = envelope::json_object(&body)?;
    apply_update(&sim, &sid, &rid, &body)
}

fn apply_update(sim: &SharedSim, sid: &str, rid: &str, body: &Map<String, Value>) -> ApiResult {
    for k in body.keys() {
        if !["surveyId", "resetRecordedDate", "embeddedData"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Unknown field '{k}'; allowed: surveyId, resetRecordedDate, embeddedData (only embedded data can be updated)."
            )));
        }
    }
    let reset = match body.get("resetRecordedDate") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "'resetRecordedDate' must be a boolean.",
            ));
        }
    };
    let embedded = match body.get("embeddedData") {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "'embeddedData' must be an object of field names to values.",
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "Missing required field 'embeddedData'.",
            ));
        }
    };
    let survey_def = sim.survey(sid)?;
    let survey = &*survey_def;
    let mut rec = find_response(sim, survey, rid).ok_or_else(|| {
        ApiError::not_found(format!("Response '{rid}' was not found in survey '{sid}'."))
    })?;
    for (k, v) in embedded {
        let v = match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => v,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "'embeddedData.{k}' must be a string, number or boolean."
                )));
            }
        };
        rec.values.insert(k, v);
    }
    let now = sim.clock.now_ms();
    // resetRecordedDate: true → now; false → recordedDate + 1 ms (§7).
    rec.recorded_ms = if reset { now } else { rec.recorded_ms + 1 };
    rec.last_modified_ms = now;
    rec.values
        .insert("recordedDate".into(), json!(iso_millis(rec.recorded_ms)));
    sim.responses
        .record(&survey.id, rid, Change::Upsert(Box::new(rec)));
    Ok(envelope::ok_empty())
}

async fn delete_response(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((sid, rid)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    caller.require_scope("write:survey_responses")?;
    if let Some(v) = q.get("decrementQuotas")
        && v != "true"
        && v != "false"
    {
        return Err(ApiError::bad_request(
            "'decrementQuotas' must be true or false.",
        ));
    }
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    if find_response(&sim, survey, &rid).is_none() {
        return Err(ApiError::not_found(format!(
            "Response '{rid}' was not found in survey '{sid}'."
        )));
    }
    sim.responses.record(&survey.id, &rid, Change::Deleted);
    Ok(envelope::ok_empty())
}

/// Number of responses of a survey that currently exist (seeded + created − deleted), and how
/// many were deleted: `responseCounts` of `GET /surveys/{id}`.
pub fn counts(sim: &Sim, survey: &Survey) -> (u64, u64) {
    sim.responses.with_changes(&survey.id, |changes| {
        let mut live = survey.responses;
        let mut deleted = 0;
        for (id, c) in changes.into_iter().flatten() {
            let seeded =
                decode_response_id(sim.cfg.seed, id).is_some_and(|(_, i)| i < survey.responses);
            match (&c.change, seeded) {
                (Change::Deleted, true) => {
                    live -= 1;
                    deleted += 1;
                }
                (Change::Deleted, false) => deleted += 1,
                (Change::Upsert(_), false) => live += 1,
                (Change::Upsert(_), true) => {}
            }
        }
        (live, deleted)
    })
}

/// Seeded history spans this many days; exported for docs and tests.
pub const HISTORY_DAYS: i64 = 365;
const _: i64 = MS_PER_DAY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_round_trip() {
        for (s, i) in [(0usize, 0u64), (3, 999_999), (12, 1 << 39)] {
            let id = encode_response_id(7, s, i);
            assert_eq!(id.len(), 17, "{id}");
            assert!(id[2..].chars().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(decode_response_id(7, &id), Some((s, i)));
            assert_eq!(decode_response_id(8, &id), None);
        }
        assert_eq!(decode_response_id(7, "R_nope"), None);
    }
}
