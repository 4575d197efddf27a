//! Contact Management: XM Directory contacts (docs/design/qualtrics-api.md §9.2) — create, look up
//! by e-mail, e-mail and response history, list, update, and the extra `upsert-contact`.

use super::{Call, DIRECTORY, LIMIT, QualtricsAction, created_id, eq_filter, field, normalize_hit};
use crate::{ActionError, ActionSpec, InputSpec, System};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Map, Value, json};
use xmbridge_qualtrics::RetryMode;

const CATEGORY: &str = "Contact Management";

pub(crate) const FIRST_NAME: InputSpec = InputSpec {
    name: "firstName",
    required: false,
    help: "first name",
};
pub(crate) const LAST_NAME: InputSpec = InputSpec {
    name: "lastName",
    required: false,
    help: "last name",
};
pub(crate) const EMAIL: InputSpec = InputSpec {
    name: "email",
    required: false,
    help: "e-mail address",
};
pub(crate) const PHONE: InputSpec = InputSpec {
    name: "phone",
    required: false,
    help: "phone number",
};
pub(crate) const EXT_REF: InputSpec = InputSpec {
    name: "extRef",
    required: false,
    help: "external data reference (your system's id of the contact)",
};
pub(crate) const LANGUAGE: InputSpec = InputSpec {
    name: "language",
    required: false,
    help: "language code, e.g. en",
};
pub(crate) const EMBEDDED: InputSpec = InputSpec {
    name: "embeddedData",
    required: false,
    help: "embedded data object (CLI: --input embeddedData.tier=gold)",
};
pub(crate) const UNSUBSCRIBED: InputSpec = InputSpec {
    name: "unsubscribed",
    required: false,
    help: "true to opt the contact out",
};
const WRITE_BLANKS: InputSpec = InputSpec {
    name: "writeBlanks",
    required: false,
    help: "true: empty strings blank a field (default: they are ignored)",
};
const CONTACT_ID: InputSpec = InputSpec {
    name: "contact_id",
    required: true,
    help: "contact id (CID_…)",
};

pub(crate) static CREATE_CONTACT: ActionSpec = ActionSpec {
    name: "create-contact",
    system: System::Qualtrics,
    title: "Create Contact",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        FIRST_NAME,
        LAST_NAME,
        EMAIL,
        PHONE,
        EXT_REF,
        LANGUAGE,
        EMBEDDED,
        UNSUBSCRIBED,
    ],
    stream: false,
    writes: true,
};

static LOOK_UP_BY_EMAIL: ActionSpec = ActionSpec {
    name: "look-up-contact-by-email",
    system: System::Qualtrics,
    title: "Look up Contact by Email",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        InputSpec {
            name: "email",
            required: true,
            help: "e-mail address (case is ignored)",
        },
    ],
    stream: false,
    writes: false,
};

static EMAIL_HISTORY: ActionSpec = ActionSpec {
    name: "look-up-contact-distribution-email-history-stream",
    system: System::Qualtrics,
    title: "Look up Contact Distribution Email History Stream",
    category: CATEGORY,
    inputs: &[DIRECTORY, CONTACT_ID, LIMIT],
    stream: true,
    writes: false,
};

static RESPONSE_HISTORY: ActionSpec = ActionSpec {
    name: "look-up-contact-distribution-response-histories-stream",
    system: System::Qualtrics,
    title: "Look up Contact Distribution Response Histories Stream",
    category: CATEGORY,
    inputs: &[DIRECTORY, CONTACT_ID, LIMIT],
    stream: true,
    writes: false,
};

static CONTACTS_STREAM: ActionSpec = ActionSpec {
    name: "look-up-contacts-stream",
    system: System::Qualtrics,
    title: "Look up Contacts Stream",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        LIMIT,
        InputSpec {
            name: "page_size",
            required: false,
            help: "contacts per API page, 1..100 (default 100)",
        },
    ],
    stream: true,
    writes: false,
};

static UPDATE_CONTACT: ActionSpec = ActionSpec {
    name: "update-contact",
    system: System::Qualtrics,
    title: "Update Contact",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        CONTACT_ID,
        FIRST_NAME,
        LAST_NAME,
        EMAIL,
        PHONE,
        EXT_REF,
        LANGUAGE,
        EMBEDDED,
        UNSUBSCRIBED,
        WRITE_BLANKS,
    ],
    stream: false,
    writes: true,
};

static UPSERT_CONTACT: ActionSpec = ActionSpec {
    name: "upsert-contact",
    system: System::Qualtrics,
    title: "Upsert Contact",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        FIRST_NAME,
        LAST_NAME,
        EMAIL,
        PHONE,
        EXT_REF,
        LANGUAGE,
        EMBEDDED,
        UNSUBSCRIBED,
    ],
    stream: false,
    writes: true,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![
        QualtricsAction::new(&CREATE_CONTACT, create_contact),
        QualtricsAction::new(&LOOK_UP_BY_EMAIL, look_up_by_email),
        QualtricsAction::new(&EMAIL_HISTORY, email_history),
        QualtricsAction::new(&RESPONSE_HISTORY, response_history),
        QualtricsAction::new(&CONTACTS_STREAM, contacts_stream),
        QualtricsAction::new(&UPDATE_CONTACT, update_contact),
        QualtricsAction::new(&UPSERT_CONTACT, upsert_contact),
    ]
}

/// The contact fields among the inputs, as a request body (only those given).
pub(crate) fn contact_body(call: &Call<'_>) -> Result<Map<String, Value>, ActionError> {
    let mut body = Map::new();
    for key in [
        "firstName",
        "lastName",
        "email",
        "phone",
        "extRef",
        "language",
    ] {
        if let Some(v) = call.str(key)? {
            body.insert(key.into(), Value::String(v));
        }
    }
    if let Some(e) = call.object("embeddedData")? {
        body.insert("embeddedData".into(), Value::Object(e));
    }
    for key in ["unsubscribed", "writeBlanks"] {
        if call.spec.inputs.iter().any(|i| i.name == key)
            && let Some(b) = call.bool(key)?
        {
            body.insert(key.into(), Value::Bool(b));
        }
    }
    Ok(body)
}

/// The search filter that identifies the contact described by the inputs: `extRef` when given
/// (your system's id is the better key), else `email`. `None` when neither is given.
pub(crate) fn identity_filter(call: &Call<'_>) -> Result<Option<(String, Value)>, ActionError> {
    if let Some(x) = call.str("extRef")?.filter(|s| !s.is_empty()) {
        return Ok(Some((format!("extRef {x}"), eq_filter("extRef", &x))));
    }
    if let Some(e) = call.str("email")?.filter(|s| !s.is_empty()) {
        return Ok(Some((format!("email {e}"), eq_filter("email", &e))));
    }
    Ok(None)
}

fn create_contact(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let body = contact_body(&call)?;
        if !["email", "phone", "extRef"]
            .iter()
            .any(|k| body.contains_key(*k))
        {
            return Err(call.bad(
                "email",
                "a contact needs at least one of email, phone or extRef",
            ));
        }
        // Under a delivery key a retry must not create a second contact: look the contact up
        // by extRef / e-mail first and return the one found (which the first attempt created,
        // or which existed before — the same answer the directory's own deduplication gives).
        if call.delivery_key.is_some()
            && let Some((_, filter)) = identity_filter(&call)?
            && let Some(hit) = call.search_contacts(&dir, filter).await?.into_iter().next()
        {
            let hit = normalize_hit(hit);
            return Ok(json!({
                "contactId": field(&hit, "contactId"),
                "directoryId": dir,
                "created": false,
            }));
        }
        let result = call
            .send(
                Method::POST,
                call.url(&["directories", &dir, "contacts"]),
                Some(&Value::Object(body)),
                RetryMode::NotIdempotent,
            )
            .await?;
        let id = created_id(&call, &result, "contact")?;
        Ok(json!({"contactId": id, "directoryId": dir, "created": true}))
    })
}

fn look_up_by_email(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let email = call.req("email")?;
        let hits = call
            .search_contacts(&dir, eq_filter("email", &email))
            .await?;
        let count = hits.len();
        let contact = hits.into_iter().next().map(normalize_hit);
        Ok(json!({
            "found": contact.is_some(),
            "count": count,
            "contactId": contact.as_ref().and_then(|c| field(c, "contactId")),
            "contact": contact,
        }))
    })
}

fn history<'a>(call: Call<'a>, kind: &'static str) -> BoxFuture<'a, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let cid = call.req("contact_id")?;
        let url = call.url_with(
            &["directories", &dir, "contacts", &cid, "history"],
            &[("type", Some(kind.into()))],
        );
        call.collect(url).await
    })
}

fn email_history(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    history(call, "email")
}

fn response_history(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    history(call, "response")
}

fn contacts_stream(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let page_size = crate::opt_u64(call.spec, &call.inputs, "page_size")?.unwrap_or(100);
        if !(1..=100).contains(&page_size) {
            return Err(call.bad("page_size", "must be between 1 and 100"));
        }
        let url = call.url_with(
            &["directories", &dir, "contacts"],
            &[
                ("pageSize", Some(page_size.to_string())),
                // Cursor tokens stay correct when contacts change while we page.
                ("useNewPaginationScheme", Some("true".into())),
            ],
        );
        call.collect(url).await
    })
}

/// `PUT` the fields, then read the contact back (the PUT answers nothing).
async fn put_contact(
    call: &Call<'_>,
    dir: &str,
    cid: &str,
    body: Map<String, Value>,
) -> Result<Value, ActionError> {
    call.send(
        Method::PUT,
        call.url(&["directories", dir, "contacts", cid]),
        Some(&Value::Object(body)),
        // A partial update with the same fields is idempotent.
        RetryMode::Idempotent,
    )
    .await?;
    call.get(call.url(&["directories", dir, "contacts", cid]))
        .await
}

fn update_contact(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let cid = call.req("contact_id")?;
        let body = contact_body(&call)?;
        if body.keys().all(|k| k == "writeBlanks") {
            return Err(call.bad(
                "contact_id",
                "nothing to update: give at least one contact field (firstName, email, embeddedData.KEY …)",
            ));
        }
        let contact = put_contact(&call, &dir, &cid, body).await?;
        Ok(json!({"contactId": cid, "directoryId": dir, "updated": true, "contact": contact}))
    })
}

fn upsert_contact(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let body = contact_body(&call)?;
        let Some((key, filter)) = identity_filter(&call)? else {
            return Err(call.bad(
                "extRef",
                "upsert needs a key: give extRef (preferred) or email",
            ));
        };
        let hits = call.search_contacts(&dir, filter).await?;
        if hits.len() > 1 {
            let ids: Vec<&str> = hits.iter().filter_map(|h| field(h, "id")).collect();
            return Err(ActionError::Permanent {
                action: call.spec.name.to_string(),
                message: format!(
                    "{} contacts in directory {dir} match {key} ({}); make the key unique or update one with update-contact",
                    hits.len(),
                    ids.join(", ")
                ),
                details: None,
            });
        }
        if let Some(hit) = hits.into_iter().next() {
            let cid = field(&hit, "id").unwrap_or_default().to_string();
            let contact = put_contact(&call, &dir, &cid, body).await?;
            return Ok(json!({
                "contactId": cid, "directoryId": dir, "created": false, "updated": true,
                "matchedOn": key, "contact": contact,
            }));
        }
        let result = call
            .send(
                Method::POST,
                call.url(&["directories", &dir, "contacts"]),
                Some(&Value::Object(body)),
                RetryMode::NotIdempotent,
            )
            .await?;
        let cid = created_id(&call, &result, "contact")?;
        let contact = call
            .get(call.url(&["directories", &dir, "contacts", &cid]))
            .await?;
        Ok(json!({
            "contactId": cid, "directoryId": dir, "created": true, "updated": false,
            "matchedOn": null, "contact": contact,
        }))
    })
}
