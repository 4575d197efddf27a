//! The one error type of the runtime. Messages are the ones users see (the CLI prints them as
//! they are); causes stay attached as `source`.

/// Why the runtime could not turn stored state into a running client, sync or workflow process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// What the caller asked for cannot work as given (an ambiguous choice, an unusable
    /// definition or address); the CLI exits with code 2.
    #[error("{0}")]
    Usage(String),
    /// A stored connection or account lacks a setting or secret it needs, or a remote system
    /// refused to prove it; the message says how to fix it.
    #[error("{0}")]
    Unusable(String),
    /// The stored settings of a connection cannot be read.
    #[error("{message}")]
    Settings {
        /// What cannot be read, and the fix.
        message: String,
        /// What the JSON reader said.
        #[source]
        source: serde_json::Error,
    },
    /// A URL given or stored is not a URL.
    #[error("{message}")]
    Url {
        /// Which URL, and why it is needed.
        message: String,
        /// What the URL parser said.
        #[source]
        source: url::ParseError,
    },
    /// A file could not be written.
    #[error("{context}")]
    Io {
        /// What was being done, e.g. `write PATH`.
        context: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A workflow definition could not be written as TOML.
    #[error("{message}")]
    Toml {
        /// What was being written.
        message: String,
        /// What the TOML writer said.
        #[source]
        source: toml::ser::Error,
    },
    /// The sealed-secret store.
    #[error(transparent)]
    Vault(#[from] xmbridge_vault::VaultError),
    /// The workflow state store.
    #[error(transparent)]
    Store(#[from] xmbridge_workflows::store::StoreError),
    /// The account rules refused.
    #[error(transparent)]
    Account(#[from] xmbridge_workflows::accounts::AccountError),
    /// A token, certificate or OAuth exchange failed.
    #[error(transparent)]
    Auth(#[from] xmbridge_auth::AuthError),
    /// The Qualtrics client.
    #[error(transparent)]
    Qualtrics(#[from] xmbridge_qualtrics::Error),
    /// The delivery workers.
    #[error(transparent)]
    Worker(#[from] xmbridge_workflows::worker::WorkerError),
    /// A task of the workflow process panicked or was cancelled.
    #[error("a task of the workflow process stopped: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// An HTTP client could not be built.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// Salesforce refused or could not set up a call.
    #[error(transparent)]
    Salesforce(#[from] xmbridge_salesforce::SalesforceError),
    /// A secret or file the operator gave could not be read.
    #[error("{context}")]
    Input {
        /// What was being read, e.g. `cannot read the client secret from PATH`.
        context: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A Qualtrics connection failed a step that names it (e.g. it cannot authenticate).
    #[error("{message}")]
    Connection {
        /// Which connection, and the step.
        message: String,
        /// What the Qualtrics client said.
        #[source]
        source: xmbridge_qualtrics::Error,
    },
    /// A destination could not be opened (another sync holding it is a `DestError::Busy` cause).
    #[error("{message}")]
    Destination {
        /// What was being done.
        message: String,
        /// What the destination said.
        #[source]
        source: Box<xmbridge_destinations::DestError>,
    },
}

/// What a caller branches on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A mistake in what was asked for ([`RuntimeError::Usage`]).
    Usage,
    /// Anything else.
    Other,
}

impl RuntimeError {
    /// Whether the caller asked for something that cannot work ([`ErrorKind::Usage`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::Usage(_) => ErrorKind::Usage,
            _ => ErrorKind::Other,
        }
    }

    pub(crate) fn usage(msg: impl Into<String>) -> RuntimeError {
        RuntimeError::Usage(msg.into())
    }

    pub(crate) fn unusable(msg: impl Into<String>) -> RuntimeError {
        RuntimeError::Unusable(msg.into())
    }
}

/// The runtime's result.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
