//! Linked Salesforce and ServiceNow accounts with the Salesforce extension's rules enforced on
//! the signed-in user: a member sees and links their own accounts (at most 5 private Salesforce
//! ones) and the brand accounts granted to them; an admin sees all, links brand accounts and
//! shares them. Linking goes through `xmbridge_runtime::link`: server-to-server and ServiceNow
//! sign-ins at once, a Salesforce browser login through the server's `/oauth/callback`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use xmbridge_runtime::link::{AccountLogin, AskedSecret, Linked, Operator};
use xmbridge_runtime::systems;
use xmbridge_workflows::accounts::Access;
use xmbridge_workflows::store::{AccountRow, Store};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Json, Path};
use super::schema::{self as s, object, wrap};
use super::{Api, Need, Route, route};

const BRAND_RULE: &str = "brand accounts are linked and shared by admins";

fn account_schema() -> Value {
    object(
        &[
            ("name", s::string()),
            ("system", s::one_of(&["salesforce", "servicenow"])),
            ("kind", s::string()),
            ("scope", s::one_of(&["brand", "private"])),
            ("owner", s::string()),
            ("access", s::one_of(&["owned", "granted", "admin"])),
            ("token_ok", s::boolean()),
            ("org_id", s::opt_string()),
            ("grants", s::array(s::string())),
            ("created_at", s::time()),
            ("last_check", {
                // Null until the account is first tested.
                let mut o = s::object(
                    &[
                        ("at", s::time()),
                        ("ok", s::boolean()),
                        ("message", s::string()),
                    ],
                    &["at", "ok", "message"],
                );
                o["nullable"] = Value::Bool(true);
                o
            }),
        ],
        &["name", "system", "scope", "owner", "token_ok"],
    )
}

pub(super) fn routes() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/api/v1/accounts",
            "The caller's accounts and the brand accounts granted to them (admins: every account)",
            Need::Signed,
            None,
            200,
            Some(wrap("accounts", s::array(account_schema()))),
            list,
        ),
        route(
            Method::POST,
            "/api/v1/accounts",
            "Links an account: Salesforce server-to-server, or ServiceNow (basic, OAuth password grant, client credentials): 201; a Salesforce browser login (login_url): 202 with the authorize URL, linked when Salesforce sends the browser back to /oauth/callback. Brand accounts by admins only; at most 5 private Salesforce accounts per user",
            Need::Signed,
            Some(object(
                &[
                    ("name", s::string()),
                    ("system", s::one_of(&["salesforce", "servicenow"])),
                    ("brand", s::boolean()),
                    ("server_to_server", s::boolean()),
                    ("token_url", s::string()),
                    ("login_url", s::string()),
                    ("client_id", s::string()),
                    ("client_secret", s::string()),
                    ("instance_url", s::string()),
                    ("basic_user", s::string()),
                    ("password", s::string()),
                    ("oauth_password", s::boolean()),
                    ("client_credentials", s::boolean()),
                    ("user", s::string()),
                ],
                &["name", "system"],
            )),
            201,
            Some(wrap("account", account_schema())),
            link,
        ),
        route(
            Method::POST,
            "/api/v1/accounts/{name}/share",
            "Grants a brand account to users: {\"with\": [names]} (admins; brand accounts only)",
            Need::Admin {
                what: "share accounts",
                rule: BRAND_RULE,
            },
            Some(object(&[("with", s::array(s::string()))], &["with"])),
            200,
            Some(wrap("account", account_schema())),
            share,
        ),
        route(
            Method::POST,
            "/api/v1/accounts/{name}/test",
            "Checks that the account's stored credentials still sign in (its owner, a user it is granted to, or an admin)",
            Need::Signed,
            None,
            200,
            Some(object(
                &[
                    ("ok", s::boolean()),
                    ("message", s::string()),
                    ("fix", s::opt_string()),
                    ("checked_at", s::time()),
                    ("resumed", s::array(s::string())),
                ],
                &["ok", "message", "fix", "checked_at", "resumed"],
            )),
            test,
        ),
        route(
            Method::PATCH,
            "/api/v1/accounts/{name}",
            "Renames an account: {\"name\": \"new\"} (its owner or an admin; not while a workflow's step names it)",
            Need::Signed,
            Some(object(&[("name", s::string())], &["name"])),
            200,
            Some(wrap("account", account_schema())),
            rename,
        ),
        route(
            Method::DELETE,
            "/api/v1/accounts/{name}",
            "Unlinks an account: its grants and sealed secrets go (its owner or an admin)",
            Need::Signed,
            None,
            204,
            None,
            remove,
        ),
    ]
}

/// An account as the API shows it; grants only to its owner and admins.
fn account_json(api: &Api, a: &AccountRow, access: &str, show_grants: bool) -> ApiResult<Value> {
    let grants = if show_grants {
        api.app.store.grants(&a.name)?
    } else {
        Vec::new()
    };
    let kind = systems::of_account(a)
        .and_then(|s| (s.sign_in)(&api.app.vault, a))
        .unwrap_or_else(|| a.kind.as_str().to_string());
    Ok(json!({
        "name": a.name,
        "system": a.system,
        "kind": kind,
        "scope": if a.brand { "brand" } else { "private" },
        "owner": a.owner,
        "access": access,
        "token_ok": a.token_ok,
        "org_id": a.org_id,
        "grants": grants,
        "created_at": chrono::DateTime::<chrono::Utc>::from_timestamp_millis(a.created_at),
        "last_check": api.app.store.account_check(&a.name)?.map(|c| json!({
            "at": chrono::DateTime::<chrono::Utc>::from_timestamp_millis(c.checked_at),
            "ok": c.ok,
            "message": c.message,
        })),
    }))
}

/// The account `name` as `caller` may see it, or 404 (an account hidden from a member is not
/// named as existing).
fn visible(api: &Api, caller: &Caller, name: &str) -> ApiResult<(AccountRow, &'static str)> {
    let missing = || {
        ApiError::not_found(
            format!("no account named '{name}' that you can use"),
            Some("list yours with GET /api/v1/accounts".into()),
        )
    };
    let row = match api.app.store.get_account(name) {
        Ok(r) => r,
        Err(xmbridge_workflows::store::StoreError::NoSuchAccount { .. }) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    if row.owner == caller.user.name {
        return Ok((row, "owned"));
    }
    if caller.is_admin() {
        return Ok((row, "admin"));
    }
    if api
        .app
        .store
        .grants(name)?
        .iter()
        .any(|g| g == &caller.user.name)
    {
        return Ok((row, "granted"));
    }
    Err(missing())
}

async fn list(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Value>> {
    let mut out = Vec::new();
    if caller.is_admin() {
        for a in api.accounts.all()? {
            let access = if a.owner == caller.user.name {
                "owned"
            } else {
                "admin"
            };
            out.push(account_json(&api, &a, access, true)?);
        }
    } else {
        for (a, access) in api.accounts.visible_to(&caller.user.name)? {
            let (access, grants) = match access {
                Access::Owned => ("owned", true),
                _ => ("granted", false),
            };
            out.push(account_json(&api, &a, access, grants)?);
        }
    }
    Ok(axum::Json(json!({"accounts": out})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    name: String,
    system: String,
    #[serde(default)]
    brand: bool,
    #[serde(default)]
    server_to_server: bool,
    token_url: Option<String>,
    login_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    instance_url: Option<String>,
    basic_user: Option<String>,
    password: Option<String>,
    #[serde(default)]
    oauth_password: bool,
    #[serde(default)]
    client_credentials: bool,
    user: Option<String>,
}

/// The secrets of a link, from the request body.
struct BodyOperator {
    client_secret: Option<String>,
    password: Option<String>,
}

impl Operator for BodyOperator {
    fn secret(&self, which: AskedSecret) -> xmbridge_runtime::Result<SecretString> {
        let (value, key, what) = match which {
            AskedSecret::Password => (&self.password, "password", "ServiceNow password"),
            _ => (&self.client_secret, "client_secret", "client secret"),
        };
        let v = value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| {
            xmbridge_runtime::RuntimeError::Usage(format!("no {what}: give it as \"{key}\""))
        })?;
        xmbridge_runtime::connection::credential_text(what, &format!("\"{key}\""), v)?;
        Ok(SecretString::from(v.to_string()))
    }

    fn open_login(
        &self,
        _url: &url::Url,
        _redirect_uri: &str,
    ) -> futures_util::future::BoxFuture<'static, Option<String>> {
        // Not reached: browser logins go through the server's own callback instead.
        Box::pin(async { None })
    }
}

async fn link(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<LinkBody>,
) -> ApiResult<axum::response::Response> {
    if body.brand {
        caller.require_admin("link brand accounts", BRAND_RULE)?;
    }
    let (salesforce, servicenow) = match body.system.as_str() {
        "salesforce" => (true, false),
        "servicenow" => (false, true),
        other => {
            return Err(ApiError::invalid(
                format!("unknown system '{other}'"),
                Some("use salesforce or servicenow".into()),
            ));
        }
    };
    xmbridge_vault::validate_connection_name(&body.name)?;
    let request = AccountLogin {
        name: body.name.clone(),
        user: caller.user.name.clone(),
        salesforce,
        servicenow,
        instance_url: body.instance_url.clone(),
        basic_user: body.basic_user.clone(),
        oauth_password: body.oauth_password,
        client_credentials: body.client_credentials,
        sn_user: body.user.clone(),
        login_url: body.login_url.clone(),
        server_to_server: body.server_to_server,
        token_url: body.token_url.clone(),
        client_id: body.client_id.clone(),
        new_client_secret: body.client_secret.is_some(),
        new_password: body.password.is_some(),
        callback_port: 0,
        timeout: std::time::Duration::from_secs(60),
        brand: body.brand,
    };
    let operator = BodyOperator {
        client_secret: body.client_secret.clone(),
        password: body.password.clone(),
    };
    if salesforce && !body.server_to_server {
        // A browser login: the user opens the URL; Salesforce sends the browser back to this
        // server's /oauth/callback, which links the account.
        if api.app.store.get_account(&body.name).is_ok()
            || api.app.vault.get_connection(&body.name).is_ok()
        {
            return Err(ApiError::conflict(
                format!("the name {} is taken", body.name),
                Some("pick another name".into()),
            ));
        }
        let redirect = format!(
            "{}/oauth/callback",
            api.app.public_url.trim_end_matches('/')
        );
        let secret = operator.secret(AskedSecret::ClientSecret)?;
        let login =
            xmbridge_runtime::link::start_web_login(&request, secret, &api.app.store, &redirect)?;
        let url = login.url.to_string();
        api.authorizations.put(
            super::connections::Started::Account(Box::new(login)),
            caller.clone(),
        )?;
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "authorize_url": url,
                "redirect_uri": redirect,
                "expires_in": 600,
            })),
        )
            .into_response());
    }
    let Linked { row, .. } =
        xmbridge_runtime::link::link(&request, &operator, &api.app.store, &api.accounts).await?;
    api.audit(caller.entry(
        "account.link",
        &row.name,
        json!({"system": row.system, "brand": row.brand, "kind": row.kind.as_str()}),
    ));
    let out = account_json(&api, &row, "owned", true)?;
    Ok((StatusCode::CREATED, axum::Json(json!({"account": out}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    with: Vec<String>,
}

async fn share(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<ShareBody>,
) -> ApiResult<axum::Json<Value>> {
    let (row, _) = visible(&api, &caller, &name)?;
    if body.with.is_empty() {
        return Err(ApiError::invalid(
            "say whom to share it with: {\"with\": [\"user\", …]}",
            None,
        ));
    }
    for u in &body.with {
        api.app.users.get(u).map_err(|_| {
            ApiError::invalid(
                format!("no user named '{u}'"),
                Some("list users with GET /api/v1/users".into()),
            )
        })?;
    }
    // The rules check that the account is a brand account; an admin shares it on its owner's
    // behalf (brand accounts are the admins' shared property).
    api.accounts.share(&name, &row.owner, &body.with)?;
    api.audit(caller.entry("account.share", &name, json!({"with": body.with})));
    let row = api.app.store.get_account(&name)?;
    Ok(axum::Json(
        json!({"account": account_json(&api, &row, "admin", true)?}),
    ))
}

async fn test(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let (row, _) = visible(&api, &caller, &name)?;
    let (check, resumed) =
        xmbridge_runtime::link::check_account(&api.app.vault, &api.app.store, &name).await?;
    let fix = (!check.ok).then(|| {
        format!(
            "re-authorize it: `xmbridge account link {name} --refresh --as {}`",
            row.owner
        )
    });
    api.audit(caller.entry("account.test", &name, json!({"ok": check.ok})));
    Ok(axum::Json(json!({
        "ok": check.ok,
        "message": check.message,
        "fix": fix,
        "checked_at": chrono::DateTime::<chrono::Utc>::from_timestamp_millis(check.checked_at),
        "resumed": resumed,
    })))
}

async fn remove(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let (row, access) = visible(&api, &caller, &name)?;
    if access == "granted" {
        return Err(ApiError::forbidden(
            &format!(
                "account {name} belongs to {}; it was only shared with you",
                row.owner
            ),
            "an account is unlinked only by its owner or an admin",
            "ask its owner or an admin",
        ));
    }
    api.accounts.unlink(&name, &row.owner)?;
    api.audit(caller.entry("account.unlink", &name, json!({"owner": row.owner})));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    name: String,
}

async fn rename(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<RenameBody>,
) -> ApiResult<axum::Json<Value>> {
    let (row, access) = visible(&api, &caller, &name)?;
    if access == "granted" {
        return Err(ApiError::forbidden(
            &format!(
                "account {name} belongs to {}; it was only shared with you",
                row.owner
            ),
            "an account is renamed only by its owner or an admin",
            "ask its owner or an admin",
        ));
    }
    let new = body.name.trim().to_string();
    let catalog = xmbridge_workflows::catalog::load(&api.sources, &api.registry).map_err(|e| {
        ApiError::invalid(
            format!("the workflow definitions cannot be read: {e}"),
            None,
        )
    })?;
    let named_by = xmbridge_runtime::link::workflows_naming_account(&catalog, &name);
    let row = api.accounts.rename(&name, &new, &named_by)?;
    if new != name {
        api.audit(caller.entry("account.rename", &name, json!({"to": new})));
    }
    let out = account_json(&api, &row, access, true)?;
    Ok(axum::Json(json!({"account": out})))
}
