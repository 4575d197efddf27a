//! Salesforce accounts: the OAuth login and client-credentials check that link one, and the
//! client a linked account's workflow steps run with.

use std::sync::Arc;

use serde_json::{Value, json};
use xmbridge_actions::{ActionContext, ActionError, ActionSpec};
use xmbridge_auth::{SecretString, TokenResponse};
use xmbridge_salesforce::{
    ClientCredentials, OAuthApp, RefreshSink, SalesforceClient, TokenProvider,
};
use xmbridge_vault::{SecretField, Vault};
use xmbridge_workflows::store::{AccountKind, AccountRow};

use crate::error::{Result, RuntimeError};

fn parse_url(text: &str) -> Result<url::Url> {
    url::Url::parse(text).map_err(|source| RuntimeError::Url {
        message: format!("{text} is not a URL"),
        source,
    })
}

/// The organization id from a Salesforce identity URL (`…/id/{orgId}/{userId}`).
pub fn org_from_identity(tokens: &TokenResponse) -> Option<String> {
    let id = tokens.extra.get("id")?.as_str()?;
    let mut parts = id.rsplit('/');
    let _user = parts.next()?;
    parts.next().map(str::to_string)
}

/// How a Salesforce account is linked.
#[derive(Clone, Copy, Debug)]
pub enum Link<'a> {
    /// Client credentials at this token endpoint.
    ServerToServer {
        /// The token endpoint.
        token_url: &'a str,
    },
    /// A user's OAuth login at this login host.
    Login {
        /// The login host.
        login_url: &'a str,
    },
}

/// What a linked Salesforce account stores in clear: the settings [`context`] reads back (and
/// the instance URL the first token names).
pub fn account_settings(link: Link<'_>, client_id: &str, tokens: &TokenResponse) -> Value {
    let mut settings = match link {
        Link::ServerToServer { token_url } => {
            json!({"token_url": token_url, "client_id": client_id})
        }
        Link::Login { login_url } => json!({
            "login_url": login_url,
            "client_id": client_id,
            // Which Salesforce user approved, and when: Salesforce keeps 5 approvals per user
            // and connected app (see `link::approval_cap`).
            "identity": tokens.extra.get("id").cloned().unwrap_or(Value::Null),
            "approved_at": xmbridge_workflows::store::now_ms(),
        }),
    };
    if let Some(instance) = tokens.extra.get("instance_url").and_then(Value::as_str) {
        settings["instance_url"] = json!(instance);
    }
    settings
}

/// What a Salesforce login needs.
pub struct Login<'a> {
    /// The account's name.
    pub name: &'a str,
    /// The local user logging in (named in the re-authorize hint).
    pub user: &'a str,
    /// The login host (`https://login.salesforce.com`, a simulator …).
    pub login_url: &'a str,
    /// The connected app's client id.
    pub client_id: &'a str,
    /// The connected app's client secret.
    pub secret: SecretString,
    /// Port of the loopback redirect listener (0 = any).
    pub port: u16,
    /// How long to wait for the browser.
    pub timeout: std::time::Duration,
}

/// The OAuth web-server login: `on_url` gets the URL the user opens and the redirect URI, and
/// may return the redirect as the user pasted it (a browser on another machine); the answer is
/// the tokens (with the refresh token the account keeps).
pub async fn login<F: std::future::Future<Output = Option<String>>>(
    login: Login<'_>,
    on_url: impl FnOnce(&url::Url, &str) -> F,
) -> Result<TokenResponse> {
    let Login {
        name,
        user,
        login_url,
        client_id,
        secret,
        port,
        timeout,
    } = login;
    parse_url(login_url)?;
    // The same OAuth client the account runs on (xmbridge_salesforce::TokenProvider).
    let app = OAuthApp {
        login_url: login_url.to_string(),
        client_id: client_id.to_string(),
        client_secret: secret,
        redirect_uri: String::new(),
    };
    let oauth = app
        .oauth_client()?
        .for_connection(name)
        .with_reauthorize_command(format!(
            "xmbridge account link {name} --refresh --as {user}"
        ));
    let opts = xmbridge_auth::AuthorizeOptions {
        scope: Some("api refresh_token".into()),
        port,
        timeout,
        pkce: true,
        callback_path: "/oauth/callback".into(),
        ..Default::default()
    };
    Ok(xmbridge_auth::authorize_with_paste(&oauth, opts, on_url).await?)
}

/// One client-credentials grant against `token_url`: proves a server-to-server account.
pub async fn client_credentials(
    name: &str,
    token_url: &str,
    client_id: &str,
    secret: SecretString,
) -> Result<TokenResponse> {
    parse_url(token_url)?;
    // The same OAuth client the account runs on (xmbridge_salesforce::TokenProvider).
    let oauth = ClientCredentials {
        token_url: token_url.to_string(),
        client_id: client_id.to_string(),
        client_secret: secret,
    }
    .oauth_client()?
    .for_connection(name);
    Ok(oauth.client_credentials(None).await?)
}

/// The client a Salesforce step runs with, from a linked account. Rotated refresh tokens are
/// sealed back into the vault.
pub fn context(
    vault: &Arc<Vault>,
    row: &AccountRow,
    spec: &ActionSpec,
) -> Result<ActionContext, ActionError> {
    let not_configured = |fix: String| crate::systems::not_configured(spec, fix);
    let name = row.name.as_str();
    let stored = crate::systems::StoredAccount::open(vault, name, &not_configured)?;
    let setting = |k: &str| stored.setting(k);
    let secret = |f: SecretField| {
        vault
            .get_secret(name, f)
            .map_err(|e| not_configured(format!("account {name}: {e}")))?
            .ok_or_else(|| {
                not_configured(format!(
                    "account {name} has no {}; re-authorize with `xmbridge account link {name} --refresh`",
                    f.label()
                ))
            })
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .connect_timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| not_configured(format!("cannot set up the HTTP client: {e}")))?;
    let client_id = setting("client_id")?;
    let client_secret = secret(SecretField::ClientSecret)?;
    let tokens = match row.kind {
        AccountKind::ServerToServer => TokenProvider::client_credentials(
            http.clone(),
            ClientCredentials {
                token_url: setting("token_url")?,
                client_id,
                client_secret,
            },
        ),
        AccountKind::OAuth => {
            let sink: Arc<dyn RefreshSink> = Arc::new(vault.refresh_token_sink(name));
            TokenProvider::web_server(
                http.clone(),
                OAuthApp {
                    login_url: setting("login_url")?,
                    client_id,
                    client_secret,
                    redirect_uri: String::new(),
                },
                secret(SecretField::RefreshToken)?,
                Some(sink),
            )
        }
    };
    let client = Arc::new(SalesforceClient::new(http, Arc::new(tokens)));
    Ok(
        ActionContext::new().with(xmbridge_actions::salesforce::SalesforceConnection {
            client,
            account: name.to_string(),
        }),
    )
}
