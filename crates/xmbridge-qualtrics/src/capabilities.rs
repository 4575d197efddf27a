//! "Save & Test": which destination table groups this account can sync.
//!
//! Each group of tables (docs/design/schema.md, "Table groups") is fed by a few API routes; one
//! cheap call per group (a page of one element) tells whether the credentials may read it. A 403 on
//! an optional group means it is skipped with the reason and the fix, and the rest still syncs; a
//! 403 on surveys or responses means the account cannot sync at all. This module only reads; it
//! never changes the account.

use crate::client::Client;
use crate::error::Error;
use serde_json::Value;

/// A group of destination tables that share their source routes, permissions and one sync
/// stream. This list is the one home of "which table belongs to which group": the sync runs its
/// streams from it and Save & Test probes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableGroup {
    /// How Save & Test names the group to a person (`surveys and definitions`).
    pub name: &'static str,
    /// The sync stream that writes the group (`surveys`), as its log and summary name it.
    pub stream: &'static str,
    /// Every table the stream writes.
    pub tables: &'static [&'static str],
    /// Without it the account cannot sync at all.
    pub required: bool,
}

/// The table groups of docs/design/schema.md, in the order a sync runs them.
pub const TABLE_GROUPS: &[TableGroup] = &[
    TableGroup {
        name: "surveys and definitions",
        stream: "surveys",
        tables: &[
            "survey",
            "survey_version",
            "survey_version_publish_event",
            "block",
            "block_question",
            "question",
            "question_option",
            "sub_question",
            "quota",
            "quota_group",
            "group_quota_membership",
        ],
        required: true,
    },
    TableGroup {
        name: "responses",
        stream: "responses",
        tables: &[
            "survey_response",
            "question_response",
            "survey_embedded_data",
        ],
        required: true,
    },
    TableGroup {
        name: "directories and contacts",
        stream: "directories",
        tables: &[
            "directory",
            "directory_contact",
            "directory_mailing_list",
            "contact_mailing_list_membership",
            "contact_transaction",
            "directory_sample",
            "frequency_rule",
            "frequency_rule_target",
        ],
        required: false,
    },
    TableGroup {
        name: "transaction batches",
        stream: "transaction_batches",
        tables: &["transaction_batch", "batch_transaction_membership"],
        required: false,
    },
    TableGroup {
        name: "distributions",
        stream: "distributions",
        tables: &[
            "distribution",
            "distribution_contact",
            "sms_distribution",
            "sms_distribution_contact",
        ],
        required: false,
    },
    TableGroup {
        name: "users",
        stream: "users",
        tables: &["user"],
        required: false,
    },
    TableGroup {
        name: "libraries",
        stream: "libraries",
        tables: &[
            "library",
            "library_message",
            "library_block",
            "library_question",
            "library_survey",
        ],
        required: false,
    },
];

/// Tables of Fivetran's Qualtrics schema that no sync fills, each with why. They are not in the
/// sync's catalog (no destination gets an always-empty table); a table selection naming one is
/// refused with the reason rather than as an unknown name.
pub const NOT_SYNCED: &[(&str, &str)] = &[(
    "ticket",
    "Qualtrics' XM tickets are not synced: the API contract xmbridge follows (docs/design/qualtrics-api.md) describes no ticket export, and a stream built on a guessed endpoint would fail on real brands; leave `ticket` out of the selection (docs/sync.md, \"Tables not synced\")",
)];

/// Why `table` is not synced, if it is one of [`NOT_SYNCED`].
pub fn not_synced(table: &str) -> Option<&'static str> {
    NOT_SYNCED
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, why)| *why)
}

/// The group whose sync stream is `stream` (`surveys`, `responses`, …).
pub fn group_of_stream(stream: &str) -> Option<&'static TableGroup> {
    TABLE_GROUPS.iter().find(|g| g.stream == stream)
}

/// The tables the sync stream `stream` writes (empty for a name that is no stream).
pub fn tables_of_stream(stream: &str) -> &'static [&'static str] {
    group_of_stream(stream).map_or(&[], |g| g.tables)
}

/// The group a table belongs to.
pub fn group_of_table(table: &str) -> Option<&'static TableGroup> {
    TABLE_GROUPS.iter().find(|g| g.tables.contains(&table))
}

/// What the probe found for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every table of the group is readable.
    Ok,
    /// Not readable with these credentials; the text says why and how to fix it.
    Skipped(String),
}

#[derive(Clone, Debug)]
/// The probe's verdict on one table group.
pub struct GroupReport {
    /// The group probed.
    pub group: &'static TableGroup,
    /// Whether the sync can read the group's tables.
    pub access: Access,
}

/// The outcome of [`probe`].
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// One report per table group, in the schema's group order.
    pub groups: Vec<GroupReport>,
    /// The directory the XM Directory tables sync from: the configured one, else the default
    /// (or first) directory of the brand.
    pub directory: Option<String>,
    /// True when `directory` was found by listing the brand's directories, not configured.
    pub directory_discovered: bool,
    /// How many surveys the first page of the survey list held (0 when it was not readable).
    pub surveys_seen: usize,
}

impl Capabilities {
    /// True when every required group is readable.
    pub fn can_sync(&self) -> bool {
        self.groups
            .iter()
            .all(|g| !g.group.required || g.access == Access::Ok)
    }
}

fn why_forbidden(group: &str, e: &Error) -> String {
    let server = e.api().map(|a| a.error_message.clone()).unwrap_or_default();
    // A token without the scope is refused the same way as a user without the right; Qualtrics
    // names the scope then, and the fix is the client's scopes, not the user's role.
    if server.to_ascii_lowercase().contains("scope") {
        return format!(
            "the OAuth token lacks a scope this group needs: add it to the connection's scopes (`--scopes`) and to the OAuth client in Qualtrics, then authorize again (Qualtrics said: {server})"
        );
    }
    let fix = match group {
        "transaction batches" => {
            "needs the XM Directory permission \"Manage Directories\"; a brand administrator grants it under Admin → Users → permissions → Contacts"
        }
        "users" => "needs a brand administrator (the users API is for brand admins only)",
        "directories and contacts" => {
            "needs XM Directory access (and the read:directories / read:directory_contacts scopes for OAuth clients)"
        }
        "distributions" => {
            "needs access to the surveys' distributions (scope read:distributions for OAuth clients)"
        }
        "libraries" => "needs library access (scope read:libraries for OAuth clients)",
        "responses" => "needs response access (scope read:survey_responses for OAuth clients)",
        _ => "needs survey access (scope read:surveys for OAuth clients)",
    };
    if server.is_empty() {
        fix.to_string()
    } else {
        format!("{fix} (Qualtrics said: {server})")
    }
}

/// Probes one group: Ok, Skipped on 403/401-for-scope, or the error for anything else.
async fn check(
    group: &str,
    client: &Client,
    segments: &[&str],
    query: &[(&str, &str)],
) -> Result<Access, Error> {
    let mut url = client.url(segments);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    match client.get::<Value>(url).await {
        Ok(_) => Ok(Access::Ok),
        Err(e) if e.status() == Some(403) => Ok(Access::Skipped(why_forbidden(group, &e))),
        Err(e) => Err(e),
    }
}

/// Calls one cheap route per table group. `directory`: the configured default directory, if any.
pub async fn probe(client: &Client, directory: Option<&str>) -> Result<Capabilities, Error> {
    let mut reports = Vec::new();
    let mut access = |name: &str, a: Access| {
        let group = TABLE_GROUPS
            .iter()
            .find(|g| g.name == name)
            .unwrap_or(&TABLE_GROUPS[0]);
        reports.push(GroupReport { group, access: a });
    };

    let surveys: Result<Value, Error> = client.get(client.url(&["surveys"])).await;
    let first_survey = match surveys {
        Ok(v) => {
            let elements = v["elements"].as_array().cloned().unwrap_or_default();
            access("surveys and definitions", Access::Ok);
            elements
                .first()
                .and_then(|s| s["id"].as_str())
                .map(str::to_string)
                .map(|id| (id, elements.len()))
        }
        Err(e) if e.status() == Some(403) => {
            access(
                "surveys and definitions",
                Access::Skipped(why_forbidden("surveys and definitions", &e)),
            );
            None
        }
        Err(e) => return Err(e),
    };
    let surveys_seen = first_survey.as_ref().map(|(_, n)| *n).unwrap_or(0);
    match &first_survey {
        Some((sid, _)) => {
            let a = check("responses", client, &["surveys", sid, "filters"], &[]).await?;
            access("responses", a);
            let a = check(
                "distributions",
                client,
                &["distributions"],
                &[("surveyId", sid), ("pageSize", "1")],
            )
            .await?;
            access("distributions", a);
        }
        None => {
            // No survey to ask about: nothing to sync there, which is not an error.
            access("responses", Access::Ok);
            access("distributions", Access::Ok);
        }
    }

    let mut directory_id = directory.map(str::to_string);
    let mut discovered = false;
    match client.get::<Value>(client.url(&["directories"])).await {
        Ok(v) => {
            if directory_id.is_none() {
                let els = v["elements"].as_array().cloned().unwrap_or_default();
                directory_id = els
                    .iter()
                    .find(|d| d["isDefault"].as_bool() == Some(true))
                    .or_else(|| els.first())
                    .and_then(|d| d["directoryId"].as_str())
                    .map(str::to_string);
                discovered = directory_id.is_some();
            }
            match &directory_id {
                Some(d) => {
                    let a = check(
                        "directories and contacts",
                        client,
                        &["directories", d, "contacts"],
                        &[("pageSize", "1")],
                    )
                    .await?;
                    access("directories and contacts", a);
                    let a = check(
                        "transaction batches",
                        client,
                        &["directories", d, "transactionbatches"],
                        &[("pageSize", "1")],
                    )
                    .await?;
                    access("transaction batches", a);
                }
                None => {
                    let why = "the brand has no XM Directory".to_string();
                    access("directories and contacts", Access::Skipped(why.clone()));
                    access("transaction batches", Access::Skipped(why));
                }
            }
        }
        Err(e) if e.status() == Some(403) => {
            let why = why_forbidden("directories and contacts", &e);
            access("directories and contacts", Access::Skipped(why.clone()));
            access("transaction batches", Access::Skipped(why));
        }
        Err(e) => return Err(e),
    }
    let a = check("users", client, &["users"], &[]).await?;
    access("users", a);
    let a = check("libraries", client, &["libraries"], &[]).await?;
    access("libraries", a);

    // Report in schema order whatever order the calls ran in.
    reports.sort_by_key(|r| TABLE_GROUPS.iter().position(|g| g.name == r.group.name));
    Ok(Capabilities {
        groups: reports,
        directory: directory_id,
        directory_discovered: discovered,
        surveys_seen,
    })
}
