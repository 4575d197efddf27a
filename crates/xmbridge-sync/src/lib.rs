//! The sync engine: Qualtrics streams into destinations, incremental and resumable.
//!
//! It owns the streams and their shapes from `docs/design/schema.md` (Fivetran-compatible table and
//! column names, the table [`catalog`] destinations are given), a cursor per stream (responses
//! through the export API's continuation token), flattening of survey definitions into
//! question/choice/block tables and of responses into one row per answer cell, soft-marked
//! deletes, and committing data and cursor together so a killed sync resumes with nothing lost or
//! doubled. It reads Qualtrics only through `xmbridge-qualtrics` and writes only through
//! `xmbridge-destinations`; it must not build HTTP requests or SQL itself.
//!
//! Entry point: [`sync`] with [`SyncOptions`]; it returns a [`SyncSummary`] or a [`SyncError`]
//! naming the table and survey at fault. Progress goes to a [`Progress`] ([`NoProgress`],
//! [`LogProgress`], or the CLI's bars). Streams, their cursors and exactly-once arguments are
//! described in `docs/sync.md`.

pub mod catalog;
mod convert;
mod engine;
pub mod observer;
mod progress;
mod streams;

pub use engine::{
    Reloaded, Skipped, SyncError, SyncOptions, SyncSummary, TableCounts, check_selection, sync,
};
pub use observer::{
    ExportKind, Observer, ObserverError, ResponseObserver, SeenBatch, SeenResponse,
};
pub use progress::{LogProgress, NoProgress, Progress};
pub use streams::responses::answer_id;
