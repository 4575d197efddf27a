//! `xmbridge sync CONNECTION --destination URL`: Qualtrics into SQLite or PostgreSQL.
//!
//! Opens the stored connection and the destination, runs the sync engine with progress bars on
//! a terminal (structured log lines otherwise) and prints the summary. The engine, the streams and
//! the writers live in `xmbridge-sync` and `xmbridge-destinations`.

use super::UsageError;
use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use xmbridge_destinations::Compat;
use xmbridge_qualtrics::Client;
use xmbridge_sync::{LogProgress, Progress, SyncOptions, SyncSummary};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge sync acme --destination sqlite:./qualtrics.db
  xmbridge sync acme --destination postgres://postgres@127.0.0.1:5432/warehouse --schema qualtrics
  xmbridge sync acme --destination sqlite:./q.db --tables survey_response,question_response
  xmbridge sync acme --destination sqlite:./q.db --compat fivetran   # dbt_qualtrics runs unchanged
  xmbridge sync acme --destination sqlite:./q.db --reconcile         # drop responses deleted upstream

Runs are incremental: each table's cursor is committed with its rows, so a killed sync resumes
where it stopped. On SQLite the schema is a table prefix (qualtrics_survey, …).")]
pub struct SyncArgs {
    /// The connection to read (see `xmbridge connection list`).
    pub connection: String,
    /// Where to write: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`.
    #[arg(long)]
    pub destination: String,
    /// Schema name (PostgreSQL schema; table prefix on SQLite).
    #[arg(long, default_value = "qualtrics")]
    pub schema: String,
    /// Only these tables (comma separated schema.md names); a table brings its stream group.
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Ignore cursors: re-read every definition and export every response.
    #[arg(long)]
    pub full: bool,
    /// System column names: `xmbridge` (`_xmbridge_synced`) or `fivetran` (`_fivetran_synced`).
    #[arg(long, value_enum, default_value_t = CompatArg::Xmbridge)]
    pub compat: CompatArg,
    /// Surveys exported at the same time.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Responses per destination transaction (smaller: less re-done after a kill; larger: faster).
    #[arg(long, default_value_t = 5000)]
    pub commit_every: usize,
    /// Rows (all tables) per destination transaction, whichever of this and --commit-every comes
    /// first; bounds memory (about 800 bytes per row, three batches held at most).
    #[arg(long, default_value_t = 40_000)]
    pub commit_rows: usize,
    /// Also remove responses deleted upstream (with their answer rows) now, whatever the schedule.
    #[arg(long)]
    pub reconcile: bool,
    /// Reconcile a survey automatically when its last reconcile is older than this many days.
    #[arg(long, default_value_t = 7)]
    pub reconcile_every_days: u64,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum CompatArg {
    Xmbridge,
    Fivetran,
}

impl From<CompatArg> for Compat {
    fn from(c: CompatArg) -> Compat {
        match c {
            CompatArg::Xmbridge => Compat::Xmbridge,
            CompatArg::Fivetran => Compat::Fivetran,
        }
    }
}

/// One progress bar per running stream.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for Bars {
    fn stream_started(&self, stream: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::no_length(),
        };
        let style = ProgressStyle::with_template(
            "{prefix:>28} {bar:30} {human_pos:>9}/{human_len:9} {per_sec:>12} {elapsed:>4}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = self
            .multi
            .add(bar.with_style(style).with_prefix(stream.to_string()));
        self.bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream.to_string(), bar);
    }
    fn advanced(&self, stream: &str, n: u64) {
        if let Some(b) = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
        {
            b.inc(n);
        }
    }
    fn stream_finished(&self, stream: &str) {
        if let Some(b) = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream)
        {
            b.finish_and_clear();
        }
    }
}

/// Runs the engine with bars on a terminal, log lines otherwise.
pub async fn run_sync(
    client: &Client,
    dest: &mut dyn xmbridge_destinations::Destination,
    opts: &SyncOptions,
) -> Result<SyncSummary, xmbridge_sync::SyncError> {
    if std::io::stderr().is_terminal() {
        xmbridge_sync::sync(client, dest, opts, &Bars::new()).await
    } else {
        xmbridge_sync::sync(client, dest, opts, &LogProgress::new()).await
    }
}

pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    if args.commit_every == 0 || args.commit_rows == 0 {
        return Err(anyhow!(UsageError(
            "--commit-every and --commit-rows must be at least 1".into()
        )));
    }
    if args.parallel == 0 {
        return Err(anyhow!(UsageError("--parallel must be at least 1".into())));
    }
    let connected = super::connection::connect(&args.connection)?;
    let compat: Compat = args.compat.into();
    let mut dest = xmbridge_destinations::open(&args.destination, &args.schema, compat)
        .await
        .with_context(|| "cannot open the destination".to_string())?;
    let opts = SyncOptions {
        tables: args.tables.clone(),
        full: args.full,
        compat,
        survey_parallelism: args.parallel,
        reconcile: args.reconcile,
        commit_every: args.commit_every,
        commit_rows: args.commit_rows,
        reconcile_every: std::time::Duration::from_secs(args.reconcile_every_days * 86_400),
        ..SyncOptions::default()
    };
    println!(
        "syncing connection '{}' into {}",
        args.connection,
        dest.describe()
    );
    let summary = run_sync(&connected.client, dest.as_mut(), &opts).await?;
    print!("{summary}");
    println!();
    Ok(())
}
