//! Records and the write rules every write path shares (single REST calls and Collections):
//! unknown fields, field-level security, types, required fields, restricted picklists,
//! references, record types, unique external ids and the admin's validation rules.

use super::describe::{FieldDef, ObjectDef, readable};
use super::profiles::Profile;
use super::record_types;
use super::{ErrItem, SalesforceConfig, SfSim, State, is_id_shaped, sf_datetime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Clone, Debug, Serialize)]
/// A record of the org.
pub struct Record {
    /// The record id (18 characters, the object's key prefix first).
    pub id: String,
    /// The object it belongs to.
    pub object: String,
    /// Field values by API name.
    pub fields: Map<String, Value>,
    /// Deleted: in the recycle bin, invisible to the API.
    pub deleted: bool,
}

/// An admin-defined validation rule: the write fails with FIELD_CUSTOM_VALIDATION_EXCEPTION when
/// `field` `condition` `value` holds on the record as it would be saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationRule {
    /// The object the rule guards.
    pub object: String,
    /// The rule's name.
    pub name: String,
    /// The field the condition looks at.
    pub field: String,
    /// `blank`, `equals`, `not_equals`, `gt`, `lt`.
    pub condition: String,
    #[serde(default)]
    /// The value compared with (unused by `blank`).
    pub value: Value,
    /// The error message the write fails with.
    pub message: String,
    /// Where the error is shown (`fields` of the error); none = top of the page (`fields: []`).
    #[serde(default)]
    pub error_field: Option<String>,
}

impl ValidationRule {
    pub(crate) fn check_shape(&self) -> Result<(), String> {
        match self.condition.as_str() {
            "blank" | "equals" | "not_equals" | "gt" | "lt" => Ok(()),
            other => Err(format!(
                "condition '{other}' is not one of blank, equals, not_equals, gt, lt"
            )),
        }
    }

    fn fires(&self, rec: &Map<String, Value>) -> bool {
        let v = rec
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&self.field))
            .map(|(_, v)| v)
            .unwrap_or(&Value::Null);
        let num = |v: &Value| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        match self.condition.as_str() {
            "blank" => v.is_null() || v.as_str() == Some(""),
            "equals" => v == &self.value,
            "not_equals" => v != &self.value,
            "gt" => matches!((num(v), num(&self.value)), (Some(a), Some(b)) if a > b),
            "lt" => matches!((num(v), num(&self.value)), (Some(a), Some(b)) if a < b),
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Whether a write creates or updates a record.
pub enum WriteOp {
    /// A new record.
    Create,
    /// A change to an existing record.
    Update,
}

fn bad(code: &str, msg: impl Into<String>, fields: Vec<String>) -> Vec<ErrItem> {
    vec![ErrItem::new(code, msg, fields)]
}

pub(crate) fn no_such_column(obj: &ObjectDef, field: &str) -> ErrItem {
    ErrItem::new(
        "INVALID_FIELD",
        format!("No such column '{field}' on sobject of type {}", obj.name),
        Vec::new(),
    )
}

/// Finds a live record of `obj` by id (15 or 18 characters).
pub fn find<'a>(st: &'a State, obj: &str, id: &str) -> Option<&'a Record> {
    st.records
        .get(obj)?
        .iter()
        .find(|r| r.id == id || (id.len() == 15 && r.id.starts_with(id)))
}

fn find_any_live(sim: &SfSim, st: &State, id: &str) -> bool {
    sim.object_by_prefix(id)
        .and_then(|o| find(st, o.name, id))
        .is_some_and(|r| !r.deleted)
}

/// Checks and converts one value for a field.
fn coerce(
    sim: &SfSim,
    st: &State,
    _obj: &ObjectDef,
    fd: &FieldDef,
    v: &Value,
) -> Result<Value, Vec<ErrItem>> {
    let name = fd.name.to_string();
    if v.is_null() {
        if !fd.nillable && !fd.defaulted_on_create {
            return Err(bad(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", fd.name),
                vec![name],
            ));
        }
        return Ok(Value::Null);
    }
    let parse_err = |kind: &str| {
        bad(
            "JSON_PARSER_ERROR",
            format!(
                "Cannot deserialize instance of {kind} from {} value {v} or request may be missing a required field",
                match v {
                    Value::String(_) => "VALUE_STRING",
                    Value::Number(_) => "VALUE_NUMBER",
                    Value::Bool(_) => "VALUE_BOOLEAN",
                    _ => "START_OBJECT",
                }
            ),
            Vec::new(),
        )
    };
    match fd.ftype {
        "string" | "textarea" | "email" | "phone" | "url" | "picklist" => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(parse_err("string")),
            };
            if s.chars().count() > fd.length as usize {
                return Err(bad(
                    "STRING_TOO_LONG",
                    format!(
                        "{}: data value too large: {}... (max length={})",
                        fd.label,
                        s.chars().take(20).collect::<String>(),
                        fd.length
                    ),
                    vec![name],
                ));
            }
            if fd.ftype == "email" && !s.is_empty() && !s.contains('@') {
                return Err(bad(
                    "INVALID_EMAIL_ADDRESS",
                    format!("{}: invalid email address: {s}", fd.label),
                    vec![name],
                ));
            }
            if !fd.picklist.is_empty() && !fd.picklist.contains(&s.as_str()) {
                return Err(bad(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!("{}: bad value for restricted picklist field: {s}", fd.label),
                    vec![name],
                ));
            }
            Ok(Value::String(s))
        }
        "boolean" => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            _ => Err(parse_err("boolean")),
        },
        "double" | "currency" | "percent" | "int" => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if fd.ftype == "int" => Ok(json!(n as i64)),
                Some(n) => Ok(json!(n)),
                None => Err(parse_err(if fd.ftype == "int" { "int" } else { "double" })),
            }
        }
        "date" => match v.as_str() {
            Some(s) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => Ok(v.clone()),
            _ => Err(parse_err("date")),
        },
        "datetime" => match v.as_str() {
            Some(s)
                if crate::clock::parse_iso(s).is_some()
                    || chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok() =>
            {
                Ok(v.clone())
            }
            _ => Err(parse_err("datetime")),
        },
        "reference" => {
            let Some(s) = v.as_str() else {
                return Err(parse_err("id"));
            };
            let target = fd.reference_to.and_then(|t| sim.object(t));
            let prefix_ok = target.is_some_and(|t| s.starts_with(t.key_prefix));
            if !is_id_shaped(s) || !prefix_ok {
                return Err(bad(
                    "MALFORMED_ID",
                    format!("{}: id value of incorrect type: {s}", fd.label),
                    vec![name],
                ));
            }
            if !find_any_live(sim, st, s) {
                return Err(bad(
                    "INVALID_CROSS_REFERENCE_KEY",
                    format!("invalid cross reference id: {s}"),
                    vec![name],
                ));
            }
            Ok(Value::String(s.to_string()))
        }
        _ => Ok(v.clone()),
    }
}

/// Resolves `"Contact__r": {"Qualtrics_Contact_Id__c": "X"}` to the lookup field's record id.
fn resolve_relationship(
    sim: &SfSim,
    st: &State,
    profile: &Profile,
    obj: &ObjectDef,
    fd: &FieldDef,
    v: &Value,
) -> Result<Value, Vec<ErrItem>> {
    let rel = fd.relationship_name.unwrap_or(fd.name);
    let Some((key, val)) = v
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| *k != "attributes"))
    else {
        return Err(bad(
            "JSON_PARSER_ERROR",
            format!("{rel}: a relationship must be an object with one external id field"),
            Vec::new(),
        ));
    };
    let Some(target) = fd.reference_to.and_then(|t| sim.object(t)) else {
        return Err(vec![no_such_column(obj, rel)]);
    };
    let Some(kf) = target
        .field(key)
        .filter(|k| k.external_id || k.name == "Id")
    else {
        return Err(bad(
            "INVALID_FIELD",
            format!("{key} is not an External ID field on {}", target.name),
            vec![rel.to_string()],
        ));
    };
    if !readable(profile, target, kf) {
        return Err(vec![no_such_column(target, key)]);
    }
    let wanted = value_text(val);
    let matches: Vec<&Record> = st
        .records
        .get(target.name)
        .map(|rs| {
            rs.iter()
                .filter(|r| {
                    !r.deleted && r.fields.get(kf.name).map(value_text) == Some(wanted.clone())
                })
                .collect()
        })
        .unwrap_or_default();
    match matches.as_slice() {
        [one] => Ok(Value::String(one.id.clone())),
        [] => Err(bad(
            "INVALID_FIELD",
            format!(
                "Foreign key external ID: {wanted} not found for field {} in entity {}",
                kf.name, target.name
            ),
            Vec::new(),
        )),
        _ => Err(bad(
            "INVALID_FIELD",
            format!(
                "More than 1 record found for external id field: {} matching {wanted}",
                kf.name
            ),
            Vec::new(),
        )),
    }
}

pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Checks a create/update body against the schema and the caller's profile and returns the
/// converted field values (without system fields).
pub fn prepare(
    sim: &SfSim,
    st: &State,
    profile: &Profile,
    obj: &ObjectDef,
    body: &Map<String, Value>,
    op: WriteOp,
) -> Result<Map<String, Value>, Vec<ErrItem>> {
    let mut out = Map::new();
    let mut forbidden = Vec::new();
    for (key, v) in body {
        if key == "attributes" {
            continue;
        }
        let (fd, value) = if let Some(fd) = obj.by_relationship(key).filter(|_| v.is_object()) {
            (fd, resolve_relationship(sim, st, profile, obj, fd, v)?)
        } else {
            let Some(fd) = obj.field(key).filter(|fd| readable(profile, obj, fd)) else {
                return Err(vec![no_such_column(obj, key)]);
            };
            (fd, v.clone())
        };
        let fp = profile.field(obj.name, fd.name);
        let allowed = match op {
            WriteOp::Create => fd.createable,
            WriteOp::Update => fd.updateable,
        } && fp.edit;
        if !allowed {
            forbidden.push(fd.name.to_string());
            continue;
        }
        let stored = if fd.name == record_types::FIELD {
            record_types::check_write(&st.record_types, profile, obj.name, &value, op)?
        } else {
            coerce(sim, st, obj, fd, &value)?
        };
        out.insert(fd.name.to_string(), stored);
    }
    if !forbidden.is_empty() {
        return Err(bad(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to {} fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                if op == WriteOp::Create {
                    "create"
                } else {
                    "create/update"
                },
                forbidden.join(", ")
            ),
            forbidden,
        ));
    }
    Ok(out)
}

/// Checks the record as it would be saved: required fields, unique external ids, validation
/// rules.
fn check_saved(
    st: &State,
    obj: &ObjectDef,
    id: Option<&str>,
    rec: &Map<String, Value>,
) -> Result<(), Vec<ErrItem>> {
    let missing: Vec<String> = obj
        .fields
        .iter()
        .filter(|fd| fd.required_on_create())
        .filter(|fd| {
            rec.get(fd.name)
                .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
        })
        .map(|fd| fd.name.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            "REQUIRED_FIELD_MISSING",
            format!("Required fields are missing: [{}]", missing.join(", ")),
            missing,
        ));
    }
    for fd in obj.fields.iter().filter(|fd| fd.unique && fd.name != "Id") {
        let Some(v) = rec.get(fd.name).filter(|v| !v.is_null()) else {
            continue;
        };
        let dup = st.records.get(obj.name).and_then(|rs| {
            rs.iter().find(|r| {
                !r.deleted && Some(r.id.as_str()) != id && r.fields.get(fd.name) == Some(v)
            })
        });
        if let Some(d) = dup {
            return Err(bad(
                "DUPLICATE_VALUE",
                format!(
                    "duplicate value found: {} duplicates value on record with id: {}",
                    fd.name, d.id
                ),
                vec![fd.name.to_string()],
            ));
        }
    }
    for rule in st
        .rules
        .iter()
        .filter(|r| r.object.eq_ignore_ascii_case(obj.name))
    {
        if rule.fires(rec) {
            return Err(bad(
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                rule.message.clone(),
                rule.error_field.iter().cloned().collect(),
            ));
        }
    }
    Ok(())
}

/// Creates a record; returns its id.
pub fn create(
    sim: &SfSim,
    st: &mut State,
    profile: &Profile,
    obj: &ObjectDef,
    body: &Map<String, Value>,
) -> Result<String, Vec<ErrItem>> {
    if !profile.object(obj.name).create {
        return Err(insufficient(obj, "create"));
    }
    if super::limits::fire(&mut st.faults.unable_to_lock_row) {
        return Err(lock_row());
    }
    let mut rec = prepare(sim, st, profile, obj, body, WriteOp::Create)?;
    for fd in obj
        .fields
        .iter()
        .filter(|fd| fd.defaulted_on_create && fd.createable)
    {
        if !rec.contains_key(fd.name) {
            let v = match (fd.ftype, fd.picklist.first()) {
                ("boolean", _) => Value::Bool(false),
                (_, Some(first)) => Value::String(first.to_string()),
                _ => continue,
            };
            rec.insert(fd.name.to_string(), v);
        }
    }
    // No RecordTypeId: the profile's default record type (nothing stored for the Master).
    if obj.field(record_types::FIELD).is_some()
        && !rec.contains_key(record_types::FIELD)
        && let Some(rt) = record_types::default_id(&st.record_types, profile, obj.name)
    {
        rec.insert(record_types::FIELD.to_string(), Value::String(rt));
    }
    check_saved(st, obj, None, &rec)?;
    let id = st.next_id(obj.key_prefix);
    insert_record(sim, st, obj, id.clone(), rec);
    Ok(id)
}

/// Stores a checked record, filling system fields (Id, dates, auto numbers).
pub fn insert_record(
    sim: &SfSim,
    st: &mut State,
    obj: &ObjectDef,
    id: String,
    rec: Map<String, Value>,
) {
    let now = sf_datetime(sim.clock.now_ms());
    let mut fields = Map::new();
    fields.insert("Id".into(), Value::String(id.clone()));
    for fd in &obj.fields {
        if let Some(v) = rec.get(fd.name) {
            fields.insert(fd.name.to_string(), v.clone());
        }
    }
    let auto = |st: &mut State, key: &str| {
        let n = st.counters.entry(key.to_string()).or_insert(1000);
        *n += 1;
        *n
    };
    if obj.name == "Case" {
        let n = auto(st, "CaseNumber");
        fields.insert("CaseNumber".into(), json!(format!("{n:08}")));
    }
    if obj.name == "Survey_Response__c" {
        let n = auto(st, "SR");
        fields.insert("Name".into(), json!(format!("SR-{n:06}")));
    }
    fields.insert("CreatedDate".into(), json!(now));
    fields.insert("LastModifiedDate".into(), json!(now));
    st.records
        .entry(obj.name.to_string())
        .or_default()
        .push(Record {
            id,
            object: obj.name.to_string(),
            fields,
            deleted: false,
        });
}

fn insufficient(obj: &ObjectDef, what: &str) -> Vec<ErrItem> {
    bad(
        "INSUFFICIENT_ACCESS_OR_READONLY",
        format!(
            "insufficient access rights on object id: your profile cannot {what} {} records",
            obj.name
        ),
        Vec::new(),
    )
}

fn lock_row() -> Vec<ErrItem> {
    bad(
        "UNABLE_TO_LOCK_ROW",
        "unable to obtain exclusive access to this record or 1 records",
        Vec::new(),
    )
}

/// Updates a live record by id.
pub fn update(
    sim: &SfSim,
    st: &mut State,
    profile: &Profile,
    obj: &ObjectDef,
    id: &str,
    body: &Map<String, Value>,
) -> Result<(), Vec<ErrItem>> {
    if !profile.object(obj.name).edit {
        return Err(insufficient(obj, "edit"));
    }
    let Some(existing) = find(st, obj.name, id).cloned() else {
        return Err(bad(
            "NOT_FOUND",
            "The requested resource does not exist",
            Vec::new(),
        ));
    };
    if existing.deleted {
        return Err(bad("ENTITY_IS_DELETED", "entity is deleted", Vec::new()));
    }
    if super::limits::fire(&mut st.faults.unable_to_lock_row) {
        return Err(lock_row());
    }
    let mut body = body.clone();
    // Collections updates carry the id in the body.
    body.remove("id");
    body.remove("Id");
    let changes = prepare(sim, st, profile, obj, &body, WriteOp::Update)?;
    let mut merged = existing.fields.clone();
    for (k, v) in changes {
        merged.insert(k, v);
    }
    check_saved(st, obj, Some(&existing.id), &merged)?;
    merged.insert(
        "LastModifiedDate".into(),
        json!(sf_datetime(sim.clock.now_ms())),
    );
    if let Some(r) = st
        .records
        .get_mut(obj.name)
        .and_then(|rs| rs.iter_mut().find(|r| r.id == existing.id))
    {
        r.fields = merged;
    }
    Ok(())
}

/// Deletes a record by id.
pub fn delete(
    st: &mut State,
    profile: &Profile,
    obj: &ObjectDef,
    id: &str,
) -> Result<(), Vec<ErrItem>> {
    if !profile.object(obj.name).delete {
        return Err(insufficient(obj, "delete"));
    }
    let Some(r) = st.records.get_mut(obj.name).and_then(|rs| {
        rs.iter_mut()
            .find(|r| r.id == id || (id.len() == 15 && r.id.starts_with(id)))
    }) else {
        return Err(bad(
            "NOT_FOUND",
            "The requested resource does not exist",
            Vec::new(),
        ));
    };
    if r.deleted {
        return Err(bad("ENTITY_IS_DELETED", "entity is deleted", Vec::new()));
    }
    r.deleted = true;
    Ok(())
}

/// The outcome of an upsert.
#[derive(Debug)]
pub enum Upserted {
    /// No record carried the key: one was created (its id).
    Created(String),
    /// One record carried the key: it was updated (its id).
    Updated(String),
    /// Several records carry the key: nothing written.
    Multiple(Vec<String>),
}

/// What an upsert matches on.
#[derive(Clone, Copy, Debug)]
pub struct UpsertKey<'a> {
    /// The External ID (or idLookup) field matched on.
    pub field: &'a FieldDef,
    /// The value looked for.
    pub value: &'a str,
    /// `?updateOnly=true`: never create.
    pub update_only: bool,
}

/// Upsert by an external id (or `Id`) field.
pub fn upsert(
    sim: &SfSim,
    st: &mut State,
    profile: &Profile,
    obj: &ObjectDef,
    key: UpsertKey<'_>,
    body: &Map<String, Value>,
) -> Result<Upserted, Vec<ErrItem>> {
    let UpsertKey {
        field: key,
        value,
        update_only,
    } = key;
    let mut body = body.clone();
    if let Some((k, v)) = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key.name))
        .map(|(k, v)| (k.clone(), v.clone()))
    {
        if value_text(&v) != value {
            return Err(bad(
                "INVALID_FIELD",
                format!(
                    "The value of {} in the body ({}) differs from the one in the URL ({value})",
                    key.name,
                    value_text(&v)
                ),
                vec![key.name.to_string()],
            ));
        }
        body.remove(&k);
    }
    let matches: Vec<String> = st
        .records
        .get(obj.name)
        .map(|rs| {
            rs.iter()
                .filter(|r| !r.deleted)
                .filter(|r| {
                    if key.name == "Id" {
                        r.id == value || (value.len() == 15 && r.id.starts_with(value))
                    } else {
                        r.fields
                            .get(key.name)
                            .is_some_and(|v| value_text(v) == value)
                    }
                })
                .map(|r| r.id.clone())
                .collect()
        })
        .unwrap_or_default();
    match matches.len() {
        0 if update_only || key.name == "Id" => Err(bad(
            "NOT_FOUND",
            "The requested resource does not exist",
            Vec::new(),
        )),
        0 => {
            if key.name != "Id" {
                body.insert(key.name.to_string(), Value::String(value.to_string()));
            }
            create(sim, st, profile, obj, &body).map(Upserted::Created)
        }
        1 => {
            update(sim, st, profile, obj, &matches[0], &body)?;
            Ok(Upserted::Updated(matches[0].clone()))
        }
        _ => Ok(Upserted::Multiple(matches)),
    }
}

/// A record as the REST API returns it: `attributes` plus the readable (or chosen) fields.
pub fn record_json(
    profile: &Profile,
    obj: &ObjectDef,
    rec: &Record,
    fields: Option<&[String]>,
    version: &str,
) -> Value {
    let mut m = Map::new();
    m.insert(
        "attributes".into(),
        json!({"type": obj.name, "url": format!("/services/data/v{version}/sobjects/{}/{}", obj.name, rec.id)}),
    );
    for fd in obj.fields.iter().filter(|fd| readable(profile, obj, fd)) {
        if let Some(want) = fields
            && !want.iter().any(|w| w.eq_ignore_ascii_case(fd.name))
        {
            continue;
        }
        m.insert(
            fd.name.to_string(),
            rec.fields.get(fd.name).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

const FIRST: &[&str] = &[
    "Pat", "Alex", "Sam", "Robin", "Kim", "Jordan", "Taylor", "Morgan",
];
const LAST: &[&str] = &[
    "Lee", "Garcia", "Novak", "Okafor", "Schmidt", "Tanaka", "Rossi", "Dubois",
];
const COMPANY: &[&str] = &["Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Acme"];

/// Seeds Accounts, Contacts, Leads, Cases and Opportunities from the seed.
pub fn seed_records(cfg: &SalesforceConfig, schema: &[ObjectDef], st: &mut State, now: i64) {
    let mut rng = crate::rng::Rng::derive(cfg.seed, &[0x5eed]);
    let date = sf_datetime(now - 30 * crate::clock::MS_PER_DAY);
    let push = |st: &mut State, obj: &str, mut fields: Map<String, Value>| -> String {
        let Some(def) = schema.iter().find(|o| o.name == obj) else {
            return String::new();
        };
        let id = st.next_id(def.key_prefix);
        fields.insert("Id".into(), json!(id));
        fields.insert("CreatedDate".into(), json!(date));
        fields.insert("LastModifiedDate".into(), json!(date));
        st.records.entry(obj.to_string()).or_default().push(Record {
            id: id.clone(),
            object: obj.to_string(),
            fields,
            deleted: false,
        });
        id
    };
    let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
    for i in 0..cfg.records_per_object {
        let company = rng.pick(COMPANY).to_string();
        let account = push(
            st,
            "Account",
            obj(
                json!({"Name": format!("{company} {i}"), "Industry": "Technology",
                       "Phone": format!("+1 555 01{:02}", i % 100), "Qualtrics_Account_Id__c": null}),
            ),
        );
        let (first, last) = (rng.pick(FIRST).to_string(), rng.pick(LAST).to_string());
        let contact = push(
            st,
            "Contact",
            obj(json!({"FirstName": first, "LastName": last,
                       "Email": format!("{}.{}{i}@example.com", first.to_lowercase(), last.to_lowercase()),
                       "AccountId": account, "Qualtrics_Contact_Id__c": format!("CID_{:012}", i + 1),
                       "HasOptedOutOfEmail": false, "Title": null, "Phone": null})),
        );
        push(
            st,
            "Lead",
            obj(
                json!({"FirstName": rng.pick(FIRST), "LastName": rng.pick(LAST), "Company": company,
                       "Email": format!("lead{i}@example.com"), "Status": "Open - Not Contacted", "LeadSource": "Web"}),
            ),
        );
        let n = {
            let c = st.counters.entry("CaseNumber".into()).or_insert(1000);
            *c += 1;
            *c
        };
        push(
            st,
            "Case",
            obj(
                json!({"CaseNumber": format!("{n:08}"), "Subject": format!("Question {i}"), "Status": "New",
                       "Priority": "Medium", "Origin": "Web", "ContactId": contact, "AccountId": account,
                       "Qualtrics_Delivery_Key__c": null}),
            ),
        );
        push(
            st,
            "Opportunity",
            obj(
                json!({"Name": format!("{company} renewal {i}"), "StageName": "Prospecting",
                       "CloseDate": "2027-01-31", "Amount": 1000.0 * (i as f64 + 1.0), "AccountId": account}),
            ),
        );
    }
}
