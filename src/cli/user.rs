//! `xmbridge user add|list|remove|passwd|token|tokens`: the people who sign in to `xmbridge
//! serve`, their roles and API tokens.
//!
//! Users live in the state store (`$XMBRIDGE_HOME/state.db`, tables `svc_*`), next to the vault;
//! the rules (names, password length, argon2id hashes, hashed tokens, the last admin) are
//! `xmbridge_service::users`. Passwords come from a file, `XMBRIDGE_USER_PASSWORD` or a prompt,
//! never from the command line. The local CLI holds the master key and acts as the
//! installation's operator: every change is written to the audit log as made on the CLI.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use xmbridge_auth::{ExposeSecret as _, SecretString};
use xmbridge_service::users::{AuditEntry, Role, TokenInfo, Users};
use xmbridge_service::{ErrorKind, ServiceError};
use xmbridge_vault::{Home, Vault};

use super::connection::{open_vault, read_secret};
use super::usage;

/// The environment variable a password is read from when no `--password-file` is given.
const PASSWORD_ENV: &str = "XMBRIDGE_USER_PASSWORD";

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # The first admin (the password is asked for twice, not echoed):
  xmbridge user add lee --role admin
  # A member, password from a file only you can read (or set XMBRIDGE_USER_PASSWORD):
  xmbridge user add sam --role member --password-file sam.password
  xmbridge user list
  xmbridge user passwd sam --password-file new.password
  # An API token for scripts (printed once; keep it in a password manager):
  xmbridge user token lee --expires 30d
  xmbridge user tokens lee
  xmbridge user token lee --revoke 3f9c2a7e1b0d4c55
  xmbridge user remove sam

Users sign in to `xmbridge serve` (its web UI and API). Roles: admin (connections, schedules,
brand accounts, users, every workflow) and member (their own accounts and workflows, read access
to syncs). Passwords are stored only as argon2id hashes and tokens only as SHA-256 hashes, in
XMBRIDGE_HOME/state.db. Every change is recorded in the audit log as made by the operator on
the command line.")]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

/// `--role`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// The brand administrator: connections, schedules, brand accounts, users, every workflow.
    Admin,
    /// Their own linked accounts and workflows; read access to syncs and workflows.
    Member,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Member => Role::Member,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user who can sign in to `xmbridge serve`.
    #[command(after_help = "Examples:
  xmbridge user add lee --role admin
  xmbridge user add sam --role member --password-file sam.password

The password (at least 12 characters) comes from --password-file (its first line), else
XMBRIDGE_USER_PASSWORD, else a prompt on the terminal. It is never taken from the command line.")]
    Add {
        /// The user's name (1 to 64 letters, digits, `_`, `.`, `-`).
        name: String,
        /// What the user may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// File whose first line is the password (else XMBRIDGE_USER_PASSWORD, else a prompt).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// List the users and their roles.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user, their API tokens and their sessions (never the last admin).
    Remove {
        /// The user to remove.
        name: String,
    },
    /// Set a user's password; their browser sessions end.
    #[command(after_help = "Example:
  xmbridge user passwd sam --password-file new.password")]
    Passwd {
        /// The user.
        name: String,
        /// File whose first line is the new password (else XMBRIDGE_USER_PASSWORD, else a
        /// prompt).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Make an API token for a user (printed once), or revoke one with --revoke ID.
    #[command(after_help = "Examples:
  xmbridge user token lee                   # valid 90 days
  xmbridge user token lee --expires 7d
  xmbridge user token lee --expires never
  xmbridge user token lee --revoke 3f9c2a7e1b0d4c55

The token is printed on standard output once; only its SHA-256 hash is kept, so it cannot be
shown again. Scripts send it as `Authorization: Bearer <token>`.")]
    Token {
        /// The user the token acts as.
        name: String,
        /// How long it is valid: a number of days (`90d`), hours (`12h`) or weeks (`2w`), or
        /// `never`.
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "90d",
            conflicts_with = "revoke"
        )]
        expires: String,
        /// Revoke the token with this id instead (ids are listed by `xmbridge user tokens NAME`).
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
    /// List a user's API tokens (ids, expiry, last use; never the tokens).
    Tokens {
        /// The user.
        name: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The operator's name in audit entries: the OS user running the CLI.
pub(crate) fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "operator".to_string())
}

/// The users of the vault's state store.
pub(crate) fn open_users(vault: &Vault) -> anyhow::Result<Users> {
    Users::open_at(vault.location()).map_err(service_error)
}

/// A service error for the CLI: its message and fix in one line; invalid input exits with 2.
pub(crate) fn service_error(e: ServiceError) -> anyhow::Error {
    let text = match e.fix() {
        Some(fix) => format!("{e}; {fix}"),
        None => e.to_string(),
    };
    match e.kind() {
        ErrorKind::Invalid => usage(text),
        _ => match e {
            ServiceError::Refused { .. } => anyhow!(text),
            other => anyhow::Error::new(other),
        },
    }
}

/// Writes an audit entry made on the CLI by the operator (`on_behalf_of`: the `--as` user).
pub(crate) fn audit(
    users: &Users,
    on_behalf_of: Option<&str>,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    users
        .record(AuditEntry::cli(
            operator(),
            on_behalf_of,
            action,
            target,
            detail,
        ))
        .map_err(service_error)
}

/// The users of an installation whose state store exists (`None` before the first command
/// created it: then there are no users, and no rule about them applies). Opened without the
/// master key: the users' tables hold no sealed value.
pub(crate) fn existing_users(home: &Home) -> anyhow::Result<Option<Users>> {
    if super::state::chosen().is_some() {
        let at = super::state::location(home)?;
        return Users::open_at(&at).map(Some).map_err(service_error);
    }
    let path = home.state_db();
    // A missing store has no users; an empty (0-byte) one is damaged, and opening it here would
    // hide that from the vault, which refuses it with the fix.
    if std::fs::metadata(&path).map_or(true, |m| !m.is_file() || m.len() == 0) {
        return Ok(None);
    }
    Users::open(&path).map(Some).map_err(service_error)
}

/// The role of `name` when it is a known user of this installation.
pub(crate) fn known_role(users: Option<&Users>, name: &str) -> anyhow::Result<Option<Role>> {
    let Some(users) = users else {
        return Ok(None);
    };
    match users.get(name) {
        Ok(u) => Ok(Some(u.role)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(service_error(e)),
    }
}

/// A password for `name`: from the file, else the environment, else asked twice on a terminal.
fn read_password(name: &str, file: Option<&Path>) -> anyhow::Result<SecretString> {
    let what = format!("password of user {name}");
    let from_env = std::env::var(PASSWORD_ENV).is_ok_and(|v| !v.is_empty());
    if file.is_none() && !from_env && std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("new {what}: "))
            .map_err(|e| anyhow!("cannot read the {what} from the terminal: {e}"))?;
        let again = rpassword::prompt_password("the same password again: ")
            .map_err(|e| anyhow!("cannot read the {what} from the terminal: {e}"))?;
        if first != again {
            return Err(usage("the two passwords differ; nothing was changed"));
        }
        xmbridge_runtime::connection::credential_text(&what, "the terminal", &first)?;
        return Ok(SecretString::from(first));
    }
    Ok(read_secret(file, PASSWORD_ENV, &what, "--password-file")?)
}

/// `90d`, `12h`, `2w` or `never`.
fn parse_expiry(text: &str) -> anyhow::Result<Option<Duration>> {
    let t = text.trim();
    if t == "never" {
        return Ok(None);
    }
    let bad = || {
        usage(format!(
            "--expires {t:?} is not a duration: write a number of days (90d), hours (12h) or weeks (2w), or never"
        ))
    };
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    if n == 0 || n > 3650 * 86_400 / secs {
        return Err(usage(format!(
            "--expires {t}: give a length between 1 hour and 10 years, or never"
        )));
    }
    Ok(Some(Duration::from_secs(n * secs)))
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>, none: &str) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| none.to_string())
}

fn token_status(t: &TokenInfo) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
        "expired"
    } else {
        "active"
    }
}

pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let users = match super::state::chosen() {
        // The users' tables hold no sealed value: a PostgreSQL store needs no master key here.
        Some(_) => {
            let at = super::state::location(&Home::from_env()?)?;
            Users::open_at(&at).map_err(service_error)?
        }
        None => open_users(&open_vault()?.1)?,
    };
    match args.command {
        UserCommand::Add {
            name,
            role,
            password_file,
        } => {
            let role = Role::from(role);
            // The name is checked before asking for a password nobody will use.
            xmbridge_service::users::validate_user_name(&name).map_err(service_error)?;
            if users.get(&name).is_ok() {
                return Err(anyhow!(
                    "a user named '{name}' already exists; pick another name, or change their password with `xmbridge user passwd {name}`"
                ));
            }
            let password = read_password(&name, password_file.as_deref())?;
            let user = users.add(&name, role, &password).map_err(service_error)?;
            audit(
                &users,
                None,
                "user.add",
                &name,
                serde_json::json!({"role": role.as_str()}),
            )?;
            println!("added user '{}' ({})", user.name, user.role);
            if users.count().map_err(service_error)? == 1 && role == Role::Member {
                println!(
                    "note: there is no admin yet; add one with `xmbridge user add NAME --role admin` to manage the service from the web UI"
                );
            }
            Ok(())
        }
        UserCommand::List { json } => {
            let list = users.list().map_err(service_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no users yet (add one with: xmbridge user add NAME --role admin)");
                return Ok(());
            }
            println!("{:<24} {:<7} CREATED", "NAME", "ROLE");
            for u in list {
                println!(
                    "{:<24} {:<7} {}",
                    u.name,
                    u.role.as_str(),
                    u.created_at.format("%Y-%m-%d %H:%M UTC")
                );
            }
            Ok(())
        }
        UserCommand::Remove { name } => {
            users.remove(&name).map_err(service_error)?;
            audit(&users, None, "user.remove", &name, serde_json::json!({}))?;
            println!("removed user '{name}'; their API tokens and sessions no longer work");
            Ok(())
        }
        UserCommand::Passwd {
            name,
            password_file,
        } => {
            users.get(&name).map_err(service_error)?;
            let password = read_password(&name, password_file.as_deref())?;
            users
                .set_password(&name, &password)
                .map_err(service_error)?;
            audit(&users, None, "user.passwd", &name, serde_json::json!({}))?;
            println!("changed the password of '{name}'; their browser sessions were ended");
            Ok(())
        }
        UserCommand::Token {
            name,
            expires: _,
            revoke: Some(id),
        } => {
            let known = users.list_tokens(&name).map_err(service_error)?;
            if !known.iter().any(|t| t.id == id) {
                return Err(anyhow!(
                    "user '{name}' has no API token with id '{id}'; `xmbridge user tokens {name}` lists their ids"
                ));
            }
            users.revoke_token(&id).map_err(service_error)?;
            audit(
                &users,
                None,
                "token.revoke",
                &name,
                serde_json::json!({"token_id": id}),
            )?;
            println!("revoked API token {id} of '{name}'");
            Ok(())
        }
        UserCommand::Token {
            name,
            expires,
            revoke: None,
        } => {
            let expires = parse_expiry(&expires)?;
            let (info, secret) = users.create_token(&name, expires).map_err(service_error)?;
            audit(
                &users,
                None,
                "token.create",
                &name,
                serde_json::json!({
                    "token_id": info.id,
                    "expires_at": info.expires_at,
                }),
            )?;
            // The token alone on stdout, so `xmbridge user token lee > token.txt` keeps it;
            // the explanation goes to stderr.
            println!("{}", secret.expose_secret());
            eprintln!(
                "API token {} for '{name}' ({}). It is shown only once: store it now; xmbridge keeps only its hash.",
                info.id,
                match info.expires_at {
                    Some(t) => format!("expires {}", t.format("%Y-%m-%d %H:%M UTC")),
                    None => "never expires".to_string(),
                }
            );
            eprintln!(
                "revoke it with: xmbridge user token {name} --revoke {}",
                info.id
            );
            Ok(())
        }
        UserCommand::Tokens { name, json } => {
            let list = users.list_tokens(&name).map_err(service_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("'{name}' has no API tokens (make one with: xmbridge user token {name})");
                return Ok(());
            }
            println!(
                "{:<17} {:<8} {:<21} {:<21} LAST USED",
                "ID", "STATUS", "CREATED", "EXPIRES"
            );
            for t in list {
                println!(
                    "{:<17} {:<8} {:<21} {:<21} {}",
                    t.id,
                    token_status(&t),
                    when(Some(t.created_at), "-"),
                    when(t.expires_at, "never"),
                    when(t.last_used_at, "never")
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_days_hours_weeks_or_never() {
        assert_eq!(
            parse_expiry("90d").unwrap(),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(
            parse_expiry("12h").unwrap(),
            Some(Duration::from_secs(43_200))
        );
        assert_eq!(
            parse_expiry("2w").unwrap(),
            Some(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(parse_expiry("never").unwrap(), None);
        for bad in ["", "d", "0d", "10", "5m", "-1d", "99999d"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }
}
