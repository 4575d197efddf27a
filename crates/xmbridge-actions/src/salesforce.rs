//! The Salesforce actions: `salesforce.create`, `.update`, `.upsert`, `.delete`, `.create-case`
//! (idempotent by the delivery key) and `.query`. Each takes the Salesforce client from the
//! [`ActionContext`] (a [`SalesforceConnection`], or a bare `Arc<SalesforceClient>`) and maps
//! the client's classified errors onto [`ActionError`] so a worker retries, pauses or
//! dead-letters faithfully. It owns no HTTP details (that is `xmbridge-salesforce`).

use crate::{
    ActionContext, ActionError, ActionRequest, ActionSpec, Connect, FnAction, InputSpec, Inputs,
    Registry, System,
};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::sync::Arc;
use xmbridge_salesforce::{SalesforceClient, SalesforceError, UpsertOutcome};

/// What the CLI or the workflow engine puts in the context for Salesforce actions: the client of
/// the linked account and the account's name (for the re-authorize hint).
#[derive(Clone, Debug)]
pub struct SalesforceConnection {
    /// The Salesforce client of the linked account (its token provider refreshes on its own).
    pub client: Arc<SalesforceClient>,
    /// The linked account's name, as `xmbridge account link NAME` knows it.
    pub account: String,
}

/// The field `salesforce.create-case` keys on by default (an external id on Case).
pub const DEFAULT_CASE_KEY_FIELD: &str = "Qualtrics_Delivery_Key__c";

/// Registers every Salesforce action.
pub fn register(r: &mut Registry) {
    for a in [
        SalesforceAction::new(&CREATE, create),
        SalesforceAction::new(&UPDATE, update),
        SalesforceAction::new(&UPSERT, upsert),
        SalesforceAction::new(&DELETE, delete),
        SalesforceAction::new(&CREATE_CASE, create_case),
        SalesforceAction::new(&QUERY, query),
    ] {
        r.register(a);
    }
}

/// One Salesforce action: its spec and the function that runs it.
type SalesforceAction = FnAction<Salesforce>;

/// The Salesforce [`Connect`]: the context's linked account.
struct Salesforce;

impl Connect for Salesforce {
    type Call<'a> = Call<'a>;
    type Run = for<'a> fn(Call<'a>) -> BoxFuture<'a, Result<Value, ActionError>>;

    fn call<'a>(
        spec: &'static ActionSpec,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> Result<Call<'a>, ActionError> {
        Ok(Call {
            conn: connection(spec, ctx)?,
            request,
        })
    }

    fn invoke<'a>(
        run: Self::Run,
        call: Self::Call<'a>,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        run(call)
    }
}

const OBJECT: InputSpec = InputSpec {
    name: "object",
    required: true,
    help: "sObject API name, e.g. Contact or Survey_Response__c",
};
const FIELDS: InputSpec = InputSpec {
    name: "fields",
    required: true,
    help: "JSON object of field API name → value",
};
const ID: InputSpec = InputSpec {
    name: "id",
    required: true,
    help: "the record id (15 or 18 characters)",
};

static CREATE: ActionSpec = ActionSpec {
    name: "salesforce.create",
    system: System::Salesforce,
    title: "Create Record",
    category: "Salesforce Records",
    inputs: &[
        OBJECT,
        FIELDS,
        InputSpec {
            name: "key_field",
            required: false,
            help: "makes a retry safe: a field holding the idempotency key (upserted on when it is an external id, else looked up first)",
        },
        InputSpec {
            name: "key",
            required: false,
            help: "with key_field: the idempotency key (default: the delivery key)",
        },
    ],
    stream: false,
    writes: true,
};
static UPDATE: ActionSpec = ActionSpec {
    name: "salesforce.update",
    system: System::Salesforce,
    title: "Update Record",
    category: "Salesforce Records",
    inputs: &[OBJECT, ID, FIELDS],
    stream: false,
    writes: true,
};
static UPSERT: ActionSpec = ActionSpec {
    name: "salesforce.upsert",
    system: System::Salesforce,
    title: "Upsert Record by External Id",
    category: "Salesforce Records",
    inputs: &[
        OBJECT,
        InputSpec {
            name: "external_id_field",
            required: true,
            help: "the external id field to match on, e.g. Response_Id__c",
        },
        InputSpec {
            name: "external_id",
            required: true,
            help: "the key value, e.g. the Qualtrics response id",
        },
        FIELDS,
    ],
    stream: false,
    writes: true,
};
static DELETE: ActionSpec = ActionSpec {
    name: "salesforce.delete",
    system: System::Salesforce,
    title: "Delete Record",
    category: "Salesforce Records",
    inputs: &[OBJECT, ID],
    stream: false,
    writes: true,
};
static CREATE_CASE: ActionSpec = ActionSpec {
    name: "salesforce.create-case",
    system: System::Salesforce,
    title: "Create Case",
    category: "Salesforce Records",
    inputs: &[
        FIELDS,
        InputSpec {
            name: "key_field",
            required: false,
            help: "Case field holding the idempotency key (default Qualtrics_Delivery_Key__c)",
        },
        InputSpec {
            name: "key",
            required: false,
            help: "idempotency key (default: the delivery key)",
        },
    ],
    stream: false,
    writes: true,
};
static QUERY: ActionSpec = ActionSpec {
    name: "salesforce.query",
    system: System::Salesforce,
    title: "Query Records (SOQL)",
    category: "Salesforce Records",
    inputs: &[
        InputSpec {
            name: "soql",
            required: true,
            help: "SELECT … FROM … [WHERE …] [ORDER BY …] [LIMIT n]",
        },
        InputSpec {
            name: "max_records",
            required: false,
            help: "stop after this many records",
        },
    ],
    stream: true,
    writes: false,
};

fn connection<'a>(
    spec: &ActionSpec,
    ctx: &'a ActionContext,
) -> Result<Cow<'a, SalesforceConnection>, ActionError> {
    if let Some(c) = ctx.get::<SalesforceConnection>() {
        return Ok(Cow::Borrowed(c));
    }
    if let Some(c) = ctx.get::<Arc<SalesforceClient>>() {
        return Ok(Cow::Owned(SalesforceConnection {
            client: c.clone(),
            account: System::Salesforce.as_str().into(),
        }));
    }
    Err(ActionError::NotConfigured {
        action: spec.name.into(),
        system: System::Salesforce,
        fix: "link a Salesforce account (`xmbridge account link NAME`) and choose it for this step"
            .into(),
    })
}

/// Everything one run of a Salesforce action works with: the checked request and the linked
/// account's client.
struct Call<'a> {
    conn: Cow<'a, SalesforceConnection>,
    request: ActionRequest,
}

/// Maps the client's classification onto the action's.
pub fn map_error(spec: &ActionSpec, account: &str, e: SalesforceError) -> ActionError {
    let action = spec.name.to_string();
    match e {
        SalesforceError::TokenExpired { description } => ActionError::TokenExpired {
            action,
            system: System::Salesforce,
            fix: format!(
                "Salesforce refused account '{account}' ({description}); re-authorize it with `xmbridge account link {account}`; pending events wait and resume afterwards"
            ),
        },
        SalesforceError::OAuth { error, description } => ActionError::NotConfigured {
            action,
            system: System::Salesforce,
            fix: format!(
                "the token endpoint refused account '{account}' ({error}: {description}); check the connected app's client id/secret, the flow settings and the user's login IP ranges"
            ),
        },
        SalesforceError::RateLimited { retry_after } => ActionError::RateLimited {
            action,
            system: System::Salesforce,
            retry_after,
        },
        SalesforceError::LimitExceeded { .. } => ActionError::RateLimited {
            action,
            system: System::Salesforce,
            retry_after: None,
        },
        SalesforceError::Transient { .. }
        | SalesforceError::Sink(_)
        | SalesforceError::Protocol { .. } => ActionError::Transient {
            action,
            message: e.to_string(),
        },
        SalesforceError::Permanent { ref errors, .. } => {
            let details = serde_json::to_value(errors).ok();
            ActionError::Permanent {
                action,
                message: e.to_string(),
                details,
            }
        }
        SalesforceError::MultipleMatches { ref ids } => {
            let details = Some(json!({"ids": ids}));
            ActionError::Permanent {
                action,
                message: e.to_string(),
                details,
            }
        }
        // A kind added later: treated as passing trouble until it gets its own arm.
        other => ActionError::Transient {
            action,
            message: other.to_string(),
        },
    }
}

fn text(spec: &ActionSpec, inputs: &Inputs, name: &str) -> Result<String, ActionError> {
    match inputs.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        None | Some(Value::Null) => Err(ActionError::missing(spec, name)),
        Some(_) => Err(ActionError::BadInput {
            action: spec.name.into(),
            field: name.into(),
            reason: "must be a non-empty string".into(),
        }),
    }
}

/// `fields`: a JSON object, or a string holding one (as `--input fields='{…}'` gives).
fn fields(spec: &ActionSpec, inputs: &Inputs) -> Result<Map<String, Value>, ActionError> {
    let bad = |reason: String| ActionError::BadInput {
        action: spec.name.into(),
        field: "fields".into(),
        reason,
    };
    match inputs.get("fields") {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(bad("must be a JSON object of field → value".into())),
        },
        None | Some(Value::Null) => Err(ActionError::missing(spec, "fields")),
        Some(other) => Err(bad(format!("must be a JSON object, not {other}"))),
    }
}

fn create(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let (c, r) = (&call.conn, &call.request);
        let spec = &CREATE;
        let object = text(spec, &r.inputs, "object")?;
        let f = fields(spec, &r.inputs)?;
        if let Some(Value::String(key_field)) = r.inputs.get("key_field")
            && !key_field.trim().is_empty()
        {
            let key = idempotency_key(spec, r)?;
            return idempotent_create(spec, c, &object, f, key_field.trim(), &key).await;
        }
        let id = c
            .client
            .create(&object, &f)
            .await
            .map_err(|e| map_error(spec, &c.account, e))?;
        Ok(json!({"object": object, "id": id, "created": true}))
    })
}

fn update(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let (c, r) = (&call.conn, &call.request);
        let spec = &UPDATE;
        let object = text(spec, &r.inputs, "object")?;
        let id = text(spec, &r.inputs, "id")?;
        let f = fields(spec, &r.inputs)?;
        c.client
            .update(&object, &id, &f)
            .await
            .map_err(|e| map_error(spec, &c.account, e))?;
        Ok(json!({"object": object, "id": id, "updated": true}))
    })
}

fn upsert_output(object: &str, out: UpsertOutcome) -> Value {
    match out {
        UpsertOutcome::Created(id) => json!({"object": object, "id": id, "created": true}),
        UpsertOutcome::Updated(id) => json!({"object": object, "id": id, "created": false}),
    }
}

fn upsert(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let (c, r) = (&call.conn, &call.request);
        let spec = &UPSERT;
        let object = text(spec, &r.inputs, "object")?;
        let key_field = text(spec, &r.inputs, "external_id_field")?;
        let key = text(spec, &r.inputs, "external_id")?;
        let f = fields(spec, &r.inputs)?;
        let out = c
            .client
            .upsert(&object, &key_field, &key, &f)
            .await
            .map_err(|e| map_error(spec, &c.account, e))?;
        Ok(upsert_output(&object, out))
    })
}

fn delete(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let (c, r) = (&call.conn, &call.request);
        let spec = &DELETE;
        let object = text(spec, &r.inputs, "object")?;
        let id = text(spec, &r.inputs, "id")?;
        match c.client.delete(&object, &id).await {
            Ok(()) => Ok(json!({"object": object, "id": id, "deleted": true})),
            // A retry after a delete whose answer was lost: the record is gone, which is the goal.
            Err(e) if e.codes() == ["ENTITY_IS_DELETED"] => {
                Ok(json!({"object": object, "id": id, "deleted": true, "already_deleted": true}))
            }
            Err(e) => Err(map_error(spec, &c.account, e)),
        }
    })
}

fn soql_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// The `key` input, else the delivery key; without either a retry could duplicate: refused.
fn idempotency_key(spec: &ActionSpec, r: &ActionRequest) -> Result<String, ActionError> {
    match r.inputs.get("key") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => r.delivery_key.clone().ok_or_else(|| ActionError::BadInput {
            action: spec.name.into(),
            field: "key".into(),
            reason:
                "no idempotency key: pass `key` or run with a delivery key (workflows always do)"
                    .into(),
        }),
    }
}

/// Creates at most one record per key: upsert on the key field when it is an external id;
/// otherwise look the key up first and create only when no record carries it.
async fn idempotent_create(
    spec: &ActionSpec,
    c: &SalesforceConnection,
    object: &str,
    mut f: Map<String, Value>,
    key_field: &str,
    key: &str,
) -> Result<Value, ActionError> {
    let map = |e| map_error(spec, &c.account, e);
    let describe = c.client.describe(object).await.map_err(map)?;
    let Some(kf) = describe.field(key_field) else {
        return Err(ActionError::Permanent {
            action: spec.name.into(),
            message: format!(
                "{object} has no field {key_field} visible to account '{}'; create it (text, External ID, unique) or grant read/edit access, or choose another key_field",
                c.account
            ),
            details: None,
        });
    };
    let kf_name = kf.name.clone();
    if kf.external_id {
        f.remove(&kf_name);
        let out = c
            .client
            .upsert(object, &kf_name, key, &f)
            .await
            .map_err(map)?;
        return Ok(upsert_output(object, out));
    }
    let soql = format!(
        "SELECT Id FROM {object} WHERE {kf_name} = '{}' LIMIT 2",
        soql_quote(key)
    );
    let found = c.client.query_all(&soql).await.map_err(map)?;
    if let Some(id) = found
        .first()
        .and_then(|r| r.get("Id"))
        .and_then(Value::as_str)
    {
        return Ok(json!({"object": object, "id": id, "created": false}));
    }
    f.insert(kf_name, Value::String(key.to_string()));
    let id = c.client.create(object, &f).await.map_err(map)?;
    Ok(json!({"object": object, "id": id, "created": true}))
}

/// Idempotent Case creation keyed on `key_field` (default `Qualtrics_Delivery_Key__c`).
fn create_case(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let (c, r) = (&call.conn, &call.request);
        let spec = &CREATE_CASE;
        let f = fields(spec, &r.inputs)?;
        let key_field = match r.inputs.get("key_field") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => DEFAULT_CASE_KEY_FIELD.to_string(),
        };
        let key = idempotency_key(spec, r)?;
        idempotent_create(spec, c, "Case", f, &key_field, &key).await
    })
}

fn query(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let (c, r) = (&call.conn, &call.request);
        let spec = &QUERY;
        let soql = text(spec, &r.inputs, "soql")?;
        let max = match r.inputs.get("max_records") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(|| ActionError::BadInput {
                        action: spec.name.into(),
                        field: "max_records".into(),
                        reason: "must be a whole number".into(),
                    })? as usize,
            ),
        };
        let mut pager = c.client.query(&soql);
        let mut out = Vec::new();
        while let Some(page) = pager
            .next_page()
            .await
            .map_err(|e| map_error(spec, &c.account, e))?
        {
            out.extend(page);
            if max.is_some_and(|m| out.len() >= m) {
                break;
            }
        }
        if let Some(m) = max {
            out.truncate(m);
        }
        Ok(Value::Array(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disposition;
    use xmbridge_salesforce::SfError;

    #[test]
    fn errors_map_onto_dispositions() {
        let d = |e| map_error(&UPSERT, "prod", e).disposition();
        assert_eq!(
            d(SalesforceError::TokenExpired {
                description: "expired access/refresh token".into()
            }),
            Disposition::Pause
        );
        assert_eq!(
            d(SalesforceError::LimitExceeded {
                message: "x".into(),
                usage: None
            }),
            Disposition::Retry { after: None }
        );
        assert_eq!(
            d(SalesforceError::Transient {
                status: Some(503),
                message: "x".into(),
                source: None,
            }),
            Disposition::Retry { after: None }
        );
        let e = map_error(
            &UPSERT,
            "prod",
            SalesforceError::Permanent {
                status: 400,
                errors: vec![SfError {
                    error_code: "FIELD_CUSTOM_VALIDATION_EXCEPTION".into(),
                    message: "NPS must be 0-10".into(),
                    fields: vec![],
                }],
            },
        );
        assert_eq!(e.disposition(), Disposition::DeadLetter);
        let ActionError::Permanent { details, .. } = e else {
            panic!()
        };
        assert_eq!(
            details.unwrap()[0]["error_code"],
            "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        );
        let e = map_error(
            &UPSERT,
            "prod",
            SalesforceError::MultipleMatches {
                ids: vec!["003a".into(), "003b".into()],
            },
        );
        assert!(e.to_string().contains("003a, 003b"), "{e}");
        let e = map_error(
            &UPSERT,
            "prod",
            SalesforceError::TokenExpired {
                description: "x".into(),
            },
        );
        assert!(e.to_string().contains("xmbridge account link prod"), "{e}");
    }

    #[test]
    fn soql_literals_are_escaped() {
        assert_eq!(soql_quote("a'b\\c"), "a\\'b\\\\c");
    }
}
