//! `xmbridge demo`: start a Qualtrics simulator in-process and run the response export round trip
//! against it through the real client library, printing what happens.

use anyhow::Context;
use clap::Args;
use futures_util::TryStreamExt;
use std::time::{Duration, Instant};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, Error, ExportOptions, SurveySummary};
use xmbridge_sim::SimConfig;

#[derive(Args, Debug)]
#[command(after_help = "Example:
  xmbridge demo
  xmbridge demo --surveys 10 --responses 5000 --seed 42

Everything runs on this machine: a simulated Qualtrics brand on 127.0.0.1 and the same client code
that talks to real Qualtrics accounts.")]
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
}

struct SurveyResult {
    responses: u64,
    values: u64,
    bytes: u64,
    seconds: f64,
}

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

    let client = Client::builder(BaseUrl::parse(&handle.base_url)?, Auth::api_token(token))
        .request_timeout(Duration::from_secs(30))
        .build()?;

    let me = client.whoami().await.context("GET /whoami failed")?;
    println!(
        "connected as {} ({}), brand {}, data center {}",
        me.user_name.as_deref().unwrap_or("?"),
        me.user_id,
        me.brand_id.as_deref().unwrap_or("?"),
        me.datacenter.as_deref().unwrap_or("?"),
    );

    let surveys: Vec<SurveySummary> = client
        .surveys()
        .try_collect()
        .await
        .context("listing surveys failed")?;
    println!(
        "{} surveys; exporting their responses (json, zipped):",
        surveys.len()
    );

    let mut total_responses = 0u64;
    let mut total_values = 0u64;
    for s in &surveys {
        let r = export_one(&client, s).await?;
        total_responses += r.responses;
        total_values += r.values;
        println!(
            "  {:<18} {:<40} {:>8} responses {:>10} values {:>8} KiB  {:.2} s",
            s.id,
            truncate(&s.name, 40),
            r.responses,
            r.values,
            r.bytes.div_ceil(1024),
            r.seconds
        );
    }

    println!(
        "\nsummary: {} surveys, {} responses, {} answer values, {} API calls, {:.2} s",
        surveys.len(),
        total_responses,
        total_values,
        client.api_calls(),
        started.elapsed().as_secs_f64()
    );
    handle.stop().await;
    println!(
        "\nwhat next:
  xmbridge simulate --listen 127.0.0.1:8080 --api-token mytoken   # keep a simulator running
  curl -H 'X-API-TOKEN: mytoken' http://127.0.0.1:8080/API/v3/surveys
  xmbridge simulate --help                                          # scale, faults, mutual TLS"
    );
    Ok(())
}

/// Start → poll → download → unzip → stream-parse, counting responses and answer values.
async fn export_one(client: &Client, survey: &SurveySummary) -> anyhow::Result<SurveyResult> {
    let t = Instant::now();
    let opts = ExportOptions {
        allow_continuation: true,
        poll_interval: Duration::from_millis(50),
        max_poll_interval: Duration::from_millis(500),
        max_wait: Duration::from_secs(120),
        ..ExportOptions::default()
    };
    let file = match client.export_responses(&survey.id, &opts).await {
        Ok(f) => f,
        Err(e)
            if e.status() == Some(404)
                && e.api()
                    .is_some_and(|a| a.error_message.contains("API call does not exist")) =>
        {
            anyhow::bail!(
                "this build's simulator does not serve response exports yet \
                 (POST /API/v3/surveys/{}/export-responses answered 404: {e})",
                survey.id
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("exporting survey {} failed", survey.id));
        }
    };
    let bytes = file.bytes;
    let (responses, values) = tokio::task::spawn_blocking(move || {
        let mut values = 0u64;
        let n = file.for_each_response(|r| {
            values += r
                .get("values")
                .and_then(|v| v.as_object())
                .map(|m| m.len() as u64)
                .unwrap_or(0);
        })?;
        Ok::<_, Error>((n, values))
    })
    .await
    .context("the export parser stopped unexpectedly")?
    .with_context(|| format!("reading the export of survey {} failed", survey.id))?;
    Ok(SurveyResult {
        responses,
        values,
        bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
