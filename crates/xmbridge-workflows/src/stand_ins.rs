//! Stand-in specs for the Salesforce, ServiceNow and Qualtrics actions, written while those
//! actions were built elsewhere so workflow files and templates could be validated; every one of
//! them is now registered by `Registry::builtin`, so they only fill gaps in other registries.
//!
//! It owns nothing but names and input lists: [`fill_missing`] adds a stand-in only where the
//! registry has no action of that name, so once the real actions are registered these are never
//! used. Running a stand-in fails with `NotConfigured` (it must never pretend to deliver).

use futures_util::future::BoxFuture;
use serde_json::Value;
use xmbridge_actions::{
    Action, ActionContext, ActionError, ActionRequest, ActionSpec, InputSpec, Registry, System,
};

const fn req(name: &'static str, help: &'static str) -> InputSpec {
    InputSpec {
        name,
        required: true,
        help,
    }
}
const fn opt(name: &'static str, help: &'static str) -> InputSpec {
    InputSpec {
        name,
        required: false,
        help,
    }
}

const fn spec(
    name: &'static str,
    system: System,
    title: &'static str,
    category: &'static str,
    inputs: &'static [InputSpec],
    writes: bool,
) -> ActionSpec {
    ActionSpec {
        name,
        system,
        title,
        category,
        inputs,
        stream: false,
        writes,
    }
}

const OBJECT: InputSpec = req("object", "sObject API name, e.g. Survey_Response__c");
const FIELDS: InputSpec = req("fields", "field name → value");
const DIR: InputSpec = opt(
    "directory_id",
    "XM Directory id (POOL_…); default: the connection's directory",
);
const FIRST: InputSpec = opt("firstName", "first name");
const LAST: InputSpec = opt("lastName", "last name");
const EMAIL: InputSpec = opt("email", "e-mail address");
const PHONE: InputSpec = opt("phone", "phone");
const EXT_REF: InputSpec = opt("extRef", "external data reference");
const LANG: InputSpec = opt("language", "language");
const EMBEDDED: InputSpec = opt("embeddedData", "embedded data object");
const UNSUB: InputSpec = opt("unsubscribed", "true/false");

/// The specs as the Salesforce, ServiceNow and Qualtrics action branches define them (names,
/// inputs and required flags copied from those branches on 2026-11-30).
pub const SPECS: &[ActionSpec] = &[
    spec(
        "salesforce.create",
        System::Salesforce,
        "Create Record",
        "Salesforce Records",
        &[
            OBJECT,
            FIELDS,
            opt("key_field", "field holding the idempotency key"),
            opt("key", "idempotency key"),
        ],
        true,
    ),
    spec(
        "salesforce.update",
        System::Salesforce,
        "Update Record",
        "Salesforce Records",
        &[OBJECT, req("id", "record id"), FIELDS],
        true,
    ),
    spec(
        "salesforce.upsert",
        System::Salesforce,
        "Upsert Record",
        "Salesforce Records",
        &[
            OBJECT,
            req("external_id_field", "External ID field"),
            req("external_id", "key value"),
            FIELDS,
        ],
        true,
    ),
    spec(
        "salesforce.delete",
        System::Salesforce,
        "Delete Record",
        "Salesforce Records",
        &[OBJECT, req("id", "record id")],
        true,
    ),
    spec(
        "salesforce.create-case",
        System::Salesforce,
        "Create Case",
        "Salesforce Records",
        &[
            FIELDS,
            opt("key_field", "Case field holding the idempotency key"),
            opt("key", "idempotency key"),
        ],
        true,
    ),
    spec(
        "salesforce.query",
        System::Salesforce,
        "Query",
        "Salesforce Records",
        &[
            req("soql", "SOQL query"),
            opt("max_records", "at most this many records"),
        ],
        false,
    ),
    spec(
        "servicenow.create-record",
        System::ServiceNow,
        "Create Record",
        "Record Management",
        &[
            req("table", "table name"),
            FIELDS,
            opt("correlation_field", "field holding the delivery key"),
        ],
        true,
    ),
    spec(
        "servicenow.update-record",
        System::ServiceNow,
        "Update Record",
        "Record Management",
        &[
            req("table", "table name"),
            req("sys_id", "the record's sys_id"),
            FIELDS,
        ],
        true,
    ),
    spec(
        "servicenow.look-up-records",
        System::ServiceNow,
        "Look up Records",
        "Record Management",
        &[
            req("table", "table name"),
            opt("query", "encoded query"),
            opt("fields", "field names to return"),
            opt("limit", "at most this many records"),
        ],
        false,
    ),
    spec(
        "servicenow.get-property",
        System::ServiceNow,
        "Get System Property",
        "Configuration",
        &[req("name", "property name")],
        false,
    ),
    spec(
        "servicenow.create-incident",
        System::ServiceNow,
        "Create Incident",
        "Incident Management",
        &[
            req("short_description", "one line"),
            opt("description", "the full text"),
            opt("caller", "the caller's email or sys_user sys_id"),
            opt("urgency", "1 high, 2 medium, 3 low"),
            opt("impact", "1 high, 2 medium, 3 low"),
            opt("category", "e.g. inquiry"),
            opt("correlation_id", "external id (the response id)"),
        ],
        true,
    ),
    spec(
        "create-contact",
        System::Qualtrics,
        "Create Contact",
        "Contact Management",
        &[
            DIR, FIRST, LAST, EMAIL, PHONE, EXT_REF, LANG, EMBEDDED, UNSUB,
        ],
        true,
    ),
    spec(
        "upsert-contact",
        System::Qualtrics,
        "Upsert Contact",
        "Contact Management",
        &[
            DIR, FIRST, LAST, EMAIL, PHONE, EXT_REF, LANG, EMBEDDED, UNSUB,
        ],
        true,
    ),
    spec(
        "update-contact",
        System::Qualtrics,
        "Update Contact",
        "Contact Management",
        &[
            DIR,
            req("contact_id", "contact id (CID_…)"),
            FIRST,
            LAST,
            EMAIL,
            PHONE,
            EXT_REF,
            LANG,
            EMBEDDED,
            UNSUB,
            opt("writeBlanks", "true/false"),
        ],
        true,
    ),
    spec(
        "look-up-contact-by-email",
        System::Qualtrics,
        "Look up Contact by Email",
        "Contact Management",
        &[DIR, req("email", "e-mail address")],
        false,
    ),
    spec(
        "create-contact-in-mailing-list",
        System::Qualtrics,
        "Create Contact in Mailing List",
        "Mailing List Management",
        &[
            DIR,
            req("mailing_list_id", "CG_…"),
            FIRST,
            LAST,
            EMAIL,
            PHONE,
            EXT_REF,
            LANG,
            EMBEDDED,
            UNSUB,
        ],
        true,
    ),
    spec(
        "create-distribution",
        System::Qualtrics,
        "Create Distribution",
        "Distribution Management",
        &[
            req("survey_id", "SV_…"),
            opt("mailing_list_id", "CG_…"),
            opt("contact_id", "send only to this contact"),
            opt("transaction_batch_id", "transaction batch"),
            opt("library_id", "UR_… or GR_…"),
            opt("message_id", "MS_…"),
            opt("message_text", "message text"),
            req("from_email", "sender address"),
            req("from_name", "sender name"),
            opt("reply_to_email", "reply-to"),
            req("subject", "subject"),
            opt("send_date", "ISO-8601; default now"),
            opt("expiration_date", "ISO-8601"),
            opt("link_type", "Individual, Multiple or Anonymous"),
            opt("embeddedData", "embedded data object"),
        ],
        true,
    ),
];

struct StandIn(&'static ActionSpec);

impl Action for StandIn {
    fn spec(&self) -> &ActionSpec {
        self.0
    }
    fn run<'a>(
        &'a self,
        _ctx: &'a ActionContext,
        _request: ActionRequest,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            Err(ActionError::NotConfigured {
                action: self.0.name.to_string(),
                system: self.0.system,
                fix: "this build has only the action's description, not its implementation".into(),
            })
        })
    }
}

/// Adds a stand-in for every action in [`SPECS`] the registry does not have yet.
pub fn fill_missing(registry: &mut Registry) {
    for s in SPECS {
        if registry.get(s.name).is_none() {
            registry.register(StandIn(s));
        }
    }
}

/// The built-in actions plus stand-ins for the missing ones (tests).
pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    fill_missing(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stand-in whose real action is registered must describe it exactly (names, inputs,
    /// required flags), so files validated against stand-ins stay valid after the merge.
    #[test]
    fn stand_ins_match_the_registered_actions() {
        let real = Registry::builtin();
        let mut compared = 0;
        let mut diffs = Vec::new();
        for s in SPECS {
            let Some(a) = real.get(s.name) else { continue };
            let r = a.spec();
            let mine: Vec<(&str, bool)> = s.inputs.iter().map(|i| (i.name, i.required)).collect();
            let theirs: Vec<(&str, bool)> = r.inputs.iter().map(|i| (i.name, i.required)).collect();
            if mine != theirs || s.system != r.system {
                diffs.push(format!("{}: {theirs:?}", s.name));
            }
            compared += 1;
        }
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        assert!(compared > 0, "no real actions registered to compare with");
    }
}
