//! The destination tables the sync writes: every Tier 1 and Tier 2 table of `docs/design/schema.md`
//! (Fivetran's names), with its columns, types, primary key, soft-delete flag and the columns the
//! sync filters rows by. The engine prepares the tables of the selected stream groups from it;
//! streams fill rows by column name. Destinations receive these specs and know nothing of
//! Qualtrics.
//!
//! Conventions:
//! - Primary-key columns come first, in the schema's key order, then the other columns in the
//!   schema's order; a key column without a type in the schema is text. The key itself keeps that
//!   order too, except where [`KEY_LED_BY`] moves a column to its front.
//! - System columns (`<p>_synced`, `<p>_deleted`) are not in the specs: the destination adds
//!   them. The one exception is `question_response`'s surrogate key: its spec holds a text column
//!   named literally `"<p>_id"` (first column, the primary key); the sync computes its value (a
//!   stable hash of response_id, question_id, sub_question_key, sub_question_text,
//!   question_option_key, loop_id and the column's import id) and the destination replaces the
//!   `<p>` placeholder with the compat prefix (`_xmbridge_id` / `_fivetran_id`).
//! - `distribution` lists the stats columns the Qualtrics API documents (`stats_sent`, …); a
//!   stats field the API returns later is added with [`stats_column`] + [`TableSpec::add_column`]
//!   and a new `ensure_tables` call (schema evolution, never a failure).

use xmbridge_destinations::{Column, ColumnType, TableSpec};

/// The stats fields of a distribution the API documents, as `stats_*` columns.
pub const DISTRIBUTION_STATS: [&str; 9] = [
    "sent",
    "failed",
    "started",
    "bounced",
    "opened",
    "skipped",
    "finished",
    "complaints",
    "blocked",
];

/// Tables whose key is derived from one of their columns, which every row of a key then shares:
/// `question_response`'s `<p>_id` is `<response_id>:<hash>` (`answer_id` in
/// `streams/responses.rs`). They become each spec's [`TableSpec::key_implies`]: Delta finds the
/// rows a rewritten response replaces by its `response_id` alone, PostgreSQL as the range of keys
/// that start with `<response_id>:` (so the key must keep starting with it).
pub const KEY_IMPLIES: &[(&str, &str)] = &[("question_response", "response_id")];

/// Tables whose primary key leads with one of its columns the sync reads rows by
/// ([`FILTER_COLUMNS`]) instead of the schema's first key column; the columns keep the schema's
/// order, only the key (and so its index) is ordered this way. The key's index then serves the
/// sync's lookups by that column and the table needs no second index for it
/// ([`TableSpec::indexed_columns`]): each new embedded-data row of a response goes into one
/// B-tree instead of two (1,500 new rows at 1,000,000 responses: 24.5 → 13.7 ms on PostgreSQL,
/// docs/bench.md). What it costs: a lookup by `import_id` alone (one field across all
/// responses) is no longer served by an index. A table made before keeps its key's order and
/// its `response_id` index.
pub const KEY_LED_BY: &[(&str, &str)] = &[("survey_embedded_data", "response_id")];

/// The columns the sync deletes, marks or reads rows by, per table (edited and reconciled
/// responses by `response_id`; per-parent replacing commits (`delete_where`), soft-delete scopes
/// (`MarkUnseenDeleted`) and `keys` filters by `survey_id`, `directory_id`, `distribution_id`,
/// `library_id`). They become each spec's [`TableSpec::filter_columns`], which destinations
/// index. Keep in step with the streams' scoped deletes.
pub const FILTER_COLUMNS: &[(&str, &[&str])] = &[
    (
        "response_id",
        &["question_response", "survey_embedded_data"],
    ),
    (
        "survey_id",
        &[
            "survey_response",
            "survey_version",
            "block",
            "block_question",
            "question",
            "question_option",
            "sub_question",
            "quota",
            "quota_group",
            "survey_version_publish_event",
            "sms_distribution",
        ],
    ),
    (
        "directory_id",
        &[
            "directory_contact",
            "directory_mailing_list",
            "contact_mailing_list_membership",
            "transaction_batch",
            "batch_transaction_membership",
            "contact_transaction",
            "directory_sample",
            "frequency_rule",
            "frequency_rule_target",
        ],
    ),
    (
        "distribution_id",
        &["distribution_contact", "sms_distribution_contact"],
    ),
    (
        "library_id",
        &[
            "library_block",
            "library_message",
            "library_question",
            "library_survey",
        ],
    ),
    ("quota_group_id", &["group_quota_membership"]),
];

/// Every table of schema.md Tier 1 and Tier 2.
pub fn tables() -> Vec<TableSpec> {
    let stats: String = DISTRIBUTION_STATS
        .iter()
        .map(|f| format!(", stats_{f} i"))
        .collect();
    let distribution_contact_cols = "contact_frequency_rule_id, opened_at ts, response_completed_at ts, response_id, \
         response_started_at ts, sent_at ts, status, survey_link, survey_session_id";
    vec![
        // Tier 1
        t(
            "user",
            "id",
            true,
            "account_creation_date ts, account_expiration_date ts, account_status, division_id, email, \
             first_name, language, last_login_date ts, last_name, organization_id, \
             password_expiration_date ts, password_last_changed_date ts, response_count_auditable i, \
             response_count_deleted i, response_count_generated i, time_zone, unsubscribed b, \
             user_type, username",
        ),
        t(
            "survey",
            "id",
            true,
            "auto_scoring_category, brand_base_url, brand_id, bundle_short_name, composition_type, \
             creator_id, default_scoring_category, division_id, is_active b, last_accessed ts, \
             last_activated ts, last_modified ts, owner_id, project_category, project_type, \
             registry_sha, registry_version, schema_version, scoring_summary_after_questions b, \
             scoring_summary_after_survey b, scoring_summary_category, survey_name, survey_status",
        ),
        t(
            "survey_version",
            "id, survey_id",
            true,
            "creation_date ts, description, published b, user_id, version_number i, was_published b",
        ),
        t(
            "block",
            "id, survey_id",
            true,
            "block_locking, block_visibility, description, randomize_questions, type",
        ),
        t(
            "block_question",
            "block_id, question_id, survey_id",
            true,
            "",
        ),
        t(
            "question",
            "id, survey_id",
            true,
            "data_export_tag, data_visibility_hidden b, data_visibility_private b, next_answer_id i, \
             next_choice_id i, question_description, question_description_option, question_text, \
             question_text_unsafe, question_type, selector, sub_selector, \
             validation_setting_force_response, validation_setting_force_response_type, \
             validation_setting_type",
        ),
        t(
            "question_option",
            "key, question_id, survey_id",
            true,
            "recode_value, text",
        ),
        t(
            "sub_question",
            "key, question_id, survey_id",
            true,
            "choice_data_export_tag, text",
        ),
        t(
            "survey_response",
            "id",
            false,
            "survey_id, distribution_channel, duration_in_seconds i, end_date ts, external_reference, \
             finished i, ip_address, last_modified_date ts, location_latitude f, location_longitude f, \
             participant_email, participant_name, progress i, recipient_email, recipient_first_name, \
             recipient_last_name, recorded_date ts, start_date ts, status i, user_language",
        ),
        t(
            "question_response",
            "<p>_id",
            false,
            "response_id, question_id, question, sub_question_key, sub_question_text, \
             question_option_key, loop_id, label, text, value",
        ),
        t(
            "survey_embedded_data",
            "import_id, key, response_id",
            false,
            "value",
        ),
        t(
            "directory",
            "id",
            true,
            "name, is_default b, deduplication_criteria_email b, \
             deduplication_criteria_external_data_reference b, deduplication_criteria_first_name b, \
             deduplication_criteria_last_name b, deduplication_criteria_phone b",
        ),
        t(
            "directory_contact",
            "id, directory_id",
            false,
            "creation_date ts, directory_unsubscribe_date ts, directory_unsubscribed b, email, \
             email_domain, ext_ref, first_name, language, last_modified ts, last_name, phone, \
             write_blanks b",
        ),
        t(
            "directory_mailing_list",
            "id, directory_id",
            true,
            "creation_date ts, last_modified_date ts, name, owner_id",
        ),
        t(
            "contact_mailing_list_membership",
            "contact_lookup_id",
            false,
            "contact_id, directory_id, mailing_list_id, name, owner_id, unsubscribe_date ts, \
             unsubscribed b",
        ),
        t(
            "distribution",
            "id",
            true,
            &format!(
                "created_date ts, header_from_email, header_from_name, header_reply_to_email, \
                 header_subject, message_library_id, message_message_id, message_message_text, \
                 modified_date ts, organization_id, owner_id, parent_distribution_id, \
                 recipient_contact_id, recipient_library_id, recipient_mailing_list_id, \
                 recipient_sample_id, request_status, request_type, send_date ts, \
                 survey_link_expiration_date ts, survey_link_link_type, survey_link_survey_id{stats}"
            ),
        ),
        t(
            "distribution_contact",
            "contact_id, contact_lookup_id, distribution_id",
            false,
            distribution_contact_cols,
        ),
        // Tier 2
        t(
            "transaction_batch",
            "id, directory_id",
            false,
            "creation_date ts",
        ),
        t(
            "batch_transaction_membership",
            "batch_id, directory_id, transaction_id",
            false,
            "date_added_to_batch ts",
        ),
        t(
            "contact_transaction",
            "id, directory_id",
            false,
            "contact_id, mailing_list_id, transaction_date ts",
        ),
        t(
            "directory_sample",
            "id, directory_id",
            false,
            "category, creation_logic json, creator_id, description, frozen b, hidden b, name, \
             owner_id, parent_group_id",
        ),
        t(
            "frequency_rule",
            "id, directory_id",
            false,
            "always_send b, days_between i, email_type, num_messages i, period, target_type",
        ),
        t(
            "frequency_rule_target",
            "target_id, directory_id, rule_id",
            false,
            "",
        ),
        t("library", "id", false, "name"),
        t(
            "library_block",
            "folder_name, library_block_id, library_id",
            false,
            "block_name",
        ),
        t(
            "library_message",
            "id, library_id",
            false,
            "category, description",
        ),
        t(
            "library_question",
            "folder_name, library_question_id, library_id",
            false,
            "question_name",
        ),
        t(
            "library_survey",
            "folder_name, library_survey_id, library_id",
            false,
            "survey_name",
        ),
        t(
            "quota",
            "id, survey_id",
            false,
            "count i, count_for_undo i, logic_type, name, occurrences l, perform_action_on_user b, \
             quota_action, quota_realm",
        ),
        t(
            "quota_group",
            "id, survey_id",
            false,
            "multi_match, name, public b, selected b",
        ),
        t(
            "group_quota_membership",
            "quota_group_id, quota_id",
            false,
            "",
        ),
        t(
            "survey_version_publish_event",
            "date, survey_id, user_id, version_id",
            false,
            "",
        ),
        t(
            "sms_distribution",
            "id",
            false,
            "message_message_type, name, organization_id, owner_id, survey_id, recipient_contact_id, \
             recipient_library_id, recipient_mailing_list_id, recipient_sample_id, \
             recipient_transaction_batch_id, recipient_transaction_id, message_message_id, \
             message_library_id, request_status, request_type, send_date ts, \
             survey_link_expiration_date ts",
        ),
        t(
            "sms_distribution_contact",
            "contact_id, contact_lookup_id, distribution_id",
            false,
            distribution_contact_cols,
        ),
    ]
}

/// One table of the catalog by name.
pub fn table(name: &str) -> Option<TableSpec> {
    tables().into_iter().find(|t| t.name == name)
}

/// The column a distribution stats field is stored in: `sent` → `stats_sent`,
/// `emailsBounced` → `stats_emails_bounced` (camelCase to snake_case, like the other columns).
pub fn stats_column(field: &str) -> String {
    let mut out = String::from("stats_");
    for (i, c) in field.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Builds a spec from schema.md's notation: `"name"` is text, `"name ts"` a typed column.
fn t(name: &str, key: &str, soft: bool, cols: &str) -> TableSpec {
    let parse = |s: &str| -> Column {
        let mut it = s.split_whitespace();
        let name = it.next().unwrap_or_default().to_string();
        let ty = match it.next() {
            None | Some("s") => ColumnType::Text,
            Some("ts") => ColumnType::Timestamp,
            Some("b") => ColumnType::Bool,
            Some("i") => ColumnType::Int,
            Some("l") => ColumnType::BigInt,
            Some("f") => ColumnType::Float,
            Some("json") => ColumnType::Json,
            Some(other) => panic!("catalog: unknown type {other} in {name}"),
        };
        Column { name, ty }
    };
    let mut primary_key: Vec<String> = key.split(',').map(|k| k.trim().to_string()).collect();
    let mut columns: Vec<Column> = primary_key
        .iter()
        .map(|k| Column {
            name: k.clone(),
            ty: ColumnType::Text,
        })
        .collect();
    if let Some((_, lead)) = KEY_LED_BY.iter().find(|(table, _)| *table == name)
        && let Some(at) = primary_key.iter().position(|k| k == lead)
    {
        let lead = primary_key.remove(at);
        primary_key.insert(0, lead);
    }
    for c in cols.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        columns.push(parse(c));
    }
    let filter_columns = FILTER_COLUMNS
        .iter()
        .filter(|(_, tables)| tables.contains(&name))
        .map(|(col, _)| col.to_string())
        .collect();
    TableSpec {
        name: name.to_string(),
        columns,
        primary_key,
        soft_delete: soft,
        filter_columns,
        key_implies: KEY_IMPLIES
            .iter()
            .find(|(table, _)| *table == name)
            .map(|(_, col)| col.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_led_by_a_filter_column_of_the_key_needs_no_index_for_it() {
        for (name, col) in KEY_LED_BY {
            let spec = table(name).unwrap_or_else(|| panic!("KEY_LED_BY: no table {name}"));
            assert_eq!(spec.primary_key.first().map(String::as_str), Some(*col));
            assert!(spec.filter_columns.iter().any(|c| c == col), "{name}.{col}");
            assert!(!spec.indexed_columns().contains(col), "{name}.{col}");
        }
        // Only the key is reordered: the columns keep the schema's order, which the tables
        // already stored have.
        let names: Vec<String> = table("survey_embedded_data")
            .map(|t| t.columns.into_iter().map(|c| c.name).collect())
            .unwrap_or_default();
        assert_eq!(names, ["import_id", "key", "response_id", "value"]);
    }

    #[test]
    fn key_implies_names_real_tables_and_columns_outside_their_keys() {
        let all = tables();
        for (name, col) in KEY_IMPLIES {
            let spec = all
                .iter()
                .find(|t| t.name == *name)
                .unwrap_or_else(|| panic!("KEY_IMPLIES: no table {name}"));
            assert!(spec.columns.iter().any(|c| c.name == *col), "{name}.{col}");
            assert!(
                !spec.primary_key.iter().any(|k| k == col),
                "{name}: {col} is in the key"
            );
            assert_eq!(spec.key_implies.as_deref(), Some(*col));
        }
        let with = all.iter().filter(|t| t.key_implies.is_some()).count();
        assert_eq!(with, KEY_IMPLIES.len());
    }

    #[test]
    fn filter_columns_name_real_tables_and_columns() {
        let all = tables();
        for (col, names) in FILTER_COLUMNS {
            for name in *names {
                let spec = all
                    .iter()
                    .find(|t| t.name == *name)
                    .unwrap_or_else(|| panic!("FILTER_COLUMNS: no table {name}"));
                assert!(
                    spec.columns.iter().any(|c| c.name == *col),
                    "FILTER_COLUMNS: {name} has no column {col}"
                );
            }
        }
        let qr = all.iter().find(|t| t.name == "question_response").unwrap();
        assert_eq!(qr.indexed_columns(), ["response_id"]);
        let gqm = all
            .iter()
            .find(|t| t.name == "group_quota_membership")
            .unwrap();
        assert!(gqm.indexed_columns().is_empty(), "leading key column");
    }

    /// (table, primary key, soft) of schema.md, Tier 1 then Tier 2.
    const EXPECTED: &[(&str, &[&str], bool)] = &[
        ("user", &["id"], true),
        ("survey", &["id"], true),
        ("survey_version", &["id", "survey_id"], true),
        ("block", &["id", "survey_id"], true),
        (
            "block_question",
            &["block_id", "question_id", "survey_id"],
            true,
        ),
        ("question", &["id", "survey_id"], true),
        (
            "question_option",
            &["key", "question_id", "survey_id"],
            true,
        ),
        ("sub_question", &["key", "question_id", "survey_id"], true),
        ("survey_response", &["id"], false),
        ("question_response", &["<p>_id"], false),
        (
            "survey_embedded_data",
            &["response_id", "import_id", "key"],
            false,
        ),
        ("directory", &["id"], true),
        ("directory_contact", &["id", "directory_id"], false),
        ("directory_mailing_list", &["id", "directory_id"], true),
        (
            "contact_mailing_list_membership",
            &["contact_lookup_id"],
            false,
        ),
        ("distribution", &["id"], true),
        (
            "distribution_contact",
            &["contact_id", "contact_lookup_id", "distribution_id"],
            false,
        ),
        ("transaction_batch", &["id", "directory_id"], false),
        (
            "batch_transaction_membership",
            &["batch_id", "directory_id", "transaction_id"],
            false,
        ),
        ("contact_transaction", &["id", "directory_id"], false),
        ("directory_sample", &["id", "directory_id"], false),
        ("frequency_rule", &["id", "directory_id"], false),
        (
            "frequency_rule_target",
            &["target_id", "directory_id", "rule_id"],
            false,
        ),
        ("library", &["id"], false),
        (
            "library_block",
            &["folder_name", "library_block_id", "library_id"],
            false,
        ),
        ("library_message", &["id", "library_id"], false),
        (
            "library_question",
            &["folder_name", "library_question_id", "library_id"],
            false,
        ),
        (
            "library_survey",
            &["folder_name", "library_survey_id", "library_id"],
            false,
        ),
        ("quota", &["id", "survey_id"], false),
        ("quota_group", &["id", "survey_id"], false),
        (
            "group_quota_membership",
            &["quota_group_id", "quota_id"],
            false,
        ),
        (
            "survey_version_publish_event",
            &["date", "survey_id", "user_id", "version_id"],
            false,
        ),
        ("sms_distribution", &["id"], false),
        (
            "sms_distribution_contact",
            &["contact_id", "contact_lookup_id", "distribution_id"],
            false,
        ),
    ];

    #[test]
    fn every_table_present_with_its_key() {
        let all = tables();
        assert_eq!(all.len(), EXPECTED.len());
        for (name, key, soft) in EXPECTED {
            let t = table(name).unwrap_or_else(|| panic!("missing table {name}"));
            assert_eq!(&t.primary_key, key, "{name}");
            assert_eq!(t.soft_delete, *soft, "{name}");
            for k in *key {
                assert!(t.column_index(k).is_some(), "{name}.{k} not a column");
            }
            let mut seen = std::collections::HashSet::new();
            for c in &t.columns {
                assert!(seen.insert(&c.name), "{name}.{} twice", c.name);
            }
        }
    }

    #[test]
    fn column_types_follow_schema() {
        let ty = |t: &str, c: &str| {
            let s = table(t).unwrap();
            s.columns[s.column_index(c).unwrap()].ty
        };
        assert_eq!(
            ty("survey_response", "duration_in_seconds"),
            ColumnType::Int
        );
        assert_eq!(
            ty("survey_response", "location_latitude"),
            ColumnType::Float
        );
        assert_eq!(
            ty("survey_response", "recorded_date"),
            ColumnType::Timestamp
        );
        assert_eq!(ty("survey", "is_active"), ColumnType::Bool);
        assert_eq!(ty("quota", "occurrences"), ColumnType::BigInt);
        assert_eq!(ty("distribution", "stats_sent"), ColumnType::Int);
        assert_eq!(ty("question_response", "<p>_id"), ColumnType::Text);
        assert_eq!(ty("question_response", "value"), ColumnType::Text);
        assert_eq!(table("survey_response").unwrap().columns.len(), 21);
        assert_eq!(table("question_response").unwrap().columns.len(), 11);
        assert_eq!(
            table("sms_distribution_contact").unwrap().columns,
            table("distribution_contact").unwrap().columns
        );
    }

    #[test]
    fn stats_columns() {
        assert_eq!(stats_column("sent"), "stats_sent");
        assert_eq!(stats_column("emailsBounced"), "stats_emails_bounced");
        let mut d = table("distribution").unwrap();
        assert!(!d.add_column(&stats_column("sent"), ColumnType::Int));
        assert!(d.add_column(&stats_column("clicked"), ColumnType::Int));
    }
}
