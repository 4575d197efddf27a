//! The error envelope (`{"error":{"message","detail"},"status":"failure"}`) and the gate every
//! REST call passes: authentication (Basic or Bearer), faults, then the hourly rate-limit rules.

use super::SharedSn;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

/// A ServiceNow REST error, rendered in the documented envelope.
#[derive(Debug, Clone)]
pub struct SnError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// `error.message` of the envelope.
    pub message: String,
    /// `error.detail` of the envelope; `None` sends null.
    pub detail: Option<String>,
    /// Extra response headers (e.g. rate-limit headers).
    pub headers: Vec<(&'static str, String)>,
}

impl SnError {
    pub(crate) fn new(status: StatusCode, message: &str, detail: Option<&str>) -> SnError {
        SnError {
            status,
            message: message.to_string(),
            detail: detail.map(str::to_string),
            headers: Vec::new(),
        }
    }

    pub(crate) fn unauthenticated() -> SnError {
        SnError::new(
            StatusCode::UNAUTHORIZED,
            "User Not Authenticated",
            Some("Required to provide Auth information"),
        )
    }

    pub(crate) fn no_record() -> SnError {
        SnError::new(
            StatusCode::NOT_FOUND,
            "No Record found",
            Some("Record doesn't exist or ACL restricts the record retrieval"),
        )
    }

    pub(crate) fn invalid_table(table: &str) -> SnError {
        SnError::new(
            StatusCode::BAD_REQUEST,
            &format!("Invalid table {table}"),
            Some(&format!("Table {table} does not exist")),
        )
    }

    pub(crate) fn bad_request(message: &str) -> SnError {
        SnError::new(StatusCode::BAD_REQUEST, message, None)
    }
}

impl IntoResponse for SnError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {"message": self.message, "detail": self.detail},
            "status": "failure",
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(k, v);
            }
        }
        resp
    }
}

/// Who made a request: put into the request's extensions by [`gate`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// The caller's `user_name`.
    pub user_name: String,
    /// The caller's roles.
    pub roles: Vec<String>,
}

impl Caller {
    pub(crate) fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role || r == "admin")
    }
}

fn authenticate(sim: &SharedSn, headers: &HeaderMap) -> Result<Caller, SnError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(SnError::unauthenticated)?;
    let now = sim.clock.now_ms();
    let db = sim.db.lock();
    let user_name = if let Some(b64) = auth.strip_prefix("Basic ") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| SnError::unauthenticated())?;
        let raw = String::from_utf8(raw).map_err(|_| SnError::unauthenticated())?;
        let (user, password) = raw.split_once(':').ok_or_else(SnError::unauthenticated)?;
        let u = db
            .creds
            .check_password(user, password)
            .ok_or_else(SnError::unauthenticated)?;
        // SNCRestrictBasicAuthUserAuthenticationGate: good credentials, still refused.
        if db.faults.basic_auth_gate && !u.web_service_access_only {
            return Err(SnError::unauthenticated());
        }
        u.user_name.clone()
    } else if let Some(token) = auth.strip_prefix("Bearer ") {
        db.tokens
            .access_user(token.trim(), now)
            .ok_or_else(SnError::unauthenticated)?
    } else {
        return Err(SnError::unauthenticated());
    };
    let user = db
        .creds
        .user(&user_name)
        .filter(|u| u.active && !u.locked_out)
        .ok_or_else(SnError::unauthenticated)?;
    Ok(Caller {
        user_name,
        roles: user.roles.clone(),
    })
}

/// Authentication, faults and rate limits, in that order, for every `/api/*` call.
pub async fn gate(State(sim): State<SharedSn>, mut req: Request, next: Next) -> Response {
    let caller = match authenticate(&sim, req.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let (fault, slow_ms) = sim.db.lock().faults.take();
    if slow_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow_ms)).await;
    }
    if let Some(e) = fault {
        return e.into_response();
    }
    let now = sim.clock.now_ms();
    let verdict = sim.db.lock().limits.count(&caller, now);
    if let Some(ratelimit::Verdict { exceeded: true, .. }) = &verdict {
        let v = verdict.as_ref().map(|v| v.headers()).unwrap_or_default();
        let mut e = SnError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit exceeded",
            verdict
                .as_ref()
                .map(|v| {
                    format!(
                        "Rate limit of {} requests per hour for Table API exceeded",
                        v.limit
                    )
                })
                .as_deref(),
        );
        e.headers = v;
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    if let Some(v) = verdict {
        for (k, val) in v.headers() {
            if let Ok(val) = HeaderValue::from_str(&val) {
                resp.headers_mut().insert(k, val);
            }
        }
    }
    resp
}

use super::ratelimit;
