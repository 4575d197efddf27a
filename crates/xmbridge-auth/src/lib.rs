//! Authentication for every external account xmbridge talks to.
//!
//! It owns how a call gets its credentials: the [`TokenSource`] trait that the HTTP clients
//! (`xmbridge-qualtrics`, `xmbridge-salesforce`, `xmbridge-servicenow`) ask for an `Authorization`
//! (or `X-API-TOKEN`) header before each call and tell about a 401; the one OAuth 2.0 stack
//! (client credentials, authorization code with PKCE, refresh — hand-written and generic over the
//! provider, each provider's quirks in its [`ProviderHooks`]);
//! the local redirect listener of `xmbridge connection authorize`; and mutual-TLS identities from
//! a certificate, a (possibly encrypted PKCS#8) key and a pass phrase. A refresh refused with
//! `invalid_grant` becomes [`AuthError::AccountTokenExpired`] carrying the command that
//! re-authorizes. It also owns the rules every client applies at the network boundary (module
//! `endpoint`): credentials only over https (loopback excepted), valid host names, credential
//! text that fits a header, and upstream text cut to a bounded length in errors and logs; the HTTP
//! policy the clients share (module [`retry`]: retry policy, `Retry-After`, jitter, status
//! classes, one refresh per 401); the one source of secret randomness ([`random_bytes`],
//! PKCE); and the one list of external systems ([`System`]) that vault, actions and workflows
//! name. It must not call any provider API other than the OAuth endpoints, and must not store
//! anything: rotated refresh tokens are handed to a [`RefreshTokenSink`] that the caller backs
//! with `xmbridge-vault`.

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
mod random;
pub mod retry;
mod source;
mod system;

pub use authorize::{AuthorizeFlow, AuthorizeOptions, authorize, authorize_with_paste};
pub use endpoint::{
    UPSTREAM_TEXT_LIMIT, check_credential_text, check_credential_url, check_host_name,
    is_loopback_host, upstream_bytes, upstream_text,
};
pub use error::AuthError;
pub use identity::{ClientIdentity, Roots, check_ca_certificates, http_client_builder};
pub use oauth::{
    ClientAuth, Grant, OAuthClient, OAuthProvider, ProviderHooks, Refusal, TokenResponse,
};
pub use random::{RandomError, pkce_challenge, random_bytes, random_token};
pub use retry::{
    ErrorKind, Jitter, RefreshOnce, RetryPolicy, StatusClass, is_transient_status,
    parse_retry_after,
};
pub use source::{
    ApiTokenSource, ClientCredentialsSource, Clock, RefreshTokenSource, SystemClock,
    WithApiTokenFallback,
};
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

    /// The provider answered 401 to `sent`: forget the cached token only if it is still the one
    /// that was refused, so that concurrent 401s cause one refresh, not one each.
    fn invalidate_stale(&self, sent: &AuthHeader) {
        let _ = sent;
        self.invalidate();
    }

    /// Whether [`TokenSource::invalidate`] can lead to different credentials (false for fixed
    /// API tokens: a 401 is final).
    fn can_refresh(&self) -> bool {
        true
    }

    /// When the current access token expires, if there is one.
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }

    /// What kind of credential this is, for people (`API token`, `OAuth refresh token` …).
    fn describe(&self) -> String;
}

/// Why a [`RefreshTokenSink`] could not store a token: the store's own error, kept as the cause
/// (it must not contain the token).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Receives a rotated refresh token; it must persist it atomically before returning, because the
/// previous one no longer works.
pub trait RefreshTokenSink: Send + Sync {
    /// Stores `refresh_token` durably; `Err` says why it could not (no secret in it).
    fn save(&self, refresh_token: &SecretString) -> Result<(), SinkError>;
}

/// Any `Fn(&SecretString) -> Result<(), SinkError>` closure is a sink.
impl<F> RefreshTokenSink for F
where
    F: Fn(&SecretString) -> Result<(), SinkError> + Send + Sync,
{
    fn save(&self, refresh_token: &SecretString) -> Result<(), SinkError> {
        self(refresh_token)
    }
}
