//! The ServiceNow actions: create a record (idempotent with the delivery key), update a record,
//! look up records (stream), read a system property, and create an incident for a caller.
//!
//! They reach the instance through an `xmbridge_servicenow::ServiceNowClient` found in the
//! [`ActionContext`] (as the value itself or an `Arc` of it); this module only turns inputs into
//! calls and the client's errors into [`ActionError`]s. Idempotency: a writing action stores the
//! delivery key in `correlation_id` (or the field the input names) and looks it up before
//! creating, so a retry after a lost answer finds the first attempt's record.

use crate::{
    ActionContext, ActionError, ActionRequest, ActionSpec, Connect, FnAction, InputSpec, Inputs,
    Registry, System,
};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use xmbridge_servicenow::{Error, ListOptions, Record, ServiceNowClient};

/// What a person does when the account's token is refused for good.
pub const REAUTHORIZE: &str = "re-authorize the ServiceNow account (`xmbridge account link NAME --refresh`, or fix the connection's credentials); pending events wait";

/// Registers every ServiceNow action.
pub fn register(r: &mut Registry) {
    for a in [
        ServiceNowAction::new(&CREATE_RECORD, create_record),
        ServiceNowAction::new(&UPDATE_RECORD, update_record),
        ServiceNowAction::new(&LOOK_UP_RECORDS, look_up_records),
        ServiceNowAction::new(&GET_PROPERTY, get_property),
        ServiceNowAction::new(&CREATE_INCIDENT, create_incident),
    ] {
        r.register(a);
    }
}

/// One ServiceNow action: its spec and the function that runs it.
type ServiceNowAction = FnAction<ServiceNow>;

/// The ServiceNow [`Connect`]: the context's `ServiceNowClient`.
struct ServiceNow;

impl Connect for ServiceNow {
    type Call<'a> = Call<'a>;
    type Run = for<'a> fn(Call<'a>) -> BoxFuture<'a, Result<Value, ActionError>>;

    fn call<'a>(
        spec: &'static ActionSpec,
        ctx: &'a ActionContext,
        request: ActionRequest,
    ) -> Result<Call<'a>, ActionError> {
        Ok(Call {
            sn: client(spec, ctx)?,
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

/// Everything one run of a ServiceNow action works with: the checked request and the client.
struct Call<'a> {
    sn: &'a ServiceNowClient,
    request: ActionRequest,
}

fn client<'a>(
    spec: &ActionSpec,
    ctx: &'a ActionContext,
) -> Result<&'a ServiceNowClient, ActionError> {
    ctx.get::<ServiceNowClient>()
        .or_else(|| ctx.get::<Arc<ServiceNowClient>>().map(|a| a.as_ref()))
        .ok_or_else(|| ActionError::NotConfigured {
            action: spec.name.to_string(),
            system: System::ServiceNow,
            fix: "add a ServiceNow connection (instance URL and credentials) to the workflow or command".into(),
        })
}

/// The client's error, classified for the delivery worker.
pub fn map_error(spec: &ActionSpec, e: Error) -> ActionError {
    let action = spec.name.to_string();
    match e {
        Error::AuthExpired { reason, .. } => ActionError::TokenExpired {
            action,
            system: System::ServiceNow,
            fix: format!("{reason}; {REAUTHORIZE}"),
        },
        Error::RateLimited { retry_after, .. } => ActionError::RateLimited {
            action,
            system: System::ServiceNow,
            retry_after,
        },
        Error::Transient { .. } => ActionError::Transient {
            action,
            message: e.to_string(),
        },
        Error::Permanent {
            status,
            ref message,
            ref detail,
        } => ActionError::Permanent {
            action,
            details: Some(json!({"status": status, "message": message, "detail": detail})),
            message: e.to_string(),
        },
        Error::UnknownField { ref field, .. } => ActionError::BadInput {
            action,
            field: field.clone(),
            reason: e.to_string(),
        },
        Error::Config { ref message, .. } => ActionError::NotConfigured {
            action,
            system: System::ServiceNow,
            fix: message.clone(),
        },
        Error::NotFound { .. } | Error::Decode { .. } => ActionError::Permanent {
            action,
            message: e.to_string(),
            details: None,
        },
        // A kind added later: treated as passing trouble until it gets its own arm.
        other => ActionError::Transient {
            action,
            message: other.to_string(),
        },
    }
}

fn bad(spec: &ActionSpec, field: &str, reason: impl Into<String>) -> ActionError {
    ActionError::BadInput {
        action: spec.name.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn text(
    spec: &ActionSpec,
    inputs: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ActionError> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(bad(spec, name, "must be a string")),
    }
}

fn required(
    spec: &ActionSpec,
    inputs: &Map<String, Value>,
    name: &str,
) -> Result<String, ActionError> {
    text(spec, inputs, name)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ActionError::missing(spec, name))
}

/// A JSON object, given as an object or as JSON text (the CLI passes `fields={"a":"b"}`).
fn object(
    spec: &ActionSpec,
    inputs: &Map<String, Value>,
    name: &str,
) -> Result<Record, ActionError> {
    match inputs.get(name) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(bad(spec, name, "must be a JSON object of field → value")),
        },
        None | Some(Value::Null) => Err(ActionError::missing(spec, name)),
        Some(_) => Err(bad(spec, name, "must be a JSON object of field → value")),
    }
}

/// A list of names, given as an array or a comma-separated string.
fn names(
    spec: &ActionSpec,
    inputs: &Map<String, Value>,
    name: &str,
) -> Result<Vec<String>, ActionError> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(spec, name, "must be a list of field names"))
            })
            .collect(),
        Some(_) => Err(bad(spec, name, "must be a list of field names")),
    }
}

/// Looks the key up in `field`, else creates the record with the key set: one record per key.
async fn create_once(
    spec: &ActionSpec,
    sn: &ServiceNowClient,
    table: &str,
    mut fields: Record,
    key: Option<(String, String)>,
) -> Result<Value, ActionError> {
    if let Some((field, value)) = &key {
        if value.contains('^') {
            return Err(bad(spec, field, "the idempotency key must not contain '^'"));
        }
        let opts = ListOptions {
            query: Some(format!("{field}={value}")),
            page_size: 1,
            max_rows: Some(1),
            ..Default::default()
        };
        let found = sn
            .list_all(table, opts)
            .await
            .map_err(|e| map_error(spec, e))?;
        if let Some(rec) = found.into_iter().next() {
            let sys_id = rec.get("sys_id").cloned().unwrap_or(Value::Null);
            return Ok(json!({"created": false, "sys_id": sys_id, "record": rec}));
        }
        fields.insert(field.clone(), Value::String(value.clone()));
    }
    let rec = sn
        .create(table, &fields)
        .await
        .map_err(|e| map_error(spec, e))?;
    // ServiceNow ignores unknown fields on write: say which ones did not stick.
    let ignored: Vec<&String> = fields
        .keys()
        .filter(|k| !rec.contains_key(k.as_str()))
        .collect();
    let sys_id = rec.get("sys_id").cloned().unwrap_or(Value::Null);
    Ok(json!({"created": true, "sys_id": sys_id, "record": rec, "ignored_fields": ignored}))
}

const fn input(name: &'static str, required: bool, help: &'static str) -> InputSpec {
    InputSpec {
        name,
        required,
        help,
    }
}

static CREATE_RECORD: ActionSpec = ActionSpec {
    name: "servicenow.create-record",
    system: System::ServiceNow,
    title: "Create Record",
    category: "Record Management",
    inputs: &[
        input(
            "table",
            true,
            "table name, e.g. incident or customer_contact",
        ),
        input("fields", true, "JSON object of field → value"),
        input(
            "correlation_field",
            false,
            "field holding the delivery key for idempotency (default correlation_id)",
        ),
    ],
    stream: false,
    writes: true,
};
fn create_record(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let Call { sn, request: req } = call;
        let s = &CREATE_RECORD;
        let table = required(s, &req.inputs, "table")?;
        let fields = object(s, &req.inputs, "fields")?;
        let field =
            text(s, &req.inputs, "correlation_field")?.unwrap_or_else(|| "correlation_id".into());
        let key = req.delivery_key.map(|k| (field, k));
        create_once(s, sn, &table, fields, key).await
    })
}

static UPDATE_RECORD: ActionSpec = ActionSpec {
    name: "servicenow.update-record",
    system: System::ServiceNow,
    title: "Update Record",
    category: "Record Management",
    inputs: &[
        input("table", true, "table name"),
        input("sys_id", true, "the record's 32-hex sys_id"),
        input("fields", true, "JSON object of field → value to change"),
    ],
    stream: false,
    writes: true,
};
fn update_record(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let Call { sn, request: req } = call;
        let s = &UPDATE_RECORD;
        let table = required(s, &req.inputs, "table")?;
        let sys_id = required(s, &req.inputs, "sys_id")?;
        let fields = object(s, &req.inputs, "fields")?;
        let rec = sn
            .update(&table, &sys_id, &fields)
            .await
            .map_err(|e| map_error(s, e))?;
        Ok(Value::Object(rec))
    })
}

static LOOK_UP_RECORDS: ActionSpec = ActionSpec {
    name: "servicenow.look-up-records",
    system: System::ServiceNow,
    title: "Look up Records",
    category: "Record Management",
    inputs: &[
        input("table", true, "table name"),
        input(
            "query",
            false,
            "encoded query, e.g. active=true^caller_id.email=pat@example.com",
        ),
        input(
            "fields",
            false,
            "field names to return (list or comma-separated)",
        ),
        input("limit", false, "at most this many records"),
    ],
    stream: true,
    writes: false,
};
fn look_up_records(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let Call { sn, request: req } = call;
        let s = &LOOK_UP_RECORDS;
        let table = required(s, &req.inputs, "table")?;
        let limit = match text(s, &req.inputs, "limit")? {
            None => None,
            Some(l) => Some(
                l.parse::<usize>()
                    .map_err(|_| bad(s, "limit", "must be a whole number"))?,
            ),
        };
        let opts = ListOptions {
            query: text(s, &req.inputs, "query")?.filter(|q| !q.is_empty()),
            fields: names(s, &req.inputs, "fields")?,
            max_rows: limit,
            page_size: limit.unwrap_or(100).clamp(1, 1000),
            ..Default::default()
        };
        let rows = sn
            .list_all(&table, opts)
            .await
            .map_err(|e| map_error(s, e))?;
        Ok(Value::Array(rows.into_iter().map(Value::Object).collect()))
    })
}

static GET_PROPERTY: ActionSpec = ActionSpec {
    name: "servicenow.get-property",
    system: System::ServiceNow,
    title: "Get System Property",
    category: "Configuration",
    inputs: &[input(
        "name",
        true,
        "property name, e.g. sn_qualtrics_spoke.qualtrics_directory",
    )],
    stream: false,
    writes: false,
};
fn get_property(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let Call { sn, request: req } = call;
        let s = &GET_PROPERTY;
        let name = required(s, &req.inputs, "name")?;
        let value = sn.get_property(&name).await.map_err(|e| map_error(s, e))?;
        Ok(json!({"name": name, "exists": value.is_some(), "value": value}))
    })
}

static CREATE_INCIDENT: ActionSpec = ActionSpec {
    name: "servicenow.create-incident",
    system: System::ServiceNow,
    title: "Create Incident",
    category: "Incident Management",
    inputs: &[
        input("short_description", true, "one line (about 160 characters)"),
        input("description", false, "the full text"),
        input("caller", false, "the caller's email or sys_user sys_id"),
        input("urgency", false, "1 high, 2 medium, 3 low"),
        input("impact", false, "1 high, 2 medium, 3 low"),
        input(
            "category",
            false,
            "inquiry, software, hardware, network, database",
        ),
        input(
            "correlation_id",
            false,
            "external id (e.g. the Qualtrics ResponseID); default: the delivery key",
        ),
    ],
    stream: false,
    writes: true,
};
fn create_incident(call: Call<'_>) -> BoxFuture<'_, Result<Value, ActionError>> {
    Box::pin(async move {
        let Call { sn, request: req } = call;
        let s = &CREATE_INCIDENT;
        let mut fields = Record::new();
        fields.insert(
            "short_description".into(),
            Value::String(required(s, &req.inputs, "short_description")?),
        );
        for name in ["description", "category"] {
            if let Some(v) = text(s, &req.inputs, name)? {
                fields.insert(name.into(), Value::String(v));
            }
        }
        for name in ["urgency", "impact"] {
            if let Some(v) = text(s, &req.inputs, name)? {
                if !matches!(v.as_str(), "1" | "2" | "3") {
                    return Err(bad(s, name, format!("'{v}' is not 1, 2 or 3")));
                }
                fields.insert(name.into(), Value::String(v));
            }
        }
        if let Some(caller) = text(s, &req.inputs, "caller")?.filter(|c| !c.is_empty()) {
            fields.insert(
                "caller_id".into(),
                Value::String(caller_id(sn, &caller).await?),
            );
        }
        let key = text(s, &req.inputs, "correlation_id")?
            .filter(|k| !k.is_empty())
            .or(req.delivery_key)
            .map(|k| ("correlation_id".to_string(), k));
        create_once(s, sn, "incident", fields, key).await
    })
}

/// What a ServiceNow write step writes, read from its rendered inputs, so a preflight can check
/// the user's access without a record mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteTarget {
    /// The table written.
    pub table: String,
    /// The fields set.
    pub fields: Vec<String>,
    /// Whether a record is created (else an existing one is changed).
    pub creates: bool,
}

/// The table and fields `action` writes with `inputs`; `None` for an action that writes no
/// record or inputs that do not say.
pub fn write_target(action: &str, inputs: &Inputs) -> Option<WriteTarget> {
    // `fields` is an object, or its JSON text (as the actions accept it).
    let keys = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => m.keys().cloned().collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    };
    let table = || {
        inputs
            .get("table")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match action {
        "servicenow.create-incident" => {
            let mut fields: Vec<String> = CREATE_INCIDENT
                .inputs
                .iter()
                .filter(|i| inputs.get(i.name).is_some_and(|v| !v.is_null()))
                .map(|i| match i.name {
                    "caller" => "caller_id".to_string(),
                    n => n.to_string(),
                })
                .collect();
            // The delivery key goes into correlation_id when the step gives none.
            if !fields.iter().any(|f| f == "correlation_id") {
                fields.push("correlation_id".into());
            }
            Some(WriteTarget {
                table: "incident".into(),
                fields,
                creates: true,
            })
        }
        "servicenow.create-record" => {
            let mut fields = keys(inputs.get("fields"));
            let key = inputs
                .get("correlation_field")
                .and_then(Value::as_str)
                .unwrap_or("correlation_id");
            fields.push(key.to_string());
            Some(WriteTarget {
                table: table()?,
                fields,
                creates: true,
            })
        }
        "servicenow.update-record" => Some(WriteTarget {
            table: table()?,
            fields: keys(inputs.get("fields")),
            creates: false,
        }),
        _ => None,
    }
}

/// A caller given as a sys_id is used as is; an email is looked up in `sys_user`.
async fn caller_id(sn: &ServiceNowClient, caller: &str) -> Result<String, ActionError> {
    let s = &CREATE_INCIDENT;
    if caller.len() == 32 && caller.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(caller.to_string());
    }
    if !caller.contains('@') || caller.contains('^') {
        return Err(bad(
            s,
            "caller",
            "must be an email address or a 32-hex sys_id",
        ));
    }
    let opts = ListOptions {
        query: Some(format!("email={caller}")),
        fields: vec!["sys_id".into()],
        page_size: 1,
        max_rows: Some(1),
        ..Default::default()
    };
    let found = sn
        .list_all("sys_user", opts)
        .await
        .map_err(|e| map_error(s, e))?;
    found
        .first()
        .and_then(|r| r.get("sys_id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            bad(
                s,
                "caller",
                format!("no ServiceNow user has the email {caller}"),
            )
        })
}
