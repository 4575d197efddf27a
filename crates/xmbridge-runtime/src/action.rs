//! One action run as `xmbridge action` runs it: a Qualtrics action on a stored connection (the
//! named one, or the only one stored), a Salesforce or ServiceNow action with a linked account
//! the acting user owns or was granted (resolved by the rule workflow steps follow). The
//! clients go into the action's context the one way workflows put them there, and the action's
//! refusal of its inputs is reported as the caller's mistake.

use std::sync::Arc;

use serde_json::Value;
use xmbridge_actions::{Action, ActionContext, ActionError, ActionRequest};
use xmbridge_vault::{Home, Vault};
use xmbridge_workflows::accounts::{AccountError, Accounts};
use xmbridge_workflows::store::{Store, StoreError, WorkflowStore};

use crate::connection::{connect, qualtrics_connections};
use crate::{Result, RuntimeError};

/// The stored Qualtrics connection to use: `named` if it is stored, else the only one.
pub fn choose_qualtrics_connection(
    home: &Home,
    vault: &Vault,
    named: Option<&str>,
) -> Result<String> {
    let all = qualtrics_connections(vault)?;
    match named {
        Some(n) if all.iter().any(|c| c == n) => Ok(n.to_string()),
        Some(n) => Err(RuntimeError::usage(if all.is_empty() {
            format!(
                "no Qualtrics connection '{n}' in {}; add one with: xmbridge connection add qualtrics {n} --url ACCOUNT_URL",
                home.root().display()
            )
        } else {
            format!(
                "no Qualtrics connection '{n}' (stored: {}); see `xmbridge connection list`",
                all.join(", ")
            )
        })),
        None => match all.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(RuntimeError::usage(format!(
                "no Qualtrics connection stored in {}; add one with: xmbridge connection add qualtrics NAME --url ACCOUNT_URL",
                home.root().display()
            ))),
            many => Err(RuntimeError::usage(format!(
                "several Qualtrics connections are stored ({}); choose one with --connection NAME",
                many.join(", ")
            ))),
        },
    }
}

/// Runs `action` with `request` on the stored connection `name` (`directory` overrides the
/// stored one). Its answer, or why not: a refused input is [`RuntimeError::Usage`], any other
/// failure stays an [`ActionError`] cause.
pub async fn run_qualtrics_action(
    vault: &Arc<Vault>,
    name: &str,
    directory: Option<String>,
    action: &dyn Action,
    request: ActionRequest,
) -> std::result::Result<Value, ActionRunError> {
    let mut ctx = ActionContext::new();
    connect(vault, name)?.provide(&mut ctx, name, directory);
    action.run(&ctx, request).await.map_err(|e| match e {
        e @ ActionError::BadInput { .. } => RuntimeError::usage(e.to_string()).into(),
        e => ActionRunError::Action(e),
    })
}

/// Runs the Salesforce or ServiceNow `action` with `request` as `user`, with the linked
/// account `account` (else `user`'s only account of the action's system), under the rule a
/// workflow step follows: the user owns the account or was granted it. A refused token marks
/// the account expired, as a workflow's delivery does, so `account list` says so.
pub async fn run_account_action(
    vault: &Arc<Vault>,
    store: Arc<WorkflowStore>,
    user: &str,
    account: Option<&str>,
    action: &dyn Action,
    request: ActionRequest,
) -> std::result::Result<Value, ActionRunError> {
    let spec = action.spec();
    let system = crate::systems::external(spec.system).ok_or_else(|| {
        RuntimeError::usage(format!(
            "{} is a {} action; it runs on a Qualtrics connection (--connection), not an account",
            spec.name, spec.system
        ))
    })?;
    let accounts = Accounts::new(store.clone(), vault.clone());
    let row = accounts
        .resolve(user, system.system.as_str(), account)
        .map_err(|e| match e {
            AccountError::Store(StoreError::NoSuchAccount { .. })
            | AccountError::NotGranted { .. }
            | AccountError::NoAccount { .. }
            | AccountError::Ambiguous { .. } => RuntimeError::usage(e.to_string()),
            e => RuntimeError::from(e),
        })?;
    if row.system != system.system.as_str() {
        return Err(RuntimeError::usage(format!(
            "account {} is a {} account; {} needs a {} account",
            row.name, row.system, spec.name, system.system
        ))
        .into());
    }
    let ctx = crate::systems::account_context(vault, &row, spec).map_err(ActionRunError::Action)?;
    match action.run(&ctx, request).await {
        Ok(v) => Ok(v),
        Err(e @ ActionError::BadInput { .. }) => Err(RuntimeError::usage(e.to_string()).into()),
        Err(e @ ActionError::TokenExpired { .. }) => {
            store
                .set_token_ok(&row.name, false)
                .map_err(RuntimeError::from)?;
            Err(ActionRunError::Action(e))
        }
        Err(e) => Err(ActionRunError::Action(e)),
    }
}

/// Why an action run on a stored connection did not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionRunError {
    /// The connection could not be opened, or the inputs were refused ([`RuntimeError::Usage`]).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The action failed.
    #[error(transparent)]
    Action(ActionError),
}
