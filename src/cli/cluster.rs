//! `xmbridge cluster status`: the serving processes (`xmbridge serve`) of this installation, as
//! the state store records them — id, host, pid, version, last heartbeat, state and the syncs
//! each runs (`xmbridge_service::nodes`; the same as `GET /api/v1/cluster`).

use clap::{Args, Subcommand};
use xmbridge_service::nodes::{Node, Nodes};
use xmbridge_vault::Home;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge cluster status
  xmbridge cluster status --json

Each `xmbridge serve` records a heartbeat in the state store (XMBRIDGE_HOME/state.db, or the
PostgreSQL database of --state, which several servers may share) every few seconds (serve --heartbeat-secs, default 5). A node that missed three is `not_responding`
(killed, frozen, or cut off from the state store); one that stopped cleanly is `stopped`. Nodes
gone for a week are forgotten. The same list: GET /api/v1/cluster.")]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// List the serving processes: id, host, pid, version, last heartbeat, state, running syncs.
    Status {
        /// Print one JSON object (`{"nodes": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Status { json } => status(json).await,
    }
}

async fn status(json: bool) -> anyhow::Result<()> {
    let home = Home::from_env()?;
    let path = home.state_db();
    if super::state::chosen().is_some() {
        let at = super::state::location(&home)?;
        let nodes = tokio::task::spawn_blocking(move || Nodes::open_at(&at)?.list()).await??;
        return print_nodes(&nodes, json);
    }
    if !path.exists() {
        if json {
            println!("{}", serde_json::json!({ "nodes": [] }));
        } else {
            println!(
                "no state store at {} yet, so no node has run (start one with `xmbridge serve`)",
                path.display()
            );
        }
        return Ok(());
    }
    let nodes = tokio::task::spawn_blocking(move || Nodes::open(&path)?.list()).await??;
    print_nodes(&nodes, json)
}

fn print_nodes(nodes: &[Node], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::json!({ "nodes": nodes }));
        return Ok(());
    }
    if nodes.is_empty() {
        println!("no node has run yet (start one with `xmbridge serve`)");
        return Ok(());
    }
    println!(
        "{:<16}  {:<14}  {:>7}  {:<8}  {:<14}  {:>16}  running",
        "node", "state", "pid", "version", "host", "last heartbeat"
    );
    for n in nodes {
        println!(
            "{:<16}  {:<14}  {:>7}  {:<8}  {:<14}  {:>16}  {}",
            n.id,
            n.state.as_str(),
            n.pid,
            n.version,
            n.host,
            format!("{:.1} s ago", n.heartbeat_age_s),
            running(n)
        );
    }
    let alive = nodes
        .iter()
        .filter(|n| n.state == xmbridge_service::nodes::NodeState::Alive)
        .count();
    println!("{alive} of {} node(s) alive", nodes.len());
    Ok(())
}

fn running(n: &Node) -> String {
    if n.running.is_empty() {
        return "-".into();
    }
    n.running
        .iter()
        .map(|r| format!("{} (run {})", r.connection, r.run))
        .collect::<Vec<_>>()
        .join(", ")
}
