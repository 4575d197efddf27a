//! The external systems workflow steps run against through linked accounts, in one table: adding
//! a system is one more [`ExternalSystem`] here (plus its client and actions), not a match arm in
//! every file that handles accounts.

use std::sync::Arc;

use serde_json::Value;
use xmbridge_actions::{ActionContext, ActionError, ActionSpec, System};
use xmbridge_vault::Vault;
use xmbridge_workflows::store::AccountRow;

/// An external system and what the runtime needs to know about it.
pub struct ExternalSystem {
    /// The system of its actions.
    pub system: System,
    /// The clients a step runs with, from a linked account.
    pub context: fn(&Arc<Vault>, &AccountRow, &ActionSpec) -> Result<ActionContext, ActionError>,
    /// How a linked account signs in, when that says more than the account's kind.
    pub sign_in: fn(&Vault, &AccountRow) -> Option<String>,
}

/// Salesforce.
pub const SALESFORCE: ExternalSystem = ExternalSystem {
    system: System::Salesforce,
    context: crate::salesforce::context,
    sign_in: kind_says_it_all,
};

/// ServiceNow.
pub const SERVICENOW: ExternalSystem = ExternalSystem {
    system: System::ServiceNow,
    context: crate::servicenow::context,
    sign_in: crate::servicenow::sign_in,
};

/// A Salesforce account signs in as its kind says (an OAuth login or server-to-server).
fn kind_says_it_all(_: &Vault, _: &AccountRow) -> Option<String> {
    None
}

/// Every external system.
pub const EXTERNAL: [&ExternalSystem; 2] = [&SALESFORCE, &SERVICENOW];

/// The external system of `system`'s actions; `None` for Qualtrics, whose steps run on a
/// connection rather than a linked account.
pub fn external(system: System) -> Option<&'static ExternalSystem> {
    EXTERNAL.into_iter().find(|s| s.system == system)
}

/// The external system of a linked account.
pub fn of_account(row: &AccountRow) -> Option<&'static ExternalSystem> {
    EXTERNAL
        .into_iter()
        .find(|s| s.system.as_str() == row.system)
}

/// The clients a step of `spec` runs with, from the linked account `row`.
pub fn account_context(
    vault: &Arc<Vault>,
    row: &AccountRow,
    spec: &ActionSpec,
) -> Result<ActionContext, ActionError> {
    match external(spec.system) {
        Some(ext) => (ext.context)(vault, row, spec),
        None => Err(ActionError::NotConfigured {
            action: spec.name.to_string(),
            system: spec.system,
            fix: format!(
                "account {} is a {} account; a {} step needs a {} connection",
                row.name, row.system, spec.system, spec.system
            ),
        }),
    }
}

/// The error of a step whose account cannot be used as it is stored; `fix` says what to do.
pub(crate) fn not_configured(spec: &ActionSpec, fix: String) -> ActionError {
    ActionError::NotConfigured {
        action: spec.name.to_string(),
        system: spec.system,
        fix,
    }
}

/// A linked account's stored settings, read the same way for every system's client; a missing
/// one is `not_configured` (the step's action and system, and the fix).
pub(crate) struct StoredAccount<'a> {
    name: &'a str,
    settings: Value,
    not_configured: &'a dyn Fn(String) -> ActionError,
}

impl<'a> StoredAccount<'a> {
    pub(crate) fn open(
        vault: &Vault,
        name: &'a str,
        not_configured: &'a dyn Fn(String) -> ActionError,
    ) -> Result<StoredAccount<'a>, ActionError> {
        let rec = vault
            .get_connection(name)
            .map_err(|e| not_configured(format!("account {name}: {e}")))?;
        Ok(StoredAccount {
            name,
            settings: rec.settings,
            not_configured,
        })
    }

    /// The text setting `key`.
    pub(crate) fn setting(&self, key: &str) -> Result<String, ActionError> {
        self.settings
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                (self.not_configured)(format!("account {} has no {key}; link it again", self.name))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_external_system_is_found_by_its_actions_and_its_accounts() {
        assert!(external(System::Qualtrics).is_none());
        for ext in EXTERNAL {
            assert_eq!(
                external(ext.system).map(|e| e.system.as_str()),
                Some(ext.system.as_str())
            );
            let row = AccountRow {
                name: "a".into(),
                system: ext.system.as_str().into(),
                owner: "pat".into(),
                kind: xmbridge_workflows::store::AccountKind::OAuth,
                brand: false,
                org_id: None,
                token_ok: true,
                created_at: 0,
            };
            assert_eq!(of_account(&row).map(|e| e.system), Some(ext.system));
        }
    }
}
