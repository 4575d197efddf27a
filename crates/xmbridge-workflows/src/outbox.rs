//! The outbox: the one door events come in by. [`Outbox::enqueue`] returns only after the event
//! is committed in the state store (so a webhook is answered 200 only for an event that survives
//! a crash), drops duplicates by dedupe key, and wakes the workers. It does not deliver anything
//! (that is [`crate::worker`]).

use std::sync::Arc;

use tokio::sync::Notify;

use crate::store::{Enqueued, NewEvent, Store, StoreError, now_ms};

/// Shared handle to the store plus the workers' wake-up signal.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
}

impl Outbox {
    /// An outbox over `store` with a fresh wake-up signal; clones share both.
    pub fn new(store: Arc<dyn Store>) -> Outbox {
        Outbox {
            store,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The state store events are committed to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The signal workers wait on between polls.
    pub fn wake_signal(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Commits one event (or finds its duplicate), then wakes a worker.
    pub fn enqueue(&self, event: &NewEvent) -> Result<Enqueued, StoreError> {
        let r = self.store.enqueue(event, now_ms())?;
        match &r {
            Enqueued::New(id) => {
                tracing::info!(event = %id, workflow = %event.workflow, source = event.source.as_str(),
                    dedupe_key = %event.dedupe_key, "event stored");
                self.wake.notify_waiters();
                self.wake.notify_one();
            }
            Enqueued::Duplicate(id) => {
                tracing::info!(event = %id, workflow = %event.workflow,
                    dedupe_key = %event.dedupe_key, "duplicate event acknowledged and dropped");
            }
        }
        Ok(r)
    }

    /// Commits a batch of events in one transaction (a sync's commit of responses): all are
    /// stored, duplicates dropped, before this returns; on an error none are.
    pub fn enqueue_batch(&self, events: &[NewEvent]) -> Result<Vec<Enqueued>, StoreError> {
        let r = self.store.enqueue_batch(events, now_ms())?;
        let new = r.iter().filter(|e| matches!(e, Enqueued::New(_))).count();
        if new > 0 {
            tracing::info!(new, duplicates = r.len() - new, "events stored");
            self.wake.notify_waiters();
            self.wake.notify_one();
        }
        Ok(r)
    }

    /// Commits several events (one Salesforce outbound message); all are stored before this
    /// returns, or the first error is returned (the sender then retries the whole message and
    /// the ones already stored are dropped as duplicates).
    pub fn enqueue_all(&self, events: &[NewEvent]) -> Result<Vec<Enqueued>, StoreError> {
        events.iter().map(|e| self.enqueue(e)).collect()
    }
}
