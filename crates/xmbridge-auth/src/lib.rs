//! Authentication for every external account xmbridge talks to.
//!
//! It owns how a call gets its credentials: the [`TokenSource`] trait that HTTP clients
//! (`xmbridge-qualtrics`, later Salesforce and ServiceNow) ask for an `Authorization` (or
//! `X-API-TOKEN`) header before each call and tell about a 401; the OAuth 2.0 token calls
//! (client credentials, authorization code, refresh — hand-written and generic over the provider);
//! the local redirect listener of `xmbridge connection authorize`; and mutual-TLS identities from
//! a certificate, a (possibly encrypted PKCS#8) key and a pass phrase. A refresh refused with
//! `invalid_grant` becomes [`AuthError::AccountTokenExpired`] carrying the command that
//! re-authorizes. It also owns the rules every client applies at the network boundary (module
//! `endpoint`): credentials only over https (loopback excepted), valid host names, credential
//! text that fits a header, and upstream text cut to a bounded length in errors and logs. It also
//! holds the one list of external systems ([`System`]) that vault, actions and workflows name. It
//! must not call any provider API other than the OAuth endpoints, and must not store anything: rotated refresh tokens are handed to a [`RefreshTokenSink`] that the caller
//! backs with `xmbridge-vault`.

#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

pub use secrecy::{ExposeSecret, SecretString};

mod authorize;
mod endpoint;
mod error;
mod identity;
mod oauth;
mod source;
mod system;

pub use authorize::{AuthorizeFlow, AuthorizeOptions, authorize};
pub use endpoint::{
    UPSTREAM_TEXT_LIMIT, check_credential_text, check_credential_url, check_host_name,
    is_loopback_host, upstream_bytes, upstream_text,
};
pub use error::AuthError;
pub use identity::{ClientIdentity, Roots, check_ca_certificates, http_client_builder};
pub use oauth::{ClientAuth, OAuthClient, OAuthProvider, RetryPolicy, TokenResponse};
pub use source::{ApiTokenSource, ClientCredentialsSource, Clock, RefreshTokenSource, SystemClock};
pub use system::{System, UnknownSystem};

/// A boxed future, so that [`TokenSource`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One credential header, marked sensitive so HTTP stacks never log it.
#[derive(Clone)]
pub struct AuthHeader {
    /// `Authorization` or `X-API-TOKEN`.
    pub name: http::HeaderName,
    /// The credential, marked sensitive.
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
    /// Stores `refresh_token` durably; `Err` says why it could not (no secret in it).
    fn save(&self, refresh_token: &SecretString) -> Result<(), String>;
}

/// Any `Fn(&SecretString) -> Result<(), String>` closure is a sink.
impl<F> RefreshTokenSink for F
where
    F: Fn(&SecretString) -> Result<(), String> + Send + Sync,
{
    fn save(&self, refresh_token: &SecretString) -> Result<(), String> {
        self(refresh_token)
    }
}
