//! The browser authorization of a "standard" (OAuth refresh token) Qualtrics connection: the
//! authorize URL handed to the caller, the redirect awaited on loopback, the refresh token
//! stored sealed.

use std::sync::Arc;
use std::time::Duration;

use xmbridge_vault::{SecretField, Vault};

use crate::connection::{self, AuthMode, DEFAULT_SCOPES, load_settings};
use crate::{Result, RuntimeError};

/// Authorizes the stored connection `name` in a browser: `on_url` gets the URL the user opens
/// and the redirect URI; the redirect listener takes `port` on 127.0.0.1 (0 = any) and waits
/// up to `timeout`. The future `on_url` returns may yield the redirect as the user pasted it (a
/// browser on another machine), which is taken if it comes first; `None` waits for the
/// listener only.
pub async fn authorize_connection<F: std::future::Future<Output = Option<String>>>(
    vault: &Arc<Vault>,
    name: &str,
    port: u16,
    timeout: Duration,
    on_url: impl FnOnce(&url::Url, &str) -> F,
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
    let tokens = xmbridge_auth::authorize_with_paste(&oauth, opts, on_url).await?;
    let refresh = tokens.refresh_token.as_ref().ok_or_else(|| {
        RuntimeError::unusable(
            "Qualtrics did not return a refresh token; ask for the 'offline' scope",
        )
    })?;
    vault.set_secret(name, SecretField::RefreshToken, refresh)?;
    Ok(())
}

/// A browser authorization started by a server whose own URL receives the redirect
/// ([`start_web_authorization`]); kept by the server under its `state` until the redirect
/// arrives ([`finish_web_authorization`]).
pub struct WebAuthorization {
    /// The connection being authorized.
    pub connection: String,
    /// The URL the user opens.
    pub url: url::Url,
    /// Where the provider sends the browser back (the server's callback).
    pub redirect_uri: String,
    /// The random `state` the redirect must carry back.
    pub state: String,
    verifier: xmbridge_auth::SecretString,
}

/// Starts the browser authorization of the "standard" connection `name` with `redirect_uri`
/// (the server's own callback URL): the authorize URL with a random state and a PKCE challenge.
pub fn start_web_authorization(
    vault: &Arc<Vault>,
    name: &str,
    redirect_uri: &str,
) -> Result<WebAuthorization> {
    use xmbridge_auth::ExposeSecret;
    let s = load_settings(vault, name)?;
    if s.auth != AuthMode::Standard {
        return Err(RuntimeError::usage(format!(
            "connection '{name}' uses auth {}; only standard (OAuth refresh token) connections are authorized in a browser",
            s.auth.as_str()
        )));
    }
    let http = connection::http_client(vault, name, &s)?;
    let oauth = connection::oauth_client(vault, name, &s, &http)?;
    let scopes = s
        .scopes
        .clone()
        .unwrap_or_else(|| DEFAULT_SCOPES.to_string());
    let state = xmbridge_auth::random_token(24)
        .map_err(xmbridge_auth::AuthError::from)?
        .expose_secret()
        .to_string();
    let verifier = xmbridge_auth::random_token(32).map_err(xmbridge_auth::AuthError::from)?;
    let challenge = xmbridge_auth::pkce_challenge(verifier.expose_secret());
    let url = oauth.authorize_url(redirect_uri, Some(&scopes), &state, Some(&challenge), &[])?;
    Ok(WebAuthorization {
        connection: name.to_string(),
        url,
        redirect_uri: redirect_uri.to_string(),
        state,
        verifier,
    })
}

/// Finishes a [`WebAuthorization`] with the `code` its redirect brought (the caller checked
/// the state): exchanges it and stores the refresh token sealed.
pub async fn finish_web_authorization(
    vault: &Arc<Vault>,
    pending: &WebAuthorization,
    code: &xmbridge_auth::SecretString,
) -> Result<()> {
    let name = pending.connection.as_str();
    let s = load_settings(vault, name)?;
    let http = connection::http_client(vault, name, &s)?;
    let oauth = connection::oauth_client(vault, name, &s, &http)?;
    let tokens = oauth
        .authorization_code(code, &pending.redirect_uri, Some(&pending.verifier))
        .await?;
    let refresh = tokens.refresh_token.as_ref().ok_or_else(|| {
        RuntimeError::unusable(
            "Qualtrics did not return a refresh token; ask for the 'offline' scope",
        )
    })?;
    vault.set_secret(name, SecretField::RefreshToken, refresh)?;
    Ok(())
}
