//! `xmbridge bench sync`: how fast and how lean the response sync is, against a raw load of the
//! same rows measured in the same run. The measuring (a child process per destination — the
//! hidden `--child` mode —, the simulator process, the raw baselines) lives in
//! `xmbridge_bench::sync`; this file reads the arguments, builds the child's command line and
//! prints.

use super::UsageError;
use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use std::ffi::OsString;
use xmbridge_bench::sync::{
    Measure, Mode, SurveySize, TARGET_INCREMENTAL_LIMIT_RATIO, TARGET_LIMIT_RATIO, TARGET_RATIO,
    TARGET_RSS_MB, Target,
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Time a response sync into PostgreSQL and SQLite against a raw load of the same rows.
    Sync(BenchSyncArgs),
    /// Events/s and latency from a webhook POST to the Salesforce upsert, against direct upserts.
    Workflows(super::bench_workflows::BenchWorkflowsArgs),
    /// API calls, time and memory of a directory sync with nothing changed, against the fewest
    /// calls the API allows.
    Contacts(super::bench_contacts::BenchContactsArgs),
    /// Full syncs per minute and webhook events per second with one `xmbridge serve` and with
    /// several on one PostgreSQL state store, and where the CPU time went.
    Cluster(super::bench_cluster::BenchClusterArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge bench sync                                  # 200,000 responses × 30 questions, both destinations
  xmbridge bench sync --responses 20000 --destination sqlite
  xmbridge bench sync --postgres postgres://postgres@127.0.0.1:5432/postgres --json
  xmbridge bench sync --incremental --responses 1000000 --destination postgres

ratio = baseline seconds / sync seconds: higher is better, 1.0 means the sync is as fast as a raw
load of the same rows into tables that have their key and indexes (binary COPY on PostgreSQL, a
bare prepared-insert loop on SQLite).
limit_ratio = limit seconds / (sync seconds − export wait): the same rows loaded the fastest
correct way (into empty tables without indexes, then the same key and indexes built) against the
part of the sync xmbridge controls; 1.0 means the sync runs at that physical limit.
--incremental: after a first load of N responses, 1 % new and 0.5 % edited responses are made in
the simulator and the second sync is timed; the baseline and limit then load only the rows of
the changed responses (changed_responses in the output).
The bench creates and drops its own PostgreSQL database and uses a temp dir for SQLite.")]
pub struct BenchSyncArgs {
    /// Responses in the simulated survey.
    #[arg(long, default_value_t = 200_000)]
    pub responses: u64,
    /// Questions in the simulated survey.
    #[arg(long, default_value_t = 30)]
    pub questions: usize,
    /// Time a second, incremental sync after 1 % new and 0.5 % edited responses, against
    /// loading only the changed rows.
    #[arg(long)]
    pub incremental: bool,
    #[command(flatten)]
    pub target: BenchTargetArgs,
}

/// Where a bench measures and how it prints; `bench sync` and `bench contacts` take the same.
#[derive(Args, Debug)]
pub struct BenchTargetArgs {
    /// Run only this destination (default: postgres and sqlite; delta only when named).
    #[arg(long, value_enum)]
    pub destination: Option<BenchDest>,
    /// PostgreSQL server to use (the bench creates and drops its own database there).
    #[arg(
        long,
        env = "XMBRIDGE_TEST_PG",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// File whose first line is the PostgreSQL password (else PGPASSWORD, else ~/.pgpass), as
    /// for `xmbridge sync`.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Internal: measure one destination in this process and print its JSON line.
    #[arg(long, hide = true)]
    pub child: bool,
}

impl BenchTargetArgs {
    /// The destinations to measure, in order.
    pub(super) fn dests(&self) -> Vec<BenchDest> {
        match self.destination {
            Some(d) => vec![d],
            None => vec![BenchDest::Postgres, BenchDest::Sqlite],
        }
    }

    /// In `--child` mode: the one destination this process measures.
    pub(super) fn child_target(&self) -> anyhow::Result<Target> {
        let dest = self
            .destination
            .ok_or_else(|| anyhow!(UsageError("--child needs --destination".into())))?;
        Ok(match dest {
            BenchDest::Sqlite => Target::Sqlite,
            BenchDest::Delta => Target::Delta,
            BenchDest::Postgres => Target::Postgres(super::sync::destination_settings(
                &self.postgres,
                self.password_file.as_deref(),
            )?),
        })
    }

    /// The command line of the child of `bench <what>` that measures `d`: the bench's own
    /// arguments (`own`), then where to measure.
    pub(super) fn child_argv(&self, what: &str, d: BenchDest, own: &[String]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = ["bench", what, "--child", "--destination", d.name()]
            .iter()
            .map(OsString::from)
            .collect();
        argv.extend(own.iter().map(OsString::from));
        argv.push("--postgres".into());
        argv.push((&self.postgres).into());
        if let Some(f) = &self.password_file {
            argv.push("--password-file".into());
            argv.push(f.into());
        }
        argv
    }
}

/// The kind of build, for the benches' first line (only a release build gives figures worth
/// comparing).
pub(super) fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Rounded to milliseconds (or thousandths) for the JSON output.
pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDest {
    Postgres,
    Sqlite,
    /// Delta Lake tables in a temp directory (only when asked for: not part of the default run).
    Delta,
}

impl BenchDest {
    pub(super) fn name(self) -> &'static str {
        match self {
            BenchDest::Postgres => "postgres",
            BenchDest::Sqlite => "sqlite",
            BenchDest::Delta => "delta",
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Sync(a) => sync(a).await,
        BenchWhat::Workflows(a) => super::bench_workflows::run(a).await,
        BenchWhat::Contacts(a) => super::bench_contacts::run(a).await,
        BenchWhat::Cluster(a) => super::bench_cluster::run(a).await,
    }
}

async fn sync(args: BenchSyncArgs) -> anyhow::Result<()> {
    if args.responses == 0 {
        return Err(anyhow!(UsageError("--responses must be at least 1".into())));
    }
    if args.questions == 0 {
        return Err(anyhow!(UsageError("--questions must be at least 1".into())));
    }
    if args.target.child {
        let target = args.target.child_target()?;
        let m = xmbridge_bench::sync::child(size(&args), target, mode(&args)).await?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let dests = args.target.dests();
    if !args.target.json {
        println!(
            "xmbridge bench sync{}: 1 survey × {} responses × {} questions ({} build)",
            if args.incremental {
                format!(
                    " --incremental (then {} new and {} edited responses)",
                    xmbridge_bench::sync::new_responses(args.responses),
                    xmbridge_bench::sync::edited_responses(args.responses)
                )
            } else {
                String::new()
            },
            args.responses,
            args.questions,
            build_kind()
        );
    }
    let mut results = Vec::new();
    for d in dests {
        if !args.target.json {
            println!("running {} …", d.name());
        }
        let m = xmbridge_bench::sync::spawn_child(child_argv(&args, d), d.name()).await?;
        if !args.target.json {
            print_table(d, &m);
        }
        results.push((d, m));
    }
    if args.target.json {
        let mut obj = serde_json::Map::new();
        for (d, m) in &results {
            obj.insert(
                d.name().to_string(),
                serde_json::json!({
                    "responses": m.responses,
                    "rows": m.rows,
                    "sync_s": round3(m.sync_s),
                    "baseline_s": round3(m.baseline_s),
                    "ratio": round3(m.ratio()),
                    "peak_rss_mb": round3(m.peak_rss_mb),
                    "export_s": round3(m.export_s),
                    "limit_s": round3(m.limit_s),
                    "limit_ratio": round3(m.limit_ratio()),
                }),
            );
            if let (Some(done), Some(serde_json::Value::Object(o))) =
                (m.checkpointed, obj.get_mut(d.name()))
            {
                o.insert("checkpointed".into(), serde_json::json!(done));
            }
            if let (Some(cpu), Some(serde_json::Value::Object(o))) =
                (m.client_cpu_s, obj.get_mut(d.name()))
            {
                o.insert("client_cpu_s".into(), serde_json::json!(round3(cpu)));
            }
            if let (Some(n), Some(serde_json::Value::Object(o))) =
                (m.changed_responses, obj.get_mut(d.name()))
            {
                o.insert("changed_responses".into(), serde_json::json!(n));
                if let (Some(s), Some(rss)) = (m.first_load_s, m.first_load_peak_rss_mb) {
                    o.insert("first_load_s".into(), serde_json::json!(round3(s)));
                    o.insert(
                        "first_load_peak_rss_mb".into(),
                        serde_json::json!(round3(rss)),
                    );
                }
            }
        }
        println!("{}", serde_json::Value::Object(obj));
    }
    Ok(())
}

fn print_table(d: BenchDest, m: &Measure) {
    let per_s = |n: u64| {
        if m.sync_s > 0.0 {
            n as f64 / m.sync_s
        } else {
            0.0
        }
    };
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("{}:", d.name());
    if let (Some(s), Some(rss)) = (m.first_load_s, m.first_load_peak_rss_mb) {
        println!(
            "  first load            {s:>12.2} s   (untimed by the ratios; peak RSS {rss:.1} MB)"
        );
    }
    if let Some(n) = m.changed_responses {
        println!("  changed responses     {n:>12}   (what the timed, incremental sync wrote)");
    }
    println!("  wall time (sync)      {:>12.2} s", m.sync_s);
    println!("  responses/s           {:>12.0}", per_s(m.responses));
    println!(
        "  rows/s                {:>12.0}   ({} question_response rows)",
        per_s(m.rows),
        m.rows
    );
    println!("  peak RSS              {:>12.1} MB", m.peak_rss_mb);
    if let Some(cpu) = m.client_cpu_s {
        println!(
            "  client CPU            {cpu:>12.2} s   (every thread of the syncing process, not the simulator or the server)"
        );
    }
    println!("  API calls             {:>12}", m.api_calls);
    println!(
        "  baseline              {:>12.2} s   ({} rows, {})",
        m.baseline_s,
        m.baseline_rows,
        match d {
            BenchDest::Postgres => "binary COPY",
            BenchDest::Sqlite => "prepared inserts, one transaction",
            BenchDest::Delta => "the same rows written as new Delta tables, one commit each",
        }
    );
    println!(
        "  ratio baseline/sync   {:>12.2}     (1.0 = as fast as a raw load into indexed tables)",
        m.ratio()
    );
    println!(
        "  export wait           {:>12.2} s   (Qualtrics preparing the file; no client can shorten it)",
        m.export_s
    );
    let limit_is = match d {
        BenchDest::Delta => "the baseline's raw write: Delta tables have no key or index to build",
        _ => "into empty tables, then the same key and indexes built",
    };
    println!(
        "  limit                 {:>12.2} s   ({} rows {limit_is})",
        m.limit_s, m.limit_rows
    );
    println!(
        "  limit ratio           {:>12.2}     (limit / (sync − export wait); 1.0 = at the physical limit)",
        m.limit_ratio()
    );
    match m.checkpointed {
        Some(true) => println!(
            "  checkpoints           each timed phase (sync, baseline, limit) started after a CHECKPOINT"
        ),
        Some(false) => println!(
            "  checkpoints           NOT written (the server refused CHECKPOINT, which takes superuser or pg_checkpoint): a phase may pay for the one before; the figures move more between runs"
        ),
        None => {}
    }
    // An incremental sync's limit target is issue 14's "at most 2× its limit".
    let limit_target = if m.changed_responses.is_some() {
        TARGET_INCREMENTAL_LIMIT_RATIO
    } else {
        TARGET_LIMIT_RATIO
    };
    println!(
        "  target ratio ≥ {TARGET_RATIO}: {}; target limit ratio ≥ {limit_target}: {}; target peak RSS < {TARGET_RSS_MB} MB: {}",
        met(m.ratio() >= TARGET_RATIO),
        met(m.limit_ratio() >= limit_target),
        met(m.peak_rss_mb.max(m.first_load_peak_rss_mb.unwrap_or(0.0)) < TARGET_RSS_MB)
    );
}

fn mode(args: &BenchSyncArgs) -> Mode {
    if args.incremental {
        Mode::Incremental
    } else {
        Mode::FirstLoad
    }
}

fn size(args: &BenchSyncArgs) -> SurveySize {
    SurveySize {
        responses: args.responses,
        questions: args.questions,
    }
}

/// The command line of the child that measures `d`.
fn child_argv(args: &BenchSyncArgs, d: BenchDest) -> Vec<OsString> {
    let mut own = vec![
        "--responses".to_string(),
        args.responses.to_string(),
        "--questions".to_string(),
        args.questions.to_string(),
    ];
    if args.incremental {
        own.push("--incremental".into());
    }
    args.target.child_argv("sync", d, &own)
}
