//! The workflow state store: the outbox of events, each step's recorded output, per-workflow run
//! state (paused, credential binding) and linked accounts with their grants.
//!
//! [`Store`] is the trait the outbox, workers and account rules use; [`WorkflowStore`] keeps the
//! tables (all prefixed `wf_`) in the vault's SQLite file (`$XMBRIDGE_HOME/state.db`, WAL, busy
//! timeout) on a connection of its own. A PostgreSQL store (leases with `FOR UPDATE SKIP LOCKED`
//! for several processes) is one more file implementing [`Store`]. It must not touch the vault's
//! tables or hold secrets: tokens and shared keys are sealed in `xmbridge-vault`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use xmbridge_actions::System;
use xmbridge_state::StoreRef;
use xmbridge_state::db::{DbError, Row, StateDb, StateLocation, Tx, Val};
use xmbridge_state::vals;

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("workflow state store {store}: {source}")]
    Database {
        /// The state store.
        store: StoreRef,
        /// The database's error.
        #[source]
        source: DbError,
    },
    /// A row holds something this code cannot read (hand-edited or from a newer version).
    #[error("workflow state store {store}: {what} is not readable ({detail})")]
    Corrupted {
        /// The state store.
        store: StoreRef,
        /// The unreadable value and its row (`the payload of event ev_…`, `the kind of account a`).
        what: String,
        /// Why it could not be read.
        detail: String,
    },
    /// Another worker took the event over (this worker's lease ran out); its work is dropped.
    #[error("event {event}: the lease of worker {owner} ran out and another worker took it over")]
    LeaseLost {
        /// The event's id.
        event: String,
        /// The worker whose lease ran out.
        owner: String,
    },
    /// No such event.
    #[error("no event {event} (see `xmbridge workflow status WORKFLOW`)")]
    NoSuchEvent {
        /// The event id asked for.
        event: String,
    },
    /// An account name is taken.
    #[error("an account named {name} already exists; pick another name or unlink it first")]
    DuplicateAccount {
        /// The name already taken.
        name: String,
    },
    /// No such account.
    #[error("no linked account named {name} (see `xmbridge account list`)")]
    NoSuchAccount {
        /// The account name asked for.
        name: String,
    },
    /// The workflow tables could not be brought to this build's version, or are at a newer one.
    #[error(transparent)]
    Migrate(Box<xmbridge_state::MigrateError>),
}

impl From<xmbridge_state::MigrateError> for StoreError {
    fn from(e: xmbridge_state::MigrateError) -> Self {
        StoreError::Migrate(Box::new(e))
    }
}

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource {
    /// A Qualtrics event subscription POST (`surveyengine.completedResponse.{SV}`).
    Qualtrics,
    /// A new response seen by `xmbridge sync`.
    Sync,
    /// A Salesforce outbound message notification.
    Salesforce,
    /// An inbound ServiceNow call.
    ServiceNow,
    /// Put in by hand or by a test.
    Manual,
}

impl EventSource {
    /// The word stored in the `source` column and shown by `workflow status`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Qualtrics => System::Qualtrics.as_str(),
            EventSource::Sync => "sync",
            EventSource::Salesforce => System::Salesforce.as_str(),
            EventSource::ServiceNow => System::ServiceNow.as_str(),
            EventSource::Manual => "manual",
        }
    }

    fn parse(s: &str) -> Option<EventSource> {
        [
            EventSource::Qualtrics,
            EventSource::Sync,
            EventSource::Salesforce,
            EventSource::ServiceNow,
            EventSource::Manual,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

/// The life of an event in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventState {
    /// Waiting for its `next_attempt_at`.
    Pending,
    /// Leased by a worker (comes back when the lease runs out).
    Running,
    /// Every step done.
    Done,
    /// The workflow's condition was false.
    Skipped,
    /// In the dead letter, with its last error.
    Dead,
}

impl EventState {
    /// Every state, in the order of an event's life (and of `workflow status` counts).
    pub const ALL: [EventState; 5] = [
        EventState::Pending,
        EventState::Running,
        EventState::Done,
        EventState::Skipped,
        EventState::Dead,
    ];

    /// The word stored in the `state` column and shown by `workflow status`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Running => "running",
            EventState::Done => "done",
            EventState::Skipped => "skipped",
            EventState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<EventState> {
        EventState::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl fmt::Display for EventState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to put in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The workflow that will run on it.
    pub workflow: String,
    /// Where it came from.
    pub source: EventSource,
    /// Unique per workflow: the same key again is a duplicate and is dropped (webhook
    /// `ResponseID`, Salesforce notification `Id`, ServiceNow `sys_id` + `sys_updated_on` …).
    pub dedupe_key: String,
    /// What arrived, as JSON: the worker enriches it and the steps' expressions read it.
    pub payload: Value,
}

impl NewEvent {
    /// The event id: derived from workflow and dedupe key, so the delivery keys of a redelivered
    /// webhook are the same as the first time's even if the first event was purged.
    pub fn id(&self) -> String {
        event_id(&self.workflow, &self.dedupe_key)
    }
}

/// `ev_` + 20 hex digits of SHA-256(workflow NUL dedupe key).
pub fn event_id(workflow: &str, dedupe_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(workflow.as_bytes());
    h.update([0u8]);
    h.update(dedupe_key.as_bytes());
    let digest = h.finalize();
    format!("ev_{}", &hex::encode(digest)[..20])
}

/// What `enqueue` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored (committed) under this id.
    New(String),
    /// An event with the same dedupe key exists already: acknowledged and dropped.
    Duplicate(String),
}

impl Enqueued {
    /// The event's id, new or duplicate.
    pub fn id(&self) -> &str {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// One event as stored.
#[derive(Clone, Debug)]
pub struct EventRow {
    /// `ev_…`, see [`event_id`].
    pub id: String,
    /// The workflow that runs on it.
    pub workflow: String,
    /// Where it came from.
    pub source: EventSource,
    /// Unique per workflow, see [`NewEvent::dedupe_key`].
    pub dedupe_key: String,
    /// The event's JSON, enriched once the worker has fetched what it needs.
    pub payload: Value,
    /// Where it is in its life.
    pub state: EventState,
    /// Failed attempts so far (a pause does not count).
    pub attempts: u32,
    /// Unix milliseconds.
    pub next_attempt_at: i64,
    /// The last failed attempt's error; `None` until one fails.
    pub last_error: Option<String>,
    /// The step that failed last.
    pub last_step: Option<String>,
    /// When it was enqueued, Unix milliseconds.
    pub created_at: i64,
    /// When its row last changed, Unix milliseconds.
    pub updated_at: i64,
    /// The lease this caller holds on it (from [`Store::lease_due`]): `<owner>#<token>`, the
    /// token growing on every lease of the event. Every write while it is leased names this,
    /// so a write under a lease that ran out and was taken again is refused
    /// ([`StoreError::LeaseLost`]). `None` for an event read any other way.
    pub lease: Option<String>,
}

/// A workflow's run state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkflowState {
    /// The workflow's name.
    pub workflow: String,
    /// True while its events are held (not leased) until it is resumed.
    pub paused: bool,
    /// Why (`account token expired`, `paused by pat` …).
    pub reason: Option<String>,
    /// The command that fixes it.
    pub fix: Option<String>,
    /// The account whose refused token paused it (resumed when that account is re-authorized).
    pub paused_account: Option<String>,
    /// Who created the workflow (the first editor); only their edits keep the binding.
    pub creator: Option<String>,
    /// Who changed the definition last; `None` when no edit was recorded.
    pub last_editor: Option<String>,
    /// False after an edit by a collaborator who is not the creator, until re-authorized.
    pub binding_valid: bool,
}

/// Kind of linked account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountKind {
    /// OAuth web-server flow: a refresh token sealed in the vault.
    OAuth,
    /// Client credentials (client id, secret, token URL).
    ServerToServer,
}

impl AccountKind {
    /// The word stored in the `kind` column and shown by `account list`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::OAuth => "oauth",
            AccountKind::ServerToServer => "server-to-server",
        }
    }
    fn parse(s: &str) -> Option<AccountKind> {
        match s {
            "oauth" => Some(AccountKind::OAuth),
            "server-to-server" => Some(AccountKind::ServerToServer),
            _ => None,
        }
    }
}

/// A linked Salesforce or ServiceNow account (its secrets live in the vault connection of the
/// same name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    /// The account's name, also its vault connection's.
    pub name: String,
    /// `salesforce` or `servicenow`.
    pub system: String,
    /// The local user who linked it.
    pub owner: String,
    /// OAuth or server-to-server.
    pub kind: AccountKind,
    /// Linked by a brand admin (shareable) rather than privately by a user.
    pub brand: bool,
    /// The Salesforce organization id (`00D…`), when known.
    pub org_id: Option<String>,
    /// False after the provider refused the token, until re-authorized.
    pub token_ok: bool,
    /// When it was linked, Unix milliseconds.
    pub created_at: i64,
}

/// The last time an account's credentials were proven (or failed to be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountCheck {
    /// The account.
    pub account: String,
    /// When, Unix milliseconds.
    pub checked_at: i64,
    /// Whether the system accepted the credentials.
    pub ok: bool,
    /// What was proven, or why it failed (no secret).
    pub message: String,
}

/// Counts per state and the dead letters of one workflow.
#[derive(Clone, Debug, Default)]
pub struct WorkflowStatus {
    /// Number of events in each state; states without events are absent.
    pub counts: BTreeMap<EventState, u64>,
    /// The dead letter, in the order the events were parked.
    pub dead: Vec<DeadEvent>,
    /// Failed attempts charged to the workflow's events (retried, or leading to a dead letter);
    /// a replay resets an event's count.
    pub failed_attempts: u64,
    /// Events with at least one failed attempt (retried, or dead).
    pub retried_events: u64,
}

/// What one lease took: the events now held, and how many due rows could not be read (those went
/// to the dead letter instead).
#[derive(Debug, Default)]
pub struct Leased {
    /// The events now leased to the caller.
    pub events: Vec<EventRow>,
    /// Due rows that could not be read and were parked in the dead letter.
    pub unreadable: usize,
}

impl std::ops::Deref for Leased {
    type Target = Vec<EventRow>;
    fn deref(&self) -> &Vec<EventRow> {
        &self.events
    }
}

impl IntoIterator for Leased {
    type Item = EventRow;
    type IntoIter = std::vec::IntoIter<EventRow>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// A Qualtrics event subscription that xmbridge created (or adopted) for a workflow's webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The Qualtrics subscription id.
    pub subscription_id: String,
    /// The workflow it was made for.
    pub workflow: String,
    /// The Qualtrics connection it was created through.
    pub connection: String,
    /// The event topic (`surveyengine.completedResponse.{SV}`).
    pub topic: String,
    /// Where Qualtrics posts (the publication URL).
    pub url: String,
    /// When it was recorded, Unix milliseconds.
    pub created_at: i64,
}

/// An event in the dead letter, as `workflow status` shows it. Read leniently: a row whose
/// payload cannot be read (the reason it was parked, perhaps) still shows, with a `Null` payload.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadEvent {
    /// The event's id (what `workflow replay --event` takes).
    pub id: String,
    /// Its dedupe key, which identifies it upstream (response id, notification id …).
    pub dedupe_key: String,
    /// Failed attempts before it was parked.
    pub attempts: u32,
    /// The step that failed last (`condition` for the workflow's condition, `-` when the
    /// workflow is no longer defined); `None` when none was recorded.
    pub last_step: Option<String>,
    /// Why it was parked.
    pub last_error: Option<String>,
    /// `Null` when the stored payload is not readable JSON.
    pub payload: Value,
}

/// The operations the outbox, workers, receiver and account rules need from a state store.
pub trait Store: Send + Sync + 'static {
    /// Commits the event (or finds its duplicate) before returning.
    fn enqueue(&self, event: &NewEvent, now_ms: i64) -> Result<Enqueued, StoreError>;
    /// Commits several events (duplicates dropped) in one transaction: all or none are stored.
    fn enqueue_batch(&self, events: &[NewEvent], now_ms: i64) -> Result<Vec<Enqueued>, StoreError>;
    /// Leases up to `limit` due events of workflows that are not paused: pending ones whose time
    /// has come and running ones whose lease ran out (their worker died).
    fn lease_due(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
        limit: usize,
    ) -> Result<Leased, StoreError>;
    /// When the next event becomes due (pending or leased), for workflows not paused.
    fn next_due_at(&self) -> Result<Option<i64>, StoreError>;
    /// Recorded outputs of the event's finished steps, by step name.
    fn step_outputs(&self, event: &str) -> Result<Map<String, Value>, StoreError>;
    /// Records a step as done and extends the lease, in one transaction.
    fn record_step(
        &self,
        event: &str,
        owner: &str,
        step: &str,
        output: &Value,
        now_ms: i64,
        lease: Duration,
    ) -> Result<(), StoreError>;
    /// Replaces the payload (after enrichment) while leased.
    fn set_payload(&self, event: &str, owner: &str, payload: &Value) -> Result<(), StoreError>;
    /// Marks a leased event done or skipped.
    fn complete(
        &self,
        event: &str,
        owner: &str,
        state: EventState,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Counts a failed attempt and schedules the next one.
    // One row update's columns; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn retry_at(
        &self,
        event: &str,
        owner: &str,
        attempts: u32,
        next_ms: i64,
        error: &str,
        step: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Moves a leased event to the dead letter.
    fn dead(
        &self,
        event: &str,
        owner: &str,
        attempts: u32,
        error: &str,
        step: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Hands a leased event back as pending without counting an attempt (pause).
    fn release(&self, event: &str, owner: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Moves dead events back to pending with fresh attempts: one (`event`) or all of the
    /// workflow's. Returns how many.
    fn replay(&self, workflow: &str, event: Option<&str>, now_ms: i64) -> Result<u64, StoreError>;
    /// The event with this id, or [`StoreError::NoSuchEvent`].
    fn get_event(&self, event: &str) -> Result<EventRow, StoreError>;
    /// The workflow's counts per state and its dead letter.
    fn status(&self, workflow: &str) -> Result<WorkflowStatus, StoreError>;

    /// The workflow's run state; a workflow never recorded is running and bound.
    fn workflow_state(&self, workflow: &str) -> Result<WorkflowState, StoreError>;
    /// Pauses the workflow with why and the command that fixes it; `account` is the account
    /// whose refused token caused it, if any.
    fn set_paused(
        &self,
        workflow: &str,
        reason: &str,
        fix: &str,
        account: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Resumes the workflow, clearing the reason, fix and account of its pause.
    fn resume(&self, workflow: &str) -> Result<(), StoreError>;
    /// Workflows paused because of this account's refused token.
    fn paused_on_account(&self, account: &str) -> Result<Vec<String>, StoreError>;
    /// Records an edit; the first editor is the creator, an edit by anyone else drops the
    /// credential binding. Returns the new state.
    fn note_edit(&self, workflow: &str, editor: &str) -> Result<WorkflowState, StoreError>;
    /// Records the definition seen at start-up. The first time, `owner` becomes the creator; a
    /// changed `fingerprint` is an edit by `editor` (dropping the binding unless the editor is
    /// the creator; an unknown editor keeps it). Returns the new state.
    fn note_definition(
        &self,
        workflow: &str,
        fingerprint: &str,
        editor: Option<&str>,
        owner: &str,
    ) -> Result<WorkflowState, StoreError>;
    /// Records a definition just saved by `editor` (`workflow add`): a new one's creator is its
    /// owner; replacing one that `previous_owner` owned is an edit when its meaning changed
    /// (dropping the binding unless the editor is the owner whose credentials it uses) and a
    /// transfer when the owner changed. The fingerprint is stored, so the next runner to start
    /// does not count the same edit again under another name. Returns the new state.
    fn note_saved(
        &self,
        workflow: &str,
        fingerprint: &str,
        previous_owner: Option<&str>,
        owner: &str,
        editor: Option<&str>,
    ) -> Result<WorkflowState, StoreError>;
    /// Records that the workflow passed from `from` to `owner` (a transfer), done by `by`. The
    /// binding follows the owner: the new owner becomes the one whose re-authorization restores
    /// it, and it is dropped unless `by` is the new owner. Returns the new state.
    fn note_owner(
        &self,
        workflow: &str,
        from: &str,
        owner: &str,
        by: Option<&str>,
    ) -> Result<WorkflowState, StoreError>;
    /// Re-establishes the credential binding (re-authorization).
    fn rebind(&self, workflow: &str) -> Result<(), StoreError>;
    /// Workflows whose binding is dropped.
    fn unbound_workflows(&self) -> Result<Vec<String>, StoreError>;

    /// Records a new account; [`StoreError::DuplicateAccount`] if the name is taken.
    fn insert_account(&self, account: &AccountRow) -> Result<(), StoreError>;
    /// The account of that name, or [`StoreError::NoSuchAccount`].
    fn get_account(&self, name: &str) -> Result<AccountRow, StoreError>;
    /// Every account, by name.
    fn list_accounts(&self) -> Result<Vec<AccountRow>, StoreError>;
    /// Deletes the account's row, or [`StoreError::NoSuchAccount`].
    fn remove_account(&self, name: &str) -> Result<(), StoreError>;
    /// Marks the account's token refused (`false`) or working again (`true`).
    fn set_token_ok(&self, name: &str, ok: bool) -> Result<(), StoreError>;
    /// Records the account's Salesforce organization id once it is learnt.
    fn set_org_id(&self, name: &str, org_id: &str) -> Result<(), StoreError>;
    /// Renames the account `old` to `new` with its grants, its last check and the pauses that
    /// name it, in one transaction; [`StoreError::DuplicateAccount`] if `new` is taken.
    fn rename_account(&self, old: &str, new: &str) -> Result<(), StoreError>;
    /// Records the outcome of proving the account's credentials (`account test`, a link).
    fn record_account_check(&self, check: &AccountCheck) -> Result<(), StoreError>;
    /// The account's last recorded check, if any.
    fn account_check(&self, account: &str) -> Result<Option<AccountCheck>, StoreError>;
    /// Shares the account with `user` (granting twice is no error).
    fn grant(&self, account: &str, user: &str) -> Result<(), StoreError>;
    /// The users the account is shared with, by name.
    fn grants(&self, account: &str) -> Result<Vec<String>, StoreError>;

    /// Remembers a Qualtrics event subscription made for a workflow (replacing one of that id).
    fn record_subscription(&self, sub: &SubscriptionRecord) -> Result<(), StoreError>;
    /// Every remembered subscription, oldest first.
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError>;
    /// Forgets a remembered subscription (deleted upstream or gone); unknown ids are no error.
    fn forget_subscription(&self, subscription_id: &str) -> Result<(), StoreError>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The workflow tables of a state store (SQLite or PostgreSQL).
pub struct WorkflowStore {
    db: StateDb,
}

impl fmt::Debug for WorkflowStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowStore")
            .field("store", self.db.store())
            .finish()
    }
}

/// What [`WorkflowStore::outbox_stats`] found.
#[derive(Clone, Debug, Default)]
pub struct OutboxStats {
    /// Events by the word of their state (`pending`, `running`, `done`, `skipped`, `dead`).
    pub by_state: BTreeMap<String, u64>,
    /// Delivered events whose delivery took at most each bound (cumulative, same order).
    pub latency_buckets: Vec<u64>,
    /// Delivered events.
    pub delivered: u64,
    /// Their delivery times added up, in milliseconds.
    pub latency_sum_ms: u64,
}

/// The workflow store's tables in the state store, as versioned migrations (`xmbridge_state`).
pub static COMPONENT: xmbridge_state::Component = xmbridge_state::Component {
    name: "workflows",
    migrations: &[
        xmbridge_state::Migration {
            version: 1,
            name: "events, workflow state, accounts, subscriptions",
            sqlite: SCHEMA_V1,
            postgres: PG_SCHEMA_V1,
        },
        xmbridge_state::Migration {
            version: 2,
            name: "lease tokens",
            // Grows by one on every lease of the event: the lease id is `<owner>#<token>`, so a
            // worker whose lease was taken over, even by itself, cannot write with the old one.
            sqlite: "ALTER TABLE wf_events ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0",
            postgres: "ALTER TABLE wf_events ADD COLUMN IF NOT EXISTS lease_token BIGINT NOT NULL DEFAULT 0",
        },
    ],
    tables: &[
        "wf_events",
        "wf_step_results",
        "wf_workflow_state",
        "wf_accounts",
        "wf_subscriptions",
        "wf_account_grants",
        "wf_account_checks",
    ],
};

/// [`SCHEMA_V1`] in PostgreSQL's dialect: the same tables and columns.
const PG_SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS wf_events (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    source          TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    last_step       TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (workflow, dedupe_key)
);
CREATE INDEX IF NOT EXISTS wf_events_due ON wf_events (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS wf_events_workflow ON wf_events (workflow, state);
CREATE TABLE IF NOT EXISTS wf_step_results (
    event_id TEXT NOT NULL,
    step     TEXT NOT NULL,
    output   TEXT NOT NULL,
    done_at  BIGINT NOT NULL,
    PRIMARY KEY (event_id, step)
);
CREATE TABLE IF NOT EXISTS wf_workflow_state (
    workflow       TEXT PRIMARY KEY,
    paused         BIGINT NOT NULL DEFAULT 0,
    reason         TEXT,
    fix            TEXT,
    paused_account TEXT,
    creator        TEXT,
    last_editor    TEXT,
    binding_valid  BIGINT NOT NULL DEFAULT 1,
    fingerprint    TEXT
);
CREATE TABLE IF NOT EXISTS wf_accounts (
    name       TEXT PRIMARY KEY,
    system     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    brand      BIGINT NOT NULL,
    org_id     TEXT,
    token_ok   BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS wf_subscriptions (
    subscription_id TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    connection      TEXT NOT NULL,
    topic           TEXT NOT NULL,
    url             TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS wf_account_grants (
    account TEXT NOT NULL REFERENCES wf_accounts(name) ON DELETE CASCADE,
    \"user\"  TEXT NOT NULL,
    PRIMARY KEY (account, \"user\")
);
CREATE TABLE IF NOT EXISTS wf_account_checks (
    account    TEXT PRIMARY KEY REFERENCES wf_accounts(name) ON DELETE CASCADE,
    checked_at BIGINT NOT NULL,
    ok         BIGINT NOT NULL,
    message    TEXT NOT NULL
);
";

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS wf_events (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    source          TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    last_step       TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (workflow, dedupe_key)
);
CREATE INDEX IF NOT EXISTS wf_events_due ON wf_events (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS wf_events_workflow ON wf_events (workflow, state);
CREATE TABLE IF NOT EXISTS wf_step_results (
    event_id TEXT NOT NULL,
    step     TEXT NOT NULL,
    output   TEXT NOT NULL,
    done_at  INTEGER NOT NULL,
    PRIMARY KEY (event_id, step)
);
CREATE TABLE IF NOT EXISTS wf_workflow_state (
    workflow       TEXT PRIMARY KEY,
    paused         INTEGER NOT NULL DEFAULT 0,
    reason         TEXT,
    fix            TEXT,
    paused_account TEXT,
    creator        TEXT,
    last_editor    TEXT,
    binding_valid  INTEGER NOT NULL DEFAULT 1,
    fingerprint    TEXT
);
CREATE TABLE IF NOT EXISTS wf_accounts (
    name       TEXT PRIMARY KEY,
    system     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    brand      INTEGER NOT NULL,
    org_id     TEXT,
    token_ok   INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wf_subscriptions (
    subscription_id TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    connection      TEXT NOT NULL,
    topic           TEXT NOT NULL,
    url             TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wf_account_grants (
    account TEXT NOT NULL REFERENCES wf_accounts(name) ON DELETE CASCADE,
    user    TEXT NOT NULL,
    PRIMARY KEY (account, user)
);
CREATE TABLE IF NOT EXISTS wf_account_checks (
    account    TEXT PRIMARY KEY REFERENCES wf_accounts(name) ON DELETE CASCADE,
    checked_at INTEGER NOT NULL,
    ok         INTEGER NOT NULL,
    message    TEXT NOT NULL
);
";

const EVENT_COLUMNS: &str = "id, workflow, source, dedupe_key, payload, state, attempts, \
     next_attempt_at, last_error, last_step, created_at, updated_at";

struct RawEvent {
    id: String,
    workflow: String,
    source: String,
    dedupe_key: String,
    payload: String,
    state: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    last_step: Option<String>,
    created_at: i64,
    updated_at: i64,
}

fn raw_event(r: &Row) -> Result<RawEvent, DbError> {
    raw_event_at(r, 0)
}

/// [`EVENT_COLUMNS`] starting at column `at`.
fn raw_event_at(r: &Row, at: usize) -> Result<RawEvent, DbError> {
    Ok(RawEvent {
        id: r.get(at)?,
        workflow: r.get(at + 1)?,
        source: r.get(at + 2)?,
        dedupe_key: r.get(at + 3)?,
        payload: r.get(at + 4)?,
        state: r.get(at + 5)?,
        attempts: r.get(at + 6)?,
        next_attempt_at: r.get(at + 7)?,
        last_error: r.get(at + 8)?,
        last_step: r.get(at + 9)?,
        created_at: r.get(at + 10)?,
        updated_at: r.get(at + 11)?,
    })
}

struct RawAccount {
    name: String,
    system: String,
    owner: String,
    kind: String,
    brand: bool,
    org_id: Option<String>,
    token_ok: bool,
    created_at: i64,
}

fn raw_account(r: &Row) -> Result<RawAccount, DbError> {
    Ok(RawAccount {
        name: r.get(0)?,
        system: r.get(1)?,
        owner: r.get(2)?,
        kind: r.get(3)?,
        brand: r.get(4)?,
        org_id: r.get(5)?,
        token_ok: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const ACCOUNT_COLUMNS: &str = "name, system, owner, kind, brand, org_id, token_ok, created_at";

/// Leases exclude workflows paused or with a dropped credential binding.
const NOT_HELD: &str = "workflow NOT IN (SELECT workflow FROM wf_workflow_state \
     WHERE paused = 1 OR binding_valid = 0)";

impl WorkflowStore {
    /// Opens (creating tables if missing) the store at `path`, normally `Home::state_db()`.
    pub fn open(path: impl AsRef<Path>) -> Result<WorkflowStore, StoreError> {
        WorkflowStore::open_at(&StateLocation::File(path.as_ref().to_path_buf()))
    }

    /// The same on any state store, SQLite or PostgreSQL.
    pub fn open_at(at: &StateLocation) -> Result<WorkflowStore, StoreError> {
        let db = match at {
            // FULL: an acknowledged webhook must survive a power cut, not only a process kill.
            // (PostgreSQL's commits are durable by default.)
            StateLocation::File(path) => {
                let conn = xmbridge_state::db::open_sqlite_durable(path)
                    .and_then(|conn| conn.busy_timeout(BUSY_TIMEOUT).map(|()| conn))
                    .map_err(|source| StoreError::Database {
                        store: at.store(),
                        source: DbError::Sqlite(source),
                    })?;
                StateDb::from_sqlite(conn, path)
            }
            StateLocation::Postgres(worker) => StateDb::on_postgres(worker),
        };
        let store = WorkflowStore { db };
        store.db.migrate(&COMPONENT).map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// The state store, for messages.
    pub fn store(&self) -> &StoreRef {
        self.db.store()
    }

    /// Up to `limit` events of `workflow` in `state`, most recently changed first (what the
    /// service's API lists). A row that cannot be read is skipped, not fatal: the dead letter
    /// of [`Store::status`] still shows it.
    pub fn events(
        &self,
        workflow: &str,
        state: EventState,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM wf_events WHERE workflow = ?1 AND state = ?2
                     ORDER BY updated_at DESC, id LIMIT ?3"
                ),
                &vals![
                    workflow,
                    state.as_str(),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .filter_map(|r| raw_event(r).ok())
            .filter_map(|raw| self.event(raw).ok())
            .collect())
    }

    /// Events of every workflow by state, and how long the delivered ones (`done`) took from
    /// arrival in the outbox to delivery: the count at or below each of `bounds_ms` (cumulative,
    /// as a Prometheus histogram wants), their number and their sum in milliseconds. One read
    /// transaction, so `/metrics` and `/readyz` also prove the store answers.
    pub fn outbox_stats(&self, bounds_ms: &[i64]) -> Result<OutboxStats, StoreError> {
        let (states, latencies) = self
            .db
            .read(|tx| {
                let states = tx.query("SELECT state, COUNT(*) FROM wf_events GROUP BY state", &[])?;
                let latencies = tx.query(
                    "SELECT CASE WHEN updated_at > created_at THEN updated_at - created_at ELSE 0 END
                     FROM wf_events WHERE state = 'done'",
                    &[],
                )?;
                Ok::<_, DbError>((states, latencies))
            })
            .map_err(|e| self.err(e))?;
        let mut by_state = BTreeMap::new();
        for r in &states {
            let state: String = r.get(0).map_err(|e| self.err(e))?;
            let n: i64 = r.get(1).map_err(|e| self.err(e))?;
            by_state.insert(state, n.max(0) as u64);
        }
        let mut buckets = vec![0u64; bounds_ms.len()];
        let (mut count, mut sum_ms) = (0u64, 0i64);
        for r in &latencies {
            let ms: i64 = r.get(0).map_err(|e| self.err(e))?;
            count += 1;
            sum_ms = sum_ms.saturating_add(ms);
            for (b, bound) in buckets.iter_mut().zip(bounds_ms) {
                if ms <= *bound {
                    *b += 1;
                }
            }
        }
        Ok(OutboxStats {
            by_state,
            latency_buckets: buckets,
            delivered: count,
            latency_sum_ms: sum_ms.max(0) as u64,
        })
    }

    fn err(&self, source: DbError) -> StoreError {
        match source {
            DbError::Migrate(m) => StoreError::Migrate(m),
            source => StoreError::Database {
                store: self.store().clone(),
                source,
            },
        }
    }

    fn event(&self, raw: RawEvent) -> Result<EventRow, StoreError> {
        event_of(self.store(), raw)
    }

    fn account(&self, raw: RawAccount) -> Result<AccountRow, StoreError> {
        let kind = AccountKind::parse(&raw.kind).ok_or_else(|| StoreError::Corrupted {
            store: self.store().clone(),
            what: format!("the kind of account {}", raw.name),
            detail: raw.kind.clone(),
        })?;
        Ok(AccountRow {
            name: raw.name,
            system: raw.system,
            owner: raw.owner,
            kind,
            brand: raw.brand,
            org_id: raw.org_id,
            token_ok: raw.token_ok,
            created_at: raw.created_at,
        })
    }

    /// Runs an UPDATE on a leased event (`?1` the event, `?2` the lease); zero rows means the
    /// lease is gone.
    fn leased_update(
        &self,
        event: &str,
        owner: &str,
        sql: &str,
        extra: &[Val],
    ) -> Result<(), StoreError> {
        let mut args = vals![event, owner].to_vec();
        args.extend_from_slice(extra);
        let n = self.db.exec(sql, &args).map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::LeaseLost {
                event: event.to_string(),
                owner: owner.to_string(),
            });
        }
        Ok(())
    }

    /// Moves the recorded creator to `owner` when it was someone else, dropping the binding
    /// unless `by` is the new owner. A workflow never seen before just gets its creator.
    fn change_owner(
        tx: &mut Tx<'_>,
        workflow: &str,
        owner: &str,
        by: Option<&str>,
    ) -> Result<(), DbError> {
        tx.exec(
            "UPDATE wf_workflow_state SET
                 binding_valid = CASE WHEN creator IS NULL OR ?3 = ?2 THEN binding_valid
                                      ELSE 0 END,
                 last_editor = CASE WHEN creator IS NULL THEN last_editor
                                    ELSE COALESCE(?3, last_editor) END,
                 creator = ?2
             WHERE workflow = ?1 AND (creator IS NULL OR creator <> ?2)",
            &vals![workflow, owner, by],
        )?;
        Ok(())
    }

    fn ensure_state_row(tx: &mut Tx<'_>, workflow: &str) -> Result<(), DbError> {
        tx.exec(
            "INSERT INTO wf_workflow_state (workflow) VALUES (?1) ON CONFLICT DO NOTHING",
            &vals![workflow],
        )
        .map(|_| ())
    }

    /// Runs `work` in one transaction after making sure `workflow` has its state row, then
    /// reads the workflow's state.
    fn on_state_row(
        &self,
        workflow: &str,
        work: impl FnOnce(&mut Tx<'_>, &str) -> Result<(), DbError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let workflow = workflow.to_string();
        self.db
            .tx(move |tx| {
                Self::ensure_state_row(tx, &workflow)?;
                work(tx, &workflow)
            })
            .map_err(|e| self.err(e))
    }
}

/// An event row as the code uses it; what cannot be read is [`StoreError::Corrupted`].
fn event_of(store: &StoreRef, raw: RawEvent) -> Result<EventRow, StoreError> {
    let corrupted = |what: &str, detail: String| StoreError::Corrupted {
        store: store.clone(),
        what: format!("{what} of event {}", raw.id),
        detail,
    };
    let payload =
        serde_json::from_str(&raw.payload).map_err(|e| corrupted("the payload", e.to_string()))?;
    let state =
        EventState::parse(&raw.state).ok_or_else(|| corrupted("the state", raw.state.clone()))?;
    let source = EventSource::parse(&raw.source)
        .ok_or_else(|| corrupted("the source", raw.source.clone()))?;
    Ok(EventRow {
        id: raw.id,
        workflow: raw.workflow,
        source,
        dedupe_key: raw.dedupe_key,
        payload,
        state,
        attempts: u32::try_from(raw.attempts).unwrap_or(0),
        next_attempt_at: raw.next_attempt_at,
        last_error: raw.last_error,
        last_step: raw.last_step,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
        lease: None,
    })
}

/// The PostgreSQL channel a new event is announced on when its transaction commits, so that
/// idle delivery workers of other servers on the same store wake at once (`LISTEN
/// xmbridge_outbox`) rather than at their next poll.
pub const NEW_EVENTS_CHANNEL: &str = "xmbridge_outbox";

/// Inserts one event unless its dedupe key is taken.
fn insert_event(tx: &mut Tx<'_>, event: &NewEvent, now_ms: i64) -> Result<Enqueued, DbError> {
    let id = event.id();
    let n = tx.exec(
        "INSERT INTO wf_events (id, workflow, source, dedupe_key, payload, state, attempts,
             next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, ?6)
         ON CONFLICT DO NOTHING",
        &vals![
            &id,
            &event.workflow,
            event.source.as_str(),
            &event.dedupe_key,
            event.payload.to_string(),
            now_ms
        ],
    )?;
    if n == 1 {
        if tx.is_postgres() {
            // Sent when the transaction commits, and once per transaction however many events
            // it holds (PostgreSQL folds equal notifications).
            tx.query_opt("SELECT pg_notify(?1, '')::text", &vals![NEW_EVENTS_CHANNEL])?;
        }
        return Ok(Enqueued::New(id));
    }
    let existing: Option<String> = match tx.query_opt(
        "SELECT id FROM wf_events WHERE workflow = ?1 AND dedupe_key = ?2",
        &vals![&event.workflow, &event.dedupe_key],
    )? {
        Some(r) => Some(r.get(0)?),
        None => None,
    };
    Ok(Enqueued::Duplicate(existing.unwrap_or(id)))
}

/// A value of a damaged row as text, whatever it holds (so the dead letter still shows it).
fn loose_text(v: &Val) -> Option<String> {
    match v {
        Val::Null => None,
        Val::Int(n) => Some(n.to_string()),
        Val::Text(t) => Some(t.clone()),
        Val::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

impl Store for WorkflowStore {
    fn enqueue_batch(&self, events: &[NewEvent], now_ms: i64) -> Result<Vec<Enqueued>, StoreError> {
        let events = events.to_vec();
        // One transaction: one fsync for a sync's whole commit of responses, not one per event.
        self.db
            .tx(move |tx| {
                events
                    .iter()
                    .map(|e| insert_event(tx, e, now_ms))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| self.err(e))
    }

    fn enqueue(&self, event: &NewEvent, now_ms: i64) -> Result<Enqueued, StoreError> {
        let event = event.clone();
        self.db
            .tx(move |tx| insert_event(tx, &event, now_ms))
            .map_err(|e| self.err(e))
    }

    fn lease_due(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
        limit: usize,
    ) -> Result<Leased, StoreError> {
        let until = now_ms + lease.as_millis() as i64;
        let owner = owner.to_string();
        let store = self.store().clone();
        let (leased, unreadable) = self
            .db
            .tx(move |tx| {
                // SQLite: the immediate transaction already excludes every other writer.
                // PostgreSQL: rows another worker is leasing right now are skipped, not waited
                // for, and never leased twice.
                let skip_locked = if tx.is_postgres() {
                    " FOR UPDATE SKIP LOCKED"
                } else {
                    ""
                };
                let rows = tx.query(
                    &format!(
                        "SELECT CAST(id AS TEXT), {EVENT_COLUMNS} FROM wf_events
                         WHERE ((state = 'pending' AND next_attempt_at <= ?1)
                             OR (state = 'running' AND lease_until < ?1))
                           AND {NOT_HELD}
                         ORDER BY next_attempt_at, created_at LIMIT ?2{skip_locked}"
                    ),
                    &vals![now_ms, limit as i64],
                )?;
                // Each row is read on its own: a row this code cannot read goes to the dead
                // letter with the reason instead of failing every lease.
                let mut good = Vec::new();
                let mut unreadable: Vec<(String, String)> = Vec::new();
                for row in &rows {
                    let label: String = row.get(0)?;
                    let read = raw_event_at(row, 1)
                        .map_err(|e| StoreError::Corrupted {
                            store: store.clone(),
                            what: format!("event {label}"),
                            detail: e.to_string(),
                        })
                        .and_then(|raw| event_of(&store, raw));
                    match read {
                        Ok(ev) => good.push(ev),
                        Err(e) => unreadable.push((label, e.to_string())),
                    }
                }
                for ev in &mut good {
                    let lease: String = tx
                        .query_opt(
                            "UPDATE wf_events SET state = 'running',
                                 lease_owner = ?2 || '#' || CAST(lease_token + 1 AS TEXT),
                                 lease_token = lease_token + 1, lease_until = ?3, updated_at = ?4
                             WHERE id = ?1 RETURNING lease_owner",
                            &vals![&ev.id, &owner, until, now_ms],
                        )?
                        .map_or(Ok(String::new()), |r| r.get(0))?;
                    ev.lease = Some(lease);
                }
                for (label, error) in &unreadable {
                    let why = format!(
                        "{error}; it cannot be delivered: repair or delete the row, then replay it \
                         with `xmbridge workflow replay`"
                    );
                    tx.exec(
                        "UPDATE wf_events SET state = 'dead', lease_owner = NULL,
                             lease_until = NULL, last_error = ?2, updated_at = ?3
                         WHERE CAST(id AS TEXT) = ?1",
                        &vals![label, why, now_ms],
                    )?;
                }
                Ok::<_, DbError>((good, unreadable))
            })
            .map_err(|e| self.err(e))?;
        for (label, error) in &unreadable {
            tracing::error!(event = %label, error = %error, "an outbox row could not be read; it was moved to the dead letter");
        }
        Ok(Leased {
            events: leased
                .into_iter()
                .map(|mut ev| {
                    ev.state = EventState::Running;
                    ev
                })
                .collect(),
            unreadable: unreadable.len(),
        })
    }

    fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        self.db
            .query_opt(
                &format!(
                    "SELECT MIN(CASE state WHEN 'pending' THEN next_attempt_at ELSE lease_until END)
                     FROM wf_events WHERE state IN ('pending', 'running') AND {NOT_HELD}"
                ),
                &[],
            )
            .and_then(|r| r.map_or(Ok(None), |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    fn step_outputs(&self, event: &str) -> Result<Map<String, Value>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT step, output FROM wf_step_results WHERE event_id = ?1",
                &vals![event],
            )
            .map_err(|e| self.err(e))?;
        let mut out = Map::new();
        for r in rows {
            let step: String = r.get(0).map_err(|e| self.err(e))?;
            let output: String = r.get(1).map_err(|e| self.err(e))?;
            let v = serde_json::from_str(&output).map_err(|e| StoreError::Corrupted {
                store: self.store().clone(),
                what: format!("the output of step {step} of event {event}"),
                detail: e.to_string(),
            })?;
            out.insert(step, v);
        }
        Ok(out)
    }

    fn record_step(
        &self,
        event: &str,
        owner: &str,
        step: &str,
        output: &Value,
        now_ms: i64,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let args = vals![event, owner, now_ms + lease.as_millis() as i64, now_ms];
        let step_row = vals![event, step, output.to_string(), now_ms];
        let held = self
            .db
            .tx(move |tx| {
                let n = tx.exec(
                    "UPDATE wf_events SET lease_until = ?3, updated_at = ?4
                     WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                    &args,
                )?;
                if n == 0 {
                    return Ok(false);
                }
                tx.exec(
                    "INSERT INTO wf_step_results (event_id, step, output, done_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (event_id, step) DO UPDATE SET
                         output = excluded.output, done_at = excluded.done_at",
                    &step_row,
                )?;
                Ok::<_, DbError>(true)
            })
            .map_err(|e| self.err(e))?;
        if !held {
            return Err(StoreError::LeaseLost {
                event: event.to_string(),
                owner: owner.to_string(),
            });
        }
        Ok(())
    }

    fn set_payload(&self, event: &str, owner: &str, payload: &Value) -> Result<(), StoreError> {
        self.leased_update(
            event,
            owner,
            "UPDATE wf_events SET payload = ?3
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
            &vals![payload.to_string()],
        )
    }

    fn complete(
        &self,
        event: &str,
        owner: &str,
        state: EventState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.leased_update(
            event,
            owner,
            "UPDATE wf_events SET state = ?3, lease_owner = NULL, lease_until = NULL,
                 updated_at = ?4
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
            &vals![state.as_str(), now_ms],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn retry_at(
        &self,
        event: &str,
        owner: &str,
        attempts: u32,
        next_ms: i64,
        error: &str,
        step: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.leased_update(
            event,
            owner,
            "UPDATE wf_events SET state = 'pending', attempts = ?3, next_attempt_at = ?4,
                 last_error = ?5, last_step = ?6, lease_owner = NULL, lease_until = NULL,
                 updated_at = ?7
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
            &vals![attempts, next_ms, error, step, now_ms],
        )
    }

    fn dead(
        &self,
        event: &str,
        owner: &str,
        attempts: u32,
        error: &str,
        step: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.leased_update(
            event,
            owner,
            "UPDATE wf_events SET state = 'dead', attempts = ?3, last_error = ?4, last_step = ?5,
                 lease_owner = NULL, lease_until = NULL, updated_at = ?6
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
            &vals![attempts, error, step, now_ms],
        )
    }

    fn release(&self, event: &str, owner: &str, now_ms: i64) -> Result<(), StoreError> {
        self.leased_update(
            event,
            owner,
            "UPDATE wf_events SET state = 'pending', lease_owner = NULL, lease_until = NULL,
                 updated_at = ?3
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
            &vals![now_ms],
        )
    }

    fn replay(&self, workflow: &str, event: Option<&str>, now_ms: i64) -> Result<u64, StoreError> {
        let n = match event {
            Some(id) => {
                let n = self
                    .db
                    .exec(
                        "UPDATE wf_events SET state = 'pending', attempts = 0, next_attempt_at = ?3,
                             updated_at = ?3
                         WHERE id = ?1 AND workflow = ?2 AND state = 'dead'",
                        &vals![id, workflow, now_ms],
                    )
                    .map_err(|e| self.err(e))?;
                if n == 0 {
                    let exists = self
                        .db
                        .query_opt(
                            "SELECT state FROM wf_events WHERE id = ?1 AND workflow = ?2",
                            &vals![id, workflow],
                        )
                        .map_err(|e| self.err(e))?;
                    if exists.is_none() {
                        return Err(StoreError::NoSuchEvent {
                            event: id.to_string(),
                        });
                    }
                }
                n
            }
            None => self
                .db
                .exec(
                    "UPDATE wf_events SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                         updated_at = ?2
                     WHERE workflow = ?1 AND state = 'dead'",
                    &vals![workflow, now_ms],
                )
                .map_err(|e| self.err(e))?,
        };
        Ok(n)
    }

    fn get_event(&self, event: &str) -> Result<EventRow, StoreError> {
        let row = self
            .db
            .query_opt(
                &format!("SELECT {EVENT_COLUMNS} FROM wf_events WHERE id = ?1"),
                &vals![event],
            )
            .map_err(|e| self.err(e))?;
        match row {
            Some(r) => {
                let raw = raw_event(&r).map_err(|e| StoreError::Corrupted {
                    store: self.store().clone(),
                    what: format!("event {event}"),
                    detail: e.to_string(),
                })?;
                self.event(raw)
            }
            None => Err(StoreError::NoSuchEvent {
                event: event.to_string(),
            }),
        }
    }

    fn status(&self, workflow: &str) -> Result<WorkflowStatus, StoreError> {
        let args = vals![workflow];
        let (counts, dead) = self
            .db
            .read(move |tx| {
                // CAST: a damaged row's text in `attempts` must not turn the sum into a REAL.
                let counts = tx.query(
                    "SELECT state, COUNT(*), COALESCE(SUM(CAST(attempts AS INTEGER)), 0),
                            COALESCE(SUM(CASE WHEN CAST(attempts AS INTEGER) > 0 THEN 1 ELSE 0 END), 0)
                     FROM wf_events WHERE workflow = ?1 GROUP BY state",
                    &args,
                )?;
                // Columns are read as loosely typed values so that a damaged row still shows.
                let dead = tx.query(
                    "SELECT id, dedupe_key, attempts, last_step, last_error, payload
                     FROM wf_events WHERE workflow = ?1 AND state = 'dead' ORDER BY updated_at",
                    &args,
                )?;
                Ok::<_, DbError>((counts, dead))
            })
            .map_err(|e| self.err(e))?;
        let mut status = WorkflowStatus::default();
        for r in counts {
            let read = || -> Result<(String, i64, i64, i64), DbError> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            };
            let (state, n, attempts, retried) = read().map_err(|e| self.err(e))?;
            if let Some(s) = EventState::parse(&state) {
                status.counts.insert(s, n as u64);
            }
            status.failed_attempts += attempts.max(0) as u64;
            status.retried_events += retried.max(0) as u64;
        }
        status.dead = dead
            .into_iter()
            .map(|r| {
                let [id, dedupe_key, attempts, last_step, last_error, payload] =
                    r.into_array::<6>();
                DeadEvent {
                    id: loose_text(&id).unwrap_or_else(|| "(no id)".into()),
                    dedupe_key: loose_text(&dedupe_key).unwrap_or_default(),
                    attempts: loose_text(&attempts)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    last_step: loose_text(&last_step),
                    last_error: loose_text(&last_error),
                    payload: loose_text(&payload)
                        .and_then(|p| serde_json::from_str(&p).ok())
                        .unwrap_or(Value::Null),
                }
            })
            .collect();
        Ok(status)
    }

    fn workflow_state(&self, workflow: &str) -> Result<WorkflowState, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT paused, reason, fix, paused_account, creator, last_editor, binding_valid
                 FROM wf_workflow_state WHERE workflow = ?1",
                &vals![workflow],
            )
            .map_err(|e| self.err(e))?;
        let Some(r) = row else {
            return Ok(WorkflowState {
                workflow: workflow.to_string(),
                binding_valid: true,
                ..WorkflowState::default()
            });
        };
        let read = || -> Result<WorkflowState, DbError> {
            Ok(WorkflowState {
                workflow: workflow.to_string(),
                paused: r.get(0)?,
                reason: r.get(1)?,
                fix: r.get(2)?,
                paused_account: r.get(3)?,
                creator: r.get(4)?,
                last_editor: r.get(5)?,
                binding_valid: r.get(6)?,
            })
        };
        read().map_err(|e| self.err(e))
    }

    fn set_paused(
        &self,
        workflow: &str,
        reason: &str,
        fix: &str,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        let args = vals![workflow, reason, fix, account];
        self.on_state_row(workflow, move |tx, _| {
            tx.exec(
                "UPDATE wf_workflow_state SET paused = 1, reason = ?2, fix = ?3, paused_account = ?4
                 WHERE workflow = ?1",
                &args,
            )
            .map(|_| ())
        })
    }

    fn resume(&self, workflow: &str) -> Result<(), StoreError> {
        self.on_state_row(workflow, |tx, workflow| {
            tx.exec(
                "UPDATE wf_workflow_state SET paused = 0, reason = NULL, fix = NULL,
                     paused_account = NULL WHERE workflow = ?1",
                &vals![workflow],
            )
            .map(|_| ())
        })
    }

    fn paused_on_account(&self, account: &str) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT workflow FROM wf_workflow_state
             WHERE paused = 1 AND paused_account = ?1 ORDER BY workflow",
            &vals![account],
        )
    }

    fn note_edit(&self, workflow: &str, editor: &str) -> Result<WorkflowState, StoreError> {
        let editor = editor.to_string();
        self.on_state_row(workflow, move |tx, workflow| {
            tx.exec(
                "UPDATE wf_workflow_state SET
                     creator = COALESCE(creator, ?2),
                     last_editor = ?2,
                     binding_valid = CASE WHEN COALESCE(creator, ?2) = ?2 THEN binding_valid
                                          ELSE 0 END
                 WHERE workflow = ?1",
                &vals![workflow, &editor],
            )
            .map(|_| ())
        })?;
        self.workflow_state(workflow)
    }

    fn note_saved(
        &self,
        workflow: &str,
        fingerprint: &str,
        previous_owner: Option<&str>,
        owner: &str,
        editor: Option<&str>,
    ) -> Result<WorkflowState, StoreError> {
        let (fingerprint, owner) = (fingerprint.to_string(), owner.to_string());
        let previous_owner = previous_owner.map(str::to_string);
        let editor = editor.map(str::to_string);
        self.on_state_row(workflow, move |tx, workflow| {
            tx.exec(
                "UPDATE wf_workflow_state SET creator = ?2 WHERE workflow = ?1 AND creator IS NULL",
                &vals![workflow, previous_owner.as_deref().unwrap_or(&owner)],
            )?;
            Self::change_owner(tx, workflow, &owner, editor.as_deref())?;
            let old: Option<String> = match tx.query_opt(
                "SELECT fingerprint FROM wf_workflow_state WHERE workflow = ?1",
                &vals![workflow],
            )? {
                Some(r) => r.get(0)?,
                None => None,
            };
            if previous_owner.is_some()
                && old.as_deref() != Some(fingerprint.as_str())
                && let Some(editor) = &editor
            {
                tx.exec(
                    "UPDATE wf_workflow_state SET last_editor = ?2,
                         binding_valid = CASE WHEN creator = ?2 THEN binding_valid ELSE 0 END
                     WHERE workflow = ?1",
                    &vals![workflow, editor],
                )?;
            }
            tx.exec(
                "UPDATE wf_workflow_state SET fingerprint = ?2 WHERE workflow = ?1",
                &vals![workflow, &fingerprint],
            )
            .map(|_| ())
        })?;
        self.workflow_state(workflow)
    }

    fn note_owner(
        &self,
        workflow: &str,
        from: &str,
        owner: &str,
        by: Option<&str>,
    ) -> Result<WorkflowState, StoreError> {
        let (from, owner, by) = (from.to_string(), owner.to_string(), by.map(str::to_string));
        self.on_state_row(workflow, move |tx, workflow| {
            // Not seen by a runner yet: its creator is the owner it had until now.
            tx.exec(
                "UPDATE wf_workflow_state SET creator = ?2 WHERE workflow = ?1 AND creator IS NULL",
                &vals![workflow, &from],
            )?;
            Self::change_owner(tx, workflow, &owner, by.as_deref())
        })?;
        self.workflow_state(workflow)
    }

    fn note_definition(
        &self,
        workflow: &str,
        fingerprint: &str,
        editor: Option<&str>,
        owner: &str,
    ) -> Result<WorkflowState, StoreError> {
        let (fingerprint, owner) = (fingerprint.to_string(), owner.to_string());
        let editor = editor.map(str::to_string);
        self.on_state_row(workflow, move |tx, workflow| {
            // An owner changed in the file since the last start is a transfer (the CLI records
            // its own at once; this catches an edit made by hand).
            Self::change_owner(tx, workflow, &owner, editor.as_deref())?;
            let old: Option<String> = match tx.query_opt(
                "SELECT fingerprint FROM wf_workflow_state WHERE workflow = ?1",
                &vals![workflow],
            )? {
                Some(r) => r.get(0)?,
                None => None,
            };
            tx.exec(
                "UPDATE wf_workflow_state SET creator = COALESCE(creator, ?2), fingerprint = ?3
                 WHERE workflow = ?1",
                &vals![workflow, &owner, &fingerprint],
            )?;
            // A fingerprint of another scheme (an earlier version hashed `Debug` output) cannot
            // be compared: it is replaced, and not counted as an edit.
            let comparable = |old: &str| {
                old.starts_with(crate::definition::FINGERPRINT_SCHEME)
                    == fingerprint.starts_with(crate::definition::FINGERPRINT_SCHEME)
            };
            if let (Some(old), Some(editor)) = (old, &editor)
                && comparable(&old)
                && old != fingerprint
            {
                tx.exec(
                    "UPDATE wf_workflow_state SET last_editor = ?2,
                         binding_valid = CASE WHEN creator = ?2 THEN binding_valid ELSE 0 END
                     WHERE workflow = ?1",
                    &vals![workflow, editor],
                )?;
            }
            Ok(())
        })?;
        self.workflow_state(workflow)
    }

    fn rebind(&self, workflow: &str) -> Result<(), StoreError> {
        self.on_state_row(workflow, |tx, workflow| {
            tx.exec(
                "UPDATE wf_workflow_state SET binding_valid = 1 WHERE workflow = ?1",
                &vals![workflow],
            )
            .map(|_| ())
        })
    }

    fn unbound_workflows(&self) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT workflow FROM wf_workflow_state WHERE binding_valid = 0 ORDER BY workflow",
            &[],
        )
    }

    fn insert_account(&self, a: &AccountRow) -> Result<(), StoreError> {
        let n = self
            .db
            .exec(
                &format!(
                    "INSERT INTO wf_accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT DO NOTHING"
                ),
                &vals![
                    &a.name,
                    &a.system,
                    &a.owner,
                    a.kind.as_str(),
                    a.brand,
                    a.org_id.as_deref(),
                    a.token_ok,
                    a.created_at
                ],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::DuplicateAccount {
                name: a.name.clone(),
            });
        }
        Ok(())
    }

    fn get_account(&self, name: &str) -> Result<AccountRow, StoreError> {
        let row = self
            .db
            .query_opt(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM wf_accounts WHERE name = ?1"),
                &vals![name],
            )
            .map_err(|e| self.err(e))?;
        match row {
            Some(r) => self.account(raw_account(&r).map_err(|e| self.err(e))?),
            None => Err(StoreError::NoSuchAccount {
                name: name.to_string(),
            }),
        }
    }

    fn list_accounts(&self) -> Result<Vec<AccountRow>, StoreError> {
        self.db
            .query(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM wf_accounts ORDER BY name"),
                &[],
            )
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| self.account(raw_account(r).map_err(|e| self.err(e))?))
            .collect()
    }

    fn remove_account(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .db
            .exec("DELETE FROM wf_accounts WHERE name = ?1", &vals![name])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NoSuchAccount {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn rename_account(&self, old: &str, new: &str) -> Result<(), StoreError> {
        let args = vals![old, new];
        let outcome = self
            .db
            .tx(move |tx| {
                let copied = tx.exec(
                    &format!(
                        "INSERT INTO wf_accounts ({ACCOUNT_COLUMNS})
                         SELECT ?2, system, owner, kind, brand, org_id, token_ok, created_at
                         FROM wf_accounts WHERE name = ?1
                         ON CONFLICT DO NOTHING"
                    ),
                    &args,
                )?;
                if copied == 0 {
                    // Either `old` is missing or `new` is taken: say which.
                    let exists = tx
                        .query_opt("SELECT 1 FROM wf_accounts WHERE name = ?1", &args[..1])?
                        .is_some();
                    return Ok(Some(exists));
                }
                for sql in [
                    "UPDATE wf_account_grants SET account = ?2 WHERE account = ?1",
                    "UPDATE wf_account_checks SET account = ?2 WHERE account = ?1",
                    "UPDATE wf_workflow_state SET paused_account = ?2 WHERE paused_account = ?1",
                ] {
                    tx.exec(sql, &args)?;
                }
                tx.exec("DELETE FROM wf_accounts WHERE name = ?1", &args[..1])?;
                Ok::<_, DbError>(None)
            })
            .map_err(|e| self.err(e))?;
        match outcome {
            None => Ok(()),
            Some(true) => Err(StoreError::DuplicateAccount {
                name: new.to_string(),
            }),
            Some(false) => Err(StoreError::NoSuchAccount {
                name: old.to_string(),
            }),
        }
    }

    fn record_account_check(&self, check: &AccountCheck) -> Result<(), StoreError> {
        let n = self
            .db
            .exec(
                "INSERT INTO wf_account_checks (account, checked_at, ok, message)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM wf_accounts WHERE name = ?1)
                 ON CONFLICT (account) DO UPDATE SET
                     checked_at = excluded.checked_at, ok = excluded.ok, message = excluded.message",
                &vals![&check.account, check.checked_at, check.ok, &check.message],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NoSuchAccount {
                name: check.account.clone(),
            });
        }
        Ok(())
    }

    fn account_check(&self, account: &str) -> Result<Option<AccountCheck>, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT account, checked_at, ok, message FROM wf_account_checks WHERE account = ?1",
                &vals![account],
            )
            .map_err(|e| self.err(e))?;
        let Some(r) = row else {
            return Ok(None);
        };
        let read = || -> Result<AccountCheck, DbError> {
            Ok(AccountCheck {
                account: r.get(0)?,
                checked_at: r.get(1)?,
                ok: r.get(2)?,
                message: r.get(3)?,
            })
        };
        read().map(Some).map_err(|e| self.err(e))
    }

    fn set_token_ok(&self, name: &str, ok: bool) -> Result<(), StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE wf_accounts SET token_ok = ?2 WHERE name = ?1",
                &vals![name, ok],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NoSuchAccount {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn set_org_id(&self, name: &str, org_id: &str) -> Result<(), StoreError> {
        self.db
            .exec(
                "UPDATE wf_accounts SET org_id = ?2 WHERE name = ?1",
                &vals![name, org_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn grant(&self, account: &str, user: &str) -> Result<(), StoreError> {
        self.db
            .exec(
                "INSERT INTO wf_account_grants (account, \"user\") VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                &vals![account, user],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn grants(&self, account: &str) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT \"user\" FROM wf_account_grants WHERE account = ?1 ORDER BY \"user\"",
            &vals![account],
        )
    }

    fn record_subscription(&self, s: &SubscriptionRecord) -> Result<(), StoreError> {
        self.db
            .exec(
                "INSERT INTO wf_subscriptions
                     (subscription_id, workflow, connection, topic, url, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (subscription_id) DO UPDATE SET
                     workflow = excluded.workflow, connection = excluded.connection,
                     topic = excluded.topic, url = excluded.url, created_at = excluded.created_at",
                &vals![
                    &s.subscription_id,
                    &s.workflow,
                    &s.connection,
                    &s.topic,
                    &s.url,
                    s.created_at
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        self.db
            .query(
                "SELECT subscription_id, workflow, connection, topic, url, created_at
                 FROM wf_subscriptions ORDER BY created_at, subscription_id",
                &[],
            )
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| {
                let read = || -> Result<SubscriptionRecord, DbError> {
                    Ok(SubscriptionRecord {
                        subscription_id: r.get(0)?,
                        workflow: r.get(1)?,
                        connection: r.get(2)?,
                        topic: r.get(3)?,
                        url: r.get(4)?,
                        created_at: r.get(5)?,
                    })
                };
                read().map_err(|e| self.err(e))
            })
            .collect()
    }

    fn forget_subscription(&self, subscription_id: &str) -> Result<(), StoreError> {
        self.db
            .exec(
                "DELETE FROM wf_subscriptions WHERE subscription_id = ?1",
                &vals![subscription_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl WorkflowStore {
    /// The first column of every row, as text.
    fn strings(&self, sql: &str, params: &[Val]) -> Result<Vec<String>, StoreError> {
        self.db
            .query(sql, params)
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| r.get(0).map_err(|e| self.err(e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, WorkflowStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = WorkflowStore::open(dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    fn ev(key: &str) -> NewEvent {
        NewEvent {
            workflow: "wf".into(),
            source: EventSource::Manual,
            dedupe_key: key.into(),
            payload: json!({"k": key}),
        }
    }

    #[test]
    fn duplicates_are_dropped_and_ids_are_stable() {
        let (_d, s) = store();
        let a = s.enqueue(&ev("R_1"), 1).unwrap();
        assert!(matches!(a, Enqueued::New(_)));
        let b = s.enqueue(&ev("R_1"), 2).unwrap();
        assert_eq!(b, Enqueued::Duplicate(a.id().to_string()));
        assert_eq!(a.id(), event_id("wf", "R_1"));
        assert_ne!(event_id("wf", "R_1"), event_id("wf2", "R_1"));
    }

    #[test]
    fn batches_store_new_events_and_drop_duplicates_in_one_go() {
        let (_d, s) = store();
        s.enqueue(&ev("R_1"), 1).unwrap();
        let r = s
            .enqueue_batch(&[ev("R_1"), ev("R_2"), ev("R_2")], 2)
            .unwrap();
        assert!(matches!(r[0], Enqueued::Duplicate(_)));
        assert!(matches!(r[1], Enqueued::New(_)));
        assert!(matches!(r[2], Enqueued::Duplicate(_)));
        assert_eq!(s.status("wf").unwrap().counts[&EventState::Pending], 2);
    }

    #[test]
    fn leases_expire_and_fence_the_old_owner() {
        let (_d, s) = store();
        s.enqueue(&ev("R_1"), 0).unwrap();
        let got = s
            .lease_due("w1", 10, Duration::from_millis(100), 10)
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            s.lease_due("w2", 50, Duration::from_millis(100), 10)
                .unwrap()
                .is_empty()
        );
        // w1 died: after the lease the event comes back to w2.
        let again = s
            .lease_due("w2", 200, Duration::from_millis(100), 10)
            .unwrap();
        assert_eq!(again.len(), 1);
        let (old, new) = (
            got[0].lease.clone().unwrap(),
            again[0].lease.clone().unwrap(),
        );
        assert_ne!(old, new, "each lease has its own id");
        let err = s
            .record_step(
                &got[0].id,
                &old,
                "a",
                &json!(1),
                201,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        s.record_step(
            &got[0].id,
            &new,
            "a",
            &json!(1),
            201,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(s.step_outputs(&got[0].id).unwrap()["a"], json!(1));
        s.complete(&got[0].id, &new, EventState::Done, 300).unwrap();
        assert_eq!(s.get_event(&got[0].id).unwrap().state, EventState::Done);
    }

    #[test]
    fn a_worker_that_leases_an_event_again_cannot_write_with_its_old_lease() {
        // The same owner twice: a worker frozen past its lease that, once resumed, leased the
        // event again. Its delivery under the first lease must not land.
        let (_d, s) = store();
        s.enqueue(&ev("R_1"), 0).unwrap();
        let first = s
            .lease_due("w1", 10, Duration::from_millis(100), 10)
            .unwrap();
        let second = s
            .lease_due("w1", 200, Duration::from_millis(100), 10)
            .unwrap();
        let (old, new) = (
            first[0].lease.clone().unwrap(),
            second[0].lease.clone().unwrap(),
        );
        assert_eq!((old.as_str(), new.as_str()), ("w1#1", "w1#2"));
        let err = s
            .complete(&first[0].id, &old, EventState::Done, 201)
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        assert_eq!(
            s.get_event(&first[0].id).unwrap().state,
            EventState::Running
        );
        s.complete(&first[0].id, &new, EventState::Done, 202)
            .unwrap();
    }

    #[test]
    fn outbox_stats_count_states_and_bucket_delivery_times() {
        let (_d, s) = store();
        for k in ["R_1", "R_2", "R_3"] {
            s.enqueue(&ev(k), 1_000).unwrap();
        }
        let got = s.lease_due("w", 1_000, Duration::from_secs(60), 2).unwrap();
        // Delivered 200 ms and 5 s after arrival.
        s.complete(
            &got[0].id,
            got[0].lease.as_deref().unwrap(),
            EventState::Done,
            1_200,
        )
        .unwrap();
        s.complete(
            &got[1].id,
            got[1].lease.as_deref().unwrap(),
            EventState::Done,
            6_000,
        )
        .unwrap();
        let st = s.outbox_stats(&[100, 1_000, 10_000]).unwrap();
        assert_eq!(st.by_state.get("done"), Some(&2));
        assert_eq!(st.by_state.get("pending"), Some(&1));
        assert_eq!(st.latency_buckets, vec![0, 1, 2]);
        assert_eq!((st.delivered, st.latency_sum_ms), (2, 5_200));
    }

    #[test]
    fn paused_or_unbound_workflows_are_not_leased() {
        let (_d, s) = store();
        s.enqueue(&ev("R_1"), 0).unwrap();
        s.set_paused("wf", "account token expired", "fix", Some("sf"))
            .unwrap();
        assert!(
            s.lease_due("w", 10, Duration::from_secs(1), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.next_due_at().unwrap(), None);
        assert_eq!(s.paused_on_account("sf").unwrap(), vec!["wf".to_string()]);
        s.resume("wf").unwrap();
        s.note_edit("wf", "pat").unwrap();
        let st = s.note_edit("wf", "sam").unwrap();
        assert!(!st.binding_valid);
        assert_eq!(st.creator.as_deref(), Some("pat"));
        assert!(
            s.lease_due("w", 10, Duration::from_secs(1), 10)
                .unwrap()
                .is_empty()
        );
        s.rebind("wf").unwrap();
        assert_eq!(
            s.lease_due("w", 10, Duration::from_secs(1), 10)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_changed_definition_is_an_edit() {
        let (_d, s) = store();
        let st = s.note_definition("wf", "v1", Some("sam"), "pat").unwrap();
        assert_eq!(st.creator.as_deref(), Some("pat"));
        assert!(st.binding_valid, "first sight is not an edit");
        assert!(
            s.note_definition("wf", "v1", Some("sam"), "pat")
                .unwrap()
                .binding_valid
        );
        assert!(
            s.note_definition("wf", "v2", Some("pat"), "pat")
                .unwrap()
                .binding_valid
        );
        assert!(
            s.note_definition("wf", "v3", None, "pat")
                .unwrap()
                .binding_valid
        );
        let st = s.note_definition("wf", "v4", Some("sam"), "pat").unwrap();
        assert!(!st.binding_valid);
        assert_eq!(st.last_editor.as_deref(), Some("sam"));
    }

    #[test]
    fn a_new_owner_holds_the_binding_and_must_confirm_it() {
        let (_d, s) = store();
        s.note_definition("wf", "v1", Some("pat"), "pat").unwrap();
        // pat gives it to sam: sam has not confirmed, so the binding is dropped and sam's
        // re-authorization is the one that counts from now on.
        let st = s.note_owner("wf", "pat", "sam", Some("pat")).unwrap();
        assert_eq!(st.creator.as_deref(), Some("sam"));
        assert!(!st.binding_valid);
        assert_eq!(st.last_editor.as_deref(), Some("pat"));
        s.rebind("wf").unwrap();
        // The same start-up definition (owner sam) is no second transfer.
        assert!(
            s.note_definition("wf", "v1", None, "sam")
                .unwrap()
                .binding_valid
        );
        // sam's own edit keeps it; pat's edit now is a collaborator's.
        assert!(
            s.note_definition("wf", "v2", Some("sam"), "sam")
                .unwrap()
                .binding_valid
        );
        assert!(
            !s.note_definition("wf", "v3", Some("pat"), "sam")
                .unwrap()
                .binding_valid
        );
        s.rebind("wf").unwrap();
        // An owner changed by hand in the file is a transfer too; taken by the new owner
        // themself, the binding stays.
        let st = s.note_definition("wf", "v4", Some("lee"), "lee").unwrap();
        assert_eq!(st.creator.as_deref(), Some("lee"));
        assert!(st.binding_valid, "{st:?}");
        let st = s.note_definition("wf", "v5", None, "kim").unwrap();
        assert_eq!(st.creator.as_deref(), Some("kim"));
        assert!(!st.binding_valid, "nobody confirmed for kim: {st:?}");
        // A workflow no runner has seen yet is transferred all the same.
        let st = s.note_owner("new", "pat", "sam", Some("pat")).unwrap();
        assert_eq!(st.creator.as_deref(), Some("sam"));
        assert!(!st.binding_valid);
    }

    #[test]
    fn a_saved_edit_counts_once_under_its_editor() {
        let (_d, s) = store();
        let st = s.note_saved("wf", "v2:1", None, "pat", Some("op")).unwrap();
        assert_eq!(st.creator.as_deref(), Some("pat"));
        assert!(st.binding_valid, "a new workflow is no edit");
        // Replaced by a collaborator before any runner saw it: an edit all the same.
        let st = s
            .note_saved("wf", "v2:2", Some("pat"), "pat", Some("sam"))
            .unwrap();
        assert!(!st.binding_valid);
        assert_eq!(st.last_editor.as_deref(), Some("sam"));
        s.rebind("wf").unwrap();
        // A runner started by someone else sees the fingerprint already recorded: no new edit.
        assert!(
            s.note_definition("wf", "v2:2", Some("kim"), "pat")
                .unwrap()
                .binding_valid
        );
        // The owner saving the same meaning again, or a new meaning, keeps the binding.
        assert!(
            s.note_saved("wf", "v2:3", Some("pat"), "pat", Some("pat"))
                .unwrap()
                .binding_valid
        );
        // An admin's replace that names a new owner is a transfer to them.
        let st = s
            .note_saved("wf", "v2:4", Some("pat"), "lee", Some("lee"))
            .unwrap();
        assert_eq!(st.creator.as_deref(), Some("lee"));
        assert!(st.binding_valid, "{st:?}");
    }

    #[test]
    fn a_fingerprint_of_the_old_scheme_is_replaced_without_an_edit() {
        let (_d, s) = store();
        // Stored by an earlier version (a hash of `Debug` output, no scheme prefix).
        s.note_definition("wf", "0badc0de", Some("pat"), "pat")
            .unwrap();
        let st = s
            .note_definition("wf", "v2:1234", Some("sam"), "pat")
            .unwrap();
        assert!(st.binding_valid, "an upgrade is not an edit: {st:?}");
        let st = s
            .note_definition("wf", "v2:5678", Some("sam"), "pat")
            .unwrap();
        assert!(!st.binding_valid, "a real change after it is");
    }

    #[test]
    fn replay_moves_dead_back() {
        let (_d, s) = store();
        let id = s.enqueue(&ev("R_1"), 0).unwrap().id().to_string();
        let leased = s.lease_due("w", 0, Duration::from_secs(1), 1).unwrap();
        s.dead(
            &id,
            leased[0].lease.as_deref().unwrap(),
            3,
            "boom",
            "step1",
            5,
        )
        .unwrap();
        let st = s.status("wf").unwrap();
        assert_eq!(st.counts[&EventState::Dead], 1);
        assert_eq!(st.dead[0].last_error.as_deref(), Some("boom"));
        assert_eq!(s.replay("wf", Some(&id), 6).unwrap(), 1);
        let e = s.get_event(&id).unwrap();
        assert_eq!((e.state, e.attempts), (EventState::Pending, 0));
        assert!(matches!(
            s.replay("wf", Some("ev_nope"), 7),
            Err(StoreError::NoSuchEvent { .. })
        ));
    }
}
