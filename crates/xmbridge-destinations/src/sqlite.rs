//! The SQLite destination (`sqlite:PATH` or `sqlite://PATH`), the embedded default.
//!
//! Choices (also in `docs/destinations.md`):
//! - One file; the schema name is a **table-name prefix**: schema `qualtrics` → tables
//!   `qualtrics_survey`, `qualtrics_question_response`, …, and the cursor table
//!   `qualtrics__xmbridge_state` (`<schema>_<p>_state`). An attached database would need every
//!   reader to `ATTACH` it; a prefix keeps `sqlite3 file.db` and DuckDB's `ATTACH` simple.
//! - Declared column types keep the schema's types (docs/design/schema.md) visible and let
//!   `ensure_tables` detect hand edits: s `TEXT`, ts `TIMESTAMP`, b `BOOLEAN`, i `INTEGER`, l
//!   `BIGINT`, f `DOUBLE`, json `JSON_TEXT` (TEXT affinity, so a JSON text such as `123` is never
//!   turned into a number).
//! - Timestamps are ISO-8601 text `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC, fixed width, so they sort and
//!   compare as text; SQLite's date functions read them), booleans 0/1, JSON as text.
//! - `PRAGMA journal_mode=WAL`, `synchronous=NORMAL`, `temp_store=FILE` (savepoint journals and
//!   the index sorter spill to disk rather than memory); one SAVEPOINT per [`Commit`] inside a
//!   group transaction (see [`GROUP_ROWS`]), cursors
//!   upserted in the same transaction. Upserts are `INSERT … ON CONFLICT (pk) DO NOTHING`
//!   followed, when nothing was inserted, by `UPDATE … WHERE pk`, both `prepare_cached`: exact
//!   inserted/updated counts for the price of one statement per new row. A batch that rewrites
//!   whole groups (deletes + upserts, no soft delete) deletes only the groups' rows whose keys it
//!   no longer holds and updates only rows whose values differ (`IS NOT`).
//! - The key is a unique index `<table>__pkey`, not a `PRIMARY KEY` constraint, so that a first
//!   load into an empty table can append without it and build it at the end (see `Indexes`).
//! - Double-quoted string literals are switched off (`SQLITE_DBCONFIG_DQS_*`), so a quoted
//!   name that is not a column is an error rather than a string constant.
//! - rusqlite is synchronous: every call runs on tokio's blocking pool (`spawn_blocking`) holding
//!   the connection's mutex.
//!
//! It owns the SQLite file's tables with this prefix; it must not touch other tables.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rusqlite::config::DbConfig;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};

use crate::names::{Resolved, iso_millis, keys_target, quote_ident};
use crate::{
    BoxFuture, ColumnType, Commit, CommitStats, Compat, DestError, Destination, Ensured,
    TableBatch, TableSpec, Text, Value,
};

/// Page cache of the destination's connection, in KiB. SQLite's 2 MB default makes a large load
/// re-read its primary-key index pages (random 64-hex ids) from the file on almost every insert;
/// the cache grows only as pages are used.
pub const CACHE_KIB: u32 = 65_536;

/// Page cache while the indexes of a bulk load are built (see [`Indexes`]): SQLite's sorter
/// holds up to this much in memory per sorted run.
pub const SORT_CACHE_KIB: u32 = 16_384;

/// The path of a `sqlite:PATH` / `sqlite://PATH` URL (without its `?options`).
pub fn path_of_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(rest.split_once('?').map_or(rest, |(path, _)| path))
}

/// Options of a SQLite destination URL: `sqlite:PATH?max_size_mb=N`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The file may not grow beyond this many MiB (`PRAGMA max_page_count`); a write that would
    /// fails like a full disk. Useful to cap a destination on a shared disk.
    pub max_size_mb: Option<u64>,
    /// The run's lease, claimed at open and checked by every commit (not a URL option: the
    /// scheduler gives it, see [`crate::Fence`]).
    pub fence: Option<crate::Fence>,
}

impl SqliteOptions {
    /// The options of a `sqlite:` URL; an unknown or malformed option is an error.
    pub fn from_url(url: &str) -> Result<SqliteOptions, DestError> {
        let mut opts = SqliteOptions::default();
        let Some((_, query)) = url.split_once('?') else {
            return Ok(opts);
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "max_size_mb" => {
                    let mb = value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        DestError::UrlOption(format!(
                            "sqlite URL option max_size_mb={value:?}: expected a whole number of MiB greater than 0"
                        ))
                    })?;
                    opts.max_size_mb = Some(mb);
                }
                other => {
                    return Err(DestError::UrlOption(format!(
                        "unknown sqlite URL option {other:?}: the only option is max_size_mb=N (e.g. sqlite:PATH?max_size_mb=500)"
                    )));
                }
            }
        }
        Ok(opts)
    }
}

/// The token `table` records for `scope`, if any.
fn fence_token(conn: &Connection, table: &str, scope: &str) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        &format!(
            "SELECT \"token\" FROM {} WHERE \"scope\" = ?1",
            quote_ident(table)
        ),
        [scope],
        |r| r.get(0),
    )
    .optional()
}

/// Claims the destination for `fence`'s run (see [`crate::Fence`]): records its token unless a
/// higher one is recorded. Under the writer lock, so no commit of another run is in progress;
/// a run frozen while it holds the lock keeps the others out until it wakes (unlike on
/// PostgreSQL, a session of another process cannot be ended from here).
fn claim_fence(
    conn: &Connection,
    table: &str,
    fence: &crate::Fence,
    path: &str,
) -> Result<(), DestError> {
    let context = format!("claiming {table} for run token {}", fence.token);
    let err = |e: rusqlite::Error| sql_err(&context, e);
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {} (\"scope\" TEXT PRIMARY KEY NOT NULL, \"token\" INTEGER NOT NULL, \"claimed_at\" TIMESTAMP); BEGIN IMMEDIATE",
        quote_ident(table)
    ))
    .map_err(err)?;
    let claimed = (|| {
        let current = fence_token(conn, table, &fence.scope).map_err(err)?;
        if current.is_some_and(|t| t > fence.token) {
            return Err(crate::fenced(
                &format!("sqlite:{path}"),
                fence,
                current,
                table,
                true,
            ));
        }
        conn.execute(
            &format!(
                "INSERT INTO {} (\"scope\", \"token\", \"claimed_at\") VALUES (?1, ?2, ?3) \
                 ON CONFLICT (\"scope\") DO UPDATE SET \"token\" = excluded.\"token\", \"claimed_at\" = excluded.\"claimed_at\"",
                quote_ident(table)
            ),
            rusqlite::params![fence.scope, fence.token, iso_millis(now_ms())],
        )
        .map_err(err)?;
        Ok(())
    })();
    let end = if claimed.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    conn.execute_batch(end).map_err(err)?;
    claimed
}

/// The declared type a column gets in SQLite.
pub fn sqlite_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text => "TEXT",
        ColumnType::Timestamp => "TIMESTAMP",
        ColumnType::Bool => "BOOLEAN",
        ColumnType::Int => "INTEGER",
        ColumnType::BigInt => "BIGINT",
        ColumnType::Float => "DOUBLE",
        ColumnType::Json => "JSON_TEXT",
    }
}

/// A destination in one SQLite file (`sqlite:PATH`), written through a blocking worker.
pub struct SqliteDestination {
    inner: Arc<Mutex<Inner>>,
    path: String,
    prefix: String,
    max_size_mb: Option<u64>,
}

struct Inner {
    conn: Connection,
    /// `sqlite:PATH`, and the size cap, for the disk-full message.
    destination: String,
    max_size_mb: Option<u64>,
    prefix: String,
    compat: Compat,
    /// Spec name → resolved spec, filled by `ensure_tables`.
    tables: HashMap<String, Resolved>,
    /// Spec name → the table's indexes, filled by `ensure_tables`.
    indexes: HashMap<String, Indexes>,
    /// Tables in bulk load: their indexes are dropped until [`Inner::finish_bulk`] (see
    /// [`Indexes`]).
    bulk: HashSet<String>,
    /// Tables whose first fresh batch was seen this session (bulk load is decided once).
    bulk_judged: HashSet<String>,
    state: String,
    /// The open group transaction, if any (see [`GROUP_ROWS`]).
    group: Option<Group>,
    /// When the destination was opened (see [`commit_interval`]).
    opened: std::time::Instant,
    /// When a group was last committed in this session, if one was.
    durable_at: Option<std::time::Instant>,
    /// The run's lease and the physical fence table, when opened with one: every commit checks
    /// that the table still holds this token.
    fence: Option<(crate::Fence, String)>,
    /// Last, so it is released after the connection has closed.
    _lock: WriterLock,
}

/// The side file whose lock says a sync is writing `path`.
pub fn lock_path(path: &str) -> String {
    format!("{path}-xmbridge.lock")
}

/// One sync at a time per SQLite file: a write transaction (`BEGIN IMMEDIATE`, SQLite's
/// RESERVED lock, an `fcntl` lock) held open on the side file [`lock_path`] while the
/// destination is open. The kernel drops the lock when the process ends, however it ends, so a
/// killed sync never leaves it behind; the (empty) file stays, as deleting a lock file races
/// with the next process opening it. A side file rather than the database: the destination's
/// own connection begins and commits transactions all the time, and a second connection holding
/// a lock in the database would block it. Per file, not per table prefix: SQLite has one
/// writer per file anyway.
struct WriterLock {
    _conn: Connection,
}

impl WriterLock {
    fn take(path: &str) -> Result<WriterLock, DestError> {
        let file = lock_path(path);
        let fail = |e: rusqlite::Error| DestError::Connect {
            destination: format!("sqlite:{path}"),
            reason: format!("cannot lock {file}: {e}"),
        };
        let conn = Connection::open(&file).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::ZERO).map_err(fail)?;
        // Nothing is ever written: no journal file next to it.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=OFF", [], |r| r.get(0))
            .map_err(fail)?;
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => Ok(WriterLock { _conn: conn }),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                Err(DestError::Busy {
                    destination: format!("sqlite:{path}"),
                    holder: format!(
                        ", locked by another process through {file} (`fuser -v {file}` shows which)"
                    ),
                })
            }
            Err(e) => Err(fail(e)),
        }
    }
}

/// Refuses paths that would sync into a database SQLite throws away when the sync ends.
fn check_path(path: &str) -> Result<(), DestError> {
    let p = path.trim();
    let what = if p.is_empty() {
        "no file (the path is empty)"
    } else if p == ":memory:" || p.starts_with("file::memory:") {
        "an in-memory database"
    } else {
        return Ok(());
    };
    Err(DestError::Settings(format!(
        "the SQLite destination path {path:?} names {what}: SQLite would sync into a temporary \
         database and throw it away when the sync ends; name a file: sqlite:PATH, for example \
         sqlite:./qualtrics.db, sqlite:///var/lib/xmbridge/qualtrics.db or \
         sqlite:./qualtrics.db?max_size_mb=500"
    )))
}

/// A table's indexes, and how a first load treats them.
///
/// The key is a unique index `<table>__pkey` rather than a `PRIMARY KEY` constraint, so that a
/// first load into an empty table (batches marked `fresh`) can drop it and the filter indexes,
/// append the rows with plain `INSERT`s and build the indexes once at the end with SQLite's
/// sorter. Inserting answer rows one by one into a random 64-hex key index that outgrows the
/// page cache costs a page miss and a rewrite per row; building it afterwards is one sort (see
/// `docs/destinations.md` for the figures). A kill in between leaves a table without indexes:
/// the next `ensure_tables` builds them before anything reads or merges.
struct Indexes {
    /// The key is our own unique index (tables made by xmbridge before 0.1 carry a `PRIMARY KEY`
    /// constraint, which cannot be dropped: those load with their key in place).
    own_key: bool,
    /// Columns with an index `<table>__<column>_idx`.
    filter: Vec<String>,
}

/// The unique index that is the key of `table`.
pub fn key_index_name(table: &str) -> String {
    format!("{table}__pkey")
}

/// Commits grouped into one SQLite transaction.
struct Group {
    rows: usize,
}

/// Group commit: [`Commit`]s are applied one per SAVEPOINT inside a longer SQLite transaction
/// that commits once it holds this many rows or once the last durable commit is old enough (see
/// [`commit_interval`]), and on [`Destination::flush`]. Each commit rewrites every page it
/// touched into the WAL, and answer rows have random 64-hex keys, so small transactions rewrite
/// most of the primary-key index every time (measured: 37 commits of 40,000 rows took 33 s where
/// one took 20 s). Rows and their cursor still commit together, so a kill loses at most the open
/// group's work, which the next run redoes from the last committed cursor.
pub const GROUP_ROWS: usize = 500_000;
/// The longest time between durable commits (see [`commit_interval`]).
pub const GROUP_SECS: u64 = 10;

/// How long after the last durable commit a commit makes its group durable, when the destination
/// has been open for `open_for`: a quarter of that, at least 1 s and at most [`GROUP_SECS`]. (The
/// first commit of a session is durable at once.)
///
/// Why not [`GROUP_SECS`] from the start: a run that is always stopped after a few seconds (a
/// cron job with a short timeout) would never commit anything and never advance. This way about
/// three quarters of any run's time is durable work, whatever its length, for about ten more
/// commits in a session's first 40 s. They cost little on a first load, which appends to tables
/// without indexes (see `Indexes`) that a commit does not rewrite; a kill after such a commit
/// leaves tables to which the next `ensure_tables` gives their indexes back.
pub fn commit_interval(open_for: std::time::Duration) -> std::time::Duration {
    (open_for / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(GROUP_SECS),
    )
}

impl SqliteDestination {
    /// Opens (creates) the file, sets WAL, creates the cursor table.
    pub async fn open(path: &str, schema: &str, compat: Compat) -> Result<Self, DestError> {
        Self::open_with(path, schema, compat, SqliteOptions::default()).await
    }

    /// [`SqliteDestination::open`] with URL options (a size cap).
    pub async fn open_with(
        path: &str,
        schema: &str,
        compat: Compat,
        opts: SqliteOptions,
    ) -> Result<Self, DestError> {
        check_path(path)?;
        crate::names::check_name(schema, None)?;
        let prefix = format!("{schema}_");
        let path_owned = path.to_string();
        let prefix2 = prefix.clone();
        let max_size_mb = opts.max_size_mb;
        let inner =
            tokio::task::spawn_blocking(move || Inner::open(&path_owned, prefix2, compat, opts))
                .await
                .map_err(|source| DestError::Worker {
                    destination: "sqlite",
                    source,
                })??;
        Ok(SqliteDestination {
            inner: Arc::new(Mutex::new(inner)),
            path: path.to_string(),
            prefix,
            max_size_mb,
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, DestError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> Result<T, DestError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A panic mid-commit dropped (rolled back) its transaction; the connection is sound.
            let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g)
        })
        .await
        .map_err(|source| DestError::Worker {
            destination: "sqlite",
            source,
        })?
    }
}

/// The index on `column` of `table` (SQLite index names are file-wide: the physical, prefixed
/// table name keeps them apart).
pub fn index_name(table: &str, column: &str) -> String {
    format!("{table}__{column}_idx")
}

/// SQLITE_FULL: the disk (or the `max_size_mb` cap) is full.
fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

fn sql_err(context: &str, e: rusqlite::Error) -> DestError {
    if is_disk_full(&e) {
        // Outside a commit (creating tables, reading): no file name at hand, still the fix.
        return DestError::DiskFull {
            table: context.to_string(),
            destination: "the SQLite file".into(),
            fix: "free disk space (or raise max_size_mb in the destination URL)".into(),
            partly_applied: false,
        };
    }
    DestError::Sql {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Binds a [`Value`] the way this destination stores it.
struct Cell<'a>(&'a Value);

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Owned(V::Null),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Int(i) => ToSqlOutput::Owned(V::Integer(*i)),
            Value::Float(f) => ToSqlOutput::Owned(V::Real(*f)),
            Value::Bool(b) => ToSqlOutput::Owned(V::Integer(i64::from(*b))),
            Value::Timestamp(ms) => ToSqlOutput::Owned(V::Text(iso_millis(*ms))),
        })
    }
}

/// Per-table counters in first-touched order.
#[derive(Default)]
struct Stats(Vec<(String, u64, u64, u64)>);

impl Stats {
    fn entry(&mut self, table: &str) -> &mut (String, u64, u64, u64) {
        let i = match self.0.iter().position(|e| e.0 == table) {
            Some(i) => i,
            None => {
                self.0.push((table.to_string(), 0, 0, 0));
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }
}

/// A failure inside a commit, before diagnosis: which table was being written.
struct Failure {
    table: Option<String>,
    error: Result<DestError, rusqlite::Error>,
}

impl From<DestError> for Box<Failure> {
    fn from(e: DestError) -> Self {
        Box::new(Failure {
            table: None,
            error: Ok(e),
        })
    }
}

fn at(table: &str) -> impl FnOnce(rusqlite::Error) -> Box<Failure> + '_ {
    move |e| {
        Box::new(Failure {
            table: Some(table.to_string()),
            error: Err(e),
        })
    }
}

impl Inner {
    fn open(
        path: &str,
        prefix: String,
        compat: Compat,
        opts: SqliteOptions,
    ) -> Result<Inner, DestError> {
        let SqliteOptions { max_size_mb, fence } = opts;
        let connect_err = |e: rusqlite::Error| DestError::Connect {
            destination: format!("sqlite:{path}"),
            reason: e.to_string(),
        };
        // Before the database is touched: a second sync stops here.
        let lock = WriterLock::take(path)?;
        let conn = Connection::open(path).map_err(connect_err)?;
        // journal_mode answers with a row, so it is read rather than executed.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(connect_err)?;
        // SQLite's legacy misfeature reads a double-quoted name that is not a column as a string
        // literal: a dropped column would silently turn `WHERE "col" = ?` into a constant.
        // Off, so a missing column is an error.
        for c in [
            DbConfig::SQLITE_DBCONFIG_DQS_DML,
            DbConfig::SQLITE_DBCONFIG_DQS_DDL,
        ] {
            conn.set_db_config(c, false).map_err(connect_err)?;
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-{CACHE_KIB}; PRAGMA temp_store=FILE"
        ))
        .map_err(connect_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(connect_err)?;
        conn.set_prepared_statement_cache_capacity(256);
        if let Some(mb) = max_size_mb {
            // A per-connection cap: writes beyond it fail with SQLITE_FULL, as on a full disk.
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(connect_err)?;
            let pages = (mb.saturating_mul(1024 * 1024) / page_size.max(512) as u64).max(1);
            let _now: i64 = conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                    r.get(0)
                })
                .map_err(connect_err)?;
        }
        let state = format!("{prefix}{}_state", compat.prefix());
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (\"stream\" TEXT PRIMARY KEY NOT NULL, \"cursor\" JSON_TEXT, \"updated_at\" TIMESTAMP, \"fence\" INTEGER)",
            quote_ident(&state)
        ))
        .map_err(connect_err)?;
        // Cursor tables from before fencing get the column of the token that wrote each cursor.
        let has_fence = columns_of(&conn, &state)
            .map_err(connect_err)?
            .is_some_and(|cols| cols.iter().any(|(c, _)| c == "fence"));
        if !has_fence {
            conn.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN \"fence\" INTEGER",
                quote_ident(&state)
            ))
            .map_err(connect_err)?;
        }
        let fence_table = format!("{prefix}{}_fence", compat.prefix());
        if let Some(fence) = &fence {
            claim_fence(&conn, &fence_table, fence, path)?;
        }
        Ok(Inner {
            conn,
            destination: format!("sqlite:{path}"),
            max_size_mb,
            prefix,
            compat,
            tables: HashMap::new(),
            indexes: HashMap::new(),
            bulk: HashSet::new(),
            bulk_judged: HashSet::new(),
            state,
            group: None,
            opened: std::time::Instant::now(),
            durable_at: None,
            fence: fence.map(|f| (f, fence_table)),
            _lock: lock,
        })
    }

    fn physical(&self, spec_name: &str) -> String {
        format!("{}{spec_name}", self.prefix)
    }

    fn ensure(&mut self, specs: &[TableSpec]) -> Result<Ensured, DestError> {
        // Schema changes run in a transaction of their own.
        self.close_group()?;
        let mut resolved = Vec::with_capacity(specs.len());
        for spec in specs {
            let r = Resolved::new(spec, self.compat, self.physical(&spec.name), None)?;
            resolved.push((spec.name.clone(), r));
        }
        let ctx = "ensure_tables";
        let tx = self.conn.transaction().map_err(|e| sql_err(ctx, e))?;
        let mut ensured = Ensured::default();
        for (name, r) in &resolved {
            let q = quote_ident(&r.display);
            match columns_of(&tx, &r.display).map_err(|e| sql_err(&r.display, e))? {
                None => {
                    let mut defs: Vec<String> = Vec::new();
                    for (i, (name, ty)) in r.stored_columns().into_iter().enumerate() {
                        let mut d = format!("{} {}", quote_ident(&name), sqlite_type(ty));
                        if r.pk.contains(&i) {
                            d.push_str(" NOT NULL");
                        }
                        if r.deleted.as_deref() == Some(name.as_str()) {
                            d.push_str(" NOT NULL DEFAULT 0");
                        }
                        defs.push(d);
                    }
                    // The key is a unique index (see `Indexes`), created below.
                    tx.execute_batch(&format!("CREATE TABLE {q} ({})", defs.join(", ")))
                        .map_err(|e| sql_err(&r.display, e))?;
                    ensured.created.push(name.clone());
                }
                Some(existing) => {
                    for (name, ty) in r.stored_columns() {
                        match find_col(&existing, &name) {
                            Some(found) => check_type(r, &name, found, ty)?,
                            None => {
                                let extra = if r.deleted.as_deref() == Some(name.as_str()) {
                                    " NOT NULL DEFAULT 0"
                                } else {
                                    ""
                                };
                                tx.execute_batch(&format!(
                                    "ALTER TABLE {q} ADD COLUMN {} {}{extra}",
                                    quote_ident(&name),
                                    sqlite_type(ty)
                                ))
                                .map_err(|e| sql_err(&r.display, e))?;
                                tracing::info!(table = %r.display, column = %name, "added column");
                            }
                        }
                    }
                }
            }
        }
        let mut indexes = Vec::with_capacity(specs.len());
        for (spec, (_, r)) in specs.iter().zip(&resolved) {
            let ix = Indexes {
                own_key: !has_primary_key(&tx, &r.display).map_err(|e| sql_err(&r.display, e))?,
                filter: spec
                    .indexed_columns()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            };
            // Also rebuilds what a killed first load left without indexes.
            create_indexes(&tx, r, &ix)?;
            indexes.push(ix);
        }
        tx.commit().map_err(|e| sql_err(ctx, e))?;
        for ((name, r), ix) in resolved.into_iter().zip(indexes) {
            self.bulk.remove(&name);
            self.indexes.insert(name.clone(), ix);
            self.tables.insert(name, r);
        }
        Ok(ensured)
    }

    /// Starts a bulk load of each table that gets its first fresh rows of this session and is
    /// empty: its indexes are dropped inside the open group transaction (see [`Indexes`]).
    fn begin_bulk(&mut self, commit: &Commit) -> Result<(), DestError> {
        for batch in &commit.batches {
            if !batch.appends_only()
                || batch.upserts.is_empty()
                || !self.bulk_judged.insert(batch.table.clone())
            {
                continue;
            }
            let (Some(r), Some(ix)) = (
                self.tables.get(&batch.table),
                self.indexes.get(&batch.table),
            ) else {
                continue;
            };
            if !ix.own_key {
                continue;
            }
            let q = quote_ident(&r.display);
            let empty = self
                .conn
                .query_row(
                    &format!("SELECT NOT EXISTS (SELECT 1 FROM {q})"),
                    [],
                    |row| row.get::<_, bool>(0),
                )
                .map_err(|e| sql_err(&r.display, e))?;
            if !empty {
                continue;
            }
            let mut drops = format!(
                "DROP INDEX IF EXISTS {};",
                quote_ident(&key_index_name(&r.display))
            );
            for col in &ix.filter {
                drops.push_str(&format!(
                    "DROP INDEX IF EXISTS {};",
                    quote_ident(&index_name(&r.display, col))
                ));
            }
            self.conn
                .execute_batch(&drops)
                .map_err(|e| sql_err(&r.display, e))?;
            tracing::debug!(table = %r.display, "first load into an empty table: indexes are built after the rows are in");
            self.bulk.insert(batch.table.clone());
        }
        Ok(())
    }

    /// Ends the bulk load of `only` (or of every table in bulk): builds the indexes in the open
    /// group transaction.
    fn finish_bulk(&mut self, only: Option<&str>) -> Result<(), DestError> {
        let names: Vec<String> = self
            .bulk
            .iter()
            .filter(|t| only.is_none_or(|o| o == t.as_str()))
            .cloned()
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        // SQLite's sorter keeps up to a cache's worth of keys in memory before it spills a run
        // to a temp file; a smaller cache while building keeps peak memory down.
        self.conn
            .execute_batch(&format!("PRAGMA cache_size=-{SORT_CACHE_KIB}"))
            .map_err(|e| sql_err("index build", e))?;
        let built = self.build_bulk_indexes(names);
        self.conn
            .execute_batch(&format!("PRAGMA cache_size=-{CACHE_KIB}"))
            .map_err(|e| sql_err("index build", e))?;
        built
    }

    fn build_bulk_indexes(&mut self, names: Vec<String>) -> Result<(), DestError> {
        for name in names {
            let (Some(r), Some(ix)) = (self.tables.get(&name), self.indexes.get(&name)) else {
                self.bulk.remove(&name);
                continue;
            };
            // Minutes on a large first load: say so before, not only after.
            tracing::info!(table = %r.display, "building the key and indexes after a first load");
            let started = std::time::Instant::now();
            create_indexes(&self.conn, r, ix)?;
            tracing::info!(
                table = %r.display,
                duration_ms = started.elapsed().as_millis() as u64,
                "built the key and indexes after a first load"
            );
            self.bulk.remove(&name);
        }
        Ok(())
    }

    fn disk_full(&self, table: String) -> DestError {
        DestError::DiskFull {
            table,
            destination: self.destination.clone(),
            fix: match self.max_size_mb {
                Some(mb) => format!(
                    "the file reached its cap max_size_mb={mb}: raise the cap (or drop it from the destination URL) or free space"
                ),
                None => "free disk space where the file lives (or move it to a larger disk)".into(),
            },
            partly_applied: false,
        }
    }

    fn cursor(&self, stream: &str) -> Result<Option<serde_json::Value>, DestError> {
        let ctx = format!("cursor table {}", self.state);
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT \"cursor\" FROM {} WHERE \"stream\" = ?1",
                quote_ident(&self.state)
            ))
            .map_err(|e| sql_err(&ctx, e))?;
        let mut rows = st.query([stream]).map_err(|e| sql_err(&ctx, e))?;
        let Some(row) = rows.next().map_err(|e| sql_err(&ctx, e))? else {
            return Ok(None);
        };
        let text: Option<String> = row.get(0).map_err(|e| sql_err(&ctx, e))?;
        match text {
            None => Ok(None),
            Some(t) => crate::names::parse_cursor(stream, &self.state, &t).map(Some),
        }
    }

    fn keys(
        &mut self,
        table: &str,
        column: &str,
        filter: &[(String, Value)],
    ) -> Result<Vec<String>, DestError> {
        if self.bulk.contains(table) {
            self.finish_bulk(Some(table))?;
        }
        let (r, c) = keys_target(&self.tables, table, column, self.compat)?;
        let mut sql = format!(
            "SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL",
            quote_ident(&c.name),
            quote_ident(&r.display),
            quote_ident(&c.name)
        );
        for (i, (col, v)) in filter.iter().enumerate() {
            let fc = r.spec_column(col, self.compat)?;
            r.check_value(fc, v)?;
            sql.push_str(&format!(" AND {} = ?{}", quote_ident(&fc.name), i + 1));
        }
        let ctx = format!("keys of {}", r.display);
        let mut st = self.conn.prepare(&sql).map_err(|e| sql_err(&ctx, e))?;
        let params: Vec<Cell<'_>> = filter.iter().map(|(_, v)| Cell(v)).collect();
        let rows = st
            .query_map(rusqlite::params_from_iter(params.iter()), |row| {
                row.get::<_, String>(0)
            })
            .map_err(|e| sql_err(&ctx, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_err(&ctx, e))
    }

    fn rows(&mut self, table: &str) -> Result<Vec<Vec<Value>>, DestError> {
        if self.bulk.contains(table) {
            self.finish_bulk(Some(table))?;
        }
        let r = self
            .tables
            .get(table)
            .ok_or_else(|| DestError::UnknownTable {
                table: table.to_string(),
            })?;
        let stored = r.stored_columns();
        let cols: Vec<String> = stored.iter().map(|(n, _)| quote_ident(n)).collect();
        let sql = format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            quote_ident(&r.display)
        );
        let ctx = format!("rows of {}", r.display);
        let mut st = self.conn.prepare(&sql).map_err(|e| sql_err(&ctx, e))?;
        let mut rows = st.query([]).map_err(|e| sql_err(&ctx, e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| sql_err(&ctx, e))? {
            let mut values = Vec::with_capacity(stored.len());
            for (i, (_, ty)) in stored.iter().enumerate() {
                let cell = row.get_ref(i).map_err(|e| sql_err(&ctx, e))?;
                values.push(match (cell, ty) {
                    (ValueRef::Null, _) => Value::Null,
                    (ValueRef::Integer(v), ColumnType::Bool) => Value::Bool(v != 0),
                    (ValueRef::Integer(v), ColumnType::Float) => Value::Float(v as f64),
                    (ValueRef::Integer(v), ColumnType::Timestamp) => Value::Timestamp(v),
                    (ValueRef::Integer(v), _) => Value::Int(v),
                    (ValueRef::Real(f), _) => Value::Float(f),
                    (ValueRef::Text(b) | ValueRef::Blob(b), ty) => {
                        let text = String::from_utf8_lossy(b);
                        match ty {
                            ColumnType::Timestamp => crate::parse_iso_millis(&text)
                                .map_or_else(|| Value::Text(Text::from(&*text)), Value::Timestamp),
                            ColumnType::Json => Value::Json(text.into()),
                            _ => Value::Text(text.into()),
                        }
                    }
                });
            }
            out.push(values);
        }
        crate::sort_by_key(&mut out, &r.pk);
        Ok(out)
    }

    /// Builds the indexes of tables in bulk load, then commits the open group.
    fn close_group(&mut self) -> Result<(), DestError> {
        let built = self.finish_bulk(None);
        // Commit what is applied even when an index build failed: the next ensure retries it.
        let committed = self.flush();
        built.and(committed)
    }

    /// Commits the open group transaction, if any.
    fn flush(&mut self) -> Result<(), DestError> {
        if self.group.take().is_some() && !self.conn.is_autocommit() {
            self.conn
                .execute_batch("COMMIT")
                .map_err(|e| sql_err("commit", e))?;
            self.durable_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    fn commit(&mut self, commit: &Commit) -> Result<CommitStats, DestError> {
        if self.group.is_none() || self.conn.is_autocommit() {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| sql_err("commit", e))?;
            self.group = Some(Group { rows: 0 });
        }
        // Outside the savepoint: index drops and builds stay whatever happens to this commit.
        self.begin_bulk(commit)?;
        for table in commit.merged_tables() {
            if self.bulk.contains(table) {
                self.finish_bulk(Some(table))?;
            }
        }
        self.conn
            .execute_batch("SAVEPOINT xmbridge_commit")
            .map_err(|e| sql_err("commit", e))?;
        let result = self.try_commit(commit).map_err(|f| *f);
        if result.is_ok() {
            self.conn
                .execute_batch("RELEASE xmbridge_commit")
                .map_err(|e| sql_err("commit", e))?;
            let rows: usize = commit.batches.iter().map(|b| b.upserts.len()).sum();
            if let Some(g) = self.group.as_mut() {
                g.rows += rows;
                let due = self
                    .durable_at
                    .is_none_or(|at| at.elapsed() >= commit_interval(self.opened.elapsed()));
                if g.rows >= GROUP_ROWS || due {
                    self.flush()?;
                }
            }
        } else if !self.conn.is_autocommit() {
            // Undo this commit only; the group's earlier commits stay and are committed now.
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO xmbridge_commit; RELEASE xmbridge_commit");
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "could not commit the writes before a failed one");
            }
        } else {
            // SQLite rolled the whole transaction back itself (a full disk, an I/O error): the
            // group's cursors went with its rows, so the next run redoes them. Index drops of
            // this group went too: those tables are not in bulk load any more.
            self.group = None;
            let restored: Vec<String> = self
                .bulk
                .iter()
                .filter(|t| {
                    self.tables.get(*t).is_none_or(|r| {
                        index_exists(&self.conn, &key_index_name(&r.display)).unwrap_or(false)
                    })
                })
                .cloned()
                .collect();
            for t in restored {
                self.bulk.remove(&t);
            }
        }
        match result {
            Ok(stats) => Ok(stats),
            Err(Failure { error: Ok(e), .. }) => Err(e),
            Err(Failure {
                table,
                error: Err(e),
            }) => {
                if is_disk_full(&e) {
                    let table = match table {
                        Some(t) if self.tables.contains_key(&t) => self.physical(&t),
                        // A step rather than a table ("commit", "cursor table").
                        Some(t) => t,
                        None => "commit".to_string(),
                    };
                    return Err(self.disk_full(table));
                }
                // The transaction is rolled back; find out whether the table was altered by hand.
                if let Some(r) = table.as_deref().and_then(|t| self.tables.get(t))
                    && let Some(diag) = diagnose(&self.conn, r)
                {
                    return Err(diag);
                }
                let context = match table {
                    Some(t) => self.physical(&t),
                    None => "commit".to_string(),
                };
                Err(sql_err(&context, e))
            }
        }
    }

    fn try_commit(&mut self, commit: &Commit) -> Result<CommitStats, Box<Failure>> {
        let synced = iso_millis(commit.synced_at_ms);
        let mut stats = Stats::default();
        let tx = &self.conn;
        if let Some((fence, table)) = &self.fence {
            // In the commit's own transaction: a later run's claim makes this one fail.
            let current = fence_token(tx, table, &fence.scope).map_err(at("fence table"))?;
            if current != Some(fence.token) {
                return Err(crate::fenced(&self.destination, fence, current, table, false).into());
            }
        }
        for batch in &commit.batches {
            let r = self
                .tables
                .get(&batch.table)
                .ok_or_else(|| DestError::UnknownTable {
                    table: self.prefix.clone() + &batch.table,
                })?;
            let bulk = self.bulk.contains(&batch.table);
            apply_batch(tx, r, batch, bulk, &synced, self.compat, &mut stats).map_err(
                |mut f| {
                    f.table = Some(batch.table.clone());
                    f
                },
            )?;
        }
        for m in &commit.mark_unseen_deleted {
            let r = self
                .tables
                .get(&m.table)
                .ok_or_else(|| DestError::UnknownTable {
                    table: self.prefix.clone() + &m.table,
                })?;
            let Some(deleted) = &r.deleted else {
                return Err(DestError::NotSoftDelete {
                    table: r.display.clone(),
                }
                .into());
            };
            let synced_col = quote_ident(&r.synced);
            let mut sql = format!(
                "UPDATE {} SET {d} = 1, {synced_col} = ?1 WHERE ({synced_col} IS NULL OR {synced_col} < ?1) AND {d} = 0",
                quote_ident(&r.display),
                d = quote_ident(deleted),
            );
            let mut binds: Vec<&Value> = Vec::new();
            for (col, v) in &m.scope {
                let c = r.spec_column(col, self.compat)?;
                if matches!(v, Value::Null) {
                    sql.push_str(&format!(" AND {} IS NULL", quote_ident(&c.name)));
                } else {
                    r.check_value(c, v)?;
                    binds.push(v);
                    sql.push_str(&format!(
                        " AND {} = ?{}",
                        quote_ident(&c.name),
                        binds.len() + 1
                    ));
                }
            }
            let fail = at(&m.table);
            let n = (|| {
                let mut st = tx.prepare_cached(&sql)?;
                st.raw_bind_parameter(1, &synced)?;
                for (i, v) in binds.iter().enumerate() {
                    st.raw_bind_parameter(i + 2, Cell(v))?;
                }
                st.raw_execute()
            })()
            .map_err(fail)?;
            stats.entry(&m.table).3 += n as u64;
        }
        if !commit.cursors.is_empty() {
            let now = iso_millis(now_ms());
            let mut st = tx
                .prepare_cached(&format!(
                    "INSERT INTO {} (\"stream\", \"cursor\", \"updated_at\", \"fence\") VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (\"stream\") DO UPDATE SET \"cursor\" = excluded.\"cursor\", \"updated_at\" = excluded.\"updated_at\", \"fence\" = excluded.\"fence\"",
                    quote_ident(&self.state)
                ))
                .map_err(at("cursor table"))?;
            let token = self.fence.as_ref().map(|(f, _)| f.token);
            for (stream, cursor) in &commit.cursors {
                st.execute(rusqlite::params![stream, cursor.to_string(), now, token])
                    .map_err(at("cursor table"))?;
            }
        }
        Ok(CommitStats { tables: stats.0 })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every commit applied so far is whole (a failed one was rolled back to its savepoint),
        // so committing the open group is always consistent.
        if let Err(e) = self.close_group() {
            tracing::warn!(error = %e, "could not commit the last writes when closing the destination");
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `bulk`: the table is in bulk load (no key index): rows are appended with plain `INSERT`s.
fn apply_batch(
    tx: &Connection,
    r: &Resolved,
    batch: &TableBatch,
    bulk: bool,
    synced: &str,
    compat: Compat,
    stats: &mut Stats,
) -> Result<(), Box<Failure>> {
    let table = quote_ident(&r.display);
    let fail = || at(&batch.table);
    let entry = stats.entry(&batch.table);
    let n = r.columns.len();
    let cols: Vec<String> = r.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let pk: Vec<String> = r.pk.iter().map(|&i| cols[i].clone()).collect();
    // Rows that replace whole groups (a rewritten response's answers) on a table without soft
    // delete: rows that stay the same are kept as they are, as on PostgreSQL.
    let replace = crate::replaces_groups(batch, bulk, r);
    // The keys of the batch's rows as stored, to tell a group's rows the batch no longer holds.
    let keep: HashSet<Vec<u8>> = if replace {
        let mut keep = HashSet::with_capacity(batch.upserts.len());
        for row in &batch.upserts {
            let mut key = Vec::new();
            for &i in &r.pk {
                let cell = row.get(i).map(Cell).unwrap_or(Cell(&Value::Null));
                let out = cell.to_sql().map_err(fail())?;
                push_key(&mut key, stored(&out));
            }
            keep.insert(key);
        }
        keep
    } else {
        HashSet::new()
    };
    // Deletes first: a response about to be rewritten loses its old answer rows (when replacing,
    // only those the batch does not hold again; should a key read back differ from the batch's
    // encoding, the row is deleted and then written again, never lost).
    for (col, values) in &batch.delete_where {
        let c = r.spec_column(col, compat)?;
        let name = quote_ident(&c.name);
        // NULL matches no row.
        let mut groups = Vec::with_capacity(values.len());
        for v in values {
            r.check_value(c, v)?;
            if !matches!(v, Value::Null) {
                groups.push(Cell(v));
            }
        }
        if !replace {
            let mut st = tx
                .prepare_cached(&format!("DELETE FROM {table} WHERE {name} = ?1"))
                .map_err(fail())?;
            for g in &groups {
                entry.3 += st.execute([g]).map_err(fail())? as u64;
            }
            continue;
        }
        let mut keys = tx
            .prepare_cached(&format!(
                "SELECT {} FROM {table} WHERE {name} = ?1",
                pk.join(", ")
            ))
            .map_err(fail())?;
        let by_key = pk
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} IS ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut one = tx
            .prepare_cached(&format!("DELETE FROM {table} WHERE {by_key}"))
            .map_err(fail())?;
        for g in &groups {
            let mut stale: Vec<Vec<rusqlite::types::Value>> = Vec::new();
            let mut rows = keys.query([g]).map_err(fail())?;
            while let Some(row) = rows.next().map_err(fail())? {
                let mut key = Vec::new();
                let mut values = Vec::with_capacity(pk.len());
                for i in 0..pk.len() {
                    push_key(&mut key, row.get_ref(i).map_err(fail())?);
                    values.push(row.get::<_, rusqlite::types::Value>(i).map_err(fail())?);
                }
                if !keep.contains(&key) {
                    stale.push(values);
                }
            }
            drop(rows);
            for key in stale {
                entry.3 += one
                    .execute(rusqlite::params_from_iter(key))
                    .map_err(fail())? as u64;
            }
        }
    }
    if batch.upserts.is_empty() {
        return Ok(());
    }
    let synced_col = quote_ident(&r.synced);
    let mut insert_cols = cols.join(", ");
    let mut insert_vals: String = (1..=n + 1)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    insert_cols.push_str(&format!(", {synced_col}"));
    let mut sets: Vec<String> = (0..n)
        .filter(|i| !r.pk.contains(i))
        .map(|i| format!("{} = ?{}", cols[i], i + 1))
        .collect();
    sets.push(format!("{synced_col} = ?{}", n + 1));
    if let Some(d) = &r.deleted {
        insert_cols.push_str(&format!(", {}", quote_ident(d)));
        insert_vals.push_str(", 0");
        sets.push(format!("{} = 0", quote_ident(d)));
    }
    // In bulk load there is no key to conflict on: every row is appended (and counted inserted).
    let insert = if bulk {
        format!("INSERT INTO {table} ({insert_cols}) VALUES ({insert_vals})")
    } else {
        format!(
            "INSERT INTO {table} ({insert_cols}) VALUES ({insert_vals}) ON CONFLICT ({}) DO NOTHING",
            pk.join(", ")
        )
    };
    let wheres: Vec<String> =
        r.pk.iter()
            .map(|&i| format!("{} = ?{}", cols[i], i + 1))
            .collect();
    let mut update = format!(
        "UPDATE {table} SET {} WHERE {}",
        sets.join(", "),
        wheres.join(" AND ")
    );
    if replace {
        // A row whose values are all the same stays as it is (its `<p>_synced` too).
        let (old, new): (Vec<String>, Vec<String>) = (0..n)
            .filter(|i| !r.pk.contains(i))
            .map(|i| (cols[i].clone(), format!("?{}", i + 1)))
            .unzip();
        if old.is_empty() {
            update.push_str(" AND false");
        } else {
            update.push_str(&format!(
                " AND ({}) IS NOT ({})",
                old.join(", "),
                new.join(", ")
            ));
        }
    }
    let mut ins = tx.prepare_cached(&insert).map_err(fail())?;
    let mut upd = tx.prepare_cached(&update).map_err(fail())?;
    for row in &batch.upserts {
        r.check_row(row)?;
        for (i, v) in row.iter().enumerate() {
            ins.raw_bind_parameter(i + 1, Cell(v)).map_err(fail())?;
        }
        ins.raw_bind_parameter(n + 1, synced).map_err(fail())?;
        if ins.raw_execute().map_err(fail())? == 1 {
            entry.1 += 1;
        } else {
            for (i, v) in row.iter().enumerate() {
                upd.raw_bind_parameter(i + 1, Cell(v)).map_err(fail())?;
            }
            upd.raw_bind_parameter(n + 1, synced).map_err(fail())?;
            entry.2 += upd.raw_execute().map_err(fail())? as u64;
        }
    }
    Ok(())
}

/// A cell as SQLite stores it (an owned conversion borrowed back).
fn stored<'a>(out: &'a ToSqlOutput<'a>) -> ValueRef<'a> {
    match out {
        ToSqlOutput::Borrowed(v) => *v,
        ToSqlOutput::Owned(v) => ValueRef::from(v),
        // `Cell` produces only the two above.
        _ => ValueRef::Null,
    }
}

/// Appends one key cell, tagged by storage class and length-prefixed, so that two different
/// keys never encode alike.
fn push_key(out: &mut Vec<u8>, cell: ValueRef<'_>) {
    match cell {
        ValueRef::Null => out.push(0),
        ValueRef::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            out.push(2);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        ValueRef::Text(b) | ValueRef::Blob(b) => {
            out.push(if matches!(cell, ValueRef::Text(_)) {
                3
            } else {
                4
            });
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// Whether `table` has a `PRIMARY KEY` constraint (tables made before the key became a unique
/// index).
fn has_primary_key(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE pk > 0)",
        [table],
        |row| row.get(0),
    )
}

fn index_exists(conn: &Connection, index: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
        [index],
        |row| row.get(0),
    )
}

/// Creates the key index (when it is ours) and the filter indexes that are missing.
fn create_indexes(conn: &Connection, r: &Resolved, ix: &Indexes) -> Result<(), DestError> {
    let q = quote_ident(&r.display);
    let err = |e| sql_err(&r.display, e);
    if ix.own_key && !index_exists(conn, &key_index_name(&r.display)).map_err(err)? {
        let pk: Vec<String> =
            r.pk.iter()
                .map(|&i| quote_ident(&r.columns[i].name))
                .collect();
        let create = format!(
            "CREATE UNIQUE INDEX {} ON {q} ({})",
            quote_ident(&key_index_name(&r.display)),
            pk.join(", ")
        );
        match conn.execute_batch(&create) {
            Ok(()) => {}
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                // A bulk load appended a key twice (an export that repeats a cell): keep the
                // last row written, as the upsert it stands for would have.
                let removed = conn
                    .execute(
                        &format!(
                            "DELETE FROM {q} WHERE rowid NOT IN (SELECT max(rowid) FROM {q} GROUP BY {})",
                            pk.join(", ")
                        ),
                        [],
                    )
                    .map_err(err)?;
                tracing::warn!(table = %r.display, removed, "rows repeating a key were loaded; kept the last of each");
                conn.execute_batch(&create).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
    }
    for col in &ix.filter {
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {q} ({})",
            quote_ident(&index_name(&r.display, col)),
            quote_ident(col)
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// Columns (name, declared type) of a table, or `None` when it does not exist.
fn columns_of(conn: &Connection, table: &str) -> rusqlite::Result<Option<Vec<(String, String)>>> {
    let mut st = conn.prepare_cached("SELECT name, type FROM pragma_table_info(?1)")?;
    let cols = st
        .query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    Ok((!cols.is_empty()).then_some(cols))
}

/// SQLite column names are case-insensitive.
fn find_col<'a>(existing: &'a [(String, String)], name: &str) -> Option<&'a str> {
    existing
        .iter()
        .find(|(n, _)| n == name)
        .or_else(|| existing.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
        .map(|(_, t)| t.as_str())
}

fn check_type(r: &Resolved, column: &str, found: &str, ty: ColumnType) -> Result<(), DestError> {
    let expected = sqlite_type(ty);
    if found.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    Err(DestError::TypeConflict {
        table: r.display.clone(),
        column: column.to_string(),
        found: if found.is_empty() {
            "(none)".into()
        } else {
            found.to_string()
        },
        expected: expected.to_string(),
        fix: format!(
            "drop the column (ALTER TABLE {} DROP COLUMN {}) and run the sync again with --full to re-create and refill it",
            quote_ident(&r.display),
            quote_ident(column)
        ),
    })
}

/// After a failed write: a structured error when the table no longer matches its spec.
fn diagnose(conn: &Connection, r: &Resolved) -> Option<DestError> {
    let existing = match columns_of(conn, &r.display) {
        Ok(Some(cols)) => cols,
        Ok(None) => {
            return Some(DestError::MissingTable {
                table: r.display.clone(),
            });
        }
        Err(_) => return None,
    };
    for (name, ty) in r.stored_columns() {
        match find_col(&existing, &name) {
            None => {
                return Some(DestError::MissingColumn {
                    table: r.display.clone(),
                    column: name,
                });
            }
            Some(found) => {
                if let Err(e) = check_type(r, &name, found, ty) {
                    return Some(e);
                }
            }
        }
    }
    None
}

impl Destination for SqliteDestination {
    fn ensure_tables<'a>(
        &'a mut self,
        specs: &'a [TableSpec],
    ) -> BoxFuture<'a, Result<Ensured, DestError>> {
        let specs = specs.to_vec();
        Box::pin(async move { self.run(move |i| i.ensure(&specs)).await })
    }

    fn cursor<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, DestError>> {
        let stream = stream.to_string();
        Box::pin(async move { self.run(move |i| i.cursor(&stream)).await })
    }

    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move { self.run(move |i| i.commit(&commit)).await })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move {
            self.run(|i| i.close_group()).await?;
            // Every commit was counted when it was grouped.
            Ok(CommitStats::default())
        })
    }

    fn describe(&self) -> String {
        match self.max_size_mb {
            Some(mb) => format!(
                "sqlite:{} (prefix {}, max_size_mb {mb})",
                self.path, self.prefix
            ),
            None => format!("sqlite:{} (prefix {})", self.path, self.prefix),
        }
    }

    fn keys<'a>(
        &'a mut self,
        table: &'a str,
        column: &'a str,
        filter: &'a [(String, Value)],
    ) -> BoxFuture<'a, Result<Vec<String>, DestError>> {
        let (table, column, filter) = (table.to_string(), column.to_string(), filter.to_vec());
        Box::pin(async move { self.run(move |i| i.keys(&table, &column, &filter)).await })
    }

    fn rows<'a>(&'a mut self, table: &'a str) -> BoxFuture<'a, Result<Vec<Vec<Value>>, DestError>> {
        let table = table.to_string();
        Box::pin(async move { self.run(move |i| i.rows(&table)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_commit_every_quarter_of_the_session_between_1_and_10_s() {
        let at = |secs: u64| commit_interval(std::time::Duration::from_secs(secs)).as_secs_f64();
        assert_eq!(
            [0, 2, 4, 6, 20, 40, 60, 3600].map(at),
            [1.0, 1.0, 1.0, 1.5, 5.0, 10.0, 10.0, 10.0]
        );
    }

    #[test]
    fn options_come_from_the_url_query() {
        assert_eq!(
            path_of_url("sqlite:/tmp/a.db?max_size_mb=5"),
            Some("/tmp/a.db")
        );
        assert_eq!(path_of_url("sqlite:///tmp/a.db"), Some("/tmp/a.db"));
        assert_eq!(
            SqliteOptions::from_url("sqlite:a.db?max_size_mb=5").unwrap(),
            SqliteOptions {
                max_size_mb: Some(5),
                fence: None,
            }
        );
        assert_eq!(
            SqliteOptions::from_url("sqlite:a.db").unwrap(),
            SqliteOptions::default()
        );
        let e = SqliteOptions::from_url("sqlite:a.db?max_size_mb=0").unwrap_err();
        assert!(e.to_string().contains("max_size_mb"), "{e}");
        let e = SqliteOptions::from_url("sqlite:a.db?cache=big").unwrap_err();
        assert!(e.to_string().contains("\"cache\""), "{e}");
    }
}
