//! The two pagination schemes of the API (docs/design/qualtrics-api.md §4).
//!
//! Offset lists (`/surveys`, `/users`, library messages) page by 100 with `?offset=`; XM Directory
//! lists and distributions page by `pageSize` (≤ 100) with `skipToken = base64(offset)`. Both put a
//! full URL in `nextPage`, built on the host the client used, and `null` on the last page.

use super::envelope::{ApiError, current_ctx};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub(crate) const OFFSET_PAGE_SIZE: usize = 100;

/// Builds `{base}{path}?{query}` with `overrides` replacing or adding parameters.
pub fn next_url(path: &str, query: &BTreeMap<String, String>, key: &str, value: &str) -> String {
    let ctx = current_ctx();
    let mut q = query.clone();
    q.insert(key.to_string(), value.to_string());
    let qs = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q.iter())
        .finish();
    format!("{}{}?{}", ctx.base_url, path, qs)
}

fn parse_usize(query: &BTreeMap<String, String>, key: &str) -> Result<Option<usize>, ApiError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid value for parameter '{key}': '{v}' is not a non-negative integer."
            ))
        }),
    }
}

/// One page of an offset-paged list held in memory; `path` is the route as called
/// (`/API/v3/surveys`).
pub fn offset_page(
    items: Vec<Value>,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let total = items.len();
    offset_page_of(
        total,
        |from, to| items.into_iter().skip(from).take(to - from).collect(),
        path,
        query,
    )
}

/// One page of an offset-paged list whose total length is known.
pub fn offset_page_of(
    total: usize,
    fetch: impl FnOnce(usize, usize) -> Vec<Value>,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let offset = parse_usize(query, "offset")?.unwrap_or(0);
    let end = (offset + OFFSET_PAGE_SIZE).min(total);
    let page = if offset < total {
        fetch(offset, end)
    } else {
        Vec::new()
    };
    let next = if end < total {
        Value::String(next_url(path, query, "offset", &end.to_string()))
    } else {
        Value::Null
    };
    Ok(json!({"elements": page, "nextPage": next}))
}

pub(crate) fn encode_skip_token(offset: usize) -> String {
    STANDARD.encode(offset.to_string())
}

pub(crate) fn decode_skip_token(token: &str) -> Result<usize, ApiError> {
    STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("Invalid skipToken: '{token}'.")))
}

/// One page of a skipToken-paged list of `total` items. `max_page` is the route's largest pageSize.
pub fn skip_token_page(
    total: usize,
    fetch: impl FnOnce(usize, usize) -> Vec<Value>,
    path: &str,
    query: &BTreeMap<String, String>,
    default_page: usize,
    max_page: usize,
) -> Result<Value, ApiError> {
    let page_size = parse_usize(query, "pageSize")?.unwrap_or(default_page);
    if page_size == 0 || page_size > max_page {
        return Err(ApiError::bad_request(format!(
            "Invalid value for parameter 'pageSize': must be between 1 and {max_page}."
        )));
    }
    let offset = match query.get("skipToken") {
        Some(t) if !t.is_empty() => decode_skip_token(t)?,
        _ => 0,
    };
    let end = (offset + page_size).min(total);
    let page = if offset < total {
        fetch(offset, end)
    } else {
        Vec::new()
    };
    let next = if end < total {
        Value::String(next_url(path, query, "skipToken", &encode_skip_token(end)))
    } else {
        Value::Null
    };
    Ok(json!({"elements": page, "nextPage": next}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_tokens_are_base64_offsets() {
        assert_eq!(encode_skip_token(5), "NQ==");
        assert_eq!(encode_skip_token(10), "MTA=");
        assert_eq!(decode_skip_token("MTA=").ok(), Some(10));
        assert!(decode_skip_token("!!").is_err());
    }
}
