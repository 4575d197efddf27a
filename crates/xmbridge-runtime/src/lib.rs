//! The xmbridge runtime: turns stored connections, linked accounts and workflow definitions
//! into running clients, syncs and workflow processes, for the command line today and a
//! long-running service tomorrow.
//!
//! It owns the persisted format of Qualtrics connections, a new one checked before it is saved
//! and a stored connection turned into a client ([`connection`]), its browser authorization ([`authorize`]) and its "Save & Test"
//! ([`save_and_test`]); the clients of linked Salesforce and ServiceNow accounts and the table
//! of external systems ([`systems`], [`salesforce`], [`servicenow`]), and linking and
//! re-authorizing those accounts ([`link`]); the workflow process (plans, the live connector
//! with its credential cache and response enrichment, hooks, event subscriptions, receiver and
//! workers: [`workflow`]), preparing and saving a workflow definition ([`definitions`]), its hook's
//! endpoint ([`endpoint`]), a workflow's run state changed or read ([`control`]) and the live
//! inputs of a workflow test ([`preview`]);
//! one Qualtrics action run on a stored connection ([`action`]); what a sync opens around the
//! engine (the destination and the workflow trigger: [`sync`]) and the exactly-once sync →
//! workflow trigger ([`trigger`]). Its functions take typed inputs and return typed results and
//! [`RuntimeError`]s; what an operator should know comes back as values, and progress goes to
//! a callback or trait the caller implements.
//!
//! It must not parse arguments, print or prompt (that is the binary), and must not hold the
//! mechanics of the clients, the sync or the workflow engine (those are the other crates).

pub mod action;
pub mod authorize;
pub mod connection;
pub mod control;
pub mod definitions;
pub mod endpoint;
mod error;
pub mod link;
pub mod preview;
pub mod salesforce;
pub mod save_and_test;
pub mod servicenow;
pub mod sync;
pub mod systems;
pub mod trigger;
pub mod workflow;

pub use error::{ErrorKind, Result, RuntimeError};
