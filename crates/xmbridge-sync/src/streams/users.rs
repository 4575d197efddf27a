//! Users → `user` (brand administrators only: for anyone else the table is skipped with the
//! reason). The list is read on every run; a user's details (`GET /users/{id}`) only when the
//! user is new, their list element changed, or their refresh is due (see [`super::tracked`]).
//! Users gone upstream are marked deleted.

use super::tracked::{CURSOR_VERSION, Tracked, fingerprint, interval_ms, trusted_cursor};
use super::{first_call, list};
use crate::engine::{Batches, Ctx, SyncError};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value as Json, json};
use std::collections::{HashMap, HashSet};
use xmbridge_destinations::{Commit, MarkUnseenDeleted, Value};

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let fix = "needs a brand administrator (the users API is for brand admins only)";
    let Some(users) = first_call(ctx, &["user"], fix, list(&client, &["users"], &[])).await? else {
        return Ok(());
    };
    let seen = trusted_cursor(ctx, "users", "user", "users")
        .await?
        .and_then(|c| Tracked::from_cursor(&c, "users"));
    let listed: Vec<(String, u64)> = users
        .iter()
        .filter_map(|u| Some((u.get("id")?.as_str()?.to_string(), fingerprint(u))))
        .collect();
    let (now_ms, interval) = (ctx.synced_at_ms, interval_ms(ctx.opts));
    let to_read: Vec<String> = listed
        .iter()
        .filter(|(id, fp)| {
            seen.as_ref()
                .is_none_or(|s| s.stale(id, *fp, now_ms, interval))
        })
        .map(|(id, _)| id.clone())
        .collect();
    ctx.progress
        .stream_started("users", Some(to_read.len() as u64));
    let details: Vec<Json> = stream::iter(to_read.clone())
        .map(|id| {
            let client = client.clone();
            async move {
                match client.get::<Json>(client.url(&["users", &id])).await {
                    Ok(u) => Ok(Some(u)),
                    // Deleted since the list was read: marked deleted below.
                    Err(e) if e.status() == Some(404) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .buffered(ctx.opts.survey_parallelism.max(1))
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| SyncError::api("user", None, e))?
        .into_iter()
        .flatten()
        .collect();
    let read: HashMap<String, Option<i64>> = details
        .iter()
        .filter_map(|u| Some((u.get("id")?.as_str()?.to_string(), None)))
        .collect();
    let wanted: HashSet<&str> = to_read.iter().map(String::as_str).collect();
    let next = Tracked::next(seen.as_ref(), &listed, &wanted, &read, now_ms);
    // Without a cursor every user was read: whatever was not is gone. With one, only the users
    // the cursor knew and the list (or a 404) no longer shows.
    let marks: Vec<MarkUnseenDeleted> = match &seen {
        None => vec![MarkUnseenDeleted {
            table: "user".into(),
            scope: vec![],
        }],
        Some(seen) => seen
            .0
            .keys()
            .chain(to_read.iter())
            .filter(|id| !next.0.contains_key(*id))
            .map(|id| MarkUnseenDeleted {
                table: "user".into(),
                scope: vec![("id".into(), Value::Text(id.as_str().into()))],
            })
            .collect(),
    };
    let mut b = Batches::default();
    for u in &details {
        let mut r = ctx.specs.row("user");
        r.put("id", u.get("id"));
        for (col, path) in [
            ("account_creation_date", "accountCreationDate"),
            ("account_expiration_date", "accountExpirationDate"),
            ("account_status", "accountStatus"),
            ("division_id", "divisionId"),
            ("email", "email"),
            ("first_name", "firstName"),
            ("language", "language"),
            ("last_login_date", "lastLoginDate"),
            ("last_name", "lastName"),
            ("organization_id", "organizationId"),
            ("password_expiration_date", "passwordExpirationDate"),
            ("password_last_changed_date", "passwordLastChangedDate"),
            ("response_count_auditable", "responseCounts.auditable"),
            ("response_count_deleted", "responseCounts.deleted"),
            ("response_count_generated", "responseCounts.generated"),
            ("time_zone", "timeZone"),
            ("unsubscribed", "unsubscribed"),
            ("user_type", "userType"),
            ("username", "username"),
        ] {
            r.put(col, crate::convert::at(u, path));
        }
        b.push("user", r.build());
    }
    let commit = Commit {
        batches: b.into_vec(),
        mark_unseen_deleted: marks,
        cursors: vec![(
            "users".into(),
            json!({"v": CURSOR_VERSION, "users": next.to_json()}),
        )],
        ..Default::default()
    };
    ctx.commit(commit, "user", None).await?;
    ctx.progress.advanced("users", details.len() as u64);
    ctx.progress.stream_finished("users");
    Ok(())
}
