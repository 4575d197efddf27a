//! The binary under test and what its tests add to the test kit's installation.

pub use xmbridge_test_kit::cli::{Install, Run, start_runner};
use xmbridge_workflows::store::WorkflowStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_xmbridge");

/// A temporary installation running this package's `xmbridge` binary as user `pat`.
pub fn install() -> Install {
    Install::new(BIN).user("pat")
}

/// The master key of the test installations that share one PostgreSQL state store (every
/// process on a store needs the same one).
pub const SHARED_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// [`install`] with [`SHARED_KEY`] as its master key.
pub fn install_sharing_key() -> Install {
    let mut i = install();
    i.master_key = Some(SHARED_KEY.into());
    i
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
