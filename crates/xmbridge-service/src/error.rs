//! The service's error type.

/// What went wrong, for callers that branch on it (the API maps it onto an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request or input is malformed or invalid (422 / exit 2).
    Invalid,
    /// Not signed in, or the credentials are wrong or expired (401).
    Unauthenticated,
    /// Signed in, but a rule forbids it (403).
    Forbidden,
    /// No such user, connection, run, workflow or account (404).
    NotFound,
    /// It conflicts with the current state (409): a duplicate name, a second server on a home.
    Conflict,
    /// Too many attempts (429).
    TooMany,
    /// The state store or another part failed (500).
    Internal,
}

/// An error of the service, with the fix a person should apply where one is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A rule of the service refused the request or input.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        kind: ErrorKind,
        /// A short machine-readable code (`forbidden_role`, `invalid_schedule` …).
        code: &'static str,
        /// What was wrong, for a person.
        message: String,
        /// What to do about it, when known.
        fix: Option<String>,
    },
    /// The state store failed.
    #[error("state store: {context}")]
    Store {
        /// What was being done.
        context: String,
        /// The database error.
        #[source]
        source: rusqlite::Error,
    },
    /// The state store failed (a component on [`xmbridge_state::db::StateDb`]).
    #[error("state store: {context}")]
    State {
        /// What was being done.
        context: String,
        /// The database error.
        #[source]
        source: xmbridge_state::db::DbError,
    },
    /// The service's tables could not be brought to this build's version, or are at a newer
    /// one.
    #[error(transparent)]
    Migrate(Box<xmbridge_state::MigrateError>),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] xmbridge_vault::VaultError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] xmbridge_runtime::RuntimeError),
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    /// A refusal with its kind, code, message and fix.
    pub fn refused(
        kind: ErrorKind,
        code: &'static str,
        message: impl Into<String>,
        fix: Option<String>,
    ) -> ServiceError {
        ServiceError::Refused {
            kind,
            code,
            message: message.into(),
            fix,
        }
    }

    /// A state-store error with what was being done.
    pub fn store(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> ServiceError {
        let context = context.into();
        move |source| ServiceError::Store { context, source }
    }

    /// The same for a component on [`xmbridge_state::db::StateDb`].
    pub fn state(
        context: impl Into<String>,
    ) -> impl FnOnce(xmbridge_state::db::DbError) -> ServiceError {
        let context = context.into();
        move |source| ServiceError::State { context, source }
    }

    /// The kind, for branching.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Refused { kind, .. } => *kind,
            ServiceError::Runtime(r) if r.kind() == xmbridge_runtime::ErrorKind::Usage => {
                ErrorKind::Invalid
            }
            _ => ErrorKind::Internal,
        }
    }

    /// The fix, when one is known.
    pub fn fix(&self) -> Option<&str> {
        match self {
            ServiceError::Refused { fix, .. } => fix.as_deref(),
            _ => None,
        }
    }
}

/// The service's result.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// A statement or commit inside a state-store transaction ([`xmbridge_state::db::StateDb::tx`])
/// that failed without a more precise context.
impl From<xmbridge_state::db::DbError> for ServiceError {
    fn from(source: xmbridge_state::db::DbError) -> Self {
        match source {
            xmbridge_state::db::DbError::Migrate(e) => ServiceError::Migrate(e),
            source => ServiceError::State {
                context: "a transaction".into(),
                source,
            },
        }
    }
}

impl From<xmbridge_state::MigrateError> for ServiceError {
    fn from(e: xmbridge_state::MigrateError) -> Self {
        ServiceError::Migrate(Box::new(e))
    }
}
