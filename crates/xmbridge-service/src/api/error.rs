//! The API's one error shape, `{"error": {"code", "message", "fix"}}`, its mapping from the
//! service's, runtime's and stores' errors onto HTTP statuses, and the JSON body reader with
//! its size limit (413) and its 422 for JSON that does not fit the route.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{ErrorKind, ServiceError};

/// The largest request body the API reads (1 MiB); larger ones get 413.
pub const BODY_LIMIT: usize = 1 << 20;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short machine-readable code (`forbidden`, `invalid`, `not_found` …).
    pub code: String,
    /// What went wrong, for a person (never a secret).
    pub message: String,
    /// What to do about it, when known.
    pub fix: Option<String>,
    /// Seconds to wait (429 only): sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with its status, code, message and fix.
    pub fn new(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        fix: Option<String>,
    ) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            fix,
            retry_after: None,
        }
    }

    /// 401: no session or token, or an expired one.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            message,
            Some(
                "sign in with POST /api/v1/session, or send `Authorization: Bearer <api token>`"
                    .into(),
            ),
        )
    }

    /// 403 naming the rule that refused.
    pub fn forbidden(what: &str, rule: &str, fix: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} (rule: {rule})"),
            Some(fix.into()),
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>, fix: Option<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message, fix)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>, fix: Option<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message, fix)
    }

    /// 422.
    pub fn invalid(message: impl Into<String>, fix: Option<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message, fix)
    }

    /// 500: logged, and answered with what failed (store and runtime errors name what was
    /// being done and paths, never a secret).
    pub fn internal(context: &str, error: &dyn std::error::Error) -> ApiError {
        tracing::error!(error = %error, "api: {context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed: {error}"),
            Some("see the server log; try again".into()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "fix": self.fix}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        if let ServiceError::Runtime(r) = e {
            return ApiError::from(r);
        }
        if let ServiceError::Vault(v) = e {
            return ApiError::from(v);
        }
        let fix = e.fix().map(str::to_string);
        let code = match &e {
            ServiceError::Refused { code, .. } => (*code).to_string(),
            _ => String::new(),
        };
        let (status, default_code) = match e.kind() {
            ErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::TooMany => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
            _ => return ApiError::internal("the request", &e),
        };
        let code = if code.is_empty() {
            default_code.to_string()
        } else {
            code
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
            fix,
            retry_after: None,
        }
    }
}

impl From<xmbridge_vault::VaultError> for ApiError {
    fn from(e: xmbridge_vault::VaultError) -> ApiError {
        use xmbridge_vault::VaultError as V;
        match &e {
            V::ConnectionNotFound { .. } => ApiError::not_found(e.to_string(), None),
            V::DuplicateConnection { .. } => ApiError::conflict(
                e.to_string(),
                Some("pick another name, or delete the existing connection first".into()),
            ),
            V::InvalidName { .. } | V::InvalidSettings { .. } => {
                ApiError::invalid(e.to_string(), None)
            }
            _ => ApiError::internal("the vault", &e),
        }
    }
}

impl From<xmbridge_workflows::store::StoreError> for ApiError {
    fn from(e: xmbridge_workflows::store::StoreError) -> ApiError {
        use xmbridge_workflows::store::StoreError as S;
        match &e {
            S::NoSuchEvent { .. } | S::NoSuchAccount { .. } => {
                ApiError::not_found(e.to_string(), None)
            }
            S::DuplicateAccount { .. } => ApiError::conflict(e.to_string(), None),
            _ => ApiError::internal("the workflow store", &e),
        }
    }
}

impl From<xmbridge_workflows::accounts::AccountError> for ApiError {
    fn from(e: xmbridge_workflows::accounts::AccountError) -> ApiError {
        use xmbridge_workflows::accounts::AccountError as A;
        match e {
            A::Limit { .. } => ApiError::forbidden(
                &e.to_string(),
                "a member links at most 5 Salesforce accounts",
                "unlink one of your Salesforce accounts, or ask an admin to share a brand account",
            ),
            A::NotOwner { .. } => ApiError::forbidden(
                &e.to_string(),
                "an account is changed only by its owner or an admin",
                "ask the account's owner or an admin",
            ),
            A::NotShareable { .. } => ApiError::conflict(
                e.to_string(),
                Some("only brand accounts can be shared; link it again as a brand account".into()),
            ),
            A::NotGranted { .. } | A::NoAccount { .. } | A::Ambiguous { .. } => {
                ApiError::invalid(e.to_string(), None)
            }
            A::UnknownSystem { .. } => ApiError::invalid(e.to_string(), None),
            A::NameTaken { .. } | A::InUse { .. } => ApiError::conflict(e.to_string(), None),
            A::Store(s) => ApiError::from(s),
            A::Vault(v) => ApiError::from(v),
            other => ApiError::internal("the account rules", &other),
        }
    }
}

impl From<xmbridge_runtime::RuntimeError> for ApiError {
    fn from(e: xmbridge_runtime::RuntimeError) -> ApiError {
        use xmbridge_runtime::RuntimeError as R;
        match e {
            R::Usage(m) => ApiError::invalid(m, None),
            R::Unusable(m) => ApiError::invalid(m, None),
            R::Vault(v) => ApiError::from(v),
            R::Store(s) => ApiError::from(s),
            R::Account(a) => ApiError::from(a),
            R::Url { message, .. } | R::Settings { message, .. } => {
                ApiError::invalid(message, None)
            }
            R::Input { context, .. } => ApiError::invalid(context, None),
            R::Connection { message, source } => {
                ApiError::invalid(format!("{message}: {source}"), None)
            }
            R::Auth(a) => ApiError::invalid(a.to_string(), None),
            R::Qualtrics(q) => ApiError::invalid(q.to_string(), None),
            other => ApiError::internal("the runtime", &other),
        }
    }
}

/// A JSON request body read with the API's limit: over [`BODY_LIMIT`] is 413, malformed JSON or
/// JSON that does not fit the route is 422, both in the one error shape.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let body: Body = req.into_body();
        let bytes = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| too_large())?;
        if bytes.is_empty() {
            return serde_json::from_str("{}").map(Json).map_err(|e| {
                ApiError::invalid(format!("the request needs a JSON body: {e}"), None)
            });
        }
        serde_json::from_slice(&bytes).map(Json).map_err(|e| {
            ApiError::invalid(
                format!("the request body is not the JSON this route takes: {e}"),
                Some("see /api/v1/openapi.json for the route's request schema".into()),
            )
        })
    }
}

/// 413 for a body over the limit.
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body is larger than {BODY_LIMIT} bytes"),
        Some("send a smaller body".into()),
    )
}

/// The API's result.
pub type ApiResult<T> = Result<T, ApiError>;

/// Path parameters; a value that does not fit (a run id that is no number) is 404 in the one
/// error shape, since no such thing can exist.
pub struct Path<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::not_found(format!("no such thing: {}", e.body_text()), None))
    }
}

/// Query parameters; ones that do not fit are 422 in the one error shape.
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| {
                ApiError::invalid(
                    e.body_text(),
                    Some("see /api/v1/openapi.json for the route's query parameters".into()),
                )
            })
    }
}
