//! The `xmbridge` command line: argument parsing, logging set-up and exit codes. Each command lives
//! in `cli/`; the work itself belongs to the library crates (`xmbridge-qualtrics`, `xmbridge-sim`, …).
//!
//! Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 75 another sync is writing the
//! destination (try again later).

mod allocator;
mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// xmbridge: an open, self-hosted Qualtrics integration engine.
///
/// It syncs Qualtrics data into your own database and runs workflows on survey responses. It ships
/// simulators of the APIs it talks to, so you can try everything offline.
#[derive(Parser, Debug)]
#[command(name = "xmbridge", version, propagate_version = true)]
#[command(after_help = "Examples:
  xmbridge demo                      # see the whole export round trip against a simulator
  xmbridge simulate --api-token mytoken --listen 127.0.0.1:8080
  xmbridge help simulate")]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "XMBRIDGE_LOG_FORMAT")]
    log_format: LogFormat,

    /// More log output: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// A PostgreSQL state store (postgres://USER@HOST:PORT/DATABASE) instead of
    /// XMBRIDGE_HOME/state.db, which several installations and servers may share
    /// (docs/state.md).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "XMBRIDGE_STATE",
        hide_env_values = true
    )]
    state: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole response export round trip against an in-process Qualtrics simulator.
    Demo(cli::demo::DemoArgs),
    /// Serve a simulated Qualtrics brand (REST API v3), Salesforce org or ServiceNow instance on loopback until stopped.
    Simulate(cli::simulate::SimulateArgs),
    /// Add, list, show, remove, authorize and test connections to Qualtrics accounts.
    Connection(cli::connection::ConnectionArgs),
    /// Sync a connection's Qualtrics data into SQLite or PostgreSQL, incrementally.
    Sync(cli::sync::SyncArgs),
    /// Measure sync speed and memory against a raw load of the same rows (`bench sync`).
    Bench(cli::bench::BenchArgs),
    /// Define workflows (trigger → condition → steps), list them, and dry-run them on a response.
    Workflow(cli::workflow::WorkflowArgs),
    /// Run one Qualtrics action (create a contact, send a distribution, look up …), JSON out;
    /// `action list` shows them all.
    Action(cli::action::ActionArgs),
    /// Link, list, share and unlink the Salesforce and ServiceNow accounts workflows run with.
    Account(cli::account::AccountArgs),
    /// Run xmbridge as a service: scheduled syncs, webhooks and delivery, the HTTP API and web UI.
    Serve(cli::serve::ServeArgs),
    /// Add, list and remove the users who sign in to `xmbridge serve`, and their API tokens.
    User(cli::user::UserArgs),
    /// The state store: `state migrate` brings its schema to this build's versions, `state
    /// copy` moves it into PostgreSQL.
    State(cli::state::StateArgs),
    /// The serving processes of this installation: `cluster status`.
    Cluster(cli::cluster::ClusterArgs),
    /// Upkeep of a `delta:PATH` destination's Delta Lake tables: `lake optimize` compacts small
    /// files, `lake vacuum --older-than 7d` deletes files no table version uses any more.
    Lake(cli::lake::LakeArgs),
}

fn init_logging(format: LogFormat, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // Sync progress is structured log lines when stderr is not a terminal.
        0 => "warn,xmbridge_sync::progress=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (never expected) is harmless, so its error is ignored.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    allocator::tune();
    // `action --help` lists every registered action, so its help text is built at run time.
    let command =
        Cli::command().mut_subcommand("action", |c| c.after_help(cli::action::help_text()));
    // Usage errors print themselves and exit with 2.
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::collect_when_idle)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        cli::state::choose(cli::state::postgres_state(cli.state)?);
        match cli.command {
            Command::Demo(args) => cli::demo::run(args).await,
            Command::Simulate(args) => cli::simulate::run(args).await,
            Command::Connection(args) => cli::connection::run(args).await,
            Command::Sync(args) => cli::sync::run(args).await,
            Command::Bench(args) => cli::bench::run(args).await,
            Command::Workflow(args) => cli::workflow::run(args).await,
            Command::Action(args) => cli::action::run(args).await,
            Command::Account(args) => cli::account::run(args).await,
            Command::Serve(args) => cli::serve::run(args).await,
            Command::User(args) => cli::user::run(args).await,
            Command::State(args) => cli::state::run(args).await,
            Command::Cluster(args) => cli::cluster::run(args).await,
            Command::Lake(args) => cli::lake::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let runtime_usage = e
                .downcast_ref::<xmbridge_runtime::RuntimeError>()
                .filter(|r| r.kind() == xmbridge_runtime::ErrorKind::Usage)
                .map(|r| r as &dyn std::fmt::Display);
            if let Some(usage) = e
                .downcast_ref::<cli::UsageError>()
                .map(|u| u as &dyn std::fmt::Display)
                .or(runtime_usage)
            {
                // Each of these says what was wrong and what to do; `--help` would add nothing.
                eprintln!("error: {usage}");
                return ExitCode::from(2);
            }
            if let Some(n) = e.downcast_ref::<cli::NotChecked>() {
                eprintln!("not checked: {n}");
                return ExitCode::from(cli::EXIT_NOT_CHECKED);
            }
            eprintln!("error: {}", error_chain(&e));
            // A destination URL or setting that cannot work is bad configuration (exit 2, as
            // the README promises), unlike one that cannot be reached now (exit 1).
            let bad_destination = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<xmbridge_destinations::DestError>(),
                    Some(
                        xmbridge_destinations::DestError::UnknownScheme { .. }
                            | xmbridge_destinations::DestError::Settings(_)
                            | xmbridge_destinations::DestError::UrlOption(_)
                    )
                )
            });
            if bad_destination {
                return ExitCode::from(2);
            }
            let busy = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<xmbridge_destinations::DestError>(),
                    Some(xmbridge_destinations::DestError::Busy { .. })
                ) || c
                    .downcast_ref::<xmbridge_runtime::RuntimeError>()
                    .is_some_and(xmbridge_runtime::RuntimeError::destination_busy)
            });
            if busy {
                return ExitCode::from(cli::EXIT_BUSY);
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the message already
/// includes (library errors often quote their source), so nothing is said twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let e = anyhow::anyhow!("inner failure").context("outer: inner failure");
        assert_eq!(error_chain(&e), "outer: inner failure");
        let e = anyhow::anyhow!("disk full").context("cannot write the state store");
        assert_eq!(error_chain(&e), "cannot write the state store: disk full");
    }
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
