//! Users → `user` (brand administrators only: for anyone else the table is skipped with the
//! reason). Full stream: the list, then each user's details; users gone upstream are marked
//! deleted.

use super::{first_call, list};
use crate::engine::{Batches, Ctx, SyncError};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::Value as Json;
use xmbridge_destinations::{Commit, MarkUnseenDeleted};

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let fix = "needs a brand administrator (the users API is for brand admins only)";
    let Some(users) = first_call(ctx, &["user"], fix, list(&client, &["users"], &[])).await? else {
        return Ok(());
    };
    ctx.progress
        .stream_started("users", Some(users.len() as u64));
    let ids: Vec<String> = users
        .iter()
        .filter_map(|u| u.get("id").and_then(Json::as_str).map(str::to_string))
        .collect();
    let details: Vec<Json> = stream::iter(ids)
        .map(|id| {
            let client = client.clone();
            async move { client.get::<Json>(client.url(&["users", &id])).await }
        })
        .buffered(ctx.opts.survey_parallelism.max(1))
        .try_collect()
        .await
        .map_err(|e| SyncError::api("user", None, e))?;
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
        mark_unseen_deleted: vec![MarkUnseenDeleted {
            table: "user".into(),
            scope: vec![],
        }],
        ..Default::default()
    };
    ctx.commit(commit, "user", None).await?;
    ctx.progress.advanced("users", details.len() as u64);
    ctx.progress.stream_finished("users");
    Ok(())
}
