//! Record types: per object, the seeded custom record types (`012…` ids) plus the implicit
//! Master (`012000000000000AAA`); per profile, which of them are assigned (available) and which
//! is the default. Describe shows them as `recordTypeInfos` for the calling user's profile, and
//! every write path checks `RecordTypeId` against them the way Salesforce does: an id that is not
//! an active record type of the object assigned to the caller's profile fails with
//! `INVALID_CROSS_REFERENCE_KEY` "Record Type ID: this ID value isn't valid for the user: …".

use super::profiles::Profile;
use super::sobjects::{Record, WriteOp};
use super::{ErrItem, State, is_id_shaped, sf_datetime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The id of the Master record type, the same in every org.
pub const MASTER_ID: &str = "012000000000000AAA";
/// The developer name (and label) of the Master record type.
pub const MASTER: &str = "Master";
/// The field that carries a record's record type.
pub const FIELD: &str = "RecordTypeId";

#[derive(Clone, Debug, Serialize)]
/// A custom record type of one object.
pub struct RecordType {
    /// The record type id (`012…`, 18 characters).
    pub id: String,
    /// The object it belongs to (`SobjectType`).
    pub object: String,
    /// The API name (`DeveloperName`).
    pub developer_name: String,
    /// The label (`Name`).
    pub label: String,
    /// Inactive record types cannot be given to records and are never available.
    pub active: bool,
    /// The description, as the RecordType object has one.
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// A profile's record type settings for one object.
pub struct RecordTypeAccess {
    /// Developer names of the record types assigned to the profile (`Master` for the Master).
    pub available: Vec<String>,
    /// Developer name of the profile's default record type; one of `available`.
    pub default: String,
}

impl RecordTypeAccess {
    pub(crate) fn new(available: &[&str], default: &str) -> Self {
        RecordTypeAccess {
            available: available.iter().map(|s| s.to_string()).collect(),
            default: default.to_string(),
        }
    }

    fn master_only() -> Self {
        Self::new(&[MASTER], MASTER)
    }

    fn assigned(&self, developer_name: &str) -> bool {
        self.available
            .iter()
            .any(|a| a.eq_ignore_ascii_case(developer_name))
    }
}

/// Seeded record types: `(object, developer name, label, description)`, in id order.
const SEED: &[(&str, &str, &str, &str)] = &[
    (
        "Survey_Response__c",
        "Detractor",
        "Detractor",
        "Responses with an NPS of 0-6: close the loop",
    ),
    (
        "Survey_Response__c",
        "Promoter",
        "Promoter",
        "Responses with an NPS of 9-10",
    ),
    (
        "Case",
        "Survey_Follow_Up",
        "Survey Follow-Up",
        "Cases opened from survey feedback",
    ),
];

/// The seeded record types; ids come from the org's `012` counter, so the same every run.
pub(crate) fn seed(st: &mut State) -> Vec<RecordType> {
    SEED.iter()
        .map(|(object, dev, label, description)| RecordType {
            id: st.next_id("012"),
            object: object.to_string(),
            developer_name: dev.to_string(),
            label: label.to_string(),
            active: true,
            description: description.to_string(),
        })
        .collect()
}

/// Seeded profile settings, by profile name: the admin and integration profiles get every record
/// type (and the Master), the Standard User only `Promoter` on `Survey_Response__c` and only the
/// Master on `Case`.
pub(crate) fn seed_access(profile: &str) -> std::collections::BTreeMap<String, RecordTypeAccess> {
    let mut m = std::collections::BTreeMap::new();
    match profile {
        super::profiles::ADMIN_PROFILE | super::profiles::INTEGRATION_PROFILE => {
            m.insert(
                "Survey_Response__c".to_string(),
                RecordTypeAccess::new(&["Detractor", "Promoter", MASTER], "Promoter"),
            );
            m.insert(
                "Case".to_string(),
                RecordTypeAccess::new(&["Survey_Follow_Up", MASTER], MASTER),
            );
        }
        super::profiles::STANDARD_PROFILE => {
            m.insert(
                "Survey_Response__c".to_string(),
                RecordTypeAccess::new(&["Promoter"], "Promoter"),
            );
            m.insert("Case".to_string(), RecordTypeAccess::master_only());
        }
        _ => {}
    }
    m
}

/// The custom record types of `object`, in label order (as describe lists them).
pub fn of_object<'a>(rts: &'a [RecordType], object: &str) -> Vec<&'a RecordType> {
    let mut v: Vec<&RecordType> = rts
        .iter()
        .filter(|r| r.object.eq_ignore_ascii_case(object))
        .collect();
    v.sort_by(|a, b| a.label.cmp(&b.label));
    v
}

/// The profile's settings for `object`; a profile that lists none has the Master only.
fn access(p: &Profile, object: &str) -> RecordTypeAccess {
    p.record_types
        .iter()
        .find(|(o, _)| o.eq_ignore_ascii_case(object))
        .map(|(_, a)| a.clone())
        .unwrap_or_else(RecordTypeAccess::master_only)
}

/// Whether the record type may be given to a record by a user of the profile: active and assigned.
fn usable(a: &RecordTypeAccess, rt: &RecordType) -> bool {
    rt.active && a.assigned(&rt.developer_name)
}

/// The profile's default record type of `object`: `Some(id)` of a custom one, `None` for the
/// Master (or an object without record types). A default that is no longer usable falls back to
/// the Master.
pub fn default_id(rts: &[RecordType], p: &Profile, object: &str) -> Option<String> {
    let a = access(p, object);
    of_object(rts, object)
        .into_iter()
        .find(|rt| rt.developer_name.eq_ignore_ascii_case(&a.default) && usable(&a, rt))
        .map(|rt| rt.id.clone())
}

/// `recordTypeInfos` of the object describe, as the profile sees them: the custom record types in
/// label order, then the Master. An object without custom record types has the Master only,
/// available and default.
pub fn infos_json(rts: &[RecordType], p: &Profile, object: &str, version: &str) -> Value {
    let layout = |id: &str| json!({"layout": format!("/services/data/v{version}/sobjects/{object}/describe/layouts/{id}")});
    let custom = of_object(rts, object);
    if custom.is_empty() {
        return json!([{
            "active": true,
            "available": true,
            "defaultRecordTypeMapping": true,
            "developerName": MASTER,
            "master": true,
            "name": MASTER,
            "recordTypeId": MASTER_ID,
            "urls": layout(MASTER_ID),
        }]);
    }
    let a = access(p, object);
    let default = default_id(rts, p, object);
    let mut out: Vec<Value> = custom
        .iter()
        .map(|rt| {
            json!({
                "active": rt.active,
                "available": usable(&a, rt),
                "defaultRecordTypeMapping": default.as_deref() == Some(rt.id.as_str()),
                "developerName": rt.developer_name,
                "master": false,
                "name": rt.label,
                "recordTypeId": rt.id,
                "urls": layout(&rt.id),
            })
        })
        .collect();
    out.push(json!({
        "active": true,
        "available": a.assigned(MASTER),
        "defaultRecordTypeMapping": default.is_none(),
        "developerName": MASTER,
        "master": true,
        "name": MASTER,
        "recordTypeId": MASTER_ID,
        "urls": layout(MASTER_ID),
    }));
    Value::Array(out)
}

fn not_valid(given: &str) -> Vec<ErrItem> {
    vec![ErrItem::new(
        "INVALID_CROSS_REFERENCE_KEY",
        format!("Record Type ID: this ID value isn't valid for the user: {given}"),
        vec![FIELD.to_string()],
    )]
}

fn same_id(full: &str, given: &str) -> bool {
    full.eq_ignore_ascii_case(given) || (given.len() == 15 && full.starts_with(given))
}

/// Checks a `RecordTypeId` value written by a user of profile `p` and returns what is stored:
/// the 18-character id of a custom record type, or null for the Master. `null` on create means
/// "the profile's default"; on update it means the Master.
pub fn check_write(
    rts: &[RecordType],
    p: &Profile,
    object: &str,
    v: &Value,
    op: WriteOp,
) -> Result<Value, Vec<ErrItem>> {
    let a = access(p, object);
    let given = match v {
        Value::Null if op == WriteOp::Create => {
            return Ok(default_id(rts, p, object).map_or(Value::Null, Value::String));
        }
        Value::Null => MASTER_ID.to_string(),
        Value::String(s) => s.clone(),
        other => {
            return Err(vec![ErrItem::new(
                "JSON_PARSER_ERROR",
                format!(
                    "Cannot deserialize instance of id from {} value {other} or request may be missing a required field",
                    match other {
                        Value::Number(_) => "VALUE_NUMBER",
                        Value::Bool(_) => "VALUE_BOOLEAN",
                        _ => "START_OBJECT",
                    }
                ),
                Vec::new(),
            )]);
        }
    };
    if !is_id_shaped(&given) {
        return Err(vec![ErrItem::new(
            "MALFORMED_ID",
            format!("Record Type ID: id value of incorrect type: {given}"),
            vec![FIELD.to_string()],
        )]);
    }
    if same_id(MASTER_ID, &given) {
        return if a.assigned(MASTER) {
            Ok(Value::Null)
        } else {
            Err(not_valid(&given))
        };
    }
    of_object(rts, object)
        .into_iter()
        .find(|rt| same_id(&rt.id, &given) && usable(&a, rt))
        .map(|rt| Value::String(rt.id.clone()))
        .ok_or_else(|| not_valid(&given))
}

/// The record types as rows of the `RecordType` object (for SOQL). The Master is not a row, as in
/// Salesforce.
pub fn as_records(rts: &[RecordType], created_ms: i64) -> Vec<Record> {
    let date = sf_datetime(created_ms);
    rts.iter()
        .map(|rt| {
            let mut fields = Map::new();
            fields.insert("Id".into(), json!(rt.id));
            fields.insert("Name".into(), json!(rt.label));
            fields.insert("DeveloperName".into(), json!(rt.developer_name));
            fields.insert("SobjectType".into(), json!(rt.object));
            fields.insert("IsActive".into(), json!(rt.active));
            fields.insert("Description".into(), json!(rt.description));
            fields.insert("NamespacePrefix".into(), Value::Null);
            fields.insert("CreatedDate".into(), json!(date));
            fields.insert("LastModifiedDate".into(), json!(date));
            Record {
                id: rt.id.clone(),
                object: "RecordType".into(),
                fields,
                deleted: false,
            }
        })
        .collect()
}

/// Checks a profile's new settings for one object: every name is a record type of the object (or
/// `Master`), at least one is assigned, and the default is assigned and active. Returns the
/// settings with canonical developer names.
pub(crate) fn validate_access(
    rts: &[RecordType],
    object: &str,
    available: &[String],
    default: Option<&str>,
    current: Option<&RecordTypeAccess>,
) -> Result<RecordTypeAccess, String> {
    let custom = of_object(rts, object);
    let canonical = |name: &str| -> Option<String> {
        if name.eq_ignore_ascii_case(MASTER) || name == MASTER_ID {
            return Some(MASTER.to_string());
        }
        custom
            .iter()
            .find(|rt| rt.developer_name.eq_ignore_ascii_case(name) || same_id(&rt.id, name))
            .map(|rt| rt.developer_name.clone())
    };
    let mut names = Vec::new();
    for n in available {
        let c = canonical(n)
            .ok_or_else(|| format!("record_types.{object}: no record type '{n}' on {object}"))?;
        if !names.contains(&c) {
            names.push(c);
        }
    }
    if names.is_empty() {
        return Err(format!(
            "record_types.{object}: available must name at least one record type"
        ));
    }
    let default = match default {
        Some(d) => canonical(d)
            .ok_or_else(|| format!("record_types.{object}: no record type '{d}' on {object}"))?,
        None => current
            .map(|c| c.default.clone())
            .filter(|d| names.contains(d))
            .unwrap_or_else(|| names[0].clone()),
    };
    if !names.contains(&default) {
        return Err(format!(
            "record_types.{object}: the default '{default}' must be one of available"
        ));
    }
    if custom
        .iter()
        .any(|rt| rt.developer_name == default && !rt.active)
    {
        return Err(format!(
            "record_types.{object}: the default '{default}' is inactive"
        ));
    }
    Ok(RecordTypeAccess {
        available: names,
        default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::SalesforceConfig;
    use crate::salesforce::SfSim;

    #[test]
    fn seeded_ids_are_18_characters_with_the_012_prefix() {
        let sim = SfSim::new(SalesforceConfig::default());
        let st = sim.state.lock();
        assert_eq!(st.record_types.len(), 3);
        for rt in &st.record_types {
            assert!(rt.id.starts_with("012") && rt.id.len() == 18, "{}", rt.id);
        }
        assert_eq!(st.record_types[0].id, "0125g0000000001AAA");
    }

    #[test]
    fn the_standard_profile_sees_only_promoter() {
        let sim = SfSim::new(SalesforceConfig::default());
        let st = sim.state.lock();
        let p = &st.profiles[super::super::profiles::STANDARD_PROFILE];
        let infos = infos_json(&st.record_types, p, "Survey_Response__c", "60.0");
        let avail: Vec<(&str, bool, bool)> = infos
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["developerName"].as_str().unwrap_or(""),
                            i["available"] == true,
                            i["defaultRecordTypeMapping"] == true,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            avail,
            vec![
                ("Detractor", false, false),
                ("Promoter", true, true),
                (MASTER, false, false)
            ]
        );
        let promoter = st.record_types[1].id.clone();
        let detractor = st.record_types[0].id.clone();
        assert_eq!(
            check_write(
                &st.record_types,
                p,
                "Survey_Response__c",
                &json!(promoter[..15]),
                WriteOp::Create
            ),
            Ok(json!(promoter))
        );
        let err = check_write(
            &st.record_types,
            p,
            "Survey_Response__c",
            &json!(detractor),
            WriteOp::Create,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(err[0].code, "INVALID_CROSS_REFERENCE_KEY");
        // A Case record type is not a record type of Survey_Response__c.
        let case_rt = st.record_types[2].id.clone();
        assert!(
            check_write(
                &st.record_types,
                p,
                "Survey_Response__c",
                &json!(case_rt),
                WriteOp::Update
            )
            .is_err()
        );
    }

    #[test]
    fn objects_without_record_types_have_the_master_only() {
        let sim = SfSim::new(SalesforceConfig::default());
        let st = sim.state.lock();
        let p = &st.profiles[super::super::profiles::STANDARD_PROFILE];
        let infos = infos_json(&st.record_types, p, "Contact", "60.0");
        assert_eq!(infos.as_array().map(Vec::len), Some(1));
        assert_eq!(infos[0]["recordTypeId"], MASTER_ID);
        assert_eq!(infos[0]["available"], true);
        assert_eq!(infos[0]["defaultRecordTypeMapping"], true);
    }
}
