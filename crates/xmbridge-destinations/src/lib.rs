//! Destination writers: SQLite (the embedded default), PostgreSQL and Parquet (to be built in issue
//! #4).
//!
//! It will own schema creation and evolution, batched writes (binary COPY into a staging table and
//! a merge for PostgreSQL), and the transaction that commits a batch together with its sync
//! cursor. Identifiers that come from survey content (question ids, embedded data names) are
//! always quoted, never spliced into SQL. It must not know about Qualtrics or its API; it receives
//! typed records and cursors from `xmbridge-sync`.
