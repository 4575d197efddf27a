//! `xmbridge workflow run|pause|resume|replay|status`: the run-time side of workflows.
//!
//! `run` loads the catalog, starts the webhook receiver (`xmbridge-server`) and the delivery
//! workers (`xmbridge_workflows::worker`) on the state store in XMBRIDGE_HOME, registers the
//! Qualtrics event subscription of each response-triggered workflow, and connects each step to
//! its account ([`LiveConnector`]: the owner's linked Salesforce/ServiceNow account, or a Qualtrics
//! connection). The other commands change or show a workflow's run state. Definitions and their
//! checks belong to `workflow add|list|show|test` (`workflow.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use xmbridge_actions::{ActionContext, ActionError, ActionRequest, ActionSpec, Registry, System};
use xmbridge_server::receiver::{Hook, Hooks, Limits, Receiver, router};
use xmbridge_vault::{ExposeSecret, Home, Provider, SecretField, Vault};
use xmbridge_workflows::accounts::Accounts;
use xmbridge_workflows::catalog::{self, Sources};
use xmbridge_workflows::definition::{Trigger, Workflow};
use xmbridge_workflows::event::QUALTRICS_MSG;
use xmbridge_workflows::hooks::{self, SubscriptionChange, WantedSubscription};
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{EventState, SqliteStore, Store, now_ms};
use xmbridge_workflows::worker::{Connector, Engine, EngineConfig, Plan, RetryPolicy, RunMode};

use super::UsageError;
use super::account::AsUser;
use super::connection::open_vault;

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow!(UsageError(msg.into()))
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # Receive webhooks on 127.0.0.1:8787 and deliver with 4 workers until Ctrl-C:
  xmbridge workflow run --listen 127.0.0.1:8787 --public-url https://hooks.example.org
  # Deliver everything due and exit (cron, tests):
  xmbridge workflow run --once

Qualtrics posts to {public-url}/hooks/qualtrics/{workflow} (run registers the subscription);
Salesforce outbound messages go to {public-url}/hooks/salesforce/{workflow}?token=… and ServiceNow
business rules to {public-url}/hooks/servicenow/{workflow} with the header X-Xmbridge-Secret —
`xmbridge workflow endpoint NAME --public-url URL` prints the URL (and `--secret` the secret).
GET /healthz answers 503 while a delivery worker is failing. Put a TLS reverse proxy in front
(docs/security.md).")]
pub struct RunArgs {
    /// Where the webhook receiver listens (loopback only; put a reverse proxy in front).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Delivery workers.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Deliver every event that is due now, then exit (no receiver).
    #[arg(long)]
    pub once: bool,
    /// The URL Qualtrics reaches the receiver at (default: http://{listen}).
    #[arg(long)]
    pub public_url: Option<String>,
    /// The Qualtrics connection that receives events and enriches responses (default: the only
    /// Qualtrics connection).
    #[arg(long)]
    pub qualtrics: Option<String>,
    /// Seconds a worker holds an event before others may take it over (a killed worker's events
    /// come back after this).
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, default_value_t = 2000)]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 900_000)]
    pub retry_cap_ms: u64,
    #[command(flatten)]
    pub user: AsUser,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:
  xmbridge workflow pause nps-to-salesforce --reason \"mapping under review\"")]
pub struct PauseArgs {
    pub name: String,
    /// Why (shown by `workflow status`).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub user: AsUser,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge workflow resume nps-to-salesforce
  # After a collaborator's edit dropped the credential binding, the owner re-authorizes:
  xmbridge workflow resume nps-to-salesforce --reauthorize --as pat")]
pub struct ResumeArgs {
    pub name: String,
    /// Re-establish the credential binding (only the workflow's owner).
    #[arg(long)]
    pub reauthorize: bool,
    #[command(flatten)]
    pub user: AsUser,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge workflow replay nps-to-salesforce --all
  xmbridge workflow replay nps-to-salesforce --event ev_0123456789abcdef0123")]
pub struct ReplayArgs {
    pub name: String,
    /// One dead event.
    #[arg(long, conflicts_with = "all")]
    pub event: Option<String>,
    /// Every dead event of the workflow.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:
  xmbridge workflow status nps-to-salesforce --json")]
pub struct StatusArgs {
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn open_store() -> anyhow::Result<(Home, Arc<Vault>, Arc<SqliteStore>)> {
    let (home, vault) = open_vault()?;
    let store = Arc::new(SqliteStore::open(home.state_db())?);
    Ok((home, vault, store))
}

fn load_catalog(sources: &Sources, registry: &Registry) -> anyhow::Result<Vec<Workflow>> {
    let cat = catalog::load(sources, registry).map_err(|e| usage(e.to_string()))?;
    Ok(cat.entries.into_iter().map(|e| e.workflow).collect())
}

/// Re-binds the workflows owned by `owner` whose binding a collaborator's edit dropped. Returns
/// their names.
pub fn rebind_for_owner(store: &SqliteStore, owner: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for wf in store.unbound_workflows()? {
        if store.workflow_state(&wf)?.creator.as_deref() == Some(owner) {
            store.rebind(&wf)?;
            out.push(wf);
        }
    }
    Ok(out)
}

pub fn pause(args: PauseArgs) -> anyhow::Result<()> {
    let (_, _, store) = open_store()?;
    let user = args.user.resolve()?;
    let reason = args.reason.unwrap_or_else(|| format!("paused by {user}"));
    store.set_paused(
        &args.name,
        &reason,
        &format!("xmbridge workflow resume {}", args.name),
        None,
    )?;
    println!(
        "workflow {} paused; events keep arriving and wait (resume with `xmbridge workflow resume {}`)",
        args.name, args.name
    );
    Ok(())
}

pub fn resume(args: ResumeArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let (_, _, store) = open_store()?;
    let state = store.workflow_state(&args.name)?;
    if args.reauthorize {
        let user = args.user.resolve()?;
        let owner = load_catalog(sources, registry)?
            .into_iter()
            .find(|w| w.name == args.name)
            .map(|w| w.owner)
            .or(state.creator.clone())
            .ok_or_else(|| usage(format!("no workflow named {}", args.name)))?;
        if owner != user {
            return Err(usage(format!(
                "only the workflow's owner {owner} can re-authorize it (run with `--as {owner}`)"
            )));
        }
        store.rebind(&args.name)?;
        println!(
            "workflow {}: credential binding re-authorized by {user}",
            args.name
        );
    } else if !state.binding_valid {
        return Err(usage(format!(
            "workflow {} was edited by {} (not its creator {}), which dropped its credential binding; its owner re-authorizes with `xmbridge workflow resume {} --reauthorize --as {}`",
            args.name,
            state.last_editor.as_deref().unwrap_or("someone"),
            state.creator.as_deref().unwrap_or("?"),
            args.name,
            state.creator.as_deref().unwrap_or("OWNER"),
        )));
    }
    if let Some(account) = &state.paused_account
        && store.get_account(account).is_ok_and(|a| !a.token_ok)
    {
        return Err(usage(format!(
            "workflow {} is paused because account {account}'s token expired; re-authorize it with `{}`",
            args.name,
            state
                .fix
                .as_deref()
                .unwrap_or("xmbridge account link NAME --refresh")
        )));
    }
    store.resume(&args.name)?;
    println!(
        "workflow {} resumed; held events are delivered by `xmbridge workflow run`",
        args.name
    );
    Ok(())
}

/// A workflow the catalog defines, or an error naming the ones that exist.
fn defined(name: &str, sources: &Sources, registry: &Registry) -> anyhow::Result<Workflow> {
    let workflows = load_catalog(sources, registry)?;
    if let Some(w) = workflows.iter().find(|w| w.name == name) {
        return Ok(w.clone());
    }
    let names: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
    let hint = xmbridge_workflows::expr::closest(name, names.iter().copied())
        .map(|s| format!("did you mean {s}? "))
        .unwrap_or_default();
    Err(usage(format!(
        "no workflow named \"{name}\"; {hint}workflows: {}",
        if names.is_empty() {
            "(none; add one with `xmbridge workflow add`)".to_string()
        } else {
            names.join(", ")
        }
    )))
}

pub fn replay(args: ReplayArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    if args.event.is_none() && !args.all {
        return Err(usage("say what to replay: --event ID or --all"));
    }
    // Replaying events of a workflow that is not defined would only dead-letter them again.
    if let Err(e) = defined(&args.name, sources, registry) {
        return Err(usage(format!(
            "{}; a workflow must be defined to replay its events (add it back with `xmbridge workflow add`, then replay)",
            e.downcast_ref::<UsageError>()
                .map(|u| u.0.clone())
                .unwrap_or_else(|| format!("{e:#}"))
        )));
    }
    let (_, _, store) = open_store()?;
    let n = store.replay(&args.name, args.event.as_deref(), now_ms())?;
    match (&args.event, n) {
        (Some(id), 0) => println!("event {id} is not in the dead letter; nothing to replay"),
        _ => println!(
            "{n} dead event(s) of {} back in the outbox with fresh attempts",
            args.name
        ),
    }
    Ok(())
}

pub fn status(args: StatusArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let (_, _, store) = open_store()?;
    let st = store.status(&args.name)?;
    let ws = store.workflow_state(&args.name)?;
    // A workflow removed from the files may still have events: show them, saying so.
    let is_defined = match defined(&args.name, sources, registry) {
        Ok(_) => true,
        Err(_) if st.counts.values().any(|n| *n > 0) => false,
        Err(e) => return Err(e),
    };
    let counts: Map<String, Value> = EventState::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                json!(st.counts.get(s).copied().unwrap_or(0)),
            )
        })
        .collect();
    let dead: Vec<Value> = st
        .dead
        .iter()
        .map(|e| {
            json!({"id": e.id, "dedupe_key": e.dedupe_key, "attempts": e.attempts,
                   "step": e.last_step, "last_error": e.last_error})
        })
        .collect();
    if args.json {
        let out = json!({
            "workflow": args.name,
            "defined": is_defined,
            "paused": ws.paused, "reason": ws.reason, "fix": ws.fix,
            "binding_valid": ws.binding_valid, "creator": ws.creator, "last_editor": ws.last_editor,
            "counts": counts, "dead": dead,
            "retries": {"failed_attempts": st.failed_attempts, "events": st.retried_events},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("workflow {}", args.name);
    if !is_defined {
        println!(
            "  NOT DEFINED any more (no workflow file names it); its events stay until it is added back"
        );
    }
    if ws.paused {
        println!(
            "  PAUSED: {}{}",
            ws.reason.as_deref().unwrap_or("-"),
            ws.fix
                .as_deref()
                .map(|f| format!(" — fix: {f}"))
                .unwrap_or_default()
        );
    }
    if !ws.binding_valid {
        println!(
            "  CREDENTIAL BINDING DROPPED by an edit of {}; re-authorize: xmbridge workflow resume {} --reauthorize --as {}",
            ws.last_editor.as_deref().unwrap_or("?"),
            args.name,
            ws.creator.as_deref().unwrap_or("OWNER")
        );
    }
    for (state, n) in &counts {
        println!("  {state:<8} {n}");
    }
    println!(
        "  retries  {} failed attempt(s) on {} event(s)",
        st.failed_attempts, st.retried_events
    );
    for d in &st.dead {
        println!(
            "  dead {} (key {}, step {}, {} attempts): {}",
            d.id,
            d.dedupe_key,
            d.last_step.as_deref().unwrap_or("-"),
            d.attempts,
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

// ---- run ---------------------------------------------------------------------------------------

/// The Qualtrics connection for triggers and enrichment.
fn qualtrics_connection(vault: &Vault, chosen: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(c) = chosen {
        return Ok(Some(c.to_string()));
    }
    let names: Vec<String> = vault
        .list_connections()?
        .into_iter()
        .filter(|c| {
            c.provider == Provider::Qualtrics && !c.name.starts_with(hooks::HOOK_CONNECTION_PREFIX)
        })
        .map(|c| c.name)
        .collect();
    match names.len() {
        0 => Ok(None),
        1 => Ok(names.into_iter().next()),
        _ => Err(usage(format!(
            "several Qualtrics connections ({}); choose one with --qualtrics NAME",
            names.join(", ")
        ))),
    }
}

/// Adapts a parsed definition to the workers' [`Plan`].
struct WorkflowPlan(Workflow);

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
    fn matches(&self, event: &Value, steps: &Map<String, Value>) -> Result<bool, String> {
        let ctx = xmbridge_workflows::definition::EventContext {
            event: event.clone(),
            steps: steps.clone(),
        };
        self.0.matches(&ctx).map_err(|e| e.to_string())
    }
    fn render_step(
        &self,
        index: usize,
        event: &Value,
        steps: &Map<String, Value>,
    ) -> Result<Option<xmbridge_workflows::worker::StepCall>, String> {
        let ctx = xmbridge_workflows::definition::EventContext {
            event: event.clone(),
            steps: steps.clone(),
        };
        Ok(self
            .0
            .render_step(index, &ctx)
            .map_err(|e| e.to_string())?
            .map(|r| xmbridge_workflows::worker::StepCall {
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
}

impl LiveConnector {
    fn qualtrics_context(
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
        let connected = super::connection::connect(&name).map_err(|e| ActionError::NotConfigured {
            action: action.to_string(),
            system: System::Qualtrics,
            fix: format!("Qualtrics connection {name} cannot be used ({e:#}); fix it with `xmbridge connection test {name}`"),
        })?;
        let mut ctx = ActionContext::new().with(connected.client);
        if let Some(dir) = connected.settings.directory.clone() {
            ctx.insert(xmbridge_actions::qualtrics::DefaultDirectory(dir));
        }
        self.qualtrics.lock().insert(name.clone(), ctx.clone());
        let _ = &self.vault;
        Ok((ctx, Some(name)))
    }
}

impl Connector for LiveConnector {
    fn context<'a>(
        &'a self,
        plan: &'a dyn Plan,
        account: Option<&'a str>,
        spec: &'a ActionSpec,
    ) -> BoxFuture<'a, Result<(ActionContext, Option<String>), ActionError>> {
        Box::pin(async move {
            match spec.system {
                System::Qualtrics => self.qualtrics_context(spec.name, account),
                System::Salesforce | System::ServiceNow => {
                    let system = if spec.system == System::Salesforce {
                        "salesforce"
                    } else {
                        "servicenow"
                    };
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
                    // Cached per account and credential version: a re-authorization in
                    // another process (`account link --refresh`: a new refresh token, password
                    // or client secret) takes effect here too.
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
                    let ctx = super::account::external_context(&self.vault, &row, spec)?;
                    self.external.lock().insert(key, ctx.clone());
                    Ok((ctx, Some(row.name.clone())))
                }
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
            Ok(enriched_event(payload, &sid, &rid, result))
        })
    }
}

/// Response fields that are metadata, not embedded data.
const RESPONSE_METADATA: &[&str] = &[
    "startDate",
    "endDate",
    "status",
    "ipAddress",
    "progress",
    "duration",
    "finished",
    "recordedDate",
    "_recordId",
    "locationLatitude",
    "locationLongitude",
    "distributionChannel",
    "userLanguage",
    "recipientLastName",
    "recipientFirstName",
    "recipientEmail",
    "externalDataReference",
    "contactId",
];

/// The event JSON workflows read (docs/workflows.md, "Event shapes"): `response`, `embedded`,
/// `contact`, `survey`.
pub fn enriched_event(payload: &Value, sid: &str, rid: &str, result: Value) -> Value {
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
        .filter(|(k, _)| !k.starts_with("QID") && !RESPONSE_METADATA.contains(&k.as_str()))
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
        o.insert("survey".into(), json!({"id": sid, "name": Value::Null}));
    }
    out
}

pub async fn run(args: RunArgs, sources: &Sources, registry: Registry) -> anyhow::Result<()> {
    let (home, vault, store) = open_store()?;
    let workflows = load_catalog(sources, &registry)?;
    let registry = Arc::new(registry);
    let acting = args.user.resolve().ok();
    // Edits: a changed definition counts as an edit by the acting user; a user other than the
    // creator (the owner when first seen) drops the credential binding.
    for w in &workflows {
        let st = store.note_definition(&w.name, &w.fingerprint, acting.as_deref(), &w.owner)?;
        if !st.binding_valid {
            eprintln!(
                "workflow {}: edited by {} (not its creator {}); its events wait until `xmbridge workflow resume {} --reauthorize --as {}`",
                w.name,
                st.last_editor.as_deref().unwrap_or("?"),
                st.creator.as_deref().unwrap_or("?"),
                w.name,
                st.creator.as_deref().unwrap_or("OWNER")
            );
        }
    }
    let accounts = Accounts::new(store.clone(), vault.clone());
    let connector = Arc::new(LiveConnector {
        vault: vault.clone(),
        accounts: accounts.clone(),
        registry: registry.clone(),
        default_qualtrics: qualtrics_connection(&vault, args.qualtrics.as_deref())?,
        qualtrics: Mutex::new(HashMap::new()),
        external: Mutex::new(HashMap::new()),
    });
    let outbox = Outbox::new(store.clone());
    let cfg = EngineConfig {
        workers: args.workers.max(1),
        lease: Duration::from_secs(args.lease_secs.max(1)),
        batch: 8,
        retry: RetryPolicy {
            base: Duration::from_millis(args.retry_base_ms.max(1)),
            cap: Duration::from_millis(args.retry_cap_ms.max(args.retry_base_ms.max(1))),
        },
        poll: Duration::from_millis(500),
        seed: now_ms() as u64,
    };
    let plans: Vec<Arc<dyn Plan>> = workflows
        .iter()
        .map(|w| Arc::new(WorkflowPlan(w.clone())) as Arc<dyn Plan>)
        .collect();
    let engine = Arc::new(Engine::new(
        store.clone(),
        registry.clone(),
        plans,
        connector.clone(),
        cfg,
        outbox.wake_signal(),
    ));
    if args.once {
        let s = engine.run(RunMode::Once, std::future::pending()).await?;
        println!(
            "delivered {} event(s), skipped {}, {} to retry later, {} dead, {} held by paused workflows",
            s.done, s.skipped, s.retried, s.dead, s.held
        );
        return Ok(());
    }

    let receiver = Receiver::bind(args.listen, Limits::default())
        .await
        .map_err(|e| usage(e.to_string()))?;
    let mut hooks = Hooks::new();
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| receiver.base_url());
    let public = public.trim_end_matches('/').to_string();
    let mut wanted = Vec::new();
    for w in &workflows {
        match &w.trigger {
            Trigger::QualtricsResponse { survey_id } => {
                let (key, _) = hooks::ensure_secret(&vault, &w.name)?;
                wanted.push(WantedSubscription {
                    workflow: w.name.clone(),
                    topic: format!("surveyengine.completedResponse.{survey_id}"),
                    url: format!("{public}/hooks/qualtrics/{}", w.name),
                    shared_key: key.clone(),
                });
                hooks.insert(
                    w.name.clone(),
                    Hook::Qualtrics {
                        survey_id: survey_id.clone(),
                        shared_key: key,
                    },
                );
            }
            Trigger::SalesforceOutbound { .. } => {
                let (token, created) = hooks::ensure_secret(&vault, &w.name)?;
                // Made here only for a workflow file placed by hand (`workflow add` makes it).
                let protection = hooks::protection(w, Some(&accounts));
                let org_id = protection
                    .as_ref()
                    .and_then(|p| p.org.as_ref())
                    .and_then(|o| o.org_id())
                    .map(str::to_string);
                if created {
                    println!(
                        "workflow {}: new endpoint token; `xmbridge workflow endpoint {} --public-url {public}` prints the URL for the Salesforce outbound message",
                        w.name, w.name
                    );
                }
                if let Some(p) = &protection {
                    println!("workflow {}: hook protected by {}", w.name, p.describe());
                }
                hooks.insert(w.name.clone(), Hook::Salesforce { token, org_id });
            }
            Trigger::ServiceNow { table } => {
                let (secret, _) = hooks::ensure_secret(&vault, &w.name)?;
                // The secret also goes to a 0600 file the admin copies into the business rule
                // (written once; `workflow endpoint NAME --secret` prints it too).
                let dir = home.root().join("hooks");
                let path = dir.join(format!("{}.secret", w.name));
                if !path.exists() {
                    write_private(&dir, &path, secret.expose_secret())?;
                    println!(
                        "workflow {}: the ServiceNow business rule must send header X-Xmbridge-Secret with the value in {}",
                        w.name,
                        path.display()
                    );
                }
                hooks.insert(
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
    // Subscriptions: exactly one per Qualtrics-triggered workflow at this URL; the ones this
    // installation made for earlier URLs or removed workflows are deleted.
    if let Some(conn) = connector.default_qualtrics.clone() {
        let context_for = |name: &str| {
            connector
                .qualtrics_context("create-subscription", Some(name))
                .map(|(ctx, _)| ctx)
        };
        let changes =
            hooks::reconcile_subscriptions(store.as_ref(), &registry, &conn, &context_for, &wanted)
                .await;
        for change in changes {
            match change {
                SubscriptionChange::Failed { .. } | SubscriptionChange::Foreign { .. } => {
                    eprintln!("{change}")
                }
                SubscriptionChange::Kept { .. } => tracing::info!("{change}"),
                _ => println!("{change}"),
            }
        }
    } else {
        for w in &wanted {
            eprintln!(
                "workflow {}: no Qualtrics connection to register its event subscription with; add one (`xmbridge connection add qualtrics …`) and pass --qualtrics NAME — its events will not arrive until then",
                w.workflow
            );
        }
    }
    println!("receiving webhooks on {}", receiver.base_url());
    let app = router(outbox, hooks, engine.health(), Limits::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut rx2 = rx.clone();
    let server = tokio::spawn(receiver.serve(app, async move {
        let _ = rx2.wait_for(|v| *v).await;
    }));
    let mut rx3 = rx.clone();
    let workers = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(RunMode::Forever, async move {
                    let _ = rx3.wait_for(|v| *v).await;
                })
                .await
        })
    };
    super::shutdown_signal().await;
    let _ = tx.send(true);
    let summary = workers.await??;
    let _ = server.await;
    println!(
        "stopped: delivered {} event(s), {} retried, {} dead",
        summary.done, summary.retried, summary.dead
    );
    Ok(())
}

/// Writes a new file only its owner can read, in a directory only its owner can enter (both
/// whatever the umask).
fn write_private(dir: &std::path::Path, path: &std::path::Path, text: &str) -> anyhow::Result<()> {
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
            .with_context(|| format!("create {}", dir.display()))?;
        // `mode` applies only to a directory it creates, and only through the umask.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restrict {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let mut f = opts
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restrict {}", path.display()))?;
    }
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}
