//! The history of sync runs (table `svc_sync_runs`) and the schedule's last slot per connection
//! (table `svc_sync_slots`) in the state store.
//!
//! A run's life: `queued` → `running` → `succeeded` | `failed` | `cancelled`; a queued run that
//! is cancelled never starts. A `running` row found at start-up belonged to a server that was
//! killed ([`Runs::interrupted`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, ServiceError};
use crate::users::{from_ms, now_ms, open_db};

/// This module's tables in the state store, as versioned migrations (`xmbridge_state`).
pub static COMPONENT: xmbridge_state::Component = xmbridge_state::Component {
    name: "service_runs",
    migrations: &[
        xmbridge_state::Migration {
            version: 1,
            name: "sync runs and schedule slots",
            sqlite: SCHEMA_V1,
        },
        xmbridge_state::Migration {
            version: 2,
            name: "one queued and one running run per connection",
            sqlite: SCHEMA_V2,
        },
    ],
};

/// At most one queued and one running run per connection, kept by the state store itself (not
/// only by one process's memory). Rows that break it, which no xmbridge before it wrote, are
/// settled first: extra queued runs are cancelled (the oldest stays), extra running ones
/// failed (the newest stays).
const SCHEMA_V2: &str = "
UPDATE svc_sync_runs
   SET status = 'cancelled',
       finished_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000,
       error_message = 'cancelled by the upgrade to schema version 2: another run of this connection was queued before it'
 WHERE status = 'queued'
   AND id NOT IN (SELECT MIN(id) FROM svc_sync_runs WHERE status = 'queued' GROUP BY connection);
UPDATE svc_sync_runs
   SET status = 'failed',
       finished_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000,
       error_message = 'the server stopped during this run (found at the upgrade to schema version 2); the batches it committed are kept'
 WHERE status = 'running'
   AND id NOT IN (SELECT MAX(id) FROM svc_sync_runs WHERE status = 'running' GROUP BY connection);
CREATE UNIQUE INDEX IF NOT EXISTS svc_sync_runs_one_queued ON svc_sync_runs(connection) WHERE status = 'queued';
CREATE UNIQUE INDEX IF NOT EXISTS svc_sync_runs_one_running ON svc_sync_runs(connection) WHERE status = 'running';
";

/// SQLite refused a write because of a constraint (here: a second queued or running run).
fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS svc_sync_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connection TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    requested_by TEXT,
    queued_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    responses INTEGER NOT NULL DEFAULT 0,
    api_calls INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0,
    tables TEXT NOT NULL DEFAULT '{}',
    progress TEXT NOT NULL DEFAULT '{}',
    error_message TEXT,
    error_fix TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS svc_sync_runs_connection ON svc_sync_runs(connection, id);
CREATE INDEX IF NOT EXISTS svc_sync_runs_status ON svc_sync_runs(status);
CREATE TABLE IF NOT EXISTS svc_sync_slots (
    connection TEXT PRIMARY KEY NOT NULL,
    last_slot INTEGER NOT NULL
);
";

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for its turn (one run at a time per connection).
    Queued,
    /// Syncing.
    Running,
    /// Finished without error.
    Succeeded,
    /// Stopped by an error (committed batches are kept).
    Failed,
    /// Cancelled before it started, or stopped at a commit boundary.
    Cancelled,
}

impl RunStatus {
    /// Every status, in life order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the run is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunTrigger {
    /// The schedule.
    Schedule,
    /// A person ("sync now" in the UI or CLI).
    User,
    /// The HTTP API.
    Api,
    /// Queued at start-up for a run a stopped server left unfinished.
    Resume,
}

impl RunTrigger {
    /// `"schedule"`, `"user"`, `"api"` or `"resume"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Schedule => "schedule",
            RunTrigger::User => "user",
            RunTrigger::Api => "api",
            RunTrigger::Resume => "resume",
        }
    }

    fn parse(s: &str) -> Option<RunTrigger> {
        [
            RunTrigger::Schedule,
            RunTrigger::User,
            RunTrigger::Api,
            RunTrigger::Resume,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rows one run wrote to one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounts {
    /// New rows.
    pub inserted: u64,
    /// Rows written over existing ones.
    pub updated: u64,
    /// Deletes and soft-delete marks.
    pub deleted: u64,
}

impl From<xmbridge_sync::TableCounts> for TableCounts {
    fn from(c: xmbridge_sync::TableCounts) -> TableCounts {
        TableCounts {
            inserted: c.inserted,
            updated: c.updated,
            deleted: c.deleted,
        }
    }
}

/// Why a run failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// The error, for a person (never a secret).
    pub message: String,
    /// The fix, when known.
    pub fix: Option<String>,
}

/// One sync run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncRun {
    /// Its id.
    pub id: i64,
    /// The connection synced.
    pub connection: String,
    /// Where it is in its life.
    pub status: RunStatus,
    /// What started it.
    pub trigger: RunTrigger,
    /// Who asked for it (a user name), if a person did.
    pub requested_by: Option<String>,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Responses written.
    pub responses: u64,
    /// Qualtrics API calls made.
    pub api_calls: u64,
    /// Calls retried after a 429.
    pub throttled: u64,
    /// Rows written per table.
    pub tables: BTreeMap<String, TableCounts>,
    /// Progress while running (rows per stream …), as the scheduler writes it.
    pub progress: serde_json::Value,
    /// Why it failed.
    pub error: Option<RunError>,
    /// A cancel was asked for while it ran; it stops at its next commit boundary.
    pub cancel_requested: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub status: RunStatus,
    /// Responses written.
    pub responses: u64,
    /// Qualtrics API calls made.
    pub api_calls: u64,
    /// Calls retried after a 429.
    pub throttled: u64,
    /// Rows written per table.
    pub tables: BTreeMap<String, TableCounts>,
    /// Why it failed.
    pub error: Option<RunError>,
}

/// The run history of one state store. Cheap to clone.
#[derive(Clone)]
pub struct Runs {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl fmt::Debug for Runs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runs")
            .field("path", &self.inner.path)
            .finish()
    }
}

const COLUMNS: &str = "id, connection, status, trigger, requested_by, queued_at, started_at,
    finished_at, responses, api_calls, throttled, tables, progress, error_message, error_fix,
    cancel_requested";

/// A row as stored, checked in [`Runs::run_of`].
struct RawRun {
    id: i64,
    connection: String,
    status: String,
    trigger: String,
    requested_by: Option<String>,
    queued_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    responses: i64,
    api_calls: i64,
    throttled: i64,
    tables: String,
    progress: String,
    error_message: Option<String>,
    error_fix: Option<String>,
    cancel_requested: bool,
}

fn raw_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok(RawRun {
        id: r.get(0)?,
        connection: r.get(1)?,
        status: r.get(2)?,
        trigger: r.get(3)?,
        requested_by: r.get(4)?,
        queued_at: r.get(5)?,
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
        responses: r.get(8)?,
        api_calls: r.get(9)?,
        throttled: r.get(10)?,
        tables: r.get(11)?,
        progress: r.get(12)?,
        error_message: r.get(13)?,
        error_fix: r.get(14)?,
        cancel_requested: r.get(15)?,
    })
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn no_run(id: i64) -> ServiceError {
    ServiceError::refused(
        ErrorKind::NotFound,
        "sync_not_found",
        format!("no sync run with id {id}"),
        None,
    )
}

fn wrong_state(run: &SyncRun, wanted: &str) -> ServiceError {
    ServiceError::refused(
        ErrorKind::Conflict,
        "sync_state",
        format!(
            "sync run {} of '{}' is {}, not {wanted}",
            run.id, run.connection, run.status
        ),
        None,
    )
}

impl Runs {
    /// Opens the run history of the state store at `path`, creating its tables if missing.
    pub fn open(path: &Path) -> Result<Runs> {
        let conn = open_db(path, &COMPONENT)?;
        Ok(Runs {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: path.to_path_buf(),
            }),
        })
    }

    fn run_of(&self, raw: RawRun) -> Result<SyncRun> {
        let damaged = |what: &str, detail: String| ServiceError::Io {
            context: format!(
                "the {what} of sync run {} in {} is damaged",
                raw.id,
                self.inner.path.display()
            ),
            source: std::io::Error::other(detail),
        };
        let status = RunStatus::parse(&raw.status)
            .ok_or_else(|| damaged("status", format!("unknown status {:?}", raw.status)))?;
        let trigger = RunTrigger::parse(&raw.trigger)
            .ok_or_else(|| damaged("trigger", format!("unknown trigger {:?}", raw.trigger)))?;
        let tables: BTreeMap<String, TableCounts> = serde_json::from_str(&raw.tables)
            .map_err(|e| damaged("table counts", e.to_string()))?;
        let progress: serde_json::Value =
            serde_json::from_str(&raw.progress).map_err(|e| damaged("progress", e.to_string()))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(SyncRun {
            id: raw.id,
            connection: raw.connection,
            status,
            trigger,
            requested_by: raw.requested_by,
            queued_at: from_ms(raw.queued_at),
            started_at: raw.started_at.map(from_ms),
            finished_at: raw.finished_at.map(from_ms),
            responses: n(raw.responses),
            api_calls: n(raw.api_calls),
            throttled: n(raw.throttled),
            tables,
            progress,
            error: raw.error_message.map(|message| RunError {
                message,
                fix: raw.error_fix,
            }),
            cancel_requested: raw.cancel_requested,
        })
    }

    fn select(&self, where_: &str, params: &[&dyn rusqlite::ToSql]) -> Result<Vec<SyncRun>> {
        let raws = {
            let conn = self.inner.conn.lock();
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM svc_sync_runs {where_}"))
                .map_err(ServiceError::store("read sync runs"))?;
            stmt.query_map(params, raw_run)
                .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(ServiceError::store("read sync runs"))?
        };
        raws.into_iter().map(|r| self.run_of(r)).collect()
    }

    /// Queues a run of `connection`.
    pub fn queue(
        &self,
        connection: &str,
        trigger: RunTrigger,
        by: Option<&str>,
    ) -> Result<SyncRun> {
        let id = {
            let conn = self.inner.conn.lock();
            match conn.execute(
                "INSERT INTO svc_sync_runs (connection, status, trigger, requested_by, queued_at)
                 VALUES (?1, 'queued', ?2, ?3, ?4)",
                params![connection, trigger.as_str(), by, now_ms()],
            ) {
                Ok(_) => conn.last_insert_rowid(),
                Err(e) if is_constraint(&e) => {
                    return Err(ServiceError::refused(
                        ErrorKind::Conflict,
                        "already_queued",
                        format!("a run of '{connection}' is queued already"),
                        None,
                    ));
                }
                Err(e) => return Err(ServiceError::store("queue a sync run")(e)),
            }
        };
        self.get(id)
    }

    /// Starts a queued run (`Conflict` when it is not queued, e.g. cancelled meanwhile).
    pub fn start(&self, id: i64) -> Result<SyncRun> {
        let updated = self.inner.conn.lock().execute(
            "UPDATE svc_sync_runs SET status = 'running', started_at = ?2
             WHERE id = ?1 AND status = 'queued'",
            params![id, now_ms()],
        );
        let n = match updated {
            Ok(n) => n,
            Err(e) if is_constraint(&e) => {
                let run = self.get(id)?;
                return Err(ServiceError::refused(
                    ErrorKind::Conflict,
                    "already_running",
                    format!(
                        "sync run {id} of '{}' cannot start: another run of it is running",
                        run.connection
                    ),
                    None,
                ));
            }
            Err(e) => return Err(ServiceError::store("start a sync run")(e)),
        };
        let run = self.get(id)?;
        if n == 0 {
            return Err(wrong_state(&run, "queued"));
        }
        Ok(run)
    }

    /// Records a running run's progress (any JSON the scheduler chooses).
    pub fn set_progress(&self, id: i64, progress: &serde_json::Value) -> Result<()> {
        let conn = self.inner.conn.lock();
        let n = conn
            .execute(
                "UPDATE svc_sync_runs SET progress = ?2 WHERE id = ?1",
                params![id, progress.to_string()],
            )
            .map_err(ServiceError::store("record a sync run's progress"))?;
        if n == 0 {
            return Err(no_run(id));
        }
        Ok(())
    }

    /// Records how a run ended. The run must not be finished already (`Conflict`) and the
    /// outcome's status must be a final one (`Invalid`).
    pub fn finish(&self, id: i64, outcome: RunOutcome) -> Result<SyncRun> {
        if !outcome.status.is_finished() {
            return Err(ServiceError::refused(
                ErrorKind::Invalid,
                "sync_state",
                format!("a run cannot finish as {}", outcome.status),
                None,
            ));
        }
        let tables = serde_json::to_string(&outcome.tables).unwrap_or_else(|_| "{}".into());
        let (message, fix) = match outcome.error {
            Some(e) => (Some(e.message), e.fix),
            None => (None, None),
        };
        let n = {
            let conn = self.inner.conn.lock();
            conn.execute(
                "UPDATE svc_sync_runs SET status = ?2, finished_at = ?3, responses = ?4,
                     api_calls = ?5, throttled = ?6, tables = ?7, error_message = ?8,
                     error_fix = ?9
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![
                    id,
                    outcome.status.as_str(),
                    now_ms(),
                    count(outcome.responses),
                    count(outcome.api_calls),
                    count(outcome.throttled),
                    tables,
                    message,
                    fix
                ],
            )
            .map_err(ServiceError::store("finish a sync run"))?
        };
        let run = self.get(id)?;
        if n == 0 {
            return Err(wrong_state(&run, "queued or running"));
        }
        Ok(run)
    }

    /// Asks a run to stop: a queued run is cancelled at once, a running one is marked and stops
    /// at its next commit boundary (the scheduler reads the mark). A finished run is a
    /// `Conflict`.
    pub fn request_cancel(&self, id: i64) -> Result<SyncRun> {
        let status: Option<String> = {
            let mut conn = self.inner.conn.lock();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(ServiceError::store("cancel a sync run"))?;
            let status: Option<String> = tx
                .query_row(
                    "SELECT status FROM svc_sync_runs WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(ServiceError::store("cancel a sync run"))?;
            match status.as_deref() {
                Some("queued") => {
                    tx.execute(
                        "UPDATE svc_sync_runs SET status = 'cancelled', finished_at = ?2,
                             cancel_requested = 1
                         WHERE id = ?1",
                        params![id, now_ms()],
                    )
                    .map_err(ServiceError::store("cancel a sync run"))?;
                }
                Some("running") => {
                    tx.execute(
                        "UPDATE svc_sync_runs SET cancel_requested = 1 WHERE id = ?1",
                        [id],
                    )
                    .map_err(ServiceError::store("cancel a sync run"))?;
                }
                _ => {}
            }
            tx.commit()
                .map_err(ServiceError::store("cancel a sync run"))?;
            status
        };
        let run = self.get(id)?;
        match status.as_deref() {
            Some("queued" | "running") => Ok(run),
            _ => Err(wrong_state(&run, "queued or running")),
        }
    }

    /// One run (`NotFound`).
    pub fn get(&self, id: i64) -> Result<SyncRun> {
        self.select("WHERE id = ?1", &[&id])?
            .pop()
            .ok_or_else(|| no_run(id))
    }

    /// The last `limit` runs of a connection, newest first.
    pub fn list(&self, connection: &str, limit: usize) -> Result<Vec<SyncRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.select(
            "WHERE connection = ?1 ORDER BY id DESC LIMIT ?2",
            &[&connection, &limit],
        )
    }

    /// Every queued run, oldest first.
    pub fn queued(&self) -> Result<Vec<SyncRun>> {
        self.select("WHERE status = 'queued' ORDER BY id", &[])
    }

    /// A connection's queued and running runs, oldest first.
    pub fn active(&self, connection: &str) -> Result<Vec<SyncRun>> {
        self.select(
            "WHERE connection = ?1 AND status IN ('queued', 'running') ORDER BY id",
            &[&connection],
        )
    }

    /// Runs left `running` (by a server that was killed), oldest first.
    pub fn interrupted(&self) -> Result<Vec<SyncRun>> {
        self.select("WHERE status = 'running' ORDER BY id", &[])
    }

    /// The last schedule slot a run was queued for, if any.
    pub fn last_slot(&self, connection: &str) -> Result<Option<DateTime<Utc>>> {
        let conn = self.inner.conn.lock();
        let at: Option<i64> = conn
            .query_row(
                "SELECT last_slot FROM svc_sync_slots WHERE connection = ?1",
                [connection],
                |r| r.get(0),
            )
            .optional()
            .map_err(ServiceError::store("read a schedule slot"))?;
        Ok(at.map(from_ms))
    }

    /// Records the last schedule slot a run was queued for.
    pub fn set_last_slot(&self, connection: &str, at: DateTime<Utc>) -> Result<()> {
        let conn = self.inner.conn.lock();
        conn.execute(
            "INSERT INTO svc_sync_slots (connection, last_slot) VALUES (?1, ?2)
             ON CONFLICT (connection) DO UPDATE SET last_slot = excluded.last_slot",
            params![connection, at.timestamp_millis()],
        )
        .map_err(ServiceError::store("record a schedule slot"))?;
        Ok(())
    }

    /// Takes the schedule slot at `now` for `connection` when the last one taken is at least
    /// `interval` old (or there is none): true when this call took it. One statement, a
    /// compare-and-set in the state store, so processes planning the same schedule at once fire
    /// each slot once between them.
    pub fn claim_slot(
        &self,
        connection: &str,
        now: DateTime<Utc>,
        interval: std::time::Duration,
    ) -> Result<bool> {
        let now_ms = now.timestamp_millis();
        let due_before =
            now_ms.saturating_sub(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX));
        let conn = self.inner.conn.lock();
        let taken: Option<i64> = conn
            .query_row(
                "INSERT INTO svc_sync_slots (connection, last_slot) VALUES (?1, ?2)
                 ON CONFLICT (connection) DO UPDATE SET last_slot = excluded.last_slot
                 WHERE svc_sync_slots.last_slot <= ?3
                 RETURNING last_slot",
                params![connection, now_ms, due_before],
                |r| r.get(0),
            )
            .optional()
            .map_err(ServiceError::store("take a schedule slot"))?;
        Ok(taken.is_some())
    }

    /// How many runs there are in each status (every status present, zero included).
    pub fn counts_by_status(&self) -> Result<BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, u64> = RunStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        let conn = self.inner.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT status, COUNT(*) FROM svc_sync_runs GROUP BY status")
            .map_err(ServiceError::store("count sync runs"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(ServiceError::store("count sync runs"))?;
        for (status, n) in rows {
            out.insert(status, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs() -> (tempfile::TempDir, Runs) {
        let dir = tempfile::tempdir().unwrap();
        let r = Runs::open(&dir.path().join("state.db")).unwrap();
        (dir, r)
    }

    fn outcome(status: RunStatus) -> RunOutcome {
        RunOutcome {
            status,
            responses: 7,
            api_calls: 12,
            throttled: 1,
            tables: BTreeMap::from([(
                "response".to_string(),
                TableCounts {
                    inserted: 5,
                    updated: 2,
                    deleted: 0,
                },
            )]),
            error: None,
        }
    }

    #[test]
    fn a_run_goes_queued_running_finished() {
        let (_d, r) = runs();
        let q = r.queue("acme", RunTrigger::User, Some("lee")).unwrap();
        assert_eq!(q.status, RunStatus::Queued);
        assert_eq!(q.requested_by.as_deref(), Some("lee"));
        assert_eq!(r.active("acme").unwrap().len(), 1);
        let s = r.start(q.id).unwrap();
        assert_eq!(s.status, RunStatus::Running);
        assert!(s.started_at.is_some());
        assert_eq!(r.start(q.id).unwrap_err().kind(), ErrorKind::Conflict);
        r.set_progress(q.id, &serde_json::json!({"responses": 3}))
            .unwrap();
        assert_eq!(r.get(q.id).unwrap().progress["responses"], 3);
        assert_eq!(r.interrupted().unwrap().len(), 1);
        let f = r.finish(q.id, outcome(RunStatus::Succeeded)).unwrap();
        assert_eq!(f.status, RunStatus::Succeeded);
        assert_eq!(f.tables["response"].inserted, 5);
        assert_eq!((f.responses, f.api_calls, f.throttled), (7, 12, 1));
        assert!(f.finished_at.is_some());
        assert!(r.active("acme").unwrap().is_empty());
        assert_eq!(
            r.finish(q.id, outcome(RunStatus::Failed))
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["trigger"], "user");
        assert_eq!(v["tables"]["response"]["updated"], 2);
        assert!(v["error"].is_null());
        assert_eq!(r.get(999).unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn failures_keep_their_error_and_fix() {
        let (_d, r) = runs();
        let q = r.queue("acme", RunTrigger::Schedule, None).unwrap();
        r.start(q.id).unwrap();
        let f = r
            .finish(
                q.id,
                RunOutcome {
                    error: Some(RunError {
                        message: "cannot connect".into(),
                        fix: Some("start the database".into()),
                    }),
                    ..outcome(RunStatus::Failed)
                },
            )
            .unwrap();
        assert_eq!(f.error.unwrap().fix.as_deref(), Some("start the database"));
        assert!(r.finish(q.id, outcome(RunStatus::Running)).is_err());
    }

    #[test]
    fn a_queued_run_is_cancelled_at_once_a_running_one_is_marked() {
        let (_d, r) = runs();
        let a = r.queue("acme", RunTrigger::Api, None).unwrap();
        let other = r.queue("other", RunTrigger::Api, None).unwrap();
        assert_eq!(
            r.queued().unwrap().iter().map(|x| x.id).collect::<Vec<_>>(),
            vec![a.id, other.id]
        );
        r.request_cancel(other.id).unwrap();
        r.start(a.id).unwrap();
        let b = r.queue("acme", RunTrigger::User, None).unwrap();
        let c = r.request_cancel(b.id).unwrap();
        assert_eq!(c.status, RunStatus::Cancelled);
        assert!(c.finished_at.is_some());
        assert_eq!(r.start(b.id).unwrap_err().kind(), ErrorKind::Conflict);
        assert_eq!(
            r.request_cancel(b.id).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        let m = r.request_cancel(a.id).unwrap();
        assert_eq!(m.status, RunStatus::Running);
        assert!(m.cancel_requested);
        r.finish(a.id, outcome(RunStatus::Cancelled)).unwrap();
        let counts = r.counts_by_status().unwrap();
        assert_eq!(counts["cancelled"], 3);
        assert_eq!(counts["queued"], 0);
        assert_eq!(counts.len(), 5);
        assert_eq!(r.list("acme", 1).unwrap()[0].id, b.id);
        assert_eq!(r.list("acme", 10).unwrap().len(), 2);
        assert!(r.list("nobody", 10).unwrap().is_empty());
    }

    #[test]
    fn the_store_keeps_one_queued_and_one_running_run_per_connection() {
        let (d, r) = runs();
        // A second handle, as another process has.
        let other = Runs::open(&d.path().join("state.db")).unwrap();
        let a = r.queue("acme", RunTrigger::Api, None).unwrap();
        let e = other.queue("acme", RunTrigger::Schedule, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("queued already"), "{e}");
        r.start(a.id).unwrap();
        let b = other.queue("acme", RunTrigger::Schedule, None).unwrap();
        // b cannot run beside a: it stays queued.
        let e = other.start(b.id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(
            e.to_string().contains("another run of it is running"),
            "{e}"
        );
        assert_eq!(r.get(b.id).unwrap().status, RunStatus::Queued);
        r.finish(a.id, outcome(RunStatus::Succeeded)).unwrap();
        assert_eq!(other.start(b.id).unwrap().status, RunStatus::Running);
        assert_eq!(
            r.queue("other", RunTrigger::Api, None).unwrap().status,
            RunStatus::Queued,
            "per connection"
        );
    }

    #[test]
    fn the_upgrade_to_version_2_settles_runs_that_break_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let v1 = xmbridge_state::Component {
            name: COMPONENT.name,
            migrations: &COMPONENT.migrations[..1],
        };
        xmbridge_state::migrate(&mut conn, &path, &v1).unwrap();
        for (connection, status) in [
            ("acme", "queued"),
            ("acme", "queued"),
            ("acme", "running"),
            ("acme", "running"),
            ("other", "queued"),
        ] {
            conn.execute(
                "INSERT INTO svc_sync_runs (connection, status, trigger, queued_at) VALUES (?1, ?2, 'api', 0)",
                params![connection, status],
            )
            .unwrap();
        }
        drop(conn);
        let r = Runs::open(&path).unwrap();
        let status = |id: i64| r.get(id).unwrap().status;
        assert_eq!(
            (status(1), status(2), status(3), status(4), status(5)),
            (
                RunStatus::Queued,
                RunStatus::Cancelled,
                RunStatus::Failed,
                RunStatus::Running,
                RunStatus::Queued
            )
        );
        assert!(
            r.get(2)
                .unwrap()
                .error
                .unwrap()
                .message
                .contains("schema version 2"),
            "the reason is recorded"
        );
        assert_eq!(
            r.queue("acme", RunTrigger::Api, None).unwrap_err().kind(),
            ErrorKind::Conflict
        );
    }

    #[test]
    fn slots_are_remembered() {
        let (d, r) = runs();
        assert!(r.last_slot("acme").unwrap().is_none());
        let at = from_ms(1_700_000_000_123);
        r.set_last_slot("acme", at).unwrap();
        r.set_last_slot("acme", at).unwrap();
        // Another handle on the same file sees it (a restarted server).
        let again = Runs::open(&d.path().join("state.db")).unwrap();
        assert_eq!(again.last_slot("acme").unwrap(), Some(at));
    }

    #[test]
    fn a_slot_is_taken_once_and_the_next_one_an_interval_later() {
        let (_d, r) = runs();
        let hour = std::time::Duration::from_secs(3600);
        let t0 = from_ms(1_700_000_000_000);
        assert!(r.claim_slot("acme", t0, hour).unwrap(), "the first slot");
        assert!(
            !r.claim_slot("acme", t0, hour).unwrap(),
            "the same slot again"
        );
        let half = t0 + chrono::Duration::minutes(30);
        assert!(!r.claim_slot("acme", half, hour).unwrap(), "not due yet");
        assert_eq!(r.last_slot("acme").unwrap(), Some(t0));
        let next = t0 + chrono::Duration::hours(1);
        assert!(r.claim_slot("acme", next, hour).unwrap(), "due again");
        assert_eq!(r.last_slot("acme").unwrap(), Some(next));
        assert!(r.claim_slot("other", half, hour).unwrap(), "per connection");
    }

    #[test]
    fn processes_planning_at_once_take_each_slot_once() {
        let (d, _r) = runs();
        let path = d.path().join("state.db");
        let hour = std::time::Duration::from_secs(3600);
        for round in 0..5i64 {
            let at = from_ms(1_700_000_000_000 + round * 3_600_000);
            let taken: usize = (0..4)
                .map(|_| {
                    // A handle each, as separate processes have.
                    let handle = Runs::open(&path).unwrap();
                    std::thread::spawn(move || handle.claim_slot("acme", at, hour).unwrap())
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| usize::from(t.join().unwrap()))
                .sum();
            assert_eq!(taken, 1, "round {round}");
        }
    }
}
