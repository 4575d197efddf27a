//! `xmbridge bench workflows`: events per second and latency from a webhook POST to the Salesforce
//! upsert it causes, against direct upserts. The measuring lives in `xmbridge_bench::workflows`;
//! this file reads the arguments and prints.

use std::time::Duration;

use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
#[command(after_help = "Example:
  xmbridge bench workflows --events 2000 --workers 4 --json")]
pub struct BenchWorkflowsArgs {
    /// Webhook events to send.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Delivery workers (the baseline runs as many upserts at a time).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Webhook POSTs in flight at once.
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: BenchWorkflowsArgs) -> anyhow::Result<()> {
    let report = xmbridge_bench::workflows::run(xmbridge_bench::workflows::Load {
        events: args.events,
        workers: args.workers,
        senders: args.senders,
    })
    .await?;
    let n = report.events;
    let (outbox_rate, outbox_elapsed) = (report.outbox_rate, report.outbox_elapsed);
    let (base_rate, base_elapsed) = (report.base_rate, report.base_elapsed);
    let (p50, p99) = (report.latency_p50, report.latency_p99);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "events": n, "workers": args.workers, "senders": args.senders,
                "webhook_to_upsert": {"events_per_sec": outbox_rate, "elapsed_ms": ms(outbox_elapsed),
                                      "latency_p50_ms": ms(p50), "latency_p99_ms": ms(p99)},
                "baseline_direct_upserts": {"per_sec": base_rate, "elapsed_ms": ms(base_elapsed)},
                "ratio": outbox_rate / base_rate,
            }))?
        );
    } else {
        println!(
            "workflows: {n} events, {} workers, {} webhook senders, loopback",
            args.workers, args.senders
        );
        println!(
            "  webhook → outbox → Salesforce upsert: {outbox_rate:.0} events/s ({:.0} ms), latency p50 {:.1} ms, p99 {:.1} ms",
            ms(outbox_elapsed),
            ms(p50),
            ms(p99)
        );
        println!(
            "  baseline, direct upserts:             {base_rate:.0} upserts/s ({:.0} ms)",
            ms(base_elapsed)
        );
        println!("  ratio: {:.2}", outbox_rate / base_rate);
    }
    Ok(())
}
