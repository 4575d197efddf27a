//! Integration tests of `xmbridge-destinations`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

// Test code may unwrap: a panic is how a test reports a failure (clippy.toml allows it inside
// #[test] functions; this covers the helpers beside them).
#![allow(clippy::unwrap_used)]

mod common;
mod delta;
mod delta_s3;
mod destinations;
mod interface;
