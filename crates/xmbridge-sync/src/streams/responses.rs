//! Responses → `survey_response`, `question_response` (one row per answer cell) and
//! `survey_embedded_data`, through the response export API.
//!
//! **Cursor.** One stream per survey, `responses:{survey_id}` =
//! `{"continuationToken": T | null, "complete": bool}`. Per-survey streams let surveys export in
//! parallel and commit independently, with no shared map to read-modify-write. The first export
//! asks `allowContinuation`; later ones send the stored token (the API's own "since the last
//! export": new and updated responses). A token the API refuses (expired after a week, unknown)
//! starts a full export with `allowContinuation` again.
//!
//! **Exactly once.** A survey's responses are committed every `commit_every` responses; the token
//! advances only in the last commit of the survey (it covers the whole file). Intermediate commits
//! write `{"continuationToken": <the old token>, "complete": false}`. If the run dies in between,
//! the next run exports again from the old token and re-applies the same rows: every table is an
//! upsert by primary key (`<p>_id` is a hash of the cell's identity), and a rewritten response's
//! answer and embedded-data rows are replaced in the same commit (`delete_where` + upserts; the
//! destination keeps the rows that did not change), so nothing is doubled and edits leave no
//! stale answers. The deletes are skipped while a
//! survey has no cursor at all (nothing of it was ever committed), which keeps the first load a
//! pure insert.
//!
//! Intermediate commits are [`Commit::concurrent`] (a destination may apply one beside the one
//! before it, on a second connection) unless a response is in both; the last one waits for all
//! of them, so the token never lands before the rows it covers.
//!
//! **Parallelism.** Up to `survey_parallelism` surveys export and parse at once; their commits go
//! through a bounded channel to the engine task, the only writer of the destination. Within a
//! survey, a reader thread splits the file into responses, [`parse_threads`] threads parse and
//! flatten them, and the survey's own blocking thread puts the rows back in file order and
//! builds the commits (see `worker`).

use super::surveys::{QDef, SurveyDef, definition};
use crate::convert::field_text;
use crate::engine::{Batches, Ctx, Specs, SyncError};
use crate::observer::{ExportKind, SeenBatch, SeenResponse};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use tokio::sync::{Semaphore, mpsc};
use xmbridge_destinations::{Commit, TableSpec, Text, Value};
use xmbridge_qualtrics::export::{RawResponses, malformed_response};
use xmbridge_qualtrics::record::{ExportRecord, Field, parse_record};
use xmbridge_qualtrics::response::is_metadata_key;
use xmbridge_qualtrics::{Client, ExportOptions, SurveySummary};

/// The `<p>_id` of a `question_response` row: `<response_id>:<16 hex>`, the hex being the first
/// 8 bytes of sha256 of the cell's identity (fields length-prefixed, so no two different
/// identities hash the same input). Led by the response id, a response's answer rows sit
/// together in the key's index: rewriting a changed response touches a few index pages, not one
/// random page per answer (the 64-hex key of before did), and the key is about half as wide. 64
/// bits tell apart the few hundred cells of one response with room to spare. Rows written with
/// the old key are replaced like any others when their response is rewritten (answer rows are
/// deleted by `response_id` first).
pub fn answer_id(
    response_id: &str,
    question_id: &str,
    sub_question_key: Option<&str>,
    sub_question_text: Option<&str>,
    question_option_key: Option<&str>,
    loop_id: Option<&str>,
    import_id: &str,
) -> Text {
    // The identity is laid out in one reused buffer and hashed at once: feeding the hasher
    // field by field cost more than the hashing itself (a profile of a first load).
    thread_local! {
        static IDENTITY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let digest = IDENTITY.with_borrow_mut(|buf| {
        buf.clear();
        for part in [
            Some(response_id),
            Some(question_id),
            sub_question_key,
            sub_question_text,
            question_option_key,
            loop_id,
            Some(import_id),
        ] {
            match part {
                None => buf.push(b'N'),
                Some(p) => {
                    buf.push(b'S');
                    buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
                    buf.extend_from_slice(p.as_bytes());
                }
            }
        }
        Sha256::digest(buf.as_slice())
    });
    let mut hex = [0u8; 16];
    let mut id = Text::with_capacity(response_id.len() + 1 + hex.len());
    id.push_str(response_id);
    id.push(':');
    id.push_str(lower_hex(&digest[..8], &mut hex));
    id
}

/// The lowercase hex of `bytes`, as `hex::encode` writes it, in `out` (twice as long); one per
/// answer row, so without its char-by-char iterator or a pushed char at a time (each showed in
/// a profile of the sync) and without an allocation.
fn lower_hex<'o>(bytes: &[u8], out: &'o mut [u8]) -> &'o str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut written = 0;
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
        written += 2;
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&out[..written]).unwrap_or_default()
}

/// An export key split into its parts: `{loop}_QID{n}[#{col}]{rest}`.
#[derive(Debug, PartialEq, Eq)]
struct Key<'a> {
    loop_id: Option<&'a str>,
    /// `QID7` or a side-by-side column `QID9#1`.
    qid: &'a str,
    /// `""`, `_TEXT`, `_3`, `_3_TEXT`, `_NPS_GROUP`, `_DO` …
    rest: &'a str,
}

fn digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

fn parse_key(key: &str) -> Option<Key<'_>> {
    let d = digits(key);
    let (loop_id, body) = if d > 0 && key[d..].starts_with("_QID") {
        (Some(&key[..d]), &key[d + 1..])
    } else {
        (None, key)
    };
    let n = digits(body.strip_prefix("QID")?);
    if n == 0 {
        return None;
    }
    let mut end = 3 + n;
    if body[end..].starts_with('#') {
        let m = digits(&body[end + 1..]);
        if m > 0 {
            end += 1 + m;
        }
    }
    let rest = &body[end..];
    if !(rest.is_empty() || rest.starts_with('_')) {
        return None;
    }
    Some(Key {
        loop_id,
        qid: &body[..end],
        rest,
    })
}

/// One answer cell before it becomes a row.
#[derive(Debug, Default)]
struct Cell {
    sub_question_key: Option<Text>,
    sub_question_text: Option<Text>,
    option_key: Option<Text>,
    label: Option<Text>,
    text: Option<Text>,
    value: Option<Text>,
}

fn label_at(label: Option<&Field<'_>>, i: Option<usize>) -> Option<Text> {
    match (label, i) {
        (Some(Field::Array(a)), Some(i)) => a.get(i).and_then(field_text),
        (Some(Field::Array(_)), None) => None,
        (Some(l), _) => field_text(l),
        (None, _) => None,
    }
}

/// Adds the cells of one `values` entry to `out` (none for display-order fields).
fn cells(
    q: Option<&QDef>,
    rest: &str,
    value: &Field<'_>,
    label: Option<&Field<'_>>,
    out: &mut Vec<Cell>,
) {
    let is_text_entry = q.is_some_and(|q| q.qtype == "TE");
    let matrix = q.is_some_and(|q| !q.answers.is_empty());
    match rest {
        "_DO" => {}
        "" => match value {
            // Multi-select: one row per selected choice.
            Field::Array(items) => out.extend(items.iter().enumerate().map(|(i, v)| Cell {
                option_key: field_text(v),
                label: label_at(label, Some(i)),
                value: field_text(v),
                ..Default::default()
            })),
            v => {
                let value = field_text(v);
                let option_key = value
                    .as_ref()
                    .and_then(|v| q.and_then(|q| q.choice_by_recode.get(v.as_str()).cloned()));
                if is_text_entry {
                    out.push(Cell {
                        text: value,
                        ..Default::default()
                    })
                } else {
                    out.push(Cell {
                        option_key,
                        label: label_at(label, None),
                        value,
                        ..Default::default()
                    })
                }
            }
        },
        "_TEXT" => out.push(Cell {
            text: field_text(value),
            ..Default::default()
        }),
        "_NPS_GROUP" => out.push(Cell {
            label: label_at(label, None),
            value: field_text(value),
            ..Default::default()
        }),
        _ => {
            let tail = &rest[1..];
            let n = digits(tail);
            if n > 0 && &tail[n..] == "_TEXT" {
                // "Other, please specify" text of choice n (or a text box on matrix row n).
                out.push(Cell {
                    option_key: Some(Text::from(&tail[..n])),
                    text: field_text(value),
                    ..Default::default()
                });
                return;
            }
            if n > 0 && n == tail.len() {
                let sub = Text::from(tail);
                let sub_text = q.and_then(|q| q.choices.get(tail).cloned());
                let v = field_text(value);
                if is_text_entry {
                    out.push(Cell {
                        sub_question_key: Some(sub),
                        sub_question_text: sub_text,
                        text: v,
                        ..Default::default()
                    });
                    return;
                }
                let option_key = if matrix {
                    v.as_ref()
                        .and_then(|v| q.and_then(|q| q.answer_by_recode.get(v.as_str()).cloned()))
                } else {
                    None
                };
                out.push(Cell {
                    sub_question_key: Some(sub),
                    sub_question_text: sub_text,
                    option_key,
                    label: label_at(label, None),
                    value: v,
                    ..Default::default()
                });
                return;
            }
            // Anything else (timing, file upload, heat map …): keep it, keyed by its suffix.
            match value {
                Field::Array(items) => out.extend(items.iter().enumerate().map(|(i, v)| Cell {
                    sub_question_key: Some(Text::from(tail)),
                    option_key: field_text(v),
                    label: label_at(label, Some(i)),
                    value: field_text(v),
                    ..Default::default()
                })),
                v => out.push(Cell {
                    sub_question_key: Some(Text::from(tail)),
                    label: label_at(label, None),
                    value: field_text(v),
                    ..Default::default()
                }),
            }
        }
    }
}

/// A response's version for observers: `lastModifiedDate` (the export asks for it), else
/// `recordedDate`.
fn last_modified(record: &ExportRecord<'_>) -> String {
    ["lastModifiedDate", "recordedDate"]
        .iter()
        .find_map(|k| record.values.get(k).and_then(Field::as_str))
        .unwrap_or_default()
        .to_string()
}

/// `question_response`'s columns by position, found once per chunk of responses instead of by
/// name for every cell (the name lookups showed in a profile of a first load).
struct AnswerColumns {
    width: usize,
    id: Option<usize>,
    response_id: Option<usize>,
    question_id: Option<usize>,
    question: Option<usize>,
    sub_question_key: Option<usize>,
    sub_question_text: Option<usize>,
    option_key: Option<usize>,
    loop_id: Option<usize>,
    label: Option<usize>,
    text: Option<usize>,
    value: Option<usize>,
}

impl AnswerColumns {
    fn new(spec: &TableSpec) -> Self {
        let at = |name: &str| {
            let i = spec.column_index(name);
            debug_assert!(
                i.is_some(),
                "question_response.{name} is not in the catalog"
            );
            i
        };
        AnswerColumns {
            width: spec.columns.len(),
            id: at("<p>_id"),
            response_id: at("response_id"),
            question_id: at("question_id"),
            question: at("question"),
            sub_question_key: at("sub_question_key"),
            sub_question_text: at("sub_question_text"),
            option_key: at("question_option_key"),
            loop_id: at("loop_id"),
            label: at("label"),
            text: at("text"),
            value: at("value"),
        }
    }
}

/// Puts `v` in its column, NULL for None.
fn place(row: &mut [Value], at: Option<usize>, v: Option<Text>) {
    if let (Some(i), Some(v)) = (at, v) {
        row[i] = Value::Text(v);
    }
}

/// Adds one export record's rows to `b`; returns its response id.
fn flatten(
    specs: &Specs,
    cols: &AnswerColumns,
    def: &SurveyDef,
    survey_id: &str,
    record: &ExportRecord<'_>,
    b: &mut Vec<(&'static str, Vec<Value>)>,
) -> Option<String> {
    let rid = record.response_id.as_deref()?;
    let (values, labels) = (&record.values, &record.labels);
    let json = |key: &str| values.get(key).map(Field::to_json);

    let mut r = specs.row("survey_response");
    r.text("id", rid).text("survey_id", survey_id);
    for (col, key) in [
        ("distribution_channel", "distributionChannel"),
        ("duration_in_seconds", "duration"),
        ("end_date", "endDate"),
        ("finished", "finished"),
        ("ip_address", "ipAddress"),
        ("last_modified_date", "lastModifiedDate"),
        ("location_latitude", "locationLatitude"),
        ("location_longitude", "locationLongitude"),
        ("progress", "progress"),
        ("recipient_email", "recipientEmail"),
        ("recipient_first_name", "recipientFirstName"),
        ("recipient_last_name", "recipientLastName"),
        ("recorded_date", "recordedDate"),
        ("start_date", "startDate"),
        ("status", "status"),
        ("user_language", "userLanguage"),
    ] {
        r.put(col, json(key).as_ref());
    }
    r.put(
        "external_reference",
        json("externalDataReference")
            .or_else(|| json("externalReference"))
            .as_ref(),
    );
    b.push(("survey_response", r.build()));

    // One buffer for every entry's cells.
    let mut cell_buf = Vec::new();
    for (key, value, label) in values.paired_with(labels) {
        if is_metadata_key(key) || value.is_null() {
            continue;
        }
        let Some(k) = parse_key(key) else {
            // Embedded data: declared in the flow, or set on the response through the API.
            let mut r = specs.row("survey_embedded_data");
            r.text("import_id", key)
                .text("key", key)
                .text("response_id", rid)
                .put("value", Some(&value.to_json()));
            b.push(("survey_embedded_data", r.build()));
            continue;
        };
        let q = def.questions.get(k.qid);
        let mut question = match q {
            Some(q) if !q.tag.is_empty() => {
                let mut t = Text::default();
                if let Some(l) = k.loop_id {
                    t.push_str(l);
                    t.push('_');
                }
                t.push_str(&q.tag);
                t.push_str(k.rest);
                t
            }
            _ => Text::from(key),
        };
        cells(q, k.rest, value, label, &mut cell_buf);
        let last = cell_buf.len().saturating_sub(1);
        for (i, c) in cell_buf.drain(..).enumerate() {
            let id = answer_id(
                rid,
                k.qid,
                c.sub_question_key.as_deref(),
                c.sub_question_text.as_deref(),
                c.option_key.as_deref(),
                k.loop_id,
                key,
            );
            let mut row = vec![Value::Null; cols.width];
            place(&mut row, cols.id, Some(id));
            place(&mut row, cols.response_id, Some(Text::from(rid)));
            place(&mut row, cols.question_id, Some(Text::from(k.qid)));
            // The last cell takes the question's text; the others copy it.
            let question = if i == last {
                std::mem::take(&mut question)
            } else {
                question.clone()
            };
            place(&mut row, cols.question, Some(question));
            place(&mut row, cols.sub_question_key, c.sub_question_key);
            place(&mut row, cols.sub_question_text, c.sub_question_text);
            place(&mut row, cols.option_key, c.option_key);
            place(&mut row, cols.loop_id, k.loop_id.map(Text::from));
            place(&mut row, cols.label, c.label);
            place(&mut row, cols.text, c.text);
            place(&mut row, cols.value, c.value);
            b.push(("question_response", row));
        }
    }
    Some(rid.to_string())
}

/// Messages from export workers to the engine task.
enum Msg {
    Started {
        survey: String,
    },
    Rows {
        survey: String,
        commit: Commit,
        responses: u64,
        /// The commit's responses, for the observer (empty when there is none).
        seen: Vec<SeenResponse>,
        kind: ExportKind,
    },
    Done {
        survey: String,
    },
    Failed(SyncError),
}

/// When a survey's rows are committed: after this many responses or rows, whichever is first.
#[derive(Clone, Copy)]
struct CommitLimits {
    responses: usize,
    rows: usize,
    /// `rows` while the survey's first load appends (the destination may ask for fewer).
    first_load_rows: usize,
}

struct Job {
    survey: String,
    token: Option<String>,
    /// Some rows of this survey may already be in the destination (a cursor exists).
    loaded: bool,
    def: Option<Arc<SurveyDef>>,
    last_reconciled: Option<i64>,
    /// Collect the responses of each commit for the observer.
    observe: bool,
}

pub(crate) fn cursor_stream(survey: &str) -> String {
    format!("responses:{survey}")
}

/// A survey's cursor. `lastReconciled` (epoch ms) is carried through every export commit so the
/// reconcile schedule survives; see `reconcile.rs`.
pub(crate) fn cursor_value(
    token: Option<&str>,
    complete: bool,
    last_reconciled: Option<i64>,
) -> Json {
    json!({"continuationToken": token, "complete": complete, "lastReconciled": last_reconciled})
}

/// The export file, and whether a refused token made it a full export.
async fn export(
    client: &Client,
    survey: &str,
    token: Option<String>,
) -> Result<(xmbridge_qualtrics::ExportFile, bool), xmbridge_qualtrics::Error> {
    let mut extra = Map::new();
    // Adds values.lastModifiedDate (survey_response.last_modified_date); filters nothing here.
    extra.insert("sortByLastModifiedDate".into(), json!(true));
    let opts = |token: Option<String>| ExportOptions {
        allow_continuation: token.is_none(),
        continuation_token: token,
        extra: extra.clone(),
        ..Default::default()
    };
    let had_token = token.is_some();
    match client.export_responses(survey, &opts(token)).await {
        Err(e) if had_token && e.status() == Some(400) => {
            tracing::warn!(survey, error = %e, "continuation token refused; exporting every response again");
            Ok((client.export_responses(survey, &opts(None)).await?, true))
        }
        other => other.map(|f| (f, false)),
    }
}

/// Responses handed to a parser thread at a time: enough to keep the hand-over cost small,
/// few enough that a chunk's rows are a small part of a commit.
const PARSE_CHUNK: usize = 64;

/// Threads that parse and flatten an export's responses: the machine's cores less one (left to
/// the writer and, often on the same machine, the database), at least 1, at most 4. The reader
/// (unzip, and find where each response ends) is a thread of its own beside them: on a first
/// load, one thread doing all of it was the pace-setter (docs/bench.md).
fn parse_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .clamp(1, 4)
}

/// One response's rows, parsed and flattened on a parser thread.
struct Flat {
    /// `None` for an element without a `responseId` (skipped, as before).
    response_id: Option<String>,
    rows: Vec<(&'static str, Vec<Value>)>,
    /// For the observer, when there is one.
    last_modified: Option<String>,
}

/// Parses and flattens a chunk of responses, in order.
fn parse_chunk(
    specs: &Specs,
    def: &SurveyDef,
    survey_id: &str,
    chunk: &RawResponses,
    observe: bool,
) -> Result<Vec<Flat>, xmbridge_qualtrics::Error> {
    let cols = AnswerColumns::new(specs.spec("question_response"));
    (chunk.first()..)
        .zip(chunk.iter())
        .map(|(n, text)| {
            let record = parse_record(text).map_err(|e| malformed_response(n, e))?;
            let mut rows = Vec::new();
            let response_id = flatten(specs, &cols, def, survey_id, &record, &mut rows);
            Ok(Flat {
                last_modified: (observe && response_id.is_some()).then(|| last_modified(&record)),
                response_id,
                rows,
            })
        })
        .collect()
}

async fn worker(
    client: Client,
    specs: Arc<Specs>,
    limits: CommitLimits,
    job: Job,
    tx: mpsc::Sender<Msg>,
) {
    let survey = job.survey.clone();
    let fail = |e: SyncError| Msg::Failed(e);
    let def = match job.def {
        Some(d) => d,
        None => match definition(&client, &survey).await {
            Ok(d) => Arc::new(SurveyDef::parse(&d)),
            Err(e) => {
                let _ = tx
                    .send(fail(SyncError::api("survey_response", Some(&survey), e)))
                    .await;
                return;
            }
        },
    };
    let kind = if !job.loaded {
        ExportKind::FirstLoad
    } else if job.token.is_none() {
        ExportKind::FullReload
    } else {
        ExportKind::Incremental
    };
    let (file, kind) = match export(&client, &survey, job.token.clone()).await {
        Ok((f, false)) => (f, kind),
        Ok((f, true)) => (f, ExportKind::FullReload),
        Err(e) => {
            let _ = tx
                .send(fail(SyncError::api("survey_response", Some(&survey), e)))
                .await;
            return;
        }
    };
    if tx
        .send(Msg::Started {
            survey: survey.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let old_token = job.token;
    let loaded = job.loaded;
    let row_limit = if loaded {
        limits.rows
    } else {
        limits.first_load_rows
    };
    let last_reconciled = job.last_reconciled;
    let observe = job.observe;
    let tx2 = tx.clone();
    let sv = survey.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let stream = cursor_stream(&sv);
        let partial = cursor_value(old_token.as_deref(), false, last_reconciled);
        let mut b = Batches::default();
        let mut ids: Vec<Value> = Vec::new();
        let mut seen: Vec<SeenResponse> = Vec::new();
        let mut n = 0u64;
        // The response ids of the commit before, which the next may be applied beside.
        let mut before: HashSet<Text> = HashSet::new();
        let take =
            |b: &mut Batches, ids: &mut Vec<Value>| -> Vec<xmbridge_destinations::TableBatch> {
                let mut out = std::mem::take(b);
                if loaded {
                    // Rewritten responses lose their old answer and embedded-data rows first.
                    out.delete_where("question_response", "response_id", ids.clone());
                    out.delete_where("survey_embedded_data", "response_id", std::mem::take(ids));
                }
                ids.clear();
                let mut batches = out.into_vec();
                if !loaded {
                    // Nothing of this survey is in the destination: its rows are all new.
                    batches.iter_mut().for_each(|b| b.fresh = true);
                }
                batches
            };
        let parsers = parse_threads();
        std::thread::scope(|scope| {
            // Chunk k goes to parser k mod P, and its rows come back from parser k mod P's
            // queue: the rows stay in file order with no reordering buffer, and when a queue
            // ends, every later chunk's would too (the reader deals them round-robin).
            let mut to_parsers = Vec::with_capacity(parsers);
            let mut from_parsers = Vec::with_capacity(parsers);
            for _ in 0..parsers {
                let (raw_tx, raw_rx) = sync_channel::<RawResponses>(2);
                let (out_tx, out_rx) =
                    sync_channel::<Result<Vec<Flat>, xmbridge_qualtrics::Error>>(2);
                let (specs, def, sv) = (&*specs, &*def, sv.as_str());
                scope.spawn(move || {
                    for chunk in raw_rx {
                        if out_tx
                            .send(parse_chunk(specs, def, sv, &chunk, observe))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                to_parsers.push(raw_tx);
                from_parsers.push(out_rx);
            }
            let file = &file;
            let reader = scope.spawn(move || {
                let mut dealt = 0usize;
                // A parser gone means the sync stopped (or the parser failed, which the
                // assembler reports): the read ends there.
                let mut stopped = false;
                let read = file.for_each_raw_batch(PARSE_CHUNK, |chunk| {
                    if to_parsers[dealt % parsers].send(chunk).is_err() {
                        stopped = true;
                        return Err(xmbridge_qualtrics::Error::Config(
                            "the export's parsers stopped".into(),
                        ));
                    }
                    dealt += 1;
                    Ok(())
                });
                // The chunks handed to parsers: the assembler must get back as many.
                match read {
                    Err(_) if stopped => Ok(dealt),
                    read => read.map(|_| dealt),
                }
            });
            let mut next = 0usize;
            // A loaded survey's merges set the pace, so a commit built while another waits to
            // be taken would only wait in memory: its next commit starts once there is room to
            // send it (one commit fewer held; a 1,000,000-response Delta incremental's peak RSS
            // 248 -> 227-229 MB, docs/bench.md). A first load's parse sets the pace instead,
            // and a commit queued ready lets the writer go on at once.
            let handle = tokio::runtime::Handle::current();
            let mut permit = None;
            while let Ok(flats) = from_parsers[next % parsers].recv() {
                next += 1;
                if loaded && permit.is_none() {
                    match handle.block_on(tx2.reserve()) {
                        Ok(p) => permit = Some(p),
                        Err(_) => return Ok(()),
                    }
                }
                for flat in flats? {
                    let Some(rid) = flat.response_id else {
                        continue;
                    };
                    for (table, row) in flat.rows {
                        b.push(table, row);
                    }
                    if let Some(last_modified) = flat.last_modified {
                        seen.push(SeenResponse {
                            last_modified,
                            response_id: rid.clone(),
                        });
                    }
                    ids.push(Value::Text(rid.into()));
                    n += 1;
                    if n as usize >= limits.responses || b.rows() >= row_limit {
                        // Applied beside the commit before it (a destination may), unless a
                        // response is in both: the later rows must land last.
                        let these: HashSet<Text> = ids
                            .iter()
                            .filter_map(|v| match v {
                                Value::Text(id) => Some(id.clone()),
                                _ => None,
                            })
                            .collect();
                        let concurrent = these.is_disjoint(&before);
                        before = these;
                        let commit = Commit {
                            batches: take(&mut b, &mut ids),
                            cursors: vec![(stream.clone(), partial.clone())],
                            concurrent,
                            ..Default::default()
                        };
                        let msg = Msg::Rows {
                            survey: sv.clone(),
                            commit,
                            responses: n,
                            seen: std::mem::take(&mut seen),
                            kind,
                        };
                        let sent = match permit.take() {
                            Some(p) => {
                                p.send(msg);
                                Ok(())
                            }
                            None => tx2.blocking_send(msg).map_err(|_| ()),
                        };
                        if sent.is_err() {
                            // The engine stopped: dropping the queues stops the parsers and
                            // the reader.
                            return Ok(());
                        }
                        n = 0;
                    }
                }
            }
            drop(from_parsers);
            drop(permit);
            // A file that failed to read part way must not commit its token, nor one whose
            // parser stopped early (a panic: its queue ended before its chunks did).
            let dealt = match reader.join() {
                Ok(read) => read?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            if dealt != next {
                return Err(xmbridge_qualtrics::Error::Decode {
                    url: "export file".into(),
                    message: format!(
                        "a parser thread stopped after {next} of {dealt} chunks of responses"
                    ),
                });
            }
            // The last commit carries the new token: the whole file is in.
            let commit = Commit {
                batches: take(&mut b, &mut ids),
                cursors: vec![(
                    stream.clone(),
                    cursor_value(file.continuation_token.as_deref(), true, last_reconciled),
                )],
                ..Default::default()
            };
            let _ = tx2.blocking_send(Msg::Rows {
                survey: sv.clone(),
                commit,
                responses: n,
                seen,
                kind,
            });
            Ok::<(), xmbridge_qualtrics::Error>(())
        })
    })
    .await;
    let msg = match parsed {
        Ok(Ok(())) => Msg::Done { survey },
        Ok(Err(e)) => fail(SyncError::api("survey_response", Some(&survey), e)),
        Err(source) => fail(SyncError::Worker {
            table: "survey_response".into(),
            survey: Some(survey),
            worker: "the export parser",
            source,
        }),
    };
    let _ = tx.send(msg).await;
}

/// Exports every listed survey's new and changed responses.
pub(crate) async fn run(ctx: &mut Ctx<'_>, surveys: &[SurveySummary]) -> Result<(), SyncError> {
    let mut cursors = Vec::with_capacity(surveys.len());
    for s in surveys {
        cursors.push(ctx.cursor(&cursor_stream(&s.id), "survey_response").await?);
    }
    // A response table missing while surveys have cursors would only get what is new: export
    // every loaded survey in full (its old rows are rewritten, like an edited response's).
    let full =
        ctx.opts.full || (cursors.iter().any(Option::is_some) && ctx.reload_missing("responses"));
    let mut jobs = Vec::new();
    for (s, cursor) in surveys.iter().zip(cursors) {
        let token = cursor
            .as_ref()
            .and_then(|c| c.get("continuationToken"))
            .and_then(Json::as_str)
            .map(str::to_string);
        jobs.push(Job {
            survey: s.id.clone(),
            token: if full { None } else { token },
            loaded: cursor.is_some(),
            def: ctx.defs.get(&s.id).cloned(),
            // A survey loaded for the first time holds nothing stale: its first load counts as
            // a reconcile. A cursor without the field (older runs) makes a reconcile due.
            last_reconciled: match &cursor {
                None => Some(ctx.synced_at_ms),
                Some(c) => c.get("lastReconciled").and_then(Json::as_i64),
            },
            observe: ctx.opts.observer.is_some(),
        });
    }
    // Counted in responses, whose number no call tells up front (the number of surveys is not
    // a total of responses).
    ctx.progress.stream_started("responses", None);
    let par = ctx.opts.survey_parallelism.max(1);
    let sem = Arc::new(Semaphore::new(par));
    // One message waits while the engine writes another: more would only hold more rows in
    // memory, since the destination (one writer) is the pace-setter.
    let (tx, mut rx) = mpsc::channel::<Msg>(1);
    let rows = ctx.opts.commit_rows.max(1);
    let limits = CommitLimits {
        responses: ctx.opts.commit_every.max(1),
        rows,
        first_load_rows: ctx.append_commit_rows().map_or(rows, |r| r.clamp(1, rows)),
    };
    let mut handles = Vec::new();
    for job in jobs {
        let (client, specs, tx, sem) = (
            ctx.client.clone(),
            ctx.specs.clone(),
            tx.clone(),
            sem.clone(),
        );
        handles.push(tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            worker(client, specs, limits, job, tx).await;
        }));
    }
    drop(tx);
    let abort = |handles: &[tokio::task::JoinHandle<()>]| handles.iter().for_each(|h| h.abort());
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Started { survey } => {
                ctx.progress.stream_started(&cursor_stream(&survey), None);
            }
            Msg::Rows {
                survey,
                commit,
                responses,
                seen,
                kind,
            } => {
                // Before the commit: a sync killed in between re-exports these responses (the
                // token has not moved) and tells the observer again; it never misses them.
                if let Some(obs) = &ctx.opts.observer
                    && !seen.is_empty()
                {
                    let batch = SeenBatch {
                        survey_id: &survey,
                        kind,
                        responses: &seen,
                    };
                    if let Err(source) = obs.0.responses_seen(batch).await {
                        abort(&handles);
                        return Err(SyncError::Observer { survey, source });
                    }
                }
                if let Err(e) = ctx.commit(commit, "survey_response", Some(&survey)).await {
                    abort(&handles);
                    return Err(e);
                }
                ctx.summary.responses += responses;
                ctx.progress.advanced(&cursor_stream(&survey), responses);
                ctx.progress.advanced("responses", responses);
            }
            Msg::Done { survey } => {
                ctx.summary.surveys_exported += 1;
                ctx.progress.stream_finished(&cursor_stream(&survey));
            }
            Msg::Failed(e) => {
                abort(&handles);
                ctx.progress.stream_finished("responses");
                return Err(e);
            }
        }
    }
    ctx.progress.stream_finished("responses");
    super::reconcile::run(ctx, surveys).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_grammar() {
        let k = parse_key("QID1").unwrap();
        assert_eq!((k.loop_id, k.qid, k.rest), (None, "QID1", ""));
        let k = parse_key("2_QID12_TEXT").unwrap();
        assert_eq!((k.loop_id, k.qid, k.rest), (Some("2"), "QID12", "_TEXT"));
        let k = parse_key("QID9#2_3").unwrap();
        assert_eq!((k.loop_id, k.qid, k.rest), (None, "QID9#2", "_3"));
        let k = parse_key("QID5_NPS_GROUP").unwrap();
        assert_eq!(k.rest, "_NPS_GROUP");
        assert!(parse_key("segment").is_none());
        assert!(parse_key("QIDx").is_none());
        assert!(parse_key("QID1x").is_none());
        assert!(parse_key("a_QID1").is_none());
    }

    #[test]
    fn lower_hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut out = [0u8; 512];
        assert_eq!(lower_hex(&bytes, &mut out), hex::encode(&bytes));
    }

    #[test]
    fn answer_ids_do_not_change_between_versions() {
        // Stored rows are keyed by these ids: a change here rewrites every answer row of every
        // table on its response's next edit, and leaves the rest under the old ids.
        assert_eq!(
            answer_id("R_1", "QID1", None, None, Some("2"), None, "QID1"),
            "R_1:be0c77f8a83669ee"
        );
        assert_eq!(
            answer_id(
                "R_3kZ",
                "QID9#1",
                Some("2"),
                Some("Row two"),
                Some("4"),
                Some("3"),
                "3_QID9#1_2"
            ),
            "R_3kZ:de2d200ce52d114e"
        );
    }

    #[test]
    fn answer_ids_are_stable_and_distinct() {
        let a = answer_id("R_1", "QID1", None, None, Some("2"), None, "QID1");
        assert_eq!(
            a,
            answer_id("R_1", "QID1", None, None, Some("2"), None, "QID1")
        );
        // Led by the response id, so a response's rows sit together in the key's index.
        assert!(a.starts_with("R_1:") && a.len() == 4 + 16, "{a}");
        assert_ne!(
            a,
            answer_id("R_1", "QID1", None, None, Some("3"), None, "QID1")
        );
        assert_ne!(
            answer_id("R_1", "QID1", Some(""), None, None, None, "QID1"),
            answer_id("R_1", "QID1", None, None, None, None, "QID1")
        );
    }
}
