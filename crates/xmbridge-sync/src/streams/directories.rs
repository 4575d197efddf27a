//! XM Directory → `directory`, `directory_contact`, `directory_mailing_list`,
//! `contact_mailing_list_membership`; and transaction batches → `transaction_batch`,
//! `batch_transaction_membership` (these two need "Manage Directories": on 403 they are skipped
//! with the reason and everything else syncs).
//!
//! Tier 2, in the same per-directory commit: `contact_transaction` (per contact,
//! `GET …/contacts/{id}/transactions`), `directory_sample`, `frequency_rule` and
//! `frequency_rule_target` (replaced per directory; a refused read skips just that table).
//!
//! Full streams, no cursor: `directory` and `directory_mailing_list` are soft-delete tables
//! (unseen rows are marked deleted); the contact, membership and batch tables are not soft, so
//! each directory's rows are replaced in one commit (delete by `directory_id`, then upsert), which
//! removes contacts deleted upstream and never shows a half-replaced directory. The full contact
//! (`GET …/contacts/{id}`) is read for every contact: only it carries the dates, `emailDomain`,
//! `writeBlanks` and `mailingListMembership`.

use super::{first_call, list};
use crate::engine::{Batches, Ctx, SyncError};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::Value as Json;
use xmbridge_destinations::{Commit, MarkUnseenDeleted, Value};
use xmbridge_qualtrics::Client;

/// The tables this stream writes (its group in `xmbridge_qualtrics::capabilities`).
fn tables() -> &'static [&'static str] {
    xmbridge_qualtrics::capabilities::tables_of_stream("directories")
}
/// The transaction-batch tables (their own group, read with the directories).
fn batch_tables() -> &'static [&'static str] {
    xmbridge_qualtrics::capabilities::tables_of_stream("transaction_batches")
}
/// Full contacts read at the same time.
const CONTACT_PARALLELISM: usize = 8;

fn s(v: &Json, k: &str) -> Option<String> {
    v.get(k).and_then(Json::as_str).map(str::to_string)
}

async fn directories(client: &Client) -> Result<Vec<Json>, xmbridge_qualtrics::Error> {
    list(client, &["directories"], &[]).await
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let fix = "needs XM Directory access (and the read:directories / read:directory_contacts scopes for OAuth clients)";
    let Some(dirs) = first_call(ctx, tables(), fix, directories(&client)).await? else {
        return Ok(());
    };
    ctx.progress
        .stream_started("directories", Some(dirs.len() as u64));
    // Tier 2 tables whose reads need their own OAuth scope: skipped (said once) when refused.
    let mut off: Vec<&'static str> = Vec::new();
    let mut b = Batches::default();
    for d in &dirs {
        let mut r = ctx.specs.row("directory");
        r.put("id", d.get("directoryId"))
            .put("name", d.get("name"))
            .put("is_default", d.get("isDefault"));
        for (col, k) in [
            ("deduplication_criteria_email", "email"),
            (
                "deduplication_criteria_external_data_reference",
                "externalDataReference",
            ),
            ("deduplication_criteria_first_name", "firstName"),
            ("deduplication_criteria_last_name", "lastName"),
            ("deduplication_criteria_phone", "phone"),
        ] {
            r.put(col, d.get("deduplicationCriteria").and_then(|c| c.get(k)));
        }
        b.push("directory", r.build());
    }
    let commit = Commit {
        batches: b.into_vec(),
        mark_unseen_deleted: vec![MarkUnseenDeleted {
            table: "directory".into(),
            scope: vec![],
        }],
        ..Default::default()
    };
    ctx.commit(commit, "directory", None).await?;

    for d in &dirs {
        let Some(did) = s(d, "directoryId") else {
            continue;
        };
        let err = |table: &str, e| SyncError::api(table, None, e);
        let lists = list(
            &client,
            &["directories", &did, "mailinglists"],
            &[("pageSize", "100")],
        )
        .await
        .map_err(|e| err("directory_mailing_list", e))?;
        let contacts = list(
            &client,
            &["directories", &did, "contacts"],
            &[("pageSize", "100"), ("useNewPaginationScheme", "true")],
        )
        .await
        .map_err(|e| err("directory_contact", e))?;
        let ids: Vec<String> = contacts.iter().filter_map(|c| s(c, "contactId")).collect();
        let full: Vec<Json> = stream::iter(ids)
            .map(|cid| {
                let client = client.clone();
                let did = did.clone();
                async move {
                    client
                        .get::<Json>(client.url(&["directories", &did, "contacts", &cid]))
                        .await
                }
            })
            .buffer_unordered(CONTACT_PARALLELISM)
            .try_collect()
            .await
            .map_err(|e| err("directory_contact", e))?;

        let mut b = Batches::default();
        let dv = || vec![Value::Text(did.clone())];
        b.delete_where("directory_contact", "directory_id", dv());
        b.delete_where("contact_mailing_list_membership", "directory_id", dv());
        tier2(ctx, &client, &did, &full, &mut b, &mut off).await?;
        for l in &lists {
            let mut r = ctx.specs.row("directory_mailing_list");
            r.put("id", l.get("mailingListId"))
                .text("directory_id", did.clone())
                .put("creation_date", l.get("creationDate"))
                .put("last_modified_date", l.get("lastModifiedDate"))
                .put("name", l.get("name"))
                .put("owner_id", l.get("ownerId"));
            b.push("directory_mailing_list", r.build());
        }
        for c in &full {
            let mut r = ctx.specs.row("directory_contact");
            r.put("id", c.get("contactId"))
                .text("directory_id", did.clone());
            for (col, k) in [
                ("creation_date", "creationDate"),
                ("directory_unsubscribe_date", "directoryUnsubscribeDate"),
                ("directory_unsubscribed", "directoryUnsubscribed"),
                ("email", "email"),
                ("email_domain", "emailDomain"),
                ("ext_ref", "extRef"),
                ("first_name", "firstName"),
                ("language", "language"),
                ("last_modified", "lastModified"),
                ("last_name", "lastName"),
                ("phone", "phone"),
                ("write_blanks", "writeBlanks"),
            ] {
                r.put(col, c.get(k));
            }
            b.push("directory_contact", r.build());
            if let Some(Json::Object(m)) = c.get("mailingListMembership") {
                for (ml, mem) in m {
                    let mut r = ctx.specs.row("contact_mailing_list_membership");
                    r.put("contact_lookup_id", mem.get("contactLookupId"))
                        .put("contact_id", c.get("contactId"))
                        .text("directory_id", did.clone())
                        .text("mailing_list_id", ml.clone())
                        .put("name", mem.get("name"))
                        .put("owner_id", mem.get("ownerId"))
                        .put("unsubscribe_date", mem.get("unsubscribeDate"))
                        .put("unsubscribed", mem.get("unsubscribed"));
                    b.push("contact_mailing_list_membership", r.build());
                }
            }
        }
        let commit = Commit {
            batches: b.into_vec(),
            mark_unseen_deleted: vec![MarkUnseenDeleted {
                table: "directory_mailing_list".into(),
                scope: vec![("directory_id".into(), Value::Text(did.clone()))],
            }],
            ..Default::default()
        };
        ctx.commit(commit, "directory_contact", None).await?;
        ctx.progress.advanced("directories", 1);
    }
    ctx.progress.stream_finished("directories");
    Ok(())
}

/// A Tier 2 read of one directory: `Ok(None)` when refused (the table is skipped, once).
async fn optional<T>(
    ctx: &mut Ctx<'_>,
    table: &'static str,
    scope: &str,
    off: &mut Vec<&'static str>,
    fut: impl std::future::Future<Output = Result<T, xmbridge_qualtrics::Error>>,
) -> Result<Option<T>, SyncError> {
    if off.contains(&table) {
        return Ok(None);
    }
    match fut.await {
        Ok(v) => Ok(Some(v)),
        Err(e) if super::forbidden(&e) => {
            let fix = format!("needs the {scope} scope (OAuth clients) or XM Directory access");
            ctx.skip(&[table], &super::skip_reason(&fix, &e));
            off.push(table);
            Ok(None)
        }
        Err(e) => Err(SyncError::api(table, None, e)),
    }
}

/// `contact_transaction` (per contact), `directory_sample`, `frequency_rule` and
/// `frequency_rule_target` of one directory, replacing its rows in `b` (not soft tables).
async fn tier2(
    ctx: &mut Ctx<'_>,
    client: &Client,
    did: &str,
    contacts: &[Json],
    b: &mut Batches,
    off: &mut Vec<&'static str>,
) -> Result<(), SyncError> {
    let dv = || vec![Value::Text(did.to_string())];
    let ids: Vec<String> = contacts.iter().filter_map(|c| s(c, "contactId")).collect();
    let txs = optional(
        ctx,
        "contact_transaction",
        "read:contact_transactions",
        off,
        stream::iter(ids)
            .map(|cid| {
                let client = client.clone();
                async move {
                    list(
                        &client,
                        &["directories", did, "contacts", &cid, "transactions"],
                        &[("pageSize", "100")],
                    )
                    .await
                }
            })
            .buffer_unordered(CONTACT_PARALLELISM)
            .try_concat(),
    )
    .await?;
    if let Some(txs) = txs {
        b.delete_where("contact_transaction", "directory_id", dv());
        for t in &txs {
            let mut r = ctx.specs.row("contact_transaction");
            r.put("id", t.get("transactionId"))
                .text("directory_id", did)
                .put("contact_id", t.get("contactId"))
                .put("mailing_list_id", t.get("mailingListId"))
                .put("transaction_date", t.get("transactionDate"));
            b.push("contact_transaction", r.build());
        }
    }
    let samples = optional(
        ctx,
        "directory_sample",
        "read:samples",
        off,
        list(
            client,
            &["directories", did, "samples"],
            &[("pageSize", "100")],
        ),
    )
    .await?;
    if let Some(samples) = samples {
        b.delete_where("directory_sample", "directory_id", dv());
        for x in &samples {
            let mut r = ctx.specs.row("directory_sample");
            r.put("id", x.get("sampleId")).text("directory_id", did);
            for (col, k) in [
                ("category", "category"),
                ("creation_logic", "creationLogic"),
                ("creator_id", "creatorId"),
                ("description", "description"),
                ("frozen", "frozen"),
                ("hidden", "hidden"),
                ("name", "name"),
                ("owner_id", "ownerId"),
                ("parent_group_id", "parentGroupId"),
            ] {
                r.put(col, x.get(k));
            }
            b.push("directory_sample", r.build());
        }
    }
    let rules = optional(
        ctx,
        "frequency_rule",
        "read:directories",
        off,
        list(
            client,
            &["directories", did, "frequencyrules"],
            &[("pageSize", "100")],
        ),
    )
    .await?;
    if let Some(rules) = rules {
        b.delete_where("frequency_rule", "directory_id", dv());
        b.delete_where("frequency_rule_target", "directory_id", dv());
        for x in &rules {
            let mut r = ctx.specs.row("frequency_rule");
            r.put("id", x.get("ruleId")).text("directory_id", did);
            for (col, k) in [
                ("always_send", "alwaysSend"),
                ("days_between", "daysBetween"),
                ("email_type", "emailType"),
                ("num_messages", "numMessages"),
                ("period", "period"),
                ("target_type", "targetType"),
            ] {
                r.put(col, x.get(k));
            }
            b.push("frequency_rule", r.build());
            for t in x
                .get("targets")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                let mut r = ctx.specs.row("frequency_rule_target");
                r.put("target_id", t.get("targetId"))
                    .text("directory_id", did)
                    .put("rule_id", x.get("ruleId"));
                b.push("frequency_rule_target", r.build());
            }
        }
    }
    Ok(())
}

/// Transaction batches of every directory; skipped (with the reason) without Manage Directories.
pub(crate) async fn run_batches(ctx: &mut Ctx<'_>) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let fix = "needs the XM Directory permission \"Manage Directories\"; a brand administrator grants it under Admin → Users → permissions → Contacts";
    let dirs = match directories(&client).await {
        Ok(d) => d,
        // The directory stream already said why directories are unreadable.
        Err(e) if super::forbidden(&e) => {
            ctx.skip(batch_tables(), &super::skip_reason(fix, &e));
            return Ok(());
        }
        Err(e) => return Err(SyncError::api("transaction_batch", None, e)),
    };
    ctx.progress
        .stream_started("transaction_batches", Some(dirs.len() as u64));
    for d in &dirs {
        let Some(did) = s(d, "directoryId") else {
            continue;
        };
        let Some(batches) = first_call(
            ctx,
            batch_tables(),
            fix,
            list(
                &client,
                &["directories", &did, "transactionbatches"],
                &[("pageSize", "100")],
            ),
        )
        .await?
        else {
            break;
        };
        let mut b = Batches::default();
        b.delete_where(
            "transaction_batch",
            "directory_id",
            vec![Value::Text(did.clone())],
        );
        b.delete_where(
            "batch_transaction_membership",
            "directory_id",
            vec![Value::Text(did.clone())],
        );
        for bt in &batches {
            let Some(bid) = s(bt, "batchId") else {
                continue;
            };
            let mut r = ctx.specs.row("transaction_batch");
            r.text("id", bid.clone())
                .text("directory_id", did.clone())
                .put("creation_date", bt.get("creationDate"));
            b.push("transaction_batch", r.build());
            let txs = list(
                &client,
                &[
                    "directories",
                    &did,
                    "transactionbatches",
                    &bid,
                    "transactions",
                ],
                &[("pageSize", "100")],
            )
            .await
            .map_err(|e| SyncError::api("batch_transaction_membership", None, e))?;
            for t in &txs {
                let mut r = ctx.specs.row("batch_transaction_membership");
                r.text("batch_id", bid.clone())
                    .text("directory_id", did.clone())
                    .put("transaction_id", t.get("transactionId"))
                    .put("date_added_to_batch", t.get("dateAddedToBatch"));
                b.push("batch_transaction_membership", r.build());
            }
        }
        let commit = Commit {
            batches: b.into_vec(),
            ..Default::default()
        };
        ctx.commit(commit, "transaction_batch", None).await?;
        ctx.progress.advanced("transaction_batches", 1);
    }
    ctx.progress.stream_finished("transaction_batches");
    Ok(())
}
