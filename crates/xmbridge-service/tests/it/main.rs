//! Integration tests of the service crate: the HTTP API served on loopback over a real state
//! store in a temporary `XMBRIDGE_HOME`, with a real scheduler and the Qualtrics simulator,
//! talked to over real HTTP.

// Test code may unwrap: a panic is how a test reports a failure (clippy.toml allows it inside
// #[test] functions; this extends it to the helpers).
#![allow(clippy::unwrap_used)]

mod serve_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use xmbridge_service::api::{self, auth::LoginLimiter};
use xmbridge_service::config::SyncConfigs;
use xmbridge_service::metrics::Metrics;
use xmbridge_service::runs::Runs;
use xmbridge_service::scheduler::{Deps, Scheduler, SchedulerOptions};
use xmbridge_service::serve::AppState;
use xmbridge_service::users::{Role, Users};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_vault::{Home, MasterKey, SecretString, Vault};
use xmbridge_workflows::store::WorkflowStore;

/// The admin's and the member's passwords (checked absent from every answer).
pub(crate) const ADMIN_PASSWORD: &str = "correct horse battery admin";
pub(crate) const MEMBER_PASSWORD: &str = "correct horse battery member";

/// A running API over a fresh home, with an admin `ada` and a member `mo`.
pub(crate) struct Service {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) sim: SimHandle,
    pub(crate) state: AppState,
    pub(crate) dir: TempDir,
    /// Every answer body seen, for the "no secret in any answer" check.
    pub(crate) bodies: parking_lot::Mutex<Vec<String>>,
    _stop: oneshot::Sender<()>,
}

/// An answer: status, headers, body as JSON (Null when empty or not JSON) and text.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) json: Value,
    pub(crate) text: String,
}

/// How a request authenticates.
#[derive(Clone, Default)]
pub(crate) struct Creds {
    pub(crate) cookie: Option<String>,
    pub(crate) csrf: Option<String>,
    pub(crate) bearer: Option<String>,
    pub(crate) origin: Option<String>,
}

impl Creds {
    pub(crate) fn bearer(token: &str) -> Creds {
        Creds {
            bearer: Some(token.to_string()),
            ..Creds::default()
        }
    }
}

impl Service {
    pub(crate) async fn start() -> Service {
        Service::start_with(LoginLimiter::new(3, 6, Duration::from_secs(600))).await
    }

    pub(crate) async fn start_with(limiter: LoginLimiter) -> Service {
        Service::start_full(limiter, false).await
    }

    /// With `behind_proxy`: as `serve --behind-proxy` (Secure cookies, X-Forwarded-For).
    pub(crate) async fn start_full(limiter: LoginLimiter, behind_proxy: bool) -> Service {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let home = Home::at(dir.path().join("home")).expect("the home is created");
        let key = MasterKey::load(&home, None).expect("a master key");
        let vault = Arc::new(Vault::open_home(&home, key).expect("the vault opens"));
        let db = home.state_db();
        let store = Arc::new(WorkflowStore::open(&db).expect("the workflow store opens"));
        let users = Users::open(&db).expect("the users open");
        let configs = SyncConfigs::open(&db, vault.clone()).expect("the sync configs open");
        let runs = Runs::open(&db).expect("the runs open");
        let nodes = xmbridge_service::nodes::Nodes::open(&db).expect("the nodes open");
        let metrics = Arc::new(Metrics::new());
        let scheduler = Scheduler::new(
            Deps {
                home: home.clone(),
                vault: vault.clone(),
                configs: configs.clone(),
                runs: runs.clone(),
                nodes: None,
                metrics: metrics.clone(),
                workflow_config: None,
            },
            SchedulerOptions::default(),
        );
        let handle = scheduler.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(scheduler.run(async move {
            let _ = stopped.await;
        }));
        users
            .add("ada", Role::Admin, &SecretString::from(ADMIN_PASSWORD))
            .expect("the admin is added");
        users
            .add("mo", Role::Member, &SecretString::from(MEMBER_PASSWORD))
            .expect("the member is added");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let base = format!("http://{addr}");
        let state = AppState {
            home,
            vault,
            store,
            users,
            configs,
            runs,
            nodes,
            node_id: "test-node".into(),
            scheduler: handle,
            metrics,
            public_url: base.clone(),
            tls: false,
            behind_proxy,
        };
        let app = api::router_with_limits(state.clone(), limiter);
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("the API serves");
        });
        let sim = xmbridge_test_kit::sim::qualtrics(SimConfig {
            surveys: 2,
            responses: 40,
            contacts: 20,
            export_delay_ms: 10,
            ..SimConfig::default()
        })
        .await;
        Service {
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            sim,
            state,
            dir,
            bodies: parking_lot::Mutex::new(Vec::new()),
            _stop: stop,
        }
    }

    /// A request with these credentials and (optional) JSON body.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        creds: &Creds,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &creds.cookie {
            req = req.header("cookie", format!("xmbridge_session={c}"));
        }
        if let Some(c) = &creds.csrf {
            req = req.header("x-csrf-token", c);
        }
        if let Some(b) = &creds.bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        if let Some(o) = &creds.origin {
            req = req.header("origin", o);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the API answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("a body");
        self.bodies.lock().push(text.clone());
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
            text,
        }
    }

    /// Signs in: the cookie value and the CSRF token.
    pub(crate) async fn login(&self, user: &str, password: &str) -> Creds {
        let a = self
            .call(
                Method::POST,
                "/api/v1/session",
                &Creds::default(),
                Some(json!({"user": user, "password": password})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{user} signs in: {}", a.text);
        let cookie = a
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|kv| kv.strip_prefix("xmbridge_session="))
            .expect("a session cookie")
            .to_string();
        Creds {
            cookie: Some(cookie),
            csrf: a.json["csrf_token"].as_str().map(str::to_string),
            ..Creds::default()
        }
    }

    pub(crate) async fn admin(&self) -> Creds {
        self.login("ada", ADMIN_PASSWORD).await
    }

    pub(crate) async fn member(&self) -> Creds {
        self.login("mo", MEMBER_PASSWORD).await
    }

    /// The simulator's API token.
    pub(crate) fn sim_token(&self) -> String {
        self.sim.sim.cfg.admin_token()
    }

    /// A SQLite destination URL in the test's directory.
    pub(crate) fn sqlite(&self, name: &str) -> String {
        format!("sqlite:{}", self.dir.path().join(name).display())
    }
}

/// The error object of an error answer, checked to have the one shape.
pub(crate) fn error_of(a: &Answer) -> &Value {
    let e = &a.json["error"];
    assert!(
        e["code"].is_string() && e["message"].is_string() && e.get("fix").is_some(),
        "the error shape {{\"error\": {{code, message, fix}}}}: {}",
        a.text
    );
    e
}
