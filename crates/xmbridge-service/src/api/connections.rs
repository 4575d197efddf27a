//! Qualtrics connections: listing and reading them (everyone), adding one with "Save & Test" in
//! one step, changing its sync set-up and schedule, testing and deleting it (admins); its syncs:
//! "sync now" and cancel (admins), the history and one run (everyone).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use xmbridge_runtime::RuntimeError;
use xmbridge_runtime::authorize::{
    WebAuthorization, finish_web_authorization, start_web_authorization,
};
use xmbridge_runtime::connection::{
    self as stored, AuthMode, Location, NewConnection, NewConnectionSecrets, PemTexts,
    QualtricsSettings,
};
use xmbridge_runtime::save_and_test::{TestStep, test_connection};
use xmbridge_vault::Provider;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Json, Path, Query};
use super::schema::{self as s, object, wrap};
use super::{Api, Need, Route, route};
use crate::config::{ConfigChange, Every};
use crate::runs::{RunTrigger, SyncRun};

const CONNECTIONS_RULE: &str = "connections are managed by admins";
const SCHEDULES_RULE: &str = "schedules are managed by admins";
const SYNCS_RULE: &str = "syncs are started and cancelled by admins";

fn connection_schema() -> Value {
    object(
        &[
            ("name", s::string()),
            ("provider", s::one_of(&["qualtrics"])),
            ("url", s::string()),
            ("datacenter", s::opt_string()),
            (
                "auth",
                s::one_of(&["token", "standard", "advanced", "client-credentials"]),
            ),
            ("client_id", s::opt_string()),
            ("scopes", s::opt_string()),
            ("directory", s::opt_string()),
            ("brand_id", s::opt_string()),
            ("certificate", s::boolean()),
            ("secrets", s::array(s::string())),
            ("created_at", s::time()),
            ("updated_at", s::time()),
            (
                "sync",
                json!({"type": "object", "nullable": true, "properties": {
                    "destination": s::string(), "has_password": s::boolean(),
                    "schema": s::string(), "tables": {"type": "array", "nullable": true, "items": s::string()},
                    "every": s::opt_string(), "paused": s::boolean()}}),
            ),
        ],
        &["name", "provider", "url", "auth", "secrets", "sync"],
    )
}

fn report_schema() -> Value {
    object(
        &[
            ("ok", s::boolean()),
            ("auth", s::opt_string()),
            ("identity", s::any_object()),
            ("token", s::any_object()),
            ("directory", s::opt_string()),
            (
                "groups",
                s::array(object(
                    &[
                        ("name", s::string()),
                        ("tables", s::array(s::string())),
                        ("required", s::boolean()),
                        ("status", s::one_of(&["ok", "skipped"])),
                        ("message", s::opt_string()),
                        ("fix", s::opt_string()),
                    ],
                    &["name", "tables", "status", "fix"],
                )),
            ),
            (
                "destination",
                json!({"type": "object", "nullable": true, "properties": {
                    "ok": s::boolean(), "url": s::string(),
                    "message": s::opt_string(), "fix": s::opt_string()}}),
            ),
            (
                "error",
                json!({"type": "object", "nullable": true, "properties": {
                    "message": s::string(), "fix": s::opt_string()}}),
            ),
        ],
        &["ok", "groups", "error"],
    )
}

fn sync_config_props() -> Vec<(&'static str, Value)> {
    vec![
        (
            "destination",
            json!({"type": "string", "description": "sqlite:PATH or postgres://…; a password in it is sealed in the vault, never stored in the URL"}),
        ),
        ("schema", s::string()),
        (
            "tables",
            json!({"type": "array", "nullable": true, "items": s::string()}),
        ),
        (
            "every",
            json!({"type": "string", "nullable": true, "enum": ["5m","15m","30m","1h","2h","3h","6h","8h","12h","24h", null]}),
        ),
        ("paused", s::boolean()),
    ]
}

fn new_connection_schema() -> Value {
    let mut props: Vec<(&str, Value)> = vec![
        ("name", s::string()),
        ("provider", s::one_of(&["qualtrics"])),
        ("url", s::string()),
        ("datacenter", s::string()),
        ("organization", s::string()),
        (
            "auth",
            s::one_of(&["token", "standard", "advanced", "client-credentials"]),
        ),
        ("api_token", s::string()),
        ("client_id", s::string()),
        ("client_secret", s::string()),
        (
            "certificate",
            json!({"type": "string", "description": "client certificate, PEM text"}),
        ),
        (
            "key",
            json!({"type": "string", "description": "private key, PEM text (PKCS#8, may be encrypted)"}),
        ),
        ("passphrase", s::string()),
        (
            "ca_cert",
            json!({"type": "string", "description": "an extra CA to trust, PEM text"}),
        ),
        ("directory", s::string()),
        ("scopes", s::string()),
        ("save_anyway", s::boolean()),
    ];
    props.extend(sync_config_props());
    object(&props, &["name"])
}

pub(super) fn routes() -> Vec<Route> {
    let admin = |what| Need::Admin {
        what,
        rule: CONNECTIONS_RULE,
    };
    let mut patch_props = sync_config_props();
    patch_props.push((
        "password",
        json!({"type": "string", "description": "the destination's password, sealed in the vault"}),
    ));
    vec![
        route(
            Method::GET,
            "/api/v1/connections",
            "Every Qualtrics connection with its sync set-up (never a secret)",
            Need::Signed,
            None,
            200,
            Some(wrap("connections", s::array(connection_schema()))),
            list,
        ),
        route(
            Method::POST,
            "/api/v1/connections",
            "Adds a connection and tests it in one step (Save & Test): 201, or 422 with the same report and nothing saved unless save_anyway (admins)",
            admin("create connections"),
            Some(new_connection_schema()),
            201,
            Some(object(
                &[
                    ("connection", connection_schema()),
                    ("test", report_schema()),
                ],
                &["connection", "test"],
            )),
            add,
        ),
        route(
            Method::GET,
            "/api/v1/connections/{name}",
            "One connection with its sync set-up and last run",
            Need::Signed,
            None,
            200,
            Some(wrap("connection", connection_schema())),
            get_one,
        ),
        route(
            Method::PATCH,
            "/api/v1/connections/{name}",
            "Changes a connection's destination, schema, tables, schedule or pause (admins)",
            admin("change connections"),
            Some(object(&patch_props, &[])),
            200,
            Some(wrap("connection", connection_schema())),
            patch,
        ),
        route(
            Method::DELETE,
            "/api/v1/connections/{name}",
            "Deletes a connection, its secrets and its sync set-up (admins; not while it syncs)",
            admin("delete connections"),
            None,
            204,
            None,
            remove,
        ),
        route(
            Method::POST,
            "/api/v1/connections/{name}/test",
            "Save & Test again: who it is, its data center, which table groups it can sync (admins)",
            admin("test connections"),
            None,
            200,
            Some(wrap("test", report_schema())),
            test,
        ),
        route(
            Method::POST,
            "/api/v1/connections/{name}/authorize",
            "Starts the browser authorization of a standard (OAuth) connection; the provider sends the browser back to this server's /oauth/callback (admins)",
            admin("authorize connections"),
            None,
            200,
            Some(object(
                &[
                    ("authorize_url", s::string()),
                    ("redirect_uri", s::string()),
                    ("expires_in", s::integer()),
                ],
                &["authorize_url", "redirect_uri", "expires_in"],
            )),
            authorize,
        ),
        route(
            Method::GET,
            "/oauth/callback",
            "Where the provider sends the browser back after an authorization (checked against the state the authorization started with); answers a page",
            Need::Public,
            None,
            200,
            None,
            callback,
        )
        .with_query(&[
            ("code", "the authorization code"),
            ("state", "the state the authorization started with"),
            ("error", "the provider's refusal, if any"),
        ]),
        route(
            Method::PUT,
            "/api/v1/connections/{name}/schedule",
            "Sets the schedule ({\"every\": \"1h\"}, {\"every\": null}) or pauses it ({\"paused\": true}) (admins)",
            Need::Admin {
                what: "change schedules",
                rule: SCHEDULES_RULE,
            },
            Some(object(
                &[
                    (
                        "every",
                        json!({"type": "string", "nullable": true, "enum": ["5m","15m","30m","1h","2h","3h","6h","8h","12h","24h", null]}),
                    ),
                    ("paused", s::boolean()),
                ],
                &[],
            )),
            200,
            Some(wrap("connection", connection_schema())),
            schedule,
        ),
        route(
            Method::POST,
            "/api/v1/connections/{name}/syncs",
            "Sync now: queues a run (one at a time per connection; during a run, one more is queued once) (admins)",
            Need::Admin {
                what: "start syncs",
                rule: SYNCS_RULE,
            },
            None,
            202,
            Some(object(
                &[
                    ("id", s::integer()),
                    ("status", s::string()),
                    ("already_queued", s::boolean()),
                    ("running", json!({"type": "integer", "nullable": true})),
                ],
                &["id"],
            )),
            sync_now,
        ),
        route(
            Method::GET,
            "/api/v1/connections/{name}/syncs",
            "The connection's sync history, newest first",
            Need::Signed,
            None,
            200,
            Some(wrap("syncs", s::array(s::sync_run()))),
            history,
        )
        .with_query(&[("limit", "how many runs (default 50, at most 500)")]),
        route(
            Method::GET,
            "/api/v1/syncs/{id}",
            "One sync run: status, per-table counts, progress, error with its fix",
            Need::Signed,
            None,
            200,
            Some(s::sync_run()),
            get_run,
        ),
        route(
            Method::POST,
            "/api/v1/syncs/{id}/cancel",
            "Cancels a run: a queued one at once, a running one at its next commit boundary (admins)",
            Need::Admin {
                what: "cancel syncs",
                rule: SYNCS_RULE,
            },
            None,
            200,
            Some(s::sync_run()),
            cancel,
        ),
    ]
}

/// The stored Qualtrics connection `name` (hook secrets and linked accounts are vault
/// connections too, but not these).
fn qualtrics(api: &Api, name: &str) -> ApiResult<xmbridge_vault::ConnectionRecord> {
    let missing = || {
        ApiError::not_found(
            format!("no Qualtrics connection named '{name}'"),
            Some("list them with GET /api/v1/connections".into()),
        )
    };
    if name.starts_with(xmbridge_workflows::hooks::HOOK_CONNECTION_PREFIX) {
        return Err(missing());
    }
    match api.app.vault.get_connection(name) {
        Ok(rec) if rec.provider == Provider::Qualtrics => Ok(rec),
        Ok(_) | Err(xmbridge_vault::VaultError::ConnectionNotFound { .. }) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// A connection as the API shows it: settings, which secrets are stored (not their values),
/// the sync set-up.
fn connection_json(api: &Api, name: &str) -> ApiResult<Value> {
    let rec = qualtrics(api, name)?;
    let settings: Option<QualtricsSettings> = serde_json::from_value(rec.settings.clone()).ok();
    let secrets: Vec<String> = api
        .app
        .vault
        .list_secrets(name)?
        .iter()
        .map(|i| i.field.label().to_string())
        .collect();
    let sync = api.app.configs.get(name)?;
    let last = api.app.runs.list(name, 1)?.into_iter().next();
    Ok(json!({
        "name": rec.name,
        "provider": rec.provider.as_str(),
        "url": settings.as_ref().map(|s| s.base_url.clone()),
        "datacenter": settings.as_ref().and_then(|s| s.datacenter.clone()),
        "auth": settings.as_ref().map(|s| s.auth.as_str()),
        "client_id": settings.as_ref().and_then(|s| s.client_id.clone()),
        "scopes": settings.as_ref().and_then(|s| s.scopes.clone()),
        "directory": settings.as_ref().and_then(|s| s.directory.clone()),
        "brand_id": settings.as_ref().and_then(|s| s.brand_id.clone()),
        "certificate": settings.as_ref().is_some_and(|s| s.certificate_pem.is_some()),
        "secrets": secrets,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "sync": sync,
        "last_run": last.map(|r| run_json(&r)),
    }))
}

/// A run with every key of the contract present (null when unknown).
pub(super) fn run_json(run: &SyncRun) -> Value {
    let mut v = serde_json::to_value(run).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        for key in [
            "started_at",
            "finished_at",
            "error",
            "requested_by",
            "progress",
        ] {
            o.entry(key).or_insert(Value::Null);
        }
        o.entry("tables").or_insert_with(|| json!({}));
    }
    v
}

async fn list(State(api): State<Arc<Api>>) -> ApiResult<axum::Json<Value>> {
    let names = xmbridge_runtime::connection::qualtrics_connections(&api.app.vault)?;
    let mut out = Vec::new();
    for n in names {
        out.push(connection_json(&api, &n)?);
    }
    Ok(axum::Json(json!({"connections": out})))
}

async fn get_one(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        json!({"connection": connection_json(&api, &name)?}),
    ))
}

/// Absent stays `None`; `null` becomes `Some(None)`.
fn double<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewConn {
    name: String,
    #[serde(default)]
    provider: Option<String>,
    url: Option<String>,
    datacenter: Option<String>,
    organization: Option<String>,
    auth: Option<String>,
    api_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    certificate: Option<String>,
    key: Option<String>,
    passphrase: Option<String>,
    ca_cert: Option<String>,
    directory: Option<String>,
    scopes: Option<String>,
    destination: Option<String>,
    schema: Option<String>,
    tables: Option<Vec<String>>,
    every: Option<String>,
    paused: Option<bool>,
    #[serde(default)]
    save_anyway: bool,
}

/// The secrets of a new connection, from the request body.
struct BodySecrets {
    api_token: Option<String>,
    client_secret: Option<String>,
    passphrase: Option<String>,
}

fn body_secret(
    value: &Option<String>,
    what: &str,
    key: &str,
) -> xmbridge_runtime::Result<SecretString> {
    let v = value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RuntimeError::Usage(format!("no {what}: give it as \"{key}\"")))?;
    stored::credential_text(what, &format!("\"{key}\""), v)?;
    Ok(SecretString::from(v.to_string()))
}

impl NewConnectionSecrets for BodySecrets {
    fn api_token(&mut self) -> xmbridge_runtime::Result<SecretString> {
        body_secret(&self.api_token, "API token", "api_token")
    }

    fn client_secret(&mut self) -> xmbridge_runtime::Result<SecretString> {
        body_secret(&self.client_secret, "OAuth client secret", "client_secret")
    }

    fn passphrase(
        &mut self,
        key_encrypted: bool,
    ) -> xmbridge_runtime::Result<Option<SecretString>> {
        if key_encrypted || self.passphrase.is_some() {
            body_secret(&self.passphrase, "private key pass phrase", "passphrase").map(Some)
        } else {
            Ok(None)
        }
    }
}

fn parse_every(text: &str) -> ApiResult<Every> {
    text.parse::<Every>().map_err(ApiError::from)
}

/// The "Save & Test" report, built step by step as the test reports them.
#[derive(Default)]
struct Report {
    auth: Option<&'static str>,
    identity: Option<Value>,
    token: Option<Value>,
    directory: Option<String>,
    groups: Vec<Value>,
    destination: Option<Value>,
    error: Option<(String, Option<String>)>,
    ok: bool,
}

impl Report {
    fn see(&mut self, step: TestStep<'_>) {
        match step {
            TestStep::Auth(a) => self.auth = Some(a.as_str()),
            TestStep::Identity {
                datacenter,
                base_url,
                me,
            } => {
                self.identity = Some(json!({
                    "datacenter": datacenter, "base_url": base_url, "user_id": me.user_id,
                    "user_name": me.user_name, "brand_id": me.brand_id, "account_type": me.account_type,
                }))
            }
            TestStep::Token { source, expires_at } => {
                let at = expires_at.map(chrono::DateTime::<chrono::Utc>::from);
                self.token = Some(json!({"source": source, "expires_at": at}));
            }
            TestStep::Capabilities(caps) => {
                self.directory = caps.directory.clone();
                self.groups = caps
                    .groups
                    .iter()
                    .map(|g| {
                        let (status, why) = match &g.access {
                            xmbridge_qualtrics::capabilities::Access::Ok => ("ok", None),
                            xmbridge_qualtrics::capabilities::Access::Skipped(w) => {
                                ("skipped", Some(w.clone()))
                            }
                        };
                        json!({
                            "name": g.group.name, "tables": g.group.tables,
                            "required": g.group.required, "status": status,
                            "message": why.as_ref().map(|_| format!("the account cannot read {}", g.group.name)),
                            "fix": why,
                        })
                    })
                    .collect();
            }
            _ => {}
        }
    }

    fn json(&self) -> Value {
        json!({
            "ok": self.ok,
            "auth": self.auth,
            "identity": self.identity,
            "token": self.token,
            "directory": self.directory,
            "groups": self.groups,
            "destination": self.destination,
            "error": self.error.as_ref().map(|(m, f)| json!({"message": m, "fix": f})),
        })
    }
}

/// Runs "Save & Test" on the stored connection `name`: the Qualtrics account, then the
/// destination when it has one.
async fn run_test(api: &Api, name: &str) -> Report {
    let mut report = test_account(api, name).await;
    check_destination(api, name, &mut report).await;
    report
}

/// The Qualtrics side of "Save & Test".
async fn test_account(api: &Api, name: &str) -> Report {
    let mut report = Report::default();
    let outcome = test_connection(&api.app.vault, name, |step| report.see(step)).await;
    match outcome {
        Ok(t) => {
            report.ok = t.can_sync;
            if !t.can_sync {
                report.error = Some((
                    format!("connection '{name}' cannot sync: it cannot read surveys or responses"),
                    Some("give the Qualtrics user access to surveys and responses (see the groups' fixes)".into()),
                ));
            }
        }
        Err(e) => {
            let (message, fix) = match &e {
                RuntimeError::Connection { message, source } => (
                    format!("{message}: {source}"),
                    Some("check the credentials (API token, or client id and secret) and the account URL, then test again".to_string()),
                ),
                RuntimeError::Unusable(m) => (m.clone(), None),
                other => (other.to_string(), None),
            };
            report.error = Some((message, fix));
        }
    }
    report
}

/// Opens the connection's destination once (and closes it), so Save & Test also says whether
/// the rows have somewhere to go. Another sync holding it means it is reachable.
async fn check_destination(api: &Api, name: &str, report: &mut Report) {
    let cfg = match api.app.configs.get(name) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return,
        Err(e) => {
            report.ok = false;
            report.error = Some((format!("the sync set-up cannot be read: {e}"), None));
            return;
        }
    };
    let fix = format!(
        "check the destination URL, that the database is reachable from this server, and its user and password; change it with PATCH /api/v1/connections/{name}"
    );
    let opened = match api.app.configs.destination_settings(name, &cfg) {
        Ok(settings) => {
            xmbridge_runtime::sync::open_destination(
                &settings,
                &cfg.schema,
                xmbridge_destinations::Compat::Xmbridge,
                None,
            )
            .await
        }
        Err(e) => {
            report.ok = false;
            report.destination = Some(json!({"ok": false, "url": cfg.destination,
                                             "message": e.to_string(), "fix": fix}));
            return;
        }
    };
    let failure = match opened {
        Ok(mut dest) => {
            let _ = dest.close().await;
            None
        }
        Err(RuntimeError::Destination { source, .. })
            if matches!(*source, xmbridge_destinations::DestError::Busy { .. }) =>
        {
            None
        }
        Err(RuntimeError::Destination { message, source }) => Some(format!("{message}: {source}")),
        Err(other) => Some(other.to_string()),
    };
    match failure {
        None => {
            report.destination = Some(json!({"ok": true, "url": cfg.destination,
                                             "message": null, "fix": null}))
        }
        Some(message) => {
            report.destination = Some(json!({"ok": false, "url": cfg.destination,
                                             "message": message, "fix": fix}));
            if report.ok {
                report.error = Some((
                    format!("connection '{name}' cannot write to its destination: {message}"),
                    Some(fix.clone()),
                ));
            }
            report.ok = false;
        }
    }
}

/// Removes a connection and its sync set-up again (a Save & Test that failed).
fn unsave(api: &Api, name: &str) {
    if let Err(e) = api.app.configs.remove(name) {
        tracing::debug!(error = %e, "api: no sync set-up to remove for {name}");
    }
    if let Err(e) = api.app.vault.remove_connection(name) {
        tracing::error!(error = %e, "api: cannot remove connection {name} after its failed test");
    }
}

async fn add(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewConn>,
) -> ApiResult<Response> {
    if body.provider.as_deref().is_some_and(|p| p != "qualtrics") {
        return Err(ApiError::invalid(
            "only Qualtrics connections exist; Salesforce and ServiceNow are linked as accounts",
            Some("use \"provider\": \"qualtrics\", or POST /api/v1/accounts".into()),
        ));
    }
    let every = body.every.as_deref().map(parse_every).transpose()?;
    if body.destination.is_none()
        && (every.is_some() || body.schema.is_some() || body.tables.is_some())
    {
        return Err(ApiError::invalid(
            "a schedule, schema or table selection needs a destination",
            Some("add \"destination\": \"sqlite:/path/db.sqlite\" or \"postgres://…\"".into()),
        ));
    }
    let location = match (&body.url, &body.datacenter, &body.organization) {
        (Some(u), None, None) => Location::Url(u.clone()),
        (None, Some(d), None) => Location::DataCenter(d.clone()),
        (None, None, Some(o)) => Location::Organization(o.clone()),
        _ => {
            return Err(ApiError::invalid(
                "say where the account lives with exactly one of url, datacenter or organization",
                Some("e.g. \"url\": \"acme.fra1.qualtrics.com\"".into()),
            ));
        }
    };
    let auth = match body.auth.as_deref().unwrap_or("token") {
        "token" => AuthMode::Token,
        "standard" => AuthMode::Standard,
        "advanced" => AuthMode::Advanced,
        "client-credentials" => AuthMode::ClientCredentials,
        other => {
            return Err(ApiError::invalid(
                format!("unknown auth '{other}'"),
                Some(
                    "use token, standard (recommended for OAuth), advanced or client-credentials"
                        .into(),
                ),
            ));
        }
    };
    let located = location.resolve()?;
    let request = NewConnection {
        name: body.name.clone(),
        located,
        auth,
        client_id: body.client_id.clone(),
        default_client_id: None,
        scopes: body.scopes.clone(),
        certificate: None,
        key: None,
        ca_cert: None,
        directory: body.directory.clone(),
        fallback_api_token: auth != AuthMode::Token && body.api_token.is_some(),
    };
    let pems = PemTexts {
        certificate: body.certificate.clone(),
        key: body.key.clone().map(SecretString::from),
        ca_cert: body.ca_cert.clone(),
    };
    let mut secrets = BodySecrets {
        api_token: body.api_token.clone(),
        client_secret: body.client_secret.clone(),
        passphrase: body.passphrase.clone(),
    };
    xmbridge_vault::validate_connection_name(&body.name)?;
    let checked = request.check_pems(pems, &mut secrets)?;
    stored::add(&api.app.vault, &checked)?;
    let name = body.name.as_str();
    if let Some(destination) = &body.destination {
        let change = ConfigChange {
            destination: Some(destination.clone()),
            schema: body.schema.clone(),
            tables: body.tables.clone().map(Some),
            every: every.map(Some),
            paused: body.paused,
            ..ConfigChange::default()
        };
        if let Err(e) = api.app.configs.apply(name, change) {
            unsave(&api, name);
            return Err(e.into());
        }
    }
    let report = run_test(&api, name).await;
    if !report.ok && !body.save_anyway {
        unsave(&api, name);
        let (message, fix) = report
            .error
            .clone()
            .unwrap_or_else(|| ("the connection cannot sync".into(), None));
        let body = json!({
            "error": {"code": "cannot_sync", "message": format!("{message}; nothing was saved"),
                      "fix": fix.map(|f| format!("{f}; or send \"save_anyway\": true to save it as it is"))},
            "test": report.json(),
        });
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response());
    }
    api.app.scheduler.changed(name);
    let connection = connection_json(&api, name)?;
    api.audit(caller.entry(
        "connection.add",
        name,
        json!({"url": connection["url"], "auth": connection["auth"],
               "destination": connection["sync"]["destination"], "test_ok": report.ok,
               "saved_anyway": !report.ok}),
    ));
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"connection": connection, "test": report.json()})),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Patch {
    destination: Option<String>,
    password: Option<String>,
    schema: Option<String>,
    #[serde(default, deserialize_with = "double")]
    tables: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double")]
    every: Option<Option<String>>,
    paused: Option<bool>,
}

async fn apply_change(
    api: &Api,
    caller: &Caller,
    name: &str,
    change: ConfigChange,
    action: &str,
) -> ApiResult<axum::Json<Value>> {
    qualtrics(api, name)?;
    let cfg = api.app.configs.apply(name, change)?;
    api.app.scheduler.changed(name);
    api.audit(caller.entry(action, name, json!({"sync": cfg})));
    Ok(axum::Json(
        json!({"connection": connection_json(api, name)?}),
    ))
}

async fn patch(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<Patch>,
) -> ApiResult<axum::Json<Value>> {
    let every = match body.every {
        Some(Some(t)) => Some(Some(parse_every(&t)?)),
        Some(None) => Some(None),
        None => None,
    };
    let change = ConfigChange {
        destination: body.destination,
        password: body.password.map(SecretString::from),
        schema: body.schema,
        tables: body.tables,
        every,
        paused: body.paused,
    };
    apply_change(&api, &caller, &name, change, "connection.change").await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Schedule {
    #[serde(default, deserialize_with = "double")]
    every: Option<Option<String>>,
    paused: Option<bool>,
}

async fn schedule(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<Schedule>,
) -> ApiResult<axum::Json<Value>> {
    if body.every.is_none() && body.paused.is_none() {
        return Err(ApiError::invalid(
            "say what to change: \"every\" (5m, 15m, 30m, 1h, 2h, 3h, 6h, 8h, 12h, 24h, or null for no schedule) or \"paused\"",
            None,
        ));
    }
    let every = match body.every {
        Some(Some(t)) => Some(Some(parse_every(&t)?)),
        Some(None) => Some(None),
        None => None,
    };
    let change = ConfigChange {
        every,
        paused: body.paused,
        ..ConfigChange::default()
    };
    apply_change(&api, &caller, &name, change, "connection.schedule").await
}

async fn remove(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    qualtrics(&api, &name)?;
    if !api.app.runs.active(&name)?.is_empty() {
        return Err(ApiError::conflict(
            format!("connection '{name}' has a sync queued or running"),
            Some("cancel it (POST /api/v1/syncs/{id}/cancel) or wait for it, then delete".into()),
        ));
    }
    if api.app.configs.get(&name)?.is_some() {
        api.app.configs.remove(&name)?;
    }
    api.app.vault.remove_connection(&name)?;
    api.app.scheduler.changed(&name);
    api.audit(caller.entry("connection.remove", &name, json!({})));
    Ok(StatusCode::NO_CONTENT)
}

async fn test(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    qualtrics(&api, &name)?;
    let report = run_test(&api, &name).await;
    api.audit(caller.entry("connection.test", &name, json!({"ok": report.ok})));
    Ok(axum::Json(json!({"test": report.json()})))
}

async fn sync_now(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    qualtrics(&api, &name)?;
    if api.app.configs.get(&name)?.is_none() {
        return Err(ApiError::invalid(
            format!("connection '{name}' has no destination to sync to"),
            Some(format!(
                "set one with PATCH /api/v1/connections/{name} {{\"destination\": \"sqlite:/path/db.sqlite\"}}"
            )),
        ));
    }
    let trigger = if caller.token.is_some() {
        RunTrigger::Api
    } else {
        RunTrigger::User
    };
    let q = api
        .app
        .scheduler
        .sync_now(&name, trigger, Some(&caller.user.name))?;
    api.audit(caller.entry(
        "sync.start",
        &name,
        json!({"run": q.run.id, "already_queued": q.already_queued}),
    ));
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "id": q.run.id,
            "status": q.run.status,
            "already_queued": q.already_queued,
            "running": q.running,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn history(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<axum::Json<Value>> {
    qualtrics(&api, &name)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let runs: Vec<Value> = api
        .app
        .runs
        .list(&name, limit)?
        .iter()
        .map(run_json)
        .collect();
    Ok(axum::Json(json!({"syncs": runs})))
}

async fn get_run(State(api): State<Arc<Api>>, Path(id): Path<i64>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(run_json(&api.app.runs.get(id)?)))
}

async fn cancel(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Value>> {
    let run = api.app.scheduler.cancel(id)?;
    api.audit(caller.entry(
        "sync.cancel",
        &run.connection,
        json!({"run": id, "status": run.status}),
    ));
    Ok(axum::Json(run_json(&run)))
}

/// How long a started browser authorization waits for its callback.
const AUTHORIZE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// A browser authorization waiting for the callback: a connection's, or a Salesforce
/// account's login.
pub(crate) enum Started {
    /// `POST /api/v1/connections/{name}/authorize`.
    Connection(WebAuthorization),
    /// `POST /api/v1/accounts` with a Salesforce login.
    Account(Box<xmbridge_runtime::link::WebLogin>),
}

impl Started {
    fn state(&self) -> &str {
        match self {
            Started::Connection(a) => &a.state,
            Started::Account(l) => &l.state,
        }
    }
}

/// Browser authorizations waiting for their callback, by state; each used once.
#[derive(Default)]
pub(crate) struct Pending(
    parking_lot::Mutex<std::collections::HashMap<String, (Started, std::time::Instant, Caller)>>,
);

impl Pending {
    /// Keeps a started authorization; refused (429) when too many are waiting.
    pub(crate) fn put(&self, auth: Started, caller: Caller) -> ApiResult<()> {
        let mut map = self.0.lock();
        // Expired ones go; at most a few hundred can wait, so memory stays bounded.
        map.retain(|_, (_, at, _)| at.elapsed() < AUTHORIZE_TTL);
        if map.len() >= 256 {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_authorizations",
                "too many browser authorizations are waiting for their answer",
                Some("finish or abandon the ones started, or wait up to 10 minutes".into()),
            );
            e.retry_after = Some(60);
            return Err(e);
        }
        map.insert(
            auth.state().to_string(),
            (auth, std::time::Instant::now(), caller),
        );
        Ok(())
    }

    fn take(&self, state: &str) -> Option<(Started, Caller)> {
        let (auth, at, caller) = self.0.lock().remove(state)?;
        (at.elapsed() < AUTHORIZE_TTL).then_some((auth, caller))
    }
}

async fn authorize(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    qualtrics(&api, &name)?;
    let redirect = format!(
        "{}/oauth/callback",
        api.app.public_url.trim_end_matches('/')
    );
    let auth = start_web_authorization(&api.app.vault, &name, &redirect)?;
    let url = auth.url.to_string();
    api.authorizations
        .put(Started::Connection(auth), caller.clone())?;
    api.audit(caller.entry("connection.authorize_start", &name, json!({})));
    Ok(axum::Json(json!({
        "authorize_url": url,
        "redirect_uri": redirect,
        "expires_in": AUTHORIZE_TTL.as_secs(),
    })))
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// A small page for the browser that came back.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{x}</p><p><a href=\"/\">Back to xmbridge</a></p></body></html>",
        t = esc(title),
        x = esc(text)
    );
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

async fn callback(State(api): State<Arc<Api>>, Query(q): Query<Callback>) -> Response {
    let Some((auth, caller)) = q.state.as_deref().and_then(|s| api.authorizations.take(s)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            "This answer does not belong to an authorization started here (unknown, used or expired state). Start it again from the connection's page.",
        );
    };
    if let Some(e) = q.error.as_deref() {
        let why = q.error_description.as_deref().unwrap_or(e);
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            &format!("The provider refused the authorization: {why}"),
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            "The answer carries no authorization code. Start it again.",
        );
    };
    let code = SecretString::from(code);
    match auth {
        Started::Connection(auth) => {
            let name = auth.connection.clone();
            match finish_web_authorization(&api.app.vault, &auth, &code).await {
                Ok(()) => {
                    api.audit(caller.entry("connection.authorize", &name, json!({})));
                    page(
                        StatusCode::OK,
                        "Connection authorized",
                        &format!(
                            "Connection '{name}' is authorized; its refresh token is stored sealed. You can close this tab and test the connection."
                        ),
                    )
                }
                Err(e) => page(
                    StatusCode::BAD_GATEWAY,
                    "Authorization failed",
                    &format!(
                        "The authorization code of connection '{name}' could not be exchanged: {e}"
                    ),
                ),
            }
        }
        Started::Account(login) => {
            let name = login.request.name.clone();
            match xmbridge_runtime::link::finish_web_login(&login, &code, &api.accounts).await {
                Ok(linked) => {
                    api.audit(caller.entry(
                        "account.link",
                        &name,
                        json!({"system": linked.row.system, "brand": linked.row.brand,
                               "kind": linked.row.kind.as_str()}),
                    ));
                    let warning = linked
                        .revoked
                        .as_ref()
                        .map(|r| format!(" Warning: {}", r.warning(&name)))
                        .unwrap_or_default();
                    page(
                        StatusCode::OK,
                        "Account linked",
                        &format!(
                            "Salesforce account '{name}' is linked; its tokens are stored sealed.{warning} You can close this tab."
                        ),
                    )
                }
                Err(e) => page(
                    StatusCode::BAD_GATEWAY,
                    "Linking failed",
                    &format!("Salesforce account '{name}' could not be linked: {e}"),
                ),
            }
        }
    }
}
