//! One handle on a component's tables, on SQLite or PostgreSQL: [`StateDb`].
//!
//! A component writes each statement once, in the SQL both databases read (`?1`, `?2` …
//! placeholders, `"user"` quoted, `CAST(… AS BIGINT)` around sums, `ON CONFLICT` rather than
//! `INSERT OR …`), passes its parameters as [`Val`]s and reads [`Row`]s back. On SQLite the
//! statement runs on the component's own connection; on PostgreSQL the placeholders become
//! `$1`, `$2` … and the statement runs on a connection owned by a thread of its own
//! ([`PgWorker`]), because the stores' methods are synchronous and are called from async code,
//! where blocking on another runtime would panic. Either way the caller's thread waits, as it
//! already does for SQLite's lock.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::{Component, MigrateError, StoreRef};

/// How long a SQLite statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One value of a parameter or a column: the four kinds the state store keeps (flags are
/// integers 0/1 on both databases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    /// NULL.
    Null,
    /// An integer (`INTEGER`, `BIGINT`).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (`BLOB`, `BYTEA`).
    Blob(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Val {
        Val::Blob(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// An array of [`Val`]s from values of any convertible types: `vals![name, now, None::<i64>]`.
#[macro_export]
macro_rules! vals {
    ($($v:expr),* $(,)?) => {
        [$($crate::db::Val::from($v)),*]
    };
}

impl Val {
    /// What kind of value it is, for messages (`NULL`, `an integer`, `text`, `bytes`).
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Null => "NULL",
            Val::Int(_) => "an integer",
            Val::Text(_) => "text",
            Val::Blob(_) => "bytes",
        }
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => R::Null,
            Val::Int(v) => R::Integer(*v),
            Val::Text(v) => R::Text(v.as_bytes()),
            Val::Blob(v) => R::Blob(v),
        }))
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Val::Text(v) => v.to_sql(ty, out),
            Val::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, where the value's kind is known.
        true
    }

    to_sql_checked!();
}

/// A row read back: its columns in the order the statement selected them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(Vec<Val>);

/// A Rust type a column reads into.
pub trait FromVal: Sized {
    /// The value as `Self`, or `None` when it is of another kind.
    fn from_val(v: &Val) -> Option<Self>;
    /// What `Self` expects, for messages.
    const EXPECTED: &'static str;
}

impl FromVal for i64 {
    fn from_val(v: &Val) -> Option<i64> {
        match v {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "an integer";
}
impl FromVal for bool {
    fn from_val(v: &Val) -> Option<bool> {
        i64::from_val(v).map(|i| i != 0)
    }
    const EXPECTED: &'static str = "a flag (0 or 1)";
}
impl FromVal for String {
    fn from_val(v: &Val) -> Option<String> {
        match v {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "text";
}
impl FromVal for Vec<u8> {
    fn from_val(v: &Val) -> Option<Vec<u8>> {
        match v {
            Val::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "bytes";
}
impl FromVal for Val {
    fn from_val(v: &Val) -> Option<Val> {
        Some(v.clone())
    }
    const EXPECTED: &'static str = "any value";
}
impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: &Val) -> Option<Option<T>> {
        match v {
            Val::Null => Some(None),
            other => T::from_val(other).map(Some),
        }
    }
    const EXPECTED: &'static str = T::EXPECTED;
}

impl Row {
    /// The first `N` columns as they are (NULL for columns the row does not have).
    pub fn into_array<const N: usize>(self) -> [Val; N] {
        let mut cols = self.0.into_iter();
        std::array::from_fn(|_| cols.next().unwrap_or(Val::Null))
    }

    /// Column `i` as `T`; a column of another kind is an error naming both.
    pub fn get<T: FromVal>(&self, i: usize) -> Result<T, DbError> {
        let v = self.0.get(i).unwrap_or(&Val::Null);
        T::from_val(v).ok_or_else(|| DbError::Type {
            column: i,
            found: v.kind(),
            expected: T::EXPECTED,
        })
    }
}

/// What kind of failure a [`DbError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A unique key or index refused the row.
    Unique,
    /// A foreign key refused the row (the row it names is missing).
    ForeignKey,
    /// The database cannot be reached, or its connection was lost.
    Unavailable,
    /// Anything else the database answered.
    Database,
}

/// A statement that failed, on either database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A column holds another kind of value than the code reads.
    #[error("column {column} holds {found}, where {expected} was expected")]
    Type {
        /// Its position in the statement's result.
        column: usize,
        /// What it holds.
        found: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// A PostgreSQL column type the state store never uses.
    #[error("column {column} has the PostgreSQL type {ty}, which the state store does not use")]
    PgType {
        /// Its position.
        column: usize,
        /// Its type's name.
        ty: String,
    },
    /// The PostgreSQL connection could not be opened.
    #[error("{0}")]
    Connect(String),
    /// The thread holding the PostgreSQL connection is gone (its connection failed).
    #[error("the connection to the PostgreSQL state store was lost; the statement was not run")]
    Gone,
    /// Bringing the component's tables up to date failed.
    #[error(transparent)]
    Migrate(Box<MigrateError>),
}

impl From<MigrateError> for DbError {
    fn from(e: MigrateError) -> Self {
        DbError::Migrate(Box::new(e))
    }
}

impl DbError {
    /// The kind, for branching.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                ErrorKind::Unique
            }
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
            {
                ErrorKind::ForeignKey
            }
            DbError::Postgres(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                ErrorKind::Unique
            }
            DbError::Postgres(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) =>
            {
                ErrorKind::ForeignKey
            }
            DbError::Postgres(e) if e.is_closed() || e.as_db_error().is_none() => {
                ErrorKind::Unavailable
            }
            DbError::Connect(_) | DbError::Gone => ErrorKind::Unavailable,
            _ => ErrorKind::Database,
        }
    }
}

/// `?1`, `?2` … (and bare `?`) as PostgreSQL's `$1`, `$2` …, outside quoted text.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let (mut in_text, mut in_ident, mut bare) = (false, false, 0);
    while let Some(c) = chars.next() {
        match c {
            '\'' if !in_ident => in_text = !in_text,
            '"' if !in_text => in_ident = !in_ident,
            '?' if !in_text && !in_ident => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    bare += 1;
                    out.push_str(&bare.to_string());
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Where a component's tables live.
#[derive(Clone, Debug)]
pub enum StateLocation {
    /// The SQLite file (`$XMBRIDGE_HOME/state.db`).
    File(PathBuf),
    /// A PostgreSQL database, through a connection thread shared by the components.
    Postgres(PgWorker),
}

impl StateLocation {
    /// The store, for messages.
    pub fn store(&self) -> StoreRef {
        match self {
            StateLocation::File(p) => StoreRef::File(p.clone()),
            StateLocation::Postgres(w) => StoreRef::Postgres(w.describe.clone()),
        }
    }
}

enum Backend {
    Sqlite(Mutex<Connection>, PathBuf),
    Postgres(PgWorker),
}

/// A component's handle on its tables. Statements on one handle run one at a time.
pub struct StateDb {
    backend: Backend,
    store: StoreRef,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb")
            .field("store", &self.store)
            .finish()
    }
}

/// Opens the SQLite state store at `path` as every component does (WAL, busy timeout, foreign
/// keys, `synchronous=NORMAL`), creating the file when missing.
pub fn open_sqlite(path: &Path) -> Result<Connection, rusqlite::Error> {
    open_sqlite_as(path, "NORMAL")
}

/// The same with `synchronous=FULL`: for what must survive a power cut, not only a process
/// kill (an acknowledged webhook in the outbox).
pub fn open_sqlite_durable(path: &Path) -> Result<Connection, rusqlite::Error> {
    open_sqlite_as(path, "FULL")
}

fn open_sqlite_as(path: &Path, synchronous: &str) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

impl StateDb {
    /// Opens `component`'s tables at `at`, bringing them to this build's version.
    pub fn open(at: &StateLocation, component: &'static Component) -> Result<StateDb, DbError> {
        let db = match at {
            StateLocation::File(path) => StateDb::from_sqlite(open_sqlite(path)?, path),
            StateLocation::Postgres(worker) => StateDb::on_postgres(worker),
        };
        db.migrate(component)?;
        Ok(db)
    }

    /// A handle on a SQLite connection opened by the caller (with its own settings), without
    /// migrating anything.
    pub fn from_sqlite(conn: Connection, path: &Path) -> StateDb {
        StateDb {
            backend: Backend::Sqlite(Mutex::new(conn), path.to_path_buf()),
            store: StoreRef::File(path.to_path_buf()),
        }
    }

    /// A handle on the PostgreSQL store of `worker`, without migrating anything.
    pub fn on_postgres(worker: &PgWorker) -> StateDb {
        StateDb {
            backend: Backend::Postgres(worker.clone()),
            store: StoreRef::Postgres(worker.describe.clone()),
        }
    }

    /// Brings `component`'s tables to this build's version ([`crate::migrate`],
    /// [`crate::pg::migrate`]); returns what it applied.
    pub fn migrate(&self, component: &'static Component) -> Result<Vec<crate::Applied>, DbError> {
        match &self.backend {
            Backend::Sqlite(conn, path) => Ok(crate::migrate(&mut conn.lock(), path, component)?),
            Backend::Postgres(worker) => {
                let describe = worker.describe.clone();
                worker.run(move |pg| {
                    pg.rt
                        .block_on(crate::pg::migrate(&mut pg.client, &describe, component))
                        .map_err(DbError::from)
                })?
            }
        }
    }

    /// The store, for messages.
    pub fn store(&self) -> &StoreRef {
        &self.store
    }

    /// Runs a statement on its own (no transaction around it); returns the rows it changed.
    pub fn exec(&self, sql: &str, params: &[Val]) -> Result<u64, DbError> {
        let (sql, params) = (sql.to_string(), params.to_vec());
        self.alone(move |t| t.exec(&sql, &params))
    }

    /// Runs a query on its own; returns its rows.
    pub fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
        let (sql, params) = (sql.to_string(), params.to_vec());
        self.alone(move |t| t.query(&sql, &params))
    }

    /// Runs a query on its own; returns its first row, if any.
    pub fn query_opt(&self, sql: &str, params: &[Val]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// One statement, no transaction: on SQLite no lock is taken before the statement needs
    /// one (readers never wait for the write lock), on PostgreSQL one round trip.
    fn alone<R>(
        &self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError>
    where
        R: Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(conn, _) => {
                let conn = conn.lock();
                work(&mut Tx {
                    on: On::Sqlite(&conn),
                })
            }
            Backend::Postgres(worker) => worker.run(move |pg| {
                let PgConn { rt, client } = pg;
                work(&mut Tx {
                    on: On::Postgres {
                        rt,
                        client: PgClient::Alone(client),
                    },
                })
            })?,
        }
    }

    /// Runs `work` in one transaction (on SQLite an immediate one: the write lock first), and
    /// commits when it returns `Ok`; an `Err` rolls everything back.
    pub fn tx<R, E>(
        &self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.transaction(TransactionBehavior::Immediate, work)
    }

    /// Runs reads in one snapshot (on SQLite a deferred transaction: no write lock, writers
    /// are not held up), for answers that must agree with each other.
    pub fn read<R, E>(
        &self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.transaction(TransactionBehavior::Deferred, work)
    }

    fn transaction<R, E>(
        &self,
        behavior: TransactionBehavior,
        work: impl FnOnce(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(conn, _) => {
                let mut conn = conn.lock();
                let tx = conn
                    .transaction_with_behavior(behavior)
                    .map_err(DbError::from)?;
                let out = work(&mut Tx {
                    on: On::Sqlite(&tx),
                })?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
            Backend::Postgres(worker) => worker
                .run(move |pg| {
                    let PgConn { rt, client } = pg;
                    let tx = rt.block_on(client.transaction()).map_err(DbError::from)?;
                    let out = work(&mut Tx {
                        on: On::Postgres {
                            rt,
                            client: PgClient::InTx(&tx),
                        },
                    })?;
                    rt.block_on(tx.commit()).map_err(DbError::from)?;
                    Ok(out)
                })
                .map_err(E::from)?,
        }
    }
}

/// Statements on a component's connection: inside a transaction ([`StateDb::tx`],
/// [`StateDb::read`]) or one at a time.
pub struct Tx<'a> {
    on: On<'a>,
}

enum On<'a> {
    Sqlite(&'a Connection),
    Postgres {
        rt: &'a tokio::runtime::Runtime,
        client: PgClient<'a>,
    },
}

enum PgClient<'a> {
    Alone(&'a tokio_postgres::Client),
    InTx(&'a tokio_postgres::Transaction<'a>),
}

impl PgClient<'_> {
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        match self {
            PgClient::Alone(c) => c.execute(sql, params).await,
            PgClient::InTx(t) => t.execute(sql, params).await,
        }
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        match self {
            PgClient::Alone(c) => c.query(sql, params).await,
            PgClient::InTx(t) => t.query(sql, params).await,
        }
    }
}

impl Tx<'_> {
    /// Runs a statement; returns the rows it changed.
    pub fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, DbError> {
        match &self.on {
            On::Sqlite(conn) => {
                let mut st = conn.prepare_cached(sql)?;
                Ok(st.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            On::Postgres { rt, client } => {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                Ok(rt.block_on(client.execute(to_postgres(sql).as_str(), &refs))?)
            }
        }
    }

    /// Runs a query; returns its rows.
    pub fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
        match &self.on {
            On::Sqlite(conn) => {
                let mut st = conn.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut vals = Vec::with_capacity(n);
                    for i in 0..n {
                        vals.push(match r.get_ref(i)? {
                            ValueRef::Null => Val::Null,
                            ValueRef::Integer(v) => Val::Int(v),
                            // The state store keeps no real numbers; a stray one reads as
                            // its integer part rather than failing a whole listing.
                            ValueRef::Real(v) => Val::Int(v as i64),
                            ValueRef::Text(v) => Val::Text(String::from_utf8_lossy(v).into_owned()),
                            ValueRef::Blob(v) => Val::Blob(v.to_vec()),
                        });
                    }
                    out.push(Row(vals));
                }
                Ok(out)
            }
            On::Postgres { rt, client } => {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                let rows = rt.block_on(client.query(to_postgres(sql).as_str(), &refs))?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// Runs a query; returns its first row, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Whether this runs on PostgreSQL: for the few clauses only it has
    /// (`FOR UPDATE SKIP LOCKED`).
    pub fn is_postgres(&self) -> bool {
        matches!(self.on, On::Postgres { .. })
    }

    /// Makes this transaction the only one of its kind on the store until it ends: on SQLite
    /// it already is (an immediate transaction holds the write lock); on PostgreSQL it takes
    /// the store's advisory lock ([`crate::pg::LOCK_KEY`]). For a first initialisation that two
    /// processes could otherwise both do; only inside [`StateDb::tx`].
    pub fn lock_store(&mut self) -> Result<(), DbError> {
        match self.on {
            On::Sqlite(_) => Ok(()),
            On::Postgres { .. } => self
                .exec(
                    "SELECT pg_advisory_xact_lock(?1)",
                    &[Val::Int(crate::pg::LOCK_KEY)],
                )
                .map(|_| ()),
        }
    }
}

fn pg_row(r: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut vals = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let ty = c.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Val::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Val::Int(i64::from(v)))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Val::Int(i64::from(v)))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Val::Int(i64::from(v)))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            r.try_get::<_, Option<String>>(i)?.map(Val::Text)
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Blob)
        } else {
            return Err(DbError::PgType {
                column: i,
                ty: ty.name().to_string(),
            });
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

/// The connection a [`PgWorker`]'s thread owns, with the runtime that drives it.
pub struct PgConn {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

type Job = Box<dyn FnOnce(&mut PgConn) + Send>;

/// Threads owning PostgreSQL connections (one each) and running the statements sent to them;
/// a job (a statement, or a whole transaction) runs on whichever thread is free. Cheap to
/// clone: clones share the threads; they end when the last clone is dropped.
#[derive(Clone)]
pub struct PgWorker {
    jobs: mpsc::Sender<Job>,
    describe: String,
}

impl std::fmt::Debug for PgWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWorker")
            .field("store", &self.describe)
            .finish()
    }
}

impl PgWorker {
    /// [`PgWorker::start_pool`] with one connection: what a command that does one thing at a
    /// time needs.
    pub fn start<F, Fut>(connect: F) -> Result<PgWorker, DbError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(tokio_postgres::Client, String), String>>,
    {
        PgWorker::start_pool(1, connect)
    }

    /// Starts `connections` threads (at least one), each connecting with `connect` on a runtime
    /// of its own (so the connection's task lives there); returns once all are connected, or
    /// with the reason one could not. `connect` answers the client and the store's name for
    /// messages (`postgres://user@host:port/db`, no password). A connection the server ended
    /// (a restart, a failover, an administrator) is opened again with `connect` before the
    /// thread's next job; the statements of a transaction it was in fail and roll back with it.
    pub fn start_pool<F, Fut>(connections: usize, connect: F) -> Result<PgWorker, DbError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(tokio_postgres::Client, String), String>>,
    {
        let connections = connections.max(1);
        let connect = std::sync::Arc::new(connect);
        let (jobs, inbox) = mpsc::channel::<Job>();
        // One waiting thread at a time holds the lock while it waits for the next job.
        let inbox = std::sync::Arc::new(Mutex::new(inbox));
        let (ready, connected) = mpsc::sync_channel::<Result<String, String>>(connections);
        for n in 0..connections {
            let (connect, inbox, ready) = (connect.clone(), inbox.clone(), ready.clone());
            std::thread::Builder::new()
                .name(format!("xmbridge-state-pg-{n}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready.send(Err(format!("cannot start its runtime: {e}")));
                            return;
                        }
                    };
                    let client = match rt.block_on(connect()) {
                        Ok((client, describe)) => {
                            let _ = ready.send(Ok(describe));
                            client
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    drop(ready);
                    let mut pg = PgConn { rt, client };
                    loop {
                        let next = inbox.lock().recv();
                        let Ok(job) = next else {
                            break;
                        };
                        if pg.client.is_closed() {
                            match pg.rt.block_on(connect()) {
                                Ok((client, describe)) => {
                                    tracing::info!(store = %describe, "connected to the PostgreSQL state store again");
                                    pg.client = client;
                                }
                                // The job fails on the closed connection and says so; the
                                // next one tries again.
                                Err(e) => {
                                    tracing::warn!(error = %e, "the PostgreSQL state store cannot be reached");
                                }
                            }
                        }
                        job(&mut pg);
                    }
                })
                .map_err(|e| DbError::Connect(format!("cannot start a thread: {e}")))?;
        }
        drop(ready);
        let mut describe = String::new();
        for _ in 0..connections {
            match connected.recv() {
                Ok(Ok(d)) => describe = d,
                Ok(Err(reason)) => return Err(DbError::Connect(reason)),
                Err(_) => return Err(DbError::Gone),
            }
        }
        Ok(PgWorker { jobs, describe })
    }

    /// The store, without its password.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Runs `work` on a free connection's thread and waits for its answer.
    pub fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgConn) -> R + Send + 'static,
    ) -> Result<R, DbError> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |pg| {
                let _ = answer.send(work(pg));
            }))
            .map_err(|_| DbError::Gone)?;
        answered.recv().map_err(|_| DbError::Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(to_postgres("VALUES (?, ?)"), "VALUES ($1, $2)");
        assert_eq!(
            to_postgres("SELECT '?1', \"w?\" FROM t WHERE x = ?2"),
            "SELECT '?1', \"w?\" FROM t WHERE x = $2"
        );
    }

    #[test]
    fn rows_read_typed_values_and_say_what_did_not_fit() {
        let row = Row(vec![
            Val::Int(3),
            Val::Null,
            Val::Text("x".into()),
            Val::Int(1),
        ]);
        assert_eq!(row.get::<i64>(0).expect("int"), 3);
        assert_eq!(row.get::<Option<String>>(1).expect("null"), None);
        assert_eq!(row.get::<String>(2).expect("text"), "x");
        assert!(row.get::<bool>(3).expect("flag"));
        let e = row.get::<i64>(2).expect_err("text is no integer");
        assert_eq!(
            e.to_string(),
            "column 2 holds text, where an integer was expected"
        );
    }

    static C: Component = Component {
        name: "t",
        migrations: &[crate::Migration {
            version: 1,
            name: "t",
            sqlite: "CREATE TABLE IF NOT EXISTS t_db (k TEXT PRIMARY KEY, n INTEGER)",
            postgres: "CREATE TABLE IF NOT EXISTS t_db (k TEXT PRIMARY KEY, n BIGINT)",
        }],
        tables: &["t_db"],
    };

    /// A handle on a PostgreSQL test database with a connection of its own.
    fn on_postgres(url: &str) -> StateDb {
        on_postgres_pool(url, 1)
    }

    /// The same with `connections` connections.
    fn on_postgres_pool(url: &str, connections: usize) -> StateDb {
        let url = url.to_string();
        let worker = PgWorker::start_pool(connections, move || {
            let url = url.clone();
            async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok((client, url))
            }
        })
        .expect("connects");
        StateDb::open(&StateLocation::Postgres(worker), &C).expect("open")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_transactions_holding_the_store_lock_take_turns() {
        let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_state_lock").await else {
            return;
        };
        let url = db.url().to_string();
        tokio::task::spawn_blocking(move || {
            let (first, second) = (on_postgres(&url), on_postgres(&url));
            let holder = std::thread::spawn(move || {
                first.tx(|tx| {
                    tx.lock_store()?;
                    tx.exec("INSERT INTO t_db (k, n) VALUES ('first', 1)", &[])?;
                    std::thread::sleep(Duration::from_millis(500));
                    Ok::<_, DbError>(())
                })
            });
            std::thread::sleep(Duration::from_millis(150));
            // Without the lock this would read before the first commits, and see nothing.
            let seen: i64 = second
                .tx(|tx| {
                    tx.lock_store()?;
                    tx.query_opt("SELECT COUNT(*) FROM t_db", &[])?
                        .map_or(Ok(0), |r| r.get(0))
                })
                .expect("second");
            holder.join().expect("thread").expect("first");
            assert_eq!(seen, 1, "the second waited for the first to commit");
            // A unique key's refusal is the same kind on PostgreSQL as on SQLite.
            let dup = second
                .exec("INSERT INTO t_db (k, n) VALUES ('first', 2)", &[])
                .expect_err("duplicate");
            assert_eq!(dup.kind(), ErrorKind::Unique);
            let row = second
                .query_opt(
                    "SELECT k, n, NULL::text FROM t_db WHERE k = ?1",
                    &vals!["first"],
                )
                .expect("query")
                .expect("row");
            assert_eq!(row.get::<String>(0).expect("k"), "first");
            assert_eq!(row.get::<i64>(1).expect("n"), 1);
            assert_eq!(row.get::<Option<String>>(2).expect("null"), None);
        })
        .await
        .expect("the check's thread");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_connection_the_server_ended_is_opened_again_for_the_next_statement() {
        let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_state_reconnect").await else {
            return;
        };
        let url = db.url().to_string();
        let name = db.name().to_string();
        let admin = db.client().await;
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let h = on_postgres(&url);
            h.exec("INSERT INTO t_db (k, n) VALUES ('a', 1)", &[])
                .expect("before");
            // What a server restart does to the session.
            let ended: u64 = runtime
                .block_on(admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                ))
                .expect("terminate");
            assert_eq!(ended, 1, "the handle's session was ended");
            // A statement may still meet the closed session; within a few seconds one runs on
            // a new connection.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let n: i64 = loop {
                match h.query_opt("SELECT n FROM t_db WHERE k = ?1", &vals!["a"]) {
                    Ok(row) => break row.expect("the row").get(0).expect("n"),
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("never connected again: {e}"),
                }
            };
            assert_eq!(n, 1);
        })
        .await
        .expect("the check's thread");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_pool_answers_while_one_of_its_connections_is_in_a_long_transaction() {
        let Some(db) = xmbridge_test_kit::pg::TestDb::create("xmb_state_pool").await else {
            return;
        };
        let url = db.url().to_string();
        tokio::task::spawn_blocking(move || {
            let handle = std::sync::Arc::new(on_postgres_pool(&url, 2));
            let busy = handle.clone();
            let holder = std::thread::spawn(move || {
                busy.tx(|tx| {
                    tx.exec("INSERT INTO t_db (k, n) VALUES ('held', 1)", &[])?;
                    std::thread::sleep(Duration::from_millis(900));
                    Ok::<_, DbError>(())
                })
            });
            std::thread::sleep(Duration::from_millis(150));
            let asked = std::time::Instant::now();
            let seen: i64 = handle
                .query_opt("SELECT COUNT(*) FROM t_db", &[])
                .expect("query")
                .expect("row")
                .get(0)
                .expect("count");
            let waited = asked.elapsed();
            holder
                .join()
                .expect("thread")
                .expect("the long transaction");
            // One connection would have made the query wait for the transaction (~750 ms).
            assert!(waited < Duration::from_millis(450), "waited {waited:?}");
            assert_eq!(seen, 0, "the uncommitted row is not seen");
        })
        .await
        .expect("the check's thread");
    }

    #[test]
    fn sqlite_transactions_commit_or_roll_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(&StateLocation::File(dir.path().join("s.db")), &C).expect("open");
        db.exec(
            "INSERT INTO t_db (k, n) VALUES (?1, ?2)",
            &vals!["a", 1_i64],
        )
        .expect("insert");
        let failed: Result<(), DbError> = db.tx(|t| {
            t.exec("UPDATE t_db SET n = 2", &[])?;
            t.exec("INSERT INTO t_db (k, n) VALUES ('a', 3)", &[])?;
            Ok(())
        });
        assert_eq!(failed.expect_err("duplicate").kind(), ErrorKind::Unique);
        let n: i64 = db
            .query_opt("SELECT n FROM t_db WHERE k = ?1", &vals!["a"])
            .expect("query")
            .expect("row")
            .get(0)
            .expect("n");
        assert_eq!(n, 1, "the update rolled back with the failed insert");
    }
}
