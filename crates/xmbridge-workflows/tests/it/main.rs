//! Integration tests of `xmbridge-workflows`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod accounts;
mod delivery;
mod salesforce_describe;
