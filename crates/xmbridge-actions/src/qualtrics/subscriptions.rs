//! Event Subscription Management: webhooks Qualtrics calls on survey events
//! (docs/design/qualtrics-api.md §11).

use super::{Call, LIMIT, QualtricsAction, created_id, field};
use crate::{ActionError, ActionSpec, InputSpec, System};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};
use xmbridge_qualtrics::RetryMode;

const CATEGORY: &str = "Event Subscription Management";

static CREATE_SUBSCRIPTION: ActionSpec = ActionSpec {
    name: "create-subscription",
    system: System::Qualtrics,
    title: "Create Subscription",
    category: CATEGORY,
    inputs: &[
        InputSpec {
            name: "topics",
            required: false,
            help: "topic(s), comma separated, e.g. surveyengine.completedResponse.SV_…",
        },
        InputSpec {
            name: "survey_id",
            required: false,
            help: "shorthand for topics=surveyengine.completedResponse.SURVEY_ID",
        },
        InputSpec {
            name: "publication_url",
            required: true,
            help: "where Qualtrics posts the events (xmbridge's webhook URL)",
        },
        InputSpec {
            name: "shared_key",
            required: false,
            help: "key for the HMAC-SHA512 signature of each event",
        },
    ],
    stream: false,
    writes: true,
};

static GET_SUBSCRIPTION: ActionSpec = ActionSpec {
    name: "look-up-subscription-by-subscription-id",
    system: System::Qualtrics,
    title: "Look up Subscription by Subscription ID",
    category: CATEGORY,
    inputs: &[InputSpec {
        name: "subscription_id",
        required: true,
        help: "subscription id",
    }],
    stream: false,
    writes: false,
};

static SUBSCRIPTIONS_STREAM: ActionSpec = ActionSpec {
    name: "look-up-subscriptions-stream",
    system: System::Qualtrics,
    title: "Look up Subscriptions Stream",
    category: CATEGORY,
    inputs: &[LIMIT],
    stream: true,
    writes: false,
};

static DELETE_SUBSCRIPTION: ActionSpec = ActionSpec {
    name: "delete-subscription",
    system: System::Qualtrics,
    title: "Delete Subscription",
    category: CATEGORY,
    inputs: &[InputSpec {
        name: "subscription_id",
        required: true,
        help: "subscription id (one that is already gone counts as deleted)",
    }],
    stream: false,
    writes: true,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![
        QualtricsAction::new(&CREATE_SUBSCRIPTION, create_subscription),
        QualtricsAction::new(&DELETE_SUBSCRIPTION, delete_subscription),
        QualtricsAction::new(&GET_SUBSCRIPTION, get_subscription),
        QualtricsAction::new(&SUBSCRIPTIONS_STREAM, subscriptions_stream),
    ]
}

fn create_subscription(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let topics = match (call.str("topics")?, call.str("survey_id")?) {
            (Some(t), None) if !t.trim().is_empty() => t,
            (None, Some(s)) => format!("surveyengine.completedResponse.{s}"),
            _ => {
                return Err(call.bad("topics", "give exactly one of topics or survey_id"));
            }
        };
        let url = call.req("publication_url")?;
        // Under a delivery key, a subscription with the same topics and URL is the one the first
        // attempt created. (Without one, a second identical subscription is what was asked for.)
        if call.delivery_key.is_some() {
            let all = call.collect(call.url(&["eventsubscriptions"])).await?;
            if let Some(s) = all.as_array().into_iter().flatten().find(|s| {
                field(s, "topics") == Some(topics.as_str())
                    && field(s, "publicationUrl") == Some(url.as_str())
            }) {
                return Ok(json!({"subscriptionId": field(s, "id"), "created": false}));
            }
        }
        let mut body = json!({"topics": topics, "publicationUrl": url, "encrypt": false});
        if let Some(k) = call.str("shared_key")? {
            body["sharedKey"] = json!(k);
        }
        let result = call
            .send(
                Method::POST,
                call.url(&["eventsubscriptions"]),
                Some(&body),
                RetryMode::NotIdempotent,
            )
            .await?;
        let id = created_id(&call, &result, "event subscription")?;
        Ok(json!({"subscriptionId": id, "created": true}))
    })
}

fn delete_subscription(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let id = call.req("subscription_id")?;
        match call
            .send(
                Method::DELETE,
                call.url(&["eventsubscriptions", &id]),
                None,
                RetryMode::Idempotent,
            )
            .await
        {
            Ok(_) => Ok(json!({"subscriptionId": id, "deleted": true})),
            // Gone already (a retry, or removed by hand): what was asked for holds.
            Err(ActionError::Permanent { details, .. })
                if details.as_ref().and_then(|d| d.get("status")) == Some(&json!(404)) =>
            {
                Ok(json!({"subscriptionId": id, "deleted": false}))
            }
            Err(e) => Err(e),
        }
    })
}

fn get_subscription(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let id = call.req("subscription_id")?;
        call.get(call.url(&["eventsubscriptions", &id])).await
    })
}

fn subscriptions_stream(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move { call.collect(call.url(&["eventsubscriptions"])).await })
}
