//! Access control: per table and operation, the roles that may act (`admin` always may), and row
//! rules that hide matching rows from users without a role. Row rules run *after* paging, as on
//! ServiceNow, so a page can come back short while more rows exist.

use super::envelope::Caller;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// What a request does to a table, as ACLs name it.
pub enum Operation {
    /// Reading records (GET).
    Read,
    /// Creating records (POST).
    Create,
    /// Changing records (PUT, PATCH).
    Write,
    /// Deleting records (DELETE).
    Delete,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
/// A table-level ACL: which roles may do one operation on one table.
pub struct TableRule {
    /// The table name, e.g. `incident`.
    pub table: String,
    /// The operation it allows.
    pub operation: Operation,
    /// Any of these roles passes; `*` means every authenticated user.
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
/// A row-level ACL: rows of a table hidden from users without a role.
pub struct RowRule {
    /// The table name.
    pub table: String,
    /// Encoded query of the rows to hide.
    pub hide_query: String,
    /// Users with this role see them anyway.
    pub unless_role: String,
}

#[derive(Clone, Debug, Default, Serialize)]
/// The instance's ACLs; seeded, changeable through `/_sim`.
pub struct AclState {
    /// Table-level rules; without a matching rule only `admin` may do the operation.
    pub tables: Vec<TableRule>,
    /// Row-level rules.
    pub rows: Vec<RowRule>,
}

fn rule(table: &str, operation: Operation, roles: &[&str]) -> TableRule {
    TableRule {
        table: table.into(),
        operation,
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

impl AclState {
    /// The base-system rules this simulator starts with (see docs/simulator/servicenow.md).
    pub fn defaults() -> AclState {
        use Operation::*;
        let mut tables = Vec::new();
        for op in [Read, Create, Write] {
            tables.push(rule("incident", op, &["itil"]));
        }
        for op in [Read, Create, Write, Delete] {
            tables.push(rule(
                "customer_contact",
                op,
                &["itil", "sn_customerservice_agent"],
            ));
        }
        tables.push(rule("sys_user", Read, &["*"]));
        tables.push(rule("sys_dictionary", Read, &["*"]));
        tables.push(rule(
            "sys_properties",
            Read,
            &["itil", "sn_qualtrics_spoke.user"],
        ));
        for t in ["u_qualtrics_incident_import", "u_qualtrics_contact_import"] {
            tables.push(rule(t, Read, &["import_set_loader"]));
            tables.push(rule(t, Create, &["import_set_loader"]));
        }
        AclState {
            tables,
            rows: Vec::new(),
        }
    }

    /// Whether `caller` may do `op` on `table`. No rule: admins only.
    pub fn allowed(&self, caller: &Caller, table: &str, op: Operation) -> bool {
        if caller.has_role("admin") {
            return true;
        }
        self.tables
            .iter()
            .filter(|r| r.table == table && r.operation == op)
            .any(|r| {
                r.roles
                    .iter()
                    .any(|role| role == "*" || caller.has_role(role))
            })
    }

    /// Replaces the rule for (table, operation).
    pub fn set(&mut self, rule: TableRule) {
        self.tables
            .retain(|r| !(r.table == rule.table && r.operation == rule.operation));
        self.tables.push(rule);
    }
}
