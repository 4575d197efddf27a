//! Destination writers: SQLite (the embedded default), PostgreSQL and Delta Lake tables.
//!
//! It owns schema creation and evolution, batched writes (prepared statements in large
//! transactions on SQLite; binary COPY into a staging table and one merge per batch on
//! PostgreSQL; Parquet files and their rewrite on merges on Delta Lake), and the commit of a
//! batch together with its sync cursors (a transaction on SQL; a redo file and Delta `txn`
//! identifiers on Delta Lake), so a killed sync resumes with nothing lost and nothing doubled. It also owns how a destination is
//! reached: [`DestinationSettings`] (the PostgreSQL password apart from the URL, from a file,
//! `PGPASSWORD` or pgpass), TLS to PostgreSQL (the `pgtls` module), and the lock that lets one
//! sync at a time write a destination. It says which way the process's allocator should lean
//! while destinations are open ([`memory`]: the binary owns the allocator and registers a hook).
//! Identifiers that come from survey content are always quoted, never spliced into SQL. It must
//! not know about Qualtrics or its API: it receives table specs, typed rows and cursors from
//! `xmbridge-sync`.
//!
//! The contract below is shared with `xmbridge-sync`; a destination is one file implementing
//! [`Destination`] plus one line in the registry of [`open`].

use std::future::Future;
use std::pin::Pin;

pub mod delta;
pub mod delta_place;
mod delta_runs;
pub mod memory;
mod names;
pub(crate) mod pgpass;
pub(crate) mod pgtls;
pub mod postgres;
pub mod settings;
pub mod sqlite;

pub use compact_str::{CompactString as Text, ToCompactString as ToText};
pub use names::{iso_millis, parse_iso_millis, quote_ident, redact_url};
pub use settings::{DestinationSettings, Password, PasswordSource, PgEnv};

/// A boxed future, so that [`Destination`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Column types of `docs/design/schema.md` ("Column types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// s
    Text,
    /// ts: UTC timestamp
    Timestamp,
    /// b
    Bool,
    /// i
    Int,
    /// l
    BigInt,
    /// f
    Float,
    /// json: jsonb on PostgreSQL, text on SQLite
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// One column of a [`TableSpec`].
pub struct Column {
    /// The column's name, as written in the destination (already a valid identifier).
    pub name: String,
    /// What the column stores; each destination maps it to its own SQL type.
    pub ty: ColumnType,
}

/// One destination table (without the system columns, which the destination adds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The logical table name (`survey`, `question_response`); each destination makes it physical.
    pub name: String,
    /// The table's columns in row order: every [`TableBatch`] row holds one value per column.
    pub columns: Vec<Column>,
    /// Names of the primary-key columns (for `question_response` the system `<p>_id` column,
    /// named here as `"<p>_id"` literally; the destination substitutes the prefix).
    pub primary_key: Vec<String>,
    /// Rows that disappear upstream are kept with `<p>_deleted = true`.
    pub soft_delete: bool,
    /// Columns the caller deletes, marks or reads rows by (`Batch::delete_where`, soft-delete
    /// scopes, `keys` filters). The destination indexes each one the table has that is not
    /// already the leading primary-key column, so incremental writes of large tables do not scan.
    pub filter_columns: Vec<String>,
    /// A column that every row with a given key shares because the key is derived from it:
    /// the key is that column's value, `:`, then the rest (`question_response`'s `<p>_id` is
    /// `<response_id>:…`); columns of the key itself need no mention. PostgreSQL relies on the
    /// prefix (a group's rows are one range of the key's index, so the column needs no index
    /// of its own) and refuses a row without it. A destination without a key index may find the
    /// stored rows a batch replaces by that column alone (Delta: docs/destinations.md,
    /// "Incremental syncs and merges"). Naming a column the key does not determine would let
    /// such a destination keep a second row of a key.
    pub key_implies: Option<String>,
}

/// One cell. Timestamps are epoch milliseconds, UTC.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL, for any column type.
    Null,
    /// A [`ColumnType::Text`] value. Up to 24 bytes sit in the cell itself: most answer cells
    /// (response and question ids, choice codes, short labels) then cost no allocation. When
    /// each was a `String` (made on a parser thread, freed on another), a 50,000-response
    /// PostgreSQL first load's client spent 9 % more CPU, 15 % with the 32-byte cell of before
    /// (docs/bench.md, "Answer cells without an allocation each").
    Text(Text),
    /// An [`ColumnType::Int`] or [`ColumnType::BigInt`] value.
    Int(i64),
    /// A [`ColumnType::Float`] value.
    Float(f64),
    /// A [`ColumnType::Bool`] value.
    Bool(bool),
    /// A [`ColumnType::Timestamp`] value, in epoch milliseconds UTC.
    Timestamp(i64),
    /// A [`ColumnType::Json`] value, as serialized JSON text. Boxed, not [`Text`]: the cell
    /// stays 24 bytes (32 with two `Text` variants), and JSON cells are few.
    Json(Box<str>),
}

/// System column prefix: `_xmbridge` by default, `_fivetran` with `--compat fivetran`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compat {
    #[default]
    /// System columns start with `_xmbridge` (the default).
    Xmbridge,
    /// System columns start with `_fivetran`, as a Fivetran connector writes (`--compat fivetran`).
    Fivetran,
}

impl Compat {
    /// The system column prefix, without the trailing `_` of the column names.
    pub fn prefix(self) -> &'static str {
        match self {
            Compat::Xmbridge => "_xmbridge",
            Compat::Fivetran => "_fivetran",
        }
    }

    /// The cursor table's name (`<p>_state`).
    pub fn state_table(self) -> String {
        format!("{}_state", self.prefix())
    }
}

impl TableSpec {
    /// Adds a column unless one of that name exists (schema evolution: the sync widens a spec,
    /// e.g. a new `stats_*` field, then calls [`Destination::ensure_tables`] again). Returns
    /// whether it was added.
    pub fn add_column(&mut self, name: &str, ty: ColumnType) -> bool {
        if self.columns.iter().any(|c| c.name == name) {
            return false;
        }
        self.columns.push(Column {
            name: name.to_string(),
            ty,
        });
        true
    }

    /// The columns a destination indexes besides the primary key: [`TableSpec::filter_columns`]
    /// the table has, except the leading primary-key column (the key's own index serves it).
    pub fn indexed_columns(&self) -> Vec<&str> {
        self.filter_columns
            .iter()
            .map(String::as_str)
            .filter(|col| self.primary_key.first().map(String::as_str) != Some(*col))
            .filter(|col| self.columns.iter().any(|c| c.name == *col))
            .collect()
    }

    /// Position of a column in the rows of a [`TableBatch`].
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl ColumnType {
    /// The spelling of docs/design/schema.md (`s`, `ts`, `b`, `i`, `l`, `f`, `json`).
    pub fn short(self) -> &'static str {
        match self {
            ColumnType::Text => "s",
            ColumnType::Timestamp => "ts",
            ColumnType::Bool => "b",
            ColumnType::Int => "i",
            ColumnType::BigInt => "l",
            ColumnType::Float => "f",
            ColumnType::Json => "json",
        }
    }
}

// A first load holds hundreds of thousands of rows of cells: a cell stays the size of a `String`.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Value>() == 24);

impl Value {
    /// The variant's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Text(_) => "text",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Timestamp(_) => "timestamp",
            Value::Json(_) => "json",
        }
    }

    /// The text of a text or JSON cell.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Json(s) => Some(s),
            _ => None,
        }
    }
}

/// Rows for one table; each row holds one value per column of its [`TableSpec`], in order.
#[derive(Clone, Debug, Default)]
pub struct TableBatch {
    /// The logical name of the table the rows belong to (its [`TableSpec::name`]).
    pub table: String,
    /// Insert or update by primary key.
    pub upserts: Vec<Vec<Value>>,
    /// Remove (hard delete) rows whose `column` equals one of `values` — e.g. the answer rows of
    /// responses deleted upstream, or of a response about to be rewritten.
    pub delete_where: Vec<(String, Vec<Value>)>,
    /// The caller knows none of these rows' keys is in the destination yet (a survey's first
    /// load): a destination may insert without merging. It must still behave as an upsert if a
    /// key turns out to exist (PostgreSQL then falls back to its merge).
    pub fresh: bool,
}

impl TableBatch {
    /// New rows only (a first load), nothing to delete or merge: what a destination may append
    /// to a table whose indexes it builds afterwards.
    pub fn appends_only(&self) -> bool {
        self.fresh && self.delete_where.is_empty()
    }
}

/// Whether `batch` replaces whole groups of rows (its `delete_where` groups are exactly its
/// upserts) on a table where rows that stay the same can simply be kept: not in bulk load (no key
/// to find them by) and no soft delete (which tells the rows a sync saw by `<p>_synced`). Both
/// SQL destinations then keep a group's unchanged rows as they are, `<p>_synced` included.
pub(crate) fn replaces_groups(batch: &TableBatch, bulk: bool, r: &names::Resolved) -> bool {
    !bulk && !batch.delete_where.is_empty() && !batch.upserts.is_empty() && r.deleted.is_none()
}

/// After a full read of a soft-delete table (optionally limited to rows where `scope` matches),
/// mark every row not written by this sync (`<p>_synced` older than the commit's `synced_at_ms`)
/// as deleted.
#[derive(Clone, Debug)]
pub struct MarkUnseenDeleted {
    /// The logical name of the soft-delete table.
    pub table: String,
    /// Column → value pairs a row must match to be considered (empty: the whole table).
    pub scope: Vec<(String, Value)>,
}

/// One destination transaction: all batches and the cursors they advance, or nothing.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// The sync run's time, written into `<p>_synced`.
    pub synced_at_ms: i64,
    /// The rows to write, per table, applied in order.
    pub batches: Vec<TableBatch>,
    /// The soft-delete passes to run after the batches.
    pub mark_unseen_deleted: Vec<MarkUnseenDeleted>,
    /// Stream cursors committed with the rows (stream name → opaque JSON).
    pub cursors: Vec<(String, serde_json::Value)>,
    /// The commit may be applied while the commit just before it is still being applied, on
    /// another connection of the same destination: no row is in both, and its cursors hold the
    /// same values as that one's, so the order the two land in does not matter. A commit without
    /// it starts only after every earlier commit is in. See [`Destination::settle`].
    pub concurrent: bool,
}

impl Commit {
    /// Tables this commit merges into, deletes from or soft-deletes in: everything but
    /// [`TableBatch::appends_only`] batches (a table may be named more than once).
    pub fn merged_tables(&self) -> impl Iterator<Item = &str> {
        self.batches
            .iter()
            .filter(|b| !b.appends_only())
            .map(|b| b.table.as_str())
            .chain(self.mark_unseen_deleted.iter().map(|m| m.table.as_str()))
    }
}

/// A sync run's lease on a destination (docs/destinations.md, "Fencing"). Opening with one
/// claims the destination for the run: the destination records the token in its fence table
/// (`<p>_fence`, one row per scope), refusing when a higher one is there already, and every
/// commit of this session checks in its own transaction that the recorded token is still its
/// own. A later run of the scope that claims a higher token therefore stops every commit of
/// this one, even of a process that was frozen and wakes up; on PostgreSQL the claim also ends
/// the sessions of runs with lower tokens, so their locks do not hold it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// What is leased: the connection's name (one run of it at a time writes).
    pub scope: String,
    /// The run's token: higher than that of every earlier run of the scope.
    pub token: i64,
}

impl Fence {
    /// The scope hashed to 16 hex digits (FNV-1a), for the PostgreSQL session names of fenced
    /// runs, which hold at most 63 bytes (a connection name may be longer).
    pub(crate) fn scope_tag(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.scope.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Why a leased run may not write ([`DestError::Fenced`]).
#[derive(Debug)]
pub struct FenceLost {
    /// The destination, described for messages.
    pub destination: String,
    /// The run's fence.
    pub fence: Fence,
    /// The token recorded now (`None`: the claim was removed by hand).
    pub current: Option<i64>,
    /// The physical fence table.
    pub table: String,
    /// Refused when opening, where a state store replaced or restored from a backup is the
    /// other likely cause: the message says how to remove the stale claim.
    pub at_claim: bool,
}

impl std::fmt::Display for FenceLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self
            .current
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        write!(
            f,
            "this sync run lost its lease on {}: a later run of {:?} claimed it (fence token {current} in {}, this run holds {}); nothing of this commit was applied and this run writes nothing more, the later run continues from the last commit",
            self.destination, self.fence.scope, self.table, self.fence.token
        )?;
        if self.at_claim {
            write!(
                f,
                "; if no later run of it exists (the state store was replaced or restored from a backup), remove the stale claim: DELETE FROM {} WHERE scope = '{}'",
                self.table,
                self.fence.scope.replace('\'', "''")
            )?;
        }
        Ok(())
    }
}

/// The error of a run whose `fence` is not (any more) the one `table` records (`current`).
pub(crate) fn fenced(
    destination: &str,
    fence: &Fence,
    current: Option<i64>,
    table: &str,
    at_claim: bool,
) -> DestError {
    DestError::Fenced(Box::new(FenceLost {
        destination: destination.to_string(),
        fence: fence.clone(),
        current,
        table: table.to_string(),
        at_claim,
    }))
}

/// What a commit changed, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// table → (inserted, updated, deleted)
    pub tables: Vec<(String, u64, u64, u64)>,
}

impl CommitStats {
    /// Adds `other`'s counts to these, table by table.
    pub fn add(&mut self, other: CommitStats) {
        for (table, i, u, d) in other.tables {
            match self.tables.iter_mut().find(|e| e.0 == table) {
                Some(e) => {
                    e.1 += i;
                    e.2 += u;
                    e.3 += d;
                }
                None => self.tables.push((table, i, u, d)),
            }
        }
    }
}

/// Why a destination call failed; messages name the table (and column) and what to do.
/// Table names are the physical ones (`qualtrics.survey` on PostgreSQL, `qualtrics_survey` on
/// SQLite). No message ever contains a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestError {
    /// The destination could not be reached or opened.
    #[error("cannot connect to {destination}: {reason}")]
    Connect {
        /// The destination as the user named it (no password).
        destination: String,
        /// Why the connection or open failed.
        reason: String,
    },
    /// The destination settings are unusable (an empty SQLite path, an unreadable password or
    /// CA file, an unknown sslmode …): nothing was connected to.
    #[error("{0}")]
    Settings(String),
    /// Another sync holds this destination's lock (see `docs/destinations.md`, "One sync at a
    /// time").
    #[error(
        "another sync is writing this destination: {destination}{holder}; wait for it to finish or stop it, then run this sync again"
    )]
    Busy {
        /// The destination as the user named it (no password).
        destination: String,
        /// `, held by …` when the destination can tell, else empty.
        holder: String,
    },
    /// An option in the destination URL (`?max_size_mb=…`) is unknown or has a bad value.
    #[error("{0}")]
    UrlOption(String),
    /// The URL's scheme names no known destination.
    #[error("unknown destination {url:?}: expected one of {known}")]
    UnknownScheme {
        /// The URL as given (no password).
        url: String,
        /// The supported schemes, comma-separated.
        known: &'static str,
    },
    /// A table, column or schema name the destination cannot store.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// Why the destination cannot store it.
        reason: String,
    },
    /// A commit or a read names a table that `ensure_tables` was not called for (a bug in the
    /// caller).
    #[error(
        "table {table} was not prepared: call ensure_tables with its spec before writing or reading it"
    )]
    UnknownTable {
        /// The logical table name the caller used.
        table: String,
    },
    /// A stream's stored cursor cannot be read (not JSON: edited by hand, or a damaged file).
    #[error(
        "the cursor of stream {stream:?} in {table} is not valid JSON ({reason}), so it is not known what was synced; a sync with --full ignores unreadable cursors and writes fresh ones"
    )]
    UnreadableCursor {
        /// The stream whose cursor is unreadable.
        stream: String,
        /// The physical cursor table.
        table: String,
        /// The JSON parser's message.
        reason: String,
    },
    /// The table was dropped by hand after `ensure_tables`.
    #[error(
        "table {table} does not exist (dropped by hand?); nothing of this commit was applied; run the sync again to re-create it"
    )]
    MissingTable {
        /// The physical table name.
        table: String,
    },
    /// A column was dropped by hand after `ensure_tables`.
    #[error(
        "table {table} has no column {column:?} (dropped by hand?); nothing of this commit was applied; run the sync again to re-add it (rows synced before keep no value there: sync with --full to refill them, or restore the column by hand)"
    )]
    MissingColumn {
        /// The physical table name.
        table: String,
        /// The missing column.
        column: String,
    },
    /// An existing column has another type than the spec (altered by hand).
    #[error(
        "table {table} column {column:?} has type {found} but xmbridge writes {expected}; fix: {fix}"
    )]
    TypeConflict {
        /// The physical table name.
        table: String,
        /// The column with the conflicting type.
        column: String,
        /// The column's type in the database now.
        found: String,
        /// The type xmbridge writes to it.
        expected: String,
        /// What to run to repair the column.
        fix: String,
    },
    /// A row has more or fewer values than its table has columns (a bug in the caller).
    #[error("table {table}: a row has {found} values but the spec has {expected} columns")]
    RowShape {
        /// The physical table name.
        table: String,
        /// How many columns the spec has.
        expected: usize,
        /// How many values the row has.
        found: usize,
    },
    /// A value of the wrong kind for its column (a bug in the caller).
    #[error("table {table} column {column:?}: cannot store a {found} value in a {expected} column")]
    ValueType {
        /// The physical table name.
        table: String,
        /// The column the value was meant for.
        column: String,
        /// The column's type.
        expected: &'static str,
        /// The value's kind.
        found: &'static str,
    },
    /// A primary-key cell is null.
    #[error("table {table}: primary-key column {column:?} is null in a row")]
    NullKey {
        /// The physical table name.
        table: String,
        /// The primary-key column that is null.
        column: String,
    },
    /// A row of a table whose key is led by a group column (`question_response`: `<p>_id` is
    /// `<response_id>:…`, [`TableSpec::key_implies`]) has a key that does not start with its
    /// group value and `:` (a bug in the caller). PostgreSQL finds a group's rows by that
    /// prefix, so such a row would be missed when its group is rewritten.
    #[error(
        "table {table}: key {key:?} does not start with the row's {column} value and ':' (expected {value:?} followed by ':')"
    )]
    KeyNotLed {
        /// The physical table name.
        table: String,
        /// The group column the key must start with.
        column: String,
        /// The row's key.
        key: String,
        /// The row's value of the group column.
        value: String,
    },
    /// The disk (or the destination's size cap) is full; the commit was rolled back, or (a
    /// destination without transactions across tables) is kept to be finished by the next run.
    #[error(
        "table {table}: database or disk is full ({destination}); {}; {fix}, then run the sync again: it resumes from the last commit",
        if *.partly_applied {
            "part of this commit is in: its redo record is kept and the next run finishes it before anything else, earlier commits stay"
        } else {
            "nothing of this commit was applied, earlier commits stay"
        }
    )]
    DiskFull {
        /// The table being written when the disk filled, or the step's name.
        table: String,
        /// The destination that is full, in words (`the SQLite file`, a PostgreSQL target).
        destination: String,
        /// What to do to make room (free space, raise `max_size_mb`).
        fix: String,
        /// Some tables took the commit before the disk filled (Delta's redo record finishes it).
        partly_applied: bool,
    },
    /// The database refused a statement; `context` names the table or the step.
    #[error("{context}: {message}")]
    Sql {
        /// The table or step the statement belonged to.
        context: String,
        /// The database's error text.
        message: String,
    },
    /// `mark_unseen_deleted` on a table without the soft-delete column (a bug in the caller).
    #[error(
        "table {table} is not a soft-delete table: mark_unseen_deleted needs its deleted column"
    )]
    NotSoftDelete {
        /// The physical table name.
        table: String,
    },
    /// `keys` on a column that is not text (a bug in the caller).
    #[error("{table}.{column}: keys are read from text columns only")]
    KeysNotText {
        /// The physical table name.
        table: String,
        /// The non-text column.
        column: String,
    },
    /// This destination cannot read keys back (the reconcile pass needs them).
    #[error("{destination}: this destination cannot read keys of table {table} back")]
    KeysUnsupported {
        /// The destination, described for messages.
        destination: String,
        /// The table whose keys were asked for.
        table: String,
    },
    /// A later run of the same scope claimed the destination (it took this run's lease over):
    /// this run may not write any more; nothing of the refused commit was applied.
    #[error("{0}")]
    Fenced(Box<FenceLost>),
    /// The blocking worker that runs the destination's statements died (a panic).
    #[error("{destination} worker failed: {source}")]
    Worker {
        /// The destination kind whose worker died (`sqlite`).
        destination: &'static str,
        #[source]
        /// The join error carrying the worker's panic.
        source: tokio::task::JoinError,
    },
}

/// What kind of failure a [`DestError`] is, for callers that branch on it (exit codes, hints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestErrorKind {
    /// The destination could not be reached, opened or configured.
    Connect,
    /// Another sync holds the destination's lock.
    Busy,
    /// The tables differ from what was prepared (dropped or altered by hand).
    Schema,
    /// A stored cursor cannot be read.
    Cursor,
    /// The disk or the size cap is full.
    DiskFull,
    /// The database refused a statement.
    Database,
    /// The caller broke the contract (unprepared table, wrong row shape, bad name …).
    Usage,
    /// The destination cannot do what was asked, or its worker died.
    Unsupported,
    /// A later run claimed the destination: this one lost its lease ([`Fence`]).
    Fenced,
}

impl DestError {
    /// The kind of failure, so callers branch without matching every variant.
    pub fn kind(&self) -> DestErrorKind {
        match self {
            DestError::Connect { .. }
            | DestError::Settings(_)
            | DestError::UrlOption(_)
            | DestError::UnknownScheme { .. } => DestErrorKind::Connect,
            DestError::Busy { .. } => DestErrorKind::Busy,
            DestError::MissingTable { .. }
            | DestError::MissingColumn { .. }
            | DestError::TypeConflict { .. } => DestErrorKind::Schema,
            DestError::UnreadableCursor { .. } => DestErrorKind::Cursor,
            DestError::DiskFull { .. } => DestErrorKind::DiskFull,
            DestError::Sql { .. } => DestErrorKind::Database,
            DestError::InvalidName { .. }
            | DestError::UnknownTable { .. }
            | DestError::RowShape { .. }
            | DestError::ValueType { .. }
            | DestError::NullKey { .. }
            | DestError::KeyNotLed { .. }
            | DestError::NotSoftDelete { .. }
            | DestError::KeysNotText { .. } => DestErrorKind::Usage,
            DestError::KeysUnsupported { .. } | DestError::Worker { .. } => {
                DestErrorKind::Unsupported
            }
            DestError::Fenced(_) => DestErrorKind::Fenced,
        }
    }
}

/// What [`Destination::ensure_tables`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ensured {
    /// Spec names of the tables that did not exist and were created: every table on a first run;
    /// later, tables dropped by hand or new in this version. The sync reloads the stream of such
    /// a table when its cursor says data was loaded (the new table would stay empty otherwise).
    pub created: Vec<String>,
}

/// A place synced tables are written to.
pub trait Destination: Send {
    /// Creates missing tables and adds missing columns (never drops); a column whose type
    /// differs from the spec is an error naming table, column, both types and the fix. Says
    /// which tables it had to create.
    fn ensure_tables<'a>(
        &'a mut self,
        specs: &'a [TableSpec],
    ) -> BoxFuture<'a, Result<Ensured, DestError>>;

    /// The committed cursor of a stream, if any; [`DestError::UnreadableCursor`] when the stored
    /// value is not JSON.
    fn cursor<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, DestError>>;

    /// Applies a [`Commit`] atomically: its rows and cursors are stored together or not at all.
    /// A destination may group several commits into one transaction of its own for speed
    /// (SQLite does); such a commit is durable once [`Destination::flush`] returns.
    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>>;

    /// Makes every commit so far durable. Callers flush at the end of a run and before they
    /// report a failure, so that work done before it is kept. Settles first (see
    /// [`Destination::settle`]) and returns what that reported.
    fn flush(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async { Ok(CommitStats::default()) })
    }

    /// Flushes, then gives up what the destination holds for its writer before it is dropped:
    /// a Delta destination on S3 deletes its writer lease, so that the next run need not wait
    /// for it to lapse. Nothing may be committed after it. Default: [`Destination::flush`]
    /// (a local lock ends when the destination is dropped).
    fn close(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        self.flush()
    }

    /// Waits for the [`Commit::concurrent`] commits still being applied and returns what they
    /// changed; an error is the first of them that failed. A destination may apply such a commit
    /// after `commit` returned (PostgreSQL: on a connection of its own, beside the one before it,
    /// while the caller prepares the next); its changes and its failure are then reported by a
    /// later `commit`, by `settle` or by `flush`. A caller that needs to know which commit failed
    /// settles before a commit of another kind and before it reads. Unlike `flush`, ends no
    /// grouping or bulk load. Default: nothing is left in flight.
    fn settle(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async { Ok(CommitStats::default()) })
    }

    /// Rows per commit this destination asks for while a survey's first load appends
    /// ([`TableBatch::appends_only`]): one that groups appends itself, so that a smaller commit
    /// costs it nothing, lowers what a sync holds in memory (the rows being built, waiting and
    /// being written). The sync takes the smaller of this and its own `commit_rows`. Default
    /// `None`: the sync's `commit_rows`.
    fn append_commit_rows(&self) -> Option<usize> {
        None
    }

    /// `sqlite:PATH (prefix qualtrics_)`, `postgres://host/db (schema qualtrics)` — no secret.
    fn describe(&self) -> String;

    /// Every row of a prepared table as stored, in primary-key order: its spec columns, then
    /// `<p>_synced`, then `<p>_deleted` on soft-delete tables; timestamps as epoch milliseconds,
    /// JSON as its text (PostgreSQL's jsonb gives its own normalized spelling). For tests and
    /// tools that compare destinations without knowing how each stores rows; the whole table is
    /// read into memory. Destinations that cannot read rows back keep this default, which says
    /// so.
    fn rows<'a>(&'a mut self, table: &'a str) -> BoxFuture<'a, Result<Vec<Vec<Value>>, DestError>> {
        let err = DestError::KeysUnsupported {
            destination: self.describe(),
            table: table.to_string(),
        };
        Box::pin(async move { Err(err) })
    }

    /// The distinct non-NULL values of the text column `column` of a prepared table, on the rows
    /// where every `(column, value)` of `filter` is equal (soft-deleted rows included). The only
    /// read besides cursors: the sync's reconcile pass compares the response ids it holds with
    /// the ids Qualtrics still has. Destinations that cannot read back keep this default, and a
    /// reconcile against them fails with this message.
    fn keys<'a>(
        &'a mut self,
        table: &'a str,
        column: &'a str,
        filter: &'a [(String, Value)],
    ) -> BoxFuture<'a, Result<Vec<String>, DestError>> {
        let _ = (column, filter);
        let err = DestError::KeysUnsupported {
            destination: self.describe(),
            table: table.to_string(),
        };
        Box::pin(async move { Err(err) })
    }
}

/// The bytes that identify a cell among the cells of its column, equal for equal stored values:
/// keys compared, sorted and looked up alike on every destination.
pub(crate) fn push_key(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Text(_) | Value::Json(_) => {
            let s = v.as_text().unwrap_or_default();
            out.push(1);
            // NUL escaped and a NUL NUL terminator: "a" + "b" stays apart from "ab", and a
            // prefix sorts first ("" < "1" < "10").
            for &b in s.as_bytes() {
                out.push(b);
                if b == 0 {
                    out.push(1);
                }
            }
            out.extend_from_slice(&[0, 0]);
        }
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&(*i as u64 ^ (1 << 63)).to_be_bytes());
        }
        Value::Float(f) => {
            out.push(3);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Bool(b) => out.extend_from_slice(&[4, u8::from(*b)]),
        Value::Timestamp(t) => {
            out.push(5);
            out.extend_from_slice(&(*t as u64 ^ (1 << 63)).to_be_bytes());
        }
    }
}

/// Rows read back by [`Destination::rows`], put in the order of their key columns `pk`.
pub(crate) fn sort_by_key(rows: &mut [Vec<Value>], pk: &[usize]) {
    rows.sort_by_cached_key(|row| {
        let mut k = Vec::new();
        for &i in pk {
            push_key(&mut k, row.get(i).unwrap_or(&Value::Null));
        }
        k
    });
}

/// The destinations [`open`] knows, for error messages.
pub const KNOWN_DESTINATIONS: &str = "sqlite:PATH, sqlite://PATH, sqlite:PATH?max_size_mb=N, postgres://USER@HOST:PORT/DB, delta:PATH, delta:PATH?target_file_mb=N, delta:s3://BUCKET/PREFIX";

/// Opens the destination the settings name and takes its lock (one sync at a time per SQLite
/// file, per PostgreSQL schema; [`DestError::Busy`] otherwise). `schema` is the PostgreSQL
/// schema or the SQLite table-name prefix (`qualtrics` → tables `qualtrics_survey`, …);
/// `compat` chooses the system-column prefix. With a `fence` the destination is claimed for a
/// leased run ([`Fence`]); without one (a sync from the command line) no fence is checked.
pub async fn open(
    settings: &DestinationSettings,
    schema: &str,
    compat: Compat,
    fence: Option<Fence>,
) -> Result<Box<dyn Destination>, DestError> {
    let url = settings.url();
    if let Some(path) = sqlite::path_of_url(url) {
        let opts = sqlite::SqliteOptions {
            fence,
            ..sqlite::SqliteOptions::from_url(url)?
        };
        return Ok(Box::new(
            sqlite::SqliteDestination::open_with(path, schema, compat, opts).await?,
        ));
    }
    if let Some(path) = delta::path_of_url(url) {
        let opts = delta::DeltaOptions {
            fence,
            ..delta::DeltaOptions::from_url(url)?
        };
        return Ok(Box::new(
            delta::DeltaDestination::open(path, schema, compat, opts).await?,
        ));
    }
    if settings::is_postgres_url(url) {
        return Ok(Box::new(
            postgres::PostgresDestination::connect(settings, schema, compat, fence).await?,
        ));
    }
    Err(DestError::UnknownScheme {
        url: names::redact_url(url),
        known: KNOWN_DESTINATIONS,
    })
}
