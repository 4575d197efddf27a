//! `bench cluster`: what one `xmbridge serve` does against several on one PostgreSQL state
//! store, in the same run — full syncs per minute (every connection's first load queued at
//! once) and webhook events per second (a ServiceNow record becomes a Qualtrics contact) — and
//! where the CPU time goes (the servers, the simulator process, PostgreSQL), since on a small
//! machine the nodes share the same cores.
//!
//! Each round starts from nothing: a fresh state database and destination database on the
//! given server, fresh homes, `xmbridge serve` child processes of this executable, and one
//! simulator process shared by the rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde_json::json;
use xmbridge_destinations::DestinationSettings;

use crate::error::{BenchError, Context, Result};
use crate::sync::{PgDatabase, SimProcess};

/// What to run.
#[derive(Clone, Debug)]
pub struct Load {
    /// Nodes of the second round (the first has one).
    pub nodes: usize,
    /// Connections, each a full sync into its own schema.
    pub connections: usize,
    /// Responses in each of the simulator's surveys.
    pub responses: u64,
    /// Webhook events.
    pub events: usize,
    /// Sync runs a node runs at once (`serve --max-syncs`).
    pub max_syncs: usize,
    /// Webhook POSTs in flight at once.
    pub senders: usize,
}

/// CPU seconds spent during a phase, by whom.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    /// The `xmbridge serve` processes.
    pub servers: f64,
    /// The simulator process.
    pub simulator: f64,
    /// Every PostgreSQL server process on this machine.
    pub postgres: f64,
}

impl Cpu {
    /// Everything measured.
    pub fn total(&self) -> f64 {
        self.servers + self.simulator + self.postgres
    }
}

/// One phase of a round.
#[derive(Clone, Debug)]
pub struct Phase {
    /// Syncs or events done.
    pub done: usize,
    /// From the first start to the last finish.
    pub elapsed: Duration,
    /// CPU seconds between two readings around the phase …
    pub cpu: Cpu,
    /// … which were this far apart.
    pub cpu_wall: Duration,
}

impl Phase {
    /// Cores kept busy on average.
    pub fn cores_busy(&self) -> f64 {
        self.cpu.total() / self.cpu_wall.as_secs_f64().max(1e-9)
    }
}

/// One round: `nodes` servers.
#[derive(Clone, Debug)]
pub struct Round {
    /// Servers sharing the state store.
    pub nodes: usize,
    /// The full syncs.
    pub syncs: Phase,
    /// The webhook events.
    pub events: Phase,
}

impl Round {
    /// Full syncs per minute.
    pub fn syncs_per_min(&self) -> f64 {
        self.syncs.done as f64 * 60.0 / self.syncs.elapsed.as_secs_f64().max(1e-9)
    }

    /// Webhook events delivered per second.
    pub fn events_per_sec(&self) -> f64 {
        self.events.done as f64 / self.events.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Both rounds.
#[derive(Clone, Debug)]
pub struct Report {
    /// One node, then `Load::nodes`.
    pub rounds: Vec<Round>,
    /// CPUs this machine has.
    pub cpus: usize,
}

/// The bench's throwaway master key (the rounds' homes are deleted afterwards).
const MASTER_KEY: &str = "YmVuY2gtY2x1c3Rlci1tYXN0ZXIta2V5LTMyYnl0ZXM=";

/// How long a phase may take before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(900);

/// Runs a round with one node and one with `load.nodes`, against `postgres` (the bench creates
/// and drops its databases there), starting servers from `exe`.
pub async fn run(load: Load, exe: &Path, postgres: &DestinationSettings) -> Result<Report> {
    if load.nodes < 2 || load.connections == 0 || load.events == 0 || load.max_syncs == 0 {
        return Err(BenchError::Failed(
            "bench cluster needs --nodes 2 or more, and at least one connection, event and sync per node".into(),
        ));
    }
    let token = "bench-cluster-token";
    let sim = SimProcess::start_with(
        &[
            "--surveys",
            "1",
            "--responses",
            &load.responses.to_string(),
            "--contacts",
            "0",
        ],
        token,
    )
    .await?;
    let mut rounds = Vec::new();
    for nodes in [1, load.nodes] {
        eprintln!("bench cluster: {nodes} node(s) …");
        rounds.push(round(&load, nodes, exe, postgres, &sim, token).await?);
    }
    Ok(Report {
        rounds,
        cpus: std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1),
    })
}

/// A running `xmbridge serve`; stopped (SIGTERM, then SIGKILL) on drop.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The commands of one round's installations.
struct Homes {
    exe: PathBuf,
    dir: tempfile::TempDir,
    state_url: String,
}

impl Homes {
    fn home(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn command(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .arg("--state")
            .arg(&self.state_url)
            .env("XMBRIDGE_HOME", self.home(i))
            .env("XMBRIDGE_MASTER_KEY", MASTER_KEY)
            .env("XMBRIDGE_USER", "bench")
            .env_remove("XMBRIDGE_STATE")
            .stdin(Stdio::null());
        // The servers find the PostgreSQL password as this process did (PGPASSWORD or
        // ~/.pgpass, inherited): it never goes on their command line.
        c
    }

    async fn ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let mut c = self.command(i, args);
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .context("the command's thread panicked")?
            .with_context(|| format!("cannot run xmbridge {}", args.join(" ")))?;
        if !out.status.success() {
            return Err(BenchError::Failed(format!(
                "xmbridge {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn serve(&self, i: usize, args: &[&str]) -> Result<Node> {
        let mut c = self.command(i, args);
        c.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().context("cannot start xmbridge serve")?;
        let stdout = child.stdout.take();
        let first = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            if let Some(out) = stdout {
                let mut r = std::io::BufReader::new(out);
                r.read_line(&mut line)?;
                // Keep reading so the server never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
            }
            Ok::<_, std::io::Error>(line)
        })
        .await
        .context("the reader panicked")?
        .context("cannot read the server's first line")?;
        let mut node = Node {
            child,
            url: String::new(),
        };
        node.url = first
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| {
                BenchError::Failed(format!(
                    "xmbridge serve did not start: it printed {first:?}"
                ))
            })?
            .to_string();
        Ok(node)
    }
}

/// The webhook workflow of the events phase.
fn workflow(directory: &str) -> String {
    format!(
        r#"[[workflow]]
name = "bench"
owner = "bench"

[workflow.trigger]
type = "servicenow"
table = "incident"

[[workflow.step]]
name = "contact"
action = "create-contact"
[workflow.step.inputs]
directory_id = "'{directory}'"
email = "record.email"
extRef = "record.sys_id"
"#
    )
}

async fn round(
    load: &Load,
    nodes: usize,
    exe: &Path,
    postgres: &DestinationSettings,
    sim: &SimProcess,
    token: &str,
) -> Result<Round> {
    let state_db = PgDatabase::create(postgres).await?;
    let dest_db = PgDatabase::create(postgres).await?;
    let result = async {
        let homes = Homes {
            exe: exe.to_path_buf(),
            dir: tempfile::tempdir().context("cannot create a temporary directory")?,
            state_url: state_db.settings.url().to_string(),
        };
        let token_file = homes.dir.path().join("qualtrics.token");
        std::fs::write(&token_file, token).context("cannot write the token file")?;
        let token_file = token_file.display().to_string();
        for c in 0..load.connections {
            let name = format!("c{c}");
            homes
                .ok(
                    0,
                    &[
                        "connection", "add", "qualtrics", &name, "--no-test", "--url",
                        &sim.base_url, "--api-token-file", &token_file,
                    ],
                )
                .await?;
        }
        let directory = default_directory(&sim.base_url, token).await?;
        for i in 0..nodes {
            let dir = homes.home(i).join("workflows");
            std::fs::create_dir_all(&dir).context("cannot create the workflows directory")?;
            std::fs::write(dir.join("bench.toml"), workflow(&directory))
                .context("cannot write the workflow")?;
        }
        let secret = homes
            .ok(0, &["workflow", "endpoint", "bench", "--secret"])
            .await?
            .trim()
            .to_string();
        for i in 1..nodes {
            write_secret(&homes.home(i), &secret)?;
        }
        // Syncs: every connection's first load, queued at once by the first server that plans
        // (a daily schedule's first slot is now).
        for c in 0..load.connections {
            let name = format!("c{c}");
            let schema = format!("s{c}");
            homes
                .ok(
                    0,
                    &[
                        "connection", "set", &name, "--destination", dest_db.settings.url(),
                        "--schema", &schema, "--every", "24h",
                    ],
                )
                .await?;
        }
        let max_syncs = load.max_syncs.to_string();
        let serve_args = [
            "serve", "--listen", "127.0.0.1:0", "--qualtrics", "c0", "--max-syncs", &max_syncs,
            "--heartbeat-secs", "1", "--lease-secs", "10",
        ];
        let mut servers = Vec::new();
        for i in 0..nodes {
            servers.push(homes.serve(i, &serve_args).await?);
        }
        let state = xmbridge_destinations::postgres::connect(&state_db.settings)
            .await
            .context("cannot connect to the bench's state database")?
            .client;

        let pids = |servers: &[Node]| servers.iter().map(|s| s.child.id()).collect::<Vec<_>>();
        // Runs may have begun on the first server while the others started: their CPU before
        // this reading is not counted, nor is the wall time.
        let before = cpu_seconds(&pids(&servers), sim.pid());
        let read_from = Instant::now();
        let started = Instant::now();
        let syncs = loop {
            let row = state
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE status = 'succeeded'), \
                            COUNT(*) FILTER (WHERE status IN ('failed', 'cancelled')), \
                            MIN(started_at), MAX(finished_at) FROM svc_sync_runs",
                    &[],
                )
                .await?;
            let (ok, failed): (i64, i64) = (row.get(0), row.get(1));
            if failed > 0 {
                let e: Option<String> = state
                    .query_one(
                        "SELECT MIN(error_message) FROM svc_sync_runs WHERE status <> 'succeeded'",
                        &[],
                    )
                    .await?
                    .get(0);
                return Err(BenchError::Failed(format!(
                    "a sync run failed: {}",
                    e.unwrap_or_default()
                )));
            }
            if ok as usize == load.connections {
                let (first, last): (Option<i64>, Option<i64>) = (row.get(2), row.get(3));
                let ms = last.unwrap_or(0) - first.unwrap_or(0);
                break Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            }
            if started.elapsed() > PHASE_LIMIT {
                return Err(BenchError::Failed(format!(
                    "{ok} of {} syncs done after {} s",
                    load.connections,
                    PHASE_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let after = cpu_seconds(&pids(&servers), sim.pid());
        let sync_phase = Phase {
            done: load.connections,
            elapsed: syncs,
            cpu: after.minus(&before),
            cpu_wall: read_from.elapsed(),
        };

        // Events: POSTed round-robin to the nodes, done when every one is delivered.
        let before = cpu_seconds(&pids(&servers), sim.pid());
        let started = Instant::now();
        let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
        let http = reqwest::Client::new();
        let posted: Vec<Result<()>> = stream::iter(0..load.events)
            .map(|n| {
                let (http, url, secret) = (http.clone(), urls[n % urls.len()].clone(), &secret);
                async move {
                    let r = http
                        .post(format!("{url}/hooks/servicenow/bench"))
                        .header("X-Xmbridge-Secret", secret.as_str())
                        .json(&json!({"sys_id": format!("bench-{n:06}"),
                                      "sys_updated_on": "2026-12-04 10:00:00",
                                      "email": format!("b{n}@example.com")}))
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        return Err(BenchError::Failed(format!(
                            "a webhook POST was answered {}",
                            r.status()
                        )));
                    }
                    Ok(())
                }
            })
            .buffer_unordered(load.senders.max(1))
            .collect()
            .await;
        posted.into_iter().collect::<Result<Vec<()>>>()?;
        loop {
            let row = state
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE state = 'done'), COUNT(*) FILTER (WHERE state = 'dead') FROM wf_events",
                    &[],
                )
                .await?;
            let (done, dead): (i64, i64) = (row.get(0), row.get(1));
            if dead > 0 {
                return Err(BenchError::Failed(format!(
                    "{dead} webhook event(s) could not be delivered"
                )));
            }
            if done as usize == load.events {
                break;
            }
            if started.elapsed() > PHASE_LIMIT {
                return Err(BenchError::Failed(format!(
                    "{done} of {} events delivered after {} s",
                    load.events,
                    PHASE_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events = started.elapsed();
        let after = cpu_seconds(&pids(&servers), sim.pid());
        let event_phase = Phase {
            done: load.events,
            elapsed: events,
            cpu: after.minus(&before),
            cpu_wall: started.elapsed(),
        };
        drop(servers);
        Ok(Round {
            nodes,
            syncs: sync_phase,
            events: event_phase,
        })
    }
    .await;
    state_db.drop_database().await;
    dest_db.drop_database().await;
    result
}

/// The simulator's default directory, which the webhook workflow writes contacts into.
async fn default_directory(base_url: &str, token: &str) -> Result<String> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{base_url}/API/v3/directories"))
        .header("X-API-TOKEN", token)
        .send()
        .await?
        .json()
        .await?;
    v["result"]["elements"][0]["directoryId"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BenchError::Failed(format!("the simulator lists no directory: {v}")))
}

/// Gives another node's home the same ServiceNow hook secret (every node must accept the hook).
fn write_secret(to: &Path, secret: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let hooks = to.join("hooks");
    std::fs::create_dir_all(&hooks).context("cannot create the hooks directory")?;
    std::fs::set_permissions(&hooks, std::fs::Permissions::from_mode(0o700))
        .context("cannot restrict the hooks directory")?;
    let file = hooks.join("bench.secret");
    std::fs::write(&file, format!("{secret}\n")).context("cannot write the hook secret")?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .context("cannot restrict the hook secret")?;
    Ok(())
}

impl Cpu {
    fn minus(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            servers: self.servers - earlier.servers,
            simulator: self.simulator - earlier.simulator,
            postgres: self.postgres - earlier.postgres,
        }
    }
}

/// CPU seconds (user + system) of a process and its finished children, from `/proc`; 0 where
/// it cannot be read (not Linux, or the process is gone).
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces and ends with ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14–17 of the line: 11–14 after the state.
    let ticks: f64 = fields
        .get(11..15)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks()
}

/// Clock ticks per second (USER_HZ): 100 on every Linux this runs on.
fn clock_ticks() -> f64 {
    100.0
}

/// CPU seconds so far of the servers, the simulator and PostgreSQL. PostgreSQL's backends come
/// and go: every process named `postgres` is summed with its reaped children, so a backend
/// that ended between two readings is counted in the postmaster's share.
fn cpu_seconds(servers: &[u32], simulator: u32) -> Cpu {
    let postgres = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "postgres")
        })
        .map(process_cpu)
        .sum();
    Cpu {
        servers: servers.iter().map(|p| process_cpu(*p)).sum(),
        simulator: process_cpu(simulator),
        postgres,
    }
}
