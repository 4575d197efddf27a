//! `xmbridge bench cluster`: full syncs per minute and webhook events per second with one
//! `xmbridge serve` and with several on one PostgreSQL state store, in the same run, and where
//! the CPU time went. The measuring lives in `xmbridge_bench::cluster`; this file reads the
//! arguments and prints.

use clap::Args;
use serde_json::json;
use xmbridge_bench::cluster::{Load, Phase, Report};

use super::bench::{build_kind, round3};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge bench cluster                      # 1 node, then 3
  xmbridge bench cluster --nodes 2 --connections 4 --events 500 --json

Each round starts from nothing: its own state and destination databases on --postgres (created
and dropped), fresh homes, and `xmbridge serve` processes of this executable on loopback, with
one simulator process shared by both rounds.
syncs/min: every connection's first full load queued at once, from the first run's start to
the last one's end; each node runs at most --max-syncs at a time, so more nodes run more at once.
events/s: ServiceNow records POSTed round-robin to the nodes, each delivered as a Qualtrics
contact, from the first POST until every event is done.
cores busy: CPU seconds of the servers, the simulator and every PostgreSQL process on this
machine, divided by the phase's wall time. On a machine with few cores the nodes share them,
so the ratio is bounded by the cores left idle by one node.
The PostgreSQL password comes from PGPASSWORD or ~/.pgpass, which the servers inherit.")]
pub struct BenchClusterArgs {
    /// Servers of the second round (the first has one).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Connections, each synced in full into its own schema.
    #[arg(long, default_value_t = 6)]
    pub connections: usize,
    /// Responses in the simulated survey every connection syncs.
    #[arg(long, default_value_t = 3000)]
    pub responses: u64,
    /// Webhook events per round.
    #[arg(long, default_value_t = 2000)]
    pub events: usize,
    /// Sync runs one node runs at once (`serve --max-syncs`).
    #[arg(long, default_value_t = 2)]
    pub max_syncs: usize,
    /// Webhook POSTs in flight at once.
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    /// PostgreSQL server for the state stores and destinations (the bench creates and drops
    /// its own databases there).
    #[arg(
        long,
        env = "XMBRIDGE_TEST_PG",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn phase_json(p: &Phase, rate_name: &str, rate: f64) -> serde_json::Value {
    json!({
        "done": p.done,
        "elapsed_s": round3(p.elapsed.as_secs_f64()),
        rate_name: round3(rate),
        "cpu_s": {"servers": round3(p.cpu.servers), "simulator": round3(p.cpu.simulator),
                  "postgres": round3(p.cpu.postgres)},
        "cores_busy": round3(p.cores_busy()),
    })
}

fn cpu_line(p: &Phase) -> String {
    format!(
        "{:.1} cores busy (servers {:.1} s, simulator {:.1} s, PostgreSQL {:.1} s of CPU)",
        p.cores_busy(),
        p.cpu.servers,
        p.cpu.simulator,
        p.cpu.postgres
    )
}

fn print(args: &BenchClusterArgs, report: &Report) -> anyhow::Result<()> {
    let (one, many) = match report.rounds.as_slice() {
        [one, many] => (one, many),
        _ => anyhow::bail!("the bench measured {} rounds, not 2", report.rounds.len()),
    };
    let sync_ratio = many.syncs_per_min() / one.syncs_per_min();
    let event_ratio = many.events_per_sec() / one.events_per_sec();
    if args.json {
        let rounds: Vec<_> = report
            .rounds
            .iter()
            .map(|r| {
                json!({
                    "nodes": r.nodes,
                    "syncs": phase_json(&r.syncs, "syncs_per_min", r.syncs_per_min()),
                    "events": phase_json(&r.events, "events_per_sec", r.events_per_sec()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "build": build_kind(), "cpus": report.cpus,
                "connections": args.connections, "responses": args.responses,
                "events": args.events, "max_syncs": args.max_syncs,
                "rounds": rounds,
                "ratio": {"syncs_per_min": round3(sync_ratio), "events_per_sec": round3(event_ratio)},
            }))?
        );
        return Ok(());
    }
    println!(
        "cluster ({} build, {} CPUs): {} connections × {} responses, at most {} syncs per node at once; {} webhook events",
        build_kind(),
        report.cpus,
        args.connections,
        args.responses,
        args.max_syncs,
        args.events
    );
    for r in &report.rounds {
        println!(
            "  {} node(s): {:.1} full syncs/min ({} in {:.1} s), {}",
            r.nodes,
            r.syncs_per_min(),
            r.syncs.done,
            r.syncs.elapsed.as_secs_f64(),
            cpu_line(&r.syncs)
        );
        println!(
            "  {:>8}  {:.0} events/s ({} in {:.1} s), {}",
            "",
            r.events_per_sec(),
            r.events.done,
            r.events.elapsed.as_secs_f64(),
            cpu_line(&r.events)
        );
    }
    println!(
        "  ratio {} nodes / 1: syncs {sync_ratio:.2}, events {event_ratio:.2}",
        many.nodes
    );
    Ok(())
}

pub async fn run(args: BenchClusterArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let postgres = super::sync::destination_settings(&args.postgres, None)?;
    let report = xmbridge_bench::cluster::run(
        Load {
            nodes: args.nodes,
            connections: args.connections,
            responses: args.responses,
            events: args.events,
            max_syncs: args.max_syncs,
            senders: args.senders,
        },
        &exe,
        &postgres,
    )
    .await?;
    print(&args, &report)
}
