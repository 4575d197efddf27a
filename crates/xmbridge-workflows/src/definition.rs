//! Workflow definitions: the `[[workflow]]` TOML format, its validation, and rendering a step's
//! concrete action inputs for one event.
//!
//! It owns the parsed [`Workflow`] (trigger, condition, steps with inputs and mappings), every
//! load-time check (names, expression syntax, paths that cannot exist for the trigger, actions and
//! their required inputs from the [`Registry`]) with errors that name the file, workflow, step and
//! field, and [`Workflow::render_step`] / [`Workflow::matches`], which the delivery worker calls.
//! It must not run actions, store events or talk to any system: that is the worker's job.

use crate::expr::{Expr, closest};
use crate::mapping::{Mapping, WriteKind};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use xmbridge_actions::{Inputs, Registry, System};

/// The default number of delivery attempts before an event is parked in the dead letter.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// One workflow, parsed and validated.
#[derive(Clone, Debug)]
pub struct Workflow {
    /// `[a-z0-9_-]+`, unique across the catalog.
    pub name: String,
    /// One line for listings, as written in the file; `None` when the file gives none.
    pub description: Option<String>,
    /// The project owner: a local user name whose linked accounts the steps use.
    pub owner: String,
    /// What starts it (and so which event fields its expressions can use).
    pub trigger: Trigger,
    /// Runs the steps only when true (e.g. `response.values.QID1 <= 6`).
    pub condition: Option<Expr>,
    /// The steps, run in order for each event; at least one.
    pub steps: Vec<Step>,
    /// Delivery attempts before the dead letter (default 8).
    pub max_attempts: u32,
    /// Identifies the definition as written: [`FINGERPRINT_SCHEME`] and a SHA-256 over the
    /// workflow's TOML table in a canonical form (keys sorted, values typed), so reordering keys
    /// or reformatting the file is no edit, and a new toolchain changes nothing.
    pub fingerprint: String,
}

/// The prefix of [`Workflow::fingerprint`]; a stored fingerprint without it was made by an
/// earlier, unstable scheme and cannot be compared.
pub const FINGERPRINT_SCHEME: &str = "v2:";

/// [`FINGERPRINT_SCHEME`] + hex SHA-256 of `value` written canonically.
fn fingerprint_of(value: &toml::Value) -> String {
    use sha2::{Digest, Sha256};
    fn write(v: &toml::Value, out: &mut String) {
        match v {
            toml::Value::String(s) => {
                out.push('s');
                out.push_str(&serde_json::Value::String(s.clone()).to_string());
            }
            toml::Value::Integer(i) => out.push_str(&format!("i{i};")),
            toml::Value::Float(f) => out.push_str(&format!("f{};", f.to_bits())),
            toml::Value::Boolean(b) => out.push_str(if *b { "t;" } else { "F;" }),
            toml::Value::Datetime(d) => out.push_str(&format!("d{d};")),
            toml::Value::Array(a) => {
                out.push('[');
                for x in a {
                    write(x, out);
                }
                out.push(']');
            }
            toml::Value::Table(t) => {
                let mut keys: Vec<&String> = t.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&t[k], out);
                }
                out.push('}');
            }
        }
    }
    let mut canonical = String::new();
    write(value, &mut canonical);
    format!(
        "{FINGERPRINT_SCHEME}{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

/// What starts a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A Qualtrics `surveyengine.completedResponse.{SurveyID}` event delivered to the webhook.
    QualtricsResponse {
        /// The survey whose completed responses start the workflow (`SV_…`).
        survey_id: String,
    },
    /// New responses seen by `xmbridge sync`.
    SyncResponses {
        /// The synced survey whose new responses start the workflow (`SV_…`).
        survey_id: String,
    },
    /// A Salesforce outbound message (SOAP) for that sObject. `organization_id` pins the org
    /// whose messages are accepted (besides the endpoint token).
    SalesforceOutbound {
        /// The sObject the outbound message is for (`Case`, `Contact` …).
        object: String,
        /// The only organization id accepted; `None`: the org of the owner's linked Salesforce
        /// account when known (see [`crate::hooks::protection`]), else any.
        organization_id: Option<String>,
    },
    /// An inbound JSON call from a ServiceNow business rule on that table.
    ServiceNow {
        /// The table whose business rule calls the hook (`incident` …).
        table: String,
    },
}

impl Trigger {
    /// The `type = "…"` word in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::QualtricsResponse { .. } => "qualtrics-response",
            Trigger::SyncResponses { .. } => "sync-responses",
            Trigger::SalesforceOutbound { .. } => "salesforce-outbound",
            Trigger::ServiceNow { .. } => "servicenow",
        }
    }

    /// The top-level keys of this trigger's event JSON (besides `steps`).
    pub fn event_roots(&self) -> &'static [&'static str] {
        match self {
            Trigger::QualtricsResponse { .. } | Trigger::SyncResponses { .. } => {
                &["response", "embedded", "contact", "survey"]
            }
            Trigger::SalesforceOutbound { .. } => &["record", "notification"],
            Trigger::ServiceNow { .. } => &["record", "table"],
        }
    }
}

/// How a trigger's inbound endpoint authenticates a call before anything is stored (the
/// trigger's `auth` key). Each hook kind has exactly one; there is no unauthenticated hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAuth {
    /// Qualtrics: `HMAC` = hex(HMAC-SHA512(shared key, MSG)), the key given to the subscription.
    Hmac,
    /// Salesforce: a per-workflow secret token in the endpoint URL (`?token=…`), plus the
    /// organization id when one is pinned or the owner has a linked Salesforce account.
    EndpointToken,
    /// ServiceNow: a per-workflow secret in the `X-Xmbridge-Secret` header.
    SharedSecret,
}

impl HookAuth {
    /// The `auth = "…"` word in TOML.
    pub fn word(self) -> &'static str {
        match self {
            HookAuth::Hmac => "hmac",
            HookAuth::EndpointToken => "endpoint-token",
            HookAuth::SharedSecret => "shared-secret",
        }
    }

    /// One line for people: what a caller must present.
    pub fn describe(self) -> &'static str {
        match self {
            HookAuth::Hmac => {
                "HMAC-SHA512 signature of each event under the subscription's shared key"
            }
            HookAuth::EndpointToken => "secret token in the endpoint URL (?token=…)",
            HookAuth::SharedSecret => "shared secret in the X-Xmbridge-Secret header",
        }
    }
}

impl Trigger {
    /// How the trigger's inbound endpoint is authenticated; `None` for triggers without one
    /// (`sync-responses`).
    pub fn hook_auth(&self) -> Option<HookAuth> {
        match self {
            Trigger::QualtricsResponse { .. } => Some(HookAuth::Hmac),
            Trigger::SalesforceOutbound { .. } => Some(HookAuth::EndpointToken),
            Trigger::ServiceNow { .. } => Some(HookAuth::SharedSecret),
            Trigger::SyncResponses { .. } => None,
        }
    }

    /// The route of the trigger's inbound endpoint for `workflow`, if it has one.
    pub fn hook_path(&self, workflow: &str) -> Option<String> {
        let kind = match self {
            Trigger::QualtricsResponse { .. } => System::Qualtrics,
            Trigger::SalesforceOutbound { .. } => System::Salesforce,
            Trigger::ServiceNow { .. } => System::ServiceNow,
            Trigger::SyncResponses { .. } => return None,
        }
        .as_str();
        Some(format!("/hooks/{kind}/{workflow}"))
    }
}

/// True for a Salesforce organization id: `00D` and 15 or 18 letters and digits.
pub fn is_salesforce_org_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18)
        && s.starts_with("00D")
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::QualtricsResponse { survey_id } => write!(
                f,
                "Qualtrics event surveyengine.completedResponse.{survey_id} (webhook)"
            ),
            Trigger::SyncResponses { survey_id } => {
                write!(f, "new responses of {survey_id} seen by a sync")
            }
            Trigger::SalesforceOutbound { object, .. } => {
                write!(f, "Salesforce outbound message on {object}")
            }
            Trigger::ServiceNow { table } => write!(f, "ServiceNow call for table {table}"),
        }
    }
}

/// One step: an action run with inputs rendered from the event (and earlier steps' outputs).
#[derive(Clone, Debug)]
pub struct Step {
    /// Unique within the workflow; later steps read this step's output as `steps.NAME`.
    pub name: String,
    /// Registry name of the action (`salesforce.upsert`, `create-distribution` …).
    pub action: String,
    /// The action's system (from the registry).
    pub system: System,
    /// The SF/SN account or Qualtrics connection to use; `None` = the owner's default.
    pub account: Option<String>,
    /// Runs the step only when true.
    pub when: Option<Expr>,
    /// Input name → value (expressions at the leaves).
    pub inputs: BTreeMap<String, Input>,
    /// For record actions: the target object, key and field mapping.
    pub mapping: Option<Mapping>,
    /// The input that receives `mapping.object` (`object`, or `table` for ServiceNow actions;
    /// none for actions whose object is fixed, like `salesforce.create-case`).
    pub object_input: Option<&'static str>,
    /// The action's required inputs (a `null` value for one of them is a [`PlanError`]).
    pub required_inputs: Vec<String>,
}

/// An input value: an expression, or a table/array of them (e.g. `embedded_data = { tier = "…" }`).
#[derive(Clone, Debug)]
pub enum Input {
    /// A leaf: an expression, template or constant.
    Expr(Expr),
    /// A TOML table: rendered to a JSON object, leaving out keys whose value is `null`.
    Object(BTreeMap<String, Input>),
    /// A TOML array: rendered to a JSON array element by element.
    Array(Vec<Input>),
}

impl Input {
    fn exprs<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Input::Expr(e) => out.push(e),
            Input::Object(m) => m.values().for_each(|i| i.exprs(out)),
            Input::Array(a) => a.iter().for_each(|i| i.exprs(out)),
        }
    }

    fn render(&self, root: &Value) -> Value {
        match self {
            Input::Expr(e) => e.eval(root),
            Input::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.render(root)))
                    .filter(|(_, v)| !v.is_null())
                    .collect(),
            ),
            Input::Array(a) => Value::Array(a.iter().map(|i| i.render(root)).collect()),
        }
    }
}

/// The event a workflow runs on and the outputs of the steps done so far.
#[derive(Clone, Debug, Default)]
pub struct EventContext {
    /// `response`/`embedded`/`contact`/`survey`, or `record`/`notification`/`table`.
    pub event: Value,
    /// Step name → that step's output.
    pub steps: Map<String, Value>,
}

impl EventContext {
    /// The context of `event` before any step has run.
    pub fn new(event: Value) -> EventContext {
        EventContext {
            event,
            steps: Map::new(),
        }
    }

    /// The object expressions are evaluated against: the event's keys plus `steps`.
    pub fn root(&self) -> Value {
        let mut root = match &self.event {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        root.insert("steps".into(), Value::Object(self.steps.clone()));
        Value::Object(root)
    }
}

/// A step ready to run: the action, the account and concrete JSON inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedStep {
    /// Registry name of the action to run.
    pub action: String,
    /// The account or connection the step names; `None` = the owner's default.
    pub account: Option<String>,
    /// The step's inputs evaluated for this event.
    pub inputs: Inputs,
}

/// Why a step could not be rendered for an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The worker asked for a step past the workflow's last.
    #[error("workflow \"{workflow}\" has no step number {index}")]
    NoSuchStep {
        /// The workflow's name.
        workflow: String,
        /// The 0-based step index asked for.
        index: usize,
    },
    /// A required input evaluated to `null` for this event.
    #[error(
        "workflow \"{workflow}\", step \"{step}\": input \"{input}\" is required but `{expr}` is empty for this event"
    )]
    MissingInput {
        /// The workflow's name.
        workflow: String,
        /// The step's name.
        step: String,
        /// The required input's name.
        input: String,
        /// The input's expression as written.
        expr: String,
    },
}

impl Workflow {
    /// The condition: true when there is none.
    pub fn matches(&self, ctx: &EventContext) -> Result<bool, PlanError> {
        Ok(self
            .condition
            .as_ref()
            .is_none_or(|c| c.eval_bool(&ctx.root())))
    }

    /// The action name + concrete JSON inputs of step `index` for this event, given the outputs of
    /// earlier steps (`steps.<name>.<field>` in expressions); `None` when the step's `when` is
    /// false. Inputs and mapped fields that evaluate to `null` are left out (a question the
    /// respondent skipped does not clear a field); a required input that is `null` is an error.
    pub fn render_step(
        &self,
        index: usize,
        ctx: &EventContext,
    ) -> Result<Option<RenderedStep>, PlanError> {
        let step = self.steps.get(index).ok_or_else(|| PlanError::NoSuchStep {
            workflow: self.name.clone(),
            index,
        })?;
        let root = ctx.root();
        if let Some(when) = &step.when
            && !when.eval_bool(&root)
        {
            return Ok(None);
        }
        let mut inputs = Inputs::new();
        for (name, input) in &step.inputs {
            let v = input.render(&root);
            if !v.is_null() {
                inputs.insert(name.clone(), v);
            }
        }
        if let Some(m) = &step.mapping {
            if let Some(key) = step.object_input {
                inputs.insert(key.into(), Value::String(m.object.clone()));
            }
            if let Some(key) = &m.external_id_field {
                inputs.insert("external_id_field".into(), Value::String(key.clone()));
            }
            if let Some(e) = &m.external_id {
                let v = e.eval(&root);
                if v.is_null() {
                    return Err(PlanError::MissingInput {
                        workflow: self.name.clone(),
                        step: step.name.clone(),
                        input: "external_id".into(),
                        expr: e.source().to_string(),
                    });
                }
                // Keys go into a URL path: always text.
                inputs.insert(
                    "external_id".into(),
                    Value::String(crate::expr::to_text(&v)),
                );
            }
            let fields: Map<String, Value> = m
                .fields
                .iter()
                .map(|(k, e)| (k.clone(), e.eval(&root)))
                .filter(|(_, v)| !v.is_null())
                .collect();
            inputs.insert("fields".into(), Value::Object(fields));
        }
        for name in &step.required_inputs {
            if !inputs.contains_key(name) {
                let mut exprs = Vec::new();
                if let Some(input) = step.inputs.get(name) {
                    input.exprs(&mut exprs);
                }
                return Err(PlanError::MissingInput {
                    workflow: self.name.clone(),
                    step: step.name.clone(),
                    input: name.clone(),
                    expr: exprs
                        .first()
                        .map(|e| e.source().to_string())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(Some(RenderedStep {
            action: step.action.clone(),
            account: step.account.clone(),
            inputs,
        }))
    }

    /// Every expression of the workflow with where it sits (`condition`, `step "x", input "y"` …).
    pub fn expressions(&self) -> Vec<(String, &Expr)> {
        let mut out = Vec::new();
        if let Some(c) = &self.condition {
            out.push(("condition".to_string(), c));
        }
        for s in &self.steps {
            if let Some(w) = &s.when {
                out.push((format!("step \"{}\", when", s.name), w));
            }
            for (name, input) in &s.inputs {
                let mut exprs = Vec::new();
                input.exprs(&mut exprs);
                for e in exprs {
                    out.push((format!("step \"{}\", input \"{name}\"", s.name), e));
                }
            }
            if let Some(m) = &s.mapping {
                if let Some(e) = &m.external_id {
                    out.push((format!("step \"{}\", mapping.external_id", s.name), e));
                }
                for (f, e) in &m.fields {
                    out.push((format!("step \"{}\", field \"{f}\"", s.name), e));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Where a problem is: file, workflow, step and field, printed as
/// `file: workflow "w", step "s", input "i": …`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The file as shown to the user: its path, or `template NAME` for a built-in template.
    pub file: String,
    /// The workflow's name; `None` for a problem with the file itself.
    pub workflow: Option<String>,
    /// The step's name; `None` for a problem outside the steps.
    pub step: Option<String>,
    /// `input "urgency"`, `field "NPS__c"`, `condition`, `trigger.survey_id` …
    pub field: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        let mut sep = ": ";
        if let Some(w) = &self.workflow {
            write!(f, "{sep}workflow \"{w}\"")?;
            sep = ", ";
        }
        if let Some(s) = &self.step {
            write!(f, "{sep}step \"{s}\"")?;
            sep = ", ";
        }
        if let Some(x) = &self.field {
            write!(f, "{sep}{x}")?;
        }
        Ok(())
    }
}

/// One thing wrong in a workflow file, with what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a file (at least one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    /// The problems in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl DefinitionError {
    pub(crate) fn single(location: Location, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            problems: vec![Problem {
                location,
                message: message.into(),
            }],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    description: Option<String>,
    owner: Option<String>,
    trigger: toml::Value,
    condition: Option<String>,
    max_attempts: Option<i64>,
    #[serde(default)]
    step: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    #[serde(rename = "type")]
    kind: String,
    survey_id: Option<String>,
    object: Option<String>,
    table: Option<String>,
    auth: Option<String>,
    organization_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    action: String,
    account: Option<String>,
    when: Option<String>,
    #[serde(default)]
    inputs: toml::Table,
    mapping: Option<RawMapping>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    object: String,
    external_id_field: Option<String>,
    external_id: Option<String>,
    #[serde(default)]
    fields: toml::Table,
}

const TRIGGER_KINDS: &[&str] = &[
    "qualtrics-response",
    "sync-responses",
    "salesforce-outbound",
    "servicenow",
];

/// Which top-level keys a file may have besides `workflow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `workflows/*.toml`: only `[[workflow]]` tables.
    WorkflowFile,
    /// `xmbridge.toml`: other sections belong to other parts of xmbridge.
    MainConfig,
}

/// Parses and validates every `[[workflow]]` of one file. `file` is how errors name it.
pub fn parse_file(
    file: &str,
    text: &str,
    kind: FileKind,
    registry: &Registry,
) -> Result<Vec<Workflow>, DefinitionError> {
    let at_file = || Location {
        file: file.to_string(),
        ..Location::default()
    };
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| DefinitionError::single(at_file(), toml_message(&e, text)))?;
    let mut problems = Vec::new();
    if kind == FileKind::WorkflowFile
        && let Some(k) = table.keys().find(|k| *k != "workflow")
    {
        problems.push(Problem {
            location: at_file(),
            message: format!(
                "unknown top-level key `{k}`; a workflow file holds only [[workflow]] tables"
            ),
        });
    }
    let raw = match table.get("workflow") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            problems.push(Problem {
                location: at_file(),
                message:
                    "`workflow` must be an array of tables: write [[workflow]], not [workflow]"
                        .into(),
            });
            Vec::new()
        }
    };
    let mut workflows: Vec<Workflow> = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let name = value
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        let loc = Location {
            file: file.to_string(),
            workflow: Some(name.clone()),
            ..Location::default()
        };
        let before = problems.len();
        let fingerprint = fingerprint_of(&value);
        if let Some(mut w) = build_workflow(value, &loc, registry, &mut problems) {
            w.fingerprint = fingerprint;
            if workflows.iter().any(|o| o.name == w.name) {
                problems.push(Problem {
                    location: loc,
                    message: "a workflow of this name is already defined in this file; names must be unique".into(),
                });
            } else if problems.len() == before {
                workflows.push(w);
            }
        }
    }
    if problems.is_empty() {
        Ok(workflows)
    } else {
        Err(DefinitionError { problems })
    }
}

fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let mut msg = e.message().trim().to_string();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        msg = format!("line {line}, column {column}: {msg}");
    }
    msg
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn serde_message(e: toml::de::Error) -> String {
    e.message().trim().replace('\n', " ")
}

fn build_workflow(
    value: toml::Value,
    loc: &Location,
    registry: &Registry,
    problems: &mut Vec<Problem>,
) -> Option<Workflow> {
    let mut push = |field: Option<String>, step: Option<String>, message: String| {
        problems.push(Problem {
            location: Location {
                step,
                field,
                ..loc.clone()
            },
            message,
        })
    };
    let raw: RawWorkflow = match value.try_into() {
        Ok(r) => r,
        Err(e) => {
            push(None, None, serde_message(e));
            return None;
        }
    };
    if !valid_name(&raw.name) {
        push(
            Some("name".into()),
            None,
            format!(
                "\"{}\" is not a valid name; use lowercase letters, digits, - and _ (e.g. \"{}\")",
                raw.name,
                suggest_name(&raw.name)
            ),
        );
    }
    let owner = match raw.owner {
        Some(o) if !o.trim().is_empty() => o,
        _ => {
            push(
                Some("owner".into()),
                None,
                "missing; write owner = \"<local user name>\" (the project owner whose linked accounts the steps use)".into(),
            );
            String::new()
        }
    };
    let max_attempts = match raw.max_attempts {
        None => DEFAULT_MAX_ATTEMPTS,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            push(
                Some("max_attempts".into()),
                None,
                format!(
                    "{n} is out of range; write a number from 1 to 100 (default {DEFAULT_MAX_ATTEMPTS})"
                ),
            );
            DEFAULT_MAX_ATTEMPTS
        }
    };
    let trigger = match raw.trigger.try_into::<RawTrigger>() {
        Err(e) => {
            push(Some("trigger".into()), None, serde_message(e));
            None
        }
        Ok(t) => build_trigger(t, &mut |field, msg| {
            push(Some(format!("trigger.{field}")), None, msg)
        }),
    };
    let roots: &[&str] = trigger.as_ref().map(|t| t.event_roots()).unwrap_or(&[]);

    let condition = raw.condition.as_deref().and_then(|src| {
        match check_expr(src, roots, &[], trigger.is_some()) {
            Ok(e) => Some(e),
            Err(msg) => {
                push(Some("condition".into()), None, msg);
                None
            }
        }
    });

    if raw.step.is_empty() {
        push(
            None,
            None,
            "has no steps; add at least one [[workflow.step]] with a name and an action".into(),
        );
    }
    let mut steps: Vec<Step> = Vec::new();
    for (i, sv) in raw.step.into_iter().enumerate() {
        let step_name = sv
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        let earlier: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        let mut step_push =
            |field: Option<String>, msg: String| push(field, Some(step_name.clone()), msg);
        if let Some(step) = build_step(
            sv,
            roots,
            &earlier,
            trigger.is_some(),
            registry,
            &mut step_push,
        ) {
            if earlier.contains(&step.name.as_str()) {
                step_push(
                    None,
                    "another step already has this name; step names must be unique in a workflow"
                        .into(),
                );
            } else {
                steps.push(step);
            }
        }
    }
    Some(Workflow {
        fingerprint: String::new(),
        name: raw.name,
        description: raw.description,
        owner,
        trigger: trigger?,
        condition,
        steps,
        max_attempts,
    })
}

fn suggest_name(s: &str) -> String {
    let mut out: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(64);
    if out.is_empty() {
        "my-workflow".into()
    } else {
        out
    }
}

fn build_trigger(t: RawTrigger, push: &mut dyn FnMut(&str, String)) -> Option<Trigger> {
    let need =
        |v: Option<String>, field: &str, example: &str, push: &mut dyn FnMut(&str, String)| match v
        {
            Some(s) if !s.trim().is_empty() => Some(s),
            _ => {
                push(
                    field,
                    format!(
                        "missing; a {} trigger needs {field} = \"{example}\"",
                        t.kind
                    ),
                );
                None
            }
        };
    let unused = |present: &[(&str, bool)], push: &mut dyn FnMut(&str, String)| {
        for (field, is_set) in present {
            if *is_set {
                push(
                    field,
                    format!("does not apply to a {} trigger; remove it", t.kind),
                );
            }
        }
    };
    // The one protection each hook kind has; `auth` may only restate it.
    let expected_auth = match t.kind.as_str() {
        "qualtrics-response" => Some(HookAuth::Hmac),
        "salesforce-outbound" => Some(HookAuth::EndpointToken),
        "servicenow" => Some(HookAuth::SharedSecret),
        _ => None,
    };
    match (&t.auth, expected_auth) {
        (Some(_), None) if TRIGGER_KINDS.contains(&t.kind.as_str()) => push(
            "auth",
            format!(
                "does not apply to a {} trigger (it has no inbound endpoint); remove it",
                t.kind
            ),
        ),
        (Some(given), Some(expected)) if given != expected.word() => {
            let lead = if ["none", "off", "false", ""].contains(&given.trim()) {
                format!(
                    "a {} trigger receives calls from the network and xmbridge does not run an unauthenticated hook",
                    t.kind
                )
            } else {
                format!("unknown protection \"{given}\" for a {} trigger", t.kind)
            };
            push(
                "auth",
                format!(
                    "{lead}; its protection is \"{}\" ({}): write auth = \"{}\" or remove the key",
                    expected.word(),
                    expected.describe(),
                    expected.word()
                ),
            );
        }
        _ => {}
    }
    if t.kind != "salesforce-outbound" && t.organization_id.is_some() {
        unused(&[("organization_id", true)], push);
    }
    match t.kind.as_str() {
        "qualtrics-response" | "sync-responses" => {
            unused(
                &[("object", t.object.is_some()), ("table", t.table.is_some())],
                push,
            );
            let sid = need(t.survey_id.clone(), "survey_id", "SV_…", push)?;
            if !sid.starts_with("SV_") && !sid.starts_with("{{") {
                push(
                    "survey_id",
                    format!("\"{sid}\" is not a survey id; survey ids start with SV_"),
                );
            }
            Some(if t.kind == "qualtrics-response" {
                Trigger::QualtricsResponse { survey_id: sid }
            } else {
                Trigger::SyncResponses { survey_id: sid }
            })
        }
        "salesforce-outbound" => {
            unused(
                &[
                    ("survey_id", t.survey_id.is_some()),
                    ("table", t.table.is_some()),
                ],
                push,
            );
            let organization_id = t.organization_id.clone().filter(|o| {
                let ok = is_salesforce_org_id(o) || o.starts_with("{{");
                if !ok {
                    push(
                        "organization_id",
                        format!(
                            "\"{o}\" is not a Salesforce organization id (00D followed by 12 or 15 letters and digits; Setup → Company Information shows it)"
                        ),
                    );
                }
                ok
            });
            Some(Trigger::SalesforceOutbound {
                object: need(t.object.clone(), "object", "Case", push)?,
                organization_id,
            })
        }
        "servicenow" => {
            unused(
                &[
                    ("survey_id", t.survey_id.is_some()),
                    ("object", t.object.is_some()),
                ],
                push,
            );
            Some(Trigger::ServiceNow {
                table: need(t.table.clone(), "table", "incident", push)?,
            })
        }
        other => {
            let hint = closest(other, TRIGGER_KINDS.iter().copied())
                .map(|s| format!("did you mean \"{s}\"? "))
                .unwrap_or_default();
            push(
                "type",
                format!(
                    "unknown trigger type \"{other}\"; {hint}types: {}",
                    TRIGGER_KINDS.join(", ")
                ),
            );
            None
        }
    }
}

/// Parses `src` and checks that every path starts at a root this trigger's events have (or at an
/// earlier step's output).
fn check_expr(
    src: &str,
    roots: &[&str],
    earlier: &[&str],
    know_roots: bool,
) -> Result<Expr, String> {
    let e = Expr::parse(src).map_err(|e| e.to_string())?;
    for path in e.paths() {
        let root = path[0].as_str();
        if root == "steps" {
            match path.get(1) {
                None => return Err("`steps` needs a step name: steps.<step>.<field>".into()),
                Some(s) if !earlier.contains(&s.as_str()) => {
                    let list = if earlier.is_empty() {
                        "there are none before this one".to_string()
                    } else {
                        format!("earlier steps: {}", earlier.join(", "))
                    };
                    return Err(format!(
                        "`steps.{s}` refers to no earlier step ({list}); a step can only read the outputs of steps before it"
                    ));
                }
                Some(_) => {}
            }
        } else if know_roots && !roots.contains(&root) {
            let mut all: Vec<&str> = roots.to_vec();
            all.push("steps");
            let hint = closest(root, all.iter().copied())
                .map(|s| format!("did you mean {s}? "))
                .unwrap_or_default();
            return Err(format!(
                "`{}` is not part of this trigger's events; {hint}paths start with {}",
                path.join("."),
                all.join(", ")
            ));
        }
    }
    Ok(e)
}

fn build_input(
    v: &toml::Value,
    roots: &[&str],
    earlier: &[&str],
    know_roots: bool,
) -> Result<Input, String> {
    Ok(match v {
        toml::Value::String(s) => Input::Expr(check_expr(s, roots, earlier, know_roots)?),
        toml::Value::Integer(i) => Input::Expr(Expr::constant(Value::from(*i))),
        toml::Value::Float(f) => Input::Expr(Expr::constant(
            serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .ok_or("not a finite number")?,
        )),
        toml::Value::Boolean(b) => Input::Expr(Expr::constant(Value::Bool(*b))),
        toml::Value::Datetime(d) => Input::Expr(Expr::constant(Value::String(d.to_string()))),
        toml::Value::Array(a) => Input::Array(
            a.iter()
                .map(|x| build_input(x, roots, earlier, know_roots))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Input::Object(
            t.iter()
                .map(|(k, x)| Ok((k.clone(), build_input(x, roots, earlier, know_roots)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

fn build_step(
    value: toml::Value,
    roots: &[&str],
    earlier: &[&str],
    know_roots: bool,
    registry: &Registry,
    push: &mut dyn FnMut(Option<String>, String),
) -> Option<Step> {
    let raw: RawStep = match value.try_into() {
        Ok(r) => r,
        Err(e) => {
            push(None, serde_message(e));
            return None;
        }
    };
    if !valid_name(&raw.name) {
        push(
            Some("name".into()),
            format!(
                "\"{}\" is not a valid step name; use lowercase letters, digits, - and _ (e.g. \"{}\")",
                raw.name,
                suggest_name(&raw.name)
            ),
        );
    }
    let Some(action) = registry.get(&raw.action) else {
        let names: Vec<&str> = registry.iter().map(|a| a.spec().name).collect();
        let hint = closest(&raw.action, names.iter().copied())
            .map(|s| format!("did you mean \"{s}\"? "))
            .unwrap_or_default();
        push(
            Some("action".into()),
            format!(
                "unknown action \"{}\"; {hint}known actions: {}",
                raw.action,
                if names.is_empty() {
                    "(none registered)".to_string()
                } else {
                    names.join(", ")
                }
            ),
        );
        return None;
    };
    let spec = action.spec();
    let spec_inputs: Vec<&str> = spec.inputs.iter().map(|i| i.name).collect();
    let when = raw.when.as_deref().and_then(|src| {
        check_expr(src, roots, earlier, know_roots)
            .map_err(|m| push(Some("when".into()), m))
            .ok()
    });
    let mut inputs = BTreeMap::new();
    for (name, v) in &raw.inputs {
        let field = Some(format!("input \"{name}\""));
        if !spec_inputs.contains(&name.as_str()) {
            let hint = closest(name, spec_inputs.iter().copied())
                .map(|s| format!("did you mean \"{s}\"? "))
                .unwrap_or_default();
            push(
                field,
                format!(
                    "{} has no such input; {hint}its inputs: {}",
                    spec.name,
                    spec_inputs.join(", ")
                ),
            );
            continue;
        }
        match build_input(v, roots, earlier, know_roots) {
            Ok(i) => {
                inputs.insert(name.clone(), i);
            }
            Err(m) => push(field, m),
        }
    }
    let object_input: Option<&'static str> = if spec_inputs.contains(&"object") {
        Some("object")
    } else if spec_inputs.contains(&"table") {
        Some("table")
    } else {
        None
    };
    let mapping = raw.mapping.and_then(|m| {
        if !spec_inputs.contains(&"fields") {
            push(
                Some("mapping".into()),
                format!(
                    "{} does not take a record mapping; set its inputs instead ({})",
                    spec.name,
                    spec_inputs.join(", ")
                ),
            );
            return None;
        }
        for taken in [object_input.unwrap_or("object"), "fields", "external_id_field", "external_id"] {
            if inputs.contains_key(taken) && (taken == "fields" || taken == object_input.unwrap_or("") || m.external_id_field.is_some()) {
                push(
                    Some(format!("input \"{taken}\"")),
                    "is set by the mapping; remove it from inputs".into(),
                );
            }
        }
        let external_id = match (&m.external_id_field, &m.external_id) {
            (Some(_), Some(src)) => check_expr(src, roots, earlier, know_roots)
                .map_err(|msg| push(Some("mapping.external_id".into()), msg))
                .ok(),
            (Some(_), None) => {
                push(
                    Some("mapping.external_id".into()),
                    "missing; with external_id_field also write external_id = \"<expression of the key value>\" (e.g. \"response.id\")".into(),
                );
                None
            }
            (None, Some(_)) => {
                push(
                    Some("mapping.external_id_field".into()),
                    "missing; with external_id also name the key field, e.g. external_id_field = \"Response_Id__c\"".into(),
                );
                None
            }
            (None, None) => None,
        };
        if WriteKind::of_action(spec.name) == WriteKind::Upsert
            && spec_inputs.contains(&"external_id_field")
            && m.external_id_field.is_none()
        {
            push(
                Some("mapping.external_id_field".into()),
                format!(
                    "{} needs a key; write external_id_field = \"<External ID field>\" and external_id = \"<expression>\"",
                    spec.name
                ),
            );
        }
        let mut fields = BTreeMap::new();
        for (f, v) in &m.fields {
            let expr = match v {
                toml::Value::String(s) => check_expr(s, roots, earlier, know_roots),
                toml::Value::Integer(i) => Ok(Expr::constant(Value::from(*i))),
                toml::Value::Float(x) => serde_json::Number::from_f64(*x)
                    .map(|n| Expr::constant(Value::Number(n)))
                    .ok_or_else(|| "not a finite number".to_string()),
                toml::Value::Boolean(b) => Ok(Expr::constant(Value::Bool(*b))),
                _ => Err("write an expression in a string, e.g. \"response.values.QID1\", or a number or true/false".into()),
            };
            match expr {
                Ok(e) => {
                    fields.insert(f.clone(), e);
                }
                Err(msg) => push(Some(format!("field \"{f}\"")), msg),
            }
        }
        if fields.is_empty() {
            push(
                Some("mapping.fields".into()),
                "no fields mapped; add fields = { Field__c = \"response.values.QID1\", … }".into(),
            );
        }
        Some(Mapping {
            object: m.object,
            external_id_field: m.external_id_field,
            external_id,
            fields,
        })
    });
    let provided_by_mapping = |n: &str| {
        mapping.as_ref().is_some_and(|m| {
            Some(n) == object_input
                || n == "fields"
                || (m.external_id_field.is_some()
                    && (n == "external_id_field" || n == "external_id"))
        })
    };
    let mut required_inputs = Vec::new();
    for input in spec.inputs.iter().filter(|i| i.required) {
        required_inputs.push(input.name.to_string());
        if !inputs.contains_key(input.name) && !provided_by_mapping(input.name) {
            let how = if [
                "object",
                "table",
                "fields",
                "external_id",
                "external_id_field",
            ]
            .contains(&input.name)
            {
                "add it to [workflow.step.mapping]".to_string()
            } else {
                format!(
                    "add {} = \"<expression>\" under [workflow.step.inputs]",
                    input.name
                )
            };
            push(
                Some(format!("input \"{}\"", input.name)),
                format!("is required by {} ({}); {how}", spec.name, input.help),
            );
        }
    }
    Some(Step {
        name: raw.name,
        action: raw.action,
        system: spec.system,
        account: raw.account,
        when,
        inputs,
        mapping,
        object_input,
        required_inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_meaning_not_layout() {
        let reg = xmbridge_actions::Registry::builtin();
        let fp = |text: &str| {
            parse_file("f", text, FileKind::WorkflowFile, &reg).unwrap()[0]
                .fingerprint
                .clone()
        };
        let a = fp(r#"[[workflow]]
name = "w"
owner = "pat"
trigger = { type = "servicenow", table = "incident" }
[[workflow.step]]
name = "c"
action = "upsert-contact"
inputs = { email = "record.email" }
"#);
        // Same content, other key order, other layout, a comment.
        let b = fp(r#"# reordered
[[workflow]]
owner = "pat"
name = "w"
[workflow.trigger]
table = "incident"
type = "servicenow"
[[workflow.step]]
action = "upsert-contact"
name = "c"
[workflow.step.inputs]
email = "record.email"
"#);
        assert_eq!(a, b);
        assert!(a.starts_with(FINGERPRINT_SCHEME), "{a}");
        let c = fp(r#"[[workflow]]
name = "w"
owner = "pat"
trigger = { type = "servicenow", table = "incident" }
[[workflow.step]]
name = "c"
action = "upsert-contact"
inputs = { email = "record.mail" }
"#);
        assert_ne!(a, c);
    }
    use serde_json::json;

    const GOOD: &str = r#"
[[workflow]]
name = "detractors"
owner = "alice"
condition = "response.values.QID1 <= 6"

[workflow.trigger]
type = "qualtrics-response"
survey_id = "SV_abc"

[[workflow.step]]
name = "upsert"
action = "salesforce.upsert"
account = "sf-prod"
[workflow.step.mapping]
object = "Survey_Response__c"
external_id_field = "Response_Id__c"
external_id = "response.id"
fields = { NPS__c = "response.values.QID1", Comment__c = "response.values.QID2_TEXT", Tier__c = "embedded.tier", Source__c = "'Qualtrics'", Weight__c = 2 }

[[workflow.step]]
name = "incident"
action = "servicenow.create-incident"
when = "response.values.QID1 <= 3"
[workflow.step.inputs]
short_description = "'Detractor (NPS {{ response.values.QID1 }}): {{ contact.email }}'"
urgency = "'1'"
correlation_id = "response.id"
description = "concat('Salesforce record ', steps.upsert.id)"
category = "lower(embedded.tier)"
impact = "response.values.QID99"
"#;

    fn parse(text: &str) -> Result<Vec<Workflow>, DefinitionError> {
        parse_file(
            "workflows/nps.toml",
            text,
            FileKind::WorkflowFile,
            &xmbridge_actions::Registry::builtin(),
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn event(nps: &str) -> EventContext {
        EventContext::new(json!({
            "response": {"id": "R_1", "surveyId": "SV_abc", "values": {"QID1": nps, "QID2_TEXT": "slow"}},
            "embedded": {"tier": "gold"},
            "contact": {"email": "pat@example.com"},
            "survey": {"id": "SV_abc", "name": "NPS"}
        }))
    }

    #[test]
    fn a_good_file_renders_steps() {
        let w = parse(GOOD).unwrap().remove(0);
        assert_eq!(w.max_attempts, 8);
        assert_eq!(
            w.trigger,
            Trigger::QualtricsResponse {
                survey_id: "SV_abc".into()
            }
        );
        let mut ctx = event("3");
        assert!(w.matches(&ctx).unwrap());
        let s = w.render_step(0, &ctx).unwrap().unwrap();
        assert_eq!(s.action, "salesforce.upsert");
        assert_eq!(s.account.as_deref(), Some("sf-prod"));
        assert_eq!(
            Value::Object(s.inputs),
            json!({"object": "Survey_Response__c", "external_id_field": "Response_Id__c",
                   "external_id": "R_1",
                   "fields": {"Comment__c": "slow", "NPS__c": "3", "Source__c": "Qualtrics",
                              "Tier__c": "gold", "Weight__c": 2}})
        );
        ctx.steps
            .insert("upsert".into(), json!({"id": "a0B1", "created": true}));
        let s = w.render_step(1, &ctx).unwrap().unwrap();
        assert_eq!(
            Value::Object(s.inputs),
            json!({"short_description": "Detractor (NPS 3): pat@example.com", "urgency": "1",
                   "correlation_id": "R_1", "description": "Salesforce record a0B1",
                   "category": "gold"})
        );
        let ctx = event("5");
        assert!(w.render_step(1, &ctx).unwrap().is_none(), "when is false");
        assert!(!w.matches(&event("9")).unwrap());
        assert!(
            !w.matches(&event("")).unwrap(),
            "an unanswered NPS is not a detractor"
        );
    }

    #[test]
    fn a_missing_key_value_is_a_plan_error() {
        let w = parse(GOOD).unwrap().remove(0);
        let ctx = EventContext::new(json!({"response": {"values": {"QID1": 2}}}));
        let err = w.render_step(0, &ctx).unwrap_err().to_string();
        assert_eq!(
            err,
            "workflow \"detractors\", step \"upsert\": input \"external_id\" is required but `response.id` is empty for this event"
        );
    }

    #[test]
    fn errors_name_file_workflow_step_and_field() {
        let bad = GOOD
            .replace("lower(embedded.tier)", "lenght(embedded.tier)")
            .replace("urgency = ", "urgncy = ")
            .replace("steps.upsert.id", "steps.incident.id")
            .replace(
                "type = \"qualtrics-response\"",
                "type = \"qualtrics-responses\"",
            );
        assert_eq!(
            errors(&bad),
            vec![
                "workflows/nps.toml: workflow \"detractors\", trigger.type: unknown trigger type \"qualtrics-responses\"; did you mean \"qualtrics-response\"? types: qualtrics-response, sync-responses, salesforce-outbound, servicenow",
                "workflows/nps.toml: workflow \"detractors\", step \"incident\", input \"category\": unknown function lenght(); did you mean length()? (column 1)",
                "workflows/nps.toml: workflow \"detractors\", step \"incident\", input \"description\": `steps.incident` refers to no earlier step (earlier steps: upsert); a step can only read the outputs of steps before it",
                "workflows/nps.toml: workflow \"detractors\", step \"incident\", input \"urgncy\": servicenow.create-incident has no such input; did you mean \"urgency\"? its inputs: short_description, description, caller, urgency, impact, category, correlation_id",
            ]
        );
    }

    #[test]
    fn structural_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n[[workflow.step]]\nname = \"s\"\naction = \"salesforce.upsrt\"\n",
                "workflows/nps.toml: workflow \"x\", step \"s\", action: unknown action \"salesforce.upsrt\"; did you mean \"salesforce.upsert\"? known actions: ",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n[[workflow.step]]\nname = \"s\"\naction = \"salesforce.upsert\"\ninputs = { object = \"'A'\" }\n",
                "workflows/nps.toml: workflow \"x\", step \"s\", input \"external_id_field\": is required by salesforce.upsert (the external id field to match on, e.g. Response_Id__c); add it to [workflow.step.mapping]",
            ),
            (
                "[[workflow]]\nname = \"Bad Name\"\nowner = \"a\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n[[workflow.step]]\nname = \"s\"\naction = \"servicenow.get-property\"\ninputs = { name = \"record.short_description\" }\n",
                "workflows/nps.toml: workflow \"Bad Name\", name: \"Bad Name\" is not a valid name; use lowercase letters, digits, - and _ (e.g. \"bad-name\")",
            ),
            (
                "[[workflow]]\nname = \"x\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n[[workflow.step]]\nname = \"s\"\naction = \"servicenow.get-property\"\ninputs = { name = \"response.id\" }\n",
                "workflows/nps.toml: workflow \"x\", owner: missing; write owner = \"<local user name>\"",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n[[workflow.step]]\nname = \"s\"\naction = \"servicenow.get-property\"\ninputs = { name = \"respons.id\" }\n",
                "workflows/nps.toml: workflow \"x\", step \"s\", input \"name\": `respons.id` is not part of this trigger's events; paths start with record, table, steps",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"qualtrics-response\", survey_id = \"SV_1\" }\n[[workflow.step]]\nname = \"s\"\naction = \"servicenow.get-property\"\ninputs = { name = \"respons.id\" }\n",
                "input \"name\": `respons.id` is not part of this trigger's events; did you mean response? paths start with response, embedded, contact, survey, steps",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ncolour = \"red\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n",
                "workflows/nps.toml: workflow \"x\": unknown field `colour`, expected one of",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"salesforce-outbound\" }\n",
                "workflows/nps.toml: workflow \"x\", trigger.object: missing; a salesforce-outbound trigger needs object = \"Case\"",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"servicenow\", table = \"incident\" }\n",
                "workflows/nps.toml: workflow \"x\": has no steps; add at least one [[workflow.step]]",
            ),
            (
                "[workflow]\nname = \"x\"\n",
                "workflows/nps.toml: `workflow` must be an array of tables: write [[workflow]], not [workflow]",
            ),
            (
                "[[workflow]]\nname = \"x\nowner = 1\n",
                "workflows/nps.toml: line 2, column",
            ),
            (
                "[[workflow]]\nname = \"x\"\nowner = \"a\"\ntrigger = { type = \"qualtrics-response\", survey_id = \"SV_1\" }\ncondition = \"response.values.QID1 = 6\"\n[[workflow.step]]\nname = \"s\"\naction = \"servicenow.get-property\"\ninputs = { name = \"'x'\" }\n",
                "workflows/nps.toml: workflow \"x\", condition: `=` is not an operator; write `==` to compare (column 22)",
            ),
        ];
        for (text, want) in cases {
            let got = errors(text).join("\n");
            assert!(got.contains(want), "want {want:?}\n got {got:?}");
        }
    }

    #[test]
    fn other_sections_are_allowed_only_in_xmbridge_toml() {
        let text = format!("[sync]\nx = 1\n{GOOD}");
        let reg = xmbridge_actions::Registry::builtin();
        assert!(parse_file("xmbridge.toml", &text, FileKind::MainConfig, &reg).is_ok());
        let err = parse_file("w.toml", &text, FileKind::WorkflowFile, &reg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "w.toml: unknown top-level key `sync`; a workflow file holds only [[workflow]] tables"
        );
    }

    #[test]
    fn duplicate_names_in_one_file() {
        let text = format!("{GOOD}\n{GOOD}");
        let got = errors(&text).join("\n");
        assert!(
            got.contains(
                "workflow \"detractors\": a workflow of this name is already defined in this file"
            ),
            "{got}"
        );
    }
}
