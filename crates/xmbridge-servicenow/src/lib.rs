//! ServiceNow REST client: authentication (Basic, OAuth password grant with refresh, client
//! credentials, or a stored refresh token — each a token source of the shared OAuth stack of
//! `xmbridge-auth`, with ServiceNow's quirks), the Table API (list as a stream following `Link`
//! next, get, create, update, delete), system properties, the Import Set API and what the calling
//! user may do to a table (its roles and the table's ACLs, where readable), with errors
//! classified for a delivery worker ([`Error::is_retryable`]).
//!
//! It owns the HTTP conversation with one instance (401, `Retry-After` and status classes by the
//! shared rules of `xmbridge_auth::retry`); it must not retry on its own beyond replaying a call
//! once after refreshing an expired token (backoff is the workflow engine's job), nor store
//! anything. Secrets live in [`secrecy::SecretString`] and
//! never reach `Debug` output, logs or errors.

mod access;
mod auth;
mod client;
mod error;
mod fields;

pub use access::{Access, AccessControl, decide};
pub use auth::Auth;
pub use client::{DisplayValue, ImportResult, ListOptions, Record, ServiceNowClient};
pub use error::Error;
pub use fields::query_fields;
