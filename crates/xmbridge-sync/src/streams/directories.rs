//! XM Directory → `directory`, `directory_contact`, `directory_mailing_list`,
//! `contact_mailing_list_membership`; and transaction batches → `transaction_batch`,
//! `batch_transaction_membership` (these two need "Manage Directories": on 403 they are skipped
//! with the reason and everything else syncs).
//!
//! Tier 2, in the same per-directory commit: `contact_transaction` (per contact,
//! `GET …/contacts/{id}/transactions`), `directory_sample`, `frequency_rule` and
//! `frequency_rule_target` (replaced per directory; a refused read skips just that table).
//!
//! `directory` and `directory_mailing_list` are soft-delete tables (unseen rows are marked
//! deleted), read in full on every run. Contacts follow what changed (see [`contacts`]): the
//! contact list is read in full, a contact on its own only when it is new, changed, edited, moved
//! between mailing lists or due for its periodic refresh; its rows, memberships and transactions
//! are rewritten, in commits of `--commit-every` contacts (memory stays flat), the cursor with
//! the last.

use super::tracked::{CURSOR_VERSION, Tracked, fingerprint, interval_ms, trusted_cursor};
use super::{first_call, list};
use crate::convert::parse_time;
use crate::engine::{Batches, Ctx, SyncError};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value as Json, json};
use std::collections::{HashMap, HashSet};
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
        let lists = list(
            &client,
            &["directories", &did, "mailinglists"],
            &[("pageSize", "100"), ("includeCount", "true")],
        )
        .await
        .map_err(|e| SyncError::api("directory_mailing_list", None, e))?;
        let mut b = Batches::default();
        let cursor = contacts(ctx, &client, &did, &lists, &mut b, &mut off).await?;
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
        let commit = Commit {
            batches: b.into_vec(),
            mark_unseen_deleted: vec![MarkUnseenDeleted {
                table: "directory_mailing_list".into(),
                scope: vec![("directory_id".into(), Value::Text(did.as_str().into()))],
            }],
            cursors: vec![cursor],
            ..Default::default()
        };
        ctx.commit(commit, "directory_contact", None).await?;
        ctx.progress.advanced("directories", 1);
    }
    ctx.progress.stream_finished("directories");
    Ok(())
}

/// What earlier runs saw of one directory's contacts: the cursor `contacts:{directory}`,
/// committed with the directory's rows.
#[derive(Debug, Default)]
struct Seen {
    contacts: Tracked,
    /// Contacts edited at or after this (Qualtrics' clock, epoch ms) are searched for.
    modified_since: Option<i64>,
    /// Mailing list → its `contactCount` and `lastModifiedDate` when its members were compared.
    lists: HashMap<String, Json>,
}

impl Seen {
    /// `None` for a cursor of another shape (an older version): every contact is read again.
    fn parse(v: &Json) -> Option<Seen> {
        let lists = v
            .get("lists")
            .and_then(Json::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Some(Seen {
            contacts: Tracked::from_cursor(v, "contacts")?,
            modified_since: v.get("modified_since").and_then(Json::as_i64),
            lists,
        })
    }

    fn to_json(&self) -> Json {
        json!({
            "v": CURSOR_VERSION,
            "modified_since": self.modified_since,
            "lists": self.lists,
            "contacts": self.contacts.to_json(),
        })
    }
}

/// Edits seen by a search are at least this far behind the clock they are compared with.
const CLOCK_MARGIN_MS: i64 = 5 * 60 * 1000;

/// One directory's contacts into `b`; returns the cursor to commit with them.
///
/// The contact list is read in full (one call per 100 contacts), but a contact is read on its own
/// (`GET …/contacts/{id}` and its transactions: the only source of the dates, `emailDomain`,
/// `writeBlanks`, list memberships and transactions) only when it is new, its list element
/// changed, a search by `lastModified` finds it edited, a mailing list it joined or left changed,
/// or its periodic refresh is due. Contacts gone from the list are deleted with their memberships
/// and transactions. Without a cursor (first run, `--full`, tables dropped) every contact is read
/// and the directory's rows are replaced.
async fn contacts(
    ctx: &mut Ctx<'_>,
    client: &Client,
    did: &str,
    lists: &[Json],
    b: &mut Batches,
    off: &mut Vec<&'static str>,
) -> Result<(String, Json), SyncError> {
    let started = std::time::Instant::now();
    let err = |table: &str, e| SyncError::api(table, None, e);
    let stream_name = format!("contacts:{did}");
    let mut seen = trusted_cursor(ctx, &stream_name, "directory_contact", "directories")
        .await?
        .as_ref()
        .and_then(Seen::parse);
    // Only the id and fingerprint of each element are kept, page by page.
    let mut url = client.url(&["directories", did, "contacts"]);
    url.query_pairs_mut()
        .append_pair("pageSize", "100")
        .append_pair("useNewPaginationScheme", "true");
    let listed: Vec<(String, u64)> = client
        .paginate::<Json>(url)
        .try_filter_map(|c| async move { Ok(s(&c, "contactId").map(|cid| (cid, fingerprint(&c)))) })
        .try_collect()
        .await
        .map_err(|e| err("directory_contact", e))?;
    ctx.summary.contacts_listed += listed.len() as u64;

    let now_ms = ctx.synced_at_ms;
    let interval_ms = interval_ms(ctx.opts);
    let mut due: HashSet<String> = HashSet::new();
    if let Some(seen) = seen.as_mut() {
        for (cid, fp) in &listed {
            if seen.contacts.stale(cid, *fp, now_ms, interval_ms) {
                due.insert(cid.clone());
            }
        }
        let known: HashSet<&str> = listed.iter().map(|(c, _)| c.as_str()).collect();
        match edited_since(client, did, seen).await {
            Ok(edited) => due.extend(edited.into_iter().filter(|c| known.contains(c.as_str()))),
            Err(why) => {
                tracing::warn!(
                    directory = did,
                    "{why}; reading every contact of this directory in full this run"
                );
                due.extend(known.iter().map(|c| c.to_string()));
            }
        }
        for cid in membership_changes(ctx, client, did, lists, seen).await? {
            if known.contains(cid.as_str()) {
                due.insert(cid);
            }
        }
    }
    let replace_all = seen.is_none();
    let to_read: Vec<String> = if replace_all {
        listed.iter().map(|(c, _)| c.clone()).collect()
    } else {
        listed
            .iter()
            .filter(|(c, _)| due.contains(c))
            .map(|(c, _)| c.clone())
            .collect()
    };
    // Read in chunks, each its own commit but the last (which goes with the mailing lists and the
    // cursor): memory stays flat however large the directory. Every write is an upsert or a
    // delete by key, and the cursor commits last, so a run cut short between chunks is redone
    // by the next (the contacts still differ from the old cursor) to the same rows.
    let chunks: Vec<&[String]> = to_read.chunks(ctx.opts.commit_every.max(1)).collect();
    let mut read_ids: HashMap<String, Option<i64>> = HashMap::new();
    let mut own = Batches::default();
    for i in 0..chunks.len().max(1) {
        let ids = chunks.get(i).copied().unwrap_or_default();
        let last = i + 1 >= chunks.len();
        let into: &mut Batches = if last { &mut *b } else { &mut own };
        let replace = match (replace_all, i) {
            (true, 0) => Replace::Directory,
            (true, _) => Replace::Nothing,
            (false, _) => {
                Replace::Contacts(ids.iter().map(|c| Value::Text(c.as_str().into())).collect())
            }
        };
        read_contacts(ctx, client, did, ids, replace, into, off, &mut read_ids).await?;
        if !last {
            // Replacing everything: the first commit deletes the directory's rows, so an older
            // cursor must not outlive it (a run cut short after it, then a plain run, would
            // trust that cursor and never read the contacts of the chunks not written yet).
            let cursors = if replace_all && i == 0 {
                vec![(stream_name.clone(), Json::Null)]
            } else {
                Vec::new()
            };
            let commit = Commit {
                batches: std::mem::take(&mut own).into_vec(),
                cursors,
                ..Default::default()
            };
            ctx.commit(commit, "directory_contact", None).await?;
        }
    }

    // What the cursor will say: every listed contact that still exists.
    let previous = seen.unwrap_or_default();
    let wanted: HashSet<&str> = to_read.iter().map(String::as_str).collect();
    let contacts = Tracked::next(
        Some(&previous.contacts),
        &listed,
        &wanted,
        &read_ids,
        now_ms,
    );
    let next = Seen {
        // The next search starts before anything this run could have missed: the newest edit
        // it knows of, less the time this pass took and a margin for clock skew.
        modified_since: contacts
            .0
            .values()
            .filter_map(|c| c.modified)
            .max()
            .map(|m| m - started.elapsed().as_millis() as i64 - CLOCK_MARGIN_MS),
        contacts,
        lists: lists
            .iter()
            .filter_map(|l| Some((s(l, "mailingListId")?, list_stamp(l))))
            .collect(),
    };
    if !replace_all {
        // Gone from the list since the last run: the contact, its memberships and transactions.
        let gone: Vec<Value> = previous
            .contacts
            .0
            .keys()
            .filter(|c| !next.contacts.0.contains_key(*c) && !read_ids.contains_key(*c))
            .map(|c| Value::Text(c.as_str().into()))
            .collect();
        b.delete_where("directory_contact", "id", gone.clone());
        b.delete_where(
            "contact_mailing_list_membership",
            "contact_id",
            gone.clone(),
        );
        if !off.contains(&"contact_transaction") {
            b.delete_where("contact_transaction", "contact_id", gone);
        }
    }
    tier2(ctx, client, did, b, off).await?;
    Ok((stream_name, next.to_json()))
}

/// Reads `ids` in full with their transactions, and writes their rows, memberships and
/// transactions into `b` after the deletes `replace` says. Records each read contact's
/// `lastModified` in `read_ids`; a contact that answers 404 (deleted since the list was read) is
/// left out, and its old rows go with the `replace` deletes.
#[allow(clippy::too_many_arguments)]
async fn read_contacts(
    ctx: &mut Ctx<'_>,
    client: &Client,
    did: &str,
    ids: &[String],
    replace: Replace,
    b: &mut Batches,
    off: &mut Vec<&'static str>,
    read_ids: &mut HashMap<String, Option<i64>>,
) -> Result<(), SyncError> {
    let full: Vec<Json> = stream::iter(ids.to_vec())
        .map(|cid| {
            let client = client.clone();
            let did = did.to_string();
            async move {
                match client
                    .get::<Json>(client.url(&["directories", &did, "contacts", &cid]))
                    .await
                {
                    Ok(c) => Ok(Some(c)),
                    Err(e) if e.status() == Some(404) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .buffered(CONTACT_PARALLELISM)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| SyncError::api("directory_contact", None, e))?
        .into_iter()
        .flatten()
        .collect();
    ctx.summary.contacts_read += ids.len() as u64;
    let dv = || vec![Value::Text(did.into())];
    match &replace {
        Replace::Directory => {
            b.delete_where("directory_contact", "directory_id", dv());
            b.delete_where("contact_mailing_list_membership", "directory_id", dv());
        }
        Replace::Contacts(ids) => {
            // The contact row itself is upserted (or, gone, deleted with the vanished ones).
            b.delete_where("contact_mailing_list_membership", "contact_id", ids.clone());
            b.delete_where("directory_contact", "id", {
                let read: HashSet<String> = full.iter().filter_map(|c| s(c, "contactId")).collect();
                ids.iter()
                    .filter(|v| !matches!(v, Value::Text(t) if read.contains(t.as_str())))
                    .cloned()
                    .collect()
            });
        }
        Replace::Nothing => {}
    }
    transactions(ctx, client, did, &full, &replace, b, off).await?;
    for c in &full {
        read_ids.insert(
            s(c, "contactId").unwrap_or_default(),
            c.get("lastModified").and_then(parse_time),
        );
        let mut r = ctx.specs.row("directory_contact");
        r.put("id", c.get("contactId")).text("directory_id", did);
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
                    .text("directory_id", did)
                    .text("mailing_list_id", ml.clone())
                    .put("name", mem.get("name"))
                    .put("owner_id", mem.get("ownerId"))
                    .put("unsubscribe_date", mem.get("unsubscribeDate"))
                    .put("unsubscribed", mem.get("unsubscribed"));
                b.push("contact_mailing_list_membership", r.build());
            }
        }
    }
    Ok(())
}

/// `contact_transaction` of the contacts read (`GET …/contacts/{id}/transactions`, 8 at a time),
/// after the deletes `replace` says; a refused read skips the table (said once).
async fn transactions(
    ctx: &mut Ctx<'_>,
    client: &Client,
    did: &str,
    contacts: &[Json],
    replace: &Replace,
    b: &mut Batches,
    off: &mut Vec<&'static str>,
) -> Result<(), SyncError> {
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
    let Some(txs) = txs else {
        return Ok(());
    };
    match replace {
        Replace::Directory => b.delete_where(
            "contact_transaction",
            "directory_id",
            vec![Value::Text(did.into())],
        ),
        Replace::Contacts(ids) => b.delete_where("contact_transaction", "contact_id", ids.clone()),
        Replace::Nothing => {}
    }
    for t in &txs {
        let mut r = ctx.specs.row("contact_transaction");
        r.put("id", t.get("transactionId"))
            .text("directory_id", did)
            .put("contact_id", t.get("contactId"))
            .put("mailing_list_id", t.get("mailingListId"))
            .put("transaction_date", t.get("transactionDate"));
        b.push("contact_transaction", r.build());
    }
    Ok(())
}

/// Contacts a search finds edited since the last run whose edit is newer than their last full
/// read. `Err` with the reason when the search cannot answer completely (more than 10,000 hits:
/// Qualtrics refuses to page further; or the search is refused): the caller then reads every
/// contact.
async fn edited_since(client: &Client, did: &str, seen: &Seen) -> Result<Vec<String>, String> {
    let Some(since) = seen.modified_since else {
        return Err("no edit time is known from the last run".into());
    };
    let mut url = client.url(&["directories", did, "contacts", "search"]);
    url.query_pairs_mut().append_pair("pageSize", "100");
    let body =
        json!({"filter": {"filterType": "lastModified", "comparison": "gte", "value": since}});
    let hits: Vec<Json> = client
        .paginate_post(url, body)
        .try_collect()
        .await
        .map_err(|e| format!("the search for contacts edited since the last run failed ({e})"))?;
    Ok(hits
        .iter()
        .filter_map(|h| {
            let cid = s(h, "id").or_else(|| s(h, "contactId"))?;
            let modified = h.get("lastModified").and_then(parse_time);
            let known = seen.contacts.0.get(&cid).and_then(|c| c.modified);
            match (modified, known) {
                (Some(m), Some(k)) if m <= k => None,
                _ => Some(cid),
            }
        })
        .collect())
}

/// A mailing list's count and modification date: when they differ from the last run, its
/// members are compared with the memberships held.
fn list_stamp(l: &Json) -> Json {
    json!([l.get("contactCount"), l.get("lastModifiedDate")])
}

/// Contacts that joined or left a mailing list since the last run: for every list whose stamp
/// changed (or that is new or gone), its members now against the memberships held in the
/// destination. Reading a list's members needs `read:mailing_list_contacts`; without it the
/// change waits for the contacts' refresh (said in the log).
async fn membership_changes(
    ctx: &mut Ctx<'_>,
    client: &Client,
    did: &str,
    lists: &[Json],
    seen: &Seen,
) -> Result<HashSet<String>, SyncError> {
    let mut changed = HashSet::new();
    let mut now: Vec<String> = Vec::new();
    for l in lists {
        let Some(ml) = s(l, "mailingListId") else {
            continue;
        };
        now.push(ml.clone());
        if seen.lists.get(&ml) == Some(&list_stamp(l)) {
            continue;
        }
        let members = match list(
            client,
            &["directories", did, "mailinglists", &ml, "contacts"],
            &[("pageSize", "100"), ("useNewPaginationScheme", "true")],
        )
        .await
        {
            Ok(m) => m,
            Err(e) if super::forbidden(&e) => {
                tracing::warn!(
                    directory = did,
                    mailing_list = ml,
                    "cannot read the list's members ({e}); membership changes of unchanged contacts wait for their refresh"
                );
                continue;
            }
            Err(e) => return Err(SyncError::api("contact_mailing_list_membership", None, e)),
        };
        let members: HashSet<String> = members.iter().filter_map(|m| s(m, "contactId")).collect();
        let held: HashSet<String> = held_members(ctx, did, &ml).await?;
        changed.extend(members.symmetric_difference(&held).cloned());
    }
    for ml in seen.lists.keys().filter(|ml| !now.contains(ml)) {
        changed.extend(held_members(ctx, did, ml).await?);
    }
    Ok(changed)
}

/// The contacts the destination holds as members of a mailing list.
async fn held_members(
    ctx: &mut Ctx<'_>,
    did: &str,
    ml: &str,
) -> Result<HashSet<String>, SyncError> {
    let filter = [
        ("directory_id".to_string(), Value::Text(did.into())),
        ("mailing_list_id".to_string(), Value::Text(ml.into())),
    ];
    Ok(ctx
        .keys(
            "contact_mailing_list_membership",
            "contact_id",
            &filter,
            None,
        )
        .await?
        .into_iter()
        .collect())
}

/// Which rows a chunk of contacts replaces.
enum Replace {
    /// All of the directory's (the first chunk when every contact is read).
    Directory,
    /// Those of these contacts (read again, or gone).
    Contacts(Vec<Value>),
    /// None (later chunks when every contact is read: the first chunk's deletes covered them).
    Nothing,
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

/// `directory_sample`, `frequency_rule` and `frequency_rule_target` of one directory, replacing
/// its rows in `b` (not soft tables).
async fn tier2(
    ctx: &mut Ctx<'_>,
    client: &Client,
    did: &str,
    b: &mut Batches,
    off: &mut Vec<&'static str>,
) -> Result<(), SyncError> {
    let dv = || vec![Value::Text(did.into())];
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
            vec![Value::Text(did.as_str().into())],
        );
        b.delete_where(
            "batch_transaction_membership",
            "directory_id",
            vec![Value::Text(did.as_str().into())],
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
