//! A new Qualtrics connection: the choices as given turned into stored settings and sealed
//! secrets, each checked (token, client id, certificate, key and pass phrase, CA file) before
//! anything is saved. Secrets come through the caller's [`NewConnectionSecrets`], asked for only
//! when needed and in a fixed order, so a command line prompts and a service answers its own way.

use std::path::{Path, PathBuf};

use xmbridge_auth::{ExposeSecret, SecretString};
use xmbridge_qualtrics::{BaseUrl, DataCenter};
use xmbridge_vault::{Provider, SecretField, Vault};

use super::{AuthMode, DEFAULT_SCOPES, QualtricsSettings, settings_json};
use crate::{Result, RuntimeError};

/// Where a new connection's account lives, as given.
#[derive(Clone, Debug)]
pub enum Location {
    /// The account URL as seen in the browser (or a simulator's `http://127.0.0.1:PORT`).
    Url(String),
    /// A data center id (`fra1`, `iad1` …).
    DataCenter(String),
    /// An organization (brand) id; the data center is found from the account later.
    Organization(String),
}

/// A place resolved: the API base URL and, when known, the data center id.
#[derive(Clone, Debug)]
pub struct Located {
    /// The account's API base URL.
    pub base_url: BaseUrl,
    /// The data center id, when the location names one.
    pub datacenter: Option<String>,
}

impl Location {
    /// The base URL and data center this location names, or a usage error saying why not.
    pub fn resolve(&self) -> Result<Located> {
        let usage = |e: &dyn std::fmt::Display| RuntimeError::usage(e.to_string());
        match self {
            Location::Url(url) => {
                let base = BaseUrl::parse(url).map_err(|e| usage(&e))?;
                let datacenter = base.data_center().map(|d| d.id().to_string());
                Ok(Located {
                    base_url: base,
                    datacenter,
                })
            }
            Location::DataCenter(dc) => {
                let dc = DataCenter::parse(dc).map_err(|e| usage(&e))?;
                Ok(Located {
                    base_url: dc.base_url(),
                    datacenter: Some(dc.id().to_string()),
                })
            }
            Location::Organization(org) => Ok(Located {
                base_url: BaseUrl::from_organization(org).map_err(|e| usage(&e))?,
                datacenter: None,
            }),
        }
    }
}

/// The secrets a new connection asks its caller for, each only when its auth mode needs it, in
/// this order: API token, or client secret and then the key's pass phrase.
pub trait NewConnectionSecrets {
    /// The API token (`--auth token`).
    fn api_token(&mut self) -> Result<SecretString>;
    /// The OAuth client secret (`--auth standard` and `advanced`).
    fn client_secret(&mut self) -> Result<SecretString>;
    /// The private key's pass phrase (`--auth advanced`): required when `key_encrypted`, else
    /// only one the operator offered unasked.
    fn passphrase(&mut self, key_encrypted: bool) -> Result<Option<SecretString>>;
}

/// What `connection add qualtrics` was asked: the choices as given, files by path.
#[derive(Clone, Debug)]
pub struct NewConnection {
    /// The connection's name.
    pub name: String,
    /// Where the account lives ([`Location::resolve`]).
    pub located: Located,
    /// How it authenticates.
    pub auth: AuthMode,
    /// The OAuth client id given explicitly (`--client-id`); refused with `--auth token`.
    pub client_id: Option<String>,
    /// The OAuth client id used when none is given explicitly (`XMBRIDGE_QUALTRICS_CLIENT_ID`).
    pub default_client_id: Option<String>,
    /// The OAuth scopes to ask for; standard mode defaults to [`DEFAULT_SCOPES`].
    pub scopes: Option<String>,
    /// The client certificate (PEM) for mutual TLS.
    pub certificate: Option<PathBuf>,
    /// The private key (PEM, PKCS#8, may be encrypted) for mutual TLS.
    pub key: Option<PathBuf>,
    /// An extra CA certificate (PEM) to trust.
    pub ca_cert: Option<PathBuf>,
    /// The XM Directory (`POOL_…`) to sync contacts from.
    pub directory: Option<String>,
    /// A client-credentials connection also keeps an API token (given explicitly), used when
    /// the OAuth client cannot get a token: the ServiceNow spoke's connection holds both.
    pub fallback_api_token: bool,
}

/// The PEM texts of a new connection given as text rather than files ([`NewConnection::check_pems`]).
#[derive(Default)]
pub struct PemTexts {
    /// The client certificate (PEM) for mutual TLS.
    pub certificate: Option<String>,
    /// Its private key (PEM, PKCS#8, may be encrypted).
    pub key: Option<SecretString>,
    /// An extra CA certificate (PEM) to trust.
    pub ca_cert: Option<String>,
}

/// A new connection whose settings and secrets passed every check, ready to [`add`].
pub struct CheckedConnection {
    name: String,
    settings: QualtricsSettings,
    secrets: Vec<(SecretField, SecretString)>,
}

impl CheckedConnection {
    /// The settings that will be stored.
    pub fn settings(&self) -> &QualtricsSettings {
        &self.settings
    }
}

impl NewConnection {
    /// Reads the files, asks `input` for the secrets this auth mode needs and checks each
    /// (token, client id, certificate with key and pass phrase, CA file) before anything is
    /// stored.
    pub fn check(self, input: &mut dyn NewConnectionSecrets) -> Result<CheckedConnection> {
        let ca_cert_pem = self
            .ca_cert
            .as_deref()
            .map(read_ca_certificates)
            .transpose()?;
        let files = match (self.auth, &self.certificate, &self.key) {
            (AuthMode::Advanced, Some(cert), Some(key)) => Some((
                read_public(cert, "client certificate")?,
                SecretString::from(read_public(key, "private key")?),
            )),
            _ => None,
        };
        self.check_read(ca_cert_pem, files, input)
    }

    /// [`NewConnection::check`] for a caller that holds the PEM texts rather than files (an
    /// HTTP API receives them in its request): `certificate` and `key` must be unset in `self`
    /// when `pems` gives them, and the same checks run on the texts.
    pub fn check_pems(
        self,
        pems: PemTexts,
        input: &mut dyn NewConnectionSecrets,
    ) -> Result<CheckedConnection> {
        let ca_cert_pem = match pems.ca_cert {
            Some(pem) => {
                xmbridge_auth::check_ca_certificates(pem.as_bytes()).map_err(|e| {
                    RuntimeError::usage(format!(
                        "ca_cert: {e}; give the PEM text of the CA that signed the server's certificate"
                    ))
                })?;
                Some(pem)
            }
            None => None,
        };
        let files = match (pems.certificate, pems.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(RuntimeError::usage(
                    "give both the client certificate and its private key (mutual TLS), or neither",
                ));
            }
        };
        let mut this = self;
        if files.is_some() {
            // Marks them as given for the checks that look at the flags.
            this.certificate = Some(PathBuf::from("certificate"));
            this.key = Some(PathBuf::from("key"));
        }
        this.check_read(ca_cert_pem, files, input)
    }

    fn check_read(
        self,
        ca_cert_pem: Option<String>,
        cert_and_key: Option<(String, SecretString)>,
        input: &mut dyn NewConnectionSecrets,
    ) -> Result<CheckedConnection> {
        let auth = self.auth;
        let mut settings = QualtricsSettings {
            base_url: self.located.base_url.as_str().to_string(),
            datacenter: self.located.datacenter.clone(),
            auth,
            client_id: None,
            scopes: None,
            certificate_pem: None,
            ca_cert_pem,
            directory: self.directory.clone(),
            brand_id: None,
        };
        let mut secrets: Vec<(SecretField, SecretString)> = Vec::new();
        match auth {
            AuthMode::Token => {
                for (flag, set) in [
                    ("--client-id", self.client_id.is_some()),
                    ("--cert", self.certificate.is_some()),
                    ("--key", self.key.is_some()),
                ] {
                    if set {
                        return Err(RuntimeError::usage(format!(
                            "{flag} is for --auth standard/advanced/client-credentials; --auth token uses only an API token"
                        )));
                    }
                }
                let token = input.api_token()?;
                // The same check `connection test` and `sync` make, now rather than at first use.
                xmbridge_auth::ApiTokenSource::new(token.clone()).map_err(|e| {
                    RuntimeError::usage(format!(
                        "{e} (from --api-token-file or XMBRIDGE_QUALTRICS_API_TOKEN)"
                    ))
                })?;
                secrets.push((SecretField::ApiToken, token));
            }
            AuthMode::Standard | AuthMode::Advanced | AuthMode::ClientCredentials => {
                settings.client_id = Some(self.oauth_client_id()?);
                // Standard mode asks the user to consent to the sync's scopes (plus `offline` for
                // a refresh token); the spoke-style OAuth client asks for `manage:all`; advanced
                // client credentials get what the client is allowed unless told.
                settings.scopes = match auth {
                    AuthMode::Standard => Some(
                        self.scopes
                            .clone()
                            .unwrap_or_else(|| DEFAULT_SCOPES.to_string()),
                    ),
                    AuthMode::ClientCredentials => Some(
                        self.scopes
                            .clone()
                            .unwrap_or_else(|| super::CLIENT_CREDENTIALS_SCOPE.to_string()),
                    ),
                    _ => self.scopes.clone(),
                };
                secrets.push((SecretField::ClientSecret, input.client_secret()?));
                if self.fallback_api_token {
                    if auth != AuthMode::ClientCredentials {
                        return Err(RuntimeError::usage(
                            "an API token next to an OAuth client is for --auth client-credentials (the spoke's connection); --auth standard and advanced use only their OAuth client",
                        ));
                    }
                    let token = input.api_token()?;
                    xmbridge_auth::ApiTokenSource::new(token.clone()).map_err(|e| {
                        RuntimeError::usage(format!("{e} (the fallback API token)"))
                    })?;
                    secrets.push((SecretField::ApiToken, token));
                }
            }
        }
        if auth == AuthMode::Advanced {
            let Some((cert_pem, key_pem)) = cert_and_key else {
                return Err(RuntimeError::usage(
                    "--auth advanced needs --cert CLIENT_CERT.pem and --key CLIENT_KEY.pem (mutual TLS)",
                ));
            };
            let passphrase = input.passphrase(key_pem.expose_secret().contains("ENCRYPTED"))?;
            // Check certificate, key and pass phrase now, not at the first sync.
            xmbridge_auth::ClientIdentity::load(
                cert_pem.as_bytes(),
                key_pem.expose_secret().as_bytes(),
                passphrase.as_ref(),
            )
            .map_err(|e| RuntimeError::usage(e.to_string()))?;
            settings.certificate_pem = Some(cert_pem);
            secrets.push((SecretField::PrivateKey, key_pem));
            if let Some(p) = passphrase {
                secrets.push((SecretField::Passphrase, p));
            }
        } else if self.certificate.is_some() || self.key.is_some() {
            return Err(RuntimeError::usage(
                "--cert and --key are for --auth advanced (mutual TLS)",
            ));
        }
        Ok(CheckedConnection {
            name: self.name,
            settings,
            secrets,
        })
    }

    /// The client id standard and advanced mode need: the explicit one, else the default.
    fn oauth_client_id(&self) -> Result<String> {
        let id = self
            .client_id
            .clone()
            .or_else(|| self.default_client_id.clone().filter(|v| !v.is_empty()))
            .ok_or_else(|| {
                RuntimeError::usage(format!(
                    "--auth {} needs --client-id (or the environment variable XMBRIDGE_QUALTRICS_CLIENT_ID)",
                    self.auth.as_str()
                ))
            })?;
        credential_text(
            "OAuth client id",
            "--client-id (or XMBRIDGE_QUALTRICS_CLIENT_ID)",
            &id,
        )?;
        Ok(id)
    }
}

/// Stores a checked connection with its sealed secrets; nothing stays behind when a secret
/// cannot be stored.
pub fn add(vault: &Vault, connection: &CheckedConnection) -> Result<()> {
    let name = &connection.name;
    vault.add_connection(
        name,
        Provider::Qualtrics,
        settings_json(&connection.settings)?,
    )?;
    for (field, value) in &connection.secrets {
        if let Err(e) = vault.set_secret(name, *field, value) {
            let _ = vault.remove_connection(name);
            return Err(e.into());
        }
    }
    Ok(())
}

/// Refuses a token, client id, secret or user name that cannot go into an HTTP header or form
/// field (a NUL, a line break …), naming where it came from (`source`); the value is never shown.
pub fn credential_text(what: &str, source: &str, value: &str) -> Result<()> {
    xmbridge_auth::check_credential_text(what, value)
        .map_err(|e| RuntimeError::usage(format!("{e}: {source}")))
}

/// A CA certificate file, checked to hold at least one readable PEM certificate.
fn read_ca_certificates(path: &Path) -> Result<String> {
    let pem = read_public(path, "CA certificate")?;
    xmbridge_auth::check_ca_certificates(pem.as_bytes()).map_err(|e| {
        RuntimeError::usage(format!(
            "--ca-cert {}: {e}; give the PEM file of the CA that signed the server's certificate",
            path.display()
        ))
    })?;
    Ok(pem)
}

fn read_public(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| RuntimeError::Input {
        context: format!("cannot read the {what} from {}", path.display()),
        source,
    })
}
