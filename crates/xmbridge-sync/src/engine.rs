//! The engine: picks the streams, prepares the tables, runs the streams in order and adds up
//! what every commit changed. Streams live in `streams/`; they talk to the destination only
//! through [`Ctx`], which stamps every commit with the run's time and counts its changes.

use crate::catalog;
use crate::convert::Row;
use crate::progress::Progress;
use crate::streams;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xmbridge_destinations::{
    Commit, CommitStats, Compat, DestError, Destination, TableBatch, TableSpec, Value,
};
use xmbridge_qualtrics::Client;
use xmbridge_qualtrics::capabilities::{TABLE_GROUPS, group_of_stream, group_of_table};

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Only these tables (named as in docs/design/schema.md); `None` = every table. A table pulls in its whole
    /// stream group (see [`TABLE_GROUPS`]): asking for `question_response` also writes
    /// `survey_response` and `survey_embedded_data` (they share one export and one cursor), and
    /// the response group also syncs the survey definitions it flattens answers with.
    pub tables: Option<Vec<String>>,
    /// Ignore cursors: re-read every definition and export every response (rows are upserts, so
    /// a full sync over an existing destination rewrites rows rather than doubling them).
    pub full: bool,
    /// The system-column prefix the destination was opened with (kept for messages; the
    /// destination applies it).
    pub compat: Compat,
    /// Surveys exported (and definitions read) at the same time. Default 4.
    pub survey_parallelism: usize,
    /// Responses per destination transaction within one survey's export, and directory
    /// contacts read per transaction. Default 5,000.
    pub commit_every: usize,
    /// Rows (of all tables) per destination transaction within one survey's export, whichever
    /// of this and `commit_every` comes first. It bounds the memory a sync holds: one survey's
    /// rows being built, one waiting and one being written. Default 40,000 (≈ 30 MB).
    pub commit_rows: usize,
    /// The run's time written into `<p>_synced`; `None` = now. Tests pin it.
    pub synced_at_ms: Option<i64>,
    /// Run the reconcile pass on every survey now: export response ids only and remove the
    /// responses Qualtrics no longer has, with their answer and embedded-data rows.
    pub reconcile: bool,
    /// Reconcile a survey automatically when its last reconcile (kept in its
    /// `responses:{survey}` cursor) is at least this old. Default 7 days.
    pub reconcile_every: Duration,
    /// Told about each response commit before it is applied (workflow triggers); `None` = nobody.
    pub observer: Option<crate::observer::Observer>,
    /// Items only readable one by one — directory contacts (`GET …/contacts/{id}` and their
    /// transactions), users (`GET /users/{id}`), distribution histories — are read when their
    /// list shows them new or changed, and otherwise at least once in this interval: what only
    /// that read returns lags by at most this much (docs/sync.md, "Items read one by one").
    /// Zero reads every item on every run. Default 7 days.
    pub refresh_every: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            tables: None,
            full: false,
            compat: Compat::default(),
            survey_parallelism: 4,
            commit_every: 5_000,
            commit_rows: 40_000,
            synced_at_ms: None,
            reconcile: false,
            reconcile_every: Duration::from_secs(7 * 24 * 3600),
            observer: None,
            refresh_every: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Rows one table gained, changed and lost in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Rows written that were not in the destination before.
    pub inserted: u64,
    /// Rows written over an existing row with the same key.
    pub updated: u64,
    /// Hard deletes and soft-delete marks.
    pub deleted: u64,
}

/// A stream group read from scratch because tables of it had to be created although its cursor
/// says data was loaded (dropped by hand, or new in this version): incrementally, they would stay
/// empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The group's stream ([`TableGroup::stream`](xmbridge_qualtrics::capabilities::TableGroup)), e.g. `responses`.
    pub group: String,
    /// Its tables that were missing.
    pub missing: Vec<String>,
}

impl Reloaded {
    /// `table X was missing; reloading it from scratch (…)` for the log, or `reloaded` once
    /// `done` (the summary).
    pub fn message(&self, done: bool) -> String {
        let plural = self.missing.len() > 1;
        let group_tables = group_of_stream(&self.group)
            .map(|g| g.tables.join(", "))
            .unwrap_or_default();
        format!(
            "{} {} {} missing; {} {} from scratch (the cursor of its stream says it was loaded: dropped by hand?). The whole {group} stream ({group_tables}) {} read again; other streams stay incremental",
            if plural { "tables" } else { "table" },
            self.missing.join(", "),
            if plural { "were" } else { "was" },
            if done { "reloaded" } else { "reloading" },
            if plural { "them" } else { "it" },
            if done { "was" } else { "is" },
            group = self.group
        )
    }
}

/// A table not synced, and why (e.g. a permission the credentials lack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The destination table not synced.
    pub table: String,
    /// Why, and what would let the next run sync it.
    pub reason: String,
}

/// What a sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncSummary {
    /// Every table the run prepared, with its counts (zeros included).
    pub tables: BTreeMap<String, TableCounts>,
    /// Tables not synced this run, and why.
    pub skipped: Vec<Skipped>,
    /// Stream groups reloaded from scratch because tables of them were missing.
    pub reloaded: Vec<Reloaded>,
    /// Wall-clock time of the whole run.
    pub duration: Duration,
    /// HTTP requests made to Qualtrics (retries included).
    pub api_calls: u64,
    /// The same, per stream group that ran (`surveys`, `responses`, `directories` …), in the
    /// order they ran.
    pub api_calls_by_stream: Vec<(String, u64)>,
    /// Survey definitions (re-)read.
    pub definitions_read: u64,
    /// Surveys whose responses were exported.
    pub surveys_exported: u64,
    /// Responses written (new and updated).
    pub responses: u64,
    /// Surveys whose response ids were reconciled with Qualtrics (deleted responses removed).
    pub surveys_reconciled: u64,
    /// Directory contacts listed (all directories).
    pub contacts_listed: u64,
    /// Of those, contacts read in full (`GET …/contacts/{id}` and its transactions): new,
    /// changed, or due for their periodic refresh (see [`SyncOptions::refresh_every`]).
    pub contacts_read: u64,
}

impl SyncSummary {
    /// Counts of one table (zeros when it was not touched).
    pub fn table(&self, name: &str) -> TableCounts {
        self.tables.get(name).copied().unwrap_or_default()
    }
}

impl fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .tables
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:w$}  {:>10}  {:>10}  {:>10}",
            "table", "inserted", "updated", "deleted"
        )?;
        for (t, c) in &self.tables {
            writeln!(
                f,
                "{t:w$}  {:>10}  {:>10}  {:>10}",
                c.inserted, c.updated, c.deleted
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "skipped {}: {}", s.table, s.reason)?;
        }
        for r in &self.reloaded {
            writeln!(f, "{}", r.message(true))?;
        }
        if self.contacts_listed > 0 {
            writeln!(
                f,
                "contacts: {} listed, {} read in full (new, changed or due for refresh)",
                self.contacts_listed, self.contacts_read
            )?;
        }
        if !self.api_calls_by_stream.is_empty() {
            let each: Vec<String> = self
                .api_calls_by_stream
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            writeln!(f, "API calls by stream: {}", each.join(", "))?;
        }
        write!(
            f,
            "{} responses from {} surveys, {} surveys reconciled, {} definitions read, {} API calls, {:.1} s",
            self.responses,
            self.surveys_exported,
            self.surveys_reconciled,
            self.definitions_read,
            self.api_calls,
            self.duration.as_secs_f64()
        )
    }
}

/// Why a sync stopped. Tables (and surveys) committed before the failure stay committed; the
/// next run resumes from their cursors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Qualtrics refused or failed a call.
    #[error("{}: {source}", place(table, survey.as_deref()))]
    Qualtrics {
        /// The table being synced when the call failed.
        table: String,
        /// The survey being read (`SV_…`), for per-survey streams.
        survey: Option<String>,
        #[source]
        /// The client's error.
        source: Box<xmbridge_qualtrics::Error>,
    },
    /// The destination refused a write.
    #[error("{}: {source}", place(table, survey.as_deref()))]
    Destination {
        /// The table being written.
        table: String,
        /// The survey whose rows were written (`SV_…`), for per-survey streams.
        survey: Option<String>,
        #[source]
        /// The destination's error.
        source: Box<DestError>,
    },
    /// A stream's blocking worker (the export parser, the id export reader) died.
    #[error("{}: {worker} stopped: {source}", place(table, survey.as_deref()))]
    Worker {
        /// The table the worker read for.
        table: String,
        /// The survey the worker read (`SV_…`), for per-survey streams.
        survey: Option<String>,
        /// Which worker, e.g. `the export parser`.
        worker: &'static str,
        #[source]
        /// The join error carrying the worker's panic.
        source: tokio::task::JoinError,
    },
    /// The [`ResponseObserver`](crate::ResponseObserver) refused a commit's responses; the
    /// commit was not made, so the next run offers them again.
    #[error(
        "{}: the response observer failed: {source}",
        place("survey_response", Some(survey))
    )]
    Observer {
        /// The survey whose commit was refused (`SV_…`).
        survey: String,
        #[source]
        /// The observer's own error.
        source: crate::ObserverError,
    },
    /// Options that cannot work (an unknown table name …).
    #[error("invalid sync options: {0}")]
    Options(String),
}

/// The "table" of a failure no one table or survey is to blame for: a commit the destination
/// grouped and applied when flushed (SQLite's and Delta's group commits).
const GROUPED_COMMITS: &str = "(commit)";

fn place(table: &str, survey: Option<&str>) -> String {
    if table == GROUPED_COMMITS {
        return "committing the rows written so far".into();
    }
    match survey {
        Some(s) => format!("table {table}, survey {s}"),
        None => format!("table {table}"),
    }
}

/// The table an `ensure_tables` error is about (its physical name is `qualtrics.x` or
/// `qualtrics_x`: the longest spec name it ends with), else every table of the call.
fn failing_table(list: &[TableSpec], e: &DestError) -> String {
    let physical = match e {
        DestError::TypeConflict { table, .. }
        | DestError::MissingColumn { table, .. }
        | DestError::MissingTable { table } => Some(table.as_str()),
        DestError::Sql { context, .. } => Some(context.as_str()),
        _ => None,
    };
    let named = physical.and_then(|p| {
        list.iter()
            .map(|s| s.name.as_str())
            .filter(|n| p == *n || p.ends_with(&format!(".{n}")) || p.ends_with(&format!("_{n}")))
            .max_by_key(|n| n.len())
    });
    match named {
        Some(n) => n.to_string(),
        None => list
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

impl SyncError {
    /// The table being written when it failed.
    pub fn table(&self) -> Option<&str> {
        match self {
            SyncError::Qualtrics { table, .. }
            | SyncError::Destination { table, .. }
            | SyncError::Worker { table, .. } => Some(table),
            SyncError::Observer { .. } => Some("survey_response"),
            SyncError::Options(_) => None,
        }
    }

    /// The survey at fault, when one was.
    pub fn survey(&self) -> Option<&str> {
        match self {
            SyncError::Qualtrics { survey, .. }
            | SyncError::Destination { survey, .. }
            | SyncError::Worker { survey, .. } => survey.as_deref(),
            SyncError::Observer { survey, .. } => Some(survey),
            SyncError::Options(_) => None,
        }
    }

    pub(crate) fn api(
        table: &str,
        survey: Option<&str>,
        source: xmbridge_qualtrics::Error,
    ) -> Self {
        SyncError::Qualtrics {
            table: table.into(),
            survey: survey.map(Into::into),
            source: Box::new(source),
        }
    }
}

/// The table specs of a run, by name (shared read-only with export workers).
#[derive(Clone, Debug, Default)]
pub(crate) struct Specs(HashMap<String, TableSpec>);

impl Specs {
    /// A copy of a table's spec (to widen it).
    pub fn row_spec(&self, table: &str) -> TableSpec {
        match self.0.get(table) {
            Some(spec) => spec.clone(),
            None => panic!("table {table} was not prepared by the engine"),
        }
    }

    /// A new row of `table`. Streams only name tables of their group, which the engine always
    /// prepares; a missing spec is a programming error.
    pub fn row(&self, table: &str) -> Row<'_> {
        Row::new(self.spec(table))
    }

    /// A table's spec, for a stream that places cells by position.
    pub fn spec(&self, table: &str) -> &TableSpec {
        match self.0.get(table) {
            Some(spec) => spec,
            None => panic!("table {table} was not prepared by the engine"),
        }
    }
}

/// Rows and deletes of one commit, grouped by table.
#[derive(Debug, Default)]
pub(crate) struct Batches(BTreeMap<String, TableBatch>);

impl Batches {
    fn batch(&mut self, table: &str) -> &mut TableBatch {
        self.0
            .entry(table.to_string())
            .or_insert_with(|| TableBatch {
                table: table.to_string(),
                ..Default::default()
            })
    }

    pub fn push(&mut self, table: &str, row: Vec<Value>) {
        // Looked up without making the table's name a String: once per row of a first load.
        match self.0.get_mut(table) {
            Some(batch) => batch.upserts.push(row),
            None => self.batch(table).upserts.push(row),
        }
    }

    /// Hard-deletes rows of `table` whose `column` is one of `values` (applied before the
    /// batch's upserts).
    pub fn delete_where(&mut self, table: &str, column: &str, values: Vec<Value>) {
        if values.is_empty() {
            return;
        }
        self.batch(table)
            .delete_where
            .push((column.to_string(), values));
    }

    /// Rows to upsert, all tables together.
    pub fn rows(&self) -> usize {
        self.0.values().map(|b| b.upserts.len()).sum()
    }

    pub fn into_vec(self) -> Vec<TableBatch> {
        self.0.into_values().collect()
    }
}

/// Runs the selected stream groups in order, making each group's commits durable before the
/// next starts.
async fn run_groups(ctx: &mut Ctx<'_>, groups: &[&str]) -> Result<(), SyncError> {
    // Streams run one after another, so the client's count between two points is one stream's;
    // it is recorded also when the stream fails.
    macro_rules! counted {
        ($stream:literal, $run:expr) => {{
            let before = ctx.client.api_calls();
            let result = $run.await;
            let calls = ctx.client.api_calls().saturating_sub(before);
            ctx.summary
                .api_calls_by_stream
                .push(($stream.to_string(), calls));
            result
        }};
    }
    let mut surveys = Vec::new();
    if groups.contains(&"surveys") {
        surveys = counted!("surveys", streams::surveys::run(ctx))?;
        ctx.flush().await?;
    }
    if groups.contains(&"responses") {
        counted!("responses", streams::responses::run(ctx, &surveys))?;
        ctx.flush().await?;
    }
    if groups.contains(&"directories") {
        counted!("directories", streams::directories::run(ctx))?;
        ctx.flush().await?;
    }
    if groups.contains(&"transaction_batches") {
        counted!(
            "transaction_batches",
            streams::directories::run_batches(ctx)
        )?;
        ctx.flush().await?;
    }
    if groups.contains(&"distributions") {
        counted!("distributions", streams::distributions::run(ctx, &surveys))?;
        ctx.flush().await?;
    }
    if groups.contains(&"users") {
        counted!("users", streams::users::run(ctx))?;
        ctx.flush().await?;
    }
    if groups.contains(&"libraries") {
        counted!("libraries", streams::libraries::run(ctx))?;
    }
    Ok(())
}

/// What streams see of a run.
pub(crate) struct Ctx<'a> {
    pub client: &'a Client,
    dest: &'a mut dyn Destination,
    pub opts: &'a SyncOptions,
    pub progress: &'a dyn Progress,
    pub synced_at_ms: i64,
    pub specs: Arc<Specs>,
    pub summary: SyncSummary,
    /// Definitions read during this run (the response stream flattens answers with them).
    pub defs: HashMap<String, Arc<streams::surveys::SurveyDef>>,
    /// Tables `ensure_tables` had to create this run.
    created: Vec<String>,
    /// The table and survey of the [`Commit::concurrent`] commits the destination may still be
    /// applying: a failure it reports later is theirs.
    in_flight: Option<(String, Option<String>)>,
}

impl Ctx<'_> {
    /// [`Destination::append_commit_rows`] of the destination.
    pub fn append_commit_rows(&self) -> Option<usize> {
        self.dest.append_commit_rows()
    }

    /// The committed cursor of a stream (`None` with [`SyncOptions::full`] is up to the stream).
    ///
    /// An unreadable cursor (not JSON) is an error naming it, except with
    /// [`SyncOptions::full`], which ignores it: it then reads as JSON `null` — "something may
    /// have been loaded, nothing is known" — so the stream reloads with the deletes of a loaded
    /// one, and its commits write a fresh cursor.
    pub async fn cursor(
        &mut self,
        stream: &str,
        table: &str,
    ) -> Result<Option<serde_json::Value>, SyncError> {
        self.settle().await?;
        match self.dest.cursor(stream).await {
            Ok(c) => Ok(c),
            Err(e @ DestError::UnreadableCursor { .. }) if self.opts.full => {
                tracing::warn!(stream, error = %e, "ignoring the unreadable cursor (--full)");
                Ok(Some(serde_json::Value::Null))
            }
            Err(source) => Err(SyncError::Destination {
                table: table.into(),
                survey: None,
                source: Box::new(source),
            }),
        }
    }

    /// Whether `group` must be read from scratch because tables of it had to be created this
    /// run. Streams ask only when their cursor says data was loaded; the first ask records it
    /// (log and summary).
    pub fn reload_missing(&mut self, group: &str) -> bool {
        if self.summary.reloaded.iter().any(|r| r.group == group) {
            return true;
        }
        let tables: &[&str] = group_of_stream(group).map(|g| g.tables).unwrap_or_default();
        let missing: Vec<String> = tables
            .iter()
            .filter(|t| self.created.iter().any(|c| c == *t))
            .map(|t| t.to_string())
            .collect();
        if missing.is_empty() {
            return false;
        }
        let reloaded = Reloaded {
            group: group.to_string(),
            missing,
        };
        tracing::warn!("{}", reloaded.message(false));
        self.summary.reloaded.push(reloaded);
        true
    }

    /// Distinct values of a text column on rows matching `filter` (the reconcile pass reads the
    /// response ids it holds).
    pub async fn keys(
        &mut self,
        table: &str,
        column: &str,
        filter: &[(String, Value)],
        survey: Option<&str>,
    ) -> Result<Vec<String>, SyncError> {
        self.settle().await?;
        self.dest
            .keys(table, column, filter)
            .await
            .map_err(|source| SyncError::Destination {
                table: table.into(),
                survey: survey.map(Into::into),
                source: Box::new(source),
            })
    }

    /// Applies one commit (rows + cursors, atomically) and adds its counts to the summary. A
    /// [`Commit::concurrent`] commit may still be being applied when this returns; commits of
    /// another table or survey, and every other kind, first wait for it ([`Ctx::settle`]), so
    /// that a failure is always reported with the table and survey it belongs to.
    pub async fn commit(
        &mut self,
        mut commit: Commit,
        table: &str,
        survey: Option<&str>,
    ) -> Result<(), SyncError> {
        let context = (table.to_string(), survey.map(str::to_string));
        if !commit.concurrent || self.in_flight.as_ref().is_some_and(|c| *c != context) {
            self.settle().await?;
        }
        commit.synced_at_ms = self.synced_at_ms;
        if commit.concurrent {
            self.in_flight = Some(context.clone());
        }
        let stats = self
            .dest
            .commit(commit)
            .await
            .map_err(|source| SyncError::Destination {
                table: context.0,
                survey: context.1,
                source: Box::new(source),
            })?;
        self.count(stats);
        Ok(())
    }

    fn count(&mut self, stats: CommitStats) {
        for (t, i, u, d) in stats.tables {
            let c = self.summary.tables.entry(t).or_default();
            c.inserted += i;
            c.updated += u;
            c.deleted += d;
        }
    }

    /// Waits for the concurrent commits the destination may still be applying and adds their
    /// counts; a failure among them is reported with their table and survey.
    pub async fn settle(&mut self) -> Result<(), SyncError> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        let failed = self.failure_in_flight();
        let stats = self.dest.settle().await.map_err(failed)?;
        self.count(stats);
        Ok(())
    }

    /// Makes every commit so far durable (destinations may group commits).
    pub async fn flush(&mut self) -> Result<(), SyncError> {
        let failed = self.failure_in_flight();
        let stats = self.dest.flush().await.map_err(failed)?;
        self.count(stats);
        Ok(())
    }

    /// Names a failure that settling reports: the in-flight commits' table and survey, or the
    /// run's commits in general when none is in flight.
    fn failure_in_flight(&mut self) -> impl FnOnce(DestError) -> SyncError + use<> {
        let (table, survey) = self
            .in_flight
            .take()
            .unwrap_or_else(|| (GROUPED_COMMITS.to_string(), None));
        move |source| SyncError::Destination {
            table,
            survey,
            source: Box::new(source),
        }
    }

    /// Widens a table (schema evolution, e.g. a new `stats_*` column) and tells the destination.
    pub async fn widen(&mut self, spec: TableSpec) -> Result<(), SyncError> {
        self.settle().await?;
        let name = spec.name.clone();
        self.dest
            .ensure_tables(std::slice::from_ref(&spec))
            .await
            .map_err(|source| SyncError::Destination {
                table: name.clone(),
                survey: None,
                source: Box::new(source),
            })?;
        let mut specs = (*self.specs).clone();
        specs.0.insert(name, spec);
        self.specs = Arc::new(specs);
        Ok(())
    }

    /// Records that `tables` were not synced and why (said once, in the summary and the log).
    pub fn skip(&mut self, tables: &[&str], reason: &str) {
        for t in tables {
            tracing::warn!(table = t, reason, "table skipped");
            self.summary.tables.remove(*t);
            self.summary.skipped.push(Skipped {
                table: t.to_string(),
                reason: reason.to_string(),
            });
        }
    }
}

/// Checks the table selection of `opts` without syncing anything: an unknown table, or one no
/// sync fills, is [`SyncError::Options`] with the reason. [`sync`] makes the same check; callers
/// make it first so a bad selection is refused before a destination is opened or created.
pub fn check_selection(opts: &SyncOptions) -> Result<(), SyncError> {
    selected_groups(opts).map(|_| ())
}

/// Which groups a table selection runs.
fn selected_groups(opts: &SyncOptions) -> Result<Vec<&'static str>, SyncError> {
    let Some(wanted) = &opts.tables else {
        return Ok(TABLE_GROUPS.iter().map(|g| g.stream).collect());
    };
    let mut groups = Vec::new();
    for t in wanted {
        if let Some(why) = xmbridge_qualtrics::capabilities::not_synced(t) {
            return Err(SyncError::Options(format!(
                "table {t:?} cannot be selected: {why}"
            )));
        }
        let Some(g) = group_of_table(t) else {
            let known: Vec<&str> = TABLE_GROUPS
                .iter()
                .flat_map(|g| g.tables.iter().copied())
                .collect();
            return Err(SyncError::Options(format!(
                "unknown table {t:?}; tables are: {}",
                known.join(", ")
            )));
        };
        groups.push(g.stream);
    }
    // Answers are flattened with their survey's definition.
    if groups.contains(&"responses") {
        groups.push("surveys");
    }
    Ok(TABLE_GROUPS
        .iter()
        .map(|g| g.stream)
        .filter(|g| groups.contains(g))
        .collect())
}

/// Runs one sync: prepares the tables of the selected streams, then runs the streams in
/// [`TABLE_GROUPS`] order. Each stream reads its cursor from the destination and commits rows and
/// cursor together. Optional groups the credentials may not read (403) are skipped with the
/// reason; the rest syncs.
pub async fn sync(
    client: &Client,
    dest: &mut dyn Destination,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let calls_before = client.api_calls();
    let groups = selected_groups(opts)?;
    let mut specs = Specs::default();
    let mut summary = SyncSummary::default();
    for g in TABLE_GROUPS {
        if !groups.contains(&g.stream) {
            continue;
        }
        for t in g.tables {
            let spec = catalog::table(t).ok_or_else(|| {
                SyncError::Options(format!("table {t} is missing from the catalog"))
            })?;
            summary.tables.insert(t.to_string(), TableCounts::default());
            specs.0.insert(t.to_string(), spec);
        }
    }
    let mut list: Vec<TableSpec> = specs.0.values().cloned().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let ensured = dest
        .ensure_tables(&list)
        .await
        .map_err(|source| SyncError::Destination {
            table: failing_table(&list, &source),
            survey: None,
            source: Box::new(source),
        })?;
    let synced_at_ms = opts
        .synced_at_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let mut ctx = Ctx {
        client,
        dest,
        opts,
        progress,
        synced_at_ms,
        specs: Arc::new(specs),
        summary,
        defs: HashMap::new(),
        created: ensured.created,
        in_flight: None,
    };
    tracing::info!(groups = ?groups, full = opts.full, "sync started");

    let run = run_groups(&mut ctx, &groups).await;
    // Durable before returning, also when a stream failed: what was committed stays committed.
    let flushed = ctx.flush().await;
    run?;
    flushed?;

    let mut summary = ctx.summary;
    summary.duration = started.elapsed();
    summary.api_calls = client.api_calls() - calls_before;
    tracing::info!(
        responses = summary.responses,
        api_calls = summary.api_calls,
        duration_ms = summary.duration.as_millis() as u64,
        "sync finished"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI and server spawn the sync: its future must stay `Send`.
    #[allow(dead_code)]
    fn sync_future_is_send(c: &Client, d: &mut dyn Destination, o: &SyncOptions, p: &dyn Progress) {
        fn send<T: Send>(_: T) {}
        send(sync(c, d, o, p));
    }

    #[test]
    fn table_selection_pulls_whole_groups() {
        let o = SyncOptions {
            tables: Some(vec!["question_response".into(), "user".into()]),
            ..Default::default()
        };
        assert_eq!(
            selected_groups(&o).unwrap(),
            vec!["surveys", "responses", "users"]
        );
        let o = SyncOptions {
            tables: Some(vec!["nope".into()]),
            ..Default::default()
        };
        assert!(selected_groups(&o).is_err());
    }
}
