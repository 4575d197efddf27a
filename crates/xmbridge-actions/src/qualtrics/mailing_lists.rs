//! Mailing List Management: XM Directory mailing lists and their members
//! (docs/design/qualtrics-api.md §9.3), plus the extra `create-mailing-list`.

use super::contacts::{
    EMAIL, EMBEDDED, EXT_REF, FIRST_NAME, LANGUAGE, LAST_NAME, PHONE, contact_body, identity_filter,
};
use super::{Call, DIRECTORY, LIMIT, QualtricsAction, created_id, field, normalize_hit};
use crate::{ActionError, ActionSpec, InputSpec, System};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};
use xmbridge_qualtrics::RetryMode;

const CATEGORY: &str = "Mailing List Management";

const LIST_ID: InputSpec = InputSpec {
    name: "mailing_list_id",
    required: true,
    help: "mailing list id (CG_…)",
};
const LIST_UNSUBSCRIBED: InputSpec = InputSpec {
    name: "unsubscribed",
    required: false,
    help: "true to opt the contact out of this list only",
};

static ADD_TO_LIST: ActionSpec = ActionSpec {
    name: "create-contact-in-mailing-list",
    system: System::Qualtrics,
    title: "Create Contact in Mailing List",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        LIST_ID,
        FIRST_NAME,
        LAST_NAME,
        EMAIL,
        PHONE,
        EXT_REF,
        LANGUAGE,
        EMBEDDED,
        LIST_UNSUBSCRIBED,
    ],
    stream: false,
    writes: true,
};

static MEMBERS_STREAM: ActionSpec = ActionSpec {
    name: "look-up-contact-in-mailing-lists-stream",
    system: System::Qualtrics,
    title: "Look up Contact in Mailing Lists Stream",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        LIST_ID,
        InputSpec {
            name: "include_embedded",
            required: false,
            help: "true to include each member's embedded data",
        },
        LIMIT,
    ],
    stream: true,
    writes: false,
};

static LOOK_UP_LISTS: ActionSpec = ActionSpec {
    name: "look-up-mailing-lists",
    system: System::Qualtrics,
    title: "Look up Mailing Lists",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        InputSpec {
            name: "name",
            required: false,
            help: "only lists with this name (case is ignored): the spoke's \"Look up Mailing List by Name\"",
        },
        InputSpec {
            name: "include_count",
            required: false,
            help: "true to include contactCount",
        },
    ],
    stream: false,
    writes: false,
};

static REMOVE_FROM_LIST: ActionSpec = ActionSpec {
    name: "remove-contact-from-mailing-list",
    system: System::Qualtrics,
    title: "Remove Contact from Mailing List",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        LIST_ID,
        InputSpec {
            name: "contact_id",
            required: true,
            help: "contact id (CID_…)",
        },
    ],
    stream: false,
    writes: true,
};

static CREATE_LIST: ActionSpec = ActionSpec {
    name: "create-mailing-list",
    system: System::Qualtrics,
    title: "Create Mailing List",
    category: CATEGORY,
    inputs: &[
        DIRECTORY,
        InputSpec {
            name: "name",
            required: true,
            help: "the list's name",
        },
        InputSpec {
            name: "ownerId",
            required: false,
            help: "owner user id (UR_…); default: the connection's user",
        },
        InputSpec {
            name: "prioritizeListMetadata",
            required: false,
            help: "true: list-level fields win over directory fields",
        },
    ],
    stream: false,
    writes: true,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![
        QualtricsAction::new(&ADD_TO_LIST, add_to_list),
        QualtricsAction::new(&MEMBERS_STREAM, members_stream),
        QualtricsAction::new(&LOOK_UP_LISTS, look_up_lists),
        QualtricsAction::new(&REMOVE_FROM_LIST, remove_from_list),
        QualtricsAction::new(&CREATE_LIST, create_list),
    ]
}

fn add_to_list(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let ml = call.req("mailing_list_id")?;
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
        // Under a delivery key, a member of this list with the same extRef / e-mail is the
        // one the first attempt added: return it instead of adding again.
        if call.delivery_key.is_some()
            && let Some((_, key)) = identity_filter(&call)?
        {
            let filter = json!({"conjunction": "and", "filters": [
                key,
                {"filterType": "mailingListId", "comparison": "eq", "value": ml},
            ]});
            if let Some(hit) = call.search_contacts(&dir, filter).await?.into_iter().next() {
                let hit = normalize_hit(hit);
                let cid = field(&hit, "contactId").unwrap_or_default().to_string();
                let member = call
                    .get(call.url(&["directories", &dir, "mailinglists", &ml, "contacts", &cid]))
                    .await?;
                return Ok(json!({
                    "contactId": cid,
                    "contactLookupId": field(&member, "contactLookupId"),
                    "mailingListId": ml,
                    "directoryId": dir,
                    "created": false,
                }));
            }
        }
        let result = call
            .send(
                Method::POST,
                call.url(&["directories", &dir, "mailinglists", &ml, "contacts"]),
                Some(&Value::Object(body)),
                RetryMode::NotIdempotent,
            )
            .await?;
        let cid = created_id(&call, &result, "mailing-list member")?;
        Ok(json!({
            "contactId": cid,
            "contactLookupId": field(&result, "contactLookupId"),
            "mailingListId": ml,
            "directoryId": dir,
            "created": true,
        }))
    })
}

fn members_stream(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let ml = call.req("mailing_list_id")?;
        let embedded = call.bool("include_embedded")?.map(|b| b.to_string());
        let url = call.url_with(
            &["directories", &dir, "mailinglists", &ml, "contacts"],
            &[
                ("pageSize", Some("100".into())),
                ("useNewPaginationScheme", Some("true".into())),
                ("includeEmbedded", embedded),
            ],
        );
        call.collect(url).await
    })
}

/// Every list of the directory (all pages), optionally only those named `name`.
async fn lists(call: &Call<'_>, dir: &str, name: Option<&str>) -> Result<Vec<Value>, ActionError> {
    let count = call
        .bool("include_count")
        .unwrap_or(None)
        .map(|b| b.to_string());
    let url = call.url_with(
        &["directories", dir, "mailinglists"],
        &[("pageSize", Some("100".into())), ("includeCount", count)],
    );
    let all = match call.collect(url).await? {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    Ok(match name {
        Some(n) => all
            .into_iter()
            .filter(|l| field(l, "name").is_some_and(|x| x.eq_ignore_ascii_case(n)))
            .collect(),
        None => all,
    })
}

fn look_up_lists(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let name = call.str("name")?;
        Ok(Value::Array(lists(&call, &dir, name.as_deref()).await?))
    })
}

fn remove_from_list(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let ml = call.req("mailing_list_id")?;
        let cid = call.req("contact_id")?;
        let url = call.url(&["directories", &dir, "mailinglists", &ml, "contacts", &cid]);
        match call
            .send(Method::DELETE, url, None, RetryMode::Idempotent)
            .await
        {
            Ok(_) => Ok(json!({"contactId": cid, "mailingListId": ml, "removed": true})),
            // A retry of a removal that went through finds no membership: under a delivery
            // key that is success, not a dead letter.
            Err(ActionError::Permanent { details, .. })
                if call.delivery_key.is_some()
                    && details.as_ref().and_then(|d| d.get("status")) == Some(&json!(404))
                    && call
                        .get(call.url(&["directories", &dir, "mailinglists", &ml]))
                        .await
                        .is_ok() =>
            {
                Ok(json!({"contactId": cid, "mailingListId": ml, "removed": false}))
            }
            Err(e) => Err(e),
        }
    })
}

fn create_list(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let dir = call.directory()?;
        let name = call.req("name")?;
        if call.delivery_key.is_some()
            && let Some(existing) = lists(&call, &dir, Some(&name)).await?.into_iter().next()
        {
            return Ok(json!({
                "mailingListId": field(&existing, "mailingListId"),
                "directoryId": dir,
                "created": false,
            }));
        }
        let mut body = serde_json::Map::new();
        body.insert("name".into(), Value::String(name));
        if let Some(o) = call.str("ownerId")? {
            body.insert("ownerId".into(), Value::String(o));
        }
        if let Some(p) = call.bool("prioritizeListMetadata")? {
            body.insert("prioritizeListMetadata".into(), Value::Bool(p));
        }
        let result = call
            .send(
                Method::POST,
                call.url(&["directories", &dir, "mailinglists"]),
                Some(&Value::Object(body)),
                RetryMode::NotIdempotent,
            )
            .await?;
        let id = created_id(&call, &result, "mailing list")?;
        Ok(json!({"mailingListId": id, "directoryId": dir, "created": true}))
    })
}
