//! Integration tests of `xmbridge`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

// Test code may unwrap: a panic is how a test reports a failure (clippy.toml allows it inside
// #[test] functions; this covers the helpers beside them).
#![allow(clippy::unwrap_used)]

mod cli_account;
mod cli_action;
mod cli_bench;
mod cli_cluster;
mod cli_connection;
mod cli_delta;
mod cli_demo;
mod cli_destination;
mod cli_serve;
mod cli_simulate;
mod cli_state;
mod cli_sync;
mod cli_sync_trigger;
mod cli_user;
mod cli_workflow;
mod cli_workflow_run;
mod cli_workflow_sf;
mod serve_api;
mod serve_ui;
mod support;
