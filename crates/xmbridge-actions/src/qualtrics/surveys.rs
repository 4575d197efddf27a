//! Survey Management: the surveys the connection's user can see, and one response (the extra
//! `get-response`, what a workflow reads after a `completedResponse` event).

use super::{Call, LIMIT, QualtricsAction, field};
use crate::{ActionError, ActionSpec, InputSpec, System};
use futures_util::future::BoxFuture;
use serde_json::Value;

const CATEGORY: &str = "Survey Management";

static LOOK_UP_SURVEYS: ActionSpec = ActionSpec {
    name: "look-up-surveys",
    system: System::Qualtrics,
    title: "Look up Surveys",
    category: CATEGORY,
    inputs: &[
        InputSpec {
            name: "name",
            required: false,
            help: "only surveys with this name (case is ignored): the spoke's \"Look up Survey by Name\"",
        },
        InputSpec {
            name: "active",
            required: false,
            help: "true: only active surveys; false: only inactive ones",
        },
        LIMIT,
    ],
    stream: false,
    writes: false,
};

static GET_RESPONSE: ActionSpec = ActionSpec {
    name: "get-response",
    system: System::Qualtrics,
    title: "Get Response",
    category: CATEGORY,
    inputs: &[
        InputSpec {
            name: "survey_id",
            required: true,
            help: "survey id (SV_…)",
        },
        InputSpec {
            name: "response_id",
            required: true,
            help: "response id (R_…)",
        },
    ],
    stream: false,
    writes: false,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![
        QualtricsAction::new(&LOOK_UP_SURVEYS, look_up_surveys),
        QualtricsAction::new(&GET_RESPONSE, get_response),
    ]
}

fn look_up_surveys(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let name = call.str("name")?;
        let active = call.bool("active")?;
        let url = call.url(&["surveys"]);
        if name.is_none() && active.is_none() {
            return call.collect(url).await;
        }
        let limit = call.limit()?.unwrap_or(usize::MAX);
        let all = call.client.paginate::<Value>(url);
        let mut all = std::pin::pin!(all);
        let mut out = Vec::new();
        while out.len() < limit {
            use futures_util::TryStreamExt;
            let Some(s) = all.try_next().await.map_err(|e| call.err(e))? else {
                break;
            };
            let name_ok = name
                .as_deref()
                .is_none_or(|n| field(&s, "name").is_some_and(|x| x.eq_ignore_ascii_case(n)));
            let active_ok =
                active.is_none_or(|a| s.get("isActive").and_then(Value::as_bool) == Some(a));
            if name_ok && active_ok {
                out.push(s);
            }
        }
        Ok(Value::Array(out))
    })
}

fn get_response(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let sid = call.req("survey_id")?;
        let rid = call.req("response_id")?;
        let result = call
            .get(call.url(&["surveys", &sid, "responses", &rid]))
            .await?;
        // A 202 answers `{"message": …}` while the response is being processed: try later.
        if result.get("responseId").is_none() && result.get("values").is_none() {
            return Err(ActionError::Transient {
                action: call.spec.name.to_string(),
                message: format!(
                    "response {rid} of survey {sid} is not available yet: {}",
                    field(&result, "message").unwrap_or("no details")
                ),
            });
        }
        Ok(result)
    })
}
