//! `xmbridge state migrate`: brings the tables of every component in the state store
//! (`$XMBRIDGE_HOME/state.db`) to this build's schema versions and says what that applied.
//!
//! Every command does the same for the components it opens, so running it is never required;
//! it is the explicit step for an upgrade (run it once, read what changed, then start the
//! processes) and the check that a state store is not newer than this build. The migrations
//! themselves are `xmbridge_state`'s; each component declares its own.

use std::sync::Arc;

use clap::{Args, Subcommand};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use xmbridge_state::{Applied, Component};

use super::connection::open_vault;

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

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge state migrate
  xmbridge state migrate --json

The state store is XMBRIDGE_HOME/state.db: connections and sealed secrets, workflow events and
accounts, users, sync runs and schedules. Each component's tables carry a schema version; every
xmbridge command brings the ones it opens up to date, so this command is the explicit step of an
upgrade. A state store written by a newer xmbridge is refused with both versions: upgrade the
binary instead of using it.")]
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
}

pub async fn run(args: StateArgs) -> anyhow::Result<()> {
    match args.command {
        StateCommand::Migrate { json } => migrate(json),
    }
}

fn migrate(json: bool) -> anyhow::Result<()> {
    // The vault first: it creates a missing store, with its master key.
    let (home, vault) = open_vault()?;
    let path = home.state_db();
    let mut now: Vec<Applied> = vault.migrations_applied().to_vec();
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| anyhow::anyhow!("cannot open the state store {}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // The vault's were applied (and reported) by opening it.
    for c in components()
        .into_iter()
        .filter(|c| c.name != xmbridge_vault::COMPONENT.name)
    {
        now.extend(xmbridge_state::migrate(&mut conn, &path, c)?);
    }
    // Each component opens as every command opens it (nothing left to apply).
    xmbridge_workflows::store::SqliteStore::open(&path)?;
    xmbridge_service::users::Users::open(&path)?;
    xmbridge_service::runs::Runs::open(&path)?;
    xmbridge_service::config::SyncConfigs::open(&path, Arc::clone(&vault))?;
    xmbridge_service::nodes::Nodes::open(&path)?;
    let after = xmbridge_state::applied(&conn, &path)?;
    let version_of = |c: &Component| {
        after
            .iter()
            .filter(|a| a.component == c.name)
            .map(|a| a.version)
            .max()
            .unwrap_or(0)
    };
    if json {
        let rows: Vec<_> = components()
            .iter()
            .map(|c| {
                json!({
                    "component": c.name,
                    "version": version_of(c),
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
                "state_store": path.display().to_string(),
                "components": rows,
                "applied_now": now.len(),
            })
        );
        return Ok(());
    }
    println!("state store {}", path.display());
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
            version_of(c),
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
    Ok(())
}
