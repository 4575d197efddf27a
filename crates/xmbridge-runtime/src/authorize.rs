//! The browser authorization of a "standard" (OAuth refresh token) Qualtrics connection: the
//! authorize URL handed to the caller, the redirect awaited on loopback, the refresh token
//! stored sealed.

use std::sync::Arc;
use std::time::Duration;

use xmbridge_vault::{SecretField, Vault};

use crate::connection::{self, AuthMode, DEFAULT_SCOPES, load_settings};
use crate::{Result, RuntimeError};

/// Authorizes the stored connection `name` in a browser: `on_url` gets the URL the user opens;
/// the redirect listener takes `port` on 127.0.0.1 (0 = any) and waits up to `timeout`.
pub async fn authorize_connection(
    vault: &Arc<Vault>,
    name: &str,
    port: u16,
    timeout: Duration,
    on_url: impl FnOnce(&url::Url),
) -> Result<()> {
    let s = load_settings(vault, name)?;
    if s.auth != AuthMode::Standard {
        return Err(RuntimeError::usage(format!(
            "connection '{name}' uses --auth {}; only standard (OAuth refresh token) connections are authorized in a browser",
            s.auth.as_str()
        )));
    }
    let http = connection::http_client(vault, name, &s)?;
    let oauth = connection::oauth_client(vault, name, &s, &http)?;
    let scopes = s
        .scopes
        .clone()
        .unwrap_or_else(|| DEFAULT_SCOPES.to_string());
    let opts = xmbridge_auth::AuthorizeOptions {
        scope: Some(scopes),
        port,
        timeout,
        ..Default::default()
    };
    let tokens = xmbridge_auth::authorize(&oauth, opts, on_url).await?;
    let refresh = tokens.refresh_token.as_ref().ok_or_else(|| {
        RuntimeError::unusable(
            "Qualtrics did not return a refresh token; ask for the 'offline' scope",
        )
    })?;
    vault.set_secret(name, SecretField::RefreshToken, refresh)?;
    Ok(())
}
