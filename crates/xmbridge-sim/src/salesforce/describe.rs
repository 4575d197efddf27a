//! Object and field metadata of the simulated org, and the describe resources. Describe answers
//! as the calling user sees the object: fields without read access are left out and
//! `createable`/`updateable` are false where the user's profile lacks object or field edit rights,
//! as real Salesforce does; `recordTypeInfos` says which record types the user's profile has.

use super::profiles::Profile;
use super::record_types::RecordType;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
/// A field of a simulated object, as `describe` shows it.
pub struct FieldDef {
    /// The API name, e.g. `Email` or `Qualtrics_Response_Id__c`.
    pub name: &'static str,
    /// The label the Salesforce UI shows.
    pub label: &'static str,
    /// `id`, `string`, `textarea`, `email`, `phone`, `url`, `boolean`, `int`, `double`,
    /// `currency`, `percent`, `date`, `datetime`, `picklist`, `reference`.
    pub ftype: &'static str,
    /// Maximum length in characters (text, picklist, id and reference types); 0 for the others.
    pub length: u32,
    /// Whether a create may set it.
    pub createable: bool,
    /// Whether an update may set it.
    pub updateable: bool,
    /// Whether it may be empty (null).
    pub nillable: bool,
    /// Whether Salesforce fills it when a create leaves it out.
    pub defaulted_on_create: bool,
    /// Marked External ID: usable as an upsert key.
    pub external_id: bool,
    /// Usable to look records up by (`idLookup`): upsert keys must be.
    pub id_lookup: bool,
    /// No two records may share a value.
    pub unique: bool,
    /// The allowed values of a `picklist` field; empty for other types.
    pub picklist: &'static [&'static str],
    /// The object a `reference` field points to; `None` for other types.
    pub reference_to: Option<&'static str>,
    /// The name a SOQL query walks a reference by (`Account` for `AccountId`); `None` for other types.
    pub relationship_name: Option<&'static str>,
}

impl FieldDef {
    pub(crate) fn custom(&self) -> bool {
        self.name.ends_with("__c")
    }
    /// What a mapping must always send on create.
    pub fn required_on_create(&self) -> bool {
        self.createable && !self.nillable && !self.defaulted_on_create
    }
}

#[derive(Clone, Debug)]
/// A simulated object (sObject) and its fields.
pub struct ObjectDef {
    /// The API name, e.g. `Contact` or `Survey_Response__c`.
    pub name: &'static str,
    /// The singular label the Salesforce UI shows.
    pub label: &'static str,
    pub(crate) label_plural: &'static str,
    pub(crate) key_prefix: &'static str,
    /// Every field, in describe order.
    pub fields: Vec<FieldDef>,
}

impl ObjectDef {
    pub(crate) fn custom(&self) -> bool {
        self.name.ends_with("__c")
    }
    /// The field called `name`, compared case-insensitively as Salesforce does.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
    pub(crate) fn by_relationship(&self, rel: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| {
            f.relationship_name
                .is_some_and(|r| r.eq_ignore_ascii_case(rel))
        })
    }
}

fn f(name: &'static str, label: &'static str, ftype: &'static str) -> FieldDef {
    let length = match ftype {
        "string" | "email" | "phone" | "url" => 255,
        "textarea" => 32_768,
        "picklist" => 255,
        "id" | "reference" => 18,
        _ => 0,
    };
    FieldDef {
        name,
        label,
        ftype,
        length,
        createable: true,
        updateable: true,
        nillable: ftype != "boolean",
        defaulted_on_create: ftype == "boolean",
        external_id: false,
        id_lookup: false,
        unique: false,
        picklist: &[],
        reference_to: None,
        relationship_name: None,
    }
}

fn required(mut d: FieldDef) -> FieldDef {
    d.nillable = false;
    d
}
fn len(mut d: FieldDef, n: u32) -> FieldDef {
    d.length = n;
    d
}
fn ext(mut d: FieldDef, unique: bool) -> FieldDef {
    d.external_id = true;
    d.id_lookup = true;
    d.unique = unique;
    d
}
fn pick(mut d: FieldDef, values: &'static [&'static str], defaulted: bool) -> FieldDef {
    d.picklist = values;
    if defaulted {
        d.defaulted_on_create = true;
        d.nillable = false;
    }
    d
}
fn lookup(mut d: FieldDef, to: &'static str, rel: &'static str) -> FieldDef {
    d.reference_to = Some(to);
    d.relationship_name = Some(rel);
    d
}
/// System-set field: read-only, always present.
fn system(mut d: FieldDef) -> FieldDef {
    d.createable = false;
    d.updateable = false;
    d.nillable = false;
    d.defaulted_on_create = true;
    d
}

fn common(mut fields: Vec<FieldDef>) -> Vec<FieldDef> {
    let mut all = vec![{
        let mut id = system(f("Id", "Record ID", "id"));
        id.id_lookup = true;
        id.unique = true;
        id
    }];
    all.append(&mut fields);
    all.push(system(f("CreatedDate", "Created Date", "datetime")));
    all.push(system(f(
        "LastModifiedDate",
        "Last Modified Date",
        "datetime",
    )));
    all
}

/// `RecordTypeId`, on the objects that have record types: a reference to `RecordType`, left out
/// on create for the profile's default (checked in `record_types::check_write`).
fn record_type_id() -> FieldDef {
    lookup(
        f(super::record_types::FIELD, "Record Type ID", "reference"),
        "RecordType",
        "RecordType",
    )
}

/// The `RecordType` object as SOQL sees it (`SELECT … FROM RecordType`); its rows are the org's
/// record types, not records. Not part of [`schema`]: it has no REST resources here.
pub fn record_type_object() -> ObjectDef {
    let ro = |d: FieldDef| {
        let mut d = d;
        d.createable = false;
        d.updateable = false;
        d
    };
    ObjectDef {
        name: "RecordType",
        label: "Record Type",
        label_plural: "Record Types",
        key_prefix: "012",
        fields: common(vec![
            ro(len(required(f("Name", "Record Type Label", "string")), 80)),
            ro(len(
                required(f("DeveloperName", "Record Type Name", "string")),
                80,
            )),
            ro(len(f("NamespacePrefix", "Namespace Prefix", "string"), 15)),
            ro(f("Description", "Description", "string")),
            ro(len(
                required(f("SobjectType", "SObject Type Name", "string")),
                40,
            )),
            ro(f("IsActive", "Active", "boolean")),
        ]),
    }
}

/// The org's objects: Contact, Lead, Account, Case, Opportunity and `Survey_Response__c`.
pub fn schema() -> Vec<ObjectDef> {
    vec![
        ObjectDef {
            name: "Account",
            label: "Account",
            label_plural: "Accounts",
            key_prefix: "001",
            fields: common(vec![
                required(f("Name", "Account Name", "string")),
                pick(
                    f("Industry", "Industry", "picklist"),
                    &[
                        "Agriculture",
                        "Banking",
                        "Education",
                        "Healthcare",
                        "Retail",
                        "Technology",
                    ],
                    false,
                ),
                f("Phone", "Account Phone", "phone"),
                f("Website", "Website", "url"),
                ext(
                    len(
                        f("Qualtrics_Account_Id__c", "Qualtrics Account Id", "string"),
                        64,
                    ),
                    true,
                ),
            ]),
        },
        ObjectDef {
            name: "Contact",
            label: "Contact",
            label_plural: "Contacts",
            key_prefix: "003",
            fields: common(vec![
                len(f("FirstName", "First Name", "string"), 40),
                len(required(f("LastName", "Last Name", "string")), 80),
                {
                    let mut e = len(f("Email", "Email", "email"), 80);
                    e.id_lookup = true;
                    e
                },
                f("Phone", "Business Phone", "phone"),
                len(f("Title", "Title", "string"), 128),
                lookup(
                    f("AccountId", "Account ID", "reference"),
                    "Account",
                    "Account",
                ),
                // External id but not unique: two Contacts may share it, and an upsert on it then
                // answers 300 Multiple Choices.
                ext(
                    len(
                        f("Qualtrics_Contact_Id__c", "Qualtrics Contact Id", "string"),
                        64,
                    ),
                    false,
                ),
                f("HasOptedOutOfEmail", "Email Opt Out", "boolean"),
            ]),
        },
        ObjectDef {
            name: "Lead",
            label: "Lead",
            label_plural: "Leads",
            key_prefix: "00Q",
            fields: common(vec![
                len(f("FirstName", "First Name", "string"), 40),
                len(required(f("LastName", "Last Name", "string")), 80),
                required(f("Company", "Company", "string")),
                len(f("Email", "Email", "email"), 80),
                pick(
                    f("Status", "Lead Status", "picklist"),
                    &[
                        "Open - Not Contacted",
                        "Working - Contacted",
                        "Closed - Converted",
                        "Closed - Not Converted",
                    ],
                    true,
                ),
                pick(
                    f("LeadSource", "Lead Source", "picklist"),
                    &["Web", "Phone Inquiry", "Partner Referral", "Survey"],
                    false,
                ),
            ]),
        },
        ObjectDef {
            name: "Case",
            label: "Case",
            label_plural: "Cases",
            key_prefix: "500",
            fields: common(vec![
                {
                    let mut n = system(len(f("CaseNumber", "Case Number", "string"), 30));
                    n.id_lookup = true;
                    n
                },
                record_type_id(),
                f("Subject", "Subject", "string"),
                f("Description", "Description", "textarea"),
                pick(
                    f("Status", "Status", "picklist"),
                    &["New", "Working", "Escalated", "Closed"],
                    true,
                ),
                pick(
                    f("Priority", "Priority", "picklist"),
                    &["High", "Medium", "Low"],
                    true,
                ),
                pick(
                    f("Origin", "Case Origin", "picklist"),
                    &["Phone", "Email", "Web", "Survey"],
                    false,
                ),
                lookup(
                    f("ContactId", "Contact ID", "reference"),
                    "Contact",
                    "Contact",
                ),
                // Salesforce derives it from the case's contact; read-only. The simulator fills it
                // in outbound messages (what the Salesforce-triggered survey needs).
                {
                    let mut e = f("ContactEmail", "Contact Email", "email");
                    e.createable = false;
                    e.updateable = false;
                    e
                },
                lookup(
                    f("AccountId", "Account ID", "reference"),
                    "Account",
                    "Account",
                ),
                ext(
                    len(
                        f(
                            "Qualtrics_Delivery_Key__c",
                            "Qualtrics Delivery Key",
                            "string",
                        ),
                        255,
                    ),
                    true,
                ),
            ]),
        },
        ObjectDef {
            name: "Opportunity",
            label: "Opportunity",
            label_plural: "Opportunities",
            key_prefix: "006",
            fields: common(vec![
                len(required(f("Name", "Name", "string")), 120),
                required(pick(
                    f("StageName", "Stage", "picklist"),
                    &[
                        "Prospecting",
                        "Qualification",
                        "Negotiation/Review",
                        "Closed Won",
                        "Closed Lost",
                    ],
                    false,
                )),
                required(f("CloseDate", "Close Date", "date")),
                f("Amount", "Amount", "currency"),
                lookup(
                    f("AccountId", "Account ID", "reference"),
                    "Account",
                    "Account",
                ),
            ]),
        },
        ObjectDef {
            name: "Survey_Response__c",
            label: "Survey Response",
            label_plural: "Survey Responses",
            key_prefix: "a0B",
            fields: common(vec![
                // An auto-number name, as the Qualtrics best-practice object usually has.
                system(len(f("Name", "Survey Response Name", "string"), 80)),
                record_type_id(),
                ext(len(f("Response_Id__c", "Response Id", "string"), 64), true),
                lookup(
                    f("Contact__c", "Contact", "reference"),
                    "Contact",
                    "Contact__r",
                ),
                f("NPS__c", "NPS", "double"),
                len(f("Comment__c", "Comment", "textarea"), 32_768),
                len(f("Survey_Id__c", "Survey Id", "string"), 64),
                f("Completed_At__c", "Completed At", "datetime"),
            ]),
        },
    ]
}

/// Whether the profile can see the field at all (field-level read access).
pub fn readable(p: &Profile, obj: &ObjectDef, fd: &FieldDef) -> bool {
    fd.name == "Id" || p.field(obj.name, fd.name).read
}

/// One field as the user sees it in describe.
pub fn field_json(p: &Profile, obj: &ObjectDef, fd: &FieldDef) -> Value {
    let op = p.object(obj.name);
    let fp = p.field(obj.name, fd.name);
    let createable = fd.createable && op.create && fp.edit;
    let updateable = fd.updateable && op.edit && fp.edit;
    json!({
        "name": fd.name,
        "label": fd.label,
        "type": fd.ftype,
        "length": fd.length,
        "createable": createable,
        "updateable": updateable,
        "nillable": fd.nillable,
        "defaultedOnCreate": fd.defaulted_on_create,
        "externalId": fd.external_id,
        "idLookup": fd.id_lookup,
        "unique": fd.unique,
        "custom": fd.custom(),
        "picklistValues": fd.picklist.iter().enumerate().map(|(i, v)| json!({
            "active": true, "defaultValue": fd.defaulted_on_create && i == 0, "label": v, "value": v
        })).collect::<Vec<_>>(),
        "restrictedPicklist": !fd.picklist.is_empty(),
        "referenceTo": fd.reference_to.map(|r| vec![r]).unwrap_or_default(),
        "relationshipName": fd.relationship_name,
    })
}

/// The object flags, as the user's profile allows.
pub fn object_flags(p: &Profile, obj: &ObjectDef, version: &str) -> Value {
    let op = p.object(obj.name);
    let base = format!("/services/data/v{version}/sobjects/{}", obj.name);
    json!({
        "name": obj.name,
        "label": obj.label,
        "labelPlural": obj.label_plural,
        "keyPrefix": obj.key_prefix,
        "custom": obj.custom(),
        "createable": op.create,
        "updateable": op.edit,
        "deletable": op.delete,
        "queryable": op.read,
        "retrieveable": op.read,
        "searchable": op.read,
        "urls": {
            "sobject": base,
            "describe": format!("{base}/describe"),
            "rowTemplate": format!("{base}/{{ID}}"),
        }
    })
}

/// The full object describe: the flags, the fields and `recordTypeInfos` as the profile sees
/// them.
pub(crate) fn describe_json(
    p: &Profile,
    obj: &ObjectDef,
    record_types: &[RecordType],
    version: &str,
) -> Value {
    let mut v = object_flags(p, obj, version);
    v["fields"] = Value::Array(
        obj.fields
            .iter()
            .filter(|fd| readable(p, obj, fd))
            .map(|fd| field_json(p, obj, fd))
            .collect(),
    );
    v["recordTypeInfos"] = super::record_types::infos_json(record_types, p, obj.name, version);
    v
}
