//! `xmbridge account link|list|share|unlink`: Salesforce (and ServiceNow) accounts that workflows
//! run with, under the Qualtrics Salesforce extension's rules (5 private Salesforce accounts per
//! user, brand accounts shared with chosen users, server-to-server accounts, re-authorize with
//! `--refresh`). The rules live in `xmbridge_workflows::accounts`, the logins, credential checks
//! and clients in `xmbridge_runtime` (`salesforce`, `servicenow`); this file reads the arguments
//! and secrets, and prints.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::Value;
use xmbridge_auth::SecretString;
use xmbridge_runtime::servicenow::{
    self, SIGN_IN_BASIC, SIGN_IN_CLIENT_CREDENTIALS, SIGN_IN_PASSWORD, SignIn,
};
use xmbridge_runtime::systems::{self, SALESFORCE, SERVICENOW};
use xmbridge_runtime::{salesforce, workflow::account_reauthorized};
use xmbridge_vault::{SecretField, Vault};
use xmbridge_workflows::accounts::{Access, Accounts, LinkRequest};
use xmbridge_workflows::store::{AccountKind, SqliteStore, Store};

use super::UsageError;
use super::connection::{credential_text, open_vault, read_secret};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # A private Salesforce account (OAuth login in the browser; up to 5 per user):
  xmbridge account link sf-prod --salesforce --login-url https://login.salesforce.com \\
      --client-id ID --client-secret-file secret.txt --as pat
  # A server-to-server account (client credentials), linked by a brand admin and shared:
  xmbridge account link sf-brand --salesforce --server-to-server \\
      --token-url https://acme.my.salesforce.com/services/oauth2/token \\
      --client-id ID --client-secret-file secret.txt --brand --as admin
  xmbridge account share sf-brand --with pat sam --as admin
  # After \"account token expired\": log in again; paused workflows resume:
  xmbridge account link sf-prod --refresh --as pat
  # ServiceNow (Basic, OAuth password grant, or client credentials):
  xmbridge account link sn-prod --servicenow --instance-url https://acme.service-now.com \\
      --oauth-password --client-id ID --client-secret-file secret.txt \\
      --user xmbridge.integration --password-file password.txt --as pat
  xmbridge account link sn-basic --servicenow --instance-url https://acme.service-now.com \\
      --basic-user xmbridge.integration --password-file password.txt --as pat
  xmbridge account link sn-prod --refresh --password-file password.txt --as pat

The acting user is --as, else XMBRIDGE_USER, else USER.")]
pub struct AccountArgs {
    #[command(subcommand)]
    pub command: AccountCommand,
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Link an account (or re-authorize one with --refresh).
    Link(Box<LinkArgs>),
    /// List the accounts a user owns or was granted.
    List(AsUser),
    /// Share a brand account with users.
    Share {
        name: String,
        /// Users to grant the account to.
        #[arg(long, num_args = 1.., required = true)]
        with: Vec<String>,
        #[command(flatten)]
        user: AsUser,
    },
    /// Remove an account, its grants and its sealed secrets.
    Unlink {
        name: String,
        #[command(flatten)]
        user: AsUser,
    },
}

#[derive(Args, Debug, Clone)]
pub struct AsUser {
    /// The local user acting (else XMBRIDGE_USER, else USER).
    #[arg(long = "as", value_name = "USER")]
    pub user: Option<String>,
}

impl AsUser {
    pub fn resolve(&self) -> anyhow::Result<String> {
        self.user
            .clone()
            .or_else(|| std::env::var("XMBRIDGE_USER").ok())
            .or_else(|| std::env::var("USER").ok())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| anyhow!(UsageError("name the user with --as USER".into())))
    }
}

#[derive(Args, Debug)]
pub struct LinkArgs {
    /// A name for the account (letters, digits, `_`, `.`, `-`).
    pub name: String,
    /// A Salesforce account.
    #[arg(long, conflicts_with = "servicenow")]
    pub salesforce: bool,
    /// A ServiceNow account: --instance-url and one of --basic-user, --oauth-password,
    /// --client-credentials.
    #[arg(long)]
    pub servicenow: bool,
    /// The ServiceNow instance (`https://acme.service-now.com`, or a simulator's
    /// `http://127.0.0.1:PORT`).
    #[arg(long)]
    pub instance_url: Option<String>,
    /// ServiceNow Basic auth as this user (with --password-file; the password is sealed).
    #[arg(long, conflicts_with_all = ["oauth_password", "client_credentials"])]
    pub basic_user: Option<String>,
    /// ServiceNow OAuth password grant (with --client-id, --client-secret-file, --user,
    /// --password-file): only the refresh token is kept, not the password.
    #[arg(long, conflicts_with = "client_credentials")]
    pub oauth_password: bool,
    /// ServiceNow OAuth client credentials (with --client-id, --client-secret-file).
    #[arg(long)]
    pub client_credentials: bool,
    /// The ServiceNow user of --oauth-password.
    #[arg(long = "user", value_name = "USER")]
    pub sn_user: Option<String>,
    /// File holding the ServiceNow password (else XMBRIDGE_ACCOUNT_PASSWORD, else a prompt).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Salesforce login host for the OAuth web-server flow (`https://login.salesforce.com`,
    /// `https://test.salesforce.com`, or a simulator's `http://127.0.0.1:PORT`).
    #[arg(long)]
    pub login_url: Option<String>,
    /// Client credentials instead of a login: needs --token-url.
    #[arg(long)]
    pub server_to_server: bool,
    /// The token endpoint of a server-to-server account.
    #[arg(long)]
    pub token_url: Option<String>,
    /// The connected app's client id (consumer key).
    #[arg(long)]
    pub client_id: Option<String>,
    /// File holding the client secret (else XMBRIDGE_ACCOUNT_CLIENT_SECRET, else a prompt).
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
    /// Port of the loopback redirect listener (0 = any; register
    /// `http://127.0.0.1:PORT/oauth/callback` as the app's callback URL).
    #[arg(long, default_value_t = 0)]
    pub callback_port: u16,
    /// Seconds to wait for the browser.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Linked as a brand admin: shareable with `account share`, not counted in the user's 5.
    #[arg(long)]
    pub brand: bool,
    /// Re-authorize an existing account (log in again, or re-check client credentials); resumes
    /// the workflows its expired token paused.
    #[arg(long)]
    pub refresh: bool,
    #[command(flatten)]
    pub user: AsUser,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow!(UsageError(msg.into()))
}

/// The vault, the workflow store on the same file, and the account rules.
pub(crate) fn open_accounts() -> anyhow::Result<(Arc<Vault>, Arc<SqliteStore>, Accounts)> {
    let (home, vault) = open_vault()?;
    let store = Arc::new(SqliteStore::open(home.state_db())?);
    let accounts = Accounts::new(store.clone(), vault.clone());
    Ok((vault, store, accounts))
}

pub async fn run(args: AccountArgs) -> anyhow::Result<()> {
    match args.command {
        AccountCommand::Link(a) => link(*a).await,
        AccountCommand::List(u) => list(&u.resolve()?),
        AccountCommand::Share { name, with, user } => {
            let (_, _, accounts) = open_accounts()?;
            accounts.share(&name, &user.resolve()?, &with)?;
            println!("account {name} is shared with {}", with.join(", "));
            Ok(())
        }
        AccountCommand::Unlink { name, user } => {
            let (_, _, accounts) = open_accounts()?;
            accounts.unlink(&name, &user.resolve()?)?;
            println!("account {name} unlinked; its secrets are deleted");
            Ok(())
        }
    }
}

fn list(user: &str) -> anyhow::Result<()> {
    let (vault, store, accounts) = open_accounts()?;
    let rows = accounts.visible_to(user)?;
    if rows.is_empty() {
        println!("user {user} has no linked accounts");
        return Ok(());
    }
    println!(
        "{:<20} {:<11} {:<18} {:<8} {:<12} {:<8} GRANTED TO",
        "NAME", "SYSTEM", "KIND", "SCOPE", "OWNER", "TOKEN"
    );
    for (a, access) in rows {
        let grants = store.grants(&a.name)?;
        // A ServiceNow account says how it signs in (basic, oauth-password, client-credentials).
        let kind = systems::of_account(&a)
            .and_then(|s| (s.sign_in)(&vault, &a))
            .unwrap_or_else(|| a.kind.as_str().to_string());
        println!(
            "{:<20} {:<11} {:<18} {:<8} {:<12} {:<8} {}",
            a.name,
            a.system,
            kind,
            if a.brand { "brand" } else { "private" },
            match access {
                Access::Owned => a.owner.clone(),
                Access::Granted => format!("{} (shared)", a.owner),
            },
            if a.token_ok { "ok" } else { "EXPIRED" },
            if grants.is_empty() {
                "-".to_string()
            } else {
                grants.join(", ")
            }
        );
    }
    Ok(())
}

/// A URL credentials will be sent to, checked before any network use by the rule every client
/// shares: https (plain http only to loopback simulators) and a valid host name.
fn endpoint_url(flag: &str, value: &str) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(value).map_err(|e| {
        usage(format!(
            "{flag} '{value}' is not a URL ({e}); give it with https://, e.g. https://acme.service-now.com"
        ))
    })?;
    xmbridge_auth::check_credential_url(&format!("{flag} URL"), &url)
        .map_err(|e| usage(e.to_string()))?;
    Ok(url)
}

/// Checks, before anything is read or sent, the URLs and names given on the command line.
fn check_link_args(args: &LinkArgs) -> anyhow::Result<()> {
    for (flag, value) in [
        ("--instance-url", &args.instance_url),
        ("--login-url", &args.login_url),
        ("--token-url", &args.token_url),
    ] {
        if let Some(v) = value {
            endpoint_url(flag, v)?;
        }
    }
    for (what, flag, value) in [
        ("client id", "--client-id", &args.client_id),
        ("ServiceNow user", "--basic-user", &args.basic_user),
        ("ServiceNow user", "--user", &args.sn_user),
    ] {
        if let Some(v) = value {
            credential_text(what, flag, v)?;
        }
    }
    Ok(())
}

fn client_secret(args: &LinkArgs) -> anyhow::Result<SecretString> {
    read_secret(
        args.client_secret_file.as_deref(),
        "XMBRIDGE_ACCOUNT_CLIENT_SECRET",
        "client secret",
        "--client-secret-file",
    )
}

/// The Salesforce login in the browser: the URL to open is printed.
async fn login(
    name: &str,
    user: &str,
    login_url: &str,
    client_id: &str,
    secret: SecretString,
    args: &LinkArgs,
) -> anyhow::Result<xmbridge_auth::TokenResponse> {
    let login = salesforce::Login {
        name,
        user,
        login_url,
        client_id,
        secret,
        port: args.callback_port,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    Ok(salesforce::login(login, |url| {
        println!("open this URL in your browser and log in to Salesforce:");
        println!("{url}");
        let _ = std::io::stdout().flush();
    })
    .await?)
}

async fn link(args: LinkArgs) -> anyhow::Result<()> {
    let user = args.user.resolve()?;
    check_link_args(&args)?;
    let (vault, store, accounts) = open_accounts()?;
    if args.refresh {
        return refresh(&args, &user, &vault, &store, &accounts).await;
    }
    let system = match (args.salesforce, args.servicenow) {
        (true, _) => &SALESFORCE,
        (_, true) => return link_servicenow(&args, &user, &accounts).await,
        _ => return Err(usage("say which system: --salesforce or --servicenow")),
    };
    let client_id = args
        .client_id
        .clone()
        .ok_or_else(|| usage("--client-id is required"))?;
    let name = args.name.as_str();
    // Check the limit before anyone logs in for nothing.
    if !args.brand {
        let private = store
            .list_accounts()?
            .into_iter()
            .filter(|a| a.owner == user && a.system == system.system.as_str() && !a.brand)
            .count();
        if private >= xmbridge_workflows::accounts::MAX_USER_SALESFORCE_ACCOUNTS {
            return Err(xmbridge_workflows::accounts::AccountError::Limit { user }.into());
        }
    }
    let secret = client_secret(&args)?;
    let (kind, settings, tokens) = if args.server_to_server {
        let token_url = args
            .token_url
            .clone()
            .ok_or_else(|| usage("--server-to-server needs --token-url"))?;
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
        let login_url = args
            .login_url
            .clone()
            .ok_or_else(|| usage("a login needs --login-url (or use --server-to-server)"))?;
        let tokens = login(name, &user, &login_url, &client_id, secret.clone(), &args).await?;
        if tokens.refresh_token.is_none() {
            return Err(anyhow!(
                "Salesforce did not return a refresh token; give the connected app the `refresh_token` scope"
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
    let row = accounts.link(LinkRequest {
        name: name.to_string(),
        system: system.system.as_str().to_string(),
        user: user.clone(),
        brand: args.brand,
        kind,
        settings,
        client_secret: Some(secret),
        refresh_token: tokens.refresh_token.clone(),
        org_id: org_id.clone(),
    })?;
    println!(
        "linked {} account {} for {}{} ({}{})",
        system.system.as_str(),
        row.name,
        user,
        if row.brand { " as a brand account" } else { "" },
        row.kind.as_str(),
        org_id
            .map(|o| format!(", organization {o}"))
            .unwrap_or_default()
    );
    if row.brand {
        println!("share it with: xmbridge account share {name} --with USER… --as {user}");
    }
    Ok(())
}

async fn refresh(
    args: &LinkArgs,
    user: &str,
    vault: &Vault,
    store: &SqliteStore,
    accounts: &Accounts,
) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let account = store.get_account(name)?;
    if account.system == SERVICENOW.system.as_str() {
        return refresh_servicenow(args, user, vault, store, accounts).await;
    }
    let rec = vault.get_connection(name)?;
    let setting = |k: &str| {
        rec.settings
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let client_id = args
        .client_id
        .clone()
        .or_else(|| setting("client_id"))
        .ok_or_else(|| anyhow!("account {name} has no client id; pass --client-id"))?;
    let secret = match &args.client_secret_file {
        Some(_) => client_secret(args)?,
        None => vault
            .get_secret(name, SecretField::ClientSecret)?
            .ok_or_else(|| {
                anyhow!("account {name} has no client secret; pass --client-secret-file")
            })?,
    };
    let refresh_token = match account.kind {
        AccountKind::ServerToServer => {
            let token_url =
                setting("token_url").ok_or_else(|| anyhow!("account {name} has no token URL"))?;
            salesforce::client_credentials(name, &token_url, &client_id, secret.clone()).await?;
            None
        }
        AccountKind::OAuth => {
            let login_url = args
                .login_url
                .clone()
                .or_else(|| setting("login_url"))
                .ok_or_else(|| anyhow!("account {name} has no login URL; pass --login-url"))?;
            let tokens = login(name, user, &login_url, &client_id, secret.clone(), args).await?;
            Some(tokens.refresh_token.ok_or_else(|| {
                anyhow!("Salesforce did not return a refresh token on the new login")
            })?)
        }
    };
    if args.client_secret_file.is_some() {
        vault.set_secret(name, SecretField::ClientSecret, &secret)?;
    }
    let resumed = account_reauthorized(accounts, store, name, user, refresh_token.as_ref())?;
    println!("re-authorized account {name}");
    for wf in &resumed {
        println!("resumed workflow {wf}; its held events will be delivered");
    }
    Ok(())
}

// ---- ServiceNow ---------------------------------------------------------------------------------

fn sn_password(args: &LinkArgs) -> anyhow::Result<SecretString> {
    read_secret(
        args.password_file.as_deref(),
        "XMBRIDGE_ACCOUNT_PASSWORD",
        "ServiceNow password",
        "--password-file",
    )
}

async fn link_servicenow(args: &LinkArgs, user: &str, accounts: &Accounts) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let instance = args
        .instance_url
        .clone()
        .ok_or_else(|| usage("a ServiceNow account needs --instance-url"))?;
    let instance = instance.trim_end_matches('/').to_string();
    let (kind, settings, client_secret, refresh_token, password) = if let Some(basic_user) =
        &args.basic_user
    {
        let password = sn_password(args)?;
        let client = servicenow::client(
            &instance,
            xmbridge_servicenow::Auth::Basic {
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
    } else if args.oauth_password || args.client_credentials {
        let client_id = args
            .client_id
            .clone()
            .ok_or_else(|| usage("--client-id is required"))?;
        let secret = client_secret(args)?;
        if args.oauth_password {
            let sn_user = args
                .sn_user
                .clone()
                .ok_or_else(|| usage("--oauth-password needs --user (the ServiceNow user)"))?;
            let rt = servicenow::password_grant(servicenow::PasswordGrant {
                name,
                instance: &instance,
                client_id: &client_id,
                client_secret: &secret,
                user: &sn_user,
                password: sn_password(args)?,
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
                xmbridge_servicenow::Auth::ClientCredentials {
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
        return Err(usage(
            "say how the ServiceNow account signs in: --basic-user U, --oauth-password, or --client-credentials",
        ));
    };
    let auth = settings["auth"].as_str().unwrap_or_default().to_string();
    let row = accounts.link(LinkRequest {
        name: name.to_string(),
        system: SERVICENOW.system.as_str().into(),
        user: user.to_string(),
        brand: args.brand,
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
        let _ = accounts.unlink(name, user);
        return Err(e.into());
    }
    println!(
        "linked {} account {} for {}{} ({auth}, {instance})",
        SERVICENOW.system.as_str(),
        row.name,
        user,
        if row.brand { " as a brand account" } else { "" },
    );
    if row.brand {
        println!("share it with: xmbridge account share {name} --with USER… --as {user}");
    }
    Ok(())
}

/// `account link NAME --refresh` of a ServiceNow account: a new password (Basic), a new
/// password grant (OAuth password), or a fresh client-credentials check; then the workflows
/// its refused token paused resume.
async fn refresh_servicenow(
    args: &LinkArgs,
    user: &str,
    vault: &Vault,
    store: &SqliteStore,
    accounts: &Accounts,
) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let rec = vault.get_connection(name)?;
    let setting = |k: &str| {
        rec.settings
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let instance = args
        .instance_url
        .clone()
        .or_else(|| setting("instance_url"))
        .ok_or_else(|| anyhow!("account {name} has no instance URL; pass --instance-url"))?;
    let stored_secret = || -> anyhow::Result<SecretString> {
        match &args.client_secret_file {
            Some(_) => client_secret(args),
            None => vault
                .get_secret(name, SecretField::ClientSecret)?
                .ok_or_else(|| {
                    anyhow!("account {name} has no client secret; pass --client-secret-file")
                }),
        }
    };
    let client_id = || {
        args.client_id
            .clone()
            .or_else(|| setting("client_id"))
            .ok_or_else(|| anyhow!("account {name} has no client id; pass --client-id"))
    };
    let auth = setting("auth").unwrap_or_default();
    let mut new_secret = None;
    let refresh_token = match auth.as_str() {
        SIGN_IN_BASIC => {
            let sn_user = args
                .basic_user
                .clone()
                .or_else(|| setting("user"))
                .ok_or_else(|| anyhow!("account {name} has no user; pass --basic-user"))?;
            let password = match &args.password_file {
                Some(_) => sn_password(args)?,
                None => vault
                    .get_secret(name, SecretField::Password)?
                    .ok_or_else(|| {
                        anyhow!("account {name} has no password; pass --password-file")
                    })?,
            };
            let client = servicenow::client(
                &instance,
                xmbridge_servicenow::Auth::Basic {
                    username: sn_user,
                    password: password.clone(),
                },
            )?;
            servicenow::check(&client, name).await?;
            vault.set_secret(name, SecretField::Password, &password)?;
            None
        }
        SIGN_IN_PASSWORD => {
            let secret = stored_secret()?;
            let sn_user = args
                .sn_user
                .clone()
                .or_else(|| setting("user"))
                .ok_or_else(|| anyhow!("account {name} has no user; pass --user"))?;
            let rt = servicenow::password_grant(servicenow::PasswordGrant {
                name,
                instance: &instance,
                client_id: &client_id()?,
                client_secret: &secret,
                user: &sn_user,
                password: sn_password(args)?,
            })
            .await?;
            new_secret = Some(secret);
            Some(rt)
        }
        SIGN_IN_CLIENT_CREDENTIALS => {
            let secret = stored_secret()?;
            let client = servicenow::client(
                &instance,
                xmbridge_servicenow::Auth::ClientCredentials {
                    client_id: client_id()?,
                    client_secret: secret.clone(),
                },
            )?;
            servicenow::check(&client, name).await?;
            new_secret = Some(secret);
            None
        }
        other => {
            return Err(anyhow!(
                "account {name} has an unknown ServiceNow sign-in `{other}`; unlink and link it again"
            ));
        }
    };
    if args.client_secret_file.is_some()
        && let Some(s) = &new_secret
    {
        vault.set_secret(name, SecretField::ClientSecret, s)?;
    }
    let resumed = account_reauthorized(accounts, store, name, user, refresh_token.as_ref())?;
    println!("re-authorized account {name}");
    for wf in &resumed {
        println!("resumed workflow {wf}; its held events will be delivered");
    }
    Ok(())
}
