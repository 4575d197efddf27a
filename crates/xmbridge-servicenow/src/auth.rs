//! How the client authenticates, and the OAuth token calls (`/oauth_token.do`, form body).

use crate::error::Error;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// Credentials of one ServiceNow account. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub enum Auth {
    /// `Authorization: Basic` on every call (the user needs "web service access only" on
    /// instances that block Basic auth for interactive users).
    Basic {
        username: String,
        password: SecretString,
    },
    /// OAuth password grant; the refresh token is kept and used before the access token expires.
    /// If the refresh token is refused, the password grant is tried once more.
    Password {
        client_id: String,
        client_secret: SecretString,
        username: String,
        password: SecretString,
    },
    /// OAuth client credentials (runs as the registry entry's OAuth Application User).
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
    },
    /// A refresh token obtained earlier (a linked account); refused → [`Error::AuthExpired`].
    RefreshToken {
        client_id: String,
        client_secret: SecretString,
        refresh_token: SecretString,
    },
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Basic { .. } => "basic",
            Auth::Password { .. } => "oauth-password",
            Auth::ClientCredentials { .. } => "oauth-client-credentials",
            Auth::RefreshToken { .. } => "oauth-refresh-token",
        }
    }
}

#[derive(Default)]
pub(crate) struct Tokens {
    pub access: Option<SecretString>,
    pub expires_at: Option<Instant>,
    pub refresh: Option<SecretString>,
}

impl Tokens {
    pub fn fresh(&self, margin: Duration) -> Option<SecretString> {
        match (&self.access, self.expires_at) {
            (Some(a), Some(exp)) if Instant::now() + margin < exp => Some(a.clone()),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

pub(crate) enum Grant<'a> {
    Password {
        username: &'a str,
        password: &'a SecretString,
    },
    Refresh(&'a SecretString),
    ClientCredentials,
}

/// One call to `/oauth_token.do`. A refusal (any 4xx) is [`Error::AuthExpired`].
pub(crate) async fn token_call(
    http: &reqwest::Client,
    base: &str,
    client_id: &str,
    client_secret: &SecretString,
    grant: Grant<'_>,
    into: &mut Tokens,
) -> Result<(), Error> {
    let mut form: Vec<(&str, &str)> = vec![
        ("client_id", client_id),
        ("client_secret", client_secret.expose_secret()),
    ];
    let what = match &grant {
        Grant::Password { username, password } => {
            form.push(("grant_type", "password"));
            form.push(("username", username));
            form.push(("password", password.expose_secret()));
            "password grant"
        }
        Grant::Refresh(rt) => {
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", rt.expose_secret()));
            "refresh token"
        }
        Grant::ClientCredentials => {
            form.push(("grant_type", "client_credentials"));
            "client credentials"
        }
    };
    let resp = http
        .post(format!("{base}/oauth_token.do"))
        .form(&form)
        .send()
        .await
        .map_err(|e| Error::Transient {
            status: None,
            message: format!("token call failed: {}", e.without_url()),
        })?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(Error::Transient {
            status: Some(status.as_u16()),
            message: "the token endpoint failed".into(),
        });
    }
    if status.as_u16() == 429 {
        return Err(crate::client::rate_limited(resp.headers()));
    }
    if !status.is_success() {
        // ServiceNow answers every refusal with 401 server_error/access_denied: nothing to
        // tell apart, so the text names what was refused.
        return Err(Error::AuthExpired {
            instance: base.to_string(),
            reason: format!("the {what} was refused (HTTP {})", status.as_u16()),
        });
    }
    let reply: TokenReply = resp
        .json()
        .await
        .map_err(|e| Error::Decode(format!("token reply: {}", e.without_url())))?;
    into.access = Some(SecretString::from(reply.access_token));
    into.expires_at = Some(Instant::now() + Duration::from_secs(reply.expires_in.unwrap_or(1800)));
    if let Some(rt) = reply.refresh_token {
        into.refresh = Some(SecretString::from(rt));
    }
    Ok(())
}

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
