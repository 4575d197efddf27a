//! One Qualtrics action run on a stored connection, as `xmbridge action` runs it: the connection
//! chosen (the named one, or the only one stored), its client put into the action's context the
//! one way workflows do, and the action's refusal of its inputs reported as the caller's mistake.

use std::sync::Arc;

use serde_json::Value;
use xmbridge_actions::{Action, ActionContext, ActionError, ActionRequest};
use xmbridge_vault::{Home, Vault};

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
