//! The exactly-once sync → workflow trigger: workflows triggered by `sync-responses` get one
//! outbox event per new or changed response ([`WorkflowTrigger`], a [`ResponseObserver`]). The
//! events are committed in the state store before each response commit of the destination, so
//! a sync killed in between loses none (the next run re-exports those responses and the
//! duplicates are dropped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use xmbridge_actions::Registry;
use xmbridge_sync::{ExportKind, ObserverError, ResponseObserver, SeenBatch};
use xmbridge_workflows::catalog::{self, Sources};
use xmbridge_workflows::definition::{DefinitionError, Trigger};
use xmbridge_workflows::event::sync_response_event;
use xmbridge_workflows::outbox::Outbox;
use xmbridge_workflows::store::{Enqueued, NewEvent, WorkflowStore};

use crate::error::Result;

/// The names of the `sync-responses` workflows by survey id.
pub fn sync_workflows(
    sources: &Sources,
    registry: &Registry,
) -> Result<BTreeMap<String, Vec<String>>, DefinitionError> {
    let cat = catalog::load(sources, registry)?;
    let mut by_survey: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in cat.entries {
        if let Trigger::SyncResponses { survey_id } = &entry.workflow.trigger {
            by_survey
                .entry(survey_id.clone())
                .or_default()
                .push(entry.workflow.name.clone());
        }
    }
    Ok(by_survey)
}

/// What a trigger enqueued during a sync.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TriggerCounts {
    /// New outbox events.
    pub new_events: u64,
    /// Events already in the outbox (a re-exported response).
    pub duplicates: u64,
    /// Responses of first loads and full re-exports, which trigger nothing by default.
    pub not_triggered: u64,
}

/// Enqueues one outbox event per (sync-responses workflow of the survey, response seen).
pub struct WorkflowTrigger {
    outbox: Outbox,
    /// Workflow names by survey id.
    by_survey: BTreeMap<String, Vec<String>>,
    on_first_load: bool,
    new_events: AtomicU64,
    duplicates: AtomicU64,
    not_triggered: AtomicU64,
}

impl WorkflowTrigger {
    /// A trigger enqueueing into `outbox`; with `on_first_load`, first loads and full
    /// re-exports trigger too.
    pub fn new(
        outbox: Outbox,
        by_survey: BTreeMap<String, Vec<String>>,
        on_first_load: bool,
    ) -> WorkflowTrigger {
        WorkflowTrigger {
            outbox,
            by_survey,
            on_first_load,
            new_events: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            not_triggered: AtomicU64::new(0),
        }
    }

    /// The trigger of `by_survey` on the state store at `state`, or `None` when no workflow
    /// is triggered by a sync.
    pub fn open(
        state: &xmbridge_state::db::StateLocation,
        by_survey: BTreeMap<String, Vec<String>>,
        on_first_load: bool,
    ) -> Result<Option<WorkflowTrigger>> {
        if by_survey.is_empty() {
            return Ok(None);
        }
        let store = WorkflowStore::open_at(state)?;
        let outbox = Outbox::new(Arc::new(store));
        Ok(Some(WorkflowTrigger::new(outbox, by_survey, on_first_load)))
    }

    /// What it enqueued so far.
    pub fn counts(&self) -> TriggerCounts {
        TriggerCounts {
            new_events: self.new_events.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            not_triggered: self.not_triggered.load(Ordering::Relaxed),
        }
    }
}

impl ResponseObserver for WorkflowTrigger {
    fn responses_seen<'a>(
        &'a self,
        batch: SeenBatch<'a>,
    ) -> BoxFuture<'a, Result<(), ObserverError>> {
        Box::pin(async move {
            let Some(workflows) = self.by_survey.get(batch.survey_id) else {
                return Ok(());
            };
            if batch.kind != ExportKind::Incremental && !self.on_first_load {
                // A first load or full re-export holds the survey's history, not news.
                self.not_triggered
                    .fetch_add(batch.responses.len() as u64, Ordering::Relaxed);
                return Ok(());
            }
            let events: Vec<NewEvent> = workflows
                .iter()
                .flat_map(|w| {
                    batch.responses.iter().map(move |r| {
                        sync_response_event(w, batch.survey_id, &r.response_id, &r.last_modified)
                    })
                })
                .collect();
            let outbox = self.outbox.clone();
            // SQLite commits block: keep them off the async workers.
            let stored =
                tokio::task::spawn_blocking(move || outbox.enqueue_batch(&events)).await??;
            let new = stored
                .iter()
                .filter(|e| matches!(e, Enqueued::New(_)))
                .count() as u64;
            self.new_events.fetch_add(new, Ordering::Relaxed);
            self.duplicates
                .fetch_add(stored.len() as u64 - new, Ordering::Relaxed);
            Ok(())
        })
    }
}
