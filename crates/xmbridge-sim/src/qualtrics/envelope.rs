//! The `{result, meta}` envelope, error envelopes and the per-request context.
//!
//! Every JSON answer of the Qualtrics API carries `meta.httpStatus` ("200 - OK"), a `requestId`
//! and, when the call went to the wrong data center, a `notice`. Handlers return
//! [`ok`]/[`ok_empty`] or an [`ApiError`]; both read the request context that the
//! envelope middleware set for this request, so handlers never build `meta` by hand.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// What the envelope needs to know about the request being answered.
#[derive(Clone, Debug, Default)]
pub struct RequestCtx {
    /// The request id returned in `meta.requestId` and logged with the request.
    pub request_id: String,
    /// `http://host:port` as the client addressed us; `nextPage` URLs are built on it.
    pub base_url: String,
    /// "Request proxied. For faster response times, use this host instead: …"
    pub notice: Option<String>,
}

tokio::task_local! {
    static REQUEST_CTX: RequestCtx;
}

/// Runs `fut` with `ctx` as the current request context.
pub async fn with_ctx<F: std::future::Future>(ctx: RequestCtx, fut: F) -> F::Output {
    REQUEST_CTX.scope(ctx, fut).await
}

pub(crate) fn current_ctx() -> RequestCtx {
    REQUEST_CTX.try_with(|c| c.clone()).unwrap_or_default()
}

/// `"<code> - <reason>"` as Qualtrics writes it.
pub fn http_status_text(status: StatusCode) -> String {
    let reason = match status.as_u16() {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Temporary Internal Server Error",
        504 => "Gateway Timeout",
        _ => status.canonical_reason().unwrap_or("Unknown"),
    };
    format!("{} - {}", status.as_u16(), reason)
}

fn meta(status: StatusCode, ctx: &RequestCtx) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("httpStatus".into(), Value::String(http_status_text(status)));
    m.insert("requestId".into(), Value::String(ctx.request_id.clone()));
    if let Some(n) = &ctx.notice {
        m.insert("notice".into(), Value::String(n.clone()));
    }
    m
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// 200 with `result`.
pub fn ok<T: Serialize>(result: T) -> Response {
    ok_status(StatusCode::OK, result)
}

pub(crate) fn ok_status<T: Serialize>(status: StatusCode, result: T) -> Response {
    let ctx = current_ctx();
    let result = serde_json::to_value(result).unwrap_or(Value::Null);
    json_response(
        status,
        &json!({"result": result, "meta": meta(status, &ctx)}),
    )
}

/// 200 with `meta` only (write calls that return nothing).
pub fn ok_empty() -> Response {
    let ctx = current_ctx();
    json_response(StatusCode::OK, &json!({"meta": meta(StatusCode::OK, &ctx)}))
}

/// An error answered in the Qualtrics error envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Qualtrics error code in `meta.error.errorCode`, e.g. `AUTH_1.0` or `RPC_1.0`.
    pub code: String,
    /// Human-readable text in `meta.error.errorMessage`.
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits); `None` sends none.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after_secs: None,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "QVAL_1", message)
    }
    /// 401 with the code Qualtrics uses for a missing or bad token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AUTH_1", message)
    }
    /// 403: authenticated but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AUTH_3", message)
    }
    /// 404: the resource does not exist (or the caller may not see it).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND_1", message)
    }
    pub(crate) fn too_many(retry_after_secs: u64, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_1", message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }
    /// A 5xx answer with the given status (for fault injection).
    pub fn server(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "SERVER_1", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ctx = current_ctx();
        let mut m = meta(self.status, &ctx);
        let mut err = serde_json::Map::new();
        err.insert("errorCode".into(), Value::String(self.code.clone()));
        err.insert("errorMessage".into(), Value::String(self.message.clone()));
        if self.status.is_server_error() {
            err.insert("instanceId".into(), Value::String("sim-1".into()));
        }
        m.insert("error".into(), Value::Object(err));
        let mut resp = json_response(self.status, &json!({"meta": m}));
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Parses a JSON request body that must be an object. Handlers parse bodies themselves (not with
/// axum's `Json`) so that malformed input gets the documented 400 envelope.
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "The request body is not valid JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_texts_match_contract() {
        assert_eq!(http_status_text(StatusCode::OK), "200 - OK");
        assert_eq!(
            http_status_text(StatusCode::SERVICE_UNAVAILABLE),
            "503 - Temporary Internal Server Error"
        );
        assert_eq!(
            http_status_text(StatusCode::TOO_MANY_REQUESTS),
            "429 - Too Many Requests"
        );
    }
}
