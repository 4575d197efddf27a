//! Linking and re-authorizing Salesforce and ServiceNow accounts: which check runs in which
//! order (URLs and names before anything is read or sent, the 5-account limit before anyone
//! logs in), the credential proof against the remote system, undoing a half-done link, and a
//! re-authorization reading the account's stored settings. Secrets and the login URL go
//! through the caller's [`Operator`], so a command line prompts and a service answers its own way.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use xmbridge_auth::{SecretString, TokenResponse};
use xmbridge_servicenow::Auth;
use xmbridge_vault::{SecretField, Vault};
use xmbridge_workflows::accounts::{Accounts, LinkRequest, MAX_USER_SALESFORCE_ACCOUNTS};
use xmbridge_workflows::store::{AccountCheck, AccountKind, AccountRow, Store, WorkflowStore};

use crate::servicenow::{
    self, SIGN_IN_BASIC, SIGN_IN_CLIENT_CREDENTIALS, SIGN_IN_PASSWORD, SignIn,
};
use crate::systems::{SALESFORCE, SERVICENOW};
use crate::workflow::account_reauthorized;
use crate::{Result, RuntimeError, salesforce};

/// A secret a link or re-authorization asks the operator for, only when it needs it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AskedSecret {
    /// The OAuth application's client secret.
    ClientSecret,
    /// The ServiceNow user's password.
    Password,
}

/// The operator's side of a link: the secrets asked for, and the login URL to open. `Sync`, so
/// a link can run inside a server's request handler (its future holds the operator).
pub trait Operator: Sync {
    /// The secret `which` (from wherever the operator keeps it), or why there is none.
    fn secret(&self, which: AskedSecret) -> Result<SecretString>;
    /// The URL the user opens in a browser to log in to Salesforce, and where the browser is
    /// sent back. The answer is the redirect as the user pasted it, when they do (a browser on
    /// another machine); `None` waits for the loopback listener only.
    fn open_login(
        &self,
        url: &url::Url,
        redirect_uri: &str,
    ) -> futures_util::future::BoxFuture<'static, Option<String>>;
}

/// What `account link` (and `account link --refresh`) was asked: the choices as given.
#[derive(Clone, Debug, Default)]
pub struct AccountLogin {
    /// The account's name.
    pub name: String,
    /// The local user acting.
    pub user: String,
    /// A Salesforce account.
    pub salesforce: bool,
    /// A ServiceNow account.
    pub servicenow: bool,
    /// The ServiceNow instance URL.
    pub instance_url: Option<String>,
    /// ServiceNow Basic auth as this user.
    pub basic_user: Option<String>,
    /// ServiceNow OAuth password grant.
    pub oauth_password: bool,
    /// ServiceNow OAuth client credentials.
    pub client_credentials: bool,
    /// The ServiceNow user of the OAuth password grant.
    pub sn_user: Option<String>,
    /// The Salesforce login host of an OAuth login.
    pub login_url: Option<String>,
    /// A Salesforce server-to-server (client credentials) account.
    pub server_to_server: bool,
    /// The token endpoint of a server-to-server account.
    pub token_url: Option<String>,
    /// The OAuth application's client id.
    pub client_id: Option<String>,
    /// Whether the operator gives a new client secret (else a refresh uses the stored one).
    pub new_client_secret: bool,
    /// Whether the operator gives a new password (else a Basic refresh uses the stored one).
    pub new_password: bool,
    /// Port of the loopback redirect listener (0 = any).
    pub callback_port: u16,
    /// How long to wait for the browser.
    pub timeout: Duration,
    /// Linked by a brand admin: shareable, not counted in the user's limit.
    pub brand: bool,
}

/// How a new account signs in, as the link reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LinkedVia {
    /// A Salesforce account, with the organization its identity names.
    Salesforce {
        /// The Salesforce organization id.
        org_id: Option<String>,
    },
    /// A ServiceNow account.
    ServiceNow {
        /// Its sign-in (`basic`, `oauth-password`, `client-credentials`).
        sign_in: String,
        /// The instance URL.
        instance: String,
    },
}

/// A linked account.
#[derive(Clone, Debug)]
pub struct Linked {
    /// The stored account.
    pub row: AccountRow,
    /// How it signs in.
    pub via: LinkedVia,
    /// Another linked account whose approval this login made Salesforce revoke (5 approvals
    /// per user and connected app); it is marked expired.
    pub revoked: Option<RevokedApproval>,
}

/// Salesforce keeps at most this many approvals (refresh tokens) per user and connected app; a
/// new one silently revokes the oldest.
pub const SALESFORCE_APPROVALS_PER_USER_AND_APP: usize = 5;

/// A linked account that stopped working because a newer login of the same Salesforce user to
/// the same connected app took its approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedApproval {
    /// The account.
    pub account: String,
    /// Its local owner.
    pub owner: String,
    /// The Salesforce user (the identity URL's last part).
    pub salesforce_user: String,
}

impl RevokedApproval {
    /// The warning for the person who just logged in.
    pub fn warning(&self, new_account: &str) -> String {
        format!(
            "Salesforce keeps {SALESFORCE_APPROVALS_PER_USER_AND_APP} approvals per user and connected app: this login of Salesforce user {} made it revoke the oldest, the one of account {} (owner {}), which is now marked expired and pauses its workflows. Use one linked account per Salesforce user and app (share a brand account instead of linking the same user again), or give {} its own connected app; `xmbridge account link {} --refresh` would in turn revoke the next oldest, possibly {new_account}'s.",
            self.salesforce_user, self.account, self.owner, self.account, self.account
        )
    }
}

/// After a login of Salesforce user `identity` to connected app `client_id` (the account
/// `name` being linked, or logging in again when `relogin`: its previous approval still counts
/// upstream): when the linked accounts already held the maximum of that user's approvals for
/// that app, Salesforce revoked the oldest. Another account so revoked is marked expired (its
/// next use would fail anyway) and returned; `name`'s own previous approval being the oldest
/// harms nothing. Approvals held outside xmbridge count upstream too; only ours can be named.
pub fn approval_cap(
    vault: &Vault,
    store: &dyn Store,
    name: &str,
    client_id: &str,
    identity: Option<&str>,
    relogin: bool,
) -> Result<Option<RevokedApproval>> {
    let Some(identity) = identity.filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    let mut same: Vec<(i64, AccountRow)> = Vec::new();
    for row in store.list_accounts()? {
        if (row.name == name && !relogin)
            || row.system != SALESFORCE.system.as_str()
            || row.kind != AccountKind::OAuth
            || !row.token_ok
        {
            continue;
        }
        let Ok(rec) = vault.get_connection(&row.name) else {
            continue;
        };
        let s = &rec.settings;
        if s["client_id"].as_str() == Some(client_id) && s["identity"].as_str() == Some(identity) {
            let at = s["approved_at"].as_i64().unwrap_or(row.created_at);
            same.push((at, row));
        }
    }
    if same.len() < SALESFORCE_APPROVALS_PER_USER_AND_APP {
        return Ok(None);
    }
    same.sort_by_key(|(at, _)| *at);
    let (_, oldest) = same.remove(0);
    if oldest.name == name {
        return Ok(None);
    }
    store.set_token_ok(&oldest.name, false)?;
    Ok(Some(RevokedApproval {
        account: oldest.name,
        owner: oldest.owner,
        salesforce_user: identity.rsplit('/').next().unwrap_or(identity).to_string(),
    }))
}

impl AccountLogin {
    /// Checks, before anything is read or sent, the URLs and names given.
    pub fn check(&self) -> Result<()> {
        for (flag, value) in [
            ("--instance-url", &self.instance_url),
            ("--login-url", &self.login_url),
            ("--token-url", &self.token_url),
        ] {
            if let Some(v) = value {
                endpoint_url(flag, v)?;
            }
        }
        for (what, flag, value) in [
            ("client id", "--client-id", &self.client_id),
            ("ServiceNow user", "--basic-user", &self.basic_user),
            ("ServiceNow user", "--user", &self.sn_user),
        ] {
            if let Some(v) = value {
                crate::connection::credential_text(what, flag, v)?;
            }
        }
        Ok(())
    }

    /// The Salesforce login in the browser.
    async fn login(
        &self,
        operator: &dyn Operator,
        login_url: &str,
        client_id: &str,
        secret: SecretString,
    ) -> Result<TokenResponse> {
        let login = salesforce::Login {
            name: &self.name,
            user: &self.user,
            login_url,
            client_id,
            secret,
            port: self.callback_port,
            timeout: self.timeout,
        };
        salesforce::login(login, |url, redirect_uri| {
            operator.open_login(url, redirect_uri)
        })
        .await
    }
}

/// A URL credentials will be sent to, checked before any network use by the rule every client
/// shares: https (plain http only to loopback simulators) and a valid host name.
fn endpoint_url(flag: &str, value: &str) -> Result<url::Url> {
    let url = url::Url::parse(value).map_err(|e| {
        RuntimeError::usage(format!(
            "{flag} '{value}' is not a URL ({e}); give it with https://, e.g. https://acme.service-now.com"
        ))
    })?;
    xmbridge_auth::check_credential_url(&format!("{flag} URL"), &url)
        .map_err(|e| RuntimeError::usage(e.to_string()))?;
    Ok(url)
}

/// Links a new account, after [`AccountLogin::check`] (a caller may run that earlier, before it
/// opens anything). Nothing half-linked stays behind on failure.
pub async fn link(
    request: &AccountLogin,
    operator: &dyn Operator,
    store: &WorkflowStore,
    accounts: &Accounts,
) -> Result<Linked> {
    request.check()?;
    if request.servicenow && !request.salesforce {
        return link_servicenow(request, operator, accounts).await;
    }
    if !request.salesforce {
        return Err(RuntimeError::usage(
            "say which system: --salesforce or --servicenow",
        ));
    }
    let system = &SALESFORCE;
    let user = request.user.clone();
    let client_id = request
        .client_id
        .clone()
        .ok_or_else(|| RuntimeError::usage("--client-id is required"))?;
    let name = request.name.as_str();
    // Check the limit before anyone logs in for nothing.
    if !request.brand {
        let private = store
            .list_accounts()?
            .into_iter()
            .filter(|a| a.owner == user && a.system == system.system.as_str() && !a.brand)
            .count();
        if private >= MAX_USER_SALESFORCE_ACCOUNTS {
            return Err(xmbridge_workflows::accounts::AccountError::Limit { user }.into());
        }
    }
    let secret = operator.secret(AskedSecret::ClientSecret)?;
    let (kind, settings, tokens) = if request.server_to_server {
        let token_url = request
            .token_url
            .clone()
            .ok_or_else(|| RuntimeError::usage("--server-to-server needs --token-url"))?;
        let tokens =
            salesforce::client_credentials(name, &token_url, &client_id, secret.clone()).await?;
        let link = salesforce::Link::ServerToServer {
            token_url: &token_url,
        };
        (
            AccountKind::ServerToServer,
            salesforce::account_settings(link, &client_id, &tokens),
            tokens,
        )
    } else {
        let login_url = request.login_url.clone().ok_or_else(|| {
            RuntimeError::usage("a login needs --login-url (or use --server-to-server)")
        })?;
        let tokens = request
            .login(operator, &login_url, &client_id, secret.clone())
            .await?;
        if tokens.refresh_token.is_none() {
            return Err(RuntimeError::unusable(
                "Salesforce did not return a refresh token; give the connected app the `refresh_token` scope",
            ));
        }
        let link = salesforce::Link::Login {
            login_url: &login_url,
        };
        (
            AccountKind::OAuth,
            salesforce::account_settings(link, &client_id, &tokens),
            tokens,
        )
    };
    let org_id = salesforce::org_from_identity(&tokens);
    let revoked = match kind {
        AccountKind::OAuth => approval_cap(
            accounts.vault(),
            store,
            name,
            &client_id,
            tokens.extra.get("id").and_then(Value::as_str),
            false,
        )?,
        AccountKind::ServerToServer => None,
    };
    let row = accounts.link(LinkRequest {
        name: name.to_string(),
        system: system.system.as_str().to_string(),
        user,
        brand: request.brand,
        kind,
        settings,
        client_secret: Some(secret),
        refresh_token: tokens.refresh_token.clone(),
        org_id: org_id.clone(),
    })?;
    Ok(Linked {
        row,
        via: LinkedVia::Salesforce { org_id },
        revoked,
    })
}

async fn link_servicenow(
    request: &AccountLogin,
    operator: &dyn Operator,
    accounts: &Accounts,
) -> Result<Linked> {
    let name = request.name.as_str();
    let instance = request
        .instance_url
        .clone()
        .ok_or_else(|| RuntimeError::usage("a ServiceNow account needs --instance-url"))?;
    let instance = instance.trim_end_matches('/').to_string();
    let (kind, settings, client_secret, refresh_token, password) = if let Some(basic_user) =
        &request.basic_user
    {
        let password = operator.secret(AskedSecret::Password)?;
        let client = servicenow::client(
            &instance,
            Auth::Basic {
                username: basic_user.clone(),
                password: password.clone(),
            },
        )?;
        servicenow::check(&client, name).await?;
        let sign_in = SignIn::Basic { user: basic_user };
        (
            AccountKind::ServerToServer,
            servicenow::account_settings(&instance, sign_in),
            None,
            None,
            Some(password),
        )
    } else if request.oauth_password || request.client_credentials {
        let client_id = request
            .client_id
            .clone()
            .ok_or_else(|| RuntimeError::usage("--client-id is required"))?;
        let secret = operator.secret(AskedSecret::ClientSecret)?;
        if request.oauth_password {
            let sn_user = request.sn_user.clone().ok_or_else(|| {
                RuntimeError::usage("--oauth-password needs --user (the ServiceNow user)")
            })?;
            let rt = servicenow::password_grant(servicenow::PasswordGrant {
                name,
                instance: &instance,
                client_id: &client_id,
                client_secret: &secret,
                user: &sn_user,
                password: operator.secret(AskedSecret::Password)?,
            })
            .await?;
            let sign_in = SignIn::Password {
                client_id: &client_id,
                user: &sn_user,
            };
            (
                AccountKind::OAuth,
                servicenow::account_settings(&instance, sign_in),
                Some(secret),
                Some(rt),
                None,
            )
        } else {
            let sign_in = SignIn::ClientCredentials {
                client_id: &client_id,
            };
            let settings = servicenow::account_settings(&instance, sign_in);
            let client = servicenow::client(
                &instance,
                Auth::ClientCredentials {
                    client_id,
                    client_secret: secret.clone(),
                },
            )?;
            servicenow::check(&client, name).await?;
            (
                AccountKind::ServerToServer,
                settings,
                Some(secret),
                None,
                None,
            )
        }
    } else {
        return Err(RuntimeError::usage(
            "say how the ServiceNow account signs in: --basic-user U, --oauth-password, or --client-credentials",
        ));
    };
    let sign_in = settings["auth"].as_str().unwrap_or_default().to_string();
    let row = accounts.link(LinkRequest {
        name: name.to_string(),
        system: SERVICENOW.system.as_str().into(),
        user: request.user.clone(),
        brand: request.brand,
        kind,
        settings,
        client_secret,
        refresh_token,
        org_id: None,
    })?;
    if let Some(p) = password
        && let Err(e) = accounts.vault().set_secret(name, SecretField::Password, &p)
    {
        // Leave nothing half-linked behind.
        let _ = accounts.unlink(name, &request.user);
        return Err(e.into());
    }
    Ok(Linked {
        row,
        via: LinkedVia::ServiceNow { sign_in, instance },
        revoked: None,
    })
}

/// The stored settings of account `name`, read as text.
struct StoredSettings {
    name: String,
    settings: Value,
}

impl StoredSettings {
    fn open(vault: &Vault, name: &str) -> Result<StoredSettings> {
        Ok(StoredSettings {
            name: name.to_string(),
            settings: vault.get_connection(name)?.settings,
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.settings
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// `given`, else the stored `key`, else an error naming the flag that supplies it.
    fn or_given(
        &self,
        given: &Option<String>,
        key: &str,
        what: &str,
        flag: &str,
    ) -> Result<String> {
        given.clone().or_else(|| self.get(key)).ok_or_else(|| {
            RuntimeError::unusable(format!("account {} has no {what}; pass {flag}", self.name))
        })
    }
}

/// Proves the stored credentials of linked account `row` again: a ServiceNow sign-in with one
/// authenticated call, a Salesforce server-to-server account with a client-credentials grant,
/// a Salesforce login with a refresh (a rotated refresh token is sealed back, as any use does)
/// and one `limits` call. Returns what was proven. [`check_account`] also records it.
pub async fn test_account(vault: &Arc<Vault>, row: &AccountRow) -> Result<String> {
    let name = row.name.as_str();
    let stored = StoredSettings::open(vault, name)?;
    let need = |key: &str, what: &str| {
        stored.get(key).ok_or_else(|| {
            RuntimeError::unusable(format!(
                "account {name} has no {what}; unlink and link it again"
            ))
        })
    };
    let secret = |field: SecretField| {
        vault.get_secret(name, field)?.ok_or_else(|| {
            RuntimeError::unusable(format!(
                "account {name} has no {}; re-authorize it with `xmbridge account link {name} --refresh`",
                field.label()
            ))
        })
    };
    if row.system == SERVICENOW.system.as_str() {
        let instance = need("instance_url", "instance URL")?;
        let auth = match stored.get("auth").unwrap_or_default().as_str() {
            SIGN_IN_BASIC => Auth::Basic {
                username: need("user", "user")?,
                password: secret(SecretField::Password)?,
            },
            SIGN_IN_PASSWORD => Auth::RefreshToken {
                client_id: need("client_id", "client id")?,
                client_secret: secret(SecretField::ClientSecret)?,
                refresh_token: secret(SecretField::RefreshToken)?,
            },
            SIGN_IN_CLIENT_CREDENTIALS => Auth::ClientCredentials {
                client_id: need("client_id", "client id")?,
                client_secret: secret(SecretField::ClientSecret)?,
            },
            other => {
                return Err(RuntimeError::unusable(format!(
                    "account {name} has an unknown ServiceNow sign-in `{other}`; unlink and link it again"
                )));
            }
        };
        let client = servicenow::client(&instance, auth)?;
        servicenow::check(&client, name).await?;
        return Ok(format!(
            "ServiceNow at {instance} accepted the account's credentials"
        ));
    }
    match row.kind {
        AccountKind::ServerToServer => {
            let token_url = need("token_url", "token URL")?;
            let client_id = need("client_id", "client id")?;
            salesforce::client_credentials(
                name,
                &token_url,
                &client_id,
                secret(SecretField::ClientSecret)?,
            )
            .await?;
            Ok(format!(
                "Salesforce issued a token to the account's client ({token_url})"
            ))
        }
        AccountKind::OAuth => {
            // The client a workflow step uses: a refresh (whose rotated token is sealed back
            // into the vault, where a running server picks it up) and one cheap call.
            let registry = xmbridge_actions::Registry::builtin();
            let spec = registry
                .get("salesforce.query")
                .map(|a| a.spec())
                .ok_or_else(|| RuntimeError::unusable("the Salesforce actions are not built in"))?;
            let ctx = crate::salesforce::context(vault, row, spec)
                .map_err(|e| RuntimeError::unusable(e.to_string()))?;
            let sf = ctx
                .get::<xmbridge_actions::salesforce::SalesforceConnection>()
                .ok_or_else(|| RuntimeError::unusable("no Salesforce client for the account"))?;
            sf.client.limits().await?;
            Ok(
                "Salesforce accepted the account's login (refresh token and API access)"
                    .to_string(),
            )
        }
    }
}

/// A new secret from the operator when one is given, else the one stored for the account.
fn given_or_stored(
    operator: &dyn Operator,
    vault: &Vault,
    request: &AccountLogin,
    which: AskedSecret,
) -> Result<SecretString> {
    let name = request.name.as_str();
    let (field, what, flag, new) = match which {
        AskedSecret::ClientSecret => (
            SecretField::ClientSecret,
            "client secret",
            "--client-secret-file",
            request.new_client_secret,
        ),
        AskedSecret::Password => (
            SecretField::Password,
            "password",
            "--password-file",
            request.new_password,
        ),
    };
    if new {
        return operator.secret(which);
    }
    vault
        .get_secret(name, field)?
        .ok_or_else(|| RuntimeError::unusable(format!("account {name} has no {what}; pass {flag}")))
}

/// Re-authorizes the linked account `request.name` (log in again, or prove the stored or new
/// credentials again), after [`AccountLogin::check`], then resumes the workflows its refused
/// token paused. Returns the workflows resumed.
pub async fn refresh(
    request: &AccountLogin,
    operator: &dyn Operator,
    vault: &Vault,
    store: &WorkflowStore,
    accounts: &Accounts,
) -> Result<Refreshed> {
    request.check()?;
    let name = request.name.as_str();
    let account = store.get_account(name)?;
    let (refresh_token, revoked) = if account.system == SERVICENOW.system.as_str() {
        (refresh_servicenow(request, operator, vault).await?, None)
    } else {
        refresh_salesforce(request, operator, vault, store, account.kind).await?
    };
    let resumed =
        account_reauthorized(accounts, store, name, &request.user, refresh_token.as_ref())?;
    Ok(Refreshed { resumed, revoked })
}

/// What [`refresh`] did.
#[derive(Debug)]
pub struct Refreshed {
    /// The workflows resumed.
    pub resumed: Vec<String>,
    /// Another account whose approval the new login made Salesforce revoke, now marked expired.
    pub revoked: Option<RevokedApproval>,
}

/// A Salesforce re-authorization: a new login, or a fresh client-credentials grant. Returns
/// the new refresh token of a login.
async fn refresh_salesforce(
    request: &AccountLogin,
    operator: &dyn Operator,
    vault: &Vault,
    store: &WorkflowStore,
    kind: AccountKind,
) -> Result<(Option<SecretString>, Option<RevokedApproval>)> {
    let name = request.name.as_str();
    let stored = StoredSettings::open(vault, name)?;
    let client_id = stored.or_given(&request.client_id, "client_id", "client id", "--client-id")?;
    let secret = given_or_stored(operator, vault, request, AskedSecret::ClientSecret)?;
    let mut revoked = None;
    let refresh_token = match kind {
        AccountKind::ServerToServer => {
            let token_url = stored.get("token_url").ok_or_else(|| {
                RuntimeError::unusable(format!("account {name} has no token URL"))
            })?;
            salesforce::client_credentials(name, &token_url, &client_id, secret.clone()).await?;
            None
        }
        AccountKind::OAuth => {
            let login_url =
                stored.or_given(&request.login_url, "login_url", "login URL", "--login-url")?;
            let tokens = request
                .login(operator, &login_url, &client_id, secret.clone())
                .await?;
            let identity = tokens.extra.get("id").and_then(Value::as_str);
            revoked = approval_cap(vault, store, name, &client_id, identity, true)?;
            // The new approval is this account's now: who approved, and when.
            let mut settings = vault.get_connection(name)?.settings;
            settings["identity"] = identity.map_or(Value::Null, |i| Value::String(i.into()));
            settings["approved_at"] = Value::from(xmbridge_workflows::store::now_ms());
            vault.update_settings(name, settings)?;
            Some(tokens.refresh_token.ok_or_else(|| {
                RuntimeError::unusable("Salesforce did not return a refresh token on the new login")
            })?)
        }
    };
    if request.new_client_secret {
        vault.set_secret(name, SecretField::ClientSecret, &secret)?;
    }
    Ok((refresh_token, revoked))
}

/// A ServiceNow re-authorization: a new password (Basic), a new password grant (OAuth
/// password), or a fresh client-credentials check. Returns the new refresh token of a
/// password grant.
async fn refresh_servicenow(
    request: &AccountLogin,
    operator: &dyn Operator,
    vault: &Vault,
) -> Result<Option<SecretString>> {
    let name = request.name.as_str();
    let stored = StoredSettings::open(vault, name)?;
    let instance = stored.or_given(
        &request.instance_url,
        "instance_url",
        "instance URL",
        "--instance-url",
    )?;
    let client_id = || stored.or_given(&request.client_id, "client_id", "client id", "--client-id");
    let client_secret = || given_or_stored(operator, vault, request, AskedSecret::ClientSecret);
    let sign_in = stored.get("auth").unwrap_or_default();
    let mut new_secret = None;
    let refresh_token = match sign_in.as_str() {
        SIGN_IN_BASIC => {
            let sn_user = stored.or_given(&request.basic_user, "user", "user", "--basic-user")?;
            let password = given_or_stored(operator, vault, request, AskedSecret::Password)?;
            let client = servicenow::client(
                &instance,
                Auth::Basic {
                    username: sn_user,
                    password: password.clone(),
                },
            )?;
            servicenow::check(&client, name).await?;
            vault.set_secret(name, SecretField::Password, &password)?;
            None
        }
        SIGN_IN_PASSWORD => {
            let secret = client_secret()?;
            let sn_user = stored.or_given(&request.sn_user, "user", "user", "--user")?;
            let rt = servicenow::password_grant(servicenow::PasswordGrant {
                name,
                instance: &instance,
                client_id: &client_id()?,
                client_secret: &secret,
                user: &sn_user,
                password: operator.secret(AskedSecret::Password)?,
            })
            .await?;
            new_secret = Some(secret);
            Some(rt)
        }
        SIGN_IN_CLIENT_CREDENTIALS => {
            let secret = client_secret()?;
            let client = servicenow::client(
                &instance,
                Auth::ClientCredentials {
                    client_id: client_id()?,
                    client_secret: secret.clone(),
                },
            )?;
            servicenow::check(&client, name).await?;
            new_secret = Some(secret);
            None
        }
        other => {
            return Err(RuntimeError::unusable(format!(
                "account {name} has an unknown ServiceNow sign-in `{other}`; unlink and link it again"
            )));
        }
    };
    if request.new_client_secret
        && let Some(s) = &new_secret
    {
        vault.set_secret(name, SecretField::ClientSecret, s)?;
    }
    Ok(refresh_token)
}

/// A Salesforce login started by a server whose own URL receives the redirect
/// ([`start_web_login`]); kept by the server under its `state` until the redirect arrives
/// ([`finish_web_login`]).
pub struct WebLogin {
    /// The link asked for (name, user, login host, client id, brand).
    pub request: AccountLogin,
    /// The URL the user opens.
    pub url: url::Url,
    /// Where Salesforce sends the browser back (the server's callback).
    pub redirect_uri: String,
    /// The random `state` the redirect must carry back.
    pub state: String,
    verifier: SecretString,
    secret: SecretString,
}

/// Starts linking a Salesforce account with a browser login whose redirect goes to
/// `redirect_uri` (the server's own callback): the same checks as [`link`] before anyone logs
/// in (URLs, names, the 5-account limit), then the authorize URL with a state and PKCE.
pub fn start_web_login(
    request: &AccountLogin,
    secret: SecretString,
    store: &WorkflowStore,
    redirect_uri: &str,
) -> Result<WebLogin> {
    use xmbridge_auth::ExposeSecret;
    request.check()?;
    let client_id = request
        .client_id
        .clone()
        .ok_or_else(|| RuntimeError::usage("a client id is required"))?;
    let login_url = request
        .login_url
        .clone()
        .ok_or_else(|| RuntimeError::usage("a login needs the Salesforce login URL"))?;
    let user = request.user.clone();
    if !request.brand {
        let private = store
            .list_accounts()?
            .into_iter()
            .filter(|a| a.owner == user && a.system == SALESFORCE.system.as_str() && !a.brand)
            .count();
        if private >= MAX_USER_SALESFORCE_ACCOUNTS {
            return Err(xmbridge_workflows::accounts::AccountError::Limit { user }.into());
        }
    }
    let app = xmbridge_salesforce::OAuthApp {
        login_url: login_url.clone(),
        client_id,
        client_secret: secret.clone(),
        redirect_uri: redirect_uri.to_string(),
    };
    let oauth = app.oauth_client()?;
    let state = xmbridge_auth::random_token(24)
        .map_err(xmbridge_auth::AuthError::from)?
        .expose_secret()
        .to_string();
    let verifier = xmbridge_auth::random_token(32).map_err(xmbridge_auth::AuthError::from)?;
    let challenge = xmbridge_auth::pkce_challenge(verifier.expose_secret());
    let url = oauth.authorize_url(
        redirect_uri,
        Some("api refresh_token"),
        &state,
        Some(&challenge),
        &[],
    )?;
    Ok(WebLogin {
        request: request.clone(),
        url,
        redirect_uri: redirect_uri.to_string(),
        state,
        verifier,
        secret,
    })
}

/// Finishes a [`WebLogin`] with the `code` its redirect brought (the caller checked the
/// state): exchanges it and links the account under the same rules as [`link`].
pub async fn finish_web_login(
    pending: &WebLogin,
    code: &SecretString,
    accounts: &Accounts,
) -> Result<Linked> {
    let request = &pending.request;
    let name = request.name.as_str();
    let client_id = request.client_id.clone().unwrap_or_default();
    let login_url = request.login_url.clone().unwrap_or_default();
    let app = xmbridge_salesforce::OAuthApp {
        login_url: login_url.clone(),
        client_id: client_id.clone(),
        client_secret: pending.secret.clone(),
        redirect_uri: pending.redirect_uri.clone(),
    };
    let oauth = app.oauth_client()?.for_connection(name);
    let tokens = oauth
        .authorization_code(code, &pending.redirect_uri, Some(&pending.verifier))
        .await?;
    if tokens.refresh_token.is_none() {
        return Err(RuntimeError::unusable(
            "Salesforce did not return a refresh token; give the connected app the `refresh_token` scope",
        ));
    }
    let settings = salesforce::account_settings(
        salesforce::Link::Login {
            login_url: &login_url,
        },
        &client_id,
        &tokens,
    );
    let org_id = salesforce::org_from_identity(&tokens);
    let revoked = approval_cap(
        accounts.vault(),
        accounts.store(),
        name,
        &client_id,
        tokens.extra.get("id").and_then(Value::as_str),
        false,
    )?;
    let row = accounts.link(LinkRequest {
        name: name.to_string(),
        system: SALESFORCE.system.as_str().to_string(),
        user: request.user.clone(),
        brand: request.brand,
        kind: AccountKind::OAuth,
        settings,
        client_secret: Some(pending.secret.clone()),
        refresh_token: tokens.refresh_token.clone(),
        org_id: org_id.clone(),
    })?;
    Ok(Linked {
        row,
        via: LinkedVia::Salesforce { org_id },
        revoked,
    })
}

/// The workflows whose steps name linked account `account` (a rename or unlink would break
/// them).
pub fn workflows_naming_account(
    catalog: &xmbridge_workflows::catalog::Catalog,
    account: &str,
) -> Vec<String> {
    catalog
        .entries
        .iter()
        .filter(|e| {
            e.workflow
                .steps
                .iter()
                .any(|st| st.account.as_deref() == Some(account))
        })
        .map(|e| e.workflow.name.clone())
        .collect()
}

/// Tests linked account `name` ([`test_account`]) and records the outcome, so `account list`
/// and the API say when it was last proven. A refused Salesforce token marks the account
/// expired (as a delivery does); a success on an expired account marks it working again and
/// resumes the workflows its refusal paused. Returns the check and those workflows.
pub async fn check_account(
    vault: &Arc<Vault>,
    store: &Arc<WorkflowStore>,
    name: &str,
) -> Result<(AccountCheck, Vec<String>)> {
    let row = store.get_account(name)?;
    let outcome = test_account(vault, &row).await;
    let check = AccountCheck {
        account: name.to_string(),
        checked_at: xmbridge_workflows::store::now_ms(),
        ok: outcome.is_ok(),
        message: match &outcome {
            Ok(m) => m.clone(),
            Err(e) => e.to_string(),
        },
    };
    store.record_account_check(&check)?;
    let mut resumed = Vec::new();
    match &outcome {
        Ok(_) if !row.token_ok => {
            let accounts = Accounts::new(store.clone(), vault.clone());
            resumed = accounts.reauthorize(name, &row.owner, None)?;
        }
        Err(RuntimeError::Salesforce(e))
            if e.kind() == xmbridge_salesforce::ErrorKind::Reauthorize =>
        {
            store.set_token_ok(name, false)?;
        }
        _ => {}
    }
    Ok((check, resumed))
}
