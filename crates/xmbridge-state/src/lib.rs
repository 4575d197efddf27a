//! Versioned schema migrations of the state store (`$XMBRIDGE_HOME/state.db`, or a PostgreSQL
//! database: [`pg`]), and copying a SQLite state store into PostgreSQL ([`copy`]).
//!
//! Each component that keeps tables in the state store (the vault, the workflow store, the
//! service's users, sync runs and sync configuration) declares them as a [`Component`]: a name
//! and its [`Migration`]s, numbered from 1. Opening the component calls [`migrate`], which
//! records every applied migration in `state_migrations (component, version, name, applied_at)`
//! and applies the missing ones in order, in one `BEGIN IMMEDIATE` transaction: several
//! processes starting at once queue on SQLite's write lock, and the ones after the first find
//! nothing left to do. A store whose component is at a version this build does not know is
//! refused ([`MigrateError::TooNew`], naming both versions), never used half-understood.
//!
//! Version 1 of every component is the tables as they were before versioning, written with
//! `IF NOT EXISTS`, so a state store made by an older xmbridge adopts version 1 unchanged.
//!
//! Each migration is written twice, for SQLite and for PostgreSQL, with the same tables and
//! column names on both (integers are `BIGINT`, blobs `BYTEA`; the column `user` is quoted,
//! a reserved word in PostgreSQL), so that rows copy column by column.
//!
//! It owns the `state_migrations` table; it must not hold any component's tables or data (each
//! component owns its own migrations).

#![warn(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};

pub mod copy;
pub mod db;
pub mod pg;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

/// One schema change of a component.
#[derive(Debug)]
pub struct Migration {
    /// 1, 2, 3 … in the order they apply.
    pub version: u32,
    /// What it does, in a few words (`"tables"`, `"lease tokens"`).
    pub name: &'static str,
    /// The SQLite statements.
    pub sqlite: &'static str,
    /// The same change in PostgreSQL's dialect: the same tables and columns.
    pub postgres: &'static str,
}

/// A component's tables in the state store, as migrations.
#[derive(Debug)]
pub struct Component {
    /// Its name in `state_migrations` (`vault`, `workflows`, …); never renamed.
    pub name: &'static str,
    /// Its migrations, versions 1, 2, 3 … without gaps.
    pub migrations: &'static [Migration],
    /// Its tables at the latest version, each after the tables its foreign keys name (the
    /// order `state copy` fills them in).
    pub tables: &'static [&'static str],
}

impl Component {
    /// The newest version this build knows.
    pub fn latest(&self) -> u32 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}

/// Which state store a message is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreRef {
    /// The SQLite file.
    File(PathBuf),
    /// A PostgreSQL database, described without its password (`postgres://user@host:port/db`).
    Postgres(String),
}

impl StoreRef {
    /// What a user does to use another store instead.
    pub fn elsewhere(&self) -> &'static str {
        match self {
            StoreRef::File(_) => "point XMBRIDGE_HOME at another installation",
            StoreRef::Postgres(_) => "point --state (XMBRIDGE_STATE) at another database",
        }
    }
}

impl fmt::Display for StoreRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreRef::File(path) => write!(f, "{}", path.display()),
            StoreRef::Postgres(describe) => f.write_str(describe),
        }
    }
}

/// What kind of failure a [`MigrateError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store was written by a newer xmbridge.
    TooNew,
    /// The database failed (locked too long, disk full, damaged file, a migration's SQL).
    Database,
}

/// Why the state store's schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The store holds a component at a version this build does not know.
    #[error(
        "the state store {store} has the {component} tables at schema version {found}, but this xmbridge ({binary}) knows versions up to {supported}; run a newer xmbridge (every process using this state store must know version {found}), or {}", store.elsewhere()
    )]
    TooNew {
        /// The state store.
        store: StoreRef,
        /// The component.
        component: &'static str,
        /// The version in the store.
        found: i64,
        /// The newest version this build knows.
        supported: u32,
        /// This build's version (`CARGO_PKG_VERSION` of the state crate, which is the
        /// workspace's).
        binary: &'static str,
    },
    /// A migration, or reading which ones were applied, failed.
    #[error(
        "the state store {path} could not be brought up to date ({doing}): {source}; check free disk space and file permissions, and that no other program holds it locked"
    )]
    Database {
        /// The state store.
        path: PathBuf,
        /// What was being done (`applying workflows version 2 (lease tokens)`).
        doing: String,
        /// The database error.
        #[source]
        source: rusqlite::Error,
    },
    /// The same, on a PostgreSQL state store.
    #[error(
        "the state store {store} could not be brought up to date ({doing}): {}; check that the server is up and that its user may create tables in the database",
        pg::describe(source)
    )]
    Postgres {
        /// The database, without its password.
        store: String,
        /// What was being done.
        doing: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl MigrateError {
    /// The kind, for branching.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MigrateError::TooNew { .. } => ErrorKind::TooNew,
            MigrateError::Database { .. } | MigrateError::Postgres { .. } => ErrorKind::Database,
        }
    }
}

/// One row of `state_migrations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The component.
    pub component: String,
    /// The migration's version.
    pub version: i64,
    /// The migration's name.
    pub name: String,
    /// When it was applied, epoch milliseconds UTC.
    pub applied_at_ms: i64,
}

const TABLE: &str = "CREATE TABLE IF NOT EXISTS state_migrations (
    component  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)";

/// Brings `component`'s tables in the store at `path` (open as `conn`) up to this build's
/// version; returns the migrations it applied (none when the store was up to date).
pub fn migrate(
    conn: &mut Connection,
    path: &Path,
    component: &Component,
) -> Result<Vec<Applied>, MigrateError> {
    let db = |doing: String| {
        let path = path.to_path_buf();
        move |source| MigrateError::Database {
            path,
            doing,
            source,
        }
    };
    // Most opens find the store up to date: read first, and take the write lock only when
    // something is missing.
    if let Some(found) = current(conn, component.name).map_err(db("reading its versions".into()))?
        && check(found, &StoreRef::File(path.to_path_buf()), component)? == component.latest()
    {
        return Ok(Vec::new());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("taking the write lock".into()))?;
    tx.execute_batch(TABLE)
        .map_err(db("creating state_migrations".into()))?;
    let found = current(&tx, component.name)
        .map_err(db("reading its versions".into()))?
        .unwrap_or(0);
    let from = check(found, &StoreRef::File(path.to_path_buf()), component)?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut applied = Vec::new();
    for m in component.migrations.iter().filter(|m| m.version > from) {
        let doing = || {
            format!(
                "applying {} version {} ({})",
                component.name, m.version, m.name
            )
        };
        tx.execute_batch(m.sqlite).map_err(db(doing()))?;
        tx.execute(
            "INSERT INTO state_migrations (component, version, name, applied_at) VALUES (?1, ?2, ?3, ?4)",
            params![component.name, m.version, m.name, now],
        )
        .map_err(db(doing()))?;
        applied.push(Applied {
            component: component.name.to_string(),
            version: i64::from(m.version),
            name: m.name.to_string(),
            applied_at_ms: now,
        });
    }
    tx.commit().map_err(db("committing".into()))?;
    Ok(applied)
}

/// Every applied migration of every component, in component and version order (empty for a
/// store that has none yet).
pub fn applied(conn: &Connection, path: &Path) -> Result<Vec<Applied>, MigrateError> {
    let db = |source| MigrateError::Database {
        path: path.to_path_buf(),
        doing: "reading state_migrations".into(),
        source,
    };
    if !has_table(conn).map_err(db)? {
        return Ok(Vec::new());
    }
    let mut st = conn
        .prepare(
            "SELECT component, version, name, applied_at FROM state_migrations ORDER BY component, version",
        )
        .map_err(db)?;
    let rows = st
        .query_map([], |r| {
            Ok(Applied {
                component: r.get(0)?,
                version: r.get(1)?,
                name: r.get(2)?,
                applied_at_ms: r.get(3)?,
            })
        })
        .map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state_migrations'",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// The component's version in the store; `None` before its first migration.
fn current(conn: &Connection, component: &str) -> rusqlite::Result<Option<i64>> {
    if !has_table(conn)? {
        return Ok(None);
    }
    conn.query_row(
        "SELECT MAX(version) FROM state_migrations WHERE component = ?1",
        [component],
        |r| r.get::<_, Option<i64>>(0),
    )
}

/// Refuses a store (described by its `applied` migrations) that holds any of `components` at a
/// version this build does not know; for looking without migrating (`state copy --dry-run`).
pub fn refuse_newer(
    applied: &[Applied],
    store: &StoreRef,
    components: &[&Component],
) -> Result<(), MigrateError> {
    for c in components {
        if let Some(found) = applied
            .iter()
            .filter(|a| a.component == c.name)
            .map(|a| a.version)
            .max()
        {
            check(found, store, c)?;
        }
    }
    Ok(())
}

/// `found`, refused when newer than this build knows.
fn check(found: i64, store: &StoreRef, component: &Component) -> Result<u32, MigrateError> {
    match u32::try_from(found) {
        Ok(v) if v <= component.latest() => Ok(v),
        _ => Err(MigrateError::TooNew {
            store: store.clone(),
            component: component.name,
            found,
            supported: component.latest(),
            binary: env!("CARGO_PKG_VERSION"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: Migration = Migration {
        version: 1,
        name: "tables",
        sqlite: "CREATE TABLE IF NOT EXISTS t_one (a TEXT PRIMARY KEY)",
        postgres: "CREATE TABLE IF NOT EXISTS t_one (a TEXT PRIMARY KEY)",
    };
    const V2: Migration = Migration {
        version: 2,
        name: "a column",
        sqlite: "ALTER TABLE t_one ADD COLUMN b INTEGER NOT NULL DEFAULT 0",
        postgres: "ALTER TABLE t_one ADD COLUMN b BIGINT NOT NULL DEFAULT 0",
    };
    static ONE: Component = Component {
        name: "one",
        migrations: &[V1],
        tables: &["t_one"],
    };
    static TWO: Component = Component {
        name: "one",
        migrations: &[V1, V2],
        tables: &["t_one"],
    };

    fn open(dir: &tempfile::TempDir) -> (Connection, PathBuf) {
        let path = dir.path().join("state.db");
        (Connection::open(&path).expect("open"), path)
    }

    #[test]
    fn applies_in_order_once_and_records_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut conn, path) = open(&dir);
        let first = migrate(&mut conn, &path, &ONE).expect("v1");
        assert_eq!(first.len(), 1);
        assert!(migrate(&mut conn, &path, &ONE).expect("again").is_empty());
        let second = migrate(&mut conn, &path, &TWO).expect("v2");
        assert_eq!(
            second.iter().map(|a| a.version).collect::<Vec<_>>(),
            vec![2]
        );
        conn.execute("INSERT INTO t_one (a, b) VALUES ('x', 1)", [])
            .expect("v2's column is there");
        let all = applied(&conn, &path).expect("applied");
        assert_eq!(
            all.iter()
                .map(|a| (a.component.as_str(), a.version, a.name.as_str()))
                .collect::<Vec<_>>(),
            vec![("one", 1, "tables"), ("one", 2, "a column")]
        );
    }

    #[test]
    fn a_newer_store_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut conn, path) = open(&dir);
        migrate(&mut conn, &path, &TWO).expect("v2");
        let e = migrate(&mut conn, &path, &ONE).expect_err("too new");
        assert_eq!(e.kind(), ErrorKind::TooNew);
        let text = e.to_string();
        assert!(text.contains("schema version 2"), "{text}");
        assert!(text.contains("versions up to 1"), "{text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    }

    #[test]
    fn a_failed_migration_leaves_nothing_half_done() {
        static BAD: Component = Component {
            name: "one",
            migrations: &[
                V1,
                Migration {
                    version: 2,
                    name: "broken",
                    sqlite: "CREATE TABLE t_two (a TEXT); THIS IS NOT SQL",
                    postgres: "CREATE TABLE t_two (a TEXT); THIS IS NOT SQL",
                },
            ],
            tables: &["t_one", "t_two"],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut conn, path) = open(&dir);
        let e = migrate(&mut conn, &path, &BAD).expect_err("broken");
        assert_eq!(e.kind(), ErrorKind::Database);
        assert!(
            e.to_string().contains("applying one version 2 (broken)"),
            "{e}"
        );
        assert!(applied(&conn, &path).expect("applied").is_empty());
        let t_two: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 't_two'",
                [],
                |r| r.get(0),
            )
            .optional()
            .expect("read");
        assert_eq!(t_two, None, "the transaction rolled back");
    }

    #[test]
    fn processes_starting_at_once_apply_each_migration_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut conn = Connection::open(&path).expect("open");
                    conn.busy_timeout(std::time::Duration::from_secs(10))
                        .expect("busy timeout");
                    migrate(&mut conn, &path, &TWO).expect("migrate").len()
                })
            })
            .collect();
        let applied_by_each: Vec<usize> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(
            applied_by_each.iter().sum::<usize>(),
            2,
            "{applied_by_each:?}"
        );
        let conn = Connection::open(&path).expect("open");
        assert_eq!(applied(&conn, &path).expect("applied").len(), 2);
    }
}
