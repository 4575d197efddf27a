//! A client for the Qualtrics REST API v3 (the contract: `docs/design/qualtrics-api.md`).
//!
//! It owns everything about talking to Qualtrics: turning what a person types (`fra1`,
//! `acme.ca1.qualtrics.com`, a pasted URL, an organization id) into a base URL, data-center
//! discovery (`/whoami`, the "use this host instead" notice), authentication headers, the
//! brand-wide and per-route rate limits ([`ratelimit`]), timeouts, the `{result, meta}` envelope
//! and its typed errors, retries with backoff that honour `Retry-After` (the policy shared with the
//! other clients, [`xmbridge_auth::retry`]), `nextPage` pagination as
//! a stream, and the response export flow (start → poll → download to a temporary file → unzip →
//! stream-parse). It also holds the facts about the API's data that other crates read: which keys of a
//! response are metadata ([`response`]) and which destination tables each group of routes feeds
//! ([`capabilities::TABLE_GROUPS`], probed by Save & Test and run by the sync). It must not know
//! about storage, sync cursors or workflows; those crates build
//! on it. Credentials are either an API token or a [`TokenSource`] of `xmbridge-auth` (OAuth
//! token lifecycles live there); mutual TLS comes in as a prebuilt `reqwest::Client`
//! ([`ClientBuilder::http_client`]). Secrets are [`SecretString`]s.
//!
//! ```no_run
//! # async fn run() -> Result<(), xmbridge_qualtrics::Error> {
//! use futures_util::TryStreamExt;
//! use xmbridge_qualtrics::{Auth, BaseUrl, Client, ExportOptions};
//!
//! let client = Client::builder(BaseUrl::parse("acme.ca1.qualtrics.com")?, Auth::api_token("…"))
//!     .build()?;
//! println!("hello {}", client.whoami().await?.user_id);
//! let surveys: Vec<_> = client.surveys().try_collect().await?;
//! for s in &surveys {
//!     let file = client.export_responses(&s.id, &ExportOptions::default()).await?;
//!     let n = file.for_each_response(|_response| {})?;
//!     println!("{}: {n} responses", s.name);
//! }
//! # Ok(()) }
//! ```

pub mod capabilities;
pub mod client;
pub mod datacenter;
pub mod envelope;
pub mod error;
pub mod export;
pub mod ratelimit;
pub mod record;
pub mod response;

pub use client::{Auth, Client, ClientBuilder, RetryMode, SurveySummary, WhoAmI};
pub use datacenter::{BaseUrl, DataCenter};
pub use error::{ApiError, Error};
pub use export::{ExportFile, ExportFormat, ExportOptions, ExportProgress};
pub use ratelimit::{RateLimiter, RateLimiterStats, RateLimits};
/// How transient failures are retried: the policy every client shares (`xmbridge-auth`).
pub use xmbridge_auth::RetryPolicy;
pub use xmbridge_auth::{AuthError, AuthHeader, ExposeSecret, SecretString, TokenSource};
