//! `xmbridge serve`: the long-running process (to be built in issue #5).
//!
//! It will own the scheduler for syncs (workers leasing jobs with `FOR UPDATE SKIP LOCKED` when
//! several share one PostgreSQL state store), the webhook receiver, the workflow runner loop, a
//! JSON HTTP API described by an OpenAPI file, and a small web UI (connections with "Save & Test",
//! sync history, workflow runs, dead letters) behind brand-admin and user roles. It wires the other
//! crates together and must not reimplement their logic: API calls stay in `xmbridge-qualtrics`,
//! tokens in `xmbridge-auth`, secrets in `xmbridge-vault`, data movement in `xmbridge-sync`.
