//! Library Management: the messages of a library (invites, reminders, subjects …).

use super::{Call, LIMIT, QualtricsAction, field};
use crate::{ActionError, ActionSpec, InputSpec, System};
use futures_util::future::BoxFuture;
use serde_json::Value;

static MESSAGES_STREAM: ActionSpec = ActionSpec {
    name: "look-up-library-messages-stream",
    system: System::Qualtrics,
    title: "Look up Library Messages Stream",
    category: "Library Management",
    inputs: &[
        InputSpec {
            name: "library_id",
            required: true,
            help: "library id (UR_… user library, GR_… group library)",
        },
        InputSpec {
            name: "category",
            required: false,
            help: "invite, reminder, thankYou, emailSubject, smsInvite …",
        },
        InputSpec {
            name: "description",
            required: false,
            help: "only messages with this description (case is ignored): the spoke's \"Look up Message by Name\"",
        },
        LIMIT,
    ],
    stream: true,
    writes: false,
};

pub(super) fn actions() -> Vec<QualtricsAction> {
    vec![QualtricsAction::new(&MESSAGES_STREAM, messages_stream)]
}

fn messages_stream(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let lib = call.req("library_id")?;
        let url = call.url_with(
            &["libraries", &lib, "messages"],
            &[("category", call.str("category")?)],
        );
        let Some(description) = call.str("description")? else {
            return call.collect(url).await;
        };
        // Filtering happens here (the API has no such parameter), so `limit` applies after it.
        let limit = call.limit()?.unwrap_or(usize::MAX);
        let all = call.client.paginate::<Value>(url);
        let mut all = std::pin::pin!(all);
        let mut out = Vec::new();
        while out.len() < limit {
            use futures_util::TryStreamExt;
            match all.try_next().await.map_err(|e| call.err(e))? {
                Some(m) => {
                    if field(&m, "description")
                        .is_some_and(|d| d.eq_ignore_ascii_case(&description))
                    {
                        out.push(m);
                    }
                }
                None => break,
            }
        }
        Ok(Value::Array(out))
    })
}
