//! Record mappings (`object`, `external_id_field` + `external_id`, `fields = { Field = "expr" }`)
//! and their checks against the target's describe: unknown fields, type conflicts, unusable
//! external ids, required-on-create fields, picklist values and lengths.
//!
//! It owns the [`TargetSchema`] trait (how a target system describes an object; Salesforce's
//! describe shape is the model) and the pure checks over an [`ObjectDescribe`]. It must not call
//! any system itself: implementations of the trait live next to their clients (the CLI builds
//! them), and permission checks (create/edit access) are the preflight's.

use crate::expr::{Expr, StaticType, close_matches};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;

/// How a step writes a record, derived from its action's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// Creates a record (`create…`).
    Create,
    /// Updates an existing record (`…update…`).
    Update,
    /// Creates or updates by external id (`…upsert…`).
    Upsert,
    /// Writes no record (a query, a look-up …).
    Other,
}

impl WriteKind {
    /// The kind of the action named `action`, judged by its last dot-separated word.
    pub(crate) fn of_action(action: &str) -> WriteKind {
        let verb = action.rsplit('.').next().unwrap_or(action);
        if verb.contains("upsert") {
            WriteKind::Upsert
        } else if verb.contains("update") {
            WriteKind::Update
        } else if verb.starts_with("create") {
            WriteKind::Create
        } else {
            WriteKind::Other
        }
    }
    /// May create a record (so create access and required fields matter).
    pub(crate) fn creates(self) -> bool {
        matches!(self, WriteKind::Create | WriteKind::Upsert)
    }
    /// May update a record (so edit access matters).
    pub(crate) fn updates(self) -> bool {
        matches!(self, WriteKind::Update | WriteKind::Upsert)
    }
}

/// A step's mapping onto one target object.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// The target object or table (`Contact`, `incident` …).
    pub object: String,
    /// The key field of an upsert (`Email`, `Qualtrics_Id__c` …); `None` when the mapping names
    /// none (an upsert action requires one).
    pub external_id_field: Option<String>,
    /// The expression giving the key's value for each event; given exactly when the key field is.
    pub external_id: Option<Expr>,
    /// Target field → expression, in file order.
    pub fields: BTreeMap<String, Expr>,
}

/// One field as the target describes it (Salesforce `describe` field names in comments).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldDescribe {
    /// `name`: the API name (`Email`, `NPS__c`); matched without regard to case.
    pub name: String,
    /// `type`: `string`, `double`, `boolean`, `date`, `picklist`, `reference` …
    pub type_: String,
    /// `createable`: the linked user may set it on create.
    pub createable: bool,
    /// `updateable`: the linked user may set it on update.
    pub updateable: bool,
    /// `nillable`: may be empty (a non-nillable field without a default is required on create).
    pub nillable: bool,
    /// `defaultedOnCreate`
    pub defaulted_on_create: bool,
    /// `externalId` or `idLookup`: usable as an upsert key.
    pub external_id: bool,
    /// Active picklist values (empty for other types).
    pub picklist_values: Vec<String>,
    /// Maximum length of text fields (0 or absent = no limit known).
    pub length: Option<u32>,
}

/// An object as the target describes it to the linked user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectDescribe {
    /// `name`: the object's API name (`Contact`, `Survey_Response__c`).
    pub name: String,
    /// `createable`: the linked user may create records of it.
    pub createable: bool,
    /// `updateable`: the linked user may edit records of it.
    pub updateable: bool,
    /// `fields`: the fields the linked user can see.
    pub fields: Vec<FieldDescribe>,
    /// More on `createable`: why it could not be read, or how the user would get it.
    pub create_note: AccessNote,
    /// More on `updateable`, likewise.
    pub edit_note: AccessNote,
    /// `recordTypeInfos`: the object's record types (empty when the target has none).
    pub record_types: Vec<RecordType>,
}

/// One record type of an object, as the linked user sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordType {
    /// `recordTypeId` (`012…`, 18 characters).
    pub id: String,
    /// `developerName`.
    pub developer_name: String,
    /// `active`.
    pub active: bool,
    /// `available`: the linked user's profile may use it.
    pub available: bool,
    /// `master`: the master record type.
    pub master: bool,
}

impl RecordType {
    /// Whether `id` (15 or 18 characters) names this record type.
    pub fn is(&self, id: &str) -> bool {
        match (id.get(..15), self.id.get(..15)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// What a target said about one kind of access beyond yes or no.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessNote {
    /// Why the access could not be read; the step that needs it is then "not checked".
    pub unknown: Option<String>,
    /// How the user would get the access when it is missing (`a role its ACL accepts: itil`).
    pub how_to_get: Option<String>,
}

impl ObjectDescribe {
    /// The field named `name`, compared without regard to case as Salesforce does.
    pub fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// "X has no field F", with the nearest field names when there are some.
    pub(crate) fn no_such_field(&self, field: &str) -> String {
        let near = close_matches(field, self.fields.iter().map(|f| f.name.as_str()), 3);
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!("; did you mean {}?", near.join(", "))
        };
        format!("{} has no field {field}{hint}", self.name)
    }

    /// Reads Salesforce's `GET /sobjects/{Object}/describe` body.
    pub fn from_salesforce_json(v: &Value) -> Result<ObjectDescribe, SchemaError> {
        let name = v["name"].as_str().ok_or_else(|| SchemaError::Malformed {
            object: "?".into(),
            reason: "the describe has no `name`".into(),
        })?;
        let flag = |f: &Value, k: &str| f[k].as_bool().unwrap_or(false);
        let fields = v["fields"]
            .as_array()
            .ok_or_else(|| SchemaError::Malformed {
                object: name.to_string(),
                reason: "the describe has no `fields` list".into(),
            })?
            .iter()
            .filter_map(|f| {
                Some(FieldDescribe {
                    name: f["name"].as_str()?.to_string(),
                    type_: f["type"].as_str().unwrap_or("string").to_string(),
                    createable: flag(f, "createable"),
                    updateable: flag(f, "updateable"),
                    nillable: flag(f, "nillable"),
                    defaulted_on_create: flag(f, "defaultedOnCreate"),
                    external_id: flag(f, "externalId") || flag(f, "idLookup"),
                    picklist_values: f["picklistValues"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|p| p["active"].as_bool().unwrap_or(true))
                                .filter_map(|p| p["value"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    length: f["length"]
                        .as_u64()
                        .filter(|l| *l > 0)
                        .map(|l| l.min(u64::from(u32::MAX)) as u32),
                })
            })
            .collect();
        Ok(ObjectDescribe {
            name: name.to_string(),
            createable: flag(v, "createable"),
            updateable: flag(v, "updateable"),
            fields,
            record_types: v["recordTypeInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    Some(RecordType {
                        id: r["recordTypeId"].as_str()?.to_string(),
                        developer_name: r["developerName"].as_str().unwrap_or("").to_string(),
                        active: flag(r, "active"),
                        available: flag(r, "available"),
                        master: flag(r, "master"),
                    })
                })
                .collect(),
            ..Default::default()
        })
    }
}

/// Why an object could not be described.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The object does not exist or the linked user cannot see it.
    #[error(
        "{object}: no such object for the linked user (it does not exist or the user cannot see it)"
    )]
    UnknownObject {
        /// The object asked for.
        object: String,
    },
    /// The linked user may not use the API at all (Salesforce: no "API Enabled" permission).
    #[error(
        "the linked user may not use the API ({reason}): give their profile or a permission set \"API Enabled\""
    )]
    NoApiAccess {
        /// The object asked for.
        object: String,
        /// The system's own words.
        reason: String,
    },
    /// The target refused the linked user something every write of this step needs (reading the
    /// table, for a ServiceNow step); the message says what and how to get it.
    #[error("{message}")]
    Refused {
        /// The object asked for.
        object: String,
        /// What was refused and what to do.
        message: String,
    },
    /// The describe call failed (network, authorization, the system's own error).
    #[error("{object}: the describe call failed: {reason}")]
    Unavailable {
        /// The object asked for.
        object: String,
        /// The client's error, as text.
        reason: String,
    },
    /// The describe answer lacks what the checks need (`name`, `fields`).
    #[error("{object}: the describe answer is malformed: {reason}")]
    Malformed {
        /// The object asked for (`?` when the answer does not name it).
        object: String,
        /// What is missing or wrong.
        reason: String,
    },
}

/// A source of object descriptions, as seen by one linked account.
pub trait TargetSchema: Send + Sync {
    /// Describes `object` (matched without regard to case) as the linked user sees it.
    fn describe<'a>(
        &'a self,
        object: &'a str,
    ) -> BoxFuture<'a, Result<ObjectDescribe, SchemaError>>;
}

/// A fixed set of describes (tests, `workflow test --describe FILE`).
#[derive(Clone, Debug, Default)]
pub struct StaticSchema {
    objects: BTreeMap<String, ObjectDescribe>,
}

impl StaticSchema {
    /// A schema answering for exactly `objects`, looked up by name without regard to case.
    pub fn new(objects: impl IntoIterator<Item = ObjectDescribe>) -> StaticSchema {
        StaticSchema {
            objects: objects
                .into_iter()
                .map(|o| (o.name.to_lowercase(), o))
                .collect(),
        }
    }

    /// A JSON object `{ "Object": <Salesforce describe body>, … }` or an array of describe bodies.
    pub fn from_json(v: &Value) -> Result<StaticSchema, SchemaError> {
        let bodies: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) if o.contains_key("fields") => vec![v],
            Value::Object(o) => o.values().collect(),
            _ => {
                return Err(SchemaError::Malformed {
                    object: "?".into(),
                    reason: "expected an object of describes or an array".into(),
                });
            }
        };
        let objects = bodies
            .into_iter()
            .map(ObjectDescribe::from_salesforce_json)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StaticSchema::new(objects))
    }
}

impl TargetSchema for StaticSchema {
    fn describe<'a>(
        &'a self,
        object: &'a str,
    ) -> BoxFuture<'a, Result<ObjectDescribe, SchemaError>> {
        let found = self.objects.get(&object.to_lowercase()).cloned();
        Box::pin(async move {
            found.ok_or_else(|| SchemaError::UnknownObject {
                object: object.to_string(),
            })
        })
    }
}

/// Salesforce describes through the `xmbridge-salesforce` client, as its linked user sees them
/// (the describe reflects the user's object and field-level security).
pub struct SalesforceSchema {
    /// A client signed in as the workflow owner's linked account.
    pub client: std::sync::Arc<xmbridge_salesforce::SalesforceClient>,
}

impl TargetSchema for SalesforceSchema {
    fn describe<'a>(
        &'a self,
        object: &'a str,
    ) -> BoxFuture<'a, Result<ObjectDescribe, SchemaError>> {
        Box::pin(async move {
            use xmbridge_salesforce::SalesforceError;
            let d = self.client.describe(object).await.map_err(|e| match &e {
                SalesforceError::Permanent { status: 404, .. } => SchemaError::UnknownObject {
                    object: object.to_string(),
                },
                SalesforceError::Permanent { errors, .. }
                    if errors.iter().any(|x| x.error_code == "NOT_FOUND") =>
                {
                    SchemaError::UnknownObject {
                        object: object.to_string(),
                    }
                }
                SalesforceError::Permanent { errors, .. }
                    if errors.iter().any(|x| {
                        x.error_code == "API_DISABLED_FOR_ORG"
                            || x.error_code == "API_CURRENTLY_DISABLED"
                    }) =>
                {
                    SchemaError::NoApiAccess {
                        object: object.to_string(),
                        reason: e.to_string(),
                    }
                }
                _ => SchemaError::Unavailable {
                    object: object.to_string(),
                    reason: e.to_string(),
                },
            })?;
            // The client's describe serializes in Salesforce's own shape.
            let v = serde_json::to_value(&*d).map_err(|e| SchemaError::Malformed {
                object: object.to_string(),
                reason: e.to_string(),
            })?;
            ObjectDescribe::from_salesforce_json(&v)
        })
    }
}

/// One problem a mapping has against a describe: the field it concerns (`None` for the object)
/// and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MappingProblem {
    /// The target field it concerns; `None` for the object or the mapping as a whole.
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

const NUMERIC: &[&str] = &["double", "currency", "percent", "int", "long"];
const DATES: &[&str] = &["date", "datetime", "time"];

/// Type checks of `mapping` against `describe` for a write of kind `kind`.
pub(crate) fn check_mapping(
    mapping: &Mapping,
    kind: WriteKind,
    describe: &ObjectDescribe,
) -> Vec<MappingProblem> {
    let mut problems = Vec::new();
    let object = &describe.name;
    let unknown = |field: &str| describe.no_such_field(field);

    if let Some(key) = &mapping.external_id_field {
        match describe.field(key) {
            None => problems.push(MappingProblem {
                field: Some(key.clone()),
                message: unknown(key),
            }),
            Some(f) if !f.external_id => {
                let keys: Vec<&str> = describe
                    .fields
                    .iter()
                    .filter(|f| f.external_id && f.type_ != "id")
                    .map(|f| f.name.as_str())
                    .collect();
                problems.push(MappingProblem {
                    field: Some(key.clone()),
                    message: format!(
                        "{object}.{} is not an external id field: mark it External ID in Salesforce, or key on {}",
                        f.name,
                        if keys.is_empty() {
                            "a field marked External ID".to_string()
                        } else {
                            format!("one of: {}", keys.join(", "))
                        }
                    ),
                });
            }
            Some(_) => {}
        }
    }

    for (name, expr) in &mapping.fields {
        let Some(field) = describe.field(name) else {
            problems.push(MappingProblem {
                field: Some(name.clone()),
                message: unknown(name),
            });
            continue;
        };
        if let Some(message) = type_conflict(object, field, expr) {
            problems.push(MappingProblem {
                field: Some(name.clone()),
                message,
            });
        }
    }

    if kind.creates() {
        for f in describe
            .fields
            .iter()
            .filter(|f| f.createable && !f.nillable && !f.defaulted_on_create)
        {
            let mapped = mapping
                .fields
                .keys()
                .any(|k| k.eq_ignore_ascii_case(&f.name))
                || mapping
                    .external_id_field
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case(&f.name));
            if !mapped {
                problems.push(MappingProblem {
                    field: Some(f.name.clone()),
                    message: format!(
                        "{object}.{} is required when a record is created (not nillable, no default); map it under fields",
                        f.name
                    ),
                });
            }
        }
    }
    problems
}

fn type_conflict(object: &str, field: &FieldDescribe, expr: &Expr) -> Option<String> {
    let t = field.type_.as_str();
    let constant = expr.constant_value();
    let st = expr.static_type();
    let what = |s: StaticType| match &constant {
        Some(v) => format!("the constant {v}"),
        None => format!("a {s} expression"),
    };
    let target = format!("{object}.{} ({t})", field.name);
    if NUMERIC.contains(&t) {
        let ok = match st {
            StaticType::Bool => false,
            StaticType::Text => constant
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| s.trim().parse::<f64>().is_ok()),
            _ => true,
        };
        if !ok {
            return Some(format!(
                "{} cannot go into the number field {target}; use number(…) or a numeric path",
                what(st)
            ));
        }
    } else if t == "boolean" {
        let ok = match st {
            StaticType::Number => false,
            StaticType::Text => constant
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| s == "true" || s == "false"),
            _ => true,
        };
        if !ok {
            return Some(format!(
                "{} cannot go into the checkbox field {target}; write a comparison (e.g. x == '1') or true/false",
                what(st)
            ));
        }
    } else if DATES.contains(&t) {
        let ok = match st {
            StaticType::Bool | StaticType::Number => false,
            StaticType::Text => match constant.as_ref().and_then(Value::as_str) {
                Some(s) => {
                    chrono::NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").is_ok()
                }
                None => true,
            },
            _ => true,
        };
        if !ok {
            return Some(format!(
                "{} cannot go into the date field {target}; use date(…) or an ISO-8601 text (YYYY-MM-DD)",
                what(st)
            ));
        }
    } else if st == StaticType::Bool && t != "anyType" {
        return Some(format!(
            "{} cannot go into the text field {target}; use string(…) if you mean the words true/false",
            what(st)
        ));
    }
    if let Some(Value::String(s)) = &constant {
        if (t == "picklist" || t == "multipicklist") && !field.picklist_values.is_empty() {
            let chosen: Vec<&str> = if t == "multipicklist" {
                s.split(';').collect()
            } else {
                vec![s.as_str()]
            };
            if let Some(bad) = chosen
                .iter()
                .find(|c| !field.picklist_values.iter().any(|p| p == *c))
            {
                return Some(format!(
                    "\"{bad}\" is not a value of the picklist {target}; values: {}",
                    field.picklist_values.join(", ")
                ));
            }
        }
        if let Some(max) = field.length
            && s.chars().count() > max as usize
        {
            return Some(format!(
                "the constant is {} characters but {target} holds at most {max}",
                s.chars().count()
            ));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A Survey_Response__c describe like the Salesforce simulator's.
    pub fn survey_response_describe() -> Value {
        json!({
            "name": "Survey_Response__c", "createable": true, "updateable": true,
            "fields": [
                {"name": "Id", "type": "id", "createable": false, "updateable": false, "nillable": false, "defaultedOnCreate": true, "idLookup": true},
                {"name": "Name", "type": "string", "length": 80, "createable": true, "updateable": true, "nillable": true, "defaultedOnCreate": true},
                {"name": "Response_Id__c", "type": "string", "length": 40, "createable": true, "updateable": true, "nillable": true, "externalId": true},
                {"name": "NPS__c", "type": "double", "createable": true, "updateable": true, "nillable": true},
                {"name": "Comment__c", "type": "textarea", "length": 20, "createable": true, "updateable": true, "nillable": true},
                {"name": "Detractor__c", "type": "boolean", "createable": true, "updateable": true, "nillable": false, "defaultedOnCreate": true},
                {"name": "Completed__c", "type": "date", "createable": true, "updateable": true, "nillable": true},
                {"name": "Channel__c", "type": "picklist", "createable": true, "updateable": true, "nillable": true,
                 "picklistValues": [{"value": "Email", "active": true}, {"value": "Web", "active": true}, {"value": "Old", "active": false}]},
                {"name": "Survey__c", "type": "string", "length": 40, "createable": true, "updateable": false, "nillable": false, "defaultedOnCreate": false},
                {"name": "Score_Band__c", "type": "string", "length": 10, "createable": false, "updateable": false, "nillable": true}
            ]
        })
    }

    fn mapping(key: Option<&str>, fields: &[(&str, &str)]) -> Mapping {
        Mapping {
            object: "Survey_Response__c".into(),
            external_id_field: key.map(str::to_string),
            external_id: key.map(|_| Expr::parse("response.id").unwrap()),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Expr::parse(v).unwrap()))
                .collect(),
        }
    }

    #[test]
    fn describe_json_is_read() {
        let d = ObjectDescribe::from_salesforce_json(&survey_response_describe()).unwrap();
        let c = d.field("channel__c").unwrap();
        assert_eq!(c.picklist_values, vec!["Email", "Web"]);
        assert!(d.field("Response_Id__c").unwrap().external_id);
        assert_eq!(d.field("Name").unwrap().length, Some(80));
    }

    #[test]
    fn a_good_mapping_has_no_problems() {
        let d = ObjectDescribe::from_salesforce_json(&survey_response_describe()).unwrap();
        let m = mapping(
            Some("Response_Id__c"),
            &[
                ("NPS__c", "response.values.QID1"),
                ("Comment__c", "response.values.QID2_TEXT"),
                ("Detractor__c", "response.values.QID1 <= 6"),
                ("Completed__c", "date(response.values.endDate)"),
                ("Channel__c", "'Email'"),
                ("Survey__c", "survey.id"),
            ],
        );
        assert_eq!(check_mapping(&m, WriteKind::Upsert, &d), vec![]);
    }

    #[test]
    fn each_problem_is_named() {
        let d = ObjectDescribe::from_salesforce_json(&survey_response_describe()).unwrap();
        let m = mapping(
            Some("Name"),
            &[
                ("NPS_c", "1"),
                ("NPS__c", "'high'"),
                ("Detractor__c", "3"),
                ("Completed__c", "true"),
                ("Channel__c", "'Phone'"),
                ("Comment__c", "'this text is longer than twenty'"),
            ],
        );
        let got: Vec<String> = check_mapping(&m, WriteKind::Create, &d)
            .into_iter()
            .map(|p| format!("{}: {}", p.field.unwrap_or_default(), p.message))
            .collect();
        assert_eq!(
            got,
            vec![
                "Name: Survey_Response__c.Name is not an external id field: mark it External ID in Salesforce, or key on one of: Response_Id__c",
                "Channel__c: \"Phone\" is not a value of the picklist Survey_Response__c.Channel__c (picklist); values: Email, Web",
                "Comment__c: the constant is 31 characters but Survey_Response__c.Comment__c (textarea) holds at most 20",
                "Completed__c: the constant true cannot go into the date field Survey_Response__c.Completed__c (date); use date(…) or an ISO-8601 text (YYYY-MM-DD)",
                "Detractor__c: the constant 3 cannot go into the checkbox field Survey_Response__c.Detractor__c (boolean); write a comparison (e.g. x == '1') or true/false",
                "NPS__c: the constant \"high\" cannot go into the number field Survey_Response__c.NPS__c (double); use number(…) or a numeric path",
                "NPS_c: Survey_Response__c has no field NPS_c; did you mean NPS__c?",
                "Survey__c: Survey_Response__c.Survey__c is required when a record is created (not nillable, no default); map it under fields",
            ]
        );
    }

    #[test]
    fn required_fields_only_matter_when_creating() {
        let d = ObjectDescribe::from_salesforce_json(&survey_response_describe()).unwrap();
        let m = mapping(None, &[("NPS__c", "response.values.QID1")]);
        assert!(check_mapping(&m, WriteKind::Update, &d).is_empty());
        assert_eq!(check_mapping(&m, WriteKind::Create, &d).len(), 1);
    }

    #[test]
    fn write_kinds_follow_action_names() {
        assert_eq!(WriteKind::of_action("salesforce.upsert"), WriteKind::Upsert);
        assert_eq!(
            WriteKind::of_action("servicenow.update-record"),
            WriteKind::Update
        );
        assert_eq!(
            WriteKind::of_action("salesforce.create-case"),
            WriteKind::Create
        );
        assert_eq!(WriteKind::of_action("upsert-contact"), WriteKind::Upsert);
        assert_eq!(WriteKind::of_action("salesforce.query"), WriteKind::Other);
    }
}
