//! Integration tests of `xmbridge-sync`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod common;
mod sync_core;
mod sync_observer;
mod sync_real;
mod sync_reconcile;
mod sync_streams;
