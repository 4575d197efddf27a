//! `xmbridge serve`: xmbridge as a shared, always-on service.
//!
//! It owns the installation's users and roles, API tokens, sessions and audit log ([`users`]),
//! each connection's sync configuration and schedule ([`config`]), the history of sync runs
//! ([`runs`]), the serving processes and their heartbeats ([`nodes`]), the scheduler that runs
//! syncs one at a time per connection ([`scheduler`]), the
//! Prometheus metrics ([`metrics`]), the HTTP API under `/api/v1` with its OpenAPI document
//! ([`api`]), the embedded web UI ([`ui`]) and the assembly of one serving process: the
//! scheduler, the webhook receiver, the delivery workers, the API and the UI behind one listener
//! ([`serve`]).
//!
//! It must not reimplement what other crates own: syncing is `xmbridge-sync` through
//! `xmbridge-runtime`, the webhook receiver is `xmbridge-server`, the outbox and linked-account
//! rules are `xmbridge-workflows`, secrets are `xmbridge-vault`. It must not parse command-line
//! arguments or print (that is the binary).

pub mod api;
pub mod config;
mod error;
pub mod metrics;
pub mod nodes;
pub mod runs;
pub mod scheduler;
pub mod serve;
pub mod ui;
pub mod users;

pub use error::{ErrorKind, ServiceError};
