//! Bulk response export (docs/design/qualtrics-api.md §6.1–6.5): start → poll → download, plus the
//! survey filters an export can name (`GET /surveys/{sid}/filters`).
//!
//! This module owns export jobs, continuation tokens, the export file formats (JSON, NDJSON,
//! CSV, TSV, zipped or raw) and the temp files that hold finished exports. It reads responses only
//! through `responses` (`snapshot`, `for_each_response`, `export_columns`) and never changes them.
//! A job streams records from a snapshot into a temp file on a blocking thread, so memory stays
//! flat for any number of responses; downloads stream the file back in chunks.
//! Choices the contract left open are written down in `docs/simulator/export.md`.

use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::responses::{
    Cell, ExportColumn, ResponseRecord, Selection, Snapshot, export_columns, for_each_response,
};
use super::survey::{QuestionKind, Survey};
use super::{SharedSim, Sim};
use crate::clock::{MS_PER_DAY, iso};
use crate::rng::Rng;
use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Export files and continuation tokens live one week of simulated time (§6.1, §6.3).
pub const TTL_MS: i64 = 7 * MS_PER_DAY;

// ---------------------------------------------------------------------------------------------
// Fault hooks (switches of `/_sim/faults`).

/// Every new export job ends `failed`.
fn fault_fail_exports(sim: &Sim) -> bool {
    sim.faults.fail_exports()
}

/// Downloads serve only the first half of the file.
fn fault_truncate_zip(sim: &Sim) -> bool {
    sim.faults.truncate_zip()
}

// ---------------------------------------------------------------------------------------------
// State

/// Export jobs and finished export files of one brand.
#[derive(Debug, Default)]
pub struct ExportStore {
    counter: AtomicU64,
    jobs: Mutex<HashMap<String, Job>>,
    files: Mutex<HashMap<String, ExportFile>>,
}

#[derive(Debug)]
struct Job {
    survey_id: String,
    started: Instant,
    delay: Duration,
    progress: Arc<JobProgress>,
    /// Issued with the job when `allowContinuation` or `continuationToken` was sent.
    continuation_token: Option<String>,
}

#[derive(Debug, Default)]
struct JobProgress {
    /// Percent complete × 10 (so 43.7 % is 437).
    per_mille: AtomicU64,
    outcome: Mutex<Outcome>,
}

#[derive(Debug, Default, Clone)]
enum Outcome {
    #[default]
    Running,
    Written {
        file_id: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

#[derive(Debug)]
struct ExportFile {
    survey_id: String,
    /// An unnamed temporary file: the system frees it with its last handle, so a simulator
    /// that is killed (as the bench and the tests stop theirs) leaves no export behind in the
    /// temp directory — named files did, about 1 GB per 1,000,000-response bench.
    file: Arc<std::fs::File>,
    len: u64,
    content_type: &'static str,
    download_name: String,
    expires_ms: i64,
}

impl ExportStore {
    /// Forgets (and deletes) export files whose week has passed.
    fn sweep(&self, now_ms: i64) {
        self.files.lock().retain(|_, f| f.expires_ms > now_ms);
    }

    fn next_n(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst)
    }

    /// Number of export files currently on disk (for tests and the admin API).
    pub fn file_count(&self) -> usize {
        self.files.lock().len()
    }
}

// ---------------------------------------------------------------------------------------------
// Filters (GET /surveys/{sid}/filters)

/// A saved response filter. The simulator's filters keep finished responses of one
/// distribution channel.
#[derive(Clone, Debug)]
pub struct Filter {
    /// The filter id (a UUID derived from the seed).
    pub id: String,
    /// Its name as shown in the Qualtrics UI.
    pub name: String,
    pub(crate) creation_ms: i64,
    /// The distribution channel it keeps: `email` or `anonymous`.
    pub channel: &'static str,
}

/// The seeded filters of a survey: one or two, derived from the seed.
pub fn survey_filters(sim: &Sim, survey: &Survey) -> Vec<Filter> {
    let defs: &[(&str, &str)] = if survey.idx.is_multiple_of(2) {
        &[
            ("Finished email responses", "email"),
            ("Finished anonymous-link responses", "anonymous"),
        ]
    } else {
        &[("Finished email responses", "email")]
    };
    defs.iter()
        .enumerate()
        .map(|(i, (name, channel))| Filter {
            id: Rng::derive(sim.cfg.seed, &[0xF117, survey.idx as u64, i as u64]).uuid(),
            name: (*name).to_string(),
            creation_ms: survey.creation_ms + (i as i64 + 1) * MS_PER_DAY,
            channel,
        })
        .collect()
}

async fn list_filters(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
) -> ApiResult {
    caller.require_scope("read:survey_responses")?;
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    let elements: Vec<Value> = survey_filters(&sim, survey)
        .into_iter()
        .map(
            |f| json!({"filterId": f.id, "filterName": f.name, "creationDate": iso(f.creation_ms)}),
        )
        .collect();
    Ok(envelope::ok(
        json!({"elements": elements, "nextPage": null}),
    ))
}

// ---------------------------------------------------------------------------------------------
// Request parsing (§6.1)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// The file format of a response export (`format` in the request).
pub enum Format {
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// One JSON document with a `responses` array.
    Json,
    /// One JSON response per line.
    Ndjson,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Tsv => "text/tab-separated-values; charset=utf-8",
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    fn is_json(self) -> bool {
        matches!(self, Format::Json | Format::Ndjson)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int,
    Str,
    StrArray,
    Date,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::Str => "a string",
            Kind::StrArray => "an array of strings",
            Kind::Date => "an ISO-8601 date-time string with offset (e.g. 2025-01-01T00:00:00Z)",
        }
    }
}

/// Every body parameter of §6.1 and its JSON type. Names are case-sensitive.
const FIELDS: &[(&str, Kind)] = &[
    ("format", Kind::Str),
    ("startDate", Kind::Date),
    ("endDate", Kind::Date),
    ("limit", Kind::Int),
    ("useLabels", Kind::Bool),
    ("includeLabelColumns", Kind::Bool),
    ("breakoutSets", Kind::Bool),
    ("compress", Kind::Bool),
    ("formatDecimalAsComma", Kind::Bool),
    ("seenUnansweredRecode", Kind::Int),
    ("multiselectSeenUnansweredRecode", Kind::Int),
    ("includeDisplayOrder", Kind::Bool),
    ("newlineReplacement", Kind::Str),
    ("timeZone", Kind::Str),
    ("exportResponsesInProgress", Kind::Bool),
    ("filterId", Kind::Str),
    ("questionIds", Kind::StrArray),
    ("embeddedDataIds", Kind::StrArray),
    ("surveyMetadataIds", Kind::StrArray),
    ("allowContinuation", Kind::Bool),
    ("continuationToken", Kind::Str),
    ("sortByLastModifiedDate", Kind::Bool),
];

/// Parameters JSON and NDJSON exports refuse (§6.1).
const JSON_REJECT: &[&str] = &[
    "includeDisplayOrder",
    "useLabels",
    "formatDecimalAsComma",
    "seenUnansweredRecode",
    "multiselectSeenUnansweredRecode",
    "timeZone",
    "newlineReplacement",
    "breakoutSets",
];

/// Metadata fields as they appear in response `values`.
const META_KEYS: &[&str] = &[
    "startDate",
    "endDate",
    "status",
    "ipAddress",
    "progress",
    "duration",
    "finished",
    "recordedDate",
    "_recordId",
    "locationLatitude",
    "locationLongitude",
    "recipientLastName",
    "recipientFirstName",
    "recipientEmail",
    "externalDataReference",
    "distributionChannel",
    "userLanguage",
];

/// The export request after validation.
#[derive(Clone, Debug)]
struct ExportRequest {
    format: Format,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    limit: Option<u64>,
    use_labels: bool,
    include_label_columns: bool,
    breakout_sets: bool,
    compress: bool,
    decimal_comma: bool,
    seen_recode: Option<i64>,
    multi_seen_recode: Option<i64>,
    include_display_order: bool,
    newline_replacement: Option<String>,
    time_zone: Tz,
    in_progress: bool,
    filter_channel: Option<&'static str>,
    question_ids: Option<HashSet<String>>,
    embedded_ids: Option<HashSet<String>>,
    metadata_ids: Option<HashSet<String>>,
    allow_continuation: bool,
    /// The change sequence of a valid `continuationToken`.
    since_seq: Option<u64>,
    sort_by_last_modified: bool,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_type(name: &str, kind: Kind, v: &Value) -> Result<(), ApiError> {
    let ok = match kind {
        Kind::Bool => v.is_boolean(),
        Kind::Int => v.is_i64() || v.is_u64(),
        Kind::Str => v.is_string(),
        Kind::StrArray => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Kind::Date => v.as_str().is_some_and(|s| parse_date(s).is_some()),
    };
    if ok {
        return Ok(());
    }
    let got = match (kind, v) {
        (Kind::StrArray, Value::Array(_)) => "an array with a non-string element".to_string(),
        (Kind::Date, Value::String(s)) => format!("'{s}'"),
        _ => type_name(v).to_string(),
    };
    Err(bad(format!(
        "Invalid value for '{name}': expected {}, got {got}.",
        kind.describe()
    )))
}

/// ISO-8601 date-time with an explicit offset (`Z` or `±HH:MM`).
fn parse_date(s: &str) -> Option<i64> {
    crate::clock::parse_iso(s)
}

fn parse_request(sim: &Sim, survey: &Survey, body: &Bytes) -> Result<ExportRequest, ApiError> {
    let body: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad("The request body must be a JSON object.")),
        Err(e) => return Err(bad(format!("The request body is not valid JSON: {e}"))),
    };
    for (k, v) in &body {
        match FIELDS.iter().find(|(n, _)| n == k) {
            Some((name, kind)) => check_type(name, *kind, v)?,
            None => {
                let hint = FIELDS
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(n, _)| format!(" (parameters are case-sensitive: did you mean '{n}'?)"))
                    .unwrap_or_default();
                return Err(bad(format!(
                    "Unknown parameter '{k}'{hint}. Allowed: {}.",
                    FIELDS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    let flag = |k: &str, default: bool| body.get(k).and_then(Value::as_bool).unwrap_or(default);
    let string = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let int = |k: &str| body.get(k).and_then(Value::as_i64);
    let strings = |k: &str| {
        body.get(k).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };

    let format = match string("format").as_deref() {
        None => {
            return Err(bad(
                "Missing required parameter 'format' (one of csv, tsv, json, ndjson, spss, xml).",
            ));
        }
        Some("csv") => Format::Csv,
        Some("tsv") => Format::Tsv,
        Some("json") => Format::Json,
        Some("ndjson") => Format::Ndjson,
        Some(f @ ("spss" | "xml")) => {
            return Err(bad(format!(
                "Invalid value for 'format': '{f}' is not supported by the simulator (use csv, tsv, json or ndjson)."
            )));
        }
        Some(f) => {
            return Err(bad(format!(
                "Invalid value for 'format': '{f}'; expected one of csv, tsv, json, ndjson, spss, xml."
            )));
        }
    };
    if format.is_json() {
        let rejected: Vec<&str> = JSON_REJECT
            .iter()
            .copied()
            .filter(|k| body.contains_key(*k))
            .collect();
        if !rejected.is_empty() {
            return Err(bad(format!(
                "Parameter(s) {} cannot be used with format '{}'.",
                rejected
                    .iter()
                    .map(|k| format!("'{k}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format.ext()
            )));
        }
    }

    let start_ms = string("startDate").and_then(|s| parse_date(&s));
    let end_ms = string("endDate").and_then(|s| parse_date(&s));
    if let (Some(s), Some(e)) = (start_ms, end_ms)
        && s >= e
    {
        return Err(bad("'startDate' must be before 'endDate'."));
    }
    let limit = match body.get("limit") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            _ => {
                return Err(bad(
                    "Invalid value for 'limit': expected a positive integer.",
                ));
            }
        },
    };
    let use_labels = flag("useLabels", false);
    let include_label_columns = flag("includeLabelColumns", false);
    if use_labels && include_label_columns {
        return Err(bad(
            "'includeLabelColumns' cannot be used together with 'useLabels'.",
        ));
    }
    let allow_continuation = flag("allowContinuation", false);
    let token = string("continuationToken");
    let sort_by_last_modified = flag("sortByLastModifiedDate", false);
    if allow_continuation && token.is_some() {
        return Err(bad(
            "'allowContinuation' cannot be used together with 'continuationToken'.",
        ));
    }
    let filter_id = string("filterId");
    if filter_id.is_some() {
        for (k, set) in [
            ("allowContinuation", allow_continuation),
            ("continuationToken", token.is_some()),
            ("sortByLastModifiedDate", sort_by_last_modified),
        ] {
            if set {
                return Err(bad(format!(
                    "'filterId' cannot be used together with '{k}'."
                )));
            }
        }
    }
    let filter_channel = match &filter_id {
        None => None,
        Some(id) => Some(
            survey_filters(sim, survey)
                .into_iter()
                .find(|f| f.id == *id)
                .map(|f| f.channel)
                .ok_or_else(|| {
                    bad(format!(
                        "Invalid value for 'filterId': filter '{id}' does not exist in survey '{}' (see GET /surveys/{}/filters).",
                        survey.id, survey.id
                    ))
                })?,
        ),
    };
    let since_seq = match &token {
        None => None,
        Some(t) => Some(verify_token(sim, &survey.id, t)?),
    };

    let question_ids = match strings("questionIds") {
        None => None,
        Some(ids) => {
            for q in &ids {
                if survey.question(q).is_none() {
                    return Err(bad(format!(
                        "Invalid value in 'questionIds': '{q}' is not a question of survey '{}'.",
                        survey.id
                    )));
                }
            }
            Some(ids.into_iter().collect())
        }
    };
    let embedded_ids = match strings("embeddedDataIds") {
        None => None,
        Some(ids) => {
            for f in &ids {
                if !survey.embedded.iter().any(|e| e.name == *f) {
                    return Err(bad(format!(
                        "Invalid value in 'embeddedDataIds': '{f}' is not an embedded data field of survey '{}'.",
                        survey.id
                    )));
                }
            }
            Some(ids.into_iter().collect())
        }
    };
    let metadata_ids = match strings("surveyMetadataIds") {
        None => None,
        Some(ids) => {
            let mut set = HashSet::new();
            for m in ids {
                let key = if m == "externalReference" {
                    "externalDataReference".to_string()
                } else {
                    m
                };
                if !META_KEYS.contains(&key.as_str()) {
                    return Err(bad(format!(
                        "Invalid value in 'surveyMetadataIds': '{key}'; allowed: {}, externalReference.",
                        META_KEYS.join(", ")
                    )));
                }
                set.insert(key);
            }
            Some(set)
        }
    };
    let time_zone = match string("timeZone") {
        None => Tz::Fixed(0),
        Some(name) => Tz::parse(&name).ok_or_else(|| {
            bad(format!(
                "Invalid value for 'timeZone': '{name}' is not a time zone the simulator knows (UTC, Etc/GMT±N, ±HH:MM, or a common IANA zone such as America/Chicago or Europe/Berlin)."
            ))
        })?,
    };
    Ok(ExportRequest {
        format,
        start_ms,
        end_ms,
        limit,
        use_labels,
        include_label_columns,
        breakout_sets: flag("breakoutSets", true),
        compress: flag("compress", true),
        decimal_comma: flag("formatDecimalAsComma", false),
        seen_recode: int("seenUnansweredRecode"),
        multi_seen_recode: int("multiselectSeenUnansweredRecode"),
        include_display_order: flag("includeDisplayOrder", false),
        newline_replacement: string("newlineReplacement"),
        time_zone,
        in_progress: flag("exportResponsesInProgress", false),
        filter_channel,
        question_ids,
        embedded_ids,
        metadata_ids,
        allow_continuation,
        since_seq,
        sort_by_last_modified,
    })
}

// ---------------------------------------------------------------------------------------------
// Time zones without a tz database: fixed offsets plus the US and EU daylight-saving rules, which
// cover the zones clients actually send. Unknown names are refused rather than silently rendered
// in UTC.

#[derive(Clone, Copy, Debug)]
enum Tz {
    /// Offset in seconds east of UTC.
    Fixed(i32),
    /// US rules: standard offset; DST from the second Sunday of March 02:00 local to the first
    /// Sunday of November 02:00 local.
    Us(i32),
    /// EU rules: standard offset; DST from the last Sunday of March 01:00 UTC to the last Sunday of
    /// October 01:00 UTC.
    Eu(i32),
}

const ZONES: &[(&str, char, i32)] = &[
    ("America/New_York", 'U', -5 * 3600),
    ("America/Detroit", 'U', -5 * 3600),
    ("America/Toronto", 'U', -5 * 3600),
    ("America/Chicago", 'U', -6 * 3600),
    ("America/Denver", 'U', -7 * 3600),
    ("America/Los_Angeles", 'U', -8 * 3600),
    ("America/Vancouver", 'U', -8 * 3600),
    ("America/Anchorage", 'U', -9 * 3600),
    ("America/Phoenix", 'F', -7 * 3600),
    ("Pacific/Honolulu", 'F', -10 * 3600),
    ("America/Sao_Paulo", 'F', -3 * 3600),
    ("America/Bogota", 'F', -5 * 3600),
    ("Europe/London", 'E', 0),
    ("Europe/Dublin", 'E', 0),
    ("Europe/Lisbon", 'E', 0),
    ("Europe/Paris", 'E', 3600),
    ("Europe/Berlin", 'E', 3600),
    ("Europe/Madrid", 'E', 3600),
    ("Europe/Rome", 'E', 3600),
    ("Europe/Amsterdam", 'E', 3600),
    ("Europe/Brussels", 'E', 3600),
    ("Europe/Vienna", 'E', 3600),
    ("Europe/Zurich", 'E', 3600),
    ("Europe/Stockholm", 'E', 3600),
    ("Europe/Oslo", 'E', 3600),
    ("Europe/Copenhagen", 'E', 3600),
    ("Europe/Warsaw", 'E', 3600),
    ("Europe/Prague", 'E', 3600),
    ("Europe/Helsinki", 'E', 2 * 3600),
    ("Europe/Athens", 'E', 2 * 3600),
    ("Europe/Kyiv", 'E', 2 * 3600),
    ("Europe/Bucharest", 'E', 2 * 3600),
    ("Africa/Lagos", 'F', 3600),
    ("Africa/Johannesburg", 'F', 2 * 3600),
    ("Asia/Dubai", 'F', 4 * 3600),
    ("Asia/Kolkata", 'F', 5 * 3600 + 1800),
    ("Asia/Singapore", 'F', 8 * 3600),
    ("Asia/Shanghai", 'F', 8 * 3600),
    ("Asia/Hong_Kong", 'F', 8 * 3600),
    ("Asia/Tokyo", 'F', 9 * 3600),
    ("Asia/Seoul", 'F', 9 * 3600),
];

impl Tz {
    fn parse(name: &str) -> Option<Tz> {
        if matches!(name, "UTC" | "GMT" | "Etc/UTC" | "Etc/GMT" | "Z") {
            return Some(Tz::Fixed(0));
        }
        // POSIX-style Etc zones have inverted signs: Etc/GMT+5 is UTC−5.
        if let Some(rest) = name.strip_prefix("Etc/GMT") {
            let (sign, digits) = rest.split_at(1.min(rest.len()));
            let h: i32 = digits.parse().ok().filter(|h| *h <= 14)?;
            return match sign {
                "+" => Some(Tz::Fixed(-h * 3600)),
                "-" => Some(Tz::Fixed(h * 3600)),
                _ => None,
            };
        }
        if let Some(off) = parse_offset(name) {
            return Some(Tz::Fixed(off));
        }
        ZONES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, rule, off)| match rule {
                'U' => Tz::Us(*off),
                'E' => Tz::Eu(*off),
                _ => Tz::Fixed(*off),
            })
    }

    fn offset_secs(self, utc_ms: i64) -> i32 {
        use chrono::{Datelike, NaiveDate, TimeZone, Utc, Weekday};
        let year = Utc
            .timestamp_millis_opt(utc_ms)
            .single()
            .map(|d| d.year())
            .unwrap_or(1970);
        let nth_sunday =
            |month: u32, n: u8| NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, n);
        let last_sunday = |month: u32| nth_sunday(month, 5).or_else(|| nth_sunday(month, 4));
        let at = |d: Option<NaiveDate>, secs_utc: i64| {
            d.and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp_millis() + secs_utc * 1000)
                .unwrap_or(i64::MIN)
        };
        match self {
            Tz::Fixed(o) => o,
            Tz::Us(std) => {
                let start = at(nth_sunday(3, 2), 2 * 3600 - std as i64);
                let end = at(nth_sunday(11, 1), 3600 - std as i64);
                if utc_ms >= start && utc_ms < end {
                    std + 3600
                } else {
                    std
                }
            }
            Tz::Eu(std) => {
                let start = at(last_sunday(3), 3600);
                let end = at(last_sunday(10), 3600);
                if utc_ms >= start && utc_ms < end {
                    std + 3600
                } else {
                    std
                }
            }
        }
    }

    /// `YYYY-MM-DD HH:MM:SS` in this zone.
    fn sql(self, utc_ms: i64) -> String {
        crate::clock::sql(utc_ms + self.offset_secs(utc_ms) as i64 * 1000)
    }
}

/// `+02:00`, `-05:30` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h: i32 = s.get(1..3)?.parse().ok()?;
    let m: i32 = s.get(4..6)?.parse().ok()?;
    (h <= 14 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

// ---------------------------------------------------------------------------------------------
// Continuation tokens: base64url("{surveyId}:{seq}:{issuedMs}:{mac}"), mac = first 12 bytes of
// HMAC-SHA256 under a key derived from the seed. Opaque to clients, checkable without state.

fn token_mac(seed: u64, payload: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let key = Rng::derive(seed, &[0xC0_71]).hex(64);
    match Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mut m) => {
            m.update(payload.as_bytes());
            hex::encode(&m.finalize().into_bytes()[..12])
        }
        Err(_) => String::new(),
    }
}

fn issue_token(sim: &Sim, survey_id: &str, seq: u64, issued_ms: i64) -> String {
    let payload = format!("{survey_id}:{seq}:{issued_ms}");
    let mac = token_mac(sim.cfg.seed, &payload);
    URL_SAFE_NO_PAD.encode(format!("{payload}:{mac}"))
}

/// The change sequence a token was issued at, or the 400 that explains why it cannot be used.
fn verify_token(sim: &Sim, survey_id: &str, token: &str) -> Result<u64, ApiError> {
    let invalid = || {
        bad(
            "Invalid value for 'continuationToken': the token is unknown (not issued by this brand, or corrupted).",
        )
    };
    let raw = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (payload, mac) = raw.rsplit_once(':').ok_or_else(invalid)?;
    if token_mac(sim.cfg.seed, payload) != mac {
        return Err(invalid());
    }
    let mut parts = payload.splitn(3, ':');
    let (Some(sid), Some(seq), Some(issued)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let seq: u64 = seq.parse().map_err(|_| invalid())?;
    let issued: i64 = issued.parse().map_err(|_| invalid())?;
    if sid != survey_id {
        return Err(bad(format!(
            "Invalid value for 'continuationToken': the token was issued for survey '{sid}', not '{survey_id}'."
        )));
    }
    if sim.clock.now_ms() - issued > TTL_MS {
        return Err(bad(format!(
            "Invalid value for 'continuationToken': the token expired on {} (tokens are valid for one week); run a full export with 'allowContinuation' to get a new one.",
            iso(issued + TTL_MS)
        )));
    }
    Ok(seq)
}

// ---------------------------------------------------------------------------------------------
// Routes

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/surveys/{sid}/export-responses", post(start_export))
        .route(
            "/surveys/{sid}/export-responses/{pid}",
            get(export_progress),
        )
        .route(
            "/surveys/{sid}/export-responses/{fid}/file",
            get(export_file),
        )
        .route("/surveys/{sid}/filters", get(list_filters))
}

async fn start_export(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("read:survey_responses")?;
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    let req = parse_request(&sim, survey, &body)?;
    let now = sim.clock.now_ms();
    sim.exports.sweep(now);
    let snap = sim.responses.snapshot(&survey.id);
    let n = sim.exports.next_n();
    let progress_id = format!("ES_{}", Rng::derive(sim.cfg.seed, &[0xE5, n]).alnum(15));
    let file_id = format!("{}-def", Rng::derive(sim.cfg.seed, &[0xE5F, n]).uuid());
    let continuation_token = (req.allow_continuation || req.since_seq.is_some())
        .then(|| issue_token(&sim, &survey.id, snap.seq, now));
    let progress = Arc::new(JobProgress::default());
    sim.exports.jobs.lock().insert(
        progress_id.clone(),
        Job {
            survey_id: survey.id.clone(),
            started: Instant::now(),
            delay: Duration::from_millis(sim.cfg.export_delay_ms),
            progress: progress.clone(),
            continuation_token,
        },
    );
    if fault_fail_exports(&sim) {
        *progress.outcome.lock() = Outcome::Failed {
            code: "EXPORT_FAULT".into(),
            message: "The export failed (simulated fault 'fail_exports').".into(),
        };
    } else {
        let sim2 = sim.clone();
        let survey_idx = survey.idx;
        tokio::task::spawn_blocking(move || {
            run_job(&sim2, survey_idx, &req, &snap, &progress, file_id, now);
        });
    }
    Ok(envelope::ok(json!({
        "progressId": progress_id,
        "percentComplete": 0.0,
        "status": "inProgress",
    })))
}

async fn export_progress(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((sid, pid)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:survey_responses")?;
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    let jobs = sim.exports.jobs.lock();
    let job = jobs
        .get(&pid)
        .filter(|j| j.survey_id == survey.id)
        .ok_or_else(|| {
            ApiError::not_found(format!("Export '{pid}' was not found for survey '{sid}'."))
        })?;
    let outcome = job.progress.outcome.lock().clone();
    let delay_over = job.started.elapsed() >= job.delay;
    let pct = job.progress.per_mille.load(Ordering::SeqCst) as f64 / 10.0;
    let mut result = Map::new();
    match outcome {
        // Written but the configured delay has not passed: 100 % yet still inProgress without a
        // fileId — the real API does this too (§13 item 2), clients must wait for `complete`.
        Outcome::Written { file_id } if delay_over => {
            result.insert("percentComplete".into(), json!(100.0));
            result.insert("status".into(), json!("complete"));
            result.insert("fileId".into(), json!(file_id));
            if let Some(t) = &job.continuation_token {
                result.insert("continuationToken".into(), json!(t));
            }
        }
        Outcome::Failed { code, message } if delay_over => {
            result.insert("percentComplete".into(), json!(pct));
            result.insert("status".into(), json!("failed"));
            result.insert(
                "error".into(),
                json!({"errorCode": code, "errorMessage": message}),
            );
        }
        _ => {
            result.insert("percentComplete".into(), json!(pct));
            result.insert("status".into(), json!("inProgress"));
        }
    }
    Ok(envelope::ok(Value::Object(result)))
}

async fn export_file(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((sid, fid)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:survey_responses")?;
    let survey_def = sim.survey(&sid)?;
    let survey = &*survey_def;
    sim.exports.sweep(sim.clock.now_ms());
    let not_found = || {
        ApiError::not_found(format!(
            "Export file '{fid}' was not found for survey '{sid}' (files expire one week after the export completed)."
        ))
    };
    let (file, len, content_type, name) = {
        let files = sim.exports.files.lock();
        let f = files
            .get(&fid)
            .filter(|f| f.survey_id == survey.id)
            .ok_or_else(not_found)?;
        // A handle of its own keeps the data readable even if the entry expires mid-download.
        (
            Arc::clone(&f.file),
            f.len,
            f.content_type,
            f.download_name.clone(),
        )
    };
    let len = if fault_truncate_zip(&sim) {
        len / 2
    } else {
        len
    };
    let stream = file_stream(file, len);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Reads the first `len` bytes of `file` in 64 KiB chunks, each at its own offset (downloads of
/// one file share its handle, not a read position).
fn file_stream(
    file: Arc<std::fs::File>,
    len: u64,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    use std::os::unix::fs::FileExt as _;
    futures_util::stream::unfold((file, 0u64), move |(file, at)| async move {
        if at >= len {
            return None;
        }
        let want = usize::try_from((len - at).min(64 * 1024)).unwrap_or(64 * 1024);
        let reader = Arc::clone(&file);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let n = reader.read_at(&mut buf, at)?;
            buf.truncate(n);
            Ok::<_, io::Error>(buf)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match read {
            Ok(buf) if buf.is_empty() => None,
            Ok(buf) => {
                let next = at + buf.len() as u64;
                Some((Ok(Bytes::from(buf)), (file, next)))
            }
            // The stream ends after an error.
            Err(e) => Some((Err(e), (file, len))),
        }
    })
}

/// `attachment; filename="ascii fallback"; filename*=UTF-8''percent-encoded`.
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded =
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// The survey name as a file name (no path separators).
fn file_stem(survey: &Survey) -> String {
    survey.name.replace(['/', '\\'], "_")
}

// ---------------------------------------------------------------------------------------------
// The job

enum Stop {
    Limit,
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

fn run_job(
    sim: &SharedSim,
    survey_idx: usize,
    req: &ExportRequest,
    snap: &Snapshot,
    progress: &JobProgress,
    file_id: String,
    started_ms: i64,
) {
    let Some(survey_def) = sim.survey_at(survey_idx) else {
        return;
    };
    let survey = &*survey_def;
    match write_export(sim, survey, req, snap, progress, started_ms) {
        Ok((file, len)) => {
            let stem = file_stem(survey);
            let ext = if req.compress {
                "zip"
            } else {
                req.format.ext()
            };
            let content_type = if req.compress {
                "application/zip"
            } else {
                req.format.content_type()
            };
            let expires_ms = sim.clock.now_ms() + sim.cfg.export_delay_ms as i64 + TTL_MS;
            sim.exports.files.lock().insert(
                file_id.clone(),
                ExportFile {
                    survey_id: survey.id.clone(),
                    file,
                    len,
                    content_type,
                    download_name: format!("{stem}.{ext}"),
                    expires_ms,
                },
            );
            progress.per_mille.store(1000, Ordering::SeqCst);
            *progress.outcome.lock() = Outcome::Written { file_id };
        }
        Err(e) => {
            *progress.outcome.lock() = Outcome::Failed {
                code: "EXPORT_1".into(),
                message: format!("The export could not be written: {e}"),
            };
        }
    }
}

/// Fixed entry timestamp so the same seed gives byte-identical zips.
fn zip_time() -> zip::DateTime {
    zip::DateTime::from_date_and_time(2026, 1, 1, 0, 0, 0).unwrap_or_default()
}

fn write_export(
    sim: &Sim,
    survey: &Survey,
    req: &ExportRequest,
    snap: &Snapshot,
    progress: &JobProgress,
    started_ms: i64,
) -> io::Result<(Arc<std::fs::File>, u64)> {
    let tmp = tempfile::tempfile()?;
    let out = BufWriter::with_capacity(1 << 20, tmp.try_clone()?);
    if req.compress {
        let mut zw = zip::ZipWriter::new(out);
        // zip64 headers only when the entry might pass 4 GiB, so small exports stay plain zips.
        let big = survey.responses > 200_000 || snap.changes.len() > 200_000;
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .last_modified_time(zip_time())
            .unix_permissions(0o644)
            .large_file(big);
        let entry = format!("{}.{}", file_stem(survey), req.format.ext());
        zw.start_file(entry, opts).map_err(io::Error::other)?;
        {
            let mut w = BufWriter::with_capacity(256 * 1024, &mut zw);
            write_body(&mut w, sim, survey, req, snap, progress, started_ms)?;
            w.flush()?;
        }
        let mut out = zw.finish().map_err(io::Error::other)?;
        out.flush()?;
    } else {
        let mut out = out;
        write_body(&mut out, sim, survey, req, snap, progress, started_ms)?;
        out.flush()?;
    }
    let len = tmp.metadata()?.len();
    Ok((Arc::new(tmp), len))
}

fn write_body<W: Write>(
    w: &mut W,
    sim: &Sim,
    survey: &Survey,
    req: &ExportRequest,
    snap: &Snapshot,
    progress: &JobProgress,
    started_ms: i64,
) -> io::Result<()> {
    let sel = Selection {
        start_ms: req.start_ms,
        end_ms: req.end_ms,
        in_progress_only: req.in_progress,
        by_last_modified: req.sort_by_last_modified,
        since_seq: req.since_seq,
        // With a filter, records are dropped after selection, so the limit is counted here.
        limit: if req.filter_channel.is_none() {
            req.limit
        } else {
            None
        },
    };
    let meter = Meter::new(sim, req, snap, started_ms);
    let mut body = BodyWriter::new(survey, req);
    body.begin(w)?;
    let mut rows = 0u64;
    let res = for_each_response(sim, survey, snap, &sel, |rec| {
        if req.limit.is_some_and(|l| rows >= l) {
            return Err(Stop::Limit);
        }
        if let Some(ch) = req.filter_channel
            && (!rec.finished || rec.values.get("distributionChannel") != Some(&json!(ch)))
        {
            return Ok(());
        }
        body.record(w, rec)?;
        rows += 1;
        if rows.is_multiple_of(256) {
            progress
                .per_mille
                .store(meter.per_mille(rows, rec.recorded_ms), Ordering::Relaxed);
        }
        Ok(())
    });
    match res {
        Ok(()) | Err(Stop::Limit) => {}
        Err(Stop::Io(e)) => return Err(e),
    }
    body.end(w)
}

/// Estimates progress from how far through the date window (or the row limit) the job is.
struct Meter {
    lo: i64,
    hi: i64,
    limit: Option<u64>,
    /// Continuation exports: the number of changed responses is known exactly.
    changes: Option<u64>,
}

impl Meter {
    fn new(sim: &Sim, req: &ExportRequest, snap: &Snapshot, started_ms: i64) -> Meter {
        let lo = req.start_ms.unwrap_or(sim.cfg.history_start_ms());
        let hi = req.end_ms.unwrap_or(started_ms).max(lo + 1);
        let changes = req
            .since_seq
            .map(|s| snap.changes.values().filter(|c| c.seq > s).count() as u64);
        Meter {
            lo,
            hi,
            limit: req.limit,
            changes,
        }
    }

    /// Percent × 10, kept below 100 % until the file is written.
    fn per_mille(&self, rows: u64, recorded_ms: i64) -> u64 {
        let by_time = if self.changes.is_some() {
            0.0
        } else {
            (recorded_ms - self.lo) as f64 / (self.hi - self.lo) as f64
        };
        let by_rows = match (self.changes, self.limit) {
            (Some(c), _) if c > 0 => rows as f64 / c as f64,
            (_, Some(l)) => rows as f64 / l as f64,
            _ => 0.0,
        };
        (by_time.max(by_rows).clamp(0.0, 0.99) * 1000.0) as u64
    }
}

// ---------------------------------------------------------------------------------------------
// File formats

/// What a response key is, for `questionIds` / `embeddedDataIds` / `surveyMetadataIds`.
enum KeyClass<'a> {
    Meta(&'a str),
    Question(&'a str),
    Embedded(&'a str),
}

fn classify(key: &str) -> KeyClass<'_> {
    if META_KEYS.contains(&key) {
        return KeyClass::Meta(key);
    }
    // Loop & merge prefix `{n}_QID…`.
    let unlooped = match key.split_once('_') {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => key,
    };
    if let Some(rest) = unlooped.strip_prefix("QID") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            return KeyClass::Question(&unlooped[..3 + digits]);
        }
    }
    KeyClass::Embedded(key)
}

impl ExportRequest {
    fn keeps(&self, key: &str) -> bool {
        match classify(key) {
            KeyClass::Meta(k) => self.metadata_ids.as_ref().is_none_or(|s| s.contains(k)),
            KeyClass::Question(q) => self.question_ids.as_ref().is_none_or(|s| s.contains(q)),
            KeyClass::Embedded(e) => self.embedded_ids.as_ref().is_none_or(|s| s.contains(e)),
        }
    }

    fn restricts(&self) -> bool {
        self.question_ids.is_some() || self.embedded_ids.is_some() || self.metadata_ids.is_some()
    }
}

enum OutKind {
    Std(ExportColumn),
    Label(ExportColumn),
    LastModified,
    DisplayOrder { key: String, order: String },
}

struct OutCol {
    name: String,
    text: String,
    import_id: String,
    kind: OutKind,
}

fn cell_key(c: &Cell) -> &str {
    match c {
        Cell::Value(k) | Cell::Date(k) | Cell::Joined(k) => k,
        Cell::Selected { key, .. } => key,
    }
}

/// Whether a column holds coded answers (gets a label column with `includeLabelColumns`).
fn coded(survey: &Survey, cell: &Cell) -> bool {
    match cell {
        Cell::Selected { .. } | Cell::Joined(_) => true,
        Cell::Date(_) => false,
        Cell::Value(k) => {
            if k.ends_with("_TEXT") {
                return false;
            }
            match classify(k) {
                KeyClass::Question(q) => survey.question(q).is_some_and(|q| {
                    matches!(
                        q.kind,
                        QuestionKind::McSingle
                            | QuestionKind::Nps
                            | QuestionKind::MatrixLikert
                            | QuestionKind::SideBySide
                    )
                }),
                _ => false,
            }
        }
    }
}

fn csv_columns(survey: &Survey, req: &ExportRequest) -> Vec<OutCol> {
    let mut out = Vec::new();
    let mut do_done: HashSet<String> = HashSet::new();
    for c in export_columns(survey, req.breakout_sets) {
        let key = cell_key(&c.cell).to_string();
        if !req.keeps(&key) {
            continue;
        }
        let label = req.include_label_columns && coded(survey, &c.cell);
        out.push(OutCol {
            name: c.name.clone(),
            text: c.text.clone(),
            import_id: c.import_id.clone(),
            kind: OutKind::Std(c.clone()),
        });
        if label {
            out.push(OutCol {
                name: format!("{}_label", c.name),
                text: format!("{} - Label", c.text),
                import_id: json!({"ImportId": key, "labels": true}).to_string(),
                kind: OutKind::Label(c),
            });
        }
        if key == "recordedDate" && req.sort_by_last_modified {
            out.push(OutCol {
                name: "LastModifiedDate".into(),
                text: "Last Modified Date".into(),
                import_id: json!({"ImportId": "lastModifiedDate"}).to_string(),
                kind: OutKind::LastModified,
            });
        }
        // `{tag}_DO` after the last column of a multiple-choice question.
        if req.include_display_order
            && let KeyClass::Question(qid) = classify(&key)
            && let Some(q) = survey.question(qid)
            && matches!(q.kind, QuestionKind::McSingle | QuestionKind::McMulti)
            && !key.ends_with("_TEXT")
            && do_done.insert(key.clone())
        {
            let prefix = &key[..key.len() - qid.len()];
            out.push(OutCol {
                name: format!("{prefix}{}_DO", q.tag),
                text: format!("{} - Display Order", q.text),
                import_id: json!({"ImportId": format!("{key}_DO")}).to_string(),
                kind: OutKind::DisplayOrder {
                    key: key.clone(),
                    order: q
                        .choices
                        .iter()
                        .map(|c| c.id.to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                },
            });
        }
    }
    out
}

struct BodyWriter<'a> {
    req: &'a ExportRequest,
    cols: Vec<OutCol>,
    first: bool,
    line: String,
}

impl<'a> BodyWriter<'a> {
    fn new(survey: &'a Survey, req: &'a ExportRequest) -> Self {
        let cols = if req.format.is_json() {
            Vec::new()
        } else {
            csv_columns(survey, req)
        };
        BodyWriter {
            req,
            cols,
            first: true,
            line: String::new(),
        }
    }

    fn sep(&self) -> char {
        if self.req.format == Format::Tsv {
            '\t'
        } else {
            ','
        }
    }

    fn begin<W: Write>(&mut self, w: &mut W) -> io::Result<()> {
        match self.req.format {
            Format::Json => w.write_all(b"{\"responses\":["),
            Format::Ndjson => Ok(()),
            Format::Csv | Format::Tsv => {
                let rows: [Vec<String>; 3] = [
                    self.cols.iter().map(|c| c.name.clone()).collect(),
                    self.cols.iter().map(|c| c.text.clone()).collect(),
                    self.cols.iter().map(|c| c.import_id.clone()).collect(),
                ];
                for row in rows {
                    self.line.clear();
                    for (i, cell) in row.iter().enumerate() {
                        if i > 0 {
                            self.line.push(self.sep());
                        }
                        push_escaped(&mut self.line, cell, self.req);
                    }
                    self.line.push_str("\r\n");
                    w.write_all(self.line.as_bytes())?;
                }
                Ok(())
            }
        }
    }

    fn end<W: Write>(&mut self, w: &mut W) -> io::Result<()> {
        match self.req.format {
            Format::Json => w.write_all(b"]}"),
            _ => Ok(()),
        }
    }

    fn record<W: Write>(&mut self, w: &mut W, rec: &ResponseRecord) -> io::Result<()> {
        match self.req.format {
            Format::Json | Format::Ndjson => {
                if self.req.format == Format::Json && !self.first {
                    w.write_all(b",")?;
                }
                self.first = false;
                let rec = self.json_view(rec);
                rec.write_json(w)?;
                if self.req.format == Format::Ndjson {
                    w.write_all(b"\n")?;
                }
                Ok(())
            }
            Format::Csv | Format::Tsv => {
                let mut line = std::mem::take(&mut self.line);
                line.clear();
                for (i, col) in self.cols.iter().enumerate() {
                    if i > 0 {
                        line.push(self.sep());
                    }
                    let text = self.cell(col, rec);
                    push_escaped(&mut line, &text, self.req);
                }
                line.push_str("\r\n");
                let r = w.write_all(line.as_bytes());
                self.line = line;
                r
            }
        }
    }

    /// The record as JSON exports show it: restricted fields, plus `lastModifiedDate`.
    fn json_view<'r>(&self, rec: &'r ResponseRecord) -> Cow<'r, ResponseRecord> {
        if !self.req.restricts() && !self.req.sort_by_last_modified {
            return Cow::Borrowed(rec);
        }
        let mut r = rec.clone();
        if self.req.restricts() {
            r.values.retain(|k, _| self.req.keeps(k));
            r.labels.retain(|k, _| self.req.keeps(k));
            r.displayed_fields.retain(|k| self.req.keeps(k));
            r.displayed_values.retain(|k, _| self.req.keeps(k));
        }
        if self.req.sort_by_last_modified {
            r.values.insert(
                "lastModifiedDate".into(),
                json!(crate::clock::iso(rec.last_modified_ms)),
            );
        }
        Cow::Owned(r)
    }

    fn cell<'c>(&self, col: &'c OutCol, rec: &ResponseRecord) -> Cow<'c, str> {
        let req = self.req;
        let text: Cow<'c, str> = match &col.kind {
            OutKind::Std(ExportColumn {
                cell: Cell::Date(k),
                ..
            }) => Cow::Owned(
                rec.values
                    .get(k)
                    .and_then(Value::as_str)
                    .and_then(crate::clock::parse_iso)
                    .map(|ms| req.time_zone.sql(ms))
                    .unwrap_or_default(),
            ),
            OutKind::Std(c) => {
                let t = c.cell_text(rec, req.use_labels);
                if t.is_empty() {
                    Cow::Owned(self.seen_unanswered(&c.cell, rec).unwrap_or_default())
                } else {
                    Cow::Owned(t)
                }
            }
            OutKind::Label(c) => {
                let has_label = rec.labels.contains_key(cell_key(&c.cell));
                if has_label {
                    Cow::Owned(c.cell_text(rec, true))
                } else {
                    Cow::Borrowed("")
                }
            }
            OutKind::LastModified => Cow::Owned(req.time_zone.sql(rec.last_modified_ms)),
            OutKind::DisplayOrder { key, order } => {
                if rec.displayed_fields.iter().any(|f| f == key) {
                    Cow::Borrowed(order.as_str())
                } else {
                    Cow::Borrowed("")
                }
            }
        };
        if req.decimal_comma && text.contains('.') && text.parse::<f64>().is_ok() {
            return Cow::Owned(text.replace('.', ","));
        }
        text
    }

    /// The recode for a question that was shown but not answered, when the request set one.
    fn seen_unanswered(&self, cell: &Cell, rec: &ResponseRecord) -> Option<String> {
        let (recode, key) = match cell {
            Cell::Selected { key, .. } => (self.req.multi_seen_recode?, key),
            Cell::Value(k) | Cell::Joined(k) => (self.req.seen_recode?, k),
            Cell::Date(_) => return None,
        };
        if !matches!(classify(key), KeyClass::Question(_)) {
            return None;
        }
        rec.displayed_fields
            .iter()
            .any(|f| f == key)
            .then(|| recode.to_string())
    }
}

/// Appends one cell: CSV quotes per RFC 4180; TSV escapes backslash, tab, CR and LF.
fn push_escaped(line: &mut String, text: &str, req: &ExportRequest) {
    let replaced;
    let text = match &req.newline_replacement {
        Some(r) if text.contains(['\n', '\r']) => {
            replaced = text.replace("\r\n", r).replace(['\n', '\r'], r);
            replaced.as_str()
        }
        _ => text,
    };
    if req.format == Format::Tsv {
        for c in text.chars() {
            match c {
                '\\' => line.push_str("\\\\"),
                '\t' => line.push_str("\\t"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                c => line.push(c),
            }
        }
    } else if text.contains([',', '"', '\n', '\r']) {
        line.push('"');
        for c in text.chars() {
            if c == '"' {
                line.push('"');
            }
            line.push(c);
        }
        line.push('"');
    } else {
        line.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_keys() {
        assert!(matches!(
            classify("QID12_3_TEXT"),
            KeyClass::Question("QID12")
        ));
        assert!(matches!(classify("2_QID4#1_2"), KeyClass::Question("QID4")));
        assert!(matches!(classify("recordedDate"), KeyClass::Meta(_)));
        assert!(matches!(classify("customer tier"), KeyClass::Embedded(_)));
        assert!(matches!(classify("QIDX"), KeyClass::Embedded(_)));
    }

    #[test]
    fn time_zones() {
        // 2026-07-01T12:00:00Z: summer on both sides of the Atlantic.
        let summer = 1_782_907_200_000;
        let winter = 1_767_268_800_000; // 2026-01-01T12:00:00Z
        let chi = Tz::parse("America/Chicago").unwrap();
        assert_eq!(chi.sql(summer), "2026-07-01 07:00:00");
        assert_eq!(chi.sql(winter), "2026-01-01 06:00:00");
        let ber = Tz::parse("Europe/Berlin").unwrap();
        assert_eq!(ber.sql(summer), "2026-07-01 14:00:00");
        assert_eq!(ber.sql(winter), "2026-01-01 13:00:00");
        assert_eq!(
            Tz::parse("Etc/GMT+5").unwrap().sql(winter),
            "2026-01-01 07:00:00"
        );
        assert_eq!(
            Tz::parse("+05:30").unwrap().sql(winter),
            "2026-01-01 17:30:00"
        );
        assert!(Tz::parse("Mars/Olympus").is_none());
    }

    #[test]
    fn csv_and_tsv_escaping() {
        let mut req_csv = ExportRequest {
            format: Format::Csv,
            start_ms: None,
            end_ms: None,
            limit: None,
            use_labels: false,
            include_label_columns: false,
            breakout_sets: true,
            compress: true,
            decimal_comma: false,
            seen_recode: None,
            multi_seen_recode: None,
            include_display_order: false,
            newline_replacement: None,
            time_zone: Tz::Fixed(0),
            in_progress: false,
            filter_channel: None,
            question_ids: None,
            embedded_ids: None,
            metadata_ids: None,
            allow_continuation: false,
            since_seq: None,
            sort_by_last_modified: false,
        };
        let mut s = String::new();
        push_escaped(&mut s, "a \"b\", c\nd", &req_csv);
        assert_eq!(s, "\"a \"\"b\"\", c\nd\"");
        req_csv.newline_replacement = Some(" / ".into());
        s.clear();
        push_escaped(&mut s, "x\r\ny", &req_csv);
        assert_eq!(s, "x / y");
        req_csv.newline_replacement = None;
        req_csv.format = Format::Tsv;
        s.clear();
        push_escaped(&mut s, "a\tb\nc\\", &req_csv);
        assert_eq!(s, "a\\tb\\nc\\\\");
    }
}
