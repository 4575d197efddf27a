//! `bench sync`: a response sync into a fresh destination, timed against a raw load of the same
//! rows measured in the same run.
//!
//! For each destination the caller runs a child process ([`spawn_child`]), so peak RSS
//! (`VmHWM`) is per destination. The child ([`child`]) starts the simulator as a process of its
//! own (one survey, N responses; its memory is not the sync's), syncs the response tables into a
//! fresh destination (its own PostgreSQL database, or a SQLite file in a temp dir), reads the
//! peak RSS, then reads the synced rows back into memory and times the baseline: binary `COPY`
//! (PostgreSQL) or a bare prepared-insert loop in one transaction (SQLite) into empty tables of
//! the same shape. It returns one [`Measure`], which the child prints as one JSON line.

use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::time::{Duration, Instant};
use xmbridge_destinations::delta::arrow::array::{Array, StringArray};
use xmbridge_destinations::{Compat, DestinationSettings};
use xmbridge_qualtrics::{Auth, BaseUrl, Client};
use xmbridge_sim::SimConfig;
use xmbridge_sync::{NoProgress, SyncOptions};

use crate::error::{BenchError, Context, Result};

/// The tables the response stream writes; the baseline loads the same rows into copies of them.
const TABLES: [&str; 3] = [
    "survey_response",
    "question_response",
    "survey_embedded_data",
];

/// Targets from issue 4: the ratio baseline/sync at least this.
pub const TARGET_RATIO: f64 = 0.7;
/// Target from issue 14: the ratio limit/(sync − export wait) at least this.
pub const TARGET_LIMIT_RATIO: f64 = 0.85;
/// … and for an incremental sync (issue 14 item 3: at most 2× its limit).
pub const TARGET_INCREMENTAL_LIMIT_RATIO: f64 = 0.5;
/// … and peak RSS below this many MB.
pub const TARGET_RSS_MB: f64 = 250.0;

/// The simulated survey.
#[derive(Copy, Clone, Debug)]
pub struct SurveySize {
    /// Responses in the simulated survey.
    pub responses: u64,
    /// Questions in the simulated survey.
    pub questions: usize,
}

/// What one run times.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The first load of N responses into an empty destination.
    FirstLoad,
    /// After a first load of N responses, 1 % new and 0.5 % edited responses in the simulator:
    /// the second sync, against loading just the changed rows.
    Incremental,
}

/// New responses an incremental run adds: 1 % of `n`, at least 1.
pub fn new_responses(n: u64) -> u64 {
    (n / 100).max(1)
}

/// Responses an incremental run edits: 0.5 % of `n`, at least 1.
pub fn edited_responses(n: u64) -> u64 {
    (n / 200).max(1)
}

/// Where one child syncs to.
pub enum Target {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A database of its own, created and dropped on this PostgreSQL server.
    Postgres(DestinationSettings),
    /// A `delta:` directory in a temp dir.
    Delta,
}

/// What one child measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measure {
    /// Responses the sync wrote.
    pub responses: u64,
    /// question_response rows written by the sync.
    pub rows: u64,
    /// Seconds the sync took.
    pub sync_s: f64,
    /// Rows the baseline loaded (all response tables).
    pub baseline_rows: u64,
    /// Seconds the baseline took.
    pub baseline_s: f64,
    /// Peak resident set size of the child after the sync, in MB.
    pub peak_rss_mb: f64,
    /// Qualtrics API calls the sync made.
    pub api_calls: u64,
    /// Seconds of the sync spent from each export request until its file was ready: the API
    /// side's share, which no client can shorten.
    #[serde(default)]
    pub export_s: f64,
    /// Rows the limit load wrote (all response tables).
    #[serde(default)]
    pub limit_rows: u64,
    /// Seconds of the fastest correct load of the same rows to the same end state: into empty
    /// tables without indexes, then the same key and indexes built.
    #[serde(default)]
    pub limit_s: f64,
    /// Incremental runs: the responses the second sync wrote (new and edited).
    #[serde(default)]
    pub changed_responses: Option<u64>,
    /// Incremental runs: seconds of the (untimed by the ratios) first load.
    #[serde(default)]
    pub first_load_s: Option<f64>,
    /// Incremental runs: the peak RSS of the first load, in MB (`peak_rss_mb` is the second
    /// sync's, counted afresh).
    #[serde(default)]
    pub first_load_peak_rss_mb: Option<f64>,
    /// PostgreSQL: whether the server wrote a checkpoint before each timed phase (the sync, the
    /// baseline, the limit), so that none paid for the dirty pages and WAL of the one before.
    /// `false` when the role may not run `CHECKPOINT` (superuser or `pg_checkpoint`): the
    /// figures then move more between runs. `None` for SQLite.
    #[serde(default)]
    pub checkpointed: Option<bool>,
    /// CPU seconds (user and system, every thread) this process spent in the timed sync: the
    /// client's work (download, unzip, parse, flatten, encode), without the simulator (a
    /// process of its own) or the database server. Steadier between runs than the wall times,
    /// which move with what the server and the disk are doing. `None` where /proc is missing.
    #[serde(default)]
    pub client_cpu_s: Option<f64>,
}

impl Measure {
    /// Baseline seconds / sync seconds: 1.0 means the sync is as fast as the raw load.
    pub fn ratio(&self) -> f64 {
        if self.sync_s > 0.0 {
            self.baseline_s / self.sync_s
        } else {
            0.0
        }
    }

    /// Limit seconds / the sync's own seconds (its time less the export wait): 1.0 means the
    /// sync's download, parse and load run at the physical limit of the destination.
    pub fn limit_ratio(&self) -> f64 {
        let own = self.sync_s - self.export_s;
        if own > 0.0 { self.limit_s / own } else { 0.0 }
    }
}

/// Runs one destination in a child process of this executable (the caller's `argv` puts it in
/// its child mode, which prints the [`Measure`] as its last JSON line), so that its peak RSS is
/// its own. `name` names the destination in errors.
pub async fn spawn_child<M: serde::de::DeserializeOwned>(
    argv: Vec<OsString>,
    name: &str,
) -> Result<M> {
    let exe = std::env::current_exe().context("cannot find the xmbridge executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    // tokio's process support is not compiled in; a blocking thread waits instead.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .context("the bench child waiter panicked")?
        .context("cannot start the bench child process")?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "the {name} bench failed ({})",
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| BenchError::Failed(format!("the {name} bench printed no result")))?;
    serde_json::from_str(line)
        .with_context(|| format!("the {name} bench printed an unreadable result"))
}

/// Peak resident set size of this process in MB (`VmHWM`; 0 where /proc is missing).
pub(crate) fn peak_rss_mb() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0.0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds (user and system, all threads, exited ones included) this process has used so
/// far, from `/proc/self/stat`; `None` where it cannot be read. Its clock ticks are USER_HZ,
/// which Linux fixes at 100 for user space on every architecture it runs on.
pub(crate) fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Starts the peak-RSS count afresh (Linux: `5` into `/proc/self/clear_refs`), so that an
/// incremental run's figure is its second sync's, not the first load's. Where that is not
/// possible the figure stays the whole process's, which is never lower.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One destination, in this (child) process: sync, peak RSS, baseline and limit. In
/// [`Mode::Incremental`] the sync timed is the second one, and the baseline and limit load only
/// the rows of the responses it changed.
pub async fn child(size: SurveySize, target: Target, mode: Mode) -> Result<Measure> {
    match target {
        Target::Sqlite => {
            let dir = tempfile::tempdir().context("cannot create a temp dir")?;
            let db = dir.path().join("bench.db");
            let url = format!("sqlite:{}", db.display());
            let settings = DestinationSettings::from_parts(&url, None)?;
            let reader = Reader::Sqlite(db.clone());
            let (mut m, changed) = measure_sync(size, &settings, mode, &reader, None).await?;
            let path = db.clone();
            let (baseline, limit) =
                tokio::task::spawn_blocking(move || sqlite_baselines(&path, changed.as_deref()))
                    .await
                    .context("the SQLite baseline panicked")??;
            (m.baseline_rows, m.baseline_s) = baseline;
            (m.limit_rows, m.limit_s) = limit;
            Ok(m)
        }
        Target::Delta => {
            let dir = tempfile::tempdir().context("cannot create a temp dir")?;
            let lake = dir.path().join("lake");
            let url = format!("delta:{}", lake.display());
            let settings = DestinationSettings::from_parts(&url, None)?;
            let reader = Reader::Delta(lake.clone());
            let (mut m, changed) = measure_sync(size, &settings, mode, &reader, None).await?;
            let (rows, secs) = delta_baseline(&lake, dir.path(), changed.as_deref()).await?;
            // Delta has no index to build: the raw write of the same rows is both.
            (m.baseline_rows, m.baseline_s) = (rows, secs);
            (m.limit_rows, m.limit_s) = (rows, secs);
            Ok(m)
        }
        Target::Postgres(server) => {
            let db = PgDatabase::create(&server).await?;
            let result = async {
                // The same password and TLS as the sync's session, so the ratios compare like
                // with like.
                let c = xmbridge_destinations::postgres::connect(&db.settings)
                    .await
                    .context("cannot connect to the bench database")?
                    .client;
                let reader = Reader::Postgres(db.settings.clone());
                let (mut m, changed) =
                    measure_sync(size, &db.settings, mode, &reader, Some(&c)).await?;
                let (baseline, limit, checkpointed) = pg_baselines(&c, changed.as_deref()).await?;
                (m.baseline_rows, m.baseline_s) = baseline;
                (m.limit_rows, m.limit_s) = limit;
                m.checkpointed = m
                    .checkpointed
                    .map(|before_sync| before_sync && checkpointed);
                Ok(m)
            }
            .await;
            // Dropped on success and on failure alike.
            db.drop_database().await;
            result
        }
    }
}

/// Reads response ids back from the destination the bench synced into.
enum Reader {
    Sqlite(std::path::PathBuf),
    Postgres(DestinationSettings),
    /// The `delta:` directory (tables under `qualtrics/`).
    Delta(std::path::PathBuf),
}

impl Reader {
    /// Up to `n` ids of synced responses.
    async fn response_ids(&self, n: u64) -> Result<Vec<String>> {
        match self {
            Reader::Sqlite(path) => {
                let c = rusqlite::Connection::open(path)?;
                let mut st =
                    c.prepare("SELECT id FROM qualtrics_survey_response ORDER BY id LIMIT ?1")?;
                let ids = st
                    .query_map([n as i64], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ids)
            }
            Reader::Delta(lake) => {
                // The `n` smallest ids, read one batch at a time and kept in a heap of `n`: this
                // runs in the measured process just before the timed sync, and the whole id
                // column of 1,000,000 responses as strings, sorted (about 66 MB), left the
                // allocator holding memory that counted in that sync's peak.
                let mut smallest = Smallest::new(usize::try_from(n).unwrap_or(usize::MAX));
                xmbridge_destinations::delta::scan_table(
                    &lake.join("qualtrics/survey_response"),
                    Some(&["id".to_string()]),
                    |b| {
                        let ids = b
                            .column_by_name("id")
                            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
                        ids.into_iter()
                            .flatten()
                            .flatten()
                            .for_each(|id| smallest.offer(id));
                        Ok(())
                    },
                )
                .await?;
                Ok(smallest.into_sorted())
            }
            Reader::Postgres(settings) => {
                let c = xmbridge_destinations::postgres::connect(settings)
                    .await
                    .context("cannot connect to the bench database")?
                    .client;
                let rows = c
                    .query(
                        "SELECT id FROM qualtrics.survey_response ORDER BY id LIMIT $1",
                        &[&(n as i64)],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            }
        }
    }
}

/// The `keep` smallest of the ids offered, holding no more than `keep` of them at a time.
struct Smallest {
    keep: usize,
    /// A max-heap: its top is the first to go when a smaller id comes.
    heap: BinaryHeap<String>,
}

impl Smallest {
    fn new(keep: usize) -> Smallest {
        Smallest {
            keep,
            heap: BinaryHeap::new(),
        }
    }

    fn offer(&mut self, id: &str) {
        if self.heap.len() < self.keep {
            self.heap.push(id.to_string());
        } else if self.heap.peek().is_some_and(|top| id < top.as_str()) {
            self.heap.pop();
            self.heap.push(id.to_string());
        }
    }

    /// In ascending order.
    fn into_sorted(self) -> Vec<String> {
        self.heap.into_sorted_vec()
    }
}

/// The simulator in a process of its own (`xmbridge simulate`), so that generating and zipping
/// the export does not count in the sync's peak RSS. Killed on drop.
pub(crate) struct SimProcess {
    child: std::process::Child,
    pub(crate) base_url: String,
}

impl SimProcess {
    async fn start(size: SurveySize, token: &str) -> Result<SimProcess> {
        SimProcess::start_with(
            &[
                "--surveys",
                "1",
                "--responses",
                &size.responses.to_string(),
                "--questions",
                &size.questions.to_string(),
            ],
            token,
        )
        .await
    }

    /// `xmbridge simulate` on a free loopback port with these arguments, without the simulated
    /// export wait and brand rate limit (nothing paces the bench but the work).
    pub(crate) async fn start_with(args: &[&str], token: &str) -> Result<SimProcess> {
        let exe = std::env::current_exe().context("cannot find the xmbridge executable")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--export-delay-ms",
            "0",
            "--rate-limit",
            "0",
        ])
        .args(args)
        .env("XMBRIDGE_SIM_API_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
        let mut child = cmd
            .spawn()
            .context("cannot start the Qualtrics simulator")?;
        let stdout = child.stdout.take();
        let first = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            if let Some(out) = stdout {
                std::io::BufReader::new(out).read_line(&mut line)?;
            }
            Ok::<_, std::io::Error>(line)
        })
        .await
        .context("the simulator reader panicked")?
        .context("cannot read the simulator's first line")?;
        let mut sim = SimProcess {
            child,
            base_url: String::new(),
        };
        sim.base_url = first
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| {
                BenchError::Failed(format!("the simulator did not start: it printed {first:?}"))
            })?
            .to_string();
        Ok(sim)
    }
}

impl SimProcess {
    /// The simulator's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the simulator, syncs the response tables into `settings` and times it; in
/// [`Mode::Incremental`], changes responses in the simulator after that first sync and times a
/// second one. Returns the measure and, for an incremental run, the ids of the changed responses.
/// With `pg` (PostgreSQL), a checkpoint is written right before the timed sync.
async fn measure_sync(
    size: SurveySize,
    settings: &DestinationSettings,
    mode: Mode,
    reader: &Reader,
    pg: Option<&tokio_postgres::Client>,
) -> Result<(Measure, Option<Vec<String>>)> {
    let token = SimConfig::default().admin_token();
    let sim = SimProcess::start(size, &token).await?;
    let client = Client::builder(
        BaseUrl::parse(&sim.base_url)?,
        Auth::api_token(token.clone()),
    )
    .request_timeout(Duration::from_secs(3600))
    .no_rate_limit()
    .build()?;
    // Each sync opens the destination and closes it when done, as `xmbridge sync` and every
    // run of `xmbridge serve` do: what one sync leaves behind is what the process keeps, not
    // an open destination's caches.
    let open = || async {
        xmbridge_destinations::open(settings, "qualtrics", Compat::Xmbridge, None)
            .await
            .context("cannot open the destination")
    };
    let opts = SyncOptions {
        tables: Some(TABLES.iter().map(|t| t.to_string()).collect()),
        ..SyncOptions::default()
    };
    let mut changed = None;
    let mut first_load = None;
    if mode == Mode::Incremental {
        let mut dest = open().await?;
        let started = Instant::now();
        xmbridge_sync::sync(&client, dest.as_mut(), &opts, &NoProgress).await?;
        drop(dest);
        first_load = Some((started.elapsed().as_secs_f64(), peak_rss_mb()));
        changed = Some(change_responses(&sim, &token, size.responses, reader).await?);
        reset_peak_rss();
    }
    let mut dest = open().await?;
    let checkpointed = match pg {
        Some(c) => Some(checkpoint(c).await),
        None => None,
    };
    let calls_before = client.api_calls();
    let wait_before = client.export_wait();
    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let summary = xmbridge_sync::sync(&client, dest.as_mut(), &opts, &NoProgress).await?;
    let sync_s = started.elapsed().as_secs_f64();
    let client_cpu_s = cpu_before
        .zip(process_cpu_s())
        .map(|(before, after)| after - before);
    drop(dest);
    drop(sim);
    let qr = summary.table("question_response");
    let measure = Measure {
        responses: summary.responses,
        rows: qr.inserted + qr.updated,
        sync_s,
        baseline_rows: 0,
        baseline_s: 0.0,
        // Read before the baseline loads every row into memory.
        peak_rss_mb: peak_rss_mb(),
        api_calls: client.api_calls() - calls_before,
        export_s: (client.export_wait() - wait_before).as_secs_f64(),
        limit_rows: 0,
        limit_s: 0.0,
        changed_responses: changed.as_ref().map(|_| summary.responses),
        first_load_s: first_load.map(|f| f.0),
        first_load_peak_rss_mb: first_load.map(|f| f.1),
        checkpointed,
        client_cpu_s,
    };
    Ok((measure, changed))
}

/// Adds 1 % new responses and edits 0.5 % of the synced ones (an embedded-data value, as the
/// API's update does) in the simulator; returns the ids of all of them.
async fn change_responses(
    sim: &SimProcess,
    token: &str,
    n: u64,
    reader: &Reader,
) -> Result<Vec<String>> {
    use futures_util::{StreamExt, TryStreamExt};
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;
    let api = |path: &str| format!("{}/API/v3/{path}", sim.base_url);
    let surveys: serde_json::Value = http
        .get(api("surveys"))
        .header("X-API-TOKEN", token)
        .send()
        .await
        .context("cannot list the simulator's surveys")?
        .json()
        .await
        .context("cannot read the simulator's survey list")?;
    let sid = surveys["result"]["elements"][0]["id"]
        .as_str()
        .ok_or_else(|| BenchError::Failed("the simulator lists no survey".into()))?
        .to_string();
    let mut ids = Vec::new();
    let mut left = new_responses(n);
    while left > 0 {
        let count = left.min(100_000);
        let made: serde_json::Value = http
            .post(format!("{}/_sim/surveys/{sid}/responses", sim.base_url))
            .json(&serde_json::json!({"count": count}))
            .send()
            .await
            .context("cannot add responses in the simulator")?
            .json()
            .await
            .context("cannot read the simulator's new responses")?;
        ids.extend(
            made["response_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string)),
        );
        left -= count;
    }
    let edited = reader.response_ids(edited_responses(n)).await?;
    futures_util::stream::iter(edited.iter().cloned())
        .map(|rid| {
            let http = http.clone();
            let url = api(&format!("responses/{rid}"));
            let body = serde_json::json!({"surveyId": sid, "embeddedData": {"bench_edit": "1"}});
            async move {
                let r = http
                    .put(url)
                    .header("X-API-TOKEN", token)
                    .json(&body)
                    .send()
                    .await
                    .context("cannot edit a response in the simulator")?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(BenchError::Failed(format!(
                        "editing response {rid} in the simulator: HTTP {}",
                        r.status()
                    )))
                }
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    ids.extend(edited);
    Ok(ids)
}

/// `WHERE` of one response table restricted to `ids` (incremental runs); empty for all rows.
fn only(table: &str, ids: Option<&[String]>) -> String {
    let Some(ids) = ids else {
        return String::new();
    };
    let column = if table == "survey_response" {
        "id"
    } else {
        "response_id"
    };
    let list: Vec<String> = ids
        .iter()
        .map(|id| format!("'{}'", id.replace('\'', "''")))
        .collect();
    format!(" WHERE {column} IN ({})", list.join(", "))
}

/// Cells of many rows in a few flat buffers (a `Vec` per cell would need gigabytes at full
/// scale). Each cell is a tag and bytes; chunks keep offsets in `u32`.
struct Cells {
    ncols: usize,
    chunks: Vec<Chunk>,
}

#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    ends: Vec<u32>,
    tags: Vec<u8>,
}

const CHUNK_ROWS: usize = 65_536;

impl Cells {
    fn new(ncols: usize) -> Cells {
        Cells {
            ncols,
            chunks: Vec::new(),
        }
    }

    /// Starts a row; a new chunk when the current one is full.
    fn start_row(&mut self) {
        let full = match self.chunks.last() {
            None => true,
            Some(c) => c.tags.len() >= CHUNK_ROWS * self.ncols || c.data.len() > (1 << 30),
        };
        if full {
            self.chunks.push(Chunk::default());
        }
    }

    fn push(&mut self, tag: u8, bytes: &[u8]) -> Result<()> {
        let c = self
            .chunks
            .last_mut()
            .ok_or_else(|| BenchError::Failed("push before start_row".into()))?;
        c.data.extend_from_slice(bytes);
        c.ends
            .push(u32::try_from(c.data.len()).context("a cell chunk over 4 GB")?);
        c.tags.push(tag);
        Ok(())
    }

    fn rows(&self) -> u64 {
        let cells: usize = self.chunks.iter().map(|c| c.tags.len()).sum();
        (cells / self.ncols.max(1)) as u64
    }

    /// Every row as (chunk, index of its first cell).
    fn each_row(&self) -> impl Iterator<Item = (&Chunk, usize)> {
        let n = self.ncols.max(1);
        self.chunks
            .iter()
            .flat_map(move |c| (0..c.tags.len() / n).map(move |r| (c, r * n)))
    }
}

impl Chunk {
    fn cell(&self, i: usize) -> (u8, &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (self.tags[i], &self.data[start..self.ends[i] as usize])
    }
}

// ---------------------------------------------------------------- SQLite baseline

/// Reads the synced response tables of the Delta directory `lake` into memory (only the rows of
/// `ids` when given), then times writing them as new Delta tables under `scratch`: one streamed
/// Parquet write and one commit per table. Returns (rows, seconds).
async fn delta_baseline(
    lake: &std::path::Path,
    scratch: &std::path::Path,
    ids: Option<&[String]>,
) -> Result<(u64, f64)> {
    let keep: Option<std::collections::HashSet<String>> = ids.map(|v| v.iter().cloned().collect());
    let mut loaded = Vec::new();
    for t in TABLES {
        let column = if t == "survey_response" {
            "id"
        } else {
            "response_id"
        };
        let only = keep.as_ref().map(|k| (column, k));
        let (schema, batches) =
            xmbridge_destinations::delta::read_table(&lake.join("qualtrics").join(t), only, None)
                .await?;
        loaded.push((t, schema, batches));
    }
    let started = Instant::now();
    let mut rows = 0;
    for (t, schema, batches) in &loaded {
        rows += xmbridge_destinations::delta::write_table(
            &scratch.join("baseline").join(t),
            schema,
            batches,
            xmbridge_destinations::delta::DEFAULT_TARGET_FILE_MB,
        )
        .await?;
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}

const SQL_NULL: u8 = 0;
const SQL_INT: u8 = 1;
const SQL_REAL: u8 = 2;
const SQL_TEXT: u8 = 3;
const SQL_BLOB: u8 = 4;

/// Reads the synced response tables into memory, then times a prepared-insert loop in one
/// transaction into a fresh file with the same tables, indexes and pragmas.
/// One synced SQLite table in memory: its name, its `CREATE TABLE`, its indexes and its rows.
struct SqliteTable {
    name: String,
    create: String,
    indexes: Vec<String>,
    cells: Cells,
}

/// Reads the synced response tables into memory, then times two loads of them into new files
/// with the sync's pragmas: the baseline (the same tables with their indexes, then a bare
/// prepared-insert loop in one transaction) and the limit (tables without indexes, the same
/// loop, then the same indexes built). Returns (rows, seconds) of each.
fn sqlite_baselines(
    synced: &std::path::Path,
    ids: Option<&[String]>,
) -> Result<((u64, f64), (u64, f64))> {
    use rusqlite::types::ValueRef;
    let src = rusqlite::Connection::open(synced)?;
    let mut loaded = Vec::new();
    for t in TABLES {
        let table = format!("qualtrics_{t}");
        let mut st = src.prepare(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = ?1 AND sql IS NOT NULL ORDER BY type = 'index'",
        )?;
        let ddl: Vec<(String, String)> = st
            .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(create) = ddl
            .iter()
            .find(|(k, _)| k == "table")
            .map(|(_, s)| s.clone())
        else {
            return Err(BenchError::Failed(format!(
                "the sync wrote no table {table}"
            )));
        };
        let indexes = ddl
            .into_iter()
            .filter(|(k, _)| k == "index")
            .map(|(_, s)| s)
            .collect();
        let mut st = src.prepare(&format!(
            "SELECT * FROM {}{}",
            xmbridge_destinations::quote_ident(&table),
            only(t, ids)
        ))?;
        let ncols = st.column_count();
        let mut cells = Cells::new(ncols);
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            cells.start_row();
            for i in 0..ncols {
                match row.get_ref(i)? {
                    ValueRef::Null => cells.push(SQL_NULL, &[])?,
                    ValueRef::Integer(v) => cells.push(SQL_INT, &v.to_le_bytes())?,
                    ValueRef::Real(v) => cells.push(SQL_REAL, &v.to_le_bytes())?,
                    ValueRef::Text(b) => cells.push(SQL_TEXT, b)?,
                    ValueRef::Blob(b) => cells.push(SQL_BLOB, b)?,
                }
            }
        }
        loaded.push(SqliteTable {
            name: table,
            create,
            indexes,
            cells,
        });
    }
    drop(src);
    let baseline = sqlite_load(synced, "baseline.db", &loaded, false)?;
    let limit = sqlite_load(synced, "limit.db", &loaded, true)?;
    Ok((baseline, limit))
}

/// Loads `loaded` into a new file `file` beside `synced` and removes it again; the clock covers
/// the inserts and, with `indexes_after`, building the indexes after them.
fn sqlite_load(
    synced: &std::path::Path,
    file: &str,
    loaded: &[SqliteTable],
    indexes_after: bool,
) -> Result<(u64, f64)> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    let target_path = synced.with_file_name(file);
    let dst = rusqlite::Connection::open(&target_path)?;
    let _mode: String = dst.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    dst.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-{}",
        xmbridge_destinations::sqlite::CACHE_KIB
    ))?;
    for t in loaded {
        dst.execute_batch(&t.create)?;
        if !indexes_after {
            for sql in &t.indexes {
                dst.execute_batch(sql)?;
            }
        }
    }
    let started = Instant::now();
    let tx = dst.unchecked_transaction()?;
    let mut total = 0u64;
    for t in loaded {
        let cells = &t.cells;
        let placeholders: Vec<String> = (1..=cells.ncols).map(|i| format!("?{i}")).collect();
        let mut st = tx.prepare(&format!(
            "INSERT INTO {} VALUES ({})",
            xmbridge_destinations::quote_ident(&t.name),
            placeholders.join(", ")
        ))?;
        for (chunk, first) in cells.each_row() {
            for j in 0..cells.ncols {
                let (tag, b) = chunk.cell(first + j);
                let v = match tag {
                    SQL_INT => ValueRef::Integer(i64::from_le_bytes(b.try_into()?)),
                    SQL_REAL => ValueRef::Real(f64::from_le_bytes(b.try_into()?)),
                    SQL_TEXT => ValueRef::Text(b),
                    SQL_BLOB => ValueRef::Blob(b),
                    _ => ValueRef::Null,
                };
                st.raw_bind_parameter(j + 1, ToSqlOutput::Borrowed(v))?;
            }
            st.raw_execute()?;
        }
        total += cells.rows();
    }
    if indexes_after {
        for t in loaded {
            for sql in &t.indexes {
                tx.execute_batch(sql)?;
            }
        }
    }
    tx.commit()?;
    let secs = started.elapsed().as_secs_f64();
    drop(dst);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = target_path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    Ok((total, secs))
}

// ---------------------------------------------------------------- PostgreSQL baseline

/// Any PostgreSQL value as its binary wire bytes (`None` = NULL).
struct RawIn<'a>(Option<&'a [u8]>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawIn<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawIn(Some(raw)))
    }
    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawIn(None))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// One synced PostgreSQL table in memory: its name, column names, its rows, and the
/// key and indexes the sync built on it.
struct PgTable {
    name: &'static str,
    columns: Vec<String>,
    cells: Cells,
    primary_key: Option<String>,
    indexes: Vec<String>,
}

/// Writes a checkpoint, so that the timed phase after it starts from the same server state as
/// the others (no dirty pages or WAL of the phase before to flush on its time). `false` when
/// the server refuses (the role is neither superuser nor `pg_checkpoint`): the output says so
/// next to the figures.
async fn checkpoint(c: &tokio_postgres::Client) -> bool {
    c.batch_execute("CHECKPOINT").await.is_ok()
}

/// Reads the synced response tables into memory, then times two binary `COPY` loads of them,
/// each after a checkpoint: the baseline (into tables `LIKE` the synced ones, indexes included)
/// and the limit (into tables without indexes or key, then the same key and indexes built).
/// Returns (rows, seconds) of each, and whether both checkpoints were written.
async fn pg_baselines(
    c: &tokio_postgres::Client,
    ids: Option<&[String]>,
) -> Result<((u64, f64), (u64, f64), bool)> {
    use futures_util::{StreamExt, pin_mut};
    let mut loaded = Vec::new();
    for t in TABLES {
        let st = c
            .prepare(&format!("SELECT * FROM qualtrics.{t}{}", only(t, ids)))
            .await?;
        let types: Vec<_> = st.columns().iter().map(|c| c.type_().clone()).collect();
        let columns: Vec<String> = st
            .columns()
            .iter()
            .map(|c| xmbridge_destinations::quote_ident(c.name()))
            .collect();
        let mut cells = Cells::new(types.len());
        let rows = c.query_raw(&st, std::iter::empty::<i32>()).await?;
        pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let row = row?;
            cells.start_row();
            for i in 0..types.len() {
                let v: RawIn = row.try_get(i)?;
                match v.0 {
                    None => cells.push(0, &[])?,
                    Some(b) => cells.push(1, b)?,
                }
            }
        }
        let primary_key = c
            .query_opt(
                &format!(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE conrelid = 'qualtrics.{t}'::regclass AND contype = 'p'"
                ),
                &[],
            )
            .await?
            .map(|r| r.get::<_, String>(0));
        let indexes = c
            .query(
                &format!(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'qualtrics' AND tablename = '{t}' \
                     AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'qualtrics.{t}'::regclass)"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        loaded.push(PgTable {
            name: t,
            columns,
            cells,
            primary_key,
            indexes,
        });
    }
    let before_baseline = checkpoint(c).await;
    let baseline = pg_load(c, "bench_baseline", &loaded, false).await?;
    let before_limit = checkpoint(c).await;
    let limit = pg_load(c, "bench_limit", &loaded, true).await?;
    Ok((baseline, limit, before_baseline && before_limit))
}

/// Loads `loaded` with binary `COPY` into new tables in `schema`; the clock covers the copies
/// and, with `indexes_after`, building the key and indexes after them (else the tables have
/// them from the start).
async fn pg_load(
    c: &tokio_postgres::Client,
    schema: &str,
    loaded: &[PgTable],
    indexes_after: bool,
) -> Result<(u64, f64)> {
    use bytes::BufMut;
    use futures_util::{SinkExt, pin_mut};
    use xmbridge_destinations::postgres::{COPY_BINARY_HEADER, COPY_CHUNK};
    c.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
    for t in loaded {
        let including = if indexes_after {
            "INCLUDING DEFAULTS"
        } else {
            "INCLUDING ALL"
        };
        c.batch_execute(&format!(
            "CREATE TABLE {schema}.{} (LIKE qualtrics.{} {including})",
            t.name, t.name
        ))
        .await?;
    }
    let started = Instant::now();
    let mut total = 0u64;
    for t in loaded {
        let sink = c
            .copy_in::<_, bytes::Bytes>(&format!(
                "COPY {schema}.{} ({}) FROM STDIN (FORMAT binary)",
                t.name,
                t.columns.join(", ")
            ))
            .await?;
        pin_mut!(sink);
        // The binary copy format, handed over in chunks of 1 MiB as the sync's own COPY does
        // (the 4 KiB hand-overs of tokio-postgres' writer cost the client a share of a core).
        let mut buf = bytes::BytesMut::with_capacity(COPY_CHUNK + (COPY_CHUNK >> 3));
        buf.put_slice(COPY_BINARY_HEADER);
        let cells = &t.cells;
        let fields = i16::try_from(cells.ncols)
            .map_err(|_| BenchError::Failed(format!("{}: too many columns for COPY", t.name)))?;
        for (chunk, first) in cells.each_row() {
            buf.put_i16(fields);
            for j in 0..cells.ncols {
                match chunk.cell(first + j) {
                    (0, _) => buf.put_i32(-1),
                    (_, b) => {
                        let len = i32::try_from(b.len()).map_err(|_| {
                            BenchError::Failed(format!("{}: a value over 2 GiB", t.name))
                        })?;
                        buf.put_i32(len);
                        buf.put_slice(b);
                    }
                }
            }
            if buf.len() >= COPY_CHUNK {
                sink.send(buf.split().freeze()).await?;
            }
        }
        buf.put_i16(-1);
        sink.send(buf.freeze()).await?;
        total += sink.as_mut().finish().await?;
    }
    if indexes_after {
        for t in loaded {
            if let Some(pk) = &t.primary_key {
                c.batch_execute(&format!("ALTER TABLE {schema}.{} ADD {pk}", t.name))
                    .await?;
            }
            for def in &t.indexes {
                let def = def.replace(" ON qualtrics.", &format!(" ON {schema}."));
                c.batch_execute(&def).await?;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((total, secs))
}

/// The bench's own database on the PostgreSQL server, dropped by [`PgDatabase::drop_database`].
pub(crate) struct PgDatabase {
    admin: tokio_postgres::Client,
    name: String,
    pub(crate) settings: DestinationSettings,
}

impl PgDatabase {
    pub(crate) async fn create(server: &DestinationSettings) -> Result<PgDatabase> {
        let admin = xmbridge_destinations::postgres::connect(server)
            .await
            .context("cannot connect to PostgreSQL (set --postgres or XMBRIDGE_TEST_PG)")?
            .client;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("xmbridge_bench_{}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let settings = server.with_database(&name);
        Ok(PgDatabase {
            admin,
            name,
            settings,
        })
    }

    pub(crate) async fn drop_database(self) {
        if let Err(e) = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
        {
            eprintln!("warning: cannot drop bench database {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip() {
        let mut c = Cells::new(2);
        for i in 0..100_000u32 {
            c.start_row();
            c.push(1, &i.to_le_bytes()).unwrap();
            c.push(0, &[]).unwrap();
        }
        assert_eq!(c.rows(), 100_000);
        let mut n = 0u32;
        for (chunk, first) in c.each_row() {
            assert_eq!(chunk.cell(first), (1, &n.to_le_bytes()[..]));
            assert_eq!(chunk.cell(first + 1).0, 0);
            n += 1;
        }
        assert_eq!(n, 100_000);
    }

    /// The same ids as sorting them all and keeping the first, duplicates and all, in any order
    /// of arrival.
    #[test]
    fn smallest_keeps_what_a_full_sort_keeps() {
        let ids: Vec<String> = (0..2_000u64)
            .map(|i| format!("R_{:05}", (i * 7_919) % 1_500))
            .collect();
        for keep in [0, 1, 5, 1_499, 1_500, 3_000] {
            let mut smallest = Smallest::new(keep);
            ids.iter().for_each(|id| smallest.offer(id));
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.truncate(keep);
            assert_eq!(smallest.into_sorted(), sorted, "keep {keep}");
        }
    }

    #[test]
    fn peak_rss_is_read() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb() > 0.0);
        }
    }
}
