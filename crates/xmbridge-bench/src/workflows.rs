//! `bench workflows`: events per second and latency from a webhook POST to the Salesforce upsert
//! it causes, through the real receiver, outbox (SQLite, committed before the 200) and delivery
//! workers, against the Salesforce simulator on loopback — and, in the same run, the same number
//! of direct upserts without the outbox as the baseline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use xmbridge_actions::salesforce::SalesforceConnection;
use xmbridge_actions::{Action, ActionContext, ActionError, ActionRequest, ActionSpec, Registry};
use xmbridge_salesforce::{ClientCredentials, SalesforceClient, TokenProvider};
use xmbridge_server::receiver::{Hook, Hooks, Limits, Receiver, SERVICENOW_SECRET_HEADER, router};
use xmbridge_workflows::definition::PlanError;
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::WorkflowStore;
use xmbridge_workflows::worker::{
    Connector, DeliveryBackoff, Engine, EngineConfig, Plan, RunMode, StepCall,
};

use crate::error::{BenchError, Context, Result};

/// What to send.
#[derive(Copy, Clone, Debug)]
pub struct Load {
    /// Webhook events to send (at least 1).
    pub events: usize,
    /// Delivery workers (the baseline runs as many upserts at a time).
    pub workers: usize,
    /// Webhook POSTs in flight at once.
    pub senders: usize,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Events sent.
    pub events: usize,
    /// From the first POST to the last upsert.
    pub outbox_elapsed: Duration,
    /// Events per second through the outbox.
    pub outbox_rate: f64,
    /// Latency from a POST to its upsert: median …
    pub latency_p50: Duration,
    /// … and 99th percentile.
    pub latency_p99: Duration,
    /// The direct upserts.
    pub base_elapsed: Duration,
    /// Direct upserts per second.
    pub base_rate: f64,
}

/// The benchmark's workflow: one `salesforce.upsert` of the posted record.
struct BenchPlan;

impl Plan for BenchPlan {
    fn name(&self) -> &str {
        "bench"
    }
    fn owner(&self) -> &str {
        "bench"
    }
    fn max_attempts(&self) -> u32 {
        8
    }
    fn step_names(&self) -> Vec<String> {
        vec!["upsert".into()]
    }
    fn matches(&self, _event: &Value, _steps: &Map<String, Value>) -> Result<bool, PlanError> {
        Ok(true)
    }
    fn render_step(
        &self,
        _index: usize,
        event: &Value,
        _steps: &Map<String, Value>,
    ) -> Result<Option<StepCall>, PlanError> {
        Ok(Some(StepCall {
            action: "salesforce.upsert".into(),
            account: None,
            inputs: upsert_inputs(event["record"]["sys_id"].as_str().unwrap_or_default()),
        }))
    }
}

fn upsert_inputs(key: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("object".into(), json!("Survey_Response__c"));
    m.insert("external_id_field".into(), json!("Response_Id__c"));
    m.insert("external_id".into(), json!(key));
    m.insert("fields".into(), json!({"Survey_Id__c": "SV_bench"}));
    m
}

struct BenchConnector(ActionContext);

impl Connector for BenchConnector {
    fn context<'a>(
        &'a self,
        _plan: &'a dyn Plan,
        _account: Option<&'a str>,
        _spec: &'a ActionSpec,
    ) -> BoxFuture<'a, Result<(ActionContext, Option<String>), ActionError>> {
        Box::pin(async move { Ok((self.0.clone(), None)) })
    }
    fn enrich<'a>(
        &'a self,
        _plan: &'a dyn Plan,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move { Ok(payload.clone()) })
    }
}

/// The real upsert, noting when each key's upsert finished.
struct Timed {
    inner: Arc<dyn Action>,
    done: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Action for Timed {
    fn spec(&self) -> &ActionSpec {
        self.inner.spec()
    }
    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            let key = request.inputs["external_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let out = self.inner.run(ctx, request).await?;
            self.done.lock().insert(key, Instant::now());
            Ok(out)
        })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the baseline, then the same number of events through receiver, outbox and workers.
pub async fn run(args: Load) -> Result<Report> {
    let n = args.events.max(1);
    let sf = xmbridge_sim::start_salesforce(
        xmbridge_sim::salesforce::SalesforceConfig {
            api_limit: 10_000_000,
            ..Default::default()
        },
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", sf.base_url))
        .await?
        .json()
        .await?;
    let field = |k: &str| {
        creds[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BenchError::Failed(format!("the simulator's credentials have no {k}")))
    };
    let http = reqwest::Client::new();
    let tokens = TokenProvider::client_credentials(
        http.clone(),
        ClientCredentials {
            token_url: sf.token_url(),
            client_id: field("client_id")?,
            client_secret: SecretString::from(field("client_secret")?),
        },
    );
    let ctx = ActionContext::new().with(SalesforceConnection {
        client: Arc::new(SalesforceClient::new(http.clone(), Arc::new(tokens))),
        account: "bench".into(),
    });
    let builtin = Registry::builtin();
    let upsert = builtin.find("salesforce.upsert")?.clone();
    let done = Arc::new(Mutex::new(HashMap::new()));
    let mut registry = Registry::new();
    registry.register(Timed {
        inner: upsert.clone(),
        done: done.clone(),
    });

    // Baseline: the same upserts straight to the simulator, `workers` at a time.
    let t0 = Instant::now();
    let results: Vec<Result<Value, ActionError>> = stream::iter(0..n)
        .map(|i| {
            let (upsert, ctx) = (upsert.clone(), ctx.clone());
            async move {
                upsert
                    .run(
                        &ctx,
                        ActionRequest {
                            inputs: upsert_inputs(&format!("base-{i}")),
                            delivery_key: None,
                        },
                    )
                    .await
            }
        })
        .buffer_unordered(args.workers.max(1))
        .collect()
        .await;
    let base_elapsed = t0.elapsed();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(BenchError::Failed(format!("baseline upsert failed: {e}")));
    }

    // Through the receiver, the outbox and the workers.
    let dir = tempfile::tempdir()?;
    let store = Arc::new(WorkflowStore::open(dir.path().join("state.db"))?);
    let outbox = Outbox::new(store.clone());
    let engine = Arc::new(Engine::new(
        store,
        Arc::new(registry),
        vec![Arc::new(BenchPlan)],
        Arc::new(BenchConnector(ctx)),
        EngineConfig {
            workers: args.workers.max(1),
            retry: DeliveryBackoff {
                base: Duration::from_millis(50),
                cap: Duration::from_secs(2),
            },
            poll: Duration::from_millis(100),
            ..EngineConfig::default()
        },
        outbox.wake_signal(),
    ));
    let mut hooks = Hooks::new();
    hooks.insert(
        "bench".into(),
        Hook::ServiceNow {
            table: "incident".into(),
            secret: SecretString::from("bench-secret"),
        },
    );
    let receiver = Receiver::bind(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Limits::default(),
    )
    .await?;
    let url = format!("{}/hooks/servicenow/bench", receiver.base_url());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let app = router(outbox, hooks, engine.health(), Limits::default());
    let server = tokio::spawn(receiver.serve(app, async move {
        let _ = rx1.wait_for(|v| *v).await;
    }));
    let mut rx2 = stop_rx.clone();
    let workers = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(RunMode::Forever, async move {
                    let _ = rx2.wait_for(|v| *v).await;
                })
                .await
        })
    };
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let t1 = Instant::now();
    let posted: Vec<Result<()>> = stream::iter(0..n)
        .map(|i| {
            let (http, url, sent) = (http.clone(), url.clone(), sent.clone());
            async move {
                let key = format!("hook-{i}");
                let start = Instant::now();
                let resp = http
                    .post(&url)
                    .header(SERVICENOW_SECRET_HEADER, "bench-secret")
                    .json(&json!({"sys_id": key, "sys_updated_on": "2026-11-30 09:00:00"}))
                    .send()
                    .await
                    .context("POST the webhook")?;
                if !resp.status().is_success() {
                    return Err(BenchError::Failed(format!(
                        "webhook answered {}",
                        resp.status()
                    )));
                }
                sent.lock().insert(key, start);
                Ok(())
            }
        })
        .buffer_unordered(args.senders.max(1))
        .collect()
        .await;
    if let Some(Err(e)) = posted.into_iter().find(Result::is_err) {
        return Err(e);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.lock().len() < n {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "only {} of {n} events reached Salesforce in 10 minutes",
                done.lock().len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let _ = workers.await;
    let _ = server.await;
    let done = done.lock().clone();
    let sent = sent.lock().clone();
    let last = done.values().max().copied().unwrap_or(t1);
    let outbox_elapsed = last.duration_since(t1);
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(k, s)| done.get(k).map(|d| d.duration_since(*s)))
        .collect();
    lat.sort();
    let outbox_rate = n as f64 / outbox_elapsed.as_secs_f64().max(1e-9);
    let base_rate = n as f64 / base_elapsed.as_secs_f64().max(1e-9);
    Ok(Report {
        events: n,
        outbox_elapsed,
        outbox_rate,
        latency_p50: percentile(&lat, 0.50),
        latency_p99: percentile(&lat, 0.99),
        base_elapsed,
        base_rate,
    })
}
