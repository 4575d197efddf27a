//! A workflow's run state changed or read: pause, resume (the owner's re-authorization after a
//! collaborator's edit, the refusal while an account's token is expired), replay of dead
//! events, and status. The caller prints what comes back.

use xmbridge_actions::Registry;
use xmbridge_workflows::catalog::Sources;
use xmbridge_workflows::definition::Workflow;
use xmbridge_workflows::store::{Store, WorkflowState, WorkflowStatus, WorkflowStore, now_ms};

use crate::workflow::load_workflows;
use crate::{Result, RuntimeError};

/// The workflows the definition files hold; an unreadable definition is the caller's mistake.
fn catalog(sources: &Sources, registry: &Registry) -> Result<Vec<Workflow>> {
    load_workflows(sources, registry).map_err(|e| RuntimeError::usage(e.to_string()))
}

/// The workflow `name` the definition files hold, or an error naming the ones that exist.
pub fn defined(name: &str, sources: &Sources, registry: &Registry) -> Result<Workflow> {
    let workflows = catalog(sources, registry)?;
    if let Some(w) = workflows.iter().find(|w| w.name == name) {
        return Ok(w.clone());
    }
    let names: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
    Err(no_such_workflow(name, &names))
}

/// The usage error for a workflow `name` the definition files do not hold, suggesting the
/// closest of `names` and listing them all.
pub fn no_such_workflow(name: &str, names: &[&str]) -> RuntimeError {
    let hint = xmbridge_workflows::expr::closest(name, names.iter().copied())
        .map(|s| format!("did you mean {s}? "))
        .unwrap_or_default();
    RuntimeError::usage(format!(
        "no workflow named \"{name}\"; {hint}workflows: {}",
        if names.is_empty() {
            "(none; add one with `xmbridge workflow add`)".to_string()
        } else {
            names.join(", ")
        }
    ))
}

/// Pauses workflow `name` for `user`: events keep arriving and wait.
pub fn pause(store: &WorkflowStore, name: &str, user: &str, reason: Option<String>) -> Result<()> {
    let reason = reason.unwrap_or_else(|| format!("paused by {user}"));
    store.set_paused(
        name,
        &reason,
        &format!("xmbridge workflow resume {name}"),
        None,
    )?;
    Ok(())
}

/// Re-establishes the credential binding of workflow `name`; only its owner `user` may.
pub fn reauthorize(
    store: &WorkflowStore,
    sources: &Sources,
    registry: &Registry,
    name: &str,
    user: &str,
) -> Result<()> {
    let state = store.workflow_state(name)?;
    let owner = catalog(sources, registry)?
        .into_iter()
        .find(|w| w.name == name)
        .map(|w| w.owner)
        .or(state.creator)
        .ok_or_else(|| RuntimeError::usage(format!("no workflow named {name}")))?;
    if owner != user {
        return Err(RuntimeError::usage(format!(
            "only the workflow's owner {owner} can re-authorize it (run with `--as {owner}`)"
        )));
    }
    store.rebind(name)?;
    Ok(())
}

/// Resumes workflow `name`, unless an edit dropped its credential binding (and it was not just
/// re-authorized) or the account whose expired token paused it is still refused.
pub fn resume(store: &WorkflowStore, name: &str, reauthorized: bool) -> Result<()> {
    let state = store.workflow_state(name)?;
    if !reauthorized && !state.binding_valid {
        return Err(RuntimeError::usage(format!(
            "workflow {name} was edited by {} (not its creator {}), which dropped its credential binding; its owner re-authorizes with `xmbridge workflow resume {name} --reauthorize --as {}`",
            state.last_editor.as_deref().unwrap_or("someone"),
            state.creator.as_deref().unwrap_or("?"),
            state.creator.as_deref().unwrap_or("OWNER"),
        )));
    }
    if let Some(account) = &state.paused_account
        && store.get_account(account).is_ok_and(|a| !a.token_ok)
    {
        return Err(RuntimeError::usage(format!(
            "workflow {name} is paused because account {account}'s token expired; re-authorize it with `{}`",
            state
                .fix
                .as_deref()
                .unwrap_or("xmbridge account link NAME --refresh")
        )));
    }
    store.resume(name)?;
    Ok(())
}

/// What a replay takes back from the dead letter.
#[derive(Clone, Copy, Debug)]
pub enum Replay<'a> {
    /// One dead event.
    Event(&'a str),
    /// Every dead event of the workflow.
    All,
}

/// Refuses a replay of workflow `name` unless the definition files hold it: its events would
/// only be dead-lettered again.
pub fn check_replayable(name: &str, sources: &Sources, registry: &Registry) -> Result<()> {
    defined(name, sources, registry).map(drop).map_err(|e| {
        RuntimeError::usage(format!(
            "{e}; a workflow must be defined to replay its events (add it back with `xmbridge workflow add`, then replay)"
        ))
    })
}

/// Puts dead events of workflow `name` back in the outbox with fresh attempts (after
/// [`check_replayable`]); returns how many.
pub fn replay(store: &WorkflowStore, name: &str, which: Replay<'_>) -> Result<u64> {
    let event = match which {
        Replay::Event(id) => Some(id),
        Replay::All => None,
    };
    Ok(store.replay(name, event, now_ms())?)
}

/// A workflow's status as `workflow status` shows it.
#[derive(Debug)]
pub struct StatusReport {
    /// Whether the definition files still hold the workflow.
    pub defined: bool,
    /// Its events by state, retries and dead events.
    pub status: WorkflowStatus,
    /// Its pause and credential-binding state.
    pub state: WorkflowState,
}

/// The status of workflow `name`; a workflow removed from the files but with events left is
/// reported (not defined) rather than refused.
pub fn status(
    store: &WorkflowStore,
    sources: &Sources,
    registry: &Registry,
    name: &str,
) -> Result<StatusReport> {
    let status = store.status(name)?;
    let state = store.workflow_state(name)?;
    let defined = match defined(name, sources, registry) {
        Ok(_) => true,
        Err(_) if status.counts.values().any(|n| *n > 0) => false,
        Err(e) => return Err(e),
    };
    Ok(StatusReport {
        defined,
        status,
        state,
    })
}
