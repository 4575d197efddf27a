//! The Qualtrics actions: the ServiceNow Qualtrics spoke's 20 actions (contacts, mailing lists,
//! distributions, library messages, metadata, surveys, event subscriptions) under kebab-case
//! names, plus `upsert-contact`, `create-mailing-list`, `get-response` and `delete-subscription`.
//!
//! Each category lives in its own file and hands its actions to [`register`]. An action is a static
//! [`ActionSpec`] plus a function over a [`Call`]: the checked inputs, the
//! `xmbridge_qualtrics::Client` taken from the [`ActionContext`] and the delivery key. This module
//! owns the input conventions (`directory_id` falls back to [`DefaultDirectory`], `limit` caps
//! "Stream" actions), the idempotency rules of writing actions under a delivery key, and the
//! mapping of `xmbridge_qualtrics::Error` onto [`ActionError`]. It must not build clients, read
//! the vault, or retry on its own: the client retries within a call, the workflow engine across
//! deliveries.

mod contacts;
mod distributions;
mod libraries;
mod mailing_lists;
mod metadata;
mod subscriptions;
mod surveys;

use crate::{
    ActionContext, ActionError, ActionRequest, ActionSpec, Connect, FnAction, InputSpec, Inputs,
    Registry, System,
};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::{Method, Url};
use serde_json::{Map, Value, json};
use xmbridge_qualtrics::{Client, Error as QError, RetryMode};

/// The XM Directory (`POOL_…`) used when an action's `directory_id` input is absent: the
/// connection's `directory` setting, like the spoke's `sn_qualtrics_spoke.qualtrics_directory`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultDirectory(pub String);

/// The name of the stored connection the client belongs to; when present, a refused token's
/// error names the command that fixes it (`xmbridge connection authorize NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionName(pub String);

/// The embedded-data field `create-distribution` stamps with the delivery key, so that a retry
/// finds the distribution the first attempt created.
pub const DELIVERY_KEY_FIELD: &str = "xmbridgeDeliveryKey";

/// Puts what the Qualtrics actions need into `ctx`: the client of a connection, its name (for
/// the re-authorize hint) and its default directory. The CLI and the workflow engine both use it.
pub fn provide(
    ctx: &mut ActionContext,
    client: Client,
    connection: &str,
    directory: Option<String>,
) {
    ctx.insert(client);
    ctx.insert(ConnectionName(connection.to_string()));
    if let Some(d) = directory.filter(|d| !d.is_empty()) {
        ctx.insert(DefaultDirectory(d));
    }
}

/// Adds every Qualtrics action to `r`.
pub fn register(r: &mut Registry) {
    let all = contacts::actions()
        .into_iter()
        .chain(mailing_lists::actions())
        .chain(distributions::actions())
        .chain(libraries::actions())
        .chain(metadata::actions())
        .chain(surveys::actions())
        .chain(subscriptions::actions());
    for a in all {
        r.register(a);
    }
}

/// One Qualtrics action: its spec and the function that runs it.
pub(crate) type QualtricsAction = FnAction<Qualtrics>;

/// The Qualtrics [`Connect`]: the context's `xmbridge_qualtrics::Client`.
pub(crate) struct Qualtrics;

impl Connect for Qualtrics {
    type Call<'a> = Call<'a>;
    type Run = for<'a> fn(Call<'a>) -> BoxFuture<'a, Result<Value, ActionError>>;

    fn call<'a>(
        spec: &'static ActionSpec,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> Result<Call<'a>, ActionError> {
        let client = ctx
            .get::<Client>()
            .ok_or_else(|| ActionError::NotConfigured {
                action: spec.name.to_string(),
                system: System::Qualtrics,
                fix: "add a Qualtrics connection (`xmbridge connection add qualtrics NAME …`) and choose it (`--connection NAME`)".into(),
            })?;
        Ok(Call {
            spec,
            client,
            ctx,
            inputs: request.inputs,
            delivery_key: request.delivery_key,
        })
    }

    fn invoke<'a>(
        run: Self::Run,
        call: Self::Call<'a>,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        run(call)
    }
}

// ---- shared input specs ----------------------------------------------------------------------

pub(crate) const DIRECTORY: InputSpec = InputSpec {
    name: "directory_id",
    required: false,
    help: "XM Directory id (POOL_…); default: the connection's directory",
};
pub(crate) const LIMIT: InputSpec = InputSpec {
    name: "limit",
    required: false,
    help: "stop after this many elements (default: every page)",
};

// ---- one run -----------------------------------------------------------------------------------

/// Everything one run of a Qualtrics action works with.
pub(crate) struct Call<'a> {
    pub spec: &'static ActionSpec,
    pub client: &'a Client,
    pub ctx: &'a ActionContext,
    pub inputs: Inputs,
    pub delivery_key: Option<String>,
}

impl Call<'_> {
    pub fn str(&self, name: &str) -> Result<Option<String>, ActionError> {
        crate::opt_str(self.spec, &self.inputs, name)
    }

    pub fn req(&self, name: &str) -> Result<String, ActionError> {
        crate::req_str(self.spec, &self.inputs, name)
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ActionError> {
        crate::opt_bool(self.spec, &self.inputs, name)
    }

    pub fn object(&self, name: &str) -> Result<Option<Map<String, Value>>, ActionError> {
        crate::opt_object(self.spec, &self.inputs, name)
    }

    pub fn bad(&self, field: &str, reason: impl Into<String>) -> ActionError {
        ActionError::BadInput {
            action: self.spec.name.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// `directory_id`, else the context's [`DefaultDirectory`].
    pub fn directory(&self) -> Result<String, ActionError> {
        if let Some(d) = self.str("directory_id")?.filter(|d| !d.trim().is_empty()) {
            return Ok(d);
        }
        match self.ctx.get::<DefaultDirectory>() {
            Some(d) if !d.0.is_empty() => Ok(d.0.clone()),
            _ => Err(self.bad(
                "directory_id",
                "is required: the connection has no default directory (pass the input, or run `xmbridge connection test NAME` to discover the brand's default directory)",
            )),
        }
    }

    /// The `limit` input of stream actions.
    pub fn limit(&self) -> Result<Option<usize>, ActionError> {
        Ok(crate::opt_u64(self.spec, &self.inputs, "limit")?.map(|n| n as usize))
    }

    pub fn url(&self, segments: &[&str]) -> Url {
        self.client.url(segments)
    }

    /// `url` with query parameters appended (absent values skipped).
    pub fn url_with(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.url(segments);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    pub fn err(&self, e: QError) -> ActionError {
        map_error(self.spec, self.ctx, e)
    }

    pub async fn get(&self, url: Url) -> Result<Value, ActionError> {
        self.client.get::<Value>(url).await.map_err(|e| self.err(e))
    }

    /// One call; the `result` of the answer (`null` when the answer has none).
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        mode: RetryMode,
    ) -> Result<Value, ActionError> {
        let env = self
            .client
            .call(method, url, body, mode)
            .await
            .map_err(|e| self.err(e))?;
        Ok(env.result.unwrap_or(Value::Null))
    }

    /// Every element of a `nextPage`-paged list, at most `limit`.
    pub async fn collect(&self, url: Url) -> Result<Value, ActionError> {
        let limit = self.limit()?;
        let stream = self.client.paginate::<Value>(url);
        let items: Vec<Value> = match limit {
            Some(n) => stream.take(n).try_collect().await,
            None => stream.try_collect().await,
        }
        .map_err(|e| self.err(e))?;
        Ok(Value::Array(items))
    }

    /// `POST /directories/{d}/contacts/search` with `filter`: the first page of hits (100),
    /// enough for look-ups by a key.
    pub async fn search_contacts(
        &self,
        dir: &str,
        filter: Value,
    ) -> Result<Vec<Value>, ActionError> {
        let url = self.url_with(
            &["directories", dir, "contacts", "search"],
            &[
                ("includeEmbedded", Some("true".into())),
                ("pageSize", Some("100".into())),
            ],
        );
        let result = self
            .send(
                Method::POST,
                url,
                Some(&json!({ "filter": filter })),
                // A search changes nothing: safe to repeat.
                RetryMode::Idempotent,
            )
            .await?;
        Ok(result
            .get("elements")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

/// A search filter on one field, `eq` (text comparisons ignore case).
pub(crate) fn eq_filter(filter_type: &str, value: &str) -> Value {
    json!({"filterType": filter_type, "comparison": "eq", "value": value})
}

/// Search hits name the contact `id`; the rest of the API says `contactId`. Both are kept.
pub(crate) fn normalize_hit(mut hit: Value) -> Value {
    if let Some(o) = hit.as_object_mut()
        && !o.contains_key("contactId")
        && let Some(id) = o.get("id").cloned()
    {
        o.insert("contactId".into(), id);
    }
    hit
}

/// A string field of a JSON object.
pub(crate) fn field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// The `id` of a create answer (`{"id": …}`), or a decode error naming the call.
pub(crate) fn created_id(
    call: &Call<'_>,
    result: &Value,
    what: &str,
) -> Result<String, ActionError> {
    field(result, "id")
        .map(str::to_string)
        .ok_or_else(|| ActionError::Permanent {
            action: call.spec.name.to_string(),
            message: format!("Qualtrics created the {what} but its answer carries no id: {result}"),
            details: Some(result.clone()),
        })
}

/// Maps a client error onto the action error classes (retry / pause / dead letter):
/// a refused refresh → `TokenExpired` (re-authorize), 429 → `RateLimited` with `Retry-After`,
/// 5xx and transport failures → `Transient`, other API answers → `Permanent` with Qualtrics'
/// own message.
pub fn map_error(spec: &ActionSpec, ctx: &ActionContext, e: QError) -> ActionError {
    let action = spec.name.to_string();
    let connection = ctx.get::<ConnectionName>().map(|c| c.0.clone());
    match e {
        QError::Auth(a) => match &a {
            xmbridge_qualtrics::AuthError::AccountTokenExpired {
                detail,
                reauthorize,
                ..
            } => ActionError::TokenExpired {
                action,
                system: System::Qualtrics,
                fix: format!(
                    "the refresh token was refused ({detail}); re-authorize with `{reauthorize}`"
                ),
            },
            xmbridge_qualtrics::AuthError::RefreshTokenNotSaved {
                source,
                reauthorize,
                ..
            } => ActionError::TokenExpired {
                action,
                system: System::Qualtrics,
                fix: format!(
                    "the refresh token was refused ({source}); re-authorize with `{reauthorize}`"
                ),
            },
            _ if a.is_retryable() => ActionError::Transient {
                action,
                message: a.to_string(),
            },
            _ => ActionError::NotConfigured {
                action,
                system: System::Qualtrics,
                fix: a.to_string(),
            },
        },
        QError::Unauthorized { .. } => ActionError::TokenExpired {
            action,
            system: System::Qualtrics,
            fix: match connection {
                Some(name) => format!(
                    "{e} Re-authorize with `xmbridge connection authorize {name}` (OAuth) or store a new API token"
                ),
                None => e.to_string(),
            },
        },
        QError::Api(api) => {
            let details = json!({
                "status": api.status,
                "errorCode": api.error_code,
                "errorMessage": api.error_message,
                "requestId": api.request_id,
            });
            match api.status {
                429 => ActionError::RateLimited {
                    action,
                    system: System::Qualtrics,
                    retry_after: api.retry_after,
                },
                408 | 500..=599 => ActionError::Transient {
                    action,
                    message: api.to_string(),
                },
                _ => ActionError::Permanent {
                    action,
                    message: api.to_string(),
                    details: Some(details),
                },
            }
        }
        QError::Transport { .. } => ActionError::Transient {
            action,
            message: e.to_string(),
        },
        QError::Config(_) | QError::InvalidBaseUrl(_) | QError::InvalidDataCenter(_) => {
            ActionError::NotConfigured {
                action,
                system: System::Qualtrics,
                fix: e.to_string(),
            }
        }
        other => ActionError::Permanent {
            action,
            message: other.to_string(),
            details: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disposition;
    use std::time::Duration;
    use xmbridge_qualtrics::ApiError;

    fn api(status: u16, retry_after: Option<Duration>) -> QError {
        QError::Api(ApiError {
            status,
            error_code: Some("X_1".into()),
            error_message: "Contact 'CID_1' was not found.".into(),
            request_id: Some("r1".into()),
            retry_after,
        })
    }

    #[test]
    fn every_error_class_gets_its_disposition() {
        let spec = &contacts::CREATE_CONTACT;
        let ctx = ActionContext::new().with(ConnectionName("acme".into()));
        let e = map_error(spec, &ctx, api(429, Some(Duration::from_secs(7))));
        assert_eq!(
            e.disposition(),
            Disposition::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        for s in [500, 503, 504] {
            let e = map_error(spec, &ctx, api(s, None));
            assert_eq!(e.disposition(), Disposition::Retry { after: None }, "{s}");
        }
        for s in [400, 403, 404] {
            let e = map_error(spec, &ctx, api(s, None));
            assert_eq!(e.disposition(), Disposition::DeadLetter, "{s}");
            assert!(
                e.to_string().contains("Contact 'CID_1' was not found."),
                "{e}"
            );
        }
        let e = map_error(
            spec,
            &ctx,
            QError::Auth(xmbridge_qualtrics::AuthError::AccountTokenExpired {
                connection: "acme".into(),
                detail: "invalid_grant".into(),
                reauthorize: "xmbridge connection authorize acme".into(),
            }),
        );
        assert_eq!(e.disposition(), Disposition::Pause);
        assert!(
            e.to_string()
                .contains("re-authorize with `xmbridge connection authorize acme`"),
            "{e}"
        );
        let e = map_error(
            spec,
            &ctx,
            QError::Transport {
                url: "u".into(),
                message: "timed out".into(),
                not_sent: false,
                timeout: true,
                source: "timed out".into(),
            },
        );
        assert_eq!(e.disposition(), Disposition::Retry { after: None });
    }
}
