//! `xmbridge serve`: xmbridge as a service — the scheduler, the webhook receiver, the delivery
//! workers, the HTTP API and the web UI in one process (`xmbridge_service::serve`). This file
//! parses the flags and prints; the first stdout line is `listening on URL`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use xmbridge_runtime::workflow::ProcessOptions;
use xmbridge_service::scheduler::SchedulerOptions;
use xmbridge_service::serve::{self, HomeLock, Opened, ServeOptions, Server, TlsFiles};
use xmbridge_service::{ErrorKind, ServiceError};
use xmbridge_workflows::catalog::Sources;
use xmbridge_workflows::worker::DeliveryBackoff;

use super::usage;
use super::workflow_run::{print_hook_notices, print_subscriptions, print_unbound};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge serve                                   # http://127.0.0.1:8080, this machine only
  xmbridge serve --listen 127.0.0.1:8080 --public-url https://xmbridge.example.org --behind-proxy
  xmbridge serve --listen 0.0.0.0:8443 --allow-remote --tls-cert cert.pem --tls-key key.pem

One server per XMBRIDGE_HOME. Webhooks arrive at {public-url}/hooks/… as with `workflow run`;
the API is under /api/v1, the web UI at /. GET /healthz (process and delivery workers),
/readyz (state store), /metrics (Prometheus; needs an API token). SIGTERM or Ctrl-C: running
syncs stop at their next commit boundary and resume at the next start. See docs/serve.md.")]
pub struct ServeArgs {
    /// Where to listen. Loopback unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The URL people and webhooks reach the server at (default: http(s)://{listen}).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Delivery workers.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM, unencrypted).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A TLS reverse proxy is in front: cookies are sent Secure, no warning for a remote listen
    /// address.
    #[arg(long)]
    pub behind_proxy: bool,
    /// Allow a listen address other than loopback (other machines can then reach the server).
    #[arg(long)]
    pub allow_remote: bool,
    /// The Qualtrics connection that receives events and enriches responses (default: the only
    /// Qualtrics connection).
    #[arg(long)]
    pub qualtrics: Option<String>,
    /// Seconds a delivery worker holds an event before others may take it over.
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// First delivery retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, default_value_t = 2000)]
    pub retry_base_ms: u64,
    /// Longest delivery retry delay in milliseconds.
    #[arg(long, default_value_t = 900_000)]
    pub retry_cap_ms: u64,
    /// The xmbridge.toml with `sync-responses` workflows (default: ./xmbridge.toml when it
    /// exists, plus ./workflows/ and $XMBRIDGE_HOME/workflows/).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds running syncs get at shutdown to reach their next commit boundary.
    #[arg(long, default_value_t = 20)]
    pub grace_secs: u64,
    /// Seconds between this node's heartbeats in the state store; `xmbridge cluster status`
    /// reports a node that missed three as not responding.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Sync runs this server executes at once; more wait in the queue, or run on another server
    /// sharing the state store.
    #[arg(long, default_value_t = xmbridge_service::scheduler::DEFAULT_MAX_RUNNING, value_name = "N")]
    pub max_syncs: usize,
    /// For tests: schedule intervals are divided by N (5m with 300 fires every second).
    #[arg(
        long,
        env = "XMBRIDGE_SCHEDULE_SCALE",
        default_value_t = 1,
        hide = true
    )]
    pub schedule_scale: u32,
    /// For tests: how long idle delivery workers wait before looking for due events again when
    /// nothing wakes them, in milliseconds.
    #[arg(
        long,
        env = "XMBRIDGE_DELIVERY_POLL_MS",
        default_value_t = 500,
        hide = true
    )]
    pub delivery_poll_ms: u64,
}

/// The service's error as the CLI reports it: its fix appended; an invalid input is a usage
/// error (exit 2).
fn service_error(e: ServiceError) -> anyhow::Error {
    let text = match e.fix() {
        Some(fix) => format!("{e} — fix: {fix}"),
        None => return anyhow::Error::new(e),
    };
    match e.kind() {
        ErrorKind::Invalid => usage(text),
        _ => anyhow::anyhow!(text),
    }
}

/// PostgreSQL state store connections a server keeps (a command keeps one).
const SERVE_STATE_CONNECTIONS: usize = 4;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.schedule_scale == 0 {
        return Err(usage("--schedule-scale must be at least 1"));
    }
    if args.heartbeat_secs == 0 {
        return Err(usage("--heartbeat-secs must be at least 1"));
    }
    if args.max_syncs == 0 {
        return Err(usage(
            "--max-syncs must be at least 1 (a server that runs no sync would leave every run queued)",
        ));
    }
    let opts = ServeOptions {
        listen: args.listen,
        public_url: args.public_url.clone(),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        behind_proxy: args.behind_proxy,
        allow_remote: args.allow_remote,
        process: ProcessOptions {
            workers: args.workers,
            lease: Duration::from_secs(args.lease_secs),
            retry: DeliveryBackoff {
                base: Duration::from_millis(args.retry_base_ms),
                cap: Duration::from_millis(args.retry_cap_ms),
            },
            qualtrics: args.qualtrics.clone(),
            // The server is not a person editing definitions.
            acting_user: None,
            default_qualtrics_optional: true,
            poll: Duration::from_millis(args.delivery_poll_ms),
        },
        scheduler: SchedulerOptions {
            scale: args.schedule_scale,
            max_running: args.max_syncs,
            grace: Duration::from_secs(args.grace_secs),
            ..SchedulerOptions::default()
        },
        workflow_config: args.config.clone(),
        heartbeat_every: Duration::from_secs(args.heartbeat_secs),
        event_wakeups: super::state::chosen()
            .map(super::state::settings)
            .transpose()?
            .map(|(settings, _)| settings),
    };
    // Refused before anything is opened or bound.
    if let Some(warning) = serve::check_listen(&opts).map_err(service_error)? {
        eprintln!("warning: {warning}");
    }
    if args.schedule_scale != 1 {
        eprintln!(
            "warning: schedule intervals are divided by {} (--schedule-scale / XMBRIDGE_SCHEDULE_SCALE, meant for tests)",
            args.schedule_scale
        );
    }
    let home = xmbridge_vault::Home::from_env()?;
    // Before the stores are opened: a second server changes nothing. A PostgreSQL state store
    // is shared by any number of servers instead (each registers as a node).
    let lock = match super::state::chosen() {
        Some(_) => None,
        None => Some(HomeLock::acquire(&home).map_err(service_error)?),
    };
    // Delivery workers, the scheduler, the API and heartbeats run statements at once.
    super::state::use_connections(SERVE_STATE_CONNECTIONS);
    let (home, vault, store) = super::workflow_run::open_store()?;
    if args.qualtrics.is_none() {
        let names = xmbridge_runtime::connection::qualtrics_connections(&vault)?;
        if names.len() > 1 {
            eprintln!(
                "warning: several Qualtrics connections ({}) and no --qualtrics: Qualtrics-triggered workflows get no event subscription and steps without `connection` cannot run until the server is started with --qualtrics NAME (syncs are not affected)",
                names.join(", ")
            );
        }
    }
    let sources = Sources::standard(args.config.clone(), Some(home.root()));
    let registry = xmbridge_runtime::workflow::registry();
    let server = Server::start(
        lock,
        Opened { home, vault, store },
        &sources,
        registry,
        opts,
    )
    .await
    .map_err(service_error)?;
    // Signal handlers before the first line: a SIGTERM right after it stops gracefully.
    let shutdown = super::shutdown_signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    print_unbound(server.unbound());
    print_hook_notices(server.notices(), server.public_url());
    for id in server.recovered() {
        println!(
            "sync run {id} was interrupted by a stopped server: marked failed (its committed batches are kept); a resume run is queued"
        );
    }
    let wanted = server.wanted_subscriptions();
    let subscriptions = server.subscriptions();
    tokio::spawn(async move { print_subscriptions(subscriptions.await, &wanted) });
    let summary = server.run(shutdown).await.map_err(service_error)?;
    println!(
        "stopped: delivered {} event(s), {} retried, {} dead; {} sync run(s) were running (each finished or stopped at a commit boundary; stopped ones resume at the next start)",
        summary.delivered.done,
        summary.delivered.retried,
        summary.delivered.dead,
        summary.stopped_runs
    );
    Ok(())
}
