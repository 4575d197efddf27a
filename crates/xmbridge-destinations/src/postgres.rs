//! The PostgreSQL destination (`postgres://…` / `postgresql://…`, tokio-postgres over rustls).
//!
//! Choices (also in `docs/destinations.md`):
//! - [`connect`] takes the password from [`DestinationSettings`] (never from the URL) and does
//!   TLS per `sslmode` (the `pgtls` module); connection errors say what failed (TLS, certificate,
//!   password and where it came from) and what to do.
//! - One sync at a time per schema: opening takes a session-level advisory lock keyed on the
//!   schema name (`pg_advisory_lock(hashtextextended('xmbridge destination schema <s>', 0))`),
//!   waiting up to [`LOCK_WAIT`], else [`DestError::Busy`] naming the holder's session. The
//!   server drops it when the session ends, so a killed sync never leaves it behind.
//! - A run opened with a [`Fence`] names its sessions `xmbridge fence <scope hash> <token>`,
//!   claims the schema in `<schema>.<p>_fence` before it takes the lock (refused when a higher
//!   token is recorded), then ends the sessions of runs of the same scope with lower tokens
//!   (`pg_terminate_backend`: a frozen process's locks and open transaction go with them), and
//!   begins every commit with `SELECT token … FOR SHARE`, refusing when it is not its own.
//! - The schema name is a real schema (`CREATE SCHEMA IF NOT EXISTS`); the cursor table is
//!   `<schema>.<p>_state (stream text PRIMARY KEY, cursor jsonb, updated_at timestamptz)`.
//! - Types: s text, ts timestamptz, b boolean, i integer, l bigint, f double precision,
//!   json jsonb. NUL characters, which PostgreSQL text cannot hold, are dropped from text values.
//! - One transaction per [`Commit`]: per batch, deletes (`= ANY($1)`), then the rows go by binary
//!   `COPY` into a temporary staging table built from the spec (`ON COMMIT DROP`) and one
//!   `INSERT … SELECT … ON CONFLICT (pk) DO UPDATE` merges them (`RETURNING xmax = 0` counts
//!   inserts vs updates). A batch repeating a key is merged again with `DISTINCT ON` (last row
//!   wins) inside a savepoint. A batch that rewrites whole groups (deletes + upserts, no soft
//!   delete) deletes only the groups' rows missing from the stage and updates only rows whose
//!   values differ. Then soft deletes, then the cursors; then `COMMIT`.
//! - A first load into an empty table drops the primary key and filter indexes, `COPY`s the rows
//!   straight in and adds them back at `flush` (see `PostgresDestination::bulk`).
//! - A failed write is diagnosed after the rollback: a table or column dropped or retyped by
//!   hand becomes a [`DestError`] naming table and column.
//!
//! It owns the tables of its schema; it must not touch other schemas.

use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error as StdError;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio_postgres::Client;
use tokio_postgres::config::Host;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::names::{Resolved, check_name, keys_target, quote_ident};
use crate::pgtls::{MakeRustls, RootCerts, SslMode, rustls_error};
use crate::settings::{DestinationSettings, PgUrl, expose, parse_config, split_tls};
use crate::{
    BoxFuture, ColumnType, Commit, CommitStats, Compat, DestError, Destination, Ensured, Fence,
    TableBatch, TableSpec, Value,
};

/// PostgreSQL's longest identifier (longer ones are truncated, which could merge columns).
const MAX_IDENT: usize = 63;
/// 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in Unix milliseconds.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// The type a column gets (as `information_schema.columns.data_type` spells it).
pub fn pg_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text => "text",
        ColumnType::Timestamp => "timestamp with time zone",
        ColumnType::Bool => "boolean",
        ColumnType::Int => "integer",
        ColumnType::BigInt => "bigint",
        ColumnType::Float => "double precision",
        ColumnType::Json => "jsonb",
    }
}

pub(crate) struct PostgresDestination {
    client: Client,
    schema: String,
    compat: Compat,
    /// Spec name → resolved spec, filled by `ensure_tables` (shared with a commit on the second
    /// connection).
    tables: Arc<HashMap<String, Resolved>>,
    /// Spec name → its filter-index columns, filled by `ensure_tables`.
    filter_indexes: HashMap<String, Vec<String>>,
    /// Tables in bulk load: primary key and filter indexes dropped until
    /// [`PostgresDestination::finish_bulk`]. A first load into an empty table `COPY`s its rows
    /// in without maintaining a random-key index row by row, and builds the indexes once at
    /// the end; a kill in between leaves the table without them, and the next `ensure_tables`
    /// adds them back before anything merges.
    bulk: HashSet<String>,
    /// Tables whose first fresh batch was seen this session (bulk load is decided once).
    bulk_judged: HashSet<String>,
    /// Tables whose groups are found through the primary key, filled by `ensure_tables`: see
    /// [`key_ranged`].
    ranged: HashSet<String>,
    state: String,
    describe: String,
    /// For the connections [`Commit::concurrent`] commits are applied on.
    settings: DestinationSettings,
    /// Connections for concurrent commits while no commit is being applied on them; opened at
    /// the first concurrent commits (and again after one whose task died), at most
    /// [`COMMITS_IN_FLIGHT`].
    spare: Vec<Client>,
    /// Opening such a connection failed once: no more are opened, and a concurrent commit that
    /// finds none free is applied on the first connection.
    no_spare: bool,
    /// The concurrent commits being applied on their own connections, oldest first.
    in_flight: VecDeque<InFlight>,
    /// A commit was applied on the first connection while one was in flight: the next one
    /// waits for every commit in flight (a commit overlaps only the one just before it).
    overlapped: bool,
    /// What finished concurrent commits changed, and the first of their failures, until a
    /// `commit`, `settle` or `flush` reports them.
    settled: CommitStats,
    settled_error: Option<DestError>,
    /// The run's lease, when opened with one: every commit on any of the connections checks it.
    fence: Option<Fence>,
}

impl Drop for PostgresDestination {
    /// A destination dropped without `flush` (a cancelled run) stops the concurrent commits in
    /// flight rather than leave them writing on their own once the schema lock is gone: their
    /// connections close, and the server rolls back what they had not committed yet.
    fn drop(&mut self) {
        self.in_flight.iter().for_each(InFlight::abort);
    }
}

/// A concurrent commit being applied on a connection of its own; the task hands the connection
/// back with the commit's result.
type InFlight = tokio::task::JoinHandle<(Client, Result<CommitStats, DestError>)>;

/// Concurrent commits applied at once, each on a connection of its own. A commit overlaps only
/// the one before it, so two: while one is applied, the next goes on the other connection, and
/// the one after waits only for the older of the two, not for both (which left a connection
/// idle while its partner finished: docs/destinations.md, "Two commits at once").
const COMMITS_IN_FLIGHT: usize = 2;

/// Whether `batch` is the kind whose first one for a table decides a bulk load: new rows only.
fn judges_bulk(batch: &TableBatch) -> bool {
    batch.appends_only() && !batch.upserts.is_empty()
}

/// What a commit applied away from the destination (on a connection of its own) needs of it.
struct Target {
    tables: Arc<HashMap<String, Resolved>>,
    bulk: HashSet<String>,
    ranged: HashSet<String>,
    schema: String,
    state: String,
    compat: Compat,
    fence: Option<Fence>,
}

/// Encodes a [`Value`] in PostgreSQL's binary format for its column type.
#[derive(Debug)]
struct PgCell<'a>(&'a Value, ColumnType);

impl PgCell<'_> {
    /// Appends the value's binary form to `out`; `IsNull::Yes` (nothing written) for a null. An
    /// int outside the 32-bit range in an integer column is the one value that cannot be
    /// encoded (each row is checked right before it is encoded, so this is a second guard).
    fn encode(&self, out: &mut BytesMut) -> Result<IsNull, std::num::TryFromIntError> {
        match (self.0, self.1) {
            (Value::Null, _) => return Ok(IsNull::Yes),
            (Value::Text(s), _) => put_text(s, out),
            (Value::Json(s), _) => {
                out.put_u8(1); // jsonb binary format version
                put_text(s, out);
            }
            (Value::Int(i), ColumnType::Int) => out.put_i32(i32::try_from(*i)?),
            (Value::Int(i), ColumnType::Float) => out.put_f64(*i as f64),
            (Value::Int(i), _) => out.put_i64(*i),
            (Value::Float(f), _) => out.put_f64(*f),
            (Value::Bool(b), _) => out.put_u8(u8::from(*b)),
            (Value::Timestamp(ms), _) => {
                out.put_i64(ms.saturating_sub(PG_EPOCH_MS).saturating_mul(1000))
            }
        }
        Ok(IsNull::No)
    }
}

impl ToSql for PgCell<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        Ok(self.encode(out)?)
    }

    fn accepts(_ty: &Type) -> bool {
        // The column type decides the encoding; the value kinds were checked against it.
        true
    }

    to_sql_checked!();
}

fn put_text(s: &str, out: &mut BytesMut) {
    if s.contains('\0') {
        out.extend(s.bytes().filter(|&b| b != 0));
    } else {
        out.put_slice(s.as_bytes());
    }
}

/// The advisory-lock key of a schema: one per (database, schema), so syncs into other schemas
/// of the same database run side by side.
fn lock_key_text(schema: &str) -> String {
    format!("xmbridge destination schema {schema}")
}

/// Takes the session-level advisory lock of `schema`, waiting up to [`LOCK_WAIT`]. Held until
/// the session ends, so a crashed or killed sync releases it as soon as the server sees its
/// connection close.
async fn lock_schema(client: &Client, schema: &str, describe: &str) -> Result<(), DestError> {
    let context = format!("locking schema {schema}");
    let key: i64 = client
        .query_one("SELECT hashtextextended($1, 0)", &[&lock_key_text(schema)])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| sql_err(&context, e))?;
    client
        .batch_execute(&format!("SET lock_timeout = {}", LOCK_WAIT.as_millis()))
        .await
        .map_err(|e| sql_err(&context, e))?;
    let locked = client.execute("SELECT pg_advisory_lock($1)", &[&key]).await;
    client
        .batch_execute("RESET lock_timeout")
        .await
        .map_err(|e| sql_err(&context, e))?;
    match locked {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Err(DestError::Busy {
                destination: describe.to_string(),
                holder: lock_holder(client, key).await.unwrap_or_default(),
            })
        }
        Err(e) => Err(sql_err(&context, e)),
    }
}

/// The fence table's name in the schema: `<p>_fence`.
fn fence_table(compat: Compat) -> String {
    format!("{}_fence", compat.prefix())
}

/// Names the session after the fence (`xmbridge fence <scope tag> <token>`), so that a later
/// run of the scope finds it in `pg_stat_activity`.
async fn name_session(client: &Client, fence: &Fence) -> Result<(), DestError> {
    let name = format!("xmbridge fence {} {}", fence.scope_tag(), fence.token);
    client
        .execute("SELECT set_config('application_name', $1, false)", &[&name])
        .await
        .map(drop)
        .map_err(|e| sql_err("naming the session", e))
}

/// How long a claim waits for the fence row, held by a commit of another run, before it ends
/// that run's sessions (when its token is lower) and tries again.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Claims `schema` for `fence`'s run (see [`Fence`]): records its token unless a higher one is
/// there ([`DestError::Fenced`]), then ends the sessions of the scope's runs with lower tokens.
async fn claim_fence(
    client: &Client,
    schema: &str,
    compat: Compat,
    fence: &Fence,
    describe: &str,
) -> Result<(), DestError> {
    let table = fence_table(compat);
    let q = format!("{}.{}", quote_ident(schema), quote_ident(&table));
    let context = format!("claiming {schema}.{table} for run token {}", fence.token);
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; \
         CREATE TABLE IF NOT EXISTS {q} (\"scope\" text PRIMARY KEY, \"token\" bigint NOT NULL, \"claimed_at\" timestamptz NOT NULL)",
        s = quote_ident(schema)
    );
    if let Err(e) = client.batch_execute(&create).await {
        // Two first claims at once: one of them creates the table, the other finds it next time.
        if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return Err(sql_err(&context, e));
        }
        client
            .batch_execute(&create)
            .await
            .map_err(|e| sql_err(&context, e))?;
    }
    let claim = format!(
        "INSERT INTO {q} AS f (\"scope\", \"token\", \"claimed_at\") VALUES ($1, $2, now()) \
         ON CONFLICT (\"scope\") DO UPDATE SET \"token\" = EXCLUDED.\"token\", \"claimed_at\" = clock_timestamp() \
         WHERE f.\"token\" <= EXCLUDED.\"token\" RETURNING \"token\""
    );
    for _ in 0..3 {
        client
            .batch_execute(&format!("SET lock_timeout = {}", FENCE_WAIT.as_millis()))
            .await
            .map_err(|e| sql_err(&context, e))?;
        let claimed = client
            .query_opt(&claim, &[&fence.scope, &fence.token])
            .await;
        client
            .batch_execute("RESET lock_timeout")
            .await
            .map_err(|e| sql_err(&context, e))?;
        match claimed {
            Ok(Some(_)) => {
                end_older_sessions(client, fence, describe).await?;
                return Ok(());
            }
            Ok(None) => {
                let current: Option<i64> = client
                    .query_opt(
                        &format!("SELECT \"token\" FROM {q} WHERE \"scope\" = $1"),
                        &[&fence.scope],
                    )
                    .await
                    .map_err(|e| sql_err(&context, e))?
                    .map(|r| r.try_get(0))
                    .transpose()
                    .map_err(|e| sql_err(&context, e))?;
                return Err(crate::fenced(
                    describe,
                    fence,
                    current,
                    &format!("{schema}.{table}"),
                    true,
                ));
            }
            // A commit of another run holds the row: of an older run (frozen, or slow to see
            // that it lost its lease), whose sessions are ended now; of a newer one, which
            // the next attempt finds recorded.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                end_older_sessions(client, fence, describe).await?;
            }
            Err(e) => return Err(sql_err(&context, e)),
        }
    }
    Err(DestError::Busy {
        destination: describe.to_string(),
        holder: format!(
            ", whose fence row {schema}.{table} stayed locked by another session of {:?} for {} s",
            fence.scope,
            3 * FENCE_WAIT.as_secs()
        ),
    })
}

/// Ends the sessions of runs of `fence`'s scope with lower tokens: they lost their lease, and a
/// frozen one would otherwise hold the schema's lock (and its open transaction) until it wakes.
async fn end_older_sessions(
    client: &Client,
    fence: &Fence,
    describe: &str,
) -> Result<(), DestError> {
    let prefix = format!("xmbridge fence {} ", fence.scope_tag());
    // PostgreSQL 14 and later wait (up to 5 s) until the session has ended; older ones only
    // signal it, and the schema lock's own wait (LOCK_WAIT) covers the rest.
    let waits: bool = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .unwrap_or(false);
    let terminate = if waits {
        "pg_terminate_backend(pid, 5000)"
    } else {
        "pg_terminate_backend(pid)"
    };
    let rows = client
        .query(
            &format!(
                "SELECT pid, application_name, {terminate} FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND starts_with(application_name, $1) \
                   AND (CASE WHEN substr(application_name, length($1) + 1) ~ '^[0-9]{{1,18}}$' \
                             THEN substr(application_name, length($1) + 1)::bigint END) < $2"
            ),
            &[&prefix, &fence.token],
        )
        .await
        .map_err(|e| {
            sql_err(
                &format!(
                    "ending the PostgreSQL sessions of earlier runs of {:?} (the role needs to own them or be a member of pg_signal_backend)",
                    fence.scope
                ),
                e,
            )
        })?;
    for row in rows {
        let pid: i32 = row.try_get(0).unwrap_or_default();
        let name: String = row.try_get(1).unwrap_or_default();
        let ended: bool = row.try_get(2).unwrap_or(false);
        tracing::warn!(
            destination = %describe,
            session = pid,
            session_name = %name,
            ended,
            token = fence.token,
            "ended the destination session of an earlier run that lost its lease (a later run of its connection took over)"
        );
    }
    Ok(())
}

/// `, held by PostgreSQL session PID (application …, client …, since …)`, as far as this role
/// may see the other session.
async fn lock_holder(client: &Client, key: i64) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT l.pid, a.application_name, host(a.client_addr), \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::bigint = (($1::bigint >> 32) & 4294967295) \
               AND l.objid::bigint = ($1::bigint & 4294967295) \
             LIMIT 1",
            &[&key],
        )
        .await
        .ok()??;
    let pid: i32 = row.try_get(0).ok()?;
    let mut details = Vec::new();
    if let Ok(Some(app)) = row.try_get::<_, Option<String>>(1)
        && !app.is_empty()
    {
        details.push(format!("application {app:?}"));
    }
    if let Ok(Some(addr)) = row.try_get::<_, Option<String>>(2) {
        details.push(format!("client {addr}"));
    }
    if let Ok(Some(since)) = row.try_get::<_, Option<String>>(3) {
        details.push(format!("since {since}"));
    }
    let details = if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join(", "))
    };
    Some(format!(", held by PostgreSQL session {pid}{details}"))
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(": ");
                m.push_str(d);
            }
            m
        }
        None => match e.source() {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

fn sql_err(context: &str, e: tokio_postgres::Error) -> DestError {
    DestError::Sql {
        context: context.to_string(),
        message: pg_message(&e),
    }
}

/// A failure inside a commit, before diagnosis: which table was being written.
struct Failure {
    table: Option<String>,
    error: Result<DestError, tokio_postgres::Error>,
}

impl From<DestError> for Box<Failure> {
    fn from(e: DestError) -> Self {
        Box::new(Failure {
            table: None,
            error: Ok(e),
        })
    }
}

fn failure(table: &str, error: tokio_postgres::Error) -> Box<Failure> {
    Box::new(Failure {
        table: Some(table.to_string()),
        error: Err(error),
    })
}

fn at(table: &str) -> impl FnOnce(tokio_postgres::Error) -> Box<Failure> + '_ {
    move |e| {
        Box::new(Failure {
            table: Some(table.to_string()),
            error: Err(e),
        })
    }
}

/// A connected PostgreSQL session: the destination's, or one of its own for a tool on the same
/// server (the bench's admin and baseline sessions), with the same password and TLS.
pub struct Session {
    /// The open connection; its background task is already spawned.
    pub client: Client,
    /// `PostgreSQL at HOST:PORT (database "db", user "u")`, for messages.
    pub target: String,
    /// `postgres://USER@HOST:PORT/DB`, no password.
    pub describe: String,
}

/// How long opening a destination waits for another session's lock before it reports
/// [`DestError::Busy`]: a sync killed a moment ago may still hold it while the server notices
/// that its client is gone and ends the session.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects with the settings' password and TLS (see the `pgtls` module for `sslmode`).
pub async fn connect(settings: &DestinationSettings) -> Result<Session, DestError> {
    let (session, connection) = open_session(settings).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(session)
}

/// [`connect`], and `LISTEN channel` on the session: the receiver gets a `()` for every
/// notification on the channel, and ends when the session does (the caller connects again).
pub async fn listen(
    settings: &DestinationSettings,
    channel: &str,
) -> Result<(Session, tokio::sync::mpsc::UnboundedReceiver<()>), DestError> {
    use futures_util::StreamExt;
    let (session, mut connection) = open_session(settings).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let wanted = channel.to_string();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) if n.channel() == wanted => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                    return;
                }
            }
        }
    });
    session
        .client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .map_err(|e| sql_err(&format!("listening on {channel}"), e))?;
    Ok((session, rx))
}

/// Opens a session; the caller drives its connection.
async fn open_session(
    settings: &DestinationSettings,
) -> Result<
    (
        Session,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            crate::pgtls::RustlsStream<tokio_postgres::Socket>,
        >,
    ),
    DestError,
> {
    let parts = split_tls(settings.url())?;
    let mut config = parse_config(&parts.rest)?;
    if let Some(p) = settings.password() {
        config.password(expose(p));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        // Names the session in pg_stat_activity (and in a Busy message's holder).
        config.application_name("xmbridge");
    }
    config.ssl_mode(parts.sslmode.negotiation());
    let tls = MakeRustls::new(parts.sslmode, &parts.roots).map_err(|e| DestError::Settings(e.0))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_string();
    let user = config.get_user().unwrap_or("").to_string();
    let target = format!("PostgreSQL at {host}:{port} (database {db:?}, user {user:?})");
    let connected = match config.connect(tls.clone()).await {
        Err(e) if parts.sslmode == SslMode::Prefer && is_handshake_failure(&e) => {
            // libpq's prefer: a failed handshake is tried again without TLS.
            tracing::warn!(
                destination = %target,
                error = %connect_reason(&e, &parts, settings),
                "TLS handshake failed; sslmode=prefer connects without TLS (set sslmode=require or verify-full to refuse that)"
            );
            config.ssl_mode(SslMode::Disable.negotiation());
            config.connect(tls).await
        }
        other => other,
    };
    let (client, connection) = connected.map_err(|e| DestError::Connect {
        destination: target.clone(),
        reason: connect_reason(&e, &parts, settings),
    })?;
    Ok((
        Session {
            client,
            target,
            describe: format!("postgres://{user}@{host}:{port}/{db}"),
        },
        connection,
    ))
}

/// The server accepted TLS but the handshake failed (a rustls error, or the connection cut
/// mid-handshake).
fn is_handshake_failure(e: &tokio_postgres::Error) -> bool {
    rustls_error(e).is_some() || e.to_string() == "error performing TLS handshake"
}

/// Why a connection failed, with what to do: TLS, password and authentication failures get
/// their own explanation. Never the password.
fn connect_reason(
    e: &tokio_postgres::Error,
    parts: &PgUrl,
    settings: &DestinationSettings,
) -> String {
    let mode = parts.sslmode.as_str();
    if let Some(tls) = rustls_error(e) {
        let mut reason = format!("TLS handshake failed (sslmode={mode}): {tls}");
        if let rustls::Error::InvalidCertificate(cert) = tls {
            use rustls::CertificateError as C;
            let roots = match &parts.roots {
                RootCerts::File(f) => format!("sslrootcert file {}", f.display()),
                RootCerts::System => "the system's CA certificates".to_string(),
            };
            match cert {
                C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                    reason.push_str(&format!(
                        "; the server's certificate is not signed by a CA in {roots}: set \
                         sslrootcert=FILE to the CA certificate that signed it"
                    ));
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    reason.push_str(
                        "; connect by a host name or address the certificate holds, or use \
                         sslmode=verify-ca to check the CA chain without the host name",
                    );
                }
                _ => {}
            }
        }
        return reason;
    }
    if let Some(db) = e.as_db_error() {
        let mut reason = pg_message(e);
        if *db.code() == tokio_postgres::error::SqlState::INVALID_PASSWORD {
            match settings.password() {
                Some(p) => reason.push_str(&format!(
                    " (the password came from {}; fix it there)",
                    p.source()
                )),
                None => reason.push_str(&format!("; {PASSWORD_HOWTO}")),
            }
        }
        return reason;
    }
    let text = pg_message(e);
    if text.contains("server does not support TLS") {
        return format!(
            "the server does not support TLS but sslmode={mode} requires it: turn TLS on at the \
             server, or (on a trusted network only) use sslmode=prefer or sslmode=disable"
        );
    }
    if text.contains("password missing") {
        return format!("the server asks for a password and none was given; {PASSWORD_HOWTO}");
    }
    text
}

const PASSWORD_HOWTO: &str = "give the password with --password-file FILE, PGPASSWORD, or a line \
    HOST:PORT:DATABASE:USER:PASSWORD in ~/.pgpass (chmod 600)";

impl PostgresDestination {
    /// Connects, takes the schema's lock, creates the schema and the cursor table.
    pub async fn connect(
        settings: &DestinationSettings,
        schema: &str,
        compat: Compat,
        fence: Option<Fence>,
    ) -> Result<Self, DestError> {
        check_name(schema, Some(MAX_IDENT))?;
        let session = connect(settings).await?;
        let client = session.client;
        let describe = format!("{} (schema {schema})", session.describe);
        if let Some(fence) = &fence {
            name_session(&client, fence).await?;
            claim_fence(&client, schema, compat, fence, &describe).await?;
        }
        lock_schema(&client, schema, &describe).await?;
        let state = format!("{}_state", compat.prefix());
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s}; \
                 CREATE TABLE IF NOT EXISTS {s}.{t} (\"stream\" text PRIMARY KEY, \"cursor\" jsonb, \"updated_at\" timestamptz, \"fence\" bigint)",
                s = quote_ident(schema),
                t = quote_ident(&state)
            ))
            .await
            .map_err(|e| sql_err(&format!("schema {schema}"), e))?;
        // Cursor tables from before fencing get the column of the token that wrote each cursor;
        // looked up first, as ALTER TABLE locks the table even when there is nothing to add.
        if !columns_of(&client, schema, &state)
            .await
            .map_err(|e| sql_err(&format!("{schema}.{state}"), e))?
            .is_some_and(|cols| cols.iter().any(|(c, _)| c == "fence"))
        {
            client
                .batch_execute(&format!(
                    "ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS \"fence\" bigint",
                    quote_ident(schema),
                    quote_ident(&state)
                ))
                .await
                .map_err(|e| sql_err(&format!("{schema}.{state}"), e))?;
        }
        Ok(PostgresDestination {
            client,
            schema: schema.to_string(),
            compat,
            tables: Arc::default(),
            filter_indexes: HashMap::new(),
            bulk: HashSet::new(),
            bulk_judged: HashSet::new(),
            ranged: HashSet::new(),
            state,
            describe,
            settings: settings.clone(),
            spare: Vec::new(),
            no_spare: false,
            in_flight: VecDeque::new(),
            overlapped: false,
            settled: CommitStats::default(),
            settled_error: None,
            fence,
        })
    }

    /// Waits for every concurrent commit in flight, keeping what they reported for the next
    /// `commit`, `settle` or `flush`.
    async fn wait_in_flight(&mut self) {
        while !self.in_flight.is_empty() {
            self.wait_oldest().await;
        }
    }

    /// Waits for the oldest concurrent commit in flight, as [`Self::wait_in_flight`].
    async fn wait_oldest(&mut self) {
        let Some(handle) = self.in_flight.pop_front() else {
            return;
        };
        let result = match handle.await {
            Ok((client, result)) => {
                self.spare.push(client);
                result
            }
            // The task panicked or was cancelled: its connection is gone with it (a new one is
            // opened for the next concurrent commit) and its transaction was never committed.
            Err(e) => Err(DestError::Sql {
                context: "commit".into(),
                message: format!("a commit on a connection of its own stopped: {e}"),
            }),
        };
        match result {
            Ok(stats) => self.settled.add(stats),
            Err(e) => {
                self.settled_error.get_or_insert(e);
            }
        }
    }

    /// Waits for the concurrent commit, then reports what finished ones changed (or the first
    /// failure, keeping their counts for later).
    async fn settle(&mut self) -> Result<CommitStats, DestError> {
        self.wait_in_flight().await;
        self.take_settled()
    }

    fn take_settled(&mut self) -> Result<CommitStats, DestError> {
        match self.settled_error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.settled)),
        }
    }

    /// A free connection for a concurrent commit, opened when none is; `None` when one cannot
    /// be opened (the server's `max_connections`, say): the commit then goes on the first
    /// connection, and the log says why once.
    async fn spare_connection(&mut self) -> Option<Client> {
        if let Some(c) = self.spare.pop() {
            return Some(c);
        }
        if self.no_spare {
            return None;
        }
        let named = async {
            let session = connect(&self.settings).await?;
            if let Some(fence) = &self.fence {
                name_session(&session.client, fence).await?;
            }
            Ok::<_, DestError>(session.client)
        };
        match named.await {
            Ok(client) => Some(client),
            Err(e) => {
                self.no_spare = true;
                tracing::warn!(destination = %self.describe, error = %e, "cannot open another connection; commits that find none free are applied on the first");
                None
            }
        }
    }

    /// Whether `commit` starts or ends a bulk load ([`Self::begin_bulk`], [`Self::finish_bulk`]):
    /// such a commit changes the tables' keys and is applied on the first connection, after
    /// every earlier one.
    fn changes_bulk(&self, commit: &Commit) -> bool {
        commit
            .batches
            .iter()
            .any(|b| judges_bulk(b) && !self.bulk_judged.contains(&b.table))
            || commit.merged_tables().any(|t| self.bulk.contains(t))
    }

    fn target(&self) -> Target {
        Target {
            tables: self.tables.clone(),
            bulk: self.bulk.clone(),
            ranged: self.ranged.clone(),
            schema: self.schema.clone(),
            state: self.state.clone(),
            compat: self.compat,
            fence: self.fence.clone(),
        }
    }

    fn display(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    async fn ensure(&mut self, specs: &[TableSpec]) -> Result<Ensured, DestError> {
        // Waits for a commit in flight first.
        self.finish_bulk(None).await?;
        let mut resolved = Vec::with_capacity(specs.len());
        for spec in specs {
            let r = Resolved::new(spec, self.compat, self.display(&spec.name), Some(MAX_IDENT))?;
            resolved.push((spec.name.clone(), r));
        }
        let schema = self.schema.clone();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| sql_err("ensure_tables", e))?;
        let mut ensured = Ensured::default();
        for (name, r) in &resolved {
            let q = format!("{}.{}", quote_ident(&schema), quote_ident(name));
            let existing = columns_of(&tx, &schema, name)
                .await
                .map_err(|e| sql_err(&r.display, e))?;
            match existing {
                None => {
                    let mut defs: Vec<String> = Vec::new();
                    // A key led by its group value (`question_response`'s surrogate key,
                    // `<response_id>:…`) compares bytewise: its values share a long prefix,
                    // which a locale collation compares character by character through strcoll
                    // in every sort and index descent, and a group's rows are then one range of
                    // the key's index (`key_ranged`). No query joins on it, so its order is
                    // nobody's concern.
                    let led_key = r.led_key().map(|(k, _)| k);
                    for (i, (col, ty)) in r.stored_columns().into_iter().enumerate() {
                        let mut d = format!("{} {}", quote_ident(&col), pg_type(ty));
                        if led_key == Some(i) && ty == ColumnType::Text {
                            d.push_str(" COLLATE \"C\"");
                        }
                        if r.pk.contains(&i) {
                            d.push_str(" NOT NULL");
                        }
                        if r.deleted.as_deref() == Some(col.as_str()) {
                            d.push_str(" NOT NULL DEFAULT false");
                        }
                        defs.push(d);
                    }
                    let pk: Vec<String> =
                        r.pk.iter()
                            .map(|&i| quote_ident(&r.columns[i].name))
                            .collect();
                    defs.push(format!("PRIMARY KEY ({})", pk.join(", ")));
                    tx.batch_execute(&format!("CREATE TABLE {q} ({})", defs.join(", ")))
                        .await
                        .map_err(|e| sql_err(&r.display, e))?;
                    ensured.created.push(name.clone());
                }
                Some(existing) => {
                    for (col, ty) in r.stored_columns() {
                        match existing.iter().find(|(n, _)| *n == col) {
                            Some((_, found)) => check_type(&schema, name, r, &col, found, ty)?,
                            None => {
                                let extra = if r.deleted.as_deref() == Some(col.as_str()) {
                                    " NOT NULL DEFAULT false"
                                } else {
                                    ""
                                };
                                tx.batch_execute(&format!(
                                    "ALTER TABLE {q} ADD COLUMN {} {}{extra}",
                                    quote_ident(&col),
                                    pg_type(ty)
                                ))
                                .await
                                .map_err(|e| sql_err(&r.display, e))?;
                                tracing::info!(table = %r.display, column = %col, "added column");
                            }
                        }
                    }
                }
            }
        }
        let mut filters = Vec::with_capacity(specs.len());
        for (spec, (name, r)) in specs.iter().zip(&resolved) {
            let ranged = key_ranged(&tx, &schema, name, r).await?;
            // A group found through the key's index needs no index of its own.
            let filter: Vec<String> = spec
                .indexed_columns()
                .into_iter()
                .filter(|col| !(ranged && spec.key_implies.as_deref() == Some(*col)))
                .map(str::to_string)
                .collect();
            // Also adds back what a first load killed before its index build left out.
            create_indexes(&tx, &schema, name, r, &filter).await?;
            filters.push((ranged, filter));
        }
        tx.commit().await.map_err(|e| sql_err("ensure_tables", e))?;
        for ((name, r), (ranged, filter)) in resolved.into_iter().zip(filters) {
            if ranged {
                self.ranged.insert(name.clone());
            } else {
                self.ranged.remove(&name);
            }
            self.filter_indexes.insert(name.clone(), filter);
            Arc::make_mut(&mut self.tables).insert(name, r);
        }
        Ok(ensured)
    }

    /// Starts a bulk load of each table that gets its first fresh rows of this session and is
    /// empty: its primary key and filter indexes are dropped (see [`Self::bulk`]).
    async fn begin_bulk(&mut self, commit: &Commit) -> Result<(), DestError> {
        for batch in &commit.batches {
            if !judges_bulk(batch) || !self.bulk_judged.insert(batch.table.clone()) {
                continue;
            }
            let Some(r) = self.tables.get(&batch.table) else {
                continue;
            };
            let q = format!(
                "{}.{}",
                quote_ident(&self.schema),
                quote_ident(&batch.table)
            );
            let row = self
                .client
                .query_one(
                    &format!(
                        "SELECT NOT EXISTS (SELECT 1 FROM {q}), \
                         (SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p')"
                    ),
                    &[&q],
                )
                .await
                .map_err(|e| sql_err(&r.display, e))?;
            let empty: bool = row.try_get(0).map_err(|e| sql_err(&r.display, e))?;
            let key: Option<String> = row.try_get(1).map_err(|e| sql_err(&r.display, e))?;
            let (true, Some(key)) = (empty, key) else {
                continue;
            };
            let mut sql = format!("ALTER TABLE {q} DROP CONSTRAINT {};", quote_ident(&key));
            for col in self.filter_indexes.get(&batch.table).into_iter().flatten() {
                sql.push_str(&format!(
                    "DROP INDEX IF EXISTS {}.{};",
                    quote_ident(&self.schema),
                    quote_ident(&index_name(&batch.table, col))
                ));
            }
            self.client
                .batch_execute(&format!("BEGIN; {sql} COMMIT"))
                .await
                .map_err(|e| sql_err(&r.display, e))?;
            tracing::debug!(table = %r.display, "first load into an empty table: the key and indexes are built after the rows are in");
            self.bulk.insert(batch.table.clone());
        }
        Ok(())
    }

    /// Ends the bulk load of `only` (or of every table in bulk): adds each table's primary key
    /// back and builds its filter indexes in one transaction, then its statistics.
    ///
    /// With several tables the largest (by its file's size) is built on the first connection
    /// while the others are built one after another on a second one: the answer table's key
    /// takes most of the time, and the small tables' keys and `ANALYZE`s would otherwise wait
    /// for it with a connection idle (docs/destinations.md, "First loads build their indexes
    /// last").
    async fn finish_bulk(&mut self, only: Option<&str>) -> Result<(), DestError> {
        self.wait_in_flight().await;
        let mut names: Vec<String> = self
            .bulk
            .iter()
            .filter(|t| only.is_none_or(|o| o == t.as_str()) && self.tables.contains_key(*t))
            .cloned()
            .collect();
        // A table no longer prepared is no longer ours to build.
        self.bulk
            .retain(|t| only.is_some_and(|o| o != t.as_str()) || names.contains(t));
        if names.is_empty() {
            return Ok(());
        }
        let mut spare = None;
        if names.len() > 1 {
            self.largest_first(&mut names).await?;
            spare = self.spare_connection().await;
        }
        let (alone, rest) = match spare {
            Some(_) => names.split_at(1),
            None => (&names[..], &[][..]),
        };
        let Self {
            client,
            schema,
            tables,
            filter_indexes,
            ..
        } = &mut *self;
        let (schema, tables, filter_indexes) = (&**schema, &**tables, &*filter_indexes);
        let on_first = finish_tables(client, schema, tables, filter_indexes, alone);
        let beside = async {
            match spare.as_mut() {
                Some(second) => finish_tables(second, schema, tables, filter_indexes, rest).await,
                None => (Vec::new(), Ok(())),
            }
        };
        let ((mut built, first), (built_beside, second)) = tokio::join!(on_first, beside);
        if let Some(second) = spare {
            self.spare.push(second);
        }
        built.extend(built_beside);
        self.bulk.retain(|t| !built.contains(t));
        match (first, second) {
            (Err(e), Err(also)) => {
                // One error is returned; the other is not lost.
                tracing::warn!(destination = %self.describe, error = %also, "building keys on the second connection failed too");
                Err(e)
            }
            (first, second) => first.and(second),
        }
    }

    /// Orders `names` largest table first (its heap's size on disk), asked in one query.
    async fn largest_first(&self, names: &mut Vec<String>) -> Result<(), DestError> {
        let qualified: Vec<String> = names
            .iter()
            .map(|n| format!("{}.{}", quote_ident(&self.schema), quote_ident(n)))
            .collect();
        let rows = self
            .client
            .query(
                "SELECT pg_relation_size(q::regclass) FROM unnest($1::text[]) WITH ORDINALITY AS u(q, i) ORDER BY i",
                &[&qualified],
            )
            .await
            .map_err(|e| sql_err(&format!("schema {}", self.schema), e))?;
        let sizes = rows
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_err(&format!("schema {}", self.schema), e))?;
        // One size per name; a name without one (none expected) sorts last rather than is lost.
        let mut sized: Vec<(i64, String)> = sizes
            .into_iter()
            .chain(std::iter::repeat(-1))
            .zip(names.drain(..))
            .collect();
        sized.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
        names.extend(sized.into_iter().map(|(_, name)| name));
        Ok(())
    }

    async fn cursor(&mut self, stream: &str) -> Result<Option<serde_json::Value>, DestError> {
        // Reads see every commit made so far.
        self.wait_in_flight().await;
        let ctx = self.display(&self.state);
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT \"cursor\"::text FROM {}.{} WHERE \"stream\" = $1",
                    quote_ident(&self.schema),
                    quote_ident(&self.state)
                ),
                &[&stream],
            )
            .await
            .map_err(|e| sql_err(&ctx, e))?;
        let text = match row {
            None => return Ok(None),
            Some(row) => row
                .try_get::<_, Option<String>>(0)
                .map_err(|e| sql_err(&ctx, e))?,
        };
        // jsonb holds only JSON, but the check is the destinations' common one.
        text.map(|t| crate::names::parse_cursor(stream, &ctx, &t))
            .transpose()
    }

    async fn keys(
        &mut self,
        table: &str,
        column: &str,
        filter: &[(String, Value)],
    ) -> Result<Vec<String>, DestError> {
        self.wait_in_flight().await;
        if self.bulk.contains(table) {
            self.finish_bulk(Some(table)).await?;
        }
        let (r, c) = keys_target(&self.tables, table, column, self.compat)?;
        let mut sql = format!(
            "SELECT DISTINCT {} FROM {}.{} WHERE {} IS NOT NULL",
            quote_ident(&c.name),
            quote_ident(&self.schema),
            quote_ident(table),
            quote_ident(&c.name)
        );
        let mut cells = Vec::with_capacity(filter.len());
        for (i, (col, v)) in filter.iter().enumerate() {
            let fc = r.spec_column(col, self.compat)?;
            r.check_value(fc, v)?;
            sql.push_str(&format!(" AND {} = ${}", quote_ident(&fc.name), i + 1));
            cells.push(PgCell(v, fc.ty));
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let rows = self
            .client
            .query(&sql, &params)
            .await
            .map_err(|e| sql_err(&r.display, e))?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_err(&r.display, e))
    }

    async fn rows(&mut self, table: &str) -> Result<Vec<Vec<Value>>, DestError> {
        self.wait_in_flight().await;
        if self.bulk.contains(table) {
            self.finish_bulk(Some(table)).await?;
        }
        let r = self
            .tables
            .get(table)
            .ok_or_else(|| DestError::UnknownTable {
                table: table.to_string(),
            })?;
        let stored = r.stored_columns();
        // Timestamps as epoch milliseconds and JSON as text: as the other destinations give them.
        let exprs: Vec<String> = stored
            .iter()
            .map(|(n, ty)| match ty {
                ColumnType::Timestamp => {
                    format!("(extract(epoch FROM {}) * 1000)::bigint", quote_ident(n))
                }
                ColumnType::Json => format!("{}::text", quote_ident(n)),
                _ => quote_ident(n),
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {}.{}",
            exprs.join(", "),
            quote_ident(&self.schema),
            quote_ident(table)
        );
        let err = |e| sql_err(&r.display, e);
        let found = self.client.query(&sql, &[]).await.map_err(err)?;
        let mut out = Vec::with_capacity(found.len());
        for row in &found {
            let mut values = Vec::with_capacity(stored.len());
            for (i, (_, ty)) in stored.iter().enumerate() {
                values.push(
                    match ty {
                        ColumnType::Text => row
                            .try_get::<_, Option<&str>>(i)
                            .map_err(err)?
                            .map(|s| Value::Text(s.into())),
                        ColumnType::Json => row
                            .try_get::<_, Option<&str>>(i)
                            .map_err(err)?
                            .map(|s| Value::Json(s.into())),
                        ColumnType::Timestamp | ColumnType::BigInt => {
                            let v = row.try_get::<_, Option<i64>>(i).map_err(err)?;
                            if *ty == ColumnType::Timestamp {
                                v.map(Value::Timestamp)
                            } else {
                                v.map(Value::Int)
                            }
                        }
                        ColumnType::Int => row
                            .try_get::<_, Option<i32>>(i)
                            .map_err(err)?
                            .map(|v| Value::Int(i64::from(v))),
                        ColumnType::Bool => row
                            .try_get::<_, Option<bool>>(i)
                            .map_err(err)?
                            .map(Value::Bool),
                        ColumnType::Float => row
                            .try_get::<_, Option<f64>>(i)
                            .map_err(err)?
                            .map(Value::Float),
                    }
                    .unwrap_or(Value::Null),
                );
            }
            out.push(values);
        }
        crate::sort_by_key(&mut out, &r.pk);
        Ok(out)
    }

    async fn commit(&mut self, commit: Commit) -> Result<CommitStats, DestError> {
        if commit.concurrent && !self.changes_bulk(&commit) {
            if self.overlapped {
                self.wait_in_flight().await;
            }
            // This commit may overlap only the one before it: anything older is waited for,
            // and finished ones are collected.
            while self.in_flight.len() >= COMMITS_IN_FLIGHT
                || self.in_flight.front().is_some_and(InFlight::is_finished)
            {
                self.wait_oldest().await;
            }
            // Applied on a connection of its own while the caller prepares the next commit.
            if let Some(mut client) = self.spare_connection().await {
                let target = self.target();
                self.overlapped = false;
                self.in_flight.push_back(tokio::spawn(async move {
                    let result = apply(&mut client, &target, commit).await;
                    (client, result)
                }));
                return self.take_settled();
            }
        } else {
            self.wait_in_flight().await;
            self.begin_bulk(&commit).await?;
            let merging: Vec<String> = commit
                .merged_tables()
                .filter(|t| self.bulk.contains(*t))
                .map(str::to_string)
                .collect();
            for table in merging {
                self.finish_bulk(Some(&table)).await?;
            }
        }
        self.overlapped = !self.in_flight.is_empty();
        let target = self.target();
        let own = apply(&mut self.client, &target, commit).await?;
        let mut stats = self.take_settled()?;
        stats.add(own);
        Ok(stats)
    }
}

/// Applies one commit in one transaction on `client`; a failure after the rollback is
/// diagnosed (a table or column altered by hand) or named by its table.
async fn apply(
    client: &mut Client,
    target: &Target,
    commit: Commit,
) -> Result<CommitStats, DestError> {
    let result = try_commit(client, target, &commit).await;
    // Freeing a commit's rows (hundreds of thousands of strings) took longer than sending
    // them; the next commit need not wait for it.
    drop(tokio::task::spawn_blocking(move || drop(commit)));
    match result.map_err(|f| *f) {
        Ok(stats) => Ok(stats),
        Err(Failure { error: Ok(e), .. }) => Err(e),
        Err(Failure {
            table,
            error: Err(e),
        }) => {
            // The transaction is rolled back; find out whether the table was altered by hand.
            if let Some(t) = table.as_deref()
                && let Some(r) = target.tables.get(t)
                && let Some(diag) = diagnose(client, &target.schema, t, r).await
            {
                return Err(diag);
            }
            let context = match table {
                Some(t) => format!("table {}.{t}", target.schema),
                None => "commit".to_string(),
            };
            Err(sql_err(&context, e))
        }
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

// Boxed with an explicit `Send` bound: proving `Send` for the whole commit future from the
// trait method trips the compiler's higher-ranked lifetime check (rust-lang/rust#102211).
fn try_commit<'a>(
    client: &'a mut Client,
    target: &'a Target,
    commit: &'a Commit,
) -> BoxFuture<'a, Result<CommitStats, Box<Failure>>> {
    Box::pin(try_commit_inner(client, target, commit))
}

async fn try_commit_inner(
    client: &mut Client,
    target: &Target,
    commit: &Commit,
) -> Result<CommitStats, Box<Failure>> {
    let Target {
        tables,
        bulk,
        ranged,
        schema,
        state,
        compat,
        fence,
    } = target;
    let (schema, state, compat) = (schema.as_str(), state.as_str(), *compat);
    let synced = Value::Timestamp(commit.synced_at_ms);
    let mut stats = Stats::default();
    let mut tx = client.transaction().await.map_err(at("commit"))?;
    if let Some(fence) = fence {
        // First, and held to the end: a later run's claim waits for this transaction, and once
        // it is in, this run's next commit sees the other token here.
        let table = fence_table(compat);
        let current: Option<i64> = tx
            .query_opt(
                &format!(
                    "SELECT \"token\" FROM {}.{} WHERE \"scope\" = $1 FOR SHARE",
                    quote_ident(schema),
                    quote_ident(&table)
                ),
                &[&fence.scope],
            )
            .await
            .map_err(at("fence table"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(at("fence table"))?;
        if current != Some(fence.token) {
            let describe = format!("schema {schema}");
            let shown = format!("{schema}.{table}");
            return Err(crate::fenced(&describe, fence, current, &shown, false).into());
        }
    }
    for (bi, batch) in commit.batches.iter().enumerate() {
        let r = tables
            .get(&batch.table)
            .ok_or_else(|| DestError::UnknownTable {
                table: format!("{schema}.{}", batch.table),
            })?;
        let bulk = bulk.contains(&batch.table);
        let ranged = ranged.contains(&batch.table);
        let bitmap = ranged && !batch.delete_where.is_empty();
        let applied = async {
            if ranged {
                check_key_led(r, batch)?;
            }
            if bitmap {
                tx.batch_execute(RANGES_BY_BITMAP)
                    .await
                    .map_err(at("commit"))?;
            }
            apply_batch(
                &mut tx, schema, r, batch, bi, bulk, ranged, &synced, compat, &mut stats,
            )
            .await?;
            if bitmap {
                tx.batch_execute(RANGES_DONE).await.map_err(at("commit"))?;
            }
            Ok::<_, Box<Failure>>(())
        };
        applied.await.map_err(|mut f| {
            f.table = Some(batch.table.clone());
            f
        })?;
    }
    for m in &commit.mark_unseen_deleted {
        let r = tables
            .get(&m.table)
            .ok_or_else(|| DestError::UnknownTable {
                table: format!("{schema}.{}", m.table),
            })?;
        let Some(deleted) = &r.deleted else {
            return Err(DestError::NotSoftDelete {
                table: r.display.clone(),
            }
            .into());
        };
        let synced_col = quote_ident(&r.synced);
        let mut sql = format!(
            "UPDATE {}.{} SET {d} = true, {synced_col} = $1 WHERE ({synced_col} IS NULL OR {synced_col} < $1) AND NOT {d}",
            quote_ident(schema),
            quote_ident(&m.table),
            d = quote_ident(deleted),
        );
        let mut params: Vec<PgCell<'_>> = vec![PgCell(&synced, ColumnType::Timestamp)];
        for (col, v) in &m.scope {
            let c = r.spec_column(col, compat)?;
            if matches!(v, Value::Null) {
                sql.push_str(&format!(" AND {} IS NULL", quote_ident(&c.name)));
            } else {
                r.check_value(c, v)?;
                params.push(PgCell(v, c.ty));
                sql.push_str(&format!(
                    " AND {} = ${}",
                    quote_ident(&c.name),
                    params.len()
                ));
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let n = tx.execute(&sql, &refs).await.map_err(at(&m.table))?;
        stats.entry(&m.table).3 += n;
    }
    if !commit.cursors.is_empty() {
        let sql = format!(
            "INSERT INTO {}.{} (\"stream\", \"cursor\", \"updated_at\", \"fence\") VALUES ($1, $2, now(), $3) \
             ON CONFLICT (\"stream\") DO UPDATE SET \"cursor\" = EXCLUDED.\"cursor\", \"updated_at\" = EXCLUDED.\"updated_at\", \"fence\" = EXCLUDED.\"fence\"",
            quote_ident(schema),
            quote_ident(state)
        );
        let st = tx.prepare(&sql).await.map_err(at("cursor table"))?;
        let token = fence.as_ref().map(|f| f.token);
        for i in 0..commit.cursors.len() {
            let (stream, cursor) = &commit.cursors[i];
            tx.execute(&st, &[stream as &(dyn ToSql + Sync), cursor, &token])
                .await
                .map_err(at("cursor table"))?;
        }
    }
    tx.commit().await.map_err(at("commit"))?;
    Ok(CommitStats { tables: stats.0 })
}

#[allow(clippy::too_many_arguments)]
async fn apply_batch(
    tx: &mut tokio_postgres::Transaction<'_>,
    schema: &str,
    r: &Resolved,
    batch: &TableBatch,
    index: usize,
    bulk: bool,
    ranged: bool,
    synced: &Value,
    compat: Compat,
    stats: &mut Stats,
) -> Result<(), Box<Failure>> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(&batch.table));
    let entry = stats.entry(&batch.table);
    // Rows that replace whole groups (a rewritten response's answers) on a table without soft
    // delete: rows already there with the same values are kept as they are, and only the rest of
    // the groups is deleted (after staging, below). Rewriting every row of an edited response
    // cost a delete and an insert through every index per answer, most of them unchanged.
    let replace = crate::replaces_groups(batch, bulk, r);
    if !replace {
        // Deletes first: a response about to be rewritten loses its old answer rows.
        for (col, values) in &batch.delete_where {
            let Some((sql, cells)) = group_delete(&table, r, col, values, compat, None, ranged)?
            else {
                continue;
            };
            entry.3 += tx
                .execute(&sql, &[&cells])
                .await
                .map_err(|e| failure(&batch.table, e))?;
        }
    }
    if batch.upserts.is_empty() {
        return Ok(());
    }
    let cols: Vec<String> = r.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let col_list = cols.join(", ");
    // The rows the merge below takes: all of them, unless some go straight in first.
    let mut rows: Vec<&[Value]> = batch.upserts.iter().map(Vec::as_slice).collect();
    // When replacing: the groups whose old rows are compared (all of the batch's, unless the
    // groups with no rows yet were split off).
    let mut groups = std::borrow::Cow::Borrowed(batch.delete_where.as_slice());
    let direct = Direct::new(&table, r, &col_list, synced);
    if batch.appends_only() {
        // New rows only: one COPY straight into the table, no staging table and no merge. A key
        // that exists after all (unique violation) rolls back to the savepoint and merges.
        if bulk {
            // No key to violate while the table is in bulk load: a repeated key is resolved
            // when the key is added back.
            copy_rows(tx, &direct.copy, &rows, r, &direct.tail, &batch.table).await?;
            entry.1 += rows.len() as u64;
            return Ok(());
        }
        if direct.copy_or_conflict(tx, &rows, r, &batch.table).await? {
            entry.1 += rows.len() as u64;
            return Ok(());
        }
    } else if replace {
        // Groups with no row in the table yet (new responses) need no comparison: their rows
        // go straight in by COPY, and only the groups that exist are staged and merged.
        if let Some(split) = split_new_groups(tx, &table, r, batch, compat, ranged).await? {
            let new: Vec<&[Value]> = split.new_rows.iter().map(|&i| rows[i]).collect();
            if new.is_empty() || direct.copy_or_conflict(tx, &new, r, &batch.table).await? {
                entry.1 += new.len() as u64;
                rows = split.old_rows.iter().map(|&i| rows[i]).collect();
                if rows.is_empty() && split.existing.is_empty() {
                    return Ok(());
                }
                groups = std::borrow::Cow::Owned(vec![(split.column, split.existing)]);
            }
        }
    }
    let stage = quote_ident(&format!("xmbridge_stage_{index}"));
    let defs: Vec<String> = r
        .columns
        .iter()
        .zip(&cols)
        .map(|(c, q)| format!("{q} {}", pg_type(c.ty)))
        .collect();
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {stage} ({}) ON COMMIT DROP",
        defs.join(", ")
    ))
    .await
    .map_err(|e| failure(&batch.table, e))?;
    copy_rows(
        tx,
        &format!("COPY {stage} ({col_list}) FROM STDIN (FORMAT binary)"),
        &rows,
        r,
        &[],
        &batch.table,
    )
    .await?;

    let pk_list =
        r.pk.iter()
            .map(|&i| cols[i].as_str())
            .collect::<Vec<_>>()
            .join(", ");
    if replace {
        // The groups' rows that the batch does not hold any more.
        let kept: Vec<String> =
            r.pk.iter()
                .map(|&i| format!("s.{c} = t.{c}", c = cols[i]))
                .collect();
        let keep = format!(
            "NOT EXISTS (SELECT 1 FROM {stage} s WHERE {})",
            kept.join(" AND ")
        );
        for (col, values) in groups.iter() {
            let Some((sql, cells)) =
                group_delete(&table, r, col, values, compat, Some(&keep), ranged)?
            else {
                continue;
            };
            entry.3 += tx
                .execute(&sql, &[&cells])
                .await
                .map_err(|e| failure(&batch.table, e))?;
        }
    }

    let synced_col = quote_ident(&r.synced);
    let mut sets: Vec<String> = (0..cols.len())
        .filter(|i| !r.pk.contains(i))
        .map(|i| format!("{c} = EXCLUDED.{c}", c = cols[i]))
        .collect();
    sets.push(format!("{synced_col} = EXCLUDED.{synced_col}"));
    let mut target_cols = format!("{col_list}, {synced_col}");
    let mut select_cols = format!("{col_list}, $1::timestamptz");
    if let Some(d) = &r.deleted {
        let d = quote_ident(d);
        target_cols.push_str(&format!(", {d}"));
        select_cols.push_str(", false");
        sets.push(format!("{d} = false"));
    }
    let mut sets = format!("DO UPDATE SET {}", sets.join(", "));
    if replace {
        // A row whose values are all the same stays as it is (its `<p>_synced` too).
        let values: Vec<&String> = (0..cols.len())
            .filter(|i| !r.pk.contains(i))
            .map(|i| &cols[i])
            .collect();
        if values.is_empty() {
            sets = "DO NOTHING".into();
        } else {
            let old: Vec<String> = values.iter().map(|c| format!("t.{c}")).collect();
            let new: Vec<String> = values.iter().map(|c| format!("EXCLUDED.{c}")).collect();
            sets.push_str(&format!(
                " WHERE ({}) IS DISTINCT FROM ({})",
                old.join(", "),
                new.join(", ")
            ));
        }
    }
    let merge = |source: String| -> String {
        format!(
            "WITH m AS (INSERT INTO {table} AS t ({target_cols}) {source} \
             ON CONFLICT ({pk_list}) {sets} RETURNING (xmax = 0) AS inserted) \
             SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM m"
        )
    };
    let plain = merge(format!("SELECT {select_cols} FROM {stage}"));
    let dedup = merge(format!(
        "SELECT DISTINCT ON ({pk_list}) {select_cols} FROM {stage} ORDER BY {pk_list}, ctid DESC"
    ));
    let param = PgCell(synced, ColumnType::Timestamp);
    let counts = {
        let sp = tx
            .savepoint("xmbridge_merge")
            .await
            .map_err(|e| failure(&batch.table, e))?;
        match sp.query_one(&plain, &[&param]).await {
            Ok(row) => {
                sp.commit().await.map_err(|e| failure(&batch.table, e))?;
                Ok(row)
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::CARDINALITY_VIOLATION) => {
                // The batch repeats a key; drop back and keep the last row of each key.
                sp.rollback().await.map_err(|e| failure(&batch.table, e))?;
                Err(())
            }
            Err(e) => return Err(failure(&batch.table, e)),
        }
    };
    let row = match counts {
        Ok(row) => row,
        Err(()) => tx
            .query_one(&dedup, &[&param])
            .await
            .map_err(|e| failure(&batch.table, e))?,
    };
    let inserted: i64 = row.try_get(0).map_err(|e| failure(&batch.table, e))?;
    let updated: i64 = row.try_get(1).map_err(|e| failure(&batch.table, e))?;
    entry.1 += inserted as u64;
    entry.2 += updated as u64;
    Ok(())
}

/// A `COPY` straight into a table: its columns, then `<p>_synced` and `<p>_deleted`.
struct Direct<'a> {
    copy: String,
    tail: Vec<PgCell<'a>>,
}

impl<'a> Direct<'a> {
    fn new(table: &str, r: &Resolved, col_list: &str, synced: &'a Value) -> Self {
        let mut target_cols = format!("{col_list}, {}", quote_ident(&r.synced));
        let mut tail = vec![PgCell(synced, ColumnType::Timestamp)];
        if let Some(d) = &r.deleted {
            target_cols.push_str(&format!(", {}", quote_ident(d)));
            tail.push(PgCell(&Value::Bool(false), ColumnType::Bool));
        }
        Direct {
            copy: format!("COPY {table} ({target_cols}) FROM STDIN (FORMAT binary)"),
            tail,
        }
    }

    /// Copies `rows` in under a savepoint; `false` (rolled back, nothing written) when a key
    /// exists after all, so that the caller merges them instead.
    async fn copy_or_conflict(
        &self,
        tx: &mut tokio_postgres::Transaction<'_>,
        rows: &[&[Value]],
        r: &Resolved,
        table: &str,
    ) -> Result<bool, Box<Failure>> {
        let sp = tx.savepoint("xmbridge_direct").await.map_err(at(table))?;
        match copy_rows(&sp, &self.copy, rows, r, &self.tail, table).await {
            Ok(()) => {
                sp.commit().await.map_err(at(table))?;
                Ok(true)
            }
            Err(f)
                if matches!(&f.error, Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)) =>
            {
                sp.rollback().await.map_err(at(table))?;
                Ok(false)
            }
            Err(f) => Err(f),
        }
    }
}

/// A replacing batch split by whether its group already has rows in the table, and whether
/// those rows are exactly the batch's.
struct Split {
    column: String,
    /// The batch's groups that have rows in the table that differ from the batch's.
    existing: Vec<Value>,
    /// Positions in `batch.upserts` of rows of groups with no rows yet.
    new_rows: Vec<usize>,
    /// Positions of the rows of `existing` groups, and of rows outside the batch's groups.
    old_rows: Vec<usize>,
}

/// What the table's rows of one group showed, compared with the batch's rows of that group.
#[derive(Default)]
struct Seen {
    /// Rows of the table equal, column for column, to the batch's row of the same key.
    matched: usize,
    /// A row of the table the batch does not hold as it is (another key, another value).
    differs: bool,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.matched += other.matched;
        self.differs |= other.differs;
    }
}

/// A batch's rows of one group: the hash of each one's key ([`key_hash`]) → its position.
type GroupRows = HashMap<u64, usize>;

/// A text value as the server sent it (binary format: its UTF-8 bytes), compared with the batch's
/// without decoding.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

/// A hash of a row's key columns (`None` when one is NULL), each followed by a byte UTF-8
/// never holds, so that ("ab", "c") and ("a", "bc") differ. The columns are read as they are
/// hashed, so that the stored rows' keys need no vector per row.
fn key_hash<'a, E>(
    columns: impl Iterator<Item = Result<Option<&'a [u8]>, E>>,
) -> Result<Option<u64>, E> {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    for c in columns {
        let Some(c) = c? else {
            return Ok(None);
        };
        h.write(c);
        h.write_u8(0xff);
    }
    Ok(Some(h.finish()))
}

/// For a batch that replaces groups of one text column: which of its groups have rows in the
/// table already (one index scan per group), and of those, which hold exactly the batch's rows
/// already — their rows are left out, as the merge would change nothing. An edited response
/// whose answers stayed the same (an embedded-data edit) then costs a read of its answers, not a
/// staged copy, a delete and a merge through the key. `None` when the batch does not have that
/// shape.
///
/// On tables whose columns are all text, the groups' rows are read back (binary, as they are
/// stored) and compared here with the batch's, row by row by key. Comparing on the server
/// instead (a SHA-256 of each group's `ROW(…)::text` in key order) took the server 96–101 ms
/// for 500 edited responses at 1,000,000; reading their 39,000 rows takes it 40–42 ms
/// (docs/bench.md). Elsewhere every existing group is merged.
async fn split_new_groups(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    r: &Resolved,
    batch: &TableBatch,
    compat: Compat,
    ranged: bool,
) -> Result<Option<Split>, Box<Failure>> {
    use futures_util::TryStreamExt;
    let [(col, values)] = batch.delete_where.as_slice() else {
        return Ok(None);
    };
    let c = r.spec_column(col, compat)?;
    let Some(at) = r.columns.iter().position(|x| x.name == c.name) else {
        return Ok(None);
    };
    if c.ty != ColumnType::Text {
        return Ok(None);
    }
    let cells = group_cells(r, c, values)?;
    let group = quote_ident(&c.name);
    let asked: HashSet<&str> = values
        .iter()
        .filter_map(|v| match v {
            Value::Text(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    // The batch's rows of each group it replaces, by a hash of their key; `None` for a group
    // whose rows cannot be compared (a key repeated in the batch, whose last row wins in the
    // merge; a key that is not text; two keys of one hash, which only costs the merge).
    let mut keyed: HashMap<&str, Option<GroupRows>> = HashMap::new();
    for (i, row) in batch.upserts.iter().enumerate() {
        let Some(Value::Text(g)) = row.get(at) else {
            continue;
        };
        if !asked.contains(g.as_str()) {
            continue;
        }
        let entry = keyed
            .entry(g.as_str())
            .or_insert_with(|| Some(HashMap::new()));
        let Some(rows) = entry else {
            continue;
        };
        let Ok(key) = key_hash(r.pk.iter().map(|&k| {
            Ok::<_, std::convert::Infallible>(match row.get(k) {
                Some(Value::Text(s)) => Some(s.as_bytes()),
                _ => None,
            })
        }));
        let kept = match key {
            Some(key) if row.len() == r.columns.len() => rows.insert(key, i).is_none(),
            _ => false,
        };
        if !kept {
            *entry = None;
        }
    }
    let mut seen: HashMap<String, Seen> = HashMap::with_capacity(asked.len());
    if r.columns.iter().all(|c| c.ty == ColumnType::Text) {
        let cols: Vec<String> = r
            .columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect();
        // One index scan per group (a plan over all groups at once misjudged their size on
        // large tables), and no JIT: compiling it cost more than the query.
        tx.batch_execute("SET LOCAL jit = off")
            .await
            .map_err(|e| failure(&batch.table, e))?;
        let sql = format!(
            "SELECT s.* {}",
            group_rows(
                table,
                r,
                &group,
                by_key_range(r, c, ranged),
                &cols.join(", ")
            )
        );
        let stream = tx
            .query_raw(&sql, [&cells as &(dyn ToSql + Sync)])
            .await
            .map_err(|e| failure(&batch.table, e))?;
        futures_util::pin_mut!(stream);
        let fail = |e| failure(&batch.table, e);
        // A group's rows come one after another (one index scan per group): the group being read
        // and what it showed so far, added to `seen` when the next one starts.
        // The batch's rows of that group are looked up once, when its first row comes.
        let mut current: Option<(String, Seen, Option<&GroupRows>)> = None;
        while let Some(row) = stream.try_next().await.map_err(fail)? {
            let Raw(Some(g)) = row.try_get(at).map_err(fail)? else {
                continue;
            };
            if current.as_ref().is_none_or(|(c, ..)| c.as_bytes() != g) {
                if let Some((c, s, _)) = current.take() {
                    seen.entry(c).or_default().add(s);
                }
                let g = String::from_utf8_lossy(g).into_owned();
                let rows = keyed.get(g.as_str()).and_then(Option::as_ref);
                current = Some((g, Seen::default(), rows));
            }
            let Some((_, s, rows)) = current.as_mut() else {
                continue;
            };
            if s.differs {
                continue;
            }
            let Some(rows) = *rows else {
                s.differs = true;
                continue;
            };
            let key = key_hash(r.pk.iter().map(|&k| row.try_get(k).map(|Raw(v)| v)));
            // The whole row is compared below, the key included: a hash that matches another
            // key only makes the group look changed.
            let Some(&i) = key.map_err(fail)?.and_then(|h| rows.get(&h)) else {
                s.differs = true;
                continue;
            };
            let mut equal = true;
            for (n, v) in batch.upserts[i].iter().enumerate() {
                let Raw(stored) = row.try_get(n).map_err(fail)?;
                equal = match v {
                    Value::Null => stored.is_none(),
                    Value::Text(t) => stored == Some(t.as_bytes()),
                    _ => false,
                };
                if !equal {
                    break;
                }
            }
            if equal {
                s.matched += 1;
            } else {
                s.differs = true;
            }
        }
        if let Some((c, s, _)) = current {
            seen.entry(c).or_default().add(s);
        }
    } else {
        let sql = if by_key_range(r, c, ranged) {
            let rows = group_rows(table, r, &group, true, &format!("t.{group}"));
            format!("SELECT DISTINCT s.{group} {rows}")
        } else {
            format!(
                "SELECT v FROM unnest($1::text[]) AS v \
                 WHERE EXISTS (SELECT 1 FROM {table} t WHERE t.{group} = v)"
            )
        };
        for row in tx
            .query(&sql, &[&cells])
            .await
            .map_err(|e| failure(&batch.table, e))?
        {
            let v: String = row.try_get(0).map_err(|e| failure(&batch.table, e))?;
            seen.insert(
                v,
                Seen {
                    matched: 0,
                    differs: true,
                },
            );
        }
    }
    // A group is unchanged when every row of it in the table is one of the batch's, unchanged,
    // and every row of the batch's was found.
    let unchanged: HashSet<&str> = seen
        .iter()
        .filter(|(g, s)| {
            !s.differs
                && matches!(keyed.get(g.as_str()), Some(Some(rows)) if rows.len() == s.matched)
        })
        .map(|(g, _)| g.as_str())
        .collect();
    let (mut new_rows, mut old_rows) = (Vec::new(), Vec::new());
    for (i, row) in batch.upserts.iter().enumerate() {
        match row.get(at) {
            Some(Value::Text(g)) if unchanged.contains(g.as_str()) => {}
            // A row of a group the batch replaces that has no rows yet.
            Some(Value::Text(g))
                if asked.contains(g.as_str()) && !seen.contains_key(g.as_str()) =>
            {
                new_rows.push(i)
            }
            _ => old_rows.push(i),
        }
    }
    let existing = seen
        .keys()
        .filter(|g| !unchanged.contains(g.as_str()))
        .map(|g| Value::Text(g.as_str().into()))
        .collect();
    Ok(Some(Split {
        column: col.clone(),
        existing,
        new_rows,
        old_rows,
    }))
}

/// Whether `table`'s rows of one group are found through its primary key instead of an index on
/// the group column: the key is one text column that starts with the group value and `:`
/// ([`crate::TableSpec::key_implies`]) and compares bytewise (`COLLATE "C"`, which new tables
/// get), so a group's rows are the one range `[<value>:, <value>;)` of the key's index. Inserting
/// a new response's answers then maintains one index instead of two (docs/destinations.md,
/// "Indexes"). A table made before its key compared bytewise keeps its group column's index.
async fn key_ranged(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    r: &Resolved,
) -> Result<bool, DestError> {
    let Some((k, g)) = r.led_key() else {
        return Ok(false);
    };
    if r.columns[g].ty != ColumnType::Text || r.columns[k].ty != ColumnType::Text {
        return Ok(false);
    }
    let q = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let err = |e| sql_err(&r.display, e);
    let collation: Option<String> = tx
        .query_opt(
            "SELECT c.collname::text FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation \
             WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
            &[&q, &r.columns[k].name],
        )
        .await
        .map_err(err)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(err)?;
    Ok(matches!(collation.as_deref(), Some("C" | "POSIX")))
}

/// `FROM … WHERE …` yielding, as `s`, the rows of `table` whose group column `group` (quoted) is
/// one of the text array `$1`, with `select` (columns of `t`, `group` among them), group after
/// group. A [`key_ranged`] table reads each group as its key's range, rechecking the group
/// column (a group value may itself hold `:`); `OFFSET 0` keeps the planner from turning the
/// lookups into one join over the whole table. Run it with `enable_indexscan` off
/// ([`RANGES_BY_BITMAP`]).
fn group_rows(table: &str, r: &Resolved, group: &str, ranged: bool, select: &str) -> String {
    match r.led_key().filter(|_| ranged) {
        Some((k, _)) => {
            let key = quote_ident(&r.columns[k].name);
            format!(
                "FROM unnest($1::text[]) AS v, LATERAL (SELECT {select} FROM {table} t \
                 WHERE t.{key} >= v || ':' AND t.{key} < v || ';' OFFSET 0) AS s WHERE s.{group} = v"
            )
        }
        None => format!(
            "FROM unnest($1::text[]) AS v, LATERAL (SELECT {select} FROM {table} t WHERE t.{group} = v) AS s"
        ),
    }
}

/// Set before reading or deleting a [`key_ranged`] table's groups (and back to the default
/// after): each group's range is then read as a bitmap scan, its rows in table order, instead of
/// an index scan that visits the table once per row. Measured at 1,000,000 responses, 500 groups
/// of about 78 rows from a cold key index: 28–38 ms against 87–123 ms.
const RANGES_BY_BITMAP: &str = "SET LOCAL enable_indexscan = off";
const RANGES_DONE: &str = "SET LOCAL enable_indexscan TO DEFAULT";

/// Whether the groups of column `c` of a [`key_ranged`] table are found through its key: `c` is
/// the column the key starts with.
fn by_key_range(r: &Resolved, c: &crate::Column, ranged: bool) -> bool {
    ranged
        && c.ty == ColumnType::Text
        && r.led_key()
            .is_some_and(|(_, g)| r.columns[g].name == c.name)
}

/// Refuses a row of a [`key_ranged`] table whose key does not start with its group value and
/// `:`: that row would not be found when its group is next rewritten or deleted.
fn check_key_led(r: &Resolved, batch: &TableBatch) -> Result<(), DestError> {
    let Some((k, g)) = r.led_key() else {
        return Ok(());
    };
    for row in &batch.upserts {
        let (Some(Value::Text(key)), Some(Value::Text(value))) = (row.get(k), row.get(g)) else {
            continue;
        };
        let led = key
            .strip_prefix(value.as_str())
            .is_some_and(|rest| rest.starts_with(':'));
        if !led {
            return Err(DestError::KeyNotLed {
                table: r.display.clone(),
                column: r.columns[g].name.clone(),
                key: key.to_string(),
                value: value.to_string(),
            });
        }
    }
    Ok(())
}

/// The `DELETE` of the rows whose `col` is one of `values` (and, with `keep`, that condition is
/// false), with its one array parameter; `None` when there is nothing to delete. A
/// [`key_ranged`] table's rows are found through its key ([`group_rows`]) and deleted by
/// `ctid`.
fn group_delete<'v>(
    table: &str,
    r: &Resolved,
    col: &str,
    values: &'v [Value],
    compat: Compat,
    keep: Option<&str>,
    ranged: bool,
) -> Result<Option<(String, Vec<PgCell<'v>>)>, Box<Failure>> {
    let c = r.spec_column(col, compat)?;
    let cells = group_cells(r, c, values)?;
    if cells.is_empty() {
        return Ok(None);
    }
    let group = quote_ident(&c.name);
    let mut sql = if by_key_range(r, c, ranged) {
        let rows = group_rows(table, r, &group, true, &format!("t.ctid, t.{group}"));
        format!("DELETE FROM {table} AS t WHERE t.ctid = ANY(ARRAY(SELECT s.ctid {rows}))")
    } else {
        format!("DELETE FROM {table} AS t WHERE t.{group} = ANY($1)")
    };
    if let Some(keep) = keep {
        sql.push_str(" AND ");
        sql.push_str(keep);
    }
    Ok(Some((sql, cells)))
}

/// The group values of column `c` as one array parameter (checked against its type; NULL
/// matches no row, so it is left out).
fn group_cells<'v>(
    r: &Resolved,
    c: &crate::Column,
    values: &'v [Value],
) -> Result<Vec<PgCell<'v>>, Box<Failure>> {
    let mut cells = Vec::with_capacity(values.len());
    for v in values {
        r.check_value(c, v)?;
        if !matches!(v, Value::Null) {
            cells.push(PgCell(v, c.ty));
        }
    }
    Ok(cells)
}

/// Bytes of encoded rows handed to the connection at a time. tokio-postgres' own binary writer
/// hands over every 4 KiB, and each hand-over wakes the connection task on another thread (about
/// 140,000 for a 50,000-response first load): the runtime's worker threads took 8–9 % of a core
/// each during the load with it, 3–4 % with this, CPU that the server's `COPY` needs on a small
/// machine.
pub const COPY_CHUNK: usize = 1 << 20;

/// The signature, flags and header-extension length that open a binary `COPY` stream.
pub const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Sends `rows` (each followed by the `tail` cells) through one binary `COPY … FROM STDIN`,
/// encoded here in the binary copy format (header, per row the field count and each field's
/// length and bytes, trailer) and sent in chunks of [`COPY_CHUNK`].
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &str,
    rows: &[&[Value]],
    r: &Resolved,
    tail: &[PgCell<'_>],
    table: &str,
) -> Result<(), Box<Failure>> {
    use futures_util::SinkExt;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(copy)
        .await
        .map_err(at(table))?;
    futures_util::pin_mut!(sink);
    let cols = &r.columns;
    let fields = i16::try_from(cols.len() + tail.len()).map_err(|_| {
        Box::<Failure>::from(DestError::Sql {
            context: r.display.clone(),
            message: format!(
                "{} columns are more than a COPY row holds",
                cols.len() + tail.len()
            ),
        })
    })?;
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + (COPY_CHUNK >> 3));
    buf.put_slice(COPY_BINARY_HEADER);
    for row in rows {
        // Checked here, where the row is read anyway, not in a pass of its own before: a bad
        // row ends the COPY (the connection sends CopyFail) and the commit rolls back. It also
        // holds exactly one value per column.
        r.check_row(row)?;
        buf.put_i16(fields);
        let cells = row
            .iter()
            .zip(cols)
            .map(|(v, c)| (PgCell(v, c.ty), c.name.as_str()))
            .chain(tail.iter().map(|t| (PgCell(t.0, t.1), "")));
        for (cell, column) in cells {
            let at = buf.len();
            buf.put_i32(0);
            let encoded = cell.encode(&mut buf).map_err(|_| {
                Box::<Failure>::from(DestError::ValueType {
                    table: r.display.clone(),
                    column: column.to_string(),
                    expected: "integer (32-bit)",
                    found: "int outside the 32-bit range",
                })
            })?;
            let len = match encoded {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(buf.len() - at - 4).map_err(|_| {
                    Box::<Failure>::from(DestError::ValueType {
                        table: r.display.clone(),
                        column: column.to_string(),
                        expected: "a value under 2 GiB",
                        found: "a larger value",
                    })
                })?,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await.map_err(at(table))?;
        }
    }
    buf.put_i16(-1); // trailer
    sink.send(buf.freeze()).await.map_err(at(table))?;
    sink.as_mut().finish().await.map_err(at(table))?;
    Ok(())
}

/// Columns (name, data_type) of a table, or `None` when it does not exist.
async fn columns_of<C: tokio_postgres::GenericClient>(
    client: &C,
    schema: &str,
    table: &str,
) -> Result<Option<Vec<(String, String)>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &table],
        )
        .await?;
    let cols: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok((!cols.is_empty()).then_some(cols))
}

fn check_type(
    schema: &str,
    table: &str,
    r: &Resolved,
    column: &str,
    found: &str,
    ty: ColumnType,
) -> Result<(), DestError> {
    let expected = pg_type(ty);
    if found == expected {
        return Ok(());
    }
    let q = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let c = quote_ident(column);
    let short = match ty {
        ColumnType::Timestamp => "timestamptz",
        other => pg_type(other),
    };
    Err(DestError::TypeConflict {
        table: r.display.clone(),
        column: column.to_string(),
        found: found.to_string(),
        expected: expected.to_string(),
        fix: format!(
            "ALTER TABLE {q} ALTER COLUMN {c} TYPE {short} USING {c}::{short}; or drop the column (ALTER TABLE {q} DROP COLUMN {c}) and run the sync again with --full"
        ),
    })
}

/// The index on `column` of `table` (unique within the schema).
pub fn index_name(table: &str, column: &str) -> String {
    format!("{table}__{column}_idx")
}

/// The columns the destination's own statements search `r` by: its key, the group column the
/// key implies, and the filter-indexed columns, each once.
fn searched_columns<'a>(r: &'a Resolved, filter: &'a [String]) -> Vec<&'a str> {
    let mut columns: Vec<&str> = Vec::new();
    let named =
        r.pk.iter()
            .chain(&r.key_implies)
            .map(|&i| r.columns[i].name.as_str());
    for c in named.chain(filter.iter().map(String::as_str)) {
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    columns
}

/// Ends the bulk load of each of `names` in turn on `client` (see
/// [`PostgresDestination::finish_bulk`]): key and filter indexes in one transaction, then
/// `ANALYZE`. Returns the tables finished, and the first failure (the tables after it are left
/// in bulk, and the next `finish_bulk` or `ensure_tables` builds them).
async fn finish_tables(
    client: &mut Client,
    schema: &str,
    tables: &HashMap<String, Resolved>,
    filter_indexes: &HashMap<String, Vec<String>>,
    names: &[String],
) -> (Vec<String>, Result<(), DestError>) {
    let mut built = Vec::with_capacity(names.len());
    for name in names {
        let Some(r) = tables.get(name) else {
            continue;
        };
        let filter = filter_indexes.get(name).map(Vec::as_slice).unwrap_or(&[]);
        if let Err(e) = finish_table(client, schema, name, r, filter).await {
            return (built, Err(e));
        }
        built.push(name.clone());
    }
    (built, Ok(()))
}

async fn finish_table(
    client: &mut Client,
    schema: &str,
    name: &str,
    r: &Resolved,
    filter: &[String],
) -> Result<(), DestError> {
    // Minutes on a large first load: say so before, not only after.
    tracing::info!(table = %r.display, "building the key and indexes after a first load");
    let started = std::time::Instant::now();
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_err(&r.display, e))?;
    create_indexes(&tx, schema, name, r, filter).await?;
    tx.commit().await.map_err(|e| sql_err(&r.display, e))?;
    // Statistics now, not when autovacuum gets to it: the next sync finds a changed
    // response's rows by its key and group columns, and without them the planner may
    // scan. Only the columns our statements search by when autovacuum will do the rest:
    // the other columns' statistics were most of the ANALYZE's time, and a column list
    // leaves the table's change count as it is, so autovacuum still analyzes every
    // column on its next round. With autovacuum off nobody would: every column then.
    let q = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let autovacuum: bool = client
        .query_one(
            "SELECT current_setting('autovacuum')::bool AND coalesce((SELECT o.option_value::bool \
             FROM pg_class c, pg_options_to_table(c.reloptions) o \
             WHERE c.oid = $1::text::regclass AND o.option_name = 'autovacuum_enabled'), true)",
            &[&q],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| sql_err(&r.display, e))?;
    let searched: Vec<String> = searched_columns(r, filter)
        .into_iter()
        .map(quote_ident)
        .collect();
    // A table with nothing to search by (none today) gets every column too.
    let columns = if !autovacuum || searched.is_empty() {
        String::new()
    } else {
        format!(" ({})", searched.join(", "))
    };
    client
        .batch_execute(&format!("ANALYZE {q}{columns}"))
        .await
        .map_err(|e| sql_err(&r.display, e))?;
    tracing::info!(
        table = %r.display,
        duration_ms = started.elapsed().as_millis() as u64,
        "built the key and indexes after a first load"
    );
    Ok(())
}

/// Adds the primary key (when missing) and the filter indexes on `columns` of `table`. Index
/// names are per schema; only the target is indexed, never a merge's staging table.
async fn create_indexes<S: AsRef<str>>(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    r: &Resolved,
    columns: &[S],
) -> Result<(), DestError> {
    add_primary_key(tx, schema, table, r).await?;
    for col in columns {
        let col = col.as_ref();
        tx.batch_execute(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {}.{} ({})",
            quote_ident(&index_name(table, col)),
            quote_ident(schema),
            quote_ident(table),
            quote_ident(col)
        ))
        .await
        .map_err(|e| sql_err(&r.display, e))?;
    }
    Ok(())
}

/// Adds the primary key of `table` when it has none (a first load built it last, or was killed
/// before it could). Rows that repeat a key keep the last one written, as an upsert would.
async fn add_primary_key(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    r: &Resolved,
) -> Result<(), DestError> {
    let q = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let err = |e| sql_err(&r.display, e);
    let has_key: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p')",
            &[&q],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(err)?;
    if has_key {
        return Ok(());
    }
    tracing::info!(table = %r.display, "adding the primary key (a first load builds it last)");
    let pk: Vec<String> =
        r.pk.iter()
            .map(|&i| quote_ident(&r.columns[i].name))
            .collect();
    let add = format!("ALTER TABLE {q} ADD PRIMARY KEY ({})", pk.join(", "));
    tx.batch_execute("SAVEPOINT xmbridge_key")
        .await
        .map_err(err)?;
    match tx.batch_execute(&add).await {
        Ok(()) => tx.batch_execute("RELEASE xmbridge_key").await.map_err(err),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO xmbridge_key; RELEASE xmbridge_key")
                .await
                .map_err(err)?;
            // Appended only (no update or delete during a bulk load): the later ctid is the
            // later row.
            let same: Vec<String> = pk.iter().map(|c| format!("a.{c} = b.{c}")).collect();
            let removed = tx
                .execute(
                    &format!(
                        "DELETE FROM {q} a USING {q} b WHERE {} AND a.ctid < b.ctid",
                        same.join(" AND ")
                    ),
                    &[],
                )
                .await
                .map_err(err)?;
            tracing::warn!(table = %r.display, removed, "rows repeating a key were loaded; kept the last of each");
            tx.batch_execute(&add).await.map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// After a failed write: a structured error when the table no longer matches its spec.
async fn diagnose(client: &Client, schema: &str, table: &str, r: &Resolved) -> Option<DestError> {
    let existing = match columns_of(client, schema, table).await {
        Ok(Some(cols)) => cols,
        Ok(None) => {
            return Some(DestError::MissingTable {
                table: r.display.clone(),
            });
        }
        Err(_) => return None,
    };
    for (name, ty) in r.stored_columns() {
        match existing.iter().find(|(n, _)| *n == name) {
            None => {
                return Some(DestError::MissingColumn {
                    table: r.display.clone(),
                    column: name,
                });
            }
            Some((_, found)) => {
                if let Err(e) = check_type(schema, table, r, &name, found, ty) {
                    return Some(e);
                }
            }
        }
    }
    None
}

impl Destination for PostgresDestination {
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
        Box::pin(PostgresDestination::cursor(self, stream))
    }

    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(PostgresDestination::commit(self, commit))
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move {
            let settled = PostgresDestination::settle(self).await;
            // Also after a failed commit: the keys of a bulk load are built either way.
            let finished = self.finish_bulk(None).await;
            let settled = settled?;
            finished?;
            Ok(settled)
        })
    }

    fn settle(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(PostgresDestination::settle(self))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn keys<'a>(
        &'a mut self,
        table: &'a str,
        column: &'a str,
        filter: &'a [(String, Value)],
    ) -> BoxFuture<'a, Result<Vec<String>, DestError>> {
        Box::pin(PostgresDestination::keys(self, table, column, filter))
    }

    fn rows<'a>(&'a mut self, table: &'a str) -> BoxFuture<'a, Result<Vec<Vec<Value>>, DestError>> {
        Box::pin(PostgresDestination::rows(self, table))
    }
}
