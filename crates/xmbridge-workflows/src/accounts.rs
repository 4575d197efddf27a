//! Linked Salesforce and ServiceNow accounts with the Qualtrics Salesforce extension's rules: a
//! user links at most [`MAX_USER_SALESFORCE_ACCOUNTS`] Salesforce accounts privately; a brand
//! admin links an account once and shares it with chosen users; an account is either OAuth
//! (refresh token) or server-to-server (client credentials); a workflow uses only accounts its
//! project owner owns or was granted; a refused token marks the account and pauses the
//! workflows using it, and re-authorizing resumes them.
//!
//! Account rows and grants live in the workflow store; secrets (client secret, refresh token)
//! are sealed in the vault under a connection of the same name. It must not call Salesforce or
//! ServiceNow (the CLI runs the OAuth flow and hands the tokens in).

use std::sync::Arc;

use serde_json::Value;
use xmbridge_actions::System;
use xmbridge_vault::{SecretField, SecretString, Vault, VaultError};

use crate::store::{AccountKind, AccountRow, Store, StoreError, now_ms};

/// The extension's limit of privately linked Salesforce accounts per user.
pub const MAX_USER_SALESFORCE_ACCOUNTS: usize = 5;

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// A user tried to link a private Salesforce account beyond the extension's limit.
    #[error(
        "user {user} already has {MAX_USER_SALESFORCE_ACCOUNTS} linked Salesforce accounts (the limit); unlink one with `xmbridge account unlink NAME`"
    )]
    Limit {
        /// The local user who is at the limit.
        user: String,
    },
    /// Someone other than the account's owner tried to change it.
    #[error(
        "account {account} belongs to {owner}; only {owner} can {what} it (run the command with `--as {owner}`)"
    )]
    NotOwner {
        /// The account's name.
        account: String,
        /// The local user who owns the account.
        owner: String,
        /// The refused operation, as a verb ("share", "unlink", "re-authorize").
        what: &'static str,
    },
    /// A privately linked account cannot be shared; only brand accounts can.
    #[error(
        "account {account} was linked privately by {owner}; only accounts a brand admin links (`xmbridge account link {account} … --brand`) can be shared"
    )]
    NotShareable {
        /// The account's name.
        account: String,
        /// The local user who linked it privately.
        owner: String,
    },
    /// A workflow's owner may not use the account its step names.
    #[error("workflow owner {user} may not use account {account}: {}", not_granted_fix(user, account, owner, *brand))]
    NotGranted {
        /// The workflow's owner, who lacks the grant.
        user: String,
        /// The account the step names.
        account: String,
        /// The local user who owns the account.
        owner: String,
        /// A brand account (shareable by an admin) rather than someone's private one.
        brand: bool,
    },
    /// The workflow's owner has no usable account for the step's system.
    #[error(
        "user {user} has no linked {system} account; link one with `xmbridge account link NAME --{system} … --as {user}`"
    )]
    NoAccount {
        /// The workflow's owner.
        user: String,
        /// `salesforce` or `servicenow`.
        system: String,
    },
    /// The step names no account and its owner can use more than one for the system.
    #[error(
        "user {user} can use several {system} accounts ({names}); name one in the step's `account`"
    )]
    Ambiguous {
        /// The workflow's owner.
        user: String,
        /// `salesforce` or `servicenow`.
        system: String,
        /// The usable accounts' names, comma-separated.
        names: String,
    },
    /// An account's system is neither Salesforce nor ServiceNow.
    #[error("unknown system {system}: use salesforce or servicenow")]
    UnknownSystem {
        /// The system as given.
        system: String,
    },
    /// The workflow store failed (includes a duplicate or unknown account name).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new name of a rename is already an account's or a connection's.
    #[error("the name {name} is taken by another account or connection; pick another name")]
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// A rename would leave workflow steps naming an account that no longer exists.
    #[error(
        "account {account} is named by the steps of workflow(s) {workflows}; point those steps at another account (or drop their `account`), rename it, then name {new} in them"
    )]
    InUse {
        /// The account's name.
        account: String,
        /// The workflows whose steps name it, comma-separated.
        workflows: String,
        /// The name asked for.
        new: String,
    },
    /// The vault failed to seal, read or remove the account's connection.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// An account to link.
pub struct LinkRequest {
    /// The account's name, unique among accounts and vault connections.
    pub name: String,
    /// `salesforce` or `servicenow`.
    pub system: String,
    /// The local user linking it (its owner).
    pub user: String,
    /// Linked by a brand admin: shareable, not counted against the user's limit.
    pub brand: bool,
    /// OAuth (refresh token) or server-to-server (client credentials).
    pub kind: AccountKind,
    /// Non-secret settings: `login_url` / `token_url`, `client_id`, `instance_url` …
    pub settings: Value,
    /// The connected app's client secret, sealed in the vault; `None` when the app has none.
    pub client_secret: Option<SecretString>,
    /// OAuth accounts: the refresh token from the login.
    pub refresh_token: Option<SecretString>,
    /// The Salesforce organization id (`00D…`), when the login reported it.
    pub org_id: Option<String>,
}

/// How a user may use an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The user linked it.
    Owned,
    /// Its owner shared it with the user.
    Granted,
}

/// The account rules over a store and the vault.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
}

/// The system of a linked account: Salesforce or ServiceNow (Qualtrics has connections instead).
fn provider(system: &str) -> Result<System, AccountError> {
    match system.parse::<System>() {
        Ok(s @ (System::Salesforce | System::ServiceNow)) if s.as_str() == system => Ok(s),
        _ => Err(AccountError::UnknownSystem {
            system: system.to_string(),
        }),
    }
}

/// What can work when `user` may not use `account`: a brand account can be shared with them by
/// an admin; a private one cannot be shared at all, so they link their own, ask for a brand
/// account, or hand the workflow to the account's owner.
fn not_granted_fix(user: &str, account: &str, owner: &str, brand: bool) -> String {
    let own = format!(
        "link an account as {user} (`xmbridge account link NAME --salesforce|--servicenow … --as {user}`) and name it in the step"
    );
    if brand {
        format!(
            "it is a brand account of {owner} not shared with {user}; ask an admin to run `xmbridge account share {account} --with {user}`, or {own}"
        )
    } else {
        format!(
            "it is {owner}'s private account, which cannot be shared; {own}, ask an admin to link a brand account and share it with {user}, or give the workflow to {owner} (`xmbridge workflow transfer WORKFLOW --to {owner}`)"
        )
    }
}

impl Accounts {
    /// The rules over the workflow store (account rows, grants) and the vault (secrets).
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>) -> Accounts {
        Accounts { store, vault }
    }

    /// The store holding the accounts' rows and grants.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The vault holding the accounts' connections and secrets.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Links a new account: checks the per-user limit, seals its secrets, records it.
    pub fn link(&self, req: LinkRequest) -> Result<AccountRow, AccountError> {
        let provider = provider(&req.system)?;
        if provider == System::Salesforce && !req.brand {
            let private = self
                .store
                .list_accounts()?
                .into_iter()
                .filter(|a| {
                    a.owner == req.user && a.system == System::Salesforce.as_str() && !a.brand
                })
                .count();
            if private >= MAX_USER_SALESFORCE_ACCOUNTS {
                return Err(AccountError::Limit { user: req.user });
            }
        }
        if self.store.get_account(&req.name).is_ok() {
            return Err(StoreError::DuplicateAccount { name: req.name }.into());
        }
        self.vault
            .add_connection(&req.name, provider, req.settings.clone())?;
        let sealed = (|| {
            if let Some(s) = &req.client_secret {
                self.vault
                    .set_secret(&req.name, SecretField::ClientSecret, s)?;
            }
            if let Some(t) = &req.refresh_token {
                self.vault
                    .set_secret(&req.name, SecretField::RefreshToken, t)?;
            }
            Ok::<(), VaultError>(())
        })();
        let row = AccountRow {
            name: req.name.clone(),
            system: req.system.clone(),
            owner: req.user.clone(),
            kind: req.kind,
            brand: req.brand,
            org_id: req.org_id.clone(),
            token_ok: true,
            created_at: now_ms(),
        };
        let stored = sealed
            .map_err(AccountError::from)
            .and_then(|_| self.store.insert_account(&row).map_err(AccountError::from));
        if let Err(e) = stored {
            // Leave nothing half-linked behind.
            let _ = self.vault.remove_connection(&req.name);
            return Err(e);
        }
        Ok(row)
    }

    /// Re-authorization (`account link NAME --refresh`): saves the new refresh token (if any),
    /// marks the token good, and resumes the workflows its refusal paused. Returns them.
    pub fn reauthorize(
        &self,
        name: &str,
        user: &str,
        refresh_token: Option<&SecretString>,
    ) -> Result<Vec<String>, AccountError> {
        let account = self.store.get_account(name)?;
        if account.owner != user {
            return Err(AccountError::NotOwner {
                account: name.to_string(),
                owner: account.owner,
                what: "re-authorize",
            });
        }
        if let Some(t) = refresh_token {
            self.vault.set_secret(name, SecretField::RefreshToken, t)?;
        }
        self.vault.remove_secret(name, SecretField::AccessToken)?;
        self.store.set_token_ok(name, true)?;
        let paused = self.store.paused_on_account(name)?;
        for wf in &paused {
            self.store.resume(wf)?;
        }
        Ok(paused)
    }

    /// Shares a brand account with users.
    pub fn share(&self, name: &str, by: &str, with: &[String]) -> Result<(), AccountError> {
        let account = self.store.get_account(name)?;
        if account.owner != by {
            return Err(AccountError::NotOwner {
                account: name.to_string(),
                owner: account.owner,
                what: "share",
            });
        }
        if !account.brand {
            return Err(AccountError::NotShareable {
                account: name.to_string(),
                owner: account.owner,
            });
        }
        for u in with {
            self.store.grant(name, u)?;
        }
        Ok(())
    }

    /// Renames account `old` to `new` (the extension's "three dots" menu). Who may is the
    /// caller's rule (its owner or an admin); `named_by` are the workflows whose steps name
    /// `old`, and a rename is refused while there are any. The sealed secrets are sealed again
    /// under the new name (they are bound to it); grants, the last check and pauses follow. The
    /// new account is complete before the old one goes, and undone on failure.
    pub fn rename(
        &self,
        old: &str,
        new: &str,
        named_by: &[String],
    ) -> Result<AccountRow, AccountError> {
        let row = self.store.get_account(old)?;
        xmbridge_vault::validate_connection_name(new)?;
        if new == old {
            return Ok(row);
        }
        if !named_by.is_empty() {
            return Err(AccountError::InUse {
                account: old.to_string(),
                workflows: named_by.join(", "),
                new: new.to_string(),
            });
        }
        let taken = |e: StoreError| match e {
            StoreError::DuplicateAccount { name } => AccountError::NameTaken { name },
            e => e.into(),
        };
        if self.store.get_account(new).is_ok() || self.vault.get_connection(new).is_ok() {
            return Err(AccountError::NameTaken {
                name: new.to_string(),
            });
        }
        let rec = self.vault.get_connection(old)?;
        self.vault
            .add_connection(new, rec.provider, rec.settings.clone())
            .map_err(|e| match e {
                VaultError::DuplicateConnection { name } => AccountError::NameTaken { name },
                e => e.into(),
            })?;
        let moved = (|| -> Result<(), AccountError> {
            for info in self.vault.list_secrets(old)? {
                if let Some(v) = self.vault.get_secret(old, info.field)? {
                    self.vault.set_secret(new, info.field, &v)?;
                }
            }
            self.store.rename_account(old, new).map_err(taken)
        })();
        if let Err(e) = moved {
            let _ = self.vault.remove_connection(new);
            return Err(e);
        }
        match self.vault.remove_connection(old) {
            Ok(()) | Err(VaultError::ConnectionNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(self.store.get_account(new)?)
    }

    /// Removes an account, its grants and its secrets.
    pub fn unlink(&self, name: &str, by: &str) -> Result<(), AccountError> {
        let account = self.store.get_account(name)?;
        if account.owner != by {
            return Err(AccountError::NotOwner {
                account: name.to_string(),
                owner: account.owner,
                what: "unlink",
            });
        }
        self.store.remove_account(name)?;
        match self.vault.remove_connection(name) {
            Ok(()) | Err(VaultError::ConnectionNotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Accounts `user` owns or was granted, with how.
    pub fn visible_to(&self, user: &str) -> Result<Vec<(AccountRow, Access)>, AccountError> {
        let mut out = Vec::new();
        for a in self.store.list_accounts()? {
            if a.owner == user {
                out.push((a, Access::Owned));
            } else if self.store.grants(&a.name)?.iter().any(|g| g == user) {
                out.push((a, Access::Granted));
            }
        }
        Ok(out)
    }

    /// Every account (for admins' listings).
    pub fn all(&self) -> Result<Vec<AccountRow>, AccountError> {
        Ok(self.store.list_accounts()?)
    }

    /// The account a workflow owned by `user` runs a `system` step with: the named one if `user`
    /// owns it or was granted it, else `user`'s only account of that system.
    pub fn resolve(
        &self,
        user: &str,
        system: &str,
        name: Option<&str>,
    ) -> Result<AccountRow, AccountError> {
        if let Some(name) = name {
            let account = self.store.get_account(name)?;
            if account.owner == user || self.store.grants(name)?.iter().any(|g| g == user) {
                return Ok(account);
            }
            return Err(AccountError::NotGranted {
                user: user.to_string(),
                account: name.to_string(),
                owner: account.owner,
                brand: account.brand,
            });
        }
        let mut candidates: Vec<AccountRow> = self
            .visible_to(user)?
            .into_iter()
            .filter(|(a, _)| a.system == system)
            .map(|(a, _)| a)
            .collect();
        match candidates.len() {
            0 => Err(AccountError::NoAccount {
                user: user.to_string(),
                system: system.to_string(),
            }),
            1 => Ok(candidates.remove(0)),
            _ => Err(AccountError::Ambiguous {
                user: user.to_string(),
                system: system.to_string(),
                names: candidates
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The re-authorize command for an account, for pause messages.
    pub fn reauthorize_command(account: &AccountRow) -> String {
        format!(
            "xmbridge account link {} --refresh --as {}",
            account.name, account.owner
        )
    }
}
