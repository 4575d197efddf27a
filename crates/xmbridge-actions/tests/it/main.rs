//! Integration tests of `xmbridge-actions`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod qualtrics;
mod salesforce;
mod servicenow;
