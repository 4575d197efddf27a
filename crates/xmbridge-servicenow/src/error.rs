//! Errors classified so a caller knows whether to retry, pause (re-authorize) or give up.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
/// A failed ServiceNow call, classified for the caller's retry, pause or give-up decision.
pub enum Error {
    /// The account's credentials or refresh token were refused: a person must re-authorize.
    #[error("ServiceNow account token expired ({instance}): {reason}; re-authorize the account")]
    AuthExpired {
        /// The instance's base URL.
        instance: String,
        /// Which credential was refused and what the token endpoint said.
        reason: String,
    },
    /// HTTP 429 (a rate-limit rule): wait `retry_after`, keep the work queued.
    #[error("ServiceNow rate limit reached{}{}", .rule.as_ref().map(|r| format!(" (rule {r})")).unwrap_or_default(), .retry_after.map(|d| format!("; retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The instance's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// The rate-limit rule that fired (`X-RateLimit-Rule`), when named.
        rule: Option<String>,
    },
    /// 5xx, timeouts, connection failures: may pass.
    #[error("ServiceNow is unavailable{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Transient {
        /// The HTTP status; `None` for a timeout or connection failure.
        status: Option<u16>,
        /// What failed, for a person.
        message: String,
        /// The underlying failure (the HTTP client's error for a network failure), when there is
        /// one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The instance refused the request for a reason a retry cannot fix (400, 403 ACL or data
    /// policy, 405 …).
    #[error("ServiceNow refused the request (HTTP {status}): {message}{}", .detail.as_ref().map(|d| format!(" — {d}")).unwrap_or_default())]
    Permanent {
        /// The HTTP status.
        status: u16,
        /// The instance's error message.
        message: String,
        /// The instance's error detail, when it gave one.
        detail: Option<String>,
    },
    /// 404: no such record (or an ACL hides it), or an unknown API path.
    #[error("ServiceNow: {what} not found: {message}")]
    NotFound {
        /// What was looked for (a record, a table, a path).
        what: String,
        /// The instance's detail or message.
        message: String,
    },
    /// A field name in a query or field list does not exist on the table (a typo would otherwise
    /// make ServiceNow ignore that part of the query and match every row).
    #[error("table {table} has no field `{field}` (check the spelling; known fields: {known})")]
    UnknownField {
        /// The table the field was looked up in.
        table: String,
        /// The unknown field name.
        field: String,
        /// The table's field names, comma-separated, for the message.
        known: String,
    },
    /// The client was configured wrongly (bad URL …).
    #[error("ServiceNow client configuration: {message}")]
    Config {
        /// What is wrong, for a person.
        message: String,
        /// The underlying error (a URL that does not parse …), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The instance answered something this client cannot read.
    #[error("unexpected ServiceNow answer: {message}")]
    Decode {
        /// What could not be read, for a person.
        message: String,
        /// The underlying error (the JSON decoder's …), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// A configuration error caused by `source`.
    pub(crate) fn config_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Config {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// An unreadable answer with only a message.
    pub(crate) fn decode(message: impl Into<String>) -> Error {
        Error::Decode {
            message: message.into(),
            source: None,
        }
    }

    /// An unreadable answer caused by `source`.
    pub(crate) fn decode_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Decode {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl Error {
    /// What a caller does about this error (the list every client shares).
    pub fn kind(&self) -> xmbridge_auth::ErrorKind {
        use xmbridge_auth::ErrorKind as K;
        match self {
            Error::AuthExpired { .. } => K::Reauthorize,
            Error::RateLimited { .. } => K::RateLimited,
            Error::Transient { .. } => K::Transient,
            Error::Permanent { .. } | Error::NotFound { .. } | Error::UnknownField { .. } => {
                K::Refused
            }
            Error::Config { .. } => K::Configuration,
            Error::Decode { .. } => K::Protocol,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::RateLimited { .. } | Error::Transient { .. })
    }

    /// The server's requested wait, for rate limits.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let rl = Error::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
            rule: Some("abc".into()),
        };
        assert!(rl.is_retryable());
        assert_eq!(rl.kind(), xmbridge_auth::ErrorKind::RateLimited);
        assert_eq!(
            rl.to_string(),
            "ServiceNow rate limit reached (rule abc); retry after 30 s"
        );
        assert!(
            Error::Transient {
                status: Some(503),
                message: "x".into(),
                source: None,
            }
            .is_retryable()
        );
        let p = Error::Permanent {
            status: 403,
            message: "Operation Failed".into(),
            detail: Some("ACL Exception Insert Failed due to security constraints".into()),
        };
        assert!(!p.is_retryable());
        assert!(p.to_string().contains("ACL Exception"));
        let e = Error::AuthExpired {
            instance: "http://127.0.0.1:1".into(),
            reason: "refresh token refused".into(),
        };
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), xmbridge_auth::ErrorKind::Reauthorize);
        assert!(e.to_string().contains("account token expired"));
    }
}
