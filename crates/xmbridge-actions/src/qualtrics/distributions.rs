//! Distribution Management: send a survey by e-mail to a mailing list (or one contact in it), list
//! a survey's distributions and a distribution's individual links (docs/design/qualtrics-api.md
//! §8).

use super::{Call, DELIVERY_KEY_FIELD, LIMIT, QualtricsAction, created_id, field};
use crate::{ActionError, ActionSpec, InputSpec, System};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Map, Value, json};
use xmbridge_qualtrics::RetryMode;

const CATEGORY: &str = "Distribution Management";

/// How far back a retry of a distribution sent "now" looks for the first attempt's send.
const RETRY_WINDOW_DAYS: i64 = 30;

const SURVEY_ID: InputSpec = InputSpec {
    name: "survey_id",
    required: true,
    help: "survey id (SV_…)",
};

static CREATE_DISTRIBUTION: ActionSpec = ActionSpec {
    name: "create-distribution",
    system: System::Qualtrics,
    title: "Create Distribution",
    category: CATEGORY,
    inputs: &[
        SURVEY_ID,
        InputSpec {
            name: "mailing_list_id",
            required: false,
            help: "recipients: a mailing list (CG_…)",
        },
        InputSpec {
            name: "contact_id",
            required: false,
            help: "only this contact of the mailing list (CID_…)",
        },
        InputSpec {
            name: "transaction_batch_id",
            required: false,
            help: "recipients: a transaction batch (BT_…) instead of a list",
        },
        InputSpec {
            name: "library_id",
            required: false,
            help: "library of the invite message (UR_… or GR_…)",
        },
        InputSpec {
            name: "message_id",
            required: false,
            help: "invite message in the library (MS_…)",
        },
        InputSpec {
            name: "message_text",
            required: false,
            help: "invite text, instead of a library message",
        },
        InputSpec {
            name: "from_email",
            required: true,
            help: "sender address",
        },
        InputSpec {
            name: "from_name",
            required: true,
            help: "sender name",
        },
        InputSpec {
            name: "reply_to_email",
            required: false,
            help: "reply-to address",
        },
        InputSpec {
            name: "subject",
            required: true,
            help: "e-mail subject",
        },
        InputSpec {
            name: "send_date",
            required: false,
            help: "ISO-8601 send time (default: now)",
        },
        InputSpec {
            name: "expiration_date",
            required: false,
            help: "ISO-8601 expiry of the survey links",
        },
        InputSpec {
            name: "link_type",
            required: false,
            help: "Individual (default), Multiple or Anonymous",
        },
        InputSpec {
            name: "embeddedData",
            required: false,
            help: "embedded data passed to the responses (string values)",
        },
    ],
    stream: false,
    writes: true,
};

static LINKS_STREAM: ActionSpec = ActionSpec {
    name: "look-up-distribution-links-stream",
    system: System::Qualtrics,
    title: "Look up Distribution Links Stream",
    category: CATEGORY,
    inputs: &[
        InputSpec {
            name: "distribution_id",
            required: true,
            help: "distribution id (EMD_…)",
        },
        SURVEY_ID,
        LIMIT,
    ],
    stream: true,
    writes: false,
};

static DISTRIBUTIONS_STREAM: ActionSpec = ActionSpec {
    name: "look-up-distributions-stream",
    system: System::Qualtrics,
    title: "Look up Distributions Stream",
    category: CATEGORY,
    inputs: &[
        SURVEY_ID,
        InputSpec {
            name: "distribution_request_type",
            required: false,
            help: "Invite, Reminder, ThankYou, GeneratedInvite …",
        },
        InputSpec {
            name: "mailing_list_id",
            required: false,
            help: "only distributions to this list",
        },
        InputSpec {
            name: "send_start_date",
            required: false,
            help: "ISO-8601: sent at or after",
        },
        InputSpec {
            name: "send_end_date",
            required: false,
            help: "ISO-8601: sent at or before",
        },
        LIMIT,
    ],
    stream: true,
    writes: false,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![
        QualtricsAction::new(&CREATE_DISTRIBUTION, create_distribution),
        QualtricsAction::new(&LINKS_STREAM, links_stream),
        QualtricsAction::new(&DISTRIBUTIONS_STREAM, distributions_stream),
    ]
}

/// `"2026-11-30T08:00:00Z"`
fn now_iso() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn create_distribution(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let survey = call.req("survey_id")?;
        let list = call.str("mailing_list_id")?;
        let contact = call.str("contact_id")?;
        let batch = call.str("transaction_batch_id")?;
        let recipients = match (&list, &contact, &batch) {
            (Some(ml), c, None) => {
                let mut r = json!({"mailingListId": ml});
                if let Some(c) = c {
                    r["contactId"] = json!(c);
                }
                r
            }
            (None, None, Some(b)) => json!({"transactionBatchId": b}),
            (None, Some(_), None) => {
                return Err(call.bad(
                    "contact_id",
                    "needs mailing_list_id too (the list the contact is in)",
                ));
            }
            _ => {
                return Err(call.bad(
                    "mailing_list_id",
                    "give exactly one recipient source: mailing_list_id (optionally with contact_id) or transaction_batch_id",
                ));
            }
        };
        let message = match (
            call.str("library_id")?,
            call.str("message_id")?,
            call.str("message_text")?,
        ) {
            (Some(l), Some(m), None) => json!({"libraryId": l, "messageId": m}),
            (None, None, Some(t)) => json!({"messageText": t}),
            _ => {
                return Err(call.bad(
                    "message_id",
                    "give either library_id and message_id (a library message) or message_text",
                ));
            }
        };
        let mut header = json!({
            "fromEmail": call.req("from_email")?,
            "fromName": call.req("from_name")?,
            "subject": call.req("subject")?,
        });
        if let Some(r) = call.str("reply_to_email")? {
            header["replyToEmail"] = json!(r);
        }
        let mut link = json!({
            "surveyId": survey,
            "type": call.str("link_type")?.unwrap_or_else(|| "Individual".into()),
        });
        if let Some(e) = call.str("expiration_date")? {
            link["expirationDate"] = json!(e);
        }
        let mut embedded: Map<String, Value> = call.object("embeddedData")?.unwrap_or_default();
        for (k, v) in embedded.iter_mut() {
            // The API takes string values only; numbers and booleans are sent as their text.
            match v {
                Value::String(_) => {}
                Value::Number(_) | Value::Bool(_) => *v = Value::String(v.to_string()),
                _ => {
                    return Err(call.bad(
                        &format!("embeddedData.{k}"),
                        "must be text, a number or a boolean",
                    ));
                }
            }
        }
        // Idempotency: the delivery key travels in the distribution's embedded data; a retry
        // lists the survey's invites to the same recipients and returns the one carrying it.
        // (Qualtrics has no client-chosen id or idempotency header for distributions.)
        let send_date = call.str("send_date")?;
        if let Some(key) = &call.delivery_key {
            embedded.insert(DELIVERY_KEY_FIELD.into(), Value::String(key.clone()));
            // Only the send dates an earlier attempt can have used are scanned, so the look-up
            // stays small on a list that gets an invite per event: the given send date exactly,
            // or (sent "now") the last RETRY_WINDOW_DAYS — far longer than a delivery retries.
            let (from, to) = match &send_date {
                Some(d) => (d.clone(), Some(d.clone())),
                None => (
                    (chrono::Utc::now() - chrono::Duration::days(RETRY_WINDOW_DAYS))
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string(),
                    None,
                ),
            };
            let url = call.url_with(
                &["distributions"],
                &[
                    ("surveyId", Some(survey.clone())),
                    ("distributionRequestType", Some("Invite".into())),
                    ("mailingListId", list.clone()),
                    ("sendStartDate", Some(from)),
                    ("sendEndDate", to),
                ],
            );
            let existing = call.client.paginate::<Value>(url);
            let found = find_by_key(existing, key).await.map_err(|e| call.err(e))?;
            if let Some(d) = found {
                return Ok(json!({
                    "distributionId": field(&d, "id"),
                    "surveyId": survey,
                    "created": false,
                    "distribution": d,
                }));
            }
        }
        let mut body = json!({
            "header": header,
            "message": message,
            "recipients": recipients,
            "surveyLink": link,
            "sendDate": send_date.unwrap_or_else(now_iso),
        });
        if !embedded.is_empty() {
            body["embeddedData"] = Value::Object(embedded);
        }
        let result = call
            .send(
                Method::POST,
                call.url(&["distributions"]),
                Some(&body),
                RetryMode::NotIdempotent,
            )
            .await?;
        let id = created_id(&call, &result, "distribution")?;
        Ok(json!({"distributionId": id, "surveyId": survey, "created": true}))
    })
}

/// The first distribution whose embedded data carries `key` under [`DELIVERY_KEY_FIELD`].
async fn find_by_key(
    stream: impl futures_util::Stream<Item = Result<Value, xmbridge_qualtrics::Error>>,
    key: &str,
) -> Result<Option<Value>, xmbridge_qualtrics::Error> {
    use futures_util::TryStreamExt;
    let mut stream = std::pin::pin!(stream);
    while let Some(d) = stream.try_next().await? {
        if d.get("embeddedData")
            .and_then(|e| e.get(DELIVERY_KEY_FIELD))
            .and_then(Value::as_str)
            == Some(key)
        {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

fn links_stream(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let id = call.req("distribution_id")?;
        let survey = call.req("survey_id")?;
        let url = call.url_with(
            &["distributions", &id, "links"],
            &[("surveyId", Some(survey)), ("pageSize", Some("100".into()))],
        );
        call.collect(url).await
    })
}

fn distributions_stream(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let url = call.url_with(
            &["distributions"],
            &[
                ("surveyId", Some(call.req("survey_id")?)),
                (
                    "distributionRequestType",
                    call.str("distribution_request_type")?,
                ),
                ("mailingListId", call.str("mailing_list_id")?),
                ("sendStartDate", call.str("send_start_date")?),
                ("sendEndDate", call.str("send_end_date")?),
                ("pageSize", Some("100".into())),
            ],
        );
        call.collect(url).await
    })
}
