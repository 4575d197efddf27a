//! What a sync opens around the engine: the destination (unusable settings are the caller's
//! mistake; another sync holding it stays a `DestError::Busy` cause) and the trigger of the
//! `sync-responses` workflows defined in the workflow files.

use std::path::PathBuf;

use xmbridge_destinations::{Compat, DestError, Destination, DestinationSettings, Fence};
use xmbridge_vault::Home;
use xmbridge_workflows::catalog::Sources;

use crate::trigger::{WorkflowTrigger, sync_workflows};
use crate::{Result, RuntimeError};

/// Opens the destination of `settings` in `schema`, claimed for a leased run's `fence` when
/// there is one (the scheduler's runs; a sync from the command line has none).
pub async fn open_destination(
    settings: &DestinationSettings,
    schema: &str,
    compat: Compat,
    fence: Option<Fence>,
) -> Result<Box<dyn Destination>> {
    xmbridge_destinations::open(settings, schema, compat, fence)
        .await
        .map_err(|e| match e {
            DestError::Settings(m) | DestError::UrlOption(m) => RuntimeError::Usage(m),
            e @ DestError::UnknownScheme { .. } => RuntimeError::Usage(e.to_string()),
            other => RuntimeError::Destination {
                message: "cannot open the destination".into(),
                source: Box::new(other),
            },
        })
}

/// The trigger of the `sync-responses` workflows found from `config` (and the standard places
/// under `home`), or `None` when there are none.
pub fn workflow_trigger(
    home: &Home,
    state: &xmbridge_state::db::StateLocation,
    config: Option<PathBuf>,
    on_first_load: bool,
) -> Result<Option<WorkflowTrigger>> {
    let sources = Sources::standard(config, Some(home.root()));
    let by_survey = sync_workflows(&sources, &crate::workflow::registry()).map_err(|e| {
        RuntimeError::usage(format!(
            "{e} (fix the workflow definitions, or pass --no-triggers to sync without them)"
        ))
    })?;
    WorkflowTrigger::open(state, by_survey, on_first_load)
}

impl RuntimeError {
    /// Whether another sync is writing the destination (try again later).
    pub fn destination_busy(&self) -> bool {
        matches!(self, RuntimeError::Destination { source, .. } if matches!(**source, DestError::Busy { .. }))
    }
}
