//! The binary under test and what its tests add to the test kit's installation.

pub use xmbridge_test_kit::cli::{Install, Run, start_runner};
use xmbridge_workflows::store::WorkflowStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_xmbridge");

/// A temporary installation running this package's `xmbridge` binary as user `pat`.
pub fn install() -> Install {
    Install::new(BIN).user("pat")
}

/// The installation's state store, opened directly.
pub trait StateStore {
    fn store(&self) -> WorkflowStore;
}

impl StateStore for Install {
    fn store(&self) -> WorkflowStore {
        WorkflowStore::open(self.home().join("state.db")).expect("the state store opens")
    }
}
