//! The destination tables this crate writes, from the ONE catalog of `xmbridge-destinations` (every
//! Tier 1 and Tier 2 table of `docs/design/schema.md`, Fivetran's names). The engine prepares the
//! tables of the selected stream groups from it; streams fill rows by column name.

pub use xmbridge_destinations::catalog::{DISTRIBUTION_STATS, stats_column, table, tables};
