//! How the client authenticates: the [`Auth`] modes, each one a token source of the shared
//! OAuth stack of `xmbridge-auth` with ServiceNow's quirks (token calls to `/oauth_token.do`).

use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use xmbridge_auth::{
    ApiTokenSource, AuthError, ClientAuth, ClientCredentialsSource, Grant, OAuthClient,
    OAuthProvider, ProviderHooks, RefreshTokenSource, Refusal, RetryPolicy, TokenSource,
};

/// Credentials of one ServiceNow account. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub enum Auth {
    /// `Authorization: Basic` on every call (the user needs "web service access only" on
    /// instances that block Basic auth for interactive users).
    Basic {
        /// The ServiceNow user name.
        username: String,
        /// The user's password.
        password: SecretString,
    },
    /// OAuth password grant; the refresh token is kept and used before the access token expires.
    /// If the refresh token is refused, the password grant is tried once more.
    Password {
        /// The OAuth application registry entry's client id.
        client_id: String,
        /// The registry entry's client secret.
        client_secret: SecretString,
        /// The ServiceNow user the tokens act as.
        username: String,
        /// The user's password, sent to the token endpoint only.
        password: SecretString,
    },
    /// OAuth client credentials (runs as the registry entry's OAuth Application User).
    ClientCredentials {
        /// The OAuth application registry entry's client id.
        client_id: String,
        /// The registry entry's client secret.
        client_secret: SecretString,
    },
    /// A refresh token obtained earlier (a linked account); refused →
    /// [`crate::Error::AuthExpired`].
    RefreshToken {
        /// The OAuth application registry entry's client id.
        client_id: String,
        /// The registry entry's client secret.
        client_secret: SecretString,
        /// The refresh token the account was linked with.
        refresh_token: SecretString,
    },
}

impl Auth {
    /// The auth method's name for messages and listings (`basic`, `oauth-password`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Basic { .. } => "basic",
            Auth::Password { .. } => "oauth-password",
            Auth::ClientCredentials { .. } => "oauth-client-credentials",
            Auth::RefreshToken { .. } => "oauth-refresh-token",
        }
    }
}

/// ServiceNow's quirks on the shared OAuth stack of `xmbridge-auth`: tokens that name no
/// lifetime last 30 minutes, and every refusal of `/oauth_token.do` (it answers them all with
/// 401 `server_error`/`access_denied`, nothing to tell apart) means the account's grant is dead.
#[derive(Debug)]
struct ServiceNowHooks;

impl ProviderHooks for ServiceNowHooks {
    fn assumed_lifetime(&self) -> Option<Duration> {
        Some(Duration::from_secs(1800))
    }

    fn refusal(&self, _grant: Grant, _status: u16, _error: &str, _detail: &str) -> Option<Refusal> {
        Some(Refusal::AccountTokenExpired)
    }
}

/// The token source of one [`Auth`] mode.
#[derive(Debug)]
pub(crate) enum Source {
    Basic(ApiTokenSource),
    Password(RefreshTokenSource),
    ClientCredentials(ClientCredentialsSource),
    RefreshToken(RefreshTokenSource),
}

impl Source {
    pub(crate) fn tokens(&self) -> &dyn TokenSource {
        match self {
            Source::Basic(s) => s,
            Source::Password(s) => s,
            Source::ClientCredentials(s) => s,
            Source::RefreshToken(s) => s,
        }
    }

    /// The refresh token in hand (to store it after a password grant); `None` for Basic and
    /// client credentials.
    pub(crate) fn refresh_token(&self) -> Option<SecretString> {
        match self {
            Source::Password(s) | Source::RefreshToken(s) => s.refresh_token(),
            Source::Basic(_) | Source::ClientCredentials(_) => None,
        }
    }
}

/// What the token source of `auth` asks for, for messages ("the refresh token was refused").
pub(crate) fn grant_name(auth: &Auth) -> &'static str {
    match auth {
        Auth::Basic { .. } => "user name and password",
        Auth::Password { .. } => "password grant",
        Auth::ClientCredentials { .. } => "client credentials",
        Auth::RefreshToken { .. } => "refresh token",
    }
}

/// The token source for `auth` at the instance `base`: every mode on the shared stack, token
/// calls to `{base}/oauth_token.do` through `http`. No retries of its own: backoff is the
/// workflow engine's job.
pub(crate) fn token_source(
    auth: &Auth,
    base: &str,
    http: &reqwest::Client,
    margin: Option<Duration>,
) -> Result<Source, AuthError> {
    let oauth = |client_id: &str, client_secret: &SecretString| {
        let token_url = url::Url::parse(&format!("{base}/oauth_token.do"))
            .map_err(|e| AuthError::Config(format!("token URL of {base}: {e}")))?;
        let provider = OAuthProvider::new("ServiceNow", token_url, None, ClientAuth::FormFields)?;
        Ok::<_, AuthError>(
            OAuthClient::new(provider, client_id, client_secret.clone())?
                .with_http_client(http.clone())
                .with_retry(RetryPolicy::none())
                .with_hooks(Arc::new(ServiceNowHooks))
                .for_connection(base),
        )
    };
    let margin = margin.unwrap_or(DEFAULT_MARGIN);
    Ok(match auth {
        Auth::Basic { username, password } => {
            Source::Basic(ApiTokenSource::basic(username, password)?)
        }
        Auth::Password {
            client_id,
            client_secret,
            username,
            password,
        } => Source::Password(
            RefreshTokenSource::password(
                oauth(client_id, client_secret)?,
                username.clone(),
                password.clone(),
                Arc::new(in_memory),
            )
            .with_refresh_margin(margin),
        ),
        Auth::ClientCredentials {
            client_id,
            client_secret,
        } => Source::ClientCredentials(
            ClientCredentialsSource::new(oauth(client_id, client_secret)?, None)
                .with_refresh_margin(margin),
        ),
        Auth::RefreshToken {
            client_id,
            client_secret,
            refresh_token,
        } => Source::RefreshToken(
            RefreshTokenSource::new(
                oauth(client_id, client_secret)?,
                refresh_token.clone(),
                Arc::new(in_memory),
            )
            .with_refresh_margin(margin),
        ),
    })
}

/// Rotated refresh tokens live in memory only ([`crate::ServiceNowClient::refresh_token`] hands
/// the current one to a caller that stores it).
fn in_memory(_: &SecretString) -> Result<(), xmbridge_auth::SinkError> {
    Ok(())
}

/// Refresh this long before the access token expires, unless the caller chose otherwise.
pub(crate) const DEFAULT_MARGIN: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let a = Auth::Password {
            client_id: "cid".into(),
            client_secret: SecretString::from("s3cret-client"),
            username: "u".into(),
            password: SecretString::from("hunter2"),
        };
        let d = format!("{a:?}");
        assert!(
            !d.contains("s3cret-client") && !d.contains("hunter2"),
            "{d}"
        );
        assert!(d.contains("cid"));
    }
}
