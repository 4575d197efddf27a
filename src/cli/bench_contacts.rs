//! `xmbridge bench contacts`: what a directory sync costs when nothing changed. The measuring (a
//! child process per destination, the simulator process, the budget) lives in
//! `xmbridge_bench::contacts`; this file reads the arguments, builds the child's command line and
//! prints.

use super::UsageError;
use super::bench::{BenchDest, BenchTargetArgs, build_kind, round3};
use anyhow::anyhow;
use clap::Args;
use xmbridge_bench::contacts::{CALLS_PER_DIRECTORY, ContactsMeasure};
use xmbridge_bench::sync::TARGET_RSS_MB;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge bench contacts                              # 100,000 contacts, both destinations
  xmbridge bench contacts --contacts 20000 --destination sqlite --json

A first load of the directory tables (every contact read on its own), then a sync with nothing
changed, timed and counted. Its calls are compared with the fewest the API allows: the directory
list, one contact-list page per 100 contacts of each directory, and five calls per directory
(mailing lists, the search for edited contacts, samples, frequency rules, one spare). The
simulator counts the calls too (/_sim/stats). The bench creates and drops its own PostgreSQL
database and uses a temp dir for SQLite.")]
pub struct BenchContactsArgs {
    /// Contacts in the simulated default directory (a second directory holds 25).
    #[arg(long, default_value_t = 100_000)]
    pub contacts: u64,
    #[command(flatten)]
    pub target: BenchTargetArgs,
}

pub async fn run(args: BenchContactsArgs) -> anyhow::Result<()> {
    if args.contacts == 0 {
        return Err(anyhow!(UsageError("--contacts must be at least 1".into())));
    }
    if args.target.child {
        let target = args.target.child_target()?;
        let m = xmbridge_bench::contacts::child(args.contacts, target).await?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    if !args.target.json {
        println!(
            "xmbridge bench contacts: {} contacts in the default directory ({} build)",
            args.contacts,
            build_kind()
        );
    }
    let mut obj = serde_json::Map::new();
    for d in args.target.dests() {
        if !args.target.json {
            println!("running {} …", d.name());
        }
        let own = ["--contacts".to_string(), args.contacts.to_string()];
        let m: ContactsMeasure = xmbridge_bench::sync::spawn_child(
            args.target.child_argv("contacts", d, &own),
            d.name(),
        )
        .await?;
        if args.target.json {
            obj.insert(d.name().to_string(), json(&m));
        } else {
            print_table(d, &m);
        }
    }
    if args.target.json {
        println!("{}", serde_json::Value::Object(obj));
    }
    Ok(())
}

fn json(m: &ContactsMeasure) -> serde_json::Value {
    let by_stream: serde_json::Map<String, serde_json::Value> = m
        .idle_calls_by_stream
        .iter()
        .map(|(s, n)| (s.clone(), serde_json::json!(n)))
        .collect();
    serde_json::json!({
        "contacts": m.contacts,
        "directories": m.directories,
        "first_s": round3(m.first_s),
        "first_api_calls": m.first_api_calls,
        "first_contacts_read": m.first_contacts_read,
        "first_peak_rss_mb": round3(m.first_peak_rss_mb),
        "idle_s": round3(m.idle_s),
        "idle_api_calls": m.idle_api_calls,
        "idle_sim_calls": m.idle_sim_calls,
        "idle_calls_by_stream": by_stream,
        "idle_contacts_read": m.idle_contacts_read,
        "idle_peak_rss_mb": round3(m.idle_peak_rss_mb),
        "budget_calls": m.budget_calls,
    })
}

fn print_table(d: BenchDest, m: &ContactsMeasure) {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("{}:", d.name());
    println!(
        "  contacts              {:>12}   (in {} directories)",
        m.contacts, m.directories
    );
    println!(
        "  first load            {:>12.2} s   ({} API calls, {} contacts read on their own, peak RSS {:.1} MB)",
        m.first_s, m.first_api_calls, m.first_contacts_read, m.first_peak_rss_mb
    );
    println!(
        "  nothing changed       {:>12.2} s   ({} contacts read on their own, peak RSS {:.1} MB)",
        m.idle_s, m.idle_contacts_read, m.idle_peak_rss_mb
    );
    let each: Vec<String> = m
        .idle_calls_by_stream
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "  API calls             {:>12}   (client; the simulator counted {}; {})",
        m.idle_api_calls,
        m.idle_sim_calls,
        each.join(", ")
    );
    println!(
        "  budget                {:>12}   (1 + one page per 100 contacts + {CALLS_PER_DIRECTORY} per directory)",
        m.budget_calls
    );
    println!(
        "  target calls ≤ budget: {}; target peak RSS < {TARGET_RSS_MB} MB: {}",
        met(m.idle_api_calls <= m.budget_calls && m.idle_sim_calls <= m.budget_calls),
        met(m.first_peak_rss_mb.max(m.idle_peak_rss_mb) < TARGET_RSS_MB)
    );
}
