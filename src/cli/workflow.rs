//! `xmbridge workflow add|list|show|remove|templates|test`: workflow definitions and their dry run.
//!
//! Workflows are read from `xmbridge.toml` (`--config`, else the current directory),
//! `./workflows/*.toml` and `$XMBRIDGE_HOME/workflows/*.toml`; `workflow add` writes the last
//! (through `xmbridge_runtime::definitions`). This module parses arguments, reads the files
//! given and prints; parsing, validation, templates and the preflight live in
//! `xmbridge-workflows`, the response fetch and Salesforce describes of `workflow test` in
//! `xmbridge_runtime::preview`. Running workflows (`run`, `pause`, `resume`, `replay`) is one
//! more variant each of [`WorkflowCommand`].

use super::usage;
use super::user::{audit, existing_users, known_role};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;
use xmbridge_actions::Registry;
use xmbridge_runtime::definitions::{DefinitionSource, DefinitionText};
use xmbridge_runtime::{control, definitions, endpoint, preview};
use xmbridge_service::users::Role;
use xmbridge_workflows::accounts::Accounts;
use xmbridge_workflows::catalog::{self, Catalog, Sources, TEMPLATES};
use xmbridge_workflows::definition::{EventContext, Trigger, Workflow};
use xmbridge_workflows::mapping::{SalesforceSchema, StaticSchema, TargetSchema};
use xmbridge_workflows::preflight;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge workflow templates
  xmbridge workflow add --template response-to-salesforce --set survey_id=SV_abc --set salesforce_account=sf-prod \\
      --set servicenow_account=sn-prod --name nps-to-salesforce
  xmbridge workflow add --file detractors.toml
  xmbridge workflow list
  xmbridge workflow test nps-to-salesforce --response R_1a2b3c --connection acme

Workflow files: xmbridge.toml, ./workflows/*.toml and $XMBRIDGE_HOME/workflows/*.toml (see docs/workflows.md).")]
pub struct WorkflowArgs {
    /// The xmbridge.toml to read workflows from (default: ./xmbridge.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: WorkflowCommand,
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Validate a workflow (from a file or a template) and save it to $XMBRIDGE_HOME/workflows.
    #[command(after_help = "Examples:
  xmbridge workflow add --file detractors.toml
  xmbridge workflow add --template incident-closed-survey --set survey_id=SV_abc --set library_id=UR_1 \\
      --set message_id=MS_1 --set mailing_list_id=CG_1 --set from_email=cx@acme.example --set from_name=Acme
  xmbridge workflow add --file detractors.toml --replace      # an edit of an existing workflow")]
    Add(AddArgs),
    /// List every workflow with its trigger, owner and file.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one workflow: where it is defined, its trigger and steps, and its TOML.
    Show { name: String },
    /// Remove a workflow saved by `workflow add`.
    Remove { name: String },
    /// List the built-in templates and their parameters.
    Templates,
    /// Dry run: render every step for one response or event and check types and permissions.
    #[command(after_help = "Examples:
  xmbridge workflow test nps-to-salesforce --response R_1a2b3c --connection acme
  xmbridge workflow test nps-to-salesforce --response R_1a2b3c --connection acme --describe describe.json
  xmbridge workflow test incident-closed-survey --event-json incident.json
Salesforce steps are checked live as their own linked account unless --describe or
--salesforce-token-url names one describe source. Exit code 0 when every step that runs was
checked and passes, 1 when a problem is found (permission, type, input, unusable account), 3
when nothing wrong was found but a step could not be checked (\"not checked\", never a pass).")]
    Test(TestArgs),
    /// Print the URL a Salesforce outbound message or a ServiceNow business rule posts to (the
    /// Salesforce one carries the workflow's secret token), or the hook's secret itself.
    #[command(after_help = "Examples:
  # The endpoint URL to paste into the Salesforce outbound message (it holds a secret token):
  xmbridge workflow endpoint case-closed-survey --public-url https://hooks.example.org
  # The value a ServiceNow business rule sends in the X-Xmbridge-Secret header:
  xmbridge workflow endpoint incident-closed-survey --secret

The URL and the secret are printed only on standard output, for you to copy; nothing is logged.")]
    Endpoint(EndpointArgs),
    /// Receive webhooks and deliver events until stopped (`--once`: deliver what is due, exit).
    Run(Box<super::workflow_run::RunArgs>),
    /// Stop delivering a workflow's events (they keep arriving and wait).
    Pause(super::workflow_run::PauseArgs),
    /// Deliver a paused workflow's events again (`--reauthorize` restores its credentials).
    Resume(super::workflow_run::ResumeArgs),
    /// Put dead-lettered events back in the outbox with fresh attempts.
    Replay(super::workflow_run::ReplayArgs),
    /// Events per state, the pause reason and the dead letters with their last error.
    Status(super::workflow_run::StatusArgs),
    /// Give a workflow saved by `workflow add` to another user (its owner or an admin may).
    #[command(after_help = "Examples:
  xmbridge workflow transfer nps-to-salesforce --to sam --as pat     # pat owns it
  xmbridge workflow transfer nps-to-salesforce --to sam --as lee     # lee is an admin

Only the workflow's owner or an admin (see `xmbridge user list`) may change its owner. The
change is recorded in the audit log. As with any edit by someone other than the workflow's
creator, the credential binding is dropped until the owner re-authorizes with
`xmbridge workflow resume NAME --reauthorize --as OWNER`.")]
    Transfer(TransferArgs),
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// The workflow.
    pub name: String,
    /// The new owner.
    #[arg(long, value_name = "USER")]
    pub to: String,
    /// Who makes this change (default $XMBRIDGE_USER, else $USER).
    #[arg(long = "as", value_name = "USER", env = "XMBRIDGE_USER")]
    pub as_user: Option<String>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// A TOML file with one [[workflow]].
    #[arg(
        long,
        conflicts_with = "template",
        required_unless_present = "template"
    )]
    pub file: Option<PathBuf>,
    /// A built-in template (see `xmbridge workflow templates`).
    #[arg(long)]
    pub template: Option<String>,
    /// A template parameter, NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", requires = "template")]
    pub set: Vec<String>,
    /// The workflow's name (overrides the file's or the template's).
    #[arg(long)]
    pub name: Option<String>,
    /// Who makes this change (default $XMBRIDGE_USER, else $USER); the owner of a new workflow
    /// whose file names none.
    #[arg(long = "as", value_name = "USER", env = "XMBRIDGE_USER")]
    pub as_user: Option<String>,
    /// Replace an existing workflow of the same name (an edit).
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args, Debug)]
pub struct EndpointArgs {
    pub name: String,
    /// How Salesforce, ServiceNow or Qualtrics reach the receiver (the `--public-url` of
    /// `workflow run`).
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    pub public_url: String,
    /// Print the hook's secret (the ServiceNow header value, the Qualtrics shared key, the
    /// Salesforce token) instead of the URL.
    #[arg(long)]
    pub secret: bool,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    pub name: String,
    /// The response to run on (R_…), fetched from Qualtrics.
    #[arg(long, required_unless_present = "event_json")]
    pub response: Option<String>,
    /// The survey of the response (default: the trigger's survey).
    #[arg(long)]
    pub survey: Option<String>,
    /// The Qualtrics connection to fetch the response with (see `xmbridge connection list`).
    #[arg(long, env = "XMBRIDGE_CONNECTION")]
    pub connection: Option<String>,
    /// Use this event JSON instead of fetching a response (`{"record": {...}}` for Salesforce or
    /// ServiceNow triggers).
    #[arg(long, value_name = "FILE")]
    pub event_json: Option<PathBuf>,
    /// Salesforce describe bodies (`{"Object": describe, …}`) to check mappings and permissions
    /// against, as the linked user sees them.
    #[arg(long, value_name = "FILE", conflicts_with = "salesforce_token_url")]
    pub describe: Option<PathBuf>,
    /// Check Salesforce steps against the live describe of a server-to-server connection (client
    /// credentials): the org's token URL, e.g. https://acme.my.salesforce.com/services/oauth2/token.
    #[arg(long, value_name = "URL")]
    pub salesforce_token_url: Option<String>,
    /// The connected app's client id for --salesforce-token-url.
    #[arg(long, value_name = "ID", env = "XMBRIDGE_SALESFORCE_CLIENT_ID")]
    pub salesforce_client_id: Option<String>,
    /// A file holding the client secret for --salesforce-token-url (else the environment variable
    /// XMBRIDGE_SALESFORCE_CLIENT_SECRET).
    #[arg(long, value_name = "FILE")]
    pub salesforce_client_secret_file: Option<PathBuf>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: WorkflowArgs) -> anyhow::Result<()> {
    let home = xmbridge_vault::Home::from_env()?;
    let sources = Sources::standard(args.config.clone(), Some(home.root()));
    let registry = xmbridge_runtime::workflow::registry();
    match args.command {
        WorkflowCommand::Add(a) => add(a, &sources, &home, &registry),
        WorkflowCommand::List { json } => list(json, &sources, &registry),
        WorkflowCommand::Show { name } => show(&name, &sources, &registry),
        WorkflowCommand::Remove { name } => remove(&name, &sources, &home, &registry),
        WorkflowCommand::Templates => {
            templates();
            Ok(())
        }
        WorkflowCommand::Test(t) => test(t, &sources, &registry).await,
        WorkflowCommand::Endpoint(e) => endpoint(e, &sources, &registry),
        WorkflowCommand::Run(a) => super::workflow_run::run(*a, &sources, registry).await,
        WorkflowCommand::Pause(a) => super::workflow_run::pause(a),
        WorkflowCommand::Resume(a) => super::workflow_run::resume(a, &sources, &registry),
        WorkflowCommand::Replay(a) => super::workflow_run::replay(a, &sources, &registry),
        WorkflowCommand::Status(a) => super::workflow_run::status(a, &sources, &registry),
        WorkflowCommand::Transfer(a) => transfer(a, &sources, &home, &registry),
    }
}

fn load_catalog(sources: &Sources, registry: &Registry) -> anyhow::Result<Catalog> {
    catalog::load(sources, registry).map_err(|e| usage(e.to_string()))
}

fn find<'c>(catalog: &'c Catalog, name: &str) -> anyhow::Result<&'c catalog::Entry> {
    catalog
        .get(name)
        .ok_or_else(|| control::no_such_workflow(name, &catalog.names()).into())
}

fn current_user(as_user: Option<String>) -> Option<String> {
    as_user
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.trim().is_empty())
}

fn add(
    a: AddArgs,
    sources: &Sources,
    home: &xmbridge_vault::Home,
    registry: &Registry,
) -> anyhow::Result<()> {
    let editor = current_user(a.as_user.clone());
    let source = if let Some(t) = &a.template {
        DefinitionSource::Template {
            name: t.clone(),
            set: a.set.clone(),
        }
    } else {
        DefinitionSource::File(
            a.file
                .clone()
                .ok_or_else(|| usage("give --file FILE or --template NAME"))?,
        )
    };
    let DefinitionText { shown, text } =
        definitions::definition_text(source, a.name.as_deref(), editor.as_deref())?;
    let w = definitions::parse_one_workflow(&shown, &text, registry)?;
    let target = definitions::save_target(home, sources, registry, &w, a.replace)?;
    let replacing = target.replacing;
    let users = existing_users(home)?;
    let previous_owner = if replacing {
        let catalog = load_catalog(sources, registry)?;
        catalog.get(&w.name).map(|e| e.workflow.owner.clone())
    } else {
        None
    };
    // Ownership changes only by its owner or an admin: an edit (--replace) naming another owner
    // is a transfer, under the same rule as `workflow transfer`.
    if let Some(from) = previous_owner.as_deref()
        && from != w.owner
    {
        may_change_owner(users.as_ref(), &w.name, from, editor.as_deref())?;
    }
    // A hook's secret exists from the moment the workflow does: its endpoint never accepts an
    // unauthenticated call, not even before the first `workflow run`.
    let hook = match w.trigger.hook_auth() {
        None => None,
        Some(_) => super::workflow_run::open_store()
            .and_then(|(_, vault, store)| {
                xmbridge_workflows::hooks::ensure_secret(&vault, &w.name)?;
                let accounts = Accounts::new(store, vault);
                Ok(xmbridge_workflows::hooks::protection(&w, Some(&accounts)))
            })
            .with_context(|| {
                format!(
                    "cannot create the secret of workflow \"{}\"'s hook; nothing was saved",
                    w.name
                )
            })?,
    };
    definitions::write_definition(&target, &w, &text)?;
    // Recorded now, under the editor who saved it: a runner started later by someone else
    // must not take the edit for theirs.
    let at = super::state::location(home)?;
    let state = xmbridge_workflows::store::WorkflowStore::open_at(&at)
        .and_then(|store| {
            xmbridge_workflows::store::Store::note_saved(
                &store,
                &w.name,
                &w.fingerprint,
                previous_owner.as_deref(),
                &w.owner,
                editor.as_deref(),
            )
        })
        .with_context(|| {
            format!(
                "workflow \"{}\" was saved to {}, but its edit could not be recorded in the state store",
                w.name,
                target.path.display()
            )
        })?;
    if replacing {
        record_workflow_edit(&w, editor.as_deref());
    }
    if let Some(users) = &users {
        let mut detail = json!({"owner": w.owner, "replaced": replacing});
        if let Some(from) = previous_owner.as_deref().filter(|f| *f != w.owner) {
            detail["previous_owner"] = json!(from);
        }
        audit(
            users,
            editor.as_deref(),
            if replacing {
                "workflow.replace"
            } else {
                "workflow.add"
            },
            &w.name,
            detail,
        )?;
    }
    println!(
        "{} workflow \"{}\" (owner {}): {}, {} step{}",
        if replacing { "replaced" } else { "added" },
        w.name,
        w.owner,
        w.trigger,
        w.steps.len(),
        if w.steps.len() == 1 { "" } else { "s" }
    );
    println!("  saved to {}", target.path.display());
    if let (Some(p), Some(path)) = (&hook, w.trigger.hook_path(&w.name)) {
        println!("  hook: POST {path}, protected by {}", p.describe());
        if matches!(w.trigger, Trigger::SalesforceOutbound { .. }) {
            println!(
                "  the outbound message's endpoint URL: `xmbridge workflow endpoint {} --public-url URL`",
                w.name
            );
        }
    }
    if !state.binding_valid {
        let reauthorize = format!(
            "xmbridge workflow resume {} --reauthorize --as {}",
            w.name, w.owner
        );
        if editor.as_deref() == Some(w.owner.as_str()) {
            println!(
                "  note: the workflow's credential binding is still dropped (since an earlier edit or transfer); its owner re-authorizes: {reauthorize}"
            );
        } else {
            println!(
                "  note: {} is not the owner ({}); the workflow's credential binding is dropped until the owner re-authorizes: {reauthorize}",
                editor.as_deref().unwrap_or("an unknown user"),
                w.owner,
            );
        }
    }
    println!(
        "next: xmbridge workflow test {} {}",
        w.name,
        test_hint(&w.trigger)
    );
    Ok(())
}

/// The rule "ownership changed only by its owner or an admin": `actor` may give workflow `name`
/// away from `owner` when they are its owner or a known admin of this installation.
fn may_change_owner(
    users: Option<&xmbridge_service::users::Users>,
    name: &str,
    owner: &str,
    actor: Option<&str>,
) -> anyhow::Result<()> {
    let Some(actor) = actor else {
        return Err(usage(format!(
            "workflow \"{name}\" belongs to {owner}: say who changes its owner with --as USER (its owner or an admin)"
        )));
    };
    if actor == owner || known_role(users, actor)? == Some(Role::Admin) {
        return Ok(());
    }
    bail!(
        "{actor} may not change the owner of workflow \"{name}\" (owned by {owner}): only its owner or an admin may (rule: ownership changes only by its owner or an admin); ask {owner} or an admin to run `xmbridge workflow transfer {name} --to USER`"
    )
}

fn transfer(
    a: TransferArgs,
    sources: &Sources,
    home: &xmbridge_vault::Home,
    registry: &Registry,
) -> anyhow::Result<()> {
    let actor = current_user(a.as_user.clone());
    let catalog = load_catalog(sources, registry)?;
    let owner = find(&catalog, &a.name)?.workflow.owner.clone();
    let users = existing_users(home)?;
    may_change_owner(users.as_ref(), &a.name, &owner, actor.as_deref())?;
    if a.to == owner {
        return Err(usage(format!(
            "workflow \"{}\" already belongs to {owner}",
            a.name
        )));
    }
    // With users set up, the new owner must be one of them (a typo would orphan the workflow).
    if let Some(u) = &users
        && u.count().map_err(super::user::service_error)? > 0
        && known_role(Some(u), &a.to)?.is_none()
    {
        return Err(usage(format!(
            "no user named '{}': `xmbridge user list` shows the users",
            a.to
        )));
    }
    let done = definitions::transfer_definition(home, sources, registry, &a.name, &a.to)?;
    let (_, _, store) = super::workflow_run::open_store()?;
    // The binding follows the owner: the new owner's re-authorization restores it, and it holds
    // meanwhile only if the new owner made the transfer themself.
    let state = xmbridge_workflows::store::Store::note_owner(
        &*store,
        &a.name,
        &done.from,
        &done.to,
        actor.as_deref(),
    )?;
    let users = match users {
        Some(u) => u,
        None => super::user::open_users(&super::connection::open_vault()?.1)?,
    };
    audit(
        &users,
        actor.as_deref(),
        "workflow.transfer",
        &a.name,
        json!({"from": done.from, "to": done.to}),
    )?;
    println!(
        "workflow \"{}\" now belongs to {} (was {}); {}",
        a.name,
        done.to,
        done.from,
        done.path.display()
    );
    if !state.binding_valid {
        println!(
            "  its credential binding is dropped until {} re-authorizes: xmbridge workflow resume {} --reauthorize --as {}",
            done.to, a.name, done.to
        );
    }
    Ok(())
}

/// The collaborator rule's hook: an edit of a saved workflow by someone other than its creator
/// must drop the workflow's credential binding until someone re-authorizes. The state store that
/// records edits and bindings belongs to the workflow runner (`store.rs`, h5-wfrun); its call goes
/// here.
fn record_workflow_edit(workflow: &Workflow, editor: Option<&str>) {
    tracing::info!(
        workflow = %workflow.name,
        owner = %workflow.owner,
        editor = editor.unwrap_or("?"),
        "workflow edited"
    );
}

fn test_hint(t: &Trigger) -> &'static str {
    match t {
        Trigger::QualtricsResponse { .. } | Trigger::SyncResponses { .. } => {
            "--response R_… --connection CONN"
        }
        _ => "--event-json event.json",
    }
}

fn trigger_json(t: &Trigger) -> Value {
    match t {
        Trigger::QualtricsResponse { survey_id } | Trigger::SyncResponses { survey_id } => {
            json!({"type": t.kind(), "survey_id": survey_id})
        }
        Trigger::SalesforceOutbound {
            object,
            organization_id,
        } => {
            json!({"type": t.kind(), "object": object, "organization_id": organization_id})
        }
        Trigger::ServiceNow { table } => json!({"type": t.kind(), "table": table}),
    }
}

fn list(as_json: bool, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let catalog = load_catalog(sources, registry)?;
    if as_json {
        let rows: Vec<Value> = catalog
            .entries
            .iter()
            .map(|e| {
                let w = &e.workflow;
                json!({
                    "name": w.name,
                    "description": w.description,
                    "owner": w.owner,
                    "trigger": trigger_json(&w.trigger),
                    "condition": w.condition.as_ref().map(|c| c.source()),
                    "steps": w.steps.iter().map(|s| json!({"name": s.name, "action": s.action, "account": s.account})).collect::<Vec<_>>(),
                    "max_attempts": w.max_attempts,
                    "file": e.file.display().to_string(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if catalog.entries.is_empty() {
        println!(
            "no workflows; add one with `xmbridge workflow add --template NAME` (see `xmbridge workflow templates`)"
        );
        return Ok(());
    }
    let width = catalog
        .names()
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:10}  {:5}  TRIGGER / FILE",
        "NAME", "OWNER", "STEPS"
    );
    for e in &catalog.entries {
        let w = &e.workflow;
        println!(
            "{:width$}  {:10}  {:5}  {}",
            w.name,
            w.owner,
            w.steps.len(),
            w.trigger
        );
        println!("{:width$}  {:10}  {:5}  {}", "", "", "", e.file.display());
    }
    Ok(())
}

fn show(name: &str, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let catalog = load_catalog(sources, registry)?;
    let e = find(&catalog, name)?;
    let w = &e.workflow;
    println!("workflow {} (owner {})", w.name, w.owner);
    if let Some(d) = &w.description {
        println!("  {d}");
    }
    println!("file:      {}", e.file.display());
    println!("trigger:   {}", w.trigger);
    if let (Some(p), Some(path)) = (hook_protection(w), w.trigger.hook_path(&w.name)) {
        println!("hook:      POST {path}, protected by {}", p.describe());
    }
    if let Some(c) = &w.condition {
        println!("condition: {c}");
    }
    println!("attempts:  {} before the dead letter", w.max_attempts);
    for (i, s) in w.steps.iter().enumerate() {
        let mut line = format!(
            "step {}:    {} → {} ({})",
            i + 1,
            s.name,
            s.action,
            s.system
        );
        if let Some(a) = &s.account {
            line.push_str(&format!(", account {a}"));
        }
        if let Some(m) = &s.mapping {
            line.push_str(&format!(
                ", maps {} field{} onto {}",
                m.fields.len(),
                if m.fields.len() == 1 { "" } else { "s" },
                m.object
            ));
        }
        if let Some(wh) = &s.when {
            line.push_str(&format!(", when {wh}"));
        }
        println!("{line}");
    }
    println!();
    let text = std::fs::read_to_string(&e.file)
        .with_context(|| format!("cannot read {}", e.file.display()))?;
    print!("{}", workflow_toml(&text, name));
    Ok(())
}

/// The TOML of one workflow: the whole file when it holds only that one, else that table.
fn workflow_toml(text: &str, name: &str) -> String {
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return text.to_string();
    };
    let Some(toml::Value::Array(list)) = table.remove("workflow") else {
        return text.to_string();
    };
    if list.len() == 1 && table.is_empty() {
        return text.to_string();
    }
    let one: Vec<toml::Value> = list
        .into_iter()
        .filter(|w| w.get("name").and_then(toml::Value::as_str) == Some(name))
        .collect();
    let mut out = toml::Table::new();
    out.insert("workflow".into(), toml::Value::Array(one));
    toml::to_string(&out).unwrap_or_else(|_| text.to_string())
}

fn remove(
    name: &str,
    sources: &Sources,
    home: &xmbridge_vault::Home,
    registry: &Registry,
) -> anyhow::Result<()> {
    let target = definitions::remove_definition(home, sources, registry, name)?;
    println!("removed workflow \"{name}\" ({})", target.display());
    let (_, vault) = super::connection::open_vault()?;
    if definitions::forget_hook(home, &vault, name)? {
        println!("  its hook secret is deleted; a workflow added under this name gets a new one");
    }
    Ok(())
}

/// The hook's protection as the state store knows it now (the linked accounts may be unreadable:
/// then the org check says so).
fn hook_protection(w: &Workflow) -> Option<xmbridge_workflows::hooks::Protection> {
    w.trigger.hook_auth()?;
    let accounts = super::workflow_run::open_store()
        .ok()
        .map(|(_, vault, store)| Accounts::new(store, vault));
    xmbridge_workflows::hooks::protection(w, accounts.as_ref())
}

fn endpoint(e: EndpointArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    use xmbridge_vault::ExposeSecret;
    let catalog = load_catalog(sources, registry)?;
    let w = &find(&catalog, &e.name)?.workflow;
    let public = endpoint::public_base(w, &e.public_url)?;
    let (_, vault) = super::connection::open_vault()?;
    let (secret, created) = xmbridge_workflows::hooks::ensure_secret(&vault, &w.name)?;
    if created {
        eprintln!(
            "workflow {}: its hook had no secret yet; made one (a running `workflow run` picks it up when restarted)",
            w.name
        );
    }
    if e.secret {
        println!("{}", secret.expose_secret());
        return Ok(());
    }
    let url = endpoint::endpoint_url(&public, w, &secret)?;
    println!("{url}");
    match &w.trigger {
        Trigger::SalesforceOutbound { .. } => eprintln!(
            "paste it as the outbound message's Endpoint URL; it holds the workflow's secret token, so treat it as a password"
        ),
        Trigger::ServiceNow { .. } => eprintln!(
            "the business rule must also send the header X-Xmbridge-Secret; `xmbridge workflow endpoint {} --secret` prints its value",
            w.name
        ),
        _ => eprintln!(
            "`xmbridge workflow run --public-url {}` registers this URL with Qualtrics, with the shared key; nothing to configure by hand",
            e.public_url
        ),
    }
    if endpoint::exposes_secret(&public) {
        eprintln!(
            "warning: {} is plain http: the secret would cross the network unencrypted; put a TLS reverse proxy in front and use its https URL",
            e.public_url
        );
    }
    Ok(())
}

fn templates() {
    for t in TEMPLATES {
        println!("{}\n  {}", t.name, t.description);
        for p in t.params {
            let d = match (p.name, p.default) {
                (_, Some(d)) => format!(" [default: {d}]"),
                ("name", None) => format!(" [default: {}]", t.name),
                _ => String::new(),
            };
            println!("    --set {}=…  {}{d}", p.name, p.help);
        }
        println!();
    }
}

/// The Salesforce app of `--salesforce-token-url`, its secret from a file or the environment.
fn salesforce_schema(t: &TestArgs, url: &str) -> anyhow::Result<SalesforceSchema> {
    let client_id = t.salesforce_client_id.clone().ok_or_else(|| {
        usage("--salesforce-token-url needs --salesforce-client-id (or XMBRIDGE_SALESFORCE_CLIENT_ID)")
    })?;
    let secret = match &t.salesforce_client_secret_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {}", f.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        None => std::env::var("XMBRIDGE_SALESFORCE_CLIENT_SECRET").map_err(|_| {
            usage("--salesforce-token-url needs --salesforce-client-secret-file FILE (or XMBRIDGE_SALESFORCE_CLIENT_SECRET)")
        })?,
    };
    Ok(preview::salesforce_schema(
        url,
        client_id,
        secrecy::SecretString::from(secret),
    ))
}

async fn test(t: TestArgs, sources: &Sources, registry: &Registry) -> anyhow::Result<()> {
    let catalog = load_catalog(sources, registry)?;
    let w = &find(&catalog, &t.name)?.workflow;
    let event = match (&t.event_json, &t.response) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: not JSON: {e}", f.display())))?;
            if !v.is_object() {
                return Err(usage(format!(
                    "{}: the event must be a JSON object",
                    f.display()
                )));
            }
            v
        }
        (None, Some(rid)) => {
            let sid = match (&t.survey, &w.trigger) {
                (Some(s), _) => s.clone(),
                (
                    None,
                    Trigger::QualtricsResponse { survey_id } | Trigger::SyncResponses { survey_id },
                ) => survey_id.clone(),
                (None, _) => {
                    return Err(usage(format!(
                        "workflow \"{}\" is triggered by {}; give --event-json FILE (or --survey to test it on a response)",
                        w.name, w.trigger
                    )));
                }
            };
            let conn = t.connection.as_deref().ok_or_else(|| {
                usage("give --connection NAME to fetch the response (see `xmbridge connection list`), or --event-json FILE")
            })?;
            let connected = super::connection::connect(conn)?;
            preview::response_event(&connected, conn, &sid, rid).await?
        }
        (None, None) => return Err(usage("give --response ID or --event-json FILE")),
    };
    let describes: Option<Box<dyn TargetSchema>> = match (&t.describe, &t.salesforce_token_url) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: not JSON: {e}", f.display())))?;
            Some(Box::new(
                StaticSchema::from_json(&v).map_err(|e| usage(format!("{}: {e}", f.display())))?,
            ))
        }
        (None, Some(url)) => Some(Box::new(salesforce_schema(&t, url)?)),
        (None, None) => None,
    };
    let ctx = EventContext::new(event);
    // Each step is checked live as its own linked account, except Salesforce steps when a
    // describe was given.
    let (_, vault, store) = super::workflow_run::open_store()?;
    let live = preview::AccountDescribes::for_workflow(&vault, store, w, registry);
    let report = match describes {
        Some(salesforce) => {
            let given = preview::SalesforceDescribes {
                salesforce,
                others: live,
            };
            preflight::preflight(w, &ctx, registry, &given).await
        }
        None => preflight::preflight(w, &ctx, registry, &live).await,
    };
    let hook = hook_protection(w);
    if t.json {
        let hook = match (&hook, w.trigger.hook_path(&w.name)) {
            (Some(p), Some(path)) => {
                let mut v = p.to_json();
                v["path"] = json!(path);
                v
            }
            _ => Value::Null,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "event": ctx.event, "hook": hook, "report": report,
                "passed": report.passed(), "verdict": report.verdict(),
            }))?
        );
    } else {
        if let (Some(p), Some(path)) = (&hook, w.trigger.hook_path(&w.name)) {
            println!("hook: POST {path}, protected by {}", p.describe());
        }
        print!("{}", report.to_text());
    }
    match report.verdict() {
        preflight::Verdict::Passed => Ok(()),
        preflight::Verdict::Problems => bail!(
            "workflow \"{}\": preflight found {} problem{}",
            w.name,
            report.problem_count(),
            if report.problem_count() == 1 { "" } else { "s" }
        ),
        preflight::Verdict::NotChecked => Err(anyhow::anyhow!(super::NotChecked(format!(
            "workflow \"{}\": {} step(s) could not be checked, so this is no pass (see the lines marked \"not checked\")",
            w.name,
            report.unchecked_count()
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_workflow_is_cut_from_a_shared_file() {
        let text = "[sync]\nx = 1\n[[workflow]]\nname = \"a\"\n[[workflow]]\nname = \"b\"\n";
        let out = workflow_toml(text, "b");
        assert!(
            out.contains("name = \"b\"") && !out.contains("name = \"a\"") && !out.contains("sync"),
            "{out}"
        );
    }
}
