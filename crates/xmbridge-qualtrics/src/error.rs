//! Errors of the client: what the API said ([`ApiError`]) and what went wrong on our side ([`Error`]).

use std::fmt;

/// An error answer of the API, from the `meta` of its envelope (docs/design/qualtrics-api.md §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// `meta.error.errorCode`, when the answer carried one.
    pub error_code: Option<String>,
    /// `meta.error.errorMessage`, or a short excerpt of a body that was not an envelope.
    pub error_message: String,
    /// `meta.requestId`: quote it to Qualtrics support.
    pub request_id: Option<String>,
    /// The `Retry-After` header of the answer (429, some 503s), so a caller that schedules its
    /// own retries (a workflow's delivery worker) can honour it after the client gave up.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// 429 and 5xx answers that may succeed when tried again later.
    pub fn is_transient(&self) -> bool {
        is_transient_status(self.status)
    }
}

/// 429, 500, 502, 503 and 504 are worth retrying (docs/design/qualtrics-api.md §3.3); other
/// codes are not.
pub use xmbridge_auth::is_transient_status;

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Qualtrics answered {}", self.status)?;
        if let Some(code) = &self.error_code {
            write!(f, " {code}")?;
        }
        write!(f, ": {}", self.error_message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (requestId {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// Everything a client call can fail with. Messages name the problem and the fix and never
/// contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data-center id that is not one of Qualtrics' (see [`crate::DataCenter::parse`]).
    #[error("invalid data center: {0}")]
    InvalidDataCenter(String),
    /// An account URL, host or organization id that cannot name a Qualtrics account.
    #[error("invalid account URL: {0}")]
    InvalidBaseUrl(String),
    /// A client setting that cannot work (rate limits, headers, TLS setup).
    #[error("invalid client setting: {0}")]
    Config(String),
    /// The token source could not produce credentials (refresh refused, token endpoint down …).
    /// The message is the source's own; `AccountTokenExpired` carries the re-authorize command.
    #[error(transparent)]
    Auth(#[from] xmbridge_auth::AuthError),
    /// Qualtrics answered 401: the credentials were refused — for a token source, also after
    /// [`xmbridge_auth::TokenSource::invalidate`] and one retry with a fresh token.
    #[error("Qualtrics refused the {credential} ({api}). {hint}")]
    Unauthorized {
        /// What was sent, e.g. `API token` or the token source's description.
        credential: String,
        /// What to do about it.
        hint: String,
        /// The 401 answer (boxed: it keeps `Error` small).
        api: Box<ApiError>,
    },
    /// The API answered with an error envelope.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The request did not get an answer (connection refused, reset, TLS failure, timeout).
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// The URL without its query.
        url: String,
        /// What failed, with the causes, on one line.
        message: String,
        /// Whether the request surely never reached the server (safe to retry even a POST).
        not_sent: bool,
        /// Whether a timeout ended it.
        timeout: bool,
        /// The transport error itself (a `reqwest::Error` from the client), for callers that
        /// inspect it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer was not the JSON we expected.
    #[error("unexpected answer from {url}: {message}")]
    Decode {
        /// The URL without its query.
        url: String,
        /// What did not match.
        message: String,
    },
    /// `nextPage` pointed somewhere we will not follow.
    #[error("pagination stopped: {0}")]
    Pagination(String),
    /// A response export did not finish.
    #[error("response export of survey {survey_id} failed: {message}")]
    Export {
        /// The survey whose export failed.
        survey_id: String,
        /// What Qualtrics (or the wait) said.
        message: String,
    },
    /// A local file operation failed (temporary export files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A downloaded export is not a readable zip.
    #[error("the export file is not a valid zip archive (download truncated?): {0}")]
    Zip(String),
}

impl Error {
    /// What a caller does about this error (the list every client shares).
    pub fn kind(&self) -> xmbridge_auth::ErrorKind {
        use xmbridge_auth::ErrorKind as K;
        match self {
            Error::Auth(a) if a.needs_reauthorization() => K::Reauthorize,
            Error::Auth(a) if a.is_retryable() => K::Transient,
            Error::Auth(_) => K::Configuration,
            Error::Unauthorized { .. } => K::Reauthorize,
            Error::Api(e) if e.status == 429 => K::RateLimited,
            Error::Api(e) if e.is_transient() => K::Transient,
            Error::Api(_) | Error::Export { .. } => K::Refused,
            Error::Transport { .. } => K::Transient,
            Error::Config(_) | Error::InvalidBaseUrl(_) | Error::InvalidDataCenter(_) => {
                K::Configuration
            }
            Error::Decode { .. } | Error::Pagination(_) | Error::Zip(_) => K::Protocol,
            Error::Io { .. } => K::Local,
        }
    }

    /// The HTTP status of an API error answer (401 for [`Error::Unauthorized`]).
    pub fn status(&self) -> Option<u16> {
        self.api().map(|e| e.status)
    }

    /// The API's error answer, if the error is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            Error::Unauthorized { api, .. } => Some(api),
            _ => None,
        }
    }

    /// Whether trying the same idempotent call again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api(e) => e.is_transient(),
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn transport(url: &str, e: reqwest::Error) -> Error {
        // reqwest's Display is terse ("error sending request"); the source chain says why.
        let mut message = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        Error::Transport {
            url: strip_query(url),
            message,
            not_sent: e.is_connect(),
            timeout: e.is_timeout(),
            source: Box::new(e),
        }
    }
}

/// URLs in errors and logs lose their query (it may carry tokens such as a skipToken).
pub(crate) fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_and_request_id() {
        let e = ApiError {
            status: 404,
            error_code: Some("SURVEY_1".into()),
            error_message: "Survey 'SV_x' was not found.".into(),
            request_id: Some("r-1".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "Qualtrics answered 404 SURVEY_1: Survey 'SV_x' was not found. (requestId r-1)"
        );
        assert!(!e.is_transient());
        assert_eq!(Error::Api(e).kind(), xmbridge_auth::ErrorKind::Refused);
        assert!(is_transient_status(429) && is_transient_status(503) && !is_transient_status(501));
    }
}
