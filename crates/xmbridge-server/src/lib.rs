//! The webhook receiver of `xmbridge workflow run` and `xmbridge serve`.
//!
//! It owns the receiver ([`receiver`]): `POST /hooks/qualtrics/{workflow}`,
//! `/hooks/salesforce/{workflow}` and `/hooks/servicenow/{workflow}`, each answering only after the
//! event is committed to the outbox, and the listener that serves them (loopback unless a caller
//! allows more, optional TLS). `xmbridge serve` merges its own routes (API, UI, metrics) into the
//! same listener; they live in `xmbridge-service`. It wires the other crates together and must
//! not reimplement their logic: parsing and checking inbound calls and storing events stay in
//! `xmbridge-workflows`, secrets in `xmbridge-vault`, API calls in the client crates.

pub mod receiver;
