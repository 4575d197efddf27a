//! The benchmarks behind `xmbridge bench`: how fast and how lean the response sync is against a
//! raw load of the same rows ([`sync`]), and how many webhook events per second reach a
//! Salesforce upsert through the receiver, outbox and workers against direct upserts
//! ([`workflows`]), and what several `xmbridge serve` nodes on one PostgreSQL state store do
//! against one ([`cluster`]).
//!
//! It owns the measuring: the child process per destination (so peak RSS is its own), the
//! simulator process, the raw baselines (binary `COPY`, a prepared-insert loop) and the
//! figures. It must not parse arguments or print (that is the binary, which also builds the
//! child's command line), and must not hold sync, destination or workflow mechanics (it
//! measures the crates that do).

pub mod cluster;
pub mod contacts;
mod error;
pub mod sync;
pub mod workflows;

pub use error::{BenchError, Result};
