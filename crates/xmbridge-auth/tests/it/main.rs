//! Integration tests of `xmbridge-auth`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod authorize;
mod common;
mod identity;
mod tokens;
