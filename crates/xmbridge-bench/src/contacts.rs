//! `bench contacts`: what a directory sync costs when nothing changed, against the fewest calls
//! the API allows, measured in the same run.
//!
//! In a child process (so peak RSS is its own), against the simulator in a process of its own
//! with N contacts in the default directory: a first load of the directory tables into a fresh
//! destination, then a second sync with nothing changed. The budget for that second sync is the
//! directory list, one contact-list page per 100 contacts of each directory and five calls per
//! directory (mailing lists, the edit search, samples, frequency rules and one spare), counted
//! from the directories the simulator lists. The simulator's own count (`/_sim/stats`) is taken
//! beside the client's, so the figure does not rest on the client alone. Both syncs carry the
//! same run time, so no periodic refresh falls between them: the refresh costs two calls per
//! contact once per `refresh_every` (default 7 days), spread evenly, on top.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use xmbridge_destinations::{Compat, DestinationSettings};
use xmbridge_qualtrics::{Auth, BaseUrl, Client};
use xmbridge_sim::SimConfig;
use xmbridge_sync::{NoProgress, SyncOptions, SyncSummary};

use crate::error::{BenchError, Context, Result};
use crate::sync::{PgDatabase, SimProcess, Target, peak_rss_mb, reset_peak_rss};

/// Calls per directory beyond its contact-list pages that a sync with nothing changed may make.
pub const CALLS_PER_DIRECTORY: u64 = 5;

/// What one child measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContactsMeasure {
    /// Contacts listed (all directories).
    pub contacts: u64,
    /// Directories listed.
    pub directories: u64,
    /// Seconds of the first load.
    pub first_s: f64,
    /// API calls of the first load.
    pub first_api_calls: u64,
    /// Contacts the first load read on their own.
    pub first_contacts_read: u64,
    /// Peak RSS of the child during the first load, MB.
    pub first_peak_rss_mb: f64,
    /// Seconds of the sync with nothing changed.
    pub idle_s: f64,
    /// Its API calls, as the client counted them.
    pub idle_api_calls: u64,
    /// … as the simulator counted them (`/_sim/stats` `calls_total`).
    pub idle_sim_calls: u64,
    /// … per stream group.
    pub idle_calls_by_stream: Vec<(String, u64)>,
    /// Contacts it read on their own.
    pub idle_contacts_read: u64,
    /// Peak RSS of the child during that sync, MB.
    pub idle_peak_rss_mb: f64,
    /// The fewest calls: directory list + contact pages + [`CALLS_PER_DIRECTORY`] each.
    pub budget_calls: u64,
}

async fn sim_stats(
    http: &reqwest::Client,
    sim: &SimProcess,
    method: reqwest::Method,
) -> Result<u64> {
    let v: serde_json::Value = http
        .request(method, format!("{}/_sim/stats", sim.base_url))
        .send()
        .await
        .context("cannot reach the simulator's /_sim/stats")?
        .json()
        .await
        .context("cannot read the simulator's /_sim/stats")?;
    // A missing count must not read as zero calls: the target check compares it.
    v["calls_total"].as_u64().ok_or_else(|| {
        BenchError::Failed(format!(
            "the simulator's /_sim/stats has no calls_total: {v}"
        ))
    })
}

/// One run, in this (child) process.
pub async fn child(contacts: u64, target: Target) -> Result<ContactsMeasure> {
    match target {
        Target::Sqlite => {
            let dir = tempfile::tempdir().context("cannot create a temp dir")?;
            let url = format!("sqlite:{}", dir.path().join("bench.db").display());
            measure(contacts, &DestinationSettings::from_parts(&url, None)?).await
        }
        Target::Delta => {
            let dir = tempfile::tempdir().context("cannot create a temp dir")?;
            let url = format!("delta:{}", dir.path().join("lake").display());
            measure(contacts, &DestinationSettings::from_parts(&url, None)?).await
        }
        Target::Postgres(server) => {
            let db = PgDatabase::create(&server).await?;
            let result = measure(contacts, &db.settings).await;
            db.drop_database().await;
            result
        }
    }
}

async fn measure(contacts: u64, settings: &DestinationSettings) -> Result<ContactsMeasure> {
    let token = SimConfig::default().admin_token();
    let n = contacts.to_string();
    let sim = SimProcess::start_with(
        &["--surveys", "1", "--responses", "1", "--contacts", &n],
        &token,
    )
    .await?;
    let client = Client::builder(BaseUrl::parse(&sim.base_url)?, Auth::api_token(token))
        .request_timeout(Duration::from_secs(600))
        .no_rate_limit()
        .build()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;
    let mut dest = xmbridge_destinations::open(settings, "qualtrics", Compat::Xmbridge, None)
        .await
        .context("cannot open the destination")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let opts = SyncOptions {
        // The whole directories group.
        tables: Some(vec!["directory_contact".into()]),
        // Both syncs at the same run time: no contact's periodic refresh falls between them
        // (that cost is its own figure: every contact once per interval, spread evenly).
        synced_at_ms: Some(now_ms),
        ..SyncOptions::default()
    };
    let timed = |s: &SyncSummary| (s.api_calls, s.contacts_read, s.contacts_listed);

    let started = Instant::now();
    let first = xmbridge_sync::sync(&client, dest.as_mut(), &opts, &NoProgress).await?;
    let first_s = started.elapsed().as_secs_f64();
    let first_peak_rss_mb = peak_rss_mb();
    let (first_api_calls, first_contacts_read, listed) = timed(&first);

    // The budget, from what the simulator lists (outside the measured sync).
    let dirs: Vec<serde_json::Value> = {
        use futures_util::TryStreamExt;
        client
            .paginate(client.url(&["directories"]))
            .try_collect()
            .await?
    };
    let pages: u64 = dirs
        .iter()
        .map(|d| d["contactCount"].as_u64().unwrap_or(0).div_ceil(100).max(1))
        .sum();
    let budget_calls = 1 + pages + CALLS_PER_DIRECTORY * dirs.len() as u64;

    sim_stats(&http, &sim, reqwest::Method::DELETE).await?;
    reset_peak_rss();
    let started = Instant::now();
    let idle = xmbridge_sync::sync(&client, dest.as_mut(), &opts, &NoProgress).await?;
    let idle_s = started.elapsed().as_secs_f64();
    let idle_peak_rss_mb = peak_rss_mb();
    let idle_sim_calls = sim_stats(&http, &sim, reqwest::Method::GET).await?;
    if idle.contacts_listed != listed {
        return Err(BenchError::Failed(format!(
            "the second sync listed {} contacts, the first {listed}: the simulator changed",
            idle.contacts_listed
        )));
    }
    Ok(ContactsMeasure {
        contacts: listed,
        directories: dirs.len() as u64,
        first_s,
        first_api_calls,
        first_contacts_read,
        first_peak_rss_mb,
        idle_s,
        idle_api_calls: idle.api_calls,
        idle_sim_calls,
        idle_calls_by_stream: idle.api_calls_by_stream.clone(),
        idle_contacts_read: idle.contacts_read,
        idle_peak_rss_mb,
        budget_calls,
    })
}
