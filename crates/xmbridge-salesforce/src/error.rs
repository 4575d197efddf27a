//! Errors of the Salesforce client, classified for the caller: pause (token expired), slow down
//! (limits), retry (transient) or give up (permanent, multiple matches).

use std::time::Duration;

/// One element of Salesforce's error array (`errorCode` on REST calls, `statusCode` inside
/// Collections results).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SfError {
    #[serde(alias = "errorCode", alias = "statusCode")]
    /// The error's code (`REQUIRED_FIELD_MISSING`, `DUPLICATE_VALUE`, …).
    pub error_code: String,
    #[serde(default)]
    /// Salesforce's message, for a person.
    pub message: String,
    #[serde(default)]
    /// The fields the error is about, when it names any.
    pub fields: Vec<String>,
}

impl std::fmt::Display for SfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_code, self.message)?;
        if !self.fields.is_empty() {
            write!(f, " (fields: {})", self.fields.join(", "))?;
        }
        Ok(())
    }
}

/// The errors for a message, bounded as a whole (an answer may carry many).
fn join(errors: &[SfError]) -> String {
    xmbridge_auth::upstream_text(
        &errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

pub use xmbridge_auth::ErrorKind;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
/// A failed Salesforce call, classified for the caller's retry, pause or give-up decision.
pub enum SalesforceError {
    /// The refresh token (or client credentials) was refused for good: the account must be
    /// re-authorized.
    #[error(
        "account token expired: Salesforce refused the stored token ({description}); re-authorize the account"
    )]
    TokenExpired {
        /// Why the token was refused: the token endpoint's description, or the client's own words.
        description: String,
    },
    /// Any other token-endpoint refusal (wrong client id/secret, flow not enabled, IP range).
    #[error("Salesforce OAuth error {error}: {description}")]
    OAuth {
        /// The token endpoint's `error` code.
        error: String,
        /// The token endpoint's description of the refusal.
        description: String,
    },
    /// HTTP 429.
    #[error("Salesforce throttled the request (HTTP 429){}", after(.retry_after))]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// 403 REQUEST_LIMIT_EXCEEDED: the org's daily API allowance is used up.
    #[error("Salesforce API request limit exceeded{}: {message}", usage_text(.usage))]
    LimitExceeded {
        /// Salesforce's message.
        message: String,
        /// The org's API usage from the answer's `Sforce-Limit-Info`, when present.
        usage: Option<crate::ApiUsage>,
    },
    /// 5xx, UNABLE_TO_LOCK_ROW, network failures: may pass.
    #[error("Salesforce is temporarily unavailable: {message}")]
    Transient {
        /// The HTTP status; `None` for a network failure.
        status: Option<u16>,
        /// What failed, for a person.
        message: String,
        /// The underlying failure (the HTTP client's error for a network failure), when there is
        /// one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The request was refused for a reason a retry cannot fix.
    #[error("Salesforce refused the request (HTTP {status}): {}", join(.errors))]
    Permanent {
        /// The HTTP status.
        status: u16,
        /// Salesforce's error array.
        errors: Vec<SfError>,
    },
    /// An upsert key matched several records (HTTP 300); nothing was written.
    #[error("the external id matches {} records ({}); nothing was written", .ids.len(), .ids.join(", "))]
    MultipleMatches {
        /// The ids of the matching records (the 300 answer's list).
        ids: Vec<String>,
    },
    /// The rotated refresh token could not be persisted by the caller's sink.
    #[error("cannot store the rotated Salesforce refresh token: {0}")]
    Sink(#[source] xmbridge_auth::SinkError),
    /// Salesforce answered something this client does not understand.
    #[error("unexpected answer from Salesforce: {message}")]
    Protocol {
        /// What could not be understood, for a person.
        message: String,
        /// The underlying error (the JSON decoder's, the URL parser's …), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

fn after(d: &Option<Duration>) -> String {
    d.map(|d| format!("; retry after {} s", d.as_secs().max(1)))
        .unwrap_or_default()
}

fn usage_text(u: &Option<crate::ApiUsage>) -> String {
    u.map(|u| format!(" ({}/{} calls used)", u.used, u.max))
        .unwrap_or_default()
}

/// Token-endpoint failures of the shared OAuth stack, in Salesforce's classification.
impl From<xmbridge_auth::AuthError> for SalesforceError {
    fn from(e: xmbridge_auth::AuthError) -> Self {
        use xmbridge_auth::AuthError as A;
        match e {
            A::AccountTokenExpired { detail, .. } => SalesforceError::TokenExpired {
                description: detail,
            },
            A::RefreshTokenNotSaved { source, .. } => SalesforceError::Sink(source),
            A::OAuth { error, detail, .. } => SalesforceError::OAuth {
                error,
                description: detail,
            },
            A::InvalidClient { detail, .. } => SalesforceError::OAuth {
                error: "invalid_client".into(),
                description: detail,
            },
            A::InvalidScope { detail, .. } => SalesforceError::OAuth {
                error: "invalid_scope".into(),
                description: detail,
            },
            A::UnauthorizedClient { detail, .. } => SalesforceError::OAuth {
                error: "unauthorized_client".into(),
                description: detail,
            },
            A::AuthorizationCodeRejected { detail, .. } => SalesforceError::OAuth {
                error: "invalid_grant".into(),
                description: detail,
            },
            A::Network { detail, .. } => SalesforceError::Transient {
                status: None,
                message: format!("network error: {detail}"),
                source: None,
            },
            A::Server { status, detail, .. } => SalesforceError::Transient {
                status: Some(status),
                message: format!("the token endpoint failed ({detail})"),
                source: None,
            },
            e @ A::TlsHandshake { .. } => SalesforceError::Transient {
                status: None,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            other => SalesforceError::protocol_from(other.to_string(), other),
        }
    }
}

impl SalesforceError {
    /// An answer this client does not understand, with only a message.
    pub(crate) fn protocol(message: impl Into<String>) -> SalesforceError {
        SalesforceError::Protocol {
            message: message.into(),
            source: None,
        }
    }

    /// An answer this client does not understand, caused by `source`.
    pub(crate) fn protocol_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> SalesforceError {
        SalesforceError::Protocol {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What a caller does about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SalesforceError::TokenExpired { .. } => ErrorKind::Reauthorize,
            SalesforceError::OAuth { .. } => ErrorKind::Configuration,
            SalesforceError::RateLimited { .. } | SalesforceError::LimitExceeded { .. } => {
                ErrorKind::RateLimited
            }
            SalesforceError::Transient { .. } => ErrorKind::Transient,
            SalesforceError::Sink(_) => ErrorKind::Local,
            SalesforceError::Permanent { .. } | SalesforceError::MultipleMatches { .. } => {
                ErrorKind::Refused
            }
            SalesforceError::Protocol { .. } => ErrorKind::Protocol,
        }
    }

    /// True when trying again later can succeed (limits, 5xx, row locks, network).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SalesforceError::RateLimited { .. }
                | SalesforceError::LimitExceeded { .. }
                | SalesforceError::Transient { .. }
        )
    }

    /// The Salesforce error codes carried, if any.
    pub fn codes(&self) -> Vec<&str> {
        match self {
            SalesforceError::Permanent { errors, .. } => {
                errors.iter().map(|e| e.error_code.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Classifies an error answer of the REST API.
    pub(crate) fn from_rest(
        status: u16,
        retry_after: Option<Duration>,
        usage: Option<crate::ApiUsage>,
        body: &[u8],
    ) -> SalesforceError {
        // Upstream text is bounded so a huge answer cannot flood errors, logs and stored errors.
        let mut errors: Vec<SfError> = serde_json::from_slice(body).unwrap_or_default();
        for e in &mut errors {
            e.error_code = xmbridge_auth::upstream_text(&e.error_code);
            e.message = xmbridge_auth::upstream_text(&e.message);
        }
        let has = |code: &str| errors.iter().any(|e| e.error_code == code);
        let first_message = errors
            .first()
            .map(|e| e.message.clone())
            .unwrap_or_else(|| xmbridge_auth::upstream_bytes(body));
        if status == 429 {
            return SalesforceError::RateLimited { retry_after };
        }
        if has("REQUEST_LIMIT_EXCEEDED") {
            return SalesforceError::LimitExceeded {
                message: first_message,
                usage,
            };
        }
        if xmbridge_auth::StatusClass::of(status).is_server_error()
            || has("UNABLE_TO_LOCK_ROW")
            || has("SERVER_UNAVAILABLE")
        {
            return SalesforceError::Transient {
                status: Some(status),
                message: first_message,
                source: None,
            };
        }
        let errors = if errors.is_empty() {
            vec![SfError {
                error_code: format!("HTTP_{status}"),
                message: first_message,
                fields: Vec::new(),
            }]
        } else {
            errors
        };
        SalesforceError::Permanent { status, errors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = SalesforceError::from_rest(
            400,
            None,
            None,
            br#"[{"message":"Required fields are missing: [LastName]","errorCode":"REQUIRED_FIELD_MISSING","fields":["LastName"]}]"#,
        );
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert_eq!(e.codes(), vec!["REQUIRED_FIELD_MISSING"]);
        assert!(e.to_string().contains("LastName"), "{e}");
        let e = SalesforceError::from_rest(
            400,
            None,
            None,
            br#"[{"message":"x","errorCode":"UNABLE_TO_LOCK_ROW"}]"#,
        );
        assert!(matches!(e, SalesforceError::Transient { .. }));
        let e = SalesforceError::from_rest(
            403,
            None,
            None,
            br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
        );
        assert!(matches!(e, SalesforceError::LimitExceeded { .. }) && e.is_retryable());
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        let e = SalesforceError::from_rest(503, None, None, b"<html>down</html>");
        assert!(e.is_retryable());
        let e: SfError = serde_json::from_str(r#"{"statusCode":"X","message":"m"}"#).unwrap();
        assert_eq!(e.error_code, "X");
    }

    #[test]
    fn huge_upstream_messages_are_cut() {
        let big = "m".repeat(5_000_000);
        let body = serde_json::json!([{"message": big, "errorCode": "X"}]).to_string();
        for status in [400, 503] {
            let e = SalesforceError::from_rest(status, None, None, body.as_bytes());
            let text = e.to_string();
            assert!(
                text.len() < 2 * xmbridge_auth::UPSTREAM_TEXT_LIMIT,
                "{}",
                text.len()
            );
            assert!(text.contains("bytes more)"), "{}", &text[text.len() - 40..]);
        }
        let raw = vec![b'<'; 5_000_000];
        let text = SalesforceError::from_rest(400, None, None, &raw).to_string();
        assert!(
            text.len() < 2 * xmbridge_auth::UPSTREAM_TEXT_LIMIT,
            "{}",
            text.len()
        );
        let many: Vec<_> = (0..10_000)
            .map(|i| serde_json::json!({"message": format!("error number {i}"), "errorCode": "X"}))
            .collect();
        let e = SalesforceError::from_rest(
            400,
            None,
            None,
            serde_json::to_string(&many).unwrap().as_bytes(),
        );
        assert!(e.to_string().len() < 2 * xmbridge_auth::UPSTREAM_TEXT_LIMIT);
        assert_eq!(
            e.codes().len(),
            10_000,
            "the errors themselves are all kept"
        );
    }
}
