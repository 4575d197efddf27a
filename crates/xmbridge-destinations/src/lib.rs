//! Destination writers: SQLite (the embedded default) and PostgreSQL (Parquet later).
//!
//! It owns schema creation and evolution, batched writes (prepared statements in large
//! transactions on SQLite; binary COPY into a staging table and one merge per batch on
//! PostgreSQL), and the transaction that commits a batch together with its sync cursors, so a
//! killed sync resumes with nothing lost and nothing doubled. Identifiers that come from survey
//! content are always quoted, never spliced into SQL. It must not know about Qualtrics or its API:
//! it receives table specs, typed rows and cursors from `xmbridge-sync`.
//!
//! The contract below is shared with `xmbridge-sync`; a destination is one file implementing
//! [`Destination`] plus one line in the registry of [`open`].

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so that [`Destination`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Column types of `shared/schema.md`.
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
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// One destination table (without the system columns, which the destination adds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub columns: Vec<Column>,
    /// Names of the primary-key columns (for `question_response` the system `<p>_id` column,
    /// named here as `"<p>_id"` literally; the destination substitutes the prefix).
    pub primary_key: Vec<String>,
    /// Rows that disappear upstream are kept with `<p>_deleted = true`.
    pub soft_delete: bool,
}

/// One cell. Timestamps are epoch milliseconds, UTC.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(i64),
    Json(String),
}

/// System column prefix: `_xmbridge` by default, `_fivetran` with `--compat fivetran`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compat {
    #[default]
    Xmbridge,
    Fivetran,
}

impl Compat {
    pub fn prefix(self) -> &'static str {
        match self {
            Compat::Xmbridge => "_xmbridge",
            Compat::Fivetran => "_fivetran",
        }
    }
}

/// Rows for one table; each row holds one value per column of its [`TableSpec`], in order.
#[derive(Clone, Debug, Default)]
pub struct TableBatch {
    pub table: String,
    /// Insert or update by primary key.
    pub upserts: Vec<Vec<Value>>,
    /// Remove (hard delete) rows whose `column` equals one of `values` — e.g. the answer rows of
    /// responses deleted upstream, or of a response about to be rewritten.
    pub delete_where: Vec<(String, Vec<Value>)>,
}

/// After a full read of a soft-delete table (optionally limited to rows where `scope` matches),
/// mark every row not written by this sync (`<p>_synced` older than the commit's `synced_at_ms`)
/// as deleted.
#[derive(Clone, Debug)]
pub struct MarkUnseenDeleted {
    pub table: String,
    pub scope: Vec<(String, Value)>,
}

/// One destination transaction: all batches and the cursors they advance, or nothing.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// The sync run's time, written into `<p>_synced`.
    pub synced_at_ms: i64,
    pub batches: Vec<TableBatch>,
    pub mark_unseen_deleted: Vec<MarkUnseenDeleted>,
    /// Stream cursors committed with the rows (stream name → opaque JSON).
    pub cursors: Vec<(String, serde_json::Value)>,
}

/// What a commit changed, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// table → (inserted, updated, deleted)
    pub tables: Vec<(String, u64, u64, u64)>,
}

/// Why a destination call failed; messages name the table (and column) and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestError {
    #[error("{0}")]
    Other(String),
}

/// A place synced tables are written to.
pub trait Destination: Send {
    /// Creates missing tables and adds missing columns (never drops); a column whose type
    /// differs from the spec is an error naming table, column, both types and the fix.
    fn ensure_tables<'a>(
        &'a mut self,
        specs: &'a [TableSpec],
    ) -> BoxFuture<'a, Result<(), DestError>>;

    /// The committed cursor of a stream, if any.
    fn cursor<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, DestError>>;

    /// Applies a [`Commit`] atomically.
    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>>;

    /// `sqlite:PATH (prefix qualtrics_)`, `postgres://host/db (schema qualtrics)` — no secret.
    fn describe(&self) -> String;
}
