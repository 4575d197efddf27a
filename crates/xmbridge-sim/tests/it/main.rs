//! Integration tests of `xmbridge-sim`: one test binary, one module per area, so the suite links
//! once per crate instead of once per file.

mod directory;
mod distributions;
mod eventsubs;
mod export;
mod faults;
mod libraries_users;
mod mtls;
mod oauth;
mod salesforce;
mod servicenow;
mod surveys;
