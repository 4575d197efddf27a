//! Integration tests of `xmbridge-salesforce`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod client;
