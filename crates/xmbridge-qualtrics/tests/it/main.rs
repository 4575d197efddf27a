//! Integration tests of `xmbridge-qualtrics`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod capabilities;
mod client_auth;
mod client_fake;
mod client_limits;
mod client_sim;
