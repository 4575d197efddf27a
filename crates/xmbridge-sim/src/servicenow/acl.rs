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
        // Who has which role: every user sees their own (row rule below), user_admin all. The
        // ACLs themselves: security_admin (and admin) only, as on a base instance.
        tables.push(rule("sys_user_role", Read, &["*"]));
        tables.push(rule("sys_security_operation", Read, &["*"]));
        tables.push(rule("sys_user_has_role", Read, &["*"]));
        tables.push(rule("sys_security_acl", Read, &["security_admin"]));
        tables.push(rule("sys_security_acl_role", Read, &["security_admin"]));
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
            rows: vec![RowRule {
                table: "sys_user_has_role".into(),
                hide_query: "user!=javascript:gs.getUserID()".into(),
                unless_role: "user_admin".into(),
            }],
        }
    }

    /// Whether `caller` may do `op` on `table`. No rule: admins only.
    pub fn allowed(&self, caller: &Caller, table: &str, op: Operation) -> bool {
        // Derived from this state: changed through `/_sim/acl`, never through the Table API.
        if op != Operation::Read && super::schema::ACCESS_TABLES.contains(&table) {
            return false;
        }
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

/// The access-control tables a client can read (`sys_user_role`, `sys_user_has_role`,
/// `sys_security_operation`, `sys_security_acl`, `sys_security_acl_role`), rebuilt from the
/// users and the table rules whenever either changes. Ids are stable across rebuilds.
pub(crate) fn rebuild_tables(db: &mut super::Db) {
    use serde_json::{Value, json};
    let id = |a: &str, b: &str| {
        format!(
            "{:016x}{:016x}",
            crate::rng::hash_str(a),
            crate::rng::hash_str(b)
        )
    };
    let row = |sys_id: String, fields: Value| -> super::Record {
        let mut r = json!({
            "sys_id": sys_id, "sys_created_on": "2026-01-01 00:00:00", "sys_created_by": "system",
            "sys_updated_on": "2026-01-01 00:00:00", "sys_updated_by": "system",
            "sys_mod_count": "0",
        });
        if let (Some(r), Value::Object(f)) = (r.as_object_mut(), fields) {
            r.extend(f);
        }
        match r {
            Value::Object(m) => m,
            _ => super::Record::new(),
        }
    };
    let mut roles: std::collections::BTreeSet<String> = ["admin", "security_admin", "user_admin"]
        .iter()
        .map(|r| r.to_string())
        .collect();
    roles.extend(db.creds.users.iter().flat_map(|u| u.roles.iter().cloned()));
    roles.extend(
        db.acl
            .tables
            .iter()
            .flat_map(|r| r.roles.iter().filter(|r| *r != "*").cloned()),
    );
    let role_id = |r: &str| id("sys_user_role", r);
    let op_name = |op: Operation| match op {
        Operation::Read => "read",
        Operation::Create => "create",
        Operation::Write => "write",
        Operation::Delete => "delete",
    };
    let user_ids: std::collections::HashMap<String, String> = db
        .tables
        .get("sys_user")
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r.get("user_name")?.as_str()?.to_string(),
                r.get("sys_id")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let role_rows = roles
        .iter()
        .map(|r| row(role_id(r), json!({"name": r})))
        .collect();
    let mut has_role = Vec::new();
    for u in &db.creds.users {
        let Some(uid) = user_ids.get(&u.user_name) else {
            continue;
        };
        for r in &u.roles {
            has_role.push(row(
                id(uid, r),
                json!({"user": uid, "role": role_id(r), "state": "active"}),
            ));
        }
    }
    let ops = [
        Operation::Read,
        Operation::Create,
        Operation::Write,
        Operation::Delete,
    ]
    .into_iter()
    .map(|op| {
        row(
            id("sys_security_operation", op_name(op)),
            json!({"name": op_name(op)}),
        )
    })
    .collect();
    let mut acls = Vec::new();
    let mut acl_roles = Vec::new();
    for r in &db.acl.tables {
        let acl_id = id(&r.table, op_name(r.operation));
        acls.push(row(
            acl_id.clone(),
            json!({
                "name": r.table, "operation": id("sys_security_operation", op_name(r.operation)),
                "type": "record", "active": "true", "admin_overrides": "true",
            }),
        ));
        for role in r.roles.iter().filter(|r| *r != "*") {
            acl_roles.push(row(
                id(&acl_id, role),
                json!({"sys_security_acl": acl_id, "sys_user_role": role_id(role)}),
            ));
        }
    }
    db.tables.insert("sys_user_role".into(), role_rows);
    db.tables.insert("sys_user_has_role".into(), has_role);
    db.tables.insert("sys_security_operation".into(), ops);
    db.tables.insert("sys_security_acl".into(), acls);
    db.tables.insert("sys_security_acl_role".into(), acl_roles);
}
