//! `xmbridge serve` and `xmbridge workflow run`: the long-running process.
//!
//! Today it owns the webhook receiver ([`receiver`]): `POST /hooks/qualtrics/{workflow}`,
//! `/hooks/salesforce/{workflow}` and `/hooks/servicenow/{workflow}`, each answering only after the
//! event is committed to the outbox. The sync scheduler, a JSON HTTP API and a small web UI of
//! `xmbridge serve` are planned here (docs/design/overview.md, "Planned, not built"). It wires the
//! other crates together and must not reimplement their logic: parsing and checking inbound calls
//! and storing events stay in `xmbridge-workflows`, secrets in `xmbridge-vault`, API calls in the
//! client crates.

pub mod receiver;
