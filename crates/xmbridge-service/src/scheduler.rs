//! The scheduler and executor of sync runs.
//!
//! Rules: one run at a time per connection; "sync now" during a run queues exactly one more (a
//! second request gets the queued one back); a slot that passed while the server was down runs
//! once at start, not once per slot; a paused schedule queues nothing (a "sync now" still
//! runs); a failed run keeps the schedule going. Every run is recorded in [`Runs`] with its
//! per-table counts, responses, API calls, throttled retries, and its error with the fix;
//! progress (rows per stream) is written to the run about once a second.
//!
//! A run is `xmbridge sync` through `xmbridge_runtime` (stored connection → client, the
//! destination, the `sync-responses` workflow trigger). Stopping it — a cancel, or the server's
//! shutdown — takes effect at its next commit boundary: the destination is wrapped
//! ([`StopAtCommit`]) so that after a commit it flushes and refuses to go on. Nothing is lost,
//! because rows and cursors commit together; a run still going after the grace period is
//! dropped mid-write (the batch in flight may or may not land, with its cursor). Runs a
//! shutdown stopped get a `resume` run
//! queued for the next start, and at start the `running` rows a killed server left behind are
//! marked failed with a `resume` run queued for each.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use xmbridge_destinations::{
    Commit, CommitStats, Compat, DestError, DestErrorKind, Destination, Ensured, Fence, TableSpec,
};
use xmbridge_runtime::sync::{open_destination, workflow_trigger};
use xmbridge_sync::{Observer, Progress, ResponseObserver, SyncError, SyncOptions};
use xmbridge_vault::{Home, Vault};

use crate::config::SyncConfigs;
use crate::error::{ErrorKind, Result, ServiceError};
use crate::metrics::Metrics;
use crate::runs::{RunError, RunOutcome, RunStatus, RunTrigger, Runs, Slot, SyncRun, TableCounts};

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Schedule intervals are divided by this (1 in production; tests use e.g. 300 so that
    /// `5m` fires every second).
    pub scale: u32,
    /// How long running syncs get at shutdown to reach their next commit boundary before they
    /// are dropped.
    pub grace: Duration,
    /// How often a run's progress is written (and a cancel looked for in the store).
    pub progress_every: Duration,
    /// Runs this process executes at once; queued runs beyond it wait, or are started by
    /// another server on the same store (which is how several servers share the work).
    pub max_running: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            scale: 1,
            grace: Duration::from_secs(20),
            progress_every: Duration::from_secs(1),
            max_running: DEFAULT_MAX_RUNNING,
        }
    }
}

/// [`SchedulerOptions::max_running`] by default (`serve --max-syncs`).
pub const DEFAULT_MAX_RUNNING: usize = 4;

/// What the scheduler works with.
#[derive(Clone)]
pub struct Deps {
    /// `XMBRIDGE_HOME` (workflow definitions for the sync trigger).
    pub home: Home,
    /// Connections and secrets.
    pub vault: Arc<Vault>,
    /// Sync configurations and schedules.
    pub configs: SyncConfigs,
    /// The run history.
    pub runs: Runs,
    /// The serving processes, when the state store is shared by several (PostgreSQL): a run
    /// left `running` is then taken over only when its node stopped heartbeating, checked
    /// at start and every few seconds. `None`: this process is the only server (SQLite, under
    /// the home's lock), so every run left `running` at its start was interrupted.
    pub nodes: Option<crate::nodes::Nodes>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The workflow file of `sync-responses` workflows (as `sync --config`).
    pub workflow_config: Option<PathBuf>,
}

/// The answer to "sync now".
#[derive(Clone, Debug)]
pub struct Enqueued {
    /// The queued run (the one queued before, when `already_queued`).
    pub run: SyncRun,
    /// A run of the connection already running, which the queued one waits for.
    pub running: Option<i64>,
    /// A run was queued already: nothing new was queued.
    pub already_queued: bool,
}

/// A running run's stop switch.
struct Active {
    run: i64,
    stop: Arc<AtomicBool>,
    /// Set when the server's shutdown (not a person) stopped it.
    shutdown: Arc<AtomicBool>,
    /// What it committed so far.
    counts: Arc<Mutex<BTreeMap<String, TableCounts>>>,
}

/// The shared switches and counters of one running run.
struct Switches {
    stop: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, TableCounts>>>,
}

struct Shared {
    deps: Deps,
    opts: SchedulerOptions,
    wake: Notify,
    /// Running runs by connection.
    active: Mutex<HashMap<String, Active>>,
    /// Serializes "sync now" so two requests cannot both queue.
    queueing: Mutex<()>,
}

/// The scheduler: [`Scheduler::recover`] once at start, then [`Scheduler::run`].
pub struct Scheduler {
    shared: Arc<Shared>,
}

/// Queues, cancels and re-plans runs; cheap to clone (the API holds one).
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// A scheduler over `deps`.
    pub fn new(deps: Deps, opts: SchedulerOptions) -> Scheduler {
        Scheduler {
            shared: Arc::new(Shared {
                deps,
                opts,
                wake: Notify::new(),
                active: Mutex::new(HashMap::new()),
                queueing: Mutex::new(()),
            }),
        }
    }

    /// The handle the API uses.
    pub fn handle(&self) -> SchedulerHandle {
        SchedulerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Marks the runs a killed server left `running` as failed and queues one `resume` run for
    /// each connection (unless one is queued already). Returns the failed runs' ids. On a
    /// shared store only runs whose node stopped heartbeating are taken over.
    pub fn recover(&self) -> Result<Vec<i64>> {
        recover(&self.shared)
    }

    /// Plans and starts runs until `shutdown` resolves; then asks running runs to stop at their
    /// next commit boundary, waits up to the grace period and drops what is still running.
    /// Returns how many runs the shutdown stopped.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> usize {
        let shared = self.shared;
        let stopping = Arc::new(AtomicBool::new(false));
        {
            let (shared, stopping) = (shared.clone(), stopping.clone());
            tokio::spawn(async move {
                shutdown.await;
                stopping.store(true, Ordering::SeqCst);
                shared.wake.notify_waiters();
            });
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut looked_for_stopped_nodes = Instant::now();
        loop {
            let woken = shared.wake.notified();
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            let take_over = shared.deps.nodes.is_some()
                && looked_for_stopped_nodes.elapsed() >= TAKE_OVER_EVERY;
            if take_over {
                looked_for_stopped_nodes = Instant::now();
            }
            // SQLite blocks (up to its busy timeout): off the async workers.
            let planned = {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    if take_over && let Err(e) = recover(&shared) {
                        tracing::error!(error = %e, "could not look for runs of stopped servers; retrying");
                    }
                    plan(&shared)
                })
                .await
            };
            let next = match planned {
                Ok(Ok((next, queued))) => {
                    start_queued(&shared, &mut tasks, queued);
                    next
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the scheduler could not read the state store; retrying");
                    Duration::from_secs(5)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the scheduler's planning task stopped; retrying");
                    Duration::from_secs(5)
                }
            };
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
        // Shutdown: every running run stops at its next commit boundary.
        let mut stopped = 0;
        for a in shared.active.lock().values() {
            a.shutdown.store(true, Ordering::SeqCst);
            a.stop.store(true, Ordering::SeqCst);
            stopped += 1;
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(shared.opts.grace, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = shared.opts.grace.as_secs(),
                "runs did not reach a commit boundary within the grace period; dropping them (the batch in flight may or may not land; the resume run continues from the destination's cursor)"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            // The dropped runs' rows: cancelled, resumed at the next start. The counts are the
            // commits the wrapper saw finish; a commit in flight when the task was dropped may
            // still land (the destination finishes what it was handed), so the destination can
            // hold more than counted, never less. Its cursor moved with its rows.
            let left: Vec<(String, i64, BTreeMap<String, TableCounts>)> = shared
                .active
                .lock()
                .drain()
                .map(|(c, a)| (c, a.run, a.counts.lock().clone()))
                .collect();
            for (connection, id, tables) in left {
                let outcome = RunOutcome {
                    status: RunStatus::Cancelled,
                    responses: responses_of(&tables),
                    api_calls: 0,
                    throttled: 0,
                    tables,
                    error: Some(shutdown_error(true)),
                };
                let done = shared.deps.runs.finish(id, outcome);
                if let Err(e) = done.and_then(|_| queue_resume(&shared.deps.runs, &connection)) {
                    tracing::error!(run = id, error = %e, "could not record a dropped run; the next start marks it failed and resumes it");
                }
            }
        }
        stopped
    }
}

/// How often a run's end is tried again while the state store does not answer.
const FINISH_RETRY: Duration = Duration::from_secs(2);

/// How often a server on a shared store looks for runs whose node stopped heartbeating.
const TAKE_OVER_EVERY: Duration = Duration::from_secs(2);

fn recover(shared: &Shared) -> Result<Vec<i64>> {
    let deps = &shared.deps;
    let alive: std::collections::HashSet<String> = match &deps.nodes {
        None => Default::default(),
        Some(nodes) => nodes
            .list()?
            .into_iter()
            .filter(|n| n.state == crate::nodes::NodeState::Alive)
            .map(|n| n.id)
            .collect(),
    };
    let mut failed = Vec::new();
    for run in deps.runs.interrupted()? {
        // Another node's run, still at work (or this one's own).
        if run.node.as_ref().is_some_and(|n| alive.contains(n))
            || shared.active.lock().values().any(|a| a.run == run.id)
        {
            continue;
        }
        let message = match (&deps.nodes, &run.node) {
            (Some(_), Some(node)) => format!(
                "the server {node} that ran it stopped heartbeating (killed, crashed, frozen or cut off from the state store); the batches it committed are kept"
            ),
            _ => "the server stopped during this run (it was killed or crashed); the batches it committed are kept".to_string(),
        };
        let outcome = RunOutcome {
            status: RunStatus::Failed,
            responses: run.responses,
            api_calls: run.api_calls,
            throttled: run.throttled,
            tables: run.tables.clone(),
            error: Some(RunError {
                message,
                fix: Some(
                    "nothing to do: a resume run was queued and continues from the last commit"
                        .into(),
                ),
            }),
        };
        match deps.runs.finish(run.id, outcome) {
            Ok(_) => {}
            // Finished meanwhile by its node, or taken over by another.
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => return Err(e),
        }
        failed.push(run.id);
        queue_resume(&deps.runs, &run.connection)?;
        tracing::warn!(run = run.id, connection = %run.connection, node = ?run.node, "run interrupted by a stopped server marked failed; a resume run is queued");
    }
    Ok(failed)
}

/// Queues the runs due by schedule. Returns how long to sleep before planning again and the
/// queued runs, oldest first.
fn plan(shared: &Arc<Shared>) -> Result<(Duration, Vec<SyncRun>)> {
    let deps = &shared.deps;
    let now = Utc::now();
    let mut next = Duration::from_secs(1);
    for (connection, cfg) in deps.configs.list()? {
        let Some(every) = cfg.every.as_ref() else {
            continue;
        };
        if cfg.paused {
            continue;
        }
        let interval = scaled(every.duration(), shared.opts.scale);
        let due_at = match deps.runs.last_slot(&connection)? {
            // Never run on its schedule: the first slot is now.
            None => now,
            Some(last) => last + chrono::Duration::from_std(interval).unwrap_or_default(),
        };
        if due_at > now {
            let wait = (due_at - now).to_std().unwrap_or_default();
            next = next.min(wait);
            continue;
        }
        // However many slots passed (a server down for hours), one run, and the next slot
        // counts from now. Taken and queued in one transaction: another process planning the
        // same schedule may have fired it since the read above.
        next = next.min(interval);
        let _guard = shared.queueing.lock();
        match deps.runs.fire_slot(&connection, now, interval)? {
            Slot::NotDue => {
                tracing::debug!(connection = %connection, "schedule slot taken by another process")
            }
            Slot::Queued(run) => {
                tracing::info!(run, connection = %connection, "scheduled sync queued")
            }
            Slot::Skipped => {
                tracing::info!(connection = %connection, "scheduled slot skipped: a run of this connection is queued or running")
            }
        }
    }
    Ok((next.max(Duration::from_millis(50)), deps.runs.queued()?))
}

/// Starts the queued runs whose connection has none running, up to the process's limit.
fn start_queued(shared: &Arc<Shared>, tasks: &mut tokio::task::JoinSet<()>, queued: Vec<SyncRun>) {
    for run in queued {
        let mut active = shared.active.lock();
        if active.len() >= shared.opts.max_running.max(1) {
            tracing::debug!(
                running = active.len(),
                "at --max-syncs: queued runs wait for a free slot here or start on another server"
            );
            break;
        }
        if active.contains_key(&run.connection) {
            continue;
        }
        let stop = Arc::new(AtomicBool::new(run.cancel_requested));
        let shutdown = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        active.insert(
            run.connection.clone(),
            Active {
                run: run.id,
                stop: stop.clone(),
                shutdown: shutdown.clone(),
                counts: counts.clone(),
            },
        );
        drop(active);
        let shared2 = shared.clone();
        let switches = Switches {
            stop,
            shutdown,
            counts,
        };
        tasks.spawn(async move {
            let connection = run.connection.clone();
            execute(&shared2, run, switches).await;
            shared2.active.lock().remove(&connection);
            // A queued follow-up may start now.
            shared2.wake.notify_waiters();
        });
    }
}

/// Queues a `resume` run of `connection`, unless a run of it is queued already (that one
/// continues from the last commit just as well).
fn queue_resume(runs: &Runs, connection: &str) -> Result<()> {
    let queued = runs
        .active(connection)?
        .iter()
        .any(|r| r.status == RunStatus::Queued);
    if !queued {
        match runs.queue(connection, RunTrigger::Resume, None) {
            // Queued meanwhile by another process: that run resumes just as well.
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Responses a run wrote, from its per-table counts.
fn responses_of(tables: &BTreeMap<String, TableCounts>) -> u64 {
    tables
        .get("survey_response")
        .map(|c| c.inserted + c.updated)
        .unwrap_or(0)
}

/// `every` divided by `scale` (at least 10 ms).
fn scaled(every: Duration, scale: u32) -> Duration {
    (every / scale.max(1)).max(Duration::from_millis(10))
}

impl SchedulerHandle {
    /// The runs this process is executing now, by connection.
    pub fn running(&self) -> Vec<crate::nodes::RunningSync> {
        let mut running: Vec<_> = self
            .shared
            .active
            .lock()
            .iter()
            .map(|(connection, a)| crate::nodes::RunningSync {
                connection: connection.clone(),
                run: a.run,
            })
            .collect();
        running.sort_by(|a, b| a.connection.cmp(&b.connection));
        running
    }

    /// Queues a run of `connection` now (whatever its schedule says, paused or not). During a
    /// run, one more is queued; when one is queued already, that one is returned and nothing
    /// new is queued.
    pub fn sync_now(
        &self,
        connection: &str,
        trigger: RunTrigger,
        by: Option<&str>,
    ) -> Result<Enqueued> {
        let deps = &self.shared.deps;
        if deps.configs.get(connection)?.is_none() {
            return Err(no_config(connection));
        }
        let running_in = |active: &[SyncRun]| {
            active
                .iter()
                .find(|r| r.status == RunStatus::Running)
                .map(|r| r.id)
        };
        // The queued run of `active`, as the one to wait for.
        let queued_in = |active: &[SyncRun]| {
            active
                .iter()
                .find(|r| r.status == RunStatus::Queued)
                .map(|queued| Enqueued {
                    run: queued.clone(),
                    running: running_in(active),
                    already_queued: true,
                })
        };
        let _guard = self.shared.queueing.lock();
        let active = deps.runs.active(connection)?;
        if let Some(queued) = queued_in(&active) {
            return Ok(queued);
        }
        let running = running_in(&active);
        let run = match deps.runs.queue(connection, trigger, by) {
            Ok(run) => run,
            // Another process queued one since the look above: that is the run to wait for.
            Err(e) if e.kind() == ErrorKind::Conflict => {
                return queued_in(&deps.runs.active(connection)?).ok_or(e);
            }
            Err(e) => return Err(e),
        };
        self.shared.wake.notify_waiters();
        Ok(Enqueued {
            run,
            running,
            already_queued: false,
        })
    }

    /// Cancels run `id`: a queued run at once, a running one at its next commit boundary.
    pub fn cancel(&self, id: i64) -> Result<SyncRun> {
        let run = self.shared.deps.runs.request_cancel(id)?;
        if let Some(a) = self.shared.active.lock().get(&run.connection)
            && a.run == id
        {
            a.stop.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_waiters();
        Ok(run)
    }

    /// A schedule or configuration changed: plan again now.
    pub fn changed(&self, connection: &str) {
        tracing::debug!(connection, "sync configuration changed; re-planning");
        self.shared.wake.notify_waiters();
    }
}

fn no_config(connection: &str) -> ServiceError {
    ServiceError::refused(
        ErrorKind::NotFound,
        "no_sync_config",
        format!("connection {connection} has no sync configuration (no destination)"),
        Some(format!(
            "set its destination first: xmbridge connection set {connection} --destination URL"
        )),
    )
}

fn shutdown_error(dropped: bool) -> RunError {
    let message = if dropped {
        "the server stopped during this run and it did not reach a commit boundary within the grace period, so it was dropped while writing: the batches it had finished are kept and counted here; the batch in flight may or may not have been written (rows and cursors commit together, so the resume run continues from what the destination holds: nothing lost, nothing doubled)"
    } else {
        "the server stopped during this run; it stopped at a commit boundary, everything it wrote is kept"
    };
    RunError {
        message: message.into(),
        fix: Some("nothing to do: a resume run is queued and continues at the next start".into()),
    }
}

/// Rows per stream, for the run's `progress`.
#[derive(Default)]
struct RunProgress {
    streams: Mutex<BTreeMap<String, StreamProgress>>,
}

#[derive(Default, Clone)]
struct StreamProgress {
    done: u64,
    total: Option<u64>,
    finished: bool,
}

impl RunProgress {
    fn json(&self) -> Value {
        let streams: serde_json::Map<String, Value> = self
            .streams
            .lock()
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    json!({"done": s.done, "total": s.total, "finished": s.finished}),
                )
            })
            .collect();
        json!({ "streams": streams })
    }
}

impl Progress for RunProgress {
    fn stream_started(&self, stream: &str, total: Option<u64>) {
        let mut s = self.streams.lock();
        let e = s.entry(stream.to_string()).or_default();
        e.total = total;
        e.finished = false;
    }
    fn advanced(&self, stream: &str, n: u64) {
        self.streams
            .lock()
            .entry(stream.to_string())
            .or_default()
            .done += n;
    }
    fn stream_finished(&self, stream: &str) {
        self.streams
            .lock()
            .entry(stream.to_string())
            .or_default()
            .finished = true;
    }
}

/// The message of the error [`StopAtCommit`] returns.
const STOPPED: &str = "stopped at a commit boundary";

/// A destination that, after a commit, flushes and refuses to go on once a stop was asked for
/// (the commit itself is kept); it also counts what was committed (the counts of a run that does not finish) and feeds
/// the metrics.
pub struct StopAtCommit {
    inner: Box<dyn Destination>,
    stop: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, TableCounts>>>,
    metrics: Arc<Metrics>,
}

impl StopAtCommit {
    /// Wraps `inner`; `stop` asks for the stop, `stopped` says it happened.
    fn new(
        inner: Box<dyn Destination>,
        stop: Arc<AtomicBool>,
        counts: Arc<Mutex<BTreeMap<String, TableCounts>>>,
        metrics: Arc<Metrics>,
    ) -> StopAtCommit {
        StopAtCommit {
            inner,
            stop,
            stopped: Arc::new(AtomicBool::new(false)),
            counts,
            metrics,
        }
    }

    /// Adds what commits changed to the run's counts and the metrics.
    fn count(&self, stats: &CommitStats) {
        {
            let mut counts = self.counts.lock();
            for (t, i, u, d) in &stats.tables {
                let c = counts.entry(t.clone()).or_default();
                c.inserted += i;
                c.updated += u;
                c.deleted += d;
            }
        }
        self.metrics.add_rows(
            stats
                .tables
                .iter()
                .map(|(t, i, u, d)| (t.as_str(), *i, *u, *d)),
        );
    }
}

impl Destination for StopAtCommit {
    fn ensure_tables<'a>(
        &'a mut self,
        specs: &'a [TableSpec],
    ) -> BoxFuture<'a, Result<Ensured, DestError>> {
        self.inner.ensure_tables(specs)
    }

    fn cursor<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, DestError>> {
        self.inner.cursor(stream)
    }

    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move {
            let stats = self.inner.commit(commit).await?;
            self.count(&stats);
            if self.stop.load(Ordering::SeqCst) {
                // This commit is the boundary: make it and any still being applied durable
                // (SQLite groups commits, PostgreSQL may apply one on a second connection), then
                // refuse to go on; the engine ends the run with this error.
                let earlier = self.inner.flush().await?;
                self.count(&earlier);
                self.stopped.store(true, Ordering::SeqCst);
                return Err(DestError::Sql {
                    context: "sync run".into(),
                    message: STOPPED.into(),
                });
            }
            Ok(stats)
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move {
            let stats = self.inner.flush().await?;
            self.count(&stats);
            Ok(stats)
        })
    }

    fn settle(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move {
            let stats = self.inner.settle().await?;
            self.count(&stats);
            Ok(stats)
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        self.inner.close()
    }

    fn append_commit_rows(&self) -> Option<usize> {
        self.inner.append_commit_rows()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn keys<'a>(
        &'a mut self,
        table: &'a str,
        column: &'a str,
        filter: &'a [(String, xmbridge_destinations::Value)],
    ) -> BoxFuture<'a, Result<Vec<String>, DestError>> {
        self.inner.keys(table, column, filter)
    }
}

/// Runs one queued run to its end and records it.
async fn execute(shared: &Arc<Shared>, run: SyncRun, switches: Switches) {
    let Switches {
        stop,
        shutdown,
        counts,
    } = switches;
    let deps = &shared.deps;
    let id = run.id;
    let connection = run.connection.clone();
    let fence = match deps.runs.start(id) {
        Ok(started) => started.fence.map(|token| Fence {
            scope: connection.clone(),
            token,
        }),
        Err(e) => {
            // Cancelled between the look and the start, most likely.
            tracing::info!(run = id, error = %e, "queued run not started");
            return;
        }
    };
    tracing::info!(run = id, connection = %connection, trigger = run.trigger.as_str(), fence = ?fence.as_ref().map(|f| f.token), "sync run started");
    let started = Instant::now();
    let outcome = match prepare(deps, &connection, fence, stop.clone(), counts).await {
        Err(error) => RunOutcome {
            status: RunStatus::Failed,
            responses: 0,
            api_calls: 0,
            throttled: 0,
            tables: BTreeMap::new(),
            error: Some(error),
        },
        Ok(prepared) => drive(shared, id, &connection, prepared, &stop).await,
    };
    let shutdown_stop = shutdown.load(Ordering::SeqCst);
    let outcome = if outcome.status == RunStatus::Cancelled && shutdown_stop {
        RunOutcome {
            error: Some(shutdown_error(false)),
            ..outcome
        }
    } else {
        outcome
    };
    let status = outcome.status;
    deps.metrics
        .add_calls(&connection, outcome.api_calls, outcome.throttled);
    // The end is recorded however long the state store is away: a run left `running` by a node
    // that is alive would keep its connection from ever starting another one.
    let mut waiting = false;
    let recorded = loop {
        match deps.runs.finish(id, outcome.clone()) {
            Err(e) if e.kind() == ErrorKind::Internal => {
                if !waiting {
                    tracing::warn!(run = id, connection = %connection, error = %e, "cannot record the end of the sync run (the state store does not answer); trying again every 2 s");
                    waiting = true;
                }
                tokio::time::sleep(FINISH_RETRY).await;
            }
            other => break other,
        }
    };
    if waiting && recorded.is_ok() {
        tracing::info!(run = id, connection = %connection, "the end of the sync run is recorded now that the state store answers again");
    }
    match recorded {
        // A failure is logged at warn, which the default log level shows.
        Ok(r) if r.status == RunStatus::Failed => tracing::warn!(
            run = id,
            connection = %connection,
            elapsed_ms = started.elapsed().as_millis() as u64,
            error = r.error.as_ref().map(|e| e.message.as_str()).unwrap_or(""),
            fix = r.error.as_ref().and_then(|e| e.fix.as_deref()).unwrap_or(""),
            "sync run failed"
        ),
        Ok(r) => tracing::info!(
            run = id,
            connection = %connection,
            status = r.status.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            error = r.error.as_ref().map(|e| e.message.as_str()).unwrap_or(""),
            "sync run finished"
        ),
        // Another server took the run over while this one was frozen or cut off from the
        // store: that server recorded its end, and the destination's fence kept this one
        // from writing after the take-over.
        Err(e) if e.kind() == ErrorKind::Conflict => tracing::warn!(
            run = id,
            connection = %connection,
            status = status.as_str(),
            "sync run was taken over by another server meanwhile; its end stays as that server recorded it"
        ),
        Err(e) => tracing::error!(run = id, error = %e, "could not record the end of a sync run"),
    }
    if status == RunStatus::Cancelled
        && shutdown_stop
        && let Err(e) = queue_resume(&deps.runs, &connection)
    {
        tracing::error!(run = id, error = %e, "could not queue the resume run");
    }
}

/// What a run needs, opened.
struct Prepared {
    client: xmbridge_qualtrics::Client,
    dest: StopAtCommit,
    opts: SyncOptions,
}

/// Opens the connection's client, its destination and the workflow trigger, as `xmbridge sync`
/// does.
async fn prepare(
    deps: &Deps,
    connection: &str,
    fence: Option<Fence>,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, TableCounts>>>,
) -> std::result::Result<Prepared, RunError> {
    let cfg = match deps.configs.get(connection) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            let e = no_config(connection);
            return Err(RunError {
                message: e.to_string(),
                fix: e.fix().map(str::to_string),
            });
        }
        Err(e) => return Err(run_error(&e, None)),
    };
    let settings = deps
        .configs
        .destination_settings(connection, &cfg)
        .map_err(|e| {
            run_error(
                &e,
                Some(format!(
                    "check the destination: xmbridge connection set {connection} --destination URL"
                )),
            )
        })?;
    let connected =
        xmbridge_runtime::connection::connect(&deps.vault, connection).map_err(|e| {
            run_error(
                &e,
                Some(format!(
                    "xmbridge connection test {connection} shows what is wrong with the connection"
                )),
            )
        })?;
    let dest = open_destination(&settings, &cfg.schema, Compat::Xmbridge, fence)
        .await
        .map_err(|e| {
            let fix = if e.destination_busy() {
                "another sync is writing this destination; this connection syncs again at its next slot (or sync now once the other one is done)".to_string()
            } else {
                format!("check that the destination is reachable and its URL and password are right: xmbridge connection set {connection} --destination URL")
            };
            run_error(&e, Some(fix))
        })?;
    let trigger = workflow_trigger(
        &deps.home,
        deps.vault.location(),
        deps.workflow_config.clone(),
        false,
    )
    .map_err(|e| run_error(&e, None))?
    .map(Arc::new);
    let opts = SyncOptions {
        tables: cfg.tables.clone(),
        compat: Compat::Xmbridge,
        observer: trigger.map(|t| Observer(t as Arc<dyn ResponseObserver>)),
        ..SyncOptions::default()
    };
    Ok(Prepared {
        client: connected.client,
        dest: StopAtCommit::new(dest, stop, counts, deps.metrics.clone()),
        opts,
    })
}

/// Runs the sync, writing progress about once a second and watching for a cancel asked through
/// the store, and turns its end into an outcome.
async fn drive(
    shared: &Arc<Shared>,
    id: i64,
    connection: &str,
    prepared: Prepared,
    stop: &Arc<AtomicBool>,
) -> RunOutcome {
    let deps = &shared.deps;
    let Prepared {
        client,
        mut dest,
        opts,
    } = prepared;
    let progress = RunProgress::default();
    let calls_before = client.api_calls();
    let throttled_before = client.throttled();
    let stopped = dest.stopped.clone();
    let counts = dest.counts.clone();
    let result = {
        let sync = xmbridge_sync::sync(&client, &mut dest, &opts, &progress);
        tokio::pin!(sync);
        let mut ticker = tokio::time::interval(shared.opts.progress_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut sync => break r,
                _ = ticker.tick() => {
                    let (runs, p) = (deps.runs.clone(), progress.json());
                    // A cancel asked through the store (another handle, the CLI) counts too, and
                    // so does a take-over by another server (the destination's fence refuses
                    // this run's commits then anyway).
                    let cancel = tokio::task::spawn_blocking(move || {
                        let _ = runs.set_progress(id, &p);
                        runs.get(id)
                            .map(|r| r.cancel_requested || r.status != RunStatus::Running)
                            .unwrap_or(false)
                    })
                    .await
                    .unwrap_or(false);
                    if cancel {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    };
    // Gives up what the destination holds (a Delta writer lease on S3); the sync flushed
    // already, so a failure here changes no data and is only logged.
    if let Err(e) = dest.close().await {
        tracing::warn!(connection, error = %e, "closing the destination after the run failed");
    }
    let _ = deps.runs.set_progress(id, &progress.json());
    let api_calls = client.api_calls().saturating_sub(calls_before);
    let throttled = client.throttled().saturating_sub(throttled_before);
    let committed = counts.lock().clone();
    match result {
        Ok(summary) => RunOutcome {
            status: RunStatus::Succeeded,
            responses: summary.responses,
            api_calls,
            throttled,
            tables: summary
                .tables
                .iter()
                .map(|(t, c)| {
                    (
                        t.clone(),
                        TableCounts {
                            inserted: c.inserted,
                            updated: c.updated,
                            deleted: c.deleted,
                        },
                    )
                })
                .collect(),
            error: None,
        },
        Err(_) if stopped.load(Ordering::SeqCst) => RunOutcome {
            status: RunStatus::Cancelled,
            responses: responses_of(&committed),
            api_calls,
            throttled,
            tables: committed,
            error: Some(RunError {
                message: "cancelled; it stopped at a commit boundary, everything it wrote is kept"
                    .into(),
                fix: None,
            }),
        },
        Err(e) => {
            let fix = sync_fix(&e, connection);
            RunOutcome {
                status: RunStatus::Failed,
                responses: responses_of(&committed),
                api_calls,
                throttled,
                tables: committed,
                error: Some(RunError {
                    message: chain(&e),
                    fix,
                }),
            }
        }
    }
}

/// What to do about a failed sync.
fn sync_fix(e: &SyncError, connection: &str) -> Option<String> {
    match e {
        SyncError::Destination { source, table, .. } => Some(match source.kind() {
            DestErrorKind::Connect => format!("check that the destination is reachable and its URL and password are right: xmbridge connection set {connection} --destination URL"),
            DestErrorKind::Busy => "another sync is writing this destination; this connection syncs again at its next slot".into(),
            DestErrorKind::Fenced => "nothing to do: another server took this run over (this one was frozen or cut off from the state store) and continues from the last commit".into(),
            DestErrorKind::Cursor => format!("reload the table's stream once: xmbridge sync {connection} --destination URL --full --tables {table} (later runs are incremental again)"),
            DestErrorKind::DiskFull => "free space on the destination (or raise its size cap); the next run continues from the last commit".into(),
            DestErrorKind::Schema => "the destination's tables were changed by hand; restore them, or drop the table so the next run recreates and reloads it".into(),
            _ => return None,
        }),
        SyncError::Qualtrics { source, .. } => {
            use xmbridge_auth::ErrorKind as K;
            Some(match source.kind() {
                K::Reauthorize => format!("re-authorize the connection: xmbridge connection authorize {connection} (or update its token), then xmbridge connection test {connection}"),
                K::Configuration | K::Refused => format!("xmbridge connection test {connection} shows which permission or setting is missing"),
                K::RateLimited => "the brand's API budget is used up for now; the next run continues from the last commit".into(),
                K::Transient => "Qualtrics or the network failed for a while; the next run continues from the last commit".into(),
                _ => return None,
            })
        }
        SyncError::Options(_) => Some(format!(
            "fix the table selection: xmbridge connection set {connection} --tables …"
        )),
        _ => None,
    }
}

fn run_error(e: &(dyn std::error::Error + 'static), fix: Option<String>) -> RunError {
    RunError {
        message: chain(e),
        fix,
    }
}

/// `e` and its causes joined by ": ", skipping a cause the text already holds.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_scale_down_but_not_to_zero() {
        assert_eq!(
            scaled(Duration::from_secs(300), 300),
            Duration::from_secs(1)
        );
        assert_eq!(
            scaled(Duration::from_secs(300), 1),
            Duration::from_secs(300)
        );
        assert_eq!(
            scaled(Duration::from_secs(300), 0),
            Duration::from_secs(300)
        );
        assert_eq!(
            scaled(Duration::from_secs(1), 1_000_000),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn progress_is_rows_per_stream() {
        let p = RunProgress::default();
        p.stream_started("responses", Some(10));
        p.advanced("responses", 4);
        p.advanced("responses", 3);
        p.stream_finished("surveys");
        let j = p.json();
        assert_eq!(j["streams"]["responses"]["done"], 7);
        assert_eq!(j["streams"]["responses"]["total"], 10);
        assert_eq!(j["streams"]["surveys"]["finished"], true);
    }
}
