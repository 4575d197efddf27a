//! `xmbridge workflow run|pause|resume|replay|status`: the run-time side of workflows.
//!
//! `run` assembles the workflow process (`xmbridge_runtime::workflow`: the delivery workers on the
//! state store in XMBRIDGE_HOME, each step connected to its account, the webhook receiver and the
//! Qualtrics event subscriptions) and prints what it did. The other commands change or show a
//! workflow's run state (`xmbridge_runtime::control`) and print it. Definitions and their checks belong to `workflow add|list|show|test`
//! (`workflow.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};
use xmbridge_actions::Registry;
use xmbridge_runtime::control::{self, Replay};
use xmbridge_runtime::workflow::{HookNotice, ProcessOptions, UnboundEdit, WorkflowProcess};
use xmbridge_server::receiver::{Limits, Receiver};
use xmbridge_vault::{Home, Vault};
use xmbridge_workflows::catalog::Sources;
use xmbridge_workflows::hooks::SubscriptionChange;
use xmbridge_workflows::store::{EventState, WorkflowStore};
use xmbridge_workflows::worker::DeliveryBackoff;

use super::account::AsUser;
use super::connection::open_vault;
use super::usage;

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

pub(super) fn open_store() -> anyhow::Result<(Home, Arc<Vault>, Arc<WorkflowStore>)> {
    let (home, vault) = open_vault()?;
    let store = Arc::new(WorkflowStore::open_at(vault.location())?);
    Ok((home, vault, store))
}

pub fn pause(args: PauseArgs) -> anyhow::Result<()> {
    let (home, _, store) = open_store()?;
    let user = args.user.resolve()?;
    control::pause(&store, &args.name, &user, args.reason.clone())?;
    audit_control(
        &home,
        Some(&user),
        "workflow.pause",
        &args.name,
        json!({"reason": args.reason}),
    )?;
    println!(
        "workflow {} paused; events keep arriving and wait (resume with `xmbridge workflow resume {}`)",
        args.name, args.name
    );
    Ok(())
}

pub fn resume(args: ResumeArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let (home, _, store) = open_store()?;
    if args.reauthorize {
        let user = args.user.resolve()?;
        control::reauthorize(&store, sources, registry, &args.name, &user)?;
        println!(
            "workflow {}: credential binding re-authorized by {user}",
            args.name
        );
    }
    control::resume(&store, &args.name, args.reauthorize)?;
    audit_control(
        &home,
        args.user.user.as_deref(),
        "workflow.resume",
        &args.name,
        json!({"reauthorize": args.reauthorize}),
    )?;
    println!(
        "workflow {} resumed; held events are delivered by `xmbridge workflow run` or `xmbridge serve`",
        args.name
    );
    Ok(())
}

pub fn replay(args: ReplayArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let which = match (&args.event, args.all) {
        (Some(id), _) => Replay::Event(id),
        (None, true) => Replay::All,
        (None, false) => return Err(usage("say what to replay: --event ID or --all")),
    };
    control::check_replayable(&args.name, sources, registry)?;
    let (home, _, store) = open_store()?;
    let n = control::replay(&store, &args.name, which)?;
    audit_control(
        &home,
        None,
        "workflow.replay",
        &args.name,
        json!({"event": args.event, "all": args.all, "replayed": n}),
    )?;
    match (which, n) {
        (Replay::Event(id), 0) => {
            println!("event {id} is not in the dead letter; nothing to replay")
        }
        _ => println!(
            "{n} dead event(s) of {} back in the outbox with fresh attempts",
            args.name
        ),
    }
    Ok(())
}

/// Writes a workflow control done from the CLI to the audit log, under the operator (and the
/// user named with `--as`), as the API writes its own; an installation without users has none.
fn audit_control(
    home: &Home,
    on_behalf_of: Option<&str>,
    action: &str,
    workflow: &str,
    detail: Value,
) -> anyhow::Result<()> {
    match super::user::existing_users(home)? {
        Some(users) => super::user::audit(&users, on_behalf_of, action, workflow, detail),
        None => Ok(()),
    }
}

pub fn status(args: StatusArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let (_, _, store) = open_store()?;
    let control::StatusReport {
        defined: is_defined,
        status: st,
        state: ws,
    } = control::status(&store, sources, registry, &args.name)?;
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

pub async fn run(args: RunArgs, sources: &Sources, registry: Registry) -> anyhow::Result<()> {
    let (home, vault, store) = open_store()?;
    let retry_base = Duration::from_millis(args.retry_base_ms);
    let process = WorkflowProcess::assemble(
        vault,
        store,
        sources,
        registry,
        ProcessOptions {
            workers: args.workers,
            lease: Duration::from_secs(args.lease_secs),
            retry: DeliveryBackoff {
                base: retry_base,
                cap: Duration::from_millis(args.retry_cap_ms),
            },
            qualtrics: args.qualtrics.clone(),
            // Edits: a changed definition counts as an edit by the acting user; a user other
            // than the creator (the owner when first seen) drops the credential binding.
            acting_user: args.user.resolve().ok(),
            default_qualtrics_optional: false,
            poll: xmbridge_runtime::workflow::DEFAULT_POLL,
        },
    )?;
    print_unbound(&process.unbound);
    if args.once {
        let s = process.run_once().await?;
        println!(
            "delivered {} event(s), skipped {}, {} to retry later, {} dead, {} held by paused workflows",
            s.done, s.skipped, s.retried, s.dead, s.held
        );
        return Ok(());
    }

    let receiver = Receiver::bind(args.listen, Limits::default())
        .await
        .map_err(|e| usage(e.to_string()))?;
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| receiver.base_url());
    let public = public.trim_end_matches('/').to_string();
    let setup = process.hooks(&public, &home.root().join("hooks"))?;
    print_hook_notices(&setup.notices, &public);
    // Subscriptions: exactly one per Qualtrics-triggered workflow at this URL; the ones this
    // installation made for earlier URLs or removed workflows are deleted.
    let changes = process.subscribe(&setup.wanted).await;
    let wanted: Vec<String> = setup.wanted.iter().map(|w| w.workflow.clone()).collect();
    print_subscriptions(changes, &wanted);
    println!("receiving webhooks on {}", receiver.base_url());
    let summary = process
        .serve(receiver, setup.hooks, super::shutdown_signal())
        .await?;
    println!(
        "stopped: delivered {} event(s), {} retried, {} dead",
        summary.done, summary.retried, summary.dead
    );
    Ok(())
}

/// Says which workflows wait for their owner after someone else's edit (also `serve`).
pub(super) fn print_unbound(unbound: &[UnboundEdit]) {
    for edit in unbound {
        let st = &edit.state;
        eprintln!(
            "workflow {}: edited by {} (not its creator {}); its events wait until `xmbridge workflow resume {} --reauthorize --as {}`",
            edit.workflow,
            st.last_editor.as_deref().unwrap_or("?"),
            st.creator.as_deref().unwrap_or("?"),
            edit.workflow,
            st.creator.as_deref().unwrap_or("OWNER")
        );
    }
}

/// What the hooks' set-up wants the operator to know (also `serve`).
pub(super) fn print_hook_notices(notices: &[HookNotice], public: &str) {
    for notice in notices {
        match notice {
            HookNotice::NewEndpointToken { workflow } => println!(
                "workflow {workflow}: new endpoint token; `xmbridge workflow endpoint {workflow} --public-url {public}` prints the URL for the Salesforce outbound message"
            ),
            HookNotice::Protected {
                workflow,
                protection,
            } => println!("workflow {workflow}: hook protected by {protection}"),
            HookNotice::ServiceNowSecretFile { workflow, path } => println!(
                "workflow {workflow}: the ServiceNow business rule must send header X-Xmbridge-Secret with the value in {}",
                path.display()
            ),
        }
    }
}

/// The Qualtrics subscription changes, or (`None`: no Qualtrics connection) why the `wanted`
/// workflows get no events (also `serve`).
pub(super) fn print_subscriptions(changes: Option<Vec<SubscriptionChange>>, wanted: &[String]) {
    match changes {
        Some(changes) => {
            for change in changes {
                match change {
                    SubscriptionChange::Failed { .. } | SubscriptionChange::Foreign { .. } => {
                        eprintln!("{change}")
                    }
                    SubscriptionChange::Kept { .. } => tracing::info!("{change}"),
                    _ => println!("{change}"),
                }
            }
        }
        None => {
            for w in wanted {
                eprintln!(
                    "workflow {w}: no Qualtrics connection to register its event subscription with; add one (`xmbridge connection add qualtrics …`) and pass --qualtrics NAME — its events will not arrive until then"
                );
            }
        }
    }
}
