//! Metadata Retrieval: the brand's directories and libraries (what the spoke feeds its dynamic
//! inputs with).

use super::{Call, QualtricsAction};
use crate::{ActionError, ActionSpec, System};
use futures_util::future::BoxFuture;
use serde_json::Value;

const CATEGORY: &str = "Metadata Retrieval";

static DIRECTORIES: ActionSpec = ActionSpec {
    name: "look-up-directories-metadata",
    system: System::Qualtrics,
    title: "Look up Directories Metadata",
    category: CATEGORY,
    inputs: &[],
    stream: false,
    writes: false,
};

static LIBRARIES: ActionSpec = ActionSpec {
    name: "look-up-libraries-metadata",
    system: System::Qualtrics,
    title: "Look up Libraries Metadata",
    category: CATEGORY,
    inputs: &[],
    stream: false,
    writes: false,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![
        QualtricsAction::new(&DIRECTORIES, directories),
        QualtricsAction::new(&LIBRARIES, libraries),
    ]
}

fn directories(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move { call.collect(call.url(&["directories"])).await })
}

fn libraries(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move { call.collect(call.url(&["libraries"])).await })
}
