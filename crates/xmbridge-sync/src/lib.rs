//! The sync engine: Qualtrics streams into destinations, incremental and resumable (to be built in
//! issue #4).
//!
//! It will own the streams and their shapes from `schema.md` (Fivetran-compatible table and
//! column names), a cursor per stream (responses through the export API's continuation token),
//! flattening of survey definitions into question/choice/block tables, soft-marked deletes, new
//! columns for new questions and embedded data, and committing data and cursor together so a killed
//! sync resumes with nothing lost or doubled. It reads Qualtrics only through
//! `xmbridge-qualtrics` and writes only through `xmbridge-destinations`; it must not build HTTP
//! requests or SQL itself.
