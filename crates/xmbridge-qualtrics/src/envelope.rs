//! The `{result, meta}` envelope around every JSON answer (docs/design/qualtrics-api.md §3.1).

use crate::error::{ApiError, Error};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `meta` of an answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// `"200 - OK"`: a string, not a number.
    #[serde(default)]
    pub http_status: Option<String>,
    #[serde(default)]
    /// The request's id (`requestId`), to quote to Qualtrics support.
    pub request_id: Option<String>,
    /// e.g. "Request proxied. For faster response times, use this host instead: fra1.qualtrics.com"
    #[serde(default)]
    pub notice: Option<String>,
    #[serde(default)]
    /// The API's error, on a failed answer.
    pub error: Option<ErrorBody>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
/// `meta.error` of a failed answer.
pub struct ErrorBody {
    #[serde(default)]
    /// The API's error code (`errorCode`).
    pub error_code: Option<String>,
    #[serde(default)]
    /// The API's human-readable error text (`errorMessage`).
    pub error_message: Option<String>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    meta: Option<Meta>,
}

/// A successful answer: its `result` (absent on write calls that return nothing) and `meta`.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The answer's `result`, `None` when the API sent none.
    pub result: Option<Value>,
    /// The answer's `meta` (defaults when absent).
    pub meta: Meta,
}

impl Envelope {
    /// `result` as `T`; a missing `result` is decoded from `null` (fine for `Option`/`()`).
    pub fn into_result<T: DeserializeOwned>(self, url: &str) -> Result<T, Error> {
        serde_json::from_value(self.result.unwrap_or(Value::Null)).map_err(|e| Error::Decode {
            url: crate::error::strip_query(url),
            message: format!("the result does not have the expected shape: {e}"),
        })
    }
}

/// Turns status + body into the envelope or a typed [`ApiError`].
///
/// Error answers that are not envelopes (a proxy's HTML page, an empty 502) still become an
/// `ApiError` with a short excerpt of the body, so callers see one error type for every failure.
pub fn parse(status: u16, body: &[u8], url: &str) -> Result<Envelope, Error> {
    let parsed: Option<RawEnvelope> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let raw = parsed.ok_or_else(|| Error::Decode {
            url: crate::error::strip_query(url),
            message: format!(
                "status {status} but the body is not a JSON envelope: {}",
                excerpt(body)
            ),
        })?;
        return Ok(Envelope {
            result: raw.result,
            meta: raw.meta.unwrap_or_default(),
        });
    }
    let meta = parsed.and_then(|r| r.meta).unwrap_or_default();
    // Bounded: a huge message would otherwise be repeated in every error and retry log line.
    let (error_code, error_message) = match meta.error {
        Some(e) => (
            e.error_code.as_deref().map(xmbridge_auth::upstream_text),
            e.error_message
                .as_deref()
                .map_or_else(|| "no error message".into(), xmbridge_auth::upstream_text),
        ),
        None if body.is_empty() => (None, format!("empty body (HTTP {status})")),
        None => (None, excerpt(body)),
    };
    Err(Error::Api(ApiError {
        status,
        error_code,
        error_message,
        request_id: meta.request_id,
        retry_after: None,
    }))
}

/// The first 200 characters of a body, on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(200).collect();
    if one_line.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_with_result_and_notice() {
        let body = br#"{"result":{"userId":"UR_1"},"meta":{"httpStatus":"200 - OK","requestId":"r1",
            "notice":"Request proxied. For faster response times, use this host instead: fra1.qualtrics.com"}}"#;
        let env = parse(200, body, "u").unwrap();
        assert_eq!(env.meta.request_id.as_deref(), Some("r1"));
        assert!(env.meta.notice.unwrap().contains("fra1"));
        assert_eq!(env.result.unwrap()["userId"], "UR_1");
    }

    #[test]
    fn success_without_result() {
        let env = parse(
            200,
            br#"{"meta":{"httpStatus":"200 - OK","requestId":"r"}}"#,
            "u",
        )
        .unwrap();
        assert!(env.result.is_none());
        let unit: Option<Value> = env.into_result("u").unwrap();
        assert!(unit.is_none());
    }

    #[test]
    fn error_envelope_becomes_api_error() {
        let body = br#"{"meta":{"httpStatus":"404 - Not Found","requestId":"1b5c",
            "error":{"errorCode":"XYZ_1","errorMessage":"Survey not found"}}}"#;
        let err = parse(404, body, "u").unwrap_err();
        assert_eq!(
            err.api().unwrap(),
            &ApiError {
                status: 404,
                error_code: Some("XYZ_1".into()),
                error_message: "Survey not found".into(),
                request_id: Some("1b5c".into()),
                retry_after: None,
            }
        );
        assert_eq!(err.status(), Some(404));
    }

    #[test]
    fn huge_error_messages_are_cut() {
        let big = "x".repeat(5_000_000);
        let body = serde_json::json!({"meta": {"error": {"errorCode": big, "errorMessage": big}}});
        let err = parse(400, body.to_string().as_bytes(), "u").unwrap_err();
        let text = err.to_string();
        assert!(
            text.len() < 3 * xmbridge_auth::UPSTREAM_TEXT_LIMIT,
            "{}",
            text.len()
        );
        assert!(text.contains(&format!(
            "({} bytes more)",
            5_000_000 - xmbridge_auth::UPSTREAM_TEXT_LIMIT
        )));
    }

    #[test]
    fn non_envelope_errors_keep_an_excerpt() {
        let err = parse(502, b"<html>\n  Bad   gateway</html>", "u").unwrap_err();
        let api = err.api().unwrap();
        assert_eq!(api.error_message, "<html> Bad gateway</html>");
        assert!(api.is_transient());
        let err = parse(503, b"", "u").unwrap_err();
        assert!(err.to_string().contains("empty body"));
    }

    #[test]
    fn bad_success_body_is_a_decode_error() {
        let err = parse(200, b"not json", "https://h/API/v3/x?skipToken=secret").unwrap_err();
        assert!(matches!(err, Error::Decode { .. }));
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn wrong_result_shape_is_a_decode_error() {
        let env = parse(200, br#"{"result":{"n":"x"},"meta":{}}"#, "u").unwrap();
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct N {
            n: u32,
        }
        assert!(matches!(
            env.into_result::<N>("u"),
            Err(Error::Decode { .. })
        ));
    }
}
