//! `xmbridge connection add|list|show|remove|authorize|test`: named Qualtrics connections.
//!
//! Connections live in the state store under `XMBRIDGE_HOME` (default `~/.xmbridge`), their
//! secrets sealed by `xmbridge-vault`. Secrets come from files, environment variables or a prompt,
//! never from the command line. This module reads them and prints what works; the checks of a new
//! connection, the stored format and the client a stored connection becomes live in
//! `xmbridge_runtime::connection`, the steps of `connection test` in
//! `xmbridge_runtime::save_and_test`.

use super::usage;
use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xmbridge_auth::SecretString;
use xmbridge_qualtrics::capabilities::Access;
use xmbridge_runtime::RuntimeError;
use xmbridge_runtime::authorize::authorize_connection;
use xmbridge_runtime::connection::{
    self as stored, AuthMode, Connected, Location, NewConnection, NewConnectionSecrets,
    QualtricsSettings, credential_text, load_settings,
};
use xmbridge_runtime::save_and_test::{TestStep, test_connection};
use xmbridge_service::config::{ConfigChange, SyncConfig, SyncConfigs};
use xmbridge_vault::{Home, MasterKey, Vault};

use super::user::{audit, open_users, service_error};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # API token (read from a file or XMBRIDGE_QUALTRICS_API_TOKEN):
  xmbridge connection add qualtrics acme --url acme.fra1.qualtrics.com --auth token --api-token-file ~/qualtrics.token
  # OAuth with refresh token (\"Standard\"): add, then authorize in a browser once:
  xmbridge connection add qualtrics acme --datacenter fra1 --auth standard --client-id ID --client-secret-file secret.txt
  xmbridge connection authorize acme
  # OAuth client credentials, as the ServiceNow spoke's OAuth client (scope manage:all):
  xmbridge connection add qualtrics acme --datacenter fra1 --auth client-credentials --client-id ID --client-secret-file secret.txt
  # OAuth client credentials over mutual TLS (\"Advanced\"):
  xmbridge connection add qualtrics acme --datacenter fra1 --auth advanced --client-id ID \\
      --client-secret-file secret.txt --cert client.pem --key client.key --passphrase-file pass.txt
  xmbridge connection test acme

Connections and their sealed secrets live in XMBRIDGE_HOME (default ~/.xmbridge).")]
pub struct ConnectionArgs {
    #[command(subcommand)]
    pub command: ConnectionCommand,
}

#[derive(Subcommand, Debug)]
pub enum ConnectionCommand {
    /// Save a new connection (secrets from files, environment variables or a prompt).
    #[command(
        after_help = "Save & Test: a token or advanced connection is tested before it is saved, \
with the same report as `connection test`; one that cannot sync is not saved (exit 1) unless \
--no-test is given. A standard connection needs its one approval first: `connection authorize \
NAME`, then `connection test NAME`."
    )]
    Add(Box<AddArgs>),
    /// List saved connections (never their secrets).
    List,
    /// Show one connection's settings, which secrets are stored (never their values) and its
    /// sync set-up.
    Show {
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a connection and its secrets.
    Remove { name: String },
    /// Authorize a "standard" (OAuth refresh token) connection in a browser.
    #[command(after_help = "Examples:
  xmbridge connection authorize acme
  # On a server without a browser: open the URL anywhere, paste back the address it ends on
  xmbridge connection authorize acme --no-browser
  # Or over an SSH tunnel (ssh -L 8765:127.0.0.1:8765 server), the redirect URI fixed:
  xmbridge connection authorize acme --callback-port 8765
It prints the Qualtrics authorize URL, waits on 127.0.0.1 for the browser's redirect, checks its
state, exchanges the code and stores the refresh token.")]
    Authorize(AuthorizeArgs),
    /// Set where and how often a connection syncs under `xmbridge serve` (destination, schema,
    /// tables, schedule).
    #[command(after_help = "Examples:
  xmbridge connection set acme --destination sqlite:/var/lib/xmbridge/acme.db --every 1h
  xmbridge connection set acme --destination postgres://loader@db.example.com:5432/warehouse \\
      --password-file pg.password --schema qualtrics --tables survey,response --every 15m
  xmbridge connection set acme --paused          # stop the schedule (\"sync now\" still works)
  xmbridge connection set acme --active          # resume it
  xmbridge connection set acme --no-schedule     # only \"sync now\"

Schedules: every 5m 15m 30m 1h 2h 3h 6h 8h 12h 24h. A PostgreSQL password is sealed in the vault
and the URL stored without it; give it with --password-file (a password written in the URL is
accepted and sealed too, but other local users can read command lines in `ps`). Options not given
keep their value. `xmbridge connection show NAME` shows the result.")]
    Set(Box<SetArgs>),
    /// "Save & Test": who this connection is, its data center, and which tables it can sync.
    #[command(after_help = "Example:
  xmbridge connection test acme
Exit code 0 only if the account can sync (skipped optional tables do not count).")]
    Test { name: String },
}

/// `--auth`: how a connection authenticates ([`AuthMode`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthArg {
    /// X-API-TOKEN.
    Token,
    /// OAuth authorization code + refresh token (Fivetran's "Standard").
    Standard,
    /// OAuth client credentials over mutual TLS (Fivetran's "Advanced").
    Advanced,
    /// OAuth client credentials without mutual TLS (the ServiceNow spoke's OAuth client; scope
    /// manage:all unless --scopes).
    ClientCredentials,
}

impl From<AuthArg> for AuthMode {
    fn from(a: AuthArg) -> AuthMode {
        match a {
            AuthArg::Token => AuthMode::Token,
            AuthArg::Standard => AuthMode::Standard,
            AuthArg::Advanced => AuthMode::Advanced,
            AuthArg::ClientCredentials => AuthMode::ClientCredentials,
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ProviderArg {
    Qualtrics,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The system the connection is for.
    #[arg(value_enum)]
    pub provider: ProviderArg,
    /// A name for the connection (letters, digits, `_`, `.`, `-`).
    pub name: String,
    /// The account URL as you see it in the browser (e.g. `acme.fra1.qualtrics.com`), or a
    /// simulator's `http://127.0.0.1:PORT`.
    #[arg(long, conflicts_with_all = ["datacenter", "organization"])]
    pub url: Option<String>,
    /// The data center id (`fra1`, `iad1`, legacy `ca1`, `co1` …).
    #[arg(long, conflicts_with = "organization")]
    pub datacenter: Option<String>,
    /// The organization (brand) id; the data center is then found from the account.
    #[arg(long)]
    pub organization: Option<String>,
    /// How to authenticate. `standard` (OAuth with a refresh token) is recommended for new
    /// connections, as Fivetran's Qualtrics guide requires; without --auth an API token is used
    /// (the default for existing scripts) and a note says so.
    #[arg(long, value_enum)]
    pub auth: Option<AuthArg>,
    /// Save without testing. Otherwise the connection is tested first ("Save & Test") and not
    /// saved when it cannot sync (a `standard` connection is tested after `connection
    /// authorize`).
    #[arg(long)]
    pub no_test: bool,
    /// File holding the API token (else XMBRIDGE_QUALTRICS_API_TOKEN, else a prompt).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// OAuth client id (else XMBRIDGE_QUALTRICS_CLIENT_ID).
    #[arg(long)]
    pub client_id: Option<String>,
    /// File holding the OAuth client secret (else XMBRIDGE_QUALTRICS_CLIENT_SECRET, else a prompt).
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Private key (PEM, PKCS#8; may be encrypted) for mutual TLS.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// File holding the private key's pass phrase (else XMBRIDGE_QUALTRICS_PASSPHRASE, else a
    /// prompt when the key is encrypted).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust, e.g. a simulator's `ca.pem`.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The XM Directory to sync contacts from (`POOL_…`); discovered by `connection test` if absent.
    #[arg(long)]
    pub directory: Option<String>,
    /// OAuth scopes to ask for (space separated); default: everything the sync reads.
    #[arg(long)]
    pub scopes: Option<String>,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The connection (see `xmbridge connection list`).
    pub name: String,
    /// Where it syncs to: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB` (needed the first
    /// time; a relative SQLite path is made absolute).
    #[arg(long, value_name = "URL")]
    pub destination: Option<String>,
    /// File whose first line is the PostgreSQL password (sealed in the vault).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The PostgreSQL schema, or the SQLite table prefix (default qualtrics).
    #[arg(long, value_name = "SCHEMA")]
    pub schema: Option<String>,
    /// Only these tables, comma separated (default: all).
    #[arg(long, value_name = "TABLE,…", value_delimiter = ',', num_args = 1..)]
    pub tables: Option<Vec<String>>,
    /// Sync all tables again (forget --tables).
    #[arg(long, conflicts_with = "tables")]
    pub all_tables: bool,
    /// How often the schedule syncs: 5m 15m 30m 1h 2h 3h 6h 8h 12h 24h.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_every)]
    pub every: Option<xmbridge_service::config::Every>,
    /// No schedule: the connection syncs only when asked ("sync now").
    #[arg(long, conflicts_with = "every")]
    pub no_schedule: bool,
    /// Pause the schedule.
    #[arg(long, conflicts_with = "active")]
    pub paused: bool,
    /// Resume a paused schedule.
    #[arg(long)]
    pub active: bool,
}

fn parse_every(text: &str) -> Result<xmbridge_service::config::Every, String> {
    xmbridge_service::config::Every::parse(text).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct AuthorizeArgs {
    pub name: String,
    /// Where to listen for the browser's redirect (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// A fixed port on 127.0.0.1 for the redirect (instead of --listen's): register
    /// `http://127.0.0.1:PORT/callback` with the OAuth client, or forward it over SSH.
    #[arg(long, value_name = "PORT", conflicts_with = "listen")]
    pub callback_port: Option<u16>,
    /// No browser on this machine: open the printed URL anywhere, then paste here the address
    /// the browser was sent to (or the code in it). The redirect listener still runs, so an SSH
    /// tunnel works as well.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the browser, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

pub(crate) fn open_vault() -> anyhow::Result<(Home, Arc<Vault>)> {
    let home = Home::from_env()?;
    if super::state::chosen().is_some() {
        // Reached first: a store that cannot be reached leaves no new key file behind.
        let at = super::state::location(&home)?;
        // Every process on a PostgreSQL store must bring the key it was created with; a new
        // key file made here would only be refused (the vault names both key ids).
        let key = MasterKey::from_env(&home)?;
        if let xmbridge_vault::KeySource::NewKeyFile(path) = key.source() {
            eprintln!(
                "created a new master key in {} (mode 0600); back it up, and give every process that uses this PostgreSQL state store the same key (XMBRIDGE_MASTER_KEY): without it the stored secrets cannot be opened",
                path.display()
            );
        }
        let vault = Vault::open_at(&at, key)?;
        return Ok((home, Arc::new(vault)));
    }
    let key = MasterKey::from_env(&home)?;
    if let xmbridge_vault::KeySource::NewKeyFile(path) = key.source() {
        eprintln!(
            "created a new master key in {} (mode 0600); back it up: without it the stored secrets cannot be opened",
            path.display()
        );
    }
    let vault = Vault::open_home(&home, key)?;
    for (path, mode) in vault.tightened() {
        eprintln!(
            "warning: {} was readable by other users (mode {mode:04o}); xmbridge restricted it to owner-only access (as `chmod 600 {}` does). It holds sealed secrets and connection settings: check who could read it.",
            path.display(),
            path.display()
        );
    }
    Ok((home, Arc::new(vault)))
}

/// A secret from a file (trailing newline trimmed), else an env var, else a prompt on a terminal.
/// Typed, so the runtime can ask for it through its `link::Operator`.
pub(crate) fn read_secret(
    file: Option<&Path>,
    env: &str,
    what: &str,
    flag: &str,
) -> xmbridge_runtime::Result<SecretString> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Input {
            context: format!("cannot read the {what} from {}", path.display()),
            source,
        })?;
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            return Err(RuntimeError::Usage(format!(
                "{} is empty; it must hold the {what}",
                path.display()
            )));
        }
        credential_text(what, &format!("{flag} {}", path.display()), &text)?;
        return Ok(SecretString::from(text));
    }
    if let Ok(v) = std::env::var(env)
        && !v.is_empty()
    {
        credential_text(what, &format!("the environment variable {env}"), &v)?;
        return Ok(SecretString::from(v));
    }
    if std::io::stdin().is_terminal() {
        // Not echoed, so the secret stays off the screen and out of terminal scrollback.
        let line = rpassword::prompt_password(format!("{what}: ")).map_err(|source| {
            RuntimeError::Input {
                context: format!("cannot read the {what} from the terminal"),
                source,
            }
        })?;
        if !line.is_empty() {
            credential_text(what, "the terminal", &line)?;
            return Ok(SecretString::from(line));
        }
    }
    Err(RuntimeError::Usage(format!(
        "no {what}: pass {flag} FILE or set {env}"
    )))
}

fn location_of(args: &AddArgs) -> anyhow::Result<Location> {
    if let Some(url) = &args.url {
        Ok(Location::Url(url.clone()))
    } else if let Some(dc) = &args.datacenter {
        Ok(Location::DataCenter(dc.clone()))
    } else if let Some(org) = &args.organization {
        Ok(Location::Organization(org.clone()))
    } else {
        Err(usage(
            "say where the account lives: --url ACCOUNT_URL, --datacenter ID or --organization ID",
        ))
    }
}

/// `connection add`'s secrets: each from its file, else its environment variable, else a prompt.
struct AddSecrets<'a>(&'a AddArgs);

impl NewConnectionSecrets for AddSecrets<'_> {
    fn api_token(&mut self) -> xmbridge_runtime::Result<SecretString> {
        read_secret(
            self.0.api_token_file.as_deref(),
            "XMBRIDGE_QUALTRICS_API_TOKEN",
            "API token",
            "--api-token-file",
        )
    }

    fn client_secret(&mut self) -> xmbridge_runtime::Result<SecretString> {
        read_secret(
            self.0.client_secret_file.as_deref(),
            "XMBRIDGE_QUALTRICS_CLIENT_SECRET",
            "OAuth client secret",
            "--client-secret-file",
        )
    }

    fn passphrase(
        &mut self,
        key_encrypted: bool,
    ) -> xmbridge_runtime::Result<Option<SecretString>> {
        const WHAT: &str = "private key pass phrase";
        if key_encrypted {
            read_secret(
                self.0.passphrase_file.as_deref(),
                "XMBRIDGE_QUALTRICS_PASSPHRASE",
                WHAT,
                "--passphrase-file",
            )
            .map(Some)
        } else {
            self.0
                .passphrase_file
                .as_deref()
                .map(|p| read_secret(Some(p), "", WHAT, "--passphrase-file"))
                .transpose()
        }
    }
}

pub async fn run(args: ConnectionArgs) -> anyhow::Result<()> {
    match args.command {
        ConnectionCommand::Add(a) => add(*a).await,
        ConnectionCommand::List => list(),
        ConnectionCommand::Show { name, json } => show(&name, json),
        ConnectionCommand::Remove { name } => {
            let (_, vault) = open_vault()?;
            // Fails with "no connection named …" before anything else is touched.
            vault.get_connection(&name)?;
            let users = open_users(&vault)?;
            let configs = SyncConfigs::open_at(vault.location(), Arc::clone(&vault))
                .map_err(service_error)?;
            let had_sync = configs.get(&name).map_err(service_error)?.is_some();
            configs.remove(&name).map_err(service_error)?;
            vault.remove_connection(&name)?;
            audit(
                &users,
                None,
                "connection.remove",
                &name,
                serde_json::json!({"sync_config": had_sync}),
            )?;
            if had_sync {
                println!("removed connection '{name}', its secrets and its sync set-up");
            } else {
                println!("removed connection '{name}' and its secrets");
            }
            Ok(())
        }
        ConnectionCommand::Set(a) => set(*a),
        ConnectionCommand::Authorize(a) => authorize(a).await,
        ConnectionCommand::Test { name } => test(&name).await,
    }
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let ProviderArg::Qualtrics = args.provider;
    let located = location_of(&args)?.resolve()?;
    let (_, vault) = open_vault()?;
    let auth = AuthMode::from(args.auth.unwrap_or(AuthArg::Token));
    if args.auth.is_none() {
        eprintln!(
            "note: no --auth given, so the connection uses an API token; OAuth with a refresh token (`--auth standard`) is recommended for new connections"
        );
    }
    let request = NewConnection {
        name: args.name.clone(),
        located,
        auth,
        client_id: args.client_id.clone(),
        default_client_id: std::env::var("XMBRIDGE_QUALTRICS_CLIENT_ID").ok(),
        scopes: args.scopes.clone(),
        certificate: args.cert.clone(),
        key: args.key.clone(),
        ca_cert: args.ca_cert.clone(),
        directory: args.directory.clone(),
        fallback_api_token: auth != AuthMode::Token && args.api_token_file.is_some(),
    };
    let checked = request.check(&mut AddSecrets(&args))?;
    stored::add(&vault, &checked)?;
    let name = &args.name;
    let saved = format!(
        "saved connection '{name}' ({}, {})",
        checked.settings().base_url,
        auth.label()
    );
    if auth == AuthMode::Standard {
        println!("{saved}; not tested yet: it needs its one approval in Qualtrics first");
        println!(
            "next: xmbridge connection authorize {name}, then xmbridge connection test {name}"
        );
        return Ok(());
    }
    if args.no_test {
        println!("{saved}; not tested (--no-test)");
        println!("next: xmbridge connection test {name}");
        return Ok(());
    }
    // Save & Test: the connection is stored so the test runs exactly what later runs use, and
    // removed again when it cannot sync.
    let outcome = test_connection(&vault, name, |step| print_step(name, step)).await;
    let why = match outcome {
        Ok(t) if t.can_sync => {
            println!(
                "{saved}: it can sync ({} table group(s) skipped)",
                t.skipped
            );
            return Ok(());
        }
        Ok(_) => "it cannot read surveys or responses (see the lines above)".to_string(),
        Err(e) => crate::error_chain(&e.into()),
    };
    if let Err(e) = vault.remove_connection(name) {
        bail!(
            "connection '{name}' cannot sync ({why}), and removing it again failed: {e}; remove it with `xmbridge connection remove {name}`"
        );
    }
    bail!(
        "connection '{name}' was not saved: {why}; fix it and run the same command again, or add --no-test to save it untested"
    )
}

fn list() -> anyhow::Result<()> {
    let (home, vault) = open_vault()?;
    // Workflow hook secrets live in the vault as `hook.*` entries; they are not connections.
    let conns: Vec<_> = vault
        .list_connections()?
        .into_iter()
        .filter(|c| {
            !c.name
                .starts_with(xmbridge_workflows::hooks::HOOK_CONNECTION_PREFIX)
        })
        .collect();
    if conns.is_empty() {
        println!(
            "no connections in {} (add one with: xmbridge connection add qualtrics NAME --url … --auth token)",
            match vault.location() {
                xmbridge_state::db::StateLocation::File(_) => home.root().display().to_string(),
                xmbridge_state::db::StateLocation::Postgres(w) => w.describe().to_string(),
            }
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<9} {:<45} DIRECTORY",
        "NAME", "PROVIDER", "AUTH", "URL"
    );
    for c in conns {
        let s: Option<QualtricsSettings> = serde_json::from_value(c.settings.clone()).ok();
        let (auth, url, dir) = match &s {
            Some(s) => (
                s.auth.as_str().to_string(),
                s.base_url.clone(),
                s.directory.clone().unwrap_or_else(|| "-".into()),
            ),
            None => ("?".into(), "?".into(), "-".into()),
        };
        println!(
            "{:<20} {:<10} {:<9} {:<45} {dir}",
            c.name,
            c.provider.as_str(),
            auth,
            url
        );
    }
    Ok(())
}

fn show(name: &str, json: bool) -> anyhow::Result<()> {
    let (_, vault) = open_vault()?;
    let rec = vault.get_connection(name)?;
    let s = load_settings(&vault, name)?;
    if json {
        let configs =
            SyncConfigs::open_at(vault.location(), Arc::clone(&vault)).map_err(service_error)?;
        let sync = configs.get(name).map_err(service_error)?;
        let secrets: Vec<serde_json::Value> = vault
            .list_secrets(name)?
            .iter()
            .map(|i| {
                serde_json::json!({
                    "field": i.field.as_str(),
                    "updated_at": i.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                })
            })
            .collect();
        let out = serde_json::json!({
            "name": name,
            "provider": rec.provider.as_str(),
            "url": s.base_url,
            "datacenter": s.datacenter,
            "auth": s.auth.as_str(),
            "client_id": s.client_id,
            "scopes": s.scopes,
            "certificate": s.certificate_pem.is_some(),
            "directory": s.directory,
            "secrets": secrets,
            "sync": sync,
            "created_at": rec.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "updated_at": rec.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("connection:   {name} ({})", rec.provider.as_str());
    println!("url:          {}", s.base_url);
    println!(
        "data center:  {}",
        s.datacenter
            .as_deref()
            .unwrap_or("(found by `xmbridge connection test`)")
    );
    println!("auth:         {}", s.auth.label());
    if let Some(c) = &s.client_id {
        println!("client id:    {c}");
    }
    if let Some(sc) = &s.scopes {
        println!("scopes:       {sc}");
    }
    if s.certificate_pem.is_some() {
        println!("certificate:  stored (PEM)");
    }
    println!(
        "directory:    {}",
        s.directory
            .as_deref()
            .unwrap_or("(discovered by `xmbridge connection test`)")
    );
    let stored = vault.list_secrets(name)?;
    let names: Vec<String> = stored
        .iter()
        .map(|i| {
            format!(
                "{} (set {})",
                i.field.label(),
                i.updated_at.format("%Y-%m-%d %H:%M UTC")
            )
        })
        .collect();
    println!(
        "secrets:      {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    );
    let configs =
        SyncConfigs::open_at(vault.location(), Arc::clone(&vault)).map_err(service_error)?;
    match configs.get(name).map_err(service_error)? {
        Some(cfg) => print_sync(&cfg),
        None => println!(
            "sync:         not set up (xmbridge connection set {name} --destination URL --every 1h)"
        ),
    }
    println!(
        "created:      {}",
        rec.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "updated:      {}",
        rec.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    Ok(())
}

/// The sync set-up lines of `connection show` (never a password: the URL holds none).
fn print_sync(cfg: &SyncConfig) {
    println!(
        "destination:  {}{}",
        cfg.destination,
        if cfg.has_password {
            " (password sealed in the vault)"
        } else {
            ""
        }
    );
    println!("schema:       {}", cfg.schema);
    println!(
        "tables:       {}",
        cfg.tables
            .as_ref()
            .map(|t| t.join(", "))
            .unwrap_or_else(|| "all".to_string())
    );
    let schedule = match (cfg.every, cfg.paused) {
        (Some(e), false) => format!("every {e}"),
        (Some(e), true) => format!("every {e}, paused"),
        (None, _) => "none (syncs only when asked)".to_string(),
    };
    println!("schedule:     {schedule}");
}

/// A relative `sqlite:` or `delta:` path made absolute against the current directory: `xmbridge serve`
/// may run elsewhere.
fn absolute_destination(url: &str) -> anyhow::Result<String> {
    let (scheme, path) = match (
        xmbridge_destinations::sqlite::path_of_url(url),
        xmbridge_destinations::delta::path_of_url(url),
    ) {
        (Some(path), _) => ("sqlite", path),
        (None, Some(path)) => ("delta", path),
        (None, None) => return Ok(url.to_string()),
    };
    // An object store URL (delta:s3://bucket/prefix) is absolute already.
    if path.is_empty()
        || Path::new(path).is_absolute()
        || path == ":memory:"
        || path.contains("://")
    {
        return Ok(url.to_string());
    }
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    let abs = std::env::current_dir()?.join(path);
    Ok(format!("{scheme}:{}{query}", abs.display()))
}

fn set(args: SetArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let (_, vault) = open_vault()?;
    let users = open_users(&vault)?;
    let configs =
        SyncConfigs::open_at(vault.location(), Arc::clone(&vault)).map_err(service_error)?;
    let password = args
        .password_file
        .as_deref()
        .map(|p| read_secret(Some(p), "", "destination password", "--password-file"))
        .transpose()?;
    let destination = args
        .destination
        .as_deref()
        .map(absolute_destination)
        .transpose()?;
    let url_password = destination.as_deref().is_some_and(|d| {
        xmbridge_destinations::DestinationSettings::resolve(
            d,
            None,
            &xmbridge_destinations::PgEnv::default(),
        )
        .is_ok_and(|r| r.settings.password().is_some())
    });
    let mut changed: Vec<&str> = Vec::new();
    let mut mark = |field: &'static str, given: bool| {
        if given {
            changed.push(field);
        }
    };
    mark("destination", destination.is_some());
    mark("password", password.is_some() || url_password);
    mark("schema", args.schema.is_some());
    mark("tables", args.tables.is_some() || args.all_tables);
    mark("every", args.every.is_some() || args.no_schedule);
    mark("paused", args.paused || args.active);
    if changed.is_empty() {
        return Err(usage(format!(
            "nothing to change: give --destination, --schema, --tables, --every, --no-schedule, --paused or --active (see `xmbridge connection set --help`); `xmbridge connection show {name}` shows the current set-up"
        )));
    }
    let change = ConfigChange {
        destination,
        password,
        schema: args.schema.clone(),
        tables: if args.all_tables {
            Some(None)
        } else {
            args.tables.clone().map(Some)
        },
        every: if args.no_schedule {
            Some(None)
        } else {
            args.every.map(Some)
        },
        paused: if args.paused {
            Some(true)
        } else if args.active {
            Some(false)
        } else {
            None
        },
    };
    let cfg = configs.apply(name, change).map_err(service_error)?;
    audit(
        &users,
        None,
        "connection.set",
        name,
        serde_json::json!({
            "changed": changed,
            "destination": cfg.destination,
            "has_password": cfg.has_password,
            "schema": cfg.schema,
            "tables": cfg.tables,
            "every": cfg.every,
            "paused": cfg.paused,
        }),
    )?;
    if url_password {
        eprintln!(
            "warning: the destination URL held a password, which other local users can read in `ps` while the command runs; it is sealed in the vault and the URL is stored without it. Next time use --password-file FILE"
        );
    }
    println!("saved the sync set-up of '{name}':");
    print_sync(&cfg);
    if cfg.every.is_some() && !cfg.paused {
        println!("the schedule runs while `xmbridge serve` runs");
    }
    Ok(())
}

async fn authorize(args: AuthorizeArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        return Err(usage(format!(
            "--listen {} is not a loopback address; the redirect listener only listens on 127.0.0.1",
            args.listen
        )));
    }
    let (_, vault) = open_vault()?;
    let name = args.name.as_str();
    let timeout = std::time::Duration::from_secs(args.timeout);
    let port = args.callback_port.unwrap_or(args.listen.port());
    let no_browser = args.no_browser;
    authorize_connection(&vault, name, port, timeout, |url, redirect_uri| {
        println!("open this URL in your browser and approve access:");
        println!("{url}");
        if no_browser {
            println!(
                "the browser is then sent to {redirect_uri}?code=…; where that page does not load (another machine), copy its address from the address bar"
            );
        }
        let _ = std::io::stdout().flush();
        read_pasted_redirect(no_browser)
    })
    .await?;
    println!("authorized connection '{name}'; the refresh token is stored sealed");
    println!("next: xmbridge connection test {name}");
    Ok(())
}

/// With `--no-browser`: the redirect address (or code) the user pastes on stdin, read without
/// blocking the runtime; `None` (the listener alone is waited for) otherwise or at end of input.
pub(crate) async fn read_pasted_redirect(no_browser: bool) -> Option<String> {
    if !no_browser {
        return None;
    }
    eprint!("paste the address here and press Enter: ");
    // A detached thread, not `spawn_blocking`: when the listener wins, the runtime must not
    // wait at exit for a read that may never end.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = match std::io::stdin().read_line(&mut line) {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        };
        let _ = tx.send(got);
    });
    let line = rx.await.ok().flatten();
    if line.is_none() {
        eprintln!("(no input: waiting for the redirect listener instead)");
    }
    line
}

/// The stored connection `name` as a client (what `sync`, `action` and `workflow test` use).
pub fn connect(name: &str) -> anyhow::Result<Connected> {
    let (_, vault) = open_vault()?;
    Ok(stored::connect(&vault, name)?)
}

async fn test(name: &str) -> anyhow::Result<()> {
    let (_, vault) = open_vault()?;
    let tested = test_connection(&vault, name, |step| print_step(name, step)).await?;
    if tested.can_sync {
        println!(
            "result: connection '{name}' can sync ({} table group(s) skipped)",
            tested.skipped
        );
        Ok(())
    } else {
        bail!(
            "connection '{name}' cannot sync: it cannot read surveys or responses (see the lines above)"
        )
    }
}

fn print_step(name: &str, step: TestStep<'_>) {
    match step {
        TestStep::Auth(auth) => println!("connection '{name}': {}", auth.label()),
        TestStep::Identity {
            datacenter,
            base_url,
            me,
        } => {
            println!(
                "  data center: {} ({base_url})",
                datacenter.unwrap_or("unknown"),
            );
            println!(
                "  user:        {} ({}), brand {}, account type {}",
                me.user_name.as_deref().unwrap_or("?"),
                me.user_id,
                me.brand_id.as_deref().unwrap_or("?"),
                me.account_type.as_deref().unwrap_or("?")
            );
        }
        TestStep::Token { source, expires_at } => match expires_at {
            Some(t) => {
                let at: chrono::DateTime<chrono::Utc> = t.into();
                let mins = (at - chrono::Utc::now()).num_minutes();
                println!(
                    "  token:       {source}, expires {} (in {mins} min)",
                    at.format("%Y-%m-%dT%H:%M:%SZ")
                );
            }
            None => println!("  token:       {source} (does not expire)"),
        },
        TestStep::Capabilities(caps) => {
            match (&caps.directory, caps.directory_discovered) {
                (Some(d), true) => {
                    println!("  directory:   {d} (discovered: the brand's default directory)")
                }
                (Some(d), false) => println!("  directory:   {d}"),
                (None, _) => println!("  directory:   none"),
            }
            println!("  tables:");
            for g in &caps.groups {
                match &g.access {
                    Access::Ok => println!(
                        "    ok       {} ({})",
                        g.group.name,
                        g.group.tables.join(", ")
                    ),
                    Access::Skipped(why) => println!(
                        "    skipped  {} ({}): {why}",
                        g.group.name,
                        g.group.tables.join(", ")
                    ),
                }
            }
        }
        _ => {}
    }
}
