//! A client for the Qualtrics REST API v3 (the contract is `qualtrics-api.md` in the design notes).
//!
//! It owns everything about talking to Qualtrics: turning what a person types (`fra1`,
//! `acme.ca1.qualtrics.com`, a pasted URL) into a base URL, authentication headers, timeouts, the
//! `{result, meta}` envelope and its typed errors, retries with backoff that honour `Retry-After`,
//! the "use this host instead" notice, `nextPage` pagination as a stream, and the response export
//! flow (start → poll → download to a temporary file → unzip → stream-parse). It must not know about
//! storage, sync cursors or workflows; those crates build on it. OAuth token lifecycles live in
//! `xmbridge-auth` and plug in through [`Auth`].
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
pub mod retry;

pub use client::{Auth, Client, ClientBuilder, RetryMode, Secret, SurveySummary, WhoAmI};
pub use datacenter::{BaseUrl, DataCenter};
pub use error::{ApiError, Error};
pub use export::{ExportFile, ExportFormat, ExportOptions, ExportProgress};
pub use retry::RetryPolicy;
