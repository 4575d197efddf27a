//! `xmbridge demo`: start a Qualtrics simulator in-process, sync the whole account into a SQLite
//! file through the real client, sync engine and SQLite writer, and show what to query next.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xmbridge_destinations::Compat;
use xmbridge_qualtrics::{Auth, BaseUrl, Client};
use xmbridge_sim::SimConfig;
use xmbridge_sync::SyncOptions;

#[derive(Args, Debug)]
#[command(after_help = "Example:
  xmbridge demo
  xmbridge demo --surveys 10 --responses 5000 --seed 42 --database /tmp/demo.db

Everything runs on this machine: a simulated Qualtrics brand on 127.0.0.1, the same client and
sync code that talk to real Qualtrics accounts, and a SQLite file you can query afterwards.")]
pub struct DemoArgs {
    /// Seed of the simulated brand's data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,

    /// Number of surveys.
    #[arg(long, default_value_t = 5)]
    pub surveys: usize,

    /// Responses per survey.
    #[arg(long, default_value_t = 1000)]
    pub responses: u64,

    /// The SQLite file to sync into (replaced if it exists).
    #[arg(long, default_value = "xmbridge-demo.db")]
    pub database: PathBuf,
}

/// Net Promoter Score per survey, from the answer rows.
const NPS_QUERY: &str = "SELECT s.survey_name,
       COUNT(*) AS answers,
       ROUND(100.0 * (SUM(CAST(qr.value AS INTEGER) >= 9) - SUM(CAST(qr.value AS INTEGER) <= 6)) / COUNT(*), 1) AS nps
FROM qualtrics_question_response qr
JOIN qualtrics_survey_response r ON r.id = qr.response_id
JOIN qualtrics_question q ON q.id = qr.question_id AND q.survey_id = r.survey_id
JOIN qualtrics_survey s ON s.id = r.survey_id
WHERE q.selector = 'NPS' AND qr.question = q.data_export_tag
GROUP BY s.survey_name ORDER BY nps DESC;";

const MONTHLY_QUERY: &str = "SELECT substr(recorded_date, 1, 7) AS month, COUNT(*) AS responses,
       ROUND(AVG(duration_in_seconds) / 60.0, 1) AS avg_minutes
FROM qualtrics_survey_response GROUP BY month ORDER BY month;";

const SEGMENT_QUERY: &str = "SELECT e.key, e.value, COUNT(*) AS responses
FROM qualtrics_survey_embedded_data e
GROUP BY e.key, e.value ORDER BY responses DESC LIMIT 10;";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = SimConfig {
        seed: args.seed,
        surveys: args.surveys,
        responses: args.responses,
        export_delay_ms: 100,
        ..SimConfig::default()
    };
    let token = cfg.admin_token();
    let handle = xmbridge_sim::start_qualtrics(cfg, "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the Qualtrics simulator")?;
    println!(
        "xmbridge demo: a simulated Qualtrics brand at {} (seed {}, {} surveys × {} responses)",
        handle.base_url, args.seed, args.surveys, args.responses
    );

    // The simulator is on this machine: no need to pace calls for a remote brand's limit.
    let client = Client::builder(BaseUrl::parse(&handle.base_url)?, Auth::api_token(token))
        .request_timeout(Duration::from_secs(30))
        .no_rate_limit()
        .build()?;
    let me = client.whoami().await.context("GET /whoami failed")?;
    println!(
        "connected as {} ({}), brand {}, data center {}",
        me.user_name.as_deref().unwrap_or("?"),
        me.user_id,
        me.brand_id.as_deref().unwrap_or("?"),
        me.datacenter.as_deref().unwrap_or("?"),
    );

    // A fresh file each time: the simulator is re-seeded, so an old file's cursors mean nothing.
    for suffix in ["", "-wal", "-shm"] {
        let mut p = args.database.clone().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot replace {}", args.database.display()));
            }
        }
    }
    let url = format!("sqlite:{}", args.database.display());
    let settings = xmbridge_destinations::DestinationSettings::from_parts(&url, None)?;
    let mut dest = xmbridge_destinations::open(&settings, "qualtrics", Compat::Xmbridge, None)
        .await
        .with_context(|| format!("cannot create {}", args.database.display()))?;
    println!("syncing everything into {} …", dest.describe());
    let summary = super::sync::run_sync(&client, dest.as_mut(), &SyncOptions::default()).await?;
    drop(dest);
    handle.stop().await;
    print!("{summary}");
    println!();
    println!(
        "summary: {} surveys, {} responses, {:.1} s in all",
        args.surveys,
        summary.responses,
        started.elapsed().as_secs_f64()
    );

    let db = args.database.clone();
    let nps = tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<(String, i64, f64)>> {
        let c = rusqlite::Connection::open(&db)?;
        let mut st = c.prepare(NPS_QUERY)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    })
    .await?
    .context("the example query failed")?;
    println!(
        "
Net Promoter Score per survey (the first query below):"
    );
    for (name, answers, score) in nps {
        println!("  {score:>6.1}  {answers:>6} answers  {name}");
    }
    let db = args.database.display();
    println!(
        "
what next: query the file with `sqlite3 {db}`, for example:

{NPS_QUERY}

{MONTHLY_QUERY}

{SEGMENT_QUERY}

then connect a real account (or a running simulator) and sync it:
  xmbridge simulate --listen 127.0.0.1:8080 --api-token mytoken &
  xmbridge connection add qualtrics sim --url http://127.0.0.1:8080 --auth token   # token from a prompt
  xmbridge sync sim --destination sqlite:./qualtrics.db"
    );
    Ok(())
}
