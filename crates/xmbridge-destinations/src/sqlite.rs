//! The SQLite destination (`sqlite:PATH` or `sqlite://PATH`), the embedded default.
//!
//! Choices (also in `docs/destinations.md`):
//! - One file; the schema name is a **table-name prefix**: schema `qualtrics` → tables
//!   `qualtrics_survey`, `qualtrics_question_response`, …, and the cursor table
//!   `qualtrics__xmbridge_state` (`<schema>_<p>_state`). An attached database would need every
//!   reader to `ATTACH` it; a prefix keeps `sqlite3 file.db` and DuckDB's `ATTACH` simple.
//! - Declared column types keep schema.md's types visible and let `ensure_tables` detect hand
//!   edits: s `TEXT`, ts `TIMESTAMP`, b `BOOLEAN`, i `INTEGER`, l `BIGINT`, f `DOUBLE`, json
//!   `JSON_TEXT` (TEXT affinity, so a JSON text such as `123` is never turned into a number).
//! - Timestamps are ISO-8601 text `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC, fixed width, so they sort and
//!   compare as text; SQLite's date functions read them), booleans 0/1, JSON as text.
//! - `PRAGMA journal_mode=WAL`, `synchronous=NORMAL`; one transaction per [`Commit`], cursors
//!   upserted in the same transaction. Upserts are `INSERT … ON CONFLICT (pk) DO NOTHING`
//!   followed, when nothing was inserted, by `UPDATE … WHERE pk`, both `prepare_cached`: exact
//!   inserted/updated counts for the price of one statement per new row.
//! - Double-quoted string literals are switched off (`SQLITE_DBCONFIG_DQS_*`), so a quoted
//!   name that is not a column is an error rather than a string constant.
//! - rusqlite is synchronous: every call runs on tokio's blocking pool (`spawn_blocking`) holding
//!   the connection's mutex.
//!
//! It owns the SQLite file's tables with this prefix; it must not touch other tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::config::DbConfig;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};

use crate::names::{Resolved, iso_millis, keys_target, quote_ident};
use crate::{
    BoxFuture, ColumnType, Commit, CommitStats, Compat, DestError, Destination, TableBatch,
    TableSpec, Value,
};

/// Page cache of the destination's connection, in KiB. SQLite's 2 MB default makes a large load
/// re-read its primary-key index pages (random 64-hex ids) from the file on almost every insert;
/// the cache grows only as pages are used.
pub const CACHE_KIB: u32 = 65_536;

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
                        DestError::Other(format!(
                            "sqlite URL option max_size_mb={value:?}: expected a whole number of MiB greater than 0"
                        ))
                    })?;
                    opts.max_size_mb = Some(mb);
                }
                other => {
                    return Err(DestError::Other(format!(
                        "unknown sqlite URL option {other:?}: the only option is max_size_mb=N (e.g. sqlite:PATH?max_size_mb=500)"
                    )));
                }
            }
        }
        Ok(opts)
    }
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
    state: String,
    /// The open group transaction, if any (see [`GROUP_ROWS`]).
    group: Option<Group>,
}

/// Commits grouped into one SQLite transaction.
struct Group {
    rows: usize,
    since: std::time::Instant,
}

/// Group commit: [`Commit`]s are applied one per SAVEPOINT inside a longer SQLite transaction
/// that commits once it holds this many rows or is [`GROUP_SECS`] old, and on
/// [`Destination::flush`]. Each commit rewrites every page it touched into the WAL, and answer
/// rows have random 64-hex keys, so small transactions rewrite most of the primary-key index
/// every time (measured: 37 commits of 40,000 rows took 33 s where one took 20 s). Rows and
/// their cursor still commit together, so a kill loses at most the open group's work, which the
/// next run redoes from the last committed cursor.
pub const GROUP_ROWS: usize = 500_000;
/// See [`GROUP_ROWS`].
pub const GROUP_SECS: u64 = 10;

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
        crate::names::check_name(schema, None)?;
        let prefix = format!("{schema}_");
        let path_owned = path.to_string();
        let prefix2 = prefix.clone();
        let max_size_mb = opts.max_size_mb;
        let inner = tokio::task::spawn_blocking(move || {
            Inner::open(&path_owned, prefix2, compat, max_size_mb)
        })
        .await
        .map_err(|e| DestError::Other(format!("sqlite worker failed: {e}")))??;
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
        .map_err(|e| DestError::Other(format!("sqlite worker failed: {e}")))?
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
            Value::Text(s) | Value::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
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
        max_size_mb: Option<u64>,
    ) -> Result<Inner, DestError> {
        let connect_err = |e: rusqlite::Error| DestError::Connect {
            destination: format!("sqlite:{path}"),
            reason: e.to_string(),
        };
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
            "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-{CACHE_KIB}"
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
            "CREATE TABLE IF NOT EXISTS {} (\"stream\" TEXT PRIMARY KEY NOT NULL, \"cursor\" JSON_TEXT, \"updated_at\" TIMESTAMP)",
            quote_ident(&state)
        ))
        .map_err(connect_err)?;
        Ok(Inner {
            conn,
            destination: format!("sqlite:{path}"),
            max_size_mb,
            prefix,
            compat,
            tables: HashMap::new(),
            state,
            group: None,
        })
    }

    fn physical(&self, spec_name: &str) -> String {
        format!("{}{spec_name}", self.prefix)
    }

    fn ensure(&mut self, specs: &[TableSpec]) -> Result<(), DestError> {
        // Schema changes run in a transaction of their own.
        self.flush()?;
        let mut resolved = Vec::with_capacity(specs.len());
        for spec in specs {
            let r = Resolved::new(spec, self.compat, self.physical(&spec.name), None)?;
            resolved.push((spec.name.clone(), r));
        }
        let ctx = "ensure_tables";
        let tx = self.conn.transaction().map_err(|e| sql_err(ctx, e))?;
        for (_, r) in &resolved {
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
                    let pk: Vec<String> =
                        r.pk.iter()
                            .map(|&i| quote_ident(&r.columns[i].name))
                            .collect();
                    defs.push(format!("PRIMARY KEY ({})", pk.join(", ")));
                    tx.execute_batch(&format!("CREATE TABLE {q} ({})", defs.join(", ")))
                        .map_err(|e| sql_err(&r.display, e))?;
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
        for (spec, (_, r)) in specs.iter().zip(&resolved) {
            for col in crate::catalog::indexed_columns(spec) {
                tx.execute_batch(&format!(
                    "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                    quote_ident(&index_name(&r.display, col)),
                    quote_ident(&r.display),
                    quote_ident(col)
                ))
                .map_err(|e| sql_err(&r.display, e))?;
            }
        }
        tx.commit().map_err(|e| sql_err(ctx, e))?;
        for (name, r) in resolved {
            self.tables.insert(name, r);
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
            Some(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| DestError::Sql {
                    context: ctx,
                    message: format!("cursor of stream {stream:?} is not JSON: {e}"),
                }),
        }
    }

    fn keys(
        &self,
        table: &str,
        column: &str,
        filter: &[(String, Value)],
    ) -> Result<Vec<String>, DestError> {
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

    /// Commits the open group transaction, if any.
    fn flush(&mut self) -> Result<(), DestError> {
        if self.group.take().is_some() && !self.conn.is_autocommit() {
            self.conn
                .execute_batch("COMMIT")
                .map_err(|e| sql_err("commit", e))?;
        }
        Ok(())
    }

    fn commit(&mut self, commit: &Commit) -> Result<CommitStats, DestError> {
        if self.group.is_none() || self.conn.is_autocommit() {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| sql_err("commit", e))?;
            self.group = Some(Group {
                rows: 0,
                since: std::time::Instant::now(),
            });
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
                if g.rows >= GROUP_ROWS || g.since.elapsed().as_secs() >= GROUP_SECS {
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
            // group's cursors went with its rows, so the next run redoes them.
            self.group = None;
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
        for batch in &commit.batches {
            let r = self
                .tables
                .get(&batch.table)
                .ok_or_else(|| DestError::UnknownTable {
                    table: self.prefix.clone() + &batch.table,
                })?;
            apply_batch(tx, r, batch, &synced, self.compat, &mut stats).map_err(|mut f| {
                f.table = Some(batch.table.clone());
                f
            })?;
        }
        for m in &commit.mark_unseen_deleted {
            let r = self
                .tables
                .get(&m.table)
                .ok_or_else(|| DestError::UnknownTable {
                    table: self.prefix.clone() + &m.table,
                })?;
            let Some(deleted) = &r.deleted else {
                return Err(DestError::Other(format!(
                    "table {} is not a soft-delete table: mark_unseen_deleted needs its deleted column",
                    r.display
                ))
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
                    "INSERT INTO {} (\"stream\", \"cursor\", \"updated_at\") VALUES (?1, ?2, ?3) \
                     ON CONFLICT (\"stream\") DO UPDATE SET \"cursor\" = excluded.\"cursor\", \"updated_at\" = excluded.\"updated_at\"",
                    quote_ident(&self.state)
                ))
                .map_err(at("cursor table"))?;
            for (stream, cursor) in &commit.cursors {
                st.execute(rusqlite::params![stream, cursor.to_string(), now])
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
        if let Err(e) = self.flush() {
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

fn apply_batch(
    tx: &Connection,
    r: &Resolved,
    batch: &TableBatch,
    synced: &str,
    compat: Compat,
    stats: &mut Stats,
) -> Result<(), Box<Failure>> {
    let table = quote_ident(&r.display);
    let fail = || at(&batch.table);
    let entry = stats.entry(&batch.table);
    // Deletes first: a response about to be rewritten loses its old answer rows.
    for (col, values) in &batch.delete_where {
        let c = r.spec_column(col, compat)?;
        let mut st = tx
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE {} = ?1",
                quote_ident(&c.name)
            ))
            .map_err(fail())?;
        for v in values {
            r.check_value(c, v)?;
            if matches!(v, Value::Null) {
                continue;
            }
            entry.3 += st.execute([Cell(v)]).map_err(fail())? as u64;
        }
    }
    if batch.upserts.is_empty() {
        return Ok(());
    }
    let n = r.columns.len();
    let cols: Vec<String> = r.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let pk: Vec<String> = r.pk.iter().map(|&i| cols[i].clone()).collect();
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
    let insert = format!(
        "INSERT INTO {table} ({insert_cols}) VALUES ({insert_vals}) ON CONFLICT ({}) DO NOTHING",
        pk.join(", ")
    );
    let wheres: Vec<String> =
        r.pk.iter()
            .map(|&i| format!("{} = ?{}", cols[i], i + 1))
            .collect();
    let update = format!(
        "UPDATE {table} SET {} WHERE {}",
        sets.join(", "),
        wheres.join(" AND ")
    );
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
            upd.raw_execute().map_err(fail())?;
            entry.2 += 1;
        }
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
    ) -> BoxFuture<'a, Result<(), DestError>> {
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

    fn flush(&mut self) -> BoxFuture<'_, Result<(), DestError>> {
        Box::pin(async move { self.run(|i| i.flush()).await })
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
}

#[cfg(test)]
mod url_tests {
    use super::*;

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
                max_size_mb: Some(5)
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
