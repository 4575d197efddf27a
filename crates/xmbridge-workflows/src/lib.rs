//! Workflows: trigger → mapping → actions, with durable delivery.
//!
//! It owns workflow definitions, the triggers (Qualtrics `completedResponse` event
//! subscriptions, responses seen by a sync, inbound Salesforce/ServiceNow calls) and how each
//! inbound hook is authenticated ([`hooks`]), declarative mappings from a response onto target
//! records, the durable outbox with retries, a dead letter and replay, the delivery workers and
//! their health, plus the Salesforce extension's account rules (linked accounts, sharing, paused
//! workflows). The actions themselves live in `xmbridge-actions`. It must not store secrets itself
//! (that is `xmbridge-vault`) or run HTTP servers (that is `xmbridge-server`).

pub mod accounts;
pub mod catalog;
pub mod definition;
pub mod event;
pub mod expr;
pub mod hooks;
pub mod mapping;
pub mod outbox;
pub mod preflight;
pub mod store;
pub mod worker;
