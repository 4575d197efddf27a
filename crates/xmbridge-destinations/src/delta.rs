//! The Delta Lake destination: `delta:PATH` writes one Delta table per xmbridge table under
//! `PATH/<schema>/<table>`, which Spark, Databricks, Trino, DuckDB and the Python `deltalake`
//! package read (docs/destinations.md, "Delta Lake").
//!
//! Files are written and logged with delta-rs (the `deltalake` crate, without DataFusion): its
//! Parquet writer (with per-file statistics), its log reader and its optimistic commit. What
//! SQL gives the other destinations is done here by hand:
//!
//! - **Upserts by key and `delete_where`** read the table's files that may hold an affected row
//!   (first only the key and filter columns), and note which rows of them go; the new rows go
//!   to new files. Batches that rewrite whole responses find their rows through a group index
//!   instead, whose runs live on disk ([`crate::delta_runs`]). Merge commits land as a group,
//!   on the first loads' clock ([`commit_interval`]), and each file that lost rows is rewritten
//!   once when the group lands, however many of its commits touched it.
//! - **Exactly once**: each [`Commit`] gets a sequence number. Its actions for every table are
//!   first written to a redo file (`_xmbridge_pending.json`, after every data file it names is
//!   written), then committed table by table, each Delta commit carrying the transaction
//!   identifier `txn {appId: "xmbridge", version: seq}`, and last the cursor table
//!   (`<p>_state`) with the same identifier. A run that was killed part way is finished by the
//!   next open from the redo file: a table whose `txn` version already reached the sequence
//!   number is skipped, so no commit lands twice and none is lost. Data files written before the
//!   redo file are never referenced; `xmbridge lake vacuum` removes them.
//! - **First loads** (batches marked fresh, nothing to merge) stream into one open Parquet writer
//!   per table and commit every [`commit_interval`] (a quarter of the time the destination has
//!   been open, from 1 up to [`GROUP_SECS`] seconds) and at `flush`, so files grow towards the
//!   target size (`?target_file_mb=`, default 128) instead of one small file per commit, while a
//!   run stopped after a few seconds still keeps most of its work.
//! - **One writer**: an exclusive lock on `PATH/<schema>/_xmbridge.lock` while open (on S3 a
//!   lease object of that name, see [`crate::delta_place`]).
//!
//! `PATH` is a local directory or an S3 URL (`delta:s3://bucket/prefix`); everything that
//! differs between the two lives in [`crate::delta_place`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt as _;

use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int32Array,
    Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder, new_null_array,
};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, StructField, Transaction};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};

pub use crate::delta_place::S3Settings;
use crate::delta_place::{Holds, Lock, Place};
use crate::delta_runs::{Run, RunStore, StoredRuns};
use crate::names::{Resolved, check_name, keys_target, parse_cursor};
use crate::{
    BoxFuture, ColumnType, Commit, CommitStats, Compat, DestError, Destination, Ensured, Fence,
    TableBatch, TableSpec, Value,
};

/// The Arrow crates delta-rs writes with, for callers that read [`read_table`]'s batches.
pub use deltalake::arrow;

/// The Parquet crate delta-rs writes with, for callers that read a data file's own metadata.
pub use deltalake::parquet;

/// The transaction identifier (`txn.appId`) of xmbridge's commits.
pub const APP_ID: &str = "xmbridge";

/// A first load's open files are committed at least this often (seconds).
pub const GROUP_SECS: u64 = 30;

/// How long a first load's open files stay uncommitted, for a destination open for `open_for`:
/// a quarter of it, from 1 to [`GROUP_SECS`] seconds (as SQLite's group commits, and for the
/// same reason: a run always stopped after a few seconds must still advance).
pub fn commit_interval(open_for: std::time::Duration) -> std::time::Duration {
    (open_for / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(GROUP_SECS),
    )
}

/// Test knob: milliseconds to wait after each table's part of a commit, so that a test's
/// random kills land between the tables of one commit (never set in production).
const COMMIT_PAUSE_ENV: &str = "XMBRIDGE_TEST_DELTA_COMMIT_PAUSE_MS";

/// Test knob: milliseconds an open group stays open instead of [`commit_interval`], so that a
/// kill test's short runs land groups often enough for its kills to fall inside a landing
/// (never set in production).
const GROUP_MS_ENV: &str = "XMBRIDGE_TEST_DELTA_GROUP_MS";

/// A test knob's milliseconds (`None` when unset or not a number).
fn millis_from_env(name: &str) -> Option<std::time::Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// Default target size of a data file (`?target_file_mb=`).
pub const DEFAULT_TARGET_FILE_MB: u64 = 128;

/// Rows per Parquet row group of the files a first load and `xmbridge lake optimize` write,
/// the bulk of a table: bounds what the writer holds in memory per open file.
const ROW_GROUP_ROWS: usize = 65_536;

/// Rows per row group of the files a merge writes (an upsert's new rows, a file rewritten
/// without the rows a merge took out). Those are written while the sync holds its next commits'
/// rows, and the Parquet writer holds about two row groups' encoded bytes beside the one it
/// builds (each handed on whole to the upload buffer, which keeps it until its part is full).
/// At 65,536 rows that was about 22 MB during a `survey_response` rewrite, the peak of an
/// incremental sync at 1,000,000 responses; at 16,384 the peak fell from 147-150 to 129-132 MB,
/// for files about 1-6 % larger (docs/bench.md, "Delta Lake: smaller row groups in merges; a
/// commit's rows freed before its group lands").
const MERGE_ROW_GROUP_ROWS: usize = 16_384;

/// Largest dictionary a column chunk builds before the writer falls back to plain encoding
/// (the Parquet crate's default is 1 MiB). A column of ids, e-mail addresses or names never
/// repeats, yet at 1 MiB each of them filled a dictionary per row group before falling back;
/// at 64 KiB they fall back early, while columns of few values keep theirs. At 1,000,000
/// responses the tables came out 3–9 % smaller, an incremental sync's file rewrites took 40 %
/// less time and its peak RSS was lower (docs/bench.md, "Delta Lake: small dictionaries").
const DICTIONARY_PAGE_BYTES: usize = 64 * 1024;

/// Rows per commit a first load asks the sync for ([`Destination::append_commit_rows`]): its
/// commits only feed the open writers, which commit on their own clock, so small ones cost
/// nothing, and the rows a sync holds in memory shrink with them (a 200,000-response first
/// load's peak RSS 242–251 -> 167–179 MB; docs/bench.md).
const APPEND_COMMIT_ROWS: usize = 8_192;

/// The redo file of the commit in flight.
const PENDING_FILE: &str = "_xmbridge_pending.json";

/// The root of a `delta:PATH` URL (without its `?options`).
pub fn path_of_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("delta://")
        .or_else(|| url.strip_prefix("delta:"))?;
    Some(rest.split_once('?').map_or(rest, |(path, _)| path))
}

/// Options of a Delta destination URL: `delta:PATH?target_file_mb=N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaOptions {
    /// Target size of a data file in MiB.
    pub target_file_mb: u64,
    /// On an object store: how long the writer lease lasts without renewal (seconds).
    pub lease_secs: u64,
    /// On S3: client settings over the `AWS_*` environment (tests name a local server here).
    pub s3: S3Settings,
    /// The leased run writing, if any ([`Fence`]).
    pub fence: Option<Fence>,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            target_file_mb: DEFAULT_TARGET_FILE_MB,
            lease_secs: crate::delta_place::DEFAULT_LEASE_SECS,
            s3: S3Settings::default(),
            fence: None,
        }
    }
}

impl DeltaOptions {
    /// Reads the options of a `delta:` URL's query; an unknown option or a bad value is an error.
    pub fn from_url(url: &str) -> Result<DeltaOptions, DestError> {
        let mut opts = DeltaOptions::default();
        let Some((_, query)) = url.split_once('?') else {
            return Ok(opts);
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "target_file_mb" => {
                    opts.target_file_mb = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        DestError::UrlOption(format!(
                            "target_file_mb={v:?} in the Delta destination URL is not a whole number of MiB above 0; write e.g. ?target_file_mb=128"
                        ))
                    })?;
                }
                "lease_secs" => {
                    opts.lease_secs = v.parse().ok().filter(|n| (3..=3600).contains(n)).ok_or_else(|| {
                        DestError::UrlOption(format!(
                            "lease_secs={v:?} in the Delta destination URL is not a whole number of seconds from 3 to 3600; write e.g. ?lease_secs=30"
                        ))
                    })?;
                }
                other => {
                    return Err(DestError::UrlOption(format!(
                        "unknown option {other:?} in the Delta destination URL; the options are ?target_file_mb=N and (on S3) ?lease_secs=N"
                    )));
                }
            }
        }
        Ok(opts)
    }
}

/// One table as written here.
struct Table {
    r: Resolved,
    /// Stored columns (spec columns, then `<p>_synced`, then `<p>_deleted`) and their types.
    stored: Vec<(String, ColumnType)>,
    schema: SchemaRef,
    /// The table's directory name under the schema.
    dir: String,
    delta: DeltaTable,
}

/// Commits that land as one Delta commit per table, every [`commit_interval`]: either a first
/// load's open writers, or merges' staged files and the rows they take out of files (each file
/// is then rewritten once per group, not once per commit that touches it).
struct Group {
    writers: HashMap<String, RecordBatchWriter>,
    staged: Vec<(String, Staged)>,
    stats: CommitStats,
    cursors: Vec<(String, serde_json::Value)>,
    started: std::time::Instant,
}

impl Group {
    fn new() -> Group {
        Group {
            writers: HashMap::new(),
            staged: Vec::new(),
            stats: CommitStats::default(),
            cursors: Vec::new(),
            started: std::time::Instant::now(),
        }
    }

    /// Takes a commit's cursors; true when the group is due to land.
    fn note_cursors(
        &mut self,
        cursors: &[(String, serde_json::Value)],
        interval: std::time::Duration,
    ) -> bool {
        for (stream, cursor) in cursors {
            match self.cursors.iter_mut().find(|c| &c.0 == stream) {
                Some(c) => c.1 = cursor.clone(),
                None => self.cursors.push((stream.clone(), cursor.clone())),
            }
        }
        self.started.elapsed() >= interval
    }
}

/// The redo record of a commit in flight.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    seq: i64,
    /// Directory name of a table → the actions of its commit.
    tables: Vec<(String, Vec<Action>)>,
    /// The whole cursor table after the commit (stream → cursor JSON text).
    cursors: Vec<(String, String)>,
}

/// A Delta Lake destination (see the module docs).
pub struct DeltaDestination {
    place: Place,
    described: String,
    compat: Compat,
    opts: DeltaOptions,
    tables: HashMap<String, Table>,
    /// The cursor table and what it holds (stream → cursor JSON text).
    state: DeltaTable,
    state_name: String,
    cursors: HashMap<String, String>,
    /// The last committed sequence number (the cursor table's `txn` version).
    seq: i64,
    group: Option<Group>,
    /// Set by [`DeltaDestination::stop_after_tables_for_tests`].
    stop_after_tables: Option<usize>,
    /// A commit failed after some of its tables took it: its redo file must be finished by the
    /// next open before anything else is committed.
    unfinished: bool,
    /// A merge failed part way, or a group could not land: the group was dropped, so nothing
    /// more is committed in this run (a later commit would land a cursor past its rows).
    dropped_group: Option<String>,
    /// [`COMMIT_PAUSE_ENV`].
    commit_pause: Option<std::time::Duration>,
    /// How long a group stays open when set: [`GROUP_MS_ENV`], or
    /// [`DeltaDestination::hold_groups_for_tests`]; else [`commit_interval`].
    group_clock: Option<std::time::Duration>,
    opened: std::time::Instant,
    lock: Lock,
    /// Per table directory: what merges keep between commits and what they read.
    merges: HashMap<String, MergeState>,
    /// Merges free and allocate whole files' batches in bursts: the allocator gives freed
    /// memory back soon while this destination is open (`crate::memory`).
    _lean_memory: crate::memory::LeanMemory,
}

fn lake_err(context: &str, e: impl std::fmt::Display) -> DestError {
    DestError::Sql {
        context: context.to_string(),
        message: e.to_string(),
    }
}

fn is_disk_full(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("os error 28")
}

/// A table or cursor-table error: disk full and conflicts get their own messages.
fn write_err(place: &str, table: &str, e: impl std::fmt::Display) -> DestError {
    let message = e.to_string();
    if is_disk_full(&message) {
        return DestError::DiskFull {
            table: table.to_string(),
            destination: format!("delta:{place}"),
            fix: "free disk space where the tables live (or move them to a larger disk)".into(),
            partly_applied: false,
        };
    }
    if message.contains("ersion") && message.contains("already exists")
        || message.contains("onflict")
        || message.contains("concurrent transaction")
    {
        return DestError::Sql {
            context: format!("Delta table {table}"),
            message: format!(
                "another writer committed to this table at the same time ({message}); nothing of this commit was applied to it; stop the other writer (xmbridge keeps one writer per schema) and run the sync again: it resumes from the last commit"
            ),
        };
    }
    lake_err(&format!("Delta table {table}"), message)
}

/// Delta has no column names with these characters (without column mapping).
const DELTA_BAD_CHARS: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

fn check_dir_name(name: &str) -> Result<(), DestError> {
    check_name(name, None)?;
    let ok = !name.starts_with('.')
        && !name.starts_with("_delta")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(DestError::InvalidName {
            name: name.to_string(),
            reason: "a Delta table's name becomes a directory name: use ASCII letters, digits, _ and - only, not starting with . or _delta".into(),
        })
    }
}

fn check_column_name(name: &str) -> Result<(), DestError> {
    if name.contains(DELTA_BAD_CHARS) {
        return Err(DestError::InvalidName {
            name: name.to_string(),
            reason:
                "Delta Lake column names may not contain spaces or any of , ; { } ( ) = tab newline"
                    .into(),
        });
    }
    Ok(())
}

fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int => DataType::Int32,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Float => DataType::Float64,
    }
}

fn delta_type(ty: ColumnType) -> deltalake::kernel::DataType {
    use deltalake::kernel::DataType as D;
    match ty {
        ColumnType::Text | ColumnType::Json => D::STRING,
        ColumnType::Timestamp => D::TIMESTAMP,
        ColumnType::Bool => D::BOOLEAN,
        ColumnType::Int => D::INTEGER,
        ColumnType::BigInt => D::LONG,
        ColumnType::Float => D::DOUBLE,
    }
}

/// The Delta spelling of a column type, for messages.
fn delta_type_name(ty: &deltalake::kernel::DataType) -> String {
    match serde_json::to_value(ty) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => format!("{ty:?}"),
    }
}

fn schema_of(stored: &[(String, ColumnType)]) -> SchemaRef {
    Arc::new(Schema::new(
        stored
            .iter()
            .map(|(n, t)| Field::new(n, arrow_type(*t), true))
            .collect::<Vec<_>>(),
    ))
}

/// One stored cell of an Arrow column, as a [`Value`].
fn cell(col: &ArrayRef, i: usize, ty: ColumnType) -> Value {
    if col.is_null(i) {
        return Value::Null;
    }
    let any = col.as_any();
    match ty {
        ColumnType::Text | ColumnType::Json => {
            any.downcast_ref::<StringArray>().map_or(Value::Null, |a| {
                let s = a.value(i);
                if ty == ColumnType::Json {
                    Value::Json(s.into())
                } else {
                    Value::Text(s.into())
                }
            })
        }
        ColumnType::Timestamp => any
            .downcast_ref::<TimestampMicrosecondArray>()
            .map_or(Value::Null, |a| {
                Value::Timestamp(a.value(i).div_euclid(1000))
            }),
        ColumnType::Bool => any
            .downcast_ref::<BooleanArray>()
            .map_or(Value::Null, |a| Value::Bool(a.value(i))),
        ColumnType::Int => any
            .downcast_ref::<Int32Array>()
            .map_or(Value::Null, |a| Value::Int(i64::from(a.value(i)))),
        ColumnType::BigInt => any
            .downcast_ref::<Int64Array>()
            .map_or(Value::Null, |a| Value::Int(a.value(i))),
        ColumnType::Float => any
            .downcast_ref::<Float64Array>()
            .map_or(Value::Null, |a| Value::Float(a.value(i))),
    }
}

/// A value as its column stores it (an int in a float column is a float), for comparisons.
fn normalized(v: &Value, ty: ColumnType) -> Value {
    match (ty, v) {
        (ColumnType::Float, Value::Int(i)) => Value::Float(*i as f64),
        _ => v.clone(),
    }
}

/// The bytes that identify a key (or a filter value), equal for equal stored values.
fn key_of(values: impl IntoIterator<Item = Value>) -> Vec<u8> {
    let mut k = Vec::new();
    for v in values {
        crate::push_key(&mut k, &v);
    }
    k
}

/// Cell `ci` of a stored row: a spec cell of `row`, then `<p>_synced`, then `<p>_deleted`.
fn pick<'a>(
    row: &'a [Value],
    ci: usize,
    n_spec: usize,
    synced: &'a Value,
    deleted: &'a Value,
) -> &'a Value {
    if ci < n_spec {
        &row[ci]
    } else if ci == n_spec {
        synced
    } else {
        deleted
    }
}

/// Builds a record batch of `stored` columns from spec rows plus the system cells.
fn batch_of(
    t: &Table,
    rows: &[&Vec<Value>],
    synced_ms: i64,
    deleted: bool,
) -> Result<RecordBatch, DestError> {
    let n_spec = t.r.columns.len();
    let (synced, deleted) = (Value::Timestamp(synced_ms), Value::Bool(deleted));
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(t.stored.len());
    for (ci, (_, ty)) in t.stored.iter().enumerate() {
        // Borrowed, not cloned: this runs for every cell of a first load.
        let get = |row| pick(row, ci, n_spec, &synced, &deleted);
        let array: ArrayRef = match ty {
            ColumnType::Text | ColumnType::Json => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
                for row in rows {
                    match get(row) {
                        Value::Text(s) => b.append_value(s),
                        Value::Json(s) => b.append_value(s),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Timestamp => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                for row in rows {
                    match get(row) {
                        Value::Timestamp(ms) => b.append_value(ms.saturating_mul(1000)),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish().with_timezone("UTC"))
            }
            ColumnType::Bool => {
                let mut b = BooleanBuilder::with_capacity(rows.len());
                for row in rows {
                    match get(row) {
                        Value::Bool(v) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Int => {
                let mut b = Int32Builder::with_capacity(rows.len());
                for row in rows {
                    match get(row) {
                        // Checked to fit by `check_row`.
                        Value::Int(v) => b.append_value(i32::try_from(*v).unwrap_or_default()),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::BigInt => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for row in rows {
                    match get(row) {
                        Value::Int(v) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Float => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for row in rows {
                    match get(row) {
                        Value::Float(v) => b.append_value(*v),
                        // An int in a float column (`check_value` allows it).
                        Value::Int(v) => b.append_value(*v as f64),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::clone(&t.schema), arrays)
        .map_err(|e| lake_err(&format!("Delta table {}", t.r.display), e))
}

/// A batch read from an older file, widened to the table's current columns (columns added
/// since are null in it).
fn conform(t: &Table, batch: &RecordBatch) -> Result<RecordBatch, DestError> {
    let mut arrays = Vec::with_capacity(t.stored.len());
    for f in t.schema.fields() {
        match batch.column_by_name(f.name()) {
            Some(a) => arrays.push(Arc::clone(a)),
            None => arrays.push(new_null_array(f.data_type(), batch.num_rows())),
        }
    }
    RecordBatch::try_new(Arc::clone(&t.schema), arrays)
        .map_err(|e| lake_err(&format!("Delta table {}", t.r.display), e))
}

/// A Parquet writer for `table`'s files, with xmbridge's file settings and row groups of
/// `row_group_rows` rows ([`ROW_GROUP_ROWS`] or [`MERGE_ROW_GROUP_ROWS`]).
fn new_writer(
    table: &DeltaTable,
    shown: &str,
    row_group_rows: usize,
) -> Result<RecordBatchWriter, DestError> {
    Ok(RecordBatchWriter::for_table(table)
        .map_err(|e| lake_err(shown, e))?
        .with_writer_properties(writer_properties(row_group_rows)))
}

fn writer_properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .build()
}

impl DeltaDestination {
    /// Opens (creating it if needed) `PATH/<schema>`, takes its lock, reads the cursor table and
    /// finishes a commit a killed run left half applied.
    pub async fn open(
        path: &str,
        schema: &str,
        compat: Compat,
        opts: DeltaOptions,
    ) -> Result<Self, DestError> {
        let described = format!("delta:{path}");
        if path.trim().is_empty() {
            return Err(DestError::Settings(
                "the Delta destination names no directory: write delta:PATH, for example delta:/var/lib/xmbridge/lake".into(),
            ));
        }
        check_dir_name(schema)?;
        let lean_memory = crate::memory::LeanMemory::hold();
        let place = Place::open(path, schema, &described, &opts.s3)?;
        place.create(&described)?;
        let lock = place
            .lock(&described, std::time::Duration::from_secs(opts.lease_secs))
            .await?;
        let state_name = compat.state_table();
        let state = open_or_create(
            &place,
            &state_name,
            &place.shown_of(&state_name),
            &[
                ("stream".to_string(), ColumnType::Text),
                ("cursor".to_string(), ColumnType::Text),
            ],
        )
        .await?
        .0;
        let mut dest = DeltaDestination {
            place,
            described,
            compat,
            opts,
            tables: HashMap::new(),
            state,
            state_name,
            cursors: HashMap::new(),
            seq: 0,
            group: None,
            stop_after_tables: None,
            unfinished: false,
            dropped_group: None,
            commit_pause: millis_from_env(COMMIT_PAUSE_ENV),
            group_clock: millis_from_env(GROUP_MS_ENV),
            opened: std::time::Instant::now(),
            lock,
            merges: HashMap::new(),
            _lean_memory: lean_memory,
        };
        dest.load_state().await?;
        dest.finish_pending().await?;
        if let Some(fence) = dest.opts.fence.clone() {
            dest.claim(&fence).await?;
        }
        Ok(dest)
    }

    /// Commits what is open and gives the writer lock up (on S3 the lease is deleted, so the
    /// next writer need not wait for it to lapse). Dropping the destination without closing
    /// leaves an S3 lease to lapse.
    pub async fn close(&mut self) -> Result<CommitStats, DestError> {
        let stats = self.close_group().await;
        self.lock.release().await;
        let reads = self.merge_reads();
        if reads != MergeReads::default() {
            tracing::debug!(
                probed_rows = reads.probed_rows,
                indexed_rows = reads.indexed_rows,
                whole_rows = reads.whole_rows,
                "rows the Delta merges read"
            );
        }
        stats
    }

    /// What the upserts and deletes of this destination read so far, over all tables.
    pub fn merge_reads(&self) -> MergeReads {
        let mut all = MergeReads::default();
        for s in self.merges.values() {
            all.probed_rows += s.reads.probed_rows;
            all.indexed_rows += s.reads.indexed_rows;
            all.whole_rows += s.reads.whole_rows;
        }
        all
    }

    /// Makes the next commit stop, as a kill would, after its redo file and `n` of its tables
    /// are written, failing with "stopped for a test". For tests of the redo path only.
    #[doc(hidden)]
    pub fn stop_after_tables_for_tests(&mut self, n: usize) {
        self.stop_after_tables = Some(n);
    }

    /// Test knob: an open group lands only when something needs it landed (`flush`, `keys`,
    /// `rows`, a commit of the other kind), never by its clock, so that a test's commits land
    /// as one group however slowly they run.
    #[doc(hidden)]
    pub fn hold_groups_for_tests(&mut self) {
        self.group_clock = Some(std::time::Duration::MAX);
    }

    /// How long the open group may stay open now ([`commit_interval`]).
    fn group_interval(&self) -> std::time::Duration {
        self.group_clock
            .unwrap_or_else(|| commit_interval(self.opened.elapsed()))
    }

    fn fence_name(&self) -> String {
        format!("{}_fence.json", self.compat.prefix())
    }

    // `&mut self` below: a future holding `&self` would need the destination to be `Sync`,
    // which its open Parquet writers are not.
    async fn fence_tokens(&mut self) -> Result<HashMap<String, i64>, DestError> {
        let name = self.fence_name();
        match self.place.read(&name).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                DestError::Settings(format!(
                    "the fence file {} is not valid JSON ({e}); remove it if no run holds a lease",
                    self.place.shown_of(&name)
                ))
            }),
            None => Ok(HashMap::new()),
        }
    }

    /// Records the run's token, refusing when a higher one is there.
    async fn claim(&mut self, fence: &Fence) -> Result<(), DestError> {
        let mut tokens = self.fence_tokens().await?;
        let name = self.fence_name();
        let shown = self.place.shown_of(&name);
        if let Some(&current) = tokens.get(&fence.scope)
            && current > fence.token
        {
            return Err(crate::fenced(
                &self.described,
                fence,
                Some(current),
                &shown,
                true,
            ));
        }
        tokens.insert(fence.scope.clone(), fence.token);
        let text = serde_json::to_vec(&tokens).map_err(|e| lake_err(&shown, e))?;
        self.place
            .write(&name, text)
            .await
            .map_err(|e| write_err(&self.place.shown(), &shown, e))
    }

    /// Refuses a commit of a run whose lease a later run took.
    async fn check_fence(&mut self) -> Result<(), DestError> {
        let Some(fence) = self.opts.fence.clone() else {
            return Ok(());
        };
        let current = self.fence_tokens().await?.get(&fence.scope).copied();
        if current == Some(fence.token) {
            Ok(())
        } else {
            let shown = self.place.shown_of(&self.fence_name());
            Err(crate::fenced(
                &self.described,
                &fence,
                current,
                &shown,
                false,
            ))
        }
    }

    async fn load_state(&mut self) -> Result<(), DestError> {
        let shown = self.place.shown_of(&self.state_name);
        self.seq = self
            .state
            .snapshot()
            .map_err(|e| lake_err(&shown, e))?
            .transaction_version(self.state.log_store().as_ref(), APP_ID)
            .await
            .map_err(|e| lake_err(&shown, e))?
            .unwrap_or(0);
        let cols = [
            ("stream".to_string(), ColumnType::Text),
            ("cursor".to_string(), ColumnType::Text),
        ];
        self.cursors.clear();
        for path in live_files(&self.state, &shown)? {
            let mut batches = self
                .place
                .read_file(&self.state_name, &path.0, path.1, None, &shown)
                .await?;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                let (Some(s), Some(c)) = (
                    batch.column_by_name("stream"),
                    batch.column_by_name("cursor"),
                ) else {
                    continue;
                };
                for i in 0..batch.num_rows() {
                    if let (Value::Text(stream), Value::Text(cursor)) =
                        (cell(s, i, cols[0].1), cell(c, i, cols[1].1))
                    {
                        self.cursors.insert(stream.into(), cursor.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies the redo file a killed run left behind, if its commit is not in yet.
    async fn finish_pending(&mut self) -> Result<(), DestError> {
        let Some(bytes) = self.place.read(PENDING_FILE).await? else {
            return Ok(());
        };
        let pending: Pending = serde_json::from_slice(&bytes).map_err(|e| {
            DestError::Settings(format!(
                "the redo file {} of an unfinished commit cannot be read ({e}); it was written by another version or damaged: move it away and run the sync with --full",
                self.place.shown_of(PENDING_FILE)
            ))
        })?;
        if pending.seq > self.seq {
            tracing::info!(
                seq = pending.seq,
                "finishing the commit an earlier run left half applied"
            );
            self.apply_pending(&pending, true).await?;
        }
        self.place.remove(PENDING_FILE).await
    }

    /// Commits every table of `pending` that does not have it yet, then the cursor table.
    ///
    /// `resumed`: the redo file of an earlier run, some of whose tables may have it already.
    /// A commit of this run's own is new to every table (one writer; a commit stopped part way
    /// blocks the next), so their `txn` versions are not read: the kernel replays a table's log
    /// since its last checkpoint for that, one GET per version on S3.
    async fn apply_pending(&mut self, pending: &Pending, resumed: bool) -> Result<(), DestError> {
        let mut landed = 0usize;
        for (dir, actions) in &pending.tables {
            let shown = self.place.shown_of(dir);
            let mut table = match self.tables.values_mut().find(|t| t.dir == *dir) {
                Some(t) => t.delta.clone(),
                None => load_table(&self.place, dir, &shown).await?,
            };
            let done = if resumed {
                table
                    .snapshot()
                    .map_err(|e| lake_err(&shown, e))?
                    .transaction_version(table.log_store().as_ref(), APP_ID)
                    .await
                    .map_err(|e| lake_err(&shown, e))?
                    .unwrap_or(0)
            } else {
                0
            };
            if done < pending.seq {
                commit_actions(
                    &mut table,
                    actions.clone(),
                    pending.seq,
                    &self.place.shown(),
                    &shown,
                )
                .await?;
                landed += 1;
                if let Some(pause) = self.commit_pause {
                    tokio::time::sleep(pause).await;
                }
                if self.stop_after_tables.take_if(|n| landed >= *n).is_some() {
                    return Err(lake_err(
                        "Delta commit",
                        format!("stopped for a test after {landed} table(s)"),
                    ));
                }
            } else {
                table
                    .update_state()
                    .await
                    .map_err(|e| lake_err(&shown, e))?;
            }
            if let Some(t) = self.tables.values_mut().find(|t| t.dir == *dir) {
                t.delta = table;
            }
        }
        // The cursor table: its one file replaced by the whole map.
        let cursors: HashMap<String, String> = pending.cursors.iter().cloned().collect();
        let shown = self.place.shown_of(&self.state_name);
        let mut actions: Vec<Action> = live_files(&self.state, &shown)?
            .iter()
            .map(|f| Action::Remove(f.2.clone()))
            .collect();
        if !cursors.is_empty() {
            let mut sorted: Vec<(&String, &String)> = cursors.iter().collect();
            sorted.sort();
            let schema = schema_of(&[
                ("stream".to_string(), ColumnType::Text),
                ("cursor".to_string(), ColumnType::Text),
            ]);
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from_iter_values(sorted.iter().map(|e| e.0))) as ArrayRef,
                    Arc::new(StringArray::from_iter_values(sorted.iter().map(|e| e.1))) as ArrayRef,
                ],
            )
            .map_err(|e| lake_err(&shown, e))?;
            let mut w = new_writer(&self.state, &shown, ROW_GROUP_ROWS)?;
            w.write(batch)
                .await
                .map_err(|e| write_err(&self.place.shown(), &shown, e))?;
            actions.extend(
                w.flush()
                    .await
                    .map_err(|e| write_err(&self.place.shown(), &shown, e))?
                    .into_iter()
                    .map(Action::Add),
            );
        }
        commit_actions(
            &mut self.state,
            actions,
            pending.seq,
            &self.place.shown(),
            &shown,
        )
        .await?;
        self.cursors = cursors;
        self.seq = pending.seq;
        Ok(())
    }

    /// Writes the redo file, applies it, removes it.
    async fn land(
        &mut self,
        tables: Vec<(String, Vec<Action>)>,
        cursors: &[(String, serde_json::Value)],
    ) -> Result<(), DestError> {
        self.lock.check(&self.described)?;
        self.check_fence().await?;
        self.check_committable()?;
        let mut all = self.cursors.clone();
        for (stream, cursor) in cursors {
            all.insert(stream.clone(), cursor.to_string());
        }
        let mut listed: Vec<(String, String)> = all.into_iter().collect();
        listed.sort();
        let pending = Pending {
            seq: self.seq + 1,
            tables: tables.into_iter().filter(|(_, a)| !a.is_empty()).collect(),
            cursors: listed,
        };
        let shown = self.place.shown_of(PENDING_FILE);
        let text = serde_json::to_vec(&pending).map_err(|e| lake_err(&shown, e))?;
        self.place
            .write(PENDING_FILE, text)
            .await
            .map_err(|e| write_err(&self.place.shown(), &shown, e))?;
        if let Err(mut e) = self.apply_pending(&pending, false).await {
            // Refused before any table took it (another writer's conflicting commit, a full
            // disk): the commit is as if never made, and the next run does the work again. Once
            // a table has it, the redo file stays, and the next open finishes the commit.
            if any_landed(&self.place, &pending).await {
                self.unfinished = true;
                if let DestError::DiskFull { partly_applied, .. } = &mut e {
                    *partly_applied = true;
                }
            } else {
                self.place.remove(PENDING_FILE).await?;
            }
            return Err(e);
        }
        self.place.remove(PENDING_FILE).await
    }

    fn table(&self, name: &str) -> Result<&Table, DestError> {
        self.tables
            .get(name)
            .ok_or_else(|| DestError::UnknownTable {
                table: name.to_string(),
            })
    }

    /// Refuses to commit after a commit stopped part way ([`Self::unfinished`]) or a group was
    /// dropped ([`Self::dropped_group`]).
    fn check_committable(&self) -> Result<(), DestError> {
        if self.unfinished {
            return Err(DestError::Sql {
                context: format!("Delta commit in {}", self.place.shown()),
                message: format!(
                    "an earlier commit of this run stopped part way ({} is kept); nothing more is committed until the next run finishes it: run the sync again",
                    self.place.shown_of(PENDING_FILE)
                ),
            });
        }
        match &self.dropped_group {
            None => Ok(()),
            Some(why) => Err(DestError::Sql {
                context: format!("Delta commit in {}", self.place.shown()),
                message: format!(
                    "an earlier commit of this run failed ({why}); the commits grouped with it were not landed, so nothing more is committed in this run: run the sync again, it resumes from the last landed commit"
                ),
            }),
        }
    }

    /// Drops the open group after a failed step of it: nothing of it lands (its files stay
    /// unreferenced), and nothing more is committed in this run.
    fn drop_group(&mut self, e: &DestError) {
        if self.group.take().is_some() {
            self.dropped_group = Some(e.to_string());
        }
    }

    /// Lands the open group: the first-load writers' files, or the merges' staged files after
    /// each file that lost rows is rewritten without them; then the group's cursors.
    async fn close_group(&mut self) -> Result<CommitStats, DestError> {
        let Some(group) = self.group.take() else {
            return Ok(CommitStats::default());
        };
        let landed = self.land_group(group).await;
        if let Err(e) = &landed
            && self.dropped_group.is_none()
            && !self.unfinished
        {
            self.dropped_group = Some(e.to_string());
        }
        landed
    }

    async fn land_group(&mut self, group: Group) -> Result<CommitStats, DestError> {
        let mut tables = Vec::new();
        for (name, mut w) in group.writers {
            let t = self.table(&name)?;
            let shown = t.r.display.clone();
            let dir = t.dir.clone();
            let adds = w
                .flush()
                .await
                .map_err(|e| write_err(&self.place.shown(), &shown, e))?;
            tables.push((dir, adds.into_iter().map(Action::Add).collect()));
        }
        for (dir, mut st) in group.staged {
            let t = self
                .tables
                .values()
                .find(|t| t.dir == dir)
                .ok_or_else(|| DestError::UnknownTable { table: dir.clone() })?;
            let state = self.merges.entry(dir.clone()).or_default();
            st.apply_drops(t, &self.place, &mut state.reads).await?;
            tables.push((dir, st.into_actions()));
        }
        self.land(tables, &group.cursors).await?;
        Ok(group.stats)
    }

    async fn ensure(&mut self, specs: &[TableSpec]) -> Result<Ensured, DestError> {
        self.close_group().await?;
        let mut ensured = Ensured::default();
        for spec in specs {
            check_dir_name(&spec.name)?;
            let dir = spec.name.clone();
            let display = self.place.shown_of(&dir);
            let r = Resolved::new(spec, self.compat, display.clone(), None)?;
            let stored = r.stored_columns();
            for (name, _) in &stored {
                check_column_name(name)?;
            }
            let (delta, created) = open_or_create(&self.place, &dir, &display, &stored).await?;
            let delta = evolve(delta, &stored, &display).await?;
            if created {
                ensured.created.push(spec.name.clone());
            }
            let schema = schema_of(&stored);
            self.tables.insert(
                spec.name.clone(),
                Table {
                    r,
                    stored,
                    schema,
                    dir,
                    delta,
                },
            );
        }
        Ok(ensured)
    }

    async fn commit(&mut self, commit: Commit) -> Result<CommitStats, DestError> {
        for b in &commit.batches {
            let t = self.table(&b.table)?;
            for row in &b.upserts {
                t.r.check_row(row)?;
            }
        }
        for m in &commit.mark_unseen_deleted {
            let t = self.table(&m.table)?;
            if t.r.deleted.is_none() {
                return Err(DestError::NotSoftDelete {
                    table: t.r.display.clone(),
                });
            }
        }
        // Early, so that no merge work is done for a commit that cannot land.
        self.lock.check(&self.described)?;
        self.check_committable()?;
        let appends = commit.mark_unseen_deleted.is_empty()
            && commit.batches.iter().all(TableBatch::appends_only);
        // One kind of commit per group: a merge reads files, which an open writer has not
        // written yet, and an append goes to writers a merge group does not have.
        let other_kind = self.group.as_ref().is_some_and(|g| {
            if appends {
                !g.staged.is_empty()
            } else {
                !g.writers.is_empty()
            }
        });
        let mut stats = if other_kind {
            self.close_group().await?
        } else {
            CommitStats::default()
        };
        // A failed step leaves the group without some of its rows (a writer that failed is
        // gone with what it held), so the group goes whole: the engine flushes after a failed
        // stream, and landing the rest would advance cursors past the lost rows.
        let done = if appends {
            self.append(commit).await
        } else {
            let merged = self.merge_into_group(&commit).await;
            // Its rows are in the group's files now: freed before a landing rewrites files, so
            // that they are not held beside the rewrite (docs/bench.md, "Delta Lake: smaller row
            // groups in merges; a commit's rows freed before its group lands").
            drop(commit);
            match merged {
                Ok(true) => self.close_group().await,
                Ok(false) => Ok(CommitStats::default()),
                Err(e) => Err(e),
            }
        };
        match done {
            Ok(s) => {
                stats.add(s);
                Ok(stats)
            }
            Err(e) => {
                self.drop_group(&e);
                Err(e)
            }
        }
    }

    /// Merges a commit's batches into the open group (opening one); true when the group is due.
    /// Each step sees what the steps before it, in this commit and the group's earlier ones,
    /// did to the table.
    async fn merge_into_group(&mut self, commit: &Commit) -> Result<bool, DestError> {
        let interval = self.group_interval();
        let group = self.group.get_or_insert_with(Group::new);
        // Not `self.table()`: `self.group` and `self.merges` are borrowed mutably beside it.
        let tables = &self.tables;
        let table = |name: &str| {
            tables.get(name).ok_or_else(|| DestError::UnknownTable {
                table: name.to_string(),
            })
        };
        let mut commit_stats = CommitStats::default();
        for b in &commit.batches {
            let t = table(&b.table)?;
            let st = staged_for(&mut group.staged, &t.dir);
            let state = self.merges.entry(t.dir.clone()).or_default();
            let merged = merge(
                t,
                &self.place,
                self.compat,
                st,
                state,
                b,
                commit.synced_at_ms,
            );
            commit_stats.add(merged.await?);
        }
        for m in &commit.mark_unseen_deleted {
            let t = table(&m.table)?;
            let st = staged_for(&mut group.staged, &t.dir);
            let state = self.merges.entry(t.dir.clone()).or_default();
            // Marking rewrites whole files: the rows dropped so far go first.
            st.apply_drops(t, &self.place, &mut state.reads).await?;
            commit_stats
                .add(mark_unseen(t, &self.place, self.compat, st, m, commit.synced_at_ms).await?);
        }
        group.stats.add(commit_stats);
        Ok(group.note_cursors(&commit.cursors, interval))
    }

    /// A first-load commit: its rows go to the open writers; the group commits every
    /// [`commit_interval`].
    async fn append(&mut self, commit: Commit) -> Result<CommitStats, DestError> {
        self.group.get_or_insert_with(Group::new);
        let target = self.opts.target_file_mb.saturating_mul(1024 * 1024);
        for b in &commit.batches {
            if b.upserts.is_empty() {
                continue;
            }
            let open = self.group.as_mut().and_then(|g| g.writers.remove(&b.table));
            let t = self.table(&b.table)?;
            let rows: Vec<&Vec<Value>> = b.upserts.iter().collect();
            let batch = batch_of(t, &rows, commit.synced_at_ms, false)?;
            let shown = t.r.display.clone();
            let mut writer = match open {
                Some(w) => w,
                None => new_writer(&t.delta, &shown, ROW_GROUP_ROWS)?.with_target_file_size(target),
            };
            writer
                .write(batch)
                .await
                .map_err(|e| write_err(&self.place.shown(), &shown, e))?;
            if let Some(g) = self.group.as_mut() {
                g.writers.insert(b.table.clone(), writer);
                g.stats.add(CommitStats {
                    tables: vec![(b.table.clone(), rows.len() as u64, 0, 0)],
                });
            }
        }
        let interval = self.group_interval();
        let due = self
            .group
            .as_mut()
            .is_some_and(|g| g.note_cursors(&commit.cursors, interval));
        // As in a merge: the rows are in the writers now, not to be held while the group lands.
        drop(commit);
        if due {
            return self.close_group().await;
        }
        Ok(CommitStats::default())
    }
}

/// A data file a commit step reads: one the table has, or one an earlier step of the same group
/// wrote.
enum FileRef {
    Committed(Box<Remove>),
    Staged(String),
}

/// One table's changes in a group being built.
#[derive(Default)]
struct Staged {
    removes: Vec<Remove>,
    adds: Vec<Add>,
    /// Files that lost rows to the group's merges, each rewritten without them when the group
    /// lands ([`Staged::apply_drops`]): an edit commit takes a few rows out of every file of a
    /// large table, and rewriting those files once per group instead of once per commit is most
    /// of what an incremental sync with edits costs.
    dropping: Vec<Dropping>,
}

/// Rows taken out of one data file by the open group's merges.
struct Dropping {
    path: String,
    size: u64,
    file: FileRef,
    /// Row positions in the file.
    rows: std::collections::BTreeSet<usize>,
}

impl Staged {
    /// The table's files as the next step sees them: the committed ones not removed by an
    /// earlier step, then those earlier steps wrote.
    /// Each with its size in bytes.
    fn files(&self, t: &Table) -> Result<Vec<(String, u64, FileRef)>, DestError> {
        let mut v: Vec<(String, u64, FileRef)> = live_files(&t.delta, &t.r.display)?
            .into_iter()
            .filter(|(path, _, _)| !self.removes.iter().any(|r| &r.path == path))
            .map(|(path, size, remove)| (path, size, FileRef::Committed(Box::new(remove))))
            .collect();
        v.extend(self.adds.iter().map(|a| {
            let size = u64::try_from(a.size).unwrap_or(0);
            (a.path.clone(), size, FileRef::Staged(a.path.clone()))
        }));
        Ok(v)
    }

    /// Takes a file out of the table: a committed one is removed by the commit, one written
    /// earlier in it is simply not added (the file stays unreferenced; vacuum deletes it).
    fn drop_file(&mut self, file: FileRef) {
        match file {
            FileRef::Committed(remove) => self.removes.push(*remove),
            FileRef::Staged(path) => self.adds.retain(|a| a.path != path),
        }
    }

    /// The rows of the file at `path` that the group already took out.
    fn dropped(&self, path: &str) -> Option<&std::collections::BTreeSet<usize>> {
        self.dropping
            .iter()
            .find(|d| d.path == path)
            .map(|d| &d.rows)
    }

    /// Takes `rows` (positions) out of the file at `path` when the group lands; until then the
    /// file stays in the table, and merges skip those rows of it.
    fn drop_rows(&mut self, path: &str, size: u64, file: FileRef, rows: Vec<usize>) {
        match self.dropping.iter_mut().find(|d| d.path == path) {
            Some(d) => d.rows.extend(rows),
            None => self.dropping.push(Dropping {
                path: path.to_string(),
                size,
                file,
                rows: rows.into_iter().collect(),
            }),
        }
    }

    /// Rewrites each file that lost rows without them, once; returns with no file pending.
    async fn apply_drops(
        &mut self,
        t: &Table,
        place: &Place,
        reads: &mut MergeReads,
    ) -> Result<(), DestError> {
        let mut out = Output {
            t,
            place,
            writer: None,
        };
        let started = std::time::Instant::now();
        let (mut files, mut dropped) = (0usize, 0usize);
        for d in std::mem::take(&mut self.dropping) {
            files += 1;
            dropped += d.rows.len();
            self.drop_file(d.file);
            let mut gone = d.rows.into_iter().peekable();
            let mut at = 0usize;
            let shown = t.r.display.as_str();
            reads.whole_rows += out
                .rewrite(&d.path, d.size, |b| {
                    let keep: BooleanArray = (at..at + b.num_rows())
                        .map(|row| Some(gone.next_if_eq(&row).is_none()))
                        .collect();
                    at += b.num_rows();
                    filter_record_batch(b, &keep).map_err(|e| lake_err(shown, e))
                })
                .await?;
        }
        self.adds.extend(out.finish().await?);
        if files > 0 {
            tracing::debug!(
                table = %t.r.display,
                rewritten_files = files,
                dropped_rows = dropped,
                ms = started.elapsed().as_millis() as u64,
                "Delta rewrite"
            );
        }
        Ok(())
    }

    fn into_actions(self) -> Vec<Action> {
        self.removes
            .into_iter()
            .map(Action::Remove)
            .chain(self.adds.into_iter().map(Action::Add))
            .collect()
    }
}

/// The staging of the table in `dir`.
fn staged_for<'a>(staged: &'a mut Vec<(String, Staged)>, dir: &str) -> &'a mut Staged {
    let i = match staged.iter().position(|e| e.0 == dir) {
        Some(i) => i,
        None => {
            staged.push((dir.to_string(), Staged::default()));
            staged.len() - 1
        }
    };
    &mut staged[i].1
}

/// What a merge does with one stored row.
enum Fate {
    Keep,
    /// Replaced by the batch's upsert at this index; `true` when its values are the same (a
    /// rewritten group's unchanged row, kept as it is).
    Replaced(usize, bool),
    Deleted,
}

/// A table's rewritten files and new rows, written through one writer.
struct Output<'a> {
    t: &'a Table,
    place: &'a Place,
    writer: Option<RecordBatchWriter>,
}

impl Output<'_> {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), DestError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let shown = &self.t.r.display;
        let w = match self.writer.as_mut() {
            Some(w) => w,
            None => self
                .writer
                .insert(new_writer(&self.t.delta, shown, MERGE_ROW_GROUP_ROWS)?),
        };
        w.write(batch)
            .await
            .map_err(|e| write_err(&self.place.shown(), shown, e))
    }

    async fn finish(self) -> Result<Vec<Add>, DestError> {
        let Some(mut w) = self.writer else {
            return Ok(Vec::new());
        };
        w.flush()
            .await
            .map_err(|e| write_err(&self.place.shown(), &self.t.r.display, e))
    }

    /// Streams the file at `path` into new files, each row through `change` (`None`: dropped).
    /// Returns the rows read.
    async fn rewrite(
        &mut self,
        path: &str,
        size: u64,
        mut change: impl FnMut(&RecordBatch) -> Result<RecordBatch, DestError>,
    ) -> Result<u64, DestError> {
        let t = self.t;
        let mut batches = self
            .place
            .read_file(&t.dir, path, size, None, &t.r.display)
            .await?;
        let mut rows = 0u64;
        while let Some(b) = batches.next().await {
            let b = conform(t, &b?)?;
            rows += b.num_rows() as u64;
            let out = change(&b)?;
            self.write(out).await?;
        }
        Ok(rows)
    }
}

/// The actions that apply one batch's deletes and upserts to its table: files holding an
/// affected row are rewritten without it (found by their key and filter columns first), and the
/// upserts are written as new rows.
///
/// When every stored row the batch may touch is found by one text column (see [`group_of`]),
/// the files are looked up in the table's [`GroupIndex`] instead, and of a file only the rows
/// of the batch's groups are read: an incremental commit then costs what it changes, not what
/// the table holds.
async fn merge(
    t: &Table,
    place: &Place,
    compat: Compat,
    staged: &mut Staged,
    state: &mut MergeState,
    batch: &TableBatch,
    synced_at_ms: i64,
) -> Result<CommitStats, DestError> {
    let started = std::time::Instant::now();
    let shown = t.r.display.as_str();
    let group = group_of(t, batch, compat)?;
    let replace = crate::replaces_groups(batch, false, &t.r);
    // Upserts by key (the last row of a key wins).
    let mut upserts: HashMap<Vec<u8>, usize> = HashMap::with_capacity(batch.upserts.len());
    for (i, row) in batch.upserts.iter().enumerate() {
        upserts.insert(key_of(t.r.pk.iter().map(|&k| row[k].clone())), i);
    }
    // Deletes by column value.
    let mut deletes: Vec<(usize, HashSet<Vec<u8>>)> = Vec::new();
    for (col, values) in &batch.delete_where {
        let c = t.r.spec_column(col, compat)?;
        let ci =
            t.r.columns
                .iter()
                .position(|x| x.name == c.name)
                .unwrap_or(0);
        let mut set = HashSet::new();
        for v in values {
            t.r.check_value(c, v)?;
            if !matches!(v, Value::Null) {
                set.insert(key_of([normalized(v, c.ty)]));
            }
        }
        deletes.push((ci, set));
    }
    let mut probe: Vec<usize> = t.r.pk.clone();
    for (ci, _) in &deletes {
        if !probe.contains(ci) {
            probe.push(*ci);
        }
    }
    let probe_names: Vec<String> = probe.iter().map(|&i| t.stored[i].0.clone()).collect();
    // The probe as text sets when the key and every filter are single text columns.
    let text_probes: Option<Vec<(String, HashSet<&str>)>> = {
        let mut v = Vec::new();
        let text_key = t.r.pk.len() == 1 && t.stored[t.r.pk[0]].1 == ColumnType::Text;
        let mut ok = text_key || upserts.is_empty();
        if text_key && !batch.upserts.is_empty() {
            let k = t.r.pk[0];
            let set: HashSet<&str> = batch
                .upserts
                .iter()
                .filter_map(|row| match &row[k] {
                    Value::Text(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            v.push((t.stored[k].0.clone(), set));
        }
        for (col, values) in &batch.delete_where {
            let c = t.r.spec_column(col, compat)?;
            if c.ty != ColumnType::Text {
                ok = false;
                break;
            }
            let set: HashSet<&str> = values
                .iter()
                .filter_map(|v| match v {
                    Value::Text(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            v.push((c.name.clone(), set));
        }
        ok.then_some(v)
    };
    // A stored row's key and what becomes of it, in a batch of all the table's columns.
    let fate = |b: &RecordBatch, i: usize| -> Fate {
        let key = key_of(t.r.pk.iter().map(|&k| cell(b.column(k), i, t.stored[k].1)));
        if let Some(&ui) = upserts.get(&key) {
            let same = replace
                && t.r.columns.iter().enumerate().all(|(ci, c)| {
                    t.r.pk.contains(&ci)
                        || cell(b.column(ci), i, c.ty) == normalized(&batch.upserts[ui][ci], c.ty)
                });
            return Fate::Replaced(ui, same);
        }
        if deletes
            .iter()
            .any(|(ci, set)| set.contains(&key_of([cell(b.column(*ci), i, t.stored[*ci].1)])))
        {
            return Fate::Deleted;
        }
        Fate::Keep
    };
    let (mut updated, mut deleted, mut touched) = (0u64, 0u64, 0usize);
    let mut found: HashSet<usize> = HashSet::new();
    let mut unchanged: HashSet<usize> = HashSet::new();
    let mut out = Output {
        t,
        place,
        writer: None,
    };
    if !upserts.is_empty() || deletes.iter().any(|d| !d.1.is_empty()) {
        let MergeState { index, reads } = state;
        let files = staged.files(t)?;
        index.retain(files.iter().map(|(path, _, _)| path.as_str()));
        for (path, size, file) in files {
            // By the group index: only the rows of the batch's groups, or nothing at all.
            let ranges = match &group {
                Some((column, hashes)) => {
                    match index
                        .ranges(t, place, (&path, size), column, hashes, reads)
                        .await?
                    {
                        Some(r) if r.is_empty() => continue,
                        found => found,
                    }
                }
                None => None,
            };
            // Else first only the key and filter columns: most files hold no affected row, and
            // of a file that does, only the rows found here are read whole to see what changes
            // (an edit commit's few rows of a 1,000,000-row `survey_response` file, not all).
            let ranges = match ranges {
                Some(r) => r,
                None => {
                    let hits = find_rows(place, t, (&path, size), &probe_names, reads, |b| {
                        if let Some(probes) = &text_probes {
                            // Text keys and filters (every table of the catalog): compared in
                            // place, without building a value per row.
                            let arrays: Vec<Option<&StringArray>> = probes
                                .iter()
                                .map(|(name, _)| {
                                    b.column_by_name(name)
                                        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                                })
                                .collect();
                            return (0..b.num_rows())
                                .map(|i| {
                                    probes.iter().zip(&arrays).any(|((_, set), a)| {
                                        a.is_some_and(|a| !a.is_null(i) && set.contains(a.value(i)))
                                    })
                                })
                                .collect();
                        }
                        let col = |name: &str| b.column_by_name(name);
                        (0..b.num_rows())
                            .map(|i| {
                                let key = key_of(t.r.pk.iter().map(|&k| {
                                    col(&t.stored[k].0)
                                        .map_or(Value::Null, |c| cell(c, i, t.stored[k].1))
                                }));
                                upserts.contains_key(&key)
                                    || deletes.iter().any(|(ci, set)| {
                                        let v = col(&t.stored[*ci].0)
                                            .map_or(Value::Null, |c| cell(c, i, t.stored[*ci].1));
                                        set.contains(&key_of([v]))
                                    })
                            })
                            .collect()
                    })
                    .await?;
                    if hits.is_empty() {
                        continue;
                    }
                    hits
                }
            };
            // Then those rows whole: does the file change (an unchanged row of a rewritten group
            // does not change it)? The rows that go (replaced by a changed row, or deleted) are
            // kept by position, so the rewrite keeps every other row without looking at it.
            let mut dropped: Vec<usize> = Vec::new();
            let (mut file_updated, mut file_deleted) = (0u64, 0u64);
            let mut file_found = Vec::new();
            // Rows an earlier commit of the group took out are gone already.
            let gone = staged.dropped(&path);
            let ranges = crate::delta_place::separate_ranges(&ranges);
            let mut positions = ranges.iter().flat_map(|r| r.clone());
            let mut batches = place.read_rows(&t.dir, &path, size, &ranges, shown).await?;
            while let Some(b) = batches.next().await {
                let b = conform(t, &b?)?;
                reads.whole_rows += b.num_rows() as u64;
                for i in 0..b.num_rows() {
                    let Some(at) = positions.next() else {
                        return Err(lake_err(
                            shown,
                            format!("data file {path} returned more rows than were selected"),
                        ));
                    };
                    if gone.is_some_and(|g| g.contains(&at)) {
                        continue;
                    }
                    match fate(&b, i) {
                        Fate::Keep => {}
                        Fate::Replaced(ui, true) => {
                            file_found.push(ui);
                            unchanged.insert(ui);
                        }
                        Fate::Replaced(ui, false) => {
                            file_found.push(ui);
                            file_updated += 1;
                            dropped.push(at);
                        }
                        Fate::Deleted => {
                            file_deleted += 1;
                            dropped.push(at);
                        }
                    }
                }
            }
            found.extend(file_found);
            if dropped.is_empty() {
                continue;
            }
            updated += file_updated;
            deleted += file_deleted;
            touched += 1;
            staged.drop_rows(&path, size, file, dropped);
        }
    }
    // The rows to write: every upsert not found unchanged in place (one per key).
    let mut picked: Vec<usize> = upserts
        .values()
        .copied()
        .filter(|ui| !unchanged.contains(ui))
        .collect();
    picked.sort_unstable();
    let inserted = picked.iter().filter(|ui| !found.contains(ui)).count() as u64;
    let rows: Vec<&Vec<Value>> = picked.iter().map(|&ui| &batch.upserts[ui]).collect();
    if !rows.is_empty() {
        out.write(batch_of(t, &rows, synced_at_ms, false)?).await?;
    }
    staged.adds.extend(out.finish().await?);
    tracing::debug!(
        table = %t.r.display,
        upserts = batch.upserts.len(),
        inserted,
        updated,
        deleted,
        files_losing_rows = touched,
        ms = started.elapsed().as_millis() as u64,
        "Delta merge"
    );
    Ok(CommitStats {
        tables: vec![(batch.table.clone(), inserted, updated, deleted)],
    })
}

/// The column by which `batch` finds every stored row it may touch, and the hashes of its values:
/// the batch deletes by that one text column only, every upsert's value of it is among the
/// deleted ones, and a stored row with an upsert's key holds the same value (the column is part
/// of the key, or the key is derived from it: [`crate::TableSpec::key_implies`]). A stored row
/// outside those groups is then neither replaced nor deleted.
fn group_of(
    t: &Table,
    batch: &TableBatch,
    compat: Compat,
) -> Result<Option<(String, Vec<u32>)>, DestError> {
    let mut column: Option<usize> = None;
    let mut values: HashSet<&str> = HashSet::new();
    for (name, vals) in &batch.delete_where {
        let c = t.r.spec_column(name, compat)?;
        let ci = t.r.columns.iter().position(|x| x.name == c.name);
        if c.ty != ColumnType::Text || ci.is_none() || (column.is_some() && column != ci) {
            return Ok(None);
        }
        column = ci;
        values.extend(vals.iter().filter_map(|v| match v {
            Value::Text(s) => Some(s.as_str()),
            _ => None,
        }));
    }
    let Some(ci) = column else {
        return Ok(None);
    };
    if !t.r.pk.contains(&ci) && t.r.key_implies != Some(ci) {
        return Ok(None);
    }
    let covered = batch
        .upserts
        .iter()
        .all(|row| matches!(&row[ci], Value::Text(s) if values.contains(s.as_str())));
    let mut hashes: Vec<u32> = values.into_iter().map(group_hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    Ok(covered.then(|| (t.stored[ci].0.clone(), hashes)))
}

/// 32 bits are enough: a hash shared by two groups only makes a merge read the other group's
/// rows too, which it then tells apart by value; 4 bytes less per run keeps the index of a
/// 1,000,000-response table about 4 MB smaller.
fn group_hash(value: &str) -> u32 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    let h = h.finish();
    (h ^ (h >> 32)) as u32
}

/// Reads the `columns` of the file at `path` (`size` bytes) and returns the rows where `hits`
/// says yes, as sorted, separate ranges (empty when none does).
async fn find_rows(
    place: &Place,
    t: &Table,
    (path, size): (&str, u64),
    columns: &[String],
    reads: &mut MergeReads,
    mut hits: impl FnMut(&RecordBatch) -> Vec<bool>,
) -> Result<Vec<std::ops::Range<usize>>, DestError> {
    let mut batches = place
        .read_file(&t.dir, path, size, Some(columns), &t.r.display)
        .await?;
    let mut found: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0usize;
    while let Some(b) = batches.next().await {
        let b = b?;
        reads.probed_rows += b.num_rows() as u64;
        for (i, hit) in hits(&b).into_iter().enumerate() {
            if !hit {
                continue;
            }
            let row = at + i;
            match found.last_mut() {
                Some(last) if last.end == row => last.end = row + 1,
                _ => found.push(row..row + 1),
            }
        }
        at += b.num_rows();
    }
    Ok(found)
}

/// What merges keep of one table between commits, and what they read of it.
#[derive(Default)]
struct MergeState {
    index: GroupIndex,
    reads: MergeReads,
}

/// Rows the upserts and deletes of an open destination read from data files (per kind of read),
/// for the debug log and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeReads {
    /// Rows of which the key and filter columns were read, to find the files with affected rows.
    pub probed_rows: u64,
    /// Rows of which the group column was read once, into the group index.
    pub indexed_rows: u64,
    /// Rows read whole: to see whether a file changes, and to rewrite it.
    pub whole_rows: u64,
}

/// Where the values of one column of a table lie in its data files: per file, runs of rows that
/// hold the same value, by the value's hash (two values of one hash only cost a few more rows
/// read). A file is read for it the first time a merge needs it, and it is kept while the
/// destination is open: a data file never changes, so what was learnt of it stays true, and a
/// file the table no longer has is dropped when a merge sees it gone. The runs (12 bytes each,
/// one per response and file) are kept in a temporary file, [`RunStore`]; memory holds 4 bytes
/// per 256 of them, so the index does not grow the process with the table.
#[derive(Default)]
struct GroupIndex {
    /// Stored column name → data file path → the file's runs, or `None` for a file that cannot
    /// be indexed (the column is not plain text there, or it holds more rows than a run counts).
    columns: HashMap<String, HashMap<String, Option<StoredRuns>>>,
    store: RunStore,
}

impl GroupIndex {
    /// Forgets files that are not among `live`.
    fn retain<'a>(&mut self, live: impl Iterator<Item = &'a str>) {
        let live: HashSet<&str> = live.collect();
        for files in self.columns.values_mut() {
            files.retain(|path, _| live.contains(path.as_str()));
        }
    }

    /// The rows of the file at `path` (`size` bytes) whose `column` may hold a value of one of
    /// `hashes` (sorted): sorted, separate ranges; `None` when the file cannot be indexed.
    async fn ranges(
        &mut self,
        t: &Table,
        place: &Place,
        (path, size): (&str, u64),
        column: &str,
        hashes: &[u32],
        reads: &mut MergeReads,
    ) -> Result<Option<Vec<std::ops::Range<usize>>>, DestError> {
        let GroupIndex { columns, store } = self;
        let files = columns.entry(column.to_string()).or_default();
        if !files.contains_key(path) {
            let stored = match read_runs(t, place, path, size, column, reads).await? {
                Some(mut runs) => Some(
                    store
                        .put(&mut runs)
                        .map_err(|e| index_err(&t.r.display, store.dir(), e))?,
                ),
                None => None,
            };
            files.insert(path.to_string(), stored);
        }
        let Some(Some(runs)) = files.get(path) else {
            return Ok(None);
        };
        let mut found: Vec<std::ops::Range<usize>> = Vec::new();
        store
            .find(runs, hashes, &mut found)
            .map_err(|e| index_err(&t.r.display, store.dir(), e))?;
        found.sort_unstable_by_key(|r| r.start);
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(found.len());
        for r in found {
            match ranges.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => ranges.push(r),
            }
        }
        Ok(Some(ranges))
    }
}

/// An error of the group index's temporary file in `dir` (a full or unwritable temporary
/// directory), while merging into `table`.
fn index_err(table: &str, dir: &Path, e: std::io::Error) -> DestError {
    if is_disk_full(&e.to_string()) {
        return DestError::DiskFull {
            table: table.to_string(),
            destination: format!("the temporary directory {}, which holds the merge's group index", dir.display()),
            fix: "free space there, or set TMPDIR to a directory with room (the index takes 12 bytes per response and indexed table)".into(),
            partly_applied: false,
        };
    }
    lake_err(
        &format!("Delta table {table}"),
        format!(
            "cannot keep the merge's group index in a temporary file under {}: {e}; set TMPDIR to a writable directory with room",
            dir.display()
        ),
    )
}

/// Reads one column of a data file into runs of equal values (in row order); `None` when the
/// column is not a plain text column there or the file is too long to count in a run. A file
/// without the column (written before it was added) has no runs: its rows hold null there.
async fn read_runs(
    t: &Table,
    place: &Place,
    path: &str,
    size: u64,
    column: &str,
    reads: &mut MergeReads,
) -> Result<Option<Vec<Run>>, DestError> {
    let mut batches = place
        .read_file(
            &t.dir,
            path,
            size,
            Some(&[column.to_string()]),
            &t.r.display,
        )
        .await?;
    let mut runs: Vec<Run> = Vec::new();
    // The first row of the run being read and its value's hash (`None`: a null run, which no
    // group holds), and the run's value where it continues from the batch before.
    let mut open: Option<(usize, Option<u32>)> = None;
    let mut carried: Option<Option<String>> = None;
    let mut row = 0usize;
    let close =
        |open: &mut Option<(usize, Option<u32>)>, end: usize, runs: &mut Vec<Run>| -> bool {
            let Some((start, hash)) = open.take() else {
                return true;
            };
            let (Ok(start), Ok(len)) = (u32::try_from(start), u32::try_from(end - start)) else {
                return false;
            };
            if let Some(hash) = hash {
                runs.push(Run { hash, start, len });
            }
            true
        };
    while let Some(b) = batches.next().await {
        let b = b?;
        match b.column_by_name(column) {
            None => {
                if !close(&mut open, row, &mut runs) {
                    return Ok(None);
                }
                carried = None;
            }
            Some(c) => {
                let Some(a) = c.as_any().downcast_ref::<StringArray>() else {
                    return Ok(None);
                };
                let value = |i: usize| (!a.is_null(i)).then(|| a.value(i));
                for i in 0..a.len() {
                    // Rows are compared in place; only a batch's last value is copied, to
                    // compare the next batch's first row with.
                    let same = match i {
                        0 => carried.as_ref().is_some_and(|v| v.as_deref() == value(0)),
                        _ => value(i - 1) == value(i),
                    };
                    if same {
                        continue;
                    }
                    if !close(&mut open, row + i, &mut runs) {
                        return Ok(None);
                    }
                    open = Some((row + i, value(i).map(group_hash)));
                }
                carried = (!a.is_empty()).then(|| value(a.len() - 1).map(str::to_string));
            }
        }
        row += b.num_rows();
        reads.indexed_rows += b.num_rows() as u64;
    }
    if !close(&mut open, row, &mut runs) || u32::try_from(row).is_err() {
        return Ok(None);
    }
    Ok(Some(runs))
}

/// The actions that mark a soft-delete table's rows not written by this sync as deleted.
async fn mark_unseen(
    t: &Table,
    place: &Place,
    compat: Compat,
    staged: &mut Staged,
    m: &crate::MarkUnseenDeleted,
    synced_at_ms: i64,
) -> Result<CommitStats, DestError> {
    let shown = t.r.display.as_str();
    let n_spec = t.r.columns.len();
    let (synced_i, deleted_i) = (n_spec, n_spec + 1);
    let mut scope = Vec::new();
    for (col, v) in &m.scope {
        let c = t.r.spec_column(col, compat)?;
        t.r.check_value(c, v)?;
        let ci =
            t.r.columns
                .iter()
                .position(|x| x.name == c.name)
                .unwrap_or(0);
        scope.push((ci, normalized(v, c.ty)));
    }
    // Whether a stored row is to be marked now.
    let stale = |b: &RecordBatch, i: usize| -> bool {
        let deleted = matches!(
            cell(b.column(deleted_i), i, ColumnType::Bool),
            Value::Bool(true)
        );
        let in_scope = scope
            .iter()
            .all(|(ci, v)| &cell(b.column(*ci), i, t.stored[*ci].1) == v);
        let older = match cell(b.column(synced_i), i, ColumnType::Timestamp) {
            Value::Timestamp(ms) => ms < synced_at_ms,
            _ => true,
        };
        !deleted && in_scope && older
    };
    let mut marked = 0u64;
    let mut out = Output {
        t,
        place,
        writer: None,
    };
    for (path, size, file) in staged.files(t)? {
        let mut in_file = 0u64;
        let mut batches = place.read_file(&t.dir, &path, size, None, shown).await?;
        while let Some(b) = batches.next().await {
            let b = conform(t, &b?)?;
            in_file += (0..b.num_rows()).filter(|&i| stale(&b, i)).count() as u64;
        }
        if in_file == 0 {
            continue;
        }
        marked += in_file;
        staged.drop_file(file);
        out.rewrite(&path, size, |b| {
            let flags: BooleanArray = (0..b.num_rows())
                .map(|i| {
                    Some(
                        stale(b, i)
                            || matches!(
                                cell(b.column(deleted_i), i, ColumnType::Bool),
                                Value::Bool(true)
                            ),
                    )
                })
                .collect();
            // A row marked now was written (soft-deleted) by this sync: its `<p>_synced` says so.
            let synced: TimestampMicrosecondArray = (0..b.num_rows())
                .map(|i| {
                    if stale(b, i) {
                        Some(synced_at_ms.saturating_mul(1000))
                    } else {
                        match cell(b.column(synced_i), i, ColumnType::Timestamp) {
                            Value::Timestamp(ms) => Some(ms.saturating_mul(1000)),
                            _ => None,
                        }
                    }
                })
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC");
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            cols[deleted_i] = Arc::new(flags);
            cols[synced_i] = Arc::new(synced);
            RecordBatch::try_new(Arc::clone(&t.schema), cols).map_err(|e| lake_err(shown, e))
        })
        .await?;
    }
    staged.adds.extend(out.finish().await?);
    Ok(CommitStats {
        tables: vec![(m.table.clone(), 0, marked, 0)],
    })
}

impl DeltaDestination {
    async fn keys(
        &mut self,
        table: &str,
        column: &str,
        filter: &[(String, Value)],
    ) -> Result<Vec<String>, DestError> {
        self.close_group().await?;
        let resolved: HashMap<String, Resolved> = self
            .tables
            .iter()
            .map(|(k, t)| (k.clone(), t.r.clone()))
            .collect();
        let (r, c) = keys_target(&resolved, table, column, self.compat)?;
        let t = self.table(table)?;
        let mut wanted: Vec<(String, ColumnType, Value)> = Vec::new();
        for (col, v) in filter {
            let fc = r.spec_column(col, self.compat)?;
            r.check_value(fc, v)?;
            wanted.push((fc.name.clone(), fc.ty, normalized(v, fc.ty)));
        }
        let mut names = vec![c.name.clone()];
        names.extend(wanted.iter().map(|w| w.0.clone()));
        names.dedup();
        let mut out = HashSet::new();
        for (path, size, _) in live_files(&t.delta, &r.display)? {
            let mut batches = self
                .place
                .read_file(&t.dir, &path, size, Some(&names), &r.display)
                .await?;
            while let Some(b) = batches.next().await {
                let b = b?;
                let Some(col) = b.column_by_name(&c.name) else {
                    continue;
                };
                for i in 0..b.num_rows() {
                    let ok = wanted.iter().all(|(n, ty, v)| {
                        b.column_by_name(n).is_some_and(|fc| &cell(fc, i, *ty) == v)
                    });
                    if let (true, Value::Text(s)) = (ok, cell(col, i, ColumnType::Text)) {
                        out.insert(s.into_string());
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn rows(&mut self, table: &str) -> Result<Vec<Vec<Value>>, DestError> {
        self.close_group().await?;
        let t = self.table(table)?;
        let mut out = Vec::new();
        for (path, size, _) in live_files(&t.delta, &t.r.display)? {
            let mut batches = self
                .place
                .read_file(&t.dir, &path, size, None, &t.r.display)
                .await?;
            while let Some(b) = batches.next().await {
                let b = conform(t, &b?)?;
                for i in 0..b.num_rows() {
                    out.push(
                        t.stored
                            .iter()
                            .enumerate()
                            .map(|(ci, (_, ty))| cell(b.column(ci), i, *ty))
                            .collect(),
                    );
                }
            }
        }
        crate::sort_by_key(&mut out, &t.r.pk);
        Ok(out)
    }

    fn cursor(&self, stream: &str) -> Result<Option<serde_json::Value>, DestError> {
        if let Some(g) = &self.group
            && let Some((_, c)) = g.cursors.iter().find(|c| c.0 == stream)
        {
            return Ok(Some(c.clone()));
        }
        let shown = self.place.shown_of(&self.state_name);
        self.cursors
            .get(stream)
            .map(|text| parse_cursor(stream, &shown, text))
            .transpose()
    }
}

/// Whether a table of `pending` already has its commit.
async fn any_landed(place: &Place, pending: &Pending) -> bool {
    for (dir, _) in &pending.tables {
        let shown = place.shown_of(dir);
        let Ok(table) = load_table(place, dir, &shown).await else {
            return true;
        };
        let done = match table.snapshot() {
            Ok(s) => s
                .transaction_version(table.log_store().as_ref(), APP_ID)
                .await
                .ok()
                .flatten(),
            Err(_) => return true,
        };
        if done.unwrap_or(0) >= pending.seq {
            return true;
        }
    }
    false
}

/// A table handle for a location that holds no table yet, to create one: not loaded, since
/// delta-rs logs an error for each attempt to load a log that is not there.
fn unloaded(place: &Place, dir: &str, shown: &str) -> Result<DeltaTable, DestError> {
    place
        .table_builder(dir)?
        .build()
        .map_err(|e| lake_err(shown, e))
}

async fn load_table(place: &Place, dir: &str, shown: &str) -> Result<DeltaTable, DestError> {
    place
        .table_builder(dir)?
        .load()
        .await
        .map_err(|e| lake_err(shown, e))
}

/// Opens the table `dir`, creating it with `stored` columns when its location holds nothing.
/// Says whether it was created. A location holding other files is refused.
async fn open_or_create(
    place: &Place,
    dir: &str,
    shown: &str,
    stored: &[(String, ColumnType)],
) -> Result<(DeltaTable, bool), DestError> {
    match place.holds(dir).await? {
        Holds::Table => return Ok((load_table(place, dir, shown).await?, false)),
        Holds::Other(found) => {
            return Err(DestError::Settings(format!(
                "{shown} is not empty ({found} is there) and holds no Delta table (no _delta_log directory); xmbridge writes a Delta table there: move what is there away, or choose another destination directory"
            )));
        }
        Holds::Nothing => {}
    }
    place
        .prepare(dir)
        .map_err(|e| write_err(&place.shown(), shown, e))?;
    let table = unloaded(place, dir, shown)?;
    let created = table
        .create()
        .with_table_name(dir)
        .with_columns(
            stored
                .iter()
                .map(|(n, t)| StructField::new(n.clone(), delta_type(*t), true)),
        )
        .await
        .map_err(|e| write_err(&place.shown(), shown, e))?;
    Ok((created, true))
}

/// Adds the `stored` columns the table lacks (schema evolution); a column of another type is
/// an error naming it.
async fn evolve(
    table: DeltaTable,
    stored: &[(String, ColumnType)],
    shown: &str,
) -> Result<DeltaTable, DestError> {
    let schema = table.snapshot().map_err(|e| lake_err(shown, e))?.schema();
    let mut missing = Vec::new();
    for (name, ty) in stored {
        match schema.field(name) {
            Some(f) => {
                let want = delta_type(*ty);
                if f.data_type() != &want {
                    return Err(DestError::TypeConflict {
                        table: shown.to_string(),
                        column: name.clone(),
                        found: delta_type_name(f.data_type()),
                        expected: delta_type_name(&want),
                        fix: "another writer changed the Delta table's schema; restore the column's type (or move the table away and sync with --full)".into(),
                    });
                }
            }
            None => missing.push(StructField::new(name.clone(), delta_type(*ty), true)),
        }
    }
    if missing.is_empty() {
        return Ok(table);
    }
    table
        .add_columns()
        .with_fields(missing)
        .await
        .map_err(|e| lake_err(shown, e))
}

/// The table's live files: path (relative to the table's directory), size and the action that
/// removes it.
fn live_files(
    table: &DeltaTable,
    shown: &str,
) -> Result<Vec<(String, u64, deltalake::kernel::Remove)>, DestError> {
    let snapshot = table.snapshot().map_err(|e| lake_err(shown, e))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| {
            (
                f.path().into_owned(),
                u64::try_from(f.size()).unwrap_or(0),
                f.remove_action(true),
            )
        })
        .collect())
}

/// Commits `actions` to `table` with the transaction identifier of commit `seq`.
async fn commit_actions(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    seq: i64,
    place: &str,
    shown: &str,
) -> Result<(), DestError> {
    let props =
        CommitProperties::default().with_application_transaction(Transaction::new(APP_ID, seq));
    let snapshot = table.snapshot().map_err(|e| lake_err(shown, e))?;
    // A commit that rewrites files read the table as of `snapshot`: as a merge over the whole
    // table, Delta's conflict check refuses it when another writer changed the table since.
    // New rows alone are a blind append, which commutes with any other writer's.
    let operation = if actions.iter().any(|a| matches!(a, Action::Remove(_))) {
        DeltaOperation::Merge {
            predicate: None,
            merge_predicate: None,
            matched_predicates: Vec::new(),
            not_matched_predicates: Vec::new(),
            not_matched_by_source_predicates: Vec::new(),
        }
    } else {
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        }
    };
    let committed = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(|e| write_err(place, shown, e))?;
    // The state the commit ended with: reading the log again would cost a LIST and GETs (on S3,
    // a round trip each).
    table.state = Some(committed.snapshot);
    Ok(())
}

/// What `xmbridge lake optimize` did to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptimizeReport {
    /// The table's directory name.
    pub table: String,
    /// Live data files before and after.
    pub files_before: usize,
    /// Live data files after.
    pub files_after: usize,
    /// Small files that were rewritten into larger ones.
    pub files_compacted: usize,
    /// Rows in the rewritten files.
    pub rows_rewritten: u64,
}

/// What `xmbridge lake vacuum` removed (or would remove) from one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VacuumReport {
    /// The table's directory name.
    pub table: String,
    /// Files deleted (or, in a dry run, that would be).
    pub files: Vec<String>,
}

impl DeltaDestination {
    /// Reloads the tables this destination holds open, so they see files another step wrote.
    async fn refresh_open_tables(&mut self) -> Result<(), DestError> {
        for t in self.tables.values_mut() {
            t.delta
                .update_state()
                .await
                .map_err(|e| lake_err(&t.r.display, e))?;
        }
        Ok(())
    }

    /// Rewrites each table's small files (under half the target size) into files of about the
    /// target size, in one commit per table that changes no data (`dataChange: false`), so
    /// readers and an incremental sync's merges open fewer files. Tables with fewer than two
    /// small files are left alone. Holds the schema directory's lock: a sync cannot run meanwhile.
    pub async fn optimize(&mut self) -> Result<Vec<OptimizeReport>, DestError> {
        self.close_group().await?;
        let target = self.opts.target_file_mb.saturating_mul(1024 * 1024);
        let mut reports = Vec::new();
        let place_shown = self.place.shown();
        for dir in self.place.table_dirs().await? {
            let shown = self.place.shown_of(&dir);
            let mut table = load_table(&self.place, &dir, &shown).await?;
            let files = live_files(&table, &shown)?;
            let small: Vec<_> = files.iter().filter(|f| f.1 < target / 2).collect();
            let mut report = OptimizeReport {
                table: dir.clone(),
                files_before: files.len(),
                files_after: files.len(),
                files_compacted: 0,
                rows_rewritten: 0,
            };
            if small.len() < 2 {
                reports.push(report);
                continue;
            }
            let mut writer =
                new_writer(&table, &shown, ROW_GROUP_ROWS)?.with_target_file_size(target);
            let schema = writer.arrow_schema();
            let mut actions = Vec::new();
            for (path, size, remove) in &small {
                let mut batches = self
                    .place
                    .read_file(&dir, path, *size, None, &shown)
                    .await?;
                while let Some(b) = batches.next().await {
                    let b = b?;
                    report.rows_rewritten += b.num_rows() as u64;
                    let columns = schema
                        .fields()
                        .iter()
                        .map(|f| match b.column_by_name(f.name()) {
                            Some(c) => Arc::clone(c),
                            None => new_null_array(f.data_type(), b.num_rows()),
                        })
                        .collect();
                    let b = RecordBatch::try_new(Arc::clone(&schema), columns)
                        .map_err(|e| lake_err(&shown, e))?;
                    writer
                        .write(b)
                        .await
                        .map_err(|e| write_err(&place_shown, &shown, e))?;
                }
                let mut remove = remove.clone();
                remove.data_change = false;
                actions.push(Action::Remove(remove));
            }
            let adds = writer
                .flush()
                .await
                .map_err(|e| write_err(&place_shown, &shown, e))?;
            report.files_compacted = small.len();
            report.files_after = files.len() - small.len() + adds.len();
            actions.extend(adds.into_iter().map(|mut a| {
                a.data_change = false;
                Action::Add(a)
            }));
            let snapshot = table.snapshot().map_err(|e| lake_err(&shown, e))?;
            CommitBuilder::default()
                .with_actions(actions)
                .build(
                    Some(snapshot),
                    table.log_store(),
                    DeltaOperation::Optimize {
                        predicate: None,
                        target_size: i64::try_from(target).unwrap_or(i64::MAX),
                    },
                )
                .await
                .map_err(|e| write_err(&place_shown, &shown, e))?;
            table
                .update_state()
                .await
                .map_err(|e| lake_err(&shown, e))?;
            reports.push(report);
        }
        self.refresh_open_tables().await?;
        Ok(reports)
    }

    /// Deletes the data files no table version newer than `older_than` refers to any more
    /// (removed by a merge or an optimize) and files no version ever referred to (written by a
    /// run killed before its commit), once they are older than `older_than`. A reader that
    /// looks at versions older than that ("time travel") cannot read them afterwards.
    pub async fn vacuum(
        &mut self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<VacuumReport>, DestError> {
        self.close_group().await?;
        let retention = chrono::Duration::from_std(older_than)
            .map_err(|_| DestError::Settings(format!("--older-than {older_than:?} is too long")))?;
        let mut reports = Vec::new();
        for dir in self.place.table_dirs().await? {
            let shown = self.place.shown_of(&dir);
            let table = load_table(&self.place, &dir, &shown).await?;
            let (_, metrics) = table
                .vacuum()
                .with_retention_period(retention)
                .with_enforce_retention_duration(false)
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .with_dry_run(dry_run)
                .await
                .map_err(|e| write_err(&self.place.shown(), &shown, e))?;
            reports.push(VacuumReport {
                table: dir.clone(),
                files: metrics.files_deleted,
            });
        }
        self.refresh_open_tables().await?;
        Ok(reports)
    }
}

/// Reads the live rows of the Delta table in `dir` (only those whose text column `column` holds
/// one of `keep`, when given; only the columns named in `columns`, when given — the schema
/// returned for a table without rows is still the whole table's), for benchmarks and tools that
/// compare a table with a raw write of the same rows.
pub async fn read_table(
    dir: &Path,
    only: Option<(&str, &HashSet<String>)>,
    columns: Option<&[String]>,
) -> Result<(SchemaRef, Vec<RecordBatch>), DestError> {
    let shown = dir.display().to_string();
    let mut schema = None;
    let mut out = Vec::new();
    let table_schema = scan_table(dir, columns, |b| {
        let b = match only {
            None => b,
            Some((column, keep)) => {
                let Some(c) = b.column_by_name(column) else {
                    return Ok(());
                };
                let mask: BooleanArray = (0..b.num_rows())
                    .map(|i| {
                        Some(matches!(cell(c, i, ColumnType::Text), Value::Text(s) if keep.contains(s.as_str())))
                    })
                    .collect();
                filter_record_batch(&b, &mask).map_err(|e| lake_err(&shown, e))?
            }
        };
        schema.get_or_insert_with(|| b.schema());
        out.push(b);
        Ok(())
    })
    .await?;
    Ok((schema.unwrap_or(table_schema), out))
}

/// Hands the live rows of the Delta table in `dir` (only the `columns` named, when given) to
/// `each`, one record batch at a time, so that a caller that keeps little of them holds little;
/// returns the whole table's schema.
pub async fn scan_table(
    dir: &Path,
    columns: Option<&[String]>,
    mut each: impl FnMut(RecordBatch) -> Result<(), DestError>,
) -> Result<SchemaRef, DestError> {
    let shown = dir.display().to_string();
    let (place, name) = local_table(dir)?;
    let table = load_table(&place, &name, &shown).await?;
    for (path, size, _) in live_files(&table, &shown)? {
        let mut batches = place.read_file(&name, &path, size, columns, &shown).await?;
        while let Some(b) = batches.next().await {
            each(b?)?;
        }
    }
    let w = RecordBatchWriter::for_table(&table).map_err(|e| lake_err(&shown, e))?;
    Ok(w.arrow_schema())
}

/// Writes `batches` as a new Delta table in `dir` in one commit, the rows streamed into files of
/// about `target_file_mb`: the raw write a benchmark compares a sync with. Returns the rows.
pub async fn write_table(
    dir: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    target_file_mb: u64,
) -> Result<u64, DestError> {
    let shown = dir.display().to_string();
    let stored: Vec<StructField> = schema
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                DataType::Timestamp(..) => deltalake::kernel::DataType::TIMESTAMP,
                DataType::Boolean => deltalake::kernel::DataType::BOOLEAN,
                DataType::Int32 => deltalake::kernel::DataType::INTEGER,
                DataType::Int64 => deltalake::kernel::DataType::LONG,
                DataType::Float64 => deltalake::kernel::DataType::DOUBLE,
                _ => deltalake::kernel::DataType::STRING,
            };
            StructField::new(f.name().clone(), ty, true)
        })
        .collect();
    let (place, name) = local_table(dir)?;
    place
        .prepare(&name)
        .map_err(|e| write_err(&shown, &shown, e))?;
    let mut table = unloaded(&place, &name, &shown)?
        .create()
        .with_columns(stored)
        .await
        .map_err(|e| write_err(&shown, &shown, e))?;
    let mut w = new_writer(&table, &shown, ROW_GROUP_ROWS)?
        .with_target_file_size(target_file_mb.saturating_mul(1024 * 1024));
    let mut rows = 0u64;
    for b in batches {
        rows += b.num_rows() as u64;
        w.write(b.clone())
            .await
            .map_err(|e| write_err(&shown, &shown, e))?;
    }
    let adds = w.flush().await.map_err(|e| write_err(&shown, &shown, e))?;
    let snapshot = table.snapshot().map_err(|e| lake_err(&shown, e))?;
    CommitBuilder::default()
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(|e| write_err(&shown, &shown, e))?;
    table
        .update_state()
        .await
        .map_err(|e| lake_err(&shown, e))?;
    Ok(rows)
}

/// Which system-column names the syncs into the schema `schema` under `path` (a directory or
/// an `s3://` URL) used, told by its cursor table; `None` when there is no cursor table there
/// (nothing was synced into it). Creates nothing.
pub async fn synced_compat(
    path: &str,
    schema: &str,
    s3: &S3Settings,
) -> Result<Option<Compat>, DestError> {
    check_dir_name(schema)?;
    let place = Place::open(path, schema, &format!("delta:{path}"), s3)?;
    for compat in [Compat::Xmbridge, Compat::Fivetran] {
        if matches!(place.holds(&compat.state_table()).await?, Holds::Table) {
            return Ok(Some(compat));
        }
    }
    Ok(None)
}

/// The local table directory `dir` as its parent's place and its name.
fn local_table(dir: &Path) -> Result<(Place, String), DestError> {
    let absolute = std::path::absolute(dir).map_err(|e| lake_err(&dir.display().to_string(), e))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok((
            Place::Local(parent.to_path_buf()),
            name.to_string_lossy().into_owned(),
        )),
        _ => Err(DestError::Settings(format!(
            "{} names no table directory",
            dir.display()
        ))),
    }
}

impl Destination for DeltaDestination {
    fn ensure_tables<'a>(
        &'a mut self,
        specs: &'a [TableSpec],
    ) -> BoxFuture<'a, Result<Ensured, DestError>> {
        Box::pin(self.ensure(specs))
    }

    fn cursor<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, DestError>> {
        let got = DeltaDestination::cursor(self, stream);
        Box::pin(async move { got })
    }

    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(DeltaDestination::commit(self, commit))
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(self.close_group())
    }

    fn close(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(DeltaDestination::close(self))
    }

    fn append_commit_rows(&self) -> Option<usize> {
        Some(APPEND_COMMIT_ROWS)
    }

    fn describe(&self) -> String {
        format!(
            "{} (schema directory {})",
            self.described,
            self.place.shown()
        )
    }

    fn keys<'a>(
        &'a mut self,
        table: &'a str,
        column: &'a str,
        filter: &'a [(String, Value)],
    ) -> BoxFuture<'a, Result<Vec<String>, DestError>> {
        Box::pin(DeltaDestination::keys(self, table, column, filter))
    }

    fn rows<'a>(&'a mut self, table: &'a str) -> BoxFuture<'a, Result<Vec<Vec<Value>>, DestError>> {
        Box::pin(DeltaDestination::rows(self, table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_url_query() {
        assert_eq!(
            path_of_url("delta:/tmp/lake?target_file_mb=8"),
            Some("/tmp/lake")
        );
        assert_eq!(path_of_url("delta:///tmp/lake"), Some("/tmp/lake"));
        assert_eq!(path_of_url("sqlite:/tmp/a.db"), None);
        assert_eq!(
            DeltaOptions::from_url("delta:/x?target_file_mb=8")
                .unwrap()
                .target_file_mb,
            8
        );
        assert!(DeltaOptions::from_url("delta:/x?target_file_mb=0").is_err());
        assert!(DeltaOptions::from_url("delta:/x?size=1").is_err());
    }

    /// The group index's file cannot be made (a missing directory) or written (a full tmpfs, when
    /// this run may mount one): the merge's error names the directory and the fix, and a full
    /// one is a disk-full error that says nothing of the commit was applied.
    #[test]
    fn a_group_index_without_room_is_a_clear_error() {
        use xmbridge_test_kit::disk::{self, SmallDisk};
        let runs = |n: u32| -> Vec<Run> {
            (0..n)
                .map(|i| Run {
                    hash: i.wrapping_mul(2_654_435_761),
                    start: i,
                    len: 1,
                })
                .collect()
        };
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-directory");
        let mut store = RunStore::in_dir(missing.clone());
        let e = store.put(&mut runs(10)).unwrap_err();
        let e = index_err("question_response", store.dir(), e);
        let said = e.to_string();
        assert_eq!(e.kind(), crate::DestErrorKind::Database, "{said}");
        assert!(
            said.contains("question_response")
                && said.contains("group index")
                && said.contains(&missing.display().to_string())
                && said.contains("set TMPDIR"),
            "{said}"
        );

        if !disk::available() {
            return;
        }
        let small_dir = tmp.path().join("small");
        let small = SmallDisk::mount(&small_dir, 64 * 1024);
        // Filled to the last page, so the index's first write meets ENOSPC.
        let mut filler = std::fs::File::create(small_dir.join("filler")).unwrap();
        while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
        drop(filler);
        let mut store = RunStore::in_dir(small_dir.clone());
        let e = store.put(&mut runs(100_000)).unwrap_err();
        let e = index_err("question_response", store.dir(), e);
        let said = e.to_string();
        assert_eq!(e.kind(), crate::DestErrorKind::DiskFull, "{said}");
        assert!(
            said.contains(&small_dir.display().to_string())
                && said.contains("set TMPDIR")
                && said.contains("nothing of this commit was applied"),
            "{said}"
        );
        drop(store);
        drop(small);
    }

    #[test]
    fn keys_of_equal_values_are_equal() {
        let a = key_of([Value::Text("a".into()), Value::Int(1)]);
        let b = key_of([Value::Text("a".into()), Value::Int(1)]);
        let c = key_of([Value::Text("a1".into())]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
