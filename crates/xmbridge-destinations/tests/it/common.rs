//! Helpers the destination test modules share.

use xmbridge_destinations::{Column, ColumnType, CommitStats, TableBatch, Value};

/// A spec column.
pub fn col(name: &str, ty: ColumnType) -> Column {
    Column {
        name: name.to_string(),
        ty,
    }
}

/// Rows to insert or update in `table`, nothing deleted, not marked fresh.
pub fn upserts(table: &str, rows: Vec<Vec<Value>>) -> TableBatch {
    TableBatch {
        table: table.into(),
        upserts: rows,
        ..Default::default()
    }
}

/// (inserted, updated, deleted) of `table` in a commit's stats.
pub fn stat(s: &CommitStats, table: &str) -> (u64, u64, u64) {
    s.tables
        .iter()
        .find(|e| e.0 == table)
        .map(|e| (e.1, e.2, e.3))
        .unwrap_or_default()
}
