//! `xmbridge sync CONNECTION --destination URL`: Qualtrics into SQLite, PostgreSQL or Delta Lake.
//!
//! Opens the stored connection and the destination, runs the sync engine with progress bars on
//! a terminal (structured log lines otherwise) and prints the summary. The engine, the streams and
//! the writers live in `xmbridge-sync` and `xmbridge-destinations`.
//!
//! Workflows triggered by `sync-responses` get one outbox event per new or changed response,
//! exactly once, through `xmbridge_runtime::trigger::WorkflowTrigger`; the destination and the
//! trigger are opened by `xmbridge_runtime::sync`.

use super::UsageError;
use anyhow::{Context as _, anyhow};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use xmbridge_destinations::{Compat, DestError, DestinationSettings, PgEnv};
use xmbridge_qualtrics::Client;
use xmbridge_runtime::sync::{open_destination, workflow_trigger};
use xmbridge_sync::{LogProgress, Observer, Progress, ResponseObserver, SyncOptions, SyncSummary};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge sync acme --destination sqlite:./qualtrics.db
  xmbridge sync acme --destination postgres://postgres@127.0.0.1:5432/warehouse --schema qualtrics
  xmbridge sync acme --destination 'postgres://loader@db.example.com/warehouse?sslmode=verify-full&sslrootcert=ca.pem' \\
      --password-file ~/.config/xmbridge/pg-password
  xmbridge sync acme --destination delta:/var/lib/xmbridge/lake   # Delta tables under lake/qualtrics/
  xmbridge sync acme --destination sqlite:./q.db --tables survey_response,question_response
  xmbridge sync acme --destination sqlite:./q.db --compat fivetran   # dbt_qualtrics runs unchanged
  xmbridge sync acme --destination sqlite:./q.db --reconcile         # drop responses deleted upstream
  xmbridge sync acme --destination sqlite:./q.db --config xmbridge.toml  # + sync-responses workflows
  xmbridge sync acme --destination sqlite:./q.db --json | jq .api_calls_by_stream

Runs are incremental: each table's cursor is committed with its rows, so a killed sync resumes
where it stopped. On SQLite the schema is a table prefix (qualtrics_survey, …); on Delta Lake a
directory (PATH/qualtrics/survey, …), each table a Delta table Spark, Trino and DuckDB read.
One sync at a time writes a destination (a SQLite file, a PostgreSQL schema, a Delta schema
directory): a second one stops
before it writes anything, with exit code 75, and says so.
The PostgreSQL password comes from --password-file, else PGPASSWORD, else ~/.pgpass (PGPASSFILE);
a password inside the URL still works but is visible to other local users in `ps`.
TLS: sslmode=disable|prefer (default)|require|verify-ca|verify-full and sslrootcert=FILE in the URL
(or PGSSLMODE / PGSSLROOTCERT).
Workflows with `trigger.type = \"sync-responses\"` get one event per response that is new or
changed since the last run (not for a survey's first load unless --trigger-on-first-load);
`xmbridge workflow run` delivers them.")]
pub struct SyncArgs {
    /// The connection to read (see `xmbridge connection list`).
    pub connection: String,
    /// Where to write: `sqlite:PATH`, `postgres://USER@HOST:PORT/DB` (TLS options:
    /// `?sslmode=verify-full&sslrootcert=CA.pem`) or `delta:DIR` (Delta Lake tables,
    /// `?target_file_mb=128`).
    #[arg(long)]
    pub destination: String,
    /// File whose first line is the PostgreSQL password (else PGPASSWORD, else ~/.pgpass); keeps
    /// it off the command line, which other local users can read.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Schema name (PostgreSQL schema; table prefix on SQLite; directory under a Delta DIR).
    #[arg(long, default_value = "qualtrics")]
    pub schema: String,
    /// Only these tables (comma separated, named as in docs/design/schema.md); a table brings its
    /// stream group.
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
    /// Responses (and directory contacts read) per destination transaction (smaller: less
    /// re-done after a kill; larger: faster).
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
    /// Directory contacts, users and distribution histories can only be read one by one: they
    /// are read when their list shows them new or changed, and otherwise at least once in this
    /// many days (what only that read shows lags by at most this; see docs/sync.md). 0 reads
    /// every one on every run.
    #[arg(long, default_value_t = 7, value_name = "DAYS")]
    pub refresh_every_days: u64,
    /// The workflow file (`xmbridge.toml`) whose `sync-responses` workflows get events (default:
    /// ./xmbridge.toml when it exists, plus ./workflows/ and $XMBRIDGE_HOME/workflows/).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Also trigger workflows for every response of a survey's first load and of a full
    /// re-export (--full, or an expired continuation token); by default only responses new or
    /// changed since the previous run do.
    #[arg(long)]
    pub trigger_on_first_load: bool,
    /// Do not look at workflows at all (no events are enqueued).
    #[arg(long, conflicts_with = "trigger_on_first_load")]
    pub no_triggers: bool,
    /// Print the run's summary as one JSON object on stdout (tables, API calls per stream,
    /// responses, duration) instead of the table; progress stays on stderr.
    #[arg(long)]
    pub json: bool,
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
        // A bar and "done/total" only where the total is known; otherwise the count alone (an
        // empty bar and "289/289" would say nothing true). Rates are whole units per second.
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::new(n),
                "{prefix:>28} {bar:30} {human_pos:>9}/{human_len:9} {rate:>10} {elapsed:>4}",
            ),
            None => (
                ProgressBar::no_length(),
                "{prefix:>28} {spinner:30} {human_pos:>9}           {rate:>10} {elapsed:>4}",
            ),
        };
        let style = ProgressStyle::with_template(template)
            .map(|s| {
                s.with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}/s", state.per_sec().round() as u64);
                    },
                )
            })
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

/// The destination settings of `--destination` and `--password-file` (and libpq's environment
/// variables); warnings (a password in the URL, an ignored pgpass file) go to stderr.
pub(crate) fn destination_settings(
    url: &str,
    password_file: Option<&Path>,
) -> anyhow::Result<DestinationSettings> {
    let resolved = DestinationSettings::resolve(url, password_file, &PgEnv::from_process())
        .map_err(dest_error)?;
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    Ok(resolved.settings)
}

fn dest_error(e: DestError) -> anyhow::Error {
    match e {
        DestError::Settings(m) => anyhow!(UsageError(m)),
        other => anyhow!(other),
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
    // A bad table selection is refused before the destination is opened (or created).
    xmbridge_sync::check_selection(&SyncOptions {
        tables: args.tables.clone(),
        ..SyncOptions::default()
    })
    .map_err(|e| anyhow!(UsageError(e.to_string())))?;
    let settings = destination_settings(&args.destination, args.password_file.as_deref())?;
    let connected = super::connection::connect(&args.connection)?;
    let compat: Compat = args.compat.into();
    // Unusable settings are usage errors (exit 2); another sync holding the destination exits
    // with [`super::EXIT_BUSY`] (see `main`).
    let mut dest = open_destination(&settings, &args.schema, compat, None).await?;
    let trigger = if args.no_triggers {
        None
    } else {
        let home = xmbridge_vault::Home::from_env()?;
        let state = super::state::location(&home)?;
        workflow_trigger(
            &home,
            &state,
            args.config.clone(),
            args.trigger_on_first_load,
        )?
        .map(Arc::new)
    };
    let opts = SyncOptions {
        tables: args.tables.clone(),
        full: args.full,
        compat,
        survey_parallelism: args.parallel,
        reconcile: args.reconcile,
        commit_every: args.commit_every,
        commit_rows: args.commit_rows,
        reconcile_every: std::time::Duration::from_secs(
            args.reconcile_every_days.saturating_mul(86_400),
        ),
        refresh_every: std::time::Duration::from_secs(
            args.refresh_every_days.saturating_mul(86_400),
        ),
        observer: trigger
            .clone()
            .map(|t| Observer(t as Arc<dyn ResponseObserver>)),
        ..SyncOptions::default()
    };
    let starting = format!(
        "syncing connection '{}' into {}",
        args.connection,
        dest.describe()
    );
    if args.json {
        eprintln!("{starting}");
    } else {
        println!("{starting}");
    }
    let synced = run_sync(&connected.client, dest.as_mut(), &opts).await;
    // Gives up what the destination holds (a Delta writer lease on S3) on success and failure.
    let closed = dest.close().await;
    let summary = synced.map_err(|e| with_cursor_fix(e, &args))?;
    closed.context("the sync finished, but closing the destination failed")?;
    let throttled = connected.client.throttled();
    if args.json {
        println!("{}", summary_json(&summary, throttled, trigger.as_deref()));
        return Ok(());
    }
    print!("{summary}");
    println!();
    // Each throttled call is retried quietly (DEBUG); the run says once how often it happened.
    if throttled > 0 {
        println!(
            "Qualtrics throttled {throttled} of {} calls (HTTP 429); each was retried after waiting (as long as Retry-After asked, else with backoff)",
            connected.client.api_calls()
        );
    }
    if let Some(t) = trigger {
        let counts = t.counts();
        println!(
            "workflow events: {} new, {} already in the outbox, {} responses of first loads not triggered",
            counts.new_events, counts.duplicates, counts.not_triggered
        );
    }
    Ok(())
}

/// `sync --json`: the run as one object.
fn summary_json(
    summary: &SyncSummary,
    throttled: u64,
    trigger: Option<&xmbridge_runtime::trigger::WorkflowTrigger>,
) -> serde_json::Value {
    let tables: serde_json::Map<String, serde_json::Value> = summary
        .tables
        .iter()
        .map(|(t, c)| {
            (
                t.clone(),
                serde_json::json!({"inserted": c.inserted, "updated": c.updated, "deleted": c.deleted}),
            )
        })
        .collect();
    let by_stream: serde_json::Map<String, serde_json::Value> = summary
        .api_calls_by_stream
        .iter()
        .map(|(s, n)| (s.clone(), serde_json::json!(n)))
        .collect();
    let skipped: Vec<serde_json::Value> = summary
        .skipped
        .iter()
        .map(|s| serde_json::json!({"table": s.table, "reason": s.reason}))
        .collect();
    let mut v = serde_json::json!({
        "tables": tables,
        "skipped": skipped,
        "reloaded": summary.reloaded.iter().map(|r| r.message(true)).collect::<Vec<_>>(),
        "responses": summary.responses,
        "surveys_exported": summary.surveys_exported,
        "surveys_reconciled": summary.surveys_reconciled,
        "definitions_read": summary.definitions_read,
        "contacts_listed": summary.contacts_listed,
        "contacts_read": summary.contacts_read,
        "api_calls": summary.api_calls,
        "api_calls_by_stream": by_stream,
        "throttled": throttled,
        "duration_s": (summary.duration.as_secs_f64() * 1000.0).round() / 1000.0,
    });
    if let Some(t) = trigger {
        let c = t.counts();
        v["workflow_events"] = serde_json::json!({
            "new": c.new_events, "already_in_outbox": c.duplicates,
            "first_load_not_triggered": c.not_triggered,
        });
    }
    v
}

/// The error; for an unreadable cursor, with the exact command that reloads its stream (which
/// ignores the cursor and writes a fresh one).
fn with_cursor_fix(e: xmbridge_sync::SyncError, args: &SyncArgs) -> anyhow::Error {
    let unreadable = matches!(
        &e,
        xmbridge_sync::SyncError::Destination { source, .. }
            if matches!(**source, xmbridge_destinations::DestError::UnreadableCursor { .. })
    );
    let (true, Some(table)) = (unreadable, e.table()) else {
        return e.into();
    };
    // Never echo a password: the command goes without it (give it as for this run).
    let without_password = url::Url::parse(&args.destination)
        .ok()
        .filter(|u| u.password().is_some())
        .and_then(|mut u| u.set_password(None).is_ok().then(|| u.to_string()));
    let (destination, password_note) = match without_password {
        Some(d) => (
            d,
            " (with the password given as for this run; it is left out here)",
        ),
        None => (args.destination.clone(), ""),
    };
    let mut cmd = vec![
        "xmbridge".to_string(),
        "sync".into(),
        shell_word(&args.connection),
        "--destination".into(),
        shell_word(&destination),
    ];
    if args.schema != "qualtrics" {
        cmd.extend(["--schema".into(), shell_word(&args.schema)]);
    }
    if matches!(args.compat, CompatArg::Fivetran) {
        cmd.extend(["--compat".into(), "fivetran".into()]);
    }
    cmd.extend(["--full".into(), "--tables".into(), table.to_string()]);
    anyhow!(
        "{e}. To fix it, run once: {}{password_note} — it reloads this table's stream from scratch and writes a fresh cursor; later runs are incremental again",
        cmd.join(" ")
    )
}

/// `s` as one word for a POSIX shell (quoted only when it needs to be).
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("sqlite:/tmp/q.db"), "sqlite:/tmp/q.db");
        assert_eq!(shell_word("sqlite:/my dir/q.db"), "'sqlite:/my dir/q.db'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
