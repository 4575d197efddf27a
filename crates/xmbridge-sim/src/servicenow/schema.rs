//! The instance's tables and their dictionary: which fields exist, their types (references and
//! choices), and display values. Fields not listed here do not exist: writes ignore them and a
//! query naming them is an invalid query part.

use super::Record;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// The type of a field of a simulated table.
pub enum Kind {
    /// Text.
    Str,
    /// `true` / `false`.
    Bool,
    /// An integer.
    Int,
    /// A date and time (`YYYY-MM-DD HH:MM:SS`, UTC).
    DateTime,
    /// A reference to a row of the named table (stored as its sys_id).
    Ref(&'static str),
    /// A choice list: stored value → label.
    Choice(&'static [(&'static str, &'static str)]),
    /// Journal fields (comments, work notes): a write appends.
    Journal,
}

impl Kind {
    pub(crate) fn internal_type(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Bool => "boolean",
            Kind::Int => "integer",
            Kind::DateTime => "glide_date_time",
            Kind::Ref(_) => "reference",
            Kind::Choice(_) => "choice",
            Kind::Journal => "journal_input",
        }
    }
}

/// A simulated table and its fields.
pub struct TableDef {
    /// The table name, e.g. `incident`.
    pub name: &'static str,
    /// The label the ServiceNow UI shows.
    pub label: &'static str,
    /// The field shown as a reference's display value.
    pub display: &'static str,
    /// The table's own fields and their types (the `sys_` fields come on top).
    pub fields: &'static [(&'static str, Kind)],
}

impl TableDef {
    /// The type of `field` (own or `sys_`); `None` if the table has no such field.
    pub fn kind(&self, field: &str) -> Option<Kind> {
        SYS_FIELDS
            .iter()
            .chain(self.fields.iter())
            .find(|(f, _)| *f == field)
            .map(|(_, k)| *k)
    }

    /// Every column, `sys_*` first.
    pub fn columns(&self) -> impl Iterator<Item = &'static (&'static str, Kind)> {
        SYS_FIELDS.iter().chain(self.fields.iter())
    }

    /// Whether a client may write the field (`sys_*` and computed fields are read-only).
    pub fn writable(&self, field: &str) -> bool {
        let computed = self.name == "incident" && matches!(field, "number" | "priority");
        !field.starts_with("sys_") && !computed && self.fields.iter().any(|(f, _)| *f == field)
    }
}

pub(crate) const SYS_FIELDS: &[(&str, Kind)] = &[
    ("sys_id", Kind::Str),
    ("sys_created_on", Kind::DateTime),
    ("sys_created_by", Kind::Str),
    ("sys_updated_on", Kind::DateTime),
    ("sys_updated_by", Kind::Str),
    ("sys_mod_count", Kind::Int),
];

pub(crate) const STATES: &[(&str, &str)] = &[
    ("1", "New"),
    ("2", "In Progress"),
    ("3", "On Hold"),
    ("6", "Resolved"),
    ("7", "Closed"),
    ("8", "Canceled"),
];
pub(crate) const LEVELS: &[(&str, &str)] =
    &[("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")];
pub(crate) const PRIORITIES: &[(&str, &str)] = &[
    ("1", "1 - Critical"),
    ("2", "2 - High"),
    ("3", "3 - Moderate"),
    ("4", "4 - Low"),
    ("5", "5 - Planning"),
];

/// The tables derived from the simulator's ACL state and users: no client writes them.
pub(crate) const ACCESS_TABLES: &[&str] = &[
    "sys_user_role",
    "sys_user_has_role",
    "sys_security_operation",
    "sys_security_acl",
    "sys_security_acl_role",
];

pub(crate) const TABLES: &[TableDef] = &[
    TableDef {
        name: "incident",
        label: "Incident",
        display: "number",
        fields: &[
            ("number", Kind::Str),
            ("short_description", Kind::Str),
            ("description", Kind::Str),
            ("caller_id", Kind::Ref("sys_user")),
            ("urgency", Kind::Choice(LEVELS)),
            ("impact", Kind::Choice(LEVELS)),
            ("priority", Kind::Choice(PRIORITIES)),
            ("category", Kind::Str),
            ("subcategory", Kind::Str),
            ("state", Kind::Choice(STATES)),
            ("close_code", Kind::Str),
            ("close_notes", Kind::Str),
            ("assignment_group", Kind::Str),
            ("assigned_to", Kind::Ref("sys_user")),
            ("contact_type", Kind::Str),
            ("comments", Kind::Journal),
            ("work_notes", Kind::Journal),
            ("correlation_id", Kind::Str),
            ("correlation_display", Kind::Str),
            ("opened_at", Kind::DateTime),
            ("resolved_at", Kind::DateTime),
            ("closed_at", Kind::DateTime),
            ("active", Kind::Bool),
        ],
    },
    TableDef {
        name: "sys_user",
        label: "User",
        display: "name",
        fields: &[
            ("user_name", Kind::Str),
            ("first_name", Kind::Str),
            ("last_name", Kind::Str),
            ("name", Kind::Str),
            ("email", Kind::Str),
            ("phone", Kind::Str),
            ("active", Kind::Bool),
            ("locked_out", Kind::Bool),
            ("web_service_access_only", Kind::Bool),
        ],
    },
    TableDef {
        name: "customer_contact",
        label: "Contact",
        display: "name",
        fields: &[
            ("first_name", Kind::Str),
            ("last_name", Kind::Str),
            ("name", Kind::Str),
            ("email", Kind::Str),
            ("phone", Kind::Str),
            ("account", Kind::Str),
            ("active", Kind::Bool),
            // The spoke's "Reference ID": the contact's Qualtrics id, written back by the flow.
            ("u_qualtrics_id", Kind::Str),
        ],
    },
    TableDef {
        name: "sys_properties",
        label: "System Property",
        display: "name",
        fields: &[
            ("name", Kind::Str),
            ("value", Kind::Str),
            ("type", Kind::Str),
            ("description", Kind::Str),
        ],
    },
    TableDef {
        name: "sys_dictionary",
        label: "Dictionary Entry",
        display: "element",
        fields: &[
            ("name", Kind::Str),
            ("element", Kind::Str),
            ("internal_type", Kind::Str),
            ("reference", Kind::Str),
        ],
    },
    // Access control, as the base system keeps it: read-only here, derived from the simulator's
    // ACL state and users (see `Db::rebuild_access_tables`); changed through `/_sim/acl`.
    TableDef {
        name: "sys_user_role",
        label: "Role",
        display: "name",
        fields: &[("name", Kind::Str)],
    },
    TableDef {
        name: "sys_user_has_role",
        label: "User Role",
        display: "role",
        fields: &[
            ("user", Kind::Ref("sys_user")),
            ("role", Kind::Ref("sys_user_role")),
            ("state", Kind::Str),
        ],
    },
    TableDef {
        name: "sys_security_operation",
        label: "Operation",
        display: "name",
        fields: &[("name", Kind::Str)],
    },
    TableDef {
        name: "sys_security_acl",
        label: "Access Control",
        display: "name",
        fields: &[
            ("name", Kind::Str),
            ("operation", Kind::Ref("sys_security_operation")),
            ("type", Kind::Str),
            ("active", Kind::Bool),
            ("admin_overrides", Kind::Bool),
        ],
    },
    TableDef {
        name: "sys_security_acl_role",
        label: "Access Role",
        display: "sys_user_role",
        fields: &[
            ("sys_security_acl", Kind::Ref("sys_security_acl")),
            ("sys_user_role", Kind::Ref("sys_user_role")),
        ],
    },
    TableDef {
        name: "u_qualtrics_incident_import",
        label: "Qualtrics Incident Import",
        display: "u_correlation_id",
        fields: &[
            ("u_correlation_id", Kind::Str),
            ("u_short_description", Kind::Str),
            ("u_description", Kind::Str),
            ("u_caller_email", Kind::Str),
            ("u_urgency", Kind::Str),
            ("u_impact", Kind::Str),
            ("u_category", Kind::Str),
            ("sys_import_set", Kind::Str),
            ("sys_import_state", Kind::Str),
            ("sys_target_sys_id", Kind::Str),
        ],
    },
    TableDef {
        name: "u_qualtrics_contact_import",
        label: "Qualtrics Contact Import",
        display: "u_email",
        fields: &[
            ("u_email", Kind::Str),
            ("u_first_name", Kind::Str),
            ("u_last_name", Kind::Str),
            ("u_phone", Kind::Str),
            ("u_account", Kind::Str),
            ("u_qualtrics_id", Kind::Str),
            ("sys_import_set", Kind::Str),
            ("sys_import_state", Kind::Str),
            ("sys_target_sys_id", Kind::Str),
        ],
    },
];

pub(crate) fn table(name: &str) -> Option<&'static TableDef> {
    TABLES.iter().find(|t| t.name == name)
}

/// The `sys_dictionary` rows (one per column of every table), built from the definitions.
pub fn dictionary_rows() -> Vec<Record> {
    let mut rows = Vec::new();
    for t in TABLES {
        for (i, (field, kind)) in t.columns().enumerate() {
            let reference = match kind {
                Kind::Ref(target) => *target,
                _ => "",
            };
            let id = format!(
                "{:016x}{:016x}",
                crate::rng::hash_str(t.name),
                crate::rng::mix(i as u64 + 1)
            );
            let row = json!({
                "sys_id": id, "sys_created_on": "2026-01-01 00:00:00", "sys_created_by": "system",
                "sys_updated_on": "2026-01-01 00:00:00", "sys_updated_by": "system",
                "sys_mod_count": "0", "name": t.name, "element": field,
                "internal_type": kind.internal_type(), "reference": reference,
            });
            if let Value::Object(m) = row {
                rows.push(m);
            }
        }
    }
    rows
}

/// The label of a choice value, or the value itself.
pub fn choice_label(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Choice(choices) => choices
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, l)| l.to_string())
            .unwrap_or_else(|| value.to_string()),
        _ => value.to_string(),
    }
}
