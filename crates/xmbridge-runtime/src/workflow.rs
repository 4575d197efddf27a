//! The workflow process: the catalog's workflows as the workers' [`Plan`]s, the
//! [`LiveConnector`] that connects each step to its account (the owner's linked
//! Salesforce/ServiceNow account, or a Qualtrics connection) and enriches Qualtrics events with
//! the response, the webhook hooks and Qualtrics event subscriptions of the workflows, and the
//! receiver plus delivery workers running until shutdown.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use xmbridge_actions::{ActionContext, ActionError, ActionRequest, ActionSpec, Registry, System};
use xmbridge_server::receiver::{Hook, Hooks, Limits, Receiver, router};
use xmbridge_vault::{ExposeSecret, SecretField, Vault};
use xmbridge_workflows::accounts::Accounts;
use xmbridge_workflows::catalog::{self, Sources};
use xmbridge_workflows::definition::{EventContext, PlanError, Trigger, Workflow};
use xmbridge_workflows::event::QUALTRICS_MSG;
use xmbridge_workflows::hooks::{self, SubscriptionChange, WantedSubscription};
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{Store, WorkflowState, WorkflowStore, now_ms};
use xmbridge_workflows::worker::{
    Connector, DeliveryBackoff, Engine, EngineConfig, Plan, RunMode, RunSummary, StepCall,
};

use crate::error::{Result, RuntimeError};

/// Every action workflows run.
pub fn registry() -> Registry {
    Registry::builtin()
}

/// The workflows the catalog defines; an unreadable definition is the caller's mistake.
pub fn load_workflows(sources: &Sources, registry: &Registry) -> Result<Vec<Workflow>> {
    let cat = catalog::load(sources, registry).map_err(|e| RuntimeError::usage(e.to_string()))?;
    Ok(cat.entries.into_iter().map(|e| e.workflow).collect())
}

/// Re-binds the workflows owned by `owner` whose binding a collaborator's edit dropped. Returns
/// their names.
pub fn rebind_for_owner(store: &WorkflowStore, owner: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for wf in store.unbound_workflows()? {
        if store.workflow_state(&wf)?.creator.as_deref() == Some(owner) {
            store.rebind(&wf)?;
            out.push(wf);
        }
    }
    Ok(out)
}

/// After `user` re-authorized the linked account `name` (with its new refresh token, if any):
/// the workflows its refused token paused resume, and so do those of `user` whose credential
/// binding a collaborator's edit dropped (as `workflow resume --reauthorize` does). Returns the
/// workflows resumed.
pub fn account_reauthorized(
    accounts: &Accounts,
    store: &WorkflowStore,
    name: &str,
    user: &str,
    refresh_token: Option<&xmbridge_vault::SecretString>,
) -> Result<Vec<String>> {
    let mut resumed = accounts.reauthorize(name, user, refresh_token)?;
    resumed.extend(rebind_for_owner(store, user)?);
    Ok(resumed)
}

/// The Qualtrics connection for triggers and enrichment: `chosen`, else the only one stored.
pub fn default_qualtrics_connection(vault: &Vault, chosen: Option<&str>) -> Result<Option<String>> {
    if let Some(c) = chosen {
        return Ok(Some(c.to_string()));
    }
    let names = crate::connection::qualtrics_connections(vault)?;
    match names.len() {
        0 => Ok(None),
        1 => Ok(names.into_iter().next()),
        _ => Err(RuntimeError::usage(format!(
            "several Qualtrics connections ({}); choose one with --qualtrics NAME",
            names.join(", ")
        ))),
    }
}

/// Adapts a parsed definition to the workers' [`Plan`].
pub struct WorkflowPlan(pub Workflow);

impl Plan for WorkflowPlan {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn owner(&self) -> &str {
        &self.0.owner
    }
    fn max_attempts(&self) -> u32 {
        self.0.max_attempts
    }
    fn step_names(&self) -> Vec<String> {
        self.0.steps.iter().map(|s| s.name.clone()).collect()
    }
    fn step_action(&self, index: usize) -> Option<String> {
        self.0.steps.get(index).map(|s| s.action.clone())
    }
    fn matches(&self, event: &Value, steps: &Map<String, Value>) -> Result<bool, PlanError> {
        let ctx = EventContext {
            event: event.clone(),
            steps: steps.clone(),
        };
        self.0.matches(&ctx)
    }
    fn render_step(
        &self,
        index: usize,
        event: &Value,
        steps: &Map<String, Value>,
    ) -> Result<Option<StepCall>, PlanError> {
        let ctx = EventContext {
            event: event.clone(),
            steps: steps.clone(),
        };
        Ok(self.0.render_step(index, &ctx)?.map(|r| StepCall {
            action: r.action,
            account: r.account,
            inputs: r.inputs,
        }))
    }
}

/// Connects steps to real accounts: Qualtrics connections from the vault, Salesforce and
/// ServiceNow accounts through the account rules (owner's or granted).
pub struct LiveConnector {
    vault: Arc<Vault>,
    accounts: Accounts,
    registry: Arc<Registry>,
    default_qualtrics: Option<String>,
    qualtrics: Mutex<HashMap<String, ActionContext>>,
    external: Mutex<HashMap<String, ActionContext>>,
    survey_names: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl LiveConnector {
    /// A connector over `vault` and `accounts`; Qualtrics steps without a `connection` (and the
    /// enrichment of Qualtrics events) use `default_qualtrics`.
    pub fn new(
        vault: Arc<Vault>,
        accounts: Accounts,
        registry: Arc<Registry>,
        default_qualtrics: Option<String>,
    ) -> LiveConnector {
        LiveConnector {
            vault,
            accounts,
            registry,
            default_qualtrics,
            qualtrics: Mutex::new(HashMap::new()),
            external: Mutex::new(HashMap::new()),
            survey_names: Mutex::new(HashMap::new()),
        }
    }

    /// The Qualtrics connection of steps that name none.
    pub fn default_qualtrics(&self) -> Option<&str> {
        self.default_qualtrics.as_deref()
    }

    /// The context a Qualtrics action runs in on `connection` (default: the default
    /// connection), built once per connection.
    pub fn qualtrics_context(
        &self,
        action: &str,
        connection: Option<&str>,
    ) -> Result<(ActionContext, Option<String>), ActionError> {
        let name = connection
            .map(str::to_string)
            .or_else(|| self.default_qualtrics.clone())
            .ok_or_else(|| ActionError::NotConfigured {
                action: action.to_string(),
                system: System::Qualtrics,
                fix: "add a Qualtrics connection (`xmbridge connection add qualtrics NAME …`) and pass `--qualtrics NAME` to `workflow run`".into(),
            })?;
        if let Some(ctx) = self.qualtrics.lock().get(&name) {
            return Ok((ctx.clone(), Some(name)));
        }
        let connected = crate::connection::connect(&self.vault, &name).map_err(|e| {
            ActionError::NotConfigured {
                action: action.to_string(),
                system: System::Qualtrics,
                fix: format!(
                    "Qualtrics connection {name} cannot be used ({}); fix it with `xmbridge connection test {name}`",
                    error_chain(&e)
                ),
            }
        })?;
        let mut ctx = ActionContext::new();
        connected.provide(&mut ctx, &name, None);
        self.qualtrics.lock().insert(name.clone(), ctx.clone());
        Ok((ctx, Some(name)))
    }

    /// The context of an external system's step, from the account the step names (or the
    /// owner's only one), cached per account and credential version.
    fn external_context(
        &self,
        plan: &dyn Plan,
        account: Option<&str>,
        spec: &ActionSpec,
        system: &str,
    ) -> Result<(ActionContext, Option<String>), ActionError> {
        let row = self
            .accounts
            .resolve(plan.owner(), system, account)
            .map_err(|e| ActionError::NotConfigured {
                action: spec.name.to_string(),
                system: spec.system,
                fix: e.to_string(),
            })?;
        if !row.token_ok {
            return Err(ActionError::TokenExpired {
                action: spec.name.to_string(),
                system: spec.system,
                fix: Accounts::reauthorize_command(&row),
            });
        }
        // Cached per account and credential version: a re-authorization in another process
        // (`account link --refresh`: a new refresh token, password or client secret) takes
        // effect here too.
        let version = self
            .vault
            .list_secrets(&row.name)
            .ok()
            .and_then(|s| {
                s.into_iter()
                    .filter(|i| {
                        matches!(
                            i.field,
                            SecretField::RefreshToken
                                | SecretField::Password
                                | SecretField::ClientSecret
                        )
                    })
                    .map(|i| i.updated_at.timestamp_millis())
                    .max()
            })
            .unwrap_or(0);
        let key = format!("{}@{version}", row.name);
        if let Some(ctx) = self.external.lock().get(&key) {
            return Ok((ctx.clone(), Some(row.name.clone())));
        }
        let ctx = crate::systems::account_context(&self.vault, &row, spec)?;
        self.external.lock().insert(key, ctx.clone());
        Ok((ctx, Some(row.name.clone())))
    }

    /// Registers exactly one Qualtrics event subscription per wanted one at its URL and deletes
    /// the ones this installation made for earlier URLs or removed workflows; `None` without a
    /// Qualtrics connection to register them with.
    pub async fn reconcile_subscriptions(
        &self,
        store: &dyn Store,
        wanted: &[WantedSubscription],
    ) -> Option<Vec<SubscriptionChange>> {
        let conn = self.default_qualtrics.clone()?;
        let context_for = |name: &str| {
            self.qualtrics_context("create-subscription", Some(name))
                .map(|(ctx, _)| ctx)
        };
        Some(
            hooks::reconcile_subscriptions(store, &self.registry, &conn, &context_for, wanted)
                .await,
        )
    }
}

/// `e` and its causes joined by ": " (what `{:#}` printed when this was an `anyhow` error).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Connector for LiveConnector {
    fn context<'a>(
        &'a self,
        plan: &'a dyn Plan,
        account: Option<&'a str>,
        spec: &'a ActionSpec,
    ) -> BoxFuture<'a, Result<(ActionContext, Option<String>), ActionError>> {
        Box::pin(async move {
            match crate::systems::external(spec.system) {
                None => self.qualtrics_context(spec.name, account),
                Some(ext) => self.external_context(plan, account, spec, ext.system.as_str()),
            }
        })
    }

    fn enrich<'a>(
        &'a self,
        _plan: &'a dyn Plan,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            let msg = &payload[QUALTRICS_MSG];
            let sid = msg["SurveyID"].as_str().unwrap_or_default().to_string();
            let rid = msg["ResponseID"].as_str().unwrap_or_default().to_string();
            let (ctx, _) = self.qualtrics_context("get-response", None)?;
            let action = self.registry.find("get-response")?;
            let mut inputs = Map::new();
            inputs.insert("survey_id".into(), json!(sid));
            inputs.insert("response_id".into(), json!(rid));
            let result = action
                .run(
                    &ctx,
                    ActionRequest {
                        inputs,
                        delivery_key: None,
                    },
                )
                .await?;
            let name = self.survey_name(&ctx, action.spec(), &sid).await?;
            Ok(enriched_event(payload, &sid, &rid, result, name))
        })
    }
}

/// How long a survey's name is reused before it is read again (a rename shows within this).
const SURVEY_NAME_TTL: Duration = Duration::from_secs(600);

impl LiveConnector {
    /// The name of survey `sid` (`GET /surveys/{sid}`), read once per [`SURVEY_NAME_TTL`]:
    /// events carry it as `survey.name`, as `workflow test` shows it. A failure is the action's
    /// kind of failure (retried, paused or dead-lettered like the response fetch).
    async fn survey_name(
        &self,
        ctx: &ActionContext,
        spec: &ActionSpec,
        sid: &str,
    ) -> Result<Option<String>, ActionError> {
        if let Some((name, at)) = self.survey_names.lock().get(sid)
            && at.elapsed() < SURVEY_NAME_TTL
        {
            return Ok(name.clone());
        }
        let client =
            ctx.get::<xmbridge_qualtrics::Client>()
                .ok_or_else(|| ActionError::NotConfigured {
                    action: spec.name.to_string(),
                    system: System::Qualtrics,
                    fix: "no Qualtrics connection for the event's survey".into(),
                })?;
        let survey: Value = client
            .get(client.url(&["surveys", sid]))
            .await
            .map_err(|e| xmbridge_actions::qualtrics::map_error(spec, ctx, e))?;
        let name = survey["name"].as_str().map(str::to_string);
        self.survey_names
            .lock()
            .insert(sid.to_string(), (name.clone(), Instant::now()));
        Ok(name)
    }
}

/// The event JSON workflows read (docs/workflows.md, "Event shapes"): `response`, `embedded`,
/// `contact`, `survey`. The one builder of it: live events and `workflow test` both use it.
/// `result` is the `result` of `GET /surveys/{sid}/responses/{rid}`; `survey_name` the survey's
/// `name`.
pub fn enriched_event(
    payload: &Value,
    sid: &str,
    rid: &str,
    result: Value,
    survey_name: Option<String>,
) -> Value {
    let values = result.get("values").cloned().unwrap_or(json!({}));
    let mut response = json!({
        "id": rid, "surveyId": sid,
        "values": values,
        "labels": result.get("labels").cloned().unwrap_or(json!({})),
        "displayedFields": result.get("displayedFields").cloned().unwrap_or(json!([])),
    });
    if let Some(obj) = response.as_object_mut() {
        for (k, v) in result.as_object().into_iter().flatten() {
            obj.entry(k.clone()).or_insert(v.clone());
        }
    }
    let embedded: Map<String, Value> = values
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("QID") && !xmbridge_qualtrics::response::is_metadata_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let v = |k: &str| values.get(k).cloned().unwrap_or(Value::Null);
    let contact = if ["recipientEmail", "contactId", "externalDataReference"]
        .iter()
        .any(|k| values.get(*k).is_some_and(|x| !x.is_null() && x != ""))
    {
        json!({"id": v("contactId"), "email": v("recipientEmail"),
               "firstName": v("recipientFirstName"), "lastName": v("recipientLastName"),
               "extRef": v("externalDataReference"), "embeddedData": embedded})
    } else {
        Value::Null
    };
    let mut out = payload.clone();
    if let Some(o) = out.as_object_mut() {
        o.insert("response".into(), response);
        o.insert("embedded".into(), Value::Object(embedded));
        o.insert("contact".into(), contact);
        o.insert("survey".into(), json!({"id": sid, "name": survey_name}));
    }
    out
}

/// How the delivery workers run.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// Delivery workers (at least 1).
    pub workers: usize,
    /// How long a worker holds an event before others may take it over.
    pub lease: Duration,
    /// Retry delays.
    pub retry: DeliveryBackoff,
    /// The Qualtrics connection that receives events and enriches responses (default: the only
    /// one).
    pub qualtrics: Option<String>,
    /// The user running the process: a changed definition counts as an edit by them.
    pub acting_user: Option<String>,
    /// With several Qualtrics connections and none chosen, run without a default one (its
    /// steps and event enrichment fail with the fix) instead of refusing to start: a
    /// long-running server must start whatever connections people have added.
    pub default_qualtrics_optional: bool,
    /// How long an idle worker waits before it looks for due events again, when nothing wakes
    /// it (an event stored by this process, or announced by another on a PostgreSQL store).
    pub poll: Duration,
}

/// [`ProcessOptions::poll`] by default.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// A workflow whose binding an edit by someone other than its creator dropped.
pub struct UnboundEdit {
    /// The workflow.
    pub workflow: String,
    /// Its state after the edit (creator, last editor).
    pub state: WorkflowState,
}

/// The workflows of a catalog, assembled into delivery workers over the state store.
pub struct WorkflowProcess {
    /// The workflows.
    pub workflows: Vec<Workflow>,
    /// Edits that dropped a credential binding (their events wait for re-authorization).
    pub unbound: Vec<UnboundEdit>,
    /// The steps' accounts and clients.
    pub connector: Arc<LiveConnector>,
    /// The delivery workers.
    pub engine: Arc<Engine>,
    /// Where received events go.
    pub outbox: Outbox,
    vault: Arc<Vault>,
    store: Arc<WorkflowStore>,
    accounts: Accounts,
    sources: Sources,
    registry: Arc<Registry>,
    acting_user: Option<String>,
    /// What the workers deliver by now: per workflow, its fingerprint and its trigger.
    loaded: Mutex<BTreeMap<String, (String, String)>>,
}

/// How often a running process looks for changed workflow definitions.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// What [`WorkflowProcess::reload`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Workflows whose definition changed: their next events run the new one.
    pub changed: Vec<String>,
    /// Workflows added: their events are delivered from now on.
    pub added: Vec<String>,
    /// Workflows removed: their events go to the dead letter, as at start-up.
    pub removed: Vec<String>,
    /// Workflows whose trigger changed, or new ones with a webhook: the receiver's hooks and
    /// Qualtrics subscriptions are set up at start, so these need a restart to receive events.
    pub restart_for_hooks: Vec<String>,
}

impl Reloaded {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }
}

impl WorkflowProcess {
    /// Loads the catalog, notes definition edits (an edit by someone other than the creator
    /// drops the credential binding) and assembles the workers.
    pub fn assemble(
        vault: Arc<Vault>,
        store: Arc<WorkflowStore>,
        sources: &Sources,
        registry: Registry,
        opts: ProcessOptions,
    ) -> Result<WorkflowProcess> {
        let workflows = load_workflows(sources, &registry)?;
        let registry = Arc::new(registry);
        let reload_registry = registry.clone();
        let mut unbound = Vec::new();
        for w in &workflows {
            let st = store.note_definition(
                &w.name,
                &w.fingerprint,
                opts.acting_user.as_deref(),
                &w.owner,
            )?;
            if !st.binding_valid {
                unbound.push(UnboundEdit {
                    workflow: w.name.clone(),
                    state: st,
                });
            }
        }
        let accounts = Accounts::new(store.clone(), vault.clone());
        let connector = Arc::new(LiveConnector::new(
            vault.clone(),
            accounts.clone(),
            registry.clone(),
            match default_qualtrics_connection(&vault, opts.qualtrics.as_deref()) {
                Err(RuntimeError::Usage(_)) if opts.default_qualtrics_optional => None,
                other => other?,
            },
        ));
        let outbox = Outbox::new(store.clone());
        let base = opts.retry.base.max(Duration::from_millis(1));
        let cfg = EngineConfig {
            workers: opts.workers.max(1),
            lease: opts.lease.max(Duration::from_secs(1)),
            batch: 8,
            retry: DeliveryBackoff {
                base,
                cap: opts.retry.cap.max(base),
            },
            poll: opts.poll.max(Duration::from_millis(10)),
            seed: now_ms() as u64,
        };
        let plans: Vec<Arc<dyn Plan>> = workflows
            .iter()
            .map(|w| Arc::new(WorkflowPlan(w.clone())) as Arc<dyn Plan>)
            .collect();
        let engine = Arc::new(Engine::new(
            store.clone(),
            registry,
            plans,
            connector.clone(),
            cfg,
            outbox.wake_signal(),
        ));
        let loaded = Mutex::new(
            workflows
                .iter()
                .map(|w| {
                    (
                        w.name.clone(),
                        (w.fingerprint.clone(), w.trigger.to_string()),
                    )
                })
                .collect(),
        );
        Ok(WorkflowProcess {
            workflows,
            unbound,
            connector,
            engine,
            outbox,
            vault,
            store,
            accounts,
            sources: sources.clone(),
            registry: reload_registry,
            acting_user: opts.acting_user.clone(),
            loaded,
        })
    }

    /// Reads the workflow definitions again and, when they changed since the last look, hands
    /// the workers the new plans (a running process must not deliver with a definition its
    /// owner already replaced). A changed definition is noted as at start-up (an edit by someone
    /// other than the creator drops the binding; `workflow add` has recorded its own already).
    /// Definitions that cannot be read leave the workers as they are (the error says why).
    pub fn reload(&self) -> Result<Reloaded> {
        let workflows = load_workflows(&self.sources, &self.registry)?;
        let mut loaded = self.loaded.lock();
        let mut out = Reloaded::default();
        let mut now = BTreeMap::new();
        for w in &workflows {
            let trigger = w.trigger.to_string();
            match loaded.get(&w.name) {
                Some((fp, _)) if *fp == w.fingerprint => {}
                before => {
                    self.store.note_definition(
                        &w.name,
                        &w.fingerprint,
                        self.acting_user.as_deref(),
                        &w.owner,
                    )?;
                    let hook = w.trigger.hook_path(&w.name).is_some();
                    match before {
                        Some((_, old_trigger)) => {
                            out.changed.push(w.name.clone());
                            if *old_trigger != trigger && hook {
                                out.restart_for_hooks.push(w.name.clone());
                            }
                        }
                        None => {
                            out.added.push(w.name.clone());
                            if hook {
                                out.restart_for_hooks.push(w.name.clone());
                            }
                        }
                    }
                }
            }
            now.insert(w.name.clone(), (w.fingerprint.clone(), trigger));
        }
        out.removed = loaded
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        if !out.is_empty() {
            self.engine.replace_plans(
                workflows
                    .into_iter()
                    .map(|w| Arc::new(WorkflowPlan(w)) as Arc<dyn Plan>)
                    .collect(),
            );
            *loaded = now;
        }
        Ok(out)
    }

    /// [`Self::reload`], with what it found (or why it could not) in the log.
    fn reload_and_log(&self) {
        match self.reload() {
            Ok(r) => {
                for w in &r.changed {
                    tracing::info!(workflow = %w, "workflow definition changed; its next events run the new one");
                }
                for w in &r.added {
                    tracing::info!(workflow = %w, "workflow added; delivering its events");
                }
                for w in &r.removed {
                    tracing::warn!(workflow = %w, "workflow removed; its remaining events go to the dead letter (add it back and replay them)");
                }
                for w in &r.restart_for_hooks {
                    tracing::warn!(workflow = %w, "the workflow's webhook trigger is new or changed: restart this process so its hook and Qualtrics subscription follow");
                }
            }
            Err(e) => tracing::warn!(
                error = %error_chain(&e),
                "the workflow definitions cannot be read; still delivering with the ones loaded before"
            ),
        }
    }

    /// Delivers every event that is due now, then returns.
    pub async fn run_once(&self) -> Result<RunSummary> {
        Ok(self
            .engine
            .run(RunMode::Once, std::future::pending())
            .await?)
    }

    /// The receiver's hook per webhook-triggered workflow and the Qualtrics subscriptions
    /// wanted at `public` (the URL the receiver is reached at). Hook secrets are made on first
    /// use; a ServiceNow secret also goes to a 0600 file under `hook_dir` for the admin.
    pub fn hooks(&self, public: &str, hook_dir: &Path) -> Result<HookSetup> {
        let public = public.trim_end_matches('/');
        let mut setup = HookSetup {
            hooks: Hooks::new(),
            wanted: Vec::new(),
            notices: Vec::new(),
        };
        for w in &self.workflows {
            match &w.trigger {
                Trigger::QualtricsResponse { survey_id } => {
                    let (key, _) = hooks::ensure_secret(&self.vault, &w.name)?;
                    setup.wanted.push(WantedSubscription {
                        workflow: w.name.clone(),
                        topic: format!("surveyengine.completedResponse.{survey_id}"),
                        url: format!("{public}/hooks/qualtrics/{}", w.name),
                        shared_key: key.clone(),
                    });
                    setup.hooks.insert(
                        w.name.clone(),
                        Hook::Qualtrics {
                            survey_id: survey_id.clone(),
                            shared_key: key,
                        },
                    );
                }
                Trigger::SalesforceOutbound { .. } => {
                    let (token, created) = hooks::ensure_secret(&self.vault, &w.name)?;
                    // Made here only for a workflow file placed by hand (`workflow add` makes it).
                    let protection = hooks::protection(w, Some(&self.accounts));
                    let org_id = protection
                        .as_ref()
                        .and_then(|p| p.org.as_ref())
                        .and_then(|o| o.org_id())
                        .map(str::to_string);
                    if created {
                        setup.notices.push(HookNotice::NewEndpointToken {
                            workflow: w.name.clone(),
                        });
                    }
                    if let Some(p) = &protection {
                        setup.notices.push(HookNotice::Protected {
                            workflow: w.name.clone(),
                            protection: p.describe(),
                        });
                    }
                    setup
                        .hooks
                        .insert(w.name.clone(), Hook::Salesforce { token, org_id });
                }
                Trigger::ServiceNow { table } => {
                    let (secret, _) = hooks::ensure_secret(&self.vault, &w.name)?;
                    // The secret also goes to a 0600 file the admin copies into the business
                    // rule (written once; `workflow endpoint NAME --secret` prints it too).
                    let path = hook_dir.join(format!("{}.secret", w.name));
                    if !path.exists() {
                        write_private(hook_dir, &path, secret.expose_secret())?;
                        setup.notices.push(HookNotice::ServiceNowSecretFile {
                            workflow: w.name.clone(),
                            path,
                        });
                    }
                    setup.hooks.insert(
                        w.name.clone(),
                        Hook::ServiceNow {
                            table: table.clone(),
                            secret,
                        },
                    );
                }
                Trigger::SyncResponses { .. } => {}
            }
        }
        Ok(setup)
    }

    /// Reconciles the Qualtrics event subscriptions (see [`LiveConnector::reconcile_subscriptions`]).
    pub async fn subscribe(
        &self,
        wanted: &[WantedSubscription],
    ) -> Option<Vec<SubscriptionChange>> {
        self.connector
            .reconcile_subscriptions(self.store.as_ref(), wanted)
            .await
    }

    /// Serves `hooks` on `receiver` and runs the delivery workers until `shutdown` resolves,
    /// then lets both finish.
    pub async fn serve(
        &self,
        receiver: Receiver,
        hooks: Hooks,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunSummary> {
        let app = self.receiver_router(hooks);
        self.serve_app(receiver, app, shutdown).await
    }

    /// The webhook receiver's routes for `hooks` (`/hooks/…` and `/healthz`, which reports the
    /// delivery workers' health), for a caller that merges more routes into one listener.
    pub fn receiver_router(&self, hooks: Hooks) -> axum::Router {
        router(
            self.outbox.clone(),
            hooks,
            self.engine.health(),
            Limits::default(),
        )
    }

    /// Serves `app` (which holds [`WorkflowProcess::receiver_router`]) on `receiver` and runs
    /// the delivery workers until `shutdown` resolves, then lets both finish: no new
    /// connection is accepted, requests in flight complete, and the workers hand their leased
    /// events back.
    pub async fn serve_app(
        &self,
        receiver: Receiver,
        app: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunSummary> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut rx_server = rx.clone();
        let server = tokio::spawn(receiver.serve(app, async move {
            let _ = rx_server.wait_for(|v| *v).await;
        }));
        let mut rx_workers = rx;
        let workers = {
            let engine = self.engine.clone();
            tokio::spawn(async move {
                engine
                    .run(RunMode::Forever, async move {
                        let _ = rx_workers.wait_for(|v| *v).await;
                    })
                    .await
            })
        };
        // Until shutdown, changed definitions reach the workers without a restart.
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => self.reload_and_log(),
            }
        }
        let _ = tx.send(true);
        let summary = workers.await.map_err(RuntimeError::Join)??;
        let _ = server.await;
        Ok(summary)
    }
}

/// What [`WorkflowProcess::hooks`] set up.
pub struct HookSetup {
    /// The receiver's hooks.
    pub hooks: Hooks,
    /// The Qualtrics event subscriptions wanted.
    pub wanted: Vec<WantedSubscription>,
    /// What the operator should know, in order.
    pub notices: Vec<HookNotice>,
}

/// Something set up for a workflow's hook that the operator acts on.
#[derive(Clone, Debug)]
pub enum HookNotice {
    /// A Salesforce outbound-message workflow got a new endpoint token.
    NewEndpointToken {
        /// The workflow.
        workflow: String,
    },
    /// How a Salesforce hook is protected.
    Protected {
        /// The workflow.
        workflow: String,
        /// The protection, described.
        protection: String,
    },
    /// A ServiceNow workflow's secret was written to `path`.
    ServiceNowSecretFile {
        /// The workflow.
        workflow: String,
        /// The 0600 file.
        path: PathBuf,
    },
}

/// Writes a new file only its owner can read, in a directory only its owner can enter (both
/// whatever the umask).
fn write_private(dir: &Path, path: &Path, text: &str) -> Result<()> {
    let io = |context: String| move |source| RuntimeError::Io { context, source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        builder.mode(0o700);
        opts.mode(0o600);
        builder
            .create(dir)
            .map_err(io(format!("create {}", dir.display())))?;
        // `mode` applies only to a directory it creates, and only through the umask.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("restrict {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .map_err(io(format!("create {}", dir.display())))?;
    let mut f = opts
        .open(path)
        .map_err(io(format!("write {}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restrict {}", path.display())))?;
    }
    std::io::Write::write_all(&mut f, text.as_bytes())
        .map_err(io(format!("write {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enriched_event_splits_embedded_data_from_metadata_and_finds_the_contact() {
        let payload = json!({"qualtricsMsg": {"SurveyID": "SV_1", "ResponseID": "R_1"}});
        let result = json!({"values": {"QID1": 9, "status": 0, "tier": "gold",
                                        "recipientEmail": "ana@example.com", "contactId": "CID_1"},
                            "labels": {"QID1": "9"}});
        let event = enriched_event(&payload, "SV_1", "R_1", result, Some("NPS".into()));
        assert_eq!(event["embedded"], json!({"tier": "gold"}));
        assert_eq!(event["contact"]["email"], "ana@example.com");
        assert_eq!(event["contact"]["id"], "CID_1");
        assert_eq!(event["response"]["id"], "R_1");
        assert_eq!(event["response"]["labels"]["QID1"], "9");
        assert_eq!(event["survey"], json!({"id": "SV_1", "name": "NPS"}));
        assert_eq!(event["qualtricsMsg"]["ResponseID"], "R_1");
        let anonymous = enriched_event(
            &payload,
            "SV_1",
            "R_2",
            json!({"values": {"QID1": 1}}),
            None,
        );
        assert_eq!(anonymous["contact"], Value::Null);
    }
}
