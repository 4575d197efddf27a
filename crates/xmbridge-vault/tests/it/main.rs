//! Integration tests of `xmbridge-vault`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod vault;
