//! The hook through which callers learn which responses a sync wrote, without the engine knowing
//! what they do with them (the CLI turns them into workflow events).
//!
//! The engine calls [`ResponseObserver::responses_seen`] once per response commit, with that
//! commit's responses only (at most `commit_every`, so memory stays bounded on any survey size),
//! and **before** the commit is applied: if the observer fails, the commit is not made and the
//! sync fails, so the next run exports the same responses again and calls the observer again.
//! Observers must therefore be idempotent (the workflow outbox drops duplicates by dedupe key).

use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;

/// Why a survey's responses are in the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// Since the survey's stored continuation token: responses new or changed since the last run.
    Incremental,
    /// The survey had no cursor: its first load (every response it ever had).
    FirstLoad,
    /// A full re-export of a survey loaded before (`--full`, or a refused continuation token):
    /// mostly responses already seen.
    FullReload,
}

/// One response in a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenResponse {
    /// The response's id (`R_…`).
    pub response_id: String,
    /// `values.lastModifiedDate` of the export (ISO 8601), else `recordedDate`, else empty.
    pub last_modified: String,
}

/// The responses of one commit of one survey.
#[derive(Clone, Debug)]
pub struct SeenBatch<'a> {
    /// The survey the responses belong to (`SV_…`).
    pub survey_id: &'a str,
    /// Why these responses were exported (incremental, first load, full reload).
    pub kind: ExportKind,
    /// The responses of the commit, in export order.
    pub responses: &'a [SeenResponse],
}

/// Why an observer refused a batch: its own error, kept as the cause of
/// [`SyncError::Observer`](crate::SyncError::Observer).
pub type ObserverError = Box<dyn std::error::Error + Send + Sync>;

/// Told about every response commit before it is applied; an error stops the sync.
pub trait ResponseObserver: Send + Sync {
    /// Called with the responses of one commit before it is made; an error stops the sync and
    /// the commit is not made.
    fn responses_seen<'a>(
        &'a self,
        batch: SeenBatch<'a>,
    ) -> BoxFuture<'a, Result<(), ObserverError>>;
}

/// A [`ResponseObserver`] in [`crate::SyncOptions`] (cloneable, printable).
#[derive(Clone)]
pub struct Observer(pub Arc<dyn ResponseObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer(..)")
    }
}
