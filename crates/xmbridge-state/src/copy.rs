//! Copying a SQLite state store into a PostgreSQL one that holds no rows yet.
//!
//! Both stores must be at the same schema versions (the caller migrates both first); the tables
//! then have the same columns, which is checked table by table before anything is written.
//! The rows are read from one SQLite read transaction (one consistent snapshot) and written
//! with binary `COPY` inside one PostgreSQL transaction, which also holds the migration lock
//! ([`crate::pg::LOCK_KEY`]): the copy lands whole or not at all, and two copies into one
//! database cannot interleave. Every value keeps its type: an integer stays an integer, a blob
//! a blob; a value of another type than its column's is refused, naming the row, never
//! converted. Sealed secrets are copied as they are, still sealed with the installation's
//! master key, which never enters a database.

use std::path::{Path, PathBuf};

use futures_util::pin_mut;
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use crate::pg::{LOCK_KEY, describe, table_exists};
use crate::{Component, MigrateError};

/// Rows read from SQLite per query (keyset pages on `rowid`): memory stays flat for any size.
const PAGE: i64 = 2_000;

/// One table and its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRows {
    /// The component that owns it.
    pub component: &'static str,
    /// The table.
    pub table: &'static str,
    /// Its rows (in the source: what a copy takes; in the target: what it holds, `None` when the
    /// table does not exist yet).
    pub rows: Option<u64>,
}

/// What kind of failure a [`CopyError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The target already holds rows: nothing was written.
    NotEmpty,
    /// The two stores' tables differ, or a value has the wrong type: nothing was written.
    Mismatch,
    /// Reading the source or writing the target failed: nothing was written.
    Database,
}

/// Why a copy did not happen. Nothing is ever half-copied: every error rolls the target back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The target holds rows already.
    #[error(
        "the state store {store} already holds {rows} row(s) in {table}; copy only into a database whose xmbridge tables are empty (a new database), so that nothing is merged or overwritten"
    )]
    NotEmpty {
        /// The target, without its password.
        store: String,
        /// The first table found with rows.
        table: &'static str,
        /// Its rows.
        rows: i64,
    },
    /// A table's columns differ between the stores.
    #[error(
        "the table {table} differs between {from} and {store}: {detail}; run `xmbridge state migrate` on both with the same xmbridge, then copy again"
    )]
    Columns {
        /// The source.
        from: PathBuf,
        /// The target, without its password.
        store: String,
        /// The table.
        table: &'static str,
        /// What differs.
        detail: String,
    },
    /// The source has tables no component declares: copying without them would lose rows.
    #[error(
        "{from} has tables that no component of this xmbridge declares ({}), so a copy would leave them behind; nothing was copied: run the copy with the xmbridge that made them", tables.join(", ")
    )]
    Undeclared {
        /// The source.
        from: PathBuf,
        /// The tables.
        tables: Vec<String>,
    },
    /// A source value does not fit its column's type.
    #[error(
        "row {rowid} of {table} in {from} holds {found} in the column {column}, which is {expected}; the state store was changed outside xmbridge: fix or delete that row, then copy again"
    )]
    Value {
        /// The source.
        from: PathBuf,
        /// The table.
        table: &'static str,
        /// The column.
        column: String,
        /// The row's SQLite rowid.
        rowid: i64,
        /// What the value is (`text`, `a blob`, …).
        found: &'static str,
        /// What the column keeps.
        expected: &'static str,
    },
    /// Reading the source failed.
    #[error("cannot read {table} from {from}: {source}")]
    Source {
        /// The source.
        from: PathBuf,
        /// The table being read.
        table: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Writing the target failed.
    #[error("cannot copy into {store} ({doing}): {}", describe(source))]
    Target {
        /// The target, without its password.
        store: String,
        /// What was being done.
        doing: String,
        /// The PostgreSQL error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The rows written differ in number from the rows read (never expected; the transaction
    /// is rolled back).
    #[error(
        "{table}: {read} row(s) in {from} but {written} written to {store}; nothing was copied"
    )]
    Count {
        /// The source.
        from: PathBuf,
        /// The target.
        store: String,
        /// The table.
        table: &'static str,
        /// Rows in the source snapshot.
        read: u64,
        /// Rows `COPY` reported.
        written: u64,
    },
    /// Bringing a store's schema up to date failed.
    #[error(transparent)]
    Migrate(Box<MigrateError>),
}

impl From<MigrateError> for CopyError {
    fn from(e: MigrateError) -> Self {
        CopyError::Migrate(Box::new(e))
    }
}

impl CopyError {
    /// The kind, for branching.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CopyError::NotEmpty { .. } => ErrorKind::NotEmpty,
            CopyError::Columns { .. } | CopyError::Value { .. } | CopyError::Undeclared { .. } => {
                ErrorKind::Mismatch
            }
            CopyError::Source { .. }
            | CopyError::Target { .. }
            | CopyError::Count { .. }
            | CopyError::Migrate(_) => ErrorKind::Database,
        }
    }
}

fn source_err(from: &Path, table: &str) -> impl FnOnce(rusqlite::Error) -> CopyError {
    let from = from.to_path_buf();
    let table = table.to_string();
    move |source| CopyError::Source {
        from,
        table,
        source,
    }
}

fn target_err(store: &str, doing: String) -> impl FnOnce(tokio_postgres::Error) -> CopyError {
    let store = store.to_string();
    move |source| CopyError::Target {
        store,
        doing,
        source,
    }
}

fn sqlite_table_exists(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Rows per table in the SQLite store (`None` for a table it does not have yet); a table that
/// none of `components` declares is refused ([`CopyError::Undeclared`]).
pub fn source_rows(
    conn: &Connection,
    from: &Path,
    components: &[&'static Component],
) -> Result<Vec<TableRows>, CopyError> {
    let present: Vec<String> = {
        let mut st = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> 'state_migrations' ORDER BY name",
            )
            .map_err(source_err(from, "sqlite_master"))?;
        st.query_map([], |r| r.get(0))
            .map_err(source_err(from, "sqlite_master"))?
            .collect::<Result<_, _>>()
            .map_err(source_err(from, "sqlite_master"))?
    };
    let undeclared: Vec<String> = present
        .into_iter()
        .filter(|t| !components.iter().any(|c| c.tables.contains(&t.as_str())))
        .collect();
    if !undeclared.is_empty() {
        return Err(CopyError::Undeclared {
            from: from.to_path_buf(),
            tables: undeclared,
        });
    }
    let mut out = Vec::new();
    for c in components {
        for &table in c.tables {
            let rows = if sqlite_table_exists(conn, table).map_err(source_err(from, table))? {
                let n: i64 = conn
                    .query_row(&format!("SELECT COUNT(*) FROM {}", quote(table)), [], |r| {
                        r.get(0)
                    })
                    .map_err(source_err(from, table))?;
                Some(n.unsigned_abs())
            } else {
                None
            };
            out.push(TableRows {
                component: c.name,
                table,
                rows,
            });
        }
    }
    Ok(out)
}

/// Rows per table in the PostgreSQL store (`None` for a table it does not have yet).
pub async fn target_rows(
    client: &impl GenericClient,
    store: &str,
    components: &[&'static Component],
) -> Result<Vec<TableRows>, CopyError> {
    let mut out = Vec::new();
    for c in components {
        for &table in c.tables {
            let doing = || format!("counting the rows of {table}");
            let rows = if table_exists(client, table)
                .await
                .map_err(target_err(store, doing()))?
            {
                let n: i64 = client
                    .query_one(&format!("SELECT COUNT(*) FROM {}", quote(table)), &[])
                    .await
                    .map_err(target_err(store, doing()))?
                    .get(0);
                Some(n.unsigned_abs())
            } else {
                None
            };
            out.push(TableRows {
                component: c.name,
                table,
                rows,
            });
        }
    }
    Ok(out)
}

/// A column of the target table.
struct Column {
    name: String,
    ty: Type,
    identity: bool,
}

async fn target_columns(
    client: &impl GenericClient,
    store: &str,
    table: &str,
) -> Result<Vec<Column>, CopyError> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text, is_identity::text
               FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = $1
              ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .map_err(target_err(store, format!("reading the columns of {table}")))?;
    Ok(rows
        .iter()
        .map(|r| {
            let data_type: String = r.get(1);
            Column {
                name: r.get(0),
                ty: match data_type.as_str() {
                    "bigint" => Type::INT8,
                    "text" => Type::TEXT,
                    "bytea" => Type::BYTEA,
                    // Refused by the column check below, with the type named.
                    _ => Type::UNKNOWN,
                },
                identity: r.get::<_, String>(2) == "YES",
            }
        })
        .collect())
}

fn sqlite_columns(conn: &Connection, from: &Path, table: &str) -> Result<Vec<String>, CopyError> {
    let mut st = conn
        .prepare(&format!("PRAGMA table_info({})", quote(table)))
        .map_err(source_err(from, table))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(1))
        .map_err(source_err(from, table))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(source_err(from, table))?;
    Ok(names)
}

/// One value on its way to `COPY`.
enum Cell {
    /// NULL of the column's type (`COPY` checks the type of NULLs too).
    Null(Type),
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Null(t) if *t == Type::TEXT => &None::<String>,
            Cell::Null(t) if *t == Type::BYTEA => &None::<Vec<u8>>,
            Cell::Null(_) => &None::<i64>,
            Cell::Int(v) => v,
            Cell::Text(v) => v,
            Cell::Bytes(v) => v,
        }
    }
}

fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

/// Copies every table of `components` from the SQLite store `src` (at `from`) into the empty
/// PostgreSQL store `client` is connected to; both must already be at this build's schema
/// versions. Returns the rows copied per table, each checked against the source's count.
pub async fn copy(
    src: &Connection,
    from: &Path,
    client: &mut Client,
    store: &str,
    components: &[&'static Component],
) -> Result<Vec<TableRows>, CopyError> {
    // One snapshot of the source for every table, released (never committed: it writes
    // nothing) when this function returns.
    let snapshot = src
        .unchecked_transaction()
        .map_err(source_err(from, "(snapshot)"))?;
    let counts = source_rows(&snapshot, from, components)?;
    let tx = client
        .transaction()
        .await
        .map_err(target_err(store, "starting a transaction".into()))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(target_err(store, "taking the state store's lock".into()))?;
    // Every table is checked before any row moves.
    let mut plans = Vec::new();
    for count in &counts {
        let table = count.table;
        let columns = target_columns(&tx, store, table).await?;
        let mismatch = |detail: String| CopyError::Columns {
            from: from.to_path_buf(),
            store: store.to_string(),
            table,
            detail,
        };
        if columns.is_empty() {
            return Err(mismatch(format!("{store} has no table {table}")));
        }
        if let Some(c) = columns.iter().find(|c| c.ty == Type::UNKNOWN) {
            return Err(mismatch(format!(
                "its column {} has a type xmbridge does not write",
                c.name
            )));
        }
        let mut theirs: Vec<String> = match count.rows {
            Some(_) => sqlite_columns(&snapshot, from, table)?,
            None => Vec::new(),
        };
        let mut ours: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        if count.rows.is_some() {
            theirs.sort();
            ours.sort();
            if theirs != ours {
                return Err(mismatch(format!(
                    "columns ({}) in the source, ({}) in the target",
                    theirs.join(", "),
                    ours.join(", ")
                )));
            }
        }
        let held: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {}", quote(table)), &[])
            .await
            .map_err(target_err(store, format!("counting the rows of {table}")))?
            .get(0);
        if held > 0 {
            return Err(CopyError::NotEmpty {
                store: store.to_string(),
                table,
                rows: held,
            });
        }
        plans.push((count, columns));
    }
    let mut copied = Vec::new();
    for (count, columns) in plans {
        let table = count.table;
        let read = count.rows.unwrap_or(0);
        let written = if read == 0 {
            0
        } else {
            copy_table(&snapshot, from, &tx, store, table, &columns).await?
        };
        if written != read {
            return Err(CopyError::Count {
                from: from.to_path_buf(),
                store: store.to_string(),
                table,
                read,
                written,
            });
        }
        // An identity column continues after the copied ids.
        for c in columns.iter().filter(|c| c.identity) {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({col}), 0) + 1, false) FROM {t}",
                col = quote(&c.name),
                t = quote(table)
            );
            tx.query_one(&sql, &[&table, &c.name])
                .await
                .map_err(target_err(
                    store,
                    format!("continuing the ids of {table}.{}", c.name),
                ))?;
        }
        copied.push(TableRows {
            component: count.component,
            table,
            rows: Some(written),
        });
    }
    tx.commit()
        .await
        .map_err(target_err(store, "committing".into()))?;
    drop(snapshot);
    Ok(copied)
}

/// Streams one table's rows with binary `COPY`, a page of rows at a time; returns the rows
/// written.
async fn copy_table(
    src: &Connection,
    from: &Path,
    tx: &tokio_postgres::Transaction<'_>,
    store: &str,
    table: &'static str,
    columns: &[Column],
) -> Result<u64, CopyError> {
    let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    let types: Vec<Type> = columns.iter().map(|c| c.ty.clone()).collect();
    let doing = || format!("writing {table}");
    let sink = tx
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN BINARY",
            quote(table),
            names.join(", ")
        ))
        .await
        .map_err(target_err(store, doing()))?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let select = format!(
        "SELECT rowid, {} FROM {} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        names.join(", "),
        quote(table)
    );
    let mut after = i64::MIN;
    loop {
        let page = read_page(src, from, &select, table, columns, after)?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        after = last;
        for (_, cells) in &page {
            let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::as_sql).collect();
            writer
                .as_mut()
                .write(&values)
                .await
                .map_err(target_err(store, doing()))?;
        }
    }
    writer.finish().await.map_err(target_err(store, doing()))
}

fn read_page(
    src: &Connection,
    from: &Path,
    select: &str,
    table: &'static str,
    columns: &[Column],
    after: i64,
) -> Result<Vec<(i64, Vec<Cell>)>, CopyError> {
    let mut st = src
        .prepare_cached(select)
        .map_err(source_err(from, table))?;
    let mut rows = st
        .query(rusqlite::params![after, PAGE])
        .map_err(source_err(from, table))?;
    let mut page = Vec::new();
    while let Some(row) = rows.next().map_err(source_err(from, table))? {
        let rowid: i64 = row.get(0).map_err(source_err(from, table))?;
        let mut cells = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let value = row.get_ref(i + 1).map_err(source_err(from, table))?;
            let wrong = |expected: &'static str| CopyError::Value {
                from: from.to_path_buf(),
                table,
                column: column.name.clone(),
                rowid,
                found: type_name(value),
                expected,
            };
            cells.push(match (&column.ty, value) {
                (t, ValueRef::Null) => Cell::Null(t.clone()),
                (t, ValueRef::Integer(v)) if *t == Type::INT8 => Cell::Int(v),
                (t, ValueRef::Text(v)) if *t == Type::TEXT => {
                    Cell::Text(String::from_utf8(v.to_vec()).map_err(|_| wrong("UTF-8 text"))?)
                }
                (t, ValueRef::Blob(v)) if *t == Type::BYTEA => Cell::Bytes(v.to_vec()),
                (t, _) if *t == Type::INT8 => return Err(wrong("an integer")),
                (t, _) if *t == Type::TEXT => return Err(wrong("text")),
                _ => return Err(wrong("a blob")),
            });
        }
        page.push((rowid, cells));
    }
    Ok(page)
}
