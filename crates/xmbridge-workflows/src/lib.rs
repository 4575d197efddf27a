//! Workflows: trigger → mapping → actions, with durable delivery (to be built in issue #5).
//!
//! It will own workflow definitions, the triggers (Qualtrics `completedResponse` event
//! subscriptions, responses seen by a sync, inbound Salesforce/ServiceNow calls), declarative
//! mappings from a response onto target records, the actions (Salesforce, ServiceNow, Qualtrics
//! contacts and distributions), and the durable outbox with retries, a dead letter and replay,
//! plus the Salesforce extension's account rules (linked accounts, sharing, paused workflows). It
//! must not store secrets itself (that is `xmbridge-vault`) or run HTTP servers (that is
//! `xmbridge-server`).

pub mod accounts;
pub mod catalog;
pub mod definition;
pub mod event;
pub mod expr;
pub mod mapping;
pub mod outbox;
pub mod preflight;
pub mod stand_ins;
pub mod store;
pub mod worker;
