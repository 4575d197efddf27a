//! ServiceNow accounts: how one signs in (Basic, OAuth password grant, client credentials), the
//! check that proves its credentials when it is linked, and the client its workflow steps run
//! with.

use std::sync::Arc;

use serde_json::{Value, json};
use xmbridge_actions::{ActionContext, ActionError, ActionSpec, System};
use xmbridge_auth::SecretString;
use xmbridge_servicenow::{Auth, ServiceNowClient};
use xmbridge_vault::{SecretField, Vault};
use xmbridge_workflows::store::AccountRow;

use crate::error::{Result, RuntimeError};

/// How a ServiceNow account authenticates (`auth` in its vault settings): Basic.
pub const SIGN_IN_BASIC: &str = "basic";
/// … the OAuth password grant, kept as its refresh token.
pub const SIGN_IN_PASSWORD: &str = "oauth-password";
/// … OAuth client credentials.
pub const SIGN_IN_CLIENT_CREDENTIALS: &str = "client-credentials";

/// How a ServiceNow account signs in, as it is linked.
#[derive(Clone, Copy, Debug)]
pub enum SignIn<'a> {
    /// Basic auth as `user` (the password is sealed in the vault).
    Basic {
        /// The ServiceNow user.
        user: &'a str,
    },
    /// The OAuth password grant of `user`, kept as its refresh token.
    Password {
        /// The OAuth application's client id.
        client_id: &'a str,
        /// The ServiceNow user.
        user: &'a str,
    },
    /// OAuth client credentials.
    ClientCredentials {
        /// The OAuth application's client id.
        client_id: &'a str,
    },
}

/// What a linked ServiceNow account stores in clear: the settings [`context`] reads back.
pub fn account_settings(instance: &str, sign_in: SignIn<'_>) -> Value {
    let mut settings = json!({"instance_url": instance});
    match sign_in {
        SignIn::Basic { user } => {
            settings["auth"] = json!(SIGN_IN_BASIC);
            settings["user"] = json!(user);
        }
        SignIn::Password { client_id, user } => {
            settings["client_id"] = json!(client_id);
            settings["auth"] = json!(SIGN_IN_PASSWORD);
            settings["user"] = json!(user);
        }
        SignIn::ClientCredentials { client_id } => {
            settings["client_id"] = json!(client_id);
            settings["auth"] = json!(SIGN_IN_CLIENT_CREDENTIALS);
        }
    }
    settings
}

/// A client for `instance`; an unusable instance URL is the caller's mistake.
pub fn client(instance: &str, auth: Auth) -> Result<ServiceNowClient> {
    ServiceNowClient::new(instance, auth).map_err(|e| RuntimeError::usage(e.to_string()))
}

/// Proves the credentials with one authenticated call. An ACL refusal or a missing property
/// still means the instance accepted who we are; only a refused login fails the link.
pub async fn check(client: &ServiceNowClient, name: &str) -> Result<()> {
    use xmbridge_servicenow::Error;
    match client.get_property("glide.servlet.uri").await {
        Ok(_) | Err(Error::Permanent { .. } | Error::NotFound { .. }) => Ok(()),
        Err(e @ Error::AuthExpired { .. }) => Err(RuntimeError::unusable(format!(
            "ServiceNow refused the credentials of account {name}: {e}"
        ))),
        Err(e) => Err(RuntimeError::unusable(format!(
            "could not check account {name} against ServiceNow: {e}"
        ))),
    }
}

/// What the OAuth password grant needs.
pub struct PasswordGrant<'a> {
    /// The account's name.
    pub name: &'a str,
    /// The instance URL.
    pub instance: &'a str,
    /// The OAuth application's client id.
    pub client_id: &'a str,
    /// … and its secret.
    pub client_secret: &'a SecretString,
    /// The ServiceNow user.
    pub user: &'a str,
    /// The user's password (used once, never stored).
    pub password: SecretString,
}

/// The password grant once: its refresh token is what the account keeps.
pub async fn password_grant(grant: PasswordGrant<'_>) -> Result<SecretString> {
    let name = grant.name;
    let client = client(
        grant.instance,
        Auth::Password {
            client_id: grant.client_id.to_string(),
            client_secret: grant.client_secret.clone(),
            username: grant.user.to_string(),
            password: grant.password,
        },
    )?;
    check(&client, name).await?;
    client.refresh_token().await.ok_or_else(|| {
        RuntimeError::unusable(format!("ServiceNow returned no refresh token for account {name}; allow the refresh_token grant on the OAuth application"))
    })
}

/// The ServiceNow client of a linked account, as `xmbridge_actions::servicenow` takes it from
/// the context (`Arc<ServiceNowClient>`). OAuth-password accounts run on their stored refresh
/// token: a refusal is `TokenExpired`, which pauses the workflow.
pub fn context(
    vault: &Arc<Vault>,
    row: &AccountRow,
    spec: &ActionSpec,
) -> Result<ActionContext, ActionError> {
    let not_configured = |fix: String| crate::systems::not_configured(spec, fix);
    let name = row.name.as_str();
    if row.system != crate::systems::SERVICENOW.system.as_str() {
        return Err(not_configured(format!(
            "account {name} is a {} account; name a ServiceNow account in the step's `account`",
            row.system
        )));
    }
    let stored = crate::systems::StoredAccount::open(vault, name, &not_configured)?;
    let setting = |k: &str| stored.setting(k);
    let secret = |f: SecretField| {
        vault
            .get_secret(name, f)
            .map_err(|e| not_configured(format!("account {name}: {e}")))?
            .ok_or_else(|| ActionError::TokenExpired {
                action: spec.name.to_string(),
                system: System::ServiceNow,
                fix: format!(
                    "account {name} has no {}; re-authorize with `xmbridge account link {name} --refresh --as {}`",
                    f.label(),
                    row.owner
                ),
            })
    };
    let auth = match setting("auth")?.as_str() {
        SIGN_IN_BASIC => Auth::Basic {
            username: setting("user")?,
            password: secret(SecretField::Password)?,
        },
        SIGN_IN_PASSWORD => Auth::RefreshToken {
            client_id: setting("client_id")?,
            client_secret: secret(SecretField::ClientSecret)?,
            refresh_token: secret(SecretField::RefreshToken)?,
        },
        SIGN_IN_CLIENT_CREDENTIALS => Auth::ClientCredentials {
            client_id: setting("client_id")?,
            client_secret: secret(SecretField::ClientSecret)?,
        },
        other => {
            return Err(not_configured(format!(
                "account {name} has an unknown ServiceNow sign-in `{other}`; unlink and link it again"
            )));
        }
    };
    let client = ServiceNowClient::new(&setting("instance_url")?, auth)
        .map_err(|e| not_configured(format!("account {name}: {e}")))?;
    Ok(ActionContext::new().with(Arc::new(client)))
}

/// How a linked ServiceNow account signs in, as listings show it.
pub fn sign_in(vault: &Vault, row: &AccountRow) -> Option<String> {
    vault.get_connection(&row.name).ok().and_then(|r| {
        r.settings
            .get("auth")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_settings_hold_what_the_client_reads_back() {
        let basic = account_settings("https://sn.example", SignIn::Basic { user: "int" });
        assert_eq!(
            basic,
            json!({"instance_url": "https://sn.example", "auth": "basic", "user": "int"})
        );
        let password = account_settings(
            "https://sn.example",
            SignIn::Password {
                client_id: "cid",
                user: "int",
            },
        );
        assert_eq!(
            password,
            json!({"instance_url": "https://sn.example", "client_id": "cid",
                   "auth": "oauth-password", "user": "int"})
        );
        let cc = account_settings(
            "https://sn.example",
            SignIn::ClientCredentials { client_id: "cid" },
        );
        assert_eq!(
            cc,
            json!({"instance_url": "https://sn.example", "client_id": "cid",
                   "auth": "client-credentials"})
        );
    }
}
