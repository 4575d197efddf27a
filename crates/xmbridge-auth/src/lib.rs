//! Authentication for every external account xmbridge talks to.
//!
//! It owns how a call gets its credentials: the [`TokenSource`] trait that HTTP clients
//! (`xmbridge-qualtrics`, later Salesforce and ServiceNow) ask for an `Authorization` (or
//! `X-API-TOKEN`) header before each call and tell about a 401; the OAuth 2.0 token calls
//! (client credentials, authorization code, refresh — hand-written and generic over the provider);
//! the local redirect listener of `xmbridge connection authorize`; and mutual-TLS identities from
//! a certificate, a (possibly encrypted PKCS#8) key and a pass phrase. A refresh refused with
//! `invalid_grant` becomes [`AuthError::AccountTokenExpired`] carrying the command that
//! re-authorizes. It must not call any provider API other than the OAuth endpoints, and must not
//! store anything: rotated refresh tokens are handed to a [`RefreshTokenSink`] that the caller
//! backs with `xmbridge-vault`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

pub use secrecy::{ExposeSecret, SecretString};

/// A boxed future, so that [`TokenSource`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One credential header, marked sensitive so HTTP stacks never log it.
#[derive(Clone)]
pub struct AuthHeader {
    pub name: http::HeaderName,
    pub value: http::HeaderValue,
}

impl fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthHeader({}: [REDACTED])", self.name)
    }
}

/// Where a client gets credentials for each call.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// The header to send with the next call; fetches or refreshes a token when needed
    /// (before it expires).
    fn authorization(&self) -> BoxFuture<'_, Result<AuthHeader, AuthError>>;

    /// The provider answered 401 with the last header: forget any cached token so the next
    /// [`TokenSource::authorization`] gets a fresh one. Sources that cannot refresh (API tokens)
    /// do nothing.
    fn invalidate(&self) {}

    /// When the current access token expires, if there is one.
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }

    /// What kind of credential this is, for people (`API token`, `OAuth refresh token` …).
    fn describe(&self) -> String;
}

/// Receives a rotated refresh token; it must persist it atomically before returning, because the
/// previous one no longer works.
pub trait RefreshTokenSink: Send + Sync {
    fn save(&self, refresh_token: &SecretString) -> Result<(), String>;
}

/// Why credentials could not be obtained. Messages say what was wrong and what to do; they
/// never contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The refresh token was refused (`invalid_grant`): revoked, expired or rotated away.
    #[error(
        "account token expired for connection '{connection}': the provider refused the refresh token ({detail}). Re-authorize with: {reauthorize}"
    )]
    AccountTokenExpired {
        connection: String,
        detail: String,
        reauthorize: String,
    },
    /// Anything else, with a message a person can act on.
    #[error("{0}")]
    Other(String),
}
