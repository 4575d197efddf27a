//! One serving process: the scheduler, the webhook receiver (the same `/hooks/…` routes as
//! `workflow run`), the delivery workers, the HTTP API, the web UI and `/healthz`, `/readyz`,
//! `/metrics`, behind one listener.
//!
//! Order of start ([`Server::start`]): the listen address is checked (loopback unless
//! `allow_remote`) before anything is bound; the home's lock is taken (one server per home);
//! the workflow process is assembled (`xmbridge_runtime::workflow`, as `workflow run` does);
//! the listener is bound (TLS when configured); interrupted runs of a killed server are marked
//! failed and resumed. [`Server::run`] serves until the shutdown future resolves, then stops
//! accepting, lets running syncs stop at their next commit boundary (a grace period, then they
//! are dropped mid-write; rows and cursors commit together, so a resume continues cleanly) and
//! the delivery workers finish.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _, Seek as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use xmbridge_actions::Registry;
use xmbridge_runtime::workflow::{HookNotice, ProcessOptions, UnboundEdit, WorkflowProcess};
use xmbridge_server::receiver::{BindOptions, Limits, Receiver};
use xmbridge_vault::{Home, SecretString, Vault};
use xmbridge_workflows::catalog::Sources;
use xmbridge_workflows::hooks::SubscriptionChange;
use xmbridge_workflows::store::WorkflowStore;
use xmbridge_workflows::worker::RunSummary;

use crate::config::SyncConfigs;
use crate::error::{ErrorKind, Result, ServiceError};
use crate::metrics::{LATENCY_BOUNDS_MS, Metrics, Snapshot};
use crate::nodes::{NodeStart, Nodes};
use crate::runs::Runs;
use crate::scheduler::{Scheduler, SchedulerHandle, SchedulerOptions};
use crate::users::Users;

/// The state the HTTP API and `/metrics` share.
#[derive(Clone)]
pub struct AppState {
    /// `XMBRIDGE_HOME`.
    pub home: Home,
    /// Connections and sealed secrets.
    pub vault: Arc<Vault>,
    /// The workflow store (outbox, workflow state, linked accounts).
    pub store: Arc<WorkflowStore>,
    /// Users, tokens, sessions, the audit log.
    pub users: Users,
    /// Each connection's sync configuration and schedule.
    pub configs: SyncConfigs,
    /// The sync run history.
    pub runs: Runs,
    /// The installation's serving processes (`GET /api/v1/cluster`).
    pub nodes: Nodes,
    /// This process's node id.
    pub node_id: String,
    /// Queues, cancels and re-plans syncs.
    pub scheduler: SchedulerHandle,
    /// The process's counters.
    pub metrics: Arc<Metrics>,
    /// The URL people and webhooks reach the server at (no trailing `/`).
    pub public_url: String,
    /// The listener speaks TLS itself.
    pub tls: bool,
    /// A TLS reverse proxy is in front (cookies are `Secure`).
    pub behind_proxy: bool,
}

/// The certificate chain and private key files of `--tls-cert` / `--tls-key` (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How `xmbridge serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// The URL the server is reached at (default: the listener's own URL).
    pub public_url: Option<String>,
    /// Serve HTTPS with these files.
    pub tls: Option<TlsFiles>,
    /// A TLS reverse proxy is in front.
    pub behind_proxy: bool,
    /// Listening on an address other than loopback is allowed.
    pub allow_remote: bool,
    /// The delivery workers (`workers`, lease, retry delays, the Qualtrics connection).
    pub process: ProcessOptions,
    /// The scheduler (schedule scale, grace period).
    pub scheduler: SchedulerOptions,
    /// The workflow file of `sync-responses` workflows (as `sync --config`).
    pub workflow_config: Option<PathBuf>,
    /// How often this node records its heartbeat (`cluster status`).
    pub heartbeat_every: Duration,
    /// The PostgreSQL state store, where one session LISTENs for the events other servers store
    /// (their commits announce them), so that this server's idle workers wake at once; `None` on
    /// SQLite, where this server is the only one.
    pub event_wakeups: Option<xmbridge_destinations::DestinationSettings>,
}

/// Checks the listen address before anything is bound: another address than loopback needs
/// `allow_remote`. Returns the warning to show when such an address is served without TLS and
/// without a TLS proxy in front.
pub fn check_listen(opts: &ServeOptions) -> Result<Option<String>> {
    let ip = opts.listen.ip();
    if ip.is_loopback() {
        return Ok(None);
    }
    if !opts.allow_remote {
        return Err(ServiceError::refused(
            ErrorKind::Invalid,
            "listen_not_loopback",
            format!(
                "refusing to listen on {}: it is not a loopback address, so other machines could reach the server",
                opts.listen
            ),
            Some(
                "pass --allow-remote to listen there, with --tls-cert/--tls-key or behind a TLS reverse proxy (--behind-proxy); or listen on 127.0.0.1 (docs/serve.md)"
                    .into(),
            ),
        ));
    }
    if opts.tls.is_none() && !opts.behind_proxy {
        return Ok(Some(format!(
            "listening on {} without TLS: passwords, session cookies and API tokens cross the network in clear text; give --tls-cert and --tls-key, or put a TLS reverse proxy in front and pass --behind-proxy",
            opts.listen
        )));
    }
    Ok(None)
}

/// The exclusive lock of one home's server (`$XMBRIDGE_HOME/serve.lock`, `flock`), held for
/// the process's lifetime; the kernel releases it when the process ends, killed or not.
#[derive(Debug)]
pub struct HomeLock {
    _file: File,
    path: PathBuf,
}

impl HomeLock {
    /// Takes the lock of `home`, or says which process holds it.
    pub fn acquire(home: &Home) -> Result<HomeLock> {
        let path = home.root().join("serve.lock");
        let io = |context: String| move |source| ServiceError::Io { context, source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let pid = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(ServiceError::refused(
                    ErrorKind::Conflict,
                    "home_in_use",
                    format!(
                        "another `xmbridge serve`{pid} is already running on {}; one server per XMBRIDGE_HOME (several servers on one home are not supported)",
                        home.root().display()
                    ),
                    Some(
                        "stop the other server first (SIGTERM lets its syncs stop at a commit boundary), or start this one with another XMBRIDGE_HOME"
                            .into(),
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(format!("lock {}", path.display()))(e));
            }
        }
        // The holder's pid, for the message a second server shows.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(HomeLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the PEM certificate chain and key into a TLS server configuration (HTTP/1.1).
pub fn load_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let invalid = |message: String, fix: &str| {
        ServiceError::refused(ErrorKind::Invalid, "invalid_tls", message, Some(fix.into()))
    };
    let open = |p: &Path| {
        File::open(p).map(BufReader::new).map_err(|e| {
            invalid(
                format!("cannot read {}: {e}", p.display()),
                "give readable PEM files to --tls-cert and --tls-key",
            )
        })
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut open(&files.cert)?)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            invalid(
                format!("{}: not a PEM certificate file: {e}", files.cert.display()),
                "--tls-cert takes the certificate chain in PEM (-----BEGIN CERTIFICATE-----), leaf first",
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            format!("{} holds no certificate", files.cert.display()),
            "--tls-cert takes the certificate chain in PEM (-----BEGIN CERTIFICATE-----), leaf first",
        ));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key)?)
        .map_err(|e| {
            invalid(
                format!("{}: not a PEM key file: {e}", files.key.display()),
                "--tls-key takes the private key in PEM (PKCS#8, PKCS#1 or SEC1), unencrypted",
            )
        })?
        .ok_or_else(|| {
            invalid(
                format!("{} holds no private key", files.key.display()),
                "--tls-key takes the private key in PEM (PKCS#8, PKCS#1 or SEC1), unencrypted",
            )
        })?;
    // An explicit provider: never depend on which rustls provider features the graph enables.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}"), "report this as a bug"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(
                format!(
                    "{} and {} do not make a usable certificate: {e}",
                    files.cert.display(),
                    files.key.display()
                ),
                "give the key that belongs to the certificate",
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What was opened before the server starts: the home and its stores.
pub struct Opened {
    /// `XMBRIDGE_HOME`.
    pub home: Home,
    /// The vault.
    pub vault: Arc<Vault>,
    /// The workflow store.
    pub store: Arc<WorkflowStore>,
}

/// A started server: bound, its hooks set up, not yet serving.
pub struct Server {
    /// The home's lock (`None` on a PostgreSQL state store, which several servers share).
    _lock: Option<HomeLock>,
    process: Arc<WorkflowProcess>,
    receiver: Receiver,
    app: Router,
    scheduler: Scheduler,
    url: String,
    public_url: String,
    notices: Vec<HookNotice>,
    wanted: Arc<Vec<xmbridge_workflows::hooks::WantedSubscription>>,
    recovered: Vec<i64>,
    state: AppState,
    heartbeat_every: Duration,
    event_wakeups: Option<xmbridge_destinations::DestinationSettings>,
}

/// What [`Server::run`] did.
#[derive(Debug, Default)]
pub struct ServeSummary {
    /// The delivery workers' counts.
    pub delivered: RunSummary,
    /// Runs stopped by the shutdown (resumed by the next start).
    pub stopped_runs: usize,
}

impl Server {
    /// Checks the address, takes the home's lock, assembles the workflow process, binds the
    /// listener, sets up the hooks and recovers runs of a killed server. `lock` is the lock
    /// taken with [`HomeLock::acquire`] (before the stores were opened).
    pub async fn start(
        lock: Option<HomeLock>,
        opened: Opened,
        sources: &Sources,
        registry: Registry,
        opts: ServeOptions,
    ) -> Result<Server> {
        check_listen(&opts)?;
        let Opened { home, vault, store } = opened;
        let tls = opts.tls.as_ref().map(load_tls).transpose()?;
        // Every component in the vault's state store.
        let at = vault.location().clone();
        let users = Users::open_at(&at)?;
        let configs = SyncConfigs::open_at(&at, vault.clone())?;
        let node_id = node_id()?;
        let runs = Runs::open_at(&at)?.on_node(&node_id);
        let nodes = Nodes::open_at(&at)?;
        // Several servers may share a PostgreSQL store; a SQLite one has one server, under the
        // home's lock.
        let shared_store = matches!(at, xmbridge_state::db::StateLocation::Postgres(_));
        let metrics = Arc::new(Metrics::new());
        let process = WorkflowProcess::assemble(
            vault.clone(),
            store.clone(),
            sources,
            registry,
            opts.process.clone(),
        )?;
        let receiver = Receiver::bind_with(
            opts.listen,
            Limits::default(),
            BindOptions {
                allow_remote: opts.allow_remote,
                tls: tls.clone(),
            },
        )
        .await
        .map_err(|e| {
            ServiceError::refused(
                ErrorKind::Invalid,
                "cannot_listen",
                e.to_string(),
                Some("choose another --listen address or port".into()),
            )
        })?;
        let url = receiver.base_url();
        let public_url = opts
            .public_url
            .clone()
            .unwrap_or_else(|| url.clone())
            .trim_end_matches('/')
            .to_string();
        let setup = process.hooks(&public_url, &home.root().join("hooks"))?;
        let scheduler = Scheduler::new(
            crate::scheduler::Deps {
                home: home.clone(),
                vault: vault.clone(),
                configs: configs.clone(),
                runs: runs.clone(),
                nodes: shared_store.then(|| nodes.clone()),
                metrics: metrics.clone(),
                workflow_config: opts.workflow_config.clone(),
            },
            opts.scheduler.clone(),
        );
        let recovered = scheduler.recover()?;
        let node = NodeStart {
            id: node_id,
            host: crate::nodes::host_name(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            url: public_url.clone(),
            heartbeat_every: opts.heartbeat_every,
        };
        nodes.register(&node)?;
        let state = AppState {
            home,
            vault,
            store,
            users,
            configs,
            runs,
            nodes,
            node_id: node.id.clone(),
            scheduler: scheduler.handle(),
            metrics,
            public_url: public_url.clone(),
            tls: tls.is_some(),
            behind_proxy: opts.behind_proxy,
        };
        let app = process
            .receiver_router(setup.hooks)
            .merge(operations_router(state.clone()))
            .merge(product_routers(state.clone()));
        Ok(Server {
            _lock: lock,
            process: Arc::new(process),
            receiver,
            app,
            scheduler,
            url,
            public_url,
            notices: setup.notices,
            wanted: Arc::new(setup.wanted),
            recovered,
            state,
            heartbeat_every: opts.heartbeat_every,
            event_wakeups: opts.event_wakeups.clone(),
        })
    }

    /// The listener's URL (`http://HOST:PORT`, `https://` with TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL the server is reached at.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// What the hooks' set-up wants the operator to know.
    pub fn notices(&self) -> &[HookNotice] {
        &self.notices
    }

    /// Workflows whose credential binding an edit dropped.
    pub fn unbound(&self) -> &[UnboundEdit] {
        &self.process.unbound
    }

    /// Runs a killed server left running, now marked failed (a resume run is queued for each).
    pub fn recovered(&self) -> &[i64] {
        &self.recovered
    }

    /// The shared state (for a caller that adds routes).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Reconciles the Qualtrics event subscriptions with the hooks' URLs (`None`: no Qualtrics
    /// connection to register them with). Runs on its own, so serving does not wait for it.
    pub fn subscriptions(
        &self,
    ) -> impl Future<Output = Option<Vec<SubscriptionChange>>> + Send + 'static {
        let process = self.process.clone();
        let wanted = self.wanted.clone();
        async move { process.subscribe(&wanted).await }
    }

    /// The workflows whose Qualtrics subscriptions are wanted (for a message when there is no
    /// Qualtrics connection).
    pub fn wanted_subscriptions(&self) -> Vec<String> {
        self.wanted.iter().map(|w| w.workflow.clone()).collect()
    }

    /// Serves until `shutdown` resolves; then stops accepting, stops running syncs at their next
    /// commit boundary (dropping them after the grace period) and lets the delivery workers
    /// finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<ServeSummary> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Heartbeats go on through the shutdown's grace period, until the syncs have stopped:
        // a node stopping slowly is not reported as not responding.
        let (beats_done, beats_rx) = tokio::sync::watch::channel(false);
        let heartbeat = tokio::spawn(heartbeats(
            self.state.clone(),
            self.heartbeat_every,
            beats_rx,
        ));
        let wakeups = self.event_wakeups.clone().map(|settings| {
            tokio::spawn(event_wakeups(
                settings,
                self.process.outbox.wake_signal(),
                rx.clone(),
            ))
        });
        let mut sched_rx = rx.clone();
        let scheduler = tokio::spawn(self.scheduler.run(async move {
            let _ = sched_rx.wait_for(|v| *v).await;
        }));
        let mut serve_rx = rx;
        let signal = async move {
            shutdown.await;
            let _ = tx.send(true);
        };
        tokio::spawn(signal);
        let delivered = self
            .process
            .serve_app(self.receiver, self.app, async move {
                let _ = serve_rx.wait_for(|v| *v).await;
            })
            .await?;
        let stopped_runs = scheduler.await.map_err(|e| {
            ServiceError::refused(
                ErrorKind::Internal,
                "scheduler_failed",
                format!("the scheduler stopped: {e}"),
                None,
            )
        })?;
        let _ = beats_done.send(true);
        let _ = heartbeat.await;
        if let Some(w) = wakeups {
            let _ = w.await;
        }
        let nodes = self.state.nodes.clone();
        let id = self.state.node_id.clone();
        match tokio::task::spawn_blocking(move || nodes.stopped(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record that this node stopped"),
            Err(e) => tracing::warn!(error = %e, "cannot record that this node stopped"),
        }
        Ok(ServeSummary {
            delivered,
            stopped_runs,
        })
    }
}

/// A new node id: 16 random hex digits.
fn node_id() -> Result<String> {
    let mut bytes = [0u8; 8];
    xmbridge_auth::random_bytes(&mut bytes).map_err(|e| {
        ServiceError::refused(
            ErrorKind::Internal,
            "no_randomness",
            format!("cannot make a node id: {e}"),
            None,
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Records this node's heartbeat, with the syncs it runs, every `every` until `stop` turns true,
/// and divides each Qualtrics brand's rate limit among the nodes alive then (docs/scale-out.md).
/// A failed write is logged and retried at the next beat: the node keeps serving, and others
/// see it as not responding until a write succeeds.
async fn heartbeats(
    state: AppState,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let running = state.scheduler.running();
        let (nodes, id) = (state.nodes.clone(), state.node_id.clone());
        let beat = move || {
            nodes.heartbeat(&id, &running)?;
            nodes.list()
        };
        match tokio::task::spawn_blocking(beat).await {
            Ok(Ok(listed)) => {
                let alive = listed
                    .iter()
                    .filter(|n| n.state == crate::nodes::NodeState::Alive)
                    .count();
                xmbridge_runtime::connection::share_brand_limits(
                    u32::try_from(alive).unwrap_or(u32::MAX),
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record this node's heartbeat"),
            Err(e) => tracing::warn!(error = %e, "cannot record this node's heartbeat"),
        }
    }
}

/// Wakes this server's idle delivery workers whenever another server stores an event: on a
/// PostgreSQL state store each new event's commit announces it on
/// [`xmbridge_workflows::store::NEW_EVENTS_CHANNEL`], and one session here LISTENs, connecting
/// again after it lost the database. Until it is back, idle workers still look at every poll.
async fn event_wakeups(
    settings: xmbridge_destinations::DestinationSettings,
    wake: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use xmbridge_workflows::store::NEW_EVENTS_CHANNEL;
    let mut lost = false;
    loop {
        let listening = tokio::select! {
            l = xmbridge_destinations::postgres::listen(&settings, NEW_EVENTS_CHANNEL) => l,
            _ = stop.wait_for(|v| *v) => return,
        };
        match listening {
            Ok((_session, mut announced)) => {
                if lost {
                    tracing::info!("listening again for events other servers store");
                } else {
                    tracing::debug!("listening for events other servers store");
                }
                loop {
                    tokio::select! {
                        got = announced.recv() => match got {
                            Some(()) => {
                                wake.notify_waiters();
                                wake.notify_one();
                            }
                            None => break,
                        },
                        _ = stop.wait_for(|v| *v) => return,
                    }
                }
                tracing::warn!(
                    "lost the session that listens for events other servers store; connecting again in 5 s (idle delivery workers still look at every poll)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for events other servers store; trying again in 5 s (idle delivery workers still look at every poll)")
            }
        }
        lost = true;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

/// The routes of the API (`/api/v1/…`) and the web UI (`/`, `/ui/…`).
fn product_routers(state: AppState) -> Router {
    crate::api::router(state).merge(crate::ui::router())
}

/// `/readyz` and `/metrics` (`/healthz` comes with the receiver's routes: it also reports the
/// delivery workers).
fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Reads what `/metrics` shows from the state store (on a blocking thread: SQLite blocks).
async fn snapshot(state: &AppState) -> Result<Snapshot> {
    let (store, runs) = (state.store.clone(), state.runs.clone());
    let node = crate::metrics::NodeLabels {
        id: state.node_id.clone(),
        host: crate::nodes::host_name(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    tokio::task::spawn_blocking(move || -> Result<Snapshot> {
        let outbox = store
            .outbox_stats(LATENCY_BOUNDS_MS)
            .map_err(xmbridge_runtime::RuntimeError::from)?;
        let runs_by_status = runs.counts_by_status()?;
        Ok(Snapshot {
            runs_by_status,
            outbox,
            node: Some(node),
        })
    })
    .await
    .map_err(|e| {
        ServiceError::refused(
            ErrorKind::Internal,
            "internal",
            format!("a blocking task stopped: {e}"),
            None,
        )
    })?
}

/// 200 when the state store answers a real query (the outbox and the run history), 503 with
/// the reason otherwise.
async fn readyz(State(state): State<AppState>) -> Response {
    match snapshot(&state).await {
        Ok(_) => (StatusCode::OK, "ready: the state store answers\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the state store does not answer: {e}\n"),
            )
                .into_response()
        }
    }
}

/// The Prometheus text. Like every endpoint but the health checks, it needs an API token
/// (`Authorization: Bearer …`, Prometheus' `authorization` setting) or a session cookie.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "an API token is needed: Authorization: Bearer <token> (`xmbridge user token NAME`)\n",
        )
            .into_response()
    };
    let users = state.users.clone();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| SecretString::from(t.trim().to_string()));
    let cookie = session_cookie(&headers);
    let authorized = tokio::task::spawn_blocking(move || match (bearer, cookie) {
        (Some(token), _) => {
            use xmbridge_vault::ExposeSecret;
            users.authenticate_token(token.expose_secret()).is_ok()
        }
        (None, Some(cookie)) => {
            use xmbridge_vault::ExposeSecret;
            users.session(cookie.expose_secret()).is_ok()
        }
        (None, None) => false,
    })
    .await
    .unwrap_or(false);
    if !authorized {
        return unauthorized();
    }
    match snapshot(&state).await {
        Ok(snap) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.render(&snap),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be read");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the state store does not answer\n",
            )
                .into_response()
        }
    }
}

/// The `xmbridge_session` cookie, if sent.
fn session_cookie(headers: &HeaderMap) -> Option<SecretString> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "xmbridge_session")
        .map(|(_, v)| SecretString::from(v.to_string()))
}

/// How long running syncs get to reach their next commit boundary at shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(listen: &str, allow_remote: bool, tls: bool, behind_proxy: bool) -> ServeOptions {
        ServeOptions {
            listen: listen.parse().unwrap(),
            public_url: None,
            tls: tls.then(|| TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
            }),
            behind_proxy,
            allow_remote,
            process: ProcessOptions {
                workers: 1,
                lease: Duration::from_secs(60),
                retry: xmbridge_workflows::worker::DeliveryBackoff {
                    base: Duration::from_secs(1),
                    cap: Duration::from_secs(2),
                },
                qualtrics: None,
                acting_user: None,
                default_qualtrics_optional: true,
                poll: xmbridge_runtime::workflow::DEFAULT_POLL,
            },
            scheduler: SchedulerOptions::default(),
            workflow_config: None,
            heartbeat_every: crate::nodes::DEFAULT_HEARTBEAT,
            event_wakeups: None,
        }
    }

    #[test]
    fn only_loopback_without_the_flag_and_a_warning_without_tls() {
        assert!(
            check_listen(&opts("127.0.0.1:0", false, false, false))
                .unwrap()
                .is_none()
        );
        assert!(
            check_listen(&opts("[::1]:0", false, false, false))
                .unwrap()
                .is_none()
        );
        let e = check_listen(&opts("0.0.0.0:0", false, false, false)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.fix().unwrap().contains("--allow-remote"));
        let w = check_listen(&opts("0.0.0.0:0", true, false, false)).unwrap();
        assert!(w.unwrap().contains("without TLS"));
        assert!(
            check_listen(&opts("0.0.0.0:0", true, true, false))
                .unwrap()
                .is_none()
        );
        assert!(
            check_listen(&opts("0.0.0.0:0", true, false, true))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_second_lock_on_one_home_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        let first = HomeLock::acquire(&home).unwrap();
        let e = HomeLock::acquire(&home).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        HomeLock::acquire(&home).unwrap();
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; xmbridge_session=abc; b=2".parse().unwrap(),
        );
        use xmbridge_vault::ExposeSecret;
        assert_eq!(session_cookie(&h).unwrap().expose_secret(), "abc");
    }
}
