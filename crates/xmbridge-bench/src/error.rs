//! The one error type of the benchmarks.

/// Why a benchmark could not run or measure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A step failed; the message says which and why.
    #[error("{0}")]
    Failed(String),
    /// A step failed for the cause attached.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The destination under test.
    #[error(transparent)]
    Destination(#[from] xmbridge_destinations::DestError),
    /// The sync under test.
    #[error(transparent)]
    Sync(#[from] xmbridge_sync::SyncError),
    /// The Qualtrics client.
    #[error(transparent)]
    Qualtrics(#[from] xmbridge_qualtrics::Error),
    /// A simulator.
    #[error(transparent)]
    Simulator(#[from] xmbridge_sim::SimError),
    /// An action under test.
    #[error(transparent)]
    Action(#[from] xmbridge_actions::ActionError),
    /// The workflow state store.
    #[error(transparent)]
    Store(#[from] xmbridge_workflows::store::StoreError),
    /// The webhook receiver.
    #[error(transparent)]
    Receiver(#[from] xmbridge_server::receiver::ServeError),
    /// HTTP.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A file or process.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A stored value of the wrong size.
    #[error(transparent)]
    Slice(#[from] std::array::TryFromSliceError),
}

/// The benchmarks' result.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Attaches what was being done to an error (as `anyhow::Context` does, typed).
pub(crate) trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| BenchError::Context {
            context: context.into(),
            source: Box::new(e),
        })
    }
    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| BenchError::Context {
            context: context().into(),
            source: Box::new(e),
        })
    }
}
