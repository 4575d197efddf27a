//! `xmbridge account link|list|share|unlink`: Salesforce (and ServiceNow) accounts that workflows
//! run with, under the Qualtrics Salesforce extension's rules (5 private Salesforce accounts per
//! user, brand accounts shared with chosen users, server-to-server accounts, re-authorize with
//! `--refresh`). The rules live in `xmbridge_workflows::accounts`, the logins, credential checks
//! and clients in `xmbridge_runtime` (`salesforce`, `servicenow`); this file reads the arguments
//! and secrets, and prints; the link and refresh steps are `xmbridge_runtime::link`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use xmbridge_auth::SecretString;
use xmbridge_runtime::link::{AccountLogin, AskedSecret, Linked, LinkedVia, Operator};
use xmbridge_runtime::systems;
use xmbridge_vault::Vault;
use xmbridge_workflows::accounts::{Access, Accounts};
use xmbridge_workflows::store::{Store, WorkflowStore};

use super::UsageError;
use super::connection::{open_vault, read_secret};
use super::user::{audit, existing_users, known_role};
use xmbridge_service::users::Role;

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
  # Prove the stored credentials now (account list then shows when), rename, log in headless:
  xmbridge account test sf-prod --as pat
  xmbridge account rename sf-prod sf-main --as pat
  xmbridge account link sf-prod --refresh --no-browser --as pat

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
    /// Prove the account's stored credentials now (one sign-in and one cheap call) and record
    /// when; `account list` shows it. Exit 1 if the system refused them.
    Test {
        name: String,
        #[command(flatten)]
        user: AsUser,
    },
    /// Rename an account (its owner or an admin); refused while a workflow step names it.
    Rename {
        name: String,
        /// The new name.
        new_name: String,
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
    /// No browser on this machine: open the printed URL anywhere, then paste here the address
    /// the browser was sent to (or the code in it). The redirect listener still runs, so an SSH
    /// tunnel to --callback-port works as well.
    #[arg(long)]
    pub no_browser: bool,
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

/// The vault, the workflow store on the same file, and the account rules.
pub(crate) fn open_accounts() -> anyhow::Result<(Arc<Vault>, Arc<WorkflowStore>, Accounts)> {
    let (_, vault) = open_vault()?;
    let store = Arc::new(WorkflowStore::open_at(vault.location())?);
    let accounts = Accounts::new(store.clone(), vault.clone());
    Ok((vault, store, accounts))
}

pub async fn run(args: AccountArgs) -> anyhow::Result<()> {
    match args.command {
        AccountCommand::Link(a) => link(*a).await,
        AccountCommand::List(u) => list(&u.resolve()?),
        AccountCommand::Share { name, with, user } => {
            let (_, _, accounts) = open_accounts()?;
            let user = user.resolve()?;
            accounts.share(&name, &user, &with)?;
            if let Some(users) = existing_users(&xmbridge_vault::Home::from_env()?)? {
                audit(
                    &users,
                    Some(&user),
                    "account.share",
                    &name,
                    serde_json::json!({"with": with}),
                )?;
            }
            println!("account {name} is shared with {}", with.join(", "));
            Ok(())
        }
        AccountCommand::Test { name, user } => test(&name, &user.resolve()?).await,
        AccountCommand::Rename {
            name,
            new_name,
            user,
        } => rename(&name, &new_name, &user.resolve()?),
        AccountCommand::Unlink { name, user } => {
            let (_, _, accounts) = open_accounts()?;
            let user = user.resolve()?;
            accounts.unlink(&name, &user)?;
            if let Some(users) = existing_users(&xmbridge_vault::Home::from_env()?)? {
                audit(
                    &users,
                    Some(&user),
                    "account.unlink",
                    &name,
                    serde_json::json!({}),
                )?;
            }
            println!("account {name} unlinked; its secrets are deleted");
            Ok(())
        }
    }
}

/// Whether `user` is an admin of this installation (no users yet: nobody is).
fn is_admin(user: &str) -> anyhow::Result<bool> {
    let users = existing_users(&xmbridge_vault::Home::from_env()?)?;
    Ok(known_role(users.as_ref(), user)? == Some(Role::Admin))
}

async fn test(name: &str, user: &str) -> anyhow::Result<()> {
    let (vault, store, _) = open_accounts()?;
    let row = store.get_account(name)?;
    let granted = store.grants(name)?.iter().any(|g| g == user);
    if row.owner != user && !granted && !is_admin(user)? {
        return Err(anyhow!(UsageError(format!(
            "{user} may not test account {name}: it belongs to {} and is not shared with {user} (only its owner, a user it is shared with, or an admin may)",
            row.owner
        ))));
    }
    let (check, resumed) = xmbridge_runtime::link::check_account(&vault, &store, name).await?;
    if let Some(users) = existing_users(&xmbridge_vault::Home::from_env()?)? {
        audit(
            &users,
            Some(user),
            "account.test",
            name,
            serde_json::json!({"ok": check.ok}),
        )?;
    }
    if check.ok {
        println!("account {name}: ok: {}", check.message);
        if !resumed.is_empty() {
            println!(
                "  its token works again; resumed workflow(s): {}",
                resumed.join(", ")
            );
        }
        Ok(())
    } else {
        Err(anyhow!(
            "account {name} failed its test: {}; re-authorize it: `xmbridge account link {name} --refresh --as {}`",
            check.message,
            row.owner
        ))
    }
}

fn rename(name: &str, new_name: &str, user: &str) -> anyhow::Result<()> {
    let (_, store, accounts) = open_accounts()?;
    let row = store.get_account(name)?;
    if row.owner != user && !is_admin(user)? {
        return Err(anyhow!(UsageError(format!(
            "{user} may not rename account {name}: it belongs to {} (only its owner or an admin may)",
            row.owner
        ))));
    }
    let home = xmbridge_vault::Home::from_env()?;
    let sources = xmbridge_workflows::catalog::Sources::standard(None, Some(home.root()));
    let catalog =
        xmbridge_workflows::catalog::load(&sources, &xmbridge_runtime::workflow::registry())
            .map_err(|e| {
                anyhow!(UsageError(format!(
                    "the workflow definitions cannot be read: {e}"
                )))
            })?;
    let named_by = xmbridge_runtime::link::workflows_naming_account(&catalog, name);
    accounts
        .rename(name, new_name, &named_by)
        .map_err(|e| match e {
            xmbridge_workflows::accounts::AccountError::InUse { .. }
            | xmbridge_workflows::accounts::AccountError::NameTaken { .. }
            | xmbridge_workflows::accounts::AccountError::Vault(
                xmbridge_vault::VaultError::InvalidName { .. },
            ) => anyhow!(UsageError(e.to_string())),
            e => anyhow!(e),
        })?;
    if let Some(users) = existing_users(&home)? {
        audit(
            &users,
            Some(user),
            "account.rename",
            name,
            serde_json::json!({"to": new_name}),
        )?;
    }
    println!("account {name} is now {new_name}");
    Ok(())
}

/// What `account list` says of an account's credentials: refused, or when they were last
/// proven (by a test, else by the link itself).
fn status(
    a: &xmbridge_workflows::store::AccountRow,
    store: &WorkflowStore,
) -> anyhow::Result<String> {
    let when = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| "?".into())
    };
    if !a.token_ok {
        return Ok("EXPIRED".into());
    }
    Ok(match store.account_check(&a.name)? {
        Some(c) if c.ok => format!("ok, tested {}", when(c.checked_at)),
        Some(c) => format!("FAILED, tested {}", when(c.checked_at)),
        None => format!("ok at link {}, not tested", when(a.created_at)),
    })
}

fn list(user: &str) -> anyhow::Result<()> {
    let (vault, store, accounts) = open_accounts()?;
    let rows = accounts.visible_to(user)?;
    if rows.is_empty() {
        println!("user {user} has no linked accounts");
        return Ok(());
    }
    println!(
        "{:<20} {:<11} {:<18} {:<8} {:<12} {:<38} GRANTED TO",
        "NAME", "SYSTEM", "KIND", "SCOPE", "OWNER", "STATUS"
    );
    for (a, access) in rows {
        let grants = store.grants(&a.name)?;
        // A ServiceNow account says how it signs in (basic, oauth-password, client-credentials).
        let kind = systems::of_account(&a)
            .and_then(|s| (s.sign_in)(&vault, &a))
            .unwrap_or_else(|| a.kind.as_str().to_string());
        let status = status(&a, &store)?;
        println!(
            "{:<20} {:<11} {:<18} {:<8} {:<12} {:<38} {}",
            a.name,
            a.system,
            kind,
            if a.brand { "brand" } else { "private" },
            match access {
                Access::Owned => a.owner.clone(),
                Access::Granted => format!("{} (shared)", a.owner),
            },
            status,
            if grants.is_empty() {
                "-".to_string()
            } else {
                grants.join(", ")
            }
        );
    }
    Ok(())
}

/// The command line's side of a link: secrets from files, environment variables or a prompt,
/// and the login URL printed.
struct Terminal<'a>(&'a LinkArgs);

impl Operator for Terminal<'_> {
    fn secret(&self, which: AskedSecret) -> xmbridge_runtime::Result<SecretString> {
        let args = self.0;
        match which {
            AskedSecret::Password => read_secret(
                args.password_file.as_deref(),
                "XMBRIDGE_ACCOUNT_PASSWORD",
                "ServiceNow password",
                "--password-file",
            ),
            _ => read_secret(
                args.client_secret_file.as_deref(),
                "XMBRIDGE_ACCOUNT_CLIENT_SECRET",
                "client secret",
                "--client-secret-file",
            ),
        }
    }

    fn open_login(
        &self,
        url: &url::Url,
        redirect_uri: &str,
    ) -> futures_util::future::BoxFuture<'static, Option<String>> {
        println!("open this URL in your browser and log in to Salesforce:");
        println!("{url}");
        let no_browser = self.0.no_browser;
        if no_browser {
            println!(
                "the browser is then sent to {redirect_uri}?code=…; where that page does not load (another machine), copy its address from the address bar"
            );
        }
        let _ = std::io::stdout().flush();
        Box::pin(super::connection::read_pasted_redirect(no_browser))
    }
}

impl LinkArgs {
    fn request(&self, user: String) -> AccountLogin {
        AccountLogin {
            name: self.name.clone(),
            user,
            salesforce: self.salesforce,
            servicenow: self.servicenow,
            instance_url: self.instance_url.clone(),
            basic_user: self.basic_user.clone(),
            oauth_password: self.oauth_password,
            client_credentials: self.client_credentials,
            sn_user: self.sn_user.clone(),
            login_url: self.login_url.clone(),
            server_to_server: self.server_to_server,
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            new_client_secret: self.client_secret_file.is_some(),
            new_password: self.password_file.is_some(),
            callback_port: self.callback_port,
            timeout: std::time::Duration::from_secs(self.timeout),
            brand: self.brand,
        }
    }
}

async fn link(args: LinkArgs) -> anyhow::Result<()> {
    let request = args.request(args.user.resolve()?);
    request.check()?;
    let (vault, store, accounts) = open_accounts()?;
    let home = xmbridge_vault::Home::from_env()?;
    let users = existing_users(&home)?;
    // The Salesforce extension's rule: only brand administrators link shared (brand) accounts.
    // A known user who is not an admin cannot get one through `--as` either.
    if args.brand
        && let Some(role) = known_role(users.as_ref(), &request.user)?
        && role != Role::Admin
    {
        return Err(anyhow!(
            "{} is a {} of this installation: only an admin may link a brand account (rule: brand accounts are linked and shared by admins); link it --as an admin, or without --brand as {}'s own account",
            request.user,
            role.as_str(),
            request.user
        ));
    }
    let operator = Terminal(&args);
    let (name, user) = (&request.name, &request.user);
    if args.refresh {
        let done =
            xmbridge_runtime::link::refresh(&request, &operator, &vault, &store, &accounts).await?;
        println!("re-authorized account {name}");
        for wf in &done.resumed {
            println!("resumed workflow {wf}; its held events will be delivered");
        }
        if let Some(r) = done.revoked {
            eprintln!("warning: {}", r.warning(name));
        }
        return Ok(());
    }
    let Linked { row, via, revoked } =
        xmbridge_runtime::link::link(&request, &operator, &store, &accounts).await?;
    let how = match via {
        LinkedVia::Salesforce { org_id } => format!(
            "{}{}",
            row.kind.as_str(),
            org_id
                .map(|o| format!(", organization {o}"))
                .unwrap_or_default()
        ),
        LinkedVia::ServiceNow { sign_in, instance } => format!("{sign_in}, {instance}"),
        _ => row.kind.as_str().to_string(),
    };
    if let Some(users) = &users {
        audit(
            users,
            Some(user),
            "account.link",
            name,
            serde_json::json!({"system": row.system.to_string(), "brand": row.brand}),
        )?;
    }
    println!(
        "linked {} account {} for {}{} ({how})",
        row.system,
        row.name,
        user,
        if row.brand { " as a brand account" } else { "" },
    );
    if row.brand {
        println!("share it with: xmbridge account share {name} --with USER… --as {user}");
    }
    if let Some(r) = revoked {
        eprintln!("warning: {}", r.warning(name));
    }
    Ok(())
}
