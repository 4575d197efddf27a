//! The streams: one module per group of tables fed by the same API routes.

pub mod directories;
pub mod distributions;
pub mod libraries;
pub mod reconcile;
pub mod responses;
pub mod surveys;
mod tracked;
pub mod users;

use crate::engine::SyncError;
use futures_util::TryStreamExt;
use serde_json::Value as Json;
use xmbridge_qualtrics::{Client, Error as QError};

/// Every element of a paged list.
pub(crate) async fn list(
    client: &Client,
    segments: &[&str],
    query: &[(&str, &str)],
) -> Result<Vec<Json>, QError> {
    let mut url = client.url(segments);
    if !query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    client.paginate::<Json>(url).try_collect().await
}

/// A 403 (or a 401 for a missing OAuth scope) means "these credentials may not read this": the
/// group is skipped with the reason, not failed.
pub(crate) fn forbidden(e: &QError) -> bool {
    matches!(e.status(), Some(403))
        || e.api()
            .is_some_and(|a| a.status == 401 && a.error_code.as_deref() == Some("AUTH_SCOPE"))
}

/// The reason text of a skipped group: what is missing, how to get it, and what Qualtrics said.
pub(crate) fn skip_reason(fix: &str, e: &QError) -> String {
    match e.api() {
        Some(a) if !a.error_message.is_empty() => {
            format!("{fix} (Qualtrics said: {})", a.error_message)
        }
        _ => fix.to_string(),
    }
}

/// Runs a group's first call: `Ok(Some(v))`, `Ok(None)` when forbidden (the group was skipped),
/// or the error.
pub(crate) async fn first_call<T>(
    ctx: &mut crate::engine::Ctx<'_>,
    tables: &[&str],
    fix: &str,
    fut: impl std::future::Future<Output = Result<T, QError>>,
) -> Result<Option<T>, SyncError> {
    match fut.await {
        Ok(v) => Ok(Some(v)),
        Err(e) if forbidden(&e) => {
            ctx.skip(tables, &skip_reason(fix, &e));
            Ok(None)
        }
        Err(e) => Err(SyncError::api(
            tables.first().copied().unwrap_or("?"),
            None,
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    /// The streams name their tables by their group's stream name; a renamed group must not
    /// leave a stream writing nothing.
    #[test]
    fn every_stream_name_has_its_group() {
        for stream in [
            "directories",
            "transaction_batches",
            "distributions",
            "libraries",
        ] {
            assert!(
                !xmbridge_qualtrics::capabilities::tables_of_stream(stream).is_empty(),
                "{stream}"
            );
        }
    }
}
