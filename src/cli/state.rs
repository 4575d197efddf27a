//! `xmbridge state migrate` and `xmbridge state copy`: the state store's schema versions, and
//! moving an installation's state from its SQLite file into PostgreSQL.
//!
//! `migrate` brings the tables of every component in the state store (`$XMBRIDGE_HOME/state.db`,
//! or the PostgreSQL database `--state`/`XMBRIDGE_STATE` names) to this build's schema versions
//! and says what that applied. Every command does the same for the components it opens, so
//! running it is never required; it is the explicit step for an upgrade and the check that a
//! state store is not newer than this build. The migrations themselves are `xmbridge_state`'s;
//! each component declares its own.
//!
//! `copy` copies every row of a home's `state.db` into a PostgreSQL state store that holds none
//! yet (`xmbridge_state::copy`), or with `--dry-run` counts what it would copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use xmbridge_state::copy::TableRows;
use xmbridge_state::db::{PgWorker, StateLocation};
use xmbridge_state::{Applied, Component, StoreRef};
use xmbridge_vault::Home;

use super::connection::open_vault;
use super::usage;

/// Every component with tables in the state store, in the order they are opened.
fn components() -> [&'static Component; 6] {
    [
        &xmbridge_vault::COMPONENT,
        &xmbridge_workflows::store::COMPONENT,
        &xmbridge_service::users::COMPONENT,
        &xmbridge_service::runs::COMPONENT,
        &xmbridge_service::config::COMPONENT,
        &xmbridge_service::nodes::COMPONENT,
    ]
}

/// `--state`/`XMBRIDGE_STATE` when it names a PostgreSQL database; an empty value counts as
/// unset; anything else is refused with what to give instead.
pub(crate) fn postgres_state(arg: Option<String>) -> anyhow::Result<Option<String>> {
    match arg {
        None => Ok(None),
        Some(url) if url.trim().is_empty() => Ok(None),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Some(url))
        }
        Some(url) => Err(usage(format!(
            "--state (XMBRIDGE_STATE) must be a postgres:// or postgresql:// URL, not {}; leave it unset to keep the state in XMBRIDGE_HOME/state.db",
            xmbridge_destinations::redact_url(&url)
        ))),
    }
}

/// A connected PostgreSQL state store.
struct PgStore {
    client: tokio_postgres::Client,
    /// `postgres://user@host:port/db`, no password.
    describe: String,
}

/// The settings to connect with: the same password sources and TLS options as a PostgreSQL
/// destination (PGPASSWORD, ~/.pgpass, `sslmode=` in the URL; docs/destinations.md). Warnings
/// are printed; the second value is the URL without its password.
pub(crate) fn settings(
    url: &str,
) -> anyhow::Result<(xmbridge_destinations::DestinationSettings, String)> {
    let shown = xmbridge_destinations::redact_url(url);
    if shown != url {
        eprintln!(
            "warning: the state store URL holds a password, which other local users can read in `ps`; set PGPASSWORD or add a line HOST:PORT:DATABASE:USER:PASSWORD to ~/.pgpass (chmod 600), and remove it from the URL"
        );
    }
    let resolved = xmbridge_destinations::DestinationSettings::resolve(
        url,
        None,
        &xmbridge_destinations::PgEnv::from_process(),
    )?;
    for w in resolved
        .warnings
        .iter()
        .filter(|w| !w.starts_with("the destination URL holds a password"))
    {
        eprintln!("warning: {w}");
    }
    Ok((resolved.settings, shown))
}

fn unreachable(shown: &str) -> String {
    format!(
        "the state store {shown} cannot be reached; check that PostgreSQL runs there and that --state (XMBRIDGE_STATE) names the right host, port and database"
    )
}

/// Connects for the state commands' own work (migrations, the copy).
async fn connect(url: &str) -> anyhow::Result<PgStore> {
    let (settings, shown) = settings(url)?;
    let session = xmbridge_destinations::postgres::connect(&settings)
        .await
        .with_context(|| unreachable(&shown))?;
    Ok(PgStore {
        client: session.client,
        describe: session.describe,
    })
}

/// The process's connections to `--state`'s database, opened by the first [`location`] and
/// shared by every component after it (one set of connections per process, not one per store).
static WORKER: parking_lot::Mutex<Option<PgWorker>> = parking_lot::Mutex::new(None);

/// Where the components open their tables: `--state`'s PostgreSQL database through the
/// process's connections (`xmbridge_state::db::PgWorker`), else XMBRIDGE_HOME/state.db.
pub(crate) fn location(home: &Home) -> anyhow::Result<StateLocation> {
    let Some(url) = chosen() else {
        return Ok(StateLocation::File(home.state_db()));
    };
    let mut worker = WORKER.lock();
    if let Some(w) = worker.as_ref() {
        return Ok(StateLocation::Postgres(w.clone()));
    }
    let (settings, shown) = settings(url)?;
    let connections = CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed);
    let started = PgWorker::start_pool(connections, move || {
        let settings = settings.clone();
        async move {
            xmbridge_destinations::postgres::connect(&settings)
                .await
                .map(|s| (s.client, s.describe))
                .map_err(|e| e.to_string())
        }
    })
    .with_context(|| unreachable(&shown))?;
    *worker = Some(started.clone());
    Ok(StateLocation::Postgres(started))
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge state migrate
  xmbridge state migrate --json
  xmbridge state migrate --state postgres://xmbridge@db.example:5432/xmbridge
  xmbridge state copy --to postgres://xmbridge@db.example:5432/xmbridge --dry-run
  xmbridge state copy --from /srv/xmbridge --to postgres://xmbridge@db.example:5432/xmbridge

The state store is XMBRIDGE_HOME/state.db: connections and sealed secrets, workflow events and
accounts, users, sync runs and schedules. Each component's tables carry a schema version; every
xmbridge command brings the ones it opens up to date, so `migrate` is the explicit step of an
upgrade. A state store written by a newer xmbridge is refused with both versions: upgrade the
binary instead of using it.

--state (XMBRIDGE_STATE) names a PostgreSQL state store instead, which every command uses and
several installations and servers may share (docs/state.md). The password
comes from PGPASSWORD or ~/.pgpass, TLS from sslmode= in the URL, as for a PostgreSQL
destination.")]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Apply the schema migrations this build has and the state store lacks, and list each
    /// component's version.
    Migrate {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy every row of an installation's state.db into a PostgreSQL state store that holds
    /// no rows yet, in one transaction, each table's count checked.
    Copy {
        /// The installation to copy (its directory, holding state.db); default XMBRIDGE_HOME.
        #[arg(long, value_name = "HOME")]
        from: Option<PathBuf>,
        /// The PostgreSQL state store to fill; default --state (XMBRIDGE_STATE).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// Count what would be copied and check both stores; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The PostgreSQL state store `--state`/`XMBRIDGE_STATE` chose for this process, set once by
/// `main` before any command runs.
static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// PostgreSQL connections per process: one for a command, more for `serve`
/// ([`use_connections`]), whose delivery workers, scheduler and API run statements at once.
static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Sets the connections the state store is opened with (before the first [`location`]).
pub(crate) fn use_connections(n: usize) {
    CONNECTIONS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Records the state store chosen on the command line or in the environment.
pub(crate) fn choose(state: Option<String>) {
    let _ = CHOSEN.set(state);
}

/// The PostgreSQL state store chosen, if any (else XMBRIDGE_HOME/state.db).
pub(crate) fn chosen() -> Option<&'static str> {
    CHOSEN.get().and_then(|s| s.as_deref())
}

pub async fn run(args: StateArgs) -> anyhow::Result<()> {
    let state = chosen().map(str::to_string);
    match args.command {
        StateCommand::Migrate { json } => match state {
            Some(url) => migrate_postgres(&url, json).await,
            None => migrate_home(json),
        },
        StateCommand::Copy {
            from,
            to,
            dry_run,
            json,
        } => {
            let to = match postgres_state(to)?.or(state) {
                Some(to) => to,
                None => {
                    return Err(usage(
                        "state copy needs the PostgreSQL state store to fill: give --to postgres://USER@HOST:PORT/DATABASE (or set XMBRIDGE_STATE)",
                    ));
                }
            };
            copy(from, &to, dry_run, json).await
        }
    }
}

fn migrate_home(json: bool) -> anyhow::Result<()> {
    // The vault first: it creates a missing store, with its master key.
    let (home, vault) = open_vault()?;
    let path = home.state_db();
    let mut now: Vec<Applied> = vault.migrations_applied().to_vec();
    let mut conn = open_file(&path)?;
    // The vault's were applied (and reported) by opening it.
    for c in components()
        .into_iter()
        .filter(|c| c.name != xmbridge_vault::COMPONENT.name)
    {
        now.extend(xmbridge_state::migrate(&mut conn, &path, c)?);
    }
    // Each component opens as every command opens it (nothing left to apply).
    xmbridge_workflows::store::WorkflowStore::open(&path)?;
    xmbridge_service::users::Users::open(&path)?;
    xmbridge_service::runs::Runs::open(&path)?;
    xmbridge_service::config::SyncConfigs::open(&path, Arc::clone(&vault))?;
    xmbridge_service::nodes::Nodes::open(&path)?;
    let after = xmbridge_state::applied(&conn, &path)?;
    report_versions(&path.display().to_string(), &now, &after, json);
    Ok(())
}

async fn migrate_postgres(url: &str, json: bool) -> anyhow::Result<()> {
    let mut store = connect(url).await?;
    let mut now = Vec::new();
    for c in components() {
        now.extend(xmbridge_state::pg::migrate(&mut store.client, &store.describe, c).await?);
    }
    let after = xmbridge_state::pg::applied(&store.client, &store.describe).await?;
    report_versions(&store.describe, &now, &after, json);
    Ok(())
}

fn open_file(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| anyhow::anyhow!("cannot open the state store {}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// The version of each component in `after`, 0 when it has none.
fn version_of(after: &[Applied], c: &Component) -> i64 {
    after
        .iter()
        .filter(|a| a.component == c.name)
        .map(|a| a.version)
        .max()
        .unwrap_or(0)
}

fn report_versions(store: &str, now: &[Applied], after: &[Applied], json: bool) {
    if json {
        let rows: Vec<_> = components()
            .iter()
            .map(|c| {
                json!({
                    "component": c.name,
                    "version": version_of(after, c),
                    "latest": c.latest(),
                    "applied_now": now
                        .iter()
                        .filter(|a| a.component == c.name)
                        .map(|a| json!({"version": a.version, "name": a.name}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "state_store": store,
                "components": rows,
                "applied_now": now.len(),
            })
        );
        return;
    }
    println!("state store {store}");
    println!("  {:<22} {:>7}  applied now", "component", "version");
    for c in components() {
        let mine: Vec<String> = now
            .iter()
            .filter(|a| a.component == c.name)
            .map(|a| format!("v{} {}", a.version, a.name))
            .collect();
        println!(
            "  {:<22} {:>7}  {}",
            c.name,
            version_of(after, c),
            if mine.is_empty() {
                "-".to_string()
            } else {
                mine.join("; ")
            }
        );
    }
    match now.len() {
        0 => println!("up to date: no migration was needed"),
        n => println!("applied {n} migration{}", if n == 1 { "" } else { "s" }),
    }
}

/// What the target of a copy holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// No xmbridge tables yet: the copy creates them.
    NoTables,
    /// Its tables hold no rows.
    Empty,
    /// Rows in some table: the copy refuses.
    NotEmpty,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::NoTables => "no_tables",
            Target::Empty => "empty",
            Target::NotEmpty => "not_empty",
        }
    }
}

async fn copy(from: Option<PathBuf>, to: &str, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let home = match from {
        Some(dir) => {
            if !dir.join("state.db").is_file() {
                return Err(usage(format!(
                    "{} holds no state store (state.db): give --from the directory of the installation to copy (its XMBRIDGE_HOME)",
                    dir.display()
                )));
            }
            Home::at(dir)?
        }
        None => {
            let home = Home::from_env()?;
            if !home.state_db().is_file() {
                return Err(usage(format!(
                    "XMBRIDGE_HOME ({}) holds no state store (state.db) to copy: give --from the directory of the installation to copy",
                    home.root().display()
                )));
            }
            home
        }
    };
    // A server on this home would go on writing rows the copy does not take: refuse while
    // one runs, and keep one from starting until the copy is over.
    let _lock = xmbridge_service::serve::HomeLock::acquire(&home).map_err(|e| {
        if e.kind() == xmbridge_service::ErrorKind::Conflict {
            anyhow::anyhow!(
                "`xmbridge serve` is running on {}: stop it first, so that nothing it writes during the copy is left behind",
                home.root().display()
            )
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let path = home.state_db();
    let mut src = open_file(&path)?;
    let mut store = connect(to).await?;
    let all = components();
    let (tables, target, copied) = if dry_run {
        let file = StoreRef::File(path.clone());
        xmbridge_state::refuse_newer(&xmbridge_state::applied(&src, &path)?, &file, &all)?;
        let pg = StoreRef::Postgres(store.describe.clone());
        let target_applied = xmbridge_state::pg::applied(&store.client, &store.describe).await?;
        xmbridge_state::refuse_newer(&target_applied, &pg, &all)?;
        let tables = xmbridge_state::copy::source_rows(&src, &path, &all)?;
        let held = xmbridge_state::copy::target_rows(&store.client, &store.describe, &all).await?;
        let target = if held.iter().any(|t| t.rows.unwrap_or(0) > 0) {
            Target::NotEmpty
        } else if held.iter().all(|t| t.rows.is_none()) {
            Target::NoTables
        } else {
            Target::Empty
        };
        (tables, target, false)
    } else {
        // Both stores at this build's versions: the same tables and columns on each side.
        for c in all {
            xmbridge_state::migrate(&mut src, &path, c)?;
            xmbridge_state::pg::migrate(&mut store.client, &store.describe, c).await?;
        }
        let tables =
            xmbridge_state::copy::copy(&src, &path, &mut store.client, &store.describe, &all)
                .await?;
        (tables, Target::Empty, true)
    };
    let total: u64 = tables.iter().filter_map(|t| t.rows).sum();
    if json {
        println!(
            "{}",
            json!({
                "from": path.display().to_string(),
                "to": store.describe,
                "dry_run": dry_run,
                "tables": tables.iter().map(|t| json!({
                    "component": t.component,
                    "table": t.table,
                    "rows": t.rows.unwrap_or(0),
                })).collect::<Vec<_>>(),
                "rows": total,
                "target": target.as_str(),
                "copied": copied,
            })
        );
        return Ok(());
    }
    print_tables(&path, &store.describe, &tables);
    if !dry_run {
        println!(
            "copied {total} rows in {} tables, in one transaction; each table's row count was checked against the source",
            tables.len()
        );
        println!(
            "the secrets stay sealed with this installation's master key: every process that uses {} needs that same key (XMBRIDGE_MASTER_KEY, or the file {})",
            store.describe,
            home.master_key_file().display()
        );
        return Ok(());
    }
    println!("dry run: nothing was written");
    match target {
        Target::NotEmpty => println!(
            "a copy would be refused: {} already holds rows in its xmbridge tables (copy only into a new database)",
            store.describe
        ),
        Target::Empty => println!(
            "a copy would write {total} rows: {}'s xmbridge tables exist and are empty",
            store.describe
        ),
        Target::NoTables => println!(
            "a copy would create the xmbridge tables in {} and write {total} rows",
            store.describe
        ),
    }
    Ok(())
}

fn print_tables(from: &Path, to: &str, tables: &[TableRows]) {
    println!("from {}", from.display());
    println!("to   {to}");
    println!("  {:<22} {:<22} {:>9}", "component", "table", "rows");
    for t in tables {
        println!(
            "  {:<22} {:<22} {:>9}",
            t.component,
            t.table,
            t.rows.unwrap_or(0)
        );
    }
}
