//! Distributions → `distribution` (with one `stats_*` column per stats field the API returns:
//! a field not yet in the table widens it through `ensure_tables`, never failing the sync) and
//! `distribution_contact` (the distribution history).
//!
//! Per survey, one commit: the distributions are upserted, and the history rows of those whose
//! history is read again ([`Histories`]) are replaced; `distribution` is a soft table, so
//! distributions not seen in this run are marked deleted at the end. The same commit replaces
//! the survey's SMS distributions (`sms_distribution`, `sms_distribution_contact` from
//! `/distributions/sms?surveyId=` and `/distributions/sms/{id}/history`; not soft tables).

use super::tracked::{CURSOR_VERSION, SeenItem, Tracked, fingerprint, interval_ms, trusted_cursor};
use super::{first_call, list};
use crate::catalog::stats_column;
use crate::engine::{Batches, Ctx, SyncError};
use futures_util::TryStreamExt;
use serde_json::{Value as Json, json};
use xmbridge_destinations::{ColumnType, Commit, MarkUnseenDeleted, Value};
use xmbridge_qualtrics::SurveySummary;

/// The tables this stream writes (its group in `xmbridge_qualtrics::capabilities`).
fn tables() -> &'static [&'static str] {
    xmbridge_qualtrics::capabilities::tables_of_stream("distributions")
}

/// `distribution_contact` / `sms_distribution_contact` columns ← history row fields.
const HISTORY: &[(&str, &str)] = &[
    ("contact_frequency_rule_id", "contactFrequencyRuleId"),
    ("opened_at", "openedAt"),
    ("response_completed_at", "responseCompletedAt"),
    ("response_id", "responseId"),
    ("response_started_at", "responseStartedAt"),
    ("sent_at", "sentAt"),
    ("status", "status"),
    ("survey_link", "surveyLink"),
    ("survey_session_id", "surveySessionId"),
];

/// SMS distributions of one survey → `sms_distribution` and `sms_distribution_contact`, added
/// to `b`. Not soft tables: the survey's SMS distributions are replaced (delete by `survey_id`);
/// the history rows of a listed SMS distribution are replaced when [`Histories::stale`] says
/// so, and those of one held from an earlier run (read back with `Destination::keys`) but gone
/// upstream are deleted.
async fn sms(
    ctx: &mut Ctx<'_>,
    survey: &str,
    b: &mut Batches,
    histories: &mut Histories,
) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let dists = list(
        &client,
        &["distributions", "sms"],
        &[("surveyId", survey), ("pageSize", "100")],
    )
    .await
    .map_err(|e| SyncError::api("sms_distribution", Some(survey), e))?;
    let held = ctx
        .keys(
            "sms_distribution",
            "id",
            &[("survey_id".into(), Value::Text(survey.into()))],
            Some(survey),
        )
        .await?;
    let listed: Vec<&str> = dists
        .iter()
        .filter_map(|d| d.get("id").and_then(Json::as_str))
        .collect();
    let mut ids: Vec<Value> = held
        .into_iter()
        .filter(|h| !listed.contains(&h.as_str()))
        .map(|h| Value::Text(h.into()))
        .collect();
    b.delete_where(
        "sms_distribution",
        "survey_id",
        vec![Value::Text(survey.into())],
    );
    for d in &dists {
        let Some(id) = d.get("id").and_then(Json::as_str) else {
            continue;
        };
        let mut r = ctx.specs.row("sms_distribution");
        r.text("id", id);
        for (col, path) in [
            ("message_message_type", "message.messageType"),
            ("name", "name"),
            ("organization_id", "organizationId"),
            ("owner_id", "ownerId"),
            ("survey_id", "surveyId"),
            ("recipient_contact_id", "recipients.contactId"),
            ("recipient_library_id", "recipients.libraryId"),
            ("recipient_mailing_list_id", "recipients.mailingListId"),
            ("recipient_sample_id", "recipients.sampleId"),
            (
                "recipient_transaction_batch_id",
                "recipients.transactionBatchId",
            ),
            ("recipient_transaction_id", "recipients.transactionId"),
            ("message_message_id", "message.messageId"),
            ("message_library_id", "message.libraryId"),
            ("request_status", "requestStatus"),
            ("request_type", "requestType"),
            ("send_date", "sendDate"),
            ("survey_link_expiration_date", "surveyLink.expirationDate"),
        ] {
            r.put(col, crate::convert::at(d, path));
        }
        b.push("sms_distribution", r.build());
        if !histories.stale(id, d) {
            continue;
        }
        ids.push(Value::Text(id.into()));
        let history = list(&client, &["distributions", "sms", id, "history"], &[])
            .await
            .map_err(|e| SyncError::api("sms_distribution_contact", Some(survey), e))?;
        for h in &history {
            let mut r = ctx.specs.row("sms_distribution_contact");
            r.put("contact_id", h.get("contactId"))
                .put("contact_lookup_id", h.get("contactLookupId"))
                .text("distribution_id", id);
            for (col, k) in HISTORY {
                r.put(col, h.get(*k));
            }
            b.push("sms_distribution_contact", r.build());
        }
    }
    b.delete_where("sms_distribution_contact", "distribution_id", ids);
    Ok(())
}

/// Which distributions' histories (e-mail and SMS) to read again: those new or changed in their
/// list (the element carries the stats, which move with every send, open and response) or due
/// for their refresh ([`super::tracked`]); kept in the cursor `distributions`. It holds the
/// distributions handled so far in this run, so a run cut short reads the rest in full next
/// time.
struct Histories {
    seen: Option<Tracked>,
    next: Tracked,
    now_ms: i64,
    interval_ms: i64,
}

impl Histories {
    async fn open(ctx: &mut Ctx<'_>) -> Result<Histories, SyncError> {
        let seen = trusted_cursor(ctx, "distributions", "distribution", "distributions")
            .await?
            .and_then(|c| Tracked::from_cursor(&c, "histories"));
        Ok(Histories {
            seen,
            next: Tracked::default(),
            now_ms: ctx.synced_at_ms,
            interval_ms: interval_ms(ctx.opts),
        })
    }

    /// Whether to read this listed distribution's history again; records it either way.
    fn stale(&mut self, id: &str, element: &Json) -> bool {
        let fp = fingerprint(element);
        let old = self
            .seen
            .as_ref()
            .map(|s| (s.stale(id, fp, self.now_ms, self.interval_ms), s.0.get(id)));
        match old {
            Some((false, Some(kept))) => {
                self.next.0.insert(id.to_string(), *kept);
                false
            }
            _ => {
                self.next.0.insert(
                    id.to_string(),
                    SeenItem {
                        fingerprint: fp,
                        read_ms: self.now_ms,
                        modified: None,
                    },
                );
                true
            }
        }
    }

    fn cursor(&self) -> (String, Json) {
        (
            "distributions".into(),
            json!({"v": CURSOR_VERSION, "histories": self.next.to_json()}),
        )
    }
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, surveys: &[SurveySummary]) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let owned;
    let surveys = if surveys.is_empty() {
        owned = client
            .surveys()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| SyncError::api("distribution", None, e))?;
        &owned[..]
    } else {
        surveys
    };
    let fix =
        "needs access to the surveys' distributions (scope read:distributions for OAuth clients)";
    let mut histories = Histories::open(ctx).await?;
    ctx.progress
        .stream_started("distributions", Some(surveys.len() as u64));
    for s in surveys {
        let Some(dists) = first_call(
            ctx,
            tables(),
            fix,
            list(
                &client,
                &["distributions"],
                &[("surveyId", &s.id), ("pageSize", "100")],
            ),
        )
        .await?
        else {
            return Ok(());
        };
        // Schema evolution: a stats field the table does not have yet becomes a column.
        let mut spec = ctx.specs.row_spec("distribution");
        let mut widened = false;
        for d in &dists {
            if let Some(Json::Object(st)) = d.get("stats") {
                for k in st.keys() {
                    widened |= spec.add_column(&stats_column(k), ColumnType::Int);
                }
            }
        }
        if widened {
            tracing::info!(
                columns = spec.columns.len(),
                "distribution: new stats columns"
            );
            ctx.widen(spec).await?;
        }
        let mut b = Batches::default();
        let mut reread = Vec::new();
        for d in &dists {
            let Some(id) = d.get("id").and_then(Json::as_str) else {
                continue;
            };
            let mut r = ctx.specs.row("distribution");
            r.text("id", id);
            for (col, path) in [
                ("created_date", "createdDate"),
                ("header_from_email", "headers.fromEmail"),
                ("header_from_name", "headers.fromName"),
                ("header_reply_to_email", "headers.replyToEmail"),
                ("header_subject", "headers.subject"),
                ("message_library_id", "message.libraryId"),
                ("message_message_id", "message.messageId"),
                ("message_message_text", "message.messageText"),
                ("modified_date", "modifiedDate"),
                ("organization_id", "organizationId"),
                ("owner_id", "ownerId"),
                ("parent_distribution_id", "parentDistributionId"),
                ("recipient_contact_id", "recipients.contactId"),
                ("recipient_library_id", "recipients.libraryId"),
                ("recipient_mailing_list_id", "recipients.mailingListId"),
                ("recipient_sample_id", "recipients.sampleId"),
                ("request_status", "requestStatus"),
                ("request_type", "requestType"),
                ("send_date", "sendDate"),
                ("survey_link_expiration_date", "surveyLink.expirationDate"),
                ("survey_link_link_type", "surveyLink.linkType"),
                ("survey_link_survey_id", "surveyLink.surveyId"),
            ] {
                r.put(col, crate::convert::at(d, path));
            }
            if let Some(Json::Object(st)) = d.get("stats") {
                for (k, v) in st {
                    r.put(&stats_column(k), Some(v));
                }
            }
            b.push("distribution", r.build());
            if !histories.stale(id, d) {
                continue;
            }
            reread.push(Value::Text(id.into()));
            let history = list(&client, &["distributions", id, "history"], &[])
                .await
                .map_err(|e| SyncError::api("distribution_contact", Some(&s.id), e))?;
            for h in &history {
                let mut r = ctx.specs.row("distribution_contact");
                r.put("contact_id", h.get("contactId"))
                    .put("contact_lookup_id", h.get("contactLookupId"))
                    .text("distribution_id", id);
                for (col, k) in HISTORY {
                    r.put(col, h.get(*k));
                }
                b.push("distribution_contact", r.build());
            }
        }
        b.delete_where("distribution_contact", "distribution_id", reread);
        sms(ctx, &s.id, &mut b, &mut histories).await?;
        let commit = Commit {
            batches: b.into_vec(),
            cursors: vec![histories.cursor()],
            ..Default::default()
        };
        ctx.commit(commit, "distribution", Some(&s.id)).await?;
        ctx.progress.advanced("distributions", 1);
    }
    let commit = Commit {
        mark_unseen_deleted: vec![MarkUnseenDeleted {
            table: "distribution".into(),
            scope: vec![],
        }],
        cursors: vec![histories.cursor()],
        ..Default::default()
    };
    ctx.commit(commit, "distribution", None).await?;
    ctx.progress.stream_finished("distributions");
    Ok(())
}
