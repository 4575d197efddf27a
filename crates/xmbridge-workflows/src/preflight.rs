//! Dry run and preflight: what a workflow would send for one event, and whether the linked
//! accounts may do it.
//!
//! It owns the [`Report`]: per step the rendered action and exact JSON payload (or why the step is
//! skipped), the input check against the action's spec, the mapping's type checks and the
//! permission check from the target's describe as the linked user sees it, worded like the
//! Salesforce extension's profile requirements ("the linked Salesforce user needs Create on X",
//! "field Edit access on X.F"). It must not send anything: describes are the only calls, made
//! through the [`Describers`] the caller supplies.

use crate::definition::{EventContext, Step, Workflow};
use crate::mapping::{
    AccessNote, Mapping, MappingProblem, ObjectDescribe, SchemaError, TargetSchema, WriteKind,
    check_mapping,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use xmbridge_actions::{Inputs, Registry, System, check_inputs};

/// Finds the schema (describe source) for a step's target, as seen by the step's account.
pub trait Describers: Sync {
    /// The schema for `step`'s target; `None` when its system cannot be described (the checks
    /// that need a describe are then noted as not done).
    fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema>;
    /// Why `step` would fail before any describe: its account cannot be used (none linked, not
    /// granted, its token expired). Reported as a problem.
    fn account_problem(&self, _step: &Step) -> Option<String> {
        None
    }
}

/// The outcome of a preflight, as `workflow test` reports it and exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every step was checked and nothing is wrong.
    Passed,
    /// Something is wrong (at least one problem).
    Problems,
    /// Nothing wrong was found, but some step could not be checked: not a pass.
    NotChecked,
}

/// No describes at all: only rendering and input checks.
pub struct NoDescribers;

impl Describers for NoDescribers {
    fn schema_for(&self, _step: &Step) -> Option<&dyn TargetSchema> {
        None
    }
}

/// One kind of problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// The linked user lacks an object or field permission.
    Permission,
    /// A mapped value does not fit the field (type, picklist, length, unknown field, key).
    Type,
    /// The rendered inputs do not satisfy the action's spec, or a required value is empty.
    Input,
}

/// One problem found in a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Which kind of check found it.
    pub kind: CheckKind,
    /// The input or target field it concerns; `None` for the step as a whole.
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

/// What happens to a step for this event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Would run with exactly these inputs.
    Send {
        /// The action's inputs, rendered for the event.
        inputs: Inputs,
    },
    /// Would not run.
    Skipped {
        /// Why (the workflow's condition or the step's `when` is false).
        reason: String,
    },
    /// Could not be rendered for this event.
    Error {
        /// The rendering error.
        message: String,
    },
}

/// The dry run of one step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// Registry name of the step's action.
    pub action: String,
    /// The action's system, for people (`Salesforce`, `ServiceNow`, `Qualtrics`).
    pub system: String,
    /// The account the step names; `None` = the owner's default.
    pub account: Option<String>,
    /// Whether the step would run and with what.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Every problem found; the step would fail or be refused if any.
    pub problems: Vec<Check>,
    /// What was not checked and why (no describe for this system, …).
    pub notes: Vec<String>,
    /// Whether a check this step needs could not be made (then the preflight is not a pass).
    pub unchecked: bool,
}

/// The dry run and preflight of one workflow for one event (`workflow test`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's owner, whose linked accounts were checked.
    pub owner: String,
    /// The trigger, described for people.
    pub trigger: String,
    /// The condition's text and its value for this event.
    pub condition: Option<(String, bool)>,
    /// One report per step, in order.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// The number of problems over all steps.
    pub fn problem_count(&self) -> usize {
        self.steps.iter().map(|s| s.problems.len()).sum()
    }

    /// True when every step was checked and none has a problem (`workflow test` then exits 0).
    pub fn passed(&self) -> bool {
        self.verdict() == Verdict::Passed
    }

    /// Problems first; then whether any step could not be checked.
    pub fn verdict(&self) -> Verdict {
        if self.problem_count() > 0 {
            Verdict::Problems
        } else if self.steps.iter().any(|s| s.unchecked) {
            Verdict::NotChecked
        } else {
            Verdict::Passed
        }
    }

    /// The steps that could not be checked.
    pub fn unchecked_count(&self) -> usize {
        self.steps.iter().filter(|s| s.unchecked).count()
    }

    /// The human-readable report `workflow test` prints.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "workflow {} (owner {})", self.workflow, self.owner);
        let _ = writeln!(out, "trigger: {}", self.trigger);
        if let Some((c, v)) = &self.condition {
            let _ = writeln!(out, "condition: {c} → {v}");
        }
        for (i, s) in self.steps.iter().enumerate() {
            let via = s
                .account
                .as_deref()
                .map(|a| format!(" with account {a}"))
                .unwrap_or_else(|| " with the owner's default account".into());
            let _ = writeln!(out, "\nstep {} \"{}\": {}{via}", i + 1, s.name, s.action);
            match &s.outcome {
                Outcome::Send { inputs } => {
                    let _ = writeln!(out, "  would send:");
                    let json = serde_json::to_string_pretty(inputs).unwrap_or_default();
                    for line in json.lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
                Outcome::Skipped { reason } => {
                    let _ = writeln!(out, "  skipped: {reason}");
                }
                Outcome::Error { message } => {
                    let _ = writeln!(out, "  cannot render: {message}");
                }
            }
            for n in &s.notes {
                let _ = writeln!(out, "  note: {n}");
            }
            if s.problems.is_empty() && s.unchecked {
                let _ = writeln!(
                    out,
                    "  checks: nothing wrong found, but not all could be checked (see the note)"
                );
            } else if s.problems.is_empty() {
                let _ = writeln!(out, "  checks: ok");
            } else {
                for p in &s.problems {
                    let kind = match p.kind {
                        CheckKind::Permission => "missing permission",
                        CheckKind::Type => "mapping",
                        CheckKind::Input => "input",
                    };
                    let _ = writeln!(out, "  ✗ {kind}: {}", p.message);
                }
            }
        }
        let n = self.problem_count();
        let u = self.unchecked_count();
        let _ = writeln!(
            out,
            "\n{}",
            match self.verdict() {
                Verdict::Passed => "preflight passed".to_string(),
                Verdict::Problems => format!(
                    "preflight found {n} problem{}",
                    if n == 1 { "" } else { "s" }
                ),
                Verdict::NotChecked => format!(
                    "preflight not checked: {u} step{} could not be checked (see above); nothing wrong was found in the rest",
                    if u == 1 { "" } else { "s" }
                ),
            }
        );
        out
    }
}

/// Placeholder outputs for every `steps.<name>.<path>` the workflow reads, so later steps render
/// in a dry run: each leaf is the text `<output of step NAME: PATH>`.
fn placeholder_steps(w: &Workflow) -> Map<String, Value> {
    let mut steps = Map::new();
    for (_, e) in w.expressions() {
        for path in e.paths() {
            if path.len() < 2 || path[0] != "steps" {
                continue;
            }
            let step = path[1].clone();
            let entry = steps
                .entry(step.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let mut cur = entry;
            let rest = &path[2..];
            if rest.is_empty() {
                continue;
            }
            for (i, seg) in rest.iter().enumerate() {
                let Value::Object(m) = cur else { break };
                let leaf = i == rest.len() - 1;
                cur = m.entry(seg.clone()).or_insert_with(|| {
                    if leaf {
                        Value::String(format!("<output of step {step}: {}>", rest.join(".")))
                    } else {
                        Value::Object(Map::new())
                    }
                });
            }
        }
    }
    steps
}

/// The object and field access a write of `fields` needs, against the describe `d`; with a
/// mapping, its types and required fields too.
#[allow(clippy::too_many_arguments)]
fn check_access(
    system: System,
    d: &ObjectDescribe,
    kind: WriteKind,
    fields: &[String],
    mapping: Option<&Mapping>,
    sent: Option<&Inputs>,
    problems: &mut Vec<Check>,
    notes: &mut Vec<String>,
    unchecked: &mut bool,
) {
    let who = format!("the linked {} user", system.title());
    if let Some(check) = record_type_check(d, sent, &who) {
        problems.push(check);
    }
    let how = |note: &AccessNote, default: &str| {
        note.how_to_get
            .as_deref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_else(|| default.to_string())
    };
    for (needed, note) in [
        (kind.creates(), &d.create_note),
        (kind.updates(), &d.edit_note),
    ] {
        if let (true, Some(why)) = (needed, &note.unknown) {
            *unchecked = true;
            notes.push(format!("not checked: {why}"));
        }
    }
    if kind.creates() && !d.createable && d.create_note.unknown.is_none() {
        problems.push(Check {
            kind: CheckKind::Permission,
            field: None,
            message: format!(
                "{who} needs Create on {}{}",
                d.name,
                how(&d.create_note, "")
            ),
        });
    }
    if kind.updates() && !d.updateable && d.edit_note.unknown.is_none() {
        problems.push(Check {
            kind: CheckKind::Permission,
            field: None,
            message: format!(
                "{who} needs Edit on {}{}",
                d.name,
                how(
                    &d.edit_note,
                    " (the extension asks for Modify All on objects updated from Qualtrics)"
                )
            ),
        });
    }
    for name in fields {
        let Some(f) = d.field(name) else { continue };
        if (kind.creates() && !f.createable) || (kind.updates() && !f.updateable) {
            problems.push(Check {
                kind: CheckKind::Permission,
                field: Some(f.name.clone()),
                message: format!("{who} needs field Edit access on {}.{}", d.name, f.name),
            });
        }
    }
    let unknown_field = |message: String| {
        if system == System::ServiceNow {
            // Its dictionary lists every field whatever the ACLs say.
            format!(
                "{message} (ServiceNow ignores unknown fields on write: the value would be lost)"
            )
        } else {
            format!("{message} (or {who} has no field access to it)")
        }
    };
    match mapping {
        Some(mapping) => {
            for MappingProblem { field, message } in check_mapping(mapping, kind, d) {
                let message = if message.contains(" has no field ") {
                    unknown_field(message)
                } else {
                    message
                };
                problems.push(Check {
                    kind: CheckKind::Type,
                    field,
                    message,
                });
            }
        }
        None => {
            for name in fields.iter().filter(|f| d.field(f).is_none()) {
                problems.push(Check {
                    kind: CheckKind::Type,
                    field: Some(name.clone()),
                    message: unknown_field(d.no_such_field(name)),
                });
            }
        }
    }
}

/// The record type a write sets for this event (`RecordTypeId` among the fields sent), checked
/// against the object's record types as the linked user sees them. A write that sets none gets
/// the user's default, which is always theirs to use.
fn record_type_check(d: &ObjectDescribe, sent: Option<&Inputs>, who: &str) -> Option<Check> {
    let fields = sent?.get("fields")?.as_object()?;
    let (field, value) = fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("RecordTypeId"))?;
    let id = value.as_str().filter(|v| v.starts_with("012"))?;
    let named = |r: &crate::mapping::RecordType| format!("{} ({})", r.developer_name, r.id);
    let usable: Vec<String> = d
        .record_types
        .iter()
        .filter(|r| r.active && r.available && !r.master)
        .map(named)
        .collect();
    let usable = if usable.is_empty() {
        "none but the master".to_string()
    } else {
        usable.join(", ")
    };
    let (kind, message) = match d.record_types.iter().find(|r| r.is(id)) {
        None => (
            CheckKind::Type,
            format!(
                "{} has no record type {id} (its record types the user may use: {usable})",
                d.name
            ),
        ),
        Some(r) if !r.active => (
            CheckKind::Type,
            format!(
                "record type {} of {} is inactive; activate it or use one of: {usable}",
                named(r),
                d.name
            ),
        ),
        Some(r) if !r.available => (
            CheckKind::Permission,
            format!(
                "{who} needs access to record type {} of {}: add it to the user's profile (or a permission set); the user may use: {usable}",
                named(r),
                d.name
            ),
        ),
        Some(_) => return None,
    };
    Some(Check {
        kind,
        field: Some(field.clone()),
        message,
    })
}

/// Renders every step of `workflow` for the event in `ctx` (outputs of earlier steps are
/// placeholders) and checks inputs, mapping types and the linked users' permissions.
pub async fn preflight(
    workflow: &Workflow,
    ctx: &EventContext,
    registry: &Registry,
    describers: &dyn Describers,
) -> Report {
    let mut dry = ctx.clone();
    for (k, v) in placeholder_steps(workflow) {
        dry.steps.entry(k).or_insert(v);
    }
    let condition_value = workflow.matches(&dry).unwrap_or(false);
    let mut steps = Vec::new();
    for (i, step) in workflow.steps.iter().enumerate() {
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let outcome = if !condition_value {
            Outcome::Skipped {
                reason: "the workflow's condition is false for this event".into(),
            }
        } else {
            match workflow.render_step(i, &dry) {
                Ok(None) => Outcome::Skipped {
                    reason: format!(
                        "when `{}` is false for this event",
                        step.when.as_ref().map(|w| w.source()).unwrap_or("")
                    ),
                },
                Ok(Some(r)) => {
                    if let Some(action) = registry.get(&step.action)
                        && let Err(e) = check_inputs(action.spec(), &r.inputs)
                    {
                        problems.push(Check {
                            kind: CheckKind::Input,
                            field: None,
                            message: e.to_string(),
                        });
                    }
                    Outcome::Send { inputs: r.inputs }
                }
                Err(e) => {
                    problems.push(Check {
                        kind: CheckKind::Input,
                        field: None,
                        message: e.to_string(),
                    });
                    Outcome::Error {
                        message: e.to_string(),
                    }
                }
            }
        };
        let mut unchecked = false;
        let account_problem = describers.account_problem(step);
        if let (Some(message), Outcome::Skipped { .. }) = (&account_problem, &outcome) {
            // Not this event's problem, but the next event that runs the step meets it.
            notes.push(format!("when this step runs: {message}"));
        } else if let Some(message) = &account_problem {
            problems.push(Check {
                kind: CheckKind::Permission,
                field: None,
                message: message.clone(),
            });
        }
        // What the step writes: its mapping, or for a ServiceNow write action what its rendered
        // inputs name (table and fields).
        let target: Option<(String, Vec<String>, WriteKind, Option<&Mapping>)> =
            match (&step.mapping, &outcome) {
                (Some(m), _) => Some((
                    m.object.clone(),
                    m.fields.keys().cloned().collect(),
                    WriteKind::of_action(&step.action),
                    Some(m),
                )),
                (None, Outcome::Send { inputs }) if step.system == System::ServiceNow => {
                    xmbridge_actions::servicenow::write_target(&step.action, inputs).map(|t| {
                        let kind = if t.creates {
                            WriteKind::Create
                        } else {
                            WriteKind::Update
                        };
                        (t.table, t.fields, kind, None)
                    })
                }
                _ => None,
            };
        match (&target, &account_problem) {
            (_, Some(_)) => {}
            (Some((object, fields, kind, mapping)), None) => {
                let kind = *kind;
                match describers.schema_for(step) {
                    None => {
                        unchecked = true;
                        notes.push(format!(
                            "not checked: {} object {object} and its fields: no describe available for this account",
                            step.system.title(),
                        ))
                    }
                    Some(schema) => match schema.describe(object).await {
                        Err(SchemaError::UnknownObject { object }) => problems.push(Check {
                            kind: CheckKind::Permission,
                            field: None,
                            message: format!(
                                "the linked {} user cannot see {object}: it does not exist or the user has no Read access to it",
                                step.system.title()
                            ),
                        }),
                        Err(e @ (SchemaError::NoApiAccess { .. } | SchemaError::Refused { .. })) => {
                            problems.push(Check {
                                kind: CheckKind::Permission,
                                field: None,
                                message: e.to_string(),
                            })
                        }
                        Err(e) => {
                            unchecked = true;
                            notes.push(format!("not checked: {e}"))
                        }
                        Ok(d) => check_access(
                            step.system,
                            &d,
                            kind,
                            fields,
                            *mapping,
                            match &outcome {
                                Outcome::Send { inputs } => Some(inputs),
                                _ => None,
                            },
                            &mut problems,
                            &mut notes,
                            &mut unchecked,
                        ),
                    },
                }
            }
            (None, None) => {
                if step.system != System::Qualtrics
                    && registry.get(&step.action).is_some_and(|a| a.spec().writes)
                {
                    unchecked = true;
                    notes.push(format!(
                        "not checked: {} permissions for this step (it has no record mapping to describe)",
                        step.system.title()
                    ));
                }
            }
        }
        // A step that would not run for this event needs no check for it.
        let unchecked = unchecked && matches!(outcome, Outcome::Send { .. });
        steps.push(StepReport {
            name: step.name.clone(),
            action: step.action.clone(),
            system: step.system.title().to_string(),
            account: step.account.clone(),
            outcome,
            problems,
            notes,
            unchecked,
        });
    }
    Report {
        workflow: workflow.name.clone(),
        owner: workflow.owner.clone(),
        trigger: workflow.trigger.to_string(),
        condition: workflow
            .condition
            .as_ref()
            .map(|c| (c.source().to_string(), condition_value)),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{FileKind, parse_file};
    use crate::mapping::{ObjectDescribe, StaticSchema};
    use serde_json::json;

    struct One(StaticSchema);
    impl Describers for One {
        fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema> {
            (step.system == System::Salesforce).then_some(&self.0 as &dyn TargetSchema)
        }
    }

    fn workflow() -> Workflow {
        let t = crate::catalog::template("response-to-salesforce").unwrap();
        let mut p = std::collections::BTreeMap::new();
        for (k, v) in [
            ("owner", "alice"),
            ("survey_id", "SV_1"),
            ("salesforce_account", "sf-prod"),
            ("servicenow_account", "sn-prod"),
        ] {
            p.insert(k.to_string(), v.to_string());
        }
        let text = t.instantiate(&p).unwrap();
        parse_file(
            "t",
            &text,
            FileKind::WorkflowFile,
            &xmbridge_actions::Registry::builtin(),
        )
        .unwrap()
        .remove(0)
    }

    /// An event as the runtime builds it (`xmbridge_runtime::workflow::enriched_event`).
    fn ctx(nps: Value) -> EventContext {
        EventContext::new(json!({
            "response": {"id": "R_9", "surveyId": "SV_1",
                         "values": {"QID1": nps, "endDate": "2026-11-30T08:00:00Z", "tier": "gold"},
                         "labels": {}},
            "embedded": {"tier": "gold"},
            "contact": {"email": "pat@example.com"},
            "survey": {"id": "SV_1", "name": "NPS survey"},
        }))
    }

    fn describe(mut edit: impl FnMut(&mut Value)) -> StaticSchema {
        let mut d = json!({
            "name": "Survey_Response__c", "createable": true, "updateable": true,
            "fields": [
                {"name": "Response_Id__c", "type": "string", "length": 40, "createable": true, "updateable": true, "nillable": true, "externalId": true},
                {"name": "Survey_Id__c", "type": "string", "length": 40, "createable": true, "updateable": true, "nillable": true},
                {"name": "NPS__c", "type": "double", "createable": true, "updateable": true, "nillable": true},
                {"name": "Completed_At__c", "type": "datetime", "createable": true, "updateable": true, "nillable": true}
            ]
        });
        edit(&mut d);
        StaticSchema::new([ObjectDescribe::from_salesforce_json(&d).unwrap()])
    }

    #[tokio::test]
    async fn detractor_dry_run_shows_both_payloads_and_is_no_pass_while_a_step_is_unchecked() {
        let w = workflow();
        let r = preflight(
            &w,
            &ctx(json!("3")),
            &xmbridge_actions::Registry::builtin(),
            &One(describe(|_| {})),
        )
        .await;
        // The Salesforce step is checked against its describe and fine; the ServiceNow step's
        // permissions cannot be checked, so the verdict is "not checked", never "passed".
        assert_eq!(r.problem_count(), 0, "{}", r.to_text());
        assert!(!r.steps[0].unchecked, "{}", r.to_text());
        assert!(r.steps[1].unchecked, "{}", r.to_text());
        assert_eq!(r.verdict(), Verdict::NotChecked);
        assert!(!r.passed());
        assert!(
            r.to_text()
                .contains("preflight not checked: 1 step could not be checked"),
            "{}",
            r.to_text()
        );
        assert_eq!(
            r.steps[0].outcome,
            Outcome::Send {
                inputs:
                    json!({"object": "Survey_Response__c", "external_id_field": "Response_Id__c",
                    "external_id": "R_9", "fields": {"Completed_At__c": "2026-11-30T08:00:00Z",
                    "NPS__c": 3, "Survey_Id__c": "SV_1"}})
                    .as_object()
                    .unwrap()
                    .clone()
            }
        );
        let Outcome::Send { inputs } = &r.steps[1].outcome else {
            panic!("{}", r.to_text())
        };
        assert_eq!(
            inputs["short_description"],
            json!("Detractor feedback (NPS 3) on NPS survey")
        );
        assert_eq!(
            inputs["description"],
            json!(
                "Response R_9 from pat@example.com; Salesforce record <output of step upsert: id>"
            )
        );
        assert_eq!(
            r.steps[1].notes,
            vec![
                "not checked: ServiceNow object incident and its fields: no describe available for this account"
            ]
        );
    }

    #[tokio::test]
    async fn a_salesforce_triggered_survey_renders_from_an_outbound_message() {
        let t = crate::catalog::template("salesforce-triggered-survey").unwrap();
        let mut p = std::collections::BTreeMap::new();
        for k in [
            "owner",
            "survey_id",
            "library_id",
            "message_id",
            "mailing_list_id",
            "from_email",
            "from_name",
        ] {
            p.insert(k.to_string(), format!("{k}-v"));
        }
        let text = t.instantiate(&p).unwrap();
        let w = parse_file(
            "t",
            &text,
            FileKind::WorkflowFile,
            &xmbridge_actions::Registry::builtin(),
        )
        .unwrap()
        .remove(0);
        let ctx = EventContext::new(json!({
            "record": {"type": "Case", "Id": "500xx1", "ContactEmail": "pat@example.com", "ContactId": "003xx1"},
            "notification": {"id": "04l1", "organizationId": "00D1", "actionId": "04k1"}
        }));
        let r = preflight(
            &w,
            &ctx,
            &xmbridge_actions::Registry::builtin(),
            &NoDescribers,
        )
        .await;
        assert!(r.passed(), "{}", r.to_text());
        let Outcome::Send { inputs } = &r.steps[2].outcome else {
            panic!("{}", r.to_text())
        };
        assert_eq!(
            inputs["contact_id"],
            json!("<output of step member: contactId>")
        );
        assert_eq!(inputs["mailing_list_id"], json!("mailing_list_id-v"));
        assert_eq!(inputs["embeddedData"], json!({"salesforce_id": "500xx1"}));
        let no_email = EventContext::new(json!({"record": {"type": "Case", "Id": "500xx2"}}));
        let r = preflight(
            &w,
            &no_email,
            &xmbridge_actions::Registry::builtin(),
            &NoDescribers,
        )
        .await;
        assert!(
            r.steps
                .iter()
                .all(|s| matches!(s.outcome, Outcome::Skipped { .. }))
        );
    }

    #[tokio::test]
    async fn a_promoter_skips_the_incident() {
        let w = workflow();
        let r = preflight(
            &w,
            &ctx(json!(10)),
            &xmbridge_actions::Registry::builtin(),
            &One(describe(|_| {})),
        )
        .await;
        assert!(matches!(r.steps[0].outcome, Outcome::Send { .. }));
        assert_eq!(
            r.steps[1].outcome,
            Outcome::Skipped {
                reason: "when `number(response.values.QID1) <= 6` is false for this event".into()
            }
        );
    }

    #[tokio::test]
    async fn missing_permissions_are_named_in_the_extensions_words() {
        let w = workflow();
        let schema = describe(|d| {
            d["createable"] = json!(false);
            d["fields"][2]["updateable"] = json!(false);
            d["fields"].as_array_mut().unwrap().remove(3);
        });
        let r = preflight(
            &w,
            &ctx(json!("3")),
            &xmbridge_actions::Registry::builtin(),
            &One(schema),
        )
        .await;
        let msgs: Vec<&str> = r.steps[0]
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .collect();
        assert_eq!(
            msgs,
            vec![
                "the linked Salesforce user needs Create on Survey_Response__c",
                "the linked Salesforce user needs field Edit access on Survey_Response__c.NPS__c",
                "Survey_Response__c has no field Completed_At__c (or the linked Salesforce user has no field access to it)",
            ]
        );
        assert!(
            r.to_text().contains("preflight found 3 problems"),
            "{}",
            r.to_text()
        );
        let none = StaticSchema::new([]);
        let r = preflight(
            &w,
            &ctx(json!("3")),
            &xmbridge_actions::Registry::builtin(),
            &One(none),
        )
        .await;
        assert!(
            r.steps[0].problems[0]
                .message
                .starts_with("the linked Salesforce user cannot see Survey_Response__c")
        );
    }
}
