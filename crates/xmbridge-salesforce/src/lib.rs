//! Salesforce REST client for xmbridge.
//!
//! It owns talking to one Salesforce org: Salesforce's side of OAuth on the shared stack of
//! `xmbridge-auth` ([`OAuthApp::oauth_client`] with its quirks, [`TokenProvider`]: web-server
//! flow with PKCE, refresh with rotation handed to a [`RefreshSink`], client credentials), and
//! the REST calls workflows need ([`SalesforceClient`]: describe (cached), create, update,
//! upsert, delete, SOQL query paging through `nextRecordsUrl`, sObject Collections), with every
//! failure classified in [`SalesforceError`] so a caller can retry, pause or give up. It must not store
//! anything (the caller persists rotated refresh tokens through the sink) or schedule retries.
//! Secrets (client secret, access and refresh tokens) never reach `Debug`, `Display` or logs.

mod client;
mod error;
mod oauth;

pub use client::{
    ApiUsage, FieldDescribe, ObjectDescribe, QueryPager, RecordResult, RecordTypeInfo,
    SalesforceClient, UpsertOutcome,
};
pub use error::{ErrorKind, SalesforceError, SfError};
pub use oauth::{
    AuthorizeRequest, ClientCredentials, OAuthApp, RefreshSink, TokenProvider, TokenResponse,
    pkce_challenge, verify_signature,
};
