//! Stored Qualtrics connections: the persisted format (settings in clear, secrets sealed in the
//! vault) and a stored connection turned into a working client (API token, OAuth refresh token,
//! or OAuth client credentials over mutual TLS), and a new connection checked and saved
//! ([`NewConnection`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use xmbridge_auth::{ExposeSecret, OAuthClient, TokenSource};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, RateLimiter, RateLimits};
use xmbridge_vault::{Provider, SecretField, Vault};

use crate::error::{Result, RuntimeError};

mod new;
pub use new::{
    CheckedConnection, Located, Location, NewConnection, NewConnectionSecrets, PemTexts, add,
    credential_text,
};

/// The scopes a full sync needs.
pub const DEFAULT_SCOPES: &str = "read:surveys read:survey_responses read:distributions read:directories read:directory_contacts read:mailing_lists read:mailing_list_contacts read:contact_transactions read:samples read:libraries read:users offline";

/// How a connection authenticates.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// X-API-TOKEN.
    Token,
    /// OAuth authorization code + refresh token (Fivetran's "Standard").
    Standard,
    /// OAuth client credentials over mutual TLS (Fivetran's "Advanced").
    Advanced,
    /// OAuth client credentials without mutual TLS (the ServiceNow spoke's OAuth client; scope
    /// `manage:all` unless `--scopes` says otherwise).
    #[serde(rename = "client-credentials")]
    ClientCredentials,
}

/// The scope a client-credentials connection asks for unless told otherwise: what the
/// ServiceNow spoke's OAuth client is given.
pub const CLIENT_CREDENTIALS_SCOPE: &str = "manage:all";

impl AuthMode {
    /// The name `--auth` takes and listings show.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::Standard => "standard",
            AuthMode::Advanced => "advanced",
            AuthMode::ClientCredentials => "client-credentials",
        }
    }

    /// The name with what it means.
    pub fn label(self) -> &'static str {
        match self {
            AuthMode::Token => "token (API token)",
            AuthMode::Standard => "standard (OAuth authorization code with refresh token)",
            AuthMode::Advanced => "advanced (OAuth client credentials over mutual TLS)",
            AuthMode::ClientCredentials => {
                "client-credentials (OAuth client credentials, no mutual TLS)"
            }
        }
    }
}

/// What a connection stores in clear (never a secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QualtricsSettings {
    /// The account's API base URL.
    pub base_url: String,
    /// The data center id, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// How it authenticates.
    pub auth: AuthMode,
    /// The OAuth client id (standard and advanced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The OAuth scopes asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    /// Client certificate PEM (public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// Extra CA to trust (public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
    /// The XM Directory (`POOL_…`) contacts are synced from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// The brand (organization) id, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand_id: Option<String>,
}

/// The settings of the stored connection `name`.
pub fn load_settings(vault: &Vault, name: &str) -> Result<QualtricsSettings> {
    let rec = vault.get_connection(name)?;
    serde_json::from_value(rec.settings.clone()).map_err(|source| RuntimeError::Settings {
        message: format!(
            "the settings of connection '{name}' are not readable; remove and add it again"
        ),
        source,
    })
}

/// Replaces the stored settings of connection `name` (what `connection test` learned).
pub fn save_settings(vault: &Vault, name: &str, settings: &QualtricsSettings) -> Result<()> {
    vault.update_settings(name, settings_json(settings)?)?;
    Ok(())
}

/// What `connection test` found out about an account.
#[derive(Clone, Debug)]
pub struct Learned {
    /// The base URL the client ended up at (discovery may move a vanity host to the data
    /// center's own host).
    pub base_url: String,
    /// The data center, if found.
    pub datacenter: Option<String>,
    /// The XM Directory, if found.
    pub directory: Option<String>,
    /// The brand id, if found.
    pub brand_id: Option<String>,
}

/// Keeps what was learned about connection `name` that its settings lack (and a moved base
/// URL), so later runs skip the discovery.
pub fn remember(vault: &Vault, name: &str, learned: Learned) -> Result<()> {
    let mut s = load_settings(vault, name)?;
    let mut changed = false;
    if s.base_url != learned.base_url {
        s.base_url = learned.base_url;
        changed = true;
    }
    for (slot, found) in [
        (&mut s.datacenter, learned.datacenter),
        (&mut s.directory, learned.directory),
        (&mut s.brand_id, learned.brand_id),
    ] {
        if slot.is_none() && found.is_some() {
            *slot = found;
            changed = true;
        }
    }
    if changed {
        save_settings(vault, name, &s)?;
    }
    Ok(())
}

pub(crate) fn settings_json(settings: &QualtricsSettings) -> Result<serde_json::Value> {
    serde_json::to_value(settings).map_err(|source| RuntimeError::Settings {
        message: "cannot write the connection settings".into(),
        source,
    })
}

/// The stored Qualtrics connections by name (workflow hook secrets, also kept in the vault as
/// `hook.*` entries, are not connections).
pub fn qualtrics_connections(vault: &Vault) -> Result<Vec<String>> {
    Ok(vault
        .list_connections()?
        .into_iter()
        .filter(|c| {
            c.provider == Provider::Qualtrics
                && !c
                    .name
                    .starts_with(xmbridge_workflows::hooks::HOOK_CONNECTION_PREFIX)
        })
        .map(|c| c.name)
        .collect())
}

/// The HTTP client a connection's calls go through: its extra CA and, in advanced mode, its
/// client certificate.
pub fn http_client(vault: &Vault, name: &str, s: &QualtricsSettings) -> Result<reqwest::Client> {
    let identity = if s.auth == AuthMode::Advanced {
        let cert = s.certificate_pem.as_deref().ok_or_else(|| {
            RuntimeError::unusable(format!(
                "connection '{name}' has no client certificate; remove and add it again with --cert"
            ))
        })?;
        let key = vault
            .get_secret(name, SecretField::PrivateKey)?
            .ok_or_else(|| {
                RuntimeError::unusable(format!(
                    "connection '{name}' has no private key; remove and add it again with --key"
                ))
            })?;
        let pass = vault.get_secret(name, SecretField::Passphrase)?;
        Some(xmbridge_auth::ClientIdentity::load(
            cert.as_bytes(),
            key.expose_secret().as_bytes(),
            pass.as_ref(),
        )?)
    } else {
        None
    };
    let roots = match &s.ca_cert_pem {
        Some(pem) => xmbridge_auth::Roots::Add(pem.as_bytes().to_vec()),
        None => xmbridge_auth::Roots::System,
    };
    // Exports can take long: per-call timeouts are set by the Qualtrics client.
    Ok(
        xmbridge_auth::http_client_builder(identity.as_ref(), &roots)?
            .timeout(std::time::Duration::from_secs(60 * 60))
            .build()?,
    )
}

/// The command that re-authorizes connection `name`.
pub fn reauthorize_command(name: &str) -> String {
    format!("xmbridge connection authorize {name}")
}

/// The OAuth client of a standard, advanced or client-credentials connection.
pub fn oauth_client(
    vault: &Vault,
    name: &str,
    s: &QualtricsSettings,
    http: &reqwest::Client,
) -> Result<OAuthClient> {
    let base = BaseUrl::parse(&s.base_url)?;
    let client_id = s.client_id.clone().ok_or_else(|| {
        RuntimeError::unusable(format!(
            "connection '{name}' has no client id; remove and add it again"
        ))
    })?;
    let secret = vault
        .get_secret(name, SecretField::ClientSecret)?
        .ok_or_else(|| {
            RuntimeError::unusable(format!(
                "connection '{name}' has no client secret; remove and add it again"
            ))
        })?;
    let provider = xmbridge_auth::OAuthProvider::qualtrics(base.url())?;
    Ok(OAuthClient::new(provider, client_id, secret)?
        .with_http_client(http.clone())
        .for_connection(name)
        .with_reauthorize_command(reauthorize_command(name)))
}

/// Builds the token source of a stored connection.
pub fn token_source(
    vault: &Arc<Vault>,
    name: &str,
    s: &QualtricsSettings,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenSource>> {
    match s.auth {
        AuthMode::Token => {
            let token = vault
                .get_secret(name, SecretField::ApiToken)?
                .ok_or_else(|| {
                    RuntimeError::unusable(format!(
                        "connection '{name}' has no API token; remove it and add it again"
                    ))
                })?;
            Ok(Arc::new(xmbridge_auth::ApiTokenSource::new(token)?))
        }
        AuthMode::Advanced | AuthMode::ClientCredentials => {
            let oauth = oauth_client(vault, name, s, http)?;
            let source: Arc<dyn TokenSource> = Arc::new(
                xmbridge_auth::ClientCredentialsSource::new(oauth, s.scopes.clone()),
            );
            // The spoke-style connection may keep an API token behind its OAuth client.
            match vault.get_secret(name, SecretField::ApiToken)? {
                Some(token) if s.auth == AuthMode::ClientCredentials => {
                    Ok(Arc::new(xmbridge_auth::WithApiTokenFallback::new(
                        source,
                        xmbridge_auth::ApiTokenSource::new(token)?,
                    )))
                }
                _ => Ok(source),
            }
        }
        AuthMode::Standard => {
            let oauth = oauth_client(vault, name, s, http)?;
            let refresh = vault
                .get_secret(name, SecretField::RefreshToken)?
                .ok_or_else(|| {
                    RuntimeError::unusable(format!(
                        "connection '{name}' is not authorized yet: run `{}`",
                        reauthorize_command(name)
                    ))
                })?;
            let sink = Arc::new(vault.refresh_token_sink(name));
            Ok(Arc::new(xmbridge_auth::RefreshTokenSource::new(
                oauth, refresh, sink,
            )))
        }
    }
}

/// A ready client for a stored connection, with its settings and token source: what syncs,
/// actions and workflows work through.
pub struct Connected {
    /// The Qualtrics client.
    pub client: Client,
    /// The stored settings.
    pub settings: QualtricsSettings,
    /// Where the client's tokens come from.
    pub source: Arc<dyn TokenSource>,
}

impl Connected {
    /// Puts the client into an action context the one way every caller does (the connection's
    /// name gives a refused token its re-authorize hint); `directory` overrides the stored one.
    pub fn provide(
        self,
        ctx: &mut xmbridge_actions::ActionContext,
        name: &str,
        directory: Option<String>,
    ) {
        xmbridge_actions::qualtrics::provide(
            ctx,
            self.client,
            name,
            directory.or(self.settings.directory),
        );
    }
}

/// The rate limiters of the brands this process calls, one per brand: every client of a brand
/// (each sync run, each workflow step) takes its tokens from the same buckets.
static BRAND_LIMITERS: LazyLock<Mutex<HashMap<String, Arc<RateLimiter>>>> =
    LazyLock::new(Default::default);

/// How many processes divide each brand's limit ([`share_brand_limits`]).
static BRAND_SHARE: AtomicU32 = AtomicU32::new(1);

/// The brand's limiter in this process, made on first use. A brand is its API host and brand
/// id; a connection whose brand id is not known yet is a brand of its own.
fn brand_limiter(
    base: &BaseUrl,
    name: &str,
    settings: &QualtricsSettings,
) -> Result<Arc<RateLimiter>> {
    let key = match &settings.brand_id {
        Some(brand) => format!("{} brand {brand}", base.as_str()),
        None => format!("{} connection {name}", base.as_str()),
    };
    let mut limiters = BRAND_LIMITERS.lock();
    if let Some(l) = limiters.get(&key) {
        return Ok(l.clone());
    }
    let limiter = RateLimiter::new(RateLimits::default())?;
    limiter.set_share(BRAND_SHARE.load(Ordering::Relaxed));
    limiters.insert(key, limiter.clone());
    Ok(limiter)
}

/// Divides every brand's rate limit among `processes` that call the brands (the live servers
/// on one state store, docs/scale-out.md): each runs at `limit / processes`, now and for
/// brands it calls later.
pub fn share_brand_limits(processes: u32) {
    let processes = processes.max(1);
    BRAND_SHARE.store(processes, Ordering::Relaxed);
    for limiter in BRAND_LIMITERS.lock().values() {
        limiter.set_share(processes);
    }
}

/// How many processes divide each brand's rate limit now.
pub fn brand_limit_share() -> u32 {
    BRAND_SHARE.load(Ordering::Relaxed)
}

/// Opens the stored connection `name` as a client.
pub fn connect(vault: &Arc<Vault>, name: &str) -> Result<Connected> {
    let settings = load_settings(vault, name)?;
    let http = http_client(vault, name, &settings)?;
    let source = token_source(vault, name, &settings, &http)?;
    let base = BaseUrl::parse(&settings.base_url)?;
    let loopback = base.is_loopback();
    let mut builder =
        Client::builder(base.clone(), Auth::token_source(source.clone())).http_client(http);
    if loopback {
        // A simulator on this machine enforces its own limit (429 + Retry-After, which the
        // client honours); pacing for a remote brand's 2,000/min would only slow it down.
        builder = builder.no_rate_limit();
    } else {
        builder = builder.rate_limiter(brand_limiter(&base, name, &settings)?);
    }
    let client = builder.build()?;
    Ok(Connected {
        client,
        settings,
        source,
    })
}
