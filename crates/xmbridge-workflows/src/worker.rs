//! Delivery workers: lease due events from the outbox, run each workflow's steps in order through
//! the action [`Registry`] with the delivery key `{event_id}:{step}`, record each step's output as
//! it finishes (a step done is never run again), and follow the action error's [`Disposition`]:
//! retry with exponential backoff and jitter (honouring `retry_after`), pause the workflow (a
//! refused token: the event goes back without using an attempt), or dead-letter.
//!
//! Workflows are reached through the small [`Plan`] trait (the parsed definition implements it)
//! and credentials through [`Connector`], so this module knows neither the TOML format nor any
//! client crate. It must not answer webhooks (that is the receiver) or store secrets.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use xmbridge_actions::{
    ActionContext, ActionError, ActionRequest, ActionSpec, Disposition, Inputs, Registry,
};

use crate::definition::PlanError;
use crate::event::QUALTRICS_MSG;
use crate::store::{EventRow, EventState, Store, StoreError, now_ms};

/// One step's call, rendered for one event.
#[derive(Clone, Debug)]
pub struct StepCall {
    /// Registry name of the action.
    pub action: String,
    /// The account or connection to use; `None` = the workflow owner's default.
    pub account: Option<String>,
    /// The action's inputs, rendered for the event.
    pub inputs: Inputs,
}

/// What the workers need of a workflow definition.
pub trait Plan: Send + Sync {
    /// The workflow's name, as stored with its events.
    fn name(&self) -> &str;
    /// The project owner, whose accounts the steps use.
    fn owner(&self) -> &str;
    /// Failed attempts before the dead letter.
    fn max_attempts(&self) -> u32;
    /// The steps' names in order; a writing step whose output is recorded is not run again.
    fn step_names(&self) -> Vec<String>;
    /// The action step `index` runs, when the plan can say without an event; it decides whether
    /// a recorded output is kept (a write) or read again (a read). `None`: keep it.
    fn step_action(&self, _index: usize) -> Option<String> {
        None
    }
    /// The workflow's condition over the (enriched) event.
    fn matches(&self, event: &Value, steps: &Map<String, Value>) -> Result<bool, PlanError>;
    /// Step `index`'s call, or `None` when its `when` is false.
    fn render_step(
        &self,
        index: usize,
        event: &Value,
        steps: &Map<String, Value>,
    ) -> Result<Option<StepCall>, PlanError>;
}

/// Credentials and enrichment: what turns a step's account into clients.
pub trait Connector: Send + Sync {
    /// The clients for running `spec` as `plan`'s owner with `account` (None = the owner's
    /// default for that system), and the name of the account used (for pausing on it).
    fn context<'a>(
        &'a self,
        plan: &'a dyn Plan,
        account: Option<&'a str>,
        spec: &'a ActionSpec,
    ) -> BoxFuture<'a, Result<(ActionContext, Option<String>), ActionError>>;

    /// Turns a Qualtrics event (`qualtrics_msg`) into the event JSON the workflow reads
    /// (`response`, `embedded`, `contact`, `survey`).
    fn enrich<'a>(
        &'a self,
        plan: &'a dyn Plan,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ActionError>>;
}

/// How long a failed event waits before its next attempt: `base · 2^(attempt-1)`, capped, with
/// jitter in its upper half. This is not an HTTP retry policy (each call's retries are
/// `xmbridge_auth::RetryPolicy`, inside the clients): it spaces an event's whole attempts over
/// minutes to hours, and how many there are is the workflow's `max_attempts`.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryBackoff {
    /// The wait after the first failed attempt, before jitter (default 2 s).
    pub base: Duration,
    /// The longest wait, before jitter (default 15 min).
    pub cap: Duration,
}

impl Default for DeliveryBackoff {
    fn default() -> Self {
        DeliveryBackoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(15 * 60),
        }
    }
}

impl DeliveryBackoff {
    /// The wait after failed attempt number `attempt` (1-based); `jitter` in [0, 1). A
    /// `Retry-After` the target sent is a floor.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        // The one exponential curve of the HTTP layer, with this backoff's base and cap.
        let curve = xmbridge_auth::RetryPolicy {
            base_delay: self.base,
            max_delay: self.cap,
            ..Default::default()
        };
        let full = curve.backoff(attempt.saturating_sub(1));
        // Upper-half jitter: spreads retries of a burst while keeping most of the backoff.
        let d = full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(after) => d.max(after),
            None => d,
        }
    }
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Delivery workers running side by side (at least one runs).
    pub workers: usize,
    /// How long a leased event stays with its worker before others may take it (a killed
    /// worker's events come back after this).
    pub lease: Duration,
    /// Events leased per round.
    pub batch: usize,
    /// The backoff between failed attempts.
    pub retry: DeliveryBackoff,
    /// Longest sleep between polls when nothing wakes the worker.
    pub poll: Duration,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 4,
            lease: Duration::from_secs(60),
            batch: 8,
            retry: DeliveryBackoff::default(),
            poll: Duration::from_secs(1),
            seed: 0x5eed,
        }
    }
}

/// What happened to one leased event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step done.
    Done,
    /// The workflow's condition was false.
    Skipped,
    /// A step failed and will be tried again.
    Retry {
        /// Failed attempts so far, this one included.
        attempts: u32,
        /// When the next attempt is due, Unix milliseconds.
        at_ms: i64,
    },
    /// Parked in the dead letter (attempts used up, or a failure retrying cannot fix).
    Dead,
    /// The workflow is paused; the event went back unchanged.
    Held,
    /// Another worker took the event over.
    LeaseLost,
}

/// Counts of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Events with every step done.
    pub done: u64,
    /// Events whose workflow condition was false.
    pub skipped: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Events parked in the dead letter.
    pub dead: u64,
    /// Events handed back because their workflow is paused.
    pub held: u64,
}

impl RunSummary {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Done => self.done += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Retry { .. } => self.retried += 1,
            Outcome::Dead => self.dead += 1,
            Outcome::Held => self.held += 1,
            Outcome::LeaseLost => {}
        }
    }
    fn merge(&mut self, o: &RunSummary) {
        self.done += o.done;
        self.skipped += o.skipped;
        self.retried += o.retried;
        self.dead += o.dead;
        self.held += o.held;
    }
}

/// When the workers stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Deliver what is due now, then stop (`workflow run --once`).
    Once,
    /// Keep going until nothing is pending or leased any more (retries included), then stop.
    UntilIdle,
    /// Until the shutdown future resolves.
    Forever,
}

/// Why the delivery workers stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker panicked (a bug): the message of the panic.
    #[error("a delivery worker panicked: {0}")]
    Panicked(String),
}

/// How one delivery worker is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Not yet through its first look at the outbox.
    Starting,
    /// Its last look at the outbox worked.
    Running,
    /// It failed and waits to be restarted.
    Failing {
        /// The error that stopped it.
        error: String,
        /// How many times it was restarted so far.
        restarts: u32,
    },
    /// It stopped because the engine was told to stop (or, in `Once`/`UntilIdle`, ran out of work).
    Stopped,
}

/// The delivery workers' states, shared with whatever reports health (`/healthz`).
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<parking_lot::Mutex<Vec<WorkerState>>>);

impl Health {
    fn with_workers(n: usize) -> Health {
        Health(Arc::new(parking_lot::Mutex::new(vec![
            WorkerState::Starting;
            n
        ])))
    }

    fn set(&self, worker: usize, state: WorkerState) {
        if let Some(s) = self.0.lock().get_mut(worker) {
            *s = state;
        }
    }

    /// Every worker's state, by worker number.
    pub fn workers(&self) -> Vec<WorkerState> {
        self.0.lock().clone()
    }

    /// `Ok(summary)` when every worker is running; otherwise what is wrong, one line per worker.
    pub fn check(&self) -> Result<String, String> {
        let workers = self.workers();
        let problems: Vec<String> = workers
            .iter()
            .enumerate()
            .filter_map(|(n, s)| match s {
                WorkerState::Running => None,
                WorkerState::Starting => Some(format!("delivery worker {n} has not started yet")),
                WorkerState::Stopped => Some(format!("delivery worker {n} has stopped")),
                WorkerState::Failing { error, restarts } => Some(format!(
                    "delivery worker {n} is failing (restarted {restarts} time(s)): {error}"
                )),
            })
            .collect();
        if workers.is_empty() {
            Err("no delivery workers".into())
        } else if problems.is_empty() {
            Ok(format!("{} delivery worker(s) running", workers.len()))
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// The delivery engine: shared by its worker tasks.
pub struct Engine {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// By workflow name; replaced whole when the definitions change under a running process.
    plans: parking_lot::RwLock<BTreeMap<String, Arc<dyn Plan>>>,
    connector: Arc<dyn Connector>,
    cfg: EngineConfig,
    wake: Arc<Notify>,
    rng: AtomicU64,
    id: String,
    health: Health,
}

impl Engine {
    /// An engine delivering the events in `store` by `plans` (an event whose workflow is not
    /// among them goes to the dead letter), woken by `wake` (the outbox's signal).
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        plans: Vec<Arc<dyn Plan>>,
        connector: Arc<dyn Connector>,
        cfg: EngineConfig,
        wake: Arc<Notify>,
    ) -> Engine {
        let seed = cfg.seed | 1;
        Engine {
            store,
            registry,
            plans: parking_lot::RwLock::new(
                plans
                    .into_iter()
                    .map(|p| (p.name().to_string(), p))
                    .collect(),
            ),
            connector,
            wake,
            rng: AtomicU64::new(seed),
            id: format!("{}-{:x}", std::process::id(), now_ms()),
            health: Health::with_workers(cfg.workers.max(1)),
            cfg,
        }
    }

    /// Replaces the plans the workers deliver by (definitions changed while running): an event
    /// leased from now on runs under its workflow's new plan; one already running finishes
    /// under the old.
    pub fn replace_plans(&self, plans: Vec<Arc<dyn Plan>>) {
        *self.plans.write() = plans
            .into_iter()
            .map(|p| (p.name().to_string(), p))
            .collect();
    }

    /// The workers' states (for `/healthz`).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The state store the engine leases events from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn jitter(&self) -> f64 {
        // xorshift64*: deterministic per seed, good enough to spread retries.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Runs `cfg.workers` workers until `mode` says stop (or `shutdown` resolves).
    pub async fn run(
        self: &Arc<Self>,
        mode: RunMode,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunSummary, WorkerError> {
        let stop = Arc::new(Notify::new());
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (stop, stopped) = (stop.clone(), stopped.clone());
            tokio::spawn(async move {
                shutdown.await;
                stopped.store(true, Ordering::SeqCst);
                stop.notify_waiters();
            });
        }
        let mut tasks = Vec::new();
        for n in 0..self.cfg.workers.max(1) {
            let me = self.clone();
            let (stop, stopped) = (stop.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                me.supervise(n, mode, stop, stopped).await
            }));
        }
        let mut total = RunSummary::default();
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => total.merge(&s),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a delivery worker's supervisor failed");
                    first_err.get_or_insert(WorkerError::Panicked(e.to_string()));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Runs worker `n`. A worker that fails or panics is logged; when running `Forever` it is
    /// restarted after a growing pause (1 s doubling to 60 s) while [`Health`] reports it failing,
    /// so a process is never half alive in silence. In `Once` and `UntilIdle` the failure ends
    /// the run with the error.
    async fn supervise(
        self: Arc<Self>,
        n: usize,
        mode: RunMode,
        stop: Arc<Notify>,
        stopped: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<RunSummary, WorkerError> {
        let mut total = RunSummary::default();
        let mut restarts = 0u32;
        loop {
            let me = self.clone();
            let (stop2, stopped2) = (stop.clone(), stopped.clone());
            let partial = Arc::new(parking_lot::Mutex::new(RunSummary::default()));
            let counted = partial.clone();
            let run =
                tokio::spawn(async move { me.worker(n, mode, stop2, stopped2, counted).await });
            let error = match run.await {
                Ok(Ok(())) => {
                    total.merge(&partial.lock());
                    self.health.set(n, WorkerState::Stopped);
                    return Ok(total);
                }
                Ok(Err(e)) => WorkerError::Store(e),
                Err(e) => WorkerError::Panicked(e.to_string()),
            };
            total.merge(&partial.lock());
            if mode != RunMode::Forever || stopped.load(Ordering::SeqCst) {
                tracing::error!(worker = n, error = %error, "delivery worker failed; stopping");
                self.health.set(n, WorkerState::Stopped);
                return Err(error);
            }
            restarts += 1;
            let pause =
                Duration::from_secs(1 << (restarts - 1).min(6)).min(Duration::from_secs(60));
            tracing::error!(
                worker = n,
                restarts,
                error = %error,
                "delivery worker failed; restarting in {} s",
                pause.as_secs()
            );
            self.health.set(
                n,
                WorkerState::Failing {
                    error: error.to_string(),
                    restarts,
                },
            );
            let stop_wait = stop.notified();
            if stopped.load(Ordering::SeqCst) {
                self.health.set(n, WorkerState::Stopped);
                return Ok(total);
            }
            tokio::select! {
                _ = stop_wait => {
                    self.health.set(n, WorkerState::Stopped);
                    return Ok(total);
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn worker(
        &self,
        n: usize,
        mode: RunMode,
        stop: Arc<Notify>,
        stopped: Arc<std::sync::atomic::AtomicBool>,
        summary: Arc<parking_lot::Mutex<RunSummary>>,
    ) -> Result<(), StoreError> {
        let owner = format!("{}-w{n}", self.id);
        loop {
            if stopped.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Register for a wake-up before looking, so an enqueue between the look and the wait
            // is not missed.
            let woken = self.wake.notified();
            let stop_wait = stop.notified();
            let leased = self
                .store
                .lease_due(&owner, now_ms(), self.cfg.lease, self.cfg.batch)?;
            self.health.set(n, WorkerState::Running);
            summary.lock().dead += leased.unreadable as u64;
            if leased.is_empty() {
                let next = self.store.next_due_at()?;
                match mode {
                    RunMode::Once => return Ok(()),
                    RunMode::UntilIdle if next.is_none() => return Ok(()),
                    _ => {}
                }
                let wait = next
                    .map(|t| Duration::from_millis((t - now_ms()).max(1) as u64))
                    .unwrap_or(self.cfg.poll)
                    .min(self.cfg.poll);
                tokio::select! {
                    _ = woken => {}
                    _ = stop_wait => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            for ev in leased {
                let lease = ev.lease.clone().unwrap_or_else(|| owner.clone());
                if stopped.load(Ordering::SeqCst) {
                    // Shutting down: the events of the batch not started yet go back to the
                    // outbox now, rather than when their lease runs out (the one in delivery
                    // finished above).
                    self.store.release(&ev.id, &lease, now_ms())?;
                    continue;
                }
                let outcome = self.process(&lease, ev).await?;
                summary.lock().add(&outcome);
            }
        }
    }

    /// Delivers one leased event as far as it goes.
    pub async fn process(&self, owner: &str, ev: EventRow) -> Result<Outcome, StoreError> {
        let r = self.process_inner(owner, &ev).await;
        match r {
            Err(StoreError::LeaseLost { .. }) => {
                tracing::warn!(event = %ev.id, workflow = %ev.workflow, "lease lost; another worker has the event");
                Ok(Outcome::LeaseLost)
            }
            other => other,
        }
    }

    async fn process_inner(&self, owner: &str, ev: &EventRow) -> Result<Outcome, StoreError> {
        let plan = self.plans.read().get(&ev.workflow).cloned();
        let Some(plan) = plan else {
            let msg = format!(
                "workflow {} is not defined any more; add it back, then `xmbridge workflow replay {} --all`",
                ev.workflow, ev.workflow
            );
            self.store
                .dead(&ev.id, owner, ev.attempts, &msg, "-", now_ms())?;
            tracing::warn!(event = %ev.id, workflow = %ev.workflow, "dead: workflow not defined");
            return Ok(Outcome::Dead);
        };
        let plan: &dyn Plan = plan.as_ref();
        let state = self.store.workflow_state(&ev.workflow)?;
        if state.paused || !state.binding_valid {
            self.store.release(&ev.id, owner, now_ms())?;
            return Ok(Outcome::Held);
        }
        let mut payload = ev.payload.clone();
        if payload.get(QUALTRICS_MSG).is_some() && payload.get("response").is_none() {
            match self.connector.enrich(plan, &payload).await {
                Ok(enriched) => {
                    self.store.set_payload(&ev.id, owner, &enriched)?;
                    payload = enriched;
                }
                Err(e) => return self.fail(owner, ev, plan, "enrich", None, e),
            }
        }
        let mut steps = self.store.step_outputs(&ev.id)?;
        // A read-only step runs again on every attempt: a replay after a fix (a property set,
        // a permission granted) must not reuse what it read before. A writing step that
        // succeeded keeps its result; running it again would act twice.
        for (index, name) in plan.step_names().iter().enumerate() {
            let reads_only = plan
                .step_action(index)
                .and_then(|a| self.registry.get(&a).map(|a| !a.spec().writes))
                .unwrap_or(false);
            if reads_only {
                steps.remove(name);
            }
        }
        match plan.matches(&payload, &steps) {
            Ok(true) => {}
            Ok(false) => {
                self.store
                    .complete(&ev.id, owner, EventState::Skipped, now_ms())?;
                tracing::info!(event = %ev.id, workflow = %ev.workflow, "skipped: condition is false");
                return Ok(Outcome::Skipped);
            }
            Err(msg) => {
                let err = format!("the condition cannot be evaluated: {msg}");
                return self.dead(owner, ev, "condition", &err);
            }
        }
        for (index, name) in plan.step_names().iter().enumerate() {
            if steps.contains_key(name) {
                continue;
            }
            let call = match plan.render_step(index, &payload, &steps) {
                Ok(Some(call)) => call,
                Ok(None) => {
                    // `when` is false: recorded (as null) so later steps and reruns see it.
                    self.store.record_step(
                        &ev.id,
                        owner,
                        name,
                        &Value::Null,
                        now_ms(),
                        self.cfg.lease,
                    )?;
                    steps.insert(name.clone(), Value::Null);
                    continue;
                }
                Err(msg) => {
                    let err = format!("step {name}: the mapping cannot be rendered: {msg}");
                    return self.dead(owner, ev, name, &err);
                }
            };
            let action = match self.registry.find(&call.action) {
                Ok(a) => a.clone(),
                Err(e) => return self.fail(owner, ev, plan, name, None, e),
            };
            let (ctx, account) = match self
                .connector
                .context(plan, call.account.as_deref(), action.spec())
                .await
            {
                Ok(c) => c,
                Err(e) => return self.fail(owner, ev, plan, name, call.account.clone(), e),
            };
            let request = ActionRequest {
                inputs: call.inputs,
                delivery_key: Some(format!("{}:{name}", ev.id)),
            };
            match action.run(&ctx, request).await {
                Ok(output) => {
                    self.store.record_step(
                        &ev.id,
                        owner,
                        name,
                        &output,
                        now_ms(),
                        self.cfg.lease,
                    )?;
                    tracing::info!(event = %ev.id, workflow = %ev.workflow, step = %name,
                        action = %call.action, "step delivered");
                    steps.insert(name.clone(), output);
                }
                Err(e) => return self.fail(owner, ev, plan, name, account, e),
            }
        }
        self.store
            .complete(&ev.id, owner, EventState::Done, now_ms())?;
        tracing::info!(event = %ev.id, workflow = %ev.workflow, "event delivered");
        Ok(Outcome::Done)
    }

    fn dead(
        &self,
        owner: &str,
        ev: &EventRow,
        step: &str,
        err: &str,
    ) -> Result<Outcome, StoreError> {
        self.store
            .dead(&ev.id, owner, ev.attempts + 1, err, step, now_ms())?;
        tracing::warn!(event = %ev.id, workflow = %ev.workflow, step, error = %err, "dead letter");
        Ok(Outcome::Dead)
    }

    fn fail(
        &self,
        owner: &str,
        ev: &EventRow,
        plan: &dyn Plan,
        step: &str,
        account: Option<String>,
        e: ActionError,
    ) -> Result<Outcome, StoreError> {
        let err = e.to_string();
        match e.disposition() {
            Disposition::Retry { after } => {
                let attempts = ev.attempts + 1;
                // A rate or daily API limit says "later", not "this event is bad": it is
                // retried with the growing delay (up to the cap) but never parks the event.
                let limited = matches!(e, ActionError::RateLimited { .. });
                if attempts >= plan.max_attempts() && !limited {
                    let msg = format!("{err} (gave up after {attempts} attempts)");
                    self.store
                        .dead(&ev.id, owner, attempts, &msg, step, now_ms())?;
                    tracing::warn!(event = %ev.id, workflow = %ev.workflow, step, attempts,
                        error = %err, "dead letter: attempts exhausted");
                    return Ok(Outcome::Dead);
                }
                let delay = self.cfg.retry.delay(attempts, after, self.jitter());
                let at = now_ms() + delay.as_millis() as i64;
                self.store
                    .retry_at(&ev.id, owner, attempts, at, &err, step, now_ms())?;
                tracing::info!(event = %ev.id, workflow = %ev.workflow, step, attempts,
                    delay_ms = delay.as_millis() as u64, error = %err, "will retry");
                Ok(Outcome::Retry {
                    attempts,
                    at_ms: at,
                })
            }
            Disposition::Pause => {
                let (reason, fix) = match &e {
                    ActionError::TokenExpired { fix, .. } => {
                        // A linked account's own command beats the action's generic advice.
                        let fix = account
                            .as_deref()
                            .and_then(|a| self.store.get_account(a).ok())
                            .map(|row| crate::accounts::Accounts::reauthorize_command(&row))
                            .unwrap_or_else(|| fix.clone());
                        ("account token expired".to_string(), fix)
                    }
                    ActionError::NotConfigured { fix, .. } => (err.clone(), fix.clone()),
                    _ => (
                        err.clone(),
                        format!("xmbridge workflow resume {}", plan.name()),
                    ),
                };
                if matches!(e, ActionError::TokenExpired { .. })
                    && let Some(a) = &account
                {
                    // The account may be a plain connection rather than a linked account.
                    let _ = self.store.set_token_ok(a, false);
                }
                self.store
                    .set_paused(plan.name(), &reason, &fix, account.as_deref())?;
                self.store.release(&ev.id, owner, now_ms())?;
                tracing::warn!(event = %ev.id, workflow = %ev.workflow, step,
                    account = account.as_deref().unwrap_or("-"), reason = %reason, fix = %fix,
                    "workflow paused; events are kept");
                Ok(Outcome::Held)
            }
            Disposition::DeadLetter => self.dead(owner, ev, step, &err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = DeliveryBackoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1, None, 0.999_999).as_millis(), 99);
        assert_eq!(p.delay(1, None, 0.0).as_millis(), 50);
        assert_eq!(p.delay(3, None, 0.0).as_millis(), 200);
        assert_eq!(p.delay(30, None, 0.0).as_millis(), 500);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3)), 0.5),
            Duration::from_secs(3)
        );
    }
}
